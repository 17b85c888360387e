"""Cycle model of the attention engine: exact RTL cycle counts from arithmetic.

`attention_cycles(cfg, n_head, d_head, tq, offset)` predicts the cycles from
an attention command's accept to its `done` pulse for a stall-free run
behind the reference memory (as `matmul_cycles`). The tests check it
against the RTL; the benchmark uses it for GPT-2-sized shapes.

The controller runs its phases one after another (rtl/attention.py), so the
time is a sum. Cycle 0 is the command accept; then per head one setup
cycle, and per row block of `rows` queries and per key tile j holding a key
visible to the block:

- S command: 1 cycle to hand it to the matmul engine, `matmul_cycles(rows_b,
  D, n_keys)` until its done pulse, 1 cycle to notice it;
- softmax phase: the first S word reaches the softmax unit `SM_START` cycles
  after the phase starts, then one beat per cycle for rows_b * beats_per_row
  beats (the read queue keeps up), then the unit's latency and the last
  row's beats until the last P write, `SM_TAIL` more;
- PV command: 1 + `matmul_cycles(rows_b, tile, D)` + 1;
- accumulate phase: one PV word per cycle, rows_b * ceil(D / words) words,
  plus `AC_FIXED` cycles of read latency and the write-back;
- after the block's last tile, the normalise phase: row r's reciprocal is
  ready `NM_FIRST + RECIP_PERIOD * r` cycles after the phase starts (one
  divider, one row at a time), its D / norm_lanes beats follow the previous
  row's, and the last output is written `Normaliser.latency` later;
- 1 cycle to pick the next block / head, and the done pulse 1 cycle later.
"""
from dataclasses import dataclass
from functools import lru_cache

from gpt2accel.rtl.attention_config import AttentionConfig
from gpt2accel.rtl.normalise import Normaliser, Reciprocal
from gpt2accel.rtl.softmax import SoftmaxUnit
from .matmul_cycles import REF_MEM_LATENCY, matmul_cycles

__all__ = ["attention_cycles", "AttentionCycles", "score_buffer_bytes"]

#: memory read -> response (latency) -> read-queue FIFO (2 cycles): first word usable
_READ_START = REF_MEM_LATENCY + 2
#: a reciprocal is taken, computed (Reciprocal.latency) and leaves the divider every ...
RECIP_PERIOD = Reciprocal.latency + 1


def _cdiv(a, b):
    return -(-a // b)


@dataclass(frozen=True)
class AttentionCycles:
    cycles: int
    #: multiply-accumulates the result needs: 2 * D per visible (query, key) pair
    useful_macs: int
    #: multiply-accumulates of the matmul commands issued (whole tiles, padding included)
    issued_macs: int
    matmul_cycles: int   # cycles inside matmul commands
    softmax_cycles: int
    accumulate_cycles: int
    normalise_cycles: int

    def utilization(self, cfg: AttentionConfig):
        e = cfg.engine
        return self.useful_macs / (e.rows * e.cols * self.cycles)


@lru_cache(maxsize=None)
def _matmul(e, m, k, n):
    return matmul_cycles(e, m, k, n, True).cycles


def _normalise_cycles(cfg, rows_b, d):
    nb = d // cfg.norm_lanes
    first = 1 + Reciprocal.latency + 2      # L read, divider, reciprocal queue
    end = -1
    for r in range(rows_b):
        start = max(first + RECIP_PERIOD * r, end + 1)
        end = start + nb - 1
    # last beat -> Normaliser.latency -> write accepted -> phase done seen
    return end + Normaliser.latency + 2


def attention_cycles(cfg: AttentionConfig, n_head, d_head, tq, offset, latency=REF_MEM_LATENCY):
    e = cfg.engine
    if latency != REF_MEM_LATENCY:
        raise ValueError("the model is calibrated for the reference memory latency")
    if e.max_outstanding < latency + 4:
        raise ValueError("the model assumes the read queue never starves "
                         "(max_outstanding >= memory latency + 4)")
    if not (1 <= tq and offset + tq <= cfg.max_seq and 1 <= d_head <= cfg.max_d_head
            and d_head % cfg.norm_lanes == 0):
        raise ValueError(f"tq={tq}, offset={offset}, d_head={d_head} outside the configuration")
    R, T, BPR = e.rows, cfg.tile, cfg.beats_per_row
    tk = offset + tq
    wpv = _cdiv(d_head, cfg.scores_per_word)
    sm_fixed = _READ_START + SoftmaxUnit.latency + BPR
    ac_fixed = _READ_START + 2
    # every head takes the same time: compute one and scale
    t = 0
    mm = sm = ac = nm = 0
    useful = issued = 0
    for m0 in range(0, tq, R):
        rows_b = min(R, tq - m0)
        last_q = offset + m0 + rows_b - 1
        for k0 in range(0, last_q + 1, T):
            n_keys = min(T, tk - k0)
            c_s = _matmul(e, rows_b, d_head, n_keys)
            c_pv = _matmul(e, rows_b, T, d_head)
            c_sm = rows_b * BPR + sm_fixed
            c_ac = rows_b * wpv + ac_fixed
            t += c_s + 1 + c_sm + c_pv + 1 + c_ac
            mm += c_s + c_pv
            sm += c_sm
            ac += c_ac
            issued += rows_b * d_head * (n_keys + T)
        c_nm = _normalise_cycles(cfg, rows_b, d_head)
        t += c_nm + 1                           # normalise, NEXT
        nm += c_nm
        useful += 2 * d_head * sum(offset + i + 1 for i in range(m0, m0 + rows_b))
    H = n_head
    # accept -> first HEAD, then per head its HEAD cycle and its blocks
    return AttentionCycles(cycles=1 + H * (1 + t), useful_macs=H * useful,
                           issued_macs=H * issued, matmul_cycles=H * mm,
                           softmax_cycles=H * sm, accumulate_cycles=H * ac,
                           normalise_cycles=H * nm)


def score_buffer_bytes(cfg: AttentionConfig, tk, online=True):
    """Bytes that hold scores or probabilities at one time.

    Online (this engine): one tile of S (int32) and P (uint8) rows for a row
    block in the scratch, plus the softmax unit's row store (two tile rows of
    24-bit t and a visibility bit). Without online softmax the same row-block
    schedule must keep S and P of all `tk` keys of the block's rows until the
    row max is known: rows * tk * (4 + 1) bytes.
    """
    e = cfg.engine
    if not online:
        return e.rows * tk * 5
    mb = e.mem_bytes
    row_store = _cdiv(2 * cfg.beats_per_row * cfg.lanes * 25, 8)
    return e.rows * (cfg.s_stride + cfg.p_stride) * mb + row_store
