"""Formal harnesses of the engines on the shared memory port, the on-chip memory, and
the machine controller.

Environment (`memory`): the memory answers reads in order, so a read
response is only offered while a request is unanswered; the solver picks
the data, every ready and valid otherwise, within the stream rule.

Engine properties (matmul, attention, KV store, vector mover): the stream rule on
``rd_req`` and ``wr``; commands and ``done`` pulses pair up (one ``done``
per command, never one without); ``done`` only once every read has been
answered and no write is pending (the machine switches the memory port on
``done``, so this is what makes sharing it safe); the matmul engine also
keeps at most ``max_outstanding`` reads in flight and never overflows or
underflows its FIFOs.

Machine properties (`MachineHarness`): the stream rule on its memory port;
no read is in flight while no unit runs (``unit_busy`` low), which is when
the next command is accepted; an illegal instruction sets the error code
its defect calls for and the controller takes the next word
`FETCH_TO_ISSUE` cycles after its fetch, issues nothing after it, and once
the instruction before it (already issued) is done has no memory traffic
until the program's HALT, and returns to idle (``busy`` low, ``done``) at
that HALT as soon as no unit runs; a reset in any state, mid-instruction
included, returns it to idle with no memory traffic; each legal MATMUL
fetched while no unit runs finishes within the bound stated in
`MachineLiveHarness` (fair memory: always ready, answers the next cycle).
"""
import dataclasses

from amaranth.hdl import *

from gpt2accel.rtl.attention import AttentionEngine
from gpt2accel.rtl.machine_config import MachineConfig
from gpt2accel.rtl.config import EngineConfig
from gpt2accel.rtl.isa import (INSTR_BITS, OPCODE_BITS, Error, Op, body_layout, legal_expr,
                               reserved_mask)
from gpt2accel.rtl.kvstore import KVStore
from gpt2accel.rtl.machine import FETCH_TO_ISSUE, Machine
from gpt2accel.rtl.matmul import MatmulEngine
from gpt2accel.rtl.onchip_memory import READ_LATENCY, OnChipMemory
from gpt2accel.rtl.vecmove import VectorMover

from .properties import beat_counter, past, past_valid, quiet_counter
from .units import SMALL_ENGINE, UnitHarness, _Beats, register

__all__ = ["MACHINE_CONFIG", "memory", "EngineHarness", "MachineHarness"]

#: the smallest machine: 1x2 array, 8-byte words (the vector mover's minimum),
#: 8-bit addresses, M, N <= 2, K <= 8, heads of 8, 4 positions
#: The machines the harnesses prove: residuals of 8 bits keep the solver's words short.
MACHINE_CONFIG = MachineConfig(
    engine=EngineConfig(rows=1, cols=2, a_bits=2, w_bits=2, acc_bits=5, mult_bits=2,
                        max_shift=3, out_bits=2, mem_bytes=8, addr_bits=8, max_k=8,
                        max_m=2, max_n=2, max_outstanding=2, w_fifo_depth=4,
                        param_fifo_tiles=4, out_fifo_tiles=2),
    tile=2, frac_bits=1, lanes=1, norm_lanes=1, max_d_head=8, max_seq=4, resid_bits=8)


def memory(harness, m, port, width=8):
    """Assume an in-order memory behind the memory port `port` (a `MemPort` interface);
    returns the number of unanswered reads (a Signal)."""
    n_req = beat_counter(m, port.rd_req, width, "reads_requested")
    n_resp = beat_counter(m, port.rd_resp, width, "reads_answered")
    pending = Signal(width, name="reads_pending")
    m.d.comb += pending.eq(n_req - n_resp)
    harness.assume(~port.rd_resp.valid | (pending != 0), "a response answers a request")
    return pending


class EngineHarness(UnitHarness):
    """A unit with ``cmd``, the memory port, ``busy`` and ``done``. `reach_done`:
    whether a whole command fits the default depth (else a write and a read are
    the default run's goals too)."""
    reach_done = True
    bmc_only = ("cmds_no_dup", "reads_settled", "writes_settled", "outstanding")
    bugs = {"cmds_no_dup": ("ignore_valid", "cmd"),       # runs commands nobody sent
            "reads_settled": ("ignore_valid", "mem.rd_resp"),  # takes responses never sent
            "writes_settled": ("tie", "done", 1)}          # done while writing

    def args(self):
        return (MACHINE_CONFIG,)

    def build(self, m):
        pv = past_valid(m)
        u, mod = self.dut_module(m, *self.args())
        self.streams(m, u, pv)
        pending = memory(self, m, u.mem)
        self.conserve(m, "cmds", u.cmd, _Beats(u.done, 1), capacity=1, what="commands",
                      reach=False)
        self.check("reads_settled", ~u.done | (pending == 0),
                   "done only after every read was answered")
        self.check("writes_settled", ~u.done | ~u.mem.wr.valid,
                   "done only after the last write was accepted")
        wr_stalled = Signal(name="wr_stalled_seen")
        with m.If(u.mem.wr.valid & ~u.mem.wr.ready):
            m.d.sync += wr_stalled.eq(1)
        self.reach("reach_done", u.done & wr_stalled,
                   "a command finishes after a stalled write (within the depth)")
        if not self.reach_done:
            self.reach("reach_write", u.mem.wr.valid & u.mem.wr.ready & wr_stalled,
                       "a write is accepted after a stalled one (within the depth)")
            rd_stalled = Signal(name="rd_stalled_seen")
            with m.If(u.mem.rd_req.valid & ~u.mem.rd_req.ready):
                m.d.sync += rd_stalled.eq(1)
            self.reach("reach_read", u.mem.rd_req.valid & u.mem.rd_req.ready & rd_stalled,
                       "a read request is accepted after a stalled one (within the depth)")
        self.extra(m, u, mod, pending)

    def extra(self, m, u, mod, pending):
        """Unit-specific properties (`mod` is None under a seeded bug)."""


@register
class MatmulHarness(EngineHarness):
    unit, cls = "matmul", MatmulEngine
    config = "1x1 array, 2-bit operands, M,N <= 2, K <= 4, 4-byte words, 2 reads in flight"
    # the first command with a stalled write can finish in step 14 (reach_done; 16
    # before the array's operands were broadcast and the FIFOs bypassed, 20 before
    # raw rows left the requantiser after the bias add)
    depth, deep_depth = 24, 48
    # the induction step does not close on the engine's counters (and costs minutes)
    bmc_only = EngineHarness.bmc_only + ("mem_rd_req_hold", "mem_wr_hold",
                                         "w_fifo_no_underflow", "p_fifo_no_underflow",
                                         "o_fifo_no_underflow", "o_fifo_no_overflow")

    bugs = {**EngineHarness.bugs,
            # believes responses arrived, so issues more reads than allowed
            "outstanding": ("ignore_valid", "mem.rd_resp"),
            "w_fifo_no_underflow": ("fifo_read_unchecked", "w_fifo"),
            "p_fifo_no_underflow": ("fifo_read_unchecked", "p_fifo"),
            "o_fifo_no_underflow": ("fifo_read_unchecked", "o_fifo"),
            "o_fifo_no_overflow": ("fifo_write_unchecked", "o_fifo")}

    def args(self):
        return (SMALL_ENGINE,)

    def extra(self, m, u, mod, pending):
        self.check("outstanding", pending <= self.args()[0].max_outstanding,
                   "at most max_outstanding reads unanswered")
        if mod is not None:
            self.fifo("w_fifo", mod.submodules.w_fifo)
            self.fifo("p_fifo", mod.submodules.p_fifo)
            self.fifo("o_fifo", mod.submodules.o_fifo, credit=True)


#: the smallest engine with a GEMV mode: 2x1 array, 2-byte words (two k-steps
#: per word), so a one-row command folds the array into two groups of one row
GEMV_ENGINE = dataclasses.replace(SMALL_ENGINE, rows=2, mem_bytes=2)


@register
class MatmulGemvHarness(MatmulHarness):
    """The matmul engine's properties on an engine whose one-row commands run in
    GEMV mode (and two-row commands do not): the folded feeder, the issuer's
    tile spacing and the router's group copies under the same stream, FIFO
    and command rules."""
    unit = "matmul_gemv"
    config = "2x1 array (GEMV mode for M = 1), 2-bit operands, M,N <= 2, K <= 4, 2-byte words"
    # the first command with a stalled write can finish in step 16 (reach_done; 19
    # before the array's operands were broadcast and the FIFOs bypassed, 26 before
    # raw rows left the requantiser after the bias add and the folded drain gave A
    # row 0's total first)
    depth, deep_depth = 28, 48

    def args(self):
        return (GEMV_ENGINE,)

    def extra(self, m, u, mod, pending):
        super().extra(m, u, mod, pending)
        folded = Signal(name="gemv_cmd")
        with m.If(u.cmd.valid & u.cmd.ready):
            m.d.sync += folded.eq(u.cmd.payload.m <= GEMV_ENGINE.gemv_rows)
        self.reach("reach_gemv_done", u.done & folded,
                   "a GEMV-mode command (M = 1) finishes (within the depth)")


@register
class KVStoreHarness(EngineHarness):
    unit, cls = "kvstore", KVStore
    config = "MACHINE_CONFIG (8-byte words, heads of up to 8 bytes from any byte of a word)"
    # a command's first done after a stalled write: step 17 (K then V of one head,
    # each through the transposing buffer's two shift stages, the writer's three
    # setup cycles and its read, select and write registers); 6 when bytes went
    # straight to the port
    depth, deep_depth = 20, 40
    bugs = {**EngineHarness.bugs,
            # believes responses arrived, so issues more reads than allowed
            "outstanding": ("ignore_valid", "mem.rd_resp")}

    def extra(self, m, u, mod, pending):
        # reads now stream ahead of the responses: never more than the port allows
        self.check("outstanding", pending <= MACHINE_CONFIG.engine.max_outstanding,
                   "at most max_outstanding reads unanswered")


@register
class VectorMoverHarness(EngineHarness):
    unit, cls = "vecmove", VectorMover
    config = "MACHINE_CONFIG, 8-bit residuals"
    # the first done after a stalled write: step ~17 (four cycles of prepare, the
    # request and write registers, RequantAdd's four stages)
    depth, deep_depth = 20, 36

    def args(self):
        return (MACHINE_CONFIG, MACHINE_CONFIG.resid_bits)


@register
class AttentionHarness(EngineHarness):
    """The attention engine (its own matmul engine, softmax unit and normaliser
    inside). Commands are limited to the smallest the engine runs: one head of
    d_head 1, one query at position 0 (one key tile: one S and one PV command,
    one softmax row, one normalised output). The properties concern the memory
    handshakes and the pairing of commands and ``done``, which every command
    goes through; a larger command only repeats them, for hundreds of cycles
    beyond a bounded check of the whole engine (unlimited commands, depth 24,
    wrote nothing). Its first write after a stalled one comes in step 31
    (``reach_write``; 40 before the matmul engine's shorter drain, 35 before the
    softmax's, normaliser's and requantiser's added stages), its first ``done``
    after a stalled write in step 77 (``reach_done``; 95 before the shorter
    drain, 83 before the added stages): the read and write streams are checked
    to depth 42, ``done`` against the commands, the reads and the writes to
    depth 80 (``--deep`` too)."""
    unit, cls = "attention", AttentionEngine
    config = ("MACHINE_CONFIG (tile 2, one lane, 4 positions); commands of one head, "
              "d_head 1, one query at position 0")
    depth, deep_depth = 42, 42
    reach_done = False       # depth 42 reaches writes, not done
    bmc_only = EngineHarness.bmc_only + ("mem_rd_req_hold", "mem_wr_hold")
    #: the step of the first done after a stalled write (reach_done's cover)
    first_done = 77
    # what concerns done would hold vacuously at 42. Three steps past the first done
    # leave room for an engine stage or two (reach_done fails when done leaves the
    # depth); each step costs the solver more: at 96 these took 400-2,000 s each
    # before the shorter drain, beyond the default run's hour per job once the
    # broadcast operands and bypass FIFOs made the harness 2-4 times slower
    _done_props = ("writes_settled", "reads_settled", "cmds_no_dup", "reach_done")
    depths = dict.fromkeys(_done_props, first_done + 3)
    # --deep too: at 96 the solver (32-bit WebAssembly, at most 4 GB) ran out of memory
    # in step 95 (cmds_no_dup, twice), and reads_settled was at step 86 after 20 minutes
    deep_depths = depths
    # its dozen memories hold 1-4 words each: as flip-flops reads_settled to depth 56
    # took 41 s, as SMT arrays 99 s
    map_memories = True
    # done with no command, or with reads or a write still open: all within the
    # first read and write, where the properties themselves need a whole command
    bugs = {**EngineHarness.bugs, "cmds_no_dup": ("tie", "done", 1),
            "reads_settled": ("tie", "done", 1)}
    # writes_settled's bug needs the first write: its trace fails in step 30 since the
    # matmul engine's shorter drain (the first write after a stall, reach_write, moved
    # 40 -> 31; 35 before the softmax's and the normaliser's added stages)
    bug_depths = {"cmds_no_dup": 36, "reads_settled": 36, "writes_settled": 44}

    def extra(self, m, u, mod, pending):
        p = u.cmd.payload
        # k_rows 0 (the head's own height) or 1 (every tile at one height, here the
        # same one row): both sides of the S command's k select at the command
        # length the properties were sized for; a free k_rows lets S commands reach
        # max_k K-steps, and mem_rd_req_hold alone went from about a minute to 867 s
        self.assume(~u.cmd.valid | ((p.n_head == 1) & (p.d_head == 1) & (p.tq == 1)
                                    & (p.offset == 0) & (p.k_rows <= 1)),
                    "one head of d_head 1, one query at position 0, k_rows 0 or 1")


class MemoryHarness(UnitHarness):
    """The on-chip memory behind both requesters (machine, host): the stream rule on
    both ``rd_resp``; per port, never more responses than requests and at most the
    owed limit outstanding; after a quiet spell with both consumers ready every
    request is answered; block RAM: its response queue, written on credit, never
    overflows or underflows."""
    cls = OnChipMemory
    bmc_only = ("machine_rd_resp_hold", "host_rd_resp_hold", "machine_words_no_dup",
                "host_words_no_dup", "words_no_loss", "queue_no_overflow", "queue_no_underflow")
    bugs = {"machine_rd_resp_hold": ("ignore_ready", "machine.rd_resp"),
            "host_rd_resp_hold": ("ignore_ready", "host.rd_resp"),
            "machine_words_no_dup": ("ignore_valid", "machine.rd_req"),
            "host_words_no_dup": ("ignore_valid", "host.rd_req"),
            "words_no_loss": ("ignore_ready", "machine.rd_resp"),
            "queue_no_overflow": ("fifo_write_unchecked", "queue"),
            "queue_no_underflow": ("fifo_read_unchecked", "queue")}
    storage = "bram"
    owed = 4
    words = 4
    model_words = None   # the SPRAM twin's words (`SpramStorage`), SPRAM only

    def build(self, m):
        pv = past_valid(m)
        cfg = SMALL_ENGINE if self.storage == "bram" else _SPRAM_ENGINE
        u, mod = self.dut_module(m, cfg, self.words, storage=self.storage,
                                 spram_model_words=self.model_words)
        self.streams(m, u, pv)
        counts = []
        for port in ("machine", "host"):
            p = getattr(u, port)
            counts.append(self.conserve(m, f"{port}_words", p.rd_req, p.rd_resp,
                                        capacity=self.owed, what="words",
                                        reach=port == "machine"))
        # both ports share one in-order response path (a host word waiting for its
        # consumer holds back the machine's): drained when both consumers are ready
        asked = Signal(9, name="words_asked")
        answered = Signal(9, name="words_answered")
        m.d.comb += [asked.eq(counts[0][0] + counts[1][0]),
                     answered.eq(counts[0][1] + counts[1][1])]
        any_req = ((u.machine.rd_req.valid & u.machine.rd_req.ready)
                   | (u.host.rd_req.valid & u.host.rd_req.ready))
        drain = READ_LATENCY[self.storage] + self.owed + 2
        quiet = quiet_counter(m, ~any_req & u.machine.rd_resp.ready & u.host.rd_resp.ready,
                              drain, "words_quiet")
        self.check("words_no_loss", (quiet != drain) | (asked[:8] == answered[:8]),
                   f"{drain} cycles without requests while both consumers are ready answer "
                   "every request", min_depth=drain + self.owed + 2)
        if mod is not None and self.storage == "bram":
            self.fifo("queue", mod.submodules.queue, credit=True)


#: SMALL_ENGINE with the 14-bit addresses one SPRAM (16K words) needs
_SPRAM_ENGINE = dataclasses.replace(SMALL_ENGINE, addr_bits=14)


@register
class BramMemoryHarness(MemoryHarness):
    unit = "memory"
    config = "SMALL_ENGINE words (4 bytes), 4 words, block RAM (4-word response queue)"
    depth, deep_depth = 12, 30
    # as SMT arrays the 4-word memory took minutes per step, as flip-flops seconds
    map_memories = True


@register
class SpramMemoryHarness(MemoryHarness):
    unit = "memory_spram"
    config = ("SMALL_ENGINE words (4 bytes), 14-bit addresses, 16384 words (one SPRAM) "
              "in a 4-word behavioural model, one skid register")
    storage, owed, words = "spram", 2, 16384
    depth, deep_depth = 12, 30
    # 16K words stayed SMT arrays, minutes per step; the model keeps 4 (each standing
    # for the addresses equal modulo 4), solved as flip-flops like the block RAM's
    model_words = 4
    map_memories = True


class _Word:
    """What the ISA says about one instruction word (expressions over `word`)."""

    def __init__(self, cfg, word):
        opcode = word[:OPCODE_BITS]
        self.opcode = opcode
        known = Const(0)
        code = Const(Error.OPCODE, 2)
        for op in Op:
            body = body_layout(cfg, op)
            view = body(word[OPCODE_BITS:OPCODE_BITS + body.size])
            this = Mux((word & reserved_mask(cfg, op)) != 0, Error.RESERVED,
                       Mux(legal_expr(cfg, op, view), Error.NONE, Error.FIELD))
            code = Mux(opcode == int(op), this, code)
            known = known | (opcode == int(op))
        self.known = known
        self.code = code                         # Error the word calls for
        self.halt = opcode == Op.HALT


@register
class MachineHarness(UnitHarness):
    """The controller over the real engines; see the module docstring."""
    unit, cls = "machine", Machine
    config = "MACHINE_CONFIG (1x2 array, 8-byte words, 8-bit addresses)"
    depth, deep_depth = 8, 16
    # the earliest stalled write of any instruction: step 6 before, step 15 since the
    # longer pipelines of the word-wide KVSTORE, LayerNorm and the short decode commands
    depths = {"reach_write_stall": 20}
    bug_depths = {"mem_wr_hold": 20}   # its seeded bug needs that stalled write
    bmc_only = ("illegal_sets_error", "illegal_not_executed", "flush_ends_at_halt",
                "boundary_no_reads", "mem_rd_req_hold", "mem_wr_hold")
    bugs = {"illegal_sets_error": ("tie", "error", 0),
            "illegal_not_executed": ("tie", "mem.rd_req.valid", 1),
            "flush_ends_at_halt": ("tie", "done", 0),
            # a machine that reports no unit running while one has reads in flight
            "boundary_no_reads": ("tie", "unit_busy", 0)}

    def build(self, m):
        pv = past_valid(m)
        u = self.dut(m, MACHINE_CONFIG)
        self.streams(m, u, pv)
        pending = memory(self, m, u.mem)
        w = _Word(MACHINE_CONFIG, u.instr.payload.word)
        accept = u.instr.valid & u.instr.ready

        # the harness's own account of the program: running, flushing, error
        running, flushing = Signal(name="h_running"), Signal(name="h_flushing")
        error = Signal(2, name="h_error")
        ends = Signal(name="h_ends")             # this accept ends the program
        illegal = Signal(name="h_illegal")       # this accept is an illegal instruction
        m.d.comb += [illegal.eq(accept & ~flushing & (w.code != Error.NONE)),
                     ends.eq(accept & w.halt & (flushing | (w.code == Error.NONE)))]
        with m.If(accept):
            m.d.sync += running.eq(~ends)
            with m.If(~running):
                m.d.sync += [error.eq(w.code), flushing.eq(w.code != Error.NONE)]
            with m.Elif(illegal):
                m.d.sync += [error.eq(w.code), flushing.eq(1)]
            with m.If(ends):
                m.d.sync += flushing.eq(0)
        def delayed(sig, name, n=FETCH_TO_ISSUE):
            for i in range(n):
                sig = past(m, sig, f"{name}{i + 1}")
            return sig

        # cycle t: accept (fetch), t+1, t+2: the two decode stages, t+3: status updated
        ill3 = delayed(illegal, "illegal")
        code3 = delayed(w.code, "code")
        self.check("illegal_sets_error", ~ill3 | ((u.error == code3) & u.instr.ready & u.busy),
                   f"an illegal instruction sets its error code; the next word is taken "
                   f"{FETCH_TO_ISSUE} cycles after its fetch")
        busy_was = past(m, u.unit_busy, "unit_busy_was")
        self.check("illegal_not_executed",
                   ~flushing | (~(u.unit_busy & ~busy_was)
                                & (u.unit_busy | (~u.mem.rd_req.valid & ~u.mem.wr.valid))),
                   "after an illegal instruction nothing is issued up to HALT, and once the "
                   "instruction before it is done there is no memory traffic")
        # the HALT after an illegal instruction ends the program at the first cycle from
        # its decode on in which no unit runs (the one before the illegal one may)
        end3 = delayed(ends & flushing, "flush_end")
        halt_wait = Signal(name="halt_wait")
        ending = Signal(name="h_ending")
        m.d.comb += ending.eq((end3 | halt_wait) & ~u.unit_busy)
        m.d.sync += halt_wait.eq((end3 | halt_wait) & u.unit_busy)
        self.check("flush_ends_at_halt",
                   ~ending | (u.done & ~u.busy & u.instr.ready & (u.error == error)),
                   "the HALT after an illegal instruction ends the program as soon as no unit "
                   "runs: idle, done, error kept")
        self.check("boundary_no_reads", u.unit_busy | (pending == 0),
                   "no read in flight while no unit runs (so when a command is accepted)")
        self.reach("reach_flush_end", ending & (error == Error.FIELD),
                   "a program with an illegal field reaches its HALT")
        self.reach("reach_write_stall", u.mem.wr.valid & ~u.mem.wr.ready,
                   "an instruction's write waits for memory (the stream rules are exercised)")
        self.reach("reach_prefetch", u.unit_busy & u.instr.valid & u.instr.ready,
                   "the next word is taken while a unit runs the instruction before it")
        self.reach("reach_error_while_running", u.unit_busy & (u.error != Error.NONE),
                   "an illegal word is decoded while the legal one before it still runs")


@register
class MachineResetHarness(UnitHarness):
    """Reset anywhere (the reset input is left to the solver): the machine is idle after."""
    unit, cls = "machine_reset", Machine
    config = MachineHarness.config
    depth, deep_depth = 10, 20
    allow_reset = True
    bmc_only = ("reset_to_idle",)
    bugs = {"reset_to_idle": ("tie", "busy", 1)}

    def build(self, m):
        u = self.dut(m, MACHINE_CONFIG)
        rst = ResetSignal("sync")
        # harness registers outside the reset, so that they see it
        was_reset = past(m, rst, "was_reset", reset_less=True)
        # the cycle after a reset: no program, FETCH, no error, no memory traffic
        self.check("reset_to_idle",
                   ~was_reset | (~u.busy & ~u.unit_busy & u.instr.ready & (u.error == Error.NONE)
                                 & ~u.mem.rd_req.valid & ~u.mem.wr.valid),
                   "a reset in any state, mid-instruction included, leaves the machine idle")
        issued = Signal(name="issued_seen", reset_less=True)   # an instruction is running
        with m.If(u.busy & u.unit_busy & (u.mem.rd_req.valid | u.mem.wr.valid)):
            m.d.sync += issued.eq(1)
        self.reach("reach_reset_mid", was_reset & issued,
                   "a reset arrives while an instruction uses the memory port")


def _matmul_bounds(cfg, latency):
    """{(m, k, n, raw): matmul_cycles + FETCH_TO_ISSUE + 1} for every legal MATMUL shape of
    `cfg`: fetch to the cycle after the engine's done."""
    from gpt2accel.sim.cycles.matmul import matmul_cycles
    e = cfg.engine
    return {(mm, k, n, raw): matmul_cycles(e, mm, k, n, bool(raw), latency=latency).cycles
            + FETCH_TO_ISSUE + 1
            for mm in range(1, e.max_m + 1) for k in range(1, e.max_k + 1)
            for n in range(1, e.max_n + 1) for raw in (0, 1)}


@register
class MachineLiveHarness(UnitHarness):
    """Each legal MATMUL (every shape the configuration allows) fetched while no unit runs
    ends (``unit_busy`` low again) within ``matmul_cycles(m, k, n, raw,
    latency=1) + FETCH_TO_ISSUE + 1`` cycles of its fetch: the controller's
    decode and issue (`FETCH_TO_ISSUE` cycles) and the cycle after the
    engine's done around the engine's own time, as the cycle model states
    it. Fair memory: always ready, every read answered in the next cycle
    (latency 1)."""
    unit, cls = "machine_live", Machine
    config = "MACHINE_CONFIG, every legal MATMUL (m, n <= 2, k <= 8), fair memory (latency 1)"
    # the longest bound (m 2, k 8; 48 cycles with the requantiser's six stages): fetched
    # in step 0 it ends in that step, so the depth is derived from the bounds rather
    # than written down, and an engine stage more cannot push the longest MATMUL out
    # of reach (`reach_longest` shows it ending at its bound within the depth)
    depth = deep_depth = max(_matmul_bounds(MACHINE_CONFIG, latency=1).values()) + 2
    bmc_only = ("matmul_within_bound",)
    # never reads memory, so the MATMUL never finishes
    bugs = {"matmul_within_bound": ("tie", "mem.rd_req.valid", 0)}

    def build(self, m):
        pv = past_valid(m)
        u = self.dut(m, MACHINE_CONFIG)
        # always-ready memory makes the output stream rule trivial here: assume only
        self.streams(m, u, pv, outputs=False)
        pending = memory(self, m, u.mem)
        self.assume(u.mem.rd_req.ready & u.mem.wr.ready, "memory always ready")
        self.assume(u.mem.rd_resp.valid == (pending != 0), "every read answered the next cycle")
        w = _Word(MACHINE_CONFIG, u.instr.payload.word)
        body = body_layout(MACHINE_CONFIG, Op.MATMUL)(
            u.instr.payload.word[OPCODE_BITS:OPCODE_BITS + body_layout(MACHINE_CONFIG, Op.MATMUL).size])
        self.assume(~u.instr.valid | ((w.opcode == Op.MATMUL) & (w.code == Error.NONE)),
                    "legal MATMULs (the configuration bounds every field)")
        accept = u.instr.valid & u.instr.ready
        bound = Signal(8, name="bound")
        table = _matmul_bounds(MACHINE_CONFIG, latency=1)
        longest = max(table.values())
        this = Const(0, 8)
        for (a, b, c, raw), cyc in table.items():
            this = Mux((body.m == a) & (body.k == b) & (body.n == c) & (body.raw_out == raw),
                       cyc, this)
        t = Signal(8, name="since_fetch")
        inflight = Signal(name="inflight")
        started = Signal(name="started")         # its unit has been seen running
        finished = Signal(name="finished")
        m.d.comb += finished.eq(started & ~u.unit_busy)
        # the next MATMUL is fetched while this one runs: follow one at a time, fetched
        # with no unit running, so that its time from fetch is the controller's alone
        with m.If(accept & ~inflight & ~u.unit_busy):
            m.d.sync += [bound.eq(this), t.eq(1), inflight.eq(1), started.eq(0)]
        with m.Elif(inflight):
            m.d.sync += t.eq(t + 1)
            with m.If(u.unit_busy):
                m.d.sync += started.eq(1)
            with m.If(finished):
                m.d.sync += inflight.eq(0)
        e = MACHINE_CONFIG.engine
        self.check("matmul_within_bound", ~inflight | finished | (t < bound),
                   f"a legal MATMUL (m<={e.max_m}, k<={e.max_k}, n<={e.max_n}) fetched while no "
                   f"unit runs is done within matmul_cycles + {FETCH_TO_ISSUE + 1} cycles of its "
                   "fetch")
        self.reach("reach_longest", inflight & finished & (t == longest),
                   f"a MATMUL of the longest bound ({longest} cycles) takes exactly that "
                   "(the bound is tight, and the depth holds the longest)")
