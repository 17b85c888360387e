"""KVSTORE alone: its bytes land where `isa.kvstore_layout` puts them (the cache
layout, written out here with a multiply per term as the ISA states it) and nowhere
else under random stalls, and its stall-free cycles equal `kvstore_cycles`, for tiles
of one and of several array column tiles, and for words of three k-steps (a V word
then spans keys of two groups) with groups that cross key tiles; each with the
heads' own Kᵀ heights and with every tile at the full `k_rows`."""
import random

import numpy as np
import pytest
from amaranth.sim import Simulator

from gpt2accel.rtl.attention_config import AttentionConfig
from gpt2accel.rtl.config import EngineConfig
from gpt2accel.rtl.kvstore import KVStore
from gpt2accel.sim.cycles.program import kvstore_cycles
from gpt2accel.sim.harness.matmul import MemoryModel, transfer

WORDS = 1024


def _cfg(tile, cols=4, mem_bytes=None):
    return AttentionConfig(engine=EngineConfig(rows=4, cols=cols, mem_bytes=mem_bytes,
                                               max_k=128, max_m=16, max_n=512, addr_bits=12),
                           tile=tile, lanes=2, norm_lanes=2, max_d_head=16, max_seq=32)


def _fields(cfg, rng, max_tok=3, full=False):
    e = cfg.engine
    n_head, d_head = rng.choice([(1, 3), (2, 4), (3, 5), (4, 1), (2, 7)])
    n_tok = rng.randint(1, max_tok)
    tiles = -(-cfg.max_seq // cfg.tile)
    wpt_d = -(-(e.mem_bytes + d_head) // e.k_per_word)
    k_tile = -(-cfg.tile // e.cols) * wpt_d
    v_tile = -(-d_head // e.cols) * e.w_words_per_tile(cfg.tile)
    skew = rng.randint(0, e.mem_bytes - 1)
    # `full`: every tile at the height of the head that starts latest in its word
    # (several heads' tiles then form one W operand)
    k_rows = max(h * skew % e.mem_bytes for h in range(n_head)) + d_head if full else 0
    pos0 = rng.randint(0, cfg.max_seq - n_tok)
    if full and n_tok <= cfg.tile:
        # the last token in its tile's last column tile, whose address the height sets
        pos0 = cfg.tile * rng.randint(0, cfg.max_seq // cfg.tile - 1) + cfg.tile - n_tok
    return dict(n_tok=n_tok, pos0=pos0, n_head=n_head,
                d_head=d_head, src_base=rng.randint(0, 8), src_stride=2 * n_head * d_head // 4 + 3,
                src_lane=rng.randint(0, e.mem_bytes - 1), k_skew=skew,
                k_rows=k_rows,
                k_base=300, k_tile_stride=k_tile, k_head_stride=k_tile * tiles,
                v_base=300 + k_tile * tiles * n_head, v_tile_stride=v_tile,
                v_head_stride=v_tile * tiles)


def _expected(cfg, f, mem):
    """{(word, lane): byte} of the command, from the ISA's placement of each byte."""
    e = cfg.engine
    MB, C, KPW, T = e.mem_bytes, e.cols, e.k_per_word, cfg.tile
    out = {}
    for t in range(f["n_tok"]):
        pos = f["pos0"] + t
        j, kin = divmod(pos, T)
        src = [int(b) for w in range(f["src_base"] + t * f["src_stride"],
                                     f["src_base"] + t * f["src_stride"] + 40)
               for b in mem[w]][f["src_lane"]:]
        kb, i = 0, 0
        for h in range(f["n_head"]):
            wpt_d = -(-(f["k_rows"] or kb + f["d_head"]) // KPW)
            for d in range(f["d_head"]):
                kd = kb + d
                addr = (f["k_base"] + h * f["k_head_stride"] + j * f["k_tile_stride"]
                        + (kin // C) * wpt_d + kd // KPW)
                out[(addr, (kd % KPW) * C + kin % C)] = src[i]
                i += 1
            kb = (kb + f["k_skew"]) % MB
        for h in range(f["n_head"]):
            for d in range(f["d_head"]):
                addr = (f["v_base"] + h * f["v_head_stride"] + j * f["v_tile_stride"]
                        + (d // C) * e.w_words_per_tile(T) + kin // KPW)
                out[(addr, (kin % KPW) * C + d % C)] = src[i]
                i += 1
    return out


def _run(cfg, f, mem_init, stall, seed):
    dut = KVStore(cfg)
    mem = MemoryModel(cfg.engine, WORDS, stall=stall, jitter=2 if stall else 0,
                      rng=random.Random(seed))
    mem.mem[:] = mem_init
    result = {}

    async def bench(ctx):
        from gpt2accel.rtl.isa import kvstore_layout
        await transfer(ctx, dut.cmd, kvstore_layout(cfg).const(f))
        ctx.set(dut.cmd.valid, 0)
        cycles = 1                          # the accept cycle to the done pulse, as the model
        while not ctx.get(dut.done):
            await ctx.tick()
            cycles += 1
        result["cycles"] = cycles

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    async def serve(ctx):
        await mem.serve(ctx, dut.mem)

    sim.add_process(serve)
    sim.run_until(1e-3)
    return mem, result["cycles"]


@pytest.mark.parametrize("tile, cols, mem_bytes, max_tok",
                         [(4, 4, None, 3), (12, 4, None, 3), (5, 2, 6, 9)],
                         ids=["tile_of_cols", "tile_of_3_col_tiles", "3_k_steps_per_word"])
def test_kvstore_places_bytes_and_matches_its_cycles(tile, cols, mem_bytes, max_tok, seed):
    cfg = _cfg(tile, cols, mem_bytes)
    rng = random.Random(seed)
    for full in (False, True):
        f = _fields(cfg, rng, max_tok, full)
        init = np.random.default_rng(rng.randint(0, 1 << 30)).integers(
            0, 256, (WORDS, cfg.engine.mem_bytes), np.uint8)
        init[300:] = 0
        want = _expected(cfg, f, init)
        for stall in (0.0, 0.3):
            mem, cycles = _run(cfg, f, init, stall, rng.randint(0, 1 << 30))
            got = {(a, l): int(mem.mem[a][l]) for a, l in zip(*np.nonzero(mem.written))}
            assert got == want, f
            if stall == 0.0:
                assert cycles == kvstore_cycles(cfg, f), f


def test_kvstore_one_word_segments_wait_for_the_writer(seed):
    """One token whose every head's K and V is one aligned word: the assembler fills a
    buffer part per cycle, faster than its full flag (two shift stages later) could
    stop it, so it must not take a segment's word into a part the writer still drains."""
    cfg = _cfg(4)
    e = cfg.engine
    rng = random.Random(seed)
    f = _fields(cfg, rng, 1)
    d_head = e.mem_bytes
    wpt_d = -(-(e.mem_bytes + d_head) // e.k_per_word)
    k_tile = -(-cfg.tile // e.cols) * wpt_d
    v_tile = -(-d_head // e.cols) * e.w_words_per_tile(cfg.tile)
    tiles = -(-cfg.max_seq // cfg.tile)
    f.update(n_head=3, d_head=d_head, src_lane=0, k_skew=0, k_rows=0, src_stride=7,
             k_tile_stride=k_tile, k_head_stride=k_tile * tiles,
             v_base=300 + k_tile * tiles * 3, v_tile_stride=v_tile, v_head_stride=v_tile * tiles)
    init = np.random.default_rng(rng.randint(0, 1 << 30)).integers(
        0, 256, (WORDS, e.mem_bytes), np.uint8)
    init[300:] = 0
    mem, cycles = _run(cfg, f, init, 0.0, rng.randint(0, 1 << 30))
    got = {(a, l): int(mem.mem[a][l]) for a, l in zip(*np.nonzero(mem.written))}
    assert got == _expected(cfg, f, init), f
    assert cycles == kvstore_cycles(cfg, f), f
