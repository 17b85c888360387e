"""UartTx / UartRx (rtl/uart.py): loopback, exact waveforms, framing errors, baud mismatch.

- tx -> rx loopback at random divisors 4..16 with random bytes and random
  gaps; the tx pin is also decoded cycle by cycle (start bit, 8 data bits
  LSB first, stop bit, each exactly `divisor` cycles; idle high);
- a bit-banged line into UartRx: bit periods off by +-3 % still decode, a
  25 % mismatch does not; a missing stop bit pulses ``frame_error`` and
  drops the byte, a long break gives one error, a one-cycle glitch is not a
  start bit, an unread byte makes the next one pulse ``overrun``.

Seeds are printed; GPT2ACCEL_SEED replays.
"""
import random

import pytest
from amaranth.hdl import Module
from amaranth.lib import wiring
from amaranth.sim import Simulator

from gpt2accel.rtl.config import ConfigError
from gpt2accel.rtl.uart import BITS_PER_FRAME, UartRx, UartTx


class _Loopback(wiring.Component):
    def __init__(self, divisor):
        self.tx, self.rx = UartTx(divisor), UartRx(divisor)
        super().__init__({})

    def elaborate(self, platform):
        m = Module()
        m.submodules.tx, m.submodules.rx = self.tx, self.rx
        m.d.comb += self.rx.rx.eq(self.tx.tx)
        return m


def _frame_bits(byte):
    return [0] + [(byte >> i) & 1 for i in range(8)] + [1]


def _decode_pin(samples, d):
    """Bytes of a pin waveform sampled every cycle; asserts every frame's exact shape."""
    out, i = [], 0
    while i < len(samples):
        if samples[i]:
            i += 1
            continue
        frame = samples[i:i + BITS_PER_FRAME * d]
        if len(frame) < BITS_PER_FRAME * d:
            raise AssertionError(f"frame at cycle {i} cut short")
        bits = [frame[k * d] for k in range(BITS_PER_FRAME)]
        assert frame == [b for b in bits for _ in range(d)], f"bits not {d} cycles wide at {i}"
        assert bits[0] == 0 and bits[-1] == 1, f"bad start/stop at {i}"
        out.append(sum(b << k for k, b in enumerate(bits[1:9])))
        i += BITS_PER_FRAME * d
    return out


def test_loopback_random_divisors(seed):
    rng = random.Random(seed)
    for divisor in rng.sample(range(4, 17), 4):
        data = [rng.randrange(256) for _ in range(12)] + [0x00, 0xFF]
        dut = _Loopback(divisor)
        got, pin, events = [], [], []

        async def source(ctx):
            for b in data:
                for _ in range(rng.choice((0, 0, rng.randint(1, 3 * divisor)))):
                    await ctx.tick()
                ctx.set(dut.tx.data.payload, b)
                ctx.set(dut.tx.data.valid, 1)
                while not (await ctx.tick().sample(dut.tx.data.ready))[2]:
                    pass
                ctx.set(dut.tx.data.valid, 0)
            for _ in range(BITS_PER_FRAME * divisor + 8):
                await ctx.tick()

        async def sink(ctx):
            while True:
                # read late sometimes, but within a byte time: never an overrun
                ready = rng.random() < 0.5
                ctx.set(dut.rx.data.ready, ready)
                _, _, v, b, tx, ovr, ferr = await ctx.tick().sample(
                    dut.rx.data.valid, dut.rx.data.payload, dut.tx.tx, dut.rx.overrun,
                    dut.rx.frame_error)
                pin.append(tx)
                if v and ready:
                    got.append(b)
                if ovr or ferr:
                    events.append((ovr, ferr))

        sim = Simulator(dut)
        sim.add_clock(1e-8)
        sim.add_testbench(sink, background=True)
        sim.add_testbench(source)
        sim.run()
        what = f"divisor {divisor}, GPT2ACCEL_SEED={seed}"
        assert pin[0] == 1 and pin[-1] == 1, what
        assert _decode_pin(pin, divisor) == data, what
        assert got == data, what
        assert events == [], what


def _run_line(divisor, line, *, read=True):
    """Drive UartRx's pin with `line` (a list of levels, one per cycle); return
    (bytes received, overrun pulses, frame_error pulses)."""
    dut = UartRx(divisor)
    got, counts = [], {"overrun": 0, "frame_error": 0}

    async def bench(ctx):
        ctx.set(dut.data.ready, read)
        for level in line + [1] * (4 * divisor):
            ctx.set(dut.rx, level)
            _, _, v, b, ovr, ferr = await ctx.tick().sample(
                dut.data.valid, dut.data.payload, dut.overrun, dut.frame_error)
            if v and read:
                got.append(b)
            counts["overrun"] += ovr
            counts["frame_error"] += ferr
        if not read and ctx.get(dut.data.valid):
            got.append(ctx.get(dut.data.payload))

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    return got, counts["overrun"], counts["frame_error"]


def _line(frames, bit_cycles, idle=3):
    """Levels of `frames` (bit lists) sent with a (fractional) bit period, idle between."""
    levels = [1] * 5
    for bits in frames:
        t0 = len(levels)
        edges = [t0 + round(k * bit_cycles) for k in range(len(bits) + 1)]
        for k, b in enumerate(bits):
            levels += [b] * (edges[k + 1] - edges[k])
        levels += [1] * idle
    return levels


def test_baud_mismatch_tolerance(seed):
    rng = random.Random(seed + 1)
    d = 16
    data = [rng.randrange(256) for _ in range(10)]
    frames = [_frame_bits(b) for b in data]
    for off in (-0.03, 0.03):
        assert _run_line(d, _line(frames, d * (1 + off), idle=0)) == (data, 0, 0), \
            f"{off:+.0%}, GPT2ACCEL_SEED={seed}"
    got, _, ferr = _run_line(d, _line(frames, d * 1.25))
    assert got != data or ferr, "a 25 % slower sender decoded without a fault"


def test_framing_error_break_glitch_and_overrun(seed):
    rng = random.Random(seed + 2)
    d = rng.randint(4, 12)
    a, b = rng.randrange(256), rng.randrange(256)
    bad_stop = _frame_bits(a)[:-1] + [0]
    # missing stop bit: the byte is dropped, one error; the next byte is fine
    line = _line([bad_stop], d) + [1] * d + _line([_frame_bits(b)], d)
    assert _run_line(d, line) == ([b], 0, 1)
    # a break (30 bit times low): one error, then normal reception
    line = [1] * 5 + [0] * (30 * d) + [1] * (2 * d) + _line([_frame_bits(b)], d)
    assert _run_line(d, line) == ([b], 0, 1)
    # a one-cycle low glitch is no start bit
    line = [1] * 5 + [0] + [1] * (2 * d) + _line([_frame_bits(b)], d)
    assert _run_line(d, line) == ([b], 0, 0)
    # two bytes, nothing read: the first is kept, the second is an overrun
    line = _line([_frame_bits(a), _frame_bits(b)], d)
    assert _run_line(d, line, read=False) == ([a], 1, 0)


@pytest.mark.parametrize("cls", [UartRx, UartTx])
@pytest.mark.parametrize("divisor, match", [(3, "divisor 3 is below 4"),
                                            (4.0, "must be an int"), (True, "must be an int")])
def test_bad_divisor_refused(cls, divisor, match):
    with pytest.raises(ConfigError, match=match):
        cls(divisor)
