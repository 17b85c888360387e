"""Fast co-simulation: the `Machine` compiled with Verilator, run transaction-level from C++.

    from gpt2accel.sim.fast import FastMachine, run_programs, FastBackendUnavailable

`run_programs` is a drop-in for `sim.harness.machine.run_programs`; `FastMachine`
keeps one machine and its (large) memory alive across programs.
`FastBackendUnavailable` (no Verilator / no C++ compiler) is the signal to
fall back to Amaranth's simulator. See docs/architecture.md "Fast co-simulation".
"""
from .build import FastBackendUnavailable, FastBuildError
from .backend import FastMachine, FastSimError, run_programs

__all__ = ["FastMachine", "FastSimError", "FastBackendUnavailable", "FastBuildError",
           "run_programs"]
