"""Attention test inputs (one head), and `extremes`, the extreme-heavy integers
the matmul and vector-unit cases are made of too.

The tests draw them from the `seed` fixture (tests/conftest.py:
GPT2ACCEL_SEED replays a run).
"""
import numpy as np

from gpt2accel.model import intops

KINDS = ["random", "equal", "dominant", "saturate", "growing", "shrinking", "zero_mult"]


def extremes(rng, shape, lo=-128, hi=127, share=0.1):
    """Uniform integers in [lo, hi] with about `share` of them at each extreme."""
    x = rng.integers(lo, hi + 1, shape)
    pick = rng.random(shape)
    x[pick < share] = lo
    x[pick > 1 - share] = hi
    return x


def head_case(rng, kind, d, tq, tk):
    """(q [tq, d], k [tk, d], v [tk, d], score_mult, score_shift) for one head.

    - random: extreme-heavy int8 operands and a random score requantiser;
    - equal: every key identical, so each row's scores are all equal;
    - dominant: one key per row far above the others;
    - saturate: large multiplier, small shift: most t clamp at +-2^23;
    - growing: scores rise with the key index by large steps, so the running
      max jumps in later tiles (delta >= 32 clamps);
    - shrinking: the opposite, the max is set in the first tile;
    - zero_mult: multiplier 0, every t = 0.
    """
    v = extremes(rng, (tk, d))
    q = extremes(rng, (tq, d))
    k = extremes(rng, (tk, d))
    mult = int(rng.integers(0, 1 << 15))
    shift = int(rng.integers(0, 48))
    if rng.random() < 0.5:
        # a shift that maps |S| <= d*2^14 to a few thousand base-2 units
        shift = int(np.clip(int(mult).bit_length() + 14 + d.bit_length() - 13
                            + rng.integers(-3, 4), 0, 47))
    if kind == "equal":
        k[:] = k[0]
    elif kind == "dominant":
        sign = np.where(rng.random(d) < 0.5, -1, 1)
        q = np.tile(127 * sign, (tq, 1))
        k = rng.integers(-2, 3, (tk, d))
        for i in range(0, tk, 3):
            k[i] = 0
        k[rng.integers(0, tk)] = 127 * sign
    elif kind == "saturate":
        mult = int(rng.integers((1 << 15) - 64, 1 << 15))
        shift = int(rng.integers(0, 5))
    elif kind in ("growing", "shrinking"):
        sign = np.where(rng.random(d) < 0.5, -1, 1)
        q = np.tile(127 * sign, (tq, 1))
        scale = np.rint(np.linspace(-127, 127, tk)).astype(np.int64)
        if kind == "shrinking":
            scale = scale[::-1]
        k = scale[:, None] * sign[None, :]
        mult = int(rng.integers(1 << 13, 1 << 15))
        shift = int(rng.integers(10, 16))
    elif kind == "zero_mult":
        mult = 0
    return q, k, v, mult, shift


def scores(q, k):
    """Raw int32 scores S = q @ kᵀ, what the array delivers (§4.1)."""
    return intops.matmul_acc(q, np.asarray(k).T)
