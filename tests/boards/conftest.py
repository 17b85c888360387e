"""Fixtures of the board tests."""
import shutil
import sys

import pytest

from gpt2accel.boards import build as B
from gpt2accel.sim.synth import verilog as V
from standin_tools import DATA


@pytest.fixture
def tools_path(tmp_path, monkeypatch):
    """PATH is one empty directory (plus `sh`, which runs Amaranth's build script), and
    no tool variable is set: only the tools a test puts there with `fake(name, body)`
    exist, whatever this machine has installed. `body`: Python run in the build
    directory with `DATA` and `args` (the command line) defined."""
    sh = shutil.which("sh")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "sh").symlink_to(sh)
    monkeypatch.setenv("PATH", str(bin_dir))
    # the tools beside the interpreter are found too (an unactivated venv): hide them
    monkeypatch.setattr(V, "interpreter_scripts", lambda: bin_dir)
    for var in B.TOOLS:
        monkeypatch.delenv(var, raising=False)

    def fake(name, body="pass"):
        tool = bin_dir / name
        tool.write_text(f"#!{sys.executable}\nimport sys\nfrom pathlib import Path\n"
                        f"DATA = Path({str(DATA)!r})\nargs = sys.argv[1:]\n{body}\n")
        tool.chmod(0o755)
    return fake
