"""Exact stall-free cycles of whole machine programs (equal to the RTL, reference memory).

One instruction executes at a time (rtl/machine.py) and the next one is
fetched and decoded while it runs. An instruction accepted by its unit in
cycle a whose unit takes U cycles from accept to its ``done`` pulse (cycle
a + U) frees the word register at a; the next word is transferred at a + 1,
decoded at a + 2 and a + 3, and its command is presented (and accepted: the
units are idle from their ``done`` on) at a + 4 if the unit was done by
a + 3, else in the ``done`` cycle a + U itself. An instruction therefore costs
`instruction_cycles` (U) = max(U + `PER_INSTRUCTION`, `MIN_INSTRUCTION`)
cycles when the host streams instructions without gaps. The first
instruction is accepted `FETCH_TO_ISSUE` = 3 cycles after its transfer, and
the HALT ends the program the cycle after the last unit's ``done``: the
machine's ``cycles`` status, read at ``done``, is `FETCH_TO_ISSUE` + the sum
of `instruction_cycles` + `HALT_CYCLES` (the last instruction's hand-over
cycle, when it takes at least `MIN_INSTRUCTION`).

Per unit (reference memory: requests always accepted, responses after
`REF_MEM_LATENCY` cycles, writes always accepted):

- MATMUL: `matmul_cycles`; ATTENTION: `attention_cycles` (the engines' models);
- KVSTORE: `kvstore_cycles` replays its issuer, assembler and writer (groups of
  keys sharing a Kᵀ column tile, one head's K or V at a time, double-buffered);
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
from gpt2accel.rtl.isa import VECTOR_OPS, Op, decode, wte_tile_cols
from gpt2accel.rtl.kvstore import (BUFFER_PARTS, DRAIN_CYCLES, FIRST_REQUEST, REQUEST_CYCLES,
                                   SEGMENT_SETUP)
from gpt2accel.rtl.vecmove import (EMBED_SELECT_CYCLES, REQ_CYCLES, RESP_CYCLES, TOK_CYCLES,
                                   WRITE_CYCLES, start_cycles, vector_lanes)
from gpt2accel.sim.cycles.attention import attention_cycles
from gpt2accel.sim.cycles.matmul import matmul_cycles
from gpt2accel.sim.cycles.matmul import REF_MEM_LATENCY
from gpt2accel.sim.cycles.units import layernorm_row_passes

__all__ = ["PER_INSTRUCTION", "MIN_INSTRUCTION", "HALT_CYCLES", "instruction_cycles", "unit_cycles",
           "vector_cycles", "vector_groups", "kvstore_cycles", "kvstore_segments", "program_cycles"]

#: cycles between a unit's ``done`` and the next command's accept: it is presented in
#: the ``done`` cycle itself
PER_INSTRUCTION = 0
#: the shortest an instruction can take: the next word's fetch after this one's accept
#: and its two decode stages
MIN_INSTRUCTION = 4


#: the HALT retires in the last unit's ``done`` cycle: the program is done the cycle after
HALT_CYCLES = 1


def instruction_cycles(u):
    """Cycles an instruction whose unit takes `u` cycles (accept to done) adds to a
    program, between its accept and the next instruction's."""
    return max(u + PER_INSTRUCTION, MIN_INSTRUCTION)


def kvstore_segments(cfg, f):
    """KVSTORE's walk (rtl/kvstore.py): per segment (a head's K or V of one group of
    keys sharing a Kᵀ column tile) in order, (reads per token, whether each token
    costs a flush cycle, tokens in the group, cache words written)."""
    e = cfg.engine
    MB, C, KPW, T = e.mem_bytes, e.cols, e.k_per_word, cfg.tile
    H, D = f["n_head"], f["d_head"]
    d1q, d1r = divmod(max(D - 1, 0), MB) if D else (0, MB - 1)
    n_dt = max(1, ceil_div(D, C))
    t, kin = 0, f["pos0"] % T
    while t < f["n_tok"]:
        lo = kin
        n = 1
        while not (kin % C == C - 1 or kin == T - 1 or t + n == f["n_tok"]):
            kin += 1
            n += 1
        hi = kin
        bh = 0
        for s in range(2 * H):
            v = s >= H
            sh = 0 if v else bh
            off = (f["src_lane"] + s * D) % MB
            wrap = off + d1r >= MB
            nw = d1q + wrap + 1
            flush = wrap < (sh + d1r >= MB) + (off > sh)
            if v:
                words = n_dt * (hi // KPW - lo // KPW + 1)
            else:
                words = max(1, ceil_div(sh % KPW + D, KPW))
                bh = (bh + f["k_skew"]) % MB
            yield nw, flush, n, words
        t += n
        kin = 0 if kin == T - 1 else kin + 1


def kvstore_cycles(cfg, f, latency=REF_MEM_LATENCY):
    """Accept to done of one KVSTORE (stall-free): a replay of its issuer (a request
    per cycle from its register, at most max_outstanding unanswered), its
    assembler (a response per cycle, a flush cycle after a token's segment
    where the realigning shift needs it, a segment into a buffer part only once
    the writer freed it, `BUFFER_PARTS` of them in turn) and its writer (a cycle
    to set up a segment once its part is full, then a word per cycle, the write
    three stages later)."""
    MO = cfg.engine.max_outstanding
    s, p = [], []                       # fire and take cycle of each read
    fire, take = FIRST_REQUEST, None    # next free issue cycle; previous take's cycle
    free = []                           # per segment: cycle its part is free again
    wait = 3                            # the writer's first WAIT (after its base products)
    last_s0 = None
    for si, (nw, flush, n, words) in enumerate(kvstore_segments(cfg, f)):
        gate = free[si - BUFFER_PARTS] if si >= BUFFER_PARTS else 0
        for _ in range(n):
            for k in range(nw):
                i = len(s)
                x = fire if i < MO else max(fire, p[i - MO] + 1)
                s.append(x)
                fire = x + 1
                y = max(x + REQUEST_CYCLES + latency, gate, (take + 1) if take is not None else 0)
                p.append(y)
                take = y
            if flush:
                take += 1                # the flush cycle: no response taken
        # the last emission's shift stages: written two cycles later, its full flag
        # seen the one after
        x = max(wait, take + 3)
        last_s0 = x + SEGMENT_SETUP + words - 1
        free.append(last_s0 + 1)
        wait = last_s0 + 1
    return last_s0 + DRAIN_CYCLES


def vector_groups(cfg, op, f):
    """The vector mover's walk (rtl/vecmove.py): per group, (row group?, row r,
    group g in its row, the word slots it reads in request order)."""
    mb = cfg.engine.mem_bytes
    L = vector_lanes(mb)
    G = ceil_div(f["n"], L)
    tc = wte_tile_cols(mb, cfg.engine.cols)
    if op == Op.GELU:
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
            else:
                # the token table's words: one (or a quarter of one) per group, two
                # when its tiles have 8 columns (rtl/isa.py, `wte_tile_cols`)
                wte = ([1] if g % 4 * tc % 4 == 0 else []) + ([2] if tc == 8 else [])
                if g == 0:
                    ws = ([0] if r % L == 0 else []) + wte + [3, 4, 5]
                else:
                    ws = wte + ([4] if g % 4 == 0 else [])
            yield True, r, g, ws
        if op == Op.LAYERNORM and r == 0:
            yield from _layernorm_params(G)


def _layernorm_params(G):
    """LayerNorm's parameter groups (gamma half a word, beta two words), after its first row."""
    for g in range(G):
        yield False, 0, g, ([0] if g % 2 == 0 else []) + [1, 2]


def vector_cycles(cfg, op, f, latency=REF_MEM_LATENCY, mem=None):
    """Cycles from accept to done of one vector instruction (stall-free): a replay of
    the mover's issuer (one request per cycle, at most max_outstanding
    unanswered), its assembler (one response per cycle, RESP_CYCLES after the
    port's, into its word slots; a group goes to the output register with its
    last word, or in a cycle of its own when it reads none, once the previous
    group left it for the unit or for the skid register, which is free from
    the cycle after the unit took the group before), the unit's input
    (LayerNorm: its first row, then the parameters, which only pass C waits
    for; an X half per row) and its output
    timing. The words read do not depend on the data (`mem` is not needed)."""
    e = cfg.engine
    L, MO = vector_lanes(e.mem_bytes), e.max_outstanding
    G = ceil_div(f["n"], L)
    s, p = [], []                      # issue and take cycle of each word read
    start = start_cycles(e.mem_bytes, op)
    gt = at = start                    # the issuer's and the assembler's next cycle
    c = start - 1                      # the previous group's completion
    x = -1                             # ... and its transfer to the unit
    lv = -1                            # ... and its leaving the output register
    loaded = None                      # LayerNorm: first cycle pass C may read gamma/beta
    ln_rows, row_x, last_x = [], [], None
    ln_waiting = []                    # LayerNorm: last input beats of rows before `loaded`
    for is_row, r, g, ws in vector_groups(cfg, op, f):
        c_prev, x_prev, lv_prev, id_pop, tok_done = c, x, lv, None, False
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
            rv = t + REQ_CYCLES + latency + RESP_CYCLES    # the response's first cycle
            if k < len(ws) - 1:
                pt = max(at, rv)
                if w == 0:
                    id_pop = pt
            else:
                pt = c = max(at, rv, lv_prev)
            p.append(pt)
            at = pt + 1
        if not ws:
            gt += 1
            c = max(at, lv_prev)
            at = c + 1
        x = lv = max(c + 1, x_prev + 1)
        if op == Op.LAYERNORM and is_row:
            if g == 0 and r >= 2:
                x = max(x, ln_rows[r - 2]["b_first"] + 1)
            row_x.append(x)
            if g == G - 1:
                ln_waiting.append(x)
                row_x = []
        elif op == Op.LAYERNORM and g == G - 1:
            loaded = x + 1
        if loaded is not None:
            for a_last in ln_waiting:
                ln_rows.append(layernorm_row_passes(ln_rows, a_last, G, loaded=loaded))
            ln_waiting = []
        last_x = x
    if op == Op.LAYERNORM:
        last_write = ln_rows[-1]["out"][-1]
    else:
        lat = {Op.GELU: GeluUnit.latency,
               Op.EMBED: EMBED_SELECT_CYCLES + EmbeddingAdd.latency}.get(
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
                                k_tile_stride=f["k_tile_stride"], k_rows=f["k_rows"],
                                head_group=f["head_group"]).cycles
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
            if per:
                # the HALT is decoded by the last accept + 3, and the program ends
                # the cycle after that unit's done
                u = per[-1][1]
                total += max(u + HALT_CYCLES, MIN_INSTRUCTION) - instruction_cycles(u)
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
