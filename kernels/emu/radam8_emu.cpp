// Host emulation of the 8-bit state kernels of kernels/radam.cu (radam8_mt_f32/f16/bf16): the
// kernel source compiled with a plain C++ compiler through the CUDA stand-in's device header
// (cuda-standin/kernel_host.h), each block's threads run as fibers by cuda-standin/fibers.cpp, so
// the warp shuffles and barriers of the block max-reduction behave as on a GPU. Checks, against a
// straightforward per-element reference of src/quant.rs + src/cpu8.rs written here, bit for bit:
// codes, absmax, params and rounding buffers, for every param dtype, update branch and (f16 /
// bf16) rounding mode (the param side as ref_rounding.h, shared with radam_emu.cpp), several
// scalar sets in one launch, tensors ending in a partial quantization block and spanning several
// chunks, all-zero blocks with zero moments under l2 = 0 (the absmax-0 guard), a NaN gradient
// (NaN-sticky max: the whole block gets code 0), moments that overflow to +-inf (the absmax
// saturates to FLT_MAX; the rest of the block stays finite). scripts/ci-cuda.sh builds and runs it:
//
//   g++ -O2 -std=c++17 -ffp-contract=off -I$CUDA_HOME/include -Icuda-standin \
//       kernels/emu/radam8_emu.cpp cuda-standin/fibers.cpp -o radam8_emu

#include <algorithm>
#include <cmath>
#include <cstring>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <limits>
#include <random>
#include <vector>

#include "kernel_host.h"
#include "fibers.h"

#include "../radam.cu"
#include "ref_rounding.h"

static int failures = 0;
#define CHECK(cond, ...)                                                         \
    do {                                                                         \
        if (!(cond)) {                                                           \
            if (failures++ < 20) { printf("FAIL: " __VA_ARGS__); printf("\n"); } \
        }                                                                        \
    } while (0)

// ---- reference (src/quant.rs) ------------------------------------------------------------------
static std::vector<float> dynamic_map(bool sign) {
    static const double decades[7] = {1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0};
    std::vector<float> d;
    for (int i = 0; i < 7; i++) {
        const int k = sign ? (1 << i) + 1 : (1 << (i + 1)) + 1;
        for (int j = 0; j < k - 1; j++) {
            const double mean = 0.1 + (0.9 * (double)(2 * j + 1)) / (double)(2 * (k - 1));
            const float x = (float)(decades[i] * mean);
            d.push_back(x);
            if (sign) d.push_back(-x);
        }
    }
    d.push_back(0.0f);
    d.push_back(1.0f);
    std::sort(d.begin(), d.end());
    return d;
}

static uint8_t ref_code(const std::vector<float>& map, float y) {
    int lo = 0;
    for (int step = 128; step > 0; step >>= 1)
        if (map[lo + step] <= y) lo += step;
    const int hi = std::min(lo + 1, 255);
    return (uint8_t)((hi != lo && map[hi] - y < y - map[lo]) ? hi : lo);
}

// src/quant.rs `absmax` over a block: the largest magnitude, NaN if any is NaN (sticky), an
// infinite one saturated to FLT_MAX.
static float ref_max(float a, float b) {
    if (a != a) return a;
    return (b > a || b != b) ? b : a;
}
static uint32_t fbits(float x) {
    uint32_t b;
    memcpy(&b, &x, 4);
    return b;
}
static float ref_saturate(float a) {
    return a > std::numeric_limits<float>::max() ? std::numeric_limits<float>::max() : a;
}

template <typename P> static float to_f(P x) { return Traits<P>::load(x); }
template <typename P> static P from_f(float x) { return Traits<P>::store(x); }

struct Tensor8 {
    uint64_t n;
    uint32_t set;
    std::vector<float> p0, g0;  // values (exactly representable in P)
    std::vector<uint16_t> a0;   // the rounding buffer (remainder, Kahan)
    uint64_t key;               // the stochastic-rounding stream word
    std::vector<uint8_t> mc, vc;
    std::vector<float> ma, va;
};

template <typename P> static uint16_t bits16(P x) {
    uint16_t b;
    memcpy(&b, &x, 2);
    return b;
}

template <typename P>
static void run(const char* name, void (*kernel)(const Entry*, const uint32_t*, const Scalars<float>*, const float*),
                int update, int mode) {
    const bool has_aux = mode == MODE_REMAINDER || mode == MODE_KAHAN;
    const std::vector<float> smap = dynamic_map(true), umap = dynamic_map(false);
    std::vector<float> maps(smap);
    maps.insert(maps.end(), umap.begin(), umap.end());
    std::mt19937 rng(1234 + update + 10 * mode);
    std::normal_distribution<float> nd(0.0f, 1.0f);
    const uint64_t sizes[] = {4096, 4097 + 300, 3 * RADAM_CHUNK + 17, 256 * 5, 256 * 4};
    Scalars<float> sets[2];
    for (int s = 0; s < 2; s++) {
        sets[s] = Scalars<float>{0.1f, 0.999f, 0.001f, s ? 1e-3f : 2.5e-3f, 1e-8f, s ? 0.01f : 0.0f,
                                 s ? 1.0f : 0.9999f, s ? 0.5f : 1.0f, update, 0};
    }
    std::vector<Tensor8> ts;
    for (size_t t = 0; t < 5; t++) {
        Tensor8 x;
        x.n = sizes[t];
        x.set = t == 4 ? 0u : (uint32_t)(t % 2);  // tensor 4: set 0, l2 = 0
        const uint64_t nb = (x.n + 255) / 256;
        for (uint64_t i = 0; i < x.n; i++) {
            x.p0.push_back(to_f<P>(from_f<P>(nd(rng))));
            x.g0.push_back(to_f<P>(from_f<P>(nd(rng) * 0.1f)));
            x.mc.push_back((uint8_t)(rng() & 255));
            x.vc.push_back((uint8_t)(rng() & 255));
            uint16_t a = 0;
            if (mode == MODE_REMAINDER) a = (uint16_t)(rng() & 0xffff);  // the master's low half
            if constexpr (sizeof(P) == 2) {
                if (mode == MODE_KAHAN) a = bits16(from_f<P>(nd(rng) * 1e-4f));  // a compensation
            }
            x.a0.push_back(a);
        }
        x.key = ((uint64_t)rng() << 32 | rng()) * (mode == MODE_STOCHASTIC);
        for (uint64_t b = 0; b < nb; b++) {
            const float scale = std::pow(10.0f, -(float)(b % 6));
            x.ma.push_back(b == 1 ? 0.0f : 0.05f * scale);  // block 1: all-zero moments
            x.va.push_back(b == 1 ? 0.0f : 0.002f * scale * scale);
        }
        if (t == 3) std::fill(x.g0.begin() + 256, x.g0.begin() + 512, 0.0f);  // stays zero
        if (t == 4) {
            // Block 0: truly all zero (zero moments and grads, l2 = 0): new absmax 0, so the
            // guard gives the zero codes (m: 127), not 0 / 0 = NaN's code 0.
            std::fill(x.g0.begin(), x.g0.begin() + 256, 0.0f);
            x.ma[0] = x.va[0] = 0.0f;
            // Block 1: a NaN gradient (NonFinite::Propagate): absmax NaN, every code 0.
            x.g0[256 + 5] = to_f<P>(from_f<P>(std::numeric_limits<float>::quiet_NaN()));
            // Block 2: a finite huge gradient: v = (1 - beta2) g^2 overflows to +inf (f16:
            // the gradient itself is inf): the absmax saturates, the block stays finite.
            x.g0[512 + 3] = to_f<P>(from_f<P>(1e22f));
            // Block 3: m ~ -FLT_MAX, g ~ 3e38: g - m overflows, m = +inf: the top code.
            x.ma[3] = std::numeric_limits<float>::max();
            x.mc[768 + 1] = 0;
            x.g0[768 + 1] = to_f<P>(from_f<P>(3e38f));
        }
        ts.push_back(x);
    }
    // Device copies (host memory: the stand-in runs kernels on the host).
    std::vector<std::vector<P>> p(ts.size()), g(ts.size());
    std::vector<std::vector<uint8_t>> mc(ts.size()), vc(ts.size());
    std::vector<std::vector<uint16_t>> a(ts.size());
    std::vector<std::vector<float>> ma(ts.size()), va(ts.size());
    std::vector<Entry> table;
    std::vector<uint32_t> block_map;
    for (size_t t = 0; t < ts.size(); t++) {
        for (uint64_t i = 0; i < ts[t].n; i++) {
            p[t].push_back(from_f<P>(ts[t].p0[i]));
            g[t].push_back(from_f<P>(ts[t].g0[i]));
        }
        mc[t] = ts[t].mc; vc[t] = ts[t].vc; ma[t] = ts[t].ma; va[t] = ts[t].va; a[t] = ts[t].a0;
        Entry e{};
        e.p = (uint64_t)p[t].data();
        e.g = (uint64_t)g[t].data();
        e.m = (uint64_t)mc[t].data();
        e.v = (uint64_t)vc[t].data();
        e.n = ts[t].n;
        e.first_block = block_map.size();
        e.flags = (uint32_t)mode << 4;
        e.set = ts[t].set;
        e.item = t;
        e.aux = has_aux ? (uint64_t)a[t].data() : 0;
        e.key = ts[t].key;
        e.m_absmax = (uint64_t)ma[t].data();
        e.v_absmax = (uint64_t)va[t].data();
        const uint64_t blocks = (ts[t].n + RADAM_CHUNK - 1) / RADAM_CHUNK;
        for (uint64_t b = 0; b < blocks; b++) block_map.push_back((uint32_t)t);
        table.push_back(e);
    }
    for (uint32_t b = 0; b < block_map.size(); b++) {
        const std::string err = standin::run_block({b, 0, 0}, {RADAM_THREADS, 1, 1}, [&]() {
            kernel(table.data(), block_map.data(), sets, maps.data());
        });
        CHECK(err.empty(), "%s: block %u: %s", name, b, err.c_str());
    }
    // Reference.
    for (size_t t = 0; t < ts.size(); t++) {
        const Tensor8& x = ts[t];
        const Scalars<float>& k = sets[x.set];
        for (uint64_t b0 = 0; b0 < x.n; b0 += 256) {
            const uint64_t b = b0 / 256, e = std::min(x.n, b0 + 256);
            std::vector<float> m, v, pn, olds;
            float am = 0, av = 0;
            for (uint64_t i = b0; i < e; i++) {
                float mi = smap[x.mc[i]] * x.ma[b], vi = umap[x.vc[i]] * x.va[b];
                // The param as loaded: the f32 master (remainder: param bits over the buffer).
                float old = x.p0[i];
                if constexpr (sizeof(P) == 2) {
                    if (mode == MODE_REMAINDER) {
                        const uint32_t mb = (uint32_t)bits16(from_f<P>(x.p0[i])) << 16 | x.a0[i];
                        memcpy(&old, &mb, 4);
                    }
                }
                // The rule as src/cpu.rs writes it.
                const float gg = x.g0[i] * k.grad_mult + k.l2 * old;
                mi = mi + k.one_minus_beta1 * (gg - mi);
                vi = k.beta2 * vi + k.one_minus_beta2 * gg * gg;
                float pv = old;
                if (update == 0) {
                    const float d = std::sqrt(vi) + k.eps;
                    const float u = k.step_size * mi / d;
                    pv = k.decay * old - (d == 0.0f ? 0.0f : u);
                } else if (update == 1) {
                    pv = k.decay * old - k.step_size * mi;
                }
                m.push_back(mi); v.push_back(vi); pn.push_back(pv); olds.push_back(old);
                am = ref_max(am, std::fabs(mi));
                av = ref_max(av, std::fabs(vi));
            }
            am = ref_saturate(am);
            av = ref_saturate(av);
            if (t == 4 && update != 2) {
                // The planted cases hold: zero block (absmax 0), NaN block, saturated blocks.
                CHECK(b != 0 || (am == 0.0f && av == 0.0f), "%s: tensor 4 block 0 not zero", name);
                CHECK(b != 1 || (am != am && av != av), "%s: tensor 4 block 1 not NaN", name);
                CHECK(b != 2 || av == std::numeric_limits<float>::max(), "%s: block 2: av %g", name, av);
                CHECK(b != 3 || am == std::numeric_limits<float>::max(), "%s: block 3: am %g", name, am);
            }
            CHECK(memcmp(&ma[t][b], &am, 4) == 0 && memcmp(&va[t][b], &av, 4) == 0, "%s upd %d tensor %zu block %llu: absmax %g %g (%08x %08x), want %g %g (%08x %08x)",
                  name, update, t, (unsigned long long)b, ma[t][b], va[t][b], fbits(ma[t][b]), fbits(va[t][b]),
                  am, av, fbits(am), fbits(av));
            for (uint64_t i = b0; i < e; i++) {
                const uint8_t cm = ref_code(smap, am == 0.0f ? 0.0f : m[i - b0] / am);
                const uint8_t cv = ref_code(umap, av == 0.0f ? 0.0f : v[i - b0] / av);
                CHECK(mc[t][i] == cm && vc[t][i] == cv, "%s upd %d tensor %zu elem %llu: codes %d %d, want %d %d",
                      name, update, t, (unsigned long long)i, mc[t][i], vc[t][i], cm, cv);
                // The param side: stored under the mode (frozen: nothing written).
                P want = from_f<P>(x.p0[i]);
                uint16_t want_aux = x.a0[i];
                if (update != 2) {
                    if constexpr (sizeof(P) == 2) {
                        float master;
                        ref_round_store<P>(mode, pn[i - b0], olds[i - b0], want, want_aux,
                                           segment_word(x.key, i), i, master);
                    } else {
                        want = from_f<P>(pn[i - b0]);
                    }
                }
                CHECK(memcmp(&want, &p[t][i], sizeof(P)) == 0,
                      "%s mode %d upd %d tensor %zu elem %llu: param %.9g, want %.9g", name, mode, update, t,
                      (unsigned long long)i, to_f<P>(p[t][i]), to_f<P>(want));
                CHECK(a[t][i] == want_aux, "%s mode %d upd %d tensor %zu elem %llu: aux %#x, want %#x", name,
                      mode, update, t, (unsigned long long)i, a[t][i], want_aux);
            }
        }
    }
}

int main() {
    for (int update = 0; update < 3; update++) {
        run<float>("radam8_mt_f32", radam8_mt_f32, update, MODE_NEAREST);
        for (int mode = 0; mode < 4; mode++) {
            if (mode != MODE_REMAINDER) run<__half>("radam8_mt_f16", radam8_mt_f16, update, mode);
            run<__nv_bfloat16>("radam8_mt_bf16", radam8_mt_bf16, update, mode);
        }
    }
    if (failures) {
        printf("radam8_emu: %d check(s) FAILED\n", failures);
        return 1;
    }
    printf("radam8_emu: 8-bit kernels match the reference bit for bit (f32/f16/bf16 params, 3 branches, every rounding mode)\n");
    return 0;
}
