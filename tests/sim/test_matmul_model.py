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
            assert r.utilization(cfg) >= 0.95, (size, k, n, r)


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
    assert case["utilization"] == pytest.approx(1024 * 768 * 3072 / (256 * case["cycles"]))
    assert "ffn_up" in bench.format_text(result)
