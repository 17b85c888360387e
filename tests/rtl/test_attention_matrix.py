"""The issue's verification matrix: the attention engine against
`intmodel.attention_head` (per head) and the multi-head `intmodel.attention`
(with a KV cache: prefill then decode), bit for bit, random memory stalls.

Default run: every d_head in {16, 32, 64} and every n_head in {1, 2, 4, 12}
appears at least once, with short sequences on a 4x4 array (tile = two
column tiles, blocks of four row blocks), prefill (offset 0: row 0 sees one
key, so all-masked-but-one rows are always present) and decode, and the
extreme score patterns of `attention_cases.KINDS` (all-equal, one dominant,
saturating, growing / shrinking max, zero multiplier) spread over the heads.
`-m slow`: T up to 128, d_head 64, 12 heads on an 8x8 array (blocks of four
array row blocks, tiles of 16 keys: diagonal tiles skip row blocks).

Seeds are printed; GPT2ACCEL_SEED=<seed> replays a run.
"""
import numpy as np
import pytest

from gpt2accel.model import intmodel as im
from gpt2accel.model import quant
from gpt2accel.model.gpt2 import KVCache
from gpt2accel.model.quant import QAttention
from gpt2accel.rtl.attention_config import AttentionConfig
from gpt2accel.rtl.config import EngineConfig
from gpt2accel.sim.host.attention_layout import AttentionLayout
from gpt2accel.sim.harness.attention import simulate_attention

from attention_cases import KINDS, head_case

SMALL = AttentionConfig(engine=EngineConfig(rows=4, cols=4, mem_bytes=16), tile=8, lanes=4,
                        norm_lanes=4, max_d_head=64, max_seq=64, block_rows=16)
BIG = AttentionConfig(engine=EngineConfig(rows=8, cols=8, mem_bytes=32), tile=16, lanes=8,
                      norm_lanes=4, max_d_head=64, max_seq=128, block_rows=32)


def _params(rng):
    """(score_mult, score_shift, out_mult, out_shift): outputs mostly in range."""
    return (int(rng.integers(1 << 12, 1 << 15)), int(rng.integers(8, 16)),
            int(rng.integers(1 << 13, 1 << 15)), int(rng.integers(20, 24)))


def _command(rng, H, d, tq, offset, first_kind):
    """Per-head inputs, head h of kind KINDS[first_kind + h]; shared layer parameters."""
    qs, ks, vs = [], [], []
    params = _params(rng)
    for h in range(H):
        kind = KINDS[(first_kind + h) % len(KINDS)]
        q, k, v, mult, shift = head_case(rng, kind, d, tq, offset + tq)
        qs.append(q), ks.append(k), vs.append(v)
        if h == 0 and kind in ("saturate", "growing", "zero_mult"):
            params = (mult, shift) + params[2:]
    return np.array(qs), np.array(ks), np.array(vs), offset, params


def _reference(cfg, q, k, v, offset, params):
    table = quant.exp2_table(cfg.frac_bits)
    return np.concatenate([im.attention_head(q[h], k[h], v[h], *params, cfg.tile, table,
                                             cfg.frac_bits, offset)
                           for h in range(q.shape[0])], axis=1)


def _run(cfg, commands, seed, rng, stall=0.3):
    lays, base = [], 0
    for q, k, v, offset, params in commands:
        lay = AttentionLayout(cfg, q, k, v, offset, *params, base=base,
                              pad=int(rng.integers(0, 2)), rng=rng)
        lays.append(lay)
        base = lay.end + int(rng.integers(0, 3))
    mem, cycles, _ = simulate_attention(cfg, lays, base + 1, seed=seed, stall=stall, jitter=3)
    return lays, mem


def _check(lays, mem, wants, whats, seed):
    for lay, want, what in zip(lays, wants, whats):
        got, untouched = lay.result(mem)
        np.testing.assert_array_equal(got, want, err_msg=f"{what} (GPT2ACCEL_SEED={seed})")
        assert untouched, f"bytes outside the output were written: {what} (GPT2ACCEL_SEED={seed})"
        assert lay.virtual_untouched(mem), f"S/PV writes reached memory: {what}"


def _matrix(cfg, shapes, seed, salt):
    """One simulation running the commands `shapes` = [(H, d, tq, offset)] back to back."""
    rng = np.random.default_rng([seed, salt])
    commands = [_command(rng, H, d, tq, offset, n) for n, (H, d, tq, offset) in
                enumerate(shapes)]
    lays, mem = _run(cfg, commands, seed, rng)
    _check(lays, mem, [_reference(cfg, *c) for c in commands],
           [f"H={H} D={d} tq={tq} offset={offset} kinds from {KINDS[n % len(KINDS)]}"
            for n, (H, d, tq, offset) in enumerate(shapes)], seed)


def _chain(cfg, H, d, steps, seed, salt):
    """Prefill of steps[0] tokens, then decode steps, against `intmodel.attention`
    with a KVCache (the multi-head entry point), run back to back on one engine."""
    rng = np.random.default_rng([seed, salt])
    params = _params(rng)
    qa = QAttention(*params)
    table = quant.exp2_table(cfg.frac_bits)
    cache = KVCache(1)
    commands, wants = [], []
    for tq in steps:
        qkv = rng.integers(-128, 128, (tq, 3 * H * d)).astype(np.int8)
        offset = cache.length
        wants.append(im.attention(qkv, H, qa, cfg.tile, table, cfg.frac_bits, cache=cache))
        q = qkv[:, :H * d].reshape(tq, H, d).transpose(1, 0, 2)
        commands.append((q, cache.k[0].copy(), cache.v[0].copy(), offset, params))
    lays, mem = _run(cfg, commands, seed, rng)
    _check(lays, mem, wants, [f"H={H} D={d} step {n} tq={tq}" for n, tq in enumerate(steps)],
           seed)


def test_matrix_heads_and_dims(seed):
    """d_head 16 / 32 / 64 and n_head 1 / 2 / 4 / 12, prefill and decode, one simulation."""
    _matrix(SMALL, [(4, 16, 12, 0),     # prefill, 4 heads: tile 1 skips 2 array row blocks
                    (2, 32, 1, 11),     # decode at position 11 (two key tiles)
                    (1, 64, 5, 3),      # a partial block continuing a cache
                    (12, 16, 1, 6),     # decode, 12 heads
                    (12, 64, 2, 17)],   # GPT-2-small head geometry, 2 queries into a cache
            seed, 1)


def test_matrix_multihead_prefill_then_decode(seed):
    """`intmodel.attention` with a KV cache: 4 heads of 16, prefill 9 then 2 decode steps."""
    _chain(SMALL, 4, 16, [9, 1, 1], seed, 2)


@pytest.mark.slow
@pytest.mark.parametrize("shapes", [
    [(12, 64, 128, 0)],                              # GPT-2-small heads, T = 128 prefill
    [(12, 64, 1, 127), (4, 32, 37, 90), (2, 16, 100, 0), (1, 64, 1, 0)],
], ids=["prefill128_h12_d64", "mixed"])
def test_matrix_large(shapes, seed):
    _matrix(BIG, shapes, seed, len(shapes))


@pytest.mark.slow
def test_matrix_large_chain(seed):
    """12 heads of 64 through `intmodel.attention`: prefill 70, then decode to 73."""
    _chain(BIG, 12, 64, [70, 1, 1, 1], seed, 3)


@pytest.mark.slow
def test_matrix_random_shapes(seed):
    """Random T <= 128, d_head, n_head and offsets (prefill or decode)."""
    rng = np.random.default_rng([seed, 4])
    shapes = []
    for n in range(4):
        tq = int(rng.integers(1, 129)) if n % 2 == 0 else 1
        offset = 0 if n % 2 == 0 else int(rng.integers(0, 128))
        shapes.append((int(rng.choice([1, 2, 4, 12])), int(rng.choice([16, 32, 64])),
                       tq, offset))
    print("shapes", shapes)
    _matrix(BIG, shapes, seed, 5)
