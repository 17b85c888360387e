"""Random GPT-2 models with realistic statistics, for tests and the accuracy benchmark.

Random init weights (N(0, 0.02)) give flat attention and tiny residuals,
which hide exactly the effects the integer model must survive. `random_gpt2`
therefore imitates what trained GPT-2 checkpoints look like:

* a few residual channels carry large outliers (GPT-2 small has channels
  at 100-1000x the typical magnitude). As in GPT-2, the embeddings are
  moderate and the first block writes the outliers (through its two c_proj
  biases); the residual stream keeps them through every later layer;
* LayerNorm gammas vary around 1 and are small on the outlier channels (as
  trained GPT-2 learns to suppress them), betas are small;
* q/k weights are scaled so attention logits have a standard deviation of
  a few units (peaky, not uniform, softmax);
* weights have heavy-ish tails (Student-t), so per-channel int8 scales matter.
"""
import numpy as np

from .checkpoint import GPT2Config
from .gpt2 import GPT2, Block

__all__ = ["random_gpt2", "outlier_residual"]


def _t(rng, shape, std, df=5):
    """Student-t samples rescaled to standard deviation `std`."""
    return (rng.standard_t(df, size=shape) * std / np.sqrt(df / (df - 2))).astype(np.float32)


def random_gpt2(config=None, seed=0, n_outliers=3, outlier_scale=30.0, score_std=3.0, **cfg):
    """A random `GPT2` (float32) of geometry `config` (or GPT2Config(**cfg)).

    `n_outliers` residual channels are `outlier_scale` times larger than the
    rest; `score_std` is the typical attention-logit standard deviation.
    """
    if config is None:
        config = GPT2Config(**cfg)
    rng = np.random.default_rng(seed)
    e, f, v, p = config.n_embd, config.d_ff, config.vocab_size, config.n_positions
    out_ch = rng.choice(e, size=min(n_outliers, e), replace=False)
    wte = _t(rng, (v, e), 0.15)
    wpe = _t(rng, (p, e), 0.05)
    # q.k ~ d_head * (std_q * std_k) * |ln|^2; choose std so logits/sqrt(d) ~ score_std
    qk_std = np.sqrt(score_std / np.sqrt(config.d_head)) / np.sqrt(e)

    def ln_params():
        g = (1.0 + 0.2 * rng.standard_normal(e)).astype(np.float32)
        g[out_ch] = np.float32(0.05)
        return g, (0.05 * rng.standard_normal(e)).astype(np.float32)

    blocks = []
    for layer in range(config.n_layer):
        g1, b1 = ln_params()
        g2, b2 = ln_params()
        attn_w = np.concatenate([_t(rng, (e, e), qk_std), _t(rng, (e, e), qk_std),
                                 _t(rng, (e, e), 1.0 / np.sqrt(e))], axis=1)
        proj_b, fc_proj_b = _t(rng, (e,), 0.02), _t(rng, (e,), 0.02)
        if layer == 0:
            # half each from attention and MLP: outlier_scale x the embeddings' std
            proj_b[out_ch] = fc_proj_b[out_ch] = np.float32(outlier_scale * 0.15 / 2)
        blocks.append(Block(
            g1, b1, attn_w, _t(rng, (3 * e,), 0.05),
            _t(rng, (e, e), 0.5 / np.sqrt(e)), proj_b,
            g2, b2, _t(rng, (e, f), 1.0 / np.sqrt(e)), _t(rng, (f,), 0.1),
            _t(rng, (f, e), 0.5 / np.sqrt(f)), fc_proj_b))
    g, b = ln_params()
    return GPT2(config, wte, wpe, blocks, g, b)


def outlier_residual(rng, t, e, n_outliers=3, outlier_scale=30.0, std=1.0):
    """A float32 residual-stream sample [t, e] with a few large outlier channels."""
    x = _t(rng, (t, e), std)
    ch = rng.choice(e, size=min(n_outliers, e), replace=False)
    x[:, ch] = (outlier_scale * std * (1.0 + 0.3 * rng.standard_normal((t, ch.size)))
                ).astype(np.float32)
    return x
