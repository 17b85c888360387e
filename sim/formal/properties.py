"""Building blocks for formal properties of stream units (Amaranth `Assert`/`Assume`/`Cover`).

A *harness* (`Harness`) wraps one unit for SymbiYosys: it leaves every input
port of the unit open (a top-level input the solver chooses each cycle),
assumes the `lib.stream` rules of the unit's input streams, and adds named
properties. `gpt2accel.sim.formal` turns one harness and one property name
into an RTLIL file and a `.sby` job; a harness built with ``only=NAME``
asserts only that property (every assumption stays), so each property gets
its own proof, time and trace.

The pieces, usable from any harness:

- `past_valid`: high from the second cycle on. Amaranth 0.5 has no public
  `Initial`; every register starts at its reset value in the formal model
  (Yosys keeps `init`), so a register that becomes 1 marks "a previous
  cycle exists";
- `past`: a value registered by one cycle (Amaranth 0.5 dropped `Past`);
- `stream_rule`: once ``valid`` is high it stays high, with the payload
  unchanged, until ``ready`` (the `lib.stream` contract), asserted on a
  unit's output streams and assumed on its input streams;
- `beat_counter`: transfers (valid & ready) on a stream, for the
  conservation properties (beats out never exceed beats in; after a quiet
  spell every beat in has come out);
- `quiet_counter`: consecutive cycles without an input transfer while every
  output is ready, saturating: the time a unit has had to drain;
- `seeded_bug`: a copy of a unit with one handshake bug, to show that a
  property fails (with a trace) when it should.
"""
from amaranth.hdl import *
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

__all__ = ["Harness", "past_valid", "past", "stream_rule", "beat_counter", "quiet_counter",
           "stream_ports", "open_inputs", "seeded_bug", "BUG_KINDS"]


def past_valid(m, name="past_valid"):
    """A signal that is 0 in the first cycle of a trace and 1 afterwards."""
    pv = Signal(name=name)
    m.d.sync += pv.eq(1)
    return pv


def past(m, value, name, reset_less=False):
    """`value` as it was one cycle earlier (its reset value in the first cycle).
    `reset_less`: the register ignores the reset (to observe the reset itself)."""
    value = Value.cast(value)
    reg = Signal(value.shape(), name=name, reset_less=reset_less)
    m.d.sync += reg.eq(value)
    return reg


def stream_rule(m, port, pv, name):
    """Expression: `port` (a `stream.Interface`) keeps ``valid`` high and its payload
    unchanged from the cycle after a stalled beat (valid & ~ready) on.

    `pv` is a `past_valid` signal: nothing is required in the first cycle."""
    payload = Value.cast(port.payload)
    stalled = past(m, port.valid & ~port.ready, f"{name}_stalled")
    held = past(m, payload, f"{name}_held")
    return ~(pv & stalled) | (port.valid & (payload == held))


def beat_counter(m, port, width, name):
    """Transfers on `port` so far, modulo 2**width."""
    count = Signal(width, name=name)
    with m.If(port.valid & port.ready):
        m.d.sync += count.eq(count + 1)
    return count


def quiet_counter(m, quiet, limit, name, hold=None):
    """Consecutive cycles in which `quiet` held, saturating at `limit`. With `hold`:
    a cycle without `quiet` but with `hold` keeps the count instead of clearing it
    (cycles in which `quiet` held since `hold` last failed)."""
    count = Signal(range(limit + 1), name=name)
    clear = ~quiet if hold is None else ~quiet & ~hold
    with m.If(clear):
        m.d.sync += count.eq(0)
    with m.Elif(quiet & (count != limit)):
        m.d.sync += count.eq(count + 1)
    return count


def stream_ports(component):
    """{name: (interface, is_input)} for the `lib.stream` ports of a component, also
    inside nested interfaces (named ``outer.inner``; flows compose)."""
    ports = {}

    def walk(obj, signature, prefix):
        # an `In` member's signature is already flipped: flows are the component's
        for name, member in signature.members.items():
            if not member.is_signature:
                continue
            inner = getattr(obj, name)
            if isinstance(member.signature, stream.Signature):
                ports[prefix + name] = (inner, member.flow == In)
            else:
                walk(inner, member.signature, f"{prefix}{name}.")

    walk(component, component.signature, "")
    return ports


def open_inputs(component, prefix=""):
    """Every signal the component reads from outside (its `In` flows, stream
    ``valid``/``payload`` of input streams and ``ready`` of output streams), as
    Values for the top-level port list: undriven, so the solver picks them."""
    sigs = []
    for path, member, value in component.signature.flatten(component):
        if member.flow == In:
            sigs.append(Value.cast(value))
    return sigs


class Harness(Elaboratable):
    """A unit under formal properties.

    Subclasses define `build(m)` (instantiate the unit, add assumptions
    with `assume` and properties with `check`) and set `unit`, `config`
    (one line describing the configuration) and `depth` (the proof depth:
    the k of k-induction and the BMC bound). ``only``: assert only that
    property; None asserts all of them. ``allow_reset``: leave the reset
    input free (by default it is assumed low: the initial state is the reset
    state already, and a reset in mid-stream would break the stream rules).
    """
    unit = "?"
    config = ""
    depth = 20
    allow_reset = False

    #: properties whose jobs also assert the harness's invariants (`invariant`)
    needs_invariants = ()

    def __init__(self, only=None):
        self.only = only
        self.use_invariants = True   # False: invariants name internals a bugged copy lacks
        self.inputs = []          # undriven signals the solver chooses (top-level ports)
        self.properties = {}      # name -> one-line description, in definition order
        self.min_depth = {}       # name -> shortest meaningful bound
        self.covers = set()       # names that are reachability goals, not assertions
        self._m = None

    # -- used by subclasses ------------------------------------------------------------
    def check(self, name, expr, description, min_depth=0):
        """Property `name`: `expr` holds in every cycle (asserted when selected).
        `min_depth`: the shortest bound at which a bounded check of it means
        something (e.g. long enough to fill and drain the unit)."""
        if name in self.properties:
            raise ValueError(f"{self.unit}: property {name!r} defined twice")
        self.properties[name] = description
        self.min_depth[name] = min_depth
        if self.only in (None, name):
            self._m.d.comb += Assert(expr, name)

    def invariant(self, name, expr):
        """A lemma for k-induction: a relation between the unit's registers and the
        harness's own state that holds in every reachable state. It is asserted
        (so proved, in the same job, never assumed) alongside each property in
        `needs_invariants`: the induction step then starts only from states that
        satisfy it, which is what lets it close at a small depth."""
        if self.use_invariants and (self.only is None or self.only in self.needs_invariants):
            self._m.d.comb += Assert(expr, name)

    def assume(self, expr, why=""):
        self._m.d.comb += Assume(expr, why or None)

    def reach(self, name, expr, description):
        """Reachability goal `name` (``cover`` mode): a trace exists in which `expr`
        holds. Shows that the assumptions leave the behaviour a bounded check
        must see (the first ``done``, a stalled write, ...) within its depth."""
        if name in self.properties:
            raise ValueError(f"{self.unit}: property {name!r} defined twice")
        self.properties[name] = description
        self.min_depth[name] = 0
        self.covers.add(name)
        if self.only in (None, name):
            self._m.d.comb += Cover(expr, name)

    def free(self, shape, name):
        """A fresh value the solver chooses in every cycle."""
        s = Signal(shape, name=name)
        self.inputs.append(s)
        return s

    def open(self, component):
        """Leave every input of `component` to the solver; returns the component."""
        self.inputs.extend(open_inputs(component))
        return component

    def streams(self, m, component, pv, prefix="", outputs=True):
        """The stream rule on every stream port of `component`: assumed on inputs,
        asserted (property ``<port>_hold``) on outputs unless not `outputs`.
        Returns the port map."""
        ports = stream_ports(component)
        for name, (port, is_input) in ports.items():
            if not (is_input or outputs):
                continue
            label = f"{prefix}{name}".replace(".", "_")
            rule = stream_rule(m, port, pv, label)
            if is_input:
                self.assume(rule, f"{prefix}{name}: environment obeys the stream rule")
            else:
                self.check(f"{label}_hold", rule,
                           f"`{prefix}{name}` keeps valid and payload until ready")
        return ports

    def conserve(self, m, name, inp, out, *, capacity, drain=None, row_beats=1,
                 width=8, what="beats", reach=True, pausing=False, restart=None):
        """Properties ``<name>_no_dup`` and (with `drain`) ``<name>_no_loss`` for a
        unit that emits one beat on `out` per beat taken on `inp` (streams, or any
        objects with ``valid`` and ``ready``).

        no_dup: beats out never exceed beats in, and at most `capacity` are inside
        the unit. no_loss: after `drain` consecutive cycles without an input
        transfer while `out` is ready, every beat taken has come out (with
        `row_beats` > 1, a power of two: every beat of a completed row of that
        many beats; a partial row may wait for its end). Counters are `width`
        bits, far beyond any depth the proofs reach. `pausing`: the drain spell
        counts the cycles with `out` ready since the last input transfer, a stall
        pausing it instead of starting it again (for a unit whose stages before
        the output run free and whose output stage advances whenever `out` is
        ready: it has then had at least that many cycles of every stage). A
        beat lost while the output stalls then shows one drain spell after the
        last input, not one after the stall. `restart` = (signal, what it is): a
        cycle in which the signal holds starts the drain spell again like an
        input transfer (for an input the outputs also wait for, e.g. a unit's
        parameters). Returns (beats in, beats out).
        """
        n_in = beat_counter(m, inp, width, f"{name}_in")
        n_out = beat_counter(m, out, width, f"{name}_out")
        if reach:
            stalled = Signal(name=f"{name}_stall_seen")
            with m.If(out.valid & ~out.ready):
                m.d.sync += stalled.eq(1)
            self.reach(f"reach_{name}", out.valid & out.ready & stalled,
                       f"{what} come out after a stalled one (the depth sees the unit work)")
        inside = Signal(width, name=f"{name}_inside")
        m.d.comb += inside.eq(n_in - n_out)
        self.check(f"{name}_no_dup", inside <= capacity,
                   f"{what} out never exceed {what} in (at most {capacity} inside)")
        if drain is not None:
            assert row_beats & (row_beats - 1) == 0, "row_beats must be a power of two"
            complete = n_in & ~(row_beats - 1)
            taken = inp.valid & inp.ready
            since = ""
            if restart is not None:
                taken = taken | restart[0]
                since = f" and {restart[1]}"
            quiet = quiet_counter(m, ~taken & out.ready, drain, f"{name}_quiet",
                                  hold=~taken if pausing else None)
            self.check(f"{name}_no_loss", (quiet != drain) | (n_out == complete),
                       f"{drain} cycles " + (f"with the output ready since the last input{since} "
                                            if pausing else
                                            f"without input{since} while the output is ready ") +
                       f"drain "
                       f"every {what[:-1]}" + (" of a completed row" if row_beats > 1 else ""),
                       min_depth=drain + capacity + 2)
        return n_in, n_out

    def fifo(self, name, f, *, credit=False):
        """Properties of a `lib.fifo` instance inside a unit: ``<name>_no_underflow``
        (never read while empty) and, when the producer writes without looking at
        ``w_rdy`` (`credit`: it relies on its own accounting), ``<name>_no_overflow``
        (never written while full). Order is a property of the FIFO itself,
        proved on its own (unit ``fifo``)."""
        self.check(f"{name}_no_underflow", ~f.r_en | f.r_rdy,
                   f"{name} is never read while empty")
        if credit:
            self.check(f"{name}_no_overflow", ~f.w_en | f.w_rdy,
                       f"{name} is never written while full (credit accounting)")

    # -- Elaboratable --------------------------------------------------------------------
    def elaborate(self, platform):
        m = Module()
        self._m = m
        self.inputs = []
        self.properties = {}
        self.min_depth = {}
        self.covers = set()
        if not self.allow_reset:
            m.d.comb += Assume(~ResetSignal("sync"))
        self.build(m)
        if self.only is not None and self.only not in self.properties:
            raise ValueError(f"{self.unit} has no property {self.only!r} "
                             f"(it has: {', '.join(self.properties)})")
        return m


def _member(obj, path):
    for p in path:
        obj = obj[p] if isinstance(p, int) else getattr(obj, p)
    return obj


#: kinds of `seeded_bug`: what the copy gets wrong on `port`
BUG_KINDS = {
    "ignore_ready": "the unit advances its output stream whether or not the consumer is ready "
                    "(the ready gating is dropped)",
    "ignore_valid": "the unit takes a beat from its input stream whether or not one is offered",
    "stall_input": "the unit never takes a beat from its input stream",
    "tie": "an output held at a constant (`value`)",
}


def seeded_bug(cls, kind, port, value=0):
    """A subclass of the component class `cls` with one bug (`BUG_KINDS`) at `port`
    (a port name, or a dotted path for ``tie``), built with `cls`'s arguments.

    The copy contains an untouched `cls` instance and connects every port
    through, except for the one handshake signal the bug concerns: the unit
    as the outside sees it then misbehaves exactly as a unit with that line
    of its handshake logic wrong would.
    """
    if kind not in BUG_KINDS:
        raise ValueError(f"unknown bug kind {kind!r} (known: {', '.join(BUG_KINDS)})")

    class Bugged(cls):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self._inner = cls(*args, **kwargs)

        def elaborate(self, platform):
            m = Module()
            m.submodules.inner = inner = self._inner
            for path, member, value_ in self.signature.flatten(self):
                theirs = _member(inner, path)
                if member.flow == Out:
                    m.d.comb += value_.eq(theirs)
                else:
                    m.d.comb += theirs.eq(value_)
            # later assignments in a module override earlier ones: the bug
            path = port.split(".")
            if kind == "ignore_ready":
                m.d.comb += _member(inner, path).ready.eq(1)
            elif kind == "ignore_valid":
                m.d.comb += _member(inner, path).valid.eq(1)
            elif kind == "stall_input":
                m.d.comb += [_member(inner, path).valid.eq(0), _member(self, path).ready.eq(0)]
            else:
                m.d.comb += _member(self, port.split(".")).eq(value)
            return m

    Bugged.__name__ = Bugged.__qualname__ = f"{cls.__name__}_{kind}_{port.replace('.', '_')}"
    return Bugged
