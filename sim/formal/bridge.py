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

A frame is *good* when its CRC matches and its length is one the protocol
allows for its opcode (LEN <= max_payload; EXEC: k >= 1 words of 64 bytes;
WRITE: an address and k >= 1 memory words; RESET: empty); a UART error
inside a frame spoils it, and so does a gap longer than the byte timeout
(3 cycles here, so the timeout path is part of the proof). Properties: an
instruction reaches the machine (``instr`` transfer) only after a good EXEC
frame, and at most as many as it carries; a memory write only after a good
WRITE frame; ``machine_reset`` only after a good RESET frame; the stream
rule on ``tx``, ``instr``, ``mem.wr``, ``mem.rd_req``.

All of them are proved for all time by k-induction at depth 4. A bounded
check would need ~140 cycles to see one EXEC delivery (a 70-byte frame, 64
cycles to load its word); instead the harness states invariants
(`BridgeHarness.frame_invariants`) that relate the bridge's frame registers
(`HostBridge.formal_view`) to its own parse, asserted in the same jobs, so
the induction step only starts from states in which the bridge and the
parse agree. ``reach_exec`` shows an EXEC delivery is reachable at all
(step 137): the proofs are not vacuous.
"""
import threading

from amaranth.hdl import *

from gpt2accel.rtl import bridge as _bridge
from gpt2accel.rtl import protocol as P
from gpt2accel.rtl.bridge import HostBridge

from .engines import memory
from .properties import beat_counter, past_valid
from .units import SMALL_ATTENTION, UnitHarness, register

__all__ = ["BridgeHarness", "crc16_bitwise", "BRIDGE_ARGS"]

#: 4-byte words (SMALL_ATTENTION), 16 of them, the smallest max_payload (one EXEC word),
#: a byte timeout short enough that the proofs cover it
BRIDGE_ARGS = dict(mem_words=16, max_payload=64, timeout_cycles=3)

#: `CrcIgnoringBridge` swaps a module global while it elaborates
_SWAP = threading.Lock()


def crc32_bitwise(m, crc, byte):
    """CHECKSUM's CRC-32 register after `byte`, bit by bit as zlib computes it
    (reflected: the byte enters at the low end; polynomial 0xEDB88320)."""
    c = Signal(32, name="crc32_step0")
    m.d.comb += c.eq(crc ^ byte)
    for i in range(8):
        n = Signal(32, name=f"crc32_step{i + 1}")
        m.d.comb += n.eq(Mux(c[0], (c >> 1) ^ 0xEDB88320, c >> 1))
        c = n
    return c


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
    config = ("SMALL_ATTENTION (4-byte words), 16 words, max_payload 64, "
              f"byte timeout {BRIDGE_ARGS['timeout_cycles']} cycles")
    # k-induction closes at this depth with the invariants (`needs_invariants`)
    depth, deep_depth = 4, 4
    needs_invariants = ("no_bad_exec", "exec_words", "no_bad_write", "no_bad_reset",
                        "instr_hold", "tx_hold", "mem_wr_hold", "mem_rd_req_hold",
                        "no_bad_read")
    # a good WRITE frame is 14 bytes and its word reaches memory 7 cycles later;
    # a RESET frame is 6 bytes: its pulse comes by step 8; an EXEC frame is 70 bytes
    # and its word takes 64 cycles to load (reach_exec states the step)
    # a CHECKSUM frame is 12 bytes, its first read 3 cycles after the last
    depths = {"reach_reset": 12, "reach_write": 22, "reach_exec": 140, "reach_checksum": 20}
    deep_depths = depths
    bugs = {"no_bad_exec": ("tie", "instr.valid", 1),
            "exec_words": ("tie", "instr.valid", 1),
            # the instruction offered while a WRITE frame's word is still loading
            "instr_hold": ("tie", "instr.valid", 1),
            "no_bad_write": ("crc",),
            "no_bad_read": ("crc",),
            "no_bad_reset": ("crc",),
            "mem_wr_hold": ("ignore_ready", "mem.wr"),
            "mem_rd_req_hold": ("ignore_ready", "mem.rd_req")}
    # the traces the seeded bugs need (each fails at its last step): a bad WRITE
    # frame and its word, a RESET frame, a WRITE frame's word loading, a stalled
    # write, a read request, a reply byte; an instruction offered at once
    bug_depths = {"no_bad_exec": 4, "exec_words": 4, "instr_hold": 22, "no_bad_write": 22,
                  "no_bad_reset": 12, "no_bad_read": 22, "tx_hold": 22, "mem_wr_hold": 24, "mem_rd_req_hold": 22}

    def dut(self, m, *args, **kwargs):
        """The bridge, elaborated here so that its registers (`formal_view`) can be
        named by the invariants (a seeded-bug copy is elaborated as usual)."""
        if self.bug is not None and self.bug != ("crc",):
            return super().dut(m, *args, **kwargs)
        dut = (CrcIgnoringBridge if self.bug else HostBridge)(*args, **kwargs)
        dut._MustUse__used = True          # elaborated below, not through Fragment.get
        m.submodules.dut = dut.elaborate(None)
        return self.open(dut)

    def build(self, m):
        pv = past_valid(m)
        u = self.dut(m, SMALL_ATTENTION, **BRIDGE_ARGS)
        self.streams(m, u, pv)
        memory(self, m, u.mem)
        MB, MP, IB = SMALL_ATTENTION.engine.mem_bytes, BRIDGE_ARGS["max_payload"], P.INSTR_BYTES
        T = BRIDGE_ARGS["timeout_cycles"]

        # ---- the harness's own parse of the bytes the bridge took ----
        take = u.rx.valid & u.rx.ready
        byte = u.rx.payload
        op, length = Signal(8, name="f_op"), Signal(16, name="f_len")
        idx = Signal(16, name="f_idx")
        crc, crc_lo = Signal(16, init=0xFFFF, name="f_crc"), Signal(8, name="f_crc_lo")
        timer = Signal(range(T + 1), name="f_timer")   # cycles since the frame's last byte
        good = Signal(name="f_good")              # the last frame was good (until the next SYNC)
        good_op, good_len = Signal(8, name="f_good_op"), Signal(16, name="f_good_len")

        def len_ok(o, n):
            return Mux(o == P.Req.EXEC, (n != 0) & (n % IB == 0),
                   Mux(o == P.Req.WRITE, (n >= 4 + MB) & ((n - 4) % MB == 0),
                   Mux(o == P.Req.RESET, n == 0, 1))) & (n <= MP)

        crc_next = _bridge.crc16_step(crc, byte)     # = crc16_bitwise (crc_network)
        inside = ("OPC", "LEN0", "LEN1", "PAY", "CRC0", "CRC1")
        with m.FSM(name="frame") as frame:
            with m.State("HUNT"):
                with m.If(take & (byte == P.SYNC)):
                    m.d.sync += [good.eq(0), crc.eq(0xFFFF), timer.eq(0)]
                    m.next = "OPC"
            for state, nxt in zip(inside, ("LEN0", "LEN1", None, None, "CRC1", "HUNT")):
                with m.State(state):
                    m.d.sync += timer.eq(Mux(take, 0, timer + 1))
                    with m.If(u.rx_error):           # a UART error spoils the frame
                        m.next = "HUNT"
                    with m.Elif(~take & (timer == T)):
                        m.next = "HUNT"              # a gap longer than the timeout ends it
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
        self.check("no_bad_read", ~u.mem.rd_req.valid
                   | (good & ((good_op == P.Req.READ) | (good_op == P.Req.CHECKSUM))),
                   "memory is read only for a good READ or CHECKSUM frame")
        n_frames = beat_counter(m, _Edge(take & (byte == P.SYNC)), 4, "syncs")
        self.reach("reach_write", u.mem.wr.valid & u.mem.wr.ready & (n_frames >= 2),
                   "a good WRITE frame after another frame writes memory")
        self.reach("reach_reset", u.machine_reset,
                   "a good RESET frame resets the machine")
        self.reach("reach_exec", instr_fire, "a good EXEC frame's word reaches the machine")
        self.reach("reach_checksum", u.mem.rd_req.valid & u.mem.rd_req.ready
                   & (good_op == P.Req.CHECKSUM),
                   "a good CHECKSUM frame reads memory")
        if self.use_invariants:
            self.frame_invariants(u.formal_view, frame, locals())

    def frame_invariants(self, v, frame, h):
        """The bridge's frame registers agree with the harness's parse (`h`: its
        locals). These are what the bridge's correctness rests on: it is inside a
        frame exactly when the parse is, with the same opcode, length, byte count,
        CRC and gap timer; at DISPATCH the parse's verdict on the frame is the
        bridge's length rule; from DISPATCH until the reply only a good frame of the
        state's opcode is being carried out, with `left` words still to deliver."""
        MB, MP, IB = h["MB"], h["MP"], h["IB"]
        # the receiver's and the executor's states (their `state` registers)
        b = {s: v["rx_state"] == _bridge._RxState[s]
             for s in ("HUNT", "OPC", "LEN0", "LEN1", "PAYLOAD", "CRC0", "CRC1")}
        b.update({s: v["ex_state"] == _bridge._ExState[s]
                  for s in ("DISPATCH", "LOAD", "WR", "INSTR", "RESET", "SETTLE",
                            "CHECKSUM")})
        f = {s: frame.ongoing(s) for s in h["inside"]}
        opcode, length, idx = v["opcode"], v["length"], v["idx"]
        good, good_op, good_len = h["good"], h["good_op"], h["good_len"]
        receiving = b["OPC"] | b["LEN0"] | b["LEN1"] | b["PAYLOAD"] | b["CRC0"] | b["CRC1"]
        inv = self.invariant
        # the induction step starts anywhere: first, the executor's and the parse's state
        # registers hold a state (the receiver's uses every encoding; an encoding the
        # sender's does not use counts as busy, which `phases` covers)
        inv("bridge_state", Cat(v["ex_state"] == s for s in _bridge._ExState).any())
        inv("parse_state", Cat(frame.ongoing(s) for s in ("HUNT", *h["inside"])).any())
        for s in h["inside"]:
            inv(f"same_state_{s}", b["PAYLOAD" if s == "PAY" else s] == f[s])
        inv("same_timer", ~receiving | (v["timer"] == h["timer"]))
        inv("timer_expired", ~receiving | (v["expired"] == (v["timer"] == h["T"])))
        inv("same_crc", ~receiving | (v["crc"] == h["crc"]))
        inv("same_crc_lo", ~b["CRC1"] | (v["crc_lo"] == h["crc_lo"]))
        inv("same_opcode", ~(receiving & ~b["OPC"]) | (opcode == h["op"]))
        inv("same_len_lo", ~b["LEN1"] | (length[:8] == h["length"][:8]))
        after_len = b["PAYLOAD"] | b["CRC0"] | b["CRC1"]
        inv("same_len", ~after_len | ((length == h["length"]) & (length <= MP)))
        inv("same_idx", ~b["PAYLOAD"] | ((idx == h["idx"]) & (idx < length)))
        inv("last_idx", ~b["PAYLOAD"] | (v["last_idx"] == (length - 1)[:16]))
        inv("payload_done", ~(b["CRC0"] | b["CRC1"] | b["DISPATCH"]) | (idx == length))
        tail = idx - 4
        inv("tail_count", ~(after_len | b["DISPATCH"])
            | Mux(idx >= 4, (v["tail_lane"] == tail % MB) & (v["tail_words"] == tail // MB),
                  (v["tail_lane"] == 0) & (v["tail_words"] == 0)))
        inv("dispatch_verdict", ~b["DISPATCH"]
            | ((good == h["len_ok"](opcode, length)) & (good_op == opcode)
               & (good_len == length) & (length <= MP)))
        executing = b["LOAD"] | b["WR"] | b["INSTR"] | b["RESET"] | b["CHECKSUM"]
        inv("executing_good", ~executing | (good & (good_op == opcode) & (good_len == length)
                                               & (length <= MP)))
        inv("load_op", ~b["LOAD"] | (opcode == P.Req.WRITE) | (opcode == P.Req.EXEC))
        inv("wr_op", ~b["WR"] | (opcode == P.Req.WRITE))
        inv("instr_op", ~b["INSTR"] | (opcode == P.Req.EXEC))
        inv("reset_op", ~b["RESET"] | (opcode == P.Req.RESET))
        inv("checksum_op", ~b["CHECKSUM"] | (opcode == P.Req.CHECKSUM))
        # the checksum unit reads exactly while the executor waits for it
        inv("checksum_phase", v["checksumming"] == b["CHECKSUM"])
        # a READ reply (the sender's only reads) answers a good READ frame, and the
        # sender's reading states belong to a READ reply
        inv("read_reply_good", ~(v["replying"] & (v["rep_kind"] == _bridge._Body.READ))
            | (good & (good_op == P.Req.READ)))
        inv("read_states", ~v["reading"] | (v["replying"] & (v["rep_kind"] == _bridge._Body.READ)))
        inv("no_instr_yet", ~(receiving | b["DISPATCH"]) | (h["delivered"] == 0))
        inv("exec_left", ~((b["LOAD"] | b["INSTR"]) & (opcode == P.Req.EXEC))
            | ((v["left"] != 0) & (h["delivered"] + v["left"] == length // IB)))
        # only a reply's bytes enter the CRC as they leave; its own CRC bytes do not,
        # and they are all that can still be leaving once a frame may arrive
        replying = ~(b["HUNT"] | receiving | b["DISPATCH"] | executing | b["SETTLE"])
        inv("crc_quiet", replying | ~v["obuf_crc"])
        # receiver, executor and sender take turns: the receiver holds its frame while
        # exactly one of the others runs, and the sender runs exactly when the bridge
        # is in none of the frame's other states
        executor_busy = v["ex_state"] != _bridge._ExState.IDLE
        inv("phases", Mux(v["rx_state"] == _bridge._RxState.HELD,
                          executor_busy ^ v["replying"], ~executor_busy & ~v["replying"]))
        inv("reply_phase", v["replying"] == replying)


class _Edge:
    """An event counted by `beat_counter` (valid = the event, always ready)."""

    def __init__(self, event):
        self.valid, self.ready = event, Const(1, 1)


@register
class CrcHarness(UnitHarness):
    """The bridge's CRC step against the bitwise recurrence, for every register and
    byte value. ``bug=("crc",)`` checks `CrcIgnoringBridge`'s step instead."""
    unit, cls = "bridge_crc", HostBridge
    config = "any 16- or 32-bit register, any byte"
    depth, deep_depth = 1, 1
    bugs = {"crc_network": ("crc",), "crc32_network": ("crc",)}

    def build(self, m):
        crc, byte = self.free(16, "crc"), self.free(8, "byte")
        step = (lambda c, b: c) if self.bug == ("crc",) else _bridge.crc16_step
        self.check("crc_network", step(crc, byte) == crc16_bitwise(m, crc, byte),
                   "the bridge's byte-parallel CRC step equals the bitwise CRC-16/CCITT-FALSE")
        crc32 = self.free(32, "crc32")
        step32 = (lambda c, b: c) if self.bug == ("crc",) else _bridge.crc32_step
        self.check("crc32_network", step32(crc32, byte) == crc32_bitwise(m, crc32, byte),
                   "CHECKSUM's byte-parallel CRC-32 step equals zlib's bitwise CRC-32")
