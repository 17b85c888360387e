"""The beat format shared by the vector units (GELU, LayerNorm, residual and embedding adds).

A vector stream carries `lanes` consecutive elements of one row per beat, plus
a ``last`` flag on the row's final beat. The elementwise units pass ``last``
through unchanged (it is sideband: they do not need row boundaries), the
LayerNorm unit produces it from its row length. Keeping one layout for all of
them lets the units be chained (c_fc -> GELU, c_proj -> residual add ->
LayerNorm) with plain `wiring.connect`.
"""
from amaranth.hdl import *
from amaranth.lib import data

__all__ = ["vector_layout", "check_lanes"]


def vector_layout(shape, lanes, field="x"):
    """``{field: lanes x shape, last: 1}``: one beat of a vector stream."""
    return data.StructLayout({field: data.ArrayLayout(shape, lanes), "last": 1})


def check_lanes(lanes):
    if not isinstance(lanes, int) or isinstance(lanes, bool) or not 1 <= lanes <= 256:
        raise ValueError(f"lanes must be an int in 1..256, got {lanes!r}")
    return lanes
