// Serial-line harness around the Verilated board top (boards/top.py `BoardTop`).
//
// sim/host/board_sim.py builds it with sim/fast/build.py's `build_design`. The
// board is seen only through its UART pins, as a host on the other end of
// the cable sees it: the host queues line symbols that this file shifts onto
// `rx` at the bit rate, and it decodes whatever the board drives on `tx` into
// bytes. Python makes one call per "run until n bytes arrived or the cycle
// budget is spent", never one per clock edge.
//
// Line symbols are 10-bit patterns sent LSB first, one bit per `divisor`
// clock cycles (divisor = clk_hz / baud, fixed when the board was built): a
// byte b is start 0, b's bits LSB first, stop 1 = (1 << 9) | (b << 1); a
// zero stop bit makes a framing error; 0x3FF is ten bit times of idle line.
//
// The decoder of `tx` is a UART receiver sampling mid-bit: a falling edge
// starts a byte, the start bit is re-checked half a bit later, the eight data
// bits and the stop bit are sampled one bit time apart. A low stop bit counts
// a framing error and the byte is dropped; the decoder then waits for the
// line to return high.
//
// Build-time constants (-D from build.py): MODEL_HEADER, MODEL_CLASS (the
// Verilated top), GX_TRACE (unused: this harness writes no waveforms).
#include <cstdint>
#include <cstring>
#include <deque>
#include <new>

#include "common.h"

namespace {

constexpr int SYMBOL_BITS = 10;

struct Board {
    VerilatedContext ctx;
    MODEL_CLASS* top = nullptr;
    int divisor = 1;
    uint64_t cycles = 0;

    // host -> board: the symbol being shifted out and where in it we are
    std::deque<uint16_t> queue;
    bool sending = false;
    uint16_t symbol = 0;
    int bit = 0, bit_cycles = 0;

    // board -> host: the receiver's state
    enum { IDLE, START, DATA, STOP, WAIT_HIGH } state = IDLE;
    int count = 0, nbits = 0;
    uint8_t shift = 0;
    std::deque<uint8_t> received;
    uint64_t framing_errors = 0;

    // The board's status outputs as last sampled.
    bool busy = false, error = false;

    bool rx_level() {
        if (!sending && !queue.empty()) {
            symbol = queue.front();
            queue.pop_front();
            sending = true;
            bit = bit_cycles = 0;
        }
        return sending ? (symbol >> bit) & 1 : true;
    }

    void advance_sender() {
        if (!sending) return;
        if (++bit_cycles == divisor) {
            bit_cycles = 0;
            if (++bit == SYMBOL_BITS) sending = false;
        }
    }

    void receive(bool tx) {
        switch (state) {
        case IDLE:
            if (!tx) {
                state = START;
                count = 0;
            }
            break;
        case START:                       // half a bit in: still low, or a glitch
            if (++count >= divisor / 2) {
                state = tx ? IDLE : DATA;
                count = nbits = 0;
                shift = 0;
            }
            break;
        case DATA:
            if (++count == divisor) {
                count = 0;
                shift |= static_cast<uint8_t>(tx) << nbits;
                if (++nbits == 8) state = STOP;
            }
            break;
        case STOP:
            if (++count == divisor) {
                count = 0;
                if (tx) {
                    received.push_back(shift);
                    state = IDLE;
                } else {
                    ++framing_errors;
                    state = WAIT_HIGH;
                }
            }
            break;
        case WAIT_HIGH:
            if (tx) state = IDLE;
            break;
        }
    }

    // One clock cycle: drive rx, settle, sample tx, rising edge.
    void step() {
        top->rx = rx_level();
        top->clk = 0;
        top->eval();
        receive(top->tx);
        busy = top->busy;
        error = top->error;
        top->clk = 1;
        top->eval();
        advance_sender();
        ++cycles;
    }
};

}  // namespace

extern "C" {

// A board out of reset, its rx line idle; `divisor` clock cycles per bit.
// NULL if divisor < 2 (the receiver samples half a bit after an edge).
void* bx_create(int divisor) {
    if (divisor < 2) return nullptr;
    Board* b = new (std::nothrow) Board();
    if (!b) return nullptr;
    b->divisor = divisor;
    b->top = new MODEL_CLASS(&b->ctx, "top");
    b->top->rx = 1;        // the idle line is high
    reset_cycle(b->top);
    return b;
}

void bx_destroy(void* h) {
    Board* b = static_cast<Board*>(h);
    if (!b) return;
    b->top->final();
    delete b->top;
    delete b;
}

// Queue `n` line symbols (10 bits each, LSB first) for the board's rx.
void bx_send(void* h, const uint16_t* symbols, uint64_t n) {
    Board* b = static_cast<Board*>(h);
    for (uint64_t i = 0; i < n; ++i) b->queue.push_back(symbols[i] & 0x3FF);
}

// Clock the board until `want` decoded bytes wait to be taken or
// `max_cycles` cycles ran; returns the number of bytes waiting.
uint64_t bx_run(void* h, uint64_t want, uint64_t max_cycles) {
    Board* b = static_cast<Board*>(h);
    for (uint64_t i = 0; i < max_cycles && b->received.size() < want; ++i) b->step();
    return b->received.size();
}

// Take up to `n` decoded bytes; returns how many were taken.
uint64_t bx_recv(void* h, uint8_t* out, uint64_t n) {
    Board* b = static_cast<Board*>(h);
    uint64_t k = 0;
    for (; k < n && !b->received.empty(); ++k) {
        out[k] = b->received.front();
        b->received.pop_front();
    }
    return k;
}

uint64_t bx_cycles(void* h) { return static_cast<Board*>(h)->cycles; }

// Symbols queued or being shifted out.
uint64_t bx_pending(void* h) {
    Board* b = static_cast<Board*>(h);
    return b->queue.size() + (b->sending ? 1 : 0);
}

uint64_t bx_framing_errors(void* h) { return static_cast<Board*>(h)->framing_errors; }

// The board's busy and error outputs (bit 0, bit 1) at the last cycle.
int bx_status(void* h) {
    Board* b = static_cast<Board*>(h);
    return (b->busy ? 1 : 0) | (b->error ? 2 : 0);
}

}  // extern "C"
