"""One driver API for the whole-model machine over interchangeable backends.

    drv = Driver(qmodel, machine_config(qmodel, 8, 8), backend="pysim")
    logits = drv.prefill(ids)          # int logits [1, vocab] of the last row; KV caches stay
    logits = drv.decode(token)         # int logits [1, vocab]
    drv.logits_float(logits[-1]); drv.last  # dequantised; counters of the last call

    drv = Driver(qmodel, cfg, logits="all", context=256)   # scoring: every row's logits
    logits = drv.prefill(ids)          # [T, vocab]; prefill(ids, logits="last") still allowed

    drv = Driver(qmodel, cfg, batch=4)  # 4 sequences, each with its own KV caches
    for b, p in enumerate(prompts):
        drv.prefill(p, seq=b)
    logits = drv.decode_batch(tokens)  # [4, vocab]: one step of every sequence, one program

The memory map holds what the driver was made for: logits buffers of one row
("last", generation) or max_m rows ("all", scoring), KV caches for `context`
positions (default the model's n_positions).

As in Glasgow (one API for the simulator and the device), everything above
the `Backend` is the same whichever runs the machine: `Driver` compiles the
model (`ModelCompiler`), writes the memory image once, writes token ids,
streams programs and reads the logits back. A `Backend` only moves memory
words and runs one program to HALT, returning the machine's status
(error, cycles, icount). Backends: ``pysim`` (Amaranth's simulator via
`machine_sim.run_programs`; that harness starts a fresh simulator per call,
so the backend carries the memory image - weights and KV caches - across
calls, which is exact because the machine is idle between programs) and
``fast`` (the Verilated machine of `sim.fast`, which keeps its memory in C++),
and a board's ``serial`` link or its Verilated stand-in ``board-sim``
(`sim.host.serial.SerialBackend`); `sim.host.backends` names them all.
"""
import abc
import contextlib
import threading
import time

import numpy as np

from gpt2accel.model import progress
from gpt2accel.model.gpt2 import KVCache
from gpt2accel.rtl.config import EngineConfig
from gpt2accel.rtl.machine_config import MachineConfig, machine_ops
from gpt2accel.rtl.isa import BETA_BYTES, Error, Op
from gpt2accel.sim.host.backends import make_backend
from gpt2accel.sim.host.compiler import CompileError, ModelCompiler
from gpt2accel.sim.cycles.program import program_cycles

__all__ = ["program_macs", "map_words", "Backend", "PysimBackend", "FastBackend",
           "HardwareError", "CheckError", "MachineSizeError", "Driver", "machine_config",
           "array_error",
           "MIN_ADDR_BITS", "PROGRESS_AFTER_S"]


class HardwareError(RuntimeError):
    """The machine reported an error status (or did not execute the whole program)."""


class CheckError(AssertionError):
    """The machine's integer results differ from the golden model; names layer and op."""


# ---------------------------------------------------------------- backends

class Backend(abc.ABC):
    """The machine behind the driver: memory words in and out, one program per `run`.

    An interface: the simulators and a board over a serial link implement it.
    """
    name = "?"

    @abc.abstractmethod
    def open(self, cfg, mem_words):
        """Create a machine of `cfg` with `mem_words` words of zeroed memory."""

    @abc.abstractmethod
    def load(self, image, addr=0):
        """Write uint8 words [n, mem_bytes] from word `addr`."""

    def load_image(self, image):
        """Write the whole memory image from word 0, the weights in it: `load`, unless
        the backend has a better way (a board: checked and resumable,
        `SerialBackend.load_image`)."""
        self.load(image)

    @abc.abstractmethod
    def dump(self, addr=0, n=None):
        """A copy of `n` words from `addr` (default: to the end)."""

    @abc.abstractmethod
    def run(self, program):
        """Run one program (words ending in HALT) to ``done``: status dict with at least
        error, cycles, icount, wall_s."""

    def progress(self):
        """(instructions done, cycles) of the program `run` is running, read from another
        thread while `run` blocks; None when the backend cannot tell."""
        return None

    def close(self):
        pass


class PysimBackend(Backend):
    """Amaranth's simulator. `vcd`: write each run's waveform (run i -> FILE, FILE.1, ...)."""
    name = "pysim"

    def __init__(self, vcd=None):
        self.vcd, self.runs = vcd, 0
        self.status = {}          # the running program's icount and cycles (machine_sim)

    def open(self, cfg, mem_words):
        self.cfg = cfg
        self.mem = np.zeros((mem_words, cfg.engine.mem_bytes), np.uint8)

    def load(self, image, addr=0):
        self.mem[addr:addr + len(image)] = image

    def dump(self, addr=0, n=None):
        n = len(self.mem) - addr if n is None else n
        return self.mem[addr:addr + n].copy()

    def run(self, program):
        from gpt2accel.sim.harness.machine import run_programs
        kw = {}
        if self.vcd:
            kw["vcd"] = self.vcd if self.runs == 0 else f"{self.vcd}.{self.runs}"
        self.status = {}
        self.mem, (res,) = run_programs(self.cfg, [program], self.mem, timeout=50_000_000,
                                        status=self.status, **kw)
        self.runs += 1
        return res

    def progress(self):
        st = self.status
        return (st["icount"], st["cycles"]) if st else None


class FastBackend(Backend):
    """The Verilated machine (`sim.fast`); raises `FastBackendUnavailable` in `open`
    when Verilator or a C++ compiler is missing.

    `memory`: "ideal" (the memory model of sim/fast/harness.cpp, a fixed latency) or
    "dram" (`board`'s DRAM through its LiteDRAM controller and PHY model,
    `sim.fast.dram`; `board` is one of `boards.dram.BOARDS` or a LiteDRAM config file):
    each run's status also has ``dram``, the controller's commands; a memory map
    larger than the DRAM raises `MachineSizeError` in `open`. `timeout`: the cycles a
    program may take before `TimeoutError` (a machine that never finishes)."""
    name = "fast"

    def __init__(self, memory="ideal", board=None, timeout=500_000_000):
        if memory not in ("ideal", "dram"):
            raise ValueError(f"memory={memory!r}: 'ideal' or 'dram'")
        if (memory == "dram") != (board is not None):
            raise ValueError("a board names the DRAM of memory='dram', and only of it")
        self.memory, self.board, self.timeout = memory, board, timeout

    def open(self, cfg, mem_words):
        if self.memory == "dram":
            from gpt2accel.sim.fast.dram import DramMachine
            self.m, self.words = DramMachine(cfg, self.board), mem_words
            if mem_words > self.m.words:
                words = self.m.words
                self.m.close()
                raise MachineSizeError(
                    f"the memory image of {mem_words:,} words of {cfg.engine.mem_bytes} bytes "
                    f"does not fit {self.board}'s DRAM of {words:,} words",
                    mem_words, _need_bits(mem_words))
            return
        from gpt2accel.sim.fast import FastMachine
        self.m = FastMachine(cfg, mem_words)

    def load(self, image, addr=0):
        self.m.load(image, addr)

    def dump(self, addr=0, n=None):
        if n is None and self.memory == "dram":
            n = self.words - addr       # the image, not the rest of the DRAM
        return self.m.dump(addr, n)

    def run(self, program):
        return self.m.run(program, timeout=self.timeout)

    def progress(self):
        return self.m.progress()

    def close(self):
        self.m.close()


# ---------------------------------------------------------------- configuration

#: The narrowest address width `machine_config` chooses: every machine sized before
#: the width followed the model had 16 bits, and keeps them (and its Verilator build).
MIN_ADDR_BITS = 16


class MachineSizeError(CompileError):
    """An explicit address width (or memory size) too small for the model's memory map.
    `words`: what the map needs; `need_bits`: the narrowest address width holding it."""

    def __init__(self, message, words, need_bits):
        super().__init__(message)
        self.words, self.need_bits = words, need_bits


def _need_bits(words):
    """The narrowest address width reaching `words` words."""
    return max(1, (words - 1).bit_length())


def _lanes(limit, *divides):
    """The largest lane count <= 2 within `limit` that divides all of `divides` (1 always
    does): the attention's softmax and normaliser move 2 values a cycle where the memory
    word allows it, and every config that allowed it keeps exactly that."""
    return max(n for n in (1, 2) if n <= limit and all(d % n == 0 for d in divides))


def array_error(cols, mem_bytes=None):
    """Why no whole machine has `cols` columns on words of `mem_bytes` bytes (None: the
    default, 2*cols), or None. The attention reads raw int32 rows word by word, the vector
    mover a LayerNorm beta (int64) from one word, so a word is a multiple of 4 bytes and
    at least 8. (`machine_config` leaves this to the RTL, which refuses such a machine
    only when it is built; a front end checks it first to name its own option.)"""
    if mem_bytes is None:
        if cols % 2 or 2 * cols < BETA_BYTES:
            return (f"cols={cols}: the whole machine needs an even number of columns, at "
                    f"least {BETA_BYTES // 2} (its memory word of 2*cols bytes holds whole "
                    f"int32 and an int64), or a --mem-bytes that does")
    elif mem_bytes % 4 or mem_bytes < BETA_BYTES:
        return (f"mem_bytes={mem_bytes}: the whole machine's memory word holds whole int32 "
                f"and an int64: a multiple of 4 bytes, at least {BETA_BYTES}")
    return None


def machine_config(qmodel, rows=8, cols=8, max_tokens=8, addr_bits=None, batch=1, *,
                   ops=None, mem_bytes=None):
    """The smallest machine of `rows` x `cols` this model needs (a `MachineConfig`): the
    one function from a model to a machine, for the driver, the CLI and the board presets.

    The whole machine (`ops` None): matmul limits from n_embd and the vocabulary,
    `max_tokens` rows per program (at least `rows`, the attention's row block; longer
    prompts are prefilled in chunks), one head's d_head, the model's tile, context and
    residual width, softmax/normaliser lanes as wide (up to 2) as the memory word allows.
    `ops` = MATMUL alone: the co-processor that offloads the linear layers
    (`offload.OffloadDriver`): K and N up to 4*n_embd, the attention fields at their
    smallest (unused by it; the ISA's field widths still follow them). `mem_bytes`: the
    memory word (None: 2*cols).

    `addr_bits`: the word-address width; None sizes it from the model's memory map
    (weights, buffers, KV caches of `batch` sequences: `ModelCompiler`'s, computed
    without packing anything;
    for the offload, its weights and buffers), at least `MIN_ADDR_BITS`. An explicit
    width too narrow for the map raises `MachineSizeError` naming the width needed;
    shapes the array cannot hold raise `CompileError` / `ConfigError` (both ValueErrors);
    see also `array_error`."""
    mc = qmodel.config
    max_tokens = max(max_tokens, rows)
    d_head = mc.n_embd // mc.n_head
    offload = ops is not None and machine_ops(ops) == (Op.MATMUL, Op.HALT)

    def config(bits):
        machine = {"resid_bits": qmodel.resid_bits, "ops": ops}
        if offload:
            engine = EngineConfig(rows=rows, cols=cols, max_k=4 * mc.n_embd, max_m=max_tokens,
                                  max_n=4 * mc.n_embd, addr_bits=bits, mem_bytes=mem_bytes)
            return MachineConfig(engine=engine, tile=2, lanes=1, norm_lanes=1,
                                 max_d_head=d_head, max_seq=mc.n_positions, **machine)
        engine = EngineConfig(rows=rows, cols=cols, max_k=4 * mc.n_embd, max_m=max_tokens,
                              max_n=max(4 * mc.n_embd, mc.vocab_size), addr_bits=bits,
                              mem_bytes=mem_bytes)
        per_word = engine.mem_bytes // 4
        return MachineConfig(
            engine=engine, tile=qmodel.tile, frac_bits=qmodel.frac_bits,
            lanes=_lanes(qmodel.tile, per_word), norm_lanes=_lanes(d_head, per_word, d_head),
            max_d_head=d_head, max_seq=mc.n_positions, **machine)

    def map_words(cfg):
        if offload:
            from gpt2accel.sim.host.offload import offload_words
            return offload_words(cfg, qmodel)
        return ModelCompiler(cfg, qmodel, cfg.engine.max_m, None, batch=batch).end

    # the memory map does not depend on the address width: size it at the widest
    cfg = config(addr_bits if addr_bits is not None else 48)
    words = map_words(cfg)
    need_bits = _need_bits(words)
    if addr_bits is None:
        return config(max(MIN_ADDR_BITS, need_bits))
    if words > 1 << addr_bits:
        raise MachineSizeError(
            f"addr_bits={addr_bits} addresses {1 << addr_bits:,} words, the model's memory "
            f"map needs {words:,}: use addr_bits >= {need_bits} (None sizes it from the "
            f"model)", words, need_bits)
    return cfg


def program_macs(ops):
    """Useful multiply-accumulates of a program ((Op, fields) pairs): every MATMUL's
    m*k*n, and attention's QKᵀ and PV products over the causal keys only (row r of
    tq at position offset + r sees offset + r + 1 keys). Utilisation is this over
    rows*cols*cycles."""
    total = 0
    for op, f in ops:
        if op == Op.MATMUL:
            total += f["m"] * f["k"] * f["n"]
        elif op == Op.ATTENTION:
            keys = sum(f["offset"] + r + 1 for r in range(f["tq"]))
            total += 2 * f["n_head"] * f["d_head"] * keys
    return total


# ---------------------------------------------------------------- driver

def _map_args(cfg, logits, context, batch):
    return dict(logit_rows=cfg.engine.max_m if logits == "all" else batch, context=context,
                batch=batch)


def map_words(qmodel, cfg, *, logits="last", context=None, batch=1):
    """Memory words of the map a `Driver` of these arguments loads (weights, buffers,
    KV caches): what a memory must hold, known before any machine is built."""
    return ModelCompiler(cfg, qmodel, cfg.engine.max_m, None,
                         **_map_args(cfg, logits, context, batch)).end



class Driver:
    """The whole `qmodel` on a machine of `cfg` behind `backend` (a name or `Backend`).

    `on_program(status)` is called after every program (a long prompt runs as several).
    `check`: after every call compare the integer logits with `QuantGPT2.forward`
    (run alongside on its own KV cache) on the rows computed; on a mismatch, localise
    it to the first instruction whose result differs from the model's observe hooks
    and raise `CheckError` naming the layer and operation.
    `logits`: what `prefill` returns unless told otherwise, and what the memory map
    holds: "last" (the last row's logits, all that generation needs) or "all" (every
    row's, for scoring). `context`: positions the KV caches hold (default the
    model's n_positions); prefill and decode stop there. `batch`: sequences with KV
    caches of their own (`prefill(ids, seq=b)`, `decode(token, seq=b)`), decoded
    together by `decode_batch`.
    """

    def __init__(self, qmodel, cfg, backend="pysim", *, mem_words=None, check=False,
                 on_program=None, logits="last", context=None, batch=1):
        self.q, self.cfg = qmodel, cfg
        if logits not in ("last", "all"):
            raise ValueError(f"logits={logits!r}: 'last' (generation) or 'all' (scoring)")
        n_pos = qmodel.config.n_positions
        if context is not None and not 1 <= context <= n_pos:
            raise ValueError(f"context={context}: outside 1..n_positions {n_pos}")
        self.logits, self.context = logits, context or n_pos
        self.on_program = on_program  # called with each program's status (progress)
        self.backend = make_backend(backend) if isinstance(backend, str) else backend
        if not 1 <= batch <= cfg.engine.max_m:
            raise ValueError(f"batch={batch}: outside 1..max_m {cfg.engine.max_m} (a batched "
                             f"step has one row per sequence)")
        self.batch = batch
        self._map = _map_args(cfg, logits, self.context, batch)
        need = map_words(qmodel, cfg, logits=logits, context=self.context, batch=batch)
        if mem_words is not None and mem_words < need:
            raise MachineSizeError(f"mem_words={mem_words:,}: the model's memory map needs "
                                   f"{need:,} words (None sizes the memory from the model)",
                                   need, _need_bits(need))
        if need > 1 << cfg.engine.addr_bits:
            raise MachineSizeError(
                f"addr_bits={cfg.engine.addr_bits} addresses {1 << cfg.engine.addr_bits:,} "
                f"words, the model's memory map needs {need:,} (machine_config sizes "
                f"addr_bits from the model)", need, _need_bits(need))
        # the memory is what the model uses (its map), not the whole address space:
        # 2^24 words of GPT-2 small would be a quarter of a gigabyte per copy
        self.mem_words = mem_words or need
        self.comp = ModelCompiler(cfg, qmodel, cfg.engine.max_m, self.mem_words, **self._map)
        self.check = check
        self.positions, self.seq = [0] * batch, 0   # each sequence's next position
        self.loaded = False
        self.last = None          # status of the last program (cycles, predicted, wall_s...)
        self.history = []         # one status per program run

    def load(self):
        """Create the machine and write the memory image (weights, zeroed caches)."""
        # GPT-2 small's image takes seconds to pack and copy; a small model's, milliseconds
        big = self.mem_words >= _BIG_IMAGE_WORDS
        with (progress.step(f"{self.backend.name}: writing the {self.mem_words:,}-word memory "
                            f"image (weights, parameters, empty KV caches)")
              if big else contextlib.nullcontext()):
            self.backend.open(self.cfg, self.mem_words)
            self.backend.load_image(self.comp.image())
        self.positions, self.loaded = [0] * self.batch, True
        self.golden_caches = [KVCache(self.q.config.n_layer) for _ in range(self.batch)]
        return self

    def close(self):
        self.backend.close()

    @property
    def pos(self):
        """The next position of the sequence the last prefill / decode ran."""
        return self.positions[self.seq]

    @pos.setter
    def pos(self, value):
        self.positions[self.seq] = value

    @property
    def golden_cache(self):
        return self.golden_caches[self.seq]

    def _execute(self, prog, what, info, keep=False):
        """Run one program; its status (with `info`, the cycle model's prediction and the
        useful MACs) goes to `history`; an error status raises `HardwareError`. `keep`:
        return the memory before the run (the check's localisation re-runs from it)."""
        before = self.backend.dump() if keep else None
        with _RunProgress(self.backend, what, len(prog)):
            res = dict(self.backend.run(prog))
        res.update(info, instructions=len(prog))
        self.last = res
        self.history.append(res)
        if self.on_program is not None:
            self.on_program(res)
        if res["error"] != Error.NONE:
            raise HardwareError(f"machine error status {Error(res['error']).name} "
                                f"after {res['icount']} of {len(prog)} instructions "
                                f"(T={res['T']}, pos={res['pos']})")
        if res["icount"] != len(prog):
            raise HardwareError(f"machine executed {res['icount']} of {len(prog)} instructions")
        return before

    def _write_ids(self, write, ids):
        r = self.comp.regions["ids"]
        img = self.backend.dump(r.base, r.words)
        write(_Shifted(img, r.base), ids)
        self.backend.load(img, r.base)

    # ---- programs
    def _run(self, ids, logits):
        """One program for `ids` at the current position; returns the int logits asked
        ([T, vocab], [1, vocab] or None)."""
        t = len(ids)
        self._write_ids(self.comp.write_ids, ids)
        prog = self.comp.program(t, self.pos, logits, self.seq)
        what = f"{self.backend.name}: {t} token{'s' if t > 1 else ''} at position {self.pos}"
        if self.batch > 1:
            what += f" of sequence {self.seq}"
        before = self._execute(prog, what, dict(
            T=t, pos=self.pos, seq=self.seq, logits=logits,
            predicted_cycles=_predict(self.cfg, prog, _ids_memory(self.comp, ids)),
            macs=program_macs(self.comp.ops(t, self.pos, logits, self.seq))), self.check)
        rows = self.comp.logit_count(t, logits)
        out = self.read_logits(rows) if rows else None
        if self.check:
            self._check(ids, out, before, logits)
        self.pos += t
        return out

    def _context_limit(self):
        n_pos = self.q.config.n_positions
        return (f"n_positions={n_pos}" if self.context == n_pos
                else f"context={self.context} (n_positions {n_pos})")

    def _sequence(self, seq):
        if not 0 <= seq < self.batch:
            raise ValueError(f"seq={seq}: outside 0..{self.batch - 1} (batch={self.batch})")
        self.seq = seq

    def prefill(self, ids, logits=None, seq=0):
        """Run the prompt (in chunks of max_m tokens) from position 0 of sequence `seq`.
        `logits`: "last" (int logits [1, vocab] of the last row) or "all" ([T, vocab]);
        default the driver's `logits`. "all" needs a driver made with logits="all"
        (its buffers)."""
        self._sequence(seq)
        logits = self.logits if logits is None else logits
        if logits not in ("last", "all"):
            raise ValueError(f"logits={logits!r}: 'last' (generation) or 'all' (scoring)")
        if logits == "all" and self.logits != "all":
            raise ValueError("logits='all' needs a Driver made with logits='all' (its memory "
                             "holds logits of the last rows only)")
        ids = [int(i) for i in ids]
        if not ids:
            raise ValueError("prefill needs at least one token")
        if len(ids) > self.context:
            raise ValueError(f"prompt of {len(ids)} tokens exceeds the context "
                             f"{self._context_limit()}")
        if not self.loaded or (self.pos and self.batch == 1):
            self.load()                       # a new sequence: fresh image, empty caches
        elif self.batch > 1:
            # the other sequences keep their caches: a prefill from position 0 rewrites
            # every cache entry it reads, so this one's restart needs no clearing
            self.pos = 0
            self.golden_caches[seq] = KVCache(self.q.config.n_layer)
        m = self.cfg.engine.max_m
        starts = range(0, len(ids), m)
        # with the last row's logits only, the earlier chunks skip the head entirely
        out = [self._run(ids[s:s + m], logits if logits == "all" or s == starts[-1]
                         else "none") for s in starts]
        return np.concatenate([o for o in out if o is not None])

    def decode(self, token, seq=0):
        """One token at the next position of sequence `seq`; int logits [1, vocab]."""
        self._sequence(seq)
        self._decodable(seq)
        return self._run([int(token)], "last")

    def _decodable(self, seq):
        what = "" if self.batch == 1 else f"sequence {seq}: "
        if not self.loaded or self.positions[seq] == 0:
            raise ValueError(f"{what}decode needs a prefill first (the prompt fills the KV "
                             f"caches)")
        if self.positions[seq] >= self.context:
            raise ValueError(f"{what}context full: {self._context_limit()}")

    def decode_batch(self, tokens):
        """One decode step of sequences 0 .. len(tokens)-1 in one program: token b at
        sequence b's next position, on its caches; every linear layer runs once for all
        of them. Int logits [len(tokens), vocab], row b sequence b's."""
        tokens = [int(t) for t in tokens]
        if not 1 <= len(tokens) <= self.batch:
            raise ValueError(f"decode_batch of {len(tokens)} tokens: 1..batch={self.batch}")
        for b in range(len(tokens)):
            self._decodable(b)
        positions = self.positions[:len(tokens)]
        self._write_ids(self.comp.write_batch_ids, tokens)
        prog = self.comp.batch_program(positions)
        ops = [(op, f) for op, f, _ in self.comp.batch_annotated_ops(positions)]
        n = len(tokens)
        self._execute(prog, f"{self.backend.name}: {n} sequences at positions "
                            f"{positions[0]}..{max(positions)}", dict(
            T=n, pos=positions[0], positions=positions, batch=n, logits="all",
            predicted_cycles=_predict(self.cfg, prog, _ids_memory(self.comp, tokens, True)),
            macs=program_macs(ops)))
        logits = self.read_logits(n)
        if self.check:
            for b, token in enumerate(tokens):
                want = self.q.forward(np.asarray([token]), self.golden_caches[b])
                if not np.array_equal(logits[b:b + 1], want):
                    col = int(np.argwhere(logits[b] != want[0])[0][0])
                    raise CheckError(f"logits of sequence {b} differ from QuantGPT2 at "
                                     f"position {positions[b]}, vocab index {col} (machine "
                                     f"{logits[b, col]}, model {want[0, col]}) in a batched "
                                     f"step of {n}")
        for b in range(n):
            self.positions[b] += 1
        return logits

    # ---- reads
    def read_logits(self, rows):
        """The int logits of the last program's `rows` rows (region "logits")."""
        r = self.comp.regions["logits"]
        mem = _Shifted(self.backend.dump(r.base, rows * r.stride), r.base)
        return self.comp.read_rows(mem, "logits", rows, self.comp.V)

    def logits_float(self, logits):
        """Dequantised float logits (as `QuantGPT2.logits`)."""
        return self.q.dequantize_logits(np.asarray(logits))

    def counters(self):
        """Totals over every program run: cycles, instructions, wall seconds."""
        h = self.history
        return {"programs": len(h), "cycles": sum(r["cycles"] for r in h),
                "predicted_cycles": sum(r["predicted_cycles"] or 0 for r in h),
                "instructions": sum(r["icount"] for r in h),
                "wall_s": sum(r.get("wall_s", 0.0) for r in h),
                "error": h[-1]["error"] if h else 0}

    # ---- checking
    def _check(self, ids, logits, before, mode):
        seen = {}
        want = self.q.forward(np.asarray(ids), self.golden_cache,
                              observe=lambda n, l, x: seen.setdefault((n, l), np.asarray(x)))
        if logits is None:
            # no logits: the program's last result is the final residual, checked as such
            got = self.comp.read_rows(self._window("x", len(ids)), "x", len(ids), self.comp.E)
            if np.array_equal(got, seen[("resid", self.q.config.n_layer - 1)]):
                return
            where = self._localise(ids, seen, before, mode)
            raise CheckError(f"the final residual differs from QuantGPT2; {where}")
        first = len(ids) - len(logits)
        want = want[first:]
        if np.array_equal(logits, want):
            return
        row, col = (int(i) for i in np.argwhere(logits != want)[0])
        where = self._localise(ids, seen, before, mode)
        raise CheckError(f"logits differ from QuantGPT2 at position {self.pos + first + row}, "
                         f"vocab index {col} (machine {logits[row, col]}, model "
                         f"{want[row, col]}); {where}")

    def _window(self, region, rows):
        r = self.comp.regions[region]
        return _Shifted(self.backend.dump(r.base, rows * r.stride), r.base)

    def _localise(self, ids, seen, before, mode):
        """Re-run prefixes of the program from the memory before the call and find the
        first checked instruction (the compiler's `Provenance.check`) whose destination
        differs from the golden intermediate (bisection: a good checkpoint followed by
        a bad one). Leaves the machine's memory in a prefix's state: the caller raises."""
        t = len(ids)
        ops = self.comp.annotated_ops(t, self.pos, mode)
        points = [k for k, (_, _, p) in enumerate(ops) if p.check is not None]
        from gpt2accel.rtl.isa import encode

        def good(k):
            p = ops[k][2]
            region, n = p.check
            self.backend.load(before)
            words = [encode(self.cfg, op, **f) for op, f, _ in ops[:k + 1]]
            self.backend.run(words + [encode(self.cfg, Op.HALT)])
            got = self.comp.read_rows(self._window(region, t - p.from_row), region,
                                      t - p.from_row, n)
            return np.array_equal(got, seen[(p.op, p.layer)][p.from_row:])

        lo, hi = -1, len(points) - 1          # points[hi] is bad (the logits are)
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if good(points[mid]):
                lo = mid
            else:
                hi = mid
        first = points[lo] + 1 if lo >= 0 else 0
        k = points[hi]
        p = ops[k][2]
        span = ", ".join(f"{ops[j][0].name}" for j in range(first, k + 1))
        lname = "" if p.layer is None else f"layer {p.layer} "
        return (f"first wrong intermediate: {lname}{p.op} (instructions {first}..{k}: {span})")


#: A memory image this large shows a progress step while it is written.
_BIG_IMAGE_WORDS = 1 << 20
#: A program running longer than this shows its progress; shorter ones stay silent,
#: so the many short programs of a small model do not fill a log.
PROGRESS_AFTER_S = 2.0
#: How often the running program's progress is read.
_POLL_S = 0.5


class _RunProgress:
    """Signs of life while `Backend.run` blocks: after `PROGRESS_AFTER_S`, a
    `progress.bar` of the instructions the machine has executed (`Backend.progress`)
    with its cycles so far, read by a thread (Verilator runs in C++ with the GIL
    released; Amaranth's simulator shares it with this thread)."""

    def __init__(self, backend, what, total):
        self.backend, self.what, self.total = backend, what, total
        self.stop, self.thread, self.bar = threading.Event(), None, None

    def _show(self):
        p = self.backend.progress()
        if p is None:
            self.bar.update(self.bar.n)          # the elapsed time still moves
        else:
            self.bar.update(p[0], extra=f"{p[1]:,} cycles")

    def _watch(self):
        if self.stop.wait(PROGRESS_AFTER_S):
            return
        self.bar = progress.bar(None, self.what, self.total, unit="instructions",
                                start=self.t0)
        while True:
            self._show()
            if self.stop.wait(_POLL_S):
                return

    def __enter__(self):
        self.t0 = time.perf_counter()
        if progress.enabled():
            self.thread = threading.Thread(target=self._watch, name="gpt2accel-run-progress",
                                           daemon=True)
            self.thread.start()
        return self

    def __exit__(self, *exc):
        if self.thread is None:
            return
        self.stop.set()
        self.thread.join()
        if self.bar is not None:
            self._show()                          # the final count
            self.bar.close()


class _Shifted:
    """A window of memory that `ModelCompiler`'s row helpers and `program_cycles` can
    index with absolute word addresses: accesses land at addr - base."""

    def __init__(self, words, base):
        self.words, self.base = words, base

    def _rel(self, s):
        if isinstance(s, slice):
            return slice(s.start - self.base, s.stop - self.base)
        return int(s) - self.base

    def __getitem__(self, s):
        return self.words[self._rel(s)]

    def __setitem__(self, s, v):
        self.words[self._rel(s)] = v


def _ids_memory(comp, ids, batch=False):
    """Memory as `program_cycles` needs it for EMBED (only the token ids are read);
    `batch`: a batched step's ids (`write_batch_ids`)."""
    r = comp.regions["ids"]
    view = _Shifted(np.zeros((r.words, comp.e.mem_bytes), np.uint8), r.base)
    (comp.write_batch_ids if batch else comp.write_ids)(view, ids)
    return view


def _predict(cfg, prog, mem):
    """The cycle model's cycles of `prog`, None for an illegal program (the machine's
    error status tells)."""
    try:
        return program_cycles(cfg, prog, mem=mem)[0]
    except ValueError:
        return None
