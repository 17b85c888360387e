"""No on-chip buffer grows with the sequence length (issue: "no T x T buffer").

The KV cache and the queries live in external memory behind the engine's
port; on chip there are only tile- and block-sized buffers. The test
elaborates the whole AttentionEngine (matmul engine, softmax, normaliser
included) for two `max_seq` values, everything else equal, and compares the
depth and width of every memory in the design hierarchy, by path.
"""
from amaranth.hdl import Fragment, MemoryInstance, Shape
from amaranth.lib.memory import Memory

from gpt2accel.rtl.attention import AttentionEngine
from gpt2accel.rtl.attention_config import AttentionConfig
from gpt2accel.rtl.config import EngineConfig


def _config(max_seq):
    # the benchmarked GPT-2-small shape on an 8x8 array (tile 64, d_head 64)
    e = EngineConfig(rows=8, cols=8)
    return AttentionConfig(engine=e, tile=64, lanes=e.mem_bytes // 4, norm_lanes=2,
                           max_d_head=64, max_seq=max_seq, block_rows=32)


def memories(engine):
    """{hierarchy path: (depth, width in bits)} of every memory in `engine`."""
    found = {}

    def walk(frag, path):
        if isinstance(frag, MemoryInstance):
            data = frag._data   # its MemoryData (no public accessor in Amaranth 0.5)
            found[path] = (data.depth, Shape.cast(data.shape).width)
        for sub, name, *_ in frag.subfragments:
            walk(sub, path + (name or "?",))

    walk(Fragment.get(engine, None), ())
    return found


def differences(cls, small=128, large=1024):
    a = memories(cls(_config(small)))
    b = memories(cls(_config(large)))
    assert a, "no memories found: the hierarchy walk is broken"
    diff = {p: (a.get(p), b.get(p)) for p in sorted(set(a) | set(b)) if a.get(p) != b.get(p)}
    return a, diff


def test_no_memory_grows_with_max_seq():
    mems, diff = differences(AttentionEngine)
    # the walk reaches every level: controller buffers, softmax, normaliser, matmul engine
    for path in [("scores", "sbuf"), ("acc", "obuf"), ("pwriter", "info"),
                 ("softmax", "front", "store"), ("softmax", "back", "rom"),
                 ("norm", "queue", "storage"), ("mm", "a_mem")]:
        assert path in mems, f"memory {path} not found in {sorted(mems)}"
    assert not diff, f"memories that change with max_seq (path: (128, 1024)): {diff}"


class _PlantedEngine(AttentionEngine):
    """A throwaway engine with a (forbidden) memory of max_seq entries."""

    def elaborate(self, platform):
        m = super().elaborate(platform)
        m.submodules.kv_copy = Memory(shape=8, depth=self.cfg.max_seq, init=[])
        return m


def test_check_detects_a_max_seq_sized_memory():
    _, diff = differences(_PlantedEngine)
    assert diff == {("kv_copy",): ((128, 8), (1024, 8))}
