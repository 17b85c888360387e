"""`MachineConfig`: the whole machine's one configuration (engines + residual width +
opcodes + exp2 table), its checks, and the fingerprint bitstreams carry."""
import pytest

from gpt2accel.rtl import protocol as P
from gpt2accel.rtl.attention_config import AttentionConfig
from gpt2accel.rtl.config import ConfigError, EngineConfig
from gpt2accel.rtl.isa import Op
from gpt2accel.rtl.machine_config import MachineConfig

ATT = AttentionConfig(engine=EngineConfig(rows=4, cols=4, addr_bits=16), tile=4, max_seq=64,
                      max_d_head=16)


def test_an_attention_config_lifts_to_the_default_machine():
    m = MachineConfig.of(ATT)
    assert isinstance(m, AttentionConfig) and m.attention == ATT
    assert (m.resid_bits, m.ops, m.exp2_table) == (16, None, None)
    assert m.built_ops == tuple(Op)
    assert MachineConfig.of(m) == m and MachineConfig.of(m, resid_bits=12).resid_bits == 12
    # the machine's fields leave the engines' view untouched
    assert MachineConfig.of(ATT, resid_bits=12, ops=("matmul",)).attention == ATT


def test_ops_are_normalised():
    assert MachineConfig.of(ATT, ops=("matmul",)).ops == ("MATMUL",)
    assert MachineConfig.of(ATT, ops=[Op.MATMUL, "halt"]).ops == ("MATMUL",)
    assert MachineConfig.of(ATT, ops=[op.name for op in Op]).ops is None      # every opcode
    assert MachineConfig.of(ATT, ops=["kvstore", "matmul"]).built_ops == \
        (Op.MATMUL, Op.KVSTORE, Op.HALT)
    assert MachineConfig.of(ATT, ops=["kvstore", "matmul"]) == \
        MachineConfig.of(ATT, ops=["MATMUL", "KVSTORE"])


@pytest.mark.parametrize("machine, match", [
    ({"ops": ("softmax",)}, "not an opcode"),
    ({"ops": "matmul"}, "collection of opcodes"),
    ({"resid_bits": 17}, "resid_bits=17 is outside"),
    ({"resid_bits": 3}, "resid_bits=3 is outside"),
    ({"resid_bits": True}, "resid_bits=True is outside"),
])
def test_impossible_machines_are_refused(machine, match):
    with pytest.raises(ConfigError, match=match):
        MachineConfig.of(ATT, **machine)
    with pytest.raises(ConfigError, match="expected an AttentionConfig"):
        MachineConfig.of(ATT.engine)


def test_the_exp2_table_is_part_of_the_config():
    table = [255] * (1 << ATT.frac_bits)
    m = MachineConfig.of(ATT, exp2_table=table)
    assert m.exp2_table == tuple(table) and hash(m) != hash(MachineConfig.of(ATT))


def test_config_id_follows_the_machine_and_its_instruction_layouts(monkeypatch):
    """The fingerprint a bitstream reports changes with the residual width, the opcodes
    built and any instruction's body layout (a bitstream that decodes ATTENTION's fields
    differently must be refused), and not with the exp2 table or the config's class."""
    from amaranth.hdl import unsigned
    from amaranth.lib import data
    from gpt2accel.rtl import isa
    base = P.config_id(ATT)
    assert P.config_id(MachineConfig.of(ATT)) == base
    assert P.config_id(MachineConfig.of(ATT, exp2_table=[1] * (1 << ATT.frac_bits))) == base
    ids = {P.config_id(MachineConfig.of(ATT, **m)) for m in
           ({"resid_bits": 12}, {"ops": ("matmul",)}, {"ops": ("matmul", "kvstore")})}
    assert len(ids | {base}) == 4
    real = isa.body_layout
    monkeypatch.setattr(isa, "body_layout", lambda cfg, op: data.StructLayout(
        {"moved": unsigned(1), "body": real(cfg, op)}) if op == Op.ATTENTION else real(cfg, op))
    assert P.config_id(ATT) != base
    # a MATMUL-only machine has no ATTENTION to decode: its fingerprint stays
    assert P.config_id(MachineConfig.of(ATT, ops=("matmul",))) in ids
