"""Command line: ``python -m quant_assets demo`` and
``python -m quant_assets reproduce <mlflow-run-id> [--latest]``."""

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
    args, rest = parser.parse_known_args(argv)
    if args.command == "demo":
        if rest:
            parser.error(f"unrecognized arguments: {' '.join(rest)}")
        from quant_assets.demo import main as demo

        return demo()
    if args.command == "reproduce":
        from quant_assets.reproduce import main as reproduce

        return reproduce(rest)
    return 2


if __name__ == "__main__":
    sys.exit(main())
