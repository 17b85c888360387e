"""Whole model: cycles per token, MAC utilisation and memory traffic (compiler + cycle model).

For each model and array size the whole-model program (`ModelCompiler`) is
timed by `program_cycles` (exact for the RTL, stall-free reference memory);
nothing is simulated. Prefill: one program of `PREFILL_T` tokens at position
0 (the tiny model's whole context; 128 rows for GPT-2 small, whose longer
prompts run as several such programs); decode: one token at the last
position (the longest attention).
Utilisation: `driver.program_macs` (useful MACs: linear layers and the causal
QKᵀ/PV products) over rows*cols*cycles. Bytes per token: compulsory memory
traffic (every operand an instruction needs read once, every result written
once, in whole memory words; re-reads by the engines are not counted, so
this is a lower bound of the port's traffic).

microGPT: a random-weight GPT-2 (LayerNorm, GELU, biases) of the geometry of
Karpathy's microGPT (`_microgpt`), prefill of its whole context of 16.
GPT-2 small: a random-weight model of the 124M geometry (12 layers, 768
wide, 12 heads, vocabulary 50257, context 1024), quantised on two short
windows (the cycles do not depend on the weights' values; ~1 minute in all).
A configuration that cannot hold a model, or an array no whole machine has
(`driver.array_error`), gives cases with null figures and the reason (`--json`); the text report lists each such model and
array once, as not supported, with the reason.
"""
import numpy as np

from gpt2accel.model import progress

from gpt2accel.rtl.isa import Op
from gpt2accel.sim.host.compiler import CompileError, ModelCompiler
from gpt2accel.sim.host.driver import array_error, machine_config, program_macs
from gpt2accel.sim.cycles.program import program_cycles

HELP = ("whole-model cycles/token, utilisation and memory traffic (microGPT's geometry, "
        "tiny, GPT-2 small)")


def add_arguments(parser):
    parser.add_argument("--arrays", default="4x4,8x8,12x12,16x16",
                        help="comma-separated array sizes RxC (default %(default)s)")
    parser.add_argument("--models", default="microgpt,tiny,gpt2-small",
                        help="comma-separated models among %s (default %%(default)s)"
                             % ", ".join(MODELS))


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


def run(args):
    from gpt2accel.sim.host.driver import _ids_memory
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
        modes = (("prefill", prefill_t, 0), ("decode", 1, n - 1))
        for r, c in progress.bar(arrays, f"{name}: compiling and timing on each array",
                                 unit="arrays"):
            arr = f"{r}x{c}"
            try:
                # figures of an array no whole machine has would describe nothing buildable
                problem = array_error(c)
                if problem:
                    raise ValueError(problem)
                cfg = machine_config(q, r, c, max_tokens=prefill_t)
                comp = ModelCompiler(cfg, q, prefill_t, 1 << cfg.engine.addr_bits)
            except (CompileError, ValueError) as e:     # the config cannot hold this model
                cases += [{"model": name, "array": arr, "mode": mode, "T": t,
                           "cycles_per_token": None, "utilization": None,
                           "bytes_per_token": None, "error": str(e)} for mode, t, _ in modes]
                continue
            for mode, t, pos in modes:
                ids = np.arange(t) % q.config.vocab_size
                cycles, _ = program_cycles(cfg, comp.program(t, pos), mem=_ids_memory(comp, ids))
                ops = comp.ops(t, pos)
                cases.append({"model": name, "array": arr, "mode": mode, "T": t, "pos": pos,
                              "cycles": cycles, "cycles_per_token": cycles / t,
                              "utilization": program_macs(ops) / (r * c * cycles),
                              "bytes_per_token": traffic_bytes(comp, ops) / t})
    return {"cases": cases, "mem_latency": "reference (sim.matmul_sim.REF_MEM_LATENCY)"}


def format_text(result):
    lines = [f"{'model':11} {'array':6} {'mode':8} {'T':>5} {'cycles/token':>13} "
             f"{'util':>6} {'bytes/token':>12}"]
    unsupported = {}
    for c in result["cases"]:
        if c.get("cycles_per_token") is None:
            # the same reason for both modes: one line per model and array, after the table
            unsupported.setdefault((c["model"], c["array"]), c["error"])
            continue
        lines.append(f"{c['model']:11} {c['array']:6} {c['mode']:8} {c['T']:5d} "
                     f"{c['cycles_per_token']:13,.0f} {100 * c['utilization']:5.1f}% "
                     f"{c['bytes_per_token']:12,.0f}")
    if unsupported:
        lines.append("not supported:")
        lines += [f"  {model} on {array}, because {why}"
                  for (model, array), why in unsupported.items()]
    return "\n".join(lines)
