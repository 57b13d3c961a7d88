//! GPU vs CPU for fused global-norm clipping and dynamic loss scaling (a module of
//! `tests/cuda.rs`, same scheme as `cuda/groups.rs`): the norm summed by the `radam_sumsq_*`
//! kernels (per-block f64 partials added on the host), the multiplier `coef / scale` inside the
//! update kernels, the scaler's skips and scale sequence, and the exactness properties
//! (`max_grad_norm = inf`, power-of-two scales) on the device. Compiled only with
//! `--features cuda`; every test prints that it was skipped and passes when there is no CUDA device or
//! driver (`cuda/device.rs`; any other error opening the device fails it).
//!
//! Tolerances: f32 1e-6 relative, f64 1e-12 relative, f16/bf16 1 ulp (the update kernels agree
//! with the CPU bit for bit; the norms may differ in the last f64 bits, summation order).

use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Result, Tensor, Var};
use candle_nn::Optimizer;
use candle_radam::{LossScaler, ParamsRAdam, RAdam};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::device::{gpu, twin_vars, Twins};

/// `a` and `b` within the tolerance of their dtype (see the module docs).
fn close(what: &str, a: &Tensor, b: &Tensor) -> Result<()> {
    let ulp = match a.dtype() {
        DType::F16 => 1.0 / 1024.0,
        DType::BF16 => 1.0 / 128.0,
        DType::F64 => 1e-12,
        _ => 1e-6,
    };
    let (x, y) = (a.to_dtype(DType::F64)?.flatten_all()?, b.to_dtype(DType::F64)?.flatten_all()?);
    for (i, (x, y)) in x.to_vec1::<f64>()?.iter().zip(&y.to_vec1::<f64>()?).enumerate() {
        assert!(
            x.to_bits() == y.to_bits() || (x - y).abs() <= ulp * x.abs().max(y.abs()),
            "{what}[{i}]: {x} vs {y}"
        );
    }
    Ok(())
}

/// The same named variables (every dtype, sizes around the 4096-element block) on CPU and GPU.
type Pair = Twins;

fn vars(dev: &Device, rng: &mut StdRng) -> Result<Pair> {
    twin_vars(dev, rng, &[("w", 9000), ("b", 33), ("ln", 4097), ("e", 1)])
}

/// Step `t`'s gradients for both copies, multiplied by `mult` (a power of two times a step
/// factor that puts the norm above or below 5), with an inf in `e` on the steps of `bad`.
fn grads(
    pair: &Pair,
    dev: &Device,
    t: u64,
    mult: f64,
    bad: &[u64],
) -> Result<(GradStore, GradStore)> {
    let mut rng = StdRng::seed_from_u64(100 + t);
    let f = if t.is_multiple_of(2) { 0.02 } else { 1.0 };
    let (mut gc, mut gg) = (GradStore::default(), GradStore::default());
    for ((name, c), (_, g)) in pair.0.iter().zip(&pair.1) {
        let n = c.elem_count();
        let mut v: Vec<f32> = (0..n).map(|_| rng.random_range(-0.5f32..0.5) * f as f32).collect();
        if bad.contains(&t) && name.ends_with(".e") {
            v[0] = f32::INFINITY;
        }
        let grad = Tensor::from_vec(v, n, &Device::Cpu)?.to_dtype(c.dtype())?.affine(mult, 0.0)?;
        gg.insert(g.as_tensor(), grad.to_device(dev)?);
        gc.insert(c.as_tensor(), grad);
    }
    Ok((gc, gg))
}

fn bits(vars: &[(String, Var)]) -> Result<Vec<Vec<u64>>> {
    vars.iter()
        .map(|(_, v)| {
            let t = v.as_tensor().to_device(&Device::Cpu)?.to_dtype(DType::F64)?;
            Ok(t.to_vec1::<f64>()?.iter().map(|x| x.to_bits()).collect())
        })
        .collect()
}

fn params() -> ParamsRAdam {
    ParamsRAdam { lr: 1e-2, weight_decay: 0.01, ..Default::default() }
}

/// Clipping (norms above and below the threshold) and loss scaling with skipped steps: the GPU
/// follows the CPU (params, gnorm, scale sequence, skip count, saved scale).
#[test]
fn clip_and_loss_scale_match_cpu() -> Result<()> {
    let Some(dev) = gpu("clip_and_loss_scale_match_cpu") else {
        return Ok(());
    };
    let pair = vars(&dev, &mut StdRng::seed_from_u64(9))?;
    let scaler = LossScaler { init_scale: 1024.0, growth_interval: 3, ..Default::default() };
    let make = |v: &[(String, Var)]| -> Result<RAdam> {
        RAdam::new_named(v.to_vec(), params())?
            .with_max_grad_norm(5.0)?
            .with_loss_scaler(scaler.clone())
    };
    let (mut cpu, mut gpu) = (make(&pair.0)?, make(&pair.1)?);
    let (mut above, mut below) = (0, 0);
    for t in 1..=12u64 {
        assert_eq!(cpu.loss_scale(), gpu.loss_scale(), "scale before step {t}");
        let (gc, gg) = grads(&pair, &dev, t, cpu.loss_scale(), &[2, 7])?;
        cpu.step(&gc)?;
        gpu.step(&gg)?;
        let (nc, ng) = (cpu.last_grad_norm().unwrap(), gpu.last_grad_norm().unwrap());
        if nc.is_finite() {
            assert!((nc - ng).abs() <= 1e-12 * nc, "step {t}: gnorm {nc} (CPU) vs {ng} (GPU)");
            if nc > 5.0 {
                above += 1
            } else {
                below += 1
            }
        } else {
            assert!(!ng.is_finite(), "step {t}: GPU gnorm {ng}, CPU {nc}");
        }
        for ((name, c), (_, g)) in pair.0.iter().zip(&pair.1) {
            close(
                &format!("step {t}: {name}"),
                c.as_tensor(),
                &g.as_tensor().to_device(&Device::Cpu)?,
            )?;
        }
    }
    assert!(above >= 3 && below >= 3, "norms on both sides: {above} above, {below} below");
    assert_eq!((cpu.skipped_steps(), gpu.skipped_steps()), (2, 2));
    assert_eq!(cpu.loss_scale(), gpu.loss_scale());
    let dir = tempfile::tempdir().map_err(candle_core::Error::wrap)?;
    let path = dir.path().join("g.safetensors");
    gpu.save_state(&path)?;
    let mut back = make(&pair.0)?;
    back.load_state(&path)?;
    assert_eq!(
        (back.loss_scale(), back.loss_scale_growth_tracker()),
        (gpu.loss_scale(), gpu.loss_scale_growth_tracker())
    );
    Ok(())
}

/// On the GPU, `max_grad_norm = inf` and power-of-two loss scales leave the trajectory
/// bit-identical to a plain one.
#[test]
fn exact_cases_bit_for_bit_on_gpu() -> Result<()> {
    let Some(dev) = gpu("exact_cases_bit_for_bit_on_gpu") else {
        return Ok(());
    };
    let mut rng = StdRng::seed_from_u64(10);
    let (_, plain_v) = vars(&dev, &mut rng)?;
    let copy = |v: &[(String, Var)]| -> Result<Vec<(String, Var)>> {
        v.iter().map(|(n, x)| Ok((n.clone(), Var::from_tensor(&x.as_tensor().copy()?)?))).collect()
    };
    let (inf_v, scaled_v) = (copy(&plain_v)?, copy(&plain_v)?);
    let mut plain = RAdam::new_named(plain_v.clone(), params())?;
    let mut inf = RAdam::new_named(inf_v.clone(), params())?.with_max_grad_norm(f64::INFINITY)?;
    let scaler = LossScaler { init_scale: 256.0, growth_interval: 2, ..Default::default() };
    let mut scaled = RAdam::new_named(scaled_v.clone(), params())?.with_loss_scaler(scaler)?;
    for t in 1..=8u64 {
        let s = scaled.loss_scale();
        for (opt, v, mult) in
            [(&mut plain, &plain_v, 1.0), (&mut inf, &inf_v, 1.0), (&mut scaled, &scaled_v, s)]
        {
            let pair = (v.clone(), v.clone());
            let (_, g) = grads(&pair, &dev, t, mult, &[])?;
            opt.step(&g)?;
        }
        assert!(bits(&plain_v)? == bits(&inf_v)?, "step {t}: max_grad_norm = inf differs");
        assert!(bits(&plain_v)? == bits(&scaled_v)?, "step {t}: scale {s} differs");
    }
    assert_eq!(scaled.loss_scale(), 4096.0); // grew at steps 2, 4, 6, 8
    Ok(())
}
