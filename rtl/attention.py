"""The attention engine: causal multi-head attention on the shared matmul engine.

One command computes `attention(qkv)` for all heads of one layer, prefill
(Tq queries at positions offset .. offset+Tq-1) or decode (Tq = 1) against
K/V caches of Tk = offset + Tq keys in memory, bit-exact with
`intmodel.attention_head` per head. Per head, per block of `rows` queries,
per key tile j (only tiles holding a key visible to the block):

1. S = Q_blk @ K_jᵀ        matmul command (int8, raw int32) -> S scratch
2. softmax phase:         S rows -> `SoftmaxUnit` -> P rows (uint8) -> P scratch,
                          per row delta and L -> row-info memory
3. PV = P @ V_j           matmul command (uint8 A, raw int32) -> PV scratch
4. accumulate phase:      O[r] = round_shift(O[r], delta[r]) + PV[r] in the
                          on-chip accumulator buffer (rows x max_d_head int32)
5. after the last tile:   normalise phase, O rows and L -> `Normaliser` -> int8
                          output row segments in memory

The matmul engine is used unmodified through its command port; the memory
port is handed to it while it is busy and to the controller otherwise. Every
buffer has a size fixed by the configuration (one tile of S / P / PV rows,
one block of O): nothing grows with the sequence length except the KV cache.
The phases run one after another, so the time of a command is a sum of
per-phase times that `sim/attention_cycles.py` reproduces exactly.
"""
from amaranth.hdl import *
from amaranth.lib import wiring, stream, data, fifo
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from .attention_config import AttentionConfig
from .config import EngineConfig
from .intarith import round_shift
from .matmul import MatmulEngine, read_request_layout, read_response_layout, write_layout
from .normalise import Normaliser
from .softmax import SoftmaxUnit

__all__ = ["AttentionEngine", "ReadQueue", "attention_command_layout", "Phase"]


class Phase:
    """Values of the engine's `phase` output (for tracing and the cycle-model tests)."""
    IDLE, S_CMD, S_WAIT, SOFTMAX, PV_CMD, PV_WAIT, ACC, NORM, NEXT = range(9)


def attention_command_layout(cfg: AttentionConfig):
    """One layer's attention. Addresses and strides are in memory words.

    - ``n_head`` >= 1, ``d_head`` (D >= 1, a multiple of norm_lanes), ``tq`` >= 1
      (queries), ``offset`` (position of query 0; Tk = offset + tq <= max_seq keys);
    - Q of head h, query i: A row at ``q_base + h*q_head_stride + i*q_row_stride``;
    - K cache of head h, key tile j: Kᵀ [D, tile] in W layout at
      ``k_base + h*k_head_stride + j*k_tile_stride``;
    - V cache likewise: V [tile, D] in W layout (`v_*`);
    - output: query i, head h occupies bytes h*D .. h*D+D-1 of the row at
      ``out_base + i*out_stride`` (the [T, E] int8 layout c_proj reads);
    - ``scratch_base``: `AttentionConfig.scratch_offsets()`; its first
      `zero_words` words must be zero;
    - score and output requantisers (numerics §4.2, §4.5).
    """
    e = cfg.engine
    addr = unsigned(e.addr_bits)
    return data.StructLayout({
        "n_head": range(1, 257), "d_head": range(cfg.max_d_head + 1),
        "tq": range(cfg.max_seq + 1), "offset": range(cfg.max_seq),
        "q_base": addr, "q_row_stride": addr, "q_head_stride": addr,
        "k_base": addr, "k_tile_stride": addr, "k_head_stride": addr,
        "v_base": addr, "v_tile_stride": addr, "v_head_stride": addr,
        "out_base": addr, "out_stride": addr, "scratch_base": addr,
        "score_mult": unsigned(e.mult_bits), "score_shift": range(e.max_shift + 1),
        "out_mult": unsigned(e.mult_bits), "out_shift": range(e.max_shift + 1),
    })


class ReadQueue(wiring.Component):
    """Memory reads as a stream: addresses in, words out, in order.

    Requests are only issued while fewer than `depth` words are requested or
    buffered but not yet taken, so the response FIFO never overflows and a
    slow consumer simply throttles the requests.
    """

    def __init__(self, cfg: EngineConfig, depth):
        self.depth = depth
        super().__init__({
            "addr": In(stream.Signature(read_request_layout(cfg))),
            "rd_req": Out(stream.Signature(read_request_layout(cfg))),
            "rd_resp": In(stream.Signature(read_response_layout(cfg))),
            "data": Out(stream.Signature(read_response_layout(cfg))),
        })

    def elaborate(self, platform):
        m = Module()
        m.submodules.buf = buf = fifo.SyncFIFOBuffered(
            width=len(self.data.payload.data), depth=self.depth)
        credits = Signal(range(self.depth + 1), init=self.depth)
        can = credits != 0
        m.d.comb += [self.rd_req.valid.eq(self.addr.valid & can),
                     self.rd_req.payload.eq(self.addr.payload),
                     self.addr.ready.eq(self.rd_req.ready & can),
                     buf.w_data.eq(self.rd_resp.payload.data),
                     buf.w_en.eq(self.rd_resp.valid),
                     self.rd_resp.ready.eq(buf.w_rdy),
                     self.data.valid.eq(buf.r_rdy), self.data.payload.data.eq(buf.r_data),
                     buf.r_en.eq(self.data.ready)]
        issue = self.rd_req.valid & self.rd_req.ready
        taken = self.data.valid & self.data.ready
        m.d.sync += credits.eq(credits - issue + taken)
        return m


class AttentionEngine(wiring.Component):
    """Attention controller + MatmulEngine + SoftmaxUnit + Normaliser.

    Ports: ``cmd`` (`attention_command_layout`, taken when idle),
    ``rd_req`` / ``rd_resp`` / ``wr`` (the `MatmulEngine` memory port
    contract: in-order responses), ``busy``, ``done`` (one-cycle pulse after
    the last output write), ``phase`` (a `Phase` value, for tracing).
    """

    def __init__(self, cfg: AttentionConfig, table=None):
        cfg.check_engine()
        self.cfg = cfg
        self.table = table
        e = cfg.engine
        super().__init__({
            "cmd": In(stream.Signature(attention_command_layout(cfg))),
            "rd_req": Out(stream.Signature(read_request_layout(e))),
            "rd_resp": In(stream.Signature(read_response_layout(e))),
            "wr": Out(stream.Signature(write_layout(e))),
            "busy": Out(1), "done": Out(1), "phase": Out(4),
        })

    def elaborate(self, platform):
        m = Module()
        c, e = self.cfg, self.cfg.engine
        R, MB, SPW, T = e.rows, e.mem_bytes, c.scores_per_word, c.tile
        LN, NL, BPR = c.lanes, c.norm_lanes, c.beats_per_row
        OWR = c.o_words_per_row
        off = c.scratch_offsets()

        m.submodules.mm = mm = MatmulEngine(e)
        m.submodules.softmax = sm = SoftmaxUnit(c, self.table)
        m.submodules.norm = norm = Normaliser(c)
        m.submodules.rq = rq = ReadQueue(e, e.max_outstanding)

        # ---------------- memory port: the matmul engine owns it while busy --------
        own = mm.busy
        wr_c = Signal.like(self.wr.payload)      # controller's write beat
        wr_c_valid = Signal()
        m.d.comb += [
            self.rd_req.valid.eq(Mux(own, mm.rd_req.valid, rq.rd_req.valid)),
            self.rd_req.payload.eq(Mux(own, mm.rd_req.payload, rq.rd_req.payload)),
            mm.rd_req.ready.eq(self.rd_req.ready & own),
            rq.rd_req.ready.eq(self.rd_req.ready & ~own),
            mm.rd_resp.payload.eq(self.rd_resp.payload), rq.rd_resp.payload.eq(self.rd_resp.payload),
            mm.rd_resp.valid.eq(self.rd_resp.valid & own),
            rq.rd_resp.valid.eq(self.rd_resp.valid & ~own),
            self.rd_resp.ready.eq(Mux(own, mm.rd_resp.ready, rq.rd_resp.ready)),
            self.wr.valid.eq(Mux(own, mm.wr.valid, wr_c_valid)),
            self.wr.payload.eq(Mux(own, mm.wr.payload, wr_c)),
            mm.wr.ready.eq(self.wr.ready & own),
        ]
        wr_c_ready = self.wr.ready & ~own

        # ---------------- command registers and loop counters ----------------------
        cmd = Signal(attention_command_layout(c))
        busy = Signal()
        done = Signal()
        m.d.sync += done.eq(0)
        m.d.comb += [self.busy.eq(busy), self.done.eq(done), self.cmd.ready.eq(~busy)]
        accept = self.cmd.valid & ~busy
        p = self.cmd.payload

        def addr(name=None):
            return Signal(e.addr_bits, name=name)

        tk = Signal(range(2 * c.max_seq + 1))       # keys = offset + tq
        h = Signal(range(257))                      # head
        hq, hk, hv = addr("hq"), addr("hk"), addr("hv")         # head bases of Q, K, V
        m0 = Signal(range(c.max_seq + R + 1))      # first query of the block
        rows_b = Signal(range(R + 1))               # queries in the block
        qb = addr("qb")                                 # Q row m0 of this head
        ob = addr("ob")                                 # output row m0
        k0 = Signal(range(c.max_seq + T + 1))      # first key of the tile
        kp, vp = addr("kp"), addr("vp")                     # K / V tile addresses
        n_keys = Signal(range(T + 1))
        wpv = Signal(range(OWR + 1))                # PV / O words per row: ceil(D / SPW)
        nbeats = Signal(range(c.max_d_head + 1))    # normaliser beats per row: D / NL
        # output byte position of this head within a row, as (word, byte); the
        # next head's is captured when the writer finishes the head's first row
        hw, ho = addr("hw"), Signal(range(MB))
        nhw, nho = addr("nhw"), Signal(range(MB))
        scratch = {k: addr(f"scratch_{k}") for k in ("zero", "s", "p", "pv")}
        last_q = Signal(range(2 * c.max_seq + R + 1))  # offset + m0 + rows_b - 1

        m.d.comb += last_q.eq(cmd.offset + m0 + rows_b - 1)

        # phase start strobes and done flags
        sm_start, ac_start, nm_start = Signal(), Signal(), Signal()
        sm_done, ac_done, nm_done = Signal(), Signal(), Signal()

        def block_setup(m0_val, qb_val, ob_val):
            rem = cmd.tq - m0_val
            m.d.sync += [m0.eq(m0_val), qb.eq(qb_val), ob.eq(ob_val),
                         rows_b.eq(Mux(rem > R, R, rem)), k0.eq(0), kp.eq(hk), vp.eq(hv),
                         n_keys.eq(Mux(tk > T, T, tk))]

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
                m.d.comb += self.phase.eq(Phase.NEXT)
                block_setup(0, hq, cmd.out_base)
                m.next = "S_CMD"
            with m.State("S_CMD"):
                m.d.comb += self.phase.eq(Phase.S_CMD)
                mc = mm.cmd.payload
                m.d.comb += [mm.cmd.valid.eq(1), mc.m.eq(rows_b), mc.k.eq(cmd.d_head),
                             mc.n.eq(n_keys), mc.a_base.eq(qb), mc.a_stride.eq(cmd.q_row_stride),
                             mc.w_base.eq(kp), mc.p_base.eq(scratch["zero"]),
                             mc.out_base.eq(scratch["s"]), mc.out_stride.eq(c.s_stride),
                             mc.a_signed.eq(1), mc.raw_out.eq(1)]
                with m.If(mm.cmd.ready):
                    m.next = "S_WAIT"
            with m.State("S_WAIT"):
                m.d.comb += self.phase.eq(Phase.S_WAIT)
                with m.If(mm.done):
                    m.d.comb += sm_start.eq(1)
                    m.next = "SOFTMAX"
            with m.State("SOFTMAX"):
                m.d.comb += self.phase.eq(Phase.SOFTMAX)
                with m.If(sm_done):
                    m.next = "PV_CMD"
            with m.State("PV_CMD"):
                m.d.comb += self.phase.eq(Phase.PV_CMD)
                mc = mm.cmd.payload
                # k = the whole tile: P is 0 for absent keys, so the V cache keeps
                # one fixed layout per tile however many keys it holds
                m.d.comb += [mm.cmd.valid.eq(1), mc.m.eq(rows_b), mc.k.eq(T),
                             mc.n.eq(cmd.d_head), mc.a_base.eq(scratch["p"]),
                             mc.a_stride.eq(c.p_stride), mc.w_base.eq(vp),
                             mc.p_base.eq(scratch["zero"]), mc.out_base.eq(scratch["pv"]),
                             mc.out_stride.eq(c.pv_stride), mc.a_signed.eq(0), mc.raw_out.eq(1)]
                with m.If(mm.cmd.ready):
                    m.next = "PV_WAIT"
            with m.State("PV_WAIT"):
                m.d.comb += self.phase.eq(Phase.PV_WAIT)
                with m.If(mm.done):
                    m.d.comb += ac_start.eq(1)
                    m.next = "ACC"
            with m.State("ACC"):
                m.d.comb += self.phase.eq(Phase.ACC)
                with m.If(ac_done):
                    nk0 = k0 + T
                    m.d.sync += [k0.eq(nk0), kp.eq(kp + cmd.k_tile_stride),
                                 vp.eq(vp + cmd.v_tile_stride),
                                 n_keys.eq(Mux(tk - nk0 > T, T, tk - nk0))]
                    with m.If(nk0 > last_q):
                        # no key of a later tile is visible to this block
                        m.d.comb += nm_start.eq(1)
                        m.next = "NORM"
                    with m.Else():
                        m.next = "S_CMD"
            with m.State("NORM"):
                m.d.comb += self.phase.eq(Phase.NORM)
                with m.If(nm_done):
                    m.next = "NEXT"
            with m.State("NEXT"):
                m.d.comb += self.phase.eq(Phase.NEXT)
                with m.If(m0 + R < cmd.tq):
                    block_setup(m0 + R, qb + cmd.q_row_stride * R, ob + cmd.out_stride * R)
                    m.next = "S_CMD"
                with m.Elif(h + 1 < cmd.n_head):
                    m.d.sync += [h.eq(h + 1), hq.eq(hq + cmd.q_head_stride),
                                 hk.eq(hk + cmd.k_head_stride), hv.eq(hv + cmd.v_head_stride),
                                 hw.eq(nhw), ho.eq(nho)]
                    m.next = "HEAD"
                with m.Else():
                    m.d.sync += [busy.eq(0), done.eq(1)]
                    m.next = "IDLE"

        # ---------------- row info: delta and L of each block row ------------------
        info = data.StructLayout({"delta": range(33), "l_sum": unsigned(32)})
        m.submodules.info = info_mem = Memory(shape=info, depth=R, init=[])
        info_w = info_mem.write_port()
        info_ac = info_mem.read_port(transparent_for=())
        info_nm = info_mem.read_port(transparent_for=())
        # ---------------- accumulator buffer: O of one block ------------------------
        word = data.ArrayLayout(signed(32), SPW)
        m.submodules.obuf = obuf = Memory(shape=word, depth=R * OWR, init=[])
        o_w = obuf.write_port()
        o_ac = obuf.read_port(transparent_for=())
        o_nm = obuf.read_port(transparent_for=())

        read_phase = Signal()   # 0: softmax phase reads S, 1: accumulate phase reads PV
        # ---------------- softmax phase -----------------------------------------
        # S address generator: rows_b rows x s_words words
        sa_on = Signal()
        sa_row, sa_w = Signal(range(R)), Signal(range(c.s_words))
        sa_ptr = addr("sa_ptr")
        # PV address generator (accumulate phase): rows_b rows x wpv words
        pa_on = Signal()
        pa_row, pa_w = Signal(range(R)), Signal(range(OWR))
        pa_ptr = addr("pa_ptr")
        m.d.comb += [rq.addr.valid.eq(sa_on | pa_on),
                     rq.addr.payload.addr.eq(Mux(sa_on, sa_ptr + sa_w, pa_ptr + pa_w))]
        with m.If(sm_start):
            m.d.sync += [sa_on.eq(1), sa_row.eq(0), sa_w.eq(0), sa_ptr.eq(scratch["s"]),
                         read_phase.eq(0)]
        with m.If(sa_on & rq.addr.ready):
            m.d.sync += sa_w.eq(sa_w + 1)
            with m.If(sa_w == c.s_words - 1):
                m.d.sync += [sa_w.eq(0), sa_row.eq(sa_row + 1), sa_ptr.eq(sa_ptr + c.s_stride)]
                with m.If(sa_row + 1 == rows_b):
                    m.d.sync += sa_on.eq(0)
        with m.If(ac_start):
            m.d.sync += [pa_on.eq(1), pa_row.eq(0), pa_w.eq(0), pa_ptr.eq(scratch["pv"]),
                         read_phase.eq(1)]
        with m.If(pa_on & rq.addr.ready):
            m.d.sync += pa_w.eq(pa_w + 1)
            with m.If(pa_w == wpv - 1):
                m.d.sync += [pa_w.eq(0), pa_row.eq(pa_row + 1), pa_ptr.eq(pa_ptr + c.pv_stride)]
                with m.If(pa_row + 1 == rows_b):
                    m.d.sync += pa_on.eq(0)

        # S words -> softmax beats (lanes scores each); a row ends after BPR
        # beats, dropping the rest of its last word
        gb_on = Signal()
        gb_row = Signal(range(R))
        gb_beat = Signal(range(BPR))
        gb_sub = Signal(range(SPW // LN))
        with m.If(sm_start):
            m.d.sync += [gb_on.eq(1), gb_row.eq(0), gb_beat.eq(0), gb_sub.eq(0)]
        sp = sm.scores.payload
        m.d.comb += [sm.scores.valid.eq(gb_on & rq.data.valid),
                     sp.row.eq(gb_row), sp.qpos.eq(cmd.offset + m0 + gb_row), sp.k0.eq(k0),
                     sp.n_keys.eq(n_keys), sp.mult.eq(cmd.score_mult), sp.shift.eq(cmd.score_shift)]
        for l in range(LN):
            m.d.comb += sp.s[l].eq(rq.data.payload.data.word_select(gb_sub * LN + l, 32))
        feed = sm.scores.valid & sm.scores.ready
        row_end = gb_beat == BPR - 1
        word_end = row_end | (gb_sub == SPW // LN - 1)
        with m.If(feed):
            m.d.sync += [gb_beat.eq(gb_beat + 1), gb_sub.eq(gb_sub + 1)]
            with m.If(word_end):
                m.d.sync += gb_sub.eq(0)
            with m.If(row_end):
                m.d.sync += [gb_beat.eq(0), gb_row.eq(gb_row + 1)]
                with m.If(gb_row + 1 == rows_b):
                    m.d.sync += gb_on.eq(0)

        # P writer: one write (lanes bytes) per probability beat
        pw_row = Signal(range(R + 1))
        pw_ptr = addr("pw_ptr")
        pw_word = Signal(range(c.p_stride + 1))
        pw_byte = Signal(range(MB))
        pr = sm.probs.payload
        p_bytes = Cat(*[pr.p[l] for l in range(LN)])
        with m.If(sm_start):
            m.d.sync += [pw_row.eq(0), pw_ptr.eq(scratch["p"]), pw_word.eq(0), pw_byte.eq(0)]
        p_on = ~read_phase & (pw_row != rows_b) & (sm_start == 0)
        take_p = sm.probs.valid & p_on & wr_c_ready
        m.d.comb += sm.probs.ready.eq(p_on & wr_c_ready)
        m.d.comb += [info_w.addr.eq(pr.row), info_w.data.delta.eq(pr.delta),
                     info_w.data.l_sum.eq(pr.l_sum), info_w.en.eq(take_p & pr.last)]
        with m.If(take_p):
            m.d.sync += [pw_byte.eq(pw_byte + LN)]
            with m.If(pw_byte == MB - LN):
                m.d.sync += [pw_byte.eq(0), pw_word.eq(pw_word + 1)]
            with m.If(pr.last):
                m.d.sync += [pw_row.eq(pw_row + 1), pw_ptr.eq(pw_ptr + c.p_stride),
                             pw_word.eq(0), pw_byte.eq(0)]
        m.d.comb += sm_done.eq(~read_phase & (pw_row == rows_b) & ~sm_start)

        # ---------------- accumulate phase -------------------------------------------
        # A: take a PV word, read O and the row's delta; B: O = rs(O, delta) + PV
        ac_row, ac_w = Signal(range(R + 1)), Signal(range(OWR))
        ac_optr = Signal(range(R * OWR + 1))
        with m.If(ac_start):
            m.d.sync += [ac_row.eq(0), ac_w.eq(0), ac_optr.eq(0)]
        ac_on = read_phase & (ac_row != rows_b) & ~ac_start
        take_pv = rq.data.valid & ac_on
        m.d.comb += rq.data.ready.eq(Mux(read_phase, ac_on, feed & word_end))
        m.d.comb += [o_ac.addr.eq(ac_optr + ac_w), o_ac.en.eq(1),
                     info_ac.addr.eq(ac_row), info_ac.en.eq(1)]
        with m.If(take_pv):
            m.d.sync += ac_w.eq(ac_w + 1)
            with m.If(ac_w == wpv - 1):
                m.d.sync += [ac_w.eq(0), ac_row.eq(ac_row + 1), ac_optr.eq(ac_optr + OWR)]
        b_valid = Signal()
        b_pv = Signal(word)
        b_addr = Signal.like(o_w.addr)
        b_first = Signal()
        m.d.sync += [b_valid.eq(take_pv), b_pv.eq(rq.data.payload.data), b_addr.eq(o_ac.addr),
                     b_first.eq(k0 == 0)]
        m.d.comb += [o_w.addr.eq(b_addr), o_w.en.eq(b_valid)]
        for l in range(SPW):
            old = round_shift(o_ac.data[l], info_ac.data.delta, 34)
            m.d.comb += o_w.data[l].eq(Mux(b_first, 0, old) + b_pv[l])
        m.d.comb += ac_done.eq(read_phase & (ac_row == rows_b) & ~b_valid & ~ac_start)

        # ---------------- normalise phase --------------------------------------------
        nm_on = Signal()        # between the phase's start and its last output write
        # row sums -> l_in (the read port's data register holds the beat)
        lf_row = Signal(range(R + 1))
        lf_valid = Signal()
        lf_adv = ~lf_valid | norm.l_in.ready
        with m.If(nm_start):
            m.d.sync += lf_row.eq(0)
        lf_more = (lf_row != rows_b) & ~nm_start & nm_on
        m.d.comb += [info_nm.addr.eq(lf_row), info_nm.en.eq(lf_adv),
                     norm.l_in.valid.eq(lf_valid), norm.l_in.payload.l_sum.eq(info_nm.data.l_sum),
                     norm.l_in.payload.out_mult.eq(cmd.out_mult),
                     norm.l_in.payload.out_shift.eq(cmd.out_shift)]
        with m.If(lf_adv):
            m.d.sync += lf_valid.eq(lf_more)
            with m.If(lf_more):
                m.d.sync += lf_row.eq(lf_row + 1)
        # O words -> o_in beats (norm_lanes each), D / NL beats per row
        of_row = Signal(range(R + 1))
        of_w = Signal(range(OWR))
        of_ptr = Signal(range(R * OWR + 1))
        of_valid = Signal()
        of_sub = Signal(range(SPW // NL))
        of_beat = Signal(range(c.max_d_head // NL + 1))
        of_take = Signal()
        of_adv = ~of_valid | of_take
        of_more = (of_row != rows_b) & ~nm_start & nm_on
        with m.If(nm_start):
            m.d.sync += [of_row.eq(0), of_w.eq(0), of_ptr.eq(0), of_sub.eq(0), of_beat.eq(0)]
        m.d.comb += [o_nm.addr.eq(of_ptr + of_w), o_nm.en.eq(of_adv)]
        with m.If(of_adv):
            m.d.sync += of_valid.eq(of_more)
            with m.If(of_more):
                m.d.sync += of_w.eq(of_w + 1)
                with m.If(of_w == wpv - 1):
                    m.d.sync += [of_w.eq(0), of_row.eq(of_row + 1), of_ptr.eq(of_ptr + OWR)]
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
        ow_on = (ow_row != rows_b) & ~nm_start & nm_on
        yb = Cat(*[norm.out.payload.y[l] for l in range(NL)])
        wr_nm_valid = norm.out.valid & ow_on
        m.d.comb += norm.out.ready.eq(ow_on & wr_c_ready)
        with m.If(norm.out.valid & norm.out.ready):
            nb = ow_byte + NL
            m.d.sync += ow_byte.eq(nb)
            with m.If(nb == MB):
                m.d.sync += [ow_byte.eq(0), ow_word.eq(ow_word + 1)]
            with m.If(norm.out.payload.last):
                m.d.sync += [ow_row.eq(ow_row + 1), ow_ptr.eq(ow_ptr + cmd.out_stride),
                             ow_word.eq(hw), ow_byte.eq(ho)]
                with m.If((ow_row == 0) & (m0 == 0)):
                    # the end of the head's first row is where the next head starts
                    m.d.sync += [nhw.eq(Mux(nb == MB, ow_word + 1, ow_word)),
                                 nho.eq(Mux(nb == MB, 0, nb))]
        with m.If(nm_start):
            m.d.sync += nm_on.eq(1)
        with m.If(nm_done):
            m.d.sync += nm_on.eq(0)
        m.d.comb += nm_done.eq(nm_on & ~nm_start & (ow_row == rows_b))

        # controller write port: P rows in the softmax phase, outputs in the normalise phase
        with m.If(nm_on):
            m.d.comb += [wr_c_valid.eq(wr_nm_valid),
                         wr_c.addr.eq(ow_ptr + ow_word),
                         wr_c.data.eq(yb << (ow_byte * 8)),
                         wr_c.strb.eq(Const((1 << NL) - 1, MB) << ow_byte)]
        with m.Else():
            m.d.comb += [wr_c_valid.eq(sm.probs.valid & p_on),
                         wr_c.addr.eq(pw_ptr + pw_word),
                         wr_c.data.eq(p_bytes << (pw_byte * 8)),
                         wr_c.strb.eq(Const((1 << LN) - 1, MB) << pw_byte)]
        return m
