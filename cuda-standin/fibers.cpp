// The threads of a CUDA block as cooperative fibers (ucontext), for the CPU stand-in's launches.
// See kernel_host.h for the execution model.

#include "fibers.h"

#include <sys/mman.h>
#include <ucontext.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <vector>

#include "kernel_host.h"

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/common_interface_defs.h>
#define STANDIN_ASAN 1
#else
#define STANDIN_ASAN 0
#endif

namespace standin {

thread_local Coord block_idx, thread_idx, block_dim, grid_dim;

namespace {

// Stack of one fiber; a guard page below it turns an overflow into a crash, not a corruption.
constexpr size_t kStack = 256 * 1024;

enum class State { Ready, Waiting, Done };

struct Fiber {
    ucontext_t ctx;
    void* stack = nullptr;
    Coord tid{};
    unsigned linear = 0;
    State state = State::Ready;
    int scope = 0;
    Op op = Op::None;
    int value = 0;
    bool shuffle = false;
    uint64_t bits = 0;
    int src = 0;
    uint64_t result = 0;
};

struct Block {
    std::vector<Fiber> fibers;
    ucontext_t sched;
    Fiber* current = nullptr;
    const std::function<void()>* body = nullptr;
    // The scheduler's stack, for AddressSanitizer's fiber bookkeeping.
    const void* sched_bottom = nullptr;
    size_t sched_size = 0;
};

thread_local Block* g_block = nullptr;
thread_local std::vector<void*> g_stacks;  // reused between blocks

void* new_stack() {
    const size_t page = (size_t)sysconf(_SC_PAGESIZE);
    void* p = mmap(nullptr, kStack + page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) {
        fprintf(stderr, "cuda stand-in: cannot map a fiber stack\n");
        abort();
    }
    mprotect(p, page, PROT_NONE);
    return (char*)p + page;
}

void switch_to_scheduler(Block* b, bool dying) {
#if STANDIN_ASAN
    void* fake = nullptr;
    __sanitizer_start_switch_fiber(dying ? nullptr : &fake, b->sched_bottom, b->sched_size);
    if (!dying) {
        swapcontext(&b->current->ctx, &b->sched);
        __sanitizer_finish_switch_fiber(fake, nullptr, nullptr);
    }
#else
    if (!dying) swapcontext(&b->current->ctx, &b->sched);
#endif
}

void fiber_main() {
    Block* b = g_block;
#if STANDIN_ASAN
    __sanitizer_finish_switch_fiber(nullptr, &b->sched_bottom, &b->sched_size);
#endif
    (*b->body)();
    b->current->state = State::Done;
    switch_to_scheduler(b, true);
    // returns to b->sched through uc_link
}

void resume(Block* b, Fiber& f) {
    b->current = &f;
    thread_idx = f.tid;
#if STANDIN_ASAN
    void* fake = nullptr;
    __sanitizer_start_switch_fiber(&fake, f.stack, kStack);
    swapcontext(&b->sched, &f.ctx);
    __sanitizer_finish_switch_fiber(fake, nullptr, nullptr);
#else
    swapcontext(&b->sched, &f.ctx);
#endif
}

// Releases the fibers `group` waiting at one barrier: combines their values, sets results.
void release(std::vector<Fiber*>& group, unsigned first_lane) {
    uint64_t acc_or = 0, acc_and = 1, count = 0, ballot = 0;
    for (Fiber* f : group) {
        acc_or |= (uint64_t)(f->value != 0);
        acc_and &= (uint64_t)(f->value != 0);
        count += (uint64_t)(f->value != 0);
        if (f->value) ballot |= 1ull << ((f->linear - first_lane) % 32);
    }
    for (Fiber* f : group) {
        switch (f->op) {
            case Op::Or: f->result = acc_or; break;
            case Op::And: f->result = acc_and; break;
            case Op::Count: f->result = count; break;
            case Op::Ballot: f->result = ballot; break;
            case Op::None: f->result = 0; break;
        }
        if (f->shuffle) {
            f->result = f->bits;
            for (Fiber* s : group)
                if (s->linear == first_lane + (unsigned)f->src) f->result = s->bits;
        }
        f->state = State::Ready;
    }
}

}  // namespace

uint64_t barrier(int scope, Op op, int value) {
    Block* b = g_block;
    Fiber* f = b->current;
    f->state = State::Waiting;
    f->scope = scope;
    f->op = op;
    f->value = value;
    f->shuffle = false;
    switch_to_scheduler(b, false);
    return f->result;
}

uint64_t shuffle(uint64_t bits, int src_lane) {
    Block* b = g_block;
    Fiber* f = b->current;
    f->state = State::Waiting;
    f->scope = 1;
    f->op = Op::None;
    f->value = 0;
    f->shuffle = true;
    f->bits = bits;
    f->src = src_lane;
    switch_to_scheduler(b, false);
    return f->result;
}

std::string run_block(Coord block, Coord dim, const std::function<void()>& body) {
    Block b;
    b.body = &body;
    const unsigned n = dim.x * dim.y * dim.z;
    b.fibers.resize(n);
    Block* outer = g_block;
    g_block = &b;
    block_idx = block;
    block_dim = dim;
    for (unsigned i = 0; i < n; i++) {
        Fiber& f = b.fibers[i];
        f.linear = i;
        f.tid = {i % dim.x, (i / dim.x) % dim.y, i / (dim.x * dim.y)};
    }
    std::string error;
    // Fibers get a stack when they first run and give it back when done, so a barrier-free kernel
    // needs one stack at a time.
    size_t started = 0;
    std::vector<Fiber*> group;
    for (;;) {
        bool ran = false;
        for (unsigned i = 0; i < n; i++) {
            Fiber& f = b.fibers[i];
            if (f.state != State::Ready) continue;
            if (!f.stack) {
                if (g_stacks.empty()) g_stacks.push_back(new_stack());
                f.stack = g_stacks.back();
                g_stacks.pop_back();
                getcontext(&f.ctx);
                f.ctx.uc_stack.ss_sp = f.stack;
                f.ctx.uc_stack.ss_size = kStack;
                f.ctx.uc_link = &b.sched;
                makecontext(&f.ctx, fiber_main, 0);
                started++;
            }
            resume(&b, f);
            ran = true;
            if (f.state == State::Done) {
                g_stacks.push_back(f.stack);
                f.stack = nullptr;
                f.state = State::Done;
            }
        }
        (void)ran;
        bool any_waiting = false;
        for (auto& f : b.fibers) any_waiting |= f.state == State::Waiting;
        if (!any_waiting) break;  // every thread done
        // Warp barriers first: a warp whose live threads all wait at a warp collective goes on.
        bool released = false;
        for (unsigned w = 0; w < (n + 31) / 32; w++) {
            group.clear();
            bool all = true;
            for (unsigned i = w * 32; i < n && i < w * 32 + 32; i++) {
                Fiber& f = b.fibers[i];
                if (f.state == State::Done) continue;
                if (f.state == State::Waiting && f.scope == 1) group.push_back(&f);
                else all = false;
            }
            if (all && !group.empty()) {
                release(group, w * 32);
                released = true;
            }
        }
        if (released) continue;
        // Then the block barrier: every live thread must be waiting at it.
        group.clear();
        bool all = true;
        for (auto& f : b.fibers) {
            if (f.state == State::Done) continue;
            if (f.state == State::Waiting && f.scope == 0) group.push_back(&f);
            else all = false;
        }
        if (all && !group.empty()) {
            release(group, 0);
            continue;
        }
        error = "threads of one block wait at different barriers (a __syncthreads in divergent code)";
        break;
    }
    for (auto& f : b.fibers)
        if (f.stack) g_stacks.push_back(f.stack);  // only after a deadlock: abandoned fibers
    g_block = outer;
    (void)started;
    return error;
}

}  // namespace standin
