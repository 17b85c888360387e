"""Every way a checkpoint can be broken ends in a CheckpointError naming the problem."""
import json
import struct

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from gpt2accel.model import GPT2, GPT2Config, CheckpointError

CFG = GPT2Config(vocab_size=20, n_positions=8, n_embd=16, n_layer=2, n_head=4)


@pytest.fixture
def ckpt(tmp_path):
    GPT2.random(CFG, seed=0).save_pretrained(tmp_path)
    return tmp_path


def _edit_tensors(path, fn):
    tensors = load_file(str(path / "model.safetensors"))
    fn(tensors)
    save_file(tensors, str(path / "model.safetensors"))


def _edit_config(path, **changes):
    cfg = json.loads((path / "config.json").read_text())
    for k, v in changes.items():
        if v is None:
            cfg.pop(k, None)
        else:
            cfg[k] = v
    (path / "config.json").write_text(json.dumps(cfg))


def _load_fails(path, pattern):
    with pytest.raises(CheckpointError, match=pattern):
        GPT2.from_pretrained(path)


def test_valid_checkpoint_loads(ckpt):
    assert GPT2.from_pretrained(ckpt).config == CFG


def test_not_a_directory(tmp_path):
    _load_fails(tmp_path / "nope", "not a directory")


def test_missing_config(ckpt):
    (ckpt / "config.json").unlink()
    _load_fails(ckpt, "config.json: missing")


def test_missing_weights(ckpt):
    (ckpt / "model.safetensors").unlink()
    _load_fails(ckpt, "model.safetensors: missing")


def test_config_not_json(ckpt):
    (ckpt / "config.json").write_text("{nope")
    _load_fails(ckpt, "not valid JSON")


def test_config_not_gpt2(ckpt):
    _edit_config(ckpt, model_type="llama")
    _load_fails(ckpt, "model_type is 'llama', not 'gpt2'")


def test_config_wrong_activation(ckpt):
    _edit_config(ckpt, activation_function="relu")
    _load_fails(ckpt, "activation_function 'relu'")


def test_config_heads_do_not_divide(ckpt):
    _edit_config(ckpt, n_head=3)
    _load_fails(ckpt, r"n_embd \(16\) is not divisible by n_head \(3\)")


def test_config_missing_key(ckpt):
    _edit_config(ckpt, n_layer=None)
    _load_fails(ckpt, r"missing keys \['n_layer'\]")


def test_config_bad_value(ckpt):
    _edit_config(ckpt, n_embd=-4)
    _load_fails(ckpt, "n_embd must be a positive integer")


def test_missing_tensor(ckpt):
    _edit_tensors(ckpt, lambda t: t.pop("transformer.h.1.mlp.c_fc.bias"))
    _load_fails(ckpt, r"missing tensors \['h.1.mlp.c_fc.bias'\]")


def test_extra_tensor(ckpt):
    _edit_tensors(ckpt, lambda t: t.update({"transformer.h.2.ln_1.weight": np.ones(16, np.float32)}))
    _load_fails(ckpt, "unexpected tensors")


def test_wrong_shape(ckpt):
    _edit_tensors(ckpt, lambda t: t.update({"transformer.wpe.weight": np.zeros((9, 16), np.float32)}))
    _load_fails(ckpt, r"'wpe.weight' has shape \(9, 16\), expected \(8, 16\)")


def test_integer_dtype(ckpt):
    _edit_tensors(ckpt, lambda t: t.update({"transformer.ln_f.bias": np.zeros(16, np.int32)}))
    _load_fails(ckpt, "'ln_f.bias' has dtype int32, expected a float type")


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite(ckpt, bad):
    def poison(t):
        t["transformer.h.0.attn.c_attn.weight"][3, 5] = bad
    _edit_tensors(ckpt, poison)
    _load_fails(ckpt, "'h.0.attn.c_attn.weight' has 1 NaN/Inf values")


def test_untied_lm_head(ckpt):
    _edit_tensors(ckpt, lambda t: t.update({"lm_head.weight": np.ones((20, 16), np.float32)}))
    _load_fails(ckpt, "lm_head.weight differs from wte.weight")


def test_tied_lm_head_is_accepted(ckpt):
    _edit_tensors(ckpt, lambda t: t.update({"lm_head.weight": t["transformer.wte.weight"].copy()}))
    GPT2.from_pretrained(ckpt)


def test_half_precision_is_accepted(ckpt):
    ref = GPT2.from_pretrained(ckpt)
    _edit_tensors(ckpt, lambda t: t.update({k: v.astype(np.float16) for k, v in t.items()}))
    m = GPT2.from_pretrained(ckpt)
    np.testing.assert_allclose(m.wte, ref.wte, atol=1e-3)


def test_truncated_file(ckpt):
    data = (ckpt / "model.safetensors").read_bytes()
    (ckpt / "model.safetensors").write_bytes(data[:len(data) // 2])
    _load_fails(ckpt, "does not match shape")


def test_garbage_header(ckpt):
    (ckpt / "model.safetensors").write_bytes(struct.pack("<Q", 5) + b"{{{{{" + b"\0" * 64)
    _load_fails(ckpt, "header is not valid JSON")


def test_header_longer_than_file(ckpt):
    (ckpt / "model.safetensors").write_bytes(struct.pack("<Q", 10**9) + b"{}")
    _load_fails(ckpt, "exceeds file size")


def test_empty_file(ckpt):
    (ckpt / "model.safetensors").write_bytes(b"")
    _load_fails(ckpt, "truncated")


def test_bad_input_ids(ckpt):
    m = GPT2.from_pretrained(ckpt)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        m.logits([1, 20])
    with pytest.raises(ValueError, match="empty"):
        m.logits([])
    with pytest.raises(TypeError, match="integers"):
        m.logits([1.5])
    with pytest.raises(ValueError, match="longer than the model's context n_positions=8"):
        m.logits(list(range(9)))
