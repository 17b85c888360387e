"""Benchmarks behind `gpt2accel bench NAME`.

Each module here is one benchmark and exposes:

- ``HELP``: a one-line description for ``gpt2accel bench --help``;
- ``add_arguments(parser)``: its own options (may add none);
- ``run(args) -> dict``: measures and returns JSON-serialisable figures;
- ``format_text(result) -> str``: the human-readable report.

The CLI prints ``json.dumps(result)`` with ``--json``, else ``format_text``.
The package's other modules (`energy`, `plots`, `sweep`: what benchmarks and
`gpt2accel sweep` share) are in `HELPERS`, not benchmarks.
"""
import importlib
import pkgutil

__all__ = ["available", "load", "HELPERS"]

#: modules of this package that are not benchmarks
HELPERS = {"energy", "plots", "sweep"}


def available():
    """Names of the benchmark modules in this package, sorted."""
    return sorted(m.name for m in pkgutil.iter_modules(__path__)
                  if not m.name.startswith("_") and m.name not in HELPERS)


def load(name):
    return importlib.import_module(f"{__name__}.{name}")
