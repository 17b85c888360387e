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
the engine never waits; a block's normalisation overlaps the next block's
first S commands. On diagonal tiles the S and PV commands skip the whole
array row blocks whose queries all precede the tile's first key, and S
stops at the block's last query, so large blocks waste few MACs on masked
keys. Every buffer has a size fixed by the configuration
(two S tiles, two P tiles, one block of O): nothing grows with the sequence
length except the KV cache. `sim/cycles/attention.py` reproduces the timing.
"""
from amaranth.hdl import *
from amaranth.lib import data, enum, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from .attention_config import AttentionConfig
from .intarith import round_shift
from .isa import attention_command_layout, matmul_command_layout
from .matmul import MatmulEngine
from .memport import MemPort
from .normalise import Normaliser
from .softmax import SoftmaxUnit

__all__ = ["AttentionEngine", "Phase"]


class Phase(enum.Enum, shape=3):
    """The engine's `phase` output: the command sequencer's state, one value per state."""
    IDLE = 0      #: waiting for a command
    DECIDE = 1    #: choosing the next matmul (S of the next tile, or PV of a ready one)
    S_CMD = 2     #: presenting an S = Q Kᵀ tile command to the array
    PV_CMD = 3    #: presenting a P V tile command
    WAIT = 4      #: the array runs the command
    NORM = 5      #: the normaliser finishes the head's last block
    NEXT = 6      #: the next row block of the head
    HEAD = 7      #: the next head's bases are set


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
        c, e = self.cfg, self.cfg.engine
        R, MB, SPW, T = c.rows, e.mem_bytes, c.scores_per_word, c.tile   # R: block rows
        LN, NL, BPR = c.lanes, c.norm_lanes, c.beats_per_row
        SS, PS, PVS = c.s_stride, c.p_stride, c.pv_stride
        PVS_LOG = PVS.bit_length() - 1
        off = c.scratch_offsets()

        m.submodules.mm = mm = MatmulEngine(e)
        m.submodules.softmax = sm = SoftmaxUnit(c, self.table)
        m.submodules.norm = norm = Normaliser(c)

        # ---------------- memory port ----------------------------------------------
        # Reads are the matmul engine's alone. Its writes (S and PV rows) are
        # taken here, always at once, exactly like the reference memory would.
        m.d.comb += [self.mem.rd_req.valid.eq(mm.mem.rd_req.valid),
                     self.mem.rd_req.payload.eq(mm.mem.rd_req.payload),
                     mm.mem.rd_req.ready.eq(self.mem.rd_req.ready),
                     mm.mem.rd_resp.valid.eq(self.mem.rd_resp.valid),
                     mm.mem.rd_resp.payload.eq(self.mem.rd_resp.payload),
                     self.mem.rd_resp.ready.eq(mm.mem.rd_resp.ready)]
        # a lent matmul (`mm_cmd`) owns the array from acceptance to its done
        # pulse; its writes bypass the scratch snoop and leave through `wr`
        lent = Signal()
        snoop = mm.mem.wr.valid & ~lent
        wr_ready = self.mem.wr.ready

        # ---------------- command registers and loop counters ----------------------
        cmd = Signal(attention_command_layout(c))
        busy = Signal()
        done = Signal()
        m.d.sync += done.eq(0)
        m.d.comb += [self.busy.eq(busy), self.done.eq(done), self.cmd.ready.eq(~busy & ~lent)]
        accept = self.cmd.valid & ~busy & ~lent
        if self.matmul_port:
            self._lend(m, mm, busy, lent)
        else:
            m.d.comb += mm.mem.wr.ready.eq(1)
        p = self.cmd.payload

        def addr(name):
            return Signal(e.addr_bits, name=name)

        tk = Signal(range(2 * c.max_seq + 1))       # keys = offset + tq
        h = Signal(range(257))                      # head
        hq, hk, hv = addr("hq"), addr("hk"), addr("hv")
        m0 = Signal(range(c.max_seq + R + 1))      # first query of the block
        rows_b = Signal(range(R + 1))               # queries in the block
        qb, ob = addr("qb"), addr("ob")             # Q row m0 of this head, output row m0
        wpv = Signal(range(PVS + 1))                # O words per row: ceil(D / SPW)
        nbeats = Signal(range(c.max_d_head + 1))    # normaliser beats per row: D / NL
        # output byte position of this head within a row, as (word, byte); the
        # next head's is captured when the writer finishes the head's first row
        hw, ho = addr("hw"), Signal(range(MB))
        nhw, nho = addr("nhw"), Signal(range(MB))
        scratch = {k: addr(f"scratch_{k}") for k in ("zero", "p", "s", "pv")}
        last_q = Signal(range(2 * c.max_seq + R + 1))  # offset + m0 + rows_b - 1
        m.d.comb += last_q.eq(cmd.offset + m0 + rows_b - 1)

        # command sequencer: next S tile (k0, K pointer, half), next PV tile
        es_k0, ep_k0 = Signal(range(c.max_seq + T + 1)), Signal(range(c.max_seq + T + 1))
        es_kp, ep_vp = addr("es_kp"), addr("ep_vp")
        es_par, ep_par = Signal(), Signal()
        ahead = Signal(range(3))            # S commands issued - PV commands issued
        sm_ready = Signal(range(3))         # softmaxed tiles whose PV is not yet issued
        s_full = Signal(range(3))           # S tiles done but not yet softmaxed
        eng_pv = Signal()                   # the running command is a PV
        pv_par = Signal()                   # ... and its half
        pv_first = Signal()                 # ... is the row block's first tile
        sm_fin = Signal()                   # softmax of a tile finished (pulse)
        sm_take = Signal()                  # softmax takes an S tile (pulse)
        s_issue, pv_issue = Signal(), Signal()
        s_done = mm.done & ~eng_pv & ~lent
        m.d.sync += [ahead.eq(ahead + s_issue - pv_issue),
                     sm_ready.eq(sm_ready + sm_fin - pv_issue),
                     s_full.eq(s_full + s_done - sm_take)]
        nm_start, nm_done = Signal(), Signal()
        nm_on = Signal()                    # between nm_start and the last output write
        blk_start = Signal()                # resets the softmax sequencer
        # the block being normalised (the sequencer may already be in the next one)
        nm_rows = Signal.like(rows_b)
        nm_first = Signal()                 # ... is the head's first block
        with m.If(nm_start):
            m.d.sync += [nm_on.eq(1), nm_rows.eq(rows_b), nm_first.eq(m0 == 0)]
        with m.If(nm_done):
            m.d.sync += nm_on.eq(0)

        def block_setup(m0_val, qb_val, ob_val):
            rem = cmd.tq - m0_val
            m.d.comb += blk_start.eq(1)
            m.d.sync += [m0.eq(m0_val), qb.eq(qb_val), ob.eq(ob_val),
                         rows_b.eq(Mux(rem > R, R, rem)),
                         es_k0.eq(0), ep_k0.eq(0), es_kp.eq(hk), ep_vp.eq(hv),
                         es_par.eq(0), ep_par.eq(0)]

        # Diagonal tiles: the array row blocks at the top of the block whose
        # queries all precede key k0 see none of the tile's keys, so its S and
        # PV commands start below them (their softmax rows read stale S words
        # but see no key: p = 0, delta = 0, O unchanged). Registered in DECIDE
        # (k0, m0 only change when leaving S_CMD / PV_CMD or in HEAD / NEXT).
        AR, GB = e.rows, R // e.rows

        def skipped_blocks(k0):
            first = cmd.offset + m0
            n = Const(0, range(GB))
            for b in range(1, GB):
                n = Mux(k0 >= first + b * AR, b, n)
            return n

        s_skip, p_skip = Signal(range(GB)), Signal(range(GB))   # array row blocks
        s_aoff = addr("s_aoff")                                 # s_skip rows of Q
        s_n = skipped_blocks(es_k0)
        m.d.sync += [s_skip.eq(s_n), p_skip.eq(skipped_blocks(ep_k0)),
                     s_aoff.eq(s_n * (AR * cmd.q_row_stride))]

        mc = mm.cmd.payload
        with m.FSM(name="ctrl"):
            with m.State("IDLE"):
                m.d.comb += self.phase.eq(Phase.IDLE)
                with m.If(accept):
                    m.d.sync += [cmd.eq(p), busy.eq(1), tk.eq(p.offset + p.tq), h.eq(0),
                                 hq.eq(p.q_base), hk.eq(p.k_base), hv.eq(p.v_base),
                                 hw.eq(0), ho.eq(0),
                                 wpv.eq((p.d_head + SPW - 1) // SPW),
                                 nbeats.eq(p.d_head // NL)]
                    for k in scratch:
                        m.d.sync += scratch[k].eq(p.scratch_base + off[k])
                    m.next = "HEAD"
            with m.State("HEAD"):
                # the head's bases are set; start its first block
                m.d.comb += self.phase.eq(Phase.HEAD)
                block_setup(0, hq, cmd.out_base)
                m.next = "DECIDE"
            with m.State("DECIDE"):
                # order S0, S1, PV0, S2, PV1, ...: S_{j+1} runs during softmax j;
                # two S / P halves, so S never gets more than 2 tiles ahead
                m.d.comb += self.phase.eq(Phase.DECIDE)
                with m.If((es_k0 <= last_q) & (ahead < 2)):
                    m.next = "S_CMD"
                with m.Elif(ep_k0 <= last_q):
                    with m.If(sm_ready != 0):
                        m.next = "PV_CMD"
                with m.Else():
                    # all PV done: normalise this block while the next one's
                    # first S commands run (its softmax waits for the phase)
                    m.d.comb += nm_start.eq(1)
                    m.next = "NEXT"
            with m.State("S_CMD"):
                m.d.comb += self.phase.eq(Phase.S_CMD)
                # keys past the block's last query are never visible to it:
                # a diagonal tile's S stops there (the softmax masks the rest)
                n_keys = Mux(last_q + 1 - es_k0 > T, T, last_q + 1 - es_k0)
                m.d.comb += [mm.cmd.valid.eq(1), mc.m.eq(rows_b - s_skip * AR),
                             mc.k.eq(cmd.d_head), mc.n.eq(n_keys), mc.a_base.eq(qb + s_aoff),
                             mc.a_stride.eq(cmd.q_row_stride),
                             mc.w_base.eq(es_kp), mc.p_base.eq(scratch["zero"]),
                             mc.out_base.eq(scratch["s"] + Mux(es_par, R * SS, 0)
                                            + s_skip * (AR * SS)),
                             mc.out_stride.eq(SS), mc.a_signed.eq(1), mc.raw_out.eq(1)]
                with m.If(mm.cmd.ready):
                    m.d.comb += s_issue.eq(1)
                    m.d.sync += [es_k0.eq(es_k0 + T), es_kp.eq(es_kp + cmd.k_tile_stride),
                                 es_par.eq(~es_par), eng_pv.eq(0)]
                    m.next = "WAIT"
            with m.State("PV_CMD"):
                m.d.comb += self.phase.eq(Phase.PV_CMD)
                # k = the whole tile: P is 0 for absent keys, so the V cache keeps
                # one fixed layout per tile however many keys it holds
                m.d.comb += [mm.cmd.valid.eq(1), mc.m.eq(rows_b - p_skip * AR), mc.k.eq(T),
                             mc.n.eq(cmd.d_head),
                             mc.a_base.eq(scratch["p"] + Mux(ep_par, R * PS, 0)
                                          + p_skip * (AR * PS)),
                             mc.a_stride.eq(PS), mc.w_base.eq(ep_vp),
                             mc.p_base.eq(scratch["zero"]),
                             mc.out_base.eq(scratch["pv"] + p_skip * (AR * PVS)),
                             mc.out_stride.eq(PVS), mc.a_signed.eq(0), mc.raw_out.eq(1)]
                with m.If(mm.cmd.ready):
                    m.d.comb += pv_issue.eq(1)
                    m.d.sync += [ep_k0.eq(ep_k0 + T), ep_vp.eq(ep_vp + cmd.v_tile_stride),
                                 ep_par.eq(~ep_par), eng_pv.eq(1), pv_par.eq(ep_par),
                                 pv_first.eq(ep_k0 == 0)]
                    m.next = "WAIT"
            with m.State("WAIT"):
                m.d.comb += self.phase.eq(Phase.WAIT)
                with m.If(mm.done):
                    m.next = "DECIDE"
            with m.State("NEXT"):
                m.d.comb += self.phase.eq(Phase.NEXT)
                with m.If(m0 + R < cmd.tq):
                    block_setup(m0 + R, qb + cmd.q_row_stride * R, ob + cmd.out_stride * R)
                    m.next = "DECIDE"
                with m.Else():
                    # a new head needs the output offset the normalise phase
                    # finds; the end of the command needs every output written
                    m.next = "NORM"
            with m.State("NORM"):
                m.d.comb += self.phase.eq(Phase.NORM)
                with m.If(nm_done):
                    with m.If(h + 1 < cmd.n_head):
                        m.d.sync += [h.eq(h + 1), hq.eq(hq + cmd.q_head_stride),
                                     hk.eq(hk + cmd.k_head_stride),
                                     hv.eq(hv + cmd.v_head_stride), hw.eq(nhw), ho.eq(nho)]
                        m.next = "HEAD"
                    with m.Else():
                        m.d.sync += [busy.eq(0), done.eq(1)]
                        m.next = "IDLE"

        # ---------------- on-chip S tiles (two halves) ---------------------------------
        m.submodules.sbuf = sbuf = Memory(shape=unsigned(8 * MB), depth=2 * R * SS, init=[])
        s_w = sbuf.write_port(granularity=8)
        s_r = sbuf.read_port(transparent_for=())
        m.d.comb += [s_w.addr.eq(mm.mem.wr.payload.addr - scratch["s"]),
                     s_w.data.eq(mm.mem.wr.payload.data),
                     s_w.en.eq(Mux(snoop & ~eng_pv, mm.mem.wr.payload.strb, 0))]

        # ---------------- row info: delta and L per row, two halves --------------------
        info = data.StructLayout({"delta": range(33), "l_sum": unsigned(32)})
        m.submodules.info = info_mem = Memory(shape=info, depth=2 * R, init=[])
        info_w = info_mem.write_port()
        info_ac = info_mem.read_port(transparent_for=())
        info_nm = info_mem.read_port(transparent_for=())

        # ---------------- softmax sequencer -------------------------------------------
        sm_on = Signal()
        sm_k0 = Signal(range(c.max_seq + T + 1))
        sm_par = Signal()
        sm_nkeys = Signal(range(T + 1))
        sm_start = Signal()
        m.d.comb += [sm_take.eq(~sm_on & (s_full != 0) & ~blk_start & ~nm_on), sm_start.eq(sm_take),
                     self.softmax_busy.eq(sm_on)]
        with m.If(blk_start):
            m.d.sync += [sm_k0.eq(0), sm_par.eq(0)]
        with m.If(sm_start):
            m.d.sync += [sm_on.eq(1), sm_nkeys.eq(Mux(tk - sm_k0 > T, T, tk - sm_k0))]
        with m.If(sm_fin):
            m.d.sync += [sm_on.eq(0), sm_k0.eq(sm_k0 + T), sm_par.eq(~sm_par)]

        # S words -> softmax beats (lanes scores each). The read port's data
        # register holds the current word; a row ends after BPR beats, dropping
        # the rest of its last word.
        sg_row, sg_w = Signal(range(R + 1)), Signal(range(SS))
        sg_ptr = Signal(range(2 * R * SS + 1))
        sg_valid = Signal()
        sg_take = Signal()
        sg_adv = ~sg_valid | sg_take
        sg_more = sm_on & (sg_row != rows_b)
        with m.If(sm_start):
            m.d.sync += [sg_row.eq(0), sg_w.eq(0), sg_ptr.eq(Mux(sm_par, R * SS, 0))]
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
        sp = sm.scores.payload
        m.d.comb += [sm.scores.valid.eq(sg_valid),
                     sp.row.eq(gb_row), sp.qpos.eq(cmd.offset + m0 + gb_row), sp.k0.eq(sm_k0),
                     sp.n_keys.eq(sm_nkeys), sp.mult.eq(cmd.score_mult),
                     sp.shift.eq(cmd.score_shift)]
        for l in range(LN):
            m.d.comb += sp.s[l].eq(s_r.data.word_select(gb_sub * LN + l, 32))
        feed = sm.scores.valid & sm.scores.ready
        row_end = gb_beat == BPR - 1
        with m.If(feed):
            m.d.sync += [gb_beat.eq(gb_beat + 1), gb_sub.eq(gb_sub + 1)]
            with m.If(row_end | (gb_sub == SPW // LN - 1)):
                m.d.comb += sg_take.eq(1)
                m.d.sync += gb_sub.eq(0)
            with m.If(row_end):
                m.d.sync += [gb_beat.eq(0), gb_row.eq(gb_row + 1)]

        # P writer: one write (lanes bytes) per probability beat, into P half sm_par
        pw_row = Signal(range(R + 1))
        pw_ptr = addr("pw_ptr")
        pw_word = Signal(range(PS + 1))
        pw_byte = Signal(range(MB))
        pr = sm.probs.payload
        p_bytes = Cat(*[pr.p[l] for l in range(LN)])
        with m.If(sm_start):
            m.d.sync += [pw_row.eq(0), pw_word.eq(0), pw_byte.eq(0),
                         pw_ptr.eq(scratch["p"] + Mux(sm_par, R * PS, 0))]
        p_on = sm_on & ~nm_on & (pw_row != rows_b)   # the write channel is ours
        take_p = sm.probs.valid & p_on & wr_ready
        m.d.comb += sm.probs.ready.eq(p_on & wr_ready)
        m.d.comb += [info_w.addr.eq(Cat(pr.row, sm_par) if R & (R - 1) == 0 and R > 1
                                    else pr.row + Mux(sm_par, R, 0)),
                     info_w.data.delta.eq(pr.delta), info_w.data.l_sum.eq(pr.l_sum),
                     info_w.en.eq(take_p & pr.last)]
        with m.If(take_p):
            m.d.sync += pw_byte.eq(pw_byte + LN)
            with m.If(pw_byte == MB - LN):
                m.d.sync += [pw_byte.eq(0), pw_word.eq(pw_word + 1)]
            with m.If(pr.last):
                m.d.sync += [pw_row.eq(pw_row + 1), pw_ptr.eq(pw_ptr + PS),
                             pw_word.eq(0), pw_byte.eq(0)]
        m.d.comb += sm_fin.eq(sm_on & ~sm_start & (pw_row == rows_b))

        # ---------------- accumulator: O updated by the PV command's writes ------------
        # A (write beat): read O and the row's delta; B: O = rs(O, delta) + PV per
        # written int32 lane. The read is transparent, so a word written in two
        # beats back to back (several segments per word) accumulates both.
        word = data.ArrayLayout(signed(32), SPW)
        m.submodules.obuf = obuf = Memory(shape=word, depth=R * PVS, init=[])
        o_w = obuf.write_port(granularity=1)  # one enable per int32 lane
        o_ac = obuf.read_port(transparent_for=(o_w,))
        o_nm = obuf.read_port(transparent_for=())
        pv_off = Signal(range(R * PVS))
        m.d.comb += pv_off.eq(mm.mem.wr.payload.addr - scratch["pv"])
        pv_row = pv_off[PVS_LOG:] if PVS_LOG < len(pv_off) else Const(0, 1)
        m.d.comb += [o_ac.addr.eq(pv_off), o_ac.en.eq(1),
                     info_ac.addr.eq(pv_row + Mux(pv_par, R, 0)), info_ac.en.eq(1)]
        b_valid = Signal()
        b_pv = Signal(word)
        b_addr = Signal.like(o_w.addr)
        b_lanes = Signal(SPW)
        m.d.sync += [b_valid.eq(snoop & eng_pv), b_pv.eq(mm.mem.wr.payload.data), b_addr.eq(pv_off),
                     b_lanes.eq(Cat(*[mm.mem.wr.payload.strb[4 * l] for l in range(SPW)]))]
        m.d.comb += [o_w.addr.eq(b_addr), o_w.en.eq(Mux(b_valid, b_lanes, 0))]
        for l in range(SPW):
            old = round_shift(o_ac.data[l], info_ac.data.delta, 34)
            m.d.comb += o_w.data[l].eq(Mux(pv_first, 0, old) + b_pv[l])

        # ---------------- normalise phase --------------------------------------------
        # row sums of the last tile -> l_in (the read port's data register holds the beat)
        lf_row = Signal(range(R + 1))
        lf_valid = Signal()
        lf_adv = ~lf_valid | norm.l_in.ready
        lf_more = nm_on & (lf_row != nm_rows)
        with m.If(nm_start):
            m.d.sync += lf_row.eq(0)
        m.d.comb += [info_nm.addr.eq(lf_row + Mux(pv_par, R, 0)), info_nm.en.eq(lf_adv),
                     norm.l_in.valid.eq(lf_valid), norm.l_in.payload.l_sum.eq(info_nm.data.l_sum),
                     norm.l_in.payload.out_mult.eq(cmd.out_mult),
                     norm.l_in.payload.out_shift.eq(cmd.out_shift)]
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
            m.d.sync += [of_row.eq(0), of_w.eq(0), of_ptr.eq(0), of_sub.eq(0), of_beat.eq(0)]
        m.d.comb += [o_nm.addr.eq(of_ptr + of_w), o_nm.en.eq(of_adv)]
        with m.If(of_adv & ~nm_start):
            m.d.sync += of_valid.eq(of_more)
            with m.If(of_more):
                m.d.sync += of_w.eq(of_w + 1)
                with m.If(of_w == wpv - 1):
                    m.d.sync += [of_w.eq(0), of_row.eq(of_row + 1), of_ptr.eq(of_ptr + PVS)]
        op = norm.o_in.payload
        m.d.comb += [norm.o_in.valid.eq(of_valid), op.last.eq(of_beat == nbeats - 1)]
        for l in range(NL):
            m.d.comb += op.o[l].eq(o_nm.data.as_value().word_select(of_sub * NL + l, 32))
        feed_o = norm.o_in.valid & norm.o_in.ready
        with m.If(feed_o):
            m.d.sync += [of_beat.eq(of_beat + 1), of_sub.eq(of_sub + 1)]
            with m.If(op.last | (of_sub == SPW // NL - 1)):
                m.d.comb += of_take.eq(1)
                m.d.sync += of_sub.eq(0)
            with m.If(op.last):
                m.d.sync += of_beat.eq(0)

        # output writer: norm_lanes int8 per write at the head's byte offset
        ow_row = Signal(range(R + 1))
        ow_ptr = addr("ow_ptr")
        ow_word, ow_byte = addr("ow_word"), Signal(range(MB))
        with m.If(nm_start):
            m.d.sync += [ow_row.eq(0), ow_ptr.eq(ob), ow_word.eq(hw), ow_byte.eq(ho)]
        ow_on = nm_on & (ow_row != nm_rows)
        yb = Cat(*[norm.out.payload.y[l] for l in range(NL)])
        m.d.comb += norm.out.ready.eq(ow_on & wr_ready)
        with m.If(norm.out.valid & norm.out.ready):
            nb = ow_byte + NL
            m.d.sync += ow_byte.eq(nb)
            with m.If(nb == MB):
                m.d.sync += [ow_byte.eq(0), ow_word.eq(ow_word + 1)]
            with m.If(norm.out.payload.last):
                m.d.sync += [ow_row.eq(ow_row + 1), ow_ptr.eq(ow_ptr + cmd.out_stride),
                             ow_word.eq(hw), ow_byte.eq(ho)]
                with m.If((ow_row == 0) & nm_first):
                    # the end of the head's first row is where the next head starts
                    m.d.sync += [nhw.eq(Mux(nb == MB, ow_word + 1, ow_word)),
                                 nho.eq(Mux(nb == MB, 0, nb))]
        m.d.comb += nm_done.eq(nm_on & ~nm_start & (ow_row == nm_rows))

        # controller write port: P rows during softmax, outputs during normalise
        with m.If(lent):
            m.d.comb += [self.mem.wr.valid.eq(mm.mem.wr.valid), self.mem.wr.payload.eq(mm.mem.wr.payload),
                         mm.mem.wr.ready.eq(self.mem.wr.ready)]
        with m.Elif(nm_on):
            m.d.comb += [self.mem.wr.valid.eq(norm.out.valid & ow_on),
                         self.mem.wr.payload.addr.eq(ow_ptr + ow_word),
                         self.mem.wr.payload.data.eq(yb << (ow_byte * 8)),
                         self.mem.wr.payload.strb.eq(Const((1 << NL) - 1, MB) << ow_byte)]
        with m.Else():
            m.d.comb += [self.mem.wr.valid.eq(sm.probs.valid & p_on),
                         self.mem.wr.payload.addr.eq(pw_ptr + pw_word),
                         self.mem.wr.payload.data.eq(p_bytes << (pw_byte * 8)),
                         self.mem.wr.payload.strb.eq(Const((1 << LN) - 1, MB) << pw_byte)]
        return m

    def _lend(self, m, mm, busy, lent):
        """Run `mm_cmd` on the array while attention is idle; `lent` until its done."""
        take = self.mm_cmd.valid & ~busy & ~lent
        m.d.comb += [self.mm_cmd.ready.eq(~busy & ~lent & mm.cmd.ready),
                     self.mm_done.eq(lent & mm.done)]
        with m.If(take):
            m.d.comb += [mm.cmd.valid.eq(1), mm.cmd.payload.eq(self.mm_cmd.payload)]
            with m.If(mm.cmd.ready):
                m.d.sync += lent.eq(1)
        with m.If(lent & mm.done):
            m.d.sync += lent.eq(0)
        with m.If(~lent):
            m.d.comb += mm.mem.wr.ready.eq(1)
