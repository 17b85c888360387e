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
from .intarith import add_half, bit_length, saturate, shift_right_staged, split_product

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
        # the division's registers are set in IDLE and PREP before DIV reads them:
        # no reset (only the state machine has one)
        l_sum = Signal(32, reset_less=True)
        num_w = 32 + im.ATTN_RECIP_FRAC + 3   # room for 3 * dv
        rem = Signal(num_w, reset_less=True)
        dv = Signal(num_w, reset_less=True)
        dv3 = Signal(num_w, reset_less=True)
        q = Signal(_Q_BITS, reset_less=True)
        step = Signal(range(_STEPS), reset_less=True)
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
                             dv.eq(l_sum << (_Q_BITS - 2)),
                             dv3.eq((l_sum << (_Q_BITS - 1)) + (l_sum << (_Q_BITS - 2))),
                             q.eq(0), step.eq(0),
                             out.shift.eq(e + im.ATTN_RECIP_FRAC - im.ATTN_AVG_FRAC)]
                m.next = "DIV"
            with m.State("DIV"):
                # radix-4 restoring division, MSB digit first: the digit is the
                # largest k in 0..3 with k*dv <= rem. The three trial remainders
                # rem - k*dv are subtracted in parallel and their signs pick the
                # digit and the new remainder (one carry chain per cycle; 3*dv is a
                # register shifted with dv: dv's low bits stay zero until its last
                # step, so (3*dv) >> 2 == 3*(dv >> 2)). rem < 4*dv holds throughout
                # because the quotient fits 16 bits (L >= 2^(e-1)).
                trial = [Signal(signed(num_w + 1), name=f"trial{k}") for k in (1, 2, 3)]
                m.d.comb += [trial[0].eq(rem - dv), trial[1].eq(rem - (dv << 1)),
                             trial[2].eq(rem - dv3)]
                ge1, ge2, ge3 = (~t[-1] for t in trial)
                digit = Mux(ge3, 3, Mux(ge2, 2, Mux(ge1, 1, 0)))
                nrem = Mux(ge3, trial[2], Mux(ge2, trial[1], Mux(ge1, trial[0], rem)))
                m.d.sync += [rem.eq(nrem[:num_w]), dv.eq(dv >> 2), dv3.eq(dv3 >> 2),
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
    #: N0 (the beat), N1, N1b (O * inv), N2a (+ half), N2c, N2 (shift), N3, N3b
    #: (* out_mult), N4 (+ half), N5c, N5 (shift, saturate; the output register)
    latency = 11
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

        # Every multiply has registers on both sides and its two partial products
        # registered (`split_product`); every round-shift is split at its add and
        # shifts in two steps (`shift_right_staged`): add, shift and saturate in
        # one cycle, and O read -> word select -> multiply, were the engine's
        # longest paths. The row's context (`recip_layout`) rides along, its valid
        # bit beside it: only the valid bits are reset, the data is read under them.
        ctx = data.StructLayout({"last": 1, "r": rl})

        def follow(prev, name):
            """the next stage of a (context, valid) pair"""
            nxt, nxt_v = Signal(ctx, name=name, reset_less=True), Signal(name=f"{name}_v")
            with m.If(en):
                m.d.sync += [nxt.eq(prev[0]), nxt_v.eq(prev[1])]
            return nxt, nxt_v

        # N0: the beat and its row's reciprocal registered
        n0, n0_v = Signal(ctx, reset_less=True), Signal()
        n0_o = [Signal(signed(32), name=f"n0_o{l}", reset_less=True) for l in range(NL)]
        with m.If(en):
            m.d.sync += [n0_v.eq(take), n0.last.eq(self.o_in.payload.last), n0.r.eq(head)]
            for l in range(NL):
                m.d.sync += n0_o[l].eq(self.o_in.payload.o[l])
        # N1, N1b: O * inv (49-bit signed)
        prod1 = [split_product(m, n0_o[l], n0.r.inv, en=en, name=f"n1_{l}", reset_less=True)
                 for l in range(NL)]
        n1, n1_v = follow(follow((n0, n0_v), "n1a"), "n1")
        # N2a: + the rounding half of e + 6; N2c, N2: avg = (.) >> (e + 6), int32 by
        # numerics §4.5 (|avg| <= 2^15 + 1)
        prod1_w = len(prod1[0])
        n2a, n2a_v = follow((n1, n1_v), "n2a")
        n2a_t = [Signal(signed(prod1_w + 1), name=f"n2a_t{l}", reset_less=True) for l in range(NL)]
        with m.If(en):
            for l in range(NL):
                m.d.sync += n2a_t[l].eq(add_half(prod1[l], n1.r.shift, prod1_w + 1))
        avg = [shift_right_staged(m, n2a_t[l], n2a.r.shift, en=en, name=f"n2_avg{l}",
                                  finish=lambda v: v[:32].as_signed(), reset_less=True)
               for l in range(NL)]
        n2, n2_v = follow(follow((n2a, n2a_v), "n2c"), "n2")
        # N3, N3b: avg * out_mult
        prod2 = [split_product(m, avg[l], n2.r.out_mult, en=en, name=f"n3_{l}", reset_less=True)
                 for l in range(NL)]
        n3, n3_v = follow(follow((n2, n2_v), "n3a"), "n3")
        # N4: + the rounding half; N5c, N5 (output register): shift, saturate to int8
        prod2_w = len(prod2[0])
        n4, n4_v = follow((n3, n3_v), "n4")
        n4_t = [Signal(signed(prod2_w + 1), name=f"n4_t{l}", reset_less=True) for l in range(NL)]
        with m.If(en):
            for l in range(NL):
                m.d.sync += n4_t[l].eq(add_half(prod2[l], n3.r.out_shift, prod2_w + 1))
        ys = [shift_right_staged(m, n4_t[l], n4.r.out_shift, en=en, name=f"n5_y{l}",
                                 finish=lambda v: saturate(v, 8), reset_less=True)
              for l in range(NL)]
        n5c, n5c_v = follow((n4, n4_v), "n5c")
        with m.If(en):
            m.d.sync += [out_valid.eq(n5c_v), self.out.payload.last.eq(n5c.last)]
        m.d.comb += [self.out.payload.y[l].eq(ys[l]) for l in range(NL)]
        return m
