"""Reading HuggingFace GPT-2 checkpoints (`config.json` + `model.safetensors`).

The safetensors container is parsed here rather than through the
`safetensors` package so that every way a file can be broken (truncated,
bad header, overlapping or short tensor data, bfloat16 which NumPy lacks)
ends in a `CheckpointError` that names the file and the problem.
"""
import json
import math
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["CheckpointError", "GPT2Config", "read_safetensors", "load_config",
           "load_gpt2_tensors", "expected_shapes"]


class CheckpointError(ValueError):
    """A checkpoint directory or file is missing, malformed or not GPT-2."""


@dataclass(frozen=True)
class GPT2Config:
    """The geometry of a GPT-2 model (the subset of HF's `GPT2Config` we use)."""
    vocab_size: int
    n_positions: int
    n_embd: int
    n_layer: int
    n_head: int
    n_inner: int | None = None
    layer_norm_epsilon: float = 1e-5

    def __post_init__(self):
        for name in ("vocab_size", "n_positions", "n_embd", "n_layer", "n_head"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise CheckpointError(f"config: {name} must be a positive integer, got {value!r}")
        if self.n_inner is not None and (not isinstance(self.n_inner, int) or self.n_inner < 1):
            raise CheckpointError(f"config: n_inner must be a positive integer or null, "
                                  f"got {self.n_inner!r}")
        if self.n_embd % self.n_head:
            raise CheckpointError(f"config: n_embd ({self.n_embd}) is not divisible by "
                                  f"n_head ({self.n_head})")
        if not (isinstance(self.layer_norm_epsilon, (int, float))
                and 0 < self.layer_norm_epsilon < 1):
            raise CheckpointError(f"config: layer_norm_epsilon must be in (0, 1), "
                                  f"got {self.layer_norm_epsilon!r}")

    @property
    def d_head(self):
        return self.n_embd // self.n_head

    @property
    def d_ff(self):
        return self.n_inner if self.n_inner is not None else 4 * self.n_embd

    def to_hf(self):
        """The `config.json` dictionary HF `transformers` reads."""
        return {
            "model_type": "gpt2", "architectures": ["GPT2LMHeadModel"],
            "vocab_size": self.vocab_size, "n_positions": self.n_positions,
            "n_ctx": self.n_positions, "n_embd": self.n_embd, "n_layer": self.n_layer,
            "n_head": self.n_head, "n_inner": self.n_inner,
            "activation_function": "gelu_new",
            "layer_norm_epsilon": self.layer_norm_epsilon,
        }


# Activation functions HF GPT-2 uses that are the tanh approximation we implement.
_TANH_GELUS = {"gelu_new", "gelu_pytorch_tanh", "gelu_fast"}

_DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16,
    "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8,
    "U8": np.uint8, "BOOL": np.bool_, "BF16": None,  # decoded by hand below
}


def load_config(directory):
    """Read and validate `config.json` in `directory`."""
    path = Path(directory) / "config.json"
    if not path.is_file():
        raise CheckpointError(f"{path}: missing (a GPT-2 checkpoint directory needs "
                              f"config.json and model.safetensors)")
    try:
        raw = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(raw, dict):
        raise CheckpointError(f"{path}: expected a JSON object")
    model_type = raw.get("model_type")
    if model_type != "gpt2":
        raise CheckpointError(f"{path}: model_type is {model_type!r}, not 'gpt2'")
    act = raw.get("activation_function", "gelu_new")
    if act not in _TANH_GELUS:
        raise CheckpointError(f"{path}: activation_function {act!r} is not GPT-2's tanh GELU "
                              f"(one of {sorted(_TANH_GELUS)})")
    for flag in ("scale_attn_by_inverse_layer_idx", "reorder_and_upcast_attn"):
        if raw.get(flag):
            raise CheckpointError(f"{path}: {flag}=true is not supported")
    if raw.get("scale_attn_weights") is False:
        raise CheckpointError(f"{path}: scale_attn_weights=false is not supported")
    missing = [k for k in ("vocab_size", "n_embd", "n_layer", "n_head") if k not in raw]
    if "n_positions" not in raw and "n_ctx" not in raw:
        missing.append("n_positions")
    if missing:
        raise CheckpointError(f"{path}: missing keys {missing}")
    return GPT2Config(
        vocab_size=raw["vocab_size"], n_positions=raw.get("n_positions", raw.get("n_ctx")),
        n_embd=raw["n_embd"], n_layer=raw["n_layer"], n_head=raw["n_head"],
        n_inner=raw.get("n_inner"), layer_norm_epsilon=raw.get("layer_norm_epsilon", 1e-5))


def read_safetensors(path):
    """Read every tensor of a safetensors file into a dict of NumPy arrays."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: missing")
    data = path.read_bytes()
    if len(data) < 8:
        raise CheckpointError(f"{path}: truncated ({len(data)} bytes, no header)")
    (header_len,) = struct.unpack("<Q", data[:8])
    if header_len > len(data) - 8:
        raise CheckpointError(f"{path}: header length {header_len} exceeds file size "
                              f"{len(data)} (truncated or not safetensors)")
    try:
        header = json.loads(data[8:8 + header_len].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: header is not valid JSON ({e})") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: header is not a JSON object")
    body = memoryview(data)[8 + header_len:]
    tensors = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype, shape, (begin, end) = info["dtype"], list(info["shape"]), info["data_offsets"]
        except (KeyError, TypeError, ValueError):
            raise CheckpointError(f"{path}: tensor {name!r} has a malformed header entry") from None
        if dtype not in _DTYPES:
            raise CheckpointError(f"{path}: tensor {name!r} has unknown dtype {dtype!r}")
        itemsize = 2 if dtype == "BF16" else np.dtype(_DTYPES[dtype]).itemsize
        count = math.prod(shape)
        if not (0 <= begin <= end <= len(body)) or end - begin != count * itemsize:
            raise CheckpointError(f"{path}: tensor {name!r} data [{begin}, {end}) does not "
                                  f"match shape {shape} x {itemsize} bytes in a body of "
                                  f"{len(body)} bytes")
        raw = body[begin:end]
        if dtype == "BF16":
            # bfloat16 is the top half of a float32.
            array = (np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16).view(np.float32)
        else:
            array = np.frombuffer(raw, dtype=np.dtype(_DTYPES[dtype]).newbyteorder("<"))
        tensors[name] = array.reshape(shape)
    return tensors


def expected_shapes(cfg):
    """Canonical tensor names (no `transformer.` prefix) and their shapes."""
    E, F = cfg.n_embd, cfg.d_ff
    shapes = {"wte.weight": (cfg.vocab_size, E), "wpe.weight": (cfg.n_positions, E),
              "ln_f.weight": (E,), "ln_f.bias": (E,)}
    for i in range(cfg.n_layer):
        p = f"h.{i}."
        shapes.update({
            p + "ln_1.weight": (E,), p + "ln_1.bias": (E,),
            p + "attn.c_attn.weight": (E, 3 * E), p + "attn.c_attn.bias": (3 * E,),
            p + "attn.c_proj.weight": (E, E), p + "attn.c_proj.bias": (E,),
            p + "ln_2.weight": (E,), p + "ln_2.bias": (E,),
            p + "mlp.c_fc.weight": (E, F), p + "mlp.c_fc.bias": (F,),
            p + "mlp.c_proj.weight": (F, E), p + "mlp.c_proj.bias": (E,),
        })
    return shapes


def _is_buffer(name):
    """HF's non-parameter buffers: the causal-mask tables some checkpoints carry."""
    return name.endswith(".attn.bias") or name.endswith(".attn.masked_bias")


def load_gpt2_tensors(directory, cfg):
    """Load and validate the weights of `directory` as float32 arrays keyed by canonical name.

    Accepts both layouts found in the wild: `transformer.h.0...` (save_pretrained)
    and `h.0...` with `h.N.attn.bias` mask buffers (the hub's original `gpt2`).
    A separate `lm_head.weight` is accepted only if it equals `wte` (tied).
    """
    path = Path(directory) / "model.safetensors"
    raw = read_safetensors(path)
    expected = expected_shapes(cfg)
    tensors, lm_head, extra = {}, None, []
    for name, array in raw.items():
        canon = name[len("transformer."):] if name.startswith("transformer.") else name
        if canon in expected:
            if canon in tensors:
                raise CheckpointError(f"{path}: tensor {canon!r} appears twice "
                                      f"(with and without the 'transformer.' prefix)")
            tensors[canon] = array
        elif canon == "lm_head.weight":
            lm_head = array
        elif not _is_buffer(canon):
            extra.append(name)
    if extra:
        raise CheckpointError(f"{path}: unexpected tensors {sorted(extra)[:8]}"
                              f"{' ...' if len(extra) > 8 else ''} (not part of GPT-2 with "
                              f"n_layer={cfg.n_layer})")
    missing = [n for n in expected if n not in tensors]
    if missing:
        raise CheckpointError(f"{path}: missing tensors {missing[:8]}"
                              f"{' ...' if len(missing) > 8 else ''}")
    out = {}
    for name, shape in expected.items():
        array = tensors[name]
        if array.dtype.kind != "f":
            raise CheckpointError(f"{path}: tensor {name!r} has dtype {array.dtype}, "
                                  f"expected a float type")
        if tuple(array.shape) != shape:
            raise CheckpointError(f"{path}: tensor {name!r} has shape {tuple(array.shape)}, "
                                  f"expected {shape} for this config")
        array = array.astype(np.float32)
        if not np.isfinite(array).all():
            bad = int((~np.isfinite(array)).sum())
            raise CheckpointError(f"{path}: tensor {name!r} has {bad} NaN/Inf values")
        out[name] = array
    if lm_head is not None:
        if lm_head.shape != out["wte.weight"].shape or not np.array_equal(
                lm_head.astype(np.float32), out["wte.weight"]):
            raise CheckpointError(f"{path}: lm_head.weight differs from wte.weight; "
                                  f"GPT-2's LM head is tied to the token embedding")
    return out
