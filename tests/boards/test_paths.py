"""The worst paths of a build (`boards/paths.py`) from nextpnr's detailed timing report
and Yosys' netlist. The data is a real build of tests/boards/data/paths_design.py (its
docstring has the commands): block RAM -> multiply-accumulate in `engine.mac`, a
24-bit counter in `cnt`, an address counter in `engine`."""
import json
from pathlib import Path

import pytest

from gpt2accel.boards import build as B
from gpt2accel.boards.paths import load_netlist, worst_paths
from gpt2accel.sim.bench import boards as bench_boards

DATA = Path(__file__).parent / "data"
CLOCK = "$glbnet$clk$TRELLIS_IO_IN"


@pytest.fixture(scope="module")
def report():
    return json.loads((DATA / "nextpnr_ecp5_paths_report.json").read_text())


@pytest.fixture(scope="module")
def netlist():
    return load_netlist(json.loads((DATA / "yosys_ecp5_paths_netlist.json").read_text()))


def test_worst_path_is_nextpnrs_critical_path(report, netlist):
    """The worst endpoint's arrival is nextpnr's critical path less its setup, and its
    start is the one nextpnr traced (the block RAM), named with its unit."""
    paths = worst_paths(report, netlist, CLOCK)
    cp = report["critical_paths"][0]["path"]
    worst = paths[0]
    assert worst["delay_ns"] == pytest.approx(sum(s["delay"] for s in cp
                                                  if s["type"] != "setup"), abs=1e-3)
    assert cp[0]["from"]["cell"] == worst["from"] == "engine.mac.mem.0.0"
    assert worst["from_unit"] == "engine.mac"
    assert worst["to"] == "engine.out" and worst["to_unit"] == "engine"
    assert worst["to_source"] == "paths_design.py:19"
    # the accumulator's 40 bits (the top 8 are read as engine.out) are one path
    assert worst["endpoints"] == 40


def test_paths_are_distinct_and_ordered(report, netlist):
    paths = worst_paths(report, netlist, CLOCK)
    assert [(p["from"], p["to"]) for p in paths] == [
        ("engine.mac.mem.0.0", "engine.out"), ("cnt.q", "cnt.q"),
        ("engine.addr", "engine.addr"), ("hit", "o"), ("engine.addr", "engine.mac.mem.0.0")]
    assert [p["delay_ns"] for p in paths] == sorted((p["delay_ns"] for p in paths),
                                                     reverse=True)
    assert [p["from_unit"] for p in paths] == ["engine.mac", "cnt", "engine", "top", "engine"]
    # the input pad's path into engine.mac.rb is not timed against the clock
    assert not any(p["from"] == "b" for p in paths)
    assert len(worst_paths(report, netlist, CLOCK, count=2)) == 2


def test_no_detailed_report_gives_no_paths(netlist):
    """The iCEBreaker report stored before the detailed report was asked for."""
    report = json.loads((DATA / "nextpnr_icebreaker_report.json").read_text())
    assert worst_paths(report, netlist, "cd_sync.clk") == []


def test_build_results_carry_the_worst_paths(tmp_path, report):
    """A finished build directory (nextpnr's report, Yosys' netlist) gives the report's
    `critical_paths`, and `bench boards` lists them under the board."""
    (tmp_path / "report.json").write_text(json.dumps(report))
    (tmp_path / "top.json").write_text((DATA / "yosys_ecp5_paths_netlist.json").read_text())
    paths = B._worst_paths(tmp_path, report, CLOCK)
    assert len(paths) == 5 and paths[0]["from"] == "engine.mac.mem.0.0"
    (tmp_path / "top.json").unlink()
    assert B._worst_paths(tmp_path, report, CLOCK) == []
    board = {"board": "orangecrab-85f", "rows": 8, "cols": 8, "status": "ok",
             "critical_paths": paths}
    text = bench_boards.format_text({"boards": [board]})
    assert "engine.mac: engine.mac.mem.0.0 -> engine: engine.out" in text
    assert " 14.88  engine.mac:" in text
