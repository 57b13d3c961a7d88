#!/usr/bin/env python3
"""Reference for candle-radam's 8-bit optimizer state (src/quant.rs, src/cpu8.rs): numpy only.

Writes ``quant8.safetensors`` next to this script, holding every input it generates and every
result, f32 values stored as f32 (bit-exact), codes as u8:

  * ``map.signed`` / ``map.unsigned``: bitsandbytes' ``create_dynamic_map(signed=True/False)``
    (``bitsandbytes/functional.py``, ``max_exponent_bits=7``, ``total_bits=8``), each value
    evaluated in f64 as ``10^(i-6) * (0.1 + (0.9 * (2j+1)) / (2(k-1)))`` and rounded once to f32;
  * ``q.x``: a known array (partial last block, an all-zero block, exact ties, large and tiny
    magnitudes) and, per map, ``q.{signed,unsigned}.codes`` / ``.absmax`` / ``.deq``: its
    block-wise quantization (block 256: absmax = max |x|, code = nearest map entry to x / absmax,
    ties to the lower code) and dequantization (map[code] * absmax);
  * ``qi.x``: two blocks with +-inf (absmax saturated to f32::MAX: +inf gets the top code,
    -inf the bottom one, every finite element stays finite) and one block with a NaN (absmax
    NaN, every code 0), quantized and dequantized per map as ``q.x`` (``qi.{map}.*``);
  * for each case in CASES (``step.CASE.*``): parameters ``p``, gradient ``g`` and 8-bit moments
    ``m_codes``, ``m_absmax``, ``v_codes``, ``v_absmax`` (quantized from known f32 moments), the
    f32 step scalars used (``scalars``: one_minus_beta1, beta2, one_minus_beta2, step_size, eps,
    l2, decay, grad_mult, the f32 rounding of the f64 values candle-radam's StepScalars computes
    for the case's hyper-parameters and step), and the results of ONE fused 8-bit RAdam step:
    dequantize, the f32 rule exactly as src/cpu.rs evaluates it, requantize with the new absmax:
    ``p_out``, ``m_codes_out``, ``m_absmax_out``, ``v_codes_out``, ``v_absmax_out``.

With torch installed it also prints how far these maps are from torch's own evaluation of
bitsandbytes' code (f32 linspace), in f32 ulps.

Regenerate:  python3 tests/golden/gen_quant8.py
"""
import math
import os

import numpy as np
from safetensors.numpy import save_file

HERE = os.path.dirname(os.path.abspath(__file__))
BLOCK = 256
f32 = np.float32
FMAX = np.finfo(np.float32).max
DECADES = [1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0]


def dynamic_map(signed):
    data = []
    for i, scale in enumerate(DECADES):
        k = 2**i + 1 if signed else 2 ** (i + 1) + 1
        for j in range(k - 1):
            mean = 0.1 + (0.9 * float(2 * j + 1)) / float(2 * (k - 1))
            x = f32(scale * mean)
            data.append(x)
            if signed:
                data.append(-x)
    data += [f32(0.0), f32(1.0)]
    assert len(data) == 256
    return np.array(sorted(data), dtype=f32)


def nearest_code(mp, y):
    lo, step = 0, 128
    while step > 0:
        if mp[lo + step] <= y:
            lo += step
        step >>= 1
    hi = min(lo + 1, 255)
    if hi != lo and f32(mp[hi] - y) < f32(y - mp[lo]):
        return hi
    return lo


def quantize(mp, x):
    codes = np.zeros(len(x), dtype=np.uint8)
    absmax = []
    for s in range(0, len(x), BLOCK):
        blk = x[s : s + BLOCK]
        a = f32(np.max(np.abs(blk))) if len(blk) else f32(0)
        if a > FMAX:  # an overflowed moment: saturate (NaN stays NaN)
            a = FMAX
        absmax.append(a)
        for i, e in enumerate(blk):
            y = f32(0) if a == 0 else f32(e / a)
            codes[s + i] = nearest_code(mp, y)
    return codes, np.array(absmax, dtype=f32)


def dequantize(mp, codes, absmax):
    out = np.zeros(len(codes), dtype=f32)
    for b, a in enumerate(absmax):
        sl = slice(b * BLOCK, (b + 1) * BLOCK)
        out[sl] = mp[codes[sl]] * a
    return out


def scalars(lr, beta1, beta2, eps, wd, decoupled, t):
    """torch.optim.RAdam's step scalars in f64 (candle-radam's StepScalars, direct formulas)."""
    bc1 = 1.0 - beta1**t
    bc2 = 1.0 - beta2**t
    rho_inf = 2.0 / (1.0 - beta2) - 1.0
    rho_t = rho_inf - 2.0 * t * beta2**t / bc2
    if rho_t > 5.0:
        r = math.sqrt((rho_t - 4) * (rho_t - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho_t))
        update, step_size = 0, lr * r * math.sqrt(bc2) / bc1
    else:
        update, step_size = 1, lr / bc1
    decay = 1.0 - lr * wd if decoupled and wd != 0 else 1.0
    l2 = 0.0 if decoupled else wd
    k = [1.0 - beta1, beta2, 1.0 - beta2, step_size, eps, l2, decay, 1.0]
    return np.array(k, dtype=f32), update


def step(p, g, m, v, k, update):
    """The f32 rule of src/cpu.rs (`fused`), same operation order."""
    omb1, b2, omb2, ss, eps, l2, decay, gm = k
    g = g * gm + l2 * p
    m = m + omb1 * (g - m)
    v = b2 * v + omb2 * g * g
    if update == 0:
        d = np.sqrt(v) + eps
        u = ss * m / d
        u = np.where(d == 0, f32(0), u).astype(f32)
        p = decay * p - u
    elif update == 1:
        p = decay * p - ss * m
    return p.astype(f32), m.astype(f32), v.astype(f32)


# (name, t, weight_decay, decoupled): step 6 is rectified for beta2 = 0.999, step 1 is SGD;
# "overflow" is "adaptive" with huge gradients at two elements, whose v overflows to +inf (the
# absmax saturates: their blocks stay finite; a +-inf m is in ``qi.x``).
CASES = [("adaptive", 6, 0.01, False), ("sgd", 1, 0.1, True), ("overflow", 6, 0.01, False)]
N_STEP = 4096 + 300  # 17 full blocks and a partial one


def main():
    rng = np.random.default_rng(20261129)
    maps = {"signed": dynamic_map(True), "unsigned": dynamic_map(False)}
    out = {"map.signed": maps["signed"], "map.unsigned": maps["unsigned"]}

    # Known array: 5 blocks and a partial one.
    x = (rng.standard_normal(5 * BLOCK + 77) * 0.01).astype(f32)
    x[BLOCK : 2 * BLOCK] = 0  # an all-zero block
    x[2 * BLOCK : 3 * BLOCK] *= f32(1e4)  # large magnitudes
    x[3 * BLOCK : 4 * BLOCK] *= f32(1e-30)  # tiny magnitudes (absmax ~1e-32)
    # Exact ties in block 4: absmax 1 and midpoints of neighbouring signed map entries.
    sm = maps["signed"]
    x[4 * BLOCK] = 1.0
    for i in range(1, 40):
        a, b = sm[100 + i], sm[101 + i]
        x[4 * BLOCK + i] = f32((a + b) / f32(2))
    out["q.x"] = x
    # Non-finite blocks (their own generator: the other arrays stay bit-identical).
    xi = (np.random.default_rng(13).standard_normal(3 * BLOCK) * 0.01).astype(f32)
    xi[7], xi[100] = np.inf, -np.inf
    xi[BLOCK + 9] = -np.inf
    xi[2 * BLOCK + 4] = np.nan
    out["qi.x"] = xi
    for pre, arr in (("q", x), ("qi", xi)):
        for name, mp in maps.items():
            xs = np.abs(arr) if name == "unsigned" else arr
            codes, absmax = quantize(mp, xs)
            out[f"{pre}.{name}.codes"] = codes
            out[f"{pre}.{name}.absmax"] = absmax
            with np.errstate(invalid="ignore"):
                out[f"{pre}.{name}.deq"] = dequantize(mp, codes, absmax)

    for case, t, wd, decoupled in CASES:
        n = N_STEP
        scale = (10.0 ** rng.uniform(-4, 0, size=n // BLOCK + 1)).repeat(BLOCK)[:n]
        p = rng.standard_normal(n).astype(f32)
        g = (rng.standard_normal(n) * 0.1).astype(f32)
        m0 = (rng.standard_normal(n) * scale * 0.01).astype(f32)
        v0 = ((rng.standard_normal(n) * scale * 0.01) ** 2).astype(f32)
        m0[:BLOCK] = 0  # the first block starts from zero moments
        v0[:BLOCK] = 0
        if case == "overflow":
            g[3] = f32(1e22)  # v = (1 - beta2) g^2 overflows to +inf: update 0
            g[2 * BLOCK + 5] = f32(-3e21)
        mc, ma = quantize(maps["signed"], m0)
        vc, va = quantize(maps["unsigned"], v0)
        k, update = scalars(1e-3, 0.9, 0.999, 1e-8, wd, decoupled, t)
        m = dequantize(maps["signed"], mc, ma)
        v = dequantize(maps["unsigned"], vc, va)
        with np.errstate(over="ignore", invalid="ignore"):
            p1, m1, v1 = step(p.copy(), g, m, v, k, update)
        mc1, ma1 = quantize(maps["signed"], m1)
        vc1, va1 = quantize(maps["unsigned"], v1)
        pre = f"step.{case}."
        out.update(
            {
                pre + "p": p,
                pre + "g": g,
                pre + "m_codes": mc,
                pre + "m_absmax": ma,
                pre + "v_codes": vc,
                pre + "v_absmax": va,
                pre + "scalars": k,
                pre + "t": np.array([t], dtype=np.int64),
                pre + "weight_decay": np.array([wd, float(decoupled)], dtype=np.float64),
                pre + "p_out": p1,
                pre + "m_codes_out": mc1,
                pre + "m_absmax_out": ma1,
                pre + "v_codes_out": vc1,
                pre + "v_absmax_out": va1,
            }
        )
    path = os.path.join(HERE, "quant8.safetensors")
    save_file(out, path)
    print(f"wrote {path}")

    try:
        import torch  # noqa: F401

        def bnb(signed):  # bitsandbytes' create_dynamic_map, as written there (torch f32)
            data = []
            for i in range(7):
                k = 2**i + 1 if signed else 2 ** (i + 1) + 1
                b = torch.linspace(0.1, 1, k)
                means = (b[:-1] + b[1:]) / 2.0
                data += ((10 ** (-6 + i)) * means).tolist()
                if signed:
                    data += (-(10 ** (-6 + i)) * means).tolist()
            data += [0, 1.0]
            data.sort()
            return torch.Tensor(data).numpy()

        for name, signed in (("signed", True), ("unsigned", False)):
            ref = bnb(signed).view(np.int32).astype(np.int64)
            ours = maps[name].view(np.int32).astype(np.int64)
            ulps = np.abs(ref - ours)  # same signs, so the bit distance is the ulp distance
            print(
                f"map.{name}: {int((ulps > 0).sum())} of 256 values differ from torch's evaluation "
                f"of bitsandbytes' create_dynamic_map, by at most {int(ulps.max())} f32 ulp(s)"
            )
    except ImportError:
        print("torch not installed: comparison with bitsandbytes' torch evaluation skipped")


if __name__ == "__main__":
    main()
