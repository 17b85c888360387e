"""Memory layout of matmul operands and results (the compiler's side of the contract).

Memory is an array of words of `cfg.mem_bytes` bytes, little-endian within a
word. docs/architecture.md ("Matmul engine: memory layout") describes the
same rules in prose:

- A: row-major, K bytes per row, each row starting at a word
  (`a_stride` >= ceil(K / mem_bytes) words).
- W: column tiles of `cols` columns, tile after tile from `w_base`; a tile is
  K rows of `cols` bytes, `k_per_word` consecutive rows per word. Columns past
  N are padding (any value).
- parameters: per column tile, `cols` int32 biases then `cols` uint32 words
  ``mult | shift << 16``, padded to whole words, tile after tile from `p_base`.
- output: row m at ``out_base + m*out_stride``; int8 results (or int32 with
  raw_out) in row segments as given by `EngineConfig.out_segment`. Bytes of
  columns past N are never written.
"""
import numpy as np

from gpt2accel.rtl.config import EngineConfig, ceil_div

__all__ = ["pack_a", "pack_w", "pack_params", "unpack_out", "MatmulLayout", "place"]



def pack_a(cfg: EngineConfig, a, stride=None):
    """[M, K] int8/uint8 -> [M*stride, mem_bytes] uint8 words."""
    a = np.asarray(a)
    M, K = a.shape
    stride = stride or cfg.a_words_per_row(K)
    buf = np.zeros((M, stride * cfg.mem_bytes), np.uint8)
    buf[:, :K] = a.astype(np.int64) & 0xFF
    return buf.reshape(M * stride, cfg.mem_bytes)


def pack_w(cfg: EngineConfig, w):
    """[K, N] int8 -> column-tile words [ceil(N/cols) * w_words_per_tile(K), mem_bytes]."""
    w = np.asarray(w)
    K, N = w.shape
    C, G = cfg.cols, cfg.k_per_word
    NT, WT = ceil_div(N, C), cfg.w_words_per_tile(K)
    wp = np.zeros((WT * G, NT * C), np.uint8)
    wp[:K, :N] = w.astype(np.int64) & 0xFF
    return wp.reshape(WT * G, NT, C).transpose(1, 0, 2).reshape(NT * WT, G * C)


def pack_params(cfg: EngineConfig, bias, mult, shift, n):
    """Per column tile: cols int32 biases, cols uint32 (mult | shift << 16)."""
    C, NT, PW = cfg.cols, ceil_div(n, cfg.cols), cfg.param_words_per_tile
    b = np.zeros(NT * C, np.int64)
    q = np.zeros(NT * C, np.int64)
    b[:n] = np.broadcast_to(np.asarray(bias if bias is not None else 0, np.int64), (n,))
    q[:n] = (np.broadcast_to(np.asarray(mult, np.int64), (n,))
             | np.broadcast_to(np.asarray(shift, np.int64), (n,)) << 16)
    tiles = np.concatenate([b.astype("<i4").view(np.uint8).reshape(NT, 4 * C),
                            q.astype("<u4").view(np.uint8).reshape(NT, 4 * C)], axis=1)
    out = np.zeros((NT, PW * cfg.mem_bytes), np.uint8)
    out[:, :8 * C] = tiles
    return out.reshape(NT * PW, cfg.mem_bytes)


def unpack_out(cfg: EngineConfig, mem, out_base, out_stride, m, n, raw):
    """Read an [M, N] result (int8, or int32 with raw) from word memory `mem`."""
    seg, per_word, words = cfg.out_segment(raw)
    C = cfg.cols
    NT = ceil_div(n, C)
    out = np.zeros((m, NT * C), np.int64)
    for nt in range(NT):
        if words == 1:
            word, lane = nt // per_word, (nt % per_word) * seg
        else:
            word, lane = nt * words, 0
        flat = np.stack([mem[out_base + r * out_stride + word:
                             out_base + r * out_stride + word + words].reshape(-1)
                         for r in range(m)])
        seg_bytes = flat[:, lane:lane + seg]
        vals = seg_bytes.view("<i4" if raw else np.int8).astype(np.int64)
        out[:, nt * C:(nt + 1) * C] = vals
    return out[:, :n]


class MatmulLayout:
    """Operands of one matmul placed in a word memory, plus the engine command."""

    def __init__(self, cfg, a, w, bias, mult, shift, *, a_signed=True, raw=False,
                 base=0, a_pad=0, out_pad=0):
        a, w = np.asarray(a), np.asarray(w)
        M, K = a.shape
        N = w.shape[1]
        self.m, self.k, self.n, self.raw = M, K, N, raw
        self.a_stride = cfg.a_words_per_row(K) + a_pad
        self.out_stride = cfg.out_row_words(N, raw) + out_pad
        self.blobs = []
        addr = base
        self.a_base = addr
        self.blobs.append((addr, pack_a(cfg, a, self.a_stride)))
        addr += len(self.blobs[-1][1])
        self.w_base = addr
        self.blobs.append((addr, pack_w(cfg, w)))
        addr += len(self.blobs[-1][1])
        self.p_base = addr
        self.blobs.append((addr, pack_params(cfg, bias, mult, shift, N)))
        addr += len(self.blobs[-1][1])
        self.out_base = addr
        self.end = addr + M * self.out_stride
        self.command = dict(m=M, k=K, n=N, a_base=self.a_base, a_stride=self.a_stride,
                            w_base=self.w_base, p_base=self.p_base,
                            out_base=self.out_base, out_stride=self.out_stride,
                            a_signed=int(a_signed), raw_out=int(raw))

    def place(self, mem, fill=0xA5):
        """Write the operands into `mem` and fill the output area with `fill`."""
        for addr, blob in self.blobs:
            mem[addr:addr + len(blob)] = blob
        mem[self.out_base:self.end] = fill

    def output_mask(self, cfg, words):
        """Boolean [words, mem_bytes] mask of the bytes the engine must write."""
        mask = np.zeros((words, cfg.mem_bytes), bool)
        seg, per_word, nwords = cfg.out_segment(self.raw)
        esize = 4 if self.raw else 1
        for nt in range(-(-self.n // cfg.cols)):
            cols = min(cfg.cols, self.n - nt * cfg.cols)
            word, lane = (nt // per_word, (nt % per_word) * seg) if nwords == 1 else (nt * nwords, 0)
            for r in range(self.m):
                flat = mask[self.out_base + r * self.out_stride + word:][:nwords].reshape(-1)
                flat[lane:lane + cols * esize] = True
                mask[self.out_base + r * self.out_stride + word:][:nwords] = \
                    flat.reshape(nwords, cfg.mem_bytes)
        return mask

    def result(self, cfg, mem):
        return unpack_out(cfg, mem, self.out_base, self.out_stride, self.m, self.n, self.raw)


def place(cfg, mem, *args, **kwargs):
    lay = MatmulLayout(cfg, *args, **kwargs)
    lay.place(mem)
    return lay
