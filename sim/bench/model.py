"""Whole model: cycles per token, MAC utilisation and memory traffic (compiler + cycle model).

For each model, array size and context the whole-model program
(`ModelCompiler`) is timed by `program_cycles` (exact for the RTL, stall-free
reference memory); nothing is simulated. Prefill: one program of 128 tokens
(or the context, if shorter) at position 0 computing the last row's logits,
as generation does (the tiny model's whole context; GPT-2 small's longer
prompts run as several such programs, the earlier ones without the LM head);
score: the same prompt with every row's logits (perplexity); decode: one
token at the last position of the context (the longest attention), for
`batch` sequences at once (`BATCHES`: one program, the linear layers with
m = batch, attention and KV store per sequence; cycles per token are the
step's cycles over the batch).
Image bytes: the memory map the case's program runs on, by region: weights
(everything packed from the model), kv (the K/V caches of the context),
buffers (activations, logits of the rows asked, token ids, attention
scratch), and the program (its instruction words, which the host streams);
beside them, the logits' part of the buffers and the bytes of a second copy of
the tied ``wte`` (`image_bytes`; none where EMBED reads the LM head's tiles). The text report has a table of them per model,
array and context.
Utilisation: `driver.program_macs` (useful MACs: linear layers and the causal
QKᵀ/PV products) over rows*cols*cycles. Bytes per token: compulsory memory
traffic (every operand an instruction needs read once, every result written
once, in whole memory words; re-reads by the engines are not counted, so
this is a lower bound of the port's traffic). Roofline cycles per token:
max(bytes ÷ mem_bytes, MACs ÷ rows·cols) per token, the fewer cycles neither the port
nor the array allows (for a batched decode step, divided by the batch);
roofline_ratio = cycles ÷ roofline cycles.

microGPT: a random-weight GPT-2 (LayerNorm, GELU, biases) of the geometry of
Karpathy's microGPT (`_microgpt`), prefill of its whole context of 16.
GPT-2 small: a random-weight model of the 124M geometry (12 layers, 768
wide, 12 heads, vocabulary 50257, context 1024), quantised on two short
windows (the cycles do not depend on the weights' values; ~1 minute in all).
A configuration that cannot hold a model, or an array no whole machine has
(`driver.array_error`), gives cases with null figures and the reason
(`--json`); the text report lists each such model and array once, as not
supported, with the reason.
"""
from dataclasses import asdict

import numpy as np

from gpt2accel.model import progress

from gpt2accel.sim.bench.energy import PLACEMENTS, SOURCE, TABLE, energy, op_events, program_events
from gpt2accel.rtl.isa import INSTR_BITS
from gpt2accel.sim.host.compiler import CompileError, ModelCompiler
from gpt2accel.sim.host.driver import array_error, machine_config
from gpt2accel.sim.cycles.program import instruction_cycles, program_cycles

HELP = ("whole-model cycles/token, utilisation, memory traffic and image bytes "
        "(microGPT's geometry, tiny, GPT-2 small)")


def add_arguments(parser):
    parser.add_argument("--arrays", default="4x4,8x8,12x12,16x16",
                        help="comma-separated array sizes RxC (default %(default)s)")
    parser.add_argument("--models", default="microgpt,tiny,gpt2-small",
                        help="comma-separated models among %s (default %%(default)s)"
                             % ", ".join(MODELS))
    parser.add_argument("--plot", metavar="DIR", default=None,
                        help="also write plots (PNG and SVG) into DIR: a roofline per model "
                             "and the cycles and energy of one token by instruction kind "
                             "(needs matplotlib: pip install 'gpt2-accel[plots]')")
    parser.add_argument("--contexts", default=None,
                        help="comma-separated contexts (positions the KV caches hold; "
                             "decode at the last); default each model's n_positions")


def _tiny():
    from gpt2accel.model import shipped_model_dir
    from gpt2accel.model.quant import QuantGPT2
    return QuantGPT2.load(shipped_model_dir() / "model.int8.safetensors")


def _microgpt():
    """A random GPT-2 of microGPT's geometry (vocabulary 27, context 16, n_embd 16, one
    layer, 4 heads of 4), quantised with a softmax tile of the whole context: with one
    tile the results are those of any larger tile, and PV commands take k = 16 keys."""
    from gpt2accel.model import quant as Q
    from gpt2accel.model.synthetic import random_gpt2
    V, N = 27, 16
    fm = random_gpt2(seed=0, vocab_size=V, n_positions=N, n_embd=16, n_layer=1, n_head=4)
    rng = np.random.default_rng(0)
    return Q.QuantGPT2.from_float(fm, [rng.integers(0, V, N) for _ in range(2)], tile=N)


def _gpt2_small():
    from gpt2accel.model import quant as Q
    from gpt2accel.model.synthetic import random_gpt2
    V = 50257
    fm = random_gpt2(seed=0, vocab_size=V, n_positions=1024, n_embd=768, n_layer=12,
                     n_head=12)
    rng = np.random.default_rng(0)
    return Q.QuantGPT2.from_float(fm, [rng.integers(0, V, 32) for _ in range(2)])


#: name -> (loader, prefill rows per program, what loading does); each machine's memory is
#: sized from the model's memory map on that array (`machine_config`)
MODELS = {"microgpt": (_microgpt, 16, "building a random microGPT-geometry model and "
                                      "quantising it"),
          "tiny": (_tiny, 128, "loading the shipped tiny model"),
          "gpt2-small": (_gpt2_small, 128,
                         "building a random GPT-2-small-geometry model and quantising it")}


def traffic_bytes(comp, ops):
    """Compulsory bytes moved by `ops` (see the module docstring)."""
    return sum(op_events(comp, op, f).bytes for op, f in ops)


#: sequences decoded together in the decode rows
BATCHES = (1, 4, 8)


def _contexts(text):
    if text is None:
        return [None]
    out = []
    for c in text.split(","):
        try:
            out.append(int(c))
        except ValueError:
            raise ValueError(f"--contexts: {c!r} is not a number of positions") from None
        if out[-1] < 1:
            raise ValueError(f"--contexts: {c!r} needs at least one position")
    return out


#: the logits buffers (part of "buffers"): the head's raw and requantised rows
LOGITS_REGIONS = ("logits_raw", "logits")


def image_bytes(comp, words):
    """The case's image by region (see the module docstring), and their total; then,
    not added to it, "logits" (the part of buffers the logits rows take) and
    "wte_copy" (the bytes of EMBED's own copy of the tied ``wte``: 0 on arrays whose
    EMBED reads the LM head's weight tiles, `rtl.isa.wte_tile_cols`; wider arrays
    keep the table a second time, in tiles of 4 tokens)."""
    out = dict(comp.region_bytes(), program=len(words) * INSTR_BITS // 8)
    out["total"] = sum(out.values())
    mb = comp.e.mem_bytes
    out["logits"] = sum(comp.regions[n].words for n in LOGITS_REGIONS
                        if n in comp.regions) * mb
    copy = comp.regions.get("wte")
    out["wte_copy"] = copy.words * mb if copy is not None else 0
    return out



def parse_arrays(text, option="--arrays"):
    """[(rows, cols)] of a comma-separated list of RxC; a malformed one is a ValueError
    naming `option`."""
    arrays = []
    for a in text.split(","):
        try:
            r, c = (int(x) for x in a.lower().split("x"))
        except ValueError:
            raise ValueError(f"{option}: {a!r} is not ROWSxCOLS (e.g. 8x8)") from None
        if r < 1 or c < 1:
            raise ValueError(f"{option}: {a!r} needs at least one row and one column")
        arrays.append((r, c))
    return arrays


def program_case(cfg, comp, words, ops, mem, t):
    """Figures of the program `words` (`ops`: its (Op, fields)) on memory `mem`, which
    computes `t` tokens: exact cycles (total and by instruction kind, each instruction's
    hand-over cycles with it, under HALT the first instruction's fetch and decode and the
    program's end the cycle after the last done), utilisation, compulsory bytes,
    and the estimated energy per token (`energy`: parameters in block RAM, and read from
    DRAM)."""
    r, c = cfg.engine.rows, cfg.engine.cols
    cycles, per = program_cycles(cfg, words, mem=mem)
    by_kind = {}
    for op, u in per:
        by_kind[op.name] = by_kind.get(op.name, 0) + instruction_cycles(u)
    by_kind["HALT"] = cycles - sum(by_kind.values())
    events = program_events(comp, ops)
    macs = sum(e.macs for e in events.values())
    nbytes = sum(e.bytes for e in events.values())
    on_chip, dram = (energy(events, where, per=t) for where in PLACEMENTS)
    # the fewest cycles the program could take: its compulsory bytes through the port
    # or its MACs through the array, whichever is slower (decode: the port)
    roofline = max(nbytes / cfg.engine.mem_bytes, macs / (r * c))
    return {"cycles": cycles, "cycles_per_token": cycles / t,
            "roofline_cycles": roofline / t, "roofline_ratio": cycles / roofline,
            "utilisation": macs / (r * c * cycles), "bytes_per_token": nbytes / t,
            "macs_per_token": macs / t, "cycles_by_kind": by_kind,
            "events_per_token": {k: {f: v / t for f, v in asdict(e).items()}
                                 for k, e in events.items()},
            "energy_per_token_uj": on_chip["total_pj"] / 1e6,
            "energy_per_token_uj_dram": dram["total_pj"] / 1e6,
            "energy_by_kind_uj": {k: v / 1e6 for k, v in on_chip["by_kind"].items()},
            "energy_by_event_uj": {k: v / 1e6 for k, v in on_chip["by_event"].items()}}


def sequence_program(comp, q, t, pos, logits="last"):
    """(words, ops, memory) of one sequence's program of `t` tokens at position `pos`
    (token ids 0, 1, ...) with the logits of the rows `logits` asks for."""
    from gpt2accel.sim.host.driver import _ids_memory
    ids = np.arange(t) % q.config.vocab_size
    return comp.program(t, pos, logits), comp.ops(t, pos, logits), _ids_memory(comp, ids)


def sequence_case(cfg, comp, q, t, pos, logits="last"):
    """`program_case` of `sequence_program`."""
    return program_case(cfg, comp, *sequence_program(comp, q, t, pos, logits), t)


def run(args):
    from gpt2accel.sim.host.driver import _ids_memory
    arrays = parse_arrays(args.arrays)
    contexts = _contexts(getattr(args, "contexts", None))
    unknown = [m for m in args.models.split(",") if m not in MODELS]
    if unknown:
        raise ValueError(f"--models: unknown model {unknown[0]!r} (known: {', '.join(MODELS)})")
    plot_dir = getattr(args, "plot", None)
    if plot_dir:
        from gpt2accel.sim.bench.plots import check_plot_dir
        check_plot_dir(plot_dir, "--plot")
    cases = []
    for name in args.models.split(","):
        load, prefill_t, loading = MODELS[name]
        with progress.step(loading):
            q = load()
        n = q.config.n_positions
        jobs = [(r, c, ctx or n) for ctx in contexts for r, c in arrays]
        for r, c, ctx in progress.bar(jobs, f"{name}: compiling and timing on each array "
                                            f"and context", unit="cases"):
            arr, t = f"{r}x{c}", min(prefill_t, ctx)
            # (mode, tokens, position, logits asked, sequences); logits buffers of
            # `tokens` rows for "all", one per sequence for "last"
            modes = [("prefill", t, 0, "last", 1), ("score", t, 0, "all", 1)] + [
                ("decode", 1, ctx - 1, "last", b) for b in BATCHES]
            try:
                # figures of an array no whole machine has would describe nothing buildable
                problem = array_error(c)
                if problem:
                    raise ValueError(problem)
                # the caches of 8 sequences may need a wider address than one's
                cfgs = {b: machine_config(q, r, c, max_tokens=prefill_t, batch=b)
                        for b in {m[4] for m in modes}}
                comps = {(rows, b): ModelCompiler(cfgs[b], q, prefill_t,
                                                  1 << cfgs[b].engine.addr_bits,
                                                  logit_rows=rows, context=ctx, batch=b)
                         for rows, b in {(t if m[3] == "all" else m[4], m[4]) for m in modes}}
            except (CompileError, ValueError) as e:     # the config cannot hold this model
                cases += [{"model": name, "array": arr, "context": ctx, "mode": mode, "T": t,
                           "batch": b, "cycles_per_token": None, "utilisation": None,
                           "bytes_per_token": None, "image_bytes": None, "error": str(e)}
                          for mode, t, _, _, b in modes]
                continue
            for mode, t, pos, logits, b in modes:
                cfg, comp = cfgs[b], comps[(t if logits == "all" else b, b)]
                if b == 1:
                    words, ops, mem = sequence_program(comp, q, t, pos, logits)
                else:
                    # every sequence at the same position: the step the figure is for
                    words = comp.batch_program([pos] * b)
                    ops = [(op, f) for op, f, _ in comp.batch_annotated_ops([pos] * b)]
                    mem = _ids_memory(comp, np.arange(b) % q.config.vocab_size, True)
                cases.append({"model": name, "array": arr, "context": ctx, "mode": mode,
                              "T": t, "batch": b, "position": pos, "logits": logits,
                              "rows": r, "cols": c, "mem_bytes": cfg.engine.mem_bytes,
                              **program_case(cfg, comp, words, ops, mem, t * b),
                              "image_bytes": image_bytes(comp, words)})
    result = {"cases": cases, "mem_latency": "reference (sim.matmul_sim.REF_MEM_LATENCY)",
              "energy_source": SOURCE, "energy_table_pj": TABLE}
    if plot_dir:
        from gpt2accel.sim.bench.plots import bench_model_plots
        result["plots"] = bench_model_plots(result, plot_dir)
    return result


def format_text(result):
    lines = [f"{'model':11} {'array':6} {'context':>7} {'mode':8} {'T':>5} {'batch':>5} "
             f"{'cycles/token':>13} {'util':>6} {'bytes/token':>12} {'image bytes':>13} "
             f"{'uJ/token':>9} {'DRAM':>9}"]
    unsupported = {}
    for c in result["cases"]:
        if c.get("cycles_per_token") is None:
            # the same reason for every mode: one line per model and array, after the table
            unsupported.setdefault((c["model"], c["array"]), c["error"])
            continue
        lines.append(f"{c['model']:11} {c['array']:6} {c['context']:7d} {c['mode']:8} "
                     f"{c['T']:5d} {c['batch']:5d} {c['cycles_per_token']:13,.0f} "
                     f"{100 * c['utilisation']:5.1f}% {c['bytes_per_token']:12,.0f} "
                     f"{c['image_bytes']['total']:13,} {c['energy_per_token_uj']:9,.2f} "
                     f"{c['energy_per_token_uj_dram']:9,.2f}")
    if unsupported:
        lines.append("not supported:")
        lines += [f"  {model} on {array}, because {why}"
                  for (model, array), why in unsupported.items()]
    lines.append(f"uJ/token: estimated energy of the counted events, parameters in block RAM; "
                 f"DRAM: the parameters read from DRAM; per-event energies from "
                 f"{result['energy_source']}")
    images = {}
    for c in result["cases"]:
        if c.get("image_bytes") and c["mode"] == "decode" and c["batch"] == 1:
            images[(c["model"], c["array"], c["context"])] = c["image_bytes"]
    if images:
        lines.append("")
        lines.append("image bytes by region (one sequence, the last row's logits):")
        lines.append(f"{'model':11} {'array':6} {'context':>7} {'weights':>13} {'kv':>12} "
                     f"{'buffers':>12} {'(logits)':>11} {'program':>9} {'total':>13} "
                     f"{'wte twice':>12}")
        for (model, arr, ctx), im in images.items():
            lines.append(f"{model:11} {arr:6} {ctx:7d} {im['weights']:13,} {im['kv']:12,} "
                         f"{im['buffers']:12,} {im['logits']:11,} {im['program']:9,} "
                         f"{im['total']:13,} {im['wte_copy']:12,}")
        lines.append("wte twice: a second copy of the tied embedding (EMBED's own, on arrays "
                     "wider than 8 columns), part of weights; 0: EMBED reads the LM head's "
                     "weight tiles")
    for path in result.get("plots", []):
        lines.append(f"plot: {path}")
    return "\n".join(lines)
