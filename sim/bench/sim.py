"""Co-simulation speed: Amaranth's simulator vs the fast (Verilator) backend on the same program.

The program is a real one: a decode token of the shipped tiny model (2
layers, n_embd 64, 4 heads) compiled by `ModelCompiler` for the 8x8 machine
of tests/rtl/test_machine_tiny.py. A prefill of `--prompt` tokens runs on
the fast backend first; from the memory it leaves, the first decode token
runs on BOTH backends, stall-free, in the same process, and must agree in
final memory, cycle count and logits (``bit_exact``). Simulated cycles per
second are cycles / wall time of the run (the Amaranth figure excludes
elaboration; the fast figure excludes the one-off Verilator build, reported
as ``compile_s``). Then `--tokens` more decode tokens run on the fast
backend alone for the seconds per token, each checked against
`QuantGPT2.forward`.
"""
import os
import tempfile
import time
import numpy as np

from gpt2accel.model import shipped_model_dir

HELP = "co-simulation speed: Amaranth simulator vs Verilator backend (tiny-model decode token)"

MODEL = shipped_model_dir() / "model.int8.safetensors"


def add_arguments(parser):
    parser.add_argument("--prompt", type=int, default=2, help="prefill tokens (default 2)")
    parser.add_argument("--tokens", type=int, default=8,
                        help="decode tokens timed on the fast backend (default 8)")
    parser.add_argument("--no-pysim", action="store_true",
                        help="skip the Amaranth simulator run (no ratio)")
    parser.add_argument("--fresh-build", action="store_true",
                        help="build in an empty cache, so compile_s is a real compile")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the random prompt and decode token ids (with --gpt2-small, "
                             "also of its random weights) (default %(default)s)")
    parser.add_argument("--gpt2-small", action="store_true",
                        help="also time one decode token of a random-weight GPT-2-small-"
                             "geometry model at position 32 (builds a second machine: "
                             "several minutes)")


def tiny_machine():
    """(AttentionConfig, QuantGPT2) of the shipped tiny model on an 8x8 machine."""
    from gpt2accel.model import quant as Q
    from gpt2accel.rtl.attention_config import AttentionConfig
    from gpt2accel.rtl.config import EngineConfig
    qm = Q.QuantGPT2.load(MODEL)
    cfg = AttentionConfig(engine=EngineConfig(rows=8, cols=8, max_k=256, max_m=8, max_n=256,
                                              addr_bits=16),
                          tile=qm.tile, lanes=2, norm_lanes=2, max_d_head=16,
                          max_seq=qm.config.n_positions)
    return cfg, qm


def run(args):
    from gpt2accel.model.gpt2 import KVCache
    from gpt2accel.rtl.isa import Error
    from gpt2accel.sim.harness import machine as machine_sim
    from gpt2accel.sim.host.compiler import ModelCompiler
    from gpt2accel.sim.fast import FastMachine
    from gpt2accel.sim.fast.build import build

    cfg, qm = tiny_machine()
    V = qm.config.vocab_size
    rng = np.random.default_rng(args.seed)
    ids = rng.integers(0, V, args.prompt + 1 + args.tokens)
    parts = [ids[:args.prompt]] + [ids[i:i + 1] for i in range(args.prompt, len(ids))]
    cache = KVCache(qm.config.n_layer)
    want = [qm.forward(p, cache) for p in parts]
    comp = ModelCompiler(cfg, qm, max_tokens=max(8, args.prompt), mem_words=1 << 16)

    saved = os.environ.get("GPT2ACCEL_CACHE")
    with tempfile.TemporaryDirectory() as tmp:
        if args.fresh_build:
            os.environ["GPT2ACCEL_CACHE"] = tmp
        try:
            _, info = build(cfg)
            m = FastMachine(cfg, 1 << 16)     # loads the library just built
        finally:
            if args.fresh_build:
                if saved is None:
                    del os.environ["GPT2ACCEL_CACHE"]
                else:
                    os.environ["GPT2ACCEL_CACHE"] = saved

    def check(res, logits_mem, i, what):
        if res["error"] != Error.NONE:
            raise RuntimeError(f"{what}: machine error {res['error']}")
        got = comp.read_rows(logits_mem, "logits", len(parts[i]), V)
        if not np.array_equal(got, want[i]):
            raise RuntimeError(f"{what}: logits differ from QuantGPT2.forward")

    with m:
        m.load(comp.image())
        comp.write_ids(m.mem, parts[0])
        check(m.run(comp.program(len(parts[0]), 0)), m.mem, 0, "prefill")
        pos = len(parts[0])
        comp.write_ids(m.mem, parts[1])
        start = m.dump()
        prog = comp.program(1, pos)
        fast = m.run(prog)
        check(fast, m.mem, 1, "first decode token (fast)")
        result = {"array": f"{cfg.engine.rows}x{cfg.engine.cols}", "model": "tiny (shipped)",
                  "program": f"decode token at position {pos}",
                  "instructions": len(prog), "cycles": fast["cycles"],
                  "compile_s": info["compile_s"], "verilog_s": info["verilog_s"],
                  "compile_cached": info["cached"]}
        if not args.no_pysim:
            slow_mem, (slow,) = machine_sim.run_programs(cfg, [prog], start, seed=args.seed)
            check(slow, slow_mem, 1, "first decode token (Amaranth)")
            result["bit_exact"] = bool(np.array_equal(slow_mem, m.mem)
                                       and slow["cycles"] == fast["cycles"])
            result["pysim_cycles_per_s"] = slow["outside_cycles"] / slow["wall_s"]
            result["pysim_s_per_token"] = slow["wall_s"]
        # the timed decode tokens: whole calls, Python side (program streaming) included
        cycles, t0 = 0, time.perf_counter()
        for i in range(1, len(parts)):
            if i > 1:
                comp.write_ids(m.mem, parts[i])
                prog = comp.program(1, pos)
                res = m.run(prog)
                check(res, m.mem, i, f"decode token {i}")
                cycles += res["sim_cycles"]
            else:
                cycles += fast["sim_cycles"]
            pos += 1
        wall = time.perf_counter() - t0 + fast["wall_s"]
        result["fast_tokens"] = len(parts) - 1
        result["fast_cycles_per_s"] = cycles / wall
        result["fast_s_per_token"] = wall / (len(parts) - 1)
    if "pysim_cycles_per_s" in result:
        result["ratio"] = result["fast_cycles_per_s"] / result["pysim_cycles_per_s"]
    else:
        result["pysim_cycles_per_s"] = result["ratio"] = None
    result["gpt2_small_decode_s"] = None
    if args.gpt2_small:
        result.update(gpt2_small_decode(args.seed))
    return result


def gpt2_small_decode(seed, pos=32):
    """Wall time of one decode token at `pos` of a random GPT-2-small-geometry model
    (12 layers, 768 wide, 12 heads, vocabulary 50257, context 1024) on the fast
    backend, 8x8 machine. The K/V of positions 0 .. pos-1 come from the golden
    model and are written by the host (`write_kv_cache`): simulating that prefill
    would cost as much as `pos / 8` decode tokens and tells nothing new. The
    token's logits must equal `QuantGPT2.forward` bit for bit."""
    from gpt2accel.model import quant as Q
    from gpt2accel.model.gpt2 import KVCache
    from gpt2accel.model.synthetic import random_gpt2
    from gpt2accel.rtl.isa import Error
    from gpt2accel.sim.host.compiler import ModelCompiler
    from gpt2accel.sim.host.driver import machine_config
    from gpt2accel.sim.fast import FastMachine
    from gpt2accel.sim.fast.build import build

    V = 50257
    fm = random_gpt2(seed=seed, vocab_size=V, n_positions=1024, n_embd=768, n_layer=12,
                     n_head=12)
    rng = np.random.default_rng(seed)
    qm = Q.QuantGPT2.from_float(fm, [rng.integers(0, V, 32) for _ in range(2)])
    del fm
    ids = rng.integers(0, V, pos + 1)
    cache = KVCache(qm.config.n_layer)
    qm.forward(ids[:pos], cache)
    prefix = KVCache(qm.config.n_layer)
    prefix.k, prefix.v = [k.copy() for k in cache.k], [v.copy() for v in cache.v]
    want = qm.forward(ids[pos:], cache)
    cfg = machine_config(qm, 8, 8, max_tokens=8, addr_bits=24)
    comp = ModelCompiler(cfg, qm, max_tokens=8, mem_words=1 << 24)
    t0 = time.perf_counter()
    _, info = build(cfg)
    build_s = time.perf_counter() - t0
    with FastMachine(cfg, 1 << 24) as m:
        m.load(comp.image())
        comp.write_kv_cache(m.mem, prefix)
        comp.write_ids(m.mem, ids[pos:])
        prog = comp.program(1, pos)
        t0 = time.perf_counter()
        res = m.run(prog, timeout=1 << 30)
        wall = time.perf_counter() - t0
        if res["error"] != Error.NONE:
            raise RuntimeError(f"GPT-2 small decode: machine error {res['error']}")
        exact = bool(np.array_equal(comp.read_rows(m.mem, "logits", 1, V), want))
    if not exact:
        raise RuntimeError("GPT-2 small decode: logits differ from QuantGPT2.forward")
    return {"gpt2_small_decode_s": wall, "gpt2_small_cycles": res["cycles"],
            "gpt2_small_build_s": build_s, "gpt2_small_bit_exact": exact}


def format_text(result):
    r = result
    lines = [f"Co-simulation speed, {r['model']} model on a {r['array']} machine, "
             f"{r['program']} ({r['instructions']} instructions, {r['cycles']} cycles):", ""]
    if r.get("pysim_cycles_per_s"):
        lines.append(f"  Amaranth simulator : {r['pysim_cycles_per_s']:12,.0f} cycles/s  "
                     f"{r['pysim_s_per_token']:8.2f} s/token")
    lines.append(f"  fast (Verilator)   : {r['fast_cycles_per_s']:12,.0f} cycles/s  "
                 f"{r['fast_s_per_token']:8.4f} s/token (mean of {r['fast_tokens']} tokens)")
    if r.get("ratio"):
        lines.append(f"  ratio              : {r['ratio']:12,.0f} x   "
                     f"bit-exact (memory, cycles): {r['bit_exact']}")
    build = ("cached (use --fresh-build to time a compile)" if r["compile_cached"] else
             f"{r['compile_s']:.1f} s Verilator + C++, {r['verilog_s']:.1f} s Verilog")
    lines += ["", f"  build: {build}",
              ("  GPT-2-small-geometry decode token at position 32: "
               f"{r['gpt2_small_decode_s']:.1f} s ({r['gpt2_small_cycles']:,} cycles, "
               f"bit-exact; machine build {r['gpt2_small_build_s']:.0f} s)"
               if r.get("gpt2_small_decode_s") is not None else
               "  GPT-2-small-geometry decode token: not measured (--gpt2-small)")]
    return "\n".join(lines)
