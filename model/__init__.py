"""Golden models: the float GPT-2 reference and (built on it) the integer model."""
from .checkpoint import CheckpointError, GPT2Config
from .gpt2 import GPT2, KVCache

__all__ = ["GPT2", "GPT2Config", "KVCache", "CheckpointError"]
