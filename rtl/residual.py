"""Residual-stream adders (numerics §7): the saturating residual add and the embedding add.

- `ResidualAdd` (§7.2, `intmodel.residual_add`): x = sat(x + y, R), where y is
  attn.c_proj's or mlp.c_proj's output already requantised to the residual
  scale by the matmul engine.
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

from .intarith import round_shift, saturate
from .vector import check_lanes, vector_layout

__all__ = ["ResidualAdd", "EmbeddingAdd", "embed_row_layout"]


def _check_bits(bits):
    if not isinstance(bits, int) or isinstance(bits, bool) or not 2 <= bits <= 32:
        raise ValueError(f"residual width must be an int in 2..32, got {bits!r}")
    return bits


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
        try:
            self.lanes, self.bits = check_lanes(lanes), _check_bits(bits)
        except ValueError:
            self._MustUse__silence = True   # never elaborated: no "unused" warning
            raise
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
    (16 x 15 bits), E2 round, shift and saturate to `bits`, E3 saturating add.
    `latency` = 3.
    """
    latency = 3

    def __init__(self, lanes=1, bits=16):
        try:
            self.lanes, self.bits = check_lanes(lanes), _check_bits(bits)
        except ValueError:
            self._MustUse__silence = True   # never elaborated: no "unused" warning
            raise
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

        v1, last1, v2, last2 = Signal(), Signal(), Signal(), Signal()
        with m.If(en):
            m.d.sync += [v1.eq(take), last1.eq(srcs[0].last), v2.eq(v1), last2.eq(last1),
                         out_valid.eq(v2), self.out.payload.last.eq(last2)]
        req = []   # per source: the requantised lanes after E2
        for s, p in enumerate(srcs):
            shift1 = Signal.like(p.shift, name=f"shift1_{s}")
            with m.If(en):
                m.d.sync += shift1.eq(p.shift)
            lanes2 = []
            for l in range(L):
                # E1: the table entry shifted by EMBED_PRESHIFT, times the row's mult
                prod = Signal(signed(prod_w), name=f"prod1_{s}_{l}")
                # E2: intops.requantize to R bits
                r2 = Signal(signed(R), name=f"req2_{s}_{l}")
                with m.If(en):
                    m.d.sync += [prod.eq((p.x[l] << im.EMBED_PRESHIFT) * p.mult),
                                 r2.eq(saturate(round_shift(prod, shift1, prod_w + 1), R))]
                lanes2.append(r2)
            req.append(lanes2)
        # E3: the residual add of the two requantised rows
        with m.If(en):
            for l in range(L):
                m.d.sync += self.out.payload.x[l].eq(saturate(req[0][l] + req[1][l], R))
        return m
