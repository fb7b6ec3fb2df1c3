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


# Stands for "no borrow rates" in step_nb (read-only constant: compiled in, no allocation).
_NO_BORROW = np.zeros((0, 0))


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
    """``step_book_nb`` without a turnover limit or borrow costs (the parameter-grid engine's
    step). Returns (status, gross_return, cost, turnover, gross_exposure, net_exposure,
    equity)."""
    status, gross, cost, _, turnover, gross_exposure, net_exposure, new_equity = step_book_nb(
        t,
        prices,
        target_weights,
        tradable,
        volume,
        cost_rate,
        impact_coef,
        math.inf,
        _NO_BORROW,
        weights,
        last_prices,
        equity,
        returns_scratch,
        contribution_row,
    )
    return status, gross, cost, turnover, gross_exposure, net_exposure, new_equity


@njit(cache=True)
def step_book_nb(
    t,
    prices,
    target_weights,
    tradable,
    volume,
    cost_rate,
    impact_coef,
    max_turnover,
    borrow_rates,
    weights,
    last_prices,
    equity,
    returns_scratch,
    contribution_row,
):
    """Advance one scenario over day ``t``: earn (t-1, t], pay borrow, then rebalance at close t.

    Mutates ``weights`` (drifted, then post-trade), ``last_prices`` and ``contribution_row``
    (net contribution of each name, as a fraction of the equity at close t-1).
    ``returns_scratch`` is an (N,) work array. ``volume`` is only read when
    ``impact_coef > 0``. ``max_turnover`` (``math.inf``: none) caps the one-way turnover of
    the tradable names by moving each of them the same fraction of the way to its target.
    ``borrow_rates`` (T, N) are daily rates charged on the short notional held over
    (t-1, t]; an empty (0, 0) array means none.

    Returns (status, gross_return, cost, borrow_cost, turnover, gross_exposure,
    net_exposure, equity).
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
        return STATUS_WIPED_OUT, gross, 0.0, 0.0, 0.0, 0.0, 0.0, equity

    # Borrow on the shorts of close t-1 (fractions of the equity at close t-1).
    use_borrow = borrow_rates.shape[0] > 0
    borrow = 0.0
    if use_borrow:
        for i in range(n):
            w = weights[i]
            if w < 0.0:
                charge = -w * borrow_rates[t, i]
                contribution_row[i] -= charge
                borrow += charge

    # 2) Drift to the weights just before the close-t trade (fractions of equity at t).
    for i in range(n):
        if weights[i] != 0.0:
            weights[i] = weights[i] * (1.0 + returns_scratch[i]) / growth
    equity_before_costs = equity * growth

    # Turnover limit: the tradable names move a fraction k of the way to their targets,
    # the largest k in [0, 1] that keeps the day's turnover within the limit; forced closes
    # of delisted names are not optional and count in full.
    step = 1.0
    if max_turnover < math.inf:
        wanted = 0.0
        forced = 0.0
        for i in range(n):
            w = weights[i]
            if tradable[t, i]:
                wanted += abs(target_weights[t, i] - w)
            elif math.isnan(prices[t, i]) and w != 0.0:
                forced += abs(w)
        room = max_turnover - forced
        if wanted > room:
            step = room / wanted if room > 0.0 else 0.0

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
            if step < 1.0:
                target = w + step * (target - w)
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

    # Costs as a fraction of the equity at close t-1, so that net = gross - cost - borrow
    # exactly.
    cost = (turnover * cost_rate + impact) * growth
    net = gross - cost
    if use_borrow:
        net -= borrow
    new_equity = equity * (1.0 + net)
    if not new_equity > 0.0:
        return (STATUS_WIPED_OUT, gross, cost, borrow, turnover, gross_exposure, net_exposure,
                new_equity)
    return STATUS_OK, gross, cost, borrow, turnover, gross_exposure, net_exposure, new_equity


@njit(cache=True)
def simulate_nb(
    prices,
    target_weights,
    tradable,
    volume,
    cost_rate,
    impact_coef,
    max_turnover,
    borrow_rates,
    initial_weights,
    initial_last_prices,
    initial_equity,
    record_contributions,
    record_positions,
):
    """Run one scenario over all rows of ``prices`` (T x N) from the given state.

    Returns (gross_return, cost, borrow_cost, net_return, turnover, gross_exposure,
    net_exposure, equity, contributions, positions, end_weights, end_last_prices,
    end_equity, failed_row); ``contributions`` and ``positions`` (post-trade weights) are
    (T, N) when recorded and (0, N) otherwise; ``failed_row`` is -1 on success, else the
    row at which equity was wiped out (outputs from that row on are left at zero).
    """
    n_rows, n = prices.shape
    weights = initial_weights.copy()
    last_prices = initial_last_prices.copy()
    equity = initial_equity

    gross_return = np.zeros(n_rows)
    cost = np.zeros(n_rows)
    borrow_cost = np.zeros(n_rows)
    net_return = np.zeros(n_rows)
    turnover = np.zeros(n_rows)
    gross_exposure = np.zeros(n_rows)
    net_exposure = np.zeros(n_rows)
    equity_path = np.zeros(n_rows)
    contributions = np.zeros((n_rows if record_contributions else 0, n))
    positions = np.zeros((n_rows if record_positions else 0, n))
    returns_scratch = np.empty(n)
    contribution_row = np.empty(n)

    failed_row = -1
    for t in range(n_rows):
        status, g, c, b, to, ge, ne, new_equity = step_book_nb(
            t,
            prices,
            target_weights,
            tradable,
            volume,
            cost_rate,
            impact_coef,
            max_turnover,
            borrow_rates,
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
        borrow_cost[t] = b
        net_return[t] = g - c - b  # b is 0.0 without borrow rates: x - 0.0 == x exactly
        turnover[t] = to
        gross_exposure[t] = ge
        net_exposure[t] = ne
        equity_path[t] = equity
        if record_contributions:
            for i in range(n):
                contributions[t, i] = contribution_row[i]
        if record_positions:
            for i in range(n):
                positions[t, i] = weights[i]

    return (
        gross_return,
        cost,
        borrow_cost,
        net_return,
        turnover,
        gross_exposure,
        net_exposure,
        equity_path,
        contributions,
        positions,
        weights,
        last_prices,
        equity,
        failed_row,
    )


@njit(cache=True)
def row_sums_nb(matrix):
    """(T,) sums of the rows of ``matrix`` (T x N), one term at a time in column order: zero
    entries leave a sum bit-identical, wherever they sit."""
    n_rows, n = matrix.shape
    out = np.zeros(n_rows)
    for t in range(n_rows):
        total = 0.0
        for i in range(n):
            total += matrix[t, i]
        out[t] = total
    return out


@njit(cache=True)
def equal_weight_market_nb(returns):
    """(D,) mean of the finite entries of each row of ``returns`` (D x N), NaN if none.

    Summed one by one in column order over the finite entries only, so adding columns that
    are NaN on a row (names listed at other times) leaves that row's mean bit-identical.
    """
    n_days, n = returns.shape
    out = np.full(n_days, np.nan)
    for d in range(n_days):
        total = 0.0
        count = 0
        for i in range(n):
            r = returns[d, i]
            if not math.isnan(r):
                total += r
                count += 1
        if count > 0:
            out[d] = total / count
    return out


@njit(cache=True)
def trailing_betas_nb(returns, market, first_row, window, min_obs):
    """OLS slope of each column of ``returns`` (D x N) on ``market`` (D,) over the rows
    ``[t - window, t)`` (strictly before t), for t in ``[first_row, D)``.

    Only rows where both returns are finite count; with fewer than ``min_obs`` of them, or
    no variance of the market over them, the beta is NaN. Two passes (means, then centred
    sums) over exactly the window's values, so a beta depends on nothing but those values.
    Returns (D - first_row, N).
    """
    n_days, n = returns.shape
    out = np.full((n_days - first_row, n), np.nan)
    for t in range(first_row, n_days):
        lo = max(0, t - window)
        for i in range(n):
            count = 0
            sum_r = 0.0
            sum_m = 0.0
            for d in range(lo, t):
                r = returns[d, i]
                m = market[d]
                if not (math.isnan(r) or math.isnan(m)):
                    count += 1
                    sum_r += r
                    sum_m += m
            if count < min_obs:
                continue
            mean_r = sum_r / count
            mean_m = sum_m / count
            cov = 0.0
            var = 0.0
            for d in range(lo, t):
                r = returns[d, i]
                m = market[d]
                if not (math.isnan(r) or math.isnan(m)):
                    dm = m - mean_m
                    cov += (r - mean_r) * dm
                    var += dm * dm
            if var > 0.0:
                out[t - first_row, i] = cov / var
    return out


# A constraint vector whose part outside the span of the earlier ones is below this share
# of its norm is taken as dependent on them (e.g. equal betas and the ones vector).
_DEPENDENT = 1e-10
# A book whose gross shrinks below this share in the projection cannot be neutralised on
# its names (as many independent constraints as names): the row is left flat.
_VANISHED = 1e-9


@njit(cache=True)
def neutralize_rows_nb(weights, betas, groups, n_groups):
    """Make each row's book beta-neutral and net-neutral per group, on its own names.

    For row t, on the names with a nonzero weight (the support), the constraint vectors are
    one indicator per group present (``groups`` (T, N) int codes in ``[0, n_groups)``; one
    group for all names makes it the ones vector, i.e. dollar neutrality) and then the
    betas. They are orthonormalised in that order (modified Gram-Schmidt, dependent ones
    dropped) and their span is projected out of the weights: the least-squares smallest
    change that satisfies every constraint. The result is rescaled to the row's gross
    before the change. Returns a new (T, N) array.
    """
    n_rows, n = weights.shape
    out = weights.copy()
    index = np.empty(n, np.int64)
    basis = np.empty((n_groups + 1, n))
    vector = np.empty(n)
    adjusted = np.empty(n)
    for t in range(n_rows):
        m = 0
        for i in range(n):
            if weights[t, i] != 0.0:
                index[m] = i
                m += 1
        if m == 0:
            continue
        n_basis = 0
        for c in range(n_groups + 1):
            for j in range(m):
                i = index[j]
                if c < n_groups:
                    vector[j] = 1.0 if groups[t, i] == c else 0.0
                else:
                    vector[j] = betas[t, i]
            before = 0.0
            for j in range(m):
                before += vector[j] * vector[j]
            if before == 0.0:
                continue  # a group without names on this row
            for b in range(n_basis):
                dot = 0.0
                for j in range(m):
                    dot += basis[b, j] * vector[j]
                for j in range(m):
                    vector[j] -= dot * basis[b, j]
            after = 0.0
            for j in range(m):
                after += vector[j] * vector[j]
            if not after > _DEPENDENT * _DEPENDENT * before:
                continue
            norm = math.sqrt(after)
            for j in range(m):
                basis[n_basis, j] = vector[j] / norm
            n_basis += 1
        gross_before = 0.0
        for j in range(m):
            adjusted[j] = weights[t, index[j]]
            gross_before += abs(adjusted[j])
        for b in range(n_basis):
            dot = 0.0
            for j in range(m):
                dot += basis[b, j] * adjusted[j]
            for j in range(m):
                adjusted[j] -= dot * basis[b, j]
        gross_after = 0.0
        for j in range(m):
            gross_after += abs(adjusted[j])
        if not gross_after > _VANISHED * gross_before:
            for j in range(m):
                out[t, index[j]] = 0.0
            continue
        scale = gross_before / gross_after
        for j in range(m):
            out[t, index[j]] = adjusted[j] * scale
    return out
