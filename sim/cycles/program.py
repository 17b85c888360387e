"""Exact stall-free cycles of whole machine programs (equal to the RTL, reference memory).

One instruction runs at a time (rtl/machine.py): FETCH (the instruction's
transfer), DECODE, ISSUE (the unit accepts the command in that cycle, since
it is idle), then the unit's own cycles U from accept to its ``done`` pulse,
seen by the WAIT state, which returns to FETCH the cycle after. An
instruction therefore costs U + `PER_INSTRUCTION` cycles when the host
streams instructions without gaps. The machine's ``cycles`` status, read at
``done``, is that sum + 2 (the HALT's fetch and decode).

Per unit (reference memory: requests always accepted, responses after
`REF_MEM_LATENCY` cycles, writes always accepted):

- MATMUL: `matmul_cycles`; ATTENTION: `attention_cycles` (the engines' models);
- KVSTORE: per source word one read, the response L cycles later, then one
  write per byte of K and V: (L + 1) per word (a token's K starts at byte
  src_lane of its first word) and 1 per byte, + 1 for the done pulse;
- LAYERNORM / GELU / RESADD / REQUANT / EMBED: `vector_cycles` replays the
  mover's reader (per element: L + 1 cycles per operand word not cached,
  then one cycle in which it goes to the unit) and the unit's output timing (`units_cycles`), and
  ends one cycle after the writer's last write.
"""
from gpt2accel.rtl.config import ceil_div
from gpt2accel.rtl.gelu import GeluUnit, TABLE_SIZE
from gpt2accel.rtl.residual import EmbeddingAdd, RequantAdd
from gpt2accel.rtl.isa import (ACT_BYTES, BETA_BYTES, GAMMA_BYTES, Q_BYTES, RAW_BYTES,
                               RESID_BYTES, VECTOR_OPS, Op, decode)
from gpt2accel.sim.cycles.attention import attention_cycles
from gpt2accel.sim.cycles.matmul import matmul_cycles
from gpt2accel.sim.cycles.matmul import REF_MEM_LATENCY
from gpt2accel.sim.cycles.units import layernorm_row_passes

#: operand slots of the vector mover's reader (rtl/vecmove.py)
NS = 5

__all__ = ["PER_INSTRUCTION", "unit_cycles", "vector_cycles", "kvstore_cycles",
           "program_cycles"]

#: FETCH + DECODE + ISSUE/WAIT hand-over cycles around a unit's own cycles
PER_INSTRUCTION = 3


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


def _ln_out_cycles(row_inputs):
    """Output cycles of LayerNormUnit(lanes=1) rows whose input beats came at the given
    cycles (the unit's 3 D banks, as the machine builds it; input times as they come
    rather than back to back as in `units_cycles.layernorm_schedule`)."""
    rows, out = [], []
    for ins in row_inputs:
        rows.append(layernorm_row_passes(rows, ins[-1], len(ins)))
        out += rows[-1]["out"]
    return out


def vector_cycles(cfg, op, f, latency=REF_MEM_LATENCY, mem=None):
    """Cycles from accept to done of one vector instruction (stall-free). EMBED's
    reads depend on the token ids, read from `mem` (the memory image)."""
    mb = cfg.engine.mem_bytes
    n, rows = f["n"], f["rows"]
    cache = [None] * NS
    t = 1                                          # cycle after the accept
    if op == Op.LAYERNORM:
        t += 1                                     # SETUP beat

    def element(addrs, tok_wait=False):
        """Advance the reader over one element (its word reads, then the cycle it goes
        to the unit); return that cycle. `tok_wait`: EMBED's first element of a row,
        which waits one cycle after its token id's word (slot 0) for the wte row
        address to be registered."""
        nonlocal t
        for s in range(NS):                        # the lowest missing slot first
            a = addrs[s] if s < len(addrs) else None
            if a is not None and cache[s] != a:
                cache[s] = a
                t += latency + 1                   # request, response after `latency`
            if s == 0 and tok_wait:
                t += 1
        emit = t                                   # the FETCH cycle that finds all present
        t += 1
        return emit

    def at(base, stride, r, c, size):
        return base + r * stride + (c * size) // mb

    if op == Op.LAYERNORM:
        for c in range(n):
            element([at(f["gamma_base"], 0, 0, c, GAMMA_BYTES), at(f["beta_base"], 0, 0, c, BETA_BYTES)])
    elif op == Op.GELU:
        for c in range(TABLE_SIZE):
            element([at(f["table_base"], 0, 0, c, ACT_BYTES)])
    ins = []
    for r in range(rows):
        row = []
        for c in range(n):
            if op == Op.GELU:
                addrs = [at(f["src_base"], f["src_stride"], r, c, ACT_BYTES)]
            elif op == Op.LAYERNORM:
                addrs = [at(f["src_base"], f["src_stride"], r, c, RESID_BYTES)]
            elif op in (Op.RESADD, Op.REQUANT):
                addrs = [at(f["src_base"], f["src_stride"], r, c, RESID_BYTES)
                         if op == Op.RESADD else None,
                         at(f["y_base"], f["y_stride"], r, c, RAW_BYTES),
                         at(f["q_base"], 0, 0, c, Q_BYTES)]
            else:
                if mem is None:
                    raise ValueError("EMBED cycles depend on the token ids: pass mem")
                a_id = at(f["src_base"], 0, 0, r, Q_BYTES)
                b = (r * Q_BYTES) % mb
                tok = int.from_bytes(bytes(mem[a_id][b:b + Q_BYTES]), "little")
                p = f["pos0"] + r
                addrs = [a_id, at(f["wte_base"], f["wte_stride"], tok, c, ACT_BYTES),
                         at(f["wte_q_base"], 0, 0, tok, Q_BYTES),
                         at(f["wpe_base"], f["wpe_stride"], p, c, ACT_BYTES),
                         at(f["wpe_q_base"], 0, 0, p, Q_BYTES)]
            row.append(element(addrs, op == Op.EMBED and c == 0))
        ins.append(row)
    if op == Op.LAYERNORM:
        last_write = _ln_out_cycles(ins)[-1]
    else:
        lat = {Op.GELU: GeluUnit.latency, Op.EMBED: EmbeddingAdd.latency}.get(
            op, RequantAdd.latency)
        last_write = ins[-1][-1] + lat
    return last_write + 1


def unit_cycles(cfg, op, f, latency=REF_MEM_LATENCY, mem=None):
    """A unit's cycles from command accept to done for instruction (op, fields)."""
    if op == Op.MATMUL:
        return matmul_cycles(cfg.engine, f["m"], f["k"], f["n"], bool(f["raw_out"]),
                             latency).cycles
    if op == Op.ATTENTION:
        return attention_cycles(cfg, f["n_head"], f["d_head"], f["tq"], f["offset"],
                                latency, q_head_bytes=f["q_head_bytes"]).cycles
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
    total = 0
    for w in words:
        op, f = decode(cfg, w)
        if op == Op.HALT:
            return total + 2, per
        u = unit_cycles(cfg, op, f, latency, mem)
        per.append((op, u))
        total += u + PER_INSTRUCTION
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
            share[op.name] += u + PER_INSTRUCTION
        parts = ", ".join(f"{k} {100 * v / total:.1f} %" for k, v in share.most_common())
        print(f"{args.rows}x{args.cols} T={t} at {pos}: {total:,} cycles ({parts})")


if __name__ == "__main__":
    main()
