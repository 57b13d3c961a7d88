//! Step time of candle-radam vs candle-nn's AdamW vs a same-process copy probe that moves the
//! same bytes, measured side by side (interleaved rounds, medians) in one run. The row
//! "guard + clip + unscale" is candle-radam with global-norm clipping and a loss scaler: the
//! guard's read also sums the squares and the update multiplies by `coef / scale`, so it should
//! cost about what the guard alone does (the ratio is printed).
//!
//! ```text
//! cargo run --release --example bench                                # CPU, ~10M params
//! cargo run --release --features cuda --example bench -- --device cuda --layout all
//! ```
//!
//! The variables are named like a model's (`*.weight`, and `*.bias` for the vectors; the mixed
//! layout's 500 small tensors are its biases) and split into two parameter groups: the optimizer's
//! decoupled weight decay for the weights, and a `no_decay` group (`*.bias`: no weight decay, half
//! the learning rate, other betas) for the rest, so every step uses two scalar sets.
//!
//! Bytes per parameter (f32): RAdam reads p, g, m, v and writes p, m, v = 28 B. The copy probe
//! copies 14 B per parameter from one buffer to another (14 B read + 14 B written = 28 B), so
//! `copy_ms / radam_ms` is the fraction of copy bandwidth the fused step reaches.
//!
//! 8-bit state (`StateFormat::blockwise8()`, f32 / f16 / bf16 params): the step moves p, g read and
//! p written (12 B for f32), m and v codes read and written (4 B) and the block absmax (16 B per
//! 256 elements): about 16 B per f32 parameter. Its row is compared with a second copy probe of
//! exactly those bytes, and with the f32-state step (goal: faster).
//!
//! With `--dtype bf16` or `f16` a second table times the update pass alone
//! (`NonFinite::Propagate`) under each [`Rounding`] mode against a copy probe of the bytes that
//! mode moves: 22 B per param for round to nearest and stochastic rounding (p, g, m, v read; p,
//! m, v written), 26 B for the remainder and Kahan modes (their u16 buffer read and written).

use std::time::Instant;

use anyhow::{bail, Context, Result};
use candle_core::{backprop::GradStore, DType, Device, Tensor, Var};
use candle_nn::{AdamW, Optimizer, ParamsAdamW};
use candle_radam::{LossScaler, NonFinite, ParamGroup, ParamsRAdam, RAdam, Rounding};
use clap::{Parser, ValueEnum};
use rayon::prelude::*;

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq)]
enum Layout {
    /// One 8M-param tensor plus 500 tensors of 4096: ~10M params (CPU default).
    Mixed,
    /// GPT-2 small: 148 tensors, 124M params (CUDA default).
    Gpt2,
    /// One 1B-param tensor.
    #[value(name = "1b")]
    OneB,
    /// gpt2 then 1b.
    All,
}

#[derive(Parser, Debug)]
#[command(about = "candle-radam step time vs candle-nn AdamW vs a copy probe")]
struct Args {
    /// cpu or cuda (cuda needs the crate's `cuda` feature).
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Parameter layout; default: mixed on CPU, all (gpt2 + 1b) on CUDA.
    #[arg(long, value_enum)]
    layout: Option<Layout>,
    /// Parameter dtype: f32, bf16, f16 or f64.
    #[arg(long, default_value = "f32")]
    dtype: String,
    /// Timed steps per round and method.
    #[arg(long, default_value_t = 5)]
    steps: usize,
    /// Interleaved rounds (the median round is reported).
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// Leave out candle-nn AdamW (slow and memory hungry on big layouts).
    #[arg(long)]
    no_adamw: bool,
}

fn shapes(layout: Layout) -> Vec<Vec<usize>> {
    match layout {
        Layout::Mixed => {
            let mut s = vec![vec![8 << 20]];
            s.extend((0..500).map(|_| vec![4096]));
            s
        }
        Layout::Gpt2 => {
            let (d, v, ctx, layers) = (768, 50257, 1024, 12);
            let mut s = vec![vec![v, d], vec![ctx, d]];
            for _ in 0..layers {
                s.extend([
                    vec![d],
                    vec![d],
                    vec![d, 3 * d],
                    vec![3 * d],
                    vec![d, d],
                    vec![d],
                    vec![d],
                    vec![d],
                    vec![d, 4 * d],
                    vec![4 * d],
                    vec![4 * d, d],
                    vec![d],
                ]);
            }
            s.extend([vec![d], vec![d]]);
            s
        }
        Layout::OneB => vec![vec![1_000_000_000]],
        Layout::All => unreachable!(),
    }
}

/// Bytes one RAdam step moves per parameter: p, g read and p written in the param dtype; m, v
/// read and written in the moment dtype.
fn bytes_per_param(dtype: DType) -> usize {
    let p = dtype.size_in_bytes();
    let m = candle_radam::moment_dtype(dtype).unwrap().size_in_bytes();
    3 * p + 4 * m
}

fn sync(dev: &Device) -> Result<()> {
    dev.synchronize()?;
    Ok(())
}

/// Same-process copy of `bytes / 2` bytes from one buffer to another (reads + writes = `bytes`).
enum CopyProbe {
    Cpu {
        src: Vec<u8>,
        dst: Vec<u8>,
    },
    #[cfg(feature = "cuda")]
    Cuda {
        src: cudarc::driver::CudaSlice<u8>,
        dst: cudarc::driver::CudaSlice<u8>,
        stream: std::sync::Arc<cudarc::driver::CudaStream>,
    },
}

impl CopyProbe {
    fn new(dev: &Device, bytes: usize) -> Result<Self> {
        let half = bytes / 2;
        match dev {
            Device::Cpu => Ok(Self::Cpu { src: vec![1u8; half], dst: vec![0u8; half] }),
            #[cfg(feature = "cuda")]
            Device::Cuda(d) => {
                let stream = d.cuda_stream();
                let src = stream.alloc_zeros::<u8>(half)?;
                let dst = stream.alloc_zeros::<u8>(half)?;
                Ok(Self::Cuda { src, dst, stream })
            }
            _ => bail!("unsupported device"),
        }
    }

    fn run(&mut self) -> Result<()> {
        match self {
            // Parallel over the same rayon pool the CPU step uses.
            Self::Cpu { src, dst } => dst
                .par_chunks_mut(1 << 20)
                .zip(src.par_chunks(1 << 20))
                .for_each(|(d, s)| d.copy_from_slice(s)),
            #[cfg(feature = "cuda")]
            Self::Cuda { src, dst, stream } => stream.memcpy_dtod(src, dst)?,
        }
        Ok(())
    }
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(|a, b| a.partial_cmp(b).unwrap());
    xs[xs.len() / 2]
}

/// Milliseconds per call of `f`, averaged over `steps` calls (device synchronized around).
fn time_ms(dev: &Device, steps: usize, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    sync(dev)?;
    let t0 = Instant::now();
    for _ in 0..steps {
        f()?;
    }
    sync(dev)?;
    Ok(t0.elapsed().as_secs_f64() * 1e3 / steps as f64)
}

fn bench(args: &Args, dev: &Device, layout: Layout, dtype: DType) -> Result<()> {
    let shapes = shapes(layout);
    let n: usize = shapes.iter().map(|s| s.iter().product::<usize>()).sum();
    println!(
        "\n== {layout:?}: {} tensors, {:.1}M params, {dtype:?}, {dev:?}",
        shapes.len(),
        n as f64 / 1e6
    );
    let mut vars = Vec::new();
    let mut named = Vec::new();
    let mut grads = GradStore::default();
    for (i, s) in shapes.iter().enumerate() {
        let v = Var::from_tensor(&Tensor::randn(0f32, 0.02, s.as_slice(), dev)?.to_dtype(dtype)?)?;
        grads.insert(&v, Tensor::randn(0f32, 1e-3, s.as_slice(), dev)?.to_dtype(dtype)?);
        // Mixed: the big tensor is a weight, the 4096s biases; other layouts: vectors are biases.
        let bias = if layout == Layout::Mixed { i > 0 } else { s.len() == 1 && shapes.len() > 1 };
        named.push((format!("t{i}.{}", if bias { "bias" } else { "weight" }), v.clone()));
        vars.push(v);
    }
    let params = ParamsRAdam {
        lr: 1e-4,
        weight_decay: 0.01,
        decoupled_weight_decay: true,
        ..Default::default()
    };
    let groups = || -> Result<Vec<ParamGroup>> {
        if !named.iter().any(|(n, _)| n.ends_with(".bias")) {
            return Ok(vec![]);
        }
        let g = ParamGroup::glob("no_decay", &["*.bias"])?;
        Ok(vec![g.weight_decay(0.0).lr_scale(0.5).betas(0.9, 0.98)])
    };
    let mut radam = RAdam::new_named(named.clone(), params.clone())?.with_groups(groups()?)?;
    let mut radam_clip = RAdam::new_named(named.clone(), params.clone())?
        .with_groups(groups()?)?
        .with_max_grad_norm(1.0)?
        .with_loss_scaler(LossScaler::default())?;
    let mut radam_ng = RAdam::new_named(
        named.clone(),
        ParamsRAdam { non_finite: NonFinite::Propagate, ..params },
    )?
    .with_groups(groups()?)?;
    // 8-bit state (not for f64 params).
    let mut radam8 = if dtype == DType::F64 {
        None
    } else {
        let p8 = ParamsRAdam {
            lr: 1e-4,
            weight_decay: 0.01,
            decoupled_weight_decay: true,
            ..Default::default()
        };
        Some(
            RAdam::new_named(named.clone(), p8)?
                .with_groups(groups()?)?
                .with_state_format(candle_radam::StateFormat::blockwise8())?,
        )
    };
    println!(
        "groups: {}",
        radam
            .groups()
            .iter()
            .map(|g| format!("{} ({} tensors)", g.name, g.vars.len()))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let mut adamw = if args.no_adamw {
        None
    } else {
        Some(AdamW::new(
            vars.clone(),
            ParamsAdamW { lr: 1e-4, weight_decay: 0.01, ..Default::default() },
        )?)
    };
    let bytes = bytes_per_param(dtype) * n;
    let mut probe = CopyProbe::new(dev, bytes)?;
    // Bytes of the 8-bit step: p, g, p in the param dtype, plus the state read and written.
    let bytes8 = radam8.as_ref().map(|o| 3 * dtype.size_in_bytes() * n + 2 * o.state_bytes());
    let mut probe8 = bytes8.map(|b| CopyProbe::new(dev, b)).transpose()?;

    // Warm up every method (allocations, PTX load, page faults), then interleave rounds.
    radam.step(&grads)?;
    radam_clip.step(&grads)?;
    radam_ng.step(&grads)?;
    if let Some(a) = adamw.as_mut() {
        a.step(&grads)?;
    }
    probe.run()?;
    if let (Some(o), Some(p)) = (radam8.as_mut(), probe8.as_mut()) {
        o.step(&grads)?;
        p.run()?;
    }
    let (mut t_r, mut t_rc, mut t_rng, mut t_a, mut t_c) = (vec![], vec![], vec![], vec![], vec![]);
    let (mut t_8, mut t_c8) = (vec![], vec![]);
    for round in 0..args.rounds {
        // Rotate which RAdam goes first, so none always follows the copy probe.
        for k in 0..3 {
            match (round + k) % 3 {
                0 => t_r.push(time_ms(dev, args.steps, || Ok(radam.step(&grads)?))?),
                1 => t_rc.push(time_ms(dev, args.steps, || Ok(radam_clip.step(&grads)?))?),
                _ => t_rng.push(time_ms(dev, args.steps, || Ok(radam_ng.step(&grads)?))?),
            }
        }
        if let Some(a) = adamw.as_mut() {
            t_a.push(time_ms(dev, args.steps.min(3), || Ok(a.step(&grads)?))?);
        }
        t_c.push(time_ms(dev, args.steps, || probe.run())?);
        if let (Some(o), Some(p)) = (radam8.as_mut(), probe8.as_mut()) {
            t_8.push(time_ms(dev, args.steps, || Ok(o.step(&grads)?))?);
            t_c8.push(time_ms(dev, args.steps, || p.run())?);
        }
    }
    let (r, rc, rng, c) = (median(t_r), median(t_rc), median(t_rng), median(t_c));
    let gbs = |ms: f64| bytes as f64 / (ms * 1e-3) / 1e9;
    println!("{:<34} {:>10} {:>9} {:>16}", "method", "ms/step", "GB/s", "vs copy probe");
    println!("{:<34} {:>10.3} {:>9.1} {:>16.3}", "copy probe (same bytes)", c, gbs(c), 1.0);
    println!(
        "{:<34} {:>10.3} {:>9.1} {:>16.3}",
        "candle-radam (non-finite guard)",
        r,
        gbs(r),
        c / r
    );
    println!(
        "{:<34} {:>10.3} {:>9.1} {:>16.3}",
        "candle-radam (guard + clip + unscale)",
        rc,
        gbs(rc),
        c / rc
    );
    println!(
        "{:<34} {:>10.3} {:>9.1} {:>16.3}",
        "candle-radam (NonFinite::Propagate)",
        rng,
        gbs(rng),
        c / rng
    );
    if !t_a.is_empty() {
        let a = median(t_a);
        println!("{:<34} {:>10.3} {:>9.1} {:>16.3}", "candle-nn AdamW", a, gbs(a), c / a);
        println!(
            "speedup of candle-radam over candle-nn AdamW: {:.1}x (guarded), {:.1}x (unguarded)",
            a / r,
            a / rng
        );
    }
    if let (Some(b8), Some(o)) = (bytes8, radam8.as_ref()) {
        let (r8, c8) = (median(t_8), median(t_c8));
        let gbs8 = |ms: f64| b8 as f64 / (ms * 1e-3) / 1e9;
        println!(
            "{:<34} {:>10.3} {:>9.1} {:>16.3}",
            "copy probe (8-bit step's bytes)",
            c8,
            gbs8(c8),
            1.0
        );
        println!(
            "{:<34} {:>10.3} {:>9.1} {:>16.3}",
            "candle-radam 8-bit state (guard)",
            r8,
            gbs8(r8),
            c8 / r8
        );
        println!(
            "8-bit state: {:.3} B/param of state (f32 state {:.1}), {:.1} B/param moved, \
             step time / f32-state step {:.3} (goal < 1), vs its copy probe {:.3} (goal >= 1.0)",
            o.state_bytes_per_param(),
            radam.state_bytes_per_param(),
            b8 as f64 / n as f64,
            r8 / r,
            c8 / r8
        );
    }
    println!("guard + clip + unscale / guard alone: {:.3} (goal <= 1.05)", rc / r);
    println!(
        "bytes per param {}, threads {}",
        bytes_per_param(dtype),
        rayon::current_num_threads()
    );
    drop((radam, radam_clip, radam_ng, adamw, probe));
    if matches!(dtype, DType::BF16 | DType::F16) {
        bench_rounding(args, dev, dtype, &named, &grads, n, groups()?)?;
    }
    Ok(())
}

/// The update pass alone (`NonFinite::Propagate`) under each rounding mode against a copy probe
/// of the bytes that mode moves (`Rounding::bytes_per_step`), interleaved rounds, medians.
fn bench_rounding(
    args: &Args,
    dev: &Device,
    dtype: DType,
    named: &[(String, Var)],
    grads: &GradStore,
    n: usize,
    groups: Vec<ParamGroup>,
) -> Result<()> {
    let mut modes = vec![Rounding::Nearest, Rounding::Kahan, Rounding::Stochastic { seed: 1 }];
    if dtype == DType::BF16 {
        modes.insert(1, Rounding::Remainder);
    }
    let mut opts = Vec::new();
    for r in &modes {
        let p = ParamsRAdam {
            lr: 1e-4,
            weight_decay: 0.01,
            decoupled_weight_decay: true,
            non_finite: NonFinite::Propagate,
            rounding: *r,
            ..Default::default()
        };
        opts.push(RAdam::new_named(named.to_vec(), p)?.with_groups(groups.clone())?);
    }
    let mut probes = [CopyProbe::new(dev, 22 * n)?, CopyProbe::new(dev, 26 * n)?];
    for o in opts.iter_mut() {
        o.step(grads)?;
    }
    for p in probes.iter_mut() {
        p.run()?;
    }
    let mut t_o = vec![Vec::new(); opts.len()];
    let mut t_p = vec![Vec::new(); probes.len()];
    for round in 0..args.rounds {
        for k in 0..opts.len() {
            let j = (round + k) % opts.len();
            let o = &mut opts[j];
            t_o[j].push(time_ms(dev, args.steps, || Ok(o.step(grads)?))?);
        }
        for (j, p) in probes.iter_mut().enumerate() {
            t_p[j].push(time_ms(dev, args.steps, || p.run())?);
        }
    }
    let probe_ms: Vec<f64> = t_p.into_iter().map(median).collect();
    println!("{dtype:?} update pass by rounding mode (NonFinite::Propagate), vs a copy probe of its bytes:");
    println!(
        "{:<22} {:>8} {:>10} {:>12} {:>16}",
        "rounding", "B/param", "ms/step", "probe ms", "vs its probe"
    );
    for (r, t) in modes.iter().zip(t_o) {
        let b = r.bytes_per_step();
        let c = probe_ms[if b == 22 { 0 } else { 1 }];
        let ms = median(t);
        println!("{:<22} {:>8} {:>10.3} {:>12.3} {:>16.3}", r.to_string(), b, ms, c, c / ms);
    }
    println!("goal: each >= 1.0 of its probe on CPU");
    Ok(())
}

fn main() -> Result<()> {
    let args = Args::parse();
    let dev = match args.device.as_str() {
        "cpu" => Device::Cpu,
        "cuda" => {
            if !candle_core::utils::cuda_is_available() {
                bail!("--device cuda needs the `cuda` feature: cargo run --release --features cuda --example bench -- --device cuda");
            }
            Device::new_cuda(0).context("--device cuda: cannot open CUDA device 0")?
        }
        other => bail!("unknown device {other} (cpu or cuda)"),
    };
    let dtype = match args.dtype.as_str() {
        "f32" => DType::F32,
        "bf16" => DType::BF16,
        "f16" => DType::F16,
        "f64" => DType::F64,
        other => bail!("unknown dtype {other}"),
    };
    let layout = args.layout.unwrap_or(if dev.is_cpu() { Layout::Mixed } else { Layout::All });
    let layouts =
        if layout == Layout::All { vec![Layout::Gpt2, Layout::OneB] } else { vec![layout] };
    for l in layouts {
        bench(&args, &dev, l, dtype)?;
    }
    Ok(())
}
