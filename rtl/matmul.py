"""The matmul engine: one command computes a whole M x K x N int8 matmul.

Blocks (see docs/architecture.md, "Matmul engine"), each a component of its
own that `MatmulEngine` only instantiates and connects:

- `_CommandLatch`: holds the running command and its derived constants
  (`_CommandContext`, shared by every block), ``busy`` and ``done``;
- `_Issuer`: walks the command's word sequence (`_WordWalker`) and sends
  read requests (per row block: the A rows, then for every column tile its
  parameter words and W words; later blocks' A words slotted between the
  previous block's W words);
- `_Router`: walks the same sequence over the read responses and steers
  each word to an A scratchpad bank, the parameter FIFO or the W FIFO;
- `_Feeder`: turns the resident A block and the W stream into array beats
  (one k-step for all rows/columns per cycle), padding short tiles;
- SystolicArray -> `_RowRequant` (Requantiser) -> output FIFO -> `_Writer`,
  which emits one write per output row segment.

Every unit walks the loop nest with its own counters instead of passing
tags around: responses come back in request order, and tiles leave the
array in the order they entered.

A command of at most `EngineConfig.gemv_rows` rows (decode) runs in GEMV
mode: the array folds into `k_per_word` row groups that each take one byte
lane of every W word, so W streams at the port's full width (see
`SystolicArray` and docs/architecture.md, "GEMV mode").
"""
from amaranth.hdl import *
from amaranth.lib import fifo, stream, wiring
from amaranth.lib.memory import Memory, ReadPort, WritePort
from amaranth.lib.wiring import In, Out

from .config import EngineConfig
from .intarith import times_const
from .isa import matmul_command_layout
from .memport import MemPort, read_request_layout, read_response_layout, write_layout
from .systolic import SystolicArray
from .requant import Requantiser

__all__ = ["MatmulEngine", "BypassFIFO"]

C0 = Const(0, 1)


class BypassFIFO(fifo.FIFOInterface, Elaboratable):
    """A `SyncFIFOBuffered` with a register beside it that an entry goes to when
    nothing older is buffered: it is readable the cycle after its write,
    instead of two (a cycle to count the write, one to read the block RAM).
    Entries written while one is held or buffered go to the block-RAM FIFO
    (``depth - 1`` entries) and leave it exactly as from a `SyncFIFOBuffered`,
    so no entry is ever later than there. Same ports as `lib.fifo`'s FIFOs
    (``level``: the entries held)."""

    def __init__(self, *, width, depth):
        if depth < 2:
            raise ValueError(f"BypassFIFO depth {depth} < 2: it is a register beside a "
                             "FIFO of depth - 1")
        super().__init__(width=width, depth=depth)
        self.level = Signal(range(depth + 1))

    def elaborate(self, platform):
        m = Module()
        m.submodules.ram = ram = fifo.SyncFIFOBuffered(width=self.width, depth=self.depth - 1)
        held, held_data = Signal(), Signal(self.width)
        # the register is free for a write if empty or read now, and takes it only
        # when the block-RAM FIFO holds nothing older
        bypass = self.w_en & (~held | self.r_en) & (ram.level == 0)
        m.d.comb += [ram.w_data.eq(self.w_data), ram.w_en.eq(self.w_en & ~bypass),
                     ram.r_en.eq(self.r_en & ~held),
                     self.w_rdy.eq(ram.w_rdy),
                     self.r_rdy.eq(held | ram.r_rdy),
                     self.r_data.eq(Mux(held, held_data, ram.r_data)),
                     self.level.eq(ram.level + held),
                     self.w_level.eq(self.level), self.r_level.eq(self.level)]
        with m.If(bypass):
            m.d.sync += [held.eq(1), held_data.eq(self.w_data)]
        with m.Elif(self.r_en):
            m.d.sync += held.eq(0)
        return m


def _a_depth(c):
    """Scratchpad entries per bank: the words of one A row of the longest K."""
    return c.a_words_per_row(c.max_k)


def _period_shape(c):
    return range(max(c.min_tile_period(0), c.min_tile_period(1),
                     *(c.gemv_min_tile_period(raw, mm) for raw in (0, 1)
                       for mm in range(1, c.gemv_rows + 1))) + 1)


def _a_mem_signature(c, port):
    """The A scratchpad's read or write port signature, as its user sees it."""
    R, MB = c.rows, c.mem_bytes
    addr_width = (2 * _a_depth(c) - 1).bit_length()
    if port is ReadPort:
        return ReadPort.Signature(addr_width=addr_width, shape=R * 8 * MB).flip()
    return WritePort.Signature(addr_width=addr_width, shape=R * 8 * MB, granularity=8 * MB).flip()


class _CommandContext(wiring.Signature):
    """What every block reads of the running command: ``start`` (the accept
    pulse, when blocks reset their counters from ``p``, the payload being
    accepted), ``cmd`` (the command held while it runs) and the per-command
    constants registered at accept, computed once so that the issuer's and the
    router's walks cannot disagree on them."""

    def __init__(self, c):
        layout = matmul_command_layout(c)
        super().__init__({
            "start": Out(1),
            "p": Out(layout),
            "cmd": Out(layout),
            "a_blk_stride": Out(c.addr_bits),  # a_stride * rows: next row block
            "k_ok": Out(1),                    # K long enough to interleave A loads
            "pmin": Out(_period_shape(c)),    # (gemv_)min_tile_period(raw_out)
            "fold": Out(1),                    # GEMV mode (EngineConfig.gemv)
            "p_fold": Out(1),                  # GEMV mode of the command being accepted
            "tile_rows": Out(range(c.rows + 1)),  # output-buffer rows a tile takes
            "pw_last": Out(range(c.param_words_per_tile)),  # param_words(raw_out) - 1
        })


class _CommandLatch(wiring.Component):
    """Accepts a command only when idle and holds it until the writer's last
    write: the other blocks all start on the same accept and never see the
    command change under them."""

    def __init__(self, c):
        self.cfg = c
        super().__init__({
            "cmd": In(stream.Signature(matmul_command_layout(c))),
            "ctx": Out(_CommandContext(c)),
            "finish": In(1),
            "busy": Out(1),
            "done": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        c, ctx = self.cfg, self.ctx
        p = self.cmd.payload
        accept = self.cmd.valid & self.cmd.ready
        fold = (p.m <= c.gemv_rows) if c.gemv_rows else C0
        # a GEMV tile's writes and output-buffer entries grow with its rows: its
        # period by M (a table: M < gemv_rows + 1 is a few bits)
        gr = max(c.gemv_rows, 1)
        m_lo = p.m[:gr.bit_length()]
        gemv_pmin = [Array([Const(c.gemv_min_tile_period(raw, min(max(mm, 1), gr)),
                                  _period_shape(c))
                            for mm in range(1 << len(m_lo))])[m_lo] for raw in (False, True)]
        m.d.comb += [self.cmd.ready.eq(~self.busy), ctx.start.eq(accept), ctx.p.eq(p),
                     ctx.p_fold.eq(fold)]
        with m.If(accept):
            m.d.sync += [ctx.cmd.eq(p), self.busy.eq(1),
                         ctx.pmin.eq(Mux(fold, Mux(p.raw_out, gemv_pmin[1], gemv_pmin[0]),
                                         Mux(p.raw_out, c.min_tile_period(True),
                                             c.min_tile_period(False)))),
                         ctx.fold.eq(fold),
                         ctx.tile_rows.eq(Mux(fold, m_lo, c.rows)),
                         ctx.pw_last.eq(Mux(p.raw_out, c.param_words(True) - 1,
                                            c.param_words(False) - 1)),
                         ctx.a_blk_stride.eq(times_const(p.a_stride, c.rows)),
                         ctx.k_ok.eq(p.k >= c.interleave_min_k)]
        with m.If(self.finish):
            m.d.sync += self.busy.eq(0)
        m.d.sync += self.done.eq(self.finish)
        return m


class _WordWalker(wiring.Component):
    """The command's sequence of memory words, walked one word per `fire`.

    Per row block: its A rows (unless already loaded), then per column tile
    the parameter words and the W words. From the second row block on, if
    the shape allows (`interleave`), the *next* block's A words are slotted
    in after every second W word, starting after the first `w_fifo_depth + 1`
    W words of a block: by then the feeder has popped a W word of this block,
    so it has finished reading the A bank that is about to be overwritten.

    The issuer and the router each own one walker, fed by request and
    response handshakes respectively, so they agree on every word's meaning
    without tags. `gate` holds a non-overlapped A load until the feeder has
    finished the previous block (the issuer passes `a_empty`, the router 1).
    """

    def __init__(self, c):
        self.cfg = c
        super().__init__({
            "ctx": In(_CommandContext(c)),
            "fire": In(1),
            "gate": In(1),
            "is_a": Out(1), "is_param": Out(1), "is_w": Out(1), "active": Out(1),
            "addr": Out(c.addr_bits),
            "a_row": Out(range(c.rows)),
            "a_entry": Out(range(_a_depth(c) + 1)),
            "a_bank": Out(1),
            "first_q": Out(1), "last_q": Out(1),
            "a_load_last": Out(1),     # this A word is the block's last
            "leaving_wait": Out(1),    # a non-overlapped A load starts
        })

    def elaborate(self, platform):
        m = Module()
        c = self.cfg
        R, C, MB, GW = c.rows, c.cols, c.mem_bytes, c.k_per_word
        PW = c.param_words_per_tile
        cmd, p, fire = self.ctx.cmd, self.ctx.p, self.fire
        a_blk_stride, k_ok = self.ctx.a_blk_stride, self.ctx.k_ok
        kbits = range(c.max_k + MB + GW + 1)

        # compute side: block m0, tile n0, parameter word q, W k-offset kk
        m0, n0 = Signal(cmd.m.shape()), Signal(cmd.n.shape())
        q, kk = Signal(range(PW)), Signal(kbits)
        p_ptr, w_ptr = Signal(c.addr_bits), Signal(c.addr_bits)
        max_j = -(-c.max_n // C) * c.w_words_per_tile(c.max_k) + 1
        j = Signal(range(max_j + 1))              # W words so far in this block
        blk0 = Signal()
        il = Signal()                             # interleave A loads of later blocks
        ph = Signal()                             # every other W word carries an A slot
        slot = Signal()                           # the next word is an A word
        # load side: block mA, row a_row, entry a_entry
        mA = Signal(cmd.m.shape())
        a_row, a_entry, a_bank = self.a_row, self.a_entry, self.a_bank
        a_kk = Signal(kbits)
        a_blk, a_row_addr, a_ptr = (Signal(c.addr_bits, name=f) for f in
                                    ("a_blk", "a_row_addr", "a_ptr"))
        a_busy = Signal()                         # an interleaved load is in progress
        aw = Signal(range(_a_depth(c) + 1))       # A words per row, measured on block 0
        # The walk's end-of-row, -tile and -block compares, kept in flip-flops that
        # change with their counters (a word ahead: the compare of the counter's
        # next value): each is an adder and a comparator in series, and the
        # decisions they fed sit between the request handshake and every address
        # register (the iCE40's longest paths)
        a_end = Signal(init=1)                    # a_kk + MB >= cmd.k
        w_end = Signal(init=1)                    # kk + GW >= cmd.k
        n_more = Signal()                         # n0 + C < cmd.n (from begin_block on)
        m_more, m_more2 = Signal(), Signal()      # m0 + R < cmd.m, m0 + 2R < cmd.m

        m.d.comb += [self.first_q.eq(q == 0), self.last_q.eq(q == self.ctx.pw_last),
                     self.a_load_last.eq(a_end
                                         & ((a_row == R - 1) | (mA + a_row + 1 >= cmd.m)))]

        def start_load(row, addr, k=cmd.k):
            m.d.sync += [mA.eq(row), a_blk.eq(addr), a_row_addr.eq(addr), a_ptr.eq(addr),
                         a_row.eq(0), a_kk.eq(0), a_entry.eq(0), a_end.eq(MB >= k)]

        def begin_block(row, row_more, interleave):
            """Start the compute walk of block `row` (`row_more`: row + R < cmd.m);
            overlap the next block's load."""
            m.d.sync += [n0.eq(0), n_more.eq(C < cmd.n), q.eq(0), j.eq(0), ph.eq(0),
                         p_ptr.eq(cmd.p_base), w_ptr.eq(cmd.w_base)]
            with m.If(interleave & row_more):
                start_load(row + R, a_blk + a_blk_stride)
                m.d.sync += a_busy.eq(1)

        with m.If(self.ctx.start):
            m.d.sync += [m0.eq(0), m_more.eq(R < p.m), m_more2.eq(2 * R < p.m), blk0.eq(1),
                         il.eq(0), slot.eq(0), a_busy.eq(0), a_bank.eq(0)]
            start_load(0, p.a_base, p.k)

        def on_a_word(burst):
            """An A word was sent/received; `burst` if outside the compute walk."""
            m.d.sync += [a_ptr.eq(a_ptr + 1), a_kk.eq(a_kk + MB), a_entry.eq(a_entry + 1),
                         slot.eq(0), a_end.eq(a_kk + 2 * MB >= cmd.k)]
            with m.If(a_end):
                m.d.sync += [a_kk.eq(0), a_entry.eq(0), a_row.eq(a_row + 1),
                             a_end.eq(MB >= cmd.k),
                             a_row_addr.eq(a_row_addr + cmd.a_stride),
                             a_ptr.eq(a_row_addr + cmd.a_stride)]
                with m.If(blk0 & (a_row == 0)):
                    m.d.sync += aw.eq(a_entry + 1)
                with m.If(self.a_load_last):
                    m.d.sync += [a_busy.eq(0), a_bank.eq(~a_bank), a_row.eq(0)]
                    if burst:
                        begin_block(m0, m_more, il)
                        m.next = "PARAM"

        def on_w_word():
            m.d.sync += [w_ptr.eq(w_ptr + 1), kk.eq(kk + GW), j.eq(j + 1),
                         w_end.eq(kk + 2 * GW >= cmd.k)]
            with m.If(a_busy & (j + 1 >= c.w_fifo_depth + 1)):
                m.d.sync += [ph.eq(~ph), slot.eq(~ph)]
            with m.If(w_end):
                with m.If(n_more):
                    m.d.sync += [n0.eq(n0 + C), n_more.eq(n0 + 2 * C < cmd.n)]
                    m.next = "PARAM"
                with m.Elif(m_more):
                    m.d.sync += [m0.eq(m0 + R), m_more.eq(m_more2),
                                 m_more2.eq(m0 + 3 * R < cmd.m), blk0.eq(0)]
                    with m.If(blk0):
                        # decide once, from block 0's word count, whether later
                        # blocks' A words fit between this many W words
                        m.d.sync += il.eq(k_ok & (j + 1 >= c.w_fifo_depth + 8 + 2 * R * aw))
                    with m.If(il & ~blk0):
                        begin_block(m0 + R, m_more2, 1)
                        m.next = "PARAM"
                    with m.Else():
                        m.next = "WAIT_A"
                with m.Else():
                    m.next = "IDLE"

        with m.FSM():
            with m.State("IDLE"):
                with m.If(self.ctx.start):
                    m.next = "A"
            with m.State("WAIT_A"):
                with m.If(self.gate):
                    m.d.comb += self.leaving_wait.eq(1)
                    start_load(m0, a_blk + a_blk_stride)
                    m.next = "A"
            with m.State("A"):
                m.d.comb += self.is_a.eq(1)
                with m.If(fire):
                    on_a_word(burst=True)
            with m.State("PARAM"):
                m.d.comb += [self.is_a.eq(slot), self.is_param.eq(~slot)]
                with m.If(fire & slot):
                    on_a_word(burst=False)
                with m.If(fire & ~slot):
                    m.d.sync += [p_ptr.eq(p_ptr + 1), q.eq(q + 1)]
                    with m.If(self.last_q):
                        # a raw tile skips its multiplier words
                        skip = PW - c.param_words(True)
                        m.d.sync += [q.eq(0), kk.eq(0), w_end.eq(GW >= cmd.k)]
                        if skip:
                            m.d.sync += p_ptr.eq(p_ptr + Mux(cmd.raw_out, 1 + skip, 1))
                        m.next = "W"
            with m.State("W"):
                m.d.comb += [self.is_a.eq(slot), self.is_w.eq(~slot)]
                with m.If(fire & slot):
                    on_a_word(burst=False)
                with m.If(fire & ~slot):
                    on_w_word()
        m.d.comb += [self.active.eq(self.is_a | self.is_param | self.is_w),
                     self.addr.eq(Mux(self.is_a, a_ptr, Mux(self.is_param, p_ptr, w_ptr)))]
        return m


class _Issuer(wiring.Component):
    """Read requests in the walk's order, held back by two limits that keep
    the other blocks from ever stalling on a full buffer: at most
    ``max_outstanding`` reads unanswered, and parameter words at most
    ``param_fifo_tiles`` tiles ahead of the requantiser (``tile_drained``).
    A non-overlapped A load waits for ``a_empty`` (the feeder is done with the
    bank); ``a_taken`` says it started.

    In GEMV mode the feeder takes a W word per beat, as fast as the port
    brings them, so a third limit starts a tile's parameter words at least
    ``min_tile_period`` cycles after the previous tile's: then the words
    alone set every beat's time (never the feeder's padding or its output
    credits), which keeps the stall-free timing a closed formula."""

    def __init__(self, c):
        self.cfg = c
        super().__init__({
            "ctx": In(_CommandContext(c)),
            "rd_req": Out(stream.Signature(read_request_layout(c))),
            "answered": In(1),
            "tile_drained": In(1),
            "a_empty": In(1),
            "a_taken": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        c = self.cfg
        m.submodules.walker = walker = _WordWalker(c)
        wiring.connect(m, wiring.flipped(self.ctx), walker.ctx)
        req_fire = self.rd_req.valid & self.rd_req.ready
        # The limits' compares are flip-flops, set from the counters' next values:
        # the request's valid is then a few gates from registers, since everything
        # the walk does on a request hangs behind it (on the iCE40, valid, the
        # handshake and the walk's address updates were the longest paths)
        tiles_ahead = Signal(range(c.param_fifo_tiles + 1))
        tiles_ahead_n = Signal.like(tiles_ahead)
        tiles_full = Signal()                     # tiles_ahead >= param_fifo_tiles
        tile_issue = Signal()
        m.d.comb += tiles_ahead_n.eq(tiles_ahead + tile_issue - self.tile_drained)
        m.d.sync += [tiles_ahead.eq(tiles_ahead_n),
                     tiles_full.eq(tiles_ahead_n >= c.param_fifo_tiles)]
        outstanding = Signal(range(c.max_outstanding + 1))
        outstanding_n = Signal.like(outstanding)
        can_issue = Signal(init=1)                # outstanding < max_outstanding
        m.d.comb += outstanding_n.eq(outstanding + req_fire - self.answered)
        m.d.sync += [outstanding.eq(outstanding_n),
                     can_issue.eq(outstanding_n < c.max_outstanding)]

        gap = Signal.like(self.ctx.pmin)          # cycles until the next tile may start
        gap_n = Signal.like(gap)
        gap_nz = Signal()                         # gap != 0
        m.d.comb += gap_n.eq(gap)
        with m.If(tile_issue):
            m.d.comb += gap_n.eq(self.ctx.pmin - 1)
        with m.Elif(gap != 0):
            m.d.comb += gap_n.eq(gap - 1)
        with m.If(self.ctx.start):
            m.d.comb += gap_n.eq(0)
        m.d.sync += [gap.eq(gap_n), gap_nz.eq(gap_n != 0)]

        tile_start = walker.is_param & walker.first_q
        throttle = tile_start & (tiles_full | (self.ctx.fold & gap_nz))
        m.d.comb += [walker.fire.eq(req_fire), walker.gate.eq(self.a_empty),
                     self.a_taken.eq(walker.leaving_wait),
                     self.rd_req.valid.eq(walker.active & can_issue & ~throttle),
                     self.rd_req.payload.addr.eq(walker.addr),
                     tile_issue.eq(req_fire & walker.is_param & walker.first_q)]
        return m


class _Router(wiring.Component):
    """Read responses to where they belong, by the same walk as the issuer's:
    A words into the scratchpad bank being loaded (``a_loaded`` marks a bank
    complete), parameter words gathered into one FIFO entry per tile, W words
    into the W FIFO. A response waits only for room in its FIFO. A raw
    command reads a tile's bias words alone (`EngineConfig.param_words`), so
    they sit higher in the gathered words than a full tile's would.

    In GEMV mode A row r goes to row gemv_rows-1-r of every group (rows
    g*gemv_rows + gemv_rows-1-r), rotated down by g bytes for group g: the
    feeder then reads every row at the same byte lane and group g finds k-step
    lane + g there, its own. Bottom-up, so that the array's bottom-first drain
    gives A row 0's total first and a tile's last result comes out as soon as
    its M rows are out."""

    def __init__(self, c):
        self.cfg = c
        super().__init__({
            "ctx": In(_CommandContext(c)),
            "rd_resp": In(stream.Signature(read_response_layout(c))),
            "answered": Out(1),
            "a_wr": Out(_a_mem_signature(c, WritePort)),
            "a_loaded": Out(2),
            "params": Out(stream.Signature(8 * c.param_bytes_per_tile)),
            "weights": Out(stream.Signature(8 * c.mem_bytes)),
        })

    def elaborate(self, platform):
        m = Module()
        c = self.cfg
        R, MB, PW = c.rows, c.mem_bytes, c.param_words_per_tile
        m.submodules.walker = walker = _WordWalker(c)
        wiring.connect(m, wiring.flipped(self.ctx), walker.ctx)
        resp = self.rd_resp
        resp_fire = resp.valid & resp.ready
        m.d.comb += [walker.fire.eq(resp_fire), walker.gate.eq(1), self.answered.eq(resp_fire)]

        p_buf = Signal(8 * MB * PW)
        p_word = Signal(8 * MB * PW)
        data = resp.payload.data
        GR, G = c.gemv_rows, c.k_per_word
        fold = self.ctx.fold
        slices = [data if i >= G * GR else
                  Mux(fold, data.rotate_right(8 * (i // GR)), data) for i in range(R)]
        row_en = 1 << walker.a_row
        if GR:
            row_en = Mux(fold, Const(sum(1 << (g * GR + GR - 1) for g in range(G)), R)
                         >> walker.a_row, row_en)
        # a raw tile's biases, shifted in fewer times than a full tile's words
        raw_at = 8 * MB * (PW - c.param_words(True))
        bias_bits = 32 * c.cols
        m.d.comb += [p_word.eq(Cat(p_buf[8 * MB:], data)),
                     self.params.payload.eq(Cat(
                         Mux(self.ctx.cmd.raw_out, p_word[raw_at:raw_at + bias_bits],
                             p_word[:bias_bits]),
                         p_word[bias_bits:len(self.params.payload)])),
                     self.weights.payload.eq(data),
                     self.a_wr.addr.eq(walker.a_entry + Mux(walker.a_bank, _a_depth(c), 0)),
                     self.a_wr.data.eq(Cat(*slices))]
        with m.If(walker.is_a):
            m.d.comb += [resp.ready.eq(1),
                         self.a_wr.en.eq(Mux(resp.valid, row_en, 0))]
            with m.If(resp_fire & walker.a_load_last):
                m.d.comb += self.a_loaded.eq(1 << walker.a_bank)
        with m.Elif(walker.is_param):
            m.d.comb += [resp.ready.eq(~walker.last_q | self.params.ready),
                         self.params.valid.eq(resp.valid & walker.last_q)]
            with m.If(resp_fire):
                m.d.sync += p_buf.eq(p_word)
        with m.Elif(walker.is_w):
            m.d.comb += [resp.ready.eq(self.weights.ready),
                         self.weights.valid.eq(resp.valid)]
        return m


class _Feeder(wiring.Component):
    """Array beats from the resident A block and the W stream, one k-step of
    every row and column per cycle (F0: decide the beat, read the scratchpad,
    pop W; F1: select lanes; F2: registered beat, the ports ``valid``,
    ``last``, ``a``, ``w``).

    It owns the handshakes that let the array and the requantiser run
    without ever stopping: the scratchpad scoreboard (a bank is read only once
    the router marked it loaded, and ``a_empty`` releases the issuer's next
    non-overlapped A load), and the output-FIFO credits (a tile starts only
    with the entries its rows take reserved, ``rows``, or M in GEMV mode; the
    writer returns one per popped row, ``row_popped``).

    In GEMV mode a beat is a whole W word: byte lane g (k-step k + g) goes to
    group g (``w`` for group 0, ``wg[g-1]`` for the others), and each row
    reads the A scratchpad at the lane of k (the router stored group g's rows
    shifted by g). Lanes past K in a tile's last word are W padding, so they
    enter as zeros. A tile is then ceil(K / k_per_word) beats, padded to
    ``min_tile_period`` like any short tile."""

    def __init__(self, c):
        self.cfg = c
        gemv = ({"wg": Out(signed(c.w_bits)).array(c.k_per_word - 1, c.cols)}
                if c.gemv_rows else {})
        super().__init__({
            "ctx": In(_CommandContext(c)),
            "weights": In(stream.Signature(8 * c.mem_bytes)),
            "a_rd": Out(_a_mem_signature(c, ReadPort)),
            "a_loaded": In(2),
            "a_taken": In(1),
            "a_empty": Out(1, init=1),
            "row_popped": In(1),
            "valid": Out(1), "last": Out(1),
            "a": Out(signed(c.a_bits + 1)).array(c.rows),
            "w": Out(signed(c.w_bits)).array(c.cols),
            **gemv,
        })

    def elaborate(self, platform):
        m = Module()
        c = self.cfg
        R, C, MB, GW = c.rows, c.cols, c.mem_bytes, c.k_per_word
        cmd, a_depth, a_empty = self.ctx.cmd, _a_depth(c), self.a_empty
        fold = self.ctx.fold

        # a_rdy[bank]: loaded, not yet consumed
        a_rdy = Signal(2)
        a_rdy_clr = Signal(2)
        m.d.sync += a_rdy.eq((a_rdy | self.a_loaded) & ~a_rdy_clr)
        with m.If(self.a_taken | self.ctx.start):
            m.d.sync += a_empty.eq(0)

        out_rows = c.out_fifo_tiles * R
        credits = Signal(range(out_rows + 1), init=out_rows)
        reserve = Signal()
        m.d.sync += credits.eq(credits - Mux(reserve, self.ctx.tile_rows, 0) + self.row_popped)

        f_beat = Signal()
        f_last = Signal()
        f_pop = Signal()
        f_k = Signal(range(c.max_k + 1))          # beats so far in this tile
        f_kk = Signal(range(c.max_k + 1))         # the beat's (first) k-step
        f_g = Signal(range(GW))
        f_lane = Signal(range(MB))
        f_entry = Signal(range(a_depth))
        f_bank = Signal()
        f_n0 = Signal.like(cmd.n)
        f_m0 = Signal.like(cmd.m)
        f_pad = Signal.like(self.ctx.pmin)
        k_step = Mux(fold, GW, 1)
        lane_wrap = Mux(fold, f_lane == MB - GW, f_lane == MB - 1)
        # padding counts the tile's beats rather than K: a GEMV-mode tile is
        # ceil(K / k_per_word) beats, and no divider is needed for it
        beats = f_k + 1
        pad = Mux(beats < self.ctx.pmin, self.ctx.pmin - beats, 0)
        m.d.comb += [self.a_rd.addr.eq(f_entry + Mux(f_bank, a_depth, 0)), self.a_rd.en.eq(1),
                     self.weights.ready.eq(f_pop)]

        def next_tile():
            """Move the feeder to the next tile, or stop after the last one."""
            with m.If(f_n0 + C < cmd.n):
                m.d.sync += f_n0.eq(f_n0 + C)
                m.next = "BEAT"
            with m.Elif(f_m0 + R < cmd.m):
                m.d.sync += [f_m0.eq(f_m0 + R), f_n0.eq(0)]
                m.next = "BEAT"
            with m.Else():
                m.next = "IDLE"

        with m.FSM():
            with m.State("IDLE"):
                with m.If(self.ctx.start):
                    m.d.sync += [f_k.eq(0), f_kk.eq(0), f_g.eq(0), f_lane.eq(0),
                                 f_entry.eq(0), f_n0.eq(0), f_m0.eq(0), f_bank.eq(0)]
                    m.next = "BEAT"
            with m.State("BEAT"):
                ready = (a_rdy.bit_select(f_bank, 1) & ((f_g != 0) | self.weights.valid)
                         & ((f_k != 0) | (credits >= self.ctx.tile_rows)))
                m.d.comb += [f_beat.eq(ready), f_pop.eq(ready & (f_g == 0)),
                             reserve.eq(ready & (f_k == 0)), f_last.eq(f_kk + k_step >= cmd.k)]
                with m.If(ready):
                    m.d.sync += [f_k.eq(beats), f_kk.eq(f_kk + k_step),
                                 f_g.eq(Mux((f_g == GW - 1) | fold, 0, f_g + 1)),
                                 f_lane.eq(Mux(lane_wrap, 0, f_lane + k_step)),
                                 f_entry.eq(f_entry + lane_wrap)]
                    with m.If(f_last):
                        m.d.sync += [f_k.eq(0), f_kk.eq(0), f_g.eq(0), f_lane.eq(0),
                                     f_entry.eq(0), f_pad.eq(pad)]
                        with m.If(f_n0 + C >= cmd.n):
                            # this bank has been read for the last time
                            m.d.comb += a_rdy_clr.eq(1 << f_bank)
                            m.d.sync += [a_empty.eq(1), f_bank.eq(~f_bank)]
                        final = (f_n0 + C >= cmd.n) & (f_m0 + R >= cmd.m)
                        with m.If(final):
                            m.next = "IDLE"
                        with m.Elif(pad != 0):
                            m.next = "PAD"
                        with m.Else():
                            next_tile()
            with m.State("PAD"):
                # bubbles keep short tiles >= min_tile_period apart
                with m.If(f_pad > 1):
                    m.d.sync += f_pad.eq(f_pad - 1)
                with m.Else():
                    next_tile()

        # F1: lane selection from the scratchpad word and the held W word.
        w_word = Signal(8 * MB)
        with m.If(f_pop):
            m.d.sync += w_word.eq(self.weights.payload)
        f1_valid, f1_last = Signal(), Signal()
        f1_lane = Signal.like(f_lane)
        f1_g = Signal.like(f_g)
        m.d.sync += [f1_valid.eq(f_beat), f1_last.eq(f_beat & f_last),
                     f1_lane.eq(f_lane), f1_g.eq(f_g)]
        # F2: the registered beat
        m.d.sync += [self.valid.eq(f1_valid), self.last.eq(f1_last)]
        w_lanes = w_word.word_select(f1_g, 8 * C)
        for i in range(R):
            byte = self.a_rd.data[i * 8 * MB:(i + 1) * 8 * MB].word_select(f1_lane, 8)
            m.d.sync += self.a[i].eq(Mux(cmd.a_signed, byte.as_signed(), byte.as_unsigned()))
        for j in range(C):
            m.d.sync += self.w[j].eq(w_lanes[8 * j:8 * j + c.w_bits].as_signed())
        if c.gemv_rows:
            # GEMV mode: lanes past K (a tile's last word) are padding
            f1_kv = Signal(GW)
            m.d.sync += f1_kv.eq(Cat(f_kk + g < cmd.k for g in range(GW)))
            # unfolded, every group of the array takes the top's W (`SystolicArray`)
            for g in range(1, GW):
                lanes = w_word[8 * C * g:8 * C * (g + 1)]
                for j in range(C):
                    m.d.sync += self.wg[g - 1][j].eq(
                        Mux(fold, Mux(f1_kv[g], lanes[8 * j:8 * j + c.w_bits].as_signed(), 0),
                            w_lanes[8 * j:8 * j + c.w_bits].as_signed()))
        return m


class _RowRequant(wiring.Component):
    """The requantiser behind the array, with each tile's parameters from the
    parameter FIFO: a tile's rows leave the array back to back, so the FIFO's
    head serves every row and is popped after the last (``tile_drained`` tells
    the issuer a tile's worth of room is free). Its output is written without
    looking at ``rows.ready``: the feeder's credits reserved the room.

    In GEMV mode a tile drains `gemv_rows` rows, the totals of A rows 0 ..
    gemv_rows-1, and only its M rows go on to the output buffer. How many rows
    a tile drains and keeps is latched with its first row: the next command
    may be accepted while this one's last rows past M still drain."""

    def __init__(self, c):
        self.cfg = c
        super().__init__({
            "ctx": In(_CommandContext(c)),
            "acc_valid": In(1),
            "acc": In(signed(c.acc_bits)).array(c.cols),
            "params": In(stream.Signature(8 * c.param_bytes_per_tile)),
            "tile_drained": Out(1),
            "rows": Out(stream.Signature(32 * c.cols)),
        })

    def elaborate(self, platform):
        m = Module()
        c = self.cfg
        R, C, GR = c.rows, c.cols, c.gemv_rows
        m.submodules.requant = rq = Requantiser(
            C, acc_width=c.acc_bits, mult_bits=c.mult_bits,
            shift_bits=c.max_shift.bit_length(), out_bits=c.out_bits)
        params = self.params.payload
        rq_row = Signal(range(R))
        keep, tile_last = Signal(), Signal()
        if GR:
            t_fold = Signal()
            t_keep = Signal(range(R + 1))        # rows of this tile to pass on
            first = rq_row == 0
            with m.If(self.acc_valid & first):
                m.d.sync += [t_fold.eq(self.ctx.fold), t_keep.eq(self.ctx.tile_rows)]
            fold = Mux(first, self.ctx.fold, t_fold)
            m.d.comb += [keep.eq(first | ~t_fold | (rq_row < t_keep)),
                         tile_last.eq(rq_row == Mux(fold, GR - 1, R - 1))]
        else:
            m.d.comb += [keep.eq(1), tile_last.eq(rq_row == R - 1)]
        m.d.comb += [rq.valid.eq(self.acc_valid & keep), rq.raw.eq(self.ctx.cmd.raw_out)]
        for j in range(C):
            bias = params[32 * j:32 * j + 32]
            q = params[32 * (C + j):32 * (C + j) + 32]
            m.d.comb += [rq.acc[j].eq(self.acc[j]), rq.bias[j].eq(bias[:c.acc_bits].as_signed()),
                         rq.mult[j].eq(q[:c.mult_bits]), rq.shift[j].eq(q[16:16 + len(rq.shift[j])])]
        with m.If(self.acc_valid):
            m.d.sync += rq_row.eq(Mux(tile_last, 0, rq_row + 1))
            with m.If(tile_last):
                # the tile's last row has taken its parameters
                m.d.comb += [self.params.ready.eq(1), self.tile_drained.eq(1)]
        m.d.comb += [self.rows.valid.eq(rq.out_valid),
                     self.rows.payload.eq(Cat(*[rq.out[j].as_unsigned() for j in range(C)]))]
        return m


class _Writer(wiring.Component):
    """Output rows to memory, one write per row segment. Rows of a tile leave
    the array bottom-first (row R-1 .. 0); rows past M are dropped without a
    write, one per cycle, and columns past N are masked by the byte strobes. ``row_popped``
    returns a credit to the feeder; ``finish`` marks the command's last write
    accepted. In GEMV mode a tile brings its M rows alone, top-first (A row 0
    .. M-1, see `_Router`), so the row address walks up from ``out_base``."""

    def __init__(self, c):
        self.cfg = c
        super().__init__({
            "ctx": In(_CommandContext(c)),
            "rows": In(stream.Signature(32 * c.cols)),
            "wr": Out(stream.Signature(write_layout(c))),
            "row_popped": Out(1),
            "finish": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        c = self.cfg
        R, C, MB = c.rows, c.cols, c.mem_bytes
        cmd, p, row = self.ctx.cmd, self.ctx.p, self.rows.payload
        wr_row = Signal(range(R), init=R - 1)
        wr_b = Signal(range(4 * C + 1))          # write beat within the row segment
        wr_n_rem = Signal(range(c.max_n + 1))     # N - n0
        wr_m_rem = Signal(range(c.max_m + 1))     # M - m0
        wr_blk_top = Signal(c.addr_bits)         # address of row m0+R-1
        wr_row_addr = Signal(c.addr_bits)
        wr_seg_word = Signal(c.addr_bits)        # word offset of the segment in its row
        wr_seg_g = Signal(range(MB))             # segment slot within the word
        wr_step = Signal(c.addr_bits)            # next row's address offset (mod 2^addr_bits)
        # the row is inside M (not a dropped row past it): a flip-flop with the two
        # counters, from their next values, so that the write's valid, and through
        # the single-port SPRAM's read ready the issuer's whole walk, start at a
        # register rather than at a compare
        row_valid = Signal()
        wr_row_n, wr_m_rem_n = Signal.like(wr_row), Signal.like(wr_m_rem)
        m.d.comb += [wr_row_n.eq(wr_row), wr_m_rem_n.eq(wr_m_rem)]
        m.d.sync += [wr_row.eq(wr_row_n), wr_m_rem.eq(wr_m_rem_n),
                     row_valid.eq(wr_row_n < wr_m_rem_n)]
        seg8, per8, words8 = c.out_segment(False)
        seg32, per32, words32 = c.out_segment(True)
        seg_per = Mux(cmd.raw_out, per32, per8)
        seg_words = Mux(cmd.raw_out, words32, words8)
        with m.If(self.ctx.start):
            fold = self.ctx.p_fold
            top = Mux(fold, p.out_base, p.out_base + times_const(p.out_stride, R - 1))
            m.d.comb += [wr_row_n.eq(Mux(fold, p.m - 1, R - 1)), wr_m_rem_n.eq(p.m)]
            m.d.sync += [wr_b.eq(0), wr_n_rem.eq(p.n),
                         wr_blk_top.eq(top), wr_row_addr.eq(top),
                         wr_step.eq(Mux(fold, p.out_stride, -p.out_stride)),
                         wr_seg_word.eq(0), wr_seg_g.eq(0)]

        colmask = Cat(*[j < wr_n_rem for j in range(C)])
        d8 = Cat(*[row[32 * j:32 * j + 8] for j in range(C)])
        d8_word = (d8 << (wr_seg_g * 8 * seg8))[:8 * MB]
        s8_word = (colmask << (wr_seg_g * seg8))[:MB]
        s32 = Cat(*[colmask[j].replicate(4) for j in range(C)])
        if per32 >= 1 and words32 == 1:
            d32_word = (row << (wr_seg_g * 8 * seg32))[:8 * MB]
            s32_word = (s32 << (wr_seg_g * seg32))[:MB]
        else:
            pad = 8 * MB * words32 - len(row)
            d32_word = Cat(row, Const(0, pad)).word_select(wr_b, 8 * MB)
            s32_word = Cat(s32, Const(0, pad // 8)).word_select(wr_b, MB)
        m.d.comb += [self.wr.payload.addr.eq(wr_row_addr + wr_seg_word + wr_b),
                     self.wr.payload.data.eq(Mux(cmd.raw_out, d32_word, d8_word)),
                     self.wr.payload.strb.eq(Mux(cmd.raw_out, s32_word, s8_word)),
                     self.wr.valid.eq(self.rows.valid & row_valid)]
        advance = self.rows.valid & (self.wr.ready | ~row_valid)
        # a dropped row (past M) has nothing to write: it leaves in one cycle, so a
        # decode's raw tile waits for the segments of its M rows only
        with m.If(advance):
            m.d.sync += wr_b.eq(wr_b + 1)
            with m.If((wr_b == seg_words - 1) | ~row_valid):
                m.d.comb += [self.rows.ready.eq(1), self.row_popped.eq(1)]
                m.d.comb += wr_row_n.eq(wr_row - 1)
                m.d.sync += [wr_b.eq(0), wr_row_addr.eq(wr_row_addr + wr_step)]
                with m.If(wr_row == 0):
                    m.d.comb += wr_row_n.eq(self.ctx.tile_rows - 1)
                    m.d.sync += wr_row_addr.eq(wr_blk_top)
                    with m.If(wr_n_rem > C):
                        m.d.sync += wr_n_rem.eq(wr_n_rem - C)
                        with m.If(wr_seg_g == seg_per - 1):
                            m.d.sync += [wr_seg_g.eq(0), wr_seg_word.eq(wr_seg_word + seg_words)]
                        with m.Else():
                            m.d.sync += wr_seg_g.eq(wr_seg_g + 1)
                    with m.Elif(wr_m_rem > R):
                        nxt_top = wr_blk_top + times_const(cmd.out_stride, R)
                        m.d.comb += wr_m_rem_n.eq(wr_m_rem - R)
                        m.d.sync += [wr_n_rem.eq(cmd.n),
                                     wr_seg_g.eq(0), wr_seg_word.eq(0),
                                     wr_blk_top.eq(nxt_top), wr_row_addr.eq(nxt_top)]
                    with m.Else():
                        m.d.comb += self.finish.eq(1)
        return m


class MatmulEngine(wiring.Component):
    """Tiled int8 matmul engine around a rows x cols systolic array.

    Ports:
    - ``cmd``: command stream (`isa.matmul_command_layout`); accepted only when idle.
    - ``rd_req`` / ``rd_resp``: memory reads; responses must return in
      request order. At most ``cfg.max_outstanding`` requests are unanswered.
    - ``wr``: memory writes with byte strobes.
    - ``busy``: a command is running; ``done``: one-cycle pulse after its last
      write was accepted.

    The buffers between the blocks (A scratchpad, W, parameter and output
    FIFOs) sit here rather than inside a block: each is written by one block
    and read by another, and the formal harness names the FIFOs in this
    module (`sim/formal/engines.py`).
    """

    def __init__(self, cfg: EngineConfig):
        self.cfg = cfg
        super().__init__({
            "cmd": In(stream.Signature(matmul_command_layout(cfg))),
            "mem": Out(MemPort.for_config(cfg)),
            "busy": Out(1),
            "done": Out(1),
        })

    @property
    def latency(self):
        """Last feeder beat of a tile -> its first row entering the output FIFO."""
        c = self.cfg
        return c.FEED_LATENCY + c.drain_latency + c.REQUANT_LATENCY

    def elaborate(self, platform):
        m = Module()
        c = self.cfg
        R, C, MB = c.rows, c.cols, c.mem_bytes
        m.submodules.command = command = _CommandLatch(c)
        m.submodules.issuer = issuer = _Issuer(c)
        m.submodules.router = router = _Router(c)
        m.submodules.feeder = feeder = _Feeder(c)
        m.submodules.array = array = SystolicArray(R, C, c.a_bits + 1, c.w_bits, c.acc_bits,
                                                   groups=c.k_per_word if c.gemv_rows else 1,
                                                   span=c.BROADCAST)
        m.submodules.requant = requant = _RowRequant(c)
        m.submodules.writer = writer = _Writer(c)
        # the cycle model reads these constants from the config
        assert array.latency == c.drain_latency and Requantiser.latency == c.REQUANT_LATENCY
        assert Requantiser.raw_latency == c.REQUANT_RAW_LATENCY
        assert not c.gemv_rows or (array.fold_latency == c.gemv_drain_latency
                                   and array.fold_spacing == c.gemv_spacing)

        m.submodules.a_mem = a_mem = Memory(shape=R * 8 * MB, depth=2 * _a_depth(c), init=[])
        m.submodules.w_fifo = w_fifo = BypassFIFO(width=8 * MB, depth=c.w_fifo_depth)
        m.submodules.p_fifo = p_fifo = fifo.SyncFIFOBuffered(
            width=8 * c.param_bytes_per_tile, depth=c.param_fifo_tiles)
        m.submodules.o_fifo = o_fifo = BypassFIFO(
            width=32 * C, depth=c.out_fifo_tiles * R + 1)

        wiring.connect(m, wiring.flipped(self.cmd), command.cmd)
        wiring.connect(m, command.ctx, issuer.ctx, router.ctx, feeder.ctx, requant.ctx,
                       writer.ctx)
        wiring.connect(m, issuer.rd_req, wiring.flipped(self.mem.rd_req))
        wiring.connect(m, wiring.flipped(self.mem.rd_resp), router.rd_resp)
        wiring.connect(m, router.a_wr, a_mem.write_port(granularity=8 * MB))
        wiring.connect(m, feeder.a_rd, a_mem.read_port(domain="sync", transparent_for=()))
        wiring.connect(m, router.weights, w_fifo.w_stream)
        wiring.connect(m, w_fifo.r_stream, feeder.weights)
        wiring.connect(m, router.params, p_fifo.w_stream)
        wiring.connect(m, p_fifo.r_stream, requant.params)
        wiring.connect(m, requant.rows, o_fifo.w_stream)
        wiring.connect(m, o_fifo.r_stream, writer.rows)
        wiring.connect(m, writer.wr, wiring.flipped(self.mem.wr))
        m.d.comb += [issuer.answered.eq(router.answered),
                     issuer.tile_drained.eq(requant.tile_drained),
                     issuer.a_empty.eq(feeder.a_empty), feeder.a_taken.eq(issuer.a_taken),
                     feeder.a_loaded.eq(router.a_loaded), feeder.row_popped.eq(writer.row_popped),
                     array.valid.eq(feeder.valid), array.last.eq(feeder.last),
                     *(array.a[i].eq(feeder.a[i]) for i in range(R)),
                     *(array.w[j].eq(feeder.w[j]) for j in range(C)),
                     *((array.fold.eq(command.ctx.fold),
                        *(array.wg[g][j].eq(feeder.wg[g][j])
                          for g in range(c.k_per_word - 1) for j in range(C)))
                       if c.gemv_rows else ()),
                     requant.acc_valid.eq(array.out_valid),
                     *(requant.acc[j].eq(array.out[j]) for j in range(C)),
                     command.finish.eq(writer.finish),
                     self.busy.eq(command.busy), self.done.eq(command.done)]
        return m
