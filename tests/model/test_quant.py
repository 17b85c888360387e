"""Whole-model tests of the quantised GPT-2 (gpt2accel.model.quant.QuantGPT2)."""
import inspect
import json

import numpy as np
import pytest

from gpt2accel.model import quant as Q
from gpt2accel.model.gpt2 import GPT2, KVCache
from gpt2accel.model.synthetic import random_gpt2

GEOM = dict(vocab_size=67, n_positions=48, n_embd=32, n_layer=2, n_head=4)


@pytest.fixture(scope="module")
def fmodel():
    return random_gpt2(seed=11, **GEOM)


@pytest.fixture(scope="module")
def qmodel(fmodel):
    rng = np.random.default_rng(12)
    return Q.QuantGPT2.from_float(fmodel, [rng.integers(0, 67, 48) for _ in range(4)], tile=8)


@pytest.fixture(scope="module")
def ids():
    return np.random.default_rng(13).integers(0, 67, 40)


def test_integer_path_has_no_floats(qmodel, ids):
    seen = []
    qmodel.forward(ids, observe=lambda name, layer, x: seen.append((name, np.asarray(x).dtype)))
    assert len(seen) == 1 + 10 * 2 + 2
    assert all(dt.kind in "iu" for _, dt in seen), seen
    for t in qmodel.tensors().values():
        assert t.dtype.kind in "iu"


def _centred_cosine(a, b):
    """Cosine of logits with each row's mean removed (the part softmax sees).

    Random models' logits share a large common offset from the outlier
    channels and have near-ties, so raw cosine and top-1 say little there.
    """
    a = a - a.mean(axis=1, keepdims=True)
    b = b - b.mean(axis=1, keepdims=True)
    return float((a * b).sum() / np.linalg.norm(a) / np.linalg.norm(b))


def test_close_to_float_model(fmodel, qmodel, ids):
    lf, li = fmodel.logits(ids), qmodel.logits(ids)
    assert li.dtype == np.float32 and li.shape == lf.shape
    assert _centred_cosine(lf, li) >= 0.99


def test_logits_are_dequantised_integer_logits(qmodel, ids):
    li = qmodel.logits_int(ids)
    assert li.dtype.kind == "i" and np.abs(li).max() < 1 << (qmodel.logit_bits - 1)
    assert np.array_equal(qmodel.logits(ids),
                          (li * qmodel.logit_scale).astype(np.float32))


@pytest.mark.parametrize("tile", [1, 3, 8, 64])
def test_kv_cache_decode_equals_full_recompute(qmodel, ids, tile):
    full = qmodel.forward(ids, tile=tile)
    cache = KVCache(qmodel.config.n_layer)
    parts = [qmodel.forward(ids[:11], cache, tile=tile)]
    parts.append(qmodel.forward(ids[11:13], cache, tile=tile))  # a chunk, then single tokens
    parts += [qmodel.forward(ids[i:i + 1], cache, tile=tile) for i in range(13, ids.size)]
    assert np.array_equal(np.concatenate(parts), full)
    assert cache.length == ids.size and cache.k[0].dtype == np.int8


def test_tile_independent_when_sequence_fits_one_tile(qmodel, ids):
    ref = qmodel.forward(ids[:16], tile=16)
    for tile in (17, 40, 1000):
        assert np.array_equal(qmodel.forward(ids[:16], tile=tile), ref)


def test_generate_greedy_matches_argmax_recompute(qmodel, ids):
    prompt = ids[:5]
    out = qmodel.generate(prompt, 8, temperature=0)
    seq = list(prompt)
    for tok in out:
        assert tok == int(np.argmax(qmodel.logits_int(np.array(seq))[-1]))
        seq.append(tok)


def test_generate_sampling_deterministic_and_signature(qmodel, ids):
    a = qmodel.generate(ids[:3], 6, temperature=0.8, top_k=5, seed=4)
    seen = []
    b = qmodel.generate(ids[:3], 6, temperature=0.8, top_k=5, seed=4, on_token=seen.append)
    assert a == b == seen and len(a) == 6
    assert qmodel.generate(ids[:3], 0) == []
    assert (list(inspect.signature(Q.QuantGPT2.generate).parameters)
            == list(inspect.signature(GPT2.generate).parameters))
    with pytest.raises(ValueError, match="exceeds"):
        qmodel.generate(ids[:3], 100)
    with pytest.raises(ValueError, match="temperature"):
        qmodel.generate(ids[:3], 2, temperature=-1)


def test_save_load_round_trip(qmodel, ids, tmp_path):
    path = tmp_path / "q.safetensors"
    qmodel.save(path)
    back = Q.QuantGPT2.load(path)
    assert back.meta == qmodel.meta and back.scales == qmodel.scales
    assert back.config == qmodel.config
    a, b = qmodel.tensors(), back.tensors()
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype and np.array_equal(a[k], b[k]), k
    assert back._scalars() == qmodel._scalars()
    assert np.array_equal(back.logits_int(ids), qmodel.logits_int(ids))


def _rewrite(src, dst, tensors=None, header=None):
    """Copy a saved model, replacing tensors and/or editing the JSON header."""
    from safetensors import safe_open
    from safetensors.numpy import save_file
    with safe_open(str(src), framework="np") as fh:
        meta = dict(fh.metadata())
        t = {k: fh.get_tensor(k) for k in fh.keys()}
    if tensors:
        for k, v in tensors.items():
            if v is None:
                del t[k]
            else:
                t[k] = v
    if header:
        h = json.loads(meta["gpt2accel"])
        header(h)
        meta["gpt2accel"] = json.dumps(h)
    save_file(t, str(dst), metadata=meta)


def test_malformed_files_give_clear_errors(qmodel, tmp_path):
    good = tmp_path / "good.safetensors"
    qmodel.save(good)
    cases = {
        "garbage": (lambda p: p.write_bytes(b"\x00" * 5), "not a readable safetensors"),
        "truncated": (lambda p: p.write_bytes(good.read_bytes()[:-100]),
                      "not a readable safetensors"),
        "missing tensor": (lambda p: _rewrite(good, p, {"h.0.fc.w": None}), "missing"),
        "wrong dtype": (lambda p: _rewrite(good, p, {"wte": qmodel.wte.astype(np.int16)}),
                        "tensor wte is int16"),
        "mult range": (lambda p: _rewrite(good, p, {"h.1.fc.mult": np.full_like(
            qmodel.blocks[1].fc.mult, 1 << 15)}), "outside"),
        "wrong format": (lambda p: _rewrite(good, p, header=lambda h: h.update(format="x")),
                         "format"),
        "bad version": (lambda p: _rewrite(good, p, header=lambda h: h.update(version=99)),
                        "version"),
        "bad tile": (lambda p: _rewrite(good, p, header=lambda h: h["meta"].update(tile=0)),
                     "tile"),
        "no config": (lambda p: _rewrite(good, p, header=lambda h: h.pop("config")),
                      "malformed metadata"),
        "bad ln scalars": (lambda p: _rewrite(good, p, header=lambda h: h["scalars"]["layers"][0]
                                              ["ln_1"].update(out_shift=99)), "LayerNorm"),
    }
    for name, (make, message) in cases.items():
        p = tmp_path / f"{name.replace(' ', '_')}.safetensors"
        make(p)
        with pytest.raises(Q.QuantFormatError, match=message):
            Q.QuantGPT2.load(p)
    with pytest.raises(Q.QuantFormatError, match="no such"):
        Q.QuantGPT2.load(tmp_path / "absent.safetensors")


def test_file_without_our_metadata(tmp_path):
    from safetensors.numpy import save_file
    p = tmp_path / "plain.safetensors"
    save_file({"x": np.zeros(3, dtype=np.int8)}, str(p))
    with pytest.raises(Q.QuantFormatError, match="no 'gpt2accel' metadata"):
        Q.QuantGPT2.load(p)


def test_bad_inputs(qmodel):
    with pytest.raises(TypeError, match="integers"):
        qmodel.logits_int(np.array([1.0, 2.0]))
    with pytest.raises(ValueError, match="outside the vocabulary"):
        qmodel.logits_int(np.array([1, 67]))
    with pytest.raises(ValueError, match="outside the vocabulary"):
        qmodel.logits_int(np.array([-1]))
    with pytest.raises(ValueError, match="empty"):
        qmodel.logits_int(np.array([], dtype=np.int64))
    with pytest.raises(ValueError, match="longer than"):
        qmodel.logits_int(np.zeros(49, dtype=np.int64))
    with pytest.raises(ValueError, match="1-D"):
        qmodel.logits_int(np.zeros((2, 2), dtype=np.int64))
    cache = KVCache(qmodel.config.n_layer)
    qmodel.forward(np.zeros(40, dtype=np.int64), cache)
    with pytest.raises(ValueError, match="longer than"):
        qmodel.forward(np.zeros(9, dtype=np.int64), cache)
    with pytest.raises(ValueError, match="tile"):
        qmodel.logits_int(np.array([1, 2]), tile=0)


def test_bad_quantisation_parameters(fmodel):
    calib = [np.arange(10)]
    for kw, msg in (({"tile": 0}, "tile"), ({"resid_bits": 40}, "resid_bits"),
                    ({"frac_bits": 0}, "frac_bits"), ({"tile": 2.5}, "tile")):
        with pytest.raises(ValueError, match=msg):
            Q.QuantGPT2.from_float(fmodel, calib, **kw)
    with pytest.raises(ValueError, match="at least one"):
        Q.QuantGPT2.from_float(fmodel, [])


@pytest.mark.parametrize("bits", [12, 24])
def test_residual_widths(fmodel, ids, bits):
    q = Q.QuantGPT2.from_float(fmodel, [ids], resid_bits=bits)
    seen = {}
    q.forward(ids, observe=lambda n, layer, x: seen.setdefault((n, layer), np.asarray(x)))
    lim = 1 << (bits - 1)
    for i in range(2):
        assert -lim <= seen[("resid", i)].min() and seen[("resid", i)].max() < lim
    assert _centred_cosine(fmodel.logits(ids), q.logits(ids)) >= 0.99


def test_calibration_percentile_changes_only_activation_scales(fmodel, ids):
    a = Q.QuantGPT2.from_float(fmodel, [ids])
    b = Q.QuantGPT2.from_float(fmodel, [ids], percentile=99.0)
    assert a.scales["resid"] == b.scales["resid"]
    assert b.scales["h.0.fc"] < a.scales["h.0.fc"]


def test_smoothing_preserves_the_float_function(fmodel, ids):
    """SmoothQuant migration (§9) must not change what the float layers compute."""
    b = fmodel.blocks[0]
    rng = np.random.default_rng(3)
    h = rng.normal(size=(5, b.ln_1_g.size))
    m = Q.smooth_factors(rng.uniform(0.1, 9, b.ln_1_g.size), b.attn_w, 0.5)
    assert m.shape == b.ln_1_g.shape and abs(np.log(m).mean()) < 1e-9
    g, beta, w = Q._smoothed(b.ln_1_g, b.ln_1_b, b.attn_w, m)
    np.testing.assert_allclose((h * g + beta) @ w, (h * b.ln_1_g + b.ln_1_b) @ b.attn_w,
                               rtol=1e-9, atol=1e-9)


def test_smoothing_flattens_channel_ranges(fmodel, ids):
    plain = Q.calibrate(fmodel, [ids])
    m = Q.smooth_factors(plain[("ln_1/channel", 0)], fmodel.blocks[0].attn_w, 1.0)
    smoothed = Q.calibrate(fmodel, [ids], divisors={("ln_1", 0): m})
    # alpha = 1 divides each channel by its own max: every channel's max becomes equal
    ch = plain[("ln_1/channel", 0)] / m
    assert np.allclose(ch, ch[0]) and np.isclose(smoothed[("ln_1", 0)], ch[0])
    with pytest.raises(ValueError, match="smooth_alpha"):
        Q.QuantGPT2.from_float(fmodel, [ids], smooth_alpha=1.5)


def test_percentile_calibration_is_streaming_mean_of_sequence_percentiles(fmodel, ids):
    seqs = [ids[:20], ids[20:]]
    got = Q.calibrate(fmodel, seqs, percentile=90.0)
    per_seq = []
    for s in seqs:
        vals = []
        fmodel.forward(s, observe=lambda n, layer, x: vals.append(x) if (n, layer) == (
            "fc", 1) else None)
        per_seq.append(np.percentile(np.abs(vals[0]), 90.0))
    assert np.isclose(got[("fc", 1)], np.mean(per_seq))
    assert got[("resid", None)] >= got[("resid", 1)]


def _write_checkpoint(model, directory, chars):
    """Save a float GPT2 as a HF-layout checkpoint directory with a char vocabulary."""
    from safetensors.numpy import save_file
    t = {"wte.weight": model.wte, "wpe.weight": model.wpe,
         "ln_f.weight": model.ln_f_g, "ln_f.bias": model.ln_f_b}
    names = {"ln_1_g": "ln_1.weight", "ln_1_b": "ln_1.bias", "attn_w": "attn.c_attn.weight",
             "attn_b": "attn.c_attn.bias", "attn_proj_w": "attn.c_proj.weight",
             "attn_proj_b": "attn.c_proj.bias", "ln_2_g": "ln_2.weight", "ln_2_b": "ln_2.bias",
             "fc_w": "mlp.c_fc.weight", "fc_b": "mlp.c_fc.bias",
             "fc_proj_w": "mlp.c_proj.weight", "fc_proj_b": "mlp.c_proj.bias"}
    for i, b in enumerate(model.blocks):
        for field, name in names.items():
            t[f"h.{i}.{name}"] = np.ascontiguousarray(getattr(b, field), dtype=np.float32)
    save_file({k: np.ascontiguousarray(v, dtype=np.float32) for k, v in t.items()},
              str(directory / "model.safetensors"))
    (directory / "config.json").write_text(json.dumps(model.config.to_hf()))
    (directory / "chars.json").write_text(json.dumps(chars))


def test_load_or_quantise_caches_and_prefers_shipped_file(tmp_path, monkeypatch):
    from gpt2accel.model import shakespeare

    def offline():
        raise RuntimeError("offline")
    monkeypatch.setattr(shakespeare, "load_corpus", offline)  # use the built-in text
    chars = sorted(set(Q._FALLBACK_TEXT))
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    _write_checkpoint(random_gpt2(seed=5, vocab_size=len(chars), n_positions=32, n_embd=16,
                                  n_layer=1, n_head=2), ckpt, chars)
    fmodel = GPT2.from_pretrained(ckpt)
    cache = tmp_path / "cache"
    q1 = Q.load_or_quantise(ckpt, fmodel, cache)
    files = list((cache / "quant").iterdir())
    assert len(files) == 1
    q2 = Q.load_or_quantise(ckpt, fmodel, cache)
    ids = np.arange(10) % len(chars)
    assert np.array_equal(q1.logits_int(ids), q2.logits_int(ids))
    # a shipped quantised file wins over quantising, and must match the checkpoint
    q_other = Q.QuantGPT2.from_float(fmodel, [ids], tile=4)
    q_other.save(ckpt / Q.QUANT_FILENAME)
    assert Q.load_or_quantise(ckpt, fmodel, cache).tile == 4
    wrong = random_gpt2(seed=5, vocab_size=len(chars), n_positions=16, n_embd=16, n_layer=1,
                        n_head=2)
    Q.QuantGPT2.from_float(wrong, [ids]).save(ckpt / Q.QUANT_FILENAME)
    with pytest.raises(Q.QuantFormatError, match="does not match"):
        Q.load_or_quantise(ckpt, fmodel, cache)


def test_calibration_leaves_out_what_a_character_vocabulary_lacks(tmp_path, monkeypatch):
    """A character model whose vocabulary does not cover the corpus (microGPT's 26
    letters and a newline) calibrates on the corpus without the characters it lacks,
    instead of failing on the first capital letter."""
    from gpt2accel.model import shakespeare
    text = "First Citizen:\nBefore we proceed any further, hear me speak.\n" * 40
    monkeypatch.setattr(shakespeare, "load_corpus", lambda: (text, text))
    chars = list("\nabcdefghijklmnopqrstuvwxyz")
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    _write_checkpoint(random_gpt2(seed=1, vocab_size=len(chars), n_positions=16, n_embd=16,
                                  n_layer=1, n_head=4), ckpt, chars)
    fmodel = GPT2.from_pretrained(ckpt)
    seqs = Q.calibration_ids(ckpt, fmodel.config)
    kept = "".join(c for c in text if c in chars)
    assert len(seqs) == 32 and all(s.size == 16 for s in seqs)
    for s in seqs:  # each window is a slice of the filtered text, in order
        assert "".join(chars[i] for i in s) in kept
    Q.QuantGPT2.from_float(fmodel, seqs, tile=16)
