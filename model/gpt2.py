"""The float GPT-2 reference model in NumPy (float32).

It matches HuggingFace `GPT2LMHeadModel` (pre-LayerNorm blocks, tanh GELU,
learned positions, LM head tied to the token embedding) and is the model the
integer golden model is quantised from and measured against.
"""
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .checkpoint import (CheckpointError, GPT2Config, expected_shapes, load_config,
                         load_gpt2_tensors)

__all__ = ["GPT2", "Block", "KVCache", "layer_norm", "gelu", "softmax",
           "causal_attention", "sample_next", "generate_tokens", "check_token_ids"]


def layer_norm(x, gamma, beta, eps):
    """LayerNorm over the last axis (biased variance, as torch computes it)."""
    mean = x.mean(axis=-1, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=-1, keepdims=True)
    return ((x - mean) / np.sqrt(var + eps) * gamma + beta).astype(np.float32)


def gelu(x):
    """GPT-2's GELU: the tanh approximation ("gelu_new")."""
    x = np.asarray(x, dtype=np.float32)
    c = np.float32(np.sqrt(2.0 / np.pi))
    return (0.5 * x * (1.0 + np.tanh(c * (x + np.float32(0.044715) * x ** 3)))).astype(np.float32)


def softmax(x, axis=-1):
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def causal_attention(q, k, v, offset=0):
    """One head: softmax(q kᵀ / sqrt(d) + causal mask) v.

    q is [Tq, d] for positions offset..offset+Tq-1; k, v are [Tk, d] for
    positions 0..Tk-1; query i sees keys j <= offset + i.
    """
    d = q.shape[-1]
    scores = (q @ k.T) / np.float32(np.sqrt(d))
    tq, tk = scores.shape
    mask = np.arange(tk)[None, :] > (offset + np.arange(tq))[:, None]
    scores = np.where(mask, np.float32(-np.inf), scores)
    return (softmax(scores) @ v).astype(np.float32)


@dataclass
class Block:
    """One transformer block's float weights (Conv1D layout: [in, out])."""
    ln_1_g: np.ndarray
    ln_1_b: np.ndarray
    attn_w: np.ndarray      # [E, 3E]: q, k, v, each split into heads of d_head
    attn_b: np.ndarray
    attn_proj_w: np.ndarray  # [E, E]
    attn_proj_b: np.ndarray
    ln_2_g: np.ndarray
    ln_2_b: np.ndarray
    fc_w: np.ndarray        # [E, F]
    fc_b: np.ndarray
    fc_proj_w: np.ndarray   # [F, E]
    fc_proj_b: np.ndarray


#: Block fields and the HF tensor names (below `h.N.`) they are loaded from.
_BLOCK_TENSORS = [
    ("ln_1_g", "ln_1.weight"), ("ln_1_b", "ln_1.bias"),
    ("attn_w", "attn.c_attn.weight"), ("attn_b", "attn.c_attn.bias"),
    ("attn_proj_w", "attn.c_proj.weight"), ("attn_proj_b", "attn.c_proj.bias"),
    ("ln_2_g", "ln_2.weight"), ("ln_2_b", "ln_2.bias"),
    ("fc_w", "mlp.c_fc.weight"), ("fc_b", "mlp.c_fc.bias"),
    ("fc_proj_w", "mlp.c_proj.weight"), ("fc_proj_b", "mlp.c_proj.bias"),
]


class KVCache:
    """Per-layer K and V, [n_head, T, d_head] each, grown one position at a time."""

    def __init__(self, n_layer):
        self.k = [None] * n_layer
        self.v = [None] * n_layer

    @property
    def length(self):
        return 0 if self.k[0] is None else self.k[0].shape[1]

    def append(self, layer, k, v):
        if self.k[layer] is None:
            self.k[layer], self.v[layer] = k, v
        else:
            self.k[layer] = np.concatenate([self.k[layer], k], axis=1)
            self.v[layer] = np.concatenate([self.v[layer], v], axis=1)
        return self.k[layer], self.v[layer]


def sample_next(logits, temperature, top_k, rng):
    """Pick the next token from one row of logits (greedy when temperature is 0)."""
    logits = np.asarray(logits, dtype=np.float64)
    if temperature == 0:
        return int(np.argmax(logits))
    if top_k is not None and 0 < top_k < logits.size:
        kth = np.partition(logits, -top_k)[-top_k]
        logits = np.where(logits < kth, -np.inf, logits)
    p = softmax(logits / temperature)
    return int(rng.choice(logits.size, p=p))


def check_token_ids(input_ids, config, offset=0):
    """A 1-D sequence of token ids for a model of `config` whose context already
    holds `offset` positions, as an int64 array; a precise error otherwise."""
    ids = np.asarray(input_ids)
    if ids.ndim != 1:
        raise ValueError(f"input_ids must be a 1-D sequence, got shape {ids.shape}")
    if ids.size == 0:
        raise ValueError("input_ids is empty")
    if ids.dtype.kind not in "iu":
        raise TypeError(f"input_ids must be integers, got dtype {ids.dtype}")
    v = config.vocab_size
    if ids.min() < 0 or ids.max() >= v:
        bad = ids[(ids < 0) | (ids >= v)][0]
        raise ValueError(f"token id {bad} is outside the vocabulary [0, {v})")
    if offset + ids.size > config.n_positions:
        raise ValueError(f"sequence of {offset + ids.size} tokens is longer than the "
                         f"model's context n_positions={config.n_positions}")
    return ids.astype(np.int64)


def generate_tokens(step, config, ids, max_new_tokens, temperature, top_k, seed, on_token):
    """The sampling loop every backend shares.

    `step(ids, cache)` runs the model on `ids` after what `cache` (a `KVCache`)
    holds, grows the cache, and returns the last position's float logits.
    """
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    total = len(ids) + max_new_tokens
    if total > config.n_positions:
        raise ValueError(f"prompt ({len(ids)}) + max_new_tokens ({max_new_tokens}) = "
                         f"{total} exceeds the model's context "
                         f"n_positions={config.n_positions}")
    rng = np.random.default_rng(seed)
    cache = KVCache(config.n_layer)
    out = []
    if max_new_tokens == 0:
        return out
    logits = step(ids, cache)
    for n in range(max_new_tokens):
        token = sample_next(logits, temperature, top_k, rng)
        out.append(token)
        if on_token is not None:
            on_token(token)
        if n + 1 < max_new_tokens:
            logits = step([token], cache)
    return out


class GPT2:
    """A GPT-2 language model in float32 NumPy.

    `observe`, where a method takes it, is called as ``observe(name, layer, x)``
    at each named point of the forward pass ("ln_1", "q", "k", "v", "attn",
    "attn_proj", "resid_mid", "ln_2", "fc", "gelu", "fc_proj", "resid",
    "ln_f", "logits"; layer is None outside the blocks): the quantiser uses
    it to calibrate activation scales.
    """

    def __init__(self, config, wte, wpe, blocks, ln_f_g, ln_f_b):
        self.config = config
        self.wte, self.wpe = wte, wpe
        self.blocks = blocks
        self.ln_f_g, self.ln_f_b = ln_f_g, ln_f_b

    @classmethod
    def from_pretrained(cls, path):
        """Load a HF GPT-2 checkpoint directory (`config.json` + `model.safetensors`)."""
        path = Path(path)
        if not path.is_dir():
            raise CheckpointError(f"{path}: not a directory (expected a checkpoint directory "
                                  f"with config.json and model.safetensors)")
        cfg = load_config(path)
        return cls._from_tensors(cfg, load_gpt2_tensors(path, cfg))

    @classmethod
    def _from_tensors(cls, cfg, t):
        blocks = [Block(**{field: t[f"h.{i}.{name}"] for field, name in _BLOCK_TENSORS})
                  for i in range(cfg.n_layer)]
        return cls(cfg, t["wte.weight"], t["wpe.weight"], blocks,
                   t["ln_f.weight"], t["ln_f.bias"])

    @classmethod
    def random(cls, config, seed=0, scale=0.02):
        """A randomly initialised model (GPT-2's init: N(0, 0.02) weights, perturbed
        LayerNorms so that gamma != 1 and beta != 0 are exercised)."""
        rng = np.random.default_rng(seed)
        tensors = {name: (rng.standard_normal(shape) * scale).astype(np.float32)
                   for name, shape in expected_shapes(config).items()}
        for name, t in tensors.items():
            if ".ln_" in name or name.startswith("ln_f"):
                t *= 10  # spread 0.2 around the LayerNorm's own default
                if name.endswith("weight"):
                    t += 1.0
        return cls._from_tensors(config, tensors)

    def tensors(self):
        """The weights as canonical-name -> float32 array (no `transformer.` prefix)."""
        t = {"wte.weight": self.wte, "wpe.weight": self.wpe,
             "ln_f.weight": self.ln_f_g, "ln_f.bias": self.ln_f_b}
        for i, b in enumerate(self.blocks):
            for field, name in _BLOCK_TENSORS:
                t[f"h.{i}.{name}"] = getattr(b, field)
        return t

    def save_pretrained(self, path, layout="transformer"):
        """Write `config.json` + `model.safetensors` that HF `transformers` loads.

        layout "transformer" names tensors like save_pretrained does
        (`transformer.h.0...`); "hub" like the original hub checkpoint
        (`h.0...`, with the `h.N.attn.bias` causal-mask buffers).
        """
        from safetensors.numpy import save_file
        if layout not in ("transformer", "hub"):
            raise ValueError(f"layout must be 'transformer' or 'hub', got {layout!r}")
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        prefix = "transformer." if layout == "transformer" else ""
        out = {prefix + k: np.ascontiguousarray(v) for k, v in self.tensors().items()}
        if layout == "hub":
            P = self.config.n_positions
            mask = np.tril(np.ones((P, P), dtype=np.float32))[None, None]
            for i in range(self.config.n_layer):
                out[f"h.{i}.attn.bias"] = mask
        save_file(out, str(path / "model.safetensors"))
        (path / "config.json").write_text(json.dumps(self.config.to_hf(), indent=2) + "\n")

    def check_ids(self, input_ids, offset=0):
        """Validate a 1-D sequence of token ids; returns it as an int64 array."""
        return check_token_ids(input_ids, self.config, offset)

    def forward(self, input_ids, cache=None, observe=None):
        """Logits [T, vocab] for `input_ids`, continuing `cache` if given (and growing it)."""
        cfg = self.config
        obs = observe or (lambda name, layer, x: None)
        offset = cache.length if cache is not None else 0
        ids = self.check_ids(input_ids, offset)
        T, H, D = ids.size, cfg.n_head, cfg.d_head
        x = self.wte[ids] + self.wpe[offset:offset + T]
        for i, b in enumerate(self.blocks):
            h = layer_norm(x, b.ln_1_g, b.ln_1_b, cfg.layer_norm_epsilon)
            obs("ln_1", i, h)
            qkv = h @ b.attn_w + b.attn_b
            q, k, v = (qkv[:, j * cfg.n_embd:(j + 1) * cfg.n_embd] for j in range(3))
            obs("q", i, q), obs("k", i, k), obs("v", i, v)
            # [T, E] -> [H, T, D]
            q, k, v = (a.reshape(T, H, D).transpose(1, 0, 2) for a in (q, k, v))
            if cache is not None:
                k, v = cache.append(i, k, v)
            a = np.stack([causal_attention(q[j], k[j], v[j], offset) for j in range(H)])
            a = a.transpose(1, 0, 2).reshape(T, cfg.n_embd)
            obs("attn", i, a)
            a = a @ b.attn_proj_w + b.attn_proj_b
            obs("attn_proj", i, a)
            x = x + a
            obs("resid_mid", i, x)
            h = layer_norm(x, b.ln_2_g, b.ln_2_b, cfg.layer_norm_epsilon)
            obs("ln_2", i, h)
            h = h @ b.fc_w + b.fc_b
            obs("fc", i, h)
            h = gelu(h)
            obs("gelu", i, h)
            h = h @ b.fc_proj_w + b.fc_proj_b
            obs("fc_proj", i, h)
            x = x + h
            obs("resid", i, x)
        x = layer_norm(x, self.ln_f_g, self.ln_f_b, cfg.layer_norm_epsilon)
        obs("ln_f", None, x)
        logits = (x @ self.wte.T).astype(np.float32)
        obs("logits", None, logits)
        return logits

    def logits(self, input_ids):
        """Float32 logits [T, vocab] for a 1-D sequence of token ids (full recompute)."""
        return self.forward(input_ids)

    def generate(self, prompt_ids, max_new_tokens, temperature=1.0, top_k=None, seed=None,
                 on_token=None):
        """Sample `max_new_tokens` continuation ids after `prompt_ids`, using a KV cache.

        temperature 0 is greedy. `on_token(id)` is called as each token is chosen.
        Returns the new ids (not including the prompt).
        """
        return generate_tokens(lambda ids, cache: self.forward(ids, cache)[-1],
                               self.config, self.check_ids(prompt_ids), max_new_tokens,
                               temperature, top_k, seed, on_token)
