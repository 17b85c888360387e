"""Memory layout of an attention command (the driver's side of the contract).

docs/architecture.md ("Attention engine: memory layout") states the rules:

- Q of head h: [Tq, D] int8 rows in the matmul A layout, or with `packed`
  the heads side by side in [Tq, H*D] rows as c_attn writes them (head h at
  byte h*D: `AttentionConfig.packed_heads`);
- K cache of head h: per key tile j (keys j*tile ..), Kᵀ [b_h + D, tile] in
  the matmul W layout, its first b_h rows zero (b_h: the byte of its first Q
  word where head h starts, 0 unless packed), `k_tile_words` words per tile;
- V cache of head h: per key tile, V [tile, D] in the W layout,
  `v_tile_words(D)` words per tile (a partial last tile is padded: its
  probabilities are 0, so the padding may hold anything);
- output: [Tq, H*D] int8, row-major, head h at bytes h*D..;
- scratch: `AttentionConfig.scratch_offsets()`, first `zero_words` words zero;
  the S and PV ranges are addresses only (their writes stay on chip).
"""
import numpy as np

from gpt2accel.rtl.attention_config import AttentionConfig
from gpt2accel.rtl.config import ceil_div
from gpt2accel.sim.host.matmul_layout import pack_a, pack_w

__all__ = ["AttentionLayout"]



class AttentionLayout:
    """One attention command's operands placed in a word memory, plus the command.

    q [H, Tq, D], k / v [H, Tk, D] int8 with Tk = offset + Tq (the cache
    including this call's keys). `rng` fills padding and scratch with noise
    the engine must ignore; `pad` adds spare words to every stride. `packed`:
    Q rows hold all heads, each starting wherever the previous one ends.
    `head_group` (with `packed`): every Kᵀ tile at the full height (the command's
    ``k_rows``: zero rows outside the head's) and that many heads per S command
    of a one-query command whose keys fit one tile (the heads' tiles must lie back
    to back: one key tile, and the group's heads in one Q word).
    """

    def __init__(self, cfg: AttentionConfig, q, k, v, offset, score_mult, score_shift,
                 out_mult, out_shift, *, base=0, pad=0, rng=None, packed=False,
                 head_group=1):
        e = cfg.engine
        q, k, v = (np.asarray(x, np.int64) for x in (q, k, v))
        H, tq, d = q.shape
        tk = k.shape[1]
        if tk != offset + tq or v.shape != k.shape or k.shape[2] != d:
            raise ValueError(f"shapes do not agree: q {q.shape}, k {k.shape}, v {v.shape}, "
                             f"offset {offset}")
        if d > cfg.max_d_head or d % cfg.norm_lanes or tk > cfg.max_seq:
            raise ValueError(f"D={d} / Tk={tk} outside the configuration")
        rng = rng or np.random.default_rng(0)
        self.cfg, self.h, self.tq, self.d = cfg, H, tq, d
        self.blobs = []
        T = cfg.tile
        nt = ceil_div(tk, T)
        addr = base

        def put(blob):
            nonlocal addr
            start = addr
            self.blobs.append((start, blob))
            addr += len(blob)
            return start

        self.scratch_base = put(self._scratch(rng))
        self._scratch_init = self.blobs[-1][1].copy()
        self.q_base = addr
        if packed:
            q_row = e.a_words_per_row(H * d) + pad
            q_head, q_bytes, k_rows = cfg.packed_heads(H, d)
            # the rows' bytes past the heads: noise the S commands must not see
            rows = rng.integers(-128, 128, (tq, q_row * e.mem_bytes))
            rows[:, :H * d] = q.transpose(1, 0, 2).reshape(tq, H * d)
            put(pack_a(e, rows, q_row))
        else:
            q_row = e.a_words_per_row(d) + pad
            q_head, q_bytes, k_rows = tq * q_row + pad, 0, d
            for h in range(H):
                blob = np.zeros((q_head, e.mem_bytes), np.uint8)
                blob[:tq * q_row] = pack_a(e, q[h], q_row)
                put(blob)
        kb = cfg.head_bytes(H, q_bytes)
        # full height: every head's tile one W operand of k_rows rows
        full = head_group > 1
        if full and not packed:
            raise ValueError("head_group needs the heads packed in the Q rows")
        kts, vts = cfg.k_tile_words(k_rows) + pad, cfg.v_tile_words(d) + pad
        self.k_base = addr
        for h in range(H):
            for j in range(nt):
                kt = np.zeros((T, k_rows if full else kb[h] + d), np.int64)
                kt[:, kb[h]:kb[h] + d] = rng.integers(-128, 128, (T, d))     # absent keys: noise
                n = min(T, tk - j * T)
                kt[:n, kb[h]:kb[h] + d] = k[h, j * T:j * T + n]
                blob = rng.integers(0, 256, (kts, e.mem_bytes)).astype(np.uint8)
                packed_kt = pack_w(e, kt.T)
                blob[:len(packed_kt)] = packed_kt
                put(blob)
        self.v_base = addr
        for h in range(H):
            for j in range(nt):
                vt = rng.integers(-128, 128, (T, d))
                n = min(T, tk - j * T)
                vt[:n] = v[h, j * T:j * T + n]
                blob = np.zeros((vts, e.mem_bytes), np.uint8)
                blob[:vts - pad] = pack_w(e, vt)
                put(blob)
        self.out_stride = ceil_div(H * d, e.mem_bytes) + pad
        self.out_base = addr
        self.fill = int(rng.integers(0, 256))
        put(np.full((tq * self.out_stride, e.mem_bytes), self.fill, np.uint8))
        self.end = addr
        self.command = dict(
            n_head=H, d_head=d, tq=tq, offset=offset,
            q_base=self.q_base, q_row_stride=q_row, q_head_stride=q_head,
            q_head_bytes=q_bytes, k_rows=k_rows if full else 0, head_group=head_group,
            k_base=self.k_base, k_tile_stride=kts, k_head_stride=nt * kts,
            v_base=self.v_base, v_tile_stride=vts, v_head_stride=nt * vts,
            out_base=self.out_base, out_stride=self.out_stride,
            scratch_base=self.scratch_base,
            score_mult=int(score_mult), score_shift=int(score_shift),
            out_mult=int(out_mult), out_shift=int(out_shift))

    def _scratch(self, rng):
        off = self.cfg.scratch_offsets()
        blob = rng.integers(0, 256, (off["end"], self.cfg.engine.mem_bytes)).astype(np.uint8)
        blob[:off["zero"] + self.cfg.zero_words] = 0
        return blob

    def place(self, mem):
        for addr, blob in self.blobs:
            mem[addr:addr + len(blob)] = blob

    def virtual_untouched(self, mem):
        """True if memory of the S and PV ranges (taken on chip) was never written."""
        off = self.cfg.scratch_offsets()
        lo, hi = self.scratch_base + off["s"], self.scratch_base + off["end"]
        return bool((mem[lo:hi] == self._scratch_init[off["s"]:off["end"]]).all())

    def result(self, mem):
        """The [Tq, H*D] int8 output, and whether bytes outside it were left alone."""
        rows = mem[self.out_base:self.out_base + self.tq * self.out_stride]
        rows = rows.reshape(self.tq, -1)
        n = self.h * self.d
        untouched = bool((rows[:, n:] == self.fill).all())
        return rows[:, :n].view(np.int8).astype(np.int64), untouched
