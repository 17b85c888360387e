"""Golden models: the float GPT-2 reference and (built on it) the integer model."""
from .checkpoint import CheckpointError, GPT2Config
from .gpt2 import GPT2, KVCache

__all__ = ["GPT2", "GPT2Config", "KVCache", "CheckpointError", "shipped_model_dir"]


def shipped_model_dir(name="tiny"):
    """Directory of a model shipped inside the package (works installed or editable)."""
    from importlib import resources
    from pathlib import Path
    return Path(str(resources.files(__name__) / name))
