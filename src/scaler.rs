//! Dynamic loss scaling for f16 training, with `torch.amp.GradScaler` semantics.
//!
//! The user multiplies the loss by [`LossScaler::scale`] before `backward` (or calls
//! [`crate::RAdam::backward_step_scaled`]), so that small f16 gradients do not flush to zero; the
//! optimizer folds `1 / scale` into the one per-step gradient multiplier of the fused update
//! (see [`crate::clip`]), so no gradient is rewritten. After every step the scale is updated as
//! torch's `GradScaler.update` (`_amp_update_scale_`) does:
//!
//! ```text
//! if the step had a NaN / inf gradient:  scale *= backoff_factor; clean = 0   (step skipped)
//! else: clean += 1
//!       if clean == growth_interval:     scale *= growth_factor (if still finite); clean = 0
//! ```
//!
//! Like torch's `_scale` tensor the scale is kept in f32, so every factor rounds exactly as in
//! torch (with the default powers of two nothing rounds at all).

use candle_core::{bail, Result};

/// Dynamic loss scaler configuration (`torch.amp.GradScaler` with its defaults:
/// `init_scale = 2^16`, `growth_factor = 2`, `backoff_factor = 0.5`, `growth_interval = 2000`).
///
/// Give it to [`crate::RAdam::with_loss_scaler`]; the optimizer then keeps the scale
/// ([`crate::RAdam::loss_scale`]) and saves it with its state ([`crate::RAdam::save_state`]).
///
/// ```
/// use candle_radam::{LossScaler, ParamsRAdam, RAdam};
/// # fn main() -> candle_core::Result<()> {
/// let s = LossScaler { growth_interval: 1000, ..Default::default() };
/// let opt = RAdam::new(vec![], ParamsRAdam::default())?.with_loss_scaler(s)?;
/// assert_eq!(opt.loss_scale(), 65536.0);
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct LossScaler {
    /// The scale the first step uses (torch `init_scale`), finite and `> 0`.
    pub init_scale: f64,
    /// Multiplier after `growth_interval` consecutive clean steps (torch `growth_factor`), `> 1`.
    pub growth_factor: f64,
    /// Multiplier after a step with a NaN / inf gradient (torch `backoff_factor`), in `(0, 1)`.
    pub backoff_factor: f64,
    /// Consecutive clean steps before the scale grows (torch `growth_interval`), `>= 1`.
    pub growth_interval: u64,
}

impl Default for LossScaler {
    fn default() -> Self {
        Self { init_scale: 65536.0, growth_factor: 2.0, backoff_factor: 0.5, growth_interval: 2000 }
    }
}

impl LossScaler {
    /// A scaler with torch's defaults (see [`LossScaler`]).
    pub fn new() -> Self {
        Self::default()
    }

    /// Checks the four configuration numbers; the error names the field and the value.
    pub fn validate(&self) -> Result<()> {
        let s = self.init_scale;
        if !(s > 0.0 && s.is_finite() && (s as f32).is_finite() && s as f32 > 0.0) {
            bail!("LossScaler: init_scale must be > 0 and finite in f32, got {s}");
        }
        if !(self.growth_factor > 1.0 && self.growth_factor.is_finite()) {
            bail!("LossScaler: growth_factor must be finite and > 1, got {}", self.growth_factor);
        }
        if !(self.backoff_factor > 0.0 && self.backoff_factor < 1.0) {
            bail!("LossScaler: backoff_factor must be in (0, 1), got {}", self.backoff_factor);
        }
        if self.growth_interval == 0 {
            bail!("LossScaler: growth_interval must be >= 1");
        }
        Ok(())
    }
}

/// A [`LossScaler`] at work: its configuration, the current scale and the growth tracker.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct DynamicScale {
    pub(crate) config: LossScaler,
    /// The current scale, f32 as torch's `_scale`.
    scale: f32,
    /// Consecutive clean steps since the last change of scale (torch `_growth_tracker`).
    clean: u64,
}

impl DynamicScale {
    /// A validated scaler at its initial scale.
    pub(crate) fn new(config: LossScaler) -> Result<Self> {
        config.validate()?;
        Ok(Self { scale: config.init_scale as f32, clean: 0, config })
    }

    /// The current loss scale: multiply the loss by it before `backward`.
    pub(crate) fn scale(&self) -> f64 {
        self.scale as f64
    }

    /// Consecutive clean steps since the scale last changed (torch's `_growth_tracker`).
    pub(crate) fn growth_tracker(&self) -> u64 {
        self.clean
    }

    /// Records one step: `found_inf` (a NaN / inf gradient, the step was skipped) backs the scale
    /// off, a clean step counts towards growth (torch `_amp_update_scale_`, in f32).
    pub(crate) fn update(&mut self, found_inf: bool) {
        let scale = self.scale() as f32;
        if found_inf {
            self.scale = scale * self.config.backoff_factor as f32;
            self.clean = 0;
        } else {
            let clean = self.clean + 1;
            if clean == self.config.growth_interval {
                let grown = scale * self.config.growth_factor as f32;
                self.scale = if grown.is_finite() { grown } else { scale };
                self.clean = 0;
            } else {
                self.clean = clean;
            }
        }
    }

    /// The saved state: `(scale, growth_tracker)`.
    pub(crate) fn state(&self) -> (f64, u64) {
        (self.scale(), self.clean)
    }

    /// Restores a saved state (checked: the scale positive and finite in f32).
    pub(crate) fn set_state(&mut self, scale: f64, clean: u64) -> Result<()> {
        if !(scale > 0.0 && (scale as f32).is_finite() && scale as f32 > 0.0) {
            bail!("RAdam state: saved loss scale {scale} is not a positive finite f32");
        }
        self.scale = scale as f32;
        self.clean = clean;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn torch_sequence_growth_interval_3_infs_at_2_and_7() {
        // torch.amp.GradScaler(init_scale=2**16, growth_interval=3), found_inf at steps 2 and 7
        // (1-based); scale after each update. (tests/clip.rs checks the same against torch's
        // recorded sequence.)
        let mut s =
            DynamicScale::new(LossScaler { growth_interval: 3, ..Default::default() }).unwrap();
        let mut seq = Vec::new();
        for step in 1..=10 {
            s.update(step == 2 || step == 7);
            seq.push(s.scale());
        }
        let k = 65536.0;
        assert_eq!(seq, [k, k / 2., k / 2., k / 2., k, k, k / 2., k / 2., k / 2., k]);
    }

    #[test]
    fn growth_stops_at_f32_overflow_and_config_is_checked() {
        let c = LossScaler { init_scale: 2f64.powi(127), growth_interval: 1, ..Default::default() };
        let mut s = DynamicScale::new(c).unwrap();
        s.update(false);
        assert_eq!(s.scale(), 2f64.powi(127));
        assert!(LossScaler { backoff_factor: 1.0, ..Default::default() }.validate().is_err());
        assert!(LossScaler { growth_interval: 0, ..Default::default() }.validate().is_err());
        assert!(LossScaler { init_scale: 1e39, ..Default::default() }.validate().is_err());
        assert!(LossScaler::new().validate().is_ok());
    }
}
