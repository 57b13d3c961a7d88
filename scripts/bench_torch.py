#!/usr/bin/env python3
"""PyTorch reference timings for the README table, on the layouts of examples/bench.rs.

Times torch.optim.AdamW(fused=True), torch.optim.RAdam(foreach=True) and RAdam(foreach=False),
the clipped and loss-scaled step (``torch.nn.utils.clip_grad_norm_`` + RAdam(foreach=True), and
``GradScaler.unscale_`` + ``clip_grad_norm_`` + ``GradScaler.step`` / ``update`` around it: what
candle-radam's "guard + clip + unscale" row does in one read), and a torch copy probe moving the
same 28 bytes per f32 parameter, interleaved, medians of rounds.

    python3 scripts/bench_torch.py                      # CPU, mixed layout (~10M params)
    python3 scripts/bench_torch.py --device cuda        # gpt2 + 1b layouts
"""
import argparse
import statistics
import time

import torch


def shapes(layout):
    if layout == "mixed":
        return [(8 << 20,)] + [(4096,)] * 500
    if layout == "gpt2":
        d, v, ctx = 768, 50257, 1024
        s = [(v, d), (ctx, d)]
        for _ in range(12):
            s += [(d,), (d,), (d, 3 * d), (3 * d,), (d, d), (d,), (d,), (d,), (d, 4 * d), (4 * d,), (4 * d, d), (d,)]
        return s + [(d,), (d,)]
    if layout == "1b":
        return [(1_000_000_000,)]
    raise ValueError(layout)


def sync(dev):
    if dev.type == "cuda":
        torch.cuda.synchronize()


def time_ms(dev, steps, fn):
    sync(dev)
    t0 = time.perf_counter()
    for _ in range(steps):
        fn()
    sync(dev)
    return (time.perf_counter() - t0) * 1e3 / steps


def bench(layout, dev, steps, rounds):
    sh = shapes(layout)
    n = sum(torch.Size(s).numel() for s in sh)
    print(f"\n== {layout}: {len(sh)} tensors, {n / 1e6:.1f}M params, float32, {dev}, torch {torch.__version__}, threads {torch.get_num_threads()}")
    params = [torch.nn.Parameter(torch.randn(s, device=dev) * 0.02) for s in sh]
    for p in params:
        p.grad = torch.randn_like(p) * 1e-3
    opts = {
        "torch AdamW(fused=True)": torch.optim.AdamW(params, lr=1e-4, weight_decay=0.0, fused=True),
        "torch RAdam(foreach=True)": torch.optim.RAdam(params, lr=1e-4, foreach=True),
    }
    if layout != "1b":
        opts["torch RAdam(foreach=False)"] = torch.optim.RAdam(params, lr=1e-4, foreach=False)
    clip_opt = torch.optim.RAdam(params, lr=1e-4, foreach=True)

    def clip_step():
        torch.nn.utils.clip_grad_norm_(params, 1.0, foreach=True)
        clip_opt.step()

    # init_scale 1: unscale_ then multiplies by 1 (same work), so the repeated steps on the same
    # gradients never drive them into denormals.
    scaler = torch.amp.GradScaler(dev.type, init_scale=1.0, growth_interval=1 << 30)
    scaler.scale(torch.ones((), device=dev))
    amp_opt = torch.optim.RAdam(params, lr=1e-4, foreach=True)

    def amp_step():
        scaler.unscale_(amp_opt)
        torch.nn.utils.clip_grad_norm_(params, 1.0, foreach=True)
        scaler.step(amp_opt)
        scaler.update()

    nbytes = 28 * n
    src = torch.ones(nbytes // 2, dtype=torch.uint8, device=dev)
    dst = torch.empty_like(src)
    fns = {"copy probe (same bytes)": lambda: dst.copy_(src)}
    fns.update({k: o.step for k, o in opts.items()})
    fns["clip_grad_norm_ + RAdam(foreach)"] = clip_step
    fns["unscale_+clip+RAdam(foreach)"] = amp_step
    for f in fns.values():
        f()  # warm-up (state allocation)
    times = {k: [] for k in fns}
    for _ in range(rounds):
        for k, f in fns.items():
            times[k].append(time_ms(dev, steps, f))
    c = statistics.median(times["copy probe (same bytes)"])
    print(f"{'method':<34} {'ms/step':>10} {'GB/s':>9} {'vs copy':>9}")
    for k in fns:
        ms = statistics.median(times[k])
        print(f"{k:<34} {ms:>10.3f} {nbytes / ms / 1e6:>9.1f} {c / ms:>9.3f}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--layout", default=None, help="mixed | gpt2 | 1b | all")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None)
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    dev = torch.device(a.device)
    layout = a.layout or ("mixed" if dev.type == "cpu" else "all")
    for lay in (["gpt2", "1b"] if layout == "all" else [layout]):
        bench(lay, dev, a.steps, a.rounds)


if __name__ == "__main__":
    main()
