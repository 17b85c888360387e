"""Unit tests of the matmul engine's parts: config, systolic array, requantiser."""
import numpy as np
import pytest
from amaranth.sim import Simulator

from gpt2accel.model.intops import requantize
from gpt2accel.rtl.config import ConfigError, EngineConfig
from gpt2accel.rtl.requant import Requantiser
from gpt2accel.rtl.systolic import SystolicArray


@pytest.mark.parametrize("kwargs,needle", [
    (dict(rows=0), "rows=0"), (dict(cols=65), "cols=65"),
    (dict(cols=3, mem_bytes=8), "multiple of cols"),
    (dict(cols=4, mem_bytes=4), "mem_bytes=4"),
    (dict(acc_bits=40), "acc_bits=40"), (dict(max_k=0), "max_k=0"),
    (dict(rows=2.0), "rows must be an int"),
])
def test_config_rejects(kwargs, needle):
    with pytest.raises(ConfigError, match=needle):
        EngineConfig(**kwargs)


def test_config_layout_figures():
    cfg = EngineConfig(rows=4, cols=4, mem_bytes=16)
    assert cfg.k_per_word == 4
    assert cfg.w_words_per_tile(9) == 3
    assert cfg.param_words_per_tile == 2
    assert cfg.out_segment(False) == (4, 4, 1)
    assert cfg.out_segment(True) == (16, 1, 1)
    assert EngineConfig(rows=4, cols=4, mem_bytes=8).out_segment(True) == (16, 1, 2)
    assert cfg.out_row_words(9, False) == 1 and cfg.out_row_words(9, True) == 3


def _run_array(rows, cols, tiles, gaps, span=SystolicArray.SPAN):
    """Feed tiles (a [rows,K], w [K,cols]) with `gaps[t]` bubbles after tile t;
    return drained rows in output order and the cycle of each."""
    dut = SystolicArray(rows, cols, 9, 8, 32, span=span)
    got = []

    async def bench(ctx):
        cycle = 0

        async def tick():
            nonlocal cycle
            _, _, ov, *out = await ctx.tick().sample(dut.out_valid, *dut.out)
            if ov:
                got.append((cycle, out))
            cycle += 1

        for (a, w), gap in zip(tiles, gaps):
            K = a.shape[1]
            for k in range(K):
                for i in range(rows):
                    ctx.set(dut.a[i], int(a[i, k]))
                for j in range(cols):
                    ctx.set(dut.w[j], int(w[k, j]))
                ctx.set(dut.valid, 1)
                ctx.set(dut.last, k == K - 1)
                await tick()
            ctx.set(dut.valid, 0)
            for _ in range(gap):
                # bubbles carry garbage operands that must be ignored
                ctx.set(dut.a[0], 99)
                await tick()
        for _ in range(rows + cols + 4):
            await tick()

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    return got, dut.latency


@pytest.mark.parametrize("rows,cols,span", [(1, 1, 8), (3, 2, 8), (2, 4, 8), (2, 5, 2),
                                            (3, 7, 3), (5, 3, 2)])
def test_array_back_to_back_tiles(rows, cols, span):
    """Tiles as short as `rows` beats, with and without bubbles, drain intact
    and bottom row first, `latency` cycles after each tile's last beat (runs of
    `span` PEs sharing an operand register, a register between runs)."""
    rng = np.random.default_rng(rows * 10 + cols)
    ks = [rows, rows + 1, 5, rows, 1 if rows == 1 else rows]
    gaps = [0, 2, 0, 1, 0]
    tiles = [(rng.integers(-128, 128, (rows, k)), rng.integers(-128, 128, (k, cols)))
             for k in ks]
    got, latency = _run_array(rows, cols, tiles, gaps, span)
    assert latency == (rows - 1) // span + (cols - 1) // span + 3
    want = [row for a, w in tiles for row in (a @ w)[::-1].tolist()]
    assert [o for _, o in got] == want
    t, first = 0, []
    for k, gap in zip(ks, gaps):
        first.append(t + k - 1 + latency)
        t += k + gap
    assert [c for c, _ in got[::rows]] == first


def test_requantiser_matches_model():
    """Every row requantised as in the model: a requantised row `latency` cycles after
    it entered, a raw one `raw_latency` cycles after (runs of either kind, a raw run
    starting `latency - raw_latency` cycles after the last requantised row)."""
    rng = np.random.default_rng(5)
    lanes, n = 3, 300
    acc = rng.integers(-2**31, 2**31, (n, lanes))
    acc[:20] = rng.choice([-2**31, 2**31 - 1, 0, -1], (20, lanes))
    bias = rng.integers(-2**31, 2**31, (n, lanes))
    mult = rng.integers(0, 2**15, (n, lanes))
    mult[::7] = 2**15 - 1
    shift = rng.integers(0, 48, (n, lanes))
    shift[::5] = rng.choice([0, 1, 46, 47], (len(shift[::5]), lanes))
    dut = Requantiser(lanes)
    assert dut.raw_latency < dut.latency
    # runs of 1..30 rows of one kind, sometimes a bubble inside a run
    raw, at, t = np.zeros(n, bool), [], 0
    while len(at) < n:
        kind, run = bool(rng.random() < 0.4), int(rng.integers(1, 31))
        if kind and at and not raw[len(at) - 1]:
            t += dut.latency - dut.raw_latency
        for _ in range(min(run, n - len(at))):
            raw[len(at)] = kind
            at.append(t)
            t += 1 + int(rng.random() < 0.1)
    want_at = [a + (dut.raw_latency if r else dut.latency) for a, r in zip(at, raw)]
    outs = []

    async def bench(ctx):
        i = 0
        for t in range(at[-1] + dut.latency + 1):
            if i < n and at[i] == t:
                ctx.set(dut.valid, 1)
                ctx.set(dut.raw, bool(raw[i]))
                for j in range(lanes):
                    ctx.set(dut.acc[j], int(acc[i, j]))
                    ctx.set(dut.bias[j], int(bias[i, j]))
                    ctx.set(dut.mult[j], int(mult[i, j]))
                    ctx.set(dut.shift[j], int(shift[i, j]))
                i += 1
            else:
                ctx.set(dut.valid, 0)
            _, _, v, *o = await ctx.tick().sample(dut.out_valid, *dut.out)
            if v:
                outs.append((t, o))

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    assert [t for t, _ in outs] == want_at
    x = (acc + bias + 2**31) % 2**32 - 2**31
    want = np.where(raw[:, None], x, requantize(x, mult, shift))
    np.testing.assert_array_equal(np.array([o for _, o in outs]), want)


def test_processing_element_capture_and_shift():
    """Sum over valid beats only; `last` moves the sum to the shadow and
    restarts; `shift` loads the shadow from above unless a capture wins."""
    from gpt2accel.rtl.systolic import ProcessingElement
    dut = ProcessingElement(9, 8, 32)
    seen = []
    beats = [(3, 4, 1, 0, 0), (-128, -128, 1, 0, 0), (99, 99, 0, 0, 0),   # bubble ignored
             (255, -128, 1, 1, 0), (2, 5, 1, 0, 1), (1, 1, 1, 1, 1)]

    async def bench(ctx):
        ctx.set(dut.sh_in, 777)
        for a, w, v, last, shift in beats + [(0, 0, 0, 0, 0)] * 3:
            ctx.set(dut.a_in, a)
            ctx.set(dut.w_in, w)
            ctx.set(dut.v_in, v)
            ctx.set(dut.l_in, last)
            ctx.set(dut.shift, shift)
            _, _, sh, cap = await ctx.tick().sample(dut.sh, dut.capture)
            seen.append((sh, cap))

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    first = 3 * 4 + 128 * 128 + 255 * -128
    # product registered one cycle, sum registered the next
    assert seen[4] == (0, 1)            # last beat (cycle 3) captures in cycle 4...
    assert seen[5][0] == first          # ...winning over that cycle's shift
    assert seen[6][0] == 777            # cycle 5 shifted sh_in in (no capture)
    assert seen[7] == (2 * 5 + 1, 0)    # second tile captured at the end of cycle 6
