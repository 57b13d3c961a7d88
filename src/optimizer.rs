//! The [`RAdam`] optimizer: variables, their moments, the step counter, and `step`.

use candle_core::{backprop::GradStore, bail, Result, Tensor, Var};
use candle_nn::VarMap;
use rayon::prelude::*;

use crate::moments::{moment_dtype, Moments};
use crate::params::{check_lr, NonFinite, ParamsRAdam};
use crate::rule::StepScalars;

/// One optimized variable.
pub(crate) struct Slot {
    pub(crate) name: String,
    pub(crate) var: Var,
    pub(crate) moments: Moments,
}

/// Rectified Adam. See the [crate] documentation for the algorithm.
pub struct RAdam {
    pub(crate) slots: Vec<Slot>,
    pub(crate) params: ParamsRAdam,
    /// Steps taken so far (`t` of the last step).
    pub(crate) t: u64,
    /// Steps skipped for non-finite gradients under [`NonFinite::Skip`].
    pub(crate) skipped: u64,
}

impl std::fmt::Debug for RAdam {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RAdam")
            .field("params", &self.params)
            .field("vars", &self.slots.len())
            .field("step", &self.t)
            .field("skipped", &self.skipped)
            .finish()
    }
}

impl RAdam {
    /// An optimizer over `vars` named by position (`param.0`, `param.1`, ...; the names appear
    /// in errors and in saved state).
    pub fn new(vars: Vec<Var>, params: ParamsRAdam) -> Result<Self> {
        let named = vars.into_iter().enumerate().map(|(i, v)| (format!("param.{i}"), v)).collect();
        Self::new_named(named, params)
    }

    /// An optimizer over every variable of `varmap`, sorted by name (the names appear in errors
    /// and in saved state, so state saved from one `VarMap` loads into the same model).
    pub fn from_varmap(varmap: &VarMap, params: ParamsRAdam) -> Result<Self> {
        let mut named: Vec<(String, Var)> = {
            let data = varmap.data().lock().unwrap_or_else(|e| e.into_inner());
            data.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
        };
        named.sort_by(|a, b| a.0.cmp(&b.0));
        Self::new_named(named, params)
    }

    /// An optimizer over explicitly named variables (names must be unique).
    pub fn new_named(vars: Vec<(String, Var)>, params: ParamsRAdam) -> Result<Self> {
        params.validate()?;
        let mut seen_ids = std::collections::HashSet::new();
        let mut seen_names = std::collections::HashSet::new();
        let mut slots = Vec::with_capacity(vars.len());
        for (name, var) in vars {
            if !seen_ids.insert(var.id()) {
                bail!("RAdam: variable '{name}' is passed more than once");
            }
            if !seen_names.insert(name.clone()) {
                bail!("RAdam: variable name '{name}' is used twice");
            }
            if let Err(e) = moment_dtype(var.dtype()) {
                bail!("variable '{name}': {e}");
            }
            if !var.is_contiguous() {
                bail!("RAdam: variable '{name}' is not contiguous");
            }
            let moments = Moments::zeros(var.as_tensor())
                .map_err(|e| e.context(format!("variable '{name}'")))?;
            slots.push(Slot { name, var, moments });
        }
        Ok(Self { slots, params, t: 0, skipped: 0 })
    }

    /// The hyper-parameters.
    pub fn params(&self) -> &ParamsRAdam {
        &self.params
    }

    /// Replaces the hyper-parameters (validated). The step count and moments are kept.
    pub fn set_params(&mut self, params: ParamsRAdam) -> Result<()> {
        params.validate()?;
        self.params = params;
        Ok(())
    }

    /// Steps taken so far; the next step is `step_count() + 1`.
    pub fn step_count(&self) -> u64 {
        self.t
    }

    /// Steps skipped because of non-finite gradients under [`NonFinite::Skip`].
    pub fn skipped_steps(&self) -> u64 {
        self.skipped
    }

    /// The optimized variables, in order, with their names.
    pub fn vars(&self) -> impl Iterator<Item = (&str, &Var)> {
        self.slots.iter().map(|s| (s.name.as_str(), &s.var))
    }

    /// The scalars the next step will use (its branch, `rho_t`, `r_t`, step size).
    pub fn next_step_scalars(&self) -> StepScalars {
        StepScalars::new(&self.params, self.t + 1)
    }

    /// Checks every gradient against its variable before anything is changed and returns the
    /// (slot index, gradient) pairs to update. A gradient that is not contiguous, or that shares
    /// storage with its variable, is copied.
    fn collect_grads(&self, grads: &GradStore) -> Result<Vec<(usize, Tensor)>> {
        // The update writes every param while reading every grad (in parallel): a grad backed by
        // any param's storage would be read while written (or deadlock on its lock), so copy it.
        let param_storages: std::collections::HashSet<usize> =
            self.slots.iter().map(|s| storage_key(&s.var)).collect();
        let mut out = Vec::with_capacity(self.slots.len());
        for (i, s) in self.slots.iter().enumerate() {
            let Some(g) = grads.get(&s.var) else { continue };
            let name = &s.name;
            if g.shape() != s.var.shape() {
                bail!(
                    "RAdam: gradient of '{name}' has shape {:?}, the variable {:?}",
                    g.shape(),
                    s.var.shape()
                );
            }
            if g.dtype() != s.var.dtype() {
                bail!(
                    "RAdam: gradient of '{name}' has dtype {:?}, the variable {:?}",
                    g.dtype(),
                    s.var.dtype()
                );
            }
            if !g.device().same_device(s.var.device()) {
                bail!(
                    "RAdam: gradient of '{name}' is on {:?}, the variable on {:?}",
                    g.device(),
                    s.var.device()
                );
            }
            let g = if !g.is_contiguous() {
                g.contiguous()? // a fresh, row-major storage
            } else if param_storages.contains(&storage_key(g)) {
                g.copy()?
            } else {
                g.clone()
            };
            out.push((i, g));
        }
        Ok(out)
    }

    /// The name of the first variable whose gradient holds a NaN or an infinity.
    fn first_nonfinite(&mut self, work: &[(usize, Tensor)]) -> Result<Option<String>> {
        let cpu: Vec<&(usize, Tensor)> =
            work.iter().filter(|(i, _)| self.slots[*i].var.device().is_cpu()).collect();
        let flags = cpu
            .par_iter()
            .map(|(_, g)| crate::cpu::any_nonfinite(g))
            .collect::<Result<Vec<bool>>>()?;
        if let Some(k) = flags.iter().position(|&b| b) {
            return Ok(Some(self.slots[cpu[k].0].name.clone()));
        }
        #[cfg(feature = "cuda")]
        {
            let by_slot = grads_by_slot(self.slots.len(), work);
            let mut found = None;
            for (slot_ids, items) in cuda_batches(&mut self.slots, &by_slot) {
                if let Some(k) = crate::cuda::first_nonfinite(&items)? {
                    found = Some(slot_ids[k]);
                    break;
                }
            }
            if let Some(i) = found {
                return Ok(Some(self.slots[i].name.clone()));
            }
        }
        Ok(None)
    }

    /// Applies step `k` to every (slot, grad) pair.
    fn apply(&mut self, work: &[(usize, Tensor)], k: &StepScalars) -> Result<()> {
        let by_slot = grads_by_slot(self.slots.len(), work);
        #[cfg(feature = "cuda")]
        for (_, mut items) in cuda_batches(&mut self.slots, &by_slot) {
            crate::cuda::step(&mut items, k)?;
        }
        // CPU variables: in parallel across variables (each large one is also split in chunks).
        self.slots
            .par_iter_mut()
            .zip(by_slot.par_iter())
            .filter_map(|(s, g)| match (&mut s.moments, g) {
                (Moments::Cpu(m), Some(g)) => Some((&s.var, *g, m)),
                _ => None,
            })
            .try_for_each(|(var, g, m)| crate::cpu::step(var.as_tensor(), g, m, k))
    }
}

/// The gradient of each slot, if it has one.
fn grads_by_slot(n: usize, work: &[(usize, Tensor)]) -> Vec<Option<&Tensor>> {
    let mut by_slot = vec![None; n];
    for (i, g) in work {
        by_slot[*i] = Some(g);
    }
    by_slot
}

/// The CUDA variables that have a gradient, grouped by device handle (one multi-tensor launch
/// each, on that handle's stream), with their slot indices. Grouping uses
/// [`Device::same_device`](candle_core::Device::same_device), i.e. candle's per-handle device id,
/// not the ordinal: two `Device::new_cuda(0)` handles have their own streams and get their own
/// launches.
#[cfg(feature = "cuda")]
fn cuda_batches<'a>(
    slots: &'a mut [Slot],
    by_slot: &[Option<&'a Tensor>],
) -> Vec<(Vec<usize>, Vec<crate::cuda::Item<'a>>)> {
    let mut batches: Vec<(&'a candle_core::Device, Vec<usize>, Vec<crate::cuda::Item<'a>>)> =
        Vec::new();
    for (i, (s, g)) in slots.iter_mut().zip(by_slot).enumerate() {
        let (Moments::Cuda(m), Some(g)) = (&mut s.moments, g) else { continue };
        let param = s.var.as_tensor();
        let item = crate::cuda::Item { param, grad: g, moments: m };
        match batches.iter_mut().find(|(d, _, _)| d.same_device(param.device())) {
            Some((_, ids, items)) => {
                ids.push(i);
                items.push(item);
            }
            None => batches.push((param.device(), vec![i], vec![item])),
        }
    }
    batches.into_iter().map(|(_, ids, items)| (ids, items)).collect()
}

/// Identity of a tensor's storage (the address of the storage behind its lock).
fn storage_key(t: &Tensor) -> usize {
    let (storage, _) = t.storage_and_layout();
    &*storage as *const candle_core::Storage as usize
}

impl candle_nn::Optimizer for RAdam {
    type Config = ParamsRAdam;

    fn new(vars: Vec<Var>, params: ParamsRAdam) -> Result<Self> {
        RAdam::new(vars, params)
    }

    /// One RAdam step. Every gradient is checked first (shape, dtype, device; finiteness unless
    /// [`NonFinite::Propagate`]); on an error nothing has changed. Variables without a gradient
    /// are skipped (their moments do not decay).
    fn step(&mut self, grads: &GradStore) -> Result<()> {
        let work = self.collect_grads(grads)?;
        if self.params.non_finite != NonFinite::Propagate {
            if let Some(name) = self.first_nonfinite(&work)? {
                if self.params.non_finite == NonFinite::Skip {
                    self.skipped += 1;
                    return Ok(());
                }
                bail!(
                    "RAdam: non-finite gradient for '{name}' at step {}; nothing was updated",
                    self.t + 1
                );
            }
        }
        let k = StepScalars::new(&self.params, self.t + 1);
        self.apply(&work, &k)?;
        self.t += 1;
        Ok(())
    }

    fn learning_rate(&self) -> f64 {
        self.params.lr
    }

    /// Sets the learning rate. The trait cannot return an error: a negative or non-finite value
    /// is ignored (use [`RAdam::try_set_learning_rate`] to get the error).
    fn set_learning_rate(&mut self, lr: f64) {
        let _ = self.try_set_learning_rate(lr);
    }
}

impl RAdam {
    /// Sets the learning rate, rejecting a negative or non-finite one.
    pub fn try_set_learning_rate(&mut self, lr: f64) -> Result<()> {
        check_lr(lr)?;
        self.params.lr = lr;
        Ok(())
    }
}
