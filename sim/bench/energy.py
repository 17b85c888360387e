"""Energy per token, estimated: counted events x per-event energies from a published table.

    ev = program_events(comp, comp.ops(T, pos))     # {instruction kind: Events}
    e = energy(ev)                                  # picojoules, by kind and by event

The events of a program are counted from its instructions (the compiler's
(Op, fields) list), as `bench model` counts them:

- multiply-accumulates: `driver.program_macs` (the linear layers' m*k*n, and
  attention's QKᵀ and PV over the causal keys);
- memory bytes read and written: the compulsory traffic of each instruction
  (every operand read once, every result written once; re-reads by the
  engines are not counted), split into parameter reads (weights, biases,
  requantiser words, LayerNorm and GELU tables, embeddings) and activation
  reads (activations and the KV caches).

Energies per event (`TABLE`) are M. Horowitz, "Computing's energy problem
(and what we can do about it)", ISSCC 2014, for a 45 nm process at 0.9 V:
an 8-bit integer multiply 0.2 pJ and a 32-bit add 0.1 pJ (one MAC: 0.3 pJ,
the accumulator is 32 bits wide), a 64-bit read of an 8 KB SRAM 10 pJ (the
smallest array in the table: the machine's memory is banks of 2 KB block
RAMs), a 64-bit DRAM access 1.3-2.6 nJ (the lower end here). These are
estimates of the work's energy in that ASIC process, not an FPGA's measured
power: an FPGA spends several times more on the same events (its routing
and LUTs), and static power, clocking and control are not counted. Writes
cost what reads do (the table gives reads).

Two placements of the parameters: ``on-chip`` (the machine as built: every
byte in block RAM, nothing off-chip) and ``dram`` (the parameters read from
DRAM, activations and KV caches on-chip), so the cost of fetching weights
from off-chip memory shows up in joules.
"""
from dataclasses import asdict, dataclass

from gpt2accel.rtl.isa import Op
from gpt2accel.sim.host.driver import program_macs

__all__ = ["SOURCE", "TABLE", "PLACEMENTS", "Events", "op_events", "program_events",
           "energy"]

#: where the per-event energies come from, named in every report
SOURCE = ("M. Horowitz, \"Computing's energy problem (and what we can do about it)\", "
          "ISSCC 2014: 45 nm, 0.9 V (estimates: ASIC figures, not FPGA power)")
#: picojoules per event
TABLE = {
    "mac": 0.2 + 0.1,          # 8-bit multiply + 32-bit accumulate
    "sram_64b": 10.0,          # 64-bit read of an 8 KB SRAM
    "dram_64b": 1300.0,        # 64-bit DRAM access, the table's 1.3-2.6 nJ lower end
}
#: where the parameters are read from
PLACEMENTS = ("on-chip", "dram")


@dataclass
class Events:
    """Counted events of some instructions."""
    instructions: int = 0
    macs: int = 0
    param_read_bytes: int = 0     # weights, biases, requantiser words, tables
    act_read_bytes: int = 0       # activations, KV caches
    write_bytes: int = 0

    def __iadd__(self, other):
        for k, v in asdict(other).items():
            setattr(self, k, getattr(self, k) + v)
        return self

    @property
    def bytes(self):
        return self.param_read_bytes + self.act_read_bytes + self.write_bytes


def op_events(comp, op, f):
    """The `Events` of one instruction (op, fields) of `comp`'s programs."""
    mb, E = comp.e.mem_bytes, comp.E
    at = {r.base: r for r in comp.regions.values()}

    def whole(base):
        """Bytes of the parameter region starting at `base` (read whole)."""
        return at[base].words * mb

    param = act = write = 0
    if op == Op.MATMUL:
        param = whole(f["w_base"]) + whole(f["p_base"])
        act, write = f["m"] * f["a_stride"] * mb, f["m"] * f["out_stride"] * mb
    elif op == Op.ATTENTION:
        t, keys = f["tq"], f["offset"] + f["tq"]
        tiles = -(-keys // comp.cfg.tile)
        act = t * E + f["n_head"] * tiles * (comp.kts + comp.vts) * mb
        write = t * E
    elif op == Op.KVSTORE:
        act = write = 2 * f["n_tok"] * E
    elif op == Op.LAYERNORM:
        param = whole(f["gamma_base"]) + whole(f["beta_base"])
        act, write = 2 * f["rows"] * E, f["rows"] * E
    elif op == Op.GELU:
        param = whole(f["table_base"])
        act = write = f["rows"] * f["n"]
    elif op == Op.RESADD:
        # split ops carry a column chunk: its n columns and n requantiser words
        param, act, write = 4 * f["n"], f["rows"] * f["n"] * (2 + 4), 2 * f["rows"] * f["n"]
    elif op == Op.EMBED:
        param = whole(f["wte_q_base"]) + whole(f["wpe_q_base"])
        act, write = 2 * f["rows"] * E, 2 * f["rows"] * E
    elif op == Op.REQUANT:
        param, act, write = 4 * f["n"], 4 * f["rows"] * f["n"], 2 * f["rows"] * f["n"]
    return Events(1, program_macs([(op, f)]), param, act, write)


def program_events(comp, ops):
    """{instruction kind (the Op's name): `Events`} of `ops`, in program order."""
    out = {}
    for op, f in ops:
        out.setdefault(op.name, Events()).__iadd__(op_events(comp, op, f))
    return out


def energy(events, placement="on-chip", per=1):
    """Estimated picojoules of `events` ({kind: Events}) divided by `per` (tokens):
    ``total_pj``, ``by_kind`` and ``by_event`` (mac, on-chip memory, off-chip memory),
    with the placement and the source of the figures."""
    if placement not in PLACEMENTS:
        raise ValueError(f"placement {placement!r}: one of {', '.join(PLACEMENTS)}")
    sram, dram = TABLE["sram_64b"] / 8, TABLE["dram_64b"] / 8     # per byte
    by_kind, by_event = {}, {"mac": 0.0, "on_chip_memory": 0.0, "off_chip_memory": 0.0}
    for kind, ev in events.items():
        mac = ev.macs * TABLE["mac"]
        on = (ev.act_read_bytes + ev.write_bytes) * sram
        off = ev.param_read_bytes * (dram if placement == "dram" else 0.0)
        on += 0.0 if placement == "dram" else ev.param_read_bytes * sram
        by_kind[kind] = (mac + on + off) / per
        for k, v in (("mac", mac), ("on_chip_memory", on), ("off_chip_memory", off)):
            by_event[k] += v / per
    return {"total_pj": sum(by_kind.values()), "by_kind": by_kind, "by_event": by_event,
            "placement": placement, "source": SOURCE}
