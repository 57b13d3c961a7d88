//! GPU vs CPU with parameter groups and per-variable step counts (a module of `tests/cuda.rs`,
//! same scheme as `cuda/gpu.rs`): one launch per dtype carries several scalar sets, one per
//! distinct (group, t), each table entry pointing at its own. Compiled only with
//! `--features cuda`; every test prints that it was skipped and passes when there is no CUDA device or
//! driver (`cuda/device.rs`; any other error opening the device fails it).
//!
//! Tolerances as in `cuda/gpu.rs`: f32 1e-6 relative, f64 1e-12 relative, f16/bf16 1 ulp (a
//! correct build agrees bit for bit).

use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Result, Tensor};
use candle_nn::Optimizer;
use candle_radam::{ParamGroup, ParamsRAdam, RAdam};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::device::{gpu, twin_vars, Twins};

/// Every element of `a` and `b` (any float dtype) within the tolerance of its dtype.
fn assert_close(what: &str, a: &Tensor, b: &Tensor) -> Result<()> {
    assert_eq!((a.dtype(), a.dims()), (b.dtype(), b.dims()), "{what}");
    let half = matches!(a.dtype(), DType::F16 | DType::BF16);
    let tol = if a.dtype() == DType::F64 { 1e-12 } else { 1e-6 };
    let (x, y) = (a.to_dtype(DType::F64)?.flatten_all()?, b.to_dtype(DType::F64)?.flatten_all()?);
    let (x, y) = (x.to_vec1::<f64>()?, y.to_vec1::<f64>()?);
    for (i, (x, y)) in x.iter().zip(&y).enumerate() {
        if x.to_bits() == y.to_bits() {
            continue;
        }
        if half {
            // 1 ulp of a half type is at most 2^-10 (f16) / 2^-7 (bf16) relative.
            let ulp = if a.dtype() == DType::F16 { 1.0 / 1024.0 } else { 1.0 / 128.0 };
            assert!((x - y).abs() <= ulp * x.abs().max(y.abs()), "{what}[{i}]: {x} vs {y}");
        } else {
            let d = (x - y).abs() / x.abs().max(y.abs()).max(1e-30);
            assert!(d <= tol, "{what}[{i}]: {x} vs {y} (rel {d:e})");
        }
    }
    Ok(())
}

/// Named variables of mixed dtypes and sizes (some larger than a block), the same values on
/// both devices.
fn vars(dev: &Device, rng: &mut StdRng) -> Result<Twins> {
    twin_vars(dev, rng, &[("w", 5000), ("bias", 33), ("norm", 4097), ("emb", 1)])
}

fn groups() -> Result<Vec<ParamGroup>> {
    Ok(vec![
        ParamGroup::glob("no_decay", &["*.bias", "*.norm"])?.weight_decay(0.0).betas(0.8, 0.99),
        ParamGroup::glob("emb", &["*.emb"])?.lr_scale(0.1).eps(0.0).degenerate_to_sgd(false),
    ])
}

/// Groups and gradients missing on some steps (so per-variable step counts differ, and one
/// launch mixes SGD, adaptive and frozen tensors): GPU params, moments and step counts follow
/// the CPU's.
#[test]
fn groups_and_per_variable_steps_match_cpu() -> Result<()> {
    let Some(dev) = gpu("groups_and_per_variable_steps_match_cpu") else {
        return Ok(());
    };
    let mut rng = StdRng::seed_from_u64(8);
    let (cv, gv) = vars(&dev, &mut rng)?;
    let p = ParamsRAdam {
        lr: 1e-2,
        weight_decay: 0.1,
        decoupled_weight_decay: true,
        ..Default::default()
    };
    let mut cpu = RAdam::new_named(cv.clone(), p.clone())?.with_groups(groups()?)?;
    let mut gpu = RAdam::new_named(gv.clone(), p)?.with_groups(groups()?)?;
    for t in 1..=14u64 {
        let (mut gc, mut gg) = (GradStore::default(), GradStore::default());
        for (i, ((name, c), (_, g))) in cv.iter().zip(&gv).enumerate() {
            if (t as usize + i) % 3 == 0 {
                continue; // no gradient for this variable on this step
            }
            let grad = if name.ends_with("emb") {
                Tensor::zeros(c.elem_count(), c.dtype(), &Device::Cpu)? // eps = 0, zero moments
            } else {
                let v: Vec<f32> =
                    (0..c.elem_count()).map(|_| rng.random_range(-0.5f32..0.5)).collect();
                Tensor::from_vec(v, c.elem_count(), &Device::Cpu)?.to_dtype(c.dtype())?
            };
            gg.insert(g.as_tensor(), grad.to_device(&dev)?);
            gc.insert(c.as_tensor(), grad);
        }
        cpu.step(&gc)?;
        gpu.step(&gg)?;
        for ((name, c), (_, g)) in cv.iter().zip(&gv) {
            assert_close(
                &format!("step {t}: {name}"),
                c.as_tensor(),
                &g.as_tensor().to_device(&Device::Cpu)?,
            )?;
            assert_eq!(cpu.var_step_count(name), gpu.var_step_count(name), "{name}");
        }
    }
    let steps: Vec<u64> = cv.iter().map(|(n, _)| gpu.var_step_count(n).unwrap()).collect();
    assert!(steps.iter().any(|&s| s <= 9) && steps.iter().any(|&s| s >= 10), "{steps:?}");
    // Moments, through saved state.
    let dir = tempfile::tempdir().map_err(candle_core::Error::wrap)?;
    let (pc, pg) = (dir.path().join("c.safetensors"), dir.path().join("g.safetensors"));
    cpu.save_state(&pc)?;
    gpu.save_state(&pg)?;
    let (sc, sg) = (
        candle_core::safetensors::load(&pc, &Device::Cpu)?,
        candle_core::safetensors::load(&pg, &Device::Cpu)?,
    );
    for (k, a) in &sc {
        if k.starts_with("exp_avg") {
            assert_close(k, a, &sg[k])?;
        }
    }
    Ok(())
}
