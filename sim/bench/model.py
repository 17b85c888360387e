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
scratch), and the program (its instruction words, which the host streams).
Utilisation: `driver.program_macs` (useful MACs: linear layers and the causal
QKᵀ/PV products) over rows*cols*cycles. Bytes per token: compulsory memory
traffic (every operand an instruction needs read once, every result written
once, in whole memory words; re-reads by the engines are not counted, so
this is a lower bound of the port's traffic).

GPT-2 small: a random-weight model of the 124M geometry (12 layers, 768
wide, 12 heads, vocabulary 50257, context 1024), quantised on two short
windows (the cycles do not depend on the weights' values; ~1 minute in all).
A configuration that cannot hold a model gives cases with null figures and
the compiler's message (`--json`); the text report lists each such model and
array once, as not supported, with the reason.
"""
import numpy as np

from gpt2accel.model import progress

from gpt2accel.rtl.isa import INSTR_BITS, Op
from gpt2accel.sim.host.compiler import CompileError, ModelCompiler
from gpt2accel.sim.host.driver import machine_config, program_macs
from gpt2accel.sim.cycles.program import program_cycles

HELP = ("whole-model cycles/token, utilisation, memory traffic and image bytes "
        "(tiny, GPT-2 small)")


def add_arguments(parser):
    parser.add_argument("--arrays", default="4x4,8x8,12x12,16x16",
                        help="comma-separated array sizes RxC (default %(default)s)")
    parser.add_argument("--models", default="tiny,gpt2-small",
                        help="comma-separated models among %s (default %%(default)s)"
                             % ", ".join(MODELS))
    parser.add_argument("--contexts", default=None,
                        help="comma-separated contexts (positions the KV caches hold; "
                             "decode at the last); default each model's n_positions")


def _tiny():
    from gpt2accel.model import shipped_model_dir
    from gpt2accel.model.quant import QuantGPT2
    return QuantGPT2.load(shipped_model_dir() / "model.int8.safetensors")


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
MODELS = {"tiny": (_tiny, 128, "loading the shipped tiny model"),
          "gpt2-small": (_gpt2_small, 128,
                         "building a random GPT-2-small-geometry model and quantising it")}


def traffic_bytes(comp, ops):
    """Compulsory bytes moved by `ops` (see the module docstring)."""
    mb, reg = comp.e.mem_bytes, comp.regions
    E, V = comp.E, comp.V

    at = {r.base: r for r in reg.values()}

    def whole(base):
        """Bytes of the parameter region starting at `base` (read whole)."""
        return at[base].words * mb

    total = 0
    for op, f in ops:
        if op == Op.MATMUL:
            total += (whole(f["w_base"]) + whole(f["p_base"])
                      + f["m"] * (f["a_stride"] + f["out_stride"]) * mb)
        elif op == Op.ATTENTION:
            t, keys = f["tq"], f["offset"] + f["tq"]
            tiles = -(-keys // comp.cfg.tile)
            total += 2 * t * E + f["n_head"] * tiles * (comp.kts + comp.vts) * mb
        elif op == Op.KVSTORE:
            total += 2 * (2 * f["n_tok"] * E)
        elif op == Op.LAYERNORM:
            total += (f["rows"] * E * (2 + 1) + whole(f["gamma_base"])
                      + whole(f["beta_base"]))
        elif op == Op.GELU:
            total += 2 * f["rows"] * f["n"] + whole(f["table_base"])
        elif op == Op.RESADD:
            # split ops carry a column chunk: its n columns and n requantiser words
            total += f["rows"] * f["n"] * (2 + 4 + 2) + 4 * f["n"]
        elif op == Op.EMBED:
            total += (f["rows"] * E * (1 + 1 + 2) + whole(f["wte_q_base"])
                      + whole(f["wpe_q_base"]))
        elif op == Op.REQUANT:
            total += f["rows"] * f["n"] * (4 + 2) + 4 * f["n"]
    return total


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


def image_bytes(comp, words):
    """The case's image by region (see the module docstring), and their total."""
    out = dict(comp.region_bytes(), program=len(words) * INSTR_BITS // 8)
    out["total"] = sum(out.values())
    return out


def run(args):
    from gpt2accel.sim.host.driver import _ids_memory
    contexts = _contexts(getattr(args, "contexts", None))
    arrays = []
    for a in args.arrays.split(","):
        try:
            r, c = (int(x) for x in a.lower().split("x"))
        except ValueError:
            raise ValueError(f"--arrays: {a!r} is not ROWSxCOLS (e.g. 8x8)") from None
        if r < 1 or c < 1:
            raise ValueError(f"--arrays: {a!r} needs at least one row and one column")
        arrays.append((r, c))
    unknown = [m for m in args.models.split(",") if m not in MODELS]
    if unknown:
        raise ValueError(f"--models: unknown model {unknown[0]!r} (known: {', '.join(MODELS)})")
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
                # the caches of 8 sequences may need a wider address than one's
                cfgs = {b: machine_config(q, r, c, max_tokens=prefill_t, batch=b)
                        for b in {m[4] for m in modes}}
                comps = {(rows, b): ModelCompiler(cfgs[b], q, prefill_t,
                                                  1 << cfgs[b].engine.addr_bits,
                                                  logit_rows=rows, context=ctx, batch=b)
                         for rows, b in {(t if m[3] == "all" else m[4], m[4]) for m in modes}}
            except (CompileError, ValueError) as e:     # the config cannot hold this model
                cases += [{"model": name, "array": arr, "context": ctx, "mode": mode, "T": t,
                           "batch": b, "cycles_per_token": None, "utilization": None,
                           "bytes_per_token": None, "image_bytes": None, "error": str(e)}
                          for mode, t, _, _, b in modes]
                continue
            for mode, t, pos, logits, b in modes:
                cfg, comp = cfgs[b], comps[(t if logits == "all" else b, b)]
                if b == 1:
                    ids = np.arange(t) % q.config.vocab_size
                    words = comp.program(t, pos, logits)
                    ops = comp.ops(t, pos, logits)
                    mem = _ids_memory(comp, ids)
                else:
                    # every sequence at the same position: the step the figure is for
                    words = comp.batch_program([pos] * b)
                    ops = [(op, f) for op, f, _ in comp.batch_annotated_ops([pos] * b)]
                    mem = _ids_memory(comp, np.arange(b) % q.config.vocab_size, True)
                cycles, _ = program_cycles(cfg, words, mem=mem)
                tokens = t * b
                cases.append({"model": name, "array": arr, "context": ctx, "mode": mode,
                              "T": t, "batch": b, "pos": pos, "logits": logits,
                              "cycles": cycles, "cycles_per_token": cycles / tokens,
                              "utilization": program_macs(ops) / (r * c * cycles),
                              "bytes_per_token": traffic_bytes(comp, ops) / tokens,
                              "image_bytes": image_bytes(comp, words)})
    return {"cases": cases, "mem_latency": "reference (sim.matmul_sim.REF_MEM_LATENCY)"}


def format_text(result):
    lines = [f"{'model':11} {'array':6} {'context':>7} {'mode':8} {'T':>5} {'batch':>5} "
             f"{'cycles/token':>13} {'util':>6} {'bytes/token':>12} {'image bytes':>13}"]
    unsupported = {}
    for c in result["cases"]:
        if c.get("cycles_per_token") is None:
            # the same reason for every mode: one line per model and array, after the table
            unsupported.setdefault((c["model"], c["array"], c["error"]))
            continue
        lines.append(f"{c['model']:11} {c['array']:6} {c['context']:7d} {c['mode']:8} "
                     f"{c['T']:5d} {c['batch']:5d} {c['cycles_per_token']:13,.0f} "
                     f"{100 * c['utilization']:5.1f}% {c['bytes_per_token']:12,.0f} "
                     f"{c['image_bytes']['total']:13,}")
    if unsupported:
        lines.append("not supported:")
        lines += [f"  {model} on {array}, because {why}" for model, array, why in unsupported]
    return "\n".join(lines)
