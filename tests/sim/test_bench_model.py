"""`gpt2accel bench model`: the contract of sim/bench/__init__.py and figures
consistent with the model (cycle model only, no simulation: fast)."""
import argparse
import json

import numpy as np
import pytest

from gpt2accel.rtl.machine import FETCH_TO_ISSUE
from gpt2accel.sim.cycles.program import HALT_CYCLES
from gpt2accel.sim.bench import model as bench


def test_bench_model_cases():
    # GPT-2 small (a minute of quantising and cycle counting) runs in `bench model` itself
    result = bench.run(argparse.Namespace(arrays="4x4,8x8,12x12,16x16", models="microgpt,tiny"))
    json.dumps(result)
    cases = {(c["model"], c["array"], c["mode"]): c for c in result["cases"]
             if c["batch"] == 1}
    assert {m for m, _, _ in cases} == {"microgpt", "tiny"}
    q = bench._tiny()
    weights = sum(np.asarray(b.w).size for blk in q.blocks
                  for b in (blk.attn_qkv, blk.attn_proj, blk.fc, blk.fc_proj)) + q.wte.size
    for arr in ("4x4", "8x8"):
        pre, dec = cases[("tiny", arr, "prefill")], cases[("tiny", arr, "decode")]
        for c in (pre, dec):
            assert 0 < c["utilisation"] <= 1 and c["cycles_per_token"] > 0
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
        assert c["position"] == (0 if mode in ("prefill", "score") else last[model])
    assert cases[("microgpt", "8x8", "prefill")]["T"] == 16
    # the tied wte once where EMBED reads the LM head's tiles (up to 8 columns), and a
    # copy of its own beside them on wider arrays
    for arr in ("4x4", "8x8", "12x12", "16x16"):
        copy = cases[("tiny", arr, "decode")]["image_bytes"]["wte_copy"]
        assert copy >= q.wte.size if arr in ("12x12", "16x16") else copy == 0, arr
    assert "tiny" in bench.format_text(result) and "microgpt" in bench.format_text(result)


def test_prefill_logits_and_image_regions():
    """Prefill computes the last row's logits (score: every row's, slower, a bigger
    image); the image splits into weights, KV caches, buffers and the program, and a
    shorter context shrinks the KV caches and the decode step."""
    from gpt2accel.sim.host.compiler import ModelCompiler
    from gpt2accel.sim.host.driver import machine_config
    result = bench.run(argparse.Namespace(arrays="8x8", models="tiny", contexts="128,32"))
    json.dumps(result)
    cases = {(c["context"], c["mode"]): c for c in result["cases"] if c["batch"] == 1}
    pre, score, dec = (cases[(128, m)] for m in ("prefill", "score", "decode"))
    assert (pre["logits"], score["logits"], dec["logits"]) == ("last", "all", "last")
    assert pre["T"] == score["T"] == 128 and dec["position"] == 127
    assert pre["cycles_per_token"] < score["cycles_per_token"]
    q = bench._tiny()
    cfg = machine_config(q, 8, 8, max_tokens=128)
    comp = ModelCompiler(cfg, q, 128, None, logit_rows=1)
    img = pre["image_bytes"]
    assert {k: img[k] for k in ("weights", "kv", "buffers")} == comp.region_bytes()
    assert img["program"] == len(comp.program(128, 0, "last")) * 64
    parts = ("weights", "kv", "buffers", "program")
    assert img["total"] == sum(img[k] for k in parts)
    # beside the total: the logits' part of the buffers (one row of raw and requantised
    # logits here, every row's when scoring) and a second copy of the tied wte: none on
    # 8x8, whose EMBED reads the LM head's tiles
    mb = cfg.engine.mem_bytes
    assert img["logits"] == (comp.regions["logits_raw"].words
                             + comp.regions["logits"].words) * mb
    assert score["image_bytes"]["logits"] == 128 * img["logits"]
    assert img["wte_copy"] == 0 and "wte" not in comp.regions
    table = bench.format_text(result).split("image bytes by region")[1].splitlines()
    row = next(ln for ln in table if ln.startswith("tiny") and ln.split()[2] == "128")
    assert row.split()[3:] == [f"{img[k]:,}" for k in ("weights", "kv", "buffers", "logits",
                                                       "program", "total", "wte_copy")]
    assert score["image_bytes"]["buffers"] > img["buffers"]
    assert score["image_bytes"]["weights"] == img["weights"]
    short = cases[(32, "decode")]
    assert short["position"] == 31 and cases[(32, "prefill")]["T"] == 32
    assert short["image_bytes"]["kv"] * 2 == img["kv"]     # tile 64: 1 tile of 2
    assert short["cycles_per_token"] < dec["cycles_per_token"]


def test_batched_decode_rows():
    """Decode rows for 1, 4 and 8 sequences: the weights are read once per step, so
    the cycles and bytes per token fall with the batch, and the KV caches grow with it."""
    result = bench.run(argparse.Namespace(arrays="8x8", models="tiny", contexts=None))
    dec = {c["batch"]: c for c in result["cases"] if c["mode"] == "decode"}
    assert sorted(dec) == list(bench.BATCHES) == [1, 4, 8]
    cpt = [dec[b]["cycles_per_token"] for b in (1, 4, 8)]
    assert cpt[0] > cpt[1] > cpt[2]
    assert dec[1]["bytes_per_token"] > dec[4]["bytes_per_token"] > dec[8]["bytes_per_token"]
    assert [dec[b]["image_bytes"]["kv"] for b in (1, 4, 8)] == [
        b * dec[1]["image_bytes"]["kv"] for b in (1, 4, 8)]
    assert dec[8]["utilisation"] > dec[1]["utilisation"]
    assert all(c["batch"] == 1 for c in result["cases"] if c["mode"] != "decode")


def test_unsupported_shapes_are_listed_once_with_the_reason(capsys):
    result = bench.run(argparse.Namespace(arrays="8x8,2x2", models="tiny"))
    err = capsys.readouterr().err
    assert "[tiny: compiling and timing on each array" in err      # progress on stderr
    # the JSON keeps every mode of the unsupported shape, with the reason: no whole
    # machine has 2 columns (its 4-byte word cannot hold a LayerNorm beta)
    bad = [c for c in result["cases"] if c["cycles_per_token"] is None]
    assert {(c["array"], c["mode"]) for c in bad} == {("2x2", "prefill"), ("2x2", "score"),
                                                      ("2x2", "decode")}
    assert bad[0]["error"].startswith("cols=2: the whole machine needs an even number")
    text = bench.format_text(result).splitlines()
    table = text[:text.index("not supported:")]
    assert len(table) == 6 and all("8x8" in line for line in table[1:])
    energy = next(i for i, line in enumerate(text) if line.startswith("uJ/token"))
    assert text[text.index("not supported:") + 1:energy] == [
        f"  tiny on 2x2, because {bad[0]['error']}"]
    assert "Horowitz" in text[energy] and "ISSCC 2014" in text[energy]
    # then the image by region, of the supported arrays only
    images = text[text.index("image bytes by region (one sequence, the last row's logits):"):]
    assert [line.split()[:2] for line in images if line.startswith("tiny")] == [["tiny", "8x8"]]


@pytest.mark.parametrize("arrays, models, contexts, message", [
    ("8by8", "tiny", None, "--arrays: '8by8' is not ROWSxCOLS"),
    ("0x8", "tiny", None, "--arrays: '0x8' needs at least one row"),
    ("8x8", "gpt3", None, "--models: unknown model 'gpt3'"),
    ("8x8", "tiny", "long", "--contexts: 'long' is not a number of positions"),
    ("8x8", "tiny", "64,0", "--contexts: '0' needs at least one position"),
])
def test_bad_arguments_are_refused(arrays, models, contexts, message):
    with pytest.raises(ValueError, match=message):
        bench.run(argparse.Namespace(arrays=arrays, models=models, contexts=contexts))


def test_energy_and_cycles_by_instruction_kind():
    """`bench model`'s new fields: cycles by instruction kind add up to the program's,
    the counted events to its MACs and bytes, and the estimated energy is those events
    times the cited table's figures: a batched prefill shares each weight read between
    its tokens (fewer picojoules per token than a decode), and reading the parameters
    from DRAM costs more than from block RAM by exactly their bytes' difference."""
    from gpt2accel.sim.bench import energy as E
    result = bench.run(argparse.Namespace(arrays="8x8", models="tiny"))
    assert "Horowitz" in result["energy_source"] and "45 nm" in result["energy_source"]
    cases = {c["mode"]: c for c in result["cases"] if c["batch"] == 1}
    for c in cases.values():
        assert sum(c["cycles_by_kind"].values()) == c["cycles"]
        # under HALT: the first instruction's fetch and decode
        # HALT: the first instruction's fetch and decode, and the cycle after the last done
        assert (c["cycles_by_kind"]["MATMUL"] > 0
                and c["cycles_by_kind"]["HALT"] == FETCH_TO_ISSUE + HALT_CYCLES)
        ev = c["events_per_token"]
        assert sum(e["macs"] for e in ev.values()) == c["macs_per_token"]
        assert c["macs_per_token"] == pytest.approx(c["utilisation"] * 64 * c["cycles_per_token"])
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


def test_context_past_the_model_is_listed_with_the_reason():
    result = bench.run(argparse.Namespace(arrays="8x8", models="tiny", contexts="256"))
    assert {c["mode"] for c in result["cases"]} == {"prefill", "score", "decode"}
    assert all("context 256 outside 1..n_positions 128" in c["error"]
               for c in result["cases"])
    assert "tiny on 8x8, because context 256" in bench.format_text(result)


def test_roofline_fields():
    """Every row carries its roofline: the port's bytes or the array's MACs, whichever
    binds, and cycles over it (never below 1); a batched decode step shares its weight
    bytes, so its roofline per token is lower than one sequence's."""
    result = bench.run(argparse.Namespace(arrays="8x8", models="tiny", contexts=None))
    for c in result["cases"]:
        want = max(c["bytes_per_token"] / c["mem_bytes"], c["macs_per_token"] / 64)
        assert c["roofline_cycles"] == pytest.approx(want)
        assert c["roofline_ratio"] == pytest.approx(c["cycles_per_token"] / want)
        assert c["roofline_ratio"] >= 1 and c["position"] >= 0
    dec = {c["batch"]: c for c in result["cases"] if c["mode"] == "decode"}
    assert dec[8]["roofline_cycles"] < dec[1]["roofline_cycles"]
