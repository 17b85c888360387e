"""The offload driver: linear layers on a MATMUL-only machine, the rest on the host,
bit-exact with the integer model."""
import numpy as np
import pytest

from gpt2accel.model import quant as Q
from gpt2accel.model.synthetic import random_gpt2
from gpt2accel.rtl.attention_config import AttentionConfig
from gpt2accel.rtl.config import EngineConfig
from gpt2accel.rtl.machine_config import MachineConfig
from gpt2accel.sim.host.driver import PysimBackend
from gpt2accel.sim.host.offload import OffloadDriver, offload_words

E, H, VOCAB, NPOS = 16, 2, 24, 8
#: a small array with the iCEBreaker's 4-byte memory words
CFG = AttentionConfig(engine=EngineConfig(rows=2, cols=2, max_k=64, max_m=4, max_n=64,
                                          mem_bytes=4, addr_bits=12),
                      tile=2, lanes=1, norm_lanes=1, max_d_head=8, max_seq=NPOS)


def _model(seed):
    rng = np.random.default_rng([seed, 7])
    fm = random_gpt2(seed=seed % 1000, vocab_size=VOCAB, n_positions=NPOS, n_embd=E,
                     n_layer=1, n_head=H)
    qm = Q.QuantGPT2.from_float(fm, [rng.integers(0, VOCAB, NPOS) for _ in range(2)],
                                tile=CFG.tile)
    return qm, rng


def test_offload_generates_bit_exact_on_a_matmul_only_machine(seed):
    qm, rng = _model(seed)
    drv = OffloadDriver(qm, MachineConfig.of(CFG, ops=("matmul",)), PysimBackend())
    prompt = rng.integers(0, VOCAB, 5).tolist()        # 5 rows > max_m=4: chunked
    got = [drv.prefill(prompt)]
    nxt = int(np.argmax(got[0][-1]))
    got.append(drv.decode(nxt))
    from gpt2accel.model.gpt2 import KVCache
    cache = KVCache(1)
    want = [qm.forward(np.array(prompt), cache), qm.forward(np.array([nxt]), cache)]
    for g, w in zip(got, want):
        assert np.array_equal(g, w), f"GPT2ACCEL_SEED={seed}"
    c = drv.counters()
    # 4 linears, prompt in 2 chunks + 1 decode row
    assert c["programs"] == 4 * 3 and c["cycles"] > 0
    assert drv.mem_words == offload_words(CFG, qm)


def test_offload_refuses_what_does_not_fit(seed):
    qm, _ = _model(seed)
    with pytest.raises(ValueError, match="memory words"):
        OffloadDriver(qm, CFG, "pysim", mem_words=16)
    small = AttentionConfig(engine=EngineConfig(rows=2, cols=2, max_k=32, max_m=4, max_n=64,
                                                mem_bytes=4, addr_bits=12),
                            tile=2, lanes=1, norm_lanes=1, max_d_head=8, max_seq=NPOS)
    with pytest.raises(ValueError, match="max_k=32"):
        OffloadDriver(qm, small, "pysim")
    with pytest.raises(ValueError, match="prefill first"):
        OffloadDriver(qm, CFG, "pysim").decode(1)
