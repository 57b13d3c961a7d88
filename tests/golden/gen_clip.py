#!/usr/bin/env python3
"""Writes the golden data that tests/clip.rs checks candle-radam's fused clipping and loss
scaling against (``clip_cases.json``, next to this script).

References (torch, CPU):
  * ``clip``: ``torch.nn.utils.clip_grad_norm_(params, max_norm)`` then ``torch.optim.RAdam.step()``
    (``foreach=False``), several tensors, f32 and f64, gradient norms above and below the
    threshold, without weight decay, with L2 and with decoupled weight decay. Stored: the
    gradients of every step, the parameters after every step and the norm ``clip_grad_norm_``
    returned.
  * ``half``: f16 / bf16 parameters the way candle-radam updates them (f32 moments, the update
    computed in f32 from the parameter's value and rounded back to nearest even): a
    ``torch.optim.RAdam`` over an f32 copy, its gradient the f32 gradient clipped by
    ``clip_grad_norm_``, the result rounded to the half dtype after each step.
  * ``scaler``: ``torch.amp.GradScaler("cpu", init_scale=2**16, growth_interval=3)`` around
    ``clip_grad_norm_`` + ``RAdam``: the gradients are given already multiplied by the scale in
    force (as backward of ``scaler.scale(loss)`` leaves them), with an inf on steps 2 and 7 and
    a NaN on step 9 (listed in ``planted``: JSON has no inf / NaN, so non-finite numbers are
    written as null); ``scaler.unscale_``, ``clip_grad_norm_``, ``scaler.step``,
    ``scaler.update``. Stored: parameters, the scale after every update, the norms, the number
    of skipped steps.

Every number is written with Python's shortest round-trip repr of the exact f32 / f64 value.

Regenerate (torch only):  ~/.venv-sched/bin/python tests/golden/gen_clip.py
"""
import json
import math
import os

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
SHAPES = [(5, 8), (129,), (3, 2, 2)]
MAX_NORM = 1.0
# Target gradient norms per step: above and below MAX_NORM, SGD branch (steps 1-5) and the
# rectified branch (6+).
NORMS = [0.5, 3.0, 0.9, 12.0, 0.2, 1.5, 0.7, 4.0, 0.99, 2.0]
DTYPES = {"f32": torch.float32, "f64": torch.float64, "f16": torch.float16, "bf16": torch.bfloat16}


def num(x):
    """A float for JSON: non-finite values (which JSON lacks) as null."""
    x = float(x)
    return x if math.isfinite(x) else None


def flat(t):
    return [num(x) for x in t.detach().reshape(-1).tolist()]


def make_grads(gen, dtype, steps):
    """Per step, one gradient per shape with total norm NORMS[step] (in dtype)."""
    out = []
    for s in range(steps):
        gs = [torch.randn(shape, generator=gen, dtype=torch.float64) for shape in SHAPES]
        total = math.sqrt(sum(float((g * g).sum()) for g in gs))
        out.append([(g * (NORMS[s % len(NORMS)] / total)).to(dtype) for g in gs])
    return out


def init_params(gen, dtype):
    return [torch.randn(shape, generator=gen, dtype=torch.float64).to(dtype) for shape in SHAPES]


def clip_case(name, dtype, hp, seed):
    gen = torch.Generator().manual_seed(seed)
    dt = DTYPES[dtype]
    params = [p.clone().requires_grad_(True) for p in init_params(gen, dt)]
    grads = make_grads(gen, dt, len(NORMS))
    case = {"name": name, "kind": "clip", "dtype": dtype, "shapes": SHAPES, "max_norm": MAX_NORM, "hp": hp,
            "init": [flat(p) for p in params], "grads": [], "params": [], "norms": []}
    opt = torch.optim.RAdam(params, lr=hp["lr"], weight_decay=hp["weight_decay"],
                            decoupled_weight_decay=hp["decoupled_weight_decay"], foreach=False)
    for gs in grads:
        for p, g in zip(params, gs):
            p.grad = g.clone()
        norm = torch.nn.utils.clip_grad_norm_(params, MAX_NORM)
        opt.step()
        case["grads"].append([flat(g) for g in gs])
        case["params"].append([flat(p) for p in params])
        case["norms"].append(float(norm))
    return case


def half_case(name, dtype, seed):
    gen = torch.Generator().manual_seed(seed)
    dt = DTYPES[dtype]
    halves = init_params(gen, dt)
    grads = make_grads(gen, dt, len(NORMS))
    masters = [h.float().clone().requires_grad_(True) for h in halves]
    hp = {"lr": 1e-2, "weight_decay": 0.0, "decoupled_weight_decay": False}
    opt = torch.optim.RAdam(masters, lr=hp["lr"], foreach=False)
    case = {"name": name, "kind": "clip", "dtype": dtype, "shapes": SHAPES, "max_norm": MAX_NORM, "hp": hp,
            "init": [flat(h) for h in halves], "grads": [], "params": [], "norms": []}
    for gs in grads:
        with torch.no_grad():
            for w, h, g in zip(masters, halves, gs):
                w.copy_(h.float())
                w.grad = g.float()
        norm = torch.nn.utils.clip_grad_norm_(masters, MAX_NORM)
        opt.step()
        halves = [w.detach().to(dt) for w in masters]
        case["grads"].append([flat(g) for g in gs])
        case["params"].append([flat(h) for h in halves])
        case["norms"].append(float(norm))
    return case


def scaler_case(name, seed, bad_steps, nan_steps):
    gen = torch.Generator().manual_seed(seed)
    params = [p.clone().requires_grad_(True) for p in init_params(gen, torch.float32)]
    grads = make_grads(gen, torch.float32, len(NORMS))
    hp = {"lr": 1e-2, "weight_decay": 0.0, "decoupled_weight_decay": False}
    opt = torch.optim.RAdam(params, lr=hp["lr"], foreach=False)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**16, growth_factor=2.0, backoff_factor=0.5,
                                  growth_interval=3)
    scaler.scale(torch.ones(()))  # materializes the scale
    case = {"name": name, "kind": "scaler", "dtype": "f32", "shapes": SHAPES, "max_norm": MAX_NORM, "hp": hp,
            "init": [flat(p) for p in params], "init_scale": 2.0**16, "growth_factor": 2.0,
            "backoff_factor": 0.5, "growth_interval": 3, "grads": [], "params": [], "norms": [], "scales": [], "planted": []}
    skipped = 0
    for step, gs in enumerate(grads, start=1):
        s = scaler.get_scale()
        scaled = [g * s for g in gs]  # exact: s is a power of two
        if step in bad_steps:
            scaled[1].view(-1)[7] = math.inf
            case["planted"].append([step, 1, 7, "inf"])
        if step in nan_steps:
            scaled[2].view(-1)[3] = math.nan
            case["planted"].append([step, 2, 3, "nan"])
        for p, g in zip(params, scaled):
            p.grad = g.clone()
        scaler.unscale_(opt)
        norm = torch.nn.utils.clip_grad_norm_(params, MAX_NORM)
        before = opt.state[params[0]].get("step", torch.zeros(())).item()
        scaler.step(opt)
        after = opt.state[params[0]]["step"].item() if "step" in opt.state[params[0]] else 0
        skipped += int(after == before)
        scaler.update()
        case["grads"].append([flat(g) for g in scaled])
        case["params"].append([flat(p) for p in params])
        case["norms"].append(num(norm))
        case["scales"].append(scaler.get_scale())
    case["skipped"] = skipped
    return case


def main():
    cases = []
    seed = 1
    for dtype in ("f32", "f64"):
        for wd, dec in ((0.0, False), (0.1, False), (0.1, True)):
            kind = "plain" if wd == 0 else ("decoupled" if dec else "l2")
            hp = {"lr": 1e-2, "weight_decay": wd, "decoupled_weight_decay": dec}
            cases.append(clip_case(f"clip_{dtype}_{kind}", dtype, hp, seed))
            seed += 1
    for dtype in ("f16", "bf16"):
        cases.append(half_case(f"clip_{dtype}", dtype, seed))
        seed += 1
    cases.append(scaler_case("scaler_f32", seed, bad_steps=(2, 7), nan_steps=(9,)))
    with open(os.path.join(HERE, "clip_cases.json"), "w") as f:
        json.dump({"generator": "tests/golden/gen_clip.py", "torch": torch.__version__, "cases": cases}, f)


if __name__ == "__main__":
    main()
