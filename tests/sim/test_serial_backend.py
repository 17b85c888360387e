"""SerialBackend's error paths against the simulated board (sim/host/board_sim.py), and PySerialLink.

Every test that needs a device talks to the whole board top (boards/top.py:
UART, host bridge, on-chip memory, machine) through its UART pins, on both
simulated links: Amaranth's simulator (the 4x4 machine of the machine
tests, 64 words of memory: about a second per request) and Verilator (the
8x8 machine sized for the shipped tiny model, the build that
tests/boards/test_board_cosim.py uses too; skipped without Verilator).
Faults of the cable itself (no reply, a corrupted reply) are injected
between the host and the simulated board. GPT2ACCEL_SEED replays.
"""
import random
import socket
import struct
import sys
import threading
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "rtl"))

from gpt2accel.model import shipped_model_dir  # noqa: E402
from gpt2accel.model.quant import QUANT_FILENAME, QuantGPT2  # noqa: E402
from gpt2accel.rtl import protocol as P  # noqa: E402
from gpt2accel.rtl.isa import Error, Op, encode  # noqa: E402
from gpt2accel.sim.host.board_sim import FastLink, PysimLink  # noqa: E402
from gpt2accel.sim.host.compiler import ModelCompiler  # noqa: E402
from gpt2accel.sim.host.driver import HardwareError, machine_config  # noqa: E402
from gpt2accel.sim.fast import FastBackendUnavailable  # noqa: E402
from gpt2accel.sim.host.serial import (DeviceMismatch, Link, LinkError,  # noqa: E402
                                          LinkTimeout, PySerialLink, SerialBackend,
                                          model_mem_words)

from test_machine import CFG as SMALL_CFG  # noqa: E402

#: the Amaranth-simulated board's memory: small, every word costs simulation time
SMALL_WORDS = 64


def tiny_board_config():
    """(QuantGPT2, config, memory words) of the shipped tiny model on the 8x8 machine."""
    q = QuantGPT2.load(shipped_model_dir() / QUANT_FILENAME)
    cfg = machine_config(q, 8, 8)
    return q, cfg, model_mem_words(cfg, q)


def fast_tiny_board():
    """A FastLink to the tiny model's board (skips the test without Verilator)."""
    _, cfg, words = tiny_board_config()
    try:
        return cfg, words, FastLink(cfg, mem_words=words)
    except FastBackendUnavailable as exc:
        pytest.skip(f"fast backend unavailable: {exc}")


@pytest.fixture(scope="module", params=["pysim", "fast"])
def board(request):
    """(config, memory words, link) of a simulated board, on each simulator."""
    if request.param == "pysim":
        link = PysimLink(SMALL_CFG, mem_words=SMALL_WORDS)
        cfg, words = SMALL_CFG, SMALL_WORDS
    else:
        cfg, words, link = fast_tiny_board()
    yield cfg, words, link
    link.close()


class Unplugged(Link):
    """A cable that carries nothing to the board (the board's replies, if any, still come)."""

    def __init__(self, link):
        self.link, self.baud = link, link.baud

    def write(self, data):
        pass

    def read(self, n, timeout_s):
        return self.link.read(n, timeout_s)

    def clock(self):
        return self.link.clock()


class Noisy(Unplugged):
    """A cable that flips bit `bit` of the `nth` byte coming back from the board."""

    def __init__(self, link, nth, bit):
        super().__init__(link)
        self.nth, self.bit, self.seen = nth, bit, 0

    def write(self, data):
        self.link.write(data)

    def read(self, n, timeout_s):
        data = bytearray(self.link.read(n, timeout_s))
        if self.seen <= self.nth < self.seen + len(data):
            data[self.nth - self.seen] ^= 1 << self.bit
        self.seen += len(data)
        return bytes(data)


def test_identify_and_open_refuse_another_machine(board):
    cfg, words, link = board
    be = SerialBackend(link)
    ident = be.identify()
    e = cfg.engine
    assert (ident.mem_bytes, ident.depth, ident.rows, ident.cols, ident.max_payload) == (
        e.mem_bytes, words, e.rows, e.cols, 1024)
    assert ident.config_id == P.config_id(cfg)

    other = replace(cfg, max_seq=2 * cfg.max_seq)
    with pytest.raises(DeviceMismatch, match=f"config_id 0x{ident.config_id:08x}.*"
                                             f"config_id 0x{P.config_id(other):08x}"):
        be.open(other, words)
    wide = replace(cfg, engine=replace(e, mem_bytes=2 * e.mem_bytes))
    with pytest.raises(DeviceMismatch, match=f"memory words are {e.mem_bytes} bytes, the "
                                             f"program's {2 * e.mem_bytes}"):
        be.open(wide, words)
    with pytest.raises(DeviceMismatch, match=f"needs {words + 1} words of memory, the device "
                                             f"has {words}"):
        be.open(cfg, words + 1)
    be.open(cfg, words)
    assert be.status().busy == 0


def test_error_replies_raise_hardware_error(board, seed):
    """ADDRESS, BUSY, LENGTH replies name fault and request; the device stays usable."""
    cfg, words, link = board
    rng = np.random.default_rng(seed)
    be = SerialBackend(link)
    be.open(cfg, words)
    with pytest.raises(HardwareError, match="ERROR ADDRESS to READ"):
        be.request(P.Req.READ, struct.pack("<IH", words - 1, 2), reply_bytes=32)
    with pytest.raises(HardwareError, match="ERROR LENGTH to PING"):
        be.request(P.Req.PING, b"\0")

    # an illegal word keeps the machine busy (waiting for its HALT): memory is refused
    st = be.status(P.Req.EXEC, bytes(P.INSTR_BYTES))
    assert (st.busy, st.error) == (1, Error.OPCODE)
    with pytest.raises(HardwareError, match="ERROR BUSY to READ of 1 words at 0"):
        be.dump(0, 1)
    assert be.reset().busy == 0

    n = 70 if words > 70 else 3             # two WRITE frames on the 8x8 board
    img = rng.integers(0, 256, (n, cfg.engine.mem_bytes), dtype=np.uint8)
    be.load(img, words - n)
    np.testing.assert_array_equal(be.dump(words - n, n), img)
    with pytest.raises(IndexError, match="outside the memory"):
        be.dump(words - 1, 2)

    halt = encode(cfg, Op.HALT)
    res = be.run([0, halt])                 # the illegal word is counted, not executed
    assert (res["error"], res["icount"]) == (Error.OPCODE, 2)
    res = be.run([halt])
    assert (res["error"], res["icount"]) == (Error.NONE, 1)
    assert res["link_bytes"] > 0 and res["polls"] >= 1


def test_no_reply_is_a_timeout(board):
    cfg, _, link = board
    be = SerialBackend(Unplugged(link), timeout_s=0.002)
    with pytest.raises(LinkTimeout, match=r"no reply from the device to PING in time \(0 of 1 "
                                          r"bytes.*1000000 baud"):
        be.identify()


def test_corrupt_reply_is_a_link_error(board, seed):
    """A bit flipped on the way back (here in the identity payload) fails the CRC."""
    _, _, link = board
    rng = random.Random(seed)
    be = SerialBackend(Noisy(link, rng.randrange(P.HEADER_BYTES, 20), rng.randrange(8)))
    with pytest.raises(LinkError, match="corrupt reply to PING: CRC"):
        be.identify()
    SerialBackend(link).identify()          # the device itself is fine


def test_late_reply_is_skipped(board):
    """A reply to an earlier request (one the host gave up on) is not taken for the next."""
    cfg, words, link = board
    be = SerialBackend(link)
    be.send(P.Req.STATUS)                   # its reply is never read
    assert be.identify().depth == words


def test_program_longer_than_run_timeout(seed):
    """A program that outlasts run_timeout_s: LinkTimeout, then the device answers again
    once the EXEC frame's instructions ran (the PING sent meanwhile is cut short by the
    bridge's busy EXEC and times out on the device; identify retries)."""
    q, cfg, words = tiny_board_config()
    _, _, link = fast_tiny_board()
    try:
        be = SerialBackend(link, run_timeout_s=0.001)
        be.open(cfg, words)
        # 15 of the model's largest matmul (~2k cycles each in the cycle model) in one
        # EXEC frame: the machine takes the HALT long after 1 ms plus the wire time
        ops = ModelCompiler(cfg, q, cfg.engine.max_m, words).ops(8, 0)
        op, f = max(((op, f) for op, f in ops if op == Op.MATMUL),
                    key=lambda of: of[1]["m"] * of[1]["k"] * of[1]["n"])
        prog = [encode(cfg, op, **f)] * 15 + [encode(cfg, Op.HALT)]
        with pytest.raises(LinkTimeout, match=f"did not take instructions 0..15 of {len(prog)}"):
            be.run(prog)
        assert be.identify().depth == words
        assert be.status().busy == 0        # the HALT was in the frame: the program ended
        assert be.run([encode(cfg, Op.HALT)])["error"] == Error.NONE
    finally:
        link.close()


def test_pyserial_port_that_cannot_be_opened():
    with pytest.raises(LinkError, match="cannot open serial port '/nonexistent/ttyUSB9'"):
        PySerialLink("/nonexistent/ttyUSB9", 115200)


def test_pyserial_loopback_reads_and_times_out():
    """pyserial's loop:// URL: bytes written come back; a short read returns what arrived."""
    link = PySerialLink("loop://", 115200)
    try:
        link.write(b"\x5a\x01\x00\x00")
        assert link.read(4, 0.5) == b"\x5a\x01\x00\x00"
        t0 = link.clock()
        assert link.read(3, 0.05) == b""
        assert 0.04 < link.clock() - t0 < 1.0
        link.write(b"xyz")
        link.discard_input()
        assert link.read(1, 0.01) == b""
    finally:
        link.close()


class TcpBoard(threading.Thread):
    """A simulated board behind a TCP port, as ser2net serves a real one: bytes from
    the socket go to the board's rx, what it sends on tx goes back; the simulation
    advances 1,000 cycles per turn of the loop."""

    def __init__(self, link):
        super().__init__(daemon=True)
        self.link, self.stop = link, threading.Event()
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]

    def run(self):
        conn, _ = self.server.accept()
        conn.setblocking(False)
        with conn:
            while not self.stop.is_set():
                try:
                    data = conn.recv(1 << 16)
                    if not data:
                        break                   # the host closed the port
                    self.link.write(data)
                except BlockingIOError:
                    pass
                out = self.link.read(1 << 16, 1000 / self.link.clk_hz)
                if out:
                    conn.sendall(out)


def test_pyserial_link_to_the_simulated_board(seed):
    """PySerialLink (pyserial's socket:// URL) to the Verilated board: identify, open,
    WRITE/READ across frames, a program; timeouts in wall time (the simulated board is
    ~25x slower than a real one at 1 Mbaud, hence timeout_s=20)."""
    _, cfg, words = tiny_board_config()
    _, _, link = fast_tiny_board()
    tcp = TcpBoard(link)
    tcp.start()
    be = SerialBackend(PySerialLink(f"socket://127.0.0.1:{tcp.port}", 1_000_000), timeout_s=20)
    try:
        assert be.identify().depth == words
        be.open(cfg, words)
        rng = np.random.default_rng(seed)
        img = rng.integers(0, 256, (70, cfg.engine.mem_bytes), dtype=np.uint8)
        be.load(img, 100)
        np.testing.assert_array_equal(be.dump(100, 70), img)
        res = be.run([encode(cfg, Op.HALT)])
        assert (res["error"], res["icount"]) == (Error.NONE, 1)
    finally:
        be.close()
        tcp.stop.set()
        tcp.join()
        tcp.server.close()
        link.close()
