"""Output-stationary systolic array with shadow-register drain.

Dataflow: A elements enter row i from the left, W elements enter column j from
the top. Neither moves one PE per cycle: one register drives the multipliers
of a run of `span` PEs (A: columns of a row; W: rows of a column) and passes
the operand on to the next run a cycle later, so a beat crosses an 8x8 array
at once and its rows leave aligned, with no skew or deskew (a one-PE-per-cycle
skew cost every command's drain rows + cols - 2 cycles, most of a one-row
command's fixed cost). Every PE (i, j) accumulates A[i, k] * W[k, j] over
the K beats of a tile. A `valid` and a `last` flag
travel with the A operands, so each PE knows on its own which beat closes a
tile: on the last beat it moves its sum into a shadow register and restarts
from zero, so the next tile can follow with no bubble. The shadow registers of
a column then shift down and leave through the bottom PE, one per cycle,
while the column already accumulates the next tile.
"""
from amaranth.hdl import *
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

C0 = Const(0, 1)

__all__ = ["pe_logic", "ProcessingElement", "SystolicArray"]


def pe_logic(m, a_in, v_in, l_in, w_in, sh_in, shift, acc_width, name, pass_a=True,
             pass_w=True):
    """Emit one processing element into module `m`; return its outputs.

    Two internal stages: the product is registered (the DSP's output
    register), then added into the accumulator. The operands and flags are
    passed on through registers (the systolic shift). On a tile's last beat
    the sum goes to the shadow register and the accumulator restarts at zero;
    otherwise `shift` moves `sh_in` (the shadow above) into the shadow.

    Returns (a_out, v_out, l_out, w_out, sh, capture); `capture` is high in
    the cycle a finished sum enters the shadow register. Without `pass_a` the
    A operand and flags are not passed on (a_out, v_out, l_out are None),
    without `pass_w` the W operand (w_out is None): the neighbour multiplies
    the same register.

    This is a function rather than a submodule so that the array is one
    flat module: Amaranth's simulator runs a flat 8x8 array ~2.5x faster.
    """
    a_out = v_out = l_out = w_out = None
    if pass_a:
        a_out = Signal.like(a_in, name=f"{name}_a")
        v_out = Signal(name=f"{name}_v")
        l_out = Signal(name=f"{name}_l")
        m.d.sync += [a_out.eq(a_in), v_out.eq(v_in), l_out.eq(l_in)]
    if pass_w:
        w_out = Signal.like(w_in, name=f"{name}_w")
        m.d.sync += w_out.eq(w_in)

    prod = Signal(signed(len(a_in) + len(w_in)), name=f"{name}_prod")
    p_valid = Signal(name=f"{name}_pv")
    p_last = Signal(name=f"{name}_pl")
    m.d.sync += [prod.eq(a_in * w_in), p_valid.eq(v_in), p_last.eq(l_in)]

    acc = Signal(signed(acc_width), name=f"{name}_acc")
    sh = Signal(signed(acc_width), name=f"{name}_sh")
    total = (acc + prod)[:acc_width].as_signed()  # two's-complement wrap
    capture = p_valid & p_last
    with m.If(p_valid):
        m.d.sync += acc.eq(Mux(p_last, 0, total))
    with m.If(capture):
        m.d.sync += sh.eq(total)
    with m.Elif(shift):
        m.d.sync += sh.eq(sh_in)
    return a_out, v_out, l_out, w_out, sh, capture


class ProcessingElement(wiring.Component):
    """One multiply-accumulate cell with a shadow register (see `pe_logic`)."""

    def __init__(self, a_width, w_width, acc_width):
        self.acc_width = acc_width
        super().__init__({
            "a_in": In(signed(a_width)), "v_in": In(1), "l_in": In(1),
            "w_in": In(signed(w_width)),
            "a_out": Out(signed(a_width)), "v_out": Out(1), "l_out": Out(1),
            "w_out": Out(signed(w_width)),
            "sh_in": In(signed(acc_width)), "shift": In(1),
            "sh": Out(signed(acc_width)), "capture": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        outs = pe_logic(m, self.a_in, self.v_in, self.l_in, self.w_in, self.sh_in,
                        self.shift, self.acc_width, "pe")
        ports = (self.a_out, self.v_out, self.l_out, self.w_out, self.sh, self.capture)
        m.d.comb += [port.eq(val) for port, val in zip(ports, outs)]
        return m


class SystolicArray(wiring.Component):
    """rows x cols PE grid with input skew and output deskew.

    Interface (aligned vectors, no back-pressure: the feeder decides when to
    send bubbles):

    - ``a[i]``, ``w[j]``, ``valid``, ``last``: one beat, k-step of a tile, for
      all rows and columns at once; the array skews column j by j // `span`
      cycles and row i by r // `span` (r: its row within its group, below)
      internally: `span` PEs share one operand register, its fan-out (8 by
      default, a DSP input register each).
    - ``out_valid``, ``out[j]``: one finished row of a tile per cycle, rows in
      the order rows-1, rows-2, ..., 0, all columns aligned; the first row
      appears `latency` cycles after the tile's last beat was presented.

    Consecutive last beats must be at least `rows` cycles apart, so that a
    column's drain finishes before its next capture; the feeder guarantees it.

    With ``groups`` > 1 (and rows >= groups) the rows form `groups` groups of
    gr = ``rows // groups`` rows (the last group also takes the rows left
    over), each an array of its own fed at its top row: group 0 by ``w``,
    group g by ``wg[g-1]``, every row by its own ``a[i]``. Unfolded (``fold``
    low) the groups are one array: ``wg`` must then carry ``w`` (the feeder
    multiplexes before its register, so every multiplier still takes its
    operands straight from registers). Folded (``fold`` high, held for whole
    tiles) the groups take different W, and at the end of a tile the groups'
    sums of the same row r (row g*gr + r) are added as they drain: every
    group's shadows shift down at once, and the output is the sum of the
    groups' bottom shadows (rows g*gr + gr-1), so drain step s emits the
    total of row gr-1-s, rows gr-1 .. 0 in `gr` steps, and the drain stops
    there. The sum is a tree of adders with a register between levels (none
    for two groups): `fold_latency` counts them. A row shifts only while a
    value of its own group is on its way down, so folded tiles may follow
    each other sooner: their last beats `fold_spacing` cycles apart.
    """

    #: PEs (columns of a row, rows of a column in a group) whose multipliers one operand
    #: register drives
    SPAN = 8

    def __init__(self, rows, cols, a_width, w_width, acc_width, groups=1, span=SPAN):
        if span < 1:
            raise ValueError(f"span={span}: an operand register drives at least one PE")
        self.rows, self.cols, self.acc_width, self.span = rows, cols, acc_width, span
        self.groups = groups if rows >= groups > 1 else 1
        fold = ({"fold": In(1), "wg": In(signed(w_width)).array(self.groups - 1, cols)}
                if self.groups > 1 else {})
        super().__init__({
            "a": In(signed(a_width)).array(rows),
            "w": In(signed(w_width)).array(cols),
            "valid": In(1), "last": In(1),
            **fold,
            "out_valid": Out(1),
            "out": Out(signed(acc_width)).array(cols),
        })

    @property
    def bottom_skew(self):
        """Skew of the bottom row, which starts the drain: its row within the last
        group (all groups skew alike), in runs of `span`."""
        gr = self.rows // self.groups
        return (self.rows - 1 - (self.groups - 1) * gr) // self.span

    @property
    def latency(self):
        """Last beat presented -> first finished row on `out`: the bottom row's and
        the last column's skew, the product, capture and output registers."""
        return self.bottom_skew + (self.cols - 1) // self.span + 3

    @property
    def fold_levels(self):
        """Adder levels of the folded drain's sum of `groups` shadows."""
        return (self.groups - 1).bit_length()

    @property
    def fold_latency(self):
        """`latency` while folded: the sum of the groups' shadows adds a register
        between its adder levels."""
        return self.latency + max(self.fold_levels - 1, 0)

    @property
    def fold_spacing(self):
        """Smallest spacing of folded tiles' last beats: a row may capture once the
        row below it (or the sum) took its last value, `gr` drain steps, and the
        rows of a group capture up to the bottom row's skew apart. (With the
        last group's extra rows, and one cycle, to spare.)"""
        return self.rows - (self.groups - 1) * (self.rows // self.groups) + 1 + self.bottom_skew

    @staticmethod
    def _delay(m, sig, n, name):
        """`sig` delayed by n registers."""
        for i in range(n):
            nxt = Signal.like(sig, name=f"{name}_d{i}")
            m.d.sync += nxt.eq(sig)
            sig = nxt
        return sig

    def elaborate(self, platform):
        m = Module()
        R, C, G, S = self.rows, self.cols, self.groups, self.span
        gr = R // G
        fold = self.fold if G > 1 else C0

        def group(i):
            return min(i // gr, G - 1)

        # Built row by row, column by column: PE(i, j) takes A and flags from
        # PE(i, j-1) (within a run of `span` columns its input register, else
        # the register it passes A on in), W likewise from PE(i-1, j), and the
        # shadow of PE(i-1, j). The k-th beat reaches PE(i, j) at cycle
        # k + (i - g*gr) // span + j // span (row i of group g).
        a_row = [self._delay(m, self.a[i], (i - group(i) * gr) // S, f"a{i}") for i in range(R)]
        v_row = [self._delay(m, self.valid, (i - group(i) * gr) // S, f"v{i}") for i in range(R)]
        l_row = [self._delay(m, self.last, (i - group(i) * gr) // S, f"l{i}") for i in range(R)]
        # each group's W, skewed by column runs
        w_top = [[self._delay(m, self.w[j] if g == 0 else self.wg[g - 1][j], j // S,
                              f"w{g}_{j}") for j in range(C)] for g in range(G)]
        w_col = [None] * C
        # the bottom shadow of every group, per column
        group_bottom = [[None] * G for _ in range(C)]

        # Per-column drain controller: started by the bottom PE's capture, it
        # emits the column's shadows bottom-first for `rows` cycles (folded:
        # `gr`). Row i only shifts while values from above it are still on
        # their way out (step < i), so a row may capture its next tile as early
        # as `rows` cycles after the previous capture. Folded, the groups'
        # shadows shift across the group boundaries too, but in `gr` steps no
        # value reaches the next group's bottom.
        active = [Signal(name=f"drain{j}_active") for j in range(C)]
        # whether the draining tile was folded, latched with its capture: `fold`
        # may change for the next command while the last rows drain
        dfold = [Signal(name=f"drain{j}_fold") for j in range(C)] if G > 1 else [C0] * C
        step = [Signal(range(R), name=f"drain{j}_step") for j in range(C)]
        sh_col = [None] * C
        capture_bottom = [None] * C
        for i in range(R):
            for j in range(C):
                local = i - group(i) * gr
                # folded, a row takes only values of its own group
                shift = (active[j] & (step[j] < (i if local == i else Mux(dfold[j], local, i)))
                         if i else C0)
                sh_in = sh_col[j] if i else Const(0, signed(self.acc_width))
                if local == 0:
                    w_col[j] = w_top[group(i)][j]
                # the last PE of a run registers its operand for the next run
                a_out, v_out, l_out, w_out, sh, cap = pe_logic(
                    m, a_row[i], v_row[i], l_row[i], w_col[j], sh_in, shift,
                    self.acc_width, f"pe{i}_{j}",
                    pass_a=j % S == S - 1 and j + 1 < C,
                    pass_w=local % S == S - 1 and i + 1 < R and group(i + 1) == group(i))
                if a_out is not None:
                    a_row[i], v_row[i], l_row[i] = a_out, v_out, l_out
                if w_out is not None:
                    w_col[j] = w_out
                sh_col[j] = sh
                capture_bottom[j] = cap
                if G > 1 and i % gr == gr - 1 and i // gr < G:
                    group_bottom[j][i // gr] = sh
        for j in range(C):
            with m.If(capture_bottom[j]):
                m.d.sync += [active[j].eq(1), step[j].eq(0)]
                if G > 1:
                    m.d.sync += dfold[j].eq(fold)
            with m.Elif(active[j]):
                m.d.sync += step[j].eq(step[j] + 1)
                with m.If(step[j] == Mux(dfold[j], gr - 1, R - 1)):
                    m.d.sync += active[j].eq(0)
        col_valid, col_data = active, sh_col
        if G > 1:
            # folded: the groups' bottom shadows summed (wrapping like the
            # accumulators), a register after every adder level but the last
            col_valid, col_data = [], []
            for j in range(C):
                level, v = group_bottom[j], active[j]
                for lv in range(self.fold_levels):
                    if lv:
                        regs = [Signal(signed(self.acc_width), name=f"fold{j}_{lv}_{i}")
                                for i in range(len(level))]
                        m.d.sync += [r.eq(x) for r, x in zip(regs, level)]
                        v_r = Signal(name=f"fold{j}_{lv}_v")
                        m.d.sync += v_r.eq(v)
                        level, v = regs, v_r
                    level = [(level[i] + level[i + 1])[:self.acc_width].as_signed()
                             if i + 1 < len(level) else level[i]
                             for i in range(0, len(level), 2)]
                col_valid.append(Mux(dfold[j], v, active[j]))
                col_data.append(Mux(dfold[j], level[0], sh_col[j]))

        # Deskew: column j runs j // span cycles behind column 0.
        out_valid = self._delay(m, col_valid[C - 1], 0, "ov")
        m.d.sync += self.out_valid.eq(out_valid)
        for j in range(C):
            m.d.sync += self.out[j].eq(self._delay(m, col_data[j], (C - 1) // S - j // S,
                                                   f"o{j}"))
        return m
