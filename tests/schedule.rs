//! `candle_radam::schedule` against torch's schedulers and fairseq's `inverse_sqrt`
//! (generator: tests/golden/gen_schedules.py; 1e-12 relative), plus the driver and the argument
//! checks.

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{Optimizer, SGD};
use candle_radam::schedule::{
    apply, warmup_then, Anneal, Constant, Cosine, Exponential, InverseSqrt, Join, Lambda, Linear,
    MultiStep, OneCycle, Schedule, Scheduled, StepDecay,
};
use candle_radam::{ParamsRAdam, RAdam};
use serde::Deserialize;
use serde_json::Value;

#[derive(Deserialize)]
struct Case {
    name: String,
    kind: String,
    args: Value,
    reference: String,
    values: Vec<(u64, f64)>,
}

#[derive(Deserialize)]
struct Cases {
    cases: Vec<Case>,
}

fn f(a: &Value, k: &str) -> f64 {
    a[k].as_f64().unwrap_or_else(|| panic!("{k} in {a}"))
}

fn u(a: &Value, k: &str) -> u64 {
    a[k].as_u64().unwrap_or_else(|| panic!("{k} in {a}"))
}

fn build(kind: &str, a: &Value) -> Box<dyn Schedule> {
    match kind {
        "constant" => Box::new(Constant::new(f(a, "lr")).unwrap()),
        "linear" => Box::new(Linear::new(f(a, "init"), f(a, "end"), u(a, "steps")).unwrap()),
        "cosine" => Box::new(Cosine::new(f(a, "init"), f(a, "floor"), u(a, "steps")).unwrap()),
        "step" => Box::new(StepDecay::new(f(a, "init"), u(a, "step_size"), f(a, "gamma")).unwrap()),
        "multistep" => {
            let m = a["milestones"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap());
            Box::new(MultiStep::new(f(a, "init"), m.collect(), f(a, "gamma")).unwrap())
        }
        "exponential" => Box::new(Exponential::new(f(a, "init"), f(a, "gamma")).unwrap()),
        "one_cycle" => {
            let anneal = match a["anneal"].as_str().unwrap() {
                "cos" => Anneal::Cos,
                "linear" => Anneal::Linear,
                other => panic!("anneal {other}"),
            };
            let s = OneCycle::new(f(a, "max_lr"), u(a, "total_steps"))
                .unwrap()
                .with_pct_start(f(a, "pct_start"))
                .unwrap()
                .with_anneal(anneal)
                .with_div_factors(f(a, "div_factor"), f(a, "final_div_factor"))
                .unwrap()
                .with_three_phase(a["three_phase"].as_bool().unwrap());
            Box::new(s)
        }
        "warmup_linear" => {
            let decay = Linear::new(f(a, "peak"), f(a, "end"), u(a, "steps")).unwrap();
            Box::new(warmup_then(u(a, "warmup"), f(a, "warmup_init"), decay).unwrap())
        }
        "warmup_cosine" => {
            let decay = Cosine::new(f(a, "peak"), f(a, "floor"), u(a, "steps")).unwrap();
            Box::new(warmup_then(u(a, "warmup"), f(a, "warmup_init"), decay).unwrap())
        }
        "inverse_sqrt" => Box::new(
            InverseSqrt::new(f(a, "lr"), u(a, "warmup_updates"), f(a, "warmup_init_lr")).unwrap(),
        ),
        other => panic!("unknown kind {other}"),
    }
}

#[test]
fn golden_against_torch_and_fairseq() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/golden/schedules.json");
    let cases: Cases = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let kinds: std::collections::HashSet<_> = cases.cases.iter().map(|c| c.kind.as_str()).collect();
    assert_eq!(kinds.len(), 10, "{kinds:?}");
    let (mut worst, mut at) = (0f64, String::new());
    for c in &cases.cases {
        let s = build(&c.kind, &c.args);
        assert!(!c.values.is_empty());
        for &(step, want) in &c.values {
            let got = s.lr(step);
            let err = if want == 0.0 { got.abs() } else { ((got - want) / want).abs() };
            assert!(
                err <= 1e-12,
                "{} ({}), step {step}: {got:e} vs {want:e} (rel {err:e})",
                c.name,
                c.reference
            );
            if err > worst {
                (worst, at) = (err, format!("{} step {step}", c.name));
            }
        }
    }
    println!("{} cases, worst relative error {worst:.2e} ({at})", cases.cases.len());
}

#[test]
fn join_at_boundaries() {
    let s = Join::new(
        vec![
            Box::new(Constant::new(1.0).unwrap()),
            Box::new(Linear::new(2.0, 0.0, 4).unwrap()),
            Box::new(Lambda::new(1.0, |step: u64| 10.0 + step as f64)),
        ],
        vec![3, 5],
    )
    .unwrap();
    let got: Vec<f64> = (0..8).map(|k| s.lr(k)).collect();
    assert_eq!(got, [1.0, 1.0, 1.0, 2.0, 1.5, 10.0, 11.0, 12.0]);
    assert_eq!(s.boundaries(), [3, 5]);

    // warmup_then: continuous at the boundary, and warmup 0 is the decay alone.
    let w = warmup_then(4, 0.0, Cosine::new(1.0, 0.0, 10).unwrap()).unwrap();
    assert_eq!(
        [w.lr(0), w.lr(2), w.lr(4), w.lr(9), w.lr(14), w.lr(100)],
        [0.0, 0.5, 1.0, 0.5, 0.0, 0.0]
    );
    let w0 = warmup_then(0, 0.0, Exponential::new(2.0, 0.5).unwrap()).unwrap();
    assert_eq!([w0.lr(0), w0.lr(3)], [2.0, 0.25]);

    // Past the end every decay holds its last value.
    assert_eq!(Linear::new(1.0, 0.25, 3).unwrap().lr(u64::MAX), 0.25);
    assert_eq!(Cosine::new(1.0, 0.125, 3).unwrap().lr(1 << 40), 0.125);
    let oc = OneCycle::new(0.01, 100).unwrap();
    assert_eq!(oc.lr(99), oc.lr(1000));
    assert!((oc.lr(99) - 0.01 / 25.0 / 1e4).abs() < 1e-20);
    assert!(InverseSqrt::new(1e-3, 100, 0.0).unwrap().lr(u64::MAX) > 0.0);
}

#[test]
fn arguments_are_validated() {
    let msg = |r: candle_core::Result<_>| r.map(|_: ()| ()).unwrap_err().to_string();
    for (err, want) in [
        (msg(Constant::new(-1.0).map(drop)), "lr must be finite and >= 0, got -1"),
        (msg(Constant::new(f64::NAN).map(drop)), "got NaN"),
        (msg(Linear::new(0.0, 1.0, 0).map(drop)), "steps must be >= 1"),
        (msg(Linear::new(0.0, f64::INFINITY, 3).map(drop)), "end must be finite"),
        (msg(Cosine::new(1.0, -0.1, 3).map(drop)), "floor must be finite and >= 0"),
        (msg(InverseSqrt::new(1e-3, 0, 0.0).map(drop)), "warmup_updates must be >= 1"),
        (msg(StepDecay::new(1.0, 0, 0.1).map(drop)), "step_size must be >= 1"),
        (msg(StepDecay::new(1.0, 3, 0.0).map(drop)), "gamma must be finite and > 0"),
        (msg(Exponential::new(1.0, -0.5).map(drop)), "gamma must be finite and > 0"),
        (msg(MultiStep::new(1.0, vec![5, 3, 5], 0.1).map(drop)), "milestone 5 is given twice"),
        (msg(OneCycle::new(0.01, 0).map(drop)), "total_steps must be >= 1"),
        (msg(OneCycle::new(0.1, 2).unwrap().with_pct_start(0.5).map(drop)), "empty first phase"),
        (msg(OneCycle::new(0.1, 100).unwrap().with_pct_start(1.5).map(drop)), "pct_start"),
        (
            msg(OneCycle::new(0.1, 100).unwrap().with_div_factors(0.0, 1e4).map(drop)),
            "div_factor must be finite and > 0",
        ),
        (msg(Join::new(vec![], vec![]).map(drop)), "one more schedule than boundaries"),
        (
            msg(Join::new(
                vec![Box::new(Constant::new(1.0).unwrap()), Box::new(Constant::new(2.0).unwrap())],
                vec![0],
            )
            .map(drop)),
            "strictly increasing and >= 1",
        ),
        (
            msg(warmup_then(5, -1.0, Constant::new(1.0).unwrap()).map(drop)),
            "warmup_then: warmup_init must be finite and >= 0, got -1",
        ),
        (
            msg(warmup_then(5, 0.0, Lambda::new(1.0, |_| f64::NAN)).map(drop)),
            "the decay's lr(0) (the warmup's target) must be finite and >= 0, got NaN",
        ),
    ] {
        assert!(err.contains(want), "{err:?} lacks {want:?}");
    }
}

fn quadratic() -> (Var, impl Fn(&Var) -> candle_core::Result<Tensor>) {
    let w = Var::from_tensor(&Tensor::new(&[1.0f32, -2.0, 3.0], &Device::Cpu).unwrap()).unwrap();
    (w, |w: &Var| w.as_tensor().sqr()?.sum_all())
}

#[test]
fn driver_sets_lr_before_each_step_for_any_optimizer() -> candle_core::Result<()> {
    // candle-nn's SGD: w <- w - lr * 2w, so each step's lr can be read off the parameter.
    let (w, loss) = quadratic();
    let schedule = Linear::new(0.1, 0.0, 4)?;
    let mut opt = Scheduled::new(SGD::new(vec![w.clone()], 123.0)?, schedule);
    let mut prev = w.as_tensor().to_vec1::<f32>()?[0];
    for k in 0..6u64 {
        assert_eq!(opt.next_lr(), schedule.lr(k));
        opt.backward_step(&loss(&w)?)?;
        assert_eq!(opt.optimizer().learning_rate(), schedule.lr(k));
        let now = w.as_tensor().to_vec1::<f32>()?[0];
        let want = prev * (1.0 - 2.0 * schedule.lr(k) as f32);
        assert!((now - want).abs() < 1e-6, "step {k}: {now} vs {want}");
        prev = now;
    }
    assert_eq!(opt.step_count(), 6);

    // A failed step does not advance the count; a bad closure lr is an error, not applied.
    let mut bad =
        Scheduled::new(SGD::new(vec![w.clone()], 0.5)?, Lambda::new(1.0, |k: u64| 1.0 - k as f64));
    bad.backward_step(&loss(&w)?)?;
    bad.backward_step(&loss(&w)?)?;
    let err = bad.backward_step(&loss(&w)?).unwrap_err().to_string();
    assert!(err.contains("learning rate at step 2 must be finite and >= 0, got -1"), "{err}");
    assert_eq!((bad.step_count(), bad.optimizer().learning_rate()), (2, 0.0));

    // `apply` with RAdam's own step count; resume gives the same lr sequence.
    let mut radam = RAdam::new(vec![w.clone()], ParamsRAdam::default())?;
    let cos = Cosine::new(1e-2, 1e-4, 10)?;
    for _ in 0..3 {
        let k = radam.step_count();
        assert_eq!(apply(&cos, &mut radam, k)?, cos.lr(k));
        assert_eq!(radam.learning_rate(), cos.lr(k));
        radam.backward_step(&loss(&w)?)?;
    }
    let resumed = Scheduled::resume(radam, cos, 3);
    assert_eq!(resumed.next_lr(), cos.lr(3));
    assert_eq!(resumed.into_inner().step_count(), 3);
    let _ = DType::F32;
    Ok(())
}

/// Milestones in any order give torch's `MultiStepLR` values (torch counts them order-free):
/// `[50, 10]` at step 20 has passed one milestone. The fields are private, so an unsorted list
/// cannot bypass the constructor; the accessors read the sorted values.
#[test]
fn multistep_milestones_in_any_order_are_sorted() {
    let m = MultiStep::new(0.1, vec![50, 10], 0.1).unwrap();
    assert_eq!(m.milestones(), [10, 50]);
    let sorted = MultiStep::new(0.1, vec![10, 50], 0.1).unwrap();
    for step in [0, 9, 10, 20, 49, 50, 1000] {
        assert_eq!(m.lr(step), sorted.lr(step), "step {step}");
    }
    assert!((m.lr(20) - 0.01).abs() < 1e-15, "{}", m.lr(20));
    let s = StepDecay::new(0.1, 3, 0.5).unwrap();
    assert_eq!((s.init(), s.step_size(), s.gamma()), (0.1, 3, 0.5));
    let c = OneCycle::new(0.1, 100).unwrap().with_three_phase(true).with_anneal(Anneal::Linear);
    assert_eq!((c.pct_start(), c.three_phase(), c.anneal()), (0.3, true, Anneal::Linear));
}

/// `Scheduled` counts as torch's scheduler does: every accepted `step` call, including calls in
/// which RAdam changed nothing (no gradient at all, or a step skipped for non-finite gradients),
/// which RAdam's `step_count` (applied updates, fairseq's `num_updates`) does not count. Resuming
/// from the saved `Scheduled::step_count` continues the lr sequence exactly.
#[test]
fn scheduled_counts_every_accepted_call_and_resumes_exactly() -> candle_core::Result<()> {
    let params = ParamsRAdam { non_finite: candle_radam::NonFinite::Skip, ..Default::default() };
    let schedule = Linear::new(0.0, 1.0, 10)?;
    let run = |calls: &[&str], w: &Var, opt: &mut Scheduled<RAdam, Linear>| {
        let mut lrs = vec![];
        for c in calls {
            let mut g = candle_core::backprop::GradStore::default();
            match *c {
                "grad" => g.insert(w, Tensor::new(&[1f32], &Device::Cpu).unwrap()),
                "nan" => g.insert(w, Tensor::new(&[f32::NAN], &Device::Cpu).unwrap()),
                _ => None,
            };
            lrs.push(opt.next_lr());
            opt.step(&g).unwrap();
        }
        lrs
    };
    let calls = ["grad", "empty", "grad", "nan", "grad", "grad", "empty", "grad"];
    let w = Var::new(&[1f32], &Device::Cpu)?;
    let mut whole = Scheduled::new(RAdam::new(vec![w.clone()], params.clone())?, schedule);
    let all = run(&calls, &w, &mut whole);
    // The reviewer's sequence: grad, empty, grad -> 3 calls, 2 updates.
    assert_eq!(all[..3], [0.0, 0.1, 0.2]);
    assert_eq!((whole.step_count(), whole.optimizer().step_count()), (8, 5));
    assert_eq!(whole.optimizer().skipped_steps(), 1);

    // Stop after 4 calls, save the state and the count, resume in a new optimizer.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.safetensors");
    let w2 = Var::new(&[1f32], &Device::Cpu)?;
    let mut first = Scheduled::new(RAdam::new(vec![w2.clone()], params.clone())?, schedule);
    let mut lrs = run(&calls[..4], &w2, &mut first);
    let saved = first.step_count();
    assert_eq!((saved, first.optimizer().step_count()), (4, 2));
    first.optimizer().save_state(&path)?;
    let mut radam = RAdam::new(vec![w2.clone()], params)?;
    radam.load_state(&path)?;
    let mut resumed = Scheduled::resume(radam, schedule, saved);
    lrs.extend(run(&calls[4..], &w2, &mut resumed));
    assert_eq!(lrs, all);
    assert_eq!(w2.as_tensor().to_vec1::<f32>()?, w.as_tensor().to_vec1::<f32>()?);
    Ok(())
}

/// `Scheduled::backward_step` runs the wrapped optimizer's own `backward_step`: RAdam with a
/// `LossScaler` multiplies the loss by its scale there, so the wrapped run is bit-identical to the
/// unwrapped one (the loss scaled by 2^16, the update unscaled). Calling `loss.backward()` itself
/// would feed unscaled gradients to an optimizer that divides them by 2^16.
#[test]
fn scheduled_backward_step_keeps_the_optimizers_loss_scaling() -> candle_core::Result<()> {
    use candle_radam::LossScaler;
    let sched = warmup_then(2, 0.0, Constant::new(1e-2)?)?;
    let (w_plain, loss) = quadratic();
    let (w_wrapped, _) = quadratic();
    let mut plain = RAdam::new(vec![w_plain.clone()], ParamsRAdam::default())?
        .with_loss_scaler(LossScaler::new())?;
    let mut wrapped = Scheduled::new(
        RAdam::new(vec![w_wrapped.clone()], ParamsRAdam::default())?
            .with_loss_scaler(LossScaler::new())?,
        &sched,
    );
    for k in 0..8u64 {
        apply(&sched, &mut plain, k)?;
        plain.backward_step(&loss(&w_plain)?)?;
        wrapped.backward_step(&loss(&w_wrapped)?)?;
        assert_eq!(
            w_plain.as_tensor().to_vec1::<f32>()?,
            w_wrapped.as_tensor().to_vec1::<f32>()?,
            "step {k}"
        );
    }
    assert_eq!(wrapped.optimizer().loss_scale(), plain.loss_scale());
    assert_eq!((wrapped.step_count(), wrapped.optimizer().step_count()), (8, 8));
    Ok(())
}
