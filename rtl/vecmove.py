"""Memory <-> stream movers for the vector units (LAYERNORM, GELU, RESADD, REQUANT, EMBED).

The vector units (`GeluUnit`, `LayerNormUnit`, `RequantAdd`, `EmbeddingAdd`) are stream
units without memory access. `VectorMover` runs one vector instruction
(`isa.vector_layouts`) on `lanes`-wide instances of them, ``lanes = mem_bytes / 4``:

```
 issuer:    walks the element groups (lanes columns each) and requests each
            operand word a group starts, up to max_outstanding in flight
 assembler: walks the same groups, takes the responses in order (from a
            queue of two registers) into one register per operand word slot,
            and hands a group to the unit once its words are in (GELU table
            words first; LayerNorm's setup, its first row, then its
            parameters), through a skid register while the unit stalls
 unit:      GeluUnit(lanes) | LayerNormUnit(lanes) | RequantAdd(lanes) | EmbeddingAdd(lanes)
 writer:    one strobed write per unit output beat (own counters)
```

Why ``mem_bytes / 4`` lanes: a group then takes exactly one word of the widest
streamed operand (RESADD's int32 y and its uint32 per-column requantisers), a
half word of an int16 operand and a quarter of an int8 one, so a group never
straddles a word, a slot's field is one of at most four fixed quarters of its
word (no barrel shift), and one beat writes a half (int16) or a quarter (int8)
word. The units then take one group per cycle; the port delivers one word per
cycle, so an instruction costs about max(groups, words read) cycles.

Each block is a component of its own: `_Walker` (the group cursor, its operand
words and, for the issuer, their addresses; the issuer and the assembler each
have one), `_Reader` (accepts the command, the issuer and the assembler),
`_UnitMux` (steers the assembler's groups to the unit the opcode names and the
unit's output to the writer; the units sit in `VectorMover` itself) and
`_Writer`; `VectorMover` only instantiates and connects them.

Addresses advance by strides and by one word per word read: no runtime
multiply sits in an address path (EMBED's wte tile, ``token // tc *
wte_stride``, is a registered multiply the issuer waits three cycles for,
once per row).

EMBED reads the token table in the matmul engine's W layout (`wte_tile_cols`
columns ``tc`` per tile, ``mem_bytes // tc`` table elements per word, one
token's elements ``tc`` bytes apart), so on a machine whose ``cols`` is ``tc``
the tied LM head's weight tiles are the embedding too: token t is column
``t % tc`` of tile ``t // tc``. A group of lanes takes its elements from the
words they lie in (two words, slots 1 and 2, when ``tc`` = 8; one when 4; a
fixed half or quarter of one when 2 or 1) through a ``tc``:1 byte mux per lane
on the column (registered with the token, and carried with each group): the
mux sits between the assembler's register and one of its own in front of the
unit (`EMBED_SELECT_CYCLES`), not on the read response's path.

Reader and writer are independent state machines on the two directions of
the port (reads and writes are separate channels), because LayerNorm emits
a row only after taking all of it. In-place RESADD (dst = src) is safe: the
writer writes a word only after the assembler has received it (its groups
were handed to the unit after that), and the issuer never reads a word twice.
"""
from amaranth.hdl import *
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from .attention_config import AttentionConfig
from .gelu import GeluUnit, TABLE_SIZE, table_words
from .isa import BETA_BYTES, Q_BYTES, Op, cfg_max_vector_n, vector_layouts, wte_tile_cols
from .layernorm import LayerNormUnit, setup_layout
from .memport import MemPort, read_request_layout, read_response_layout, write_layout
from .residual import EmbeddingAdd, RequantAdd

__all__ = ["VectorMover", "vector_lanes", "start_cycles", "NW", "START_CYCLES",
           "ODD_LANES_START_CYCLES", "EMBED_START_CYCLES",
           "TOK_CYCLES", "EMBED_SELECT_CYCLES", "REQ_CYCLES", "RESP_CYCLES", "WRITE_CYCLES"]

#: operand word slots of a group, in request order: 0 src (x / gamma / table /
#: EMBED's token ids), 1 and 2 the two words of LayerNorm beta or of EMBED's wte
#: tiles of 8 columns (1 alone: RESADD's y, EMBED's wte of fewer columns), 3
#: RESADD's q / EMBED's wte requantiser, 4 EMBED's wpe
#: row, 5 EMBED's wpe requantiser
NW = 6
#: cycles from a request's issue to its being on the port (the request register)
REQ_CYCLES = 1
#: cycles from a response's transfer on the port to the assembler's taking it: the
#: response queue passes a word straight on while it is empty
RESP_CYCLES = 0
#: cycles from a unit's output beat to its write being on the port (the write register)
WRITE_CYCLES = 1
#: cycles from the token id being seen to the wte row address being registered
TOK_CYCLES = 3
#: EMBED's register between the assembler and the unit (the table elements' byte select)
EMBED_SELECT_CYCLES = 1
#: cycles from a command's accept to the issuer's and assembler's first cycle: the
#: walkers init in the accept cycle, from the command being accepted, and the row's
#: last group and lane mask (n - 1 split at the lanes) are registered beside them
START_CYCLES = 1
#: ... when the lanes are not a power of two (n - 1 is registered at the accept and
#: divided by the lanes in the walkers' init cycle, the one after)
ODD_LANES_START_CYCLES = 2
#: ... for EMBED (two prepare cycles, the products and quotients of its position
#: the walkers start from, then the walkers' init)
EMBED_START_CYCLES = 4


def vector_lanes(mem_bytes):
    """Lanes of the vector units: one int32 per lane in one memory word."""
    return mem_bytes // 4


def start_cycles(mem_bytes, op):
    """Cycles from the accept of instruction `op` to the mover's first request."""
    if op == Op.EMBED:
        return EMBED_START_CYCLES
    L = vector_lanes(mem_bytes)
    return START_CYCLES if L & (L - 1) == 0 else ODD_LANES_START_CYCLES


def _wte_quarter(sub, tc):
    """The quarter of its word a group's table elements start at (tc < 8): a word
    holds 4 // tc groups' elements."""
    return (sub * tc)[:2] if tc < 4 else C(0, 2)


def _command_layout(body_bits):
    return data.StructLayout({"op": unsigned(4), "body": unsigned(body_bits)})


def _decode(op):
    """The opcode tests every block makes (REQUANT is a RESADD without a residual)."""
    is_rq = op == Op.REQUANT
    return dict(ln=op == Op.LAYERNORM, ge=op == Op.GELU, em=op == Op.EMBED, rq=is_rq,
                ad=(op == Op.RESADD) | is_rq)


def _views(layouts, body):
    return {o: lay(body[:lay.size]) for o, lay in layouts.items()}


def _groups_shape(c):
    L = vector_lanes(c.engine.mem_bytes)
    return range(max(table_words(c.engine.mem_bytes), -(-cfg_max_vector_n(c) // L)) + 1)


def _prep_layout(c):
    """What the prepare cycles derive from a command: the last group of a row,
    the lanes of a row's last group, the first wpe row and wpe requantiser word
    (EMBED) and the requantiser's 4-byte lane in it."""
    e = c.engine
    L = vector_lanes(e.mem_bytes)
    return data.StructLayout({"last_g": _groups_shape(c), "last_mask": unsigned(L),
                              "wpe_row": unsigned(e.addr_bits), "pq_addr": unsigned(e.addr_bits),
                              "pq_sub": range(L)})


class _Context(wiring.Signature):
    """The reader accepts commands; the other blocks read the running one from
    it: ``start`` (the accept pulse, with ``new``, the command being accepted),
    ``op``/``body``, held until the next, and ``prep``, valid from the
    walkers' ``init``."""

    def __init__(self, c, body_bits):
        super().__init__({"start": Out(1), "new": Out(_command_layout(body_bits)),
                          "op": Out(4), "body": Out(body_bits), "prep": Out(_prep_layout(c))})


def _element_layout(c):
    """One group for a unit: each slot's field (s0: x, gamma or a table word;
    s1: beta, y or the wte words the group's table elements lie in; s2: q or
    the wte requantiser; s3: the wpe row; s4: the wpe requantiser), the
    group's index, whether it ends a row, whether it is a row group (else a
    GELU table word or LayerNorm parameters), and EMBED's token column
    (which byte of each lane's ``tc`` is its element)."""
    MB = c.engine.mem_bytes
    L = vector_lanes(MB)
    tc = wte_tile_cols(MB, c.engine.cols)
    return data.StructLayout({"row": 1, "grp": _groups_shape(c), "last": 1,
                              "tcol": range(tc),
                              "s0": unsigned(8 * MB), "s1": unsigned(16 * MB),
                              "s2": unsigned(8 * MB), "s3": unsigned(8 * L), "s4": unsigned(32)})


def _quarter(m, word, qi, name):
    """`word` from its quarter `qi` (0..3) on: a 4:1 mux of fixed shifts."""
    out = Signal(len(word), name=name)
    q = len(word) // 4
    with m.Switch(qi):
        for i in range(4):
            with m.Case(i):
                m.d.comb += out.eq(word[i * q:])
    return out


class _Walker(wiring.Component):
    """A cursor over an instruction's groups (phase 0: GELU table words or
    LayerNorm parameters; phase 1: the rows) and the operand words each group
    starts (``need``, one bit per word slot; ``need_adv`` and ``need_init``,
    what it becomes on an ``adv`` and on ``init``). ``adv`` moves to the next group,
    ``issue`` (one-hot) advances a slot's word address (the issuer's walker;
    the assembler's ignores its addresses). ``tok_set`` loads EMBED's wte row
    and requantiser addresses for the current row. ``init`` in the accept
    cycle (``ctx.start``) starts from the command being accepted; ``init_one_g``
    says that its first phase's last group is group 0 (``prep.last_g`` is
    registered in the same cycle).

    LayerNorm walks its first row, then its parameters, then the other rows:
    the unit takes rows before gamma/beta (only its pass C reads them), so a
    one-row decode's stats, pass B and root run while the parameter words
    (5 per 4 lanes) stream in, instead of after them. Not all rows first:
    the unit holds only a few rows (two X halves, its D banks) until
    pass C runs."""

    def __init__(self, c, body_bits):
        self.cfg, self.layouts = c, vector_layouts(c)
        e = c.engine
        L = vector_lanes(e.mem_bytes)
        A = e.addr_bits
        super().__init__({
            "ctx": In(_Context(c, body_bits)),
            "init": In(1), "init_one_g": In(1), "adv": In(1), "issue": In(NW),
            "tok_set": In(1), "wte_row": In(A), "wte_q": In(A),
            "running": Out(1), "phase": Out(1), "r": Out(range(e.max_m + 1)),
            "g": Out(_groups_shape(c)), "end_g": Out(1), "end_all": Out(1),
            "need": Out(NW), "need_adv": Out(NW), "need_init": Out(NW),
            "sub": Out(range(4)).array(4), "id_sub": Out(range(L)),
            "pq_sub": Out(range(L)), "addr": Out(A).array(5),
        })

    def elaborate(self, platform):
        m = Module()
        c, e, ctx = self.cfg, self.cfg.engine, self.ctx
        L = vector_lanes(e.mem_bytes)
        views = _views(self.layouts, ctx.body)
        ln_c, ge_c, ad_c, em_c = (views[o] for o in (Op.LAYERNORM, Op.GELU, Op.RESADD, Op.EMBED))
        is_ = _decode(ctx.op)
        prep = ctx.prep
        phase, r, g, sub, addr = self.phase, self.r, self.g, self.sub, self.addr
        id_sub, pq_sub = self.id_sub, self.pq_sub
        A = e.addr_bits
        src_row, y_row, wpe_row = (Signal(A, name=f"{n}_row") for n in ("src", "y", "wpe"))
        # LayerNorm: the parameters still to walk, after the first row (see `_Walker`)
        params_due = Signal()

        # groups per word of slots 0, 1 and 3 (the streamed ones), less one
        TW1 = table_words(e.mem_bytes) - 1
        wrap0 = Signal(2)
        m.d.comb += wrap0.eq(Mux(~phase, Mux(is_["ln"], 1, 0), Mux(is_["ge"], 3, 1)))
        last_g = Mux(~phase & is_["ge"], TW1, prep.last_g)
        first = g == 0
        # ``end_g`` (the group ends its row, table or parameters) is a register set
        # with the place, as ``need``: the take's advance (``adv``) then chooses
        # between two registered cases instead of waiting for the compare of g with
        # the phase's last group. After a phase's last group the next phase starts
        # at 0 and ends at ``prep.last_g`` (rows and LayerNorm's parameters alike;
        # only GELU's table, phase 0, ends at TW1, and it comes first)
        end_g = self.end_g
        m.d.comb += self.end_all.eq(end_g & phase & (r == ln_c.rows - 1) & ~params_due)
        tc = wte_tile_cols(e.mem_bytes, e.cols)

        def need_of(is_, phase, first, sub0, sub1, sub3, id_sub):
            """The word slots of the group at this place of the walk."""
            phase, first = Value.cast(phase), Value.cast(first)
            return Mux(~phase, Mux(is_["ln"], Cat(sub0 == 0, 1, 1), 1),
                       Mux(is_["em"], Cat(first & (id_sub == 0), _wte_quarter(sub1, tc) == 0,
                                          C(int(tc == 8), 1), first, sub3 == 0, first),
                           Mux(is_["ad"], Cat(~is_["rq"] & (sub0 == 0), 1, 0, 1), sub0 == 0)))
        # ``need`` is a register, set with the place it describes (the next group's,
        # the next row's, the command's first): the issuer's and the assembler's
        # lowest-slot selects, and through them the word slots and the output
        # register, start at a register instead of at the walk's decode
        need = self.need
        z = (C(0, 2),) * 3

        # each streamed slot's word address advances by one per word issued
        # (beta's two words both come from slot 1's register); the wpe
        # requantiser's advances with the position instead
        reg_of = (0, 1, 1, 2, 3, 4)
        for s in range(4):
            with m.If(sum(self.issue[w] for w in range(NW) if reg_of[w] == s) != 0):
                m.d.sync += addr[s].eq(addr[s] + 1)

        with m.If(self.tok_set):
            m.d.sync += [addr[1].eq(self.wte_row), addr[2].eq(self.wte_q)]

        # the word slots after an ``adv`` and after ``init`` (``need_adv``,
        # ``need_init``): the assembler keeps its words still due as registers
        # loaded from these, so its take starts at flip-flops
        nsub = [Mux(sub[0] == wrap0, 0, sub[0] + 1), (sub[1] + 1)[:2], (sub[3] + 1)[:2]]
        nid = Mux(id_sub == L - 1, 0, id_sub + 1)
        m.d.comb += self.need_adv.eq(Mux(~end_g, need_of(is_, phase, 0, *nsub, id_sub),
                                         Mux(phase, need_of(is_, ~params_due, 1, *z, nid),
                                             need_of(is_, 1, 1, *z, id_sub))))
        with m.If(self.adv & self.running):
            m.d.sync += need.eq(self.need_adv)
            with m.If(~end_g):
                m.d.sync += [g.eq(g + 1), sub[0].eq(nsub[0]), sub[1].eq(nsub[1]),
                             sub[3].eq(nsub[2]), end_g.eq(g + 1 == last_g)]
            with m.Else():
                m.d.sync += [g.eq(0), sub[0].eq(0), sub[1].eq(0), sub[3].eq(0),
                             end_g.eq(prep.last_g == 0)]
                with m.If(~phase):
                    # GELU: the rows after the table; LayerNorm: the rows after the
                    # first, or the end when it was the only one
                    m.d.sync += [phase.eq(1), addr[0].eq(src_row), params_due.eq(0)]
                    with m.If(is_["ln"] & (r == ln_c.rows)):
                        m.d.sync += self.running.eq(0)
                with m.Else():
                    nxt_src = src_row + ln_c.src_stride
                    nxt_y = y_row + ad_c.y_stride
                    nxt_wpe = wpe_row + em_c.wpe_stride
                    m.d.sync += [r.eq(r + 1), src_row.eq(nxt_src), y_row.eq(nxt_y),
                                 wpe_row.eq(nxt_wpe), addr[3].eq(nxt_wpe),
                                 id_sub.eq(nid),
                                 pq_sub.eq(Mux(pq_sub == L - 1, 0, pq_sub + 1))]
                    with m.If(pq_sub == L - 1):
                        m.d.sync += addr[4].eq(addr[4] + 1)
                    with m.If(~is_["em"]):
                        m.d.sync += [addr[0].eq(nxt_src), addr[1].eq(nxt_y),
                                     addr[2].eq(ad_c.q_base)]
                    with m.If(self.end_all):
                        m.d.sync += self.running.eq(0)
                    with m.If(params_due):
                        m.d.sync += [phase.eq(0), addr[0].eq(ln_c.gamma_base),
                                     addr[1].eq(ln_c.beta_base)]

        # init from the command being accepted (in its accept cycle) or the held one
        i_views = _views(self.layouts, Mux(ctx.start, ctx.new.body, ctx.body))
        ln_c, ge_c, ad_c = (i_views[o] for o in (Op.LAYERNORM, Op.GELU, Op.RESADD))
        is_ = _decode(Mux(ctx.start, ctx.new.op, ctx.op))
        m.d.comb += self.need_init.eq(need_of(is_, ~is_["ge"], 1, *z, C(0, 2)))
        with m.If(self.init):
            m.d.sync += [need.eq(self.need_init),
                         end_g.eq(Mux(is_["ge"], TW1 == 0, self.init_one_g)),
                         self.running.eq(1), phase.eq(~is_["ge"]), params_due.eq(is_["ln"]), r.eq(0),
                         g.eq(0), *(s.eq(0) for s in sub), id_sub.eq(0),
                         pq_sub.eq(prep.pq_sub),
                         src_row.eq(ln_c.src_base), y_row.eq(ad_c.y_base),
                         wpe_row.eq(prep.wpe_row),
                         addr[0].eq(Mux(is_["ge"], ge_c.table_base, ln_c.src_base)),
                         addr[1].eq(ad_c.y_base),
                         addr[2].eq(ad_c.q_base), addr[3].eq(prep.wpe_row),
                         addr[4].eq(prep.pq_addr)]
        return m


def _lowest(m, bits, name):
    """One-hot lowest set bit of `bits`."""
    low = Signal(len(bits), name=name)
    m.d.comb += low.eq(bits & (~bits + 1))
    return low


class _Reader(wiring.Component):
    """Accepts a command, prepares it, and runs the issuer (read requests) and
    the assembler (responses -> groups for the units) over its groups.
    ``writing`` (the writer has not finished the previous command) holds the
    next command back."""

    def __init__(self, c, body_bits):
        self.cfg, self.body_bits, self.layouts = c, body_bits, vector_layouts(c)
        e = c.engine
        super().__init__({
            "cmd": In(stream.Signature(_command_layout(body_bits))),
            "ctx": Out(_Context(c, body_bits)),
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
        MB, A = e.mem_bytes, e.addr_bits
        L = vector_lanes(MB)
        views = _views(self.layouts, ctx.body)
        ln_c, em_c = views[Op.LAYERNORM], views[Op.EMBED]
        is_ = _decode(ctx.op)

        m.submodules.iw = iw = _Walker(c, self.body_bits)     # the issuer's
        m.submodules.aw = aw = _Walker(c, self.body_bits)     # the assembler's
        wiring.connect(m, self.ctx, iw.ctx, aw.ctx)

        # prepare: EMBED's cycle 1 registers the products and quotients of the
        # command's fields, cycle 2 the sums, and the walkers start from them (init,
        # cycle 3); the other instructions need only the row's last group and mask,
        # registered while the walkers init: in the accept cycle when the lanes are
        # a power of two (bit fields of n - 1), else the cycle after (n - 1 divided)
        prep = ctx.prep
        wpe_prod = Signal(A)
        pos_w = Signal(A)
        n_m1 = Signal.like(ln_c.n)
        init = Signal()
        busy = self.busy
        pow2 = L & (L - 1) == 0
        lb = L.bit_length() - 1

        # the walkers' init registers whether the first phase is one group (their
        # ``end_g``) from the last group being registered beside them
        one_g = Signal()

        def last(n1):
            q, r = (n1 >> lb, n1[:lb]) if pow2 else (n1 // L, n1 % L)
            return [prep.last_g.eq(q),
                    prep.last_mask.eq(Array(Const((2 << t) - 1, L) for t in range(L))[r])], \
                q[:len(prep.last_g)] == 0           # as registered (n = 0 wraps)
        with m.FSM():
            with m.State("IDLE"):
                m.d.comb += self.cmd.ready.eq(~self.writing)
                with m.If(self.cmd.valid & ~self.writing):
                    new_n = _views(self.layouts, self.cmd.payload.body)[Op.LAYERNORM].n
                    m.d.comb += ctx.start.eq(1)
                    m.d.sync += [ctx.op.eq(self.cmd.payload.op), ctx.body.eq(self.cmd.payload.body),
                                 busy.eq(1), n_m1.eq(new_n - 1)]
                    with m.If(self.cmd.payload.op == Op.EMBED):
                        m.next = "PREP1"
                    with m.Elif(pow2):
                        # (n - 1) // L and % L are bit fields: the walkers start now
                        stmts, one = last((new_n - 1)[:len(new_n)])
                        m.d.comb += [init.eq(1), one_g.eq(one)]
                        m.d.sync += stmts
                        m.next = "RUN"
                    with m.Else():
                        m.next = "INIT_ROWS"
            with m.State("INIT_ROWS"):
                stmts, one = last(n_m1)
                m.d.comb += [init.eq(1), one_g.eq(one)]
                m.d.sync += stmts
                m.next = "RUN"
            with m.State("PREP1"):
                m.d.sync += [wpe_prod.eq(em_c.pos0 * em_c.wpe_stride), pos_w.eq(em_c.pos0 // L),
                             prep.pq_sub.eq(em_c.pos0 % L)]
                m.next = "PREP2"
            with m.State("PREP2"):
                m.d.sync += [*last(n_m1)[0], prep.wpe_row.eq(em_c.wpe_base + wpe_prod),
                             prep.pq_addr.eq(em_c.wpe_q_base + pos_w)]
                m.next = "INIT"
            with m.State("INIT"):
                m.d.comb += [init.eq(1), one_g.eq(prep.last_g == 0)]
                m.next = "RUN"
            with m.State("RUN"):
                with m.If(~aw.running):
                    m.d.sync += busy.eq(0)
                    m.next = "IDLE"
        m.d.comb += [ctx.new.eq(self.cmd.payload), iw.init.eq(init), aw.init.eq(init),
                     iw.init_one_g.eq(one_g), aw.init_one_g.eq(one_g)]

        # LayerNorm's setup beat, offered from the cycle after the accept
        setup_v = Signal()
        m.d.comb += [self.setup.valid.eq(setup_v),
                     self.setup.payload.n.eq(ln_c.n), self.setup.payload.out_shift.eq(ln_c.out_shift),
                     self.setup.payload.eps_m.eq(ln_c.eps_m),
                     self.setup.payload.eps_e.eq(ln_c.eps_e)]
        with m.If(self.setup.ready):
            m.d.sync += setup_v.eq(0)
        with m.If(ctx.start):
            m.d.sync += setup_v.eq(self.cmd.payload.op == Op.LAYERNORM)

        # ---- assembler: one register per word slot; the group's last word may be
        # taken in the cycle the group goes to the output register (bypass)
        words = [Signal(8 * MB, name=f"word{w}", reset_less=True) for w in range(NW)]
        # the group's words not yet taken, their lowest slot, whether one is left
        # (the group's last) and whether none: registers, loaded from the walker's
        # next word slots (``need_init``, ``need_adv``) or with the lowest cleared
        # on a take, so the take and the group's completion, which enable the
        # word slots, the 900 flip-flops of the output register and the walk,
        # start at flip-flops rather than behind a lowest-bit select and compares
        a_rem = Signal(NW)
        a_low = Signal(NW)
        final = Signal(init=1)
        a_none = Signal(init=1)
        out = Signal(_element_layout(c), reset_less=True)
        out_v = Signal()
        # the output register hands its group to the units or, while they stall, to
        # a skid register: it is free when the skid is empty (a register), so no
        # unit's ready reaches the assembler's take, its word slots or this register
        skid = Signal(_element_layout(c), reset_less=True)
        skid_v = Signal()
        out_free = ~out_v | ~skid_v
        with m.If(~skid_v):
            m.d.sync += skid.eq(out)
        with m.If(skid_v):
            with m.If(self.elem.ready):
                m.d.sync += skid_v.eq(0)
        with m.Elif(out_v & ~self.elem.ready):
            m.d.sync += skid_v.eq(1)
        # the responses pass a queue of two registers whose room, a register, is the
        # memory's ready, so neither the assembler's walk nor the units reach the
        # memory's response queue; an empty queue passes the word straight on
        # (RESP_CYCLES = 0: a stage here was a cycle on every vector instruction, 9 of
        # microGPT's decode token), a held word goes first. The entries are written
        # and read in turn, so that a take moves two pointers and no word.
        resp = self.rd_resp
        rq = [Signal(8 * MB, name=f"rq{i}", reset_less=True) for i in range(2)]
        rq_wp, rq_rp = Signal(), Signal()
        rq_n = Signal(range(3))
        rq_room = Signal(init=1)
        rq_any = Signal()
        rq_data = Signal(8 * MB)
        a_ready = aw.running & ~a_none & (~final | out_free)
        pop = (rq_any | resp.valid) & a_ready
        held = rq_any & a_ready                   # a popped word that was in the queue
        push = resp.valid & rq_room & ~(pop & ~rq_any)
        m.d.comb += [resp.ready.eq(rq_room),
                     rq_data.eq(Mux(rq_any, Mux(rq_rp, rq[1], rq[0]), resp.payload.data))]
        with m.If(push):
            m.d.sync += rq_wp.eq(~rq_wp)
            for i in range(2):
                with m.If(rq_wp == i):
                    m.d.sync += rq[i].eq(resp.payload.data)
        with m.If(held):
            m.d.sync += rq_rp.eq(~rq_rp)
        rq_next = Signal(range(3))
        m.d.comb += rq_next.eq(rq_n + push - held)
        m.d.sync += [rq_n.eq(rq_next), rq_room.eq(rq_next != 2), rq_any.eq(rq_next != 0)]
        complete = aw.running & Mux(a_none, out_free, pop & final)
        cur = [Signal(8 * MB, name=f"cur{w}") for w in range(NW)]   # with the bypass
        m.d.comb += [cur[w].eq(Mux(pop & a_low[w], rq_data, words[w]))
                     for w in range(NW)]
        # the four of each candidate (the walker's next need at the start and on a
        # completion, the rest after a take, the same) come from registers; the
        # take and the completion, which the response's valid reaches, only choose
        a_next = []
        for v in (aw.need_init, aw.need_adv, a_rem & ~a_low):
            v = Value.cast(v)
            a_next.append((v, v & (~v + 1), (v & (v - 1)) == 0, v == 0))
        a_next.append((a_rem, a_low, final, a_none))
        for reg, i in zip((a_rem, a_low, final, a_none), range(4)):
            m.d.sync += reg.eq(Mux(init, a_next[0][i],
                                   Mux(complete, a_next[1][i], Mux(pop, a_next[2][i], a_next[3][i]))))
        with m.If(pop):
            for w in range(NW):
                with m.If(a_low[w]):
                    m.d.sync += words[w].eq(rq_data)

        # fields of the group: fixed quarters of a word or 4-byte lanes
        qi0 = Signal(2)
        m.d.comb += qi0.eq(Mux(~aw.phase, Mux(is_["ln"], aw.sub[0] << 1, 0),
                               Mux(is_["ge"], aw.sub[0], aw.sub[0] << 1)))
        f0 = _quarter(m, cur[0], qi0, "f0")
        f3 = _quarter(m, cur[4], aw.sub[3], "f3")
        q_off = Signal(range(L))                  # EMBED: the wte requantiser's lane
        # EMBED: lane l's table element is byte l*tc + (token % tc) of the group's
        # words (slots 1 and 2) or of its quarter of one; the tc:1 byte select is
        # the unit mux's, after this register
        tc = wte_tile_cols(MB, e.cols)
        t_col = Signal(range(tc))
        span = (Cat(cur[1], cur[2]) if tc == 8 else cur[1] if tc == 4
                else _quarter(m, cur[1], _wte_quarter(aw.sub[1], tc), "f1"))
        with m.If(complete):
            m.d.sync += [out_v.eq(1),
                         out.row.eq(aw.phase), out.grp.eq(aw.g), out.last.eq(aw.end_g),
                         out.tcol.eq(t_col), out.s0.eq(f0),
                         out.s1.eq(Mux(~aw.phase, Cat(cur[1], cur[2]),
                                       Mux(is_["em"], span, cur[1]))),
                         out.s2.eq(Mux(is_["em"], cur[3].word_select(q_off, 32), cur[3])),
                         out.s3.eq(f3), out.s4.eq(cur[5].word_select(aw.pq_sub, 32))]
        with m.Elif(~skid_v):
            m.d.sync += out_v.eq(0)
        m.d.comb += [self.elem.valid.eq(out_v | skid_v),
                     self.elem.payload.eq(Mux(skid_v, skid, out)), aw.adv.eq(complete)]

        # ---- issuer: the same walk, requesting each word a group needs while
        # fewer than max_outstanding reads are unanswered
        MO = e.max_outstanding
        issued = Signal(NW)
        i_rem = Signal(NW)
        m.d.comb += i_rem.eq(iw.need & ~issued)
        i_low = _lowest(m, i_rem, "i_low")
        unanswered = Signal(range(MO + 1))
        # EMBED: the wte words wait for the row's token id, which the assembler
        # holds once it reached the row and took the id's word
        tok_ok = Signal()
        tok_step = Signal(range(TOK_CYCLES))
        tok_wait = iw.running & is_["em"] & iw.phase & (iw.g == 0) & ~i_rem[0] & ~tok_ok
        tok_seen = (aw.running & aw.phase & (aw.g == 0) & (aw.r == iw.r)
                    & ~a_rem[0])
        tok = Signal(32)
        tok_r = Signal(32)
        wte_prod = Signal(A)
        wte_qw = Signal(A)
        m.d.comb += tok.eq(words[0].word_select(aw.id_sub, 32))
        with m.If(tok_wait):
            with m.If(tok_step == 0):
                with m.If(tok_seen):
                    m.d.sync += [tok_r.eq(tok), tok_step.eq(1)]
            with m.Elif(tok_step == 1):
                m.d.sync += [wte_prod.eq((tok_r // tc)[:A] * em_c.wte_stride),
                             wte_qw.eq(tok_r // L),
                             tok_step.eq(2)]
            with m.Else():
                m.d.comb += iw.tok_set.eq(1)
                m.d.sync += [q_off.eq(tok_r % L), t_col.eq(tok_r % tc), tok_ok.eq(1),
                             tok_step.eq(0)]
        m.d.comb += [iw.wte_row.eq(em_c.wte_base + wte_prod), iw.wte_q.eq(em_c.wte_q_base + wte_qw)]

        # the request leaves from a register, loaded when it is empty or taken
        req_v = Signal()
        req_addr = Signal(A)
        load = ~req_v | self.rd_req.ready
        fire = iw.running & (i_rem != 0) & ~tok_wait & (unanswered < MO) & load
        sel = Signal(A)
        reg_of = (0, 1, 1, 2, 3, 4)
        m.d.comb += sel.eq(0)
        for w in range(NW):
            with m.If(i_low[w]):
                m.d.comb += sel.eq(iw.addr[reg_of[w]])
        with m.If(fire):
            m.d.sync += [req_v.eq(1), req_addr.eq(sel)]
        with m.Elif(self.rd_req.ready):
            m.d.sync += req_v.eq(0)
        m.d.comb += [self.rd_req.valid.eq(req_v), self.rd_req.payload.addr.eq(req_addr)]
        m.d.sync += unanswered.eq(unanswered + fire - pop)
        with m.If(fire):
            m.d.comb += iw.issue.eq(i_low)
            m.d.sync += issued.eq(issued | i_low)
        i_adv = iw.running & Mux(i_rem == 0, 1, fire & (i_rem == i_low))
        m.d.comb += iw.adv.eq(i_adv)
        with m.If(i_adv):
            m.d.sync += issued.eq(0)
            with m.If(iw.end_g):
                m.d.sync += tok_ok.eq(0)
        with m.If(init):
            m.d.sync += [issued.eq(0), tok_ok.eq(0), tok_step.eq(0)]
        return m


class _UnitMux(wiring.Component):
    """Between the reader, the units and the writer: the group goes to the
    input of the unit the opcode names (a table word or parameters to its
    side input), and that unit's output goes to the writer. Its ports mirror
    the units' streams (``<unit>_<port>``, LayerNorm's setup aside, which the
    reader drives directly), so `VectorMover` connects them one to one.
    EMBED's rows pass a register of their own (`EMBED_SELECT_CYCLES`): the
    tc:1 byte select of each lane's table element sits between it and the
    assembler's, not on the read response's path."""

    def __init__(self, c, units):
        self.units = tuple(units)
        self.tc = wte_tile_cols(c.engine.mem_bytes, c.engine.cols)
        L = vector_lanes(c.engine.mem_bytes)
        members = {"op": In(4), "elem": In(stream.Signature(_element_layout(c))),
                   "res": Out(stream.Signature(data.ArrayLayout(16, L)))}
        for name, unit in units.items():
            for port, member in unit.signature.members.items():
                if member.is_signature and port != "setup":
                    members[f"{name}_{port}"] = member.flip()
        self.lanes = L
        super().__init__(members)

    def elaborate(self, platform):
        m = Module()
        L = self.lanes
        is_ = _decode(self.op)
        el, emit = self.elem.payload, self.elem.valid
        x16 = el.s0.word_select
        m.d.comb += [
            self.gelu_load.payload.addr.eq(el.grp), self.gelu_load.payload.data.eq(el.s0),
            self.gelu_inp.payload.last.eq(el.last), self.ln_inp.payload.last.eq(el.last),
            self.add_a.payload.last.eq(el.last), self.add_y.payload.last.eq(el.last),
        ]
        # EMBED's register: loaded whenever it is empty or taken (the two rows are
        # joined in the unit, so one valid serves both)
        tc = self.tc
        emb_v = Signal()
        emb_load = ~emb_v | self.emb_tok.ready
        tok, pos = self.emb_tok.payload, self.emb_pos.payload
        with m.If(emb_load):
            m.d.sync += [emb_v.eq(emit & el.row & is_["em"]),
                         tok.last.eq(el.last), pos.last.eq(el.last),
                         tok.mult.eq(el.s2[:16]), tok.shift.eq(el.s2[16:22]),
                         pos.mult.eq(el.s4[:16]), pos.shift.eq(el.s4[16:22])]
            for l in range(L):
                m.d.sync += [
                    tok.x[l].eq(Array(el.s1.word_select(l * tc + j, 8)
                                      for j in range(tc))[el.tcol]),
                    pos.x[l].eq(el.s3.word_select(l, 8))]
        m.d.comb += [self.emb_tok.valid.eq(emb_v), self.emb_pos.valid.eq(emb_v)]
        for l in range(L):
            m.d.comb += [
                self.gelu_inp.payload.x[l].eq(el.s0.word_select(l, 8)),
                self.ln_param.payload.gamma[l].eq(x16(l, 16)),
                self.ln_param.payload.beta[l].eq(el.s1.word_select(l, 64)[:48]),
                self.ln_inp.payload.x[l].eq(x16(l, 16).as_signed()),
                self.add_a.payload.x[l].eq(Mux(is_["rq"], 0, x16(l, 16).as_signed())),
                self.add_y.payload.x[l].eq(el.s1.word_select(l, 32)),
                self.add_y.payload.mult[l].eq(el.s2.word_select(l, 32)[:16]),
                self.add_y.payload.shift[l].eq(el.s2.word_select(l, 32)[16:22]),
            ]
        with m.If(~el.row):
            m.d.comb += [self.elem.ready.eq(Mux(is_["ln"], self.ln_param.ready,
                                                self.gelu_load.ready)),
                         self.ln_param.valid.eq(emit & is_["ln"]),
                         self.gelu_load.valid.eq(emit & is_["ge"])]
        with m.Else():
            m.d.comb += [self.elem.ready.eq(Mux(is_["ln"], self.ln_inp.ready,
                                                Mux(is_["ge"], self.gelu_inp.ready,
                                                    Mux(is_["em"], emb_load,
                                                        self.add_a.ready)))),
                         self.ln_inp.valid.eq(emit & is_["ln"]),
                         self.gelu_inp.valid.eq(emit & is_["ge"]),
                         self.add_a.valid.eq(emit & is_["ad"]), self.add_y.valid.eq(emit & is_["ad"])]

        # residual-width results are written as int16 words: sign-extend them from
        # resid_bits, or a narrower residual stream would be read back as positive
        for l in range(L):
            add16, emb16 = Signal(signed(16), name=f"add16_{l}"), Signal(signed(16), name=f"emb16_{l}")
            m.d.comb += [add16.eq(self.add_out.payload.x[l]), emb16.eq(self.emb_out.payload.x[l])]
            m.d.comb += self.res.payload[l].eq(
                Mux(is_["ln"], self.ln_out.payload.y[l].as_unsigned(),
                    Mux(is_["ge"], self.gelu_out.payload.y[l].as_unsigned(),
                        Mux(is_["em"], emb16.as_unsigned(), add16.as_unsigned())))[:16])
        m.d.comb += [
            self.res.valid.eq(Mux(is_["ln"], self.ln_out.valid,
                                  Mux(is_["ge"], self.gelu_out.valid,
                                      Mux(is_["em"], self.emb_out.valid, self.add_out.valid)))),
            self.ln_out.ready.eq(is_["ln"] & self.res.ready),
            self.gelu_out.ready.eq(is_["ge"] & self.res.ready),
            self.add_out.ready.eq(is_["ad"] & self.res.ready),
            self.emb_out.ready.eq(is_["em"] & self.res.ready)]
        return m


class _Writer(wiring.Component):
    """One strobed write per unit output beat (a quarter word of int8 results,
    a half word of int16 ones), on counters of its own (the reader may already
    be reading the next row, or, for LayerNorm, be done with the whole
    command). ``writing`` lasts from the command's accept to its last write."""

    def __init__(self, c, body_bits):
        self.cfg, self.layouts = c, vector_layouts(c)
        L = vector_lanes(c.engine.mem_bytes)
        super().__init__({
            "ctx": In(_Context(c, body_bits)),
            "res": In(stream.Signature(data.ArrayLayout(16, L))),
            "wr": Out(stream.Signature(write_layout(c.engine))),
            "writing": Out(1),
            "done": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        c, e, ctx = self.cfg, self.cfg.engine, self.ctx
        MB = e.mem_bytes
        L = vector_lanes(MB)
        ln_c = _views(self.layouts, ctx.body)[Op.LAYERNORM]
        is_ = _decode(ctx.op)
        rows = ln_c.rows      # the common fields sit at the same offsets in every body
        wr_r = Signal(range(e.max_m + 1))
        wg = Signal(_groups_shape(c))
        sub = Signal(2)
        row_base = Signal(e.addr_bits)
        waddr = Signal(e.addr_bits)
        wide = is_["ad"] | is_["em"]          # int16 residual-width outputs
        lanes = self.res.payload
        packed = Mux(wide, Cat(*(lanes[l] for l in range(L))),
                     Cat(*(lanes[l][:8] for l in range(L))))
        mask = Mux(wg == ctx.prep.last_g, ctx.prep.last_mask, (1 << L) - 1)
        bmask = Mux(wide, Cat(*(Cat(mask[l], mask[l]) for l in range(L))), mask)
        qo = Signal(2)
        m.d.comb += qo.eq(Mux(wide, sub << 1, sub))
        data_w, strb = Signal(8 * MB), Signal(MB)
        with m.Switch(qo):
            for i in range(4):
                with m.Case(i):
                    m.d.comb += [data_w.eq(packed << (8 * L * i)), strb.eq(bmask << (L * i))]
        # the write leaves from a register, loaded when it is empty or taken;
        # ``done`` follows the acceptance of the command's last write
        wv, wlast = Signal(), Signal()
        w_out = Signal(write_layout(e))
        load = ~wv | self.wr.ready
        m.d.comb += [self.wr.valid.eq(wv), self.wr.payload.eq(w_out),
                     self.res.ready.eq(self.writing & ~wlast & load)]
        take = self.res.valid & self.res.ready
        m.d.sync += self.done.eq(0)
        with m.If(take):
            m.d.sync += [wv.eq(1), w_out.addr.eq(waddr), w_out.data.eq(data_w), w_out.strb.eq(strb)]
        with m.Elif(self.wr.ready):
            m.d.sync += wv.eq(0)
        with m.If(wv & self.wr.ready & wlast):
            m.d.sync += [self.writing.eq(0), self.done.eq(1), wlast.eq(0)]
        with m.If(take):
            with m.If(wg == ctx.prep.last_g):
                nxt = row_base + ln_c.dst_stride
                m.d.sync += [wg.eq(0), sub.eq(0), wr_r.eq(wr_r + 1), row_base.eq(nxt),
                             waddr.eq(nxt)]
                with m.If(wr_r == rows - 1):
                    m.d.sync += wlast.eq(1)
            with m.Else():
                wrap = sub == Mux(wide, 1, 3)
                m.d.sync += [wg.eq(wg + 1), sub.eq(Mux(wrap, 0, sub + 1))]
                with m.If(wrap):
                    m.d.sync += waddr.eq(waddr + 1)
        with m.If(ctx.start):
            base = _views(self.layouts, ctx.new.body)[Op.LAYERNORM].dst_base
            m.d.sync += [row_base.eq(base), waddr.eq(base), wr_r.eq(0), wg.eq(0), sub.eq(0),
                         self.writing.eq(1)]
        return m


class VectorMover(wiring.Component):
    """Runs LAYERNORM / GELU / RESADD / REQUANT / EMBED instructions; ``cmd`` carries the opcode and body bits.

    Ports: ``cmd`` (``op``: Op value, ``body``: the instruction body bits),
    the memory port, ``busy``, ``done`` (pulse after the last write).
    """

    def __init__(self, cfg: AttentionConfig, resid_bits=16):
        mb = cfg.engine.mem_bytes
        if not 4 <= resid_bits <= 16 or mb < BETA_BYTES or mb % 4:
            self._MustUse__silence = True   # never elaborated: no "unused" warning
        if not 4 <= resid_bits <= 16:
            raise ValueError(f"resid_bits must be in 4..16 (int16 residual rows), got {resid_bits}")
        if mb < BETA_BYTES or mb % 4:
            raise ValueError(f"the vector mover reads LayerNorm beta as one int64 per word and one "
                             f"int32 per lane: mem_bytes must be a multiple of 4 and "
                             f">= {BETA_BYTES}, got {mb}")
        self.cfg, self.resid_bits = cfg, resid_bits
        self.lanes = vector_lanes(mb)
        self.layouts = vector_layouts(cfg)
        self.body_bits = max(l.size for l in self.layouts.values())
        e = cfg.engine
        super().__init__({
            "cmd": In(stream.Signature(_command_layout(self.body_bits))),
            "mem": Out(MemPort.for_config(e)),
            "busy": Out(1), "done": Out(1)})

    def elaborate(self, platform):
        m = Module()
        c, R, L = self.cfg, self.resid_bits, self.lanes
        units = {"gelu": GeluUnit(L, load_width=c.engine.mem_bytes),
                 "ln": LayerNormUnit(L, in_bits=R, max_e=cfg_max_vector_n(c)),
                 "add": RequantAdd(L, R), "emb": EmbeddingAdd(L, R)}
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
