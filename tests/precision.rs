//! f16 / bf16 parameter update modes ([`Rounding`]): the issue's constant-gradient inputs for
//! every mode, the remainder method against f32 on every f32 golden case, stochastic rounding's
//! statistics and stream, state save / load of the buffers, validation; every mode with 8-bit
//! optimizer state ([`StateFormat`]) too.

mod common;

use candle_core::{backprop::GradStore, DType, Device, Result, Tensor, Var};
use candle_nn::Optimizer;
use candle_radam::{ParamGroup, ParamsRAdam, RAdam, Rounding, StateFormat};
use common::cases::{Cases, MultiVar};
use common::{bits, hash_tensor};

const MODES: [Rounding; 4] =
    [Rounding::Nearest, Rounding::Remainder, Rounding::Kahan, Rounding::Stochastic { seed: 7 }];

/// Full moments, and 8-bit moments for every variable (no size threshold).
const FORMATS: [StateFormat; 2] = [StateFormat::Full, StateFormat::Blockwise8 { min_elements: 1 }];

fn params(r: Rounding) -> ParamsRAdam {
    ParamsRAdam { rounding: r, ..Default::default() }
}

/// A one-variable optimizer named `w`.
fn one(x: &Tensor, p: ParamsRAdam) -> Result<(Var, RAdam)> {
    let var = Var::from_tensor(x)?;
    let opt = RAdam::new_named(vec![("w".into(), var.clone())], p)?;
    Ok((var, opt))
}

fn grads_of(var: &Var, g: &Tensor) -> GradStore {
    let mut grads = GradStore::default();
    grads.insert(var, g.clone());
    grads
}

fn scalar(t: &Tensor) -> f32 {
    t.flatten_all().unwrap().to_dtype(DType::F32).unwrap().to_vec1::<f32>().unwrap()[0]
}

/// Elements of the constant-gradient runs (every element is the issue's input; stochastic
/// rounding draws independently for each).
const N: usize = 4096;

/// The mean over the elements, in f64 (exact for equal elements).
fn mean(t: &Tensor) -> f64 {
    let x = t.flatten_all().unwrap().to_dtype(DType::F64).unwrap().to_vec1::<f64>().unwrap();
    x.iter().sum::<f64>() / x.len() as f64
}

/// The issue's input: param 1.0, constant gradient 1.0, lr 1e-3, default betas, on `N`
/// elements; element 0 after each step (1..=steps), its master value (`master_weights`), and
/// the mean over the elements.
fn constant_run(dtype: DType, r: Rounding, steps: usize) -> (Vec<f32>, Vec<f32>, Vec<f64>) {
    let dev = Device::Cpu;
    let (var, mut opt) = one(&Tensor::ones(N, dtype, &dev).unwrap(), params(r)).unwrap();
    let g = Tensor::ones(N, dtype, &dev).unwrap();
    let (mut vals, mut masters, mut means) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..steps {
        opt.step(&grads_of(&var, &g)).unwrap();
        vals.push(scalar(var.as_tensor()));
        masters.push(scalar(&opt.master_weights("w").unwrap()));
        means.push(mean(var.as_tensor()));
    }
    (vals, masters, means)
}

#[test]
fn round_to_nearest_loses_small_updates_as_the_issue_says() {
    let (f32s, ..) = constant_run(DType::F32, Rounding::Nearest, 1000);
    assert_eq!((f32s[99], f32s[999]), (0.981_268_7, 0.550_856_77));
    let (bf, ..) = constant_run(DType::BF16, Rounding::Nearest, 1000);
    assert!(bf.iter().all(|&x| x == 1.0), "bf16 nearest: stays exactly 1.0 for 1000 steps");
    let (h, ..) = constant_run(DType::F16, Rounding::Nearest, 1000);
    assert_eq!(h[4], 0.995_117_2); // step 5
    assert!(h[4..100].iter().all(|&x| x == 0.995_117_2), "f16 sits there through step 100");
    assert_eq!(h[999], 0.568_847_66);
}

#[test]
fn remainder_follows_f32_bit_for_bit_on_the_constant_gradient() {
    let (f32s, ..) = constant_run(DType::F32, Rounding::Nearest, 1000);
    let (bf, master, _) = constant_run(DType::BF16, Rounding::Remainder, 1000);
    for t in 0..1000 {
        assert_eq!(master[t].to_bits(), f32s[t].to_bits(), "step {}", t + 1);
        // The param is the master value truncated to bf16.
        assert_eq!(bf[t].to_bits(), f32s[t].to_bits() & 0xffff_0000, "step {}", t + 1);
    }
}

/// Kahan and stochastic rounding track the f32 run on the constant gradient: Kahan within one
/// half-ulp-sized compensation error, stochastic within a statistical bound.
#[test]
fn kahan_and_stochastic_follow_f32_on_the_constant_gradient() {
    let (f32s, ..) = constant_run(DType::F32, Rounding::Nearest, 1000);
    for (dtype, ulp_at_half) in [(DType::BF16, 2f32.powi(-9)), (DType::F16, 2f32.powi(-12))] {
        let (k, ..) = constant_run(dtype, Rounding::Kahan, 1000);
        for t in [9, 99, 999] {
            // Kahan: p + c approximates the f32 value; p itself is within one ulp of it.
            let ulp = ulp_at_half * 2.0 * 2f32.powi(f32s[t].log2().ceil() as i32);
            assert!(
                (k[t] - f32s[t]).abs() <= ulp,
                "{dtype:?} kahan step {}: {} vs {}",
                t + 1,
                k[t],
                f32s[t]
            );
        }
        assert_ne!(k[999], 1.0);
        // Stochastic: each step adds an independent, unbiased rounding error of at most one ulp
        // (variance <= ulp^2 / 4), so after t steps the mean over N elements is within
        // 5 * (ulp / 2) * sqrt(t / N) of the f32 value (5 standard errors).
        let (_, _, s) = constant_run(dtype, Rounding::Stochastic { seed: 3 }, 1000);
        for t in [9, 99, 999] {
            let ulp = (ulp_at_half * 2.0) as f64; // values in [0.5, 1)
            let bound = 5.0 * ulp / 2.0 * ((t + 1) as f64 / N as f64).sqrt();
            let err = (s[t] - f32s[t] as f64).abs();
            assert!(
                err <= bound,
                "{dtype:?} stochastic step {}: mean {} vs {} (bound {bound:e})",
                t + 1,
                s[t],
                f32s[t]
            );
        }
    }
}

fn golden_cases() -> Cases {
    common::cases::load()
}

/// The multi-variable f32 golden cases (groups, gradients missing on some steps): the bf16 +
/// remainder run rebuilds the f32 run's values bit for bit, every variable after every step.
#[test]
fn remainder_matches_f32_on_every_multi_variable_golden_case() {
    let dev = Device::Cpu;
    let cases = golden_cases();
    let mut ran = 0;
    for c in cases.multi_cases.iter().filter(|c| c.dtype == "f32") {
        let value = |v: &MultiVar, t: u64| -> Tensor {
            match (v.seed, v.init, v.grad) {
                (Some(seed), _, _) => {
                    let (scale, offset) =
                        if t == 0 { (1.0, 0.0) } else { (c.grad_scale, c.grad_offset) };
                    hash_tensor(v.n, seed, t, DType::F32, scale, offset, &dev).unwrap()
                }
                (None, Some(init), Some(grad)) => {
                    Tensor::full(if t == 0 { init } else { grad }, v.n, &dev).unwrap()
                }
                _ => panic!("{}: var {} has neither seed nor init/grad", c.name, v.name),
            }
        };
        let groups = || -> Vec<ParamGroup> {
            c.groups
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
                .collect()
        };
        let v32: Vec<(String, Var)> = c
            .vars
            .iter()
            .map(|v| (v.name.clone(), Var::from_tensor(&value(v, 0)).unwrap()))
            .collect();
        let v16: Vec<(String, Var)> = c
            .vars
            .iter()
            .map(|v| {
                (
                    v.name.clone(),
                    Var::from_tensor(&value(v, 0).to_dtype(DType::BF16).unwrap()).unwrap(),
                )
            })
            .collect();
        let mut o32 =
            RAdam::new_named(v32.clone(), c.hp.params()).unwrap().with_groups(groups()).unwrap();
        let mut o16 = RAdam::new_named(
            v16.clone(),
            ParamsRAdam { rounding: Rounding::Remainder, ..c.hp.params() },
        )
        .unwrap()
        .with_groups(groups())
        .unwrap();
        for v in &c.vars {
            o16.set_master_weights(&v.name, &value(v, 0)).unwrap();
        }
        let has_grad = |name: &str, t: u64| c.grads.get(name).is_none_or(|s| s.contains(&t));
        for t in 1..=c.steps {
            let (mut g32, mut g16) = (GradStore::default(), GradStore::default());
            for (v, ((name, a), (_, b))) in c.vars.iter().zip(v32.iter().zip(&v16)) {
                if has_grad(name, t) {
                    let g = value(v, t).to_dtype(DType::BF16).unwrap();
                    g32.insert(a, g.to_dtype(DType::F32).unwrap());
                    g16.insert(b, g);
                }
            }
            o32.step(&g32).unwrap();
            o16.step(&g16).unwrap();
            for (name, a) in &v32 {
                assert_eq!(
                    bits(&o16.master_weights(name).unwrap()),
                    bits(a.as_tensor()),
                    "{} {name} step {t}",
                    c.name
                );
            }
        }
        ran += 1;
    }
    assert!(ran >= 5, "only {ran} multi-variable f32 golden cases");
}

/// On every f32 golden case: a bf16 + remainder run started from the case's f32 values
/// (`set_master_weights`) and fed its gradients rounded to bf16 rebuilds, at every step, exactly
/// the f32 values of an f32 run fed the same (rounded) gradients; with full moments and with
/// 8-bit moments on both sides (the 8-bit pass runs the same f32 rule on the rebuilt value).
#[test]
fn remainder_matches_f32_on_every_f32_golden_case() {
    let cases = golden_cases();
    let dev = Device::Cpu;
    let mut ran = 0;
    for (c, format) in
        cases.cases.iter().filter(|c| c.dtype == "f32").flat_map(|c| FORMATS.map(|f| (c, f)))
    {
        let p = c.hp.params();
        let init = hash_tensor(c.n, c.seed, 0, DType::F32, 1.0, 0.0, &dev).unwrap();
        let (v32, o32) = one(&init, p.clone()).unwrap();
        let mut o32 = o32.with_state_format(format).unwrap();
        let (v16, o16) = one(
            &init.to_dtype(DType::BF16).unwrap(),
            ParamsRAdam { rounding: Rounding::Remainder, ..p },
        )
        .unwrap();
        let mut o16 = o16.with_state_format(format).unwrap();
        assert_eq!(o16.var_state("w").unwrap().1, format.quantizes(c.n));
        o16.set_master_weights("w", &init).unwrap();
        assert_eq!(bits(&o16.master_weights("w").unwrap()), bits(&init), "{}: start", c.name);
        for t in 1..=c.steps {
            let g = hash_tensor(c.n, c.seed, t, DType::F32, c.grad_scale, c.grad_offset, &dev)
                .unwrap()
                .to_dtype(DType::BF16)
                .unwrap();
            o32.step(&grads_of(&v32, &g.to_dtype(DType::F32).unwrap())).unwrap();
            o16.step(&grads_of(&v16, &g)).unwrap();
            assert_eq!(
                bits(&o16.master_weights("w").unwrap()),
                bits(v32.as_tensor()),
                "{} {format:?} step {t}",
                c.name
            );
        }
        ran += 1;
    }
    assert!(ran >= 2 * 12, "only {ran} f32 golden cases x formats");
}

/// Stochastic rounding is unbiased: one SGD step from 1.0 (`p = 1 - lr = 0.999` in f32, between
/// the bf16 values 0.99609375 and 1.0; f16: 0.99853516 and 0.99902344), over 4096 elements and
/// 50 seeds (204800 roundings), has a mean within 5 standard errors of the f32 value, and
/// every element is one of the two neighbours.
#[test]
fn stochastic_rounding_is_unbiased() {
    let dev = Device::Cpu;
    let n = 4096;
    for (dtype, lo, hi) in
        [(DType::BF16, 0.996_093_75f64, 1.0f64), (DType::F16, 0.998_535_156_25, 0.999_023_437_5)]
    {
        let x = 0.999f32 as f64;
        let mut sum = 0.0;
        let mut count = 0usize;
        for seed in 0..50 {
            let (var, mut opt) =
                one(&Tensor::ones(n, dtype, &dev).unwrap(), params(Rounding::Stochastic { seed }))
                    .unwrap();
            opt.step(&grads_of(&var, &Tensor::ones(n, dtype, &dev).unwrap())).unwrap();
            let v = var.as_tensor().to_dtype(DType::F64).unwrap().to_vec1::<f64>().unwrap();
            for y in v {
                assert!(y == lo || y == hi, "{dtype:?}: {y} is not a neighbour of {x}");
                sum += y;
                count += 1;
            }
        }
        let mean = sum / count as f64;
        let q = (x - lo) / (hi - lo);
        let se = (hi - lo) * (q * (1.0 - q) / count as f64).sqrt();
        assert!((mean - x).abs() <= 5.0 * se, "{dtype:?}: mean {mean} vs {x} (se {se:e})");
    }
}

/// Runs `steps` steps of a 70001-element variable (over two CPU chunks) with hashed gradients.
fn hashed_steps(opt: &mut RAdam, var: &Var, from: u64, to: u64) {
    for t in from..=to {
        let g = hash_tensor(var.elem_count(), 5, t, var.dtype(), 1.0, 0.1, &Device::Cpu).unwrap();
        opt.step(&grads_of(var, &g)).unwrap();
    }
}

/// Saving after 7 steps and resuming in a fresh optimizer gives, after 20 steps, the same bits
/// as an uninterrupted run, for every mode and half dtype (buffers and stochastic stream
/// included), with full and with 8-bit moments (the file then holds the codes, the absmax and
/// the buffer), and the state round trip keeps the buffer bit for bit.
#[test]
fn resumed_runs_equal_uninterrupted_ones() {
    let dev = Device::Cpu;
    let dir = tempfile::tempdir().unwrap();
    for (dtype, r, format) in [DType::BF16, DType::F16]
        .into_iter()
        .flat_map(|d| MODES.map(|r| (d, r)))
        .flat_map(|(d, r)| FORMATS.map(|f| (d, r, f)))
    {
        if r == Rounding::Remainder && dtype == DType::F16 {
            continue;
        }
        {
            let opt = |x: &Tensor| {
                let (v, o) = one(x, params(r)).unwrap();
                (v, o.with_state_format(format).unwrap())
            };
            let init = hash_tensor(70001, 2, 0, dtype, 1.0, 0.0, &dev).unwrap();
            let (va, mut a) = opt(&init);
            hashed_steps(&mut a, &va, 1, 20);
            let (vb, mut b) = opt(&init);
            hashed_steps(&mut b, &vb, 1, 7);
            let path = dir.path().join("s.safetensors");
            b.save_state(&path).unwrap();
            let file = candle_core::safetensors::load(&path, &dev).unwrap();
            let eight = format != StateFormat::Full;
            assert_eq!(file.contains_key("exp_avg_q8.w"), eight, "{dtype:?} {r} {format:?}");
            assert_eq!(file.contains_key("exp_avg.w"), !eight, "{dtype:?} {r} {format:?}");
            assert_eq!(file.contains_key("radam.aux.w"), r.extra_bytes_per_param() > 0);
            let master = b.master_weights("w").unwrap();
            let (vc, mut c) = opt(&vb.as_tensor().copy().unwrap());
            let report = c.load_state(&path).unwrap();
            let what = format!("{dtype:?} {r} {format:?}");
            assert!(report.is_clean(), "{what}: {report}");
            assert_eq!(bits(&c.master_weights("w").unwrap()), bits(&master), "{what}");
            hashed_steps(&mut c, &vc, 8, 20);
            assert_eq!(bits(vc.as_tensor()), bits(va.as_tensor()), "{what}: param");
            assert_eq!(
                bits(&c.master_weights("w").unwrap()),
                bits(&a.master_weights("w").unwrap()),
                "{what}: master"
            );
        }
    }
}

/// The 8-bit pass stores the param exactly as the f32-state pass: from zero moments the first
/// step computes the same f32 moments in both formats (the quantization comes after the update),
/// so after it the params and buffers (`master_weights`) agree bit for bit, for every mode and
/// half dtype, on a variable over several rayon tasks of both passes (the stochastic stream's
/// element index included) with a partial last block; and the step moved the params.
#[test]
fn eight_bit_state_stores_params_as_the_full_state_pass() {
    let dev = Device::Cpu;
    for dtype in [DType::BF16, DType::F16] {
        for r in MODES {
            if r == Rounding::Remainder && dtype == DType::F16 {
                continue;
            }
            let init = hash_tensor(70001, 3, 0, dtype, 1.0, 0.0, &dev).unwrap();
            let g = hash_tensor(70001, 3, 1, dtype, 1.0, 0.1, &dev).unwrap();
            let run = |format| {
                let (v, o) = one(&init, ParamsRAdam { lr: 1e-2, ..params(r) }).unwrap();
                let mut o = o.with_state_format(format).unwrap();
                if r == Rounding::Remainder || r == Rounding::Kahan {
                    // A non-zero buffer to start from: the master values of a perturbed param.
                    let x = init.to_dtype(DType::F32).unwrap().affine(1.0 + 1e-3, 1e-4).unwrap();
                    o.set_master_weights("w", &x).unwrap();
                }
                let before = bits(&o.master_weights("w").unwrap());
                o.step(&grads_of(&v, &g)).unwrap();
                (bits(v.as_tensor()), bits(&o.master_weights("w").unwrap()), before)
            };
            let (full, eight) = (run(FORMATS[0]), run(FORMATS[1]));
            let diff = |a: &[u64], b: &[u64]| (0..a.len()).find(|&i| a[i] != b[i]);
            assert_eq!(diff(&full.0, &eight.0), None, "{dtype:?} {r}: first differing param");
            assert_eq!(diff(&full.1, &eight.1), None, "{dtype:?} {r}: first differing master");
            let moved = full.1.iter().zip(&full.2).filter(|(a, b)| a != b).count();
            assert!(moved > 35000, "{dtype:?} {r}: only {moved} master values moved");
        }
    }
}

/// The stochastic stream follows the variable, not its position: a positional optimizer whose
/// variables come back in another order continues each variable's own stream.
#[test]
fn stochastic_stream_survives_a_reordered_positional_resume() {
    let dev = Device::Cpu;
    let p = params(Rounding::Stochastic { seed: 11 });
    let x = hash_tensor(300, 1, 0, DType::BF16, 1.0, 0.0, &dev).unwrap();
    let y = hash_tensor(300, 2, 0, DType::BF16, 1.0, 0.0, &dev).unwrap();
    let run = |opt: &mut RAdam, vars: &[Var], t0: u64, t1: u64| {
        for t in t0..=t1 {
            let mut g = GradStore::default();
            for (j, v) in vars.iter().enumerate() {
                g.insert(
                    v,
                    hash_tensor(300, j as u64 + 10, t, DType::BF16, 1.0, 0.0, &dev).unwrap(),
                );
            }
            opt.step(&g).unwrap();
        }
    };
    let (a, b) = (Var::from_tensor(&x).unwrap(), Var::from_tensor(&y).unwrap());
    let mut o = RAdam::new(vec![a.clone(), b.clone()], p.clone()).unwrap();
    run(&mut o, &[a.clone(), b.clone()], 1, 12);
    let (a2, b2) = (Var::from_tensor(&x).unwrap(), Var::from_tensor(&y).unwrap());
    let mut o2 = RAdam::new(vec![a2.clone(), b2.clone()], p.clone()).unwrap();
    run(&mut o2, &[a2.clone(), b2.clone()], 1, 5);
    let dir = tempfile::tempdir().unwrap();
    o2.save_state(dir.path().join("s")).unwrap();
    // Same variables, opposite order.
    let (a3, b3) =
        (Var::from_tensor(a2.as_tensor()).unwrap(), Var::from_tensor(b2.as_tensor()).unwrap());
    let mut o3 = RAdam::new(vec![b3.clone(), a3.clone()], p).unwrap();
    let report = o3.load_state(dir.path().join("s")).unwrap();
    assert_eq!(report.remapped.len(), 2, "{report}");
    // Gradient seeds follow the variables (a: 10, b: 11), as in the uninterrupted run.
    for t in 6..=12 {
        let mut g = GradStore::default();
        g.insert(&a3, hash_tensor(300, 10, t, DType::BF16, 1.0, 0.0, &dev).unwrap());
        g.insert(&b3, hash_tensor(300, 11, t, DType::BF16, 1.0, 0.0, &dev).unwrap());
        o3.step(&g).unwrap();
    }
    assert_eq!(bits(a3.as_tensor()), bits(a.as_tensor()));
    assert_eq!(bits(b3.as_tensor()), bits(b.as_tensor()));
}

/// A state without buffers loads into a run that has them (they start at zero, reported); a
/// buffer saved under another mode starts at zero too; a saved buffer the current mode does not
/// use is dropped (reported).
#[test]
fn buffers_start_at_zero_when_the_file_has_none_and_are_reported() {
    let dev = Device::Cpu;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s");
    let init = hash_tensor(513, 3, 0, DType::BF16, 1.0, 0.0, &dev).unwrap();
    let save = |r: Rounding| {
        let (v, mut o) = one(&init, params(r)).unwrap();
        hashed_steps(&mut o, &v, 1, 8);
        o.save_state(&path).unwrap();
        v.as_tensor().copy().unwrap()
    };
    // Nearest -> Remainder: the remainder starts at zero (master = param).
    let w = save(Rounding::Nearest);
    let (v, mut o) = one(&w, params(Rounding::Remainder)).unwrap();
    let report = o.load_state(&path).unwrap();
    assert_eq!(
        report.rounding_changes,
        ["1 variable(s): remainder buffer starts at zero (saved under nearest)"]
    );
    assert!(!report.is_clean() && report.to_string().contains("starts at zero"));
    assert_eq!(
        bits(&o.master_weights("w").unwrap()),
        bits(&v.as_tensor().to_dtype(DType::F32).unwrap())
    );
    assert_eq!(o.var_step_count("w"), Some(8));
    // Kahan -> Remainder: another mode's buffer, not reused.
    let w = save(Rounding::Kahan);
    let (_, mut o) = one(&w, params(Rounding::Remainder)).unwrap();
    let report = o.load_state(&path).unwrap();
    assert_eq!(
        report.rounding_changes,
        ["1 variable(s): remainder buffer starts at zero (saved under kahan)"]
    );
    // Remainder -> Nearest: dropped.
    let w = save(Rounding::Remainder);
    let (_, mut o) = one(&w, params(Rounding::Nearest)).unwrap();
    let report = o.load_state(&path).unwrap();
    assert_eq!(
        report.rounding_changes,
        ["1 variable(s): saved remainder buffer dropped (the variable is updated with nearest now)"]
    );
    // A file from before rounding modes (no rounding records): buffers start at zero, reported.
    let w = save(Rounding::Nearest);
    let mut file = candle_core::safetensors::load(&path, &dev).unwrap();
    file.remove("radam.prec.w");
    candle_core::safetensors::save(&file, &path).unwrap();
    let (_, mut o) = one(&w, params(Rounding::Kahan)).unwrap();
    let report = o.load_state(&path).unwrap();
    assert_eq!(
        report.rounding_changes,
        ["1 variable(s): kahan buffer starts at zero (none saved)"]
    );
    assert_eq!(o.var_step_count("w"), Some(8));
    // The buffer in the file is the u16 remainder as i16 bits.
    let _ = save(Rounding::Remainder);
    let file = candle_core::safetensors::load(&path, &dev).unwrap();
    assert_eq!(file["radam.aux.w"].dtype(), DType::I16);
    assert_eq!(file["radam.prec.w"].to_vec1::<i64>().unwrap()[0], 1);
}

/// The stochastic-rounding seed is saved (the third word of `radam.prec.NAME`); loaded into an
/// optimizer with another seed, the report says so and the run continues with the optimizer's
/// seed; the same seed loads clean, and a two-word record (a file from before the seed was
/// saved) still loads, clean.
#[test]
fn the_stochastic_seed_is_saved_and_a_different_one_reported() {
    let dev = Device::Cpu;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s");
    let init = hash_tensor(513, 3, 0, DType::BF16, 1.0, 0.0, &dev).unwrap();
    let (v, mut o) = one(&init, params(Rounding::Stochastic { seed: 3 })).unwrap();
    hashed_steps(&mut o, &v, 1, 8);
    o.save_state(&path).unwrap();
    let w = v.as_tensor().copy().unwrap();
    let file = candle_core::safetensors::load(&path, &dev).unwrap();
    assert_eq!(file["radam.prec.w"].to_vec1::<i64>().unwrap()[2], 3);
    // Same seed: clean, and the stream continues as the uninterrupted run's.
    let (v2, mut o2) = one(&w, params(Rounding::Stochastic { seed: 3 })).unwrap();
    let report = o2.load_state(&path).unwrap();
    assert!(report.is_clean(), "{report}");
    hashed_steps(&mut o, &v, 9, 12);
    hashed_steps(&mut o2, &v2, 9, 12);
    assert_eq!(bits(v.as_tensor()), bits(v2.as_tensor()));
    // Another seed: reported; the run goes on with seed 0.
    let (v3, mut o3) = one(&w, params(Rounding::Stochastic { seed: 0 })).unwrap();
    let report = o3.load_state(&path).unwrap();
    assert_eq!(
        report.rounding_changes,
        ["1 variable(s): stochastic rounding saved with seed 3, continues with this \
             optimizer's seed 0 (another random stream)"]
    );
    assert!(!report.is_clean());
    hashed_steps(&mut o3, &v3, 9, 12);
    assert_ne!(bits(v3.as_tensor()), bits(v.as_tensor()), "the optimizer's seed is used");
    // A record without the seed (older file) loads, clean.
    let mut file = candle_core::safetensors::load(&path, &dev).unwrap();
    let rec = file["radam.prec.w"].to_vec1::<i64>().unwrap();
    file.insert("radam.prec.w".into(), Tensor::new(&rec[..2], &dev).unwrap());
    candle_core::safetensors::save(&file, &path).unwrap();
    let (_, mut o5) = one(&w, params(Rounding::Stochastic { seed: 0 })).unwrap();
    let report = o5.load_state(&path).unwrap();
    assert!(report.is_clean(), "{report}");
}

/// A Rounding::Remainder refused for an f16 variable names where the mode comes from: the
/// group that sets it, or the optimizer's default (and the group that inherits it).
#[test]
fn rounding_errors_name_the_group_or_the_default() {
    let dev = Device::Cpu;
    let h = Var::from_tensor(&Tensor::ones(3, DType::F16, &dev).unwrap()).unwrap();
    let b = Var::from_tensor(&Tensor::ones(3, DType::BF16, &dev).unwrap()).unwrap();
    let vars = vec![("h16".to_string(), h), ("b16".to_string(), b)];
    let o = RAdam::new_named(vars.clone(), params(Rounding::Nearest)).unwrap();
    let e = o
        .with_groups(vec![ParamGroup::names("halfs", &["h16"]).rounding(Rounding::Remainder)])
        .unwrap_err()
        .to_string();
    assert!(e.contains("'h16' is f16") && e.contains("set by group 'halfs'"), "{e}");
    // The default group's variable, through set_params.
    let mut o = RAdam::new_named(vars.clone(), params(Rounding::Nearest)).unwrap();
    let e = o.set_params(params(Rounding::Remainder)).unwrap_err().to_string();
    assert!(e.contains("'h16' is f16") && e.contains("default group 'default'"), "{e}");
    assert!(e.contains("ParamsRAdam::rounding"), "{e}");
    // A group without its own mode inherits the optimizer's.
    let mut o = RAdam::new_named(vars, params(Rounding::Nearest))
        .unwrap()
        .with_groups(vec![ParamGroup::names("halfs", &["h16"])])
        .unwrap();
    let e = o.set_params(params(Rounding::Remainder)).unwrap_err().to_string();
    assert!(e.contains("inherited by group 'halfs'"), "{e}");
}

/// Changing a variable's mode on a running optimizer (set_params, set_groups) carries its value
/// over: from remainder / Kahan the f32 master is stored under the new mode; from nearest /
/// stochastic a new buffer starts at zero.
#[test]
fn mode_changes_convert_the_master() {
    let dev = Device::Cpu;
    let p = |r| ParamsRAdam { lr: 1e-3, rounding: r, ..Default::default() };
    // 100 steps of gradient 1 on a bf16 1.0 under `r`: the master and the optimizer.
    let run = |dtype: DType, r: Rounding| {
        let (v, mut o) = one(&Tensor::ones(4, dtype, &dev).unwrap(), p(r)).unwrap();
        let g = Tensor::ones(4, dtype, &dev).unwrap();
        for _ in 0..100 {
            o.step(&grads_of(&v, &g)).unwrap();
        }
        (v, o)
    };
    let f32s = |t: &Tensor| t.to_dtype(DType::F32).unwrap().to_vec1::<f32>().unwrap()[0];
    let bf = |x: f32| half::bf16::from_f32(x).to_f32();
    let hf = |x: f32| half::f16::from_f32(x).to_f32();

    // Remainder -> nearest / stochastic: the master rounded to nearest (not the truncated param).
    for to in [Rounding::Nearest, Rounding::Stochastic { seed: 1 }] {
        let (v, mut o) = run(DType::BF16, Rounding::Remainder);
        let m = f32s(&o.master_weights("w").unwrap());
        assert_eq!(m, 0.981_268_7);
        assert_eq!(f32s(v.as_tensor()), 0.980_468_75);
        o.set_params(p(to)).unwrap();
        assert_eq!(f32s(v.as_tensor()), bf(m), "{to}");
        // A master above the midpoint: nearest rounds up where the param was truncated.
        let (v, mut o) = run(DType::BF16, Rounding::Remainder);
        o.set_master_weights("w", &Tensor::full(0.983f32, 4, &dev).unwrap()).unwrap();
        assert_eq!(f32s(v.as_tensor()), 0.980_468_75);
        o.set_params(p(to)).unwrap();
        assert_eq!(f32s(v.as_tensor()), 0.984_375, "{to}");
        assert_eq!(f32s(&o.master_weights("w").unwrap()), 0.984_375, "{to}");
    }
    // Remainder -> Kahan: p = nearest(master), c = the rest rounded to bf16 (not zero).
    let (v, mut o) = run(DType::BF16, Rounding::Remainder);
    let m = f32s(&o.master_weights("w").unwrap());
    o.set_params(p(Rounding::Kahan)).unwrap();
    assert_eq!(f32s(v.as_tensor()), bf(m));
    assert_eq!(f32s(&o.master_weights("w").unwrap()), bf(m) + bf(m - bf(m)));
    assert_ne!(f32s(&o.master_weights("w").unwrap()), bf(m), "the compensation is kept");
    // Kahan -> remainder: master = p + c, split exactly (param = its upper half).
    let (v, mut o) = run(DType::BF16, Rounding::Kahan);
    let m = f32s(&o.master_weights("w").unwrap());
    assert_ne!(m, f32s(v.as_tensor()), "the compensation is in use");
    o.set_params(p(Rounding::Remainder)).unwrap();
    assert_eq!(f32s(&o.master_weights("w").unwrap()), m);
    assert_eq!(f32s(v.as_tensor()).to_bits(), m.to_bits() & 0xffff_0000);
    // f16 Kahan -> nearest: p = nearest(p + c).
    let (v, mut o) = run(DType::F16, Rounding::Kahan);
    let m = f32s(&o.master_weights("w").unwrap());
    o.set_params(p(Rounding::Nearest)).unwrap();
    assert_eq!(f32s(v.as_tensor()), hf(m));
    // Nearest / stochastic -> remainder / Kahan: the param is the master, the buffer zero.
    for (from, to) in [
        (Rounding::Nearest, Rounding::Remainder),
        (Rounding::Stochastic { seed: 2 }, Rounding::Kahan),
    ] {
        let (v, mut o) = run(DType::BF16, from);
        let before = f32s(v.as_tensor());
        o.set_params(p(to)).unwrap();
        assert_eq!(f32s(v.as_tensor()), before);
        assert_eq!(f32s(&o.master_weights("w").unwrap()), before, "{from} -> {to}");
    }
    // Through set_groups: a group switching the variable from remainder to Kahan.
    let (v, mut o) = run(DType::BF16, Rounding::Remainder);
    let m = f32s(&o.master_weights("w").unwrap());
    o.set_groups(vec![ParamGroup::names("k", &["w"]).rounding(Rounding::Kahan)]).unwrap();
    assert_eq!(f32s(v.as_tensor()), bf(m));
    assert_eq!(f32s(&o.master_weights("w").unwrap()), bf(m) + bf(m - bf(m)));
}

/// A damaged file's rounding buffer: the error says what is wrong (record missing, record
/// saying a mode without a buffer, wrong length).
#[test]
fn damaged_rounding_records_are_named() {
    let dev = Device::Cpu;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s");
    let init = hash_tensor(1000, 3, 0, DType::BF16, 1.0, 0.0, &dev).unwrap();
    let (v, mut o) = one(&init, params(Rounding::Remainder)).unwrap();
    hashed_steps(&mut o, &v, 1, 3);
    o.save_state(&path).unwrap();
    let good = candle_core::safetensors::load(&path, &dev).unwrap();
    let load_with = |f: &dyn Fn(&mut std::collections::HashMap<String, Tensor>)| {
        let mut file = good.clone();
        f(&mut file);
        let bad = dir.path().join("bad");
        candle_core::safetensors::save(&file, &bad).unwrap();
        let (_, mut o) = one(&init, params(Rounding::Remainder)).unwrap();
        o.load_state(&bad).unwrap_err().to_string()
    };
    let e = load_with(&|f| {
        f.remove("radam.prec.w");
    });
    assert!(e.contains("no rounding record 'radam.prec.w'"), "{e}");
    let e = load_with(&|f| {
        let mut r = f["radam.prec.w"].to_vec1::<i64>().unwrap();
        r[0] = 0;
        f.insert("radam.prec.w".into(), Tensor::new(r.as_slice(), &dev).unwrap());
    });
    assert!(e.contains("says nearest, a mode without a buffer"), "{e}");
    let e = load_with(&|f| {
        let a = f["radam.aux.w"].narrow(0, 0, 999).unwrap();
        f.insert("radam.aux.w".into(), a);
    });
    assert!(e.contains("has 999 elements, its variable 1000"), "{e}");
}

#[test]
fn modes_are_checked_against_dtypes_and_parse() {
    let dev = Device::Cpu;
    let h = Tensor::ones(3, DType::F16, &dev).unwrap();
    let e = one(&h, params(Rounding::Remainder)).unwrap_err().to_string();
    assert!(e.contains("'w' is f16") && e.contains("Rounding::Kahan"), "{e}");
    // f32 / f64 ignore the mode (no buffer): any mode is accepted.
    for r in MODES {
        for dt in [DType::F32, DType::F64] {
            let (v, mut o) = one(&Tensor::ones(3, dt, &dev).unwrap(), params(r)).unwrap();
            let (v2, mut o2) =
                one(&Tensor::ones(3, dt, &dev).unwrap(), params(Rounding::Nearest)).unwrap();
            let g = Tensor::new(&[0.5f32, -1.0, 2.0], &dev).unwrap().to_dtype(dt).unwrap();
            o.step(&grads_of(&v, &g)).unwrap();
            o2.step(&grads_of(&v2, &g)).unwrap();
            assert_eq!(bits(v.as_tensor()), bits(v2.as_tensor()), "{r} {dt:?}");
        }
    }
    // A group override is checked too, and changes nothing on error.
    let (_, mut o) = one(&h, params(Rounding::Kahan)).unwrap();
    let e = o.set_groups(vec![ParamGroup::names("g", &["w"]).rounding(Rounding::Remainder)]);
    assert!(e.is_err());
    assert!(o.groups()[0].vars == ["w"] && o.groups().len() == 1);
    let e = o.set_params(params(Rounding::Remainder)).unwrap_err().to_string();
    assert!(e.contains("needs bf16"), "{e}");
    for (s, r) in [
        ("nearest", Rounding::Nearest),
        ("Remainder", Rounding::Remainder),
        ("kahan", Rounding::Kahan),
        ("stochastic", Rounding::Stochastic { seed: 0 }),
        ("stochastic:42", Rounding::Stochastic { seed: 42 }),
    ] {
        assert_eq!(s.parse::<Rounding>().unwrap(), r);
        assert_eq!(r.to_string().parse::<Rounding>().unwrap(), r);
    }
    assert!("fast".parse::<Rounding>().is_err());
    assert_eq!(
        MODES.map(|r| r.bytes_per_step()),
        [22, 26, 26, 22],
        "bytes per param per step: nearest, remainder, kahan, stochastic"
    );
}

/// Per-group modes: the bf16 group `emb` uses the remainder, the rest round to nearest.
#[test]
fn groups_choose_their_mode() {
    let dev = Device::Cpu;
    let (a, b) = (
        Var::from_tensor(&Tensor::ones(8, DType::BF16, &dev).unwrap()).unwrap(),
        Var::from_tensor(&Tensor::ones(8, DType::BF16, &dev).unwrap()).unwrap(),
    );
    let mut o = RAdam::new_named(
        vec![("emb".into(), a.clone()), ("fc".into(), b.clone())],
        params(Rounding::Nearest),
    )
    .unwrap()
    .with_groups(vec![ParamGroup::names("e", &["emb"]).rounding(Rounding::Remainder)])
    .unwrap();
    assert_eq!(o.groups()[0].params.rounding, Rounding::Remainder);
    let g = Tensor::ones(8, DType::BF16, &dev).unwrap();
    for _ in 0..100 {
        let mut gs = GradStore::default();
        gs.insert(&a, g.clone());
        gs.insert(&b, g.clone());
        o.step(&gs).unwrap();
    }
    assert_eq!(scalar(b.as_tensor()), 1.0);
    assert_eq!(scalar(&o.master_weights("emb").unwrap()), 0.981_268_7);
}

/// Drift from the f32 trajectory (run with the same bf16-rounded gradients), measured for the
/// docs: after `steps` steps, the RMS over the elements of `param - f32` and of
/// `master_weights - f32`, relative to the RMS of the f32 values.
fn drift(r: Rounding, dtype: DType, n: usize, steps: u64, constant: bool) -> (f64, f64) {
    let dev = Device::Cpu;
    let init = if constant {
        Tensor::ones(n, DType::F32, &dev).unwrap()
    } else {
        hash_tensor(n, 4, 0, DType::F32, 1.0, 0.0, &dev).unwrap()
    };
    let (v32, mut o32) = one(&init, ParamsRAdam::default()).unwrap();
    let (vh, mut oh) = one(&init.to_dtype(dtype).unwrap(), params(r)).unwrap();
    oh.set_master_weights("w", &init).unwrap();
    for t in 1..=steps {
        let g = if constant {
            Tensor::ones(n, dtype, &dev).unwrap()
        } else {
            hash_tensor(n, 4, t, DType::F32, 1.0, 0.05, &dev).unwrap().to_dtype(dtype).unwrap()
        };
        o32.step(&grads_of(&v32, &g.to_dtype(DType::F32).unwrap())).unwrap();
        oh.step(&grads_of(&vh, &g)).unwrap();
    }
    let f = |t: &Tensor| t.to_dtype(DType::F64).unwrap().to_vec1::<f64>().unwrap();
    let want = f(v32.as_tensor());
    let norm = (want.iter().map(|x| x * x).sum::<f64>() / n as f64).sqrt();
    let rms = |x: &[f64]| {
        (x.iter().zip(&want).map(|(a, b)| (a - b) * (a - b)).sum::<f64>() / n as f64).sqrt() / norm
    };
    (rms(&f(vh.as_tensor())), rms(&f(&oh.master_weights("w").unwrap())))
}

/// Kahan against the remainder method (the figures quoted in `precision`'s docs and the README):
/// the remainder's master value has zero drift from f32; Kahan's `p + c` drifts, because the
/// compensation is itself a 16-bit float.
#[test]
fn kahan_loses_to_the_remainder() {
    for (case, constant, n) in
        [("constant gradient", true, 1024), ("hashed gradients", false, 4096)]
    {
        for r in MODES {
            let (p, m) = drift(r, DType::BF16, n, 1000, constant);
            println!("bf16 {case:17} {:14} 1000 steps: relative RMS drift of param {p:.3e}, of master {m:.3e}", r.to_string());
            match r {
                Rounding::Remainder => assert_eq!(m, 0.0, "{case}: the remainder is exact"),
                Rounding::Kahan => assert!(m > 0.0, "{case}: Kahan is approximate"),
                _ => {}
            }
        }
        for r in [Rounding::Nearest, Rounding::Kahan, Rounding::Stochastic { seed: 7 }] {
            let (p, m) = drift(r, DType::F16, n, 1000, constant);
            println!("f16  {case:17} {:14} 1000 steps: relative RMS drift of param {p:.3e}, of master {m:.3e}", r.to_string());
        }
    }
}

/// `Rounding` plugs into a clap option as the README says (`FromStr`).
#[test]
fn rounding_is_a_clap_value() {
    use clap::Parser;
    #[derive(Parser)]
    struct Cli {
        #[arg(long, default_value = "nearest", value_parser = clap::value_parser!(Rounding))]
        rounding: Rounding,
    }
    let cli = Cli::try_parse_from(["x", "--rounding", "stochastic:3"]).unwrap();
    assert_eq!(cli.rounding, Rounding::Stochastic { seed: 3 });
    assert_eq!(Cli::try_parse_from(["x"]).unwrap().rounding, Rounding::Nearest);
    assert!(Cli::try_parse_from(["x", "--rounding", "truncate"]).is_err());
}

/// Bytes of optimizer state per parameter with both features: the rounding buffer (2 bytes for
/// `Remainder` / `Kahan` on a half parameter, none on f32) on top of full (8) or 8-bit (2.03125)
/// moments. A bf16 parameter under `Remainder` with 8-bit state: 2 (param) + 2 + 2.03125.
#[test]
fn state_bytes_count_the_rounding_buffer_with_both_formats() {
    let dev = Device::Cpu;
    let n = 4 * 4096;
    let cases = [
        (DType::BF16, Rounding::Nearest, 8.0, 2.03125),
        (DType::BF16, Rounding::Remainder, 10.0, 4.03125),
        (DType::BF16, Rounding::Kahan, 10.0, 4.03125),
        (DType::F16, Rounding::Kahan, 10.0, 4.03125),
        (DType::BF16, Rounding::Stochastic { seed: 1 }, 8.0, 2.03125),
        (DType::F32, Rounding::Kahan, 8.0, 2.03125), // f32 ignores the mode: no buffer
    ];
    for (dtype, r, full, eight) in cases {
        let (_, o) = one(&Tensor::zeros(n, dtype, &dev).unwrap(), params(r)).unwrap();
        assert_eq!(o.state_bytes_per_param(), full, "{dtype:?} {r}: full state");
        let o = o.with_state_format(StateFormat::blockwise8()).unwrap();
        assert_eq!(o.state_bytes_per_param(), eight, "{dtype:?} {r}: 8-bit state");
        assert_eq!(o.var_state("w"), Some(((eight * n as f64) as usize, true)));
    }
}
