"""The boards' LiteDRAM cores: configs checked before the generator runs, cores
generated once and cached by config and versions, their native port as expected."""
import re

import pytest

from gpt2accel.boards import dram as D

pytest.importorskip("litedram")


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("GPT2ACCEL_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / "litedram"


@pytest.mark.parametrize("board, addr_bits, data_bytes, mib", [
    ("ulx3s-85f", 24, 2, 32),         # MT48LC16M16, x16 SDR at 1:1: a 16-bit native word
    ("orangecrab-85f", 23, 16, 128),  # MT41K64M16, x16 DDR3 at 1:2, burst 8: 128 bits
])
def test_a_board_core_has_the_native_port_of_its_dram(cache, board, addr_bits, data_bytes, mib,
                                                       capfd):
    core = D.generate_core(board)
    assert (core.addr_bits, core.data_bytes, core.size_bytes >> 20) == (addr_bits, data_bytes, mib)
    text = core.verilog.read_text()
    assert re.search(rf"output\s+wire\s+\[{8 * data_bytes - 1}:0\]\s+user_port_native_0_rdata_data",
                     text)
    assert re.search(rf"input\s+wire\s+\[{addr_bits - 1}:0\]\s+user_port_native_0_cmd_addr", text)
    assert core.verilog.parent.parent == cache
    err = capfd.readouterr().err
    assert f"generating the LiteDRAM core for {board}.yml" in err and "cached in" in err

    again = D.generate_core(board)
    assert again.verilog == core.verilog
    assert "generating" not in capfd.readouterr().err


def test_a_changed_config_is_a_new_core(cache, tmp_path):
    text = D.config_path("ulx3s-85f").read_text()
    changed = tmp_path / "ulx3s-85f.yml"
    changed.write_text(text.replace('"sys_clk_freq": 25e6', '"sys_clk_freq": 50e6'))
    assert changed.read_text() != text
    a, b = D.generate_core("ulx3s-85f"), D.generate_core(changed)
    assert a.verilog != b.verilog and a.verilog.is_file() and b.verilog.is_file()
    assert sorted(p.name for p in cache.iterdir()) == sorted([a.verilog.parent.name,
                                                              b.verilog.parent.name])


def _write(tmp_path, base, edit):
    text = D.config_path(base).read_text()
    new = edit(text)
    assert new != text, "the edit changed nothing"
    path = tmp_path / "bad.yml"
    path.write_text(new)
    return path


@pytest.mark.parametrize("base, edit, message", [
    ("ulx3s-85f", lambda t: t.replace('"sdram_phy":       "GENSDRPHY",', ""),
     "sdram_phy is missing"),
    ("ulx3s-85f", lambda t: t.replace('"GENSDRPHY"', '"GENSDRPHYX"'),
     "sdram_phy 'GENSDRPHYX' is not one of GENSDRPHY, ECP5DDRPHY"),
    ("ulx3s-85f", lambda t: t.replace('"memtype": "SDR"', '"memtype": "DDR3"'),
     "GENSDRPHY drives SDR memory, not memtype 'DDR3'"),
    ("ulx3s-85f", lambda t: t.replace('"MT48LC16M16"', '"MT48LC16M17"'),
     "sdram_module 'MT48LC16M17' is not a LiteDRAM module"),
    ("ulx3s-85f", lambda t: t.replace('"cpu":     None', '"cpu":     "serv"'),
     "cpu must be None"),
    ("ulx3s-85f", lambda t: t.replace('"sys_clk_freq": 25e6', '"sys_clk_freq": fast'),
     "sys_clk_freq must be a frequency in Hz, not 'fast'"),
    ("ulx3s-85f", lambda t: t.replace('"cmd_buffer_depth"', '"cmd_bufer_depth"'),
     "unknown setting 'cmd_bufer_depth'"),
    ("ulx3s-85f", lambda t: t.replace('"type": "native"', '"type": "wishbone"'),
     "user_ports must have 'native_0' of type 'native'"),
    ("ulx3s-85f", lambda t: t.replace("{", "[", 1), "not valid YAML at line"),
    ("orangecrab-85f", lambda t: t.replace('"init_clk_freq":  24e6,', ""),
     "init_clk_freq is missing \\(ECP5DDRPHY needs it\\)"),
])
def test_a_bad_config_is_one_line_before_the_generator_runs(cache, tmp_path, base, edit, message):
    path = _write(tmp_path, base, edit)
    with pytest.raises(D.DramConfigError, match=message) as e:
        D.generate_core(path)
    assert "\n" not in str(e.value) and str(path) in str(e.value)
    assert not cache.exists()


def test_unknown_boards_and_missing_files_are_named(cache, tmp_path):
    with pytest.raises(D.DramConfigError, match="no DRAM config for board 'ulx3s-12f'"):
        D.generate_core("ulx3s-12f")
    with pytest.raises(D.DramConfigError, match="cannot read DRAM config .*nothere.yml"):
        D.generate_core(tmp_path / "nothere.yml")


def test_a_failing_generator_is_one_line_and_caches_nothing(cache, tmp_path):
    # a clock the ECP5's PLL cannot make from 48 MHz: a sound config that LiteX refuses
    path = _write(tmp_path, "orangecrab-85f", lambda t: t.replace('"sys_clk_freq":   40e6',
                                                                  '"sys_clk_freq":   900e6'))
    with pytest.raises(D.DramGenError, match="litedram_gen failed on bad.yml \\(exit 1\\): ") as e:
        D.generate_core(path)
    assert "\n" not in str(e.value)
    assert list(cache.iterdir()) == []


def test_a_bad_module_count_is_refused(cache, tmp_path):
    path = _write(tmp_path, "ulx3s-85f", lambda t: t.replace('"sdram_module_nb": 2',
                                                             '"sdram_module_nb": 0'))
    with pytest.raises(D.DramConfigError, match="sdram_module_nb must be a positive int"):
        D.generate_core(path)


def test_the_native_port_is_read_from_the_verilog():
    ports = "\n".join(f"    {d}  wire {w} user_port_native_0_{n}," for d, w, n in [
        ("input", "[22:0]", "cmd_addr"), ("output", "", "cmd_ready"), ("input", "", "cmd_valid"),
        ("input", "", "cmd_we"), ("output", "[63:0]", "rdata_data"),
        ("input", "", "rdata_ready"), ("output", "", "rdata_valid"),
        ("input", "[63:0]", "wdata_data"), ("output", "", "wdata_ready"),
        ("input", "", "wdata_valid"), ("input", "[7:0]", "wdata_we")])
    assert D.native_port(ports) == (23, 64)
    with pytest.raises(D.DramGenError, match="no user_port_native_0_rdata_valid"):
        D.native_port(ports.replace("rdata_valid", "rdata_vld"))
    with pytest.raises(D.DramGenError, match="inconsistent data widths 64/64/4"):
        D.native_port(ports.replace("[7:0]", "[3:0]"))


@pytest.mark.parametrize("board, banks, depth, row_words, data_bytes", [
    ("ulx3s-85f", 4, 8192 * 512, 512, 2),           # MT48LC16M16: 4 banks, 8192 rows of 512
    ("orangecrab-85f", 8, 8192 * 128, 128, 16),     # MT41K64M16: 1024 columns, bursts of 8
])
def test_a_simulation_core_names_its_bank_memories(cache, board, banks, depth, row_words,
                                                   data_bytes):
    pytest.importorskip("liteeth")
    core = D.generate_core(board, sim=True)
    assert core.sim and core.data_bytes == data_bytes and core.row_words == row_words
    assert [d for _, d in core.banks] == [depth] * banks
    assert core.banks[0][0] == "mem" and core.banks[1][0] == "mem_1"
    # the banks hold the whole DRAM, which the module's geometry gives without generating
    assert banks * depth * data_bytes == core.size_bytes == D.dram_bytes(board)
    # the PHY model instead of the board's PHY: no DRAM pins, a separate cache entry
    text = core.verilog.read_text()
    assert "SDRAMPHYModel" in text and "sdram_dq" not in text and "ddram_dq" not in text
    assert core.verilog != D.generate_core(board).verilog
    assert (core.verilog.parent / "csr.json").is_file()
