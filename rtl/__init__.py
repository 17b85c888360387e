"""gpt2accel.rtl

Matmul engine: `config.EngineConfig` (shared configuration),
`matmul.MatmulEngine` (the engine), `verilog.generate` (Verilog text),
`resources.synthesize` (Yosys resource counts).
"""
from .config import ConfigError, EngineConfig

__all__ = ["ConfigError", "EngineConfig"]
