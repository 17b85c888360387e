"""The memory port: the one bus between every engine and every memory.

```
 requester (engine, machine, host bridge)          memory (on-chip, simulation model, DRAM adapter)
   rd_req  ──► addr ─────────────────────────────►  accepted in order
   rd_resp ◄── data ◄────────────────────────────   one word per request, in request order,
                                                    any latency, held until ready
   wr      ──► addr, data, strb (byte enables) ──►  applied in order
```

`MemPort` is the requester's side; a memory takes it flipped
(``In(MemPort(...))``), so ``connect(m, engine.mem, memory.port)`` joins the
three streams at once. Reads and writes are separate channels: a requester
must not rely on their relative order (the engines never read a word they
have a write to outstanding). Responses may come any number of cycles after
their request; the engines keep enough requests in flight to cover the
latency they are built for, and never lose or repeat a word when
``rd_resp.ready`` drops. A memory accepts writes whether or not its responses
are being taken: an engine turns the words it reads into writes and takes no
further response while a write waits, so a write that waited for a response
to be taken would never go (`rtl.dram_adapter` keeps a read it has no room to
answer yet out of its one op register for this reason).

Parameters: ``addr_bits`` (a word address) and ``mem_bytes`` (bytes per
word; ``strb`` has one bit per byte). `MemPort.for_config` takes both from an
`EngineConfig`.
"""
from amaranth.hdl import unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

__all__ = ["MemPort", "read_request_layout", "read_response_layout", "write_layout"]


def read_request_layout(cfg):
    """A read request: the word address (`cfg`: anything with ``addr_bits``)."""
    return data.StructLayout({"addr": unsigned(cfg.addr_bits)})


def read_response_layout(cfg):
    """A read response: the word (`cfg`: anything with ``mem_bytes``)."""
    return data.StructLayout({"data": unsigned(8 * cfg.mem_bytes)})


def write_layout(cfg):
    """A write: word address, word, one enable bit per byte."""
    return data.StructLayout({"addr": unsigned(cfg.addr_bits),
                              "data": unsigned(8 * cfg.mem_bytes),
                              "strb": unsigned(cfg.mem_bytes)})


class MemPort(wiring.Signature):
    """The requester's side of a memory port: ``rd_req``, ``rd_resp``, ``wr`` streams.

    Two ports are equal (and so `connect`-able) when their parameters are."""

    def __init__(self, *, addr_bits, mem_bytes):
        self.check_parameters(addr_bits=addr_bits, mem_bytes=mem_bytes)
        self._addr_bits, self._mem_bytes = addr_bits, mem_bytes
        super().__init__({
            "rd_req": Out(stream.Signature(read_request_layout(self))),
            "rd_resp": In(stream.Signature(read_response_layout(self))),
            "wr": Out(stream.Signature(write_layout(self))),
        })

    @classmethod
    def check_parameters(cls, *, addr_bits, mem_bytes):
        """Raise `TypeError`/`ValueError` naming the parameter that cannot make a port."""
        for name, value in (("addr_bits", addr_bits), ("mem_bytes", mem_bytes)):
            if not isinstance(value, int) or isinstance(value, bool):
                raise TypeError(f"{name} must be an int, not {value!r}")
        if not 1 <= addr_bits <= 48:
            raise ValueError(f"addr_bits must be 1..48 (a word address), not {addr_bits}")
        if mem_bytes < 1:
            raise ValueError(f"mem_bytes must be at least 1, not {mem_bytes}")

    @classmethod
    def for_config(cls, cfg):
        """The port of an `EngineConfig` (its ``addr_bits`` and ``mem_bytes``)."""
        return cls(addr_bits=cfg.addr_bits, mem_bytes=cfg.mem_bytes)

    @property
    def addr_bits(self):
        return self._addr_bits

    @property
    def mem_bytes(self):
        return self._mem_bytes

    @property
    def data_width(self):
        """Bits per word."""
        return 8 * self._mem_bytes

    def __eq__(self, other):
        return (isinstance(other, MemPort) and other.addr_bits == self.addr_bits
                and other.mem_bytes == self.mem_bytes)

    def __hash__(self):
        return hash((MemPort, self._addr_bits, self._mem_bytes))

    def __repr__(self):
        return f"MemPort(addr_bits={self.addr_bits}, mem_bytes={self.mem_bytes})"
