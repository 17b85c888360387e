"""HostBridge + OnChipMemory through the bridge's byte streams (rtl/bridge.py, rtl/protocol.py).

No UART and no machine: the test drives the request bytes with random gaps,
takes the reply bytes with random stalls, plays the machine's status inputs
and takes EXEC's instruction words with random stalls. The host side uses
`protocol.frame` / `protocol.parse_frame`; memory is checked against a
Python model. Every Fault path, then fuzzing: corrupt frames interleaved
with valid commands never modify memory and never change a valid command's
result. Seeds are printed; GPT2ACCEL_SEED replays.
"""
import random
import struct

import numpy as np
import pytest
from amaranth.hdl import Module
from amaranth.lib import wiring
from amaranth.sim import Simulator

from gpt2accel.rtl import protocol as P
from gpt2accel.rtl.attention_config import AttentionConfig
from gpt2accel.rtl.bridge import HostBridge, identity_bytes
from gpt2accel.rtl.config import ConfigError, EngineConfig
from gpt2accel.rtl.onchip_memory import OnChipMemory
from gpt2accel.rtl.spram import SpramStorage
from gpt2accel.sim.harness.matmul import transfer

from link_host import LinkHost, error_reply

CFG = AttentionConfig(engine=EngineConfig(rows=4, cols=4, max_k=128, max_m=16, max_n=512,
                                          addr_bits=16),
                      tile=4, lanes=2, norm_lanes=2, max_d_head=16, max_seq=16)
MB = CFG.engine.mem_bytes
WORDS, MAX_PAYLOAD, TIMEOUT = 48, 128, 60
#: quiet cycles after which a bad frame has surely been answered (timeout + a reply)
SETTLE = TIMEOUT + 400
F = P.Fault


class _BridgeAndMemory(wiring.Component):
    def __init__(self, cfg, **bridge_kw):
        self.bridge = HostBridge(cfg, **{"mem_words": WORDS, "max_payload": MAX_PAYLOAD,
                                         "timeout_cycles": TIMEOUT, **bridge_kw})
        self.memory = OnChipMemory(cfg.engine, WORDS)
        super().__init__({})

    def elaborate(self, platform):
        m = Module()
        m.submodules.bridge, m.submodules.memory = self.bridge, self.memory
        wiring.connect(m, self.bridge.mem, self.memory.host)
        return m


def _run(seed, body, *, stall=0.3, cfg=CFG, **bridge_kw):
    """Simulate `body(ctx, host, bridge, state)`; state["instrs"] collects EXEC words,
    state["resets"] counts machine_reset pulses."""
    rng = random.Random(seed)
    top = _BridgeAndMemory(cfg, **bridge_kw)
    br = top.bridge
    host = LinkHost(br.rx, br.tx, random.Random(rng.random()), stall=stall)
    state = {"instrs": [], "resets": 0}
    sink_rng = random.Random(rng.random())

    async def machine(ctx):
        while True:
            ready = sink_rng.random() >= stall
            ctx.set(br.instr.ready, ready)
            _, _, valid, word, reset = await ctx.tick().sample(
                br.instr.valid, br.instr.payload.word, br.machine_reset)
            if valid and ready:
                state["instrs"].append(int(word))
            state["resets"] += int(reset)

    async def bench(ctx):
        await body(ctx, host, br, state)

    sim = Simulator(top)
    sim.add_clock(1e-8)
    sim.add_testbench(host.collect, background=True)
    sim.add_testbench(machine, background=True)
    sim.add_testbench(bench)
    sim.run()


def _words(rng, n):
    return np.frombuffer(rng.randbytes(n * MB), np.uint8).reshape(n, MB)


def _write(addr, words):
    return P.Req.WRITE, struct.pack("<I", addr) + words.tobytes()


def _read(addr, count):
    return P.Req.READ, struct.pack("<IH", addr, count)


def _checksum(addr, count):
    return P.Req.CHECKSUM, struct.pack("<IH", addr, count)


async def _check_memory(ctx, host, model):
    """READ the whole memory in max_payload chunks and compare with `model`."""
    per = MAX_PAYLOAD // MB
    for a in range(0, WORDS, per):
        n = min(per, WORDS - a)
        op, data = await host.request(ctx, *_read(a, n))
        assert op == P.Req.READ | P.REPLY, (op, data)
        np.testing.assert_array_equal(np.frombuffer(data, np.uint8).reshape(n, MB), model[a:a + n],
                                      err_msg=f"words {a}..{a + n - 1}")


def test_ping_status_and_random_write_read(seed):
    rng = random.Random(seed)
    model = np.zeros((WORDS, MB), np.uint8)

    async def body(ctx, host, br, state):
        assert await host.request(ctx, P.Req.PING) == (
            P.Req.PING | P.REPLY,
            identity_bytes(CFG, mem_words=WORDS, max_payload=MAX_PAYLOAD))
        magic, ver, mb, lg, words, cid, rows, cols = struct.unpack(
            P.IDENTITY_FORMAT, (await host.request(ctx, P.Req.PING))[1])
        assert (magic, ver, mb, 1 << lg, words, cid, rows, cols) == (
            b"G2A", P.PROTOCOL_VERSION, MB, MAX_PAYLOAD, WORDS, P.config_id(CFG), 4, 4)
        status = (0, 2, rng.getrandbits(32), rng.getrandbits(32))
        for sig, v in zip((br.busy, br.error, br.cycles, br.icount), status):
            ctx.set(sig, v)
        assert await host.request(ctx, P.Req.STATUS) == (
            P.Req.STATUS | P.REPLY, struct.pack(P.STATUS_FORMAT, *status))
        ctx.set(br.error, 0)
        for _ in range(16):
            n = rng.randint(1, MAX_PAYLOAD // MB - 1)      # WRITE carries the 4-byte address
            a = rng.randint(0, WORDS - n)
            if rng.random() < 0.6:
                words = _words(rng, n)
                assert await host.request(ctx, *_write(a, words)) == (P.Req.WRITE | P.REPLY, b"")
                model[a:a + n] = words
            else:
                op, data = await host.request(ctx, *_read(a, n))
                assert op == P.Req.READ | P.REPLY
                np.testing.assert_array_equal(np.frombuffer(data, np.uint8).reshape(n, MB),
                                              model[a:a + n], err_msg=f"GPT2ACCEL_SEED={seed}")
        await _check_memory(ctx, host, model)
        # the largest READ (max_payload bytes) and a one-word WRITE at the last address
        last = _words(rng, 1)
        assert await host.request(ctx, *_write(WORDS - 1, last)) == (P.Req.WRITE | P.REPLY, b"")
        model[-1] = last[0]
        op, data = await host.request(ctx, *_read(WORDS - MAX_PAYLOAD // MB, MAX_PAYLOAD // MB))
        assert len(data) == MAX_PAYLOAD and data[-MB:] == last.tobytes()

    _run(seed, body)


def test_checksum_is_zlib_crc32_of_the_words(seed):
    """CHECKSUM over random ranges (longer than a READ may be, the whole memory
    included) equals the host's CRC-32 of the same words."""
    rng = random.Random(seed + 7)
    model = np.frombuffer(rng.randbytes(WORDS * MB), np.uint8).reshape(WORDS, MB).copy()

    async def body(ctx, host, br, state):
        per = MAX_PAYLOAD // MB - 1
        for a in range(0, WORDS, per):
            assert await host.request(ctx, *_write(a, model[a:a + per])) == (
                P.Req.WRITE | P.REPLY, b"")
        ranges = [(0, WORDS), (WORDS - 1, 1)] + [
            (a, rng.randint(1, WORDS - a)) for a in (rng.randrange(WORDS) for _ in range(5))]
        for a, n in ranges:
            op, data = await host.request(ctx, *_checksum(a, n), limit=50_000)
            assert (op, data) == (P.Req.CHECKSUM | P.REPLY, struct.pack(
                P.CHECKSUM_FORMAT, P.crc32(model[a:a + n].tobytes()))), (
                f"words {a}..{a + n - 1}, GPT2ACCEL_SEED={seed}")
        # one changed byte changes the checksum of every range holding it
        model[5, 1] ^= 0x80
        assert await host.request(ctx, *_write(5, model[5:6])) == (P.Req.WRITE | P.REPLY, b"")
        op, data = await host.request(ctx, *_checksum(0, WORDS), limit=50_000)
        assert data == struct.pack(P.CHECKSUM_FORMAT, P.crc32(model.tobytes()))

    _run(seed, body)


def test_a_bridge_without_checksum_refuses_it_as_an_unknown_opcode(seed):
    """``checksum=False`` (the iCEBreaker's bridge, no room for the unit): CHECKSUM is
    Fault.OPCODE and the other requests work as before."""
    rng = random.Random(seed + 9)
    words = _words(rng, 3)

    async def body(ctx, host, br, state):
        assert await host.request(ctx, *_checksum(0, 4)) == error_reply(F.OPCODE,
                                                                        P.Req.CHECKSUM)
        assert await host.request(ctx, *_write(7, words)) == (P.Req.WRITE | P.REPLY, b"")
        assert (await host.request(ctx, *_read(7, 3)))[1] == words.tobytes()

    _run(seed, body, checksum=False)


def test_memory_requests_before_the_memory_is_ready_are_refused(seed):
    """With ``mem_ready`` low (a board's DRAM initialising) WRITE, READ, EXEC and
    CHECKSUM get Fault.MEMORY and change nothing; PING and STATUS answer; once it
    rises the same requests work."""
    rng = random.Random(seed + 8)
    words = _words(rng, 2)

    async def body(ctx, host, br, state):
        ctx.set(br.mem_ready, 0)
        for req in (_write(3, words), _read(3, 2), (P.Req.EXEC, bytes(P.INSTR_BYTES)),
                    _checksum(3, 2)):
            assert await host.request(ctx, *req) == error_reply(F.MEMORY, req[0])
        assert (await host.request(ctx, P.Req.PING))[0] == P.Req.PING | P.REPLY
        assert (await host.request(ctx, P.Req.STATUS))[0] == P.Req.STATUS | P.REPLY
        assert state["instrs"] == []
        ctx.set(br.mem_ready, 1)
        op, data = await host.request(ctx, *_read(3, 2))
        assert data == bytes(2 * MB), "a refused WRITE reached memory"
        assert await host.request(ctx, *_write(3, words)) == (P.Req.WRITE | P.REPLY, b"")
        assert (await host.request(ctx, *_read(3, 2)))[1] == words.tobytes()

    _run(seed, body)


def test_exec_feeds_words_in_order_and_reset_pulses(seed):
    rng = random.Random(seed + 1)

    async def body(ctx, host, br, state):
        sent = []
        for _ in range(3):
            k = rng.randint(1, MAX_PAYLOAD // P.INSTR_BYTES)
            words = [rng.getrandbits(8 * P.INSTR_BYTES) for _ in range(k)]
            payload = b"".join(w.to_bytes(P.INSTR_BYTES, "little") for w in words)
            status = (1, 0, rng.getrandbits(32), rng.getrandbits(32))
            for sig, v in zip((br.busy, br.error, br.cycles, br.icount), status):
                ctx.set(sig, v)
            assert await host.request(ctx, P.Req.EXEC, payload) == (
                P.Req.EXEC | P.REPLY, struct.pack(P.STATUS_FORMAT, *status))
            sent += words
        # bytes past the widest body reach the machine as one "reserved bits set" bit
        assert state["instrs"] == [br.presented(w) for w in sent], f"GPT2ACCEL_SEED={seed}"
        assert any(br.presented(w) != w for w in sent)
        assert state["resets"] == 0
        op, _ = await host.request(ctx, P.Req.RESET)
        assert op == P.Req.RESET | P.REPLY and state["resets"] == 1

    _run(seed, body)


def _fault_cases(rng):
    """(request bytes, expected reply) for every Fault a complete frame can cause."""
    ok_write = _write(0, _words(rng, 1))[1]
    good_crc = P.frame(P.Req.PING)
    return [
        # CRC: a flipped payload bit, a damaged CRC byte, a damaged header
        (P.frame(P.Req.WRITE, ok_write[:-1] + bytes([ok_write[-1] ^ 0x10]))[:-2]
         + P.frame(P.Req.WRITE, ok_write)[-2:], error_reply(F.CRC, P.Req.WRITE)),
        (good_crc[:-1] + bytes([good_crc[-1] ^ 1]), error_reply(F.CRC, P.Req.PING)),
        # LENGTH: above max_payload (refused after the header), and per opcode
        (P.frame(P.Req.WRITE, bytes(MAX_PAYLOAD + 1))[:P.HEADER_BYTES],
         error_reply(F.LENGTH, P.Req.WRITE)),
        (P.frame(P.Req.PING, b"\0"), error_reply(F.LENGTH, P.Req.PING)),
        (P.frame(P.Req.STATUS, b"\0\0"), error_reply(F.LENGTH, P.Req.STATUS)),
        (P.frame(P.Req.RESET, b"\0"), error_reply(F.LENGTH, P.Req.RESET)),
        (P.frame(P.Req.WRITE, ok_write[:-1]), error_reply(F.LENGTH, P.Req.WRITE)),
        (P.frame(P.Req.WRITE, ok_write[:4]), error_reply(F.LENGTH, P.Req.WRITE)),
        (P.frame(P.Req.WRITE, b""), error_reply(F.LENGTH, P.Req.WRITE)),
        (P.frame(P.Req.READ, _read(0, 1)[1][:5]),
         error_reply(F.LENGTH, P.Req.READ)),
        (P.frame(*_read(0, 0)), error_reply(F.LENGTH, P.Req.READ)),
        (P.frame(*_read(0, MAX_PAYLOAD // MB + 1)), error_reply(F.LENGTH, P.Req.READ)),
        (P.frame(P.Req.EXEC, bytes(P.INSTR_BYTES - 1)), error_reply(F.LENGTH, P.Req.EXEC)),
        (P.frame(P.Req.EXEC, b""), error_reply(F.LENGTH, P.Req.EXEC)),
        # OPCODE
        *[(P.frame(op), error_reply(F.OPCODE, op)) for op in (0x00, 0x08, 0x81, 0xFF)],
        # CHECKSUM: READ's payload, any count from 1, within the memory
        (P.frame(P.Req.CHECKSUM, _checksum(0, 1)[1][:5]), error_reply(F.LENGTH, P.Req.CHECKSUM)),
        (P.frame(*_checksum(0, 0)), error_reply(F.LENGTH, P.Req.CHECKSUM)),
        (P.frame(*_checksum(WORDS - 2, 3)), error_reply(F.ADDRESS, P.Req.CHECKSUM)),
        # ADDRESS: past the end, straddling the end, a 32-bit address beyond the port
        (P.frame(*_write(WORDS, _words(rng, 1))), error_reply(F.ADDRESS, P.Req.WRITE)),
        (P.frame(*_write(WORDS - 1, _words(rng, 2))), error_reply(F.ADDRESS, P.Req.WRITE)),
        (P.frame(*_read(WORDS - 2, 3)), error_reply(F.ADDRESS, P.Req.READ)),
        (P.frame(*_read(0xFFFFFFFF, 1)), error_reply(F.ADDRESS, P.Req.READ)),
        (P.frame(*_read(1 << 16, 1)), error_reply(F.ADDRESS, P.Req.READ)),
    ]


@pytest.mark.parametrize("n", [1, 0xFF, 0x100, 0x101, 0x1FF, 0x200, 0x201, 0xFFFF])
def test_length_limit_in_whole_256s(n):
    """With max_payload a whole number of 256s the LEN check reads LEN's low byte as
    one bit (registered in LEN0): a header above the limit is refused at once, one
    within it waits for its payload until the byte timeout."""
    async def body(ctx, host, br, state):
        await host.send(ctx, bytes([P.SYNC, P.Req.WRITE, n & 0xFF, n >> 8]))
        want = F.LENGTH if n > 256 else F.TIMEOUT
        assert await host.reply(ctx) == error_reply(want, P.Req.WRITE), f"LEN {n:#x}"

    _run(0, body, max_payload=256)


def test_every_fault_then_ping(seed):
    rng = random.Random(seed + 2)
    model = np.zeros((WORDS, MB), np.uint8)
    ident = (P.Req.PING | P.REPLY,
             identity_bytes(CFG, mem_words=WORDS, max_payload=MAX_PAYLOAD))

    async def body(ctx, host, br, state):
        per = MAX_PAYLOAD // MB - 1
        for a in range(0, WORDS, per):
            words = _words(rng, min(per, WORDS - a))
            assert await host.request(ctx, *_write(a, words)) == (P.Req.WRITE | P.REPLY, b"")
            model[a:a + len(words)] = words
        for i, (data, want) in enumerate(_fault_cases(rng)):
            await host.send(ctx, data)
            assert await host.reply(ctx) == want, f"case {i}: {data.hex()} GPT2ACCEL_SEED={seed}"
            assert await host.request(ctx, P.Req.PING) == ident, f"after case {i}"
        # BUSY: memory access while the machine runs; STATUS still answers
        ctx.set(br.busy, 1)
        for req, op in ((_write(0, _words(rng, 1)), P.Req.WRITE), (_read(0, 1), P.Req.READ)):
            assert await host.request(ctx, *req) == error_reply(F.BUSY, op)
        assert (await host.request(ctx, P.Req.STATUS))[1][0] == 1
        ctx.set(br.busy, 0)
        # TIMEOUT: frames cut short anywhere, the opcode reported once it arrived
        frame = P.frame(*_write(3, _words(rng, 2)))
        for cut in (1, 2, 3, P.HEADER_BYTES + 5, len(frame) - 1):
            await host.send(ctx, frame[:cut])
            want = error_reply(F.TIMEOUT, P.Req.WRITE if cut > 1 else 0)
            assert await host.drain(ctx, SETTLE) == [want], f"cut at {cut}"
        # SERIAL: a UART framing error inside a frame (none outside a frame)
        await host.send(ctx, frame[:7])
        ctx.set(br.rx_error, 1)
        await ctx.tick()
        ctx.set(br.rx_error, 0)
        assert await host.drain(ctx, SETTLE) == [error_reply(F.SERIAL, P.Req.WRITE)]
        ctx.set(br.rx_error, 1)
        await ctx.tick()
        ctx.set(br.rx_error, 0)
        assert await host.drain(ctx, SETTLE) == []
        assert await host.request(ctx, P.Req.PING) == ident
        await _check_memory(ctx, host, model)

    _run(seed, body)


def test_serial_error_with_the_last_crc_byte_wins(seed):
    """A UART error in the cycle that brings a good frame's last CRC byte is a SERIAL
    fault: the frame is not carried out (its words never reach memory)."""
    rng = random.Random(seed + 5)
    words = _words(rng, 1)

    async def body(ctx, host, br, state):
        frame = P.frame(*_write(2, words))
        await host.send(ctx, frame[:-1])
        ctx.set(br.rx_error, 1)
        await transfer(ctx, br.rx, frame[-1])
        ctx.set(br.rx_error, 0)
        ctx.set(br.rx.valid, 0)
        assert await host.drain(ctx, SETTLE) == [error_reply(F.SERIAL, P.Req.WRITE)]
        await _check_memory(ctx, host, np.zeros((WORDS, MB), np.uint8))

    _run(seed, body)


def _corrupt(rng, valid_frames):
    """A damaged frame: flipped bytes, a truncation, garbage, or a valid frame with an
    unassigned opcode."""
    f = bytearray(rng.choice(valid_frames))
    kind = rng.choice(("flip", "truncate", "garbage", "opcode", "flip+truncate"))
    if "flip" in kind:
        for _ in range(rng.randint(1, 3)):
            i = rng.randrange(1, len(f))
            f[i] ^= rng.randint(1, 255)
    if "truncate" in kind:
        f = f[:rng.randrange(1, len(f))]
    if kind == "garbage":
        f = bytearray(rng.randbytes(rng.randint(1, 40)))
    if kind == "opcode":
        f = bytearray(P.frame(rng.choice([o for o in range(256)
                                          if o not in set(P.Req)]), rng.randbytes(rng.randint(0, 8))))
    return bytes(f), kind


@pytest.mark.parametrize("rounds", [40, pytest.param(600, marks=pytest.mark.slow)])
def test_fuzz_corrupt_frames_never_wedge_or_modify(seed, rounds):
    rng = random.Random(seed + 3)
    model = np.zeros((WORDS, MB), np.uint8)
    ident = (P.Req.PING | P.REPLY,
             identity_bytes(CFG, mem_words=WORDS, max_payload=MAX_PAYLOAD))

    def valid_request():
        n = rng.randint(1, 4)
        a = rng.randint(0, WORDS - n)
        return rng.choice([_write(a, _words(rng, n)), _read(a, n), (P.Req.PING, b""),
                           (P.Req.STATUS, b"")])

    async def body(ctx, host, br, state):
        kinds = {}
        for i in range(rounds):
            frames = [P.frame(*valid_request()) for _ in range(3)]
            bad, kind = _corrupt(rng, frames)
            kinds[kind] = kinds.get(kind, 0) + 1
            await host.send(ctx, bad)
            for op, _ in await host.drain(ctx, SETTLE):
                assert op == P.ERROR, f"{kind} frame {bad.hex()} got a non-error reply"
            # the next valid command behaves as on a fresh device
            op, payload = valid_request()
            got = await host.request(ctx, op, payload)
            if op == P.Req.WRITE:
                (a,) = struct.unpack_from("<I", payload)
                words = np.frombuffer(payload[4:], np.uint8).reshape(-1, MB)
                model[a:a + len(words)] = words
                assert got == (P.Req.WRITE | P.REPLY, b"")
            elif op == P.Req.READ:
                a, n = struct.unpack("<IH", payload)
                assert got == (P.Req.READ | P.REPLY, model[a:a + n].tobytes()), f"seed {seed}"
            elif op == P.Req.PING:
                assert got == ident
            else:
                assert got[0] == P.Req.STATUS | P.REPLY
        print(f"corrupt frames by kind: {kinds}")
        assert await host.request(ctx, P.Req.PING) == ident
        await _check_memory(ctx, host, model)

    _run(seed, body)


@pytest.mark.parametrize("kw, match", [
    (dict(max_payload=96), "power of two"),
    (dict(max_payload=32), "max_payload=32 is outside"),
    (dict(max_payload=1 << 16), "outside"),
    (dict(mem_words=0), "mem_words=0"),
    (dict(mem_words=(1 << 16) + 1), "16 bits on the machine"),
    (dict(timeout_cycles=0), "timeout_cycles=0"),
])
def test_bad_bridge_config_refused(kw, match):
    args = dict(mem_words=WORDS, max_payload=MAX_PAYLOAD, timeout_cycles=TIMEOUT) | kw
    with pytest.raises(ConfigError, match=match):
        HostBridge(CFG, **args)


@pytest.mark.parametrize("storage", OnChipMemory.STORAGES)
def test_onchip_memory_two_ports_random_stalls(seed, storage):
    """OnChipMemory alone: both ports issue random reads and strobed writes (in and out
    of range) with random valid gaps and rd_resp.ready stalls; every response equals a
    word-memory model (out of range: reads 0, writes ignored), in order, none lost.
    SPRAM storage (single port, 16K-word macros) is checked against the same model."""
    rng = random.Random(seed + 4)
    depth, e = (40 if storage == "bram" else 16384), CFG.engine
    dut = OnChipMemory(e, depth, storage=storage)
    model = np.zeros((depth, MB), np.uint8)
    ports = {"machine": dut.machine, "host": dut.host}
    counts = {"reads": 0, "writes": 0, "out_of_range": 0, "resp_stalls": 0}

    # 40 words in use, spread over the whole depth (every SPRAM bank), so reads hit writes
    hot = rng.sample(range(depth), 40)

    def rand_addr():
        if rng.random() < 0.1:
            counts["out_of_range"] += 1
            return rng.randrange(depth, 1 << e.addr_bits)
        return rng.choice(hot)

    def word(addr):
        return int.from_bytes(model[addr].tobytes(), "little") if addr < depth else 0

    async def bench(ctx):
        pend = {(p, s): None for p in ports for s in ("rd_req", "wr")}
        expect = {p: [] for p in ports}
        for cycle in range(3000):
            for (p, s), item in pend.items():
                if item is None and rng.random() < 0.4:
                    addr = rand_addr()
                    item = pend[p, s] = ({"addr": addr} if s == "rd_req" else
                                         {"addr": addr, "data": rng.getrandbits(8 * MB),
                                          "strb": rng.getrandbits(MB)})
                port = getattr(ports[p], s)
                ctx.set(port.valid, item is not None)
                if item is not None:
                    ctx.set(port.payload, item)
            ready = {p: rng.random() < 0.6 for p in ports}
            for p in ports:
                ctx.set(ports[p].rd_resp.ready, ready[p])
            sampled = (await ctx.tick().sample(
                *[getattr(ports[p], s).ready for p, s in pend],
                *[ports[p].rd_resp.valid for p in ports],
                *[ports[p].rd_resp.payload.data for p in ports]))[2:]
            acc = dict(zip(pend, sampled[:4]))
            rv = dict(zip(ports, sampled[4:6]))
            rd = dict(zip(ports, sampled[6:8]))
            for p in ports:
                if rv[p] and ready[p]:
                    assert expect[p], f"{p}: response without a request (cycle {cycle})"
                    assert rd[p] == expect[p].pop(0), f"{p} cycle {cycle} GPT2ACCEL_SEED={seed}"
                counts["resp_stalls"] += bool(rv[p] and not ready[p])
            # reads see the memory before this cycle's write (read before write)
            for p in ports:
                if pend[p, "rd_req"] is not None and acc[p, "rd_req"]:
                    expect[p].append(word(pend[p, "rd_req"]["addr"]))
                    pend[p, "rd_req"] = None
                    counts["reads"] += 1
            for p in ports:
                w = pend[p, "wr"]
                if w is not None and acc[p, "wr"]:
                    if w["addr"] < depth:
                        b = np.frombuffer(w["data"].to_bytes(MB, "little"), np.uint8)
                        lanes = [(w["strb"] >> i) & 1 == 1 for i in range(MB)]
                        model[w["addr"]][lanes] = b[lanes]
                    pend[p, "wr"] = None
                    counts["writes"] += 1
        print(counts)

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    assert counts["resp_stalls"] > 100 and counts["out_of_range"] > 50


def test_spram_model_words_alias_modulo_their_count():
    """The SPRAM's behavioural twin cut to 4 words (as the formal harness keeps it): a
    word written at address 5 is read back at address 1, one at 2 at 14. Sizes that
    are not a power of two up to the depth are refused."""
    dut = OnChipMemory(CFG.engine, 16384, storage="spram", spram_model_words=4)
    port, ones = dut.machine, (1 << MB) - 1
    got = []

    async def bench(ctx):
        for addr, data in ((5, 0x1234), (2, 0xBEEF)):
            await transfer(ctx, port.wr, {"addr": addr, "data": data, "strb": ones})
        ctx.set(port.wr.valid, 0)
        ctx.set(port.rd_resp.ready, 1)
        for addr in (1, 14):
            await transfer(ctx, port.rd_req, {"addr": addr})
            ctx.set(port.rd_req.valid, 0)
            while not ctx.get(port.rd_resp.valid):
                await ctx.tick()
            got.append(ctx.get(port.rd_resp.payload.data))
            await ctx.tick()

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    assert got == [0x1234, 0xBEEF]
    for bad in (3, 0, 32768, 4.0):
        with pytest.raises(ConfigError, match=rf"SPRAM model of {bad!r} words: must be a "
                                              r"power of two from 1 to the depth \(16384\)"):
            SpramStorage(8 * MB, 16384, model_words=bad)
    with pytest.raises(ConfigError, match="spram_model_words=4 applies to SPRAM storage, "
                                          "not 'bram'"):
        OnChipMemory(CFG.engine, 64, spram_model_words=4)


@pytest.mark.parametrize("storage", OnChipMemory.STORAGES)
def test_onchip_memory_streams_a_word_per_cycle(storage):
    """Back-to-back reads with a consumer that always takes: one word per cycle after
    the storage's read latency, in order."""
    n = 40
    dut = OnChipMemory(CFG.engine, 64 if storage == "bram" else 16384, storage=storage)
    port = dut.machine
    got = []

    async def bench(ctx):
        for a in range(n):                                # word a holds a + 1 in every byte
            await transfer(ctx, port.wr, {"addr": a, "data": int.from_bytes(bytes([a + 1] * MB),
                                                                           "little"),
                                          "strb": (1 << MB) - 1})
        ctx.set(port.wr.valid, 0)
        ctx.set(port.rd_resp.ready, 1)
        cycle, first, sent = 0, None, 0
        while len(got) < n:
            ctx.set(port.rd_req.payload.addr, sent)
            ctx.set(port.rd_req.valid, sent < n)
            _, _, rq_ready, valid, data = await ctx.tick().sample(
                port.rd_req.ready, port.rd_resp.valid, port.rd_resp.payload.data)
            if sent < n and rq_ready:
                first = cycle if first is None else first
                sent += 1
            if valid:
                got.append((cycle, data & 0xFF))
            cycle += 1
        assert [d for _, d in got] == [a + 1 for a in range(n)]
        lat = dut.read_latency
        assert [c for c, _ in got] == list(range(first + lat, first + lat + n)), storage

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()


def test_timeout_boundary(seed):
    """A gap of exactly timeout_cycles idle cycles inside a frame is allowed; one more
    cycle is a TIMEOUT."""
    rng = random.Random(seed + 5)
    ident = (P.Req.PING | P.REPLY,
             identity_bytes(CFG, mem_words=WORDS, max_payload=MAX_PAYLOAD))

    async def body(ctx, host, br, state):
        frame = P.frame(P.Req.PING)
        for gap, want in ((TIMEOUT, ident), (TIMEOUT + 1, error_reply(F.TIMEOUT, P.Req.PING))):
            cut = rng.randrange(2, len(frame))        # after the opcode, before the end
            await host.send(ctx, frame[:cut])
            await host.idle(ctx, gap)
            if want[0] == P.ERROR:
                assert await host.drain(ctx, SETTLE) == [want], f"gap {gap} at byte {cut}"
            else:
                await host.send(ctx, frame[cut:])
                assert await host.reply(ctx) == want, f"gap {gap} at byte {cut}"

    _run(seed, body, stall=0.0)


def test_word_size_not_a_power_of_two(seed):
    """12-byte words (a 2x6 array): WRITE lengths are counted in words as they arrive and
    READ replies pick bytes 0..11 of each word; a WRITE of 1.5 words is a LENGTH fault."""
    cfg = AttentionConfig(engine=EngineConfig(rows=2, cols=6, max_k=64, max_m=8, max_n=64,
                                              addr_bits=12),
                          tile=4, lanes=1, norm_lanes=1, max_d_head=16, max_seq=16)
    mb = cfg.engine.mem_bytes
    rng = random.Random(seed + 6)
    model = np.zeros((WORDS, mb), np.uint8)

    async def body(ctx, host, br, state):
        for _ in range(8):
            n = rng.randint(1, (MAX_PAYLOAD - 4) // mb)
            a = rng.randint(0, WORDS - n)
            words = np.frombuffer(rng.randbytes(n * mb), np.uint8).reshape(n, mb)
            assert await host.request(ctx, P.Req.WRITE, struct.pack("<I", a) + words.tobytes()) \
                == (P.Req.WRITE | P.REPLY, b"")
            model[a:a + n] = words
            b, k = rng.randint(0, WORDS - 4), rng.randint(1, 4)
            assert await host.request(ctx, *_read(b, k)) == (P.Req.READ | P.REPLY,
                                                             model[b:b + k].tobytes())
        assert await host.request(ctx, P.Req.WRITE, bytes(4 + mb + mb // 2)) \
            == error_reply(F.LENGTH, P.Req.WRITE)
        assert await host.request(ctx, *_read(0, MAX_PAYLOAD // mb + 1)) \
            == error_reply(F.LENGTH, P.Req.READ)
        op, data = await host.request(ctx, *_read(0, MAX_PAYLOAD // mb))
        assert data == model[:MAX_PAYLOAD // mb].tobytes(), f"GPT2ACCEL_SEED={seed}"

    _run(seed, body, cfg=cfg)
