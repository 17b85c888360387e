"""The Verilated `Machine` behind a C++ memory model, driven one program per call.

`FastMachine(cfg, mem_words)` compiles (or loads from the cache) the model
and its harness (sim/fast/harness.cpp) and owns one running machine and its
memory, which lives in C++ (``mem_words`` words of ``mem_bytes``; pages are
only touched when used, so a GPT-2-small-sized memory is cheap to create).
`FastMachine.run` streams one program and clocks the machine in C++ until
``done``. `run_programs` has the signature and results of
`sim.harness.machine.run_programs`, so tests and drivers can switch backends.
"""
import ctypes
import time

import numpy as np

from gpt2accel.rtl.isa import INSTR_BITS
from gpt2accel.rtl.machine_config import MachineConfig
from gpt2accel.sim.cycles.matmul import REF_MEM_LATENCY
from .build import FastBackendUnavailable, FastBuildError, build

__all__ = ["FastMachine", "FastSimError", "run_programs", "FastBackendUnavailable",
           "FastBuildError"]

_OK, _TIMEOUT, _EARLY_DONE, _BAD_ADDRESS = range(4)


class _Result(ctypes.Structure):
    # mirrors `gx_result` in harness.cpp
    _fields_ = [("status", ctypes.c_int32), ("error", ctypes.c_int32),
                ("cycles", ctypes.c_uint64), ("icount", ctypes.c_uint64),
                ("outside_cycles", ctypes.c_uint64), ("sim_cycles", ctypes.c_uint64),
                ("reads", ctypes.c_uint64), ("writes", ctypes.c_uint64),
                ("bad_address", ctypes.c_uint64)]


class FastSimError(RuntimeError):
    """The machine addressed a word outside the memory."""


_LIBS = {}   # path -> loaded library: a library is loaded (and typed) once per process
_BUILT = {}  # (config, trace) -> (path, build info): looked up once per process


def _build(cfg, trace, verbose):
    key = (repr(MachineConfig.of(cfg)), trace)
    if key not in _BUILT:
        _BUILT[key] = build(cfg, trace=trace, verbose=verbose)
    return _BUILT[key]


def _load(path):
    path = str(path)
    if path in _LIBS:
        return _LIBS[path]
    lib = ctypes.CDLL(path)
    vp, u64, u8p = ctypes.c_void_p, ctypes.c_uint64, ctypes.POINTER(ctypes.c_uint8)
    lib.gx_create.argtypes, lib.gx_create.restype = [u64], vp
    lib.gx_destroy.argtypes, lib.gx_destroy.restype = [vp], None
    lib.gx_trace_open.argtypes, lib.gx_trace_open.restype = [vp, ctypes.c_char_p], ctypes.c_int
    lib.gx_trace_close.argtypes, lib.gx_trace_close.restype = [vp], None
    lib.gx_mem_ptr.argtypes, lib.gx_mem_ptr.restype = [vp], u8p
    lib.gx_mem_words.argtypes, lib.gx_mem_words.restype = [vp], u64
    lib.gx_total_cycles.argtypes, lib.gx_total_cycles.restype = [vp], u64
    lib.gx_progress.argtypes, lib.gx_progress.restype = [vp, ctypes.POINTER(u64)], u64
    lib.gx_mem_bytes.argtypes, lib.gx_mem_bytes.restype = [], ctypes.c_int
    lib.gx_instr_bytes.argtypes, lib.gx_instr_bytes.restype = [], ctypes.c_int
    lib.gx_write.argtypes, lib.gx_write.restype = [vp, u64, ctypes.c_void_p, u64], ctypes.c_int
    lib.gx_read.argtypes, lib.gx_read.restype = [vp, u64, ctypes.c_void_p, u64], ctypes.c_int
    lib.gx_run_program.argtypes = [vp, ctypes.c_char_p, u64, u64, ctypes.c_double, ctypes.c_int,
                                   ctypes.c_int, u64, ctypes.POINTER(_Result)]
    lib.gx_run_program.restype = ctypes.c_int
    _LIBS[path] = lib
    return lib


class _Verilated:
    """What `FastMachine` and the DRAM co-simulation's `DramMachine` share: a C handle
    (`_h`) into a loaded harness library (`_lib`, whose word width is checked
    against the config's), closing it, and moving words in and out. `_EXTENT`
    names the memory in range errors (`words` fills it)."""
    _EXTENT = "memory of {words}"

    def _attach(self, lib):
        self._lib = lib
        self.mem_bytes = self.cfg.engine.mem_bytes
        if lib.gx_mem_bytes() != self.mem_bytes:     # a stale or foreign library
            raise FastBuildError(f"{self.path} was built for {lib.gx_mem_bytes()}-byte "
                                 f"words, the config has {self.mem_bytes}")
        self._instr_bytes = lib.gx_instr_bytes()

    def close(self):
        if self._h:
            self._lib.gx_destroy(self._h)
            self._h = None

    @property
    def _live(self):
        """The C handle; ValueError after close() (the C side would crash on it)."""
        if not self._h:
            raise ValueError(f"this {type(self).__name__} is closed")
        return self._h

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        self.close()

    @property
    def total_cycles(self):
        """Clock cycles run since creation."""
        return self._lib.gx_total_cycles(self._live)

    def progress(self):
        """(icount, cycles) of the running program as last sampled: callable from another
        thread while `run` blocks (ctypes releases the GIL during the run)."""
        cycles = ctypes.c_uint64()
        icount = self._lib.gx_progress(self._live, ctypes.byref(cycles))
        return icount, cycles.value

    def _outside(self, addr, n):
        return IndexError(f"words {addr}..{addr + n} outside "
                          + self._EXTENT.format(words=self.words))

    def load(self, image, addr=0):
        """Copy `image` (uint8 [n, mem_bytes]) into memory from word `addr`."""
        image = np.ascontiguousarray(image, np.uint8)
        if image.ndim != 2 or image.shape[1] != self.mem_bytes:
            raise ValueError(f"image must be [words, {self.mem_bytes}] uint8, got {image.shape}")
        if self._lib.gx_write(self._live, addr, image.ctypes.data, len(image)):
            raise self._outside(addr, len(image))

    def dump(self, addr=0, n=None):
        """A copy of `n` words from `addr` (default: to the end)."""
        n = self.words - addr if n is None else n
        out = np.empty((n, self.mem_bytes), np.uint8)
        if self._lib.gx_read(self._live, addr, out.ctypes.data, n):
            raise self._outside(addr, n)
        return out


class FastMachine(_Verilated):
    """One Verilated machine and its memory. Close it (or use `with`) to free the memory.

    `trace=True` uses a ``--trace`` build (a separate cached library), so
    `trace_open` can write waveforms.
    """

    def __init__(self, cfg, mem_words, *, trace=False, verbose=False):
        self._h = None            # so close() (and __del__) work if the build fails
        self.cfg = cfg
        self.path, self.build_info = _build(cfg, trace, verbose)
        self._attach(_load(self.path))
        self._h = self._lib.gx_create(mem_words)
        if not self._h:
            raise MemoryError(f"cannot allocate {mem_words} x {self.mem_bytes} bytes of memory")
        self.words = mem_words
        ptr = self._lib.gx_mem_ptr(self._h)
        #: the machine's memory, [words, mem_bytes] uint8, a view (no copy) valid until close()
        self.mem = np.ctypeslib.as_array(ptr, shape=(mem_words, self.mem_bytes))

    def close(self):
        self.mem = None        # the view would outlive the memory it shows
        super().close()

    def trace_open(self, path):
        """Write a VCD of every following cycle to `path` (10 time units a cycle)."""
        if self._lib.gx_trace_open(self._live, str(path).encode()):
            raise RuntimeError("this FastMachine was built without tracing (trace=True)")

    def trace_close(self):
        self._lib.gx_trace_close(self._live)

    def run(self, program, *, seed=0, stall=0.0, jitter=0, latency=None, timeout=2_000_000):
        """Stream `program` (instruction words, ending in HALT) and run to ``done``.

        Returns machine_sim's status dict (error, cycles, icount, outside_cycles)
        plus sim_cycles, reads, writes and wall_s of this call.
        """
        if any(not 0 <= int(w) < 1 << INSTR_BITS for w in program):
            raise ValueError(f"instruction words must be unsigned {INSTR_BITS}-bit integers")
        words = b"".join(int(w).to_bytes(self._instr_bytes, "little") for w in program)
        res = _Result()
        t0 = time.perf_counter()
        status = self._lib.gx_run_program(
            self._live, words, len(program), seed & (2**64 - 1), float(stall), int(jitter),
            REF_MEM_LATENCY if latency is None else int(latency), int(timeout),
            ctypes.byref(res))
        wall = time.perf_counter() - t0
        if status == _TIMEOUT:
            raise TimeoutError(f"program did not finish in {timeout} cycles "
                               f"(GPT2ACCEL_SEED={seed})")
        if status == _EARLY_DONE:
            raise AssertionError("done before the program's HALT was fetched")
        if status == _BAD_ADDRESS:
            raise FastSimError(f"the machine addressed word {res.bad_address}, "
                               f"outside the memory of {self.words} words")
        return {"error": res.error, "cycles": res.cycles, "icount": res.icount,
                "outside_cycles": res.outside_cycles, "sim_cycles": res.sim_cycles,
                "reads": res.reads, "writes": res.writes, "wall_s": wall}


def run_programs(cfg, programs, image, *, seed=0, stall=0.0, jitter=0, latency=None,
                 timeout=2_000_000, vcd=None):
    """`sim.harness.machine.run_programs` on the fast backend: (final memory copy, [status dict]).

    Every program runs on one machine, one after another, as in machine_sim;
    program i gets the seed ``seed + i``. `vcd`: path of a waveform of the
    whole run (uses the tracing build).
    """
    with FastMachine(cfg, len(image), trace=bool(vcd)) as m:
        m.load(image)
        if vcd:
            m.trace_open(vcd)
        results = [m.run(p, seed=seed + i, stall=stall, jitter=jitter, latency=latency,
                         timeout=timeout) for i, p in enumerate(programs)]
        return m.dump(), results
