"""Board presets: which board, which array, which clock, which model each bitstream is for.

    preset = PRESETS["ulx3s-85f"]
    board = preset.resolve(rows=8, cols=8)      # validated: BoardMachine(cfg, mem_words, ...)

A preset names an amaranth-boards platform, the systolic array, the machine
clock (a PLL makes it when it is not the board oscillator's), the UART baud
rate, and the model the on-chip memory is sized for. The whole machine's
memory holds that model's whole image (weights, tables, KV caches,
activations), exactly `ModelCompiler(...).end` words; a MATMUL-only machine
(``ops=("matmul",)``, the iCE40UP5K, where the whole machine does not fit)
holds the linear layers' weights for `sim.host.offload.OffloadDriver`. Weights
are loaded over the UART after configuration (docs/architecture.md "Board
top and host bridge"). `resolve` checks what can be checked before a long
build: the model must map onto the array (the compiler's checks: widths,
sequence length, the instruction fields), its memory must fit the chip's RAM (SPRAM alone when the
preset stores words there), the array's multipliers its DSPs, the PLL must
reach the clock and the UART's baud rate must divide it; each failure is a
`PresetError` naming the numbers.

Every figure of a chip here (`DEVICES`) is the device's capacity as
nextpnr reports it ("available" in its --report JSON).
"""
from dataclasses import dataclass, field, replace
from functools import cached_property

from amaranth.build import Attrs, Pins, Resource, Subsignal
from amaranth_boards.icebreaker import ICEBreakerPlatform
from amaranth_boards.orangecrab_r0_2 import OrangeCrabR0_2_85FPlatform
from amaranth_boards.resources import UARTResource
from amaranth_boards.ulx3s import ULX3S_85F_Platform


__all__ = ["PresetError", "Device", "DEVICES", "Preset", "BoardMachine", "PRESETS",
           "get_preset", "load_model"]


class PresetError(ValueError):
    """A preset (or its overrides) that cannot be built; the message names the numbers."""


@dataclass(frozen=True)
class Device:
    """A chip's capacity in nextpnr's cell types. `bram_bits`: data bits per block RAM
    (without parity); `spram`: iCE40UP single-port RAMs of 256 Kbit."""
    family: str           # "ecp5" | "ice40"
    logic: int            # TRELLIS_COMB (LUT4 or carry half) / ICESTORM_LC (LUT4 + FF)
    ff: int
    dsp: int              # MULT18X18D / ICESTORM_DSP (SB_MAC16)
    bram: int             # DP16KD / ICESTORM_RAM (SB_RAM40_4K)
    bram_bits: int
    spram: int = 0

    @property
    def memory_bytes(self):
        """Every on-chip RAM bit as bytes: the most a model image could occupy."""
        return (self.bram * self.bram_bits + self.spram * 256 * 1024) // 8


DEVICES = {
    "LFE5U-85F": Device("ecp5", logic=83640, ff=83640, dsp=156, bram=208, bram_bits=16384),
    "iCE40UP5K": Device("ice40", logic=5280, ff=5280, dsp=8, bram=30, bram_bits=4096, spram=4),
}


class OrangeCrab85FUART(OrangeCrabR0_2_85FPlatform):
    """OrangeCrab r0.2 (85F) with a UART on its Feather header. The board has no
    USB-serial chip (its USB goes straight to the FPGA), so the host link is a 3.3 V
    USB-serial adapter on header pins 0 (RX, an FPGA input) and 1 (TX, an FPGA
    output), the Feather form factor's RX/TX pins."""
    resources = OrangeCrabR0_2_85FPlatform.resources + [
        UARTResource(0, rx="0", tx="1", conn=("io", 0), attrs=Attrs(IO_TYPE="LVCMOS33")),
        # the DDR3L (MT41K64M16: address bits A0-A12) with board revision 0.2's pins
        # and I/O standards as LiteX's gsd_orangecrab platform has them, the pins its
        # DRAM is run with; amaranth-boards' "ddr3" resource differs from them (its
        # bank address pins P5 N3 M3 against D6 B7 A6, its strobe pairs), so it is
        # not used. The differential pairs (clock, strobes) are named by
        # their true pin, the complement implied by the SSTL135D standard; "vccio" and
        # "gnd" are I/O pins the board ties to the DRAM's supply and ground planes
        # (driven high and low, as LiteX's target does)
        Resource("ddram", 0,
                 Subsignal("a", Pins("C4 D2 D3 A3 A4 D4 C3 B2 B1 D1 A7 C2 B6", dir="o"),
                           Attrs(IO_TYPE="SSTL135_I")),
                 Subsignal("ba", Pins("D6 B7 A6", dir="o"), Attrs(IO_TYPE="SSTL135_I")),
                 Subsignal("ras_n", Pins("C12", dir="o"), Attrs(IO_TYPE="SSTL135_I")),
                 Subsignal("cas_n", Pins("D13", dir="o"), Attrs(IO_TYPE="SSTL135_I")),
                 Subsignal("we_n", Pins("B12", dir="o"), Attrs(IO_TYPE="SSTL135_I")),
                 Subsignal("cs_n", Pins("A12", dir="o"), Attrs(IO_TYPE="SSTL135_I")),
                 Subsignal("dm", Pins("D16 G16", dir="o"), Attrs(IO_TYPE="SSTL135_I")),
                 Subsignal("dq", Pins("C17 D15 B17 C16 A15 B13 A17 A13 "
                                      "F17 F16 G15 F15 J16 C18 H16 F18", dir="io"),
                           Attrs(IO_TYPE="SSTL135_I", TERMINATION="OFF")),
                 Subsignal("dqs_p", Pins("B15 G18", dir="io"),
                           Attrs(IO_TYPE="SSTL135D_I", TERMINATION="OFF", DIFFRESISTOR="100")),
                 Subsignal("clk_p", Pins("J18", dir="o"), Attrs(IO_TYPE="SSTL135D_I")),
                 Subsignal("cke", Pins("D18", dir="o"), Attrs(IO_TYPE="SSTL135_I")),
                 Subsignal("odt", Pins("C13", dir="o"), Attrs(IO_TYPE="SSTL135_I")),
                 Subsignal("reset_n", Pins("L18", dir="o"), Attrs(IO_TYPE="SSTL135_I")),
                 Subsignal("vccio", Pins("K16 D17 K15 K17 B18 C6", dir="o"),
                           Attrs(IO_TYPE="SSTL135_II")),
                 Subsignal("gnd", Pins("L15 L16", dir="o"), Attrs(IO_TYPE="SSTL135_II")),
                 Attrs(SLEWRATE="FAST"))]


@dataclass(frozen=True)
class LEDs:
    """Which LED shows what: (resource name, number, subsignal or None)."""
    busy: tuple
    error: tuple
    alive: tuple = None   # blinks about once a second: the bitstream is running


@dataclass(frozen=True)
class Preset:
    name: str
    platform: type        # an amaranth-boards platform class
    rows: int
    cols: int
    clk_hz: float         # the machine's clock; a PLL makes it unless it is the oscillator's
    baud: int
    model: str            # shipped model the memory is sized for
    leds: LEDs
    notes: str = ""
    uart: str = "the board's USB-serial chip"
    build_args: dict = field(default_factory=dict)   # extra toolchain overrides
    #: nextpnr's placer (``--placer``); None: its default, the analytical "heap"
    placer: str = None
    #: None: the whole machine, the model's whole image in memory (`sim.host.driver.Driver`);
    #: ("matmul",): a MATMUL-only machine holding the linear layers' weights, the rest of
    #: the model on the host (`sim.host.offload.OffloadDriver`)
    ops: tuple = None
    storage: str = "bram"      # "spram": the iCE40UP's single-port RAMs (rtl/spram.py)
    mem_words: int = None      # None: exactly what the model needs
    mem_bytes: int = None      # memory word width; None: the engine's default, 2*cols
    #: "dram": the board's external DRAM behind its LiteDRAM controller
    #: (boards/litedram/<name>.yml); the machine runs in the controller's clock
    #: (`clk_hz` is the config's sys_clk_freq) and the memory is the DRAM's
    dram: str = None
    #: the bridge's CHECKSUM unit (the host's checked, resumable load)
    checksum: bool = True

    @property
    def device_name(self):
        return self.platform.device

    @property
    def device(self):
        return DEVICES[self.platform.device]

    @property
    def oscillator_hz(self):
        plat = self.platform()
        return plat.lookup(plat.default_clk).clock.frequency

    def summary(self):
        """One line: chip, array, what machine it is for which model, where its memory is,
        clock."""
        ram = {"spram": "SPRAM", "dram": "external DRAM"}.get(self.storage, "block RAM")
        if self.ops is None:
            what = f"the whole machine, the {self.model} model's whole image in {ram}"
        else:
            what = (f"a {'+'.join(o.upper() for o in self.ops)}-only co-processor for the "
                    f"{self.model} model's linear layers (their weights in {ram}; the rest "
                    f"of the model runs on the host)")
        return (f"{self.name}: {self.device_name}, {self.rows}x{self.cols} array, {what}, "
                f"{self.clk_hz / 1e6:g} MHz")

    def resolve(self, rows=None, cols=None, clk_hz=None):
        """The machine this preset (with overrides) builds, validated; `PresetError` if
        it cannot fit. On a whole machine, other columns keep the preset's memory word
        where it is a word of theirs (at least two bytes a column, a whole number of
        columns), else take their default (2*cols)."""
        from gpt2accel.rtl.config import ConfigError, EngineConfig
        # None is "the preset's"; 0 is a request like any other, refused below
        cols = self.cols if cols is None else cols
        word = self.mem_bytes
        if self.ops is None and word is not None:
            try:
                EngineConfig(cols=cols, mem_bytes=word)
            except ConfigError:                   # not a word of these columns
                word = None                       # (bad columns are refused below)
        p = replace(self, rows=self.rows if rows is None else rows, cols=cols,
                    clk_hz=self.clk_hz if clk_hz is None else clk_hz, mem_bytes=word)
        return BoardMachine(p)


class BoardMachine:
    """A resolved preset: the machine config, its memory depth and the PLL, checked."""

    def __init__(self, preset: Preset):
        from gpt2accel.sim.host.compiler import ModelCompiler
        from gpt2accel.sim.host.driver import machine_config
        self.preset = p = preset
        where = f"board {p.name} ({p.device_name}), {p.rows}x{p.cols} array"
        for name in ("rows", "cols"):
            v = getattr(p, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise PresetError(f"{where}: {name} must be a whole number of at least 1, "
                                  f"got {v!r}")
        if isinstance(p.clk_hz, bool) or not isinstance(p.clk_hz, (int, float)) \
                or not p.clk_hz > 0:
            raise PresetError(f"{where}: the clock must be a positive number of Hz, "
                              f"got {p.clk_hz!r}")
        self.q = load_model(p.model)
        try:
            if p.ops is None:
                self.cfg = machine_config(self.q, p.rows, p.cols, mem_bytes=p.mem_bytes)
                words = ModelCompiler(self.cfg, self.q, self.cfg.engine.max_m,
                                      1 << self.cfg.engine.addr_bits).end
            else:
                from gpt2accel.sim.host.offload import offload_words
                cfg = machine_config(self.q, p.rows, p.cols, ops=p.ops, mem_bytes=p.mem_bytes)
                # addresses as wide as the preset's memory, whose size is checked below
                bits = max(8, ((p.mem_words or 1 << 16) - 1).bit_length())
                self.cfg = replace(cfg, engine=replace(cfg.engine, addr_bits=bits))
                words = offload_words(self.cfg, self.q)
        except ValueError as e:       # CompileError, ConfigError are ValueErrors
            raise PresetError(f"{where}: the {p.model} model does not map onto it: {e}") from None
        self.need_words = words
        self.mem_words = p.mem_words or words
        if p.storage == "dram":
            self._dram_memory(where)
        else:
            self._check_memory(where)
        # one multiplier per processing element at least (the requantiser needs more)
        if p.rows * p.cols > p.device.dsp:
            raise PresetError(f"{where}: {p.rows * p.cols} processing elements need as many "
                              f"multipliers, the {p.device_name} has {p.device.dsp} DSP blocks")
        self.pll = self._pll(where)
        self.clk_hz = self.pll.fout if self.pll else p.clk_hz
        # the UART's divisor at the clock the PLL makes: a build refused by the board top
        # only after the tools were looked for would report a missing tool instead
        from gpt2accel.rtl.config import ConfigError
        from .top import uart_divisor
        try:
            uart_divisor(self.clk_hz, p.baud)
        except ConfigError as e:
            raise PresetError(f"{where}: UART: {e}") from None

    def _check_memory(self, where):
        p, dev, mb = self.preset, self.preset.device, self.cfg.engine.mem_bytes
        what = "memory image" if p.ops is None else "linear layers' weights (offload)"
        if self.need_words > self.mem_words:
            raise PresetError(f"{where}: the {p.model} model's {what} needs "
                              f"{self.need_words:,} words of {mb} bytes, the preset's memory "
                              f"has {self.mem_words:,}")
        spram = p.storage == "spram"
        have = dev.spram * 256 * 1024 // 8 if spram else dev.memory_bytes
        if self.mem_words * mb > have:
            raise PresetError(
                f"{where}: the {p.model} model's {what} needs {self.mem_words * mb:,} bytes "
                f"({self.mem_words:,} words of {mb} bytes), the {p.device_name} has "
                f"{have:,} bytes of {'SPRAM' if spram else 'on-chip RAM in all'}")

    def _dram_memory(self, where):
        """The DRAM's words (as many as the machine's addresses reach) and the core's
        native port; the image must fit."""
        from . import dram
        p, mb = self.preset, self.cfg.engine.mem_bytes
        try:
            dram_words = dram.dram_bytes(p.dram) // mb
        except (dram.DramConfigError, dram.DramGenError) as e:
            raise PresetError(f"{where}: DRAM: {e}") from None
        self.dram_bytes = dram_words * mb
        self.mem_words = min(dram_words, 1 << self.cfg.engine.addr_bits)
        if self.need_words > self.mem_words:
            raise PresetError(f"{where}: the {p.model} model's memory image needs "
                              f"{self.need_words * mb:,} bytes, the DRAM holds "
                              f"{self.mem_words * mb:,}")

    def _pll(self, where):
        """None when the oscillator is the machine's clock, else the PLL's settings."""
        p = self.preset
        if p.storage == "dram":
            return None       # the LiteDRAM core makes its own clocks (boards/litedram)
        if p.clk_hz == p.oscillator_hz:
            return None
        from .pll import PLLError, ecp5_pll, ice40_pll
        make = ecp5_pll if p.device.family == "ecp5" else ice40_pll
        try:
            return make(p.oscillator_hz, p.clk_hz)
        except PLLError as e:
            raise PresetError(f"{where}: clock: {e}") from None

    @cached_property
    def decode_cycles(self):
        """Exact device cycles of one decode token. Whole machine: the model's decode
        program at the last position (the longest attention; `program_cycles`, as
        `bench model` times decode). MATMUL-only: the linear layers' MATMUL programs of
        one token (`_offload_token_cycles`); the host's share and the UART are extra."""
        if self.preset.ops is not None:
            return _offload_token_cycles(self.cfg, self.q, self.mem_words)
        import numpy as np
        from gpt2accel.sim.host.compiler import ModelCompiler
        from gpt2accel.sim.host.driver import _ids_memory
        from gpt2accel.sim.cycles.program import program_cycles
        comp = ModelCompiler(self.cfg, self.q, self.cfg.engine.max_m, self.mem_words)
        pos = self.q.config.n_positions - 1
        ids = np.zeros(1, np.int64)
        cycles, _ = program_cycles(self.cfg, comp.program(1, pos), mem=_ids_memory(comp, ids))
        return cycles

    def describe(self):
        p = self.preset
        clock = (f"{self.clk_hz / 1e6:g} MHz (PLL from {p.oscillator_hz / 1e6:g} MHz)"
                 if self.pll else f"{self.clk_hz / 1e6:g} MHz (oscillator)")
        if p.storage == "dram":
            clock = (f"{self.clk_hz / 1e6:g} MHz (the DRAM controller's"
                     + (", oscillator)" if self.clk_hz == p.oscillator_hz else
                        f", its PLL from {p.oscillator_hz / 1e6:g} MHz)"))
        return (f"{p.name}: {p.device_name}, {p.rows}x{p.cols} array, model {p.model}, "
                f"memory {self.mem_words:,} words x {self.cfg.engine.mem_bytes} bytes"
                f"{' of external DRAM' if p.storage == 'dram' else ''}, "
                f"clock {clock}, UART {p.baud} baud ({p.uart})")


class _CycleModelBackend:
    """A `driver.Backend` that runs nothing: each program's status is its exact cycle
    count (`program_cycles`) and memory reads are zeros. The MATMUL programs of a
    token depend on the shapes only, so driving `OffloadDriver` with it gives the
    device's cycles per token."""
    name = "cycle-model"

    def open(self, cfg, mem_words):
        import numpy as np
        self.cfg, self.words = cfg, np.zeros((mem_words, cfg.engine.mem_bytes), np.uint8)

    def load(self, image, addr=0):
        pass

    def dump(self, addr=0, n=None):
        return self.words[addr:addr + (len(self.words) - addr if n is None else n)]

    def run(self, program):
        from gpt2accel.sim.cycles.program import program_cycles
        return {"error": 0, "cycles": program_cycles(self.cfg, program)[0],
                "icount": len(program), "wall_s": 0.0}

    def close(self):
        pass


def _offload_token_cycles(cfg, qmodel, mem_words):
    from gpt2accel.sim.host.offload import OffloadDriver
    drv = OffloadDriver(qmodel, cfg, _CycleModelBackend(), mem_words=mem_words)
    drv.prefill([0])                 # one token: the same MATMULs as a decode step
    return drv.last["cycles"]


def load_model(name):
    """The integer model of a shipped model, by name."""
    from gpt2accel.model import shipped_model_dir
    from gpt2accel.model.quant import QUANT_FILENAME, QuantGPT2
    path = shipped_model_dir(name) / QUANT_FILENAME
    if not path.is_file():
        raise PresetError(f"model {name!r}: no shipped integer model at {path}")
    return QuantGPT2.load(path)


_RGB = "rgb_led"

PRESETS = {p.name: p for p in [
    # 2x2 (6,944 LCs, 131 %) does not fit; 2x1 did (words stay 4 bytes: SPRAM is 16 bits
    # wide) until the pipelined requantiser and the prefetching controller (5,328 LCs,
    # 100.9 %); 1x1 fits (5,079 LCs, 96.2 %) and decodes in the same cycles (98,688 vs
    # 98,744 per token: a one-row MATMUL streams W at the port's width on either).
    # 30 MHz from the PLL (12 MHz x 80 / 32), below the 30.38 MHz nextpnr measures
    # (docs/performance.md "iCE40UP5K (iCEBreaker): what fits")
    Preset("icebreaker", ICEBreakerPlatform, rows=1, cols=1, clk_hz=30e6, baud=1_000_000,
           model="tiny", ops=("matmul",), storage="spram", mem_words=32768, mem_bytes=4,
           # no room for CHECKSUM's unit (~235 logic cells): its loads are plain WRITEs
           checksum=False,
           leds=LEDs(busy=("led", 1, None), error=("led", 0, None)),
           notes="FTDI FT2232H USB-serial; 12 MHz oscillator, 30 MHz from the PLL; the whole "
                 "machine does not fit the iCE40UP5K: a MATMUL co-processor for the linear "
                 "layers"),
    # A 4x4 array on 16-byte words: decode streams the weights at the port's width,
    # so it takes the 8x8's cycles or fewer (tiny at 127: 11,181 against 11,226;
    # microGPT at 15: 981 against 997) with 56 fewer multipliers and a sixth less
    # logic, and it routes where the whole 8x8 machine no longer does (router2
    # diverged at 66 % of the LUTs); prefill, bound by the MACs, is 3x slower per
    # token (docs/performance.md "Round 7"). Clocks below the measured Fmax of the
    # whole machine, so that a build meets timing and the board runs as built: the
    # OrangeCrab's 68 MHz (48 x 17 / 12 from its PLL) met at 73.40 MHz (ea59e9b,
    # docs/performance.md "Round 9").
    # The ULX3S's block-RAM machine routes with nextpnr's electrostatic placer: with
    # the default analytical one router2 stalled at 420-500 overused wires in every
    # build since Round 7; placed by "static" it routed in 83 iterations, 45.18 MHz
    # after routing at the 40 MHz constraint (25 x 8 / 5 from the PLL), docs/performance.md
    # "Round 11".
    Preset("ulx3s-85f", ULX3S_85F_Platform, rows=4, cols=4, mem_bytes=16, clk_hz=40e6,
           baud=1_000_000, model="tiny", placer="static",
           leds=LEDs(busy=("led", 0, None), error=("led", 1, None), alive=("led", 7, None)),
           notes="FTDI FT231X USB-serial; 25 MHz oscillator, 40 MHz from the PLL; speed "
                 "grade 6 (the slowest)"),
    Preset("orangecrab-85f", OrangeCrab85FUART, rows=4, cols=4, mem_bytes=16, clk_hz=68e6,
           baud=1_000_000, model="tiny",
           leds=LEDs(busy=(_RGB, 0, "g"), error=(_RGB, 0, "r"), alive=(_RGB, 0, "b")),
           uart="a 3.3 V USB-serial adapter on Feather header pins 0 (RX) and 1 (TX)",
           notes="48 MHz oscillator; no USB-serial chip"),
]}


#: --memory: where the machine's memory is
MEMORIES = ("bram", "dram")


def get_preset(name, memory="bram"):
    """The preset `name`; ``memory="dram"``: the same board with its external DRAM
    (`dram_preset`)."""
    if name not in PRESETS:
        raise PresetError(f"unknown board {name!r} (presets: {', '.join(PRESETS)})")
    if memory not in MEMORIES:
        raise PresetError(f"unknown memory {memory!r} (one of {', '.join(MEMORIES)})")
    return dram_preset(PRESETS[name]) if memory == "dram" else PRESETS[name]


def dram_preset(preset):
    """`preset` with its board's DRAM in place of block RAM: the machine in the LiteDRAM
    controller's clock domain (the config's ``sys_clk_freq``; the core's own CRG makes
    it: the DDR3 PHY needs its sys2x clock phase-aligned by ECLKSYNCB/CLKDIVF, which
    LiteDRAM's CRG does), so no clock crossing sits between machine and controller."""
    from . import dram
    if preset.storage != "bram" or preset.ops is not None:
        raise PresetError(f"board {preset.name}: no DRAM preset (boards with DRAM: "
                          f"{', '.join(dram.BOARDS)})")
    try:
        path = dram.config_path(preset.name)
        dram.versions()            # the generator's packages, named with their pip extra
        clk = float(dram.read_config(path)["sys_clk_freq"])
    except (dram.DramConfigError, dram.DramGenError) as e:
        raise PresetError(f"board {preset.name} with DRAM: {e}") from None
    # the placer was chosen for the block-RAM design; the DRAM build was measured with
    # nextpnr's default
    return replace(preset, storage="dram", dram=preset.name, clk_hz=clk, placer=None)
