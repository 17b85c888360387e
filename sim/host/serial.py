"""The driver's backend for a board: `rtl/protocol.py` frames over a serial link.

    link = PySerialLink("/dev/ttyUSB0", 1_000_000)      # or a simulated board (sim/host/board_sim.py)
    be = SerialBackend(link)
    ident = be.identify()                               # PING: what the bitstream is
    drv = Driver(q, cfg, be, mem_words=...)             # the same Driver as on the simulators

`SerialBackend` implements `driver.Backend` with the protocol's requests:
`open` PINGs the device, refuses one that was built for another machine
(config_id, mem_bytes) or has too little memory, and RESETs the machine;
`load` / `dump` are WRITE / READ frames of at most the device's
max_payload; `load_image` (the driver's whole-image load: the weights) goes
in chunks of `CHUNK_WORDS`, each compared with the device's CHECKSUM (a CRC-32
the device computes by reading its memory) before it is sent and after: a
chunk the device already holds is not sent again, so a load interrupted by a
dropped link resumes where it stopped when run again, and every byte is
checked end to end (a progress bar: bytes, rate, time left; the total time
at the end); `run` streams the program in EXEC frames and polls STATUS
until ``busy`` clears. Requests are stop-and-wait: one frame out, its reply
back, so the device needs no receive buffer beyond one frame.

Errors: an `ERROR` reply raises `driver.HardwareError` naming the `Fault`
and the request; no reply in time raises `LinkTimeout`; a malformed reply
`LinkError` (both are `OSError`s); a device that does not match the
program `DeviceMismatch` (a `ValueError`). Times are the link's clock
(`Link.clock`): wall time on a real port, simulated time on a simulated
board, so a timeout means the same on both.

Deviation from `Backend.open`'s contract: the device's memory is not
cleared (that would cost as much serial traffic as a load); `Driver.load`
writes the whole image right after `open`, so nothing stale is read.
"""
import abc
import struct
import time
from dataclasses import dataclass

import numpy as np

from gpt2accel.model import progress
from gpt2accel.rtl import protocol as P
from gpt2accel.rtl.isa import INSTR_BITS
from gpt2accel.sim.host.driver import Backend, HardwareError

__all__ = ["Link", "PySerialLink", "LinkError", "LinkTimeout", "DeviceMismatch", "Identity",
           "Status", "SerialBackend", "model_mem_words"]

#: Bits on the line per byte: start, 8 data, stop (8N1).
BITS_PER_BYTE = 10
#: Words per CHECKSUM-checked chunk of `SerialBackend.load_image` (CHECKSUM's count
#: is 16 bits): large enough that the two checksums per chunk cost nothing beside
#: its WRITE frames, small enough that a resumed load repeats little
CHUNK_WORDS = 4096
#: A reply is awaited for this many times the wire time of request and reply,
#: plus the request's own allowance (`timeout_s`, or `run_timeout_s` for EXEC).
WIRE_MARGIN = 1.25


class LinkError(OSError):
    """The serial link failed: a port that cannot be opened, a malformed reply."""


class LinkTimeout(LinkError, TimeoutError):
    """No (complete) reply from the device in time."""


class DeviceMismatch(ValueError):
    """The device's bitstream was built for another machine than the program's."""


# ---------------------------------------------------------------- links

class Link(abc.ABC):
    """A byte pipe to a device at `baud` bits per second (8N1), with its own clock."""
    baud = None

    @abc.abstractmethod
    def write(self, data: bytes):
        """Send `data` (may return before it is on the wire)."""

    @abc.abstractmethod
    def read(self, n: int, timeout_s: float) -> bytes:
        """Up to `n` received bytes: fewer only when `timeout_s` passed first."""

    @abc.abstractmethod
    def clock(self) -> float:
        """Seconds on the link's time line (wall time, or a simulated board's time)."""

    def discard_input(self):
        """Drop whatever was received and not read (a late reply to a timed-out request)."""
        while self.read(4096, 0):
            pass

    def close(self):
        pass

    def seconds_for(self, nbytes):
        """Time on the wire of `nbytes` bytes."""
        return BITS_PER_BYTE * nbytes / self.baud


class PySerialLink(Link):
    """A serial port through pyserial: a device name (/dev/ttyUSB0, COM3) or any
    pyserial URL (socket://host:port, rfc2217://..., loop:// for a loopback)."""

    def __init__(self, port, baud=1_000_000):
        try:
            import serial
        except ImportError:
            raise LinkError("the serial backend needs pyserial: pip install pyserial") from None
        self.port, self.baud = port, int(baud)
        try:
            self.ser = serial.serial_for_url(port, baudrate=self.baud, timeout=0)
        except (serial.SerialException, OSError, ValueError) as exc:
            reason = getattr(exc, "strerror", None) or str(exc).splitlines()[0]
            raise LinkError(f"cannot open serial port {port!r}: {reason}") from None

    def write(self, data):
        self.ser.write(bytes(data))

    def read(self, n, timeout_s):
        self.ser.timeout = max(0.0, timeout_s)
        return bytes(self.ser.read(n))

    def clock(self):
        return time.monotonic()

    def discard_input(self):
        self.ser.reset_input_buffer()

    def close(self):
        self.ser.close()


# ---------------------------------------------------------------- replies

@dataclass(frozen=True)
class Identity:
    """A PING reply (`protocol.IDENTITY_FORMAT`)."""
    version: int
    mem_bytes: int
    max_payload: int
    depth: int              #: memory words
    config_id: int
    rows: int
    cols: int

    @classmethod
    def parse(cls, payload):
        if len(payload) != struct.calcsize(P.IDENTITY_FORMAT):
            raise LinkError(f"PING reply of {len(payload)} bytes, an identity has "
                            f"{struct.calcsize(P.IDENTITY_FORMAT)}")
        magic, version, mem_bytes, log2_payload, depth, cid, rows, cols = struct.unpack(
            P.IDENTITY_FORMAT, payload)
        if magic != b"G2A":
            raise LinkError(f"the device is not a gpt2accel board (PING magic {magic!r})")
        return cls(version, mem_bytes, 1 << log2_payload, depth, cid, rows, cols)

    def describe(self):
        return (f"{self.rows}x{self.cols} machine, config_id 0x{self.config_id:08x}, "
                f"{self.depth} words of {self.mem_bytes} bytes, max_payload {self.max_payload}")


@dataclass(frozen=True)
class Status:
    """A STATUS / EXEC / RESET reply (`protocol.STATUS_FORMAT`)."""
    busy: int
    error: int
    cycles: int
    icount: int

    @classmethod
    def parse(cls, payload, req):
        if len(payload) != struct.calcsize(P.STATUS_FORMAT):
            raise LinkError(f"{req.name} reply of {len(payload)} bytes, a status has "
                            f"{struct.calcsize(P.STATUS_FORMAT)}")
        return cls(*struct.unpack(P.STATUS_FORMAT, payload))


def _fault_name(code):
    try:
        return P.Fault(code).name
    except ValueError:
        return f"fault {code}"


# ---------------------------------------------------------------- backend

class SerialBackend(Backend):
    """`driver.Backend` over a `Link` to a board speaking `rtl/protocol.py`.

    `timeout_s`: how long a reply may take beyond `WIRE_MARGIN` times the time
    its request and reply need on the wire; `run_timeout_s`: how long one program may
    run (EXEC replies wait for the machine to take the words, STATUS polls
    for ``busy`` to clear). The device must have been built for the `MachineConfig`
    given to `open` (its `config_id`, residual width and opcodes included).
    """
    name = "serial"

    def __init__(self, link, *, timeout_s=1.0, run_timeout_s=60.0):
        self.link = link
        self.timeout_s, self.run_timeout_s = timeout_s, run_timeout_s
        self.ident = None
        self.last_load = None     # load_image's counts, kept while it runs
        self.bytes_out = self.bytes_in = 0     # whole frames, both directions

    # ---- frames
    def send(self, opcode, payload=b""):
        """Send one request frame (nothing else: see `request`)."""
        data = P.frame(opcode, payload)
        self.link.write(data)
        self.bytes_out += len(data)

    def _read_exact(self, n, deadline, what):
        got = b""
        while len(got) < n:
            left = deadline - self.link.clock()
            chunk = self.link.read(n - len(got), max(0.0, left)) if left > 0 else b""
            if not chunk and self.link.clock() >= deadline:
                raise LinkTimeout(f"no reply from the device to {what} in time "
                                  f"({len(got)} of {n} bytes of a frame arrived)")
            got += chunk
        self.bytes_in += n
        return got

    def read_frame(self, deadline, what="the request"):
        """The next frame from the device (bytes before SYNC skipped): (opcode, payload).
        `deadline` is on the link's clock; `what` names the request in errors."""
        while self._read_exact(1, deadline, what)[0] != P.SYNC:
            pass
        head = self._read_exact(P.HEADER_BYTES - 1, deadline, what)
        (length,) = struct.unpack_from("<H", head, 1)
        rest = self._read_exact(length + P.CRC_BYTES, deadline, what)
        try:
            return P.parse_frame(bytes([P.SYNC]) + head + rest)
        except P.FrameError as exc:
            raise LinkError(f"corrupt reply to {what}: {exc}") from None

    def request(self, req, payload=b"", *, reply_bytes=0, wait_s=None, what=None):
        """Send request `req` and return its reply's payload.

        The reply may take `wait_s` (default `timeout_s`) beyond `WIRE_MARGIN`
        times the wire time of the request and of a `reply_bytes`-byte reply. Frames
        that answer an earlier request (late replies after a timeout) are
        skipped; an ERROR reply raises `HardwareError`.
        """
        req = P.Req(req)
        what = what or req.name
        self.link.discard_input()
        start = self.link.clock()
        self.send(req, payload)
        frame_bytes = 2 * (P.HEADER_BYTES + P.CRC_BYTES) + len(payload) + reply_bytes
        deadline = (start + WIRE_MARGIN * self.link.seconds_for(frame_bytes)
                    + (self.timeout_s if wait_s is None else wait_s))
        while True:
            opcode, reply = self.read_frame(deadline, what)
            if opcode == req | P.REPLY:
                return reply
            if opcode == P.ERROR and len(reply) == 2 and reply[1] in (req, 0):
                raise HardwareError(f"device replied ERROR {_fault_name(reply[0])} to {what}")
            # anything else answers an earlier request whose reply came late

    # ---- identity and status
    def identify(self):
        """PING the device: its `Identity`. One retry after an ERROR reply, which a
        device left mid-frame by an earlier host gives when the PING completes it."""
        try:
            reply = self.request(P.Req.PING, reply_bytes=struct.calcsize(P.IDENTITY_FORMAT))
        except HardwareError:
            reply = self.request(P.Req.PING, reply_bytes=struct.calcsize(P.IDENTITY_FORMAT))
        except LinkTimeout as exc:
            raise LinkTimeout(f"{exc}: is the board programmed with the gpt2accel bitstream, "
                              f"at {self.link.baud} baud?") from None
        ident = Identity.parse(reply)
        if ident.version != P.PROTOCOL_VERSION:
            raise DeviceMismatch(f"the device speaks protocol version {ident.version}, "
                                 f"this host {P.PROTOCOL_VERSION}")
        self.ident = ident
        return ident

    def status(self, req=P.Req.STATUS, payload=b"", *, wait_s=None, what=None):
        """The machine's `Status`: from a STATUS request by default, or the reply to
        `req` (RESET, EXEC) with `payload`."""
        reply = self.request(req, payload, reply_bytes=struct.calcsize(P.STATUS_FORMAT),
                             wait_s=wait_s, what=what)
        return Status.parse(reply, P.Req(req))

    def reset(self):
        """RESET: the machine back to idle (memory keeps its contents)."""
        return self.status(P.Req.RESET)

    # ---- Backend
    def open(self, cfg, mem_words):
        """PING, check that the device runs `cfg`'s machine with at least `mem_words`
        words of memory (`DeviceMismatch` otherwise), RESET its machine."""
        ident = self.identify()
        e = cfg.engine
        want_id = P.config_id(cfg)
        if ident.mem_bytes != e.mem_bytes:
            raise DeviceMismatch(f"the device's memory words are {ident.mem_bytes} bytes, the "
                                 f"program's {e.mem_bytes} (device: {ident.describe()})")
        if ident.config_id != want_id:
            raise DeviceMismatch(
                f"the device was built for another machine (config_id 0x{ident.config_id:08x},"
                f" {ident.rows}x{ident.cols} array) than the program's (config_id "
                f"0x{want_id:08x}, {e.rows}x{e.cols} array): rebuild the bitstream for this "
                f"model and array, or match --rows/--cols to the device")
        if mem_words > ident.depth:
            raise DeviceMismatch(f"the program needs {mem_words} words of memory, the device "
                                 f"has {ident.depth} ({ident.describe()})")
        if ident.max_payload < max(P.INSTR_BYTES, 4 + e.mem_bytes):
            raise DeviceMismatch(f"the device's max_payload {ident.max_payload} cannot carry "
                                 f"one instruction or one memory word")
        self.cfg, self.mem_words, self.mem_bytes = cfg, mem_words, e.mem_bytes
        self.reset()

    def _check_range(self, addr, n):
        if addr < 0 or n < 0 or addr + n > self.mem_words:
            raise IndexError(f"words {addr}..{addr + n} outside the memory of "
                             f"{self.mem_words} words")

    def load(self, image, addr=0):
        """WRITE frames of as many words as max_payload takes."""
        image = np.ascontiguousarray(image, np.uint8)
        if image.ndim != 2 or image.shape[1] != self.mem_bytes:
            raise ValueError(f"image must be [words, {self.mem_bytes}] uint8, got {image.shape}")
        self._check_range(addr, len(image))
        per = (self.ident.max_payload - 4) // self.mem_bytes
        for s in range(0, len(image), per):
            chunk = image[s:s + per]
            reply = self.request(P.Req.WRITE, struct.pack("<I", addr + s) + chunk.tobytes(),
                                 what=f"WRITE of {len(chunk)} words at {addr + s}")
            if reply:
                raise LinkError(f"WRITE reply carries {len(reply)} bytes, expected none")

    def checksum(self, addr, n):
        """The device's CRC-32 of words addr..addr+n-1 (CHECKSUM, n <= 65535)."""
        self._check_range(addr, n)
        # the device reads every word: allow for a slow memory besides the link
        reply = self.request(P.Req.CHECKSUM, struct.pack("<IH", addr, n),
                             reply_bytes=struct.calcsize(P.CHECKSUM_FORMAT),
                             what=f"CHECKSUM of {n} words at {addr}")
        if len(reply) != struct.calcsize(P.CHECKSUM_FORMAT):
            raise LinkError(f"CHECKSUM reply of {len(reply)} bytes, expected "
                            f"{struct.calcsize(P.CHECKSUM_FORMAT)}")
        return struct.unpack(P.CHECKSUM_FORMAT, reply)[0]

    def load_image(self, image, addr=0, *, chunk_words=CHUNK_WORDS):
        """`load`, checked and resumable: per chunk of `chunk_words`, the device's
        CHECKSUM first (a chunk it already holds is skipped: a load cut by a dropped
        link sends only what is missing when run again), then WRITE frames, then
        CHECKSUM again (a mismatch is written once more, then a `LinkError`).
        Progress on stderr: bytes, rate, time left; the total time at the end.
        Returns {"chunks", "sent", "skipped", "bytes_sent", "seconds"}."""
        image = np.ascontiguousarray(image, np.uint8)
        if image.ndim != 2 or image.shape[1] != self.mem_bytes:
            raise ValueError(f"image must be [words, {self.mem_bytes}] uint8, got {image.shape}")
        self._check_range(addr, len(image))
        if not 1 <= chunk_words <= 0xFFFF:
            raise ValueError(f"chunk_words must be 1..65535, not {chunk_words}")
        total = image.nbytes
        try:
            self.checksum(addr, min(len(image), chunk_words))
        except HardwareError as exc:
            if "OPCODE" not in str(exc):
                raise
            progress.note("the device has no CHECKSUM (a bitstream without it): the image "
                          "goes in plain WRITE frames, unchecked")
            self.load(image, addr)
            return None
        t0, c0 = time.perf_counter(), self.link.clock()
        # kept while it grows: after a dropped link it says how far the load got
        self.last_load = stats = {"chunks": 0, "sent": 0, "skipped": 0, "bytes_sent": 0}
        bar = progress.bar(None, "loading the memory image", total=total, unit="bytes")
        done = 0
        try:
            for s in range(0, len(image), chunk_words):
                chunk = image[s:s + chunk_words]
                want = P.crc32(chunk.tobytes())
                stats["chunks"] += 1
                if self.checksum(addr + s, len(chunk)) == want:
                    stats["skipped"] += 1
                else:
                    for attempt in range(2):
                        self.load(chunk, addr + s)
                        stats["bytes_sent"] += chunk.nbytes
                        got = self.checksum(addr + s, len(chunk))
                        if got == want:
                            break
                    else:
                        raise LinkError(
                            f"words {addr + s}..{addr + s + len(chunk) - 1}: the device's "
                            f"CRC-32 0x{got:08x} after writing them twice, the host's "
                            f"0x{want:08x}")
                    stats["sent"] += 1
                done += chunk.nbytes
                dt = self.link.clock() - c0
                rate = stats["bytes_sent"] / dt if dt > 0 else 0.0
                left = (total - done) / rate if rate > 0 else 0.0
                bar.update(done, extra=f"{rate / 1e3:.1f} kB/s, {left:.1f} s left, "
                                       f"{stats['skipped']} chunks already there")
        finally:
            bar.close()
        stats["seconds"] = self.link.clock() - c0
        progress.note(f"memory image loaded and CRC-checked: {total:,} bytes in "
                      f"{stats['chunks']} chunks ({stats['skipped']} already on the device) "
                      f"in {stats['seconds']:.1f} s of link time "
                      f"({time.perf_counter() - t0:.1f} s wall)")
        return stats

    def dump(self, addr=0, n=None):
        """READ frames of as many words as max_payload takes."""
        n = self.mem_words - addr if n is None else n
        self._check_range(addr, n)
        out = np.empty((n, self.mem_bytes), np.uint8)
        per = min(self.ident.max_payload // self.mem_bytes, 0xFFFF)
        for s in range(0, n, per):
            k = min(per, n - s)
            reply = self.request(P.Req.READ, struct.pack("<IH", addr + s, k),
                                 reply_bytes=k * self.mem_bytes,
                                 what=f"READ of {k} words at {addr + s}")
            if len(reply) != k * self.mem_bytes:
                raise LinkError(f"READ of {k} words at {addr + s}: reply of {len(reply)} "
                                f"bytes, expected {k * self.mem_bytes}")
            out[s:s + k] = np.frombuffer(reply, np.uint8).reshape(k, self.mem_bytes)
        return out

    def run(self, program):
        """EXEC frames of the program's instructions, then STATUS until ``busy`` clears.

        Returns error, cycles, icount (the machine's counters), wall_s, link_s
        (the link's clock: simulated seconds on a simulated board), polls and
        the bytes on the link both ways during the run.
        """
        if any(not 0 <= int(w) < 1 << INSTR_BITS for w in program):
            raise ValueError(f"instruction words must be unsigned {INSTR_BITS}-bit integers")
        words = [int(w).to_bytes(P.INSTR_BYTES, "little") for w in program]
        t0, c0 = time.perf_counter(), self.link.clock()
        b0 = self.bytes_out + self.bytes_in
        per = self.ident.max_payload // P.INSTR_BYTES
        for s in range(0, len(words), per):
            chunk = words[s:s + per]
            span = f"instructions {s}..{s + len(chunk) - 1} of {len(words)}"
            # the reply comes once the machine took every word: after the
            # instructions before them ran
            try:
                self.status(P.Req.EXEC, b"".join(chunk), wait_s=self.run_timeout_s,
                            what=f"EXEC of {span}")
            except LinkTimeout as exc:
                raise LinkTimeout(
                    f"the machine did not take {span} within run_timeout_s="
                    f"{self.run_timeout_s} s ({exc}); the device listens again once they "
                    f"ran (then RESET it: the program is incomplete)") from None
        deadline = c0 + self.run_timeout_s + WIRE_MARGIN * self.link.seconds_for(
            len(words) * P.INSTR_BYTES)
        polls = 0
        while True:
            st = self.status()
            polls += 1
            if not st.busy:
                break
            if self.link.clock() > deadline:
                raise LinkTimeout(f"the program of {len(words)} instructions still runs after "
                                  f"{self.run_timeout_s} s (icount {st.icount}, cycles "
                                  f"{st.cycles}); RESET the device")
        return {"error": st.error, "cycles": st.cycles, "icount": st.icount,
                "wall_s": time.perf_counter() - t0, "link_s": self.link.clock() - c0,
                "polls": polls, "link_bytes": self.bytes_out + self.bytes_in - b0}

    def close(self):
        self.link.close()


def model_mem_words(cfg, qmodel):
    """Memory words `qmodel` compiled for `cfg` occupies (weights, buffers, KV caches):
    what a board needs, and what `Driver(..., mem_words=)` should load over a slow link
    instead of the whole address space."""
    from gpt2accel.sim.host.compiler import ModelCompiler
    return ModelCompiler(cfg, qmodel, cfg.engine.max_m, 1 << cfg.engine.addr_bits).end
