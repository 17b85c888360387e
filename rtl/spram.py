"""Single-port word storage in the iCE40UP5K's SPRAM (SB_SPRAM256KA), with a behavioural twin.

`SpramStorage(width, depth)` is a single-port RAM of `width`-bit words:
``addr``, ``wdata``, ``wen`` (one enable per byte) and ``ren`` in, ``rdata``
out. ``rdata`` is the word read by the last cycle with ``ren`` and stays
until the next read — the semantics of a `lib.memory.Memory` read port with
an enable — so `OnChipMemory` treats both storages alike. A cycle may read
or write, not both: the caller arbitrates (writes first).

On an iCE40 platform the words are tiled over SB_SPRAM256KA macros (16K x 16
each: width/16 columns by depth/16K rows); the macro's ``DATAOUT`` is only
defined the cycle after a read, so it is latched then and the latch serves
later cycles. Elsewhere (simulation, other families) a `lib.memory.Memory`
with the same read-or-write contract stands in; it is the model that the
simulation tests check the memory's protocol against.
"""
from amaranth.hdl import *
from amaranth.lib import wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from .config import ConfigError, refusing

__all__ = ["SpramStorage", "SPRAM_WORDS", "SPRAM_BITS", "SPRAM_MACROS"]

SPRAM_WORDS = 16384     #: words of one SB_SPRAM256KA
SPRAM_BITS = 16         #: its word width
SPRAM_MACROS = 4        #: macros on an iCE40UP5K


def _is_ice40(platform):
    return getattr(platform, "family", None) == "iCE40"


class SpramStorage(wiring.Component):
    """`depth` words of `width` bits (width a multiple of 16, depth of 16K) in SPRAM.

    `model_words` (a power of two) sizes the behavioural twin only (default:
    `depth`): each of its words stands for every address equal to it modulo
    `model_words`. Formal harnesses keep a few, since their properties concern the
    handshakes around the storage, never which word an address selects (16K words
    are too many to solve)."""

    def __init__(self, width, depth, *, model_words=None):
        with refusing(self):
            macros = self.macros_for(width, depth)
            if model_words is None:
                model_words = depth
            if (not isinstance(model_words, int) or not 1 <= model_words <= depth
                    or model_words & (model_words - 1)):
                raise ConfigError(f"SPRAM model of {model_words!r} words: must be a power of "
                                  f"two from 1 to the depth ({depth})")
        self.width, self.depth, self.macros = width, depth, macros
        self.model_words = model_words
        super().__init__({"addr": In(range(depth)), "wdata": In(width), "wen": In(width // 8),
                          "ren": In(1), "rdata": Out(width)})

    @staticmethod
    def macros_for(width, depth):
        """SB_SPRAM256KA macros that `depth` words of `width` bits take; `ConfigError`
        if the macros cannot hold that shape (e.g. for a caller checking a config
        before it builds the storage)."""
        if width % SPRAM_BITS or depth % SPRAM_WORDS:
            raise ConfigError(f"SPRAM storage of {depth} x {width} bits: the width must be a "
                              f"multiple of {SPRAM_BITS} and the depth of {SPRAM_WORDS}")
        macros = (width // SPRAM_BITS) * (depth // SPRAM_WORDS)
        if macros > SPRAM_MACROS:
            raise ConfigError(f"SPRAM storage of {depth} x {width} bits needs {macros} "
                              f"SB_SPRAM256KA, an iCE40UP5K has {SPRAM_MACROS}")
        return macros

    def elaborate(self, platform):
        m = Module()
        if not _is_ice40(platform):
            m.submodules.mem = mem = Memory(shape=unsigned(self.width), depth=self.model_words,
                                           init=[])
            rp, wp = mem.read_port(domain="sync"), mem.write_port(granularity=8)
            m.d.comb += [rp.addr.eq(self.addr), rp.en.eq(self.ren), self.rdata.eq(rp.data),
                         wp.addr.eq(self.addr), wp.data.eq(self.wdata), wp.en.eq(self.wen)]
            return m
        cols, rows = self.width // SPRAM_BITS, self.depth // SPRAM_WORDS
        bank = self.addr[14:] if rows > 1 else C(0)
        read_bank, was_read = Signal.like(bank), Signal()
        m.d.sync += was_read.eq(self.ren)
        with m.If(self.ren):
            m.d.sync += read_bank.eq(bank)
        latch, fresh = Signal(self.width), Signal(self.width)
        for r in range(rows):
            for c in range(cols):
                out = Signal(SPRAM_BITS, name=f"spram_{r}_{c}_out")
                wen = self.wen[2 * c:2 * c + 2]
                sel = bank == r
                m.submodules[f"spram_{r}_{c}"] = Instance(
                    "SB_SPRAM256KA",
                    i_ADDRESS=self.addr[:14], i_DATAIN=self.wdata[SPRAM_BITS * c:SPRAM_BITS * (c + 1)],
                    # MASKWREN enables nibbles: two per byte strobe
                    i_MASKWREN=Cat(wen[0], wen[0], wen[1], wen[1]),
                    i_WREN=sel & wen.any(), i_CHIPSELECT=sel & (self.ren | wen.any()),
                    i_CLOCK=ClockSignal(), i_STANDBY=0, i_SLEEP=0, i_POWEROFF=1,
                    o_DATAOUT=out)
                with m.If(read_bank == r):
                    m.d.comb += fresh[SPRAM_BITS * c:SPRAM_BITS * (c + 1)].eq(out)
        with m.If(was_read):
            m.d.sync += latch.eq(fresh)
        m.d.comb += self.rdata.eq(Mux(was_read, fresh, latch))
        return m
