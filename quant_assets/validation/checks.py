"""The promotion gate as a blocking asset check on ``validation_report``: when it fails,
nothing downstream of the report (``champion_model``) runs in that run.

Not imported by ``validation/assets.py`` on purpose: a blocking check that fails fails its
run, and the report alone (``validation_job``, ``make demo``) must still succeed on a
strategy that does not pass. Definitions registers ``CHECKS`` and runs them in the
promotion job (report + champion).
"""

import polars as pl
from dagster import AssetCheckResult, AssetCheckSeverity, MetadataValue, asset_check

from quant_assets.validation.assets import GateConfig
from quant_assets.validation.gate import GateThresholds, evaluate_gate


@asset_check(
    asset="validation_report",
    blocking=True,
    description="Promotion gate: DSR, PBO, bootstrap max drawdown and minimum track record "
    "against configured thresholds; blocks champion_model when it fails.",
)
def validation_gate(config: GateConfig, validation_report: pl.DataFrame) -> AssetCheckResult:
    metrics = dict(validation_report.select("metric", "value").iter_rows())
    result = evaluate_gate(metrics, config.to(GateThresholds))
    return AssetCheckResult(
        passed=result.passed,
        severity=AssetCheckSeverity.ERROR,
        description=result.message(),
        metadata={
            "criteria": MetadataValue.md(
                "| criterion | value | threshold | result |\n|---|---|---|---|\n"
                + "\n".join(
                    f"| {c.name} | {c.value:.4g} | {c.comparison} {c.threshold:.4g} | "
                    f"{('pass' if c.passed else 'FAIL') if c.applicable else 'n/a'} |"
                    for c in result.criteria
                )
            ),
            **{f"{c.name}_value": float(c.value) for c in result.criteria},
        },
    )


CHECKS = [validation_gate]
