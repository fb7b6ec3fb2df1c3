"""Command line:

- ``python -m quant_assets demo``: the golden flow locally;
- ``python -m quant_assets reproduce <mlflow-run-id> [--latest]``: rebuild a model month;
- ``python -m quant_assets audit [--action A] [--since ISO] [--object O] [--json]``;
- ``python -m quant_assets platform-report``: queue time, throughput, cost by asset/pool/day.
"""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="quant_assets")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("demo", help="run the golden flow locally on the embedded default")
    sub.add_parser(
        "reproduce",
        help="rebuild a model month from its MLflow run id; exit 0 if hashes are equal",
        add_help=False,
    )
    sub.add_parser(
        "audit",
        help="print the audit trail: audit [--action A] [--since ISO] [--object O] [--json]",
        add_help=False,
    )
    sub.add_parser(
        "platform-report",
        help="queue time, throughput, cost, failures and retries by asset, pool and day",
        add_help=False,
    )
    args, rest = parser.parse_known_args(argv)
    if args.command == "demo":
        if rest:
            parser.error(f"unrecognized arguments: {' '.join(rest)}")
        from quant_assets.demo import main as demo

        return demo()
    if args.command == "reproduce":
        from quant_assets.reproduce import main as reproduce

        return reproduce(rest)
    if args.command == "audit":
        from quant_assets.audit import cli as audit_cli

        return audit_cli(rest)
    if args.command == "platform-report":
        from quant_assets.cli.platform_report import main as platform_report

        return platform_report(rest)
    return 2


if __name__ == "__main__":
    sys.exit(main())
