"""The `gpt2accel` command line: demo, generate, bench, verilog."""
import argparse
import json
import os
import sys
import time
from importlib import resources
from pathlib import Path

__all__ = ["main", "resolve_model_dir"]

#: Models shipped inside the package, by name.
SHIPPED_MODELS = {"tiny": "tiny"}


class UsageError(Exception):
    """A problem with what the user asked for, reported as one line."""


def resolve_model_dir(name):
    """`tiny` (shipped) or a path to a HF GPT-2 checkpoint directory."""
    if name in SHIPPED_MODELS:
        path = Path(str(resources.files("gpt2accel.model") / SHIPPED_MODELS[name]))
        if not (path / "model.safetensors").is_file():
            raise UsageError(f"the shipped model {name!r} is missing from {path}")
        return path
    path = Path(name)
    if not path.is_dir():
        raise UsageError(f"--model {name!r}: not a shipped model ({', '.join(SHIPPED_MODELS)}) "
                         f"and not a directory")
    return path


def _load_backend(model_dir, backend):
    """The model that computes logits for `backend` (float or int)."""
    from gpt2accel.model import GPT2
    float_model = GPT2.from_pretrained(model_dir)
    if backend == "float":
        return float_model
    from gpt2accel.model.quant import load_or_quantise
    return load_or_quantise(model_dir, float_model)


def cmd_generate(args):
    from gpt2accel.model.tokenizer import load_tokenizer
    model_dir = resolve_model_dir(args.model)
    tok = load_tokenizer(model_dir)
    prompt_ids = tok.encode(args.prompt)
    if not prompt_ids:
        raise UsageError("--prompt is empty: give at least one character of text")
    model = _load_backend(model_dir, args.backend)
    if args.max_new_tokens is None:
        # Fill the context: the KV cache, like the hardware's, holds n_positions.
        args.max_new_tokens = max(0, model.config.n_positions - len(prompt_ids))
    out = sys.stdout
    out.write(args.prompt)
    out.flush()
    t0 = time.perf_counter()

    # Characters may span several BPE tokens: decode the whole tail each time
    # and print only what is new, so multi-byte characters come out whole.
    new_ids, printed = [], 0

    def on_token(token):
        nonlocal printed
        new_ids.append(token)
        text = tok.decode(new_ids)
        if not text.endswith("\ufffd"):
            out.write(text[printed:])
            out.flush()
            printed = len(text)

    model.generate(prompt_ids, args.max_new_tokens, temperature=args.temperature,
                   top_k=args.top_k, seed=args.seed, on_token=on_token)
    text = tok.decode(new_ids)
    out.write(text[printed:] + "\n")
    dt = time.perf_counter() - t0
    print(f"[{len(new_ids)} tokens, backend {args.backend}, {dt:.2f} s, "
          f"{len(new_ids) / dt if dt else 0:.1f} tokens/s]", file=sys.stderr)


def cmd_demo(args):
    args.model, args.backend = "tiny", "float"
    print("gpt2accel demo: the shipped tiny Shakespeare GPT-2, float reference model\n",
          file=sys.stderr)
    cmd_generate(args)


def cmd_bench(args):
    from gpt2accel.sim import benchmarks
    mod = benchmarks.load(args.name)
    result = mod.run(args)
    if args.json:
        print(json.dumps(result))
    else:
        print(mod.format_text(result))


def cmd_quantise(args):
    from gpt2accel.model import GPT2
    from gpt2accel.model.quant import QuantGPT2, calibration_ids
    model_dir = resolve_model_dir(args.model)
    float_model = GPT2.from_pretrained(model_dir)
    print(f"calibrating on {args.windows} windows of text ...", file=sys.stderr)
    calib = calibration_ids(model_dir, float_model.config, windows=args.windows)
    q = QuantGPT2.from_float(float_model, calib)
    q.save(args.output)
    print(f"wrote {args.output}: the integer model of {model_dir} "
          f"(tile {q.tile}, residual {q.resid_bits} bits, logits {q.logit_bits} bits)",
          file=sys.stderr)


def cmd_verilog(args):
    from gpt2accel.rtl.config import EngineConfig
    from gpt2accel.rtl.verilog import generate
    cfg = EngineConfig(rows=args.rows, cols=args.cols, mem_bytes=args.mem_bytes,
                       max_k=args.max_k)
    print(f"elaborating a {cfg.rows}x{cfg.cols} matmul engine and converting it with Yosys "
          f"(the first run compiles Yosys to native code, ~1 minute) ...", file=sys.stderr)
    text = generate(cfg, args.name)
    if args.output == "-":
        sys.stdout.write(text)
    else:
        Path(args.output).write_text(text)
        print(f"wrote {args.output} ({len(text.splitlines())} lines, top module {args.name})",
              file=sys.stderr)


def _add_sampling(p, max_new_tokens):
    p.add_argument("--prompt", default="ROMEO:", help="text to continue (default: %(default)s)")
    p.add_argument("--max-new-tokens", type=int, default=max_new_tokens, metavar="N",
                   help="tokens to generate (default: %s)" % (
                       "fill the model's context" if max_new_tokens is None else max_new_tokens))
    p.add_argument("--temperature", type=float, default=0.8,
                   help="sampling temperature, 0 = greedy (default: %(default)s)")
    p.add_argument("--top-k", type=int, default=20, metavar="K",
                   help="sample only among the K most likely tokens, 0 = all "
                        "(default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")


def build_parser():
    parser = argparse.ArgumentParser(
        prog="gpt2accel",
        description="gpt2-accel: a systolic-array GPT-2 inference accelerator in Amaranth HDL, "
                    "with its float and integer golden models.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("demo", help="generate Shakespeare-shaped text with the shipped tiny model",
                       description="Generate text from the shipped tiny Shakespeare model.")
    _add_sampling(p, None)
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("generate", help="generate text from a GPT-2 model",
                       description="Generate text from a GPT-2 model on a chosen backend.")
    p.add_argument("--model", default="tiny",
                   help="'tiny' (shipped) or a HF GPT-2 checkpoint directory with config.json "
                        "and model.safetensors (default: %(default)s)")
    p.add_argument("--backend", choices=["float", "int"], default="float",
                   help="float: the float32 reference; int: the integer golden model "
                        "(default: %(default)s)")
    _add_sampling(p, 100)
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("quantise", help="quantise a GPT-2 into the integer golden model's file",
                       description="Post-training quantisation (docs/numerics.md): calibrate "
                                   "on Shakespeare text and write the integer model, which "
                                   "`generate --backend int` uses when it sits in the "
                                   "checkpoint directory as model.int8.safetensors.")
    p.add_argument("model", help="'tiny' or a HF GPT-2 checkpoint directory")
    p.add_argument("-o", "--output", required=True, help="output .safetensors file")
    p.add_argument("--windows", type=int, default=32,
                   help="calibration windows of text (default: %(default)s)")
    p.set_defaults(func=cmd_quantise)

    from gpt2accel.rtl.config import EngineConfig
    p = sub.add_parser("verilog", help="emit the engine as Verilog",
                       description="Emit the matmul engine as Verilog (via Yosys, from PyPI).")
    p.add_argument("--rows", type=int, default=8, help="array rows (default: %(default)s)")
    p.add_argument("--cols", type=int, default=8, help="array columns (default: %(default)s)")
    p.add_argument("--mem-bytes", type=int, default=None,
                   help="memory word width in bytes (default: 2*cols)")
    p.add_argument("--max-k", type=int, default=EngineConfig.max_k,
                   help="largest K, the A scratchpad depth (default: %(default)s)")
    p.add_argument("--name", default="gpt2accel_matmul", help="top module name")
    p.add_argument("-o", "--output", default="-", help="output file, '-' for stdout")
    p.set_defaults(func=cmd_verilog)

    from gpt2accel.sim import benchmarks
    p = sub.add_parser("bench", help="measure speed, utilisation, accuracy, resources",
                       description="Run a benchmark and report its figures.")
    bsub = p.add_subparsers(dest="name", required=True, metavar="NAME")
    for name in benchmarks.available():
        mod = benchmarks.load(name)
        bp = bsub.add_parser(name, help=mod.HELP, description=mod.HELP)
        bp.add_argument("--json", action="store_true", help="print one JSON object")
        mod.add_arguments(bp)
    p.set_defaults(func=cmd_bench)
    return parser


def main(argv=None):
    from gpt2accel.model.checkpoint import CheckpointError
    from gpt2accel.model.tokenizer import TokenizerError
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    except (UsageError, CheckpointError, TokenizerError, ValueError, OSError) as e:
        if os.environ.get("GPT2ACCEL_TRACEBACK"):
            raise
        print(f"gpt2accel: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
