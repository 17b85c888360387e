"""The vector mover (rtl/vecmove.py) alone: every vector instruction against the
integer golden model under random memory stalls and latency jitter, on words
of 8, 16 and 24 bytes (2, 4 and 6 lanes; row lengths that leave a partial last
group), writing exactly the destination's bytes; and, stall-free, its cycles
equal to `vector_cycles` (the exact replay of its issuer and assembler).
GPT2ACCEL_SEED replays.
"""
from dataclasses import replace

import numpy as np
import pytest

from gpt2accel.model import intmodel as im
from gpt2accel.model import intops
from gpt2accel.rtl.attention_config import AttentionConfig
from gpt2accel.rtl.config import EngineConfig
from gpt2accel.rtl.isa import Op
from gpt2accel.rtl.isa import wte_tile_cols
from gpt2accel.rtl.vecmove import VectorMover
from gpt2accel.sim.cycles.program import vector_cycles
from gpt2accel.sim.harness.vector import run_vector
from gpt2accel.sim.host.matmul_layout import pack_w

from units_cases import layernorm_params, layernorm_rows

R = 12          # residual width: saturation is reachable from int16 storage


def _cfg(cols, mem_bytes, max_outstanding=8):
    return AttentionConfig(engine=EngineConfig(rows=2, cols=cols, mem_bytes=mem_bytes,
                                               max_k=128, max_m=8, max_n=256, addr_bits=14,
                                               max_outstanding=max_outstanding),
                           tile=4, lanes=1, norm_lanes=1, max_d_head=8, max_seq=16)


class _Image:
    """A word memory with regions placed one after another (each starts a word)."""

    def __init__(self, mb, words=3000):
        self.mb, self.mem, self.end = mb, np.zeros((words, mb), np.uint8), 1

    def put(self, arr, dtype, stride_words=None):
        a = np.atleast_2d(np.asarray(arr).astype(dtype))
        row = a[0].tobytes()
        sw = stride_words or -(-len(row) // self.mb) + 1      # a spare word between rows
        base = self.end
        for r, vals in enumerate(a):
            b = vals.tobytes()
            flat = self.mem[base + r * sw:].reshape(-1)
            flat[:len(b)] = np.frombuffer(b, np.uint8)
        self.end = base + len(a) * sw + 1
        return base, sw

    def put_words(self, words):
        base = self.end
        self.mem[base:base + len(words)] = words
        self.end = base + len(words) + 1
        return base

    def get(self, mem, base, sw, rows, n, dtype):
        size = np.dtype(dtype).itemsize
        return np.stack([np.frombuffer(mem[base + r * sw:].reshape(-1)[:n * size].tobytes(),
                                       dtype) for r in range(rows)])


def _q(mult, shift):
    return (np.asarray(mult, np.uint32) | (np.asarray(shift, np.uint32) << 16))


def _cases(cfg, rng):
    """(commands, image, checks): one of each instruction; checks = [(name, base, stride,
    rows, n, dtype, want)]."""
    mb = cfg.engine.mem_bytes
    img = _Image(mb)
    cmds, checks = [], []
    rows = int(rng.integers(2, 5))
    # LAYERNORM
    n = int(rng.integers(5, 40))
    gamma, beta, out_shift, eps_m, eps_e = layernorm_params(rng, n, "typical")
    x = layernorm_rows(rng, n, R)[:rows]
    xb, xs = img.put(x, np.int16)
    gb, _ = img.put(gamma, np.int16)
    bb, _ = img.put(beta, np.int64)
    db, ds = img.put(np.zeros((rows, n)), np.int8)
    cmds.append((Op.LAYERNORM, dict(rows=rows, n=n, src_base=xb, src_stride=xs, dst_base=db,
                                    dst_stride=ds, gamma_base=gb, beta_base=bb,
                                    out_shift=out_shift, eps_m=eps_m, eps_e=eps_e)))
    checks.append(("layernorm", db, ds, rows, n, np.int8,
                   im.layernorm(x, gamma, beta, out_shift, eps_m, eps_e, R)))
    # GELU
    n = int(rng.integers(3, 70))
    table = rng.integers(-128, 128, 256)
    x = rng.integers(-128, 128, (rows, n))
    tb, _ = img.put(table, np.int8)
    xb, xs = img.put(x, np.int8)
    db, ds = img.put(np.zeros((rows, n)), np.int8)
    cmds.append((Op.GELU, dict(rows=rows, n=n, src_base=xb, src_stride=xs, dst_base=db,
                               dst_stride=ds, table_base=tb)))
    checks.append(("gelu", db, ds, rows, n, np.int8, im.gelu(x, table)))
    # RESADD in place (dst = src), then REQUANT
    lo, hi = -(1 << (R - 1)), (1 << (R - 1)) - 1
    for op in (Op.RESADD, Op.REQUANT):
        n = int(rng.integers(3, 30))
        x = rng.integers(lo, hi + 1, (rows, n))
        y = rng.integers(-(1 << 31), 1 << 31, (rows, n))
        mult, shift = rng.integers(0, 1 << 15, n), rng.integers(10, 48, n)
        xb, xs = img.put(x, np.int16)
        yb, ys = img.put(y, np.int32)
        qb, _ = img.put(_q(mult, shift), np.uint32)
        req = intops.requantize(y, mult, shift, R)
        if op == Op.RESADD:
            db, ds, want = xb, xs, im.residual_add(x, req, R)
        else:
            (db, ds), want = img.put(np.zeros((rows, n)), np.int16), req
        cmds.append((op, dict(rows=rows, n=n, src_base=xb, src_stride=xs, dst_base=db,
                              dst_stride=ds, y_base=yb, y_stride=ys, q_base=qb)))
        checks.append((op.name.lower(), db, ds, rows, n, np.int16, want))
    # EMBED at a position other than 0
    n, vocab, npos = int(rng.integers(3, 40)), int(rng.integers(9, 20)), 16
    pos0 = int(rng.integers(0, npos - rows + 1))
    ids = rng.integers(0, vocab, rows)
    wte = rng.integers(-128, 128, (vocab, n))
    wpe = rng.integers(-128, 128, (npos, n))
    tm, ts = rng.integers(0, 1 << 15, vocab), rng.integers(0, 30, vocab)
    pm, ps = rng.integers(0, 1 << 15, npos), rng.integers(0, 30, npos)
    ib, _ = img.put(ids, np.uint32)
    # the token table in W tiles of `wte_tile_cols` tokens, as the LM head reads it
    te = replace(cfg.engine, cols=wte_tile_cols(mb, cfg.engine.cols))
    teb, tes = img.put_words(pack_w(te, wte.T)), te.w_words_per_tile(n)
    tqb, _ = img.put(_q(tm, ts), np.uint32)
    peb, pes = img.put(wpe, np.int8)
    pqb, _ = img.put(_q(pm, ps), np.uint32)
    db, ds = img.put(np.zeros((rows, n)), np.int16)
    cmds.append((Op.EMBED, dict(rows=rows, n=n, src_base=ib, src_stride=0, dst_base=db,
                                dst_stride=ds, pos0=pos0, wte_base=teb, wte_stride=tes,
                                wte_q_base=tqb, wpe_base=peb, wpe_stride=pes, wpe_q_base=pqb)))
    checks.append(("embed", db, ds, rows, n, np.int16,
                   im.embed(ids, pos0 + np.arange(rows), wte, tm, ts, wpe, pm, ps, R)))
    return cmds, img, checks


def _check(cfg, mem, img, checks, written, seed):
    mb = cfg.engine.mem_bytes
    expect = np.zeros(img.mem.shape, bool)
    for name, base, sw, rows, n, dtype, want in checks:
        got = img.get(mem, base, sw, rows, n, dtype)
        assert np.array_equal(got, want), (f"{name} on {mb}-byte words: "
                                           f"{np.argwhere(got != want)[:4].tolist()} "
                                           f"(GPT2ACCEL_SEED={seed})")
        size = np.dtype(dtype).itemsize
        for r in range(rows):
            expect[base + r * sw:].reshape(-1)[:n * size] = True
    assert np.array_equal(written, expect), f"stray or missing writes (GPT2ACCEL_SEED={seed})"


# cols 8: a group's table elements in two words; 4 and 12: in one (12 keeps a
# table of 4-token tiles of its own); 2 and 1: in a half and a quarter of one
@pytest.mark.parametrize("cols,mem_bytes", [(4, 8), (8, 16), (12, 24), (2, 8)])
def test_every_instruction_under_stalls(cols, mem_bytes, seed):
    cfg = _cfg(cols, mem_bytes, max_outstanding=3)
    rng = np.random.default_rng([seed, mem_bytes])
    cmds, img, checks = _cases(cfg, rng)
    mem, _, written = run_vector(cfg, cmds, img.mem, resid_bits=R, seed=seed, stall=0.3,
                                 jitter=4, with_written=True)
    _check(cfg, mem, img, checks, written, seed)


@pytest.mark.parametrize("cols,mem_bytes,mo", [(4, 8, 8), (8, 16, 2), (12, 24, 5), (1, 8, 3)])
def test_cycles_equal_the_model(cols, mem_bytes, mo, seed):
    """Stall-free, every instruction's accept-to-done cycles equal `vector_cycles`
    (max_outstanding 2 keeps the issuer waiting for responses)."""
    cfg = _cfg(cols, mem_bytes, max_outstanding=mo)
    rng = np.random.default_rng([seed, mem_bytes, 1])
    cmds, img, checks = _cases(cfg, rng)
    mem, cycles, written = run_vector(cfg, cmds, img.mem, resid_bits=R, with_written=True)
    _check(cfg, mem, img, checks, written, seed)
    want = [vector_cycles(cfg, op, f) for op, f in cmds]
    assert cycles == want, f"RTL {cycles}, model {want} (GPT2ACCEL_SEED={seed})"


def test_refuses_words_too_narrow_for_beta():
    with pytest.raises(ValueError, match="mem_bytes must be a multiple of 4 and >= 8, got 4"):
        VectorMover(_cfg(2, 4))
    with pytest.raises(ValueError, match="resid_bits"):
        VectorMover(_cfg(4, 8), resid_bits=17)
