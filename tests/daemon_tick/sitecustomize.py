"""Shortens the Dagster backfill daemon's tick for the tests that start a real daemon.

Dagster's backfill daemon sleeps a fixed ``DEFAULT_DAEMON_INTERVAL_SECONDS`` (30 s,
``dagster._daemon.controller``) between iterations, and no instance setting or public API
changes it. A test of a real daemon backfill then spends most of its time asleep: a range
backfill of two assets took 69 s for 10 s of runs (tests/test_dagster_graphql.py). So the
processes that such a test starts get this folder on ``PYTHONPATH`` (``servers.
daemon_env``), and with ``QUANT_TEST_DAEMON_INTERVAL`` set, this hook sets the constant as
the module is imported. What the daemon does on a tick is untouched; deployments and the
nightly daemon soak keep Dagster's 30 s.

An internal, so it fails loudly: if the module no longer defines the constant, the import
raises (tests/test_daemon_tick.py runs the hook in a fresh interpreter).
"""

import os
import sys

_MODULE = "dagster._daemon.controller"
_NAME = "DEFAULT_DAEMON_INTERVAL_SECONDS"
_INTERVAL = os.environ.get("QUANT_TEST_DAEMON_INTERVAL")


class _SetIntervalOnImport:
    """A meta-path finder that only wraps the loader of ``_MODULE`` (nothing is imported
    early: the processes that never import the daemon pay nothing)."""

    def find_spec(self, name, path, target=None):
        if name != _MODULE:
            return None
        import importlib.util

        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        exec_module = spec.loader.exec_module

        def exec_and_set(module):
            exec_module(module)
            if not hasattr(module, _NAME):
                raise ImportError(f"{_MODULE} no longer defines {_NAME}: tests/daemon_tick is out of date")
            setattr(module, _NAME, float(_INTERVAL))

        spec.loader.exec_module = exec_and_set
        return spec


if _INTERVAL:
    sys.meta_path.insert(0, _SetIntervalOnImport())
