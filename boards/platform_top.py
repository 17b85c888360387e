"""The board-specific shell around the platform-independent `BoardTop`.

`PlatformTop(board)` (a resolved `presets.BoardMachine`) does what depends on
the board: it makes the ``sync`` clock (the oscillator directly, or a PLL
with the domain held in reset until the PLL locks), requests the
platform's ``uart`` resource and wires it to `BoardTop`'s ``rx``/``tx``
(its receiver synchronises the pin), and shows
``busy``, ``error`` and a heartbeat (about 1 Hz: the bitstream is running)
on the preset's LEDs.
"""
from amaranth.hdl import ClockDomain, Elaboratable, Module, Signal
from amaranth.lib import io
from amaranth.lib.cdc import ResetSynchronizer

__all__ = ["PlatformTop", "board_top"]


def board_top(board):
    """The `BoardTop` of a resolved preset. Built before `PlatformTop`, so a configuration
    it refuses (`ConfigError`: baud rate, timeout) is reported before any tool runs."""
    from .top import BoardTop
    p = board.preset
    return BoardTop(board.cfg, mem_words=board.mem_words, clk_hz=board.clk_hz, baud=p.baud,
                    storage=p.storage)


class PlatformTop(Elaboratable):
    """`board`: a resolved preset (`presets.BoardMachine`); `top`: its `board_top`."""

    def __init__(self, board, top):
        self.board, self.top = board, top

    def elaborate(self, platform):
        b, p = self.board, self.board.preset
        m = Module()
        self._clock(m, platform)
        m.submodules.top = top = self.top
        uart = platform.request("uart", 0, dir="-")
        m.submodules.rx_pin = rx = io.Buffer("i", uart.rx)
        m.submodules.tx_pin = tx = io.Buffer("o", uart.tx)
        # the pin is asynchronous: BoardTop's receiver synchronises it (rtl/uart.py)
        m.d.comb += [top.rx.eq(rx.i), tx.o.eq(top.tx)]

        alive = Signal()
        half_second = max(2, int(b.clk_hz) // 2)
        count = Signal(range(half_second))
        with m.If(count == half_second - 1):
            m.d.sync += [count.eq(0), alive.eq(~alive)]
        with m.Else():
            m.d.sync += count.eq(count + 1)
        requested = {}     # an RGB LED's colours are one resource: request it once
        for what, value in (("busy", top.busy), ("error", top.error), ("alive", alive)):
            led = getattr(p.leds, what)
            if led is not None:
                name, number, colour = led
                if (name, number) not in requested:
                    requested[name, number] = platform.request(name, number, dir="-")
                port = requested[name, number]
                port = getattr(port, colour) if colour else port
                m.submodules[f"led_{what}"] = buf = io.Buffer("o", port)
                m.d.comb += buf.o.eq(value)
        return m

    def _clock(self, m, platform):
        """The sync domain from the oscillator, or from the PLL once it has locked."""
        b = self.board
        if b.pll is None:
            return                    # the platform's default clock makes sync
        m.domains.sync = cd = ClockDomain("sync")
        lock = Signal()
        pin = platform.request(platform.default_clk, 0, dir="-")
        if b.preset.device.family == "ecp5":
            m.submodules.clk_pin = clkin = io.Buffer("i", pin)
            m.submodules.pll = b.pll.instance(clkin.i, cd.clk, lock)
        else:
            # the iCE40 PLL takes its input straight from the pad (SB_PLL40_PAD)
            m.submodules.pll = b.pll.instance(pin.io, cd.clk, lock)
        # no explicit constraint: nextpnr derives the PLL output's from its parameters and
        # the oscillator pin's constraint ("Derived frequency constraint ... for net clk")
        m.submodules.reset_sync = ResetSynchronizer(~lock, domain="sync")

