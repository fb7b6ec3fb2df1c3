"""Command line: ``python -m quant_assets demo``."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="quant_assets")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("demo", help="run the golden flow locally on the embedded default")
    args = parser.parse_args(argv)
    if args.command == "demo":
        from quant_assets.demo import main as demo

        return demo()
    return 2


if __name__ == "__main__":
    sys.exit(main())
