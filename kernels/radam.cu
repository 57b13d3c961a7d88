// Fused multi-tensor RAdam step for candle-radam (compiled to PTX by build.rs).
//
// Layout follows llm.c's AdamW kernel: a device math function per element, a thin templated
// kernel body, and `extern "C"` entry points per parameter dtype. The host "launcher" is the Rust
// side (src/cuda.rs), which computes every step-dependent scalar in f64 (src/rule.rs,
// `StepScalars`): the kernel never sees a step number t.
//
// Step counts are per tensor (torch's state['step']) and tensors belong to parameter groups, so
// one launch may need several scalar sets: the host uploads one `Scalars` per distinct (group, t)
// after the table, and each entry holds the index of its set (`Entry::set`). The branch
// (`Scalars::update`) is therefore per tensor, uniform within a block.
//
// Multi-tensor: one launch updates every tensor of one dtype. The host uploads a table of
// `Entry` (one per non-empty tensor) followed by a block map (one u32 tensor index per CUDA
// block). Block b updates elements [chunk*CHUNK, min(n, (chunk+1)*CHUNK)) of tensor map[b],
// where chunk = b - entry.first_block, like torch's MultiTensorApply / apex's chunking.
// Every element's param, grad, m and v are read once and param, m, v written once (param is not
// written at all on a Frozen step). Indexing is 64-bit.
//
// Vector loads: when all four pointers of a tensor are 16-byte aligned (flag bit 0, checked on the
// host), each thread moves VEC = 16 / sizeof(param) elements per iteration with 128-bit loads and
// stores (the f32 moments of a 16-bit param take two 128-bit accesses); the last n % VEC elements
// of a chunk and every element of an unaligned tensor take the scalar path.
//
// bf16 entry points need sm_80+ and only exist in PTX built for compute_80 or newer; the Rust side
// checks the device's compute capability before asking for them.

#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <cuda_fp16.h>
#include <cuda_bf16.h>

// Elements per block (a multiple of every VEC); 4096 keeps small models spread over the SMs.
#define RADAM_CHUNK 4096
// Threads per block. build.rs reads both #defines for src/cuda.rs's launch geometry.
#define RADAM_THREADS 256

// One tensor of the table. Must match `build_table` in src/cuda.rs (12 x u64 = 96 bytes).
struct Entry {
    uint64_t p;            // param device pointer (start offset applied)
    uint64_t g;            // grad device pointer (start offset applied)
    uint64_t m;            // first moment (f32, or f64 for f64 params)
    uint64_t v;            // second moment (same dtype as m)
    uint64_t n;            // element count (> 0)
    uint64_t first_block;  // index of this tensor's first block in the launch
    uint32_t flags;        // bit 0: p, g, m, v (and aux) 16-byte aligned; bit 1: g 16-byte aligned;
                           // bits 4-5: the param's rounding mode (MODE_* below)
    uint32_t set;          // index of the tensor's scalar set (update kernels; 0 for the check)
    uint64_t item;         // index of the tensor in the caller's list (non-finite flags)
    uint64_t aux;          // low-precision param update buffer (u16 per element), 0 when none
    uint64_t key;          // stochastic rounding: the stream word of (seed, variable key, t), else 0
    uint64_t m_absmax;     // 8-bit state: f32 absmax per quantization block of m (m: u8 codes), else 0
    uint64_t v_absmax;     // 8-bit state: f32 absmax per quantization block of v (v: u8 codes), else 0
};
static_assert(sizeof(Entry) == 96, "Entry must stay 12 x u64 (ENTRY_WORDS in src/cuda.rs)");
static_assert(offsetof(Entry, flags) == 48 && offsetof(Entry, set) == 52,
              "word 6 of an entry is flags (low half) | set (high half), as src/cuda.rs writes it");

// ---------------------------------------------------------------------------------------------
// dtype plumbing: Storage <-> math type

template <typename P> struct Traits;
template <> struct Traits<float> {
    typedef float Math;
    __device__ static float load(float x) { return x; }
    __device__ static float store(float x) { return x; }
};
template <> struct Traits<double> {
    typedef double Math;
    __device__ static double load(double x) { return x; }
    __device__ static double store(double x) { return x; }
};
template <> struct Traits<__half> {
    typedef float Math;
    __device__ static float load(__half x) { return __half2float(x); }
    __device__ static __half store(float x) { return __float2half_rn(x); }  // round to nearest even
};
template <> struct Traits<__nv_bfloat16> {
    typedef float Math;
    __device__ static float load(__nv_bfloat16 x) { return __bfloat162float(x); }
    __device__ static __nv_bfloat16 store(float x) { return __float2bfloat16_rn(x); }  // nearest even
};

// ---------------------------------------------------------------------------------------------
// The param side of the update (src/precision.rs, element for element): `ParamIO<P>::load` turns
// a stored param (and its u16 buffer) into the math type, `ParamIO<P>::store` writes a math-type
// result back under the entry's rounding mode. Any kernel body that updates params can use them.

#define MODE_NEAREST 0     // round to nearest even
#define MODE_REMAINDER 1   // bf16: param = upper 16 bits of the f32 master, aux = lower 16 bits
#define MODE_KAHAN 2       // aux = Kahan compensation (param-dtype bits)
#define MODE_STOCHASTIC 3  // unbiased stochastic rounding from a counter-based hash

template <typename T, typename U>
__device__ __forceinline__ T bits_as(U x) {
    static_assert(sizeof(T) == sizeof(U), "bit cast between types of one size");
    T t;
    memcpy(static_cast<void*>(&t), static_cast<const void*>(&x), sizeof(T));
    return t;
}

// SplitMix64's output mix (Steele, Lea, Flood 2014; Stafford's Mix13), `mix64` in precision.rs.
__device__ __forceinline__ uint64_t mix64(uint64_t z) {
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}
// Chris Wellons' lowbias32 (hash-prospector), `lowbias32` in precision.rs.
__device__ __forceinline__ uint32_t lowbias32(uint32_t x) {
    x ^= x >> 16;
    x *= 0x7feb352du;
    x ^= x >> 15;
    x *= 0x846ca68bu;
    return x ^ (x >> 16);
}
// The word of the 2^32-element segment of element i (a block never spans two segments).
__device__ __forceinline__ uint64_t segment_word(uint64_t stream, uint64_t i) {
    return mix64(stream ^ (i >> 32));
}
// 32 uniform random bits for element i: lowbias32(lo32(i) + lo32(w)) ^ hi32(w).
__device__ __forceinline__ uint32_t element_bits(uint64_t w, uint64_t i) {
    return lowbias32((uint32_t)i + (uint32_t)w) ^ (uint32_t)(w >> 32);
}

// Stochastic rounding of x to bf16 bits: 16 random bits added to the low half, then truncated.
__device__ __forceinline__ uint16_t sr_bf16(float x, uint32_t r) {
    const uint32_t b = bits_as<uint32_t>(x);
    // inf stays inf; a NaN stays a NaN (quiet bit set: its payload may be in the low half).
    if ((b & 0x7f800000u) == 0x7f800000u) return (uint16_t)((b >> 16) | ((b & 0x7fffffu) ? 0x40u : 0u));
    return (uint16_t)((b + (r & 0xffffu)) >> 16);
}
// Stochastic rounding of x to f16 bits: up with probability (|x| - lo) / (hi - lo), 24 bits.
__device__ __forceinline__ uint16_t sr_f16(float x, uint32_t r) {
    const float a = fabsf(x);
    const uint16_t h = bits_as<uint16_t>(__float2half_rn(a));
    const float hv = __half2float(bits_as<__half>(h));
    uint16_t mag = h;
    if (!(hv == a || a != a)) {
        const uint16_t lo = hv < a ? h : (uint16_t)(h - 1);
        const uint16_t hi = hv < a ? (uint16_t)(h + 1) : h;
        const float lv = __half2float(bits_as<__half>(lo));
        const float uv = __half2float(bits_as<__half>(hi));
        const float frac = (a - lv) / (uv - lv);  // 0 when uv is infinite: saturate
        const float u = (float)(r >> 8) * (1.0f / 16777216.0f);
        mag = u < frac ? hi : lo;
    }
    return (uint16_t)(mag | ((bits_as<uint32_t>(x) >> 16) & 0x8000u));
}

template <typename H> struct HalfOps;
template <> struct HalfOps<__half> {
    __device__ static float rn(float x, uint16_t& bits) {  // round to nearest, value and bits
        const __half h = __float2half_rn(x);
        bits = bits_as<uint16_t>(h);
        return __half2float(h);
    }
    __device__ static float value(uint16_t b) { return __half2float(bits_as<__half>(b)); }
    __device__ static uint16_t stochastic(float x, uint32_t r) { return sr_f16(x, r); }
};
template <> struct HalfOps<__nv_bfloat16> {
    __device__ static float rn(float x, uint16_t& bits) {
        const __nv_bfloat16 h = __float2bfloat16_rn(x);
        bits = bits_as<uint16_t>(h);
        return __bfloat162float(h);
    }
    __device__ static float value(uint16_t b) { return __bfloat162float(bits_as<__nv_bfloat16>(b)); }
    __device__ static uint16_t stochastic(float x, uint32_t r) { return sr_bf16(x, r); }
};

// f32 / f64 params: no rounding, no buffer (the host always sends MODE_NEAREST for them).
template <typename P> struct ParamIO {
    typedef typename Traits<P>::Math M;
    __device__ static M load(P p, uint16_t, int) { return Traits<P>::load(p); }
    __device__ static void store(M x, M, P& p, uint16_t&, int, uint64_t, uint64_t) {
        p = Traits<P>::store(x);
    }
};

// f16 / bf16 params: the four modes. `old` is what `load` returned (the rule's input), `w` the
// segment word of the stream, `i` the element's index in its variable.
template <typename H> struct HalfIO {
    __device__ static float load(H p, uint16_t aux, int mode) {
        if (mode == MODE_REMAINDER) {
            return bits_as<float>((uint32_t)bits_as<uint16_t>(p) << 16 | (uint32_t)aux);
        }
        return Traits<H>::load(p);
    }
    __device__ static void store(float x, float old, H& p, uint16_t& aux, int mode, uint64_t w,
                                 uint64_t i) {
        if (mode == MODE_REMAINDER) {
            const uint32_t b = bits_as<uint32_t>(x);
            p = bits_as<H>((uint16_t)(b >> 16));
            aux = (uint16_t)b;
        } else if (mode == MODE_KAHAN) {
            // y = c + (x - p); p' = rn(p + y); c' = rn(y - (p' - p)), all in f32.
            const float y = HalfOps<H>::value(aux) + (x - old);
            uint16_t pb, cb;
            const float pn = HalfOps<H>::rn(old + y, pb);
            HalfOps<H>::rn(y - (pn - old), cb);
            p = bits_as<H>(pb);
            aux = cb;
        } else if (mode == MODE_STOCHASTIC) {
            p = bits_as<H>(HalfOps<H>::stochastic(x, element_bits(w, i)));
        } else {
            p = Traits<H>::store(x);
        }
    }
};
template <> struct ParamIO<__half> : HalfIO<__half> {};
template <> struct ParamIO<__nv_bfloat16> : HalfIO<__nv_bfloat16> {};

__device__ __forceinline__ float radam_sqrt(float x) { return sqrtf(x); }
__device__ __forceinline__ double radam_sqrt(double x) { return sqrt(x); }

// One scalar set (one (group, t) of the step), already rounded to the math type on the host.
// Must match `scalar_words` in src/cuda.rs: 10 x 4 bytes (40 bytes, f32 sets) or 8 x 8 bytes then
// the int32 update and its padding (72 bytes, f64 sets).
template <typename S> struct Scalars {
    S one_minus_beta1;  // 1 - beta1 (0 during v-only steps)
    S beta2;            // second-moment decay
    S one_minus_beta2;  // 1 - beta2
    S step_size;        // lr * bias corrections * r_t
    S eps;              // added to sqrt(v)
    S l2;               // coupled weight decay (0 when decoupled)
    S decay;            // decoupled decay multiplier (1 when coupled)
    S grad_mult;        // clip coefficient / loss scale (src/clip.rs), 1 when neither is on
    int32_t update;     // 0 adaptive, 1 sgd, 2 frozen (`Update` in src/rule.rs)
    int32_t pad;        // keeps the f32 set a whole number of u64 words
};
static_assert(sizeof(Scalars<float>) == 40, "f32 scalar set: 10 words of 4 bytes (src/cuda.rs)");
static_assert(sizeof(Scalars<double>) == 72, "f64 scalar set: 9 words of 8 bytes (src/cuda.rs)");

// ---------------------------------------------------------------------------------------------
// The math of one element. `update`: 0 adaptive, 1 sgd, 2 frozen (uniform across a block).
// Returns the new param in the math type; m and v are updated in place. The expression order
// matches the CPU path exactly (build.rs compiles with -fmad=false, so no FMA contraction).

template <typename S>
__device__ __forceinline__ S radam_elem(S p, S grad, S& m, S& v, const Scalars<S>& k, int update) {
    // Clip coefficient / loss scale (exactly 1 when off: g * 1 == g), then L2 weight decay.
    S g = grad * k.grad_mult + k.l2 * p;
    m = m + k.one_minus_beta1 * (g - m);                    // first moment, torch's lerp form
    v = k.beta2 * v + k.one_minus_beta2 * g * g;            // second moment
    if (update == 0) {
        const S d = radam_sqrt(v) + k.eps;
        const S u = k.step_size * m / d;                    // rectified adaptive step
        return k.decay * p - (d == S(0) ? S(0) : u);        // m = v = 0: zero step, never 0/0
    } else if (update == 1) {
        return k.decay * p - k.step_size * m;               // SGD with momentum (rho_t <= 5)
    }
    return p;                                               // frozen: param unchanged
}

// 16-byte vector of N elements of T (N * sizeof(T) is 16 or 32 bytes).
template <typename T, int N> struct alignas(16) Vec { T x[N]; };

template <typename T, int N>
__device__ __forceinline__ Vec<T, N> load_vec(const T* ptr) {
    Vec<T, N> r;
    const uint4* src = reinterpret_cast<const uint4*>(ptr);
    uint4* dst = reinterpret_cast<uint4*>(&r);
#pragma unroll
    for (int i = 0; i < (int)(sizeof(Vec<T, N>) / 16); i++) dst[i] = src[i];
    return r;
}

template <typename T, int N>
__device__ __forceinline__ void store_vec(T* ptr, const Vec<T, N>& r) {
    uint4* dst = reinterpret_cast<uint4*>(ptr);
    const uint4* src = reinterpret_cast<const uint4*>(&r);
#pragma unroll
    for (int i = 0; i < (int)(sizeof(Vec<T, N>) / 16); i++) dst[i] = src[i];
}

// ---------------------------------------------------------------------------------------------
// Kernel body: P param/grad storage type, M moment type (= math type).

template <typename P>
__device__ __forceinline__ void radam_mt(const Entry* __restrict__ table,
                                         const uint32_t* __restrict__ block_map,
                                         const Scalars<typename Traits<P>::Math>* __restrict__ sets) {
    typedef typename Traits<P>::Math M;
    typedef ParamIO<P> IO;
    constexpr int VEC = 16 / sizeof(P);
    const Entry e = table[block_map[blockIdx.x]];
    const Scalars<M> k = sets[e.set];
    const int update = k.update;
    P* __restrict__ p = reinterpret_cast<P*>(e.p);
    const P* __restrict__ g = reinterpret_cast<const P*>(e.g);
    M* __restrict__ m = reinterpret_cast<M*>(e.m);
    M* __restrict__ v = reinterpret_cast<M*>(e.v);
    uint16_t* __restrict__ aux = reinterpret_cast<uint16_t*>(e.aux);
    const int mode = (int)((e.flags >> 4) & 3u);
    // Only 16-bit params have a buffer (remainder, Kahan); only they get a mode other than 0.
    const bool has_aux = sizeof(P) == 2 && (mode == MODE_REMAINDER || mode == MODE_KAHAN);
    const uint64_t start = (uint64_t)(blockIdx.x - e.first_block) * RADAM_CHUNK;
    const uint64_t end = min(e.n, start + RADAM_CHUNK);
    const uint64_t w = mode == MODE_STOCHASTIC ? segment_word(e.key, start) : 0;
    uint64_t scalar_from = start;

    if (e.flags & 1) {
        const uint64_t vec_end = start + (end - start) / VEC * VEC;
        for (uint64_t i = start + (uint64_t)threadIdx.x * VEC; i < vec_end;
             i += (uint64_t)blockDim.x * VEC) {
            Vec<P, VEC> pv = load_vec<P, VEC>(p + i);
            const Vec<P, VEC> gv = load_vec<P, VEC>(g + i);
            Vec<M, VEC> mv = load_vec<M, VEC>(m + i);
            Vec<M, VEC> vv = load_vec<M, VEC>(v + i);
            Vec<uint16_t, VEC> av = {};
            if (has_aux) av = load_vec<uint16_t, VEC>(aux + i);  // 16-bit params: VEC = 8
#pragma unroll
            for (int j = 0; j < VEC; j++) {
                const M old = IO::load(pv.x[j], av.x[j], mode);
                const M pn = radam_elem<M>(old, Traits<P>::load(gv.x[j]), mv.x[j], vv.x[j], k, update);
                IO::store(pn, old, pv.x[j], av.x[j], mode, w, i + j);
            }
            if (update != 2) {
                store_vec<P, VEC>(p + i, pv);
                if (has_aux) store_vec<uint16_t, VEC>(aux + i, av);
            }
            store_vec<M, VEC>(m + i, mv);
            store_vec<M, VEC>(v + i, vv);
        }
        scalar_from = vec_end;
    }
    for (uint64_t i = scalar_from + threadIdx.x; i < end; i += blockDim.x) {
        M mi = m[i], vi = v[i];
        P pi = p[i];
        uint16_t ai = has_aux ? aux[i] : 0;
        const M old = IO::load(pi, ai, mode);
        const M pn = radam_elem<M>(old, Traits<P>::load(g[i]), mi, vi, k, update);
        if (update != 2) {
            IO::store(pn, old, pi, ai, mode, w, i);
            p[i] = pi;
            if (has_aux) aux[i] = ai;
        }
        m[i] = mi;
        v[i] = vi;
    }
}

// Non-finite check: sets flags[item] = 1 when the grad chunk holds a NaN or an infinity.
// 128-bit loads when the grad is 16-byte aligned (flag bit 1), like the update. Works on the raw bits (all exponent bits set), so it needs no conversion and no sm_80 for bf16.
template <typename U, U EXP_MASK>
__device__ __forceinline__ void radam_check(const Entry* __restrict__ table,
                                            const uint32_t* __restrict__ block_map,
                                            uint32_t* __restrict__ flags) {
    const Entry e = table[block_map[blockIdx.x]];
    const U* __restrict__ g = reinterpret_cast<const U*>(e.g);
    const uint64_t start = (uint64_t)(blockIdx.x - e.first_block) * RADAM_CHUNK;
    const uint64_t end = min(e.n, start + RADAM_CHUNK);
    constexpr int VEC = 16 / sizeof(U);
    bool bad = false;
    uint64_t scalar_from = start;
    if (e.flags & 2) {  // grad 16-byte aligned: 128-bit loads
        const uint64_t vec_end = start + (end - start) / VEC * VEC;
        for (uint64_t i = start + (uint64_t)threadIdx.x * VEC; i < vec_end; i += (uint64_t)blockDim.x * VEC) {
            const Vec<U, VEC> gv = load_vec<U, VEC>(g + i);
#pragma unroll
            for (int j = 0; j < VEC; j++) bad |= (gv.x[j] & EXP_MASK) == EXP_MASK;  // inf or NaN
        }
        scalar_from = vec_end;
    }
    for (uint64_t i = scalar_from + threadIdx.x; i < end; i += blockDim.x) {
        bad |= (g[i] & EXP_MASK) == EXP_MASK;  // exponent all ones: inf or NaN
    }
    if (__syncthreads_or(bad) && threadIdx.x == 0) flags[e.item] = 1;
}

// Sum of squares of the grad chunk (global-norm clipping, src/clip.rs): writes the block's sum to
// partials[blockIdx.x]; the host adds the partials of each tensor, then the tensors, in f64.
// Accumulation: every element converted exactly to double and squared there (an f32 / f16 / bf16
// square is exact in f64), each thread summing its strided elements in f64, then a fixed-order
// f64 tree over the block in shared memory: the relative error is at most ~(16 + 8 + log2 of the
// block count) * 2^-53 of the sum, far below the f32 rounding of the clip coefficient, and the
// result is deterministic (no atomics). A NaN / inf element makes the partial NaN / inf, which
// the host treats as a non-finite gradient. 128-bit loads when the grad is 16-byte aligned.
template <typename P>
__device__ __forceinline__ void radam_sumsq(const Entry* __restrict__ table,
                                            const uint32_t* __restrict__ block_map,
                                            double* __restrict__ partials) {
    __shared__ double sh[RADAM_THREADS];
    const Entry e = table[block_map[blockIdx.x]];
    const P* __restrict__ g = reinterpret_cast<const P*>(e.g);
    const uint64_t start = (uint64_t)(blockIdx.x - e.first_block) * RADAM_CHUNK;
    const uint64_t end = min(e.n, start + RADAM_CHUNK);
    constexpr int VEC = 16 / sizeof(P);
    double acc = 0.0;
    uint64_t scalar_from = start;
    if (e.flags & 2) {
        const uint64_t vec_end = start + (end - start) / VEC * VEC;
        for (uint64_t i = start + (uint64_t)threadIdx.x * VEC; i < vec_end; i += (uint64_t)blockDim.x * VEC) {
            const Vec<P, VEC> gv = load_vec<P, VEC>(g + i);
#pragma unroll
            for (int j = 0; j < VEC; j++) {
                const double x = (double)Traits<P>::load(gv.x[j]);
                acc += x * x;
            }
        }
        scalar_from = vec_end;
    }
    for (uint64_t i = scalar_from + threadIdx.x; i < end; i += blockDim.x) {
        const double x = (double)Traits<P>::load(g[i]);
        acc += x * x;
    }
    sh[threadIdx.x] = acc;
    __syncthreads();
    for (unsigned s = RADAM_THREADS / 2; s > 0; s >>= 1) {
        if (threadIdx.x < s) sh[threadIdx.x] += sh[threadIdx.x + s];
        __syncthreads();
    }
    if (threadIdx.x == 0) partials[blockIdx.x] = sh[0];
}

// ---------------------------------------------------------------------------------------------
// Entry points (one per param dtype). `sets`: the step's scalar sets in the math type S.

#define RADAM_ENTRY(NAME, P, S)                                                                \
    extern "C" __global__ void __launch_bounds__(RADAM_THREADS)                                \
    NAME(const Entry* table, const uint32_t* block_map, const Scalars<S>* sets) {              \
        radam_mt<P>(table, block_map, sets);                                                   \
    }

RADAM_ENTRY(radam_mt_f32, float, float)
RADAM_ENTRY(radam_mt_f64, double, double)
RADAM_ENTRY(radam_mt_f16, __half, float)
#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 800
RADAM_ENTRY(radam_mt_bf16, __nv_bfloat16, float)
#endif

#define RADAM_CHECK_ENTRY(NAME, U, MASK)                                                        \
    extern "C" __global__ void __launch_bounds__(RADAM_THREADS)                                \
    NAME(const Entry* table, const uint32_t* block_map, uint32_t* flags) {                     \
        radam_check<U, MASK>(table, block_map, flags);                                         \
    }

#define RADAM_SUMSQ_ENTRY(NAME, P)                                                              \
    extern "C" __global__ void __launch_bounds__(RADAM_THREADS)                                \
    NAME(const Entry* table, const uint32_t* block_map, double* partials) {                    \
        radam_sumsq<P>(table, block_map, partials);                                            \
    }

RADAM_SUMSQ_ENTRY(radam_sumsq_f32, float)
RADAM_SUMSQ_ENTRY(radam_sumsq_f64, double)
RADAM_SUMSQ_ENTRY(radam_sumsq_f16, __half)
#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 800
RADAM_SUMSQ_ENTRY(radam_sumsq_bf16, __nv_bfloat16)
#endif

RADAM_CHECK_ENTRY(radam_check_b16h, uint16_t, (uint16_t)0x7c00u)            // f16
RADAM_CHECK_ENTRY(radam_check_b16b, uint16_t, (uint16_t)0x7f80u)            // bf16
RADAM_CHECK_ENTRY(radam_check_b32, uint32_t, 0x7f800000u)                  // f32
RADAM_CHECK_ENTRY(radam_check_b64, uint64_t, 0x7ff0000000000000ull)        // f64

// ---------------------------------------------------------------------------------------------
// 8-bit state (src/quant.rs, src/cpu8.rs): m and v as u8 codes with one f32 absmax per block of
// RADAM_Q8_BLOCK = RADAM_THREADS elements (block-wise dynamic quantization, bitsandbytes'
// create_dynamic_map: signed for m, unsigned for v). The entry's `m` / `v` point to the codes,
// `m_absmax` / `v_absmax` to the scales. `maps`: the 256 signed then the 256 unsigned map values
// (f32, ascending), uploaded once per device by the host, copied to shared memory per block.
//
// One loop iteration of a CUDA block covers exactly one quantization block, thread i element i
// (chunks are RADAM_CHUNK = 16 quantization blocks, so they never split one): dequantize
// (map[code] * absmax), load the param (ParamIO<P>, with its rounding buffer, as radam_mt),
// radam_elem (the f32 rule, unchanged), block max-reduce of |m| and |v|
// (warp shuffles, then one value per warp in shared memory; NaN sticky; +-inf saturated to
// the largest f32), quantize against the new absmax (x / absmax, binary search, ties to the
// lower code: radam8_code), store (the param through ParamIO<P>::store under the entry's
// rounding mode, as radam_mt). Bit for bit
// the CPU pass: the same f32 operations in the same order (-fmad=false, IEEE division and sqrt).

#define RADAM_Q8_BLOCK RADAM_THREADS
#define RADAM8_FMAX 3.40282347e+38f  // FLT_MAX (f32::MAX), without <cfloat> (NVRTC)
static_assert(RADAM_CHUNK % RADAM_Q8_BLOCK == 0, "a chunk must hold whole quantization blocks");
static_assert(RADAM_Q8_BLOCK == 256, "src/quant.rs BLOCK: one thread per element of a block");

// The larger of two magnitudes, NaN if either is NaN (order-independent, so the reduction's
// shape does not change the result).
__device__ __forceinline__ float radam8_max(float a, float b) {
    if (a != a) return a;
    return (b > a || b != b) ? b : a;
}

// Nearest code of y in a sorted 256-entry map (src/quant.rs `nearest_code`): the largest lo with
// map[lo] <= y (0 below map[0] or for NaN), then lo + 1 when strictly nearer; ties to lo.
__device__ __forceinline__ uint8_t radam8_code(const float* map, float y) {
    int lo = 0;
#pragma unroll
    for (int step = 128; step > 0; step >>= 1) lo += (map[lo + step] <= y) ? step : 0;
    const int hi = lo < 255 ? lo + 1 : 255;
    const bool up = hi != lo && map[hi] - y < y - map[lo];
    return (uint8_t)(lo + (up ? 1 : 0));
}

template <typename P>
__device__ __forceinline__ void radam8_mt(const Entry* __restrict__ table,
                                          const uint32_t* __restrict__ block_map,
                                          const Scalars<float>* __restrict__ sets,
                                          const float* __restrict__ maps) {
    __shared__ float smap[256];
    __shared__ float umap[256];
    __shared__ float warp_max[2][RADAM_THREADS / 32];
    const Entry e = table[block_map[blockIdx.x]];
    const Scalars<float> k = sets[e.set];
    const int update = k.update;
    P* __restrict__ p = reinterpret_cast<P*>(e.p);
    const P* __restrict__ g = reinterpret_cast<const P*>(e.g);
    uint8_t* __restrict__ mc = reinterpret_cast<uint8_t*>(e.m);
    uint8_t* __restrict__ vc = reinterpret_cast<uint8_t*>(e.v);
    float* __restrict__ ma = reinterpret_cast<float*>(e.m_absmax);
    float* __restrict__ va = reinterpret_cast<float*>(e.v_absmax);
    uint16_t* __restrict__ aux = reinterpret_cast<uint16_t*>(e.aux);
    const int mode = (int)((e.flags >> 4) & 3u);
    // Only 16-bit params have a buffer (remainder, Kahan); only they get a mode other than 0.
    const bool has_aux = sizeof(P) == 2 && (mode == MODE_REMAINDER || mode == MODE_KAHAN);
    const uint64_t start = (uint64_t)(blockIdx.x - e.first_block) * RADAM_CHUNK;
    const uint64_t end = min(e.n, start + RADAM_CHUNK);
    const uint64_t w = mode == MODE_STOCHASTIC ? segment_word(e.key, start) : 0;
    for (unsigned t = threadIdx.x; t < 256; t += blockDim.x) {
        smap[t] = maps[t];
        umap[t] = maps[256 + t];
    }
    __syncthreads();
    const unsigned lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    for (uint64_t qb0 = start; qb0 < end; qb0 += RADAM_Q8_BLOCK) {
        const uint64_t i = qb0 + threadIdx.x;
        const uint64_t qb = qb0 / RADAM_Q8_BLOCK;
        const bool active = i < end;
        float mi = 0.0f, vi = 0.0f, pn = 0.0f, old = 0.0f;
        uint16_t ai = 0;
        if (active) {
            mi = smap[mc[i]] * ma[qb];
            vi = umap[vc[i]] * va[qb];
            if (has_aux) ai = aux[i];
            old = ParamIO<P>::load(p[i], ai, mode);
            pn = radam_elem<float>(old, Traits<P>::load(g[i]), mi, vi, k, update);
        }
        float am = fabsf(mi), av = fabsf(vi);
#pragma unroll
        for (int off = 16; off > 0; off >>= 1) {
            am = radam8_max(am, __shfl_xor_sync(0xffffffffu, am, off));
            av = radam8_max(av, __shfl_xor_sync(0xffffffffu, av, off));
        }
        if (lane == 0) {
            warp_max[0][warp] = am;
            warp_max[1][warp] = av;
        }
        __syncthreads();  // also: every thread has read ma[qb] / va[qb] before thread 0 writes them
        am = warp_max[0][0];
        av = warp_max[1][0];
#pragma unroll
        for (int w = 1; w < RADAM_THREADS / 32; w++) {
            am = radam8_max(am, warp_max[0][w]);
            av = radam8_max(av, warp_max[1][w]);
        }
        // An overflowed moment (+-inf) saturates the absmax to FLT_MAX (src/quant.rs `absmax`):
        // +-inf / FLT_MAX = +-inf takes the extreme code, the rest of the block stays finite.
        // NaN fails the comparison and stays NaN.
        am = am > RADAM8_FMAX ? RADAM8_FMAX : am;
        av = av > RADAM8_FMAX ? RADAM8_FMAX : av;
        if (active) {
            mc[i] = radam8_code(smap, am == 0.0f ? 0.0f : mi / am);
            vc[i] = radam8_code(umap, av == 0.0f ? 0.0f : vi / av);
            if (update != 2) {
                P pi = p[i];
                ParamIO<P>::store(pn, old, pi, ai, mode, w, i);
                p[i] = pi;
                if (has_aux) aux[i] = ai;
            }
        }
        if (threadIdx.x == 0) {
            ma[qb] = am;
            va[qb] = av;
        }
        __syncthreads();  // warp_max is reused by the next quantization block
    }
}

#define RADAM8_ENTRY(NAME, P)                                                                   \
    extern "C" __global__ void __launch_bounds__(RADAM_THREADS)                                \
    NAME(const Entry* table, const uint32_t* block_map, const Scalars<float>* sets,            \
         const float* maps) {                                                                  \
        radam8_mt<P>(table, block_map, sets, maps);                                            \
    }

RADAM8_ENTRY(radam8_mt_f32, float)
RADAM8_ENTRY(radam8_mt_f16, __half)
#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 800
RADAM8_ENTRY(radam8_mt_bf16, __nv_bfloat16)
#endif
