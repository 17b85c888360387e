"""The normaliser against `intmodel.attention_normalize`, and its divider alone."""
import random

import numpy as np
import pytest
from amaranth.sim import Simulator

from gpt2accel.model import intmodel as im
from gpt2accel.model import quant
from gpt2accel.rtl.attention_config import AttentionConfig
from gpt2accel.rtl.config import EngineConfig
from gpt2accel.rtl.normalise import Normaliser, Reciprocal
from gpt2accel.sim.harness.attention import StreamSink, StreamSource, run_normaliser

from attention_cases import KINDS, head_case


def _recip_ref(l_sum):
    """§4.5 inv(L), written out in Python integers."""
    l_sum = max(l_sum, 1)
    e = l_sum.bit_length()
    return ((1 << (e + 14)) + (l_sum >> 1)) // l_sum, e + 14 - 8


def test_reciprocal_exhaustive_edges(seed):
    cfg = AttentionConfig()
    rng = random.Random(seed)
    sums = [0, 1, 2, 3, 128, 255, 2**18 - 1, 255 * 1024, 2**31 - 1, 2**32 - 1]
    sums += [(1 << k) + d for k in range(1, 32) for d in (-1, 0, 1)]
    sums += [rng.randrange(1, 1 << rng.randrange(1, 33)) for _ in range(60)]
    dut = Reciprocal(cfg)
    src = StreamSource(dut.inp, [{"l_sum": x, "out_mult": 0, "out_shift": 0} for x in sums],
                       random.Random(seed), 0.3)
    sink = StreamSink(dut.out, len(sums), random.Random(seed + 1),
                      lambda p: (int(p.inv), int(p.shift)), 0.3)
    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(src.run, background=True)
    sim.add_testbench(sink.run)
    sim.run()
    for x, got in zip(sums, sink.beats):
        assert got == _recip_ref(x), f"L={x}: got {got}, want {_recip_ref(x)} (GPT2ACCEL_SEED={seed})"
        if x < 2**31:
            assert 2**14 <= got[0] <= 2**15


@pytest.mark.parametrize("norm_lanes,d", [(1, 8), (4, 16), (3, 6)])
def test_normaliser_matches_golden_with_stalls(norm_lanes, d, seed):
    cfg = AttentionConfig(engine=EngineConfig(rows=2, cols=2), norm_lanes=norm_lanes)
    rng = np.random.default_rng([seed, norm_lanes, d])
    table = quant.exp2_table(6)
    o_rows, l_rows = [], []
    # realistic rows: O and L of real heads (every test kind)
    for kind in KINDS:
        tq, tk = 3, int(rng.integers(1, 20))
        q, k, v, mult, shift = head_case(rng, kind, d, tq, tk)
        t = im.attention_scores(q, k, mult, shift)
        o, l_sum, _ = im.softmax_online(t, v, 4, table, 6, tk - tq)
        o_rows.append(o)
        l_rows.append(l_sum)
    # extremes: O at the int32 limits with the smallest L that keeps avg in int32, L = 0
    o_ext = np.array([[2**31 - 1] * d, [-2**31] * d, [2**23 - 1] * d, [-2**23] * d,
                      rng.integers(-2**31, 2**31, d)])
    l_ext = np.array([256, 256, 0, 1, 2**31 - 1])
    o_rows.append(o_ext)
    l_rows.append(l_ext)
    o = np.concatenate(o_rows)
    l_sum = np.concatenate(l_rows)
    for out_mult, out_shift in [(int(rng.integers(0, 2**15)), int(rng.integers(0, 48))),
                                (2**15 - 1, 0), (1, 47), (int(rng.integers(2**13, 2**15)), 15)]:
        y, _ = run_normaliser(cfg, o, l_sum, out_mult, out_shift, seed=seed, stall=0.3)
        want = im.attention_normalize(o, l_sum, out_mult, out_shift)
        np.testing.assert_array_equal(
            y, want, err_msg=f"mult={out_mult} shift={out_shift} (GPT2ACCEL_SEED={seed})")


def test_normaliser_timing():
    """Stall-free: the divider hides behind rows of D >= 11 beats; each beat
    leaves `latency` cycles after it entered."""
    cfg = AttentionConfig()
    d, n = 24, 5
    rng = np.random.default_rng(3)
    o = rng.integers(-2**20, 2**20, (n, d))
    l_sum = rng.integers(2**12, 2**18, n)
    y, st = run_normaliser(cfg, o, l_sum, 12345, 20)
    np.testing.assert_array_equal(y, im.attention_normalize(o, l_sum, 12345, 20))
    first = st["o_cycles"][0]
    assert first == Reciprocal.latency + 2  # sum taken at 0, through the queue
    assert st["o_cycles"] == list(range(first, first + n * d))
    assert st["out_cycles"] == [c + Normaliser.latency for c in st["o_cycles"]]
