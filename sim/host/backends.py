"""Every backend the host can compute logits on, in one registry.

Two are golden models on the host (``float``, ``int``); the others run the machine
through a `driver.Backend`: its RTL simulated in Amaranth (``pysim``) or Verilator
(``fast``), a board over a serial port (``serial``), or the board top in Verilator
behind a simulated UART (``board-sim``). Front ends take their choices and help from
`BACKENDS`, the driver its `Backend`s from `make_backend`. Importing this module is
cheap (the constructors import what they build), so a command line can list the
backends without loading the hardware description.
"""
from dataclasses import dataclass
from typing import Callable

__all__ = ["BackendSpec", "BACKENDS", "HARDWARE_BACKENDS", "make_backend"]


def _pysim_backend(**kw):
    from gpt2accel.sim.host.driver import PysimBackend
    return PysimBackend(**kw)


def _fast_backend(**kw):
    from gpt2accel.sim.host.driver import FastBackend
    return FastBackend(**kw)


def _serial_backend(port, baud, **kw):
    from gpt2accel.sim.host.serial import PySerialLink, SerialBackend
    return SerialBackend(PySerialLink(port, baud), **kw)


def _board_sim_backend(cfg, mem_words, **kw):
    from gpt2accel.sim.host.board_sim import FastLink
    from gpt2accel.sim.host.serial import SerialBackend
    return SerialBackend(FastLink(cfg, mem_words=mem_words), **kw)


@dataclass(frozen=True)
class BackendSpec:
    """One way to compute logits. `kind`: "model" (a golden model on the host: no
    machine, no `Backend`), "machine" (the machine's RTL simulated here) or "board"
    (a board top behind the serial protocol, `sim.host.serial`). `make(**kw)`: the
    `driver.Backend` (None for a model)."""
    name: str
    kind: str
    help: str
    make: "Callable[..., object] | None" = None

    @property
    def hardware(self):
        return self.kind != "model"


#: Every backend, in the order front ends list them.
BACKENDS = {s.name: s for s in (
    BackendSpec("float", "model", "the float32 reference model"),
    BackendSpec("int", "model", "the integer golden model (QuantGPT2)"),
    BackendSpec("pysim", "machine", "the machine's RTL in Amaranth's simulator",
                _pysim_backend),
    BackendSpec("fast", "machine", "the machine's RTL in Verilator", _fast_backend),
    BackendSpec("serial", "board", "a board over a serial port", _serial_backend),
    BackendSpec("board-sim", "board", "the board top in Verilator behind a simulated UART, "
                "over the same serial protocol", _board_sim_backend),
)}
#: The backends that run the machine (a `Backend`), the rest being models.
HARDWARE_BACKENDS = tuple(name for name, s in BACKENDS.items() if s.hardware)


def make_backend(name, **kw):
    """The `Backend` of hardware backend `name`; `kw` go to its constructor (pysim:
    vcd, ops; fast: memory, board; serial: port, baud; board-sim: cfg, mem_words)."""
    spec = BACKENDS.get(name)
    if spec is None or not spec.hardware:
        raise ValueError(f"unknown hardware backend {name!r} "
                         f"(have: {', '.join(HARDWARE_BACKENDS)})")
    return spec.make(**kw)
