//! Learning-rate schedules: linear warmup, then inverse square root, linear decay or constant.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
pub enum Decay {
    /// `lr * sqrt(max(warmup, 1) / step)` after the warmup (fairseq `inverse_sqrt`).
    InverseSqrt,
    /// Linear from `lr` at the end of the warmup to 0 at `total` steps.
    Linear,
    /// `lr` after the warmup.
    Constant,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Schedule {
    pub lr: f64,
    /// Linear warmup steps (0: none).
    pub warmup: u64,
    /// The learning rate warmup starts from (fairseq `--warmup-init-lr`).
    pub warmup_init: f64,
    pub decay: Decay,
    pub total: u64,
}

impl Schedule {
    /// The learning rate of update number `step` (1-based).
    pub fn lr_at(&self, step: u64) -> f64 {
        let step = step.max(1);
        if step <= self.warmup {
            return self.warmup_init
                + (self.lr - self.warmup_init) * step as f64 / self.warmup as f64;
        }
        match self.decay {
            Decay::Constant => self.lr,
            Decay::InverseSqrt => self.lr * (self.warmup.max(1) as f64 / step as f64).sqrt(),
            Decay::Linear => {
                let span = self.total.saturating_sub(self.warmup).max(1) as f64;
                let left = self.total.saturating_sub(step) as f64;
                self.lr * (left / span).clamp(0.0, 1.0)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-12
    }

    #[test]
    fn warmup_then_inverse_sqrt() {
        let s = Schedule {
            lr: 1e-3,
            warmup: 100,
            warmup_init: 0.0,
            decay: Decay::InverseSqrt,
            total: 1000,
        };
        assert!(close(s.lr_at(1), 1e-5));
        assert!(close(s.lr_at(50), 5e-4));
        assert!(close(s.lr_at(100), 1e-3));
        assert!(close(s.lr_at(400), 5e-4));
        let s0 = Schedule { warmup: 0, ..s.clone() };
        assert!(close(s0.lr_at(1), 1e-3));
        assert!(close(s0.lr_at(4), 5e-4));
    }

    #[test]
    fn warmup_then_linear_and_constant() {
        let s =
            Schedule { lr: 2e-3, warmup: 10, warmup_init: 1e-7, decay: Decay::Linear, total: 110 };
        assert!(close(s.lr_at(0), s.lr_at(1)));
        assert!(close(s.lr_at(1), 1e-7 + (2e-3 - 1e-7) / 10.0));
        assert!(close(s.lr_at(10), 2e-3));
        assert!(close(s.lr_at(60), 1e-3));
        assert!(close(s.lr_at(110), 0.0));
        assert!(close(s.lr_at(500), 0.0));
        let s0 = Schedule { warmup: 0, ..s.clone() };
        assert!(close(s0.lr_at(1), 2e-3 * 109.0 / 110.0));
        let c = Schedule { decay: Decay::Constant, ..s };
        assert!(close(c.lr_at(5), 1e-7 + (2e-3 - 1e-7) / 2.0));
        assert!(close(c.lr_at(1000), 2e-3));
    }
}
