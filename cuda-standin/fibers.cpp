// The threads of a CUDA block as cooperative fibers, for the CPU stand-in's launches.
// See kernel_host.h for the execution model.

#include "fibers.h"

#include <sys/mman.h>
#include <ucontext.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <deque>
#include <vector>

#include "kernel_host.h"

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/common_interface_defs.h>
#define STANDIN_ASAN 1
#else
#define STANDIN_ASAN 0
#endif

// Context switch. On x86-64 a few instructions (callee-saved registers, MXCSR and the x87
// control word, stack pointer): no signal-mask system call as with swapcontext, and no
// AddressSanitizer swapcontext interceptor, which clears the whole target stack's shadow on every
// switch. The fiber annotations below keep ASan informed. Elsewhere: ucontext.
#if defined(__x86_64__)
extern "C" void standin_switch(void** save_sp, void* load_sp);
asm(R"(
    .text
    .globl standin_switch
    .type standin_switch, @function
standin_switch:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    subq $8, %rsp
    stmxcsr (%rsp)
    fnstcw 4(%rsp)
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    ldmxcsr (%rsp)
    fldcw 4(%rsp)
    addq $8, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
    .size standin_switch, .-standin_switch
)");
#endif

namespace standin {

thread_local Coord block_idx, thread_idx, block_dim, grid_dim;

namespace {

struct Ctx {
#if defined(__x86_64__)
    void* sp = nullptr;
#else
    ucontext_t uc;
#endif
};

// Prepares `c` to run `entry` (which must never return) on [stack, stack + size).
void ctx_init(Ctx& c, void* stack, size_t size, void (*entry)()) {
#if defined(__x86_64__)
    uintptr_t* sp = reinterpret_cast<uintptr_t*>(static_cast<char*>(stack) + size);
    *--sp = 0;                                   // `entry`'s return address: it never returns
    *--sp = reinterpret_cast<uintptr_t>(entry);  // standin_switch's `ret` goes there
    for (int i = 0; i < 6; i++) *--sp = 0;       // rbp rbx r12 r13 r14 r15
    *--sp = 0x1F80ull | (0x037Full << 32);       // default MXCSR, x87 control word
    c.sp = sp;
#else
    getcontext(&c.uc);
    c.uc.uc_stack.ss_sp = stack;
    c.uc.uc_stack.ss_size = size;
    c.uc.uc_link = nullptr;
    makecontext(&c.uc, entry, 0);
#endif
}

void ctx_switch(Ctx& from, Ctx& to) {
#if defined(__x86_64__)
    standin_switch(&from.sp, to.sp);
#else
    swapcontext(&from.uc, &to.uc);
#endif
}

// Stack of one fiber; a guard page below it turns an overflow into a crash, not a corruption.
constexpr size_t kStack = 256 * 1024;

enum class State { Ready, Waiting, Done };

// One CUDA thread of the block: its coordinates and, while it waits, what it waits at.
struct Thread {
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

// A fiber runs threads one after the other until one of them waits at a barrier; the scheduler
// then starts another fiber for the next threads. A barrier-free kernel thus runs a whole block
// on one fiber (two context switches), and a block-wide barrier costs one fiber per thread.
struct Fiber {
    Ctx ctx;
    void* stack = nullptr;
    Thread* thread = nullptr;
    bool finished = false;
};

struct Block {
    std::vector<Thread> threads;
    std::deque<Fiber> fibers;  // stable addresses
    unsigned next = 0;         // the next thread not yet started
    Ctx sched;
    Fiber* current = nullptr;
    const std::function<void()>* body = nullptr;
    // The scheduler's stack, for AddressSanitizer's fiber bookkeeping.
    const void* sched_bottom = nullptr;
    size_t sched_size = 0;
};

thread_local Block* g_block = nullptr;
thread_local std::vector<void*> g_stacks;  // reused between blocks and launches

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

// From the running fiber back to the scheduler; `dying`: the fiber will never run again.
void switch_to_scheduler(Block* b, bool dying) {
#if STANDIN_ASAN
    void* fake = nullptr;
    __sanitizer_start_switch_fiber(dying ? nullptr : &fake, b->sched_bottom, b->sched_size);
    ctx_switch(b->current->ctx, b->sched);
    __sanitizer_finish_switch_fiber(fake, nullptr, nullptr);
#else
    ctx_switch(b->current->ctx, b->sched);
#endif
}

void fiber_main() {
    Block* b = g_block;
#if STANDIN_ASAN
    __sanitizer_finish_switch_fiber(nullptr, &b->sched_bottom, &b->sched_size);
#endif
    Fiber* f = b->current;
    while (b->next < b->threads.size()) {
        Thread& t = b->threads[b->next++];
        f->thread = &t;
        thread_idx = t.tid;
        (*b->body)();
        t.state = State::Done;
    }
    f->finished = true;
    switch_to_scheduler(b, true);
    abort();  // a finished fiber is never resumed
}

void resume(Block* b, Fiber& f) {
    b->current = &f;
    if (f.thread) thread_idx = f.thread->tid;
#if STANDIN_ASAN
    void* fake = nullptr;
    __sanitizer_start_switch_fiber(&fake, f.stack, kStack);
    ctx_switch(b->sched, f.ctx);
    __sanitizer_finish_switch_fiber(fake, nullptr, nullptr);
#else
    ctx_switch(b->sched, f.ctx);
#endif
    if (f.finished && f.stack) {
        g_stacks.push_back(f.stack);
        f.stack = nullptr;
    }
}

// Releases the threads `group` waiting at one barrier: combines their values, sets results.
void release(std::vector<Thread*>& group, unsigned first_lane) {
    uint64_t acc_or = 0, acc_and = 1, count = 0, ballot = 0;
    for (Thread* t : group) {
        acc_or |= (uint64_t)(t->value != 0);
        acc_and &= (uint64_t)(t->value != 0);
        count += (uint64_t)(t->value != 0);
        if (t->value) ballot |= 1ull << ((t->linear - first_lane) % 32);
    }
    for (Thread* t : group) {
        switch (t->op) {
            case Op::Or: t->result = acc_or; break;
            case Op::And: t->result = acc_and; break;
            case Op::Count: t->result = count; break;
            case Op::Ballot: t->result = ballot; break;
            case Op::None: t->result = 0; break;
        }
        if (t->shuffle) {
            t->result = t->bits;
            for (Thread* s : group)
                if (s->linear == first_lane + (unsigned)t->src) t->result = s->bits;
        }
        t->state = State::Ready;
    }
}

uint64_t wait_at(Op op, int scope, int value, bool shuffle, uint64_t bits, int src) {
    Block* b = g_block;
    Thread* t = b->current->thread;
    t->state = State::Waiting;
    t->scope = scope;
    t->op = op;
    t->value = value;
    t->shuffle = shuffle;
    t->bits = bits;
    t->src = src;
    switch_to_scheduler(b, false);
    return t->result;
}

}  // namespace

uint64_t barrier(int scope, Op op, int value) { return wait_at(op, scope, value, false, 0, 0); }

uint64_t shuffle(uint64_t bits, int src_lane) { return wait_at(Op::None, 1, 0, true, bits, src_lane); }

std::string run_block(Coord block, Coord dim, const std::function<void()>& body) {
    Block b;
    b.body = &body;
    const unsigned n = dim.x * dim.y * dim.z;
    b.threads.resize(n);
    Block* outer = g_block;
    g_block = &b;
    block_idx = block;
    block_dim = dim;
    for (unsigned i = 0; i < n; i++) {
        b.threads[i].linear = i;
        b.threads[i].tid = {i % dim.x, (i / dim.x) % dim.y, i / (dim.x * dim.y)};
    }
    std::string error;
    std::vector<Thread*> group;
    for (;;) {
        // 1. Threads released from a barrier go on, on their fibers.
        bool ran = false;
        for (Fiber& f : b.fibers) {
            if (!f.finished && f.thread && f.thread->state == State::Ready) {
                resume(&b, f);
                ran = true;
            }
        }
        if (ran) continue;
        // 2. Threads not started yet: a fresh fiber runs them until one waits.
        if (b.next < n) {
            b.fibers.emplace_back();
            Fiber& f = b.fibers.back();
            if (g_stacks.empty()) g_stacks.push_back(new_stack());
            f.stack = g_stacks.back();
            g_stacks.pop_back();
            ctx_init(f.ctx, f.stack, kStack, fiber_main);
            resume(&b, f);
            continue;
        }
        // 3. Every thread waits at a barrier or is done.
        bool any_waiting = false;
        for (auto& t : b.threads) any_waiting |= t.state == State::Waiting;
        if (!any_waiting) break;
        // Warp collectives first: a warp whose live threads all wait at one goes on.
        bool released = false;
        for (unsigned w = 0; w < (n + 31) / 32; w++) {
            group.clear();
            bool all = true;
            for (unsigned i = w * 32; i < n && i < w * 32 + 32; i++) {
                Thread& t = b.threads[i];
                if (t.state == State::Done) continue;
                if (t.state == State::Waiting && t.scope == 1) group.push_back(&t);
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
        for (auto& t : b.threads) {
            if (t.state == State::Done) continue;
            if (t.state == State::Waiting && t.scope == 0) group.push_back(&t);
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
    return error;
}

}  // namespace standin
