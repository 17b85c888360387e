"""The host bridge: framed requests from a byte stream (the UART) to memory and machine.

It implements the device side of `rtl/protocol.py` (read its docstring: the
frame format, opcodes, replies and faults are defined there once).

```
 rx bytes ─► HUNT ─► OPC ─► LEN0 ─► LEN1 ─► PAYLOAD ─► CRC0 ─► CRC1 ─► DISPATCH
  (any state of the frame: gap > timeout_cycles ─► TIMEOUT, rx_error ─► SERIAL)   │
                      ▲                                                            │
                      │    ┌──────── WRITE: LOAD ⇄ WR (mem.wr) ◄───────────────────┤
                      │    ├──────── EXEC:  LOAD ⇄ INSTR (instr) ─► SETTLE ◄───────┤
                      │    ├──────── RESET: machine_reset pulse ─► SETTLE ◄────────┤
                      │    ▼                                                       │
                      └─ SEND_CRC ◄─ SEND_BODY / (READ) RD_REQ ⇄ RD_SEND ◄─ SEND_HDR ◄─┘
                                                                     tx bytes
```

- The payload goes into a byte buffer (`lib.memory.Memory` of `max_payload`
  bytes) while the CRC register follows every byte (`crc16_step`, one byte
  per cycle). Nothing leaves the bridge before CRC1 matched: WRITE data and
  EXEC words are read back from the buffer only in DISPATCH's successors, so
  a damaged frame never reaches memory or machine.
- The first six payload bytes are also kept in a register (READ/WRITE's
  address and READ's count), and the bytes after the first four are
  counted in words of `mem_bytes` while they arrive, so the length checks
  need no divider.
- After the CRC the checks run in this order: opcode (`Fault.OPCODE`),
  payload length (`Fault.LENGTH`), address range (`Fault.ADDRESS`, summed
  and compared in two registered steps while the CRC bytes arrive), machine
  busy (`Fault.BUSY`, WRITE and READ only), memory not ready (`Fault.MEMORY`,
  WRITE, READ and EXEC: ``mem_ready`` low, a board's DRAM still in its init
  sequence; it is high wherever the memory is on chip). A LEN above `max_payload` is
  refused as soon as the header is in, before any payload.
- A reply is sent byte by byte through multiplexers indexed by a byte
  counter, not through a shift register: the header from opcode and LEN
  registers, the identity from constants, the status from a register
  sampled when the reply starts, a READ word straight from the memory's
  response, which stays presented until its last byte left (one read in
  flight: the UART is far slower than memory); then the two CRC bytes.
  Every byte passes an output register, and the CRC follows the registered
  byte as it leaves: no path runs from the memory's read data through the
  multiplexers and the CRC network into the UART.
- Payloads (``instr``, ``mem.wr``, ``mem.rd_req``) are driven in every
  state and only ``valid`` depends on the state: gating the 512-bit
  instruction by the state cost 540-710 LUTs (synthesised, ECP5 and iCE40).
- Nothing can wedge it: HUNT only waits for bytes; inside a frame the
  inter-byte timer leads back to HUNT; a reply has a bounded length; WRITE
  and READ only touch memory while the machine is idle, so the memory always
  answers; EXEC waits for the machine to take each word and to act on the
  last, which it does once the instruction before that one has been issued
  or completed (every instruction completes in a bounded time,
  `rtl/machine.py`).
- EXEC and RESET reply with the status at least `FETCH_TO_ISSUE` cycles
  after the last word was taken (or the reset), once the machine is ready
  for another word: it has then acted on that word (issued it, or ended the
  program at its HALT, or recorded its error) and updated ``busy`` and
  ``error``. The machine takes words while an instruction runs, so an EXEC
  ending in HALT replies when the program has ended (``busy = 0``), one with
  an illegal word reports the error.
"""
import struct
from contextlib import contextmanager
from functools import partial

from amaranth.hdl import *
from amaranth.lib import data, enum, stream, wiring
from amaranth.lib.memory import Memory, ReadPort
from amaranth.lib.wiring import In, Out
from amaranth.utils import ceil_log2

from . import protocol as P
from .config import ConfigError, refusing
from .isa import OPCODE_BITS, body_layout
from .machine import FETCH_TO_ISSUE, instr_layout
from .machine_config import MachineConfig
from .memport import MemPort, read_request_layout, read_response_layout, write_layout

__all__ = ["HostBridge", "crc16_step", "crc32_step", "identity_bytes"]

#: largest `max_payload`: LEN is 16 bits and log2(max_payload) travels in a byte
MAX_PAYLOAD_LIMIT = 1 << 15
_READ_PAYLOAD = 6          # addr (uint32) + count (uint16)
_ADDR_BYTES = 4
_STATUS_BYTES = struct.calcsize(P.STATUS_FORMAT)
_IDENTITY_BYTES = struct.calcsize(P.IDENTITY_FORMAT)


class _Body(enum.Enum, shape=3):
    """What follows a reply's header."""
    EMPTY = 0        # WRITE acknowledged
    ERROR = 1        # (fault, request opcode)
    IDENTITY = 2     # PING
    STATUS = 3       # STATUS, EXEC, RESET
    READ = 4         # words streamed from memory
    CHECKSUM = 5     # the CRC-32 of a CHECKSUM's words


_BODY_BYTES = {_Body.EMPTY: 0, _Body.ERROR: 2, _Body.IDENTITY: _IDENTITY_BYTES,
               _Body.STATUS: _STATUS_BYTES, _Body.CHECKSUM: 4}


def _crc16_step_terms():
    """For each bit of the next CRC register, the input bits it is the XOR of.

    Inputs are numbered 0..15 (CRC register) and 16..23 (the byte). This runs
    the bitwise CRC-16/CCITT-FALSE recurrence of `protocol.crc16` on sets of
    input bits instead of bits, which yields the byte-parallel XOR network.
    """
    state = [frozenset([i]) for i in range(16)]
    for i in range(8):
        state[8 + i] ^= {16 + i}
    for _ in range(8):
        top = state[15]
        state = [frozenset()] + state[:15]
        for bit in (0, 5, 12):                 # polynomial 0x1021
            state[bit] ^= top
    return [sorted(s) for s in state]


_CRC_TERMS = _crc16_step_terms()


def _crc32_step_terms():
    """As `_crc16_step_terms`, for CHECKSUM's reflected CRC-32 (zlib's: the byte enters
    the register's low end, which shifts right; polynomial 0xEDB88320). Inputs 0..31
    are the register, 32..39 the byte."""
    state = [frozenset([i]) for i in range(32)]
    for i in range(8):
        state[i] ^= {32 + i}
    for _ in range(8):
        low = state[0]
        state = state[1:] + [frozenset()]
        for bit in range(32):
            if 0xEDB88320 >> bit & 1:
                state[bit] ^= low
    return [sorted(s) for s in state]


_CRC32_TERMS = _crc32_step_terms()


def _xor_network(terms, crc, byte):
    """The register after `byte`: each next bit the XOR of the inputs (register bits,
    then the byte's) its row of `terms` names."""
    bits = Cat(crc, byte)
    out = []
    for row in terms:
        x = bits[row[0]]
        for t in row[1:]:
            x = x ^ bits[t]
        out.append(x)
    return Cat(*out)


def crc32_step(crc, byte):
    """CHECKSUM's CRC-32 register after `byte` (the register before the final xor; an
    XOR network, one byte per cycle)."""
    return _xor_network(_CRC32_TERMS, crc, byte)


def crc16_step(crc, byte):
    """The CRC-16/CCITT-FALSE register after `byte` (an XOR network, one byte per cycle)."""
    return _xor_network(_CRC_TERMS, crc, byte)


def identity_bytes(cfg: MachineConfig, *, mem_words, max_payload):
    """The PING reply payload (`protocol.IDENTITY_FORMAT`) of the machine `Machine(cfg)`."""
    e = cfg.engine
    return struct.pack(P.IDENTITY_FORMAT, b"G2A", P.PROTOCOL_VERSION, e.mem_bytes,
                       max_payload.bit_length() - 1, mem_words,
                       P.config_id(cfg), e.rows, e.cols)


def _check_int(name, value, lo, hi, why=""):
    if not isinstance(value, int) or isinstance(value, bool):
        raise ConfigError(f"{name} must be an int, got {value!r}")
    if not lo <= value <= hi:
        raise ConfigError(f"{name}={value} is outside the supported range {lo}..{hi}"
                          + (f" ({why})" if why else ""))


class _Crc16(wiring.Component):
    """The one CRC register of both directions: a frame's bytes step it as they
    arrive (``rx_on``: a receiving state that covers them), a reply's as they
    leave the output register (``tx_en``); ``clear`` restarts it.

    The step network is taken when the bridge is built (`step`, normally
    `crc16_step`), so the network elaborated is the one the bridge was built
    with."""

    def __init__(self, step):
        self._step = step
        super().__init__({"rx_on": In(1), "rx_valid": In(1), "rx_byte": In(8),
                          "tx_en": In(1), "tx_byte": In(8), "clear": In(1),
                          "crc": Out(16, init=0xFFFF)})

    def elaborate(self, platform):
        m = Module()
        en = Mux(self.rx_on, self.rx_valid, self.tx_en)
        byte = Mux(self.rx_on, self.rx_byte, self.tx_byte)
        with m.If(self.clear):
            m.d.sync += self.crc.eq(0xFFFF)
        with m.Elif(en):
            m.d.sync += self.crc.eq(self._step(self.crc, byte))
        return m


class _ByteOut(wiring.Component):
    """The output byte register: tx comes from flip-flops, and the CRC follows
    the registered byte as it leaves (``crc_en``, unless the byte came with
    ``crc`` clear), so no path runs from the memory's read data through the
    byte multiplexer and the CRC network into the UART."""

    def __init__(self):
        super().__init__({
            "inp": In(stream.Signature(data.StructLayout({"byte": 8, "crc": 1}))),
            "tx": Out(stream.Signature(8)), "crc_en": Out(1), "obuf_crc": Out(1)})

    def elaborate(self, platform):
        m = Module()
        obuf, obuf_valid = Signal(8), Signal()
        m.d.comb += [self.tx.valid.eq(obuf_valid), self.tx.payload.eq(obuf),
                     self.inp.ready.eq(~obuf_valid),
                     self.crc_en.eq(self.tx.valid & self.tx.ready & self.obuf_crc)]
        with m.If(self.tx.valid & self.tx.ready):
            m.d.sync += obuf_valid.eq(0)
        with m.If(self.inp.valid & self.inp.ready):
            m.d.sync += [obuf.eq(self.inp.payload.byte), obuf_valid.eq(1),
                         self.obuf_crc.eq(self.inp.payload.crc)]
        return m


#: starting a reply: its opcode, kind and length (``start``), the fault code
#: (``set_fault``), whether to sample the status; the receiver (a fault inside a
#: frame) and the executor request replies, never in the same cycle
_REQUEST = data.StructLayout({"start": 1, "op": 8, "kind": _Body, "length": 16,
                              "set_fault": 1, "fault": 8, "sample": 1})


class _Reply(wiring.Component):
    """What a reply says besides its bytes' position: opcode, length and kind,
    latched when it starts, the fault code, and the status sampled then;
    ``header`` and ``body`` are byte ``idx`` of the header and of the body
    (READ bodies come from memory)."""

    def __init__(self, identity, idx_shape):
        self._identity = identity
        super().__init__({
            "req": In(_REQUEST),
            "busy": In(1), "error": In(2), "cycles": In(32), "icount": In(32),
            "req_op": In(8),             # the request's opcode, which ERROR bodies name
            "checksum": In(32),          # a CHECKSUM's CRC-32, held until the next
            "idx": In(idx_shape),
            "rep_op": Out(8), "rep_kind": Out(_Body), "rep_len": Out(16),
            "header": Out(8), "body": Out(8)})

    def elaborate(self, platform):
        m = Module()
        fault_code = Signal(8)
        stat = Signal(8 * _STATUS_BYTES)             # status, sampled when the reply starts
        r = self.req
        with m.If(r.start):
            m.d.sync += [self.rep_op.eq(r.op), self.rep_kind.eq(r.kind),
                         self.rep_len.eq(r.length)]
        with m.If(r.set_fault):
            m.d.sync += fault_code.eq(r.fault)
        with m.If(r.sample):
            m.d.sync += stat.eq(Cat(self.busy, C(0, 7), self.error, C(0, 6),
                                    self.cycles, self.icount))
        idx = self.idx
        header = Array([C(P.SYNC, 8), self.rep_op, self.rep_len[:8], self.rep_len[8:]])
        identity = Array(C(b, 8) for b in self._identity)
        body = {_Body.IDENTITY: identity[idx],
                _Body.STATUS: stat.word_select(idx, 8),
                _Body.CHECKSUM: self.checksum.word_select(idx[:2], 8),
                _Body.ERROR: Mux(idx[0], self.req_op, fault_code)}
        m.d.comb += self.header.eq(header[idx[:2]])
        with m.Switch(self.rep_kind):
            for kind, value in body.items():
                with m.Case(kind):
                    m.d.comb += self.body.eq(value)
        return m




class _Sender(wiring.Component):
    """The reply, byte by byte: header, body (or READ words straight from the
    memory's response, one read in flight: the UART is far slower than memory),
    CRC. It starts on ``req.start`` and ends with ``done``; the framing FSM
    waits for it, and owns the READ's word pointer and count (``rd_step``:
    one more word requested), which a WRITE and an EXEC use too."""

    def __init__(self, identity, idx_shape, cfg, left_shape):
        self._identity, self._idx_shape, self._cfg = identity, idx_shape, cfg
        super().__init__({
            "req": In(_REQUEST),
            "busy": In(1), "error": In(2), "cycles": In(32), "icount": In(32),
            "req_op": In(8),                        # the request's opcode (ERROR bodies)
            "checksum": In(32),
            "crc": In(16), "crc_en": Out(1), "crc_byte": Out(8), "obuf_crc": Out(1),
            "crc_clear": Out(1),                    # the reply's SYNC is still to go
            "tx": Out(stream.Signature(8)),
            "rd_valid": Out(1), "rd_ready": In(1),
            "rd_resp": In(stream.Signature(read_response_layout(cfg.engine))),
            "left": In(left_shape), "rd_step": Out(1),
            "active": Out(1), "done": Out(1), "rep_kind": Out(_Body), "reading": Out(1)})

    def elaborate(self, platform):
        m = Module()
        MB = self._cfg.engine.mem_bytes
        tx_idx = Signal(self._idx_shape)
        m.submodules.reply = rp = _Reply(self._identity, self._idx_shape)
        m.submodules.byte_out = out = _ByteOut()
        m.d.comb += [rp.req.eq(self.req), self.rep_kind.eq(rp.rep_kind)]
        wiring.connect(m, out.tx, wiring.flipped(self.tx))
        m.d.comb += [rp.idx.eq(tx_idx), rp.req_op.eq(self.req_op), rp.busy.eq(self.busy),
                     rp.checksum.eq(self.checksum),
                     rp.error.eq(self.error), rp.cycles.eq(self.cycles),
                     rp.icount.eq(self.icount), self.crc_en.eq(out.crc_en),
                     self.crc_byte.eq(out.tx.payload), self.obuf_crc.eq(out.obuf_crc)]

        def send(byte, *, valid=C(1, 1), crc_on=C(1, 1)):
            """Put `byte` into the output register once it is empty; the expression of
            that happening (`tx_idx` counts the bytes of the segment; the CRC takes the
            byte as it leaves, unless not `crc_on`)."""
            taken = valid & out.inp.ready
            m.d.comb += [out.inp.valid.eq(valid), out.inp.payload.byte.eq(byte),
                         out.inp.payload.crc.eq(crc_on)]
            with m.If(taken):
                m.d.sync += tx_idx.eq(tx_idx + 1)
            return taken

        with m.FSM(name="reply") as fsm:
            with m.State("IDLE"):
                with m.If(self.req.start):
                    m.d.sync += tx_idx.eq(0)
                    m.next = "SEND_HDR"
            with m.State("SEND_HDR"):
                with m.If(send(rp.header, crc_on=tx_idx != 0)
                          & (tx_idx == P.HEADER_BYTES - 1)):
                    m.d.sync += tx_idx.eq(0)
                    with m.Switch(rp.rep_kind):
                        with m.Case(_Body.READ):
                            m.next = "RD_REQ"
                        with m.Case(_Body.EMPTY):
                            m.next = "SEND_CRC"
                        with m.Default():
                            m.next = "SEND_BODY"
            with m.State("SEND_BODY"):
                # every body sent here has its kind's fixed length (READ's, the one
                # that varies, is counted in words): its last index from the kind's
                # three bits, not a subtract and compare on the 16-bit length
                body_last = Signal.like(tx_idx)
                with m.Switch(rp.rep_kind):
                    for kind, n in _BODY_BYTES.items():
                        if n:
                            with m.Case(kind):
                                m.d.comb += body_last.eq(n - 1)
                with m.If(send(rp.body) & (tx_idx == body_last)):
                    m.d.sync += tx_idx.eq(0)
                    m.next = "SEND_CRC"
            with m.State("RD_REQ"):
                m.d.comb += self.rd_valid.eq(1)
                with m.If(self.rd_ready):
                    m.d.comb += self.rd_step.eq(1)
                    m.next = "RD_SEND"
            with m.State("RD_SEND"):
                # the response stays presented until its last byte left: no word register
                resp = self.rd_resp
                last = tx_idx == MB - 1
                with m.If(send(resp.payload.data.word_select(tx_idx, 8), valid=resp.valid)
                          & last):
                    m.d.comb += resp.ready.eq(1)
                    m.d.sync += tx_idx.eq(0)
                    with m.If(self.left != 0):
                        m.next = "RD_REQ"
                    with m.Else():
                        m.next = "SEND_CRC"
            with m.State("SEND_CRC"):
                # the output register is empty, so the last payload byte is in the CRC
                with m.If(send(self.crc.word_select(tx_idx[0], 8), crc_on=C(0, 1))
                          & (tx_idx == P.CRC_BYTES - 1)):
                    m.d.comb += self.done.eq(1)
                    m.next = "IDLE"
        # busy unless idle (an encoding no state has counts as busy: the framing FSM
        # waits for the sender exactly while this is set)
        m.d.comb += [self.active.eq(~fsm.ongoing("IDLE")),
                     self.crc_clear.eq(fsm.ongoing("SEND_HDR") & (tx_idx == 0)),
                     self.reading.eq(fsm.ongoing("RD_REQ") | fsm.ongoing("RD_SEND"))]
        return m



class _RxState(enum.Enum, shape=3):
    """The receiver's state (`_Receiver.state`)."""
    HUNT = 0        # discarding bytes up to SYNC
    OPC = 1
    LEN0 = 2
    LEN1 = 3
    PAYLOAD = 4
    CRC0 = 5
    CRC1 = 6
    HELD = 7        # the frame is carried out or answered: no byte is taken


class _Receiver(wiring.Component):
    """A frame from the byte stream into the request registers and the byte
    buffer, with the CRC register following every byte. Nothing leaves before
    CRC1 matched (``frame``): the buffer is read only by the executor. A fault
    inside the frame (LEN above `max_payload`, CRC, a UART error, a gap of
    `timeout_cycles`) requests its ERROR reply itself. Either way it holds
    until the reply has left (``release``)."""

    def __init__(self, cfg, *, max_payload, mem_words, timeout_cycles):
        MB, MP = cfg.engine.mem_bytes, max_payload
        self._mb, self._mp, self._mem_words = MB, MP, mem_words
        self._timeout = timeout_cycles
        super().__init__({
            "rx": In(stream.Signature(8)), "rx_error": In(1), "state": Out(_RxState),
            "opcode": Out(8), "length": Out(16),
            "idx": Out(range(MP + 1)),                  # payload bytes received
            "last_idx": Out(16),                        # length - 1, set with length
            "field": Out(8 * _READ_PAYLOAD),            # the first payload bytes
            "tail_lane": Out(range(MB)),                # payload bytes after the address,
            "tail_words": Out(range(MP // MB + 1)),     # in words of mem_bytes
            "crc_lo": Out(8), "beyond": Out(1),         # WRITE/READ: words past the memory
            "timer": Out(range(timeout_cycles + 1)),
            # timer == timeout_cycles, registered with the timer: the wide compare
            # stays off the fault's path into the reply and the CRC
            "expired": Out(1),
            "crc": In(16), "crc_on": Out(1), "crc_clear": Out(1),
            "buf": Out(ReadPort.Signature(addr_width=ceil_log2(MP), shape=8)),
            "frame": Out(1), "req": Out(_REQUEST), "release": In(1)})

    def elaborate(self, platform):
        m = Module()
        MB, MP = self._mb, self._mp
        m.submodules.buf = buf = Memory(shape=8, depth=MP, init=[])
        buf_w = buf.write_port()
        wiring.connect(m, wiring.flipped(self.buf), buf.read_port(domain="sync"))
        rx, byte = self.rx, self.rx.payload
        opcode, length, idx, field = self.opcode, self.length, self.idx, self.field
        tail_lane, tail_words, timer = self.tail_lane, self.tail_words, self.timer
        expired = self.expired
        lo_nz = Signal()                                # LEN's low byte is not zero
        addr32, count = field[:32], field[32:48]
        span_end = Signal(34)                           # WRITE/READ: address + words
        m.d.comb += [buf_w.addr.eq(idx), buf_w.data.eq(byte)]

        def fault(code):
            r = self.req
            m.d.comb += [r.start.eq(1), r.op.eq(P.ERROR), r.kind.eq(_Body.ERROR),
                         r.length.eq(_BODY_BYTES[_Body.ERROR]), r.set_fault.eq(1),
                         r.fault.eq(int(code)),
                         self.frame.eq(0)]   # a UART error overrides a matching CRC byte
            m.d.sync += self.state.eq(_RxState.HELD)

        @contextmanager
        def receiving(*, crc_on=True):
            """A state inside a frame: the body handles a byte (``rx.valid``); a UART error
            or `timeout_cycles` without a byte override it with their fault."""
            m.d.comb += rx.ready.eq(1)
            m.d.sync += [timer.eq(Mux(rx.valid, 0, timer + 1)),
                         expired.eq(~rx.valid & (timer == self._timeout - 1))]
            if crc_on:
                m.d.comb += self.crc_on.eq(1)
            with m.If(rx.valid):
                yield
            with m.If(self.rx_error):
                fault(P.Fault.SERIAL)
            with m.Elif(expired & ~rx.valid):
                fault(P.Fault.TIMEOUT)

        with m.Switch(self.state):
            with m.Case(_RxState.HUNT):
                m.d.comb += [rx.ready.eq(1), self.crc_clear.eq(1)]
                with m.If(rx.valid & (byte == P.SYNC)):
                    m.d.sync += [opcode.eq(0), timer.eq(0), expired.eq(0),
                                 self.state.eq(_RxState.OPC)]
            with m.Case(_RxState.OPC), receiving():
                m.d.sync += [opcode.eq(byte), self.state.eq(_RxState.LEN0)]
            with m.Case(_RxState.LEN0), receiving():
                m.d.sync += [length[:8].eq(byte), lo_nz.eq(byte != 0),
                             self.state.eq(_RxState.LEN1)]
            with m.Case(_RxState.LEN1), receiving():
                new_len = Cat(length[:8], byte)
                if MP % 256 == 0:
                    # LEN's low byte as one bit (registered with it): with a limit in whole
                    # 256s the checks need no more of it, and the fault stays shallow
                    too_long = Cat(lo_nz, byte) > 2 * (MP // 256)
                    empty = ~lo_nz & (byte == 0)
                else:
                    too_long, empty = new_len > MP, new_len == 0
                # the payload's last index registered here: a subtract and a compare
                # on PAYLOAD's byte path were the iCE40's longest
                m.d.sync += [length[8:].eq(byte), idx.eq(0), field.eq(0),
                             tail_lane.eq(0), tail_words.eq(0),
                             self.last_idx.eq(new_len - 1)]
                with m.If(too_long):
                    fault(P.Fault.LENGTH)
                with m.Elif(empty):
                    m.d.sync += self.state.eq(_RxState.CRC0)
                with m.Else():
                    m.d.sync += self.state.eq(_RxState.PAYLOAD)
            with m.Case(_RxState.PAYLOAD), receiving():
                m.d.comb += buf_w.en.eq(1)
                m.d.sync += idx.eq(idx + 1)
                with m.If(idx < _READ_PAYLOAD):
                    m.d.sync += field.word_select(idx[:3], 8).eq(byte)
                with m.If(idx >= _ADDR_BYTES):
                    m.d.sync += tail_lane.eq(tail_lane + 1)
                    with m.If(tail_lane == MB - 1):
                        m.d.sync += [tail_lane.eq(0), tail_words.eq(tail_words + 1)]
                with m.If(idx == self.last_idx):
                    m.d.sync += self.state.eq(_RxState.CRC0)
            with m.Case(_RxState.CRC0), receiving(crc_on=False):
                # the address check in two registered steps while the CRC arrives,
                # keeping the 33-bit sum and compare off DISPATCH's path
                m.d.sync += [self.crc_lo.eq(byte), self.state.eq(_RxState.CRC1),
                             span_end.eq(addr32 + Mux((opcode == P.Req.READ)
                                                       | (opcode == P.Req.CHECKSUM),
                                                       count, tail_words))]
            with m.Case(_RxState.CRC1), receiving(crc_on=False):
                m.d.sync += self.beyond.eq(span_end > self._mem_words)
                with m.If(Cat(self.crc_lo, byte) == self.crc):
                    m.d.comb += self.frame.eq(1)
                    m.d.sync += self.state.eq(_RxState.HELD)
                with m.Else():
                    fault(P.Fault.CRC)
            with m.Case(_RxState.HELD):
                with m.If(self.release):
                    m.d.sync += self.state.eq(_RxState.HUNT)
        return m


class _ExState(enum.Enum, shape=3):
    """The executor's state (`_Executor.state`)."""
    IDLE = 0        # the receiver has the bytes, or the sender the reply
    DISPATCH = 1    # the checks, in order; the first failure is the reply
    LOAD = 2        # a word from the byte buffer
    WR = 3
    INSTR = 4
    RESET = 5
    SETTLE = 6      # the machine has acted on the last word: the status is sampled
    CHECKSUM = 7    # the checksum unit reads the words


class _Executor(wiring.Component):
    """A good frame (``frame``) carried out: the checks after the CRC, then WRITE's
    words to memory, EXEC's to the machine, RESET's pulse, and every reply
    requested (``req``). It owns the word pointer and count, which a READ's
    reply advances (``rd_step``). Words are assembled from the receiver's byte
    buffer a byte per cycle."""

    def __init__(self, cfg, *, max_payload, kept_bytes, checksum=True):
        e, MB, IB = cfg.engine, cfg.engine.mem_bytes, P.INSTR_BYTES
        self._cfg, self._mp, self._kb = cfg, max_payload, kept_bytes
        self._checksum = checksum
        super().__init__({
            "frame": In(1), "opcode": In(8), "length": In(16), "field": In(8 * _READ_PAYLOAD),
            "tail_lane": In(range(MB)), "tail_words": In(range(max_payload // MB + 1)),
            "beyond": In(1), "busy": In(1), "mem_ready": In(1, init=1),
            "buf": In(ReadPort.Signature(addr_width=ceil_log2(max_payload), shape=8)),
            "state": Out(_ExState), "req": Out(_REQUEST),
            "addr": Out(e.addr_bits),                               # memory word pointer
            "left": Out(range(max_payload // min(MB, IB) + 1)),     # words still to move
            "rd_step": In(1),
            "ck_start": Out(1), "ck_done": In(1),
            "wr": Out(stream.Signature(write_layout(e))),
            "instr": Out(stream.Signature(instr_layout())), "machine_reset": Out(1)})

    def _reply(self, m, op, kind=_Body.EMPTY, length=None):
        """Start sending a frame with opcode `op` whose payload is `kind`."""
        n = _BODY_BYTES[kind] if length is None else length
        m.d.comb += [self.req.start.eq(1), self.req.op.eq(op), self.req.kind.eq(kind),
                     self.req.length.eq(n)]
        if kind == _Body.STATUS:
            m.d.comb += self.req.sample.eq(1)
        m.d.sync += self.state.eq(_ExState.IDLE)

    def _fault(self, m, code):
        m.d.comb += [self.req.set_fault.eq(1), self.req.fault.eq(int(code))]
        self._reply(m, P.ERROR, _Body.ERROR)

    def elaborate(self, platform):
        m = Module()
        MB, MP, IB, KB = self._cfg.engine.mem_bytes, self._mp, P.INSTR_BYTES, self._kb
        W = max(MB, KB)
        opcode, length, tail_words = self.opcode, self.length, self.tail_words
        addr32, count = self.field[:32], self.field[32:48]
        addr, left = self.addr, self.left
        with m.If(self.rd_step):
            m.d.sync += [addr.eq(addr + 1), left.eq(left - 1)]
        ptr = Signal(range(MP + 1))                  # byte buffer read pointer
        word = Signal(8 * W)                         # assembled from the buffer, first byte low
        above = Signal()                             # an EXEC byte past the kept ones was nonzero
        bidx = Signal(range(IB))                     # index of the byte being loaded
        cnt = Signal(range(max(MB, IB) + 1))
        lag = Signal()                               # the buffer read port's byte is valid
        lag2, lbyte = Signal(), Signal(8)            # ... and registered
        m.d.sync += lbyte.eq(self.buf.data)
        settle = Signal(range(FETCH_TO_ISSUE + 1))

        reply, fault = partial(self._reply, m), partial(self._fault, m)
        # The checks on the frame's registers, registered every cycle: those registers
        # are final by CRC1, whose match starts DISPATCH a cycle later, so DISPATCH
        # reads a flip-flop per check instead of comparing the 16-bit length and
        # decoding the opcode on its way into the reply and the memory ports.
        op_bad = Signal()        # not an opcode of this bridge
        len_bad = Signal()       # the payload length the opcode refuses
        mem_op = Signal()        # WRITE / READ / CHECKSUM: address range, machine idle
        mem_need = Signal()      # ... and EXEC: the memory must be ready
        ops = {P.Req.PING: length != 0, P.Req.STATUS: length != 0,
               P.Req.RESET: length != 0,
               P.Req.WRITE: (length < _ADDR_BYTES + MB) | (self.tail_lane != 0),
               P.Req.READ: (length != _READ_PAYLOAD) | (count == 0) | (count > MP // MB),
               P.Req.EXEC: (length == 0) | (length[:IB.bit_length() - 1] != 0)}
        if self._checksum:
            ops[P.Req.CHECKSUM] = (length != _READ_PAYLOAD) | (count == 0)
        # ... and the opcode decoded, one flip-flop per opcode
        is_op = {op: Signal(name=f"is_{op.name.lower()}") for op in ops}
        m.d.sync += [is_op[op].eq(opcode == op) for op in ops]
        with m.Switch(opcode):
            for op, bad in ops.items():
                with m.Case(op):
                    m.d.sync += [len_bad.eq(bad),
                                 mem_op.eq(op in (P.Req.WRITE, P.Req.READ, P.Req.CHECKSUM)),
                                 mem_need.eq(op in (P.Req.WRITE, P.Req.READ, P.Req.CHECKSUM,
                                                    P.Req.EXEC))]
            with m.Default():
                m.d.sync += [len_bad.eq(0), mem_op.eq(0), mem_need.eq(0)]
        m.d.sync += op_bad.eq(~Cat(opcode == op for op in ops).any())

        # payloads are driven in every state (only `valid` depends on the state): a
        # payload gated by the state would cost a gate per bit (512 for `instr`)
        m.d.comb += [self.buf.addr.eq(ptr), self.buf.en.eq(1),
                     self.wr.payload.addr.eq(addr), self.wr.payload.data.eq(word[:8 * MB]),
                     self.wr.payload.strb.eq((1 << MB) - 1),
                     self.instr.payload.word.eq(Cat(word[:8 * KB], above if KB < IB else C(0, 0)))]

        with m.Switch(self.state):
            with m.Case(_ExState.IDLE):
                # the receiver has the bytes, or the sender the reply
                with m.If(self.frame):
                    m.d.sync += self.state.eq(_ExState.DISPATCH)

            with m.Case(_ExState.DISPATCH):
                # in the order of the module docstring: opcode, length, address, busy,
                # memory not ready (WRITE/READ/CHECKSUM get all three, EXEC the last)
                with m.If(op_bad):
                    fault(P.Fault.OPCODE)
                with m.Elif(len_bad):
                    fault(P.Fault.LENGTH)
                with m.Elif(mem_op & self.beyond):
                    fault(P.Fault.ADDRESS)
                with m.Elif(mem_op & self.busy):
                    fault(P.Fault.BUSY)
                with m.Elif(mem_need & ~self.mem_ready):
                    fault(P.Fault.MEMORY)
                with m.Else():
                    ok_op = opcode | P.REPLY
                    with m.If(is_op[P.Req.PING]):
                        reply(ok_op, _Body.IDENTITY)
                    with m.If(is_op[P.Req.STATUS]):
                        reply(ok_op, _Body.STATUS)
                    with m.If(is_op[P.Req.RESET]):
                        m.d.sync += self.state.eq(_ExState.RESET)
                    with m.If(is_op[P.Req.WRITE]):
                        m.d.sync += [addr.eq(addr32), left.eq(tail_words),
                                     ptr.eq(_ADDR_BYTES), cnt.eq(MB), lag.eq(0), bidx.eq(0)]
                        m.d.sync += self.state.eq(_ExState.LOAD)
                    with m.If(is_op[P.Req.READ]):
                        reply(ok_op, _Body.READ, count * MB)
                        m.d.sync += [addr.eq(addr32), left.eq(count)]
                    if self._checksum:
                        with m.If(is_op[P.Req.CHECKSUM]):
                            m.d.comb += self.ck_start.eq(1)
                            m.d.sync += self.state.eq(_ExState.CHECKSUM)
                    with m.If(is_op[P.Req.EXEC]):
                        m.d.sync += [left.eq(length[IB.bit_length() - 1:]), ptr.eq(0),
                                     cnt.eq(IB), lag.eq(0), bidx.eq(0), above.eq(0)]
                        m.d.sync += self.state.eq(_ExState.LOAD)

            with m.Case(_ExState.LOAD):
                # cnt bytes from the buffer into `word`, one per cycle: read (lag), then
                # registered (lbyte, lag2) before any logic, since the block RAM's output
                # is slow (5.8 ns on ECP5) and `above` compares the byte
                m.d.sync += [lag.eq(cnt != 0), lag2.eq(lag)]
                with m.If(cnt != 0):
                    m.d.sync += [ptr.eq(ptr + 1), cnt.eq(cnt - 1)]
                with m.If(lag2):
                    m.d.sync += bidx.eq(bidx + 1)
                    with m.Switch(bidx):
                        for i in range(W):
                            with m.Case(i):
                                m.d.sync += word.word_select(i, 8).eq(lbyte)
                                if i >= KB:
                                    m.d.sync += above.eq(above | (lbyte != 0))
                        with m.Default():
                            m.d.sync += above.eq(above | (lbyte != 0))
                    with m.If((cnt == 0) & ~lag):
                        with m.If(opcode == P.Req.WRITE):
                            m.d.sync += self.state.eq(_ExState.WR)
                        with m.Else():
                            m.d.sync += self.state.eq(_ExState.INSTR)
            with m.Case(_ExState.WR):
                m.d.comb += self.wr.valid.eq(1)
                with m.If(self.wr.ready):
                    m.d.sync += [addr.eq(addr + 1), left.eq(left - 1), cnt.eq(MB), bidx.eq(0)]
                    with m.If(left == 1):
                        reply(opcode | P.REPLY)
                    with m.Else():
                        m.d.sync += self.state.eq(_ExState.LOAD)
            with m.Case(_ExState.INSTR):
                m.d.comb += self.instr.valid.eq(1)
                with m.If(self.instr.ready):
                    m.d.sync += [left.eq(left - 1), cnt.eq(IB), bidx.eq(0), above.eq(0)]
                    with m.If(left == 1):
                        m.d.sync += settle.eq(FETCH_TO_ISSUE)
                        m.d.sync += self.state.eq(_ExState.SETTLE)
                    with m.Else():
                        m.d.sync += self.state.eq(_ExState.LOAD)
            with m.Case(_ExState.CHECKSUM):
                with m.If(self.ck_done):
                    reply(opcode | P.REPLY, _Body.CHECKSUM)
            with m.Case(_ExState.RESET):
                m.d.comb += self.machine_reset.eq(1)
                m.d.sync += settle.eq(FETCH_TO_ISSUE)
                m.d.sync += self.state.eq(_ExState.SETTLE)
            with m.Case(_ExState.SETTLE):
                with m.If(settle != 0):
                    m.d.sync += settle.eq(settle - 1)
                # the machine takes the next word while an instruction runs: the last
                # word is acted on (issued, or its HALT has ended the program) once the
                # machine is ready for another
                with m.Elif(self.instr.ready):
                    reply(opcode | P.REPLY, _Body.STATUS)
        return m


class _Checksum(wiring.Component):
    """CHECKSUM's reader: ``count`` words from ``addr`` (both from the frame's
    registers when ``start`` pulses), one read in flight, each word's bytes through
    the CRC-32 step a byte per cycle from a shift register; ``done`` pulses when the
    last byte went in, and ``crc`` (final xor applied) then holds until the next
    start. The read's data is registered before any logic, as READ's is not needed."""

    def __init__(self, cfg):
        e = cfg.engine
        self._mb = e.mem_bytes
        super().__init__({
            "start": In(1), "addr": In(e.addr_bits), "count": In(16),
            "rd_req": Out(stream.Signature(read_request_layout(e))),
            "rd_resp": In(stream.Signature(read_response_layout(e))),
            "done": Out(1), "crc": Out(32), "active": Out(1)})

    def elaborate(self, platform):
        m = Module()
        MB = self._mb
        reg = Signal(32, init=0xFFFFFFFF)
        ptr = Signal.like(self.addr)
        left = Signal(16)
        shift = Signal(8 * MB)
        n = Signal(range(MB + 1))
        m.d.comb += [self.rd_req.payload.addr.eq(ptr), self.crc.eq(~reg)]
        with m.FSM(name="checksum") as fsm:
            with m.State("IDLE"):
                with m.If(self.start):
                    m.d.sync += [reg.eq(0xFFFFFFFF), ptr.eq(self.addr), left.eq(self.count)]
                    m.next = "REQ"
            with m.State("REQ"):
                m.d.comb += self.rd_req.valid.eq(1)
                with m.If(self.rd_req.ready):
                    m.d.sync += [ptr.eq(ptr + 1), left.eq(left - 1)]
                    m.next = "RESP"
            with m.State("RESP"):
                m.d.comb += self.rd_resp.ready.eq(1)
                with m.If(self.rd_resp.valid):
                    m.d.sync += [shift.eq(self.rd_resp.payload.data), n.eq(MB)]
                    m.next = "CRC"
            with m.State("CRC"):
                m.d.sync += [reg.eq(crc32_step(reg, shift[:8])), shift.eq(shift >> 8),
                             n.eq(n - 1)]
                with m.If(n == 1):
                    with m.If(left == 0):
                        m.next = "DONE"
                    with m.Else():
                        m.next = "REQ"
            with m.State("DONE"):
                m.d.comb += self.done.eq(1)
                m.next = "IDLE"
        m.d.comb += self.active.eq(~fsm.ongoing("IDLE"))
        return m


class HostBridge(wiring.Component):
    """Device side of the host link protocol (`rtl/protocol.py`); see the module docstring.

    Ports: ``rx`` / ``tx`` byte streams (to the UART), ``rx_error`` (a UART
    framing error or overrun: `Fault.SERIAL` inside a frame), ``instr`` (the
    machine's instruction stream), ``mem`` (a requester port,
    `memport.MemPort`), the machine's status ``busy``,
    ``error``, ``cycles``, ``icount`` as inputs, ``mem_ready`` (low while a board's
    DRAM initialises: memory requests get `Fault.MEMORY`), and ``machine_reset``
    (one-cycle pulse for RESET). `cfg` is the machine's (`rtl.machine.Machine`): its
    built opcodes size the EXEC word, the whole config enters the PING identity.
    """

    def __init__(self, cfg: MachineConfig, *, mem_words, max_payload=1024, timeout_cycles,
                 checksum=True):
        cfg = MachineConfig.of(cfg)
        e = cfg.engine
        with refusing(self):
            _check_int("mem_bytes", e.mem_bytes, 1, 255, "the PING identity reports it in a byte")
            _check_int("mem_words", mem_words, 1, min(1 << e.addr_bits, (1 << 32) - 1),
                       f"word addresses are {e.addr_bits} bits on the machine, 32 in the protocol")
            least = max(P.INSTR_BYTES, _ADDR_BYTES + e.mem_bytes)
            _check_int("max_payload", max_payload, least, MAX_PAYLOAD_LIMIT,
                       "an EXEC word and a one-word WRITE must fit; LEN is 16 bits")
            if max_payload & (max_payload - 1):
                raise ConfigError(f"max_payload={max_payload} must be a power of two "
                                  "(PING reports log2(max_payload))")
            _check_int("timeout_cycles", timeout_cycles, 1, 1 << 32)
        self.cfg, self.mem_words, self.max_payload = cfg, mem_words, max_payload
        self.timeout_cycles = timeout_cycles
        # CHECKSUM's unit (a CRC-32 network, a word's shift register, counters) costs
        # about 235 iCE40 logic cells, which the iCEBreaker's co-processor has not got:
        # without it CHECKSUM is an unknown opcode (`Fault.OPCODE`)
        self.checksum = bool(checksum)
        # An EXEC word keeps its bytes up to the end of the widest built body; the
        # bytes above matter only as "reserved bits set" (the machine decides that at
        # fetch, `Machine`), so they collapse into one sticky bit placed just above the
        # kept bytes: hundreds of flip-flops fewer, the same decode (`presented`).
        body_end = max(OPCODE_BITS + body_layout(cfg, op).size for op in cfg.built_ops)
        self.kept_bytes = min(P.INSTR_BYTES, -(-body_end // 8))
        super().__init__({
            "rx": In(stream.Signature(8)), "rx_error": In(1), "tx": Out(stream.Signature(8)),
            "instr": Out(stream.Signature(instr_layout())),
            "mem": Out(MemPort.for_config(e)),
            "busy": In(1), "error": In(2), "cycles": In(32), "icount": In(32),
            "mem_ready": In(1, init=1), "machine_reset": Out(1)})

    @property
    def identity(self):
        return identity_bytes(self.cfg, mem_words=self.mem_words, max_payload=self.max_payload)

    def presented(self, word):
        """The instruction word the machine sees for EXEC word `word`: its kept bytes,
        and one bit above them set when any byte beyond them is nonzero."""
        keep = 8 * self.kept_bytes
        if keep >= 8 * P.INSTR_BYTES:
            return word
        return (word & ((1 << keep) - 1)) | (int(word >> keep != 0) << keep)

    def elaborate(self, platform):
        m = Module()
        MP = self.max_payload
        m.submodules.receiver = rcv = _Receiver(self.cfg, max_payload=MP,
                                                mem_words=self.mem_words,
                                                timeout_cycles=self.timeout_cycles)
        m.submodules.executor = exe = _Executor(self.cfg, max_payload=MP,
                                                kept_bytes=self.kept_bytes,
                                                checksum=self.checksum)
        m.submodules.sender = snd = _Sender(
            self.identity, range(max(P.HEADER_BYTES, _IDENTITY_BYTES, _STATUS_BYTES,
                                     self.cfg.engine.mem_bytes)),
            self.cfg, exe.left.shape())
        ck = _Checksum(self.cfg)
        if self.checksum:
            m.submodules.checksum = ck
        else:
            # never elaborated: its outputs stay at their reset values (never reading,
            # never done), what the connections below expect of an absent unit
            ck._MustUse__silence = True
        # built here, so that the CRC network is the one this bridge was built with
        m.submodules.crc = crc_unit = _Crc16(crc16_step)
        wiring.connect(m, wiring.flipped(self.rx), rcv.rx)
        wiring.connect(m, snd.tx, wiring.flipped(self.tx))
        wiring.connect(m, rcv.buf, exe.buf)
        wiring.connect(m, exe.wr, wiring.flipped(self.mem.wr))
        wiring.connect(m, exe.instr, wiring.flipped(self.instr))
        # the memory's responses go to the sender (READ) or the checksum unit, which
        # never read at the same time: each takes a word only in its reading state
        resp = self.mem.rd_resp
        m.d.comb += [snd.rd_resp.valid.eq(resp.valid), snd.rd_resp.payload.eq(resp.payload),
                     ck.rd_resp.valid.eq(resp.valid), ck.rd_resp.payload.eq(resp.payload),
                     resp.ready.eq(snd.rd_resp.ready | ck.rd_resp.ready)]
        # the receiver's registers are the executor's request
        m.d.comb += [getattr(exe, k).eq(getattr(rcv, k))
                     for k in ("frame", "opcode", "length", "field", "tail_lane", "tail_words",
                               "beyond")]
        # one CRC network for both directions: a frame's bytes arrive, or a reply's
        # leave (only a reply's CRC bytes, which the CRC skips, can still be leaving
        # when the next frame arrives)
        m.d.comb += [rcv.rx_error.eq(self.rx_error), rcv.crc.eq(crc_unit.crc),
                     rcv.release.eq(snd.done),
                     crc_unit.rx_on.eq(rcv.crc_on), crc_unit.rx_valid.eq(self.rx.valid),
                     crc_unit.rx_byte.eq(self.rx.payload), crc_unit.tx_en.eq(snd.crc_en),
                     crc_unit.tx_byte.eq(snd.crc_byte),
                     # cleared from registered states, not from the decisions that start
                     # a frame or a reply: all of HUNT (a frame's SYNC takes no step), and
                     # while a reply's SYNC (which the CRC skips too) waits to be sent
                     crc_unit.clear.eq(rcv.crc_clear | snd.crc_clear),
                     # a reply is requested by the receiver (a fault inside a frame) or
                     # by the executor, never both in one cycle, and each drives zeros
                     # when it does not: an OR, not a multiplexer on the receiver's
                     # fault decision in front of every field
                     snd.req.eq(rcv.req.as_value() | exe.req.as_value()),
                     snd.crc.eq(crc_unit.crc),
                     snd.req_op.eq(rcv.opcode), snd.busy.eq(self.busy),
                     snd.error.eq(self.error), snd.cycles.eq(self.cycles),
                     snd.icount.eq(self.icount), snd.left.eq(exe.left),
                     exe.busy.eq(self.busy), exe.mem_ready.eq(self.mem_ready),
                     exe.rd_step.eq(snd.rd_step),
                     self.machine_reset.eq(exe.machine_reset),
                     self.mem.rd_req.valid.eq(snd.rd_valid | ck.rd_req.valid),
                     self.mem.rd_req.payload.addr.eq(Mux(ck.active, ck.rd_req.payload.addr,
                                                         exe.addr)),
                     snd.rd_ready.eq(self.mem.rd_req.ready),
                     ck.rd_req.ready.eq(self.mem.rd_req.ready),
                     ck.start.eq(exe.ck_start), ck.addr.eq(rcv.field[:32]),
                     ck.count.eq(rcv.field[32:48]), exe.ck_done.eq(ck.done),
                     snd.checksum.eq(ck.crc)]

        # read-only view of the frame registers for the formal harness, whose
        # invariants relate them to its own parse of the byte stream so that
        # k-induction closes (sim/formal/bridge.py); nothing here reads it
        self.formal_view = dict(rx_state=rcv.state, ex_state=exe.state, opcode=rcv.opcode,
                                length=rcv.length, idx=rcv.idx, last_idx=rcv.last_idx,
                                crc=crc_unit.crc,
                                crc_lo=rcv.crc_lo, tail_lane=rcv.tail_lane,
                                tail_words=rcv.tail_words, timer=rcv.timer,
                                expired=rcv.expired, left=exe.left,
                                obuf_crc=snd.obuf_crc, replying=snd.active,
                                checksumming=ck.active, rep_kind=snd.rep_kind,
                                reading=snd.reading)
        return m
