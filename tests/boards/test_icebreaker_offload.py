"""The iCEBreaker preset co-simulated: its MATMUL-only board top generates tokens.

The iCE40UP5K holds only a MATMUL co-processor (`boards.presets` "icebreaker":
a 1x1 array, `Machine(ops=["matmul"])`, memory in SPRAM). The board top of
exactly that preset is compiled with Verilator behind a simulated UART
(`sim.host.board_sim.FastLink`); `sim.host.offload.OffloadDriver`, through
`SerialBackend`, loads the linear layers' weights over the UART, runs every
linear layer as a MATMUL program on the board and the rest on the host, and
the logits must equal `QuantGPT2`'s bit for bit. The device refuses other
opcodes, and a host that expects the whole machine is refused at PING.
"""
import time

import numpy as np
import pytest

from gpt2accel.boards.presets import BoardMachine, get_preset
from gpt2accel.model.gpt2 import KVCache
from gpt2accel.rtl.isa import Error, Op, encode
from gpt2accel.rtl.machine_config import MachineConfig
from gpt2accel.sim.fast import FastBackendUnavailable
from gpt2accel.sim.host.offload import OffloadDriver
from gpt2accel.sim.host.serial import DeviceMismatch, SerialBackend

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def icebreaker():
    from gpt2accel.sim.host.board_sim import FastLink
    board = BoardMachine(get_preset("icebreaker"))
    p = board.preset
    try:
        link = FastLink(board.cfg, mem_words=board.mem_words, storage=p.storage)
    except FastBackendUnavailable as exc:
        pytest.skip(f"fast backend unavailable: {exc}")
    yield board, link
    link.close()


def test_icebreaker_top_generates_bit_exact(icebreaker):
    board, link = icebreaker
    q, cfg = board.q, board.cfg
    backend = SerialBackend(link, run_timeout_s=600.0)
    drv = OffloadDriver(q, cfg, backend, mem_words=board.mem_words)
    t0 = time.perf_counter()
    drv.load()
    load_s = time.perf_counter() - t0
    prompt = [int(i) for i in np.frombuffer(b"ROMEO", np.uint8) % q.config.vocab_size]
    got = [drv.prefill(prompt)]
    nxt = int(np.argmax(got[0][-1]))
    got.append(drv.decode(nxt))
    cache = KVCache(q.config.n_layer)
    want = [q.forward(np.array(prompt), cache), q.forward(np.array([nxt]), cache)]
    for g, w in zip(got, want):
        assert np.array_equal(g, w)
    c = drv.counters()
    print(f"iCEBreaker top: load {load_s:.1f} s ({backend.bytes_out:,} bytes out), "
          f"{c['programs']} MATMUL programs, {c['cycles']:,} machine cycles, "
          f"{c['macs']:,} MACs")
    # anything but MATMUL is refused by the co-processor (its opcode is not built)
    res = backend.run([int(Op.ATTENTION), encode(cfg, Op.HALT)])
    assert res["error"] == Error.OPCODE


def test_whole_machine_host_is_refused(icebreaker):
    board, link = icebreaker
    with pytest.raises(DeviceMismatch, match="another machine"):
        SerialBackend(link).open(MachineConfig.of(board.cfg, ops=None), board.mem_words)
