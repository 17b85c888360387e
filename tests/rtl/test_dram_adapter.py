"""The DRAM adapter against a behavioural LiteDRAM native port, under random traffic.

The port model keeps LiteDRAM's strobe semantics (``wdata.ready`` takes the data at
the head whether or not it is valid; ``rdata.valid`` delivers a word whatever
``rdata.ready`` says) and fails on a beat the adapter was not ready for. Commands
run in order after a random delay; reads return tens of cycles later; a
refresh-like pause stops everything for a while. The machine side presents random
reads and writes (bytes -128/127 among them, random strobes, addresses past the
DRAM) with random gaps and random ``rd_resp.ready``; every word read must be the
one a memory applying the requests in acceptance order holds, and at the end the
DRAM's contents must be what the writes left.
"""
import random
from collections import deque

import pytest
from amaranth.sim import Simulator

from gpt2accel.rtl.config import ConfigError
from gpt2accel.rtl.dram_adapter import DramAdapter

EXTREMES = (0x80, 0x7F, 0xFF, 0x00)


def _clock_native(ctx, model, nat, cmd_ready, t, tag):
    """One cycle of the native-port model, from what the adapter drives this cycle."""
    model.clock(t, cmd=(ctx.get(nat.cmd.valid), cmd_ready,
                        ctx.get(nat.cmd.payload.we), ctx.get(nat.cmd.payload.addr)),
                wdata=(ctx.get(nat.wdata.valid), ctx.get(nat.wdata.payload.data),
                       ctx.get(nat.wdata.payload.we)),
                rdata_ready=ctx.get(nat.rdata.ready))
    assert not model.errors, f"{tag}, {model.errors[0]}"


def _byte(rng):
    return rng.choice(EXTREMES) if rng.random() < 0.3 else rng.randrange(256)


def _word(rng, nbytes):
    return int.from_bytes(bytes(_byte(rng) for _ in range(nbytes)), "little")


def _merge(old, new, strb, nbytes):
    mask = sum(0xFF << (8 * b) for b in range(nbytes) if strb >> b & 1)
    return (old & ~mask) | (new & mask)


class NativeModel:
    """LiteDRAM's native port seen from its user, one cycle at a time."""

    def __init__(self, rng, nbytes, *, cmd_p=0.7, exec_p=0.8, latency=(10, 40),
                 refresh_every=300, refresh_len=20, cmd_buffer=16, run_after=(2, 8)):
        self.rng, self.nbytes, self.run_after = rng, nbytes, run_after
        self.cmd_p, self.exec_p, self.latency = cmd_p, exec_p, latency
        self.refresh_every, self.refresh_len, self.cmd_buffer = refresh_every, refresh_len, cmd_buffer
        self.mem = {}
        self.cmds = deque()        # (cycle it may run, we, addr)
        self.reads = deque()       # (cycle it arrives, data)
        self.last_arrival = 0
        self.errors = []

    def drive(self, t):
        """(cmd.ready, wdata.ready, rdata.valid, rdata.data) for cycle `t`."""
        paused = t % self.refresh_every < self.refresh_len
        cmd_ready = (not paused and len(self.cmds) < self.cmd_buffer
                     and self.rng.random() < self.cmd_p)
        self.run = None
        if not paused and self.cmds and self.cmds[0][0] <= t and self.rng.random() < self.exec_p:
            self.run = self.cmds.popleft()
        self.arrive = None
        if not paused and self.reads and self.reads[0][0] <= t:
            self.arrive = self.reads.popleft()
        wdata_ready = self.run is not None and self.run[1]
        return (int(cmd_ready), int(wdata_ready), int(self.arrive is not None),
                self.arrive[1] if self.arrive else 0)

    def clock(self, t, *, cmd, wdata, rdata_ready):
        """Settle cycle `t` given the adapter's outputs: `cmd` (valid, ready, we, addr),
        `wdata` (valid, data, we)."""
        if self.run is not None:
            _, we, addr = self.run
            if we:
                valid, data, strb = wdata
                if not valid:
                    self.errors.append(f"cycle {t}: write data to {addr} not there when taken")
                self.mem[addr] = _merge(self.mem.get(addr, 0), data, strb, self.nbytes)
            else:
                arrival = max(t + self.rng.randint(*self.latency), self.last_arrival + 1)
                self.last_arrival = arrival
                self.reads.append((arrival, self.mem.get(addr, 0)))
        if self.arrive is not None and not rdata_ready:
            self.errors.append(f"cycle {t}: read word lost (rdata.ready low)")
        valid, ready, we, addr = cmd
        if valid and ready:
            self.cmds.append((t + self.rng.randint(*self.run_after), we, addr))

    def idle(self):
        return not self.cmds and not self.reads


def run_traffic(*, mem_bytes, native_bytes, native_addr_bits, addr_bits, ops, seed,
                read_beats=16, write_beats=8, req_p=0.6, resp_p=0.7, model_kw=None):
    """Random traffic through a `DramAdapter`; returns (model, cycles, words read)."""
    rng = random.Random(seed)
    tag = f"GPT2ACCEL_SEED={seed}"
    dut = DramAdapter(addr_bits=addr_bits, mem_bytes=mem_bytes,
                      native_addr_bits=native_addr_bits, native_bytes=native_bytes,
                      read_beats=read_beats, write_beats=write_beats)
    depth = dut.depth_words
    model = NativeModel(rng, native_bytes, **(model_kw or {}))
    # few addresses, so reads meet earlier writes; some past the DRAM
    pool = sorted({rng.randrange(min(depth, 64)) for _ in range(12)}
                  | {depth - 1 - rng.randrange(4) for _ in range(3)}
                  | ({depth + rng.randrange((1 << addr_bits) - depth) for _ in range(3)}
                     if (1 << addr_bits) > depth else set()))
    ref = {}
    expected = deque()
    result = {}
    mach, nat = dut.machine, dut.native

    async def bench(ctx):
        reads_left = writes_left = ops
        rd = wr = None
        got = cycles = 0
        t = 0
        while reads_left or writes_left or rd or wr or expected or not model.idle():
            if rd is None and reads_left and rng.random() < req_p:
                rd, reads_left = rng.choice(pool), reads_left - 1
            if wr is None and writes_left and rng.random() < req_p:
                wr = (rng.choice(pool), _word(rng, mem_bytes), rng.randrange(1 << mem_bytes))
                writes_left -= 1
            ctx.set(mach.rd_req.valid, rd is not None)
            ctx.set(mach.rd_req.payload.addr, rd or 0)
            ctx.set(mach.wr.valid, wr is not None)
            if wr is not None:
                ctx.set(mach.wr.payload.addr, wr[0])
                ctx.set(mach.wr.payload.data, wr[1])
                ctx.set(mach.wr.payload.strb, wr[2])
            resp_ready = rng.random() < resp_p
            ctx.set(mach.rd_resp.ready, resp_ready)
            cmd_ready, wdata_ready, rdata_valid, rdata = model.drive(t)
            ctx.set(nat.cmd.ready, cmd_ready)
            ctx.set(nat.wdata.ready, wdata_ready)
            ctx.set(nat.rdata.valid, rdata_valid)
            ctx.set(nat.rdata.payload.data, rdata)

            if rd is not None and ctx.get(mach.rd_req.ready):
                expected.append(ref.get(rd, 0) if rd < depth else 0)
                rd = None
            if wr is not None and ctx.get(mach.wr.ready):
                assert rd is None or not ctx.get(mach.rd_req.ready)
                if wr[0] < depth:
                    ref[wr[0]] = _merge(ref.get(wr[0], 0), wr[1], wr[2], mem_bytes)
                wr = None
            if resp_ready and ctx.get(mach.rd_resp.valid):
                assert expected, f"{tag}, cycle {t}: a word nobody asked for"
                want = expected.popleft()
                word = ctx.get(mach.rd_resp.payload.data)
                assert word == want, f"{tag}, cycle {t}: read {word:#x}, expected {want:#x}"
                got += 1
            _clock_native(ctx, model, nat, cmd_ready, t, tag)
            await ctx.tick()
            t += 1
            assert t < 200 * ops + 2000, f"{tag}: traffic did not drain"
        result.update(cycles=t, words=got)

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    _check_contents(model, ref, dut, tag)
    return model, result["cycles"], result["words"]


def _check_contents(model, ref, dut, tag):
    """The DRAM holds, word for word, what the machine's writes left."""
    k, lanes, nb, mb = dut.beats, dut.lanes, dut.native_bytes, dut.mem_bytes
    for addr in range(min(dut.depth_words, 1 << dut.addr_bits)):
        if lanes > 1:
            word = model.mem.get(addr // lanes, 0) >> (8 * mb * (addr % lanes)) & ((1 << 8 * mb) - 1)
        else:
            word = sum(model.mem.get(addr * k + i, 0) << (8 * nb * i) for i in range(k))
        assert word == ref.get(addr, 0), f"{tag}, word {addr}: DRAM has {word:#x}, expected {ref.get(addr, 0):#x}"


@pytest.mark.parametrize("mem_bytes, native_bytes, native_addr_bits, addr_bits", [
    (4, 4, 6, 7),       # equal widths
    (8, 2, 7, 7),       # narrower native port: 4 beats a word
    (16, 2, 8, 8),      # ULX3S's shape: SDR x16 under a 16-byte word, 8 beats
    (4, 16, 4, 7),      # wider native port: 4 words a native word
])
@pytest.mark.parametrize("run", [0, 1])
def test_random_traffic_is_bit_exact(mem_bytes, native_bytes, native_addr_bits, addr_bits, run,
                                     seed):
    model, cycles, words = run_traffic(mem_bytes=mem_bytes, native_bytes=native_bytes,
                                       native_addr_bits=native_addr_bits, addr_bits=addr_bits,
                                       ops=150, seed=seed + run)
    assert words == 150


def test_write_data_is_queued_before_the_controller_can_ask(seed):
    # the controller takes a write's data as early as two cycles after its command
    run_traffic(mem_bytes=8, native_bytes=2, native_addr_bits=6, addr_bits=6, ops=100, seed=seed,
                req_p=1.0, model_kw={"cmd_p": 1.0, "exec_p": 1.0, "run_after": (2, 2),
                                     "latency": (2, 3)})


def test_a_full_read_queue_holds_the_words_of_a_slow_consumer(seed):
    # the machine takes a word rarely while the controller answers fast: the credits
    # must stop read commands before the queue overflows (the model fails on a lost word)
    run_traffic(mem_bytes=4, native_bytes=1, native_addr_bits=8, addr_bits=6, ops=80, seed=seed,
                read_beats=8, resp_p=0.1, model_kw={"cmd_p": 1.0, "exec_p": 1.0, "latency": (3, 5)})


def test_reads_in_flight_cover_the_latency():
    # equal widths, no stalls, reads ~30 cycles away: with 32 beats in flight a word
    # per cycle flows; with 4, at most 4 words per latency
    kw = dict(mem_bytes=4, native_bytes=4, native_addr_bits=8, addr_bits=8, ops=200,
              req_p=1.0, resp_p=1.0,
              model_kw={"cmd_p": 1.0, "exec_p": 1.0, "latency": (30, 30), "refresh_len": 0,
                        "cmd_buffer": 64})
    _, fast, _ = run_traffic(seed=4, read_beats=32, **kw)
    _, slow, _ = run_traffic(seed=4, read_beats=4, **kw)
    # 200 reads and 200 writes alternate: ~400 commands
    assert fast < 500
    assert slow > 200 * 30 // 4


def run_pipeline(*, mem_bytes, native_bytes, native_addr_bits, n, mo, seed, read_beats,
                 write_beats=8, fan=4, model_kw=None):
    """A requester shaped like the machine's vector units: it reads `n` consecutive
    words with up to `mo` unanswered and turns each response into `fan` strobed
    writes (parts of its inverse, like GELU's quarter-word writes) to a second
    region; it takes the next response only once those writes are all accepted, so
    its reads wait on its writes. Returns the cycles it took; fails if it does not
    finish."""
    rng = random.Random(seed)
    tag = f"GPT2ACCEL_SEED={seed}"
    dut = DramAdapter(addr_bits=native_addr_bits, mem_bytes=mem_bytes,
                      native_addr_bits=native_addr_bits, native_bytes=native_bytes,
                      read_beats=read_beats, write_beats=write_beats)
    model = NativeModel(rng, native_bytes, **(model_kw or {}))
    src = [_word(rng, mem_bytes) for _ in range(n)]
    ones = (1 << 8 * mem_bytes) - 1
    k, lanes, nb, mb = dut.beats, dut.lanes, dut.native_bytes, dut.mem_bytes
    for a, w in enumerate(src):
        if lanes > 1:
            model.mem[a // lanes] = model.mem.get(a // lanes, 0) | w << (8 * mb * (a % lanes))
        else:
            for i in range(k):
                model.mem[a * k + i] = w >> (8 * nb * i) & ((1 << 8 * nb) - 1)
    mach, nat = dut.machine, dut.native
    result = {}

    async def bench(ctx):
        issued = taken = written = 0
        wq = deque()
        t = quiet = 0
        # the last writes may still wait in the adapter once the requester is done
        while quiet < 40:
            quiet = quiet + 1 if written == n * fan and model.idle() else 0
            wr = wq[0] if wq else None
            ctx.set(mach.rd_req.valid, issued < n and issued - taken < mo)
            ctx.set(mach.rd_req.payload.addr, issued)
            ctx.set(mach.wr.valid, wr is not None)
            if wr is not None:
                ctx.set(mach.wr.payload.addr, wr[0])
                ctx.set(mach.wr.payload.data, wr[1])
                ctx.set(mach.wr.payload.strb, wr[2])
            ctx.set(mach.rd_resp.ready, not wq)
            cmd_ready, wdata_ready, rdata_valid, rdata = model.drive(t)
            ctx.set(nat.cmd.ready, cmd_ready)
            ctx.set(nat.wdata.ready, wdata_ready)
            ctx.set(nat.rdata.valid, rdata_valid)
            ctx.set(nat.rdata.payload.data, rdata)
            if ctx.get(mach.rd_req.valid) and ctx.get(mach.rd_req.ready):
                issued += 1
            if wr is not None and ctx.get(mach.wr.ready):
                wq.popleft()
                written += 1
            elif not wq and ctx.get(mach.rd_resp.valid):
                word = ctx.get(mach.rd_resp.payload.data)
                assert word == src[taken], f"{tag}, cycle {t}: read {word:#x} for word {taken}"
                part = mem_bytes // fan
                wq.extend((n + taken, word ^ ones, ((1 << part) - 1) << (part * i))
                          for i in range(fan))
                taken += 1
            _clock_native(ctx, model, nat, cmd_ready, t, tag)
            await ctx.tick()
            t += 1
            assert t < 400 * n + 2000, (
                f"{tag}: deadlock after {issued} reads accepted, {taken} answered, "
                f"{written} written")
        result["cycles"] = t

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    _check_contents(model, {**dict(enumerate(src)), **{n + i: w ^ ones for i, w in enumerate(src)}},
                    dut, tag)
    return result["cycles"]


@pytest.mark.parametrize("mem_bytes, native_bytes, native_addr_bits, read_beats, mo", [
    (16, 2, 10, 32, 8),     # the ULX3S co-simulation's adapter under a unit of 8 in flight
    (16, 2, 10, 16, 3),     # fewer credits than the requester's reads in flight
    (4, 4, 8, 2, 8),
    (4, 16, 6, 4, 8),       # wider native port
])
def test_reads_waiting_for_credits_never_hold_up_the_writes(
        mem_bytes, native_bytes, native_addr_bits, read_beats, mo, seed):
    # the requester takes a response only once its write is accepted: a read held in
    # the adapter until read-queue room frees (which needs the requester to take a
    # response) must not keep that write out, or neither side ever moves
    run_pipeline(mem_bytes=mem_bytes, native_bytes=native_bytes,
                 native_addr_bits=native_addr_bits, n=24, mo=mo, seed=seed,
                 read_beats=read_beats, model_kw={"latency": (20, 60)})


@pytest.mark.parametrize("kw, text", [
    ({"native_bytes": 3}, "power-of-two multiple"),
    ({"native_bytes": 48}, "power-of-two multiple"),
    ({"native_bytes": 1, "read_beats": 8}, "cannot hold one memory word"),
    ({"write_beats": 1}, "write_beats must be at least 2"),
    ({"native_addr_bits": 0}, "native_addr_bits must be a positive int"),
])
def test_impossible_adapters_are_refused_by_name(kw, text):
    args = dict(addr_bits=16, mem_bytes=16, native_addr_bits=20, native_bytes=2)
    args.update(kw)
    with pytest.raises(ConfigError, match=text):
        DramAdapter(**args)
