"""The calendar as Dagster partitions: trading days (and the days a label can exist for),
months, sweep trials.

Built once at import from the settings (QUANT_START_DATE / QUANT_END_DATE /
QUANT_FIRST_MODEL_MONTH), so the UI, schedules and backfills all see the same range.
"""

from __future__ import annotations

import datetime as dt

from dagster import (
    AssetKey,
    BackfillPolicy,
    DagsterInvariantViolationError,
    DynamicPartitionsDefinition,
    MonthlyPartitionsDefinition,
    TimeWindowPartitionMapping,
    TimeWindowPartitionsDefinition,
)
from dagster._core.execution.context.metadata_logging import (
    AssetMetadataHandle,
    OutputMetadataAccumulator,
)

from quant_assets import calendar
from quant_assets.settings import Settings, load_settings

PARTITION_COLUMN = "date"  # daily and monthly tables alike are partitioned by a Date column


def _holiday_exclusions(settings: Settings) -> list[dt.datetime]:
    # through the partition range's end (a few days past end_date), so that a closed
    # weekday right after the last day cannot become a partition
    last = (settings.end_date + dt.timedelta(days=10)) if settings.end_date else dt.date(dt.date.today().year + 2, 12, 31)
    odd = calendar.weekend_sessions(settings.start_date, min(last, calendar.sessions(settings.calendar_name).last),
                                    settings.calendar_name)
    if odd:  # a weekday cron cannot hold them; refuse rather than silently drop sessions
        raise ValueError(f"{settings.calendar_name} has weekend sessions ({odd[:3]}...): not supported")
    return [
        dt.datetime.combine(h, dt.time(0), tzinfo=dt.UTC)
        for h in calendar.closed_weekdays(settings.start_date, last, settings.calendar_name)
    ]


def build_trading_day_partitions(settings: Settings, lag: int = 0) -> TimeWindowPartitionsDefinition:
    """The trading days; with ``lag`` > 0 the last ``lag`` days of the range (or, live, the
    ``lag`` days up to today) are not partitions yet (see ``build_label_partitions``)."""
    end = None
    if settings.end_date is not None:
        # a weekday partition's window runs to the next trading day (Friday -> Monday),
        # so the range must end there for the last day to count as a partition
        end = dt.datetime.combine(
            calendar.shift_trading_days(settings.end_date, 1 - lag, settings.calendar_name), dt.time(0), tzinfo=dt.UTC
        )
    return TimeWindowPartitionsDefinition(
        cron_schedule="0 0 * * 1-5",  # weekdays; closed weekdays of the exchange excluded below
        start=dt.datetime.combine(settings.start_date, dt.time(0), tzinfo=dt.UTC),
        end=end,
        fmt="%Y-%m-%d",
        timezone="UTC",
        exclusions=_holiday_exclusions(settings),
        # open-ended (live): today's partition exists from its start so that the daily
        # schedule can build it after today's cutoff
        # (a lag shifts the fixed end above; live, it holds back the latest partitions)
        end_offset=0 if end is not None else 1 - lag,
    )


def build_label_partitions(settings: Settings) -> TimeWindowPartitionsDefinition:
    """The trading days a label can exist for: the label of D needs the bars of the
    ``label_horizon`` trading days after D, so its partition appears ``label_horizon``
    partitions after D's (the same days, the last ``label_horizon`` held back). The
    automation builds a label as soon as its partition exists and its bars are in, and the
    UI never offers a label whose horizon cannot have bars yet."""
    return build_trading_day_partitions(settings, lag=settings.label_horizon)


def build_monthly_partitions(settings: Settings) -> MonthlyPartitionsDefinition:
    end = calendar.next_month(settings.end_date) if settings.end_date else None
    return MonthlyPartitionsDefinition(
        start_date=settings.first_model_month.isoformat(),
        end_date=end.isoformat() if end else None,
        timezone="UTC",
        fmt="%Y-%m-%d",
    )


trading_day_partitions = build_trading_day_partitions(load_settings())
label_partitions = build_label_partitions(load_settings())
monthly_partitions = build_monthly_partitions(load_settings())
sweep_trial_partitions = DynamicPartitionsDefinition(name="sweep_trials")


def run_partitions(keys: list[str]) -> tuple[str | None, dict[str, str]]:
    """(partition_key, tags) of a run of `keys` (consecutive partitions): one key is the
    run's partition; several are a range, which Dagster reads from its range tags."""
    # tag names only (no public constants)
    from dagster._core.storage.tags import (
        ASSET_PARTITION_RANGE_END_TAG,
        ASSET_PARTITION_RANGE_START_TAG,
    )

    if len(keys) == 1:
        return keys[0], {}
    return None, {ASSET_PARTITION_RANGE_START_TAG: keys[0], ASSET_PARTITION_RANGE_END_TAG: keys[-1]}


# --------------------------------------------------------------------------------------------
# What the UI says about the partitions. Dagster's partitions line is the cron and the start
# ("0 0 * * 1-5, starting 2022-01-03 UTC"): it hides the exchange holidays excluded from the
# weekdays and the range's end. Each partitioned asset's description says them, and its
# definition metadata lists the holidays (``describe_partitions``).
# --------------------------------------------------------------------------------------------
CALENDAR_METADATA = "trading_calendar"
MONTHS_METADATA = "model_months"


def trading_days_note(settings: Settings, partitions: TimeWindowPartitionsDefinition, lag: int = 0) -> tuple[str, str]:
    """(a sentence for the description, Markdown for the metadata) of a trading-day
    partitioning: the exchange calendar, the first and last day, the excluded holidays and,
    for labels (``lag``), why the last days of the bars have no partition."""
    cal = settings.calendar_name
    # from the settings, not the partition keys: a live range (or a clock before its first
    # day) may have none yet, and the code location must load all the same
    first = settings.start_date.isoformat()
    keys = partitions.get_partition_keys() if settings.end_date is not None else []
    last = keys[-1] if keys else None
    if settings.end_date is not None and last is not None:
        span = f"{first} to {last} ({len(keys)} days)"
        through = dt.date.fromisoformat(last)
    elif settings.end_date is not None:
        span = f"from {first} (none yet before {settings.end_date})"
        through = settings.end_date
    else:
        span = f"from {first}, open-ended (a day's partition exists from the day's start)"
        through = max(dt.date.today(), settings.start_date)
    holidays = calendar.closed_weekdays(dt.date.fromisoformat(first), through, cal)
    sentence = (f"Partitions: {cal} trading days {span}: the weekdays of the cron shown by "
                f"Dagster less {len(holidays)} exchange holidays (listed in the "
                f"{CALENDAR_METADATA} metadata).")
    if lag:
        if last is not None:
            tail = calendar.trading_days(calendar.shift_trading_days(dt.date.fromisoformat(last), 1, cal),
                                         settings.end_date, cal)
            sentence += (f" The last {lag} trading days of the bars ({tail[0]} to {tail[-1]}) have no "
                         f"label partition: a label needs the bars of the {lag} sessions after its day.")
        else:
            sentence += (f" A day's label partition appears {lag} sessions after the day, once its "
                         "horizon can have bars.")
    md = (f"**{cal}** trading days {span}, {partitions.timezone}.\n\n"
          f"Excluded weekdays (exchange holidays, {len(holidays)}): "
          + (", ".join(d.isoformat() for d in holidays) or "none"))
    if settings.end_date is not None:
        md += f"\n\nThe bars end on {settings.end_date} (QUANT_END_DATE)."
        if lag and last is not None:
            md += f" Labels end {lag} sessions earlier, on {last} (label horizon {lag})."
    return sentence, md


def months_note(settings: Settings, partitions: MonthlyPartitionsDefinition) -> tuple[str, str]:
    """(sentence, Markdown) of the monthly partitioning: the model months and the end."""
    first = settings.first_model_month.isoformat()[:7]  # the settings: there may be no key yet
    keys = partitions.get_partition_keys() if settings.end_date is not None else []
    if keys:
        span = f"{first} to {keys[-1][:7]} ({len(keys)} months)"
    elif settings.end_date is not None:
        span = f"from {first} (none yet)"
    else:
        span = f"from {first}, open-ended"
    sentence = f"Partitions: model months {span}, from QUANT_FIRST_MODEL_MONTH to the bars' last month."
    md = f"Model months {span}" + (f"; the bars end on {settings.end_date}." if settings.end_date else ".")
    return sentence, md


def describe_partitions(assets: list, settings: Settings | None = None) -> list:
    """Each asset partitioned by trading days, label days or months with its calendar in its
    description and its definition metadata (what the UI's partitions line leaves out)."""
    from dagster import AssetsDefinition, MetadataValue

    settings = settings or load_settings()
    notes = {}
    for pdef, note in ((trading_day_partitions, lambda: trading_days_note(settings, trading_day_partitions)),
                       (label_partitions, lambda: trading_days_note(settings, label_partitions, settings.label_horizon)),
                       (monthly_partitions, lambda: months_note(settings, monthly_partitions))):
        notes[id(pdef)] = (CALENDAR_METADATA if pdef is not monthly_partitions else MONTHS_METADATA, pdef, note)
    cache: dict[int, tuple[str, str]] = {}

    def described(spec):
        entry = next(((key, note) for key, pdef, note in notes.values()
                      if spec.partitions_def is not None and spec.partitions_def == pdef), None)
        if entry is None:
            return spec
        key, note = entry
        if id(note) not in cache:  # once per partitioning, not per asset
            cache[id(note)] = note()
        sentence, md = cache[id(note)]
        description = f"{spec.description.rstrip()}\n\n{sentence}" if spec.description else sentence
        return spec.replace_attributes(description=description).merge_attributes(
            metadata={key: MetadataValue.md(md)})

    return [a.map_asset_specs(described) if isinstance(a, AssetsDefinition) else a for a in assets]


def daily_backfill_policy() -> BackfillPolicy:
    """How a range of trading days is cut into runs, the same for every daily asset that a
    job builds together (market bars, features, labels): a job's assets must agree, or the
    UI offers one chunk size and Dagster runs another. About four years a run by default
    (QUANT_FEATURE_DAYS_PER_RUN=1040): 10 years of 500 instruments in 3 runs, each well
    under a GB (features are computed a context year at a time)."""
    return BackfillPolicy.multi_run(max_partitions_per_run=load_settings().feature_days_per_run)


def months_of(context) -> list[dt.date]:
    """First days of the months of a monthly partition or range (an asset's context)."""
    window = context.partition_time_window
    months, month = [], window.start.date()
    while month < window.end.date():
        months.append(month)
        month = calendar.next_month(month)
    return months


# Months before a month that "up to the month's end" reaches back: more than any history
# (the mapping clamps to the first trading day).
ALL_HISTORY_MONTHS = 1200


def up_to_month_end() -> TimeWindowPartitionMapping:
    """Monthly -> daily: every day from the first one to the month's last. What a
    walk-forward month reads (its training rows end before it, its scores are its own days),
    and why its partition waits for its last session and ignores later days."""
    return TimeWindowPartitionMapping(
        start_offset=-ALL_HISTORY_MONTHS, end_offset=0, allow_nonexistent_upstream_partitions=True
    )


def add_partition_metadata(step_context, asset_key, metadata_by_partition: dict[str, dict]) -> None:
    """``add_asset_metadata(metadata, asset_key, partition_key=key)`` for each partition of a
    range run, in one update: the same checks (an asset of the step, partitions the run
    targets) and the same metadata on each partition's materialisation.

    Why: Dagster's ``add_asset_metadata`` recomputes the run's partition keys on each call
    (~0.5 ms for a 1,040-day range) and copies and re-checks every entry added before
    (quadratic), which made two calls a day (the row counts of the asset and of the IO
    manager) ~1.6 s of CPU per 1,040-day run. ``step_context`` is the step's
    ``StepExecutionContext`` (``context.get_step_execution_context()`` in an asset,
    ``context.step_context`` in an IO manager). Its metadata accumulator is Dagster's own
    (internal): where it is not there, each partition goes through ``add_asset_metadata``.
    """
    if not metadata_by_partition:
        return
    accumulator = getattr(step_context, "_metadata_accumulator", None)
    if not isinstance(accumulator, OutputMetadataAccumulator):
        for key, metadata in metadata_by_partition.items():
            step_context.add_asset_metadata(metadata, asset_key=asset_key, partition_key=key)
        return
    assets_def = step_context.assets_def
    asset_key = AssetKey.from_coercible(asset_key)
    if not assets_def or asset_key not in assets_def.keys or not assets_def.partitions_def:
        raise DagsterInvariantViolationError(f"Attempted to add partition metadata for '{asset_key}', "
                                             "not a partitioned asset of this step.")
    targeted = set(assets_def.partitions_def.get_partition_keys_in_range(step_context.partition_key_range))
    outside = sorted(set(metadata_by_partition) - targeted)
    if outside:
        raise DagsterInvariantViolationError(
            f"Attempted to add metadata for partition key '{outside[0]}' that is not being targeted.")
    merged = dict(accumulator.per_output_metadata)
    for key, metadata in metadata_by_partition.items():
        handle = AssetMetadataHandle(asset_key=asset_key, partition_key=key)
        merged[handle] = {**merged.get(handle, {}), **metadata}
    step_context._metadata_accumulator = OutputMetadataAccumulator(per_output_metadata=merged)
