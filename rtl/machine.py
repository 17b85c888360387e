"""The machine: instruction fetch/decode/dispatch over the engines, one shared memory port.

```
 instr stream ─► FETCH ─► DECODE (rtl/isa.py rules) ─┬─► AttentionEngine.mm_cmd ─┐
                   ▲                                 ├─► AttentionEngine.cmd │
                   │                                 ├─► KVStore.cmd         ├─ owner mux ─► rd_req / rd_resp / wr
                   └──── unit's done ◄───────────────┴─► VectorMover.cmd     ─┘
                                                         (LAYERNORM, GELU, RESADD, REQUANT, EMBED; rtl/vecmove.py)
```

- Instructions arrive on the ``instr`` stream (one `isa.INSTR_BITS` word per
  beat) rather than being fetched from memory: the host (or a DMA in front
  of the machine) streams a program, and a program needs no space in the
  data memory or an instruction cache. One instruction runs at a time; the
  next is fetched after the unit's ``done``, so the single memory port is
  switched by an ``owner`` register set at dispatch (a unit that is not the
  owner is idle and has nothing in flight, because every unit's ``done``
  comes after its last write is accepted and its last read is answered).
- There is one systolic array: MATMUL runs on the AttentionEngine's own
  MatmulEngine, lent through its ``mm_cmd``/``mm_done`` port while attention
  is idle (the array and its requantisers are most of the design's DSPs).
- Status: ``busy`` (a program is running), ``done`` (one-cycle pulse at
  HALT), ``error`` (`isa.Error`), ``cycles`` and ``icount`` (since the
  program's first instruction, frozen at HALT). On an illegal instruction
  the machine records the error, does not execute it, and discards the
  following instructions up to the program's HALT, so the stream stays in
  step with the host; it never hangs. ``error`` is cleared when the next
  program's first instruction is accepted.
"""
from amaranth.hdl import *
from amaranth.lib import wiring, stream, data
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

#: cycles from an instruction's fetch (transfer on ``instr``) to its command
#: being presented to the unit: the decode register
FETCH_TO_ISSUE = 2


def instr_layout():
    return data.StructLayout({"word": unsigned(INSTR_BITS)})


class _Lent:
    """The attention engine's lent matmul as a unit: its ``mm_cmd``/``mm_done`` with
    the engine's own memory port."""

    def __init__(self, attn):
        self.cmd, self.done = attn.mm_cmd, attn.mm_done
        self.mem = attn.mem


class Machine(wiring.Component):
    """Fetch/decode/dispatch controller with an AttentionEngine (whose array also runs MATMUL), a KVStore
    and a VectorMover (residual rows saturated to `cfg.resid_bits` <= 16 bits).

    Ports: ``instr`` (`instr_layout`), the memory port (`rd_req`, `rd_resp`,
    `wr`: the MatmulEngine contract), status ``busy``, ``done``, ``error``,
    ``cycles``, ``icount``. See the module docstring.

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
                          "cycles": Out(32), "icount": Out(32)})

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

    def elaborate(self, platform):
        m = Module()
        c = self.cfg
        units = self._units(m)
        vec = next((u for op, u in units.items() if op in VECTOR_OPS), None)
        # the memory port a value of `owner` selects: one Case per port owner
        owners = {}
        for op, u in units.items():
            owners.setdefault(id(u.mem), (u, []))[1].append(int(op))

        # ---------------- memory port: routed to the unit that owns it ----------------
        owner = Signal(OPCODE_BITS)
        with m.Switch(owner):
            for u, ops in owners.values():
                with m.Case(*ops):
                    wiring.connect(m, wiring.flipped(self.mem), u.mem)

        # ---------------- status ----------------
        running, done, error, flushing = Signal(), Signal(), Signal(2), Signal()
        cycles, icount = Signal(32), Signal(32)
        m.d.sync += done.eq(0)
        m.d.comb += [self.busy.eq(running), self.done.eq(done), self.error.eq(error),
                     self.cycles.eq(cycles), self.icount.eq(icount)]
        with m.If(running):
            m.d.sync += cycles.eq(cycles + 1)

        word = Signal(INSTR_BITS)
        opcode = word[:OPCODE_BITS]
        # reserved bits of each built opcode: everything above its body (isa.reserved_mask)
        reserved_lo = {op: OPCODE_BITS + body_layout(c, op).size for op in self.ops}
        reserved_from = sorted(set(reserved_lo.values()))
        reserved = Signal(len(reserved_from))
        # the current instruction by name in a waveform viewer (an enum-shaped signal
        # carries its decoder into the VCD); the sequencer's FSM state names the phase
        current_op = Signal(Op, name="current_op")
        m.d.comb += current_op.eq(opcode)
        bodies = {op: data.View(body_layout(c, op), word[OPCODE_BITS:OPCODE_BITS + body_layout(c, op).size])
                  for op in Op}
        for op, u in units.items():
            if u is not vec:
                m.d.comb += u.cmd.payload.eq(bodies[op])
        if vec is not None:
            m.d.comb += [vec.cmd.payload.op.eq(opcode),
                         vec.cmd.payload.body.eq(word[OPCODE_BITS:OPCODE_BITS + vec.body_bits])]

        with m.FSM():
            with m.State("FETCH"):
                m.d.comb += self.instr.ready.eq(1)
                with m.If(self.instr.valid):
                    # only the bodies are kept: whether an opcode's reserved bits are
                    # set is decided here, so the unused top of the word needs no
                    # register (hundreds of flip-flops on a small chip)
                    m.d.sync += [word.eq(self.instr.payload.word),
                                 reserved.eq(Cat(self.instr.payload.word[lo:] != 0
                                                 for lo in reserved_from))]
                    with m.If(~running):               # first instruction of a program
                        m.d.sync += [running.eq(1), cycles.eq(1), icount.eq(0),
                                     error.eq(Error.NONE), flushing.eq(0)]
                    m.next = "DECODE"
            with m.State("DECODE"):
                m.d.sync += icount.eq(icount + 1)
                with m.If(flushing):
                    # after an illegal instruction: drop everything up to HALT
                    with m.If(opcode == Op.HALT):
                        m.d.sync += [running.eq(0), done.eq(1)]
                    m.next = "FETCH"
                with m.Else():
                    with m.Switch(opcode):
                        for op in self.ops:
                            with m.Case(int(op)):
                                with m.If(reserved[reserved_from.index(reserved_lo[op])]):
                                    m.d.sync += [error.eq(Error.RESERVED), flushing.eq(1)]
                                    m.next = "FETCH"
                                with m.Elif(~legal_expr(c, op, bodies[op])):
                                    m.d.sync += [error.eq(Error.FIELD), flushing.eq(1)]
                                    m.next = "FETCH"
                                with m.Else():
                                    if op == Op.HALT:
                                        m.d.sync += [running.eq(0), done.eq(1)]
                                        m.next = "FETCH"
                                    else:
                                        m.d.sync += owner.eq(int(op))
                                        m.next = f"ISSUE_{op.name}"
                        with m.Default():
                            m.d.sync += [error.eq(Error.OPCODE), flushing.eq(1)]
                            m.next = "FETCH"
            for op, u in units.items():
                with m.State(f"ISSUE_{op.name}"):
                    m.d.comb += u.cmd.valid.eq(1)
                    with m.If(u.cmd.ready):
                        m.next = f"WAIT_{op.name}"
                with m.State(f"WAIT_{op.name}"):
                    with m.If(u.done):
                        m.next = "FETCH"
        return m
