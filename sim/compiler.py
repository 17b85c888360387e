"""Lower one transformer block of a `QuantGPT2` to a machine program plus a memory image.

`BlockCompiler(cfg, qmodel, layer, max_tokens, mem_words)` fixes the memory
map once (weights and per-column parameters in the matmul layouts, the
layer's K/V caches for the model's n_positions keys, activation buffers for
`max_tokens` rows, the attention scratch); `image()` is the initial memory
and `program(T, pos)` the instruction words for T new tokens at positions
pos .. pos+T-1 (prefill: pos = 0; decode: T = 1 at pos = p). The caches
persist in memory, so a decode program runs on the memory a prefill left.

What runs on the machine today is what its units provide (rtl/isa.py):

    MATMUL   qkv = ln_1_out @ c_attn           (int8 rows, A layout)
    KVSTORE  K, V of the new tokens -> caches  (positions pos ..)
    ATTENTION attn = attention(q, K cache, V cache)   (all heads, one command)
    MATMUL   fc = ln_2_out @ c_fc              (int8)
    HALT

The LayerNorms, GELU, the residual adds and the two projections to the
residual width (c_proj and mlp.c_proj requantise to resid_bits, which the
int8 matmul engine does not produce) are not lowered yet: the host writes
ln_1_out and ln_2_out (`write_rows`). Limits of the configuration (max_k,
max_n, max_m, max_d_head, max_seq, tile, address width, memory size) are
checked here and refused with `CompileError` naming the limit.
"""
from dataclasses import dataclass

import numpy as np

from gpt2accel.rtl.attention_config import AttentionConfig
from gpt2accel.rtl.isa import Op, encode, IsaError
from .matmul_layout import pack_a, pack_params, pack_w, unpack_out

__all__ = ["CompileError", "BlockCompiler", "Region"]


class CompileError(ValueError):
    """The model or program does not fit the machine; the message names the limit."""


def _cdiv(a, b):
    return -(-a // b)


@dataclass(frozen=True)
class Region:
    base: int
    words: int
    stride: int = 0          # words per row, for activation buffers


class BlockCompiler:
    def __init__(self, cfg: AttentionConfig, qmodel, layer, max_tokens, mem_words):
        self.cfg, self.q, self.layer = cfg, qmodel, layer
        e = cfg.engine
        self.e = e
        mc = qmodel.config
        E, H = mc.n_embd, mc.n_head
        D = E // H
        self.E, self.H, self.D = E, H, D
        self.max_tokens, self.mem_words = max_tokens, mem_words
        self.n_pos = mc.n_positions
        blk = qmodel.blocks[layer]
        self.blk = blk

        def need(ok, what):
            if not ok:
                raise CompileError(what)

        need(qmodel.tile == cfg.tile, f"model softmax tile {qmodel.tile} != machine tile {cfg.tile}")
        need(qmodel.frac_bits == cfg.frac_bits,
             f"model frac_bits {qmodel.frac_bits} != machine frac_bits {cfg.frac_bits}")
        need(D <= cfg.max_d_head, f"d_head {D} exceeds max_d_head {cfg.max_d_head}")
        need(D % e.mem_bytes == 0, f"d_head {D} is not a multiple of mem_bytes {e.mem_bytes} "
             "(heads must start on a memory word)")
        need(D % cfg.norm_lanes == 0, f"d_head {D} is not a multiple of norm_lanes {cfg.norm_lanes}")
        need(1 <= max_tokens <= e.max_m, f"max_tokens {max_tokens} exceeds max_m {e.max_m}")
        need(self.n_pos <= cfg.max_seq, f"n_positions {self.n_pos} exceeds max_seq {cfg.max_seq}")
        for name, lin in (("c_attn", blk.attn_qkv), ("c_fc", blk.fc)):
            K, N = lin.w.shape
            need(K <= e.max_k, f"{name}: K = {K} exceeds max_k {e.max_k}")
            need(N <= e.max_n, f"{name}: N = {N} exceeds max_n {e.max_n}")
            need(lin.out_bits == e.out_bits,
                 f"{name}: output width {lin.out_bits} != engine out_bits {e.out_bits}")

        # ---------------- memory map ----------------
        self.regions, self._blobs, top = {}, [], 0

        def alloc(name, words, stride=0, blob=None):
            nonlocal top
            self.regions[name] = Region(top, words, stride)
            if blob is not None:
                self._blobs.append((top, blob))
            top += words
            return self.regions[name]

        off = cfg.scratch_offsets()
        scratch = np.zeros((off["end"], e.mem_bytes), np.uint8)   # zero words must be zero
        alloc("scratch", off["end"], blob=scratch)
        for name, lin in (("c_attn", blk.attn_qkv), ("c_fc", blk.fc)):
            w = pack_w(e, lin.w)
            alloc(f"{name}.w", len(w), blob=w)
            p = pack_params(e, lin.b, lin.mult, lin.shift, lin.w.shape[1])
            alloc(f"{name}.p", len(p), blob=p)
        for name, n, raw in (("ln_1_out", E, False), ("qkv", 3 * E, False),
                             ("attn", E, False), ("ln_2_out", E, False), ("fc", 4 * E, False)):
            stride = e.out_row_words(n, raw)          # = a_words_per_row for int8 rows
            alloc(name, max_tokens * stride, stride)
        self.n_tiles = _cdiv(self.n_pos, cfg.tile)
        self.kts, self.vts = cfg.k_tile_words(D), cfg.v_tile_words(D)
        alloc("k_cache", H * self.n_tiles * self.kts)
        alloc("v_cache", H * self.n_tiles * self.vts)
        self.end = top
        need(top <= mem_words, f"memory map needs {top} words, memory size is {mem_words}")
        need(mem_words <= 1 << e.addr_bits,
             f"memory size {mem_words} words exceeds the address width addr_bits {e.addr_bits}")

    def image(self):
        """Initial memory [mem_words, mem_bytes] uint8: weights, parameters, zero scratch."""
        mem = np.zeros((self.mem_words, self.e.mem_bytes), np.uint8)
        for base, blob in self._blobs:
            mem[base:base + len(blob)] = blob
        return mem

    # ---------------- host-side activation transfer ----------------
    def write_rows(self, mem, name, x):
        r = self.regions[name]
        x = np.asarray(x)
        if len(x) > self.max_tokens:
            raise CompileError(f"{len(x)} rows exceed max_tokens {self.max_tokens}")
        words = pack_a(self.e, x, r.stride)
        mem[r.base:r.base + len(words)] = words

    def read_rows(self, mem, name, t, n):
        r = self.regions[name]
        return unpack_out(self.e, mem, r.base, r.stride, t, n, False)

    # ---------------- instructions ----------------
    def _matmul(self, lin, a, out, t):
        K, N = lin.w.shape
        ra, ro = self.regions[a], self.regions[out]
        return (Op.MATMUL, dict(m=t, k=K, n=N, a_base=ra.base, a_stride=ra.stride,
                                w_base=self.regions[f"{self._lin_name(lin)}.w"].base,
                                p_base=self.regions[f"{self._lin_name(lin)}.p"].base,
                                out_base=ro.base, out_stride=ro.stride, a_signed=1, raw_out=0))

    def _lin_name(self, lin):
        return "c_attn" if lin is self.blk.attn_qkv else "c_fc"

    def ops(self, t, pos):
        """The program as (Op, fields) pairs for t tokens at positions pos .. pos+t-1."""
        if not 1 <= t <= self.max_tokens:
            raise CompileError(f"T = {t} tokens outside 1..max_tokens {self.max_tokens}")
        if pos + t > self.n_pos:
            raise CompileError(f"positions up to {pos + t} exceed n_positions {self.n_pos}")
        E, D, H = self.E, self.D, self.H
        qkv, kc, vc = self.regions["qkv"], self.regions["k_cache"], self.regions["v_cache"]
        att = self.blk.attn
        return [
            self._matmul(self.blk.attn_qkv, "ln_1_out", "qkv", t),
            (Op.KVSTORE, dict(n_tok=t, pos0=pos, n_head=H, d_head=D,
                              src_base=qkv.base, src_stride=qkv.stride,
                              k_base=kc.base, k_tile_stride=self.kts,
                              k_head_stride=self.n_tiles * self.kts,
                              v_base=vc.base, v_tile_stride=self.vts,
                              v_head_stride=self.n_tiles * self.vts)),
            (Op.ATTENTION, dict(n_head=H, d_head=D, tq=t, offset=pos,
                                q_base=qkv.base, q_row_stride=qkv.stride,
                                q_head_stride=D // self.e.mem_bytes,
                                k_base=kc.base, k_tile_stride=self.kts,
                                k_head_stride=self.n_tiles * self.kts,
                                v_base=vc.base, v_tile_stride=self.vts,
                                v_head_stride=self.n_tiles * self.vts,
                                out_base=self.regions["attn"].base,
                                out_stride=self.regions["attn"].stride,
                                scratch_base=self.regions["scratch"].base,
                                score_mult=att.score_mult, score_shift=att.score_shift,
                                out_mult=att.out_mult, out_shift=att.out_shift)),
            self._matmul(self.blk.fc, "ln_2_out", "fc", t),
            (Op.HALT, {}),
        ]

    def program(self, t, pos):
        """Instruction words; an instruction the ISA refuses becomes a `CompileError`."""
        words = []
        for op, fields in self.ops(t, pos):
            try:
                words.append(encode(self.cfg, op, **fields))
            except IsaError as exc:
                raise CompileError(f"instruction {len(words)} ({op.name}): {exc}") from exc
        return words
