"""The float GPT-2 against HF transformers, and KV-cache decoding against recompute."""
import zlib

import numpy as np
import pytest

from gpt2accel.model import GPT2, GPT2Config, KVCache

torch = pytest.importorskip("torch", reason="torch not installed (pip install -e '.[torch]')")
transformers = pytest.importorskip("transformers", reason="transformers not installed "
                                   "(pip install -e '.[torch]')")

#: (vocab, positions, n_embd, n_layer, n_head, n_inner)
GEOMETRIES = [
    (97, 32, 48, 3, 4, None),
    (50, 24, 64, 1, 1, None),
    (211, 40, 36, 2, 6, 72),
    (64, 16, 128, 2, 2, None),
]


def _hf_model(seed, vocab, positions, embd, layers, heads, inner):
    torch.manual_seed(seed)
    cfg = transformers.GPT2Config(vocab_size=vocab, n_positions=positions, n_embd=embd,
                                  n_layer=layers, n_head=heads, n_inner=inner,
                                  bos_token_id=0, eos_token_id=0)
    model = transformers.GPT2LMHeadModel(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            # LayerNorms initialise to 1/0, which would hide a gamma/beta mix-up.
            if ".ln_" in name:
                p.add_(torch.randn_like(p) * 0.3)
    return model


@pytest.mark.parametrize("layout", ["transformer", "hub"])
@pytest.mark.parametrize("geometry", GEOMETRIES, ids=lambda g: "x".join(map(str, g[:5])))
def test_logits_match_transformers(tmp_path, geometry, layout):
    seed = zlib.crc32(repr((geometry, layout)).encode()) % 2**16
    print(f"seed {seed}")
    hf = _hf_model(seed, *geometry)
    hf.save_pretrained(tmp_path)
    if layout == "hub":
        # Rewrite into the hub's original layout: no prefix, plus mask buffers.
        GPT2.from_pretrained(tmp_path).save_pretrained(tmp_path, layout="hub")
    ours = GPT2.from_pretrained(tmp_path)
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, geometry[0], rng.integers(1, geometry[1] + 1))
    with torch.no_grad():
        ref = hf(torch.tensor(ids)[None]).logits[0].numpy()
    got = ours.logits(ids)
    assert got.dtype == np.float32 and got.shape == ref.shape
    rel = np.abs(got - ref).max() / np.abs(ref).max()
    assert rel <= 1e-5, f"relative error {rel:.2e}"


def test_kv_cache_decode_equals_recompute():
    rng = np.random.default_rng(7)
    model = GPT2.random(GPT2Config(61, 40, 48, 3, 4), seed=3)
    ids = rng.integers(0, 61, 40)
    full = model.logits(ids)
    cache = KVCache(model.config.n_layer)
    split = 13
    steps = [model.forward(ids[:split], cache)]
    steps += [model.forward(ids[t:t + 1], cache) for t in range(split, ids.size)]
    np.testing.assert_allclose(np.concatenate(steps), full, rtol=0, atol=2e-5 * np.abs(full).max())


def test_generate_is_seeded_and_matches_greedy_recompute():
    model = GPT2.random(GPT2Config(37, 32, 32, 2, 2), seed=1)
    prompt = [1, 2, 3]
    a = model.generate(prompt, 10, temperature=0.9, top_k=5, seed=11)
    assert a == model.generate(prompt, 10, temperature=0.9, top_k=5, seed=11)
    greedy = model.generate(prompt, 10, temperature=0)
    seq = list(prompt)
    for _ in range(10):
        seq.append(int(np.argmax(model.logits(seq)[-1])))
    assert greedy == seq[len(prompt):]


def test_generate_rejects_overlong_request():
    model = GPT2.random(GPT2Config(37, 8, 16, 1, 2))
    with pytest.raises(ValueError, match="exceeds the model's context n_positions=8"):
        model.generate([1, 2, 3], 6)
