"""The z-score grid's inner loop as an explicit SIMD kernel (LLVM IR built with llvmlite).

Why not a numba loop: LLVM only vectorises innermost loops, so a numba kernel has to loop
over parameter lanes inside the loop over bars and reload/store every lane's state on each
pass (zmm stores are the bound on AVX-512 machines), or unroll a few bars per pass and then
stall on the position's dependency chain. Here the loop over bars is inside, each group of
8 lanes is an LLVM ``<8 x double>`` whose state stays in registers for a whole block of bars,
and two groups are interleaved so that one group's dependency chain hides the other's
latency. Measured on the benchmark machine (AMD EPYC, AVX-512): 0.54 ns per bar-lane against
0.84 ns for the best numba formulation of the same arithmetic. llvmlite is numba's own code
generator (already installed with numba); the IR is compiled once per process for the host
CPU (the CPU numba targets) and called from numba kernels through its address.

Semantics (identical, bit for bit, to ``grid_nb._zmr_lanes_nb``, which tests check):

* lane state rows (``STATE_ROWS``): position, equity, sum r, sum r^2, transitions, peak,
  worst-drawdown trough and its peak; a row is ``ld`` doubles after the previous one;
* transition, valid for ``entry >= 0`` (the caller sends other lanes to the numba kernel):
  with ``v = p`` in a position and ``v = -sign(z)`` when flat, ``a = v * (-z)`` is ``|z|``
  when flat, ``-z`` when long and ``z`` when short; the lane ends the bar in position ``v``
  when ``lo < a <= stop`` (``lo = entry`` when flat, the double just below ``exit`` in a
  position), else flat. That is the grid's rule: flat -> -sign(z) when entry < |z| <= stop,
  and a position is kept while exit <= -p z <= stop. A NaN z changes no position;
* booking: ``r = fma(p, ret, -c)`` with ``c = cost`` on a transition bar (``|q - p| = 1``)
  else 0; ``equity = fma(equity, r, equity)``; ``s1 += r``; ``s2 = fma(r, r, s2)``;
  drawdown: ``peak = max(peak, equity)``, and the pair (equity, peak) replaces the worst
  pair (wt, wp) when ``equity * wp < wt * peak`` (no division per bar).
"""

from __future__ import annotations

import threading

import llvmlite.binding as llvm
import numba
from llvmlite import ir

__all__ = ["STATE_ROWS", "WIDTH", "kernel_addresses"]

WIDTH = 8  # doubles per full vector (one AVX-512 register; two AVX2 registers elsewhere)
STATE_ROWS = 8  # position, equity, s1, s2, transitions, peak, worst trough, worst peak

_D = ir.DoubleType()
_I1 = ir.IntType(1)
_I32 = ir.IntType(32)
_I64 = ir.IntType(64)


def _build(name: str, widths: tuple[int, ...], ceiling: bool = False) -> ir.Module:
    """IR of ``void name(st, ld, m, z, ret, n, entry, exit_lo, stop, cost)``.

    Lanes ``[0, m)`` (``m`` a multiple of ``sum(widths)``) advance over bars ``0..n-1``, as
    ``len(widths)`` interleaved vectors of these widths (4 or 8 doubles).
    ``ceiling`` keeps only the loads, the transition compares/selects and the transition
    count: the unavoidable part, timed by the benchmark as the machine's ceiling.
    """
    groups = len(widths)
    step = sum(widths)
    vecs = [ir.VectorType(_D, w) for w in widths]
    masks = [ir.VectorType(_I1, w) for w in widths]
    pd = _D.as_pointer()
    module = ir.Module(name=name)
    fnty = ir.FunctionType(ir.VoidType(), [pd, _I64, _I64, pd, pd, _I64, pd, pd, pd, _D])
    fn = ir.Function(module, fnty, name=name)
    for arg in fn.args:
        if isinstance(arg.type, ir.PointerType):
            arg.add_attribute("noalias")
    st, ld, m, zp, rp, n, entp, xlop, stpp, cost = fn.args
    fmas = {}
    for w in set(widths):
        vt = ir.VectorType(_D, w)
        fmas[w] = ir.Function(module, ir.FunctionType(vt, [vt, vt, vt]), name=f"llvm.fma.v{w}f64")
    names = ["entry", "lanes", "load", "bars", "bar", "fast", "nan", "book", "store", "done"]
    bb = {k: fn.append_basic_block(k) for k in names}
    b = ir.IRBuilder(bb["entry"])

    def splat(x, g):
        w = widths[g]
        one = b.insert_element(ir.Constant(vecs[g], ir.Undefined), x, ir.Constant(_I32, 0))
        return b.shuffle_vector(
            one, ir.Constant(vecs[g], ir.Undefined), ir.Constant(ir.VectorType(_I32, w), [0] * w)
        )

    def vptr(base, offset, g):
        return b.bitcast(b.gep(base, [offset]), vecs[g].as_pointer())

    zero = [ir.Constant(v, [0.0] * w) for v, w in zip(vecs, widths, strict=True)]
    one = [ir.Constant(v, [1.0] * w) for v, w in zip(vecs, widths, strict=True)]
    no = [ir.Constant(k, [0] * w) for k, w in zip(masks, widths, strict=True)]
    costv = [splat(cost, g) for g in range(groups)]
    b.branch(bb["lanes"])

    # for j in range(0, m, WIDTH * groups)
    b.position_at_end(bb["lanes"])
    j = b.phi(_I64, "j")
    j.add_incoming(ir.Constant(_I64, 0), bb["entry"])
    b.cbranch(b.icmp_signed("<", j, m), bb["load"], bb["done"])

    b.position_at_end(bb["load"])
    offs = [b.add(j, ir.Constant(_I64, sum(widths[:g]))) for g in range(groups)]
    rows = [b.gep(st, [b.mul(ld, ir.Constant(_I64, r))]) for r in range(STATE_ROWS)]
    init = [[b.load(vptr(rows[r], offs[g], g), align=8) for r in range(STATE_ROWS)] for g in range(groups)]
    # "in a position" is carried as a mask (it is the previous bar's hit)
    init_pos = [b.fcmp_unordered("!=", init[g][0], zero[g]) for g in range(groups)]
    params = [
        tuple(b.load(vptr(base, offs[g], g), align=8) for base in (entp, xlop, stpp))
        for g in range(groups)
    ]
    b.branch(bb["bars"])

    # for t in range(n), the state in phi nodes (registers)
    b.position_at_end(bb["bars"])
    t = b.phi(_I64, "t")
    t.add_incoming(ir.Constant(_I64, 0), bb["load"])
    state = [[b.phi(vecs[g]) for _ in range(STATE_ROWS)] for g in range(groups)]
    in_pos = [b.phi(masks[g]) for g in range(groups)]
    for g in range(groups):
        for r in range(STATE_ROWS):
            state[g][r].add_incoming(init[g][r], bb["load"])
        in_pos[g].add_incoming(init_pos[g], bb["load"])
    b.cbranch(b.icmp_signed("<", t, n), bb["bar"], bb["store"])

    b.position_at_end(bb["bar"])
    z = b.load(b.gep(zp, [t]))
    b.cbranch(b.fcmp_unordered("uno", z, z), bb["nan"], bb["fast"])

    b.position_at_end(bb["fast"])
    nzs = b.fsub(ir.Constant(_D, -0.0), z)
    sides = b.select(b.fcmp_ordered("<", z, ir.Constant(_D, 0.0)), ir.Constant(_D, 1.0), ir.Constant(_D, -1.0))
    fast = []
    for g in range(groups):
        nz = splat(nzs, g)
        side = splat(sides, g)
        p, h = state[g][0], in_pos[g]
        entry, exit_lo, stop = params[g]
        v = b.select(h, p, side)
        a = b.fmul(v, nz)
        lo = b.select(h, exit_lo, entry)
        hit = b.and_(b.fcmp_ordered(">", a, lo), b.fcmp_ordered("<=", a, stop))
        fast.append((b.select(hit, v, zero[g]), hit, b.xor(hit, h)))
    b.branch(bb["book"])

    b.position_at_end(bb["nan"])
    b.branch(bb["book"])

    b.position_at_end(bb["book"])
    merged = []
    for g in range(groups):  # phi nodes first: the block's opening
        q = b.phi(vecs[g])
        q.add_incoming(fast[g][0], bb["fast"])
        q.add_incoming(state[g][0], bb["nan"])
        hit = b.phi(masks[g])
        hit.add_incoming(fast[g][1], bb["fast"])
        hit.add_incoming(in_pos[g], bb["nan"])
        trans = b.phi(masks[g])
        trans.add_incoming(fast[g][2], bb["fast"])
        trans.add_incoming(no[g], bb["nan"])
        merged.append((q, hit, trans))
    rets = b.load(b.gep(rp, [t]))
    new = []
    for g in range(groups):
        q, hit, trans = merged[g]
        ret = splat(rets, g)
        fma = fmas[widths[g]]
        p, eq, s1, s2, nt, pk, wt, wp = state[g]
        nt2 = b.select(trans, b.fadd(nt, one[g]), nt)
        if ceiling:
            new.append(([q, eq, s1, s2, nt2, pk, wt, wp], hit))
            continue
        c = b.select(trans, costv[g], zero[g])
        r = b.call(fma, [p, ret, b.fneg(c)])
        eq2 = b.call(fma, [eq, r, eq])
        s1b = b.fadd(s1, r)
        s2b = b.call(fma, [r, r, s2])
        pk2 = b.select(b.fcmp_ordered(">", eq2, pk), eq2, pk)
        worse = b.fcmp_ordered("<", b.fmul(eq2, wp), b.fmul(wt, pk2))
        wt2 = b.select(worse, eq2, wt)
        wp2 = b.select(worse, pk2, wp)
        new.append(([q, eq2, s1b, s2b, nt2, pk2, wt2, wp2], hit))
    t.add_incoming(b.add(t, ir.Constant(_I64, 1)), bb["book"])
    for g in range(groups):
        for r in range(STATE_ROWS):
            state[g][r].add_incoming(new[g][0][r], bb["book"])
        in_pos[g].add_incoming(new[g][1], bb["book"])
    b.branch(bb["bars"])

    b.position_at_end(bb["store"])
    for g in range(groups):
        for r in range(STATE_ROWS):
            b.store(state[g][r], vptr(rows[r], offs[g], g), align=8)
    j.add_incoming(b.add(j, ir.Constant(_I64, step)), bb["store"])
    b.branch(bb["lanes"])

    b.position_at_end(bb["done"])
    b.ret_void()
    return module


_lock = threading.Lock()
_compiled: dict[str, object] = {}


def _target_machine():
    # The CPU numba compiles for (NUMBA_CPU_NAME / NUMBA_CPU_FEATURES when set, else the host).
    cpu = numba.config.CPU_NAME or llvm.get_host_cpu_name()
    features = numba.config.CPU_FEATURES
    if features is None:
        features = llvm.get_host_cpu_features().flatten()
    target = llvm.Target.from_default_triple()
    return target.create_target_machine(cpu=cpu, features=features, opt=3)


def kernel_addresses() -> dict[str, int]:
    """Addresses of the compiled kernels (compiled on first call, once per process).

    ``lanesK`` advances K lanes per loop iteration (16: two 8-lane vectors interleaved;
    12: an 8-lane and a 4-lane one; 8, 4: one vector); ``ceilingK`` are the benchmark's
    ceiling kernels (same loads and transition logic, no booking).
    """
    with _lock:
        if not _compiled:
            llvm.initialize_native_target()
            llvm.initialize_native_asmprinter()
            shapes = {16: (8, 8), 12: (8, 4), 8: (8,), 4: (4,)}
            specs = {f"lanes{k}": (w, False) for k, w in shapes.items()}
            specs.update({f"ceiling{k}": (w, True) for k, w in shapes.items()})
            mods = [llvm.parse_assembly(str(_build(name, g, c))) for name, (g, c) in specs.items()]
            for mod in mods:
                mod.verify()
            main = mods[0]
            for mod in mods[1:]:
                main.link_in(mod)
            engine = llvm.create_mcjit_compiler(main, _target_machine())
            engine.finalize_object()
            _compiled["engine"] = engine  # keeps the machine code alive
            for name in specs:
                _compiled[name] = engine.get_function_address(name)
        return {k: v for k, v in _compiled.items() if k != "engine"}
