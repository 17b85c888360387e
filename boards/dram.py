"""The LiteDRAM controller of a board's external DRAM, generated at build time.

Each board with DRAM keeps a LiteDRAM core config in ``boards/litedram/<board>.yml``
(the YAML that LiteDRAM's standalone generator, ``litedram_gen``, reads). The core
is generated from it, pip-only (``pip install 'gpt2-accel[dram]'``: LiteDRAM, LiteX,
Migen), and cached under ``$GPT2ACCEL_CACHE/litedram/`` (default
``~/.cache/gpt2accel/litedram/``), keyed by the config's bytes, the core's name and
the three packages' versions, so a new config or release regenerates and nothing
else does.

    core = generate_core("ulx3s-85f")    # DramCore: core.verilog, core.addr_bits, ...

The generated Verilog top (``litedram_core``) has the controller's clock and reset,
``init_done``/``init_error``, a ``wb_ctrl`` Wishbone bus (the configs have no soft
CPU: the DRAM's init sequence goes through it), the DRAM pins and one native user
port, ``user_port_native_0_*`` (cmd/wdata/rdata; `rtl.dram_adapter` puts the
machine's memory port on it). `DramCore` reads that port's widths from the
Verilog itself.

A config is checked before the generator runs; a bad one is a `DramConfigError`
with one line naming the problem. A generator that fails is a `DramGenError`
carrying its last line of output.

``generate_core(board, sim=True)`` is the same controller built for simulation
(``litedram_gen --sim``): the PHY is LiteDRAM's ``SDRAMPHYModel``, which keeps
the DRAM's contents in one Verilog memory per bank and drives no pins, and the
clock is the core's ``clk`` input alone (no PLL). Its generator also imports
``liteeth``, ``litescope`` and ``pythondata-misc-tapcfg`` (``SIM_PACKAGES``).
The simulated PHY runs DDR3 at 1:4 (four DFI phases a sys cycle), where the
ECP5 PHY runs it at 1:2; SDR is 1:1 either way. `DramCore.banks` and
`DramCore.row_words` say where a native word lives in the bank memories.
"""
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from gpt2accel.model import progress
from gpt2accel.model.shakespeare import cache_dir as _cache_root

__all__ = ["BOARDS", "CONFIG_DIR", "PACKAGES", "SIM_PACKAGES", "DramConfigError",
           "DramGenError", "DramCore", "config_path", "read_config", "generate_core",
           "native_port", "cache_dir", "versions", "dram_bytes", "init_writes",
           "INIT_DELAY_SCALE"]

CONFIG_DIR = Path(__file__).resolve().parent / "litedram"
#: boards with a DRAM config
BOARDS = ("ulx3s-85f", "orangecrab-85f")
#: the packages that generate a core; their versions key the cache
PACKAGES = ("litedram", "litex", "migen")
#: what `litedram_gen --sim` imports besides (LiteX's simulation target); they key a
#: simulation core's cache too
SIM_PACKAGES = ("liteeth", "litescope", "pythondata-misc-tapcfg")
#: the PHYs this project generates, with the memory each drives
PHYS = {"GENSDRPHY": "SDR", "ECP5DDRPHY": "DDR3"}
#: keys every config needs, and those the ECP5 DDR3 PHY's clocking needs too
REQUIRED = ("device", "memtype", "sdram_module", "sdram_module_nb", "sdram_phy",
            "sys_clk_freq", "user_ports")
REQUIRED_BY_PHY = {"ECP5DDRPHY": ("input_clk_freq", "init_clk_freq", "sdram_rank_nb")}
#: the other keys `litedram_gen` reads (besides its controller settings'), so a
#: misspelt one is refused instead of silently doing nothing
OPTIONAL = ("cpu", "cpu_variant", "uart", "sdram_rank_nb", "dm_swap", "rtt_nom", "rtt_wr",
            "ron", "cmd_delay", "input_clk_freq", "init_clk_freq", "iodelay_clk_freq",
            "cmd_latency", "speedgrade", "csr_data_width")
#: the user port the adapter connects to
NATIVE_PORT = "native_0"
CORE_NAME = "litedram_core"


class DramConfigError(ValueError):
    """A LiteDRAM config (or board name) that cannot make a core: one line."""


class DramGenError(RuntimeError):
    """The generator is missing or failed: one line."""


def cache_dir():
    """Where generated cores are kept."""
    return _cache_root() / "litedram"


def config_path(board):
    """The config of `board` (one of `BOARDS`)."""
    if board not in BOARDS:
        raise DramConfigError(f"no DRAM config for board {board!r} (boards with one: "
                              f"{', '.join(BOARDS)})")
    return CONFIG_DIR / f"{board}.yml"


def _require_packages(packages=PACKAGES):
    missing = [p for p in packages if importlib.util.find_spec(p.replace("-", "_")) is None]
    if missing:
        raise DramGenError(f"generating a LiteDRAM core needs {', '.join(missing)}: "
                           f"pip install 'gpt2-accel[dram]'")


def versions(sim=False):
    """{package: version} of the generator's packages (`sim`: and the simulation core's)."""
    packages = PACKAGES + (SIM_PACKAGES if sim else ())
    _require_packages(packages)
    return {p: importlib.metadata.version(p) for p in packages}


def dram_bytes(board_or_path):
    """Bytes of a board's DRAM (one of `BOARDS`, or a config file), from its module's
    geometry, without generating anything."""
    path = _path(board_or_path)
    cfg = read_config(path)
    from litedram import modules
    module = getattr(modules, str(cfg["sdram_module"]))
    return module.nbanks * module.nrows * module.ncols * cfg["sdram_module_nb"]


def _freq(cfg, key, where):
    try:
        value = float(cfg[key])
    except (TypeError, ValueError):
        raise DramConfigError(f"{where}: {key} must be a frequency in Hz, not "
                              f"{cfg[key]!r}") from None
    if not value > 0:
        raise DramConfigError(f"{where}: {key} must be positive, not {cfg[key]!r}")
    return value


def read_config(path):
    """The config at `path`, checked (`DramConfigError` names the first problem)."""
    try:
        import yaml
    except ImportError:
        raise DramGenError("reading a LiteDRAM config needs pyyaml: "
                           "pip install 'gpt2-accel[dram]'") from None
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise DramConfigError(f"cannot read DRAM config {path}: {e.strerror}") from None
    try:
        cfg = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark is not None else ""
        raise DramConfigError(f"{path}: not valid YAML{at}") from None
    if not isinstance(cfg, dict):
        raise DramConfigError(f"{path}: a DRAM config is a mapping of settings")
    for key in REQUIRED:
        if key not in cfg:
            raise DramConfigError(f"{path}: {key} is missing")
    phy = cfg["sdram_phy"]
    if phy not in PHYS:
        raise DramConfigError(f"{path}: sdram_phy {phy!r} is not one of {', '.join(PHYS)}")
    if cfg["memtype"] != PHYS[phy]:
        raise DramConfigError(f"{path}: {phy} drives {PHYS[phy]} memory, not "
                              f"memtype {cfg['memtype']!r}")
    for key in REQUIRED_BY_PHY.get(phy, ()):
        if key not in cfg:
            raise DramConfigError(f"{path}: {key} is missing ({phy} needs it)")
    for key in cfg:
        if key.endswith("clk_freq"):
            _freq(cfg, key, path)
    if cfg.get("cpu", "None") not in (None, "None"):
        raise DramConfigError(f"{path}: cpu must be None (a soft CPU's BIOS needs a "
                              f"RISC-V compiler, which pip does not provide)")
    nb = cfg["sdram_module_nb"]
    if not isinstance(nb, int) or isinstance(nb, bool) or nb < 1:
        raise DramConfigError(f"{path}: sdram_module_nb must be a positive int, not {nb!r}")
    ports = cfg["user_ports"]
    if not isinstance(ports, dict) or not isinstance(ports.get(NATIVE_PORT), dict) \
            or ports[NATIVE_PORT].get("type") != "native":
        raise DramConfigError(f"{path}: user_ports must have {NATIVE_PORT!r} of type "
                              f"'native' (the port the machine's adapter drives)")
    _require_packages()
    import inspect
    from litedram import modules
    from litedram.core.controller import ControllerSettings
    if not isinstance(getattr(modules, str(cfg["sdram_module"]), None), type):
        raise DramConfigError(f"{path}: sdram_module {cfg['sdram_module']!r} is not a "
                              f"LiteDRAM module (litedram.modules)")
    known = set(REQUIRED) | set(OPTIONAL) | set(
        inspect.getfullargspec(ControllerSettings.__init__).args[1:])
    unknown = sorted(set(cfg) - known)
    if unknown:
        raise DramConfigError(f"{path}: unknown setting {unknown[0]!r}")
    return cfg


@dataclass(frozen=True)
class DramCore:
    """A generated core: its Verilog file and its native port's widths. A simulation
    core (`sim`) also names its bank memories: `banks` ((Verilog name, native words)
    per bank, in bank order) and `row_words` (native words of one row of one bank);
    the controller maps native addresses row, bank, column from the top bit down
    (LiteDRAM's ROW_BANK_COL), so native word ``a`` is word ``row * row_words +
    a % row_words`` of bank ``(a // row_words) % len(banks)``, ``row = a //
    (row_words * len(banks))``."""
    verilog: Path
    #: native word address bits and bytes per native word
    addr_bits: int
    data_bytes: int
    config: dict
    sim: bool = False
    banks: tuple = ()
    row_words: int = 0

    @property
    def size_bytes(self):
        return (1 << self.addr_bits) * self.data_bytes


def native_port(verilog_text, port=NATIVE_PORT):
    """(address bits, data bits) of the native user port `port` in a core's Verilog."""
    widths = {}
    for direction, msb, name in re.findall(
            rf"\b(input|output)\s+wire\s+(?:\[(\d+):0\]\s+)?user_port_{port}_(\w+)",
            verilog_text):
        widths[name] = int(msb) + 1 if msb else 1
    need = ("cmd_valid", "cmd_ready", "cmd_we", "cmd_addr", "wdata_valid", "wdata_ready",
            "wdata_we", "wdata_data", "rdata_valid", "rdata_ready", "rdata_data")
    missing = [n for n in need if n not in widths]
    if missing:
        raise DramGenError(f"the core has no user_port_{port}_{missing[0]}")
    if widths["wdata_data"] != widths["rdata_data"] or \
            widths["wdata_we"] * 8 != widths["wdata_data"]:
        raise DramGenError(f"the core's user_port_{port} has inconsistent data widths "
                           f"{widths['wdata_data']}/{widths['rdata_data']}/{widths['wdata_we']}")
    return widths["cmd_addr"], widths["rdata_data"]


def _key(config_bytes, name, vers):
    h = hashlib.sha256()
    h.update(config_bytes)
    h.update(json.dumps({"name": name, "versions": vers}, sort_keys=True).encode())
    return h.hexdigest()[:16]


def _path(board_or_path):
    if isinstance(board_or_path, str) and "/" not in board_or_path \
            and not board_or_path.endswith((".yml", ".yaml")):
        return config_path(board_or_path)
    return Path(board_or_path)


def sim_banks(verilog_text):
    """(name, depth) of each bank memory of a simulation core, in bank order."""
    found = re.findall(r"^reg\s+\[\d+:0\]\s+(mem(?:_(\d+))?)\[0:(\d+)\];", verilog_text, re.M)
    return tuple((n, int(last) + 1) for n, _, last in
                 sorted(found, key=lambda f: int(f[1] or 0)))


def generate_core(board_or_path, *, name=CORE_NAME, sim=False):
    """The core of a board (one of `BOARDS`) or a config file (a `Path`, or a name
    with a ``/`` or ending in ``.yml``), generated once and cached. `sim`: the core
    around LiteDRAM's PHY model, for simulation (see the module docstring)."""
    path = _path(board_or_path)
    cfg = read_config(path)
    vers = versions(sim)
    kind = "simulation " if sim else ""
    out = cache_dir() / f"{path.stem}{'-sim' if sim else ''}-" \
                        f"{_key(path.read_bytes(), name + ('/sim' if sim else ''), vers)}"
    verilog = out / f"{name}.v"
    if verilog.is_file():
        progress.note(f"LiteDRAM {kind}core for {path.name}: cached in {out}")
    else:
        out.parent.mkdir(parents=True, exist_ok=True)
        # generated beside the cache entry and renamed into place, so an interrupted
        # run never leaves a half-written core that a later run would take as cached
        tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=".gen-"))
        tmp.chmod(0o755)        # a cache other users of the machine may read
        try:
            with progress.step(f"generating the LiteDRAM {kind}core for {path.name} "
                               f"(litedram {vers['litedram']})", done=lambda: f"cached in {out}"):
                _run_generator(path, tmp, name, sim)
                built = tmp / "build"
                shutil.move(str(built / "gateware" / f"{name}.v"), str(tmp / f"{name}.v"))
                shutil.move(str(built / "csr.json"), str(tmp / "csr.json"))
                # the DRAM's init sequence as the generator wrote it for a CPU's BIOS;
                # the board top replays it (`init_writes`)
                header = built / "software" / "include" / "generated" / "sdram_phy.h"
                if header.is_file():
                    shutil.move(str(header), str(tmp / "sdram_phy.h"))
                shutil.rmtree(built)
                if not verilog.is_file():     # another process may have cached it meanwhile
                    os.replace(tmp, out)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    text = verilog.read_text()
    addr_bits, data_bits = native_port(text)
    if not sim:
        return DramCore(verilog=verilog, addr_bits=addr_bits, data_bytes=data_bits // 8,
                        config=cfg)
    from litedram import modules
    module = getattr(modules, str(cfg["sdram_module"]))
    banks = sim_banks(text)
    if len(banks) != module.nbanks or len({d for _, d in banks}) != 1 \
            or banks[0][1] % module.nrows:
        raise DramGenError(f"the simulation core of {path.name} has bank memories {banks}, "
                           f"not {module.nbanks} of {module.nrows} rows")
    return DramCore(verilog=verilog, addr_bits=addr_bits, data_bytes=data_bits // 8, config=cfg,
                    sim=True, banks=banks, row_words=banks[0][1] // module.nrows)


def _run_generator(config, tmp, name, sim=False):
    log = tmp / "litedram_gen.log"
    with open(log, "w") as f:
        rc = subprocess.run([sys.executable, "-m", "litedram.gen", str(config.resolve()),
                             "--output-dir", str(tmp / "build"), "--name", name]
                            + (["--sim"] if sim else []),
                            cwd=tmp, stdout=f, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL).returncode
    if rc != 0:
        lines = [ln.strip() for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
        raise DramGenError(f"litedram_gen failed on {config.name} (exit {rc}): "
                           f"{lines[-1] if lines else 'no output'}")


#: a BIOS's ``cdelay(n)`` spins `n` loop iterations of several cycles each; the replay
#: waits this many clock cycles per iteration, so never less than the BIOS does
INIT_DELAY_SCALE = 4
#: cycles between two register writes besides (a CPU's store takes a few)
INIT_GAP = 8


def init_writes(core):
    """The DRAM's init sequence as Wishbone writes to the core's ``wb_ctrl``: (word
    address, value, cycles to wait after it), what LiteX's BIOS does for a core with
    a CPU (``sdram_init``: software control of the DFI, the generated
    ``init_sequence()`` of ``sdram_phy.h``, hardware control back, ``init_done``).
    Read from the core's own ``sdram_phy.h`` and ``csr.json``, so the commands, mode
    registers and delays are the generator's for this module and PHY. DDR3's read
    levelling (the BIOS scans the ECP5 PHY's bitslips with test patterns) is not
    replayed: the PHY's reset values stand."""
    out = Path(core.verilog).parent
    header, csr_file = out / "sdram_phy.h", out / "csr.json"
    if not header.is_file():
        raise DramGenError(f"the LiteDRAM core in {out} has no sdram_phy.h (generated by an "
                           f"older version of this project: delete the directory)")
    text = header.read_text()
    regs = {k: v["addr"] for k, v in
            json.loads(csr_file.read_text())["csr_registers"].items()}
    consts = {k: int(v, 0) for k, v in re.findall(r"#define\s+(DFII_\w+)\s+(0x[0-9a-fA-F]+|\d+)",
                                                  text)}

    def value(expr):
        v = 0
        for term in expr.split("|"):
            term = term.strip()
            v |= consts[term] if term in consts else int(term, 0)
        return v

    def reg(name):
        if name not in regs:
            raise DramGenError(f"the LiteDRAM core has no CSR {name}")
        return regs[name] >> 2

    body = text.split("static inline void init_sequence(void)", 1)
    if len(body) != 2:
        raise DramGenError(f"{header}: no init_sequence()")
    writes = []
    for call, arg in re.findall(r"^\s*(\w+)\((.*)\);", body[1], re.M):
        if call == "cdelay":
            last = writes.pop()
            writes.append((last[0], last[1], last[2] + INIT_DELAY_SCALE * value(arg)))
        elif call == "command_p0":
            writes += [(reg("sdram_dfii_pi0_command"), value(arg), INIT_GAP),
                       (reg("sdram_dfii_pi0_command_issue"), 1, INIT_GAP)]
        elif call.endswith("_write"):
            writes.append((reg(call[:-len("_write")]), value(arg), INIT_GAP))
        else:
            raise DramGenError(f"{header}: init_sequence() calls {call}, which the replay "
                               f"does not know")
    # hardware control: the controller issues refreshes and the user port's commands
    writes.append((reg("sdram_dfii_control"), consts["DFII_CONTROL_SEL"], INIT_GAP))
    writes.append((reg("ddrctrl_init_done"), 1, INIT_GAP))
    return writes
