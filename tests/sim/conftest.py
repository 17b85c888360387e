"""Fixtures shared by the host-side tests."""
import pytest


@pytest.fixture(scope="module")
def fast_machine():
    """The Verilated 8x8 machine for the shipped tiny model (what `generate --backend fast`
    and the README's example use), built or loaded once per module, or a skip."""
    from gpt2accel.model import shipped_model_dir
    from gpt2accel.model.quant import QUANT_FILENAME, QuantGPT2
    from gpt2accel.sim.fast import FastBackendUnavailable
    from gpt2accel.sim.host.driver import FastBackend, machine_config
    q = QuantGPT2.load(shipped_model_dir() / QUANT_FILENAME)
    try:
        be = FastBackend()
        be.open(machine_config(q, 8, 8), 1)
        be.close()
    except FastBackendUnavailable as e:
        pytest.skip(f"fast backend unavailable: {e}")
