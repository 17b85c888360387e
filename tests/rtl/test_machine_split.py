"""Element-wise vector ops on rows longer than the units' row limit are split
into column chunks by the compiler: here the logits (vocabulary 300 > the test
machine's max_vector_n 128) come back bit-exact from three REQUANT chunks."""
import numpy as np

from gpt2accel.model import quant as Q
from gpt2accel.model.synthetic import random_gpt2
from gpt2accel.rtl.isa import Error, Op, cfg_max_vector_n
from gpt2accel.sim.host.compiler import ModelCompiler, Provenance
from gpt2accel.sim.harness.machine import run_programs

from test_machine import CFG, E, H, NPOS

VOCAB = 300


def test_logits_wider_than_a_vector_row(seed):
    rng = np.random.default_rng([seed, 7])
    fm = random_gpt2(seed=seed % 1000, vocab_size=VOCAB, n_positions=NPOS, n_embd=E,
                     n_layer=1, n_head=H)
    qm = Q.QuantGPT2.from_float(fm, [rng.integers(0, VOCAB, NPOS)], tile=CFG.tile)
    comp = ModelCompiler(CFG, qm, max_tokens=2, mem_words=16384)
    ops = comp.ops(2, 0)
    chunks = [f for op, f in ops if op == Op.REQUANT]
    limit = cfg_max_vector_n(CFG)
    assert [f["n"] for f in chunks] == [limit, limit, VOCAB - 2 * limit]
    ids = rng.integers(0, VOCAB, 2)
    mem = comp.image()
    comp.write_ids(mem, ids)
    mem, (res,) = run_programs(CFG, [comp.program(2, 0)], mem, seed=seed, stall=0.2, jitter=2)
    assert res["error"] == Error.NONE, f"GPT2ACCEL_SEED={seed}"
    np.testing.assert_array_equal(comp.read_rows(mem, "logits", 2, VOCAB), qm.forward(ids),
                                  err_msg=f"GPT2ACCEL_SEED={seed}")


def test_split_offsets_are_per_element_size():
    """Each chunk's addresses move by chunk * element bytes / word bytes; only the last
    chunk keeps the provenance's golden check (the result is complete after it)."""
    class Probe(ModelCompiler):
        def __init__(self):  # only what _split_vector reads
            self.chunk, self.e = 32, CFG.engine
    mb = CFG.engine.mem_bytes
    fields = dict(rows=3, n=80, src_base=100, src_stride=9, dst_base=200, dst_stride=9,
                  table_base=7)
    prov = Provenance("gelu", 0, ("gelu", 80))
    parts = Probe()._split_vector(Op.GELU, fields, prov)
    assert [p for _, _, p in parts] == [Provenance("gelu", 0)] * 2 + [prov]
    assert [(f["n"], f["src_base"], f["dst_base"], f["table_base"]) for _, f, _ in parts] == [
        (32, 100, 200, 7), (32, 100 + 32 // mb, 200 + 32 // mb, 7),
        (16, 100 + 64 // mb, 200 + 64 // mb, 7)]
    fields = dict(rows=1, n=40, src_base=0, src_stride=0, dst_base=50, dst_stride=5,
                  y_base=60, y_stride=10, q_base=70)
    parts = Probe()._split_vector(Op.REQUANT, fields, Provenance("logits", None, ("logits", 40)))
    assert [(f["src_base"], f["dst_base"], f["y_base"], f["q_base"]) for _, f, _ in parts] == [
        (0, 50, 60, 70), (0, 50 + 64 // mb, 60 + 128 // mb, 70 + 128 // mb)]


def test_host_written_kv_cache_continues_like_a_prefill(seed):
    """Decode after `write_kv_cache` of the golden model's cache equals decode
    after the machine's own prefill (and the golden model)."""
    from gpt2accel.model.gpt2 import KVCache
    rng = np.random.default_rng([seed, 8])
    fm = random_gpt2(seed=seed % 1000, vocab_size=40, n_positions=NPOS, n_embd=E,
                     n_layer=1, n_head=H)
    qm = Q.QuantGPT2.from_float(fm, [rng.integers(0, 40, NPOS)], tile=CFG.tile)
    ids = rng.integers(0, 40, 7)                  # 6 cached positions, one decoded
    cache = KVCache(1)
    qm.forward(ids[:6], cache)
    want = qm.forward(ids[6:], cache)
    comp = ModelCompiler(CFG, qm, max_tokens=2, mem_words=8192)
    mem = comp.image()
    prefix = KVCache(1)
    prefix.k[0], prefix.v[0] = cache.k[0][:, :6], cache.v[0][:, :6]
    comp.write_kv_cache(mem, prefix)
    comp.write_ids(mem, ids[6:])
    mem, (res,) = run_programs(CFG, [comp.program(1, 6)], mem, seed=seed)
    assert res["error"] == Error.NONE, f"GPT2ACCEL_SEED={seed}"
    np.testing.assert_array_equal(comp.read_rows(mem, "logits", 1, 40), want,
                                  err_msg=f"GPT2ACCEL_SEED={seed}")
