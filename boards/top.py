"""The board top: UART pins -> host bridge -> on-chip memory + machine.

```
 rx pin ─► UartRx ──bytes──► HostBridge ──instr──► Machine ◄─┐ machine_reset
                  frame_error     │  ▲  ──status──◄    │      │ (ResetInserter: machine
                  | overrun ─────►│  │                 │ rd_req/rd_resp/wr  and memory pipeline)
 tx pin ◄─ UartTx ◄──bytes────────┘  └─host port─► OnChipMemory ◄┘
```

`BoardCore` is everything but the UARTs (byte streams as ports: what the
bridge tests and a fast co-simulation drive); `BoardTop` adds the UARTs and
has only pins: ``rx``, ``tx`` and two LED outputs (``busy``: a program runs,
``error``: the machine reported an illegal instruction). Both are
platform-independent (one ``sync`` clock domain, supplied by the platform
wrapper or the simulator). RESET resets the machine and the memory's read
pipeline (so no stale response of an interrupted instruction survives),
never the memory contents or the bridge.
"""
import math

from amaranth.hdl import *
from amaranth.lib import wiring, stream
from amaranth.lib.wiring import In, Out

from gpt2accel.rtl.machine_config import MachineConfig
from gpt2accel.rtl.bridge import HostBridge
from gpt2accel.rtl.dram_adapter import DramAdapter, MemArbiter, NativePort
from gpt2accel.rtl.config import ConfigError, refusing
from gpt2accel.rtl.machine import Machine
from gpt2accel.rtl.onchip_memory import OnChipMemory
from gpt2accel.rtl.uart import BITS_PER_FRAME, UartRx, UartTx, check_divisor

__all__ = ["BoardCore", "BoardTop", "uart_divisor", "MAX_BAUD_ERROR"]

#: Largest relative baud rate error accepted: the receiver samples mid-bit,
#: so the two ends may drift half a bit over a 10-bit frame (5 %) together;
#: 2 % on our side leaves the rest to the host's adapter.
MAX_BAUD_ERROR = 0.02


def uart_divisor(clk_hz, baud):
    """Clock cycles per bit for `baud` at `clk_hz`; ConfigError if the rate is off by > 2 %."""
    for name, v in (("clk_hz", clk_hz), ("baud", baud)):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0:
            raise ConfigError(f"{name} must be a positive number, got {v!r}")
    divisor = round(clk_hz / baud)
    if divisor < 1:
        raise ConfigError(f"baud {baud} is faster than the {clk_hz} Hz clock")
    check_divisor(divisor)
    actual = clk_hz / divisor
    err = abs(actual - baud) / baud
    if err > MAX_BAUD_ERROR:
        raise ConfigError(f"baud {baud} at {clk_hz} Hz: divisor {divisor} gives {actual:.0f} baud, "
                          f"{100 * err:.1f} % off (more than {100 * MAX_BAUD_ERROR:.0f} %); "
                          "pick a baud rate closer to a divisor of the clock")
    return divisor


class BoardCore(wiring.Component):
    """HostBridge + `OnChipMemory(cfg.engine, mem_words, storage=storage)` +
    `Machine(cfg)`, with the bridge's byte streams as ports (``rx``, ``rx_error``, ``tx``) and
    the machine's ``busy`` / ``error``.

    ``storage="dram"``: the memory is external, behind a `DramAdapter` whose LiteDRAM
    native port is the port ``native`` (`dram`: its ``(addr_bits, data_bytes)``), shared
    by bridge and machine through a `MemArbiter`; ``mem_ready`` (the controller's
    ``init_done``) gates the bridge's memory requests (`Fault.MEMORY` before it).

    ``rst``: the board's reset, for a platform whose ``sync`` domain has none of its own
    (`boards.platform_top`: a PLL not locked yet, the DRAM controller's reset); 0 where
    the domain's reset does it (the simulators)."""

    def __init__(self, cfg: MachineConfig, *, mem_words, max_payload=1024, timeout_cycles,
                 storage="bram", dram=None, read_beats=32, checksum=True):
        self.cfg, self.storage = cfg, storage
        # built here so that a bad configuration is refused at construction
        with refusing(self):
            if (storage == "dram") != (dram is not None):
                raise ConfigError("storage='dram' and the native port's (addr_bits, "
                                  "data_bytes) go together")
            self.bridge = HostBridge(cfg, mem_words=mem_words, max_payload=max_payload,
                                     timeout_cycles=timeout_cycles, checksum=checksum)
            with refusing(self.bridge):
                e = cfg.engine
                if dram is not None:
                    self.memory = DramAdapter(addr_bits=e.addr_bits, mem_bytes=e.mem_bytes,
                                              native_addr_bits=dram[0], native_bytes=dram[1],
                                              read_beats=read_beats)
                    if mem_words > self.memory.depth_words:
                        raise ConfigError(f"mem_words={mem_words} is more than the DRAM's "
                                          f"{self.memory.depth_words} words")
                else:
                    self.memory = OnChipMemory(e, mem_words, storage=storage)
                with refusing(self.memory):
                    self.machine = Machine(cfg)
        ports = {"rx": In(stream.Signature(8)), "rx_error": In(1),
                 "tx": Out(stream.Signature(8)), "busy": Out(1), "error": Out(2), "rst": In(1)}
        if dram is not None:
            ports.update(native=Out(NativePort(addr_bits=dram[0], data_bytes=dram[1])),
                         mem_ready=In(1))
        super().__init__(ports)

    def elaborate(self, platform):
        m = Module()
        bridge, memory, machine = self.bridge, self.memory, self.machine
        # RESET and the board's own reset reach the machine's and the memory pipeline's
        # tens of thousands of flip-flops from one register of their own: a net that
        # spans the die must start at a flip-flop, not at the bridge's state decode
        # behind an OR with the domain's reset (that net was 16.7 ns, the whole
        # machine's worst path on the OrangeCrab). One cycle later than RESET's state,
        # which the bridge's SETTLE covers; set from configuration to the first edge.
        unit_rst = Signal(init=1, reset_less=True)
        m.d.sync += unit_rst.eq(self.rst | bridge.machine_reset)
        m.submodules.bridge = ResetInserter({"sync": self.rst})(bridge)
        m.submodules.machine = ResetInserter({"sync": unit_rst})(machine)
        if self.storage == "dram":
            # the adapter is never reset by RESET: the controller still owes it the
            # words of reads in flight; the arbiter drops those the machine asked for,
            # in the cycle the machine's reset comes
            e = self.cfg.engine
            m.submodules.memory = ResetInserter({"sync": self.rst})(memory)
            m.submodules.arbiter = arb = ResetInserter({"sync": self.rst})(
                MemArbiter(addr_bits=e.addr_bits, mem_bytes=e.mem_bytes))
            wiring.connect(m, bridge.mem, arb.host)
            wiring.connect(m, machine.mem, arb.machine)
            wiring.connect(m, arb.mem, memory.machine)
            wiring.connect(m, memory.native, wiring.flipped(self.native))
            m.d.comb += [arb.flush.eq(unit_rst), bridge.mem_ready.eq(self.mem_ready)]
        else:
            m.submodules.memory = ResetInserter({"sync": unit_rst})(memory)
            wiring.connect(m, bridge.mem, memory.host)
            wiring.connect(m, machine.mem, memory.machine)

        wiring.connect(m, wiring.flipped(self.rx), bridge.rx)
        wiring.connect(m, bridge.tx, wiring.flipped(self.tx))
        wiring.connect(m, bridge.instr, machine.instr)
        m.d.comb += [bridge.rx_error.eq(self.rx_error),
                     bridge.busy.eq(machine.busy), bridge.error.eq(machine.error),
                     bridge.cycles.eq(machine.cycles), bridge.icount.eq(machine.icount),
                     self.busy.eq(machine.busy), self.error.eq(machine.error)]
        return m


class BoardTop(wiring.Component):
    """UartRx + UartTx + `BoardCore`: the whole device behind two UART pins.

    ``divisor = round(clk_hz / baud)`` (`uart_divisor`); the bridge's
    inter-byte timeout is `timeout_ms` (at least two byte times). ``busy`` and
    ``error`` are meant for LEDs.
    """

    def __init__(self, cfg: MachineConfig, *, mem_words, clk_hz, baud, max_payload=1024,
                 timeout_ms=100, storage="bram", dram=None, checksum=True):
        with refusing(self):
            self.divisor = uart_divisor(clk_hz, baud)
            if isinstance(timeout_ms, bool) or not isinstance(timeout_ms, (int, float)) \
                    or not timeout_ms > 0:
                raise ConfigError(f"timeout_ms must be a positive number, got {timeout_ms!r}")
            self.timeout_cycles = math.ceil(clk_hz * timeout_ms / 1000)
            least = 2 * BITS_PER_FRAME * self.divisor
            if self.timeout_cycles < least:
                raise ConfigError(f"timeout_ms={timeout_ms} is {self.timeout_cycles} cycles, "
                                  f"shorter than two byte times ({least} cycles at {baud} baud): "
                                  "a frame arriving at full speed would time out")
            self.core = BoardCore(cfg, mem_words=mem_words, max_payload=max_payload,
                                  timeout_cycles=self.timeout_cycles, storage=storage,
                                  dram=dram, checksum=checksum)
        ports = {"rx": In(1, init=1), "tx": Out(1, init=1), "busy": Out(1), "error": Out(1),
                 "rst": In(1)}
        if dram is not None:
            ports.update(native=Out(NativePort(addr_bits=dram[0], data_bytes=dram[1])),
                         mem_ready=In(1))
        super().__init__(ports)

    def elaborate(self, platform):
        m = Module()
        m.submodules.uart_rx = urx = ResetInserter({"sync": self.rst})(UartRx(self.divisor))
        m.submodules.uart_tx = utx = ResetInserter({"sync": self.rst})(UartTx(self.divisor))
        m.submodules.core = core = self.core
        wiring.connect(m, urx.data, core.rx)
        wiring.connect(m, core.tx, utx.data)
        m.d.comb += [urx.rx.eq(self.rx), self.tx.eq(utx.tx),
                     core.rx_error.eq(urx.frame_error | urx.overrun),
                     self.busy.eq(core.busy), self.error.eq(core.error != 0),
                     core.rst.eq(self.rst)]
        if self.core.storage == "dram":
            wiring.connect(m, core.native, wiring.flipped(self.native))
            m.d.comb += core.mem_ready.eq(self.mem_ready)
        return m
