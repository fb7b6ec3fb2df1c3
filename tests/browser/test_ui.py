"""The Dagster UI, MLflow and the tear sheet after a small ``make demo``, in Chromium.

The backfill is launched first and checked last, so that its run executes while the other
pages are looked at (one daemon, one run worker: the slowest part of this file).
"""

from __future__ import annotations

import re
import time

import pytest

pytest.importorskip("playwright", reason="browser tests skipped: pip install -c requirements.lock playwright")
from playwright.sync_api import expect  # noqa: E402

pytestmark = [pytest.mark.slow]
# the UI's pages take more than expect's default 5 s on a busy 2-core machine (a CI run
# failed "Columns" and "validation_report" there that render in 1-2 s on an idle one)
expect.set_options(timeout=30_000)

GROUPS = ("market_data", "features", "models", "backtest", "sweeps", "validation", "serving")
BACKFILL_RANGE = ("2022-02-01", "2022-02-04")  # four trading days of labels


def wait_until(predicate, timeout: float, what: str, interval: float = 1.0):
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout:.0f}s")
        time.sleep(interval)
    return value


def _instance(flow):
    from dagster import DagsterInstance

    return DagsterInstance.from_config(str(flow.dagster_home))


def _demo_run_id(flow, job_name: str) -> str:
    from dagster import RunsFilter

    with _instance(flow) as instance:
        runs = instance.get_runs(RunsFilter(job_name=job_name), limit=1)
    assert runs, f"the demo left no run of {job_name}"
    return runs[0].run_id


def test_a_partition_range_backfill_is_launched_from_the_materialize_dialog(flow, page):
    page.goto(f"{flow.dagster_url}/assets/labels")
    page.get_by_role("button", name="Materialize…").click()
    dialog = page.get_by_role("dialog")
    expect(dialog.get_by_text("Launch runs to materialize labels")).to_be_visible()
    box = dialog.get_by_placeholder("ex: 2022-01-03", exact=False)
    box.fill(f"[{BACKFILL_RANGE[0]}...{BACKFILL_RANGE[1]}]")
    box.press("Enter")
    expect(dialog.get_by_text("4 partitions")).to_be_visible()
    # they are materialised already: rebuild them, not only the failed and missing ones
    only_missing = dialog.get_by_role("checkbox")
    if only_missing.is_checked():
        dialog.get_by_text("Backfill only failed and missing").click()
    dialog.get_by_role("button", name="Launch backfill").click()
    expect(page.get_by_text(re.compile(r"Created backfill \w+"))).to_be_visible()
    with _instance(flow) as instance:
        assert instance.get_backfills(limit=1), "no backfill was recorded"


def test_the_lineage_graph_renders(flow, page):
    page.goto(f"{flow.dagster_url}/asset-groups")
    expect(page.get_by_text("Global asset lineage")).to_be_visible()
    for group in GROUPS:  # a node per group of the flow, drawn in the graph
        expect(page.locator("svg, [data-testid]").get_by_text(group, exact=True).first).to_be_visible()
    page.goto(f"{flow.dagster_url}/locations/quant_assets/asset-groups/features/lineage")
    for asset in ("pit_features", "labels"):
        expect(page.get_by_text(asset, exact=True).first).to_be_visible()


def test_a_job_page_lists_the_demo_runs(flow, page):
    for job in ("daily_features_job", "monthly_models_job"):
        run_id = _demo_run_id(flow, job)
        page.goto(f"{flow.dagster_url}/locations/quant_assets/jobs/{job}/runs")
        expect(page.get_by_text(run_id[:8], exact=True)).to_be_visible()
        expect(page.get_by_text("No runs found")).to_have_count(0)


def test_pit_features_shows_its_columns_and_materialised_partitions(flow, page):
    from quant_assets.features.catalog import active_features

    features = list(active_features())
    page.goto(f"{flow.dagster_url}/assets/pit_features")
    expect(page.get_by_text("Columns", exact=True)).to_be_visible()
    for name in (features[0], features[len(features) // 2], features[-1]):
        expect(page.get_by_text(name, exact=True).first).to_be_attached()
    page.goto(f"{flow.dagster_url}/assets/pit_features?view=partitions")
    with _instance(flow) as instance:
        from dagster import AssetKey

        built = len(instance.get_materialized_partitions(AssetKey("pit_features")))
    assert built > 200
    expect(page.get_by_text(f"Materialized ({built})")).to_be_visible()


def test_labels_say_their_calendar_and_are_fully_materialised(flow, page):
    """The description names the exchange holidays and the end that Dagster's partitions
    line hides; every label partition is built (labels end the horizon before the bars)."""
    import dataclasses
    import datetime as dt

    from dagster import AssetKey

    from quant_assets.partitions import build_label_partitions
    from quant_assets.settings import load_settings

    settings = dataclasses.replace(load_settings(), end_date=dt.date.fromisoformat(flow.env["QUANT_END_DATE"]))
    keys = build_label_partitions(settings).get_partition_keys()
    with _instance(flow) as instance:
        built = instance.get_materialized_partitions(AssetKey("labels"))
    assert built == set(keys), (len(built), len(keys), sorted(set(keys) - built)[-5:], sorted(built - set(keys)))
    page.goto(f"{flow.dagster_url}/assets/labels")
    expect(page.get_by_text(re.compile(r"less \d+ exchange holidays")).first).to_be_visible()
    expect(page.get_by_text(re.compile(f"to {keys[-1]} \\({len(keys)} days\\)")).first).to_be_visible()
    expect(page.get_by_text(re.compile(r"have no label partition")).first).to_be_visible()
    _screenshot(flow, page, "labels_description")
    page.goto(f"{flow.dagster_url}/assets/labels?view=partitions")
    # 100% filled: none missing (the backfill launched first may be rebuilding a few of them,
    # counted as materializing, so the materialised count is not checked here)
    expect(page.get_by_text(f"{len(keys)} Partitions Selected")).to_be_visible()
    expect(page.get_by_text("Missing (0)")).to_be_visible()
    expect(page.get_by_text("Failed (0)")).to_be_visible()


def test_the_validation_report_shows_its_summary_and_the_gate_verdict(flow, page):
    page.goto(f"{flow.dagster_url}/assets/validation_report")
    for key in ("summary", "sharpe", "dsr", "gate_passed"):
        expect(page.get_by_text(key, exact=True).first).to_be_visible()
    page.get_by_text("[Show Markdown]").first.click()
    expect(page.get_by_role("dialog").get_by_text("Sharpe").first).to_be_visible()
    page.keyboard.press("Escape")
    # the gate the demo ran, as model_comparison's check result (not "Not evaluated")
    passed = "Promotion gate (lgbm):   PASSED" in flow.demo_output
    page.goto(f"{flow.dagster_url}/assets/model_comparison?view=checks")
    expect(page.get_by_text("validation_gate").first).to_be_visible()
    expect(page.get_by_text("Passed" if passed else "Failed", exact=True).first).to_be_visible()
    expect(page.get_by_text("Not evaluated")).to_have_count(0)


def _screenshot(flow, page, name: str) -> None:
    """A screenshot besides the one taken when the test ends (test-artifacts/browser/)."""
    shot = flow.artifacts / f"{name}.png"
    page.screenshot(path=str(shot), full_page=False)
    flow.shots.append(shot)


def _show_markdown_image(page, key: str, alt: str):
    """Opens the [Show Markdown] dialog of the metadata entry ``key`` and returns its image."""
    row = page.locator("tr", has=page.get_by_text(key, exact=True)).first
    expect(row).to_be_visible()
    row.get_by_text("[Show Markdown]").click()
    image = page.get_by_role("dialog").locator(f'img[alt="{alt}"]')
    expect(image).to_be_visible()
    wait_until(lambda: image.evaluate("i => i.complete && i.naturalWidth > 0"), 30, f"{key}: image loaded")
    return image


def test_the_key_plots_render_in_the_asset_metadata(flow, page):
    """The tear sheet's key plots in validation_report's metadata and the equity curve in
    backtest's, as images in the UI (Markdown metadata with a data URI)."""
    from quant_assets.validation.tearsheet import KEY_PLOTS

    page.goto(f"{flow.dagster_url}/assets/validation_report")
    for name in KEY_PLOTS:
        expect(page.get_by_text(f"plot_{name}", exact=True).first).to_be_visible()
    image = _show_markdown_image(page, "plot_equity", "equity")
    assert image.evaluate("i => i.naturalWidth") >= 300
    _screenshot(flow, page, "validation_report_plot_equity")
    page.keyboard.press("Escape")
    page.goto(f"{flow.dagster_url}/assets/backtest")
    _show_markdown_image(page, "plot_equity", "equity")  # left open for the screenshot


def test_the_tear_sheet_renders_every_section_without_console_errors(flow, page):
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{flow.home / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("quant-assets")
    run = client.search_runs([experiment.experiment_id], "attributes.run_name = 'validation_report'")[0]
    # the MLflow UI shows the run
    page.goto(f"{flow.mlflow_url}/#/experiments/{experiment.experiment_id}/runs/{run.info.run_id}")
    expect(page.get_by_text("validation_report").first).to_be_visible()
    # the artifact as the MLflow server serves it (as a download: rendered here)
    response = page.request.get(f"{flow.mlflow_url}/get-artifact",
                                params={"path": "report.html", "run_uuid": run.info.run_id})
    assert response.ok, response.status
    page.console_errors.clear()
    page.set_content(response.text(), wait_until="load")
    sections = page.locator("h2")
    assert sections.count() >= 10, sections.all_inner_texts()
    for section in ("headline", "performance", "drawdowns"):
        expect(page.locator(f"h2#{section}")).to_be_visible()
    images = page.locator("img")
    assert images.count() >= 5
    broken = page.evaluate("[...document.images].filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.alt)")
    assert broken == [], f"images that did not render: {broken}"
    assert page.console_errors == [], page.console_errors


def test_the_backfill_succeeds(flow, page):
    from dagster import AssetKey, DagsterRunStatus
    from dagster._core.execution.backfill import BulkActionStatus  # no public read API

    with _instance(flow) as instance:
        backfill = instance.get_backfills(limit=1)[0]

        def finished():
            status = instance.get_backfill(backfill.backfill_id).status
            return status if status not in (BulkActionStatus.REQUESTED,) else None

        status = wait_until(finished, 240, f"backfill {backfill.backfill_id}", interval=2.0)
        from dagster import RunsFilter
        from dagster._core.storage.tags import BACKFILL_ID_TAG

        runs = instance.get_runs(RunsFilter(tags={BACKFILL_ID_TAG: backfill.backfill_id}))
        assert status == BulkActionStatus.COMPLETED_SUCCESS, (status, [r.status for r in runs], flow.dagster.tail())
        assert runs and all(r.status == DagsterRunStatus.SUCCESS for r in runs)
        latest = instance.get_latest_materialization_event(AssetKey("labels"))
        assert latest.run_id in {r.run_id for r in runs}
    page.goto(f"{flow.dagster_url}/runs/b/{backfill.backfill_id}")
    expect(page.get_by_text("Completed").first).to_be_visible()
