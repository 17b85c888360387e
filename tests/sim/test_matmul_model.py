"""Cycle model, memory layout helpers and the matmul benchmark."""
import argparse

import numpy as np
import pytest

from gpt2accel.rtl.config import EngineConfig
from gpt2accel.sim.bench import matmul as bench
from gpt2accel.sim.cycles.matmul import matmul_cycles
from gpt2accel.sim.host.matmul_layout import MatmulLayout, pack_w


def test_prefill_utilisation_target():
    """GPT-2-small prefill layers keep the array >= 95 % busy."""
    for size in (8, 12, 16):
        cfg = EngineConfig(rows=size, cols=size)
        for k, n in bench.LAYERS.values():
            r = matmul_cycles(cfg, 1024, k, n)
            assert r.utilisation(cfg) >= 0.95, (size, k, n, r)


def test_gemv_decode_at_port_roofline():
    """Decode (M = 1) GPT-2-small layers read W at the whole port: within 2 % of
    K*N / mem_bytes cycles (the unfolded engine took twice that)."""
    for size in (8, 12, 16):
        cfg = EngineConfig(rows=size, cols=size)
        for k, n in bench.LAYERS.values():
            r = matmul_cycles(cfg, 1, k, n)
            assert r.cycles <= 1.02 * k * n / cfg.mem_bytes, (size, k, n, r)


def test_gemv_model_structure():
    cfg = EngineConfig(rows=4, cols=4)
    gm = cfg.gemv_rows
    assert gm == 2 and cfg.gemv(gm) and not cfg.gemv(gm + 1)
    # a GEMV tile costs its words (parameters + W) or GEMV mode's minimum period,
    # shorter than other commands' (the writer drops the rows past M at once)
    assert cfg.gemv_min_tile_period(True) < cfg.min_tile_period(True)
    for k in (8, 64, 65):
        per = max(cfg.param_words_per_tile + cfg.w_words_per_tile(k),
                  cfg.gemv_min_tile_period(False))
        assert matmul_cycles(cfg, gm, k, 12).cycles - matmul_cycles(cfg, gm, k, 8).cycles == per
        assert matmul_cycles(cfg, gm, k, 8).feed_cycles == 2 * cfg.w_words_per_tile(k)
    # a raw tile of fewer rows has fewer writes, so a shorter period; it reads its
    # bias words alone
    big = EngineConfig(rows=8, cols=8)
    assert big.gemv_min_tile_period(True, 1) < big.gemv_min_tile_period(True)
    assert big.param_words(True) < big.param_words(False) == big.param_words_per_tile
    for m in (1, big.gemv_rows):
        per = max(big.param_words(True) + big.w_words_per_tile(16),
                  big.gemv_min_tile_period(True, m))
        assert (matmul_cycles(big, m, 16, 16, True).cycles
                - matmul_cycles(big, m, 16, 8, True).cycles) == per
    # one more row leaves GEMV mode: a beat per k-step again
    assert matmul_cycles(cfg, gm + 1, 64, 8).feed_cycles == 2 * 64


def test_model_structure():
    cfg = EngineConfig(rows=4, cols=4)
    base = matmul_cycles(cfg, 8, 64, 8).cycles
    # one more column tile costs exactly one tile period
    assert matmul_cycles(cfg, 8, 64, 12).cycles - base == 2 * cfg.tile_period(64, False)
    # short K is padded to the minimum tile period
    p = cfg.min_tile_period(False)
    assert matmul_cycles(cfg, 4, 1, 8).cycles == matmul_cycles(cfg, 4, 1, 4).cycles + p
    # a slower memory delays every row block's start
    assert (matmul_cycles(cfg, 8, 64, 8, latency=5).cycles
            == base + 2 * 2)
    with pytest.raises(ValueError):
        matmul_cycles(cfg, 0, 1, 1)


def test_w_layout_column_tiles():
    cfg = EngineConfig(rows=2, cols=2, mem_bytes=4)
    w = np.arange(15).reshape(5, 3)
    words = pack_w(cfg, w)
    # tile 0: k rows (0,1) then (2,3) then (4,pad) of columns 0..1
    assert words[0].tolist() == [0, 1, 3, 4]
    assert words[2].tolist() == [12, 13, 0, 0]
    # tile 1: column 2 with a zero pad column
    assert words[3].tolist() == [2, 0, 5, 0]


def test_layout_command_fields():
    cfg = EngineConfig(rows=2, cols=2)
    lay = MatmulLayout(cfg, np.zeros((3, 5), int), np.zeros((5, 3), int), None, 1, 0,
                       raw=True, base=10, a_pad=1)
    assert lay.command["a_base"] == 10 and lay.command["a_stride"] == 3
    assert lay.command["raw_out"] == 1 and lay.out_stride == cfg.out_row_words(3, True)


def test_benchmark_contract():
    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    args = parser.parse_args(["--no-pysim", "--arrays", "8x8,16x16"])
    result = bench.run(args)
    assert len(result["cases"]) == 2 * 2 * len(bench.LAYERS)
    case = next(c for c in result["cases"]
                if c["array"] == "16x16" and c["layer"] == "ffn_up" and c["T"] == 1024)
    assert case["M"] == 1024 and case["K"] == 768 and case["N"] == 3072
    assert case["utilisation"] == pytest.approx(1024 * 768 * 3072 / (256 * case["cycles"]))
    assert "ffn_up" in bench.format_text(result)
