"""`gpt2accel bench model`: the contract of sim/bench/__init__.py and figures
consistent with the model (cycle model only, no simulation: fast)."""
import argparse
import json

import numpy as np
import pytest

from gpt2accel.sim.bench import model as bench


def test_bench_model_cases():
    # GPT-2 small (a minute of quantising and cycle counting) runs in `bench model` itself
    result = bench.run(argparse.Namespace(arrays="4x4,8x8,12x12,16x16", models="microgpt,tiny"))
    json.dumps(result)
    cases = {(c["model"], c["array"], c["mode"]): c for c in result["cases"]}
    assert {m for m, _, _ in cases} == {"microgpt", "tiny"}
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
    # heads narrower than a word or starting inside one: microGPT's 4-byte heads on
    # every array, the tiny model's 16-byte heads in 24- and 32-byte words
    last = {"microgpt": 15, "tiny": 127}           # decode at the last position
    for (model, arr, mode), c in cases.items():
        assert c["cycles_per_token"] > 0 and "error" not in c, (model, arr, mode)
        assert c["pos"] == (0 if mode == "prefill" else last[model])
    assert cases[("microgpt", "8x8", "prefill")]["T"] == 16
    assert "tiny" in bench.format_text(result) and "microgpt" in bench.format_text(result)


def test_unsupported_shapes_are_listed_once_with_the_reason(capsys):
    result = bench.run(argparse.Namespace(arrays="8x8,2x2", models="tiny"))
    err = capsys.readouterr().err
    assert "[tiny: compiling and timing on each array" in err      # progress on stderr
    # the JSON keeps both modes of the unsupported shape, with the reason: no whole
    # machine has 2 columns (its 4-byte word cannot hold a LayerNorm beta)
    bad = [c for c in result["cases"] if c["cycles_per_token"] is None]
    assert {(c["array"], c["mode"]) for c in bad} == {("2x2", "prefill"), ("2x2", "decode")}
    assert bad[0]["error"].startswith("cols=2: the whole machine needs an even number")
    text = bench.format_text(result).splitlines()
    table = text[:text.index("not supported:")]
    assert len(table) == 3 and all("8x8" in line for line in table[1:])
    assert text[text.index("not supported:") + 1:] == [
        f"  tiny on 2x2, because {bad[0]['error']}"]


@pytest.mark.parametrize("arrays, models, message", [
    ("8by8", "tiny", "--arrays: '8by8' is not ROWSxCOLS"),
    ("0x8", "tiny", "--arrays: '0x8' needs at least one row"),
    ("8x8", "gpt3", "--models: unknown model 'gpt3'"),
])
def test_bad_arguments_are_refused(arrays, models, message):
    with pytest.raises(ValueError, match=message):
        bench.run(argparse.Namespace(arrays=arrays, models=models))
