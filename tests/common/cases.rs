//! The golden cases of `tests/golden/cases.json` (written by `tests/golden/gen_golden.py`), as
//! `tests/golden.rs` and `tests/precision.rs` read them.

use candle_radam::ParamsRAdam;
use serde::Deserialize;
use std::collections::HashMap;

#[derive(Deserialize)]
pub struct Hp {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
    pub decoupled_weight_decay: bool,
    pub degenerate_to_sgd: bool,
    pub rectify: bool,
}

#[derive(Deserialize)]
pub struct Case {
    pub name: String,
    pub reference: String,
    pub dtype: String,
    pub n: usize,
    pub steps: u64,
    pub seed: u64,
    pub grad_scale: f32,
    pub grad_offset: f32,
    pub hp: Hp,
}

#[derive(Deserialize)]
pub struct Cases {
    pub cases: Vec<Case>,
    pub multi_cases: Vec<MultiCase>,
}

/// A case with several variables, param groups and missing gradients (`run_multi` in the
/// generator).
#[derive(Deserialize)]
pub struct MultiCase {
    pub name: String,
    pub dtype: String,
    pub vars: Vec<MultiVar>,
    pub steps: u64,
    pub hp: Hp,
    pub groups: Vec<MultiGroup>,
    /// Steps on which a var has a gradient (absent: every step).
    pub grads: HashMap<String, Vec<u64>>,
    pub grad_scale: f32,
    pub grad_offset: f32,
}

#[derive(Deserialize)]
pub struct MultiVar {
    pub name: String,
    pub n: usize,
    pub seed: Option<u64>,
    pub init: Option<f32>,
    pub grad: Option<f32>,
}

#[derive(Deserialize)]
pub struct MultiGroup {
    pub name: String,
    pub vars: Vec<String>,
    pub lr_scale: Option<f64>,
    pub beta1: Option<f64>,
    pub beta2: Option<f64>,
    pub eps: Option<f64>,
    pub weight_decay: Option<f64>,
}

impl Hp {
    /// The case's hyper-parameters, every other field at its default.
    pub fn params(&self) -> ParamsRAdam {
        ParamsRAdam {
            lr: self.lr,
            beta1: self.beta1,
            beta2: self.beta2,
            eps: self.eps,
            weight_decay: self.weight_decay,
            decoupled_weight_decay: self.decoupled_weight_decay,
            degenerate_to_sgd: self.degenerate_to_sgd,
            rectify: self.rectify,
            ..Default::default()
        }
    }
}

/// `tests/golden/cases.json`.
pub fn load() -> Cases {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/golden");
    serde_json::from_str(&std::fs::read_to_string(format!("{dir}/cases.json")).unwrap()).unwrap()
}
