"""Attention engine cycles and utilisation for GPT-2-small (12 heads of 64).

From the exact cycle model (`gpt2accel.sim.cycles.attention`, checked
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

Accuracy (NumPy only): the hardware result, which is `intmodel.attention_head`
bit for bit (tests/rtl/test_attention_*.py), against float64 attention
softmax(QKᵀ/√d)V on the dequantised int8 Q, K, V (causal, prefill), for
random Student-t Q, K, V whose float logits have a standard deviation of 1
(diffuse) or 3 (peaky, as `model.synthetic`), per-tensor max-abs int8
scales, the output scale from the float output's max. Errors are in output
LSB (the int8 output scale) and relative to the float output's range; the
int8 rounding of the float output alone is up to 0.5 LSB.
"""
import math

from gpt2accel.rtl.attention_config import AttentionConfig
from gpt2accel.rtl.config import EngineConfig

HELP = "attention engine cycles / utilisation / score buffer, GPT-2 small, 8x8..16x16"

ARRAYS = (8, 12, 16)
PREFILL_T = (128, 512, 1024)
#: block sizes (array row blocks per attention block) of the prefill sweep
SWEEP_GROUPS = (4, 8, 16)
ACCURACY_T = (128, 1024)
ACCURACY_LOGIT_STD = (1.0, 3.0)
ACCURACY_HEADS = 4
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


def _student(rng, shape, std, df=5):
    return rng.standard_t(df, size=shape) * std / math.sqrt(df / (df - 2))


def head_accuracy(rng, T, d=D_HEAD, logit_std=3.0, tile=64, frac_bits=6):
    """One random causal head: (hardware int8 [T, d], float64 reference [T, d], s_out)."""
    import numpy as np
    from gpt2accel.model import intmodel as im
    from gpt2accel.model import quant
    # q.k/sqrt(d) has std sq*sk when q, k have per-element std sq, sk
    sq = sk = math.sqrt(logit_std)
    qf, kf = _student(rng, (T, d), sq), _student(rng, (T, d), sk)
    vf = _student(rng, (T, d), 1.0)

    def q8(x):
        s = float(np.abs(x).max()) / 127
        return np.clip(np.rint(x / s), -127, 127).astype(np.int64), s

    (q, s_q), (k, s_k), (v, s_v) = q8(qf), q8(kf), q8(vf)
    # float64 on the dequantised int8 operands
    logits = (q * s_q) @ (k * s_k).T / math.sqrt(d)
    logits[np.triu_indices(T, 1)] = -np.inf
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    ref = (p / p.sum(axis=1, keepdims=True)) @ (v * s_v)
    s_out = float(np.abs(ref).max()) / 127
    # the hardware path: the integer scales as `quant` derives them
    sm, ss = quant.mult_shift(s_q * s_k / math.sqrt(d) * math.log2(math.e) * 2.0 ** frac_bits)
    om, osh = quant.mult_shift(s_v / s_out / 2.0 ** im.ATTN_AVG_FRAC)
    hw = im.attention_head(q, k, v, int(sm), int(ss), int(om), int(osh), tile,
                           quant.exp2_table(frac_bits), frac_bits)
    return hw, ref, s_out


def accuracy(seed=0, tile=64):
    import numpy as np
    rng = np.random.default_rng(seed)
    rows = []
    for T in ACCURACY_T:
        for std in ACCURACY_LOGIT_STD:
            errs, refs = [], []
            for _ in range(ACCURACY_HEADS):
                hw, ref, s_out = head_accuracy(rng, T, D_HEAD, std, tile)
                errs.append(np.abs(hw - ref / s_out).ravel())
                refs.append(ref / s_out)
            err = np.concatenate(errs)
            span = max(float(r.max() - r.min()) for r in refs)
            rows.append({"T": T, "d_head": D_HEAD, "logit_std": std, "heads": ACCURACY_HEADS,
                         "max_abs_lsb": round(float(err.max()), 3),
                         "mean_abs_lsb": round(float(err.mean()), 4),
                         "max_abs_rel_range": round(float(err.max()) / span, 5),
                         "mean_abs_rel_range": round(float(err.mean()) / span, 6),
                         "within_half_lsb": round(float(np.mean(err < 0.5)), 4)})
    return rows


def run(args):
    from gpt2accel.sim.cycles.attention import attention_cycles, score_buffer_bytes
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
                "cycles": r.cycles, "utilisation": round(r.utilisation(cfg), 4),
                "score_buffer_bytes": score_buffer_bytes(cfg, T, rows=min(cfg.rows, tq)),
                "score_buffer_bytes_without_online": score_buffer_bytes(
                    cfg, T, online=False, rows=min(cfg.rows, tq)),
                "tile": cfg.tile, "lanes": cfg.lanes, "norm_lanes": cfg.norm_lanes,
                "block_rows": cfg.block_rows,
                "breakdown": {"matmul": r.matmul_cycles, "softmax_busy": r.softmax_cycles,
                              "normalise": r.normalise_cycles},
            })
    sweep = []
    for n in ARRAYS:
        for g in SWEEP_GROUPS:
            cfg = config(n, tile, g)
            row = {"array": f"{n}x{n}", "group": g, "block_rows": cfg.block_rows,
                   "score_buffer_bytes": score_buffer_bytes(cfg, max(PREFILL_T))}
            for T in (min(PREFILL_T), max(PREFILL_T)):
                row[f"prefill_{T}"] = round(
                    attention_cycles(cfg, N_HEAD, D_HEAD, T, 0).utilisation(cfg), 4)
            sweep.append(row)
    return {"n_head": N_HEAD, "d_head": D_HEAD, "cases": cases, "group_sweep": sweep,
            "accuracy": accuracy(tile=tile)}


def format_text(result):
    lines = [f"attention, {result['n_head']} heads x d_head {result['d_head']} (one layer)",
             f"{'array':>6} {'mode':>8} {'T':>5} {'cycles':>11} {'util':>6} "
             f"{'matmul%':>8} {'buf B':>7} {'no-online B':>12}"]
    for c in result["cases"]:
        mm = c["breakdown"]["matmul"] / c["cycles"]
        lines.append(f"{c['array']:>6} {c['mode']:>8} {c['T']:>5} {c['cycles']:>11,} "
                     f"{100 * c['utilisation']:>5.1f}% {100 * mm:>7.1f}% "
                     f"{c['score_buffer_bytes']:>7,} {c['score_buffer_bytes_without_online']:>12,}")
    sweep = result.get("group_sweep", [])
    if sweep:
        ts = sorted(int(k.split("_")[1]) for k in sweep[0] if k.startswith("prefill_"))
        lines += ["", "prefill utilisation by block size (block_rows = group x rows)",
                  f"{'array':>6} {'group':>5} {'rows':>5} " + " ".join(f"{'T=' + str(t):>7}"
                                                                 for t in ts)
                  + f" {'buf B':>8}"]
        for r in sweep:
            lines.append(f"{r['array']:>6} {r['group']:>5} {r['block_rows']:>5} "
                         + " ".join(f"{100 * r[f'prefill_{t}']:>6.1f}%" for t in ts)
                         + f" {r['score_buffer_bytes']:>8,}")
    lines += ["", "accuracy vs float64 softmax(QK^T/sqrt(d))V on the dequantised int8 "
              "Q, K, V (causal prefill; LSB = output scale)",
              f"{'T':>5} {'logit sd':>8} {'max LSB':>8} {'mean LSB':>9} {'max/range':>10} "
              f"{'mean/range':>11} {'<0.5 LSB':>9}"]
    for a in result.get("accuracy", []):
        lines.append(f"{a['T']:>5} {a['logit_std']:>8} {a['max_abs_lsb']:>8.3f} "
                     f"{a['mean_abs_lsb']:>9.4f} {100 * a['max_abs_rel_range']:>9.3f}% "
                     f"{100 * a['mean_abs_rel_range']:>10.4f}% "
                     f"{100 * a['within_half_lsb']:>8.1f}%")
    return "\n".join(lines)
