"""The promotion gate as a blocking asset check on ``model_comparison``: when it fails,
nothing downstream of the comparison (``champion_model``) runs in that run.

The gate passes when the family the comparison recommends passes every criterion
(``validation.gate``) under the check's thresholds: the report's own gate rows chose it,
this re-judges the same statistics, so a report built under looser thresholds cannot
promote.

Not imported by ``validation/assets.py`` on purpose: a blocking check that fails fails its
run, and the reports and the comparison alone (``validation_job``, ``make demo``, the
monthly automation) must still succeed on a strategy that does not pass. Definitions
registers ``CHECKS``; they run with the promotion (``promotion_job``, or with the automated
promotion when ``QUANT_AUTO_PROMOTE=promote``, which gives the check its automation
condition so that it runs in the same run as the comparison and the champion).
"""

import polars as pl
from dagster import AssetCheckResult, AssetCheckSeverity, MetadataValue, asset_check

from quant_assets.automation import gate_check
from quant_assets.settings import load_settings
from quant_assets.validation.assets import GateConfig
from quant_assets.validation.compare import family_metrics, recommended_family
from quant_assets.validation.gate import GateThresholds, evaluate_gate


@asset_check(
    asset="model_comparison",
    blocking=True,
    description="Promotion gate: the recommended family's DSR, PBO, bootstrap max drawdown "
    "and minimum track record against configured thresholds; blocks champion_model when "
    "it fails or no family is recommended.",
    automation_condition=gate_check() if load_settings().auto_promote == "promote" else None,
)
def validation_gate(config: GateConfig, model_comparison: pl.DataFrame) -> AssetCheckResult:
    family = recommended_family(model_comparison)
    thresholds = config.to(GateThresholds)
    if family is None:
        # say why each family failed: a researcher reads the criteria, not just "no"
        families = sorted(model_comparison["model_family"].unique().to_list())
        why = "\n\n".join(
            f"{f}: {evaluate_gate(family_metrics(model_comparison, f), thresholds).message()}"
            for f in families
        )
        return AssetCheckResult(
            passed=False, severity=AssetCheckSeverity.ERROR,
            description=f"no model family's validation report passed the gate\n\n{why}",
            metadata={"recommended": "none"},
        )
    result = evaluate_gate(family_metrics(model_comparison, family), thresholds)
    return AssetCheckResult(
        passed=result.passed,
        severity=AssetCheckSeverity.ERROR,
        description=f"{family}: {result.message()}",
        metadata={
            "recommended": family,
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
