"""``quant-assets backfill`` from a terminal.

The end-to-end test: two homes on a small range (20 instruments, pit_features chunked 4 days
a run, so six trading days are two runs: each daemon run costs two Python start-ups, the run
worker and its step process, which is most of the test's time on a loaded machine). Home A: reference data and market_bars in
process, then ``python -m quant_assets backfill pit_features --from --to --wait`` submits a
real asset backfill that a real ``dagster-daemon run`` (new session, killed by process group)
executes. Home B: the same assets and range with ``--in-process`` through the installed
``quant-assets`` script. The runs are the chunks the BackfillPolicy says, and the Delta rows
of pit_features are bit-identical. The other tests check the plan and the exit code 2 of bad
arguments without starting anything.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from shutil import which

import polars as pl
import pytest
from polars.testing import assert_frame_equal
from servers import ServerProcess, daemon_env, start_server

from quant_assets.cli import backfill
from quant_assets.instance import local_instance_yaml

REPO = Path(__file__).resolve().parents[1]
DAYS = ["2022-01-03", "2022-01-04", "2022-01-05", "2022-01-06", "2022-01-07", "2022-01-10"]
PER_RUN = 4
UPSTREAM = ["universe", "corporate_actions", "fundamentals", "market_bars"]
CLI_TIMEOUT = 540  # generous: a slow machine fails the test's time, not its result


def _env(home: Path) -> dict[str, str]:
    env = dict(os.environ)
    for name in ("QUANT_WAREHOUSE_URI", "QUANT_MLFLOW_URI", "QUANT_MLFLOW_ARTIFACTS",
                 "QUANT_LANDING_DIR", "PYTEST_CURRENT_TEST"):
        env.pop(name, None)
    env.update(
        QUANT_HOME=str(home), DAGSTER_HOME=str(home / "dagster"),
        QUANT_START_DATE="2022-01-03", QUANT_END_DATE="2022-03-31", QUANT_FIRST_MODEL_MONTH="2022-03",
        QUANT_N_INSTRUMENTS="20", QUANT_FEATURE_DAYS_PER_RUN=str(PER_RUN),
        # the code under test, not an installed copy
        PYTHONPATH=os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p),
        PYTHONWARNINGS="ignore", PYTHONUNBUFFERED="1", DAGSTER_DISABLE_TELEMETRY="true",
    )
    (home / "dagster").mkdir(parents=True)
    # the demo's instance; queued runs leave the queue within a second, not five
    (home / "dagster" / "dagster.yaml").write_text(
        local_instance_yaml() + "run_queue:\n  dequeue_interval_seconds: 1\n")
    return env


def _command(script: bool = False) -> list[str]:
    installed = Path(sys.executable).parent / "quant-assets"
    if script and installed.exists():
        return [str(installed)]  # the installed console script, on this checkout (PYTHONPATH)
    return [sys.executable, "-m", "quant_assets"]


def _cli(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([*_command(), "backfill", *args], env=env, cwd=REPO, capture_output=True,
                          text=True, timeout=CLI_TIMEOUT, stdin=subprocess.DEVNULL,
                          start_new_session=True)


def _start(args: list[str], env: dict[str, str], log: Path, script: bool = False) -> ServerProcess:
    """A command in its own session (killed by process group), its output in ``log``."""
    return start_server([*_command(script), "backfill", *args], log_path=log, env=env, cwd=REPO)


def _finish(proc: ServerProcess, also: str = "") -> tuple[int, str]:
    try:
        code = proc.process.wait(timeout=CLI_TIMEOUT)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{proc.args} still running after {CLI_TIMEOUT}s:\n{proc.tail()}\n{also}")
    return code, proc.log_path.read_text()


def _wait_for(proc: ServerProcess, text: str, timeout: float = CLI_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while text not in proc.log_path.read_text():
        if not proc.alive() or time.monotonic() > deadline:
            pytest.fail(f"no {text!r} from {proc.args}:\n{proc.tail()}")
        time.sleep(0.2)


def _features(home: Path) -> pl.DataFrame:
    return pl.read_delta(str(home / "warehouse" / "pit_features")).sort("date", "instrument_id")


@pytest.mark.slow
@pytest.mark.xdist_group("servers")
def test_daemon_backfill_equals_in_process(tmp_path: Path) -> None:
    t0 = time.monotonic()
    span = ["--from", DAYS[0], "--to", DAYS[-1]]
    home_a, home_b = tmp_path / "a", tmp_path / "b"
    env_a, env_b = _env(home_a), _env(home_b)
    daemon_exe = Path(sys.executable).parent / "dagster-daemon"
    started: list[ServerProcess] = []
    try:
        # home B, meanwhile: every asset in this process, through the installed script
        local = _start([*UPSTREAM, "pit_features", *span, "--in-process"], env_b,
                       tmp_path / "in-process.log", script=True)
        started.append(local)
        upstream = _cli([*UPSTREAM, *span, "--in-process"], env_a)
        assert upstream.returncode == 0, upstream.stdout + upstream.stderr
        waiting = _start(["pit_features", *span, "--wait"], env_a, tmp_path / "wait.log")
        started.append(waiting)
        _wait_for(waiting, "submitted backfill")
        # The backfill daemon ticks as it starts, so started after the submission it takes
        # the backfill at once; then every 2 s, not Dagster's 30 (servers.daemon_env), so
        # the backfill is marked done soon after its last run.
        daemon = start_server([str(daemon_exe if daemon_exe.exists() else which("dagster-daemon")),
                               "run", "-w", str(REPO / "workspace.yaml")],
                              log_path=tmp_path / "daemon.log", env=daemon_env(env_a), cwd=REPO)
        started.append(daemon)
        code, out = _finish(waiting, f"--- daemon ---\n{daemon.tail()}")
        assert code == 0, f"{out}\n--- daemon ---\n{daemon.tail()}"
        t_daemon = time.monotonic()
        code_b, out_b = _finish(local)
        assert code_b == 0, out_b
    finally:
        for proc in started:
            proc.stop()
    t_local = time.monotonic()

    # what it printed: the plan, the backfill, each chunk launched and succeeded
    chunks = [DAYS[i:i + PER_RUN] for i in range(0, len(DAYS), PER_RUN)]
    assert len(chunks) == 2
    backfill_id = re.search(r"submitted backfill (\w+)", out).group(1)
    for chunk in chunks:
        what = f"pit_features {chunk[0]} .. {chunk[-1]} ({len(chunk)} partitions)"
        assert f"    {what}" in out  # planned
        assert re.search(rf"launched run \w+: {re.escape(what)}", out), out
        assert re.search(rf"SUCCESS run \w+: {re.escape(what)}", out), out
        assert re.search(rf"SUCCESS run \w+: {re.escape(what)}", out_b), out_b
    assert out.rstrip().endswith("done") or "\ndone\n" in out

    # the daemon's runs: one per chunk, tagged with the backfill, in instance A
    from dagster import DagsterInstance, DagsterRunStatus, RunsFilter

    with DagsterInstance.from_config(str(home_a / "dagster")) as instance:
        runs = instance.get_runs(RunsFilter(tags={"dagster/backfill": backfill_id}))
        backfill_record = instance.get_backfill(backfill_id)
    ranges = sorted((r.tags["dagster/asset_partition_range_start"],
                     r.tags["dagster/asset_partition_range_end"]) for r in runs)
    assert ranges == [(c[0], c[-1]) for c in chunks]
    assert all(r.status == DagsterRunStatus.SUCCESS for r in runs)
    assert backfill_record is not None and backfill_record.is_asset_backfill

    # the rows: every requested day, and bit-identical to the in-process run's
    daemon_rows, local_rows = _features(home_a), _features(home_b)
    assert sorted(daemon_rows["date"].unique().to_list()) == [dt.date.fromisoformat(d) for d in DAYS]
    assert daemon_rows.height > 10 * len(DAYS)  # most of the 20 instruments every day
    assert_frame_equal(daemon_rows, local_rows, check_exact=True)
    print(f"\nupstream + daemon backfill {t_daemon - t0:.1f}s (the in-process one alongside), "
          f"both done {t_local - t0:.1f}s, total {time.monotonic() - t0:.1f}s")


# --- no server: the plan and bad arguments ---------------------------------------------------


def test_chunks_follow_the_policy() -> None:
    keys = tuple(f"d{i:02d}" for i in range(10))
    multi = backfill.Target("a", keys, 4, "multi")
    assert [c.keys for c in backfill.chunks_of(multi)] == [keys[:4], keys[4:8], keys[8:]]
    assert [c.keys for c in backfill.chunks_of(backfill.Target("a", keys, None, "single"))] == [keys]
    assert backfill.chunks_of(backfill.Target("u", (), None, "unpartitioned")) == [backfill.Chunk("u", ())]
    assert len(backfill.plan([multi, backfill.Target("b", keys, 1, "one")])) == 3 + 10


@pytest.mark.parametrize("args, message", [
    (["pit_features", "--from", "2022-02-01", "--to", "2022-01-03"], "is after --to"),
    (["pit_features", "--from", "2022-1-3", "--to", "2022-01-03"], "is not a day"),
])
def test_bad_days_exit_2_before_loading_anything(args, message, capsys) -> None:
    assert backfill.main(args) == 2
    assert message in capsys.readouterr().err


def test_targets_refuse_unknown_assets_and_non_trading_days() -> None:
    from quant_assets.definitions import defs

    day = dt.date.fromisoformat
    with pytest.raises(backfill.UsageError, match=r"unknown asset 'pit_feature' \(did you mean pit_features"):
        backfill.resolve_targets(defs, ["pit_feature"], day("2022-01-03"), day("2022-01-14"))
    # Martin Luther King Jr. Day: the exchange is closed
    with pytest.raises(backfill.UsageError, match="2022-01-17 is not a trading-day partition of "
                       "pit_features.*previous 2022-01-14, next 2022-01-18"):
        backfill.resolve_targets(defs, ["pit_features"], day("2022-01-03"), day("2022-01-17"))
    targets = backfill.resolve_targets(defs, ["pit_features", "universe", "market_bars"],
                                       day("2022-01-03"), day("2022-01-14"))
    # upstream first, whatever the order given; policies read from the assets
    assert [t.asset for t in targets] == ["universe", "market_bars", "pit_features"]
    assert targets[0].keys == () and targets[2].keys[:len(DAYS)] == tuple(DAYS)
    assert targets[2].keys[-1] == "2022-01-14" and len(targets[2].keys) == 10
    # the daily job's assets share one chunking (partitions.daily_backfill_policy), so one
    # run of daily_features_job never asks for more partitions than either allows
    assert (targets[1].per_run, targets[2].per_run) == (1040, 1040)


def test_bad_arguments_exit_2_from_the_command_line(tmp_path: Path) -> None:
    result = _cli(["pit_features", "--from", "2022-01-17", "--to", "2022-01-21"], _env(tmp_path / "h"))
    assert result.returncode == 2, result.stdout + result.stderr
    assert "2022-01-17 is not a trading-day partition of pit_features" in result.stderr


def test_progress_is_a_bar_on_a_terminal_and_lines_otherwise() -> None:
    import io

    bar, plain = io.StringIO(), io.StringIO()
    for stream, tty in ((bar, True), (plain, False)):
        progress = backfill.Progress(3, tty, stream)
        progress.line("SUCCESS run 1234abcd: pit_features 2022-01-03")
        progress.advance(2)
        progress.close()
    assert plain.getvalue() == "SUCCESS run 1234abcd: pit_features 2022-01-03\n"
    assert "SUCCESS run 1234abcd" in bar.getvalue() and "2/3" in bar.getvalue()


class _FakeInstance:
    """What ``follow`` reads of an instance: the backfill record and its runs."""

    def __init__(self, steps):
        self.steps = list(steps)  # each poll: (backfill status, [(run_id, status, start, end)])
        self.now = self.steps[0]

    def get_backfill(self, backfill_id):
        from types import SimpleNamespace

        self.now = self.steps.pop(0) if len(self.steps) > 1 else self.steps[0]
        return SimpleNamespace(status=self.now[0], error=None)

    def get_run_records(self, filters):
        from types import SimpleNamespace

        from dagster import AssetKey

        assert filters.tags == {"dagster/backfill": "bf"}
        return [SimpleNamespace(create_timestamp=i, dagster_run=SimpleNamespace(
            run_id=run_id, status=status, job_name="__ASSET_JOB",
            asset_selection={AssetKey("pit_features")},
            tags={"dagster/asset_partition_range_start": start, "dagster/asset_partition_range_end": end}))
            for i, (run_id, status, start, end) in enumerate(self.now[1])]

    def all_logs(self, run_id, of_type=None):
        from types import SimpleNamespace

        error = SimpleNamespace(message="Exceeded max_retries of 3\n", cause=SimpleNamespace(
            message="OSError: Generic S3 error: connection reset by peer\nmore", cause=None))
        return [SimpleNamespace(dagster_event=SimpleNamespace(
            step_key="pit_features", event_specific_data=SimpleNamespace(error=error)))]

    def get_run_stats(self, run_id):
        from types import SimpleNamespace

        return SimpleNamespace(start_time=1.0, end_time=3.5)


def test_follow_exits_1_when_the_backfill_ends_with_a_failed_run(capsys) -> None:
    from dagster import DagsterRunStatus as S
    from dagster._core.execution.backfill import BulkActionStatus as B

    target = backfill.Target("pit_features", tuple(DAYS[:4]), 2, "multi")
    first, second = ("r1", DAYS[0], DAYS[1]), ("r2", DAYS[2], DAYS[3])

    def run(spec, status):
        return (spec[0], status, spec[1], spec[2])

    failing = _FakeInstance([
        (B.REQUESTED, [run(first, S.STARTED), run(second, S.QUEUED)]),
        (B.REQUESTED, [run(first, S.SUCCESS), run(second, S.FAILURE)]),
        (B.COMPLETED_FAILED, [run(first, S.SUCCESS), run(second, S.FAILURE)]),
    ])
    progress = backfill.Progress(4, False)
    assert backfill.follow(failing, "bf", [target], progress, poll=0) == backfill.EXIT_FAILED
    out = capsys.readouterr().out
    assert "launched run r1: pit_features 2022-01-03 .. 2022-01-04 (2 partitions)" in out
    assert "FAILURE run r2: pit_features 2022-01-05 .. 2022-01-06 (2 partitions) in 2.5s" in out
    assert ("  pit_features: Exceeded max_retries of 3\n"
            "    caused by: OSError: Generic S3 error: connection reset by peer\n") in out
    assert "COMPLETED_FAILED; 2 partitions not materialised; failed runs: r2" in out
    # every partition in (the failed run retried): done before the daemon's next tick
    retried = _FakeInstance([(B.REQUESTED, [run(first, S.SUCCESS), run(second, S.FAILURE),
                                            run(("r3", DAYS[2], DAYS[3]), S.SUCCESS)])])
    assert backfill.follow(retried, "bf", [target], progress, poll=0) == backfill.EXIT_OK


def test_in_process_exits_1_when_a_run_fails(tmp_path: Path) -> None:
    # no market_bars table in a fresh home: the pit_features step cannot read its input
    result = _cli(["pit_features", "--from", DAYS[0], "--to", DAYS[1], "--in-process"],
                  _env(tmp_path / "h"))
    assert result.returncode == 1, result.stdout + result.stderr
    assert "FAILURE run" in result.stdout and "FAILED: a run failed" in result.stdout


def test_feature_days_per_run_setting(monkeypatch) -> None:
    from quant_assets.settings import Settings

    monkeypatch.delenv("QUANT_FEATURE_DAYS_PER_RUN", raising=False)
    assert Settings.from_env().feature_days_per_run == 1040  # about four years, as before
    monkeypatch.setenv("QUANT_FEATURE_DAYS_PER_RUN", "4")
    assert Settings.from_env().feature_days_per_run == 4
    monkeypatch.setenv("QUANT_FEATURE_DAYS_PER_RUN", "0")
    with pytest.raises(ValueError, match="QUANT_FEATURE_DAYS_PER_RUN='0' must be >= 1"):
        Settings.from_env()
