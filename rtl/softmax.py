"""The online-softmax unit of the attention engine (numerics §4.2 - §4.4).

It turns raw attention scores S (the array's int32 output for one key tile)
into unsigned 8-bit probabilities P and the per-row rescale shift `delta`,
exactly as `model.intmodel.softmax_online` does, one tile row at a time,
`lanes` scores per cycle:

    t      = sat24(round_shift(S * score_mult, score_shift))     (§4.2)
    m_tile = ceil(max over visible keys of t / 2^F)
    M_new  = max(M, m_tile)  (m_tile for the row's first tile)
    delta  = min(M_new - M, 32)  (0 for the first tile)
    p      = round_shift(exp2_table[d mod 2^F], min(d >> F, 9)),  d = M_new*2^F - t
    L      = round_shift(L, delta) + sum(p)

A row needs its maximum before any of its probabilities, so every row is
handled in two passes that overlap across rows (double-buffered row store):

- front (pass 1): scale and saturate the scores, apply the causal mask,
  write t and the visibility bit into one half of the row store and reduce
  the row maximum;
- back (pass 2): read the other half, compute p through the exp2 ROM, sum L.

The per-row state (M, "seen", L) of the `rows` rows of a query block lives
in small memories indexed by the row number, so rows may come in any order
(the array drains bottom row first). State is reset by the row's first key
tile (k0 == 0): tiles are aligned to key 0, which every query sees.
Both passes are pipelines with one global enable each, so a stall on either
stream freezes them in place and no beat is lost or duplicated.
"""
from amaranth.hdl import *
from amaranth.lib import wiring, stream, data
from amaranth.lib.memory import Memory, ReadPort
from amaranth.lib.wiring import In, Out
from amaranth.utils import ceil_log2

from gpt2accel.model import intmodel as im
from gpt2accel.model import quant

from .attention_config import AttentionConfig
from .intarith import (add_half, max_tree, round_shift_add, saturate, shift_right_staged,
                       split_product, sum_tree)

__all__ = ["SoftmaxUnit", "score_layout", "prob_layout"]


def score_layout(cfg: AttentionConfig):
    """One input beat: `lanes` raw scores of one tile row, plus the row's context.

    Every row is exactly `cfg.beats_per_row` beats; lane l of beat b holds key
    ``k0 + b*lanes + l``. The context fields must be equal on all beats of a row.

    - ``row``: the query's row within its block (selects the row state);
    - ``qpos``: the query's absolute position; key j is visible iff j <= qpos;
    - ``k0``: first key of the tile (a multiple of `tile`); 0 starts a new row;
    - ``n_keys``: keys present in this tile (lanes at or past it are ignored);
    - ``mult``, ``shift``: the score requantiser (§4.2).
    """
    e = cfg.engine
    return data.StructLayout({
        "s": data.ArrayLayout(signed(e.acc_bits), cfg.lanes),
        "row": range(cfg.rows),
        "qpos": unsigned(cfg.pos_bits),
        "k0": unsigned(cfg.pos_bits),
        "n_keys": range(cfg.tile + 1),
        "mult": unsigned(e.mult_bits),
        "shift": range(e.max_shift + 1),
    })


def prob_layout(cfg: AttentionConfig):
    """One output beat: `lanes` probabilities of one tile row.

    ``delta`` (the shift to apply to the row's O and L before adding this
    tile) and ``m`` (the running max after this tile) are valid on every beat;
    ``l_sum`` (the row's L after this tile) on the beat with ``last`` set.
    Masked keys have p = 0.
    """
    return data.StructLayout({
        "p": data.ArrayLayout(unsigned(8), cfg.lanes),
        "row": range(cfg.rows),
        "last": 1,
        "delta": range(33),
        "m": signed(cfg.m_bits),
        "l_sum": unsigned(32),
    })


class SoftmaxUnit(wiring.Component):
    """Scores in, probabilities out; see the module docstring.

    Ports:
    - ``scores``: `score_layout` stream, one tile row every `beats_per_row` beats;
    - ``probs``: `prob_layout` stream, the same rows in the same order.

    Throughput: one beat per cycle in steady state on both sides.
    Latency: `latency` cycles from accepting a row's last score beat to its
    first probability beat being valid (no stalls).

    `table` is the exp2 ROM content (default `quant.exp2_table(frac_bits)`).

    The two passes are components of their own (`_FrontPass`, `_BackPass`)
    joined by the row store hand-off (`_rows`), the one place they meet.
    """

    #: front: F0 (the beat), P1, P2 (product), Fa (+ rounding half), Fc (coarse shift),
    #: F2 (t, row store write); back: S0 issue, S1, S2, S3 = output
    latency = 10

    def __init__(self, cfg: AttentionConfig, table=None):
        self.cfg = cfg
        if table is None:
            table = quant.exp2_table(cfg.frac_bits)
        table = [int(x) for x in table]
        if len(table) != 1 << cfg.frac_bits or not all(0 <= x <= 255 for x in table):
            self._MustUse__silence = True  # never elaborated: no "unused" warning
            raise ValueError(f"exp2 table must hold 2^{cfg.frac_bits} values in 0..255")
        self.table = table
        super().__init__({
            "scores": In(stream.Signature(score_layout(cfg))),
            "probs": Out(stream.Signature(prob_layout(cfg))),
        })

    def elaborate(self, platform):
        m = Module()
        m.submodules.front = front = _FrontPass(self.cfg)
        m.submodules.back = back = _BackPass(self.cfg, self.table)
        wiring.connect(m, wiring.flipped(self.scores), front.scores)
        wiring.connect(m, front.rows, back.rows)
        wiring.connect(m, back.probs, wiring.flipped(self.probs))
        return m


def _elem():
    """A row store lane: the scaled score t and whether its key is visible."""
    return data.StructLayout({"t": signed(im.SCORE_BITS), "vis": 1})


def _desc(cfg: AttentionConfig):
    """What the front pass found about the row in a row store half. ``t_max`` is the
    largest visible t; the back pass rounds it up to m_tile as it takes the half (the
    front pass's last beat already has two compares in its cycle)."""
    return data.StructLayout({"row": range(cfg.rows), "t_max": signed(im.SCORE_BITS),
                              "vis": 1, "first": 1})


def _rows(cfg: AttentionConfig):
    """The front pass's side of the double-buffered row store. ``full[h]``: half h
    holds a complete row the back pass has not finished reading, described by
    ``desc[h]``; the back pass clears it (``clr``) and reads the store
    through ``store``."""
    BPR = cfg.beats_per_row
    return wiring.Signature({
        "full": Out(2), "desc": Out(data.ArrayLayout(_desc(cfg), 2)), "clr": In(2),
        "store": Out(ReadPort.Signature(addr_width=ceil_log2(2 * BPR),
                                        shape=data.ArrayLayout(_elem(), cfg.lanes))),
    })


class _FrontPass(wiring.Component):
    """Pass 1: scale and saturate the scores, apply the causal mask, write t and
    the visibility bit into the free half of the row store and reduce the row
    maximum. It owns the row store, since only a half it has released may be
    written (``full``)."""

    def __init__(self, cfg: AttentionConfig):
        self.cfg = cfg
        super().__init__({"scores": In(stream.Signature(score_layout(cfg))),
                          "rows": Out(_rows(cfg))})

    def elaborate(self, platform):
        m = Module()
        c, e = self.cfg, self.cfg.engine
        L, F, BPR = c.lanes, c.frac_bits, c.beats_per_row
        SB = im.SCORE_BITS
        t_lo = -(1 << (SB - 1))  # identity of the max: below every visible t
        prod_w = e.acc_bits + e.mult_bits          # signed S x unsigned mult

        # Row store: two halves of BPR words, each word = lanes x (t, visible).
        m.submodules.store = store = Memory(
            shape=data.ArrayLayout(_elem(), L), depth=2 * BPR, init=[])
        st_w = store.write_port()
        # The back pass reads a word the cycle before it takes it: after a half's
        # last write at the earliest, which with one beat a row is that word's own
        # write (so the read sees it through transparency).
        wiring.connect(m, wiring.flipped(self.rows.store),
                       store.read_port(transparent_for=(st_w,) if BPR == 1 else ()))
        full, desc = self.rows.full, self.rows.desc
        set_full = Signal(2)
        m.d.sync += full.eq((full | set_full) & ~self.rows.clr)

        # F2 may only write into a half the back pass has released.
        f2_valid = Signal()
        h_w = Signal()
        en_f = Signal()
        m.d.comb += en_f.eq(~(f2_valid & full.bit_select(h_w, 1)))
        m.d.comb += self.scores.ready.eq(en_f)

        inb = self.scores.payload
        in_beat = Signal(range(BPR))
        take = self.scores.valid & en_f
        with m.If(take):
            m.d.sync += in_beat.eq(Mux(in_beat == BPR - 1, 0, in_beat + 1))

        # F0: the beat registered (the S buffer's read data reaches the multipliers
        # through the feeder's word select: no logic before a DSP), with each lane's
        # visibility. P1, P2: S * mult (`split_product`, two DSPs per lane).
        # Fa: + the rounding half of the shift. Fc, F2: shift in two steps, saturate
        # to t (24 bits); F2 writes the row store. The context rides along, its valid
        # bit beside it: only the valid bits are reset, the data is read under them.
        f0_s = [Signal(signed(e.acc_bits), name=f"f0_s{l}", reset_less=True) for l in range(L)]
        f0_mult = Signal.like(inb.mult, reset_less=True)
        ctx = data.StructLayout({"vis": L, "shift": range(e.max_shift + 1),
                                 "beat": range(BPR), "row": range(c.rows), "first": 1})
        f0 = Signal(ctx, reset_less=True)
        f0_v = Signal()
        with m.If(en_f):
            m.d.sync += [f0_v.eq(self.scores.valid), f0.shift.eq(inb.shift),
                         f0.beat.eq(in_beat), f0.row.eq(inb.row), f0.first.eq(inb.k0 == 0),
                         f0_mult.eq(inb.mult)]
            for l in range(L):
                col = in_beat * L + l
                m.d.sync += [f0_s[l].eq(inb.s[l]),
                             f0.vis[l].eq((col < inb.n_keys) & (inb.k0 + col <= inb.qpos))]
        prods = [split_product(m, f0_s[l], f0_mult, en=en_f, name=f"p{l}", reset_less=True)
                 for l in range(L)]
        stage, stage_v = f0, f0_v
        for name in ("p1", "p2"):
            nxt, nxt_v = Signal(ctx, name=name, reset_less=True), Signal(name=f"{name}_v")
            with m.If(en_f):
                m.d.sync += [nxt.eq(stage), nxt_v.eq(stage_v)]
            stage, stage_v = nxt, nxt_v
        fa, fa_v = Signal(ctx, reset_less=True), Signal()
        fa_t = [Signal(signed(prod_w + 1), name=f"fa_t{l}", reset_less=True) for l in range(L)]
        with m.If(en_f):
            m.d.sync += [fa.eq(stage), fa_v.eq(stage_v)]
            for l in range(L):
                m.d.sync += fa_t[l].eq(add_half(prods[l], stage.shift, prod_w + 1))
        f2_t = [shift_right_staged(m, fa_t[l], fa.shift, en=en_f, name=f"f2_t{l}",
                                   finish=lambda v: saturate(v, SB), reset_less=True)
                for l in range(L)]
        fc, fc_v = Signal(ctx, reset_less=True), Signal()
        f2 = Signal(ctx, reset_less=True)
        with m.If(en_f):
            m.d.sync += [fc.eq(fa), fc_v.eq(fa_v), f2.eq(fc), f2_valid.eq(fc_v)]
        f2_vis, f2_beat, f2_row, f2_first = f2.vis, f2.beat, f2.row, f2.first

        # F2 also writes the row store and reduces the row maximum.
        m.d.comb += [st_w.addr.eq(f2_beat + Mux(h_w, BPR, 0)), st_w.en.eq(en_f & f2_valid)]
        for l in range(L):
            m.d.comb += [st_w.data[l].t.eq(f2_t[l]), st_w.data[l].vis.eq(f2_vis[l])]
        beat_max = max_tree([Mux(f2_vis[l], f2_t[l], t_lo) for l in range(L)])
        # run_max keeps its reset: without it the softmax alone routed at 70.27 MHz out
        # of context, its worst path ending in run_max; with it 79.24 MHz
        run_max = Signal(signed(SB))
        run_vis = Signal()
        row_max = Mux(f2_beat == 0, beat_max, Mux(run_max > beat_max, run_max, beat_max))
        row_vis = f2_vis.any() | ((f2_beat != 0) & run_vis)
        with m.If(en_f & f2_valid):
            m.d.sync += [run_max.eq(row_max), run_vis.eq(row_vis)]
            with m.If(f2_beat == BPR - 1):
                for h in range(2):
                    with m.If(h_w == h):
                        m.d.sync += [desc[h].row.eq(f2_row), desc[h].t_max.eq(row_max),
                                     desc[h].vis.eq(row_vis), desc[h].first.eq(f2_first)]
                m.d.comb += set_full.eq(Mux(h_w, 0b10, 0b01))
                m.d.sync += h_w.eq(~h_w)
        return m


class _BackPass(wiring.Component):
    """Pass 2: read a full half of the row store, compute p through the exp2 ROM
    and sum L. The per-row state (M, "seen", L) of the block's rows lives here,
    indexed by the row number, so rows may come in any order."""

    def __init__(self, cfg: AttentionConfig, table):
        self.cfg, self.table = cfg, table
        super().__init__({"rows": In(_rows(cfg)),
                          "probs": Out(stream.Signature(prob_layout(cfg)))})

    def elaborate(self, platform):
        m = Module()
        c = self.cfg
        L, F, R, BPR = c.lanes, c.frac_bits, c.rows, c.beats_per_row
        SB = im.SCORE_BITS
        st_r, full, desc = self.rows.store, self.rows.full, self.rows.desc
        clr_full = self.rows.clr
        desc_layout = _desc(c)
        # Per-row running max M and whether the row has seen a key yet.
        mstate = data.StructLayout({"m": signed(c.m_bits), "seen": 1})
        m.submodules.mmem = mmem = Memory(shape=mstate, depth=R, init=[])
        mm_w = mmem.write_port()
        mm_r = mmem.read_port(transparent_for=(mm_w,))
        # Per-row running sum L.
        m.submodules.lmem = lmem = Memory(shape=unsigned(32), depth=R, init=[])
        lm_w = lmem.write_port()
        lm_r = lmem.read_port(transparent_for=(lm_w,))
        # exp2 ROM, one read port per lane.
        m.submodules.rom = rom = Memory(shape=unsigned(8), depth=1 << F, init=self.table)
        rom_r = [rom.read_port() for _ in range(L)]

        out_valid = Signal()
        en_b = Signal()
        m.d.comb += [en_b.eq(~out_valid | self.probs.ready), self.probs.valid.eq(out_valid)]

        # S0: the row store word of the beat (read the cycle before) and, on a row's
        # first beat, the M read. The store is addressed with the beat S0 holds next
        # cycle, so its block-RAM output is S0's and S1 takes it into a register: S1's
        # subtractions start at a flip-flop, not at the RAM's slow output, and no
        # stage is added. A half's words are all written before it is full (one beat
        # a row: in the same cycle, the read port is then transparent).
        h_r = Signal()
        rd_beat = Signal(range(BPR))
        s0_valid = full.bit_select(h_r, 1)
        s0_desc = Signal(desc_layout)
        m.d.comb += s0_desc.eq(Mux(h_r, desc[1], desc[0]))
        s0_addr = Signal(range(2 * BPR))            # rd_beat + BPR h_r
        rd_next = Signal(range(2 * BPR))
        m.d.comb += rd_next.eq(Mux(en_b & s0_valid,
                                   Mux(s0_addr == 2 * BPR - 1, 0, s0_addr + 1), s0_addr))
        m.d.sync += s0_addr.eq(rd_next)
        m.d.comb += [st_r.addr.eq(rd_next), st_r.en.eq(1)]
        m.d.comb += [mm_r.addr.eq(s0_desc.row), mm_r.en.eq(en_b & s0_valid & (rd_beat == 0))]
        with m.If(en_b & s0_valid):
            m.d.sync += rd_beat.eq(Mux(rd_beat == BPR - 1, 0, rd_beat + 1))
            with m.If(rd_beat == BPR - 1):
                m.d.comb += clr_full.eq(Mux(h_r, 0b10, 0b01))
                m.d.sync += h_r.eq(~h_r)

        # S1: row store word and row state available: M_new, delta, exp2 argument.
        s1_valid = Signal()
        s1_desc = Signal(desc_layout)
        s1_last = Signal()
        s1_word = Signal.like(st_r.data, reset_less=True)   # the row store word
        # m_tile = ceil(t_max / 2^F), the tile max rounded up to a whole power of two
        s1_m_tile = Signal(signed(c.m_bits))
        with m.If(en_b):
            m.d.sync += [s1_valid.eq(s0_valid), s1_desc.eq(s0_desc),
                         s1_last.eq(rd_beat == BPR - 1), s1_word.eq(st_r.data),
                         s1_m_tile.eq((s0_desc.t_max + ((1 << F) - 1)) >> F)]
        # M_new is M or m_tile, so everything after it is computed for both candidates
        # from one subtraction each and chosen by the sign of m_old - m_tile (a
        # compare, then a subtract and a compare of its result, were three carry
        # chains in series behind the M memory's read).
        seen = mm_r.data.seen & ~s1_desc.first
        m_old = mm_r.data.m
        below = Signal(signed(c.m_bits + 1))       # m_old - m_tile: < 0 iff M grows
        grow = Signal(signed(c.m_bits + 1))        # m_tile - m_old: delta when it grows
        m.d.comb += [below.eq(m_old - s1_m_tile), grow.eq(s1_m_tile - m_old)]
        up = seen & s1_desc.vis & below[-1]
        take_tile = s1_desc.vis & (~seen | below[-1])
        m_new = Signal(signed(c.m_bits))
        m.d.comb += m_new.eq(Mux(take_tile, s1_m_tile, m_old))
        # min(grow, 32) for grow >= 1: from its bits, not another compare
        big = grow[6:].any() | (grow[5] & grow[:5].any())
        delta = Mux(up, Mux(big, 32, grow[:6]), 0)
        # Writing on every beat of the row is idempotent and lets the next row
        # with the same index (R = 1) read it back through transparency.
        m.d.comb += [mm_w.addr.eq(s1_desc.row), mm_w.en.eq(en_b & s1_valid),
                     mm_w.data.m.eq(m_new), mm_w.data.seen.eq(seen | s1_desc.vis)]
        s2_valid = Signal()
        s2_row = Signal.like(s1_desc.row)
        s2_last = Signal()
        s2_first_beat = Signal()
        s2_first = Signal()
        s2_delta = Signal(range(33))
        s2_m = Signal(signed(c.m_bits))
        s2_vis = Signal(L)
        s2_whole = [Signal(range(im.EXP2_ZERO_SHIFT + 1), name=f"s2_whole{l}") for l in range(L)]
        s1_first_beat = Signal()
        with m.If(en_b):
            m.d.sync += s1_first_beat.eq(rd_beat == 0)
        with m.If(en_b):
            m.d.sync += [s2_valid.eq(s1_valid), s2_row.eq(s1_desc.row), s2_last.eq(s1_last),
                         s2_first_beat.eq(s1_first_beat), s2_first.eq(s1_desc.first),
                         s2_delta.eq(delta), s2_m.eq(m_new)]
        ZS = im.EXP2_ZERO_SHIFT
        assert ZS < 16

        def whole_clipped(d):
            # min(d >> F, ZS) (a negative d is a masked key's: any value does) from the
            # bits of d >> F, not another compare
            w = d >> F
            over = ~w[-1] & (w[4:].any() | (w[:4] > ZS))
            return Mux(over, ZS, w[:4])

        for l in range(L):
            t = s1_word[l].t
            d_tile = Signal(signed(SB + 2), name=f"s1_dt{l}")
            d_old = Signal(signed(SB + 2), name=f"s1_do{l}")
            m.d.comb += [d_tile.eq((s1_m_tile.as_signed() << F) - t),
                         d_old.eq((m_old.as_signed() << F) - t)]
            # d mod 2^F is -t mod 2^F whatever M_new is
            m.d.comb += [rom_r[l].addr.eq(d_tile[:F]), rom_r[l].en.eq(en_b)]
            with m.If(en_b):
                m.d.sync += [s2_whole[l].eq(Mux(take_tile, whole_clipped(d_tile),
                                                whole_clipped(d_old))),
                             s2_vis[l].eq(s1_word[l].vis)]

        # S2: p = round_shift(table entry, whole), masked; sum of the beat.
        p2 = []
        for l in range(L):
            half = (Const(1, 10) << s2_whole[l]) >> 1
            p = (rom_r[l].data + half) >> s2_whole[l]
            p2.append(Mux(s2_vis[l], p[:8], 0))
        beat_sum = sum_tree(p2)
        acc = Signal(32)
        acc_total = Mux(s2_first_beat, 0, acc) + beat_sum
        with m.If(en_b & s2_valid):
            m.d.sync += acc.eq(acc_total)
        # L is read only for the row's last beat, as late as possible, so that
        # a same-index row just ahead has already written (or is writing) it.
        m.d.comb += [lm_r.addr.eq(s2_row), lm_r.en.eq(en_b & s2_valid & s2_last)]
        s3_psum = Signal(32)
        s3_first = Signal()
        out = self.probs.payload
        with m.If(en_b):
            m.d.sync += [out_valid.eq(s2_valid), out.row.eq(s2_row), out.last.eq(s2_last),
                         out.delta.eq(s2_delta), out.m.eq(s2_m),
                         s3_psum.eq(acc_total), s3_first.eq(s2_first)]
            for l in range(L):
                m.d.sync += out.p[l].eq(p2[l])

        # S3: L = round_shift(L_old, delta) + sum(p), written when the beat leaves.
        l_old = Mux(s3_first, 0, lm_r.data)
        l_new = Signal(32)
        m.d.comb += l_new.eq(round_shift_add(l_old, out.delta, s3_psum, 32))
        m.d.comb += [out.l_sum.eq(l_new),
                     lm_w.addr.eq(out.row), lm_w.data.eq(l_new),
                     lm_w.en.eq(out_valid & out.last & self.probs.ready)]
        return m
