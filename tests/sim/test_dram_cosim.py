"""The machine on a board's DRAM, co-simulated: the `DramAdapter` and the board's
LiteDRAM controller around LiteDRAM's PHY model in Verilator (`sim.fast.dram`).

- the shipped tiny model prefilled and decoded on the ULX3S's SDR controller is
  bit-exact with QuantGPT2 (`Driver(check=True)`), and its steps pay DRAM time: more
  cycles than the ideal-memory cycle model, refreshes and row opens counted;
- the backdoor (image in and out of the bank memories) round-trips and refuses
  ranges past the DRAM;
- `generate --memory dram` refuses bad input in one line, exit 2, before any build;
- slow: one decode token of the GPT-2-small geometry (random weights, position 32)
  through the OrangeCrab's DDR3 controller settings, bit-exact.

The first run generates the core (seconds) and builds the Verilator model (2-3
minutes), both cached ($GPT2ACCEL_CACHE). Skipped without Verilator or LiteDRAM.
"""
import numpy as np
import pytest

pytest.importorskip("litedram")
pytest.importorskip("liteeth")

from gpt2accel.boards import dram as D  # noqa: E402
from gpt2accel.sim.fast import FastBackendUnavailable  # noqa: E402
from gpt2accel.sim.host.driver import Driver, FastBackend, machine_config  # noqa: E402


def _tiny():
    from gpt2accel.model import shipped_model_dir
    from gpt2accel.model.quant import QUANT_FILENAME, QuantGPT2
    return QuantGPT2.load(shipped_model_dir() / QUANT_FILENAME)


def _driver(q, cfg, board, timeout=500_000_000, **kw):
    try:
        return Driver(q, cfg, FastBackend("dram", board, timeout), check=True, **kw).load()
    except FastBackendUnavailable as e:
        pytest.skip(f"fast backend unavailable: {e}")


@pytest.mark.slow
def test_tiny_on_the_ulx3s_dram_is_bit_exact_and_pays_dram_time():
    q = _tiny()
    cfg = machine_config(q, 8, 8)
    # a prefill of 5 tokens takes about 190,000 cycles here
    drv = _driver(q, cfg, "ulx3s-85f", timeout=2_000_000)
    try:
        drv.prefill([5, 17, 30, 2, 9])      # check=True: every step equals QuantGPT2
        for t in (11, 40):
            drv.decode(t)
        for r in drv.history:
            d = r["dram"]
            # a 16-byte word is 8 beats of the x16 SDRAM: far slower than the ideal port
            assert r["cycles"] > 2 * r["predicted_cycles"]
            # tREFI (7.8 us) at 25 MHz: a refresh every ~195 cycles
            assert d["ref"] >= r["cycles"] // 250
            assert d["act"] > 0 and d["rd"] > 0 and d["wr"] > 0
            # rows closed for others: by precharges and by auto-precharged accesses
            assert d["pre"] > 0 and d["ap"] > 0
    finally:
        drv.close()


def test_the_backdoor_round_trips_and_refuses_ranges_past_the_dram():
    from gpt2accel.sim.fast.dram import DramMachine
    q = _tiny()
    cfg = machine_config(q, 8, 8)
    try:
        m = DramMachine(cfg, "ulx3s-85f")
    except FastBackendUnavailable as e:
        pytest.skip(f"fast backend unavailable: {e}")
    with m:
        assert m.words * 16 == D.dram_bytes("ulx3s-85f") == 32 << 20
        rng = np.random.default_rng(1)
        # across bank rows (512 native words = 64 machine words) and banks
        img = rng.integers(0, 256, (3000, 16), dtype=np.uint8)
        m.load(img, 1000)
        np.testing.assert_array_equal(m.dump(1000, 3000), img)
        assert not m.dump(0, 1000).any()
        end = rng.integers(0, 256, (4, 16), dtype=np.uint8)
        m.load(end, m.words - 4)
        np.testing.assert_array_equal(m.dump(m.words - 4), end)
        with pytest.raises(IndexError, match="outside the DRAM"):
            m.load(end, m.words - 3)
        with pytest.raises(IndexError, match="outside the DRAM"):
            m.dump(m.words - 3, 4)


def test_a_map_larger_than_the_dram_is_refused_on_open(monkeypatch):
    from gpt2accel.sim.host.driver import MachineSizeError
    q = _tiny()
    cfg = machine_config(q, 8, 8)
    be = FastBackend("dram", "ulx3s-85f")
    try:
        with pytest.raises(MachineSizeError, match="does not fit ulx3s-85f's DRAM"):
            be.open(cfg, (32 << 20) // 16 + 1)
    except FastBackendUnavailable as e:
        pytest.skip(f"fast backend unavailable: {e}")


@pytest.mark.parametrize("argv, message", [
    (["--backend", "fast", "--memory", "dram", "--board", "icebreaker"],
     "--board 'icebreaker': no DRAM config for it (boards with one: ulx3s-85f, "
     "orangecrab-85f)"),
    (["--backend", "int", "--memory", "dram", "--board", "ulx3s-85f"],
     "--memory dram needs --backend fast (the DRAM is co-simulated in Verilator), not "
     "--backend int"),
    (["--backend", "fast", "--memory", "dram"], "--memory dram needs --board"),
    (["--backend", "fast", "--board", "ulx3s-85f"], "--board needs --memory dram"),
])
def test_bad_dram_options_are_one_line_exit_2(capsys, argv, message):
    from gpt2accel.sim.cli import main
    assert main(["generate", "--model", "tiny", "--max-new-tokens", "1", *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"gpt2accel: error: {message}"] or (
        len(err) == 1 and err[0].startswith(f"gpt2accel: error: {message}")), err


def test_an_image_larger_than_the_boards_dram_is_refused_before_any_build(
        capsys, monkeypatch, tmp_path):
    from gpt2accel.sim.cli import main
    # a board whose DRAM holds 64 KiB: the tiny model's image (178 KB) does not fit
    monkeypatch.setattr(D, "dram_bytes", lambda board: 64 << 10)
    monkeypatch.setenv("GPT2ACCEL_CACHE", str(tmp_path))
    assert main(["generate", "--model", "tiny", "--max-new-tokens", "1", "--backend", "fast",
                 "--memory", "dram", "--board", "ulx3s-85f"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    # the model's loading lines, then the refusal
    assert err[-1] == ("gpt2accel: error: --board ulx3s-85f: the memory image is 179,280 "
                       "bytes, larger than its DRAM of 65,536 bytes")
    assert not (tmp_path / "verilator").exists() and not (tmp_path / "litedram").exists()


@pytest.mark.slow
def test_a_gpt2_small_decode_token_through_ddr3_is_bit_exact(capsys):
    """Position 32 of a 64-position context, as `bench sim --gpt2-small` runs it on the
    ideal memory: the K/V of positions 0-31 come from the golden model, written into
    the image by the host (`write_kv_cache`), so only the decode token is simulated.
    On the OrangeCrab's own controller and 128 MiB module: GPT-2 small's image fits it
    with the tied wte stored once (126.1 MB of weights). Prints the figures
    docs/performance.md records."""
    import time
    from gpt2accel.model.gpt2 import KVCache
    from gpt2accel.rtl.isa import Error
    from gpt2accel.sim.bench.model import _gpt2_small
    from gpt2accel.sim.fast.dram import DramMachine
    from gpt2accel.sim.host.compiler import ModelCompiler
    from gpt2accel.sim.host.driver import _ids_memory, _predict
    q = _gpt2_small()
    pos, V = 32, q.config.vocab_size
    ids = np.random.default_rng(0).integers(0, V, pos + 1)
    cache = KVCache(q.config.n_layer)
    q.forward(ids[:pos], cache)
    prefix = KVCache(q.config.n_layer)
    prefix.k, prefix.v = [k.copy() for k in cache.k], [v.copy() for v in cache.v]
    want = q.forward(ids[pos:], cache)
    cfg = machine_config(q, 8, 8, max_tokens=32)
    comp = ModelCompiler(cfg, q, 32, None, logit_rows=1, context=64)
    comp = ModelCompiler(cfg, q, 32, comp.end, logit_rows=1, context=64)
    img = comp.image()
    assert img.nbytes <= D.dram_bytes("orangecrab-85f")
    comp.write_kv_cache(img, prefix)
    comp.write_ids(img, ids[pos:])
    prog = comp.program(1, pos)
    try:
        m = DramMachine(cfg, "orangecrab-85f")
    except FastBackendUnavailable as e:
        pytest.skip(f"fast backend unavailable: {e}")
    with m:
        t0 = time.perf_counter()
        m.load(img)
        load_s = time.perf_counter() - t0
        r = m.run(prog, timeout=1 << 30)
        assert r["error"] == Error.NONE and r["icount"] == len(prog)
        got = comp.read_rows(m.dump(0, comp.end), "logits", 1, V)
    np.testing.assert_array_equal(got, want)
    ideal = _predict(cfg, prog, _ids_memory(comp, ids[pos:]))
    with capsys.disabled():
        print(f"\nGPT-2 small decode at position {pos} (context 64) on DDR3 (LiteDRAM PHY "
              f"model): {r['cycles']:,} cycles, ideal-memory cycle model {ideal:,}; DRAM "
              f"{r['dram']}; image {comp.end * cfg.engine.mem_bytes:,} bytes loaded in "
              f"{load_s:.2f} s; simulated in {r['wall_s']:.0f} s")
    assert r["cycles"] > ideal
