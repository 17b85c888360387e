"""Integer golden model vs float model: perplexity, top-1 agreement, block error.

Two measurements (docs/performance.md `## Accuracy` records the numbers):

* the shipped tiny character model (`model/tiny/`), quantised with
  calibration on training-split text and scored on held-out Shakespeare
  windows (`gpt2accel.model.shakespeare.heldout_windows`): float and
  integer perplexity, their ratio, and how often both pick the same top-1
  next character. Without `model/tiny/` a random tiny model stands in
  (reported as `"source": "synthetic"`), so the numbers then only show the
  machinery works;
* one GPT-2-small-geometry block (n_embd 768, 12 heads of 64, d_ff 3072)
  with realistic random statistics (`gpt2accel.model.synthetic`: outlier
  residual channels, peaky attention, heavy-tailed weights): cosine and max
  abs error of the integer block output vs float, and the same for the
  block's own contribution (output - input), which the outlier channels
  cannot dominate.

`--sweep` adds the design measurements behind docs/numerics.md §9: residual
widths, calibration percentiles, exp2 fractional bits and softmax tile sizes.
"""
import json
from pathlib import Path

import numpy as np

from gpt2accel.model import progress

HELP = "integer vs float accuracy (tiny-model perplexity/top-1, GPT-2-small block error)"

TARGETS = {"ppl_ratio": 1.02, "top1_agreement": 0.95, "cosine": 0.99}


def add_arguments(parser):
    parser.add_argument("--model", default=None,
                        help="float model directory (default: the shipped model/tiny)")
    parser.add_argument("--windows", type=int, default=1000,
                        help="held-out windows of 128 characters to score (default 1000, "
                             "128,000 predictions; the held-out text has 3,941)")
    parser.add_argument("--calib", type=int, default=32,
                        help="calibration windows from the training split (default 32)")
    parser.add_argument("--block-tokens", type=int, default=128,
                        help="tokens through the GPT-2-small block (default 128)")
    parser.add_argument("--sweep", action="store_true",
                        help="also sweep residual width, percentile, exp2 bits and tile")


def _tiny_dir(arg):
    if arg:
        return Path(arg)
    from gpt2accel.model import quant
    return Path(quant.__file__).resolve().parent / "tiny"


def _tiny_setup(args):
    """(float model, calibration id lists, evaluation windows [n, T+1], source)."""
    from gpt2accel.model.gpt2 import GPT2
    d = _tiny_dir(args.model)
    if (d / "config.json").exists() and (d / "model.safetensors").exists() \
            and (d / "chars.json").exists():
        from gpt2accel.model import shakespeare
        gpt2 = GPT2.from_pretrained(d)
        chars = json.loads((d / "chars.json").read_text())
        index = {c: i for i, c in enumerate(chars)}
        n = gpt2.config.n_positions
        train, _ = shakespeare.load_corpus()
        starts = np.linspace(0, len(train) - n - 1, args.calib).astype(int)
        calib = [np.array([index[c] for c in train[s:s + n]]) for s in starts]
        wins = shakespeare.heldout_windows(n + 1, args.windows)
        evals = np.array([[index[c] for c in w] for w in wins])
        return gpt2, calib, evals, str(d)
    from gpt2accel.model.synthetic import random_gpt2
    gpt2 = random_gpt2(vocab_size=65, n_positions=128, n_embd=64, n_layer=2, n_head=4, seed=0)
    rng = np.random.default_rng(1)
    calib = [rng.integers(0, 65, 128) for _ in range(args.calib)]
    evals = rng.integers(0, 65, (args.windows, 129))
    return gpt2, calib, evals, "synthetic"


def _log_softmax(logits):
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def _score(model_logits, evals, what="scoring"):
    """(mean NLL, top-1 ids) over all windows: predict w[1:] from w[:-1]."""
    nll, tops, margins = [], [], []
    for w in progress.bar(evals, what, unit="windows"):
        lp = _log_softmax(model_logits(w[:-1]))
        nll.append(-lp[np.arange(len(w) - 1), w[1:]])
        tops.append(lp.argmax(axis=-1))
        top2 = np.sort(lp, axis=-1)[:, -2:]
        margins.append(top2[:, 1] - top2[:, 0])
    return float(np.concatenate(nll).mean()), np.concatenate(tops), np.concatenate(margins)


def tiny_accuracy(gpt2, calib, evals, float_score=None, **qopts):
    """The tiny-model figures for one set of quantisation options."""
    from gpt2accel.model.quant import QuantGPT2
    q = QuantGPT2.from_float(gpt2, calib, **qopts)
    f_nll, f_top, f_margin = float_score or _score(gpt2.logits, evals,
                                                   "tiny model: scoring the float model on")
    i_nll, i_top, _ = _score(q.logits, evals, "tiny model: scoring the integer model on")
    agree = f_top == i_top
    confident = f_margin > 0.5
    return {"ppl_float": float(np.exp(f_nll)), "ppl_int": float(np.exp(i_nll)),
            "ppl_ratio": float(np.exp(i_nll - f_nll)),
            "top1_agreement": float(agree.mean()),
            # disagreements are near-ties; where float's top-2 margin exceeds
            # 0.5 nats the integer model should (almost) always agree
            "top1_agreement_margin_gt_0.5": float(agree[confident].mean()),
            "median_float_margin_at_disagreements": float(np.median(f_margin[~agree]))
            if (~agree).any() else 0.0,
            "tokens": int(f_top.size)}


def _block_setup(tokens, seed=0, outlier_scale=100.0):
    """A 2-layer GPT-2-small-geometry model; block 0 writes the outlier channels
    (as GPT-2's first layers do) and block 1 is the block measured."""
    from gpt2accel.model.synthetic import random_gpt2
    gpt2 = random_gpt2(vocab_size=512, n_positions=max(tokens, 8), n_embd=768, n_layer=2,
                       n_head=12, seed=seed, n_outliers=4, outlier_scale=outlier_scale)
    rng = np.random.default_rng(seed + 1)
    calib = [rng.integers(0, 512, tokens) for _ in range(4)]
    ids = rng.integers(0, 512, tokens)
    return gpt2, calib, ids


def _observe_into(store):
    def observe(name, layer, x):
        if name == "resid" and layer in (0, 1):
            store[("in", "out")[layer]] = np.asarray(x)
    return observe


def _cos(a, b):
    a, b = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-30))


def block_accuracy(gpt2, calib, ids, **qopts):
    """Cosine / max abs error of block 1's integer output (and delta) vs float.

    Both models run the whole (2-layer) network, so the integer block's
    input carries the integer errors of the embedding and block 0, as it
    would in a deep model; the delta (output - input) is block 1's own work.
    """
    from gpt2accel.model.quant import QuantGPT2
    q = QuantGPT2.from_float(gpt2, calib, **qopts)
    fl, it = {}, {}
    with progress.step(f"GPT-2-small-geometry block: {len(ids)} tokens through the float "
                       f"and integer models"):
        gpt2.forward(ids, observe=_observe_into(fl))
        q.forward(ids, observe=_observe_into(it))
    s = q.scales["resid"]
    out_f, out_i = fl["out"], it["out"] * s
    delta_f, delta_i = out_f - fl["in"], (it["out"] - it["in"]) * s
    # channels that are not outliers (amax under 10x the median channel's)
    amax = np.abs(out_f).max(axis=0)
    typical = amax < 10 * np.median(amax)
    return {"delta_cosine_typical": _cos(delta_f[:, typical], delta_i[:, typical]),
            "outlier_channels": int((~typical).sum()),"cosine": _cos(out_f, out_i),
            "max_abs_error": float(np.abs(out_f - out_i).max()),
            "max_abs_output": float(np.abs(out_f).max()),
            "delta_cosine": _cos(delta_f, delta_i),
            "delta_max_abs_error": float(np.abs(delta_f - delta_i).max()),
            "delta_max_abs": float(np.abs(delta_f).max())}


def _sweep(gpt2, calib, evals, bgpt2, bcalib, bids):
    fs = _score(gpt2.logits, evals, "sweep: scoring the float model on")
    rows = []
    options = ([{"resid_bits": b} for b in (12, 16, 20, 24)]
               + [{"percentile": p} for p in (None, 99.9, 99.999)]
               + [{"smooth_alpha": a} for a in (0.0, 0.75)]
               + [{"frac_bits": f} for f in (3, 4, 5, 7)]
               + [{"tile": t} for t in (8, 16, 32, 128)])
    for i, opt in enumerate(options):
        progress.note(f"sweep {i + 1} of {len(options)}: {opt}")
        tiny = tiny_accuracy(gpt2, calib, evals, fs, **opt)
        blk = block_accuracy(bgpt2, bcalib, bids, **opt)
        rows.append({"options": opt, "ppl_ratio": tiny["ppl_ratio"],
                     "top1_agreement": tiny["top1_agreement"], "block_cosine": blk["cosine"],
                     "block_delta_cosine": blk["delta_cosine"],
                     "block_delta_cosine_typical": blk["delta_cosine_typical"]})
    return rows


def run(args):
    from gpt2accel.model.quant import DEFAULTS
    with progress.step("tiny model: loading it, its calibration and held-out windows",
                       done=lambda: f"{len(evals)} windows,"):
        gpt2, calib, evals, source = _tiny_setup(args)
    tiny = tiny_accuracy(gpt2, calib, evals)
    tiny["source"] = source
    with progress.step("building a random GPT-2-small-geometry model (2 layers)"):
        bgpt2, bcalib, bids = _block_setup(args.block_tokens)
    block = block_accuracy(bgpt2, bcalib, bids)
    result = {"tiny": tiny, "gpt2_small_block": block,
              "settings": {k: v for k, v in DEFAULTS.items()}, "targets": TARGETS}
    result["pass"] = bool(tiny["ppl_ratio"] <= TARGETS["ppl_ratio"]
                          and tiny["top1_agreement"] >= TARGETS["top1_agreement"]
                          and block["cosine"] >= TARGETS["cosine"])
    if args.sweep:
        result["sweep"] = _sweep(gpt2, calib, evals, bgpt2, bcalib, bids)
    return result


def format_text(r):
    t, b = r["tiny"], r["gpt2_small_block"]
    lines = [
        f"tiny model ({t['source']}, {t['tokens']} held-out tokens):",
        f"  perplexity float {t['ppl_float']:.4f}  int {t['ppl_int']:.4f}  "
        f"ratio {t['ppl_ratio']:.4f} (target <= {TARGETS['ppl_ratio']})",
        f"  top-1 agreement {100 * t['top1_agreement']:.2f}% "
        f"(target >= {100 * TARGETS['top1_agreement']:.0f}%); "
        f"{100 * t['top1_agreement_margin_gt_0.5']:.2f}% where float's top-2 margin > 0.5 nats "
        f"(disagreements: median float margin {t['median_float_margin_at_disagreements']:.3f})",
        "GPT-2-small-geometry block (768 wide, 12 heads, outlier channels):",
        f"  output cosine {b['cosine']:.5f} (target >= {TARGETS['cosine']})  "
        f"max abs error {b['max_abs_error']:.4g} (output max {b['max_abs_output']:.4g})",
        f"  block delta cosine {b['delta_cosine']:.5f}  max abs error "
        f"{b['delta_max_abs_error']:.4g} (delta max {b['delta_max_abs']:.4g})",
        f"  block delta cosine without the {b['outlier_channels']} outlier channels "
        f"{b['delta_cosine_typical']:.5f}",
        f"settings: {r['settings']}",
        f"all targets met: {'yes' if r['pass'] else 'NO'}",
    ]
    for row in r.get("sweep", []):
        lines.append(f"  sweep {row['options']}: ppl ratio {row['ppl_ratio']:.4f}  top-1 "
                     f"{100 * row['top1_agreement']:.2f}%  block cos {row['block_cosine']:.5f}  "
                     f"delta cos {row['block_delta_cosine']:.5f} (typical ch. "
                     f"{row['block_delta_cosine_typical']:.5f})")
    return "\n".join(lines)
