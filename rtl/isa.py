"""The machine's instruction set, defined once for the RTL decoder, the compiler and the cycle model.

An instruction is one fixed-width word of `INSTR_BITS` bits:

    bits [0, 4)            opcode (`Op`)
    bits [4, 4 + body)     the opcode's body layout (`body_layout(cfg, op)`)
    bits [4 + body, ...)   reserved, must be zero

The bodies of MATMUL and ATTENTION are the engines' command layouts, defined
here (`matmul_command_layout`, `attention_command_layout`) and used by the
engines for their ``cmd`` ports, so a decoded body is handed to an engine bit
for bit. The ISA depends on nothing but Amaranth and the configuration: the
engines import it, never the other way round. The body widths depend on
the configuration (address width, max_k, max_seq, ...), hence every function
takes the machine's `AttentionConfig`.

Legality (`rules(cfg, op)`): each opcode has a list of field constraints,
written once as `Rule`s; `check_fields` evaluates them in Python (the
compiler refuses to encode an illegal instruction) and `legal_expr` builds
the same comparisons as Amaranth expressions for the decoder. An unknown
opcode, a violated rule or a nonzero reserved bit is illegal (`Error`).
"""
import enum
from dataclasses import dataclass

from amaranth.hdl import Const, Shape, Value, signed, unsigned
from amaranth.lib import data

from .attention_config import LN_EPS_BITS, AttentionConfig
from .config import EngineConfig

__all__ = ["wte_tile_cols", "matmul_command_layout", "attention_command_layout", "layernorm_setup_layout",
           "LN_N_BITS", "LN_EPS_E_BITS", "RESID_BYTES", "ACT_BYTES", "RAW_BYTES", "BETA_BYTES",
           "Q_BYTES", "GAMMA_BYTES", "VECTOR_OPS", "vector_layouts", "cfg_max_vector_n", "MAX_VECTOR_N", "INSTR_BITS", "OPCODE_BITS", "Op", "Error", "IsaError", "Rule", "kvstore_layout",
           "body_layout", "rules", "instruction_layout", "encode", "decode", "check_fields",
           "legal_expr", "reserved_mask"]

#: instruction word width; the widest body (ATTENTION at 24-bit addresses) is ~340 bits
INSTR_BITS = 512
OPCODE_BITS = 4


class Op(enum.IntEnum):
    """Opcodes. 0 is deliberately illegal so that a zeroed word never executes."""
    MATMUL = 1      #: one matmul-engine command (out = requant(A @ W + b) or raw)
    ATTENTION = 2   #: one attention-engine command (one layer, all heads)
    KVSTORE = 3     #: append this call's K and V (from c_attn's output rows) to the caches
    LAYERNORM = 4   #: rows of residual values (int16) -> int8, LayerNormUnit
    GELU = 5        #: load the 256-entry table, then int8 rows -> int8, GeluUnit
    RESADD = 6      #: x = sat(x + requant(raw int32 y, per-column mult/shift)), ResidualAdd
    REQUANT = 7     #: dst = sat(requant(raw int32 y)) to resid_bits (LM head logits)
    EMBED = 8       #: x = requant(wte[id]) + requant(wpe[pos]), EmbeddingAdd
    HALT = 15       #: end of program: `done` pulses, counters stop


class Error(enum.IntEnum):
    """Codes of the machine's ``error`` status (sticky until ``clear``)."""
    NONE = 0
    OPCODE = 1      #: unknown opcode
    FIELD = 2       #: a field outside its rule
    RESERVED = 3    #: a reserved bit is set


class IsaError(ValueError):
    """An instruction the compiler would have to encode is illegal; names the rule."""


def kvstore_layout(cfg: AttentionConfig):
    """KVSTORE: copy K and V of ``n_tok`` tokens into the caches, positions ``pos0`` ..

    Source: K then V of every head, 2E bytes (E = n_head*d_head) from byte
    ``src_lane`` of the word ``src_base + t*src_stride`` (c_attn's output rows
    [T, 3E] int8: src_base is the word holding byte E of row 0). Destinations:
    the attention engine's cache layout (docs/architecture.md, attention memory
    layout): key p of head h goes to tile p // tile at
    ``k_base + h*k_head_stride + (p // tile)*k_tile_stride`` as column p % tile
    of Kᵀ [b_h + D, tile] in the matmul W layout, rows b_h .., where b_0 = 0 and
    b_{h+1} = (b_h + k_skew) mod mem_bytes (the ATTENTION command's q_head_bytes);
    with ``k_rows`` nonzero every head's Kᵀ tile is [k_rows, tile] instead (the
    ATTENTION command's ``k_rows``: one W operand for several heads); V as row
    p % tile of V [tile, D].
    """
    addr = unsigned(cfg.engine.addr_bits)
    return data.StructLayout({
        "n_tok": range(cfg.max_seq + 1), "pos0": range(cfg.max_seq),
        "n_head": range(1, 257), "d_head": range(cfg.max_d_head + 1),
        "src_base": addr, "src_stride": addr, "src_lane": range(cfg.engine.mem_bytes),
        "k_skew": range(cfg.engine.mem_bytes),
        "k_rows": range(cfg.engine.max_k + 1),
        "k_base": addr, "k_tile_stride": addr, "k_head_stride": addr,
        "v_base": addr, "v_tile_stride": addr, "v_head_stride": addr,
    })


def matmul_command_layout(cfg: EngineConfig):
    """MATMUL (the matmul engine's ``cmd``): one matmul: out[M, N] = A[M, K] @ W[K, N] (+ bias, requantised unless raw_out).

    Addresses and strides are in memory words; see docs/architecture.md for the layout.
    """
    addr = unsigned(cfg.addr_bits)
    return data.StructLayout({
        "m": range(cfg.max_m + 1), "k": range(cfg.max_k + 1), "n": range(cfg.max_n + 1),
        "a_base": addr, "a_stride": addr,
        "w_base": addr, "p_base": addr,
        "out_base": addr, "out_stride": addr,
        "a_signed": 1, "raw_out": 1,
    })



def attention_command_layout(cfg: AttentionConfig):
    """One layer's attention. Addresses and strides are in memory words.

    - ``n_head`` >= 1, ``d_head`` (D >= 1, a multiple of norm_lanes), ``tq`` >= 1
      (queries), ``offset`` (position of query 0; Tk = offset + tq <= max_seq keys);
    - Q of head h, query i: D bytes from byte b_h of the word
      ``q_base + h*q_head_stride + c_h + i*q_row_stride``, where heads advance by
      ``q_head_stride`` words and ``q_head_bytes`` bytes: b_0 = c_0 = 0,
      b_{h+1} = (b_h + q_head_bytes) mod mem_bytes, c_h counting the carries
      (heads packed in rows as c_attn writes them: q_head_stride = D // mem_bytes,
      q_head_bytes = D % mem_bytes);
    - K cache of head h, key tile j: Kᵀ [b_h + D, tile] in W layout at
      ``k_base + h*k_head_stride + j*k_tile_stride``, its first b_h rows zero
      (the S command reads the Q row from its word, so the b_h bytes before the
      head meet zero weights). With ``k_rows`` nonzero every head's tile is
      [k_rows, tile] (zero rows outside b_h .. b_h+D-1) and every S command
      takes k = k_rows;
    - ``head_group``: heads per S command of a one-query command whose keys fit
      one tile (decode of a short context): the group's Kᵀ tiles back to back
      (k_head_stride = one tile's words at k_rows rows, k_rows nonzero), its
      heads in one Q word, n_head a multiple of it; 1 = one S command per head;
    - V cache likewise: V [tile, D] in W layout (`v_*`);
    - output: query i, head h occupies bytes h*D .. h*D+D-1 of the row at
      ``out_base + i*out_stride`` (the [T, E] int8 layout c_proj reads);
    - ``scratch_base``: `AttentionConfig.scratch_offsets()`; its first
      `zero_words` words must be zero;
    - score and output requantisers (numerics §4.2, §4.5).
    """
    e = cfg.engine
    addr = unsigned(e.addr_bits)
    return data.StructLayout({
        "n_head": range(1, 257), "d_head": range(cfg.max_d_head + 1),
        "tq": range(cfg.max_seq + 1), "offset": range(cfg.max_seq),
        "q_base": addr, "q_row_stride": addr, "q_head_stride": addr,
        "q_head_bytes": range(e.mem_bytes),
        "k_rows": range(e.max_k + 1), "head_group": range(1, cfg.s_chunk + 1),
        "k_base": addr, "k_tile_stride": addr, "k_head_stride": addr,
        "v_base": addr, "v_tile_stride": addr, "v_head_stride": addr,
        "out_base": addr, "out_stride": addr, "scratch_base": addr,
        "score_mult": unsigned(e.mult_bits), "score_shift": range(e.max_shift + 1),
        "out_mult": unsigned(e.mult_bits), "out_shift": range(e.max_shift + 1),
    })


def layernorm_setup_layout():
    """One LayerNorm's scalars (§6): row length n and the quantised out_shift, eps_m, eps_e."""
    return data.StructLayout({"n": unsigned(LN_N_BITS), "out_shift": range(48),
                              "eps_m": unsigned(LN_EPS_BITS), "eps_e": signed(LN_EPS_E_BITS)})



#: LAYERNORM: width of the row length field (a row longer than the unit's max_e is refused)
LN_N_BITS = 12
#: LAYERNORM: eps exponent field (signed); the file format allows -200..200
LN_EPS_E_BITS = 9

#: bytes per element of the vector instructions' operands: residual rows (int16), int8
#: activations, raw int32 matmul output, LayerNorm beta (int64 holding 48 bits), per-column
#: requantiser params (uint32), LayerNorm gamma (int16)
RESID_BYTES, ACT_BYTES, RAW_BYTES, BETA_BYTES, Q_BYTES, GAMMA_BYTES = 2, 1, 4, 8, 4, 2


#: the instructions the vector mover (rtl/vecmove.py) runs
VECTOR_OPS = (Op.LAYERNORM, Op.GELU, Op.RESADD, Op.REQUANT, Op.EMBED)

#: largest row (elements) a vector instruction moves; LayerNorm's limit (numerics §6.3)
MAX_VECTOR_N = 2048


def wte_tile_cols(mem_bytes, cols):
    """Columns (tokens) per tile of EMBED's token table (part of its memory layout, so
    the compiler and the vector mover share it): the engine's `cols` when a
    group of lanes then takes its elements from at most two words (`cols` of 1, 2,
    4 or 8), so the LM head's W tiles are the table; else 4 (one word per group),
    and the table is a copy of its own."""
    return cols if cols in (1, 2, 4, 8) and mem_bytes % cols == 0 else 4


def vector_layouts(cfg: AttentionConfig):
    """Bodies of the vector instructions (vecmove.VectorMover). Rows are row-major
    element arrays: element (r, c) at byte c*size of the row at ``base + r*stride``
    (sizes: residual int16, activations int8, raw matmul output int32)."""
    ln_setup = layernorm_setup_layout()
    addr = unsigned(cfg.engine.addr_bits)
    rows = {"rows": range(1, cfg.engine.max_m + 1), "n": range(1, MAX_VECTOR_N + 1),
            "src_base": addr, "src_stride": addr, "dst_base": addr, "dst_stride": addr}
    return {
        # gamma int16 [n] at gamma_base, beta int64 [n] (48-bit values) at beta_base
        Op.LAYERNORM: data.StructLayout({**rows, "gamma_base": addr, "beta_base": addr,
                                         **{f: ln_setup[f].shape
                                            for f in ("out_shift", "eps_m", "eps_e")}}),
        # the table (256 x int8, entry x+128) at table_base is loaded first
        Op.GELU: data.StructLayout({**rows, "table_base": addr}),
        # src = x (int16), y = raw matmul rows (int32), q = per column uint32 mult | shift<<16;
        # dst may equal src (elements are read before they are written)
        Op.RESADD: data.StructLayout({**rows, "y_base": addr, "y_stride": addr,
                                      "q_base": addr}),
        # RESADD with x = 0 (src unused): the requantised raw rows alone
        Op.REQUANT: data.StructLayout({**rows, "y_base": addr, "y_stride": addr,
                                       "q_base": addr}),
        # src: token ids, uint32 each, element r at byte 4r; row r of the output is
        # position pos0 + r; wpe int8 rows (stride words); wte in W tiles of
        # tc = wte_tile_cols tokens (wte_stride words each), token t's
        # element k at word k // (mem_bytes // tc) of tile t // tc, byte
        # (k % (mem_bytes // tc)) * tc + t % tc: the LM head's weight tiles when tc
        # is the engine's cols; one uint32 (mult | shift << 16) per table row at *_q_base
        Op.EMBED: data.StructLayout({**rows, "pos0": range(cfg.max_seq),
                                     "wte_base": addr, "wte_stride": addr, "wte_q_base": addr,
                                     "wpe_base": addr, "wpe_stride": addr, "wpe_q_base": addr}),
    }


def body_layout(cfg: AttentionConfig, op: Op):
    if op == Op.MATMUL:
        return matmul_command_layout(cfg.engine)
    if op == Op.ATTENTION:
        return attention_command_layout(cfg)
    if op == Op.KVSTORE:
        return kvstore_layout(cfg)
    if op in VECTOR_OPS:
        return vector_layouts(cfg)[op]
    if op == Op.HALT:
        return data.StructLayout({})
    raise IsaError(f"unknown opcode {op!r}")


@dataclass(frozen=True)
class Rule:
    """``lo <= value <= hi`` where value is a field, or the sum of two fields (``plus``),
    or ``field % mod == 0`` when ``mod`` is set; with ``when``, only if that field is
    nonzero. `why` names the hardware limit."""
    field: str
    lo: int = None
    hi: int = None
    plus: str = None
    mod: int = None
    when: str = None
    why: str = ""


def rules(cfg: AttentionConfig, op: Op):
    e = cfg.engine
    if op == Op.MATMUL:
        return [Rule("m", 1, e.max_m, why="max_m"), Rule("k", 1, e.max_k, why="max_k"),
                Rule("n", 1, e.max_n, why="max_n")]
    if op == Op.ATTENTION:
        return [Rule("tq", 1, why="at least one query"),
                Rule("d_head", 1, cfg.max_d_head, why="max_d_head"),
                Rule("d_head", mod=cfg.norm_lanes, why="norm_lanes"),
                Rule("d_head", hi=e.max_k - e.mem_bytes + 1, when="q_head_bytes",
                     why="max_k (an S command reads up to mem_bytes-1 bytes before a head)"),
                Rule("offset", hi=cfg.max_seq, plus="tq", why="max_seq (offset + tq)"),
                Rule("q_head_bytes", hi=e.mem_bytes - 1, why="a byte of a word"),
                Rule("k_rows", hi=e.max_k, why="max_k (the S commands' k)"),
                Rule("head_group", 1, cfg.s_chunk,
                     why="s_chunk (an S half's rows, max_n // tile)")]
    if op == Op.KVSTORE:
        return [Rule("n_tok", 1, why="at least one token"),
                Rule("d_head", 1, cfg.max_d_head, why="max_d_head"),
                Rule("pos0", hi=cfg.max_seq, plus="n_tok", why="max_seq (pos0 + n_tok)"),
                Rule("src_lane", hi=e.mem_bytes - 1, why="a byte of a word"),
                Rule("k_skew", hi=e.mem_bytes - 1, why="a byte of a word"),
                Rule("k_rows", hi=e.max_k, why="max_k (Kᵀ rows of a tile)")]
    if op in VECTOR_OPS:
        # the mover's units are built for rows of at most max_vector_n elements
        r = [Rule("n", 1, cfg_max_vector_n(cfg), why="max_vector_n (vector unit row buffers)")]
        if op == Op.EMBED:
            r.append(Rule("pos0", hi=cfg.max_seq, plus="rows", why="max_seq (pos0 + rows)"))
        return r
    if op == Op.HALT:
        return []
    raise IsaError(f"unknown opcode {op!r}")


def cfg_max_vector_n(cfg):
    """Longest vector row: the largest K a matmul takes (rows feed matmuls), at most
    MAX_VECTOR_N; sizes the LayerNorm unit's row buffers."""
    return min(cfg.engine.max_k, MAX_VECTOR_N)


def instruction_layout(cfg: AttentionConfig, op: Op):
    """The whole word of `op`: opcode, body, reserved bits (a `StructLayout` of INSTR_BITS)."""
    body = body_layout(cfg, op)
    free = INSTR_BITS - OPCODE_BITS - body.size
    if free < 0:
        raise IsaError(f"{op.name} body is {body.size} bits, more than the "
                       f"{INSTR_BITS - OPCODE_BITS} an instruction holds (shrink addr_bits)")
    fields = {"opcode": unsigned(OPCODE_BITS), "body": body}
    if free:
        fields["reserved"] = unsigned(free)
    return data.StructLayout(fields)


def reserved_mask(cfg, op):
    """Integer mask of `op`'s reserved bits within the word."""
    body = body_layout(cfg, op).size
    return ((1 << INSTR_BITS) - 1) & ~((1 << (OPCODE_BITS + body)) - 1)


def _field_range(f):
    """(lo, hi) a field can hold: its range() if declared so, else its bit width."""
    if isinstance(f.shape, range):
        return f.shape.start, f.shape.stop - 1
    shape = Shape.cast(f.shape)
    if shape.signed:
        return -(1 << (shape.width - 1)), (1 << (shape.width - 1)) - 1
    return 0, (1 << shape.width) - 1


def _value(fields, rule):
    v = fields[rule.field]
    return v + fields[rule.plus] if rule.plus else v


def check_fields(cfg, op, fields):
    """Raise `IsaError` naming the first violated rule of `op` for the dict `fields`."""
    layout = body_layout(cfg, op)
    names = {name for name, _ in layout}
    extra = set(fields) - names
    missing = names - set(fields)
    if extra or missing:
        raise IsaError(f"{op.name}: unknown fields {sorted(extra)}, missing {sorted(missing)}")
    for r in rules(cfg, op):
        if r.when is not None and not fields[r.when]:
            continue
        v = _value(fields, r)
        what = f"{r.field}+{r.plus}" if r.plus else r.field
        if r.lo is not None and v < r.lo:
            raise IsaError(f"{op.name}.{what} = {v} < {r.lo} ({r.why})")
        if r.hi is not None and v > r.hi:
            raise IsaError(f"{op.name}.{what} = {v} exceeds {r.hi} ({r.why})")
        if r.mod is not None and v % r.mod:
            raise IsaError(f"{op.name}.{what} = {v} is not a multiple of {r.mod} ({r.why})")
    for name, f in layout:
        lo, hi = _field_range(f)
        v = int(fields[name])
        if not lo <= v <= hi:
            raise IsaError(f"{op.name}.{name} = {v} does not fit its field ({lo}..{hi})")


def encode(cfg, op, **fields):
    """The instruction word (int) of `op` with body `fields`; checks every rule first."""
    op = Op(op)
    check_fields(cfg, op, fields)
    body = body_layout(cfg, op)
    word = int(op)
    for name, f in body:
        word |= (int(fields[name]) & ((1 << f.width) - 1)) << (OPCODE_BITS + f.offset)
    return word


def decode(cfg, word):
    """(Op, fields) of an instruction word; raises `IsaError` if it is illegal."""
    code = word & ((1 << OPCODE_BITS) - 1)
    try:
        op = Op(code)
    except ValueError:
        raise IsaError(f"unknown opcode {code}") from None
    if word & reserved_mask(cfg, op):
        raise IsaError(f"{op.name}: reserved bits set")
    fields = {}
    for name, f in body_layout(cfg, op):
        v = (word >> (OPCODE_BITS + f.offset)) & ((1 << f.width) - 1)
        if Shape.cast(f.shape).signed and v >> (f.width - 1):
            v -= 1 << f.width
        fields[name] = v
    check_fields(cfg, op, fields)
    return op, fields


def legal_expr(cfg, op, body):
    """Amaranth expression: the fields of `body` (a `View` of `body_layout(cfg, op)`)
    satisfy every rule of `op` (the same rules `check_fields` applies)."""
    ok = Const(1)
    for r in rules(cfg, op):
        v = Value.cast(body[r.field])
        if r.plus:
            v = v + Value.cast(body[r.plus])
        rule = Const(1)
        if r.lo is not None:
            rule = rule & (v >= r.lo)
        if r.hi is not None:
            rule = rule & (v <= r.hi)
        if r.mod is not None:
            rule = rule & (v % r.mod == 0)
        if r.when is not None:
            rule = rule | (Value.cast(body[r.when]) == 0)
        ok = ok & rule
    return ok
