"""The Verilated machine on a board's DRAM: the `Machine`, the `DramAdapter` and the
board's LiteDRAM controller around LiteDRAM's PHY model, in one Verilator model.

    with DramMachine(cfg, "ulx3s-85f") as m:    # generates, builds (cached) and resets
        m.load(image)                           # backdoor: straight into the bank memories
        status = m.run(program)                 # cycles, plus the DRAM's commands

The controller is `boards.dram.generate_core(board, sim=True)`: the board's
config (module, geometry, controller settings) with ``SDRAMPHYModel`` as its
PHY, so every access pays what the board's controller makes it pay: refresh,
opening and closing rows, bank conflicts, CAS latency. The core's sys clock is
the machine's clock (one clock domain): on the boards the controller's clock is
the preset's (ULX3S, 25 MHz) or its own PLL's (OrangeCrab, 48 MHz), so cycles
here are cycles of that clock. The simulated DDR3 PHY runs at 1:4 where the
ECP5's runs at 1:2 (LiteX's simulation target's choice), so OrangeCrab cycles
are the controller's at 1:4.

The memory image goes in and out through a backdoor (sim/fast/dram_harness.cpp):
the bank memories' declarations get a ``/*verilator public_flat_rw*/`` comment,
so their storage is reachable from C++, and the host copies native words to the
bank, row and column the controller maps them to (LiteDRAM's ROW_BANK_COL, see
`boards.dram.DramCore`). A whole GPT-2-small image takes a memcpy, not hundreds
of millions of port cycles. The same patch adds counters of the DFI commands the
controller issues (`COUNTERS`), which each run reports.
"""
import ctypes
import hashlib
import json
import re
import time
from pathlib import Path

from amaranth.hdl import ClockSignal, Instance, Module, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from gpt2accel.rtl.dram_adapter import DramAdapter, native_instance_ports
from gpt2accel.rtl.isa import INSTR_BITS
from gpt2accel.rtl.machine import Machine, instr_layout
from gpt2accel.rtl.machine_config import MachineConfig
from .backend import _Verilated
from .build import TOP, Design, FastBuildError, build_design

__all__ = ["COUNTERS", "DramTop", "dram_design", "patch_core", "build", "DramMachine",
           "INSTANCE"]

HARNESS = Path(__file__).with_name("dram_harness.cpp")
#: the core's instance name in the top (the Verilated members' path goes through it)
INSTANCE = "dram"
PREFIX = "Vdram"
#: the DFI commands counted (DRAM bursts for rd/wr): row opens (activate), row closes
#: of one bank (precharge), closes of every bank (precharge all, before a refresh),
#: refreshes, reads, writes, and reads or writes with auto-precharge (the
#: controller's way of closing a row when the next command in the bank's queue is for
#: another: a bank conflict, as a precharge of one bank is)
COUNTERS = ("act", "pre", "prea", "ref", "rd", "wr", "ap")
#: (ras_n, cas_n, we_n, address bit 10) of each command; None: either
_DECODE = {"act": (0, 1, 1, None), "pre": (0, 1, 0, 0), "prea": (0, 1, 0, 1),
           "ref": (0, 0, 1, None), "rd": (1, 0, 1, None), "wr": (1, 0, 0, None),
           "ap": (1, 0, None, 1)}


class DramTop(wiring.Component):
    """The machine's ports (its memory port is inside, on the DRAM) and the core's
    ``init_done``. `core`: a simulation `DramCore` (its csr.json beside its Verilog
    places the init_done register)."""

    def __init__(self, cfg, core, *, read_beats=32, write_beats=16):
        self.cfg, self.core = MachineConfig.of(cfg), core
        csr = json.loads((core.verilog.parent / "csr.json").read_text())
        #: byte address of the core's init_done register on its wb_ctrl bus
        self.init_done_addr = csr["csr_registers"]["ddrctrl_init_done"]["addr"]
        self.read_beats, self.write_beats = read_beats, write_beats
        super().__init__({"instr": In(stream.Signature(instr_layout())),
                          "busy": Out(1), "done": Out(1), "error": Out(2),
                          "cycles": Out(32), "icount": Out(32), "init_done": Out(1),
                          "mem_wr": Out(1)})

    def elaborate(self, platform):
        m = Module()
        e = self.cfg.engine
        m.submodules.machine = mach = Machine(self.cfg)
        m.submodules.adapter = ad = DramAdapter(
            addr_bits=e.addr_bits, mem_bytes=e.mem_bytes,
            native_addr_bits=self.core.addr_bits, native_bytes=self.core.data_bytes,
            read_beats=self.read_beats, write_beats=self.write_beats)
        wiring.connect(m, mach.mem, ad.machine)
        # the machine's accepted writes, which the harness counts: a write the adapter
        # took may still be on its way to the DRAM when the machine is done
        m.d.comb += self.mem_wr.eq(mach.mem.wr.valid & mach.mem.wr.ready)
        wiring.connect(m, wiring.flipped(self.instr), mach.instr)
        m.d.comb += [self.busy.eq(mach.busy), self.done.eq(mach.done),
                     self.error.eq(mach.error), self.cycles.eq(mach.cycles),
                     self.icount.eq(mach.icount)]
        nat = ad.native
        wb_done, wb_ack = Signal(), Signal()
        m.submodules[INSTANCE] = Instance(
            "litedram_core",
            i_clk=ClockSignal(), i_sim_trace=0, o_init_done=self.init_done,
            **native_instance_ports(nat),
            # the PHY model needs no init sequence (the controller leaves reset under
            # hardware control, the DFI injector's default), but the core keeps its user
            # port shut until init_done is set: one Wishbone write after reset, what the
            # board's host does once its DRAM is initialised
            i_wb_ctrl_cyc=~wb_done, i_wb_ctrl_stb=~wb_done, i_wb_ctrl_we=1,
            i_wb_ctrl_adr=self.init_done_addr >> 2, i_wb_ctrl_dat_w=1, i_wb_ctrl_sel=0xF,
            i_wb_ctrl_cti=0, i_wb_ctrl_bte=0, o_wb_ctrl_ack=wb_ack)
        with m.If(wb_ack):
            m.d.sync += wb_done.eq(1)
        return m


def patch_core(text, banks):
    """The simulation core's Verilog with its bank memories public to C++ and
    counters of the DFI commands (``gx_cnt_<name>``, `COUNTERS`) before its end."""
    for name, _ in banks:
        text, n = re.subn(rf"^(reg\s+\[\d+:0\]\s+{name}\[0:\d+\])\s*;",
                          r"\1 /*verilator public_flat_rw*/;", text, count=1, flags=re.M)
        if n != 1:
            raise FastBuildError(f"the LiteDRAM core declares no memory {name}")
    phases = sorted({int(k) for k in re.findall(r"\bsoc_ddrphy_dfi_p(\d+)_cas_n\b", text)})
    if not phases:
        raise FastBuildError("the LiteDRAM core has no DFI phases soc_ddrphy_dfi_p<n>_*")
    decls, adds = [], []
    for cmd in COUNTERS:
        ras, cas, we, a10 = _DECODE[cmd]
        terms = []
        for k in phases:
            s = f"soc_ddrphy_dfi_p{k}_"
            cond = [f"~{s}cs_n", f"{'' if ras else '~'}{s}ras_n",
                    f"{'' if cas else '~'}{s}cas_n"]
            if we is not None:
                cond.append(f"{'' if we else '~'}{s}we_n")
            if a10 is not None:
                cond.append(f"{'' if a10 else '~'}{s}address[10]")
            terms.append(f"{{63'd0, ({' & '.join(cond)})}}")
        decls.append(f"reg [63:0] gx_cnt_{cmd} /*verilator public_flat_rd*/;")
        adds.append(f"    gx_cnt_{cmd} <= gx_cnt_{cmd} + {' + '.join(terms)};")
    block = ("\n// the co-simulation's DFI command counters (sim/fast/dram.py)\n"
             + "\n".join(decls) + "\nalways @(posedge sys_clk) begin\n"
             + "\n".join(adds) + "\nend\n\n")
    at = text.rfind("endmodule")
    if at < 0:
        raise FastBuildError("the LiteDRAM core has no endmodule")
    return text[:at] + block + text[at:]


def dram_design(cfg, core, board):
    """The `Design` of `DramTop` with the patched core, for `build_design`."""
    cfg = MachineConfig.of(cfg)
    e = cfg.engine
    core_text = core.verilog.read_text()
    member = f"{TOP}__DOT__{INSTANCE}__DOT__"
    nb = core.data_bytes

    def verilog():
        from amaranth.back import verilog as back
        from gpt2accel.sim.synth.verilog import ensure_yosys
        ensure_yosys()
        top = back.convert(DramTop(cfg, core), name=TOP)
        return top + "\n" + patch_core(core_text, core.banks)

    defines = {"ROOT_HEADER": f'"{PREFIX}___024root.h"', "MEM_BYTES": e.mem_bytes,
               "INSTR_BITS": INSTR_BITS, "NATIVE_BYTES": nb, "NBANKS": len(core.banks),
               "BANK_WORDS": core.banks[0][1], "ROW_WORDS": core.row_words,
               "BEATS": max(1, e.mem_bytes // nb),
               "BANK_PTRS": " ".join(f"BANK_PTR({i}, root->{member}{name})"
                                     for i, (name, _) in enumerate(core.banks)),
               "COUNTER(n)": f"top->rootp->{member}gx_cnt_##n"}
    # the core's text determines the model, not where its config lies: a config file
    # copied elsewhere builds nothing anew
    key = hashlib.sha256(core_text.encode()).hexdigest()[:16]
    name = Path(str(board)).stem
    return Design(HARNESS, verilog, (repr(cfg), f"litedram {name} {key}"), defines,
                  packages=("gpt2accel.rtl", "gpt2accel.model", "gpt2accel.sim.fast"),
                  prefix=PREFIX, title=f"the {e.rows}x{e.cols} machine on {name}'s "
                                       f"simulated DRAM")


class _Result(ctypes.Structure):
    # mirrors `gx_result` in dram_harness.cpp
    _fields_ = [("status", ctypes.c_int32), ("error", ctypes.c_int32),
                ("cycles", ctypes.c_uint64), ("icount", ctypes.c_uint64),
                ("outside_cycles", ctypes.c_uint64), ("sim_cycles", ctypes.c_uint64),
                ("reads", ctypes.c_uint64), ("writes", ctypes.c_uint64),
                ("bad_address", ctypes.c_uint64)]


_OK, _TIMEOUT, _EARLY_DONE, _UNDRAINED = range(4)
_LIBS = {}     # path -> loaded library
_BUILT = {}    # (config, board) -> (path, build info, core)


def _load(path):
    path = str(path)
    if path not in _LIBS:
        lib = ctypes.CDLL(path)
        vp, u64 = ctypes.c_void_p, ctypes.c_uint64
        lib.gx_create.argtypes, lib.gx_create.restype = [], vp
        lib.gx_destroy.argtypes, lib.gx_destroy.restype = [vp], None
        lib.gx_mem_bytes.argtypes, lib.gx_mem_bytes.restype = [], ctypes.c_int
        lib.gx_instr_bytes.argtypes, lib.gx_instr_bytes.restype = [], ctypes.c_int
        lib.gx_dram_bytes.argtypes, lib.gx_dram_bytes.restype = [], u64
        lib.gx_total_cycles.argtypes, lib.gx_total_cycles.restype = [vp], u64
        lib.gx_progress.argtypes, lib.gx_progress.restype = [vp, ctypes.POINTER(u64)], u64
        lib.gx_dram_counters.argtypes = [vp, ctypes.POINTER(u64)]
        lib.gx_dram_counters.restype = None
        lib.gx_write.argtypes, lib.gx_write.restype = [vp, u64, vp, u64], ctypes.c_int
        lib.gx_read.argtypes, lib.gx_read.restype = [vp, u64, vp, u64], ctypes.c_int
        lib.gx_run_program.argtypes = [vp, ctypes.c_char_p, u64, u64, ctypes.POINTER(_Result)]
        lib.gx_run_program.restype = ctypes.c_int
        _LIBS[path] = lib
    return _LIBS[path]


def build(cfg, board, *, verbose=False):
    """(library path, build info, `DramCore`) of the machine of `cfg` on `board`'s
    simulated DRAM: the core generated and the model compiled once, both cached."""
    from gpt2accel.boards.dram import generate_core
    key = (repr(MachineConfig.of(cfg)), board)
    if key not in _BUILT:
        core = generate_core(board, sim=True)
        path, info = build_design(dram_design(cfg, core, board), verbose=verbose)
        _BUILT[key] = (path, info, core)
    return _BUILT[key]


class DramMachine(_Verilated):
    """One Verilated machine on `board`'s simulated DRAM (one of
    `boards.dram.BOARDS`), with `FastMachine`'s interface: `load`, `dump`, `run`,
    `progress`, `close`. `words`: machine words the DRAM holds; `load` and `dump`
    reach it through the backdoor."""
    _EXTENT = "the DRAM of {words} words"

    def __init__(self, cfg, board, *, verbose=False):
        self._h = None
        self.cfg, self.board = cfg, board
        self.path, self.build_info, self.core = build(cfg, board, verbose=verbose)
        self._attach(_load(self.path))
        self.dram_bytes = self._lib.gx_dram_bytes()
        self.words = self.dram_bytes // self.mem_bytes
        self._h = self._lib.gx_create()
        if not self._h:
            raise MemoryError(f"cannot allocate the machine on {board}'s DRAM")

    def counters(self):
        """{command: count} of the DFI commands since creation (`COUNTERS`)."""
        out = (ctypes.c_uint64 * len(COUNTERS))()
        self._lib.gx_dram_counters(self._live, out)
        return dict(zip(COUNTERS, out))

    def run(self, program, *, timeout=2_000_000):
        """Stream `program` and run to ``done``: `FastMachine.run`'s status, with
        ``dram``: {command: count} of this run (`COUNTERS`)."""
        if any(not 0 <= int(w) < 1 << INSTR_BITS for w in program):
            raise ValueError(f"instruction words must be unsigned {INSTR_BITS}-bit integers")
        words = b"".join(int(w).to_bytes(self._instr_bytes, "little") for w in program)
        res = _Result()
        before = self.counters()
        t0 = time.perf_counter()
        status = self._lib.gx_run_program(self._live, words, len(program), int(timeout),
                                          ctypes.byref(res))
        wall = time.perf_counter() - t0
        if status == _TIMEOUT:
            raise TimeoutError(f"program did not finish in {timeout} cycles")
        if status == _UNDRAINED:
            raise AssertionError("the DRAM's write commands never caught up with the machine's "
                                 f"writes after done ({res.writes} write commands this run)")
        if status == _EARLY_DONE:
            raise AssertionError("done before the program's HALT was fetched")
        after = self.counters()
        return {"error": res.error, "cycles": res.cycles, "icount": res.icount,
                "outside_cycles": res.outside_cycles, "sim_cycles": res.sim_cycles,
                "reads": res.reads, "writes": res.writes, "wall_s": wall,
                "dram": {k: after[k] - before[k] for k in COUNTERS}}
