"""The softmax unit against `intmodel.softmax_online`, bit for bit.

The unit's P tiles and deltas are applied to a random V exactly as the
attention loop does (O = round_shift(O, delta) + P @ V) and the resulting O,
L and M must equal the golden function's. Random idle cycles on both streams
and random row orders; one simulation per configuration runs many heads.
"""
import random

import numpy as np
import pytest

from gpt2accel.model import intmodel as im
from gpt2accel.model import quant
from gpt2accel.rtl.attention_config import AttentionConfig
from gpt2accel.rtl.config import ConfigError, EngineConfig
from gpt2accel.rtl.softmax import SoftmaxUnit
from gpt2accel.sim.harness.attention import accumulate_probs, run_softmax, softmax_beats

from attention_cases import KINDS, head_case, scores


# (config, d_head, cases): R = 1 exercises back-to-back rows with the same
# state index; lanes = 3 with tile = 5 leaves idle lanes; lanes = tile makes
# one beat per row; frac_bits = 3 uses a random (non-exp2) table.
CONFIGS = [
    (AttentionConfig(engine=EngineConfig(rows=2, cols=4), tile=4, lanes=2), 8, 28),
    (AttentionConfig(engine=EngineConfig(rows=1, cols=4), tile=5, lanes=3), 16, 20),
    (AttentionConfig(engine=EngineConfig(rows=4, cols=8), tile=8, lanes=8), 64, 16),
    (AttentionConfig(engine=EngineConfig(rows=3, cols=3), tile=3, lanes=1, frac_bits=3), 4, 20),
]


def _heads(rng, cfg, d, count):
    """count heads of every kind in turn, random sizes and query offsets."""
    heads = []
    for n in range(count):
        kind = KINDS[n % len(KINDS)]
        tq = int(rng.integers(1, 3 * cfg.rows + 1))
        offset = 0 if n % 3 == 0 else int(rng.integers(0, 3 * cfg.tile))
        tk = offset + tq
        if n % 4 == 3:
            tk = int(rng.integers(1, offset + tq + cfg.tile))  # keys beyond / before queries
        heads.append((kind, offset, *head_case(rng, kind, d, tq, tk)))
    return heads


def _check(cfg, heads, seed, stall, table):
    rng = random.Random(seed)
    beats, spans = [], []
    for kind, offset, q, k, v, mult, shift in heads:
        b, rows = softmax_beats(cfg, scores(q, k), offset, mult, shift, rng=rng)
        spans.append((len(beats), len(b), rows))
        beats += b
    probs, _ = run_softmax(cfg, beats, seed=seed, stall=stall, table=table)
    for (kind, offset, q, k, v, mult, shift), (start, n, rows) in zip(heads, spans):
        o, l_sum, m = accumulate_probs(cfg, probs[start:start + n], rows, v, q.shape[0])
        t = im.attention_scores(q, k, mult, shift)
        o_ref, l_ref, m_ref = im.softmax_online(t, v, cfg.tile, table, cfg.frac_bits, offset)
        seen = (np.arange(k.shape[0])[None, :] <= offset + np.arange(q.shape[0])[:, None]).any(1)
        what = (f"{kind} head tq={q.shape[0]} tk={k.shape[0]} offset={offset} "
                f"mult={mult} shift={shift} (GPT2ACCEL_SEED={seed})")
        np.testing.assert_array_equal(l_sum, l_ref, err_msg=f"L: {what}")
        np.testing.assert_array_equal(m[seen], m_ref[seen], err_msg=f"M: {what}")
        np.testing.assert_array_equal(o, o_ref, err_msg=f"O: {what}")
    return probs


@pytest.mark.parametrize("cfg,d,count", CONFIGS,
                         ids=[f"r{c.rows}_t{c.tile}_l{c.lanes}_f{c.frac_bits}" for c, *_ in CONFIGS])
def test_softmax_matches_golden_with_stalls(cfg, d, count, seed):
    rng = np.random.default_rng([seed, cfg.rows, cfg.tile, cfg.lanes])
    if cfg.frac_bits == 6:
        table = quant.exp2_table(6)
    else:
        table = rng.integers(0, 256, 1 << cfg.frac_bits).astype(np.uint8)
        table[0] = 255
    _check(cfg, _heads(rng, cfg, d, count), seed, 0.3, table)


def test_softmax_extremes(seed):
    """Hand-made rows: t = +-2^23 exactly, a causal first row, and a max that
    climbs by far more than 32 units per tile, with every probability checked."""
    cfg = AttentionConfig(engine=EngineConfig(rows=2, cols=4), tile=4, lanes=4)
    d = 2
    # saturating: S = +-2^15 * 2 with mult 2^15 - 1, shift 0 -> t = +-2^23 clamps
    q = np.array([[127, 127], [-128, -128], [127, -128]])
    k = np.array([[127, 127], [-128, -128], [127, 127], [1, 0], [0, 0], [-128, 127],
                  [127, 127], [0, 1]])
    v = np.array([[127, -128]] * 8)
    heads = [("saturate", 0, q, k, v, (1 << 15) - 1, 0),
             ("saturate", 5, q, k, v, (1 << 15) - 1, 0),
             ("climb", 4, np.array([[1, 0]] * 4), np.array([[j * 16, 0] for j in range(8)]),
              np.array([[j, -j] for j in range(8)]), 1 << 14, 0)]
    probs = _check(cfg, heads, seed, 0.3, quant.exp2_table(6))
    # the extremes really happened: a clamped rescale (delta = 32) and logits
    # saturated at both ends
    assert max(b["delta"] for b in probs) == 32
    t = im.attention_scores(q, k, (1 << 15) - 1, 0)
    assert t.max() == (1 << 23) - 1 and t.min() == -(1 << 23)


def test_softmax_timing():
    """No stalls: one beat per cycle in and out, and exactly `latency` cycles
    from a row's last score beat to its first probability beat."""
    cfg = AttentionConfig(engine=EngineConfig(rows=2, cols=4), tile=8, lanes=2)
    rng = np.random.default_rng(7)
    s = rng.integers(-1 << 20, 1 << 20, (6, 24))
    beats, rows = softmax_beats(cfg, s, 30, 1000, 12)
    probs, st = run_softmax(cfg, beats)
    bpr = cfg.beats_per_row
    assert st["in_cycles"] == list(range(len(beats)))
    first_out = st["out_cycles"][0]
    assert st["out_cycles"] == list(range(first_out, first_out + len(beats)))
    for n in range(len(rows)):
        assert st["out_cycles"][n * bpr] - st["in_cycles"][n * bpr + bpr - 1] == SoftmaxUnit.latency


@pytest.mark.parametrize("kwargs,needle", [
    (dict(lanes=0), "lanes=0"), (dict(tile=4, lanes=5), "lanes=5"),
    (dict(frac_bits=11), "frac_bits=11"), (dict(max_seq=0), "max_seq=0"),
    (dict(engine=8), "engine must be"),
])
def test_attention_config_rejects(kwargs, needle):
    with pytest.raises(ConfigError, match=needle):
        AttentionConfig(**kwargs)


def test_softmax_rejects_bad_table():
    with pytest.raises(ValueError, match="exp2 table"):
        SoftmaxUnit(AttentionConfig(), table=[255] * 63)


@pytest.mark.slow
@pytest.mark.parametrize("cfg,d,count", CONFIGS,
                         ids=[f"r{c.rows}_t{c.tile}_l{c.lanes}_f{c.frac_bits}" for c, *_ in CONFIGS])
def test_softmax_soak(cfg, d, count, seed):
    """Ten times the default number of heads, heavier stalls."""
    rng = np.random.default_rng([seed, cfg.rows, cfg.tile, cfg.lanes, 2])
    table = quant.exp2_table(cfg.frac_bits)
    _check(cfg, _heads(rng, cfg, d, 10 * count), seed, 0.5, table)
