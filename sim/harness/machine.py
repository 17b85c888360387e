"""Run programs on the `Machine` in Amaranth's simulator, behind `matmul_sim.MemoryModel`.

`run_programs(cfg, programs, image)` streams each program of `programs`
(lists of instruction words, each ending in HALT) into ``instr`` (with random
idle cycles when `stall`), serves the memory port (random stalls and latency
jitter when `stall`), and returns the final memory and per-program status:
error code, ``cycles`` and ``icount`` as the machine reports them, and the
cycles from the first instruction's transfer to ``done`` as seen outside.
"""
import random
import time

import numpy as np
from amaranth.sim import Simulator

from gpt2accel.rtl.machine import Machine
from gpt2accel.sim.harness.matmul import REF_MEM_LATENCY, MemoryModel

__all__ = ["run_programs"]


def run_programs(cfg, programs, image, *, seed=0, stall=0.0, jitter=0, latency=None,
                 timeout=2_000_000, vcd=None, status=None):
    """`cfg`: the `MachineConfig` (an AttentionConfig is the machine with the defaults).
    `image`: uint8 [words, mem_bytes] initial memory. Returns (memory, [status dict]).
    `vcd`: path of a waveform of the whole run (Amaranth `write_vcd`); `status`: a dict kept at the running program's
    ``icount`` and ``cycles`` every cycle, for progress shown from another thread."""
    status = {} if status is None else status
    rng = random.Random(seed)
    dut = Machine(cfg)
    memory = MemoryModel(cfg.engine, len(image),
                         latency=REF_MEM_LATENCY if latency is None else latency,
                         stall=stall, jitter=jitter, rng=random.Random(rng.random()))
    memory.mem[:] = image
    feed_rng = random.Random(rng.random())
    results = []

    async def host(ctx):
        cycle = 0
        for prog in programs:
            start = None
            for w in prog:
                while stall and feed_rng.random() < stall:
                    ctx.set(dut.instr.valid, 0)
                    await ctx.tick()
                    cycle += 1
                ctx.set(dut.instr.payload.word, w)
                ctx.set(dut.instr.valid, 1)
                while True:
                    _, _, ready, done, cyc, icount = await ctx.tick().sample(
                        dut.instr.ready, dut.done, dut.cycles, dut.icount)
                    status.update(icount=int(icount), cycles=int(cyc))
                    cycle += 1
                    if done:
                        raise AssertionError("done before the program's HALT was fetched")
                    if ready:
                        break
                if start is None:
                    start = cycle - 1
            ctx.set(dut.instr.valid, 0)
            while True:
                _, _, done, err, cyc, icount = await ctx.tick().sample(
                    dut.done, dut.error, dut.cycles, dut.icount)
                status.update(icount=int(icount), cycles=int(cyc))
                cycle += 1
                if done:
                    break
                if cycle - start > timeout:
                    raise TimeoutError(f"program did not finish in {timeout} cycles "
                                       f"(GPT2ACCEL_SEED={seed})")
            results.append({"error": int(err), "cycles": int(cyc), "icount": int(icount),
                            "outside_cycles": cycle - 1 - start})

    async def serve(ctx):
        await memory.serve(ctx, dut.mem)

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(serve, background=True)
    sim.add_testbench(host)
    t0 = time.perf_counter()
    if vcd:
        with sim.write_vcd(vcd):
            sim.run()
    else:
        sim.run()
    wall = time.perf_counter() - t0
    for r in results:
        r["wall_s"] = wall
    return memory.mem, results
