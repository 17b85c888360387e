// Harness of the Verilated machine on simulated DRAM (sim/fast/dram.py builds it).
//
// The top (`DramTop` in dram.py) is the `Machine`, the `DramAdapter` and a
// LiteDRAM core generated around LiteDRAM's PHY model, so the memory lives in
// the Verilated model itself, in one Verilog memory per DRAM bank. This file
// streams a program into the machine and clocks it until `done`, as harness.cpp
// does (the same feed, without stalls); the memory's timing is the
// controller's: refresh, row opens and closes, bank conflicts, CAS latency.
//
// The host reads and writes memory words through a backdoor: straight into the
// bank memories' storage (made public to C++ by a Verilator comment dram.py
// adds to their declarations), at the bank, row and column the controller maps
// the address to. Nothing goes through the native port, so a 100 MB image loads
// at memcpy speed, and only between programs, when the machine is idle.
//
// Build-time constants (-D from dram.py):
//   MODEL_HEADER, MODEL_CLASS, ROOT_HEADER   the Verilated top and its root
//   MEM_BYTES, INSTR_BITS                    the machine's memory word, instruction
//   NATIVE_BYTES                             bytes per native word (per bank entry)
//   NBANKS, BANK_WORDS, ROW_WORDS            the banks, native words per bank and per row
//   BEATS                                    native writes per machine write
//   BANK_PTRS                                BANK_PTR(i, bank memory) for each bank
//   COUNTER(name)                            a command counter of the core
#include <atomic>
#include <cstdint>
#include <cstring>
#include <new>

#include "common.h"
#include ROOT_HEADER

#define PORT(stream, field) stream##___05F##field

namespace {

constexpr int INSTR_BYTES = (INSTR_BITS + 7) / 8;
// more than any PHY's write latency (command to data in the bank memory)
constexpr int DRAIN_CYCLES = 32;
constexpr uint64_t DRAM_BYTES = uint64_t(NBANKS) * BANK_WORDS * NATIVE_BYTES;

}  // namespace

extern "C" {

// Mirrors `gx_result` in harness.cpp (and _Result in backend.py).
struct gx_result {
    int32_t status;
    int32_t error;
    uint64_t cycles;
    uint64_t icount;
    uint64_t outside_cycles;
    uint64_t sim_cycles;
    uint64_t reads, writes;   // DRAM read and write bursts this call
    uint64_t bad_address;
};

enum { GX_OK = 0, GX_TIMEOUT = 1, GX_EARLY_DONE = 2, GX_UNDRAINED = 3 };
// cycles `drain` waits for the DRAM's write commands before it gives up
constexpr uint64_t DRAIN_LIMIT = 1u << 20;

// The core's command counters, in this order (dram.py's COUNTERS).
enum { C_ACT, C_PRE, C_PREA, C_REF, C_RD, C_WR, C_AP, C_N };

}  // extern "C"

namespace {

struct Sim {
    VerilatedContext ctx;
    MODEL_CLASS* top = nullptr;
    uint8_t* bank[NBANKS] = {};
    uint64_t total_cycles = 0;
    bool s_instr_ready = false, s_done = false;
    uint32_t s_error = 0;
    uint64_t s_cycles = 0, s_icount = 0;
    std::atomic<uint64_t> p_cycles{0}, p_icount{0};
    uint64_t mem_writes = 0;      // writes the adapter accepted from the machine

    void step(bool instr_valid, const uint8_t* instr_word) {
        top->PORT(instr, valid) = instr_valid;
        if (instr_valid) port_set(top->PORT(instr, payload), instr_word, INSTR_BYTES);
        top->clk = 0;
        top->eval();
        s_instr_ready = top->PORT(instr, ready);
        s_done = top->done;
        s_error = top->error;
        s_cycles = top->cycles;
        s_icount = top->icount;
        p_cycles.store(s_cycles, std::memory_order_relaxed);
        p_icount.store(s_icount, std::memory_order_relaxed);
        mem_writes += top->mem_wr;
        top->clk = 1;
        top->eval();
        ++total_cycles;
    }

    // Clocks the idle machine until every write it made is in the bank memories: a
    // write the adapter accepted may still wait in its queue or the controller's when
    // `done` rises, and the host reads the memory through the backdoor. The count of
    // DRAM write commands reaches the machine's writes (times the beats of each) when
    // the last command is issued; its data lands the write latency later.
    // False when the DRAM never sees as many write commands as the machine made
    // writes: a harness bug or a lost write, reported rather than waited on forever.
    bool drain() {
        for (uint64_t i = 0; COUNTER(wr) < mem_writes * BEATS; ++i) {
            if (i == DRAIN_LIMIT) return false;
            step(false, nullptr);
        }
        for (int i = 0; i < DRAIN_CYCLES; ++i) step(false, nullptr);
        return true;
    }

    void counters(uint64_t* out) {
        out[C_ACT] = COUNTER(act);
        out[C_PRE] = COUNTER(pre);
        out[C_PREA] = COUNTER(prea);
        out[C_REF] = COUNTER(ref);
        out[C_RD] = COUNTER(rd);
        out[C_WR] = COUNTER(wr);
        out[C_AP] = COUNTER(ap);
    }

    // Copies `n` bytes between `buf` and the DRAM from byte `pos`: the native words
    // of one bank row are consecutive in that bank's memory, so a row at a time.
    template <bool WRITE>
    void copy(uint64_t pos, uint8_t* buf, uint64_t n) {
        while (n) {
            uint64_t word = pos / NATIVE_BYTES, off = pos % NATIVE_BYTES;
            uint64_t col = word % ROW_WORDS, run = word / ROW_WORDS;
            uint64_t b = run % NBANKS, row = run / NBANKS;
            uint64_t len = (ROW_WORDS - col) * NATIVE_BYTES - off;
            if (len > n) len = n;
            uint8_t* at = bank[b] + (row * ROW_WORDS + col) * NATIVE_BYTES + off;
            if (WRITE) std::memcpy(at, buf, len);
            else std::memcpy(buf, at, len);
            pos += len;
            buf += len;
            n -= len;
        }
    }
};

}  // namespace

extern "C" {

int gx_mem_bytes() { return MEM_BYTES; }
int gx_instr_bytes() { return INSTR_BYTES; }
uint64_t gx_dram_bytes() { return DRAM_BYTES; }

void* gx_create() {
    Sim* s = new (std::nothrow) Sim();
    if (!s) return nullptr;
    s->top = new MODEL_CLASS(&s->ctx, "top");
    auto* root = s->top->rootp;
    // the storage of a VlUnpacked is its elements, each a native word little-endian
#define BANK_PTR(i, mem)                                                              \
    static_assert(sizeof(mem) == uint64_t(BANK_WORDS) * NATIVE_BYTES,                 \
                  "a bank entry is one native word");                                 \
    s->bank[i] = reinterpret_cast<uint8_t*>(&mem[0]);
    BANK_PTRS
#undef BANK_PTR
    reset_cycle(s->top);
    return s;
}

void gx_destroy(void* h) {
    Sim* s = static_cast<Sim*>(h);
    if (!s) return;
    s->top->final();
    delete s->top;
    delete s;
}

uint64_t gx_total_cycles(void* h) { return static_cast<Sim*>(h)->total_cycles; }

uint64_t gx_progress(void* h, uint64_t* cycles) {
    Sim* s = static_cast<Sim*>(h);
    *cycles = s->p_cycles.load(std::memory_order_relaxed);
    return s->p_icount.load(std::memory_order_relaxed);
}

// The core's command counters since creation (C_N of them, see the enum).
void gx_dram_counters(void* h, uint64_t* out) {
    static_cast<Sim*>(h)->counters(out);
}

// Whole machine words in or out through the backdoor; -1 if the range leaves the DRAM.
int gx_write(void* h, uint64_t addr, const uint8_t* src, uint64_t nwords) {
    Sim* s = static_cast<Sim*>(h);
    uint64_t words = DRAM_BYTES / MEM_BYTES;
    if (addr > words || nwords > words - addr) return -1;
    s->copy<true>(addr * MEM_BYTES, const_cast<uint8_t*>(src), nwords * MEM_BYTES);
    return 0;
}

int gx_read(void* h, uint64_t addr, uint8_t* dst, uint64_t nwords) {
    Sim* s = static_cast<Sim*>(h);
    uint64_t words = DRAM_BYTES / MEM_BYTES;
    if (addr > words || nwords > words - addr) return -1;
    s->copy<false>(addr * MEM_BYTES, dst, nwords * MEM_BYTES);
    return 0;
}

// As harness.cpp's gx_run_program without the memory model's stalls: the DRAM's
// timing is the only source of waiting.
int gx_run_program(void* h, const uint8_t* words, uint64_t n, uint64_t max_cycles,
                   gx_result* out) {
    Sim* s = static_cast<Sim*>(h);
    std::memset(out, 0, sizeof *out);
    uint64_t c0 = s->total_cycles, k0[C_N], k1[C_N];
    s->counters(k0);
    uint64_t cycle = 0, start = 0;
    bool started = false;
    int status = GX_OK;
    auto over = [&]() { return started ? cycle - start > max_cycles : cycle > max_cycles; };

    for (uint64_t i = 0; i < n && status == GX_OK; ++i) {
        const uint8_t* w = words + i * INSTR_BYTES;
        while (true) {
            s->step(true, w);
            ++cycle;
            if (s->s_done) { status = GX_EARLY_DONE; break; }
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
        if (over()) status = GX_TIMEOUT;
    }
    if (status == GX_OK && !s->drain()) status = GX_UNDRAINED;
    s->counters(k1);
    out->status = status;
    out->error = static_cast<int32_t>(s->s_error);
    out->cycles = s->s_cycles;
    out->icount = s->s_icount;
    out->outside_cycles = cycle - 1 - start;
    out->sim_cycles = s->total_cycles - c0;
    out->reads = k1[C_RD] - k0[C_RD];
    out->writes = k1[C_WR] - k0[C_WR];
    return status;
}

}  // extern "C"
