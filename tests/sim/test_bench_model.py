"""`gpt2accel bench model`: the contract of sim/benchmarks/__init__.py and figures
consistent with the model (cycle model only, no simulation: fast)."""
import argparse
import json

import numpy as np

from gpt2accel.sim.benchmarks import model as bench


def test_bench_model_cases():
    # GPT-2 small (a minute of quantising and cycle counting) runs in `bench model` itself
    result = bench.run(argparse.Namespace(arrays="4x4,8x8,16x16", models="tiny"))
    json.dumps(result)
    cases = {(c["model"], c["array"], c["mode"]): c for c in result["cases"]}
    assert {m for m, _, _ in cases} == {"tiny"}
    q = bench._tiny()
    weights = sum(np.asarray(b.w).size for blk in q.blocks
                  for b in (blk.attn_qkv, blk.attn_proj, blk.fc, blk.fc_proj)) + q.wte.size
    for arr in ("4x4", "8x8"):
        pre, dec = cases[("tiny", arr, "prefill")], cases[("tiny", arr, "decode")]
        for c in (pre, dec):
            assert 0 < c["utilization"] <= 1 and c["cycles_per_token"] > 0
        # a decode token reads every weight once; a long prefill shares them
        assert dec["bytes_per_token"] > weights > pre["bytes_per_token"]
        assert pre["cycles_per_token"] < dec["cycles_per_token"]
    # more PEs: fewer cycles, lower utilisation on the same work
    assert cases[("tiny", "8x8", "decode")]["cycles_per_token"] < \
        cases[("tiny", "4x4", "decode")]["cycles_per_token"]
    # the tiny model's 16-byte heads do not start on the 16x16 machine's 32-byte words
    assert "d_head 16" in cases[("tiny", "16x16", "decode")]["error"]
    assert "tiny" in bench.format_text(result)
