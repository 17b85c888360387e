"""Final attention normalisation (numerics §4.5, `intmodel.attention_normalize`).

Per query row, once all key tiles are accumulated:

    e   = bitlen(L)                                    (L = max(L, 1))
    inv = (2^(e+14) + (L >> 1)) // L                   in [2^14, 2^15]
    avg = round_shift(O * inv, e + 14 - 8)             per element of O
    out = sat8(round_shift(avg * out_mult, out_shift))

`Reciprocal` computes inv with an 8-step radix-4 restoring divider (one per
row, so a small iterative unit is enough); `Normaliser` runs it on the row
sums while its scaling pipeline streams the O elements of earlier rows, so
a row costs max(D / norm_lanes, 11) cycles once the pipeline is full.
"""
from amaranth.hdl import *
from amaranth.lib import wiring, stream, data, fifo
from amaranth.lib.wiring import In, Out

from gpt2accel.model import intmodel as im

from .attention_config import AttentionConfig
from .intarith import add_half, bit_length, saturate

__all__ = ["Reciprocal", "Normaliser", "row_sum_layout", "o_layout", "out_layout",
           "recip_layout"]

#: quotient bits of inv: inv <= 2^15 needs 16
_Q_BITS = im.ATTN_RECIP_FRAC + 2
#: radix-4 divider: two quotient bits per cycle
_STEPS = _Q_BITS // 2


def row_sum_layout(cfg: AttentionConfig):
    """Per row: its final running sum L and the output requantiser (§4.5)."""
    e = cfg.engine
    return data.StructLayout({"l_sum": unsigned(32), "out_mult": unsigned(e.mult_bits),
                              "out_shift": range(e.max_shift + 1)})


def recip_layout(cfg: AttentionConfig):
    """inv(L), the shift e + 14 - 8 that goes with it, and the row's requantiser."""
    e = cfg.engine
    return data.StructLayout({"inv": unsigned(_Q_BITS),
                              "shift": range(32 + im.ATTN_RECIP_FRAC - im.ATTN_AVG_FRAC + 1),
                              "out_mult": unsigned(e.mult_bits),
                              "out_shift": range(e.max_shift + 1)})


def o_layout(cfg: AttentionConfig):
    """`norm_lanes` accumulators of one row; ``last`` marks the row's final beat."""
    return data.StructLayout({"o": data.ArrayLayout(signed(32), cfg.norm_lanes), "last": 1})


def out_layout(cfg: AttentionConfig):
    return data.StructLayout({"y": data.ArrayLayout(signed(8), cfg.norm_lanes), "last": 1})


class Reciprocal(wiring.Component):
    """inv(L) = round(2^(e+14) / L), one row at a time (radix-4 divider).

    ``inp``: `row_sum_layout`; ``out``: `recip_layout`. Takes a new row only
    when idle; the result is held until taken. `latency` cycles from accept
    to a valid result.
    """
    latency = 2 + _STEPS

    def __init__(self, cfg: AttentionConfig):
        self.cfg = cfg
        super().__init__({
            "inp": In(stream.Signature(row_sum_layout(cfg))),
            "out": Out(stream.Signature(recip_layout(cfg))),
        })

    def elaborate(self, platform):
        m = Module()
        l_sum = Signal(32)
        num_w = 32 + im.ATTN_RECIP_FRAC + 3   # room for 3 * dv
        rem = Signal(num_w)
        dv = Signal(num_w)
        q = Signal(_Q_BITS)
        step = Signal(range(_STEPS))
        e = bit_length(m, l_sum, "e")
        out = self.out.payload
        with m.FSM():
            with m.State("IDLE"):
                m.d.comb += self.inp.ready.eq(1)
                with m.If(self.inp.valid):
                    p = self.inp.payload
                    # attention_normalize clamps L to >= 1
                    m.d.sync += [l_sum.eq(Mux(p.l_sum == 0, 1, p.l_sum)),
                                 out.out_mult.eq(p.out_mult), out.out_shift.eq(p.out_shift)]
                    m.next = "PREP"
            with m.State("PREP"):
                m.d.sync += [rem.eq((Const(1, num_w) << (e + im.ATTN_RECIP_FRAC)) + (l_sum >> 1)),
                             dv.eq(l_sum << (_Q_BITS - 2)), q.eq(0), step.eq(0),
                             out.shift.eq(e + im.ATTN_RECIP_FRAC - im.ATTN_AVG_FRAC)]
                m.next = "DIV"
            with m.State("DIV"):
                # radix-4 restoring division, MSB digit first: the digit is the
                # largest k in 0..3 with k*dv <= rem (three comparisons in
                # parallel). rem < 4*dv holds throughout because the quotient
                # fits 16 bits (L >= 2^(e-1)).
                dv2, dv3 = dv << 1, (dv << 1) + dv
                ge1, ge2, ge3 = rem >= dv, rem >= dv2, rem >= dv3
                digit = Mux(ge3, 3, Mux(ge2, 2, Mux(ge1, 1, 0)))
                sub = Mux(ge3, dv3, Mux(ge2, dv2, Mux(ge1, dv, 0)))
                m.d.sync += [rem.eq(rem - sub), dv.eq(dv >> 2),
                             q.eq(Cat(digit[:2], q[:-2])), step.eq(step + 1)]
                with m.If(step == _STEPS - 1):
                    m.next = "DONE"
            with m.State("DONE"):
                m.d.comb += [self.out.valid.eq(1), out.inv.eq(q)]
                with m.If(self.out.ready):
                    m.next = "IDLE"
        return m


class Normaliser(wiring.Component):
    """O rows and their sums L in, int8 attention outputs out.

    Ports:
    - ``l_in``: `row_sum_layout`, one beat per row; may run ahead of ``o_in``;
    - ``o_in``: `o_layout`, the row's O elements in order, ``last`` on its final beat;
    - ``out``: `out_layout`, one beat per ``o_in`` beat, in the same order.

    Row n's O beats are paired with row n's sum. `latency`: cycles from an
    ``o_in`` beat's transfer to its result being valid, once the row's inv is
    ready (a row's inv is ready `Reciprocal.latency` + 2 cycles after its sum
    was taken, and the next row's inverse is computed while this row streams).
    Rows of fewer than `Reciprocal.latency` + 1 beats wait for the divider.
    """
    latency = 6
    #: reciprocals buffered between the divider and the scaling pipeline
    recip_depth = 2

    def __init__(self, cfg: AttentionConfig):
        self.cfg = cfg
        super().__init__({
            "l_in": In(stream.Signature(row_sum_layout(cfg))),
            "o_in": In(stream.Signature(o_layout(cfg))),
            "out": Out(stream.Signature(out_layout(cfg))),
        })

    def elaborate(self, platform):
        m = Module()
        c, e = self.cfg, self.cfg.engine
        NL = c.norm_lanes
        m.submodules.recip = recip = Reciprocal(c)
        rl = recip_layout(c)
        m.submodules.queue = queue = fifo.SyncFIFOBuffered(width=rl.size, depth=self.recip_depth)
        wiring.connect(m, wiring.flipped(self.l_in), recip.inp)
        m.d.comb += [queue.w_data.eq(recip.out.payload.as_value()),
                     queue.w_en.eq(recip.out.valid), recip.out.ready.eq(queue.w_rdy)]
        head = data.View(rl, queue.r_data)

        out_valid = Signal()
        en = Signal()
        m.d.comb += [en.eq(~out_valid | self.out.ready), self.out.valid.eq(out_valid)]
        take = self.o_in.valid & queue.r_rdy & en
        m.d.comb += [self.o_in.ready.eq(queue.r_rdy & en),
                     queue.r_en.eq(take & self.o_in.payload.last)]

        # N1: O * inv (49-bit signed)
        prod1_w = 32 + _Q_BITS + 1
        n1_valid, n1_last = Signal(), Signal()
        n1_prod = [Signal(signed(prod1_w), name=f"n1_prod{l}") for l in range(NL)]
        n1 = Signal(rl)
        with m.If(en):
            m.d.sync += [n1_valid.eq(take), n1_last.eq(self.o_in.payload.last), n1.eq(head)]
            for l in range(NL):
                m.d.sync += n1_prod[l].eq(self.o_in.payload.o[l] * head.inv)
        # N2a: + the rounding half of e + 6; N2: avg = (.) >> (e + 6), int32 by
        # numerics §4.5 (|avg| <= 2^15 + 1). Every round-shift here is split at its
        # add: add, shift and saturate in one cycle were the engine's longest paths.
        n2a_valid, n2a_last = Signal(), Signal()
        n2a_t = [Signal(signed(prod1_w + 1), name=f"n2a_t{l}") for l in range(NL)]
        n2a = Signal(rl)
        with m.If(en):
            m.d.sync += [n2a_valid.eq(n1_valid), n2a_last.eq(n1_last), n2a.eq(n1)]
            for l in range(NL):
                m.d.sync += n2a_t[l].eq(add_half(n1_prod[l], n1.shift, prod1_w + 1))
        n2_valid, n2_last = Signal(), Signal()
        n2_avg = [Signal(signed(32), name=f"n2_avg{l}") for l in range(NL)]
        n2 = Signal(rl)
        with m.If(en):
            m.d.sync += [n2_valid.eq(n2a_valid), n2_last.eq(n2a_last), n2.eq(n2a)]
            for l in range(NL):
                m.d.sync += n2_avg[l].eq(n2a_t[l] >> n2a.shift)
        # N3: avg * out_mult
        prod2_w = 32 + e.mult_bits
        n3_valid, n3_last = Signal(), Signal()
        n3_prod = [Signal(signed(prod2_w), name=f"n3_prod{l}") for l in range(NL)]
        n3_shift = Signal.like(n2.out_shift)
        with m.If(en):
            m.d.sync += [n3_valid.eq(n2_valid), n3_last.eq(n2_last), n3_shift.eq(n2.out_shift)]
            for l in range(NL):
                m.d.sync += n3_prod[l].eq(n2_avg[l] * n2.out_mult)
        # N4: + the rounding half; N5 (output register): shift, saturate to int8
        n4_valid, n4_last = Signal(), Signal()
        n4_t = [Signal(signed(prod2_w + 1), name=f"n4_t{l}") for l in range(NL)]
        n4_shift = Signal.like(n3_shift)
        with m.If(en):
            m.d.sync += [n4_valid.eq(n3_valid), n4_last.eq(n3_last), n4_shift.eq(n3_shift)]
            for l in range(NL):
                m.d.sync += n4_t[l].eq(add_half(n3_prod[l], n3_shift, prod2_w + 1))
        with m.If(en):
            m.d.sync += [out_valid.eq(n4_valid), self.out.payload.last.eq(n4_last)]
            for l in range(NL):
                m.d.sync += self.out.payload.y[l].eq(saturate(n4_t[l] >> n4_shift, 8))
        return m
