//! Public API: construction guards, bad gradients, non-finite gradients, state save/load, and
//! training a VarMap model.

mod common;

use candle_core::{backprop::GradStore, DType, Device, Module, Tensor, Var};
use candle_nn::{Optimizer, VarBuilder, VarMap};
use candle_radam::{NonFinite, ParamsRAdam, RAdam};
use common::{bits, hash_tensor};

const DEV: Device = Device::Cpu;

fn var(n: usize, seed: u64, dtype: DType) -> Var {
    Var::from_tensor(&hash_tensor(n, seed, 0, dtype, 1.0, 0.0, &DEV).unwrap()).unwrap()
}

fn grad(v: &Var, seed: u64, t: u64) -> Tensor {
    hash_tensor(v.elem_count(), seed, t, v.dtype(), 1.0, 0.25, &DEV)
        .unwrap()
        .reshape(v.shape())
        .unwrap()
}

fn grads_for(vars: &[Var], t: u64) -> GradStore {
    let mut g = GradStore::default();
    for (i, v) in vars.iter().enumerate() {
        g.insert(v, grad(v, 100 + i as u64, t));
    }
    g
}

/// Everything observable about an optimizer and its vars: params, saved state, counters.
fn snapshot(opt: &RAdam, vars: &[Var]) -> (Vec<Vec<u64>>, Vec<u8>, u64, u64) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.safetensors");
    opt.save_state(&path).unwrap();
    let state = candle_core::safetensors::load(&path, &DEV).unwrap();
    let mut keys: Vec<_> = state.keys().cloned().collect();
    keys.sort();
    let mut state_bits = Vec::new();
    for k in keys {
        state_bits.extend(k.bytes());
        if state[&k].dtype() != DType::I64 {
            for b in bits(&state[&k]) {
                state_bits.extend(b.to_le_bytes());
            }
        }
    }
    (
        vars.iter().map(|v| bits(v.as_tensor())).collect(),
        state_bits,
        opt.step_count(),
        opt.skipped_steps(),
    )
}

fn three_vars() -> Vec<Var> {
    vec![var(33, 1, DType::F32), var(5, 2, DType::F16), var(70_000, 3, DType::F32)]
}

fn err_text<T: std::fmt::Debug>(r: candle_core::Result<T>) -> String {
    format!("{}", r.expect_err("expected an error"))
}

#[test]
fn new_rejects_bad_hyper_parameters() {
    let bad = [
        ("lr", ParamsRAdam { lr: -1e-3, ..Default::default() }),
        ("lr", ParamsRAdam { lr: f64::NAN, ..Default::default() }),
        ("lr", ParamsRAdam { lr: f64::INFINITY, ..Default::default() }),
        ("beta1", ParamsRAdam { beta1: 1.0, ..Default::default() }),
        ("beta1", ParamsRAdam { beta1: -0.1, ..Default::default() }),
        ("beta2", ParamsRAdam { beta2: 1.0, ..Default::default() }),
        ("beta2", ParamsRAdam { beta2: f64::NAN, ..Default::default() }),
        ("eps", ParamsRAdam { eps: -1e-8, ..Default::default() }),
        ("weight_decay", ParamsRAdam { weight_decay: -0.1, ..Default::default() }),
        ("weight_decay", ParamsRAdam { weight_decay: f64::NAN, ..Default::default() }),
    ];
    for (field, p) in bad {
        let e = err_text(RAdam::new(vec![var(3, 1, DType::F32)], p));
        assert!(e.contains(field), "{e}");
    }
    // Boundary values are fine.
    let ok = ParamsRAdam { lr: 0.0, beta1: 0.0, beta2: 0.0, eps: 0.0, ..Default::default() };
    RAdam::new(vec![var(3, 1, DType::F32)], ok).unwrap();
}

#[test]
fn new_rejects_non_float_and_duplicate_vars() {
    let int_var = Var::zeros(4, DType::U32, &DEV).unwrap();
    let e = err_text(RAdam::new(vec![var(3, 1, DType::F32), int_var], ParamsRAdam::default()));
    assert!(e.contains("param.1") && e.contains("floating point"), "{e}");
    let v = var(3, 1, DType::F32);
    let e = err_text(RAdam::new(vec![v.clone(), v], ParamsRAdam::default()));
    assert!(e.contains("more than once"), "{e}");
}

#[test]
fn learning_rate_is_validated() {
    let mut opt = RAdam::new(vec![var(3, 1, DType::F32)], ParamsRAdam::default()).unwrap();
    opt.set_learning_rate(0.5);
    assert_eq!(opt.learning_rate(), 0.5);
    assert!(opt.try_set_learning_rate(-1.0).is_err());
    assert_eq!(opt.learning_rate(), 0.5);
    opt.set_learning_rate(f64::NAN); // held back, reported by the next step (tests/steps.rs)
    assert!(opt.learning_rate().is_nan());
    opt.set_learning_rate(0.25);
    assert_eq!(opt.learning_rate(), 0.25);
}

/// A step that fails validation leaves params, moments and counters exactly as they were.
fn assert_step_fails_cleanly(vars: &[Var], opt: &mut RAdam, grads: &GradStore, expect: &[&str]) {
    let before = snapshot(opt, vars);
    let e = err_text(opt.step(grads));
    for s in expect {
        assert!(e.contains(s), "error {e:?} lacks {s:?}");
    }
    assert!(snapshot(opt, vars) == before, "a failed step changed something");
}

#[test]
fn bad_gradient_shape_or_dtype_changes_nothing() {
    let vars = three_vars();
    let mut opt = RAdam::new(vars.clone(), ParamsRAdam::default()).unwrap();
    for t in 1..=3 {
        opt.step(&grads_for(&vars, t)).unwrap();
    }
    // The last var gets a bad gradient; the first two are valid and must not be touched either.
    let mut g = grads_for(&vars, 4);
    g.insert(&vars[2], Tensor::zeros(7, DType::F32, &DEV).unwrap());
    assert_step_fails_cleanly(&vars, &mut opt, &g, &["param.2", "shape"]);
    let mut g = grads_for(&vars, 4);
    g.insert(&vars[1], grad(&vars[1], 101, 4).to_dtype(DType::F32).unwrap());
    assert_step_fails_cleanly(&vars, &mut opt, &g, &["param.1", "dtype"]);
    // And the optimizer still works afterwards.
    opt.step(&grads_for(&vars, 4)).unwrap();
    assert_eq!(opt.step_count(), 4);
}

#[test]
fn non_finite_gradients_error_by_default_and_change_nothing() {
    for (bad_idx, value) in [(2usize, f64::NAN), (1, f64::INFINITY), (0, f64::NEG_INFINITY)] {
        let vars = three_vars();
        let mut opt = RAdam::new(vars.clone(), ParamsRAdam::default()).unwrap();
        opt.step(&grads_for(&vars, 1)).unwrap();
        let mut g = grads_for(&vars, 2);
        let v = &vars[bad_idx];
        let mut host = grad(v, 7, 2)
            .to_dtype(DType::F64)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f64>()
            .unwrap();
        let last = host.len() - 1;
        host[last] = value; // at the very end: the scan must reach the tail
        g.insert(
            v,
            Tensor::new(host, &DEV)
                .unwrap()
                .to_dtype(v.dtype())
                .unwrap()
                .reshape(v.shape())
                .unwrap(),
        );
        assert_step_fails_cleanly(
            &vars,
            &mut opt,
            &g,
            &[&format!("param.{bad_idx}"), "non-finite"],
        );
    }
}

#[test]
fn non_finite_skip_and_propagate_policies() {
    let vars = three_vars();
    let mut g_bad = grads_for(&vars, 2);
    g_bad.insert(&vars[0], Tensor::full(f32::NAN, 33, &DEV).unwrap());

    let mut opt =
        RAdam::new(vars.clone(), ParamsRAdam { non_finite: NonFinite::Skip, ..Default::default() })
            .unwrap();
    opt.step(&grads_for(&vars, 1)).unwrap();
    let before = snapshot(&opt, &vars);
    opt.step(&g_bad).unwrap();
    let after = snapshot(&opt, &vars);
    assert_eq!((before.0, before.1, before.2), (after.0, after.1, after.2));
    assert_eq!(opt.skipped_steps(), 1);
    opt.step(&grads_for(&vars, 2)).unwrap();
    assert_eq!(opt.step_count(), 2);

    let vars = three_vars();
    let mut g_bad = grads_for(&vars, 1);
    g_bad.insert(&vars[0], Tensor::full(f32::NAN, 33, &DEV).unwrap());
    let mut opt = RAdam::new(
        vars.clone(),
        ParamsRAdam { non_finite: NonFinite::Propagate, ..Default::default() },
    )
    .unwrap();
    opt.step(&g_bad).unwrap();
    let p = vars[0].as_tensor().to_vec1::<f32>().unwrap();
    assert!(p.iter().all(|x| x.is_nan()), "Propagate must run the update as torch does");
}

#[test]
fn vars_without_gradient_are_skipped() {
    let vars = three_vars();
    let mut opt = RAdam::new(vars.clone(), ParamsRAdam::default()).unwrap();
    let untouched = bits(vars[1].as_tensor());
    let mut g = GradStore::default();
    g.insert(&vars[0], grad(&vars[0], 1, 1));
    g.insert(&vars[2], grad(&vars[2], 3, 1));
    opt.step(&g).unwrap();
    assert_eq!(bits(vars[1].as_tensor()), untouched);
    assert_ne!(
        bits(vars[0].as_tensor()),
        bits(&hash_tensor(33, 1, 0, DType::F32, 1.0, 0.0, &DEV).unwrap())
    );
}

/// Runs `steps` steps on a fresh copy of `template` vars with the given gradient transform.
fn trajectory(steps: u64, f: impl Fn(&Var, Tensor) -> Tensor) -> Vec<Vec<u64>> {
    let vars = vec![Var::from_tensor(
        &hash_tensor(12, 5, 0, DType::F32, 1.0, 0.0, &DEV).unwrap().reshape((3, 4)).unwrap(),
    )
    .unwrap()];
    let mut opt = RAdam::new(vars.clone(), ParamsRAdam { lr: 0.05, ..Default::default() }).unwrap();
    for t in 1..=steps {
        let mut g = GradStore::default();
        g.insert(&vars[0], f(&vars[0], grad(&vars[0], 9, t)));
        opt.step(&g).unwrap();
    }
    vars.iter().map(|v| bits(v.as_tensor())).collect()
}

#[test]
fn strided_and_aliased_gradients_are_read_correctly() {
    let plain = trajectory(8, |_, g| g);
    // The same values through a transposed (non-contiguous) view.
    let strided = trajectory(8, |_, g| {
        let t = g.t().unwrap().contiguous().unwrap().t().unwrap();
        assert!(!t.is_contiguous());
        t
    });
    assert_eq!(plain, strided);
    // A gradient at a non-zero offset into a larger storage.
    let offset = trajectory(8, |_, g| {
        let big = Tensor::cat(&[&Tensor::zeros((2, 4), DType::F32, &DEV).unwrap(), &g], 0).unwrap();
        let v = big.narrow(0, 2, 3).unwrap();
        assert!(v.is_contiguous() && v.layout().start_offset() == 8);
        v
    });
    assert_eq!(plain, offset);
    // grad = param itself (shares storage): must behave like a copy of the param.
    let aliased = trajectory(3, |v, _| v.as_tensor().clone());
    let copied = trajectory(3, |v, _| v.as_tensor().copy().unwrap());
    assert_eq!(aliased, copied);
}

fn state_file(opt: &RAdam) -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("radam.safetensors");
    opt.save_state(&path).unwrap();
    (dir, path)
}

#[test]
fn state_round_trip_gives_bit_identical_next_steps() {
    let mk = || {
        vec![
            var(33, 1, DType::F32),
            var(5, 2, DType::F16),
            var(9, 3, DType::BF16),
            var(70_000, 4, DType::F64),
        ]
    };
    let params = ParamsRAdam {
        lr: 0.01,
        weight_decay: 0.01,
        decoupled_weight_decay: true,
        ..Default::default()
    };
    let a_vars = mk();
    let mut a = RAdam::new(a_vars.clone(), params.clone()).unwrap();
    for t in 1..=4 {
        a.step(&grads_for(&a_vars, t)).unwrap();
    }
    let (_dir, path) = state_file(&a);
    let entries: Vec<_> =
        std::fs::read_dir(_dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(entries.len(), 1, "temp file left behind: {entries:?}");

    // A fresh optimizer over vars holding the same values, resumed from the file.
    let b_vars: Vec<Var> =
        a_vars.iter().map(|v| Var::from_tensor(v.as_tensor()).unwrap()).collect();
    let mut b = RAdam::new(b_vars.clone(), params).unwrap();
    b.load_state(&path).unwrap();
    assert_eq!(b.step_count(), 4);
    for t in 5..=9 {
        a.step(&grads_for(&a_vars, t)).unwrap();
        b.step(&grads_for(&b_vars, t)).unwrap();
        assert_eq!(snapshot(&a, &a_vars), snapshot(&b, &b_vars), "diverged at step {t}");
    }
}

/// `new_named` with positional-looking names: state matched by name (the positional optimizer's
/// fingerprint matching has its own tests in tests/state.rs).
fn by_position_name(vars: Vec<Var>) -> RAdam {
    let named = vars.into_iter().enumerate().map(|(i, v)| (format!("param.{i}"), v)).collect();
    RAdam::new_named(named, ParamsRAdam::default()).unwrap()
}

#[test]
fn load_state_rejects_bad_files_and_changes_nothing() {
    let vars = three_vars();
    let mut opt = by_position_name(vars.clone());
    opt.step(&grads_for(&vars, 1)).unwrap();
    let (dir, good) = state_file(&opt);
    opt.step(&grads_for(&vars, 2)).unwrap();
    let before = snapshot(&opt, &vars);
    let bytes = std::fs::read(&good).unwrap();

    let mut cases: Vec<(&str, std::path::PathBuf, &str)> = Vec::new();
    let write = |name: &str, data: &[u8]| {
        let p = dir.path().join(name);
        std::fs::write(&p, data).unwrap();
        p
    };
    cases.push(("missing", dir.path().join("nope.safetensors"), "nope"));
    cases.push((
        "truncated",
        write("trunc.safetensors", &bytes[..bytes.len() - 100]),
        "reading state",
    ));
    cases.push((
        "garbage",
        write("garbage.safetensors", b"not a safetensors file"),
        "reading state",
    ));
    // Another model: different var count / names / shapes / dtypes.
    let other = |vars: Vec<Var>| {
        let o = by_position_name(vars);
        let p = dir.path().join(format!(
            "other{}.safetensors",
            o.vars().count() * 1000 + o.vars().map(|(_, v)| v.elem_count()).sum::<usize>()
        ));
        o.save_state(&p).unwrap();
        p
    };
    cases.push((
        "fewer vars",
        other(vec![var(33, 1, DType::F32), var(5, 2, DType::F16)]),
        "param.2",
    ));
    cases.push((
        "more vars",
        other(vec![
            var(33, 1, DType::F32),
            var(5, 2, DType::F16),
            var(70_000, 3, DType::F32),
            var(1, 1, DType::F32),
        ]),
        "param.3",
    ));
    cases.push((
        "shape",
        other(vec![var(33, 1, DType::F32), var(6, 2, DType::F16), var(70_000, 3, DType::F32)]),
        "param.1",
    ));
    cases.push((
        "dtype",
        other(vec![var(33, 1, DType::F64), var(5, 2, DType::F16), var(70_000, 3, DType::F32)]),
        "param.0",
    ));
    let named = RAdam::new_named(
        vec![("encoder.w".into(), var(33, 1, DType::F32))],
        ParamsRAdam::default(),
    )
    .unwrap();
    let (_d2, named_path) = state_file(&named);
    cases.push(("names", named_path, "param.0"));

    for (what, path, needle) in cases {
        let e = err_text(opt.load_state(&path));
        assert!(e.contains(needle), "{what}: {e}");
        assert!(snapshot(&opt, &vars) == before, "{what}: a failed load changed the optimizer");
    }
    // Saving into a missing directory is an error too, and leaves no file.
    assert!(opt.save_state(dir.path().join("no/such/dir/x.safetensors")).is_err());
    // The good file still loads.
    opt.load_state(&good).unwrap();
    assert_eq!(opt.step_count(), 1);
}

#[test]
fn trains_a_varmap_mlp() {
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &DEV);
    let l1 = candle_nn::linear(4, 32, vb.pp("l1")).unwrap();
    let l2 = candle_nn::linear(32, 1, vb.pp("l2")).unwrap();
    let x =
        hash_tensor(256 * 4, 11, 0, DType::F32, 1.0, 0.0, &DEV).unwrap().reshape((256, 4)).unwrap();
    // y = sin(x0) + x1 * x2 - 0.5 x3
    let cols: Vec<Tensor> = (0..4).map(|i| x.narrow(1, i, 1).unwrap()).collect();
    let y = ((cols[0].sin().unwrap() + (&cols[1] * &cols[2]).unwrap()).unwrap()
        - (&cols[3] * 0.5).unwrap())
    .unwrap();
    let mut opt =
        RAdam::from_varmap(&varmap, ParamsRAdam { lr: 1e-2, ..Default::default() }).unwrap();
    let names: Vec<&str> = opt.vars().map(|(n, _)| n).collect();
    assert_eq!(names, ["l1.bias", "l1.weight", "l2.bias", "l2.weight"]);
    let loss = |x: &Tensor| {
        l2.forward(&l1.forward(x).unwrap().relu().unwrap())
            .unwrap()
            .sub(&y)
            .unwrap()
            .sqr()
            .unwrap()
            .mean_all()
            .unwrap()
    };
    let first = loss(&x).to_scalar::<f32>().unwrap();
    for _ in 0..300 {
        opt.backward_step(&loss(&x)).unwrap();
    }
    let last = loss(&x).to_scalar::<f32>().unwrap();
    assert!(last < 0.1 * first, "loss {first} -> {last}");
    assert_eq!(opt.step_count(), 300);
}

/// A gradient backed by *another* variable's storage (read while that variable is written in
/// the parallel pass) behaves like a copy, and does not deadlock.
#[test]
fn gradient_sharing_another_vars_storage_is_copied() {
    let run = |alias: bool| {
        let (a, b) = (var(40_000, 1, DType::F32), var(40_000, 2, DType::F32));
        let mut opt =
            RAdam::new(vec![a.clone(), b.clone()], ParamsRAdam { lr: 0.01, ..Default::default() })
                .unwrap();
        for _ in 1..=3 {
            let mut g = GradStore::default();
            g.insert(&a, b.as_tensor().copy().unwrap());
            g.insert(&b, if alias { a.as_tensor().clone() } else { a.as_tensor().copy().unwrap() });
            opt.step(&g).unwrap();
        }
        (bits(a.as_tensor()), bits(b.as_tensor()))
    };
    assert_eq!(run(true), run(false));
}

/// The README's `## Use` snippet is `examples/quickstart.rs` verbatim (which `cargo test`
/// compiles), so the snippet compiles as written.
#[test]
fn readme_use_snippet_is_the_quickstart_example() {
    let root = env!("CARGO_MANIFEST_DIR");
    let readme = std::fs::read_to_string(format!("{root}/README.md")).unwrap();
    let example = std::fs::read_to_string(format!("{root}/examples/quickstart.rs")).unwrap();
    let code = example.split_once("\n\n").unwrap().1; // without the `//!` header
    let block = readme.split_once("## Use\n\n```rust\n").unwrap().1;
    let block = &block[..block.find("```\n").unwrap()];
    assert_eq!(block, code, "README ## Use differs from examples/quickstart.rs");
}
