"""The board-specific shell around the platform-independent `BoardTop`.

`PlatformTop(board)` (a resolved `presets.BoardMachine`) does what depends on
the board: it makes the ``sync`` clock (the oscillator directly, or a PLL
with the board top held in reset until the PLL locks), requests the
platform's ``uart`` resource and wires it to `BoardTop`'s ``rx``/``tx``
(its receiver synchronises the pin), and shows
``busy``, ``error`` and a heartbeat (about 1 Hz: the bitstream is running)
on the preset's LEDs.
"""
from amaranth.hdl import ClockDomain, Elaboratable, Module, ResetInserter, Signal
from amaranth.lib import io
from amaranth.lib.cdc import FFSynchronizer

__all__ = ["PlatformTop", "board_top"]


def board_top(board, core=None):
    """The `BoardTop` of a resolved preset. Built before `PlatformTop`, so a configuration
    it refuses (`ConfigError`: baud rate, timeout) is reported before any tool runs.
    `core`: the generated LiteDRAM core (`boards.dram.DramCore`) of a DRAM preset."""
    from .top import BoardTop
    p = board.preset
    dram = None if core is None else (core.addr_bits, core.data_bytes)
    return BoardTop(board.cfg, mem_words=board.mem_words, clk_hz=board.clk_hz, baud=p.baud,
                    storage=p.storage, dram=dram, checksum=p.checksum)


class PlatformTop(Elaboratable):
    """`board`: a resolved preset (`presets.BoardMachine`); `top`: its `board_top`;
    `core`: the LiteDRAM core of a DRAM preset (`boards.dram.DramCore`)."""

    def __init__(self, board, top, core=None):
        self.board, self.top, self.core = board, top, core

    def elaborate(self, platform):
        b, p = self.board, self.board.preset
        m = Module()
        if self.core is not None:
            self._dram(m, platform)
        else:
            self._clock(m, platform)
        m.submodules.top = top = self.top
        uart = platform.request("uart", 0, dir="-")
        m.submodules.rx_pin = rx = io.Buffer("i", uart.rx)
        m.submodules.tx_pin = tx = io.Buffer("o", uart.tx)
        # the pin is asynchronous: BoardTop's receiver synchronises it (rtl/uart.py)
        m.d.comb += [top.rx.eq(rx.i), tx.o.eq(top.tx)]

        alive = Signal()
        half_second = max(2, int(b.clk_hz) // 2)
        count = Signal(range(half_second))
        with m.If(count == half_second - 1):
            m.d.sync += [count.eq(0), alive.eq(~alive)]
        with m.Else():
            m.d.sync += count.eq(count + 1)
        requested = {}     # an RGB LED's colours are one resource: request it once
        for what, value in (("busy", top.busy), ("error", top.error), ("alive", alive)):
            led = getattr(p.leds, what)
            if led is not None:
                name, number, colour = led
                if (name, number) not in requested:
                    requested[name, number] = platform.request(name, number, dir="-")
                port = requested[name, number]
                port = getattr(port, colour) if colour else port
                m.submodules[f"led_{what}"] = buf = io.Buffer("o", port)
                m.d.comb += buf.o.eq(value)
        return m

    def _clock(self, m, platform):
        """The sync domain from the oscillator, or from the PLL once it has locked. The
        domain has no reset of its own: the board top takes it as ``rst`` and gives the
        machine its own copy (`BoardCore`), so no logic sits between the reset's
        register and the machine's flip-flops."""
        b = self.board
        ecp5 = b.preset.device.family == "ecp5"
        if b.pll is None and not ecp5:
            return                    # the platform's default clock makes sync
        m.domains.sync = cd = ClockDomain("sync", reset_less=True)
        pin = platform.request(platform.default_clk, 0, dir="-")
        rst = Signal(init=1)
        if b.pll is None:
            # from the oscillator; flip-flops take their initial values at
            # configuration, so a count from there is the power-on reset
            m.submodules.clk_pin = clkin = io.Buffer("i", pin)
            m.d.comb += cd.clk.eq(clkin.i)
            wait = Signal(4, init=15)
            with m.If(wait != 0):
                m.d.sync += wait.eq(wait - 1)
            m.d.sync += rst.eq(wait != 0)
        else:
            lock = Signal()
            if ecp5:
                m.submodules.clk_pin = clkin = io.Buffer("i", pin)
                m.submodules.pll = b.pll.instance(clkin.i, cd.clk, lock)
            else:
                # the iCE40 PLL takes its input straight from the pad (SB_PLL40_PAD)
                m.submodules.pll = b.pll.instance(pin.io, cd.clk, lock)
            # no explicit constraint: nextpnr derives the PLL output's from its parameters
            # and the oscillator pin's constraint ("Derived frequency constraint ... for
            # net clk")
            m.submodules.reset_sync = FFSynchronizer(~lock, rst, init=1, o_domain="sync")
        m.d.comb += self.top.rst.eq(rst)


    def _dram(self, m, platform):
        """The LiteDRAM core (its Verilog added to the build), its pins, its init
        sequence replayed over ``wb_ctrl`` (`DramInit`), and the sync domain on its
        ``user_clk``: the machine runs in the controller's clock."""
        from amaranth.hdl import ClockSignal, Instance
        from . import dram
        from gpt2accel.rtl.dram_adapter import native_instance_ports
        from .dram_init import DramInit
        core, top = self.core, self.top
        platform.add_file(f"{dram.CORE_NAME}.v", core.verilog.read_text())
        # no reset of the domain's own (see `_clock`): the core's reset is the board
        # top's ``rst`` and DramInit's
        m.domains.sync = cd = ClockDomain("sync", reset_less=True)
        pin = platform.request(platform.default_clk, 0, dir="-")
        m.submodules.clk_pin = clkin = io.Buffer("i", pin)
        user_rst, init_done = Signal(), Signal()
        m.submodules.dram_init = init = ResetInserter({"sync": user_rst})(
            DramInit(dram.init_writes(core)))
        nat = top.native
        ports = dict(
            i_clk=clkin.i, i_rst=0, o_user_clk=cd.clk, o_user_rst=user_rst,
            o_init_done=init_done,
            **native_instance_ports(nat),
            i_wb_ctrl_cyc=init.bus.cyc, i_wb_ctrl_stb=init.bus.stb, i_wb_ctrl_we=init.bus.we,
            i_wb_ctrl_adr=init.bus.adr, i_wb_ctrl_dat_w=init.bus.dat_w,
            i_wb_ctrl_sel=init.bus.sel, i_wb_ctrl_cti=0, i_wb_ctrl_bte=0,
            o_wb_ctrl_ack=init.bus.ack)
        ports.update(self._dram_pins(m, platform, core))
        m.submodules.litedram = Instance(dram.CORE_NAME, **ports)
        # the core's user_rst is synchronous to user_clk already (its own reset
        # synchroniser behind the PLL's lock)
        m.d.comb += [top.rst.eq(user_rst), top.mem_ready.eq(init_done)]

    def _dram_pins(self, m, platform, core):
        """The Instance's DRAM pin connections, from the platform's DRAM resource."""
        from amaranth.hdl import ClockSignal, Instance
        phy = core.config["sdram_phy"]
        if phy == "GENSDRPHY":
            sd = platform.request("sdram", 0, dir="-")
            # the SDRAM samples on its clock's rising edge: the controller's clock
            # inverted (a DDR output register, 0 then 1), so commands and data that
            # change on sys's rising edge are half a cycle old when sampled
            m.submodules.sdram_clk = Instance("ODDRX1F", i_SCLK=ClockSignal(), i_RST=0,
                                              i_D0=0, i_D1=1, o_Q=sd.clk.io)
            # the core's active-low outputs go to the pins as they are (the resource's
            # inversion is for Amaranth buffers, not used here)
            return dict(o_sdram_a=sd.a.io, o_sdram_ba=sd.ba.io, o_sdram_cas_n=sd.cas.io,
                        o_sdram_ras_n=sd.ras.io, o_sdram_we_n=sd.we.io, o_sdram_cs_n=sd.cs.io,
                        o_sdram_cke=sd.clk_en.io, o_sdram_dm=sd.dqm.io, io_sdram_dq=sd.dq.io)
        if phy == "ECP5DDRPHY":
            dd = platform.request("ddram", 0, dir="-")
            m.submodules.ddr3_vccio = vccio = io.Buffer("o", dd.vccio)
            m.submodules.ddr3_gnd = gnd = io.Buffer("o", dd.gnd)
            m.d.comb += [vccio.o.eq(-1), gnd.o.eq(0)]
            # the complements of the differential pairs are the I/O standard's, not ports
            return dict(o_ddram_a=dd.a.io, o_ddram_ba=dd.ba.io, o_ddram_ras_n=dd.ras_n.io,
                        o_ddram_cas_n=dd.cas_n.io, o_ddram_we_n=dd.we_n.io,
                        o_ddram_cs_n=dd.cs_n.io, o_ddram_dm=dd.dm.io, io_ddram_dq=dd.dq.io,
                        io_ddram_dqs_p=dd.dqs_p.io, i_ddram_dqs_n=0, o_ddram_clk_p=dd.clk_p.io,
                        i_ddram_clk_n=0, o_ddram_cke=dd.cke.io, o_ddram_odt=dd.odt.io,
                        o_ddram_reset_n=dd.reset_n.io, o_pll_locked=Signal())
        # `dram.read_config` admits only the PHYs of `dram.PHYS`, each wired above: this
        # is reached only when a PHY is added there without its pins here
        raise NotImplementedError(f"no pins for the {phy} PHY on {self.board.preset.name}")
