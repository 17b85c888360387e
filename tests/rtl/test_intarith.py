"""`rtl.intarith`'s staged helpers against Python's integers in Amaranth's simulator."""
import random

import pytest
from amaranth.hdl import Module, Signal, signed, unsigned
from amaranth.sim import Simulator

from gpt2accel.rtl.intarith import SPLIT_PRODUCT_LATENCY, split_product


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
