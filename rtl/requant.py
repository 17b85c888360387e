"""Bias add and requantisation of one output row, as in `model.intops`.

Per column: x = wrap(acc + bias); raw mode passes x on, otherwise
sat(round_half_up((x * mult) >> shift)). Free-running pipeline (no
back-pressure): the engine sizes its output buffer so nothing ever waits here.
A raw row needs nothing past the bias add, so it leaves after `raw_latency`
cycles instead of `latency`: raw outputs (attention scores, residual-branch
sums, logits) are what short decode commands mostly write, and the five
stages it skips are five cycles of every such command's drain.
"""
from amaranth.hdl import *
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from .intarith import add_half, saturate, shift_right_staged, split_product

__all__ = ["Requantiser"]


class Requantiser(wiring.Component):
    """`lanes` parallel requantisers, `latency` stages.

    Parameters (`bias`, `mult`, `shift`, `raw`) are sampled together with the
    input row; each stage carries only what later stages still need.
    Output lanes are `acc_width` wide: the raw sum, or the saturated
    `out_bits` result sign-extended.

    Rows leave in order as long as a raw row enters at least
    ``latency - raw_latency`` cycles after the last requantised one (the engine's
    commands, which set ``raw``, are that far apart); otherwise a raw row would
    overtake it.
    """
    #: bias add, two product stages (`split_product`), + half, two shift stages
    latency = 6
    #: a raw row leaves straight from the bias-add register
    raw_latency = 1

    def __init__(self, lanes, *, acc_width=32, mult_bits=15, shift_bits=6, out_bits=8):
        self.lanes, self.acc_width, self.out_bits = lanes, acc_width, out_bits
        self.mult_bits = mult_bits
        super().__init__({
            "valid": In(1), "raw": In(1),
            "acc": In(signed(acc_width)).array(lanes),
            "bias": In(signed(acc_width)).array(lanes),
            "mult": In(unsigned(mult_bits)).array(lanes),
            "shift": In(unsigned(shift_bits)).array(lanes),
            "out_valid": Out(1),
            "out": Out(signed(acc_width)).array(lanes),
        })

    def elaborate(self, platform):
        m = Module()
        A = self.acc_width
        S = self.latency

        # v[s-1]: stage s holds a requantised row; v1_raw: stage 1 holds a raw one
        v = [Signal(name=f"v{s}") for s in range(1, S + 1)]
        v1_raw = Signal()
        m.d.sync += [v[0].eq(self.valid & ~self.raw), v1_raw.eq(self.valid & self.raw)]
        m.d.sync += [v[i].eq(v[i - 1]) for i in range(1, S)]
        m.d.comb += self.out_valid.eq(v[-1] | v1_raw)

        for n in range(self.lanes):
            # Stage 1: bias add (wraps like the accumulator).
            x1 = Signal(signed(A), name=f"x1_{n}")
            mult1 = Signal.like(self.mult[n], name=f"mult1_{n}")
            shift1 = Signal.like(self.shift[n], name=f"shift1_{n}")
            m.d.sync += [x1.eq(self.acc[n] + self.bias[n]), mult1.eq(self.mult[n]),
                         shift1.eq(self.shift[n])]
            # Stages 2-3: the 32x15 product, partial products registered.
            p3 = split_product(m, x1, mult1, name=f"p{n}")
            sh_d = shift1
            for s in (2, 3):
                sh_n = Signal.like(shift1, name=f"shift{s}_{n}")
                m.d.sync += sh_n.eq(sh_d)
                sh_d = sh_n
            # Stage 4: add half an output LSB (round half up); one more bit so the
            # rounding carry cannot overflow.
            t4 = Signal(signed(len(p3) + 1), name=f"t4_{n}")
            shift4 = Signal.like(shift1, name=f"shift4_{n}")
            m.d.sync += [t4.eq(add_half(p3, sh_d, len(p3) + 1)), shift4.eq(sh_d)]
            # Stages 5-6: arithmetic shift in two steps, saturate.
            q = shift_right_staged(m, t4, shift4, name=f"q{n}",
                                   finish=lambda v: saturate(v, self.out_bits))
            m.d.comb += self.out[n].eq(Mux(v1_raw, x1, q))
        return m
