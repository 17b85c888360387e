"""The README's Python example runs as written (the shipped tiny model, the fast backend)."""
import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[2] / "README.md"


def python_blocks():
    return re.findall(r"```python\n(.*?)```", README.read_text(), re.S)


def test_readme_python_example_runs(fast_machine, tmp_path):
    (block,) = python_blocks()
    assert '"fast"' in block                  # the backend the fixture provides
    proc = subprocess.run([sys.executable, "-c", block], cwd=tmp_path, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    text, counters = proc.stdout.splitlines()[:-1], proc.stdout.splitlines()[-1]
    assert "\n".join(text).startswith("ROMEO:")                 # the prompt, then its text
    assert len("\n".join(text)) == len("ROMEO:") + 50           # one character per token
    assert "'error': 0" in counters and "'cycles': " in counters
    assert (tmp_path / "model.int8.safetensors").is_file()


def test_readme_command_table_lists_every_command():
    import argparse
    from gpt2accel.sim.cli import build_parser
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    table = README.read_text().split("## Command line", 1)[1].split("\n\n", 2)[1]
    for name in sub.choices:
        assert f"| `gpt2accel {name}" in table, name


def test_readme_says_how_big_a_vcd_is_and_how_to_view_it():
    text = README.read_text()
    vcd = text[text.index("`--vcd FILE`"):]
    vcd = vcd[:vcd.index("\n\n")]
    assert re.search(r"\d+ MB for\s+one token", vcd) and "GTKWave" in vcd and "Surfer" in vcd
