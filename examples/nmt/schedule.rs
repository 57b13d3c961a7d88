//! The example's learning-rate settings (`--warmup`, `--warmup-init-lr`, `--decay`), turned into a
//! schedule of the crate ([`candle_radam::schedule`]). The example keeps only this serializable
//! description (it goes into `summary.json`); every formula lives in the crate.
//!
//! Step convention (the crate's, torch's and fairseq's): `lr(k)` is the learning rate of the
//! update that follows `k` completed updates, so update 1 uses `lr(0)` — `warmup_init` when there
//! is a warmup, as fairseq's `--warmup-init-lr`.

use anyhow::Result;
use candle_radam::schedule::{warmup_then, Constant, InverseSqrt, Linear};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
pub enum Decay {
    /// fairseq's `inverse_sqrt`: `lr * sqrt(max(warmup, 1) / k)` after the warmup
    /// ([`candle_radam::schedule::InverseSqrt`]).
    InverseSqrt,
    /// Linear from `lr` at the end of the warmup to 0 at `total` updates
    /// ([`candle_radam::schedule::Linear`]).
    Linear,
    /// `lr` after the warmup.
    Constant,
}

/// The learning-rate schedule of one variant: linear warmup from `warmup_init` to `lr` over
/// `warmup` updates (none when 0), then `decay`, over `total` updates.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Schedule {
    pub lr: f64,
    /// Linear warmup updates (0: none).
    pub warmup: u64,
    /// The learning rate warmup starts from (fairseq `--warmup-init-lr`).
    pub warmup_init: f64,
    pub decay: Decay,
    pub total: u64,
}

impl Schedule {
    /// The crate schedule this describes. Errors on settings the crate refuses (negative or
    /// non-finite rates, a warmup as long as the run with linear decay).
    pub fn build(&self) -> Result<Box<dyn candle_radam::schedule::Schedule>> {
        Ok(match self.decay {
            // fairseq's inverse_sqrt has its own warmup; without one it decays from update 2 on
            // (warmup_updates = 1, warmup_init_lr = lr).
            Decay::InverseSqrt if self.warmup == 0 => {
                Box::new(InverseSqrt::new(self.lr, 1, self.lr)?)
            }
            Decay::InverseSqrt => {
                Box::new(InverseSqrt::new(self.lr, self.warmup, self.warmup_init)?)
            }
            Decay::Linear => {
                let span = self.total.saturating_sub(self.warmup);
                if span == 0 {
                    anyhow::bail!(
                        "linear decay needs more updates ({}) than warmup updates ({})",
                        self.total,
                        self.warmup
                    );
                }
                Box::new(warmup_then(
                    self.warmup,
                    self.warmup_init,
                    Linear::new(self.lr, 0.0, span)?,
                )?)
            }
            Decay::Constant => {
                Box::new(warmup_then(self.warmup, self.warmup_init, Constant::new(self.lr)?)?)
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_radam::schedule::Schedule as _;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() <= 1e-15 * a.abs().max(b.abs()).max(1e-300)
    }

    #[test]
    fn warmup_then_inverse_sqrt_is_fairseqs() {
        let s = Schedule {
            lr: 1e-3,
            warmup: 100,
            warmup_init: 0.0,
            decay: Decay::InverseSqrt,
            total: 1000,
        }
        .build()
        .unwrap();
        // Update 1 uses lr(0) = warmup_init; the peak at 100 completed updates; then sqrt decay.
        assert_eq!(s.lr(0), 0.0);
        assert!(close(s.lr(50), 5e-4));
        assert!(close(s.lr(100), 1e-3));
        assert!(close(s.lr(400), 5e-4));
        let s0 = Schedule {
            lr: 1e-3,
            warmup: 0,
            warmup_init: 0.0,
            decay: Decay::InverseSqrt,
            total: 1000,
        }
        .build()
        .unwrap();
        assert!(close(s0.lr(0), 1e-3) && close(s0.lr(1), 1e-3) && close(s0.lr(4), 5e-4));
    }

    #[test]
    fn warmup_then_linear_and_constant() {
        let cfg =
            Schedule { lr: 2e-3, warmup: 10, warmup_init: 1e-7, decay: Decay::Linear, total: 110 };
        let s = cfg.build().unwrap();
        assert!(close(s.lr(0), 1e-7));
        assert!(close(s.lr(1), 1e-7 + (2e-3 - 1e-7) / 10.0));
        assert!(close(s.lr(10), 2e-3));
        assert!(close(s.lr(60), 1e-3));
        assert_eq!(s.lr(110), 0.0);
        assert_eq!(s.lr(500), 0.0);
        let s0 = Schedule { warmup: 0, ..cfg.clone() }.build().unwrap();
        assert!(close(s0.lr(0), 2e-3) && close(s0.lr(1), 2e-3 * 109.0 / 110.0));
        let c = Schedule { decay: Decay::Constant, ..cfg.clone() }.build().unwrap();
        assert!(close(c.lr(5), 1e-7 + (2e-3 - 1e-7) / 2.0));
        assert!(close(c.lr(1000), 2e-3));
        assert!(Schedule { warmup: 110, ..cfg }.build().is_err());
    }
}
