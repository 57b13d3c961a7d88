//! Fused global-norm clipping and dynamic loss scaling (issue 9) against torch
//! (`clip_grad_norm_` then `RAdam.step()`, `torch.amp.GradScaler`; generator:
//! tests/golden/gen_clip.py), and the exactness properties: `max_grad_norm = inf` and
//! power-of-two loss scales leave the trajectory bit-identical to an unclipped, unscaled one.
//!
//! Tolerances: f32 1e-5 relative (1e-6 absolute near zero), f64 1e-12 relative, f16 / bf16 at
//! most 1 ulp; the norm against torch's f32 `clip_grad_norm_` (which sums in f32) 1e-6 relative.

mod common;

use candle_core::{backprop::GradStore, DType, Device, Tensor, Var};
use candle_nn::Optimizer;
use candle_radam::{LossScaler, NonFinite, ParamGroup, ParamsRAdam, RAdam};
use common::{bits, dtype, hash_tensor, max_ulps, worst};
use serde::Deserialize;

const DEV: Device = Device::Cpu;

#[derive(Deserialize)]
struct Hp {
    lr: f64,
    weight_decay: f64,
    decoupled_weight_decay: bool,
}

#[derive(Deserialize)]
struct Case {
    name: String,
    kind: String,
    dtype: String,
    shapes: Vec<Vec<usize>>,
    max_norm: f64,
    hp: Hp,
    init: Vec<Vec<f64>>,
    /// Per step, per tensor (null: non-finite, see `planted`).
    grads: Vec<Vec<Vec<Option<f64>>>>,
    params: Vec<Vec<Vec<Option<f64>>>>,
    norms: Vec<Option<f64>>,
    #[serde(default)]
    scales: Vec<f64>,
    #[serde(default)]
    planted: Vec<(u64, usize, usize, String)>,
    #[serde(default)]
    skipped: u64,
    #[serde(default)]
    init_scale: f64,
    #[serde(default)]
    growth_factor: f64,
    #[serde(default)]
    backoff_factor: f64,
    #[serde(default)]
    growth_interval: u64,
}

#[derive(Deserialize)]
struct Cases {
    cases: Vec<Case>,
}

fn cases() -> Vec<Case> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/golden/clip_cases.json");
    let c: Cases = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    c.cases
}

fn tensor(values: &[f64], shape: &[usize], dt: DType) -> Tensor {
    // f64 holds every f32 / f16 / bf16 value exactly, so this conversion is exact.
    Tensor::from_vec(values.to_vec(), values.len(), &DEV)
        .unwrap()
        .to_dtype(dt)
        .unwrap()
        .reshape(shape)
        .unwrap()
}

fn check(what: &str, ours: &Tensor, want: &Tensor) {
    match ours.dtype() {
        DType::F16 | DType::BF16 => {
            let u = max_ulps(ours, want).unwrap();
            assert!(u <= 1, "{what}: {u} ulps apart");
        }
        d => {
            let (rtol, atol) = if d == DType::F64 { (1e-12, 1e-13) } else { (1e-5, 1e-6) };
            let (w, i) = worst(ours, want, rtol, atol).unwrap();
            assert!(w <= 1.0, "{what}: element {i} off by {w} x tolerance");
        }
    }
}

/// The case's step-`t` gradients (1-based), with the planted inf / NaN.
fn step_grads(c: &Case, t: u64) -> Vec<Vec<f64>> {
    let mut out: Vec<Vec<f64>> = c.grads[t as usize - 1]
        .iter()
        .map(|g| g.iter().map(|x| x.unwrap_or(f64::NAN)).collect())
        .collect();
    for (step, k, i, what) in &c.planted {
        if *step == t {
            out[*k][*i] = if what == "inf" { f64::INFINITY } else { f64::NAN };
        }
    }
    out
}

#[test]
fn clip_grad_norm_then_radam_as_torch() {
    let cases = cases();
    assert!(cases.iter().filter(|c| c.kind == "clip").count() >= 8);
    for c in cases.iter().filter(|c| c.kind == "clip") {
        let dt = dtype(&c.dtype);
        let vars: Vec<(String, Var)> = c
            .init
            .iter()
            .zip(&c.shapes)
            .enumerate()
            .map(|(k, (v, s))| (format!("w{k}"), Var::from_tensor(&tensor(v, s, dt)).unwrap()))
            .collect();
        let params = ParamsRAdam {
            lr: c.hp.lr,
            weight_decay: c.hp.weight_decay,
            decoupled_weight_decay: c.hp.decoupled_weight_decay,
            ..Default::default()
        };
        let mut opt =
            RAdam::new_named(vars.clone(), params).unwrap().with_max_grad_norm(c.max_norm).unwrap();
        let (mut above, mut below) = (0, 0);
        for t in 1..=c.grads.len() as u64 {
            let mut grads = GradStore::default();
            for ((_, v), g) in vars.iter().zip(step_grads(c, t)) {
                grads.insert(v, tensor(&g, v.dims(), dt));
            }
            opt.step(&grads).unwrap();
            let want = c.norms[t as usize - 1].unwrap();
            let got = opt.last_grad_norm().unwrap();
            let rtol = if dt == DType::F64 { 1e-12 } else { 1e-6 };
            assert!(
                (got - want).abs() <= rtol * want,
                "{} step {t}: gnorm {got} vs {want}",
                c.name
            );
            if want > c.max_norm {
                above += 1
            } else {
                below += 1
            }
            for ((name, v), p) in vars.iter().zip(&c.params[t as usize - 1]) {
                let p: Vec<f64> = p.iter().map(|x| x.unwrap()).collect();
                check(
                    &format!("{} {name} after step {t}", c.name),
                    v.as_tensor(),
                    &tensor(&p, v.dims(), dt),
                );
            }
        }
        assert!(above >= 3 && below >= 3, "{}: norms on both sides of the threshold", c.name);
    }
}

#[test]
fn grad_scaler_sequence_skips_and_trajectory_as_torch() {
    let cases = cases();
    let c = cases.iter().find(|c| c.kind == "scaler").unwrap();
    let vars: Vec<(String, Var)> = c
        .init
        .iter()
        .zip(&c.shapes)
        .enumerate()
        .map(|(k, (v, s))| (format!("w{k}"), Var::from_tensor(&tensor(v, s, DType::F32)).unwrap()))
        .collect();
    let scaler = LossScaler {
        init_scale: c.init_scale,
        growth_factor: c.growth_factor,
        backoff_factor: c.backoff_factor,
        growth_interval: c.growth_interval,
    };
    // The default policy (Error) is overridden by the scaler: bad steps are skipped.
    let params = ParamsRAdam { lr: c.hp.lr, ..Default::default() };
    let mut opt = RAdam::new_named(vars.clone(), params)
        .unwrap()
        .with_max_grad_norm(c.max_norm)
        .unwrap()
        .with_loss_scaler(scaler)
        .unwrap();
    let mut scale = c.init_scale;
    for t in 1..=c.grads.len() as u64 {
        assert_eq!(opt.loss_scale(), scale, "scale in force at step {t}");
        let mut grads = GradStore::default();
        for ((_, v), g) in vars.iter().zip(step_grads(c, t)) {
            grads.insert(v, tensor(&g, v.dims(), DType::F32));
        }
        opt.step(&grads).unwrap();
        scale = c.scales[t as usize - 1];
        assert_eq!(opt.loss_scale(), scale, "torch's scale after step {t}");
        let got = opt.last_grad_norm().unwrap();
        match c.norms[t as usize - 1] {
            Some(want) => assert!((got - want).abs() <= 1e-6 * want, "step {t}: {got} vs {want}"),
            None => assert!(!got.is_finite(), "step {t}: gnorm {got} should be non-finite"),
        }
        for ((name, v), p) in vars.iter().zip(&c.params[t as usize - 1]) {
            let p: Vec<f64> = p.iter().map(|x| x.unwrap()).collect();
            check(
                &format!("{name} after step {t}"),
                v.as_tensor(),
                &tensor(&p, v.dims(), DType::F32),
            );
        }
    }
    assert_eq!(opt.skipped_steps(), c.skipped);
    assert_eq!(c.skipped, 3);
    assert_eq!(opt.step_count(), c.grads.len() as u64 - 3);
}

/// A model with several variables of `dt`, one larger than the CPU chunk (parallel path), in
/// two parameter groups (L2 decay on one).
fn model(dt: DType, seed: u64) -> Vec<(String, Var)> {
    [(40_000usize, 1), (129, 2), (7, 3), (1, 4)]
        .iter()
        .map(|&(n, k)| {
            let t = hash_tensor(n, seed + k, 0, dt, 1.0, 0.0, &DEV).unwrap();
            (format!("layer{k}.weight"), Var::from_tensor(&t).unwrap())
        })
        .collect()
}

fn grads(vars: &[(String, Var)], t: u64, mult: f64) -> GradStore {
    let mut g = GradStore::default();
    for (k, (_, v)) in vars.iter().enumerate() {
        let x = hash_tensor(v.elem_count(), 50 + k as u64, t, v.dtype(), 1.0, 0.1, &DEV).unwrap();
        g.insert(v, x.affine(mult, 0.0).unwrap()); // mult: a power of two, exact in every dtype
    }
    g
}

fn optimizer(vars: &[(String, Var)]) -> RAdam {
    let params = ParamsRAdam { lr: 1e-2, weight_decay: 0.05, ..Default::default() };
    RAdam::new_named(vars.to_vec(), params)
        .unwrap()
        .with_groups(vec![
            ParamGroup::names("small", &["layer3.weight", "layer4.weight"]).weight_decay(0.0)
        ])
        .unwrap()
}

fn same_bits(a: &[(String, Var)], b: &[(String, Var)], what: &str) {
    for ((n, x), (_, y)) in a.iter().zip(b) {
        assert!(bits(x.as_tensor()) == bits(y.as_tensor()), "{what}: {n} differs");
    }
}

#[test]
fn infinite_max_norm_is_the_unclipped_trajectory_bit_for_bit() {
    for dt in [DType::F32, DType::F64, DType::F16, DType::BF16] {
        let (a, b) = (model(dt, 10), model(dt, 10));
        let mut plain = optimizer(&a);
        let mut inf = optimizer(&b).with_max_grad_norm(f64::INFINITY).unwrap();
        for t in 1..=8 {
            plain.step(&grads(&a, t, 1.0)).unwrap();
            inf.step(&grads(&b, t, 1.0)).unwrap();
            same_bits(&a, &b, &format!("{dt:?} step {t}"));
            // gnorm: the f64 norm of every gradient of the step.
            let g = grads(&b, t, 1.0);
            let want: f64 = b
                .iter()
                .map(|(_, v)| {
                    let x = g.get(v).unwrap().to_dtype(DType::F64).unwrap();
                    x.sqr().unwrap().sum_all().unwrap().to_scalar::<f64>().unwrap()
                })
                .sum::<f64>()
                .sqrt();
            let got = inf.last_grad_norm().unwrap();
            assert!((got - want).abs() <= 1e-12 * want, "{dt:?}: gnorm {got} vs {want}");
        }
        assert_eq!(plain.last_grad_norm(), None);
    }
}

#[test]
fn power_of_two_loss_scales_give_the_unscaled_trajectory_bit_for_bit() {
    for dt in [DType::F32, DType::F64, DType::F16, DType::BF16] {
        for clip in [None, Some(2.0)] {
            let (a, b) = (model(dt, 20), model(dt, 20));
            let mut plain = optimizer(&a);
            plain.set_max_grad_norm(clip).unwrap();
            let scaler =
                LossScaler { init_scale: 1024.0, growth_interval: 3, ..Default::default() };
            let mut scaled = optimizer(&b).with_loss_scaler(scaler).unwrap();
            scaled.set_max_grad_norm(clip).unwrap();
            let mut seen = Vec::new();
            for t in 1..=8 {
                let s = scaled.loss_scale();
                seen.push(s);
                plain.step(&grads(&a, t, 1.0)).unwrap();
                scaled.step(&grads(&b, t, s)).unwrap();
                same_bits(&a, &b, &format!("{dt:?} clip {clip:?} step {t} (scale {s})"));
                if clip.is_some() {
                    assert_eq!(plain.last_grad_norm(), scaled.last_grad_norm());
                }
            }
            // The scale grew every 3 clean steps: 2^10, 2^11 from step 4, 2^12 from step 7.
            assert_eq!(seen, [1024., 1024., 1024., 2048., 2048., 2048., 4096., 4096.]);
            assert_eq!(scaled.skipped_steps(), 0);
        }
    }
}

#[test]
fn loss_scale_survives_save_and_load() {
    let a = model(DType::F32, 30);
    let scaler = LossScaler { growth_interval: 3, ..Default::default() };
    let mut opt = optimizer(&a).with_loss_scaler(scaler.clone()).unwrap();
    for t in 1..=5 {
        let mut g = grads(&a, t, opt.loss_scale());
        if t == 2 {
            let v = &a[1].1;
            g.insert(v, Tensor::full(f32::INFINITY, v.shape(), &DEV).unwrap());
        }
        opt.step(&g).unwrap();
    }
    // 2^16, inf at 2 -> 2^15, clean 3, 4, 5 -> 2^16 with a tracker of 0 after step 5.
    assert_eq!((opt.loss_scale(), opt.loss_scale_growth_tracker().unwrap()), (65536.0, 0));
    opt.step(&grads(&a, 6, opt.loss_scale())).unwrap();
    assert_eq!((opt.loss_scale(), opt.loss_scale_growth_tracker().unwrap()), (65536.0, 1));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.safetensors");
    opt.save_state(&path).unwrap();

    // A fresh optimizer with a scaler resumes the scale and the tracker: two more clean steps
    // grow the scale exactly as the original's.
    let b = model(DType::F32, 30);
    for ((_, x), (_, y)) in a.iter().zip(&b) {
        y.set(x.as_tensor()).unwrap();
    }
    let mut resumed = optimizer(&b).with_loss_scaler(scaler).unwrap();
    assert!(resumed.load_state(&path).unwrap().is_clean());
    assert_eq!(resumed.loss_scale(), 65536.0);
    assert_eq!(resumed.loss_scale_growth_tracker().unwrap(), 1);
    assert_eq!(resumed.skipped_steps(), 1);
    for t in 7..=8 {
        opt.step(&grads(&a, t, opt.loss_scale())).unwrap();
        resumed.step(&grads(&b, t, resumed.loss_scale())).unwrap();
        same_bits(&a, &b, &format!("resumed step {t}"));
    }
    assert_eq!(resumed.loss_scale(), 131072.0);

    // An optimizer without a scaler loads the file (the scale is not its business).
    let c = model(DType::F32, 30);
    let mut plain = optimizer(&c);
    plain.load_state(&path).unwrap();
    assert!(plain.loss_scaler().is_none());
    // A file without a scale leaves a scaler as it was.
    let path2 = dir.path().join("plain.safetensors");
    plain.save_state(&path2).unwrap();
    let mut fresh = optimizer(&c).with_loss_scaler(LossScaler::default()).unwrap();
    fresh.load_state(&path2).unwrap();
    assert_eq!(fresh.loss_scale(), 65536.0);
}

#[test]
fn non_finite_norm_follows_the_policy() {
    for dt in [DType::F32, DType::F64, DType::F16, DType::BF16] {
        let a = model(dt, 40);
        let before: Vec<Vec<u64>> = a.iter().map(|(_, v)| bits(v.as_tensor())).collect();
        let mut opt = optimizer(&a).with_max_grad_norm(1.0).unwrap();
        let mut g = grads(&a, 1, 1.0);
        let v = &a[2].1;
        let bad = Tensor::full(f32::NAN, v.shape(), &DEV).unwrap().to_dtype(dt).unwrap();
        g.insert(v, bad);
        let err = opt.step(&g).unwrap_err().to_string();
        assert!(err.contains("non-finite gradient for 'layer3.weight'"), "{err}");
        assert!(opt.last_grad_norm().unwrap().is_nan());
        let after: Vec<Vec<u64>> = a.iter().map(|(_, v)| bits(v.as_tensor())).collect();
        assert!(before == after && opt.step_count() == 0, "{dt:?}: an error changes nothing");

        let mut p = opt.params().clone();
        p.non_finite = NonFinite::Skip;
        opt.set_params(p).unwrap();
        opt.step(&g).unwrap();
        assert_eq!((opt.skipped_steps(), opt.step_count()), (1, 0));
    }
    // f64: a finite gradient whose square overflows f64 makes the norm infinite: non-finite.
    let a = model(DType::F64, 50);
    let mut opt = optimizer(&a).with_max_grad_norm(1.0).unwrap();
    let mut g = grads(&a, 1, 1.0);
    g.insert(&a[3].1, Tensor::full(1e200f64, a[3].1.shape(), &DEV).unwrap());
    assert!(opt.step(&g).unwrap_err().to_string().contains("'layer4.weight'"));
    assert_eq!(opt.last_grad_norm(), Some(f64::INFINITY));
}

#[test]
fn clipping_zero_and_invalid_thresholds() {
    let a = model(DType::F32, 60);
    let before: Vec<Vec<u64>> = a.iter().map(|(_, v)| bits(v.as_tensor())).collect();
    // max_grad_norm = 0: every gradient multiplied by 0; with no weight decay nothing moves.
    let params = ParamsRAdam { lr: 1e-2, ..Default::default() };
    let mut opt = RAdam::new_named(a.clone(), params).unwrap().with_max_grad_norm(0.0).unwrap();
    for t in 1..=7 {
        opt.step(&grads(&a, t, 1.0)).unwrap();
    }
    let after: Vec<Vec<u64>> = a.iter().map(|(_, v)| bits(v.as_tensor())).collect();
    assert!(before == after);
    for bad in [f64::NAN, -1.0] {
        assert!(opt.set_max_grad_norm(Some(bad)).is_err());
        assert_eq!(opt.max_grad_norm(), Some(0.0));
    }
    assert!(RAdam::new_named(a, ParamsRAdam::default())
        .unwrap()
        .with_loss_scaler(LossScaler { growth_factor: 0.5, ..Default::default() })
        .is_err());
}

#[test]
fn backward_step_scales_the_loss() {
    // The same f32 model trained with and without a (power-of-two) loss scale through
    // Optimizer::backward_step: bit-identical.
    let run = |scaler: Option<LossScaler>| -> Vec<u64> {
        let varmap = candle_nn::VarMap::new();
        let vb = candle_nn::VarBuilder::from_varmap(&varmap, DType::F32, &DEV);
        let w = vb.get_with_hints((4, 3), "w", candle_nn::Init::Const(0.5)).unwrap();
        let mut opt = RAdam::from_varmap(&varmap, ParamsRAdam { lr: 1e-2, ..Default::default() })
            .unwrap()
            .with_max_grad_norm(0.5)
            .unwrap();
        opt.set_loss_scaler(scaler).unwrap();
        let x = hash_tensor(24, 7, 0, DType::F32, 1.0, 0.0, &DEV).unwrap().reshape((8, 3)).unwrap();
        for _ in 0..8 {
            let loss = x.matmul(&w.t().unwrap()).unwrap().sqr().unwrap().mean_all().unwrap();
            opt.backward_step(&loss).unwrap();
        }
        bits(&w)
    };
    assert_eq!(run(None), run(Some(LossScaler::default())));
    // An f16 loss is scaled in f32 (2^16 is no f16).
    let mut opt = RAdam::new(vec![], ParamsRAdam::default())
        .unwrap()
        .with_loss_scaler(LossScaler::default())
        .unwrap();
    let loss = Tensor::new(&[half::f16::from_f32(3.0)], &DEV).unwrap();
    let s = opt.scale_loss(&loss).unwrap();
    assert_eq!((s.dtype(), s.to_vec1::<f32>().unwrap()[0]), (DType::F32, 196608.0));
    opt.set_loss_scaler(None).unwrap();
    assert_eq!(opt.scale_loss(&loss).unwrap().dtype(), DType::F16);
}
