"""`gpt2accel bench model`: the contract of sim/bench/__init__.py and figures
consistent with the model (cycle model only, no simulation: fast)."""
import argparse
import json

import numpy as np
import pytest

from gpt2accel.sim.bench import model as bench


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


def test_unsupported_shapes_are_listed_once_with_the_reason(capsys):
    result = bench.run(argparse.Namespace(arrays="8x8,16x16", models="tiny"))
    err = capsys.readouterr().err
    assert "[tiny: compiling and timing on each array" in err      # progress on stderr
    # the JSON keeps both modes of the unsupported shape, with the compiler's message
    bad = [c for c in result["cases"] if c["cycles_per_token"] is None]
    assert {(c["array"], c["mode"]) for c in bad} == {("16x16", "prefill"),
                                                      ("16x16", "decode")}
    text = bench.format_text(result).splitlines()
    table = text[:text.index("not supported:")]
    assert len(table) == 3 and all("8x8" in line for line in table[1:])
    assert text[text.index("not supported:") + 1:-1] == [
        f"  tiny on 16x16, because {bad[0]['error']}"]
    assert "Horowitz" in text[-1] and "ISSCC 2014" in text[-1]


@pytest.mark.parametrize("arrays, models, message", [
    ("8by8", "tiny", "--arrays: '8by8' is not ROWSxCOLS"),
    ("0x8", "tiny", "--arrays: '0x8' needs at least one row"),
    ("8x8", "gpt3", "--models: unknown model 'gpt3'"),
])
def test_bad_arguments_are_refused(arrays, models, message):
    with pytest.raises(ValueError, match=message):
        bench.run(argparse.Namespace(arrays=arrays, models=models))


def test_energy_and_cycles_by_instruction_kind():
    """`bench model`'s new fields: cycles by instruction kind add up to the program's,
    the counted events to its MACs and bytes, and the estimated energy is those events
    times the cited table's figures: a batched prefill shares each weight read between
    its tokens (fewer picojoules per token than a decode), and reading the parameters
    from DRAM costs more than from block RAM by exactly their bytes' difference."""
    from gpt2accel.sim.bench import energy as E
    result = bench.run(argparse.Namespace(arrays="8x8", models="tiny"))
    assert "Horowitz" in result["energy_source"] and "45 nm" in result["energy_source"]
    cases = {c["mode"]: c for c in result["cases"]}
    for c in cases.values():
        assert sum(c["cycles_by_kind"].values()) == c["cycles"]
        assert c["cycles_by_kind"]["MATMUL"] > 0 and c["cycles_by_kind"]["HALT"] == 2
        ev = c["events_per_token"]
        assert sum(e["macs"] for e in ev.values()) == c["macs_per_token"]
        assert c["macs_per_token"] == c["utilization"] * 64 * c["cycles_per_token"]
        assert sum(e["param_read_bytes"] + e["act_read_bytes"] + e["write_bytes"]
                   for e in ev.values()) == c["bytes_per_token"]
        params = sum(e["param_read_bytes"] for e in ev.values())
        assert c["energy_per_token_uj_dram"] - c["energy_per_token_uj"] == pytest.approx(
            params * (E.TABLE["dram_64b"] - E.TABLE["sram_64b"]) / 8 / 1e6)
        assert sum(c["energy_by_kind_uj"].values()) == pytest.approx(c["energy_per_token_uj"])
        assert c["energy_by_event_uj"]["mac"] == pytest.approx(
            c["macs_per_token"] * E.TABLE["mac"] / 1e6)
    assert cases["prefill"]["energy_per_token_uj"] < cases["decode"]["energy_per_token_uj"]
    with pytest.raises(ValueError, match="placement 'disk'"):
        E.energy({}, "disk")


def test_plots_roofline_and_breakdown(tmp_path, capsys):
    """`bench model --plot DIR`: a roofline and a breakdown per model as PNG and SVG,
    named in the report; a DIR that is a file is refused before any work."""
    from gpt2accel.sim.cli import main
    out = tmp_path / "plots"
    assert main(["bench", "model", "--models", "tiny", "--arrays", "4x4,8x8,16x16",
                 "--plot", str(out)]) == 0
    text = capsys.readouterr().out
    names = sorted(p.name for p in out.iterdir())
    assert names == ["breakdown-tiny.png", "breakdown-tiny.svg", "roofline-tiny.png",
                     "roofline-tiny.svg"]
    for name in names:
        assert f"plot: {out / name}" in text
        data = (out / name).read_bytes()
        assert data.startswith(b"\x89PNG") if name.endswith(".png") else b"<svg" in data[:600]
    (tmp_path / "file").write_text("")
    assert main(["bench", "model", "--models", "tiny", "--plot", str(tmp_path / "file")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"gpt2accel: error: --plot {tmp_path / 'file'}: not a directory"]
