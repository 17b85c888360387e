"""Integer GPT-2 operations: the bit-exact golden reference for each hardware unit.

Every function here is pure integer NumPy (int64 working precision, values
kept inside the widths `docs/numerics.md` states; where the hardware
saturates or wraps, the function does so explicitly). Section numbers (§N)
refer to `docs/numerics.md`. The parameters these functions take (weights,
multipliers, tables) are produced once, with floats, by `gpt2accel.model.quant`;
nothing here touches a float.

The RTL tests call these functions directly as references, so they take plain
arrays and ints rather than model objects wherever that is practical.
"""
import numpy as np

from . import intops
from .intops import round_shift, saturate

__all__ = [
    "SCORE_BITS", "EXP2_ONE", "EXP2_ZERO_SHIFT", "ATTN_AVG_FRAC", "ATTN_RECIP_FRAC",
    "LN_D_BITS", "LN_ACC_BITS", "LN_RECIP_SHIFT", "LN_RECIP_BITS", "LN_Z_FRAC", "LN_EPS_BITS",
    "EMBED_PRESHIFT", "check_int", "bit_length",
    "matmul_requant", "linear", "residual_add", "embed", "gelu",
    "isqrt", "ln_k_min", "layernorm", "attention_scores", "exp2_neg", "softmax_online",
    "attention_normalize", "attention_head", "attention", "lm_head",
]

#: Width of the base-2 attention logit t (§4.2), saturating.
SCORE_BITS = 24
#: exp2 table value for 2^0: probabilities are unsigned 8-bit, 255 = 1.0 (§4.3).
EXP2_ONE = 255
#: A right shift of 9 or more turns any table entry (<= 255) into 0 (§4.3).
EXP2_ZERO_SHIFT = 9
#: Fractional bits of the per-row weighted average of V before requant (§4.5).
ATTN_AVG_FRAC = 8
#: 1/L is held as round(2^(bitlen(L)+ATTN_RECIP_FRAC) / L), in [2^14, 2^15] (§4.5).
ATTN_RECIP_FRAC = 14
#: LayerNorm: centred values are normalised to this many magnitude bits (§6.2).
LN_D_BITS = 15
#: LayerNorm: width of the unsigned sum-of-squares register (§6.3).
LN_ACC_BITS = 48
#: LayerNorm: the reciprocal of the root is round(2^LN_RECIP_SHIFT / r) (§6.4).
LN_RECIP_SHIFT = 36
#: LayerNorm: ... saturated to this many unsigned bits (§6.4).
LN_RECIP_BITS = 24
#: LayerNorm: fractional bits of the normalised value z (§6.5).
LN_Z_FRAC = 22
#: LayerNorm: eps mantissa width (§6.3).
LN_EPS_BITS = 16
#: Embedding rows are shifted left by this before the requantiser (§7.1).
EMBED_PRESHIFT = 8


def check_int(name, x, lo=None, hi=None, dtype=None):
    """`x` as an int64 array, with a clear error for float input or out-of-range values.

    `dtype` (e.g. np.int8), if given, fixes the range to that dtype's range.
    """
    x = np.asarray(x)
    if x.dtype.kind not in "iu":
        raise TypeError(f"{name} must be an integer array, got dtype {x.dtype}")
    if dtype is not None:
        info = np.iinfo(dtype)
        lo, hi = int(info.min), int(info.max)
    if x.size and ((lo is not None and x.min() < lo) or (hi is not None and x.max() > hi)):
        raise ValueError(f"{name} has values outside [{lo}, {hi}] "
                         f"(min {x.min()}, max {x.max()})")
    return x.astype(np.int64)


def _signed_range(bits):
    return -(1 << (bits - 1)), (1 << (bits - 1)) - 1


def bit_length(x):
    """Elementwise bit length of non-negative ints < 2^53 (bit_length(0) = 0).

    Hardware: a leading-zero counter. frexp is exact here because every
    integer below 2^53 is a float64 exactly.
    """
    x = np.asarray(x, dtype=np.int64)
    if x.size and (x.min() < 0 or x.max() >= (1 << 53)):
        raise ValueError("bit_length takes integers in [0, 2^53)")
    return np.frexp(x.astype(np.float64))[1].astype(np.int64)


# --------------------------------------------------------------------------- §3 linear

def matmul_requant(a, w, bias, mult, shift, *, out_bits=8, a_signed=True):
    """§3.1: intops.matmul_requant (int8 x int8 -> wrap32 + bias -> per-column requant)."""
    return intops.matmul_requant(a, w, bias, mult, shift, out_bits=out_bits, a_signed=a_signed)


def linear(x, q):
    """§3: a quantised Conv1D layer `q` (a `quant.QLinear`) applied to int8 rows `x`."""
    return matmul_requant(x, q.w, q.b, q.mult, q.shift, out_bits=q.out_bits)


def residual_add(x, y, bits):
    """§7.2: saturating add of two `bits`-wide residual-stream values."""
    lo, hi = _signed_range(bits)
    x = check_int("residual x", x, lo, hi)
    y = check_int("residual y", y, lo, hi)
    return saturate(x + y, bits).astype(np.int32)


def embed(ids, positions, wte, wte_mult, wte_shift, wpe, wpe_mult, wpe_shift, bits):
    """§7.1: token + position embedding into the `bits`-wide residual stream.

    Each int8 table row is shifted left by EMBED_PRESHIFT and requantised with
    its row's (mult, shift) into the residual scale; the two are added with
    saturation. Returns [T, E] int32.
    """
    ids = check_int("ids", ids, 0, wte.shape[0] - 1)
    positions = check_int("positions", positions, 0, wpe.shape[0] - 1)
    tok = intops.requantize(check_int("wte", wte[ids], dtype=np.int8) << EMBED_PRESHIFT,
                            np.asarray(wte_mult)[ids][:, None],
                            np.asarray(wte_shift)[ids][:, None], bits)
    pos = intops.requantize(check_int("wpe", wpe[positions], dtype=np.int8) << EMBED_PRESHIFT,
                            np.asarray(wpe_mult)[positions][:, None],
                            np.asarray(wpe_shift)[positions][:, None], bits)
    return residual_add(tok, pos, bits)


# --------------------------------------------------------------------------- §5 GELU

def gelu(x, table):
    """§5: GELU by lookup: table[x + 128] for int8 `x`, `table` 256 x int8."""
    x = check_int("gelu input", x, dtype=np.int8)
    table = check_int("gelu table", table, dtype=np.int8)
    if table.shape != (256,):
        raise ValueError(f"gelu table must have 256 entries, got shape {table.shape}")
    return table[x + 128].astype(np.int8)


# --------------------------------------------------------------------------- §6 LayerNorm

def isqrt(x, bits=LN_ACC_BITS):
    """§6.4: floor(sqrt(x)) for 0 <= x < 2^bits (bits even), digit by digit.

    The restoring square root: one result bit per step, bits/2 steps, using
    only compare, subtract and shifts, so the hardware unit is exactly this loop.
    """
    x = check_int("isqrt input", x, 0, (1 << bits) - 1)
    if bits % 2:
        raise ValueError("isqrt width must be even")
    rem = x.copy()
    root = np.zeros_like(x)
    bit = np.int64(1) << (bits - 2)
    for _ in range(bits // 2):
        trial = root + bit
        take = rem >= trial
        rem = np.where(take, rem - trial, rem)
        root = np.where(take, (root >> 1) + bit, root >> 1)
        bit >>= 2
    return root


def _shift_signed(x, amount):
    """x * 2^amount: exact left shift for amount >= 0, round_shift right otherwise."""
    amount = np.asarray(amount, dtype=np.int64)
    left = np.left_shift(x, np.clip(amount, 0, 62))
    right = round_shift(x, np.clip(-amount, 0, 62))
    return np.where(amount >= 0, left, right)


def ln_k_min(eps_e):
    """§6.2: smallest normalisation shift k = ceil((eps_e - 31) / 2).

    It keeps the scaled epsilon eps_m * 2^(eps_e - 2k) below 2^47.
    """
    return -((31 - int(eps_e)) >> 1)


def layernorm(x, gamma, beta, out_shift, eps_m, eps_e, in_bits):
    """§6: integer LayerNorm of `in_bits`-wide rows `x` [T, N] -> int8 [T, N].

    gamma int16 [N], beta int64 [N] (both in the output's fixed point, see
    §6.5), `out_shift` = LN_Z_FRAC + gamma's fractional bits, and eps =
    eps_m * 2^eps_e in units of the §6.3 sum of squares at shift k = 0.
    """
    lo, hi = _signed_range(in_bits)
    x = check_int("layernorm input", x, lo, hi)
    if x.ndim != 2 or x.shape[1] == 0:
        raise ValueError(f"layernorm input must be [T, N] with N > 0, got {x.shape}")
    gamma = check_int("layernorm gamma", gamma, dtype=np.int16)
    beta = check_int("layernorm beta", beta, -(1 << 47), (1 << 47) - 1)
    n = x.shape[1]
    # §6.1: N*(x - mean) exactly, with no division: d = N*x - sum(x).
    total = x.sum(axis=1, keepdims=True)
    d = n * x - total
    span = n * (x.max(axis=1, keepdims=True) - x.min(axis=1, keepdims=True))
    # §6.2: normalise so the row's span has LN_D_BITS bits: |d_s| <= 2^15. The
    # floor k_min keeps eps (scaled by 4^-k) below 2^47; a row it affects has a
    # variance at least 16x below eps, and the fewer bits it keeps the smaller
    # (relative to eps) its variance is, so the lost bits do not show.
    k = np.maximum(bit_length(span) - LN_D_BITS, ln_k_min(eps_e))
    d_s = _shift_signed(d, -k)
    # §6.3: sum of squares (<= N * 2^30) plus eps * 4^-k (< 2^47): < 2^48.
    sum_sq = (d_s * d_s).sum(axis=1, keepdims=True)
    s2 = sum_sq + _shift_signed(np.int64(eps_m), eps_e - 2 * k)
    # §6.4: one root and one rounded reciprocal per row.
    r = np.maximum(isqrt(s2), 1)
    inv = np.minimum(((np.int64(1) << LN_RECIP_SHIFT) + (r >> 1)) // r,
                     (1 << LN_RECIP_BITS) - 1)
    # §6.5: z = d_s / r with LN_Z_FRAC fractional bits, then gamma/beta and requant.
    z = round_shift(d_s * inv, LN_RECIP_SHIFT - LN_Z_FRAC)
    y = round_shift(z * gamma[None, :] + beta[None, :], out_shift)
    return saturate(y, 8).astype(np.int8)


# --------------------------------------------------------------------------- §4 attention

def attention_scores(q, k, score_mult, score_shift):
    """§4.1-4.2: t = sat24(round_shift((q @ kᵀ) * score_mult, score_shift)).

    `t` is the attention logit times log2(e)/sqrt(d_head), in base-2 units
    with F fractional bits (F is folded into the multiplier).
    """
    s = intops.matmul_acc(q, np.asarray(k).T)
    return saturate(round_shift(s * np.int64(score_mult), score_shift), SCORE_BITS)


def exp2_neg(d, table, frac_bits):
    """§4.3: p = round_shift(table[d mod 2^F], d >> F) ~ 255 * 2^(-d / 2^F), d >= 0.

    `table` holds 2^F entries round(255 * 2^(-f / 2^F)). Returns uint8.
    """
    d = check_int("exp2 argument", d, 0, None)
    table = np.asarray(table, dtype=np.int64)
    whole = np.minimum(d >> frac_bits, EXP2_ZERO_SHIFT)
    frac = d & ((1 << frac_bits) - 1)
    return round_shift(table[frac], whole).astype(np.uint8)


def softmax_online(t, v, tile, table, frac_bits, offset=0):
    """§4.4: online softmax x V over key tiles for one head.

    t [Tq, Tk] base-2 logits (SCORE_BITS signed), v [Tk, D] int8. Query row i
    is at position offset+i and sees keys j <= offset+i (later keys are
    skipped, not masked with a value). Keys are taken in tiles [0, tile),
    [tile, 2*tile), ... aligned to key 0, so a row's result does not depend
    on how many queries are computed together (KV-cache decode == recompute).

    Returns (O [Tq, D] int64 holding int32 values, L [Tq] the running sum,
    M [Tq] the final integer running max). O / L approximates softmax(t) @ v.
    """
    lo, hi = _signed_range(SCORE_BITS)
    t = check_int("scores t", t, lo, hi)
    v = check_int("v", v, dtype=np.int8)
    if t.ndim != 2 or v.ndim != 2 or t.shape[1] != v.shape[0]:
        raise ValueError(f"softmax_online shapes do not agree: t {t.shape}, v {v.shape}")
    if not isinstance(tile, (int, np.integer)) or tile < 1:
        raise ValueError(f"tile must be a positive integer, got {tile!r}")
    tq, tk = t.shape
    qpos = offset + np.arange(tq)
    m = np.zeros(tq, dtype=np.int64)
    seen = np.zeros(tq, dtype=bool)
    l_sum = np.zeros(tq, dtype=np.int64)
    o = np.zeros((tq, v.shape[1]), dtype=np.int64)
    for j0 in range(0, tk, tile):
        j1 = min(j0 + tile, tk)
        valid = np.arange(j0, j1)[None, :] <= qpos[:, None]
        rows = valid.any(axis=1)
        if not rows.any():
            continue
        tt = t[:, j0:j1]
        tmax = np.where(valid, tt, lo).max(axis=1)
        # ceil(tmax / 2^F): the tile max rounded up to an integer power of two
        m_tile = -((-tmax) >> frac_bits)
        m_new = np.where(rows, np.where(seen, np.maximum(m, m_tile), m_tile), m)
        # the max grew by an integer: rescale old state by an exact power of two
        delta = np.minimum(np.where(seen & rows, m_new - m, 0), 32)
        l_sum = round_shift(l_sum, delta)
        o = round_shift(o, delta[:, None])
        arg = np.where(valid, (m_new[:, None] << frac_bits) - tt, 0)
        p = np.where(valid, exp2_neg(arg, table, frac_bits), 0).astype(np.uint8)
        l_sum = l_sum + p.sum(axis=1, dtype=np.int64)
        o = o + intops.matmul_acc(p, v[j0:j1], a_signed=False)
        m, seen = m_new, seen | rows
    return o, l_sum, m


def attention_normalize(o, l_sum, out_mult, out_shift):
    """§4.5: int8 output = requantize(round_shift(O * inv(L), e + 14 - 8), mult, shift).

    inv(L) = round(2^(e+14) / L) with e = bit_length(L), in [2^14, 2^15];
    the intermediate is the weighted mean of V with ATTN_AVG_FRAC fractional bits.
    """
    o = check_int("attention O", o, -(1 << 31), (1 << 31) - 1)
    l_sum = np.maximum(check_int("attention L", l_sum, 0, (1 << 31) - 1), 1)
    e = bit_length(l_sum)
    inv = ((np.int64(1) << (e + ATTN_RECIP_FRAC)) + (l_sum >> 1)) // l_sum
    avg = round_shift(o * inv[:, None], (e + ATTN_RECIP_FRAC - ATTN_AVG_FRAC)[:, None])
    return intops.requantize(avg, out_mult, out_shift, 8).astype(np.int8)


def attention_head(q, k, v, score_mult, score_shift, out_mult, out_shift,
                   tile, table, frac_bits, offset=0):
    """§4: one causal head. q [Tq, D], k/v [Tk, D] int8; query i is at offset+i.

    Returns int8 [Tq, D] at the attention-output scale.
    """
    t = attention_scores(q, k, score_mult, score_shift)
    o, l_sum, _ = softmax_online(t, v, tile, table, frac_bits, offset)
    return attention_normalize(o, l_sum, out_mult, out_shift)


def attention(qkv, n_head, params, tile, table, frac_bits, cache=None, layer=0):
    """§4: multi-head causal attention from the int8 c_attn output qkv [T, 3E].

    `params` is a `quant.QAttention`. With `cache` (a `gpt2.KVCache`), this
    call's K and V are appended to `layer`'s cache and the queries sit after
    the cached positions. Returns int8 [T, E].
    """
    qkv = check_int("qkv", qkv, dtype=np.int8).astype(np.int8)
    t, e3 = qkv.shape
    e = e3 // 3
    d = e // n_head
    q, k, v = (qkv[:, j * e:(j + 1) * e].reshape(t, n_head, d).transpose(1, 0, 2)
               for j in range(3))
    offset = 0
    if cache is not None:
        offset = 0 if cache.k[layer] is None else cache.k[layer].shape[1]
        k, v = cache.append(layer, k, v)
    heads = [attention_head(q[h], k[h], v[h], params.score_mult, params.score_shift,
                            params.out_mult, params.out_shift, tile, table, frac_bits, offset)
             for h in range(n_head)]
    return np.stack(heads).transpose(1, 0, 2).reshape(t, e).astype(np.int8)


# --------------------------------------------------------------------------- §8 LM head

def lm_head(x, wte, mult, shift, out_bits):
    """§8: logits = requantize(x @ wteᵀ, mult[v], shift[v], out_bits), one common scale."""
    return matmul_requant(x, np.asarray(wte).T, None, mult, shift, out_bits=out_bits)
