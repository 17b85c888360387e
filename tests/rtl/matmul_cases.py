"""Random matmul cases and checking helpers shared by the engine tests.

The tests draw them from the `seed` fixture (tests/conftest.py:
GPT2ACCEL_SEED replays a run).
"""
import numpy as np

from gpt2accel.model.intops import matmul_acc, matmul_requant
from gpt2accel.sim.harness.matmul import MatmulCase

from attention_cases import extremes


def random_case(rng, cfg, max_m, max_k, max_n, shape=None):
    """A random command of at most max_m x max_k x max_n, or of `shape` (M, K, N)."""
    m, k, n = shape or (int(rng.integers(1, max_m + 1)), int(rng.integers(1, max_k + 1)),
                        int(rng.integers(1, max_n + 1)))
    a_signed = bool(rng.integers(2))
    raw = bool(rng.random() < 0.3)
    a = extremes(rng, (m, k), -128, 127) if a_signed else extremes(rng, (m, k), 0, 255)
    w = extremes(rng, (k, n), -128, 127)
    # biases from small to the full int32 range, so the bias add wraps too
    bscale = [1 << 10, 1 << 20, 1 << 31][int(rng.integers(3))]
    bias = rng.integers(-bscale, bscale, n)
    mult = extremes(rng, n, 0, (1 << 15) - 1)
    shift = rng.integers(0, 48, n)
    shift[rng.random(n) < 0.2] = rng.choice([0, 1, 47])
    return MatmulCase(a, w, bias, mult, shift, a_signed, raw)


def reference(case):
    if case.raw:
        return matmul_acc(case.a, case.w, case.bias, a_signed=case.a_signed)
    return matmul_requant(case.a, case.w, case.bias, case.mult, case.shift,
                          a_signed=case.a_signed)


def check_results(cases, results, seed, what):
    for i, (case, got) in enumerate(zip(cases, results)):
        ref = reference(case)
        if not np.array_equal(ref, got):
            bad = np.argwhere(ref != got)
            r, c = bad[0]
            raise AssertionError(
                f"{what}: case {i} {case.a.shape}x{case.w.shape} a_signed={case.a_signed} "
                f"raw={case.raw}: {len(bad)} wrong outputs, first at [{r},{c}] "
                f"got {got[r, c]} expected {ref[r, c]} (GPT2ACCEL_SEED={seed})")
