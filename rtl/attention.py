"""The attention engine: causal multi-head attention on the shared matmul engine.

One command computes `attention(qkv)` for all heads of one layer, prefill
(Tq queries at positions offset .. offset+Tq-1) or decode (Tq = 1) against
K/V caches of Tk = offset + Tq keys in memory, bit-exact with
`intmodel.attention_head` per head. Per head, per block of `block_rows`
queries (one or more array row blocks: one matmul command covers them all),
per key tile j (only tiles holding a key visible to the block):

1. S_j = Q_blk @ K_jᵀ     matmul command (int8, raw int32). Its output writes
                          are taken on chip into S half j%2, not sent to memory;
2. softmax of tile j:     S half j%2 -> `SoftmaxUnit` -> P rows (uint8) -> P
                          half j%2 in memory; per row delta and L -> row info half j%2;
3. PV_j = P_j @ V_j       matmul command (uint8 A, raw int32). Its output writes
                          update the on-chip accumulator as they come:
                          O[r] = round_shift(O[r], delta[r]) + PV[r];
4. after the last tile:   normalise, O rows and L -> `Normaliser` -> int8
                          output row segments in memory.

The matmul engine is used unmodified through its command port and keeps the
read channel of the memory port; the controller only writes (P rows and
outputs). The engine runs S_0, S_1, PV_0, S_2, PV_1, ...: the softmax of tile
j overlaps S_{j+1}, so while the softmax is shorter than a matmul command
the engine never waits; a block's normalisation overlaps the first S
commands of the next block, or of the next head. On diagonal tiles the S
and PV commands skip the whole array row blocks whose queries all precede
the tile's first key, and S stops at the block's last query, so large
blocks waste few MACs on masked keys. A command of one query whose keys fit
one tile (decode of a short context, `chain`) runs its heads' commands as one
stream the same way: S_{h+1} during head h's softmax, PV_{h+1} during head h's
normalise phase, and with `head_group` one S command serves a group of heads
whose Kᵀ tiles lie side by side (head g's scores in row g of the S half, as a
batched command's key tiles). Every buffer has a size fixed by the configuration
(two S tiles, two P tiles, one block of O): nothing grows with the sequence
length except the KV cache. `sim/cycles/attention.py` reproduces the timing.
"""
from amaranth.hdl import *
from amaranth.lib import data, enum, stream, wiring
from amaranth.lib.memory import Memory, ReadPort
from amaranth.lib.wiring import In, Out
from amaranth.utils import ceil_log2

from .attention_config import AttentionConfig
from .intarith import round_shift_add, small_times, times_const
from .isa import attention_command_layout, matmul_command_layout
from .matmul import MatmulEngine
from .memport import MemPort, write_layout
from .normalise import Normaliser, o_layout, out_layout, row_sum_layout
from .softmax import SoftmaxUnit, prob_layout, score_layout

__all__ = ["AttentionEngine", "Phase"]


class Phase(enum.Enum, shape=3):
    """The engine's `phase` output: the command sequencer's state, one value per state."""
    IDLE = 0      #: waiting for a command
    DECIDE = 1    #: choosing the next matmul (S of the next tile, or PV of a ready one)
    S_CMD = 2     #: presenting an S = Q Kᵀ tile command to the array
    PV_CMD = 3    #: presenting a P V tile command
    WAIT = 4      #: the array runs the command
    NORM = 5      #: the normaliser finishes the command's last block
    NEXT = 6      #: the next row block of the head, or the next head
    HEAD = 7      #: the next head's bases are set



_INFO = data.StructLayout({"delta": range(33), "l_sum": unsigned(32)})


def _read_port(depth, shape):
    """A read port of a memory another component owns (the owner's side: `Out`).
    The owner joins its memory's port straight to it, so the data keeps the
    memory's own output register and no cycle is added."""
    return ReadPort.Signature(addr_width=ceil_log2(depth), shape=shape)


def _context(c):
    """What the sequencer holds for every phase: the command (registered when
    accepted), the head and block being computed, and the normalise phase."""
    addr = unsigned(c.engine.addr_bits)
    return wiring.Signature({
        "params": Out(attention_command_layout(c)),
        "tk": Out(range(2 * c.max_seq + 1)),                # keys = offset + tq
        # queries from the block's first (m0) to the command's last, tq - m0
        "left": Out(range(c.max_seq + 1)),
        "rows_b": Out(range(c.rows + 1)),                   # queries in the block
        # the block's last query, offset + m0 + rows_b - 1: set with the block, so the
        # issuer's decisions compare against a register, not two adds of registers
        "last_q": Out(range(2 * c.max_seq + c.rows + 1)),
        # ... and its first, offset + m0, for the same reason (the diagonal tiles'
        # selects, the softmax's query positions)
        "first_q": Out(range(2 * c.max_seq + c.rows + 1)),
        # another block of the head follows this one (m0 + R < tq): set with the block,
        # so NEXT's choice and the block start's fan-out into the issuer's registers
        # do not wait for an add and a compare
        "more": Out(1),
        "qb": Out(addr), "ob": Out(addr),                   # Q row m0 of this head, output row m0
        # the byte of word qb where this head's Q starts (the S command's k covers it)
        "qo": Out(range(c.engine.mem_bytes)),
        "hk": Out(addr), "hv": Out(addr),                   # this head's K and V caches
        # output byte position of this head within a row, as (word, byte)
        "hw": Out(addr), "ho": Out(range(c.engine.mem_bytes)),
        **{f"scratch_{k}": Out(addr) for k in ("zero", "p", "s", "pv")},
        "wpv": Out(range(c.pv_stride + 1)),                 # O words per row: ceil(D / SPW)
        "nbeats": Out(range(c.max_d_head + 1)),             # normaliser beats per row: D / NL
        "blk_start": Out(1),                                # a block starts (pulse)
        # one query whose keys fit one tile (decode of a short context): the heads
        # run as one stream of S and PV commands (`_CommandSequencer`)
        "chain": Out(1),
        # chain with `head_group` heads per S command: their Kᵀ tiles side by side in
        # one W operand, head g's scores in row g of the S half
        "hbatch": Out(1),
        "s_head": Out(1),                                   # chain: the S side's next head (pulse)
        "pv_wrap": Out(1),                                  # chain: the PV side's next head (pulse)
        "nm_pend": Out(1),                                  # chain: a head's PV is done, its
                                                            # normalise phase not yet started
        "nm_start": Out(1),                                 # its normalise phase starts (pulse)
        "nm_on": Out(1),                                    # ... until its last output write
        # the block being normalised (the sequencer may already be in the next one)
        "nm_rows": Out(range(c.rows + 1)),
    })


def _tiles(c):
    """The issuer's side of its hand-off with the sequencer: the next S and PV
    commands and whether they may run; the sequencer says when one was taken."""
    mc = matmul_command_layout(c.engine)
    return wiring.Signature({
        "s_cmd": Out(mc), "pv_cmd": Out(mc),
        "s_next": Out(1),       # an S tile is left and a half is free for it
        "s_room": Out(1),       # a half is free for an S tile
        "pv_left": Out(1),      # a PV tile is left ...
        "pv_ready": Out(1),     # ... and one has been softmaxed
        "s_issue": In(1), "pv_issue": In(1),
    })


def _softmax_phase():
    """The softmax sequencer's side of its hand-off with the P writer."""
    return wiring.Signature({"start": Out(1),   # an S tile goes into the softmax (pulse)
                             "on": Out(1), "par": Out(1),
                             "fin": In(1)})      # its last P row was written (pulse)


class _CommandSequencer(wiring.Component):
    """Heads, blocks and the order of the array's commands (the `Phase` FSM).

    It owns the command registers and loop counters that every other phase
    reads (`_context`); what the next tile command is comes from `_TileIssuer`,
    so this FSM only decides which one runs and when.
    """

    def __init__(self, cfg: AttentionConfig):
        self.cfg = cfg
        e = cfg.engine
        super().__init__({
            "cmd": In(stream.Signature(attention_command_layout(cfg))),
            "lent": In(1),
            "mm_cmd": Out(stream.Signature(matmul_command_layout(e))), "mm_done": In(1),
            "tiles": In(_tiles(cfg)),
            "ctx": Out(_context(cfg)),
            "nm_done": In(1), "sm_on": In(1),
            "busy": Out(1), "done": Out(1), "phase": Out(Phase),
        })

    def elaborate(self, platform):
        m = Module()
        c = self.cfg
        R, SPW, NL = c.rows, c.scores_per_word, c.norm_lanes
        MB = c.engine.mem_bytes
        off = c.scratch_offsets()
        x, t = self.ctx, self.tiles
        cmd, busy, lent = x.params, self.busy, self.lent
        m.d.sync += self.done.eq(0)
        m.d.comb += self.cmd.ready.eq(~busy & ~lent)
        accept = self.cmd.valid & ~busy & ~lent
        p = self.cmd.payload
        h = Signal(range(257))                      # head
        # the last head of the S side's command (h itself unless `hbatch`)
        h_end = Signal(range(257 + c.s_chunk))
        chain_p = ((p.tq == 1) & (p.offset < c.tile)) if R > 1 else Const(0)
        hq = Signal(c.engine.addr_bits)
        # A head's output bytes, D, as (words, bytes < MB): found by subtracting
        # MB once per cycle after the accept (no divider), long before the first
        # head ends; the next head's output starts that far on, so it need not
        # wait for the normaliser to write the head's first row to know where.
        dw = Signal(range(c.max_d_head // MB + 1))
        db = Signal(range(c.max_d_head + 1))
        d_split = db < MB
        with m.If(busy & ~d_split):
            m.d.sync += [db.eq(db - MB), dw.eq(dw + 1)]

        with m.If(x.nm_start):
            m.d.sync += [x.nm_on.eq(1), x.nm_rows.eq(x.rows_b)]
        with m.If(self.nm_done):
            m.d.sync += x.nm_on.eq(0)

        # The head's output position steps by D bytes when the phase of its last
        # block starts (the output writer takes the old one that cycle): with
        # `chain` the S side may be heads ahead of the head being normalised.
        with m.If(x.nm_start & (x.chain | ~x.more)):
            ho_next = x.ho + db
            o_carry = ho_next >= MB
            m.d.sync += [x.ho.eq(Mux(o_carry, ho_next - MB, ho_next)),
                         x.hw.eq(x.hw + dw + o_carry)]

        # Chain: S_{h+1} is issued while head h is in its softmax, the array runs
        # S and PV commands of consecutive heads back to back (S_0, S_1, PV_0,
        # S_2, PV_1, ...), and head h's normalise phase starts once its PV is done
        # and no softmax holds the write channel (`nm_pend` until then; no softmax
        # starts meanwhile, so the phase never waits for one that started after
        # it). `hp` is the head of the PV side, which moves on with that phase:
        # its O row and row info half alternate by head, so PV_{h+1} may run
        # during the phase.
        hp = Signal(range(257))
        pv_run = Signal()                   # the running command is a PV
        with m.If(self.mm_cmd.valid & self.mm_cmd.ready):
            m.d.sync += pv_run.eq(t.pv_issue)
        with m.If(busy & x.chain & pv_run & self.mm_done):
            m.d.sync += x.nm_pend.eq(1)
        chain_nm = busy & x.chain & x.nm_pend & ~x.nm_on & ~self.sm_on & d_split
        with m.If(chain_nm):
            m.d.comb += x.nm_start.eq(1)
            m.d.sync += x.nm_pend.eq(0)
            with m.If(hp + 1 < cmd.n_head):
                m.d.comb += x.pv_wrap.eq(1)
                m.d.sync += hp.eq(hp + 1)

        def block_setup(left, more, qb_val, ob_val, first_q, full_last_q):
            """`left`: tq - m0 of the block that starts; `more`: left > R;
            `first_q`: offset + m0; `full_last_q`: offset + m0 + R - 1, the last
            query of a full block"""
            m.d.comb += x.blk_start.eq(1)
            m.d.sync += [x.left.eq(left), x.qb.eq(qb_val), x.ob.eq(ob_val),
                         x.rows_b.eq(Mux(more, R, left)), x.more.eq(more),
                         x.first_q.eq(first_q),
                         x.last_q.eq(Mux(more, full_last_q, x.tk - 1))]

        with m.FSM(name="ctrl"):
            with m.State("IDLE"):
                m.d.comb += self.phase.eq(Phase.IDLE)
                with m.If(accept):
                    m.d.sync += [cmd.eq(p), busy.eq(1), x.tk.eq(p.offset + p.tq), h.eq(0),
                                 hp.eq(0), x.nm_pend.eq(0),
                                 x.chain.eq(chain_p),
                                 x.hbatch.eq(chain_p & (p.head_group > 1) if c.s_chunk > 1 else 0),
                                 h_end.eq(Mux(chain_p & (p.head_group > 1) if c.s_chunk > 1
                                              else 0, p.head_group - 1, 0)),
                                 dw.eq(0), db.eq(p.d_head),
                                 hq.eq(p.q_base), x.qo.eq(0),
                                 x.hk.eq(p.k_base), x.hv.eq(p.v_base),
                                 x.hw.eq(0), x.ho.eq(0),
                                 x.wpv.eq((p.d_head + SPW - 1) // SPW),
                                 x.nbeats.eq(p.d_head // NL)]
                    for k in ("zero", "p", "s", "pv"):
                        m.d.sync += getattr(x, f"scratch_{k}").eq(p.scratch_base + off[k])
                    m.next = "HEAD"
            with m.State("HEAD"):
                # the head's bases are set; start its first block (chain: only
                # the S side moves to the head, the others follow their own)
                m.d.comb += self.phase.eq(Phase.HEAD)
                with m.If(x.chain & (h != 0)):
                    m.d.comb += x.s_head.eq(1)
                    m.d.sync += x.qb.eq(hq)
                with m.Else():
                    block_setup(cmd.tq, cmd.tq > R, hq, cmd.out_base, cmd.offset,
                                cmd.offset + (R - 1))
                m.next = "DECIDE"
            with m.State("DECIDE"):
                # order S0, S1, PV0, S2, PV1, ...: S_{j+1} runs during softmax j;
                # two S / P halves, so S never gets more than 2 tiles ahead
                m.d.comb += self.phase.eq(Phase.DECIDE)
                with m.If(t.s_next):
                    m.next = "S_CMD"
                with m.Elif(x.chain & t.s_room & (h_end + 1 < cmd.n_head)):
                    # chain: the next head's (group's) S runs ahead of this head's PV
                    m.next = "NEXT"
                with m.Elif(t.pv_left):
                    with m.If(t.pv_ready):
                        m.next = "PV_CMD"
                with m.Elif(x.chain):
                    # the PV side moves on when its head's phase starts
                    with m.If(hp + 1 == cmd.n_head):
                        m.next = "NORM"
                with m.Elif(d_split):
                    # all PV done: normalise this block while the next one's
                    # first S commands run (its softmax waits for the phase)
                    m.d.comb += x.nm_start.eq(1)
                    m.next = "NEXT"
            with m.State("S_CMD"):
                m.d.comb += [self.phase.eq(Phase.S_CMD),
                             self.mm_cmd.valid.eq(1), self.mm_cmd.payload.eq(t.s_cmd)]
                with m.If(self.mm_cmd.ready):
                    m.d.comb += t.s_issue.eq(1)
                    m.next = "WAIT"
            with m.State("PV_CMD"):
                m.d.comb += [self.phase.eq(Phase.PV_CMD),
                             self.mm_cmd.valid.eq(1), self.mm_cmd.payload.eq(t.pv_cmd)]
                with m.If(self.mm_cmd.ready):
                    m.d.comb += t.pv_issue.eq(1)
                    m.next = "WAIT"
            with m.State("WAIT"):
                m.d.comb += self.phase.eq(Phase.WAIT)
                with m.If(self.mm_done):
                    m.next = "DECIDE"
            with m.State("NEXT"):
                m.d.comb += self.phase.eq(Phase.NEXT)
                with m.If(x.more):
                    # this block is full (m0 + R < tq): its last query is offset + m0 + R - 1
                    # (left - R > R from left itself, not from the difference)
                    block_setup(x.left - R, x.left > 2 * R,
                                x.qb + times_const(cmd.q_row_stride, R),
                                x.ob + times_const(cmd.out_stride, R), x.first_q + R,
                                x.last_q + R)
                    m.next = "DECIDE"
                with m.Elif(h + 1 < cmd.n_head):
                    # the next head starts while this one is normalised, as a
                    # next block would (its softmax waits for the phase). Heads
                    # packed in the Q rows: q_head_stride words and q_head_bytes
                    # bytes on, carrying into the word
                    qo_next = x.qo + cmd.q_head_bytes
                    carry = qo_next >= MB
                    m.d.sync += [x.qo.eq(Mux(carry, qo_next - MB, qo_next)),
                                 h.eq(h + 1), hq.eq(hq + cmd.q_head_stride + carry),
                                 x.hk.eq(x.hk + cmd.k_head_stride),
                                 x.hv.eq(x.hv + cmd.v_head_stride)]
                    # `hbatch`: a head a cycle through the group just served (its
                    # heads' Q, K and V bases step as one head's would)
                    with m.If(h == h_end):
                        m.d.sync += h_end.eq(h_end + Mux(x.hbatch, cmd.head_group, 1))
                        m.next = "HEAD"
                with m.Else():
                    # the end of the command needs every output written
                    m.next = "NORM"
            with m.State("NORM"):
                m.d.comb += self.phase.eq(Phase.NORM)
                with m.If(self.nm_done & ~x.nm_pend):
                    m.d.sync += [busy.eq(0), self.done.eq(1)]
                    m.next = "IDLE"
        return m


class _TileIssuer(wiring.Component):
    """The next S and the next PV command of a block, and the tile accounting.

    S runs up to two S commands ahead of PV, so each has its own key tile,
    cache pointer and scratch half; the counters here (S tiles issued ahead,
    tiles softmaxed, S tiles waiting for the softmax, softmaxes ahead of the
    PV commands) are the hand-offs between the array and the softmax.

    A block of one query whose key tiles lie back to back in the cache (its
    Kᵀ tile words are the whole stride) takes `s_chunk` tiles per S command
    (``batch``): the tiles fill the rows of the half, a tile counts as done
    once the command's writes passed it (its one row is written column tile by
    column tile), and the softmax of tile j waits for PV_{j-2} (the P and row
    info halves it reuses), which one S command per tile gave for free.
    """

    def __init__(self, cfg: AttentionConfig):
        self.cfg = cfg
        super().__init__({
            "ctx": In(_context(cfg)), "tiles": Out(_tiles(cfg)),
            "mm_done": In(1), "lent": In(1),
            "s_wr": In(1),                          # a write beat of the running S command
            "sm_take": In(1), "sm_fin": In(1),      # softmax takes / finishes a tile
            "s_full": Out(range(2 * cfg.s_chunk + 1)),  # S tiles done, not yet softmaxed
            "batch": Out(1),                        # s_chunk tiles per S command
            "sm_room": Out(1),                      # PV_{j-2} is done: softmax j may start
            "eng_pv": Out(1),                       # the running command is a PV
            "pv_par": Out(1),                       # ... and its half
            "pv_first": Out(1),                     # ... is the row block's first tile
            "pv_hpar": Out(1),                      # chain: the PV side's head parity (O row)
        })

    def elaborate(self, platform):
        m = Module()
        c, e = self.cfg, self.cfg.engine
        R, T, SS, PS, PVS = c.rows, c.tile, c.s_stride, c.p_stride, c.pv_stride
        x, t = self.ctx, self.tiles
        cmd = x.params
        last_q = x.last_q                               # offset + m0 + rows_b - 1

        CB = c.s_chunk
        es_k0 = Signal(range(c.max_seq + CB * T + 1))
        ep_k0 = Signal(range(c.max_seq + T + 1))
        es_kp, ep_vp = Signal(e.addr_bits), Signal(e.addr_bits)
        es_par, ep_par = Signal(), Signal()
        ahead = Signal(range(2 * CB + 1))   # S tiles issued - PV commands issued
        sm_ready = Signal(range(3))         # softmaxed tiles whose PV is not yet issued
        sm_lead = Signal(range(4))          # softmaxes started - PV commands done
        s_tiles = Signal(range(CB + 1))     # tiles of the next S command
        eng_tiles = Signal(range(CB + 1))   # ... of the running one
        s_done = self.mm_done & ~self.eng_pv & ~self.lent
        pv_done = self.mm_done & self.eng_pv & ~self.lent
        batch = self.batch
        # batched: write beats of a whole key tile (T / cols column tiles of one row)
        TB = T // e.cols * e.out_segment(True)[2]
        wr_beat = Signal(range(TB))
        wr_tiles = Signal(range(CB + 1))        # tiles of the running S command written
        tile_wr = Signal()
        # the S command's k: the Q bytes up to the head's end, or every tile's k_rows
        s_k = Signal(range(e.max_k + 1))
        m.d.comb += s_k.eq(Mux(cmd.k_rows != 0, cmd.k_rows, x.qo + cmd.d_head))
        # `hbatch`: the columns of a group's S command before its last head's keys,
        # registered from the command (its first S command is two cycles later)
        hb_n = Signal(range(CB * T + 1))
        m.d.sync += hb_n.eq(times_const(cmd.head_group - 1, T) if CB > 1 else 0)
        several = batch | x.hbatch          # several tiles per S command
        if CB > 1:
            m.d.comb += tile_wr.eq(several & self.s_wr & (wr_beat == TB - 1))
            with m.If(several & self.s_wr):
                m.d.sync += wr_beat.eq(Mux(wr_beat == TB - 1, 0, wr_beat + 1))
            m.d.sync += wr_tiles.eq(wr_tiles + tile_wr)
            with m.If(t.s_issue):
                m.d.sync += [wr_beat.eq(0), wr_tiles.eq(0)]
            # the head's Kᵀ tiles back to back: a tile's words (T / cols column
            # tiles of ceil(k / k_per_word) words) are the whole stride; registered,
            # k only changes in HEAD
            kw = (s_k + e.k_per_word - 1) >> (e.k_per_word.bit_length() - 1)
            contig = Signal()
            chunk_kp = Signal(e.addr_bits)      # CB tiles of the cache
            m.d.sync += [contig.eq(cmd.k_tile_stride == times_const(kw, T // e.cols)),
                         chunk_kp.eq(times_const(cmd.k_tile_stride, CB))]
            m.d.comb += batch.eq(contig & (x.rows_b == 1) & ~x.chain)
        rem = last_q + 1 - es_k0                # keys of the block from es_k0 on
        m.d.comb += s_tiles.eq(Mux(batch, 1 + sum(rem > i * T for i in range(1, CB)),
                                   Mux(x.hbatch, cmd.head_group, 1)))
        m.d.sync += [ahead.eq(ahead + Mux(t.s_issue, s_tiles, 0) - t.pv_issue),
                     sm_ready.eq(sm_ready + self.sm_fin - t.pv_issue),
                     sm_lead.eq(sm_lead + self.sm_take - pv_done),
                     self.s_full.eq(self.s_full + Mux(s_done, eng_tiles - wr_tiles, 0) + tile_wr
                                    - self.sm_take)]
        s_room = ahead <= Mux(batch, CB, Mux(x.hbatch, cmd.head_group, 1))
        m.d.comb += [t.s_next.eq((es_k0 <= last_q) & s_room), t.s_room.eq(s_room),
                     t.pv_left.eq(ep_k0 <= last_q), t.pv_ready.eq(sm_ready != 0),
                     self.sm_room.eq(sm_lead < 2)]
        ep_hv = Signal(e.addr_bits)             # the PV side's head's V cache
        with m.If(x.blk_start):
            m.d.sync += [es_k0.eq(0), ep_k0.eq(0), es_kp.eq(x.hk), ep_vp.eq(x.hv),
                         es_par.eq(0), ep_par.eq(0), ep_hv.eq(x.hv), self.pv_hpar.eq(0)]
        # chain: each side moves to the next head on its own, the halves and the
        # hand-off counters run on across heads
        with m.If(x.s_head):
            m.d.sync += [es_k0.eq(0), es_kp.eq(x.hk)]
        with m.If(x.pv_wrap):
            m.d.sync += [ep_k0.eq(0), ep_vp.eq(ep_hv + cmd.v_head_stride),
                         ep_hv.eq(ep_hv + cmd.v_head_stride), self.pv_hpar.eq(~self.pv_hpar)]

        # Diagonal tiles: the array row blocks at the top of the block whose
        # queries all precede key k0 see none of the tile's keys, so its S and
        # PV commands start below them (their softmax rows read stale S words
        # but see no key: p = 0, delta = 0, O unchanged). Registered in DECIDE
        # (k0, m0 only change when leaving S_CMD / PV_CMD or in HEAD / NEXT).
        AR, GB = e.rows, R // e.rows

        # b array row blocks of Q rows, b * AR * q_row_stride words: registered from
        # the command (set a cycle before the first DECIDE), so the offset is a
        # selection, not a multiply in the address path
        q_blk = [Const(0, e.addr_bits)] + [Signal(e.addr_bits, name=f"q_blk{b}")
                                           for b in range(1, GB)]
        m.d.sync += [q_blk[b].eq(times_const(cmd.q_row_stride, b * AR)) for b in range(1, GB)]

        def skipped_blocks(k0):
            """(blocks, their Q rows' offset in words)"""
            first = x.first_q
            n, off = Const(0, range(GB)), q_blk[0]
            for b in range(1, GB):
                seen = k0 >= first + b * AR
                n, off = Mux(seen, b, n), Mux(seen, q_blk[b], off)
            return n, off

        s_skip, p_skip = Signal(range(GB)), Signal(range(GB))   # array row blocks
        s_aoff = Signal(e.addr_bits)                            # s_skip rows of Q
        s_n, s_off = skipped_blocks(es_k0)
        m.d.sync += [s_skip.eq(s_n), p_skip.eq(skipped_blocks(ep_k0)[0]), s_aoff.eq(s_off)]

        # keys past the block's last query are never visible to it: a diagonal
        # tile's S stops there (the softmax masks the rest)
        n_max = Mux(batch, CB * T, T)
        n_keys = Mux(x.hbatch, hb_n + rem, Mux(rem > n_max, n_max, rem))
        s = t.s_cmd
        m.d.comb += [s.m.eq(x.rows_b - small_times(s_skip, AR)), s.k.eq(s_k),
                     s.n.eq(n_keys),
                     s.a_base.eq(x.qb + s_aoff), s.a_stride.eq(cmd.q_row_stride),
                     s.w_base.eq(es_kp), s.p_base.eq(x.scratch_zero),
                     s.out_base.eq(x.scratch_s + Mux(es_par, R * SS, 0)
                                   + small_times(s_skip, AR * SS)),
                     s.out_stride.eq(SS), s.a_signed.eq(1), s.raw_out.eq(1)]
        with m.If(t.s_issue):
            # a batched S command is the block's last unless it has CB tiles
            m.d.sync += [es_k0.eq(es_k0 + Mux(batch, CB * T, T)),
                         es_kp.eq(es_kp + (Mux(batch, chunk_kp, cmd.k_tile_stride)
                                           if CB > 1 else cmd.k_tile_stride)),
                         es_par.eq(~es_par), self.eng_pv.eq(0), eng_tiles.eq(s_tiles)]
        # k = the whole tile: P is 0 for absent keys, so the V cache keeps one
        # fixed layout per tile however many keys it holds
        pv = t.pv_cmd
        m.d.comb += [pv.m.eq(x.rows_b - small_times(p_skip, AR)), pv.k.eq(T), pv.n.eq(cmd.d_head),
                     pv.a_base.eq(x.scratch_p + Mux(ep_par, R * PS, 0)
                                  + small_times(p_skip, AR * PS)),
                     pv.a_stride.eq(PS), pv.w_base.eq(ep_vp), pv.p_base.eq(x.scratch_zero),
                     pv.out_base.eq(x.scratch_pv + small_times(p_skip, AR * PVS)
                                    + Mux(self.pv_hpar, PVS, 0)),
                     pv.out_stride.eq(PVS), pv.a_signed.eq(0), pv.raw_out.eq(1)]
        with m.If(t.pv_issue):
            m.d.sync += [ep_k0.eq(ep_k0 + T), ep_vp.eq(ep_vp + cmd.v_tile_stride),
                         ep_par.eq(~ep_par), self.eng_pv.eq(1), self.pv_par.eq(ep_par),
                         self.pv_first.eq(ep_k0 == 0)]
        return m


class _ScoreFeeder(wiring.Component):
    """The S tiles on chip and the softmax sequencer that streams them out.

    The S command's write beats land in the S buffer (two halves); once a tile
    is complete and the write channel is free of the normalise phase, its rows
    go to the `SoftmaxUnit` through a word-to-lanes gearbox.
    """

    def __init__(self, cfg: AttentionConfig):
        self.cfg = cfg
        super().__init__({
            "ctx": In(_context(cfg)),
            "wr": In(write_layout(cfg.engine)), "wr_en": In(1),    # the S command's writes
            "s_full": In(range(2 * cfg.s_chunk + 1)),
            "batch": In(1), "sm_room": In(1),
            "sm": Out(_softmax_phase()),
            "scores": Out(stream.Signature(score_layout(cfg))),
        })

    def elaborate(self, platform):
        m = Module()
        c, e = self.cfg, self.cfg.engine
        R, MB, SPW, T = c.rows, e.mem_bytes, c.scores_per_word, c.tile
        LN, BPR, SS = c.lanes, c.beats_per_row, c.s_stride
        x, ph = self.ctx, self.sm
        cmd = x.params

        m.submodules.sbuf = sbuf = Memory(shape=unsigned(8 * MB), depth=2 * R * SS, init=[])
        s_w = sbuf.write_port(granularity=8)
        s_r = sbuf.read_port(transparent_for=())
        m.d.comb += [s_w.addr.eq(self.wr.addr - x.scratch_s), s_w.data.eq(self.wr.data),
                     s_w.en.eq(Mux(self.wr_en, self.wr.strb, 0))]

        sm_on, sm_par, sm_start = ph.on, ph.par, ph.start
        sm_k0 = Signal(range(c.max_seq + T + 1))
        sm_nkeys = Signal(range(T + 1))
        # chain: a softmax may start during a head's normalise phase (its P rows and
        # row info wait for the write channel, `_ProbWriter`; the phase took its L
        # when it started and the PV that would reuse its O row waits for this softmax)
        m.d.comb += sm_start.eq(~sm_on & (self.s_full != 0) & ~x.blk_start
                                & (~x.nm_on | x.chain) & ~x.nm_pend & self.sm_room)
        # the tile's S row: row 0 of the other half after each S command's
        # tiles (one, or s_chunk when batched), else the next row
        CB = c.s_chunk
        sm_sbase = Signal(range(2 * R * SS))
        sm_idx = Signal(range(CB))
        with m.If(x.blk_start):
            m.d.sync += [sm_k0.eq(0), sm_par.eq(0), sm_sbase.eq(0), sm_idx.eq(0)]
        with m.If(sm_start):
            m.d.sync += [sm_on.eq(1), sm_nkeys.eq(Mux(x.tk - sm_k0 > T, T, x.tk - sm_k0))]
        with m.If(ph.fin):
            # chain: every head's one tile starts at key 0
            m.d.sync += [sm_on.eq(0), sm_k0.eq(Mux(x.chain, 0, sm_k0 + T)), sm_par.eq(~sm_par)]
            # a group's heads (`hbatch`) fill head_group rows, a batched
            # command's key tiles CB
            cmd_end = Mux(x.hbatch, sm_idx == cmd.head_group - 1, ~self.batch | (sm_idx == CB - 1))
            with m.If(cmd_end):
                m.d.sync += [sm_idx.eq(0), sm_sbase.eq(Mux(sm_sbase >= R * SS, 0, R * SS))]
            with m.Else():
                m.d.sync += [sm_idx.eq(sm_idx + 1), sm_sbase.eq(sm_sbase + SS)]

        # S words -> softmax beats (lanes scores each). The read port's data
        # register holds the current word; a row ends after BPR beats, dropping
        # the rest of its last word.
        sg_row, sg_w = Signal(range(R + 1)), Signal(range(SS))
        sg_ptr = Signal(range(2 * R * SS + 1))
        sg_valid = Signal()
        sg_take = Signal()
        sg_adv = ~sg_valid | sg_take
        sg_more = sm_on & (sg_row != x.rows_b)
        with m.If(sm_start):
            m.d.sync += [sg_row.eq(0), sg_w.eq(0), sg_ptr.eq(sm_sbase)]
        m.d.comb += [s_r.addr.eq(sg_ptr + sg_w), s_r.en.eq(sg_adv)]
        with m.If(sg_adv & ~sm_start):
            m.d.sync += sg_valid.eq(sg_more)
            with m.If(sg_more):
                m.d.sync += sg_w.eq(sg_w + 1)
                with m.If(sg_w == c.s_words - 1):
                    m.d.sync += [sg_w.eq(0), sg_row.eq(sg_row + 1), sg_ptr.eq(sg_ptr + SS)]
        gb_row = Signal(range(R))
        gb_beat = Signal(range(BPR))
        gb_sub = Signal(range(SPW // LN))
        with m.If(sm_start):
            m.d.sync += [gb_row.eq(0), gb_beat.eq(0), gb_sub.eq(0)]
        sp = self.scores.payload
        m.d.comb += [self.scores.valid.eq(sg_valid),
                     sp.row.eq(gb_row), sp.qpos.eq(x.first_q + gb_row), sp.k0.eq(sm_k0),
                     sp.n_keys.eq(sm_nkeys), sp.mult.eq(cmd.score_mult),
                     sp.shift.eq(cmd.score_shift)]
        for l in range(LN):
            m.d.comb += sp.s[l].eq(s_r.data.word_select(gb_sub * LN + l, 32))
        row_end = gb_beat == BPR - 1
        with m.If(self.scores.valid & self.scores.ready):
            m.d.sync += [gb_beat.eq(gb_beat + 1), gb_sub.eq(gb_sub + 1)]
            with m.If(row_end | (gb_sub == SPW // LN - 1)):
                m.d.comb += sg_take.eq(1)
                m.d.sync += gb_sub.eq(0)
            with m.If(row_end):
                m.d.sync += [gb_beat.eq(0), gb_row.eq(gb_row + 1)]
        return m


class _ProbWriter(wiring.Component):
    """P rows from the softmax into P half `sm_par` in memory; per row delta and
    L into the row info (two halves, read by the accumulator and the normaliser
    feeder, whose ports it exposes)."""

    def __init__(self, cfg: AttentionConfig):
        self.cfg = cfg
        super().__init__({
            "ctx": In(_context(cfg)), "sm": In(_softmax_phase()),
            "probs": In(stream.Signature(prob_layout(cfg))),
            "wr": Out(stream.Signature(write_layout(cfg.engine))),
            "info_ac": Out(_read_port(2 * cfg.rows, _INFO)),
            "info_nm": Out(_read_port(2 * cfg.rows, _INFO)),
        })

    def elaborate(self, platform):
        m = Module()
        c, e = self.cfg, self.cfg.engine
        R, MB, LN, PS = c.rows, e.mem_bytes, c.lanes, c.p_stride
        x, ph = self.ctx, self.sm

        m.submodules.info = info_mem = Memory(shape=_INFO, depth=2 * R, init=[])
        info_w = info_mem.write_port()
        wiring.connect(m, wiring.flipped(self.info_ac), info_mem.read_port(transparent_for=()))
        wiring.connect(m, wiring.flipped(self.info_nm), info_mem.read_port(transparent_for=()))

        pw_row = Signal(range(R + 1))
        pw_ptr = Signal(e.addr_bits)
        pw_word = Signal(range(PS + 1))
        pw_byte = Signal(range(MB))
        pr = self.probs.payload
        p_bytes = Cat(*[pr.p[l] for l in range(LN)])
        with m.If(ph.start):
            m.d.sync += [pw_row.eq(0), pw_word.eq(0), pw_byte.eq(0),
                         pw_ptr.eq(x.scratch_p + Mux(ph.par, R * PS, 0))]
        p_on = ph.on & ~x.nm_on & (pw_row != x.rows_b)   # the write channel is ours
        wr_ready = self.wr.ready
        take_p = self.probs.valid & p_on & wr_ready
        m.d.comb += self.probs.ready.eq(p_on & wr_ready)
        m.d.comb += [info_w.addr.eq(Cat(pr.row, ph.par) if R & (R - 1) == 0 and R > 1
                                    else pr.row + Mux(ph.par, R, 0)),
                     info_w.data.delta.eq(pr.delta), info_w.data.l_sum.eq(pr.l_sum),
                     info_w.en.eq(take_p & pr.last)]
        with m.If(take_p):
            m.d.sync += pw_byte.eq(pw_byte + LN)
            with m.If(pw_byte == MB - LN):
                m.d.sync += [pw_byte.eq(0), pw_word.eq(pw_word + 1)]
            with m.If(pr.last):
                m.d.sync += [pw_row.eq(pw_row + 1), pw_ptr.eq(pw_ptr + PS),
                             pw_word.eq(0), pw_byte.eq(0)]
        m.d.comb += ph.fin.eq(ph.on & ~ph.start & (pw_row == x.rows_b))
        m.d.comb += [self.wr.valid.eq(self.probs.valid & p_on),
                     self.wr.payload.addr.eq(pw_ptr + pw_word),
                     self.wr.payload.data.eq(p_bytes << (pw_byte * 8)),
                     self.wr.payload.strb.eq(Const((1 << LN) - 1, MB) << pw_byte)]
        return m


class _Accumulator(wiring.Component):
    """O, updated by the PV command's write beats as they come (no phase of its
    own). A (write beat): read O and the row's delta; B1: both registered (a
    LUT-RAM read then a 33-bit shift and a 32-bit add in one cycle were the
    engine's worst path); B2: O = rs(O, delta) + PV per written int32 lane, one
    carry chain (`round_shift_add`). The A read is transparent for B2's write,
    and B1 takes B2's result for the lanes B2 writes when both are the same word,
    so a beat sees every earlier beat's accumulate, as if each beat read and wrote
    in one cycle. (A PV command writes each O element once and the next one starts
    after its done, so that forwarding is a safeguard of the unit's contract, not
    a case the engine's commands produce.)"""

    def __init__(self, cfg: AttentionConfig):
        self.cfg = cfg
        word = data.ArrayLayout(signed(32), cfg.scores_per_word)
        super().__init__({
            "ctx": In(_context(cfg)),
            "wr": In(write_layout(cfg.engine)), "wr_en": In(1),    # the PV command's writes
            "pv_par": In(1), "pv_first": In(1),
            "info": In(_read_port(2 * cfg.rows, _INFO)),
            "o_nm": Out(_read_port(cfg.rows * cfg.pv_stride, word)),
        })

    def elaborate(self, platform):
        m = Module()
        c = self.cfg
        R, SPW, PVS = c.rows, c.scores_per_word, c.pv_stride
        PVS_LOG = PVS.bit_length() - 1
        word = data.ArrayLayout(signed(32), SPW)
        m.submodules.obuf = obuf = Memory(shape=word, depth=R * PVS, init=[])
        o_w = obuf.write_port(granularity=1)  # one enable per int32 lane
        o_ac = obuf.read_port(transparent_for=(o_w,))
        # The normalise phase reads O no earlier than three cycles after the last PV
        # beat's A cycle (done, DECIDE, then its first address), after B2's write.
        wiring.connect(m, wiring.flipped(self.o_nm), obuf.read_port(transparent_for=()))
        pv_off = Signal(range(R * PVS))
        m.d.comb += pv_off.eq(self.wr.addr - self.ctx.scratch_pv)
        pv_row = pv_off[PVS_LOG:] if PVS_LOG < len(pv_off) else Const(0, 1)
        m.d.comb += [o_ac.addr.eq(pv_off), o_ac.en.eq(1),
                     self.info.addr.eq(pv_row + Mux(self.pv_par, R, 0)), self.info.en.eq(1)]
        # B1 holds the beat; B2 the beat, the O word read (0 on a tile's first PV,
        # as B1 saw pv_first) and the row's delta. Datapath registers without a reset.
        b1_valid, b2_valid = Signal(), Signal()
        b1_pv, b2_pv = Signal(word, reset_less=True), Signal(word, reset_less=True)
        b1_addr = Signal.like(o_w.addr, reset_less=True)
        b2_addr = Signal.like(o_w.addr, reset_less=True)
        b1_lanes = Signal(SPW, reset_less=True)
        b2_lanes = Signal(SPW, reset_less=True)
        b2_old = Signal(word, reset_less=True)
        b2_delta = Signal.like(self.info.data.delta, reset_less=True)
        m.d.sync += [b1_valid.eq(self.wr_en), b1_pv.eq(self.wr.data), b1_addr.eq(pv_off),
                     b1_lanes.eq(Cat(*[self.wr.strb[4 * l] for l in range(SPW)])),
                     b2_valid.eq(b1_valid), b2_pv.eq(b1_pv), b2_addr.eq(b1_addr),
                     b2_lanes.eq(b1_lanes), b2_delta.eq(self.info.data.delta)]
        # B2 writes the word B1 read a cycle too early to see: forward its lanes. The
        # first PV's zero is chosen here too, in the LUT that ends the forwarding loop
        # (B2's add, this select), not in front of B2's shift inside it.
        fwd = Signal(SPW)
        m.d.comb += fwd.eq(Mux(b2_valid & (b2_addr == b1_addr), b2_lanes, 0))
        for l in range(SPW):
            m.d.sync += b2_old[l].eq(Mux(self.pv_first, 0,
                                         Mux(fwd[l], o_w.data[l], o_ac.data[l])))
        m.d.comb += [o_w.addr.eq(b2_addr), o_w.en.eq(Mux(b2_valid, b2_lanes, 0))]
        for l in range(SPW):
            m.d.comb += o_w.data[l].eq(round_shift_add(b2_old[l], b2_delta, b2_pv[l], 32))
        return m


class _NormFeeder(wiring.Component):
    """The normalise phase's inputs: the last tile's row sums into ``l_in`` and the
    O rows, word by word through a gearbox, into ``o_in`` (norm_lanes each)."""

    def __init__(self, cfg: AttentionConfig):
        self.cfg = cfg
        word = data.ArrayLayout(signed(32), cfg.scores_per_word)
        super().__init__({
            "ctx": In(_context(cfg)), "pv_par": In(1), "pv_hpar": In(1),
            "info": In(_read_port(2 * cfg.rows, _INFO)),
            "o": In(_read_port(cfg.rows * cfg.pv_stride, word)),
            "l_in": Out(stream.Signature(row_sum_layout(cfg))),
            "o_in": Out(stream.Signature(o_layout(cfg))),
        })

    def elaborate(self, platform):
        m = Module()
        c = self.cfg
        R, SPW, NL, PVS = c.rows, c.scores_per_word, c.norm_lanes, c.pv_stride
        x = self.ctx
        nm_start, nm_on, nm_rows, cmd = x.nm_start, x.nm_on, x.nm_rows, x.params
        # row sums of the last tile -> l_in (the read port's data register holds the beat)
        lf_row = Signal(range(R + 1))
        lf_valid = Signal()
        lf_adv = ~lf_valid | self.l_in.ready
        lf_more = nm_on & (lf_row != nm_rows)
        # the row info half and O row of the block's last PV, taken when the phase
        # starts: with `chain` the next head's PV may run during it
        lf_par = Signal()
        with m.If(nm_start):
            m.d.sync += [lf_row.eq(0), lf_par.eq(self.pv_par)]
        m.d.comb += [self.info.addr.eq(lf_row + Mux(lf_par, R, 0)), self.info.en.eq(lf_adv),
                     self.l_in.valid.eq(lf_valid), self.l_in.payload.l_sum.eq(self.info.data.l_sum),
                     self.l_in.payload.out_mult.eq(cmd.out_mult),
                     self.l_in.payload.out_shift.eq(cmd.out_shift)]
        with m.If(lf_adv & ~nm_start):
            m.d.sync += lf_valid.eq(lf_more)
            with m.If(lf_more):
                m.d.sync += lf_row.eq(lf_row + 1)
        # O words -> o_in beats (norm_lanes each), D / NL beats per row
        of_row = Signal(range(R + 1))
        of_w = Signal(range(PVS))
        of_ptr = Signal(range(R * PVS + 1))
        of_valid = Signal()
        of_sub = Signal(range(SPW // NL))
        of_beat = Signal(range(c.max_d_head // NL + 1))
        of_take = Signal()
        of_adv = ~of_valid | of_take
        of_more = nm_on & (of_row != nm_rows)
        with m.If(nm_start):
            m.d.sync += [of_row.eq(0), of_w.eq(0), of_ptr.eq(Mux(self.pv_hpar, PVS, 0)),
                         of_sub.eq(0), of_beat.eq(0)]
        m.d.comb += [self.o.addr.eq(of_ptr + of_w), self.o.en.eq(of_adv)]
        with m.If(of_adv & ~nm_start):
            m.d.sync += of_valid.eq(of_more)
            with m.If(of_more):
                m.d.sync += of_w.eq(of_w + 1)
                with m.If(of_w == x.wpv - 1):
                    m.d.sync += [of_w.eq(0), of_row.eq(of_row + 1), of_ptr.eq(of_ptr + PVS)]
        op = self.o_in.payload
        m.d.comb += [self.o_in.valid.eq(of_valid), op.last.eq(of_beat == x.nbeats - 1)]
        for l in range(NL):
            m.d.comb += op.o[l].eq(self.o.data.as_value().word_select(of_sub * NL + l, 32))
        with m.If(self.o_in.valid & self.o_in.ready):
            m.d.sync += [of_beat.eq(of_beat + 1), of_sub.eq(of_sub + 1)]
            with m.If(op.last | (of_sub == SPW // NL - 1)):
                m.d.comb += of_take.eq(1)
                m.d.sync += of_sub.eq(0)
            with m.If(op.last):
                m.d.sync += of_beat.eq(0)
        return m


class _OutputWriter(wiring.Component):
    """Normalised int8 rows to memory, norm_lanes bytes per write at the head's
    byte offset, taken when the phase starts (the sequencer may already be in
    the next head)."""

    def __init__(self, cfg: AttentionConfig):
        self.cfg = cfg
        e = cfg.engine
        super().__init__({
            "ctx": In(_context(cfg)),
            "y": In(stream.Signature(out_layout(cfg))),
            "wr": Out(stream.Signature(write_layout(e))),
            "nm_done": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        c, e = self.cfg, self.cfg.engine
        R, MB, NL = c.rows, e.mem_bytes, c.norm_lanes
        x = self.ctx
        ow_row = Signal(range(R + 1))
        ow_ptr = Signal(e.addr_bits)
        ow_word, ow_byte = Signal(e.addr_bits), Signal(range(MB))
        ow_hw, ow_ho = Signal(e.addr_bits), Signal(range(MB))     # the head's first byte
        with m.If(x.nm_start):
            m.d.sync += [ow_row.eq(0), ow_ptr.eq(x.ob), ow_word.eq(x.hw), ow_byte.eq(x.ho),
                         ow_hw.eq(x.hw), ow_ho.eq(x.ho)]
        ow_on = x.nm_on & (ow_row != x.nm_rows)
        yb = Cat(*[self.y.payload.y[l] for l in range(NL)])
        m.d.comb += self.y.ready.eq(ow_on & self.wr.ready)
        with m.If(self.y.valid & self.y.ready):
            nb = ow_byte + NL
            m.d.sync += ow_byte.eq(nb)
            with m.If(nb == MB):
                m.d.sync += [ow_byte.eq(0), ow_word.eq(ow_word + 1)]
            with m.If(self.y.payload.last):
                m.d.sync += [ow_row.eq(ow_row + 1), ow_ptr.eq(ow_ptr + x.params.out_stride),
                             ow_word.eq(ow_hw), ow_byte.eq(ow_ho)]
        m.d.comb += self.nm_done.eq(x.nm_on & ~x.nm_start & (ow_row == x.nm_rows))
        m.d.comb += [self.wr.valid.eq(self.y.valid & ow_on),
                     self.wr.payload.addr.eq(ow_ptr + ow_word),
                     self.wr.payload.data.eq(yb << (ow_byte * 8)),
                     self.wr.payload.strb.eq(Const((1 << NL) - 1, MB) << ow_byte)]
        return m


class AttentionEngine(wiring.Component):
    """Attention controller + MatmulEngine + SoftmaxUnit + Normaliser.

    Ports: ``cmd`` (`attention_command_layout`, taken when idle),
    ``rd_req`` / ``rd_resp`` / ``wr`` (the `MatmulEngine` memory port
    contract: in-order responses; a write accepted before a read request
    must be visible to it), ``busy``, ``done`` (one-cycle pulse after the
    last output write), ``phase`` (a `Phase` value) and ``softmax_busy``
    (a tile is in the softmax), for tracing.

    With ``matmul_port=True`` the engine also lends its array to plain matmuls:
    ``mm_cmd`` (`isa.matmul_command_layout`, taken while attention is idle) runs one
    command on the internal `MatmulEngine` with its writes going out on ``wr``,
    and ``mm_done`` pulses when it finishes, exactly as the engine's own ``cmd``
    and ``done`` would. The `Machine` uses this so one array serves both MATMUL
    and ATTENTION (the array and its requantisers are most of the DSPs).

    The controller is the phases of the module docstring, one component each:
    `_CommandSequencer` and `_TileIssuer` (which array command runs next),
    `_ScoreFeeder` (S tiles into the softmax), `_ProbWriter` (P rows and row
    info), `_Accumulator` (O from the PV writes), `_NormFeeder` and
    `_OutputWriter` (the normalise phase); this top only joins them and shares
    the memory port.
    """

    def __init__(self, cfg: AttentionConfig, table=None, *, matmul_port=False):
        cfg.check_engine()
        self.cfg = cfg
        self.table = table
        self.matmul_port = matmul_port
        e = cfg.engine
        lend = ({"mm_cmd": In(stream.Signature(matmul_command_layout(e))), "mm_done": Out(1)}
                if matmul_port else {})
        super().__init__({**lend,
            "cmd": In(stream.Signature(attention_command_layout(cfg))),
            "mem": Out(MemPort.for_config(e)),
            "busy": Out(1), "done": Out(1), "phase": Out(Phase), "softmax_busy": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        c = self.cfg
        m.submodules.mm = mm = MatmulEngine(c.engine)
        m.submodules.softmax = sm = SoftmaxUnit(c, self.table)
        m.submodules.norm = norm = Normaliser(c)
        m.submodules.seq = seq = _CommandSequencer(c)
        m.submodules.issuer = iss = _TileIssuer(c)
        m.submodules.scores = sf = _ScoreFeeder(c)
        m.submodules.pwriter = pw = _ProbWriter(c)
        m.submodules.acc = acc = _Accumulator(c)
        m.submodules.nfeed = nf = _NormFeeder(c)
        m.submodules.owriter = ow = _OutputWriter(c)

        wiring.connect(m, seq.ctx, iss.ctx, sf.ctx, pw.ctx, acc.ctx, nf.ctx, ow.ctx)
        wiring.connect(m, seq.tiles, iss.tiles)
        wiring.connect(m, sf.sm, pw.sm)
        wiring.connect(m, sf.scores, sm.scores)
        wiring.connect(m, sm.probs, pw.probs)
        wiring.connect(m, acc.info, pw.info_ac)
        wiring.connect(m, nf.info, pw.info_nm)
        wiring.connect(m, nf.o, acc.o_nm)
        wiring.connect(m, nf.l_in, norm.l_in)
        wiring.connect(m, nf.o_in, norm.o_in)
        wiring.connect(m, norm.out, ow.y)
        wiring.connect(m, wiring.flipped(self.cmd), seq.cmd)
        m.d.comb += [iss.mm_done.eq(mm.done), seq.mm_done.eq(mm.done),
                     iss.sm_take.eq(sf.sm.start), iss.sm_fin.eq(pw.sm.fin),
                     sf.s_full.eq(iss.s_full), sf.batch.eq(iss.batch),
                     iss.s_wr.eq(sf.wr_en),
                     sf.sm_room.eq(iss.sm_room), acc.pv_par.eq(iss.pv_par),
                     acc.pv_first.eq(iss.pv_first), nf.pv_par.eq(iss.pv_par),
                     nf.pv_hpar.eq(iss.pv_hpar),
                     seq.nm_done.eq(ow.nm_done), seq.sm_on.eq(sf.sm.on),
                     self.busy.eq(seq.busy), self.done.eq(seq.done), self.phase.eq(seq.phase),
                     self.softmax_busy.eq(sf.sm.on)]

        # Reads are the matmul engine's alone. Its writes (S and PV rows) are
        # taken here, always at once, exactly like the reference memory would.
        wiring.connect(m, mm.mem.rd_req, wiring.flipped(self.mem.rd_req))
        wiring.connect(m, wiring.flipped(self.mem.rd_resp), mm.mem.rd_resp)
        # a lent matmul (`mm_cmd`) owns the array from acceptance to its done
        # pulse; its writes bypass the scratch snoop and leave through `wr`
        lent = Signal()
        snoop = mm.mem.wr.valid & ~lent
        m.d.comb += [iss.lent.eq(lent), seq.lent.eq(lent),
                     sf.wr.eq(mm.mem.wr.payload), sf.wr_en.eq(snoop & ~iss.eng_pv),
                     acc.wr.eq(mm.mem.wr.payload), acc.wr_en.eq(snoop & iss.eng_pv),
                     mm.cmd.valid.eq(seq.mm_cmd.valid), mm.cmd.payload.eq(seq.mm_cmd.payload),
                     seq.mm_cmd.ready.eq(mm.cmd.ready)]
        if self.matmul_port:
            self._lend(m, mm, seq.busy, lent)
        else:
            m.d.comb += mm.mem.wr.ready.eq(1)

        # the write channel: P rows during softmax, outputs during normalise; both
        # writers see the port's ready and gate their own valid by the phase
        m.d.comb += [pw.wr.ready.eq(self.mem.wr.ready), ow.wr.ready.eq(self.mem.wr.ready)]
        with m.If(lent):
            m.d.comb += [self.mem.wr.valid.eq(mm.mem.wr.valid),
                         self.mem.wr.payload.eq(mm.mem.wr.payload),
                         mm.mem.wr.ready.eq(self.mem.wr.ready)]
        with m.Elif(seq.ctx.nm_on):
            m.d.comb += [self.mem.wr.valid.eq(ow.wr.valid), self.mem.wr.payload.eq(ow.wr.payload)]
        with m.Else():
            m.d.comb += [self.mem.wr.valid.eq(pw.wr.valid), self.mem.wr.payload.eq(pw.wr.payload)]
        return m

    def _lend(self, m, mm, busy, lent):
        """Run `mm_cmd` on the array while attention is idle; `lent` until its done."""
        take = self.mm_cmd.valid & ~busy & ~lent
        m.d.comb += [self.mm_cmd.ready.eq(~busy & ~lent & mm.cmd.ready),
                     self.mm_done.eq(lent & mm.done)]
        # The payload is chosen by `busy` (a register) alone: the sequencer issues
        # only while busy, a lent command is taken only while not. Choosing it by
        # `take` put the machine's command valid and `lent` in front of the matmul
        # writer's start arithmetic (out_base + (R-1) * out_stride).
        with m.If(~busy):
            m.d.comb += mm.cmd.payload.eq(self.mm_cmd.payload)
        with m.If(take):
            m.d.comb += mm.cmd.valid.eq(1)
            with m.If(mm.cmd.ready):
                m.d.sync += lent.eq(1)
        with m.If(lent & mm.done):
            m.d.sync += lent.eq(0)
        with m.If(~lent):
            m.d.comb += mm.mem.wr.ready.eq(1)
