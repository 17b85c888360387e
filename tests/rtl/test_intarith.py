"""`rtl.intarith`'s staged helpers against Python's integers in Amaranth's simulator."""
import random

import pytest
from amaranth.hdl import Module, Signal, signed, unsigned
from amaranth.sim import Simulator

from gpt2accel.model.intops import round_shift
from gpt2accel.rtl.intarith import SPLIT_PRODUCT_LATENCY, round_shift_add, split_product


@pytest.mark.parametrize("a_bits, b_shape", [(25, signed(17)), (23, signed(16)),
                                             (32, unsigned(15)), (18, signed(18))])
def test_split_product_signed_and_unsigned_b(seed, a_bits, b_shape):
    """Products at the operands' extremes and random ones, one per cycle, each
    `SPLIT_PRODUCT_LATENCY` cycles after its operands; a signed b (the low partial
    product then signed) as well as an unsigned one."""
    rng = random.Random(seed)
    m = Module()
    a, b = Signal(signed(a_bits)), Signal(b_shape)
    p = split_product(m, a, b, name="t")
    a_lo, a_hi = -(1 << (a_bits - 1)), (1 << (a_bits - 1)) - 1
    b_lo = -(1 << (len(b) - 1)) if b_shape.signed else 0
    b_hi = (1 << (len(b) - 1)) - 1 if b_shape.signed else (1 << len(b)) - 1
    pairs = [(x, y) for x in (a_lo, -1, 0, 1, a_hi) for y in (b_lo, -1, 0, 1, b_hi)
             if b_lo <= y <= b_hi]
    pairs += [(rng.randint(a_lo, a_hi), rng.randint(b_lo, b_hi)) for _ in range(300)]

    async def bench(ctx):
        got = []
        for i in range(len(pairs) + SPLIT_PRODUCT_LATENCY):
            if i < len(pairs):
                ctx.set(a, pairs[i][0])
                ctx.set(b, pairs[i][1])
            await ctx.tick()
            if i + 1 >= SPLIT_PRODUCT_LATENCY:
                got.append(ctx.get(p))
        assert got[:len(pairs)] == [x * y for x, y in pairs]

    sim = Simulator(m)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()


@pytest.mark.parametrize("x_shape, width", [(signed(6), 6), (unsigned(6), 6), (signed(5), 7)])
def test_round_shift_add_exhaustive(x_shape, width):
    """round_shift(x, sh) + y modulo 2^width for every x, every shift 0..width+1 (past
    the value's bits too) and every y of a `width`-bit signed y: the carry-in form
    equals the rounding add then the add."""
    m = Module()
    x, sh, y = Signal(x_shape), Signal(range(width + 2)), Signal(signed(width))
    out = Signal(width)
    m.d.comb += out.eq(round_shift_add(x, sh, y, width))
    xs = range(-(1 << (len(x) - 1)), 1 << (len(x) - 1)) if x_shape.signed else range(1 << len(x))

    async def bench(ctx):
        for xv in xs:
            for s in range(width + 2):
                for yv in range(-(1 << (width - 1)), 1 << (width - 1)):
                    ctx.set(x, xv)
                    ctx.set(sh, s)
                    ctx.set(y, yv)
                    assert ctx.get(out) == (round_shift(xv, s) + yv) % (1 << width), (xv, s, yv)

    sim = Simulator(m)
    sim.add_testbench(bench)
    sim.run()
