"""Cycle model of the matmul engine: exact RTL cycle counts from arithmetic.

`matmul_cycles(cfg, M, K, N, raw)` predicts the cycles from the command's
accept to its `done` pulse for a stall-free run behind the reference memory
(every request accepted at once, response valid `latency` cycles later,
writes always accepted). The tests check it against the RTL; the benchmark
uses it for GPT-2-sized shapes that are far too large to simulate.

Timeline per row block b (cycle 0 = command accept):

- the issuer sends the block's A words from cycle X_b, one per cycle
  (X_0 = 1; later blocks wait until the feeder has read the previous block);
- the first tile's parameter words follow, then its first W word, whose
  response reaches the feeder `FIFO_LATENCY` cycles after arriving;
- the feeder then emits tiles back to back, one every P = max(K, min period)
  cycles; the W stream runs ahead, so it never waits within a block;
- the last tile's rows leave the array `drain` cycles after its last beat,
  pass the requantiser (`requant_latency`: raw rows skip all but the bias
  add) and are written at `write_beats_per_row` per row, the rows past M
  (dropped) at one per cycle.

GEMV mode (M <= `gemv_rows`, one row block): the issuer sends the A words
from cycle 1, then every tile's parameter and W words back to back, tile t's
first parameter word at s_t >= s_{t-1} + max(words per tile,
gemv_min_tile_period) and no more than `param_fifo_tiles` tiles ahead of the
requantiser. The feeder takes each W word as a beat the cycle it leaves
the W FIFO (request + latency + `FIFO_LATENCY`): the issuer's spacing keeps the
feeder's padding and credits from ever holding a word back. A folded tile
drains the totals of its `gemv_rows` rows, A row 0 first, and only the M
rows reach the writer (the requantiser drops the others).
"""
from dataclasses import dataclass

from gpt2accel.rtl.config import EngineConfig, ceil_div

__all__ = ["matmul_cycles", "MatmulCycles", "REF_MEM_LATENCY"]

#: Memory latency of the reference memory model (request accept -> response valid).
REF_MEM_LATENCY = 3

#: W and output FIFOs (`rtl.matmul.BypassFIFO`): write -> readable, when empty
FIFO_LATENCY = 1



@dataclass(frozen=True)
class MatmulCycles:
    cycles: int
    macs: int          # useful multiply-accumulates, M*K*N
    feed_cycles: int   # cycles in which the feeder presented a valid beat

    def utilisation(self, cfg):
        return self.macs / (cfg.rows * cfg.cols * self.cycles)


def matmul_cycles(cfg: EngineConfig, m, k, n, raw=False, latency=REF_MEM_LATENCY):
    if not (1 <= m <= cfg.max_m and 1 <= k <= cfg.max_k and 1 <= n <= cfg.max_n):
        raise ValueError(f"shape {m}x{k}x{n} is outside the engine limits")
    if latency >= cfg.max_outstanding:
        raise ValueError("the model assumes max_outstanding > memory latency")
    R, C = cfg.rows, cfg.cols
    NT = ceil_div(n, C)
    P = cfg.tile_period(k, raw)
    pad = P - k
    PW = cfg.param_words(raw)
    AW = cfg.a_words_per_row(k)
    # fixed pipeline delays (see module docstring)
    fifo = FIFO_LATENCY                     # W FIFO write -> readable
    startup = PW + latency + fifo           # last A request -> first beat, minus one
    # the last block's rows leave the writer bottom-first: those past M one per
    # cycle, then its `rows` rows one write per segment word
    rows = m - (ceil_div(m, R) - 1) * R
    tail = (cfg.FEED_LATENCY + cfg.drain_latency + cfg.requant_latency(raw)
            + fifo + R - rows + rows * cfg.write_beats_per_row(raw))

    if cfg.gemv(m):
        # the drain brings A row 0's total first; the rows past M after the
        # last total never reach the writer
        return _gemv_cycles(cfg, m, k, n, raw, latency,
                            cfg.FEED_LATENCY + cfg.gemv_drain_latency + cfg.requant_latency(raw)
                            + fifo + m * cfg.write_beats_per_row(raw))
    overlap = cfg.interleave(m, k, n)
    x = 1                                   # first A request of block 0
    last_beat = None
    for b in range(ceil_div(m, R)):
        rows = min(R, m - b * R)
        if overlap and b >= 2:
            # this block's A was loaded while the previous block computed
            start = last_beat + pad + 1
        else:
            start = x + rows * AW + startup
            if last_beat is not None:
                start = max(start, last_beat + pad + 1)
        last_beat = start + (NT - 1) * P + k - 1
        x = last_beat + 2
    return MatmulCycles(cycles=last_beat + tail, macs=m * k * n,
                        feed_cycles=ceil_div(m, R) * NT * k)


def _gemv_cycles(cfg, m, k, n, raw, latency, tail):
    NT, PFT = ceil_div(n, cfg.cols), cfg.param_fifo_tiles
    PW, KW = cfg.param_words(raw), cfg.w_words_per_tile(k)
    period = max(PW + KW, cfg.gemv_min_tile_period(raw, m))
    to_beat = PW + latency + FIFO_LATENCY   # first parameter request -> first beat
    # first parameter request -> the tile counts as drained for the run-ahead
    # limit (the cycle after its last row entered the requantiser)
    drained = to_beat + KW - 1 + cfg.FEED_LATENCY + cfg.gemv_drain_latency + cfg.gemv_rows
    s0 = 1 + m * cfg.a_words_per_row(k)
    if drained <= PFT * period:
        last = s0 + (NT - 1) * period   # the run-ahead limit never binds
    else:
        s = [s0]
        for t in range(1, NT):
            s.append(max(s[t - 1] + period, s[t - PFT] + drained if t >= PFT else 0))
        last = s[-1]
    last_beat = last + to_beat + KW - 1
    return MatmulCycles(cycles=last_beat + tail, macs=m * k * n, feed_cycles=NT * KW)
