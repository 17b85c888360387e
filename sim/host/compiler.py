"""Lower a `QuantGPT2` (one block, or the whole model) to a machine program + memory image.

`ModelCompiler(cfg, qmodel, max_tokens, mem_words)`: EMBED (token ids written
by the host with `write_ids`), every block, LAYERNORM ln_f, MATMUL against
wteᵀ (raw) and REQUANT to the int16 logits (region "logits").

`BlockCompiler(cfg, qmodel, layer, max_tokens, mem_words)` fixes the memory
map once (weights and per-column parameters in the matmul layouts, the
layer's K/V caches for the model's n_positions keys, activation buffers for
`max_tokens` rows, the attention scratch); `image()` is the initial memory
and `program(T, pos)` the instruction words for T new tokens at positions
pos .. pos+T-1 (prefill: pos = 0; decode: T = 1 at pos = p). The caches
persist in memory, so a decode program runs on the memory a prefill left.

The program for one block (all rows row-major; residual rows int16):

    LAYERNORM ln_1_out = ln_1(x)
    MATMUL    qkv = ln_1_out @ c_attn                (int8, requantised by the engine)
    KVSTORE   K, V of the new tokens -> caches       (positions pos ..)
    ATTENTION attn = attention(q, K cache, V cache)  (all heads, one command)
    MATMUL    proj_raw = attn @ attn.c_proj + b      (raw int32)
    RESADD    x = sat(x + requant(proj_raw))         (to resid_bits, in place)
    LAYERNORM ln_2_out = ln_2(x)
    MATMUL    fc = ln_2_out @ c_fc
    GELU      gelu = table[fc]                       (table loaded by the instruction)
    MATMUL    proj_raw = gelu @ mlp.c_proj + b       (raw int32)
    RESADD    x = sat(x + requant(proj_raw))
    HALT

The projections to the residual width run raw because the engine's
requantiser produces int8 only; RESADD applies their per-column (mult,
shift). For one block the host writes its input x (`write_rows`); the whole
model's program starts with EMBED and ends with ln_f and the LM head instead.
Beside each instruction the compiler keeps its `Provenance` (`annotated_ops`):
the operation and layer it lowers, and where its result can be compared with
the golden model's intermediate (the driver's check localises a mismatch by
it). Limits of the configuration (max_k,
max_n, max_m, max_d_head, max_seq, tile, address width, memory size) are
checked here and refused with `CompileError` naming the limit.
"""
from dataclasses import dataclass

import numpy as np

from gpt2accel.rtl.attention_config import AttentionConfig
from gpt2accel.rtl.config import ceil_div
from gpt2accel.rtl.isa import (ACT_BYTES, BETA_BYTES, GAMMA_BYTES, Q_BYTES, RAW_BYTES,
                               RESID_BYTES, IsaError, Op, cfg_max_vector_n, encode)
from gpt2accel.sim.host.matmul_layout import pack_params, pack_w

__all__ = ["CompileError", "BlockCompiler", "ModelCompiler", "Provenance", "Region"]


class CompileError(ValueError):
    """The model or program does not fit the machine; the message names the limit."""



def _row_words(e, n, size):
    """Words of one row of `n` `size`-byte integers (`_rows`' default stride)."""
    return ceil_div(n * size, e.mem_bytes)


def _rows(e, x, size, stride=None):
    """Rows of little-endian `size`-byte integers, each row padded to `stride` words."""
    x = np.asarray(x, np.int64)
    t, n = x.shape
    stride = stride or _row_words(e, n, size)
    buf = np.zeros((t, stride * e.mem_bytes), np.uint8)
    buf[:, :n * size] = x.astype(f"<i{size}" if size > 1 else "<i1").view(np.uint8).reshape(t, -1)
    return buf.reshape(t * stride, e.mem_bytes)


def _qwords(e, mult, shift):
    """One uint32 (mult | shift << 16) per column / table row, packed as a row."""
    q = np.asarray(mult, np.int64) | np.asarray(shift, np.int64) << 16
    return _rows(e, q[None], Q_BYTES)


@dataclass(frozen=True)
class Provenance:
    """Where an instruction of a program comes from, beside the program (the words do
    not carry it): `op`, the golden model's observe name of the operation it is part
    of (`QuantGPT2.forward`: "embed", "ln_1", "qkv", "attn", "attn_proj", ... "logits";
    None for HALT) in `layer` (None outside the blocks); `check`, on the instruction
    after which that intermediate is complete in memory, the (region, row length) it
    occupies there, else None (the raw int32 projections, whose observed value is the
    requantised one RESADD / REQUANT computes; KVSTORE, seen through ATTENTION; all
    but the last column chunk of a split vector op)."""
    op: "str | None"
    layer: "int | None" = None
    check: "tuple[str, int] | None" = None


@dataclass(frozen=True)
class Region:
    base: int
    words: int
    stride: int = 0          # words per row, for activation buffers


class _Compiler:
    """Memory map and programs for `layers` of `qmodel`, with the embedding add,
    ln_f and the LM head when `head` (see `BlockCompiler`, `ModelCompiler`)."""

    def __init__(self, cfg: AttentionConfig, qmodel, layers, head, max_tokens, mem_words):
        self.cfg, self.q, self.layers, self.head = cfg, qmodel, list(layers), head
        e = cfg.engine
        self.e = e
        mc = qmodel.config
        E, H = mc.n_embd, mc.n_head
        D = E // H
        self.E, self.H, self.D, self.V = E, H, D, mc.vocab_size
        self.max_tokens, self.mem_words = max_tokens, mem_words
        self.n_pos = mc.n_positions

        def need(ok, what):
            if not ok:
                raise CompileError(what)

        need(qmodel.tile == cfg.tile, f"model softmax tile {qmodel.tile} != machine tile {cfg.tile}")
        need(qmodel.frac_bits == cfg.frac_bits,
             f"model frac_bits {qmodel.frac_bits} != machine frac_bits {cfg.frac_bits}")
        need(D <= cfg.max_d_head, f"d_head {D} exceeds max_d_head {cfg.max_d_head}")
        need(D % cfg.norm_lanes == 0, f"d_head {D} is not a multiple of norm_lanes {cfg.norm_lanes}")
        need(1 <= max_tokens <= e.max_m, f"max_tokens {max_tokens} exceeds max_m {e.max_m}")
        need(self.n_pos <= cfg.max_seq, f"n_positions {self.n_pos} exceeds max_seq {cfg.max_seq}")
        self.rb = qmodel.resid_bits
        need(self.rb <= 8 * RESID_BYTES, f"resid_bits {self.rb} exceeds the int16 residual rows")
        self.lins = {}
        for i in self.layers:
            blk = qmodel.blocks[i]
            self.lins.update({f"h{i}.c_attn": blk.attn_qkv, f"h{i}.attn.c_proj": blk.attn_proj,
                              f"h{i}.c_fc": blk.fc, f"h{i}.mlp.c_proj": blk.fc_proj})
        if head:
            # REQUANT saturates to the residual width: the logits must have it
            need(qmodel.logit_bits == self.rb,
                 f"logit_bits {qmodel.logit_bits} != resid_bits {self.rb} (REQUANT's output)")
            from gpt2accel.model.quant import QLinear
            self.lins["lm_head"] = QLinear(np.asarray(qmodel.wte).T, np.zeros(self.V, np.int64),
                                           np.asarray(qmodel.lm_mult), np.asarray(qmodel.lm_shift),
                                           qmodel.logit_bits)
        for name, lin in self.lins.items():
            K, N = lin.w.shape
            need(K <= e.max_k, f"{name}: K = {K} exceeds max_k {e.max_k}")
            need(N <= e.max_n, f"{name}: N = {N} exceeds max_n {e.max_n}")
            # int8 outputs come from the engine's requantiser; residual-width outputs
            # are taken raw and requantised by RESADD / REQUANT
            need(lin.out_bits in (e.out_bits, self.rb),
                 f"{name}: output width {lin.out_bits} is neither engine out_bits "
                 f"{e.out_bits} nor resid_bits {self.rb}")
        # LayerNorm needs a whole row in its unit; the element-wise vector
        # ops are split into column chunks instead (`_split_vector`)
        need(E <= cfg_max_vector_n(cfg),
             f"n_embd {E} exceeds the LayerNorm row limit max_vector_n {cfg_max_vector_n(cfg)}")
        self.chunk = cfg_max_vector_n(cfg) // e.mem_bytes * e.mem_bytes
        need(self.chunk >= 1, f"the vector row limit {cfg_max_vector_n(cfg)} is below one "
             f"memory word of {e.mem_bytes} bytes")

        # ---------------- memory map ----------------
        # Blobs are packed only by image(): the map alone (sizes from the layout
        # rules of EngineConfig) is cheap even for GPT-2 small, so a machine can be
        # sized from it before anything is built.
        self.regions, self._blobs, top = {}, [], 0

        def alloc(name, words, stride=0, blob=None):
            nonlocal top
            self.regions[name] = Region(top, words, stride)
            if blob is not None:
                self._blobs.append((name, blob))
            top += words
            return self.regions[name]

        off = cfg.scratch_offsets()
        # zero words must be zero
        alloc("scratch", off["end"], blob=lambda: np.zeros((off["end"], e.mem_bytes), np.uint8))
        for name, lin in self.lins.items():
            K, N = lin.w.shape
            alloc(f"{name}.w", ceil_div(N, e.cols) * e.w_words_per_tile(K),
                  blob=lambda lin=lin: pack_w(e, lin.w))
            alloc(f"{name}.p", ceil_div(N, e.cols) * e.param_words_per_tile,
                  blob=lambda lin=lin: pack_params(e, lin.b, lin.mult, lin.shift, lin.w.shape[1]))
            if lin.out_bits != e.out_bits:        # RESADD's per-column requantiser words
                alloc(f"{name}.q", _row_words(e, N, Q_BYTES),
                      blob=lambda lin=lin: _qwords(e, lin.mult, lin.shift))
        lns = [(f"h{i}.{n}", getattr(qmodel.blocks[i], n)) for i in self.layers
               for n in ("ln_1", "ln_2")]
        if head:
            lns.append(("ln_f", qmodel.ln_f))
        for name, ln in lns:
            alloc(f"{name}.gamma", _row_words(e, len(ln.gamma), GAMMA_BYTES),
                  blob=lambda ln=ln: _rows(e, ln.gamma[None], GAMMA_BYTES))
            alloc(f"{name}.beta", _row_words(e, len(ln.beta), BETA_BYTES),
                  blob=lambda ln=ln: _rows(e, ln.beta[None], BETA_BYTES))
        for i in self.layers:
            table = qmodel.blocks[i].gelu_table
            alloc(f"h{i}.gelu.table", _row_words(e, len(table), ACT_BYTES),
                  blob=lambda table=table: _rows(e, np.asarray(table)[None], ACT_BYTES))
        if head:
            for name, tab, mult, shift in (("wte", qmodel.wte, qmodel.wte_mult, qmodel.wte_shift),
                                           ("wpe", qmodel.wpe, qmodel.wpe_mult, qmodel.wpe_shift)):
                stride = _row_words(e, E, ACT_BYTES)
                alloc(name, len(tab) * stride, stride, blob=lambda tab=tab: _rows(e, tab, ACT_BYTES))
                alloc(f"{name}.q", _row_words(e, np.broadcast(mult, shift).size, Q_BYTES),
                      blob=lambda mult=mult, shift=shift: _qwords(e, mult, shift))
        bufs = [("x", E, RESID_BYTES), ("ln_1_out", E, 1), ("qkv", 3 * E, 1),
                ("attn", E, 1), ("proj_raw", E, RAW_BYTES),
                ("ln_2_out", E, 1), ("fc", 4 * E, 1), ("gelu", 4 * E, 1)]
        if head:
            bufs += [("ln_f_out", E, 1), ("logits_raw", self.V, RAW_BYTES),
                     ("logits", self.V, RESID_BYTES)]
        for name, n, size in bufs:
            stride = ceil_div(n * size, e.mem_bytes)    # int8 rows: = a_words_per_row
            if size == RAW_BYTES:
                stride = max(stride, e.out_row_words(n, True))
            alloc(name, max_tokens * stride, stride)
        if head:                                     # token ids, uint32 each
            alloc("ids", ceil_div(max_tokens * Q_BYTES, e.mem_bytes))
        self.sizes = {"x": RESID_BYTES, "proj_raw": RAW_BYTES, "logits_raw": RAW_BYTES,
                      "logits": RESID_BYTES}
        self.n_tiles = ceil_div(self.n_pos, cfg.tile)
        # heads stay packed in the qkv rows as c_attn writes them; a head starting
        # inside a word meets zero rows in front of its Kᵀ tile (`packed_heads`)
        self.q_head_stride, self.q_head_bytes, self.k_rows = cfg.packed_heads(H, D)
        need(not self.q_head_bytes or D + e.mem_bytes - 1 <= e.max_k,
             f"d_head {D}: heads starting inside a {e.mem_bytes}-byte word need "
             f"max_k >= d_head + mem_bytes - 1 = {D + e.mem_bytes - 1} (their S commands "
             f"read the bytes before them), max_k is {e.max_k}")
        self.kts, self.vts = cfg.k_tile_words(self.k_rows), cfg.v_tile_words(D)
        for i in self.layers:
            alloc(f"h{i}.k_cache", H * self.n_tiles * self.kts)
            alloc(f"h{i}.v_cache", H * self.n_tiles * self.vts)
        self.end = top
        if mem_words is None:     # the memory map only: what a machine must hold
            return
        need(top <= mem_words, f"memory map needs {top} words, memory size is {mem_words}")
        need(mem_words <= 1 << e.addr_bits,
             f"memory size {mem_words} words exceeds the address width addr_bits {e.addr_bits}")

    def image(self):
        """Initial memory [mem_words, mem_bytes] uint8: weights, parameters, zero scratch."""
        if self.mem_words is None:
            raise CompileError("a compiler made without mem_words has no memory image")
        mem = np.zeros((self.mem_words, self.e.mem_bytes), np.uint8)
        for name, pack in self._blobs:
            r, blob = self.regions[name], pack()
            if len(blob) != r.words:      # the map's sizes and the packers disagree
                raise AssertionError(f"region {name}: {len(blob)} words packed, "
                                     f"{r.words} in the memory map")
            mem[r.base:r.base + r.words] = blob
        return mem

    # ---------------- host-side activation transfer ----------------
    def write_rows(self, mem, name, x):
        """Host write of activation rows (e.g. the block's input residual "x")."""
        r = self.regions[name]
        x = np.asarray(x)
        if len(x) > self.max_tokens:
            raise CompileError(f"{len(x)} rows exceed max_tokens {self.max_tokens}")
        words = _rows(self.e, x, self.sizes.get(name, 1), r.stride)
        mem[r.base:r.base + len(words)] = words

    def read_rows(self, mem, name, t, n):
        r, size = self.regions[name], self.sizes.get(name, 1)
        rows = mem[r.base:r.base + t * r.stride].reshape(t, -1)[:, :n * size]
        dt = {1: "<i1", 2: "<i2", 4: "<i4", 8: "<i8"}[size]
        return rows.copy().view(dt).astype(np.int64)

    def write_kv_cache(self, mem, cache):
        """Host write of K/V caches (a `gpt2.KVCache` of int8 [H, T, D] per layer, as
        `QuantGPT2.forward` leaves it) into the machine's cache regions, in the
        layout KVSTORE writes: per head and key tile, Kᵀ and V as matmul W tiles.
        Lets a long context be set up without simulating its prefill; the
        machine then continues at position T exactly as after its own prefill."""
        T = self.cfg.tile
        kb = self.cfg.head_bytes(self.H, self.q_head_bytes)
        for i in self.layers:
            k, v = cache.k[i], cache.v[i]
            if k is None:
                continue
            H, t, D = k.shape
            if (H, D) != (self.H, self.D) or t > self.n_pos:
                raise CompileError(f"layer {i} cache {k.shape} does not fit "
                                   f"[{self.H}, <= {self.n_pos}, {self.D}]")
            kc, vc = self.regions[f"h{i}.k_cache"], self.regions[f"h{i}.v_cache"]
            for h in range(H):
                for j in range(ceil_div(t, T)):
                    n = min(T, t - j * T)
                    kt = np.zeros((T, kb[h] + D), np.int64)
                    vt = np.zeros((T, D), np.int64)
                    kt[:n, kb[h]:] = k[h, j * T:j * T + n]
                    vt[:n] = v[h, j * T:j * T + n]
                    ka = kc.base + (h * self.n_tiles + j) * self.kts
                    va = vc.base + (h * self.n_tiles + j) * self.vts
                    packed = pack_w(self.e, kt.T)
                    mem[ka:ka + len(packed)] = packed
                    mem[va:va + self.vts] = pack_w(self.e, vt)

    # ---------------- instructions ----------------
    def _matmul(self, name, a, out, t):
        lin = self.lins[name]
        K, N = lin.w.shape
        ra, ro = self.regions[a], self.regions[out]
        raw = int(lin.out_bits != self.e.out_bits)    # to the residual width: via RESADD
        return (Op.MATMUL, dict(m=t, k=K, n=N, a_base=ra.base, a_stride=ra.stride,
                                w_base=self.regions[f"{name}.w"].base,
                                p_base=self.regions[f"{name}.p"].base,
                                out_base=ro.base, out_stride=ro.stride, a_signed=1,
                                raw_out=raw))

    def _block_ops(self, i, t, pos):
        E, D, H = self.E, self.D, self.H
        blk = self.q.blocks[i]
        reg = self.regions
        qkv, kc, vc = reg["qkv"], reg[f"h{i}.k_cache"], reg[f"h{i}.v_cache"]
        att = blk.attn
        x, raw = reg["x"], reg["proj_raw"]
        fc, gl = reg["fc"], reg["gelu"]

        def resadd(name):
            return (Op.RESADD, dict(
                rows=t, n=E, src_base=x.base, src_stride=x.stride, dst_base=x.base,
                dst_stride=x.stride, y_base=raw.base, y_stride=raw.stride,
                q_base=reg[f"{name}.q"].base))

        cache = dict(k_base=kc.base, k_tile_stride=self.kts, k_head_stride=self.n_tiles * self.kts,
                     v_base=vc.base, v_tile_stride=self.vts, v_head_stride=self.n_tiles * self.vts)

        def of(op, check=None):
            return Provenance(op, i, check)

        return [
            (*self._ln(f"h{i}.ln_1", blk.ln_1, "x", "ln_1_out", t), of("ln_1", ("ln_1_out", E))),
            (*self._matmul(f"h{i}.c_attn", "ln_1_out", "qkv", t), of("qkv", ("qkv", 3 * E))),
            (Op.KVSTORE, dict(n_tok=t, pos0=pos, n_head=H, d_head=D,
                              src_base=qkv.base + E // self.e.mem_bytes, src_stride=qkv.stride,
                              src_lane=E % self.e.mem_bytes, k_skew=self.q_head_bytes,
                              **cache), of("attn")),
            (Op.ATTENTION, dict(n_head=H, d_head=D, tq=t, offset=pos,
                                q_base=qkv.base, q_row_stride=qkv.stride,
                                q_head_stride=self.q_head_stride,
                                q_head_bytes=self.q_head_bytes, **cache,
                                out_base=reg["attn"].base, out_stride=reg["attn"].stride,
                                scratch_base=reg["scratch"].base,
                                score_mult=att.score_mult, score_shift=att.score_shift,
                                out_mult=att.out_mult, out_shift=att.out_shift),
             of("attn", ("attn", E))),
            (*self._matmul(f"h{i}.attn.c_proj", "attn", "proj_raw", t), of("attn_proj")),
            (*resadd(f"h{i}.attn.c_proj"), of("resid_mid", ("x", E))),
            (*self._ln(f"h{i}.ln_2", blk.ln_2, "x", "ln_2_out", t), of("ln_2", ("ln_2_out", E))),
            (*self._matmul(f"h{i}.c_fc", "ln_2_out", "fc", t), of("fc", ("fc", 4 * E))),
            (Op.GELU, dict(rows=t, n=4 * E, src_base=fc.base, src_stride=fc.stride,
                           dst_base=gl.base, dst_stride=gl.stride,
                           table_base=reg[f"h{i}.gelu.table"].base), of("gelu", ("gelu", 4 * E))),
            (*self._matmul(f"h{i}.mlp.c_proj", "gelu", "proj_raw", t), of("fc_proj")),
            (*resadd(f"h{i}.mlp.c_proj"), of("resid", ("x", E))),
        ]

    #: bytes per element of each address field of the element-wise vector ops
    _ELEMENT_BYTES = {
        Op.GELU: {"src_base": ACT_BYTES, "dst_base": ACT_BYTES},
        Op.RESADD: {"src_base": RESID_BYTES, "dst_base": RESID_BYTES, "y_base": RAW_BYTES,
                    "q_base": Q_BYTES},
        # REQUANT's src is unused (x = 0) and stays put
        Op.REQUANT: {"dst_base": RESID_BYTES, "y_base": RAW_BYTES, "q_base": Q_BYTES},
    }

    def _split_vector(self, op, fields, prov):
        """An element-wise vector op on rows longer than the units' row limit
        (GPT-2's 4E-wide GELU rows, the vocabulary-wide logits) as several
        instructions, each on a column chunk of every row. Chunks are whole
        memory words, so each chunk's columns start on a word in every array.
        The operation's result is complete after its last chunk only, which
        alone keeps the provenance's check."""
        sizes = self._ELEMENT_BYTES.get(op)
        n = fields.get("n", 0)
        if sizes is None or n <= self.chunk:
            return [(op, fields, prov)]
        out = []
        for c0 in range(0, n, self.chunk):
            f = dict(fields, n=min(self.chunk, n - c0))
            for name, size in sizes.items():
                f[name] = fields[name] + c0 * size // self.e.mem_bytes
            last = c0 + self.chunk >= n
            out.append((op, f, prov if last else Provenance(prov.op, prov.layer)))
        return out

    def _ln(self, name, q, src, dst, t):
        reg = self.regions
        return (Op.LAYERNORM, dict(
            rows=t, n=self.E, src_base=reg[src].base, src_stride=reg[src].stride,
            dst_base=reg[dst].base, dst_stride=reg[dst].stride,
            gamma_base=reg[f"{name}.gamma"].base, beta_base=reg[f"{name}.beta"].base,
            out_shift=q.out_shift, eps_m=q.eps_m, eps_e=q.eps_e))

    def ops(self, t, pos):
        """The program as (Op, fields) pairs for t tokens at positions pos .. pos+t-1."""
        return [(op, fields) for op, fields, _ in self.annotated_ops(t, pos)]

    def provenance(self, t, pos):
        """The `Provenance` of each instruction of `program(t, pos)`, index by index."""
        return [prov for _, _, prov in self.annotated_ops(t, pos)]

    def annotated_ops(self, t, pos):
        """The program as (Op, fields, `Provenance`) triples: `ops` and `provenance`
        in one list, so the two cannot fall out of step."""
        if not 1 <= t <= self.max_tokens:
            raise CompileError(f"T = {t} tokens outside 1..max_tokens {self.max_tokens}")
        if pos + t > self.n_pos:
            raise CompileError(f"positions up to {pos + t} exceed n_positions {self.n_pos}")
        reg = self.regions
        prog = []
        if self.head:
            x = reg["x"]
            prog.append((Op.EMBED, dict(
                rows=t, n=self.E, src_base=reg["ids"].base, src_stride=0,
                dst_base=x.base, dst_stride=x.stride, pos0=pos,
                wte_base=reg["wte"].base, wte_stride=reg["wte"].stride,
                wte_q_base=reg["wte.q"].base, wpe_base=reg["wpe"].base,
                wpe_stride=reg["wpe"].stride, wpe_q_base=reg["wpe.q"].base),
                Provenance("embed", None, ("x", self.E))))
        for i in self.layers:
            prog += self._block_ops(i, t, pos)
        if self.head:
            lr = reg["logits_raw"]
            prog += [(*self._ln("ln_f", self.q.ln_f, "x", "ln_f_out", t),
                      Provenance("ln_f", None, ("ln_f_out", self.E))),
                     (*self._matmul("lm_head", "ln_f_out", "logits_raw", t),
                      Provenance("logits")),
                     (Op.REQUANT, dict(rows=t, n=self.V, src_base=0, src_stride=0,
                                       dst_base=reg["logits"].base,
                                       dst_stride=reg["logits"].stride,
                                       y_base=lr.base, y_stride=lr.stride,
                                       q_base=reg["lm_head.q"].base),
                      Provenance("logits", None, ("logits", self.V)))]
        prog = [ins for ins in prog for ins in self._split_vector(*ins)]
        return prog + [(Op.HALT, {}, Provenance(None))]

    def write_ids(self, mem, ids):
        """Host write of the new tokens' ids (whole-model programs)."""
        ids = np.asarray(ids, np.int64)
        if len(ids) > self.max_tokens:
            raise CompileError(f"{len(ids)} tokens exceed max_tokens {self.max_tokens}")
        if ids.min() < 0 or ids.max() >= self.V:
            raise CompileError(f"token ids must be in 0..{self.V - 1}")
        r = self.regions["ids"]
        flat = np.zeros(r.words * self.e.mem_bytes, np.uint8)
        flat[:len(ids) * Q_BYTES] = ids.astype("<u4").view(np.uint8)
        mem[r.base:r.base + r.words] = flat.reshape(r.words, self.e.mem_bytes)

    def program(self, t, pos):
        """Instruction words; an instruction the ISA refuses becomes a `CompileError`."""
        words = []
        for op, fields in self.ops(t, pos):
            try:
                words.append(encode(self.cfg, op, **fields))
            except IsaError as exc:
                raise CompileError(f"instruction {len(words)} ({op.name}): {exc}") from exc
        return words


class BlockCompiler(_Compiler):
    """One block (`layer`): the host writes the block's input residual rows "x"."""

    def __init__(self, cfg, qmodel, layer, max_tokens, mem_words):
        super().__init__(cfg, qmodel, [layer], False, max_tokens, mem_words)
        self.layer = layer


class ModelCompiler(_Compiler):
    """The whole model: EMBED, every block, ln_f, LM head (raw matmul against wteᵀ
    + REQUANT to the logit width). The host writes the token ids (`write_ids`);
    the int16 logits are left in region "logits" [T, vocab]."""

    def __init__(self, cfg, qmodel, max_tokens, mem_words):
        super().__init__(cfg, qmodel, range(qmodel.config.n_layer), True, max_tokens, mem_words)
