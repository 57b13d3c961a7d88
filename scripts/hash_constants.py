#!/usr/bin/env python3
"""Reference values of the stochastic-rounding hash (src/precision.rs `stream`, `segment_word`,
`element_bits`; kernels/radam.cu), computed independently of the Rust and CUDA code, for the
constants pinned in src/precision.rs (`hash_constants_for_a_large_index`) and
kernels/emu/radam_emu.cpp (`hash_constants`). Run: python3 scripts/hash_constants.py"""
M64, M32 = (1 << 64) - 1, (1 << 32) - 1

def mix64(z):
    z = ((z ^ (z >> 30)) * 0xbf58476d1ce4e5b9) & M64
    z = ((z ^ (z >> 27)) * 0x94d049bb133111eb) & M64
    return z ^ (z >> 31)

def lowbias32(x):
    x ^= x >> 16
    x = (x * 0x7feb352d) & M32
    x ^= x >> 15
    x = (x * 0x846ca68b) & M32
    return x ^ (x >> 16)

def stream(seed, key, t):
    return mix64(mix64(mix64(seed) ^ key) ^ t)

def segment_word(s, i):
    return mix64(s ^ (i >> 32))

def element_bits(w, i):
    return lowbias32(((i & M32) + (w & M32)) & M32) ^ (w >> 32)

s = stream(3, 0x1234_5678_9abc_def0, 17)
print(f"stream(3, 0x123456789abcdef0, 17) = {s:#018x}")
for i in [0, 5, (1 << 32) + 5, (3 << 32) + 0xffff_fff0]:
    w = segment_word(s, i)
    print(f"i = {i:#x}: segment_word = {w:#018x}, element_bits = {element_bits(w, i):#010x}")
