//! GPU vs CPU for the f16 / bf16 rounding modes ([`Rounding`], a module of `tests/cuda.rs`):
//! every mode and half dtype, with full and with 8-bit moments ([`StateFormat`]), params, rounding
//! buffers (through `master_weights`) and the saved state (moments, 8-bit codes and absmax,
//! buffers, keys) bit for bit, stochastic rounding included (the same counter-based hash on both
//! sides).
//! Compiled only with `--features cuda`; skips with a message when there is no CUDA device or
//! driver (`cuda/device.rs`).

use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Result, Tensor, Var};
use candle_nn::Optimizer;
use candle_radam::{NonFinite, ParamGroup, ParamsRAdam, RAdam, Rounding, StateFormat};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::device::{gpu, has_bf16};

/// Bits of an f16 / bf16 / f32 tensor, every NaN as one value: a NaN's payload and sign are
/// the hardware's (x86 makes 0xffc00000 for 0 * inf, an NVIDIA GPU 0x7fffffff), everything else
/// must be the same bits.
fn bits(t: &Tensor) -> Result<Vec<u32>> {
    const NAN: u32 = u32::MAX;
    let t = t.to_device(&Device::Cpu)?.flatten_all()?;
    Ok(match t.dtype() {
        DType::F16 => t
            .to_vec1::<half::f16>()?
            .iter()
            .map(|x| if x.is_nan() { NAN } else { x.to_bits() as u32 })
            .collect(),
        DType::BF16 => t
            .to_vec1::<half::bf16>()?
            .iter()
            .map(|x| if x.is_nan() { NAN } else { x.to_bits() as u32 })
            .collect(),
        DType::F32 => {
            t.to_vec1::<f32>()?.iter().map(|x| if x.is_nan() { NAN } else { x.to_bits() }).collect()
        }
        d => panic!("{d:?}"),
    })
}

/// 15 steps of the same variables (sizes across blocks, one unaligned by an offset-free odd
/// size) under `rounding` on the CPU and the GPU, moments stored as `format` (8-bit: `w` and `e`,
/// the two variables of 4096 elements or more), small learning rate (updates below half an ulp
/// are common), groups mixing modes: params, master values and moments agree bit for bit.
/// `big` (70001 elements) spans three CPU chunks of 32768: the CPU's chunk offsets (element
/// indices of the stochastic hash) against the GPU's blocks.
/// `non_finite`: under [`NonFinite::Propagate`], params that are +-inf and NaN / +-inf gradients
/// at steps 5 and 9, so NaN and inf reach every mode's store (NaNs compared as a class, see
/// [`bits`]; the rounding buffers and record fingerprints, which hold NaN payloads, are compared
/// through the master values only, and the CPU resume is skipped).
fn compare(
    dev: &Device,
    dtype: DType,
    rounding: Rounding,
    format: StateFormat,
    non_finite: bool,
) -> Result<()> {
    let mut rng = StdRng::seed_from_u64(17);
    let shapes = [("w", 9000usize), ("b", 33), ("e", 4097), ("s", 1), ("big", 70001)];
    let (mut cpu, mut gpu_vars) = (Vec::new(), Vec::new());
    for (name, n) in shapes {
        let mut v: Vec<f32> = (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect();
        if non_finite && n > 40 {
            v[7] = f32::INFINITY;
            v[n - 2] = f32::NEG_INFINITY;
        }
        let t = Tensor::from_vec(v, n, &Device::Cpu)?.to_dtype(dtype)?;
        cpu.push((name.to_string(), Var::from_tensor(&t)?));
        gpu_vars.push((name.to_string(), Var::from_tensor(&t.to_device(dev)?)?));
    }
    let p = ParamsRAdam {
        lr: 3e-4,
        rounding,
        weight_decay: 0.01,
        decoupled_weight_decay: true,
        non_finite: if non_finite { NonFinite::Propagate } else { NonFinite::Error },
        ..Default::default()
    };
    // Group "b" rounds to nearest whatever the optimizer's mode, "e" stochastically.
    let groups = || {
        vec![
            ParamGroup::names("plain", &["b"]).rounding(Rounding::Nearest),
            ParamGroup::names("sr", &["e"]).rounding(Rounding::Stochastic { seed: 99 }),
        ]
    };
    let mut oc = RAdam::new_named(cpu.clone(), p.clone())?
        .with_groups(groups())?
        .with_state_format(format)?;
    let mut og =
        RAdam::new_named(gpu_vars.clone(), p)?.with_groups(groups())?.with_state_format(format)?;
    let eight = format != StateFormat::Full;
    for o in [&oc, &og] {
        assert_eq!(o.var_state("w").map(|s| s.1), Some(eight));
        assert_eq!(o.var_state("e").map(|s| s.1), Some(eight));
    }
    for t in 0..15 {
        let (mut gc, mut gg) = (GradStore::default(), GradStore::default());
        for ((name, vc), (_, vg)) in cpu.iter().zip(&gpu_vars) {
            if t % 4 == 3 && name == "w" {
                continue; // a missing gradient: per-variable step counts differ
            }
            let n = vc.elem_count();
            let mut g: Vec<f32> = (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect();
            if non_finite && (t == 5 || t == 9) && n > 40 {
                g[3] = f32::NAN;
                g[n / 2] = if t == 5 { f32::INFINITY } else { f32::NEG_INFINITY };
                g[n - 1] = -f32::NAN;
            }
            let g = Tensor::from_vec(g, n, &Device::Cpu)?.to_dtype(dtype)?;
            gc.insert(vc, g.clone());
            gg.insert(vg, g.to_device(dev)?);
        }
        oc.step(&gc)?;
        og.step(&gg)?;
    }
    for ((name, vc), (_, vg)) in cpu.iter().zip(&gpu_vars) {
        let what = format!("{dtype:?} {rounding} {format:?} {name}");
        assert_eq!(bits(vc.as_tensor())?, bits(vg.as_tensor())?, "{what}: param");
        assert_eq!(
            bits(&oc.master_weights(name)?)?,
            bits(&og.master_weights(name)?)?,
            "{what}: master"
        );
    }
    // The saved states (moments, buffers, keys) are the same file contents.
    let dir = tempfile::tempdir()?;
    oc.save_state(dir.path().join("c"))?;
    og.save_state(dir.path().join("g"))?;
    let (fc, fg) = (
        candle_core::safetensors::load(dir.path().join("c"), &Device::Cpu)?,
        candle_core::safetensors::load(dir.path().join("g"), &Device::Cpu)?,
    );
    let mut keys: Vec<&String> = fc.keys().collect();
    keys.sort();
    assert_eq!(keys.len(), fg.len());
    assert_eq!(fc.contains_key("exp_avg_q8.w"), eight);
    for k in keys {
        let (a, b) = (&fc[k], &fg[k]);
        if non_finite && matches!(a.dtype(), DType::I16 | DType::I64) {
            continue; // NaN payloads in the buffers and fingerprints: compared through the masters
        }
        let same = match a.dtype() {
            DType::I16 => a.to_vec1::<i16>()? == b.to_vec1::<i16>()?,
            DType::I64 => a.to_vec1::<i64>()? == b.to_vec1::<i64>()?,
            DType::U8 => a.flatten_all()?.to_vec1::<u8>()? == b.flatten_all()?.to_vec1::<u8>()?,
            DType::F64 => a
                .to_vec1::<f64>()?
                .iter()
                .map(|x| x.to_bits())
                .eq(b.to_vec1::<f64>()?.iter().map(|x| x.to_bits())),
            _ => bits(a)? == bits(b)?,
        };
        // The fingerprint word of a record hashes the values, equal when the params are.
        assert!(same, "{dtype:?} {rounding} {format:?}: state '{k}' differs");
    }
    if non_finite {
        return Ok(());
    }
    // The GPU run resumes on the CPU from the GPU's state and continues identically.
    let mut back = RAdam::new_named(
        gpu_vars
            .iter()
            .map(|(n, v)| {
                Ok((n.clone(), Var::from_tensor(&v.as_tensor().to_device(&Device::Cpu)?)?))
            })
            .collect::<Result<Vec<_>>>()?,
        ParamsRAdam {
            lr: 3e-4,
            rounding,
            weight_decay: 0.01,
            decoupled_weight_decay: true,
            ..Default::default()
        },
    )?
    .with_groups(groups())?
    .with_state_format(format)?;
    let report = back.load_state(dir.path().join("g"))?;
    assert!(report.is_clean(), "{report}");
    for (name, _) in &cpu {
        assert_eq!(bits(&back.master_weights(name)?)?, bits(&oc.master_weights(name)?)?, "{name}");
    }
    Ok(())
}

#[test]
fn rounding_modes_match_cpu_bit_for_bit() -> Result<()> {
    let Some(dev) = gpu("rounding_modes_match_cpu_bit_for_bit") else {
        return Ok(());
    };
    let modes =
        [Rounding::Nearest, Rounding::Remainder, Rounding::Kahan, Rounding::Stochastic { seed: 5 }];
    let mut dtypes = vec![DType::F16];
    if has_bf16(&dev) {
        dtypes.push(DType::BF16);
    }
    for dtype in dtypes {
        for r in modes {
            if r == Rounding::Remainder && dtype == DType::F16 {
                continue;
            }
            for format in [StateFormat::Full, StateFormat::blockwise8()] {
                compare(&dev, dtype, r, format, false)?;
            }
        }
    }
    Ok(())
}

/// inf params and NaN / inf gradients (`NonFinite::Propagate`) through every mode: the GPU's
/// params and master values are the CPU's (NaN as a class).
#[test]
fn rounding_modes_match_cpu_on_inf_and_nan() -> Result<()> {
    let Some(dev) = gpu("rounding_modes_match_cpu_on_inf_and_nan") else {
        return Ok(());
    };
    let modes =
        [Rounding::Nearest, Rounding::Remainder, Rounding::Kahan, Rounding::Stochastic { seed: 5 }];
    let mut dtypes = vec![DType::F16];
    if has_bf16(&dev) {
        dtypes.push(DType::BF16);
    }
    for dtype in dtypes {
        for r in modes {
            if r == Rounding::Remainder && dtype == DType::F16 {
                continue;
            }
            compare(&dev, dtype, r, StateFormat::Full, true)?;
        }
    }
    Ok(())
}
