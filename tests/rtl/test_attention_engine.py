"""The whole attention engine (controller + matmul engine + softmax + normaliser)
against `intmodel.attention_head` / `attention`, bit for bit, with random stalls
on the memory port; and the cycle model against the RTL.

One simulation per configuration runs several commands back to back.
"""
import numpy as np
import pytest

from gpt2accel.model import intmodel as im
from gpt2accel.model import quant
from gpt2accel.model.gpt2 import KVCache
from gpt2accel.model.quant import QAttention
from gpt2accel.rtl.attention_config import AttentionConfig
from gpt2accel.rtl.config import ConfigError, EngineConfig
from gpt2accel.sim.cycles.attention import attention_cycles
from gpt2accel.sim.host.attention_layout import AttentionLayout
from gpt2accel.sim.harness.attention import simulate_attention

from attention_cases import KINDS, head_case

# tile < cols, tile = cols, tile = 2.5 column tiles; R = 1 (decode-shaped) with
# two raw segments per word (partial-word PV writes);
# D not a multiple of the int32 per word (partial last O word); lanes and
# norm_lanes from 1 to a whole word; a block of two array row blocks.
CONFIGS = [
    AttentionConfig(engine=EngineConfig(rows=2, cols=2, mem_bytes=8), tile=4, lanes=2,
                    norm_lanes=2, max_d_head=8, max_seq=32),
    AttentionConfig(engine=EngineConfig(rows=3, cols=2, mem_bytes=8), tile=5, lanes=1,
                    norm_lanes=1, max_d_head=6, max_seq=32),
    AttentionConfig(engine=EngineConfig(rows=2, cols=4, mem_bytes=16), tile=4, lanes=4,
                    norm_lanes=2, max_d_head=12, max_seq=32, block_rows=4),
    AttentionConfig(engine=EngineConfig(rows=1, cols=1, mem_bytes=8), tile=2, lanes=1,
                    norm_lanes=1, max_d_head=4, max_seq=32),
    # blocks of four array row blocks, tiles of 3 keys: diagonal tiles skip
    # 1..3 array row blocks at the top of the block
    AttentionConfig(engine=EngineConfig(rows=2, cols=2, mem_bytes=8), tile=3, lanes=1,
                    norm_lanes=2, max_d_head=8, max_seq=40, block_rows=8),
]
IDS = [f"{c.engine.rows}x{c.engine.cols}_b{c.rows}_t{c.tile}_l{c.lanes}_n{c.norm_lanes}"
       for c in CONFIGS]


def _params(rng):
    """(score_mult, score_shift, out_mult, out_shift): outputs mostly in range."""
    return (int(rng.integers(1 << 12, 1 << 15)), int(rng.integers(8, 16)),
            int(rng.integers(1 << 13, 1 << 15)), int(rng.integers(20, 24)))


def _random_command(rng, cfg, n):
    """Heads of one command: a test-case kind per head, shared layer parameters."""
    H = int(rng.integers(1, 4))
    d = cfg.norm_lanes * int(rng.integers(1, cfg.max_d_head // cfg.norm_lanes + 1))
    tq = int(rng.integers(1, 2 * cfg.rows + 2))
    offset = [0, int(rng.integers(0, 2 * cfg.tile + 1)), 3 * cfg.tile - 1][n % 3]
    tk = offset + tq
    qs, ks, vs = [], [], []
    params = _params(rng)
    for h in range(H):
        q, k, v, mult, shift = head_case(rng, KINDS[(n + h) % len(KINDS)], d, tq, tk)
        qs.append(q), ks.append(k), vs.append(v)
        if h == 0 and KINDS[n % len(KINDS)] in ("saturate", "growing", "zero_mult"):
            params = (mult, shift) + params[2:]
    return np.array(qs), np.array(ks), np.array(vs), offset, params


def _reference(cfg, q, k, v, offset, params):
    sm, ss, om, os_ = params
    table = quant.exp2_table(cfg.frac_bits)
    return np.concatenate([im.attention_head(q[h], k[h], v[h], sm, ss, om, os_, cfg.tile,
                                             table, cfg.frac_bits, offset)
                           for h in range(q.shape[0])], axis=1)


def _run(cfg, commands, seed, stall, rng):
    """Every other command has its heads packed in Q rows as c_attn writes them
    (heads narrower than a word, or starting inside one)."""
    lays, base = [], 0
    for n, (q, k, v, offset, params) in enumerate(commands):
        lay = AttentionLayout(cfg, q, k, v, offset, *params, base=base,
                              pad=int(rng.integers(0, 2)) if stall else 0, rng=rng,
                              packed=n % 2 == 1)
        lays.append(lay)
        base = lay.end + (int(rng.integers(0, 3)) if stall else 0)
    mem, cycles, _ = simulate_attention(cfg, lays, base + 1, seed=seed, stall=stall,
                                        jitter=3 if stall else 0)
    return lays, mem, cycles


@pytest.mark.parametrize("cfg", CONFIGS, ids=IDS)
def test_attention_matches_golden_with_stalls(cfg, seed):
    rng = np.random.default_rng([seed, cfg.rows, cfg.engine.cols, cfg.tile])
    commands = [_random_command(rng, cfg, n) for n in range(6)]
    lays, mem, _ = _run(cfg, commands, seed, 0.3, rng)
    for n, (lay, (q, k, v, offset, params)) in enumerate(zip(lays, commands)):
        got, untouched = lay.result(mem)
        want = _reference(cfg, q, k, v, offset, params)
        what = (f"command {n}: H={q.shape[0]} tq={q.shape[1]} D={q.shape[2]} offset={offset} "
                f"params={params} (GPT2ACCEL_SEED={seed})")
        np.testing.assert_array_equal(got, want, err_msg=what)
        assert untouched, f"bytes outside the output were written: {what}"
        assert lay.virtual_untouched(mem), f"S/PV writes reached memory: {what}"


@pytest.mark.parametrize("cfg", CONFIGS, ids=IDS)
def test_cycle_model_matches_rtl(cfg, seed):
    """Stall-free runs take exactly the cycles `attention_cycles` predicts."""
    rng = np.random.default_rng([seed, cfg.rows, cfg.engine.cols, cfg.tile, 1])
    commands = [_random_command(rng, cfg, n) for n in range(3)]
    lays, mem, cycles = _run(cfg, commands, seed, 0.0, rng)
    for lay, got, (q, k, v, offset, params) in zip(lays, cycles, commands):
        np.testing.assert_array_equal(lay.result(mem)[0], _reference(cfg, q, k, v, offset, params))
        H, tq, d = q.shape
        qhb = lay.command["q_head_bytes"]
        want = attention_cycles(cfg, H, d, tq, offset, q_head_bytes=qhb,
                                k_tile_stride=lay.command["k_tile_stride"]).cycles
        assert got == want, (f"H={H} tq={tq} D={d} offset={offset} q_head_bytes={qhb}: "
                             f"RTL {got} cycles, "
                             f"model {want} (GPT2ACCEL_SEED={seed})")


def test_kv_cache_prefill_then_decode(seed):
    """A prefill of 5 tokens, then 3 decode steps against the KV cache in memory,
    equal `intmodel.attention` run with a `KVCache` (the multi-head entry point)."""
    cfg = CONFIGS[0]
    rng = np.random.default_rng([seed, 99])
    H, d = 2, 4
    sm, ss, om, os_ = _params(rng)
    qa = QAttention(sm, ss, om, os_)
    table = quant.exp2_table(cfg.frac_bits)
    cache = KVCache(1)
    steps = [5, 1, 1, 1]
    commands, wants = [], []
    for tq in steps:
        qkv = rng.integers(-128, 128, (tq, 3 * H * d)).astype(np.int8)
        offset = cache.length
        want = im.attention(qkv, H, qa, cfg.tile, table, cfg.frac_bits, cache=cache)
        q = qkv[:, :H * d].reshape(tq, H, d).transpose(1, 0, 2)
        commands.append((q, cache.k[0].copy(), cache.v[0].copy(), offset, (sm, ss, om, os_)))
        wants.append(want)
    lays, mem, _ = _run(cfg, commands, seed, 0.2, rng)
    for n, (lay, want) in enumerate(zip(lays, wants)):
        got, untouched = lay.result(mem)
        np.testing.assert_array_equal(got, want, err_msg=f"step {n} (GPT2ACCEL_SEED={seed})")
        assert untouched


@pytest.mark.parametrize("cfg,geoms", [
    (CONFIGS[1], [(3, 3), (3, 5), (4, 6)]),      # 8-byte words: b_h 0,3,6 / 0,5,2 / 0,6,4,2
    (CONFIGS[2], [(3, 6), (3, 10), (2, 12)]),    # 16-byte words: 0,6,12 / 0,10,4 / 0,12
], ids=["8B", "16B"])
def test_heads_packed_in_words(cfg, geoms, seed):
    """Heads narrower than a word and heads starting inside one (Q rows packed as
    c_attn writes them): bit-exact with random stalls, and exactly the cycles of
    the model, whose S commands read each head from its word (k = b_h + D)."""
    rng = np.random.default_rng([seed, 7, cfg.engine.mem_bytes])
    commands = []
    for n, (H, d) in enumerate(geoms):
        tq = int(rng.integers(1, 2 * cfg.rows + 2))
        offset = [0, int(rng.integers(1, 2 * cfg.tile + 1)), cfg.tile - 1][n]
        heads = [head_case(rng, "random", d, tq, offset + tq) for _ in range(H)]
        commands.append(tuple(np.array([c[i] for c in heads]) for i in range(3))
                        + (offset, _params(rng)))
    for stall in (0.3, 0.0):
        lays = []
        base = 0
        for q, k, v, offset, params in commands:
            lays.append(AttentionLayout(cfg, q, k, v, offset, *params, base=base, rng=rng,
                                        pad=int(stall > 0), packed=True))
            base = lays[-1].end
        mem, cycles, _ = simulate_attention(cfg, lays, base + 1, seed=seed, stall=stall,
                                            jitter=3 if stall else 0)
        for lay, got, (q, k, v, offset, params) in zip(lays, cycles, commands):
            H, tq, d = q.shape
            what = f"H={H} D={d} tq={tq} offset={offset} stall={stall} (GPT2ACCEL_SEED={seed})"
            assert lay.command["q_head_bytes"] == d % cfg.engine.mem_bytes, what
            res, untouched = lay.result(mem)
            np.testing.assert_array_equal(res, _reference(cfg, q, k, v, offset, params),
                                          err_msg=what)
            assert untouched and lay.virtual_untouched(mem), what
            if not stall:
                want = attention_cycles(cfg, H, d, tq, offset, q_head_bytes=d % cfg.engine.mem_bytes,
                                        k_tile_stride=lay.command["k_tile_stride"])
                assert got == want.cycles, f"{what}: RTL {got} cycles, model {want.cycles}"


@pytest.mark.parametrize("kwargs,needle", [
    (dict(engine=EngineConfig(rows=2, cols=3, mem_bytes=6)), "multiple of 4"),
    (dict(engine=EngineConfig(rows=2, cols=2, mem_bytes=12)), "divide one another"),
    (dict(engine=EngineConfig(rows=2, cols=2, mem_bytes=8), lanes=4, tile=4), "lanes=4"),
    (dict(engine=EngineConfig(rows=2, cols=2, mem_bytes=8), norm_lanes=4, max_d_head=8),
     "norm_lanes=4"),
    (dict(engine=EngineConfig(rows=2, cols=2, mem_bytes=8, max_k=16), max_d_head=32), "max_k"),
    (dict(engine=EngineConfig(rows=2, cols=2, mem_bytes=8), block_rows=3), "block_rows=3"),
])
def test_engine_config_rejects(kwargs, needle):
    with pytest.raises(ConfigError, match=needle):
        AttentionConfig(**kwargs).check_engine()


def test_cycle_model_normaliser_regimes(seed):
    """Rows shorter and longer than the divider period (11 cycles): the model
    follows the divider-bound and the stream-bound normalise phase exactly."""
    cfg = AttentionConfig(engine=EngineConfig(rows=4, cols=2, mem_bytes=8), tile=4, lanes=1,
                          norm_lanes=1, max_d_head=40, max_seq=32)
    rng = np.random.default_rng([seed, 5])
    commands = []
    # (40, 8, 0), (12, 8, 3): the normalise phase outlasts the next block's
    # first S command, so that block's softmax waits for it
    for d, tq, offset in [(2, 4, 0), (10, 4, 0), (11, 4, 0), (12, 4, 1), (40, 4, 0),
                          (40, 8, 0), (12, 8, 3)]:
        q, k, v, _, _ = head_case(rng, "random", d, tq, offset + tq)
        commands.append((q[None], k[None], v[None], offset, _params(rng)))
    lays, mem, cycles = _run(cfg, commands, seed, 0.0, rng)
    for lay, got, (q, k, v, offset, params) in zip(lays, cycles, commands):
        np.testing.assert_array_equal(lay.result(mem)[0], _reference(cfg, q, k, v, offset, params))
        assert got == attention_cycles(cfg, 1, q.shape[2], q.shape[1], offset,
                                       k_tile_stride=lay.command["k_tile_stride"]).cycles


@pytest.mark.parametrize("stall", [0.3, 0.0])
def test_batched_decode_s_commands(stall, seed):
    """One-query blocks over many key tiles: with the Kᵀ tiles back to back, S
    commands of `s_chunk` tiles (the tiles in the rows of an S half, the
    softmax of tile j after PV_{j-2}), bit-exact with stalls and exactly the
    model's cycles; a padded cache stride (tiles not back to back) falls back to
    one tile per S command. Partial last chunks, last tiles short of a column
    tile (done at the command's end) and of a key only (done at their last
    write), a last block of one row after a full one, and packed heads (some
    contiguous, some not) included."""
    cfg = AttentionConfig(engine=EngineConfig(rows=4, cols=2, mem_bytes=8), tile=4, lanes=2,
                          norm_lanes=1, max_d_head=8, max_seq=64)
    assert cfg.s_chunk == 4
    rng = np.random.default_rng([seed, 41, int(stall * 10)])
    commands = []
    for H, d, tq, offset in [(1, 4, 1, 40), (2, 6, 1, 37), (3, 3, 1, 20), (1, 8, 5, 30),
                             (2, 2, 1, 9), (1, 5, 1, 63), (2, 4, 1, 18)]:
        heads = [head_case(rng, "random", d, tq, offset + tq) for _ in range(H)]
        commands.append(tuple(np.array([c[i] for c in heads]) for i in range(3))
                        + (offset, _params(rng)))
    lays, base = [], 0
    for n, (q, k, v, offset, params) in enumerate(commands):
        lays.append(AttentionLayout(cfg, q, k, v, offset, *params, base=base, rng=rng,
                                    pad=int(n == 4), packed=n % 3 != 0))
        base = lays[-1].end
    mem, cycles, _ = simulate_attention(cfg, lays, base + 1, seed=seed, stall=stall,
                                        jitter=3 if stall else 0)
    batched = 0
    for lay, got, (q, k, v, offset, params) in zip(lays, cycles, commands):
        H, tq, d = q.shape
        what = f"H={H} D={d} tq={tq} offset={offset} stall={stall} (GPT2ACCEL_SEED={seed})"
        res, untouched = lay.result(mem)
        np.testing.assert_array_equal(res, _reference(cfg, q, k, v, offset, params),
                                      err_msg=what)
        assert untouched and lay.virtual_untouched(mem), what
        if not stall:
            args = (cfg, H, d, tq, offset)
            kw = dict(q_head_bytes=lay.command["q_head_bytes"],
                      k_tile_stride=lay.command["k_tile_stride"])
            want = attention_cycles(*args, **kw).cycles
            assert got == want, f"{what}: RTL {got} cycles, model {want}"
            # one tile per S command (a stride no tile fills) would take longer
            batched += want < attention_cycles(*args, q_head_bytes=kw["q_head_bytes"],
                                               k_tile_stride=1 << 20).cycles
    assert stall or batched >= 5, batched


@pytest.mark.parametrize("cfg", [CONFIGS[0], CONFIGS[2], CONFIGS[4]], ids=["2x2", "2x4_b4", "2x2_b8"])
def test_decode_heads_chained(cfg, seed):
    """One query whose keys fit one tile (decode of a short context): the heads'
    S and PV commands run as one stream (S_{h+1} during head h's softmax, PV_{h+1}
    during its normalise phase, O rows and row info halves alternating by head).
    Bit-exact with random stalls, exactly the model's cycles, and fewer than the
    heads one after another would take (the model of a command the stream does
    not serve: two queries)."""
    rng = np.random.default_rng([seed, 53, cfg.engine.mem_bytes, cfg.rows])
    T = cfg.tile
    geoms = [(1, cfg.norm_lanes, 0), (3, 2 * cfg.norm_lanes, T - 1), (4, cfg.max_d_head, 1),
             (2, cfg.norm_lanes, T // 2), (5, 2 * cfg.norm_lanes, T - 2)]
    commands = []
    for H, d, offset in geoms:
        heads = [head_case(rng, KINDS[(len(commands) + h) % len(KINDS)], d, 1, offset + 1)
                 for h in range(H)]
        commands.append(tuple(np.array([c[i] for c in heads]) for i in range(3))
                        + (offset, _params(rng)))
    for stall in (0.3, 0.0):
        lays, base = [], 0
        for n, (q, k, v, offset, params) in enumerate(commands):
            lays.append(AttentionLayout(cfg, q, k, v, offset, *params, base=base, rng=rng,
                                        pad=int(stall > 0), packed=n % 2 == 1))
            base = lays[-1].end
        mem, cycles, _ = simulate_attention(cfg, lays, base + 1, seed=seed, stall=stall,
                                            jitter=3 if stall else 0)
        for lay, got, (q, k, v, offset, params) in zip(lays, cycles, commands):
            H, tq, d = q.shape
            what = f"H={H} D={d} offset={offset} stall={stall} (GPT2ACCEL_SEED={seed})"
            res, untouched = lay.result(mem)
            np.testing.assert_array_equal(res, _reference(cfg, q, k, v, offset, params),
                                          err_msg=what)
            assert untouched and lay.virtual_untouched(mem), what
            if not stall:
                kw = dict(q_head_bytes=lay.command["q_head_bytes"],
                          k_tile_stride=lay.command["k_tile_stride"])
                want = attention_cycles(cfg, H, d, 1, offset, **kw).cycles
                assert got == want, f"{what}: RTL {got} cycles, model {want}"
                if H > 1:
                    # the same heads one after another: a one-head command each
                    apart = sum(attention_cycles(cfg, 1, d, 1, offset).cycles for _ in range(H))
                    assert want < apart, f"{what}: {want} cycles chained, {apart} apart"


def test_decode_head_groups(seed):
    """Chain mode with `head_group` heads per S command: one S command over the
    group's Kᵀ tiles side by side (every tile at the full k_rows, head g's scores
    in row g of the S half), the PV commands still one a head. Bit-exact with
    random stalls, exactly the model's cycles, and (one group of four heads, a
    whole tile of keys) fewer than one S command a head on the same layout. Groups of 4 and 2 (two S commands), a context of one key
    and of a whole tile, and a group of all of two heads."""
    cfg = AttentionConfig(engine=EngineConfig(rows=2, cols=4, mem_bytes=16), tile=8, lanes=2,
                          norm_lanes=2, max_d_head=8, max_seq=32, block_rows=4)
    assert cfg.s_chunk == 4
    rng = np.random.default_rng([seed, 61])
    commands = []
    for H, d, offset, g in [(4, 4, 7, 4), (4, 4, 3, 2), (4, 4, 0, 4), (2, 4, 5, 2)]:
        heads = [head_case(rng, KINDS[(len(commands) + h) % len(KINDS)], d, 1, offset + 1)
                 for h in range(H)]
        commands.append(tuple(np.array([c[i] for c in heads]) for i in range(3))
                        + (offset, _params(rng), g))
    for stall in (0.3, 0.0):
        lays, base = [], 0
        for q, k, v, offset, params, g in commands:
            lays.append(AttentionLayout(cfg, q, k, v, offset, *params, base=base, rng=rng,
                                        packed=True, head_group=g))
            base = lays[-1].end
        mem, cycles, _ = simulate_attention(cfg, lays, base + 1, seed=seed, stall=stall,
                                            jitter=3 if stall else 0)
        for lay, got, (q, k, v, offset, params, g) in zip(lays, cycles, commands):
            H, tq, d = q.shape
            c = lay.command
            what = f"H={H} D={d} offset={offset} group={g} stall={stall} (GPT2ACCEL_SEED={seed})"
            assert c["head_group"] == g and c["k_rows"] > 0, what
            res, untouched = lay.result(mem)
            np.testing.assert_array_equal(res, _reference(cfg, q, k, v, offset, params),
                                          err_msg=what)
            assert untouched and lay.virtual_untouched(mem), what
            if not stall:
                kw = dict(q_head_bytes=c["q_head_bytes"], k_tile_stride=c["k_tile_stride"],
                          k_rows=c["k_rows"])
                want = attention_cycles(cfg, H, d, 1, offset, head_group=g, **kw).cycles
                assert got == want, f"{what}: RTL {got} cycles, model {want}"
                # a group of every head against a whole tile of keys beats an S
                # command a head; a short context or two groups of two need not
                # (the compiler asks the model, `ModelCompiler._head_group`)
                apart = attention_cycles(cfg, H, d, 1, offset, **kw).cycles
                if g == H == 4 and offset == cfg.tile - 1:
                    assert want < apart, f"{what}: {want} cycles grouped, {apart} a head each"


@pytest.mark.slow
def test_attention_soak(seed):
    """A larger array, longer rows (several tiles per block, many blocks) and
    more commands than the default run, with stalls everywhere."""
    cfg = AttentionConfig(engine=EngineConfig(rows=4, cols=4, mem_bytes=16), tile=8, lanes=2,
                          norm_lanes=2, max_d_head=16, max_seq=64, block_rows=8)
    rng = np.random.default_rng([seed, 4, 4])
    commands = [_random_command(rng, cfg, n) for n in range(8)]
    lays, mem, _ = _run(cfg, commands, seed, 0.3, rng)
    for n, (lay, (q, k, v, offset, params)) in enumerate(zip(lays, commands)):
        got, untouched = lay.result(mem)
        np.testing.assert_array_equal(got, _reference(cfg, q, k, v, offset, params),
                                      err_msg=f"command {n} (GPT2ACCEL_SEED={seed})")
        assert untouched


@pytest.mark.slow
def test_benchmark_configuration_cycles(seed):
    """The benchmarked 8x8 configuration with 128-row blocks (tile 64, d_head
    64): golden result and cycle model on prefill commands whose diagonal
    tiles skip up to 8 array row blocks."""
    from gpt2accel.sim.bench.attention import config
    cfg = config(8, 64, 16)
    rng = np.random.default_rng([seed, 8, 16])
    commands = []
    for tq, offset in [(136, 0), (70, 60)]:
        q, k, v, _, _ = head_case(rng, "random", 64, tq, offset + tq)
        commands.append((q[None], k[None], v[None], offset, _params(rng)))
    lays, mem, cycles = _run(cfg, commands, seed, 0.0, rng)
    for lay, got, (q, k, v, offset, params) in zip(lays, cycles, commands):
        np.testing.assert_array_equal(lay.result(mem)[0], _reference(cfg, q, k, v, offset, params),
                                      err_msg=f"(GPT2ACCEL_SEED={seed})")
        assert got == attention_cycles(cfg, 1, 64, q.shape[1], offset,
                                       k_tile_stride=lay.command["k_tile_stride"]).cycles
