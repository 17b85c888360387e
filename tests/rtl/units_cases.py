"""Inputs for the vector-unit tests (GELU, residual/embedding adds, LayerNorm).

The tests draw them from the `seed` fixture (tests/conftest.py:
GPT2ACCEL_SEED replays a run).
"""
import functools

import numpy as np

from gpt2accel.model import intmodel as im
from gpt2accel.model import intops
from gpt2accel.model import quant as Q
from gpt2accel.model.synthetic import random_gpt2

from attention_cases import extremes

#: geometry of the quantised test model: E = 48 is not a power of two
GEOM = dict(vocab_size=67, n_positions=48, n_embd=48, n_layer=2, n_head=4)


@functools.lru_cache(maxsize=None)
def quant_model(resid_bits=16):
    """(QuantGPT2, {tensor point: (layer, int array)}) of a small synthetic GPT-2 with
    outlier channels, and the integer intermediates of one 24-token forward pass."""
    fmodel = random_gpt2(seed=11, **GEOM)
    rng = np.random.default_rng(12)
    q = Q.QuantGPT2.from_float(fmodel, [rng.integers(0, 67, 32) for _ in range(3)], tile=8,
                               resid_bits=resid_bits)
    seen = {}
    q.forward(rng.integers(0, 67, 24),
              observe=lambda name, layer, x: seen.setdefault((name, layer), np.asarray(x)))
    return q, seen


def layernorm_rows(rng, n, bits, k_min=None):
    """Rows of `bits`-wide residual values covering the §6 corner cases, one of each kind:

    full-range random with extremes; constant rows at 0, the minimum and the
    maximum (span 0: the eps path, inv clamps); alternating min/max (largest
    span); one huge outlier channel among small values; a tiny spread around
    a large offset (k < 0: the left shift); and, if `k_min` is given, a row
    whose span puts k just below k_min (the floor applies).
    """
    lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    rows = [extremes(rng, n, lo, hi),
            np.zeros(n, np.int64), np.full(n, lo), np.full(n, hi),
            np.where(np.arange(n) % 2 == 0, lo, hi),
            rng.integers(-3, 4, n),
            int(rng.integers(lo + 4, hi - 4)) + rng.integers(-2, 3, n)]
    outlier = rng.integers(-8, 9, n)
    outlier[rng.integers(0, n)] = hi if rng.random() < 0.5 else lo
    rows.append(outlier)
    if k_min is not None:
        # span = n * spread with bitlen(span) - 15 around k_min - 1
        want = max(0, min(bits + 10, int(k_min) + 14))
        spread = max(1, min(hi, (1 << want) // max(n, 1)))
        rows.append(np.clip(rng.integers(0, spread + 1, n) + lo // 2, lo, hi))
    return np.array(rows, np.int64)


def layernorm_params(rng, n, kind="random"):
    """(gamma, beta, out_shift, eps_m, eps_e) inside the §6 ranges the unit must accept.

    random: any int16 gamma (with the extremes), any 48-bit beta, out_shift
    1..47, eps mantissa 2^15..2^16-1, eps exponent -200..200 (the file's range);
    typical: what quantisation produces (|beta| <= 4096 * 2^out_shift,
    out_shift = 22 + fg, eps near N^3 / s_res^2).
    """
    if kind == "random":
        gamma = extremes(rng, n, -(1 << 15), (1 << 15) - 1)
        beta = extremes(rng, n, -(1 << 47) + 1, (1 << 47) - 1, 0.05)
        return (gamma, beta, int(rng.integers(1, 48)), int(rng.integers(1 << 15, 1 << 16)),
                int(rng.integers(-200, 201)))
    out_shift = int(rng.integers(22, 36))
    gamma = rng.integers(-(1 << 14), 1 << 14, n)
    beta = rng.integers(-(1 << (out_shift + 6)), 1 << (out_shift + 6), n)
    return gamma, beta, out_shift, int(rng.integers(1 << 15, 1 << 16)), int(rng.integers(-5, 40))


def layernorm_z(x, eps_m, eps_e):
    """z = d_s / r with 22 fraction bits (§6.1-6.5, before gamma/beta), written out
    step by step from numerics.md for the knife-edge tests below."""
    x = np.asarray(x, np.int64)
    n = x.shape[1]
    d = n * x - x.sum(axis=1, keepdims=True)
    span = n * (x.max(axis=1, keepdims=True) - x.min(axis=1, keepdims=True))
    k = np.maximum(im.bit_length(span) - im.LN_D_BITS, im.ln_k_min(eps_e))
    d_s = np.where(k < 0, d << np.maximum(-k, 0), intops.round_shift(d, np.clip(k, 0, 62)))
    a = eps_e - 2 * k
    eps = np.where(a >= 0, eps_m << np.clip(a, 0, 62),
                   intops.round_shift(eps_m, np.clip(-a, 0, 62)))
    r = np.maximum(im.isqrt((d_s * d_s).sum(axis=1, keepdims=True) + eps), 1)
    inv = np.minimum(((1 << 36) + (r >> 1)) // r, (1 << 24) - 1)
    return intops.round_shift(d_s * inv, 14)


def knife_edge_beta(z_row, gamma, out_shift):
    """beta putting every channel of one row exactly on a rounding threshold of
    the output: z*G + B = 2^(out_shift-1) - (i % 2), so the golden output is
    1, 0, 1, 0, ... and any error of z by one step (times G) flips a channel."""
    half = 1 << (out_shift - 1)
    return half - (np.arange(len(z_row)) % 2) - z_row * gamma


def pell_row(bits):
    """n = 2 row (span 27720, so k = 0) whose sum of squares at k = 0 is
    19601^2 - 1 (= 2 * 13860^2): one unit of ε more or less moves the root,
    so ε's rounding is visible."""
    if bits < 15:
        raise ValueError("the Pell row needs R >= 15")
    return np.array([[-6930, 6930]], np.int64)
