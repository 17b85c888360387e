// What the Verilator harnesses (harness.cpp, board_harness.cpp) share.
//
// sim/fast/build.py writes every header of sim/fast next to the harness it
// compiles and hashes them into the cache key, so a change here rebuilds
// every cached library. Needs MODEL_HEADER and MODEL_CLASS (-D from build.py).
#pragma once

#include "verilated.h"
#include MODEL_HEADER

namespace {

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
