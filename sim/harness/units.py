"""Drive the vector units (GELU, residual and embedding adds, LayerNorm) in Amaranth's simulator.

Every `run_*` function pushes integer arrays through one unit with optional
random idle cycles on every stream (valid low on inputs, ready low on the
output, with probability `stall`), decodes the outputs, and returns them with
the transfer cycle of every beat so tests can check data and timing.
Rows of a vector stream are split into beats of `lanes` elements; a row
shorter than a multiple of `lanes` has its last beat padded with zeros.
"""
import random

import numpy as np
from amaranth.sim import Simulator

from gpt2accel.rtl.gelu import GeluUnit
from gpt2accel.rtl.layernorm import LayerNormUnit
from gpt2accel.rtl.residual import EmbeddingAdd, RequantAdd, ResidualAdd

from gpt2accel.sim.harness.attention import StreamSink, StreamSource
from gpt2accel.sim.harness.matmul import transfer

__all__ = ["row_beats", "run_gelu", "run_residual", "run_requant_add", "run_embedding",
           "run_layernorm",
           "LayerNormGroup"]


def row_beats(rows, lanes, field="x", pad=None):
    """[T, N] -> list of payload dicts, ceil(N/lanes) beats per row.

    Lanes past N in a row's last beat hold zeros, or ``pad(count)`` (a list
    of junk values the unit must ignore).
    """
    rows = np.asarray(rows)
    n = rows.shape[1]
    beats = []
    for row in rows:
        for b in range(0, n, lanes):
            chunk = [int(v) for v in row[b:b + lanes]]
            fill = lanes - len(chunk)
            chunk += [int(v) for v in pad(fill)] if pad and fill else [0] * fill
            beats.append({field: chunk, "last": int(b + lanes >= n)})
    return beats


def _unbeat(beats, n_rows, n, field):
    """Inverse of `row_beats` on decoded payloads; checks the `last` flags."""
    lanes = len(beats[0][field]) if beats else 1
    per_row = -(-n // lanes)
    if len(beats) != n_rows * per_row:
        raise AssertionError(f"{len(beats)} output beats for {n_rows} rows of {per_row}")
    lasts = [b["last"] for b in beats]
    want = [int((i + 1) % per_row == 0) for i in range(len(beats))]
    if lasts != want:
        raise AssertionError(f"output `last` flags {lasts} do not mark rows of {per_row} beats")
    flat = np.array([v for b in beats for v in b[field]], np.int64).reshape(n_rows, per_row * lanes)
    return flat[:, :n], flat[:, n:]


def _decode(field):
    def decode(payload):
        return {field: [int(v) for v in getattr(payload, field)], "last": int(payload.last)}
    return decode


def _simulate(dut, sources, sink):
    sim = Simulator(dut)
    sim.add_clock(1e-8)
    for src in sources:
        sim.add_testbench(src, background=True)
    sim.add_testbench(sink.run)
    sim.run()


class ScriptSource:
    """Sends a script of (port, payload) beats in order, one at a time, on several ports.

    One process, so beats on different ports are transferred in script order
    (what a controller sequencing table loads or parameters before data does).
    Idles with probability `stall` before each beat; records each transfer cycle.
    """

    def __init__(self, script, rng, stall=0.0):
        self.script, self.rng, self.stall = script, rng, stall
        self.cycles = []

    async def run(self, ctx):
        cycle = 0
        for port, beat in self.script:
            while self.stall and self.rng.random() < self.stall:
                await ctx.tick()
                cycle += 1
            cycle += await transfer(ctx, port, beat)
            ctx.set(port.valid, 0)
            self.cycles.append(cycle - 1)


def run_gelu(lanes, segments, *, seed=0, stall=0.0, init=None, load_width=1):
    """GELU over `segments` = [(table int8 [256] or None, x [T, N]), ...] on one GeluUnit.

    A segment with a table first loads it through the ``load`` port, `load_width`
    entries per beat, then streams its rows. Returns (list of y [T, N], stats).
    """
    rng = random.Random(seed)
    dut = GeluUnit(lanes, init, load_width=load_width)
    script, counts = [], []
    for table, x in segments:
        if table is not None and load_width == 1:
            script += [(dut.load, {"addr": i, "data": int(v)}) for i, v in enumerate(table)]
        elif table is not None:
            padded = [int(v) for v in table] + [0] * (-len(table) % load_width)
            script += [(dut.load, {"addr": w, "data": padded[w * load_width:(w + 1) * load_width]})
                       for w in range(len(padded) // load_width)]
        beats = row_beats(x, lanes)
        script += [(dut.inp, b) for b in beats]
        counts.append(len(beats))
    src = ScriptSource(script, random.Random(rng.random()), stall)
    sink = StreamSink(dut.out, sum(counts), random.Random(rng.random()), _decode("y"), stall,
                      timeout=100 + len(script) * (8 if stall else 2))
    _simulate(dut, [src.run], sink)
    ys, at = [], 0
    for (_, x), c in zip(segments, counts):
        y, _ = _unbeat(sink.beats[at:at + c], x.shape[0], x.shape[1], "y")
        ys.append(y)
        at += c
    in_cycles = [c for (port, _), c in zip(script, src.cycles) if port is dut.inp]
    return ys, {"in_cycles": in_cycles, "out_cycles": sink.cycles}


def _run_join(dut, ports, beats, n_rows, n, seed, stall):
    """Drive a two-input join unit (`ports`: its two input names, `beats` theirs) into
    one sink; returns (out [n_rows, n], stats with each port's and the output's cycles)."""
    rng = random.Random(seed)
    srcs = [StreamSource(getattr(dut, p), b, random.Random(rng.random()), stall)
            for p, b in zip(ports, beats)]
    sink = StreamSink(dut.out, len(beats[0]), random.Random(rng.random()), _decode("x"), stall,
                      timeout=100 + len(beats[0]) * (8 if stall else 2))
    _simulate(dut, [src.run for src in srcs], sink)
    out, _ = _unbeat(sink.beats, n_rows, n, "x")
    stats = {f"{p}_cycles": src.cycles for p, src in zip(ports, srcs)}
    return out, {**stats, "out_cycles": sink.cycles}


def run_residual(lanes, bits, a, b, *, seed=0, stall=0.0):
    """sat(a + b) of two [T, N] arrays on one ResidualAdd; returns (out [T, N], stats)."""
    return _run_join(ResidualAdd(lanes, bits), ("a", "b"), [row_beats(a, lanes), row_beats(b, lanes)],
                     a.shape[0], a.shape[1], seed, stall)


def run_requant_add(lanes, bits, a, y, mult, shift, *, seed=0, stall=0.0):
    """sat(a + sat(round_shift(y * mult, shift))) of [T, N] arrays (a residual, y raw int32,
    mult/shift per column [N]) on one RequantAdd; returns (out [T, N], stats)."""
    by = row_beats(y, lanes)
    n_cols = a.shape[1]
    per_row = -(-n_cols // lanes)
    for i, b in enumerate(by):
        cols = [(i % per_row) * lanes + l for l in range(lanes)]
        b["mult"] = [int(mult[c]) if c < n_cols else 0 for c in cols]
        b["shift"] = [int(shift[c]) if c < n_cols else 0 for c in cols]
    return _run_join(RequantAdd(lanes, bits), ("a", "y"), [row_beats(a, lanes), by],
                     a.shape[0], n_cols, seed, stall)


def run_embedding(lanes, bits, tok, tok_mult, tok_shift, pos, pos_mult, pos_shift, *,
                  seed=0, stall=0.0):
    """Embedding add of int8 rows tok [T, E] and pos [T, E] with per-row (mult, shift)."""

    def beats(rows, mult, shift):
        out = row_beats(rows, lanes)
        per_row = -(-rows.shape[1] // lanes)
        for i, b in enumerate(out):
            b["mult"], b["shift"] = int(mult[i // per_row]), int(shift[i // per_row])
        return out

    return _run_join(EmbeddingAdd(lanes, bits), ("tok", "pos"),
                     [beats(tok, tok_mult, tok_shift), beats(pos, pos_mult, pos_shift)],
                     tok.shape[0], tok.shape[1], seed, stall)


class LayerNormGroup:
    """Rows x [T, N] normalised with one LayerNorm's parameters (numerics §6)."""

    def __init__(self, x, gamma, beta, out_shift, eps_m, eps_e):
        self.x = np.asarray(x, np.int64)
        self.gamma = np.asarray(gamma, np.int64)
        self.beta = np.asarray(beta, np.int64)
        self.out_shift, self.eps_m, self.eps_e = int(out_shift), int(eps_m), int(eps_e)

    @classmethod
    def from_quant(cls, x, ln):
        """From a `quant.QLayerNorm`."""
        return cls(x, ln.gamma, ln.beta, ln.out_shift, ln.eps_m, ln.eps_e)

    @property
    def n(self):
        return self.x.shape[1]


def run_layernorm(groups, *, lanes=1, in_bits=16, max_e=1024, ds_banks=3, seed=0, stall=0.0,
                  timeout=None, params_after=0):
    """Normalise several groups of rows back to back on ONE LayerNormUnit.

    Per group: a setup beat, then its rows with the ceil(N/lanes) parameter
    beats after the first `params_after` of them.
    Returns (list of int8 [T, N], stats with the transfer cycles of the row
    beats ("in") and output beats ("out") per group).
    """
    for g in groups:
        if not 1 <= g.n <= max_e:
            raise ValueError(f"row length N={g.n} is outside 1..max_e={max_e}: the unit "
                             "would refuse it (error output)")
    rng = random.Random(seed)
    junk = np.random.default_rng(rng.randrange(1 << 32))
    lo = -(1 << (in_bits - 1))

    def pad_x(count):      # lanes past N carry junk, which must not reach Σ/max/min/S
        return junk.integers(lo, -lo, count)

    dut = LayerNormUnit(lanes, in_bits, max_e, ds_banks)
    script, counts = [], []
    for g in groups:
        script.append((dut.setup, {"n": g.n, "out_shift": g.out_shift, "eps_m": g.eps_m,
                                   "eps_e": g.eps_e}))
        beats = row_beats(g.x, lanes, pad=pad_x)
        before = beats[:params_after * -(-g.n // lanes)]
        script += [(dut.inp, b) for b in before]
        for b in range(0, g.n, lanes):
            gam = [int(v) for v in g.gamma[b:b + lanes]]
            bet = [int(v) for v in g.beta[b:b + lanes]]
            fill = lanes - len(gam)
            script.append((dut.param, {
                "gamma": gam + [int(v) for v in junk.integers(-(1 << 15), 1 << 15, fill)],
                "beta": bet + [int(v) for v in junk.integers(-(1 << 47), 1 << 47, fill)]}))
        script += [(dut.inp, b) for b in beats[len(before):]]
        counts.append(len(beats))
    src = ScriptSource(script, random.Random(rng.random()), stall)
    total = sum(counts)
    timeout = timeout or 200 + len(groups) * 200 + total * (10 if stall else 3) \
        + sum(g.x.shape[0] for g in groups) * 60
    sink = StreamSink(dut.out, total, random.Random(rng.random()), _decode("y"), stall,
                      timeout=timeout)
    _simulate(dut, [src.run], sink)
    ys, stats, at = [], [], 0
    in_cycles = [c for (port, _), c in zip(script, src.cycles) if port is dut.inp]
    for g, c in zip(groups, counts):
        y, pad = _unbeat(sink.beats[at:at + c], g.x.shape[0], g.n, "y")
        if pad.any():
            raise AssertionError("LayerNorm output lanes past N are not zero")
        ys.append(y)
        stats.append({"in": in_cycles[at:at + c], "out": sink.cycles[at:at + c]})
        at += c
    return ys, stats
