"""Output-stationary systolic array with shadow-register drain.

Dataflow: A elements enter row i from the left, W elements enter column j from
the top; both move one PE per cycle. Every PE (i, j) accumulates
A[i, k] * W[k, j] over the K beats of a tile. A `valid` and a `last` flag
travel with the A operands, so each PE knows on its own which beat closes a
tile: on the last beat it moves its sum into a shadow register and restarts
from zero, so the next tile can follow with no bubble. The shadow registers of
a column then shift down and leave through the bottom PE, one per cycle,
while the column already accumulates the next tile.
"""
from amaranth.hdl import *
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

__all__ = ["ProcessingElement", "SystolicArray"]


class ProcessingElement(wiring.Component):
    """One multiply-accumulate cell with a shadow register.

    Two internal stages: the product is registered (maps onto the DSP's
    output register), then added into the accumulator. The operand and flag
    outputs are registered copies of the inputs (the systolic shift).

    `capture` is high in the cycle the last product of a tile is summed into
    the shadow register; the column controller watches it in the bottom row.
    `shift` moves `sh_in` (the shadow of the PE above) into the shadow register.
    """

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
        m.d.sync += [self.a_out.eq(self.a_in), self.v_out.eq(self.v_in),
                     self.l_out.eq(self.l_in), self.w_out.eq(self.w_in)]

        prod = Signal(signed(len(self.a_in) + len(self.w_in)))
        p_valid = Signal()
        p_last = Signal()
        m.d.sync += [prod.eq(self.a_in * self.w_in), p_valid.eq(self.v_in), p_last.eq(self.l_in)]

        acc = Signal(signed(self.acc_width))
        total = Signal(signed(self.acc_width))
        m.d.comb += [total.eq(acc + prod),  # truncating assignment = two's-complement wrap
                     self.capture.eq(p_valid & p_last)]
        with m.If(p_valid):
            m.d.sync += acc.eq(Mux(p_last, 0, total))
        with m.If(self.capture):
            m.d.sync += self.sh.eq(total)
        with m.Elif(self.shift):
            m.d.sync += self.sh.eq(self.sh_in)
        return m


class SystolicArray(wiring.Component):
    """rows x cols PE grid with input skew and output deskew.

    Interface (aligned vectors, no back-pressure: the feeder decides when to
    send bubbles):

    - ``a[i]``, ``w[j]``, ``valid``, ``last``: one beat, k-step of a tile, for
      all rows and columns at once; the array skews row i by i cycles and
      column j by j cycles internally.
    - ``out_valid``, ``out[j]``: one finished row of a tile per cycle, rows in
      the order rows-1, rows-2, ..., 0, all columns aligned; the first row
      appears `latency` cycles after the tile's last beat was presented.

    Consecutive last beats must be at least `rows` cycles apart, so that a
    column's drain finishes before its next capture; the feeder guarantees it.
    """

    def __init__(self, rows, cols, a_width, w_width, acc_width):
        self.rows, self.cols, self.acc_width = rows, cols, acc_width
        super().__init__({
            "a": In(signed(a_width)).array(rows),
            "w": In(signed(w_width)).array(cols),
            "valid": In(1), "last": In(1),
            "out_valid": Out(1),
            "out": Out(signed(acc_width)).array(cols),
        })

    @property
    def latency(self):
        """Last beat presented -> first finished row on `out`."""
        return self.rows + self.cols + 1

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
        R, C = self.rows, self.cols
        pes = [[ProcessingElement(len(self.a[0]), len(self.w[0]), self.acc_width)
                for _ in range(C)] for _ in range(R)]
        for i in range(R):
            for j in range(C):
                m.submodules[f"pe_{i}_{j}"] = pes[i][j]

        # Input skew: the k-th beat reaches PE(i, j) at cycle k + i + j.
        for i in range(R):
            pe = pes[i][0]
            m.d.comb += [pe.a_in.eq(self._delay(m, self.a[i], i, f"a{i}")),
                         pe.v_in.eq(self._delay(m, self.valid, i, f"v{i}")),
                         pe.l_in.eq(self._delay(m, self.last, i, f"l{i}"))]
            for j in range(1, C):
                m.d.comb += [pes[i][j].a_in.eq(pes[i][j - 1].a_out),
                             pes[i][j].v_in.eq(pes[i][j - 1].v_out),
                             pes[i][j].l_in.eq(pes[i][j - 1].l_out)]
        for j in range(C):
            m.d.comb += pes[0][j].w_in.eq(self._delay(m, self.w[j], j, f"w{j}"))
            for i in range(1, R):
                m.d.comb += pes[i][j].w_in.eq(pes[i - 1][j].w_out)

        # Per-column drain controller: started by the bottom PE's capture, it
        # emits the column's shadows bottom-first for `rows` cycles. Row i only
        # shifts while values from above it are still on their way out
        # (step < i), so a row may capture its next tile as early as `rows`
        # cycles after the previous capture.
        col_valid, col_data = [], []
        for j in range(C):
            active = Signal(name=f"drain{j}_active")
            step = Signal(range(R), name=f"drain{j}_step")
            with m.If(pes[R - 1][j].capture):
                m.d.sync += [active.eq(1), step.eq(0)]
            with m.Elif(active):
                m.d.sync += step.eq(step + 1)
                with m.If(step == R - 1):
                    m.d.sync += active.eq(0)
            for i in range(R):
                m.d.comb += pes[i][j].shift.eq(active & (step < i) if i else 0)
                if i:
                    m.d.comb += pes[i][j].sh_in.eq(pes[i - 1][j].sh)
            col_valid.append(active)
            col_data.append(pes[R - 1][j].sh)

        # Deskew: column j runs j cycles behind column 0.
        out_valid = self._delay(m, col_valid[C - 1], 0, "ov")
        m.d.sync += self.out_valid.eq(out_valid)
        for j in range(C):
            m.d.sync += self.out[j].eq(self._delay(m, col_data[j], C - 1 - j, f"o{j}"))
        return m
