"""On-chip word memory serving the machine's memory port and the host bridge.

```
 machine.rd_req ─┐ priority                                     ┌─► machine.rd_resp (tag 0)
 host.rd_req ────┴─► read port ─► register ─► response queue ───┤
   (accepted while < 4 words owed)  (Memory)       (4 words)     └─► host.rd_resp    (tag 1)
 machine.wr ─────┐ priority
 host.wr ────────┴─► register ─► write port (byte strobes), forwarded to a read of its word
```

Both ports are memory ports (`rtl.memport.MemPort`): ``rd_req``
carries a word address, ``rd_resp`` returns the words in request order with
back-pressure, ``wr`` carries address, data and byte strobes. One
`lib.memory.Memory` (block RAM: EBR on ECP5) with one read and one write
port serves both; the machine wins when both request in the same cycle (the
host bridge only accesses memory while the machine is idle, so in practice
they never meet).

Block RAM reads (`READ_LATENCY` 3): the request's address is registered
before the storage, so the block RAMs' address pins (all 108 of them on an
ECP5-85F) are driven by a flip-flop instead of the requesters' logic, and the
storage reads every cycle (its enable fans out to every block too); the word
read is registered right behind its bank multiplexers (the block RAM's output
is slow: 5.6 ns on an ECP5-85F), then goes to the consumer, or into a
four-word response queue (`lib.fifo.SyncFIFO`) while words wait in it or the
consumer stalls. A request is accepted while fewer than four words are owed
(accepted and not yet taken), so the queue always has room for every word in
flight, ``rd_req.ready`` comes from a counter (not through the consumer's
ready), no word is lost or repeated when ``rd_resp.ready`` drops, and a word
per cycle flows while the consumer keeps taking. Each word carries a tag
naming its requester, so responses go back to whoever asked, in order.

``storage="spram"`` keeps the words in the iCE40UP5K's single-port SPRAM
(`rtl.spram.SpramStorage`): a cycle then reads or writes. A write reaches it
a cycle after its transfer (as the block RAM's do), and a read request waits
in that cycle. Its reads (`READ_LATENCY` 1)
spend fewer flip-flops, which that chip is short of, and aim at its lower
clock: the storage's output holds a word until the next read, and a single
skid register takes it when a new read would replace it while the consumer
stalls (requests are accepted while the skid register is empty).

Addresses at or beyond `depth` are out of range: such a read returns an
all-zero word and such a write is ignored (the stream still completes), so a
stray address never aliases onto real data. A read in the same cycle as a
write to the same word returns the old contents (read before write, as the
reference `sim.harness.matmul.MemoryModel` does).
"""
from amaranth.hdl import *
from amaranth.lib import wiring
from amaranth.lib.fifo import SyncFIFO
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In

from .config import ConfigError, EngineConfig, refusing
from .memport import MemPort
from .spram import SpramStorage

__all__ = ["OnChipMemory", "READ_LATENCY"]

#: cycles from an accepted read request to its word at ``rd_resp``, per storage:
#: block RAM reads, the address register, the read, a register behind the bank
#: multiplexers (the response queue, whose READ_LATENCY + 1 words cover the words
#: in flight and the cycle a returned credit takes, is passed by while empty);
#: SPRAM's output is used as it is, with one skid register
READ_LATENCY = {"bram": 3, "spram": 1}


class OnChipMemory(wiring.Component):
    """`depth` words of `cfg.mem_bytes` bytes with a ``machine`` and a ``host`` port
    (`memport.MemPort`, flipped). See the module docstring. `spram_model_words`:
    the words of the SPRAM's behavioural twin (`SpramStorage`'s `model_words`)."""

    STORAGES = ("bram", "spram")

    def __init__(self, cfg: EngineConfig, depth, storage="bram", *, spram_model_words=None):
        with refusing(self):
            if storage not in self.STORAGES:
                raise ConfigError(f"memory storage {storage!r} is not one of "
                                  f"{', '.join(self.STORAGES)}")
            if not isinstance(depth, int) or isinstance(depth, bool) or depth < 1:
                raise ConfigError(f"memory depth must be a positive int, got {depth!r}")
            if depth > 1 << cfg.addr_bits:
                raise ConfigError(f"memory depth {depth} words exceeds the {cfg.addr_bits}-bit "
                                  f"word address ({1 << cfg.addr_bits} words)")
            if storage == "spram":
                # refuses shapes the SPRAM macros cannot hold
                SpramStorage.macros_for(8 * cfg.mem_bytes, depth)
            elif spram_model_words is not None:
                raise ConfigError(f"spram_model_words={spram_model_words!r} applies to SPRAM "
                                  f"storage, not {storage!r}")
        self.cfg, self.depth, self.storage = cfg, depth, storage
        self.spram_model_words = spram_model_words
        super().__init__({"machine": In(MemPort.for_config(cfg)),
                          "host": In(MemPort.for_config(cfg))})

    def elaborate(self, platform):
        m = Module()
        cfg, depth = self.cfg, self.depth
        rp, wp = self._ports(m)
        mach, host = self.machine, self.host

        # ---------------- writes: machine first ----------------
        wr = {f: Mux(mach.wr.valid, mach.wr.payload[f], host.wr.payload[f])
              for f in ("addr", "data", "strb")}
        writing = mach.wr.valid | host.wr.valid
        m.d.comb += [mach.wr.ready.eq(1), host.wr.ready.eq(~mach.wr.valid)]
        # A write reaches the storage a cycle after its transfer: the requesters'
        # write logic then ends at this register instead of fanning out to the
        # storage's address, data and enable pins (the range check comes after it,
        # too). Block RAM: reads reach it a cycle after their transfer as well
        # (`_queued_reads`), and the storage reads before it writes, so a read sees
        # exactly the writes transferred before it, as if written at the transfer.
        # SPRAM: a read transferred with a write reads before it (the old word), and
        # the write's cycle at the storage is the next one, which no read gets
        # (`free`): a read's ready waits on a flip-flop, not on the machine's write
        # valid (on the iCE40 that path ran from the output FIFO through the writer
        # into the matmul issuer's whole walk, and into the SPRAM's pins)
        w_addr, w_data = Signal(len(wr["addr"])), Signal.like(wp.data)
        w_strb, w_en, w_busy = Signal.like(wp.en), Signal.like(wp.en), Signal()
        m.d.sync += [w_addr.eq(wr["addr"]), w_data.eq(wr["data"]),
                     w_strb.eq(Mux(writing, wr["strb"], 0)), w_busy.eq(writing)]
        m.d.comb += [w_en.eq(Mux(w_addr < depth, w_strb, 0)),
                     wp.addr.eq(w_addr), wp.data.eq(w_data), wp.en.eq(w_en)]
        # single-port storage: a read waits while the write transferred last cycle
        # has the storage
        free = ~w_busy if self.storage == "spram" else C(1)

        # ---------------- reads ----------------
        req_addr = Mux(mach.rd_req.valid, mach.rd_req.payload.addr, host.rd_req.payload.addr)
        accept, taken = Signal(), Signal()
        pipeline = self._queued_reads if self.storage == "bram" else self._skid_reads
        room, out_valid, out_data, out_tag = pipeline(
            m, rp, accept, taken, tag=~mach.rd_req.valid, addr=req_addr, depth=depth)
        m.d.comb += [mach.rd_req.ready.eq(room & free),
                     host.rd_req.ready.eq(room & free & ~mach.rd_req.valid),
                     accept.eq((mach.rd_req.valid | host.rd_req.valid) & room & free)]
        out_ready = Mux(out_tag, host.rd_resp.ready, mach.rd_resp.ready)
        m.d.comb += [mach.rd_resp.payload.data.eq(out_data), host.rd_resp.payload.data.eq(out_data),
                     mach.rd_resp.valid.eq(out_valid & ~out_tag),
                     host.rd_resp.valid.eq(out_valid & out_tag),
                     taken.eq(out_valid & out_ready)]
        return m

    @property
    def read_latency(self):
        """Cycles from an accepted read request to its word at ``rd_resp``."""
        return READ_LATENCY[self.storage]

    @staticmethod
    def _queued_reads(m, rp, accept, taken, *, tag, addr, depth):
        """Block RAM: the request is registered (address, tag, range) and read from the
        storage in the next cycle, which reads every cycle, so neither its address nor
        its enable pins see the requesters' logic; the word is registered right behind
        the storage (its bank multiplexers included), then goes to the consumer, or
        into the queue while the queue holds older words or the consumer stalls.
        Requests are accepted while fewer words are owed (accepted, not yet taken)
        than the queue holds. Returns (room, valid, data, tag) of the response side."""
        latency = READ_LATENCY["bram"]
        m.submodules.queue = queue = SyncFIFO(width=len(rp.data) + 1, depth=latency + 1)
        owed = Signal(range(latency + 2))
        m.d.sync += owed.eq(owed + accept - taken)
        r_addr, r_valid, r_tag = Signal.like(addr), Signal(), Signal()
        m.d.sync += [r_addr.eq(addr), r_valid.eq(accept), r_tag.eq(tag)]
        m.d.comb += [rp.addr.eq(r_addr), rp.en.eq(1)]
        read_valid, read_tag, read_zero = Signal(), Signal(), Signal()
        m.d.sync += [read_valid.eq(r_valid), read_tag.eq(r_tag), read_zero.eq(r_addr >= depth)]
        word_valid, word = Signal(), Signal(len(rp.data) + 1)
        m.d.sync += [word_valid.eq(read_valid), word.eq(Cat(rp.data, read_tag))]
        with m.If(read_zero):
            m.d.sync += word[:-1].eq(0)
        # the queue's words are older than the registered one: it goes out first only
        # while the queue is empty, and is queued unless taken at once
        head = Mux(queue.r_rdy, queue.r_data, word)
        m.d.comb += [queue.w_en.eq(word_valid & (queue.r_rdy | ~taken)),
                     queue.w_data.eq(word), queue.r_en.eq(taken & queue.r_rdy)]
        return owed != latency + 1, queue.r_rdy | word_valid, head[:-1], head[-1]

    @staticmethod
    def _skid_reads(m, rp, accept, taken, *, tag, addr, depth):
        """SPRAM (few flip-flops on an iCE40): the storage's output holds its word until
        the next read, and one skid register takes that word when a new read would
        replace it while the consumer stalls; requests are accepted while the skid
        register is empty. Returns (room, valid, data, tag) of the response side."""
        skid_valid, skid_data, skid_tag = Signal(), Signal.like(rp.data), Signal()
        held_valid, held_tag, held_zero = Signal(), Signal(), Signal()  # the storage's word
        out_valid = skid_valid | held_valid
        out_data = Mux(skid_valid, skid_data, Mux(held_zero, 0, rp.data))
        with m.If(skid_valid):
            # no request is accepted while the skid is full: the held word stays
            with m.If(taken):
                m.d.sync += skid_valid.eq(0)
        with m.Else():
            with m.If(held_valid & ~taken & accept):
                m.d.sync += [skid_valid.eq(1), skid_data.eq(out_data), skid_tag.eq(held_tag)]
            with m.If(accept | taken):
                m.d.sync += held_valid.eq(accept)
        m.d.comb += [rp.addr.eq(addr), rp.en.eq(accept)]
        with m.If(accept):
            m.d.sync += [held_tag.eq(tag), held_zero.eq(addr >= depth)]
        return ~skid_valid, out_valid, out_data, Mux(skid_valid, skid_tag, held_tag)

    def _ports(self, m):
        """(read port, write port) of the storage: a `Memory`'s, or the SPRAM's behind
        port-shaped views (one address, taken by the write when there is one)."""
        width = 8 * self.cfg.mem_bytes
        if self.storage == "bram":
            m.submodules.mem = mem = Memory(shape=unsigned(width), depth=self.depth, init=[])
            return mem.read_port(domain="sync"), mem.write_port(granularity=8)
        m.submodules.spram = sp = SpramStorage(width, self.depth,
                                               model_words=self.spram_model_words)
        rp = _PortView(addr=Signal(range(self.depth)), en=Signal(), data=sp.rdata)
        wp = _PortView(addr=Signal(range(self.depth)), en=Signal(width // 8), data=Signal(width))
        m.d.comb += [sp.addr.eq(Mux(wp.en.any(), wp.addr, rp.addr)), sp.wdata.eq(wp.data),
                     sp.wen.eq(wp.en), sp.ren.eq(rp.en)]
        return rp, wp


class _PortView:
    """The signals of a memory port, by name."""

    def __init__(self, **signals):
        self.__dict__.update(signals)
