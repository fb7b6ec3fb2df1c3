"""The promotion gate's done-when cases: a sweep of pure-noise strategies has PBO near 0.5
and is stopped; a strategy with a real edge and few trials passes."""

import math

import numpy as np
import pytest

from quant_assets.validation import stats
from quant_assets.validation.gate import PASS_METRIC, GateThresholds, evaluate_gate
from quant_assets.validation.report import summarise

DAYS = 756  # three years


def _summary(main, trials, seed=0):
    n = main.size
    return summarise(
        main, np.zeros(n), trials, np.zeros(0), np.zeros(0), np.zeros(0), bootstrap_seed=seed,
        n_bootstrap=300,
    )


def test_noise_sweep_has_pbo_near_half_and_is_stopped():
    pbos = []
    for rep in range(8):
        rng = np.random.default_rng(100 + rep)
        pbos.append(stats.pbo_cscv(rng.normal(0.0, 0.01, (DAYS, 50)), n_splits=16).pbo)
    assert abs(np.mean(pbos) - 0.5) < 0.1, pbos

    rng = np.random.default_rng(7)
    noise = rng.normal(0.0, 0.01, (DAYS, 50))
    trials = {f"random-signal-{i}": noise[:, i] for i in range(50)}
    best = max(trials, key=lambda k: stats.sharpe_per_period(trials[k]))
    s = _summary(trials[best], trials)  # the researcher reports the best of 50
    m = s.metrics
    assert m["n_trials"] == 50 and m["pbo_n_trials"] == 50
    assert 0.25 < m["pbo"] < 0.75
    assert m["sharpe"] > 0.5  # selection makes noise look good in-sample...
    gate = evaluate_gate(m)
    assert not gate.passed  # ...but not to the gate
    crit = {c.name: c for c in gate.criteria}
    assert not crit["dsr"].passed and m["dsr"] < 0.95
    assert gate.metrics()[PASS_METRIC] == 0.0


def test_real_edge_with_few_trials_passes():
    rng = np.random.default_rng(11)
    vol = 0.01
    main = rng.normal(2.5 / math.sqrt(252) * vol, vol, DAYS)  # Sharpe 2.5
    trials = {"main": main}
    # the other ideas tried: weaker, independent strategies (Sharpe 0, 0.5, 1). Variants that
    # differed from `main` only by noise would rightly get a high PBO: picking the best of
    # them would be selection on noise.
    for sr in (0.0, 0.5, 1.0):
        trials[f"idea-sharpe-{sr}"] = rng.normal(sr / math.sqrt(252) * vol, vol, DAYS)
    s = _summary(main, trials)
    m = s.metrics
    assert m["sharpe"] == pytest.approx(stats.sharpe(main))
    gate = evaluate_gate(m)
    assert gate.passed, gate.message()
    assert m["dsr"] >= 0.95 and m["pbo"] <= 0.3
    assert m["n_obs"] >= m["min_track_record_length"]
    assert m["bootstrap_max_drawdown_p05"] >= -0.25
    assert gate.message().startswith("promotion gate PASSED")


def test_message_lists_each_criterion_value_and_verdict():
    metrics = {"dsr": 0.97, "pbo": 0.45, "bootstrap_max_drawdown_p05": -0.31, "n_obs": 300.0,
               "min_track_record_length": 120.0}
    gate = evaluate_gate(metrics)
    lines = gate.message().splitlines()
    assert lines[0] == "promotion gate FAILED"
    assert lines[1] == "- dsr: 0.97 (needs >= 0.95) PASS"
    assert lines[2] == "- pbo: 0.45 (needs <= 0.3) FAIL"
    assert lines[3] == "- bootstrap_max_drawdown: -0.31 (needs >= -0.25) FAIL"
    assert lines[4] == "- track_record: 300 (needs >= 120) PASS"
    assert gate.metrics() == {PASS_METRIC: 0.0, "gate_dsr_passed": 1.0, "gate_pbo_passed": 0.0,
                              "gate_bootstrap_max_drawdown_passed": 0.0, "gate_track_record_passed": 1.0}


def test_pbo_not_computable_is_not_applied_but_missing_numbers_fail():
    metrics = {"dsr": 0.99, "pbo": math.nan, "bootstrap_max_drawdown_p05": -0.1, "n_obs": 300.0,
               "min_track_record_length": 100.0}
    gate = evaluate_gate(metrics)
    assert gate.passed
    assert "pbo: n/a" in gate.message() and "not applied" in gate.message()
    assert math.isnan(gate.metrics()["gate_pbo_passed"])
    assert not evaluate_gate({**metrics, "dsr": math.nan}).passed
    assert not evaluate_gate({k: v for k, v in metrics.items() if k != "bootstrap_max_drawdown_p05"}).passed
    # MinTRL undefined (Sharpe <= 0): no track record is long enough
    assert not evaluate_gate({**metrics, "min_track_record_length": math.nan}).passed
    # thresholds come from config
    assert not evaluate_gate(metrics, GateThresholds(min_dsr=0.995)).passed
    with pytest.raises(ValueError, match="max_pbo"):
        GateThresholds(max_pbo=1.5)


def test_undefined_min_track_record_says_why():
    """'needs >= an undefined bound' told the reader nothing: the line now says that MinTRL is
    infinite because the observed Sharpe ratio is <= 0 (the PSR's benchmark), or that it could
    not be computed (moments undefined)."""
    base = {"dsr": 0.2, "pbo": 0.1, "bootstrap_max_drawdown_p05": -0.1, "n_obs": 300.0}
    negative = evaluate_gate({**base, "min_track_record_length": math.inf, "sharpe_per_period": -0.0123})
    line = negative.message().splitlines()[4]
    assert line == (
        "- track_record: 300 (needs >= a bound that is undefined: the minimum track record is "
        f"infinite because the observed Sharpe ratio ({-0.0123 * math.sqrt(252):.2f} annualised) is <= 0, the benchmark "
        "Sharpe ratio of the PSR: no track record is long enough) FAIL"
    )
    unknown = evaluate_gate({**base, "min_track_record_length": math.nan, "sharpe_per_period": math.nan})
    assert "cannot be computed: the Sharpe ratio, skew or kurtosis is undefined" in unknown.message()
    assert "an undefined bound" not in negative.message() + unknown.message()
    # from a real summary of a losing strategy
    r = np.random.default_rng(3).normal(-0.001, 0.01, 300)
    m = summarise(r, np.zeros(300), {"a": r}, np.zeros(0), np.zeros(0), np.zeros(0), n_bootstrap=20).metrics
    assert math.isinf(m["min_track_record_length"])
    assert f"({m['sharpe_per_period'] * math.sqrt(252):.2f} annualised) is <= 0" in evaluate_gate(m).message()
