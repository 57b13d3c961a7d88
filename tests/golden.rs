//! candle-radam against golden trajectories of `torch.optim.RAdam` / `Adam` / `AdamW` and of a
//! port of the original repository's `radam.py` (generator: tests/golden/gen_golden.py).
//!
//! f32: 1e-5 relative (plus 1e-6 absolute for values near zero); f64: 1e-12 relative;
//! f16 / bf16 parameters: at most 1 ulp, their f32 moments at the f32 tolerance.

mod common;

use std::collections::HashMap;

use candle_core::{backprop::GradStore, DType, Device, Tensor, Var};
use candle_nn::Optimizer;
use candle_radam::{ParamsRAdam, RAdam};
use common::{hash_tensor, max_ulps, worst};
use serde::Deserialize;

#[derive(Deserialize)]
struct Hp {
    lr: f64,
    beta1: f64,
    beta2: f64,
    eps: f64,
    weight_decay: f64,
    decoupled_weight_decay: bool,
    degenerate_to_sgd: bool,
    rectify: bool,
}

#[derive(Deserialize)]
struct Case {
    name: String,
    reference: String,
    dtype: String,
    n: usize,
    steps: u64,
    seed: u64,
    grad_scale: f32,
    grad_offset: f32,
    hp: Hp,
}

#[derive(Deserialize)]
struct Cases {
    cases: Vec<Case>,
}

fn dtype(s: &str) -> DType {
    match s {
        "f32" => DType::F32,
        "f64" => DType::F64,
        "f16" => DType::F16,
        "bf16" => DType::BF16,
        other => panic!("unknown dtype {other}"),
    }
}

fn load() -> (Vec<Case>, HashMap<String, Tensor>) {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/golden");
    let cases: Cases =
        serde_json::from_str(&std::fs::read_to_string(format!("{dir}/cases.json")).unwrap())
            .unwrap();
    let golden =
        candle_core::safetensors::load(format!("{dir}/golden.safetensors"), &Device::Cpu).unwrap();
    (cases.cases, golden)
}

/// Asserts `ours` matches `want` at the tolerance of its dtype; returns the worst error measure.
fn check(what: &str, ours: &Tensor, want: &Tensor) -> f64 {
    assert_eq!(ours.dims(), want.dims(), "{what}: shape");
    assert_eq!(ours.dtype(), want.dtype(), "{what}: dtype");
    match ours.dtype() {
        DType::F16 | DType::BF16 => {
            let u = max_ulps(ours, want).unwrap();
            assert!(u <= 1, "{what}: {u} ulps apart");
            u as f64
        }
        d => {
            let (rtol, atol) = if d == DType::F64 { (1e-12, 1e-13) } else { (1e-5, 1e-6) };
            let (w, i) = worst(ours, want, rtol, atol).unwrap();
            let at = |t: &Tensor| {
                t.flatten_all()
                    .unwrap()
                    .to_dtype(DType::F64)
                    .unwrap()
                    .get(i)
                    .unwrap()
                    .to_scalar::<f64>()
                    .unwrap()
            };
            assert!(
                w <= 1.0,
                "{what}: element {i}: ours {} vs reference {} (excess {w:.3})",
                at(ours),
                at(want)
            );
            w
        }
    }
}

fn run_case(c: &Case, golden: &HashMap<String, Tensor>) {
    let dev = Device::Cpu;
    let dt = dtype(&c.dtype);
    let var = Var::from_tensor(&hash_tensor(c.n, c.seed, 0, dt, 1.0, 0.0, &dev).unwrap()).unwrap();
    check(
        &format!("{} initial param", c.name),
        var.as_tensor(),
        &golden[&format!("{}.param.0", c.name)],
    );
    let params = ParamsRAdam {
        lr: c.hp.lr,
        beta1: c.hp.beta1,
        beta2: c.hp.beta2,
        eps: c.hp.eps,
        weight_decay: c.hp.weight_decay,
        decoupled_weight_decay: c.hp.decoupled_weight_decay,
        degenerate_to_sgd: c.hp.degenerate_to_sgd,
        rectify: c.hp.rectify,
        ..Default::default()
    };
    let mut opt = RAdam::new(vec![var.clone()], params).unwrap();
    let mut checked = 0;
    let mut worst_seen: f64 = 0.0;
    for t in 1..=c.steps {
        let mut grads = GradStore::default();
        grads.insert(
            &var,
            hash_tensor(c.n, c.seed, t, dt, c.grad_scale, c.grad_offset, &dev).unwrap(),
        );
        opt.step(&grads).unwrap();
        if let Some(want) = golden.get(&format!("{}.param.{t}", c.name)) {
            worst_seen = worst_seen.max(check(
                &format!("{} param after step {t}", c.name),
                var.as_tensor(),
                want,
            ));
            checked += 1;
        }
    }
    assert!(checked >= 4, "{}: only {checked} steps in the golden file", c.name);
    // Moments: saved state holds them in the moment dtype.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.safetensors");
    opt.save_state(&path).unwrap();
    let state = candle_core::safetensors::load(&path, &dev).unwrap();
    for key in ["exp_avg", "exp_avg_sq"] {
        let want = &golden[&format!("{}.{key}", c.name)];
        let ours = &state[&format!("{key}.param.0")];
        worst_seen = worst_seen.max(check(
            &format!("{} {key}", c.name),
            ours,
            &want.to_dtype(ours.dtype()).unwrap(),
        ));
    }
    println!("{:28} {:10} {:4} n={:6} worst {:.3}", c.name, c.reference, c.dtype, c.n, worst_seen);
}

#[test]
fn golden_trajectories_match_references() {
    let (cases, golden) = load();
    assert!(cases.len() >= 20);
    for reference in ["torch", "torch-adam", "seed"] {
        assert!(cases.iter().any(|c| c.reference == reference), "no {reference} case");
    }
    for c in &cases {
        run_case(c, &golden);
    }
}

/// The golden data itself covers what it claims: both branches (the parameters move on steps
/// 1..5 through SGD and from 6 on through the rectified step) and, for the seed's no-SGD cases,
/// no movement at all during steps 1..5.
#[test]
fn golden_data_covers_both_branches() {
    let (cases, golden) = load();
    let moved = |name: &str, a: u64, b: u64| -> bool {
        let (x, y) = (&golden[&format!("{name}.param.{a}")], &golden[&format!("{name}.param.{b}")]);
        x.to_dtype(DType::F64)
            .unwrap()
            .ne(&y.to_dtype(DType::F64).unwrap())
            .unwrap()
            .sum_all()
            .unwrap()
            .to_dtype(DType::F64)
            .unwrap()
            .to_scalar::<f64>()
            .unwrap()
            > 0.0
    };
    for c in cases.iter().filter(|c| c.n >= 7) {
        assert!(moved(&c.name, 5, 6), "{}: no change from step 5 to 6", c.name);
        if c.reference == "seed" && !c.hp.degenerate_to_sgd {
            assert!(!moved(&c.name, 0, 5), "{}: seed moved before rho_t > 5", c.name);
        } else {
            assert!(moved(&c.name, 0, 1), "{}: no change on step 1", c.name);
        }
    }
}

/// The decoupled weight decay of the seed port is skipped during its no-update phase: our
/// `degenerate_to_sgd = false` with decoupled decay must therefore leave the param bit-identical
/// for steps 1..5 even with weight decay on.
#[test]
fn no_sgd_phase_leaves_params_bit_identical() {
    let dev = Device::Cpu;
    let var =
        Var::from_tensor(&hash_tensor(1025, 3, 0, DType::F32, 1.0, 0.0, &dev).unwrap()).unwrap();
    let before = var.as_tensor().copy().unwrap();
    let p = ParamsRAdam {
        degenerate_to_sgd: false,
        weight_decay: 0.5,
        decoupled_weight_decay: true,
        ..Default::default()
    };
    let mut opt = RAdam::new(vec![var.clone()], p).unwrap();
    for t in 1..=5 {
        let mut g = GradStore::default();
        g.insert(&var, hash_tensor(1025, 3, t, DType::F32, 1.0, 0.25, &dev).unwrap());
        opt.step(&g).unwrap();
    }
    let diff = var
        .as_tensor()
        .ne(&before)
        .unwrap()
        .to_dtype(DType::F32)
        .unwrap()
        .sum_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert_eq!(diff, 0.0);
    assert_eq!(opt.step_count(), 5);
}
