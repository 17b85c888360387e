"""KVSTORE: K and V of new tokens, from c_attn's output rows into the KV caches.

A mover on the memory port, dispatched by the machine (rtl/machine.py) for
the KVSTORE instruction (`isa.kvstore_layout`); the caches' layout is the
attention engine's (docs/architecture.md, attention memory layout).
"""
from amaranth.hdl import *
from amaranth.lib import stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from .attention_config import AttentionConfig
from .config import ceil_div
from .isa import kvstore_layout
from .memport import MemPort

__all__ = ["KVStore", "buffer_words", "BUFFER_PARTS", "FIRST_REQUEST", "REQUEST_CYCLES",
           "SEGMENT_SETUP", "DRAIN_CYCLES"]

#: parts of the transposing buffer, a segment each: with three, the assembler
#: fills one while the writer drains another and the third waits full (with two,
#: short segments alternate between the writer's setup and the assembler's fill)
BUFFER_PARTS = 3
#: accept to the first request's load into the request register
FIRST_REQUEST = 2
#: a request's load to its cycle on the port
REQUEST_CYCLES = 1
#: the writer's cycles from seeing a part full to its first buffer read (WAIT: the
#: segment's first address is one sum there, the Kᵀ column tile's offset having
#: been made by the assembler while the part filled)
SEGMENT_SETUP = 1
#: the last cache word's first writer cycle to ``done``: its buffer read, the bank
#: select, the byte select into the write register, the write accepted
DRAIN_CYCLES = 4


def buffer_words(cfg: AttentionConfig):
    """Words (of mem_bytes bytes per key) of one part of the transposing buffer: one
    head's K or V realigned so that its Kᵀ row r = b_h + d sits at byte r (b_h < mem_bytes)."""
    e = cfg.engine
    return max(1, ceil_div(e.mem_bytes - 1 + cfg.max_d_head, e.mem_bytes))


class KVStore(wiring.Component):
    """Mover: K and V of new tokens from c_attn's output rows into the KV caches.

    The caches hold Kᵀ and V per key tile in the matmul W layout: a Kᵀ word
    holds k_per_word rows of `cols` keys, a V word k_per_word keys of `cols`
    d-columns, so neither is a run of any one token's bytes. Tokens are
    therefore taken in groups of the keys that share one Kᵀ column tile (at
    most `cols`, within one key tile), one segment (a head's K or V, D
    bytes) at a time:

    - the issuer reads the segment's words of each token of the group, one
      request per cycle from a request register, at most max_outstanding
      unanswered;
    - the assembler takes one response per cycle and writes it, realigned by
      a byte shift so that Kᵀ row r = b_h + d (V: d) sits at byte r, into
      the token's bank (key mod cols) of the transposing buffer, one part per
      segment; a segment whose last row falls past its last source word
      costs one extra cycle per token (the shift's second word);
    - the writer, once a part is full, walks the segment's cache words and
      writes each whole (strobes only on the group's keys and the head's
      rows) from a registered buffer read, a registered bank select and a
      registered byte select (two stages, so that no stage holds a
      cols * k_per_word : 1 mux per bit): per Kᵀ word, k_per_word bytes of
      every bank; per V word, `cols` bytes of k_per_word banks. While it
      drains one part the assembler fills the next (`BUFFER_PARTS`).

    Every address is a register advanced by its stride; the two products
    (the first key tile's j * stride, and (key // cols) * words of a head's
    Kᵀ column tile when tile > cols) have registered operands and product;
    the second is the assembler's, per segment, made while the shift stages
    finish the segment's part, so the writer starts a segment in one cycle.
    ``done`` pulses the cycle after the last write is accepted.
    """

    def __init__(self, cfg: AttentionConfig):
        self.cfg = cfg
        super().__init__({"cmd": In(stream.Signature(kvstore_layout(cfg))),
                          "mem": Out(MemPort.for_config(cfg.engine)), "busy": Out(1), "done": Out(1)})

    def elaborate(self, platform):
        m = Module()
        c, e = self.cfg, self.cfg.engine
        MB, C, KPW, T, MO = e.mem_bytes, e.cols, e.k_per_word, c.tile, e.max_outstanding
        A, DMAX = e.addr_bits, c.max_d_head
        Q = buffer_words(c)
        wpt_tile = e.w_words_per_tile(T)
        cmd = Signal(kvstore_layout(c), reset_less=True)
        run = Signal()
        done = Signal()
        m.d.sync += done.eq(0)
        m.d.comb += [self.done.eq(done), self.busy.eq(run)]

        # per command: divmod(D, MB) steps a segment's start, divmod(D - 1, MB) gives
        # its last word; the first key's tile j0 and key kin0
        dq, dr = Signal(range(DMAX // MB + 1)), Signal(range(MB))
        d1q, d1r = Signal(range(DMAX // MB + 1)), Signal(range(MB))
        j0 = Signal(range(c.max_seq // T + 1))
        kin0, kc0 = Signal(range(T)), Signal(range(C))
        p = self.cmd.payload
        m.d.comb += self.cmd.ready.eq(~run)
        start = Signal()
        # the last head and token as registers: the walkers' compares against them
        # (every step of a token) then start at a register, not at a subtract
        H1 = Signal(signed(len(p.n_head) + 1), reset_less=True)
        N1 = Signal(signed(len(p.n_tok) + 1), reset_less=True)
        with m.If(self.cmd.valid & ~run):
            d1 = (p.d_head - 1)[:len(p.d_head)]
            m.d.sync += [cmd.eq(p), run.eq(1), start.eq(1), H1.eq(p.n_head - 1),
                         N1.eq(p.n_tok - 1),
                         dq.eq(p.d_head // MB), dr.eq(p.d_head % MB),
                         d1q.eq(d1 // MB), d1r.eq(d1 % MB),
                         j0.eq(p.pos0 // T), kin0.eq(p.pos0 % T),
                         kc0.eq((p.pos0 % T) % C)]
        with m.Else():
            m.d.sync += start.eq(0)

        def walker(name):
            """The group / segment / token counters the issuer and the assembler
            both walk: tokens t of a group share key // cols within one tile; a
            group's segments are K of heads 0 .., then V of heads 0 ..; a
            segment starts at byte `off` of word `a` of a token's source row."""
            w = type("Walk", (), {})()
            for n, shape in (("t", range(c.max_seq + 1)), ("kin", range(T)), ("kc", range(C)),
                             ("tlo", range(c.max_seq + 1)), ("kinlo", range(T)),
                             ("kclo", range(C)), ("sel", 1), ("h", 8), ("off", range(MB)),
                             ("bh", range(MB)), ("k", range(Q + 2))):
                setattr(w, n, Signal(shape, name=f"{name}_{n}"))
            w.last_tok = (w.kc == C - 1) | (w.kin == T - 1) | (w.t == N1)
            w.last_seg = w.sel & (w.h == H1)
            w.last = w.last_seg & (w.t == N1)
            w.wrap = Signal(name=f"{name}_wrap")        # off + dr passes a word's end
            m.d.comb += w.wrap.eq(w.off + dr >= MB)
            w.nw1 = d1q + (w.off + d1r >= MB)            # the segment's words - 1
            w.sh = Mux(w.sel, 0, w.bh)                   # its first row in the buffer
            with m.If(start):
                m.d.sync += [w.t.eq(0), w.kin.eq(kin0), w.kc.eq(kc0), w.tlo.eq(0),
                             w.kinlo.eq(kin0), w.kclo.eq(kc0), w.sel.eq(0), w.h.eq(0),
                             w.off.eq(cmd.src_lane), w.bh.eq(0), w.k.eq(0)]

            def step_token():
                """After a token's last word: the next token, segment or group."""
                m.d.sync += w.k.eq(0)
                with m.If(~w.last_tok):
                    m.d.sync += [w.t.eq(w.t + 1), w.kin.eq(w.kin + 1), w.kc.eq(w.kc + 1)]
                with m.Else():
                    m.d.sync += [w.t.eq(w.tlo), w.kin.eq(w.kinlo), w.kc.eq(w.kclo)]
                    with m.If(~w.last_seg):
                        bh = w.bh + cmd.k_skew
                        m.d.sync += [w.off.eq(Mux(w.wrap, w.off + dr - MB, w.off + dr)),
                                     w.h.eq(w.h + 1),
                                     w.bh.eq(Mux(bh >= MB, bh - MB, bh))]
                        with m.If(w.h == H1):
                            m.d.sync += [w.sel.eq(1), w.h.eq(0)]
                    with m.Else():
                        nkin = Mux(w.kin == T - 1, 0, w.kin + 1)
                        nkc = Mux((w.kc == C - 1) | (w.kin == T - 1), 0, w.kc + 1)
                        m.d.sync += [w.t.eq(w.t + 1), w.tlo.eq(w.t + 1), w.kin.eq(nkin),
                                     w.kinlo.eq(nkin), w.kc.eq(nkc), w.kclo.eq(nkc),
                                     w.sel.eq(0), w.h.eq(0), w.bh.eq(0),
                                     w.off.eq(cmd.src_lane)]
            w.step_token = step_token
            return w

        # ---- issuer: the request register is loaded while fewer than
        # max_outstanding reads are unanswered (the register's counted)
        iw = walker("iss")
        i_run = Signal()
        grow, trow, ga, ta, addr = (Signal(A, name=n) for n in ("grow", "trow", "ga", "ta", "addr"))
        req_v = Signal()
        req_addr = Signal(A)
        unanswered = Signal(range(MO + 1))
        take = Signal()
        fire = i_run & (unanswered < MO) & (~req_v | self.mem.rd_req.ready)
        m.d.sync += unanswered.eq(unanswered + fire - take)
        with m.If(fire):
            m.d.sync += [req_v.eq(1), req_addr.eq(addr)]
        with m.Elif(self.mem.rd_req.ready):
            m.d.sync += req_v.eq(0)
        m.d.comb += [self.mem.rd_req.valid.eq(req_v), self.mem.rd_req.payload.addr.eq(req_addr)]
        with m.If(start):
            m.d.sync += [i_run.eq(1)] + [r.eq(cmd.src_base) for r in (grow, trow, ga, ta, addr)]
        with m.Elif(fire):
            with m.If(iw.k != iw.nw1):
                m.d.sync += [iw.k.eq(iw.k + 1), addr.eq(addr + 1)]
            with m.Else():
                iw.step_token()
                with m.If(~iw.last_tok):
                    nta = ta + cmd.src_stride
                    m.d.sync += [trow.eq(trow + cmd.src_stride), ta.eq(nta), addr.eq(nta)]
                with m.Elif(~iw.last_seg):
                    nga = ga + dq + iw.wrap
                    m.d.sync += [trow.eq(grow), ga.eq(nga), ta.eq(nga), addr.eq(nga)]
                with m.Else():
                    nrow = trow + cmd.src_stride
                    m.d.sync += [r.eq(nrow) for r in (grow, trow, ga, ta, addr)]
                    with m.If(iw.last):
                        m.d.sync += i_run.eq(0)

        # ---- assembler: responses into the buffer part of the segment
        NP = BUFFER_PARTS
        m.submodules.buf = buf = Memory(shape=unsigned(8 * MB * C), depth=NP * Q, init=[])
        bw = buf.write_port(granularity=8 * MB)
        br = buf.read_port(transparent_for=())
        full = Signal(NP)

        def nxt_part(part, base):
            """The next part and its first word (a part's base advances by Q)."""
            return [part.eq(Mux(part == NP - 1, 0, part + 1)),
                    base.eq(Mux(part == NP - 1, 0, base + Q))]
        aw = walker("asm")
        a_run = Signal()
        a_part, a_base = Signal(range(NP)), Signal(range(NP * Q))
        a_q = Signal(range(Q + 1))                     # the token's next buffer word
        flushing = Signal()
        sh = aw.sh
        pos = aw.off > sh                               # the first word only starts a buffer word
        # a buffer word's last byte lies past the segment's last source word: one
        # more emission after it (Q words per token in all)
        flush = (aw.off + d1r >= MB) < ((sh + d1r >= MB) + pos)
        rho = Mux(pos, aw.off - sh, MB + aw.off - sh)   # 1 .. MB: the window's byte offset
        e_v, e_last, e_part = Signal(), Signal(), Signal(range(NP))
        e_base = Signal(range(NP * Q))
        e_cur, e_prev = Signal(8 * MB), Signal(8 * MB)
        e_rho = Signal(range(MB + 1))
        e_q = Signal(range(Q))
        e_bank = Signal(range(C))
        # what the writer needs of each part's segment: its group's keys
        meta_kinlo = Array(Signal(range(T), name=f"meta_kinlo{i}") for i in range(NP))
        meta_kinhi = Array(Signal(range(T), name=f"meta_kinhi{i}") for i in range(NP))
        meta_kclo = Array(Signal(range(C), name=f"meta_kclo{i}") for i in range(NP))
        meta_kchi = Array(Signal(range(C), name=f"meta_kchi{i}") for i in range(NP))
        meta_last = Array(Signal(name=f"meta_last{i}") for i in range(NP))
        # ... and a K segment's first Kᵀ word within the head's key tile: its column
        # tile's words (kt * ceil((b_h + D) / k_per_word)) + b_h // k_per_word
        meta_kqw = Array(Signal(A, name=f"meta_kqw{i}") for i in range(NP))

        # a part is the assembler's again once the writer frees it; it is claimed
        # at the segment's last take, two cycles before its full flag (the shift
        # stages), so that a segment of one word per part cannot overtake the writer
        claimed = Signal(NP)
        m.d.comb += [self.mem.rd_resp.ready.eq(a_run & ~flushing & ~claimed.bit_select(a_part, 1)),
                     take.eq(self.mem.rd_resp.valid & self.mem.rd_resp.ready)]
        tok_end = Signal()
        seg_end = Signal()
        m.d.comb += seg_end.eq(tok_end & aw.last_tok)
        m.d.sync += [e_v.eq(0), e_last.eq(0)]
        with m.If(take):
            emit = (aw.k != 0) | ~pos
            m.d.sync += [e_prev.eq(e_cur), e_cur.eq(self.mem.rd_resp.payload.data),
                         e_v.eq(emit), e_q.eq(a_q), a_q.eq(a_q + emit)]
            with m.If(aw.k != aw.nw1):
                m.d.sync += aw.k.eq(aw.k + 1)
            with m.Elif(flush):
                m.d.sync += flushing.eq(1)
            with m.Else():
                m.d.comb += tok_end.eq(1)
        with m.If(flushing):
            m.d.sync += [e_prev.eq(e_cur), e_v.eq(1), e_q.eq(a_q), flushing.eq(0)]
            m.d.comb += tok_end.eq(1)
        with m.If(take | flushing):
            m.d.sync += [e_rho.eq(rho), e_bank.eq(aw.kc), e_part.eq(a_part), e_base.eq(a_base),
                         e_last.eq(seg_end)]
        with m.If(tok_end):
            m.d.sync += a_q.eq(0)
            aw.step_token()
            with m.If(aw.last_tok):
                m.d.sync += [*nxt_part(a_part, a_base), meta_kinlo[a_part].eq(aw.kinlo),
                             meta_kinhi[a_part].eq(aw.kin), meta_kclo[a_part].eq(aw.kclo),
                             meta_kchi[a_part].eq(aw.kc), meta_last[a_part].eq(aw.last)]
                with m.If(aw.last):
                    m.d.sync += a_run.eq(0)
        with m.If(start):
            m.d.sync += [a_run.eq(1), a_part.eq(0), a_base.eq(0), a_q.eq(0), flushing.eq(0)]
        # the offset from the segment's walk at its end (registered operands, then the
        # registered product, then the sum into the part's meta): three cycles, as
        # the shift stages take to set the part's full flag, so the writer sees both
        k1_v, k2_v = Signal(), Signal()
        k1_part, k2_part = Signal(range(NP)), Signal(range(NP))
        k1_kt = Signal(range(ceil_div(T, C)))
        k1_wpt = Signal(range(ceil_div(MB + DMAX, KPW) + 1))
        k1_wc, k2_wc = Signal(range(C)), Signal(range(C))
        k2_prod = Signal(A)
        m.d.sync += [k1_v.eq(seg_end), k2_v.eq(k1_v), k2_part.eq(k1_part), k2_wc.eq(k1_wc),
                     k2_prod.eq(k1_kt * k1_wpt if T > C else 0)]
        with m.If(seg_end):
            m.d.sync += [k1_part.eq(a_part), k1_kt.eq(aw.kinlo // C),
                         # a Kᵀ column tile's words: of the head's own rows, or of
                         # every tile's k_rows (one W operand for several heads)
                         k1_wpt.eq(Mux(cmd.k_rows != 0, (cmd.k_rows + KPW - 1) // KPW,
                                       (sh + cmd.d_head + KPW - 1) // KPW)),
                         k1_wc.eq(sh // KPW)]
        with m.If(k2_v):
            m.d.sync += meta_kqw[k2_part].eq(k2_prod + k2_wc)
        # the window's byte shift in two registered stages: by rho's multiple of
        # four bytes, then by the rest on the way into the buffer
        f_v, f_last, f_part = Signal(), Signal(), Signal(range(NP))
        f_base = Signal(range(NP * Q))
        f_q = Signal(range(Q))
        f_bank = Signal(range(C))
        f_fine = Signal(2)
        f_coarse = Signal(8 * (MB + 3))
        both = Cat(e_prev, e_cur)
        m.d.sync += [f_v.eq(e_v), f_last.eq(e_last), f_part.eq(e_part), f_base.eq(e_base),
                     f_q.eq(e_q),
                     f_bank.eq(e_bank), f_fine.eq(e_rho[:2]),
                     f_coarse.eq((both >> Cat(Const(0, 5), e_rho[2:]))[:8 * (MB + 3)])]
        window = Cat(*(Array(f_coarse[8 * (b + j):8 * (b + j + 1)] for j in range(4))[f_fine]
                       for b in range(MB)))
        m.d.comb += [bw.addr.eq(f_base + f_q), bw.data.eq(Cat(*([window] * C))),
                     bw.en.eq(Mux(f_v, Const(1, C) << f_bank, 0))]
        set_full = Mux(f_v & f_last, Const(1, NP) << f_part, 0)

        # ---- writer: the part's cache words, each read, selected and written
        # in three registered stages (buffer read, byte select, write)
        w_part, w_sel, w_bh = Signal(range(NP)), Signal(), Signal(range(MB))
        w_base = Signal(range(NP * Q))
        w_h = Signal(8)
        jkp, jvp = Signal(A), Signal(A)
        kgrp, vgrp, khead, vhead = (Signal(A, name=n) for n in ("kgrp", "vgrp", "khead", "vhead"))
        kinlo, kinhi = Signal(range(T)), Signal(range(T))
        kclo, kchi = Signal(range(C)), Signal(range(C))
        w_lastseg = Signal()
        w_sh = Signal(range(MB))
        rr = Signal(range(MB + DMAX + KPW))            # Kᵀ: the word's first row
        wc = Signal(range(C))                          # Kᵀ: the word's bytes in its buffer word
        wq = Signal(range(Q))                          # Kᵀ: ... and that buffer word
        dC = Signal(range(DMAX + C))                   # V: the word's first d
        dsel = Signal(range(KPW))                      # V: its bytes in the buffer word
        dqw = Signal(range(Q))                         # V: ... and that buffer word
        kk, kk0 = Signal(range(T + KPW)), Signal(range(T + KPW))  # V: the word's first key
        kkm, kkm0 = Signal(range(C)), Signal(range(C))            # ... mod cols: its bank
        kaddr, vaddr, vline = Signal(A), Signal(A), Signal(A)
        clear = Signal(NP)
        m.d.sync += [full.eq((full | set_full) & ~clear),
                     claimed.eq((claimed | Mux(seg_end, Const(1, NP) << a_part, 0)) & ~clear)]

        # stage 1 (buffer read), 2 (K: each bank's k_per_word bytes; V: the
        # k_per_word banks) and the write register (V: each bank's cols bytes)
        s1_v, s1_last, s1_sel = Signal(), Signal(), Signal()
        s1_addr = Signal(A)
        s1_strb = Signal(MB)
        s1_wc = Signal(range(C))
        s1_bank = [Signal(range(C), name=f"s1_bank{i}") for i in range(KPW)]
        s1_dsel = Signal(range(KPW))
        o_v, o_last = Signal(), Signal()
        o_addr, o_data, o_strb = Signal(A), Signal(8 * MB), Signal(MB)
        adv = ~o_v | self.mem.wr.ready
        m.d.comb += [self.mem.wr.valid.eq(o_v), self.mem.wr.payload.addr.eq(o_addr),
                     self.mem.wr.payload.data.eq(o_data), self.mem.wr.payload.strb.eq(o_strb)]
        s0 = Signal()
        m.d.comb += [br.en.eq(adv), br.addr.eq(w_base + Mux(w_sel, dqw, wq))]
        banks = [br.data.word_select(b, 8 * MB) for b in range(C)]
        k_chunk = [banks[cc].word_select(s1_wc, 8 * KPW) for cc in range(C)]
        k_word = Cat(*(k_chunk[cc].word_select(i, 8) for i in range(KPW) for cc in range(C)))
        s2_v, s2_last, s2_sel = Signal(), Signal(), Signal()
        s2_addr = Signal(A)
        s2_strb = Signal(MB)
        s2_dsel = Signal(range(KPW))
        s2_kword = Signal(8 * MB)
        s2_vbank = [Signal(8 * MB, name=f"s2_vbank{i}") for i in range(KPW)]
        v_word = Cat(*(s2_vbank[i].word_select(s2_dsel, 8 * C) for i in range(KPW)))
        with m.If(adv):
            m.d.sync += [s2_v.eq(s1_v), s2_last.eq(s1_v & s1_last), s2_sel.eq(s1_sel),
                         s2_addr.eq(s1_addr), s2_strb.eq(s1_strb), s2_dsel.eq(s1_dsel),
                         s2_kword.eq(k_word),
                         *(s2_vbank[i].eq(Array(banks)[s1_bank[i]]) for i in range(KPW)),
                         o_v.eq(s2_v), o_last.eq(s2_last), o_addr.eq(s2_addr),
                         o_strb.eq(s2_strb), o_data.eq(Mux(s2_sel, v_word, s2_kword)),
                         s1_v.eq(s0)]
        with m.If(o_v & o_last & self.mem.wr.ready):
            m.d.sync += [done.eq(1), run.eq(0)]

        w_end = Signal()
        k_last = rr + KPW >= w_sh + cmd.d_head
        v_last_kp = kk + KPW > kinhi
        v_last_dt = dC + C >= cmd.d_head
        m.d.comb += w_end.eq(s0 & Mux(w_sel, v_last_kp & v_last_dt, k_last))
        k_strb = Cat(*(((rr + i >= w_sh) & (rr + i < w_sh + cmd.d_head) & (cc >= kclo)
                        & (cc <= kchi)) for i in range(KPW) for cc in range(C)))
        v_strb = Cat(*(((kk + i >= kinlo) & (kk + i <= kinhi) & (dC + cc < cmd.d_head))
                       for i in range(KPW) for cc in range(C)))
        with m.If(s0):
            m.d.sync += [s1_last.eq(w_end & w_lastseg), s1_sel.eq(w_sel),
                         s1_addr.eq(Mux(w_sel, vaddr, kaddr)),
                         s1_strb.eq(Mux(w_sel, v_strb, k_strb)), s1_dsel.eq(dsel)]
            m.d.sync += s1_wc.eq(wc)
            m.d.sync += [s1_bank[i].eq((kkm + i) % C) for i in range(KPW)]
            with m.If(~w_sel):
                m.d.sync += [rr.eq(rr + KPW), kaddr.eq(kaddr + 1), wc.eq(wc + 1)]
                with m.If(wc == C - 1):
                    m.d.sync += [wc.eq(0), wq.eq(wq + 1)]
            with m.Elif(~v_last_kp):
                kkm_n = kkm + KPW % C
                m.d.sync += [kk.eq(kk + KPW), kkm.eq(Mux(kkm_n >= C, kkm_n - C, kkm_n)),
                             vaddr.eq(vaddr + 1)]
            with m.Else():
                m.d.sync += [kk.eq(kk0), kkm.eq(kkm0), dC.eq(dC + C),
                             vline.eq(vline + wpt_tile), vaddr.eq(vline + wpt_tile),
                             dsel.eq(dsel + 1)]
                with m.If(dsel == KPW - 1):
                    m.d.sync += [dsel.eq(0), dqw.eq(dqw + 1)]

        with m.FSM(name="writer"):
            with m.State("IDLE"):
                with m.If(start):
                    m.d.sync += [jkp.eq(j0 * cmd.k_tile_stride), jvp.eq(j0 * cmd.v_tile_stride),
                                 w_part.eq(0), w_base.eq(0), w_sel.eq(0), w_h.eq(0), w_bh.eq(0)]
                    m.next = "BASE"
            with m.State("BASE"):
                kb, vb = cmd.k_base + jkp, cmd.v_base + jvp
                m.d.sync += [kgrp.eq(kb), khead.eq(kb), vgrp.eq(vb), vhead.eq(vb)]
                m.next = "WAIT"
            with m.State("WAIT"):
                # the segment's first word, rows and keys, once its part is full
                with m.If(full.bit_select(w_part, 1)):
                    klo = meta_kinlo[w_part]
                    sh_ = Mux(w_sel, 0, w_bh)
                    m.d.sync += [kinlo.eq(klo), kinhi.eq(meta_kinhi[w_part]),
                                 kclo.eq(meta_kclo[w_part]), kchi.eq(meta_kchi[w_part]),
                                 w_lastseg.eq(meta_last[w_part]), w_sh.eq(sh_),
                                 rr.eq(sh_ - sh_ % KPW), wc.eq(sh_ // KPW), wq.eq(0),
                                 dC.eq(0), dsel.eq(0), dqw.eq(0),
                                 kk.eq(klo - klo % KPW), kk0.eq(klo - klo % KPW),
                                 kkm.eq((klo - klo % KPW) % C), kkm0.eq((klo - klo % KPW) % C),
                                 vline.eq(vhead + klo // KPW), vaddr.eq(vhead + klo // KPW),
                                 kaddr.eq(khead + meta_kqw[w_part])]
                    m.next = "RUN"
            with m.State("RUN"):
                m.d.comb += s0.eq(adv)
                with m.If(w_end):
                    m.d.comb += clear.eq(Const(1, NP) << w_part)
                    m.d.sync += nxt_part(w_part, w_base)
                    with m.If(w_lastseg):
                        m.next = "IDLE"
                    with m.Else():
                        m.next = "WAIT"
                    with m.If(~w_sel):
                        bh = w_bh + cmd.k_skew
                        m.d.sync += [w_h.eq(w_h + 1), w_bh.eq(Mux(bh >= MB, bh - MB, bh)),
                                     khead.eq(khead + cmd.k_head_stride)]
                        with m.If(w_h == H1):
                            m.d.sync += [w_sel.eq(1), w_h.eq(0)]
                    with m.Elif(w_h != H1):
                        m.d.sync += [w_h.eq(w_h + 1), vhead.eq(vhead + cmd.v_head_stride)]
                    with m.Else():
                        # the group's end: the next group's column tile (and key tile)
                        m.d.sync += [w_sel.eq(0), w_h.eq(0), w_bh.eq(0)]
                        with m.If(kinhi == T - 1):
                            nk, nv = kgrp + cmd.k_tile_stride, vgrp + cmd.v_tile_stride
                            m.d.sync += [kgrp.eq(nk), khead.eq(nk),
                                         vgrp.eq(nv), vhead.eq(nv)]
                        with m.Else():
                            m.d.sync += [khead.eq(kgrp), vhead.eq(vgrp)]
        return m
