//! The per-step scalars of the update rule, computed once per step on the host in `f64` and
//! shared by the CPU loop and the CUDA kernels, which never see `t`.
//!
//! Every element then follows the same five lines (see [`crate`] docs for the derivation):
//!
//! ```text
//! g = grad * grad_mult + l2 * p              // clip coef / loss scale; L2 weight decay
//! m = m + (1 - beta1) * (g - m)              // first moment (torch's lerp form)
//! v = beta2 * v + (1 - beta2) * g * g        // second moment
//! Adaptive: d = sqrt(v) + eps
//!           p = decay * p - (d == 0 ? 0 : step_size * m / d)
//! Sgd:      p = decay * p - step_size * m
//! Frozen:   p unchanged
//! ```
//!
//! The `d == 0` select (branch-free: a vector blend on CPU) makes a zero first and second moment
//! give a zero step whatever `eps` and `lr` are, where torch computes `0 / 0 = NaN` with
//! `eps = 0` (for any `lr`, 0 included). `d == 0` with `m != 0` only happens when `g * g`
//! underflows to 0 with `eps = 0`; the step is then 0 too, never an infinity. The SGD branch has
//! no division (`step_size * m` is 0 for `m = 0`: `step_size = lr / (1 - beta1^t)` is finite
//! since `beta1 < 1`), and f16 / bf16 parameters go through the same f32 loop (CPU) or
//! `radam_elem` (CUDA), so the select covers them.
//!
//! `t` is per variable (torch's `state['step']`): it counts the steps on which that variable had a
//! gradient, so one step may use several scalar sets (`ScalarSets`: one per distinct (parameter
//! group, `t`)).
//!
//! `grad_mult` is the per-step gradient multiplier shared by all variables: the global-norm
//! clipping coefficient divided by the loss scale ([`crate::clip`]), 1 without clipping and
//! scaling (a multiplication by 1 is exact, so the update is then bit-identical to one without
//! it). It multiplies the gradient before weight decay, as `clip_grad_norm_` / `unscale_` on
//! the `.grad` tensors before `optimizer.step()` do in torch.

use crate::params::ParamsRAdam;

/// How the parameters move on one step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Update {
    /// The rectified (or, with `rectify = false`, plain Adam) adaptive step.
    Adaptive = 0,
    /// SGD with momentum on the bias-corrected first moment (`rho_t <= 5`, `degenerate_to_sgd`).
    Sgd = 1,
    /// No parameter change (`rho_t <= 5` without `degenerate_to_sgd`, or a `v_only_steps` step).
    Frozen = 2,
}

/// Everything that depends only on the step number `t` and the hyper-parameters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepScalars {
    /// The step being taken, 1-based.
    pub t: u64,
    /// Length of the approximated simple moving average, `rho_t`.
    pub rho_t: f64,
    /// Its limit `rho_inf = 2 / (1 - beta2) - 1`.
    pub rho_inf: f64,
    /// Variance rectification term `r_t` (1 when not rectifying, NaN when `rho_t <= 5`).
    pub r_t: f64,
    /// Which branch the parameters take.
    pub update: Update,
    /// Effective first-moment decay: `beta1`, or 1 (moment frozen) during `v_only_steps`.
    pub beta1: f64,
    /// Second-moment decay.
    pub beta2: f64,
    /// `1 - beta1` (the effective one), computed in f64.
    pub one_minus_beta1: f64,
    /// `1 - beta2`, computed in f64.
    pub one_minus_beta2: f64,
    /// Multiplier of `m` in the parameter update (includes `lr`, the bias corrections and `r_t`).
    pub step_size: f64,
    /// Added to `sqrt(v)`: `eps` for RAdam, `eps * sqrt(1 - beta2^t)` for plain Adam.
    pub eps: f64,
    /// L2 coefficient added to the gradient (`weight_decay`, or 0 when decoupled).
    pub l2: f64,
    /// Parameter multiplier before the update: `1 - lr * weight_decay` when decoupled, else 1.
    pub decay: f64,
    /// Gradient multiplier of this step: clipping coefficient / loss scale ([`crate::clip`]);
    /// 1 from [`StepScalars::new`], set by the optimizer for the step being taken.
    pub grad_mult: f64,
}

/// The distinct scalar sets of one step: one [`StepScalars`] per distinct (group, per-variable
/// step `t`) among the variables being updated, computed once and shared by the CPU loop and the
/// CUDA launch (whose table entries hold the index of their set). With one group and variables
/// that all had gradients on the same steps this is a single set, as before per-variable steps.
#[derive(Debug, Default)]
pub(crate) struct ScalarSets {
    /// The sets, in order of first use.
    pub(crate) sets: Vec<StepScalars>,
    index: std::collections::HashMap<(usize, u64), u32>,
}

impl ScalarSets {
    /// The index of the set for step `t` of group `group` (hyper-parameters `p`), computing it on
    /// first use.
    pub(crate) fn index(&mut self, group: usize, p: &ParamsRAdam, t: u64) -> u32 {
        let sets = &mut self.sets;
        *self.index.entry((group, t)).or_insert_with(|| {
            sets.push(StepScalars::new(p, t));
            (sets.len() - 1) as u32
        })
    }
}

/// `rho_t` below or at this value means the variance of the adaptive rate is intractable
/// (`> 5` as in torch; the original code uses `>= 5`, which differs only if `rho_t` is exactly 5).
pub const RHO_THRESHOLD: f64 = 5.0;

impl StepScalars {
    /// The scalars for step `t` (1-based) under `p`.
    pub fn new(p: &ParamsRAdam, t: u64) -> Self {
        debug_assert!(t >= 1);
        let bc2 = one_minus_beta2_pow(p.beta2, t);
        let rho_inf = rho_inf(p.beta2);
        let rho_t = rho_t(p.beta2, t);

        // During the v-only phase the first moment is frozen (beta1 = 1) and its bias correction
        // afterwards counts only the steps that updated it.
        let v_only = t <= p.v_only_steps;
        let beta1 = if v_only { 1.0 } else { p.beta1 };
        let t_m = t.saturating_sub(p.v_only_steps).max(1) as f64;
        let bc1 = 1.0 - p.beta1.powf(t_m);

        let (update, r_t, step_size, eps) = if v_only {
            (Update::Frozen, f64::NAN, 0.0, p.eps)
        } else if !p.rectify {
            // torch Adam: lr / bc1 * m / (sqrt(v) / sqrt(bc2) + eps), rewritten so that eps is
            // added to the uncorrected sqrt(v) like the rectified branch.
            (Update::Adaptive, 1.0, p.lr * bc2.sqrt() / bc1, p.eps * bc2.sqrt())
        } else if rho_t > RHO_THRESHOLD {
            let r_t = rectification(rho_t, rho_inf);
            (Update::Adaptive, r_t, p.lr * r_t * bc2.sqrt() / bc1, p.eps)
        } else if p.degenerate_to_sgd {
            (Update::Sgd, f64::NAN, p.lr / bc1, p.eps)
        } else {
            (Update::Frozen, f64::NAN, 0.0, p.eps)
        };

        let decoupled = p.decoupled_weight_decay && p.weight_decay != 0.0;
        let decay =
            if decoupled && update != Update::Frozen { 1.0 - p.lr * p.weight_decay } else { 1.0 };
        let l2 = if p.decoupled_weight_decay { 0.0 } else { p.weight_decay };

        Self {
            t,
            rho_t,
            rho_inf,
            r_t,
            update,
            beta1,
            beta2: p.beta2,
            one_minus_beta1: 1.0 - beta1,
            one_minus_beta2: 1.0 - p.beta2,
            step_size,
            eps,
            l2,
            decay,
            grad_mult: 1.0,
        }
    }
}

// Numerically stable forms of the step-dependent scalars. torch evaluates
// `rho_inf - 2 t beta2^t / (1 - beta2^t)` directly: both terms are about 2 / (1 - beta2) while their
// difference is about t, and `1 - beta2^t` itself cancels, so as beta2 -> 1 the result loses every
// digit (beta2 = 1 - 1e-9 gives rho_4 = 7 instead of 3.99999999750, and the rectified branch is taken
// at step 4). Below, with ell = -ln(beta2), x = t ell and d = 1 - beta2 (exact for beta2 >= 1/2):
//
//   rho_t = rho_inf - 2 t / (e^x - 1)                                     (torch's formula)
//         = t + g(d) + 2 t (h(x) - 1/2)
//   g(d)  = rho_inf - 2 / ell = 2 sum_{n>=2} |G_n| d^(n-1)   (G_n: Gregory coefficients, all > 0)
//   h(x)  = 1/x - 1/(e^x - 1) = 1/2 - x/12 + x^3/720 - ... = 1/2 + sum_k B_2k x^(2k-1) / (2k)!
//
// The second form has no cancellation for x < 1/2 (series for g and h where they would cancel);
// for x >= 1/2 the first form cancels by at most a factor 4.4, its two terms being computed
// to a few ulp (`expm1`, and `rho_inf - 5 = (6 beta2 - 4) / (1 - beta2)` with one fused
// multiply-add, exact near beta2 = 2/3). Both give the margin `rho_t - 5` directly, so the branch
// is decided on a value whose error is a few ulp of the margin's own terms. Checked against exact
// rational arithmetic in tests/rho.rs (generator tests/golden/gen_rho.py).

/// Gregory coefficients `2 |G_n|`, n = 2..19: `g(d) = d * sum_k GREGORY[k] d^k`.
const GREGORY: [f64; 18] = [
    1.0 / 6.0,
    1.0 / 12.0,
    19.0 / 360.0,
    3.0 / 80.0,
    863.0 / 30240.0,
    275.0 / 12096.0,
    33953.0 / 1814400.0,
    8183.0 / 518400.0,
    3250433.0 / 239500800.0,
    4671.0 / 394240.0,
    13695779093.0 / 1307674368000.0,
    2224234463.0 / 237758976000.0,
    132282840127.0 / 15692092416000.0,
    2639651053.0 / 344881152000.0,
    111956703448001.0 / 16005934264320000.0,
    50188465.0 / 7806582784.0,
    2334028946344463.0 / 393007247474688000.0,
    301124035185049.0 / 54642718900224000.0,
];

/// `B_2k / (2k)!`, k = 1..9: `h(x) - 1/2 = x * sum_k BERNOULLI[k] x^(2k)`.
const BERNOULLI: [f64; 9] = [
    -1.0 / 12.0,
    1.0 / 720.0,
    -1.0 / 30240.0,
    1.0 / 1209600.0,
    -1.0 / 47900160.0,
    691.0 / 1307674368000.0,
    -1.0 / 74724249600.0,
    3617.0 / 10670622842880000.0,
    -43867.0 / 5109094217170944000.0,
];

/// `sum_k c[k] y^k` (Horner).
fn poly(c: &[f64], y: f64) -> f64 {
    c.iter().rev().fold(0.0, |acc, &ck| acc.mul_add(y, ck))
}

/// `rho_inf = 2 / (1 - beta2) - 1`, the limit of `rho_t` (RAdam, Liu et al. 2019, eq. 5; torch's
/// `rho_inf`), evaluated as `(1 + beta2) / (1 - beta2)`: within 2 ulp for every `beta2` in [0, 1).
pub fn rho_inf(beta2: f64) -> f64 {
    (1.0 + beta2) / (1.0 - beta2)
}

/// `1 - beta2^t`, Adam's second bias correction (torch's `bias_correction2`), as
/// `-expm1(-t ln(1 / beta2))`: within a few ulp for every `beta2` in [0, 1) and `t >= 1` (torch's
/// `1 - beta2 ** t` keeps only `-log2(1 - beta2^t)` of its 53 bits).
pub fn one_minus_beta2_pow(beta2: f64, t: u64) -> f64 {
    -(-(t as f64) * -beta2.ln()).exp_m1()
}

/// `rho_t - 5` for step `t >= 1` (see the comment above `GREGORY`).
fn rho_margin(beta2: f64, t: u64) -> f64 {
    let tf = t as f64;
    let ell = -beta2.ln(); // +inf for beta2 = 0
    let x = tf * ell;
    if x < 0.5 {
        let d = 1.0 - beta2; // beta2 > e^-0.5 here: exact
        let g = if d < 0.1 { d * poly(&GREGORY, d) } else { rho_inf(beta2) - 2.0 / ell };
        let h_minus_half = x * poly(&BERNOULLI, x * x);
        (tf - RHO_THRESHOLD) + (g + 2.0 * tf * h_minus_half)
    } else {
        let rho_inf_minus_threshold =
            beta2.mul_add(1.0 + RHO_THRESHOLD, 1.0 - RHO_THRESHOLD) / (1.0 - beta2);
        rho_inf_minus_threshold - 2.0 * tf / x.exp_m1()
    }
}

/// `rho_t = rho_inf - 2 t beta2^t / (1 - beta2^t)`, the length of the approximated simple moving
/// average at step `t >= 1` (RAdam, eq. 6 and Algorithm 2; torch's `rho_t`), for `beta2` in
/// [0, 1). Within about 1e-14 relative of the exact value (torch's evaluation loses every digit as
/// `beta2 -> 1`), and rounded away from [`RHO_THRESHOLD`] when it would land on it, so that
/// `rho_t(beta2, t) > RHO_THRESHOLD` is the exact branch.
pub fn rho_t(beta2: f64, t: u64) -> f64 {
    let margin = rho_margin(beta2, t);
    let rho = RHO_THRESHOLD + margin;
    if margin > 0.0 && rho == RHO_THRESHOLD {
        rho.next_up()
    } else {
        rho
    }
}

/// The variance rectification term
/// `r_t = sqrt((rho_t - 4)(rho_t - 2) rho_inf / ((rho_inf - 4)(rho_inf - 2) rho_t))`
/// (RAdam, eq. 7 / Algorithm 2; torch's `rect`), for `rho_inf >= rho_t > 5`. Evaluated as a product
/// of three ratios, which neither overflows nor cancels: a few ulp from accurate inputs.
pub fn rectification(rho_t: f64, rho_inf: f64) -> f64 {
    ((rho_t - 4.0) / rho_t * ((rho_t - 2.0) / (rho_inf - 2.0)) * (rho_inf / (rho_inf - 4.0))).sqrt()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn branch_switches_at_step_6_for_default_beta2() {
        let p = ParamsRAdam::default();
        for t in 1..=5 {
            let s = StepScalars::new(&p, t);
            assert_eq!(s.update, Update::Sgd, "t = {t}, rho_t = {}", s.rho_t);
        }
        let s6 = StepScalars::new(&p, 6);
        assert_eq!(s6.update, Update::Adaptive);
        assert!(s6.rho_t > 5.0 && s6.rho_t < 6.0, "{}", s6.rho_t);
        // r_t rises towards 1.
        let late = StepScalars::new(&p, 100_000);
        assert!((late.r_t - 1.0).abs() < 1e-6);
        assert!((late.rho_t - late.rho_inf).abs() < 1e-6);
    }

    #[test]
    fn frozen_without_degenerate_and_decay_skipped() {
        let p = ParamsRAdam {
            degenerate_to_sgd: false,
            weight_decay: 0.1,
            decoupled_weight_decay: true,
            ..Default::default()
        };
        let s = StepScalars::new(&p, 3);
        assert_eq!((s.update, s.decay, s.l2), (Update::Frozen, 1.0, 0.0));
        let s = StepScalars::new(&p, 7);
        assert_eq!(s.update, Update::Adaptive);
        assert!((s.decay - (1.0 - 1e-4)).abs() < 1e-15);
    }

    #[test]
    fn v_only_phase_freezes_first_moment() {
        let p = ParamsRAdam { rectify: false, v_only_steps: 3, ..Default::default() };
        let s = StepScalars::new(&p, 3);
        assert_eq!((s.update, s.beta1, s.one_minus_beta1), (Update::Frozen, 1.0, 0.0));
        let s = StepScalars::new(&p, 4);
        assert_eq!(s.update, Update::Adaptive);
        // First update of m: bc1 = 1 - beta1.
        let bc2 = 1.0 - 0.999f64.powi(4);
        assert!((s.step_size - 1e-3 * bc2.sqrt() / 0.1).abs() < 1e-15);
    }

    #[test]
    fn small_beta2_never_rectifies() {
        let p = ParamsRAdam { beta2: 0.5, ..Default::default() };
        for t in [1, 10, 1000] {
            assert_eq!(StepScalars::new(&p, t).update, Update::Sgd);
        }
    }
}
