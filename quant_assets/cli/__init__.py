"""The command line (``python -m quant_assets`` and the installed ``quant-assets`` script).

Each command lives in its own module of this package and is imported only when it runs, so
``quant-assets audit`` does not load Dagster or MLflow. ``quant-assets <command> --help``
prints a command's own options.
"""

from __future__ import annotations

import argparse
import atexit
import importlib
import os
import sys
import threading

# command -> (module, function taking the remaining arguments, one-line help)
COMMANDS: dict[str, tuple[str, str, str]] = {
    "demo": ("quant_assets.cli.demo", "main", "run the golden flow locally on the embedded default"),
    "reproduce": (
        "quant_assets.cli.reproduce", "main",
        "rebuild a logged run from its MLflow run id; exit 0 identical, 1 different, 2 cannot",
    ),
    "explain": (
        "quant_assets.cli.explain", "main",
        "why two runs of the same asset differ: inputs, features, config, seeds, code, effect",
    ),
    "download-model": (
        "quant_assets.cli.download_model", "main",
        "download a registered model version (audited: --reason)",
    ),
    "audit": (
        "quant_assets.cli.audit", "cli",
        "print the audit trail: audit [--action A] [--since ISO] [--object O] [--json]",
    ),
    "platform-report": (
        "quant_assets.cli.platform_report", "main",
        "queue time, throughput, cost, failures and retries by asset, pool and day",
    ),
    "sweep": (
        "quant_assets.cli.sweep", "main",
        "register a sweep's trials for the daemon, or run them here; export the best trial",
    ),
    "backfill": (
        "quant_assets.cli.backfill", "main",
        "backfill ASSET... --from DAY --to DAY: a Dagster backfill chunked by BackfillPolicy",
    ),
    "serve": ("quant_assets.cli.scorer_app", "main", "run the HTTP scorer over the champion model"),
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="quant-assets", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (_, _, text) in COMMANDS.items():
        sub.add_parser(name, help=text, add_help=False)
    args, rest = parser.parse_known_args(argv)
    module, function, _ = COMMANDS[args.command]
    result = getattr(importlib.import_module(module), function)(rest)
    return 0 if result is None else int(result)


def run() -> None:
    """The process's entry point (the ``quant-assets`` script, ``python -m quant_assets``):
    ``main``, then the exit handlers, then the end of the process, without the interpreter's
    teardown. That teardown frees the native libraries' state (torch, LightGBM, polars, numba)
    and writes nothing: it took ~3 s of a 40-s ``make demo``. By then a command has committed
    what it writes (Delta, SQLite, MLflow); the exit handlers flush and close the logs."""
    code = main()
    # what the interpreter does first at exit, in its order (internals of CPython's threading
    # and atexit: the one way to run these steps before os._exit): threading's own exit hooks
    # (concurrent.futures' pools tell their idle workers to stop) and the wait for non-daemon
    # threads, then the exit handlers
    threading._shutdown()
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
