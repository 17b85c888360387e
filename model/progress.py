"""Progress on stderr for every step that takes more than a few seconds.

One small reporter for the whole project, so the command line and the Python
API show the same signs of life: which file is being downloaded and where it
is cached, that a model is being quantised, that Verilator is compiling, how
far a long simulation has got.

    from gpt2accel.model import progress
    with progress.step("quantising the model", done=lambda: "cached in X"):
        ...                       # a ticker shows the elapsed time meanwhile
    for item in progress.bar(items, "calibrating"):
        ...                       # "[calibrating 3/32, 4.1 s]"
    progress.note("tokenizer: GPT-2 byte-level BPE from vocab.json")

On a terminal the current step is one line rewritten in place (a background
ticker keeps its elapsed seconds moving while a blocking call runs); in a log
file every step is a start line and an end line, and a bar prints at most one
line every `LOG_INTERVAL_S` seconds, so logs stay short and readable.

It is on by default. Library users turn it off with `set_enabled(False)` (or
the `quiet()` context manager) or the environment variable
``GPT2ACCEL_PROGRESS=0``; status never goes to stdout, which belongs to the
results (generated text, tables, JSON).
"""
import contextlib
import os
import sys
import threading
import time

__all__ = ["enabled", "set_enabled", "quiet", "note", "step", "bar", "LOG_INTERVAL_S"]

#: In a log (stderr not a terminal), a bar's line at most this often.
LOG_INTERVAL_S = 10.0
#: A terminal's ticker refresh.
_TICK_S = 0.5

_lock = threading.RLock()
_override = None          # set_enabled(): None follows the environment
_live = None              # the text of the in-place line on a terminal, or None


def enabled():
    """Whether progress is shown: `set_enabled` if called, else ``GPT2ACCEL_PROGRESS``
    (``0``/``off``/``no``/``false`` turn it off)."""
    if _override is not None:
        return _override
    return os.environ.get("GPT2ACCEL_PROGRESS", "1").strip().lower() not in (
        "0", "off", "no", "false")


def set_enabled(flag):
    """Turn progress on (True), off (False) or back to the environment's choice (None)."""
    global _override
    _override = None if flag is None else bool(flag)


@contextlib.contextmanager
def quiet():
    """No progress inside the block (restores the previous setting)."""
    global _override
    old = _override
    _override = False
    try:
        yield
    finally:
        _override = old


def _tty():
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


def _write_live(text):
    """Rewrite the terminal's progress line (caller holds the lock)."""
    global _live
    pad = max(0, len(_live or "") - len(text))
    sys.stderr.write("\r" + text + " " * pad)
    sys.stderr.flush()
    _live = text


def _end_live():
    """Leave the in-place line so the next output starts on a fresh line."""
    global _live
    if _live is not None:
        sys.stderr.write("\n")
        sys.stderr.flush()
        _live = None


def note(message):
    """One line of status: `[message]` on stderr."""
    if not enabled():
        return
    with _lock:
        _end_live()
        print(f"[{message}]", file=sys.stderr, flush=True)


def _fmt_s(seconds):
    return f"{seconds:.1f} s" if seconds < 60 else f"{int(seconds // 60)} min {seconds % 60:02.0f} s"


@contextlib.contextmanager
def step(what, done=None):
    """A step of unknown length: `[what ...]` with a ticking elapsed time on a terminal,
    then `[what: <done> in T]` (``done``: a string or a function of nothing giving one,
    called at the end, for facts learnt during the step such as a cache path).
    A step that raises ends with `[what: failed after T]` and re-raises."""
    if not enabled():
        yield
        return
    t0 = time.perf_counter()
    tty = _tty()
    stop = threading.Event()
    ticker = None
    with _lock:
        _end_live()
        if tty:
            _write_live(f"[{what} ...]")
        else:
            print(f"[{what} ...]", file=sys.stderr, flush=True)
    if tty:
        def tick():
            while not stop.wait(_TICK_S):
                with _lock:
                    if _live is not None and _live.startswith(f"[{what} ..."):
                        _write_live(f"[{what} ... {_fmt_s(time.perf_counter() - t0)}]")
        ticker = threading.Thread(target=tick, name="gpt2accel-progress", daemon=True)
        ticker.start()
    ok = False
    try:
        yield
        ok = True
    finally:
        stop.set()
        if ticker is not None:
            ticker.join()
        dt = _fmt_s(time.perf_counter() - t0)
        if ok:
            tail = done() if callable(done) else done
            line = f"[{what}: {tail + ' ' if tail else 'done '}in {dt}]"
        else:
            line = f"[{what}: failed after {dt}]"
        with _lock:
            if tty and _live is not None:
                _write_live(line)
                _end_live()
            else:
                _end_live()
                print(line, file=sys.stderr, flush=True)


class bar:
    """Iterate `iterable` showing `[what i/total, elapsed]` (a terminal: in place; a log:
    a line at most every `LOG_INTERVAL_S` and one at the end). Also usable by hand:
    ``b = bar(None, what, total); b.update(i); b.close()``. `start`: the
    `time.perf_counter()` the work began at, when the bar appears after it started;
    the last `update`'s `extra` text stays on the line, the final one included."""

    def __init__(self, iterable, what, total=None, unit="", start=None):
        self.iterable, self.what, self.unit = iterable, what, unit
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)
        self.total, self.n, self.extra = total, 0, None
        self.last_log = time.perf_counter()
        self.t0 = self.last_log if start is None else start
        self.on, self.tty = enabled(), _tty()
        self.closed = False
        if self.on and not self.tty:
            with _lock:
                _end_live()
                print(f"[{what} ...]", file=sys.stderr, flush=True)

    def _line(self):
        of = f"/{self.total}" if self.total is not None else ""
        unit = f" {self.unit}" if self.unit else ""
        extra = f", {self.extra}" if self.extra is not None else ""
        return (f"[{self.what} {self.n}{of}{unit}, {_fmt_s(time.perf_counter() - self.t0)}"
                f"{extra}]")

    def update(self, n=None, extra=None):
        """Progress to `n` (default one more); `extra`: text appended to the line."""
        self.n = self.n + 1 if n is None else n
        if extra is not None:
            self.extra = extra
        if not self.on:
            return
        line = self._line()
        with _lock:
            if self.tty:
                _write_live(line)
            elif time.perf_counter() - self.last_log >= LOG_INTERVAL_S:
                self.last_log = time.perf_counter()
                print(line, file=sys.stderr, flush=True)

    def close(self):
        if self.closed:
            return
        self.closed = True
        if not self.on:
            return
        with _lock:
            if self.tty:
                _write_live(self._line())
                _end_live()
            else:
                print(self._line(), file=sys.stderr, flush=True)

    def __iter__(self):
        try:
            for item in self.iterable:
                yield item
                self.update()
        finally:
            self.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
