"""The host link protocol, defined once for the board's UART bridge and the host driver.

Every message in either direction is one frame of bytes::

    SYNC | OPCODE | LEN (uint16, little-endian) | PAYLOAD (LEN bytes) | CRC (uint16, LE)

CRC is CRC-16/CCITT-FALSE (polynomial 0x1021, initial value 0xFFFF, no
reflection, no final xor) over OPCODE, both LEN bytes and the payload, so a
corrupted header is caught like a corrupted payload. The device hunts for
`SYNC` between frames; bytes before it are discarded silently.

Requests (host to device) and their payloads:

=========  ========================================  ==========================================
opcode     request payload                           reply payload (opcode | `REPLY`)
=========  ========================================  ==========================================
PING       empty                                     `identity` (`IDENTITY_FORMAT`)
WRITE      addr (uint32) + k >= 1 memory words       empty, after the words are in memory
READ       addr (uint32) + count (uint16) >= 1       count memory words
EXEC       k >= 1 instruction words (64 bytes each)  `status`, once the machine took every word
STATUS     empty                                     `status` (`STATUS_FORMAT`)
RESET      empty                                     `status`, after the machine was reset
CHECKSUM   addr (uint32) + count (uint16) >= 1       CRC-32 (uint32) of the count words' bytes
=========  ========================================  ==========================================

CHECKSUM's CRC is zlib's (`zlib.crc32`: reflected polynomial 0xEDB88320, initial
and final xor 0xFFFFFFFF) over the words as READ would return them, computed by
the device reading its own memory, so a host checks a load end to end without
reading it back over the link; its count is not bounded by `max_payload`.

Addresses count memory words of `mem_bytes` bytes (the machine's memory port
word); words and instructions travel little-endian. A READ reply obeys the
same `max_payload` as a request (count * mem_bytes <= max_payload), so the
host splits long reads like long writes. An instruction is only
handed to the machine, and a word only written to memory, after the whole
frame arrived and its CRC matched: a damaged frame never reaches the engine.

Anything wrong gets an `ERROR` reply whose payload is (`Fault`, request
opcode or 0) and the device returns to hunting for `SYNC`:

* a CRC mismatch (`Fault.CRC`), a LEN above the device's `max_payload` or a
  payload length the opcode does not allow (`Fault.LENGTH`), an unknown
  opcode (`Fault.OPCODE`), an address range outside the memory
  (`Fault.ADDRESS`), a memory access while a program runs (`Fault.BUSY`);
  a frame whose CRC matched is checked in that order (opcode, length,
  address, busy) and the first failing check is reported;
* a WRITE, READ or EXEC while the memory is not ready yet (`Fault.MEMORY`: a
  board's external DRAM still running its init sequence after configuration),
  checked after busy;
* a frame that stops arriving: a gap longer than the device's byte timeout
  inside a frame (`Fault.TIMEOUT`), so a truncated frame never wedges it;
* a UART framing error (missing stop bit) or overrun (a byte arriving before
  the previous one was taken) inside a frame (`Fault.SERIAL`).

A program (`EXEC` frames, as many as it takes) ends with HALT; the host
polls STATUS until ``busy`` clears, then reads the results with READ. RESET
returns the machine to idle from anywhere, mid-instruction included; the
memory keeps its contents.
"""
import enum
import struct
import zlib

__all__ = ["SYNC", "Req", "REPLY", "ERROR", "Fault", "HEADER_BYTES", "CRC_BYTES",
           "INSTR_BYTES", "IDENTITY_FORMAT", "STATUS_FORMAT", "CHECKSUM_FORMAT", "PROTOCOL_VERSION",
           "crc16", "crc32", "frame", "parse_frame", "config_id", "FrameError"]

SYNC = 0x5A
HEADER_BYTES = 4            #: SYNC, OPCODE, LEN (2)
CRC_BYTES = 2
INSTR_BYTES = 64            #: one `isa.INSTR_BITS` word
#: 2: `Fault.MEMORY` (a memory access before a board's DRAM finished its init), CHECKSUM
PROTOCOL_VERSION = 2


class Req(enum.IntEnum):
    """Request opcodes (host to device)."""
    PING = 0x01
    WRITE = 0x02
    READ = 0x03
    EXEC = 0x04
    STATUS = 0x05
    RESET = 0x06
    CHECKSUM = 0x07


#: a successful reply carries the request's opcode with this bit set
REPLY = 0x80
#: the opcode of an error reply
ERROR = 0xFF


class Fault(enum.IntEnum):
    """First payload byte of an `ERROR` reply."""
    CRC = 1
    LENGTH = 2
    OPCODE = 3
    ADDRESS = 4
    BUSY = 5
    TIMEOUT = 6
    SERIAL = 7
    MEMORY = 8


#: PING reply: magic b"G2A", protocol version, mem_bytes, log2(max_payload),
#: memory depth in words (uint32), config_id (uint32), array rows, array cols
IDENTITY_FORMAT = "<3sBBBIIBB"
#: CHECKSUM reply: the CRC-32
CHECKSUM_FORMAT = "<I"
#: STATUS / EXEC / RESET reply: busy, error (`isa.Error`), cycles (uint32), icount (uint32)
STATUS_FORMAT = "<BBII"


class FrameError(ValueError):
    """Bytes that are not one well-formed frame (host-side parsing)."""


def crc16(data: bytes, crc: int = 0xFFFF) -> int:
    """CRC-16/CCITT-FALSE of `data` (check value: crc16(b"123456789") == 0x29B1)."""
    for byte in data:
        crc ^= byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021 if crc & 0x8000 else crc << 1) & 0xFFFF
    return crc


def crc32(data: bytes, crc: int = 0) -> int:
    """CHECKSUM's CRC-32 of `data` (zlib's; `crc`: the value so far, to continue it)."""
    return zlib.crc32(bytes(data), crc)


def frame(opcode: int, payload: bytes = b"") -> bytes:
    """The bytes of one frame."""
    if not 0 <= opcode <= 0xFF:
        raise FrameError(f"opcode {opcode} does not fit a byte")
    if len(payload) > 0xFFFF:
        raise FrameError(f"payload of {len(payload)} bytes exceeds the 16-bit LEN field")
    body = struct.pack("<BH", opcode, len(payload)) + bytes(payload)
    return bytes([SYNC]) + body + struct.pack("<H", crc16(body))


def parse_frame(data: bytes):
    """(opcode, payload) of the frame that is exactly `data`; FrameError naming the defect."""
    if len(data) < HEADER_BYTES + CRC_BYTES:
        raise FrameError(f"frame of {len(data)} bytes is shorter than the "
                         f"{HEADER_BYTES + CRC_BYTES}-byte minimum")
    if data[0] != SYNC:
        raise FrameError(f"frame starts with 0x{data[0]:02x}, not SYNC 0x{SYNC:02x}")
    opcode, length = struct.unpack_from("<BH", data, 1)
    if len(data) != HEADER_BYTES + length + CRC_BYTES:
        raise FrameError(f"LEN says {length} payload bytes but the frame carries "
                         f"{len(data) - HEADER_BYTES - CRC_BYTES}")
    (crc,) = struct.unpack_from("<H", data, HEADER_BYTES + length)
    want = crc16(data[1:HEADER_BYTES + length])
    if crc != want:
        raise FrameError(f"CRC 0x{crc:04x} does not match the frame's 0x{want:04x}")
    return opcode, bytes(data[HEADER_BYTES:HEADER_BYTES + length])


def config_id(cfg) -> int:
    """32-bit fingerprint of a machine configuration (a `MachineConfig`; an AttentionConfig
    is the machine with the defaults), reported by PING so that a host refuses to run a
    program compiled for a different bitstream: the engines' config, the residual width,
    the opcodes built and each one's instruction body layout, so that a bitstream built
    before an instruction changed its fields is refused too. The exp2 table is left
    out: a bitstream always carries numerics' table."""
    from .isa import body_layout
    from .machine_config import MachineConfig
    cfg = MachineConfig.of(cfg)
    bodies = tuple((op.name, repr(body_layout(cfg, op))) for op in cfg.built_ops)
    return zlib.crc32(repr((cfg.attention, cfg.resid_bits, bodies)).encode())
