"""Configuration of the attention engine (softmax unit, normaliser, controller).

`AttentionConfig` holds the shared `EngineConfig` of the systolic array
instead of adding fields to it, so the matmul engine's configuration stays
untouched. Everything the attention RTL, its cycle model and its driver must
agree on is a field or a derived property here. Impossible combinations are
refused at construction, naming the broken limit.
"""
from dataclasses import dataclass, field

from gpt2accel.model import intmodel as im

from .config import ConfigError, EngineConfig, ceil_div

__all__ = ["AttentionConfig", "LN_EPS_BITS"]

#: LayerNorm's epsilon mantissa width (numerics §6.3): the LAYERNORM instruction's
#: ``eps_m`` field, so the ISA takes it from here and need not import the golden model
LN_EPS_BITS = im.LN_EPS_BITS



@dataclass(frozen=True)
class AttentionConfig:
    #: The systolic array (and memory port) the attention engine shares.
    engine: EngineConfig = field(default_factory=EngineConfig)
    #: Softmax key tile (numerics §4.4 `tile`, model metadata). None = engine.cols.
    tile: int = None
    #: Fractional bits F of the base-2 logits (numerics §4.2, model `frac_bits`).
    frac_bits: int = 6
    #: Scores the softmax unit takes per cycle (and probabilities it emits).
    lanes: int = 1
    #: O elements the normaliser takes per cycle.
    norm_lanes: int = 1
    #: Largest head dimension D (sizes the accumulator buffer rows).
    max_d_head: int = 64
    #: Largest sequence length T (sizes query/key position fields).
    max_seq: int = 1024
    #: Queries per attention block (one matmul command covers block_rows /
    #: engine.rows row blocks, amortising its fixed cost). None = engine.rows.
    block_rows: int = None

    def __post_init__(self):
        if not isinstance(self.engine, EngineConfig):
            raise ConfigError(f"engine must be an EngineConfig, got {self.engine!r}")
        if self.tile is None:
            object.__setattr__(self, "tile", self.engine.cols)
        if self.block_rows is None:
            object.__setattr__(self, "block_rows", self.engine.rows)
        for name in ("tile", "frac_bits", "lanes", "norm_lanes", "max_d_head", "max_seq",
                     "block_rows"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool):
                raise ConfigError(f"{name} must be an int, got {v!r}")
        self._check("tile", 1, 1024)
        self._check("frac_bits", 1, 10, "the exp2 table has 2^frac_bits entries")
        self._check("lanes", 1, self.tile, "a beat never spans two rows")
        self._check("norm_lanes", 1, self.max_d_head)
        self._check("max_d_head", 1, 256)
        self._check("max_seq", 1, 1 << 16)
        self._check("block_rows", 1, 1024)
        if self.block_rows % self.engine.rows:
            raise ConfigError(f"block_rows={self.block_rows} must be a multiple of "
                              f"engine rows={self.engine.rows}")
        # numerics §4.4: O fits 32 bits while T < 65 793, L < 2^32 always here.

    def _check(self, name, lo, hi, why=""):
        v = getattr(self, name)
        if not lo <= v <= hi:
            raise ConfigError(f"{name}={v} is outside the supported range {lo}..{hi}"
                              + (f" ({why})" if why else ""))

    @property
    def rows(self):
        """Query rows per attention block (`block_rows`, a multiple of the array rows)."""
        return self.block_rows

    @property
    def beats_per_row(self):
        """Softmax input/output beats per tile row: ceil(tile / lanes)."""
        return ceil_div(self.tile, self.lanes)

    @property
    def pos_bits(self):
        """Width of query/key positions (0 .. max_seq - 1)."""
        return max(1, (self.max_seq - 1).bit_length())

    @property
    def m_bits(self):
        """Signed width of the integer running max M = ceil(t / 2^F), |M| <= 2^(23-F)."""
        return im.SCORE_BITS - self.frac_bits + 1

    # --- the attention engine's memory layout (shared with the driver and cycle model)

    def check_engine(self):
        """Raise ConfigError unless the attention controller can be built on `engine`.

        The controller reads raw int32 rows word by word and writes P / output
        bytes `lanes` / `norm_lanes` at a time, so words must hold whole int32
        (mem_bytes % 4 == 0), a beat must never straddle a word (lanes and
        norm_lanes divide mem_bytes / 4), and raw row segments must tile the
        words exactly (4*cols a multiple of mem_bytes or vice versa).
        """
        e = self.engine
        mb, c = e.mem_bytes, e.cols
        if mb % 4:
            raise ConfigError(f"mem_bytes={mb} must be a multiple of 4 (whole int32 per word)")
        if (4 * c) % mb and mb % (4 * c):
            raise ConfigError(f"4*cols={4 * c} and mem_bytes={mb} must divide one another "
                              "so that raw rows are contiguous int32")
        if (mb // 4) % self.lanes:
            raise ConfigError(f"lanes={self.lanes} must divide mem_bytes/4={mb // 4}")
        if (mb // 4) % self.norm_lanes:
            raise ConfigError(f"norm_lanes={self.norm_lanes} must divide mem_bytes/4={mb // 4}")
        if e.max_k < max(self.tile, self.max_d_head):
            raise ConfigError(f"engine max_k={e.max_k} is below tile={self.tile} "
                              f"or max_d_head={self.max_d_head}")
        if self.max_d_head % self.norm_lanes:
            raise ConfigError(f"norm_lanes={self.norm_lanes} must divide max_d_head")
        if e.max_m < self.block_rows:
            raise ConfigError(f"engine max_m={e.max_m} is below block_rows={self.block_rows}")

    @property
    def scores_per_word(self):
        """int32 values in one memory word."""
        return self.engine.mem_bytes // 4

    @property
    def s_words(self):
        """Words of one S row that hold the tile's scores: ceil(tile / scores_per_word)."""
        return ceil_div(self.tile, self.scores_per_word)

    @property
    def s_stride(self):
        """Word stride of S rows (the matmul engine's raw rows of `tile` int32)."""
        return self.engine.out_row_words(self.tile, True)

    @property
    def s_chunk(self):
        """Key tiles one S command may cover for a block of one query (decode): its
        scores then fill consecutive S rows, tile i of the command in row i of the
        half, so a long context needs one S command per `s_chunk` tiles rather than
        per tile. 1 where that cannot be: a key tile not whole column tiles, raw
        row segments of several tiles per word that a tile does not fill, a
        non-power-of-two k_per_word (the tile's W words would need a divider), or
        an N limit below two tiles."""
        e = self.engine
        per_word = e.out_segment(True)[1]
        g = e.k_per_word
        if self.tile % e.cols or (self.tile // e.cols) % per_word or g & (g - 1):
            return 1
        return max(1, min(self.rows, e.max_n // self.tile))

    @property
    def p_stride(self):
        return self.engine.a_words_per_row(self.tile)

    @property
    def pv_stride(self):
        """Word stride of PV rows: a power of two, so a row is an address's high bits."""
        w = self.engine.out_row_words(self.max_d_head, True)
        return 1 << (w - 1).bit_length()

    @property
    def zero_words(self):
        """Zero parameter words (bias 0) the scratch starts with; read by both matmuls
        (a batched S command's by `s_chunk` tiles' column tiles)."""
        e = self.engine
        return e.param_words_per_tile * ceil_div(max(self.s_chunk * self.tile, self.max_d_head),
                                                 e.cols)

    def scratch_offsets(self):
        """Word offsets from `scratch_base`: zero, p (two P halves), s, pv, end.

        Only `zero` (read) and the P halves (written, then read by the matmul
        engine) are memory. S (two halves) and PV are address ranges the matmul
        engine writes to; the attention engine takes those writes on chip, so
        memory never sees them.
        """
        z = 0
        p = z + self.zero_words
        s = p + 2 * self.rows * self.p_stride
        pv = s + 2 * self.rows * self.s_stride
        return {"zero": z, "p": p, "s": s, "pv": pv, "end": pv + self.rows * self.pv_stride}

    def head_bytes(self, n_head, q_head_bytes):
        """b_h for each head: the byte of its first Q word where head h starts, the
        zero rows in front of its Kᵀ tile (`isa.attention_command_layout`)."""
        mb = self.engine.mem_bytes
        return [h * q_head_bytes % mb for h in range(n_head)]

    def packed_heads(self, n_head, d_head):
        """(q_head_stride, q_head_bytes, K rows per Kᵀ tile) of heads packed in rows as
        c_attn writes them (head h at byte h*d_head): the K tile must hold the
        zero rows in front of the head that starts latest in its word. A single
        head starts on its row's word, so it keeps q_head_bytes 0 (and with it
        the ISA's longer-S-command rule does not apply)."""
        mb = self.engine.mem_bytes
        qhb = d_head % mb if n_head > 1 else 0
        return d_head // mb, qhb, max(self.head_bytes(n_head, qhb)) + d_head

    def k_tile_words(self, d):
        """Words of one key tile of the K cache (Kᵀ in W layout: d rows, tile columns;
        d includes a head's zero rows, `packed_heads`)."""
        e = self.engine
        return ceil_div(self.tile, e.cols) * e.w_words_per_tile(d)

    def v_tile_words(self, d):
        """Words of one key tile of the V cache (W layout: tile rows, d columns)."""
        e = self.engine
        return ceil_div(d, e.cols) * e.w_words_per_tile(self.tile)
