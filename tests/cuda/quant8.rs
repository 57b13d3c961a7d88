//! GPU vs CPU with 8-bit optimizer state (a module of `tests/cuda.rs`, same scheme as
//! `cuda/gpu.rs`): the `radam8_mt_*` kernels against the CPU pass of `src/cpu8.rs`, **bit for
//! bit** (params, codes, absmax: the same f32 operations in the same order). Every test prints
//! that it was skipped and passes when there is no CUDA device or driver (`cuda/device.rs`).

use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Result, Tensor, Var};
use candle_nn::Optimizer;
use candle_radam::{NonFinite, ParamGroup, ParamsRAdam, RAdam, StateFormat};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::device::{gpu, twin_vars};

/// The bits of a tensor of any dtype, as u64 (f64 view of exactly converted values plus dtype).
/// Every NaN counts as the same value: a GPU's arithmetic returns its canonical NaN, the CPU's
/// keeps the payload of the operand, and which NaN is not part of the contract (that it is NaN
/// is).
fn bits(t: &Tensor) -> Result<Vec<u64>> {
    let t = t.to_device(&Device::Cpu)?.flatten_all()?;
    let canon = |x: f64| if x.is_nan() { f64::NAN.to_bits() } else { x.to_bits() };
    Ok(match t.dtype() {
        DType::U8 => t.to_vec1::<u8>()?.into_iter().map(u64::from).collect(),
        _ => t.to_dtype(DType::F64)?.to_vec1::<f64>()?.into_iter().map(canon).collect(),
    })
}

/// `a` and `b` hold the same bits (the first difference is reported).
fn same(what: &str, a: &Tensor, b: &Tensor) -> Result<()> {
    let (x, y) = (bits(a)?, bits(b)?);
    assert_eq!(x.len(), y.len(), "{what}: sizes");
    if let Some(i) = (0..x.len()).find(|&i| x[i] != y[i]) {
        panic!("{what}[{i}]: {:#x} vs {:#x}", x[i], y[i]);
    }
    Ok(())
}

type Named = [(String, Var)];

/// Step `t` of both optimizers with the same gradients (`grad(i, n)`: the `n` values of
/// variable `i`'s, `None`: no gradient), then the params of every non-f64 twin compared bit for
/// bit (f64 keeps full state: tests/cuda/gpu.rs covers it, to 1e-12).
fn step_twins(
    dev: &Device,
    (cpu, gpu): (&mut RAdam, &mut RAdam),
    (cv, gv): (&Named, &Named),
    t: u64,
    mut grad: impl FnMut(usize, usize) -> Option<Vec<f32>>,
) -> Result<()> {
    let (mut gc, mut gg) = (GradStore::default(), GradStore::default());
    for (i, ((_, c), (_, g))) in cv.iter().zip(gv).enumerate() {
        let Some(v) = grad(i, c.elem_count()) else { continue };
        let grad = Tensor::from_vec(v, c.elem_count(), &Device::Cpu)?.to_dtype(c.dtype())?;
        gg.insert(g.as_tensor(), grad.to_device(dev)?);
        gc.insert(c.as_tensor(), grad);
    }
    cpu.step(&gc)?;
    gpu.step(&gg)?;
    for ((name, c), (_, g)) in cv.iter().zip(gv).filter(|((_, c), _)| c.dtype() != DType::F64) {
        same(&format!("step {t}: {name}"), c.as_tensor(), g.as_tensor())?;
    }
    Ok(())
}

/// Both optimizers' states saved into `dir` (`c.safetensors`, `g.safetensors`), loaded back on
/// the CPU.
fn saved_states(dir: &std::path::Path, cpu: &RAdam, gpu: &RAdam) -> Result<(Tensors, Tensors)> {
    cpu.save_state(dir.join("c.safetensors"))?;
    gpu.save_state(dir.join("g.safetensors"))?;
    let load = |n: &str| candle_core::safetensors::load(dir.join(n), &Device::Cpu);
    Ok((load("c.safetensors")?, load("g.safetensors")?))
}

type Tensors = std::collections::HashMap<String, Tensor>;

/// 8-bit state on CPU and GPU from the same variables (f32, f16, bf16 where supported; f64 kept
/// full by a group, as the error for f64 asks; not compared here), several steps through both RAdam branches, some
/// gradients missing, clipping on (gradient multiplier != 1): params bit for bit after every
/// step, then the saved codes and absmax bit for bit; then the GPU state loads into a CPU
/// optimizer and saves the same file contents, and converting both to f32 state agrees.
#[test]
fn quant8_gpu_matches_cpu_bit_for_bit() -> Result<()> {
    let Some(dev) = gpu("quant8_gpu_matches_cpu_bit_for_bit") else {
        return Ok(());
    };
    let mut rng = StdRng::seed_from_u64(13);
    let shapes = [("w", 5000), ("big", 3 * 4096 + 17), ("bias", 33), ("edge", 4096)];
    let (cv, gv) = twin_vars(&dev, &mut rng, &shapes)?;
    let p = ParamsRAdam {
        lr: 1e-2,
        weight_decay: 0.1,
        decoupled_weight_decay: true,
        ..Default::default()
    };
    let build = |vars| -> Result<RAdam> {
        RAdam::new_named(vars, p.clone())?
            .with_groups(
                vec![ParamGroup::glob("f64", &["F64.*"])?.state_format(StateFormat::Full)],
            )?
            .with_state_format(StateFormat::blockwise8())?
            .with_max_grad_norm(5.0)
    };
    let (mut cpu, mut gpu) = (build(cv.clone())?, build(gv.clone())?);
    assert_eq!(cpu.var_state("F32.big"), Some((2 * 12305 + 8 * 49, true)));
    assert_eq!(cpu.state_bytes(), gpu.state_bytes());
    for t in 1..=8u64 {
        step_twins(&dev, (&mut cpu, &mut gpu), (&cv, &gv), t, |i, n| {
            let skip = (t as usize + i).is_multiple_of(4);
            (!skip).then(|| (0..n).map(|_| rng.random_range(-0.5f32..0.5)).collect())
        })?;
    }
    let dir = tempfile::tempdir().map_err(candle_core::Error::wrap)?;
    let path = |n: &str| dir.path().join(n);
    let load = |n: &str| candle_core::safetensors::load(path(n), &Device::Cpu);
    let (sc, sg) = saved_states(dir.path(), &cpu, &gpu)?;
    assert!(sc.contains_key("exp_avg_q8.F32.big") && sc.contains_key("exp_avg.F64.big"));
    for (k, a) in sc.iter().filter(|(k, _)| k.starts_with("exp_avg") && !k.contains("F64")) {
        same(k, a, &sg[k])?;
    }
    // GPU state into a CPU optimizer: identical file contents.
    let mut back = build(cv.clone())?;
    assert!(back.load_state(path("g.safetensors"))?.is_clean());
    back.save_state(path("b.safetensors"))?;
    let sb = load("b.safetensors")?;
    for (k, a) in sg.iter().filter(|(k, _)| k.starts_with("exp_avg")) {
        same(&format!("{k} after GPU -> CPU"), a, &sb[k])?;
    }
    // Conversion to f32 state on both devices.
    cpu.set_state_format(StateFormat::Full)?;
    gpu.set_state_format(StateFormat::Full)?;
    cpu.save_state(path("c32.safetensors"))?;
    gpu.save_state(path("g32.safetensors"))?;
    let (fc, fg) = (load("c32.safetensors")?, load("g32.safetensors")?);
    for (k, a) in fc.iter().filter(|(k, _)| k.starts_with("exp_avg") && !k.contains("F64")) {
        same(&format!("{k} dequantized"), a, &fg[k])?;
    }
    assert_eq!(gpu.state_bytes_per_param(), cpu.state_bytes_per_param());
    Ok(())
}

/// The edge blocks of the 8-bit state, CPU == GPU (params after every step, then codes and
/// absmax): block 0 truly all zero (zero gradients, zero moments, no L2: the new absmax is 0 and
/// the codes must be the zero codes, not `0 / 0`'s code 0: embedding rows with no gradient
/// yet), block 1 a NaN gradient under `NonFinite::Propagate` (NaN-sticky block max: the whole
/// block is NaN, every code 0), block 2 a finite huge gradient whose `v` overflows to +inf (the
/// absmax saturates to `f32::MAX`, the block stays finite; f16: the gradient itself is inf).
#[test]
fn quant8_gpu_edge_blocks_match_cpu() -> Result<()> {
    let Some(dev) = gpu("quant8_gpu_edge_blocks_match_cpu") else {
        return Ok(());
    };
    let mut rng = StdRng::seed_from_u64(14);
    let (cv, gv) = twin_vars(&dev, &mut rng, &[("e", 4096 + 4 * 256)])?;
    let p = ParamsRAdam { lr: 1e-2, non_finite: NonFinite::Propagate, ..Default::default() };
    let build = |vars| -> Result<RAdam> {
        RAdam::new_named(vars, p.clone())?
            .with_groups(
                vec![ParamGroup::glob("f64", &["F64.*"])?.state_format(StateFormat::Full)],
            )?
            .with_state_format(StateFormat::blockwise8())
    };
    let (mut cpu, mut gpu) = (build(cv.clone())?, build(gv.clone())?);
    for t in 1..=3u64 {
        step_twins(&dev, (&mut cpu, &mut gpu), (&cv, &gv), t, |_, n| {
            let mut v: Vec<f32> = (0..n).map(|_| rng.random_range(-0.5f32..0.5)).collect();
            v[..256].fill(0.0);
            if t == 1 {
                v[256 + 5] = f32::NAN;
                v[512 + 3] = 1e22;
            }
            Some(v)
        })?;
    }
    let dir = tempfile::tempdir().map_err(candle_core::Error::wrap)?;
    let (sc, sg) = saved_states(dir.path(), &cpu, &gpu)?;
    let f32s = |k: &str| sc[k].to_dtype(DType::F32)?.to_vec1::<f32>();
    let u8s = |k: &str| sc[k].flatten_all()?.to_vec1::<u8>();
    // The planted blocks are what they should be (on the CPU, so on the GPU too).
    let (ma, va) = (f32s("exp_avg_absmax.F32.e")?, f32s("exp_avg_sq_absmax.F32.e")?);
    assert_eq!((ma[0], va[0]), (0.0, 0.0), "block 0: all zero");
    assert!(ma[1].is_nan() && va[1].is_nan(), "block 1: NaN gradient, NaN block");
    // Saturated to f32::MAX on step 1, then decayed by beta2 twice: finite, near the top.
    assert!(va[2].is_finite() && va[2] > 0.99 * f32::MAX, "block 2: v absmax {}", va[2]);
    let p = cv[0].1.as_tensor().to_vec1::<f32>()?; // F32.e
    assert!(p[512..768].iter().all(|x| x.is_finite()), "block 2: params finite");
    assert_eq!(p[256..512].iter().filter(|x| x.is_nan()).count(), 256, "block 1: all NaN");
    let (mc, vc) = (u8s("exp_avg_q8.F32.e")?, u8s("exp_avg_sq_q8.F32.e")?);
    assert!(mc[..256].iter().all(|&c| c == 127) && vc[..256].iter().all(|&c| c == 0));
    assert_eq!(vc[512 + 3], 255);
    for (k, a) in sc.iter().filter(|(k, _)| k.starts_with("exp_avg") && !k.contains("F64")) {
        same(k, a, &sg[k])?;
    }
    Ok(())
}
