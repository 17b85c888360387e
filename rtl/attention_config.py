"""Configuration of the attention engine (softmax unit, normaliser, controller).

`AttentionConfig` holds the shared `EngineConfig` of the systolic array
instead of adding fields to it, so the matmul engine's configuration stays
untouched. Everything the attention RTL, its cycle model and its driver must
agree on is a field or a derived property here. Impossible combinations are
refused at construction, naming the broken limit.
"""
from dataclasses import dataclass, field

from gpt2accel.model import intmodel as im

from .config import ConfigError, EngineConfig

__all__ = ["AttentionConfig"]


def _ceil_div(a, b):
    return -(-a // b)


@dataclass(frozen=True)
class AttentionConfig:
    #: The systolic array (and memory port) the attention engine shares.
    engine: EngineConfig = field(default_factory=EngineConfig)
    #: Softmax key tile (numerics §4.4 `tile`, model metadata). None = engine.cols.
    tile: int = None
    #: Fractional bits F of the base-2 logits (numerics §4.2, model `frac_bits`).
    frac_bits: int = 6
    #: Scores the softmax unit takes per cycle (and probabilities it emits).
    lanes: int = 1
    #: O elements the normaliser takes per cycle.
    norm_lanes: int = 1
    #: Largest head dimension D (sizes the accumulator buffer rows).
    max_d_head: int = 64
    #: Largest sequence length T (sizes query/key position fields).
    max_seq: int = 1024

    def __post_init__(self):
        if not isinstance(self.engine, EngineConfig):
            raise ConfigError(f"engine must be an EngineConfig, got {self.engine!r}")
        if self.tile is None:
            object.__setattr__(self, "tile", self.engine.cols)
        for name in ("tile", "frac_bits", "lanes", "norm_lanes", "max_d_head", "max_seq"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool):
                raise ConfigError(f"{name} must be an int, got {v!r}")
        self._check("tile", 1, 1024)
        self._check("frac_bits", 1, 10, "the exp2 table has 2^frac_bits entries")
        self._check("lanes", 1, self.tile, "a beat never spans two rows")
        self._check("norm_lanes", 1, self.max_d_head)
        self._check("max_d_head", 1, 256)
        self._check("max_seq", 1, 1 << 16)
        # numerics §4.4: O fits 32 bits while T < 65 793, L < 2^32 always here.

    def _check(self, name, lo, hi, why=""):
        v = getattr(self, name)
        if not lo <= v <= hi:
            raise ConfigError(f"{name}={v} is outside the supported range {lo}..{hi}"
                              + (f" ({why})" if why else ""))

    @property
    def rows(self):
        """Query rows per block (= array rows)."""
        return self.engine.rows

    @property
    def beats_per_row(self):
        """Softmax input/output beats per tile row: ceil(tile / lanes)."""
        return _ceil_div(self.tile, self.lanes)

    @property
    def pos_bits(self):
        """Width of query/key positions (0 .. max_seq - 1)."""
        return max(1, (self.max_seq - 1).bit_length())

    @property
    def m_bits(self):
        """Signed width of the integer running max M = ceil(t / 2^F), |M| <= 2^(23-F)."""
        return im.SCORE_BITS - self.frac_bits + 1
