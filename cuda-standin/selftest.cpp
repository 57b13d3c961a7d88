// Self-test of the stand-in's execution model (fibers.cpp + kernel_host.h), run by build.sh:
// kernels written as for a GPU — shared memory with __syncthreads, warp shuffles, block votes —
// must give what the hardware gives. Exits non-zero on a mismatch.

#include <cstdio>
#include <vector>

#include "fibers.h"
#include "kernel_host.h"

// Block sum: per-warp shuffle reduction, then warp 0 reduces the warp sums from shared memory.
__global__ void block_sum(const float* x, float* out, unsigned n) {
    __shared__ float warp_sums[32];
    const unsigned i = blockIdx.x * blockDim.x + threadIdx.x;
    float v = i < n ? x[i] : 0.f;
    for (int d = 16; d > 0; d /= 2) v += __shfl_down_sync(0xffffffffu, v, d);
    if (threadIdx.x % 32 == 0) warp_sums[threadIdx.x / 32] = v;
    __syncthreads();
    if (threadIdx.x < 32) {
        v = threadIdx.x < blockDim.x / 32 ? warp_sums[threadIdx.x] : 0.f;
        for (int d = 16; d > 0; d /= 2) v += __shfl_xor_sync(0xffffffffu, v, d);
        if (threadIdx.x == 0) out[blockIdx.x] = v;
    }
}

// Reverse within a block through shared memory (wrong without a working barrier).
__global__ void reverse(int* x) {
    __shared__ int s[256];
    s[threadIdx.x] = x[blockIdx.x * blockDim.x + threadIdx.x];
    __syncthreads();
    x[blockIdx.x * blockDim.x + threadIdx.x] = s[blockDim.x - 1 - threadIdx.x];
}

// Votes: how many threads of the block hold an odd value, whether any/all do, the warp ballot.
__global__ void votes(const int* x, int* out) {
    const int odd = x[threadIdx.x] & 1;
    const int count = __syncthreads_count(odd);
    const int any = __syncthreads_or(odd);
    const int all = __syncthreads_and(odd);
    const unsigned ballot = __ballot_sync(0xffffffffu, odd);
    if (threadIdx.x == 0) {
        out[0] = count;
        out[1] = any;
        out[2] = all;
        out[3] = (int)ballot;
    }
}

// Threads that wait at different barriers (a block barrier and a warp one) can never all go on:
// the launch must fail, not hang. (Threads that have exited count as arrived, as on a GPU.)
__global__ void divergent(int* x) {
    if (threadIdx.x < 16) __syncthreads();
    else __syncwarp();
    x[threadIdx.x] = 1;
}

static int failures = 0;
#define CHECK(c, ...)                          \
    do {                                       \
        if (!(c)) {                            \
            printf("selftest FAIL: " __VA_ARGS__); \
            printf("\n");                      \
            failures++;                        \
        }                                      \
    } while (0)

template <typename F> static std::string launch(unsigned grid, unsigned block, F f) {
    standin::grid_dim = {grid, 1, 1};
    for (unsigned b = 0; b < grid; b++) {
        std::string e = standin::run_block({b, 0, 0}, {block, 1, 1}, f);
        if (!e.empty()) return e;
    }
    return "";
}

int main() {
    const unsigned n = 1000, threads = 256, blocks = (n + threads - 1) / threads;
    std::vector<float> x(n);
    for (unsigned i = 0; i < n; i++) x[i] = (float)(i % 7);
    std::vector<float> sums(blocks, -1.f);
    launch(blocks, threads, [&] { block_sum(x.data(), sums.data(), n); });
    for (unsigned b = 0; b < blocks; b++) {
        float want = 0;
        for (unsigned i = b * threads; i < n && i < (b + 1) * threads; i++) want += x[i];
        CHECK(sums[b] == want, "block_sum[%u] = %g, want %g", b, sums[b], want);
    }

    std::vector<int> r(512);
    for (int i = 0; i < 512; i++) r[i] = i;
    launch(2, 256, [&] { reverse(r.data()); });
    for (int i = 0; i < 512; i++) CHECK(r[i] == (i / 256) * 256 + 255 - i % 256, "reverse[%d] = %d", i, r[i]);

    std::vector<int> v(64), out(4);
    for (int i = 0; i < 64; i++) v[i] = i == 3 || i == 40 ? 1 : 2;
    launch(1, 64, [&] { votes(v.data(), out.data()); });
    CHECK(out[0] == 2 && out[1] == 1 && out[2] == 0 && out[3] == (1 << 3),
          "votes: count %d any %d all %d ballot %#x", out[0], out[1], out[2], out[3]);

    std::vector<int> d(32);
    std::string e = launch(1, 32, [&] { divergent(d.data()); });
    CHECK(!e.empty(), "a divergent __syncthreads was not reported");

    if (failures) return 1;
    printf("cuda-standin selftest: block/warp reductions, shared memory, votes, divergent barrier: ok\n");
    return 0;
}
