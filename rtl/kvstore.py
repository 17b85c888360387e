"""KVSTORE: K and V of new tokens, from c_attn's output rows into the KV caches.

A mover on the memory port, dispatched by the machine (rtl/machine.py) for
the KVSTORE instruction (`isa.kvstore_layout`); the caches' layout is the
attention engine's (docs/architecture.md, attention memory layout).
"""
from amaranth.hdl import *
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from .attention_config import AttentionConfig
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
        pos = Signal(range(c.max_seq + 1))
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

        j, kin = pos // T, pos % T
        kd = kb + d
        k_addr = (cmd.k_base + h * cmd.k_head_stride + j * cmd.k_tile_stride
                  + (kin // C) * wpt_d + kd // KPW)
        k_lane = (kd % KPW) * C + kin % C
        v_addr = (cmd.v_base + h * cmd.v_head_stride + j * cmd.v_tile_stride
                  + (d // C) * wpt_tile + kin // KPW)
        v_lane = (kin % KPW) * C + d % C
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
                    m.d.sync += [cmd.eq(p), t.eq(0), pos.eq(p.pos0), row.eq(p.src_base),
                                 widx.eq(0), kb.eq(0),
                                 wpt_d.eq((p.d_head + KPW - 1) // KPW),
                                 sel.eq(0), h.eq(0), d.eq(0)]
                    m.next = "READ"
            with m.State("READ"):
                m.d.comb += [self.busy.eq(1), self.mem.rd_req.valid.eq(1)]
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
                    last_d = d == cmd.d_head - 1
                    last_h = h == cmd.n_head - 1
                    kb_next = kb + cmd.k_skew
                    kb_next = Mux(kb_next >= MB, kb_next - MB, kb_next)
                    with m.If(last_d):
                        m.d.sync += [d.eq(0), h.eq(h + 1), kb.eq(kb_next),
                                     wpt_d.eq((kb_next + cmd.d_head + KPW - 1) // KPW)]
                        with m.If(last_h):
                            m.d.sync += [h.eq(0), sel.eq(~sel), kb.eq(0),
                                         wpt_d.eq((cmd.d_head + KPW - 1) // KPW)]
                    with m.If(last_d & last_h & sel):       # token's V done
                        m.d.sync += [t.eq(t + 1), pos.eq(pos + 1),
                                     row.eq(row + cmd.src_stride), widx.eq(0)]
                        with m.If(t == cmd.n_tok - 1):
                            m.d.sync += done.eq(1)
                            m.next = "IDLE"
                        with m.Else():
                            m.next = "READ"
                    with m.Elif(lane == MB - 1):
                        m.d.sync += widx.eq(widx + 1)
                        m.next = "READ"
        return m
