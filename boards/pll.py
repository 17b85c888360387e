"""PLL parameters and instances for the board clocks (ECP5 EHXPLLL, iCE40 SB_PLL40_PAD).

A preset's machine clock is rarely the board oscillator's frequency: the
clock is chosen below the Fmax that place-and-route measures, so a PLL
derives it. The divider searches follow the vendors' documented ranges (the
same ones the `ecppll` and `icepll` tools use); the frequency actually
reached is returned with the dividers, because it is what the UART's baud
divider and the timing constraint must use.
"""
from dataclasses import dataclass

from amaranth.hdl import Instance

__all__ = ["PLLError", "ECP5PLL", "ICE40PLL", "ECP5_VCO_MARGIN", "ecp5_pll", "ice40_pll"]


class PLLError(ValueError):
    """No divider setting reaches the asked frequency closely enough."""


#: largest relative error between the asked and the reached clock
MAX_ERROR = 0.005


@dataclass(frozen=True)
class ECP5PLL:
    """EHXPLLL settings: CLKOP = fin / refclk_div * feedback_div (feedback from CLKOP)."""
    fin: float
    fout: float
    refclk_div: int
    feedback_div: int
    output_div: int

    @property
    def fvco(self):
        return self.fout * self.output_div

    def instance(self, clkin, clkout, lock):
        return Instance(
            "EHXPLLL",
            p_PLLRST_ENA="DISABLED", p_INTFB_WAKE="DISABLED", p_STDBY_ENABLE="DISABLED",
            p_DPHASE_SOURCE="DISABLED", p_OUTDIVIDER_MUXA="DIVA", p_OUTDIVIDER_MUXB="DIVB",
            p_OUTDIVIDER_MUXC="DIVC", p_OUTDIVIDER_MUXD="DIVD",
            p_CLKI_DIV=self.refclk_div, p_CLKFB_DIV=self.feedback_div, p_FEEDBK_PATH="CLKOP",
            p_CLKOP_ENABLE="ENABLED", p_CLKOP_DIV=self.output_div,
            p_CLKOP_CPHASE=self.output_div - 1, p_CLKOP_FPHASE=0,
            # loop filter settings of Lattice's tools (as ecppll writes them)
            a_ICP_CURRENT="12", a_LPF_RESISTOR="8", a_MFG_ENABLE_FILTEROPAMP="1",
            a_MFG_GMCREF_SEL="2",
            # nextpnr derives the output clock's constraint from these
            a_FREQUENCY_PIN_CLKI=f"{self.fin / 1e6:g}", a_FREQUENCY_PIN_CLKOP=f"{self.fout / 1e6:g}",
            i_CLKI=clkin, i_CLKFB=clkout, i_RST=0, i_STDBY=0, i_PHASESEL0=0, i_PHASESEL1=0,
            i_PHASEDIR=1, i_PHASESTEP=1, i_PHASELOADREG=1, i_PLLWAKESYNC=0, i_ENCLKOP=0,
            o_CLKOP=clkout, o_LOCK=lock)


#: the highest VCO (Hz) the ECP5 tie-break prefers (see `ecp5_pll`)
ECP5_VCO_MARGIN = 796e6


def ecp5_pll(fin, fout):
    """The EHXPLLL dividers closest to `fout` from `fin` (Hz): PFD 3.125-400 MHz,
    VCO 400-800 MHz, output 3.125-400 MHz; ties go to the highest VCO (less jitter)
    below `ECP5_VCO_MARGIN`: nextpnr derives the VCO from the input's period in
    picoseconds, so a VCO of exactly 800 MHz from 48 MHz reads as 800.6 MHz and is
    reported out of range."""
    if not 3.125e6 <= fout <= 400e6:
        raise PLLError(f"ECP5 PLL output {fout / 1e6:g} MHz outside 3.125..400 MHz")
    best = None
    for refclk_div in range(1, 129):
        fpfd = fin / refclk_div
        if not 3.125e6 <= fpfd <= 400e6:
            continue
        for feedback_div in range(1, 81):
            f = fpfd * feedback_div
            for output_div in range(1, 129):
                fvco = f * output_div
                if not 400e6 <= fvco <= 800e6:
                    continue
                key = (abs(f - fout), fvco > ECP5_VCO_MARGIN, -fvco)
                if best is None or key < best[0]:
                    best = (key, ECP5PLL(fin, f, refclk_div, feedback_div, output_div))
    return _checked(best, fin, fout, "ECP5")


@dataclass(frozen=True)
class ICE40PLL:
    """SB_PLL40_PAD settings, SIMPLE feedback: fout = fin * (divf+1) / ((divr+1) * 2**divq)."""
    fin: float
    fout: float
    divr: int
    divf: int
    divq: int
    filter_range: int

    def instance(self, pad, clkout, lock):
        return Instance(
            "SB_PLL40_PAD",
            p_FEEDBACK_PATH="SIMPLE", p_DIVR=self.divr, p_DIVF=self.divf, p_DIVQ=self.divq,
            p_FILTER_RANGE=self.filter_range,
            i_PACKAGEPIN=pad, i_RESETB=1, i_BYPASS=0,
            o_PLLOUTGLOBAL=clkout, o_LOCK=lock)


def ice40_pll(fin, fout):
    """The SB_PLL40 dividers closest to `fout` (Hz): PFD 10-133 MHz, VCO 533-1066 MHz,
    output 16-275 MHz (iCE40 sysCLOCK PLL guide; the `icepll` search)."""
    if not 16e6 <= fout <= 275e6:
        raise PLLError(f"iCE40 PLL output {fout / 1e6:g} MHz outside 16..275 MHz")
    best = None
    for divr in range(16):
        fpfd = fin / (divr + 1)
        if not 10e6 <= fpfd <= 133e6:
            continue
        for divf in range(128):
            fvco = fpfd * (divf + 1)
            if not 533e6 <= fvco <= 1066e6:
                continue
            for divq in range(1, 7):
                f = fvco / (1 << divq)
                key = (abs(f - fout), -fvco)
                if best is None or key < best[0]:
                    # the loop filter range the PFD frequency needs (icepll's table)
                    fr = next(i for i, hi in enumerate((17e6, 26e6, 44e6, 66e6, 101e6, 1e12), 1)
                              if fpfd < hi)
                    best = (key, ICE40PLL(fin, f, divr, divf, divq, fr))
    return _checked(best, fin, fout, "iCE40")


def _checked(best, fin, fout, family):
    if best is None or best[0][0] > MAX_ERROR * fout:
        got = "nothing" if best is None else f"{best[1].fout / 1e6:.4f} MHz"
        raise PLLError(f"{family} PLL cannot make {fout / 1e6:g} MHz from {fin / 1e6:g} MHz "
                       f"within {100 * MAX_ERROR:g} % (closest: {got})")
    return best[1]

