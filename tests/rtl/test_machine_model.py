"""A whole random 2-layer GPT-2 on the machine: EMBED, both blocks, ln_f, LM head.

Prefill (with memory and instruction-stream stalls) then one decode step
(stall-free, so its cycle count must equal `program_cycles`); the int16
logits equal `QuantGPT2.forward` bit for bit. GPT2ACCEL_SEED replays.
"""
import numpy as np

from gpt2accel.model.gpt2 import KVCache
from gpt2accel.rtl.isa import Error
from gpt2accel.sim.host.compiler import ModelCompiler
from gpt2accel.sim.harness.machine import run_programs
from gpt2accel.sim.cycles.program import program_cycles

from test_machine import CFG, VOCAB, _model


def test_whole_model_prefill_then_decode(seed):
    qm, rng = _model(seed, 2, n_layer=2)
    t = int(rng.integers(1, 4))
    ids = rng.integers(0, VOCAB, t + 1)
    parts = [ids[:t], ids[t:]]
    cache = KVCache(2)
    want = [qm.forward(p, cache) for p in parts]
    comp = ModelCompiler(CFG, qm, max_tokens=4, mem_words=8192)
    mem, pos = comp.image(), 0
    for i, (part, stall) in enumerate(zip(parts, (0.2, 0.0))):
        comp.write_ids(mem, part)
        prog = comp.program(len(part), pos)
        model_cycles, _ = program_cycles(CFG, prog, mem=mem)
        mem, (res,) = run_programs(CFG, [prog], mem, seed=seed + i, stall=stall, jitter=3)
        what = f"call {i} (T={len(part)}, pos={pos}, GPT2ACCEL_SEED={seed})"
        print(f"{what}: {res['cycles']} cycles (stall {stall}), model {model_cycles}")
        assert res["error"] == Error.NONE and res["icount"] == len(prog), what
        np.testing.assert_array_equal(comp.read_rows(mem, "logits", len(part), VOCAB), want[i],
                                      err_msg=what)
        if not stall:
            assert res["cycles"] == model_cycles, what
        pos += len(part)


def test_generation_programs_compute_the_last_rows_logits(seed):
    """The programs of generation on a memory holding one row of logits and a shorter
    context: a first chunk with no LM head, a second with the last row's only (memory
    and instruction stalls), a decode step; the logits equal the model's last row, and
    the stall-free programs' cycles equal `program_cycles`."""
    qm, rng = _model(seed, 4, n_layer=2)
    t = int(rng.integers(1, 5))
    ids = rng.integers(0, VOCAB, 4 + t + 1)
    parts = [ids[:4], ids[4:4 + t], ids[4 + t:]]
    cache = KVCache(2)
    want = [qm.forward(p, cache)[-1:] for p in parts]
    comp = ModelCompiler(CFG, qm, max_tokens=4, mem_words=8192, logit_rows=1,
                         context=len(ids))
    full = ModelCompiler(CFG, qm, max_tokens=4, mem_words=8192)
    assert comp.end < full.end
    mem, pos = comp.image(), 0
    for i, (part, logits, stall) in enumerate(zip(parts, ("none", "last", "last"),
                                                  (0.0, 0.2, 0.0))):
        comp.write_ids(mem, part)
        prog = comp.program(len(part), pos, logits)
        model_cycles, _ = program_cycles(CFG, prog, mem=mem)
        mem, (res,) = run_programs(CFG, [prog], mem, seed=seed + i, stall=stall, jitter=3)
        what = f"call {i} (T={len(part)}, pos={pos}, {logits}, GPT2ACCEL_SEED={seed})"
        assert res["error"] == Error.NONE and res["icount"] == len(prog), what
        if logits == "last":
            np.testing.assert_array_equal(comp.read_rows(mem, "logits", 1, VOCAB), want[i],
                                          err_msg=what)
        if not stall:
            assert res["cycles"] == model_cycles, what
        pos += len(part)
