"""Run matmul commands on the RTL engine in Amaranth's simulator.

`MemoryModel` is the reference memory behind the engine's port: word
memory with in-order responses, a fixed base latency and, optionally,
random extra latency and random stalls on every stream. `simulate` runs a
list of matmuls back to back in ONE simulation (elaboration is the expensive
part) and returns each result and its cycle count (command accept -> done).
"""
import random
import time
from collections import deque
from dataclasses import dataclass

import numpy as np
from amaranth.sim import Simulator

from gpt2accel.rtl.config import EngineConfig
from gpt2accel.rtl.matmul import MatmulEngine
from gpt2accel.sim.host.matmul_layout import MatmulLayout

__all__ = ["REF_MEM_LATENCY", "MemoryModel", "MatmulCase", "simulate", "transfer"]


async def transfer(ctx, port, payload):
    """Present `payload` on stream `port` until the sink takes it; leaves ``valid``
    high. Returns the clock cycles that took (>= 1: the last is the transfer)."""
    ctx.set(port.payload, payload)
    ctx.set(port.valid, 1)
    cycles = 0
    while True:
        _, _, ready = await ctx.tick().sample(port.ready)
        cycles += 1
        if ready:
            return cycles

#: Cycles from an accepted read request to its response being valid, for the
#: reference (stall-free) memory the cycle model assumes.
from gpt2accel.sim.cycles.matmul import REF_MEM_LATENCY  # noqa: E402  (one definition)


@dataclass
class MatmulCase:
    a: np.ndarray
    w: np.ndarray
    bias: np.ndarray
    mult: np.ndarray
    shift: np.ndarray
    a_signed: bool = True
    raw: bool = False


class MemoryModel:
    """Word memory served over a memory port (`rtl.memport.MemPort`: rd_req / rd_resp / wr).

    With ``stall`` > 0 each cycle independently drops rd_req.ready and
    wr.ready, delays presenting a due response, and adds up to `jitter`
    cycles of latency, with that probability. A response once presented is
    held until taken, as the stream contract requires.
    """

    def __init__(self, cfg, words, *, latency=REF_MEM_LATENCY, stall=0.0, jitter=0, rng=None):
        self.cfg = cfg
        self.mem = np.zeros((words, cfg.mem_bytes), np.uint8)
        self.latency, self.stall, self.jitter = latency, stall, jitter
        self.rng = rng or random.Random(0)
        self.reads = self.writes = 0
        #: bytes written so far, to catch stray or missing writes
        self.written = np.zeros(self.mem.shape, bool)

    def _word(self, addr):
        return int.from_bytes(self.mem[addr].tobytes(), "little")

    def _write(self, addr, value, strb):
        b = np.frombuffer(value.to_bytes(self.cfg.mem_bytes, "little"), np.uint8)
        mask = np.array([(strb >> i) & 1 for i in range(self.cfg.mem_bytes)], bool)
        self.mem[addr][mask] = b[mask]
        self.written[addr] |= mask

    def _chance(self):
        return self.stall > 0 and self.rng.random() < self.stall

    async def serve(self, ctx, port):
        pending = deque()      # (due cycle, data), in request order
        presenting = False
        cycle = 0
        last_due = 0
        while True:
            req_ready = not self._chance()
            wr_ready = not self._chance()
            if not presenting and pending and pending[0][0] <= cycle and not self._chance():
                presenting = True
                ctx.set(port.rd_resp.payload.data, pending[0][1])
            ctx.set(port.rd_resp.valid, presenting)
            ctx.set(port.rd_req.ready, req_ready)
            ctx.set(port.wr.ready, wr_ready)
            (_, _, rq_v, rq_a, rs_r, w_v, w_a, w_d, w_s) = await ctx.tick().sample(
                port.rd_req.valid, port.rd_req.payload.addr, port.rd_resp.ready,
                port.wr.valid, port.wr.payload.addr, port.wr.payload.data, port.wr.payload.strb)
            if presenting and rs_r:
                pending.popleft()
                presenting = False
            if rq_v and req_ready:
                due = cycle + self.latency
                if self.jitter and self._chance():
                    due += self.rng.randint(1, self.jitter)
                last_due = max(last_due, due)
                pending.append((last_due, self._word(rq_a)))
                self.reads += 1
            if w_v and wr_ready:
                self._write(w_a, w_d, w_s)
                self.writes += 1
            cycle += 1


def _layouts(cfg, cases, rng, scatter):
    """Place every case in its own memory region (bases/strides randomised if scatter)."""
    lays, base = [], 0
    for case in cases:
        kw = {}
        if scatter:
            base += rng.randint(0, 3)
            kw = dict(a_pad=rng.randint(0, 2), out_pad=rng.randint(0, 2))
        lay = MatmulLayout(cfg, case.a, case.w, case.bias, case.mult, case.shift,
                           a_signed=case.a_signed, raw=case.raw, base=base, **kw)
        lays.append(lay)
        base = lay.end
    return lays, base


def simulate(cfg: EngineConfig, cases, *, seed=0, stall=0.0, jitter=0,
             latency=REF_MEM_LATENCY, timeout=None):
    """Run `cases` on one engine instance; return (results, cycles, stats).

    results[i] is the [M, N] output read back from memory, cycles[i] the count
    from the command's accept cycle to its done pulse. stats has the total
    simulated cycles and wall time.
    """
    rng = random.Random(seed)
    dut = MatmulEngine(cfg)
    lays, words = _layouts(cfg, cases, rng, scatter=stall > 0)
    if words >= 1 << cfg.addr_bits:
        raise ValueError(f"cases need {words} words, more than addr_bits={cfg.addr_bits} reach")
    memory = MemoryModel(cfg, words + 1, latency=latency, stall=stall, jitter=jitter,
                         rng=random.Random(rng.random()))
    for lay in lays:
        lay.place(memory.mem)
    results, cycles = [None] * len(cases), [None] * len(cases)
    if timeout is None:
        timeout = 1000 + sum(20 * (l.m + 8) * (l.n + 8) * (l.k + 8) // (cfg.rows * cfg.cols)
                             + 50 * (l.m + l.n + l.k) for l in lays) * (4 if stall else 1)
    stats = {"cycles": 0}
    cmd_rng = random.Random(rng.random())

    async def commands(ctx):
        cycle = 0
        for i, lay in enumerate(lays):
            if stall:
                for _ in range(cmd_rng.randint(0, 3)):
                    await ctx.tick()
                    cycle += 1
            cycle += await transfer(ctx, dut.cmd, lay.command)
            accept = cycle - 1
            ctx.set(dut.cmd.valid, 0)
            while True:
                _, _, done = await ctx.tick().sample(dut.done)
                cycle += 1
                if done:
                    break
                if cycle > timeout:
                    raise TimeoutError(f"case {i} ({lay.m}x{lay.k}x{lay.n}) did not finish "
                                       f"within {timeout} cycles (seed {seed})")
            cycles[i] = cycle - 1 - accept
            results[i] = lay.result(cfg, memory.mem)
        stats["cycles"] = cycle

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    async def serve(ctx):
        await memory.serve(ctx, dut.mem)

    sim.add_testbench(serve, background=True)
    sim.add_testbench(commands)
    t0 = time.perf_counter()
    sim.run()
    stats["wall_s"] = time.perf_counter() - t0
    stats["reads"], stats["writes"] = memory.reads, memory.writes
    expected = np.zeros(memory.mem.shape, bool)
    for lay in lays:
        expected |= lay.output_mask(cfg, len(memory.mem))
    # bytes written outside the results, and result bytes never written
    stats["stray_bytes"] = int((memory.written & ~expected).sum())
    stats["missing_bytes"] = int((expected & ~memory.written).sum())
    return results, cycles, stats
