// Transaction-level harness around the Verilated `Machine` (sim/fast/build.py compiles it).
//
// The host gives a whole program (instruction words) and memory contents; this
// file runs the clock in C++ until the program's `done`, so Python makes one
// call per program, never one per clock edge. It mirrors sim/harness/machine.py
// (the Amaranth-simulator harness) cycle for cycle:
//
//  - instruction feed: per word, optional random idle cycles (probability
//    `stall`), then the word is held valid until a cycle samples `ready`;
//    after the HALT word the feed is idle until a cycle samples `done`;
//  - memory: sim/harness/matmul.py's MemoryModel. Each cycle drops rd_req.ready
//    and wr.ready with probability `stall`, presents the oldest due response
//    (once presented it is held until taken), and adds up to `jitter` cycles of
//    latency to a read with probability `stall`. Read data is captured when the
//    request is accepted; responses are in order, each due no earlier than the
//    one before (`last_due`), `latency` cycles after acceptance.
//
// Inputs are set, the model is evaluated with clk low (combinational outputs
// settle), outputs are sampled, then the rising edge is evaluated: the same
// order as Amaranth's `ctx.set(...)` then `await ctx.tick().sample(...)`.
// The random streams are not Python's, so runs with stalls match the
// Amaranth harness in results, not in cycle counts; stall-free runs match in
// both.
//
// Build-time constants (all -D from build.py, derived from the config):
//   MODEL_HEADER, MODEL_CLASS   the Verilated top
//   ADDR_BITS, MEM_BYTES        memory address width, bytes per memory word
//   INSTR_BITS                  instruction word width
//   WR_BITS, WR_ADDR_OFF, WR_DATA_OFF, WR_STRB_OFF   the wr payload layout
//   RDREQ_ADDR_OFF              the rd_req payload layout
//   GX_TRACE                    1 in a --trace build: gx_trace_open writes a VCD
#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <new>

#include "common.h"
#if GX_TRACE
#include "verilated_vcd_c.h"
#endif

// Amaranth names stream ports `instr__valid`, and the memory port's streams
// `mem__rd_req__valid`; Verilator escapes the double underscore in C++ member
// names as `___05F`.
#define PORT(stream, field) stream##___05F##field
#define MEM(stream, field) mem___05F##stream##___05F##field

namespace {

constexpr int INSTR_BYTES = (INSTR_BITS + 7) / 8;
constexpr int WR_BYTES = (WR_BITS + 7) / 8;

// Copies `nbits` bits starting at bit `off` of `src` into `dst` (from bit 0).
void bits_extract(const uint8_t* src, int off, int nbits, uint8_t* dst) {
    std::memset(dst, 0, (nbits + 7) / 8);
    if (off % 8 == 0) {      // the common case: fields on byte boundaries
        std::memcpy(dst, src + off / 8, nbits / 8);
        if (nbits % 8) dst[nbits / 8] = src[off / 8 + nbits / 8] & ((1u << (nbits % 8)) - 1);
        return;
    }
    for (int i = 0; i < nbits; ++i)
        if ((src[(off + i) / 8] >> ((off + i) % 8)) & 1) dst[i / 8] |= 1u << (i % 8);
}

uint64_t bits_u64(const uint8_t* src, int off, int nbits) {
    uint8_t tmp[8];
    bits_extract(src, off, nbits, tmp);
    uint64_t v = 0;
    for (int i = 0; i < (nbits + 7) / 8; ++i) v |= static_cast<uint64_t>(tmp[i]) << (8 * i);
    return v;
}

// splitmix64: small, seedable, and good enough for stall decisions.
struct Rng {
    uint64_t s;
    explicit Rng(uint64_t seed = 0) : s(seed) {}
    uint64_t next() {
        uint64_t z = (s += 0x9E3779B97F4A7C15ull);
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
        return z ^ (z >> 31);
    }
    double uniform() { return (next() >> 11) * (1.0 / 9007199254740992.0); }
    int randint(int lo, int hi) { return lo + static_cast<int>(next() % (hi - lo + 1)); }
};

struct Pending {
    uint64_t due;
    uint8_t data[MEM_BYTES];
};

}  // namespace

extern "C" {

// Outcome of one program; field order is mirrored by ctypes in backend.py.
struct gx_result {
    int32_t status;           // GX_OK, GX_TIMEOUT, GX_EARLY_DONE, GX_BAD_ADDRESS
    int32_t error;            // the machine's `error` at done
    uint64_t cycles;          // the machine's `cycles` counter at done
    uint64_t icount;          // the machine's `icount` at done
    uint64_t outside_cycles;  // first instruction transfer -> done, as seen outside
    uint64_t sim_cycles;      // clock cycles this call ran
    uint64_t reads, writes;   // memory transactions this call
    uint64_t bad_address;     // the out-of-range address (GX_BAD_ADDRESS)
};

enum { GX_OK = 0, GX_TIMEOUT = 1, GX_EARLY_DONE = 2, GX_BAD_ADDRESS = 3 };

}  // extern "C"

namespace {

struct Sim {
    VerilatedContext ctx;
    MODEL_CLASS* top = nullptr;
    uint8_t* mem = nullptr;
    uint64_t words = 0;
    // memory-model state; it persists across programs like the Python model's
    // does across the programs of one run_programs call
    std::deque<Pending> pending;
    bool presenting = false;
    uint64_t mcycle = 0, last_due = 0;
    uint64_t total_cycles = 0;
    Rng mem_rng, feed_rng;
    double stall = 0.0;
    int jitter = 0, latency = 0;
    // what the last edge's sampled outputs were
    bool s_instr_ready = false, s_done = false;
    uint32_t s_error = 0;
    uint64_t s_cycles = 0, s_icount = 0;
    // the same two counters for gx_progress, which reads them from another thread
    // while gx_run_program runs (relaxed: a snapshot for a progress line)
    std::atomic<uint64_t> p_cycles{0}, p_icount{0};
    // set when the machine addressed a word outside the memory
    bool fault = false;
    uint64_t fault_addr = 0;
    uint64_t reads = 0, writes = 0;
#if GX_TRACE
    VerilatedVcdC* vcd = nullptr;
#endif

    // Waveform time: 10 units a cycle, clock low at 0, rising edge at 5.
    void dump(int phase) {
#if GX_TRACE
        if (vcd) vcd->dump(10 * total_cycles + 5 * phase);
#else
        (void)phase;
#endif
    }

    bool chance() { return stall > 0 && mem_rng.uniform() < stall; }

    // One clock cycle: set inputs, settle, sample, rising edge, update the memory.
    void step(bool instr_valid, const uint8_t* instr_word) {
        bool req_ready = !chance();
        bool wr_ready = !chance();
        if (!presenting && !pending.empty() && pending.front().due <= mcycle && !chance()) {
            presenting = true;
            port_set(top->MEM(rd_resp, payload), pending.front().data, MEM_BYTES);
        }
        top->MEM(rd_resp, valid) = presenting;
        top->MEM(rd_req, ready) = req_ready;
        top->MEM(wr, ready) = wr_ready;
        top->PORT(instr, valid) = instr_valid;
        if (instr_valid) port_set(top->PORT(instr, payload), instr_word, INSTR_BYTES);
        top->clk = 0;
        top->eval();
        dump(0);

        bool rq_v = top->MEM(rd_req, valid), rs_r = top->MEM(rd_resp, ready), w_v = top->MEM(wr, valid);
        uint8_t rq_buf[8];
        port_get(top->MEM(rd_req, payload), rq_buf, (RDREQ_ADDR_OFF + ADDR_BITS + 7) / 8);
        uint64_t rq_a = bits_u64(rq_buf, RDREQ_ADDR_OFF, ADDR_BITS);
        uint8_t w_buf[WR_BYTES];
        if (w_v && wr_ready) port_get(top->MEM(wr, payload), w_buf, WR_BYTES);
        s_instr_ready = top->PORT(instr, ready);
        s_done = top->done;
        s_error = top->error;
        s_cycles = top->cycles;
        s_icount = top->icount;
        p_cycles.store(s_cycles, std::memory_order_relaxed);
        p_icount.store(s_icount, std::memory_order_relaxed);

        top->clk = 1;
        top->eval();
        dump(1);

        if (presenting && rs_r) {
            pending.pop_front();
            presenting = false;
        }
        if (rq_v && req_ready) {
            uint64_t due = mcycle + latency;
            if (jitter && chance()) due += mem_rng.randint(1, jitter);
            if (due > last_due) last_due = due;
            pending.emplace_back();
            Pending& p = pending.back();
            p.due = last_due;
            if (rq_a < words) {
                std::memcpy(p.data, mem + rq_a * MEM_BYTES, MEM_BYTES);
            } else {
                std::memset(p.data, 0, MEM_BYTES);
                fault = true;
                fault_addr = rq_a;
            }
            ++reads;
        }
        if (w_v && wr_ready) {
            uint64_t a = bits_u64(w_buf, WR_ADDR_OFF, ADDR_BITS);
            uint8_t data[MEM_BYTES], strb[(MEM_BYTES + 7) / 8];
            bits_extract(w_buf, WR_DATA_OFF, 8 * MEM_BYTES, data);
            bits_extract(w_buf, WR_STRB_OFF, MEM_BYTES, strb);
            if (a < words) {
                uint8_t* dst = mem + a * MEM_BYTES;
                for (int i = 0; i < MEM_BYTES; ++i)
                    if ((strb[i / 8] >> (i % 8)) & 1) dst[i] = data[i];
            } else {
                fault = true;
                fault_addr = a;
            }
            ++writes;
        }
        ++mcycle;
        ++total_cycles;
    }
};

}  // namespace

extern "C" {

int gx_mem_bytes() { return MEM_BYTES; }
int gx_instr_bytes() { return INSTR_BYTES; }

// A machine out of reset with `mem_words` zeroed memory words; NULL if the
// memory cannot be allocated (calloc: untouched pages cost nothing).
void* gx_create(uint64_t mem_words) {
    Sim* s = new (std::nothrow) Sim();
    if (!s) return nullptr;
    s->mem = static_cast<uint8_t*>(std::calloc(mem_words ? mem_words : 1, MEM_BYTES));
    if (!s->mem) {
        delete s;
        return nullptr;
    }
    s->words = mem_words;
#if GX_TRACE
    s->ctx.traceEverOn(true);   // before the model is built, so it has trace hooks
#endif
    s->top = new MODEL_CLASS(&s->ctx, "top");
    reset_cycle(s->top);   // inputs start at 0: every stream idle
    return s;
}

// Start writing a VCD of every following cycle to `path` (replacing an open
// one); -1 if this library was built without tracing.
int gx_trace_open(void* h, const char* path) {
#if GX_TRACE
    Sim* s = static_cast<Sim*>(h);
    if (s->vcd) s->vcd->close();
    else {
        s->vcd = new VerilatedVcdC;
        s->top->trace(s->vcd, 99);
    }
    s->vcd->open(path);
    return 0;
#else
    (void)h;
    (void)path;
    return -1;
#endif
}

void gx_trace_close(void* h) {
#if GX_TRACE
    Sim* s = static_cast<Sim*>(h);
    if (s->vcd) {
        s->vcd->close();
        delete s->vcd;
        s->vcd = nullptr;
    }
#else
    (void)h;
#endif
}

void gx_destroy(void* h) {
    Sim* s = static_cast<Sim*>(h);
    if (!s) return;
    gx_trace_close(h);
    s->top->final();
    delete s->top;
    std::free(s->mem);
    delete s;
}

uint64_t gx_mem_words(void* h) { return static_cast<Sim*>(h)->words; }

// The memory itself (words * MEM_BYTES bytes), for zero-copy views.
uint8_t* gx_mem_ptr(void* h) { return static_cast<Sim*>(h)->mem; }

uint64_t gx_total_cycles(void* h) { return static_cast<Sim*>(h)->total_cycles; }

// The machine's icount (returned) and cycles (into *cycles) as last sampled: safe
// to call from another thread while gx_run_program runs.
uint64_t gx_progress(void* h, uint64_t* cycles) {
    Sim* s = static_cast<Sim*>(h);
    *cycles = s->p_cycles.load(std::memory_order_relaxed);
    return s->p_icount.load(std::memory_order_relaxed);
}

// Copy whole words in or out; -1 if the range leaves the memory.
int gx_write(void* h, uint64_t addr, const uint8_t* src, uint64_t nwords) {
    Sim* s = static_cast<Sim*>(h);
    if (addr > s->words || nwords > s->words - addr) return -1;
    std::memcpy(s->mem + addr * MEM_BYTES, src, nwords * MEM_BYTES);
    return 0;
}

int gx_read(void* h, uint64_t addr, uint8_t* dst, uint64_t nwords) {
    Sim* s = static_cast<Sim*>(h);
    if (addr > s->words || nwords > s->words - addr) return -1;
    std::memcpy(dst, s->mem + addr * MEM_BYTES, nwords * MEM_BYTES);
    return 0;
}

// Stream `n` instruction words (INSTR_BYTES each, little-endian; the last one
// the program's HALT) and run until `done`. `max_cycles` bounds the clock
// cycles from the first instruction's transfer, like machine_sim's timeout.
// Returns the status (also in out->status).
int gx_run_program(void* h, const uint8_t* words, uint64_t n, uint64_t seed, double stall,
                   int jitter, int latency, uint64_t max_cycles, gx_result* out) {
    Sim* s = static_cast<Sim*>(h);
    std::memset(out, 0, sizeof *out);
    // two streams as in machine_sim: the memory's and the feed's
    Rng root(seed);
    s->mem_rng = Rng(root.next());
    s->feed_rng = Rng(root.next());
    s->stall = stall;
    s->jitter = jitter;
    s->latency = latency;
    s->fault = false;
    uint64_t c0 = s->total_cycles, r0 = s->reads, w0 = s->writes;
    uint64_t cycle = 0, start = 0;
    bool started = false;
    int status = GX_OK;
    auto over = [&]() { return started ? cycle - start > max_cycles : cycle > max_cycles; };

    for (uint64_t i = 0; i < n && status == GX_OK; ++i) {
        const uint8_t* w = words + i * INSTR_BYTES;
        while (stall > 0 && s->feed_rng.uniform() < stall) {
            s->step(false, nullptr);
            ++cycle;
        }
        while (true) {
            s->step(true, w);
            ++cycle;
            if (s->s_done) { status = GX_EARLY_DONE; break; }
            if (s->fault) { status = GX_BAD_ADDRESS; break; }
            if (s->s_instr_ready) break;
            if (over()) { status = GX_TIMEOUT; break; }
        }
        if (!started) {
            started = true;
            start = cycle - 1;
        }
    }
    while (status == GX_OK) {
        s->step(false, nullptr);
        ++cycle;
        if (s->s_done) break;
        if (s->fault) status = GX_BAD_ADDRESS;
        else if (over()) status = GX_TIMEOUT;
    }
    out->status = status;
    out->error = static_cast<int32_t>(s->s_error);
    out->cycles = s->s_cycles;
    out->icount = s->s_icount;
    out->outside_cycles = cycle - 1 - start;
    out->sim_cycles = s->total_cycles - c0;
    out->reads = s->reads - r0;
    out->writes = s->writes - w0;
    out->bad_address = s->fault_addr;
    return status;
}

}  // extern "C"
