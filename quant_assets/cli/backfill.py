"""``python -m quant_assets backfill ASSET... --from DAY --to DAY``: a partition-range backfill
from a terminal, chunked by each asset's BackfillPolicy.

By default it submits a real Dagster asset backfill to the instance (``DAGSTER_HOME``): the
daemon (``dagster dev`` or ``dagster-daemon run``) launches its runs, one per chunk of
``max_partitions_per_run`` partitions, and the UI shows it under *Backfills*. With
``--in-process`` the same chunks run here, one after another, in dependency order, as runs
of the same instance. ``--wait`` follows the backfill until it ends. Exit codes: 0 done (or
submitted), 1 a run failed, 2 bad arguments (unknown asset, a day that is not a partition,
``--from`` after ``--to``).

Why not ``dagster asset materialize --partition-range``: the stock command runs one run in
this process and refuses a range unless every selected asset has
``BackfillPolicy.single_run()`` ("Partition ranges with the CLI require all selected assets
to have a BackfillPolicy.single_run() policy"); ``pit_features`` and ``market_bars`` are
``multi_run`` so that a ten-year range never becomes one run.

Unpartitioned assets may be named too (e.g. the reference data before ``market_bars``):
they are materialised once. Time-window assets that are not daily (the monthly models) take
the partitions that start between the two days.
"""

from __future__ import annotations

import argparse
import datetime as dt
import difflib
import sys
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
POLL_SECONDS = 2.0
# a daemon that has not written a heartbeat for this long is not running (it beats every 30s)
HEARTBEAT_STALE_SECONDS = 120.0
QUANT_BACKFILL_TAG = "quant/backfill"  # groups the runs of an --in-process backfill


class UsageError(ValueError):
    """Bad arguments: exit code 2, with the message."""


# --- the plan (no Dagster: what the policies say) -------------------------------------------


@dataclass(frozen=True)
class Target:
    """One selected asset: its partition keys in the range (() when unpartitioned) and the
    most partitions one run may take (None: all of them in one run)."""

    asset: str
    keys: tuple[str, ...]
    per_run: int | None
    policy: str

    @property
    def units(self) -> int:
        return max(1, len(self.keys))


@dataclass(frozen=True)
class Chunk:
    asset: str
    keys: tuple[str, ...]

    def describe(self) -> str:
        if not self.keys:
            return f"{self.asset} (unpartitioned)"
        if len(self.keys) == 1:
            return f"{self.asset} {self.keys[0]}"
        return f"{self.asset} {self.keys[0]} .. {self.keys[-1]} ({len(self.keys)} partitions)"


def chunks_of(target: Target) -> list[Chunk]:
    """The runs of ``target`` as its policy cuts them: consecutive runs of at most ``per_run``
    partitions from the first one (what Dagster's asset backfill does with a contiguous range)."""
    if not target.keys:
        return [Chunk(target.asset, ())]
    size = target.per_run or len(target.keys)
    return [Chunk(target.asset, target.keys[i:i + size]) for i in range(0, len(target.keys), size)]


def plan(targets: Sequence[Target]) -> list[Chunk]:
    """Every chunk of every target, targets in the order given (upstream first)."""
    return [chunk for target in targets for chunk in chunks_of(target)]


def parse_day(text: str, flag: str) -> dt.date:
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise UsageError(f"{flag} {text!r} is not a day (YYYY-MM-DD)") from None


def nearest(keys: Sequence[str], day: str) -> str:
    """The partitions either side of a day that is not one (for the error message)."""
    before = [k for k in keys if k < day]
    after = [k for k in keys if k > day]
    return ", ".join(f"{label} {k}" for label, k in (("previous", before[-1] if before else None),
                                                      ("next", after[0] if after else None)) if k)


# --- progress ---------------------------------------------------------------------------------


class Progress:
    """A tqdm bar over partitions on a terminal; plain, flushed lines otherwise (a log, CI)."""

    def __init__(self, total: int, tty: bool, stream=None) -> None:
        self.stream = stream or sys.stdout
        self.bar = None
        if tty:
            import shutil

            from tqdm import tqdm

            # the size from shutil: a pty that reports 0x0 (script, some CI runners) gets
            # 100x24, where tqdm would hide its bar as "below the screen"
            size = shutil.get_terminal_size((100, 24))
            self.bar = tqdm(total=total, unit="partition", file=self.stream,
                            ncols=min(size.columns, 120), nrows=size.lines)

    def line(self, text: str) -> None:
        if self.bar is not None:
            self.bar.write(text, file=self.stream)
        else:
            print(text, file=self.stream, flush=True)

    def advance(self, n: int) -> None:
        if self.bar is not None and n:
            self.bar.update(n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


# --- Dagster side ----------------------------------------------------------------------------


def _quiet_warnings() -> None:
    # the assets use beta parameters (backfill_policy, allow_nonexistent_upstream_partitions):
    # their warnings would bury the command's own output
    import warnings

    from dagster import BetaWarning, PreviewWarning

    warnings.filterwarnings("ignore", category=BetaWarning)
    warnings.filterwarnings("ignore", category=PreviewWarning)


def resolve_targets(defs, names: Sequence[str], first: dt.date, last: dt.date) -> list[Target]:
    """The selected assets in dependency order, with their partitions in [first, last];
    UsageError for an unknown asset or a day that is not a partition of a daily asset."""
    from dagster import TimeWindowPartitionsDefinition

    from quant_assets.partitions import trading_day_partitions

    if first > last:
        raise UsageError(f"--from {first} is after --to {last}")
    graph = defs.resolve_asset_graph()
    known = {key.to_user_string(): key for key in graph.materializable_asset_keys}
    unknown = [n for n in names if n not in known]
    if unknown:
        hints = [f"{n!r} (did you mean {', '.join(difflib.get_close_matches(n, known, 3)) or '?'})"
                 for n in unknown]
        raise UsageError(f"unknown asset {', '.join(hints)}; assets: {', '.join(sorted(known))}")
    wanted = {known[n] for n in names}
    order = [key for key in graph.toposorted_asset_keys if key in wanted]
    targets = []
    for key in order:
        node = graph.get(key)
        name = key.to_user_string()
        pdef = node.partitions_def
        policy = node.backfill_policy
        if pdef is None:
            targets.append(Target(name, (), None, "unpartitioned"))
            continue
        if not isinstance(pdef, TimeWindowPartitionsDefinition):
            raise UsageError(f"{name} is partitioned by {type(pdef).__name__}, not by days: "
                             "backfill takes time-partitioned and unpartitioned assets")
        keys = pdef.get_partition_keys()
        if pdef.cron_schedule == trading_day_partitions.cron_schedule:
            for day, flag in ((first, "--from"), (last, "--to")):
                if day.isoformat() not in keys:
                    span = f"{keys[0]} .. {keys[-1]}" if keys else "none"
                    near = nearest(keys, day.isoformat())
                    raise UsageError(
                        f"{flag} {day} is not a trading-day partition of {name} (a weekend, an "
                        f"exchange holiday, or outside its partitions {span})"
                        + (f"; {near}" if near else "")
                    )
            selected = [k for k in keys if first.isoformat() <= k <= last.isoformat()]
        else:  # e.g. months: the partitions whose window starts in the range
            selected = [k for k in keys
                        if first <= pdef.time_window_for_partition_key(k).start.date() <= last]
            if not selected:
                raise UsageError(f"no partition of {name} starts between {first} and {last}")
        if policy is None:
            per_run, text = 1, "no BackfillPolicy: one run per partition"
        elif policy.max_partitions_per_run is None:  # single_run()
            per_run, text = None, "BackfillPolicy.single_run()"
        else:
            per_run = policy.max_partitions_per_run
            text = f"BackfillPolicy.multi_run(max_partitions_per_run={per_run})"
        targets.append(Target(name, tuple(selected), per_run, text))
    return targets


def describe_plan(targets: Sequence[Target]) -> list[str]:
    lines = []
    for target in targets:
        chunks = chunks_of(target)
        lines.append(f"  {target.asset}: {len(target.keys) or 'unpartitioned'}"
                     f"{' partitions' if target.keys else ''} in {len(chunks)} run"
                     f"{'s' if len(chunks) > 1 else ''} ({target.policy})")
        lines.extend(f"    {chunk.describe()}" for chunk in chunks)
    return lines


def submit(instance, defs, targets: Sequence[Target], tags: dict[str, str], title: str) -> str:
    """Add an asset backfill of ``targets`` to the instance; the daemon runs it. Returns its id."""
    from dagster import AssetKey

    # Dagster internals: the public API submits a backfill only through GraphQL (the
    # webserver's launchPartitionBackfill), which needs a running webserver or a loaded
    # workspace. These are the calls that mutation makes (dagster_graphql
    # implementation/execution/backfill.py): the same record, so the daemon and the UI treat
    # it as one launched from the UI.
    from dagster._core.definitions.selector import (
        PartitionRangeSelector,
        PartitionsByAssetSelector,
        PartitionsSelector,
    )
    from dagster._core.execution.backfill import PartitionBackfill
    from dagster._core.utils import make_new_backfill_id

    selectors = [
        PartitionsByAssetSelector(
            asset_key=AssetKey.from_user_string(t.asset),
            partitions=PartitionsSelector(ranges=[PartitionRangeSelector(start=t.keys[0], end=t.keys[-1])])
            if t.keys else None,
        )
        for t in targets
    ]
    backfill = PartitionBackfill.from_partitions_by_assets(
        backfill_id=make_new_backfill_id(),
        asset_graph=defs.resolve_asset_graph(),
        backfill_timestamp=time.time(),
        tags=tags,
        dynamic_partitions_store=instance,
        partitions_by_assets=selectors,
        title=title,
        description=None,
        run_config=None,
    )
    instance.add_backfill(backfill)
    return backfill.backfill_id


def daemon_is_running(instance) -> bool:
    beats = instance.get_daemon_heartbeats()
    beat = beats.get("BACKFILL")
    return beat is not None and time.time() - beat.timestamp < HEARTBEAT_STALE_SECONDS


def _run_partitions(run, targets: dict[str, Target]) -> list[tuple[str, tuple[str, ...]]]:
    """(asset, keys) of each selected asset a run of the backfill materialises."""
    from dagster._core.storage.tags import (  # tag names only: no public constant
        ASSET_PARTITION_RANGE_END_TAG,
        ASSET_PARTITION_RANGE_START_TAG,
        PARTITION_NAME_TAG,
    )

    start = run.tags.get(ASSET_PARTITION_RANGE_START_TAG)
    end = run.tags.get(ASSET_PARTITION_RANGE_END_TAG)
    single = run.tags.get(PARTITION_NAME_TAG)
    out = []
    for key in sorted(run.asset_selection or [], key=lambda k: k.to_user_string()):
        target = targets.get(key.to_user_string())
        if target is None:
            continue
        if not target.keys:
            keys: tuple[str, ...] = ()
        elif start and end:
            keys = tuple(k for k in target.keys if start <= k <= end)
        elif single:
            keys = (single,) if single in target.keys else ()
        else:
            keys = target.keys
        out.append((target.asset, keys))
    return out


def _failures(instance, run_id: str) -> list[str]:
    """The step failures of a finished run, one short entry each."""
    from dagster import DagsterEventType

    out = []
    for entry in instance.all_logs(run_id, of_type=DagsterEventType.STEP_FAILURE):
        event = entry.dagster_event
        error = getattr(event.event_specific_data, "error", None) if event else None
        if error is not None:
            out.append(f"{event.step_key}: {_error_text(error)}")
    return out


def follow(instance, backfill_id: str, targets: Sequence[Target], progress: Progress,
           poll: float = POLL_SECONDS) -> int:
    """Wait for a daemon backfill: print each run as it is launched and as it ends, advance
    the bar by the partitions of each successful run. 0 when every partition is
    materialised, 1 when the backfill ends with a failed run (or fails itself)."""
    from dagster import DagsterRunStatus, RunsFilter

    # internal: the backfill record and its status (no public read API outside GraphQL)
    from dagster._core.execution.backfill import BulkActionStatus
    from dagster._core.storage.tags import BACKFILL_ID_TAG

    by_name = {t.asset: t for t in targets}
    pending = {(t.asset, k) for t in targets for k in (t.keys or ("",))}
    seen: dict[str, str] = {}
    failed: dict[str, str] = {}
    terminal = {DagsterRunStatus.SUCCESS, DagsterRunStatus.FAILURE, DagsterRunStatus.CANCELED}
    done_status = {BulkActionStatus.COMPLETED_SUCCESS, BulkActionStatus.COMPLETED}
    while True:
        backfill = instance.get_backfill(backfill_id)
        records = instance.get_run_records(RunsFilter(tags={BACKFILL_ID_TAG: backfill_id}))
        runs = [r.dagster_run for r in sorted(records, key=lambda r: (r.create_timestamp, r.dagster_run.run_id))]
        for run in runs:
            parts = _run_partitions(run, by_name)
            what = "; ".join(Chunk(asset, keys).describe() for asset, keys in parts) or run.job_name
            previous = seen.get(run.run_id)
            if previous is None:
                progress.line(f"launched run {run.run_id[:8]}: {what}")
            if run.status in terminal and previous != run.status.value:
                stats = instance.get_run_stats(run.run_id)
                took = f" in {stats.end_time - stats.start_time:.1f}s" if stats.end_time and stats.start_time else ""
                progress.line(f"{run.status.value:<7} run {run.run_id[:8]}: {what}{took}")
                if run.status == DagsterRunStatus.SUCCESS:
                    covered = {(a, k) for a, keys in parts for k in (keys or ("",))} & pending
                    pending -= covered
                    progress.advance(len(covered))
                else:
                    failed[run.run_id] = what
                    for reason in _failures(instance, run.run_id):
                        progress.line(f"  {reason}")
            seen[run.run_id] = run.status.value
        running = [r for r in runs if r.status not in terminal]
        if not pending and not running:
            return EXIT_OK  # every partition is in; the daemon marks the backfill on its next tick
        status = backfill.status if backfill else BulkActionStatus.FAILED
        if status in done_status and not pending:
            return EXIT_OK
        if status in (BulkActionStatus.COMPLETED_FAILED, BulkActionStatus.FAILED,
                      BulkActionStatus.CANCELED) or (status in done_status and pending):
            error = f": {backfill.error.message.strip()}" if backfill and backfill.error else ""
            progress.line(f"backfill {backfill_id} {status.value}{error}; "
                          f"{len(pending)} partitions not materialised; failed runs: "
                          + (", ".join(f"{rid[:8]} ({what})" for rid, what in failed.items()) or "none"))
            return EXIT_FAILED
        time.sleep(poll)


def _error_text(error) -> str:
    """A step's error and its causes, one line each ("Exceeded max_retries" says little by
    itself: the cause is what failed)."""
    lines = []
    while error is not None and len(lines) < 4:
        first = (error.message.strip().splitlines() or [""])[0]
        lines.append(first[:300])
        error = error.cause
    return "\n    caused by: ".join(lines)


def run_in_process(instance, defs, targets: Sequence[Target], progress: Progress,
                   tags: dict[str, str]) -> int:
    """Run every chunk here, upstream assets first, one run each; stop at the first failure."""
    from dagster import AssetKey

    # tag names only (no public constants): what the daemon tags a range run with
    from dagster._core.storage.tags import (
        ASSET_PARTITION_RANGE_END_TAG,
        ASSET_PARTITION_RANGE_START_TAG,
    )

    job = defs.resolve_implicit_global_asset_job_def()
    # the failure is printed below, once and short; the run's own logs keep every detail
    quiet = {"loggers": {"console": {"config": {"log_level": "CRITICAL"}}}}
    for chunk in plan(targets):
        run_tags = dict(tags)
        partition_key = None
        if len(chunk.keys) == 1:
            partition_key = chunk.keys[0]
        elif chunk.keys:
            run_tags.update({ASSET_PARTITION_RANGE_START_TAG: chunk.keys[0],
                             ASSET_PARTITION_RANGE_END_TAG: chunk.keys[-1]})
        t0 = time.monotonic()
        result = job.execute_in_process(
            instance=instance, asset_selection=[AssetKey.from_user_string(chunk.asset)],
            partition_key=partition_key, tags=run_tags, run_config=quiet, raise_on_error=False,
        )
        took = time.monotonic() - t0
        if not result.success:
            reasons = [f"{e.step_key}: {_error_text(e.event_specific_data.error)}"
                       for e in result.all_events
                       if e.is_step_failure and e.event_specific_data and e.event_specific_data.error]
            progress.line(f"FAILURE run {result.run_id[:8]}: {chunk.describe()} in {took:.1f}s\n  "
                          + "\n  ".join(reasons or ["(no step failure recorded)"]))
            return EXIT_FAILED
        progress.line(f"SUCCESS run {result.run_id[:8]}: {chunk.describe()} in {took:.1f}s")
        progress.advance(max(1, len(chunk.keys)))
    return EXIT_OK


@dataclass
class Options:
    assets: list[str]
    first: dt.date
    last: dt.date
    in_process: bool = False
    wait: bool = False
    title: str | None = None
    tags: dict[str, str] = field(default_factory=dict)


def parse_args(argv: Sequence[str]) -> Options:
    parser = argparse.ArgumentParser(
        prog="quant-assets backfill", description=__doc__.splitlines()[0],
        epilog="exit codes: 0 done (or submitted), 1 a run failed, 2 bad arguments",
    )
    parser.add_argument("assets", nargs="+", metavar="ASSET", help="asset keys, e.g. pit_features")
    parser.add_argument("--from", dest="first", required=True, metavar="DAY", help="first day (YYYY-MM-DD)")
    parser.add_argument("--to", dest="last", required=True, metavar="DAY", help="last day, included")
    parser.add_argument("--in-process", action="store_true",
                        help="run the chunks in this process instead of submitting to the daemon")
    parser.add_argument("--wait", action="store_true",
                        help="follow the daemon's backfill until it ends (--in-process always waits)")
    parser.add_argument("--title", default=None, help="backfill title shown in the UI")
    parser.add_argument("--tag", action="append", default=[], metavar="KEY=VALUE",
                        help="a tag on the backfill and its runs (repeatable)")
    args = parser.parse_args(list(argv))  # bad usage: argparse exits 2 itself
    tags = {}
    for item in args.tag:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UsageError(f"--tag {item!r} is not KEY=VALUE")
        tags[key] = value
    first, last = parse_day(args.first, "--from"), parse_day(args.last, "--to")
    if first > last:  # before loading the code location: a typo fails at once
        raise UsageError(f"--from {first} is after --to {last}")
    return Options(list(dict.fromkeys(args.assets)), first, last, args.in_process, args.wait,
                   args.title, tags)


def main(argv: Iterable[str] | None = None, *, tty: bool | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        options = parse_args(argv)
    except UsageError as exc:
        print(f"quant-assets backfill: {exc}", file=sys.stderr)
        return EXIT_USAGE
    _quiet_warnings()

    from dagster import DagsterInstance

    from quant_assets.instance import prepare_local_instance
    from quant_assets.placement.apply import configure_local_instance
    from quant_assets.placement.policy import load_policy
    from quant_assets.settings import get_settings

    settings = get_settings()
    if settings.env == "local":
        # the same local instance as the demo and `make ui` (pool limits of deploy/pools.yaml)
        prepare_local_instance(settings.dagster_home)
        configure_local_instance(settings.dagster_home, load_policy())

    from quant_assets.definitions import defs

    try:
        targets = resolve_targets(defs, options.assets, options.first, options.last)
    except UsageError as exc:
        print(f"quant-assets backfill: {exc}", file=sys.stderr)
        return EXIT_USAGE
    chunks = plan(targets)
    total = sum(t.units for t in targets)
    tty = sys.stdout.isatty() if tty is None else tty
    where = "in this process" if options.in_process else "by the daemon"
    print(f"backfill {', '.join(t.asset for t in targets)} {options.first} .. {options.last}: "
          f"{total} partitions in {len(chunks)} run{'s' if len(chunks) > 1 else ''}, {where} "
          f"(DAGSTER_HOME={settings.dagster_home})")
    for text in describe_plan(targets):
        print(text)
    sys.stdout.flush()

    title = options.title or f"quant-assets backfill {' '.join(options.assets)} {options.first}..{options.last}"
    with DagsterInstance.get() as instance:
        if options.in_process:
            progress = Progress(total, tty)
            try:
                code = run_in_process(instance, defs, targets, progress,
                                      {**options.tags, QUANT_BACKFILL_TAG: uuid.uuid4().hex[:8]})
            finally:
                progress.close()
        else:
            backfill_id = submit(instance, defs, targets, options.tags, title)
            print(f"submitted backfill {backfill_id} (UI: Overview > Backfills, /runs/b/{backfill_id})",
                  flush=True)
            if not daemon_is_running(instance):
                print("note: no dagster daemon has beaten for this instance lately; start "
                      "`dagster dev -w workspace.yaml` or `dagster-daemon run -w workspace.yaml` "
                      "with the same DAGSTER_HOME to run it", file=sys.stderr, flush=True)
            if not options.wait:
                return EXIT_OK
            progress = Progress(total, tty)
            try:
                code = follow(instance, backfill_id, targets, progress)
            finally:
                progress.close()
    print("done" if code == EXIT_OK else "FAILED: a run failed (see above)", flush=True)
    return code
