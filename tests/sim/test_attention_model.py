"""The attention cycle model and benchmark: contract and internal consistency.

(The model's equality with the RTL is tested in tests/rtl/test_attention_engine.py.)
"""
import argparse

import pytest

from gpt2accel.sim.cycles.attention import attention_cycles, score_buffer_bytes
from gpt2accel.sim.bench import attention as bench


def test_benchmark_contract():
    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    result = bench.run(parser.parse_args([]))
    cases = result["cases"]
    assert len(cases) == 3 * (len(bench.PREFILL_T) + len(bench.DECODE_T))
    keys = {"array", "mode", "T", "cycles", "utilisation", "score_buffer_bytes",
            "score_buffer_bytes_without_online"}
    for c in cases:
        assert keys <= set(c)
        assert c["mode"] in ("prefill", "decode") and 0 < c["utilisation"] <= 1
        n = int(c["array"].split("x")[0])
        cfg = bench.config(n)
        tq, offset = (c["T"], 0) if c["mode"] == "prefill" else (1, c["T"] - 1)
        r = attention_cycles(cfg, bench.N_HEAD, bench.D_HEAD, tq, offset)
        assert c["cycles"] == r.cycles
        # useful work: 2 * D MACs per visible query-key pair, all heads
        pairs = sum(offset + i + 1 for i in range(tq))
        assert c["utilisation"] == pytest.approx(
            2 * bench.D_HEAD * bench.N_HEAD * pairs / (n * n * r.cycles), abs=1e-4)
    by = {(c["array"], c["mode"], c["T"]): c for c in cases}
    for a in ("8x8", "12x12", "16x16"):
        # online softmax keeps the score storage flat in T
        assert by[(a, "prefill", 128)]["score_buffer_bytes"] == \
            by[(a, "prefill", 1024)]["score_buffer_bytes"]
        assert by[(a, "prefill", 1024)]["score_buffer_bytes_without_online"] > \
            4 * by[(a, "prefill", 1024)]["score_buffer_bytes"]
        assert by[(a, "decode", 128)]["cycles"] < by[(a, "decode", 1024)]["cycles"]
    assert "16x16" in bench.format_text(result)
    # the block-size sweep: one row per array and group, from the cycle model
    assert [(r["array"], r["group"]) for r in result["group_sweep"]] == [
        (f"{n}x{n}", g) for n in bench.ARRAYS for g in bench.SWEEP_GROUPS]
    for r in result["group_sweep"]:
        n = int(r["array"].split("x")[0])
        cfg = bench.config(n, group=r["group"])
        assert r["block_rows"] == r["group"] * n
        got = attention_cycles(cfg, bench.N_HEAD, bench.D_HEAD, 1024, 0).utilisation(cfg)
        assert r["prefill_1024"] == pytest.approx(got, abs=1e-4)
    g4 = {r["array"]: r for r in result["group_sweep"] if r["group"] == 4}
    assert all(g4[c["array"]]["prefill_1024"] == c["utilisation"] for c in cases
               if c["mode"] == "prefill" and c["T"] == 1024)


def test_model_accounts_for_every_matmul_cycle():
    """The matmul commands' cycles are part of the total, and the work issued
    covers the useful work (whole tiles, masked keys included)."""
    cfg = bench.config(16)
    r = attention_cycles(cfg, 2, 64, 300, 5)
    assert r.matmul_cycles < r.cycles
    assert r.issued_macs >= r.useful_macs


def test_score_buffer_without_online_grows_with_t():
    cfg = bench.config(8)
    assert score_buffer_bytes(cfg, 1024, online=False) == 8 * score_buffer_bytes(
        cfg, 128, online=False)


def test_model_rejects_out_of_range():
    cfg = bench.config(8)
    with pytest.raises(ValueError):
        attention_cycles(cfg, 12, 64, 1024, 1)     # more keys than max_seq
    with pytest.raises(ValueError):
        attention_cycles(cfg, 12, 63, 16, 0)       # D not a multiple of norm_lanes


def test_accuracy_report():
    """The bench's accuracy rows: every (T, logit sd) reported; errors in LSB
    consistent with the relative figures; the hardware path close to float."""
    rows = bench.accuracy(seed=1)
    assert [(r["T"], r["logit_std"]) for r in rows] == [
        (t, s) for t in bench.ACCURACY_T for s in bench.ACCURACY_LOGIT_STD]
    for r in rows:
        assert 0 < r["mean_abs_lsb"] < 0.5 and r["max_abs_lsb"] >= r["mean_abs_lsb"]
        assert r["max_abs_rel_range"] < 0.2 and 0.5 < r["within_half_lsb"] <= 1


def test_accuracy_head_against_float():
    """One key (T=1): the output is V itself, so hardware and float agree to
    int8 rounding; and a wrong output scale is caught (the check can fail)."""
    import numpy as np
    rng = np.random.default_rng(3)
    hw, ref, s_out = bench.head_accuracy(rng, 1, 64, 3.0)
    assert np.abs(hw - ref / s_out).max() <= 1.0
    hw, ref, s_out = bench.head_accuracy(rng, 16, 64, 3.0)
    assert np.abs(hw - ref / s_out).mean() < 0.5
    assert np.abs(hw - ref / (2 * s_out)).mean() > 5
