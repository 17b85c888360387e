"""The `gpt2accel` command line: demo, generate, bench, verilog, build, sweep."""
import argparse
import io
import json
import os
import sys
import time
from importlib import resources
from pathlib import Path

# the registry alone (cheap): the hardware is imported when a backend is made
from gpt2accel.sim.host.backends import BACKENDS, make_backend

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


def _backend_help(names, notes=None):
    """`--backend`'s help: each of `names` with its registry line (and a note)."""
    notes = notes or {}
    return "; ".join(f"{n}: {BACKENDS[n].help}{notes.get(n, '')}" for n in names)


def _load_backend(model_dir, backend):
    """The model that computes logits for `backend` (float or int)."""
    from gpt2accel.model import GPT2, progress
    weights = Path(model_dir) / "model.safetensors"
    size = weights.stat().st_size if weights.is_file() else 0
    with progress.step(f"loading the float model {weights} ({size / 1e6:.1f} MB)"):
        float_model = GPT2.from_pretrained(model_dir)
    if backend == "float":
        return float_model
    from gpt2accel.model.quant import load_or_quantise
    return load_or_quantise(model_dir, float_model)


def _same_destination(a, b):
    """Whether streams `a` and `b` end in the same terminal, pipe or file (as with
    `2>&1`), where lines written to one can land in the middle of the other's."""
    try:
        sa, sb = os.fstat(a.fileno()), os.fstat(b.fileno())
    except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
        return False
    return (sa.st_dev, sa.st_ino) == (sb.st_dev, sb.st_ino)


def _check_sampling(args):
    """The sampling and machine options, each refused in one line before anything runs."""
    if args.max_new_tokens is not None and args.max_new_tokens < 0:
        raise UsageError(f"--max-new-tokens {args.max_new_tokens}: must be 0 or more")
    if not (args.temperature >= 0 and args.temperature != float("inf")):
        raise UsageError(f"--temperature {args.temperature}: must be a finite number >= 0 "
                         f"(0 = greedy)")
    if args.top_k < 0:
        raise UsageError(f"--top-k {args.top_k}: must be 0 (all tokens) or more")
    if args.seed < 0:
        raise UsageError(f"--seed {args.seed}: must be 0 or more")
    if BACKENDS[args.backend].hardware:
        for name in ("rows", "cols"):
            if getattr(args, name) < 1:
                raise UsageError(f"--{name} {getattr(args, name)}: the array needs at least "
                                 f"one {name[:-1]}")
    if getattr(args, "vcd", None) and args.backend != "pysim":
        raise UsageError("--vcd needs --backend pysim (the Amaranth simulator writes the "
                         "waveform; Verilator and the other backends do not)")


def _check_memory(args):
    """--memory and --board, refused in one line before anything loads or builds."""
    memory, board = getattr(args, "memory", "ideal"), getattr(args, "board", None)
    if memory != "dram":
        if board is not None:
            raise UsageError("--board needs --memory dram (it names the DRAM to simulate)")
        return
    if args.backend != "fast":
        raise UsageError(f"--memory dram needs --backend fast (the DRAM is co-simulated in "
                         f"Verilator), not --backend {args.backend}")
    from gpt2accel.boards.dram import BOARDS, DramConfigError, DramGenError, dram_bytes
    if board is None:
        raise UsageError(f"--memory dram needs --board ({', '.join(BOARDS)})")
    if board not in BOARDS:
        raise UsageError(f"--board {board!r}: no DRAM config for it (boards with one: "
                         f"{', '.join(BOARDS)})")
    try:
        args.dram_bytes = dram_bytes(board)
    except (DramConfigError, DramGenError) as e:
        raise UsageError(f"--memory dram: {e}") from None


def cmd_generate(args):
    from gpt2accel.model import progress
    from gpt2accel.model.checkpoint import load_config
    from gpt2accel.model.tokenizer import announce, load_tokenizer
    model_dir = resolve_model_dir(args.model)
    _check_sampling(args)
    if getattr(args, "port", None) and args.backend != "serial":
        raise UsageError("--port needs --backend serial")
    if args.backend == "serial" and not args.port:
        raise UsageError("--backend serial needs --port (e.g. /dev/ttyUSB0)")
    _check_memory(args)
    batch = getattr(args, "batch", 1)
    if batch < 1:
        raise UsageError(f"--batch {batch}: must be 1 or more")
    if batch > 1 and args.backend not in ("pysim", "fast"):
        raise UsageError(f"--batch {batch} needs --backend pysim or fast (the simulated "
                         f"machine decodes the samples together)")
    # the geometry alone (config.json), so a prompt that cannot fit is refused before
    # any weights load, anything is printed or a machine is built
    n_ctx = load_config(model_dir).n_positions
    tok = load_tokenizer(model_dir, announce_choice=False)    # named once the input is good

    def encode(prompt):
        ids = tok.encode(prompt)
        if not ids:
            raise UsageError("--prompt is empty: give at least one character of text")
        if len(ids) > n_ctx:
            raise UsageError(f"--prompt is {len(ids)} tokens, longer than the model's "
                             f"context of {n_ctx}")
        return ids

    def check_length(prompt_ids):
        if args.max_new_tokens is not None and len(prompt_ids) + args.max_new_tokens > n_ctx:
            raise UsageError(f"--prompt ({len(prompt_ids)} tokens) + --max-new-tokens "
                             f"({args.max_new_tokens}) = {len(prompt_ids) + args.max_new_tokens}"
                             f" exceeds the model's context of {n_ctx} tokens")

    if args.prompt is not None:
        prompt_ids = encode(args.prompt)
        check_length(prompt_ids)
    hardware = BACKENDS[args.backend].hardware
    announce(tok)
    model = _load_backend(model_dir, "int" if hardware else args.backend)
    run = _HardwareRun(model, args) if hardware else None
    if run is not None:
        run.token_text = lambda t: tok.decode([t])
    # the demo's defaults depend on how fast the simulation that actually runs is
    defaults = getattr(args, "demo_defaults", {}).get(run.backend_name if run else "float")
    if args.prompt is None:
        args.prompt = defaults[0]
        prompt_ids = encode(args.prompt)
    if args.max_new_tokens is None and defaults:
        args.max_new_tokens = defaults[1]
    if args.max_new_tokens is None:
        # Fill the context: the KV cache, like the hardware's, holds n_positions.
        args.max_new_tokens = max(0, n_ctx - len(prompt_ids))
    check_length(prompt_ids)
    if batch > 1:
        run.generate_batch(model.check_ids(prompt_ids), args, tok, sys.stdout)
        return
    # The demo shows a one-line progress bar and prints the text at the end. generate
    # streams the text as it comes, except where the simulated machine's status lines
    # (stderr) would land in the middle of it: stdout and stderr going to one terminal,
    # pipe or file. There the text is printed whole at the end, each status line naming
    # the token it simulates.
    bar = getattr(args, "demo_defaults", None) is not None and run is not None
    if run is not None:
        run.bar_total = args.max_new_tokens if bar else None
    whole = bar or (run is not None and progress.enabled()
                    and _same_destination(sys.stdout, sys.stderr))
    if whole and not bar:
        progress.note("stdout and stderr share one terminal or file: the text follows the "
                      "simulation's status lines, whole")
    out = io.StringIO() if whole else sys.stdout
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

    if hardware:
        from gpt2accel.model.gpt2 import generate_tokens
        generate_tokens(run.step, model.config, model.check_ids(prompt_ids),
                        args.max_new_tokens, args.temperature, args.top_k, args.seed, on_token)
    else:
        model.generate(prompt_ids, args.max_new_tokens, temperature=args.temperature,
                       top_k=args.top_k, seed=args.seed, on_token=on_token)
    text = tok.decode(new_ids)
    out.write(text[printed:] + "\n")
    if whole:
        if bar:
            print(file=sys.stderr)
        sys.stdout.write(out.getvalue())
        sys.stdout.flush()
    dt = time.perf_counter() - t0
    print(f"[{len(new_ids)} token{'' if len(new_ids) == 1 else 's'}, backend {run.backend_name if hardware else args.backend}, "
          f"{dt:.2f} s, {len(new_ids) / dt if dt else 0:.1f} tokens/s]", file=sys.stderr)
    if hardware:
        run.summary(len(new_ids))


class _HardwareRun:
    """Generation whose logits come from the simulated machine (`sim.host.driver.Driver`):
    one program per step (prefill, then one per token), a status line per program
    with the machine's cycles next to the cycle model's, `--check` against QuantGPT2."""

    def __init__(self, qmodel, args):
        from gpt2accel.model import progress
        from gpt2accel.sim.host.driver import Driver
        cfg = _machine_config(qmodel, args)       # refused here, before any build
        batch = getattr(args, "batch", 1)
        backend = args.backend
        if args.vcd and backend != "pysim":
            raise UsageError("--vcd needs --backend pysim (the Amaranth simulator)")
        self.dram = getattr(args, "memory", "ideal") == "dram"
        fast_kw = {}
        if self.dram:
            from gpt2accel.sim.host.driver import map_words
            need = map_words(qmodel, cfg, batch=batch)
            have = args.dram_bytes // cfg.engine.mem_bytes
            if need > have:
                raise UsageError(
                    f"--board {args.board}: the memory image is {need * cfg.engine.mem_bytes:,}"
                    f" bytes, larger than its DRAM of {args.dram_bytes:,} bytes")
            fast_kw = {"memory": "dram", "board": args.board}
        if backend == "fast" and self.dram:
            from gpt2accel.sim.fast import FastBackendUnavailable
            try:
                be = make_backend("fast", **fast_kw)
                be.open(cfg, 1)               # generates the core, builds or loads the model
                if be.m.build_info["cached"]:
                    progress.note(f"fast backend: the Verilated machine on {args.board}'s DRAM "
                                  f"from the cache {be.m.path.parent}")
                be.close()
            except FastBackendUnavailable as e:
                raise UsageError(f"--memory dram needs Verilator: {e}") from None
        elif backend == "fast":
            from gpt2accel.sim.fast import FastBackendUnavailable
            try:
                probe = make_backend("fast")
                probe.open(cfg, 1)                  # builds (with progress) or loads the model
                if probe.m.build_info["cached"]:
                    progress.note(f"fast backend: the Verilated machine from the cache "
                                  f"{probe.m.path.parent}")
                probe.close()
            except FastBackendUnavailable as e:
                print(f"[fast backend unavailable ({e}); using the Amaranth simulator]",
                      file=sys.stderr)
                backend = "pysim"
        be, mem_words = (make_backend("fast", **fast_kw) if self.dram else backend), None
        if args.vcd:
            be = make_backend("pysim", vcd=args.vcd)
        if BACKENDS[backend].kind == "board":
            be, mem_words = _board_backend(args, cfg, qmodel)
        self.backend_name, self.cfg = backend, cfg
        self.drv = Driver(qmodel, cfg, be, mem_words=mem_words, check=args.check, batch=batch)
        print(f"[machine {args.rows}x{args.cols} array, max_m {cfg.engine.max_m}, "
              f"{self.drv.mem_words:,} words of {cfg.engine.mem_bytes} bytes "
              f"(addr_bits {cfg.engine.addr_bits}); backend {backend}"
              f"{f' on {args.board} DRAM (LiteDRAM PHY model)' if self.dram else ''}"
              f"{', checking every step against QuantGPT2' if args.check else ''}]",
              file=sys.stderr)
        self.drv.load()
        self.tokens = 0
        self.bar_total = None

    def step(self, ids, cache):
        from gpt2accel.model import progress
        mode = "prefill" if self.drv.pos == 0 else "decode"
        if mode == "prefill":
            what = f"prefill {len(ids)} token{'' if len(ids) == 1 else 's'}"
        else:
            # the token fed in is the one just generated: naming it lets the status lines
            # show the text growing when the text itself is held back to the end
            name = getattr(self, "token_text", None)
            what = (f"token {name(ids[0])!r} at position {self.drv.pos}" if name
                    else f"token at position {self.drv.pos}")
        m = self.cfg.engine.max_m

        def on_program(r):
            r["mode"] = mode
            if len(ids) > m and self.bar_total is None:
                # a long prompt runs in programs of max_m: show each
                progress.note(f"  positions {r['pos']}..{r['pos'] + r['T'] - 1} of {len(ids)}:"
                              f" {r['cycles']:,} cycles, {r['wall_s']:.1f} s")

        self.drv.on_program = on_program
        n0 = len(self.drv.history)
        ok = ", logits equal QuantGPT2" if self.drv.check else ""

        def done():
            runs = self.drv.history[n0:]
            cyc = sum(r["cycles"] for r in runs)
            pred = sum(r["predicted_cycles"] for r in runs)
            if self.dram:
                return (f"{cyc:,} cycles on DRAM (ideal-memory cycle model {pred:,}, "
                        f"{cyc / pred - 1:+.1%}); {_dram_line(runs)}{ok}")
            return f"{cyc:,} cycles (cycle model {pred:,}){ok}"

        if self.bar_total is None:
            with progress.step(f"simulating {what}", done=done):
                logits = self.drv.prefill(ids) if mode == "prefill" else self.drv.decode(ids[0])
        else:
            logits = self.drv.prefill(ids) if mode == "prefill" else self.drv.decode(ids[0])
            runs = self.drv.history[n0:]
            self._bar(mode, sum(r["cycles"] for r in runs),
                      sum(r["predicted_cycles"] for r in runs))
        return self.drv.logits_float(logits[-1])

    def generate_batch(self, prompt_ids, args, tok, out):
        """`--batch N`: the prompt prefilled as N sequences, then one batched decode
        program per step; sample b draws with seed + b, so it is the text
        `generate --seed <seed + b>` gives. The samples go to stdout one after the
        other, each under a line naming it."""
        import numpy as np
        from gpt2accel.model import progress
        from gpt2accel.model.gpt2 import sample_next
        n, drv = self.drv.batch, self.drv

        def on_program(r):
            r["mode"] = "decode" if "batch" in r else "prefill"

        drv.on_program = on_program
        rngs = [np.random.default_rng(args.seed + b) for b in range(n)]
        logits = []
        for b in range(n):
            with progress.step(f"simulating prefill {len(prompt_ids)} tokens of sample {b}"):
                logits.append(drv.logits_float(drv.prefill(prompt_ids, seq=b)[-1]))
        samples = [[] for _ in range(n)]
        steps = args.max_new_tokens
        for k in progress.bar(range(steps), f"decoding {n} samples together", unit="steps"):
            tokens = [sample_next(logits[b], args.temperature, args.top_k, rngs[b])
                      for b in range(n)]
            for b, t in enumerate(tokens):
                samples[b].append(t)
            if k + 1 < steps:
                logits = [drv.logits_float(row) for row in drv.decode_batch(tokens)]
        for b, ids in enumerate(samples):
            out.write(f"{'' if b == 0 else chr(10)}=== sample {b} (seed {args.seed + b}) ===\n"
                      f"{args.prompt}{tok.decode(ids)}\n")
        out.flush()
        self.summary(n * steps)

    def _bar(self, mode, cycles, predicted):
        """One progress line for the demo: tokens done, this step's cycles vs the model."""
        from gpt2accel.model import progress
        if mode == "decode":
            self.tokens += 1
        done = self.tokens + 1           # the prefill's logits give the first token
        if not progress.enabled():
            return
        tty = sys.stderr.isatty()
        width = 30
        fill = width * min(done, self.bar_total) // max(self.bar_total, 1)
        same = "=" if cycles == predicted else "!="
        line = (f"[{'#' * fill}{'.' * (width - fill)}] {min(done, self.bar_total)}/"
                f"{self.bar_total} tokens  last step {cycles:,} cycles {same} cycle model"
                f"{'  checked' if self.drv.check else ''}")
        print(f"\r{line}" if tty else line, file=sys.stderr, end="" if tty else "\n",
              flush=True)

    def summary(self, new_tokens):
        """Per-mode cycles/token, MAC utilisation, and tokens/s projected at the clocks
        the board presets that hold the whole machine run at (boards/presets.py)."""
        e = self.cfg.engine
        boards = _board_clocks()
        rows = []
        for mode in ("prefill", "decode"):
            h = [r for r in self.drv.history if r["mode"] == mode]
            if not h:
                continue
            toks = sum(r["T"] for r in h)
            cyc = sum(r["cycles"] for r in h)
            util = sum(r["macs"] for r in h) / (e.rows * e.cols * cyc)
            wall = sum(r["wall_s"] for r in h)
            rows.append((mode, toks, cyc / toks, util, [hz * toks / cyc for _, hz, _ in boards],
                         wall / toks))
        heads = [f"tok/s {name} {hz / 1e6:g} MHz" for name, hz, _ in boards]
        print(f"\n{'mode':8} {'tokens':>6} {'cycles/token':>13} {'MAC util':>9} "
              + "".join(f"{h:>{len(h) + 2}}" for h in heads)
              + f" {'sim s/token':>12}", file=sys.stderr)
        for mode, toks, cpt, util, tps, spt in rows:
            print(f"{mode:8} {toks:6d} {cpt:13,.0f} {100 * util:8.1f}% "
                  + "".join(f"{t:>{len(h) + 2},.0f}" for t, h in zip(tps, heads))
                  + f" {spt:12.1f}", file=sys.stderr)
        arrays = sorted({a for _, _, a in boards})
        other = "" if arrays == [(e.rows, e.cols)] else (
            f"; those builds are of the {', '.join(f'{r}x{c}' for r, c in arrays)} array, "
            f"this run's {e.rows}x{e.cols} array may clock differently")
        print(f"(tokens/s: these cycles at the clocks of the board presets that hold the whole "
              f"machine, each below its measured Fmax; docs/performance.md \"Boards\"{other})",
              file=sys.stderr)
        if self.dram:
            for mode in ("prefill", "decode"):
                h = [r for r in self.drv.history if r["mode"] == mode]
                if h:
                    toks = sum(r["T"] for r in h)
                    cyc = sum(r["cycles"] for r in h)
                    pred = sum(r["predicted_cycles"] for r in h)
                    print(f"{mode} on {self.drv.backend.board}'s DRAM: {cyc / toks:,.0f} "
                          f"cycles/token, the ideal-memory cycle model {pred / toks:,.0f} "
                          f"({cyc / pred - 1:+.1%}); {_dram_line(h, toks)}", file=sys.stderr)


def _dram_line(runs, per=None):
    """The DRAM commands of `runs` (in total, or per token when `per` tokens ran)."""
    tot = {k: sum(r["dram"][k] for r in runs) for k in runs[0]["dram"]}
    f = (lambda n: f"{n / per:,.0f}") if per else (lambda n: f"{n:,}")
    return (f"{'per token: ' if per else ''}{f(tot['ref'])} refreshes, {f(tot['act'])} row "
            f"opens, {f(tot['pre'] + tot['ap'])} bank conflicts (a row closed for another), "
            f"{f(tot['rd'])} read and {f(tot['wr'])} write bursts")


def _board_clocks():
    """(preset, clock Hz, (rows, cols)) of each board preset that holds the whole machine
    (not a MATMUL-only co-processor), whose clock a demo's cycles can be projected at."""
    from gpt2accel.boards.presets import PRESETS
    return [(p.name, p.clk_hz, (p.rows, p.cols)) for p in PRESETS.values() if p.ops is None]


def _machine_config(qmodel, args):
    """The machine of --rows x --cols for `qmodel`, its address width --addr-bits or (by
    default) sized from the model's memory map; what does not fit is a UsageError."""
    from gpt2accel.sim.host.driver import MachineSizeError, array_error, machine_config
    batch = getattr(args, "batch", 1)
    from gpt2accel.rtl.config import EngineConfig
    mem_bytes = getattr(args, "mem_bytes", None)
    word = "" if mem_bytes is None else f" --mem-bytes {mem_bytes}"
    try:
        EngineConfig(rows=args.rows, cols=args.cols, mem_bytes=mem_bytes)   # each in range
        # The RTL would refuse such an array only once built, and the memory map assumes
        # a valid word: checked first, so the message names the array, not a layout.
        problem = array_error(args.cols, mem_bytes)
        if problem:
            raise UsageError(f"--rows {args.rows} --cols {args.cols}{word}: {problem}")
        cfg = machine_config(qmodel, args.rows, args.cols, addr_bits=args.addr_bits,
                             mem_bytes=mem_bytes)
        cfg.check_engine()            # the word against the attention's reads, before a build
        if batch > cfg.engine.max_m:
            raise UsageError(f"--batch {batch}: the {args.rows}x{args.cols} machine decodes "
                             f"at most max_m = {cfg.engine.max_m} sequences together")
        if batch > 1:                 # the caches of every sequence in its memory map
            cfg = machine_config(qmodel, args.rows, args.cols, addr_bits=args.addr_bits,
                                 batch=batch, mem_bytes=mem_bytes)
    except MachineSizeError as e:
        raise UsageError(f"--addr-bits {args.addr_bits} addresses {1 << args.addr_bits:,} "
                         f"words, the model's memory map needs {e.words:,}: give --addr-bits "
                         f"{e.need_bits} or more, or leave it out to size the machine from "
                         f"the model") from None
    except ValueError as e:           # ConfigError, CompileError: shapes the array cannot run
        raise UsageError(f"--rows {args.rows} --cols {args.cols}{word}: {e}") from None
    return cfg


def _addr_bits(text):
    """--addr-bits: an int in EngineConfig's range, refused by argparse (exit 2) at once."""
    from gpt2accel.rtl.config import EngineConfig
    try:
        bits = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    try:
        EngineConfig(addr_bits=bits)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return bits


def _add_addr_bits(p):
    p.add_argument("--addr-bits", type=_addr_bits, default=None, metavar="BITS",
                   help="word-address width of the machine, 8..48: it addresses 2^BITS "
                        "memory words of --mem-bytes bytes (default: the narrowest that holds the "
                        "model's weights, buffers and KV caches, at least 16: 16 for the tiny "
                        "model, 24 for GPT-2 small; --engine matmul: 24)")


def _board_backend(args, cfg, qmodel):
    """(SerialBackend, memory words the model needs) for --backend serial (the board at
    --port) or board-sim (the board top compiled with Verilator behind a simulated UART)."""
    from gpt2accel.sim.host.serial import model_mem_words
    words = model_mem_words(cfg, qmodel)
    if args.backend == "serial":
        print(f"[board at {args.port}, {args.baud} baud]", file=sys.stderr)
        return make_backend("serial", port=args.port, baud=args.baud), words
    from gpt2accel.sim.host.board_sim import SIM_BAUD, SIM_CLK_HZ
    from gpt2accel.sim.fast import FastBackendUnavailable
    print(f"[board-sim: the board top ({words} words of on-chip memory, UART at "
          f"{SIM_CLK_HZ // SIM_BAUD} cycles per bit) in Verilator; first build ~3 minutes, "
          f"loading the weights over the simulated UART ~1 minute]", file=sys.stderr)
    try:
        return make_backend("board-sim", cfg=cfg, mem_words=words), words
    except FastBackendUnavailable as e:
        raise UsageError(f"--backend board-sim needs Verilator: {e}") from None


#: The demo's backends (its --backend choices, first the default) and their (prompt,
#: max_new_tokens): on Amaranth's simulator (~1 minute per token on 8x8) short enough
#: to finish in about 2 minutes; None fills the context.
DEMO_DEFAULTS = {"fast": ("ROMEO:", 40), "pysim": ("RO", 2), "float": ("ROMEO:", None)}


def cmd_demo(args):
    args.model, args.demo_defaults = "tiny", DEMO_DEFAULTS
    if args.backend == "float":
        print("gpt2accel demo: the shipped tiny Shakespeare GPT-2, float reference model\n",
              file=sys.stderr)
    else:
        print(f"gpt2accel demo: the shipped tiny Shakespeare GPT-2 on the simulated "
              f"{args.rows}x{args.cols} machine (every logit from the RTL"
              f"{', checked bit for bit against the integer golden model' if args.check else ''})"
              f"\n", file=sys.stderr)
    cmd_generate(args)


def cmd_bench(args):
    from gpt2accel.sim import bench
    mod = bench.load(args.name)
    result = mod.run(args)
    if args.json:
        print(json.dumps(result))
    else:
        print(mod.format_text(result))


def cmd_quantise(args):
    from gpt2accel.model import GPT2
    from gpt2accel.model.quant import QuantGPT2, calibration_ids
    model_dir = resolve_model_dir(args.model)
    if args.windows < 1:
        raise UsageError(f"--windows {args.windows}: calibration needs at least one window")
    out_dir = Path(args.output).resolve().parent
    if not out_dir.is_dir():
        raise UsageError(f"-o {args.output}: the directory {out_dir} does not exist")
    float_model = GPT2.from_pretrained(model_dir)
    # calibration_ids and from_float report the corpus, the windows and each pass
    calib = calibration_ids(model_dir, float_model.config, windows=args.windows)
    q = QuantGPT2.from_float(float_model, calib)
    q.save(args.output)
    print(f"wrote {args.output}: the integer model of {model_dir} "
          f"(tile {q.tile}, residual {q.resid_bits} bits, logits {q.logit_bits} bits)",
          file=sys.stderr)


def cmd_formal(args):
    """Formal proofs (sim/formal/__init__.py): progress on stderr, the table on stdout."""
    from gpt2accel.sim.formal import command
    status = command(args)
    if status:
        raise SystemExit(status)


def cmd_verilog(args):
    from gpt2accel.rtl.config import EngineConfig
    from gpt2accel.sim.synth.verilog import ensure_yosys, generate
    if args.engine == "matmul":
        cfg = EngineConfig(rows=args.rows, cols=args.cols, mem_bytes=args.mem_bytes,
                           max_k=args.max_k, **({} if args.addr_bits is None
                                                else {"addr_bits": args.addr_bits}))
        name = args.name or "gpt2accel_matmul"
        print(f"elaborating a {cfg.rows}x{cfg.cols} matmul engine and converting it with Yosys "
              f"(the first run compiles Yosys to native code, ~1 minute) ...", file=sys.stderr)
        text = generate(cfg, name)
    else:
        from amaranth.back import verilog
        from gpt2accel.model.quant import QUANT_FILENAME, QuantGPT2
        from gpt2accel.rtl.machine import Machine
        # the machine is sized for a model (its widths, context, tile): the named one
        q = QuantGPT2.load(resolve_model_dir(args.config) / QUANT_FILENAME)
        cfg = _machine_config(q, args)
        name = args.name or "gpt2accel_machine"
        print(f"elaborating the whole {args.rows}x{args.cols} machine for model {args.config!r} "
              f"(max_k {cfg.engine.max_k}, max_n {cfg.engine.max_n}, max_m {cfg.engine.max_m}, "
              f"tile {cfg.tile}, max_seq {cfg.max_seq}) and converting it with Yosys ...",
              file=sys.stderr)
        ensure_yosys()
        text = verilog.convert(Machine(cfg), name=name)
    if args.output == "-":
        sys.stdout.write(text)
    else:
        Path(args.output).write_text(text)
        print(f"wrote {args.output} ({len(text.splitlines())} lines, top module {name})",
              file=sys.stderr)


def cmd_build(args):
    """One board's bitstream (boards/build.py): progress on stderr, the report on stdout.
    Exit status: BUILD_EXIT_STATUS. A request that cannot be built is a `PresetError`
    (a ValueError: status 2, checked before any tool is looked for)."""
    from gpt2accel.boards.build import BuildError, build_board, summary_line
    out = args.out or os.path.join("build", "boards", args.board
                                   + ("-dram" if args.memory == "dram" else ""))
    try:
        rep = build_board(args.board, out, rows=args.rows, cols=args.cols, reuse=args.reuse,
                          memory=args.memory, synth_only=args.synth_only)
    except BuildError as e:
        if args.json and e.report is not None:
            print(json.dumps(e.report))
        elif e.report is not None and e.report.get("lut") is not None:
            print(summary_line(e.report))
        what = "build failed" if e.exit_status == 1 else "error"
        print(f"gpt2accel: {what}: {e}", file=sys.stderr)
        sys.exit(e.exit_status)
    if rep.get("status") == "synthesised":
        print(json.dumps(rep) if args.json else
              f"{args.board}: synthesised (--synth-only), FF {rep.get('ff')}\n"
              f"report: {os.path.join(out, 'gpt2accel_report.json')}")
        return
    print(json.dumps(rep) if args.json else
          f"{summary_line(rep)}\nbitstream: {rep['bitstream']}\n"
          f"report: {os.path.join(out, 'gpt2accel_report.json')}")


def cmd_sweep(args):
    """Boards x arrays x clocks (sim/bench/sweep.py): progress on stderr, the table on
    stdout; a point that cannot be built is a row, bad options exit 2 before any build."""
    from gpt2accel.sim.bench import sweep
    sweep.command(args)


#: `gpt2accel build`'s exit statuses (boards/build.py), shown by `build --help`
BUILD_EXIT_STATUS = (
    (0, "built, and the design meets the preset's clock"),
    (1, "the tools ran, but the design does not fit the chip or misses timing (the "
        "report is written all the same)"),
    (2, "an error: a request that cannot be built (unknown board, rows or cols below 1 or "
        "beyond the chip, ...), refused before any tool runs; or a tool missing from PATH "
        "or stopped by an error other than the design not fitting"),
)


def _add_hardware(p, check_default):
    """Options of the simulated-machine backends."""
    p.add_argument("--rows", type=int, default=8,
                   help="systolic array rows of the simulated machine (default: %(default)s)")
    p.add_argument("--cols", type=int, default=8,
                   help="systolic array columns (default: %(default)s)")
    p.add_argument("--mem-bytes", type=int, default=None,
                   help="memory word in bytes, a multiple of cols and at least 2*cols "
                        "(default: 2*cols; the ECP5 board presets' 4x4 arrays use 16)")
    p.add_argument("--check", action=argparse.BooleanOptionalAction, default=check_default,
                   help="compare every step's integer logits with the integer golden model "
                        "and stop at the first mismatch, naming the layer and operation "
                        "(default: %(default)s)")
    p.add_argument("--vcd", metavar="FILE", default=None,
                   help="write the run's waveform, every signal of the machine "
                        "(--backend pysim only; one VCD per program: FILE, FILE.1, ...; "
                        "large: ~69 MB for one tiny-model token on 8x8; view it with "
                        "GTKWave or Surfer)")
    _add_addr_bits(p)


def _add_sampling(p, max_new_tokens, prompt="ROMEO:"):
    demo = ", ".join(f"{b}: {p!r}, {n or 'fill the context'}"
                     for b, (p, n) in DEMO_DEFAULTS.items())
    p.add_argument("--prompt", default=prompt, help="text to continue (default: %s)" % (
        prompt or f"per backend that runs ({demo})"))
    p.add_argument("--max-new-tokens", type=int, default=max_new_tokens, metavar="N",
                   help="tokens to generate (default: %s)" % (
                       "fill the model's context" if max_new_tokens is None and prompt
                       else max_new_tokens if prompt else "per backend, as --prompt"))
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

    p = sub.add_parser("demo", help="the shipped tiny model generating on the simulated hardware",
                       description="Generate text from the shipped tiny Shakespeare model on "
                                   "the simulated machine (Verilator when available, else "
                                   "Amaranth's simulator: a short default run), every step "
                                   "checked against the integer golden model.")
    p.add_argument("--backend", choices=list(DEMO_DEFAULTS), default="fast",
                   help=_backend_help(DEMO_DEFAULTS, {"fast": " (falls back to pysim when "
                                                              "Verilator is missing)"})
                   + " (default: %(default)s)")
    _add_sampling(p, None, prompt=None)
    _add_hardware(p, check_default=True)
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("generate", help="generate text from a GPT-2 model",
                       description="Generate text from a GPT-2 model on a chosen backend.")
    p.add_argument("--model", default="tiny",
                   help="'tiny' (shipped) or a HF GPT-2 checkpoint directory with config.json "
                        "and model.safetensors (default: %(default)s)")
    p.add_argument("--backend", choices=list(BACKENDS), default="float",
                   help=_backend_help(BACKENDS, {"serial": " (--port, --baud)"})
                   + " (default: %(default)s)")
    _add_sampling(p, 100)
    _add_hardware(p, check_default=False)
    p.add_argument("--port", default=None,
                   help="--backend serial: the board's serial port (/dev/ttyUSB0, COM3, or a "
                        "pyserial URL such as socket://host:port)")
    p.add_argument("--baud", type=int, default=1_000_000,
                   help="--backend serial: the bitstream's UART baud rate (default: %(default)s)")
    p.add_argument("--batch", type=int, default=1, metavar="N",
                   help="N samples of the prompt (seeds --seed .. --seed+N-1) decoded together "
                        "on the simulated machine, one program per step for all of them "
                        "(--backend pysim or fast; N at most the machine's max_m) "
                        "(default: %(default)s)")
    p.add_argument("--memory", choices=("ideal", "dram"), default="ideal",
                   help="--backend fast: the machine's memory, 'ideal' (a fixed latency, "
                        "what the cycle model assumes) or 'dram' (--board's DRAM through its "
                        "LiteDRAM controller and LiteDRAM's PHY model, co-simulated: refresh, "
                        "row misses and bank conflicts cost their cycles) "
                        "(default: %(default)s)")
    p.add_argument("--board", default=None,
                   help="--memory dram: the board whose DRAM and controller settings are "
                        "simulated (ulx3s-85f: 32 MiB SDR; orangecrab-85f: 128 MiB DDR3L)")
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
    p = sub.add_parser("verilog", help="emit the machine (or the matmul engine) as Verilog",
                       description="Emit the whole machine sized for a model, or with "
                                   "--engine matmul the matmul engine alone, as Verilog "
                                   "(via Yosys, from PyPI).")
    p.add_argument("--engine", choices=["machine", "matmul"], default="machine",
                   help="machine: the whole machine (engines, vector units, sequencer); "
                        "matmul: the matmul engine only (default: %(default)s)")
    p.add_argument("--config", default="tiny",
                   help="the machine's model: 'tiny' or a checkpoint directory with "
                        "model.int8.safetensors (default: %(default)s)")
    p.add_argument("--rows", type=int, default=8, help="array rows (default: %(default)s)")
    p.add_argument("--cols", type=int, default=8, help="array columns (default: %(default)s)")
    _add_addr_bits(p)
    p.add_argument("--mem-bytes", type=int, default=None,
                   help="memory word width in bytes, a multiple of cols and at least "
                        "2*cols (default: 2*cols)")
    p.add_argument("--max-k", type=int, default=EngineConfig.max_k,
                   help="--engine matmul: largest K, the A scratchpad depth (default: %(default)s)")
    p.add_argument("--name", default=None,
                   help="top module name (default: gpt2accel_machine / gpt2accel_matmul)")
    p.add_argument("-o", "--output", default="-", help="output file, '-' for stdout")
    p.set_defaults(func=cmd_verilog)

    from gpt2accel.boards.presets import PRESETS
    import textwrap
    presets = "\n".join(textwrap.fill(PRESETS[name].summary(), 78, initial_indent="  ",
                                      subsequent_indent="    ") for name in sorted(PRESETS))
    p = sub.add_parser(
        "build", help="build a board's bitstream with the YoWASP tools from PyPI",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=textwrap.fill(
            "Build the bitstream of a board preset (the machine, its on-chip memory and the "
            "UART host link) with Yosys and nextpnr from PyPI, showing each phase, and report "
            "LUT/FF/DSP/BRAM use, Fmax against the preset's clock, GOPS and projected "
            "tokens/s. ECP5 builds of the 8x8 machine take tens of minutes.", 78)
        + "\n\npresets:\n" + presets,
        epilog="exit status:\n" + "\n".join(
            textwrap.fill(text, 78, initial_indent=f"  {status}  ", subsequent_indent="     ")
            for status, text in BUILD_EXIT_STATUS))
    p.add_argument("--board", required=True, choices=sorted(PRESETS),
                   help="board preset")
    p.add_argument("--rows", type=int, default=None,
                   help="array rows, at least 1 (default: the preset's); rows x cols "
                        "processing elements need as many of the chip's multipliers")
    p.add_argument("--cols", type=int, default=None,
                   help="array columns, at least 1 (default: the preset's)")
    p.add_argument("--memory", choices=("bram", "dram"), default="bram",
                   help="where the machine's memory is: the chip's block RAM, or the "
                        "board's external DRAM behind a LiteDRAM controller generated from "
                        "boards/litedram/BOARD.yml (ulx3s-85f, orangecrab-85f; needs "
                        "pip install 'gpt2-accel[dram]'); the machine then runs at the "
                        "controller's clock (default: %(default)s)")
    p.add_argument("--synth-only", action="store_true",
                   help="stop after synthesis (Yosys): no place and route, no bitstream")
    p.add_argument("--out", default=None,
                   help="build directory (default: build/boards/BOARD, BOARD-dram with "
                        "--memory dram)")
    p.add_argument("--reuse", action="store_true",
                   help="skip the tools when the build directory holds a finished build of "
                        "the same design files (same RTLIL, constraints and script)")
    p.add_argument("--json", action="store_true", help="print the report as one JSON object")
    p.set_defaults(func=cmd_build)

    from gpt2accel.sim.bench import sweep
    p = sub.add_parser("sweep", help=sweep.HELP,
                       description=sweep.HELP)
    sweep.add_arguments(p)
    p.set_defaults(func=cmd_sweep)

    from gpt2accel.sim import formal
    p = sub.add_parser("formal", help=formal.HELP, description=formal.HELP)
    formal.add_arguments(p)
    p.set_defaults(func=cmd_formal)

    from gpt2accel.sim import bench
    p = sub.add_parser("bench", help="measure speed, utilisation, accuracy, resources",
                       description="Run a benchmark and report its figures.")
    bsub = p.add_subparsers(dest="name", required=True, metavar="NAME")
    for name in bench.available():
        mod = bench.load(name)
        bp = bsub.add_parser(name, help=mod.HELP, description=mod.HELP)
        bp.add_argument("--json", action="store_true", help="print one JSON object")
        mod.add_arguments(bp)
    p.set_defaults(func=cmd_bench)
    return parser


def main(argv=None):
    from gpt2accel.model.checkpoint import CheckpointError
    from gpt2accel.model.tokenizer import TokenizerError
    from gpt2accel.sim.host.driver import CheckError, HardwareError
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    except (CheckError, HardwareError) as e:
        # the hardware disagrees with the golden model: loud, and distinct from usage errors
        print(f"gpt2accel: HARDWARE MISMATCH: {e}", file=sys.stderr)
        return 1
    except (UsageError, CheckpointError, TokenizerError, ValueError, OSError) as e:
        if os.environ.get("GPT2ACCEL_TRACEBACK"):
            raise
        print(f"gpt2accel: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
