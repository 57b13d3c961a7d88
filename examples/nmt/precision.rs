//! The precision of a run: the dtype the model's parameters are stored in (the variables the
//! optimizer updates), how a half-precision parameter receives the optimizer's f32 update, and
//! the format of the optimizer's state.
//!
//! A spec is written `DTYPE[:MODE][+STATE]`, e.g. `f32`, `bf16`, `bf16:nearest`, `f16:nearest`.
//! [`PrecisionSpec::parse`] is the one parser of specs (`--precisions`; `--dtype D` trains with
//! [`PrecisionSpec::plain`]) and [`PrecisionSpec::optimizer`] the one place that turns a spec
//! into a configured optimizer.
//!
//! Whatever the parameter dtype, the forward and backward passes compute in f32: each parameter
//! is cast to f32 where the network uses it ([`crate::model::Model::compute`]), so the gradient
//! arrives in the parameter's dtype, rounded once from the f32 gradient. That is mixed precision
//! as it is run on GPUs (autocast keeps softmax, LayerNorm and the loss in f32), and it keeps a
//! comparison of precisions about the parameters and their updates: the only half-precision
//! roundings are the weights the forward pass reads and the gradients the optimizer gets.
//! It is also the fast choice on the CPU: a forward + backward pass of the default network with
//! bf16 parameters computing in f32 takes the time of f32 parameters (0.85-1.00x: the casts cost
//! nothing measurable), computing in bf16 2.7-3.3x that and in f16 5.9-7.1x (best of 7, three
//! runs, 2026-11-29, 2-core AMD EPYC VM; the ignored test `model::tests::half_compute_speed`
//! prints them).
//!
//! f16 runs also use dynamic loss scaling ([`LossScaler`], `torch.amp.GradScaler`'s defaults), as
//! f16 training does: without it, gradients below f16's smallest subnormal (6e-8) flush to zero.
//! bf16 has f32's exponent range and needs none.

use anyhow::{bail, Result};
use candle_core::{DType, Tensor};
use candle_nn::VarMap;
use candle_radam::{LossScaler, ParamsRAdam, RAdam, Rounding, StateFormat};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::fmt;

/// The dtype of the model's parameters (`--dtype`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum ParamDType {
    F32,
    Bf16,
    F16,
}

impl ParamDType {
    pub const ALL: [ParamDType; 3] = [ParamDType::F32, ParamDType::Bf16, ParamDType::F16];

    pub fn dtype(self) -> DType {
        match self {
            ParamDType::F32 => DType::F32,
            ParamDType::Bf16 => DType::BF16,
            ParamDType::F16 => DType::F16,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            ParamDType::F32 => "f32",
            ParamDType::Bf16 => "bf16",
            ParamDType::F16 => "f16",
        }
    }
}

/// The update modes a `:MODE` can name (the library's [`Rounding`], parsed by its `FromStr`):
/// listed in errors.
const MODES: &str = "nearest, remainder, kahan, stochastic, stochastic:SEED";

/// Whether update mode `r` applies to parameters of dtype `d`: never to f32 (they take the f32
/// update as it is), `remainder` only to bf16 (the upper half of an f32; see [`Rounding`]).
fn applies_to(r: Rounding, d: ParamDType) -> bool {
    match r {
        Rounding::Remainder => d == ParamDType::Bf16,
        _ => d != ParamDType::F32,
    }
}

/// The `+STATE` suffix of an optimizer state format: none for the default (f32 moments), `8bit`
/// for [`StateFormat::blockwise8`] (bitsandbytes' defaults: blocks of 256, tensors of fewer than
/// 4096 elements keep f32 moments).
fn state_suffix(f: StateFormat) -> Option<&'static str> {
    match f {
        StateFormat::Full => None,
        f if f == StateFormat::blockwise8() => Some("8bit"),
        _ => Some("8bit-custom"),
    }
}

/// The formats a `+SUFFIX` can name (not the default, which has no suffix).
fn state_formats() -> [StateFormat; 1] {
    [StateFormat::blockwise8()]
}

/// A parameter dtype with its update mode and optimizer state format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PrecisionSpec {
    pub dtype: ParamDType,
    /// `None` for f32 parameters.
    pub update: Option<Rounding>,
    pub state: StateFormat,
}

impl PrecisionSpec {
    /// Parameters of dtype `d` with the default update (round to nearest for half precision)
    /// and state: what `--dtype d` trains with.
    pub fn plain(d: ParamDType) -> Self {
        let update = (d != ParamDType::F32).then_some(Rounding::Nearest);
        Self { dtype: d, update, state: StateFormat::Full }
    }

    /// Parses `DTYPE[:MODE][+STATE]` (case-insensitive, surrounding blanks ignored): `f32`,
    /// `bf16` (= `bf16:nearest`), `bf16:remainder`, `f16:kahan`, `bf16:stochastic:7`,
    /// `f32+8bit`, `bf16:remainder+8bit`. MODE is a [`Rounding`] as its `FromStr` reads it; a
    /// mode that does not apply to the dtype, or an unknown suffix, is an error naming what exists.
    pub fn parse(spec: &str) -> Result<Self> {
        let s = spec.trim().to_ascii_lowercase();
        let (s, state) = match s.split_once('+') {
            None => (s.as_str(), StateFormat::Full),
            Some((head, suffix)) => {
                let Some(f) =
                    state_formats().into_iter().find(|f| state_suffix(*f) == Some(suffix))
                else {
                    bail!(
                        "precision {spec:?}: unknown optimizer state format {suffix:?} (known: {})",
                        known(state_formats().iter().filter_map(|f| state_suffix(*f)))
                    );
                };
                (head, f)
            }
        };
        let (dtype, mode) = match s.split_once(':') {
            None => (s, None),
            Some((d, m)) => (d, Some(m)),
        };
        let Some(dtype) = ParamDType::ALL.iter().copied().find(|d| d.name() == dtype) else {
            bail!(
                "precision {spec:?}: unknown parameter dtype {dtype:?} (known: {})",
                known(ParamDType::ALL.iter().map(|d| d.name().to_string()))
            );
        };
        let update = match mode {
            None => Self::plain(dtype).update,
            Some(m) => {
                let Ok(u) = m.parse::<Rounding>() else {
                    bail!("precision {spec:?}: unknown update mode {m:?} (known: {MODES})");
                };
                if !applies_to(u, dtype) {
                    bail!(
                        "precision {spec:?}: update mode {m} does not apply to {} parameters{}",
                        dtype.name(),
                        match dtype {
                            ParamDType::F32 => " (they take the f32 update as it is: write f32)",
                            _ => " (f16 is not the upper half of an f32: use kahan or stochastic)",
                        }
                    );
                }
                Some(u)
            }
        };
        Ok(Self { dtype, update, state })
    }

    /// Whether the optimizer keeps a dynamic loss scale (f16 parameters, see the module docs).
    pub fn loss_scaling(&self) -> bool {
        self.dtype == ParamDType::F16
    }

    /// The optimizer over every variable of `varmap` (see [`RAdam::from_varmap`]) with this
    /// spec's update mode and state format. `f32_init` gives the f32 values the parameters were
    /// initialized from (by variable name, [`crate::model::init_values`]), for a mode that keeps
    /// an f32 master copy; a resumed run then loads the optimizer state over it.
    pub fn optimizer(
        &self,
        varmap: &VarMap,
        params: ParamsRAdam,
        f32_init: impl FnOnce() -> Result<HashMap<String, Tensor>>,
    ) -> Result<RAdam> {
        let rounding = self.update.unwrap_or_default();
        let mut opt = RAdam::from_varmap(varmap, ParamsRAdam { rounding, ..params })?;
        if rounding == Rounding::Remainder {
            // The f32 master copy starts from the exact f32 init, not from its bf16 rounding.
            for (name, value) in f32_init()? {
                opt.set_master_weights(&name, &value)?;
            }
        } else {
            drop(f32_init)
        }
        if self.state != StateFormat::Full {
            opt.set_state_format(self.state)?;
        }
        if self.loss_scaling() {
            opt.set_loss_scaler(Some(LossScaler::default()))?;
        }
        Ok(opt)
    }
}

/// `a, b, c`, or `none yet` for an empty list.
fn known<S: ToString>(names: impl Iterator<Item = S>) -> String {
    let v: Vec<String> = names.map(|n| n.to_string()).collect();
    if v.is_empty() {
        "none yet".to_string()
    } else {
        v.join(", ")
    }
}

/// The canonical spelling, which [`PrecisionSpec::parse`] reads back: `f32`, `bf16:nearest`,
/// `f16:nearest` (the mode always written for half precision), then `+STATE` if any.
impl fmt::Display for PrecisionSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.dtype.name())?;
        if let Some(u) = self.update {
            write!(f, ":{u}")?;
        }
        if let Some(suffix) = state_suffix(self.state) {
            write!(f, "+{suffix}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse_to_their_canonical_names() {
        for (given, canonical, dtype) in [
            ("f32", "f32", ParamDType::F32),
            ("bf16", "bf16:nearest", ParamDType::Bf16),
            (" BF16:Nearest ", "bf16:nearest", ParamDType::Bf16),
            ("f16", "f16:nearest", ParamDType::F16),
            ("f16:nearest", "f16:nearest", ParamDType::F16),
        ] {
            let s = PrecisionSpec::parse(given).unwrap();
            assert_eq!(s.to_string(), canonical, "{given}");
            assert_eq!(s.dtype, dtype, "{given}");
            assert_eq!(s.state, StateFormat::Full, "{given}");
            assert_eq!(PrecisionSpec::parse(canonical).unwrap(), s, "{canonical}");
            assert_eq!(PrecisionSpec::plain(dtype).to_string(), canonical);
        }
        for (given, canonical, rounding, state) in [
            ("bf16:remainder", "bf16:remainder", Rounding::Remainder, StateFormat::Full),
            ("BF16:Kahan", "bf16:kahan", Rounding::Kahan, StateFormat::Full),
            ("f16:kahan", "f16:kahan", Rounding::Kahan, StateFormat::Full),
            (
                "bf16:stochastic",
                "bf16:stochastic:0",
                Rounding::Stochastic { seed: 0 },
                StateFormat::Full,
            ),
            (
                "f16:stochastic:7",
                "f16:stochastic:7",
                Rounding::Stochastic { seed: 7 },
                StateFormat::Full,
            ),
            ("bf16+8bit", "bf16:nearest+8bit", Rounding::Nearest, StateFormat::blockwise8()),
            (
                "bf16:remainder+8bit",
                "bf16:remainder+8bit",
                Rounding::Remainder,
                StateFormat::blockwise8(),
            ),
        ] {
            let s = PrecisionSpec::parse(given).unwrap();
            assert_eq!(
                (s.to_string().as_str(), s.update, s.state),
                (canonical, Some(rounding), state)
            );
            assert_eq!(PrecisionSpec::parse(canonical).unwrap(), s, "{canonical}");
        }
        let s = PrecisionSpec::parse("f32+8bit").unwrap();
        assert_eq!(
            (s.to_string().as_str(), s.update, s.state),
            ("f32+8bit", None, StateFormat::blockwise8())
        );
        assert_eq!(PrecisionSpec::parse("f32").unwrap().update, None);
        assert_eq!(PrecisionSpec::parse("bf16").unwrap().update, Some(Rounding::Nearest));
        assert!(PrecisionSpec::parse("f16").unwrap().loss_scaling());
        assert!(!PrecisionSpec::parse("bf16").unwrap().loss_scaling());
    }

    #[test]
    fn bad_specs_name_what_exists() {
        for (bad, says) in [
            ("f64", "unknown parameter dtype \"f64\" (known: f32, bf16, f16)"),
            ("", "unknown parameter dtype \"\""),
            ("bf16:bogus", "unknown update mode \"bogus\" (known: nearest, remainder, kahan"),
            ("bf16:stochastic:x", "unknown update mode \"stochastic:x\""),
            ("f16:remainder", "f16 is not the upper half of an f32: use kahan or stochastic"),
            ("f32:kahan", "does not apply to f32 parameters"),
            ("bf16:", "unknown update mode \"\""),
            ("f32:nearest", "does not apply to f32 parameters (they take the f32 update"),
            ("bf16+4bit", "unknown optimizer state format \"4bit\""),
            ("f32+", "unknown optimizer state format \"\""),
        ] {
            let e = PrecisionSpec::parse(bad).unwrap_err().to_string();
            assert!(e.contains(says), "{bad:?}: {e}");
            assert!(e.starts_with(&format!("precision {bad:?}")), "{bad:?}: {e}");
        }
    }

    #[test]
    fn optimizer_follows_the_spec() -> Result<()> {
        let varmap = VarMap::new();
        let vb = candle_nn::VarBuilder::from_varmap(&varmap, DType::F16, &candle_core::Device::Cpu);
        vb.get_with_hints(3, "w", candle_nn::Init::Const(1.0))?;
        let called = std::cell::Cell::new(false);
        for (spec, scaled) in [("f16", true), ("bf16", false), ("f32", false)] {
            let opt =
                PrecisionSpec::parse(spec)?.optimizer(&varmap, ParamsRAdam::default(), || {
                    called.set(true);
                    Ok(HashMap::new())
                })?;
            assert_eq!(opt.loss_scaler().is_some(), scaled, "{spec}");
            assert_eq!(opt.vars().map(|(n, _)| n).collect::<Vec<_>>(), ["w"]);
        }
        // Round to nearest keeps no f32 master copy: the init values are never computed.
        assert!(!called.get());
        // The remainder starts from the exact f32 init; 8-bit state is set on the optimizer.
        let varmap = VarMap::new();
        let vb =
            candle_nn::VarBuilder::from_varmap(&varmap, DType::BF16, &candle_core::Device::Cpu);
        vb.get_with_hints(5000, "w", candle_nn::Init::Const(1.0))?;
        let exact = Tensor::full(1.0f32 + f32::EPSILON, 5000, &candle_core::Device::Cpu)?;
        let opt = PrecisionSpec::parse("bf16:remainder+8bit")?.optimizer(
            &varmap,
            ParamsRAdam::default(),
            || Ok(HashMap::from([("w".to_string(), exact.clone())])),
        )?;
        assert_eq!(opt.params().rounding, Rounding::Remainder);
        assert_eq!(opt.state_format(), StateFormat::blockwise8());
        let master: Vec<f32> = opt.master_weights("w")?.to_vec1()?;
        assert!(master.iter().all(|&x| x == 1.0 + f32::EPSILON));
        Ok(())
    }
}
