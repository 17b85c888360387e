"""The attention units convert to Verilog through Yosys (widths, memories and
reduction trees that Yosys accepts), at GPT-2-sized parameters."""
import pytest
from amaranth.back import verilog

from gpt2accel.rtl.attention import AttentionEngine
from gpt2accel.rtl.attention_config import AttentionConfig
from gpt2accel.rtl.config import EngineConfig
from gpt2accel.rtl.normalise import Normaliser
from gpt2accel.rtl.softmax import SoftmaxUnit
from gpt2accel.sim.synth.verilog import ensure_yosys

CFG = AttentionConfig(engine=EngineConfig(rows=16, cols=16), tile=64, lanes=8, norm_lanes=2)


@pytest.mark.parametrize("unit", [SoftmaxUnit, Normaliser], ids=["softmax", "normaliser"])
def test_units_convert(unit):
    ensure_yosys()
    text = verilog.convert(unit(CFG), name="top")
    assert "module top" in text


@pytest.mark.slow
def test_engine_converts():
    ensure_yosys()
    cfg = AttentionConfig(engine=EngineConfig(rows=8, cols=8), tile=64, lanes=4, norm_lanes=2)
    assert "module top" in verilog.convert(AttentionEngine(cfg), name="top")
