"""Plots of `gpt2accel sweep --plot DIR` and `gpt2accel bench model --plot DIR` (PNG and SVG).

- ``pareto``: tokens/s against LUTs and against DSPs, one colour per board,
  each board's Pareto front (no other point of the board is both cheaper and
  faster) joined by a line;
- ``roofline-MODEL``: per program (prefill, decode on each array) its
  operational intensity (MACs per byte of compulsory memory traffic) against
  the MACs per cycle it achieves, under its array's roofs: the array
  (rows x cols MACs a cycle) and the memory port (one word of 2 x cols bytes
  a cycle times the intensity);
- ``breakdown-MODEL``: the cycles of one token by instruction kind (stacked,
  prefill batched over the context and decode B=1, on each array), beside
  the token's estimated energy by instruction kind.

Matplotlib is an extra: ``pip install 'gpt2-accel[plots]'``. Figures are
drawn on `matplotlib.figure.Figure` objects (no pyplot, no GUI backend).
"""
from pathlib import Path

__all__ = ["check_plot_dir", "sweep_plots", "bench_model_plots", "pareto_front"]

#: the instruction kinds in stacking order, each with one colour in every plot
KINDS = ("MATMUL", "ATTENTION", "LAYERNORM", "GELU", "RESADD", "REQUANT", "KVSTORE",
         "EMBED", "HALT")


def check_plot_dir(path, option):
    """Refuse (ValueError, naming `option`) a plot directory that cannot be written, or a
    missing matplotlib, before any long work."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise ValueError(f"{option} needs matplotlib: pip install 'gpt2-accel[plots]'") from None
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise ValueError(f"{option} {path}: not a directory")
    parent = p if p.exists() else next((a for a in p.resolve().parents if a.exists()), None)
    if parent is None or not parent.is_dir():
        raise ValueError(f"{option} {path}: cannot be created")


def _save(fig, out_dir, stem):
    """`stem`.png and `stem`.svg in `out_dir`; their paths."""
    import matplotlib
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    # a fixed salt and no date: the same figures give the same files
    with matplotlib.rc_context({"svg.hashsalt": "gpt2accel"}):
        for ext, meta in (("png", {"Software": None}), ("svg", {"Date": None})):
            path = out / f"{stem}.{ext}"
            fig.savefig(path, dpi=120, metadata=meta, bbox_inches="tight")
            paths.append(str(path))
    return paths


def pareto_front(points):
    """The points (cost, value) no other point beats: none costs as little or less and
    gives more, or costs less and gives as much; sorted by cost."""
    front = []
    for c, v in sorted(points, key=lambda p: (p[0], -p[1])):
        if not front or v > front[-1][1]:
            front.append((c, v))
    return front


def sweep_plots(result, out_dir):
    """The Pareto fronts of a sweep's points that were built (`sweep.sweep`'s result)."""
    from matplotlib.figure import Figure
    ok = [r for r in result["points"] if r.get("decode_tokens_per_s")]
    fig = Figure(figsize=(11, 4.5))
    axes = fig.subplots(1, 2)
    boards = sorted({r["board"] for r in ok})
    for ax, key, label in zip(axes, ("lut", "dsp"), ("LUTs", "DSP blocks")):
        for i, board in enumerate(boards):
            pts = [r for r in ok if r["board"] == board and r.get(key) is not None]
            colour = f"C{i}"
            # a MATMUL-only co-processor's tokens/s is the device's share of a token
            share = any(r.get("machine") not in (None, "whole") for r in pts)
            ax.scatter([r[key] for r in pts], [r["decode_tokens_per_s"] for r in pts],
                       color=colour, zorder=3,
                       label=board + (" (MATMUL only: the device's share)" if share else ""))
            for r in pts:
                ax.annotate(f"{r['rows']}x{r['cols']} {r['met_mhz']:g} MHz"
                            + ("" if r["timing_met"] else " (Fmax)"),
                            (r[key], r["decode_tokens_per_s"]), textcoords="offset points",
                            xytext=(4, 4), fontsize=7)
            front = pareto_front([(r[key], r["decode_tokens_per_s"]) for r in pts])
            if len(front) > 1:
                ax.plot(*zip(*front), color=colour, drawstyle="steps-post", alpha=0.6)
        ax.set_xlabel(label)
        ax.set_ylabel(f"decode tokens/s ({result['model']} model)")
        ax.grid(True, alpha=0.3)
    if boards:
        axes[0].legend(fontsize=8)
    missing = [r for r in result["points"] if not r.get("decode_tokens_per_s")]
    fig.suptitle("Pareto fronts: decode tokens/s against resources (at the clock each "
                 "design meets)" + (f"; {len(missing)} point(s) not built or without figures"
                                   if missing else ""), fontsize=10)
    return _save(fig, out_dir, "pareto")


def bench_model_plots(result, out_dir):
    """A roofline and a breakdown per model of `bench model`'s result."""
    paths = []
    cases = [c for c in result["cases"] if c.get("cycles_per_token") is not None]
    for model in dict.fromkeys(c["model"] for c in cases):
        mine = [c for c in cases if c["model"] == model]
        paths += _roofline(mine, model, out_dir)
        paths += _breakdown(mine, model, out_dir)
    return paths


def _roofline(cases, model, out_dir):
    import numpy as np
    from matplotlib.figure import Figure
    fig = Figure(figsize=(7, 5))
    ax = fig.subplots()
    arrays = list(dict.fromkeys(c["array"] for c in cases))
    ois = [c["macs_per_token"] / c["bytes_per_token"] for c in cases]
    x = np.logspace(np.log10(min(ois) / 4), np.log10(max(ois) * 4), 200)
    for i, arr in enumerate(arrays):
        mine = [c for c in cases if c["array"] == arr]
        peak, port = mine[0]["rows"] * mine[0]["cols"], mine[0]["mem_bytes"]
        colour = f"C{i}"
        ax.plot(x, np.minimum(peak, port * x), color=colour, alpha=0.5,
                label=f"{arr}: array {peak} MAC/cycle, port {port} B/cycle")
        for c in mine:
            oi = c["macs_per_token"] / c["bytes_per_token"]
            achieved = c["macs_per_token"] / c["cycles_per_token"]
            ax.scatter([oi], [achieved], color=colour, marker="o" if c["mode"] == "prefill"
                       else "s", zorder=3)
            ax.annotate(f"{arr} {c['mode']}", (oi, achieved), textcoords="offset points",
                        xytext=(4, -10), fontsize=7)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("operational intensity (MACs per byte of compulsory memory traffic)")
    ax.set_ylabel("achieved MACs per cycle")
    ax.set_title(f"Roofline, {model} model (o prefill, s decode)", fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    return _save(fig, out_dir, f"roofline-{model}")


def _breakdown(cases, model, out_dir):
    from matplotlib.figure import Figure
    fig = Figure(figsize=(11, 4.5))
    ax_c, ax_e = fig.subplots(1, 2)
    labels = [f"{c['array']}\n{c['mode']}" + ("" if c["T"] == 1 else f" T={c['T']}")
              for c in cases]
    xs = range(len(cases))
    for ax, field, per_token, unit in (
            (ax_c, "cycles_by_kind", True, "cycles per token"),
            (ax_e, "energy_by_kind_uj", False, "estimated µJ per token (block RAM)")):
        bottom = [0.0] * len(cases)
        for k, kind in enumerate(KINDS):
            vals = [c[field].get(kind, 0) / (c["T"] if per_token else 1) for c in cases]
            if not any(vals):
                continue
            ax.bar(xs, vals, bottom=bottom, color=f"C{k}", label=kind)
            bottom = [b + v for b, v in zip(bottom, vals)]
        ax.set_xticks(list(xs), labels, fontsize=8)
        ax.set_ylabel(unit)
        ax.grid(True, axis="y", alpha=0.3)
    ax_c.legend(fontsize=7)
    ax_c.set_title(f"Cycles of one token by instruction kind, {model} model", fontsize=10)
    ax_e.set_title("Energy of one token by instruction kind (estimate)", fontsize=10)
    return _save(fig, out_dir, f"breakdown-{model}")
