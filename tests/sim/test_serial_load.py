"""Loading a memory image over the serial link: CRC-checked end to end and resumable
(`SerialBackend.load_image`, the bridge's CHECKSUM), on the simulated board in
Amaranth's simulator with the on-chip memory and with the DRAM adapter on a
behavioural LiteDRAM native port (`board_sim.NativeDramModel`).

A dropped link is a cable that stops carrying bytes after a given count, in
both directions; reconnecting is a new backend on the same board. The second
load must send only the chunks the first did not finish, and the memory must
then hold the image. GPT2ACCEL_SEED replays.
"""
import random
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "rtl"))

from gpt2accel.model import progress  # noqa: E402
from gpt2accel.rtl import protocol as P  # noqa: E402
from gpt2accel.sim.host.board_sim import PysimLink  # noqa: E402
from gpt2accel.sim.host.driver import HardwareError  # noqa: E402
from gpt2accel.sim.host.serial import Link, LinkTimeout, SerialBackend  # noqa: E402

from test_machine import CFG as SMALL_CFG  # noqa: E402

WORDS, CHUNK = 32, 4
MB = SMALL_CFG.engine.mem_bytes
#: the DRAM: 2-byte native words (the ULX3S core's), so a memory word takes several beats
DRAM = (10, 2)


class Cable(Link):
    """A link through `inner` that goes dead after `cut_after` bytes were written: later
    writes are lost and reads get nothing (the board's time still passes)."""

    def __init__(self, inner, cut_after=None):
        self.inner, self.cut_after, self.written = inner, cut_after, 0
        self.baud = inner.baud

    @property
    def dead(self):
        return self.cut_after is not None and self.written >= self.cut_after

    def write(self, data):
        if self.cut_after is not None:
            data = data[:max(0, self.cut_after - self.written)]
        self.written += len(data)
        self.inner.write(data)

    def read(self, n, timeout_s):
        if self.dead:
            self.inner.idle(timeout_s)
            self.inner.discard_input()
            return b""
        return self.inner.read(n, timeout_s)

    def clock(self):
        return self.inner.clock()


def _image(seed):
    rng = random.Random(seed)
    return np.frombuffer(rng.randbytes(WORDS * MB), np.uint8).reshape(WORDS, MB).copy()


def _backend(link):
    be = SerialBackend(link, timeout_s=0.002, run_timeout_s=0.05)
    be.open(SMALL_CFG, WORDS)
    return be


@pytest.fixture(params=["bram", "dram"])
def board(request):
    if request.param == "dram":
        link = PysimLink(SMALL_CFG, mem_words=WORDS, dram=DRAM, storage="dram")
    else:
        link = PysimLink(SMALL_CFG, mem_words=WORDS)
    yield request.param, link
    if link.dram is not None:
        assert not link.dram.errors, link.dram.errors[0]
    link.close()


def test_load_is_checked_and_resumes_after_a_dropped_link(board, seed, capsys):
    kind, link = board
    image = _image(seed)
    # about half of the image's WRITE frames get through before the cable is cut
    cut = random.Random(seed).randint(WORDS * MB // 3, 2 * WORDS * MB // 3)
    be = _backend(link)
    be.link = Cable(link, cut_after=cut)
    with pytest.raises((LinkTimeout, HardwareError)):
        be.load_image(image, chunk_words=CHUNK)
    first = dict(be.last_load)
    assert 1 < first["chunks"] <= WORDS // CHUNK, (first, f"GPT2ACCEL_SEED={seed}")

    # reconnect: a new host on the same board (the device may still be mid-frame)
    link.idle(0.002)
    link.discard_input()
    be2 = _backend(link)
    # the chunk being sent when the cable went is on the device whole if the cut fell
    # after its last WRITE byte (in the CHECKSUM that checks it), else it is not
    held = be2.dump(0, WORDS).reshape(WORDS // CHUNK, CHUNK * MB)
    whole = [bool((h == c).all()) for h, c in zip(held, image.reshape(held.shape))]
    finished = first["chunks"] - 1 + whole[first["chunks"] - 1]
    assert whole == [True] * finished + [False] * (WORDS // CHUNK - finished), (
        whole, first, f"GPT2ACCEL_SEED={seed}")
    with progress.quiet():
        stats = be2.load_image(image, chunk_words=CHUNK)
    assert stats["skipped"] == finished and stats["sent"] == WORDS // CHUNK - finished, (
        stats, first, f"GPT2ACCEL_SEED={seed}")
    assert stats["bytes_sent"] == stats["sent"] * CHUNK * MB
    np.testing.assert_array_equal(be2.dump(0, WORDS), image, err_msg=f"{kind}, seed {seed}")
    # loading again sends nothing: every chunk's CRC matches
    again = be2.load_image(image, chunk_words=CHUNK)
    assert (again["sent"], again["skipped"]) == (0, WORDS // CHUNK)
    err = capsys.readouterr().err
    assert "loading the memory image" in err and "CRC-checked" in err and " s of link time" in err


def test_a_changed_word_is_found_and_rewritten(seed):
    """One byte changed on the device behind the host's back: the next load sends that
    chunk alone."""
    link = PysimLink(SMALL_CFG, mem_words=WORDS)
    be = _backend(link)
    image = _image(seed + 1)
    with progress.quiet():
        be.load_image(image, chunk_words=CHUNK)
        w = random.Random(seed).randrange(WORDS)
        bad = image[w:w + 1].copy()
        bad[0, 0] ^= 1
        be.load(bad, w)
        assert be.checksum(0, WORDS) != P.crc32(image.tobytes())
        stats = be.load_image(image, chunk_words=CHUNK)
    assert (stats["sent"], stats["skipped"]) == (1, WORDS // CHUNK - 1)
    assert be.checksum(0, WORDS) == P.crc32(image.tobytes())
    link.close()


def test_memory_requests_before_the_dram_is_initialised_are_refused():
    """The board's DRAM still initialising: a load is refused with Fault.MEMORY (a
    HardwareError naming it), PING answers; once init_done rises the load goes."""
    link = PysimLink(SMALL_CFG, mem_words=WORDS, dram=DRAM, storage="dram",
                     dram_kw={"init_cycles": 40_000})
    be = SerialBackend(link, timeout_s=0.002)
    be.identify()
    be.cfg, be.mem_words, be.mem_bytes = SMALL_CFG, WORDS, MB
    with pytest.raises(HardwareError, match="MEMORY"):
        be.load(_image(0)[:1], 0)
    link.idle(40_000 / link.clk_hz)
    with progress.quiet():
        be.load_image(_image(0), chunk_words=WORDS)
    np.testing.assert_array_equal(be.dump(0, WORDS), _image(0))
    link.close()
