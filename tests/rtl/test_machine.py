"""The machine (rtl/machine.py) running compiled block programs, with random memory stalls.

A random small GPT-2 block (n_embd 32, 2 heads, tile 4) on a 4x4 array, the
whole block on the machine (LayerNorms, c_attn, KV store, attention, c_proj
+ residual, c_fc, GELU, mlp.c_proj + residual): prefill of T tokens, then a
decode step against the caches the prefill left in memory; every
intermediate left in memory must equal
`QuantGPT2.forward`'s (observe hooks) bit for bit. Illegal instructions set
the error status and the machine recovers for the next program.
Seeds are printed; GPT2ACCEL_SEED replays.
"""
import numpy as np
import pytest

from gpt2accel.model import quant as Q
from gpt2accel.model.gpt2 import KVCache
from gpt2accel.model.synthetic import random_gpt2
from gpt2accel.rtl.attention_config import AttentionConfig
from gpt2accel.rtl.config import EngineConfig
from gpt2accel.rtl.isa import INSTR_BITS, OPCODE_BITS, Error, Op, body_layout, encode
from gpt2accel.sim.host.compiler import BlockCompiler
from gpt2accel.sim.harness.machine import run_programs
from gpt2accel.sim.cycles.program import program_cycles


E, H, VOCAB, NPOS = 32, 2, 40, 16
CFG = AttentionConfig(engine=EngineConfig(rows=4, cols=4, max_k=128, max_m=16, max_n=512,
                                          addr_bits=16),
                      tile=4, lanes=2, norm_lanes=2, max_d_head=16, max_seq=NPOS)
#: (memory region, observe name, row length): every intermediate the program leaves in
#: memory; "x" holds resid_mid after the first RESADD and is overwritten by the second
LOWERED = (("ln_1_out", "ln_1", E), ("qkv", "qkv", 3 * E), ("attn", "attn", E),
           ("ln_2_out", "ln_2", E), ("fc", "fc", 4 * E), ("gelu", "gelu", 4 * E),
           ("x", "resid", E))


#: n_embd 12, 2 heads: heads of 6 bytes in 8-byte words (head 1 starts at byte 6 of
#: its word) and K at byte 4 of a word in the qkv rows
PACKED = (12, 2)


def _model(seed, stream=1, n_layer=1, geometry=(E, H)):
    """A random GPT-2 of the module's geometry (or `geometry` = (n_embd, n_head))
    quantised for CFG, and the rng it was calibrated with (`stream` keeps each
    test's draws apart for one seed)."""
    rng = np.random.default_rng([seed, stream])
    e, h = geometry
    fm = random_gpt2(seed=seed % 1000, vocab_size=VOCAB, n_positions=NPOS, n_embd=e,
                     n_layer=n_layer, n_head=h)
    return Q.QuantGPT2.from_float(fm, [rng.integers(0, VOCAB, NPOS) for _ in range(2)],
                                  tile=CFG.tile), rng


def _golden(qm, parts):
    """Per call i of forward (continuing one KVCache): {(i, name): intermediate}."""
    seen, cache = {}, KVCache(1)
    for i, ids in enumerate(parts):
        qm.forward(ids, cache, observe=lambda n, l, x, i=i: seen.setdefault((i, n), np.asarray(x)))
    return seen


@pytest.mark.parametrize("geometry", [(E, H), PACKED], ids=["word_heads", "packed_heads"])
def test_block_prefill_then_decode(seed, geometry):
    qm, rng = _model(seed, geometry=geometry)
    e = geometry[0]
    lowered = [(region, name, n * e // E) for region, name, n in LOWERED]
    t = int(rng.integers(2, 9))
    ids = rng.integers(0, VOCAB, t + 2)
    parts = [ids[:t], ids[t:t + 1]]          # prefill, then a decode step on the same caches
    seen = _golden(qm, parts)
    comp = BlockCompiler(CFG, qm, 0, max_tokens=8, mem_words=4096)
    mem, pos = comp.image(), 0
    for i, part in enumerate(parts):
        comp.write_rows(mem, "x", seen[(i, "embed")])          # the block's input residual
        prog = comp.program(len(part), pos)
        mem, (res,) = run_programs(CFG, [prog], mem, seed=seed + i, stall=0.2, jitter=3)
        what = f"call {i} (T={len(part)}, pos={pos}, GPT2ACCEL_SEED={seed})"
        print(f"{what}: {res['cycles']} cycles with stalls")
        assert res["error"] == Error.NONE and res["icount"] == len(prog), what
        for region, name, n in lowered:
            np.testing.assert_array_equal(comp.read_rows(mem, region, len(part), n),
                                          seen[(i, name)], err_msg=f"{name}, {what}")
        pos += len(part)


def _raw(op, fields):
    """Encode without the ISA's checks (to build illegal words)."""
    word = int(op)
    for name, f in body_layout(CFG, op):
        word |= (fields.get(name, 0) & ((1 << f.width) - 1)) << (OPCODE_BITS + f.offset)
    return word


def test_illegal_instructions_set_error_and_recover(seed):
    qm, rng = _model(seed)
    comp = BlockCompiler(CFG, qm, 0, max_tokens=8, mem_words=4096)
    good = comp.program(2, 0)
    ops = comp.ops(2, 0)
    first = {}
    for n, (op, f) in enumerate(ops):
        first.setdefault(op, (n, f))
    mm = first[Op.MATMUL][1]
    halt = encode(CFG, Op.HALT)
    bad = [
        (0, Error.OPCODE),                           # a zeroed word never executes
        (11, Error.OPCODE),                          # unassigned
        (halt | 1 << (INSTR_BITS - 1), Error.RESERVED),
        (_raw(Op.MATMUL, {**mm, "k": 0}), Error.FIELD),
        (_raw(Op.MATMUL, {**mm, "k": CFG.engine.max_k + 1}), Error.FIELD),
        (_raw(Op.ATTENTION, {**first[Op.ATTENTION][1], "offset": NPOS - 1}), Error.FIELD),
        (_raw(Op.KVSTORE, {**first[Op.KVSTORE][1], "d_head": CFG.max_d_head + 1}), Error.FIELD),
        (_raw(Op.LAYERNORM, {**first[Op.LAYERNORM][1], "n": CFG.engine.max_k + 1}), Error.FIELD),
        (_raw(Op.GELU, {**first[Op.GELU][1], "n": 0}), Error.FIELD),
    ]
    programs, want = [], []
    mm_word = good[first[Op.MATMUL][0]]
    for word, code in bad:
        # the MATMUL after the illegal word must be discarded, not executed
        programs.append([word, mm_word, good[-1]])
        want.append(code)
    programs.append(good)
    want.append(Error.NONE)
    image = comp.image()
    mem, res = run_programs(CFG, programs, image, seed=seed, stall=0.2, jitter=2,
                            timeout=50_000)
    got = [r["error"] for r in res]
    assert got == [int(c) for c in want], f"GPT2ACCEL_SEED={seed}"
    assert [r["icount"] for r in res] == [3] * len(bad) + [len(good)]
    # the discarded MATMUL (2x32x96, > 700 cycles) did not run: an illegal
    # program ends within a few cycles per instruction
    assert all(r["cycles"] < 200 for r in res[:-1]), [r["cycles"] for r in res]


def test_illegal_word_while_the_previous_runs(seed):
    """The word after a running instruction is fetched and decoded meanwhile: an illegal
    one sets the error while the instruction before it still runs, which completes (its
    output as when it runs alone); the words up to HALT are discarded, and the HALT ends
    the program the cycle after that instruction's done, so the program costs what the
    legal instruction alone does (`program_cycles`)."""
    qm, rng = _model(seed)
    comp = BlockCompiler(CFG, qm, 0, max_tokens=8, mem_words=4096)
    ops, words = comp.ops(2, 0), comp.program(2, 0)
    n, mm = next((n, f) for n, (op, f) in enumerate(ops) if op == Op.MATMUL)
    mm_word, halt = words[n], words[-1]
    bad = _raw(Op.MATMUL, {**mm, "k": 0})
    image = comp.image()
    image[:] = rng.integers(0, 256, image.shape, dtype=np.uint8)   # a MATMUL of noise
    alone, (ref,) = run_programs(CFG, [[mm_word, halt]], image, seed=seed)
    want, _ = program_cycles(CFG, [mm_word, halt])
    assert ref["cycles"] == want and not np.array_equal(alone, image), f"GPT2ACCEL_SEED={seed}"
    for stall in (0.0, 0.2):
        mem, (res,) = run_programs(CFG, [[mm_word, bad, mm_word, halt]], image, seed=seed,
                                   stall=stall, jitter=2 if stall else 0)
        what = f"stall {stall}, GPT2ACCEL_SEED={seed}"
        assert res["error"] == Error.FIELD and res["icount"] == 4, what
        np.testing.assert_array_equal(mem, alone, err_msg=what)
        if not stall:
            assert res["cycles"] == want, what


def test_machine_converts_to_rtlil():
    """The whole machine elaborates and converts (no simulation-only constructs)."""
    from amaranth.back import rtlil
    from gpt2accel.rtl.machine import Machine
    import re
    text = rtlil.convert(Machine(CFG))
    modules = set(re.findall(r"^module \\(\S+)", text, re.M))
    for unit in ("attn", "attn.mm", "kv", "vec", "vec.ln", "vec.gelu", "vec.add", "vec.emb"):
        assert f"top.{unit}" in modules, sorted(modules)
    # one systolic array: MATMUL borrows the attention engine's
    assert [m for m in modules if m.endswith(".mm")] == ["top.attn.mm"], sorted(modules)


def test_machine_with_an_opcode_subset(seed):
    """A MATMUL-only machine (a bare MatmulEngine) runs MATMUL exactly as the whole machine
    does; the opcodes it lacks are illegal and leave memory untouched."""
    from gpt2accel.rtl.config import ConfigError
    from gpt2accel.rtl.machine_config import MachineConfig, machine_ops
    qm, rng = _model(seed)
    comp = BlockCompiler(CFG, qm, 0, max_tokens=8, mem_words=4096)
    ops = comp.ops(2, 0)
    words = comp.program(2, 0)
    halt = words[-1]
    mm_word = words[next(n for n, (op, _) in enumerate(ops) if op == Op.MATMUL)]
    at_word = words[next(n for n, (op, _) in enumerate(ops) if op == Op.ATTENTION)]
    image = comp.image()
    programs = [[mm_word, halt], [at_word, mm_word, halt]]
    full, full_res = run_programs(CFG, programs[:1], image, seed=seed, stall=0.2, jitter=2)
    part, res = run_programs(MachineConfig.of(CFG, ops=("matmul",)), programs, image,
                             seed=seed, stall=0.2, jitter=2)
    assert [r["error"] for r in res] == [Error.NONE, Error.OPCODE], f"GPT2ACCEL_SEED={seed}"
    assert np.array_equal(part, full), f"GPT2ACCEL_SEED={seed}"
    assert res[0]["cycles"] == full_res[0]["cycles"]
    assert machine_ops(["matmul"]) == (Op.MATMUL, Op.HALT)
    with pytest.raises(ConfigError, match="not an opcode"):
        machine_ops(["softmax"])
