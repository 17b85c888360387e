"""Board bitstreams: resources, Fmax, peak GOPS and projected tokens/s per preset.

Builds every board preset (`boards/presets.py`), or those named with
``--board``, one after the other with the YoWASP tools (`boards/build.py`):
the whole machine with on-chip memory for its model and the UART host link,
placed and routed for the preset's chip and clock. Per board: LUT/FF/DSP/
BRAM as nextpnr counts them, Fmax (nextpnr's, of the machine's clock, which
the preset sets below it), peak int8 GOPS = 2 x rows x cols x Fmax, and
tokens/s for the tiny model = Fmax / the exact cycles of one decode token at
the last position (`program_cycles`, as `bench model` times decode). A
board that does not fit or misses timing is listed with its figures and the
reason, and the build's 10 worst paths with the units (Amaranth hierarchy names)
they start and end in (`boards/paths.py`). ECP5 builds of the 8x8 machine take tens of minutes each;
``--reuse`` takes a board's finished build when its design files are
unchanged; ``--collect`` only lists the reports finished builds left (each
with the source revision it was built from).
"""
import json
import sys

HELP = "bitstreams of the board presets: resources, Fmax, GOPS, tokens/s, build time (slow)"


def add_arguments(parser):
    from gpt2accel.boards.presets import PRESETS
    parser.add_argument("--board", action="append", choices=sorted(PRESETS), default=None,
                        help="a board preset (repeat for several; default: every preset)")
    parser.add_argument("--out", default="build/boards",
                        help="build directories go in OUT/BOARD (default %(default)s)")
    parser.add_argument("--reuse", action="store_true",
                        help="use a board's finished build when its design files are unchanged")
    parser.add_argument("--collect", action="store_true",
                        help="build nothing: list the reports the builds in OUT left "
                             "(each names the source revision it was built from)")


def run(args):
    from pathlib import Path
    from gpt2accel.boards.build import REPORT_FILE, BuildError, build_board
    from gpt2accel.boards.presets import PRESETS
    boards = []
    for name in args.board or list(PRESETS):
        if args.collect:
            path = Path(args.out) / name / REPORT_FILE
            boards.append(json.loads(path.read_text()) if path.is_file() else
                          {"board": name, "status": "not built", "error": f"no {path}"})
            continue
        print(f"--- {name}", file=sys.stderr)
        try:
            boards.append(build_board(name, Path(args.out) / name, reuse=args.reuse))
        except BuildError as e:
            print(f"{name}: {e}", file=sys.stderr)
            boards.append(e.report or {"board": name, "status": "failed", "error": str(e)})
    return {"boards": boards}


def format_text(result):
    lines = [f"{'board':15} {'array':5} {'LUT':>7} {'FF':>7} {'DSP':>4} {'BRAM':>4} "
             f"{'clock':>7} {'Fmax':>7} {'GOPS':>6} {'tokens/s':>9} {'build':>7}  status"]
    for b in result["boards"]:
        def num(key, fmt):
            v = b.get(key)
            return format(v, fmt) if v is not None else "-"
        array = f"{b.get('rows', '?')}x{b.get('cols', '?')}"
        status = b.get("status", "?")
        if b.get("source"):
            status += f" (source {b['source']})"
        if b.get("error"):
            status += f": {b['error']}"
        lines.append(
            f"{b['board']:15} {array:5} {num('lut', ',d'):>7} {num('ff', ',d'):>7} "
            f"{num('dsp', 'd'):>4} {num('bram', 'd'):>4} {num('clock_mhz', '.1f'):>7} "
            f"{num('fmax_mhz', '.1f'):>7} {num('gops', '.2f'):>6} "
            f"{num('tokens_per_s', ',.0f'):>9} {num('build_s', '.0f'):>6}s  {status}")
        cp = b.get("critical_path")
        if cp:
            lines.append(f"{'':15} critical path: {cp['from_source']} -> {cp['to_source']} "
                         f"({cp['logic_levels']} logic levels, {cp['delay_ns']} ns)")
        paths = b.get("critical_paths") or []
        if paths:
            lines.append(f"{'':15} worst paths (ns, from unit: signal -> to unit: signal):")
        for p in paths:
            lines.append(f"{'':15} {p['delay_ns']:6.2f}  {p['from_unit']}: {p['from']} -> "
                         f"{p['to_unit']}: {p['to']}")
    lines.append("clock, Fmax: MHz; GOPS: 2 x rows x cols x Fmax (int8); tokens/s: the tiny "
                 "model's decode at Fmax")
    return "\n".join(lines)
