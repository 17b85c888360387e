"""Stand-ins for the YoWASP iCE40 tools, for tests that run Amaranth's real build script
without the real tools (`tools_path` in conftest.py puts them on PATH)."""
from pathlib import Path

DATA = Path(__file__).parent / "data"

#: stand-ins for the iCE40 tools: Yosys' statistics and nextpnr's report or log are the
#: real ones in data/; `top.rpt`, `top.tim` and `report.json` are the files Amaranth's
#: script names
YOSYS = "Path('top.rpt').write_text((DATA / 'yosys_ice40_matmul_top_stat.rpt').read_text())"
ICEPACK = "Path(args[1]).write_bytes(b'bitstream')"
PNR_REPORT = """import json
report = json.loads((DATA / 'nextpnr_icebreaker_report.json').read_text())
report['fmax']['cd_sync.clk']['constraint'] = {constraint}
Path('report.json').write_text(json.dumps(report))
Path('top.tim').write_text('')
Path('top.asc').write_text('')"""
PNR_OVERFLOW = """log = DATA / 'nextpnr_ice40_matmul_top_overflow.log'
Path('top.tim').write_text(log.read_text())
sys.exit(1)"""
