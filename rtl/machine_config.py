"""The whole machine's configuration: one frozen object for RTL, cycle models, compiler,
driver, serial protocol and board presets.

`MachineConfig` is an `AttentionConfig` (the array, its memory port and the attention
engine) plus what only the whole machine has: the residual rows' saturation width, the
opcodes built in hardware and the softmax's exp2 table. Everything that used to travel
beside the config as loose `Machine` arguments is a field here, so a bitstream's
fingerprint (`protocol.config_id`), the fast backend's build cache and a board preset
all read the same object and cannot disagree about it.
"""
from dataclasses import dataclass, fields

from .attention_config import AttentionConfig
from .config import ConfigError
from .isa import RESID_BYTES, Op

__all__ = ["MachineConfig", "machine_ops"]


def machine_ops(ops=None):
    """The opcodes a machine built with `ops` executes (a sorted tuple, HALT included);
    ConfigError for something that is not an opcode."""
    if ops is None:
        return tuple(Op)
    try:
        chosen = {Op(op) if not isinstance(op, str) else Op[op.upper()] for op in ops}
    except (KeyError, ValueError) as exc:
        raise ConfigError(f"machine ops: {exc} is not an opcode "
                          f"(have: {', '.join(o.name for o in Op)})") from None
    return tuple(sorted(chosen | {Op.HALT}))


@dataclass(frozen=True)
class MachineConfig(AttentionConfig):
    #: Residual rows saturate to this many bits (numerics §5, the model's `resid_bits`):
    #: RESADD and REQUANT must saturate where the golden model does.
    resid_bits: int = 16
    #: Opcodes built in hardware (names, e.g. ``("matmul",)``, for chips too small for
    #: the whole machine); None builds every opcode. Normalised to sorted upper-case names
    #: without HALT, or None when every opcode is chosen.
    ops: tuple = None
    #: The softmax's exp2 ROM (2^frac_bits values in 0..255); None is numerics §4.2's
    #: table. Only tests that seed a defect set it.
    exp2_table: tuple = None

    def __post_init__(self):
        super().__post_init__()
        rb = self.resid_bits
        if not isinstance(rb, int) or isinstance(rb, bool) or not 4 <= rb <= 8 * RESID_BYTES:
            raise ConfigError(f"resid_bits={rb!r} is outside the supported range "
                              f"4..{8 * RESID_BYTES} (int16 residual rows)")
        if self.ops is not None:
            if isinstance(self.ops, (str, Op)):
                raise ConfigError(f"ops must be a collection of opcodes, got {self.ops!r}")
            built = machine_ops(self.ops)
            object.__setattr__(self, "ops", None if len(built) == len(Op) else
                               tuple(op.name for op in built if op is not Op.HALT))
        if self.exp2_table is not None:
            object.__setattr__(self, "exp2_table", tuple(int(x) for x in self.exp2_table))

    @classmethod
    def of(cls, cfg, **machine):
        """`cfg` as a MachineConfig: an AttentionConfig gets the machine fields `machine`
        (defaults otherwise); a MachineConfig is returned with `machine` replaced."""
        if not isinstance(cfg, AttentionConfig):
            raise ConfigError(f"expected an AttentionConfig or MachineConfig, got {cfg!r}")
        base = {f.name: getattr(cfg, f.name) for f in fields(cfg)}
        return cls(**{**base, **machine})

    @property
    def built_ops(self):
        """The opcodes built in hardware, HALT included (`machine_ops`)."""
        return machine_ops(self.ops)

    @property
    def attention(self):
        """The AttentionConfig part (the engines' view of the machine)."""
        return AttentionConfig(**{f.name: getattr(self, f.name) for f in fields(AttentionConfig)})
