"""Attention engine cycles and utilisation for GPT-2-small (12 heads of 64).

From the exact cycle model (`gpt2accel.sim.attention_cycles`, checked
against the RTL by tests/rtl/test_attention_engine.py): one layer's
attention, all heads, behind the reference memory (latency 3, no stalls).

- prefill: T queries at positions 0..T-1 (causal), T keys;
- decode at T: one query at position T-1 against a KV cache of T keys.

Utilisation counts only the multiply-accumulates the result needs
(2 * d_head per visible query-key pair) against rows*cols MACs per cycle.
Score-buffer bytes, for the rows of one block in use (block_rows for
prefill, 1 for decode): scores/probabilities held at once with online
softmax (two S and two P tiles, plus the softmax row store) and, for
comparison, what the same block schedule needs without it (S and P of all
T keys of the block's rows).
"""
import math

from gpt2accel.rtl.attention_config import AttentionConfig
from gpt2accel.rtl.config import EngineConfig

HELP = "attention engine cycles / utilisation / score buffer, GPT-2 small, 8x8..16x16"

ARRAYS = (8, 12, 16)
PREFILL_T = (128, 512, 1024)
DECODE_T = (128, 1024)
N_HEAD, D_HEAD = 12, 64


def add_arguments(parser):
    parser.add_argument("--tile", type=int, default=64,
                        help="softmax key tile (the model's `tile`, default 64)")
    parser.add_argument("--group", type=int, default=4,
                        help="array row blocks per attention block (block_rows / rows, default 4)")


def config(n, tile=64, group=4):
    """The benchmarked configuration of an n x n array: softmax lanes = int32 per
    memory word (one S buffer word per cycle); normaliser lanes = the largest
    power of two up to 4 dividing both that and d_head (8 lanes would gain
    0.1 % on 16x16 for twice the normaliser's LUTs and DSPs); blocks of
    `group` array row blocks (4 is the best of 1, 2, 4, 8 at T >= 512 on all
    three arrays)."""
    e = EngineConfig(rows=n, cols=n)
    spw = e.mem_bytes // 4
    nl = min(4, math.gcd(spw, D_HEAD) & -math.gcd(spw, D_HEAD))
    cfg = AttentionConfig(engine=e, tile=tile, lanes=spw, norm_lanes=nl,
                          max_d_head=D_HEAD, max_seq=1024, block_rows=group * n)
    cfg.check_engine()
    return cfg


def run(args):
    from gpt2accel.sim.attention_cycles import attention_cycles, score_buffer_bytes
    tile = getattr(args, "tile", 64)
    group = getattr(args, "group", 4)
    cases = []
    for n in ARRAYS:
        cfg = config(n, tile, group)
        shapes = [("prefill", T, T, 0) for T in PREFILL_T] + \
                 [("decode", T, 1, T - 1) for T in DECODE_T]
        for mode, T, tq, offset in shapes:
            r = attention_cycles(cfg, N_HEAD, D_HEAD, tq, offset)
            cases.append({
                "array": f"{n}x{n}", "mode": mode, "T": T,
                "cycles": r.cycles, "utilization": round(r.utilization(cfg), 4),
                "score_buffer_bytes": score_buffer_bytes(cfg, T, rows=min(cfg.rows, tq)),
                "score_buffer_bytes_without_online": score_buffer_bytes(
                    cfg, T, online=False, rows=min(cfg.rows, tq)),
                "tile": cfg.tile, "lanes": cfg.lanes, "norm_lanes": cfg.norm_lanes,
                "block_rows": cfg.block_rows,
                "breakdown": {"matmul": r.matmul_cycles, "softmax_busy": r.softmax_cycles,
                              "normalise": r.normalise_cycles},
            })
    return {"n_head": N_HEAD, "d_head": D_HEAD, "cases": cases}


def format_text(result):
    lines = [f"attention, {result['n_head']} heads x d_head {result['d_head']} (one layer)",
             f"{'array':>6} {'mode':>8} {'T':>5} {'cycles':>11} {'util':>6} "
             f"{'matmul%':>8} {'buf B':>7} {'no-online B':>12}"]
    for c in result["cases"]:
        mm = c["breakdown"]["matmul"] / c["cycles"]
        lines.append(f"{c['array']:>6} {c['mode']:>8} {c['T']:>5} {c['cycles']:>11,} "
                     f"{100 * c['utilization']:>5.1f}% {100 * mm:>7.1f}% "
                     f"{c['score_buffer_bytes']:>7,} {c['score_buffer_bytes_without_online']:>12,}")
    return "\n".join(lines)
