"""The machine: instruction fetch/decode/dispatch over the engines, one shared memory port.

```
 instr stream ─► FETCH ─► DECODE 1 ─► DECODE 2 ─┬─► AttentionEngine.mm_cmd ─┐
   (next one while      (rtl/isa.py rules)      ├─► AttentionEngine.cmd     │
    a unit runs)                                ├─► KVStore.cmd             ├─ owner mux ─► rd_req / rd_resp / wr
                        issue in the unit's done ┴─► VectorMover.cmd         ─┘
                                                    (LAYERNORM, GELU, RESADD, REQUANT, EMBED; rtl/vecmove.py)
```

- Instructions arrive on the ``instr`` stream (one `isa.INSTR_BITS` word per
  beat) rather than being fetched from memory: the host (or a DMA in front
  of the machine) streams a program, and a program needs no space in the
  data memory or an instruction cache.
- One instruction executes at a time, and the next one is fetched and
  decoded while it runs: the word register is free once a unit has accepted
  its command (units take the command at accept), the next word is taken
  the cycle after, decoded in two registered stages (every built opcode's
  rules at once, then the opcode's verdict), and its command is presented
  in the running unit's ``done`` cycle (every unit is idle from its ``done``
  on; the verdict was registered while it waited, so the command's valid is
  that register ANDed with ``done``). An instruction whose unit takes U
  cycles from accept to ``done`` therefore costs max(U, 4) cycles when the
  host streams without gaps, the last one before HALT a cycle more
  (`sim/cycles/program.py`).
- The single memory port is switched by a one-hot register over the units'
  ports, changed only once the previous unit is done (a unit that is not the
  owner is idle and has nothing in flight, because every unit's ``done``
  comes after its last write is accepted and its last read is answered).
  One-hot, so that each memory signal is an AND-OR of the units' rather than
  a compare of the opcode in front of every one of them (a long path into the
  memory's request side).
- There is one systolic array: MATMUL runs on the AttentionEngine's own
  MatmulEngine, lent through its ``mm_cmd``/``mm_done`` port while attention
  is idle (the array and its requantisers are most of the design's DSPs).
- Status: ``busy`` (a program is running), ``done`` (one-cycle pulse when
  the program's HALT is decoded and the last unit is done), ``error``
  (`isa.Error`), ``cycles`` and ``icount`` (since the program's first
  instruction, frozen at HALT), ``unit_busy`` (a unit runs an instruction:
  from its command's accept to its ``done``). On an illegal instruction the
  machine records the error as soon as it is decoded (`FETCH_TO_ISSUE`
  cycles after its transfer), does not execute it, and discards the
  following instructions up to the program's HALT, so the stream stays in
  step with the host; the instruction before it, already issued, completes.
  It never hangs. ``error`` is cleared when the next program's first
  instruction is accepted.
"""
from amaranth.hdl import *
from amaranth.lib import wiring, stream, data, enum
from amaranth.lib.wiring import In, Out

from .attention import AttentionEngine
from .config import ConfigError
from .isa import INSTR_BITS, OPCODE_BITS, VECTOR_OPS, Error, Op, body_layout, legal_expr
from .kvstore import KVStore
from .machine_config import MachineConfig, machine_ops
from .matmul import MatmulEngine
from .memport import MemPort
from .vecmove import VectorMover

__all__ = ["Machine", "instr_layout", "FETCH_TO_ISSUE"]

#: cycles from an instruction's fetch (transfer on ``instr``) to its command being
#: presented to an idle unit, or to its error or HALT showing in the status: the two
#: decode stages and the issue register
FETCH_TO_ISSUE = 3


class Stage(enum.Enum, shape=2):
    """Where the word register's instruction is (named in a waveform viewer)."""
    EMPTY = 0       # no word: the next is taken
    DECODE1 = 1     # every opcode's rules
    DECODE2 = 2     # the opcode's verdict, waiting for the running unit's done
    ISSUE = 3       # its command presented to the unit


def instr_layout():
    return data.StructLayout({"word": unsigned(INSTR_BITS)})


class _Lent:
    """The attention engine's lent matmul as a unit: its ``mm_cmd``/``mm_done`` with
    the engine's own memory port."""

    def __init__(self, attn):
        self.cmd, self.done = attn.mm_cmd, attn.mm_done
        self.mem = attn.mem


def _or_all(values):
    out = C(0, 1)
    for v in values:
        out = out | v
    return out


class Machine(wiring.Component):
    """Fetch/decode/dispatch controller with an AttentionEngine (whose array also runs MATMUL), a KVStore
    and a VectorMover (residual rows saturated to `cfg.resid_bits` <= 16 bits).

    Ports: ``instr`` (`instr_layout`), the memory port (`rd_req`, `rd_resp`,
    `wr`: the MatmulEngine contract), status ``busy``, ``done``, ``error``,
    ``cycles``, ``icount``, ``unit_busy``. See the module docstring.

    ``cfg.ops`` (default: every opcode) selects the instructions built in hardware,
    for chips too small for the whole machine: only the units those opcodes
    need are instantiated (MATMUL alone gets a bare MatmulEngine), and any other
    opcode is illegal (`Error.OPCODE`). HALT is always present.
    """

    def __init__(self, cfg: MachineConfig):
        # an AttentionConfig is the machine with the default residual width, every
        # opcode and numerics' exp2 table
        cfg = MachineConfig.of(cfg)
        cfg.check_engine()
        self.cfg, self.ops = cfg, cfg.built_ops
        for op in Op:
            body_layout(cfg, op)           # raises if a body does not fit INSTR_BITS
        super().__init__({"instr": In(stream.Signature(instr_layout())),
                          "mem": Out(MemPort.for_config(cfg.engine)),
                          "busy": Out(1), "done": Out(1), "error": Out(2),
                          "cycles": Out(32), "icount": Out(32), "unit_busy": Out(1)})

    def _units(self, m):
        """{opcode: unit} for the built opcodes (HALT has none), units added to `m`."""
        c, ops, units = self.cfg, self.ops, {}
        if Op.ATTENTION in ops:
            # one array for MATMUL and ATTENTION: the attention engine lends its matmul
            # engine (`mm_cmd`/`mm_done`) and both share its memory port
            m.submodules.attn = attn = AttentionEngine(c, c.exp2_table, matmul_port=Op.MATMUL in ops)
            units[Op.ATTENTION] = attn
            if Op.MATMUL in ops:
                units[Op.MATMUL] = _Lent(attn)
        elif Op.MATMUL in ops:
            m.submodules.mm = units[Op.MATMUL] = MatmulEngine(c.engine)
        if Op.KVSTORE in ops:
            m.submodules.kv = units[Op.KVSTORE] = KVStore(c)
        if any(op in VECTOR_OPS for op in ops):
            m.submodules.vec = vec = VectorMover(c, c.resid_bits)
            units.update({op: vec for op in VECTOR_OPS if op in ops})
        return units

    def _route_port(self, m, unit_ports, sel):
        """The machine's memory port to the unit port `sel` (one-hot) picks: requests
        and writes AND-OR-muxed from the selected unit, responses broadcast and their
        valid gated, every ready gated by the selection."""
        for name in ("rd_req", "wr", "rd_resp"):
            outer = getattr(self.mem, name)
            inner = [getattr(p, name) for p in unit_ports]
            if name == "rd_resp":         # memory -> unit
                for i, s in enumerate(inner):
                    m.d.comb += [s.payload.eq(outer.payload), s.valid.eq(outer.valid & sel[i])]
                m.d.comb += outer.ready.eq(Cat(s.ready & sel[i] for i, s in enumerate(inner)).any())
            else:                         # unit -> memory
                width = len(outer.payload.as_value())
                m.d.comb += [
                    outer.valid.eq(Cat(s.valid & sel[i] for i, s in enumerate(inner)).any()),
                    outer.payload.eq(_or_all(s.payload.as_value() & sel[i].replicate(width)
                                             for i, s in enumerate(inner))),
                ]
                for i, s in enumerate(inner):
                    m.d.comb += s.ready.eq(outer.ready & sel[i])

    def elaborate(self, platform):
        m = Module()
        c = self.cfg
        units = self._units(m)
        vec = next((u for op, u in units.items() if op in VECTOR_OPS), None)
        # the memory ports of the units, each with the opcodes that own it
        owners = {}
        for op, u in units.items():
            owners.setdefault(id(u.mem), (u, []))[1].append(int(op))
        # the command streams: the vector ops share the mover's one `cmd`
        cmds = {}
        for op, u in units.items():
            cmds.setdefault(id(u.cmd), (u, []))[1].append(op)
        cmds = list(cmds.values())

        # ---------------- memory port: routed to the unit that owns it ----------------
        # `owner` (the running opcode, for a waveform viewer) is mirrored by a one-hot
        # `port_sel` over the ports, set from the decoder's registered one-hot at
        # issue: each port is then an AND-OR of its requests and a gate on the
        # responses, not a compare of a 5-bit opcode feeding every memory signal
        owner = Signal(OPCODE_BITS)
        ports = list(owners.values())
        port_sel = Signal(len(ports))
        self._route_port(m, [u.mem for u, _ in ports], port_sel)

        # ---------------- status ----------------
        running, done, error, flushing = Signal(), Signal(), Signal(2), Signal()
        cycles, icount = Signal(32), Signal(32)
        unit_busy = Signal()
        m.d.sync += done.eq(0)
        m.d.comb += [self.busy.eq(running), self.done.eq(done), self.error.eq(error),
                     self.cycles.eq(cycles), self.icount.eq(icount),
                     self.unit_busy.eq(unit_busy)]
        with m.If(running):
            m.d.sync += cycles.eq(cycles + 1)

        word = Signal(INSTR_BITS)
        opcode = word[:OPCODE_BITS]
        # reserved bits of each built opcode: everything above its body (isa.reserved_mask)
        reserved_lo = {op: OPCODE_BITS + body_layout(c, op).size for op in self.ops}
        reserved_from = sorted(set(reserved_lo.values()))
        reserved = Signal(len(reserved_from))
        # the word register's instruction and the running unit's by name in a waveform
        # viewer (an enum-shaped signal carries its decoder into the VCD), and the
        # word's stage (`Stage`)
        current_op = Signal(Op, name="current_op")
        running_op = Signal(Op, name="running_op")
        word_stage = Signal(Stage, name="word_stage")
        m.d.comb += current_op.eq(opcode)
        bodies = {op: data.View(body_layout(c, op), word[OPCODE_BITS:OPCODE_BITS + body_layout(c, op).size])
                  for op in Op}
        # units take their command at accept (the stream contract), so the word register
        # is free for the next instruction from then on
        for op, u in units.items():
            if u is not vec:
                m.d.comb += u.cmd.payload.eq(bodies[op])
        if vec is not None:
            m.d.comb += [vec.cmd.payload.op.eq(opcode),
                         vec.cmd.payload.body.eq(word[OPCODE_BITS:OPCODE_BITS + vec.body_bits])]

        # ---------------- fetch ----------------
        # `word` holds one instruction from its transfer until its command is accepted
        # (or it is retired: HALT, illegal, flushed); the next is fetched meanwhile
        # the previous instruction's unit runs, and decoded before that unit is done
        full = Signal()
        s1, s2 = Signal(), Signal()          # decode stage 1 this cycle; stage 2 results valid
        m.d.comb += self.instr.ready.eq(~full)
        m.d.sync += s1.eq(0)
        with m.If(self.instr.valid & ~full):
            # only the bodies are kept: whether an opcode's reserved bits are set is
            # decided here, so the unused top of the word needs no register (hundreds
            # of flip-flops on a small chip)
            m.d.sync += [word.eq(self.instr.payload.word),
                         reserved.eq(Cat(self.instr.payload.word[lo:] != 0
                                         for lo in reserved_from)),
                         full.eq(1), s1.eq(1)]
            with m.If(~running):               # first instruction of a program
                m.d.sync += [running.eq(1), cycles.eq(1), icount.eq(0),
                             error.eq(Error.NONE), flushing.eq(0)]

        # ---------------- decode, stage 1: every opcode's rules at once ----------------
        # registered per built opcode, so that no path runs from the word's fields
        # through the comparisons to the sequencer's decisions in one cycle
        built = list(self.ops)
        hot = Signal(len(built))               # the opcode, one-hot over the built ones
        res_bad = Signal(len(built))           # that opcode's reserved bits are set
        fields_ok = Signal(len(built))         # its fields satisfy its rules
        with m.If(s1):
            m.d.sync += s2.eq(1)
            for i, op in enumerate(built):
                m.d.sync += [hot[i].eq(opcode == int(op)),
                             res_bad[i].eq(reserved[reserved_from.index(reserved_lo[op])]),
                             fields_ok[i].eq(legal_expr(c, op, bodies[op]))]

        # ---------------- decode, stage 2, and issue ----------------
        known, is_halt = hot.any(), hot[built.index(Op.HALT)]
        bad_res = (hot & res_bad).any()
        legal = (hot & fields_ok & ~res_bad).any()
        # one command stream at a time is presented (`issue_to`), and one unit runs
        # (`run_sel`) from its command's accept to its done
        issue_to = Signal(len(cmds))
        run_sel = Signal(len(cmds))
        cur_done = Cat(u.done for u, _ in cmds) & run_sel
        free = ~unit_busy | cur_done.any()     # no unit runs from the next cycle on
        # the decoded word's command stream, one-hot
        word_to = Cat(Cat(hot[built.index(op)] for op in ops).any() for _, ops in cmds)
        # `waiting`: a legal command's verdict, registered while it waits for the running
        # unit's done, so that it is presented in the done cycle itself (a unit is idle
        # from its done on) through nothing longer than an AND with that done
        waiting = Signal(len(cmds))
        m.d.sync += waiting.eq(Mux(s2 & ~flushing & legal & ~is_halt & ~free, word_to, 0))
        early = waiting & cur_done.any().replicate(len(cmds))
        present = issue_to | early
        fire = Signal()
        early_fire = Signal()
        for i, (u, ops) in enumerate(cmds):
            m.d.comb += u.cmd.valid.eq(present[i])
        m.d.comb += [fire.eq((present & Cat(u.cmd.ready for u, _ in cmds)).any()),
                     early_fire.eq((early & Cat(u.cmd.ready for u, _ in cmds)).any())]
        with m.If(cur_done.any()):
            m.d.sync += [unit_busy.eq(0), run_sel.eq(0)]
        with m.If(fire):
            m.d.sync += [issue_to.eq(0), full.eq(0), unit_busy.eq(1), run_sel.eq(present),
                         running_op.eq(Mux(early.any(), opcode, owner))]
        with m.If(issue_to.any()):
            m.d.comb += word_stage.eq(Stage.ISSUE)
        with m.Elif(s2):
            m.d.comb += word_stage.eq(Stage.DECODE2)
        with m.Elif(s1):
            m.d.comb += word_stage.eq(Stage.DECODE1)

        def retire(end=False):
            m.d.sync += [full.eq(0), s2.eq(0), icount.eq(icount + 1)]
            if end:
                m.d.sync += [running.eq(0), done.eq(1)]

        with m.If(s2):
            with m.If(flushing):
                # after an illegal instruction: drop everything up to HALT, which ends
                # the program once the instruction before the illegal one is done
                with m.If(~is_halt):
                    retire()
                with m.Elif(free):
                    retire(end=True)
            with m.Elif(~legal):
                m.d.sync += [error.eq(Mux(~known, Error.OPCODE,
                                          Mux(bad_res, Error.RESERVED, Error.FIELD))),
                             flushing.eq(1)]
                retire()
            with m.Elif(is_halt):
                with m.If(free):
                    retire(end=True)
            with m.Elif(free):
                # the port changes hands only once the previous unit is done: every
                # unit's done comes after its last write is accepted and its last read
                # answered, so nothing of it is in flight
                m.d.sync += [owner.eq(opcode), s2.eq(0), icount.eq(icount + 1),
                             port_sel.eq(Cat(Cat(hot[built.index(Op(op))] for op in ops).any()
                                             for _, ops in ports))]
                # presented already (`early`), it stays presented until accepted
                m.d.sync += issue_to.eq(Mux(early_fire, 0, word_to))
        return m
