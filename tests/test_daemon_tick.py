"""The tests' backfill-daemon tick (tests/daemon_tick/sitecustomize.py, servers.daemon_env):
it reaches Dagster's backfill loop in a fresh interpreter, and leaves everything else alone.
It sets an internal constant, so this fails as soon as a Dagster upgrade moves it."""

import os
import subprocess
import sys

from servers import daemon_env

PROBE = """
import inspect
from dagster._daemon import backfill, controller
# the loop reads the constant from the controller module on every tick
assert "from dagster._daemon.controller import DEFAULT_DAEMON_INTERVAL_SECONDS" in inspect.getsource(
    backfill.execute_backfill_iteration_loop)
print(controller.DEFAULT_DAEMON_INTERVAL_SECONDS)
"""


def _probe(env) -> str:
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_the_daemon_env_shortens_the_backfill_tick_and_only_there():
    plain = {k: v for k, v in os.environ.items() if k != "QUANT_TEST_DAEMON_INTERVAL"}
    assert _probe(daemon_env(plain, interval=1.5)) == "1.5"
    assert _probe(plain) == "30"  # Dagster's own tick everywhere else
