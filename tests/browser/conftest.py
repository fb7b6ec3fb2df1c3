"""What a researcher sees after ``make demo``, in a real browser: a small demo, then
``dagster dev`` and the MLflow server on 127.0.0.1, driven with Playwright on the system
Chromium (Debian's ``chromium``; Playwright's own browser download is not used).

Without Chromium (or the playwright package) every test here is skipped with a message that
says how to get it. Screenshots go to ``test-artifacts/browser/`` (gitignored; the path is
printed at the end of the session).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml
from servers import LOCALHOST, ServerProcess, daemon_env, free_port, running_server, wait_for_http

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "test-artifacts" / "browser"
CHROMIUM = os.environ.get("QUANT_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
# tests/conftest.py's range (already in os.environ), smaller: two model months, twenty instruments
FLOW_ENV = {"QUANT_END_DATE": "2023-02-28", "QUANT_N_INSTRUMENTS": "20"}
START_TIMEOUT = 180.0


def _why_not_runnable() -> str | None:
    try:
        import playwright  # noqa: F401
    except ImportError:
        return "the playwright package is missing: pip install -c requirements.lock playwright"
    if not (Path(CHROMIUM).exists() or shutil.which("chromium")):
        return f"no Chromium at {CHROMIUM}: install it with `apt-get install chromium` (or set QUANT_CHROMIUM)"
    return None


def pytest_collection_modifyitems(config, items):
    reason = _why_not_runnable()
    if reason is None:
        return
    for item in items:
        if Path(str(item.fspath)).is_relative_to(Path(__file__).parent):
            item.add_marker(pytest.mark.skip(reason=f"browser tests skipped: {reason}"))


@dataclass
class Flow:
    """The small demo's state and the two servers looking at it."""

    home: Path
    dagster_url: str
    mlflow_url: str
    dagster: ServerProcess
    mlflow: ServerProcess
    demo_output: str
    # the demo's range and where screenshots go: on the object, since `import conftest` (or
    # the class's module) may name another conftest.py when the whole suite runs
    env: dict[str, str] = field(default_factory=lambda: dict(FLOW_ENV))
    artifacts: Path = ARTIFACTS
    shots: list[Path] = field(default_factory=list)

    @property
    def dagster_home(self) -> Path:
        return self.home / "dagster"


def _env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "DAGSTER_HOME" and not k.startswith("MLFLOW_")}
    env.update(FLOW_ENV)
    env.update({"QUANT_HOME": str(home), "DAGSTER_HOME": str(home / "dagster"), "PYTHONWARNINGS": "ignore",
                "DAGSTER_DISABLE_TELEMETRY": "true", "MLFLOW_DISABLE_TELEMETRY": "true"})
    return env


def _bin(name: str) -> str:
    return str(Path(sys.executable).parent / name)


@pytest.fixture(scope="session")
def flow() -> Iterator[Flow]:
    home = Path(tempfile.mkdtemp(prefix="quant-browser-"))
    env = _env(home)
    demo = subprocess.run([sys.executable, "-m", "quant_assets", "demo"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)
    assert demo.returncode == 0, demo.stdout[-3000:] + demo.stderr[-3000:]
    # runs leave the queue within a second, not five (what the UI's backfill waits on)
    cfg_path = home / "dagster" / "dagster.yaml"
    cfg = yaml.safe_load(cfg_path.read_text()) or {}
    cfg.setdefault("run_queue", {})["dequeue_interval_seconds"] = 1
    cfg_path.write_text(yaml.safe_dump(cfg))
    d_port, m_port = free_port(), free_port()
    dagster_args = [_bin("dagster"), "dev", "-w", str(REPO / "workspace.yaml"), "-h", LOCALHOST, "-p", str(d_port)]
    mlflow_args = [_bin("mlflow"), "server", "--backend-store-uri", f"sqlite:///{home / 'mlflow.db'}",
                   "--host", LOCALHOST, "--port", str(m_port), "--workers", "1"]
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with running_server(mlflow_args, log_path=home / "mlflow.log", env=env, cwd=home) as ml, \
            running_server(dagster_args, log_path=home / "dagster-dev.log", env=daemon_env(env), cwd=REPO,
                           ready_url=f"http://{LOCALHOST}:{d_port}/server_info", timeout=START_TIMEOUT) as dg:
        wait_for_http(f"http://{LOCALHOST}:{m_port}/health", timeout=START_TIMEOUT, server=ml)
        flow = Flow(home, f"http://{LOCALHOST}:{d_port}", f"http://{LOCALHOST}:{m_port}", dg, ml, demo.stdout)
        yield flow
    print(f"\nbrowser screenshots ({len(flow.shots)}): {ARTIFACTS}")
    shutil.rmtree(home, ignore_errors=True)


@pytest.fixture(scope="session")
def browser_context(flow):
    from playwright.sync_api import sync_playwright

    profile = tempfile.mkdtemp(prefix="quant-chromium-")  # a fresh user-data dir
    with sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            profile, executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS,
            viewport={"width": 1600, "height": 1000},
        )
        context.set_default_timeout(60_000)
        try:
            yield context
        finally:
            context.close()
            shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture
def page(browser_context, flow, request):
    """A new tab; its console errors are in ``page.console_errors``; a screenshot named after
    the test is saved when it ends (pass or fail)."""
    tab = browser_context.new_page()
    tab.console_errors = []
    tab.on("console", lambda msg: tab.console_errors.append(msg.text) if msg.type == "error" else None)
    tab.on("pageerror", lambda exc: tab.console_errors.append(str(exc)))
    yield tab
    shot = ARTIFACTS / f"{request.node.name}.png"
    try:
        tab.screenshot(path=str(shot), full_page=False)
        flow.shots.append(shot)
    finally:
        tab.close()

