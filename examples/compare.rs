//! Trains the same small MLP with RAdam on the CPU and on a CUDA GPU, from identical weights on
//! identical data, and prints per step the loss on each device and how far the parameters have
//! drifted apart. Exits non-zero when the drift passes `--tol`, when the losses differ by more than
//! `--loss-tol` (relative), or at the first NaN / inf in a loss or a parameter on either device.
//!
//! ```text
//! cargo run --release --features cuda --example compare -- --steps 100 --dtype f32
//! ```
//!
//! The drift is not only the optimizer's: forward and backward run through different matmul
//! kernels (cuBLAS vs gemm), so losses and gradients differ in the last bits and the difference
//! grows slowly with training. tests/cuda.rs checks the optimizer alone, bit for bit.

use clap::Parser;

#[derive(Parser, Debug)]
#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
#[command(about = "Train the same MLP with RAdam on CPU and CUDA and compare every step")]
struct Args {
    /// Training steps.
    #[arg(long, default_value_t = 100)]
    steps: usize,
    /// Inputs per example.
    #[arg(long, default_value_t = 32)]
    inputs: usize,
    /// Hidden width.
    #[arg(long, default_value_t = 128)]
    hidden: usize,
    /// Hidden layers.
    #[arg(long, default_value_t = 3)]
    layers: usize,
    /// Examples per batch (one fixed batch).
    #[arg(long, default_value_t = 512)]
    batch: usize,
    /// Learning rate.
    #[arg(long, default_value_t = 1e-3)]
    lr: f64,
    /// Parameter dtype: f32, f16, bf16 or f64.
    #[arg(long, default_value = "f32")]
    dtype: String,
    /// Largest accepted drift: max |cpu - gpu| over all parameters, divided by the largest |cpu|
    /// parameter over all tensors (a tensor's own maximum can be ~0, e.g. a zero-initialised bias,
    /// and would make a last-bit difference there look like a large relative error).
    #[arg(long, default_value_t = 1e-3)]
    tol: f64,
    /// Largest accepted loss difference per step: |loss_cpu - loss_cuda| / |loss_cpu|.
    #[arg(long, default_value_t = 1e-3)]
    loss_tol: f64,
    /// Seed of the data and of the initial weights.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// CUDA device ordinal.
    #[arg(long, default_value_t = 0)]
    device: usize,
    /// Self-test of this program without a GPU: the "CUDA" twin runs on the CPU too (the drift
    /// must then be exactly 0).
    #[arg(long, hide = true)]
    twin_cpu: bool,
}

#[cfg(not(feature = "cuda"))]
fn main() {
    let _ = Args::parse();
    eprintln!(
        "compare: this build has no CUDA support; run it with \
         `cargo run --release --features cuda --example compare`"
    );
    std::process::exit(2);
}

#[cfg(feature = "cuda")]
fn main() -> anyhow::Result<()> {
    cuda_main::run(Args::parse())
}

#[cfg(feature = "cuda")]
mod cuda_main {
    use super::Args;
    use anyhow::{bail, Context};
    use candle_core::{DType, Device, Module, Tensor, D};
    use candle_nn::{Linear, Optimizer, VarBuilder, VarMap};
    use candle_radam::{ParamsRAdam, RAdam};
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    struct Mlp {
        layers: Vec<Linear>,
    }

    impl Mlp {
        fn new(a: &Args, vb: VarBuilder) -> candle_core::Result<Self> {
            let mut layers = Vec::new();
            let mut width = a.inputs;
            for i in 0..a.layers {
                layers.push(candle_nn::linear(width, a.hidden, vb.pp(format!("l{i}")))?);
                width = a.hidden;
            }
            layers.push(candle_nn::linear(width, 1, vb.pp("out"))?);
            Ok(Self { layers })
        }

        fn loss(&self, x: &Tensor, y: &Tensor) -> candle_core::Result<Tensor> {
            let mut h = x.clone();
            for (i, l) in self.layers.iter().enumerate() {
                h = l.forward(&h)?;
                if i + 1 < self.layers.len() {
                    h = h.tanh()?;
                }
            }
            h.to_dtype(DType::F32)?.squeeze(D::Minus1)?.sub(y)?.sqr()?.mean_all()
        }
    }

    fn dtype(s: &str) -> anyhow::Result<DType> {
        Ok(match s {
            "f32" => DType::F32,
            "f16" => DType::F16,
            "bf16" => DType::BF16,
            "f64" => DType::F64,
            other => bail!("unknown dtype {other:?} (f32, f16, bf16, f64)"),
        })
    }

    pub fn run(a: Args) -> anyhow::Result<()> {
        let dt = dtype(&a.dtype)?;
        let gpu = if a.twin_cpu {
            Device::Cpu
        } else {
            Device::new_cuda(a.device).context("opening the CUDA device")?
        };
        let cpu = Device::Cpu;

        // Data: a fixed random batch, y = sum(sin(x)) / sqrt(inputs).
        let mut rng = StdRng::seed_from_u64(a.seed);
        let xs: Vec<f32> =
            (0..a.batch * a.inputs).map(|_| rng.random_range(-2.0f32..2.0)).collect();
        let ys: Vec<f32> = xs
            .chunks(a.inputs)
            .map(|r| r.iter().map(|v| v.sin()).sum::<f32>() / (a.inputs as f32).sqrt())
            .collect();
        let x_cpu = Tensor::from_vec(xs, (a.batch, a.inputs), &cpu)?.to_dtype(dt)?;
        let y_cpu = Tensor::from_vec(ys, a.batch, &cpu)?;
        let (x_gpu, y_gpu) = (x_cpu.to_device(&gpu)?, y_cpu.to_device(&gpu)?);

        // The model is built on each device (candle's random init), then every CUDA weight is
        // overwritten by its CPU twin so both start from identical values.
        let (vm_cpu, vm_gpu) = (VarMap::new(), VarMap::new());
        let m_cpu = Mlp::new(&a, VarBuilder::from_varmap(&vm_cpu, dt, &cpu))?;
        let m_gpu = Mlp::new(&a, VarBuilder::from_varmap(&vm_gpu, dt, &gpu))?;
        let names: Vec<String> = {
            let mut n: Vec<String> = vm_cpu.data().lock().unwrap().keys().cloned().collect();
            n.sort();
            n
        };
        {
            let (dc, dg) = (vm_cpu.data().lock().unwrap(), vm_gpu.data().lock().unwrap());
            for n in &names {
                dg[n].set(&dc[n].to_device(&gpu)?)?;
            }
        }
        let params = ParamsRAdam { lr: a.lr, ..Default::default() };
        let mut o_cpu = RAdam::from_varmap(&vm_cpu, params.clone())?;
        let mut o_gpu = RAdam::from_varmap(&vm_gpu, params)?;
        let n_params: usize = vm_cpu.all_vars().iter().map(|v| v.elem_count()).sum();
        println!(
            "compare: MLP {}x{}x{} ({} tensors, {n_params} params, {dt:?}), batch {}, lr {}, {} steps",
            a.inputs,
            a.hidden,
            a.layers,
            names.len(),
            a.batch,
            a.lr,
            a.steps
        );
        println!(
            "{:>5} {:>14} {:>14} {:>12} {:>12}",
            "step", "loss_cpu", "loss_cuda", "max_abs", "max_rel"
        );

        let (mut worst, mut worst_loss) = (0f64, 0f64);
        for step in 1..=a.steps {
            let l_cpu = m_cpu.loss(&x_cpu, &y_cpu)?;
            let l_gpu = m_gpu.loss(&x_gpu, &y_gpu)?;
            o_cpu.backward_step(&l_cpu)?;
            o_gpu.backward_step(&l_gpu)?;
            let (lc, lg) = (l_cpu.to_scalar::<f32>()? as f64, l_gpu.to_scalar::<f32>()? as f64);
            // On the host, element by element: a NaN never compares greater, so a maximum taken
            // with `f64::max` (or a device reduction) would drop it and report no drift.
            let (mut max_abs, mut scale, mut bad) = (0f64, 0f64, None);
            let (dc, dg) = (vm_cpu.data().lock().unwrap(), vm_gpu.data().lock().unwrap());
            for n in &names {
                let c = dc[n].as_tensor().flatten_all()?.to_dtype(DType::F64)?.to_vec1::<f64>()?;
                let g = dg[n].as_tensor().to_device(&cpu)?.flatten_all()?.to_dtype(DType::F64)?;
                for (i, (c, g)) in c.iter().zip(g.to_vec1::<f64>()?).enumerate() {
                    if !c.is_finite() || !g.is_finite() {
                        bad.get_or_insert(format!("{n}[{i}]: cpu {c}, cuda {g}"));
                        continue;
                    }
                    max_abs = max_abs.max((c - g).abs());
                    scale = scale.max(c.abs());
                }
            }
            let max_rel = max_abs / scale.max(1e-12);
            let loss_rel = (lc - lg).abs() / lc.abs().max(1e-12);
            worst = worst.max(max_rel);
            println!("{step:>5} {lc:>14.8} {lg:>14.8} {max_abs:>12.3e} {max_rel:>12.3e}");
            if !lc.is_finite() || !lg.is_finite() {
                bail!("loss not finite at step {step}: cpu {lc}, cuda {lg}");
            }
            if let Some(b) = bad {
                bail!("parameter not finite after step {step}: {b}");
            }
            worst_loss = worst_loss.max(loss_rel);
        }
        println!(
            "compare: worst relative drift {worst:.3e} (tolerance {:.1e}), worst relative loss \
             difference {worst_loss:.3e} (tolerance {:.1e})",
            a.tol, a.loss_tol
        );
        if worst > a.tol || worst_loss > a.loss_tol {
            eprintln!(
                "compare: FAILED, drift {worst:.3e} (> {:.1e}?) loss difference {worst_loss:.3e} \
                 (> {:.1e}?)",
                a.tol, a.loss_tol
            );
            std::process::exit(1);
        }
        println!("compare: OK");
        Ok(())
    }
}
