"""An independent scalar re-implementation of docs/numerics.md, checked bit for bit.

These functions were written from the document's formulas alone, with
Python ints one element at a time (no NumPy, no shared helpers), so an
ambiguity in the document or a divergence between it and
`gpt2accel.model.intmodel` shows up as a mismatch here.
"""
import math

import numpy as np
import pytest

from gpt2accel.model import intmodel as im
from gpt2accel.model import quant as Q


def rshift(x, s):
    """§1 round_shift: (x + 2^(s-1)) >> s, identity for s = 0."""
    return x if s == 0 else (x + (1 << (s - 1))) >> s


def sat(x, n):
    return max(-(1 << (n - 1)), min((1 << (n - 1)) - 1, x))


def requant(acc, mult, shift, bits):
    return sat(rshift(acc * mult, shift), bits)


# ----------------------------------------------------------------- §6 LayerNorm

def spec_layernorm(row, G, B, out_shift, eps_m, eps_e):
    n = len(row)
    total = sum(row)
    d = [n * x - total for x in row]
    span = n * (max(row) - min(row))
    k_min = -((31 - eps_e) // 2)                     # ceil((eps_e - 31) / 2)
    k = max(span.bit_length() - 15, k_min)
    ds = [di << -k if k < 0 else rshift(di, k) for di in d]
    S = sum(v * v for v in ds)
    a = eps_e - 2 * k
    eps = eps_m << a if a >= 0 else rshift(eps_m, -a)
    S2 = S + eps
    assert S2 < 1 << 48
    r = max(math.isqrt(S2), 1)
    inv = min(((1 << 36) + (r >> 1)) // r, (1 << 24) - 1)
    out = []
    for i, v in enumerate(ds):
        z = rshift(v * inv, 36 - 22)
        out.append(sat(rshift(z * int(G[i]) + int(B[i]), out_shift), 8))
    return out


@pytest.mark.parametrize("bits,n", [(16, 8), (24, 48), (12, 3)])
def test_layernorm_matches_spec(bits, n):
    rng = np.random.default_rng(bits * n)
    p = Q.layernorm_params(rng.normal(1, 0.3, n), rng.normal(0, 0.3, n), 1e-5,
                           10 ** rng.uniform(-5, -1), 0.03)
    lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    rows = rng.integers(lo, hi + 1, (6, n))
    rows[0, 0], rows[1] = lo, 3
    rows[2] = rng.integers(-2, 3, n)
    got = im.layernorm(rows, p.gamma, p.beta, p.out_shift, p.eps_m, p.eps_e, bits)
    for row, g in zip(rows, got):
        assert g.tolist() == spec_layernorm([int(x) for x in row], p.gamma, p.beta,
                                            p.out_shift, p.eps_m, p.eps_e)


# ----------------------------------------------------------------- §4 attention

def spec_head(q, k, v, score_mult, score_shift, out_mult, out_shift, tile, table, F, offset):
    """§4.1-4.5 for one head, one query row at a time."""
    out = []
    for i, qi in enumerate(q):
        pos = offset + i
        M, L, O = None, 0, [0] * len(v[0])
        for j0 in range(0, len(k), tile):
            keys = [j for j in range(j0, min(j0 + tile, len(k))) if j <= pos]
            if not keys:
                continue
            t = {}
            for j in keys:
                s = sum(int(a) * int(b) for a, b in zip(qi, k[j]))
                t[j] = sat(rshift(s * score_mult, score_shift), 24)
            m_tile = -((-max(t.values())) >> F)
            m_new = m_tile if M is None else max(M, m_tile)
            if M is not None:
                sh = min(m_new - M, 32)
                L = rshift(L, sh)
                O = [rshift(o, sh) for o in O]
            for j in keys:
                d = (m_new << F) - t[j]
                p = rshift(int(table[d & ((1 << F) - 1)]), min(d >> F, 9))
                L += p
                O = [o + p * int(vj) for o, vj in zip(O, v[j])]
            M = m_new
        e = L.bit_length()
        inv = ((1 << (e + 14)) + (L >> 1)) // L
        out.append([requant(rshift(o * inv, e + 14 - 8), out_mult, out_shift, 8) for o in O])
    return out


@pytest.mark.parametrize("tile,offset", [(4, 0), (3, 5), (64, 2)])
def test_attention_head_matches_spec(tile, offset):
    rng = np.random.default_rng(tile + offset)
    d, tq = 8, 9
    q = rng.integers(-128, 128, (tq, d)).astype(np.int8)
    k = rng.integers(-128, 128, (tq + offset, d)).astype(np.int8)
    v = rng.integers(-128, 128, (tq + offset, d)).astype(np.int8)
    q[0, :], k[0, :] = -128, -128       # the largest score
    F = 5
    table = Q.exp2_table(F)
    sm, ss = (int(x) for x in Q.mult_shift(0.02 * 0.02 / math.sqrt(d) / math.log(2) * 2 ** F))
    om, osh = (int(x) for x in Q.mult_shift(1.3 / 2 ** im.ATTN_AVG_FRAC))
    got = im.attention_head(q, k, v, sm, ss, om, osh, tile, table, F, offset)
    want = spec_head(q.tolist(), k.tolist(), v.tolist(), sm, ss, om, osh, tile, table, F,
                     offset)
    assert got.tolist() == want


def test_exp2_table_matches_spec():
    for F in (3, 6):
        assert Q.exp2_table(F).tolist() == [int(np.rint(255 * 2.0 ** (-f / 2 ** F)))
                                            for f in range(2 ** F)]


# ----------------------------------------------------------------- §7 embeddings, §8 head

def test_embed_and_lm_head_match_spec():
    rng = np.random.default_rng(2)
    wte = rng.integers(-128, 128, (10, 6)).astype(np.int8)
    wpe = rng.integers(-128, 128, (4, 6)).astype(np.int8)
    tm, ts = Q.mult_shift(10 ** rng.uniform(-2, 1, 10))
    pm, ps = Q.mult_shift(10 ** rng.uniform(-2, 1, 4))
    ids = [3, 9, 0, 3]
    got = im.embed(np.array(ids), np.arange(4), wte, tm, ts, wpe, pm, ps, 12)
    for p, (i, row) in enumerate(zip(ids, got)):
        want = [sat(requant(int(wte[i, c]) << 8, int(tm[i]), int(ts[i]), 12)
                    + requant(int(wpe[p, c]) << 8, int(pm[p]), int(ps[p]), 12), 12)
                for c in range(6)]
        assert row.tolist() == want
    h = rng.integers(-128, 128, (2, 6)).astype(np.int8)
    lm, ls = Q.mult_shift(10 ** rng.uniform(-1, 2, 10))
    logits = im.lm_head(h, wte, lm, ls, 16)
    for t in range(2):
        assert logits[t].tolist() == [
            requant(sum(int(h[t, e]) * int(wte[v, e]) for e in range(6)), int(lm[v]),
                    int(ls[v]), 16) for v in range(10)]
