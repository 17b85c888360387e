"""§5: the asymmetric GELU output and its zero point folded into c_proj's bias."""
import numpy as np

from gpt2accel.model import intmodel as im
from gpt2accel.model.quant import GELU_MIN, _gelu64, _linear, gelu_output_quant, gelu_table


def test_gelu_min_is_the_minimum():
    x = np.linspace(-6, 6, 200001)
    assert abs(GELU_MIN - _gelu64(x).min()) < 1e-9
    assert -0.1701 < GELU_MIN < -0.1700


def test_output_range_maps_to_full_code_range():
    for amax in (0.2, 1.0, 4.5, 37.0):
        s, z = gelu_output_quant(amax)
        assert np.rint(GELU_MIN / s) + z == -128
        assert abs(np.rint(amax / s) + z - 127) <= 1


def test_table_dequantises_within_half_an_lsb():
    s_in = 8.0 / 127
    s_out, z = gelu_output_quant(_gelu64(127 * s_in))
    table = gelu_table(s_in, s_out, z).astype(np.int64)
    x = (np.arange(256) - 128) * s_in
    err = np.abs(s_out * (table - z) - _gelu64(x))
    assert err.max() <= 0.5 * s_out + 1e-12


def test_zero_point_folded_into_bias_is_exact():
    rng = np.random.default_rng(4)
    print("seed 4")
    k, n = 96, 24
    w = rng.standard_normal((k, n)) * 0.05
    b = rng.standard_normal(n) * 0.1
    s_in, z = gelu_output_quant(3.0)
    folded = _linear(w, b, s_in, 0.01, 8, in_zero=z)
    plain = _linear(w, b, s_in, 0.01, 8)
    q = rng.integers(-128, 128, (7, k))
    q[0] = -128
    q[1] = 127
    # with the zero point in the bias, the layer sees codes q; without it,
    # the same real input is q - z, computed in int64 without the int8 limit
    got = im.matmul_requant(q, folded.w, folded.b, folded.mult, folded.shift)
    acc = (q - z) @ plain.w.astype(np.int64) + plain.b
    want = np.clip((acc * plain.mult + (1 << (plain.shift - 1))) >> plain.shift, -128, 127)
    np.testing.assert_array_equal(got, want)
