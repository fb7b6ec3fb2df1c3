"""When each asset of the golden flow materialises by itself: Dagster's declarative automation
(``AutomationCondition``), evaluated by the automation sensor (``sensors/automation.py``).

Every condition is built from Dagster's operands except ``MonthLabelled`` (a month waits
for its last session's label partition, which the operands cannot see before it exists),
and each says the researcher's rule in its label (the UI's *Automation* tab shows the tree
and why a partition was or was not requested):

* ``labels`` of D as soon as the bars of its horizon exist: the label partitions lag the
  trading days by the horizon (``partitions.label_partitions``), so a label's partition
  appears when its last bar can, and waits until those bars are in.
* a month's models, predictions, backtests and model sweep once, when the month's last
  session's features and labels exist (their inputs end with the month); its strategy
  grid (bars only) when the month appears;
* each family's validation report after its backtest (and the month's trials), the model
  comparison after the reports, the promotion behind the blocking gate when
  ``QUANT_AUTO_PROMOTE=promote``;
* the daily scores, drift report, signal health and target weights after each day's
  features.

Late or restated data: a restated day's ``market_bars`` (rebuilt with its features by the
landing sensor) makes every *already materialised* partition that reads it out of date
(``restated``), and each dependent follows through its own condition, so exactly the
partitions that read the restated day are rebuilt once, nothing else.

What the conditions deliberately do not do:

* build history: a partition that is missing is only built automatically when it is new
  (it appeared since the sensor last looked) or recent (``RECENT``); history is the job of
  ``python -m quant_assets backfill``;
* react to inputs that cannot change their rows: the bitemporal reference tables
  (universe, corporate actions, fundamentals) only gain rows with later knowledge times,
  which no point-in-time row of an earlier day can see; the model tables read by serving
  (scores are by the champion of their day, not rescored when a new month is trained); the
  whole-history inputs of monthly assets (``AllPartitionMapping``), whose new days reach
  them through the month's own inputs.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable

from dagster import AssetKey, AssetSelection, AutomationContext, AutomationResult
from dagster import AutomationCondition as AC

from quant_assets import calendar

# Missing daily partitions younger than this are built by themselves (a day whose build
# was skipped or failed, a label whose bars came late); older ones are history.
RECENT = dt.timedelta(days=14)


def _assets(keys: Iterable[str]) -> AssetSelection:
    return AssetSelection.assets(*keys)


def _updated(keys: Iterable[str]) -> AC:
    """Any of these inputs was updated (by a run that did not also build this partition) or
    is requested on this tick."""
    keys = tuple(keys)
    return AC.any_deps_updated().allow(_assets(keys)).with_label(f"{' or '.join(keys)} updated")


def _ready(keys: Iterable[str], apart: Iterable[str] = ()) -> AC:
    """None of these inputs is missing or in progress, and nor is this partition; nor is
    any of ``apart`` requested on this tick.

    ``apart``: inputs partitioned differently from this asset (a month's daily inputs, the
    reports' monthly backtests). Requested on the same tick they go to a run of their own,
    and the sensor's runs start side by side, in no order: a month's models were trained on
    the labels of a restated day while those labels were being rebuilt, then trained again
    (tests/daemon_soak.py). Inputs of the same partitioning are requested into the same run,
    which builds them first, so those need no wait."""
    keys, apart = tuple(keys), tuple(apart)
    condition = (
        ~AC.any_deps_missing().allow(_assets(keys))
        & ~AC.any_deps_in_progress().allow(_assets(keys))
        & ~AC.in_progress()
    )
    if apart:
        condition = condition & ~AC.any_deps_match(RequestedThisTick()).allow(_assets(apart)).with_label(
            f"{', '.join(apart)} not requested on this tick")
    return condition.with_label(f"{', '.join(keys)} present, nothing in progress")


def _buildable(recent: dt.timedelta | None) -> AC:
    """Materialised already (a rebuild), or missing but new or recent (never history)."""
    if recent is None:
        return ~AC.missing() | AC.in_latest_time_window()
    return (~AC.missing() | AC.in_latest_time_window(recent)).with_label("not history")


def restated(keys: Iterable[str] = ("market_bars",)) -> AC:
    """An already materialised partition whose inputs were restated: rebuild it (its new
    partitions are built by the job that builds the inputs, e.g. the daily feature run)."""
    return (
        _updated(keys).since_last_handled() & ~AC.missing() & _ready(keys)
    ).with_label("restated input")


def after(
    keys: Iterable[str],
    *,
    wait_for: Iterable[str] | None = None,
    recent: dt.timedelta | None = RECENT,
    apart: Iterable[str] = (),
) -> AC:
    """Once ``keys`` updated (or this partition newly appeared), when ``wait_for`` (default:
    ``keys``) are present and settled (and ``apart`` not requested on this tick, ``_ready``):
    new partitions, and every rebuild their update causes, never history."""
    keys = tuple(keys)
    wait_for = tuple(wait_for) if wait_for is not None else keys
    trigger = (AC.newly_missing() | _updated(keys)).since_last_handled()
    return (trigger & _buildable(recent) & _ready(wait_for, apart)).with_label(
        f"after {', '.join(keys)}"
    )


class RequestedThisTick(AC):
    """Requested on this tick, into whatever run.

    Why not Dagster's ``will_be_requested``: it only counts a request that the same run as
    the asset evaluated would build (same partitioning), so a month never sees the rebuild
    of its daily inputs requested on the same tick (``_ready``'s ``apart``). Reads the
    tick's requests so far (``request_subsets_by_key``; inputs are evaluated before the
    assets that read them); tests/test_automation.py fails without it."""

    @property
    def name(self) -> str:
        return "requested_this_tick"

    @property
    def description(self) -> str:
        return "requested on this tick (in any run)"

    def evaluate(self, context: AutomationContext) -> AutomationResult:
        requested = context.request_subsets_by_key.get(context.key)
        true_subset = (context.candidate_subset.compute_intersection(requested)
                       if requested is not None else context.get_empty_subset())
        return AutomationResult(context=context, true_subset=true_subset)


class MonthLabelled(AC):
    """A month whose last session's label partition exists (its horizon's bars can be in).

    Why not Dagster's operands alone: the label partitions lag the trading days by the
    horizon, so at the month's end the labels of its last sessions do not exist yet, and
    dependency conditions (``any_deps_missing``) only look at upstream partitions that
    exist. Without this the month's models were built at the month's end, before those
    labels, then rebuilt as each of them arrived (tests/test_automation.py). Evaluated in
    the code location (the automation sensor runs with ``use_user_code_server``)."""

    def __init__(self, labels: str = "labels"):
        self._labels = labels

    @property
    def name(self) -> str:
        return "month_labelled"

    @property
    def description(self) -> str:
        return f"the month's last session has a {self._labels} partition"

    def evaluate(self, context: AutomationContext) -> AutomationResult:
        view = context.asset_graph_view
        # which label partitions exist at the evaluation time (the view's clock)
        labelled = view.get_full_subset(key=AssetKey(self._labels)).expensively_compute_partition_keys()
        keys = [
            key for key in context.candidate_subset.expensively_compute_partition_keys()
            if _last_session(dt.date.fromisoformat(key)).isoformat() in labelled
        ]
        partitions_def = context.asset_graph_view.asset_graph.get(context.key).partitions_def
        true_subset = view.get_subset_from_partition_keys(context.key, partitions_def, set(keys))
        return AutomationResult(context=context, true_subset=true_subset)


def _last_session(month: dt.date) -> dt.date:
    return calendar.shift_trading_days(calendar.next_month(month), -1)


def month_closed(
    inputs: Iterable[str], *, wait_for: Iterable[str] | None = None, labels: str | None = "labels",
) -> AC:
    """A month's partition (it exists once the month is over) when every input of its
    window is in: for the models, the last session's features and labels (``labels``: the
    label asset whose last-session partition must exist first; None when none is read)."""
    inputs = tuple(inputs)
    # the month's inputs are daily: requested on the same tick, they run apart from it
    condition = after(inputs, wait_for=wait_for, recent=None, apart=inputs)
    if labels is not None:
        condition = condition & MonthLabelled(labels)
    return condition.with_label(f"month closed: {', '.join(inputs)} complete")


def new_month(*, wait_for: Iterable[str] = ()) -> AC:
    """A month's partition once, when it appears (the month is over), when ``wait_for`` are
    present: for assets whose only inputs are whole-history tables that every new day
    updates (those updates are not triggers)."""
    return (
        AC.newly_missing().since_last_handled() & AC.in_latest_time_window() & _ready(wait_for)
    ).with_label("new month")


def when_updated(
    keys: Iterable[str], *, wait_for: Iterable[str] | None = None, apart: Iterable[str] = (),
) -> AC:
    """Unpartitioned: after any of ``keys`` updated, once ``wait_for`` are settled (and
    ``apart``, partitioned inputs, not requested on this tick: ``_ready``)."""
    keys = tuple(keys)
    wait_for = tuple(wait_for) if wait_for is not None else keys
    return (
        (AC.newly_missing() | _updated(keys)).since_last_handled() & _ready(wait_for, apart)
    ).with_label(f"after {', '.join(keys)}")


def promotion(comparison: str = "model_comparison") -> AC:
    """The champion after the comparison, only when its blocking gate passed (or is run in
    the same run, which then stops before the promotion if the gate fails)."""
    return (
        _updated([comparison]).since_last_handled()
        & ~AC.any_deps_missing().allow(_assets([comparison]))
        & AC.all_deps_blocking_checks_passed()
        & ~AC.in_progress()
    ).with_label("promotion: gate passed")


def gate_check(comparison: str = "model_comparison") -> AC:
    """The blocking gate, with the comparison it judges (``QUANT_AUTO_PROMOTE=promote``)."""
    return (
        (AC.any_deps_updated().since_last_handled()) & ~AC.in_progress()
    ).with_label(f"gate after {comparison}")
