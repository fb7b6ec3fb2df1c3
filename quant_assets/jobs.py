"""Every job of the code location, one per partitioning of the golden flow (a run covers one
partitions definition): reference data, the daily stage, labels, the monthly stage (both
model families), the month's trials, the reports and promotion, sweeps, serving. Sensors
and schedules (``sensors/``) target them; the automation sensor needs no job (it launches
the assets its conditions ask for, ``quant_assets.automation``)."""

from __future__ import annotations

from dagster import AssetSelection, define_asset_job

from quant_assets.partitions import sweep_trial_partitions

reference_data_job = define_asset_job(
    "reference_data_job",
    selection=AssetSelection.assets("universe", "corporate_actions", "fundamentals", "benchmark", "data_source"),
    description="Unpartitioned raw tables: universe, corporate actions, fundamentals; the "
    "source's benchmark index and description (data_source: its caveats).",
)
daily_features_job = define_asset_job(
    "daily_features_job",
    selection=AssetSelection.assets("market_bars", "pit_features"),
    description="A trading day (or a range): market bars, then point-in-time features.",
)
labels_job = define_asset_job(
    "labels_job",
    selection=AssetSelection.assets("labels"),
    description="Forward-return labels; a day can only be built once D+h has bars.",
)
monthly_models_job = define_asset_job(
    "monthly_models_job",
    selection=AssetSelection.assets(
        "lgbm_model", "oos_predictions", "backtest",
        "seq_model", "seq_predictions", "seq_backtest",
    ),
    description="A month (or a range), both model families: walk-forward LightGBM and GRU "
    "models, their out-of-sample predictions and backtests (GRU steps on the gpu pool).",
)
validation_job = define_asset_job(
    "validation_job",
    # the promotion gate is a blocking check that fails its run: it belongs to promotion
    selection=AssetSelection.assets(
        "validation_report", "seq_validation_report", "model_comparison"
    ).without_checks(),
    description="Both families' validation reports over every backtest month, and their "
    "comparison (no gate).",
)
strategy_grid_job = define_asset_job(
    "strategy_grid_job",
    selection=AssetSelection.assets("strategy_grid", "strategy_grid_returns", "model_sweep"),
    description="A month (or a range): the month's trials for DSR/PBO: the strategy parameter "
    "grid and the small model sweep.",
)
promotion_job = define_asset_job(
    "promotion_job",
    selection=AssetSelection.assets("model_comparison", "champion_model"),
    description="The family comparison, its blocking promotion gate, then the champion alias "
    "(what a person launches when QUANT_AUTO_PROMOTE=wait).",
)
promotion_gate_job = define_asset_job(
    "promotion_gate_job",
    # the check alone, against the comparison already built: its verdict shows on
    # model_comparison's checks; the run fails when the gate does (the check is blocking)
    selection=AssetSelection.checks_for_assets("model_comparison"),
    description="The promotion gate alone: judges the latest family comparison and records "
    "the verdict as model_comparison's check result; promotes nothing (what make demo runs).",
)

seq_models_job = define_asset_job(
    "seq_models_job",
    selection=AssetSelection.assets("seq_model"),
    description="A month (or a range): the walk-forward GRU sequence model (gpu pool).",
)
sweep_trials_job = define_asset_job(
    "sweep_trials_job",
    selection=AssetSelection.assets("sweep_trials", "trial_returns"),
    partitions_def=sweep_trial_partitions,
    description="A batch of sweep trials (a range of sweep_trials dynamic partitions, up to "
    "QUANT_SWEEP_TRIALS_PER_RUN): per trial walk-forward models, out-of-sample predictions, "
    "backtest, a trial registry row and its daily returns; one MLflow child run per batch.",
)
serving_job = define_asset_job(
    "serving_job",
    selection=AssetSelection.assets("daily_scores", "drift_report", "signal_health", "target_weights"),
    description="A trading day: champion scores, drift report, realised-vs-backtest health, "
    "target weights (what the automation builds after each day's features). One day a run, "
    "as the monitors judge one day each: a range of daily_scores alone runs 100 days a run.",
)

ALL_JOBS = [
    reference_data_job,
    daily_features_job,
    labels_job,
    monthly_models_job,
    validation_job,
    strategy_grid_job,
    promotion_job,
    promotion_gate_job,
    seq_models_job,
    sweep_trials_job,
    serving_job,
]
