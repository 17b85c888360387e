"""Exact stall-free cycles of whole machine programs (equal to the RTL, reference memory).

One instruction executes at a time (rtl/machine.py) and the next one is
fetched and decoded while it runs. An instruction accepted by its unit in
cycle a whose unit takes U cycles from accept to its ``done`` pulse (cycle
a + U) frees the word register at a; the next word is transferred at a + 1,
decoded at a + 2 and a + 3, and its command is presented (and accepted: the
units are idle the cycle after their ``done``) at max(a + 4, a + U + 1). An
instruction therefore costs `instruction_cycles` (U) = max(U +
`PER_INSTRUCTION`, `MIN_INSTRUCTION`) cycles when the host streams
instructions without gaps. The first instruction is accepted
`FETCH_TO_ISSUE` = 3 cycles after its transfer, and the HALT ends the
program the cycle after the last unit's ``done``: the machine's ``cycles``
status, read at ``done``, is `FETCH_TO_ISSUE` + the sum of
`instruction_cycles`.

Per unit (reference memory: requests always accepted, responses after
`REF_MEM_LATENCY` cycles, writes always accepted):

- MATMUL: `matmul_cycles`; ATTENTION: `attention_cycles` (the engines' models);
- KVSTORE: per source word one read, the response L cycles later, then one
  write per byte of K and V: (L + 1) per word (a token's K starts at byte
  src_lane of its first word) and 1 per byte, + 1 for the done pulse;
- LAYERNORM / GELU / RESADD / REQUANT / EMBED: `vector_cycles` replays the
  mover's issuer and assembler (groups of mem_bytes/4 columns; one word read
  per cycle, at most max_outstanding unanswered; a group costs max(words it
  reads, 1) cycles when the reads stream), the unit's input and output timing
  (`units`), and ends one cycle after the writer's last write.
"""
from gpt2accel.rtl.config import ceil_div
from gpt2accel.rtl.gelu import GeluUnit, table_words
from gpt2accel.rtl.machine import FETCH_TO_ISSUE
from gpt2accel.rtl.residual import EmbeddingAdd, RequantAdd
from gpt2accel.rtl.isa import VECTOR_OPS, Op, decode
from gpt2accel.rtl.vecmove import (REQ_CYCLES, START_CYCLES, TOK_CYCLES, WRITE_CYCLES,
                                   vector_lanes)
from gpt2accel.sim.cycles.attention import attention_cycles
from gpt2accel.sim.cycles.matmul import matmul_cycles
from gpt2accel.sim.cycles.matmul import REF_MEM_LATENCY
from gpt2accel.sim.cycles.units import layernorm_row_passes

__all__ = ["PER_INSTRUCTION", "MIN_INSTRUCTION", "instruction_cycles", "unit_cycles",
           "vector_cycles", "vector_groups", "kvstore_cycles", "program_cycles"]

#: the hand-over cycle after a unit's ``done``: the next command is presented then
PER_INSTRUCTION = 1
#: the shortest an instruction can take: the next word's fetch after this one's accept
#: and its two decode stages
MIN_INSTRUCTION = 4


def instruction_cycles(u):
    """Cycles an instruction whose unit takes `u` cycles (accept to done) adds to a
    program, between its accept and the next instruction's."""
    return max(u + PER_INSTRUCTION, MIN_INSTRUCTION)


def kvstore_cycles(cfg, f, latency=REF_MEM_LATENCY):
    mb = cfg.engine.mem_bytes
    nbytes = 2 * f["n_head"] * f["d_head"]
    words = ceil_div(f["src_lane"] + nbytes, mb)
    # tile > cols: a K head's (key // cols) * words product takes a cycle after each
    # head change inside a word (at a word's end the next read covers it)
    pauses = 0
    if cfg.tile > cfg.engine.cols:
        ends = ((h + 1) * f["d_head"] - 1 for h in range(f["n_head"] - 1))
        pauses = sum(1 for i in ends if (f["src_lane"] + i) % mb != mb - 1)
    return f["n_tok"] * (words * (latency + 1) + nbytes + pauses) + 1


def vector_groups(cfg, op, f):
    """The vector mover's walk (rtl/vecmove.py): per group, (row group?, row r,
    group g in its row, the word slots it reads in request order)."""
    mb = cfg.engine.mem_bytes
    L = vector_lanes(mb)
    G = ceil_div(f["n"], L)
    if op == Op.LAYERNORM:
        for g in range(G):
            yield False, 0, g, ([0] if g % 2 == 0 else []) + [1, 2]
    elif op == Op.GELU:
        for g in range(table_words(mb)):
            yield False, 0, g, [0]
    for r in range(f["rows"]):
        for g in range(G):
            if op == Op.GELU:
                ws = [0] if g % 4 == 0 else []
            elif op == Op.LAYERNORM:
                ws = [0] if g % 2 == 0 else []
            elif op in (Op.RESADD, Op.REQUANT):
                ws = ([0] if op == Op.RESADD and g % 2 == 0 else []) + [1, 3]
            elif g == 0:
                ws = ([0] if r % L == 0 else []) + [1, 3, 4, 5]
            else:
                ws = [1, 4] if g % 4 == 0 else []
            yield True, r, g, ws


def vector_cycles(cfg, op, f, latency=REF_MEM_LATENCY, mem=None):
    """Cycles from accept to done of one vector instruction (stall-free): a replay of
    the mover's issuer (one request per cycle, at most max_outstanding
    unanswered), its assembler (one response per cycle into its word slots; a
    group goes to the output register with its last word, or in a cycle of its
    own when it reads none, once the previous group left it), the unit's input
    (LayerNorm: parameters before rows, an X half per row) and its output
    timing. The words read do not depend on the data (`mem` is not needed)."""
    e = cfg.engine
    L, MO = vector_lanes(e.mem_bytes), e.max_outstanding
    G = ceil_div(f["n"], L)
    s, p = [], []                      # issue and take cycle of each word read
    gt = at = START_CYCLES             # the issuer's and the assembler's next cycle
    c = START_CYCLES - 1               # the previous group's completion
    x = -1                             # ... and its transfer to the unit
    loaded = None                      # LayerNorm: first cycle rows are taken
    ln_rows, row_x, last_x = [], [], None
    for is_row, r, g, ws in vector_groups(cfg, op, f):
        c_prev, x_prev, id_pop, tok_done = c, x, None, False
        for k, w in enumerate(ws):
            t = gt
            if op == Op.EMBED and g == 0 and w != 0 and not tok_done:
                # the wte words wait for the row's token id in the assembler
                tv = c_prev + 1 if id_pop is None else max(c_prev + 1, id_pop + 1)
                t, tok_done = max(t, tv) + TOK_CYCLES, True
            i = len(s)
            if i >= MO:
                t = max(t, p[i - MO] + 1)
            s.append(t)
            gt = t + 1
            rv = t + REQ_CYCLES + latency          # the response's first cycle
            if k < len(ws) - 1:
                pt = max(at, rv)
                if w == 0:
                    id_pop = pt
            else:
                pt = c = max(at, rv, x_prev)
            p.append(pt)
            at = pt + 1
        if not ws:
            gt += 1
            c = max(at, x_prev)
            at = c + 1
        x = c + 1
        if op == Op.LAYERNORM and is_row:
            if g == 0:
                x = max(x, loaded)
                if r >= 2:
                    x = max(x, ln_rows[r - 2]["b_first"] + 1)
            row_x.append(x)
            if g == G - 1:
                ln_rows.append(layernorm_row_passes(ln_rows, x, G))
                row_x = []
        elif op == Op.LAYERNORM:
            loaded = x + 1
        last_x = x
    if op == Op.LAYERNORM:
        last_write = ln_rows[-1]["out"][-1]
    else:
        lat = {Op.GELU: GeluUnit.latency, Op.EMBED: EmbeddingAdd.latency}.get(
            op, RequantAdd.latency)
        last_write = last_x + lat
    return last_write + WRITE_CYCLES + 1


def unit_cycles(cfg, op, f, latency=REF_MEM_LATENCY, mem=None):
    """A unit's cycles from command accept to done for instruction (op, fields)."""
    if op == Op.MATMUL:
        return matmul_cycles(cfg.engine, f["m"], f["k"], f["n"], bool(f["raw_out"]),
                             latency).cycles
    if op == Op.ATTENTION:
        return attention_cycles(cfg, f["n_head"], f["d_head"], f["tq"], f["offset"],
                                latency, q_head_bytes=f["q_head_bytes"],
                                k_tile_stride=f["k_tile_stride"]).cycles
    if op == Op.KVSTORE:
        return kvstore_cycles(cfg, f, latency)
    if op in VECTOR_OPS:
        return vector_cycles(cfg, op, f, latency, mem)
    raise ValueError(f"{op!r} has no unit")


def program_cycles(cfg, words, latency=REF_MEM_LATENCY, mem=None):
    """(total, [(op, unit cycles)]) of a legal program ending in HALT: total is what
    the machine's ``cycles`` status reads at ``done``. `mem` (the memory image
    when the program starts) is needed for EMBED (its reads follow the token ids)."""
    per = []
    total = FETCH_TO_ISSUE
    for w in words:
        op, f = decode(cfg, w)
        if op == Op.HALT:
            return total, per
        u = unit_cycles(cfg, op, f, latency, mem)
        per.append((op, u))
        total += instruction_cycles(u)
    raise ValueError("program has no HALT")


def main(argv=None):
    """Exact cycles of the shipped tiny model (or --model) on a machine of --rows x --cols:
    prefill of n_positions tokens and one token at the first and last position.

        python -m gpt2accel.sim.cycles.program --rows 8 --cols 8
    """
    import argparse
    from collections import Counter
    from gpt2accel.model import shipped_model_dir

    import numpy as np

    from gpt2accel.model.quant import QuantGPT2
    from gpt2accel.rtl.attention_config import AttentionConfig
    from gpt2accel.rtl.config import EngineConfig
    from gpt2accel.sim.host.compiler import ModelCompiler

    ap = argparse.ArgumentParser(description=main.__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=8)
    ap.add_argument("--cols", type=int, default=8)
    ap.add_argument("--model", default=str(shipped_model_dir() / "model.int8.safetensors"))
    args = ap.parse_args(argv)
    q = QuantGPT2.load(args.model)
    mc = q.config
    d = mc.n_embd // mc.n_head
    cfg = AttentionConfig(engine=EngineConfig(rows=args.rows, cols=args.cols,
                                              max_k=4 * mc.n_embd, max_m=mc.n_positions,
                                              max_n=max(4 * mc.n_embd, mc.vocab_size),
                                              addr_bits=24),
                          tile=q.tile, frac_bits=q.frac_bits, lanes=2, norm_lanes=2,
                          max_d_head=d, max_seq=mc.n_positions)
    comp = ModelCompiler(cfg, q, mc.n_positions, 1 << 22)
    mem = comp.image()
    n = mc.n_positions
    for t, pos in ((n, 0), (1, 0), (1, n - 1)):
        comp.write_ids(mem, np.arange(t) % mc.vocab_size)
        total, per = program_cycles(cfg, comp.program(t, pos), mem=mem)
        share = Counter()
        for op, u in per:
            share[op.name] += instruction_cycles(u)
        parts = ", ".join(f"{k} {100 * v / total:.1f} %" for k, v in share.most_common())
        print(f"{args.rows}x{args.cols} T={t} at {pos}: {total:,} cycles ({parts})")


if __name__ == "__main__":
    main()
