"""Whole model: cycles per token, MAC utilisation and memory traffic (compiler + cycle model).

For each model and array size the whole-model program (`ModelCompiler`) is
timed by `program_cycles` (exact for the RTL, stall-free reference memory);
nothing is simulated. Prefill: one program of n_positions tokens at position
0; decode: one token at the last position (the longest attention).
Utilisation: `driver.program_macs` (useful MACs: linear layers and the causal
QKᵀ/PV products) over rows*cols*cycles. Bytes per token: compulsory memory
traffic (every operand an instruction needs read once, every result written
once, in whole memory words; re-reads by the engines are not counted, so
this is a lower bound of the port's traffic).

GPT-2 small (124M geometry) does not compile for the machine yet: its GELU
rows (3072) and LM head (50257) exceed the vector units' row limit
(`MAX_VECTOR_N`); its cases carry the compiler's message and null figures.
"""
import numpy as np

from gpt2accel.rtl.isa import Op
from gpt2accel.sim.compiler import CompileError, ModelCompiler
from gpt2accel.sim.driver import machine_config, program_macs
from gpt2accel.sim.program_cycles import program_cycles

HELP = "whole-model cycles/token, utilisation and memory traffic (tiny, GPT-2 small)"


def add_arguments(parser):
    parser.add_argument("--arrays", default="4x4,8x8,12x12,16x16",
                        help="comma-separated array sizes RxC (default %(default)s)")


def _tiny():
    from pathlib import Path
    from gpt2accel.model.quant import QuantGPT2
    return QuantGPT2.load(Path(__file__).resolve().parents[2] / "model" / "tiny"
                          / "model.int8.safetensors")


def _gpt2_small_geometry():
    """Why GPT-2 small cannot be compiled, from its shapes and the vector units' row
    limit (the compiler names these limits; checked on shapes so no 124M-parameter
    model is built)."""
    from gpt2accel.rtl.isa import MAX_VECTOR_N
    rows = {"the LM head's": 50257, "GELU's": 4 * 768}
    over = [f"{name} {n}-wide rows" for name, n in rows.items() if n > MAX_VECTOR_N]
    if over:
        return (f"does not compile yet: {' and '.join(over)} exceed the vector units' "
                f"MAX_VECTOR_N {MAX_VECTOR_N}")
    return "within the vector row limits now: needs a GPT-2-small-geometry model (not built)"


def _gpt2_small_cases(arr):
    return [{"model": "gpt2-small", "array": arr, "mode": mode, "T": t,
             "cycles_per_token": None, "utilization": None, "bytes_per_token": None,
             "error": _gpt2_small_geometry()} for mode, t in (("prefill", 1024), ("decode", 1))]


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
            total += f["rows"] * f["n"] * (2 + 4 + 2) + whole(f["q_base"])
        elif op == Op.EMBED:
            total += (f["rows"] * E * (1 + 1 + 2) + whole(f["wte_q_base"])
                      + whole(f["wpe_q_base"]))
        elif op == Op.REQUANT:
            total += f["rows"] * V * (4 + 2) + whole(f["q_base"])
    return total


def run(args):
    arrays = [tuple(int(x) for x in a.lower().split("x")) for a in args.arrays.split(",")]
    q = _tiny()
    n = q.config.n_positions
    cases = []
    for r, c in arrays:
        arr = f"{r}x{c}"
        try:
            cfg = machine_config(q, r, c, max_tokens=n)
            comp = ModelCompiler(cfg, q, n, 1 << cfg.engine.addr_bits)
        except (CompileError, ValueError) as e:     # the config cannot hold this model
            cases += [{"model": "tiny", "array": arr, "mode": mode, "T": t,
                       "cycles_per_token": None, "utilization": None, "bytes_per_token": None,
                       "error": str(e)} for mode, t in (("prefill", n), ("decode", 1))]
            cases += _gpt2_small_cases(arr)
            continue
        mem = comp.image()
        for mode, t, pos in (("prefill", n, 0), ("decode", 1, n - 1)):
            comp.write_ids(mem, np.arange(t) % q.config.vocab_size)
            cycles, _ = program_cycles(cfg, comp.program(t, pos), mem=mem)
            ops = comp.ops(t, pos)
            cases.append({"model": "tiny", "array": arr, "mode": mode, "T": t, "pos": pos,
                          "cycles": cycles, "cycles_per_token": cycles / t,
                          "utilization": program_macs(ops) / (r * c * cycles),
                          "bytes_per_token": traffic_bytes(comp, ops) / t})
        cases += _gpt2_small_cases(arr)
    return {"cases": cases, "mem_latency": "reference (sim.matmul_sim.REF_MEM_LATENCY)"}


def format_text(result):
    lines = [f"{'model':11} {'array':6} {'mode':8} {'T':>5} {'cycles/token':>13} "
             f"{'util':>6} {'bytes/token':>12}"]
    for c in result["cases"]:
        if c.get("cycles_per_token") is None:
            lines.append(f"{c['model']:11} {c['array']:6} {c['mode']:8} "
                         f"{c['T']:5d} {c['error']}")
            continue
        lines.append(f"{c['model']:11} {c['array']:6} {c['mode']:8} {c['T']:5d} "
                     f"{c['cycles_per_token']:13,.0f} {100 * c['utilization']:5.1f}% "
                     f"{c['bytes_per_token']:12,.0f}")
    return "\n".join(lines)
