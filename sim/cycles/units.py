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
    `ds_banks` of them rotate. With 3 banks: W cycles per row for W >= 27.
    """
    w = layernorm_beats(n, lanes)
    hold = 2 * w + PASS_B_LATENCY + RowRoot.period - 1
    return max(Fraction(w), Fraction(RowRoot.period), Fraction(hold, ds_banks))


def layernorm_schedule(n_rows, n, lanes, ds_banks=3):
    """Stall-free timeline of one group: setup offered at cycle 0, then the
    ceil(n/lanes) parameter beats, then `n_rows` rows, all back to back.

    Returns a list of per-row dicts: ``in`` (cycle of each input beat) and
    ``out`` (cycle each output beat becomes valid).
    """
    w = layernorm_beats(n, lanes)
    setup = 0
    first_row = setup + w + 1            # params at setup+1 .. setup+w, then `loaded`
    rows = []
    for r in range(n_rows):
        a0 = first_row
        if r >= 1:
            a0 = max(a0, rows[r - 1]["a_last"] + 1)
        if r >= 2:                       # X half refilled once pass B started reading it
            a0 = max(a0, rows[r - 2]["b_first"] + 1)
        a_last = a0 + w - 1
        row = layernorm_row_passes(rows, a_last, w, ds_banks)
        row.update({"a_last": a_last, "in": list(range(a0, a_last + 1))})
        rows.append(row)
    return [{"in": r["in"], "out": r["out"]} for r in rows]


def layernorm_row_passes(rows, a_last, w, ds_banks=3):
    """Passes B, root and C of the next row, whose last input beat (pass A) came at
    cycle `a_last`, after the earlier rows' dicts `rows`. Returns its dict:
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
    c0 = root0 + RowRoot.period
    if r >= 1:
        c0 = max(c0, rows[r - 1]["c_last"] + 1)
    c_last = c0 + w - 1
    return {"b_first": b0, "b_last": b_last, "root0": root0, "c_last": c_last,
            "out": [c + PASS_C_LATENCY for c in range(c0, c_last + 1)]}
