"""KVSTORE: K and V of new tokens, from c_attn's output rows into the KV caches.

A mover on the memory port, dispatched by the machine (rtl/machine.py) for
the KVSTORE instruction (`isa.kvstore_layout`); the caches' layout is the
attention engine's (docs/architecture.md, attention memory layout).
"""
from amaranth.hdl import *
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from .attention_config import AttentionConfig
from .intarith import times_const
from .isa import kvstore_layout
from .memport import MemPort

__all__ = ["KVStore"]


class KVStore(wiring.Component):
    """Mover: K and V of new tokens from c_attn's output rows into the KV caches.

    The caches hold Kᵀ and V per key tile in the matmul W layout (a key's D
    bytes are spread over D/k_per_word words of a K tile), which no matmul
    output layout produces, so they are scattered here byte by byte: per
    source word one read, then one strobed write per byte. Per token the
    source row's bytes E .. 3E-1 (K then V of every head, from byte
    ``src_lane`` of its first word) are walked in order with counters
    (sel, h, d), so no address needs a division by a runtime value; the
    divisions are by the constants tile, cols and k_per_word. Head h's K
    goes to rows b_h .. of its Kᵀ tile (b_h steps by ``k_skew`` modulo
    mem_bytes: the byte where its Q starts in a word, `isa.kvstore_layout`).
    ``done`` pulses after the last write is accepted.
    """

    def __init__(self, cfg: AttentionConfig):
        self.cfg = cfg
        super().__init__({"cmd": In(stream.Signature(kvstore_layout(cfg))),
                          "mem": Out(MemPort.for_config(cfg.engine)), "busy": Out(1), "done": Out(1)})

    def elaborate(self, platform):
        m = Module()
        c, e = self.cfg, self.cfg.engine
        MB, C, KPW, T = e.mem_bytes, e.cols, e.k_per_word, c.tile
        wpt_tile = e.w_words_per_tile(T)           # words per d-column tile of a V tile
        cmd = Signal(kvstore_layout(c))
        t = Signal.like(cmd.n_tok)
        row = Signal(e.addr_bits)                  # src_base + t*src_stride
        widx = Signal(e.addr_bits)                 # word of the source row being moved
        kb = Signal(range(MB))                     # b_h: head h's first Kᵀ row
        # words per key-column tile of head h's K tile: ceil((b_h + D) / k_per_word)
        wpt_d = Signal(range(c.max_d_head + MB + 1))
        word = Signal(8 * MB)
        lane = Signal(range(MB))
        sel = Signal()                             # 0: K, 1: V
        h = Signal(8)
        d = Signal(range(c.max_d_head))
        done = Signal()
        m.d.sync += done.eq(0)
        m.d.comb += self.done.eq(done)

        # Every address term is a register advanced by its stride (no multiply in
        # the address path): the token's key kin = pos mod tile and its tile j, with
        # j * k_tile_stride (jk) and j * v_tile_stride (jv); head h's h * k_head_stride
        # (kh) and h * v_head_stride (vh); (d // cols) * wpt_tile (vd). The first
        # token's j * stride is one registered multiply (operands and product in
        # registers) in the READ state, two cycles before the first write. With
        # tile > cols, (kin // cols) * wpt_d (kq) is a registered multiply too,
        # given a cycle (state KHEAD) after each K head changes wpt_d.
        j0 = Signal(range(c.max_seq // T + 1))
        kin = Signal(range(T))
        jk, jv, kh, vh = (Signal(e.addr_bits, name=n) for n in ("jk", "jv", "kh", "vh"))
        vd = Signal(e.addr_bits)
        init = Signal()
        kq = Signal(e.addr_bits)
        if T > C:
            m.d.sync += kq.eq((kin // C) * wpt_d)
        kd = kb + d
        k_addr = cmd.k_base + jk + kh + kq + kd // KPW
        k_lane = times_const(kd % KPW, C) + kin % C
        v_addr = cmd.v_base + jv + vh + vd + kin // KPW
        v_lane = times_const(kin % KPW, C) + d % C
        byte = word.word_select(lane, 8)
        out_lane = Signal(range(MB))
        m.d.comb += [out_lane.eq(Mux(sel, v_lane, k_lane)),
                     self.mem.wr.payload.addr.eq(Mux(sel, v_addr, k_addr)),
                     self.mem.wr.payload.data.eq(Cat(*([byte] * MB))),
                     self.mem.wr.payload.strb.eq(1 << out_lane),
                     self.mem.rd_req.payload.addr.eq(row + widx)]

        with m.FSM():
            with m.State("IDLE"):
                p = self.cmd.payload
                m.d.comb += self.cmd.ready.eq(1)
                with m.If(self.cmd.valid):
                    m.d.sync += [cmd.eq(p), t.eq(0), row.eq(p.src_base),
                                 j0.eq(p.pos0 // T), kin.eq(p.pos0 % T), init.eq(1),
                                 widx.eq(0), kb.eq(0),
                                 wpt_d.eq((p.d_head + KPW - 1) // KPW),
                                 sel.eq(0), h.eq(0), d.eq(0), kh.eq(0), vh.eq(0), vd.eq(0)]
                    m.next = "READ"
            with m.State("READ"):
                m.d.comb += [self.busy.eq(1), self.mem.rd_req.valid.eq(1)]
                with m.If(init):
                    m.d.sync += [jk.eq(j0 * cmd.k_tile_stride), jv.eq(j0 * cmd.v_tile_stride),
                                 init.eq(0)]
                with m.If(self.mem.rd_req.ready):
                    m.next = "WAIT"
            with m.State("WAIT"):
                m.d.comb += [self.busy.eq(1), self.mem.rd_resp.ready.eq(1)]
                with m.If(self.mem.rd_resp.valid):
                    m.d.sync += [word.eq(self.mem.rd_resp.payload.data),
                                 lane.eq(Mux(widx == 0, cmd.src_lane, 0))]
                    m.next = "WRITE"
            with m.State("WRITE"):
                m.d.comb += [self.busy.eq(1), self.mem.wr.valid.eq(1)]
                with m.If(self.mem.wr.ready):
                    m.d.sync += [lane.eq(lane + 1), d.eq(d + 1)]
                    if C > 1:
                        with m.If(d % C == C - 1):
                            m.d.sync += vd.eq(vd + wpt_tile)
                    else:
                        m.d.sync += vd.eq(vd + wpt_tile)
                    last_d = d == cmd.d_head - 1
                    last_h = h == cmd.n_head - 1
                    kb_next = kb + cmd.k_skew
                    kb_next = Mux(kb_next >= MB, kb_next - MB, kb_next)
                    head_pause = Signal()
                    with m.If(last_d):
                        m.d.sync += [d.eq(0), vd.eq(0), h.eq(h + 1), kb.eq(kb_next),
                                     kh.eq(kh + cmd.k_head_stride), vh.eq(vh + cmd.v_head_stride),
                                     wpt_d.eq((kb_next + cmd.d_head + KPW - 1) // KPW)]
                        with m.If(last_h):
                            m.d.sync += [h.eq(0), sel.eq(~sel), kb.eq(0), kh.eq(0), vh.eq(0),
                                         wpt_d.eq((cmd.d_head + KPW - 1) // KPW)]
                        if T > C:
                            m.d.comb += head_pause.eq(~sel & ~last_h)
                    with m.If(last_d & last_h & sel):       # token's V done
                        m.d.sync += [t.eq(t + 1), row.eq(row + cmd.src_stride), widx.eq(0)]
                        with m.If(kin == T - 1):
                            m.d.sync += [kin.eq(0), jk.eq(jk + cmd.k_tile_stride),
                                         jv.eq(jv + cmd.v_tile_stride)]
                        with m.Else():
                            m.d.sync += kin.eq(kin + 1)
                        with m.If(t == cmd.n_tok - 1):
                            m.d.sync += done.eq(1)
                            m.next = "IDLE"
                        with m.Else():
                            m.next = "READ"
                    with m.Elif(lane == MB - 1):
                        m.d.sync += widx.eq(widx + 1)
                        m.next = "READ"
                    with m.Elif(head_pause):
                        m.next = "KHEAD"
            with m.State("KHEAD"):
                # kq of the new K head is registered at the end of this cycle
                m.d.comb += self.busy.eq(1)
                m.next = "WRITE"
        return m
