"""The driver on the Amaranth simulator: a random 1-layer GPT-2 prefilled (in chunks of
max_m tokens) and decoded bit-exact with `QuantGPT2.forward`, cycles equal to the cycle
model; `check` localises a planted weight corruption; bad requests are refused."""
import numpy as np
import pytest

from gpt2accel.model import quant as Q
from gpt2accel.model.gpt2 import KVCache
from gpt2accel.model.synthetic import random_gpt2
from gpt2accel.sim.host.compiler import CompileError
from gpt2accel.sim.host.driver import CheckError, Driver, machine_config

# a vocabulary wider than the vector row limit (max_k = 4E = 128): REQUANT is split
E, H, VOCAB, NPOS = 32, 2, 160, 16


@pytest.fixture(scope="module")
def qm():
    rng = np.random.default_rng(7)
    fm = random_gpt2(seed=7, vocab_size=VOCAB, n_positions=NPOS, n_embd=E, n_layer=1, n_head=H)
    return Q.QuantGPT2.from_float(fm, [rng.integers(0, VOCAB, NPOS) for _ in range(2)], tile=4)


def test_prefill_in_chunks_then_decode_is_bit_exact(qm):
    cfg = machine_config(qm, 4, 4, max_tokens=4)
    drv = Driver(qm, cfg, "pysim", logits="all").load()
    ids = [3, 1, 4, 1, 5]                           # two prefill programs: 4 + 1 tokens
    cache = KVCache(1)
    np.testing.assert_array_equal(drv.prefill(ids), qm.forward(np.array(ids), cache))
    np.testing.assert_array_equal(drv.decode(15), qm.forward(np.array([15]), cache))
    assert drv.pos == 6 and len(drv.history) == 3
    for r in drv.history:
        assert r["cycles"] == r["predicted_cycles"] > 0 and r["error"] == 0
    np.testing.assert_allclose(drv.logits_float(drv.read_logits(1)[-1]),
                               qm.dequantize_logits(qm.forward(np.array(ids + [15]))[-1]))


@pytest.mark.parametrize("rows,cols", [(6, 4), (2, 8)])
def test_arrays_that_are_not_square_run_bit_exact(rows, cols):
    """rows != cols end to end: more rows than columns (6x4: a 6-token MATMUL tile over
    an 8-byte word), and fewer (2x8: a 16-byte word holding two heads of d_head 8);
    prefill in two programs, then decode, bit-exact and at the cycle model's count."""
    rng = np.random.default_rng(rows * 10 + cols)
    fm = random_gpt2(seed=rows, vocab_size=40, n_positions=8, n_embd=16, n_layer=1, n_head=2)
    q = Q.QuantGPT2.from_float(fm, [rng.integers(0, 40, 8) for _ in range(2)], tile=4)
    drv = Driver(q, machine_config(q, rows, cols, max_tokens=4), "pysim", logits="all").load()
    ids, cache = [3, 1, 4, 1, 5, 9, 2], KVCache(1)
    np.testing.assert_array_equal(drv.prefill(ids), q.forward(np.array(ids), cache))
    np.testing.assert_array_equal(drv.decode(15), q.forward(np.array([15]), cache))
    assert len(drv.history) == 3
    for r in drv.history:
        assert r["cycles"] == r["predicted_cycles"] > 0


def _fast_driver(qm, cfg, **kw):
    """A loaded Driver on the Verilated machine (these tests run every instruction
    checked, minutes on the Amaranth simulator); skipped without Verilator."""
    fast = pytest.importorskip("gpt2accel.sim.fast")
    try:
        return Driver(qm, cfg, "fast", **kw).load()
    except fast.FastBackendUnavailable as e:
        pytest.skip(str(e))


def test_last_row_logits_skip_the_head_elsewhere(qm):
    """The default (generation): the first chunk of a long prompt runs no LM head, the
    last computes the last row's logits only; bit-exact with the model's last row,
    checked, cycles equal to the cycle model and fewer than with every row's logits;
    the memory holds one row of logits."""
    from gpt2accel.rtl.isa import Op
    cfg = machine_config(qm, 4, 4, max_tokens=4)
    ids = [3, 1, 4, 1, 5, 9]                        # two prefill programs: 4 + 2 tokens
    drv = _fast_driver(qm, cfg, check=True)
    cache = KVCache(1)
    np.testing.assert_array_equal(drv.prefill(ids), qm.forward(np.array(ids), cache)[-1:])
    np.testing.assert_array_equal(drv.decode(15), qm.forward(np.array([15]), cache))
    assert [r["logits"] for r in drv.history] == ["none", "last", "last"]
    for r in drv.history:
        assert r["cycles"] == r["predicted_cycles"] > 0 and r["error"] == 0
    first = [op for op, _ in drv.comp.ops(4, 0, "none")]
    assert first[-2:] == [Op.RESADD, Op.HALT] and Op.REQUANT not in first
    head = [f for op, f in drv.comp.ops(2, 4, "last") if op == Op.MATMUL][-1]
    assert head["m"] == 1 and head["n"] == VOCAB
    everything = _fast_driver(qm, cfg, logits="all")
    everything.prefill(ids)
    assert (everything.history[-1]["cycles"] > drv.history[1]["cycles"]
            and everything.mem_words > drv.mem_words)
    r = drv.comp.regions
    assert r["logits"].words == r["logits"].stride and r["ln_f_out"].words == r["ln_f_out"].stride
    # a driver for scoring may still ask for the last row only
    np.testing.assert_array_equal(everything.prefill(ids, logits="last"),
                                  qm.forward(np.array(ids))[-1:])


def test_check_localises_in_last_row_programs(qm):
    """`check` on the programs without every row's head: a corrupted weight is named
    by layer and op in a program with no logits at all and in one with the last row's."""
    for ids in ([1, 2, 3, 4, 5], [1, 2, 3]):
        drv = _fast_driver(qm, machine_config(qm, 4, 4, max_tokens=4), check=True)
        r = drv.comp.regions["h0.c_fc.w"]
        word = drv.backend.dump(r.base, 1)
        word[0, 0] ^= 0x40
        drv.backend.load(word, r.base)
        with pytest.raises(CheckError, match=r"layer 0 fc .*MATMUL"):
            drv.prefill(ids)


def test_context_sizes_the_caches(qm):
    """KV caches for the context asked: a smaller memory, the same logits up to it,
    refused past it."""
    cfg = machine_config(qm, 4, 4, max_tokens=4)
    full = Driver(qm, cfg, "pysim")
    drv = Driver(qm, cfg, "pysim", context=6, check=True).load()
    cache = KVCache(1)
    kv = drv.comp.regions["h0.k_cache"]
    assert kv.words * 16 == full.comp.regions["h0.k_cache"].words * 8   # 2 tiles of 4, not 4
    assert drv.mem_words < full.mem_words
    np.testing.assert_array_equal(drv.prefill([3, 1, 4, 1, 5]),
                                  qm.forward(np.array([3, 1, 4, 1, 5]), cache)[-1:])
    np.testing.assert_array_equal(drv.decode(2), qm.forward(np.array([2]), cache))
    with pytest.raises(ValueError, match=r"context full: context=6 \(n_positions 16\)"):
        drv.decode(3)
    with pytest.raises(ValueError, match=r"prompt of 7 tokens exceeds the context context=6"):
        drv.prefill([0] * 7)
    with pytest.raises(ValueError, match=r"context=17: outside 1..n_positions 16"):
        Driver(qm, cfg, "pysim", context=NPOS + 1)


def test_check_names_the_corrupted_layer_and_op(qm):
    drv = Driver(qm, machine_config(qm, 4, 4, max_tokens=4), "pysim", check=True).load()
    r = drv.comp.regions["h0.c_fc.w"]
    word = drv.backend.dump(r.base, 1)
    word[0, 0] ^= 0x40                               # one weight byte of the MLP's c_fc
    drv.backend.load(word, r.base)
    with pytest.raises(CheckError, match=r"layer 0 fc .*MATMUL"):
        drv.prefill([1, 2, 3])


def test_bad_requests(qm):
    with pytest.raises(ValueError, match="unknown hardware backend 'nope'"):
        Driver(qm, machine_config(qm, 4, 4), "nope")
    with pytest.raises(CompileError, match="max_k"):
        cfg = machine_config(qm, 4, 4)
        Driver(qm, cfg.__class__(**{**cfg.__dict__,
                                    "engine": cfg.engine.__class__(
                                        **{**cfg.engine.__dict__, "max_k": E})}), "pysim")
    drv = Driver(qm, machine_config(qm, 4, 4), "pysim").load()
    with pytest.raises(ValueError, match="exceeds the context n_positions=16"):
        drv.prefill([0] * (NPOS + 1))
    with pytest.raises(ValueError, match="logits='all' needs a Driver made with logits='all'"):
        drv.prefill([1], logits="all")
    with pytest.raises(ValueError, match="logits='first': 'last' .* or 'all'"):
        drv.prefill([1], logits="first")
    with pytest.raises(ValueError, match="logits='every': 'last' .* or 'all'"):
        Driver(qm, machine_config(qm, 4, 4), "pysim", logits="every")


def test_vcd_names_the_instruction_and_phase(qm, tmp_path):
    """--vcd: the waveform shows the decode register's instruction, the running unit's
    and the word's stage by name (enum-shaped `current_op`, `running_op`,
    `word_stage`), and the run stays bit-exact."""
    from gpt2accel.sim.host.driver import PysimBackend
    path = tmp_path / "run.vcd"
    drv = Driver(qm, machine_config(qm, 4, 4), PysimBackend(vcd=str(path))).load()
    np.testing.assert_array_equal(drv.prefill([9]), qm.forward(np.array([9])))
    text = path.read_text()
    for sig in ("current_op", "running_op", "word_stage"):
        assert f" {sig} $end" in text, sig
    assert "$var string 1" in text
    for name in ("EMBED", "LAYERNORM", "MATMUL", "ATTENTION", "REQUANT", "HALT",
                 "EMPTY", "DECODE1", "DECODE2", "ISSUE"):
        assert f"\ns{name} " in text, name


@pytest.mark.slow
def test_fast_backend_matches_pysim(qm):
    """The same driver calls on the Verilated machine: same logits, same cycles."""
    fast = pytest.importorskip("gpt2accel.sim.fast")
    cfg = machine_config(qm, 4, 4)
    runs = []
    for backend in ("pysim", "fast"):
        try:
            drv = Driver(qm, cfg, backend, check=True).load()
        except fast.FastBackendUnavailable as e:
            pytest.skip(str(e))
        runs.append(([drv.prefill([5, 6]), drv.decode(7)], [r["cycles"] for r in drv.history]))
        drv.close()
    (a, ca), (b, cb) = runs
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    assert ca == cb


def test_machine_error_status_raises(qm):
    """An illegal instruction in the stream (a zeroed word: opcode 0) sets the machine's
    error status; the driver raises HardwareError naming it."""
    from gpt2accel.sim.host.driver import HardwareError
    drv = Driver(qm, machine_config(qm, 4, 4), "pysim").load()
    program = drv.comp.program
    drv.comp.program = lambda *args: [0] + program(*args)
    with pytest.raises(HardwareError, match="error status OPCODE"):
        drv.prefill([1])
    with pytest.raises(ValueError, match="needs a prefill first"):
        Driver(qm, machine_config(qm, 4, 4), "pysim").load().decode(1)


def test_checks_follow_split_vector_ops(qm):
    """The LM head's REQUANT runs as column chunks here; only the last chunk carries
    the logits check."""
    from gpt2accel.rtl.isa import Op
    drv = Driver(qm, machine_config(qm, 4, 4), "pysim", logits="all")
    ops = drv.comp.annotated_ops(2, 0)
    req = [p for op, _, p in ops if op == Op.REQUANT]
    assert len(req) == 2 and req[0].op == req[1].op == "logits"
    assert req[0].check is None and req[1].check == ("logits", VOCAB)


@pytest.mark.parametrize("logits", ["all", "last"])
def test_checks_hold_the_golden_intermediates(qm, logits):
    """Every provenance check names where the machine leaves the golden intermediate:
    after one run of the 1-layer model, the last check of each region equals the
    model's observed value from its `from_row` on (a check naming the wrong region,
    row length, first row or operation fails here)."""
    drv = Driver(qm, machine_config(qm, 4, 4, max_tokens=4), "pysim", logits=logits).load()
    ids = [2, 7, 1]
    seen = {}
    want = qm.forward(np.array(ids), observe=lambda n, l, x: seen.setdefault((n, l), x))
    np.testing.assert_array_equal(drv.prefill(ids), want if logits == "all" else want[-1:])
    last = {p.check[0]: p for p in drv.comp.provenance(len(ids), 0, logits) if p.check}
    assert set(last) == {"x", "ln_1_out", "qkv", "attn", "ln_2_out", "fc", "gelu",
                         "ln_f_out", "logits"}
    assert {p.from_row for p in last.values() if p.op in ("ln_f", "logits")} == {
        0 if logits == "all" else len(ids) - 1}
    mem = drv.backend.dump()
    for region, p in last.items():
        got = drv.comp.read_rows(mem, region, len(ids) - p.from_row, p.check[1])
        np.testing.assert_array_equal(got, seen[(p.op, p.layer)][p.from_row:], err_msg=region)


def test_check_follows_an_inserted_instruction(qm, monkeypatch):
    """A compiler change that inserts an instruction carries its provenance with it:
    a second ln_1 after KVSTORE (harmless: attention does not read ln_1_out) moves
    every later instruction, and a corrupted c_fc is still named by layer and op,
    at its new index."""
    from gpt2accel.rtl.isa import Op
    from gpt2accel.sim.host.compiler import ModelCompiler
    block_ops = ModelCompiler._block_ops

    def with_extra(self, *args):
        ops = block_ops(self, *args)
        return ops[:3] + [ops[0]] + ops[3:]

    monkeypatch.setattr(ModelCompiler, "_block_ops", with_extra)
    drv = Driver(qm, machine_config(qm, 4, 4, max_tokens=4), "pysim", check=True).load()
    ops = drv.comp.annotated_ops(3, 0, "last")
    assert [op for op, _, _ in ops[1:6]] == [Op.LAYERNORM, Op.MATMUL, Op.KVSTORE,
                                             Op.LAYERNORM, Op.ATTENTION]
    fc = next(k for k, (_, _, p) in enumerate(ops) if p.op == "fc")
    r = drv.comp.regions["h0.c_fc.w"]
    word = drv.backend.dump(r.base, 1)
    word[0, 0] ^= 0x40
    drv.backend.load(word, r.base)
    with pytest.raises(CheckError, match=rf"layer 0 fc \(instructions {fc}\.\.{fc}: MATMUL\)"):
        drv.prefill([1, 2, 3])


# ---------------------------------------------------------------- machine size, progress

@pytest.fixture(scope="module")
def big():
    """A 1-layer n_embd-32 model with GPT-2's vocabulary: its 50257-row embedding and LM
    head put its memory map past 2^16 words, the address width of every smaller model."""
    V = 50257
    rng = np.random.default_rng(11)
    fm = random_gpt2(seed=11, vocab_size=V, n_positions=NPOS, n_embd=E, n_layer=1, n_head=H)
    return Q.QuantGPT2.from_float(fm, [rng.integers(0, V, NPOS) for _ in range(2)], tile=4)


def test_existing_configs_are_unchanged(qm):
    """Sizing from the model keeps every config that fitted 16 address bits, and 2 lanes
    where the word allows them: the same machine, cycles and Verilator build as before."""
    from gpt2accel.rtl.config import EngineConfig
    from gpt2accel.rtl.machine_config import MachineConfig
    from gpt2accel.sim.cli import resolve_model_dir
    tiny = Q.QuantGPT2.load(resolve_model_dir("tiny") / Q.QUANT_FILENAME)
    mc = tiny.config
    assert machine_config(tiny, 8, 8) == MachineConfig(
        engine=EngineConfig(rows=8, cols=8, max_k=4 * mc.n_embd, max_m=8,
                            max_n=max(4 * mc.n_embd, mc.vocab_size), addr_bits=16),
        tile=tiny.tile, frac_bits=tiny.frac_bits, lanes=2, norm_lanes=2,
        max_d_head=mc.n_embd // mc.n_head, max_seq=mc.n_positions, resid_bits=tiny.resid_bits)
    cfg = machine_config(qm, 4, 4)
    assert (cfg.engine.addr_bits, cfg.lanes, cfg.norm_lanes) == (16, 2, 2)


def test_the_residual_width_is_the_models(qm):
    """A model quantised to a narrower residual stream runs bit-exact on the machine built
    from it (RESADD and REQUANT saturate at 12 bits), and a 16-bit machine refuses it
    rather than saturate elsewhere than the golden model."""
    from dataclasses import replace
    rng = np.random.default_rng(11)
    fm = random_gpt2(seed=11, vocab_size=VOCAB, n_positions=NPOS, n_embd=E, n_layer=1,
                     n_head=H)
    q12 = Q.QuantGPT2.from_float(fm, [rng.integers(0, VOCAB, NPOS) for _ in range(2)],
                                 tile=4, resid_bits=12, logit_bits=12)
    cfg = machine_config(q12, 4, 4, max_tokens=4)
    assert cfg.resid_bits == 12
    ids = [5, 9, 2]
    np.testing.assert_array_equal(Driver(q12, cfg, "pysim", logits="all").load().prefill(ids),
                                  q12.forward(np.array(ids)))
    with pytest.raises(CompileError, match="model resid_bits 12 != the machine's resid_bits 16"):
        Driver(q12, replace(cfg, resid_bits=16), "pysim")


def test_machine_is_sized_from_the_model(big):
    """The address width follows the memory map; an explicit width or memory size too
    small is refused at once, naming the parameter and the size needed."""
    from dataclasses import replace
    from gpt2accel.sim.host.compiler import ModelCompiler
    from gpt2accel.sim.host.driver import MachineSizeError
    cfg = machine_config(big, 4, 4)
    words = ModelCompiler(cfg, big, cfg.engine.max_m, None).end
    need = ModelCompiler(cfg, big, cfg.engine.max_m, None, logit_rows=1).end   # the driver's
    bits = cfg.engine.addr_bits
    assert words > 1 << 16 and 1 << (bits - 1) < words <= 1 << bits
    assert machine_config(big, 4, 4, addr_bits=bits + 1).engine.addr_bits == bits + 1
    with pytest.raises(MachineSizeError, match=rf"addr_bits=16 .* needs {words:,}: use "
                                               rf"addr_bits >= {bits}") as e:
        machine_config(big, 4, 4, addr_bits=16)
    assert (e.value.words, e.value.need_bits) == (words, bits)
    with pytest.raises(MachineSizeError, match=rf"addr_bits=16 .* needs {need:,}"):
        Driver(big, replace(cfg, engine=replace(cfg.engine, addr_bits=16)), "pysim")
    with pytest.raises(MachineSizeError, match=rf"mem_words=1,000: .* needs {need:,} words"):
        Driver(big, cfg, "pysim", mem_words=1000)
    drv = Driver(big, cfg, "pysim")             # memory: the map, not 2^addr_bits words
    assert drv.mem_words == need == len(drv.comp.image()) < words
    assert Driver(big, cfg, "pysim", logits="all").mem_words == words


def test_lanes_follow_the_array():
    """Lanes: 2 where the memory word holds an even number of int32, else 1; an array
    no whole machine has is named by its cols (not a parameter the caller never set)."""
    from gpt2accel.sim.host.driver import array_error
    rng = np.random.default_rng(5)
    # d_head 24: a multiple of the 12-byte word of 6 columns (3 int32: lanes 1)
    fm = random_gpt2(seed=5, vocab_size=64, n_positions=NPOS, n_embd=48, n_layer=1, n_head=2)
    q = Q.QuantGPT2.from_float(fm, [rng.integers(0, 64, NPOS) for _ in range(2)], tile=4)
    cfg = machine_config(q, 4, 6)
    assert (cfg.lanes, cfg.norm_lanes) == (1, 1)
    cfg.check_engine()                          # what the RTL checks when it is built
    cfg = machine_config(q, 4, 4)
    assert (cfg.lanes, cfg.norm_lanes) == (2, 2)
    assert array_error(4) is array_error(6) is None
    for cols in (2, 3, 5):
        assert array_error(cols).startswith(f"cols={cols}: the whole machine needs an even "
                                            f"number of columns, at least 4")
    assert (machine_config(q, 2, 2).lanes, machine_config(q, 2, 2).norm_lanes) == (1, 1)


def _final_progress(err, what, n):
    return f"[{what} {n}/{n} instructions, " in err


def test_long_programs_show_progress(qm, capsys, monkeypatch):
    """A program running past PROGRESS_AFTER_S shows the machine's instructions done
    (pysim's sampled icount) on stderr; progress.quiet() silences it."""
    from gpt2accel.model import progress
    from gpt2accel.sim.host import driver
    monkeypatch.setattr(progress, "_override", True)
    monkeypatch.setattr(driver, "PROGRESS_AFTER_S", 0.0)
    monkeypatch.setattr(driver, "_BIG_IMAGE_WORDS", 0)
    drv = Driver(qm, machine_config(qm, 4, 4), "pysim").load()
    out, err = capsys.readouterr()
    assert out == "" and f"[pysim: writing the {drv.mem_words:,}-word memory image" in err
    drv.prefill([3, 4])
    out, err = capsys.readouterr()
    assert out == "" and _final_progress(err, "pysim: 2 tokens at position 0",
                                         drv.last["instructions"]), err
    with progress.quiet():
        drv.decode(5)
    assert capsys.readouterr() == ("", "")


def test_big_vocabulary_runs_bit_exact_on_fast(big, capsys, monkeypatch):
    """The model past 2^16 words on the machine sized for it (the Verilated one: the
    Amaranth simulator takes many minutes for the 50257-wide LM head): bit-exact with
    QuantGPT2, cycles equal to the cycle model, the progress counting every instruction."""
    from gpt2accel.model import progress
    from gpt2accel.sim.host import driver
    monkeypatch.setattr(progress, "_override", True)
    monkeypatch.setattr(driver, "PROGRESS_AFTER_S", 0.0)
    cfg = machine_config(big, 4, 4, max_tokens=4)
    assert cfg.engine.addr_bits > 16
    drv = _fast_driver(big, cfg, check=True)
    capsys.readouterr()
    cache = KVCache(1)
    ids = [0, 50256, 17]
    np.testing.assert_array_equal(drv.prefill(ids), big.forward(np.array(ids), cache)[-1:])
    _, err = capsys.readouterr()
    assert _final_progress(err, "fast: 3 tokens at position 0", drv.last["instructions"]), err
    np.testing.assert_array_equal(drv.decode(50000), big.forward(np.array([50000]), cache))
    for r in drv.history:
        assert r["cycles"] == r["predicted_cycles"] > 0 and r["error"] == 0
    drv.close()


# ---------------------------------------------------------------- batched decode

def _batched_run(q, cfg, backend, prompts, steps, seed=0):
    """Prefill each prompt as its own sequence, then `steps` batched decode steps of
    random tokens; every sequence's logits equal `QuantGPT2.forward` run on that
    sequence alone, every program's cycles equal the cycle model's."""
    drv = Driver(q, cfg, backend, batch=len(prompts), check=True).load()
    rng = np.random.default_rng(seed)
    caches = [KVCache(q.config.n_layer) for _ in prompts]
    for b in reversed(range(len(prompts))):       # the first load for a sequence past 0
        p = prompts[b]
        np.testing.assert_array_equal(drv.prefill(p, seq=b),
                                      q.forward(np.array(p), caches[b])[-1:])
    for _ in range(steps):
        tokens = [int(t) for t in rng.integers(0, q.config.vocab_size, len(prompts))]
        got = drv.decode_batch(tokens)
        for b, t in enumerate(tokens):
            np.testing.assert_array_equal(got[b:b + 1], q.forward(np.array([t]), caches[b]))
    assert drv.positions == [len(p) + steps for p in prompts]
    for r in drv.history:
        assert r["cycles"] == r["predicted_cycles"] > 0 and r["error"] == 0
    return drv


def test_batched_decode_is_bit_exact_per_sequence(qm):
    """Three sequences of different lengths (one prefilled in two programs) decode in
    one program per step: each one's logits as if it ran alone."""
    from gpt2accel.rtl.isa import Op
    cfg = machine_config(qm, 4, 4, max_tokens=4)
    drv = _batched_run(qm, cfg, "pysim", [[3, 1, 4, 1, 5], [9], [2, 6]], 2)
    step = drv.history[-1]
    assert (step["batch"], step["positions"]) == (3, [6, 2, 3])
    ops = drv.comp.batch_annotated_ops([6, 2, 3])
    assert [f["m"] for op, f, _ in ops if op == Op.MATMUL] == [3] * 5
    assert [f["offset"] for op, f, _ in ops if op == Op.ATTENTION] == [6, 2, 3]
    # a step of one sequence alone costs more than a third of the three's
    alone = drv.comp.batch_program([7])
    from gpt2accel.sim.cycles.program import program_cycles
    from gpt2accel.sim.host.driver import _ids_memory
    one = program_cycles(cfg, alone, mem=_ids_memory(drv.comp, [0], True))[0]
    assert 3 * one > step["cycles"] > one


def test_batched_decode_of_the_tiny_model_on_fast():
    """The shipped tiny model, four sequences on the Verilated 8x8 machine."""
    fast = pytest.importorskip("gpt2accel.sim.fast")
    from gpt2accel.sim.cli import resolve_model_dir
    tiny = Q.QuantGPT2.load(resolve_model_dir("tiny") / Q.QUANT_FILENAME)
    try:
        drv = _batched_run(tiny, machine_config(tiny, 8, 8), "fast",
                           [[5, 6, 7], [1], [40, 41, 42, 43, 44, 45, 46, 47, 48], [2, 3]], 3)
    except fast.FastBackendUnavailable as e:
        pytest.skip(str(e))
    drv.close()


def test_batched_requests_are_refused(qm):
    cfg = machine_config(qm, 4, 4, max_tokens=4)
    drv = Driver(qm, cfg, "pysim", batch=2)
    with pytest.raises(ValueError, match="sequence 0: decode needs a prefill first"):
        drv.decode_batch([1, 2])
    with pytest.raises(ValueError, match=r"decode_batch of 3 tokens: 1..batch=2"):
        drv.decode_batch([1, 2, 3])
    with pytest.raises(ValueError, match=r"seq=2: outside 0..1 \(batch=2\)"):
        drv.prefill([1], seq=2)
    with pytest.raises(ValueError, match=r"batch=5: outside 1..max_m 4"):
        Driver(qm, cfg, "pysim", batch=5)
