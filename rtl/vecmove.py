"""Memory <-> stream movers for the vector units (LAYERNORM, GELU, RESADD, REQUANT, EMBED).

The vector units (`GeluUnit`, `LayerNormUnit`, `RequantAdd`, `EmbeddingAdd`) are stream
units without memory access. `VectorMover` runs one vector instruction
(`isa.vector_layouts`) on one-lane instances of them:

```
 reader: per element, all operand slots checked at once: all cached -> the
         element goes to the unit that cycle; else the lowest missing slot's
         word is read (rd_req -> rd_resp) (GELU table / LN setup+params first)
 unit:   GeluUnit(1) | LayerNormUnit(1) | RequantAdd(1) | EmbeddingAdd(1)
 writer: unit output beat -> strobed write of the element's bytes (own counters)
```

Reader and writer are independent state machines on the two directions of
the port (reads and writes are separate channels), because LayerNorm emits
a row only after taking all of it. Each operand slot caches the last word it
read, so a word is read once per element group it holds (no re-reads while
a row walks through it). In-place RESADD (dst = src) is safe: the writer
only writes an element after the reader has taken it, and a cached word is
only used for elements not yet written.

One lane: one element per cycle while its words are cached, plus L + 1
cycles per word read (no read-ahead); far below the units' rate with
more lanes (docs/architecture.md, Machine).
"""
from amaranth.hdl import *
from amaranth.lib import wiring, stream
from amaranth.lib.wiring import In, Out

from .attention_config import AttentionConfig
from .gelu import GeluUnit, TABLE_SIZE
from .isa import (ACT_BYTES, BETA_BYTES, GAMMA_BYTES, Q_BYTES, RAW_BYTES, RESID_BYTES, Op,
                  cfg_max_vector_n, vector_layouts)
from .layernorm import LayerNormUnit
from .memport import MemPort
from .residual import EmbeddingAdd, RequantAdd

__all__ = ["VectorMover"]



class VectorMover(wiring.Component):
    """Runs LAYERNORM / GELU / RESADD / REQUANT / EMBED instructions; ``cmd`` carries the opcode and body bits.

    Ports: ``cmd`` (``op``: Op value, ``body``: the instruction body bits),
    the memory port, ``busy``, ``done`` (pulse after the last write), ``error``
    (the LayerNorm unit refused a setup).
    """

    def __init__(self, cfg: AttentionConfig, resid_bits=16):
        if not 4 <= resid_bits <= 8 * RESID_BYTES:
            raise ValueError(f"resid_bits must be in 4..16 (int16 residual rows), got {resid_bits}")
        if cfg.engine.mem_bytes < BETA_BYTES:
            raise ValueError(f"the vector mover reads LayerNorm beta as one int64 per word: "
                             f"mem_bytes must be >= {BETA_BYTES}, got {cfg.engine.mem_bytes}")
        self.cfg, self.resid_bits = cfg, resid_bits
        self.layouts = vector_layouts(cfg)
        self.body_bits = max(l.size for l in self.layouts.values())
        e = cfg.engine
        from amaranth.lib import data
        super().__init__({
            "cmd": In(stream.Signature(data.StructLayout({"op": unsigned(4),
                                                          "body": unsigned(self.body_bits)}))),
            "mem": Out(MemPort.for_config(e)),
            "busy": Out(1), "done": Out(1)})

    def elaborate(self, platform):
        m = Module()
        c, e, R = self.cfg, self.cfg.engine, self.resid_bits
        MB = e.mem_bytes
        m.submodules.gelu = gelu = GeluUnit(1)
        m.submodules.ln = ln = LayerNormUnit(1, in_bits=R, max_e=cfg_max_vector_n(c))
        m.submodules.add = add = RequantAdd(1, R)
        m.submodules.emb = emb = EmbeddingAdd(1, R)

        op = Signal(4)
        body = Signal(self.body_bits)
        views = {o: lay(body[:lay.size]) for o, lay in self.layouts.items()}
        ln_c, ge_c, ad_c = views[Op.LAYERNORM], views[Op.GELU], views[Op.RESADD]
        em_c = views[Op.EMBED]
        # the same fields of the command being accepted (start values of the row registers)
        new = {o: lay(self.cmd.payload.body[:lay.size]) for o, lay in self.layouts.items()}
        is_ln, is_ge, is_em = op == Op.LAYERNORM, op == Op.GELU, op == Op.EMBED
        is_rq = op == Op.REQUANT
        is_ad = (op == Op.RESADD) | is_rq     # both use RequantAdd
        rows = ln_c.rows           # the common fields sit at the same offsets in every body
        n = ln_c.n
        src_stride, dst_stride = ln_c.src_stride, ln_c.dst_stride

        # ---------------- reader ----------------
        # phase: 0 setup/table/params, 1 rows
        phase = Signal()
        r = Signal(range(e.max_m + 1))
        col = Signal(range(max(TABLE_SIZE, cfg_max_vector_n(c)) + 1))
        NS = 5
        slot = Signal(range(NS))
        cache_ok = Signal(NS)
        cache_addr = [Signal(e.addr_bits, name=f"cache_addr{s}") for s in range(NS)]
        cache_word = [Signal(8 * MB, name=f"cache_word{s}") for s in range(NS)]

        # Row start addresses live in registers, advanced by their stride when the row
        # advances: base + row * stride computed anew each cycle put a multiplier in
        # front of the cache compare, the read request and the unit handshakes (the
        # machine's ECP5 critical path after the requantiser's). EMBED's wte row
        # depends on the token id read from memory: it is registered in one extra
        # cycle per row (`tok_ok`) once the id's word is cached.
        A = e.addr_bits
        src_row, y_row, wpe_row = (Signal(A, name=f"{n}_row") for n in ("src", "y", "wpe"))
        tok_ok = Signal()
        wte_row, wte_q_addr = Signal(A), Signal(A)
        wte_q_off = Signal(range(MB))

        def elem_addr(row_base, size):
            byte = col * size
            return row_base + byte // MB, byte % MB

        # per slot (address, byte offset, used) in the current phase
        a_g, o_g = elem_addr(ln_c.gamma_base, GAMMA_BYTES)
        a_b, o_b = elem_addr(ln_c.beta_base, BETA_BYTES)
        a_t, o_t = elem_addr(ge_c.table_base, ACT_BYTES)
        a_x16, o_x16 = elem_addr(src_row, RESID_BYTES)
        a_x8, o_x8 = elem_addr(src_row, ACT_BYTES)
        a_y, o_y = elem_addr(y_row, RAW_BYTES)
        a_q, o_q = elem_addr(ad_c.q_base, Q_BYTES)
        # EMBED: the token id (slot 0) selects the wte row (slots 1, 2)
        pos = em_c.pos0 + r
        a_id, o_id = em_c.src_base + (r * Q_BYTES) // MB, (r * Q_BYTES) % MB
        tok_id = Signal(32)
        slot_addr = [Signal(e.addr_bits, name=f"slot_addr{s}") for s in range(NS)]
        slot_off = [Signal(range(MB), name=f"slot_off{s}") for s in range(NS)]
        slot_used = Signal(NS)
        with m.If(~phase):
            with m.If(is_ln):
                m.d.comb += [slot_addr[0].eq(a_g), slot_off[0].eq(o_g),
                             slot_addr[1].eq(a_b), slot_off[1].eq(o_b), slot_used.eq(0b011)]
            with m.Elif(is_ge):
                m.d.comb += [slot_addr[0].eq(a_t), slot_off[0].eq(o_t), slot_used.eq(0b001)]
        with m.Else():
            with m.If(is_ge):
                m.d.comb += [slot_addr[0].eq(a_x8), slot_off[0].eq(o_x8), slot_used.eq(0b001)]
            with m.Else():
                m.d.comb += [slot_addr[0].eq(a_x16), slot_off[0].eq(o_x16), slot_used.eq(0b001)]
            with m.If(is_ad):
                m.d.comb += [slot_addr[1].eq(a_y), slot_off[1].eq(o_y),
                             slot_addr[2].eq(a_q), slot_off[2].eq(o_q),
                             slot_used.eq(Mux(is_rq, 0b00110, 0b00111))]
            with m.If(is_em):
                m.d.comb += [slot_addr[0].eq(a_id), slot_off[0].eq(o_id),
                             slot_addr[1].eq(wte_row + col // MB),
                             slot_off[1].eq(col % MB),
                             slot_addr[2].eq(wte_q_addr), slot_off[2].eq(wte_q_off),
                             slot_addr[3].eq(wpe_row + col // MB),
                             slot_off[3].eq(col % MB),
                             slot_addr[4].eq(em_c.wpe_q_base + (pos * Q_BYTES) // MB),
                             slot_off[4].eq((pos * Q_BYTES) % MB),
                             slot_used.eq(0b11111)]

        def field(s, size):
            """The element of `size` bytes at slot s's byte offset, as raw bits."""
            return (cache_word[s] >> (slot_off[s] * 8))[:8 * size]

        m.d.comb += tok_id.eq(field(0, Q_BYTES))
        cur_addr = Signal(e.addr_bits)         # address of the slot being filled
        with m.Switch(slot):
            for s in range(NS):
                with m.Case(s):
                    m.d.comb += cur_addr.eq(slot_addr[s])
        # all operand slots are checked at once: the element is emitted in the first
        # cycle in which every used slot holds its word; otherwise the lowest
        # missing slot is requested
        miss = Signal(NS)
        first_miss = Signal(range(NS))
        tok_wait = is_em & phase & ~tok_ok     # slots 1, 2 wait for the registered wte row
        m.d.comb += miss.eq(Mux(tok_wait, slot_used & 1, slot_used) & ~Cat(*[cache_ok[s] & (cache_addr[s] == slot_addr[s])
                                              for s in range(NS)]))
        for s in reversed(range(NS)):
            with m.If(miss[s]):
                m.d.comb += first_miss.eq(s)
        req_addr = Signal(e.addr_bits)
        with m.Switch(first_miss):
            for s in range(NS):
                with m.Case(s):
                    m.d.comb += req_addr.eq(slot_addr[s])
        m.d.comb += self.mem.rd_req.payload.addr.eq(req_addr)

        # unit inputs (valid driven by `emit`: FETCH with every used slot cached)
        x16 = field(0, RESID_BYTES).as_signed()
        yq = field(2, Q_BYTES)
        last_col = col == n - 1
        m.d.comb += [
            gelu.load.payload.addr.eq(col), gelu.load.payload.data.eq(field(0, 1)),
            gelu.inp.payload.x[0].eq(field(0, ACT_BYTES)), gelu.inp.payload.last.eq(last_col),
            ln.setup.payload.n.eq(n), ln.setup.payload.out_shift.eq(ln_c.out_shift),
            ln.setup.payload.eps_m.eq(ln_c.eps_m), ln.setup.payload.eps_e.eq(ln_c.eps_e),
            ln.param.payload.gamma[0].eq(field(0, GAMMA_BYTES)),
            ln.param.payload.beta[0].eq(field(1, BETA_BYTES)[:48]),
            ln.inp.payload.x[0].eq(x16), ln.inp.payload.last.eq(last_col),
            add.a.payload.x[0].eq(Mux(is_rq, 0, x16)), add.a.payload.last.eq(last_col),
            emb.tok.payload.x[0].eq(field(1, ACT_BYTES)), emb.tok.payload.last.eq(last_col),
            emb.tok.payload.mult.eq(field(2, Q_BYTES)[:16]),
            emb.tok.payload.shift.eq(field(2, Q_BYTES)[16:22]),
            emb.pos.payload.x[0].eq(field(3, ACT_BYTES)), emb.pos.payload.last.eq(last_col),
            emb.pos.payload.mult.eq(field(4, Q_BYTES)[:16]),
            emb.pos.payload.shift.eq(field(4, Q_BYTES)[16:22]),
            add.y.payload.x[0].eq(field(1, RAW_BYTES)), add.y.payload.last.eq(last_col),
            add.y.payload.mult[0].eq(yq[:16]), add.y.payload.shift[0].eq(yq[16:22]),
        ]
        emit_ready = Signal()
        emit = Signal()
        with m.If(~phase):
            m.d.comb += [emit_ready.eq(Mux(is_ln, ln.param.ready, gelu.load.ready)),
                         ln.param.valid.eq(emit & is_ln), gelu.load.valid.eq(emit & is_ge)]
        with m.Else():
            m.d.comb += [emit_ready.eq(Mux(is_ln, ln.inp.ready,
                                           Mux(is_ge, gelu.inp.ready,
                                               Mux(is_em, emb.tok.ready, add.a.ready)))),
                         ln.inp.valid.eq(emit & is_ln), gelu.inp.valid.eq(emit & is_ge),
                         add.a.valid.eq(emit & is_ad), add.y.valid.eq(emit & is_ad),
                         emb.tok.valid.eq(emit & is_em), emb.pos.valid.eq(emit & is_em)]
        pre_n = Mux(is_ge, TABLE_SIZE, n)

        # ---------------- writer ----------------
        wr_r = Signal.like(r)
        wr_col = Signal.like(col)
        dst_row = Signal(A)
        wide = is_ad | is_em                  # int16 residual-width outputs
        # RESID_BYTES = 2 * ACT_BYTES: a shift, not a multiplier, in the write address
        wbyte = Mux(wide, wr_col << 1, wr_col)
        out_valid = Mux(is_ln, ln.out.valid, Mux(is_ge, gelu.out.valid,
                                                 Mux(is_em, emb.out.valid, add.out.valid)))
        out_data = Mux(is_ln, ln.out.payload.y[0].as_unsigned(),
                       Mux(is_ge, gelu.out.payload.y[0].as_unsigned(),
                           Mux(is_em, emb.out.payload.x[0].as_unsigned(),
                               add.out.payload.x[0].as_unsigned())))
        off = Signal(range(MB))
        m.d.comb += [off.eq(wbyte % MB),
                     self.mem.wr.payload.addr.eq(dst_row + wbyte // MB),
                     self.mem.wr.payload.data.eq(out_data[:16] << (off * 8)),
                     self.mem.wr.payload.strb.eq(Mux(wide, 0b11, 0b1) << off)]
        writing = Signal()
        done = Signal()
        m.d.sync += done.eq(0)
        m.d.comb += [self.done.eq(done),
                     self.mem.wr.valid.eq(writing & out_valid),
                     ln.out.ready.eq(writing & is_ln & self.mem.wr.ready),
                     gelu.out.ready.eq(writing & is_ge & self.mem.wr.ready),
                     add.out.ready.eq(writing & is_ad & self.mem.wr.ready),
                     emb.out.ready.eq(writing & is_em & self.mem.wr.ready)]
        with m.If(self.mem.wr.valid & self.mem.wr.ready):
            m.d.sync += wr_col.eq(wr_col + 1)
            with m.If(wr_col == n - 1):
                m.d.sync += [wr_col.eq(0), wr_r.eq(wr_r + 1), dst_row.eq(dst_row + dst_stride)]
                with m.If(wr_r == rows - 1):
                    m.d.sync += [writing.eq(0), done.eq(1)]

        # ---------------- reader FSM ----------------
        busy = Signal()
        m.d.comb += self.busy.eq(busy | writing)
        with m.FSM():
            with m.State("IDLE"):
                m.d.comb += self.cmd.ready.eq(~writing)
                with m.If(self.cmd.valid & ~writing):
                    n_ln, n_ad, n_em = new[Op.LAYERNORM], new[Op.RESADD], new[Op.EMBED]
                    m.d.sync += [src_row.eq(n_ln.src_base), dst_row.eq(n_ln.dst_base),
                                 y_row.eq(n_ad.y_base),
                                 wpe_row.eq(n_em.wpe_base + n_em.pos0 * n_em.wpe_stride),
                                 tok_ok.eq(0)]
                    m.d.sync += [op.eq(self.cmd.payload.op), body.eq(self.cmd.payload.body),
                                 phase.eq(0), r.eq(0), col.eq(0), slot.eq(0), cache_ok.eq(0),
                                 wr_r.eq(0), wr_col.eq(0), writing.eq(1), busy.eq(1)]
                    with m.If(self.cmd.payload.op == Op.LAYERNORM):
                        m.next = "SETUP"
                    with m.Elif(self.cmd.payload.op != Op.GELU):     # no table/params
                        m.d.sync += phase.eq(1)
                        m.next = "FETCH"
                    with m.Else():
                        m.next = "FETCH"
            with m.State("SETUP"):
                m.d.comb += ln.setup.valid.eq(1)
                with m.If(ln.setup.ready):
                    m.next = "FETCH"
            with m.State("FETCH"):
                with m.If(miss != 0):
                    m.d.comb += self.mem.rd_req.valid.eq(1)
                    with m.If(self.mem.rd_req.ready):
                        m.d.sync += slot.eq(first_miss)
                        m.next = "RESP"
                with m.Elif(tok_wait):
                    m.d.sync += [wte_row.eq(em_c.wte_base + tok_id * em_c.wte_stride),
                                 wte_q_addr.eq(em_c.wte_q_base + (tok_id * Q_BYTES) // MB),
                                 wte_q_off.eq((tok_id * Q_BYTES) % MB), tok_ok.eq(1)]
                with m.Else():
                    m.d.comb += emit.eq(1)
                    with m.If(emit_ready):
                        m.d.sync += col.eq(col + 1)
                        with m.If(~phase):
                            with m.If(col == pre_n - 1):
                                m.d.sync += [col.eq(0), phase.eq(1)]
                        with m.Elif(last_col):
                            m.d.sync += [col.eq(0), r.eq(r + 1), tok_ok.eq(0),
                                         src_row.eq(src_row + src_stride),
                                         y_row.eq(y_row + ad_c.y_stride),
                                         wpe_row.eq(wpe_row + em_c.wpe_stride)]
                            with m.If(r == rows - 1):
                                m.d.sync += busy.eq(0)
                                m.next = "IDLE"
            with m.State("RESP"):
                m.d.comb += self.mem.rd_resp.ready.eq(1)
                with m.If(self.mem.rd_resp.valid):
                    with m.Switch(slot):
                        for s in range(NS):
                            with m.Case(s):
                                m.d.sync += [cache_word[s].eq(self.mem.rd_resp.payload.data),
                                             cache_addr[s].eq(cur_addr), cache_ok[s].eq(1)]
                    m.next = "FETCH"
        return m
