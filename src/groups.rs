//! Parameter groups (torch's `param_groups`): variables chosen by name, each group overriding
//! some of the optimizer's hyper-parameters.
//!
//! A [`ParamGroup`] selects variables by exact names, by glob patterns (the `globset` crate's
//! syntax: `*` matches any run of characters, dots included, so `"*.bias"` matches
//! `"encoder.layer.0.bias"`) or by a predicate on the name and the variable. Groups are tried in
//! the order given and the **first match wins**; variables matched by no group form the default
//! group, named [`DEFAULT_GROUP`], which uses the optimizer's [`ParamsRAdam`] as they are.
//!
//! A group's learning rate is a *multiplier* of the optimizer's (`lr_scale`), so
//! [`Optimizer::set_learning_rate`](candle_nn::Optimizer::set_learning_rate) and schedules built on
//! it keep working for every group; every other field replaces the optimizer's value.

use std::collections::{BTreeSet, HashSet};
use std::sync::Arc;

use candle_core::{bail, Result, Var};
use globset::{Glob, GlobSet, GlobSetBuilder};

use crate::params::ParamsRAdam;
use crate::precision::Rounding;
use crate::quant::StateFormat;

/// Name of the group of the variables no [`ParamGroup`] selects.
pub const DEFAULT_GROUP: &str = "default";

type Predicate = Arc<dyn Fn(&str, &Var) -> bool + Send + Sync>;

#[derive(Clone)]
enum Selector {
    Names(HashSet<String>),
    Glob { set: GlobSet, patterns: Vec<String> },
    Predicate(Predicate),
}

impl std::fmt::Debug for Selector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Names(n) => {
                let mut n: Vec<&String> = n.iter().collect();
                n.sort();
                f.debug_tuple("Names").field(&n).finish()
            }
            Self::Glob { patterns, .. } => f.debug_tuple("Glob").field(patterns).finish(),
            Self::Predicate(_) => f.write_str("Predicate(..)"),
        }
    }
}

/// One parameter group: which variables, and the hyper-parameters it overrides.
///
/// ```
/// use candle_radam::ParamGroup;
/// // Embeddings at a tenth of the learning rate, with their own betas.
/// let emb = ParamGroup::glob("embeddings", &["*.embed*"])?.lr_scale(0.1).betas(0.9, 0.98);
/// // The standard Transformer / BERT recipe: no weight decay on biases and norms.
/// let no_decay = ParamGroup::no_decay();
/// # Ok::<(), candle_core::Error>(())
/// ```
#[derive(Clone, Debug)]
pub struct ParamGroup {
    pub(crate) name: String,
    selector: Selector,
    /// Multiplier of the optimizer's learning rate (1 when not set).
    pub lr_scale: Option<f64>,
    /// Overrides `beta1`.
    pub beta1: Option<f64>,
    /// Overrides `beta2`.
    pub beta2: Option<f64>,
    /// Overrides `eps`.
    pub eps: Option<f64>,
    /// Overrides `weight_decay`.
    pub weight_decay: Option<f64>,
    /// Overrides `decoupled_weight_decay`.
    pub decoupled_weight_decay: Option<bool>,
    /// Overrides `degenerate_to_sgd`.
    pub degenerate_to_sgd: Option<bool>,
    /// Overrides `rectify`.
    pub rectify: Option<bool>,
    /// Overrides the optimizer's [`StateFormat`] (e.g. [`StateFormat::Full`] to keep an
    /// embedding's moments in 32 bits under an 8-bit optimizer).
    pub state_format: Option<StateFormat>,
    /// Overrides `rounding` (how f16 / bf16 parameters take their update, [`Rounding`]).
    pub rounding: Option<Rounding>,
}

impl ParamGroup {
    fn with(name: &str, selector: Selector) -> Self {
        Self {
            name: name.to_string(),
            selector,
            lr_scale: None,
            beta1: None,
            beta2: None,
            eps: None,
            weight_decay: None,
            decoupled_weight_decay: None,
            degenerate_to_sgd: None,
            rectify: None,
            state_format: None,
            rounding: None,
        }
    }

    /// The variables with exactly these names.
    pub fn names<S: AsRef<str>>(name: &str, vars: &[S]) -> Self {
        Self::with(name, Selector::Names(vars.iter().map(|s| s.as_ref().to_string()).collect()))
    }

    /// The variables whose name matches any of the glob `patterns` (`globset` syntax, `*` also
    /// matching `.`). Errors on an invalid pattern.
    pub fn glob<S: AsRef<str>>(name: &str, patterns: &[S]) -> Result<Self> {
        let mut b = GlobSetBuilder::new();
        for p in patterns {
            let glob = Glob::new(p.as_ref()).map_err(|e| {
                candle_core::Error::Msg(format!("RAdam: group '{name}': bad glob pattern: {e}"))
            })?;
            b.add(glob);
        }
        let set = b.build().map_err(|e| {
            candle_core::Error::Msg(format!("RAdam: group '{name}': bad glob patterns: {e}"))
        })?;
        let patterns = patterns.iter().map(|s| s.as_ref().to_string()).collect();
        Ok(Self::with(name, Selector::Glob { set, patterns }))
    }

    /// The variables for which `f(name, var)` is true.
    pub fn predicate(name: &str, f: impl Fn(&str, &Var) -> bool + Send + Sync + 'static) -> Self {
        Self::with(name, Selector::Predicate(Arc::new(f)))
    }

    /// The standard recipe's group `"no_decay"` with `weight_decay = 0`. It selects every
    /// variable that
    /// - has rank 0 or 1 (scalars and vectors: biases, LayerNorm / RMSNorm / BatchNorm scales and
    ///   shifts, GPT-2's `ln_1.weight`, ...), or
    /// - has a name containing `bias` or `norm`, compared ASCII case-insensitively (so
    ///   `LayerNorm.weight`, `layer_norm.bias`, `final_norm.weight` and `attn.bias` all match,
    ///   whatever their rank).
    ///
    /// Everything else (weight matrices, embeddings, convolution kernels) keeps the optimizer's
    /// weight decay. Note that a name such as `normal_init.weight` contains `norm` and matches too.
    pub fn no_decay() -> Self {
        Self::predicate("no_decay", |name, var| {
            let lower = name.to_ascii_lowercase();
            var.rank() <= 1 || lower.contains("bias") || lower.contains("norm")
        })
        .weight_decay(0.0)
    }

    /// The group's name (in errors, [`RAdam::groups`](crate::RAdam::groups) and saved state).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Sets the learning-rate multiplier (`lr = lr_scale * optimizer lr`).
    pub fn lr_scale(mut self, x: f64) -> Self {
        self.lr_scale = Some(x);
        self
    }
    /// Sets both betas.
    pub fn betas(mut self, beta1: f64, beta2: f64) -> Self {
        self.beta1 = Some(beta1);
        self.beta2 = Some(beta2);
        self
    }
    /// Sets `eps`.
    pub fn eps(mut self, x: f64) -> Self {
        self.eps = Some(x);
        self
    }
    /// Sets `weight_decay`.
    pub fn weight_decay(mut self, x: f64) -> Self {
        self.weight_decay = Some(x);
        self
    }
    /// Sets `decoupled_weight_decay`.
    pub fn decoupled_weight_decay(mut self, x: bool) -> Self {
        self.decoupled_weight_decay = Some(x);
        self
    }
    /// Sets `degenerate_to_sgd`.
    pub fn degenerate_to_sgd(mut self, x: bool) -> Self {
        self.degenerate_to_sgd = Some(x);
        self
    }
    /// Sets `rectify`.
    pub fn rectify(mut self, x: bool) -> Self {
        self.rectify = Some(x);
        self
    }
    /// Sets `rounding` (e.g. [`Rounding::Remainder`] for the bf16 embeddings only).
    /// Changed by [`crate::RAdam::set_groups`], a variable's value is carried over (from
    /// remainder / Kahan the f32 master is stored under the new mode; from nearest / stochastic
    /// a new buffer starts at zero; rule in [`crate::RAdam::set_params`]).
    pub fn rounding(mut self, x: Rounding) -> Self {
        self.rounding = Some(x);
        self
    }

    /// Sets how the group's moments are stored. Under an optimizer with 8-bit state
    /// ([`crate::RAdam::with_state_format`]), `StateFormat::Full` is bitsandbytes' "stable
    /// embedding" advice: keep 32-bit state for the token embeddings (rare tokens' rows get
    /// rare, large updates that a shared block scale represents badly), e.g.
    /// `ParamGroup::glob("embeddings", &["*embed*"])?.state_format(StateFormat::Full)`; the
    /// reverse (`StateFormat::blockwise8()` on a group of an f32-state optimizer) quantizes
    /// only that group.
    pub fn state_format(mut self, x: StateFormat) -> Self {
        self.state_format = Some(x);
        self
    }

    /// Whether this group selects the variable `name`.
    pub fn matches(&self, name: &str, var: &Var) -> bool {
        match &self.selector {
            Selector::Names(n) => n.contains(name),
            Selector::Glob { set, .. } => set.is_match(name),
            Selector::Predicate(f) => f(name, var),
        }
    }

    /// Errors unless each exact name of a [`ParamGroup::names`] group, and each pattern of a
    /// [`ParamGroup::glob`] group, matches at least one of `vars` (the error names the first that
    /// does not).
    fn check_every_name_matches(&self, vars: &[(&str, &Var)]) -> Result<()> {
        match &self.selector {
            Selector::Names(n) => {
                let mut unknown: Vec<&String> =
                    n.iter().filter(|x| !vars.iter().any(|(v, _)| v == x)).collect();
                unknown.sort();
                if let Some(x) = unknown.first() {
                    bail!(
                        "RAdam: group '{}': no variable is named '{x}' ({} of its {} names match \
                         none)",
                        self.name,
                        unknown.len(),
                        n.len()
                    );
                }
            }
            Selector::Glob { set, patterns } => {
                let mut hit = vec![false; patterns.len()];
                for (v, _) in vars {
                    for i in set.matches(v) {
                        hit[i] = true;
                    }
                }
                if let Some(i) = hit.iter().position(|h| !h) {
                    bail!(
                        "RAdam: group '{}': pattern '{}' matches no variable",
                        self.name,
                        patterns[i]
                    );
                }
            }
            Selector::Predicate(_) => {}
        }
        Ok(())
    }

    /// The hyper-parameters of this group under the optimizer's `base` (not validated).
    pub fn effective(&self, base: &ParamsRAdam) -> ParamsRAdam {
        ParamsRAdam {
            lr: base.lr * self.lr_scale.unwrap_or(1.0),
            beta1: self.beta1.unwrap_or(base.beta1),
            beta2: self.beta2.unwrap_or(base.beta2),
            eps: self.eps.unwrap_or(base.eps),
            weight_decay: self.weight_decay.unwrap_or(base.weight_decay),
            decoupled_weight_decay: self
                .decoupled_weight_decay
                .unwrap_or(base.decoupled_weight_decay),
            degenerate_to_sgd: self.degenerate_to_sgd.unwrap_or(base.degenerate_to_sgd),
            rectify: self.rectify.unwrap_or(base.rectify),
            rounding: self.rounding.unwrap_or(base.rounding),
            ..base.clone()
        }
    }

    /// Validates the group's own multiplier and its effective hyper-parameters under `base`; the
    /// error names the group (the learning rate checked is the effective one).
    pub(crate) fn validate(&self, base: &ParamsRAdam) -> Result<()> {
        if let Some(s) = self.lr_scale {
            if !(s >= 0.0 && s.is_finite()) {
                bail!("RAdam: group '{}': lr_scale must be finite and >= 0, got {s}", self.name);
            }
            let lr = base.lr * s;
            if base.lr.is_finite() && !lr.is_finite() {
                bail!(
                    "RAdam: group '{}': its learning rate lr * lr_scale = {:e} * {s:e} overflows to {lr}",
                    self.name,
                    base.lr
                );
            }
        }
        self.effective(base)
            .validate()
            .map_err(|e| candle_core::Error::Msg(format!("group '{}': {e}", self.name)))
    }
}

/// A group as the optimizer reports it: its name, effective hyper-parameters and variables.
#[derive(Debug, Clone, PartialEq)]
pub struct GroupInfo {
    /// The group's name ([`DEFAULT_GROUP`] for the variables no group selects).
    pub name: String,
    /// The hyper-parameters its variables are updated with (learning rate included).
    pub params: ParamsRAdam,
    /// Names of its variables, in the optimizer's order.
    pub vars: Vec<String>,
    /// How its moments are stored (variables below the 8-bit threshold keep full moments).
    pub state_format: StateFormat,
}

/// Assigns every `(name, var)` to the first group that selects it (`groups.len()` for the
/// default group). Errors if two groups share a name (or use [`DEFAULT_GROUP`]), if a name of a
/// [`ParamGroup::names`] group or a pattern of a [`ParamGroup::glob`] group matches no variable
/// (a typo would otherwise go unnoticed; the error names it), or if a group ends up with no
/// variable: it selects none, or every variable it selects was taken by an earlier group (the
/// error names them).
pub(crate) fn assign<'a>(
    groups: &[ParamGroup],
    vars: impl Iterator<Item = (&'a str, &'a Var)>,
) -> Result<Vec<usize>> {
    let mut names = HashSet::new();
    for g in groups {
        if g.name == DEFAULT_GROUP {
            bail!("RAdam: group name '{DEFAULT_GROUP}' is reserved for the unselected variables");
        }
        if !names.insert(g.name.as_str()) {
            bail!("RAdam: group name '{}' is used twice", g.name);
        }
    }
    let vars: Vec<(&str, &Var)> = vars.collect();
    for g in groups {
        g.check_every_name_matches(&vars)?;
    }
    // For each group: how many variables it selects, and the earlier groups that took them.
    let mut selected = vec![0usize; groups.len()];
    let mut taken_by: Vec<BTreeSet<usize>> = vec![BTreeSet::new(); groups.len()];
    let out: Vec<usize> = vars
        .iter()
        .map(|&(name, var)| {
            let hits: Vec<usize> =
                (0..groups.len()).filter(|&i| groups[i].matches(name, var)).collect();
            for &i in &hits {
                selected[i] += 1;
                taken_by[i].insert(hits[0]);
            }
            hits.first().copied().unwrap_or(groups.len())
        })
        .collect();
    for (i, g) in groups.iter().enumerate() {
        if selected[i] == 0 {
            bail!("RAdam: group '{}' selects no variable ({:?})", g.name, g.selector);
        }
        if !out.contains(&i) {
            let earlier: Vec<String> =
                taken_by[i].iter().map(|&j| format!("'{}'", groups[j].name)).collect();
            bail!(
                "RAdam: group '{}' selects {} variable(s), but every one was taken by the earlier \
                 group(s) {} (the first group that selects a variable wins): reorder the groups or \
                 narrow the earlier ones",
                g.name,
                selected[i],
                earlier.join(", ")
            );
        }
    }
    Ok(out)
}
