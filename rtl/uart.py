"""8N1 UART receiver and transmitter with byte streams, for the board's host link.

Both count `divisor` clock cycles per bit (``round(clk_hz / baud)``, see
`boards/top.py`). The receiver synchronises the pin with two flip-flops,
takes a low level as a start bit only if it is still low half a bit later
(a glitch shorter than that is ignored), then samples every data bit and
the stop bit at mid-bit. Sampling at mid-bit tolerates a clock mismatch of
roughly +-4 % over the ten bits of a frame; the board top refuses baud
errors above 2 % so both ends together stay inside that.
"""
from amaranth.hdl import *
from amaranth.lib import wiring, stream
from amaranth.lib.cdc import FFSynchronizer
from amaranth.lib.wiring import In, Out

from .config import ConfigError, refusing

__all__ = ["UartRx", "UartTx", "MIN_DIVISOR", "BITS_PER_FRAME"]

#: The receiver must see a start bit low for half a bit after synchronising
#: it (2 cycles) and still sample every bit at its middle: 4 cycles per bit is
#: the least that leaves a cycle of margin either side.
MIN_DIVISOR = 4
#: start bit, 8 data bits, stop bit
BITS_PER_FRAME = 10


def check_divisor(divisor):
    """Raise ConfigError unless `divisor` clock cycles per bit can be implemented."""
    if not isinstance(divisor, int) or isinstance(divisor, bool):
        raise ConfigError(f"UART divisor must be an int, got {divisor!r}")
    if divisor < MIN_DIVISOR:
        raise ConfigError(f"UART divisor {divisor} is below {MIN_DIVISOR} clock cycles per bit: "
                          "the receiver could not sample at mid-bit (lower the baud rate "
                          "or raise the clock)")


class UartRx(wiring.Component):
    """Receiver: pin ``rx`` -> stream ``data`` of bytes.

    A line cannot be back-pressured: ``data`` holds a byte until it is taken,
    and if the next byte completes first it is dropped and ``overrun`` pulses
    for one cycle. A missing stop bit drops the byte and pulses
    ``frame_error``; the receiver then waits for the line to go high again, so
    a held-low line (break) gives one error, not a stream of zero bytes.
    """

    def __init__(self, divisor):
        with refusing(self):
            check_divisor(divisor)
        self.divisor = divisor
        super().__init__({"rx": In(1, init=1), "data": Out(stream.Signature(8)),
                          "overrun": Out(1), "frame_error": Out(1)})

    def elaborate(self, platform):
        m = Module()
        d = self.divisor
        line = Signal(init=1)
        m.submodules.sync = FFSynchronizer(self.rx, line, init=1)
        timer = Signal(range(d))
        nbit = Signal(range(8))
        shreg = Signal(8)
        valid, byte = Signal(), Signal(8)
        m.d.comb += [self.data.valid.eq(valid), self.data.payload.eq(byte)]
        m.d.sync += [self.overrun.eq(0), self.frame_error.eq(0)]
        with m.If(self.data.ready):
            m.d.sync += valid.eq(0)

        with m.FSM():
            with m.State("IDLE"):
                with m.If(~line):
                    m.d.sync += timer.eq(d // 2 - 1)
                    m.next = "START"
            with m.State("START"):
                m.d.sync += timer.eq(timer - 1)
                with m.If(timer == 0):
                    m.d.sync += [timer.eq(d - 1), nbit.eq(0)]
                    with m.If(line):               # high again at mid-bit: a glitch
                        m.next = "IDLE"
                    with m.Else():
                        m.next = "DATA"
            with m.State("DATA"):
                m.d.sync += timer.eq(timer - 1)
                with m.If(timer == 0):
                    m.d.sync += [timer.eq(d - 1), shreg.eq(Cat(shreg[1:], line)),
                                 nbit.eq(nbit + 1)]
                    with m.If(nbit == 7):
                        m.next = "STOP"
            with m.State("STOP"):
                m.d.sync += timer.eq(timer - 1)
                with m.If(timer == 0):
                    with m.If(~line):
                        m.d.sync += self.frame_error.eq(1)
                        m.next = "BREAK"
                    with m.Else():
                        # back to IDLE at mid stop bit: the next start edge may
                        # come half a bit early without being missed
                        with m.If(valid & ~self.data.ready):
                            m.d.sync += self.overrun.eq(1)
                        with m.Else():
                            m.d.sync += [valid.eq(1), byte.eq(shreg)]
                        m.next = "IDLE"
            with m.State("BREAK"):
                with m.If(line):
                    m.next = "IDLE"
        return m


class UartTx(wiring.Component):
    """Transmitter: stream ``data`` of bytes -> pin ``tx`` (idle high).

    The frame is one shift register that refills with ones, so ``tx`` comes
    straight from a flip-flop (no glitches on the pin) and is high when idle.
    ``data.ready`` rises after the stop bit's full bit time.
    """

    def __init__(self, divisor):
        with refusing(self):
            check_divisor(divisor)
        self.divisor = divisor
        super().__init__({"data": In(stream.Signature(8)), "tx": Out(1, init=1)})

    def elaborate(self, platform):
        m = Module()
        d = self.divisor
        shreg = Signal(BITS_PER_FRAME, init=(1 << BITS_PER_FRAME) - 1)
        timer = Signal(range(d))
        left = Signal(range(BITS_PER_FRAME + 1))      # bit times still to send
        m.d.comb += self.tx.eq(shreg[0])
        with m.If(left == 0):
            m.d.comb += self.data.ready.eq(1)
            with m.If(self.data.valid):
                m.d.sync += [shreg.eq(Cat(C(0, 1), self.data.payload, C(1, 1))),
                             timer.eq(d - 1), left.eq(BITS_PER_FRAME)]
        with m.Else():
            m.d.sync += timer.eq(timer - 1)
            with m.If(timer == 0):
                m.d.sync += [shreg.eq(Cat(shreg[1:], C(1, 1))), timer.eq(d - 1),
                             left.eq(left - 1)]
        return m
