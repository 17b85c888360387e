"""The GELU unit against `intmodel.gelu`: every int8 input, table reloads, stalls, timing."""
import numpy as np
import pytest

from gpt2accel.model import intmodel as im
from gpt2accel.model import quant as Q
from gpt2accel.rtl.gelu import GeluUnit
from gpt2accel.sim.cycles.units import elementwise_out_cycles
from gpt2accel.sim.harness.units import run_gelu

from units_cases import extremes, quant_model


def _all_inputs(rng, n):
    """Every int8 value once (shuffled), then -128/127-heavy random values, as rows of n."""
    x = np.concatenate([rng.permutation(np.arange(-128, 128)), extremes(rng, 4 * n, -128, 127)])
    x = x[:len(x) // n * n]
    return x.reshape(-1, n)


@pytest.mark.parametrize("lanes,n,load_width", [(1, 16, 1), (3, 7, 1), (8, 32, 1), (4, 12, 16),
                                                (6, 10, 24)])
def test_tables_with_reloads_and_stalls(lanes, n, load_width, seed):
    """Three tables in turn (a quantised model's two layers and a random
    one), each loaded through the port mid-stream; the first segment runs on
    the power-on table. Every input value meets every table."""
    rng = np.random.default_rng([seed, lanes])
    q, seen = quant_model()
    init = Q.gelu_table(0.05, 0.02)
    tables = [None, q.blocks[0].gelu_table, q.blocks[1].gelu_table,
              extremes(rng, 256, -128, 127)]
    segments = [(t, _all_inputs(rng, n)) for t in tables]
    # the model's own c_fc outputs through its table
    segments.append((q.blocks[0].gelu_table, seen[("fc", 0)][:4, :n]))
    ys, _ = run_gelu(lanes, segments, seed=seed, stall=0.3, init=init, load_width=load_width)
    current = init
    for i, ((t, x), y) in enumerate(zip(segments, ys)):
        current = current if t is None else t
        want = im.gelu(x, current)
        assert np.array_equal(y, want), f"segment {i}: {np.argwhere(y != want)[:3]} " \
                                        f"(GPT2ACCEL_SEED={seed})"
    np.testing.assert_array_equal(ys[-1], seen[("gelu", 0)][:4, :n])


def test_timing_and_load_priority():
    """Stall-free: one beat per cycle, output `latency` cycles after input; a
    table write holds the input for its cycle and takes effect from the next beat."""
    rng = np.random.default_rng(5)
    x = rng.integers(-128, 128, (6, 8))
    t1, t2 = rng.integers(-128, 128, 256), rng.integers(-128, 128, 256)
    ys, st = run_gelu(4, [(None, x[:3]), (t2, x[3:])], init=t1)
    np.testing.assert_array_equal(ys[0], im.gelu(x[:3], t1))
    np.testing.assert_array_equal(ys[1], im.gelu(x[3:], t2))
    ins = st["in_cycles"]
    assert ins[:6] == list(range(6)) and ins[6:] == list(range(6 + 256, 12 + 256))
    assert st["out_cycles"] == elementwise_out_cycles(GeluUnit, ins) == [c + 1 for c in ins]


def test_rejects_bad_table():
    with pytest.raises(ValueError, match="256"):
        GeluUnit(2, [0] * 255)
    with pytest.raises(ValueError, match="256"):
        GeluUnit(2, [128] * 256)
    with pytest.raises(ValueError, match="lanes"):
        GeluUnit(0)
    with pytest.raises(ValueError, match="load_width"):
        GeluUnit(2, load_width=0)


def test_word_wide_load_takes_one_beat_per_word():
    """16 entries per load beat: the whole table in 16 cycles, then the rows."""
    rng = np.random.default_rng(6)
    x = rng.integers(-128, 128, (2, 8))
    t = rng.integers(-128, 128, 256)
    ys, st = run_gelu(4, [(t, x)], load_width=16)
    np.testing.assert_array_equal(ys[0], im.gelu(x, t))
    assert st["in_cycles"] == list(range(16, 20))


def test_load_holds_input_while_valid():
    """With an input beat and table writes offered together, the input waits
    for the writes and then reads the new entry."""
    from amaranth.sim import Simulator
    dut = GeluUnit(1, [5] * 256)
    log = []

    async def bench(ctx):
        ctx.set(dut.out.ready, 1)
        ctx.set(dut.inp.payload, {"x": [-128], "last": 1})
        ctx.set(dut.inp.valid, 1)
        for addr, value in [(0, 9), (0, 11)]:        # entry of x = -128, written twice
            ctx.set(dut.load.payload, {"addr": addr, "data": value})
            ctx.set(dut.load.valid, 1)
            _, _, in_ready, load_ready = await ctx.tick().sample(dut.inp.ready, dut.load.ready)
            log.append((in_ready, load_ready))
        ctx.set(dut.load.valid, 0)
        _, _, in_ready = await ctx.tick().sample(dut.inp.ready)
        log.append((in_ready, None))
        ctx.set(dut.inp.valid, 0)
        _, _, valid, payload = await ctx.tick().sample(dut.out.valid, dut.out.payload)
        log.append((valid, int(payload.y[0]), int(payload.last)))

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    assert log == [(0, 1), (0, 1), (1, None), (1, 11, 1)]
