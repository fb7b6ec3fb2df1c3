"""``python -m quant_assets``: the command line of ``quant_assets.cli``."""

import sys

from quant_assets.cli import main

if __name__ == "__main__":
    sys.exit(main())
