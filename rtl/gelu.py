"""GELU by table lookup (numerics §5, `intmodel.gelu`): y = table[x + 128], int8 -> int8.

The table lives in a writable 256 x int8 memory with a load port rather than
in a ROM: the table depends on each layer's activation scales (s_fc, s_gelu),
so a ROM would tie the bitstream to one model and need one ROM per layer,
whereas a writable table is reloaded (256 beats) before each layer's MLP and
one bitstream serves every model the file format can describe. `table`, if
given, is only the power-on content.
"""
from amaranth.hdl import *
from amaranth.lib import wiring, stream, data
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from .vector import check_lanes, vector_layout

__all__ = ["GeluUnit", "table_load_layout"]

#: table entries (one per int8 input)
TABLE_SIZE = 256


def table_load_layout():
    """One table write: entry ``addr`` (= x + 128, the file's table order) gets ``data``."""
    return data.StructLayout({"addr": unsigned(8), "data": signed(8)})


class GeluUnit(wiring.Component):
    """`lanes` int8 lookups per cycle.

    Ports:
    - ``inp``: `vector_layout(signed(8), lanes)`; ``last`` is passed through;
    - ``out``: `vector_layout(signed(8), lanes, "y")`, one beat per input beat;
    - ``load``: `table_load_layout`, one table entry per beat, always ready.

    A table write takes effect for exactly the input beats transferred after
    it: while ``load.valid`` is high no input beat is taken, and beats already
    taken have read their entries (the read ports are not transparent and
    hold their data while the output stalls).

    Throughput one beat per cycle; `latency` = 1 cycle from an input beat's
    transfer to its output beat being valid (the output payload is the
    table's read register, one memory read port per lane).
    """
    latency = 1

    def __init__(self, lanes=1, table=None):
        try:
            self.lanes = check_lanes(lanes)
            init = [0] * TABLE_SIZE if table is None else [int(v) for v in table]
            if len(init) != TABLE_SIZE or not all(-128 <= v <= 127 for v in init):
                raise ValueError("GELU table must hold 256 values in -128..127")
        except ValueError:
            self._MustUse__silence = True   # never elaborated: no "unused" warning
            raise
        self.init = init
        super().__init__({
            "inp": In(stream.Signature(vector_layout(signed(8), lanes))),
            "out": Out(stream.Signature(vector_layout(signed(8), lanes, "y"))),
            "load": In(stream.Signature(table_load_layout())),
        })

    def elaborate(self, platform):
        m = Module()
        m.submodules.table = table = Memory(shape=signed(8), depth=TABLE_SIZE, init=self.init)
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
            m.d.comb += [rd[l].addr.eq(Cat(x[:7], ~x[7])), rd[l].en.eq(en),
                         self.out.payload.y[l].eq(rd[l].data)]

        m.d.comb += [self.load.ready.eq(1), wr.addr.eq(self.load.payload.addr),
                     wr.data.eq(self.load.payload.data), wr.en.eq(self.load.valid)]
        return m
