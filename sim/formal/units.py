"""Formal harnesses of the stream units: GELU, residual and embedding adds, LayerNorm,
softmax, reciprocal, normaliser, and the `lib.fifo` buffers the engines use (and the
matmul engine's `BypassFIFO` around one).

Every harness leaves the unit's inputs to the solver, assumes the stream rule
on its input streams, asserts it on its output streams (``<port>_hold``) and
asserts beat conservation where the unit's contract defines it (one output
beat per input beat: ``beats_no_dup``, ``beats_no_loss``; see
`gpt2accel.sim.formal.properties.Harness.conserve`). ``bug=(kind, port)`` builds the
harness around `seeded_bug(unit class, kind, port)` instead of the unit.
Configurations are the smallest the unit accepts, so that proofs close; the
properties concern handshakes and counts, which do not depend on the widths.
"""
from amaranth.hdl import *
from amaranth.lib import fifo

from gpt2accel.model import quant

from gpt2accel.rtl.attention_config import AttentionConfig
from gpt2accel.rtl.config import EngineConfig
from gpt2accel.rtl.gelu import GeluUnit
from gpt2accel.rtl.layernorm import LayerNormUnit, RowRoot, row_latency
from gpt2accel.rtl.matmul import BypassFIFO
from gpt2accel.rtl.normalise import Normaliser, Reciprocal
from gpt2accel.rtl.residual import EmbeddingAdd, ResidualAdd
from gpt2accel.rtl.softmax import SoftmaxUnit
from gpt2accel.rtl.uart import MIN_DIVISOR, UartRx

from .properties import Harness, beat_counter, past_valid, seeded_bug

__all__ = ["UnitHarness", "HARNESSES", "register", "SMALL_ENGINE", "SMALL_ATTENTION"]

#: the smallest engine: 1x1 array, 2-bit operands, 8-bit addresses
SMALL_ENGINE = EngineConfig(rows=1, cols=1, a_bits=2, w_bits=2, acc_bits=5, mult_bits=2,
                            max_shift=3, out_bits=2, mem_bytes=4, addr_bits=8, max_k=4,
                            max_m=2, max_n=2, max_outstanding=2, w_fifo_depth=4,
                            param_fifo_tiles=4, out_fifo_tiles=2)
#: attention units around it: key tile 2, one lane, 4 positions, one query row per block
SMALL_ATTENTION = AttentionConfig(engine=SMALL_ENGINE, tile=2, frac_bits=1, lanes=1,
                                  norm_lanes=1, max_d_head=4, max_seq=4)

#: unit name -> harness class, filled by `register`
HARNESSES = {}


def register(cls):
    if cls.unit in HARNESSES:
        raise ValueError(f"two harnesses for unit {cls.unit!r}")
    HARNESSES[cls.unit] = cls
    return cls


class _Beats:
    """A (valid, ready) pair counted like a stream (e.g. the last beats of rows)."""

    def __init__(self, valid, ready):
        self.valid, self.ready = Value.cast(valid), Value.cast(ready)


class UnitHarness(Harness):
    """A harness around one component class `cls`, optionally with a seeded bug.

    Class attributes read by the runner: `depth` (default runs), `deep_depth`
    (``--deep``), `bmc_only` (properties that are not inductive: they run as a
    bounded check, the induction step would only report a spurious failure)."""
    cls = None
    deep_depth = 40
    bmc_only = ()
    depths = {}          # property -> its own default depth (instead of `depth`)
    deep_depths = {}     # property -> its own --deep depth (instead of `deep_depth`)
    map_memories = False  # turn memories into flip-flops before solving (small ones)
    #: property -> the seeded bug that must make it fail (``<port>_hold`` properties
    #: default to dropping that port's ready gating)
    bugs = {}

    #: property -> the depth its seeded bug runs at (default: the property's own;
    #: a k-induction depth can be far shorter than the trace a bug needs)
    bug_depths = {}

    def __init__(self, only=None, bug=None):
        super().__init__(only)
        self.bug = bug
        self.use_invariants = bug is None

    @classmethod
    def bug_for(cls, prop):
        """The seeded bug (`seeded_bug` kind, port[, value]) that `prop` must catch."""
        if prop in cls.bugs:
            return cls.bugs[prop]
        if prop.endswith("_hold"):
            port = prop[:-len("_hold")]
            # the memory port is the engines' one nested interface: its streams'
            # labels join the path with "_" (`mem_rd_req` is `mem.rd_req`)
            if port.startswith("mem_"):
                port = "mem." + port[len("mem_"):]
            return ("ignore_ready", port)
        raise KeyError(f"{cls.unit}: no seeded bug for {prop!r}")

    def dut(self, m, *args, **kwargs):
        """The unit (or its seeded-bug copy) with every input open."""
        cls = self.cls if self.bug is None else seeded_bug(self.cls, *self.bug)
        m.submodules.dut = dut = cls(*args, **kwargs)
        return self.open(dut)

    def dut_module(self, m, *args, **kwargs):
        """(unit, its elaborated Module): for properties of its FIFOs, which only
        the Module names (``module.submodules.<name>``). The FIFO bugs live here:
        ``("fifo_read_unchecked", name)`` reads FIFO `name` in every cycle and
        ``("fifo_write_unchecked", name)`` writes it in every cycle, whatever its
        state (a later assignment in the unit's module overrides the unit's own);
        any other bug goes to `dut` (and the FIFO properties are not built)."""
        if self.bug is not None and not self.bug[0].startswith("fifo_"):
            return self.dut(m, *args, **kwargs), None
        dut = self.cls(*args, **kwargs)
        dut._MustUse__used = True          # elaborated below, not through Fragment.get
        m.submodules.dut = mod = dut.elaborate(None)
        if self.bug is not None:
            kind, name = self.bug
            f = mod.submodules[name]
            mod.d.comb += (f.r_en if kind == "fifo_read_unchecked" else f.w_en).eq(1)
        return self.open(dut), mod


class BeatsHarness(UnitHarness):
    """A unit whose contract is one output beat per input beat (`Harness.conserve`),
    optionally taking a second input stream in lock-step with the first (``join``).
    Subclasses are made by `_beats_harness` from one row of `_BEATS_UNITS`; the
    seeded bugs follow from the ports: taking input beats nobody offered
    (``beats_no_dup``, ``join``), advancing the output whether or not it is taken
    (``beats_no_loss``)."""
    bmc_only = ("beats_no_dup", "beats_no_loss")
    args, kwargs = (), {}
    inp = out = join = None
    capacity, drain, row_beats, what = 1, 2, 1, "beats"

    def build(self, m):
        pv = past_valid(m)
        u = self.dut(m, *self.args, **self.kwargs)
        self.streams(m, u, pv)
        n_in, _ = self.conserve(m, "beats", getattr(u, self.inp), getattr(u, self.out),
                                capacity=self.capacity, drain=self.drain,
                                row_beats=self.row_beats, what=self.what)
        if self.join:
            n_join = beat_counter(m, getattr(u, self.join), 8, f"beats_{self.join}")
            self.check("join", n_in == n_join,
                       f"{self.inp} and {self.join} beats are taken together")


def _beats_harness(unit, cls, config, depth, deep_depth, args, ports, capacity, drain, **attrs):
    """Register a `BeatsHarness` for `cls`: `ports` = (input, output, joined input or None)."""
    inp, out, join = ports
    bugs = {"beats_no_dup": ("ignore_valid", inp), "beats_no_loss": ("ignore_ready", out)}
    if join:
        bugs["join"] = ("ignore_valid", join)
    name = f"{cls.__name__}Harness"
    return register(type(name, (BeatsHarness,), dict(
        unit=unit, cls=cls, config=config, depth=depth, deep_depth=deep_depth, args=args,
        inp=inp, out=out, join=join, capacity=capacity, drain=drain, bugs=bugs,
        __qualname__=name, **attrs)))


#: the smallest configurations; capacity: the beats a pipeline of `latency` stages
#: holds; `drain`: cycles to empty the unit (its latency and a beat); depths reach
#: the first beat after a stall (``reach_beats`` states the step) and, for
#: ``beats_no_loss``, a lost beat followed by a whole drain spell
_BPR = SMALL_ATTENTION.beats_per_row
_BEATS_UNITS = [
    ("gelu", GeluUnit, "lanes 1", 6, 24, (), ("inp", "out", None), 1, 2,
     dict(kwargs=dict(lanes=1))),
    # the vector mover's GELU: the table in words of load_width entries
    ("gelu_wide", GeluUnit, "lanes 2, table words of 8 entries", 6, 24, (), ("inp", "out", None),
     1, 2, dict(kwargs=dict(lanes=2, load_width=8))),
    ("residual", ResidualAdd, "lanes 1, 4-bit", 6, 24, (), ("a", "out", "b"), 1, 2,
     dict(kwargs=dict(lanes=1, bits=4))),
    ("embedding", EmbeddingAdd, "lanes 1, 4-bit", 8, 24, (), ("tok", "out", "pos"),
     EmbeddingAdd.latency, EmbeddingAdd.latency + 1, dict(kwargs=dict(lanes=1, bits=4))),
    # first result after a stall: step 11 (reach_beats)
    ("reciprocal", Reciprocal, "SMALL_ATTENTION", 14, 30, (SMALL_ATTENTION,),
     ("inp", "out", None), 1, Reciprocal.latency + 1,
     dict(depths={"beats_no_loss": 26}, what="rows")),
    # rows follow `score_layout` (context fields equal on a row's beats, exactly
    # beats_per_row beats); capacity: two row-store halves of a row plus the
    # front and output stages (`latency`)
    ("softmax", SoftmaxUnit, "SMALL_ATTENTION (tile 2, lanes 1, 1 row)",
     SoftmaxUnit.latency + 3, SoftmaxUnit.latency + 23,
     (SMALL_ATTENTION, quant.exp2_table(SMALL_ATTENTION.frac_bits)), ("scores", "probs", None),
     2 * _BPR + SoftmaxUnit.latency, SoftmaxUnit.latency + 2 * _BPR + 2,
     dict(row_beats=_BPR)),
]
for _row in _BEATS_UNITS:
    _beats_harness(*_row[:-1], **_row[-1])


@register
class NormaliserHarness(UnitHarness):
    unit, cls = "normaliser", Normaliser
    config = "SMALL_ATTENTION (norm_lanes 1)"
    # the first normalised beat after a stall: step 13 + latency (reach_beats); a
    # lost beat shows only after it and a drain spell
    depth, deep_depth = Normaliser.latency + 16, Normaliser.latency + 34
    depths = {"beats_no_loss": Normaliser.latency + 26}
    bmc_only = ("beats_no_dup", "beats_no_loss", "rows_no_dup")
    bugs = {"beats_no_dup": ("ignore_valid", "o_in"), "beats_no_loss": ("ignore_ready", "out"),
            "rows_no_dup": ("ignore_valid", "l_in"),
            "queue_no_underflow": ("fifo_read_unchecked", "queue")}

    def build(self, m):
        pv = past_valid(m)
        u, mod = self.dut_module(m, SMALL_ATTENTION)
        if mod is not None:
            self.fifo("queue", mod.submodules.queue)
        self.streams(m, u, pv)
        # O beats in -> normalised beats out through the `latency`-stage pipeline
        self.conserve(m, "beats", u.o_in, u.out, capacity=Normaliser.latency,
                      drain=Normaliser.latency + 1)
        # an O row is only taken with its own L: rows of O never outrun the row sums
        # (reciprocal + 2-entry queue hold at most 3 sums not yet used)
        o_rows = _Beats(u.o_in.valid & u.o_in.payload.last, u.o_in.ready)
        self.conserve(m, "rows", u.l_in, o_rows, capacity=3, what="row sums", reach=False)


@register
class LayerNormHarness(UnitHarness):
    unit, cls = "layernorm", LayerNormUnit
    config = ("lanes 1, 8-bit, max_e 2, 2 D banks; setup n = 2, at most 2 rows "
              "(beats_no_loss: 1 row)")
    # a row's first output needs setup, parameters, the row and row_latency (47
    # cycles): reach_beats states the step
    depth = deep_depth = row_latency(2, 1) + 17
    bmc_only = ("beats_no_dup", "beats_no_loss", "out_hold")
    bugs = {"beats_no_dup": ("ignore_valid", "inp"), "beats_no_loss": ("ignore_ready", "out")}
    one_row = ("beats_no_loss",)     # properties checked with a single row

    def build(self, m):
        pv = past_valid(m)
        u = self.dut(m, lanes=1, in_bits=8, max_e=2, ds_banks=2)
        self.streams(m, u, pv)
        # rows of n = max_e = 2 beats: a completed row is an even count of beats
        self.assume(u.setup.payload.n == 2, "rows of max_e values")
        # two rows (the second waits for the first's root, RowRoot.period): they
        # exercise the buffer hand-over within the depth; the no-loss check takes
        # one, so that its drain bound (the row's latency, not a root period more
        # behind another row) fits the same depth
        rows = 1 if self.only in self.one_row else 2
        offered = beat_counter(m, u.inp, 8, "rows_offered")
        self.assume(~u.inp.valid | (offered < 2 * rows), f"at most {rows} rows of two beats")
        # passes A, B and the root run free; pass C advances whenever the output is
        # ready: the drain spell counts ready cycles since the last input (`pausing`).
        # Rows are taken before the parameters too, and pass C waits for the last
        # of them: the spell also starts again at every parameter beat and waits
        # for the setup's two (counted here, not read from the unit)
        params = Signal(2, name="params_since_setup")
        with m.If(u.setup.valid & u.setup.ready):
            m.d.sync += params.eq(0)
        with m.Elif(u.param.valid & u.param.ready & (params != 3)):
            m.d.sync += params.eq(params + 1)
        param_wait = (u.param.valid & u.param.ready) | (params < 2)
        self.conserve(m, "beats", u.inp, u.out, capacity=2 * rows,
                      drain=row_latency(2, 1) + 2 + 2, row_beats=2, pausing=True,
                      restart=(param_wait, "the setup's last parameter beat"))


@register
class UartRxHarness(UnitHarness):
    """The UART receiver's byte stream: a line cannot wait, but a byte, once
    presented, stays until taken (a newer byte is dropped with ``overrun``)."""
    unit, cls = "uart_rx", UartRx
    config = f"divisor {MIN_DIVISOR} (the smallest)"
    # a byte is 10 bits of MIN_DIVISOR cycles, plus the input synchroniser
    depth, deep_depth = 48, 100

    def build(self, m):
        pv = past_valid(m)
        u = self.dut(m, MIN_DIVISOR)
        self.streams(m, u, pv)
        stalled = Signal(name="data_stall_seen")
        with m.If(u.data.valid & ~u.data.ready):
            m.d.sync += stalled.eq(1)
        self.reach("reach_byte", u.data.valid & u.data.ready & stalled,
                   "a received byte is taken after a stall")


def _broken_fifo(cls, kind):
    """A copy of a FIFO class with one handshake bug: ``lossy`` claims to take writes
    while full (and drops them), ``eager`` presents an entry while empty."""
    class Broken(cls):
        def elaborate(self, platform):
            m = super().elaborate(platform)
            # a later assignment in the module wins: the full / empty check is gone
            # (SyncFIFOBuffered drives r_rdy from a register: override it there)
            if kind == "lossy":
                m.d.comb += self.w_rdy.eq(1)
            elif isinstance(self, fifo.SyncFIFOBuffered):
                m.d.sync += self.r_rdy.eq(1)
            else:
                m.d.comb += self.r_rdy.eq(1)
            return m
    Broken.__name__ = Broken.__qualname__ = f"{kind.capitalize()}{cls.__name__}"
    return Broken


class FifoHarness(UnitHarness):
    """A `lib.fifo` FIFO as the engines instantiate it, fed with the write sequence
    number as data: what comes out must be 0, 1, 2, ... (mod 2^width), so no entry
    is lost, duplicated or reordered; the level never exceeds the depth; nothing
    is presented that was not written. ``bug=("lossy",)`` or ``("eager",)``
    uses `_broken_fifo`.
    Order needs the memory contents, which the induction step leaves free:
    bounded, to a depth that fills and drains the FIFO twice."""
    fifo_depth = 4
    width = 4
    bmc_only = ("order", "no_overflow", "no_underflow")
    bugs = {"order": ("lossy",), "no_overflow": ("lossy",), "no_underflow": ("eager",)}

    def build(self, m):
        cls = self.cls if self.bug is None else _broken_fifo(self.cls, *self.bug)
        m.submodules.dut = f = cls(width=self.width, depth=self.fifo_depth)
        w_en, r_en = self.free(1, "w_en"), self.free(1, "r_en")
        written = Signal(self.width + 2, name="written")
        read = Signal(self.width + 2, name="read")
        m.d.comb += [f.w_en.eq(w_en), f.r_en.eq(r_en), f.w_data.eq(written)]
        with m.If(f.w_en & f.w_rdy):
            m.d.sync += written.eq(written + 1)
        with m.If(f.r_en & f.r_rdy):
            m.d.sync += read.eq(read + 1)
        level = Signal.like(written)
        m.d.comb += level.eq(written - read)
        self.check("order", ~f.r_rdy | (f.r_data == read[:self.width]),
                   "entries leave in the order they were written, none lost or repeated")
        self.check("no_overflow", level <= self.fifo_depth,
                   f"never more than {self.fifo_depth} entries accepted and not read")
        self.check("no_underflow", ~f.r_rdy | (level != 0), "never presents an entry not written")
        self.reach("reach_full_wrap", (read > self.fifo_depth) & (level == self.fifo_depth),
                   "the FIFO wraps around and fills up within the depth")


@register
class SyncFifoHarness(FifoHarness):
    unit, cls = "fifo_sync", fifo.SyncFIFO
    config = "SyncFIFO depth 4 (matmul p_fifo)"
    depth, deep_depth = 14, 30


@register
class BufferedFifoHarness(FifoHarness):
    unit, cls = "fifo_buffered", fifo.SyncFIFOBuffered
    config = "SyncFIFOBuffered depth 4 (matmul p_fifo)"
    depth, deep_depth = 14, 30


@register
class BufferedFifo2Harness(FifoHarness):
    unit, cls = "fifo_buffered2", fifo.SyncFIFOBuffered
    config = "SyncFIFOBuffered depth 2 (normaliser queue; inside the matmul o_fifo)"
    fifo_depth = 2
    depth, deep_depth = 10, 30


@register
class BypassFifoHarness(FifoHarness):
    unit, cls = "fifo_bypass", BypassFIFO
    config = "BypassFIFO depth 4 (matmul w_fifo; a SyncFIFOBuffered of 3 behind its register)"
    depth, deep_depth = 14, 30


@register
class BypassFifo3Harness(FifoHarness):
    unit, cls = "fifo_bypass3", BypassFIFO
    config = "BypassFIFO depth 3 (matmul o_fifo, 1-row array, 2 tiles)"
    fifo_depth = 3
    depth, deep_depth = 12, 30


@register
class BufferedFifo3Harness(FifoHarness):
    unit, cls = "fifo_buffered3", fifo.SyncFIFOBuffered
    config = "SyncFIFOBuffered depth 3 (inside the matmul w_fifo, a BypassFIFO of 4)"
    fifo_depth = 3
    depth, deep_depth = 12, 30
