//! Per-variable step counts, parameter groups and the edge cases of issue 8 (items 1 to 5), each
//! with its right value. torch's trajectories for groups and missing gradients are in
//! tests/golden.rs; the state file cases (item 7) in tests/state.rs.

mod common;

use candle_core::{backprop::GradStore, DType, Device, Tensor, Var};
use candle_nn::{Optimizer, VarBuilder, VarMap};
use candle_radam::{ParamGroup, ParamsRAdam, RAdam, Update, DEFAULT_GROUP};

const DEV: Device = Device::Cpu;

fn scalar_var(x: f64, dtype: DType) -> Var {
    Var::from_tensor(&Tensor::new(&[x], &DEV).unwrap().to_dtype(dtype).unwrap()).unwrap()
}

fn value(v: &Var) -> f64 {
    v.as_tensor().to_dtype(DType::F64).unwrap().to_vec1::<f64>().unwrap()[0]
}

fn grads(pairs: &[(&Var, f64)]) -> GradStore {
    let mut g = GradStore::default();
    for (v, x) in pairs {
        g.insert(v, Tensor::full(*x, v.shape(), &DEV).unwrap().to_dtype(v.dtype()).unwrap());
    }
    g
}

fn err_text<T: std::fmt::Debug>(r: candle_core::Result<T>) -> String {
    format!("{}", r.expect_err("expected an error"))
}

/// Item 1: B's first gradient comes at optimizer step 2 (or 10): it takes its own first step,
/// an SGD step of `lr * m_hat = 0.01 * 0.5`: B = 0.995 (was 0.9973684 with a global count, and
/// the rectified branch, 21x too small, at step 10).
#[test]
fn item1_a_late_variable_takes_its_own_first_step() {
    for first in [2u64, 10] {
        let (a, b) = (scalar_var(1.0, DType::F32), scalar_var(1.0, DType::F32));
        let mut opt = RAdam::new_named(
            vec![("A".into(), a.clone()), ("B".into(), b.clone())],
            ParamsRAdam { lr: 0.01, ..Default::default() },
        )
        .unwrap();
        for t in 1..first {
            opt.step(&grads(&[(&a, 0.5)])).unwrap();
            assert_eq!(opt.var_step_count("B"), Some(0), "step {t}");
        }
        assert_eq!(opt.next_step_scalars("B").unwrap().update, Update::Sgd);
        opt.step(&grads(&[(&a, 0.5), (&b, 0.5)])).unwrap();
        assert_eq!(value(&b) as f32, 0.995f32, "B's first gradient at step {first}");
        assert_eq!((opt.var_step_count("A"), opt.var_step_count("B")), (Some(first), Some(1)));
        assert_eq!(opt.step_count(), first);
    }
    // A after its two steps: m = 0.095, bc1 = 0.19: 0.995 - 0.01 * 0.095 / 0.19 = 0.99.
    let (a, b) = (scalar_var(1.0, DType::F32), scalar_var(1.0, DType::F32));
    let mut opt =
        RAdam::new(vec![a.clone(), b.clone()], ParamsRAdam { lr: 0.01, ..Default::default() })
            .unwrap();
    opt.step(&grads(&[(&a, 0.5)])).unwrap();
    opt.step(&grads(&[(&a, 0.5), (&b, 0.5)])).unwrap();
    assert!((value(&a) - 0.99).abs() < 1e-7, "{}", value(&a));
    assert_eq!(value(&b) as f32, 0.995f32);
}

/// Item 2: a step in which no variable has a gradient changes nothing, `step_count()` included.
#[test]
fn item2_a_step_without_gradients_changes_nothing() {
    let a = scalar_var(1.0, DType::F32);
    let other = scalar_var(3.0, DType::F32); // not optimized: its gradient is ignored
    let mut opt = RAdam::new(vec![a.clone()], ParamsRAdam::default()).unwrap();
    opt.step(&GradStore::default()).unwrap();
    opt.step(&grads(&[(&other, 1.0)])).unwrap();
    assert_eq!((opt.step_count(), opt.var_step_count("param.0")), (0, Some(0)));
    assert_eq!(value(&a), 1.0);
    opt.step(&grads(&[(&a, 0.5)])).unwrap();
    opt.step(&GradStore::default()).unwrap();
    assert_eq!((opt.step_count(), opt.var_step_count("param.0")), (1, Some(1)));
    // Under NonFinite::Skip an empty step is not a skipped step either.
    let mut skip = RAdam::new(
        vec![a.clone()],
        ParamsRAdam { non_finite: candle_radam::NonFinite::Skip, ..Default::default() },
    )
    .unwrap();
    skip.step(&GradStore::default()).unwrap();
    assert_eq!((skip.step_count(), skip.skipped_steps()), (0, 0));
}

/// Item 3: zero first and second moments give a zero update whatever eps and lr are (torch:
/// 0/0 = NaN from step 6 with eps = 0), in every dtype, branch and weight-decay mode.
#[test]
fn item3_zero_moments_give_a_zero_update() {
    let cases = [
        ("eps 0, lr 0 (the issue)", ParamsRAdam { eps: 0.0, lr: 0.0, ..Default::default() }),
        ("eps 0", ParamsRAdam { eps: 0.0, lr: 0.01, ..Default::default() }),
        ("eps 0, adam", ParamsRAdam { eps: 0.0, lr: 0.0, rectify: false, ..Default::default() }),
        (
            "eps 0, no sgd",
            ParamsRAdam { eps: 0.0, lr: 0.0, degenerate_to_sgd: false, ..Default::default() },
        ),
    ];
    for dtype in [DType::F32, DType::F64, DType::F16, DType::BF16] {
        for (what, p) in &cases {
            // 70_001 elements: the chunked parallel path too.
            let v = Var::from_tensor(&Tensor::ones(70_001, dtype, &DEV).unwrap()).unwrap();
            let mut opt = RAdam::new(vec![v.clone()], p.clone()).unwrap();
            for t in 1..=8 {
                let mut g = GradStore::default();
                g.insert(&v, Tensor::zeros(70_001, dtype, &DEV).unwrap());
                opt.step(&g).unwrap();
                let x = v.as_tensor().to_dtype(DType::F64).unwrap().to_vec1::<f64>().unwrap();
                assert!(x.iter().all(|&x| x == 1.0), "{what} {dtype:?} step {t}: {:?}", &x[..3]);
            }
            // Steps 6 to 8 took the adaptive branch, where 0/0 used to be.
            assert_eq!(opt.next_step_scalars("param.0").unwrap().update, Update::Adaptive);
        }
    }
    // Decoupled weight decay still applies (the gradient is zero, the decay is not).
    let v = scalar_var(1.0, DType::F32);
    let p = ParamsRAdam {
        eps: 0.0,
        lr: 0.1,
        weight_decay: 0.5,
        decoupled_weight_decay: true,
        ..Default::default()
    };
    let mut opt = RAdam::new(vec![v.clone()], p).unwrap();
    for _ in 0..6 {
        opt.step(&grads(&[(&v, 0.0)])).unwrap();
    }
    let want = (0..6).fold(1f32, |x, _| 0.95f32 * x);
    assert_eq!(value(&v) as f32, want);
}

/// Item 4: beta2 <= 2/3 (rho_inf <= 5) without the SGD fallback can never move a parameter:
/// refused at construction, in set_params and in a group, with the reason.
#[test]
fn item4_configurations_that_never_move_are_refused() {
    let v = || vec![scalar_var(1.0, DType::F32)];
    let never = ParamsRAdam { beta2: 0.5, degenerate_to_sgd: false, ..Default::default() };
    let e = err_text(RAdam::new(v(), never.clone()));
    assert!(
        e.contains("beta2 = 0.5") && e.contains("never") && e.contains("degenerate_to_sgd"),
        "{e}"
    );
    // The same beta2 with the SGD fallback, or without rectification, is fine; so is 2/3 + eps.
    RAdam::new(v(), ParamsRAdam { beta2: 0.5, ..Default::default() }).unwrap();
    RAdam::new(v(), ParamsRAdam { rectify: false, ..never.clone() }).unwrap();
    RAdam::new(v(), ParamsRAdam { beta2: 0.67, ..never.clone() }).unwrap();
    assert!(RAdam::new(v(), ParamsRAdam { beta2: 2.0 / 3.0, ..never.clone() }).is_err());
    let mut opt = RAdam::new(v(), ParamsRAdam::default()).unwrap();
    assert!(err_text(opt.set_params(never)).contains("beta2"));
    let e = err_text(RAdam::new(v(), ParamsRAdam::default()).unwrap().with_groups(vec![
        ParamGroup::names("fast", &["param.0"]).betas(0.9, 0.6).degenerate_to_sgd(false),
    ]));
    assert!(e.contains("group 'fast'") && e.contains("beta2 = 0.6"), "{e}");
}

/// Item 5: an invalid learning rate given to `set_learning_rate` (which cannot return an error)
/// surfaces at the next step, as an error naming it that changes nothing, until a valid one is
/// set.
#[test]
fn item5_invalid_learning_rate_surfaces_at_the_next_step() {
    let v = scalar_var(1.0, DType::F32);
    let mut opt =
        RAdam::new(vec![v.clone()], ParamsRAdam { lr: 0.01, ..Default::default() }).unwrap();
    opt.step(&grads(&[(&v, 0.5)])).unwrap();
    let after1 = value(&v);
    for bad in [-0.1, f64::NAN, f64::INFINITY] {
        opt.set_learning_rate(bad);
        for _ in 0..2 {
            let e = err_text(opt.step(&grads(&[(&v, 0.5)])));
            assert!(e.contains(&format!("learning rate {bad}")) && e.contains("nothing"), "{e}");
            assert_eq!(
                (value(&v), opt.step_count(), opt.var_step_count("param.0")),
                (after1, 1, Some(1))
            );
        }
    }
    opt.set_learning_rate(0.01);
    opt.step(&grads(&[(&v, 0.5)])).unwrap();
    assert!((value(&v) - 0.99).abs() < 1e-7);
    // try_set_learning_rate and set_params clear it as well.
    opt.set_learning_rate(-1.0);
    opt.try_set_learning_rate(0.02).unwrap();
    opt.step(&grads(&[(&v, 0.5)])).unwrap();
    opt.set_learning_rate(-1.0);
    opt.set_params(ParamsRAdam::default()).unwrap();
    opt.step(&grads(&[(&v, 0.5)])).unwrap();
    assert_eq!(opt.step_count(), 4);
}

fn transformer_like() -> VarMap {
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &DEV);
    candle_nn::embedding(11, 8, vb.pp("embed")).unwrap();
    candle_nn::linear(8, 8, vb.pp("attn.q")).unwrap();
    candle_nn::layer_norm(8, 1e-5, vb.pp("attn.LayerNorm")).unwrap();
    candle_nn::linear_no_bias(8, 8, vb.pp("mlp.fc")).unwrap();
    candle_nn::rms_norm(8, 1e-5, vb.pp("final_norm")).unwrap();
    varmap
}

/// The `no_decay` helper selects exactly what its docs say: rank <= 1, or a name containing
/// `bias` or `norm` (ASCII case-insensitive).
#[test]
fn no_decay_selects_vectors_biases_and_norms() {
    let varmap = transformer_like();
    let p = ParamsRAdam { weight_decay: 0.01, decoupled_weight_decay: true, ..Default::default() };
    let opt =
        RAdam::from_varmap(&varmap, p).unwrap().with_groups(vec![ParamGroup::no_decay()]).unwrap();
    let groups = opt.groups();
    assert_eq!(groups.len(), 2);
    assert_eq!((groups[0].name.as_str(), groups[0].params.weight_decay), ("no_decay", 0.0));
    assert_eq!(
        groups[0].vars,
        ["attn.LayerNorm.bias", "attn.LayerNorm.weight", "attn.q.bias", "final_norm.weight"]
    );
    assert_eq!((groups[1].name.as_str(), groups[1].params.weight_decay), (DEFAULT_GROUP, 0.01));
    assert_eq!(groups[1].vars, ["attn.q.weight", "embed.weight", "mlp.fc.weight"]);
    // A 2-D variable named like a norm matches by name; a 1-D one by rank.
    let m = Var::zeros((2, 2), DType::F32, &DEV).unwrap();
    let g = ParamGroup::no_decay();
    assert!(g.matches("blocks.0.GroupNorm.scale", &m) && !g.matches("blocks.0.w", &m));
    assert!(g.matches("w", &Var::zeros(3, DType::F32, &DEV).unwrap()));
}

/// Groups: first match wins, lr is a multiplier that follows set_learning_rate, every override
/// reaches the scalars, and bad groups are refused with their name.
#[test]
fn groups_select_first_match_and_scale_the_learning_rate() {
    let varmap = transformer_like();
    let mut opt = RAdam::from_varmap(&varmap, ParamsRAdam { lr: 0.1, ..Default::default() })
        .unwrap()
        .with_groups(vec![
            ParamGroup::glob("attention", &["attn.*"]).unwrap().lr_scale(0.5).betas(0.8, 0.99),
            ParamGroup::no_decay().eps(1e-6), // attn.* norms went to "attention" already
            ParamGroup::predicate("embeddings", |name, _| name.starts_with("embed")).rectify(false),
        ])
        .unwrap();
    let groups = opt.groups();
    let names: Vec<(&str, usize)> =
        groups.iter().map(|g| (g.name.as_str(), g.vars.len())).collect();
    assert_eq!(names, [("attention", 4), ("no_decay", 1), ("embeddings", 1), (DEFAULT_GROUP, 1)]);
    assert_eq!(
        (groups[0].params.lr, groups[0].params.beta1, groups[0].params.beta2),
        (0.05, 0.8, 0.99)
    );
    opt.set_learning_rate(0.2);
    assert_eq!(opt.groups()[0].params.lr, 0.1);
    assert_eq!(opt.groups()[3].params.lr, 0.2);
    let k = opt.next_step_scalars("attn.q.weight").unwrap();
    assert_eq!((k.beta2, k.one_minus_beta1), (0.99, 1.0 - 0.8));
    // SGD step 1 of the group: lr / (1 - beta1) = 0.1 / 0.2.
    assert!((k.step_size - 0.5).abs() < 1e-15, "{k:?}");
    assert_eq!(opt.next_step_scalars("embed.weight").unwrap().update, Update::Adaptive);

    let base = || RAdam::from_varmap(&varmap, ParamsRAdam::default()).unwrap();
    let e = err_text(base().with_groups(vec![ParamGroup::names("typo", &["atn.q.weight"])]));
    assert!(e.contains("group 'typo': no variable is named 'atn.q.weight'"), "{e}");
    // One mistyped name next to a correct one, one dead pattern among live ones: each is named.
    let e = err_text(
        base().with_groups(vec![ParamGroup::names("g", &["embed.weight", "embed.wieght"])]),
    );
    assert!(e.contains("group 'g': no variable is named 'embed.wieght'"), "{e}");
    let e = err_text(
        base().with_groups(vec![ParamGroup::glob("g", &["embed.*", "*.atention.*"]).unwrap()]),
    );
    assert!(e.contains("group 'g': pattern '*.atention.*' matches no variable"), "{e}");
    // A predicate group that selects nothing.
    let e = err_text(base().with_groups(vec![ParamGroup::predicate("none", |_, _| false)]));
    assert!(e.contains("group 'none' selects no variable"), "{e}");
    // A group whose every variable an earlier group took says which group took them.
    let e = err_text(base().with_groups(vec![
        ParamGroup::glob("all_embed", &["embed.*"]).unwrap(),
        ParamGroup::names("embed_w", &["embed.weight"]),
    ]));
    assert!(
        e.contains("group 'embed_w' selects 1 variable(s), but every one was taken by the earlier group(s) 'all_embed'"),
        "{e}"
    );
    let e = err_text(
        base().with_groups(vec![ParamGroup::names("x", &["embed.weight"]).lr_scale(-1.0)]),
    );
    assert!(e.contains("group 'x'") && e.contains("lr_scale"), "{e}");
    let e = err_text(base().with_groups(vec![ParamGroup::names("x", &["embed.weight"]).eps(-1.0)]));
    assert!(e.contains("group 'x'") && e.contains("eps"), "{e}");
    let e = err_text(base().with_groups(vec![
        ParamGroup::names("x", &["embed.weight"]),
        ParamGroup::names("x", &["mlp.fc.weight"]),
    ]));
    assert!(e.contains("'x' is used twice"), "{e}");
    assert!(err_text(ParamGroup::glob("bad", &["a[.b"])).contains("group 'bad'"));
    // An lr that overflows in a group is refused by try_set_learning_rate, naming the group.
    let mut o = base()
        .with_groups(vec![ParamGroup::names("big", &["mlp.fc.weight"]).lr_scale(1e300)])
        .unwrap();
    let e = err_text(o.try_set_learning_rate(1e10));
    assert!(
        e.contains("group 'big': its learning rate lr * lr_scale = 1e10 * 1e300 overflows to inf"),
        "{e}"
    );
}

/// Groups change the update as their hyper-parameters say: a var in a group with lr_scale 0.5
/// moves exactly like the same var in an optimizer with half the lr.
#[test]
fn a_group_steps_like_an_optimizer_with_its_parameters() {
    let mk = || {
        (0..3)
            .map(|i| {
                let t = common::hash_tensor(1025, 40 + i, 0, DType::F32, 1.0, 0.0, &DEV).unwrap();
                Var::from_tensor(&t).unwrap()
            })
            .collect::<Vec<_>>()
    };
    let base = ParamsRAdam {
        lr: 0.05,
        weight_decay: 0.1,
        decoupled_weight_decay: true,
        ..Default::default()
    };
    let special = ParamsRAdam { lr: 0.025, beta1: 0.8, weight_decay: 0.0, ..base.clone() };
    let (grouped, alone_base, alone_special) = (mk(), mk(), mk());
    let mut g = RAdam::new(grouped.clone(), base.clone())
        .unwrap()
        .with_groups(vec![ParamGroup::names("s", &["param.1"])
            .lr_scale(0.5)
            .betas(0.8, 0.999)
            .weight_decay(0.0)])
        .unwrap();
    let mut b = RAdam::new(vec![alone_base[0].clone(), alone_base[2].clone()], base).unwrap();
    let mut s = RAdam::new(vec![alone_special[1].clone()], special).unwrap();
    for t in 1..=9 {
        let grad =
            |i: u64| common::hash_tensor(1025, 50 + i, t, DType::F32, 1.0, 0.25, &DEV).unwrap();
        let mut gg = GradStore::default();
        let (mut gb, mut gs) = (GradStore::default(), GradStore::default());
        for (i, v) in grouped.iter().enumerate() {
            gg.insert(v, grad(i as u64));
        }
        gb.insert(&alone_base[0], grad(0));
        gb.insert(&alone_base[2], grad(2));
        gs.insert(&alone_special[1], grad(1));
        g.step(&gg).unwrap();
        b.step(&gb).unwrap();
        s.step(&gs).unwrap();
    }
    let bits = |v: &Var| {
        v.as_tensor().to_vec1::<f32>().unwrap().iter().map(|x| x.to_bits()).collect::<Vec<_>>()
    };
    assert_eq!(bits(&grouped[0]), bits(&alone_base[0]));
    assert_eq!(bits(&grouped[1]), bits(&alone_special[1]));
    assert_eq!(bits(&grouped[2]), bits(&alone_base[2]));
}
