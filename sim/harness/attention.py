"""Drive the attention engine's units in Amaranth's simulator.

- `StreamSource` / `StreamSink`: testbench ends of a `lib.stream` port, with
  optional random idle cycles (valid low / ready low) and a log of the cycle
  of every transfer, so tests can check both data and timing;
- `softmax_beats`: the score beats the attention controller sends the
  softmax unit for one head (row blocks x key tiles x rows);
- `accumulate_probs`: item 3 of the attention loop, O = round_shift(O, delta)
  + P @ V per tile row, applied to the unit's output, so that its result can
  be compared with `intmodel.softmax_online` itself;
- `run_softmax` / `run_normaliser`: one simulation of a unit over many rows.
"""
import random
import time

import numpy as np
from amaranth.sim import Simulator

from gpt2accel.model import intops
from gpt2accel.rtl.attention_config import AttentionConfig
from gpt2accel.rtl.softmax import SoftmaxUnit
from gpt2accel.sim.harness.matmul import transfer

__all__ = ["StreamSource", "StreamSink", "softmax_beats", "accumulate_probs",
           "run_softmax", "run_normaliser", "simulate_attention"]


class StreamSource:
    """Sends `beats` (payload dicts) on `port`; idles with probability `stall`."""

    def __init__(self, port, beats, rng, stall=0.0):
        self.port, self.beats, self.rng, self.stall = port, beats, rng, stall
        self.cycles = []

    async def run(self, ctx):
        cycle = 0
        for beat in self.beats:
            while self.stall and self.rng.random() < self.stall:
                ctx.set(self.port.valid, 0)
                await ctx.tick()
                cycle += 1
            cycle += await transfer(ctx, self.port, beat)
            self.cycles.append(cycle - 1)
        ctx.set(self.port.valid, 0)


class StreamSink:
    """Takes `count` beats from `port`; drops ready with probability `stall`.

    `decode(payload)` turns each sampled payload into a Python value.
    """

    def __init__(self, port, count, rng, decode, stall=0.0, timeout=100_000):
        self.port, self.count, self.rng, self.decode = port, count, rng, decode
        self.stall, self.timeout = stall, timeout
        self.beats, self.cycles = [], []

    async def run(self, ctx):
        cycle = 0
        while len(self.beats) < self.count:
            ready = not (self.stall and self.rng.random() < self.stall)
            ctx.set(self.port.ready, ready)
            _, _, valid, payload = await ctx.tick().sample(self.port.valid, self.port.payload)
            if valid and ready:
                self.beats.append(self.decode(payload))
                self.cycles.append(cycle)
            cycle += 1
            if cycle > self.timeout:
                raise TimeoutError(f"only {len(self.beats)} of {self.count} beats "
                                   f"after {cycle} cycles")
        ctx.set(self.port.ready, 0)


def softmax_beats(cfg: AttentionConfig, s, offset, mult, shift, rng=None, pad=None):
    """Score beats for one head, in the order the controller produces them.

    s [Tq, Tk] raw int32 scores; query i is at position offset+i. Per block
    of `rows` queries and per key tile, every row of the block is sent (rows
    past Tq carry `pad` random scores, as the array computes them too),
    bottom row first like the array drains, or in a random order if `rng`.
    Returns (beats, rows) where rows[n] = (query index or None, k0).
    """
    R, T, L = cfg.rows, cfg.tile, cfg.lanes
    tq, tk = s.shape
    beats, rows = [], []
    pad_rng = np.random.default_rng(0) if pad is None else pad
    for b0 in range(0, tq, R):
        for k0 in range(0, tk, T):
            n_keys = min(T, tk - k0)
            order = list(range(R - 1, -1, -1))
            if rng is not None:
                rng.shuffle(order)
            for r in order:
                i = b0 + r
                if i < tq:
                    row = np.zeros(cfg.beats_per_row * L, np.int64)
                    row[:n_keys] = s[i, k0:k0 + n_keys]
                else:
                    row = pad_rng.integers(-(1 << 31), 1 << 31, cfg.beats_per_row * L)
                qpos = min(offset + i, (1 << cfg.pos_bits) - 1)
                for b in range(cfg.beats_per_row):
                    beats.append({"s": [int(x) for x in row[b * L:(b + 1) * L]],
                                  "row": r, "qpos": qpos, "k0": k0, "n_keys": n_keys,
                                  "mult": int(mult), "shift": int(shift)})
                rows.append((i if i < tq else None, k0))
    return beats, rows


def decode_prob(payload):
    return {"p": [int(x) for x in payload.p], "row": int(payload.row),
            "last": int(payload.last), "delta": int(payload.delta),
            "m": int(payload.m), "l_sum": int(payload.l_sum)}


def accumulate_probs(cfg, probs, rows, v, tq):
    """Apply the unit's P tiles and deltas to V: (O [Tq, D], L [Tq], M [Tq]).

    `probs` are decoded output beats, `rows` the row list of `softmax_beats`.
    Also checks that each output row is the input row it should be.
    """
    T, L, BPR = cfg.tile, cfg.lanes, cfg.beats_per_row
    d = v.shape[1]
    o = np.zeros((tq, d), np.int64)
    l_sum = np.zeros(tq, np.int64)
    m_run = np.zeros(tq, np.int64)
    if len(probs) != len(rows) * BPR:
        raise AssertionError(f"{len(probs)} beats for {len(rows)} rows")
    for n, (i, k0) in enumerate(rows):
        beats = probs[n * BPR:(n + 1) * BPR]
        want_row = (i % cfg.rows) if i is not None else None
        for b, beat in enumerate(beats):
            if want_row is not None and beat["row"] != want_row:
                raise AssertionError(f"output row {n} beat {b}: row {beat['row']}, "
                                     f"expected {want_row}")
            if beat["last"] != (b == BPR - 1):
                raise AssertionError(f"output row {n} beat {b}: last={beat['last']}")
            if beat["delta"] != beats[0]["delta"]:
                raise AssertionError(f"output row {n}: delta changes within the row")
        if i is None:
            continue
        p = np.array([x for beat in beats for x in beat["p"]], np.int64)
        n_keys = min(T, v.shape[0] - k0)
        if p[n_keys:].any():
            raise AssertionError(f"output row {n}: nonzero p past the tile's keys")
        delta = beats[0]["delta"]
        o[i] = intops.round_shift(o[i], delta) + intops.matmul_acc(
            p[None, :n_keys], v[k0:k0 + n_keys], a_signed=False)[0]
        l_sum[i] = beats[-1]["l_sum"]
        m_run[i] = beats[-1]["m"]
    return o, l_sum, m_run


def run_softmax(cfg: AttentionConfig, beats, *, seed=0, stall=0.0, table=None):
    """Push `beats` through one SoftmaxUnit; return (decoded outputs, stats)."""
    rng = random.Random(seed)
    dut = SoftmaxUnit(cfg, table)
    src = StreamSource(dut.scores, beats, random.Random(rng.random()), stall)
    sink = StreamSink(dut.probs, len(beats), random.Random(rng.random()), decode_prob,
                      stall, timeout=50 + len(beats) * (8 if stall else 2))
    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(src.run, background=True)
    sim.add_testbench(sink.run)
    sim.run()
    return sink.beats, {"in_cycles": src.cycles, "out_cycles": sink.cycles, "dut": dut}


def run_normaliser(cfg: AttentionConfig, o, l_sum, out_mult, out_shift, *, seed=0, stall=0.0):
    """Normalise rows O [n, D] with sums L [n] on one Normaliser; return (int8 [n, D], stats).

    D must be a multiple of `norm_lanes`. The sums are offered as early as the
    unit takes them; idle cycles on all three streams with probability `stall`.
    """
    from gpt2accel.rtl.normalise import Normaliser
    rng = random.Random(seed)
    n, d = o.shape
    nl = cfg.norm_lanes
    if d % nl:
        raise ValueError(f"D={d} is not a multiple of norm_lanes={nl}")
    dut = Normaliser(cfg)
    sums = [{"l_sum": int(x), "out_mult": int(out_mult), "out_shift": int(out_shift)}
            for x in l_sum]
    beats = [{"o": [int(x) for x in o[i, b:b + nl]], "last": int(b + nl == d)}
             for i in range(n) for b in range(0, d, nl)]
    l_src = StreamSource(dut.l_in, sums, random.Random(rng.random()), stall)
    o_src = StreamSource(dut.o_in, beats, random.Random(rng.random()), stall)

    def decode(payload):
        return [int(x) for x in payload.y], int(payload.last)

    sink = StreamSink(dut.out, len(beats), random.Random(rng.random()), decode, stall,
                      timeout=100 + n * 40 + len(beats) * (8 if stall else 2))
    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(l_src.run, background=True)
    sim.add_testbench(o_src.run, background=True)
    sim.add_testbench(sink.run)
    sim.run()
    lasts = [last for _, last in sink.beats]
    if lasts != [b["last"] for b in beats]:
        raise AssertionError("normaliser output `last` flags do not follow the input rows")
    y = np.array([v for ys, _ in sink.beats for v in ys], np.int64).reshape(n, d)
    return y, {"l_cycles": l_src.cycles, "o_cycles": o_src.cycles, "out_cycles": sink.cycles}


def simulate_attention(cfg: AttentionConfig, layouts, words, *, seed=0, stall=0.0, jitter=0,
                       table=None, latency=None, timeout=None, trace=False):
    """Run attention commands back to back on ONE AttentionEngine.

    `layouts` are `AttentionLayout`s already placed in a memory of `words`
    words (their regions must not overlap). Returns (memory array, cycles per
    command from accept to done, stats). With `trace`, stats["phases"] lists
    (cycle, Phase value) at every phase change of each command.
    """
    from gpt2accel.rtl.attention import AttentionEngine
    from gpt2accel.sim.harness.matmul import REF_MEM_LATENCY, MemoryModel
    rng = random.Random(seed)
    dut = AttentionEngine(cfg, table)
    memory = MemoryModel(cfg.engine, words, latency=REF_MEM_LATENCY if latency is None else latency,
                         stall=stall, jitter=jitter, rng=random.Random(rng.random()))
    for lay in layouts:
        lay.place(memory.mem)
    cycles, phases = [], []
    timeout = timeout or 2_000_000
    cmd_rng = random.Random(rng.random())

    async def commands(ctx):
        cycle = 0
        for lay in layouts:
            if stall:
                for _ in range(cmd_rng.randint(0, 3)):
                    await ctx.tick()
                    cycle += 1
            cycle += await transfer(ctx, dut.cmd, lay.command)
            accept = cycle - 1
            ctx.set(dut.cmd.valid, 0)
            trail, last = [], None
            while True:
                _, _, done, ph = await ctx.tick().sample(dut.done, dut.phase)
                if trace and ph != last:
                    trail.append((cycle - accept, ph))
                    last = ph
                cycle += 1
                if done:
                    break
                if cycle - accept > timeout:
                    raise TimeoutError(f"attention command did not finish within {timeout} "
                                       f"cycles (seed {seed})")
            cycles.append(cycle - 1 - accept)
            phases.append(trail)

    async def serve(ctx):
        await memory.serve(ctx, dut.mem)

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(serve, background=True)
    sim.add_testbench(commands)
    t0 = time.perf_counter()
    sim.run()
    return memory.mem, cycles, {"wall_s": time.perf_counter() - t0, "phases": phases,
                                "reads": memory.reads, "writes": memory.writes}
