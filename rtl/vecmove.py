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

Each block is a component of its own: `_Reader` (with its `_SlotMap` and
`_OperandCache`), `_UnitMux` (steers the reader's elements to the unit the
opcode names and the unit's output to the writer; the units sit in
`VectorMover` itself) and `_Writer`; `VectorMover` only instantiates and
connects them.

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
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from .attention_config import AttentionConfig
from .gelu import GeluUnit, TABLE_SIZE
from .isa import (ACT_BYTES, BETA_BYTES, GAMMA_BYTES, Q_BYTES, RAW_BYTES, RESID_BYTES, Op,
                  cfg_max_vector_n, vector_layouts)
from .layernorm import LayerNormUnit, setup_layout
from .memport import MemPort, read_request_layout, read_response_layout, write_layout
from .residual import EmbeddingAdd, RequantAdd

__all__ = ["VectorMover"]

#: operand slots of an element (EMBED uses all five)
_NS = 5
#: bytes of each slot's element the units can take (slot 0 also holds EMBED's token id)
_SLOT_BYTES = (Q_BYTES, BETA_BYTES, Q_BYTES, ACT_BYTES, Q_BYTES)


def _command_layout(body_bits):
    return data.StructLayout({"op": unsigned(4), "body": unsigned(body_bits)})


def _col_shape(c):
    return range(max(TABLE_SIZE, cfg_max_vector_n(c)) + 1)


def _decode(op):
    """The opcode tests every block makes (REQUANT is a RESADD without a residual)."""
    is_rq = op == Op.REQUANT
    return dict(ln=op == Op.LAYERNORM, ge=op == Op.GELU, em=op == Op.EMBED, rq=is_rq,
                ad=(op == Op.RESADD) | is_rq)


def _views(layouts, body):
    return {o: lay(body[:lay.size]) for o, lay in layouts.items()}


class _Context(wiring.Signature):
    """The reader accepts commands; the other blocks read the running one from
    it: ``start`` (the accept pulse, with ``new``, the command being accepted)
    and ``op``/``body``, held until the next."""

    def __init__(self, body_bits):
        super().__init__({"start": Out(1), "new": Out(_command_layout(body_bits)),
                          "op": Out(4), "body": Out(body_bits)})


def _element_layout(c):
    """One element for a unit: each operand slot's bytes at the element's offset,
    its column, whether it ends a row, and whether it is a row element (else a
    GELU table entry or a LayerNorm parameter)."""
    return data.StructLayout({"row": 1, "col": _col_shape(c), "last": 1,
                              **{f"s{s}": unsigned(8 * b) for s, b in enumerate(_SLOT_BYTES)}})


class _Slots(wiring.Signature):
    """Each operand slot's word address and byte offset for the current element,
    and the slots it needs now (``want``)."""

    def __init__(self, e):
        super().__init__({"addr": Out(e.addr_bits).array(_NS),
                          "off": Out(range(e.mem_bytes)).array(_NS), "want": Out(_NS)})


class _OperandCache(wiring.Component):
    """The last word read for each operand slot. A slot hits when it holds the
    word at the slot's current address; the lowest missing slot among
    ``want`` is the one to read (``req_addr``). ``request`` (the read was
    accepted) remembers that slot, ``fill`` stores its word."""

    def __init__(self, c):
        e = c.engine
        super().__init__({
            "slots": In(_Slots(e)),
            "clear": In(1), "request": In(1), "fill": In(1), "data": In(8 * e.mem_bytes),
            "missing": Out(1), "req_addr": Out(e.addr_bits),
            "field": Out(64).array(_NS),
        })

    def elaborate(self, platform):
        m = Module()
        addr, off, want = self.slots.addr, self.slots.off, self.slots.want
        slot = Signal(range(_NS))
        cache_ok = Signal(_NS)
        cache_addr = [Signal.like(addr[s], name=f"cache_addr{s}") for s in range(_NS)]
        cache_word = [Signal.like(self.data, name=f"cache_word{s}") for s in range(_NS)]
        for s in range(_NS):
            m.d.comb += self.field[s].eq((cache_word[s] >> (off[s] * 8))[:8 * _SLOT_BYTES[s]])
        cur_addr = Signal.like(self.req_addr)      # address of the slot being filled
        with m.Switch(slot):
            for s in range(_NS):
                with m.Case(s):
                    m.d.comb += cur_addr.eq(addr[s])
        miss = Signal(_NS)
        first_miss = Signal(range(_NS))
        m.d.comb += [miss.eq(want & ~Cat(*[cache_ok[s] & (cache_addr[s] == addr[s])
                                                for s in range(_NS)])),
                     self.missing.eq(miss != 0)]
        for s in reversed(range(_NS)):
            with m.If(miss[s]):
                m.d.comb += first_miss.eq(s)
        with m.Switch(first_miss):
            for s in range(_NS):
                with m.Case(s):
                    m.d.comb += self.req_addr.eq(addr[s])
        with m.If(self.clear):
            m.d.sync += [slot.eq(0), cache_ok.eq(0)]
        with m.If(self.request):
            m.d.sync += slot.eq(first_miss)
        with m.If(self.fill):
            with m.Switch(slot):
                for s in range(_NS):
                    with m.Case(s):
                        m.d.sync += [cache_word[s].eq(self.data),
                                     cache_addr[s].eq(cur_addr), cache_ok[s].eq(1)]
        return m


class _SlotMap(wiring.Component):
    """Where each operand slot's word of the current element is (phase,
    opcode, row ``r``, column ``col``), from row start registers advanced on
    ``next_row``. EMBED's token id (slot 0, ``tok_id``) selects the wte row,
    registered on ``tok_load`` while ``tok_wait`` holds slots 1 and 2 back."""

    def __init__(self, c, body_bits):
        self.cfg, self.layouts = c, vector_layouts(c)
        e = c.engine
        super().__init__({
            "ctx": In(_Context(body_bits)),
            "phase": In(1), "col": In(_col_shape(c)), "r": In(range(e.max_m + 1)),
            "next_row": In(1), "tok_id": In(8 * Q_BYTES), "tok_load": In(1),
            "tok_wait": Out(1),
            "slots": Out(_Slots(e)),
        })

    def elaborate(self, platform):
        m = Module()
        e, ctx = self.cfg.engine, self.ctx
        MB = e.mem_bytes
        views = _views(self.layouts, ctx.body)
        ln_c, ge_c, ad_c = views[Op.LAYERNORM], views[Op.GELU], views[Op.RESADD]
        em_c = views[Op.EMBED]
        is_ = _decode(ctx.op)
        phase, col, r, tok_id = self.phase, self.col, self.r, self.tok_id
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
        slot_addr, slot_off = self.slots.addr, self.slots.off
        slot_used = Signal(_NS)
        with m.If(~phase):
            with m.If(is_["ln"]):
                m.d.comb += [slot_addr[0].eq(a_g), slot_off[0].eq(o_g),
                             slot_addr[1].eq(a_b), slot_off[1].eq(o_b), slot_used.eq(0b011)]
            with m.Elif(is_["ge"]):
                m.d.comb += [slot_addr[0].eq(a_t), slot_off[0].eq(o_t), slot_used.eq(0b001)]
        with m.Else():
            with m.If(is_["ge"]):
                m.d.comb += [slot_addr[0].eq(a_x8), slot_off[0].eq(o_x8), slot_used.eq(0b001)]
            with m.Else():
                m.d.comb += [slot_addr[0].eq(a_x16), slot_off[0].eq(o_x16), slot_used.eq(0b001)]
            with m.If(is_["ad"]):
                m.d.comb += [slot_addr[1].eq(a_y), slot_off[1].eq(o_y),
                             slot_addr[2].eq(a_q), slot_off[2].eq(o_q),
                             slot_used.eq(Mux(is_["rq"], 0b00110, 0b00111))]
            with m.If(is_["em"]):
                m.d.comb += [slot_addr[0].eq(a_id), slot_off[0].eq(o_id),
                             slot_addr[1].eq(wte_row + col // MB),
                             slot_off[1].eq(col % MB),
                             slot_addr[2].eq(wte_q_addr), slot_off[2].eq(wte_q_off),
                             slot_addr[3].eq(wpe_row + col // MB),
                             slot_off[3].eq(col % MB),
                             slot_addr[4].eq(em_c.wpe_q_base + (pos * Q_BYTES) // MB),
                             slot_off[4].eq((pos * Q_BYTES) % MB),
                             slot_used.eq(0b11111)]
        tok_wait = self.tok_wait
        m.d.comb += [tok_wait.eq(is_["em"] & phase & ~tok_ok),  # wte row not registered yet
                     self.slots.want.eq(Mux(tok_wait, slot_used & 1, slot_used))]
        with m.If(ctx.start):
            new = _views(self.layouts, ctx.new.body)
            n_ln, n_ad, n_em = new[Op.LAYERNORM], new[Op.RESADD], new[Op.EMBED]
            m.d.sync += [src_row.eq(n_ln.src_base), y_row.eq(n_ad.y_base),
                         wpe_row.eq(n_em.wpe_base + n_em.pos0 * n_em.wpe_stride),
                         tok_ok.eq(0)]
        with m.If(self.tok_load):
            m.d.sync += [wte_row.eq(em_c.wte_base + tok_id * em_c.wte_stride),
                         wte_q_addr.eq(em_c.wte_q_base + (tok_id * Q_BYTES) // MB),
                         wte_q_off.eq((tok_id * Q_BYTES) % MB), tok_ok.eq(1)]
        with m.If(self.next_row):
            m.d.sync += [tok_ok.eq(0), src_row.eq(src_row + ln_c.src_stride),
                         y_row.eq(y_row + ad_c.y_stride),
                         wpe_row.eq(wpe_row + em_c.wpe_stride)]
        return m


class _Reader(wiring.Component):
    """Accepts a command and walks its elements (GELU table / LayerNorm setup
    and parameters first, then the rows), reading each operand word it lacks
    and handing out an element once all its slots hold their words.
    ``writing`` (the writer has not finished the previous command) holds the
    next command back."""

    def __init__(self, c, body_bits):
        self.cfg, self.body_bits, self.layouts = c, body_bits, vector_layouts(c)
        e = c.engine
        super().__init__({
            "cmd": In(stream.Signature(_command_layout(body_bits))),
            "ctx": Out(_Context(body_bits)),
            "writing": In(1),
            "busy": Out(1),
            "rd_req": Out(stream.Signature(read_request_layout(e))),
            "rd_resp": In(stream.Signature(read_response_layout(e))),
            "setup": Out(stream.Signature(setup_layout())),
            "elem": Out(stream.Signature(_element_layout(c))),
        })

    def elaborate(self, platform):
        m = Module()
        c, e, ctx = self.cfg, self.cfg.engine, self.ctx
        ln_c = _views(self.layouts, ctx.body)[Op.LAYERNORM]
        is_ = _decode(ctx.op)
        rows, n = ln_c.rows, ln_c.n    # the common fields sit at the same offsets in every body

        # phase: 0 setup/table/params, 1 rows
        phase = Signal()
        r = Signal(range(e.max_m + 1))
        col = Signal(_col_shape(c))

        # all operand slots are checked at once: the element is emitted in the first
        # cycle in which every used slot holds its word; otherwise the lowest
        # missing slot is requested
        m.submodules.slots = slots = _SlotMap(c, self.body_bits)
        m.submodules.cache = cache = _OperandCache(c)
        wiring.connect(m, self.ctx, slots.ctx)
        wiring.connect(m, slots.slots, cache.slots)
        m.d.comb += [slots.phase.eq(phase), slots.col.eq(col), slots.r.eq(r),
                     slots.tok_id.eq(cache.field[0][:8 * Q_BYTES])]
        last_col = col == n - 1
        elem = self.elem.payload
        m.d.comb += [cache.data.eq(self.rd_resp.payload.data),
                     self.rd_req.payload.addr.eq(cache.req_addr),
                     elem.row.eq(phase), elem.col.eq(col), elem.last.eq(last_col),
                     *(elem[f"s{s}"].eq(cache.field[s]) for s in range(_NS)),
                     self.setup.payload.n.eq(n), self.setup.payload.out_shift.eq(ln_c.out_shift),
                     self.setup.payload.eps_m.eq(ln_c.eps_m),
                     self.setup.payload.eps_e.eq(ln_c.eps_e)]
        pre_n = Mux(is_["ge"], TABLE_SIZE, n)

        busy = self.busy
        with m.FSM():
            with m.State("IDLE"):
                m.d.comb += self.cmd.ready.eq(~self.writing)
                with m.If(self.cmd.valid & ~self.writing):
                    m.d.comb += [ctx.start.eq(1), cache.clear.eq(1)]
                    m.d.sync += [ctx.op.eq(self.cmd.payload.op), ctx.body.eq(self.cmd.payload.body),
                                 phase.eq(0), r.eq(0), col.eq(0), busy.eq(1)]
                    with m.If(self.cmd.payload.op == Op.LAYERNORM):
                        m.next = "SETUP"
                    with m.Elif(self.cmd.payload.op != Op.GELU):     # no table/params
                        m.d.sync += phase.eq(1)
                        m.next = "FETCH"
                    with m.Else():
                        m.next = "FETCH"
            with m.State("SETUP"):
                m.d.comb += self.setup.valid.eq(1)
                with m.If(self.setup.ready):
                    m.next = "FETCH"
            with m.State("FETCH"):
                with m.If(cache.missing):
                    m.d.comb += self.rd_req.valid.eq(1)
                    with m.If(self.rd_req.ready):
                        m.d.comb += cache.request.eq(1)
                        m.next = "RESP"
                with m.Elif(slots.tok_wait):
                    m.d.comb += slots.tok_load.eq(1)
                with m.Else():
                    m.d.comb += self.elem.valid.eq(1)
                    with m.If(self.elem.ready):
                        m.d.sync += col.eq(col + 1)
                        with m.If(~phase):
                            with m.If(col == pre_n - 1):
                                m.d.sync += [col.eq(0), phase.eq(1)]
                        with m.Elif(last_col):
                            m.d.comb += slots.next_row.eq(1)
                            m.d.sync += [col.eq(0), r.eq(r + 1)]
                            with m.If(r == rows - 1):
                                m.d.sync += busy.eq(0)
                                m.next = "IDLE"
            with m.State("RESP"):
                m.d.comb += self.rd_resp.ready.eq(1)
                with m.If(self.rd_resp.valid):
                    m.d.comb += cache.fill.eq(1)
                    m.next = "FETCH"
        m.d.comb += ctx.new.eq(self.cmd.payload)
        return m


class _UnitMux(wiring.Component):
    """Between the reader, the units and the writer: the element goes to the
    input of the unit the opcode names (a table entry or parameter to its
    side input), and that unit's output goes to the writer. Its ports mirror
    the units' streams (``<unit>_<port>``, LayerNorm's setup aside, which the
    reader drives directly), so `VectorMover` connects them one to one."""

    def __init__(self, c, units):
        self.units = tuple(units)
        members = {"op": In(4), "elem": In(stream.Signature(_element_layout(c))),
                   "res": Out(stream.Signature(16))}
        for name, unit in units.items():
            for port, member in unit.signature.members.items():
                if member.is_signature and port != "setup":
                    members[f"{name}_{port}"] = member.flip()
        super().__init__(members)

    def elaborate(self, platform):
        m = Module()
        is_ = _decode(self.op)
        el, emit = self.elem.payload, self.elem.valid
        x16 = el.s0[:8 * RESID_BYTES].as_signed()
        yq = el.s2
        m.d.comb += [
            self.gelu_load.payload.addr.eq(el.col), self.gelu_load.payload.data.eq(el.s0[:8]),
            self.gelu_inp.payload.x[0].eq(el.s0[:8 * ACT_BYTES]),
            self.gelu_inp.payload.last.eq(el.last),
            self.ln_param.payload.gamma[0].eq(el.s0[:8 * GAMMA_BYTES]),
            self.ln_param.payload.beta[0].eq(el.s1[:48]),
            self.ln_inp.payload.x[0].eq(x16), self.ln_inp.payload.last.eq(el.last),
            self.add_a.payload.x[0].eq(Mux(is_["rq"], 0, x16)), self.add_a.payload.last.eq(el.last),
            self.emb_tok.payload.x[0].eq(el.s1[:8 * ACT_BYTES]),
            self.emb_tok.payload.last.eq(el.last),
            self.emb_tok.payload.mult.eq(el.s2[:16]), self.emb_tok.payload.shift.eq(el.s2[16:22]),
            self.emb_pos.payload.x[0].eq(el.s3[:8 * ACT_BYTES]),
            self.emb_pos.payload.last.eq(el.last),
            self.emb_pos.payload.mult.eq(el.s4[:16]), self.emb_pos.payload.shift.eq(el.s4[16:22]),
            self.add_y.payload.x[0].eq(el.s1[:8 * RAW_BYTES]), self.add_y.payload.last.eq(el.last),
            self.add_y.payload.mult[0].eq(yq[:16]), self.add_y.payload.shift[0].eq(yq[16:22]),
        ]
        with m.If(~el.row):
            m.d.comb += [self.elem.ready.eq(Mux(is_["ln"], self.ln_param.ready,
                                                self.gelu_load.ready)),
                         self.ln_param.valid.eq(emit & is_["ln"]),
                         self.gelu_load.valid.eq(emit & is_["ge"])]
        with m.Else():
            m.d.comb += [self.elem.ready.eq(Mux(is_["ln"], self.ln_inp.ready,
                                                Mux(is_["ge"], self.gelu_inp.ready,
                                                    Mux(is_["em"], self.emb_tok.ready,
                                                        self.add_a.ready)))),
                         self.ln_inp.valid.eq(emit & is_["ln"]),
                         self.gelu_inp.valid.eq(emit & is_["ge"]),
                         self.add_a.valid.eq(emit & is_["ad"]), self.add_y.valid.eq(emit & is_["ad"]),
                         self.emb_tok.valid.eq(emit & is_["em"]),
                         self.emb_pos.valid.eq(emit & is_["em"])]

        # residual-width results are written as int16 words: sign-extend them from
        # resid_bits, or a narrower residual stream would be read back as positive
        add16, emb16 = Signal(signed(8 * RESID_BYTES)), Signal(signed(8 * RESID_BYTES))
        m.d.comb += [add16.eq(self.add_out.payload.x[0]), emb16.eq(self.emb_out.payload.x[0])]
        m.d.comb += [
            self.res.valid.eq(Mux(is_["ln"], self.ln_out.valid,
                                  Mux(is_["ge"], self.gelu_out.valid,
                                      Mux(is_["em"], self.emb_out.valid, self.add_out.valid)))),
            self.res.payload.eq(Mux(is_["ln"], self.ln_out.payload.y[0].as_unsigned(),
                                    Mux(is_["ge"], self.gelu_out.payload.y[0].as_unsigned(),
                                        Mux(is_["em"], emb16.as_unsigned(),
                                            add16.as_unsigned())))[:16]),
            self.ln_out.ready.eq(is_["ln"] & self.res.ready),
            self.gelu_out.ready.eq(is_["ge"] & self.res.ready),
            self.add_out.ready.eq(is_["ad"] & self.res.ready),
            self.emb_out.ready.eq(is_["em"] & self.res.ready)]
        return m


class _Writer(wiring.Component):
    """One strobed write per unit output element, on counters of its own (the
    reader may already be reading the next row, or, for LayerNorm, be done
    with the whole command). ``writing`` lasts from the command's accept to
    its last write."""

    def __init__(self, c, body_bits):
        self.cfg, self.layouts = c, vector_layouts(c)
        super().__init__({
            "ctx": In(_Context(body_bits)),
            "res": In(stream.Signature(16)),
            "wr": Out(stream.Signature(write_layout(c.engine))),
            "writing": Out(1),
            "done": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        c, e, ctx = self.cfg, self.cfg.engine, self.ctx
        MB = e.mem_bytes
        ln_c = _views(self.layouts, ctx.body)[Op.LAYERNORM]
        is_ = _decode(ctx.op)
        rows, n = ln_c.rows, ln_c.n    # the common fields sit at the same offsets in every body
        wr_r = Signal(range(e.max_m + 1))
        wr_col = Signal(_col_shape(c))
        dst_row = Signal(e.addr_bits)
        wide = is_["ad"] | is_["em"]          # int16 residual-width outputs
        # RESID_BYTES = 2 * ACT_BYTES: a shift, not a multiplier, in the write address
        wbyte = Mux(wide, wr_col << 1, wr_col)
        off = Signal(range(MB))
        m.d.comb += [off.eq(wbyte % MB),
                     self.wr.payload.addr.eq(dst_row + wbyte // MB),
                     self.wr.payload.data.eq(self.res.payload << (off * 8)),
                     self.wr.payload.strb.eq(Mux(wide, 0b11, 0b1) << off)]
        m.d.sync += self.done.eq(0)
        m.d.comb += [self.wr.valid.eq(self.writing & self.res.valid),
                     self.res.ready.eq(self.writing & self.wr.ready)]
        with m.If(self.wr.valid & self.wr.ready):
            m.d.sync += wr_col.eq(wr_col + 1)
            with m.If(wr_col == n - 1):
                m.d.sync += [wr_col.eq(0), wr_r.eq(wr_r + 1),
                             dst_row.eq(dst_row + ln_c.dst_stride)]
                with m.If(wr_r == rows - 1):
                    m.d.sync += [self.writing.eq(0), self.done.eq(1)]
        with m.If(ctx.start):
            m.d.sync += [dst_row.eq(_views(self.layouts, ctx.new.body)[Op.LAYERNORM].dst_base),
                         wr_r.eq(0), wr_col.eq(0), self.writing.eq(1)]
        return m


class VectorMover(wiring.Component):
    """Runs LAYERNORM / GELU / RESADD / REQUANT / EMBED instructions; ``cmd`` carries the opcode and body bits.

    Ports: ``cmd`` (``op``: Op value, ``body``: the instruction body bits),
    the memory port, ``busy``, ``done`` (pulse after the last write).
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
        super().__init__({
            "cmd": In(stream.Signature(_command_layout(self.body_bits))),
            "mem": Out(MemPort.for_config(e)),
            "busy": Out(1), "done": Out(1)})

    def elaborate(self, platform):
        m = Module()
        c, R = self.cfg, self.resid_bits
        units = {"gelu": GeluUnit(1), "ln": LayerNormUnit(1, in_bits=R, max_e=cfg_max_vector_n(c)),
                 "add": RequantAdd(1, R), "emb": EmbeddingAdd(1, R)}
        for name, unit in units.items():
            m.submodules[name] = unit
        m.submodules.reader = reader = _Reader(c, self.body_bits)
        m.submodules.mux = mux = _UnitMux(c, units)
        m.submodules.writer = writer = _Writer(c, self.body_bits)
        wiring.connect(m, wiring.flipped(self.cmd), reader.cmd)
        wiring.connect(m, reader.ctx, writer.ctx)
        wiring.connect(m, reader.rd_req, wiring.flipped(self.mem.rd_req))
        wiring.connect(m, wiring.flipped(self.mem.rd_resp), reader.rd_resp)
        wiring.connect(m, reader.setup, units["ln"].setup)
        wiring.connect(m, reader.elem, mux.elem)
        for name, unit in units.items():
            for port, member in unit.signature.members.items():
                if member.is_signature and port != "setup":
                    wiring.connect(m, getattr(mux, f"{name}_{port}"), getattr(unit, port))
        wiring.connect(m, mux.res, writer.res)
        wiring.connect(m, writer.wr, wiring.flipped(self.mem.wr))
        m.d.comb += [mux.op.eq(reader.ctx.op), reader.writing.eq(writer.writing),
                     self.busy.eq(reader.busy | writer.writing), self.done.eq(writer.done)]
        return m
