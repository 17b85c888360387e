"""Token generation on a MATMUL-only machine: the linear layers on the hardware, the rest on the host.

A chip too small for the whole machine (the iCE40UP5K: `Machine(cfg,
ops=["matmul"])`, see docs/performance.md "Boards") still carries most of a
GPT-2's multiply-accumulates: the four linear layers of every block. The
`OffloadDriver` keeps their weights resident in the device memory and
computes each linear as one MATMUL program (MATMUL + HALT) on activations it
writes, reading the int8 (or raw int32, requantised here with
`intops.requantize`) results back; everything else — embedding, LayerNorm,
attention, GELU, residual adds, the LM head — runs on the host with the
golden functions, through `QuantGPT2.forward(linear=...)`. The logits are
therefore bit-exact with `QuantGPT2` exactly when every hardware matmul is.

Memory layout (words of `mem_bytes`): per block and linear, the packed W
column tiles and the parameter words (`sim.host.matmul_layout`), then one A
buffer and one output buffer sized for `max_m` rows of the widest layer.
"""
import time

import numpy as np

from gpt2accel.model import intops
from gpt2accel.model.gpt2 import KVCache
from gpt2accel.rtl.isa import Error, Op, encode
from gpt2accel.sim.host.backends import make_backend
from gpt2accel.sim.host.driver import HardwareError
from gpt2accel.sim.host.matmul_layout import pack_a, pack_params, pack_w, unpack_out

__all__ = ["OffloadDriver", "offload_words", "LINEARS"]

#: the block attributes holding the linear layers the hardware computes
LINEARS = ("attn_qkv", "attn_proj", "fc", "fc_proj")


class _Placed:
    """One linear layer resident in device memory."""

    def __init__(self, q, w_base, p_base):
        self.q, self.w_base, self.p_base = q, w_base, p_base
        self.k, self.n = q.w.shape
        # the engine requantises to int8 only; wider outputs come back raw
        self.raw = q.out_bits != 8


def _layout(cfg, qmodel):
    """(placements by id(q), weight image [words, mem_bytes], a_base, out_base, end)."""
    e = cfg.engine
    blobs, placed, addr = [], {}, 0
    for block in qmodel.blocks:
        for name in LINEARS:
            q = getattr(block, name)
            w = pack_w(e, q.w)
            p = pack_params(e, q.b, q.mult, q.shift, q.w.shape[1])
            placed[id(q)] = _Placed(q, addr, addr + len(w))
            blobs += [w, p]
            addr += len(w) + len(p)
    qs = [pl.q for pl in placed.values()]
    a_words = e.max_m * max(e.a_words_per_row(q.w.shape[0]) for q in qs)
    out_words = e.max_m * max(e.out_row_words(q.w.shape[1], q.out_bits != 8) for q in qs)
    image = np.concatenate(blobs) if blobs else np.zeros((0, e.mem_bytes), np.uint8)
    return placed, image, addr, addr + a_words, addr + a_words + out_words


def offload_words(cfg, qmodel):
    """Device memory words the offload of `qmodel` needs on `cfg`'s machine."""
    return _layout(cfg, qmodel)[4]


class OffloadDriver:
    """`prefill(ids)` / `decode(token)` -> int logits, as `driver.Driver`, on a machine that
    needs only MATMUL. `backend`: a `driver.Backend` or its name."""

    def __init__(self, qmodel, cfg, backend="pysim", *, mem_words=None):
        self.q, self.cfg, self.e = qmodel, cfg, cfg.engine
        self.backend = make_backend(backend) if isinstance(backend, str) else backend
        self.placed, self.image, self.a_base, self.out_base, need = _layout(cfg, qmodel)
        self.mem_words = mem_words or need
        if need > self.mem_words:
            raise ValueError(f"the offload of this model needs {need} memory words of "
                             f"{self.e.mem_bytes} bytes, the device has {self.mem_words}")
        for pl in self.placed.values():
            if pl.k > self.e.max_k or pl.n > self.e.max_n:
                raise ValueError(f"a {pl.k}x{pl.n} linear layer exceeds the engine's "
                                 f"max_k={self.e.max_k} / max_n={self.e.max_n}")
        self.cache, self.loaded = None, False
        self.history, self.last = [], None

    def load(self):
        """Open the device and write every linear layer's weights and parameters."""
        self.backend.open(self.cfg, self.mem_words)
        self.backend.load(self.image)
        self.loaded = True
        return self

    def close(self):
        self.backend.close()

    # ---- one linear layer on the hardware
    def _matmul(self, x, pl):
        e, m = self.e, x.shape[0]
        a_stride = e.a_words_per_row(pl.k)
        out_stride = e.out_row_words(pl.n, pl.raw)
        self.backend.load(pack_a(e, x, a_stride), self.a_base)
        prog = [encode(self.cfg, Op.MATMUL, m=m, k=pl.k, n=pl.n, a_base=self.a_base,
                       a_stride=a_stride, w_base=pl.w_base, p_base=pl.p_base,
                       out_base=self.out_base, out_stride=out_stride, a_signed=1,
                       raw_out=int(pl.raw)),
                encode(self.cfg, Op.HALT)]
        start = time.perf_counter()
        res = dict(self.backend.run(prog))
        res.setdefault("wall_s", time.perf_counter() - start)
        res.update(m=m, k=pl.k, n=pl.n)
        self.history.append(res)
        if res["error"] != Error.NONE or res["icount"] != len(prog):
            raise HardwareError(f"MATMUL {m}x{pl.k}x{pl.n}: machine error status "
                                f"{Error(res['error']).name}, {res['icount']} of {len(prog)} "
                                "instructions executed")
        words = self.backend.dump(self.out_base, m * out_stride)
        out = unpack_out(e, np.asarray(words), 0, out_stride, m, pl.n, pl.raw)
        if pl.raw:
            return intops.requantize(out, pl.q.mult, pl.q.shift, pl.q.out_bits).astype(np.int32)
        return out.astype(np.int8)

    def _linear(self, x, q):
        pl = self.placed[id(q)]
        x = np.asarray(x)
        rows = self.e.max_m
        return np.concatenate([self._matmul(x[s:s + rows], pl) for s in range(0, len(x), rows)])

    # ---- the driver API
    def prefill(self, ids):
        """A new sequence from position 0; int logits [T, vocab]."""
        ids = [int(i) for i in ids]
        if not ids:
            raise ValueError("prefill needs at least one token")
        if not self.loaded:
            self.load()
        self.cache = KVCache(self.q.config.n_layer)
        return self._forward(ids)

    def decode(self, token):
        """One token at the next position; int logits [1, vocab]."""
        if self.cache is None:
            raise ValueError("decode needs a prefill first (the prompt fills the KV caches)")
        if self.cache.length >= self.q.config.n_positions:
            raise ValueError(f"context full: n_positions={self.q.config.n_positions}")
        return self._forward([int(token)])

    def _forward(self, ids):
        before = len(self.history)
        logits = self.q.forward(np.array(ids), self.cache, linear=self._linear)
        runs = self.history[before:]
        self.last = {"programs": len(runs), "cycles": sum(r["cycles"] for r in runs),
                     "wall_s": sum(r["wall_s"] for r in runs), "T": len(ids)}
        return logits

    def logits_float(self, logits):
        return self.q.dequantize_logits(np.asarray(logits))

    def counters(self):
        """Totals over every MATMUL program run: programs, cycles, wall seconds."""
        h = self.history
        return {"programs": len(h), "cycles": sum(r["cycles"] for r in h),
                "macs": sum(r["m"] * r["k"] * r["n"] for r in h),
                "wall_s": sum(r["wall_s"] for r in h)}
