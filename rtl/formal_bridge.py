"""Formal harness of the host bridge (`rtl/bridge.py`): damaged frames never reach the engine.

The harness parses the byte stream the bridge takes (``rx`` transfers) on its
own, from the frame format of `rtl/protocol.py`: hunt for SYNC, OPCODE, LEN,
LEN payload bytes, CRC. The proof is split in two, because a SAT solver
proves two different CRC circuits equal over a whole frame only slowly:

- ``crc_network`` (`CrcHarness`, one cycle, all 2^24 inputs): the bridge's
  byte-parallel XOR network `bridge.crc16_step` equals the bitwise
  CRC-16/CCITT-FALSE recurrence of `protocol.crc16` (`crc16_bitwise`);
- the frame properties (`BridgeHarness`), whose parser then computes the
  frame's CRC with `bridge.crc16_step`, but by itself: over the bytes it
  sees, at the frame positions the protocol defines.

A frame is
*good* when its CRC matches and its length is one the protocol allows for
its opcode (LEN <= max_payload; EXEC: k >= 1 words of 64 bytes; WRITE: an
address and k >= 1 memory words; RESET: empty); a UART error inside a frame
spoils it. Properties: an instruction reaches the machine (``instr``
transfer) only after a good EXEC frame, and at most as many as it carries;
a memory write only after a good WRITE frame; ``machine_reset`` only after a
good RESET frame; the stream rule on ``tx``, ``instr``, ``mem.wr``,
``mem.rd_req``.

The byte timeout is set beyond the proof depth (a gap can never expire
here); the timeout path is covered by the simulation tests. An EXEC frame
is 70 bytes plus 64 cycles to load the word, so instruction deliveries are
only reached by the deep runs; WRITE and RESET deliveries by every run.
"""
import threading

from amaranth.hdl import *

from . import bridge as _bridge
from . import protocol as P
from .bridge import HostBridge
from .formal import beat_counter, past_valid
from .formal_engines import memory
from .formal_units import SMALL_ATTENTION, UnitHarness, register

__all__ = ["BridgeHarness", "crc16_bitwise", "BRIDGE_ARGS"]

#: 4-byte words (SMALL_ATTENTION), 16 of them, the smallest max_payload (one EXEC word)
BRIDGE_ARGS = dict(mem_words=16, max_payload=64, timeout_cycles=1000)

#: `CrcIgnoringBridge` swaps a module global while it elaborates
_SWAP = threading.Lock()


def crc16_bitwise(m, crc, byte):
    """CRC-16/CCITT-FALSE after `byte`, bit by bit as `protocol.crc16` computes it
    (one signal per bit step, so the expression does not grow 3x per step)."""
    c = Signal(16, name="crc_step0")
    m.d.comb += c.eq(crc ^ (byte << 8))
    for i in range(8):
        n = Signal(16, name=f"crc_step{i + 1}")
        m.d.comb += n.eq(Mux(c[15], (c << 1) ^ 0x1021, c << 1))
        c = n
    return c


class CrcIgnoringBridge(HostBridge):
    """Seeded bug: a bridge whose CRC register never changes (a broken CRC network),
    so any frame whose CRC bytes read FFFF passes its check."""

    def elaborate(self, platform):
        with _SWAP:
            saved = _bridge.crc16_step
            _bridge.crc16_step = lambda crc, byte: crc
            try:
                return super().elaborate(platform)
            finally:
                _bridge.crc16_step = saved


@register
class BridgeHarness(UnitHarness):
    unit, cls = "bridge", HostBridge
    config = "SMALL_ATTENTION (4-byte words), 16 words, max_payload 64, no byte timeout"
    # a good WRITE frame is 14 bytes, its word reaches memory 7 cycles later
    depth, deep_depth = 22, 150
    bmc_only = ("no_bad_exec", "no_bad_write", "no_bad_reset", "exec_words",
                "tx_hold", "instr_hold", "mem_wr_hold", "mem_rd_req_hold")
    # an EXEC delivery needs ~140 cycles (70 bytes, 64 cycles to load the word):
    # below that these properties would hold vacuously, so only deep runs check them
    deep_only = ("reach_exec", "no_bad_exec", "exec_words", "instr_hold")
    # a RESET frame is 6 bytes: its pulse comes by step 8 (reach_reset)
    depths = {"no_bad_reset": 12, "reach_reset": 12, "no_bad_write": 21, "reach_write": 21}
    bugs = {"no_bad_exec": ("tie", "instr.valid", 1),
            "exec_words": ("tie", "instr.valid", 1),
            "no_bad_write": ("crc",),
            "no_bad_reset": ("crc",),
            "mem_wr_hold": ("ignore_ready", "mem.wr"),
            "mem_rd_req_hold": ("ignore_ready", "mem.rd_req")}

    def dut(self, m, *args, **kwargs):
        if self.bug == ("crc",):
            m.submodules.dut = dut = CrcIgnoringBridge(*args, **kwargs)
            return self.open(dut)
        return super().dut(m, *args, **kwargs)

    def build(self, m):
        pv = past_valid(m)
        u = self.dut(m, SMALL_ATTENTION, **BRIDGE_ARGS)
        self.streams(m, u, pv)
        memory(self, m, u.mem)
        MB, MP, IB = SMALL_ATTENTION.engine.mem_bytes, BRIDGE_ARGS["max_payload"], P.INSTR_BYTES

        # ---- the harness's own parse of the bytes the bridge took ----
        take = u.rx.valid & u.rx.ready
        byte = u.rx.payload
        op, length = Signal(8, name="f_op"), Signal(16, name="f_len")
        idx = Signal(16, name="f_idx")
        crc, crc_lo = Signal(16, init=0xFFFF, name="f_crc"), Signal(8, name="f_crc_lo")
        good = Signal(name="f_good")              # the last frame was good (until the next SYNC)
        good_op, good_len = Signal(8, name="f_good_op"), Signal(16, name="f_good_len")

        def len_ok(o, n):
            return Mux(o == P.Req.EXEC, (n != 0) & (n % IB == 0),
                   Mux(o == P.Req.WRITE, (n >= 4 + MB) & ((n - 4) % MB == 0),
                   Mux(o == P.Req.RESET, n == 0, 1))) & (n <= MP)

        crc_next = _bridge.crc16_step(crc, byte)     # = crc16_bitwise (crc_network)
        with m.FSM(name="frame"):
            with m.State("HUNT"):
                with m.If(take & (byte == P.SYNC)):
                    m.d.sync += [good.eq(0), crc.eq(0xFFFF)]
                    m.next = "OPC"
            for state, nxt in (("OPC", "LEN0"), ("LEN0", "LEN1"), ("LEN1", None),
                               ("PAY", None), ("CRC0", "CRC1"), ("CRC1", "HUNT")):
                with m.State(state):
                    with m.If(u.rx_error):           # a UART error spoils the frame
                        m.next = "HUNT"
                    with m.Elif(take):
                        if state in ("OPC", "LEN0", "LEN1", "PAY"):
                            m.d.sync += crc.eq(crc_next)
                        if state == "OPC":
                            m.d.sync += op.eq(byte)
                        elif state == "LEN0":
                            m.d.sync += length[:8].eq(byte)
                        elif state == "LEN1":
                            n = Cat(length[:8], byte)
                            m.d.sync += [length[8:].eq(byte), idx.eq(0)]
                            with m.If(n > MP):
                                m.next = "HUNT"      # refused at once (protocol)
                            with m.Elif(n == 0):
                                m.next = "CRC0"
                            with m.Else():
                                m.next = "PAY"
                        elif state == "PAY":
                            m.d.sync += idx.eq(idx + 1)
                            with m.If(idx == length - 1):
                                m.next = "CRC0"
                        elif state == "CRC0":
                            m.d.sync += crc_lo.eq(byte)
                        else:
                            m.d.sync += [good.eq((Cat(crc_lo, byte) == crc) & len_ok(op, length)),
                                         good_op.eq(op), good_len.eq(length)]
                        if nxt:
                            m.next = nxt

        delivered = Signal(8, name="instrs_of_frame")
        instr_fire = u.instr.valid & u.instr.ready
        with m.If(take & (byte == P.SYNC)):
            m.d.sync += delivered.eq(0)
        with m.Elif(instr_fire):
            m.d.sync += delivered.eq(delivered + 1)
        self.check("no_bad_exec", ~instr_fire | (good & (good_op == P.Req.EXEC)),
                   "an instruction reaches the machine only from a good EXEC frame")
        self.check("exec_words", ~instr_fire | (delivered < (good_len // IB)),
                   "no more instructions than the EXEC frame carries")
        self.check("no_bad_write",
                   ~(u.mem.wr.valid & u.mem.wr.ready) | (good & (good_op == P.Req.WRITE)),
                   "memory is written only from a good WRITE frame")
        self.check("no_bad_reset", ~u.machine_reset | (good & (good_op == P.Req.RESET)),
                   "the machine is reset only by a good RESET frame")
        n_frames = beat_counter(m, _Edge(take & (byte == P.SYNC)), 4, "syncs")
        self.reach("reach_write", u.mem.wr.valid & u.mem.wr.ready & (n_frames >= 2),
                   "a good WRITE frame after another frame writes memory")
        self.reach("reach_reset", u.machine_reset,
                   "a good RESET frame resets the machine")
        self.reach("reach_exec", instr_fire, "a good EXEC frame's word reaches the machine")


class _Edge:
    """An event counted by `beat_counter` (valid = the event, always ready)."""

    def __init__(self, event):
        self.valid, self.ready = event, Const(1, 1)


@register
class CrcHarness(UnitHarness):
    """The bridge's CRC step against the bitwise recurrence, for every register and
    byte value. ``bug=("crc",)`` checks `CrcIgnoringBridge`'s step instead."""
    unit, cls = "bridge_crc", HostBridge
    config = "any 16-bit register, any byte"
    depth, deep_depth = 1, 1
    bugs = {"crc_network": ("crc",)}

    def build(self, m):
        crc, byte = self.free(16, "crc"), self.free(8, "byte")
        step = (lambda c, b: c) if self.bug == ("crc",) else _bridge.crc16_step
        self.check("crc_network", step(crc, byte) == crc16_bitwise(m, crc, byte),
                   "the bridge's byte-parallel CRC step equals the bitwise CRC-16/CCITT-FALSE")
