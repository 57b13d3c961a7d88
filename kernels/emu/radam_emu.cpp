// Host emulation of kernels/radam.cu: compiles the kernel source with a plain C++ compiler
// (CUDA keywords stubbed, blocks and threads run one after the other) and checks the multi-tensor
// indexing, the vector and scalar paths, every dtype and update branch, per-tensor scalar sets
// (several (group, t) sets in one launch), the gradient multiplier (clip coefficient / loss
// scale), the zero-step select, and the non-finite check against a straightforward per-element
// reference, bit for bit; and the sum-of-squares kernel (global-norm clipping) against a plain
// f64 sum, to 1e-12 relative, NaN / inf partials where a gradient holds one. It needs the CUDA headers but no
// GPU; scripts/ci-cuda.sh builds and runs it:
//
//   g++ -O2 -std=c++17 -ffp-contract=off -I$CUDA_HOME/include kernels/emu/radam_emu.cpp -o radam_emu
//
// What it cannot check: the real hardware, the PTX JIT and the Rust launcher (tests/cuda.rs does,
// on a GPU). The table and block map are built here the way src/cuda.rs builds them.

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <type_traits>
#include <vector>

#include <vector_types.h>
#include <cuda_fp16.h>
#include <cuda_bf16.h>

// ---- CUDA keywords and built-ins for a host build ---------------------------------------------
#undef __device__
#undef __global__
#undef __forceinline__
#undef __launch_bounds__
#undef __shared__
#define __shared__ static
#define __device__
#define __global__
#define __forceinline__ inline
#define __launch_bounds__(...)

static struct { unsigned x; } emu_block, emu_thread, emu_dim;
#define blockIdx emu_block
#define threadIdx emu_thread
#define blockDim emu_dim
// Threads of a block run from the last to thread 0, so thread 0 sees the whole block's OR.
static bool emu_block_or = false;
static inline bool __syncthreads_or(bool x) { emu_block_or |= x; return emu_block_or; }
// A plain barrier is a no-op: the sum kernel's shared-memory tree only ever reads slots of
// higher-numbered threads, which (running first, to completion) hold exactly what they would
// hold at that barrier on a GPU.
static inline void __syncthreads() {}
template <typename T> static inline T min(T a, T b) { return a < b ? a : b; }

// The 8-bit kernels (radam8_mt_*) need warp shuffles and barriers that really wait: they are
// checked by kernels/emu/radam8_emu.cpp on the stand-in's fiber scheduler; here they only compile.
template <typename T> static inline T __shfl_xor_sync(unsigned, T, int) { abort(); }

#include "../radam.cu"
#include "ref_rounding.h"

#undef blockIdx
#undef threadIdx
#undef blockDim

// ---- a launch, emulated -------------------------------------------------------------------------
template <typename F>
static void launch(uint32_t blocks, F kernel) {
    emu_dim.x = RADAM_THREADS;
    for (uint32_t b = 0; b < blocks; b++) {
        emu_block.x = b;
        emu_block_or = false;
        for (int t = RADAM_THREADS - 1; t >= 0; t--) {
            emu_thread.x = (unsigned)t;
            kernel();
        }
    }
}

static int failures = 0;
#define CHECK(cond, ...)                                                     \
    do {                                                                     \
        if (!(cond)) {                                                       \
            if (failures++ < 20) { printf("FAIL: " __VA_ARGS__); printf("\n"); } \
        }                                                                    \
    } while (0)

// One tensor: param/grad in P (with `off`/`goff` elements of slack before them, to misalign),
// moments M.
template <typename P, typename M> struct Tensor {
    size_t n, off, goff;
    std::vector<P> p_store, g_store;
    std::vector<M> m, v;
    std::vector<P> p_ref;
    std::vector<M> m_ref, v_ref;
    P* p() { return p_store.data() + off; }
    P* g() { return g_store.data() + goff; }
};

template <typename P> static P from_f(float x);
template <> float from_f<float>(float x) { return x; }
template <> double from_f<double>(float x) { return x; }
template <> __half from_f<__half>(float x) { return __float2half_rn(x); }
template <> __nv_bfloat16 from_f<__nv_bfloat16>(float x) { return __float2bfloat16_rn(x); }

template <typename P> static uint64_t bits(P x) {
    uint64_t b = 0;
    memcpy(&b, &x, sizeof(P));
    return b;
}

// Scalar set of tensor i (src/cuda.rs: the entry's `set`): three sets per launch.
static uint32_t set_of(size_t i) { return (uint32_t)(i % 3); }

// The table exactly as src/cuda.rs lays it out: entries, then the block map as packed u32.
template <typename P, typename M>
static std::vector<uint64_t> build_table(std::vector<Tensor<P, M>>& ts, uint32_t& blocks, size_t& map_word) {
    std::vector<uint64_t> words;
    std::vector<uint32_t> map;
    uint32_t e = 0;
    for (size_t i = 0; i < ts.size(); i++) {
        Tensor<P, M>& t = ts[i];
        if (t.n == 0) continue;
        uint64_t pp = (uint64_t)t.p(), gp = (uint64_t)t.g(), mp = (uint64_t)t.m.data(), vp = (uint64_t)t.v.data();
        uint64_t aligned = ((pp | gp | mp | vp) % 16) == 0;
        uint64_t flags = aligned | ((uint64_t)(gp % 16 == 0) << 1) | ((uint64_t)set_of(i) << 32);
        uint64_t entry[12] = {pp, gp, mp, vp, t.n, (uint64_t)map.size(), flags, (uint64_t)i, 0, 0, 0, 0};
        words.insert(words.end(), entry, entry + 12);
        for (uint64_t b = 0; b < (t.n + RADAM_CHUNK - 1) / RADAM_CHUNK; b++) map.push_back(e);
        e++;
    }
    map_word = words.size();
    for (size_t i = 0; i < map.size(); i += 2)
        words.push_back((uint64_t)map[i] | ((uint64_t)(i + 1 < map.size() ? map[i + 1] : 0) << 32));
    blocks = (uint32_t)map.size();
    return words;
}

template <typename P, typename M>
static void run_dtype(const char* name, void (*kernel)(const Entry*, const uint32_t*, const Scalars<M>*),
                      void (*check)(const Entry*, const uint32_t*, uint32_t*),
                      void (*sumsq)(const Entry*, const uint32_t*, double*)) {
    std::mt19937_64 rng(1234);
    std::uniform_real_distribution<float> u(-1.f, 1.f);
    const size_t sizes[] = {0, 1, 3, 7, 8, 9, 255, 1023, 1024, 1025, 4095, 4096, 4097, 3 * 4096 + 5, (1 << 16) + 7};
    std::vector<Tensor<P, M>> ts;
    const size_t offsets[4][2] = {{0, 0}, {1, 1}, {0, 1}, {3, 0}};
    for (auto& o : offsets) {
        for (size_t n : sizes) {
            Tensor<P, M> t;
            t.n = n;
            t.off = o[0];
            t.goff = o[1];
            t.p_store.resize(n + t.off + 8);
            t.g_store.resize(n + t.goff + 8);
            for (auto& x : t.p_store) x = from_f<P>(u(rng));
            t.m.assign(n, M(0));
            t.v.assign(n, M(0));
            t.p_ref.assign(t.p(), t.p() + n);
            t.m_ref = t.m;
            t.v_ref = t.v;
            ts.push_back(std::move(t));
        }
    }
    // Sentinels after each param must never change.
    std::vector<std::vector<P>> tails;
    for (auto& t : ts) tails.emplace_back(t.p() + t.n, t.p_store.data() + t.p_store.size());

    size_t vec_tensors = 0;
    for (int step = 1; step <= 12; step++) {
        for (auto& t : ts) for (auto& x : t.g_store) x = from_f<P>(u(rng) * 0.5f);
        // Three scalar sets (three (group, t) pairs of one step): set 0 cycles through sgd,
        // adaptive, frozen; set 1 is adaptive with other scalars; set 2 is adaptive with eps = 0,
        // and every third of its tensors gets zero gradients (zero m and v: the select must give
        // a zero step, not 0/0).
        Scalars<M> sets[3];
        for (int j = 0; j < 3; j++) {
            const int update = j == 0 ? (step <= 4 ? 1 : (step % 5 == 0 ? 2 : 0)) : 0;
            // grad_mult: 1 (no clipping / scaling) on set 0, a clip coefficient over a loss scale on
            // set 1 (changing every step), a clip coefficient on set 2.
            const double mult = j == 0 ? 1.0 : (j == 1 ? 0.37 / std::ldexp(1.0, step) : 0.83);
            const double s64[8] = {j == 1 ? 0.2 : 0.1, j == 1 ? 0.99 : 0.999, j == 1 ? 0.01 : 0.001,
                                   (j + 1) * 0.01 * std::sqrt(1.0 - std::pow(0.999, step)) / (1.0 - std::pow(0.9, step)),
                                   j == 2 ? 0.0 : 1e-8, (step % 2 && j != 2) ? 0.01 : 0.0, step % 3 ? 1.0 : 1.0 - 1e-4, mult};
            sets[j] = {(M)s64[0], (M)s64[1], (M)s64[2], (M)s64[3], (M)s64[4], (M)s64[5], (M)s64[6], (M)s64[7], update, 0};
        }
        for (size_t i = 0; i < ts.size(); i++)
            if (set_of(i) == 2 && (i / 3) % 3 == 0)
                for (auto& x : ts[i].g_store) x = from_f<P>(0.f);
        uint32_t blocks;
        size_t map_word;
        std::vector<uint64_t> words = build_table(ts, blocks, map_word);
        if (step == 1)
            for (size_t i = 0; i < map_word; i += 8) vec_tensors += words[i + 6] & 1;
        const Entry* table = reinterpret_cast<const Entry*>(words.data());
        const uint32_t* map = reinterpret_cast<const uint32_t*>(words.data() + map_word);
        launch(blocks, [&] { kernel(table, map, sets); });
        for (size_t j = 0; j < ts.size(); j++) {
            auto& t = ts[j];
            const Scalars<M>& ks = sets[set_of(j)];
            for (size_t i = 0; i < t.n; i++) {
                // The rule of src/rule.rs, written out independently of the kernel's radam_elem.
                const M p = Traits<P>::load(t.p_ref[i]);
                const M g = Traits<P>::load(t.g()[i]) * ks.grad_mult + ks.l2 * p;
                t.m_ref[i] = t.m_ref[i] + ks.one_minus_beta1 * (g - t.m_ref[i]);
                t.v_ref[i] = ks.beta2 * t.v_ref[i] + ks.one_minus_beta2 * g * g;
                if (ks.update == 0) {
                    const M d = std::sqrt(t.v_ref[i]) + ks.eps;
                    const M u = d == M(0) ? M(0) : ks.step_size * t.m_ref[i] / d;
                    t.p_ref[i] = Traits<P>::store(ks.decay * p - u);
                } else if (ks.update == 1) {
                    t.p_ref[i] = Traits<P>::store(ks.decay * p - ks.step_size * t.m_ref[i]);
                }
            }
        }
    }
    size_t elems = 0;
    for (size_t j = 0; j < ts.size(); j++) {
        auto& t = ts[j];
        elems += t.n;
        for (size_t i = 0; i < t.n; i++) {
            CHECK(bits(t.p()[i]) == bits(t.p_ref[i]), "%s tensor %zu (n=%zu off=%zu) param[%zu]", name, j, t.n, t.off, i);
            CHECK(Traits<P>::load(t.p()[i]) == Traits<P>::load(t.p()[i]), "%s tensor %zu param[%zu] is NaN", name, j, i);
            CHECK(bits(t.m[i]) == bits(t.m_ref[i]), "%s tensor %zu (n=%zu off=%zu) m[%zu]", name, j, t.n, t.off, i);
            CHECK(bits(t.v[i]) == bits(t.v_ref[i]), "%s tensor %zu (n=%zu off=%zu) v[%zu]", name, j, t.n, t.off, i);
        }
        for (size_t i = 0; i < tails[j].size(); i++)
            CHECK(bits(t.p()[t.n + i]) == bits(tails[j][i]), "%s tensor %zu: wrote past the end", name, j);
    }

    // Non-finite check: plant inf / NaN at chosen places, expect exactly those tensors flagged.
    for (auto& t : ts) for (auto& x : t.g_store) x = from_f<P>(u(rng));
    // Tensor 4: n = 8, aligned; 27: n = 4097 at offset 1 (scalar path, second chunk); the last:
    // n = 65543 with an aligned grad and an unaligned param (vector check, scalar update).
    const size_t bad[3] = {4, 27, ts.size() - 1};
    ts[4].g()[ts[4].n - 1] = from_f<P>(INFINITY);
    ts[27].g()[4096] = from_f<P>(-INFINITY);
    ts.back().g()[4097] = from_f<P>(NAN);
    uint32_t blocks;
    size_t map_word;
    std::vector<uint64_t> words = build_table(ts, blocks, map_word);
    std::vector<uint32_t> flags(ts.size(), 0);
    launch(blocks, [&] {
        check(reinterpret_cast<const Entry*>(words.data()), reinterpret_cast<const uint32_t*>(words.data() + map_word), flags.data());
    });
    for (size_t j = 0; j < ts.size(); j++) {
        bool want = j == bad[0] || j == bad[1] || j == bad[2];
        CHECK(flags[j] == (uint32_t)want, "%s check: tensor %zu flag %u, want %d", name, j, flags[j], (int)want);
    }
    // Sum of squares: one partial per block, added per tensor; against a plain f64 sum.
    std::vector<double> partials(blocks, -1.0);
    launch(blocks, [&] {
        sumsq(reinterpret_cast<const Entry*>(words.data()), reinterpret_cast<const uint32_t*>(words.data() + map_word),
              partials.data());
    });
    size_t b = 0;
    for (size_t j = 0; j < ts.size(); j++) {
        auto& t = ts[j];
        double got = 0, want = 0;
        for (size_t k = 0; k < (t.n + RADAM_CHUNK - 1) / RADAM_CHUNK; k++) got += partials[b++];
        for (size_t i = 0; i < t.n; i++) {
            const double x = (double)Traits<P>::load(t.g()[i]);
            want += x * x;
        }
        bool want_bad = j == bad[0] || j == bad[1] || j == bad[2];
        if (want_bad) {
            CHECK(!std::isfinite(got), "%s sumsq: tensor %zu should be non-finite, got %g", name, j, got);
        } else {
            CHECK(std::fabs(got - want) <= 1e-12 * want, "%s sumsq: tensor %zu (n=%zu) %.17g vs %.17g", name, j, t.n,
                  got, want);
        }
    }
    CHECK(b == blocks, "%s sumsq: %zu partials for %u blocks", name, b, blocks);
    printf("%-5s %zu tensors (%zu on the vector path), %zu elements, 12 steps: %s\n", name, ts.size(), vec_tensors,
           elems, failures ? "MISMATCH" : "bit-identical to the reference; non-finite check and sums ok");
}

// ---- rounding modes (src/precision.rs) for f16 / bf16 params -----------------------------------
// Tensors of several sizes and offsets, each with a u16 buffer, 12 steps (sgd, adaptive, frozen
// steps), every mode: params, buffers and moments bit for bit against a reference that runs the
// rule on f32 values and rounds them as the mode says (ref_round_store, ref_rounding.h).
template <typename H>
static void run_modes(const char* name, void (*kernel)(const Entry*, const uint32_t*, const Scalars<float>*), bool bf16) {
    const size_t sizes[] = {1, 7, 8, 9, 1025, 4097, 2 * 4096 + 3};
    const size_t offs[] = {0, 1};
    for (int mode = 0; mode < 4; mode++) {
        if (mode == MODE_REMAINDER && !bf16) continue;
        std::mt19937_64 rng(99 + mode);
        std::uniform_real_distribution<float> u(-1.f, 1.f);
        struct T {
            size_t n, off;
            std::vector<H> p, g, pr;
            std::vector<uint16_t> a, ar;
            std::vector<float> m, v, mr, vr, master;
            uint64_t key;
        };
        std::vector<T> ts;
        for (size_t off : offs)
            for (size_t n : sizes) {
                T t;
                t.n = n;
                t.off = off;
                t.p.resize(n + off + 8);
                t.g.resize(n + off + 8);
                t.a.assign(n + off + 8, 0);
                for (auto& x : t.p) x = from_f<H>(u(rng));
                if (n >= 9) {  // params that are inf: they stay inf (or become NaN) in every mode
                    t.p[off + 5] = from_f<H>(INFINITY);
                    t.p[off + 6] = from_f<H>(-INFINITY);
                }
                t.pr.assign(t.p.begin() + off, t.p.begin() + off + n);
                t.master.resize(n);
                for (size_t i = 0; i < n; i++) t.master[i] = Traits<H>::load(t.pr[i]);
                t.ar.assign(n, 0);
                t.m.assign(n, 0.f); t.v.assign(n, 0.f); t.mr = t.m; t.vr = t.v;
                t.key = mix64(ts.size() + 1000 * mode);
                ts.push_back(std::move(t));
            }
        for (int step = 1; step <= 12; step++) {
            for (auto& t : ts) for (auto& x : t.g) x = from_f<H>(u(rng) * 0.5f);
            // Non-finite gradients (NonFinite::Propagate: the host lets them through): NaN and
            // +-inf into the moments, so NaN / inf results reach every mode's store.
            if (step == 6 || step == 9)
                for (auto& t : ts)
                    if (t.n >= 9) {
                        t.g[t.off + 2] = from_f<H>(NAN);
                        t.g[t.off + 3] = from_f<H>(step == 6 ? INFINITY : -INFINITY);
                        t.g[t.off + t.n - 1] = from_f<H>(-NAN);
                    }
            const int update = step <= 3 ? 1 : (step % 5 == 0 ? 2 : 0);
            // Small steps (lr 1e-4) so that most updates are below half an ulp.
            Scalars<float> k = {0.1f, 0.999f, 0.001f, (float)(1e-4 * step), 1e-8f, 0.f, 1.f, 1.f, update, 0};
            std::vector<uint64_t> words;
            std::vector<uint32_t> map;
            for (size_t e = 0; e < ts.size(); e++) {
                T& t = ts[e];
                uint64_t pp = (uint64_t)(t.p.data() + t.off), gp = (uint64_t)(t.g.data() + t.off);
                uint64_t mp = (uint64_t)t.m.data(), vp = (uint64_t)t.v.data(), ap = (uint64_t)(t.a.data() + t.off);
                uint64_t aligned = ((pp | gp | mp | vp | ap) % 16) == 0;
                uint64_t flags = aligned | ((uint64_t)(gp % 16 == 0) << 1) | ((uint64_t)mode << 4);
                uint64_t stream = ref_stream(7, t.key, (uint64_t)step);
                uint64_t entry[12] = {pp, gp, mp, vp, t.n, (uint64_t)map.size(), flags, e,
                                      mode == MODE_REMAINDER || mode == MODE_KAHAN ? ap : 0,
                                      mode == MODE_STOCHASTIC ? stream : 0, 0, 0};
                words.insert(words.end(), entry, entry + 12);
                for (uint64_t b = 0; b < (t.n + RADAM_CHUNK - 1) / RADAM_CHUNK; b++) map.push_back((uint32_t)e);
                // Reference.
                for (size_t i = 0; i < t.n; i++) {
                    const float old = mode == MODE_REMAINDER ? t.master[i] : Traits<H>::load(t.pr[i]);
                    // The kernel's expression (0 * inf is NaN: an inf param gives a NaN gradient).
                    const float g = Traits<H>::load(t.g[t.off + i]) * k.grad_mult + k.l2 * old;
                    t.mr[i] = t.mr[i] + k.one_minus_beta1 * (g - t.mr[i]);
                    t.vr[i] = k.beta2 * t.vr[i] + k.one_minus_beta2 * g * g;
                    float x = old;
                    if (update == 0) {
                        const float d = std::sqrt(t.vr[i]) + k.eps;
                        x = k.decay * old - (d == 0.f ? 0.f : k.step_size * t.mr[i] / d);
                    } else if (update == 1) {
                        x = k.decay * old - k.step_size * t.mr[i];
                    }
                    if (update != 2)
                        ref_round_store<H>(mode, x, old, t.pr[i], t.ar[i], ref_segment_word(stream, i), i, t.master[i]);
                }
            }
            size_t map_word = words.size();
            for (size_t i = 0; i < map.size(); i += 2)
                words.push_back((uint64_t)map[i] | ((uint64_t)(i + 1 < map.size() ? map[i + 1] : 0) << 32));
            const Entry* table = reinterpret_cast<const Entry*>(words.data());
            const uint32_t* bmap = reinterpret_cast<const uint32_t*>(words.data() + map_word);
            launch((uint32_t)map.size(), [&] { kernel(table, bmap, &k); });
        }
        size_t elems = 0, moved = 0;
        for (size_t e = 0; e < ts.size(); e++) {
            T& t = ts[e];
            for (size_t i = 0; i < t.n; i++, elems++) {
                CHECK(bits(t.p[t.off + i]) == bits(t.pr[i]), "%s mode %d tensor %zu (n=%zu) param[%zu]", name, mode, e, t.n, i);
                if (mode == MODE_REMAINDER || mode == MODE_KAHAN)
                    CHECK(t.a[t.off + i] == t.ar[i], "%s mode %d tensor %zu aux[%zu]", name, mode, e, i);
                // Moments: bits, or both NaN (the compiler may swap the operands of a commutative
                // product of two NaNs, and x86 keeps the first one's payload and sign).
                const auto same = [](float a, float b) { return bits(a) == bits(b) || (a != a && b != b); };
                CHECK(same(t.m[i], t.mr[i]) && same(t.v[i], t.vr[i]), "%s mode %d tensor %zu m/v[%zu] %08x %08x vs %08x %08x",
                      name, mode, e, i, (unsigned)bits(t.m[i]), (unsigned)bits(t.v[i]), (unsigned)bits(t.mr[i]),
                      (unsigned)bits(t.vr[i]));
                moved += t.a[t.off + i] != 0;
            }
            for (size_t i = t.n + t.off; i < t.p.size(); i++) CHECK(t.a[i] == 0, "%s mode %d: aux written past the end", name, mode);
        }
        if (mode == MODE_REMAINDER || mode == MODE_KAHAN) CHECK(moved > elems / 2, "%s mode %d: buffer unused", name, mode);
        size_t nonfinite = 0;
        for (auto& t : ts)
            for (size_t i = 0; i < t.n; i++) nonfinite += !std::isfinite(Traits<H>::load(t.pr[i]));
        CHECK(nonfinite >= 4 * 10, "%s mode %d: only %zu non-finite params", name, mode, nonfinite);
        printf("%-5s rounding mode %d: %zu tensors, %zu elements (%zu inf / NaN params), 12 steps: %s\n", name, mode,
               ts.size(), elems, nonfinite,
               failures ? "MISMATCH" : "params, buffers and moments bit-identical to the reference");
    }
}

// The kernel's hash against the constants of scripts/hash_constants.py (indices >= 2^32
// included), and the reference's; the kernel's sr_bf16 / sr_f16 on non-finite inputs whose bits
// arithmetic on the host never produces (a NaN with its payload in the low half only, the GPU's
// canonical NaN 0x7fffffff, where adding the random bits would carry out of the NaN).
static void check_hash_and_nonfinite() {
    CHECK(ref_hash_constants_ok(segment_word, element_bits, mix64(mix64(mix64(3) ^ 0x123456789abcdef0ull) ^ 17)),
          "kernel hash differs from scripts/hash_constants.py");
    CHECK(ref_hash_constants_ok(ref_segment_word, ref_element_bits, ref_stream(3, 0x123456789abcdef0ull, 17)),
          "reference hash differs from scripts/hash_constants.py");
    const uint32_t xs[] = {0x7f800000u, 0xff800000u, 0x7fc00000u, 0xffc00000u, 0x7f800001u,
                           0xff800001u, 0x7fffffffu, 0xffffffffu, 0x7fbfffffu, 0x7f80ffffu};
    const uint32_t rs[] = {0u, 1u, 0xffffu, 0x8000u, 0xffffffffu, 0x12345678u};
    for (uint32_t b : xs)
        for (uint32_t r : rs) {
            float x;
            memcpy(&x, &b, 4);
            CHECK(sr_bf16(x, r) == ref_sr_nonfinite(b, true), "sr_bf16(%08x, %08x) = %04x, want %04x", b, r,
                  sr_bf16(x, r), ref_sr_nonfinite(b, true));
            CHECK(sr_f16(x, r) == ref_sr_nonfinite(b, false), "sr_f16(%08x, %08x) = %04x, want %04x", b, r,
                  sr_f16(x, r), ref_sr_nonfinite(b, false));
        }
    printf("hash: kernel and reference equal the Python constants (index >= 2^32 too); sr of inf / NaN: %s\n",
           failures ? "MISMATCH" : "ok");
}

int main() {
    check_hash_and_nonfinite();
    // The moment buffers come from std::vector: make sure the vector path is really exercised
    // (glibc's malloc aligns to 16 bytes).
    run_dtype<float, float>("f32", radam_mt_f32, radam_check_b32, radam_sumsq_f32);
    run_dtype<double, double>("f64", radam_mt_f64, radam_check_b64, radam_sumsq_f64);
    run_dtype<__half, float>("f16", radam_mt_f16, radam_check_b16h, radam_sumsq_f16);
    run_dtype<__nv_bfloat16, float>("bf16", radam_mt_bf16, radam_check_b16b, radam_sumsq_bf16);
    run_modes<__half>("f16", radam_mt_f16, false);
    run_modes<__nv_bfloat16>("bf16", radam_mt_bf16, true);
    if (failures) {
        printf("radam_emu: %d mismatches\n", failures);
        return 1;
    }
    printf("radam_emu: all kernels match the reference\n");
    return 0;
}
