"""The ISA's encode/decode (rtl/isa.py) and the compiler's limit checks (sim/host/compiler.py)."""
import random
from dataclasses import replace

import numpy as np
import pytest

from gpt2accel.model import quant as Q
from gpt2accel.model.synthetic import random_gpt2
from gpt2accel.rtl.attention_config import AttentionConfig
from gpt2accel.rtl.config import EngineConfig
from gpt2accel.rtl.isa import (INSTR_BITS, IsaError, Op, body_layout, decode, encode,
                               reserved_mask, _field_range)
from gpt2accel.sim.host.compiler import BlockCompiler, CompileError

CFG = AttentionConfig(engine=EngineConfig(rows=4, cols=4, max_k=128, max_m=16, max_n=512,
                                          addr_bits=16),
                      tile=4, lanes=2, norm_lanes=2, max_d_head=16, max_seq=16)


@pytest.fixture(scope="module")
def qmodel():
    fm = random_gpt2(seed=5, vocab_size=40, n_positions=16, n_embd=32, n_layer=1, n_head=2)
    rng = np.random.default_rng(5)
    return Q.QuantGPT2.from_float(fm, [rng.integers(0, 40, 16)], tile=4)


def test_program_roundtrips(qmodel):
    comp = BlockCompiler(CFG, qmodel, 0, max_tokens=8, mem_words=4096)
    ops = comp.ops(5, 3)
    words = comp.program(5, 3)
    assert [decode(CFG, w) for w in words] == [(op, f) for op, f in ops]
    assert all(0 < w < 1 << INSTR_BITS for w in words)


def test_random_fields_roundtrip():
    rng = random.Random(0)
    for op in (Op.MATMUL, Op.KVSTORE):
        for _ in range(50):
            fields = {n: rng.randint(*_field_range(f)) for n, f in body_layout(CFG, op)}
            try:
                word = encode(CFG, op, **fields)
            except IsaError:
                continue
            assert decode(CFG, word) == (op, fields)


@pytest.mark.parametrize("word, msg", [(0, "unknown opcode 0"), (9, "unknown opcode 9"),
                                       (int(Op.HALT) | 1 << 300, "reserved")])
def test_decode_refuses(word, msg):
    with pytest.raises(IsaError, match=msg):
        decode(CFG, word)


def test_encode_names_the_rule():
    mm = dict(m=1, k=1, n=1, a_base=0, a_stride=1, w_base=0, p_base=0, out_base=0,
              out_stride=1, a_signed=1, raw_out=0)
    with pytest.raises(IsaError, match=r"MATMUL.k = 129 exceeds 128 \(max_k\)"):
        encode(CFG, Op.MATMUL, **{**mm, "k": 129})
    with pytest.raises(IsaError, match="MATMUL.m = 0 < 1"):
        encode(CFG, Op.MATMUL, **{**mm, "m": 0})
    with pytest.raises(IsaError, match="a_base = 65536 does not fit"):
        encode(CFG, Op.MATMUL, **{**mm, "a_base": 1 << 16})
    with pytest.raises(IsaError, match="missing"):
        encode(CFG, Op.MATMUL, m=1)
    assert reserved_mask(CFG, Op.HALT) == (1 << INSTR_BITS) - 16


def test_heads_inside_a_word_are_bounded_by_max_k():
    """A head starting inside a word makes S commands of k = b_h + d_head, b_h up to
    mem_bytes - 1: such commands need d_head + mem_bytes - 1 <= max_k, a rule only
    for q_head_bytes != 0; the decoder's expression (`legal_expr`) agrees with
    `encode`'s check on both sides of the bound."""
    from amaranth.hdl import Module, Signal
    from amaranth.sim import Simulator
    from gpt2accel.rtl.isa import legal_expr
    cfg = AttentionConfig(engine=EngineConfig(rows=2, cols=4, max_k=20, max_m=4, max_n=64,
                                              addr_bits=8),
                          tile=4, lanes=1, norm_lanes=1, max_d_head=16, max_seq=8)
    att = {n: 0 for n, _ in body_layout(cfg, Op.ATTENTION)}
    att.update(n_head=2, tq=1, q_row_stride=1, out_stride=1, head_group=1)
    cases = [(dict(d_head=13, q_head_bytes=5), True),     # 13 + 8 - 1 = 20 <= max_k
             (dict(d_head=14, q_head_bytes=6), False),    # 21 > max_k
             (dict(d_head=16, q_head_bytes=0), True)]     # heads on words: k = d_head
    body = Signal(body_layout(cfg, Op.ATTENTION))
    legal = Signal()
    m = Module()
    m.d.comb += legal.eq(legal_expr(cfg, Op.ATTENTION, body))
    got = []

    async def bench(ctx):
        for fields, _ in cases:
            ctx.set(body, {**att, **fields})
            got.append(bool(ctx.get(legal)))

    sim = Simulator(m)
    sim.add_testbench(bench)
    sim.run()
    for (fields, ok), hw in zip(cases, got):
        assert hw == ok, fields
        if ok:
            encode(cfg, Op.ATTENTION, **{**att, **fields})
        else:
            with pytest.raises(IsaError, match=r"ATTENTION.d_head = 14 exceeds 13 \(max_k"):
                encode(cfg, Op.ATTENTION, **{**att, **fields})


def test_one_head_never_starts_inside_a_word():
    """With one head nothing precedes it in its word: no zero rows, no max_k rule."""
    cfg = AttentionConfig(engine=EngineConfig(rows=2, cols=8, max_k=16), tile=4)
    assert cfg.packed_heads(1, 4) == (0, 0, 4)
    assert cfg.packed_heads(4, 4) == (0, 4, 16)
    assert cfg.packed_heads(3, 20) == (1, 4, 28)      # heads at bytes 0, 20, 40: b = 0, 4, 8


def test_heads_inside_a_word_past_max_k_are_refused():
    """Two heads of 4 in a 32-byte word: head 1's S command would read k = 8, but the
    rule for heads inside a word asks d_head + 31 <= max_k, and max_k is 32."""
    fm = random_gpt2(seed=5, vocab_size=40, n_positions=8, n_embd=8, n_layer=1, n_head=2)
    q = Q.QuantGPT2.from_float(fm, [np.arange(8) % 40], tile=4)
    cfg = AttentionConfig(engine=EngineConfig(rows=2, cols=16, max_k=32, max_m=8, max_n=64,
                                              addr_bits=16),
                          tile=4, lanes=1, norm_lanes=1, max_d_head=4, max_seq=8)
    with pytest.raises(CompileError, match=r"d_head 4: heads starting inside a 32-byte word "
                                           r"need max_k >= d_head \+ mem_bytes - 1 = 35"):
        BlockCompiler(cfg, q, 0, max_tokens=2, mem_words=4096)
    wider = replace(cfg, engine=replace(cfg.engine, max_k=35))
    BlockCompiler(wider, q, 0, max_tokens=2, mem_words=4096).program(2, 0)


@pytest.mark.parametrize("change, kwargs, msg", [
    (dict(max_k=16), {}, "c_attn: K = 32 exceeds max_k 16"),
    (dict(max_n=64), {}, "c_attn: N = 96 exceeds max_n 64"),
    (dict(max_m=4), {}, "max_tokens 8 exceeds max_m 4"),
    ({}, dict(mem_words=100), r"memory map needs \d+ words, memory size is 100"),
    ({}, dict(mem_words=1 << 17), "exceeds the address width addr_bits 16"),
    ({"max_seq": 8}, {}, "n_positions 16 exceeds max_seq 8"),
    ({"max_d_head": 8}, {}, "d_head 16 exceeds max_d_head 8"),
    ({"rows": 8, "cols": 8}, {}, "tile 4 != machine tile 8"),
])
def test_oversize_is_refused(qmodel, change, kwargs, msg):
    ekw = dict(rows=4, cols=4, max_k=128, max_m=16, max_n=512, addr_bits=16)
    akw = dict(tile=4, lanes=2, norm_lanes=2, max_d_head=16, max_seq=16)
    for k, v in change.items():
        (akw if k in akw else ekw)[k] = v
    if "rows" in change:
        akw.pop("tile")
    cfg = AttentionConfig(engine=EngineConfig(**ekw), **akw)
    with pytest.raises(CompileError, match=msg):
        BlockCompiler(cfg, qmodel, 0, **{"max_tokens": 8, "mem_words": 4096, **kwargs})


def test_program_limits(qmodel):
    comp = BlockCompiler(CFG, qmodel, 0, max_tokens=8, mem_words=4096)
    with pytest.raises(CompileError, match="T = 9 tokens outside 1..max_tokens 8"):
        comp.program(9, 0)
    with pytest.raises(CompileError, match="positions up to 17 exceed n_positions 16"):
        comp.program(2, 15)
    with pytest.raises(CompileError, match="rows exceed max_tokens"):
        comp.write_rows(comp.image(), "ln_1_out", np.zeros((9, 32), np.int8))


def test_model_compiler_limits(qmodel):
    from gpt2accel.sim.host.compiler import ModelCompiler
    comp = ModelCompiler(CFG, qmodel, max_tokens=4, mem_words=8192)
    ops = [op for op, _ in comp.ops(2, 0)]
    assert ops[0] == Op.EMBED and ops[-4:-1] == [Op.LAYERNORM, Op.MATMUL, Op.REQUANT]
    assert ops[-1] == Op.HALT and ops.count(Op.ATTENTION) == qmodel.config.n_layer
    with pytest.raises(CompileError, match=r"token ids must be in 0..39"):
        comp.write_ids(comp.image(), [3, 40])
    cfg = AttentionConfig(engine=EngineConfig(rows=4, cols=4, max_k=128, max_m=16, max_n=32,
                                              addr_bits=16),
                          tile=4, lanes=2, norm_lanes=2, max_d_head=16, max_seq=16)
    with pytest.raises(CompileError, match="N = 96 exceeds max_n 32"):
        ModelCompiler(cfg, qmodel, max_tokens=4, mem_words=8192)


#: Each block's operations in program order (the golden model's observe names).
BLOCK_OPS = ["ln_1", "qkv", "attn", "attn_proj", "resid_mid", "ln_2", "fc", "gelu",
             "fc_proj", "resid"]


def test_tiny_model_provenance_names_every_operation():
    """Beside the tiny model's program, one `Provenance` per instruction: every layer's
    operations in order, and a check on the last instruction of each operation whose
    machine result is the golden intermediate, in the order the golden model observes
    them (the raw int32 projections have none)."""
    from gpt2accel.sim.cli import resolve_model_dir
    from gpt2accel.sim.host.compiler import ModelCompiler
    from gpt2accel.sim.host.driver import machine_config
    tiny = Q.QuantGPT2.load(resolve_model_dir("tiny") / Q.QUANT_FILENAME)
    cfg = machine_config(tiny, 8, 8)
    comp = ModelCompiler(cfg, tiny, cfg.engine.max_m, None)
    prov = comp.provenance(3, 2)
    assert len(prov) == len(comp.ops(3, 2)) == len(comp.program(3, 2))
    runs = [(p.op, p.layer) for j, p in enumerate(prov)
            if j == 0 or (p.op, p.layer) != (prov[j - 1].op, prov[j - 1].layer)]
    layers = range(tiny.config.n_layer)
    assert runs == ([("embed", None)] + [(op, i) for i in layers for op in BLOCK_OPS]
                    + [("ln_f", None), ("logits", None), (None, None)])
    seen = []
    tiny.forward(np.arange(3), observe=lambda n, l, x: seen.append((n, l)))
    assert [(p.op, p.layer) for p in prov if p.check] == [
        s for s in seen if s[0] not in ("attn_proj", "fc_proj")]
    for j, p in enumerate(prov):                  # a check ends its operation
        if p.check:
            assert j + 1 == len(prov) or (prov[j + 1].op, prov[j + 1].layer) != (p.op, p.layer)
            assert p.check[0] in comp.regions


def test_tiny_model_cycle_report(capsys):
    """`python -m gpt2accel.sim.cycles.program` reports the documented tiny-model figures
    (docs/architecture.md, Machine); a change in any unit's timing shows here."""
    from gpt2accel.sim.cycles.program import main
    main(["--rows", "8", "--cols", "8"])
    out = capsys.readouterr().out
    for figure in ("T=128 at 0: 375,029 cycles", "T=1 at 0: 9,426 cycles",
                   "T=1 at 127: 11,226 cycles"):
        assert figure in out, out


def test_logits_for_the_rows_asked(qmodel):
    """program(..., logits=): the head runs on the last row only ("last": LAYERNORM of
    x's last row, a 1-row LM head and REQUANT), on none ("none": the program ends with
    the last block), or on every row; a buffer of one row refuses "all"."""
    from gpt2accel.sim.host.compiler import ModelCompiler
    comp = ModelCompiler(CFG, qmodel, max_tokens=4, mem_words=8192, logit_rows=1)
    x, lr = comp.regions["x"], comp.regions["logits"]
    ln, mm, rq, halt = comp.ops(3, 0, "last")[-4:]
    assert (ln[0], mm[0], rq[0], halt[0]) == (Op.LAYERNORM, Op.MATMUL, Op.REQUANT, Op.HALT)
    assert ln[1]["rows"] == mm[1]["m"] == rq[1]["rows"] == 1
    assert ln[1]["src_base"] == x.base + 2 * x.stride
    assert lr.words == lr.stride and comp.regions["ln_f_out"].words == x.stride // 2
    assert [op for op, _ in comp.ops(3, 0, "none")][-2:] == [Op.RESADD, Op.HALT]
    assert len(comp.ops(3, 0, "none")) == len(comp.ops(3, 0, "last")) - 3
    with pytest.raises(CompileError, match=r"logits of 3 rows exceed the 1 row of the "
                                           r"logits buffers \(logit_rows\)"):
        comp.program(3, 0, "all")
    with pytest.raises(CompileError, match="logits='first': one of all, last, none"):
        comp.program(3, 0, "first")
    every = ModelCompiler(CFG, qmodel, max_tokens=4, mem_words=8192)
    assert every.ops(1, 0, "all") == every.ops(1, 0, "last")
    assert every.ops(3, 0) == every.ops(3, 0, "all")        # the default: every row
    assert [f["m"] for op, f in every.ops(3, 0) if op == Op.MATMUL][-1] == 3


def test_context_and_image_regions(qmodel):
    """`context` sizes the KV caches and bounds the programs; `region_bytes` splits the
    map into weights, KV caches and buffers."""
    from gpt2accel.sim.host.compiler import ModelCompiler
    full = ModelCompiler(CFG, qmodel, max_tokens=4, mem_words=None)
    short = ModelCompiler(CFG, qmodel, max_tokens=4, mem_words=None, context=5, logit_rows=1)
    mb = CFG.engine.mem_bytes
    for comp, tiles in ((full, 4), (short, 2)):          # tile 4: 16 and 5 positions
        rb = comp.region_bytes()
        assert sum(rb.values()) == comp.end * mb
        kv = sum(r.words for n, r in comp.regions.items() if n.endswith("_cache")) * mb
        assert rb["kv"] == kv == (qmodel.config.n_layer * tiles * comp.H
                                  * (comp.kts + comp.vts) * mb)
        w = sum(comp.regions[n].words for n in ("lm_head.w", "h0.c_fc.w")) * mb
        assert rb["weights"] > w
    assert full.region_bytes()["weights"] == short.region_bytes()["weights"]
    assert short.region_bytes()["buffers"] < full.region_bytes()["buffers"]
    with pytest.raises(CompileError, match="positions up to 6 exceed the context 5"):
        short.ops(2, 4, "last")
    for kw, msg in ((dict(context=17), "context 17 outside 1..n_positions 16"),
                    (dict(logit_rows=5), "logit_rows 5 outside 1..max_tokens 4")):
        with pytest.raises(CompileError, match=msg):
            ModelCompiler(CFG, qmodel, max_tokens=4, mem_words=None, **kw)


@pytest.mark.parametrize("cols, tied", [(4, True), (8, True), (12, False), (16, False)])
def test_the_tied_wte_is_stored_once_where_embed_reads_the_heads_tiles(qmodel, cols, tied):
    """EMBED reads its token table in W tiles of `wte_tile_cols` tokens: on arrays of
    1, 2, 4 or 8 columns those are the LM head's own weight tiles, and the image holds
    wte once; wider arrays keep a table of 4-token tiles of its own."""
    from gpt2accel.rtl.isa import wte_tile_cols
    from gpt2accel.sim.host.compiler import ModelCompiler
    from gpt2accel.sim.host.matmul_layout import pack_w
    cfg = replace(CFG, engine=replace(CFG.engine, cols=cols, mem_bytes=2 * cols))
    comp = ModelCompiler(cfg, qmodel, max_tokens=4, mem_words=None)
    E, V = comp.E, comp.V
    (op, f), = [(op, f) for op, f in comp.ops(2, 0) if op == Op.EMBED]
    head = comp.regions["lm_head.w"]
    assert ("wte" not in comp.regions) == tied
    tc = wte_tile_cols(cfg.engine.mem_bytes, cols)
    te = replace(cfg.engine, cols=tc)
    assert f["wte_stride"] == te.w_words_per_tile(E)
    if tied:
        assert f["wte_base"] == head.base and tc == cols
    else:
        table = comp.regions["wte"]
        assert f["wte_base"] == table.base and tc == 4
        assert table.words == -(-V // 4) * te.w_words_per_tile(E)
    # what EMBED reads is the table: token t's element k at word k // (mem_bytes // tc)
    # of tile t // tc, byte (k % (mem_bytes // tc)) * tc + t % tc
    words = pack_w(te, np.asarray(qmodel.wte).T)
    gk = cfg.engine.mem_bytes // tc
    t, k = np.meshgrid(np.arange(V), np.arange(E), indexing="ij")
    got = words[t // tc * f["wte_stride"] + k // gk, k % gk * tc + t % tc].astype(np.int8)
    np.testing.assert_array_equal(got, qmodel.wte)


def test_narrow_heads_share_s_commands_where_it_pays():
    """microGPT's geometry (four heads of 4 bytes, a context of one 16-key tile): the
    compiler gives decode's ATTENTION the largest head group the cycle model times
    faster than an S command a head (4 on 8x8 and 16x16, 2 on 4x4; none on 12x12,
    whose 16-key tile is not whole column tiles), with every Kᵀ tile at the full
    height in KVSTORE and ATTENTION alike, and a decode step at position 15 is
    faster than the same program with one S command a head."""
    from gpt2accel.sim.bench.model import _microgpt, sequence_program
    from gpt2accel.sim.cycles.program import program_cycles
    from gpt2accel.sim.host.compiler import ModelCompiler
    from gpt2accel.sim.host.driver import machine_config
    q = _microgpt()
    for rows, group in ((4, 2), (8, 4), (12, 1), (16, 4)):
        cfg = machine_config(q, rows, rows, max_tokens=16)
        comp = ModelCompiler(cfg, q, 16, 1 << cfg.engine.addr_bits, logit_rows=1, context=16)
        assert comp.head_group == group, rows
        fields = {op: f for op, f in comp.ops(1, 15) if op in (Op.KVSTORE, Op.ATTENTION)}
        assert fields[Op.ATTENTION]["head_group"] == group
        assert fields[Op.ATTENTION]["k_rows"] == fields[Op.KVSTORE]["k_rows"] == (
            comp.k_rows if group > 1 else 0)
        if group > 1:
            words, _, mem = sequence_program(comp, q, 1, 15)
            comp.head_group, comp.att_k_rows = 1, 0
            apart, _ = program_cycles(cfg, sequence_program(comp, q, 1, 15)[0], mem=mem)
            assert program_cycles(cfg, words, mem=mem)[0] < apart, rows
