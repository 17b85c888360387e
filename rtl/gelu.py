"""GELU by table lookup (numerics §5, `intmodel.gelu`): y = table[x + 128], int8 -> int8.

The table lives in a writable 256 x int8 memory with a load port rather than
in a ROM: the table depends on each layer's activation scales (s_fc, s_gelu),
so a ROM would tie the bitstream to one model and need one ROM per layer,
whereas a writable table is reloaded (256 beats) before each layer's MLP and
one bitstream serves every model the file format can describe. `table`, if
given, is only the power-on content.

The table is stored as words of `load_width` entries, so a memory word of
the GELU table (the vector mover loads it word by word) is one write: 256
entries load in ceil(256 / load_width) beats. Each lane looks its entry up
in a copy of the table (one read port per lane) and picks the entry's byte
out of the word it read.
"""
from amaranth.hdl import *
from amaranth.lib import wiring, stream, data
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from .vector import check_lanes, vector_layout

__all__ = ["GeluUnit", "table_load_layout", "table_words"]

#: table entries (one per int8 input)
TABLE_SIZE = 256


def table_words(load_width=1):
    """Table words of `load_width` entries (the last one padded)."""
    return -(-TABLE_SIZE // load_width)


def table_load_layout(load_width=1):
    """One table write: entry ``addr`` (= x + 128, the file's table order) gets ``data``;
    with `load_width` > 1, entries ``addr * load_width + i`` get ``data[i]``."""
    if load_width == 1:
        return data.StructLayout({"addr": unsigned(8), "data": signed(8)})
    return data.StructLayout({"addr": range(table_words(load_width)),
                              "data": data.ArrayLayout(signed(8), load_width)})


class GeluUnit(wiring.Component):
    """`lanes` int8 lookups per cycle.

    Ports:
    - ``inp``: `vector_layout(signed(8), lanes)`; ``last`` is passed through;
    - ``out``: `vector_layout(signed(8), lanes, "y")`, one beat per input beat;
    - ``load``: `table_load_layout(load_width)`, `load_width` table entries per
      beat, always ready.

    A table write takes effect for exactly the input beats transferred after
    it: while ``load.valid`` is high no input beat is taken, and beats already
    taken have read their entries (the read ports are not transparent and
    hold their data while the output stalls).

    Throughput one beat per cycle; `latency` = 1 cycle from an input beat's
    transfer to its output beat being valid (the output payload is the
    table's read register, one memory read port per lane).
    """
    latency = 1

    def __init__(self, lanes=1, table=None, load_width=1):
        try:
            self.lanes = check_lanes(lanes)
            if (not isinstance(load_width, int) or isinstance(load_width, bool)
                    or not 1 <= load_width <= TABLE_SIZE):
                raise ValueError(f"load_width must be an int in 1..{TABLE_SIZE}, got {load_width!r}")
            init = [0] * TABLE_SIZE if table is None else [int(v) for v in table]
            if len(init) != TABLE_SIZE or not all(-128 <= v <= 127 for v in init):
                raise ValueError("GELU table must hold 256 values in -128..127")
        except ValueError:
            self._MustUse__silence = True   # never elaborated: no "unused" warning
            raise
        self.init, self.load_width = init, load_width
        super().__init__({
            "inp": In(stream.Signature(vector_layout(signed(8), lanes))),
            "out": Out(stream.Signature(vector_layout(signed(8), lanes, "y"))),
            "load": In(stream.Signature(table_load_layout(load_width))),
        })

    def elaborate(self, platform):
        m = Module()
        LW = self.load_width
        words = table_words(LW)
        init = self.init + [0] * (words * LW - TABLE_SIZE)
        m.submodules.table = table = Memory(
            shape=signed(8) if LW == 1 else unsigned(8 * LW), depth=words,
            init=init if LW == 1 else [sum((v & 0xFF) << (8 * i)
                                           for i, v in enumerate(init[w * LW:(w + 1) * LW]))
                                       for w in range(words)])
        wr = table.write_port()
        rd = [table.read_port(transparent_for=()) for _ in range(self.lanes)]

        # one pipeline enable: the read registers advance only when the output
        # register is empty or being emptied, so a stalled beat keeps its data
        en = Signal()
        out_valid = Signal()
        m.d.comb += [en.eq(~out_valid | self.out.ready), self.out.valid.eq(out_valid)]
        m.d.comb += self.inp.ready.eq(en & ~self.load.valid)
        take = self.inp.valid & self.inp.ready
        last = Signal()
        with m.If(en):
            m.d.sync += [out_valid.eq(take), last.eq(self.inp.payload.last)]
        m.d.comb += self.out.payload.last.eq(last)
        for l in range(self.lanes):
            x = self.inp.payload.x[l]
            # table[x + 128]: adding 128 to an int8 flips its sign bit
            idx = Cat(x[:7], ~x[7])
            m.d.comb += rd[l].en.eq(en)
            if LW == 1:
                m.d.comb += [rd[l].addr.eq(idx), self.out.payload.y[l].eq(rd[l].data)]
            else:
                # the entry's byte within the word read, registered beside the read
                sel = Signal(range(LW), name=f"sel{l}")
                with m.If(en):
                    m.d.sync += sel.eq(idx % LW)
                m.d.comb += [rd[l].addr.eq(idx // LW),
                             self.out.payload.y[l].eq(rd[l].data.word_select(sel, 8))]

        m.d.comb += [self.load.ready.eq(1), wr.addr.eq(self.load.payload.addr),
                     wr.data.eq(self.load.payload.data), wr.en.eq(self.load.valid)]
        return m
