"""Simulation harnesses: each unit or the machine on Amaranth's simulator behind a memory
model with random stalls, returning results and cycles for the tests and benchmarks."""
