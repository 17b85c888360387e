"""The matmul engine: one command computes a whole M x K x N int8 matmul.

Blocks (see docs/architecture.md, "Matmul engine"):

- issuer: walks the command's word sequence (`_WordWalker`) and sends read
  requests (per row block: the A rows, then for every column tile its
  parameter words and W words; later blocks' A words slotted between the
  previous block's W words);
- router: walks the same sequence over the read responses and steers each
  word to an A scratchpad bank, the parameter FIFO or the W FIFO;
- feeder: turns the resident A block and the W stream into array beats
  (one k-step for all rows/columns per cycle), padding short tiles;
- SystolicArray -> Requantiser -> output FIFO -> writer, which emits one
  write per output row segment.

Every unit walks the loop nest with its own counters instead of passing
tags around: responses come back in request order, and tiles leave the
array in the order they entered.
"""
from amaranth.hdl import *
from amaranth.lib import fifo, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from .config import EngineConfig
from .isa import matmul_command_layout
from .memport import MemPort
from .systolic import SystolicArray
from .requant import Requantiser

C1 = Const(1, 1)

__all__ = ["MatmulEngine"]


class _WordWalker:
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

    def __init__(self, m, c, name, cmd, p, accept, a_blk_stride, k_ok, *, fire, gate):
        R, C, MB, GW = c.rows, c.cols, c.mem_bytes, c.k_per_word
        PW = c.param_words_per_tile
        a_depth = c.a_words_per_row(c.max_k)
        kbits = range(c.max_k + MB + GW + 1)

        def sig(shape, field, **kw):
            return Signal(shape, name=f"{name}_{field}", **kw)

        # compute side: block m0, tile n0, parameter word q, W k-offset kk
        m0, n0 = sig(cmd.m.shape(), "m0"), sig(cmd.n.shape(), "n0")
        q, kk = sig(range(PW), "q"), sig(kbits, "kk")
        p_ptr, w_ptr = sig(c.addr_bits, "p_ptr"), sig(c.addr_bits, "w_ptr")
        max_j = -(-c.max_n // C) * c.w_words_per_tile(c.max_k) + 1
        j = sig(range(max_j + 1), "j")            # W words so far in this block
        blk0 = sig(1, "blk0")
        il = sig(1, "il")                         # interleave A loads of later blocks
        ph = sig(1, "ph")                         # every other W word carries an A slot
        slot = sig(1, "slot")                     # the next word is an A word
        # load side: block mA, row a_row, entry a_entry
        mA = sig(cmd.m.shape(), "mA")
        a_row, a_entry = sig(range(R), "a_row"), sig(range(a_depth + 1), "a_entry")
        a_kk = sig(kbits, "a_kk")
        a_blk, a_row_addr, a_ptr = (sig(c.addr_bits, f) for f in ("a_blk", "a_row_addr", "a_ptr"))
        a_busy = sig(1, "a_busy")                 # an interleaved load is in progress
        a_bank = sig(1, "a_bank")
        aw = sig(range(a_depth + 1), "aw")         # A words per row, measured on block 0

        self.a_row, self.a_entry, self.a_bank, self.q = a_row, a_entry, a_bank, q
        self.first_q, self.last_q = q == 0, q == PW - 1
        self.leaving_wait = Signal(name=f"{name}_leaving_wait")
        self.is_a, self.is_param, self.is_w = (Signal(name=f"{name}_is_{k}")
                                               for k in ("a", "param", "w"))
        self.active = Signal(name=f"{name}_active")
        self.addr = Signal(c.addr_bits, name=f"{name}_addr")
        self.a_load_last = (a_kk + MB >= cmd.k) & ((a_row == R - 1) | (mA + a_row + 1 >= cmd.m))

        def start_load(row, addr):
            m.d.sync += [mA.eq(row), a_blk.eq(addr), a_row_addr.eq(addr), a_ptr.eq(addr),
                         a_row.eq(0), a_kk.eq(0), a_entry.eq(0)]

        def begin_block(row, interleave):
            """Start the compute walk of block `row`; overlap the next block's load."""
            m.d.sync += [n0.eq(0), q.eq(0), j.eq(0), ph.eq(0),
                         p_ptr.eq(cmd.p_base), w_ptr.eq(cmd.w_base)]
            with m.If(interleave & (row + R < cmd.m)):
                start_load(row + R, a_blk + a_blk_stride)
                m.d.sync += a_busy.eq(1)

        with m.If(accept):
            m.d.sync += [m0.eq(0), blk0.eq(1), il.eq(0), slot.eq(0), a_busy.eq(0),
                         a_bank.eq(0)]
            start_load(0, p.a_base)

        def on_a_word(burst):
            """An A word was sent/received; `burst` if outside the compute walk."""
            m.d.sync += [a_ptr.eq(a_ptr + 1), a_kk.eq(a_kk + MB), a_entry.eq(a_entry + 1),
                         slot.eq(0)]
            with m.If(a_kk + MB >= cmd.k):
                m.d.sync += [a_kk.eq(0), a_entry.eq(0), a_row.eq(a_row + 1),
                             a_row_addr.eq(a_row_addr + cmd.a_stride),
                             a_ptr.eq(a_row_addr + cmd.a_stride)]
                with m.If(blk0 & (a_row == 0)):
                    m.d.sync += aw.eq(a_entry + 1)
                with m.If(self.a_load_last):
                    m.d.sync += [a_busy.eq(0), a_bank.eq(~a_bank), a_row.eq(0)]
                    if burst:
                        begin_block(m0, il)
                        m.next = "PARAM"

        def on_w_word():
            m.d.sync += [w_ptr.eq(w_ptr + 1), kk.eq(kk + GW), j.eq(j + 1)]
            with m.If(a_busy & (j + 1 >= c.w_fifo_depth + 1)):
                m.d.sync += [ph.eq(~ph), slot.eq(~ph)]
            with m.If(kk + GW >= cmd.k):
                with m.If(n0 + C < cmd.n):
                    m.d.sync += n0.eq(n0 + C)
                    m.next = "PARAM"
                with m.Elif(m0 + R < cmd.m):
                    m.d.sync += [m0.eq(m0 + R), blk0.eq(0)]
                    with m.If(blk0):
                        # decide once, from block 0's word count, whether later
                        # blocks' A words fit between this many W words
                        m.d.sync += il.eq(k_ok & (j + 1 >= c.w_fifo_depth + 8 + 2 * R * aw))
                    with m.If(il & ~blk0):
                        begin_block(m0 + R, 1)
                        m.next = "PARAM"
                    with m.Else():
                        m.next = "WAIT_A"
                with m.Else():
                    m.next = "IDLE"

        with m.FSM(name=f"{name}_fsm"):
            with m.State("IDLE"):
                with m.If(accept):
                    m.next = "A"
            with m.State("WAIT_A"):
                with m.If(gate):
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
                        m.d.sync += [q.eq(0), kk.eq(0)]
                        m.next = "W"
            with m.State("W"):
                m.d.comb += [self.is_a.eq(slot), self.is_w.eq(~slot)]
                with m.If(fire & slot):
                    on_a_word(burst=False)
                with m.If(fire & ~slot):
                    on_w_word()
        m.d.comb += [self.active.eq(self.is_a | self.is_param | self.is_w),
                     self.addr.eq(Mux(self.is_a, a_ptr, Mux(self.is_param, p_ptr, w_ptr)))]


class MatmulEngine(wiring.Component):
    """Tiled int8 matmul engine around a rows x cols systolic array.

    Ports:
    - ``cmd``: command stream (`isa.matmul_command_layout`); accepted only when idle.
    - ``rd_req`` / ``rd_resp``: memory reads; responses must return in
      request order. At most ``cfg.max_outstanding`` requests are unanswered.
    - ``wr``: memory writes with byte strobes.
    - ``busy``: a command is running; ``done``: one-cycle pulse after its last
      write was accepted.
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
        GW = c.k_per_word
        PW = c.param_words_per_tile
        cmd = Signal(matmul_command_layout(c))
        busy = Signal()
        m.d.comb += [self.busy.eq(busy), self.cmd.ready.eq(~busy)]
        accept = self.cmd.valid & self.cmd.ready
        with m.If(accept):
            m.d.sync += [cmd.eq(self.cmd.payload), busy.eq(1)]
        p = self.cmd.payload  # used at accept to initialise counters

        # Per-command constants, registered at accept.
        pad_len = Signal(range(max(c.min_tile_period(0), c.min_tile_period(1)) + 1))
        with m.If(accept):
            pmin = Mux(p.raw_out, c.min_tile_period(True), c.min_tile_period(False))
            m.d.sync += pad_len.eq(Mux(p.k < pmin, pmin - p.k, 0))

        # A scratchpad banks: the router loads one while the feeder reads the
        # other. a_rdy[bank]: loaded, not yet consumed. a_empty: the feeder
        # finished a block (the issuer's gate for a non-overlapped A load).
        a_rdy = Signal(2)
        a_rdy_set = Signal(2)
        a_rdy_clr = Signal(2)
        m.d.sync += a_rdy.eq((a_rdy | a_rdy_set) & ~a_rdy_clr)
        a_empty = Signal(init=1)
        # Tiles whose parameters were requested but not yet consumed by the
        # requantiser: bounds the parameter FIFO and the issuer's run-ahead.
        tiles_ahead = Signal(range(c.param_fifo_tiles + 1))
        tile_issue = Signal()
        tile_drained = Signal()
        m.d.sync += tiles_ahead.eq(tiles_ahead + tile_issue - tile_drained)
        outstanding = Signal(range(c.max_outstanding + 1))
        req_fire = self.mem.rd_req.valid & self.mem.rd_req.ready
        resp_fire = self.mem.rd_resp.valid & self.mem.rd_resp.ready
        m.d.sync += outstanding.eq(outstanding + req_fire - resp_fire)

        # Per-command values shared by both walkers.
        a_blk_stride = Signal(c.addr_bits)   # a_stride * rows: next row block
        k_ok = Signal()                      # K long enough to interleave A loads
        with m.If(accept):
            m.d.sync += [a_blk_stride.eq(p.a_stride * R),
                         k_ok.eq(p.k >= c.interleave_min_k)]

        # ---------------- A scratchpad, FIFOs --------------------------------
        a_depth = c.a_words_per_row(c.max_k)
        m.submodules.a_mem = a_mem = Memory(shape=R * 8 * MB, depth=2 * a_depth, init=[])
        a_wr = a_mem.write_port(granularity=8 * MB)
        a_rd = a_mem.read_port(domain="sync", transparent_for=())
        m.submodules.w_fifo = w_fifo = fifo.SyncFIFOBuffered(width=8 * MB, depth=c.w_fifo_depth)
        param_width = 8 * c.param_bytes_per_tile
        m.submodules.p_fifo = p_fifo = fifo.SyncFIFOBuffered(width=param_width, depth=c.param_fifo_tiles)
        out_rows = c.out_fifo_tiles * R
        m.submodules.o_fifo = o_fifo = fifo.SyncFIFOBuffered(width=32 * C, depth=out_rows + 1)

        # ---------------- issuer and router ----------------------------------
        # The same walk over the command's words, once on the request side and
        # once on the response side; it advances on `fire`.
        iw = _WordWalker(m, c, "issue", cmd, p, accept, a_blk_stride, k_ok,
                         fire=req_fire, gate=a_empty)
        rw = _WordWalker(m, c, "route", cmd, p, accept, a_blk_stride, k_ok,
                         fire=resp_fire, gate=C1)

        with m.If(iw.leaving_wait):
            m.d.sync += a_empty.eq(0)
        with m.If(accept):
            m.d.sync += a_empty.eq(0)
        can_issue = outstanding < c.max_outstanding
        throttle = iw.is_param & iw.first_q & (tiles_ahead >= c.param_fifo_tiles)
        m.d.comb += [self.mem.rd_req.valid.eq(iw.active & can_issue & ~throttle),
                     self.mem.rd_req.payload.addr.eq(iw.addr),
                     tile_issue.eq(req_fire & iw.is_param & iw.first_q)]

        p_buf = Signal(8 * MB * PW)
        p_word = Signal(8 * MB * PW)
        data = self.mem.rd_resp.payload.data
        m.d.comb += [p_word.eq(Cat(p_buf[8 * MB:], data)),
                     p_fifo.w_data.eq(p_word[:param_width]),
                     w_fifo.w_data.eq(data),
                     a_wr.addr.eq(rw.a_entry + Mux(rw.a_bank, a_depth, 0)),
                     a_wr.data.eq(data.replicate(R))]
        with m.If(rw.is_a):
            m.d.comb += [self.mem.rd_resp.ready.eq(1),
                         a_wr.en.eq(Mux(self.mem.rd_resp.valid, 1 << rw.a_row, 0))]
            with m.If(resp_fire & rw.a_load_last):
                m.d.comb += a_rdy_set.eq(1 << rw.a_bank)
        with m.Elif(rw.is_param):
            m.d.comb += [self.mem.rd_resp.ready.eq(~rw.last_q | p_fifo.w_rdy),
                         p_fifo.w_en.eq(self.mem.rd_resp.valid & rw.last_q)]
            with m.If(resp_fire):
                m.d.sync += p_buf.eq(p_word)
        with m.Elif(rw.is_w):
            m.d.comb += [self.mem.rd_resp.ready.eq(w_fifo.w_rdy),
                         w_fifo.w_en.eq(self.mem.rd_resp.valid)]

        # ---------------- feeder ---------------------------------------------
        # F0: decide the beat, read the scratchpad, pop W. F1: select lanes.
        # F2: registered beat into the array.
        credits = Signal(range(out_rows + 1), init=out_rows)
        reserve = Signal()
        o_pop = Signal()
        m.d.sync += credits.eq(credits - Mux(reserve, R, 0) + o_pop)

        f_beat = Signal()
        f_last = Signal()
        f_pop = Signal()
        f_k = Signal(range(c.max_k + 1))
        f_g = Signal(range(GW))
        f_lane = Signal(range(MB))
        f_entry = Signal(range(a_depth))
        f_bank = Signal()
        f_n0 = Signal.like(cmd.n)
        f_m0 = Signal.like(cmd.m)
        f_pad = Signal.like(pad_len)
        m.d.comb += [a_rd.addr.eq(f_entry + Mux(f_bank, a_depth, 0)), a_rd.en.eq(1),
                     w_fifo.r_en.eq(f_pop)]
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

        with m.FSM(name="feeder"):
            with m.State("IDLE"):
                with m.If(accept):
                    m.d.sync += [f_k.eq(0), f_g.eq(0), f_lane.eq(0), f_entry.eq(0),
                                 f_n0.eq(0), f_m0.eq(0), f_bank.eq(0)]
                    m.next = "BEAT"
            with m.State("BEAT"):
                ready = a_rdy.bit_select(f_bank, 1) & ((f_g != 0) | w_fifo.r_rdy) & ((f_k != 0) | (credits >= R))
                m.d.comb += [f_beat.eq(ready), f_pop.eq(ready & (f_g == 0)),
                             reserve.eq(ready & (f_k == 0)), f_last.eq(f_k + 1 == cmd.k)]
                with m.If(ready):
                    m.d.sync += [f_k.eq(f_k + 1), f_g.eq(Mux(f_g == GW - 1, 0, f_g + 1)),
                                 f_lane.eq(Mux(f_lane == MB - 1, 0, f_lane + 1)),
                                 f_entry.eq(f_entry + (f_lane == MB - 1))]
                    with m.If(f_last):
                        m.d.sync += [f_k.eq(0), f_g.eq(0), f_lane.eq(0), f_entry.eq(0),
                                     f_pad.eq(pad_len)]
                        with m.If(f_n0 + C >= cmd.n):
                            # this bank has been read for the last time
                            m.d.comb += a_rdy_clr.eq(1 << f_bank)
                            m.d.sync += [a_empty.eq(1), f_bank.eq(~f_bank)]
                        final = (f_n0 + C >= cmd.n) & (f_m0 + R >= cmd.m)
                        with m.If(final):
                            m.next = "IDLE"
                        with m.Elif(pad_len != 0):
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
            m.d.sync += w_word.eq(w_fifo.r_data)
        f1_valid, f1_last = Signal(), Signal()
        f1_lane = Signal.like(f_lane)
        f1_g = Signal.like(f_g)
        m.d.sync += [f1_valid.eq(f_beat), f1_last.eq(f_beat & f_last),
                     f1_lane.eq(f_lane), f1_g.eq(f_g)]
        a_width = c.a_bits + 1
        m.submodules.array = array = SystolicArray(R, C, a_width, c.w_bits, c.acc_bits)
        # the cycle model reads these constants from the config
        assert array.latency == c.drain_latency and Requantiser.latency == c.REQUANT_LATENCY
        f2_valid, f2_last = Signal(), Signal()
        m.d.sync += [f2_valid.eq(f1_valid), f2_last.eq(f1_last)]
        m.d.comb += [array.valid.eq(f2_valid), array.last.eq(f2_last)]
        w_lanes = w_word.word_select(f1_g, 8 * C)
        for i in range(R):
            byte = a_rd.data[i * 8 * MB:(i + 1) * 8 * MB].word_select(f1_lane, 8)
            ext = Mux(cmd.a_signed, byte.as_signed(), byte.as_unsigned())
            f2_a = Signal(signed(a_width), name=f"f2_a{i}")
            m.d.sync += f2_a.eq(ext)
            m.d.comb += array.a[i].eq(f2_a)
        for j in range(C):
            f2_w = Signal(signed(c.w_bits), name=f"f2_w{j}")
            m.d.sync += f2_w.eq(w_lanes[8 * j:8 * j + c.w_bits].as_signed())
            m.d.comb += array.w[j].eq(f2_w)

        # ---------------- requantiser ----------------------------------------
        m.submodules.requant = rq = Requantiser(
            C, acc_width=c.acc_bits, mult_bits=c.mult_bits,
            shift_bits=c.max_shift.bit_length(), out_bits=c.out_bits)
        rq_row = Signal(range(R))
        m.d.comb += [rq.valid.eq(array.out_valid), rq.raw.eq(cmd.raw_out)]
        for j in range(C):
            bias = p_fifo.r_data[32 * j:32 * j + 32]
            q = p_fifo.r_data[32 * (C + j):32 * (C + j) + 32]
            m.d.comb += [rq.acc[j].eq(array.out[j]), rq.bias[j].eq(bias[:c.acc_bits].as_signed()),
                         rq.mult[j].eq(q[:c.mult_bits]), rq.shift[j].eq(q[16:16 + len(rq.shift[j])])]
        with m.If(array.out_valid):
            m.d.sync += rq_row.eq(Mux(rq_row == R - 1, 0, rq_row + 1))
            with m.If(rq_row == R - 1):
                # the tile's last row has taken its parameters
                m.d.comb += [p_fifo.r_en.eq(1), tile_drained.eq(1)]
        m.d.comb += [o_fifo.w_en.eq(rq.out_valid),
                     o_fifo.w_data.eq(Cat(*[rq.out[j].as_unsigned() for j in range(C)]))]

        # ---------------- writer ---------------------------------------------
        # Rows of a tile leave the array bottom-first (row R-1 .. 0).
        wr_row = Signal(range(R), init=R - 1)
        wr_b = Signal(range(4 * C + 1))          # write beat within the row segment
        wr_n_rem = Signal(range(c.max_n + 1))     # N - n0
        wr_m_rem = Signal(range(c.max_m + 1))     # M - m0
        wr_blk_top = Signal(c.addr_bits)         # address of row m0+R-1
        wr_row_addr = Signal(c.addr_bits)
        wr_seg_word = Signal(c.addr_bits)        # word offset of the segment in its row
        wr_seg_g = Signal(range(MB))             # segment slot within the word
        row_valid = wr_row < wr_m_rem
        seg8, per8, words8 = c.out_segment(False)
        seg32, per32, words32 = c.out_segment(True)
        seg_per = Mux(cmd.raw_out, per32, per8)
        seg_words = Mux(cmd.raw_out, words32, words8)
        with m.If(accept):
            top = p.out_base + p.out_stride * (R - 1)
            m.d.sync += [wr_row.eq(R - 1), wr_b.eq(0), wr_n_rem.eq(p.n), wr_m_rem.eq(p.m),
                         wr_blk_top.eq(top), wr_row_addr.eq(top),
                         wr_seg_word.eq(0), wr_seg_g.eq(0)]

        colmask = Cat(*[j < wr_n_rem for j in range(C)])
        d8 = Cat(*[o_fifo.r_data[32 * j:32 * j + 8] for j in range(C)])
        d8_word = (d8 << (wr_seg_g * 8 * seg8))[:8 * MB]
        s8_word = (colmask << (wr_seg_g * seg8))[:MB]
        d32 = o_fifo.r_data
        s32 = Cat(*[colmask[j].replicate(4) for j in range(C)])
        if per32 >= 1 and words32 == 1:
            d32_word = (d32 << (wr_seg_g * 8 * seg32))[:8 * MB]
            s32_word = (s32 << (wr_seg_g * seg32))[:MB]
        else:
            pad = 8 * MB * words32 - len(d32)
            d32_word = Cat(d32, Const(0, pad)).word_select(wr_b, 8 * MB)
            s32_word = Cat(s32, Const(0, pad // 8)).word_select(wr_b, MB)
        m.d.comb += [self.mem.wr.payload.addr.eq(wr_row_addr + wr_seg_word + wr_b),
                     self.mem.wr.payload.data.eq(Mux(cmd.raw_out, d32_word, d8_word)),
                     self.mem.wr.payload.strb.eq(Mux(cmd.raw_out, s32_word, s8_word)),
                     self.mem.wr.valid.eq(o_fifo.r_rdy & row_valid)]
        advance = o_fifo.r_rdy & (self.mem.wr.ready | ~row_valid)
        done = Signal()
        m.d.sync += done.eq(0)
        m.d.comb += self.done.eq(done)
        with m.If(advance):
            m.d.sync += wr_b.eq(wr_b + 1)
            with m.If(wr_b == seg_words - 1):
                m.d.comb += [o_fifo.r_en.eq(1), o_pop.eq(1)]
                m.d.sync += [wr_b.eq(0), wr_row.eq(wr_row - 1),
                             wr_row_addr.eq(wr_row_addr - cmd.out_stride)]
                with m.If(wr_row == 0):
                    m.d.sync += [wr_row.eq(R - 1), wr_row_addr.eq(wr_blk_top)]
                    with m.If(wr_n_rem > C):
                        m.d.sync += wr_n_rem.eq(wr_n_rem - C)
                        with m.If(wr_seg_g == seg_per - 1):
                            m.d.sync += [wr_seg_g.eq(0), wr_seg_word.eq(wr_seg_word + seg_words)]
                        with m.Else():
                            m.d.sync += wr_seg_g.eq(wr_seg_g + 1)
                    with m.Elif(wr_m_rem > R):
                        nxt_top = wr_blk_top + cmd.out_stride * R
                        m.d.sync += [wr_n_rem.eq(cmd.n), wr_m_rem.eq(wr_m_rem - R),
                                     wr_seg_g.eq(0), wr_seg_word.eq(0),
                                     wr_blk_top.eq(nxt_top), wr_row_addr.eq(nxt_top)]
                    with m.Else():
                        m.d.sync += [done.eq(1), busy.eq(0)]
        return m
