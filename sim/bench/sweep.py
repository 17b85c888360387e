"""Design-space sweeps: boards x arrays x clocks, one row per point (`gpt2accel sweep`).

    gpt2accel sweep --boards icebreaker,orangecrab-85f --arrays 2x2,4x4,8x8 --plot plots/

Each point is a bitstream build of a board preset with that array and clock
target (`boards.build.build_board`), in OUT/<board>-<R>x<C>-<MHz>MHz/. Its
row: LUT, FF, DSP, BRAM and Fmax as nextpnr reports them, whether the clock
is met, peak GOPS (2 x rows x cols x the clock met), prefill and decode
tokens/s (the exact cycle model's cycles per token at the clock met: the
target when met, else the Fmax the design reaches), the estimated energy of
a token (sim/bench/energy.py) and the build's wall time.

Points are cached by their design hash: a point whose directory holds the
report of the same design files (the RTLIL, constraints and tool script
Amaranth generates, `build.design_hash`) is not built again, whether it
met timing, missed it or did not fit; an interrupted sweep run again
resumes where it stopped (a build that was running starts over). A point
that cannot be built is a row saying why, never the end of the sweep: a
combination refused before any tool runs (the array needs more multipliers
than the chip has, a clock the PLL cannot make, a model the array cannot
run), a design that does not fit or misses timing, a tool that failed.

The builds run on a local process pool (`--jobs`), or with
``--scheduler tcp://HOST:8786`` as tasks on a dask.distributed cluster
(``pip install 'gpt2-accel[cluster]'``): each task returns its report and
its build log, which the client writes into the point's directory. A
worker builds into the same path, so workers that share the client's file
system share its cache; others receive the cached report with the task.

Whole-machine points project the model named by ``--model`` (default the
presets' tiny model) on the point's array: prefill is one program of the
model's context (128 tokens for GPT-2 small) at position 0, decode one
token at the last position, as `bench model` times them. MATMUL-only
co-processor points (the iCEBreaker) give decode as the device's share of
a token, from the build's report; their prefill and energy are not
estimated.
"""
import concurrent.futures
import gc
import json
import os
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

from amaranth.hdl import UnusedElaboratable

from gpt2accel.model import progress

__all__ = ["Point", "parse_points", "build_point", "sweep", "add_arguments", "command",
           "format_text"]

#: row statuses of a point that was not built
BAD = "bad combination"
#: what the sweep leaves beside the points' directories
SWEEP_FILE = "sweep.json"
#: each point's build log, in its directory
LOG_FILE = "sweep.log"
#: seconds between the lines that show the latest phase of the builds while none ends
HEARTBEAT_S = 60


@dataclass(frozen=True)
class Point:
    board: str
    rows: int
    cols: int
    clk_hz: float          # the clock target

    @property
    def name(self):
        return f"{self.board}-{self.rows}x{self.cols}-{self.clk_hz / 1e6:g}MHz"


def _split(text, option):
    items = [x.strip() for x in text.split(",")]
    if not all(items):
        raise ValueError(f"{option} {text!r}: an empty item (a stray comma?)")
    return items


def parse_points(boards, arrays, clocks=None):
    """The points of `boards` x `arrays` x `clocks` (comma-separated text; clocks in MHz,
    None: each preset's clock). Malformed input is a ValueError naming the option."""
    from gpt2accel.boards.presets import PRESETS
    from gpt2accel.sim.bench.model import parse_arrays
    names = _split(boards, "--boards")
    for b in names:
        if b not in PRESETS:
            raise ValueError(f"--boards: unknown board {b!r} (presets: {', '.join(PRESETS)})")
    shapes = parse_arrays(arrays)
    mhz = [None]
    if clocks is not None:
        mhz = []
        for c in _split(clocks, "--clocks"):
            try:
                v = float(c)
            except ValueError:
                raise ValueError(f"--clocks: {c!r} is not a number of MHz") from None
            if not 0 < v < float("inf"):
                raise ValueError(f"--clocks: {c!r} must be a positive number of MHz")
            mhz.append(v)
    points = [Point(b, r, c, PRESETS[b].clk_hz if m is None else m * 1e6)
              for b in names for r, c in shapes for m in mhz]
    return list(dict.fromkeys(points))            # a point named twice is built once


def resolve(point):
    """The preset's machine of `point`, or the reason it cannot be built (one line)."""
    from gpt2accel.boards.presets import PresetError, get_preset
    try:
        return get_preset(point.board).resolve(point.rows, point.cols, point.clk_hz), None
    except PresetError as e:
        return None, str(e)


def build_point(point, out_dir, cached=None):
    """Build one point (on a pool process or a Dask worker): {"status", "error", "report",
    "log"}. `cached`: the client's report of this point, for a worker that does not share
    its file system. Never raises: a point that cannot be built says why."""
    from gpt2accel.boards.build import REPORT_FILE
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError:
        # a worker on another machine, where the client's path cannot be made
        out = Path(tempfile.gettempdir()) / "gpt2accel-sweep" / point.name
        out.mkdir(parents=True, exist_ok=True)
    if cached and not (out / REPORT_FILE).exists():
        (out / REPORT_FILE).write_text(json.dumps(cached, indent=1) + "\n")
    res = {"status": "ok", "error": None, "report": None}
    # the parts of a design that failed to elaborate are never elaborated: Amaranth would
    # warn of each one on stderr when they are collected, a page for one refused point
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnusedElaboratable)
        _build(point, out, res)
        gc.collect()
    log_path = out / LOG_FILE
    res["log"] = log_path.read_text(errors="replace") if log_path.exists() else ""
    res["reused"] = "reused the " in res["log"]
    return res


def _build(point, out, res):
    from gpt2accel.boards.build import BuildError, _Progress, build_board
    # the phase lines go to a file as they come: the client shows the latest while it waits
    log_path = out / LOG_FILE
    try:
        with progress.quiet(), open(log_path, "w") as log:
            res["report"] = build_board(point.board, out, rows=point.rows, cols=point.cols,
                                        clk_hz=point.clk_hz, reuse="result",
                                        progress=_Progress(out=log))
    except BuildError as e:
        status = (e.report or {}).get("status") or "tool error"
        # the row already names the board and the status
        error = str(e)
        for prefix in (f"{point.board}: {status}: ", f"{point.board}: "):
            if error.startswith(prefix):
                error = error[len(prefix):]
                break
        res.update(status=status, error=error, report=e.report)
    except ValueError as e:       # a configuration the design itself refuses to elaborate
        res.update(status=BAD, error=str(e))
    except Exception as e:        # noqa: BLE001 -- one point's failure is its row
        res.update(status="error", error=f"{type(e).__name__}: {e}")


# ---------------------------------------------------------------- projections

class _Projector:
    """Cycles per token and energy of the sweep's model on each array (computed once
    per array)."""

    def __init__(self, model):
        from gpt2accel.sim.bench.model import MODELS
        if model not in MODELS:
            raise ValueError(f"--model: unknown model {model!r} (known: {', '.join(MODELS)})")
        self.model, self.q, self.done = model, None, {}

    def __call__(self, rows, cols):
        key = (rows, cols)
        if key not in self.done:
            self.done[key] = self._project(rows, cols)
        return self.done[key]

    def _project(self, rows, cols):
        from gpt2accel.sim.bench.model import MODELS, sequence_case
        from gpt2accel.sim.host.compiler import ModelCompiler
        from gpt2accel.sim.host.driver import machine_config
        load, prefill_t, loading = MODELS[self.model]
        if self.q is None:
            with progress.step(loading):
                self.q = load()
        try:
            cfg = machine_config(self.q, rows, cols, max_tokens=prefill_t)
            # generation's programs: the last row's logits
            comp = ModelCompiler(cfg, self.q, prefill_t, 1 << cfg.engine.addr_bits,
                                 logit_rows=1)
        except ValueError as e:
            return {"error": f"the {self.model} model on {rows}x{cols}: {e}"}
        n = self.q.config.n_positions
        return {mode: sequence_case(cfg, comp, self.q, t, pos)
                for mode, t, pos in (("prefill", prefill_t, 0), ("decode", 1, n - 1))}


def _row(point, res, project):
    """The table row of a built (or refused) point."""
    rep = res.get("report") or {}
    row = {"point": point.name, **asdict(point), "target_mhz": point.clk_hz / 1e6,
           "status": res["status"], "error": res.get("error"),
           "reused": bool(res.get("reused"))}
    for key in ("lut", "ff", "dsp", "bram", "spram", "fmax_mhz", "timing_met", "build_s",
                "design_sha256", "source", "machine", "utilisation_pct"):
        row[key] = rep.get(key)
    if rep.get("fmax_mhz") is None:
        return row
    met_mhz = point.clk_hz / 1e6 if rep["timing_met"] else rep["fmax_mhz"]
    row["met_mhz"] = met_mhz
    row["gops"] = 2 * point.rows * point.cols * met_mhz / 1e3
    if rep.get("machine") != "whole":
        # a MATMUL-only co-processor: the device's share of a decode token (the report's)
        row["decode_tokens_per_s"] = met_mhz * 1e6 / rep["decode_cycles_per_token"]
        row["basis"] = rep.get("tokens_per_s_basis")
        return row
    proj = project(point.rows, point.cols)
    if "error" in proj:
        row["basis"] = proj["error"]
        return row
    row["model"] = project.model
    for mode in ("prefill", "decode"):
        c = proj[mode]
        row[f"{mode}_cycles_per_token"] = c["cycles_per_token"]
        row[f"{mode}_tokens_per_s"] = met_mhz * 1e6 / c["cycles_per_token"]
        row[f"{mode}_energy_uj"] = c["energy_per_token_uj"]
        row[f"{mode}_energy_uj_dram"] = c["energy_per_token_uj_dram"]
    return row


# ---------------------------------------------------------------- running

class _LocalPool:
    def __init__(self, jobs):
        # spawn: a forked copy of a process with threads (the progress ticker) can hang
        import multiprocessing
        self.ex = concurrent.futures.ProcessPoolExecutor(
            max_workers=jobs, mp_context=multiprocessing.get_context("spawn"))
        self.where = f"a local pool of {jobs} process{'es' if jobs > 1 else ''}"

    def submit(self, *args):
        return self.ex.submit(build_point, *args)

    def wait(self, futures, timeout):
        """(done, not done) once one is done or after `timeout` seconds."""
        return concurrent.futures.wait(futures, timeout,
                                       return_when=concurrent.futures.FIRST_COMPLETED)

    def close(self, cancel=False):
        self.ex.shutdown(wait=not cancel, cancel_futures=cancel)


class _DaskPool:
    def __init__(self, address):
        try:
            from distributed import Client
        except ImportError:
            raise ValueError("--scheduler needs dask.distributed: pip install "
                             "'gpt2-accel[cluster]'") from None
        try:
            self.client = Client(address, timeout="10s")
        except (OSError, TimeoutError, ValueError) as e:
            raise ValueError(f"--scheduler {address}: cannot connect: {e}") from None
        workers = len(self.client.scheduler_info().get("workers", {}))
        self.where = f"the Dask cluster at {address} ({workers} workers)"

    def submit(self, *args):
        # pure=False: a rebuilt source tree must build again, whatever the arguments
        return self.client.submit(build_point, *args, pure=False)

    def wait(self, futures, timeout):
        import asyncio
        from distributed import wait
        try:
            done, pending = wait(futures, timeout=timeout, return_when="FIRST_COMPLETED")
        except (TimeoutError, asyncio.TimeoutError):    # distinct types before Python 3.11
            return set(), set(futures)
        return set(done), set(pending)

    def close(self, cancel=False):
        self.client.close()


def sweep(points, out, *, model="tiny", jobs=None, scheduler=None):
    """Build every point (cached, see the module docstring); {"points": [row...], ...},
    also written to OUT/sweep.json."""
    from gpt2accel.boards.build import REPORT_FILE
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out}: not a directory")
    project = _Projector(model)
    results, todo = {}, []
    with progress.step(f"checking {len(points)} point{'s' if len(points) > 1 else ''} "
                       f"against the presets"):
        for p in points:
            machine, why = resolve(p)
            if machine is None:
                results[p] = {"status": BAD, "error": why, "report": None}
            else:
                todo.append(p)
    t0 = time.perf_counter()
    if todo:
        pool = _DaskPool(scheduler) if scheduler else _LocalPool(
            max(1, min(jobs or os.cpu_count() or 1, len(todo))))
        progress.note(f"sweep: building {len(todo)} point{'s' if len(todo) > 1 else ''} on "
                      f"{pool.where} into {out} (a point already built from the same design "
                      f"files is reused)")
        futures = {}
        for p in todo:
            cached = None
            try:
                cached = json.loads((out / p.name / REPORT_FILE).read_text())
            except (OSError, ValueError):
                pass
            futures[pool.submit(p, str((out / p.name).resolve()), cached)] = p
        bar = progress.bar(None, "sweep", total=len(todo), unit="points", start=t0)
        cancel = True
        try:
            pending = set(futures)
            while pending:
                done, pending = pool.wait(pending, HEARTBEAT_S)
                for fut in done:
                    p = futures[fut]
                    try:
                        res = fut.result()
                    except Exception as e:   # noqa: BLE001 -- a lost worker: the point's row
                        res = {"status": "error", "error": f"{type(e).__name__}: {e}",
                               "report": None, "log": ""}
                    results[p] = res
                    _keep(out / p.name, res)
                    bar.update(extra=f"{p.name}: {_short(res)}")
                if not done:
                    latest = _latest_phase(out, [futures[f] for f in pending])
                    if latest:
                        bar.update(bar.n, extra=latest)
            cancel = False
        finally:
            bar.close()
            pool.close(cancel=cancel)
    rows = [_row(p, results[p], project) for p in points]
    result = {"points": rows, "model": model, "out": str(out),
              "energy_source": _energy_source()}
    out.mkdir(parents=True, exist_ok=True)
    (out / SWEEP_FILE).write_text(json.dumps(result, indent=1) + "\n")
    return result


def _latest_phase(out, points):
    """The last line of the most recently written build log among `points` (those that a
    worker sharing this file system is building)."""
    logs = [(out / p.name / LOG_FILE, p) for p in points]
    logs = [(path.stat().st_mtime, path, p) for path, p in logs if path.is_file()]
    if not logs:
        return None
    _, path, p = max(logs, key=lambda x: x[0])
    lines = path.read_text(errors="replace").splitlines()
    return f"{p.name}: {lines[-1].strip()}" if lines else None


def _energy_source():
    from gpt2accel.sim.bench.energy import SOURCE
    return SOURCE


def _keep(point_dir, res):
    """The log (and report) a worker sent back, in the point's directory on the client."""
    from gpt2accel.boards.build import REPORT_FILE
    point_dir.mkdir(parents=True, exist_ok=True)
    (point_dir / LOG_FILE).write_text(res.get("log") or "")
    if res.get("report"):
        (point_dir / REPORT_FILE).write_text(json.dumps(res["report"], indent=1) + "\n")


def _short(res):
    if res["status"] == "ok":
        rep = res["report"]
        return f"ok, Fmax {rep['fmax_mhz']:.1f} MHz"
    return res["status"]


# ---------------------------------------------------------------- command line

HELP = ("build boards x arrays x clocks and tabulate resources, Fmax, tokens/s and energy "
        "per point (cached, resumable; a local pool or a Dask cluster)")


def add_arguments(p):
    from gpt2accel.boards.presets import PRESETS
    p.add_argument("--boards", required=True,
                   help=f"comma-separated board presets among {', '.join(PRESETS)}")
    p.add_argument("--arrays", required=True,
                   help="comma-separated array shapes RxC, e.g. 2x2,4x4,8x8")
    p.add_argument("--clocks", default=None, metavar="MHZ,...",
                   help="comma-separated clock targets in MHz (default: each preset's)")
    from gpt2accel.sim.bench.model import MODELS
    p.add_argument("--model", default="tiny",
                   help=f"the model whose prefill and decode tokens/s and energy are "
                        f"projected on each whole-machine point, among {', '.join(MODELS)} "
                        f"(default: %(default)s)")
    p.add_argument("--out", default=os.path.join("build", "sweep"),
                   help="the points' build directories and sweep.json (default: %(default)s)")
    p.add_argument("--jobs", type=int, default=None,
                   help="builds at a time on the local pool (default: one per core)")
    p.add_argument("--scheduler", default=None, metavar="tcp://HOST:8786",
                   help="run the builds on this dask.distributed scheduler instead "
                        "(pip install 'gpt2-accel[cluster]')")
    p.add_argument("--plot", metavar="DIR", default=None,
                   help="also write the Pareto fronts (tokens/s against LUTs and DSPs, per "
                        "board) as PNG and SVG into DIR (pip install 'gpt2-accel[plots]')")
    p.add_argument("--json", action="store_true", help="print the result as one JSON object")


def command(args):
    """`gpt2accel sweep`: every option checked before any build; the table (or JSON) on
    stdout, progress on stderr."""
    points = parse_points(args.boards, args.arrays, args.clocks)
    if args.jobs is not None and args.jobs < 1:
        raise ValueError(f"--jobs {args.jobs}: at least 1")
    if args.scheduler and args.jobs is not None:
        raise ValueError("--jobs is for the local pool; the Dask cluster has its own workers")
    if args.scheduler and not args.scheduler.startswith(("tcp://", "tls://", "inproc://",
                                                         "ws://", "wss://", "ucx://")):
        raise ValueError(f"--scheduler {args.scheduler!r}: a scheduler address such as "
                         f"tcp://HOST:8786")
    from gpt2accel.sim.bench.model import MODELS
    if args.model not in MODELS:
        raise ValueError(f"--model: unknown model {args.model!r} (known: {', '.join(MODELS)})")
    if args.plot:
        from gpt2accel.sim.bench.plots import check_plot_dir
        check_plot_dir(args.plot, "--plot")
    result = sweep(points, args.out, model=args.model, jobs=args.jobs,
                   scheduler=args.scheduler)
    if args.plot:
        from gpt2accel.sim.bench.plots import sweep_plots
        result["plots"] = sweep_plots(result, args.plot)
    print(json.dumps(result) if args.json else format_text(result))


def format_text(result):
    def num(v, fmt):
        return "-" if v is None else format(v, fmt)

    lines = [f"{'board':15} {'array':5} {'target':>6} {'LUT':>7} {'FF':>7} {'DSP':>4} "
             f"{'BRAM':>4} {'Fmax':>6} {'met':>3} {'GOPS':>5} {'prefill':>8} {'decode':>8} "
             f"{'uJ/tok':>7} {'build':>6}  status"]
    for r in result["points"]:
        status = (r["status"] + (" (cached)" if r.get("reused") else "")
                  + (f": {r['error']}" if r.get("error") else ""))
        met = "-" if r.get("timing_met") is None else ("yes" if r["timing_met"] else "no")
        lines.append(
            f"{r['board']:15} {r['rows']}x{r['cols']:<3} {r['target_mhz']:6g} "
            f"{num(r.get('lut'), ',d'):>7} {num(r.get('ff'), ',d'):>7} "
            f"{num(r.get('dsp'), 'd'):>4} {num(r.get('bram'), 'd'):>4} "
            f"{num(r.get('fmax_mhz'), '.1f'):>6} {met:>3} {num(r.get('gops'), '.2f'):>5} "
            f"{num(r.get('prefill_tokens_per_s'), ',.0f'):>8} "
            f"{num(r.get('decode_tokens_per_s'), ',.0f'):>8} "
            f"{num(r.get('decode_energy_uj'), '.3f'):>7} "
            f"{num(r.get('build_s'), '.0f') + ('s' if r.get('build_s') is not None else ''):>6}"
            f"  {status}")
    lines.append(f"target, Fmax: MHz; GOPS: 2 x rows x cols x the clock met (the target, else "
                 f"Fmax); prefill, decode: tokens/s of the {result['model']} model (exact "
                 f"cycle model) at that clock; uJ/tok: a decode token's estimated energy "
                 f"(parameters in block RAM; {result['energy_source']}); build: wall "
                 f"seconds of the point's build (cached: of the build that made it). "
                 f"MATMUL-only co-processors: decode is the device's share of a token (the "
                 f"rest runs on the host), no prefill or energy figure")
    for path in result.get("plots", []):
        lines.append(f"plot: {path}")
    return "\n".join(lines)
