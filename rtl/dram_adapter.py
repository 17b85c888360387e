"""The machine's memory port on LiteDRAM's native user port.

```
 machine.rd_req ─┐ alternate     ┌──────────────┐ cmd (we, addr)  ┌──────────┐
 machine.wr ─────┴─► one op ───► │ beat issuer  ├───────────────► │ LiteDRAM │
                    (register)   │ 1 or k beats ├─► wdata queue ─► │  native  │
                                 └──────┬───────┘  (data, we)     │   port   │
                                  tags  ▼                         │          │
 machine.rd_resp ◄── word register ◄── assembler ◄── rdata queue ◄┘          │
                                                                  └──────────┘
```

LiteDRAM's native port (``litedram.common.LiteDRAMNativePort``; the
``user_port_native_0_*`` pins of a ``litedram_gen`` core) has three streams:
``cmd`` (``we``, ``addr`` in native words), ``wdata`` (``data``, ``we`` = byte
enables) and ``rdata`` (``data``). On the controller's own port (no width
converter, the case of a generated core) two of its handshakes are strobes:
``wdata.ready`` pulses when the controller takes a write's data, whether
``wdata.valid`` is high or not, and ``rdata.valid`` pulses when a word
arrives, whatever ``rdata.ready`` says. So this adapter

- queues a write's data no later than its command is accepted, so the data is
  at the queue's head when the controller asks for it (writes are answered in
  command order); a write command waits while the queue is full;
- takes a read from the machine only while the read queue has room for its
  native words and every other one owed (a credit count, reserved when the read
  is taken), so an arriving word always has a place and ``rdata.ready`` never
  needs to drop. A read waiting for room waits in the machine's request, never in
  the op register, where it would hold up the writes behind it: the machine's
  units turn the words they read into writes and take no further word while a
  write waits, so a write held until the machine takes a word never goes (the
  `MemPort` contract: writes never wait on the read responses).

Word widths: a machine word of `mem_bytes` and a native word of `native_bytes`,
one a power-of-two multiple of the other. A narrower native port takes ``k``
beats per machine word at consecutive native addresses (``addr * k + i``, least
significant bytes first); a wider one holds ``k`` machine words per native word
(lane ``addr % k`` at native address ``addr // k``), written with the other lanes'
byte enables off. Byte strobes carry over byte for byte.

Ordering: one op at a time goes from the machine's two channels into the issuer
(read and write alternate when both wait), and LiteDRAM keeps one port's
commands in order (a port stays locked to a bank until its commands there are
done), so a read accepted after a write of the same word returns the written
bytes, and responses come back in request order.

Addresses past `depth_words` (the DRAM's size in machine words) behave as in
`rtl.onchip_memory`: a read returns an all-zero word, a write is dropped; a
stray address never aliases onto real data.

Every output towards the machine and towards LiteDRAM comes from a register or a
queue, except ``rd_req.ready``/``wr.ready`` (the op register frees in the cycle
its last beat is accepted, so one op per cycle flows at equal widths). Nothing
goes combinationally from ``rdata`` to the machine.
"""
from amaranth.hdl import *
from amaranth.lib import data, stream, wiring
from amaranth.lib.fifo import SyncFIFOBuffered
from amaranth.lib.wiring import In, Out

from .config import ConfigError, refusing
from .memport import MemPort

__all__ = ["NativePort", "DramAdapter", "MemArbiter", "native_instance_ports"]


class NativePort(wiring.Signature):
    """LiteDRAM's native user port, as its user drives it: ``cmd`` and ``wdata`` out,
    ``rdata`` in (plain ``valid``/``ready`` streams; see the module docstring for the
    controller's strobe semantics). `addr_bits`: native word address; `data_bytes`:
    bytes per native word."""

    def __init__(self, *, addr_bits, data_bytes):
        self._addr_bits, self._data_bytes = addr_bits, data_bytes
        super().__init__({
            "cmd": Out(stream.Signature(data.StructLayout(
                {"we": 1, "addr": unsigned(addr_bits)}))),
            "wdata": Out(stream.Signature(data.StructLayout(
                {"data": unsigned(8 * data_bytes), "we": unsigned(data_bytes)}))),
            "rdata": In(stream.Signature(data.StructLayout(
                {"data": unsigned(8 * data_bytes)}))),
        })

    @property
    def addr_bits(self):
        return self._addr_bits

    @property
    def data_bytes(self):
        return self._data_bytes

    def __eq__(self, other):
        return (isinstance(other, NativePort) and other.addr_bits == self.addr_bits
                and other.data_bytes == self.data_bytes)

    def __hash__(self):
        return hash((NativePort, self.addr_bits, self.data_bytes))

    def __repr__(self):
        return f"NativePort(addr_bits={self.addr_bits}, data_bytes={self.data_bytes})"


def native_instance_ports(native, port="native_0"):
    """The `Instance` ports of a LiteDRAM core's native user port `port`
    (``user_port_<port>_*``) wired to `native`, the adapter's side of it (a
    `NativePort` interface): one mapping for the board top and the co-simulation."""
    p = f"user_port_{port}_"
    return {f"i_{p}cmd_valid": native.cmd.valid, f"o_{p}cmd_ready": native.cmd.ready,
            f"i_{p}cmd_we": native.cmd.payload.we, f"i_{p}cmd_addr": native.cmd.payload.addr,
            f"i_{p}wdata_valid": native.wdata.valid, f"o_{p}wdata_ready": native.wdata.ready,
            f"i_{p}wdata_we": native.wdata.payload.we,
            f"i_{p}wdata_data": native.wdata.payload.data,
            f"o_{p}rdata_valid": native.rdata.valid, f"i_{p}rdata_ready": native.rdata.ready,
            f"o_{p}rdata_data": native.rdata.payload.data}


def _is_pow2(n):
    return n > 0 and n & (n - 1) == 0


class DramAdapter(wiring.Component):
    """``machine``: a memory port (`MemPort`, flipped) of `addr_bits`/`mem_bytes`;
    ``native``: LiteDRAM's native port (`NativePort`) of `native_addr_bits`/`native_bytes`.

    `read_beats`: native words the read queue holds, so the native reads in flight
    (commands accepted, words not yet handed on); it must cover the controller's read
    latency for full bandwidth. `write_beats`: writes whose data may wait for the
    controller. See the module docstring."""

    def __init__(self, *, addr_bits, mem_bytes, native_addr_bits, native_bytes,
                 read_beats=32, write_beats=16):
        with refusing(self):
            MemPort.check_parameters(addr_bits=addr_bits, mem_bytes=mem_bytes)
            for name, value in (("native_addr_bits", native_addr_bits),
                                ("native_bytes", native_bytes), ("read_beats", read_beats),
                                ("write_beats", write_beats)):
                if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                    raise ConfigError(f"{name} must be a positive int, not {value!r}")
            big, small = max(mem_bytes, native_bytes), min(mem_bytes, native_bytes)
            if big % small or not _is_pow2(big // small):
                raise ConfigError(f"native word of {native_bytes} bytes and memory word of "
                                  f"{mem_bytes} bytes: one must be a power-of-two multiple "
                                  f"of the other")
            self.beats = max(1, mem_bytes // native_bytes)   # native beats per machine word
            self.lanes = max(1, native_bytes // mem_bytes)   # machine words per native word
            if read_beats < self.beats:
                raise ConfigError(f"read_beats={read_beats} cannot hold one memory word "
                                  f"({self.beats} native beats)")
            if write_beats < 2:
                raise ConfigError(f"write_beats must be at least 2, not {write_beats}")
        self.addr_bits, self.mem_bytes = addr_bits, mem_bytes
        self.native_addr_bits, self.native_bytes = native_addr_bits, native_bytes
        self.read_beats, self.write_beats = read_beats, write_beats
        super().__init__({
            "machine": In(MemPort(addr_bits=addr_bits, mem_bytes=mem_bytes)),
            "native": Out(NativePort(addr_bits=native_addr_bits, data_bytes=native_bytes)),
        })

    @property
    def depth_words(self):
        """Machine words the native address space holds."""
        return (1 << self.native_addr_bits) * self.lanes // self.beats

    def elaborate(self, platform):
        m = Module()
        mach, nat = self.machine, self.native
        beats, lanes, nb = self.beats, self.lanes, self.native_bytes
        lane_bits = (lanes - 1).bit_length()

        # ---------------- one op at a time, in acceptance order ----------------
        op_valid, op_we = Signal(), Signal()
        op_addr = Signal(self.native_addr_bits)              # native address of this beat
        op_data = Signal(8 * self.mem_bytes)                 # narrower port: shifts a beat a time
        op_strb = Signal(self.mem_bytes)
        op_lane, op_zero = Signal(max(1, lane_bits)), Signal()
        op_left = Signal(range(beats + 1))                   # beats still to issue
        prefer_write = Signal()

        m.submodules.wq = wq = SyncFIFOBuffered(width=9 * nb, depth=self.write_beats)
        # the credits count on `read_beats` places whatever the arrival pattern; a
        # buffered queue of 2 or fewer entries refuses a write in the cycle after one
        # into it empty (its entry is then moving to the output register), so it
        # would drop the second of two words arriving back to back
        q_depth = max(self.read_beats, 3)
        m.submodules.rq = rq = SyncFIFOBuffered(width=8 * nb, depth=q_depth)
        # per native read beat: its lane and whether it lies past the DRAM
        m.submodules.tq = tq = SyncFIFOBuffered(width=max(1, lane_bits) + 1, depth=q_depth)

        owed = Signal(range(self.read_beats + 1))            # read beats taken, not handed on
        beat_popped = Signal()
        # a read in the op register has its credits: only a write waits here (for queue room)
        m.d.comb += [nat.cmd.valid.eq(op_valid & (~op_we | wq.w_rdy)),
                     nat.cmd.payload.we.eq(op_we), nat.cmd.payload.addr.eq(op_addr)]
        issued = nat.cmd.valid & nat.cmd.ready
        last = op_left == 1
        free = ~op_valid | (issued & last)

        if lanes > 1:
            w_data = op_data.replicate(lanes)
            w_strb = (op_strb << (op_lane * self.mem_bytes))[:nb]
        else:
            w_data, w_strb = op_data[:8 * nb], op_strb[:nb]
        m.d.comb += [wq.w_en.eq(issued & op_we), wq.w_data.eq(Cat(w_data, w_strb)),
                     tq.w_en.eq(issued & ~op_we), tq.w_data.eq(Cat(op_lane, op_zero))]
        with m.If(issued):
            m.d.sync += [op_addr.eq(op_addr + 1), op_left.eq(op_left - 1),
                         op_data.eq(op_data >> (8 * nb)), op_strb.eq(op_strb >> nb)]
            with m.If(last):
                m.d.sync += op_valid.eq(0)

        room = owed <= self.read_beats - beats
        read_ok = mach.rd_req.valid & room
        take_write = mach.wr.valid & (prefer_write | ~read_ok)
        take_read = read_ok & ~take_write
        m.d.sync += owed.eq(owed + Mux(free & take_read, beats, 0) - beat_popped)
        m.d.comb += [mach.wr.ready.eq(free & take_write),
                     mach.rd_req.ready.eq(free & take_read)]
        addr = Mux(take_write, mach.wr.payload.addr, mach.rd_req.payload.addr)
        in_range = addr < self.depth_words
        with m.If(free & (take_write | take_read)):
            m.d.sync += [op_we.eq(take_write), op_left.eq(beats),
                         op_data.eq(mach.wr.payload.data), op_strb.eq(mach.wr.payload.strb),
                         op_zero.eq(~in_range), prefer_write.eq(~take_write)]
            if lanes > 1:
                m.d.sync += [op_addr.eq(addr >> lane_bits), op_lane.eq(addr[:lane_bits])]
            else:
                m.d.sync += op_addr.eq(addr * beats)
            # a write past the DRAM is accepted and dropped
            m.d.sync += op_valid.eq(take_read | in_range)

        # ---------------- write data: at the head before the controller asks ----------------
        m.d.comb += [nat.wdata.valid.eq(wq.r_rdy),
                     nat.wdata.payload.data.eq(wq.r_data[:8 * nb]),
                     nat.wdata.payload.we.eq(wq.r_data[8 * nb:]),
                     wq.r_en.eq(nat.wdata.ready)]

        # ---------------- read data: always room (credits), reassembled in order ----------------
        m.d.comb += [nat.rdata.ready.eq(rq.w_rdy), rq.w_en.eq(nat.rdata.valid),
                     rq.w_data.eq(nat.rdata.payload.data)]
        out_valid, out_data = Signal(), Signal(8 * self.mem_bytes)
        m.d.comb += [mach.rd_resp.valid.eq(out_valid), mach.rd_resp.payload.data.eq(out_data)]
        with m.If(mach.rd_resp.ready):
            m.d.sync += out_valid.eq(0)
        head_lane, head_zero = tq.r_data[:max(1, lane_bits)], tq.r_data[-1]
        beat = Mux(head_zero, 0, rq.r_data)
        m.d.comb += beat_popped.eq(rq.r_en)
        if beats == 1:
            word = beat.word_select(head_lane, 8 * self.mem_bytes) if lanes > 1 else beat
            m.d.comb += [rq.r_en.eq(rq.r_rdy & (~out_valid | mach.rd_resp.ready)),
                         tq.r_en.eq(rq.r_en)]
            with m.If(rq.r_en):
                m.d.sync += [out_valid.eq(1), out_data.eq(word)]
        else:
            # beats fill the word from its least significant end; a finished word waits
            # for the output register
            acc = Signal(8 * self.mem_bytes)
            got = Signal(range(beats + 1))
            full = got == beats
            move = full & (~out_valid | mach.rd_resp.ready)
            m.d.comb += [rq.r_en.eq(rq.r_rdy & (~full | move)), tq.r_en.eq(rq.r_en)]
            with m.If(move):
                m.d.sync += [out_valid.eq(1), out_data.eq(acc), got.eq(0)]
            with m.If(rq.r_en):
                m.d.sync += [acc.eq(Cat(acc[8 * nb:], beat)),
                             got.eq(Mux(move, 1, got + 1))]
        return m


class MemArbiter(wiring.Component):
    """Two requesters on one memory port: ``host`` (the host bridge) and ``machine``,
    for a memory with one port (the DRAM adapter), where the on-chip memory has one
    per requester.

    The bridge reaches memory only while the machine is idle (`Fault.BUSY`), so the
    two never compete for long: the port belongs to one ``owner`` at a time, and
    passes to the other only while no read is owed to the owner (``pending``), so
    every response goes back to whoever asked without a tag per read. ``flush`` (the
    bridge's RESET of the machine) drops the responses still owed to the machine,
    which no longer takes them after its reset; until they are in, neither side
    reads. Writes need no such care: a write accepted is the memory's.
    """

    def __init__(self, *, addr_bits, mem_bytes, max_pending=255):
        with refusing(self):
            MemPort.check_parameters(addr_bits=addr_bits, mem_bytes=mem_bytes)
        self.max_pending = max_pending
        port = MemPort(addr_bits=addr_bits, mem_bytes=mem_bytes)
        super().__init__({"host": In(port), "machine": In(port), "mem": Out(port),
                          "flush": In(1), "owner_host": Out(1)})

    def elaborate(self, platform):
        m = Module()
        host, mach, mem = self.host, self.machine, self.mem
        pending = Signal(range(self.max_pending + 1))
        draining = Signal()
        owner = self.owner_host                   # 1: the host's, 0: the machine's
        req_taken = mem.rd_req.valid & mem.rd_req.ready
        resp_taken = mem.rd_resp.valid & mem.rd_resp.ready
        m.d.sync += pending.eq(pending + req_taken - resp_taken)
        with m.If(self.flush):
            m.d.sync += draining.eq(1)
        with m.Elif(draining & (pending == 0)):
            m.d.sync += draining.eq(0)
        # the other side asks, the owner does not, and nothing is owed: hand over
        other_wants = Mux(owner, mach.rd_req.valid | mach.wr.valid,
                          host.rd_req.valid | host.wr.valid)
        owner_wants = Mux(owner, host.rd_req.valid | host.wr.valid,
                          mach.rd_req.valid | mach.wr.valid)
        with m.If(other_wants & ~owner_wants & (pending == 0) & ~draining):
            m.d.sync += owner.eq(~owner)

        room = (pending < self.max_pending) & ~draining & ~self.flush
        for side, mine in ((host, owner), (mach, ~owner)):
            m.d.comb += [side.rd_req.ready.eq(mine & room & mem.rd_req.ready),
                         side.wr.ready.eq(mine & mem.wr.ready),
                         side.rd_resp.payload.eq(mem.rd_resp.payload),
                         side.rd_resp.valid.eq(mine & ~draining & mem.rd_resp.valid)]
        with m.If(owner):
            m.d.comb += [mem.rd_req.payload.eq(host.rd_req.payload),
                         mem.rd_req.valid.eq(host.rd_req.valid & room),
                         mem.wr.payload.eq(host.wr.payload), mem.wr.valid.eq(host.wr.valid),
                         mem.rd_resp.ready.eq(host.rd_resp.ready)]
        with m.Else():
            m.d.comb += [mem.rd_req.payload.eq(mach.rd_req.payload),
                         mem.rd_req.valid.eq(mach.rd_req.valid & room),
                         mem.wr.payload.eq(mach.wr.payload), mem.wr.valid.eq(mach.wr.valid),
                         mem.rd_resp.ready.eq(mach.rd_resp.ready | draining)]
        return m
