"""Bit-exact engine runs against model.intops, with random stalls everywhere.

One simulation per array configuration runs many commands back to back.
"""
import numpy as np
import pytest

from gpt2accel.rtl.config import EngineConfig
from gpt2accel.sim.cycles.matmul import FIFO_LATENCY, REF_MEM_LATENCY, matmul_cycles
from gpt2accel.sim.harness.matmul import MatmulCase, simulate

from matmul_cases import check_results, random_case

# (config, number of random cases, largest M, K, N): >= 200 cases in all,
# covering non-square arrays, several tiles per block and several blocks,
# and both output segment layouts (raw int32 spanning words / sharing a word).
CONFIGS = [
    (EngineConfig(rows=2, cols=2), 80, 7, 24, 7),
    (EngineConfig(rows=3, cols=2, mem_bytes=4), 70, 8, 20, 6),
    (EngineConfig(rows=4, cols=4, mem_bytes=32), 60, 10, 20, 10),
    # degenerate single-row / single-column arrays, odd word widths
    (EngineConfig(rows=1, cols=3, mem_bytes=6), 25, 4, 16, 8),
    (EngineConfig(rows=3, cols=1, mem_bytes=8), 25, 8, 16, 3),
    # minimal buffering everywhere: flow control must not deadlock
    (EngineConfig(rows=2, cols=3, max_outstanding=2, w_fifo_depth=4,
                  param_fifo_tiles=4, out_fifo_tiles=2), 25, 6, 16, 8),
]


@pytest.mark.parametrize("cfg,count,mm,mk,mn", CONFIGS,
                         ids=[f"{c.rows}x{c.cols}_mb{c.mem_bytes}_o{c.max_outstanding}" for c, *_ in CONFIGS])
def test_random_with_stalls(cfg, count, mm, mk, mn, seed):
    rng = np.random.default_rng([seed, cfg.rows, cfg.cols])
    cases = [random_case(rng, cfg, mm, mk, mn) for _ in range(count)]
    results, _, stats = simulate(cfg, cases, seed=seed, stall=0.3, jitter=4)
    check_results(cases, results, seed, f"{cfg.rows}x{cfg.cols} with stalls")
    # byte strobes: exactly the result bytes were written, nothing else
    assert stats["stray_bytes"] == 0 and stats["missing_bytes"] == 0, (stats, seed)


# the cycle model assumes enough outstanding reads to cover the memory latency
MODEL_CONFIGS = [c for c in CONFIGS if c[0].max_outstanding > REF_MEM_LATENCY]


@pytest.mark.parametrize("cfg,count,mm,mk,mn", MODEL_CONFIGS,
                         ids=[f"{c.rows}x{c.cols}_mb{c.mem_bytes}" for c, *_ in MODEL_CONFIGS])
def test_cycle_model_matches_rtl(cfg, count, mm, mk, mn, seed):
    """Stall-free runs take exactly the cycles the cycle model predicts."""
    rng = np.random.default_rng([seed, cfg.rows, cfg.cols, 1])
    cases = [random_case(rng, cfg, mm, mk, mn) for _ in range(20)]
    # include shapes where K is below and above the minimum tile period
    cases.append(random_case(rng, cfg, 2 * cfg.rows, 60, 2 * cfg.cols))
    results, cycles, _ = simulate(cfg, cases, seed=seed)
    check_results(cases, results, seed, "stall-free")
    for case, got in zip(cases, cycles):
        (m, k), n = case.a.shape, case.w.shape[1]
        want = matmul_cycles(cfg, m, k, n, case.raw).cycles
        assert got == want, (f"{m}x{k}x{n} raw={case.raw}: RTL {got} cycles, "
                             f"model {want} (GPT2ACCEL_SEED={seed})")


@pytest.mark.parametrize("cfg", [EngineConfig(rows=2, cols=2), EngineConfig(rows=3, cols=2)],
                         ids=["2x2", "3x2"])
def test_overlapped_a_loads(cfg, seed):
    """Shapes long enough that row blocks after the second load their A while
    the previous block computes: exact results (with stalls) and exact cycles
    (without), including shapes at the edge of the overlap condition."""
    rng = np.random.default_rng([seed, cfg.rows, cfg.cols, 2])
    kmin = cfg.interleave_min_k
    shapes = []
    for k in (kmin, kmin + int(rng.integers(1, 30))):
        need = cfg.w_fifo_depth + 8 + 2 * cfg.rows * cfg.a_words_per_row(k)
        tiles = -(-need // cfg.w_words_per_tile(k))
        for n in ((tiles - 1) * cfg.cols, tiles * cfg.cols - cfg.cols + 1):
            shapes.append((int(rng.integers(2 * cfg.rows + 1, 4 * cfg.rows)), k, n))
    assert any(cfg.interleave(*s) for s in shapes) and not all(cfg.interleave(*s) for s in shapes)
    cases = []
    for m, k, n in shapes:
        case = random_case(rng, cfg, 1, 1, 1)
        a_lo, a_hi = (-128, 128) if case.a_signed else (0, 256)
        cases.append(MatmulCase(rng.integers(a_lo, a_hi, (m, k)), rng.integers(-128, 128, (k, n)),
                                rng.integers(-2**31, 2**31, n), rng.integers(0, 2**15, n),
                                rng.integers(0, 48, n), case.a_signed, case.raw))
    results, cycles, _ = simulate(cfg, cases, seed=seed)
    check_results(cases, results, seed, "overlapped A loads")
    for case, got in zip(cases, cycles):
        (m, k), n = case.a.shape, case.w.shape[1]
        assert got == matmul_cycles(cfg, m, k, n, case.raw).cycles, (m, k, n, seed)
    results, _, stats = simulate(cfg, cases[::2], seed=seed, stall=0.3, jitter=4)
    check_results(cases[::2], results, seed, "overlapped A loads with stalls")
    assert stats["stray_bytes"] == 0 and stats["missing_bytes"] == 0


# engines with a GEMV mode: 2 and 4 k-steps per word, groups of 1, 2 and 8 rows,
# a row left over below the groups (5x2), 3-column tiles; with groups of 8 a
# one-row command's last total leaves the array 7 drain steps before the tile's
# last row, so the next command starts while those rows still drain
GEMV_CONFIGS = [EngineConfig(rows=2, cols=2), EngineConfig(rows=5, cols=2, mem_bytes=4),
                EngineConfig(rows=8, cols=2, mem_bytes=8), EngineConfig(rows=4, cols=3, mem_bytes=12),
                EngineConfig(rows=16, cols=2, mem_bytes=4)]


def _gemv_shapes(rng, cfg, count):
    """M = 1 .. rows in turn (GEMV mode up to gemv_rows), K a multiple of k_per_word
    or not, N over several column tiles and mostly not a multiple of cols."""
    G = cfg.k_per_word
    return [(1 + i % cfg.rows, int(rng.integers(0, 10)) * G + int(rng.integers(1, G + 1)),
             int(rng.integers(1, 4 * cfg.cols + 1))) for i in range(count)]


@pytest.mark.parametrize("cfg", GEMV_CONFIGS, ids=[f"{c.rows}x{c.cols}_mb{c.mem_bytes}"
                                                   for c in GEMV_CONFIGS])
def test_gemv_mode(cfg, seed):
    """Commands of few rows fold the array (group g takes byte lane g of every W
    word): exact results and strobes under stalls on every port, and stall-free
    exactly the cycles of the model, on both sides of the GEMV limit."""
    assert cfg.gemv_rows >= 1
    rng = np.random.default_rng([seed, cfg.rows, cfg.cols, 3])
    shapes = _gemv_shapes(rng, cfg, 2 * cfg.rows + 8)
    # a long decode row: one beat per W word, so fewer cycles than the unfolded
    # engine's one beat per k-step
    long = (1, 16 * cfg.k_per_word + 1, 3 * cfg.cols + 1)
    shapes.append(long)
    assert any(cfg.gemv(s[0]) for s in shapes) and not all(cfg.gemv(s[0]) for s in shapes)
    cases = [random_case(rng, cfg, 0, 0, 0, shape=s) for s in shapes]
    results, _, stats = simulate(cfg, cases, seed=seed, stall=0.3, jitter=4)
    check_results(cases, results, seed, "GEMV mode with stalls")
    assert stats["stray_bytes"] == 0 and stats["missing_bytes"] == 0, (stats, seed)
    results, cycles, _ = simulate(cfg, cases, seed=seed)
    check_results(cases, results, seed, "GEMV mode stall-free")
    for (m, k, n), case, got in zip(shapes, cases, cycles):
        want = matmul_cycles(cfg, m, k, n, case.raw).cycles
        assert got == want, (f"{m}x{k}x{n} raw={case.raw}: RTL {got} cycles, "
                             f"model {want} (GPT2ACCEL_SEED={seed})")
    m, k, n = long
    assert cycles[-1] < -(-n // cfg.cols) * k, cycles[-1]


def test_gemv_then_unfolded_while_draining(seed):
    """A one-row command's last total leaves a 16-row array (groups of 8) 7 drain
    steps before the tile's last row, so an unfolded command accepted right after
    its done pulse meets those rows in the requantiser: they must still count as
    the folded tile's (dropped) rows. Exact results with and without stalls, and
    exact cycles."""
    cfg = EngineConfig(rows=16, cols=2, mem_bytes=4)
    rng = np.random.default_rng([seed, 5])
    shapes = []
    for _ in range(6):
        k, n = int(rng.integers(1, 9)), int(rng.integers(1, 2 * cfg.cols + 1))
        shapes += [(1, k, n), (int(rng.integers(cfg.gemv_rows + 1, cfg.rows + 1)), k, n)]
    cases = [random_case(rng, cfg, 0, 0, 0, shape=s) for s in shapes]
    for case in cases[::4]:
        case.raw = True        # the shortest tail: the next command comes soonest
    results, cycles, _ = simulate(cfg, cases, seed=seed)
    check_results(cases, results, seed, "unfolded after GEMV, stall-free")
    for (m, k, n), case, got in zip(shapes, cases, cycles):
        assert got == matmul_cycles(cfg, m, k, n, case.raw).cycles, (m, k, n, seed)
    results, _, stats = simulate(cfg, cases, seed=seed, stall=0.3, jitter=4)
    check_results(cases, results, seed, "unfolded after GEMV, with stalls")
    assert stats["stray_bytes"] == 0 and stats["missing_bytes"] == 0, (stats, seed)


def test_gemv_run_ahead_limit(seed):
    """GEMV tiles so short and a memory so slow that the issuer's run-ahead limit
    (param_fifo_tiles) holds tiles back: the model's recurrence is exact there too."""
    cfg = EngineConfig(rows=2, cols=16, mem_bytes=32, param_fifo_tiles=4, max_outstanding=56)
    latency = 47
    rng = np.random.default_rng([seed, 4])
    shapes = [(1, 16, 9 * cfg.cols), (1, 15, 6 * cfg.cols - 5), (1, 1, 50)]
    cases = [random_case(rng, cfg, 0, 0, 0, shape=s) for s in shapes]
    k = shapes[0][1]
    period = max(cfg.param_words_per_tile + cfg.w_words_per_tile(k),
                 cfg.min_tile_period(cases[0].raw))
    drained = (cfg.param_words_per_tile + latency + FIFO_LATENCY + cfg.w_words_per_tile(k) - 1
               + cfg.FEED_LATENCY + cfg.gemv_drain_latency + cfg.gemv_rows)
    assert drained > cfg.param_fifo_tiles * period      # the limit binds for the first shape
    results, cycles, _ = simulate(cfg, cases, seed=seed, latency=latency)
    check_results(cases, results, seed, "GEMV run-ahead limit")
    for (m, k, n), case, got in zip(shapes, cases, cycles):
        assert got == matmul_cycles(cfg, m, k, n, case.raw, latency=latency).cycles, (m, k, n)


def test_accumulator_extremes():
    """K = max_k with all-extreme operands: the largest products summed max_k
    times, plus int32-extreme biases so the sum wraps; and saturating requant."""
    cfg = EngineConfig(rows=2, cols=2, max_k=3072)
    k = cfg.max_k
    cases = []
    # signed: (-128)*(-128) = 2**14 per step, the largest product
    a = np.full((2, k), -128)
    w = np.full((k, 2), -128)
    w[:, 1] = 127
    cases.append(MatmulCase(a, w, np.array([2**31 - 1, -2**31]), np.zeros(2, int),
                            np.zeros(2, int), True, True))
    # the same in GEMV mode (one row): the groups' partial sums wrap as they add
    a = np.full((1, k), -128)
    w = np.full((k, 2), -128)
    w[:, 1] = 127
    cases.append(MatmulCase(a, w, np.array([2**31 - 1, -2**31]), np.zeros(2, int),
                            np.zeros(2, int), True, True))
    # unsigned A: 255*(-128) is the most negative product
    a = np.full((2, k), 255)
    w = np.full((k, 2), -128)
    w[:, 1] = 127
    cases.append(MatmulCase(a, w, np.array([-2**31, 2**31 - 1]), np.zeros(2, int),
                            np.zeros(2, int), False, True))
    # requantised: full-scale mult with shift 0 saturates, shift 47 rounds
    cases.append(MatmulCase(a, w, np.array([0, 5]), np.array([2**15 - 1, 2**15 - 1]),
                            np.array([0, 47]), False, False))
    results, _, _ = simulate(cfg, cases, seed=0, stall=0.1)
    check_results(cases, results, 0, "extremes")
    assert results[0][0, 0] == ((2**14 * k + 2**31 - 1 + 2**31) % 2**32) - 2**31
    assert cfg.gemv(1) and results[1][0, 0] == results[0][0, 0]


@pytest.mark.slow
def test_random_8x8_with_stalls(seed):
    cfg = EngineConfig(rows=8, cols=8)
    rng = np.random.default_rng([seed, 8])
    cases = [random_case(rng, cfg, 20, 40, 20) for _ in range(40)]
    results, cycles, _ = simulate(cfg, cases, seed=seed, stall=0.3, jitter=4)
    check_results(cases, results, seed, "8x8 with stalls")


@pytest.mark.slow
def test_cycle_model_8x8(seed):
    cfg = EngineConfig(rows=8, cols=8)
    rng = np.random.default_rng([seed, 88])
    cases = [random_case(rng, cfg, 20, 80, 20) for _ in range(20)]
    results, cycles, _ = simulate(cfg, cases, seed=seed)
    check_results(cases, results, seed, "8x8 stall-free")
    for case, got in zip(cases, cycles):
        (m, k), n = case.a.shape, case.w.shape[1]
        assert got == matmul_cycles(cfg, m, k, n, case.raw).cycles
