"""Exact stall-free cycle models of the vector units (GELU, residual/embedding add, LayerNorm).

The tests assert these equal the RTL cycle for cycle when no stream stalls.
Cycles count from the start of simulation; a beat's cycle is the cycle in
which it is transferred (input) or first valid (output).
"""
from fractions import Fraction

from gpt2accel.rtl.gelu import GeluUnit
from gpt2accel.rtl.layernorm import (PASS_B_LATENCY, PASS_C_LATENCY, ROW_STATS_LATENCY,
                                     RowRoot)
from gpt2accel.rtl.residual import EmbeddingAdd, RequantAdd, ResidualAdd

__all__ = ["elementwise_out_cycles", "layernorm_beats", "layernorm_schedule",
           "layernorm_row_passes", "layernorm_row_period"]


def elementwise_out_cycles(unit_cls, in_cycles):
    """GELU / residual / requantising / embedding add: each output beat `latency` cycles after its input."""
    if unit_cls not in (GeluUnit, ResidualAdd, RequantAdd, EmbeddingAdd):
        raise ValueError(f"not an elementwise vector unit: {unit_cls!r}")
    return [c + unit_cls.latency for c in in_cycles]


def layernorm_beats(n, lanes):
    """Beats per row (input and output) of a row of n values."""
    return -(-n // lanes)


def layernorm_row_period(n, lanes, ds_banks=3):
    """Steady-state cycles per row (a Fraction: the average over `ds_banks`
    rows when the bank rotation sets the pace) with rows offered back to back.

    Each of the passes A, B, C takes W = ceil(n/lanes) cycles per row; the root
    takes `RowRoot.period`; a D bank is held from pass B's first read to the
    cycle after pass C's last, 2W + PASS_B_LATENCY + period - 1 cycles, and
    `ds_banks` of them rotate. With 3 banks: W cycles per row for W >= 26.
    """
    w = layernorm_beats(n, lanes)
    hold = 2 * w + PASS_B_LATENCY + RowRoot.period - 1
    return max(Fraction(w), Fraction(RowRoot.period), Fraction(hold, ds_banks))


def layernorm_schedule(n_rows, n, lanes, ds_banks=3, params_after=0):
    """Stall-free timeline of one group: setup offered at cycle 0, then the
    ceil(n/lanes) parameter beats after the first `params_after` rows (0..2:
    the rows before them never wait for a pass B), the other rows after them,
    all back to back.

    Returns a list of per-row dicts: ``in`` (cycle of each input beat) and
    ``out`` (cycle each output beat becomes valid).
    """
    if not 0 <= params_after <= min(2, n_rows):
        raise ValueError(f"params_after must be in 0..{min(2, n_rows)}, got {params_after}")
    w = layernorm_beats(n, lanes)
    nxt = 1                              # the cycle after the setup's
    loaded = None
    ins, rows = [], []
    for r in range(n_rows + 1):
        if r == params_after:            # parameters at nxt .. nxt + w - 1
            nxt = loaded = nxt + w
            for a_last in ins[len(rows):]:
                rows.append(layernorm_row_passes(rows, a_last, w, ds_banks, loaded))
        if r == n_rows:
            break
        a0 = nxt
        if r >= 2:                       # X half refilled once pass B started reading it
            a0 = max(a0, rows[r - 2]["b_first"] + 1)
        ins.append(a0 + w - 1)
        nxt = a0 + w
        if loaded is not None:
            rows.append(layernorm_row_passes(rows, a0 + w - 1, w, ds_banks, loaded))
    return [{"in": list(range(a - w + 1, a + 1)), "out": row["out"]}
            for a, row in zip(ins, rows)]


def layernorm_row_passes(rows, a_last, w, ds_banks=3, loaded=0):
    """Passes B, root and C of the next row, whose last input beat (pass A) came at
    cycle `a_last`, after the earlier rows' dicts `rows`; pass C starts no earlier
    than `loaded`, the cycle after the last parameter beat. Returns its dict:
    ``b_first``, ``b_last``, ``root0``, ``c_last`` and ``out`` (cycle each
    output beat becomes valid)."""
    r = len(rows)
    b0 = a_last + ROW_STATS_LATENCY
    if r >= 1:
        b0 = max(b0, rows[r - 1]["b_last"] + 1)
    if r >= ds_banks:                    # its D bank is free after the C pass ds_banks rows back
        b0 = max(b0, rows[r - ds_banks]["c_last"] + 1)
    b_last = b0 + w - 1
    root0 = b_last + PASS_B_LATENCY
    if r >= 1:
        root0 = max(root0, rows[r - 1]["root0"] + RowRoot.period)
    c0 = max(root0 + RowRoot.period, loaded)
    if r >= 1:
        c0 = max(c0, rows[r - 1]["c_last"] + 1)
    c_last = c0 + w - 1
    return {"b_first": b0, "b_last": b_last, "root0": root0, "c_last": c_last,
            "out": [c + PASS_C_LATENCY for c in range(c0, c_last + 1)]}
