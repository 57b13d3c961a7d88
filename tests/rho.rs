//! `rho_inf`, `rho_t`, `1 - beta2^t`, `r_t` and the branch against exact rational arithmetic
//! (generator: tests/golden/gen_rho.py, Python `fractions`): every beta2 of a grid from 0 to
//! 1 - 2^-53 (including just above 2/3, where `rho_t` creeps up to 5, and within a few ulp of 1)
//! and 160 seeded random ones (uniform, log-uniform near 1, and up to 1e6 ulp above 2/3), at steps
//! from 1 to 1e9 plus the crossing step of each beta2. 1e-12 relative, exact branch.

use candle_radam::rule::{one_minus_beta2_pow, rectification, rho_inf, rho_t, RHO_THRESHOLD};
use candle_radam::{ParamsRAdam, StepScalars, Update};
use serde::Deserialize;

#[derive(Deserialize)]
struct Case {
    beta2_bits: u64,
    t: u64,
    rho_inf: f64,
    rho_t: f64,
    bc2: f64,
    tractable: bool,
    r_t: Option<f64>,
    torch_tractable: bool,
}

#[derive(Deserialize)]
struct Cases {
    cases: Vec<Case>,
}

fn cases() -> Vec<Case> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/golden/rho.json");
    let cases: Cases = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    cases.cases
}

fn rel(a: f64, b: f64) -> f64 {
    if a == b {
        0.0
    } else {
        ((a - b) / b).abs()
    }
}

/// Worst relative error seen so far and where.
#[derive(Default)]
struct Worst(f64, String);

impl Worst {
    fn see(&mut self, err: f64, what: &str, c: &Case) {
        if err > self.0 || err.is_nan() {
            *self = Worst(
                err,
                format!("{what}: beta2 = {:?}, t = {}", f64::from_bits(c.beta2_bits), c.t),
            );
        }
    }
}

const TOL: f64 = 1e-12;

#[test]
fn step_scalars_match_exact_arithmetic() {
    let cases = cases();
    assert!(cases.len() > 3000);
    let (mut w_rho, mut w_inf, mut w_bc2, mut w_r) =
        (Worst::default(), Worst::default(), Worst::default(), Worst::default());
    let mut torch_wrong = 0;
    for c in &cases {
        // The bits: serde_json's default float parsing may be 1 ulp off Python's repr.
        let beta2 = f64::from_bits(c.beta2_bits);
        let (inf, rho, bc2) = (rho_inf(beta2), rho_t(beta2, c.t), one_minus_beta2_pow(beta2, c.t));
        w_inf.see(rel(inf, c.rho_inf), "rho_inf", c);
        w_rho.see(rel(rho, c.rho_t), "rho_t", c);
        w_bc2.see(rel(bc2, c.bc2), "1 - beta2^t", c);
        assert_eq!(
            rho > RHO_THRESHOLD,
            c.tractable,
            "branch: beta2 = {beta2:?}, t = {}, rho_t = {rho:?}, exact {:?}",
            c.t,
            c.rho_t
        );
        torch_wrong += usize::from(c.torch_tractable != c.tractable);

        // The same numbers through StepScalars (default degenerate_to_sgd, rectify).
        let p = ParamsRAdam { beta2, ..Default::default() };
        let s = StepScalars::new(&p, c.t);
        assert_eq!((s.rho_t, s.rho_inf), (rho, inf));
        match c.r_t {
            Some(r_t) => {
                assert_eq!(s.update, Update::Adaptive, "beta2 = {beta2:?}, t = {}", c.t);
                assert_eq!(s.r_t, rectification(rho, inf));
                w_r.see(rel(s.r_t, r_t), "r_t", c);
            }
            None => assert_eq!(s.update, Update::Sgd, "beta2 = {beta2:?}, t = {}", c.t),
        }
    }
    for w in [&w_inf, &w_rho, &w_bc2, &w_r] {
        println!("worst relative error {:.3e} ({})", w.0, w.1);
        assert!(w.0 <= TOL, "{:e} > {TOL:e} ({})", w.0, w.1);
    }
    // The grid must exercise the fault: cases where torch's evaluation takes the wrong branch.
    println!("{} cases, torch's formula takes the wrong branch in {torch_wrong}", cases.len());
    assert!(torch_wrong >= 100, "{torch_wrong}");
}

/// torch's evaluation, as `StepScalars::new` did before: `1 - beta2^t` and the difference of two
/// terms of size 2 / (1 - beta2) cancel.
fn torch_rho_t(beta2: f64, t: u64) -> f64 {
    let tf = t as f64;
    let beta2_t = beta2.powf(tf);
    (2.0 / (1.0 - beta2) - 1.0) - 2.0 * tf * beta2_t / (1.0 - beta2_t)
}

#[test]
fn torch_formula_takes_the_wrong_branch_where_ours_does_not() {
    // beta2 = 1 - 1e-9, step 4: exact rho_4 = 3.99999999750000000..., below 5 (SGD step);
    // torch's evaluation gives about 7 and takes the rectified branch.
    let beta2 = 0.999999999;
    assert!(torch_rho_t(beta2, 4) > 5.0, "{}", torch_rho_t(beta2, 4));
    assert!((rho_t(beta2, 4) - 3.9999999975).abs() < 1e-14, "{}", rho_t(beta2, 4));
    let p = ParamsRAdam { beta2, ..Default::default() };
    assert_eq!(StepScalars::new(&p, 4).update, Update::Sgd);
    // First rectified step is 6: exact rho_6 = 5.99999999416666..., r_6 = 2.58198886108530...e-5
    // (tests/golden/rho.json); torch's evaluation gives rho_6 = 11 and r_6 = 0.68.
    let s = StepScalars::new(&p, 6);
    assert_eq!(s.update, Update::Adaptive);
    assert!((s.rho_t - 5.999999994166667).abs() < 1e-14, "{}", s.rho_t);
    assert!((s.r_t / 2.5819888610853077e-05 - 1.0).abs() < 1e-12, "{}", s.r_t);

    // beta2 just above 2/3: rho_inf = 5 + 5.3e-15 and rho_94 = 5 + 6.2e-17, which rounds to 5.0
    // in f64; the exact branch is the rectified one (torch's evaluation says otherwise).
    let beta2 = f64::from_bits((2.0f64 / 3.0).to_bits() + 3);
    assert!(rho_t(beta2, 93) <= 5.0 && rho_t(beta2, 94) > 5.0);
    assert!(torch_rho_t(beta2, 94) <= 5.0);

    // The largest beta2 below 1: rho_t = t - O(2^-53) for small t, rho_inf = 2^54 - 1.
    let beta2 = 1.0 - f64::EPSILON / 2.0;
    for t in 1..=5 {
        let r = rho_t(beta2, t);
        assert!(r <= t as f64 && (t as f64 - r) < 1e-14, "t = {t}: {r}");
    }
    assert!(rho_t(beta2, 6) > 5.0);
    assert_eq!(rho_inf(beta2), 2f64.powi(54));
}

#[test]
fn edges_of_the_domain() {
    // beta2 = 0: v = g^2, rho_t = rho_inf = 1, bias correction 1.
    for t in [1, 2, 1000, u64::MAX] {
        assert_eq!((rho_t(0.0, t), rho_inf(0.0), one_minus_beta2_pow(0.0, t)), (1.0, 1.0, 1.0));
    }
    // rho_1 = 1 for every beta2 (one sample of the SMA).
    for beta2 in [1e-300, 0.1, 0.5, 0.9, 0.999, 1.0 - 1e-12, 1.0 - f64::EPSILON / 2.0] {
        assert!((rho_t(beta2, 1) - 1.0).abs() < 1e-15, "{beta2}: {}", rho_t(beta2, 1));
        assert!(rho_t(beta2, u64::MAX).is_finite());
    }
    // Far steps converge to rho_inf and r_t to 1.
    let beta2 = 0.999;
    let (inf, far) = (rho_inf(beta2), rho_t(beta2, 1 << 40));
    assert!((far / inf - 1.0).abs() < 1e-15, "{far} vs {inf}");
    assert!((rectification(far, inf) - 1.0).abs() < 1e-15);
}

/// `validate` refuses `beta2 <= 2/3` without the SGD fallback (the rectified branch is never
/// taken), decided exactly: the smallest double above 2/3 is accepted (`3.0 * beta2` rounds to 2
/// there, which used to refuse it) and its `rho_t` does exceed 5; the double just below is
/// refused and its `rho_t` never does.
#[test]
fn rectification_reachable_at_both_neighbours_of_two_thirds() {
    let below = f64::from_bits(0x3fe5555555555555);
    let above = f64::from_bits(0x3fe5555555555556);
    assert!(below < 2.0 / 3.0 + f64::EPSILON && above > below);
    let strict = |beta2| ParamsRAdam { beta2, degenerate_to_sgd: false, ..Default::default() };

    strict(above).validate().expect("rho_t > 5 is reachable for the double above 2/3");
    let first = (1..10_000u64).find(|&t| rho_t(above, t) > RHO_THRESHOLD);
    assert!(first.is_some_and(|t| t < 1000), "{first:?}");

    let e = strict(below).validate().unwrap_err().to_string();
    assert!(e.contains("the rectified step is never taken"), "{e}");
    assert!(rho_inf(below) <= RHO_THRESHOLD, "{}", rho_inf(below));
    assert!((1..100_000u64).all(|t| rho_t(below, t) <= RHO_THRESHOLD));
}
