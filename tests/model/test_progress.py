"""The progress reporter: status on stderr only, start and end lines in a log, opt-out."""
import pytest

from gpt2accel.model import progress


@pytest.fixture(autouse=True)
def _on():
    progress.set_enabled(True)
    yield
    progress.set_enabled(None)


def test_step_prints_start_and_end_on_stderr_only(capsys):
    with progress.step("building X", done=lambda: "cached in /tmp/x"):
        pass
    out, err = capsys.readouterr()
    assert out == ""
    lines = err.splitlines()
    assert lines[0] == "[building X ...]"
    assert lines[1].startswith("[building X: cached in /tmp/x in ") and lines[1].endswith(" s]")


def test_step_that_raises_says_failed_and_reraises(capsys):
    with pytest.raises(KeyError):
        with progress.step("loading"):
            raise KeyError("k")
    assert "[loading: failed after " in capsys.readouterr().err


def test_bar_in_a_log_prints_first_and_last_line(capsys):
    assert list(progress.bar(range(5), "calibrating", unit="windows")) == list(range(5))
    lines = capsys.readouterr().err.splitlines()
    assert lines[0] == "[calibrating ...]"
    assert lines[-1].startswith("[calibrating 5/5 windows, ")


def test_opt_out_by_call_and_by_environment(capsys, monkeypatch):
    progress.set_enabled(False)
    with progress.step("silent"):
        progress.note("nothing")
    list(progress.bar([1, 2], "quiet"))
    assert capsys.readouterr() == ("", "")
    progress.set_enabled(None)
    monkeypatch.setenv("GPT2ACCEL_PROGRESS", "0")
    assert not progress.enabled()
    monkeypatch.setenv("GPT2ACCEL_PROGRESS", "1")
    assert progress.enabled()
    with progress.quiet():
        assert not progress.enabled()
    assert progress.enabled()


def test_bar_keeps_its_extra_text_and_start_time(capsys):
    import time
    b = progress.bar(None, "running", 4, unit="instructions", start=time.perf_counter() - 90)
    b.update(3, extra="1,234 cycles")
    b.close()
    last = capsys.readouterr().err.splitlines()[-1]
    assert last.startswith("[running 3/4 instructions, 1 min 3")
    assert last.endswith(", 1,234 cycles]")
