//! Hyper-parameters of [`crate::RAdam`] and their validation.

use candle_core::{bail, Result};

use crate::precision::Rounding;
use crate::rule::RHO_THRESHOLD;

/// What [`step`](candle_nn::Optimizer::step) does when a gradient holds a NaN or an infinity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum NonFinite {
    /// Return an error naming the first offending variable; no parameter, moment or the step
    /// counter is changed (the default).
    #[default]
    Error,
    /// Skip the whole step silently (parameters, moments and the step counter unchanged) and count
    /// it in [`crate::RAdam::skipped_steps`]. This is what dynamic loss scaling wants.
    Skip,
    /// Do not look: the update runs on whatever the gradient holds, as `torch.optim.RAdam` does.
    /// Saves one read of every gradient per step (and, on CUDA, a device-to-host sync).
    Propagate,
}

/// Hyper-parameters of [`crate::RAdam`].
///
/// The defaults are those of `torch.optim.RAdam`. Use struct update syntax to change a few:
///
/// ```
/// use candle_radam::ParamsRAdam;
/// let p = ParamsRAdam { lr: 3e-4, weight_decay: 0.01, decoupled_weight_decay: true, ..Default::default() };
/// assert!(p.validate().is_ok());
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct ParamsRAdam {
    /// Learning rate (alpha_t in the paper), `>= 0`.
    pub lr: f64,
    /// Decay rate of the first moment, in `[0, 1)`.
    pub beta1: f64,
    /// Decay rate of the second moment, in `[0, 1)`; `rho_inf = 2 / (1 - beta2) - 1`.
    pub beta2: f64,
    /// Added to `sqrt(v_t)` (the *uncorrected* second moment, as torch and the original code do),
    /// `>= 0`.
    pub eps: f64,
    /// Weight decay factor, `>= 0`. L2 (added to the gradient) unless `decoupled_weight_decay`.
    pub weight_decay: f64,
    /// Decoupled weight decay (AdamW style): the parameter is scaled by `1 - lr * weight_decay`.
    pub decoupled_weight_decay: bool,
    /// While `rho_t <= 5` take an SGD-with-momentum step `lr * m_hat` (true, torch's behaviour)
    /// or leave the parameters untouched (false, the original repository's default).
    pub degenerate_to_sgd: bool,
    /// Apply the variance rectification (true). With `false` this is plain Adam / AdamW with
    /// torch's semantics (`eps` added to the bias-corrected `sqrt(v_hat)`), which the examples use
    /// as the paper's baseline.
    pub rectify: bool,
    /// For the first `v_only_steps` steps (of each variable's own step count) only the second
    /// moment is updated: no parameter or first-moment change (the paper's "Adam-2k" ablation,
    /// with 2000 steps). The first-moment bias correction then counts only the steps that updated
    /// it. 0 (the default) disables it.
    pub v_only_steps: u64,
    /// What to do with NaN / infinite gradients.
    pub non_finite: NonFinite,
    /// How the f32 update of an f16 / bf16 parameter is written back ([`Rounding`]: round to
    /// nearest by default; exact remainder, Kahan, stochastic). f32 / f64 parameters ignore it.
    /// Checked against each variable's dtype when the optimizer is built or the groups / params
    /// change ([`Rounding::Remainder`] needs bf16).
    /// Changed on a running optimizer ([`crate::RAdam::set_params`]), a variable's value is
    /// carried over: from remainder / Kahan the f32 master is stored under the new mode; from
    /// nearest / stochastic a new buffer starts at zero.
    pub rounding: Rounding,
}

impl Default for ParamsRAdam {
    fn default() -> Self {
        Self {
            lr: 1e-3,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
            decoupled_weight_decay: false,
            degenerate_to_sgd: true,
            rectify: true,
            v_only_steps: 0,
            non_finite: NonFinite::Error,
            rounding: Rounding::Nearest,
        }
    }
}

impl ParamsRAdam {
    /// Plain Adam (no rectification) with torch's `Adam` defaults for the other fields.
    pub fn adam() -> Self {
        Self { rectify: false, ..Default::default() }
    }

    /// Checks every hyper-parameter; the error names the field and the value.
    pub fn validate(&self) -> Result<()> {
        check_lr(self.lr)?;
        for (name, b) in [("beta1", self.beta1), ("beta2", self.beta2)] {
            if !(0.0..1.0).contains(&b) {
                bail!("RAdam: {name} must be in [0, 1), got {b}");
            }
        }
        for (name, x) in [("eps", self.eps), ("weight_decay", self.weight_decay)] {
            if !(x >= 0.0 && x.is_finite()) {
                bail!("RAdam: {name} must be finite and >= 0, got {x}");
            }
        }
        // rho_t rises with t towards rho_inf = 2 / (1 - beta2) - 1 (paper, eq. 6) without reaching
        // it, so the rectified branch (rho_t > 5) is reachable iff rho_inf > 5, i.e. beta2 > 2/3.
        // Without it and without the SGD fallback no parameter could ever move.
        if self.rectify && !self.degenerate_to_sgd && !rectification_reachable(self.beta2) {
            bail!(
                "RAdam: with beta2 = {} the rectified step is never taken (rho_inf = 2 / (1 - beta2) - 1 \
                 <= {RHO_THRESHOLD}, it needs beta2 > 2/3) and degenerate_to_sgd = false: no parameter \
                 would ever move; raise beta2 or set degenerate_to_sgd = true",
                self.beta2
            );
        }
        Ok(())
    }
}

/// Whether `rho_t > RHO_THRESHOLD` happens for some step `t` under `beta2`: `rho_t` increases
/// strictly towards `rho_inf = 2 / (1 - beta2) - 1`, which exceeds 5 exactly when `beta2 > 2/3`.
/// Written as a comparison of `beta2` so that no `rho` formula is repeated here.
fn rectification_reachable(beta2: f64) -> bool {
    // 2 / (1 - b) - 1 > 5  <=>  1 - b < 1/3  <=>  3b - 2 > 0 (for b in [0, 1)). The fused
    // multiply-add rounds the exact 3b - 2 once, which keeps its sign; `3.0 * b > 2.0` would round
    // 3b to 2 for the smallest double above 2/3 and refuse it.
    beta2.mul_add(3.0, -2.0) > 0.0
}

/// Validates a learning rate (also used by `set_learning_rate`).
pub(crate) fn check_lr(lr: f64) -> Result<()> {
    if !(lr >= 0.0 && lr.is_finite()) {
        bail!("RAdam: lr must be finite and >= 0, got {lr}");
    }
    Ok(())
}
