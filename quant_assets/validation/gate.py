"""The promotion gate: criteria on the validation report's metrics. Pure (no Dagster).

A strategy passes when every applicable criterion passes:

* ``dsr``: Deflated Sharpe Ratio >= ``min_dsr`` (default 0.95): the Sharpe ratio is
  significant after deflating for every trial tried (variants and sweep trials).
* ``pbo``: Probability of Backtest Overfitting <= ``max_pbo`` (default 0.3). Only applies
  when PBO was computable (at least two trials on common days); otherwise it is reported
  as not applicable rather than failed.
* ``bootstrap_max_drawdown``: 5th percentile of the stationary-bootstrap max drawdown >=
  ``min_bootstrap_max_drawdown`` (default -0.25; drawdowns are negative).
* ``track_record``: the number of days n_obs >= the Minimum Track Record Length at 95%
  (undefined MinTRL, e.g. a non-positive Sharpe ratio, fails).

A missing or non-finite metric fails its criterion (except PBO, see above): a gate that
cannot see a number must not pass it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

PASS_METRIC = "gate_passed"  # 1.0 / 0.0 row of the report table


@dataclass(frozen=True)
class GateThresholds:
    min_dsr: float = 0.95
    max_pbo: float = 0.3
    min_bootstrap_max_drawdown: float = -0.25

    def __post_init__(self) -> None:
        if not 0.0 <= self.min_dsr <= 1.0:
            raise ValueError(f"min_dsr={self.min_dsr} must be a probability in [0, 1]")
        if not 0.0 <= self.max_pbo <= 1.0:
            raise ValueError(f"max_pbo={self.max_pbo} must be a probability in [0, 1]")
        if not -1.0 <= self.min_bootstrap_max_drawdown <= 0.0:
            raise ValueError(
                f"min_bootstrap_max_drawdown={self.min_bootstrap_max_drawdown} must be a "
                "drawdown in [-1, 0]"
            )


@dataclass(frozen=True)
class Criterion:
    name: str
    value: float
    threshold: float
    comparison: str  # ">=" or "<="
    applicable: bool
    passed: bool
    note: str = ""  # why the threshold is undefined, when it is

    def line(self) -> str:
        value = "n/a" if not math.isfinite(self.value) else f"{self.value:.4g}"
        if math.isfinite(self.threshold):
            threshold = f"{self.threshold:.4g}"
        else:
            threshold = f"a bound that is undefined: {self.note}" if self.note else "an undefined bound"
        verdict = "PASS" if self.passed else "FAIL"
        if not self.applicable:
            verdict = "n/a (not computable; not applied)"
        return f"{self.name}: {value} (needs {self.comparison} {threshold}) {verdict}"


@dataclass(frozen=True)
class GateResult:
    passed: bool
    criteria: tuple[Criterion, ...]

    def message(self) -> str:
        head = "promotion gate PASSED" if self.passed else "promotion gate FAILED"
        return head + "\n" + "\n".join("- " + c.line() for c in self.criteria)

    def metrics(self) -> dict[str, float]:
        """Rows for the report table: gate_passed and gate_<criterion>_passed (1/0; NaN for
        a criterion that does not apply)."""
        out = {PASS_METRIC: 1.0 if self.passed else 0.0}
        for c in self.criteria:
            out[f"gate_{c.name}_passed"] = (1.0 if c.passed else 0.0) if c.applicable else math.nan
        return out


def _value(metrics: dict[str, float], key: str) -> float:
    v = metrics.get(key)
    try:
        return float(v) if v is not None else math.nan
    except (TypeError, ValueError):
        return math.nan


def _at_least(name: str, value: float, threshold: float) -> Criterion:
    ok = math.isfinite(value) and value >= threshold
    return Criterion(name, value, threshold, ">=", True, ok)


def _undefined_min_track_record(metrics: dict[str, float]) -> str:
    """Why MinTRL has no value: the reader should not have to know the formula."""
    sr = _value(metrics, "sharpe_per_period")
    if math.isfinite(sr) and sr <= 0.0:
        return (
            f"the minimum track record is infinite because the observed Sharpe ratio "
            f"({sr * math.sqrt(252):.2f} annualised) is <= 0, the benchmark Sharpe ratio of the PSR: no track "
            "record is long enough"
        )
    return (
        "the minimum track record cannot be computed: the Sharpe ratio, skew or kurtosis is "
        "undefined (fewer than 3 returns, or returns without dispersion)"
    )


def evaluate_gate(metrics: dict[str, float], thresholds: GateThresholds | None = None) -> GateResult:
    """Gate verdict from the report metrics (keys dsr, pbo, bootstrap_max_drawdown_p05,
    n_obs, min_track_record_length)."""
    th = thresholds or GateThresholds()
    pbo = _value(metrics, "pbo")
    pbo_applies = math.isfinite(pbo)
    criteria = (
        _at_least("dsr", _value(metrics, "dsr"), th.min_dsr),
        Criterion("pbo", pbo, th.max_pbo, "<=", pbo_applies, (not pbo_applies) or pbo <= th.max_pbo),
        _at_least(
            "bootstrap_max_drawdown",
            _value(metrics, "bootstrap_max_drawdown_p05"),
            th.min_bootstrap_max_drawdown,
        ),
        _at_least(
            "track_record", _value(metrics, "n_obs"), _value(metrics, "min_track_record_length")
        )
        if math.isfinite(_value(metrics, "min_track_record_length"))
        else Criterion(
            "track_record", _value(metrics, "n_obs"), math.nan, ">=", True, False,
            _undefined_min_track_record(metrics),
        ),
    )
    return GateResult(all(c.passed for c in criteria), criteria)
