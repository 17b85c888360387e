"""Simulated serial links to a simulated board: the host's view of `BoardTop`, without a board.

    link = FastLink(cfg, mem_words=..., clk_hz=SIM_CLK_HZ, baud=SIM_BAUD)   # Verilator
    link = PysimLink(cfg, mem_words=..., clk_hz=SIM_CLK_HZ, baud=SIM_BAUD)  # Amaranth's simulator
    drv = Driver(q, cfg, SerialBackend(link), mem_words=...)

Both are `serial_backend.Link`s to the whole board top (boards/top.py: UART,
host bridge, on-chip memory, machine), seen only through its ``rx`` / ``tx``
pins: `write` queues bytes that are shifted onto ``rx`` at the UART bit rate
(8N1, `divisor` = clk_hz / baud clock cycles per bit), and `read` advances
the simulation until the requested bytes were decoded from ``tx`` or the
timeout, in the board's simulated time, ran out. `clock()` is that
simulated time (cycles / clk_hz), so `SerialBackend`'s timeouts mean what
they mean on a real board.

`write_symbols` sends raw line symbols (`uart_symbols`), e.g. a byte whose
stop bit is low, for fuzzing the receiver. The smallest divisor the UART
takes (4) keeps the simulations short.

``PysimLink(..., dram=(addr_bits, data_bytes))`` builds the board with its
memory behind the DRAM adapter (``BoardTop(storage="dram")``) and plays
LiteDRAM's native port in a testbench (`NativeDramModel`: the controller's
strobe semantics, commands in order, reads answered `latency` cycles later,
``init_done`` after `init_cycles`), so the host's loading runs against the
adapter and the arbiter without a LiteDRAM core.

`FastLink` compiles the board with Verilator through sim/fast/build.py
(`build_design`, cached like the machine) around sim/fast/board_harness.cpp.
"""
import abc
import collections
import ctypes
import math
from pathlib import Path

from gpt2accel.sim.fast.build import TOP, Design, build_design
from gpt2accel.sim.host.serial import Link

__all__ = ["uart_symbols", "IDLE_SYMBOL", "SIM_CLK_HZ", "SIM_BAUD", "SIM_TIMEOUT_MS",
           "board_design", "SimulatedLink", "PysimLink", "FastLink", "BOARD_LINKS",
           "NativeDramModel"]

#: the simulated board's clock and UART rate: 4 cycles per bit, the UART's
#: minimum (rtl/uart.py MIN_DIVISOR); the byte timeout is 100 byte times, so
#: truncated frames time out quickly in simulation
SIM_CLK_HZ = 4_000_000
SIM_BAUD = 1_000_000
SIM_TIMEOUT_MS = 1

#: ten bit times of idle (high) line
IDLE_SYMBOL = 0x3FF

BOARD_HARNESS = Path(__file__).parent.parent / "fast" / "board_harness.cpp"


def uart_symbols(data, *, bad_stop=False):
    """10-bit line symbols (LSB first: start 0, the byte LSB first, stop) of `data`;
    `bad_stop`: every stop bit low (a framing error at the receiver)."""
    stop = 0 if bad_stop else 1 << 9
    return [stop | (b << 1) for b in bytes(data)]


def _make_board(cfg, **kw):
    from gpt2accel.boards.top import BoardTop
    return BoardTop(cfg, **kw)


def board_design(cfg, **board_kw):
    """The `BoardTop(cfg, **board_kw)` in the serial harness, for `build_design`."""
    from amaranth.back import verilog
    from gpt2accel.sim.synth.verilog import ensure_yosys

    def emit():
        ensure_yosys()
        return verilog.convert(_make_board(cfg, **board_kw), name=TOP)
    return Design(BOARD_HARNESS, emit, (repr(cfg), repr(sorted(board_kw.items()))),
                  packages=("gpt2accel.rtl", "gpt2accel.model", "gpt2accel.boards"),
                  prefix="Vboard")


class SimulatedLink(Link):
    """A `Link` whose time is a simulated board's clock; subclasses move the bits."""

    def __init__(self, clk_hz, baud):
        if clk_hz % baud or clk_hz // baud < 2:
            raise ValueError(f"clk_hz {clk_hz} must be a multiple (>= 2) of baud {baud}")
        self.clk_hz, self.baud, self.divisor = clk_hz, baud, clk_hz // baud

    def write(self, data):
        self.write_symbols(uart_symbols(data))

    def read(self, n, timeout_s):
        budget = math.ceil(max(0.0, timeout_s) * self.clk_hz)
        self._run(n, budget)
        return self._take(n)

    def clock(self):
        return self.cycles / self.clk_hz

    def idle(self, seconds):
        """Let `seconds` of board time pass; bytes the board sends meanwhile are kept."""
        self._run(math.inf, math.ceil(seconds * self.clk_hz))

    @abc.abstractmethod
    def write_symbols(self, symbols):
        """Queue raw line symbols (see `uart_symbols`) for the board's rx."""

    @abc.abstractmethod
    def _run(self, want, budget):
        """Simulate until `want` decoded bytes wait or `budget` cycles ran."""

    @abc.abstractmethod
    def _take(self, n):
        """Up to `n` decoded bytes, oldest first."""


async def _ticks(ctx, n):
    """`n` clock cycles. (Not `ctx.tick().repeat(n)`: a simulator dropped while a
    testbench waits inside `repeat` reports an exception from its async generator.)"""
    for _ in range(n):
        await ctx.tick()


class NativeDramModel:
    """LiteDRAM's native user port as the controller drives it, for a simulated board:
    ``cmd.ready`` while fewer than `queue` commands wait; commands run in order, one a
    cycle, `run_after` cycles after they were taken; a write's ``wdata.ready`` pulses
    when it runs (the data must be at the adapter's queue head then: `errors`
    otherwise); a read's word arrives as an ``rdata.valid`` pulse `latency` cycles
    after it ran. ``mem_ready`` (the controller's ``init_done``) rises after
    `init_cycles`. `mem`: native address -> word."""

    def __init__(self, board, *, latency=12, run_after=2, queue=8, init_cycles=0):
        self.board, self.latency, self.run_after = board, latency, run_after
        self.queue, self.init_cycles = queue, init_cycles
        self.mem, self.errors, self.cycles = {}, [], 0

    async def testbench(self, ctx):
        from collections import deque
        nat, nb = self.board.native, self.board.native.signature.data_bytes
        cmds, reads = deque(), deque()
        ctx.set(self.board.mem_ready, self.init_cycles == 0)
        while True:
            if self.cycles == self.init_cycles:
                ctx.set(self.board.mem_ready, 1)
            run = cmds.popleft() if cmds and cmds[0][0] <= self.cycles else None
            arrive = reads.popleft() if reads and reads[0][0] <= self.cycles else None
            ctx.set(nat.cmd.ready, len(cmds) < self.queue)
            ctx.set(nat.wdata.ready, run is not None and run[1])
            ctx.set(nat.rdata.valid, arrive is not None)
            ctx.set(nat.rdata.payload.data, arrive[1] if arrive else 0)
            _, _, cv, cr, cwe, caddr, wv, wd, wwe = await ctx.tick().sample(
                nat.cmd.valid, nat.cmd.ready, nat.cmd.payload.we, nat.cmd.payload.addr,
                nat.wdata.valid, nat.wdata.payload.data, nat.wdata.payload.we)
            if run is not None:
                _, we, addr = run
                if we:
                    if not wv:
                        self.errors.append(f"cycle {self.cycles}: write data for {addr} "
                                           f"not there when the controller took it")
                    mask = sum(0xFF << (8 * b) for b in range(nb) if wwe >> b & 1)
                    self.mem[addr] = (self.mem.get(addr, 0) & ~mask) | (wd & mask)
                else:
                    reads.append((self.cycles + self.latency, self.mem.get(addr, 0)))
            if cv and cr:
                cmds.append((self.cycles + self.run_after, cwe, caddr))
            self.cycles += 1


class PysimLink(SimulatedLink):
    """The board in Amaranth's simulator; two background testbenches drive ``rx``
    from the host's queue and decode ``tx``. `chunk`: cycles per `run_until`
    step (the granularity at which a read notices its bytes arrived). With
    ``dram=(addr_bits, data_bytes)`` the memory is the DRAM adapter's, on a
    `NativeDramModel` (``self.dram``; `dram_kw` go to it)."""

    def __init__(self, cfg, *, mem_words, clk_hz=SIM_CLK_HZ, baud=SIM_BAUD,
                 timeout_ms=SIM_TIMEOUT_MS, chunk=None, dram_kw=None, **board_kw):
        from amaranth.sim import Simulator
        super().__init__(clk_hz, baud)
        self.board = _make_board(cfg, mem_words=mem_words, clk_hz=clk_hz, baud=baud,
                                 timeout_ms=timeout_ms, **board_kw)
        self.cycles, self.framing_errors = 0, 0
        self.chunk = chunk or self.divisor * 10
        self._queue, self._rx = collections.deque(), collections.deque()
        self.sim = Simulator(self.board)
        self.sim.add_clock(1 / clk_hz)
        self.sim.add_testbench(self._drive_rx, background=True)
        self.sim.add_testbench(self._decode_tx, background=True)
        self.dram = None
        if board_kw.get("dram") is not None:
            self.dram = NativeDramModel(self.board, **(dram_kw or {}))
            self.sim.add_testbench(self.dram.testbench, background=True)

    def write_symbols(self, symbols):
        self._queue.extend(int(s) & 0x3FF for s in symbols)

    async def _drive_rx(self, ctx):
        rx, d = self.board.rx, self.divisor
        ctx.set(rx, 1)
        while True:
            if not self._queue:
                await _ticks(ctx, d)          # idle line: look again a bit time later
                continue
            sym = self._queue.popleft()
            for i in range(10):
                ctx.set(rx, (sym >> i) & 1)
                await _ticks(ctx, d)
            ctx.set(rx, 1)

    async def _decode_tx(self, ctx):
        tx, d = self.board.tx, self.divisor
        while True:
            await ctx.negedge(tx)
            await _ticks(ctx, d // 2)
            if ctx.get(tx):
                continue                       # a glitch, not a start bit
            byte = 0
            for i in range(8):
                await _ticks(ctx, d)
                byte |= ctx.get(tx) << i
            await _ticks(ctx, d)
            if ctx.get(tx):
                self._rx.append(byte)
            else:
                self.framing_errors += 1
                await ctx.posedge(tx)

    def _run(self, want, budget):
        end = self.cycles + budget
        while len(self._rx) < want and self.cycles < end:
            self.cycles = min(end, self.cycles + self.chunk)
            self.sim.run_until(self.cycles / self.clk_hz)

    def _take(self, n):
        return bytes(self._rx.popleft() for _ in range(min(n, len(self._rx))))


_LIBS = {}    # path -> the loaded, typed library


def _load(path):
    path = str(path)
    if path not in _LIBS:
        lib = ctypes.CDLL(path)
        vp, u64 = ctypes.c_void_p, ctypes.c_uint64
        for name, args, res in (
                ("bx_create", [ctypes.c_int], vp), ("bx_destroy", [vp], None),
                ("bx_send", [vp, ctypes.POINTER(ctypes.c_uint16), u64], None),
                ("bx_run", [vp, u64, u64], u64),
                ("bx_recv", [vp, ctypes.POINTER(ctypes.c_uint8), u64], u64),
                ("bx_cycles", [vp], u64), ("bx_pending", [vp], u64),
                ("bx_framing_errors", [vp], u64), ("bx_status", [vp], ctypes.c_int)):
            fn = getattr(lib, name)
            fn.argtypes, fn.restype = args, res
        _LIBS[path] = lib
    return _LIBS[path]


class FastLink(SimulatedLink):
    """The board compiled with Verilator (sim/fast/board_harness.cpp): the C++ side
    shifts the queued symbols onto ``rx`` and decodes ``tx``, one call per read.
    Raises `FastBackendUnavailable` without Verilator or a C++ compiler."""

    def __init__(self, cfg, *, mem_words, clk_hz=SIM_CLK_HZ, baud=SIM_BAUD,
                 timeout_ms=SIM_TIMEOUT_MS, verbose=False, **board_kw):
        self._h = None
        super().__init__(clk_hz, baud)
        design = board_design(cfg, mem_words=mem_words, clk_hz=clk_hz, baud=baud,
                              timeout_ms=timeout_ms, **board_kw)
        self.path, self.build_info = build_design(design, verbose=verbose)
        self._lib = _load(self.path)
        self._h = self._lib.bx_create(self.divisor)
        if not self._h:
            raise MemoryError("cannot create the simulated board")

    @property
    def _live(self):
        if not self._h:
            raise ValueError("this FastLink is closed")
        return self._h

    @property
    def cycles(self):
        return self._lib.bx_cycles(self._live)

    @property
    def framing_errors(self):
        return self._lib.bx_framing_errors(self._live)

    @property
    def leds(self):
        """The board's (busy, error) outputs."""
        s = self._lib.bx_status(self._live)
        return bool(s & 1), bool(s & 2)

    def write_symbols(self, symbols):
        arr = (ctypes.c_uint16 * len(symbols))(*symbols)
        self._lib.bx_send(self._live, arr, len(symbols))

    def _run(self, want, budget):
        want = min(want, 2**64 - 1)
        self._lib.bx_run(self._live, int(want), int(budget))

    def _take(self, n):
        buf = (ctypes.c_uint8 * n)()
        k = self._lib.bx_recv(self._live, buf, n)
        return bytes(buf[:k])

    def close(self):
        if self._h:
            self._lib.bx_destroy(self._h)
            self._h = None

    def __del__(self):
        self.close()


#: simulated board links by simulator
BOARD_LINKS = {"pysim": PysimLink, "fast": FastLink}
