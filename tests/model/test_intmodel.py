"""Per-operation tests of the integer golden model (gpt2accel.model.intmodel).

Each operation is compared with a float64 reference within the bound that
docs/numerics.md states for it, on random shapes and values that include
the extremes of every input width.
"""
import math

import numpy as np
import pytest

from gpt2accel.model import intmodel as im
from gpt2accel.model import quant as Q
from gpt2accel.model.gpt2 import causal_attention, softmax


def _gelu64(x):
    return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))


# ----------------------------------------------------------------- square root, bit length

def test_isqrt_matches_math_isqrt_on_edges_and_random():
    rng = np.random.default_rng(0)
    top = (1 << 48) - 1
    vals = [0, 1, 2, 3, 4, 15, 16, 17, top, top - 1, (1 << 47), (1 << 24) ** 2 - 1,
            ((1 << 24) - 1) ** 2, ((1 << 24) - 1) ** 2 - 1]
    vals += [int(v) for v in rng.integers(0, top, 2000, dtype=np.int64)]
    vals += [int(v) ** 2 + d for v in rng.integers(1, 1 << 24, 200) for d in (-1, 0, 1)
             if 0 <= int(v) ** 2 + d <= top]
    got = im.isqrt(np.array(vals, dtype=np.int64))
    assert got.tolist() == [math.isqrt(v) for v in vals]


def test_isqrt_rejects_out_of_range_and_floats():
    with pytest.raises(ValueError, match="outside"):
        im.isqrt(np.array([1 << 48]))
    with pytest.raises(ValueError, match="outside"):
        im.isqrt(np.array([-1]))
    with pytest.raises(TypeError, match="integer"):
        im.isqrt(np.array([4.0]))


def test_bit_length():
    vals = [0, 1, 2, 3, 255, 256, (1 << 52) - 1, 1 << 52]
    assert im.bit_length(np.array(vals)).tolist() == [v.bit_length() for v in vals]


# ----------------------------------------------------------------- requantiser derivation

def test_mult_shift_normalised_and_accurate():
    rng = np.random.default_rng(1)
    real = np.concatenate([10 ** rng.uniform(-9, 4.4, 5000), [2.0 ** -33, 1.0, 0.5, 32767.0]])
    m, s = Q.mult_shift(real)
    assert m.dtype == np.int32 and s.dtype == np.int32
    assert np.all((s >= 0) & (s <= 47)) and np.all((m >= 0) & (m < 1 << 15))
    normal = (real >= 2.0 ** -33) & (real < 2.0 ** 14)
    assert np.all((m[normal] >= 1 << 14))
    approx = m * np.exp2(-s.astype(np.float64))
    assert np.all(np.abs(approx[normal] / real[normal] - 1) <= 2.0 ** -15)


def test_mult_shift_edges():
    m, s = Q.mult_shift(np.array([0.0, 2.0 ** -60]))
    assert m.tolist() == [0, 0] and s.tolist() == [0, 47]
    with pytest.raises(ValueError, match="does not fit"):
        Q.mult_shift(40000.0)
    with pytest.raises(ValueError, match="finite"):
        Q.mult_shift(-1.0)


def test_weight_quantise_dequantise_round_trip():
    rng = np.random.default_rng(2)
    w = rng.standard_t(3, (37, 19)).astype(np.float32)
    w[:, 3] = 0.0  # an all-zero column must not divide by zero
    q, s = Q.quantize_weight(w, axis=0)
    assert q.dtype == np.int8 and q.min() >= -127
    assert np.all(np.abs(q * s[None, :] - w) <= s[None, :] / 2 + 1e-7)
    assert np.all(np.abs(q).max(axis=0)[np.abs(w).max(axis=0) > 0] == 127)
    qt, st = Q.quantize_weight(w.T, axis=1)
    assert np.array_equal(qt, q.T) and np.allclose(st, s)


def test_bias_clipped_to_2_30():
    b = Q.quantize_bias(np.array([1e9, -1e9, 0.3]), 1e-3, np.array([1e-3, 1e-3, 1e-3]))
    assert b.tolist() == [1 << 30, -(1 << 30), 300000]


# ----------------------------------------------------------------- linear, residual, embed

def test_linear_extremes_saturate_and_wrap():
    k = 256
    a = np.full((2, k), -128, dtype=np.int8)
    a[1] = 127
    w = np.full((k, 3), -128, dtype=np.int8)
    bias = np.array([0, (1 << 31) - 1, -(1 << 31)], dtype=np.int64)
    acc = im.intops.matmul_acc(a, w, bias)
    raw = np.array([[k * 16384 + b for b in bias], [-k * 127 * 128 + b for b in bias]])
    assert np.array_equal(acc, im.intops.wrap(raw, 32))
    out = im.matmul_requant(a, w, bias, np.array([1 << 14] * 3), np.array([10] * 3))
    assert out.dtype == np.int8
    assert out[0, 0] == 127 and out[1, 0] == -128  # saturated at the int8 edges
    out16 = im.matmul_requant(a, w, None, 1 << 14, 14, out_bits=16)
    assert out16[0, 0] == 32767 and out16[1, 0] == -32768


@pytest.mark.parametrize("bits", [12, 16, 24])
def test_residual_add_saturates(bits):
    hi, lo = (1 << (bits - 1)) - 1, -(1 << (bits - 1))
    x = np.array([hi, lo, hi, 5, lo])
    y = np.array([1, -1, lo, -7, hi])
    assert im.residual_add(x, y, bits).tolist() == [hi, lo, -1, -2, -1]
    with pytest.raises(ValueError, match="outside"):
        im.residual_add(np.array([hi + 1]), np.array([0]), bits)


def test_embed_matches_float_within_half_lsb():
    rng = np.random.default_rng(3)
    wte_f = rng.normal(0, 0.3, (50, 16))
    wpe_f = rng.normal(0, 0.05, (8, 16))
    wte, s_wte = Q.quantize_weight(wte_f, axis=1)
    wpe, s_wpe = Q.quantize_weight(wpe_f, axis=1)
    s_res = 4.0 / 32767
    tm, ts = Q.mult_shift(s_wte / s_res / 2 ** im.EMBED_PRESHIFT)
    pm, ps = Q.mult_shift(s_wpe / s_res / 2 ** im.EMBED_PRESHIFT)
    ids = rng.integers(0, 50, 8)
    x = im.embed(ids, np.arange(8), wte, tm, ts, wpe, pm, ps, 16)
    ref = (wte[ids] * s_wte[ids, None] + wpe[:8] * s_wpe[:8, None]) / s_res
    # two requantisations, each within 0.5 LSB (+ the 2^-15 multiplier error)
    assert np.abs(x - ref).max() <= 1.0 + 2 ** -15 * np.abs(ref).max()
    with pytest.raises(ValueError, match="outside"):
        im.embed(np.array([50]), np.array([0]), wte, tm, ts, wpe, pm, ps, 16)


# ----------------------------------------------------------------- GELU

@pytest.mark.parametrize("s_in,s_out", [(0.05, 0.04), (0.01, 0.002), (0.3, 0.3)])
def test_gelu_table_within_half_lsb_for_every_input(s_in, s_out):
    table = Q.gelu_table(s_in, s_out)
    x = np.arange(-128, 128, dtype=np.int8)
    y = im.gelu(x, table)
    ref = np.clip(_gelu64(x * s_in) / s_out, -128, 127)
    assert y.dtype == np.int8
    assert np.abs(y - ref).max() <= 0.5 + 1e-9


def test_gelu_rejects_wide_input():
    with pytest.raises(ValueError, match="outside"):
        im.gelu(np.array([128]), Q.gelu_table(0.1, 0.1))


# ----------------------------------------------------------------- LayerNorm

def _ln_ref(x, g, b, eps, s_in, s_out):
    x = x * s_in
    mu = x.mean(axis=1, keepdims=True)
    var = ((x - mu) ** 2).mean(axis=1, keepdims=True)
    return np.clip(((x - mu) / np.sqrt(var + eps) * g + b) / s_out, -128, 127)


def test_layernorm_within_bound_random_widths_and_extremes():
    """§6 bound: |int - float64| <= 0.6 LSB of the output (0.5 is the final rounding)."""
    rng = np.random.default_rng(4)
    for _ in range(60):
        bits = int(rng.choice([12, 16, 20, 24]))
        n = int(rng.choice([2, 5, 64, 768]))
        lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
        mag = int(rng.integers(1, bits))
        x = rng.integers(-(1 << (mag - 1)), max(1 << (mag - 1), 1), (4, n))
        x[0, :2] = [lo, hi]           # widest possible span
        x[1] = hi                     # constant row: output must be beta
        x[1, 0] = rng.integers(lo, hi) if n > 2 else hi
        s_in = 10 ** rng.uniform(-4, 0)
        g = rng.normal(1, 0.3, n)
        b = rng.normal(0, 0.3, n)
        ref0 = _ln_ref(x, g, b, 1e-5, s_in, 1.0)
        s_out = np.abs(ref0).max() / 127 * rng.uniform(0.5, 1.2)
        p = Q.layernorm_params(g, b, 1e-5, s_in, s_out)
        y = im.layernorm(x, p.gamma, p.beta, p.out_shift, p.eps_m, p.eps_e, bits)
        assert y.dtype == np.int8
        assert np.abs(y - _ln_ref(x, g, b, 1e-5, s_in, s_out)).max() <= 0.6


def test_layernorm_constant_row_gives_beta():
    n = 32
    g = np.linspace(0.5, 2, n)
    b = np.linspace(-0.5, 0.5, n)
    p = Q.layernorm_params(g, b, 1e-5, 1e-3, 0.01)
    for value in (0, 7, -32768, 32767):
        y = im.layernorm(np.full((1, n), value), p.gamma, p.beta, p.out_shift,
                         p.eps_m, p.eps_e, 16)
        assert np.abs(y[0] - np.clip(b / 0.01, -128, 127)).max() <= 0.5 + 1e-9


def test_layernorm_rejects_input_wider_than_stated():
    p = Q.layernorm_params(np.ones(4), np.zeros(4), 1e-5, 1e-3, 0.01)
    with pytest.raises(ValueError, match="outside"):
        im.layernorm(np.array([[40000, 0, 0, 0]]), p.gamma, p.beta, p.out_shift,
                     p.eps_m, p.eps_e, 16)


# ----------------------------------------------------------------- softmax / attention

@pytest.mark.parametrize("frac_bits", [4, 6])
def test_exp2_neg_against_float(frac_bits):
    table = Q.exp2_table(frac_bits)
    assert table.dtype == np.uint8 and table[0] == 255 and table.size == 1 << frac_bits
    d = np.arange(0, 12 << frac_bits)
    p = im.exp2_neg(d, table, frac_bits)
    ref = 255 * np.exp2(-d / (1 << frac_bits))
    # table rounding (0.5, scaled down by the shift) + shift rounding (0.5)
    assert p.dtype == np.uint8 and np.abs(p - ref).max() <= 1.0
    assert np.all(p[d >= (9 << frac_bits)] == 0)


def _online_probs(t, tile, frac_bits, offset=0):
    tk = t.shape[1]
    v = (127 * np.eye(tk)).astype(np.int8)
    o, l_sum, _ = im.softmax_online(t, v, tile, Q.exp2_table(frac_bits), frac_bits, offset)
    return o / l_sum[:, None] / 127.0, o, l_sum


def _masked_softmax_ref(t, frac_bits, offset=0):
    tq, tk = t.shape
    mask = np.arange(tk)[None, :] > offset + np.arange(tq)[:, None]
    return softmax(np.where(mask, -np.inf, t / 2.0 ** frac_bits * math.log(2)))


def test_online_softmax_matches_float_softmax():
    """§4 bound: each probability within 0.02 of float64 softmax, any tile size."""
    rng = np.random.default_rng(5)
    for _ in range(40):
        f = int(rng.choice([4, 5, 6, 7]))
        tk = int(rng.integers(1, 90))
        lo, hi = -(1 << (im.SCORE_BITS - 1)), (1 << (im.SCORE_BITS - 1)) - 1
        t = rng.integers(-(30 << f), 30 << f, (tk, tk))
        t[0, 0] = lo if rng.random() < 0.5 else hi
        tile = int(rng.integers(1, tk + 2))
        p, o, l_sum = _online_probs(t, tile, f)
        assert np.abs(p - _masked_softmax_ref(t, f)).max() <= 0.02
        assert np.all(np.abs(o) < 1 << 31) and np.all(l_sum >= 128)


def test_online_softmax_tile_independent_when_row_fits_one_tile():
    rng = np.random.default_rng(6)
    t = rng.integers(-400, 400, (20, 37))
    v = rng.integers(-128, 128, (37, 8)).astype(np.int8)
    results = [im.softmax_online(t, v, tile, Q.exp2_table(6), 6, offset=17)
               for tile in (37, 38, 64, 999)]
    for o, l_sum, m in results[1:]:
        assert np.array_equal(o, results[0][0]) and np.array_equal(l_sum, results[0][1])


def test_online_softmax_tile_dependence_is_bounded():
    """With several tiles the rounding of the renormalising shifts changes bits
    (documented in §4.4) but stays within the float bound."""
    rng = np.random.default_rng(7)
    t = np.sort(rng.integers(-2000, 2000, (64, 64)), axis=1)  # rising max: many rescales
    p1, o1, _ = _online_probs(t, 64, 6)
    p8, o8, _ = _online_probs(t, 8, 6)
    assert not np.array_equal(o1, o8)
    ref = _masked_softmax_ref(t, 6)
    assert np.abs(p1 - ref).max() <= 0.02 and np.abs(p8 - ref).max() <= 0.02


def test_online_softmax_offset_is_decode_of_full():
    """A row computed alone at its position equals the same row of the full matrix."""
    rng = np.random.default_rng(8)
    t = rng.integers(-900, 900, (30, 30))
    v = rng.integers(-128, 128, (30, 16)).astype(np.int8)
    full = im.softmax_online(t, v, 7, Q.exp2_table(6), 6)
    for i in (0, 6, 7, 29):
        row = im.softmax_online(t[i:i + 1], v, 7, Q.exp2_table(6), 6, offset=i)
        assert np.array_equal(row[0][0], full[0][i]) and row[1][0] == full[1][i]


def test_attention_normalize_saturates_and_bounds():
    l_sum = np.array([128, 255 * 1024, 300, 300])
    o = np.array([[127 * 128], [-128 * 255 * 1024], [127 * 300], [-128 * 300]])
    m, s = Q.mult_shift(1.0 / 2 ** im.ATTN_AVG_FRAC)
    out = im.attention_normalize(o, l_sum, m, s)
    assert out[:, 0].tolist() == [127, -128, 127, -128]
    m2, s2 = Q.mult_shift(4.0 / 2 ** im.ATTN_AVG_FRAC)  # output 4x finer: saturates
    assert im.attention_normalize(o, l_sum, m2, s2)[:, 0].tolist() == [127, -128, 127, -128]


def test_attention_head_against_float():
    """§4 end to end: int8 head output within 2.5% of max|V| (+1 LSB) of the float head."""
    rng = np.random.default_rng(9)
    for _ in range(10):
        d = int(rng.choice([8, 64]))
        tq = int(rng.integers(1, 40))
        q = rng.integers(-128, 128, (tq, d)).astype(np.int8)
        k = rng.integers(-128, 128, (tq, d)).astype(np.int8)
        v = rng.integers(-128, 128, (tq, d)).astype(np.int8)
        q[0, 0], k[0, 0], v[0, 0] = -128, -128, 127
        s_q, s_k, s_v = 0.05, 0.05, 0.02
        f = 6
        sm, ss = Q.mult_shift(s_q * s_k / math.sqrt(d) / math.log(2) * 2 ** f)
        s_out = s_v  # attention output can reach max|V|
        om, osh = Q.mult_shift(s_v / s_out / 2 ** im.ATTN_AVG_FRAC)
        out = im.attention_head(q, k, v, int(sm), int(ss), int(om), int(osh),
                                int(rng.integers(1, 64)), Q.exp2_table(f), f)
        ref = causal_attention(q * s_q, k * s_k, v * s_v) / s_out
        assert out.dtype == np.int8
        assert np.abs(out - ref).max() <= 0.025 * 128 + 1


def test_softmax_online_rejects_bad_arguments():
    t = np.zeros((2, 2), dtype=np.int64)
    v = np.zeros((2, 4), dtype=np.int8)
    with pytest.raises(ValueError, match="tile"):
        im.softmax_online(t, v, 0, Q.exp2_table(6), 6)
    with pytest.raises(ValueError, match="shapes"):
        im.softmax_online(t, v[:1], 4, Q.exp2_table(6), 6)
    with pytest.raises(ValueError, match="outside"):
        im.softmax_online(t + (1 << 23), v, 4, Q.exp2_table(6), 6)
    with pytest.raises(TypeError, match="integer"):
        im.softmax_online(t.astype(np.float32), v, 4, Q.exp2_table(6), 6)


# ----------------------------------------------------------------- LM head

def test_lm_head_against_float():
    rng = np.random.default_rng(10)
    wte_f = rng.normal(0, 0.2, (40, 32))
    wte, s_wte = Q.quantize_weight(wte_f, axis=1)
    x = rng.integers(-128, 128, (5, 32)).astype(np.int8)
    s_x = 0.03
    ref = (x * s_x) @ (wte * s_wte[:, None]).T
    s_logit = 2 * np.abs(ref).max() / 32767
    m, s = Q.mult_shift(s_x * s_wte / s_logit)
    logits = im.lm_head(x, wte, m, s, 16)
    assert np.abs(logits - ref / s_logit).max() <= 0.5 + 2 ** -15 * 32767


@pytest.mark.parametrize("s_in", [1e-7, 1e-2, 3.0])
def test_layernorm_eps_dominated_rows(s_in):
    """Rows whose variance is comparable to or far below eps (ε saturation path, §6.3)."""
    n = 64
    rng = np.random.default_rng(11)
    g = rng.normal(1, 0.2, n)
    b = rng.normal(0, 0.2, n)
    x = np.zeros((3, n), dtype=np.int64)
    x[0, 0] = 1                                # span of one LSB
    x[1] = rng.integers(-3, 4, n)
    x[2] = rng.integers(-30000, 30000, n)
    s_out = 0.02
    p = Q.layernorm_params(g, b, 1e-5, s_in, s_out)
    y = im.layernorm(x, p.gamma, p.beta, p.out_shift, p.eps_m, p.eps_e, 16)
    assert np.abs(y - _ln_ref(x, g, b, 1e-5, s_in, s_out)).max() <= 0.6
