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
