"""``python -m quant_assets``: the command line of ``quant_assets.cli``."""

from quant_assets.cli import run

if __name__ == "__main__":
    run()
