"""Lower a `QuantGPT2` (one block, or the whole model) to a machine program + memory image.

`ModelCompiler(cfg, qmodel, max_tokens, mem_words, logit_rows=, context=)`:
EMBED (token ids written by the host with `write_ids`), every block,
LAYERNORM ln_f, MATMUL against wteᵀ (raw) and REQUANT to the int16 logits
(region "logits") for the rows a program asks (`program(t, pos, logits=)`:
"all" rows, the "last" row, which is all generation needs, or "none", for
the earlier chunks of a long prompt). The logits buffers hold `logit_rows`
rows and the KV caches `context` positions (default: max_tokens rows, the
model's n_positions), so an image holds only what its caller will ask.

`BlockCompiler(cfg, qmodel, layer, max_tokens, mem_words)` fixes the memory
map once (weights and per-column parameters in the matmul layouts, the
layer's K/V caches for `context` keys, activation buffers for
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
from dataclasses import dataclass, replace

import numpy as np

from gpt2accel.rtl.attention_config import AttentionConfig
from gpt2accel.rtl.config import ceil_div
from gpt2accel.rtl.machine_config import MachineConfig
from gpt2accel.rtl.isa import (ACT_BYTES, BETA_BYTES, GAMMA_BYTES, Q_BYTES, RAW_BYTES,
                               RESID_BYTES, IsaError, Op, cfg_max_vector_n, encode, wte_tile_cols)
from gpt2accel.sim.host.matmul_layout import pack_params, pack_w
from gpt2accel.sim.cycles.attention import attention_cycles

__all__ = ["CompileError", "BlockCompiler", "ModelCompiler", "Provenance", "Region",
           "LOGITS"]

#: what a whole-model program computes logits for: every new row, the last one, none
LOGITS = ("all", "last", "none")


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
    but the last column chunk of a split vector op); `from_row`: the region's row 0
    holds the intermediate's row `from_row` (the LM head of the last row only)."""
    op: "str | None"
    layer: "int | None" = None
    check: "tuple[str, int] | None" = None
    from_row: int = 0


@dataclass(frozen=True)
class Region:
    base: int
    words: int
    stride: int = 0          # words per row, for activation buffers


class _Compiler:
    """Memory map and programs for `layers` of `qmodel`, with the embedding add,
    ln_f and the LM head when `head` (see `BlockCompiler`, `ModelCompiler`)."""

    def __init__(self, cfg: AttentionConfig, qmodel, layers, head, max_tokens, mem_words,
                 logit_rows=None, context=None, batch=1):
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
        self.context = self.n_pos if context is None else context
        need(1 <= self.context <= self.n_pos,
             f"context {self.context} outside 1..n_positions {self.n_pos}")
        self.logit_rows = max_tokens if logit_rows is None else logit_rows
        self.batch = batch
        need(1 <= batch <= max_tokens, f"batch {batch} outside 1..max_tokens {max_tokens}")
        need(not head or batch <= self.logit_rows,
             f"batch {batch} exceeds logit_rows {self.logit_rows} (a batched decode step "
             f"computes one row of logits per sequence)")
        need(1 <= self.logit_rows <= max_tokens,
             f"logit_rows {self.logit_rows} outside 1..max_tokens {max_tokens}")
        self.rb = qmodel.resid_bits
        # RESADD and REQUANT saturate where the machine was built to: a model quantised
        # to another residual width would run, and differ from the golden model
        built_rb = MachineConfig.of(cfg).resid_bits
        need(self.rb == built_rb, f"model resid_bits {self.rb} != the machine's resid_bits "
             f"{built_rb} (build the machine from the model: `machine_config`)")
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
            # EMBED reads the token table in W tiles of `wte_tile_cols` tokens: when
            # that is the engine's cols, the tied LM head's weight tiles are the table
            # (stored once); else the table is a copy of its own in such tiles
            te = replace(e, cols=wte_tile_cols(e.mem_bytes, e.cols))
            self.wte_tied = te.cols == e.cols
            if self.wte_tied:
                self.wte = Region(self.regions["lm_head.w"].base, 0, e.w_words_per_tile(E))
            else:
                stride = te.w_words_per_tile(E)
                self.wte = alloc("wte", ceil_div(self.V, te.cols) * stride, stride,
                                 blob=lambda: pack_w(te, np.asarray(qmodel.wte).T))
            for name, tab, mult, shift in (("wte", None, qmodel.wte_mult, qmodel.wte_shift),
                                           ("wpe", qmodel.wpe, qmodel.wpe_mult, qmodel.wpe_shift)):
                if tab is not None:
                    stride = _row_words(e, E, ACT_BYTES)
                    alloc(name, len(tab) * stride, stride,
                          blob=lambda tab=tab: _rows(e, tab, ACT_BYTES))
                alloc(f"{name}.q", _row_words(e, np.broadcast(mult, shift).size, Q_BYTES),
                      blob=lambda mult=mult, shift=shift: _qwords(e, mult, shift))
        bufs = [("x", E, RESID_BYTES), ("ln_1_out", E, 1), ("qkv", 3 * E, 1),
                ("attn", E, 1), ("proj_raw", E, RAW_BYTES),
                ("ln_2_out", E, 1), ("fc", 4 * E, 1), ("gelu", 4 * E, 1)]
        bufs = [(name, n, size, max_tokens) for name, n, size in bufs]
        if head:
            bufs += [(name, n, size, self.logit_rows) for name, n, size in (
                ("ln_f_out", E, 1), ("logits_raw", self.V, RAW_BYTES),
                ("logits", self.V, RESID_BYTES))]
        for name, n, size, rows in bufs:
            stride = ceil_div(n * size, e.mem_bytes)    # int8 rows: = a_words_per_row
            if size == RAW_BYTES:
                stride = max(stride, e.out_row_words(n, True))
            alloc(name, rows * stride, stride)
        if head:                                     # token ids, uint32 each
            # a batched step's EMBEDs take one sequence's id each, from byte 0 of a word
            alloc("ids", max(ceil_div(max_tokens * Q_BYTES, e.mem_bytes), batch))
        self.sizes = {"x": RESID_BYTES, "proj_raw": RAW_BYTES, "logits_raw": RAW_BYTES,
                      "logits": RESID_BYTES}
        self.n_tiles = ceil_div(self.context, cfg.tile)
        # heads stay packed in the qkv rows as c_attn writes them; a head starting
        # inside a word meets zero rows in front of its Kᵀ tile (`packed_heads`)
        self.q_head_stride, self.q_head_bytes, self.k_rows = cfg.packed_heads(H, D)
        need(not self.q_head_bytes or D + e.mem_bytes - 1 <= e.max_k,
             f"d_head {D}: heads starting inside a {e.mem_bytes}-byte word need "
             f"max_k >= d_head + mem_bytes - 1 = {D + e.mem_bytes - 1} (their S commands "
             f"read the bytes before them), max_k is {e.max_k}")
        self.kts, self.vts = cfg.k_tile_words(self.k_rows), cfg.v_tile_words(D)
        # heads per S command of a decode step (and with it every Kᵀ tile at the full
        # k_rows, `att_k_rows`), where that is faster (`head_group`)
        self.head_group = self._head_group(cfg, H, D)
        self.att_k_rows = self.k_rows if self.head_group > 1 else 0
        # per layer, the caches of sequence 0, then of sequence 1, ... (`_cache`)
        for i in self.layers:
            alloc(f"h{i}.k_cache", batch * H * self.n_tiles * self.kts)
            alloc(f"h{i}.v_cache", batch * H * self.n_tiles * self.vts)
        self.end = top
        if mem_words is None:     # the memory map only: what a machine must hold
            return
        need(top <= mem_words, f"memory map needs {top} words, memory size is {mem_words}")
        need(mem_words <= 1 << e.addr_bits,
             f"memory size {mem_words} words exceeds the address width addr_bits {e.addr_bits}")

    def _head_group(self, cfg, H, D):
        """Heads per S command of a one-query ATTENTION whose keys fit one tile (the
        `head_group` field): their Kᵀ tiles must lie back to back (the context is one
        key tile, so a head's cache is one tile) and their Q in one word (several
        heads per word, groups aligned to words). The largest such group that the
        cycle model times faster than one S command per head at the context's last
        position; 1 where none is."""
        e, T = cfg.engine, cfg.tile
        qhb, mb = self.q_head_bytes, e.mem_bytes
        if self.n_tiles != 1 or self.q_head_stride or not qhb or mb % qhb:
            return 1
        pos = self.context - 1
        if pos >= T:
            return 1

        def cycles(g):
            return attention_cycles(cfg, H, D, 1, pos, q_head_bytes=qhb, k_tile_stride=self.kts,
                                    k_rows=self.k_rows if g > 1 else 0, head_group=g).cycles
        best = 1
        for g in range(2, min(H, cfg.s_chunk) + 1):
            if H % g == 0 and (mb // qhb) % g == 0 and cycles(g) < cycles(best):
                best = g
        return best

    #: the image's regions by what they hold (`region_bytes`); the rest are buffers
    _KV = (".k_cache", ".v_cache")

    def region_bytes(self):
        """Bytes of the memory map by kind: "weights" (everything packed from the model:
        weights, parameters, tables, embeddings), "kv" (the K/V caches), "buffers"
        (activations, logits, token ids, the attention scratch)."""
        out = {"weights": 0, "kv": 0, "buffers": 0}
        packed = {name for name, _ in self._blobs}
        for name, r in self.regions.items():
            kind = ("kv" if name.endswith(self._KV) else
                    "weights" if name in packed and name != "scratch" else "buffers")
            out[kind] += r.words * self.e.mem_bytes
        return out

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

    def _cache(self, i, seq):
        """ATTENTION / KVSTORE cache fields of layer i for sequence `seq`."""
        if not 0 <= seq < self.batch:
            raise CompileError(f"sequence {seq} outside 0..{self.batch - 1} (batch {self.batch})")
        kc, vc = self.regions[f"h{i}.k_cache"], self.regions[f"h{i}.v_cache"]
        ks, vs = self.n_tiles * self.kts, self.n_tiles * self.vts
        return dict(k_base=kc.base + seq * self.H * ks, k_tile_stride=self.kts, k_head_stride=ks,
                    v_base=vc.base + seq * self.H * vs, v_tile_stride=self.vts, v_head_stride=vs)

    def write_kv_cache(self, mem, cache, seq=0):
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
            if (H, D) != (self.H, self.D) or t > self.context:
                raise CompileError(f"layer {i} cache {k.shape} does not fit "
                                   f"[{self.H}, <= {self.context}, {self.D}]")
            c = self._cache(i, seq)
            for h in range(H):
                for j in range(ceil_div(t, T)):
                    n = min(T, t - j * T)
                    kt = np.zeros((T, self.att_k_rows or kb[h] + D), np.int64)
                    vt = np.zeros((T, D), np.int64)
                    kt[:n, kb[h]:] = k[h, j * T:j * T + n]
                    vt[:n] = v[h, j * T:j * T + n]
                    ka = c["k_base"] + (h * self.n_tiles + j) * self.kts
                    va = c["v_base"] + (h * self.n_tiles + j) * self.vts
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

    def _block_ops(self, i, t, seqs):
        """Block i on t rows; `seqs` [(first row, rows, position, sequence)]: each group
        of rows at its positions on its own sequence's cache. The linear layers run
        once on all t rows, KVSTORE and ATTENTION once per group."""
        E, D, H = self.E, self.D, self.H
        blk = self.q.blocks[i]
        reg = self.regions
        qkv = reg["qkv"]
        att = blk.attn
        x, raw = reg["x"], reg["proj_raw"]
        fc, gl = reg["fc"], reg["gelu"]

        def resadd(name):
            return (Op.RESADD, dict(
                rows=t, n=E, src_base=x.base, src_stride=x.stride, dst_base=x.base,
                dst_stride=x.stride, y_base=raw.base, y_stride=raw.stride,
                q_base=reg[f"{name}.q"].base))

        def of(op, check=None):
            return Provenance(op, i, check)

        out = reg["attn"]
        attention = []
        for k, (row, n, p, seq) in enumerate(seqs):
            cache = self._cache(i, seq)
            attention += [
                (Op.KVSTORE, dict(n_tok=n, pos0=p, n_head=H, d_head=D,
                                  src_base=qkv.base + row * qkv.stride + E // self.e.mem_bytes,
                                  src_stride=qkv.stride, src_lane=E % self.e.mem_bytes,
                                  k_skew=self.q_head_bytes, k_rows=self.att_k_rows, **cache),
                 of("attn")),
                (Op.ATTENTION, dict(n_head=H, d_head=D, tq=n, offset=p,
                                    q_base=qkv.base + row * qkv.stride, q_row_stride=qkv.stride,
                                    q_head_stride=self.q_head_stride,
                                    q_head_bytes=self.q_head_bytes, k_rows=self.att_k_rows,
                                    head_group=self.head_group, **cache,
                                    out_base=out.base + row * out.stride, out_stride=out.stride,
                                    scratch_base=reg["scratch"].base,
                                    score_mult=att.score_mult, score_shift=att.score_shift,
                                    out_mult=att.out_mult, out_shift=att.out_shift),
                 of("attn", ("attn", E) if k == len(seqs) - 1 else None))]
        return [
            (*self._ln(f"h{i}.ln_1", blk.ln_1, "x", "ln_1_out", t), of("ln_1", ("ln_1_out", E))),
            (*self._matmul(f"h{i}.c_attn", "ln_1_out", "qkv", t), of("qkv", ("qkv", 3 * E))),
            *attention,
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

    def _ln(self, name, q, src, dst, t, src_row=0):
        reg = self.regions
        return (Op.LAYERNORM, dict(
            rows=t, n=self.E, src_base=reg[src].base + src_row * reg[src].stride,
            src_stride=reg[src].stride,
            dst_base=reg[dst].base, dst_stride=reg[dst].stride,
            gamma_base=reg[f"{name}.gamma"].base, beta_base=reg[f"{name}.beta"].base,
            out_shift=q.out_shift, eps_m=q.eps_m, eps_e=q.eps_e))

    def ops(self, t, pos, logits="all", seq=0):
        """The program as (Op, fields) pairs for t tokens at positions pos .. pos+t-1."""
        return [(op, fields) for op, fields, _ in self.annotated_ops(t, pos, logits, seq)]

    def provenance(self, t, pos, logits="all", seq=0):
        """The `Provenance` of each instruction of `program(t, pos)`, index by index."""
        return [prov for _, _, prov in self.annotated_ops(t, pos, logits, seq)]

    def logit_count(self, t, logits):
        """Rows of logits a program of t tokens leaves in region "logits"."""
        if logits not in LOGITS:
            raise CompileError(f"logits={logits!r}: one of {', '.join(LOGITS)}")
        return {"all": t, "last": 1, "none": 0}[logits] if self.head else 0

    def _check_positions(self, t, pos):
        if pos + t > self.context:
            what = "n_positions" if self.context == self.n_pos else "the context"
            raise CompileError(f"positions up to {pos + t} exceed {what} {self.context}")

    def annotated_ops(self, t, pos, logits="all", seq=0):
        """The program as (Op, fields, `Provenance`) triples: `ops` and `provenance`
        in one list, so the two cannot fall out of step. `seq`: whose K/V caches
        (0 .. batch-1)."""
        if not 1 <= t <= self.max_tokens:
            raise CompileError(f"T = {t} tokens outside 1..max_tokens {self.max_tokens}")
        self._check_positions(t, pos)
        n_logits = self.logit_count(t, logits)
        if n_logits > self.logit_rows:
            raise CompileError(f"logits of {n_logits} rows exceed the {self.logit_rows} "
                               f"row{'s' if self.logit_rows > 1 else ''} of the logits "
                               f"buffers (logit_rows)")
        self._cache(self.layers[0], seq)              # refuses a sequence past the batch
        embed = [self._embed(t, 0, pos, 0)] if self.head else []
        return self._annotated(t, embed, [(0, t, pos, seq)], n_logits)

    def batch_annotated_ops(self, positions):
        """One decode step of len(positions) sequences: sequence b's next token (id b of
        `write_batch_ids`) at position positions[b], on its own K/V caches; the linear
        layers run once with m = len(positions), EMBED, KVSTORE and ATTENTION once per
        sequence; logits of every sequence (row b)."""
        positions = [int(p) for p in positions]
        n = len(positions)
        if not self.head:
            raise CompileError("a batched decode step needs the whole model")
        if not 1 <= n <= self.batch:
            raise CompileError(f"{n} sequences outside 1..batch {self.batch}")
        for p in positions:
            self._check_positions(1, p)
        embed = [self._embed(1, b, p, b) for b, p in enumerate(positions)]
        embed = [(op, f, prov if b == n - 1 else Provenance("embed"))
                 for b, (op, f, prov) in enumerate(embed)]
        return self._annotated(n, embed, [(b, 1, p, b) for b, p in enumerate(positions)], n)

    def _embed(self, t, row, pos, id_word):
        reg = self.regions
        x = reg["x"]
        return (Op.EMBED, dict(
            rows=t, n=self.E, src_base=reg["ids"].base + id_word, src_stride=0,
            dst_base=x.base + row * x.stride, dst_stride=x.stride, pos0=pos,
            wte_base=self.wte.base, wte_stride=self.wte.stride,
            wte_q_base=reg["wte.q"].base, wpe_base=reg["wpe"].base,
            wpe_stride=reg["wpe"].stride, wpe_q_base=reg["wpe.q"].base),
            Provenance("embed", None, ("x", self.E)))

    def _annotated(self, t, embed, seqs, n_logits):
        reg = self.regions
        prog = list(embed)
        for i in self.layers:
            prog += self._block_ops(i, t, seqs)
        if n_logits:
            # the head runs on the rows asked only: the last row's logits are all
            # generation needs, and the LM head is the widest product of the program
            lr, first = reg["logits_raw"], t - n_logits
            prog += [(*self._ln("ln_f", self.q.ln_f, "x", "ln_f_out", n_logits, first),
                      Provenance("ln_f", None, ("ln_f_out", self.E), first)),
                     (*self._matmul("lm_head", "ln_f_out", "logits_raw", n_logits),
                      Provenance("logits")),
                     (Op.REQUANT, dict(rows=n_logits, n=self.V, src_base=0, src_stride=0,
                                       dst_base=reg["logits"].base,
                                       dst_stride=reg["logits"].stride,
                                       y_base=lr.base, y_stride=lr.stride,
                                       q_base=reg["lm_head.q"].base),
                      Provenance("logits", None, ("logits", self.V), first))]
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

    def write_batch_ids(self, mem, tokens):
        """Host write of a batched step's ids: sequence b's token in word b."""
        ids = np.asarray(tokens, np.int64)
        if not 1 <= len(ids) <= self.batch:
            raise CompileError(f"{len(ids)} sequences outside 1..batch {self.batch}")
        if ids.min() < 0 or ids.max() >= self.V:
            raise CompileError(f"token ids must be in 0..{self.V - 1}")
        r = self.regions["ids"]
        words = np.zeros((r.words, self.e.mem_bytes), np.uint8)
        words[:len(ids), :Q_BYTES] = ids.astype("<u4").view(np.uint8).reshape(-1, Q_BYTES)
        mem[r.base:r.base + r.words] = words

    def batch_program(self, positions):
        """`program` of `batch_annotated_ops`."""
        return self._encode((op, f) for op, f, _ in self.batch_annotated_ops(positions))

    def program(self, t, pos, logits="all", seq=0):
        """Instruction words; an instruction the ISA refuses becomes a `CompileError`."""
        return self._encode(self.ops(t, pos, logits, seq))

    def _encode(self, ops):
        words = []
        for op, fields in ops:
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
    the int16 logits of the rows asked are left in region "logits" [rows, vocab].
    `logit_rows`: rows the logits buffers hold (default max_tokens; 1 is enough to
    generate); `context`: positions the KV caches hold (default n_positions); `batch`:
    sequences with caches of their own, decoded together (`batch_program`)."""

    def __init__(self, cfg, qmodel, max_tokens, mem_words, logit_rows=None, context=None,
                 batch=1):
        super().__init__(cfg, qmodel, range(qmodel.config.n_layer), True, max_tokens, mem_words,
                         logit_rows, context, batch)
