#!/usr/bin/env python3
"""Writes rho.json: exact reference values of RAdam's per-step scalars, checked by tests/rho.rs.

For beta2 (taken as the exact binary value of the f64) and step t >= 1:

    beta2^t,  bc2 = 1 - beta2^t,  rho_inf = 2 / (1 - beta2) - 1,
    rho_t = rho_inf - 2 t beta2^t / (1 - beta2^t),
    tractable = rho_t > 5,
    r_t = sqrt((rho_t - 4)(rho_t - 2) rho_inf / ((rho_inf - 4)(rho_inf - 2) rho_t))  (when tractable)

Arithmetic: Python ``fractions`` (exact rationals). beta2^t is exact for t <= EXACT_T; above that
it is computed by square-and-multiply on binary numbers rounded (toward zero) to PREC bits after
every product, a relative error below 2 * 64 * 2^-PREC, and terms below 2^-UNDERFLOW_BITS are
dropped (they change rho_t, which is >= 1, by far less than 2^-1000). The relative error this
leaves in rho_t is below 2^-900 (the cancellation in the formula costs at most 2^60), checked
against the distance of rho_t from 5 so that the recorded branch is exact. Square roots: integer
square root at 2 * PREC bits. Every value is then rounded once to the nearest f64.

The grid: beta2 from 0 to 1 - 2^-53 (0.5, around 2/3, 0.9, 0.999, ..., 1 - 10^-k, 1 - k 2^-53) at
steps 1 to 1e9, plus 160 seeded random beta2 (``random_betas``), each also at its crossing step
(the first with rho_t > 5) and the steps either side.

For comparison, each case also records the branch that torch's formula takes when evaluated in
f64 exactly as ``torch.optim.RAdam`` does (``beta2 ** step`` etc.); the grid includes cases where
that branch is wrong (beta2 within a few ulp of 1 and just above 2/3, at the crossing step).

Regenerate (standard library only):  python3 tests/golden/gen_rho.py
"""
import json
import math
import os
import random
from fractions import Fraction

HERE = os.path.dirname(os.path.abspath(__file__))
EXACT_T = 2000
PREC = 1100
UNDERFLOW_BITS = 4000
THRESHOLD = 5


def pow_rounded(beta: Fraction, t: int) -> Fraction:
    """beta^t for 0 < beta < 1: exact for t <= EXACT_T, else to PREC bits (see module doc)."""
    if t <= EXACT_T:
        return beta**t
    # (mantissa, exponent) binary numbers: value = m * 2^e.
    num, den = beta.numerator, beta.denominator  # den is a power of two
    base = (num, -(den.bit_length() - 1))
    acc = (1, 0)

    def mul(a, b):
        m, e = a[0] * b[0], a[1] + b[1]
        extra = m.bit_length() - PREC
        if extra > 0:
            m >>= extra
            e += extra
        return (m, e)

    while t:
        if t & 1:
            acc = mul(acc, base)
        t >>= 1
        if t:
            base = mul(base, base)
        if acc[0].bit_length() + acc[1] < -UNDERFLOW_BITS:
            return Fraction(0)
    m, e = acc
    return Fraction(m * 2**e) if e >= 0 else Fraction(m, 2**-e)


def sqrt_frac(x: Fraction) -> float:
    """sqrt(x) to 2 * PREC bits, rounded to f64."""
    shift = 2 * PREC
    r = math.isqrt(x.numerator * 2 ** (2 * shift) // x.denominator)
    return float(Fraction(r, 2**shift))


def exact(beta2: float, t: int) -> dict:
    b = Fraction(beta2)
    rho_inf = 2 / (1 - b) - 1
    if b == 0:
        p = Fraction(0)
    else:
        p = pow_rounded(b, t)
    bc2 = 1 - p
    rho_t = rho_inf - 2 * t * p / bc2
    margin = rho_t - THRESHOLD
    if t > EXACT_T and p != 0:
        # rho_t carries a relative error below 2^-900 (module doc): the branch must be exact.
        assert margin == 0 or abs(margin) > abs(rho_t) * Fraction(1, 2**900), (beta2, t)
    out = {
        "rho_inf": float(rho_inf),
        "rho_t": float(rho_t),
        "bc2": float(bc2),
        "tractable": margin > 0,
        "margin": float(margin),
    }
    if margin > 0:
        r2 = (rho_t - 4) * (rho_t - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho_t)
        out["r_t"] = sqrt_frac(r2)
    else:
        out["r_t"] = None
    return out


def torch_formula(beta2: float, t: int):
    """torch.optim.RAdam's f64 evaluation (single-tensor path): rho_t and its branch."""
    rho_inf = 2 / (1 - beta2) - 1
    bc2 = 1 - beta2**t
    rho_t = rho_inf - 2 * t * (beta2**t) / bc2
    return rho_t, rho_t > 5


def first_tractable(beta2: float):
    """Smallest t with rho_t > 5 (rho_t increases with t), or None if rho_inf <= 5."""
    b = Fraction(beta2)
    if 2 / (1 - b) - 1 <= THRESHOLD:
        return None
    lo, hi = 0, 1
    while not exact(beta2, hi)["tractable"]:
        lo, hi = hi, hi * 2
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if exact(beta2, mid)["tractable"]:
            hi = mid
        else:
            lo = mid
    return hi


def betas():
    two_thirds = 2 / 3
    out = [0.0, 5e-324, 1e-300, 0.1, 0.5, 0.6, 0.66,
           math.nextafter(two_thirds, 0), two_thirds]
    x = two_thirds
    for _ in range(4):  # rho_inf just above 5: crosses 5 after ~90 steps
        x = math.nextafter(x, 1)
        out.append(x)
    out += [0.7, 0.75, 0.8, 0.85, 0.9, 0.95, 0.98, 0.99, 0.995, 0.998, 0.999, 0.9995,
            0.9999, 0.99999]
    out += [1 - 10.0**-k for k in range(6, 16)]
    out += [1 - 2.0**-k for k in (40, 45, 48, 50, 51, 52, 53)]
    out += [1 - k * 2.0**-53 for k in (3, 5, 7, 9, 11, 13, 17, 33, 65)]
    return sorted(set(out))


STEPS = [1, 2, 3, 4, 5, 6, 7, 8, 10, 20, 50, 100, 200, 1000, 2001, 5000, 10**4, 10**5, 10**6,
         10**7, 10**8, 10**9]


def random_betas():
    """Seeded random beta2: uniform in [0, 1), log-uniform 1 - beta2 in [2^-53, 1/2), and one ulp
    to a million ulp above 2/3 (rho_inf just above 5: the branch is decided on ~1e-16)."""
    rng = random.Random(20261129)
    out = [rng.random() for _ in range(40)]
    out += [1 - 2.0 ** -rng.uniform(1, 53) for _ in range(80)]
    out += [2 / 3 + int(10 ** rng.uniform(0, 6)) * 2.0**-53 for _ in range(40)]
    return sorted(set(b for b in out if 0 <= b < 1) - set(betas()))


RANDOM_STEPS = [1, 2, 3, 4, 5, 6, 7, 10, 100, 10**4, 10**6, 10**9]


def main():
    cases = []
    grid = [(b, STEPS) for b in betas()] + [(b, RANDOM_STEPS) for b in random_betas()]
    for beta2, base_steps in grid:
        steps = set(base_steps)
        t0 = first_tractable(beta2)
        if t0 is not None:
            steps |= {max(1, t0 - 1), t0, t0 + 1}
        for t in sorted(steps):
            ref = exact(beta2, t)
            torch_rho, torch_branch = torch_formula(beta2, t)
            cases.append({
                "beta2": beta2,
                "beta2_bits": int.from_bytes(
                    __import__("struct").pack(">d", beta2), "big"),
                "t": t,
                **ref,
                "torch_rho_t": torch_rho,
                "torch_tractable": torch_branch,
            })
    wrong = [c for c in cases if c["torch_tractable"] != c["tractable"]]
    assert wrong, "the grid must include cases where torch's formula takes the wrong branch"
    with open(os.path.join(HERE, "rho.json"), "w") as f:
        f.write('{"generator": "tests/golden/gen_rho.py", "cases": [\n')
        f.write(",\n".join(json.dumps(c, separators=(",", ":")) for c in cases))
        f.write("\n]}\n")
    print(f"{len(cases)} cases, torch's formula takes the wrong branch in {len(wrong)}:")
    for c in wrong:
        print(f"  beta2 = {c['beta2']!r}, t = {c['t']}: rho_t = {c['rho_t']!r} "
              f"(torch: {c['torch_rho_t']!r})")


if __name__ == "__main__":
    main()
