"""A plain Python logger for human progress lines (the demo prints it; Dagster's own
event log keeps the full record)."""

import logging

progress = logging.getLogger("quant_assets.progress")
