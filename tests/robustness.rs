//! Property-based robustness (proptest): `load_state` on mutated state files (truncations, bit
//! flips, edited headers, tensors renamed, reshaped, retyped, records edited) and `step` on random
//! gradient sets (missing, extra, wrong shape or dtype, NaN / inf at random places). Never a
//! panic; every call either succeeds correctly or returns an error and leaves params, moments and
//! every step count bit-identical. The positional file has interchangeable variables (identical,
//! never trained), and the optimizer that loads it keeps the file's values, so a positional load
//! gets past fingerprint matching to the checks behind it.

mod common;

use std::collections::HashMap;

use candle_core::{backprop::GradStore, DType, Device, Tensor, Var};
use candle_nn::Optimizer;
use candle_radam::{ParamGroup, ParamsRAdam, RAdam};
use common::{bits, hash_tensor};
use proptest::prelude::*;

const DEV: Device = Device::Cpu;
const SHAPES: [(&[usize], DType); 4] =
    [(&[33], DType::F32), (&[5], DType::F16), (&[2, 3], DType::F64), (&[4, 4], DType::BF16)];

/// Number of extra variables, identical (ones, like frozen norm scales) and never given a
/// gradient: interchangeable for a positional optimizer, whose load then takes the path that
/// compares their saved moments.
const TWINS: usize = 2;

/// The `SHAPES` variables (trained), then `TWINS` identical ones (never trained).
fn vars() -> Vec<Var> {
    let trained = SHAPES.iter().enumerate().map(|(i, (shape, dt))| {
        let n = shape.iter().product();
        let t = hash_tensor(n, i as u64 + 1, 0, *dt, 1.0, 0.0, &DEV).unwrap();
        Var::from_tensor(&t.reshape(*shape).unwrap()).unwrap()
    });
    let twins =
        (0..TWINS).map(|_| Var::from_tensor(&Tensor::ones(8, DType::F32, &DEV).unwrap()).unwrap());
    trained.chain(twins).collect()
}

fn params() -> ParamsRAdam {
    ParamsRAdam { lr: 0.01, weight_decay: 0.1, ..Default::default() }
}

fn optimizer(vars: &[Var], positional: bool) -> RAdam {
    let opt = if positional {
        RAdam::new(vars.to_vec(), params()).unwrap()
    } else {
        let named = vars.iter().enumerate().map(|(i, v)| (format!("v{i}"), v.clone())).collect();
        RAdam::new_named(named, params()).unwrap()
    };
    let names: Vec<String> = opt.vars().map(|(n, _)| n.to_string()).collect();
    opt.with_groups(vec![ParamGroup::names("g", &names[..1]).lr_scale(0.5)]).unwrap()
}

fn grad_for(v: &Var, seed: u64, t: u64) -> Tensor {
    hash_tensor(v.elem_count(), seed, t, v.dtype(), 1.0, 0.25, &DEV)
        .unwrap()
        .reshape(v.shape())
        .unwrap()
}

/// Params, every saved tensor (moments, records, groups, counters) and the step counts.
type Snapshot = (Vec<Vec<u64>>, Vec<(String, Vec<u64>)>, u64, u64, Vec<Option<u64>>);

fn snapshot(opt: &RAdam, vars: &[Var]) -> Snapshot {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.safetensors");
    opt.save_state(&path).unwrap();
    let state = candle_core::safetensors::load(&path, &DEV).unwrap();
    let mut saved: Vec<(String, Vec<u64>)> =
        state.iter().map(|(k, t)| (k.clone(), bits(t))).collect();
    saved.sort();
    let names: Vec<String> = opt.vars().map(|(n, _)| n.to_string()).collect();
    (
        vars.iter().map(|v| bits(v.as_tensor())).collect(),
        saved,
        opt.step_count(),
        opt.skipped_steps(),
        names.iter().map(|n| opt.var_step_count(n)).collect(),
    )
}

/// A trained optimizer (variables with different step counts) and its state file's bytes.
fn trained(positional: bool) -> (Vec<Var>, RAdam, Vec<u8>) {
    let vars = vars();
    let mut opt = optimizer(&vars, positional);
    for t in 1..=7 {
        let mut g = GradStore::default();
        for (i, v) in vars.iter().enumerate().take(SHAPES.len()) {
            if !(t + i as u64).is_multiple_of(3) {
                g.insert(v, grad_for(v, 10 + i as u64, t));
            }
        }
        opt.step(&g).unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.safetensors");
    opt.save_state(&path).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    (vars, opt, bytes)
}

/// Confusing names a tensor is renamed to: unknown variables, and (for a positional optimizer)
/// the moments and record of the interchangeable twins `param.4` and `param.5`.
const RENAMES: [&str; 10] = [
    "exp_avg.v9",
    "radam.var.param.7",
    "radam.group.9.g",
    "exp_avg_sq.zz",
    "radam.step",
    "x",
    "exp_avg_sq.param.5",
    "exp_avg.param.4",
    "radam.var.param.5",
    "exp_avg_sq.v5",
];

#[derive(Debug, Clone)]
enum Mutation {
    Truncate(f64),
    BitFlip(f64, u8),
    /// Replace one byte of the JSON header with a printable character.
    HeaderByte(f64, u8),
    /// Rename tensor (index) to one of `RENAMES`.
    Rename(usize, usize),
    /// Reshape tensor (index) to another shape.
    Reshape(usize, usize),
    /// Convert tensor (index) to another dtype.
    Retype(usize, usize),
    /// Drop tensor (index).
    Drop(usize),
    /// Add a scaled copy of an i64 record with one value changed.
    EditRecord(usize, usize, i64),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (0.0..1.0f64).prop_map(Mutation::Truncate),
        (0.0..1.0f64, 0..8u8).prop_map(|(p, b)| Mutation::BitFlip(p, b)),
        (0.0..1.0f64, 32..127u8).prop_map(|(p, c)| Mutation::HeaderByte(p, c)),
        (0..64usize, 0..RENAMES.len()).prop_map(|(i, n)| Mutation::Rename(i, n)),
        (0..64usize, 0..4usize).prop_map(|(i, s)| Mutation::Reshape(i, s)),
        (0..64usize, 0..5usize).prop_map(|(i, d)| Mutation::Retype(i, d)),
        (0..64usize).prop_map(Mutation::Drop),
        (
            0..64usize,
            0..4usize,
            prop_oneof![Just(-1i64), Just(0), Just(1), Just(3), Just(i64::MAX), any::<i64>()]
        )
            .prop_map(|(i, w, x)| Mutation::EditRecord(i, w, x)),
    ]
}

fn mutate(bytes: &[u8], m: &Mutation) -> Vec<u8> {
    let at = |p: f64, len: usize| ((p * len as f64) as usize).min(len.saturating_sub(1));
    let header_len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    match m {
        Mutation::Truncate(p) => bytes[..at(*p, bytes.len())].to_vec(),
        Mutation::BitFlip(p, b) => {
            let mut out = bytes.to_vec();
            let i = at(*p, out.len());
            out[i] ^= 1 << b;
            out
        }
        Mutation::HeaderByte(p, c) => {
            let mut out = bytes.to_vec();
            out[8 + at(*p, header_len)] = *c;
            out
        }
        _ => {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("m.safetensors");
            std::fs::write(&path, bytes).unwrap();
            let mut t: HashMap<String, Tensor> =
                candle_core::safetensors::load(&path, &DEV).unwrap();
            let mut keys: Vec<String> = t.keys().cloned().collect();
            keys.sort();
            let key = |i: usize| keys[i % keys.len()].clone();
            match m {
                Mutation::Rename(i, n) => {
                    let x = t.remove(&key(*i)).unwrap();
                    t.insert(RENAMES[*n].to_string(), x);
                }
                Mutation::Reshape(i, s) => {
                    let k = key(*i);
                    let x = &t[&k];
                    let n = x.elem_count();
                    let y = match s {
                        0 => x.reshape((1, n)).unwrap(),
                        1 => x.flatten_all().unwrap().narrow(0, 0, n.saturating_sub(1)).unwrap(),
                        2 => Tensor::cat(&[x.flatten_all().unwrap(), x.flatten_all().unwrap()], 0)
                            .unwrap(),
                        _ => x
                            .flatten_all()
                            .unwrap()
                            .reshape(())
                            .unwrap_or_else(|_| x.unsqueeze(0).unwrap()),
                    };
                    t.insert(k, y);
                }
                Mutation::Retype(i, d) => {
                    let k = key(*i);
                    let dt = [DType::F32, DType::F64, DType::F16, DType::I64, DType::U8][*d];
                    let y = t[&k].to_dtype(dt).unwrap();
                    t.insert(k, y);
                }
                Mutation::Drop(i) => {
                    t.remove(&key(*i));
                }
                Mutation::EditRecord(i, w, x) => {
                    let ints: Vec<String> =
                        keys.iter().filter(|k| t[*k].dtype() == DType::I64).cloned().collect();
                    let k = ints[i % ints.len()].clone();
                    let mut v = t[&k].to_vec1::<i64>().unwrap();
                    let j = w % v.len();
                    v[j] = *x;
                    t.insert(k, Tensor::new(v.as_slice(), &DEV).unwrap());
                }
                _ => unreachable!(),
            }
            candle_core::safetensors::save(&t, &path).unwrap();
            std::fs::read(&path).unwrap()
        }
    }
}

/// What a gradient slot holds in a random step.
#[derive(Debug, Clone)]
enum G {
    None,
    Good,
    WrongShape,
    WrongDtype,
    NonFinite(f64, u8),
}

fn g() -> impl Strategy<Value = G> {
    prop_oneof![
        3 => Just(G::Good),
        2 => Just(G::None),
        1 => Just(G::WrongShape),
        1 => Just(G::WrongDtype),
        1 => (0.0..1.0f64, 0..3u8).prop_map(|(p, k)| G::NonFinite(p, k)),
    ]
}

/// A fresh optimizer over `vars` with a state of its own (two steps taken at lr 0, so the values,
/// and with them the fingerprints a positional load matches, stay those of the file).
fn own_state(vars: &[Var], positional: bool) -> RAdam {
    let mut opt = optimizer(vars, positional);
    let values: Vec<Vec<u64>> = vars.iter().map(|v| bits(v.as_tensor())).collect();
    opt.try_set_learning_rate(0.0).unwrap();
    let mut g0 = GradStore::default();
    g0.insert(&vars[1], grad_for(&vars[1], 99, 1));
    opt.step(&g0).unwrap();
    opt.step(&g0).unwrap();
    opt.try_set_learning_rate(params().lr).unwrap();
    assert!(vars.iter().map(|v| bits(v.as_tensor())).eq(values), "lr 0 moved a value");
    opt
}

/// Loads `good` mutated by `m` into a fresh optimizer over `vars` with a state of its own: never a
/// panic; an error leaves it bit-identical, a success leaves the params untouched and what was
/// loaded round-trips exactly.
fn load_fails_cleanly(
    vars: &[Var],
    good: &[u8],
    m: &Mutation,
    positional: bool,
) -> Result<(), TestCaseError> {
    let mut opt = own_state(vars, positional);
    let before = snapshot(&opt, vars);
    let bytes = mutate(good, m);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.safetensors");
    std::fs::write(&path, &bytes).unwrap();
    let loaded = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| opt.load_state(&path)));
    let Ok(loaded) = loaded else {
        return Err(TestCaseError::fail(format!("load_state panicked on {m:?}")));
    };
    match loaded {
        Err(_) => {
            prop_assert!(snapshot(&opt, vars) == before, "a failed load changed the optimizer")
        }
        Ok(_) => {
            // Loaded: params untouched, and what was loaded round-trips exactly.
            let after = snapshot(&opt, vars);
            prop_assert!(after.0 == before.0, "load_state changed the params");
            let p2 = dir.path().join("again.safetensors");
            opt.save_state(&p2).unwrap();
            let mut other = optimizer(vars, positional);
            other.load_state(&p2).unwrap();
            prop_assert!(snapshot(&other, vars) == after);
        }
    }
    Ok(())
}

/// Every single-tensor edit (dropped, renamed to each of `RENAMES`, reshaped, retyped) of every
/// tensor of a state file, positional (with the interchangeable twins) and named: the random
/// search below may miss the one tensor whose loss matters.
#[test]
fn every_single_tensor_edit_fails_cleanly() {
    for positional in [true, false] {
        let (vars, _, good) = trained(positional);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.safetensors");
        std::fs::write(&path, &good).unwrap();
        // Unedited, it loads (by fingerprint when positional, the twins interchangeable).
        let report = own_state(&vars, positional).load_state(&path).unwrap();
        assert!(report.is_clean(), "{report}");
        let keys = candle_core::safetensors::load(&path, &DEV).unwrap().len();
        // Per variable: exp_avg, exp_avg_sq, its record and its rounding record.
        assert_eq!(keys, 4 * (SHAPES.len() + TWINS) + 2 + 2);
        for i in 0..keys {
            let edits = std::iter::once(Mutation::Drop(i))
                .chain((0..RENAMES.len()).map(|n| Mutation::Rename(i, n)))
                .chain((0..4).map(|s| Mutation::Reshape(i, s)))
                .chain((0..5).map(|d| Mutation::Retype(i, d)));
            for m in edits {
                if let Err(e) = load_fails_cleanly(&vars, &good, &m, positional) {
                    panic!("positional {positional}, {m:?}: {e}");
                }
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn load_state_on_mutated_files_never_panics_and_fails_cleanly(
        m in mutation(), positional in any::<bool>()
    ) {
        let (vars, _, good) = trained(positional);
        load_fails_cleanly(&vars, &good, &m, positional)?;
    }

    #[test]
    fn step_on_random_gradient_sets_never_panics_and_fails_cleanly(
        steps in proptest::collection::vec((proptest::collection::vec(g(), 4), any::<bool>()), 1..9)
    ) {
        let vars = vars();
        let mut opt = optimizer(&vars, false);
        // Shadows: each variable alone in an optimizer with its group's parameters, given only
        // the steps on which the big one succeeds. Per-variable steps make them equal.
        let shadow_vars: Vec<Var> = vars.iter().map(|v| Var::from_tensor(v.as_tensor()).unwrap()).collect();
        let mut shadows: Vec<RAdam> = shadow_vars
            .iter()
            .enumerate()
            .map(|(i, v)| {
                let p = ParamsRAdam { lr: if i == 0 { 0.005 } else { 0.01 }, ..params() };
                RAdam::new(vec![v.clone()], p).unwrap()
            })
            .collect();
        let stranger = Var::zeros(3, DType::F32, &DEV).unwrap();
        for (t, (kinds, extra)) in steps.iter().enumerate() {
            let t = t as u64 + 1;
            let mut grads = GradStore::default();
            let mut valid = true;
            let mut good: Vec<Option<Tensor>> = vec![None; 4];
            for (i, (v, k)) in vars.iter().zip(kinds).enumerate() {
                let gr = grad_for(v, 20 + i as u64, t);
                match k {
                    G::None => {}
                    G::Good => {
                        good[i] = Some(gr.clone());
                        grads.insert(v, gr);
                    }
                    G::WrongShape => {
                        valid = false;
                        grads.insert(v, Tensor::zeros(v.elem_count() + 1, v.dtype(), &DEV).unwrap());
                    }
                    G::WrongDtype => {
                        valid = false;
                        let dt = if v.dtype() == DType::F32 { DType::F64 } else { DType::F32 };
                        grads.insert(v, gr.to_dtype(dt).unwrap());
                    }
                    G::NonFinite(p, which) => {
                        valid = false;
                        let mut x = gr.flatten_all().unwrap().to_dtype(DType::F64).unwrap().to_vec1::<f64>().unwrap();
                        let j = ((p * x.len() as f64) as usize).min(x.len() - 1);
                        x[j] = [f64::NAN, f64::INFINITY, f64::NEG_INFINITY][*which as usize];
                        let bad = Tensor::new(x.as_slice(), &DEV).unwrap().to_dtype(v.dtype()).unwrap().reshape(v.shape()).unwrap();
                        grads.insert(v, bad);
                    }
                }
            }
            if *extra {
                grads.insert(&stranger, Tensor::ones(3, DType::F32, &DEV).unwrap()); // ignored
            }
            let before = snapshot(&opt, &vars);
            let r = opt.step(&grads);
            if valid {
                prop_assert!(r.is_ok(), "valid gradients refused: {:?}", r.err().map(|e| e.to_string()));
                for (i, gr) in good.iter().enumerate() {
                    if let Some(gr) = gr {
                        let mut gs = GradStore::default();
                        gs.insert(&shadow_vars[i], gr.clone());
                        shadows[i].step(&gs).unwrap();
                    }
                }
                let after = snapshot(&opt, &vars);
                let any = good.iter().any(Option::is_some);
                prop_assert_eq!(after.2, before.2 + any as u64);
                for i in 0..4 {
                    prop_assert!(bits(vars[i].as_tensor()) == bits(shadow_vars[i].as_tensor()), "var {}", i);
                    prop_assert_eq!(after.4[i], shadows[i].var_step_count("param.0"));
                }
            } else {
                prop_assert!(r.is_err());
                prop_assert!(snapshot(&opt, &vars) == before, "a failed step changed the optimizer");
            }
        }
    }
}
