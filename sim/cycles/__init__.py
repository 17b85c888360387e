"""Cycle models: exact RTL cycle counts from arithmetic (each unit's own model, and the
whole program's), checked against the RTL by the tests."""
