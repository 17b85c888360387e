"""Matmul engine: cycle-model utilisation on GPT-2-small layers, and pysim speed."""
import numpy as np

from gpt2accel.rtl.config import EngineConfig
from gpt2accel.sim.cycles.matmul import REF_MEM_LATENCY, matmul_cycles

HELP = "matmul engine utilisation on GPT-2-small shapes (cycle model) and simulator speed"

#: GPT-2-small linear layers as (K, N): d_model 768, 4x FFN.
LAYERS = {
    "qkv": (768, 2304),
    "attn_proj": (768, 768),
    "ffn_up": (768, 3072),
    "ffn_down": (3072, 768),
}


def add_arguments(parser):
    parser.add_argument("--arrays", default="8x8,12x12,16x16",
                        help="comma-separated array sizes RxC (default %(default)s)")
    parser.add_argument("--tokens", default="1,1024",
                        help="comma-separated T values: 1 = decode, 1024 = prefill")
    parser.add_argument("--no-pysim", action="store_true",
                        help="skip the Amaranth simulator speed measurement")


def _arrays(spec):
    return [tuple(int(x) for x in a.lower().split("x")) for a in spec.split(",")]


def measure_pysim(rows=8, cols=8, seed=0):
    """Simulated cycles per second of an RxC engine on a small real run (stall-free)."""
    from gpt2accel.sim.harness.matmul import MatmulCase, simulate
    cfg = EngineConfig(rows=rows, cols=cols)
    rng = np.random.default_rng(seed)
    cases = []
    for m, k, n in [(16, 96, 24), (9, 40, 17)]:
        cases.append(MatmulCase(rng.integers(-128, 128, (m, k)), rng.integers(-128, 128, (k, n)),
                                rng.integers(-1000, 1000, n), rng.integers(0, 1 << 15, n),
                                rng.integers(8, 20, n)))
    _, _, stats = simulate(cfg, cases, seed=seed)
    return stats["cycles"] / stats["wall_s"], stats["cycles"]


def run(args):
    cases = []
    for rows, cols in _arrays(args.arrays):
        cfg = EngineConfig(rows=rows, cols=cols)
        for t in (int(x) for x in args.tokens.split(",")):
            for layer, (k, n) in LAYERS.items():
                r = matmul_cycles(cfg, t, k, n)
                cases.append({"array": f"{rows}x{cols}", "layer": layer, "T": t,
                              "M": t, "K": k, "N": n, "cycles": r.cycles,
                              "utilisation": r.utilisation(cfg)})
    result = {"mem_latency": REF_MEM_LATENCY, "cases": cases, "pysim_cycles_per_s": None}
    if not args.no_pysim:
        speed, cycles = measure_pysim()
        result["pysim_cycles_per_s"] = speed
        result["pysim_cycles"] = cycles
    return result


def format_text(result):
    lines = ["Matmul engine utilisation (useful MACs / (rows*cols*cycles)), cycle model,",
             f"reference memory latency {result['mem_latency']} cycles:", ""]
    lines.append(f"{'array':>6} {'layer':>10} {'T':>5} {'M x K x N':>18} {'cycles':>10} {'util':>7}")
    for c in result["cases"]:
        shape = f"{c['M']}x{c['K']}x{c['N']}"
        lines.append(f"{c['array']:>6} {c['layer']:>10} {c['T']:>5} {shape:>18} "
                     f"{c['cycles']:>10} {100 * c['utilisation']:6.2f}%")
    if result.get("pysim_cycles_per_s"):
        lines += ["", f"Amaranth simulator, 8x8 engine: {result['pysim_cycles_per_s']:.0f} "
                      f"simulated cycles/s ({result['pysim_cycles']} cycles)"]
    return "\n".join(lines)
