"""Post-training quantisation of a float GPT-2 into the integer golden model.

`QuantGPT2.from_float(gpt2, calib_ids)` calibrates activation scales on
sample token ids and derives every integer parameter (docs/numerics.md §2-§8);
this is the only place floats are used. The result runs entirely in integers
(`gpt2accel.model.intmodel`), and `save`/`load` keep it in one safetensors
file whose JSON metadata holds the scalars, so the compiler, the RTL tests
and the hardware all read exactly the same numbers.
"""
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import intmodel as im
from . import progress
from .checkpoint import GPT2Config
from .gpt2 import KVCache, check_token_ids, generate_tokens
from .intops import MAX_SHIFT, MULT_BITS

__all__ = ["QuantFormatError", "QLinear", "QLayerNorm", "QAttention", "QBlock", "QuantGPT2",
           "FORMAT_NAME", "FORMAT_VERSION", "mult_shift", "quantize_weight",
           "quantize_bias", "exp2_table", "GELU_MIN", "gelu_output_quant", "gelu_table",
           "layernorm_params",
           "calibrate", "smooth_factors", "DEFAULTS",
           "QUANT_FILENAME", "calibration_ids", "load_or_quantise"]

FORMAT_NAME = "gpt2accel-int8"
FORMAT_VERSION = 1

#: Default quantisation choices (docs/numerics.md §9 gives the measurements).
DEFAULTS = {"tile": 64, "frac_bits": 6, "resid_bits": 16, "logit_bits": 16,
            "percentile": 99.999, "logit_margin": 2.0, "smooth_alpha": 0.75}

_LOG2E = 1.0 / math.log(2.0)


class QuantFormatError(ValueError):
    """A quantised-model file is missing, malformed or inconsistent."""


# --------------------------------------------------------------------------- containers

@dataclass
class QLinear:
    """§3: int8 weights [K, N], int32 bias [N], per-column requantiser to out_bits."""
    w: np.ndarray
    b: np.ndarray
    mult: np.ndarray
    shift: np.ndarray
    out_bits: int = 8


@dataclass
class QLayerNorm:
    """§6: int16 gamma, int64 beta (48-bit range), output shift and eps = eps_m * 2^eps_e."""
    gamma: np.ndarray
    beta: np.ndarray
    out_shift: int
    eps_m: int
    eps_e: int


@dataclass
class QAttention:
    """§4: score multiplier (to base-2 logits) and output requantiser (V avg -> int8)."""
    score_mult: int
    score_shift: int
    out_mult: int
    out_shift: int


@dataclass
class QBlock:
    ln_1: QLayerNorm
    attn_qkv: QLinear
    attn: QAttention
    attn_proj: QLinear
    ln_2: QLayerNorm
    fc: QLinear
    gelu_table: np.ndarray
    fc_proj: QLinear


# --------------------------------------------------------------------------- §2 derivations

def mult_shift(real):
    """§2.2: (mult, shift) with mult * 2^-shift ~ real, mult in [2^14, 2^15) when possible.

    real must be >= 0 and < 2^15. Multipliers too small for shift 47 keep
    shift 47 and a smaller (possibly 0) mult; 0 gives (0, 0). Returns int32 arrays.
    """
    real = np.asarray(real, dtype=np.float64)
    if not np.all(np.isfinite(real)) or np.any(real < 0):
        raise ValueError("requantiser multipliers must be finite and >= 0")
    top = 1 << MULT_BITS
    if np.any(np.rint(real) >= top):
        raise ValueError(f"requantiser multiplier {real.max()} does not fit {MULT_BITS} bits")
    with np.errstate(divide="ignore"):
        exp = np.floor(np.log2(np.where(real > 0, real, 1.0)))
    shift = np.clip((MULT_BITS - 1) - exp, 0, MAX_SHIFT).astype(np.int64)
    mult = np.rint(real * np.exp2(shift)).astype(np.int64)
    # rounding up to 2^15 (or log2 landing one low): renormalise by one bit
    over = mult >= top
    shift = np.where(over & (shift > 0), shift - 1, shift)
    mult = np.where(over, np.rint(real * np.exp2(shift)), mult).astype(np.int64)
    mult = np.minimum(mult, top - 1)
    shift = np.where(real == 0, 0, shift)  # a zero multiplier needs no shift
    return mult.astype(np.int32), shift.astype(np.int32)


def quantize_weight(w, axis=0):
    """§2.1: symmetric int8 with one scale per slice along the reduction `axis`.

    For a Conv1D weight [in, out] (axis=0) that is one scale per output column;
    for wte [V, E] (axis=1) one per token row. Returns (int8 array, scales).
    """
    w = np.asarray(w, dtype=np.float64)
    amax = np.abs(w).max(axis=axis)
    scale = np.where(amax > 0, amax / 127.0, 1.0 / 127.0)
    q = np.clip(np.rint(w / np.expand_dims(scale, axis)), -127, 127).astype(np.int8)
    return q, scale


def quantize_bias(b, s_in, s_w):
    """§3.1: int32 bias = round(b / (s_in * s_w[n])), clipped to +-2^30."""
    q = np.rint(np.asarray(b, dtype=np.float64) / (s_in * s_w))
    return np.clip(q, -(1 << 30), 1 << 30).astype(np.int32)


def exp2_table(frac_bits):
    """§4.3: uint8 [2^F]: round(255 * 2^(-f / 2^F)), f = 0 .. 2^F - 1 (ties to even)."""
    f = np.arange(1 << frac_bits, dtype=np.float64)
    return np.rint(im.EXP2_ONE * np.exp2(-f / (1 << frac_bits))).astype(np.uint8)


def _gelu64(x):
    """GPT-2's tanh GELU in float64 (table generation only)."""
    return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))


#: The minimum of GPT-2's tanh GELU (at x ~ -0.7518), the bottom of its output range.
GELU_MIN = float(_gelu64(np.linspace(-0.8, -0.7, 100001)).min())


def gelu_output_quant(amax):
    """§5: (scale, zero point) of a GELU output whose calibrated maximum is `amax`.

    GELU's output lies in [GELU_MIN, amax] with GELU_MIN ~ -0.17: a symmetric
    int8 code would spend half its range below -0.17, so the output is
    asymmetric, GELU_MIN at code -128 and amax at code 127.
    """
    scale = (max(float(amax), 1e-8) - GELU_MIN) / 255.0
    zero = -128 - int(np.rint(GELU_MIN / scale))
    return scale, zero


def gelu_table(s_in, s_out, zero=0):
    """§5: int8 [256]: entry i = sat8(round(gelu((i - 128) * s_in) / s_out) + zero)."""
    x = (np.arange(256, dtype=np.float64) - 128.0) * s_in
    return np.clip(np.rint(_gelu64(x) / s_out) + zero, -128, 127).astype(np.int8)


def layernorm_params(gamma, beta, eps, s_in, s_out):
    """§6.5/§6.3: integer gamma/beta/out_shift and eps mantissa/exponent for one LayerNorm."""
    gamma = np.asarray(gamma, dtype=np.float64)
    beta = np.asarray(beta, dtype=np.float64)
    n = gamma.size
    g_real = gamma * math.sqrt(n) / s_out
    gmax = max(float(np.abs(g_real).max()), 1e-30)
    # largest fractional-bit count keeping |G| < 2^15 and beta's 48-bit budget
    frac = int(math.floor(math.log2((2 ** 15 - 1) / gmax)))
    while np.abs(np.rint(g_real * 2.0 ** frac)).max() > 2 ** 15 - 1:
        frac -= 1
    frac = min(frac, 35 - im.LN_Z_FRAC)
    out_shift = im.LN_Z_FRAC + frac
    if out_shift < 1:
        raise ValueError(f"LayerNorm gamma/scale ratio {gmax:.3g} too large for §6.5")
    g_int = np.rint(g_real * 2.0 ** frac).astype(np.int16)
    b_int = np.rint(np.clip(beta / s_out, -4096, 4096) * 2.0 ** out_shift).astype(np.int64)
    # eps in units of the §6.3 sum of squares at k = 0: eps * N^3 / s_in^2
    eps_real = eps * n ** 3 / s_in ** 2
    eps_e = int(math.floor(math.log2(eps_real))) - (im.LN_EPS_BITS - 1)
    eps_m = int(np.rint(eps_real / 2.0 ** eps_e))
    if eps_m >= 1 << im.LN_EPS_BITS:
        eps_m, eps_e = eps_m >> 1, eps_e + 1
    return QLayerNorm(g_int, b_int, out_shift, eps_m, eps_e)


def smooth_factors(act_amax, w, alpha):
    """§9: SmoothQuant per-channel factors m = amax_act^alpha / amax_w_row^(1-alpha).

    A LayerNorm's output channel c is divided by m[c] (folded into its
    gamma/beta) and the next layer's weight row c multiplied by m[c]: the
    float function is unchanged, but the int8 activation no longer has a few
    channels that set the per-tensor scale for all. alpha = 0 disables it.
    """
    act = np.maximum(np.asarray(act_amax, dtype=np.float64), 1e-8)
    wmax = np.maximum(np.abs(np.asarray(w, dtype=np.float64)).max(axis=1), 1e-8)
    m = act ** alpha / wmax ** (1.0 - alpha)
    return m / np.exp(np.log(m).mean())  # geometric mean 1: keeps scales O(1)


def _smoothed(gamma, beta, w, m):
    """(gamma/m, beta/m, m*W): the same float function with LN output channel c
    divided by m[c] and the next layer's weight row c multiplied by it."""
    if m is None:
        return gamma, beta, w
    return (np.asarray(gamma, np.float64) / m, np.asarray(beta, np.float64) / m,
            np.asarray(w, np.float64) * m[:, None])


def _linear(w, b, s_in, s_out, out_bits=8, in_zero=0):
    """§3: quantise one Conv1D layer; s_out is a scalar or per-column array.

    `in_zero` is the input's zero point (§5: only the GELU output has one):
    the input's real value is s_in * (q - in_zero), and the constant
    -in_zero * Σ_k W[k, n] is folded into the int32 bias, exactly.
    """
    wq, s_w = quantize_weight(w, axis=0)
    mult, shift = mult_shift(s_in * s_w / s_out)
    bias = quantize_bias(b, s_in, s_w).astype(np.int64)
    bias -= in_zero * wq.astype(np.int64).sum(axis=0)
    bias = np.clip(bias, -(1 << 30), 1 << 30).astype(np.int32)
    return QLinear(wq, bias, mult, shift, out_bits)


# --------------------------------------------------------------------------- §9 calibration

def _as_sequences(calib_ids):
    arr = calib_ids
    if isinstance(arr, np.ndarray) and arr.ndim == 1:
        return [arr]
    if isinstance(arr, np.ndarray) and arr.ndim == 2:
        return list(arr)
    seqs = [np.asarray(s) for s in arr]
    if seqs and seqs[0].ndim == 0:
        return [np.asarray(arr)]
    return seqs


#: Tensor points calibrated with the abs-max whatever `percentile` says:
#: clipping the residual stream or the logits saturates the outlier channels.
_MAX_ONLY = ("embed", "resid", "resid_mid", "logits", "attn_proj", "fc_proj")


def calibrate(gpt2, calib_ids, percentile=None, divisors=None, label="calibrating"):
    """§9: per-layer activation statistics from float forward passes.

    For each tensor point (the float model's observe names) and layer: the
    abs-max over all calibration values or, with `percentile`, the mean over
    calibration sequences of each sequence's `percentile` of |x| (streaming,
    so memory does not grow with the calibration set). `divisors` maps a
    (name, layer) to per-channel divisors applied first (SmoothQuant, §9).

    Returns {(name, layer): value}; ("resid", None) is the abs-max over the
    embeddings and every residual point; ("ln_1/channel", i) and
    ("ln_2/channel", i) are per-channel abs-maxima (arrays, undivided).
    `label` names the pass in the progress bar.
    """
    seqs = _as_sequences(calib_ids)
    if not seqs:
        raise ValueError("calibration needs at least one token sequence")
    divisors = divisors or {}
    maxima, pcts, per_channel = {}, {}, {}

    def observe(name, layer, x):
        key = (name, layer)
        a = np.abs(np.asarray(x, np.float64))
        if name in ("ln_1", "ln_2"):
            per_channel[key] = np.maximum(per_channel.get(key, 0.0), a.max(axis=0))
        if key in divisors:
            a = a / divisors[key]
        maxima[key] = max(maxima.get(key, 0.0), float(a.max()))
        if percentile is not None and name not in _MAX_ONLY:
            pcts.setdefault(key, []).append(float(np.percentile(a, percentile)))

    for ids in progress.bar(seqs, label, unit="sequences"):
        ids = gpt2.check_ids(ids)
        observe("embed", None, gpt2.wte[ids] + gpt2.wpe[:ids.size])
        gpt2.forward(ids, observe=observe)
    stats = {key: (float(np.mean(pcts[key])) if key in pcts else m)
             for key, m in maxima.items()}
    stats[("resid", None)] = max(v for (n, _), v in maxima.items()
                                 if n in ("embed", "resid", "resid_mid"))
    for (name, layer), a in per_channel.items():
        stats[(name + "/channel", layer)] = a
    return stats


def _scale(amax, bits=8):
    """Symmetric scale mapping amax to the largest `bits`-bit code."""
    return max(amax, 1e-12) / ((1 << (bits - 1)) - 1)


# --------------------------------------------------------------------------- the model

class QuantGPT2:
    """The integer GPT-2 golden model (docs/numerics.md).

    Build with `from_float`, persist with `save`/`load`. `forward` returns the
    integer logits; `logits` dequantises them; `generate` matches
    `GPT2.generate`.
    """

    def __init__(self, config, meta, scales, exp2, wte, wte_mult, wte_shift, wpe, wpe_mult,
                 wpe_shift, blocks, ln_f, lm_mult, lm_shift):
        self.config = config
        self.meta = dict(meta)
        self.scales = dict(scales)
        self.exp2 = exp2
        self.wte, self.wte_mult, self.wte_shift = wte, wte_mult, wte_shift
        self.wpe, self.wpe_mult, self.wpe_shift = wpe, wpe_mult, wpe_shift
        self.blocks = blocks
        self.ln_f = ln_f
        self.lm_mult, self.lm_shift = lm_mult, lm_shift

    # ---- properties of the numerics
    @property
    def tile(self):
        return self.meta["tile"]

    @property
    def frac_bits(self):
        return self.meta["frac_bits"]

    @property
    def resid_bits(self):
        return self.meta["resid_bits"]

    @property
    def logit_bits(self):
        return self.meta["logit_bits"]

    @property
    def logit_scale(self):
        return self.scales["logits"]

    # ---- quantisation
    @classmethod
    def from_float(cls, gpt2, calib_ids, *, tile=DEFAULTS["tile"],
                   frac_bits=DEFAULTS["frac_bits"], resid_bits=DEFAULTS["resid_bits"],
                   logit_bits=DEFAULTS["logit_bits"], percentile=DEFAULTS["percentile"],
                   logit_margin=DEFAULTS["logit_margin"],
                   smooth_alpha=DEFAULTS["smooth_alpha"]):
        """Quantise float `gpt2` (a `gpt2.GPT2`) with scales calibrated on `calib_ids`.

        calib_ids: one 1-D id sequence or a list of them. See DEFAULTS and
        docs/numerics.md §9 for the choices.
        """
        _check_params(tile, frac_bits, resid_bits, logit_bits)
        if not 0.0 <= smooth_alpha <= 1.0:
            raise ValueError(f"smooth_alpha must be in [0, 1], got {smooth_alpha!r}")
        cfg = gpt2.config
        passes = 2 if smooth_alpha > 0 or percentile is not None else 1
        st = calibrate(gpt2, calib_ids, None,
                       label=f"calibration pass 1 of {passes}:")
        # SmoothQuant factors from pass 1's per-channel maxima; pass 2 measures
        # the smoothed LayerNorm outputs (and, with `percentile`, everything)
        smooth = {}
        if smooth_alpha > 0:
            for i, b in enumerate(gpt2.blocks):
                smooth[("ln_1", i)] = smooth_factors(st[("ln_1/channel", i)], b.attn_w,
                                                     smooth_alpha)
                smooth[("ln_2", i)] = smooth_factors(st[("ln_2/channel", i)], b.fc_w,
                                                     smooth_alpha)
        if smooth or percentile is not None:
            st = calibrate(gpt2, calib_ids, percentile, smooth,
                           label="calibration pass 2 of 2 (the smoothed ranges):")
        s_res = _scale(st[("resid", None)], resid_bits)
        scales = {"resid": s_res}
        blocks = []
        for i, b in enumerate(progress.bar(gpt2.blocks, "quantising",
                                           unit="layers")):
            g1, b1, w_attn = _smoothed(b.ln_1_g, b.ln_1_b, b.attn_w, smooth.get(("ln_1", i)))
            g2, b2, w_fc = _smoothed(b.ln_2_g, b.ln_2_b, b.fc_w, smooth.get(("ln_2", i)))
            s = {n: _scale(st[(n, i)]) for n in ("ln_1", "q", "k", "v", "attn", "ln_2",
                                                 "fc", "gelu")}
            s["gelu"], gelu_zero = gelu_output_quant(st[("gelu", i)])
            scales.update({f"h.{i}.{n}": v for n, v in s.items()})
            scales[f"h.{i}.gelu_zero"] = gelu_zero
            e = cfg.n_embd
            qkv_out = np.concatenate([np.full(e, s["q"]), np.full(e, s["k"]), np.full(e, s["v"])])
            score_real = s["q"] * s["k"] / math.sqrt(cfg.d_head) * _LOG2E * 2.0 ** frac_bits
            sm, ss = mult_shift(score_real)
            om, osh = mult_shift(s["v"] / s["attn"] / 2.0 ** im.ATTN_AVG_FRAC)
            blocks.append(QBlock(
                ln_1=layernorm_params(g1, b1, cfg.layer_norm_epsilon, s_res, s["ln_1"]),
                attn_qkv=_linear(w_attn, b.attn_b, s["ln_1"], qkv_out),
                attn=QAttention(int(sm), int(ss), int(om), int(osh)),
                attn_proj=_linear(b.attn_proj_w, b.attn_proj_b, s["attn"], s_res, resid_bits),
                ln_2=layernorm_params(g2, b2, cfg.layer_norm_epsilon, s_res, s["ln_2"]),
                fc=_linear(w_fc, b.fc_b, s["ln_2"], s["fc"]),
                gelu_table=gelu_table(s["fc"], s["gelu"], gelu_zero),
                fc_proj=_linear(b.fc_proj_w, b.fc_proj_b, s["gelu"], s_res, resid_bits,
                                in_zero=gelu_zero)))
        s_lnf = _scale(st[("ln_f", None)])
        s_logit = _scale(st[("logits", None)] * logit_margin, logit_bits)
        scales.update({"ln_f": s_lnf, "logits": s_logit})
        wte, s_wte = quantize_weight(gpt2.wte, axis=1)
        wpe, s_wpe = quantize_weight(gpt2.wpe, axis=1)
        wte_mult, wte_shift = mult_shift(s_wte / s_res / 2.0 ** im.EMBED_PRESHIFT)
        wpe_mult, wpe_shift = mult_shift(s_wpe / s_res / 2.0 ** im.EMBED_PRESHIFT)
        lm_mult, lm_shift = mult_shift(s_lnf * s_wte / s_logit)
        meta = {"tile": int(tile), "frac_bits": int(frac_bits), "resid_bits": int(resid_bits),
                "logit_bits": int(logit_bits), "percentile": percentile,
                "smooth_alpha": float(smooth_alpha)}
        return cls(cfg, meta, scales, exp2_table(frac_bits), wte, wte_mult, wte_shift,
                   wpe, wpe_mult, wpe_shift, blocks,
                   layernorm_params(gpt2.ln_f_g, gpt2.ln_f_b, cfg.layer_norm_epsilon,
                                    s_res, s_lnf), lm_mult, lm_shift)

    # ---- inference
    def check_ids(self, input_ids, offset=0):
        """Validate a 1-D sequence of token ids; returns it as an int64 array."""
        return check_token_ids(input_ids, self.config, offset)

    def forward(self, input_ids, cache=None, observe=None, tile=None, linear=None):
        """Integer logits [T, vocab] (int32 holding logit_bits-wide values).

        `cache` (a `gpt2.KVCache` holding int8 K/V) is continued and grown.
        `tile` overrides the model's softmax tile (§4.4: results depend on it
        once a row has more keys than one tile). `observe(name, layer, x)` sees
        the integer intermediates under the float model's names. `linear(x, q)`
        computes the blocks' linear layers (`intmodel.linear` by default); a
        hardware offload puts itself here and must return the same integers.
        """
        cfg = self.config
        obs = observe or (lambda name, layer, x: None)
        lin = linear or im.linear
        tile = self.tile if tile is None else tile
        offset = cache.length if cache is not None else 0
        ids = self.check_ids(input_ids, offset)
        rb = self.resid_bits
        x = im.embed(ids, np.arange(offset, offset + ids.size), self.wte, self.wte_mult,
                     self.wte_shift, self.wpe, self.wpe_mult, self.wpe_shift, rb)
        obs("embed", None, x)
        for i, b in enumerate(self.blocks):
            h = _ln(x, b.ln_1, rb)
            obs("ln_1", i, h)
            qkv = lin(h, b.attn_qkv)
            obs("qkv", i, qkv)
            a = im.attention(qkv, cfg.n_head, b.attn, tile, self.exp2, self.frac_bits,
                             cache, i)
            obs("attn", i, a)
            a = lin(a, b.attn_proj)
            obs("attn_proj", i, a)
            x = im.residual_add(x, a, rb)
            obs("resid_mid", i, x)
            h = _ln(x, b.ln_2, rb)
            obs("ln_2", i, h)
            h = lin(h, b.fc)
            obs("fc", i, h)
            h = im.gelu(h, b.gelu_table)
            obs("gelu", i, h)
            h = lin(h, b.fc_proj)
            obs("fc_proj", i, h)
            x = im.residual_add(x, h, rb)
            obs("resid", i, x)
        h = _ln(x, self.ln_f, rb)
        obs("ln_f", None, h)
        logits = im.lm_head(h, self.wte, self.lm_mult, self.lm_shift, self.logit_bits)
        obs("logits", None, logits)
        return logits

    def logits_int(self, input_ids, tile=None):
        """Integer logits [T, vocab] (full recompute)."""
        return self.forward(input_ids, tile=tile)

    def dequantize_logits(self, logits_int):
        """Float32 logits = integer logits * the common logit scale (after the integer path)."""
        return (np.asarray(logits_int, dtype=np.float64) * self.logit_scale).astype(np.float32)

    def logits(self, input_ids, tile=None):
        """Float32 logits [T, vocab]: the dequantised integer logits."""
        return self.dequantize_logits(self.logits_int(input_ids, tile))

    def generate(self, prompt_ids, max_new_tokens, temperature=1.0, top_k=None, seed=None,
                 on_token=None):
        """As `GPT2.generate`: sample continuation ids with an int8 KV cache."""
        return generate_tokens(
            lambda ids, cache: self.dequantize_logits(self.forward(ids, cache)[-1]),
            self.config, self.check_ids(prompt_ids), max_new_tokens, temperature, top_k,
            seed, on_token)

    # ---- persistence
    def tensors(self):
        """{name: array} of every integer tensor, as stored in the file."""
        t = {"exp2_table": self.exp2, "wte": self.wte, "wte.mult": self.wte_mult,
             "wte.shift": self.wte_shift, "wpe": self.wpe, "wpe.mult": self.wpe_mult,
             "wpe.shift": self.wpe_shift, "lm_head.mult": self.lm_mult,
             "lm_head.shift": self.lm_shift, "ln_f.gamma": self.ln_f.gamma,
             "ln_f.beta": self.ln_f.beta}
        for i, b in enumerate(self.blocks):
            p = f"h.{i}."
            for name in ("ln_1", "ln_2"):
                ln = getattr(b, name)
                t[p + name + ".gamma"], t[p + name + ".beta"] = ln.gamma, ln.beta
            for name in ("attn_qkv", "attn_proj", "fc", "fc_proj"):
                q = getattr(b, name)
                for f in ("w", "b", "mult", "shift"):
                    t[f"{p}{name}.{f}"] = getattr(q, f)
            t[p + "gelu_table"] = b.gelu_table
        return t

    def _scalars(self):
        def ln(x):
            return {"out_shift": int(x.out_shift), "eps_m": int(x.eps_m), "eps_e": int(x.eps_e)}
        layers = [{"ln_1": ln(b.ln_1), "ln_2": ln(b.ln_2),
                   "attn": {k: int(getattr(b.attn, k)) for k in
                            ("score_mult", "score_shift", "out_mult", "out_shift")}}
                  for b in self.blocks]
        return {"ln_f": ln(self.ln_f), "layers": layers}

    def save(self, path):
        """Write one safetensors file; scalars and metadata go in its JSON header."""
        from safetensors.numpy import save_file
        header = {"format": FORMAT_NAME, "version": FORMAT_VERSION,
                  "config": self.config.to_hf(), "meta": self.meta, "scales": self.scales,
                  "scalars": self._scalars()}
        tensors = {k: np.ascontiguousarray(v) for k, v in self.tensors().items()}
        save_file(tensors, str(path), metadata={"gpt2accel": json.dumps(header)})

    @classmethod
    def load(cls, path):
        """Read a file written by `save`; any inconsistency raises QuantFormatError."""
        return _load(cls, Path(path))


def _ln(x, ln, in_bits):
    return im.layernorm(x, ln.gamma, ln.beta, ln.out_shift, ln.eps_m, ln.eps_e, in_bits)


def _check_params(tile, frac_bits, resid_bits, logit_bits):
    for name, v, lo, hi in (("tile", tile, 1, 1 << 20), ("frac_bits", frac_bits, 1, 10),
                            ("resid_bits", resid_bits, 9, 32), ("logit_bits", logit_bits, 8, 32)):
        if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or not lo <= v <= hi:
            raise ValueError(f"{name} must be an integer in [{lo}, {hi}], got {v!r}")


# --------------------------------------------------------------------------- loading

def _expected(cfg, meta):
    """{tensor name: (dtype, shape, lo, hi)} for a model of this geometry."""
    e, v, p, f = cfg.n_embd, cfg.vocab_size, cfg.n_positions, cfg.d_ff
    i8, i16, i32, i64, u8 = np.int8, np.int16, np.int32, np.int64, np.uint8
    mlo, mhi = 0, (1 << MULT_BITS) - 1
    spec = {"exp2_table": (u8, (1 << meta["frac_bits"],), 0, 255),
            "wte": (i8, (v, e), -128, 127), "wpe": (i8, (p, e), -128, 127),
            "wte.mult": (i32, (v,), mlo, mhi), "wte.shift": (i32, (v,), 0, MAX_SHIFT),
            "wpe.mult": (i32, (p,), mlo, mhi), "wpe.shift": (i32, (p,), 0, MAX_SHIFT),
            "lm_head.mult": (i32, (v,), mlo, mhi), "lm_head.shift": (i32, (v,), 0, MAX_SHIFT)}

    def ln(name):
        spec[name + ".gamma"] = (i16, (e,), -(1 << 15), (1 << 15) - 1)
        spec[name + ".beta"] = (i64, (e,), -(1 << 47), (1 << 47) - 1)

    ln("ln_f")
    for i in range(cfg.n_layer):
        pre = f"h.{i}."
        ln(pre + "ln_1")
        ln(pre + "ln_2")
        for name, k, n in (("attn_qkv", e, 3 * e), ("attn_proj", e, e), ("fc", e, f),
                           ("fc_proj", f, e)):
            spec[f"{pre}{name}.w"] = (i8, (k, n), -128, 127)
            spec[f"{pre}{name}.b"] = (i32, (n,), -(1 << 31), (1 << 31) - 1)
            spec[f"{pre}{name}.mult"] = (i32, (n,), mlo, mhi)
            spec[f"{pre}{name}.shift"] = (i32, (n,), 0, MAX_SHIFT)
        spec[pre + "gelu_table"] = (i8, (256,), -128, 127)
    return spec


def _load(cls, path):
    from safetensors import safe_open
    if not path.is_file():
        raise QuantFormatError(f"{path}: no such quantised-model file")
    try:
        with safe_open(str(path), framework="np") as fh:
            header_text = (fh.metadata() or {}).get("gpt2accel")
            tensors = {k: fh.get_tensor(k) for k in fh.keys()}
    except QuantFormatError:
        raise
    except Exception as exc:  # safetensors raises its own error types for broken files
        raise QuantFormatError(f"{path}: not a readable safetensors file ({exc})") from exc
    if header_text is None:
        raise QuantFormatError(f"{path}: no 'gpt2accel' metadata; not a quantised GPT-2 file")
    try:
        header = json.loads(header_text)
        if header.get("format") != FORMAT_NAME:
            raise QuantFormatError(f"{path}: format {header.get('format')!r}, "
                                   f"expected {FORMAT_NAME!r}")
        if header.get("version") != FORMAT_VERSION:
            raise QuantFormatError(f"{path}: format version {header.get('version')!r}, "
                                   f"this code reads version {FORMAT_VERSION}")
        hf = header["config"]
        cfg = GPT2Config(hf["vocab_size"], hf["n_positions"], hf["n_embd"], hf["n_layer"],
                         hf["n_head"], hf.get("n_inner"), hf["layer_norm_epsilon"])
        meta, scales, scalars = header["meta"], header["scales"], header["scalars"]
        _check_params(meta["tile"], meta["frac_bits"], meta["resid_bits"], meta["logit_bits"])
        if not isinstance(scales.get("logits"), (int, float)) or not scales["logits"] > 0:
            raise QuantFormatError(f"{path}: metadata lacks a positive 'logits' scale")
        if len(scalars["layers"]) != cfg.n_layer:
            raise QuantFormatError(f"{path}: {len(scalars['layers'])} layers of scalars, "
                                   f"config says {cfg.n_layer}")
    except QuantFormatError:
        raise
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise QuantFormatError(f"{path}: malformed metadata ({type(exc).__name__}: {exc})") \
            from exc

    spec = _expected(cfg, meta)
    missing = sorted(set(spec) - set(tensors))
    extra = sorted(set(tensors) - set(spec))
    if missing or extra:
        raise QuantFormatError(f"{path}: tensors missing {missing[:5]} / unexpected {extra[:5]}")
    for name, (dtype, shape, lo, hi) in spec.items():
        a = tensors[name]
        if a.dtype != dtype or a.shape != shape:
            raise QuantFormatError(f"{path}: tensor {name} is {a.dtype}{list(a.shape)}, "
                                   f"expected {np.dtype(dtype)}{list(shape)}")
        if a.size and (a.min() < lo or a.max() > hi):
            raise QuantFormatError(f"{path}: tensor {name} has values outside [{lo}, {hi}]")

    def ln(prefix, s):
        try:
            out_shift, eps_m, eps_e = int(s["out_shift"]), int(s["eps_m"]), int(s["eps_e"])
        except (KeyError, TypeError, ValueError) as exc:
            raise QuantFormatError(f"{path}: bad LayerNorm scalars for {prefix}: {s!r}") from exc
        if not (1 <= out_shift <= 47 and 0 <= eps_m < (1 << im.LN_EPS_BITS)
                and -200 <= eps_e <= 200):
            raise QuantFormatError(f"{path}: LayerNorm scalars out of range for {prefix}: {s!r}")
        return QLayerNorm(tensors[prefix + ".gamma"], tensors[prefix + ".beta"],
                          out_shift, eps_m, eps_e)

    def lin(prefix, out_bits):
        return QLinear(*(tensors[f"{prefix}.{f}"] for f in ("w", "b", "mult", "shift")),
                       out_bits)

    blocks = []
    rb = meta["resid_bits"]
    for i, s in enumerate(scalars["layers"]):
        p = f"h.{i}."
        try:
            att = QAttention(*(int(s["attn"][k]) for k in
                               ("score_mult", "score_shift", "out_mult", "out_shift")))
        except (KeyError, TypeError, ValueError) as exc:
            raise QuantFormatError(f"{path}: bad attention scalars in layer {i}") from exc
        for m_, s_ in ((att.score_mult, att.score_shift), (att.out_mult, att.out_shift)):
            if not (0 <= m_ < (1 << MULT_BITS) and 0 <= s_ <= MAX_SHIFT):
                raise QuantFormatError(f"{path}: attention multiplier out of range in layer {i}")
        blocks.append(QBlock(ln(p + "ln_1", s.get("ln_1")), lin(p + "attn_qkv", 8), att,
                             lin(p + "attn_proj", rb), ln(p + "ln_2", s.get("ln_2")),
                             lin(p + "fc", 8), tensors[p + "gelu_table"], lin(p + "fc_proj", rb)))
    return cls(cfg, meta, scales, tensors["exp2_table"], tensors["wte"], tensors["wte.mult"],
               tensors["wte.shift"], tensors["wpe"], tensors["wpe.mult"], tensors["wpe.shift"],
               blocks, ln("ln_f", scalars.get("ln_f")), tensors["lm_head.mult"],
               tensors["lm_head.shift"])


# --------------------------------------------------------------------------- CLI helper

#: The file a checkpoint directory may ship its quantised model in; when present
#: it is used as is, so the CLI, the compiler and the hardware share its numbers.
QUANT_FILENAME = "model.int8.safetensors"

#: Fallback calibration text when the Shakespeare corpus cannot be loaded
#: (Sonnet 18, public domain). Real calibration should use the training text.
_FALLBACK_TEXT = (
    "Shall I compare thee to a summer's day?\nThou art more lovely and more temperate:\n"
    "Rough winds do shake the darling buds of May,\nAnd summer's lease hath all too short "
    "a date;\nSometime too hot the eye of heaven shines,\nAnd often is his gold complexion "
    "dimm'd;\nAnd every fair from fair sometime declines,\nBy chance or nature's changing "
    "course untrimm'd;\nBut thy eternal summer shall not fade,\nNor lose possession of that "
    "fair thou ow'st;\nNor shall Death brag thou wander'st in his shade,\nWhen in eternal "
    "lines to time thou grow'st:\nSo long as men can breathe or eyes can see,\nSo long "
    "lives this, and this gives life to thee.\n")


def calibration_ids(model_dir, config, windows=32):
    """Calibration token sequences for a checkpoint directory (§9).

    `windows` evenly spaced windows of min(128, n_positions) tokens of the
    Shakespeare training split (the tiny model's training text), encoded
    with the directory's tokenizer; the built-in sonnet if the corpus is
    unavailable (e.g. offline).
    """
    from .tokenizer import load_tokenizer
    tok = load_tokenizer(model_dir)
    try:
        from . import shakespeare
        text = shakespeare.load_corpus()[0]
        source = "the Shakespeare training split"
    except Exception as e:  # no corpus (offline): calibrate on the built-in text
        text = _FALLBACK_TEXT
        source = "the built-in sonnet"
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        progress.note(f"calibration: the Shakespeare corpus is unavailable ({first}); "
                      f"calibrating on the built-in sonnet instead")
    chars = getattr(tok, "chars", None)
    if chars is not None:
        # A character vocabulary need not cover the corpus (Karpathy's microGPT
        # has 26 letters and a newline): calibrate on the text it can encode
        # rather than refuse a model whose prompts it would accept.
        known = set(chars)
        kept = "".join(c for c in text if c in known)
        if len(kept) < len(text):
            progress.note(f"calibration: {len(text) - len(kept):,} of {len(text):,} characters "
                          f"of {source} are outside the {len(chars)}-character vocabulary "
                          f"and are left out")
        text = kept
    n = min(128, config.n_positions)
    # encode a generous slice per window: BPE needs fewer tokens than characters
    span = 4 * n
    starts = np.linspace(0, max(len(text) - span, 0), windows).astype(int)
    seqs = []
    for s in starts:
        ids = np.asarray(tok.encode(text[s:s + span]), dtype=np.int64)[:n]
        if ids.size:
            seqs.append(ids)
    if not seqs:
        raise ValueError(f"{model_dir}: calibration text encodes to no tokens")
    progress.note(f"calibration: {len(seqs)} windows of up to {n} tokens of {source}")
    return seqs


def load_or_quantise(model_dir, float_model, cache_dir=None):
    """The integer model for a checkpoint directory: `QUANT_FILENAME` there if
    present (checked against the float model's config), else a quantisation
    with DEFAULTS, cached under `cache_dir` (default the gpt2accel cache
    directory) by the float weights' SHA-256, so repeated runs are instant.
    Each step (hashing, loading, quantising, writing the cache) is reported on
    stderr through `progress`, with the paths it reads and writes.
    """
    import hashlib
    model_dir = Path(model_dir)
    shipped = model_dir / QUANT_FILENAME
    if shipped.is_file():
        with progress.step(f"loading the integer model {shipped}"):
            q = QuantGPT2.load(shipped)
        if q.config != float_model.config:
            raise QuantFormatError(f"{shipped}: config {q.config} does not match the float "
                                   f"checkpoint's {float_model.config}")
        return q
    from .shakespeare import cache_dir as default_cache
    h = hashlib.sha256()
    weights = model_dir / "model.safetensors"
    with progress.step(f"hashing {weights} (the key of its cached integer model)"):
        with open(weights, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    h.update(json.dumps([FORMAT_VERSION, DEFAULTS], sort_keys=True).encode())
    cached = Path(cache_dir or default_cache()) / "quant" / f"{h.hexdigest()[:24]}.safetensors"
    if cached.is_file():
        try:
            with progress.step(f"loading the cached integer model {cached}"):
                return QuantGPT2.load(cached)
        except QuantFormatError as e:
            # a stale or damaged cache entry: quantise again below
            progress.note(f"the cached integer model is unusable ({e}); quantising again")
    progress.note(f"{model_dir} has no {QUANT_FILENAME}: quantising it (once; the result is "
                  f"cached as {cached})")
    with progress.step("quantising"):
        q = QuantGPT2.from_float(float_model, calibration_ids(model_dir, float_model.config))
    try:
        with progress.step(f"writing {cached}",
                           done=lambda: f"{cached.stat().st_size / 1e6:.0f} MB"):
            cached.parent.mkdir(parents=True, exist_ok=True)
            tmp = cached.with_suffix(".tmp")
            q.save(tmp)
            tmp.replace(cached)
    except OSError as e:
        # an unwritable cache only costs the next run a re-quantisation
        progress.note(f"could not cache the integer model ({e}); the next run quantises again")
    return q
