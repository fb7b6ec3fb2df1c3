"""What the UI says about the partitions (issue 18): Dagster's partitions line is only the
cron and the start ("0 0 * * 1-5, starting 2022-01-03 UTC"), so each partitioned asset's
description and metadata name the exchange calendar, the excluded holidays and the end; and
labels end ``label_horizon`` sessions before the bars, so they can be 100% materialised."""

from __future__ import annotations

import dataclasses
import datetime as dt

from dagster import AssetKey

from quant_assets import calendar
from quant_assets.partitions import (
    CALENDAR_METADATA,
    MONTHS_METADATA,
    build_label_partitions,
    build_monthly_partitions,
    build_trading_day_partitions,
    label_partitions,
    months_note,
    trading_day_partitions,
    trading_days_note,
)
from quant_assets.settings import load_settings

SETTINGS = dataclasses.replace(load_settings(), start_date=dt.date(2022, 1, 3), end_date=dt.date(2023, 2, 28),
                               first_model_month=dt.date(2023, 1, 1), label_horizon=5)


def test_the_partitions_line_hides_what_the_notes_say():
    days = build_trading_day_partitions(SETTINGS)
    assert str(days) == "0 0 * * 1-5, starting 2022-01-03 UTC."  # Dagster's line: no end, no holidays
    sentence, md = trading_days_note(SETTINGS, days)
    assert f"{SETTINGS.calendar_name} trading days 2022-01-03 to 2023-02-28 (290 days)" in sentence
    assert "less 12 exchange holidays" in sentence
    for holiday in ("2022-01-17", "2022-07-04", "2022-12-26", "2023-02-20"):  # MLK, July 4th, Christmas, Presidents'
        assert holiday in md and holiday not in days.get_partition_keys()
    assert "2023-02-28 (QUANT_END_DATE)" in md


def test_labels_end_the_horizon_before_the_bars_and_say_why():
    labels = build_label_partitions(SETTINGS)
    keys = labels.get_partition_keys()
    # the label of D needs the bars of D+1..D+h: the last label day is h sessions before the end
    assert keys[-1] == calendar.shift_trading_days(SETTINGS.end_date, -5, SETTINGS.calendar_name).isoformat()
    assert keys == build_trading_day_partitions(SETTINGS).get_partition_keys()[:-5]
    sentence, md = trading_days_note(SETTINGS, labels, lag=5)
    assert "to 2023-02-21 (285 days)" in sentence
    assert "The last 5 trading days of the bars (2023-02-22 to 2023-02-28) have no label partition" in sentence
    assert "Labels end 5 sessions earlier, on 2023-02-21" in md


def test_open_ended_partitions_say_so():
    live = dataclasses.replace(SETTINGS, end_date=None)
    sentence, _ = trading_days_note(live, build_label_partitions(live), lag=5)
    assert "open-ended" in sentence and "appears 5 sessions after the day" in sentence
    sentence, _ = months_note(live, build_monthly_partitions(live))
    assert "from 2023-01, open-ended" in sentence


def test_months_note_names_the_last_month():
    sentence, md = months_note(SETTINGS, build_monthly_partitions(SETTINGS))
    assert "model months 2023-01 to 2023-02 (2 months)" in sentence and "2023-02-28" in md


def test_every_partitioned_asset_of_the_code_location_says_its_calendar():
    from quant_assets.definitions import defs

    graph = defs.resolve_asset_graph()
    settings = load_settings()
    last_label = label_partitions.get_last_partition_key()
    for key in graph.get_all_asset_keys():
        node = graph.get(key)
        pdef = node.partitions_def
        if pdef == trading_day_partitions or pdef == label_partitions:
            assert CALENDAR_METADATA in node.metadata, key
            assert f"{settings.calendar_name} trading days" in node.description, key
        elif pdef is not None and pdef.__class__.__name__ == "MonthlyPartitionsDefinition":
            assert MONTHS_METADATA in node.metadata and "Partitions: model months" in node.description, key
    labels = graph.get(AssetKey("labels"))
    assert f"to {last_label}" in labels.description and "have no label partition" in labels.description
    assert "Forward total return" in labels.description  # the asset's own description stays first


def _policies_by_job() -> dict[str, set]:
    from quant_assets.definitions import defs
    from quant_assets.jobs import ALL_JOBS

    graph = defs.resolve_asset_graph()
    out = {}
    for job in ALL_JOBS:
        if hasattr(job, "selection"):  # an asset job (define_asset_job)
            keys = job.selection.resolve(graph)
            out[job.name] = {graph.get(k).backfill_policy for k in keys
                             if graph.get(k).is_executable and graph.get(k).is_partitioned}
    return out


def test_the_daily_job_runs_the_chunks_its_assets_dialog_offers():
    """Issue 18: a startup warning said daily_features_job uses at most 400 partitions per
    run while the asset dialog said 1040. A job whose assets disagree runs the smallest
    chunk; every job's assets agree (serving_job's monitors judge one day a run by design
    while daily_scores alone takes ranges: its one day a run is what its description says)."""
    policies = _policies_by_job()
    mixed = {name for name, found in policies.items() if len(found) > 1}
    assert mixed <= {"serving_job"}, {n: policies[n] for n in mixed}
    (daily,) = policies["daily_features_job"]
    assert daily.max_partitions_per_run == load_settings().feature_days_per_run
    (labels,) = policies["labels_job"]
    assert labels == daily


def test_the_notes_need_no_partition_key_yet():
    """A live range whose clock is before its first day (or a fixed one too short for a
    label) has no keys: the notes still load, so the code location does (the daemon soak's
    fake clock found describe_partitions failing on an empty monthly partitioning)."""
    future = dataclasses.replace(SETTINGS, start_date=dt.date(2034, 1, 9), end_date=None,
                                 first_model_month=dt.date(2034, 3, 1))
    assert build_monthly_partitions(future).get_partition_keys() == []
    sentence, _ = months_note(future, build_monthly_partitions(future))
    assert "from 2034-03, open-ended" in sentence
    sentence, _ = trading_days_note(future, build_label_partitions(future), lag=5)
    assert "from 2034-01-09, open-ended" in sentence
    short = dataclasses.replace(SETTINGS, end_date=dt.date(2022, 1, 5))  # 3 sessions, horizon 5
    assert build_label_partitions(short).get_partition_keys() == []
    sentence, md = trading_days_note(short, build_label_partitions(short), lag=5)
    assert "none yet before 2022-01-05" in sentence and "Labels end" not in md
