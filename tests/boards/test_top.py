"""BoardTop / BoardCore (boards/top.py): the bridge with the real machine and memory.

- through the UART pins (host-side UartTx/UartRx on the other end of the
  wires): PING and a WRITE/READ round trip;
- through BoardCore's byte streams (no UART, faster): EXEC of a short
  program (MATMUL + HALT) bit-exact against the golden matmul, an illegal
  instruction reporting its error with the machine usable afterwards, and
  RESET in the middle of an instruction returning the machine to idle;
- configurations the board cannot implement are refused with a ConfigError.

Seeds are printed; GPT2ACCEL_SEED replays.
"""
import random
import struct
import sys
from pathlib import Path

import numpy as np
import pytest
from amaranth.hdl import Module, Mux, Signal
from amaranth.lib import wiring
from amaranth.sim import Simulator

from gpt2accel.boards.top import BoardCore, BoardTop, uart_divisor
from gpt2accel.model.intops import matmul_acc, matmul_requant
from gpt2accel.rtl import protocol as P
from gpt2accel.rtl.attention_config import AttentionConfig
from gpt2accel.rtl.bridge import identity_bytes
from gpt2accel.rtl.config import ConfigError, EngineConfig
from gpt2accel.rtl.isa import INSTR_BITS, Error, Op, encode
from gpt2accel.rtl.uart import UartRx, UartTx
from gpt2accel.sim.host.matmul_layout import MatmulLayout
from gpt2accel.sim.cycles.program import program_cycles

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "rtl"))
from link_host import LinkHost  # noqa: E402

CFG = AttentionConfig(engine=EngineConfig(rows=4, cols=4, max_k=128, max_m=16, max_n=512,
                                          addr_bits=16),
                      tile=4, lanes=2, norm_lanes=2, max_d_head=16, max_seq=16)
MB = CFG.engine.mem_bytes
WORDS, MAX_PAYLOAD = 256, 256
DIVISOR = 4
REPLY = lambda op: op | P.REPLY  # noqa: E731


class _HostAndBoard(wiring.Component):
    """BoardTop with a host-side UART pair on its pins; while ``force`` is set the
    testbench drives the board's rx pin with ``level`` instead (bad stop bits)."""

    def __init__(self, top, divisor):
        self.top = top
        self.host_tx, self.host_rx = UartTx(divisor), UartRx(divisor)
        self.force, self.level = Signal(), Signal(init=1)
        super().__init__({})

    def elaborate(self, platform):
        m = Module()
        m.submodules.top, m.submodules.host_tx, m.submodules.host_rx = (
            self.top, self.host_tx, self.host_rx)
        m.d.comb += [self.top.rx.eq(Mux(self.force, self.level, self.host_tx.tx)),
                     self.host_rx.rx.eq(self.top.tx)]
        return m


def _simulate(dut, host, body):
    async def bench(ctx):
        await body(ctx)

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(host.collect, background=True)
    sim.add_testbench(bench)
    sim.run()


def test_ping_write_read_through_uart_pins(seed):
    rng = random.Random(seed)
    clk_hz = 1_000_000
    top = BoardTop(CFG, mem_words=WORDS, clk_hz=clk_hz, baud=clk_hz // DIVISOR,
                   max_payload=MAX_PAYLOAD, timeout_ms=1)
    assert top.divisor == DIVISOR and top.timeout_cycles == 1000
    dut = _HostAndBoard(top, DIVISOR)
    # the host UART receiver cannot be back-pressured: the collector never stalls
    host = LinkHost(dut.host_tx.data, dut.host_rx.data, random.Random(rng.random()))
    words = np.frombuffer(rng.randbytes(3 * MB), np.uint8).reshape(3, MB)
    addr = rng.randint(0, WORDS - 3)

    async def body(ctx):
        assert await host.request(ctx, P.Req.PING) == (REPLY(P.Req.PING), identity_bytes(
            CFG, mem_words=WORDS, max_payload=MAX_PAYLOAD))
        assert await host.request(ctx, P.Req.WRITE, struct.pack("<I", addr) + words.tobytes()) \
            == (REPLY(P.Req.WRITE), b"")
        assert await host.request(ctx, P.Req.READ, struct.pack("<IH", addr, 3)) \
            == (REPLY(P.Req.READ), words.tobytes()), f"GPT2ACCEL_SEED={seed}"
        assert not ctx.get(top.busy) and not ctx.get(top.error)
        # a byte without its stop bit inside a frame: SERIAL, then the link still works
        await host.send(ctx, P.frame(P.Req.WRITE, bytes(4 + MB))[:3])
        await host.idle(ctx, 12 * DIVISOR)           # the last byte left the host UART
        ctx.set(dut.force, 1)
        for level in [0] * 9 + [0, 0]:              # start, eight zero data bits, no stop bit
            ctx.set(dut.level, level)
            await host.idle(ctx, DIVISOR)
        ctx.set(dut.force, 0)
        assert await host.reply(ctx) == (P.ERROR, bytes([P.Fault.SERIAL, P.Req.WRITE]))
        assert (await host.request(ctx, P.Req.PING))[0] == REPLY(P.Req.PING)

    _simulate(dut, host, body)


@pytest.mark.parametrize("kw, match", [
    (dict(clk_hz=1_000_000, baud=300_000), "divisor 3 is below 4"),
    (dict(clk_hz=1_000_000, baud=222_222), r"divisor 5 gives 200000 baud, 10.0 % off"),
    (dict(clk_hz=1_000_000, baud=0), "baud must be a positive number"),
    (dict(clk_hz=1_000_000, baud=100_000, timeout_ms=0.1), "shorter than two byte times"),
    (dict(clk_hz=1_000_000, baud=100_000, mem_words=1 << 17), "mem_words=131072"),
])
def test_bad_board_config_refused(kw, match):
    args = dict(mem_words=WORDS, timeout_ms=10) | kw
    with pytest.raises(ConfigError, match=match):
        BoardTop(CFG, **args)


def test_uart_divisor_rounds_within_two_percent():
    assert uart_divisor(12_000_000, 921_600) == 13          # 923 077 baud, 0.16 % off
    assert uart_divisor(48_000_000, 115_200) == 417         # 115 108 baud, 0.08 % off
    with pytest.raises(ConfigError, match=r"divisor 8 gives 3125000 baud, 4.2 % off"):
        BoardTop(CFG, mem_words=WORDS, clk_hz=25_000_000, baud=3_000_000)


def _matmul_case(rng, nrng, shape=None):
    """A random small matmul (int8 output, or raw int32) placed at a random base, the
    memory image holding it, and the golden result."""
    m, k, n = shape or (rng.randint(1, 8), rng.randint(1, 24), rng.randint(1, 10))
    raw = shape is None and rng.random() < 0.3
    a = nrng.integers(-128, 128, (m, k))
    w = nrng.integers(-128, 128, (k, n))
    bias = nrng.integers(-5000, 5000, n)
    mult = nrng.integers(0, 1 << 15, n)
    shift = nrng.integers(8, 20, n)
    lay = MatmulLayout(CFG.engine, a, w, bias, mult, shift, raw=raw, base=rng.randint(0, 9))
    image = np.zeros((lay.end, MB), np.uint8)
    lay.place(image)
    want = (matmul_acc(a, w, bias) if raw else matmul_requant(a, w, bias, mult, shift))
    return lay, image, want


class _Device:
    """Host-side helpers over a LinkHost talking to BoardCore."""

    def __init__(self, host, seed):
        self.host, self.seed = host, seed

    async def ok(self, ctx, op, payload=b"", limit=50_000):
        got_op, data = await self.host.request(ctx, op, payload, limit)
        assert got_op == REPLY(op), f"{P.Req(op).name} -> {got_op:#x} {data.hex()} " \
                                    f"(GPT2ACCEL_SEED={self.seed})"
        return data

    async def status(self, ctx, op=P.Req.STATUS, payload=b""):
        return struct.unpack(P.STATUS_FORMAT, await self.ok(ctx, op, payload))

    async def write(self, ctx, addr, words):
        per = (MAX_PAYLOAD - 4) // MB
        for s in range(0, len(words), per):
            await self.ok(ctx, P.Req.WRITE, struct.pack("<I", addr + s) + words[s:s + per].tobytes())

    async def read(self, ctx, addr, count):
        per = MAX_PAYLOAD // MB
        data = b"".join([await self.ok(ctx, P.Req.READ, struct.pack("<IH", a, min(per, addr + count - a)))
                         for a in range(addr, addr + count, per)])
        return np.frombuffer(data, np.uint8).reshape(count, MB).copy()


def _program(*words):
    return b"".join(w.to_bytes(P.INSTR_BYTES, "little") for w in words)


def test_exec_matmul_illegal_and_reset_through_bridge(seed):
    rng = random.Random(seed + 1)
    nrng = np.random.default_rng(seed)
    core = BoardCore(CFG, mem_words=WORDS, max_payload=MAX_PAYLOAD, timeout_cycles=500)
    host = LinkHost(core.rx, core.tx, random.Random(rng.random()), stall=0.2)
    dev = _Device(host, seed)
    small = _matmul_case(rng, nrng)
    long = _matmul_case(rng, nrng, (8, 64, 8))      # a few hundred cycles: reset mid-way
    halt = encode(CFG, Op.HALT)

    async def run_and_check(ctx, case, exact=False):
        lay, image, want = case
        what = f"{lay.m}x{lay.k}x{lay.n} raw={lay.raw}, GPT2ACCEL_SEED={seed}"
        await dev.write(ctx, 0, image)
        busy, err, cycles, icount = await dev.status(
            ctx, P.Req.EXEC, _program(encode(CFG, Op.MATMUL, **lay.command), halt))
        assert (busy, err, icount) == (0, Error.NONE, 2) and cycles > 0, what
        mem = await dev.read(ctx, 0, lay.end)
        np.testing.assert_array_equal(lay.result(CFG.engine, mem), want, err_msg=what)
        mask = lay.output_mask(CFG.engine, lay.end)
        np.testing.assert_array_equal(mem[~mask], image[~mask], err_msg=f"stray write, {what}")
        model, _ = program_cycles(CFG, [encode(CFG, Op.MATMUL, **lay.command), halt])
        print(f"{what}: {cycles} machine cycles, cycle model {model}")
        if exact:
            # block RAM answers like the reference memory (3 cycles, a word per cycle) and
            # the bridge has the HALT ready before the MATMUL ends: the model's cycles
            assert cycles == model, what
        return cycles

    async def body(ctx):
        await run_and_check(ctx, small)
        # an illegal word: error status, the MATMUL after it is dropped up to HALT
        lay, image, _ = small
        matmul = encode(CFG, Op.MATMUL, **lay.command)
        await dev.write(ctx, 0, image)
        busy, err, _, icount = await dev.status(ctx, P.Req.EXEC, _program(0, matmul, halt))
        assert (busy, err, icount) == (0, Error.OPCODE, 3), f"GPT2ACCEL_SEED={seed}"
        np.testing.assert_array_equal(await dev.read(ctx, 0, lay.end), image)
        assert ctx.get(core.error) == Error.OPCODE
        # a reserved bit in the word's last byte (beyond what the bridge keeps)
        busy, err, _, icount = await dev.status(
            ctx, P.Req.EXEC, _program(matmul | 1 << (INSTR_BITS - 1 - rng.randrange(8)), halt))
        assert (busy, err, icount) == (0, Error.RESERVED, 2), f"GPT2ACCEL_SEED={seed}"
        np.testing.assert_array_equal(await dev.read(ctx, 0, lay.end), image)
        await run_and_check(ctx, small)                  # usable afterwards, error cleared
        # RESET mid-instruction: the reply to a lone MATMUL comes once it started
        full = await run_and_check(ctx, long, exact=True)
        busy, err, started, icount = await dev.status(
            ctx, P.Req.EXEC, _program(encode(CFG, Op.MATMUL, **long[0].command)))
        assert (busy, err, icount) == (1, Error.NONE, 1)
        t0 = host.cycle
        assert await dev.status(ctx, P.Req.RESET) == (0, Error.NONE, 0, 0)
        assert started + host.cycle - t0 < full, "the MATMUL finished before the RESET"
        assert await dev.status(ctx) == (0, Error.NONE, 0, 0)
        await run_and_check(ctx, small)

    _simulate(core, host, body)


def test_board_reset_returns_a_busy_machine_to_idle(seed):
    """The board's own reset (`rst`: a PLL not locked, the DRAM controller's), like
    RESET, returns a busy machine and the bridge to idle; both reach the machine through
    a register of their own."""
    rng = random.Random(seed + 2)
    nrng = np.random.default_rng(seed + 2)
    core = BoardCore(CFG, mem_words=WORDS, max_payload=MAX_PAYLOAD, timeout_cycles=500)
    host = LinkHost(core.rx, core.tx, random.Random(rng.random()), stall=0.2)
    dev = _Device(host, seed)
    lay, image, want = _matmul_case(rng, nrng, (8, 64, 8))
    lone = _program(encode(CFG, Op.MATMUL, **lay.command))
    halt = encode(CFG, Op.HALT)

    async def body(ctx):
        await dev.write(ctx, 0, image)
        for how in ("RESET", "rst"):
            assert (await dev.status(ctx, P.Req.EXEC, lone))[::3] == (1, 1), how
            if how == "RESET":
                assert await dev.status(ctx, P.Req.RESET) == (0, Error.NONE, 0, 0)
            else:
                ctx.set(core.rst, 1)
                await ctx.tick().repeat(3)
                ctx.set(core.rst, 0)
            assert await dev.status(ctx) == (0, Error.NONE, 0, 0), f"{how}, GPT2ACCEL_SEED={seed}"
        busy, err, _, icount = await dev.status(
            ctx, P.Req.EXEC, _program(encode(CFG, Op.MATMUL, **lay.command), halt))
        assert (busy, err, icount) == (0, Error.NONE, 2)
        np.testing.assert_array_equal(lay.result(CFG.engine, await dev.read(ctx, 0, lay.end)),
                                      want, err_msg=f"GPT2ACCEL_SEED={seed}")

    _simulate(core, host, body)


def test_identity_fingerprints_the_machine_built():
    """PING's config_id follows the machine's opcode subset and residual width
    (`MachineConfig`), and an AttentionConfig is the machine with the defaults."""
    from gpt2accel.rtl.machine_config import MachineConfig
    cfgs = [CFG, MachineConfig.of(CFG, ops=("MATMUL",)), MachineConfig.of(CFG, resid_bits=12)]
    cores = [BoardCore(c, mem_words=WORDS, timeout_cycles=100) for c in cfgs]
    ids = [struct.unpack(P.IDENTITY_FORMAT, c.bridge.identity)[5] for c in cores]
    assert ids == [P.config_id(c) for c in cfgs]
    assert P.config_id(MachineConfig.of(CFG)) == ids[0]
    assert len(set(ids)) == 3
    for c in cores:                     # only the identity is looked at: never elaborated
        for part in (c, c.bridge, c.memory, c.machine):
            part._MustUse__silence = True
