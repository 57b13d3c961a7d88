//! candle-radam against golden trajectories of `torch.optim.RAdam` / `Adam` / `AdamW` and of a
//! port of the original repository's `radam.py` (generator: tests/golden/gen_golden.py).
//!
//! f32: 1e-5 relative (plus 1e-6 absolute for values near zero); f64: 1e-12 relative;
//! f16 / bf16 parameters: at most 1 ulp, their f32 moments at the f32 tolerance.

mod common;

use std::collections::HashMap;

use candle_core::{backprop::GradStore, DType, Device, Tensor, Var};
use candle_nn::Optimizer;
use candle_radam::{ParamGroup, ParamsRAdam, RAdam};
use common::cases::{Case, Cases, MultiCase, MultiVar};
use common::{dtype, hash_tensor, max_ulps, worst};

fn load_all() -> (Cases, HashMap<String, Tensor>) {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/golden");
    let cases = common::cases::load();
    let golden =
        candle_core::safetensors::load(format!("{dir}/golden.safetensors"), &Device::Cpu).unwrap();
    (cases, golden)
}

fn load() -> (Vec<Case>, HashMap<String, Tensor>) {
    let (cases, golden) = load_all();
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
    let params = c.hp.params();
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

fn run_multi_case(c: &MultiCase, golden: &HashMap<String, Tensor>) {
    let dev = Device::Cpu;
    let dt = dtype(&c.dtype);
    let value = |v: &MultiVar, t: u64| -> Tensor {
        match (v.seed, v.init, v.grad) {
            (Some(seed), _, _) => {
                let (scale, offset) =
                    if t == 0 { (1.0, 0.0) } else { (c.grad_scale, c.grad_offset) };
                hash_tensor(v.n, seed, t, dt, scale, offset, &dev).unwrap()
            }
            (None, Some(init), Some(grad)) => {
                Tensor::full(if t == 0 { init } else { grad }, v.n, &dev)
                    .unwrap()
                    .to_dtype(dt)
                    .unwrap()
            }
            _ => panic!("{}: var {} has neither seed nor init/grad", c.name, v.name),
        }
    };
    let vars: Vec<(String, Var)> =
        c.vars.iter().map(|v| (v.name.clone(), Var::from_tensor(&value(v, 0)).unwrap())).collect();
    for (name, var) in &vars {
        check(
            &format!("{} {name} initial", c.name),
            var.as_tensor(),
            &golden[&format!("{}.{name}.0", c.name)],
        );
    }
    let groups = c
        .groups
        .iter()
        .map(|g| {
            let mut pg = ParamGroup::names(&g.name, &g.vars);
            pg.lr_scale = g.lr_scale;
            pg.beta1 = g.beta1;
            pg.beta2 = g.beta2;
            pg.eps = g.eps;
            pg.weight_decay = g.weight_decay;
            pg
        })
        .collect();
    let mut opt =
        RAdam::new_named(vars.clone(), c.hp.params()).unwrap().with_groups(groups).unwrap();
    let has_grad = |name: &str, t: u64| c.grads.get(name).is_none_or(|steps| steps.contains(&t));
    let mut steps_with_grads = 0;
    let mut worst_seen: f64 = 0.0;
    for t in 1..=c.steps {
        let mut grads = GradStore::default();
        for (v, (name, var)) in c.vars.iter().zip(&vars) {
            if has_grad(name, t) {
                grads.insert(var, value(v, t));
            }
        }
        steps_with_grads += c.vars.iter().any(|v| has_grad(&v.name, t)) as u64;
        opt.step(&grads).unwrap();
        for (name, var) in &vars {
            let want = &golden[&format!("{}.{name}.{t}", c.name)];
            worst_seen = worst_seen.max(check(
                &format!("{} {name} after step {t}", c.name),
                var.as_tensor(),
                want,
            ));
        }
    }
    assert_eq!(opt.step_count(), steps_with_grads, "{}: optimizer steps", c.name);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.safetensors");
    opt.save_state(&path).unwrap();
    let state = candle_core::safetensors::load(&path, &dev).unwrap();
    for (name, _) in &vars {
        let torch_step = golden[&format!("{}.{name}.step", c.name)].to_vec1::<i64>().unwrap()[0];
        assert_eq!(opt.var_step_count(name), Some(torch_step as u64), "{}: {name} step", c.name);
        for key in ["exp_avg", "exp_avg_sq"] {
            if let Some(want) = golden.get(&format!("{}.{name}.{key}", c.name)) {
                let ours = &state[&format!("{key}.{name}")];
                worst_seen = worst_seen.max(check(&format!("{} {name} {key}", c.name), ours, want));
            }
        }
    }
    println!(
        "{:28} torch-groups {:4} vars={} worst {:.3}",
        c.name,
        c.dtype,
        c.vars.len(),
        worst_seen
    );
}

/// torch.optim.RAdam with param groups (different lr, weight decay, betas, eps) and gradients
/// missing on some steps: every variable after every step, its moments and its step count.
#[test]
fn golden_groups_and_missing_gradients_match_torch() {
    let (cases, golden) = load_all();
    assert!(cases.multi_cases.len() >= 5);
    for c in &cases.multi_cases {
        run_multi_case(c, &golden);
    }
}

/// Issue 8, item 1, with the values the issue gives: B's first gradient at optimizer step 2 is
/// its own step 1 (B = 0.995, not 0.9973684), and at step 10 still an SGD step (not the
/// rectified branch, 21x too small).
#[test]
fn late_first_gradient_is_the_variables_own_first_step() {
    let (cases, golden) = load_all();
    let b2 = golden["item1_late_var.B.2"].to_vec1::<f32>().unwrap()[0];
    assert_eq!(b2, 0.995f32);
    let b10 = golden["item1_first_grad_at_10.B.10"].to_vec1::<f32>().unwrap()[0];
    assert_eq!(b10, 0.995f32);
    for name in ["item1_late_var", "item1_first_grad_at_10"] {
        run_multi_case(cases.multi_cases.iter().find(|c| c.name == name).unwrap(), &golden);
    }
}
