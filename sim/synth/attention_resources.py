"""FPGA resource estimates of the attention units (softmax, normaliser) from Yosys.

    python -m gpt2accel.sim.synth.attention_resources --size 16 [--family ecp5|ice40] [--json]

Synthesizes `SoftmaxUnit` and `Normaliser` alone (the attention controller
around them is mostly counters plus the matmul engine, see
`gpt2accel.sim.synth.resources`) with the benchmark's configuration for the
array, and prints the headline counts of `gpt2accel.sim.synth.resources.summarize`.
"""
import argparse
import json
import os
import subprocess
import tempfile

from amaranth.back import rtlil

from gpt2accel.rtl.normalise import Normaliser
from gpt2accel.rtl.softmax import SoftmaxUnit

from .resources import FAMILIES, _yosys, summarize

__all__ = ["unit_resources", "main"]


def unit_resources(unit, family="ecp5", top="top"):
    """Headline resources of one elaboratable unit."""
    fam = FAMILIES[family]
    text = rtlil.convert(unit, name=top)
    with tempfile.TemporaryDirectory() as tmp:
        with open(os.path.join(tmp, "unit.il"), "w") as f:
            f.write(text)
        script = (f"read_rtlil unit.il; {fam['synth'].format(top=top)}; "
                  "tee -q -o stat.json stat -json")
        subprocess.run([_yosys(), "-q", "-p", script], check=True,
                       stdout=subprocess.DEVNULL, cwd=tmp)
        with open(os.path.join(tmp, "stat.json")) as f:
            report = json.load(f)
    design = report.get("design") or report["modules"][f"\\{top}"]
    cells = {k.lstrip("\\$"): v for k, v in design["num_cells_by_type"].items()}
    return summarize(cells, family)


def main(argv=None):
    from gpt2accel.sim.bench.attention import config
    parser = argparse.ArgumentParser(prog="python -m gpt2accel.sim.synth.attention_resources",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=16, help="array rows = cols (default 16)")
    parser.add_argument("--family", choices=sorted(FAMILIES), default="ecp5")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    cfg = config(args.size)
    res = {"softmax": unit_resources(SoftmaxUnit(cfg), args.family),
           "normaliser": unit_resources(Normaliser(cfg), args.family)}
    if args.json:
        print(json.dumps(res))
        return
    for name, r in res.items():
        print(f"{name} ({args.size}x{args.size}, lanes {cfg.lanes}, norm_lanes {cfg.norm_lanes}, "
              f"block_rows {cfg.rows}) {args.family}: LUT {r['LUT']}  FF {r['FF']}  "
              f"DSP {r['DSP']}  BRAM {r['BRAM']}  (carry {r['carry']}, LUT-RAM {r['lutram']})")


if __name__ == "__main__":
    main()
