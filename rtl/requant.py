"""Bias add and requantisation of one output row, as in `model.intops`.

Per column: x = wrap(acc + bias); raw mode passes x on, otherwise
sat(round_half_up((x * mult) >> shift)). Free-running pipeline (no
back-pressure): the engine sizes its output buffer so nothing ever waits here.
"""
from amaranth.hdl import *
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from .intarith import saturate

__all__ = ["Requantiser"]


class Requantiser(wiring.Component):
    """`lanes` parallel requantisers, `latency` stages.

    Parameters (`bias`, `mult`, `shift`, `raw`) are sampled together with the
    input row; each stage carries only what later stages still need.
    Output lanes are `acc_width` wide: the raw sum, or the saturated
    `out_bits` result sign-extended.
    """
    latency = 4

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
        prod_width = A + self.mult_bits  # signed x unsigned product

        v = [Signal(name=f"v{s}") for s in range(1, 4)]
        raw = [Signal(name=f"raw{s}") for s in range(1, 4)]
        m.d.sync += [v[0].eq(self.valid), v[1].eq(v[0]), v[2].eq(v[1]),
                     raw[0].eq(self.raw), raw[1].eq(raw[0]), raw[2].eq(raw[1])]
        m.d.sync += self.out_valid.eq(v[2])

        for n in range(self.lanes):
            # Stage 1: bias add (wraps like the accumulator).
            x1 = Signal(signed(A), name=f"x1_{n}")
            mult1 = Signal.like(self.mult[n], name=f"mult1_{n}")
            shift1 = Signal.like(self.shift[n], name=f"shift1_{n}")
            m.d.sync += [x1.eq(self.acc[n] + self.bias[n]), mult1.eq(self.mult[n]),
                         shift1.eq(self.shift[n])]
            # Stage 2: multiply (DSP).
            x2 = Signal.like(x1, name=f"x2_{n}")
            p2 = Signal(signed(prod_width), name=f"p2_{n}")
            shift2 = Signal.like(shift1, name=f"shift2_{n}")
            m.d.sync += [x2.eq(x1), p2.eq(x1 * mult1), shift2.eq(shift1)]
            # Stage 3: add half an output LSB (round half up). One extra bit
            # so the rounding carry cannot overflow.
            half = Signal(prod_width + 1, name=f"half_{n}")
            m.d.comb += half.eq((Const(1, prod_width + 1) << shift2) >> 1)
            x3 = Signal.like(x1, name=f"x3_{n}")
            t3 = Signal(signed(prod_width + 1), name=f"t3_{n}")
            shift3 = Signal.like(shift1, name=f"shift3_{n}")
            m.d.sync += [x3.eq(x2), t3.eq(p2 + half.as_signed()), shift3.eq(shift2)]
            # Stage 4: arithmetic shift and saturate.
            q = Signal(signed(prod_width + 1), name=f"q_{n}")
            m.d.comb += q.eq(t3 >> shift3)
            m.d.sync += self.out[n].eq(Mux(raw[2], x3, saturate(q, self.out_bits)))
        return m
