"""Co-simulation of the whole board top: UART frames in, UART frames out.

The board (boards/top.py `BoardTop`: UART, host bridge, on-chip memory,
the 8x8 machine sized for the shipped tiny model) is compiled with
Verilator and seen only through its rx/tx pins (sim/host/board_sim.py
`FastLink`, 4 clock cycles per bit). On the host side the same `Driver`
as on the simulators, through `SerialBackend`, loads the model over the
simulated UART and generates tokens that must equal `QuantGPT2`'s bit for
bit. Protocol fuzzing then interleaves corrupt frames with valid commands
on the loaded board: every bad frame gets exactly the ERROR reply that
rtl/protocol.py's rules give (or none, when there is no SYNC to start a
frame), the device always answers the next valid command, memory reads
back unchanged and a program still computes bit-exact logits.

One Verilator build (cached, shared with tests/sim/test_serial_backend.py)
and one load of the model (~190 KB over the UART, about a minute).
Skipped without Verilator. GPT2ACCEL_SEED replays the fuzzing.
"""
import random
import struct
import sys
import time
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "sim"))

from gpt2accel.model.gpt2 import KVCache  # noqa: E402
from gpt2accel.rtl import protocol as P  # noqa: E402
from gpt2accel.rtl.isa import Error, Op, encode  # noqa: E402
from gpt2accel.sim.host.board_sim import IDLE_SYMBOL, uart_symbols  # noqa: E402
from gpt2accel.sim.host.driver import Driver, HardwareError  # noqa: E402
from gpt2accel.sim.host.serial import SerialBackend  # noqa: E402

from test_serial_backend import fast_tiny_board, tiny_board_config  # noqa: E402


class Board:
    """The loaded board: driver, backend, link and the numbers of the load."""

    def __init__(self):
        self.q, self.cfg, self.words = tiny_board_config()
        _, _, self.link = fast_tiny_board()
        self.be = SerialBackend(self.link)
        self.drv = Driver(self.q, self.cfg, self.be, mem_words=self.words, logits="all")
        t0, c0 = time.perf_counter(), self.link.cycles
        self.drv.load()
        self.load_s, self.load_cycles = time.perf_counter() - t0, self.link.cycles - c0
        self.load_bytes = self.be.bytes_out + self.be.bytes_in
        print(f"load: {self.words} words over the UART in {self.load_s:.1f} s "
              f"({self.load_cycles:,} board cycles, {self.load_bytes:,} bytes on the link, "
              f"{self.load_cycles / self.load_s:,.0f} cycles/s)")

    def prefill(self, ids):
        """A new sequence without re-sending the weights: a prefill from position 0
        rewrites every cache entry it reads, so only the position restarts."""
        self.drv.pos = 0
        return self.drv.prefill(ids)


@pytest.fixture(scope="module")
def board():
    b = Board()
    yield b
    b.drv.close()


def _measure(b, fn):
    """fn()'s result, and its wall time, board cycles, machine cycles and link bytes."""
    t0, c0, n0 = time.perf_counter(), b.link.cycles, b.be.bytes_out + b.be.bytes_in
    h0 = len(b.drv.history)
    out = fn()
    machine = sum(r["cycles"] for r in b.drv.history[h0:])
    return out, {"wall_s": time.perf_counter() - t0, "board_cycles": b.link.cycles - c0,
                 "machine_cycles": machine, "bytes": b.be.bytes_out + b.be.bytes_in - n0}


def test_board_generates_bit_exact_tokens(board, seed):
    """A 4-token prompt and 2 greedy decode steps: logits equal QuantGPT2's."""
    rng = np.random.default_rng(seed)
    q = board.q
    ids = [int(i) for i in rng.integers(0, q.config.vocab_size, 4)]
    cache = KVCache(q.config.n_layer)
    logits, m = _measure(board, lambda: board.prefill(ids))
    np.testing.assert_array_equal(logits, q.forward(np.asarray(ids), cache))
    print(f"prefill {ids}: {m}")
    for _ in range(2):
        token = int(logits[-1].argmax())
        logits, m = _measure(board, lambda: board.drv.decode(token))
        np.testing.assert_array_equal(logits, q.forward(np.asarray([token]), cache))
        print(f"decode {token}: {m}, cycle model {board.drv.last['predicted_cycles']:,}")


# ---------------------------------------------------------------- fuzzing

def expected_reply(data, *, max_payload, mem_bytes, depth, busy):
    """What the bridge does with the bytes `data` followed by a quiet line, by the rules of
    rtl/protocol.py in the bridge's order: (the first reply: ("ok", opcode) or
    (Fault, opcode byte) or None for no frame at all, index after the frame's last byte
    the bridge takes). The opcode byte of a fault is 0 before one arrived."""
    s = data.find(bytes([P.SYNC]))
    if s < 0:
        return None, len(data)
    head = data[s + 1:s + P.HEADER_BYTES]
    op = head[0] if head else 0
    if len(head) < 3:
        return (P.Fault.TIMEOUT, op), len(data)
    (n,) = struct.unpack_from("<H", head, 1)
    if n > max_payload:
        return (P.Fault.LENGTH, op), s + P.HEADER_BYTES
    end = s + P.HEADER_BYTES + n + P.CRC_BYTES
    if len(data) < end:
        return (P.Fault.TIMEOUT, op), len(data)
    if P.crc16(data[s + 1:end - P.CRC_BYTES]) != struct.unpack_from("<H", data, end - 2)[0]:
        return (P.Fault.CRC, op), end
    payload = data[s + P.HEADER_BYTES:end - P.CRC_BYTES]
    if op in (P.Req.PING, P.Req.STATUS, P.Req.RESET):
        fault = P.Fault.LENGTH if n else None
    elif op == P.Req.WRITE:
        words = (n - 4) // mem_bytes
        fault = (P.Fault.LENGTH if n < 4 + mem_bytes or (n - 4) % mem_bytes else
                 P.Fault.ADDRESS if struct.unpack_from("<I", payload)[0] + words > depth else
                 P.Fault.BUSY if busy else None)
    elif op == P.Req.READ:
        addr, count = struct.unpack_from("<IH", payload) if n == 6 else (0, 0)
        fault = (P.Fault.LENGTH if n != 6 or not 0 < count <= max_payload // mem_bytes else
                 P.Fault.ADDRESS if addr + count > depth else
                 P.Fault.BUSY if busy else None)
    elif op == P.Req.EXEC:
        fault = P.Fault.LENGTH if n == 0 or n % P.INSTR_BYTES else None
    else:
        fault = P.Fault.OPCODE
    return ("ok" if fault is None else fault, op), end


class Fuzzer:
    """Bad bursts and valid commands on the loaded board, against a model of the sandbox
    (a buffer every program overwrites before reading) and of the machine's busy state."""

    SANDBOX = "fc"

    def __init__(self, board, rng):
        self.b, self.rng = board, rng
        self.ident = board.be.identify()
        r = board.drv.comp.regions[self.SANDBOX]
        self.base, self.n = r.base, r.words
        self.mb = board.cfg.engine.mem_bytes
        self.sandbox = board.be.dump(self.base, self.n)
        self.busy = False
        prog = board.drv.comp.program(1, 0)
        self.instrs = [w.to_bytes(P.INSTR_BYTES, "little") for w in prog[:4]]
        self.counts = {}

    # ---- valid requests (as bytes, for corrupting)
    def valid_request(self):
        rng, mb = self.rng, self.mb
        kind = rng.choice(["ping", "status", "reset", "read", "write", "exec"])
        if kind == "read":
            k = rng.randint(1, 8)
            return P.frame(P.Req.READ, struct.pack("<IH", self.base + rng.randrange(self.n - k),
                                                   k))
        if kind == "write":
            k = rng.randint(1, 4)
            return P.frame(P.Req.WRITE, struct.pack("<I", self.base + rng.randrange(self.n - k))
                           + rng.randbytes(k * mb))
        if kind == "exec":                     # the model's own instructions
            return P.frame(P.Req.EXEC, b"".join(rng.sample(self.instrs, rng.randint(1, 2))))
        return P.frame({"ping": P.Req.PING, "status": P.Req.STATUS, "reset": P.Req.RESET}[kind])

    # ---- bad bursts: (kind, line symbols, bytes the bridge receives)
    def bad_burst(self):
        rng, mp, mb, depth = self.rng, self.ident.max_payload, self.mb, self.ident.depth
        kind = rng.choice(["flip", "truncate", "garbage", "long", "length", "opcode",
                           "address", "count", "serial"])
        if kind == "flip":
            data = bytearray(self.valid_request())
            for _ in range(rng.randint(1, 3)):
                data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        elif kind == "truncate":
            f = self.valid_request()
            data = f[:rng.randrange(1, len(f))]
        elif kind == "garbage":
            data = (bytes([P.SYNC]) if rng.random() < 0.5 else b"") + rng.randbytes(
                rng.randint(1, 40))
        elif kind == "long":                   # LEN above max_payload, CRC of what is sent
            body = struct.pack("<BH", rng.choice(list(P.Req)), rng.randint(mp + 1, 0xFFFF))
            body += rng.randbytes(rng.randint(0, 16))
            data = bytes([P.SYNC]) + body + struct.pack("<H", P.crc16(body))
        elif kind == "length":                 # a payload length the opcode does not allow
            data = rng.choice([
                P.frame(rng.choice([P.Req.PING, P.Req.STATUS, P.Req.RESET]),
                        rng.randbytes(rng.randint(1, 6))),
                P.frame(P.Req.READ, rng.randbytes(rng.choice([0, 4, 5, 7, 8]))),
                P.frame(P.Req.WRITE, struct.pack("<I", self.base)
                        + rng.randbytes(rng.choice([0, mb - 1, mb + 1]))),
                P.frame(P.Req.EXEC, rng.randbytes(rng.choice([1, P.INSTR_BYTES - 1,
                                                              P.INSTR_BYTES + 1])))])
        elif kind == "opcode":
            op = rng.choice([b for b in range(256) if b not in set(P.Req)])
            data = P.frame(op, rng.randbytes(rng.randint(0, 8)))
        elif kind == "address":                # ranges that leave the memory, wrap included
            k = rng.randint(1, 8)
            addr = rng.choice([depth - k + 1 + rng.randrange(64), 0xFFFFFFFF - rng.randrange(k),
                               rng.randrange(depth, 1 << 32)])
            data = rng.choice([P.frame(P.Req.READ, struct.pack("<IH", addr, k)),
                               P.frame(P.Req.WRITE, struct.pack("<I", addr)
                                       + rng.randbytes(k * mb))])
        elif kind == "count":
            data = P.frame(P.Req.READ, struct.pack("<IH", self.base, rng.choice(
                [0, mp // mb + 1 + rng.randrange(100)])))
        else:                                  # a byte with a low stop bit
            f = self.valid_request()
            p = rng.randrange(len(f))
            symbols = (uart_symbols(f[:p]) + uart_symbols(f[p:p + 1], bad_stop=True)
                       + [IDLE_SYMBOL] + uart_symbols(f[p + 1:]))
            return kind, symbols, (f[:p], f[p + 1:])
        data = bytes(data)
        return kind, uart_symbols(data), data

    def expect(self, kind, data):
        """The one reply the burst must get (None: no reply), or False to draw another
        burst: one whose bytes after the first fault hold a SYNC (the bridge would parse
        a second frame from bytes that partly arrive while it replies) or that would
        be a valid request."""
        kw = dict(max_payload=self.ident.max_payload, mem_bytes=self.mb,
                  depth=self.ident.depth, busy=self.busy)
        if kind == "serial":
            head, tail = data
            if P.SYNC in tail:
                return False
            if not head:                       # the SYNC itself was lost: hunting
                return None
            return (P.Fault.SERIAL, head[1] if len(head) > 1 else 0)
        reply, end = expected_reply(data, **kw)
        if P.SYNC in data[end:] or (reply is not None and reply[0] == "ok"):
            return False
        return reply

    def replies(self, seconds):
        """Let the board run `seconds`, then every frame it sent meanwhile."""
        self.b.link.idle(seconds)
        data = self.b.link.read(1 << 20, 0)
        frames = []
        while data:
            assert data[0] == P.SYNC, f"reply bytes {data!r}"
            (n,) = struct.unpack_from("<H", data, 2)
            size = P.HEADER_BYTES + n + P.CRC_BYTES
            frames.append(P.parse_frame(data[:size]))
            data = data[size:]
        return frames

    def bad(self):
        while True:
            kind, symbols, data = self.bad_burst()
            want = self.expect(kind, data)
            if want is not False:
                break
        link = self.b.link
        link.write_symbols(symbols)
        # the burst on the wire, the bridge's byte timeout, the reply
        quiet = link.seconds_for(len(symbols) + 2 * 16) + 2 * 1e-3
        got = self.replies(quiet)
        self.counts[kind] = self.counts.get(kind, 0) + 1
        want_frames = [] if want is None else [(P.ERROR, bytes([int(want[0]), want[1]]))]
        assert got == want_frames, f"{kind} burst {data!r}: replies {got}, want {want_frames}"

    def valid(self):
        rng, be = self.rng, self.b.be
        action = rng.choice(["ping", "status", "read", "write", "episode"])
        if action == "ping":
            assert be.identify() == self.ident
        elif action == "status":
            assert be.status().busy == self.busy
        elif action in ("read", "write"):
            k = rng.randint(1, 40)
            off = rng.randrange(self.n - k)
            try:
                if action == "read":
                    got = be.dump(self.base + off, k)
                    np.testing.assert_array_equal(got, self.sandbox[off:off + k])
                else:
                    img = np.frombuffer(rng.randbytes(k * self.mb), np.uint8).reshape(k, -1)
                    be.load(img, self.base + off)
                    self.sandbox[off:off + k] = img
                assert not self.busy
            except HardwareError as exc:
                assert self.busy and "ERROR BUSY" in str(exc), exc
        elif not self.busy:                    # an illegal word: busy until its HALT
            st = be.status(P.Req.EXEC, bytes(P.INSTR_BYTES))
            assert (st.busy, st.error) == (1, Error.OPCODE)
            self.busy = True
        else:                                  # end it with HALT or RESET
            if rng.random() < 0.5:
                st = be.status(P.Req.EXEC, encode(self.b.cfg, Op.HALT).to_bytes(
                    P.INSTR_BYTES, "little"))
                assert (st.busy, st.error) == (0, Error.OPCODE)
            else:
                assert be.reset().busy == 0
            self.busy = False
        self.counts[action] = self.counts.get(action, 0) + 1


def _fuzz(board, seed, rounds):
    rng = random.Random(seed)
    fz = Fuzzer(board, rng)
    for _ in range(rounds):
        fz.bad()
        fz.valid()
    print(f"{rounds} rounds: {dict(sorted(fz.counts.items()))}")
    be = board.be
    be.reset()
    np.testing.assert_array_equal(be.dump(fz.base, fz.n), fz.sandbox)
    image = board.drv.comp.image()
    # the weights and tables read back unchanged: they lie between the attention
    # scratch (which every program writes, so it holds whatever an earlier test on
    # this board or a burst's instructions left there) and the activations at x
    regions = board.drv.comp.regions
    lo = regions["scratch"].base + regions["scratch"].words
    for _ in range(8):
        a = rng.randrange(lo, regions["x"].base - 64)
        np.testing.assert_array_equal(be.dump(a, 64), image[a:a + 64])
    ids = [rng.randrange(board.q.config.vocab_size) for _ in range(3)]
    np.testing.assert_array_equal(board.prefill(ids), board.q.forward(
        np.asarray(ids), KVCache(board.q.config.n_layer)))


def test_fuzzed_frames_never_wedge_the_board(board, seed):
    """80 bad bursts, each followed by a valid command; then memory and a program are
    unchanged."""
    _fuzz(board, seed, 80)


@pytest.mark.slow
def test_fuzzed_frames_long_run(board, seed):
    _fuzz(board, seed + 1, 2000)
