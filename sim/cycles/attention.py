"""Cycle model of the attention engine: exact RTL cycle counts from arithmetic.

`attention_cycles(cfg, n_head, d_head, tq, offset)` predicts the cycles from
an attention command's accept to its `done` pulse for a stall-free run
behind the reference memory (as `matmul_cycles`). The tests check it
against the RTL; the benchmark uses it for GPT-2-sized shapes.

Cycle 0 is the command accept; then one setup cycle (HEAD) per head. Heads differ
only in their S commands' k (a head starting at byte b of its Q word reads
b + d_head bytes of each Q row). Per row block
of `rows` queries the command sequencer issues the matmul commands S_0, S_1,
PV_0, S_2, PV_1, ... (one DECIDE cycle, then the command, accepted at once,
`matmul_cycles` until its done pulse; a diagonal tile's commands cover
only the rows below `_skipped_rows` and S only the keys up to the block's
last query). The softmax of tile j starts the
cycle after S_j is done (or after the previous softmax), reads its first S
word 2 cycles later, streams rows_b * ceil(tile/lanes) beats, and finishes
`SoftmaxUnit.latency` + ceil(tile/lanes) cycles after its last beat; PV_j is
accepted no earlier than 2 cycles after that. The accumulation happens
inside the PV commands (their writes). After the block's last PV the
normalise phase runs: row r's reciprocal is ready 13 + 11 r cycles in (one
divider, `RECIP_PERIOD`), its D / norm_lanes beats follow the previous
row's, and the last output is written `Normaliser.latency` later. The next
block of the same head starts two cycles after the phase starts, the next
head's first block three (its HEAD cycle in between): their S commands
overlap the phase, their first softmax waits for it to end. (The sequencer
splits D into output words and bytes in D // mem_bytes cycles after the
accept, long before a head ends.) The done pulse comes the cycle after the
last head's last phase ends.

One query whose keys fit one tile (`tq == 1`, `offset < tile`, block_rows > 1):
the sequencer's chain mode, the heads' S and PV commands as one stream
(S_{h+1} during head h's softmax, PV_{h+1} during its normalise phase, a
softmax during a phase holding its P rows until the phase ends; with
`head_group` one S command a group of heads), whose hand-offs `_chain` steps
cycle by cycle on the same command, softmax and normalise lengths.
"""
from dataclasses import dataclass
from functools import lru_cache

from gpt2accel.rtl.attention_config import AttentionConfig
from gpt2accel.rtl.config import ceil_div
from gpt2accel.rtl.normalise import Normaliser, Reciprocal
from gpt2accel.rtl.softmax import SoftmaxUnit
from gpt2accel.sim.cycles.matmul import REF_MEM_LATENCY, matmul_cycles

__all__ = ["attention_cycles", "AttentionCycles", "score_buffer_bytes"]

#: softmax of a tile: start -> first S word read (2) -> last P write -> done seen
SM_FIXED = 2 + SoftmaxUnit.latency - 1
#: a reciprocal is taken, computed (Reciprocal.latency) and leaves the divider every ...
RECIP_PERIOD = Reciprocal.latency + 1



@dataclass(frozen=True)
class AttentionCycles:
    cycles: int
    #: multiply-accumulates the result needs: 2 * D per visible (query, key) pair
    useful_macs: int
    #: multiply-accumulates of the matmul commands issued (whole tiles, padding included)
    issued_macs: int
    matmul_cycles: int      # cycles inside matmul commands
    softmax_cycles: int     # cycles the softmax unit is busy (mostly hidden under matmuls)
    normalise_cycles: int

    def utilisation(self, cfg: AttentionConfig):
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


def _skipped_rows(cfg, k0, first):
    """Rows at the top of a block (queries first, first+1, ..) that a key tile
    starting at k0 skips: whole array row blocks whose queries all precede k0."""
    ar = cfg.engine.rows
    return min(max(0, k0 - first) // ar, cfg.rows // ar - 1) * ar


def _block(cfg, rows_b, d_head, k0s, tk, sm_gate, first=0, s_k=None, chunk=1):
    """One row block, times relative to its first DECIDE cycle.

    `sm_gate`: first cycle a softmax may start (the previous block's
    normalise phase is over). Returns (the DECIDE cycle that starts this
    block's normalise phase, matmul cycles, softmax cycles). `s_k`: the S
    commands' k (the head's byte offset in its Q word + d_head); `chunk`: key
    tiles per S command (`AttentionConfig.s_chunk` when batched, else 1).
    """
    e, T, BPR = cfg.engine, cfg.tile, cfg.beats_per_row
    s_k = d_head if s_k is None else s_k
    J = len(k0s)
    t = 0                       # the sequencer's DECIDE cycle
    s_done = [None] * J         # the done pulse of the S command of tile j
    pv_done = [None] * J
    sm_end = [None] * J         # cycle the softmax of tile j finishes (sm_fin)
    issued = pv = n_sm = 0      # S tiles issued, PV commands issued, softmaxes timed
    mm = sm = 0
    while pv < J:
        if issued < J and issued - pv <= chunk:
            # S of the next `chunk` tiles: up to two S commands ahead of PV
            k0 = k0s[issued]
            c = _matmul(e, rows_b - _skipped_rows(cfg, k0, first), s_k,
                        min(chunk * T, first + rows_b - k0))
            done = t + 1 + c
            n_t = min(chunk, J - issued)
            # batched, a tile of all its column tiles counts once its last write
            # is in (the cycle a command ending there would finish); a shorter
            # last one at the done pulse
            n = min(chunk * T, first + rows_b - k0)
            keys = [min(T, n - i * T) for i in range(n_t)]
            s_done[issued:issued + n_t] = [
                t + _matmul(e, 1, s_k, i * T + keys[i])
                if chunk > 1 and ceil_div(keys[i], e.cols) == T // e.cols else done
                for i in range(n_t)]
            issued += n_t
            t = done + 1
        else:
            # softmaxes in tile order, each after its S, the previous softmax
            # (or the gate) and PV_{j-2}, whose P and row info halves it reuses
            while n_sm <= pv:
                j = n_sm
                start = max(s_done[j] + 1, sm_end[j - 1] + 1 if j else sm_gate)
                if j >= 2:
                    start = max(start, pv_done[j - 2] + 1)
                sm_end[j] = start + rows_b * BPR + BPR + SM_FIXED
                sm += sm_end[j] - start
                n_sm += 1
            c = _matmul(e, rows_b - _skipped_rows(cfg, k0s[pv], first), T, d_head)
            accept = max(t + 1, sm_end[pv] + 2)
            pv_done[pv] = accept + c
            t = accept + c + 1
            pv += 1
        mm += c
    return t, mm, sm


def attention_cycles(cfg: AttentionConfig, n_head, d_head, tq, offset, latency=REF_MEM_LATENCY,
                     q_head_bytes=0, k_tile_stride=None, k_rows=0, head_group=1):
    """`q_head_bytes`: the command's field; a head starting at byte b of its Q word
    has S commands of k = b + d_head (`AttentionConfig.head_bytes`), or k = `k_rows`
    where that field is nonzero. `head_group`: the command's field (heads per S
    command in chain mode).
    `k_tile_stride`: the command's field (None: the cache layout's,
    `AttentionConfig.k_tile_words` of the heads' K rows); a head whose Kᵀ tiles
    fill it exactly has its one-query blocks' S commands batched."""
    if latency != REF_MEM_LATENCY:
        raise ValueError("the model is calibrated for the reference memory latency")
    if not (1 <= tq and offset + tq <= cfg.max_seq and 1 <= d_head <= cfg.max_d_head
            and d_head % cfg.norm_lanes == 0):
        raise ValueError(f"tq={tq}, offset={offset}, d_head={d_head} outside the configuration")
    bs = cfg.head_bytes(n_head, q_head_bytes)
    if k_tile_stride is None:
        k_tile_stride = cfg.k_tile_words(k_rows or max(bs) + d_head)
    s_ks = [k_rows or b + d_head for b in bs]
    e = cfg.engine
    if tq == 1 and offset < cfg.tile and cfg.rows > 1:
        tk = offset + 1
        g = head_group if head_group > 1 and cfg.s_chunk > 1 else 1
        cycles, mm, sm, nm = _chain(cfg, tuple(s_ks), d_head, tk, g)
        # a group's S command computes the whole tiles of all but its last head
        s_macs = sum(s_ks[h] * ((g - 1) * cfg.tile + tk) for h in range(0, len(bs), g))
        return AttentionCycles(cycles, 2 * d_head * tk * len(bs),
                               s_macs + len(bs) * cfg.tile * d_head, mm, sm, nm)
    # accept, HEAD, then the first head's first DECIDE
    t, sm_gate = 2, 0
    stats = [0] * 5
    for s_k in s_ks:
        contig = (cfg.s_chunk > 1
                  and k_tile_stride == cfg.tile // e.cols * e.w_words_per_tile(s_k))
        h = _head(cfg, d_head, tq, offset, s_k, sm_gate - t, contig)
        # its last normalise phase starts at `end`; the next head's HEAD
        # follows NEXT, its softmax waits for the phase to end
        end, c_nm = t + h[0], h[1]
        sm_gate, t = end + c_nm + 1, end + 3
        stats = [a + v for a, v in zip(stats, h[2:])]
    # the last outputs written -> the done pulse
    return AttentionCycles(sm_gate, *stats)


@lru_cache(maxsize=None)
def _head(cfg, d_head, tq, offset, s_k, sm_gate, contig=False):
    """(the DECIDE cycle that starts the last block's normalise phase, that phase's
    cycles, useful MACs, issued MACs, matmul, softmax and normalise cycles) of one
    head, relative to its first DECIDE; its first softmax starts no earlier than
    `sm_gate` (the previous head's normalise phase is over). `contig`: its Kᵀ
    tiles lie back to back (one-query blocks batch their S commands)."""
    R, T = cfg.rows, cfg.tile
    tk = offset + tq
    t = 0                       # the block's first DECIDE, relative to the head's
    mm = sm = nm = useful = issued = 0
    for m0 in range(0, tq, R):
        rows_b = min(R, tq - m0)
        last_q = offset + m0 + rows_b - 1
        k0s = list(range(0, last_q + 1, T))
        chunk = cfg.s_chunk if contig and rows_b == 1 else 1
        end, c_mm, c_sm = _block(cfg, rows_b, d_head, k0s, tk, sm_gate - t, offset + m0, s_k,
                                 chunk)
        end += t
        c_nm = _normalise_cycles(cfg, rows_b, d_head)
        # the normalise phase starts at `end` and is done at end + c_nm; the
        # next block's commands start meanwhile (NEXT, then DECIDE), but its
        # softmax waits until the phase is over
        sm_gate = end + c_nm + 1
        t = end + 2
        mm += c_mm
        sm += c_sm
        nm += c_nm
        issued += sum((rows_b - _skipped_rows(cfg, k0, offset + m0))
                      * (s_k * min(T, last_q + 1 - k0) + T * d_head) for k0 in k0s)
        useful += 2 * d_head * sum(offset + i + 1 for i in range(m0, m0 + rows_b))
    return end, c_nm, useful, issued, mm, sm, nm


@lru_cache(maxsize=None)
def _chain(cfg, s_ks, d_head, tk, g=1):
    """One query whose keys fit one tile (`chain`): the heads' S and PV commands
    as one stream. Stepped cycle by cycle as the sequencer runs (a few hundred
    cycles a head); registered state changes at the end of each cycle. `s_ks`:
    each head's S command k; `g`: heads per S command (`head_group`), head i of
    a group's command counting as softmax-ready once its write beats are in
    (when its keys fill whole column tiles, else at the done pulse)."""
    e, T, BPR, H = cfg.engine, cfg.tile, cfg.beats_per_row, len(s_ks)
    n_s = (g - 1) * T + tk          # the S command's columns
    s_c = {h: _matmul(e, 1, s_ks[h], n_s) for h in range(0, H, g)}
    # per S command, the cycles after its accept at which its heads' scores are in
    # (the last cycle of their writes; the done pulse's cycle for a short last head)
    arrive = {h: [_matmul(e, 1, s_ks[h], i * T + keys) - 1
                  if g > 1 and ceil_div(keys, e.cols) == T // e.cols else s_c[h]
                  for i, keys in enumerate([T] * (g - 1) + [tk])] for h in s_c}
    pv_c = _matmul(e, 1, T, d_head)
    sm_len = 2 * BPR + SM_FIXED                 # softmax start -> its fin
    nm_len = _normalise_cycles(cfg, 1, d_head)  # phase start -> its last write seen
    state, t = "HEAD", 1
    sh = ph = 0                 # heads of the S side and of the PV side
    sh_end = g - 1              # the last head of the S side's command
    s_iss = pv_iss = False      # the side's head has its command issued
    arrivals = {}               # cycle -> S tiles whose scores are in at its end
    ahead = s_full = sm_ready = sm_lead = sm_busy = 0
    sm_on = nm_on = nm_pend = False
    sm_fin = nm_end = eng = None
    while True:
        mm_done = eng is not None and t == eng[1]
        fin = sm_on and t == sm_fin
        nm_done = nm_on and t == nm_end
        first = state == "HEAD" and sh == 0
        # a softmax may start during a normalise phase; its first P beat then waits
        # for the phase's end (the write channel)
        sm_start = not sm_on and s_full and not first and not nm_pend and sm_lead < 2
        nm_start = nm_pend and not nm_on and not sm_on
        s_issue = pv_issue = False
        nxt = state
        if state == "HEAD":
            s_iss = s_iss and first
            nxt = "DECIDE"
        elif state == "DECIDE":
            if not s_iss and ahead <= g:
                nxt = "S"
            elif ahead <= g and sh_end + 1 < H:
                nxt = "NEXT"
            elif not pv_iss:
                nxt = "PV" if sm_ready else state
            elif ph + 1 == H:
                nxt = "NORM"
        elif state in ("S", "PV"):
            s_issue, pv_issue = state == "S", state == "PV"
            eng = (state, t + (s_c[sh] if s_issue else pv_c))
            if s_issue:
                for a in arrive[sh]:
                    arrivals[t + a] = arrivals.get(t + a, 0) + 1
            nxt = "WAIT"
        elif state == "WAIT":
            nxt = "DECIDE" if mm_done else state
        elif state == "NEXT":
            # a head a cycle through the group just served
            if sh == sh_end:
                sh_end += g
                nxt = "HEAD"
            sh += 1
        elif nm_done and not nm_pend:                       # NORM
            return t + 1, sum(s_c.values()) + H * pv_c, sm_busy, H * nm_len
        kind = eng[0] if mm_done else None
        ahead += g * s_issue - pv_issue
        s_iss |= s_issue
        pv_iss |= pv_issue
        if nm_start and ph + 1 < H:
            pv_iss, ph = False, ph + 1
        s_full += arrivals.pop(t, 0) - sm_start
        sm_ready += fin - pv_issue
        sm_lead += sm_start - (kind == "PV")
        if fin:
            sm_on = False
        if sm_start:
            free = nm_end + 1 if nm_on else t
            sm_on, sm_fin = True, t + sm_len + max(0, free - (t + sm_len - BPR))
            sm_busy += sm_fin - t
        nm_pend = (nm_pend or kind == "PV") and not nm_start
        if nm_start:
            nm_on, nm_end = True, t + nm_len
        if nm_done:
            nm_on = False
        if mm_done:
            eng = None
        state, t = nxt, t + 1


def score_buffer_bytes(cfg: AttentionConfig, tk, online=True, rows=None):
    """Bytes holding scores or probabilities at one time for blocks of `rows`
    queries (default `cfg.rows`, the block size the buffers are sized for).

    Online (this engine): two S tiles (int32, on chip) and two P tiles
    (uint8, scratch) of the block's rows, plus the softmax unit's row store
    (two tile rows of 24-bit t and a visibility bit), whatever `tk` is.
    Without online softmax the same block schedule must keep S and P of all
    `tk` keys of the block's rows until the row max is known: rows * tk * 5.
    """
    e = cfg.engine
    rows = cfg.rows if rows is None else rows
    if not online:
        return rows * tk * 5
    row_store = ceil_div(2 * cfg.beats_per_row * cfg.lanes * 25, 8)
    return 2 * rows * (cfg.s_stride + cfg.p_stride) * e.mem_bytes + row_store
