"""The DRAM's init sequence, replayed in hardware over the LiteDRAM core's ``wb_ctrl``.

A generated core without a soft CPU (boards/dram.py) leaves the DRAM
uninitialised and its user port shut: LiteX's BIOS would write the init
sequence to the core's control registers. `DramInit` does it instead, from
a table of Wishbone writes (`boards.dram.init_writes`: word address, value,
cycles to wait after it) in a small ROM, one write at a time, after reset.
Its last write sets the core's ``init_done``, which opens the user port and,
through the board top, lets the host bridge reach memory (before that a
memory request gets `Fault.MEMORY`).
"""
from amaranth.hdl import *
from amaranth.lib import data, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

__all__ = ["DramInit", "WishboneWrite"]


class WishboneWrite(wiring.Signature):
    """The writing half of a classic Wishbone bus (32-bit data, word addresses), as a
    master drives it."""

    def __init__(self, addr_bits=30):
        super().__init__({"cyc": Out(1), "stb": Out(1), "we": Out(1),
                          "adr": Out(addr_bits), "dat_w": Out(32), "sel": Out(4),
                          "ack": In(1)})


class DramInit(wiring.Component):
    """``bus``: the core's ``wb_ctrl`` (writes only); ``done``: the table has been
    written (high from then on). `writes`: (word address, value, wait cycles)."""

    def __init__(self, writes):
        writes = [tuple(int(x) for x in w) for w in writes]
        if not writes:
            raise ValueError("an init sequence of no writes")
        self.writes = writes
        wait_max = max(w[2] for w in writes)
        self._entry = data.StructLayout({"adr": 30, "dat": 32,
                                         "wait": range(wait_max + 1)})
        super().__init__({"bus": Out(WishboneWrite()), "done": Out(1)})

    def elaborate(self, platform):
        m = Module()
        n = len(self.writes)
        m.submodules.rom = rom = Memory(
            shape=self._entry, depth=n,
            init=[{"adr": a, "dat": d, "wait": w} for a, d, w in self.writes])
        rd = rom.read_port()
        idx = Signal(range(n + 1))
        wait = Signal.like(rd.data.wait)
        entry = Signal(self._entry)          # the ROM's word, registered before the bus
        bus = self.bus
        m.d.comb += [rd.addr.eq(idx), bus.we.eq(1), bus.sel.eq(0xF),
                     bus.adr.eq(entry.adr), bus.dat_w.eq(entry.dat)]
        with m.FSM():
            with m.State("FETCH"):
                m.next = "LATCH"            # the ROM's synchronous read
            with m.State("LATCH"):
                m.d.sync += entry.eq(rd.data)
                m.next = "WRITE"
            with m.State("WRITE"):
                m.d.comb += [bus.cyc.eq(1), bus.stb.eq(1)]
                with m.If(bus.ack):
                    m.d.sync += [wait.eq(entry.wait), idx.eq(idx + 1)]
                    m.next = "WAIT"
            with m.State("WAIT"):
                with m.If(wait != 0):
                    m.d.sync += wait.eq(wait - 1)
                with m.Elif(idx == n):
                    m.next = "DONE"
                with m.Else():
                    m.next = "FETCH"
            with m.State("DONE"):
                m.d.comb += self.done.eq(1)
        return m
