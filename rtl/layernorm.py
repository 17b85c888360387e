"""Integer LayerNorm (numerics §6, `intmodel.layernorm`), one row of N <= max_e values at a time.

Per row of `R`-bit residual values x[0..N-1] (N = n_embd):

    Σ     = Σ x_i,   span = N (max x - min x)                       pass A (input)
    k     = max(bitlen(span) - 15, k_min),  k_min = ceil((eps_e - 31) / 2)
    ε     = eps_m * 2^(eps_e - 2k)  (rounded right shift if negative)  row stats
    d_s_i = (N x_i - Σ) * 2^-k     (left shift, or round_shift by k)
    S2    = Σ d_s_i² + ε                                            pass B
    r     = max(isqrt(S2), 1),  inv = min(round(2^36 / r), 2^24 - 1)  root (once per row)
    z_i   = round_shift(d_s_i * inv, 14)
    y_i   = sat8(round_shift(z_i * G_i + B_i, out_shift))           pass C (output)

k needs the row's span and every d_s needs k, and S needs every d_s: so a
row is read three times, by three passes that each handle one row at a time
and overlap across rows:

- pass A takes the input beats, writes them to one half of the X buffer
  (2 x ceil(max_e/lanes) words of `lanes` x R bits) and reduces Σ, max, min;
  a 6-stage stats pipeline then derives k, the two shift amounts and ε;
- pass B reads the row back, computes d_s (one n*x multiplier per lane),
  writes it to one bank of the D buffer (`ds_banks` x ceil(max_e/lanes)
  words of `lanes` x 17 bits) and sums the squares into S2;
- `RowRoot` (sequential, `RowRoot.period` cycles per row) turns S2 into inv;
- pass C reads d_s and the channel's gamma/beta, and produces the outputs.

Passes A, B and the root never stall inside a row (B and the root run free
once started); only pass C sees the output's back-pressure, through one
pipeline enable. Buffer hand-over: pass A may refill an X half as soon as
pass B has started reading it (B reads one word per cycle without pausing,
so the writer can never overtake it); a D bank is free again once pass C
has issued its last read. Three D banks hide the root: with rows of
W = ceil(N/lanes) >= 26 beats the unit takes and emits one beat per cycle
(`sim.cycles.units.layernorm_row_period` gives the rate for any W).

Parameters (per LayerNorm: gamma/beta and the scalars) are loaded between
groups of rows: a ``setup`` beat (n, out_shift, eps_m, eps_e) waits until
every earlier row has left the unit (rows offered meanwhile wait), then
exactly ceil(n/lanes) ``param`` beats (gamma and beta of `lanes` channels
each) must follow. Rows are taken from the setup on, before, between or after
the parameter beats: only pass C reads gamma/beta, so it alone waits for the
last of them, and a short row's stats, pass B and root run while they load.
An n of 0 or above `max_e` raises ``error`` and the unit takes no row until a
valid setup.
"""
from amaranth.hdl import *
from amaranth.lib import data, enum, stream, wiring
from amaranth.lib.memory import Memory, ReadPort, WritePort
from amaranth.lib.wiring import In, Out

from gpt2accel.model import intmodel as im

# the setup beat is the LAYERNORM instruction's scalars: its layout is the ISA's
from .isa import LN_EPS_E_BITS as EPS_E_BITS, LN_N_BITS as N_BITS
from .isa import layernorm_setup_layout as setup_layout

from .intarith import add_half, bit_length, max_tree, round_shift, split_product, sum_tree
from .vector import check_lanes, vector_layout

__all__ = ["LayerNormUnit", "RowRoot", "row_latency", "param_layout", "MAX_E_LIMIT",
           "ROW_STATS_LATENCY", "PASS_B_LATENCY", "PASS_C_LATENCY"]

#: numerics §6.3: N <= 2048 keeps S + ε below 2^48
MAX_E_LIMIT = 2048
#: magnitude bits of d_s (§6.2) and its register width (|d_s| <= 2^15)
DS_BITS = im.LN_D_BITS + 2
#: output-pass fixed point: z = round_shift(d_s * inv, 36 - 22)
Z_SHIFT = im.LN_RECIP_SHIFT - im.LN_Z_FRAC
#: z is at most 2^22 + 1 in magnitude
Z_BITS = im.LN_Z_FRAC + 2
#: cycles from a row's last input beat (pass A) to pass B being able to start it: the
#: beat's register and reductions, then six stats stages (totals, max - min, span,
#: its bit length, k, the shifts), the descriptor register
ROW_STATS_LATENCY = 9
#: cycles from pass B's last read issue to the row's S2 being visible to the root
#: (the read, its register, N x, - Σ, the shift's two halves, the squares, their sum,
#: the accumulation, S + ε into the bank's register)
PASS_B_LATENCY = 10
#: cycles from a pass C read issue to its output beat being valid (the read, its
#: register, d_s * inv in two, z, z * G in two, + B and the half, the shift in two)
PASS_C_LATENCY = 10


def row_latency(n, lanes):
    """Cycles from a row's last input beat to its first output beat when the unit
    is otherwise idle: stats, pass B over ceil(n/lanes) beats, root, pass C."""
    return (ROW_STATS_LATENCY + -(-n // lanes) - 1 + PASS_B_LATENCY + RowRoot.period
            + PASS_C_LATENCY)


def param_layout(lanes):
    """gamma (int16) and beta (48-bit) of `lanes` consecutive channels, from channel 0 on."""
    return data.StructLayout({"gamma": data.ArrayLayout(signed(16), lanes),
                              "beta": data.ArrayLayout(signed(48), lanes)})


def _pair_level(values, first_if):
    """One level of a balanced reduction tree: each pair reduced to its first value
    where `first_if(a, b)` holds, else its second (an odd last value passes)."""
    values = list(values)
    nxt = [Mux(first_if(a, b), a, b) for a, b in zip(values[::2], values[1::2])]
    return nxt + values[len(nxt) * 2:]


def _min_tree(values):
    """Balanced reduction tree of signed minima."""
    values = list(values)
    while len(values) > 1:
        values = _pair_level(values, lambda a, b: a < b)
    return values[0]


class RowRoot(wiring.Component):
    """S2 (48-bit) in, inv = min(round(2^36 / max(isqrt(S2), 1)), 2^24 - 1) out (§6.4).

    Sequential, three bits a cycle: a radix-8 square root (8 cycles: with the
    partial root R and remainder rem, the next six radicand bits shifted in
    give rem', and the digit is the largest d in 0..7 with
    (8R + d)^2 - 64 R^2 = 16Rd + d^2 <= rem', the same result as the one bit
    per step of `intmodel.isqrt`), then a radix-8 restoring long division of
    2^36 + r/2 by r (8 cycles; digit = largest k in 0..7 with k r <= rem').
    The divider starts the cycle after the root's last digit: S2 = 0 is taken
    as 1 (both have r = max(isqrt, 1) = 1), and the root keeps r, 3r, 5r and
    7r in registers as it goes, so no cycle between them prepares r.
    Each cycle has one carry chain on its select path: seven trial
    subtractions run in parallel and their signs pick the result. The
    root's trials are at most 28 bits (rem' < 2^28 before the last digit,
    when R < 2^21); the divider keeps r fixed and shifts the remainder
    (rem < r), so its trials are 27 bits, not the dividend's 37. For
    r <= 2^12 the quotient is >= 2^24 and clamps (only constant rows get
    there), so the divider only ever produces 24 bits.

    ``start`` pulses with ``s2`` for one cycle while ``busy`` is low; ``done``
    pulses `period` - 1 cycles later with ``inv`` valid in the same cycle.
    """
    #: cycles from ``start`` to the next possible ``start``
    period = 17

    def __init__(self):
        super().__init__({"start": In(1), "s2": In(im.LN_ACC_BITS), "busy": Out(1),
                          "done": Out(1), "inv": Out(im.LN_RECIP_BITS)})

    @staticmethod
    def _pick(m, trials, base, name):
        """(one-hot digit selects, digit, remainder) of the largest trial that is
        not negative. The trials fall as the digit grows, so their signs are a
        thermometer code and each digit's select is two of them: the remainder
        and every register the digit steers are AND-OR selects, not a chain of
        seven priority muxes."""
        ge = [C(1, 1)] + [~t[-1] for t in trials] + [C(0, 1)]
        sel = [Signal(name=f"{name}_sel{k}") for k in range(8)]
        m.d.comb += [sel[k].eq(ge[k] & ~ge[k + 1]) for k in range(8)]
        width = len(base)
        nrem = Signal(width, name=f"{name}_rem")
        vals = [base] + [t[:width] for t in trials]
        m.d.comb += nrem.eq(_or_select(sel, vals))
        digit = Signal(3, name=f"{name}_digit")
        m.d.comb += digit.eq(Cat(*(_or_select(sel, [C((k >> b) & 1, 1) for k in range(8)])
                                   for b in range(3))))
        return sel, digit, nrem

    @staticmethod
    def _next_multiple(m, reg, coef, const, sel, name):
        """``reg`` = coef R + const -> coef (8R + digit) + const = 8 reg + (coef digit
        - 7 const): the low three bits are a constant per digit and the high part
        is reg plus a small offset, one adder per distinct offset, all in parallel,
        then the digit's one-hot select."""
        offs = {d: (coef * d - 7 * const) for d in range(8)}
        highs = {}
        for o in sorted({v >> 3 for v in offs.values()}):
            h = Signal(len(reg), name=f"{name}_p{o}".replace("-", "m"))
            m.d.comb += h.eq(reg + o)
            highs[o] = h
        out = Signal(len(reg), name=f"{name}_next")
        m.d.comb += out.eq(_or_select(sel, [Cat(C(v & 7, 3), highs[v >> 3])[:len(reg)]
                                            for d, v in sorted(offs.items())]))
        return out

    def elaborate(self, platform):
        m = Module()
        A = im.LN_ACC_BITS
        RB = A // 2                     # root bits
        steps = A // 6                  # three root bits per cycle
        q_bits = im.LN_RECIP_BITS
        q_steps = q_bits // 3
        RW = RB + 4                     # rem' < 2^(RB+4), see the class docstring
        DW = q_bits + 3                 # the divider's rem' < 8r < 2^27
        # Datapath registers without reset (docs/architecture.md, pipelining discipline):
        # IDLE loads every one of them at ``start``; only the state machine resets.
        rad = Signal(A, reset_less=True)    # the radicand bits not yet shifted in, at the top
        root = Signal(RB, reset_less=True)  # R, the root so far
        # 3R, 3R + 1, 5R + 1, 7R + 3: with them every trial 16Rd + d^2 is a
        # multiple shifted left with its constant in the low bits (no add); 5R
        # and 7R are the divider's 5r and 7r once R is the root
        m3, m3p, m5, m7, m5z, m7z = (Signal(RB + 3, name=n, reset_less=True) for n in (
            "sq_3r", "sq_3r1", "sq_5r1", "sq_7r3", "sq_5r", "sq_7r"))
        rem = Signal(max(RW, DW), reset_less=True)   # the root's remainder (<= 2R), then
                                                     # the divider's (< r)
        nbits = Signal(q_bits, reset_less=True)      # the dividend's bits not yet shifted in
        q = Signal(q_bits, reset_less=True)
        step = Signal(range(max(steps, q_steps)), reset_less=True)

        # Both steps' trials are built outside the state machine, each from its own
        # registers: inside the states, synthesis shares one set of subtractors
        # between them and puts the state decode in front of the carry chains.
        # Root: 16Rd + d^2 for d = 1..7: 16R+1, 32R+4, 16(3R)+9, 64R+16,
        # 16(5R+1)+9, 32(3R+1)+4, 16(7R+3)+1
        sq_remp = Signal(RW)
        m.d.comb += sq_remp.eq(Cat(rad[-6:], rem[:RW - 6]))
        consts = [(1, 4, root), (4, 5, root), (9, 4, m3), (16, 6, root), (9, 4, m5),
                  (4, 5, m3p), (1, 4, m7)]
        sq_trial = [Signal(signed(RW + 1), name=f"sq_trial{d}") for d in range(1, 8)]
        m.d.comb += [t.eq(sq_remp - Cat(C(c, w), mult)[:RW])
                     for t, (c, w, mult) in zip(sq_trial, consts)]
        sq_sel, sq_digit, sq_rem = self._pick(m, sq_trial, sq_remp, "sq")
        nroot = Cat(sq_digit, root[:-3])
        # Divider: rem < r holds throughout because the quotient fits 24 bits
        div_remp = Signal(DW)
        m.d.comb += div_remp.eq(Cat(nbits[-3:], rem[:DW - 3]))
        mults = [root, root << 1, m3, root << 2, m5z, m3 << 1, m7z]
        div_trial = [Signal(signed(DW + 1), name=f"div_trial{k}") for k in range(1, 8)]
        m.d.comb += [t.eq(div_remp - mult[:DW]) for t, mult in zip(div_trial, mults)]
        _, div_digit, div_rem = self._pick(m, div_trial, div_remp, "div")

        with m.FSM():
            with m.State("IDLE"):
                with m.If(self.start):
                    # isqrt(0) = 0 and isqrt(1) = 1 have the same r = 1
                    m.d.sync += [rad.eq(self.s2 | (self.s2 == 0)), root.eq(0), m3.eq(0),
                                 m3p.eq(1), m5.eq(1), m7.eq(3), m5z.eq(0), m7z.eq(0),
                                 rem.eq(0), step.eq(0)]
                    m.next = "SQRT"
            with m.State("SQRT"):
                m.d.comb += self.busy.eq(1)
                m.d.sync += [rem.eq(sq_rem), root.eq(nroot),
                             m3.eq(self._next_multiple(m, m3, 3, 0, sq_sel, "sq_3r")),
                             m3p.eq(self._next_multiple(m, m3p, 3, 1, sq_sel, "sq_3r1")),
                             m5.eq(self._next_multiple(m, m5, 5, 1, sq_sel, "sq_5r1")),
                             m7.eq(self._next_multiple(m, m7, 7, 3, sq_sel, "sq_7r3")),
                             m5z.eq(self._next_multiple(m, m5z, 5, 0, sq_sel, "sq_5r")),
                             m7z.eq(self._next_multiple(m, m7z, 7, 0, sq_sel, "sq_7r")),
                             rad.eq(rad << 6), step.eq(step + 1)]
                with m.If(step == steps - 1):
                    # the dividend 2^36 + (r >> 1), r < 2^24: its top bits are 2^12, its
                    # low 24 r >> 1 (r is the root, >= 1 as S2 >= 1)
                    m.d.sync += [rem.eq(1 << (im.LN_RECIP_SHIFT - q_bits)),
                                 nbits.eq(nroot >> 1), step.eq(0)]
                    m.next = "DIV"
            with m.State("DIV"):
                m.d.comb += self.busy.eq(1)
                q_next = Cat(div_digit, q[:-3])
                m.d.sync += [rem.eq(div_rem), nbits.eq(nbits << 3), q.eq(q_next),
                             step.eq(step + 1)]
                with m.If(step == q_steps - 1):
                    # (2^36 + (r >> 1)) // r >= 2^24 exactly when r <= 2^12
                    clamp = root <= (1 << (im.LN_RECIP_SHIFT - q_bits))
                    m.d.comb += [self.done.eq(1),
                                 self.inv.eq(Mux(clamp, (1 << q_bits) - 1, q_next))]
                    m.next = "IDLE"
        return m


def _or_select(sel, values):
    """values[k] where the one-hot ``sel[k]`` is set (0 when none is): an AND-OR."""
    width = max(len(Value.cast(v)) for v in values)
    out = C(0, width)
    for sk, v in zip(sel, values):
        out = out | (Value.cast(v) & sk.replicate(width))
    return out


class _BankState(enum.Enum, shape=2):
    """A D bank's state: pass B takes a FREE bank (FILLING from its first read, as
    its pipeline is longer than the banks' turn of short rows), the root takes a
    WRITTEN one, pass C reads a ROOTED one and frees it."""
    FREE = 0
    WRITTEN = 1
    ROOTED = 2
    FILLING = 3


class _Geometry:
    """The sizes every block of one `LayerNormUnit` derives from its parameters."""

    def __init__(self, lanes, in_bits, words, ds_banks, max_e):
        self.L, self.R, self.W, self.NB = lanes, in_bits, words, ds_banks
        self.SUM_W = in_bits + max_e.bit_length() + 1      # |Σ| <= max_e * 2^(R-1)
        self.SPAN_W = in_bits + N_BITS                      # n * (max - min), unsigned
        self.D_W = in_bits + N_BITS + 1                     # n*x - Σ, signed
        self.x_shape = data.ArrayLayout(signed(in_bits), lanes)
        self.d_shape = data.ArrayLayout(signed(DS_BITS), lanes)
        # d_s = round_shift(d << lsh, rsh); ε = eps_m * 2^(eps_e - 2k) (§6.3)
        self.desc_layout = data.StructLayout({"sum": signed(self.SUM_W), "lsh": range(16),
                                              "rsh": range(self.D_W + 1),
                                              "eps": unsigned(47)})

    @staticmethod
    def port(kind, shape, depth):
        """The signature of a buffer's `ReadPort`/`WritePort`, as the pass using it sees it."""
        return kind.Signature(addr_width=Shape.cast(range(depth)).width, shape=shape).flip()


def _sel(signals, idx):
    """signals[idx] for a small list (a mux chain over <= 8 entries)."""
    out = signals[0]
    for i in range(1, len(signals)):
        out = Mux(idx == i, signals[i], out)
    return out


def _nxt(idx, NB):
    return Mux(idx == NB - 1, 0, idx + 1)


#: ε's exponent a = eps_e - 2k (§6.3) before k is known, from the setup: k is either
#: k_min or bitlen(span) - LN_D_BITS, so a is eps_e - 2 k_min or e_span - 2 bitlen(span)
#: (each with its negation), and the row's stats pick one: no subtraction, negation
#: or compare of a computed k sits between the k stage and the shift amounts
_EpsK = data.StructLayout({"k_floor": signed(EPS_E_BITS + 2),      # k_min + LN_D_BITS
                           "a_min": signed(EPS_E_BITS + 4), "na_min": signed(EPS_E_BITS + 4),
                           "e_span": signed(EPS_E_BITS + 4)})       # eps_e + 2 LN_D_BITS


class _Config(wiring.Signature):
    """The scalars of the last setup (with k_min and `_EpsK` derived from eps_e), and
    what may go on: ``usable`` (a valid setup: rows may be taken), ``loaded``
    (and all its parameters: pass C may read them) and ``setup_pending`` (a
    setup waits, so no new row starts)."""

    def __init__(self, lanes):
        super().__init__({"cfg": Out(setup_layout()), "k_min": Out(signed(EPS_E_BITS + 1)),
                          "first_mask": Out(lanes),
                          "eps_k": Out(_EpsK), "usable": Out(1), "loaded": Out(1),
                          "setup_pending": Out(1)})


class _Rows(wiring.Signature):
    """Pass A to pass B, per X half: the row's descriptor and ``ready`` (row and
    stats complete); pass B clears ``busy`` when it starts reading a half (A may
    refill it behind B) and ``ready`` when it has issued the last read."""

    def __init__(self, geo):
        super().__init__({"desc": Out(geo.desc_layout).array(2), "ready": Out(2),
                          "clr_busy": In(2), "clr_ready": In(2)})


class _BankInfo(wiring.Signature):
    """Each D bank's state and, once ROOTED, its row's inv."""

    def __init__(self, geo):
        super().__init__({"state": Out(_BankState).array(geo.NB),
                          "inv": Out(im.LN_RECIP_BITS).array(geo.NB)})


class _Params(wiring.Component):
    """The setup beat and the gamma/beta load after it. A setup waits until no
    row is in the unit (``row_in``/``row_out`` count them), so the rows in
    flight never see their scalars or parameters change."""

    def __init__(self, geo, max_e):
        self.geo, self.max_e = geo, max_e
        super().__init__({
            "setup": In(stream.Signature(setup_layout())),
            "param": In(stream.Signature(param_layout(geo.L))),
            "config": Out(_Config(geo.L)),
            "error": Out(1),
            "row_in": In(1), "row_out": In(1),
            "gb_w": Out(geo.port(WritePort, param_layout(geo.L), geo.W)),
        })

    def elaborate(self, platform):
        m = Module()
        L, W, NB = self.geo.L, self.geo.W, self.geo.NB
        cfg, k_min, loaded = self.config.cfg, self.config.k_min, self.config.loaded
        configured = Signal()
        m.d.comb += self.error.eq(configured & ((cfg.n == 0) | (cfg.n > self.max_e)))
        p_elem = Signal(range(W * L + 1))               # channels of gamma/beta loaded
        p_word = Signal(range(W + 1))                   # = p_elem / lanes
        m.d.comb += [self.config.usable.eq(configured & ~self.error),
                     loaded.eq(configured & ~self.error & (p_elem >= cfg.n)),
                     self.config.setup_pending.eq(self.setup.valid)]
        # rows taken and not yet emitted: at most two in the X halves, one per D bank
        # and one per pass C stage
        inflight = Signal(range(2 + NB + PASS_C_LATENCY + 1))
        m.d.sync += inflight.eq(inflight + self.row_in - self.row_out)

        m.d.comb += self.setup.ready.eq(inflight == 0)
        s = self.setup.payload
        new_k_min = Signal(signed(EPS_E_BITS + 1))
        m.d.comb += new_k_min.eq(-((31 - s.eps_e) >> 1))             # intmodel.ln_k_min
        a_min = s.eps_e - (new_k_min << 1)
        with m.If(self.setup.valid & self.setup.ready):
            ek = self.config.eps_k
            m.d.sync += [cfg.eq(s), configured.eq(1), p_elem.eq(0), p_word.eq(0),
                         self.config.first_mask.eq(Cat(s.n > l for l in range(L))),
                         k_min.eq(new_k_min), ek.k_floor.eq(new_k_min + im.LN_D_BITS),
                         ek.a_min.eq(a_min), ek.na_min.eq(-a_min),
                         ek.e_span.eq(s.eps_e + 2 * im.LN_D_BITS)]

        # (a parameter beat never shares a cycle with the setup beat before it)
        m.d.comb += [self.param.ready.eq(configured & ~self.error & ~loaded & ~self.setup.valid),
                     self.gb_w.addr.eq(p_word),
                     self.gb_w.data.eq(self.param.payload),
                     self.gb_w.en.eq(self.param.valid & self.param.ready)]
        with m.If(self.param.valid & self.param.ready):
            m.d.sync += [p_elem.eq(p_elem + L), p_word.eq(p_word + 1)]
        return m


class _PassA(wiring.Component):
    """Pass A: takes the input beats into one X half and reduces Σ, max and min;
    a free-running stats pipeline then derives the row's descriptor (k, the two
    shifts, ε) for pass B."""

    def __init__(self, geo):
        self.geo = geo
        super().__init__({
            "config": In(_Config(geo.L)),
            "inp": In(stream.Signature(vector_layout(signed(geo.R), geo.L))),
            "row_in": Out(1),
            "x_w": Out(geo.port(WritePort, geo.x_shape, 2 * geo.W)),
            "rows": Out(_Rows(geo)),
        })

    def elaborate(self, platform):
        m = Module()
        geo = self.geo
        L, R, W = geo.L, geo.R, geo.W
        SUM_W, SPAN_W, D_W = geo.SUM_W, geo.SPAN_W, geo.D_W
        cfg, k_min = self.config.cfg, self.config.k_min
        x_w, desc, xready = self.x_w, self.rows.desc, self.rows.ready
        ha = Signal()                                   # X half being written
        ja = Signal(range(W))
        first_a = Signal(init=1)                        # the next beat starts a row
        left = Signal(range(W * L + 1))                 # the row's channels not yet taken
        xbusy = Signal(2)                               # half holds a row B has not started
        # Datapath registers have no reset (docs/architecture.md): each is read only
        # under a valid bit that has one, or restarted by a row's first beat.
        acc_sum = Signal(signed(SUM_W), reset_less=True)
        acc_max = Signal(signed(R), reset_less=True)
        acc_min = Signal(signed(R), reset_less=True)
        # rows need the setup's scalars, not gamma/beta: only pass C reads those
        m.d.comb += self.inp.ready.eq(self.config.usable & ~xbusy.bit_select(ha, 1)
                                      & ~(self.config.setup_pending & first_a))
        take_a = self.inp.valid & self.inp.ready
        m.d.comb += self.row_in.eq(take_a & first_a)
        lo, hi = -(1 << (R - 1)), (1 << (R - 1)) - 1
        xs = self.inp.payload.x
        # a count down from n, so that the lane mask and the row's end are compares
        # against constants (a setup only comes between rows: first_a is set then)
        n_left = Mux(first_a, cfg.n, left)
        end_a = n_left <= L
        m.d.comb += [x_w.addr.eq(Mux(ha, W, 0) + ja), x_w.data.eq(xs), x_w.en.eq(take_a)]
        with m.If(take_a):
            m.d.sync += [first_a.eq(end_a), left.eq(n_left - L)]
            with m.If(end_a):
                m.d.sync += [ja.eq(0), ha.eq(~ha)]
            with m.Else():
                m.d.sync += ja.eq(ja + 1)

        # The beat is masked (lanes past n: 0, lo, hi) and its max/min trees' first
        # level taken (p1), the rest of the trees and the sum reduced (p2), then
        # accumulated: the trees' levels split between two stages (one level in a
        # stage with the mask would leave the rest, log2(lanes) - 1, to the next).
        # The lane mask is pre-decoded into registers, so that the input stage holds
        # no compare of the count: a row's first beat's from n, registered with it at
        # the setup (a row may come in the cycle after it), the next beat's from the
        # count now (n_left > l + lanes is left' > l).
        pctx = data.StructLayout({"v": 1, "first": 1, "end": 1, "h": 1})
        p1, p2 = Signal(pctx), Signal(pctx)
        first_mask, next_mask = self.config.first_mask, Signal(L, reset_less=True)
        with m.If(take_a):
            m.d.sync += next_mask.eq(Cat(n_left > l + L for l in range(L)))
        mask = Mux(first_a, first_mask, next_mask)
        lvl_max = _pair_level([Mux(mask[l], xs[l], lo) for l in range(L)], lambda a, b: a > b)
        lvl_min = _pair_level([Mux(mask[l], xs[l], hi) for l in range(L)], lambda a, b: a < b)
        p1_x = [Signal(signed(R), name=f"p1_x{l}", reset_less=True) for l in range(L)]
        p1_max = [Signal(signed(R), name=f"p1_max{i}", reset_less=True)
                  for i in range(len(lvl_max))]
        p1_min = [Signal(signed(R), name=f"p1_min{i}", reset_less=True)
                  for i in range(len(lvl_min))]
        p2_sum = Signal(signed(SUM_W), reset_less=True)
        p2_max, p2_min = Signal(signed(R), reset_less=True), Signal(signed(R), reset_less=True)
        m.d.sync += [p1.v.eq(take_a), p1.first.eq(first_a), p1.end.eq(end_a), p1.h.eq(ha),
                     *(p1_x[l].eq(Mux(mask[l], xs[l], 0)) for l in range(L)),
                     *(a.eq(v) for a, v in zip(p1_max, lvl_max)),
                     *(a.eq(v) for a, v in zip(p1_min, lvl_min)), p2.eq(p1),
                     p2_sum.eq(sum_tree(p1_x)), p2_max.eq(max_tree(p1_max)),
                     p2_min.eq(_min_tree(p1_min))]
        tot = Signal(signed(SUM_W))
        mx, mn = Signal(signed(R)), Signal(signed(R))
        m.d.comb += [tot.eq(Mux(p2.first, 0, acc_sum) + p2_sum),
                     mx.eq(Mux(p2.first | (p2_max > acc_max), p2_max, acc_max)),
                     mn.eq(Mux(p2.first | (p2_min < acc_min), p2_min, acc_min))]
        with m.If(p2.v):
            m.d.sync += [acc_sum.eq(tot), acc_max.eq(mx), acc_min.eq(mn)]

        # Row stats pipeline, free-running (a row is at least one beat, so at most
        # one enters per cycle): st1 totals, st2 max - min, st3 span, st4 its bit
        # length, st5 k, st6 the shifts and ε's exponent.
        S = 6
        # (only st_v resets: the rest is read under it)
        st_v = Signal(S)
        st_h = Signal(S, reset_less=True)
        st_sum = [Signal(signed(SUM_W), name=f"st{i}_sum", reset_less=True)
                  for i in range(1, S + 1)]
        st1_max = Signal(signed(R), reset_less=True)
        st1_min = Signal(signed(R), reset_less=True)
        st2_diff = Signal(R, reset_less=True)
        st3_span = Signal(SPAN_W, reset_less=True)
        st4_bl = Signal(range(SPAN_W + 1), reset_less=True)
        st5_k = Signal(signed(EPS_E_BITS + 2), reset_less=True)
        st5_a = Signal(signed(EPS_E_BITS + 4), reset_less=True)
        st5_na = Signal(signed(EPS_E_BITS + 4), reset_less=True)
        m.d.sync += [st_v.eq(Cat(p2.v & p2.end, st_v[:-1])), st_h.eq(Cat(p2.h, st_h[:-1])),
                     st_sum[0].eq(tot), st1_max.eq(mx), st1_min.eq(mn),
                     st2_diff.eq(st1_max - st1_min), st3_span.eq(st2_diff * cfg.n),
                     st4_bl.eq(bit_length(m, st3_span, "span_bitlen"))]
        m.d.sync += [st_sum[i + 1].eq(st_sum[i]) for i in range(S - 1)]
        # k = max(bitlen - LN_D_BITS, k_min), and beside it ε's exponent eps_e - 2k and
        # its negation, from the setup's `_EpsK` (k taken at st5 and a from it at st6
        # was the unit's worst path on ECP5)
        ek = self.config.eps_k
        span_k = st4_bl > ek.k_floor
        a_span = Signal(signed(EPS_E_BITS + 4))
        m.d.comb += a_span.eq(ek.e_span - (st4_bl << 1))
        m.d.sync += [st5_k.eq(Mux(span_k, st4_bl - im.LN_D_BITS, k_min)),
                     st5_a.eq(Mux(span_k, a_span, ek.a_min)),
                     st5_na.eq(Mux(span_k, (st4_bl << 1) - ek.e_span, ek.na_min))]

        k = st5_k
        st6_pos = Signal(reset_less=True)
        st6_shl, st6_shr = Signal(5, reset_less=True), Signal(5, reset_less=True)
        st6_rsh, st6_lsh = Signal(range(D_W + 1), reset_less=True), Signal(4, reset_less=True)
        # a right shift by D_W or more gives 0 for every |d| < 2^(R+11): clamp there
        m.d.sync += [st6_pos.eq(st5_a >= 0), st6_shl.eq(st5_a[:5]),
                     st6_shr.eq(Mux(st5_na > 17, 17, st5_na)[:5]),
                     st6_rsh.eq(Mux(k > D_W, D_W, Mux(k > 0, k, 0))),
                     st6_lsh.eq(Mux(k < 0, -k, 0)[:4])]
        # Row descriptor per X half, written when the stats leave st6.
        eps_val = Mux(st6_pos, (cfg.eps_m << st6_shl)[:47],
                      round_shift(Cat(cfg.eps_m, Const(0, 1)),   # zero-extended: eps_m is unsigned
                                  st6_shr, im.LN_EPS_BITS + 2))
        set_ready = Signal(2)
        set_busy = Signal(2)
        with m.If(st_v[S - 1]):
            for h in range(2):
                with m.If(st_h[S - 1] == h):
                    m.d.sync += [desc[h].sum.eq(st_sum[S - 1]), desc[h].lsh.eq(st6_lsh),
                                 desc[h].rsh.eq(st6_rsh), desc[h].eps.eq(eps_val)]
            m.d.comb += set_ready.eq(Mux(st_h[S - 1], 0b10, 0b01))
        m.d.comb += set_busy.eq(Mux(take_a & end_a, Mux(ha, 0b10, 0b01), 0))
        m.d.sync += [xready.eq((xready | set_ready) & ~self.rows.clr_ready),
                     xbusy.eq((xbusy | set_busy) & ~self.rows.clr_busy)]
        return m


class _PassB(wiring.Component):
    """Pass B: reads a row back from its X half once its stats are ready and a
    D bank is FREE, one word per cycle without pausing; writes d_s to the bank
    and hands the row's S2 = Σ d_s² + ε to the bank (``written``)."""

    def __init__(self, geo):
        self.geo = geo
        super().__init__({
            "config": In(_Config(geo.L)),
            "rows": In(_Rows(geo)),
            "banks": In(_BankInfo(geo)),
            "x_r": Out(geo.port(ReadPort, geo.x_shape, 2 * geo.W)),
            "d_w": Out(geo.port(WritePort, geo.d_shape, geo.NB * geo.W)),
            "filling": Out(geo.NB), "written": Out(geo.NB),
            "s2": Out(im.LN_ACC_BITS),
        })

    def elaborate(self, platform):
        m = Module()
        geo = self.geo
        L, R, W, NB, SUM_W, D_W = geo.L, geo.R, geo.W, geo.NB, geo.SUM_W, geo.D_W
        cfg, desc, x_r, d_w = self.config.cfg, self.rows.desc, self.x_r, self.d_w
        hb = Signal()                                   # X half being read
        bw = Signal(range(NB))                          # D bank being written
        jb = Signal(range(W))
        eb = Signal(range(W * L + 1))
        bw_base = Signal(range(NB * W))
        d0 = Signal(geo.desc_layout)
        m.d.comb += d0.eq(Mux(hb, desc[1], desc[0]))
        # a row's first read takes a FREE bank; the rest follow without pausing
        issue_b = (self.rows.ready.bit_select(hb, 1)
                   & ((jb != 0) | (_sel(self.banks.state, bw) == _BankState.FREE)))
        end_b = eb + L >= cfg.n
        m.d.comb += [x_r.addr.eq(Mux(hb, W, 0) + jb), x_r.en.eq(1)]
        with m.If(issue_b):
            with m.If(jb == 0):
                m.d.comb += self.rows.clr_busy.eq(Mux(hb, 0b10, 0b01))   # A may refill behind us
                for i in range(NB):
                    with m.If(bw == i):
                        m.d.comb += self.filling[i].eq(1)
            with m.If(end_b):
                m.d.comb += self.rows.clr_ready.eq(Mux(hb, 0b10, 0b01))
                m.d.sync += [jb.eq(0), eb.eq(0), hb.eq(~hb), bw.eq(_nxt(bw, NB)),
                             bw_base.eq(Mux(bw == NB - 1, 0, bw_base + W))]
            with m.Else():
                m.d.sync += [jb.eq(jb + 1), eb.eq(eb + L)]

        # Per-beat context carried down the B pipeline (rows follow back to back).
        # b1: the X word read; b2: it registered (block-RAM outputs end in a
        # register); b3: N * x; b4: N x - Σ; b5: shifted left by lsh, the rounding
        # half of rsh added (one of the two shifts is 0); b6: d_s; b7: its squares;
        # b8: their sum; b9: S accumulated, S2 = S + ε to the bank.
        # Only the valid bits reset; the rest is read under them (docs/architecture.md).
        bctx = data.StructLayout({"first": 1, "last": 1, "mask": L,
                                  "addr": range(NB * W), "bank": range(NB),
                                  "sum": signed(SUM_W), "lsh": range(16),
                                  "rsh": range(D_W + 1), "eps": unsigned(47)})
        b = [None] + [Signal(bctx, name=f"b{i}", reset_less=True)
                      for i in range(1, PASS_B_LATENCY)]
        bv = [None] + [Signal(name=f"b{i}_v") for i in range(1, PASS_B_LATENCY)]
        m.d.sync += [bv[1].eq(issue_b), b[1].first.eq(jb == 0), b[1].last.eq(end_b),
                     b[1].mask.eq(Cat(eb + l < cfg.n for l in range(L))),
                     b[1].addr.eq(bw_base + jb), b[1].bank.eq(bw), b[1].sum.eq(d0.sum),
                     b[1].lsh.eq(d0.lsh), b[1].rsh.eq(d0.rsh), b[1].eps.eq(d0.eps)]
        m.d.sync += [b[i + 1].eq(b[i]) for i in range(1, PASS_B_LATENCY - 1)]
        m.d.sync += [bv[i + 1].eq(bv[i]) for i in range(1, PASS_B_LATENCY - 1)]
        b2_x = Signal(geo.x_shape, reset_less=True)
        b3_nx = [Signal(signed(R + N_BITS + 1), name=f"b3_nx{l}", reset_less=True)
                 for l in range(L)]
        b4_d = [Signal(signed(D_W + 1), name=f"b4_d{l}", reset_less=True) for l in range(L)]
        # rsh <= D_W, and the half is below |d| << lsh's room when lsh > 0 (rsh = 0 then)
        b5_h = [Signal(signed(D_W + 2), name=f"b5_h{l}", reset_less=True) for l in range(L)]
        b6_ds = [Signal(signed(DS_BITS), name=f"b6_ds{l}", reset_less=True) for l in range(L)]
        b7_sq = [Signal(2 * im.LN_D_BITS + 1, name=f"b7_sq{l}", reset_less=True)
                 for l in range(L)]
        b8_sum = Signal(im.LN_ACC_BITS, reset_less=True)
        m.d.sync += [b2_x.eq(x_r.data), b8_sum.eq(sum_tree(b7_sq))]
        for l in range(L):
            # when lsh > 0 the row's |d| < 2^14, so the shifted value still fits D_W
            m.d.sync += [b3_nx[l].eq(b2_x[l] * cfg.n),
                         b4_d[l].eq(b3_nx[l] - b[3].sum),
                         b5_h[l].eq(add_half(b4_d[l] << b[4].lsh, b[4].rsh, D_W + 2)),
                         b6_ds[l].eq(b5_h[l] >> b[5].rsh),
                         b7_sq[l].eq(Mux(b[6].mask[l], b6_ds[l] * b6_ds[l], 0))]
        m.d.comb += [d_w.addr.eq(b[6].addr), d_w.en.eq(bv[6])]
        for l in range(L):
            m.d.comb += d_w.data[l].eq(b6_ds[l])
        # b8 -> b9: S accumulates; at b9 the last beat stores S2 = S + ε in its bank.
        s_acc = Signal(im.LN_ACC_BITS, reset_less=True)     # restarted by a row's first beat
        b9, b9_v = b[PASS_B_LATENCY - 1], bv[PASS_B_LATENCY - 1]
        with m.If(bv[8]):
            m.d.sync += s_acc.eq(Mux(b[8].first, 0, s_acc) + b8_sum)
        m.d.comb += self.s2.eq(s_acc + b9.eps)
        with m.If(b9_v & b9.last):
            for i in range(NB):
                with m.If(b9.bank == i):
                    m.d.comb += self.written[i].eq(1)
        return m


class _Banks(wiring.Component):
    """The D banks' states with each bank's S2 and inv, and the `RowRoot` that
    turns one WRITTEN bank's S2 into its inv at a time, banks in order."""

    def __init__(self, geo):
        self.geo = geo
        super().__init__({
            "filling": In(geo.NB), "written": In(geo.NB), "s2": In(im.LN_ACC_BITS),
            "freed": In(geo.NB),
            "info": Out(_BankInfo(geo)),
        })

    def elaborate(self, platform):
        m = Module()
        NB = self.geo.NB
        state, bank_inv = self.info.state, self.info.inv
        # written before the bank is WRITTEN, read only then: no reset
        bank_s2 = [Signal(im.LN_ACC_BITS, name=f"bank{i}_s2", reset_less=True)
                   for i in range(NB)]
        for i in range(NB):
            with m.If(self.written[i]):
                m.d.sync += bank_s2[i].eq(self.s2)
        m.submodules.root = root = RowRoot()
        br = Signal(range(NB))
        bank_rooted = Signal(NB)
        can_start = (_sel(state, br) == _BankState.WRITTEN) & ~root.busy & ~root.done
        m.d.comb += [root.start.eq(can_start), root.s2.eq(_sel(bank_s2, br))]
        with m.If(root.done):
            for i in range(NB):
                with m.If(br == i):
                    m.d.sync += bank_inv[i].eq(root.inv)
                    m.d.comb += bank_rooted[i].eq(1)
            m.d.sync += br.eq(_nxt(br, NB))
        for i in range(NB):
            with m.If(self.freed[i]):
                m.d.sync += state[i].eq(_BankState.FREE)
            with m.Elif(bank_rooted[i]):
                m.d.sync += state[i].eq(_BankState.ROOTED)
            with m.Elif(self.written[i]):
                m.d.sync += state[i].eq(_BankState.WRITTEN)
            with m.Elif(self.filling[i]):
                m.d.sync += state[i].eq(_BankState.FILLING)
        return m


class _PassC(wiring.Component):
    """Pass C: reads a ROOTED bank's d_s with each channel's gamma/beta and
    produces the output beats, freeing the bank after its last read. The one
    stage that sees back-pressure: a single enable holds its whole pipeline."""

    def __init__(self, geo):
        self.geo = geo
        super().__init__({
            "config": In(_Config(geo.L)),
            "banks": In(_BankInfo(geo)),
            "d_r": Out(geo.port(ReadPort, geo.d_shape, geo.NB * geo.W)),
            "gb_r": Out(geo.port(ReadPort, param_layout(geo.L), geo.W)),
            "freed": Out(geo.NB),
            "row_out": Out(1),
            "out": Out(stream.Signature(vector_layout(signed(8), geo.L, "y"))),
        })

    def elaborate(self, platform):
        m = Module()
        L, W, NB = self.geo.L, self.geo.W, self.geo.NB
        cfg, d_r, gb_r = self.config.cfg, self.d_r, self.gb_r
        out_valid = Signal()
        en = Signal()
        m.d.comb += [en.eq(~out_valid | self.out.ready), self.out.valid.eq(out_valid)]
        m.d.comb += self.row_out.eq(out_valid & self.out.ready & self.out.payload.last)
        bc = Signal(range(NB))
        jc = Signal(range(W))
        ec = Signal(range(W * L + 1))
        bc_base = Signal(range(NB * W))
        issue_c = (en & (_sel(self.banks.state, bc) == _BankState.ROOTED)
                   & self.config.loaded)
        end_c = ec + L >= cfg.n
        m.d.comb += [d_r.addr.eq(bc_base + jc), d_r.en.eq(en)]
        with m.If(issue_c):
            with m.If(end_c):
                for i in range(NB):
                    with m.If(bc == i):
                        m.d.comb += self.freed[i].eq(1)
                m.d.sync += [jc.eq(0), ec.eq(0), bc.eq(_nxt(bc, NB)),
                             bc_base.eq(Mux(bc == NB - 1, 0, bc_base + W))]
            with m.Else():
                m.d.sync += [jc.eq(jc + 1), ec.eq(ec + L)]

        # Stages, all held by `en`: c1 the d_s word read; c2 it registered with the
        # row's inv (block-RAM outputs end in a register); c3, c4 d_s * inv (two
        # partial products, then their add); c5 z, with gamma/beta (read at c3)
        # registered; c6, c7 z * G (the same split) beside B + the rounding half of
        # out_shift; c8 their sum; c9, c10 the shift (two stages), saturation, mask.
        # Only the valid bits reset; the rest is read under them (docs/architecture.md).
        cctx = data.StructLayout({"last": 1, "mask": L, "j": range(W)})
        c = [None] + [Signal(cctx, name=f"c{i}", reset_less=True)
                      for i in range(1, PASS_C_LATENCY)]
        cv = [None] + [Signal(name=f"c{i}_v") for i in range(1, PASS_C_LATENCY)]
        c1_inv = Signal(im.LN_RECIP_BITS, reset_less=True)
        c2_inv = Signal(im.LN_RECIP_BITS, reset_less=True)
        c2_d = Signal(self.geo.d_shape, reset_less=True)
        c5_z = [Signal(signed(Z_BITS), name=f"c5_z{l}", reset_less=True) for l in range(L)]
        c5_gb = Signal(param_layout(L), reset_less=True)
        c6_bh = [Signal(signed(im.LN_ACC_BITS + 1), name=f"c6_bh{l}", reset_less=True)
                 for l in range(L)]
        c7_bh = [Signal(signed(im.LN_ACC_BITS + 1), name=f"c7_bh{l}", reset_less=True)
                 for l in range(L)]
        c8_t = [Signal(signed(im.LN_ACC_BITS + 2), name=f"c8_t{l}", reset_less=True)
                for l in range(L)]
        m.d.comb += [gb_r.addr.eq(c[3].j), gb_r.en.eq(en)]
        with m.If(en):
            m.d.sync += [cv[1].eq(issue_c), c[1].last.eq(end_c), c[1].j.eq(jc),
                         c[1].mask.eq(Cat(ec + l < cfg.n for l in range(L))),
                         c1_inv.eq(_sel(self.banks.inv, bc)),
                         c2_d.eq(d_r.data), c2_inv.eq(c1_inv), c5_gb.eq(gb_r.data)]
            m.d.sync += [c[i + 1].eq(c[i]) for i in range(1, PASS_C_LATENCY - 1)]
            m.d.sync += [cv[i + 1].eq(cv[i]) for i in range(1, PASS_C_LATENCY - 1)]
        # inv < 2^24 as a signed operand, d_s the DSP's signed one
        inv_s = Cat(c2_inv, Const(0, 1)).as_signed()
        prods = [split_product(m, inv_s, c2_d[l], en=en, name=f"c4_{l}") for l in range(L)]
        zg = [split_product(m, c5_z[l], c5_gb.gamma[l], en=en, name=f"c7_{l}") for l in range(L)]
        y = self.out.payload.y
        with m.If(en):
            for l in range(L):
                # the product's half-add needs no stage of its own: Z_SHIFT is constant
                m.d.sync += [c5_z[l].eq(round_shift(prods[l], Z_SHIFT, len(prods[l]) + 1)),
                             c6_bh[l].eq(add_half(c5_gb.beta[l], cfg.out_shift,
                                                  im.LN_ACC_BITS + 1)),
                             c7_bh[l].eq(c6_bh[l]),
                             c8_t[l].eq(zg[l] + c7_bh[l])]
            m.d.sync += [out_valid.eq(cv[PASS_C_LATENCY - 1]),
                         self.out.payload.last.eq(c[PASS_C_LATENCY - 1].last)]
        for l in range(L):
            m.d.comb += y[l].eq(_shift_sat8(m, c8_t[l], cfg.out_shift, c[8].mask[l], en,
                                            f"c10_{l}"))
        return m


def _shift_sat8(m, x, sh, keep, en, name):
    """keep ? sat8(x >> sh) : 0 in two stages under `en` (x signed, sh < 64), as
    `intarith.shift_right_staged` with a saturation: the first shifts by sh's
    multiple of 8 (a lane past n is zeroed there), the second by the rest and
    saturates. The second stage's overflow test is split so that most of it
    does not wait for the fine shift: bits 14 and up of the coarse value are
    all sign copies (a reduction beside the shift), and bits 7 + fine .. 13
    are too (a test per fine amount, then a select), where a saturation of
    the shifted value would reduce after the shift mux (the unit's worst path
    on ECP5 once the stats' ε shift was split, 10.9 ns). Returns the output
    register."""
    x, sh = Value.cast(x), Value.cast(sh)
    # datapath: no reset (the caller's valid bit has one)
    coarse = Signal(x.shape(), name=f"{name}_c", reset_less=True)
    fine = Signal(3, name=f"{name}_f", reset_less=True)
    out = Signal(signed(8), name=f"{name}_s", reset_less=True)
    FINE = 7                                  # the largest fine shift
    top = FINE + 7                            # bits from here up: sign copies in range
    sign = coarse[-1]
    hi = coarse[top:]
    hi_ok = Mux(sign, hi.all(), ~hi.any())
    win_ok = Array(Cat(*(coarse[j] == sign for j in range(7 + f, top)), C(1, 1)).all()
                   for f in range(FINE + 1))[fine]
    low = Array(coarse[f:f + 8] for f in range(FINE + 1))[fine]
    sat = Mux(hi_ok & win_ok, low, Mux(sign, C(0x80, 8), C(0x7F, 8)))
    stmts = [coarse.eq(Mux(keep, x >> Cat(Const(0, 3), sh[3:]), 0)), fine.eq(sh[:3]),
             out.eq(sat)]
    if en is None:
        m.d.sync += stmts
    else:
        with m.If(en):
            m.d.sync += stmts
    return out


class LayerNormUnit(wiring.Component):
    """Streaming LayerNorm of rows of n <= `max_e` values, `lanes` per beat.

    Ports:
    - ``setup``: `setup_layout`, taken only when no row is in the unit;
    - ``param``: `param_layout(lanes)`, ceil(n/lanes) beats after each setup
      (rows may come before them: pass C waits for the last);
    - ``inp``: `vector_layout(signed(in_bits), lanes)`, ceil(n/lanes) beats per
      row, lane l of beat b = channel b*lanes + l (``last`` is not used: the
      row length is n); lanes past n in a row's last beat are ignored;
    - ``out``: `vector_layout(signed(8), lanes, "y")`, the same beats, ``last``
      on each row's final beat, lanes past n zero;
    - ``error``: the last setup had n = 0 or n > `max_e`; no rows are taken.

    Timing (`sim.cycles.units.layernorm_schedule` is the exact model): one
    beat per cycle on both sides in steady state for rows of at least 26
    beats (with 3 D banks); `row_latency(n)` cycles from a row's last input
    beat to its first output beat when the unit is otherwise idle.
    """

    def __init__(self, lanes=1, in_bits=16, max_e=1024, ds_banks=3):
        try:
            self.lanes = check_lanes(lanes)
            if not isinstance(in_bits, int) or not 4 <= in_bits <= 32:
                raise ValueError(f"in_bits must be an int in 4..32, got {in_bits!r}")
            if not isinstance(max_e, int) or not 1 <= max_e <= MAX_E_LIMIT:
                raise ValueError(f"max_e must be an int in 1..{MAX_E_LIMIT} (numerics §6.3 "
                                 f"needs N <= {MAX_E_LIMIT}), got {max_e!r}")
            if not isinstance(ds_banks, int) or not 2 <= ds_banks <= 8:
                raise ValueError(f"ds_banks must be an int in 2..8, got {ds_banks!r}")
        except ValueError:
            self._MustUse__silence = True   # never elaborated: no "unused" warning
            raise
        self.in_bits, self.max_e, self.ds_banks = in_bits, max_e, ds_banks
        #: memory words per row buffer (one beat per word)
        self.words = -(-max_e // lanes)
        super().__init__({
            "setup": In(stream.Signature(setup_layout())),
            "param": In(stream.Signature(param_layout(lanes))),
            "inp": In(stream.Signature(vector_layout(signed(in_bits), lanes))),
            "out": Out(stream.Signature(vector_layout(signed(8), lanes, "y"))),
            "error": Out(1),
        })

    def beats(self, n):
        """Beats per row of n values."""
        return -(-n // self.lanes)

    @property
    def latency(self):
        """`row_latency` of a full row (n = max_e): W + 45 cycles, W = ceil(max_e/lanes)."""
        return row_latency(self.max_e, self.lanes)

    def row_latency(self, n):
        """Cycles from a row's last input beat to its first output beat, unit otherwise idle."""
        return row_latency(n, self.lanes)

    def elaborate(self, platform):
        m = Module()
        L, R, W, NB = self.lanes, self.in_bits, self.words, self.ds_banks
        geo = _Geometry(L, R, W, NB, self.max_e)
        m.submodules.params = params = _Params(geo, self.max_e)
        m.submodules.pass_a = pass_a = _PassA(geo)
        m.submodules.pass_b = pass_b = _PassB(geo)
        m.submodules.banks = banks = _Banks(geo)
        m.submodules.pass_c = pass_c = _PassC(geo)
        m.submodules.gb = gb = Memory(shape=param_layout(L), depth=W, init=[])
        m.submodules.xbuf = xbuf = Memory(shape=geo.x_shape, depth=2 * W, init=[])
        m.submodules.dbuf = dbuf = Memory(shape=geo.d_shape, depth=NB * W, init=[])

        wiring.connect(m, wiring.flipped(self.setup), params.setup)
        wiring.connect(m, wiring.flipped(self.param), params.param)
        wiring.connect(m, wiring.flipped(self.inp), pass_a.inp)
        wiring.connect(m, pass_c.out, wiring.flipped(self.out))
        wiring.connect(m, params.gb_w, gb.write_port())
        wiring.connect(m, pass_c.gb_r, gb.read_port(transparent_for=()))
        wiring.connect(m, pass_a.x_w, xbuf.write_port())
        wiring.connect(m, pass_b.x_r, xbuf.read_port(transparent_for=()))
        wiring.connect(m, pass_b.d_w, dbuf.write_port())
        wiring.connect(m, pass_c.d_r, dbuf.read_port(transparent_for=()))
        wiring.connect(m, params.config, pass_a.config, pass_b.config, pass_c.config)
        wiring.connect(m, pass_a.rows, pass_b.rows)
        wiring.connect(m, banks.info, pass_b.banks, pass_c.banks)
        m.d.comb += [self.error.eq(params.error),
                     params.row_in.eq(pass_a.row_in), params.row_out.eq(pass_c.row_out),
                     banks.filling.eq(pass_b.filling), banks.written.eq(pass_b.written),
                     banks.s2.eq(pass_b.s2),
                     banks.freed.eq(pass_c.freed)]
        return m
