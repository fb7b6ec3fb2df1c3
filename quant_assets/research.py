"""The research API: the warehouse in a notebook, with the platform's guarantees.

One module a researcher imports; no Dagster instance, daemon or webserver is needed (and
importing it loads neither Dagster nor MLflow)::

    from quant_assets import research

    lab = research.open()                      # QUANT_WAREHOUSE_URI (default .quant/warehouse)
    lab.tables()                               # the assets present, their Delta versions
    feats = lab.read("pit_features", "2023-03-01", "2023-03-31")   # polars; pandas=True
    older = lab.read("backtest", version=3)   # Delta time travel (or at="2024-06-01T12:00Z")
    fresh = lab.features(["2023-03-31"])      # computed now from the raw tables, same engine
    bt = lab.backtest(my_scores, research.StrategySpec(sector_neutral=True, borrow_bps=50))
    report = lab.report(bt, my_scores)         # the validation report's statistics + tear sheet
    lab.log(report, "reversal idea")           # optional: an MLflow run with lineage

Point in time: what each read guarantees
----------------------------------------
* ``pit_features`` (and ``lab.features``): a row of day D was computed only from rows with
  ``knowledge_time <= cutoff(D)`` and bars dated <= D (``features/engine.py``); the blocking
  ``no_lookahead_leak`` check recomputed sampled days from inputs cut at their cutoff
  before the partition was written. ``lab.features(D)`` runs the same engine on the
  warehouse's raw tables and equals the stored row of D when both saw the same raw tables
  and feature catalogue (plug-ins included, ``QUANT_FEATURE_MODULES``).
* ``labels`` look forward by construction: the label of D is the return over (D, D+h],
  known only at ``t1``. Use them as targets and for the IC, never as inputs of a score.
* Raw tables (``market_bars``, ``corporate_actions``, ``fundamentals``, ``universe``) are
  bitemporal: ``read`` returns every version of every row, corrections included.
  ``read(..., known_at=D)`` returns each row as known at cutoff(D): the latest version
  with ``knowledge_time <= cutoff(D)`` (the engine's as-of rule).
* Delta time travel (``version=``, ``at=``) is a different axis: it shows what the
  *warehouse* held after a commit (the state a past run read), not what the market knew.
  A session reads each table at one version: the one at ``at`` when the session is pinned,
  otherwise the latest when the table is first read, so a notebook sees one snapshot while
  Dagster keeps writing (``refresh()`` moves to the latest). ``versions_read`` is the
  lineage of everything the session read.
* Your own scores: a score of day t is taken as known after the close of t and traded at
  the close of t + ``execution_lag`` (default 1, ``backtest/strategy.py``). Scores built from
  ``pit_features`` of t satisfy this; scores built from labels or later bars do not, and
  nothing here can tell.

Backtests use the platform's portfolio construction and costs (``StrategySpec``: quantile
long-short, sector or beta neutrality, net exposure, turnover limit, square-root impact,
borrow on shorts) through the numba core (``backtest.strategy.backtest_scores``) over
total-return closes of the warehouse; reports use the validation report's statistics
(``validation.report.summarise``: PSR, DSR over the strategy variants, PBO, IC, bootstrap,
benchmark-relative active return, tracking error, information ratio, beta, alpha) and its
tear sheet (``validation.tearsheet.render_tearsheet``).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from quant_assets import calendar
from quant_assets.backtest.strategy import ScoreBacktest, StrategySpec, backtest_scores, book_inputs
from quant_assets.data.reference import universe_as_of
from quant_assets.features import (
    FeatureConfig,
    compute_features,
    compute_labels,
    feature_modules,
    feature_versions,
    pit,
    total_return_index,
    use_feature_modules,
)
from quant_assets.features.catalog import active_modules
from quant_assets.features.online import lookback_start
from quant_assets.settings import Settings, get_settings
from quant_assets.validation import regimes
from quant_assets.validation.benchmark import Benchmark, benchmark_for_book
from quant_assets.validation.report import ValidationSummary, summarise
from quant_assets.validation.tearsheet import TearSheetInputs, monthly_ic, render_tearsheet
from quant_assets.validation.trials import strategy_variants
from quant_assets.warehouse import PartitionWindow, Warehouse, WarehouseError, content_hash

__all__ = [
    "Benchmark",
    "ResearchReport",
    "ResearchSession",
    "ScoreBacktest",
    "StrategySpec",
    "feature_modules",
    "open",
    "use_feature_modules",
]

# The MLflow experiment of research runs (the platform's runs are in "quant-assets").
RESEARCH_EXPERIMENT = "quant-assets-research"
# The column a table's date range filters on (default "date").
DATE_COLUMNS = {"corporate_actions": "ex_date", "fundamentals": "period_end"}
# The key of one row's versions in each bitemporal raw table (data/schemas.py contracts).
VERSION_KEYS = {
    "market_bars": ("instrument_id", "date"),
    "corporate_actions": ("instrument_id", "ex_date"),
    "fundamentals": ("instrument_id", "field", "period_end"),
}
RAW_TABLES = ("universe", "market_bars", "corporate_actions", "fundamentals")
SCORE_COLUMNS = ("date", "instrument_id", "score")

Day = dt.date | str


def _day(value: Day, what: str) -> dt.date:
    if isinstance(value, dt.datetime):
        return value.date()
    if isinstance(value, dt.date):
        return value
    try:
        return dt.date.fromisoformat(str(value))
    except ValueError as exc:
        raise ValueError(f"{what}={value!r} is not a date (YYYY-MM-DD)") from exc


def _instant(value: dt.datetime | dt.date | str, what: str) -> dt.datetime:
    """A UTC time: naive datetimes and ISO strings without an offset read as UTC; a date is
    the end of that day (the state after everything committed on it)."""
    if isinstance(value, str):
        try:
            value = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError as exc:
            raise ValueError(f"{what}={value!r} is not an ISO time (e.g. 2024-06-01T12:00Z)") from exc
    if not isinstance(value, dt.datetime):
        value = dt.datetime.combine(value, dt.time.max)
    return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value.astimezone(dt.UTC)


def _as_polars(frame: Any, what: str) -> pl.DataFrame:
    if isinstance(frame, pl.DataFrame):
        return frame
    if isinstance(frame, pl.LazyFrame):
        return frame.collect()
    try:
        return pl.from_pandas(frame)
    except Exception as exc:
        raise TypeError(f"{what} must be a polars or pandas DataFrame, got {type(frame).__name__}") from exc


def _scores(frame: Any, column: str) -> pl.DataFrame:
    """(date: Date, instrument_id: String, score: Float64) from a researcher's frame."""
    frame = _as_polars(frame, "scores")
    if isinstance(frame.schema.get("date"), pl.Datetime):
        frame = frame.with_columns(pl.col("date").dt.date())
    missing = [c for c in ("date", "instrument_id", column) if c not in frame.columns]
    if missing:
        raise ValueError(f"scores lack columns {missing} (have {frame.columns}); need date, instrument_id and {column!r}")
    out = frame.select(
        pl.col("date").cast(pl.Date),
        pl.col("instrument_id").cast(pl.String),
        pl.col(column).cast(pl.Float64).alias("score"),
    )
    dup = out.filter(pl.struct("date", "instrument_id").is_duplicated())
    if dup.height:
        row = dup.row(0, named=True)
        raise ValueError(f"scores hold more than one row for {row['instrument_id']} on {row['date']}")
    return out.sort("date", "instrument_id")


@dataclass(frozen=True, eq=False)
class ResearchReport:
    """The validation report's statistics and tear sheet for a researcher's backtest.

    ``metrics``: the report's metrics (``validation.report.summarise``; benchmark-relative
    ones included); ``markdown``: its summary table; ``html``: the self-contained tear sheet;
    ``trial_sharpes``: per-day Sharpe of every trial that deflated the DSR."""

    metrics: dict[str, float]
    markdown: str
    html: str
    trial_sharpes: dict[str, float]
    benchmark: Benchmark
    spec: StrategySpec
    first_day: dt.date
    last_day: dt.date
    summary: ValidationSummary = field(repr=False)
    config: dict[str, Any] = field(default_factory=dict, repr=False)

    def __repr__(self) -> str:
        m = self.metrics
        return (f"ResearchReport({self.first_day}..{self.last_day}: sharpe={m.get('sharpe', float('nan')):.2f}, "
                f"dsr={m.get('dsr', float('nan')):.3f}, benchmark={self.benchmark.name!r})")

    def table(self) -> pl.DataFrame:
        """The metrics as a (metric, value) frame."""
        return pl.DataFrame({"metric": list(self.metrics), "value": [float(v) for v in self.metrics.values()]})

    def save(self, path: str | Path) -> Path:
        """Write the tear sheet (one HTML file, charts embedded); returns the path."""
        out = Path(path)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(self.html)
        return out

    def _repr_markdown_(self) -> str:  # a notebook shows the summary table
        return self.markdown


class ResearchSession:
    """One notebook's view of a warehouse (``research.open``; module docstring)."""

    def __init__(self, warehouse: Warehouse, settings: Settings, at: dt.datetime | None = None):
        self.warehouse = warehouse
        self.settings = settings
        self.at = at
        self._pinned: dict[str, int] = {}

    def __repr__(self) -> str:
        pin = f", at={self.at.isoformat()}" if self.at else ""
        return f"ResearchSession({self.warehouse.root!r}{pin})"

    # ------------------------------------------------------------------ tables and versions

    @property
    def versions_read(self) -> dict[str, int]:
        """table -> the Delta version this session reads it at (its lineage)."""
        return dict(self._pinned)

    def refresh(self) -> None:
        """Forget the versions read so far: the next reads take the latest (or ``at``'s)."""
        self._pinned.clear()

    def exists(self, table: str) -> bool:
        return self.warehouse.exists([table])

    def tables(self) -> pl.DataFrame:
        """(table, version, committed_at) of every Delta table under the warehouse root,
        at the version this session reads (latest, or at ``at``)."""
        rows = []
        for name in self._table_names():
            try:
                version = self.version(name)
            except WarehouseError:  # created after the session's `at`
                continue
            commits = self.history(name).filter(pl.col("version") == version)["committed_at"]
            rows.append({"table": name, "version": version, "committed_at": commits[0] if len(commits) else None})
        return pl.DataFrame(rows, schema={"table": pl.String, "version": pl.Int64,
                                          "committed_at": pl.Datetime("ms", "UTC")})

    def history(self, table: str) -> pl.DataFrame:
        """(version, committed_at, operation) of a table's Delta commits, newest first."""
        entries = self.warehouse.table([table]).history()
        return pl.DataFrame(
            {
                "version": [int(e["version"]) for e in entries],
                "committed_at": [dt.datetime.fromtimestamp(e["timestamp"] / 1000, dt.UTC) for e in entries],
                "operation": [str(e.get("operation", "")) for e in entries],
            },
            schema={"version": pl.Int64, "committed_at": pl.Datetime("ms", "UTC"), "operation": pl.String},
        )

    def version(self, table: str, *, at: dt.datetime | dt.date | str | None = None) -> int:
        """The Delta version of `table` this session reads (pinned at first use), or the
        version current at `at`."""
        if at is not None:
            return self._version_at(table, _instant(at, "at"))
        if table not in self._pinned:
            self._pinned[table] = (
                self._version_at(table, self.at) if self.at is not None
                else self.warehouse.table([table]).version()
            )
        return self._pinned[table]

    def _version_at(self, table: str, when: dt.datetime) -> int:
        # the last commit at or before `when` (delta-rs' load_as_version answers version 0
        # for a time before the table existed: not a state the warehouse ever had then)
        commits = self.history(table).filter(pl.col("committed_at") <= when)
        if commits.is_empty():
            raise WarehouseError(f"table {table} has no version committed at or before {when.isoformat()}")
        return int(commits["version"].max())

    def _table_names(self) -> list[str]:
        import pyarrow.fs as pafs  # the one listing that works for a folder and for S3

        root = self.warehouse.root.rstrip("/")
        if "://" not in root:
            root = str(Path(root).resolve())
        filesystem, path = pafs.FileSystem.from_uri(root if "://" in root else Path(root).as_uri())
        found: list[str] = []

        def walk(folder: str, prefix: tuple[str, ...], depth: int) -> None:
            try:
                children = filesystem.get_file_info(pafs.FileSelector(folder, allow_not_found=True))
            except OSError:
                return
            for child in sorted(children, key=lambda c: c.path):
                if child.type != pafs.FileType.Directory or child.base_name.startswith(("_", ".")):
                    continue
                key = (*prefix, child.base_name)
                if filesystem.get_file_info(f"{child.path}/_delta_log").type == pafs.FileType.Directory:
                    found.append("/".join(key))
                elif depth < 2:  # asset keys of a few parts
                    walk(child.path, key, depth + 1)

        walk(path, (), 0)
        return found

    # ------------------------------------------------------------------ reading

    def read(
        self,
        table: str,
        start: Day | None = None,
        end: Day | None = None,
        *,
        version: int | None = None,
        at: dt.datetime | dt.date | str | None = None,
        columns: Sequence[str] | None = None,
        instruments: Iterable[str] | None = None,
        known_at: Day | None = None,
        pandas: bool = False,
    ):
        """Rows of an asset's Delta table with ``start <= date <= end`` (both inclusive;
        ``ex_date`` for corporate actions, ``period_end`` for fundamentals), as polars or,
        with ``pandas=True``, pandas. ``version=`` or ``at=`` read a past version (Delta
        time travel); otherwise the session's version. ``known_at=D`` (raw tables) keeps
        each row as known at cutoff(D). Point-in-time rules: module docstring."""
        if version is not None and at is not None:
            raise ValueError("give version= or at=, not both")
        if version is None:
            version = self.version(table, at=at)
        delta = self.warehouse.table([table], version)
        names = [f.name for f in delta.schema().fields]
        selection = None
        if start is not None or end is not None:
            column = DATE_COLUMNS.get(table, "date")
            if column not in names:
                raise ValueError(f"table {table} has no {column!r} column to filter a date range on (columns {names})")
            first = _day(start, "start") if start is not None else dt.date.min
            last = _day(end, "end") if end is not None else dt.date.max - dt.timedelta(days=1)
            if last < first:
                raise ValueError(f"end={last} is before start={first}")
            selection = PartitionWindow(column, first, last + dt.timedelta(days=1))
        frame = self.warehouse.read([table], selection, version=version).frame
        if instruments is not None:
            frame = frame.filter(pl.col("instrument_id").is_in(list(instruments)))
        if known_at is not None:
            frame = self._known_at(table, frame, _day(known_at, "known_at"))
        if columns is not None:
            frame = frame.select(columns)
        return frame.to_pandas() if pandas else frame

    def _known_at(self, table: str, frame: pl.DataFrame, day: dt.date) -> pl.DataFrame:
        if "knowledge_time" not in frame.columns:
            raise ValueError(f"known_at: table {table} is not bitemporal (no knowledge_time column)")
        cut = calendar.cutoff(day, self.settings.cutoff_time)
        if table == "universe":
            return universe_as_of(frame, cut)
        if table not in VERSION_KEYS:
            raise ValueError(f"known_at: no version key for table {table} (known: {sorted(VERSION_KEYS)})")
        keys = VERSION_KEYS[table]
        # the engine's as-of join (features/pit.py): latest version per key by cutoff(day)
        known = pit.as_of(frame, [day], by=list(keys), cutoff_time=self.settings.cutoff_time)
        return known.drop("as_of").select(frame.columns).sort(list(keys))

    # ------------------------------------------------------------------ computing

    def raw_tables(self, first_bar: dt.date | None = None, last_bar: dt.date | None = None) -> dict[str, pl.DataFrame]:
        """The four raw tables (every version); market_bars dated in [first_bar, last_bar]."""
        out = {name: self.read(name) for name in ("universe", "corporate_actions", "fundamentals")}
        out["market_bars"] = self.read("market_bars", first_bar, last_bar) if (first_bar or last_bar) else self.read("market_bars")
        return out

    def features(
        self,
        dates: Iterable[Day] | None = None,
        *,
        start: Day | None = None,
        end: Day | None = None,
        features: Sequence[str] | None = None,
        instruments: Sequence[str] | None = None,
        pandas: bool = False,
    ):
        """Point-in-time features of ad-hoc days, computed now from the warehouse's raw
        tables with the asset's engine (``features.compute_features``) and the active
        catalogue (plug-ins included). Give `dates`, or `start`/`end` for every trading day
        between. Columns date, instrument_id, one Float64 per feature; a day's row reads only
        what was known at its cutoff."""
        days = self._days(dates, start, end)
        raw = self.raw_tables(lookback_start(days[0]), days[-1])
        config = FeatureConfig(
            cutoff_time=self.settings.cutoff_time,
            features=tuple(features) if features is not None else None,
            instruments=tuple(instruments) if instruments is not None else None,
        )
        frame = compute_features(raw["universe"], raw["market_bars"], raw["corporate_actions"], raw["fundamentals"],
                                 days, config)
        return frame.to_pandas() if pandas else frame

    def labels(self, start: Day, end: Day, *, horizon: int | None = None) -> pl.DataFrame:
        """Forward returns of the days in [start, end]: the stored ``labels`` table when
        it exists (and `horizon` is the platform's), else computed from the raw tables
        (``features.compute_labels``; days whose horizon is not yet in the bars are left out)."""
        horizon = horizon or self.settings.label_horizon
        first, last = _day(start, "start"), _day(end, "end")
        if self.exists("labels") and horizon == self.settings.label_horizon:
            return self.read("labels", first, last)
        bars = self.read("market_bars", first)
        known_until = bars["date"].max()
        days = [d for d in calendar.trading_days(first, last)
                if known_until is not None and calendar.shift_trading_days(d, horizon) <= known_until]
        return compute_labels(bars, self.read("corporate_actions"), days, horizon=horizon)

    def _days(self, dates, start, end) -> list[dt.date]:
        if dates is not None and (start is not None or end is not None):
            raise ValueError("give dates, or start and end, not both")
        if dates is not None:
            days = sorted({_day(d, "dates") for d in ([dates] if isinstance(dates, str | dt.date) else dates)})
        elif start is not None and end is not None:
            days = calendar.trading_days(_day(start, "start"), _day(end, "end"))
        else:
            raise ValueError("give dates, or start and end")
        if not days:
            raise ValueError("no trading day to compute")
        return days

    def prices(self) -> pl.DataFrame:
        """Total-return closes (date, instrument_id, tr_close) from every bar and corporate
        action: the prices the backtest asset trades on (back-adjusted from the last bar, so
        they are read whole, as the asset does: the same numbers bit for bit)."""
        return total_return_index(self.read("market_bars"), self.read("corporate_actions"))

    def _book(self, spec: StrategySpec) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame | None]:
        """(bars, prices, sectors) as the backtest asset builds them (``book_inputs``)."""
        bars = self.read("market_bars")
        prices, sectors = book_inputs(spec, total_return_index(bars, self.read("corporate_actions")),
                                      self.read("universe"), bars)
        return bars, prices, sectors

    # ------------------------------------------------------------------ backtesting

    def backtest(
        self,
        scores: Any,
        spec: StrategySpec | None = None,
        *,
        start: Day | None = None,
        end: Day | None = None,
        score: str = "score",
        borrow: pl.DataFrame | None = None,
    ) -> ScoreBacktest:
        """Backtest a score frame (date, instrument_id and a `score` column; polars or
        pandas; higher is better) with the platform's portfolio construction and costs
        (``StrategySpec``) through the numba core, over the warehouse's total-return
        closes of the days from `start` to `end` (default: the scores' first and last day).
        Prices before `start` feed the betas of a beta-neutral book; sectors come from the
        universe; ``dollar_volume`` (close x volume as traded) from the bars when the spec
        charges impact. Same call as the ``backtest`` asset makes for a month."""
        spec = spec or StrategySpec()
        frame = _scores(scores, score)
        if frame.is_empty():
            raise ValueError("scores are empty")
        first = _day(start, "start") if start is not None else frame["date"].min()
        last = _day(end, "end") if end is not None else frame["date"].max()
        _, prices, sectors = self._book(spec)
        window = prices.filter(pl.col("date").is_between(first, last))
        if window.is_empty():
            raise ValueError(f"no prices between {first} and {last} in market_bars")
        return backtest_scores(
            frame.filter(pl.col("date").is_between(first, last)), window, spec,
            sectors=sectors, borrow=borrow, history=prices.filter(pl.col("date") < first),
        )

    # ------------------------------------------------------------------ reporting

    def report(
        self,
        backtest: ScoreBacktest,
        scores: Any,
        spec: StrategySpec | None = None,
        *,
        score: str = "score",
        benchmark: Benchmark | None = None,
        variants: bool = True,
        extra_trial_sharpes: Mapping[str, float] | None = None,
        bootstrap_seed: int = 0,
        n_bootstrap: int = 500,
        title: str = "Research backtest",
    ) -> ResearchReport:
        """The validation report's statistics and tear sheet for `backtest` (of `scores`
        under `spec`, default StrategySpec()). The DSR and PBO count the report's strategy
        variants (quantiles x weighting, ``validation.trials.strategy_variants``) and any
        `extra_trial_sharpes` (per-day Sharpe ratios of the other ideas you tried: be
        honest, they deflate the Sharpe ratio). The benchmark, unless given, is the
        validation report's choice for the book (``benchmark_for_book``: the equal-weight
        market of the universe for a dollar-neutral book). The IC reads the labels."""
        spec = spec or StrategySpec()
        frame = _scores(scores, score)
        daily = backtest.daily.sort("date")
        first, last = daily["date"].min(), daily["date"].max()
        frame = frame.filter(pl.col("date").is_between(first, last))
        bars, all_prices, sectors = self._book(spec)
        prices = all_prices.filter(pl.col("date").is_between(first, last))
        history = all_prices.filter(pl.col("date") < first)
        trials: dict[str, object] = {}
        if variants:
            trials = {
                name: backtest_scores(frame, prices, variant, sectors=sectors, history=history).daily["net_return"].to_numpy()
                for name, variant in strategy_variants(spec).items()
            }
        if spec not in strategy_variants(spec).values() or not variants:
            trials["selected"] = daily["net_return"].to_numpy()  # the backtest itself is a trial too
        labels = self.labels(first, last)
        scored = frame.join(labels.select("date", "instrument_id", "fwd_return"), on=["date", "instrument_id"],
                            how="inner").drop_nulls(["score", "fwd_return"]).sort("date", "instrument_id")
        if benchmark is None:
            market = Benchmark("market factor: equal-weight universe",
                               regimes.equal_weight_returns(all_prices, "tr_close"), "market")
            benchmark = benchmark_for_book(daily["net_exposure"], daily["gross_exposure"], market=market)
        summary = summarise(
            daily["net_return"].to_numpy(), daily["turnover"].to_numpy(), trials,
            scored["date"].to_physical().to_numpy(), scored["score"].to_numpy(), scored["fwd_return"].to_numpy(),
            bootstrap_seed=bootstrap_seed, extra_trial_sharpes=dict(extra_trial_sharpes or {}),
            n_bootstrap=n_bootstrap, benchmark=benchmark.aligned(daily["date"]), benchmark_name=benchmark.name,
        )
        strategy = daily.select("date", pl.col("net_return").alias("return"))
        state = regimes.market_state(all_prices, price_col="tr_close").filter(pl.col("date").is_between(first, last))
        real_series, source = _stress_references()
        sized = all_prices.join(
            bars.select("date", "instrument_id", (pl.col("close") * pl.col("volume")).alias("dollar_volume")),
            on=["date", "instrument_id"], how="left",
        )
        try:
            factors = regimes.factor_exposures(strategy, regimes.factor_returns(
                sized, sectors, size_col="dollar_volume", price_col="tr_close"))
        except ValueError:  # too few common days for the regression: the section says so
            factors = None
        html = render_tearsheet(TearSheetInputs(
            daily=strategy,
            metrics=summary.metrics,
            benchmark=benchmark,
            backtest=daily,
            predictions=frame,
            asset_returns=regimes.instrument_returns(all_prices, "tr_close"),
            positions=backtest.positions_frame(),
            trial_sharpes=summary.trial_sharpes,
            execution_lag=spec.execution_lag,
            monthly_ic=monthly_ic(summary.rank_ic.dates, summary.rank_ic.values),
            bootstrap_max_drawdown=summary.bootstrap.max_drawdown,
            regimes=regimes.regime_performance(strategy, regimes.regime_labels(state)),
            stress=regimes.stress_table({"strategy": strategy, **real_series}),
            stress_source=source,
            factors=factors,
            title=f"{title} {first} .. {last}",
        ))
        config = {
            "spec": asdict(spec),
            "first_day": first.isoformat(),
            "last_day": last.isoformat(),
            "trials": list(summary.trial_sharpes),
            "benchmark": benchmark.name,
            "bootstrap_seed": bootstrap_seed,
            "n_bootstrap": n_bootstrap,
            "scores_sha256": content_hash(frame),
        }
        return ResearchReport(dict(summary.metrics), summary.markdown, html, dict(summary.trial_sharpes), benchmark,
                              spec, first, last, summary, config)

    # ------------------------------------------------------------------ lineage

    def log(self, report: ResearchReport, name: str = "research", *, tracking_uri: str | None = None,
            experiment: str = RESEARCH_EXPERIMENT, tags: Mapping[str, str] | None = None) -> str:
        """Log `report` as an MLflow run (metrics, report.md, report.html) with the lineage
        record of the platform's runs (``lineage.collect_lineage``: the Delta version of
        every table this session read, the config, feature versions and plug-in modules,
        git commit, packages); returns the run id. MLflow: QUANT_MLFLOW_URI unless given."""
        from quant_assets.lineage import collect_lineage
        from resources.tracking import MlflowTracking  # MLflow only when a run is logged

        lineage = collect_lineage(
            asset_key=f"research/{name}",
            partition_keys=[],
            input_versions=self.versions_read,
            config=report.config,
            seeds={"bootstrap": int(report.config.get("bootstrap_seed", 0))},
            feature_versions=feature_versions(),
            extra={"warehouse": self.warehouse.root, "feature_modules": list(active_modules()),
                   "session_at": self.at.isoformat() if self.at else None},
        )
        tracking = MlflowTracking(
            tracking_uri=tracking_uri or self.settings.mlflow_uri,
            artifact_location=self.settings.mlflow_artifacts,
            experiment=experiment,
        )
        with tracking.run(name, lineage, params=report.config["spec"], tags=tags) as run:
            tracking.log_metrics(report.metrics)
            tracking.log_text(report.markdown, "report.md")
            tracking.log_text(report.html, "report.html")
        return run.info.run_id


def _stress_references() -> tuple[dict[str, pl.DataFrame], str]:
    """The real-data reference series of the report's stress windows (skfolio's S&P 500
    prices); none when the data are not installed (the table then shows the strategy only)."""
    from quant_assets.data import real

    try:
        stocks = real.load_sp500_prices()
        index = real.load_sp500_index().with_columns(instrument_id=pl.lit("SP500"))
    except real.RealDataUnavailable:
        return {}, "no real reference data installed"
    spx = regimes.instrument_returns(index).select("date", pl.col("ret").alias("return"))
    return {
        "S&P 500 index": spx,
        "equal-weight 20 S&P 500 stocks": regimes.equal_weight_returns(stocks),
        "5-day reversal, 20 stocks": regimes.reversal_returns(stocks, lookback=5),
    }, real.SOURCE


def open(uri: str | None = None, *, at: dt.datetime | dt.date | str | None = None,
         settings: Settings | None = None) -> ResearchSession:
    """A research session over the warehouse at `uri` (a folder or ``s3://bucket/prefix``,
    S3 options from the standard ``AWS_*`` variables; default QUANT_WAREHOUSE_URI, i.e.
    ``.quant/warehouse`` after ``make demo``). `at` pins every read to the tables as they
    were at that time (Delta time travel). Settings (cutoff rule, label horizon, MLflow)
    are read from the environment now unless given."""
    settings = settings or get_settings()
    root = uri or settings.warehouse_uri
    if "://" not in root and not Path(root).is_dir():
        raise FileNotFoundError(f"no warehouse at {root}: run `make demo` or set QUANT_WAREHOUSE_URI")
    return ResearchSession(Warehouse(root), settings, _instant(at, "at") if at is not None else None)

