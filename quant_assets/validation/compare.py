"""The model families side by side: their validation reports' statistics and the family the
promotion gate would promote. Pure (polars).

The recommended family is the one with the highest DSR among those whose report's gate
passed (``gate.PASS_METRIC`` = 1); a tie goes to the higher Sharpe ratio, then to the
family's name, so the choice is deterministic. None passed: no recommendation, nothing is
promoted.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import polars as pl

from quant_assets.validation.gate import PASS_METRIC
from quant_assets.validation.report import format_metric

RECOMMENDED = "recommended"  # 1.0 on the recommended family's row, 0.0 on the others
# the statistics shown first in the comparison, in the report's words
HEADLINE = ("sharpe", "cagr", "max_drawdown", "psr", "dsr", "pbo", "n_trials", "rank_ic_mean",
            "mean_turnover", PASS_METRIC)
SCHEMA = {"model_family": pl.String, "metric": pl.String, "value": pl.Float64}


def _finite(value: float | None) -> float:
    return float(value) if value is not None and math.isfinite(float(value)) else -math.inf


def recommend(reports: Mapping[str, Mapping[str, float]]) -> str | None:
    """The family to promote (module docstring), or None."""
    passed = [f for f, m in reports.items() if m.get(PASS_METRIC) == 1.0]
    if not passed:
        return None
    return max(passed, key=lambda f: (_finite(reports[f].get("dsr")),
                                      _finite(reports[f].get("sharpe")), f))


def compare_families(reports: Mapping[str, Mapping[str, float]]) -> tuple[pl.DataFrame, str | None]:
    """(one row per family and statistic, with a ``recommended`` row each; the recommended
    family) from each family's report metrics."""
    chosen = recommend(reports)
    rows = []
    for family in sorted(reports):
        metrics = dict(reports[family])
        metrics[RECOMMENDED] = 1.0 if family == chosen else 0.0
        rows += [{"model_family": family, "metric": k, "value": float(v)} for k, v in metrics.items()]
    return pl.DataFrame(rows, schema=SCHEMA), chosen


def family_metrics(comparison: pl.DataFrame, family: str) -> dict[str, float]:
    rows = comparison.filter(pl.col("model_family") == family)
    return dict(rows.select("metric", "value").iter_rows())


def recommended_family(comparison: pl.DataFrame) -> str | None:
    """The family whose ``recommended`` row is 1 in a comparison table."""
    rows = comparison.filter((pl.col("metric") == RECOMMENDED) & (pl.col("value") == 1.0))
    if rows.height > 1:
        raise ValueError(f"the comparison recommends several families: {rows['model_family'].to_list()}")
    return rows.item(0, "model_family") if rows.height else None


def failed_families(comparison: pl.DataFrame) -> list[str]:
    """Families whose report's gate did not pass."""
    rows = comparison.filter((pl.col("metric") == PASS_METRIC) & (pl.col("value") != 1.0))
    return sorted(rows["model_family"].to_list())


def comparison_markdown(comparison: pl.DataFrame, chosen: str | None) -> str:
    families = sorted(comparison["model_family"].unique().to_list())
    by_family = {f: family_metrics(comparison, f) for f in families}
    lines = ["| statistic | " + " | ".join(families) + " |", "|---|" + "---|" * len(families)]
    for key in HEADLINE:
        cells = []
        for f in families:
            value = by_family[f].get(key, math.nan)
            cells.append(("pass" if value == 1.0 else "FAIL") if key == PASS_METRIC
                         else format_metric(key, value, by_family[f]))
        lines.append(f"| {key} | " + " | ".join(cells) + " |")
    lines += ["", f"**Recommended: {chosen}**" if chosen else "**No family passed the gate.**"]
    return "\n".join(lines)
