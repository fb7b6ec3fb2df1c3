"""Jobs and sensors of the models stage, for the lead to register in
``quant_assets/jobs.py`` (``ALL_JOBS += MODEL_JOBS``) and ``sensors/__init__.py``
(``SENSORS += MODEL_SENSORS``)."""

from __future__ import annotations

from dagster import AssetSelection, define_asset_job

from quant_assets.models.sweeps import sweep_trials_job, sweep_trials_sensor

seq_models_job = define_asset_job(
    "seq_models_job",
    selection=AssetSelection.assets("seq_model"),
    description="A month (or a range): the walk-forward GRU sequence model (gpu pool).",
)

MODEL_JOBS = [seq_models_job, sweep_trials_job]
MODEL_SENSORS = [sweep_trials_sensor]
