"""Integer arithmetic primitives shared by the golden model and the RTL tests.

Every function here is the normative reference for one hardware operation;
`docs/numerics.md` states the same rules in prose. Inputs are checked and
computation is done in int64 so that NumPy never silently wraps; where the
hardware wraps or saturates, the function does so explicitly.
"""
import numpy as np

__all__ = [
    "ACC_BITS", "MULT_BITS", "MAX_SHIFT",
    "saturate", "wrap", "round_shift", "requantize",
    "matmul_acc", "matmul_requant",
]

#: Width of the systolic array's accumulators (two's complement).
ACC_BITS = 32
#: Requantiser multipliers are unsigned and fit in this many bits.
MULT_BITS = 15
#: Largest requantiser right shift.
MAX_SHIFT = 47


def _int_array(name, x, lo, hi):
    x = np.asarray(x)
    if x.dtype.kind not in "iu":
        raise TypeError(f"{name} must be an integer array, got dtype {x.dtype}")
    if x.size and (x.min() < lo or x.max() > hi):
        raise ValueError(f"{name} has values outside [{lo}, {hi}] "
                         f"(min {x.min()}, max {x.max()})")
    return x.astype(np.int64)


def saturate(x, bits):
    """Clamp to the signed range of `bits` bits."""
    lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    return np.clip(np.asarray(x, dtype=np.int64), lo, hi)


def wrap(x, bits):
    """Two's-complement wrap to `bits` bits, as a register of that width does."""
    x = np.asarray(x, dtype=np.int64)
    m = np.int64(1) << bits
    return ((x + (m >> 1)) & (m - 1)) - (m >> 1)


def round_shift(x, shift):
    """Arithmetic right shift by `shift` with round-half-up (towards +inf).

    ``(x + 2**(shift-1)) >> shift`` for shift > 0; identity for shift 0.
    """
    x = np.asarray(x, dtype=np.int64)
    shift = np.asarray(shift, dtype=np.int64)
    half = np.where(shift > 0, np.left_shift(np.int64(1), np.maximum(shift - 1, 0)), 0)
    return (x + half) >> shift


def requantize(acc, mult, shift, out_bits=8):
    """int32 accumulator -> `out_bits` signed integer: sat(round_shift(acc*mult, shift)).

    `mult` (0 <= mult < 2**MULT_BITS) and `shift` (0 <= shift <= MAX_SHIFT)
    broadcast against `acc`, normally one pair per output column.
    """
    acc = _int_array("acc", acc, -(1 << (ACC_BITS - 1)), (1 << (ACC_BITS - 1)) - 1)
    mult = _int_array("mult", mult, 0, (1 << MULT_BITS) - 1)
    shift = _int_array("shift", shift, 0, MAX_SHIFT)
    return saturate(round_shift(acc * mult, shift), out_bits)


def matmul_acc(a, w, bias=None, *, a_signed=True):
    """Raw accumulator path: wrap32(a @ w + bias).

    `a` is [M, K] int8 (or uint8 when ``a_signed=False``, used for softmax
    probabilities times V), `w` is [K, N] int8, `bias` is [N] int32 or None.
    """
    a_lo, a_hi = (-128, 127) if a_signed else (0, 255)
    a = _int_array("a", a, a_lo, a_hi)
    w = _int_array("w", w, -128, 127)
    if a.ndim != 2 or w.ndim != 2 or a.shape[1] != w.shape[0]:
        raise ValueError(f"matmul shapes do not agree: a {a.shape} @ w {w.shape}")
    acc = a @ w
    if bias is not None:
        bias = _int_array("bias", bias, -(1 << (ACC_BITS - 1)), (1 << (ACC_BITS - 1)) - 1)
        if bias.shape != (w.shape[1],):
            raise ValueError(f"bias has shape {bias.shape}, expected ({w.shape[1]},)")
        acc = acc + bias
    return wrap(acc, ACC_BITS)


def matmul_requant(a, w, bias, mult, shift, *, out_bits=8, a_signed=True):
    """int8 linear layer: requantize(a @ w + bias, mult[n], shift[n]) per column n."""
    acc = matmul_acc(a, w, bias, a_signed=a_signed)
    n = acc.shape[1]
    mult = np.broadcast_to(np.asarray(mult), (n,))
    shift = np.broadcast_to(np.asarray(shift), (n,))
    return requantize(acc, mult[None, :], shift[None, :], out_bits).astype(
        np.int8 if out_bits == 8 else np.int32)
