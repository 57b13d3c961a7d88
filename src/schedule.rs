//! Learning-rate schedules: pure functions of the step, and a driver that sets any
//! [`candle_nn::Optimizer`]'s learning rate from them.
//!
//! As in optax (and unlike torch's stateful `lr_scheduler`s), a schedule is a function
//! `step -> lr`: a resumed run needs only the saved step count. `step` counts the updates already
//! taken, so the first update uses `lr(0)`: the convention of torch (`scheduler.step()` after
//! `optimizer.step()`), fairseq (`lr_step_update(num_updates)` after each update) and optax.
//! Learning rates are in the optimizer's units (`f64`, the value passed to
//! [`Optimizer::set_learning_rate`]).
//!
//! | schedule | lr(step) | reference |
//! |---|---|---|
//! | [`Constant`] | `lr` | torch `LambdaLR(lambda s: 1)` |
//! | [`Lambda`] | `base_lr * factor(step)` | torch `LambdaLR` |
//! | [`Linear`] | `init + (end - init) * min(step, steps) / steps` | torch `LinearLR`, optax `linear_schedule` |
//! | [`InverseSqrt`] | warmup, then `lr * sqrt(warmup) / sqrt(step)` | fairseq `inverse_sqrt` |
//! | [`Cosine`] | `floor + (init - floor) (1 + cos(pi min(step, steps) / steps)) / 2` | torch `CosineAnnealingLR` |
//! | [`StepDecay`] | `init * gamma^floor(step / step_size)` | torch `StepLR` |
//! | [`MultiStep`] | `init * gamma^(milestones <= step)` | torch `MultiStepLR` |
//! | [`Exponential`] | `init * gamma^step` | torch `ExponentialLR` |
//! | [`OneCycle`] | annealed up from `max_lr / div_factor`, then down | torch `OneCycleLR` |
//! | [`Join`] | `schedules[i](step - boundaries[i-1])` | optax `join_schedules`, torch `SequentialLR` |
//! | [`warmup_then`] | linear warmup to `decay(0)`, then `decay(step - warmup)` | HF `get_*_schedule_with_warmup` |
//!
//! [`Lambda`] makes any closure a schedule (torch `LambdaLR`). Constructors validate their
//! arguments and return a clear error; the fields are private (read them with the accessors), so
//! a schedule cannot hold values its constructor would refuse.
//! The golden values of every schedule against torch's schedulers and fairseq's formula are in
//! `tests/golden/schedules.json` (generator `tests/golden/gen_schedules.py`), checked to 1e-12
//! relative by `tests/schedule.rs`.
//!
//! ```
//! use candle_core::{DType, Device, Module, Tensor};
//! use candle_nn::{Optimizer, VarBuilder, VarMap};
//! use candle_radam::schedule::{warmup_then, Cosine, Schedule, Scheduled};
//! use candle_radam::{ParamsRAdam, RAdam};
//!
//! # fn main() -> candle_core::Result<()> {
//! let dev = Device::Cpu;
//! let varmap = VarMap::new();
//! let model = candle_nn::linear(3, 1, VarBuilder::from_varmap(&varmap, DType::F32, &dev))?;
//! // 10 warmup steps from 0 to 1e-2, then a cosine decay to 1e-4 over 90 steps.
//! let schedule = warmup_then(10, 0.0, Cosine::new(1e-2, 1e-4, 90)?)?;
//! assert_eq!(schedule.lr(0), 0.0);
//! assert!((schedule.lr(10) - 1e-2).abs() < 1e-15);
//!
//! let opt = RAdam::from_varmap(&varmap, ParamsRAdam::default())?;
//! let mut opt = Scheduled::new(opt, schedule); // any candle_nn::Optimizer works here
//! let x = Tensor::randn(0f32, 1., (32, 3), &dev)?;
//! for _ in 0..100 {
//!     let loss = model.forward(&x)?.sqr()?.mean_all()?;
//!     opt.backward_step(&loss)?; // sets lr = schedule.lr(step), steps, advances step
//! }
//! assert_eq!(opt.step_count(), 100);
//! assert_eq!(opt.optimizer().learning_rate(), opt.schedule().lr(99)); // the last step's
//! assert!((opt.next_lr() - 1e-4).abs() < 1e-18); // the floor from step 100 on
//! // Resuming: the step count is all the schedule needs.
//! let opt = Scheduled::resume(opt.into_inner(), Cosine::new(1e-2, 1e-4, 90)?, 100);
//! # let _ = opt;
//! # Ok(()) }
//! ```

use std::f64::consts::PI;
use std::sync::Arc;

use candle_core::{backprop::GradStore, bail, Result, Tensor};
use candle_nn::Optimizer;

/// A learning-rate schedule: the learning rate of the update that follows `step` completed
/// updates (`step = 0` for the first update). Pure: the same `step` always gives the same value.
pub trait Schedule: Send + Sync {
    /// The learning rate for update number `step + 1`.
    fn lr(&self, step: u64) -> f64;
}

impl<S: Schedule + ?Sized> Schedule for Box<S> {
    fn lr(&self, step: u64) -> f64 {
        (**self).lr(step)
    }
}

impl<S: Schedule + ?Sized> Schedule for Arc<S> {
    fn lr(&self, step: u64) -> f64 {
        (**self).lr(step)
    }
}

impl<S: Schedule + ?Sized> Schedule for &S {
    fn lr(&self, step: u64) -> f64 {
        (**self).lr(step)
    }
}

/// Read-only accessors for a schedule's fields: the fields are private so that every value has
/// gone through the validating constructor.
macro_rules! getters {
    ($($field:ident: $ty:ty),*) => {
        $(
            #[doc = concat!("`", stringify!($field), "`, as validated by the constructor.")]
            pub fn $field(&self) -> $ty {
                self.$field
            }
        )*
    };
}

fn check_lr(name: &str, lr: f64) -> Result<()> {
    if !(lr.is_finite() && lr >= 0.0) {
        bail!("schedule: {name} must be finite and >= 0, got {lr}")
    }
    Ok(())
}

fn check_steps(name: &str, steps: u64) -> Result<()> {
    if steps == 0 {
        bail!("schedule: {name} must be >= 1, got 0")
    }
    Ok(())
}

fn check_gamma(gamma: f64) -> Result<()> {
    if !(gamma.is_finite() && gamma > 0.0) {
        bail!("schedule: gamma must be finite and > 0, got {gamma}")
    }
    Ok(())
}

/// `start + (end - start) * frac` (torch `OneCycleLR._annealing_linear`).
fn lerp(start: f64, end: f64, frac: f64) -> f64 {
    (end - start) * frac + start
}

/// `end + (start - end) * (1 + cos(pi * frac)) / 2`: from `start` at `frac = 0` to `end` at
/// `frac = 1` (torch `OneCycleLR._annealing_cos`, and `CosineAnnealingLR`'s closed form).
fn cos_anneal(start: f64, end: f64, frac: f64) -> f64 {
    end + (start - end) / 2.0 * ((PI * frac).cos() + 1.0)
}

/// A constant learning rate.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Constant {
    lr: f64,
}

impl Constant {
    /// Errors unless `lr` is finite and `>= 0`.
    pub fn new(lr: f64) -> Result<Self> {
        check_lr("lr", lr)?;
        Ok(Self { lr })
    }

    /// The learning rate.
    pub fn value(&self) -> f64 {
        self.lr
    }
}

impl Schedule for Constant {
    fn lr(&self, _step: u64) -> f64 {
        self.lr
    }
}

/// `base_lr * factor(step)` for any closure `factor` (torch `LambdaLR(optimizer, lr_lambda)` with
/// `base_lr` the optimizer's initial lr). Not validated: [`apply`] and [`Scheduled`] refuse a
/// learning rate that is not finite and `>= 0` when it comes.
#[derive(Clone, Copy)]
pub struct Lambda<F> {
    pub base_lr: f64,
    pub factor: F,
}

impl<F: Fn(u64) -> f64 + Send + Sync> Lambda<F> {
    pub fn new(base_lr: f64, factor: F) -> Self {
        Self { base_lr, factor }
    }
}

impl<F> std::fmt::Debug for Lambda<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lambda").field("base_lr", &self.base_lr).finish_non_exhaustive()
    }
}

impl<F: Fn(u64) -> f64 + Send + Sync> Schedule for Lambda<F> {
    fn lr(&self, step: u64) -> f64 {
        self.base_lr * (self.factor)(step)
    }
}

/// Linear interpolation from `init` at step 0 to `end` at step `steps`, then `end`:
/// `init + (end - init) * min(step, steps) / steps` (torch `LinearLR` with
/// `base_lr * start_factor = init`, `base_lr * end_factor = end`, `total_iters = steps`; optax
/// `linear_schedule`). A linear warmup (`init < end`) or a linear decay (`init > end`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Linear {
    init: f64,
    end: f64,
    steps: u64,
}

impl Linear {
    /// Errors unless both rates are finite and `>= 0` and `steps >= 1`.
    pub fn new(init: f64, end: f64, steps: u64) -> Result<Self> {
        check_lr("init", init)?;
        check_lr("end", end)?;
        check_steps("steps", steps)?;
        Ok(Self { init, end, steps })
    }

    getters!(init: f64, end: f64, steps: u64);
}

impl Schedule for Linear {
    fn lr(&self, step: u64) -> f64 {
        lerp(self.init, self.end, step.min(self.steps) as f64 / self.steps as f64)
    }
}

/// fairseq's `inverse_sqrt` (`fairseq/optim/lr_scheduler/inverse_square_root_schedule.py`),
/// exactly: with `lr_step = (lr - warmup_init_lr) / warmup_updates` and
/// `decay_factor = lr * sqrt(warmup_updates)`,
///
/// ```text
/// step <  warmup_updates:  warmup_init_lr + step * lr_step
/// step >= warmup_updates:  decay_factor * step^-0.5
/// ```
///
/// `step` is fairseq's `num_updates`. fairseq's `--warmup-init-lr` default (-1) means 0 with a
/// warmup; pass 0 for it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct InverseSqrt {
    lr: f64,
    warmup_updates: u64,
    warmup_init_lr: f64,
}

impl InverseSqrt {
    /// Errors unless both rates are finite and `>= 0` and `warmup_updates >= 1` (with 0, fairseq's
    /// decay factor is 0 and its first step divides by zero).
    pub fn new(lr: f64, warmup_updates: u64, warmup_init_lr: f64) -> Result<Self> {
        check_lr("lr", lr)?;
        check_lr("warmup_init_lr", warmup_init_lr)?;
        check_steps("warmup_updates", warmup_updates)?;
        Ok(Self { lr, warmup_updates, warmup_init_lr })
    }

    /// The peak learning rate (fairseq `--lr`), reached at `warmup_updates`.
    pub fn peak(&self) -> f64 {
        self.lr
    }
    getters!(warmup_updates: u64, warmup_init_lr: f64);
}

impl Schedule for InverseSqrt {
    fn lr(&self, step: u64) -> f64 {
        let warmup = self.warmup_updates as f64;
        if step < self.warmup_updates {
            let lr_step = (self.lr - self.warmup_init_lr) / warmup;
            self.warmup_init_lr + step as f64 * lr_step
        } else {
            self.lr * warmup.powf(0.5) * (step as f64).powf(-0.5)
        }
    }
}

/// Cosine decay from `init` to `floor` over `steps` steps, then `floor`:
/// `floor + (init - floor) * (1 + cos(pi * min(step, steps) / steps)) / 2` (torch
/// `CosineAnnealingLR(T_max = steps, eta_min = floor)`'s closed form, Loshchilov & Hutter 2017
/// without restarts; optax `cosine_decay_schedule` with `alpha = floor / init`). torch's scheduler
/// keeps following the cosine back up after `T_max`; this one stays at `floor`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Cosine {
    init: f64,
    floor: f64,
    steps: u64,
}

impl Cosine {
    /// Errors unless both rates are finite and `>= 0` and `steps >= 1`.
    pub fn new(init: f64, floor: f64, steps: u64) -> Result<Self> {
        check_lr("init", init)?;
        check_lr("floor", floor)?;
        check_steps("steps", steps)?;
        Ok(Self { init, floor, steps })
    }

    getters!(init: f64, floor: f64, steps: u64);
}

impl Schedule for Cosine {
    fn lr(&self, step: u64) -> f64 {
        cos_anneal(self.init, self.floor, step.min(self.steps) as f64 / self.steps as f64)
    }
}

/// `init * gamma^floor(step / step_size)` (torch `StepLR`).
///
/// Built only by [`StepDecay::new`], which refuses `step_size = 0`; the fields are private:
///
/// ```compile_fail
/// use candle_radam::schedule::StepDecay;
/// let s = StepDecay { init: 0.1, step_size: 0, gamma: 0.5 }; // error: private fields
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepDecay {
    init: f64,
    step_size: u64,
    gamma: f64,
}

impl StepDecay {
    /// Errors unless `init` is finite and `>= 0`, `step_size >= 1` and `gamma` finite and `> 0`.
    pub fn new(init: f64, step_size: u64, gamma: f64) -> Result<Self> {
        check_lr("init", init)?;
        check_steps("step_size", step_size)?;
        check_gamma(gamma)?;
        Ok(Self { init, step_size, gamma })
    }

    getters!(init: f64, step_size: u64, gamma: f64);
}

impl Schedule for StepDecay {
    fn lr(&self, step: u64) -> f64 {
        self.init * self.gamma.powf((step / self.step_size) as f64)
    }
}

/// `init * gamma^k`, `k` = the number of milestones `<= step` (torch `MultiStepLR`; optax
/// `piecewise_constant_schedule` with equal scales).
#[derive(Debug, Clone, PartialEq)]
pub struct MultiStep {
    init: f64,
    milestones: Vec<u64>,
    gamma: f64,
}

impl MultiStep {
    /// The milestones may come in any order (torch's `MultiStepLR` counts them in a `Counter`,
    /// order-free): they are sorted. Errors unless `init` is finite and `>= 0`, `gamma` finite
    /// and `> 0`, and no milestone is repeated (torch would apply `gamma` twice there; here it is
    /// taken for a typo).
    pub fn new(init: f64, mut milestones: Vec<u64>, gamma: f64) -> Result<Self> {
        check_lr("init", init)?;
        check_gamma(gamma)?;
        milestones.sort_unstable();
        if let Some(w) = milestones.windows(2).find(|w| w[0] == w[1]) {
            bail!("schedule: milestone {} is given twice in {milestones:?}", w[0])
        }
        Ok(Self { init, milestones, gamma })
    }

    getters!(init: f64, gamma: f64);
    /// The milestones, strictly increasing.
    pub fn milestones(&self) -> &[u64] {
        &self.milestones
    }
}

impl Schedule for MultiStep {
    fn lr(&self, step: u64) -> f64 {
        let k = self.milestones.partition_point(|&m| m <= step);
        self.init * self.gamma.powf(k as f64)
    }
}

/// `init * gamma^step` (torch `ExponentialLR`; optax `exponential_decay` with
/// `transition_steps = 1`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Exponential {
    init: f64,
    gamma: f64,
}

impl Exponential {
    /// Errors unless `init` is finite and `>= 0` and `gamma` finite and `> 0`.
    pub fn new(init: f64, gamma: f64) -> Result<Self> {
        check_lr("init", init)?;
        check_gamma(gamma)?;
        Ok(Self { init, gamma })
    }

    getters!(init: f64, gamma: f64);
}

impl Schedule for Exponential {
    fn lr(&self, step: u64) -> f64 {
        self.init * self.gamma.powf(step as f64)
    }
}

/// How [`OneCycle`] moves between its phase endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Anneal {
    /// `end + (start - end) * (1 + cos(pi * pct)) / 2` (torch `anneal_strategy="cos"`).
    Cos,
    /// `start + (end - start) * pct` (torch `anneal_strategy="linear"`).
    Linear,
}

/// torch's `OneCycleLR` (Smith & Topin 2017, "super-convergence"), learning rate only (its
/// momentum cycling is not included). With `initial = max_lr / div_factor` and
/// `min = initial / final_div_factor`, phases (fractional end steps as in torch):
///
/// ```text
/// two-phase:   initial -> max_lr  until pct_start * total_steps - 1,
///              max_lr  -> min     until total_steps - 1
/// three_phase: initial -> max_lr  until pct_start * total_steps - 1,
///              max_lr  -> initial until 2 * pct_start * total_steps - 2,
///              initial -> min     until total_steps - 1
/// ```
///
/// each annealed by [`Anneal`] with `pct = (step - phase start) / (phase end - phase start)`.
/// torch refuses steps past `total_steps`; here steps `>= total_steps - 1` give `min`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OneCycle {
    max_lr: f64,
    total_steps: u64,
    pct_start: f64,
    anneal: Anneal,
    div_factor: f64,
    final_div_factor: f64,
    three_phase: bool,
}

impl OneCycle {
    /// torch's defaults: `pct_start = 0.3`, cosine annealing, `div_factor = 25`,
    /// `final_div_factor = 1e4`, two phases (change them with the `with_*` methods). Errors unless
    /// `max_lr` is finite and `>= 0`, `total_steps >= 1`, `pct_start` in [0, 1], both div factors
    /// finite and `> 0`, and `pct_start * total_steps != 1` (then the first phase is empty and
    /// torch gives 0/0 = NaN at step 0). Like torch, a first phase that ends before step 0
    /// (`pct_start * total_steps < 1`) is allowed: the schedule then starts annealing down.
    pub fn new(max_lr: f64, total_steps: u64) -> Result<Self> {
        let s = Self {
            max_lr,
            total_steps,
            pct_start: 0.3,
            anneal: Anneal::Cos,
            div_factor: 25.0,
            final_div_factor: 1e4,
            three_phase: false,
        };
        s.validate()?;
        Ok(s)
    }

    /// With the fraction of the steps spent going up (torch `pct_start`). Errors unless it is in
    /// [0, 1] and `pct_start * total_steps != 1` (see [`OneCycle::new`]).
    pub fn with_pct_start(self, pct_start: f64) -> Result<Self> {
        let s = Self { pct_start, ..self };
        s.validate()?;
        Ok(s)
    }

    /// With another annealing strategy (torch `anneal_strategy`).
    pub fn with_anneal(self, anneal: Anneal) -> Self {
        Self { anneal, ..self }
    }

    /// With `initial = max_lr / div_factor` and `min = initial / final_div_factor` (torch
    /// `div_factor`, `final_div_factor`). Errors unless both are finite and `> 0`.
    pub fn with_div_factors(self, div_factor: f64, final_div_factor: f64) -> Result<Self> {
        let s = Self { div_factor, final_div_factor, ..self };
        s.validate()?;
        Ok(s)
    }

    /// With or without torch's `three_phase` (back down to `initial` before the final decay).
    pub fn with_three_phase(self, three_phase: bool) -> Self {
        Self { three_phase, ..self }
    }

    getters!(
        max_lr: f64,
        total_steps: u64,
        pct_start: f64,
        anneal: Anneal,
        div_factor: f64,
        final_div_factor: f64,
        three_phase: bool
    );

    /// Errors unless `max_lr` is finite and `>= 0`, `total_steps >= 1`, `pct_start` in [0, 1],
    /// both div factors finite and `> 0`, and `pct_start * total_steps != 1` (then the first phase
    /// is empty and torch gives 0/0 = NaN at step 0). Like torch, a first phase that ends before
    /// step 0 (`pct_start * total_steps < 1`) is allowed: the schedule then starts annealing down.
    fn validate(&self) -> Result<()> {
        check_lr("max_lr", self.max_lr)?;
        check_steps("total_steps", self.total_steps)?;
        if !(0.0..=1.0).contains(&self.pct_start) {
            bail!("schedule: pct_start must be in [0, 1], got {}", self.pct_start)
        }
        for (name, x) in
            [("div_factor", self.div_factor), ("final_div_factor", self.final_div_factor)]
        {
            if !(x.is_finite() && x > 0.0) {
                bail!("schedule: {name} must be finite and > 0, got {x}")
            }
        }
        if self.pct_start * self.total_steps as f64 == 1.0 {
            bail!(
                "schedule: OneCycle with pct_start * total_steps = 1 has an empty first phase \
                 (torch gives NaN at step 0); change pct_start or total_steps"
            )
        }
        Ok(())
    }

    /// `(end_step, start_lr, end_lr)` of each phase, as torch's `_schedule_phases`.
    fn phases(&self) -> Vec<(f64, f64, f64)> {
        let initial = self.max_lr / self.div_factor;
        let min = initial / self.final_div_factor;
        let total = self.total_steps as f64;
        let up = self.pct_start * total - 1.0;
        if self.three_phase {
            vec![
                (up, initial, self.max_lr),
                (2.0 * self.pct_start * total - 2.0, self.max_lr, initial),
                (total - 1.0, initial, min),
            ]
        } else {
            vec![(up, initial, self.max_lr), (total - 1.0, self.max_lr, min)]
        }
    }
}

impl Schedule for OneCycle {
    fn lr(&self, step: u64) -> f64 {
        let phases = self.phases();
        let s = step.min(self.total_steps - 1) as f64;
        let mut start = 0.0;
        for (i, &(end, lo, hi)) in phases.iter().enumerate() {
            if s <= end || i == phases.len() - 1 {
                let pct = (s - start) / (end - start);
                return match self.anneal {
                    Anneal::Cos => cos_anneal(lo, hi, pct),
                    Anneal::Linear => lerp(lo, hi, pct),
                };
            }
            start = end;
        }
        unreachable!("the last phase always matches")
    }
}

/// Schedules joined at step boundaries (optax `join_schedules`; torch `SequentialLR`):
/// `schedules[i]` runs from `boundaries[i - 1]` (0 for the first) and sees the steps since its
/// start, `lr(step) = schedules[i].lr(step - boundaries[i - 1])`.
pub struct Join {
    schedules: Vec<Box<dyn Schedule>>,
    boundaries: Vec<u64>,
}

impl std::fmt::Debug for Join {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Join")
            .field("schedules", &self.schedules.len())
            .field("boundaries", &self.boundaries)
            .finish()
    }
}

impl Join {
    /// Errors unless there is one more schedule than boundaries and the boundaries are strictly
    /// increasing and `>= 1`.
    pub fn new(schedules: Vec<Box<dyn Schedule>>, boundaries: Vec<u64>) -> Result<Self> {
        if schedules.len() != boundaries.len() + 1 {
            bail!(
                "schedule: Join needs one more schedule than boundaries, got {} schedules and {} \
                 boundaries",
                schedules.len(),
                boundaries.len()
            )
        }
        if boundaries.first() == Some(&0) || boundaries.windows(2).any(|w| w[0] >= w[1]) {
            bail!("schedule: Join boundaries must be strictly increasing and >= 1, got {boundaries:?}")
        }
        Ok(Self { schedules, boundaries })
    }

    /// The step boundaries.
    pub fn boundaries(&self) -> &[u64] {
        &self.boundaries
    }
}

impl Schedule for Join {
    fn lr(&self, step: u64) -> f64 {
        let i = self.boundaries.partition_point(|&b| b <= step);
        let start = if i == 0 { 0 } else { self.boundaries[i - 1] };
        self.schedules[i].lr(step - start)
    }
}

/// Linear warmup from `warmup_init` to `decay.lr(0)` over `warmup_steps` steps, then `decay`
/// (which sees the steps since the warmup ended): a [`Join`] of a [`Linear`] and `decay`. With
/// `warmup_init = 0`, `decay = Linear::new(lr, 0, total - warmup)` or
/// `Cosine::new(lr, 0, total - warmup)` it is Hugging Face's
/// `get_linear_schedule_with_warmup` / `get_cosine_schedule_with_warmup` (torch `LambdaLR`).
/// `warmup_steps = 0`: `decay` alone. Errors unless `warmup_init` and `decay.lr(0)` are finite and
/// `>= 0`.
pub fn warmup_then(
    warmup_steps: u64,
    warmup_init: f64,
    decay: impl Schedule + 'static,
) -> Result<Join> {
    if warmup_steps == 0 {
        return Join::new(vec![Box::new(decay)], vec![]);
    }
    check_lr("warmup_then: warmup_init", warmup_init)?;
    check_lr("warmup_then: the decay's lr(0) (the warmup's target)", decay.lr(0))?;
    let warmup = Linear::new(warmup_init, decay.lr(0), warmup_steps)?;
    Join::new(vec![Box::new(warmup), Box::new(decay)], vec![warmup_steps])
}

/// Sets `opt`'s learning rate to `schedule.lr(step)` and returns it; call it before each
/// optimizer step with the number of steps already taken (for [`crate::RAdam`],
/// `opt.step_count()`). Works with any [`candle_nn::Optimizer`].
///
/// Errors (leaving `opt` unchanged) if the schedule gives a learning rate that is not finite and
/// `>= 0` (possible only with [`Lambda`] or your own `Schedule`: the others are validated).
pub fn apply<S: Schedule + ?Sized, O: Optimizer>(
    schedule: &S,
    opt: &mut O,
    step: u64,
) -> Result<f64> {
    let lr = schedule.lr(step);
    if !(lr.is_finite() && lr >= 0.0) {
        bail!("schedule: learning rate at step {step} must be finite and >= 0, got {lr}")
    }
    opt.set_learning_rate(lr);
    Ok(lr)
}

/// An optimizer driven by a schedule: each [`Scheduled::step`] sets the learning rate to
/// `schedule.lr(step_count)`, steps the inner optimizer and, if that succeeded, advances the
/// count. Wraps any [`candle_nn::Optimizer`]. Save [`Scheduled::step_count`] with the
/// optimizer's state and resume with [`Scheduled::resume`].
///
/// The count is torch's: one per `scheduler.step()`, i.e. one per call to [`Scheduled::step`]
/// that the inner optimizer accepted (returned `Ok`), **including** calls in which it changed
/// nothing: a call without any gradient, or a step it skipped ([`crate::NonFinite::Skip`]). So it
/// can run ahead of [`crate::RAdam::step_count`], which counts applied updates only (fairseq's
/// `num_updates`, which does not count overflow-skipped steps). To resume exactly, save
/// [`Scheduled::step_count`] with the optimizer's state and pass it to [`Scheduled::resume`]; to
/// follow applied updates instead (fairseq), drive the lr with [`apply`] and
/// `radam.step_count()`, which the state file restores.
pub struct Scheduled<O, S> {
    opt: O,
    schedule: S,
    step: u64,
}

impl<O: Optimizer, S: Schedule> Scheduled<O, S> {
    /// Starts at step 0.
    pub fn new(opt: O, schedule: S) -> Self {
        Self::resume(opt, schedule, 0)
    }

    /// Continues a run whose [`Scheduled::step_count`] was `step` when it was saved: the next
    /// step uses `schedule.lr(step)`. This is the wrapper's own count (see [`Scheduled`]), which
    /// equals [`crate::RAdam::step_count`] only if every step had a gradient and none was
    /// skipped; save it next to the optimizer's state.
    pub fn resume(opt: O, schedule: S, step: u64) -> Self {
        Self { opt, schedule, step }
    }

    /// Sets the learning rate from the schedule, then steps with `grads`. On error nothing
    /// advances (and the inner optimizer's own guarantees apply).
    pub fn step(&mut self, grads: &GradStore) -> Result<()> {
        apply(&self.schedule, &mut self.opt, self.step)?;
        self.opt.step(grads)?;
        self.step += 1;
        Ok(())
    }

    /// Sets the learning rate from the schedule, then runs the inner optimizer's own
    /// [`Optimizer::backward_step`] — so an optimizer that does more than `loss.backward()` there,
    /// like [`crate::RAdam`] with a [`crate::LossScaler`] (it multiplies the loss by the loss
    /// scale first), keeps doing it. On error nothing advances.
    pub fn backward_step(&mut self, loss: &Tensor) -> Result<()> {
        apply(&self.schedule, &mut self.opt, self.step)?;
        self.opt.backward_step(loss)?;
        self.step += 1;
        Ok(())
    }

    /// Accepted calls to [`Scheduled::step`] so far, empty and skipped ones included (the step
    /// the schedule is evaluated at next).
    pub fn step_count(&self) -> u64 {
        self.step
    }

    /// The learning rate the next step will use.
    pub fn next_lr(&self) -> f64 {
        self.schedule.lr(self.step)
    }

    pub fn schedule(&self) -> &S {
        &self.schedule
    }

    pub fn optimizer(&self) -> &O {
        &self.opt
    }

    /// The inner optimizer (e.g. to save its state); setting its learning rate has no lasting
    /// effect, the schedule sets it before every step.
    pub fn optimizer_mut(&mut self) -> &mut O {
        &mut self.opt
    }

    pub fn into_inner(self) -> O {
        self.opt
    }
}
