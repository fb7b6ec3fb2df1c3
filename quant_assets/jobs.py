"""Every job of the code location, one per partitioning of the golden flow (a run covers one
partitions definition): reference data, the daily stage, labels, the monthly stage, the
report and promotion, sweeps, serving. Sensors and schedules (``sensors/``) target them."""

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
    selection=AssetSelection.assets("lgbm_model", "oos_predictions", "backtest"),
    description="A month (or a range): walk-forward model, out-of-sample predictions, backtest.",
)
validation_job = define_asset_job(
    "validation_job",
    # the promotion gate is a blocking check that fails its run: it belongs to promotion
    selection=AssetSelection.assets("validation_report").without_checks(),
    description="Validation report over every backtest month (no gate).",
)
strategy_grid_job = define_asset_job(
    "strategy_grid_job",
    selection=AssetSelection.assets("strategy_grid"),
    description="A month (or a range): the strategy parameter grid (trials for DSR/PBO).",
)
promotion_job = define_asset_job(
    "promotion_job",
    selection=AssetSelection.assets("validation_report", "champion_model"),
    description="Validation report, its blocking promotion gate, then the champion alias.",
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
    description="One sweep trial (a sweep_trials dynamic partition): walk-forward models, "
    "out-of-sample predictions, backtest, a trial registry row and its daily returns.",
)
serving_job = define_asset_job(
    "serving_job",
    selection=AssetSelection.assets("daily_scores", "drift_report", "signal_health"),
    description="A trading day: champion scores, drift report, realised-vs-backtest health.",
)
nightly_revalidation_job = define_asset_job(
    "nightly_revalidation_job",
    selection=AssetSelection.assets("backtest", "validation_report"),
    description="Re-run the latest month's backtest and the validation report.",
)

ALL_JOBS = [
    reference_data_job,
    daily_features_job,
    labels_job,
    monthly_models_job,
    validation_job,
    strategy_grid_job,
    promotion_job,
    seq_models_job,
    sweep_trials_job,
    serving_job,
    nightly_revalidation_job,
]
