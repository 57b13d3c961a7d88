#!/usr/bin/env python3
"""Writes schedules.json: golden learning rates for candle_radam::schedule (tests/schedule.rs).

Every torch case runs torch's actual scheduler on a one-parameter SGD optimizer: the learning
rate of update k (0-based) is ``optimizer.param_groups[0]["lr"]`` before the k-th
``optimizer.step(); scheduler.step()`` (torch's documented call order), which is what
``Schedule::lr(k)`` gives. fairseq's ``inverse_sqrt`` is not installable here; its
``step_update(num_updates)`` is transcribed line for line below (fairseq/optim/lr_scheduler/
inverse_square_root_schedule.py), with fairseq's trainer convention that update k+1 runs at the lr
set by ``step_update(k)``.

Each case names the Rust schedule ("kind") and its arguments; the Rust test builds it and
compares at the recorded steps (1e-12 relative).

Regenerate (needs torch, CPU is enough):  python3 tests/golden/gen_schedules.py
"""
import json
import math
import os
import warnings

import torch
from torch.optim import lr_scheduler as S

HERE = os.path.dirname(os.path.abspath(__file__))
warnings.filterwarnings("ignore")  # SequentialLR / step-order chatter


def run_torch(base_lr, make, n, optimizer=torch.optim.SGD):
    """lrs[k] = the learning rate torch uses for update k, k = 0..n-1."""
    p = torch.nn.Parameter(torch.zeros(1))
    opt = optimizer([p], lr=base_lr)
    sched = make(opt)
    lrs = []
    for _ in range(n):
        lrs.append(float(opt.param_groups[0]["lr"]))
        p.grad = torch.zeros(1)
        opt.step()
        sched.step()
    return lrs


class FairseqInverseSqrt:
    """fairseq's InverseSquareRootSchedule (lr arithmetic only)."""

    def __init__(self, lr, warmup_init_lr, warmup_updates):
        warmup_end_lr = lr
        if warmup_init_lr < 0:
            warmup_init_lr = 0 if warmup_updates > 0 else warmup_end_lr
        self.warmup_init_lr = warmup_init_lr
        self.warmup_updates = warmup_updates
        self.lr_step = (warmup_end_lr - warmup_init_lr) / warmup_updates
        self.decay_factor = warmup_end_lr * warmup_updates**0.5
        self.lr = warmup_init_lr

    def step_update(self, num_updates):
        if num_updates < self.warmup_updates:
            self.lr = self.warmup_init_lr + num_updates * self.lr_step
        else:
            self.lr = self.decay_factor * num_updates**-0.5
        return self.lr


def pick(lrs, steps):
    return [[k, lrs[k]] for k in steps]


def main():
    cases = []

    def add(name, kind, args, reference, values):
        cases.append({"name": name, "kind": kind, "args": args, "reference": reference,
                      "values": values})

    # Constant: LambdaLR with a constant 1.
    lrs = run_torch(3e-4, lambda o: S.LambdaLR(o, lambda s: 1.0), 50)
    add("constant", "constant", {"lr": 3e-4}, "torch LambdaLR(lambda s: 1)",
        pick(lrs, [0, 1, 49]))

    # LinearLR: warmup (factor 0.01 -> 1) and decay (1 -> 0.1).
    base = 1e-3
    lrs = run_torch(base, lambda o: S.LinearLR(o, start_factor=0.01, end_factor=1.0,
                                               total_iters=100), 150)
    add("linear_warmup", "linear",
        {"init": base * 0.01, "end": base * 1.0, "steps": 100},
        "torch LinearLR(start_factor=0.01, end_factor=1, total_iters=100)",
        pick(lrs, [0, 1, 2, 37, 99, 100, 101, 149]))
    lrs = run_torch(0.1, lambda o: S.LinearLR(o, start_factor=1.0, end_factor=0.1,
                                              total_iters=40), 60)
    add("linear_decay", "linear", {"init": 0.1, "end": 0.1 * 0.1, "steps": 40},
        "torch LinearLR(start_factor=1, end_factor=0.1, total_iters=40)",
        pick(lrs, [0, 1, 10, 39, 40, 59]))

    # CosineAnnealingLR up to T_max (torch's recursive form; beyond T_max it rises again).
    lrs = run_torch(1e-3, lambda o: S.CosineAnnealingLR(o, T_max=100, eta_min=1e-5), 101)
    add("cosine", "cosine", {"init": 1e-3, "floor": 1e-5, "steps": 100},
        "torch CosineAnnealingLR(T_max=100, eta_min=1e-5)",
        pick(lrs, [0, 1, 2, 25, 50, 75, 98, 99, 100]))
    lrs = run_torch(0.5, lambda o: S.CosineAnnealingLR(o, T_max=7, eta_min=0.0), 8)
    add("cosine_to_zero", "cosine", {"init": 0.5, "floor": 0.0, "steps": 7},
        "torch CosineAnnealingLR(T_max=7, eta_min=0)", pick(lrs, range(7)))

    # StepLR, MultiStepLR, ExponentialLR.
    lrs = run_torch(0.1, lambda o: S.StepLR(o, step_size=30, gamma=0.1), 100)
    add("step", "step", {"init": 0.1, "step_size": 30, "gamma": 0.1},
        "torch StepLR(step_size=30, gamma=0.1)", pick(lrs, [0, 29, 30, 59, 60, 90, 99]))
    lrs = run_torch(0.05, lambda o: S.MultiStepLR(o, milestones=[30, 80], gamma=0.5), 100)
    add("multistep", "multistep", {"init": 0.05, "milestones": [30, 80], "gamma": 0.5},
        "torch MultiStepLR(milestones=[30, 80], gamma=0.5)",
        pick(lrs, [0, 29, 30, 79, 80, 99]))
    lrs = run_torch(0.1, lambda o: S.ExponentialLR(o, gamma=0.95), 300)
    add("exponential", "exponential", {"init": 0.1, "gamma": 0.95},
        "torch ExponentialLR(gamma=0.95)", pick(lrs, [0, 1, 2, 10, 100, 299]))

    # OneCycleLR: defaults, linear anneal, three phases, a fractional phase boundary.
    for name, kw in [
        ("one_cycle", dict(max_lr=0.01, total_steps=1000)),
        ("one_cycle_linear", dict(max_lr=0.01, total_steps=200, anneal_strategy="linear",
                                  pct_start=0.25, div_factor=10.0, final_div_factor=100.0)),
        ("one_cycle_three_phase", dict(max_lr=0.02, total_steps=300, three_phase=True)),
        ("one_cycle_fractional", dict(max_lr=0.01, total_steps=101, pct_start=0.25)),
        # pct_start * total_steps < 1: the warmup phase ends before step 0.
        ("one_cycle_short", dict(max_lr=0.01, total_steps=3)),
        ("one_cycle_one_step", dict(max_lr=0.01, total_steps=1, three_phase=True)),
    ]:
        n = kw["total_steps"]
        lrs = run_torch(1.0, lambda o: S.OneCycleLR(o, cycle_momentum=False, **kw), n)
        args = {"max_lr": kw["max_lr"], "total_steps": n, "pct_start": kw.get("pct_start", 0.3),
                "anneal": kw.get("anneal_strategy", "cos"),
                "div_factor": kw.get("div_factor", 25.0),
                "final_div_factor": kw.get("final_div_factor", 1e4),
                "three_phase": kw.get("three_phase", False)}
        steps = sorted(k for k in {0, 1, 2, n // 8, n // 4, n // 4 + 1, int(0.3 * n) - 1, int(0.3 * n),
                        n // 2, int(0.6 * n) - 1, int(0.6 * n), 3 * n // 4, n - 2, n - 1}
                       if 0 <= k < n)
        add(name, "one_cycle", args, f"torch OneCycleLR({kw}, cycle_momentum=False)",
            pick(lrs, steps))

    # Warmup then decay: Hugging Face's LambdaLR recipes, and SequentialLR.
    peak, warm, total = 5e-4, 100, 1000

    def hf_linear(s):
        if s < warm:
            return s / max(1, warm)
        return max(0.0, (total - s) / max(1, total - warm))

    def hf_cosine(s):
        if s < warm:
            return s / max(1, warm)
        progress = (s - warm) / max(1, total - warm)
        return max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))

    steps = [0, 1, 50, 99, 100, 101, 550, 998, 999]
    lrs = run_torch(peak, lambda o: S.LambdaLR(o, hf_linear), total)
    add("warmup_linear", "warmup_linear",
        {"warmup": warm, "warmup_init": 0.0, "peak": peak, "end": 0.0, "steps": total - warm},
        "torch LambdaLR: transformers get_linear_schedule_with_warmup(100, 1000)",
        pick(lrs, steps))
    lrs = run_torch(peak, lambda o: S.LambdaLR(o, hf_cosine), total)
    add("warmup_cosine", "warmup_cosine",
        {"warmup": warm, "warmup_init": 0.0, "peak": peak, "floor": 0.0, "steps": total - warm},
        "torch LambdaLR: transformers get_cosine_schedule_with_warmup(100, 1000)",
        pick(lrs, steps))
    lrs = run_torch(1e-3, lambda o: S.SequentialLR(
        o, [S.LinearLR(o, start_factor=0.1, end_factor=1.0, total_iters=20),
            S.CosineAnnealingLR(o, T_max=80, eta_min=1e-5)], milestones=[20]), 100)
    add("sequential_warmup_cosine", "warmup_cosine",
        {"warmup": 20, "warmup_init": 1e-3 * 0.1, "peak": 1e-3, "floor": 1e-5, "steps": 80},
        "torch SequentialLR([LinearLR(0.1, 1, 20), CosineAnnealingLR(80, 1e-5)], [20])",
        pick(lrs, [0, 1, 10, 19, 20, 21, 60, 99]))

    # fairseq inverse_sqrt: its default warmup, and an explicit warmup-init-lr.
    for name, lr, init, warmup in [("inverse_sqrt", 5e-4, -1, 4000),
                                   ("inverse_sqrt_init", 7e-4, 1e-7, 4000),
                                   ("inverse_sqrt_short", 1e-3, 0.0, 1)]:
        f = FairseqInverseSqrt(lr, init, warmup)
        steps = sorted({0, 1, 2, warmup // 2, warmup - 1, warmup, warmup + 1, 10 * warmup,
                        10**6})
        values = []
        for k in steps:
            values.append([k, f.lr if k == 0 else f.step_update(k)])
        add(name, "inverse_sqrt", {"lr": lr, "warmup_updates": warmup,
                                   "warmup_init_lr": f.warmup_init_lr},
            f"fairseq inverse_sqrt(lr={lr}, warmup_init_lr={init}, warmup_updates={warmup})",
            values)

    with open(os.path.join(HERE, "schedules.json"), "w") as fh:
        json.dump({"generator": "tests/golden/gen_schedules.py",
                   "torch": torch.__version__, "cases": cases}, fh, indent=1)
    print(f"{len(cases)} cases, {sum(len(c['values']) for c in cases)} values")


if __name__ == "__main__":
    main()
