"""The packages depend on each other in one direction only (docs/architecture.md, "Layout").

Read from the sources (every import, including those inside functions), not by
importing, so a forbidden import fails here even on a path no test executes:

- ``model`` (the golden models) knows no hardware: it imports nothing of
  ``rtl``, ``sim`` or ``boards``;
- ``rtl`` (the hardware) imports nothing of ``sim`` (host software, cycle models,
  harnesses) or ``boards``;
- the ISA (``rtl/isa.py``) depends on nothing but Amaranth, the standard library
  and the configuration, so the engines, the compiler and the cycle models all
  read one definition that none of them owns;
- the compiler and the memory layouts take sizes from the configuration or the
  ISA, never from a hardware unit's module.
"""
import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("model", "rtl", "sim", "boards")
STDLIB = set(sys.stdlib_module_names)


def _module_name(path):
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return "gpt2accel." + ".".join(parts)


def imports_of(path):
    """Absolute names of every module `path` imports (relative imports resolved)."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module
            found.add(mod)
            # `from package import module` imports the module
            found.update(f"{mod}.{a.name}" for a in node.names)
    return found


def _sources(package):
    return sorted((ROOT / package).rglob("*.py"))


def _layer(module):
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "gpt2accel" else None


def _within(name, modules):
    """`name` is one of `modules` or a name inside one (``from mod import Name``)."""
    return any(name == m or name.startswith(m + ".") for m in modules)


def _violations(package, forbidden):
    bad = []
    for path in _sources(package):
        for mod in sorted(imports_of(path)):
            if _layer(mod) in forbidden:
                bad.append(f"{path.relative_to(ROOT)} imports {mod}")
    return bad


def test_the_walker_sees_relative_and_nested_imports(tmp_path, monkeypatch):
    pkg = tmp_path / "rtl"
    pkg.mkdir()
    (pkg / "unit.py").write_text("from .isa import Op\n\ndef f():\n"
                                 "    from gpt2accel.sim import driver\n    import numpy\n")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    got = imports_of(pkg / "unit.py")
    assert {"gpt2accel.rtl.isa", "gpt2accel.sim", "gpt2accel.sim.driver", "numpy"} <= got
    assert _violations("rtl", {"sim"}) == ["rtl/unit.py imports gpt2accel.sim",
                                           "rtl/unit.py imports gpt2accel.sim.driver"]


@pytest.mark.parametrize("package, forbidden", [
    ("model", {"rtl", "sim", "boards"}),
    ("rtl", {"sim", "boards"}),
])
def test_packages_depend_one_way(package, forbidden):
    assert _violations(package, forbidden) == []


def test_the_isa_depends_on_amaranth_and_the_config_only():
    allowed = {"gpt2accel.rtl.config", "gpt2accel.rtl.attention_config", "amaranth",
               *STDLIB}
    assert sorted(m for m in imports_of(ROOT / "rtl" / "isa.py") if not _within(m, allowed)) == []


@pytest.mark.parametrize("module", ["sim/host/compiler.py", "sim/host/matmul_layout.py",
                                    "sim/host/attention_layout.py", "sim/host/driver.py"])
def test_the_compiler_reads_sizes_from_the_config_or_the_isa(module):
    allowed = {"gpt2accel.rtl.config", "gpt2accel.rtl.attention_config",
               "gpt2accel.rtl.machine_config", "gpt2accel.rtl.isa"}
    hardware = [m for m in imports_of(ROOT / module) if _layer(m) == "rtl"]
    assert sorted(m for m in hardware if not _within(m, allowed)) == []
