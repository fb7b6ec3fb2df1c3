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

Two layouts of the same arithmetic, chosen by the target CPU (``wide_registers``): the one-pass
kernel above where AVX-512's 32 registers hold the state of two 8-lane groups, and a two-pass
kernel elsewhere (``_build_two_pass``: a block's positions first, then their booking), because
on AVX2's 16 registers of 4 doubles the one-pass state spills on every bar. Measured on an AVX2
host (znver3): the grid at 1.60-1.67 ns per bar-parameter against 2.04-2.54 ns one-pass.

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

__all__ = ["STATE_ROWS", "WIDTH", "kernel_addresses", "wide_registers"]

WIDTH = 8  # doubles per full vector (one AVX-512 register; two AVX2 registers elsewhere)
_W4 = 4  # the two-pass kernel's vectors: one AVX2 register
# bars per block of the two-pass kernel: its position buffer (block x 16 lanes x 8 bytes,
# 32 KiB) stays in the L1/L2 cache between the two passes
TWO_PASS_BLOCK = 256
STATE_ROWS = 8  # position, equity, s1, s2, transitions, peak, worst trough, worst peak

_D = ir.DoubleType()
_I1 = ir.IntType(1)
_I32 = ir.IntType(32)
_I64 = ir.IntType(64)


def _kernel_function(name: str) -> tuple[ir.Module, ir.Function]:
    """``void name(st, ld, m, z, ret, n, entry, exit_lo, stop, cost)``, pointers noalias."""
    pd = _D.as_pointer()
    module = ir.Module(name=name)
    fnty = ir.FunctionType(ir.VoidType(), [pd, _I64, _I64, pd, pd, _I64, pd, pd, pd, _D])
    fn = ir.Function(module, fnty, name=name)
    for arg in fn.args:
        if isinstance(arg.type, ir.PointerType):
            arg.add_attribute("noalias")
    return module, fn


def _splat(b: ir.IRBuilder, vt: ir.VectorType, x) -> ir.Value:
    one = b.insert_element(ir.Constant(vt, ir.Undefined), x, ir.Constant(_I32, 0))
    return b.shuffle_vector(one, ir.Constant(vt, ir.Undefined), ir.Constant(ir.VectorType(_I32, vt.count), [0] * vt.count))


def _transition(b: ir.IRBuilder, p, h, nz, side, params, zero) -> tuple[ir.Value, ir.Value]:
    """The grid's rule for one vector of lanes on a bar with a z-score (module docstring):
    the new position ``q`` and its mask ``hit`` from the position ``p`` and its mask ``h``."""
    entry, exit_lo, stop = params
    v = b.select(h, p, side)
    a = b.fmul(v, nz)
    lo = b.select(h, exit_lo, entry)
    hit = b.and_(b.fcmp_ordered(">", a, lo), b.fcmp_ordered("<=", a, stop))
    return b.select(hit, v, zero), hit


def _book(b: ir.IRBuilder, fma: ir.Function, state: list, q, trans, ret, cost, zero, one) -> list:
    """The state rows after a bar: ``state`` (position p before the bar, equity, s1, s2,
    transitions, peak, worst trough, worst peak), the new position ``q``, the transition mask,
    the bar's return and the cost, each a vector of lanes (module docstring)."""
    p, eq, s1, s2, nt, pk, wt, wp = state
    nt2 = b.select(trans, b.fadd(nt, one), nt)
    c = b.select(trans, cost, zero)
    r = b.call(fma, [p, ret, b.fneg(c)])
    eq2 = b.call(fma, [eq, r, eq])
    s1b = b.fadd(s1, r)
    s2b = b.call(fma, [r, r, s2])
    pk2 = b.select(b.fcmp_ordered(">", eq2, pk), eq2, pk)
    worse = b.fcmp_ordered("<", b.fmul(eq2, wp), b.fmul(wt, pk2))
    return [q, eq2, s1b, s2b, nt2, pk2, b.select(worse, eq2, wt), b.select(worse, pk2, wp)]


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
    module, fn = _kernel_function(name)
    st, ld, m, zp, rp, n, entp, xlop, stpp, cost = fn.args
    fmas = {}
    for w in set(widths):
        vt = ir.VectorType(_D, w)
        fmas[w] = ir.Function(module, ir.FunctionType(vt, [vt, vt, vt]), name=f"llvm.fma.v{w}f64")
    names = ["entry", "lanes", "load", "bars", "bar", "fast", "nan", "book", "store", "done"]
    bb = {k: fn.append_basic_block(k) for k in names}
    b = ir.IRBuilder(bb["entry"])

    def splat(x, g):
        return _splat(b, vecs[g], x)

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
        q, hit = _transition(b, state[g][0], in_pos[g], nz, side, params[g], zero[g])
        fast.append((q, hit, b.xor(hit, in_pos[g])))
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
        if ceiling:
            p, eq, s1, s2, nt, pk, wt, wp = state[g]
            new.append(([q, eq, s1, s2, b.select(trans, b.fadd(nt, one[g]), nt), pk, wt, wp], hit))
            continue
        new.append((_book(b, fmas[widths[g]], state[g], q, trans, splat(rets, g), costv[g], zero[g], one[g]), hit))
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


def _build_two_pass(name: str, lanes: int, block: int = TWO_PASS_BLOCK, ceiling: bool = False) -> ir.Module:
    """IR of the same function as ``_build(name, ...)`` (same arguments, same results bit for
    bit), for hosts whose vector registers cannot hold the one-pass kernel's state (AVX2: 16
    registers of 4 doubles against AVX-512's 32 of 8, so the 8 state rows of 16 lanes
    spill on every bar).

    Lanes go ``lanes`` at a time (a multiple of 4); bars go in blocks of ``block``:
    pass 1 decides the block's positions of all ``lanes`` (interleaved 4-lane vectors: only
    the position and its mask are carried, so the dependency chains of several vectors hide
    one another) into a stack buffer; pass 2 books them 4 lanes at a time (7 state rows,
    no position chain: the position of each bar is a load). Same operations in the same
    order per lane as the one-pass kernel: the transition is ``q != p`` (a lane never goes
    from long to short in one bar, so that is the one-pass kernel's mask change).
    ``ceiling``: pass 1 alone, counting transitions (the benchmark's ceiling for this layout).
    """
    groups = lanes // _W4
    vt = ir.VectorType(_D, _W4)
    mt = ir.VectorType(_I1, _W4)
    module, fn = _kernel_function(name)
    st, ld, m, zp, rp, n, entp, xlop, stpp, cost = fn.args
    fma = ir.Function(module, ir.FunctionType(vt, [vt, vt, vt]), name="llvm.fma.v4f64")
    blocks = {k: fn.append_basic_block(k) for k in (
        "entry", "lanes", "load", "blk", "blkbody", "a_bars", "a_bar", "a_fast", "a_nan", "a_join",
        "a_done", *(f"b{g}_{k}" for g in range(0 if ceiling else groups) for k in ("open", "bars", "bar", "done")),
        "blk_next", "store", "done")}
    b = ir.IRBuilder(blocks["entry"])
    qbuf = b.alloca(_D, size=block * lanes, name="q")
    zero = ir.Constant(vt, [0.0] * _W4)
    one = ir.Constant(vt, [1.0] * _W4)

    def splat(x):
        return _splat(b, vt, x)

    def vptr(base, offset):
        return b.bitcast(b.gep(base, [offset]), vt.as_pointer())

    costv = splat(cost)
    rows = [b.gep(st, [b.mul(ld, ir.Constant(_I64, r))]) for r in range(STATE_ROWS)]
    b.branch(blocks["lanes"])

    # for j in range(0, m, lanes)
    b.position_at_end(blocks["lanes"])
    j = b.phi(_I64, "j")
    j.add_incoming(ir.Constant(_I64, 0), blocks["entry"])
    b.cbranch(b.icmp_signed("<", j, m), blocks["load"], blocks["done"])

    b.position_at_end(blocks["load"])
    offs = [b.add(j, ir.Constant(_I64, _W4 * g)) for g in range(groups)]
    p_init = [b.load(vptr(rows[0], o), align=8) for o in offs]
    params = [tuple(b.load(vptr(base, o), align=8) for base in (entp, xlop, stpp)) for o in offs]
    b.branch(blocks["blk"])

    # for t0 in range(0, n, block): the position carried from block to block
    b.position_at_end(blocks["blk"])
    t0 = b.phi(_I64, "t0")
    t0.add_incoming(ir.Constant(_I64, 0), blocks["load"])
    p_open = [b.phi(vt) for _ in range(groups)]
    for g in range(groups):
        p_open[g].add_incoming(p_init[g], blocks["load"])
    b.cbranch(b.icmp_signed("<", t0, n), blocks["blkbody"], blocks["store"])

    b.position_at_end(blocks["blkbody"])
    end = b.add(t0, ir.Constant(_I64, block))
    nb = b.sub(b.select(b.icmp_signed("<", end, n), end, n), t0)
    h_open = [b.fcmp_unordered("!=", p_open[g], zero) for g in range(groups)]
    nt_open = [b.load(vptr(rows[4], o), align=8) for o in offs] if ceiling else []
    b.branch(blocks["a_bars"])

    # pass 1: positions of the block's bars, all lanes interleaved
    b.position_at_end(blocks["a_bars"])
    t = b.phi(_I64, "ta")
    t.add_incoming(ir.Constant(_I64, 0), blocks["blkbody"])
    ps = [b.phi(vt) for _ in range(groups)]
    hs = [b.phi(mt) for _ in range(groups)]
    nts = [b.phi(vt) for _ in nt_open]
    for g in range(groups):
        ps[g].add_incoming(p_open[g], blocks["blkbody"])
        hs[g].add_incoming(h_open[g], blocks["blkbody"])
    for g, nt in enumerate(nts):
        nt.add_incoming(nt_open[g], blocks["blkbody"])
    b.cbranch(b.icmp_signed("<", t, nb), blocks["a_bar"], blocks["a_done"])

    b.position_at_end(blocks["a_bar"])
    z = b.load(b.gep(zp, [b.add(t0, t)]))
    b.cbranch(b.fcmp_unordered("uno", z, z), blocks["a_nan"], blocks["a_fast"])

    b.position_at_end(blocks["a_fast"])
    nz = splat(b.fsub(ir.Constant(_D, -0.0), z))
    side = splat(b.select(b.fcmp_ordered("<", z, ir.Constant(_D, 0.0)), ir.Constant(_D, 1.0), ir.Constant(_D, -1.0)))
    fast = []
    for g in range(groups):
        fast.append(_transition(b, ps[g], hs[g], nz, side, params[g], zero))
    b.branch(blocks["a_join"])

    b.position_at_end(blocks["a_nan"])  # a NaN z changes no position
    b.branch(blocks["a_join"])

    b.position_at_end(blocks["a_join"])
    qs, hits = [], []
    for g in range(groups):
        q = b.phi(vt)
        q.add_incoming(fast[g][0], blocks["a_fast"])
        q.add_incoming(ps[g], blocks["a_nan"])
        hit = b.phi(mt)
        hit.add_incoming(fast[g][1], blocks["a_fast"])
        hit.add_incoming(hs[g], blocks["a_nan"])
        qs.append(q)
        hits.append(hit)
    if ceiling:
        for g, nt in enumerate(nts):
            nt.add_incoming(b.select(b.xor(hits[g], hs[g]), b.fadd(nt, one), nt), blocks["a_join"])
    else:
        row = b.mul(t, ir.Constant(_I64, lanes))
        for g in range(groups):
            b.store(qs[g], vptr(qbuf, b.add(row, ir.Constant(_I64, _W4 * g))), align=8)
    t.add_incoming(b.add(t, ir.Constant(_I64, 1)), blocks["a_join"])
    for g in range(groups):
        ps[g].add_incoming(qs[g], blocks["a_join"])
        hs[g].add_incoming(hits[g], blocks["a_join"])
    b.branch(blocks["a_bars"])

    b.position_at_end(blocks["a_done"])
    for g, nt in enumerate(nts):
        b.store(nt, vptr(rows[4], offs[g]), align=8)
    b.branch(blocks["blk_next"] if ceiling else blocks["b0_open"])

    # pass 2: book the block 4 lanes at a time, the state rows from and back to memory
    for g in range(0 if ceiling else groups):
        b.position_at_end(blocks[f"b{g}_open"])
        init = [p_open[g], *(b.load(vptr(rows[r], offs[g]), align=8) for r in range(1, STATE_ROWS))]
        b.branch(blocks[f"b{g}_bars"])
        b.position_at_end(blocks[f"b{g}_bars"])
        tb = b.phi(_I64)
        tb.add_incoming(ir.Constant(_I64, 0), blocks[f"b{g}_open"])
        state = [b.phi(vt) for _ in range(STATE_ROWS)]
        for r in range(STATE_ROWS):
            state[r].add_incoming(init[r], blocks[f"b{g}_open"])
        b.cbranch(b.icmp_signed("<", tb, nb), blocks[f"b{g}_bar"], blocks[f"b{g}_done"])

        b.position_at_end(blocks[f"b{g}_bar"])
        q = b.load(vptr(qbuf, b.add(b.mul(tb, ir.Constant(_I64, lanes)), ir.Constant(_I64, _W4 * g))), align=8)
        ret = splat(b.load(b.gep(rp, [b.add(t0, tb)])))
        new = _book(b, fma, state, q, b.fcmp_unordered("!=", q, state[0]), ret, costv, zero, one)
        tb.add_incoming(b.add(tb, ir.Constant(_I64, 1)), blocks[f"b{g}_bar"])
        for k in range(STATE_ROWS):
            state[k].add_incoming(new[k], blocks[f"b{g}_bar"])
        b.branch(blocks[f"b{g}_bars"])

        b.position_at_end(blocks[f"b{g}_done"])
        for k in range(1, STATE_ROWS):
            b.store(state[k], vptr(rows[k], offs[g]), align=8)
        b.branch(blocks[f"b{g + 1}_open"] if g + 1 < groups else blocks["blk_next"])

    b.position_at_end(blocks["blk_next"])
    t0.add_incoming(b.add(t0, ir.Constant(_I64, block)), blocks["blk_next"])
    for g in range(groups):
        p_open[g].add_incoming(ps[g], blocks["blk_next"])
    b.branch(blocks["blk"])

    b.position_at_end(blocks["store"])
    for g in range(groups):
        b.store(p_open[g], vptr(rows[0], offs[g]), align=8)
    j.add_incoming(b.add(j, ir.Constant(_I64, lanes)), blocks["store"])
    b.branch(blocks["lanes"])

    b.position_at_end(blocks["done"])
    b.ret_void()
    return module


_lock = threading.Lock()
_compiled: dict[str, dict[int, int]] = {}  # kernel set -> lanes per call -> address
_engines: list = []  # keep the machine code alive
# lanes per call -> the one-pass kernel's interleaved vectors
_SHAPES = {16: (8, 8), 12: (8, 4), 8: (8,), 4: (4,)}


def _target_features() -> str:
    # The CPU numba compiles for (NUMBA_CPU_FEATURES when set, else the host's), "+f,-g,...":
    # the kernels are built for it and the layout is chosen by it
    features = numba.config.CPU_FEATURES
    return llvm.get_host_cpu_features().flatten() if features is None else features


def _target_machine():
    cpu = numba.config.CPU_NAME or llvm.get_host_cpu_name()
    target = llvm.Target.from_default_triple()
    return target.create_target_machine(cpu=cpu, features=_target_features(), opt=3)


def wide_registers() -> bool:
    """Whether the target CPU has AVX-512 (32 registers of 8 doubles): the one-pass kernel's
    state fits there; elsewhere the two-pass kernel is faster."""
    return "+avx512f" in _target_features().split(",")


def _specs(kernels: str) -> dict[int, ir.Module]:
    if kernels == "onepass":
        return {k: _build(f"onepass{k}", w) for k, w in _SHAPES.items()}
    if kernels == "twopass":
        return {k: _build_two_pass(f"twopass{k}", k) for k in _SHAPES}
    if kernels == "onepass_ceiling":
        return {k: _build(f"onepass_ceiling{k}", w, ceiling=True) for k, w in _SHAPES.items()}
    if kernels == "twopass_ceiling":
        return {k: _build_two_pass(f"twopass_ceiling{k}", k, ceiling=True) for k in _SHAPES}
    raise ValueError(f"unknown kernels {kernels!r}")


def kernel_addresses(kernels: str = "lanes") -> dict[int, int]:
    """Addresses of one set of compiled kernels, lanes per call -> address (compiled on first
    request, once per process).

    ``lanes``: the grid's kernels for the target CPU, ``onepass`` on AVX-512 hosts and
    ``twopass`` elsewhere (both bit-identical; tests ask for each by name). ``K`` lanes per
    loop iteration (16, 12, 8, 4). ``ceiling``: the benchmark's ceiling kernels for the same
    layout (``onepass_ceiling`` / ``twopass_ceiling``: its loads and transition logic, the
    transitions counted, no booking).
    """
    layout = "onepass" if wide_registers() else "twopass"
    kernels = {"lanes": layout, "ceiling": f"{layout}_ceiling"}.get(kernels, kernels)
    with _lock:
        if kernels not in _compiled:
            llvm.initialize_native_target()
            llvm.initialize_native_asmprinter()
            modules = _specs(kernels)
            parsed = [llvm.parse_assembly(str(mod)) for mod in modules.values()]
            for mod in parsed:
                mod.verify()
            main = parsed[0]
            for mod in parsed[1:]:
                main.link_in(mod)
            engine = llvm.create_mcjit_compiler(main, _target_machine())
            engine.finalize_object()
            _engines.append(engine)
            names = [mod.name for mod in modules.values()]
            _compiled[kernels] = {k: engine.get_function_address(name)
                                  for k, name in zip(modules, names, strict=True)}
        return dict(_compiled[kernels])
