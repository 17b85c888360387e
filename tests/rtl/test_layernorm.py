"""The LayerNorm unit against `intmodel.layernorm`, bit for bit, with random stalls on every
port; its cycle model; its refusal of rows longer than max_e."""
from fractions import Fraction

import numpy as np
import pytest
from amaranth.sim import Simulator

from gpt2accel.model import intmodel as im
from gpt2accel.rtl.layernorm import LayerNormUnit, RowRoot, row_latency
from gpt2accel.sim.cycles.units import layernorm_row_period, layernorm_schedule
from gpt2accel.sim.harness.units import LayerNormGroup, ScriptSource, run_layernorm

from units_cases import (extremes, knife_edge_beta, layernorm_params, layernorm_rows,
                         layernorm_z, pell_row, quant_model)


def _check(groups, ys, bits, seed, what):
    for i, (g, y) in enumerate(zip(groups, ys)):
        want = im.layernorm(g.x, g.gamma, g.beta, g.out_shift, g.eps_m, g.eps_e, bits)
        bad = np.argwhere(y != want)
        assert not bad.size, (
            f"{what} group {i} (N={g.n}, out_shift={g.out_shift}, eps={g.eps_m}*2^{g.eps_e}): "
            f"{len(bad)} mismatches, first at row/channel {tuple(bad[0])}: got "
            f"{y[tuple(bad[0])]}, want {want[tuple(bad[0])]} (GPT2ACCEL_SEED={seed})")


def test_root_matches_isqrt_and_reciprocal(seed):
    """RowRoot alone on the §6.4 edges: squares and their neighbours, the
    clamp boundary r = 2^12, the 48-bit maximum, random values of every size."""
    rng = np.random.default_rng([seed, 1])
    vals = [0, 1, 2, 3, (1 << 48) - 1, (1 << 24) - 1, 1 << 24, ((1 << 12) + 1) ** 2,
            (1 << 12) ** 2 - 1, (1 << 13) ** 2]
    vals += [s * s + d for s in rng.integers(1, 1 << 24, 12).tolist() for d in (-1, 0)]
    vals += [int(rng.integers(0, 1 << int(b))) for b in rng.integers(1, 49, 20)]
    dut = RowRoot()
    got = []

    async def bench(ctx):
        for v in vals:
            ctx.set(dut.s2, v)
            ctx.set(dut.start, 1)
            await ctx.tick()
            ctx.set(dut.start, 0)
            cycles = 1
            while not ctx.get(dut.done):
                assert ctx.get(dut.busy)
                await ctx.tick()
                cycles += 1
            got.append((ctx.get(dut.inv), cycles))
            await ctx.tick()

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    for v, (inv, cycles) in zip(vals, got):
        r = max(int(im.isqrt(np.array([v]))[0]), 1)
        want = min(((1 << 36) + (r >> 1)) // r, (1 << 24) - 1)
        assert inv == want, f"S2={v}: inv {inv}, want {want} (GPT2ACCEL_SEED={seed})"
        assert cycles == RowRoot.period - 1


def test_quantised_model_layernorms(seed):
    """ln_1, ln_2 and ln_f of a quantised synthetic GPT-2 (outlier channels,
    E = 48) on their real residual inputs, three groups back to back on one
    unit, with stalls on every port."""
    q, seen = quant_model()
    groups = [LayerNormGroup.from_quant(seen[("embed", None)][:8], q.blocks[0].ln_1),
              LayerNormGroup.from_quant(seen[("resid_mid", 1)][8:16], q.blocks[1].ln_2),
              LayerNormGroup.from_quant(seen[("resid", 1)][16:24], q.ln_f)]
    ys, _ = run_layernorm(groups, lanes=4, in_bits=q.resid_bits, max_e=64, seed=seed,
                          stall=0.3)
    _check(groups, ys, q.resid_bits, seed, "quantised model")
    # and the unit's output is what the model itself computed
    np.testing.assert_array_equal(ys[0], seen[("ln_1", 0)][:8])


@pytest.mark.parametrize("lanes,n,bits,max_e", [
    (1, 5, 16, 8),       # one lane
    (4, 13, 24, 16),     # N not a multiple of lanes, R = 24
    (3, 1, 12, 3),       # a single channel: every row is constant
    (2, 16, 32, 16),     # N = max_e, the widest residual
], ids=["l1-n5-r16", "l4-n13-r24", "l3-n1-r12", "l2-n16-r32"])
def test_extremes_with_stalls(lanes, n, bits, max_e, seed):
    """Corner-case rows (constant, max span, outlier, tiny spread, k at the
    k_min floor) under random and typical parameters, groups back to back."""
    rng = np.random.default_rng([seed, lanes, n, bits])
    groups = []
    for kind in ("random", "typical", "random"):
        gamma, beta, out_shift, eps_m, eps_e = layernorm_params(rng, n, kind)
        x = layernorm_rows(rng, n, bits, im.ln_k_min(eps_e))
        groups.append(LayerNormGroup(x, gamma, beta, out_shift, eps_m, eps_e))
    # parameter extremes: gamma -2^15 / beta at the 48-bit limits, out_shift 1 and 47
    x = layernorm_rows(rng, n, bits)
    groups.append(LayerNormGroup(x, np.full(n, -(1 << 15)), np.full(n, (1 << 47) - 1),
                                 47, (1 << 16) - 1, 200))
    groups.append(LayerNormGroup(x, np.full(n, (1 << 15) - 1), np.full(n, -(1 << 47) + 1),
                                 1, 1 << 15, -200))
    ys, _ = run_layernorm(groups, lanes=lanes, in_bits=bits, max_e=max_e, seed=seed, stall=0.3)
    _check(groups, ys, bits, seed, f"lanes={lanes} R={bits}")


def test_e1024(seed):
    """GPT-2-medium width: E = max_e = 1024, 16 lanes, R = 20, stalls."""
    rng = np.random.default_rng([seed, 1024])
    n, bits = 1024, 20
    x = layernorm_rows(rng, n, bits)[[0, 4, 7, 1]]
    gamma, beta, out_shift, eps_m, eps_e = layernorm_params(rng, n, "typical")
    groups = [LayerNormGroup(x, gamma, beta, out_shift, eps_m, eps_e)]
    ys, _ = run_layernorm(groups, lanes=16, in_bits=bits, max_e=1024, seed=seed, stall=0.2)
    _check(groups, ys, bits, seed, "E=1024")


@pytest.mark.parametrize("lanes,n,rows,banks", [(4, 13, 4, 3), (2, 64, 6, 3), (1, 40, 5, 3),
                                               (8, 8, 3, 3), (1, 28, 5, 3), (1, 40, 5, 2),
                                               (2, 16, 7, 4), (1, 48, 4, 3)])
def test_cycles_match_model(lanes, n, rows, banks):
    """Stall-free: every input and output beat in the cycle `layernorm_schedule`
    predicts (root-bound short rows and full-rate rows of >= 35 beats)."""
    rng = np.random.default_rng(n)
    g = LayerNormGroup(layernorm_rows(rng, n, 16)[:rows], *layernorm_params(rng, n, "typical"))
    ys, stats = run_layernorm([g], lanes=lanes, in_bits=16, max_e=64, ds_banks=banks)
    _check([g], ys, 16, 0, "timing")
    sched = layernorm_schedule(rows, n, lanes, banks)
    w = -(-n // lanes)
    assert stats[0]["in"] == [c for r in sched for c in r["in"]]
    assert stats[0]["out"] == [c for r in sched for c in r["out"]]
    assert sched[0]["out"][0] - sched[0]["in"][-1] == row_latency(n, lanes) == w + 45
    if n == 64:
        dut = LayerNormUnit(lanes, 16, 64)
        dut._MustUse__silence = True     # only its latency property is used
        assert dut.latency == dut.row_latency(64) == row_latency(64, lanes)
    if layernorm_row_period(n, lanes, banks) == w:   # one beat per cycle on both sides
        assert banks != 3 or w >= 26
        assert stats[0]["out"] == list(range(stats[0]["out"][0], stats[0]["out"][0] + rows * w))
        assert stats[0]["in"] == list(range(stats[0]["in"][0], stats[0]["in"][0] + rows * w))


@pytest.mark.parametrize("params_after", [1, 2])
def test_rows_before_parameters(params_after, seed):
    """Rows taken before gamma/beta (the vector mover sends a LayerNorm's first
    row, then its parameters): bit-exact with stalls on every port over
    groups back to back, and stall-free each beat in the cycle
    `layernorm_schedule` predicts, the first output earlier than with the
    parameters first."""
    rng = np.random.default_rng([seed, params_after])
    groups = []
    for kind in ("random", "typical", "random"):
        gamma, beta, out_shift, eps_m, eps_e = layernorm_params(rng, 13, kind)
        x = layernorm_rows(rng, 13, 16, im.ln_k_min(eps_e))[:3]
        groups.append(LayerNormGroup(x, gamma, beta, out_shift, eps_m, eps_e))
    ys, _ = run_layernorm(groups, lanes=4, in_bits=16, max_e=16, seed=seed, stall=0.3,
                          params_after=params_after)
    _check(groups, ys, 16, seed, f"params after {params_after} rows")
    g = groups[0]
    ys, stats = run_layernorm([g], lanes=4, in_bits=16, max_e=16, params_after=params_after)
    _check([g], ys, 16, seed, "timing")
    sched = layernorm_schedule(3, 13, 4, params_after=params_after)
    assert stats[0]["in"] == [c for r in sched for c in r["in"]]
    assert stats[0]["out"] == [c for r in sched for c in r["out"]]
    assert sched[0]["out"][0] < layernorm_schedule(3, 13, 4)[0]["out"][0]


@pytest.mark.parametrize("params_after", [0, 1, 2])
def test_row_right_after_setup(params_after):
    """A row whose first beat comes the cycle after the setup (the parameters
    after it) masks that beat's lanes by the new n: the row's extremes and most
    of its spread sit in that beat, so a stale mask changes every output."""
    n = 13
    x = np.zeros((2, n), np.int64)
    x[0, :4] = [3000, -3000, 5, 7]
    x[0, 4:] = np.arange(9) - 4
    x[1] = np.arange(n) * 100 - 600
    g = LayerNormGroup(x, np.full(n, 1 << 14), np.zeros(n, np.int64), 33, 1, -20)
    ys, stats = run_layernorm([g], lanes=4, in_bits=16, max_e=16, params_after=params_after)
    assert stats[0]["in"][0] == (1 if params_after else 1 + 4)
    _check([g], ys, 16, 0, f"params after {params_after} rows")


@pytest.mark.parametrize("n,lanes,banks", [(13, 4, 3), (64, 2, 3), (40, 1, 3), (200, 4, 3),
                                           (96, 8, 3), (30, 1, 3), (28, 1, 3), (29, 1, 3),
                                           (40, 1, 2), (64, 1, 2), (20, 1, 4)])
def test_row_period_formula(n, lanes, banks):
    """`layernorm_row_period` is the long-run spacing of the schedule."""
    sched = layernorm_schedule(40, n, lanes, banks)
    starts = [r["out"][0] for r in sched]
    assert Fraction(starts[-1] - starts[-13], 12) == layernorm_row_period(n, lanes, banks)
    assert Fraction(starts[-7] - starts[-19], 12) == layernorm_row_period(n, lanes, banks)


def test_rejects_bad_row_length(seed):
    """A setup with n = 0 or n > max_e raises `error` and no row is taken; a
    valid setup afterwards recovers. Python-side checks refuse the same."""
    with pytest.raises(ValueError, match="max_e"):
        LayerNormUnit(4, 16, 4096)
    with pytest.raises(ValueError, match="max_e"):
        run_layernorm([LayerNormGroup(np.zeros((1, 9)), np.zeros(9), np.zeros(9), 30, 1 << 15,
                                      0)], lanes=4, max_e=8)
    rng = np.random.default_rng([seed, 7])
    dut = LayerNormUnit(2, 16, 8)
    x = rng.integers(-1000, 1000, 8)
    gamma, beta, out_shift, eps_m, eps_e = layernorm_params(rng, 8, "typical")
    want = im.layernorm(x[None], gamma, beta, out_shift, eps_m, eps_e, 16)[0]
    log = []

    async def bench(ctx):
        for bad_n in (9, 0):
            ctx.set(dut.setup.payload, {"n": bad_n, "out_shift": 30, "eps_m": 1 << 15,
                                        "eps_e": 0})
            ctx.set(dut.setup.valid, 1)
            await ctx.tick()
            ctx.set(dut.setup.valid, 0)
            ctx.set(dut.inp.payload, {"x": [1, 2], "last": 0})
            ctx.set(dut.inp.valid, 1)
            ctx.set(dut.param.valid, 1)
            for _ in range(20):
                await ctx.tick()
                log.append((bad_n, ctx.get(dut.error), ctx.get(dut.inp.ready),
                            ctx.get(dut.param.ready)))
            ctx.set(dut.inp.valid, 0)
            ctx.set(dut.param.valid, 0)
        script = [(dut.setup, {"n": 8, "out_shift": out_shift, "eps_m": eps_m, "eps_e": eps_e})]
        script += [(dut.param, {"gamma": [int(v) for v in gamma[i:i + 2]],
                                "beta": [int(v) for v in beta[i:i + 2]]}) for i in range(0, 8, 2)]
        script += [(dut.inp, {"x": [int(v) for v in x[i:i + 2]], "last": 0})
                   for i in range(0, 8, 2)]
        await ScriptSource(script, None).run(ctx)

    got = []

    async def sink(ctx):
        ctx.set(dut.out.ready, 1)
        for _ in range(300):
            if len(got) == 8:
                break
            _, _, valid, payload = await ctx.tick().sample(dut.out.valid, dut.out.payload)
            if valid:
                got.extend(int(v) for v in payload.y)
                assert payload.last == (len(got) == 8)

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench, background=True)
    sim.add_testbench(sink)
    sim.run()
    sim_done = len(got)
    assert all(err == 1 and not ready and not pready for _, err, ready, pready in log), log
    assert sim_done == 8 and got == list(want), f"{got} != {list(want)} (GPT2ACCEL_SEED={seed})"


@pytest.mark.slow
@pytest.mark.parametrize("case", range(12))
def test_random_sweep(case, seed):
    """Random lanes, N (up to max_e), R, parameters and row kinds; heavy stalls."""
    rng = np.random.default_rng([seed, case, 99])
    lanes = int(rng.integers(1, 9))
    max_e = int(rng.integers(1, 200))
    bits = int(rng.integers(9, 33))
    groups = []
    for _ in range(3):
        n = int(rng.integers(1, max_e + 1))
        params = layernorm_params(rng, n, "random" if rng.random() < 0.5 else "typical")
        groups.append(LayerNormGroup(layernorm_rows(rng, n, bits, im.ln_k_min(params[4])),
                                     *params))
    ys, _ = run_layernorm(groups, lanes=lanes, in_bits=bits, max_e=max_e, seed=seed + case,
                          stall=float(rng.choice([0.1, 0.5, 0.8])),
                          ds_banks=int(rng.integers(2, 5)))
    _check(groups, ys, bits, seed, f"sweep case {case} lanes={lanes} max_e={max_e} R={bits}")


@pytest.mark.parametrize("lanes,n,bits", [(4, 13, 16), (2, 6, 24), (3, 9, 12)],
                         ids=["l4-n13-r16", "l2-n6-r24", "l3-n9-r12"])
def test_knife_edge(lanes, n, bits, seed):
    """Every channel's z = d_s/r is checked exactly, not only after the int8
    rounding: beta puts each output on a rounding threshold (`knife_edge_beta`),
    so a z off by one flips it. One row per group, covering the row kinds, the
    k_min floor (including k_min above R + 12, where every d_s is 0), the eps
    exponent's extremes, and (R >= 15) the Pell row where ε's rounding shows."""
    rng = np.random.default_rng([seed, lanes, n, bits, 5])
    groups = []
    eps_es = [int(rng.integers(-200, 201)), int(rng.integers(0, 40)), 2 * bits + 31,
              2 * bits + 55, 200, -200, 2 * bits + 2 * int(rng.integers(-12, 1)) + 31]
    cases = []
    for eps_e in eps_es:
        rows = layernorm_rows(rng, n, bits, im.ln_k_min(eps_e))
        for i in rng.choice(len(rows), 3, replace=False):
            cases.append((rows[i:i + 1], eps_e))
    if bits >= 15:
        cases += [(pell_row(bits), int(e)) for e in (-17, -18, -30, -200)]
    for x, eps_e in cases:
        eps_m = int(rng.integers(1 << 15, 1 << 16))
        gamma = extremes(rng, x.shape[1], -(1 << 15), (1 << 15) - 1)
        gamma[gamma == 0] = 1
        out_shift = int(rng.integers(1, 48))
        beta = knife_edge_beta(layernorm_z(x, eps_m, eps_e)[0], gamma, out_shift)
        g = LayerNormGroup(x, gamma, beta, out_shift, eps_m, eps_e)
        want = im.layernorm(x, gamma, beta, out_shift, eps_m, eps_e, bits)[0]
        assert list(want) == [1 - i % 2 for i in range(x.shape[1])], "knife edge not reached"
        groups.append(g)
    ys, _ = run_layernorm(groups, lanes=lanes, in_bits=bits, max_e=16, seed=seed, stall=0.2)
    _check(groups, ys, bits, seed, "knife edge")
