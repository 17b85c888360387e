"""The memory port signature: parameters checked by name, equal ports connect, unequal do not."""
import pytest
from amaranth.hdl import Module
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from gpt2accel.rtl.config import EngineConfig
from gpt2accel.rtl.memport import MemPort


def test_members_and_layouts():
    sig = MemPort(addr_bits=13, mem_bytes=16)
    assert set(sig.members) == {"rd_req", "rd_resp", "wr"}
    assert sig.members["rd_req"].flow == Out and sig.members["wr"].flow == Out
    assert sig.members["rd_resp"].flow == In
    assert all(isinstance(sig.members[n].signature, stream.Signature) for n in sig.members)
    wr = sig.members["wr"].signature.members["payload"].shape
    assert (wr["addr"].shape.width, wr["data"].shape.width, wr["strb"].shape.width) == (13, 128, 16)
    assert sig.members["rd_req"].signature.members["payload"].shape["addr"].shape.width == 13
    assert sig.members["rd_resp"].signature.members["payload"].shape["data"].shape.width == 128
    assert (sig.addr_bits, sig.mem_bytes, sig.data_width) == (13, 16, 128)
    assert repr(sig) == "MemPort(addr_bits=13, mem_bytes=16)"


def test_for_config_takes_the_engine_parameters():
    e = EngineConfig(rows=4, cols=4, addr_bits=20)
    assert MemPort.for_config(e) == MemPort(addr_bits=20, mem_bytes=e.mem_bytes)
    assert MemPort.for_config(e) != MemPort(addr_bits=19, mem_bytes=e.mem_bytes)
    assert hash(MemPort.for_config(e)) == hash(MemPort(addr_bits=20, mem_bytes=e.mem_bytes))


@pytest.mark.parametrize("kw, err, text", [
    ({"addr_bits": 0, "mem_bytes": 16}, ValueError, "addr_bits must be 1..48"),
    ({"addr_bits": 49, "mem_bytes": 16}, ValueError, "addr_bits must be 1..48"),
    ({"addr_bits": 16, "mem_bytes": 0}, ValueError, "mem_bytes must be at least 1"),
    ({"addr_bits": 16.0, "mem_bytes": 16}, TypeError, "addr_bits must be an int"),
    ({"addr_bits": 16, "mem_bytes": True}, TypeError, "mem_bytes must be an int"),
])
def test_bad_parameters_are_refused_by_name(kw, err, text):
    with pytest.raises(err, match=text):
        MemPort(**kw)
    with pytest.raises(err, match=text):
        MemPort.check_parameters(**kw)


def _module():
    """A module that only collects `connect`'s statements: it is never elaborated, so it
    must not warn (warnings are errors) when it is collected."""
    m = Module()
    m._MustUse__silence = True
    return m


def test_a_requester_connects_to_a_memory_in_one_call():
    requester = MemPort(addr_bits=8, mem_bytes=4).create(path=("req",))
    memory = MemPort(addr_bits=8, mem_bytes=4).flip().create(path=("mem",))
    m = _module()
    wiring.connect(m, requester, memory)
    assert len(m._statements["comb"]) == 9     # valid, ready, payload of three streams


def test_ports_of_different_widths_do_not_connect():
    requester = MemPort(addr_bits=8, mem_bytes=4).create(path=("req",))
    memory = MemPort(addr_bits=9, mem_bytes=4).flip().create(path=("mem",))
    with pytest.raises(wiring.ConnectionError):
        wiring.connect(_module(), requester, memory)
