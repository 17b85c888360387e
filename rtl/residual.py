"""Residual-stream adders (numerics §7): the saturating residual add and the embedding add.

- `ResidualAdd` (§7.2, `intmodel.residual_add`): x = sat(x + y, R), where y is
  attn.c_proj's or mlp.c_proj's output already requantised to the residual
  scale by the matmul engine.
- `RequantAdd` (RESADD / REQUANT of the vector mover): the same add, with y
  a raw int32 column requantised on the way in, ``sat(round_shift(raw *
  mult, shift), R)`` with the column's (mult, shift); one pipeline of five
  short stages, so no cycle holds a multiply, a 64-bit round and two
  saturations at once.
- `EmbeddingAdd` (§7.1, `intmodel.embed`): the token and position rows are
  int8 table rows with one (mult, shift) per row; each is requantised
  ``sat(round_shift((w << 8) * mult, shift), R)`` and the two are added with
  saturation. It is the residual add fed by two requantisers, so it is one
  pipeline here; the (mult, shift) of each row travel with its beats.

Both join two streams beat by beat: a beat is taken from each input together.
"""
from amaranth.hdl import *
from amaranth.lib import wiring, stream, data
from amaranth.lib.wiring import In, Out

from gpt2accel.model import intmodel as im
from gpt2accel.model import intops

from .intarith import add_half, partial_products, saturate
from .vector import check_lanes, vector_layout

__all__ = ["ResidualAdd", "RequantAdd", "EmbeddingAdd", "embed_row_layout", "raw_row_layout"]


def _check_bits(bits):
    if not isinstance(bits, int) or isinstance(bits, bool) or not 2 <= bits <= 32:
        raise ValueError(f"residual width must be an int in 2..32, got {bits!r}")
    return bits


def _set_shape(unit, lanes, bits):
    """Check and set a unit's lanes and residual width; a refused unit is never
    elaborated, so it is marked as such (no "created but never used" warning)."""
    try:
        unit.lanes, unit.bits = check_lanes(lanes), _check_bits(bits)
    except ValueError:
        unit._MustUse__silence = True
        raise


def _flags(m, en, take, last, out_valid, out_last, latency):
    """A beat's valid and last flags through a `latency`-stage pipeline under one enable
    (`en`), ending in `out_valid` and `out_last`."""
    valid, lasts = take, last
    for s in range(1, latency):
        v, l = Signal(name=f"v{s}"), Signal(name=f"last{s}")
        with m.If(en):
            m.d.sync += [v.eq(valid), l.eq(lasts)]
        valid, lasts = v, l
    with m.If(en):
        m.d.sync += [out_valid.eq(valid), out_last.eq(lasts)]


def _join(m, a, b, en):
    """Take one beat from each of streams `a` and `b` together when `en`; returns `take`.

    Each ready depends on the other stream's valid (allowed by lib.stream: valid
    never depends on ready), so neither input is consumed alone.
    """
    m.d.comb += [a.ready.eq(en & b.valid), b.ready.eq(en & a.valid)]
    return a.valid & b.valid & en


class ResidualAdd(wiring.Component):
    """`lanes` saturating `bits`-wide adds per cycle.

    Ports ``a``, ``b``: `vector_layout(signed(bits), lanes)`; ``out``: the same
    layout, sat(a + b) per lane with ``a.last``. `latency` = 1 (output register).
    """
    latency = 1

    def __init__(self, lanes=1, bits=16):
        _set_shape(self, lanes, bits)
        lay = vector_layout(signed(bits), lanes)
        super().__init__({"a": In(stream.Signature(lay)), "b": In(stream.Signature(lay)),
                          "out": Out(stream.Signature(lay))})

    def elaborate(self, platform):
        m = Module()
        en, out_valid = Signal(), Signal()
        m.d.comb += [en.eq(~out_valid | self.out.ready), self.out.valid.eq(out_valid)]
        take = _join(m, self.a, self.b, en)
        pa, pb, po = self.a.payload, self.b.payload, self.out.payload
        with m.If(en):
            m.d.sync += [out_valid.eq(take), po.last.eq(pa.last)]
            for l in range(self.lanes):
                m.d.sync += po.x[l].eq(saturate(pa.x[l] + pb.x[l], self.bits))
        return m


def raw_row_layout(lanes, mult_bits=16, shift_bits=6):
    """One beat of raw int32 values with each lane's requantiser (mult, shift)."""
    return data.StructLayout({"x": data.ArrayLayout(signed(32), lanes),
                              "mult": data.ArrayLayout(unsigned(mult_bits), lanes),
                              "shift": data.ArrayLayout(unsigned(shift_bits), lanes),
                              "last": 1})


class RequantAdd(wiring.Component):
    """x = sat(a + sat(round_shift(y * mult, shift), R), R) per lane, `lanes` per cycle.

    Ports ``a``: `vector_layout(signed(bits), lanes)` (the residual row); ``y``:
    `raw_row_layout(lanes)` (raw int32 values, each with its column's mult and
    shift); ``out``: `vector_layout(signed(bits), lanes)` with ``a.last``.

    Pipeline (one enable, so an output stall freezes it and no beat is lost):
    Q1 the product's two partial products (`intarith.partial_products`: one DSP
    each, registered at its output, so the operands' select in front of the
    DSPs is not in series with the fabric add that joins them), Q2 adds them
    and the rounding half, Q3 shifts and saturates to `bits`, Q4 the
    saturating residual add. `latency` = 4. The product's
    operands are ``y``'s payload itself: the user feeds it from a register (the
    vector mover's assembler, through fixed word slices; its own operand
    register would only delay every RESADD and REQUANT by a cycle), as
    `EmbeddingAdd`'s. The arithmetic is `intarith.round_shift` in 64 bits, as
    the single-cycle expression it replaces: bit-exact for every 16-bit mult
    and 6-bit shift.
    """
    latency = 4

    def __init__(self, lanes=1, bits=16):
        _set_shape(self, lanes, bits)
        lay = vector_layout(signed(bits), lanes)
        super().__init__({"a": In(stream.Signature(lay)),
                          "y": In(stream.Signature(raw_row_layout(lanes))),
                          "out": Out(stream.Signature(lay))})

    def elaborate(self, platform):
        m = Module()
        L, R, W = self.lanes, self.bits, 64
        en, out_valid = Signal(), Signal()
        m.d.comb += [en.eq(~out_valid | self.out.ready), self.out.valid.eq(out_valid)]
        take = _join(m, self.a, self.y, en)
        pa, py = self.a.payload, self.y.payload

        _flags(m, en, take, pa.last, out_valid, self.out.payload.last, self.latency)
        for l in range(L):
            def stage(shape, name):
                return Signal(shape, name=f"{name}_{l}")
            x = [stage(signed(R), f"x{s}") for s in range(1, 4)]
            sh = [stage(unsigned(len(py.shift[l])), f"shift{s}") for s in range(1, 3)]
            p1 = partial_products(m, py.x[l], py.mult[l], en=en, name=f"prod1_{l}")
            t2 = stage(signed(W), "t2")
            q3 = stage(signed(R), "req3")
            with m.If(en):
                m.d.sync += [x[0].eq(pa.x[l]), sh[0].eq(py.shift[l]), sh[1].eq(sh[0]),
                             t2.eq(add_half(p1, sh[0], W)),
                             q3.eq(saturate(t2 >> sh[1], R)),
                             self.out.payload.x[l].eq(saturate(x[2] + q3, R))]
                m.d.sync += [v.eq(p) for v, p in zip(x[1:], x)]
        return m


def embed_row_layout(lanes, mult_bits=intops.MULT_BITS, max_shift=intops.MAX_SHIFT):
    """One beat of an embedding-table row: `lanes` int8 entries and the row's requantiser."""
    return data.StructLayout({"x": data.ArrayLayout(signed(8), lanes),
                              "mult": unsigned(mult_bits), "shift": range(max_shift + 1),
                              "last": 1})


class EmbeddingAdd(wiring.Component):
    """Token row + position row -> `bits`-wide residual values, `lanes` per cycle.

    Ports ``tok``, ``pos``: `embed_row_layout` (wte[id] and wpe[p] beats with
    their rows' mult/shift, equal on every beat of a row); ``out``:
    `vector_layout(signed(bits), lanes)` with ``tok.last``.

    Pipeline (one enable, so an output stall freezes it): E1 (w << 8) * mult
    (16 x 15 bits), E2 add the rounding half, E3 shift and saturate to `bits`,
    E4 saturating add. `latency` = 4.
    """
    latency = 4

    def __init__(self, lanes=1, bits=16):
        _set_shape(self, lanes, bits)
        self.mult_bits = intops.MULT_BITS
        row = embed_row_layout(lanes)
        super().__init__({"tok": In(stream.Signature(row)), "pos": In(stream.Signature(row)),
                          "out": Out(stream.Signature(vector_layout(signed(bits), lanes)))})

    def elaborate(self, platform):
        m = Module()
        L, R = self.lanes, self.bits
        prod_w = 8 + im.EMBED_PRESHIFT + self.mult_bits + 1   # signed x unsigned
        en, out_valid = Signal(), Signal()
        m.d.comb += [en.eq(~out_valid | self.out.ready), self.out.valid.eq(out_valid)]
        take = _join(m, self.tok, self.pos, en)
        srcs = (self.tok.payload, self.pos.payload)

        _flags(m, en, take, srcs[0].last, out_valid, self.out.payload.last, self.latency)
        req = []   # per source: the requantised lanes after E3
        for s, p in enumerate(srcs):
            # a shift past the product's width rounds every product to 0, as that
            # width does: clamped, the rounding half always fits the adder below
            shift1 = Signal(range(prod_w + 1), name=f"shift1_{s}")
            shift2 = Signal.like(shift1, name=f"shift2_{s}")
            with m.If(en):
                m.d.sync += [shift1.eq(Mux(p.shift > prod_w, prod_w, p.shift)),
                             shift2.eq(shift1)]
            lanes3 = []
            for l in range(L):
                # E1: the table entry shifted by EMBED_PRESHIFT, times the row's mult
                prod = Signal(signed(prod_w), name=f"prod1_{s}_{l}")
                # E2, E3: intops.requantize to R bits (round_shift split at its add)
                t2 = Signal(signed(prod_w + 1), name=f"t2_{s}_{l}")
                r3 = Signal(signed(R), name=f"req3_{s}_{l}")
                with m.If(en):
                    m.d.sync += [prod.eq((p.x[l] << im.EMBED_PRESHIFT) * p.mult),
                                 t2.eq(add_half(prod, shift1, prod_w + 1)),
                                 r3.eq(saturate(t2 >> shift2, R))]
                lanes3.append(r3)
            req.append(lanes3)
        # E4: the residual add of the two requantised rows
        with m.If(en):
            for l in range(L):
                m.d.sync += self.out.payload.x[l].eq(saturate(req[0][l] + req[1][l], R))
        return m
