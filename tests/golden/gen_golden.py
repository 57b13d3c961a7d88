#!/usr/bin/env python3
"""Writes the golden RAdam trajectories that tests/golden.rs checks candle-radam against.

Two references:
  * ``torch``: ``torch.optim.RAdam`` / ``torch.optim.Adam`` / ``torch.optim.AdamW`` (single-tensor
    implementation, ``foreach=False``), f32 and f64 parameters;
  * ``seed``: a line-by-line port of the original repository's ``radam.py``
    (LiyuanLucasLiu/RAdam) to the current PyTorch call style: f32 moments for every parameter
    dtype, computed on ``p.data.float()`` and copied back (round to nearest even), the
    ``degenerated_to_sgd`` switch (no update at all while N_sma < 5 when off) and its decoupled
    weight decay.

Parameters and gradients are not stored: both sides generate them from an integer hash with f32
operations only (exactly reproducible in Rust, see ``tests/golden.rs``). Stored: the parameter after
every step and the final moments, in ``golden.safetensors``; the case list in ``cases.json``.

Regenerate (needs torch and safetensors):  python3 tests/golden/gen_golden.py
"""
import json
import math
import os

import numpy as np
import torch
from safetensors.torch import save_file

HERE = os.path.dirname(os.path.abspath(__file__))
STEPS = 12  # rho_t crosses 5 at step 6 for beta2 = 0.999: both branches are covered
CHECKPOINTS_LARGE = (1, 5, 6, STEPS)  # steps stored for large tensors (every step for small ones)


def hash_values(n: int, seed: int, t: int, scale: float, offset: float) -> np.ndarray:
    """f32 values in [-scale, scale] + offset from a 32-bit integer hash (mirrored in Rust)."""
    m = 0xFFFFFFFF
    i = np.arange(n, dtype=np.uint64)
    h = (i * 2654435761 + np.uint64((t * 40503 + seed * 97) & m)) & m
    h ^= h >> 15
    h = (h * 0x2C1B3C6D) & m
    h ^= h >> 12
    h = (h * 0x297A2D39) & m
    h ^= h >> 15
    k = (h % 20001).astype(np.float32)
    u = (k - np.float32(10000)) / np.float32(10000)
    return u * np.float32(scale) + np.float32(offset)


DTYPES = {"f32": torch.float32, "f64": torch.float64, "f16": torch.float16, "bf16": torch.bfloat16}


def make(n, seed, t, dtype, scale, offset):
    x = torch.from_numpy(hash_values(n, seed, t, scale, offset))
    return x.to(DTYPES[dtype])  # f32 -> target dtype, round to nearest even


class SeedRAdam(torch.optim.Optimizer):
    """The original RAdam (radam.py of LiyuanLucasLiu/RAdam), ported to the current call style."""

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0, degenerated_to_sgd=True):
        self.degenerated_to_sgd = degenerated_to_sgd
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                        buffer=[[None, None, None] for _ in range(10)])
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad.data.float()
                p_data_fp32 = p.data.float()
                state = self.state[p]
                if len(state) == 0:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p_data_fp32)
                    state["exp_avg_sq"] = torch.zeros_like(p_data_fp32)
                exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
                beta1, beta2 = group["betas"]
                exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                exp_avg.mul_(beta1).add_(grad, alpha=1 - beta1)
                state["step"] += 1
                buffered = group["buffer"][int(state["step"] % 10)]
                if state["step"] == buffered[0]:
                    n_sma, step_size = buffered[1], buffered[2]
                else:
                    buffered[0] = state["step"]
                    beta2_t = beta2 ** state["step"]
                    n_sma_max = 2 / (1 - beta2) - 1
                    n_sma = n_sma_max - 2 * state["step"] * beta2_t / (1 - beta2_t)
                    buffered[1] = n_sma
                    if n_sma >= 5:
                        step_size = math.sqrt(
                            (1 - beta2_t) * (n_sma - 4) / (n_sma_max - 4) * (n_sma - 2) / n_sma
                            * n_sma_max / (n_sma_max - 2)
                        ) / (1 - beta1 ** state["step"])
                    elif self.degenerated_to_sgd:
                        step_size = 1.0 / (1 - beta1 ** state["step"])
                    else:
                        step_size = -1
                    buffered[2] = step_size
                if n_sma >= 5:
                    if group["weight_decay"] != 0:
                        p_data_fp32.add_(p_data_fp32, alpha=-group["weight_decay"] * group["lr"])
                    denom = exp_avg_sq.sqrt().add_(group["eps"])
                    p_data_fp32.addcdiv_(exp_avg, denom, value=-step_size * group["lr"])
                    p.data.copy_(p_data_fp32)
                elif step_size > 0:
                    if group["weight_decay"] != 0:
                        p_data_fp32.add_(p_data_fp32, alpha=-group["weight_decay"] * group["lr"])
                    p_data_fp32.add_(exp_avg, alpha=-step_size * group["lr"])
                    p.data.copy_(p_data_fp32)


def torch_optimizer(case, params):
    h = case["hp"]
    kw = dict(lr=h["lr"], betas=(h["beta1"], h["beta2"]), eps=h["eps"], weight_decay=h["weight_decay"], foreach=False)
    if case["reference"] == "torch":
        return torch.optim.RAdam(params, decoupled_weight_decay=h["decoupled_weight_decay"], **kw)
    if case["reference"] == "torch-adam":
        cls = torch.optim.AdamW if h["decoupled_weight_decay"] else torch.optim.Adam
        return cls(params, **kw)
    assert case["reference"] == "seed"
    assert h["weight_decay"] == 0 or h["decoupled_weight_decay"], "the seed's weight decay is decoupled"
    return SeedRAdam(params, lr=h["lr"], betas=(h["beta1"], h["beta2"]), eps=h["eps"],
                     weight_decay=h["weight_decay"], degenerated_to_sgd=h["degenerate_to_sgd"])


def hp(**over):
    base = dict(lr=0.05, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0,
                decoupled_weight_decay=False, degenerate_to_sgd=True, rectify=True)
    base.update(over)
    return base


def cases():
    out = []

    def add(name, reference, dtype, n, **over):
        out.append(dict(name=name, reference=reference, dtype=dtype, n=n, steps=STEPS, hp=hp(**over),
                        seed=len(out) + 1, grad_scale=1.0, grad_offset=0.25))

    for n in [0, 1, 7, 1025, 70001]:  # 70001 > two CPU chunks of 32768, odd, larger than a block
        add(f"torch_f32_n{n}", "torch", "f32", n)
    add("torch_f32_l2", "torch", "f32", 1025, weight_decay=0.1)
    add("torch_f32_decoupled", "torch", "f32", 1025, weight_decay=0.1, decoupled_weight_decay=True)
    add("torch_f32_beta2_099_eps", "torch", "f32", 513, beta2=0.99, eps=1e-3, beta1=0.8)
    add("torch_f64_n1025", "torch", "f64", 1025)
    add("torch_f64_decoupled", "torch", "f64", 7, weight_decay=0.3, decoupled_weight_decay=True)
    add("torch_adam_f32", "torch-adam", "f32", 1025, rectify=False, eps=1e-3)
    add("torch_adamw_f32", "torch-adam", "f32", 1025, rectify=False, weight_decay=0.1, decoupled_weight_decay=True)
    for dt in ["f32", "f16", "bf16"]:
        add(f"seed_{dt}_sgd", "seed", dt, 1025)
        add(f"seed_{dt}_nosgd_wd", "seed", dt, 1025, degenerate_to_sgd=False, weight_decay=0.1,
            decoupled_weight_decay=True)
    add("seed_f16_nosgd_large", "seed", "f16", 70001, degenerate_to_sgd=False)
    add("seed_bf16_n1", "seed", "bf16", 1, degenerate_to_sgd=False)
    return out


def run(case):
    n, dt = case["n"], case["dtype"]
    p = torch.nn.Parameter(make(n, case["seed"], 0, dt, 1.0, 0.0))
    opt = torch_optimizer(case, [p])
    tensors = {f"{case['name']}.param.0": p.detach().clone()}
    for t in range(1, case["steps"] + 1):
        p.grad = make(n, case["seed"], t, dt, case["grad_scale"], case["grad_offset"])
        opt.step()
        if n <= 2048 or t in CHECKPOINTS_LARGE:
            tensors[f"{case['name']}.param.{t}"] = p.detach().clone()
    st = opt.state[p]
    tensors[f"{case['name']}.exp_avg"] = st["exp_avg"].clone()
    tensors[f"{case['name']}.exp_avg_sq"] = st["exp_avg_sq"].clone()
    return tensors


# ---------------------------------------------------------------------------------------------
# Multi-variable cases: torch.optim.RAdam with param groups and missing gradients (p.grad = None),
# which exercise per-variable step counts (torch's state['step']) and per-group hyper-parameters.
# A var is {name, n, seed} (values from the hash) or {name, n, init, grad} (constant values, for
# the small examples); `grads[name]` lists the steps on which it has a gradient (absent:
# every step). A group lists its vars and overrides (lr as a multiplier `lr_scale` of the base lr,
# as candle-radam's ParamGroup does; torch gets the product). Stored per case: every var after
# every step, its final moments and its torch step count.
#
# Not here (torch does not give the right value): eps = 0 with zero gradients (torch: 0/0 = NaN;
# the right value, an unchanged parameter, is asserted in tests/steps.rs), the construction and
# learning-rate errors and the state-file cases (tests/steps.rs, tests/state.rs).


def multi_cases():
    out = []

    def add(name, vars_, steps, groups=(), grads=None, **over):
        out.append(dict(name=name, dtype="f32", vars=vars_, steps=steps, hp=hp(**over), groups=list(groups),
                        grads=grads or {}, grad_scale=1.0, grad_offset=0.25))

    def v(name, n, seed):
        return dict(name=name, n=n, seed=seed)

    # Two param groups with different lr, weight decay and betas (decoupled and L2).
    for wd_kind, decoupled in [("decoupled", True), ("l2", False)]:
        add(f"groups_{wd_kind}", [v("enc.weight", 1025, 201), v("enc.bias", 33, 202), v("ln.weight", 7, 203)], STEPS,
            groups=[dict(name="no_decay", vars=["enc.bias", "ln.weight"], lr_scale=0.5, weight_decay=0.0,
                         beta1=0.8, beta2=0.99, eps=1e-6)],
            weight_decay=0.1, decoupled_weight_decay=decoupled)
    # A gradient missing on some steps (p.grad = None), and a step on which no var has one (7).
    add("grad_none", [v("a", 1025, 211), v("b", 513, 212), v("c", 7, 213)], 14,
        grads={"b": [4, 5, 6, 9, 10, 11, 12, 13, 14], "a": [1, 2, 3, 4, 5, 6, 8, 9, 10, 11, 12, 13, 14],
               "c": [1, 2, 3, 4, 5, 6, 8, 10, 12, 14]},
        groups=[dict(name="slow", vars=["c"], lr_scale=0.1, beta2=0.98)])
    # Issue 8, item 1: A = B = [1.0], lr 0.01, step 1 a gradient (0.5) for A only, step 2 for both:
    # B = 0.995 after step 2 (its own first step). And B's first gradient at step 10.
    one = lambda name: dict(name=name, n=1, init=1.0, grad=0.5)
    add("item1_late_var", [one("A"), one("B")], 2, grads={"A": [1, 2], "B": [2]}, lr=0.01)
    add("item1_first_grad_at_10", [one("A"), one("B")], 12, grads={"B": [10, 11, 12]}, lr=0.01)
    return out


def run_multi(case):
    h = case["hp"]
    params = {}
    for var in case["vars"]:
        if "init" in var:
            x = torch.full((var["n"],), var["init"], dtype=torch.float32)
        else:
            x = make(var["n"], var["seed"], 0, case["dtype"], 1.0, 0.0)
        params[var["name"]] = torch.nn.Parameter(x)
    grouped = {n for g in case["groups"] for n in g["vars"]}
    torch_groups = []
    for g in case["groups"]:
        tg = dict(params=[params[n] for n in g["vars"]], lr=h["lr"] * g.get("lr_scale", 1.0))
        if "beta1" in g or "beta2" in g:
            tg["betas"] = (g.get("beta1", h["beta1"]), g.get("beta2", h["beta2"]))
        for k in ("eps", "weight_decay"):
            if k in g:
                tg[k] = g[k]
        torch_groups.append(tg)
    torch_groups.append(dict(params=[p for n, p in params.items() if n not in grouped]))
    opt = torch.optim.RAdam(torch_groups, lr=h["lr"], betas=(h["beta1"], h["beta2"]), eps=h["eps"],
                            weight_decay=h["weight_decay"], decoupled_weight_decay=h["decoupled_weight_decay"],
                            foreach=False)
    tensors = {f"{case['name']}.{n}.0": p.detach().clone() for n, p in params.items()}
    for t in range(1, case["steps"] + 1):
        for var in case["vars"]:
            p, name = params[var["name"]], var["name"]
            if t not in case["grads"].get(name, range(1, case["steps"] + 1)):
                p.grad = None
            elif "grad" in var:
                p.grad = torch.full((var["n"],), var["grad"], dtype=torch.float32)
            else:
                p.grad = make(var["n"], var["seed"], t, case["dtype"], case["grad_scale"], case["grad_offset"])
        opt.step()
        for n, p in params.items():
            tensors[f"{case['name']}.{n}.{t}"] = p.detach().clone()
    for n, p in params.items():
        st = opt.state.get(p, {})
        step = int(st["step"]) if "step" in st else 0
        tensors[f"{case['name']}.{n}.step"] = torch.tensor([step], dtype=torch.int64)
        if st:
            tensors[f"{case['name']}.{n}.exp_avg"] = st["exp_avg"].clone()
            tensors[f"{case['name']}.{n}.exp_avg_sq"] = st["exp_avg_sq"].clone()
    return tensors


def main():
    torch.manual_seed(0)
    all_cases = cases()
    multi = multi_cases()
    tensors = {}
    for c in all_cases:
        tensors.update(run(c))
    for c in multi:
        tensors.update(run_multi(c))
    tensors = {k: v.contiguous() for k, v in tensors.items()}
    save_file(tensors, os.path.join(HERE, "golden.safetensors"))
    with open(os.path.join(HERE, "cases.json"), "w") as f:
        json.dump({"generator": "tests/golden/gen_golden.py", "torch": torch.__version__, "cases": all_cases,
                   "multi_cases": multi}, f, indent=1)
    print(f"{len(all_cases)} + {len(multi)} cases, {len(tensors)} tensors, torch {torch.__version__}")


if __name__ == "__main__":
    main()
