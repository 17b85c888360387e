"""The shipped tiny model (2 layers, n_embd 64, 4 heads, tile 64) on an 8x8 machine (slow).

Prefill of two tokens with memory stalls, then one decode token stall-free
(cycles must equal `program_cycles`); int16 logits bit-exact with
`QuantGPT2.forward`.
"""
from pathlib import Path

import numpy as np
import pytest

from gpt2accel.model import quant as Q
from gpt2accel.model.gpt2 import KVCache
from gpt2accel.rtl.attention_config import AttentionConfig
from gpt2accel.rtl.config import EngineConfig
from gpt2accel.rtl.isa import Error
from gpt2accel.sim.host.compiler import ModelCompiler
from gpt2accel.sim.harness.machine import run_programs
from gpt2accel.sim.cycles.program import program_cycles

MODEL = Path(__file__).resolve().parents[2] / "model" / "tiny" / "model.int8.safetensors"


@pytest.mark.slow
def test_tiny_model_on_machine(seed):
    qm = Q.QuantGPT2.load(MODEL)
    cfg = AttentionConfig(engine=EngineConfig(rows=8, cols=8, max_k=256, max_m=8, max_n=256,
                                              addr_bits=16),
                          tile=qm.tile, lanes=2, norm_lanes=2, max_d_head=16,
                          max_seq=qm.config.n_positions)
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, qm.config.vocab_size, 3)
    parts = [ids[:2], ids[2:]]
    cache = KVCache(qm.config.n_layer)
    want = [qm.forward(p, cache) for p in parts]
    comp = ModelCompiler(cfg, qm, max_tokens=8, mem_words=1 << 16)
    mem, pos = comp.image(), 0
    for i, (part, stall) in enumerate(zip(parts, (0.2, 0.0))):
        comp.write_ids(mem, part)
        prog = comp.program(len(part), pos)
        model_cycles, _ = program_cycles(cfg, prog, mem=mem)
        mem, (res,) = run_programs(cfg, [prog], mem, seed=seed + i, stall=stall, jitter=3,
                                   timeout=1_000_000)
        what = f"call {i} (T={len(part)}, pos={pos}, GPT2ACCEL_SEED={seed})"
        print(f"{what}: {res['cycles']} cycles, model {model_cycles}, {res['wall_s']:.0f} s")
        assert res["error"] == Error.NONE, what
        np.testing.assert_array_equal(comp.read_rows(mem, "logits", len(part),
                                                     qm.config.vocab_size), want[i], err_msg=what)
        if not stall:
            assert res["cycles"] == model_cycles, what
        pos += len(part)
