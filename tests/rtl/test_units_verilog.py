"""The vector units convert to Verilog through Yosys at GPT-2-sized parameters
(8 lanes, R = 24, E up to 1024): widths, memories and reduction trees Yosys accepts."""
from amaranth.back import verilog

from gpt2accel.rtl.gelu import GeluUnit
from gpt2accel.rtl.layernorm import LayerNormUnit
from gpt2accel.rtl.residual import EmbeddingAdd, ResidualAdd
from gpt2accel.sim.synth.verilog import ensure_yosys


def test_units_convert():
    ensure_yosys()
    for name, unit in [("ln", LayerNormUnit(8, 24, 1024)), ("gelu", GeluUnit(8)),
                       ("resid", ResidualAdd(8, 24)), ("embed", EmbeddingAdd(8, 24))]:
        text = verilog.convert(unit, name=f"top_{name}")
        assert f"module top_{name}" in text
