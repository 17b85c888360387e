"""Run vector instructions on a `VectorMover` alone in Amaranth's simulator, behind `MemoryModel`.

`run_vector(cfg, commands, image)` offers each (op, fields) command to the
mover's ``cmd`` (with random idle cycles when `stall`), serves its memory
port (random stalls and latency jitter when `stall`) and returns the final
memory and, per command, the cycles from its accept to its ``done`` pulse.
"""
import random

from amaranth.sim import Simulator

from gpt2accel.rtl.isa import OPCODE_BITS, Op, encode
from gpt2accel.rtl.vecmove import VectorMover
from gpt2accel.sim.harness.matmul import REF_MEM_LATENCY, MemoryModel

__all__ = ["run_vector"]


def run_vector(cfg, commands, image, *, resid_bits=16, seed=0, stall=0.0, jitter=0,
               latency=REF_MEM_LATENCY, timeout=200_000, trace=None, with_written=False):
    """`cfg`: an AttentionConfig; `commands`: [(Op, fields)]; `image`: uint8 [words,
    mem_bytes]. Returns (memory, [cycles from accept to done of each command]).
    `trace`: a list that gets, per cycle, (cycle, read address or None, write
    address or None)."""
    rng = random.Random(seed)
    dut = VectorMover(cfg, resid_bits)
    memory = MemoryModel(cfg.engine, len(image), latency=latency, stall=stall, jitter=jitter,
                         rng=random.Random(rng.random()))
    memory.mem[:] = image
    feed = random.Random(rng.random())
    cycles = []

    async def host(ctx):
        cycle = 0
        for op, fields in commands:
            body = encode(cfg, op, **fields) >> OPCODE_BITS
            while stall and feed.random() < stall:
                await ctx.tick()
                cycle += 1
            ctx.set(dut.cmd.payload.op, int(op))
            ctx.set(dut.cmd.payload.body, body)
            ctx.set(dut.cmd.valid, 1)
            while True:
                _, _, ready = await ctx.tick().sample(dut.cmd.ready)
                cycle += 1
                if ready:
                    break
            ctx.set(dut.cmd.valid, 0)
            start = cycle - 1
            while True:
                _, _, done, rv, rr, ra, wv, wr, wa = await ctx.tick().sample(
                    dut.done, dut.mem.rd_req.valid, dut.mem.rd_req.ready,
                    dut.mem.rd_req.payload.addr, dut.mem.wr.valid, dut.mem.wr.ready,
                    dut.mem.wr.payload.addr)
                if trace is not None:
                    trace.append((cycle, int(ra) if rv and rr else None,
                                  int(wa) if wv and wr else None))
                cycle += 1
                if done:
                    break
                if cycle > timeout:
                    raise TimeoutError(f"{Op(op).name}: no done within {timeout} cycles")
            cycles.append(cycle - 1 - start)

    async def serve(ctx):
        await memory.serve(ctx, dut.mem)

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(serve, background=True)
    sim.add_testbench(host)
    sim.run()
    return (memory.mem, cycles, memory.written) if with_written else (memory.mem, cycles)
