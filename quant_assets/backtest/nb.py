"""Numba kernels of the portfolio backtest (no Python objects, no polars, no Dagster).

The conventions (timing, costs, delistings, state) are documented in
:mod:`quant_assets.backtest.portfolio`; this module implements them on plain arrays and
trusts its caller to have validated the inputs.

Layout (vectorbt's style): ``step_nb`` advances one scenario by one trading day and mutates
its state arrays in place; ``simulate_nb`` loops it over the rows of one scenario. A
parameter-grid engine can drive ``step_nb`` over many scenarios with its own loop.

All reductions run in column order, so results are deterministic and a run split into
consecutive row blocks (feeding the state forward) is bit-identical to one run.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

# Status codes of step_nb / simulate_nb.
STATUS_OK = 0
STATUS_WIPED_OUT = 1  # 1 + gross return <= 0, or equity after costs <= 0


@njit(cache=True)
def step_nb(
    t,
    prices,
    target_weights,
    tradable,
    volume,
    cost_rate,
    impact_coef,
    weights,
    last_prices,
    equity,
    returns_scratch,
    contribution_row,
):
    """Advance one scenario over day ``t``: earn (t-1, t], then rebalance at close t.

    Mutates ``weights`` (drifted, then post-trade), ``last_prices`` and ``contribution_row``
    (net contribution of each name, as a fraction of the equity at close t-1).
    ``returns_scratch`` is an (N,) work array. ``volume`` is only read when
    ``impact_coef > 0``.

    Returns (status, gross_return, cost, turnover, gross_exposure, net_exposure, equity).
    """
    n = weights.shape[0]

    # 1) Holdings of close t-1 earn over (t-1, t]. A held name without a price at t is
    #    treated as delisted: its return over the missing day is 0.
    gross = 0.0
    for i in range(n):
        w = weights[i]
        ret = 0.0
        if w != 0.0:
            p = prices[t, i]
            if not math.isnan(p):
                ret = p / last_prices[i] - 1.0
        returns_scratch[i] = ret
        contribution_row[i] = w * ret
        gross += w * ret
    growth = 1.0 + gross
    if not growth > 0.0:
        return STATUS_WIPED_OUT, gross, 0.0, 0.0, 0.0, 0.0, equity

    # 2) Drift to the weights just before the close-t trade (fractions of equity at t).
    for i in range(n):
        if weights[i] != 0.0:
            weights[i] = weights[i] * (1.0 + returns_scratch[i]) / growth
    equity_before_costs = equity * growth

    # 3) Rebalance at close t.
    use_impact = impact_coef > 0.0
    turnover = 0.0
    impact = 0.0
    gross_exposure = 0.0
    net_exposure = 0.0
    for i in range(n):
        p = prices[t, i]
        w = weights[i]
        if tradable[t, i]:
            target = target_weights[t, i]
        elif math.isnan(p) and w != 0.0:
            target = 0.0  # delisted: closed at its last price
        else:
            target = w  # untradable: keep the drifted weight
        trade = abs(target - w)
        turnover += trade
        name_cost = trade * cost_rate
        # Only tradable names have a price and volume at t; forced closes carry no impact.
        if use_impact and trade > 0.0 and tradable[t, i]:
            name_impact = impact_coef * trade * math.sqrt(
                trade * equity_before_costs / (p * volume[t, i])
            )
            impact += name_impact
            name_cost += name_impact
        contribution_row[i] -= name_cost * growth
        weights[i] = target
        gross_exposure += abs(target)
        net_exposure += target
        if not math.isnan(p):
            last_prices[i] = p

    # Costs as a fraction of the equity at close t-1, so that net = gross - cost exactly.
    cost = (turnover * cost_rate + impact) * growth
    net = gross - cost
    new_equity = equity * (1.0 + net)
    if not new_equity > 0.0:
        return STATUS_WIPED_OUT, gross, cost, turnover, gross_exposure, net_exposure, new_equity
    return STATUS_OK, gross, cost, turnover, gross_exposure, net_exposure, new_equity


@njit(cache=True)
def simulate_nb(
    prices,
    target_weights,
    tradable,
    volume,
    cost_rate,
    impact_coef,
    initial_weights,
    initial_last_prices,
    initial_equity,
    record_contributions,
):
    """Run one scenario over all rows of ``prices`` (T x N) from the given state.

    Returns (gross_return, cost, net_return, turnover, gross_exposure, net_exposure, equity,
    contributions, end_weights, end_last_prices, end_equity, failed_row); ``contributions``
    is (T, N) when recorded and (0, N) otherwise; ``failed_row`` is -1 on success, else the
    row at which equity was wiped out (outputs from that row on are left at zero).
    """
    n_rows, n = prices.shape
    weights = initial_weights.copy()
    last_prices = initial_last_prices.copy()
    equity = initial_equity

    gross_return = np.zeros(n_rows)
    cost = np.zeros(n_rows)
    net_return = np.zeros(n_rows)
    turnover = np.zeros(n_rows)
    gross_exposure = np.zeros(n_rows)
    net_exposure = np.zeros(n_rows)
    equity_path = np.zeros(n_rows)
    contributions = np.zeros((n_rows if record_contributions else 0, n))
    returns_scratch = np.empty(n)
    contribution_row = np.empty(n)

    failed_row = -1
    for t in range(n_rows):
        status, g, c, to, ge, ne, new_equity = step_nb(
            t,
            prices,
            target_weights,
            tradable,
            volume,
            cost_rate,
            impact_coef,
            weights,
            last_prices,
            equity,
            returns_scratch,
            contribution_row,
        )
        if status != STATUS_OK:
            failed_row = t
            break
        equity = new_equity
        gross_return[t] = g
        cost[t] = c
        net_return[t] = g - c
        turnover[t] = to
        gross_exposure[t] = ge
        net_exposure[t] = ne
        equity_path[t] = equity
        if record_contributions:
            for i in range(n):
                contributions[t, i] = contribution_row[i]

    return (
        gross_return,
        cost,
        net_return,
        turnover,
        gross_exposure,
        net_exposure,
        equity_path,
        contributions,
        weights,
        last_prices,
        equity,
        failed_row,
    )
