//! The per-step gradient multiplier: global-norm clipping (`torch.nn.utils.clip_grad_norm_`)
//! and loss-scale unscaling folded into one scalar.
//!
//! With `S` the loss scale (1 without a [`crate::LossScaler`]) and `sumsq` the sum of the squares
//! of every element of every gradient the step uses, as the backward pass left them (scaled):
//!
//! ```text
//! gnorm = sqrt(sumsq) / S                                  (unclipped, unscaled: fairseq's gnorm)
//! coef  = min(1, max_grad_norm / (gnorm + 1e-6))           (torch clip_grad_norm_, 1 if off)
//! mult  = coef / S                                         (the update reads grad * mult)
//! ```
//!
//! `sumsq` comes from the non-finite guard's single read of each gradient (f64 accumulation on
//! CPU; on CUDA per-thread f64 partial sums, a fixed-order f64 tree per block and an f64 sum of
//! the block partials on the host), and `mult` multiplies the gradient inside the fused update
//! (first line of the rule in [`crate::rule`]): no gradient is rewritten and there is no second
//! pass. A non-finite `sumsq` (a NaN / inf element, or for f64 gradients a square overflowing
//! f64) is a non-finite gradient.

/// The `1e-6` torch adds to the norm in `clip_grad_norm_` (`max_norm / (total_norm + 1e-6)`).
pub const CLIP_EPS: f64 = 1e-6;

/// The unscaled gradient norm `sqrt(sumsq) / scale` (fairseq's `gnorm`).
pub(crate) fn grad_norm(sumsq: f64, scale: f64) -> f64 {
    sumsq.sqrt() / scale
}

/// The clipping coefficient of `clip_grad_norm_`: `min(1, max_norm / (norm + 1e-6))`, 1 without
/// clipping (`max_norm = None` or infinite).
pub(crate) fn clip_coef(norm: f64, max_norm: Option<f64>) -> f64 {
    match max_norm {
        // torch.clamp(coef, max=1): a NaN norm gives a NaN coefficient (f64::min would give 1).
        Some(max) => {
            let c = max / (norm + CLIP_EPS);
            if c > 1.0 {
                1.0
            } else {
                c
            }
        }
        None => 1.0,
    }
}

/// Checks a `max_grad_norm`: finite or `+inf`, and `>= 0` (0 zeroes every update, as in torch).
pub(crate) fn check_max_norm(max: f64) -> candle_core::Result<()> {
    if max.is_nan() || max < 0.0 {
        candle_core::bail!("RAdam: max_grad_norm must be >= 0 (or +inf), got {max}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coefficient_as_torch() {
        assert_eq!(clip_coef(0.5, Some(1.0)), 1.0);
        assert_eq!(clip_coef(4.0, Some(1.0)), 1.0 / (4.0 + 1e-6));
        assert_eq!(clip_coef(4.0, Some(f64::INFINITY)), 1.0);
        assert_eq!(clip_coef(4.0, None), 1.0);
        assert!(clip_coef(f64::NAN, Some(1.0)).is_nan());
        assert_eq!(clip_coef(f64::INFINITY, Some(1.0)), 0.0);
        assert_eq!(grad_norm(16.0 * 65536.0 * 65536.0, 65536.0), 4.0);
        assert!(check_max_norm(f64::NAN).is_err() && check_max_norm(-1.0).is_err());
        assert!(check_max_norm(f64::INFINITY).is_ok() && check_max_norm(0.0).is_ok());
    }
}
