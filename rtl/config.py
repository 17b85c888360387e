"""The engine configuration: one frozen object shared by RTL, cycle model and driver.

Every quantity that the hardware, the cycle model (`gpt2accel.sim.cycles.matmul`)
and the future compiler must agree on is either a field here or a method
derived from the fields, so they cannot drift apart. Impossible
configurations are refused at construction, naming the broken limit.
"""
from contextlib import contextmanager
from dataclasses import dataclass

__all__ = ["EngineConfig", "ConfigError", "refusing", "ceil_div"]


class ConfigError(ValueError):
    """An engine configuration that the hardware cannot implement."""


@contextmanager
def refusing(component):
    """Run a component constructor's checks: if one raises, the half-built component
    will never be elaborated, so Amaranth's "created but never used" warning is silenced."""
    try:
        yield
    except Exception:
        component._MustUse__silence = True
        raise


def ceil_div(a, b):
    """⌈a / b⌉ for integers (b > 0): the one rounding-up division of the project."""
    return -(-a // b)


@dataclass(frozen=True)
class EngineConfig:
    #: Processing-element grid height: output rows computed per tile (rows of A).
    rows: int = 8
    #: Processing-element grid width: output columns per tile (columns of W).
    cols: int = 8
    #: Width of A elements. Signed mode sign-extends, unsigned mode zero-extends
    #: to a_bits+1, so each PE multiplies (a_bits+1) x w_bits signed (9x8 fits an 18x18 DSP).
    a_bits: int = 8
    #: Width of W elements (signed).
    w_bits: int = 8
    #: Accumulator width; accumulation wraps at this width (two's complement).
    acc_bits: int = 32
    #: Requantiser multiplier width (unsigned) and largest right shift.
    mult_bits: int = 15
    max_shift: int = 47
    #: Requantised output width (signed, saturating).
    out_bits: int = 8
    #: Memory word width in bytes. Must be a multiple of `cols`, at least 2*cols
    #: (the W stream takes cols bytes/cycle; the rest carries A and parameters).
    #: None picks 2*cols.
    mem_bytes: int = None
    #: Word-address width of the memory port and of every base/stride field.
    addr_bits: int = 24
    #: Largest K: depth of the A scratchpad (one resident row block of rows x max_k).
    max_k: int = 3072
    #: Largest M and N a command can carry (sizes the command fields).
    max_m: int = 4096
    max_n: int = 65535
    #: Read requests in flight; must exceed the memory latency for full bandwidth.
    max_outstanding: int = 8
    #: Depth (memory words) of the W operand FIFO.
    w_fifo_depth: int = 16
    #: Tiles whose requantiser parameters may be buffered (issue run-ahead limit).
    param_fifo_tiles: int = 8
    #: Output buffer depth in tiles (of `rows` rows each) between drain and writer.
    out_fifo_tiles: int = 4

    def __post_init__(self):
        if self.mem_bytes is None:
            object.__setattr__(self, "mem_bytes", 2 * self.cols)
        for name in self._MATMUL_INT_FIELDS:
            if not isinstance(getattr(self, name), int) or isinstance(getattr(self, name), bool):
                raise ConfigError(f"{name} must be an int, got {getattr(self, name)!r}")
        self._check("rows", 1, 64)
        self._check("cols", 1, 64)
        self._check("a_bits", 2, 17, "A+1 bits must fit an 18-bit DSP port")
        self._check("w_bits", 2, 18, "W must fit an 18-bit DSP port")
        self._check("acc_bits", self.a_bits + self.w_bits + 1, 32,
                    "raw outputs and biases are int32 words")
        self._check("mult_bits", 1, 16, "mult occupies bits 0..15 of a parameter word")
        self._check("max_shift", 0, 63)
        self._check("out_bits", 2, self.acc_bits)
        self._check("addr_bits", 8, 48)
        self._check("max_k", 1, 1 << 16)
        self._check("max_m", 1, 1 << 24)
        self._check("max_n", 1, 1 << 24)
        self._check("mem_bytes", 2 * self.cols, 256,
                    "the W stream needs cols bytes/cycle plus headroom for A and parameters")
        if self.mem_bytes % self.cols:
            raise ConfigError(f"mem_bytes={self.mem_bytes} must be a multiple of cols={self.cols} "
                              "so that W column tiles and output row segments align to words")
        self._check("max_outstanding", 2, 64)
        self._check("w_fifo_depth", 4, 1024)
        self._check("param_fifo_tiles", 4, 64)
        self._check("out_fifo_tiles", 2, 16)

    #: Fields of the matmul engine checked here (other engines check their own).
    _MATMUL_INT_FIELDS = ("rows", "cols", "a_bits", "w_bits", "acc_bits", "mult_bits",
                          "max_shift", "out_bits", "mem_bytes", "addr_bits", "max_k",
                          "max_m", "max_n", "max_outstanding", "w_fifo_depth",
                          "param_fifo_tiles", "out_fifo_tiles")

    def _check(self, name, lo, hi, why=""):
        v = getattr(self, name)
        if not lo <= v <= hi:
            raise ConfigError(f"{name}={v} is outside the supported range {lo}..{hi}"
                              + (f" ({why})" if why else ""))

    # --- memory layout (shared with the compiler) -------------------------------

    @property
    def k_per_word(self):
        """K steps of one W column tile packed in one memory word (cols bytes each)."""
        return self.mem_bytes // self.cols

    @property
    def gemv_rows(self):
        """Rows of A a command may have to run in full-port GEMV mode (0: never).

        With few rows of A (decode) one array row per A row would use one
        `cols`-byte k-step of each `mem_bytes`-byte W word per cycle. The
        engine then folds the array into `k_per_word` groups of this many
        rows: group g takes k-steps ≡ g (mod k_per_word), i.e. byte lane g of
        every W word, so a whole word enters the array per cycle, and the
        groups' partial sums are added as the tile drains. Rows past
        ``k_per_word * gemv_rows`` idle.
        """
        return self.rows // self.k_per_word

    def gemv(self, m):
        """Whether an M-row command runs in GEMV mode (the engine decides it from M alone)."""
        return 1 <= m <= self.gemv_rows

    def a_words_per_row(self, k):
        """Words of one A row (row-major, K bytes, padded to a word boundary)."""
        return ceil_div(k, self.mem_bytes)

    def w_words_per_tile(self, k):
        """Words of one W column tile: k rows of cols bytes, k_per_word rows per word."""
        return ceil_div(k, self.k_per_word)

    @property
    def param_bytes_per_tile(self):
        """cols int32 biases, then cols uint32 {mult[0:15], shift[16:22]}."""
        return 8 * self.cols

    @property
    def param_words_per_tile(self):
        return ceil_div(self.param_bytes_per_tile, self.mem_bytes)

    def param_words(self, raw):
        """Parameter words a tile reads: a raw output needs the biases alone, which
        come first (the last of them may carry the first multipliers)."""
        return ceil_div(4 * self.cols, self.mem_bytes) if raw else self.param_words_per_tile

    def out_segment(self, raw):
        """(bytes, tiles_per_word, words_per_tile) of one output row segment.

        A row segment is the `cols` outputs one tile produces for one row:
        int8 (cols bytes) or, with ``raw``, int32 little-endian (4*cols bytes).
        Segments of column tile nt of a row sit at word ``nt // tiles_per_word``
        byte lane ``(nt % tiles_per_word) * bytes`` when they fit a word, else at
        words ``nt*words_per_tile ...`` .
        """
        seg = (4 if raw else 1) * self.cols
        if seg <= self.mem_bytes:
            return seg, self.mem_bytes // seg, 1
        return seg, 1, ceil_div(seg, self.mem_bytes)

    def out_row_words(self, n, raw):
        """Minimum output row stride (words) for an N-column result."""
        seg, per_word, words = self.out_segment(raw)
        tiles = ceil_div(n, self.cols)
        return ceil_div(tiles, per_word) * words

    # --- timing constants used by both RTL and cycle model ----------------------

    #: Cycles from a feeder beat's scratchpad read to the array input (F0 -> F2).
    FEED_LATENCY = 2
    #: Requantiser pipeline depth.
    REQUANT_LATENCY = 6
    #: Requantiser depth for a raw output row (the bias add alone).
    REQUANT_RAW_LATENCY = 1

    def requant_latency(self, raw):
        return self.REQUANT_RAW_LATENCY if raw else self.REQUANT_LATENCY

    #: PEs whose multipliers one operand register drives (`SystolicArray.SPAN`): an A
    #: register a run of columns, a W register a run of rows of a row group.
    BROADCAST = 8

    @property
    def _bottom_skew(self):
        """`SystolicArray.bottom_skew`: the bottom row's skew, the runs of `BROADCAST`
        rows above it within its row group (the array has k_per_word row groups
        when the engine has a GEMV mode)."""
        local = self.rows - 1 - (self.k_per_word - 1) * self.gemv_rows if self.gemv_rows \
            else self.rows - 1
        return local // self.BROADCAST

    @property
    def drain_latency(self):
        """Array input of a tile's last beat -> its first drained row (aligned, registered)."""
        return self._bottom_skew + (self.cols - 1) // self.BROADCAST + 3

    @property
    def gemv_drain_latency(self):
        """`drain_latency` in GEMV mode: the sum of the k_per_word groups' rows has a
        register between its adder levels."""
        levels = (self.k_per_word - 1).bit_length()
        return self.drain_latency + max(levels - 1, 0)

    @property
    def gemv_spacing(self):
        """Smallest spacing of GEMV-mode tiles' last beats (`SystolicArray.fold_spacing`):
        a row shifts only within its group, so the drain frees a row of the first
        group rows - (k_per_word - 1) * gemv_rows + 1 cycles after the last capture,
        and the rows of a group capture up to the bottom row's skew apart."""
        return self.rows - (self.k_per_word - 1) * self.gemv_rows + 1 + self._bottom_skew

    @property
    def interleave_min_k(self):
        """Shortest K for which the next row block's A words are slotted between
        W words: each tile then carries its W words, half as many A words and
        its parameter words with room to spare, so the feeder never starves."""
        return 8 * (self.param_words_per_tile + 4)

    def interleave(self, m, k, n):
        """Whether row blocks after the second load their A while the previous
        block computes (the engine decides this from block 0's word count)."""
        w_words = ceil_div(n, self.cols) * self.w_words_per_tile(k)
        return (k >= self.interleave_min_k
                and w_words >= self.w_fifo_depth + 8 + 2 * self.rows * self.a_words_per_row(k))

    def write_beats_per_row(self, raw):
        return self.out_segment(raw)[2]

    def min_tile_period(self, raw):
        """Smallest spacing (cycles) between the first beats of consecutive tiles.

        A tile shorter than this is padded with bubbles, because (1) a column
        drains its `rows` shadow registers one per cycle, (2) the writer needs
        rows*beats cycles per tile, (3) the output buffer must never hold more
        than `out_fifo_tiles` tiles when nothing stalls, and (4) the read port
        must deliver each tile's parameter words on top of its W words.
        """
        r, c = self.rows, self.cols
        wb = r * self.write_beats_per_row(raw)
        return max(r, wb + 2,
                   ceil_div(r + c + wb + 14, self.out_fifo_tiles - 1),
                   2 * self.param_words_per_tile + 8)

    def gemv_min_tile_period(self, raw, m=None):
        """`min_tile_period` of a GEMV-mode command of `m` rows (None: the most,
        `gemv_rows`).

        Only the `m` rows that are written enter the output buffer (the
        requantiser drops the others), so a tile takes m*beats writer cycles,
        which sets (2), and m of its entries, so it holds ``out_fifo_tiles *
        rows // m`` tiles, which sets (3); a folded column drains
        `gemv_rows` rows, within groups, which sets (1) to `gemv_spacing`; (4)
        does not apply, because the issuer itself spaces the tiles' words (at
        least their parameter and W words apart, `sim/cycles/matmul.py`).
        """
        r, c = self.rows, self.cols
        g = self.gemv_rows if m is None else m
        wb = g * self.write_beats_per_row(raw)
        tiles = self.out_fifo_tiles * r // g
        return max(self.gemv_spacing, wb + 2, ceil_div(r + c + wb + 14, tiles - 1))

    def tile_period(self, k, raw):
        return max(k, self.min_tile_period(raw))
