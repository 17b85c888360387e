"""The attention engine's O accumulator (`attention._Accumulator`) alone: write beats
on every cycle, to any word and lanes, the same lanes of one word back to back too,
against O[r] = round_shift(O[r], delta) + PV (or PV on a tile's first PV) beat by beat.
The engine's commands never write one element in consecutive beats; this checks the
unit's own contract (each beat sees every earlier beat), which its pipelined read
keeps by forwarding."""
import random

from amaranth.hdl import Module
from amaranth.sim import Simulator

from gpt2accel.model.intops import round_shift
from gpt2accel.rtl.attention import _Accumulator
from gpt2accel.rtl.attention_config import AttentionConfig
from gpt2accel.rtl.config import EngineConfig


def _wrap(v):
    v &= 0xFFFFFFFF
    return v - (1 << 32) if v >> 31 else v


def test_accumulator_back_to_back_beats(seed):
    rng = random.Random(seed)
    cfg = AttentionConfig(engine=EngineConfig(rows=1, cols=1, mem_bytes=8), tile=2, lanes=1,
                          norm_lanes=1, max_d_head=4, max_seq=16, block_rows=2)
    R, SPW, PVS = cfg.rows, cfg.scores_per_word, cfg.pv_stride
    words = R * PVS
    base = 40                                     # the PV scratch's first word
    dut = _Accumulator(cfg)
    m = Module()
    m.submodules.acc = dut
    deltas = [[rng.choice([0, 1, 2, 5, 31, 32]) for _ in range(R)] for _ in range(2)]
    o = [[0] * SPW for _ in range(words)]
    # beats on most cycles, few words, so the same word and lanes often follow
    # each other; a run of beats shares pv_first and the row info half (as a PV
    # command does), with idle cycles between runs
    beats = []
    for _ in range(60):
        par, first = rng.randrange(2), rng.random() < 0.3
        for _ in range(rng.randint(1, 8)):
            w = rng.randrange(words)
            lanes = rng.randrange(1, 1 << SPW)
            vals = [rng.randint(-(1 << 31), (1 << 31) - 1) for _ in range(SPW)]
            beats.append((w, lanes, vals, par, first))
        beats.append(None)
        beats.append(None)
    for b in beats:
        if b is None:
            continue
        w, lanes, vals, par, first = b
        delta = deltas[par][w // PVS]
        for l in range(SPW):
            if lanes >> l & 1:
                old = 0 if first else int(round_shift(o[w][l], delta))
                o[w][l] = _wrap(old + vals[l])

    async def bench(ctx):
        ctx.set(dut.ctx.scratch_pv, base)
        prev = None                       # the beat whose B1 cycle is this one
        for b in beats + [None, None, None]:
            if b is None:
                ctx.set(dut.wr_en, 0)
            else:
                w, lanes, vals, par, first = b
                ctx.set(dut.wr_en, 1)
                ctx.set(dut.wr.addr, base + w)
                ctx.set(dut.wr.data, sum((v & 0xFFFFFFFF) << (32 * l) for l, v in enumerate(vals)))
                ctx.set(dut.wr.strb, sum(0xF << (4 * l) for l in range(SPW) if lanes >> l & 1))
                ctx.set(dut.pv_par, par)
            # the row info's read port answers the address of the beat before, and
            # pv_first is the beat's during that cycle, as the issuer holds it
            if prev is not None:
                ctx.set(dut.info.data.delta, deltas[prev[3]][prev[0] // PVS])
                ctx.set(dut.pv_first, prev[4])
            await ctx.tick()
            prev = b
        got = []
        for w in range(words):
            ctx.set(dut.o_nm.addr, w)
            ctx.set(dut.o_nm.en, 1)
            await ctx.tick()
            got.append([ctx.get(dut.o_nm.data[l]) for l in range(SPW)])
        assert got == o

    sim = Simulator(m)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
