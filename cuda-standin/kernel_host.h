// CUDA device code on the host, for the CPU stand-in of the CUDA driver (cuda-standin/).
//
// Included before the kernel sources (kernels/*.cu): it turns the CUDA keywords into plain C++
// and provides the built-ins a kernel may use, so that the very source that nvcc compiles to PTX
// compiles with g++ into host functions of the same signature.
//
// Execution model (driver.cpp runs a launch): the blocks of a grid run one after the other, and
// the threads of a block run as cooperative fibers scheduled by fibers.cpp (a fiber runs threads
// one after another until one waits at a barrier, then the next fiber takes over), so
// that block barriers (__syncthreads and its _or/_and/_count forms) and warp collectives
// (__shfl*_sync, __ballot_sync, __any_sync, __all_sync) behave as on a GPU: a thread that reaches
// one waits until every live thread of its block (or warp) has reached it. Static __shared__
// arrays are one static object per kernel: correct because blocks never overlap.
//
// What is not modelled: the relative timing of threads between barriers (so a data race that a
// GPU would expose is not reported), warp-synchronous code without a *_sync collective, and
// dynamic shared memory (`extern __shared__`), which no kernel here uses.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include <vector_types.h>
#include <cuda_fp16.h>
#include <cuda_bf16.h>

#undef __device__
#undef __global__
#undef __host__
#undef __forceinline__
#undef __noinline__
#undef __launch_bounds__
#undef __shared__
#undef __constant__
#define __device__
#define __global__
#define __host__
#define __forceinline__ inline
#define __noinline__ __attribute__((noinline))
#define __launch_bounds__(...)
#define __shared__ static
#define __constant__ static const

namespace standin {

// The launch coordinates of the running thread (set by the fiber scheduler).
struct Coord {
    unsigned x, y, z;
};
extern thread_local Coord block_idx, thread_idx, block_dim, grid_dim;

// Barriers. `scope` 0: the block; 1: the warp of the calling thread. `value` is combined over the
// threads that meet there: the result is (or, and, count, ballot mask) per `op`.
enum class Op { None, Or, And, Count, Ballot };
uint64_t barrier(int scope, Op op, int value);
// Warp shuffle: every lane offers `bits` and reads the bits of lane `src` (its own when `src` is
// out of range or that lane has exited).
uint64_t shuffle(uint64_t bits, int src_lane);

inline unsigned lane() {
    const unsigned linear = thread_idx.x + block_dim.x * (thread_idx.y + block_dim.y * thread_idx.z);
    return linear % 32;
}

template <typename T> inline uint64_t to_bits(T v) {
    static_assert(sizeof(T) <= 8, "shuffle of a type wider than 64 bits");
    uint64_t b = 0;
    memcpy(&b, &v, sizeof(T));
    return b;
}
template <typename T> inline T from_bits(uint64_t b) {
    T v;
    memcpy(&v, &b, sizeof(T));
    return v;
}

}  // namespace standin

#define blockIdx standin::block_idx
#define threadIdx standin::thread_idx
#define blockDim standin::block_dim
#define gridDim standin::grid_dim
#define warpSize 32

inline void __syncthreads() { standin::barrier(0, standin::Op::None, 0); }
inline int __syncthreads_or(int p) { return (int)standin::barrier(0, standin::Op::Or, p != 0); }
inline int __syncthreads_and(int p) { return (int)standin::barrier(0, standin::Op::And, p != 0); }
inline int __syncthreads_count(int p) { return (int)standin::barrier(0, standin::Op::Count, p != 0); }
inline void __syncwarp(unsigned = 0xffffffffu) { standin::barrier(1, standin::Op::None, 0); }
inline unsigned __ballot_sync(unsigned, int p) {
    return (unsigned)standin::barrier(1, standin::Op::Ballot, p != 0);
}
inline int __any_sync(unsigned, int p) { return (int)standin::barrier(1, standin::Op::Or, p != 0); }
inline int __all_sync(unsigned, int p) { return (int)standin::barrier(1, standin::Op::And, p != 0); }

template <typename T> inline T __shfl_sync(unsigned, T v, int src, int width = 32) {
    const int base = (int)standin::lane() / width * width;
    return standin::from_bits<T>(standin::shuffle(standin::to_bits(v), base + ((src % width + width) % width)));
}
template <typename T> inline T __shfl_xor_sync(unsigned, T v, int mask, int width = 32) {
    const int l = (int)standin::lane();
    const int src = (l ^ mask) / width == l / width ? (l ^ mask) : l;
    return standin::from_bits<T>(standin::shuffle(standin::to_bits(v), src));
}
template <typename T> inline T __shfl_down_sync(unsigned, T v, unsigned d, int width = 32) {
    const int l = (int)standin::lane();
    const int src = (l % width) + (int)d < width ? l + (int)d : l;
    return standin::from_bits<T>(standin::shuffle(standin::to_bits(v), src));
}
template <typename T> inline T __shfl_up_sync(unsigned, T v, unsigned d, int width = 32) {
    const int l = (int)standin::lane();
    const int src = (l % width) >= (int)d ? l - (int)d : l;
    return standin::from_bits<T>(standin::shuffle(standin::to_bits(v), src));
}

// Atomics: the threads of a launch run on one OS thread, so plain read-modify-write is atomic.
template <typename T> inline T atomicAdd(T* a, T v) { T o = *a; *a = o + v; return o; }
template <typename T> inline T atomicSub(T* a, T v) { T o = *a; *a = o - v; return o; }
template <typename T> inline T atomicMax(T* a, T v) { T o = *a; *a = o < v ? v : o; return o; }
template <typename T> inline T atomicMin(T* a, T v) { T o = *a; *a = v < o ? v : o; return o; }
template <typename T> inline T atomicOr(T* a, T v) { T o = *a; *a = o | v; return o; }
template <typename T> inline T atomicAnd(T* a, T v) { T o = *a; *a = o & v; return o; }
template <typename T> inline T atomicExch(T* a, T v) { T o = *a; *a = v; return o; }
template <typename T> inline T atomicCAS(T* a, T cmp, T v) { T o = *a; if (o == cmp) *a = v; return o; }
inline void __threadfence() {}
inline void __threadfence_block() {}

// Device intrinsics the host headers lack. The fast-math ones are computed exactly here (the GPU
// approximates them to a few ulp): a kernel that uses them agrees with the stand-in only within
// those ulp, not bit for bit.
inline float rsqrtf(float x) { return 1.0f / sqrtf(x); }
inline double rsqrt(double x) { return 1.0 / sqrt(x); }
inline float __fdividef(float a, float b) { return a / b; }
inline float __saturatef(float x) { return x < 0.f ? 0.f : x > 1.f ? 1.f : x == x ? x : 0.f; }
template <typename T> inline T __ldg(const T* p) { return *p; }

// min/max as CUDA has them for integer and floating operands of one or two types.
template <typename A, typename B> inline std::common_type_t<A, B> min(A a, B b) {
    typedef std::common_type_t<A, B> C;
    return (C)a < (C)b ? (C)a : (C)b;
}
template <typename A, typename B> inline std::common_type_t<A, B> max(A a, B b) {
    typedef std::common_type_t<A, B> C;
    return (C)a < (C)b ? (C)b : (C)a;
}
