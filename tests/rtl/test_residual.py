"""Residual add (`intmodel.residual_add`), requantising residual add (RESADD / REQUANT)
and embedding add (`intmodel.embed`) units, bit for bit, with random stalls; their timing."""
import numpy as np
import pytest

from gpt2accel.model import intmodel as im
from gpt2accel.model import intops
from gpt2accel.rtl.residual import EmbeddingAdd, RequantAdd, ResidualAdd
from gpt2accel.sim.cycles.units import elementwise_out_cycles
from gpt2accel.sim.harness.units import run_embedding, run_requant_add, run_residual

from units_cases import extremes, quant_model


@pytest.mark.parametrize("lanes,n,bits", [(1, 9, 16), (3, 10, 24), (4, 16, 32), (2, 5, 9)])
def test_residual_add_extremes_with_stalls(lanes, n, bits, seed):
    """Extreme-heavy operands (both saturation directions) and the
    quantised model's own residual adds, with stalls on all three streams."""
    rng = np.random.default_rng([seed, lanes, bits])
    lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    a = extremes(rng, (24, n), lo, hi, 0.25)
    b = extremes(rng, (24, n), lo, hi, 0.25)
    a[0], b[0] = hi, hi          # +overflow
    a[1], b[1] = lo, lo          # -overflow
    a[2], b[2] = hi, lo          # exact -1
    if bits == 16:
        q, seen = quant_model()
        a = np.concatenate([a, seen[("resid_mid", 0)][:, :n]])
        b = np.concatenate([b, seen[("fc_proj", 0)][:, :n]])
    out, _ = run_residual(lanes, bits, a, b, seed=seed, stall=0.3)
    want = im.residual_add(a, b, bits)
    assert np.array_equal(out, want), f"{np.argwhere(out != want)[:3]} (GPT2ACCEL_SEED={seed})"
    if bits == 16:
        np.testing.assert_array_equal(out[-24:], seen[("resid", 0)][:, :n])


def _requant_add(a, y, mult, shift, bits):
    """RESADD's rule with the hardware's full 16-bit mult and 6-bit shift fields
    (`intops.requantize` itself refuses mult >= 2^15 and shift > 47)."""
    y = intops.saturate(intops.round_shift(np.asarray(y, np.int64) * mult, shift), bits)
    return intops.saturate(np.asarray(a, np.int64) + y, bits)


@pytest.mark.parametrize("lanes,n,bits", [(1, 9, 16), (2, 7, 12), (3, 6, 16)])
def test_requant_add_extremes_with_stalls(lanes, n, bits, seed):
    """Raw int32 columns at both ends, every mult/shift corner (0, the largest 16-bit
    mult, shift 0 and 63), residual rows at both ends, with stalls on all three
    streams; REQUANT is the a = 0 case."""
    rng = np.random.default_rng([seed, lanes, n, bits])
    rows = 16
    lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    a = extremes(rng, (rows, n), lo, hi, 0.25)
    a[0] = 0
    y = extremes(rng, (rows, n), -(1 << 31), (1 << 31) - 1, 0.25)
    y[1] = rng.integers(-300, 300, n)
    mult = rng.integers(0, 1 << 16, n)
    shift = rng.integers(0, 64, n)
    mult[0], shift[0] = (1 << 16) - 1, 0
    shift[1 % n], shift[2 % n] = 63, 16
    mult[3 % n] = 0
    out, _ = run_requant_add(lanes, bits, a, y, mult, shift, seed=seed, stall=0.3)
    want = _requant_add(a, y, mult, shift, bits)
    assert np.array_equal(out, want), f"{np.argwhere(out != want)[:3]} (GPT2ACCEL_SEED={seed})"


def test_embedding_add_quantised_model(seed):
    """Token + position rows of the quantised model: equals `embed` and the
    model's own embedding output."""
    q, seen = quant_model()
    rng = np.random.default_rng([seed, 3])
    t = 24
    ids = rng.integers(0, q.wte.shape[0], t)
    pos = rng.permutation(q.wpe.shape[0])[:t]
    bits = q.resid_bits
    out, _ = run_embedding(4, bits, q.wte[ids], q.wte_mult[ids], q.wte_shift[ids],
                           q.wpe[pos], q.wpe_mult[pos], q.wpe_shift[pos], seed=seed, stall=0.3)
    want = im.embed(ids, pos, q.wte, q.wte_mult, q.wte_shift, q.wpe, q.wpe_mult, q.wpe_shift,
                    bits)
    assert np.array_equal(out, want), f"{np.argwhere(out != want)[:3]} (GPT2ACCEL_SEED={seed})"


@pytest.mark.parametrize("lanes,n,bits", [(1, 6, 16), (3, 7, 24), (2, 8, 12)])
def test_embedding_add_extremes(lanes, n, bits, seed):
    """int8 rows at -128/127, random requantisers, the largest multiplier with
    shift 0 (saturates), shift 47 (rounds to 0 or +-1)."""
    rng = np.random.default_rng([seed, lanes, n, bits])
    rows = 20
    vocab = extremes(rng, (rows, n), -128, 127, 0.3)
    table_p = extremes(rng, (rows, n), -128, 127, 0.3)
    mult = rng.integers(0, 1 << 15, (2, rows))
    shift = rng.integers(0, 48, (2, rows))
    mult[:, :2], shift[:, :2] = (1 << 15) - 1, 0
    shift[:, 2] = 47
    shift[:, 3:8] = rng.integers(8, 20, (2, 5))
    ids = np.arange(rows)
    out, _ = run_embedding(lanes, bits, vocab, mult[0], shift[0], table_p, mult[1], shift[1],
                           seed=seed, stall=0.3)
    want = im.embed(ids, ids, vocab, mult[0], shift[0], table_p, mult[1], shift[1], bits)
    assert np.array_equal(out, want), f"{np.argwhere(out != want)[:3]} (GPT2ACCEL_SEED={seed})"


def test_timing():
    """Stall-free: one beat per cycle, outputs `latency` cycles after inputs."""
    rng = np.random.default_rng(2)
    a, b = rng.integers(-100, 100, (5, 8)), rng.integers(-100, 100, (5, 8))
    out, st = run_residual(4, 16, a, b)
    np.testing.assert_array_equal(out, im.residual_add(a, b, 16))
    assert st["a_cycles"] == st["b_cycles"] == list(range(10))
    assert st["out_cycles"] == elementwise_out_cycles(ResidualAdd, st["a_cycles"])
    mult, shift = rng.integers(0, 1 << 15, 8), rng.integers(0, 48, 8)
    out, st = run_requant_add(2, 16, a, b * 1000, mult, shift)
    np.testing.assert_array_equal(out, _requant_add(a, b * 1000, mult, shift, 16))
    assert st["a_cycles"] == st["y_cycles"] == list(range(20))
    assert st["out_cycles"] == elementwise_out_cycles(RequantAdd, st["a_cycles"]) \
        == [c + 4 for c in range(20)]
    w = rng.integers(-128, 128, (5, 8))
    mult, shift = np.full(5, 1 << 14), np.full(5, 14)
    out, st = run_embedding(8, 16, w, mult, shift, w, mult, shift)
    np.testing.assert_array_equal(out, im.embed(np.arange(5), np.arange(5), w, mult, shift,
                                                w, mult, shift, 16))
    assert st["tok_cycles"] == list(range(5))
    assert st["out_cycles"] == elementwise_out_cycles(EmbeddingAdd, st["tok_cycles"]) \
        == [c + 4 for c in range(5)]


def test_rejects_bad_widths():
    with pytest.raises(ValueError, match="width"):
        ResidualAdd(2, 1)
    with pytest.raises(ValueError, match="width"):
        RequantAdd(1, 40)
    with pytest.raises(ValueError, match="lanes"):
        EmbeddingAdd(0, 16)
