"""The worst paths of a placed and routed build, with the units they start and end in.

    paths = worst_paths(report, netlist, clock, count=10)

nextpnr's JSON report names one critical path per clock pair; its detailed timing
report (``--detailed-timing-report``) adds every timing endpoint's routed arrival
time, but not where the path to it starts. The ends and the delays here are
nextpnr's: each endpoint (a flip-flop's or block RAM's input) in `clock` with its
arrival in ns. The start is traced back through Yosys' synthesised netlist (the
``top.json`` nextpnr read): from the endpoint, through combinational cells, along
the input with the latest estimated arrival (`_CELL_NS`, a per-cell-type estimate,
route included) to a register, block RAM or pad. Every endpoint keeps its worst
arrival; paths are then told apart by the signals (bit index dropped) they start and
end at, so a 32-bit bus's 32 endpoints are one path, and the worst `count` are
listed. The unit of a signal is its Amaranth hierarchy name (``machine.attn``), from
the ``$scopeinfo`` cells Amaranth leaves in the netlist; ``top`` for the top level.
"""
import re

__all__ = ["worst_paths", "load_netlist"]

#: estimated delay of a combinational cell, routing to its next cell included, in ns:
#: only used to pick which input a path came through, never reported
_CELL_NS = {"LUT4": 0.9, "LUT2": 0.9, "PFUMX": 0.5, "L6MUX21": 0.5, "CCU2C": 0.9,
            "MULT18X18D": 4.5, "ALU54B": 4.0, "TRELLIS_DPR16X4": 1.3,
            "SB_LUT4": 1.2, "SB_CARRY": 0.3, "SB_MAC16": 5.0}
#: a carry input's hop to the next carry cell
_CARRY_NS = 0.06
_CARRY_IN = {"CIN", "CI"}
#: cells whose outputs start a path (registers, block RAM read data, pads, constants)
_SEQUENTIAL = re.compile(r"^(TRELLIS_FF|SB_DFF\w*|DP16KD|PDPW16KD|SB_RAM40_4K\w*|"
                         r"SB_SPRAM256KA|TRELLIS_IO|SB_IO\w*|BB\w*|IB\w*|VHI|VLO|SB_GB\w*|"
                         r"DCCA|EHXPLLL|SB_PLL\w*|\$scopeinfo)$")
_PADS = {"TRELLIS_IO", "SB_IO", "BB", "IB", "SB_GB_IO"}
_CLOCK_PORTS = {"CLK", "WCK", "CLKA", "CLKB", "RCLK", "WCLK", "CLOCK", "C"}


def load_netlist(yosys_json):
    """The top module of Yosys' JSON netlist (`json.load` of the file), as `_Netlist`."""
    mods = yosys_json["modules"]
    top = next((m for m in mods.values() if m.get("attributes", {}).get("top")), None)
    if top is None:
        top = mods["top"]
    return _Netlist(top)


class _Netlist:
    def __init__(self, module):
        self.cells = module["cells"]
        self.scopes = sorted((n for n, c in self.cells.items() if c["type"] == "$scopeinfo"),
                             key=len, reverse=True)
        self.driver = {}        # bit -> (cell, port)
        self.sinks = {}         # bit -> [(cell, port)]
        for name, c in self.cells.items():
            dirs = c.get("port_directions", {})
            for port, bits in c.get("connections", {}).items():
                for b in bits:
                    if not isinstance(b, int):
                        continue
                    if dirs.get(port) == "output":
                        self.driver[b] = (name, port)
                    else:
                        self.sinks.setdefault(b, []).append((name, port))
        self.names = {}         # bit -> the signal name shown for it
        for name, n in module.get("netnames", {}).items():
            for i, b in enumerate(n["bits"]):
                if not isinstance(b, int):
                    continue
                shown = name if len(n["bits"]) == 1 else f"{name}[{i}]"
                old = self.names.get(b)
                if old is None or _name_rank(shown) < _name_rank(old):
                    self.names[b] = shown
        self._arrival = {}

    def sequential(self, cell):
        return bool(_SEQUENTIAL.match(self.cells[cell]["type"]))

    def unit(self, name):
        """The Amaranth hierarchy name a cell or signal is in."""
        for s in self.scopes:
            if name.startswith(s + "."):
                return s
        return "top"

    def inputs(self, cell):
        c = self.cells[cell]
        dirs = c.get("port_directions", {})
        for port, bits in c.get("connections", {}).items():
            if dirs.get(port) != "output" and port not in _CLOCK_PORTS:
                for b in bits:
                    if isinstance(b, int):
                        yield port, b

    def arrival(self, bit):
        """Estimated arrival at `bit` and the start (cell, port) and bit of its latest
        path. An explicit stack: carry chains are hundreds of cells deep."""
        stack, open_ = [(bit, False)], set()
        while stack:
            b, expanded = stack.pop()
            if b in self._arrival or (not expanded and b in open_):
                continue
            drv = self.driver.get(b)
            if drv is None or self.sequential(drv[0]):
                self._arrival[b] = (0.0, drv, b)
                continue
            ins = list(self.inputs(drv[0]))
            if not expanded:
                open_.add(b)
                stack.append((b, True))
                stack.extend((ib, False) for _, ib in ins
                             if ib not in self._arrival and ib not in open_)
                continue
            open_.discard(b)
            kind = self.cells[drv[0]]["type"]
            best = (0.0, drv, b)
            for port, ib in ins:
                if ib not in self._arrival:     # the back edge of a combinational loop
                    continue
                t, start, sbit = self._arrival[ib]
                t += _CARRY_NS if port in _CARRY_IN else _CELL_NS.get(kind, 0.9)
                if best[1] == drv or t > best[0]:
                    best = (t, start, sbit)
            self._arrival[b] = best
        return self._arrival[bit]


def _name_rank(name):
    """Public Amaranth names before Yosys' own ($-names, mapped-cell suffixes)."""
    return ("$" in name, "_TRELLIS_" in name or "_SB_" in name, len(name))


def _signal(name):
    """A bus of a signal: bit index and Amaranth's `$N` (a flattened copy) dropped."""
    return re.sub(r"(\$\d+)?(\[\d+\])?$", "", name)


def _end_bit(net, cell):
    """The bit an endpoint cell stores into: a register's Q; a block RAM is itself."""
    q = net.cells[cell].get("connections", {}).get("Q")
    return q[0] if q and isinstance(q[0], int) else None


def worst_paths(report, netlist, clock, count=10):
    """The `count` worst paths within `clock` (its name in nextpnr's report), worst
    first: {"delay_ns", "from", "to", "from_unit", "to_unit", "from_source",
    "to_source", "endpoints"}; `from`/`to` are signals (a register's output, a block
    RAM's name), `endpoints` how many endpoints of the path share its worst delay's
    signals. Empty when the report has no detailed timing (nextpnr run without
    ``--detailed-timing-report``)."""
    event = f"posedge {clock}"
    worst = {}
    for n in report.get("detailed_net_timings", []):
        if n.get("event") != event:
            continue
        for ep in n["endpoints"]:
            if ep.get("event") != event:
                continue
            delay = ep["delay"][1] if isinstance(ep["delay"], list) else ep["delay"]
            path = _trace(netlist, n, ep)
            if path is None or path["from_pad"]:
                continue        # a pad's input is not timed against the clock
            key = (_signal(path["from"]), _signal(path["to"]))
            old = worst.get(key)
            if old is None or delay > old["delay_ns"]:
                path.update(from_=key[0], to_=key[1], delay_ns=round(delay, 3),
                            endpoints=(old or {}).get("endpoints", 0) + 1)
                worst[key] = path
            else:
                old["endpoints"] += 1
    out = []
    for p in sorted(worst.values(), key=lambda p: -p["delay_ns"])[:count]:
        out.append({"delay_ns": p["delay_ns"], "from": p["from_"], "to": p["to_"],
                    "from_unit": p["from_unit"], "to_unit": p["to_unit"],
                    "from_source": p["from_source"], "to_source": p["to_source"],
                    "endpoints": p["endpoints"]})
    return out


def _trace(net, n, ep):
    """Start and end of the path into endpoint `ep` of detailed net timing `n`."""
    cell = ep["cell"]
    if cell not in net.cells and cell.endswith("_LC"):
        cell = cell[:-3]                 # an iCE40 logic cell is named after its LUT
    if cell not in net.cells:
        return None
    c = net.cells[cell]
    bits = c.get("connections", {}).get(ep["port"], [])
    bit = bits[0] if bits and isinstance(bits[0], int) else None
    if net.sequential(cell):
        qbit = _end_bit(net, cell)
        to = net.names.get(qbit, cell) if qbit is not None else cell
    else:
        # a LUT packed with the flip-flop it feeds (iCE40): the path ends at that register
        outs = [b for p, bs in c.get("connections", {}).items()
                if c.get("port_directions", {}).get(p) == "output" for b in bs]
        regs = [s for o in outs for s, _ in net.sinks.get(o, []) if net.sequential(s)]
        to = net.names.get(_end_bit(net, regs[0]), regs[0]) if regs else cell
        bit = outs[0] if outs else bit
    if bit is None:
        return None
    _, start, sbit = net.arrival(bit)
    pad = start is None or net.cells[start[0]]["type"] in _PADS
    if start is None:
        frm = net.names.get(sbit, "(input)")
    elif net.cells[start[0]]["type"] in ("DP16KD", "PDPW16KD") or "RAM" in net.cells[start[0]]["type"]:
        frm = start[0]
    else:
        frm = net.names.get(sbit, start[0])
    return {"from": frm, "to": to, "from_pad": pad, "from_unit": net.unit(frm), "to_unit": net.unit(to),
            "from_source": _source(net, start[0] if start else None),
            "to_source": _source(net, cell)}


def _source(net, cell):
    """The design source line (not the techmap library) a cell was made from."""
    if cell is None:
        return None
    from .build import _short_source
    src = net.cells[cell].get("attributes", {}).get("src", "")
    own = [s for s in src.split("|") if s and "/share/" not in s]
    return _short_source(own[0]) if own else None
