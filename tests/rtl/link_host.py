"""Host side of the framed link for simulations that drive the bridge's byte streams.

`LinkHost` sends request bytes into a ``rx`` byte stream with random idle
gaps, and a background collector takes reply bytes from ``tx`` with random
``ready`` stalls; `request` sends one frame (`protocol.frame`) and returns the
parsed reply (`protocol.parse_frame`). Used by tests/rtl/test_bridge.py and
tests/boards/test_top.py.
"""
import struct

from gpt2accel.rtl import protocol as P
from gpt2accel.sim.harness.matmul import transfer


class LinkHost:
    def __init__(self, rx, tx, rng, *, stall=0.0, max_gap=3):
        self.rx, self.tx, self.rng = rx, tx, rng
        self.stall, self.max_gap = stall, max_gap
        self.out = bytearray()          # reply bytes not yet consumed
        self.cycle = 0

    async def collect(self, ctx):
        """Background testbench: take every byte the device sends."""
        while True:
            ready = not (self.stall and self.rng.random() < self.stall)
            ctx.set(self.tx.ready, ready)
            _, _, valid, byte = await ctx.tick().sample(self.tx.valid, self.tx.payload)
            if valid and ready:
                self.out.append(byte)

    async def idle(self, ctx, cycles):
        ctx.set(self.rx.valid, 0)
        for _ in range(cycles):
            await ctx.tick()
            self.cycle += 1

    async def send(self, ctx, data):
        """Present `data` byte by byte with random gaps (each below `max_gap` cycles)."""
        for b in data:
            if self.stall and self.rng.random() < self.stall:
                await self.idle(ctx, self.rng.randint(1, self.max_gap))
            self.cycle += await transfer(ctx, self.rx, b)
        ctx.set(self.rx.valid, 0)

    def _frame_ready(self):
        if len(self.out) < P.HEADER_BYTES:
            return 0
        assert self.out[0] == P.SYNC, f"reply starts with 0x{self.out[0]:02x}: {bytes(self.out)}"
        (n,) = struct.unpack_from("<H", self.out, 2)
        total = P.HEADER_BYTES + n + P.CRC_BYTES
        return total if len(self.out) >= total else 0

    async def reply(self, ctx, limit=20_000):
        """(opcode, payload) of the next reply frame; fails after `limit` idle cycles."""
        for _ in range(limit):
            total = self._frame_ready()
            if total:
                data = bytes(self.out[:total])
                del self.out[:total]
                return P.parse_frame(data)
            await self.idle(ctx, 1)
        raise AssertionError(f"no reply within {limit} cycles (have {bytes(self.out)!r})")

    async def request(self, ctx, opcode, payload=b"", limit=20_000):
        await self.send(ctx, P.frame(opcode, payload))
        return await self.reply(ctx, limit)

    async def drain(self, ctx, cycles):
        """Wait `cycles` idle cycles, then return every complete reply frame sent meanwhile."""
        await self.idle(ctx, cycles)
        frames = []
        while self._frame_ready():
            frames.append(await self.reply(ctx))
        assert not self.out, f"partial reply left after {cycles} quiet cycles: {bytes(self.out)!r}"
        return frames


def error_reply(fault, opcode):
    return (P.ERROR, bytes([int(fault), opcode]))
