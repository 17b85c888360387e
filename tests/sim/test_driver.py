"""The driver on the Amaranth simulator: a random 1-layer GPT-2 prefilled (in chunks of
max_m tokens) and decoded bit-exact with `QuantGPT2.forward`, cycles equal to the cycle
model; `check` localises a planted weight corruption; bad requests are refused."""
import numpy as np
import pytest

from gpt2accel.model import quant as Q
from gpt2accel.model.gpt2 import KVCache
from gpt2accel.model.synthetic import random_gpt2
from gpt2accel.sim.compiler import CompileError
from gpt2accel.sim.driver import CheckError, Driver, machine_config

# a vocabulary wider than the vector row limit (max_k = 4E = 128): REQUANT is split
E, H, VOCAB, NPOS = 32, 2, 160, 16


@pytest.fixture(scope="module")
def qm():
    rng = np.random.default_rng(7)
    fm = random_gpt2(seed=7, vocab_size=VOCAB, n_positions=NPOS, n_embd=E, n_layer=1, n_head=H)
    return Q.QuantGPT2.from_float(fm, [rng.integers(0, VOCAB, NPOS) for _ in range(2)], tile=4)


def test_prefill_in_chunks_then_decode_is_bit_exact(qm):
    cfg = machine_config(qm, 4, 4, max_tokens=4)
    drv = Driver(qm, cfg, "pysim").load()
    ids = [3, 1, 4, 1, 5]                           # two prefill programs: 4 + 1 tokens
    cache = KVCache(1)
    np.testing.assert_array_equal(drv.prefill(ids), qm.forward(np.array(ids), cache))
    np.testing.assert_array_equal(drv.decode(15), qm.forward(np.array([15]), cache))
    assert drv.pos == 6 and len(drv.history) == 3
    for r in drv.history:
        assert r["cycles"] == r["predicted_cycles"] > 0 and r["error"] == 0
    np.testing.assert_allclose(drv.logits_float(drv.read_logits(1)[-1]),
                               qm.dequantize_logits(qm.forward(np.array(ids + [15]))[-1]))


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
    with pytest.raises(ValueError, match="exceeds the model's context"):
        drv.prefill([0] * (NPOS + 1))


def test_vcd_names_the_instruction_and_phase(qm, tmp_path):
    """--vcd: the waveform shows the current instruction and the sequencer's phase by
    name (enum-shaped `current_op`, named FSM states), and the run stays bit-exact."""
    from gpt2accel.sim.driver import PysimBackend
    path = tmp_path / "run.vcd"
    drv = Driver(qm, machine_config(qm, 4, 4), PysimBackend(vcd=str(path))).load()
    np.testing.assert_array_equal(drv.prefill([9]), qm.forward(np.array([9])))
    text = path.read_text()
    assert "$var string 1" in text and " current_op $end" in text
    for name in ("EMBED", "LAYERNORM", "MATMUL", "ATTENTION", "REQUANT", "HALT"):
        assert f"\ns{name} " in text, name
    assert "\nsWAIT_ATTENTION/" in text        # the FSM state: "name/encoding"


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
    from gpt2accel.sim.driver import HardwareError
    drv = Driver(qm, machine_config(qm, 4, 4), "pysim").load()
    program = drv.comp.program
    drv.comp.program = lambda t, pos: [0] + program(t, pos)
    with pytest.raises(HardwareError, match="error status OPCODE"):
        drv.prefill([1])
    with pytest.raises(ValueError, match="needs a prefill first"):
        Driver(qm, machine_config(qm, 4, 4), "pysim").load().decode(1)


def test_checkpoints_follow_split_vector_ops(qm):
    """The LM head's REQUANT runs as column chunks here; only the last chunk of the
    run carries the logits checkpoint."""
    from gpt2accel.rtl.isa import Op
    from gpt2accel.sim.driver import _checkpoints
    drv = Driver(qm, machine_config(qm, 4, 4), "pysim")
    ops = drv.comp.ops(2, 0)
    req = [j for j, (op, _) in enumerate(ops) if op == Op.REQUANT]
    assert len(req) == 2
    checks = _checkpoints(drv.comp, ops)
    assert checks[req[0]] is None and checks[req[1]][0] == "logits"
