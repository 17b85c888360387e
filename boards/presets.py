"""Board presets: which board, which array, which clock, which model each bitstream is for.

    preset = PRESETS["ulx3s-85f"]
    board = preset.resolve(rows=8, cols=8)      # validated: BoardMachine(cfg, mem_words, ...)

A preset names an amaranth-boards platform, the systolic array, the machine
clock (a PLL makes it when it is not the board oscillator's), the UART baud
rate, and the model the on-chip memory is sized for: the memory holds that
model's whole image (weights, tables, KV caches, activations), exactly
`ModelCompiler(...).end` words, so weights are loaded over the UART after
configuration (docs/architecture.md "Board top"). `resolve` checks what can
be checked before a long build: the compiler must accept the model on the
array (a head's d_head a multiple of the 2*cols-byte memory word), the
model's memory must fit the chip's block RAM, and the array's multipliers
its DSPs; each failure is a `PresetError` naming the numbers.

Every figure of a chip here (`DEVICES`) is the device's capacity as
nextpnr reports it ("available" in its --report JSON).
"""
from dataclasses import dataclass, field, replace
from functools import cached_property

from amaranth.build import Attrs
from amaranth_boards.ecpix5 import ECPIX585Platform
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
    "LFE5UM5G-85F": Device("ecp5", logic=83640, ff=83640, dsp=156, bram=208, bram_bits=16384),
    "iCE40UP5K": Device("ice40", logic=5280, ff=5280, dsp=8, bram=30, bram_bits=4096, spram=4),
}


class OrangeCrab85FUART(OrangeCrabR0_2_85FPlatform):
    """OrangeCrab r0.2 (85F) with a UART on its Feather header. The board has no
    USB-serial chip (its USB goes straight to the FPGA), so the host link is a 3.3 V
    USB-serial adapter on header pins 0 (RX, an FPGA input) and 1 (TX, an FPGA
    output), the Feather form factor's RX/TX pins."""
    resources = OrangeCrabR0_2_85FPlatform.resources + [
        UARTResource(0, rx="0", tx="1", conn=("io", 0), attrs=Attrs(IO_TYPE="LVCMOS33"))]


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

    def resolve(self, rows=None, cols=None, clk_hz=None):
        """The machine this preset (with overrides) builds, validated; `PresetError` if
        it cannot fit."""
        p = replace(self, rows=rows or self.rows, cols=cols or self.cols,
                    clk_hz=clk_hz or self.clk_hz)
        return BoardMachine(p)


class BoardMachine:
    """A resolved preset: the machine config, its memory depth and the PLL, checked."""

    def __init__(self, preset: Preset):
        from gpt2accel.sim.compiler import ModelCompiler
        from gpt2accel.sim.driver import machine_config
        self.preset = p = preset
        where = f"board {p.name} ({p.device_name}), {p.rows}x{p.cols} array"
        if p.rows < 1 or p.cols < 1:
            raise PresetError(f"{where}: rows and cols must be at least 1")
        self.q = load_model(p.model)
        try:
            self.cfg = machine_config(self.q, p.rows, p.cols)
            comp = ModelCompiler(self.cfg, self.q, self.cfg.engine.max_m,
                                 1 << self.cfg.engine.addr_bits)
        except ValueError as e:       # CompileError is a ValueError
            raise PresetError(f"{where}: the {p.model} model does not map onto it: {e}") from None
        self.mem_words = comp.end
        dev = p.device
        need = self.mem_words * self.cfg.engine.mem_bytes
        if need > dev.memory_bytes:
            raise PresetError(
                f"{where}: the {p.model} model's memory image needs {need:,} bytes "
                f"({self.mem_words:,} words of {self.cfg.engine.mem_bytes} bytes), the "
                f"{p.device_name} has {dev.memory_bytes:,} bytes of on-chip RAM in all")
        # one multiplier per processing element at least (the requantiser needs more)
        if p.rows * p.cols > dev.dsp:
            raise PresetError(f"{where}: {p.rows * p.cols} processing elements need as many "
                              f"multipliers, the {p.device_name} has {dev.dsp} DSP blocks")
        self.pll = None
        if p.clk_hz != p.oscillator_hz:
            from .pll import PLLError, ecp5_pll, ice40_pll
            make = ecp5_pll if dev.family == "ecp5" else ice40_pll
            try:
                self.pll = make(p.oscillator_hz, p.clk_hz)
            except PLLError as e:
                raise PresetError(f"{where}: clock: {e}") from None
        self.clk_hz = self.pll.fout if self.pll else p.clk_hz

    @cached_property
    def decode_cycles(self):
        """Exact cycles of one decode token of the model at its last position (the
        longest attention; `program_cycles`, as `bench model` times decode)."""
        import numpy as np
        from gpt2accel.sim.compiler import ModelCompiler
        from gpt2accel.sim.driver import _ids_memory
        from gpt2accel.sim.program_cycles import program_cycles
        comp = ModelCompiler(self.cfg, self.q, self.cfg.engine.max_m, self.mem_words)
        pos = self.q.config.n_positions - 1
        ids = np.zeros(1, np.int64)
        cycles, _ = program_cycles(self.cfg, comp.program(1, pos), mem=_ids_memory(comp, ids))
        return cycles

    def describe(self):
        p = self.preset
        clock = (f"{self.clk_hz / 1e6:g} MHz (PLL from {p.oscillator_hz / 1e6:g} MHz)"
                 if self.pll else f"{self.clk_hz / 1e6:g} MHz (oscillator)")
        return (f"{p.name}: {p.device_name}, {p.rows}x{p.cols} array, model {p.model}, "
                f"memory {self.mem_words:,} words x {self.cfg.engine.mem_bytes} bytes, "
                f"clock {clock}, UART {p.baud} baud ({p.uart})")


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
    Preset("ulx3s-85f", ULX3S_85F_Platform, rows=8, cols=8, clk_hz=50e6, baud=1_000_000,
           model="tiny", leds=LEDs(busy=("led", 0, None), error=("led", 1, None),
                                   alive=("led", 7, None)),
           notes="FTDI FT231X USB-serial; 25 MHz oscillator"),
    Preset("orangecrab-85f", OrangeCrab85FUART, rows=8, cols=8, clk_hz=48e6,
           baud=1_000_000, model="tiny",
           leds=LEDs(busy=(_RGB, 0, "g"), error=(_RGB, 0, "r"), alive=(_RGB, 0, "b")),
           uart="a 3.3 V USB-serial adapter on Feather header pins 0 (RX) and 1 (TX)",
           notes="48 MHz oscillator; no USB-serial chip"),
    Preset("ecpix5-85f", ECPIX585Platform, rows=8, cols=8, clk_hz=50e6, baud=1_000_000,
           model="tiny",
           leds=LEDs(busy=(_RGB, 0, "g"), error=(_RGB, 0, "r"), alive=(_RGB, 1, "b")),
           notes="FTDI FT2232 USB-serial; 100 MHz oscillator"),
]}


def get_preset(name):
    if name not in PRESETS:
        raise PresetError(f"unknown board {name!r} (presets: {', '.join(PRESETS)})")
    return PRESETS[name]
