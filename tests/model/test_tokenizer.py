import random

import pytest

from gpt2accel.model.tokenizer import (BPETokenizer, CharTokenizer, TokenizerError,
                                       load_tokenizer)


@pytest.fixture(scope="module")
def bpe():
    return BPETokenizer.gpt2()


def test_known_ids(bpe):
    assert bpe.vocab_size == 50257
    assert bpe.encode("Hello world") == [15496, 995]
    assert bpe.decode([15496, 995]) == "Hello world"


def test_round_trip_arbitrary_unicode(bpe):
    rng = random.Random(1234)
    print("seed 1234")
    # Draw from all planes, including combining marks, controls and emoji;
    # surrogates cannot be encoded as UTF-8 and are skipped.
    for _ in range(200):
        chars = []
        while len(chars) < rng.randint(1, 40):
            cp = rng.choice([rng.randint(0, 0x7F), rng.randint(0x80, 0xFFFF),
                             rng.randint(0x10000, 0x10FFFF)])
            if not 0xD800 <= cp <= 0xDFFF:
                chars.append(chr(cp))
        text = "".join(chars)
        assert bpe.decode(bpe.encode(text)) == text


def test_bpe_rejects_bad_ids(bpe):
    with pytest.raises(TokenizerError, match="outside the vocabulary"):
        bpe.decode([50257])


def test_checkpoint_bpe_files_take_precedence(tmp_path, bpe):
    import json
    (tmp_path / "vocab.json").write_text(json.dumps({"a": 0, "b": 1, "ab": 2}))
    (tmp_path / "merges.txt").write_text("#version: 0.2\na b\n")
    tok = load_tokenizer(tmp_path)
    assert tok.vocab_size == 3 and tok.encode("ab") == [2]


def test_char_tokenizer(tmp_path):
    (tmp_path / "chars.json").write_text('["\\n", " ", "A", "B", "é"]')
    tok = load_tokenizer(tmp_path)
    assert isinstance(tok, CharTokenizer) and tok.vocab_size == 5
    assert tok.decode(tok.encode("AB é\n")) == "AB é\n"
    with pytest.raises(TokenizerError, match=r"character 'z' \(U\+007A\) is not in"):
        tok.encode("Az")
    with pytest.raises(TokenizerError, match="outside the vocabulary"):
        tok.decode([5])


@pytest.mark.parametrize("content, message", [
    ("[", "cannot read"), ('["a", "a"]', "duplicates"), ('["ab"]', "one-character"),
    ("[]", "non-empty"),
])
def test_bad_char_vocabulary(tmp_path, content, message):
    (tmp_path / "chars.json").write_text(content)
    with pytest.raises(TokenizerError, match=message):
        load_tokenizer(tmp_path)
