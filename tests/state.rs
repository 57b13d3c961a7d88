//! State files and variable identity (issue 8, item 7): per-variable step counts survive a
//! round trip, positional optimizers find their moments by fingerprint or refuse, files from
//! before per-variable steps still load, and a different grouping is reported.

mod common;

use std::collections::HashMap;

use candle_core::{backprop::GradStore, DType, Device, Tensor, Var};
use candle_nn::{Optimizer, VarBuilder, VarMap};
use candle_radam::{ParamGroup, ParamsRAdam, RAdam};
use common::hash_tensor;

const DEV: Device = Device::Cpu;

fn var(n: usize, seed: u64) -> Var {
    Var::from_tensor(&hash_tensor(n, seed, 0, DType::F32, 1.0, 0.0, &DEV).unwrap()).unwrap()
}

/// A gradient for `v` depending on its values' identity (`seed`) and the step.
fn grad(v: &Var, seed: u64, t: u64) -> Tensor {
    hash_tensor(v.elem_count(), seed, t, v.dtype(), 1.0, 0.25, &DEV)
        .unwrap()
        .reshape(v.shape())
        .unwrap()
}

fn bits(v: &Var) -> Vec<u32> {
    v.as_tensor()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()
        .iter()
        .map(|x| x.to_bits())
        .collect()
}

fn err_text<T: std::fmt::Debug>(r: candle_core::Result<T>) -> String {
    format!("{}", r.expect_err("expected an error"))
}

/// `n` same-shaped variables (like a Transformer's many d x d weights) with distinct values.
fn same_shaped(n: usize) -> Vec<Var> {
    (0..n as u64).map(|i| var(64, 10 + i)).collect()
}

/// Trains `vars` for `steps` steps, var `i` getting gradients seeded by `seeds[i]`, skipping var
/// `i` on steps where `(t + i) % 4 == 0` (so step counts differ between variables).
fn train(opt: &mut RAdam, vars: &[Var], seeds: &[u64], steps: std::ops::RangeInclusive<u64>) {
    for t in steps {
        let mut g = GradStore::default();
        for (i, (v, s)) in vars.iter().zip(seeds).enumerate() {
            if !(t + i as u64).is_multiple_of(4) {
                g.insert(v, grad(v, *s, t));
            }
        }
        opt.step(&g).unwrap();
    }
}

/// Item 7: state saved from `RAdam::new(vars)` and loaded into an optimizer over the same vars in
/// another order puts every moment and step count on its own variable (training continues
/// exactly as without the interruption) and says so in the report.
#[test]
fn item7_positional_state_follows_the_variables_not_the_positions() {
    let p = ParamsRAdam { lr: 0.01, ..Default::default() };
    let seeds: Vec<u64> = (0..6).map(|i| 100 + i).collect();
    // Uninterrupted reference run.
    let reference = same_shaped(6);
    let mut r = RAdam::new(reference.clone(), p.clone()).unwrap();
    train(&mut r, &reference, &seeds, 1..=16);

    // Interrupted at step 8, resumed with the variables in reverse order.
    let first = same_shaped(6);
    let mut a = RAdam::new(first.clone(), p.clone()).unwrap();
    train(&mut a, &first, &seeds, 1..=8);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("opt.safetensors");
    a.save_state(&path).unwrap();

    let order: Vec<usize> = (0..6).rev().collect();
    let resumed: Vec<Var> =
        order.iter().map(|&i| Var::from_tensor(first[i].as_tensor()).unwrap()).collect();
    let resumed_seeds: Vec<u64> = order.iter().map(|&i| seeds[i]).collect();
    let mut b = RAdam::new(resumed.clone(), p).unwrap();
    let report = b.load_state(&path).unwrap();
    assert_eq!(report.remapped.len(), 6, "{report}");
    assert!(report.remapped.contains(&("param.0".to_string(), "param.5".to_string())));
    assert!(format!("{report}").contains("matched by fingerprint"));
    for (j, &i) in order.iter().enumerate() {
        assert_eq!(
            b.var_step_count(&format!("param.{j}")),
            a.var_step_count(&format!("param.{i}"))
        );
    }
    // `train` skips by position: keep the schedule of the original positions.
    for t in 9..=16 {
        let mut g = GradStore::default();
        for (j, &i) in order.iter().enumerate() {
            if !(t + i as u64).is_multiple_of(4) {
                g.insert(&resumed[j], grad(&resumed[j], resumed_seeds[j], t));
            }
        }
        b.step(&g).unwrap();
    }
    for (j, &i) in order.iter().enumerate() {
        assert_eq!(bits(&resumed[j]), bits(&reference[i]), "variable {i} (now at position {j})");
    }
}

/// `RAdam::new(varmap.all_vars())` + resume: the VarMap's order differs from one process to the
/// next; with the model weights loaded first the moments land right whatever the order.
#[test]
fn item7_varmap_all_vars_resume_is_exact() {
    let build = |varmap: &VarMap| {
        let vb = VarBuilder::from_varmap(varmap, DType::F32, &DEV);
        for l in 0..4 {
            candle_nn::linear(16, 16, vb.pp(format!("layer{l}"))).unwrap();
        }
    };
    let p = ParamsRAdam { lr: 0.01, ..Default::default() };
    let varmap = VarMap::new();
    build(&varmap);
    let vars = varmap.all_vars();
    let mut a = RAdam::new(vars.clone(), p.clone()).unwrap();
    let seeds: Vec<u64> = (0..vars.len() as u64).collect();
    train(&mut a, &vars, &seeds, 1..=7);
    let dir = tempfile::tempdir().unwrap();
    a.save_state(dir.path().join("opt.safetensors")).unwrap();
    varmap.save(dir.path().join("model.safetensors")).unwrap();

    // "Another process": a fresh VarMap, weights loaded first, vars in a rotated order.
    let mut varmap2 = VarMap::new();
    build(&varmap2);
    varmap2.load(dir.path().join("model.safetensors")).unwrap();
    let name_of = |vm: &VarMap, v: &Var| -> String {
        let data = vm.data().lock().unwrap();
        data.iter().find(|(_, x)| x.id() == v.id()).unwrap().0.clone()
    };
    let mut vars2 = varmap2.all_vars();
    vars2.rotate_left(3);
    let mut b = RAdam::new(vars2.clone(), p).unwrap();
    b.load_state(dir.path().join("opt.safetensors")).unwrap();
    for (j, v2) in vars2.iter().enumerate() {
        let name = name_of(&varmap2, v2);
        let i = vars.iter().position(|v| name_of(&varmap, v) == name).unwrap();
        assert_eq!(
            b.var_step_count(&format!("param.{j}")),
            a.var_step_count(&format!("param.{i}"))
        );
        assert_eq!(
            b.next_step_scalars(&format!("param.{j}")),
            a.next_step_scalars(&format!("param.{i}")),
            "{name}"
        );
    }
}

/// Item 7: when the fingerprints cannot tell the variables apart, loading refuses, changes
/// nothing and says what to do; never a silent wrong mapping.
#[test]
fn item7_ambiguous_or_unmatched_positional_state_is_refused() {
    let vars = same_shaped(4);
    let mut a = RAdam::new(vars.clone(), ParamsRAdam::default()).unwrap();
    train(&mut a, &vars, &[1, 2, 3, 4], 1..=3);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("opt.safetensors");
    a.save_state(&path).unwrap();

    // Weights not loaded (fresh initialization): no saved variable has these values.
    let fresh: Vec<Var> = (0..4).map(|i| var(64, 900 + i)).collect();
    let mut b = RAdam::new(fresh.clone(), ParamsRAdam::default()).unwrap();
    let e = err_text(b.load_state(&path));
    for needle in
        ["no variable saved", "param.0", "load the model weights", "from_varmap", "new_named"]
    {
        assert!(e.contains(needle), "{needle}: {e}");
    }
    assert_eq!((b.step_count(), b.var_step_count("param.0")), (0, Some(0)));

    // Two variables with identical values at save time but different moments: which moments are
    // whose cannot be told.
    let twins = same_shaped(2);
    let mut c = RAdam::new(twins.clone(), ParamsRAdam::default()).unwrap();
    train(&mut c, &twins, &[1, 2], 1..=3);
    twins[1].set(twins[0].as_tensor()).unwrap();
    let twins_values: Vec<Var> =
        twins.iter().map(|v| Var::from_tensor(v.as_tensor()).unwrap()).collect();
    c.save_state(&path).unwrap();
    let mut d = RAdam::new(twins_values, ParamsRAdam::default()).unwrap();
    let e = err_text(d.load_state(&path));
    assert!(
        e.contains("2 variables saved")
            && e.contains("cannot be told")
            && e.contains("from_varmap"),
        "{e}"
    );

    // Identical values *and* identical saved state (frozen LayerNorm scales still at ones, never
    // given a gradient): interchangeable, so any assignment is the right one and loading works.
    let ones = || Var::from_tensor(&Tensor::ones(64, DType::F32, &DEV).unwrap()).unwrap();
    let mixed = vec![ones(), var(64, 31), ones(), ones()];
    let mut e1 = RAdam::new(mixed.clone(), ParamsRAdam::default()).unwrap();
    let mut g = GradStore::default();
    g.insert(&mixed[1], grad(&mixed[1], 5, 1));
    e1.step(&g).unwrap();
    e1.save_state(&path).unwrap();
    let mut shuffled: Vec<Var> =
        mixed.iter().map(|v| Var::from_tensor(v.as_tensor()).unwrap()).collect();
    shuffled.swap(0, 1);
    let mut e2 = RAdam::new(shuffled, ParamsRAdam::default()).unwrap();
    e2.load_state(&path).unwrap();
    assert_eq!((e2.var_step_count("param.0"), e2.var_step_count("param.1")), (Some(1), Some(0)));

    // Named optimizers match by name: fresh values load fine.
    let named = |vs: &[Var]| -> Vec<(String, Var)> {
        vs.iter().enumerate().map(|(i, v)| (format!("w{i}"), v.clone())).collect()
    };
    let mut n1 = RAdam::new_named(named(&vars), ParamsRAdam::default()).unwrap();
    train(&mut n1, &vars, &[1, 2, 3, 4], 1..=3);
    n1.save_state(&path).unwrap();
    let mut n2 = RAdam::new_named(named(&fresh), ParamsRAdam::default()).unwrap();
    assert!(n2.load_state(&path).unwrap().is_clean());
    assert_eq!(n2.var_step_count("w0"), n1.var_step_count("w0"));
}

/// Writes a state file in the format of the previous version: moments and one global count.
fn write_legacy(path: &std::path::Path, vars: &[(String, Var)], step: i64) {
    let mut t: HashMap<String, Tensor> = HashMap::new();
    for (i, (name, v)) in vars.iter().enumerate() {
        let m = hash_tensor(v.elem_count(), 70 + i as u64, 1, DType::F32, 0.1, 0.0, &DEV).unwrap();
        let vv = m.sqr().unwrap();
        t.insert(format!("exp_avg.{name}"), m.reshape(v.shape()).unwrap());
        t.insert(format!("exp_avg_sq.{name}"), vv.reshape(v.shape()).unwrap());
    }
    t.insert("radam.step".into(), Tensor::new(&[step], &DEV).unwrap());
    t.insert("radam.skipped".into(), Tensor::new(&[2i64], &DEV).unwrap());
    candle_core::safetensors::save(&t, path).unwrap();
}

/// Files written before per-variable steps (one global count) still load: every variable gets
/// that count; positional optimizers map them by shape when that is unambiguous, else refuse.
#[test]
fn legacy_state_files_still_load() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("old.safetensors");
    let vars = vec![("enc.w".to_string(), var(12, 1)), ("enc.b".to_string(), var(3, 2))];
    write_legacy(&path, &vars, 9);
    let mut opt = RAdam::new_named(vars.clone(), ParamsRAdam::default()).unwrap();
    let report = opt.load_state(&path).unwrap();
    assert!(report.legacy && !report.is_clean(), "{report:?}");
    assert_eq!((opt.step_count(), opt.skipped_steps()), (9, 2));
    assert_eq!((opt.var_step_count("enc.w"), opt.var_step_count("enc.b")), (Some(9), Some(9)));
    // Resaved in the current format, it loads as is.
    opt.save_state(&path).unwrap();
    assert!(opt.load_state(&path).unwrap().is_clean());

    // Positional, distinct shapes, other order: mapped by shape.
    let old_pos: Vec<(String, Var)> =
        vec![("param.0".into(), var(12, 1)), ("param.1".into(), var(3, 2))];
    write_legacy(&path, &old_pos, 4);
    let mut p = RAdam::new(vec![var(3, 5), var(12, 6)], ParamsRAdam::default()).unwrap();
    let report = p.load_state(&path).unwrap();
    assert_eq!(
        report.remapped,
        [("param.0".into(), "param.1".into()), ("param.1".into(), "param.0".into())]
    );
    // Positional, two vars of one shape: refused (the file has no fingerprints).
    let old_same: Vec<(String, Var)> =
        vec![("param.0".into(), var(12, 1)), ("param.1".into(), var(12, 2))];
    write_legacy(&path, &old_same, 4);
    let mut q = RAdam::new(vec![var(12, 1), var(12, 2)], ParamsRAdam::default()).unwrap();
    let e = err_text(q.load_state(&path));
    for needle in [
        "predates fingerprints",
        "RAdam::new_named, naming the variables 'param.0', 'param.1', ... in the order",
        "RAdam::from_varmap cannot load it",
    ] {
        assert!(e.contains(needle), "{needle}: {e}");
    }
    assert_eq!(q.step_count(), 0);
    // The advice works: by name, in the saved order.
    let mut r = RAdam::new_named(old_same.clone(), ParamsRAdam::default()).unwrap();
    assert!(r.load_state(&path).unwrap().legacy);
    assert_eq!(r.var_step_count("param.1"), Some(4));
}

/// Loading into a different grouping works and is reported, group by group.
#[test]
fn a_different_grouping_is_reported() {
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &DEV);
    candle_nn::linear(4, 4, vb.pp("fc")).unwrap();
    candle_nn::layer_norm(4, 1e-5, vb.pp("ln")).unwrap();
    let p = ParamsRAdam { weight_decay: 0.01, decoupled_weight_decay: true, ..Default::default() };
    let mut a = RAdam::from_varmap(&varmap, p.clone())
        .unwrap()
        .with_groups(vec![ParamGroup::no_decay()])
        .unwrap();
    let vars: Vec<Var> = a.vars().map(|(_, v)| v.clone()).collect();
    train(&mut a, &vars, &[1, 2, 3, 4], 1..=2);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("opt.safetensors");
    a.save_state(&path).unwrap();

    // Same grouping (a schedule changed the lr: not a change of grouping).
    let mut same = RAdam::from_varmap(&varmap, ParamsRAdam { lr: 0.5, ..p.clone() })
        .unwrap()
        .with_groups(vec![ParamGroup::no_decay()])
        .unwrap();
    assert!(same.load_state(&path).unwrap().is_clean());
    // No groups any more: the 3 no_decay variables are reported, with the decay they now get.
    let mut plain = RAdam::from_varmap(&varmap, p.clone()).unwrap();
    let report = plain.load_state(&path).unwrap();
    assert_eq!(
        report.group_changes,
        ["3 variable(s) saved in group 'no_decay', now in 'default': weight_decay 0 -> 0.01"]
    );
    assert_eq!(plain.var_step_count("ln.weight"), a.var_step_count("ln.weight"));
    // Same group name, other hyper-parameters.
    let mut other = RAdam::from_varmap(&varmap, p)
        .unwrap()
        .with_groups(vec![ParamGroup::no_decay().lr_scale(0.1)])
        .unwrap();
    let report = other.load_state(&path).unwrap();
    assert_eq!(report.group_changes, ["3 variable(s) group 'no_decay': lr_scale 1 -> 0.1"]);
    assert!(format!("{report}").contains("lr_scale 1 -> 0.1"));
}

/// A named optimizer over `a` (3 values) and `b` (2 values), stepped once, and its state file.
fn one_step_file(dir: &std::path::Path) -> (std::path::PathBuf, Var, Var) {
    let (a, b) = (var(3, 1), var(2, 2));
    let mut opt = RAdam::new_named(
        vec![("a".into(), a.clone()), ("b".into(), b.clone())],
        ParamsRAdam::default(),
    )
    .unwrap();
    train(&mut opt, &[a.clone(), b.clone()], &[1, 2], 1..=1);
    let path = dir.join("s.safetensors");
    opt.save_state(&path).unwrap();
    (path, a, b)
}

/// Rewrites tensor `key` of the state file at `path` (`None` drops it).
fn edit_file(path: &std::path::Path, key: &str, x: Option<Tensor>) {
    let mut t = candle_core::safetensors::load(path, &DEV).unwrap();
    match x {
        Some(x) => t.insert(key.into(), x),
        None => t.remove(key),
    };
    candle_core::safetensors::save(&t, path).unwrap();
}

/// A moment no run can produce (`exp_avg_sq` negative, NaN or inf in either moment) is refused
/// with an error naming the tensor and the value, and nothing changes (accepted, a negative
/// `exp_avg_sq` turned the parameter into NaN at the first rectified step).
#[test]
fn impossible_moments_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let cases: [(&str, [f32; 2], &str); 6] = [
        (
            "exp_avg_sq.b",
            [-1.0, 1.0],
            "'exp_avg_sq.b' holds -1 at index 0: a second moment must be finite and >= 0",
        ),
        ("exp_avg_sq.b", [1.0, f32::NAN], "'exp_avg_sq.b' holds NaN at index 1"),
        ("exp_avg_sq.b", [f32::INFINITY, 1.0], "'exp_avg_sq.b' holds inf at index 0"),
        (
            "exp_avg.b",
            [f32::NAN, 1.0],
            "'exp_avg.b' holds NaN at index 0: a first moment must be finite",
        ),
        ("exp_avg.b", [0.5, f32::NEG_INFINITY], "'exp_avg.b' holds -inf at index 1"),
        ("exp_avg_sq.b", [-1e-30, 0.0], "holds -0.000000000000000000000000000001"),
    ];
    for (key, x, want) in cases {
        let (path, a, b) = one_step_file(dir.path());
        edit_file(&path, key, Some(Tensor::new(&x, &DEV).unwrap()));
        let mut opt =
            RAdam::new_named(vec![("a".into(), a), ("b".into(), b)], ParamsRAdam::default())
                .unwrap();
        let e = err_text(opt.load_state(&path));
        assert!(e.contains(want), "{key} {x:?}: {e}");
        assert_eq!((opt.step_count(), opt.var_step_count("b")), (0, Some(0)));
    }
    // The reviewer's file: a NaN first moment of `a`.
    let (path, a, b) = one_step_file(dir.path());
    edit_file(&path, "exp_avg.a", Some(Tensor::new(&[f32::NAN, 1.0, 1.0], &DEV).unwrap()));
    let mut opt =
        RAdam::new_named(vec![("a".into(), a), ("b".into(), b)], ParamsRAdam::default()).unwrap();
    assert!(err_text(opt.load_state(&path)).contains("'exp_avg.a' holds NaN at index 0"));
    // Zero and -0 second moments are possible (a zero gradient) and load.
    let (path, a, b) = one_step_file(dir.path());
    edit_file(&path, "exp_avg_sq.b", Some(Tensor::new(&[0f32, -0.0], &DEV).unwrap()));
    let mut opt =
        RAdam::new_named(vec![("a".into(), a), ("b".into(), b)], ParamsRAdam::default()).unwrap();
    assert!(opt.load_state(&path).unwrap().is_clean());
}

/// "Shapes and dtypes must match", by name as by position: state saved for an f32 `a` does not
/// load into an f16 `a` (both have f32 moments, so only the saved record tells).
#[test]
fn state_for_another_param_dtype_is_refused_by_name_and_by_position() {
    let dir = tempfile::tempdir().unwrap();
    let (path, a, b) = one_step_file(dir.path());
    let half = Var::from_tensor(&a.as_tensor().to_dtype(DType::F16).unwrap()).unwrap();
    let mut opt = RAdam::new_named(
        vec![("a".into(), half.clone()), ("b".into(), b.clone())],
        ParamsRAdam::default(),
    )
    .unwrap();
    let e = err_text(opt.load_state(&path));
    assert!(e.contains("'a' was saved for a F32 variable, but it is F16 now"), "{e}");
    assert_eq!(opt.var_step_count("b"), Some(0));

    let mut pos = RAdam::new(vec![a.clone(), b.clone()], ParamsRAdam::default()).unwrap();
    train(&mut pos, &[a.clone(), b.clone()], &[1, 2], 1..=1);
    pos.save_state(&path).unwrap();
    let mut other = RAdam::new(vec![half, b], ParamsRAdam::default()).unwrap();
    let e = err_text(other.load_state(&path));
    assert!(e.contains("no variable saved") && e.contains("F16"), "{e}");
}

/// A positional file with interchangeable variables (two identical never-stepped vars) missing
/// one moment of one of them: a clear error naming the tensor, never a panic (the interchangeable
/// check used to index the missing `exp_avg_sq`).
#[test]
fn positional_file_missing_a_moment_of_interchangeable_vars_is_an_error() {
    let ones = || Var::from_tensor(&Tensor::ones(2, DType::F32, &DEV).unwrap()).unwrap();
    let (x, y, z) = (ones(), ones(), var(2, 3));
    let mut opt =
        RAdam::new(vec![x.clone(), y.clone(), z.clone()], ParamsRAdam::default()).unwrap();
    let mut g = GradStore::default();
    g.insert(&z, Tensor::ones(2, DType::F32, &DEV).unwrap());
    opt.step(&g).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.safetensors");
    opt.save_state(&good).unwrap();
    for (key, want) in [
        ("exp_avg_sq.param.1", "has no 'exp_avg_sq.param.1'"),
        ("exp_avg.param.1", "has 'radam.var.param.1' but no 'exp_avg.param.1'"),
        ("exp_avg_sq.param.0", "has no 'exp_avg_sq.param.0'"),
    ] {
        let path = dir.path().join("bad.safetensors");
        std::fs::copy(&good, &path).unwrap();
        edit_file(&path, key, None);
        let mut fresh =
            RAdam::new(vec![x.clone(), y.clone(), z.clone()], ParamsRAdam::default()).unwrap();
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| fresh.load_state(&path)));
        let e = err_text(r.unwrap_or_else(|_| panic!("load_state panicked without {key}")));
        assert!(e.contains(want), "{key}: {e}");
        assert_eq!(fresh.step_count(), 0);
    }
}

/// Among interchangeable variables each keeps its own position when the order is unchanged, so
/// the report is clean (it used to say "matched under another position", by hash-map order).
#[test]
fn unchanged_order_with_interchangeable_vars_loads_clean() {
    let ones = || Var::from_tensor(&Tensor::ones(8, DType::F32, &DEV).unwrap()).unwrap();
    let vars = vec![ones(), ones(), var(8, 4), ones()];
    let mut opt = RAdam::new(vars.clone(), ParamsRAdam::default()).unwrap();
    let mut g = GradStore::default();
    g.insert(&vars[2], grad(&vars[2], 7, 1));
    opt.step(&g).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.safetensors");
    opt.save_state(&path).unwrap();
    for _ in 0..16 {
        let mut again = RAdam::new(vars.clone(), ParamsRAdam::default()).unwrap();
        let report = again.load_state(&path).unwrap();
        assert!(report.is_clean(), "{report}");
        assert_eq!(again.var_step_count("param.2"), Some(1));
    }
}

/// `save_state` to a directory is refused up front, writing nothing (it used to leave its
/// temporary file in the parent directory); concurrent saves to one path never share a temporary
/// file, so every one succeeds and the file loads.
#[test]
fn save_state_refuses_a_directory_and_concurrent_saves_do_not_collide() {
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("ckpt");
    std::fs::create_dir(&target).unwrap();
    let (a, b) = (var(3, 1), var(2, 2));
    let opt = RAdam::new(vec![a.clone(), b.clone()], ParamsRAdam::default()).unwrap();
    let e = err_text(opt.save_state(&target));
    assert!(e.contains("is a directory"), "{e}");
    let listing = |p: &std::path::Path| -> Vec<String> {
        std::fs::read_dir(p)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect()
    };
    assert_eq!(listing(dir.path()), ["ckpt"]);
    assert!(listing(&target).is_empty());

    let path = dir.path().join("s.safetensors");
    std::thread::scope(|s| {
        for _ in 0..4 {
            let (a, b) = (a.clone(), b.clone());
            let path = path.clone();
            s.spawn(move || {
                let mut o = RAdam::new(vec![a.clone(), b.clone()], ParamsRAdam::default()).unwrap();
                train(&mut o, &[a, b], &[1, 2], 1..=2);
                for _ in 0..25 {
                    o.save_state(&path).unwrap();
                }
            });
        }
    });
    let mut o = RAdam::new(vec![a, b], ParamsRAdam::default()).unwrap();
    o.load_state(&path).unwrap();
    assert_eq!(o.step_count(), 2);
    let mut left = listing(dir.path());
    left.sort();
    assert_eq!(left, ["ckpt", "s.safetensors"]);
}
