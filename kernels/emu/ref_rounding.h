// The reference of the param side of the update (src/precision.rs, one element): how a mode
// stores the f32 result `x` of the rule on the loaded `old` into a half param `p` and its u16
// buffer `aux` (remainder: the f32 master kept in full in `master` and split; bf16 stochastic:
// "round up iff the random low half carries into the upper half", written independently of the
// kernel's sr_bf16). Shared by radam_emu.cpp (radam_mt) and radam8_emu.cpp (radam8_mt); include
// it after ../radam.cu (it uses MODE_*, HalfOps, Traits, element_bits).
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>

template <typename H>
static float ref_round_store(int mode, float x, float old, H& p, uint16_t& aux, uint64_t w, uint64_t i, float& master) {
    if (mode == MODE_REMAINDER) {
        master = x;
        uint32_t b;
        memcpy(&b, &x, 4);
        uint16_t hi = (uint16_t)(b >> 16);
        memcpy(&p, &hi, 2);
        aux = (uint16_t)(b & 0xffff);
    } else if (mode == MODE_KAHAN) {
        const float y = HalfOps<H>::value(aux) + (x - old);
        uint16_t pb, cb;
        const float pn = HalfOps<H>::rn(old + y, pb);
        HalfOps<H>::rn(y - (pn - old), cb);
        memcpy(&p, &pb, 2);
        aux = cb;
    } else if (mode == MODE_STOCHASTIC) {
        const uint32_t r = element_bits(w, i);
        uint32_t b;
        memcpy(&b, &x, 4);
        uint16_t out;
        if (sizeof(H) == 2 && std::is_same<H, __nv_bfloat16>::value && std::isfinite(x)) {
            const uint32_t low = b & 0xffff;
            out = (uint16_t)((b >> 16) + ((r & 0xffff) + low >= 0x10000 ? 1 : 0));
        } else {
            out = HalfOps<H>::stochastic(x, r);
        }
        memcpy(&p, &out, 2);
    } else {
        p = Traits<H>::store(x);
    }
    return 0;
}

