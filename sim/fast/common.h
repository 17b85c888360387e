// What the Verilator harnesses (harness.cpp, board_harness.cpp, dram_harness.cpp) share.
//
// sim/fast/build.py writes every header of sim/fast next to the harness it
// compiles and hashes them into the cache key, so a change here rebuilds
// every cached library. Needs MODEL_HEADER and MODEL_CLASS (-D from build.py).
#pragma once

#include <cstdint>

#include "verilated.h"
#include MODEL_HEADER

namespace {

// Port access independent of how wide Verilator made the port: integral
// types up to 64 bits, VlWide<N> (32-bit words) beyond. Bytes are little-endian.
template <typename T>
void port_get(const T& port, uint8_t* out, int nbytes) {
    uint64_t v = static_cast<uint64_t>(port);
    for (int i = 0; i < nbytes && i < 8; ++i) out[i] = static_cast<uint8_t>(v >> (8 * i));
}
template <std::size_t N>
void port_get(const VlWide<N>& port, uint8_t* out, int nbytes) {
    for (int i = 0; i < nbytes; ++i) out[i] = static_cast<uint8_t>(port[i / 4] >> (8 * (i % 4)));
}
template <typename T>
void port_set(T& port, const uint8_t* in, int nbytes) {
    uint64_t v = 0;
    for (int i = 0; i < nbytes && i < 8; ++i) v |= static_cast<uint64_t>(in[i]) << (8 * i);
    port = static_cast<T>(v);
}
template <std::size_t N>
void port_set(VlWide<N>& port, const uint8_t* in, int nbytes) {
    for (std::size_t w = 0; w < N; ++w) {
        uint32_t v = 0;
        for (int b = 0; b < 4; ++b) {
            int i = static_cast<int>(w) * 4 + b;
            if (i < nbytes) v |= static_cast<uint32_t>(in[i]) << (8 * b);
        }
        port[w] = v;
    }
}

// Amaranth's simulator starts from the registers' init values without a
// reset; the Verilog declares the same init values, and one reset cycle
// with every input idle makes sure of them. The caller idles the inputs
// first; the model is left with clk low, ready for the first cycle.
void reset_cycle(MODEL_CLASS* top) {
    top->rst = 1;
    top->clk = 0;
    top->eval();
    top->clk = 1;
    top->eval();
    top->rst = 0;
    top->clk = 0;
    top->eval();
}

}  // namespace
