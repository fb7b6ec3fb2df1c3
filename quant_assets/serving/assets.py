"""Serving: ``daily_scores``, ``drift_report``, ``signal_health`` and ``target_weights``, one
partition per trading day (group ``serving``).

* ``daily_scores`` of day D scores D's ``pit_features`` with the version behind the MLflow
  alias ``champion`` *at run time*, whichever model family it is (``serving.served``: the
  LightGBM row by row, the GRU over each instrument's last ``seq_len`` days). The family
  and version are on every row and in the metadata. With no champion yet nothing is
  written: the day has no scores (and nothing after them runs), the run succeeds.
* ``drift_report`` of D: PSI and KS of every feature and of the score, the last
  ``CURRENT_DAYS`` scored days against the training reference of the version that scored
  D. The models stage stores no reference sample, so the reference is rebuilt at drift
  time: the ``pit_features`` rows of the version's training window (``train_start`` ..
  ``train_end`` of its model row) and the version's scores of those rows. Features are
  point in time and models deterministic, so this is the sample the model saw.
* ``signal_health`` of D: realised 21-day Sharpe of the live long-short book on
  ``daily_scores`` versus its family's backtest's rolling 21-day Sharpe ratios, and the
  capital multiplier (``serving.monitor``).
* ``target_weights`` of D: the book the backtest would hold after D's close
  (``serving.weights``: the backtest's own construction and spec on D's scores), times the
  day's capital multiplier; a cut is an audit ``capital`` row.

The monitors read the days before D (the pooled drift sample, the live book's window) from
the ``daily_scores`` table as committed, not as partition dependencies: a day without
scores (before the first champion) must not hold back the judgement of the days after it.
Each depends on D's own scores, so a restated day re-judges every day whose scores changed.
"""


import dataclasses
import datetime as dt

import polars as pl
from dagster import (
    AllPartitionMapping,
    AssetExecutionContext,
    AssetIn,
    BackfillPolicy,
    MetadataValue,
    Output,
    TimeWindowPartitionMapping,
    asset,
)

from quant_assets import audit, calendar
from quant_assets.asset_catalog import owners_of
from quant_assets.asset_lineage import lineage_metadata, lineage_of
from quant_assets.automation import after
from quant_assets.backtest.strategy import backtested_spec
from quant_assets.configs import config_class
from quant_assets.features import total_return_index
from quant_assets.models.monthly import FAMILIES
from quant_assets.partitions import trading_day_partitions
from quant_assets.retries import IO_RETRY, not_retried, refuse
from quant_assets.run_costs import measured
from quant_assets.serving import drift, monitor
from quant_assets.serving.served import ServedModel, ServedModelError, served_model, table_history
from quant_assets.serving.weights import target_weights as build_target_weights
from quant_assets.warehouse import PartitionWindow, Warehouse
from resources import model_registry
from resources.tracking import MlflowTracking

GROUP = "serving"
# Days of scores pooled into the current sample of the drift report: one day of a small
# universe is too few rows for 10 PSI bins (see serving.drift).
CURRENT_DAYS = 5
HEALTH_DAYS = monitor.WINDOW + monitor.WARMUP_DAYS
# Feature days before D that scoring D reads: the GRU's sequences (seq_len - 1 rows; its
# defaults need 9); a longer sequence is refused, never silently cut.
SCORING_HISTORY_DAYS = 20
# Price days before D that the target weights read: the betas of a beta-neutral book.
WEIGHTS_HISTORY_DAYS = 130
# The monitors judge one day each (a window ending on it); scores take ranges.
ONE_DAY_A_RUN = BackfillPolicy.multi_run(max_partitions_per_run=1)
MODEL_TABLES = {f.asset: AssetIn(partition_mapping=AllPartitionMapping(), metadata={"allow_missing": True})
                for f in FAMILIES.values()}
BACKTESTS = {f.backtest: AssetIn(partition_mapping=AllPartitionMapping(), metadata={"allow_missing": True})
             for f in FAMILIES.values()}
# the day's own scores; the days before it are read from the table (module docstring)
TODAY = TimeWindowPartitionMapping()


def _served(info: model_registry.VersionInfo, tables: dict[str, pl.DataFrame],
            warehouse: Warehouse | None = None) -> ServedModel:
    """The version's model; from an earlier Delta version of its table when its month was
    retrained since (``served.model_record``)."""
    family = FAMILIES[model_registry.family_of(info.name)]
    history = table_history(warehouse, family.asset) if warehouse is not None else ()
    with not_retried(ServedModelError):  # a missing or mismatched model row stays so
        return served_model(info.version, info.run_id, info.model_sha256, tables[family.asset],
                            family.name, history)


def _window(context: AssetExecutionContext) -> tuple[dt.date, dt.date]:
    window = context.partition_time_window
    return window.start.date(), window.end.date()


def _days_before(warehouse: Warehouse, table: str, day: dt.date, sessions: int) -> pl.DataFrame:
    """Rows of ``table`` from the ``sessions`` trading days up to and including ``day``."""
    window = PartitionWindow("date", calendar.shift_trading_days(day, -(sessions - 1)), day + dt.timedelta(days=1))
    return warehouse.read([table], window).frame if warehouse.exists([table]) else pl.DataFrame()


def _one_day(frame: pl.DataFrame, day: dt.date, what: str) -> pl.DataFrame:
    rows = frame.filter(pl.col("date") == day) if frame.height else frame
    if rows.is_empty():
        raise refuse(f"{what} {day}: daily_scores has no rows for {day}")
    return rows


@asset(
    group_name=GROUP,
    owners=owners_of(GROUP),
    kinds={"delta", "polars"},
    partitions_def=trading_day_partitions,
    metadata={"partition_expr": "date"},
    backfill_policy=BackfillPolicy.multi_run(max_partitions_per_run=100),
    code_version="daily-scores-v2",
    retry_policy=IO_RETRY,  # MLflow champion alias/model, Delta (quant_assets/retries.py)
    output_required=False,  # no champion yet: no scores, nothing downstream
    ins={
        "pit_features": AssetIn(
            partition_mapping=TimeWindowPartitionMapping(
                start_offset=-SCORING_HISTORY_DAYS, allow_nonexistent_upstream_partitions=True
            )
        ),
        **MODEL_TABLES,
    },
    # after each day's features (and again for every day a restatement changed them); the
    # model tables are not a trigger: a day is scored by the champion of its day
    automation_condition=after(["pit_features"]),
)
def daily_scores(
    context: AssetExecutionContext,
    tracking: MlflowTracking,
    pit_features: pl.DataFrame,
    lgbm_model: pl.DataFrame,
    seq_model: pl.DataFrame,
):
    """Scores of the day's point-in-time features by the current ``champion`` version of
    either model family (resolved when the run starts; a range run uses one version)."""
    start, end = _window(context)
    info = model_registry.champion_info(tracking.client())
    if info is None:
        context.log.warning(f"daily_scores [{start}, {end}): no champion yet; nothing scored")
        return
    with measured(context) as meter:  # run costs: wall/CPU/memory/rows/cost
        served = _served(info, {"lgbm_model": lgbm_model, "seq_model": seq_model},
                         context.resources.io_manager.warehouse)
        if served.history_rows > SCORING_HISTORY_DAYS:
            raise refuse(f"daily_scores: {info.name} v{info.version} reads {served.history_rows} "
                         f"days of history, more than the {SCORING_HISTORY_DAYS} this asset reads")
        days = [d for d in pit_features.get_column("date").unique().sort().to_list() if start <= d < end] \
            if pit_features.height else []
        if not days:
            raise refuse(f"daily_scores: no pit_features in [{start}, {end}); build them first")
        frame = served.score(pit_features, days).with_columns(
            model_version=pl.lit(served.version, dtype=pl.Int64),
            model_sha256=pl.lit(served.model.sha256),
            model_family=pl.lit(served.family.name),
        )
        context.log.info(
            f"daily_scores [{start}, {end}): {frame.height} rows by {info.name} "
            f"v{served.version} (model of {served.record['date']})"
        )
        meter.rows(rows_in=pit_features.height, rows_out=frame.height)
    # the version the alias resolved to is the lineage: reproduce pins the alias to it
    lineage = lineage_of(context, inputs={}, config={}, seeds={}, extra={"served_model": {
        "name": info.name, "alias": model_registry.CHAMPION,
        "version": served.version, "mlflow_run_id": served.run_id}})
    with tracking.run(f"daily_scores {start}..{end}", lineage, output=frame,
                      tags={"quant.model_family": served.family.name}) as run:
        tracking.log_metrics({"rows": frame.height, "model_version": served.version})
    yield Output(
        frame,
        metadata={
            **lineage_metadata(lineage, [run.info.run_id]),
            "registered_model": info.name,
            "model_family": served.family.name,
            "model_version": served.version,
            "model_sha256": served.model.sha256,
            "mlflow_run_id": served.run_id,
            "model_month": str(served.record["date"]),
            "rows": frame.height,
        },
    )


DriftConfig = config_class("DriftConfig", drift.DriftPolicy, doc=drift.DriftPolicy.__doc__)


def _day_version(today: pl.DataFrame, day: dt.date, what: str) -> tuple[str, int]:
    pairs = today.select("model_family", "model_version").unique().rows()
    if len(pairs) != 1:
        raise refuse(f"{what} {day}: daily_scores mixes model versions {pairs}")
    return pairs[0][0], int(pairs[0][1])


@asset(
    group_name=GROUP,
    owners=owners_of(GROUP),
    kinds={"delta", "polars"},
    partitions_def=trading_day_partitions,
    metadata={"partition_expr": "date"},
    backfill_policy=ONE_DAY_A_RUN,
    code_version="drift-v2",
    retry_policy=IO_RETRY,  # MLflow model version, Delta (quant_assets/retries.py)
    ins={
        "daily_scores": AssetIn(partition_mapping=TODAY),
        "pit_features": AssetIn(partition_mapping=AllPartitionMapping()),
        **MODEL_TABLES,
    },
    automation_condition=after(["daily_scores"]),
    # the pooled days before D are read through the IO manager's warehouse
    required_resource_keys={"tracking", "io_manager"},
)
def drift_report(
    context: AssetExecutionContext,
    config: DriftConfig,
    daily_scores: pl.DataFrame,
    pit_features: pl.DataFrame,
    lgbm_model: pl.DataFrame,
    seq_model: pl.DataFrame,
):
    """PSI (reference-quantile bins) and KS of every feature and of the score: the last
    few scored days against the scoring version's training window."""
    with measured(context) as meter:  # run costs: wall/CPU/memory/rows/cost
        day = dt.date.fromisoformat(context.partition_key)  # one day a run (a range raises)
        today = _one_day(daily_scores, day, "drift_report")
        family_name, version = _day_version(today, day, "drift_report")
        name = model_registry.REGISTERED_MODELS[family_name]
        tracking: MlflowTracking = context.resources.tracking
        served = _served(model_registry.version_info(tracking.client(), version, name),
                         {"lgbm_model": lgbm_model, "seq_model": seq_model},
                         context.resources.io_manager.warehouse)
        model = served.model
        # the current sample: the pooled days scored by this same version
        pooled = _days_before(context.resources.io_manager.warehouse, "daily_scores", day, CURRENT_DAYS)
        current_scores = pooled.filter(
            (pl.col("model_family") == family_name) & (pl.col("model_version") == version)
        ) if "model_family" in pooled.columns else today
        current = pit_features.join(
            current_scores.select("date", "instrument_id", "score"), on=["date", "instrument_id"]
        )
        in_training = (pl.col("date") >= model.train_start) & (pl.col("date") <= model.train_end)
        reference = pit_features.filter(in_training).sort("date", "instrument_id")
        if reference.is_empty():
            raise refuse(
                f"drift_report {day}: no pit_features in the training window "
                f"{model.train_start}..{model.train_end} of {name} v{version}"
            )
        scored = served.score(pit_features.filter(pl.col("date") <= model.train_end),
                              reference.get_column("date").unique().sort().to_list())
        reference = reference.join(scored, on=["date", "instrument_id"])
        columns = [*model.feature_cols, "score"]
        policy = config.to(drift.DriftPolicy)
        # the day's verdict under its policy goes on every row: the serving alarm acts on it
        table, verdict = drift.with_verdict(
            drift.drift_table(reference, current, columns, bins=policy.bins), policy
        )
        frame = table.select(
            pl.lit(day, dtype=pl.Date).alias("date"),
            pl.lit(version, dtype=pl.Int64).alias("model_version"),
            pl.lit(family_name).alias("model_family"),
            pl.all(),
        ).with_columns(
            current_start=pl.lit(current.get_column("date").min(), dtype=pl.Date),
            reference_start=pl.lit(model.train_start, dtype=pl.Date),
            reference_end=pl.lit(model.train_end, dtype=pl.Date),
            bins=pl.lit(policy.bins, dtype=pl.Int64),
        )
        top = table.filter(pl.col("psi").is_not_null()).sort("psi", descending=True).head(10)
        meter.rows(rows_in=pooled.height + pit_features.height, rows_out=frame.height)
    return Output(
        frame,
        metadata={
            "model_family": family_name,
            "model_version": version,
            "score_psi": verdict.score_psi,
            "features_over_threshold": len(verdict.features_over),
            "breach": verdict.breach,
            "reason": verdict.reason or "none",
            "current_days": current.get_column("date").n_unique(),
            "top_psi": MetadataValue.md(_markdown(top)),
        },
    )


def _markdown(table: pl.DataFrame) -> str:
    lines = ["| column | PSI | KS | KS p |", "|---|---|---|---|"]
    for r in table.iter_rows(named=True):
        lines.append(f"| {r['column']} | {r['psi']:.4f} | {r['ks_statistic']:.3f} | {r['ks_pvalue']:.3g} |")
    return "\n".join(lines)


SignalHealthConfig = config_class("SignalHealthConfig", monitor.CapitalRule, doc=monitor.CapitalRule.__doc__)


def _family_backtest(backtests: dict[str, pl.DataFrame], family_name: str, what: str) -> pl.DataFrame:
    frame = backtests[FAMILIES[family_name].backtest]
    if frame.is_empty():
        raise refuse(f"{what}: the {family_name} family has no backtest ({FAMILIES[family_name].backtest})")
    return frame


@asset(
    group_name=GROUP,
    owners=owners_of(GROUP),
    kinds={"delta", "polars"},
    partitions_def=trading_day_partitions,
    metadata={"partition_expr": "date"},
    backfill_policy=ONE_DAY_A_RUN,
    code_version="signal-health-v2",
    retry_policy=IO_RETRY,  # windows of Delta tables; little compute (quant_assets/retries.py)
    ins={
        "daily_scores": AssetIn(partition_mapping=TODAY),
        "market_bars": AssetIn(
            partition_mapping=TimeWindowPartitionMapping(
                start_offset=-(HEALTH_DAYS - 1), allow_nonexistent_upstream_partitions=True
            )
        ),
        **BACKTESTS,
    },
    automation_condition=after(["daily_scores"]),
    required_resource_keys={"io_manager"},  # the live book's days before D (module docstring)
)
def signal_health(
    context: AssetExecutionContext,
    config: SignalHealthConfig,
    daily_scores: pl.DataFrame,
    market_bars: pl.DataFrame,
    corporate_actions: pl.DataFrame,
    backtest: pl.DataFrame,
    seq_backtest: pl.DataFrame,
):
    """Realised 21-day Sharpe of the live signal against its backtest's rolling 21-day
    Sharpe distribution; beyond 2 sd the signal's capital multiplier drops to 0.5."""
    with measured(context) as meter:  # run costs: wall/CPU/memory/rows/cost
        day = dt.date.fromisoformat(context.partition_key)  # one day a run (a range raises)
        today = _one_day(daily_scores, day, "signal_health")
        family_name, version = _day_version(today, day, "signal_health")
        scores = _days_before(context.resources.io_manager.warehouse, "daily_scores", day, HEALTH_DAYS)
        prices = total_return_index(market_bars, corporate_actions)
        bt = _family_backtest({"backtest": backtest, "seq_backtest": seq_backtest}, family_name, "signal_health")
        # the live book is built like the backtest it is compared with: the backtest's spec
        with not_retried(ValueError):  # mixed specs stay mixed on a retry
            spec = backtested_spec(bt)
        live = monitor.live_returns(scores.select("date", "instrument_id", "score"), prices, spec)
        # the book starts flat WARMUP_DAYS before the window: those days are not returns of it
        live_r = live.get_column("net_return").to_numpy()[monitor.WARMUP_DAYS:]
        reference = bt.filter(pl.col("date") <= day).sort("date").get_column("net_return")
        health = monitor.signal_health(
            live_r, reference.to_numpy(), monitor.WINDOW, **dataclasses.asdict(config.to(monitor.CapitalRule))
        )
        versions = sorted(scores.get_column("model_version").unique().to_list())
        frame = pl.DataFrame(
            [{"date": day, **health.as_row(), "model_versions": ",".join(map(str, versions)),
              "model_version": version, "model_family": family_name}],
            schema_overrides={"date": pl.Date, "model_version": pl.Int64},
        )
        context.log.info(f"signal_health {day}: {health.status}; multiplier {health.capital_multiplier}")
        meter.rows(rows_in=scores.height + market_bars.height + bt.height, rows_out=frame.height)
    return Output(
        frame,
        metadata={
            "model_family": family_name,
            "realised_sharpe": health.realised_sharpe,
            "z_score": health.z_score,
            "breach": health.breach,
            "capital_multiplier": health.capital_multiplier,
            "status": health.status,
        },
    )


@asset(
    group_name=GROUP,
    owners=owners_of(GROUP),
    kinds={"delta", "polars"},
    partitions_def=trading_day_partitions,
    metadata={"partition_expr": "date"},
    backfill_policy=ONE_DAY_A_RUN,
    code_version="target-weights-v1",
    retry_policy=IO_RETRY,  # Delta, the audit trail (quant_assets/retries.py)
    ins={
        "daily_scores": AssetIn(partition_mapping=TODAY),
        "signal_health": AssetIn(partition_mapping=TODAY),
        "market_bars": AssetIn(
            partition_mapping=TimeWindowPartitionMapping(
                start_offset=-WEIGHTS_HISTORY_DAYS, allow_nonexistent_upstream_partitions=True
            )
        ),
        **BACKTESTS,
    },
    automation_condition=after(["signal_health"], wait_for=["daily_scores", "signal_health"]),
    required_resource_keys={"io_manager"},  # the audit trail lives in its warehouse
)
def target_weights(
    context: AssetExecutionContext,
    daily_scores: pl.DataFrame,
    signal_health: pl.DataFrame,
    market_bars: pl.DataFrame,
    corporate_actions: pl.DataFrame,
    universe: pl.DataFrame,
    backtest: pl.DataFrame,
    seq_backtest: pl.DataFrame,
):
    """The portfolio to hold after the day's close: the champion's scores through the
    backtest's own construction (its recorded spec), times signal health's capital
    multiplier (0.5 while the realised 21-day Sharpe is beyond 2 sd of the backtest's).
    One row per name held: construction weight, multiplier, target weight."""
    with measured(context) as meter:  # run costs: wall/CPU/memory/rows/cost
        day = dt.date.fromisoformat(context.partition_key)  # one day a run (a range raises)
        today = _one_day(daily_scores, day, "target_weights")
        family_name, version = _day_version(today, day, "target_weights")
        health = signal_health.filter(pl.col("date") == day)
        if health.height != 1:
            raise refuse(f"target_weights {day}: signal_health has {health.height} rows for {day}")
        health_row = health.row(0, named=True)
        bt = _family_backtest({"backtest": backtest, "seq_backtest": seq_backtest}, family_name, "target_weights")
        with not_retried(ValueError):  # mixed specs stay mixed on a retry
            spec = backtested_spec(bt)
        prices = total_return_index(market_bars, corporate_actions)
        frame = build_target_weights(
            today.select("date", "instrument_id", "score"), prices, spec, day,
            float(health_row["capital_multiplier"]), universe=universe, market_bars=market_bars,
        ).with_columns(
            model_family=pl.lit(family_name),
            model_version=pl.lit(version, dtype=pl.Int64),
            health_status=pl.lit(health_row["status"]),
        )
        multiplier = float(health_row["capital_multiplier"])
        if multiplier != 1.0:
            audit.record(audit.AuditEvent(
                "capital", "asset", "target_weights", partitions=(context.partition_key,),
                model_version=str(version), reason=f"capital x{multiplier:g}: {health_row['status']}",
                dagster_run_id=context.run_id,
                tags={"model_family": family_name, "capital_multiplier": f"{multiplier:g}"},
            ), context.resources.io_manager.root)
        meter.rows(rows_in=today.height, rows_out=frame.height)
    gross = float(frame["target_weight"].abs().sum()) if frame.height else 0.0
    return Output(
        frame,
        metadata={
            "model_family": family_name,
            "model_version": version,
            "capital_multiplier": multiplier,
            "names": frame.height,
            "gross_target": gross,
            "health_status": health_row["status"],
        },
    )

