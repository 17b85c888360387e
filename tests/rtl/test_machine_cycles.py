"""`sim.cycles.program` equals the machine's cycle counter on stall-free block programs."""
import numpy as np
import pytest

from gpt2accel.rtl.isa import Op, decode, encode
from gpt2accel.sim.host.compiler import BlockCompiler
from gpt2accel.sim.harness.machine import run_programs
from gpt2accel.sim.cycles.program import program_cycles

from test_machine import CFG, E, H, PACKED, VOCAB, _golden, _model


@pytest.mark.parametrize("geometry", [(E, H), PACKED], ids=["word_heads", "packed_heads"])
def test_program_cycles_match_rtl(seed, geometry):
    qm, rng = _model(seed, geometry=geometry)
    t = int(rng.integers(1, 9))
    pos = t
    ids = rng.integers(0, VOCAB, t + 1)
    seen = _golden(qm, [ids[:t], ids[t:]])
    comp = BlockCompiler(CFG, qm, 0, max_tokens=8, mem_words=4096)
    mem = comp.image()
    comp.write_rows(mem, "x", seen[(0, "embed")])
    prefill, decode_prog = comp.program(t, 0), comp.program(1, pos)
    # one instruction per program too, so a mismatch names its instruction
    halt = encode(CFG, Op.HALT)
    singles = [[w, halt] for w in prefill[:-1]]
    mem, res = run_programs(CFG, [prefill, decode_prog] + singles, mem, seed=seed)
    for prog, r in zip([prefill, decode_prog] + singles, res):
        want, per = program_cycles(CFG, prog)
        names = [op.name for op, _ in per]
        assert r["error"] == 0
        assert r["cycles"] == want, (f"{names}: RTL {r['cycles']}, model {want} "
                                     f"(T={t}, GPT2ACCEL_SEED={seed})")
    print(f"block T={t}: prefill {res[0]['cycles']} cycles, decode at {pos}: "
          f"{res[1]['cycles']} cycles")
