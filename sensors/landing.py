"""Landing-zone sensor: new market_bars files in the landing folder start runs.

Each file is processed once (the cursor remembers name, size and mtime). A file that does
not parse, or whose rows break a quality rule, is moved to ``<landing>/rejected/`` with a
``.reason.txt`` beside it naming the file, the rule and the rows; nothing is launched
for it, so no partition changes. A good file requests one run per trading day it
contains, with market_bars reading from the landing folder.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from dagster import RunRequest, SensorEvaluationContext, SkipReason, sensor

from quant_assets.data import quality
from quant_assets.data.files import LandingFileError, list_landing_files, read_market_bars_file
from quant_assets.jobs import daily_features_job
from quant_assets.partitions import SETTINGS, trading_day_partitions

REJECTED = "rejected"


def _fingerprint(path: Path) -> str:
    stat = path.stat()
    return f"{path.name}:{stat.st_size}:{stat.st_mtime_ns}"


def reject(path: Path, reason: str) -> Path:
    folder = path.parent / REJECTED
    folder.mkdir(exist_ok=True)
    target = folder / path.name
    shutil.move(str(path), target)
    target.with_name(target.name + ".reason.txt").write_text(reason + "\n")
    return target


def evaluate_landing(landing_dir: Path, seen: set[str]) -> tuple[list[RunRequest], list[str], set[str]]:
    """Pure-ish core of the sensor: (run requests, log lines, new seen set)."""
    requests: list[RunRequest] = []
    logs: list[str] = []
    seen = set(seen)
    for path in list_landing_files(landing_dir):
        fp = _fingerprint(path)
        if fp in seen:
            continue
        try:
            bars = read_market_bars_file(path)
            violations = quality.check_market_bars(bars)
            if violations:
                raise LandingFileError(path, violations[0].rule, quality.format_violations(violations))
        except LandingFileError as exc:
            moved = reject(path, str(exc))
            logs.append(f"rejected {path.name}: {exc} (moved to {moved})")
            continue
        seen.add(fp)
        days = sorted({d.isoformat() for d in bars.get_column("date").unique().to_list()})
        for key in days:
            if not trading_day_partitions.has_partition_key(key):
                logs.append(f"{path.name}: {key} is outside the trading-day partitions, skipped")
                continue
            requests.append(
                RunRequest(
                    run_key=f"{fp}:{key}",
                    partition_key=key,
                    run_config={"ops": {"market_bars": {"config": {"source": "landing"}}}},
                    tags={"quant/landing_file": path.name},
                )
            )
    return requests, logs, seen


@sensor(job=daily_features_job, minimum_interval_seconds=60, description=__doc__)
def landing_files_sensor(context: SensorEvaluationContext):
    landing = Path(SETTINGS.landing_dir)
    if not landing.exists():
        return SkipReason(f"landing folder {landing} does not exist")
    seen = set(json.loads(context.cursor)) if context.cursor else set()
    requests, logs, seen = evaluate_landing(landing, seen)
    for line in logs:
        context.log.info(line)
    context.update_cursor(json.dumps(sorted(seen)))
    if not requests:
        return SkipReason("no new landing files")
    return requests
