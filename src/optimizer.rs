//! The [`RAdam`] optimizer: variables, their moments, the step counter, and `step`.

use candle_core::{backprop::GradStore, bail, Result, Tensor, Var};
use candle_nn::VarMap;
use rayon::prelude::*;

use crate::clip::{check_max_norm, clip_coef, grad_norm};
use crate::groups::{GroupInfo, ParamGroup, DEFAULT_GROUP};
use crate::moments::{moment_dtype, Moments};
use crate::params::{check_lr, NonFinite, ParamsRAdam};
use crate::precision::{Aux, Mode, Store};
use crate::quant::StateFormat;
use crate::rule::{ScalarSets, StepScalars};
use crate::scaler::{DynamicScale, LossScaler};

/// One optimized variable.
pub(crate) struct Slot {
    pub(crate) name: String,
    pub(crate) var: Var,
    pub(crate) moments: Moments,
    /// Index into `RAdam::groups`, or `groups.len()` for the default group.
    pub(crate) group: usize,
    /// This variable's step count `t` (torch's `state['step']`): steps it had a gradient on.
    pub(crate) step: u64,
    /// The buffer of its rounding mode ([`crate::Rounding`]) and the mode it holds data for.
    pub(crate) aux: Aux,
    pub(crate) aux_mode: Mode,
    /// Its stochastic-rounding stream key (from its name; saved and restored with the state).
    pub(crate) key: u64,
}

/// Rectified Adam. See the [crate] documentation for the algorithm.
///
/// Every variable has its own step count `t`, like torch's `state['step']`: it advances only on
/// the steps where that variable has a gradient (and the step is not skipped), and its bias
/// corrections and `rho_t` use it. A variable that first gets a gradient at optimizer step 10
/// (a layer unfrozen late, an expert first routed to, the generator of a GAN updated on
/// alternate steps) therefore takes its own first step, `t = 1`, exactly as in torch.
///
/// Variables belong to parameter groups ([`ParamGroup`], [`RAdam::with_groups`]); the ones no
/// group selects use the optimizer's [`ParamsRAdam`] directly.
pub struct RAdam {
    pub(crate) slots: Vec<Slot>,
    pub(crate) params: ParamsRAdam,
    pub(crate) groups: Vec<ParamGroup>,
    /// Optimizer steps taken: steps on which at least one variable had a gradient.
    pub(crate) t: u64,
    /// Steps skipped for non-finite gradients under [`NonFinite::Skip`].
    pub(crate) skipped: u64,
    /// A learning rate rejected by `set_learning_rate`, reported by every `step` until a valid
    /// one is set.
    pub(crate) bad_lr: Option<f64>,
    /// Built by [`RAdam::new`]: names are positions, so saved state is matched by fingerprint.
    pub(crate) positional: bool,
    /// Global-norm clipping threshold (`clip_grad_norm_`'s `max_norm`), shared by all groups.
    pub(crate) max_grad_norm: Option<f64>,
    /// Dynamic loss scaling.
    pub(crate) scaler: Option<DynamicScale>,
    /// The unclipped, unscaled gradient norm of the last step that computed one.
    pub(crate) last_grad_norm: Option<f64>,
    /// How the moments are stored (groups may override it).
    pub(crate) state_format: StateFormat,
}

impl std::fmt::Debug for RAdam {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RAdam")
            .field("params", &self.params)
            .field("groups", &self.groups)
            .field("vars", &self.slots.len())
            .field("step", &self.t)
            .field("skipped", &self.skipped)
            .field("max_grad_norm", &self.max_grad_norm)
            .field("scaler", &self.scaler)
            .finish()
    }
}

impl RAdam {
    /// An optimizer over `vars` named by position (`param.0`, `param.1`, ...; the names appear
    /// in errors and in saved state).
    ///
    /// Positions are not a stable identity (`VarMap::all_vars()` returns its variables in a
    /// different order in every process), so [`RAdam::load_state`] matches the saved moments to
    /// these variables by fingerprint (shape, dtype and a hash of the values, saved with the
    /// state) and refuses a file it cannot match unambiguously. Prefer
    /// [`RAdam::from_varmap`] or [`RAdam::new_named`], whose state is matched by name.
    pub fn new(vars: Vec<Var>, params: ParamsRAdam) -> Result<Self> {
        let named = vars.into_iter().enumerate().map(|(i, v)| (format!("param.{i}"), v)).collect();
        let mut opt = Self::new_named(named, params)?;
        opt.positional = true;
        Ok(opt)
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
            let moments = Moments::zeros(var.as_tensor(), false)
                .map_err(|e| e.context(format!("variable '{name}'")))?;
            params.rounding.check_from(
                var.dtype(),
                &name,
                "the optimizer's ParamsRAdam::rounding",
            )?;
            let mode = params.rounding.mode_for(var.dtype());
            let aux = Aux::zeros(var.as_tensor(), mode)?;
            let key = crate::precision::key_of(&name);
            slots.push(Slot { name, var, moments, group: 0, step: 0, aux, aux_mode: mode, key });
        }
        Ok(Self {
            slots,
            params,
            groups: Vec::new(),
            t: 0,
            skipped: 0,
            bad_lr: None,
            positional: false,
            max_grad_norm: None,
            scaler: None,
            last_grad_norm: None,
            state_format: StateFormat::Full,
        })
    }

    /// This optimizer with parameter groups (see [`RAdam::set_groups`]).
    ///
    /// ```
    /// use candle_core::{DType, Device};
    /// use candle_nn::{VarBuilder, VarMap};
    /// use candle_radam::{ParamGroup, ParamsRAdam, RAdam};
    /// # fn main() -> candle_core::Result<()> {
    /// let varmap = VarMap::new();
    /// let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
    /// let _fc = candle_nn::linear(8, 8, vb.pp("fc"))?;
    /// let _ln = candle_nn::layer_norm(8, 1e-5, vb.pp("ln"))?;
    /// let params = ParamsRAdam { weight_decay: 0.01, decoupled_weight_decay: true, ..Default::default() };
    /// let opt = RAdam::from_varmap(&varmap, params)?.with_groups(vec![ParamGroup::no_decay()])?;
    /// let groups = opt.groups();
    /// assert_eq!(groups[0].vars, ["fc.bias", "ln.bias", "ln.weight"]);
    /// assert_eq!(groups[1].vars, ["fc.weight"]); // the default group keeps weight_decay = 0.01
    /// # Ok(()) }
    /// ```
    pub fn with_groups(mut self, groups: Vec<ParamGroup>) -> Result<Self> {
        self.set_groups(groups)?;
        Ok(self)
    }

    /// Replaces the parameter groups. Each variable goes to the first group that selects it,
    /// the rest to the default group ([`DEFAULT_GROUP`], the optimizer's own [`ParamsRAdam`]).
    /// Moments and step counts are kept. Errors (changing nothing) if a group's effective
    /// hyper-parameters are invalid (the error names the group), if a name or glob pattern of a
    /// group matches no variable, if a group is left without variables (it selects none, or
    /// earlier groups took them all: the error names those), or if two groups share a name.
    /// A variable whose [`crate::Rounding`] changes has its master value converted to the new
    /// mode (the rule of [`RAdam::set_params`]).
    pub fn set_groups(&mut self, groups: Vec<ParamGroup>) -> Result<()> {
        for g in &groups {
            g.validate(&self.params)?;
        }
        let assigned =
            crate::groups::assign(&groups, self.slots.iter().map(|s| (s.name.as_str(), &s.var)))?;
        for (s, &g) in self.slots.iter().zip(&assigned) {
            let r = groups.get(g).and_then(|x| x.rounding).unwrap_or(self.params.rounding);
            r.check_from(s.var.dtype(), &s.name, &rounding_source(&groups, g))?;
        }
        let formats = |g: usize| groups.get(g).and_then(|x| x.state_format);
        let eight = self.plan_formats(&assigned, self.state_format, formats)?;
        self.convert_moments(&eight)?;
        for (s, g) in self.slots.iter_mut().zip(assigned) {
            s.group = g;
        }
        self.groups = groups;
        self.sync_aux()
    }

    /// Checks every variable's effective [`crate::Rounding`] against its dtype under `params`
    /// (the optimizer's, with the current groups).
    fn check_rounding(&self, params: &ParamsRAdam) -> Result<()> {
        for s in &self.slots {
            let r = self.groups.get(s.group).and_then(|x| x.rounding).unwrap_or(params.rounding);
            r.check_from(s.var.dtype(), &s.name, &rounding_source(&self.groups, s.group))?;
        }
        Ok(())
    }

    /// Gives every variable the buffer of its current mode (the rule of [`RAdam::set_params`]):
    /// kept while the mode stays the same; on a change from [`Mode::Remainder`] or
    /// [`Mode::Kahan`] (the f32 master is known: `p + remainder`, `p + c`) the master is stored
    /// under the new mode ([`crate::precision::split_values`]: nearest, or nearest and the
    /// rounded rest, or upper and lower halves); on a change from a mode without a buffer the
    /// new buffer is zero (the parameter is the master). All variables are converted first, then
    /// set: an error changes nothing.
    fn sync_aux(&mut self) -> Result<()> {
        let modes: Vec<Mode> = self
            .slots
            .iter()
            .map(|s| self.group_params(s.group).rounding.mode_for(s.var.dtype()))
            .collect();
        let mut new = Vec::new();
        for (i, (s, &mode)) in self.slots.iter().zip(&modes).enumerate() {
            if s.aux_mode == mode {
                continue;
            }
            let p = s.var.as_tensor();
            if s.aux_mode.has_aux() {
                let bits = half_bits(p)?;
                let x =
                    crate::precision::master_values(p.dtype(), &bits, &s.aux.to_vec()?, s.aux_mode);
                let (pb, aux) = crate::precision::split_values(p.dtype(), &x, mode);
                let pt = from_half_bits(p.dtype(), pb, p.shape())?.to_device(p.device())?;
                let aux = if mode.has_aux() { Aux::from_vec(p, aux)? } else { Aux::None };
                new.push((i, mode, Some(pt), aux));
            } else {
                new.push((i, mode, None, Aux::zeros(p, mode)?));
            }
        }
        for (i, mode, p, aux) in new {
            let s = &mut self.slots[i];
            if let Some(p) = p {
                s.var.set(&p)?;
            }
            s.aux = aux;
            s.aux_mode = mode;
        }
        Ok(())
    }

    /// The f32 master value of variable `name` (shaped like it): for a bf16 variable under
    /// [`crate::Rounding::Remainder`], the exact f32 rebuilt from the parameter (upper half) and
    /// its remainder (lower half); under [`crate::Rounding::Kahan`], `p + c` (param plus
    /// compensation, in f32); otherwise the parameter converted to f32 (f64 variables: their
    /// value, rounded to f32). On the variable's device (computed on the host: one copy each
    /// way). Errors if no variable has that name.
    pub fn master_weights(&self, name: &str) -> Result<Tensor> {
        let s = self.slot(name)?;
        let p = s.var.as_tensor();
        let cpu = candle_core::Device::Cpu;
        if !s.aux_mode.has_aux() {
            // Converted on the host: no candle kernel runs on the device.
            return p.to_device(&cpu)?.to_dtype(candle_core::DType::F32)?.to_device(p.device());
        }
        let bits = half_bits(p)?;
        let x = crate::precision::master_values(p.dtype(), &bits, &s.aux.to_vec()?, s.aux_mode);
        Tensor::from_vec(x, p.shape(), &cpu)?.to_device(p.device())
    }

    /// Sets variable `name` from f32 master values (a tensor of its shape, any float dtype,
    /// converted to f32 first), so that a bf16 run under [`crate::Rounding::Remainder`] starts
    /// from exactly these f32 values: the parameter gets their upper halves (truncation), the
    /// remainder their lower halves. Under [`crate::Rounding::Kahan`] the parameter gets the
    /// nearest half value and the compensation the rounded rest; otherwise the parameter is set
    /// to the values converted to its dtype (nearest even). Moments and step counts are kept.
    /// Errors if no variable has that name or the shape differs.
    pub fn set_master_weights(&mut self, name: &str, values: &Tensor) -> Result<()> {
        let i = self.slots.iter().position(|s| s.name == name);
        let Some(i) = i else { bail!("RAdam: no variable is named '{name}'") };
        let s = &mut self.slots[i];
        if values.dims() != s.var.dims() {
            bail!(
                "RAdam: set_master_weights('{name}'): values have shape {:?}, the variable {:?}",
                values.dims(),
                s.var.dims()
            );
        }
        // Converted on the host: no candle kernel runs on the device.
        let x = values.to_device(&candle_core::Device::Cpu)?.to_dtype(candle_core::DType::F32)?;
        if !s.aux_mode.has_aux() {
            return s.var.set(&x.to_dtype(s.var.dtype())?.to_device(s.var.device())?);
        }
        let flat = x.flatten_all()?.to_vec1::<f32>()?;
        let (p, aux) = crate::precision::split_values(s.var.dtype(), &flat, s.aux_mode);
        let p = from_half_bits(s.var.dtype(), p, s.var.shape())?;
        s.var.set(&p.to_device(s.var.device())?)?;
        s.aux = Aux::from_vec(s.var.as_tensor(), aux)?;
        Ok(())
    }

    fn slot(&self, name: &str) -> Result<&Slot> {
        match self.slots.iter().find(|s| s.name == name) {
            Some(s) => Ok(s),
            None => bail!("RAdam: no variable is named '{name}'"),
        }
    }

    /// Every group, the default group ([`DEFAULT_GROUP`]) last, with its effective
    /// hyper-parameters and the names of its variables (the default group is listed even when
    /// empty).
    pub fn groups(&self) -> Vec<GroupInfo> {
        (0..=self.groups.len())
            .map(|g| GroupInfo {
                name: self.group_name(g).to_string(),
                params: self.group_params(g),
                vars: self.slots.iter().filter(|s| s.group == g).map(|s| s.name.clone()).collect(),
                state_format: self.group_format(g),
            })
            .collect()
    }

    /// The name of group `g` (`groups.len()`: the default group).
    pub(crate) fn group_name(&self, g: usize) -> &str {
        self.groups.get(g).map_or(DEFAULT_GROUP, |x| x.name.as_str())
    }

    /// The effective hyper-parameters of group `g` (`groups.len()`: the default group).
    pub(crate) fn group_params(&self, g: usize) -> ParamsRAdam {
        match self.groups.get(g) {
            Some(x) => x.effective(&self.params),
            None => self.params.clone(),
        }
    }

    /// The optimizer's hyper-parameters (those of the default group; the groups' are in
    /// [`RAdam::groups`]).
    pub fn params(&self) -> &ParamsRAdam {
        &self.params
    }

    /// Replaces the hyper-parameters, validated, for the default group and as the base of every
    /// group (the error names the group whose effective values would be invalid; nothing changes
    /// then). Step counts and moments are kept.
    ///
    /// A variable whose [`crate::Rounding`] changes keeps its value as far as the new mode can
    /// hold it: from [`crate::Rounding::Remainder`] or [`crate::Rounding::Kahan`] the f32 master
    /// (`p + remainder`, `p + c`) is rebuilt and stored under the new mode (nearest and
    /// stochastic: the master rounded to nearest into the parameter; Kahan: `p` = the master
    /// rounded to nearest, `c` = the rest rounded; remainder: upper and lower halves, exact);
    /// from nearest or stochastic to remainder or Kahan the buffer starts at zero (the parameter
    /// is the master). [`RAdam::load_state`] has no master to convert: a buffer saved under
    /// another mode is not used and the buffer starts at zero (reported). The same rule applies
    /// in [`RAdam::set_groups`].
    pub fn set_params(&mut self, params: ParamsRAdam) -> Result<()> {
        params.validate()?;
        for g in &self.groups {
            g.validate(&params)?;
        }
        self.check_rounding(&params)?;
        self.params = params;
        self.bad_lr = None;
        self.sync_aux()
    }

    /// Optimizer steps taken: the steps on which at least one variable had a gradient and that
    /// were not skipped. A step without any gradient changes nothing, this count included.
    pub fn step_count(&self) -> u64 {
        self.t
    }

    /// The step count `t` of variable `name` (torch's `state['step']`): the steps on which it
    /// had a gradient. `None` if no variable has that name.
    pub fn var_step_count(&self, name: &str) -> Option<u64> {
        self.slots.iter().find(|s| s.name == name).map(|s| s.step)
    }

    /// Steps skipped because of non-finite gradients: under [`NonFinite::Skip`], or with a
    /// [`LossScaler`] (torch `GradScaler` skips `optimizer.step()` on those steps).
    pub fn skipped_steps(&self) -> u64 {
        self.skipped
    }

    /// The optimized variables, in order, with their names.
    pub fn vars(&self) -> impl Iterator<Item = (&str, &Var)> {
        self.slots.iter().map(|s| (s.name.as_str(), &s.var))
    }

    /// The scalars variable `name` will use on its next step (its branch, `rho_t`, `r_t`, step
    /// size, from its own step count and its group's hyper-parameters), or `None` if no variable
    /// has that name.
    pub fn next_step_scalars(&self, name: &str) -> Option<StepScalars> {
        let s = self.slots.iter().find(|s| s.name == name)?;
        Some(StepScalars::new(&self.group_params(s.group), s.step + 1))
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
            let by_slot = grads_by_slot(self.slots.len(), work, &[]);
            let mut found = None;
            for (slot_ids, items) in cuda_batches(&mut self.slots, &by_slot, &[]) {
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

    /// The non-finite guard of one step, with the global norm when clipping or loss scaling is on:
    /// `Some(grad_mult)` (the gradient multiplier of the update, [`crate::clip`]) to go on,
    /// `None` when the step is skipped (counted; the loss scale backed off), an error naming the
    /// first non-finite gradient under [`NonFinite::Error`].
    fn guard(&mut self, work: &[(usize, Tensor)]) -> Result<Option<f64>> {
        let policy = self.params.non_finite;
        let bad: Option<String>;
        let mut grad_mult = 1.0;
        if self.max_grad_norm.is_some() || self.scaler.is_some() {
            let sums = self.grad_sumsq(work)?;
            let scale = self.scaler.as_ref().map_or(1.0, DynamicScale::scale);
            let norm = grad_norm(sums.iter().sum(), scale);
            self.last_grad_norm = Some(norm);
            bad = sums
                .iter()
                .position(|x| !x.is_finite())
                .map(|j| self.slots[work[j].0].name.clone());
            grad_mult = clip_coef(norm, self.max_grad_norm) / scale;
            if let (Some(sc), Some(_)) = (&mut self.scaler, &bad) {
                sc.update(true);
                self.skipped += 1;
                return Ok(None);
            }
        } else if policy != NonFinite::Propagate {
            bad = self.first_nonfinite(work)?;
        } else {
            bad = None;
        }
        match (bad, policy) {
            (None, _) | (Some(_), NonFinite::Propagate) => Ok(Some(grad_mult)),
            (Some(_), NonFinite::Skip) => {
                self.skipped += 1;
                Ok(None)
            }
            (Some(name), NonFinite::Error) => bail!(
                "RAdam: non-finite gradient for '{name}' at step {}; nothing was updated",
                self.t + 1
            ),
        }
    }

    /// The sum of the squares of each gradient of `work` (in `work`'s order), in f64: one read of
    /// each gradient, CPU variables in parallel, CUDA ones in one launch per device and dtype.
    fn grad_sumsq(&mut self, work: &[(usize, Tensor)]) -> Result<Vec<f64>> {
        let mut out = vec![0.0; work.len()];
        let cpu: Vec<usize> =
            (0..work.len()).filter(|&j| self.slots[work[j].0].var.device().is_cpu()).collect();
        let sums =
            cpu.par_iter().map(|&j| crate::cpu::sumsq(&work[j].1)).collect::<Result<Vec<f64>>>()?;
        for (&j, x) in cpu.iter().zip(sums) {
            out[j] = x;
        }
        #[cfg(feature = "cuda")]
        {
            let mut pos = vec![usize::MAX; self.slots.len()];
            for (j, (i, _)) in work.iter().enumerate() {
                pos[*i] = j;
            }
            let by_slot = grads_by_slot(self.slots.len(), work, &[]);
            for (slot_ids, items) in cuda_batches(&mut self.slots, &by_slot, &[]) {
                for (i, x) in slot_ids.iter().zip(crate::cuda::sumsq(&items)?) {
                    out[pos[*i]] = x;
                }
            }
        }
        Ok(out)
    }

    /// Applies one step to every (slot, grad) pair, slot `work[j].0` with the scalar set
    /// `sets[set_of[j]]`.
    fn apply(
        &mut self,
        work: &[(usize, Tensor)],
        sets: &[StepScalars],
        set_of: &[u32],
        stores: &[Store],
    ) -> Result<()> {
        let by_slot = grads_by_slot(self.slots.len(), work, set_of);
        let mut store_of = vec![Store::NEAREST; self.slots.len()];
        for ((i, _), st) in work.iter().zip(stores) {
            store_of[*i] = *st;
        }
        #[cfg(feature = "cuda")]
        for (_, mut items) in cuda_batches(&mut self.slots, &by_slot, &store_of) {
            crate::cuda::step(&mut items, sets)?;
        }
        // CPU variables: in parallel across variables (each large one is also split in chunks).
        self.slots
            .par_iter_mut()
            .zip(by_slot.par_iter())
            .zip(store_of.par_iter())
            .filter_map(|((s, g), st)| match (&mut s.moments, g) {
                (m @ (Moments::Cpu(_) | Moments::Cpu8(_)), Some((g, k))) => {
                    Some((&s.var, *g, m, &sets[*k as usize], s.aux.cpu_slice(), *st))
                }
                _ => None,
            })
            .try_for_each(|(var, g, m, k, aux, st)| {
                crate::moments::cpu_step(var.as_tensor(), g, m, k, aux, st)
            })
    }
}

/// The gradient of each slot, if it has one, with the index of its scalar set (`set_of[j]` for
/// `work[j]`; `set_of` may be empty when only the gradients are wanted).
fn grads_by_slot<'a>(
    n: usize,
    work: &'a [(usize, Tensor)],
    set_of: &[u32],
) -> Vec<Option<(&'a Tensor, u32)>> {
    let mut by_slot = vec![None; n];
    for (j, (i, g)) in work.iter().enumerate() {
        by_slot[*i] = Some((g, set_of.get(j).copied().unwrap_or(0)));
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
    by_slot: &[Option<(&'a Tensor, u32)>],
    stores: &[Store],
) -> Vec<(Vec<usize>, Vec<crate::cuda::Item<'a>>)> {
    let mut batches: Vec<(&'a candle_core::Device, Vec<usize>, Vec<crate::cuda::Item<'a>>)> =
        Vec::new();
    for (i, (s, g)) in slots.iter_mut().zip(by_slot).enumerate() {
        let (Moments::Cuda(m), Some((g, set))) = (&mut s.moments, g) else { continue };
        let param = s.var.as_tensor();
        let aux = match &mut s.aux {
            Aux::Cuda(a, _) => Some(a),
            _ => None,
        };
        let store = stores.get(i).copied().unwrap_or(Store::NEAREST);
        let item = crate::cuda::Item { param, grad: g, moments: m, set: *set, aux, store };
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

/// The bits of an f16 / bf16 tensor, row-major.
/// Where the rounding of a variable in group `g` comes from, for errors: the group's own
/// setting, or the optimizer's default (`ParamsRAdam::rounding`) that the group inherits or that
/// the default group uses.
fn rounding_source(groups: &[ParamGroup], g: usize) -> String {
    match groups.get(g) {
        Some(x) if x.rounding.is_some() => format!("set by group '{}'", x.name),
        Some(x) => format!("the optimizer's default ParamsRAdam::rounding, inherited by group '{}'", x.name),
        None => format!(
            "the optimizer's default ParamsRAdam::rounding, used by the default group '{DEFAULT_GROUP}'"
        ),
    }
}

fn half_bits(t: &Tensor) -> Result<Vec<u16>> {
    let t = t.flatten_all()?;
    Ok(match t.dtype() {
        candle_core::DType::BF16 => {
            t.to_vec1::<half::bf16>()?.iter().map(|x| x.to_bits()).collect()
        }
        candle_core::DType::F16 => t.to_vec1::<half::f16>()?.iter().map(|x| x.to_bits()).collect(),
        d => bail!("RAdam: expected an f16 / bf16 tensor, got {d:?}"),
    })
}

/// A CPU tensor of `dtype` (f16 / bf16) from its bits.
fn from_half_bits(
    dtype: candle_core::DType,
    bits: Vec<u16>,
    shape: &candle_core::Shape,
) -> Result<Tensor> {
    let cpu = candle_core::Device::Cpu;
    match dtype {
        candle_core::DType::BF16 => {
            let x: Vec<half::bf16> = bits.into_iter().map(half::bf16::from_bits).collect();
            Tensor::from_vec(x, shape, &cpu)
        }
        candle_core::DType::F16 => {
            let x: Vec<half::f16> = bits.into_iter().map(half::f16::from_bits).collect();
            Tensor::from_vec(x, shape, &cpu)
        }
        d => bail!("RAdam: expected f16 / bf16, got {d:?}"),
    }
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
    /// [`NonFinite::Propagate`]); on an error nothing has changed. With clipping
    /// ([`RAdam::set_max_grad_norm`]) or loss scaling ([`RAdam::set_loss_scaler`]) that check
    /// also sums the squares of every gradient (one read of each) and the update multiplies
    /// every gradient by `clip coefficient / loss scale` ([`crate::clip`]). With a loss scaler,
    /// a step with a NaN / inf gradient is skipped (counted in [`RAdam::skipped_steps`]) and the
    /// scale backs off, whatever [`NonFinite`] says; a clean step advances the scaler.
    ///
    /// Variables without a gradient are skipped: their moments do not decay and their step
    /// counts do not advance (torch's `p.grad is None`). A call in which no variable has a gradient changes nothing, not even
    /// [`RAdam::step_count`].
    ///
    /// Errors, changing nothing, while a learning rate rejected by `set_learning_rate` is in
    /// force (see there).
    fn step(&mut self, grads: &GradStore) -> Result<()> {
        if let Some(lr) = self.bad_lr {
            bail!(
                "RAdam: learning rate {lr} (set by set_learning_rate) is invalid: it must be finite \
                 and >= 0; nothing was updated (set a valid learning rate to continue)"
            );
        }
        let work = self.collect_grads(grads)?;
        if work.is_empty() {
            return Ok(());
        }
        let Some(grad_mult) = self.guard(&work)? else {
            return Ok(()); // skipped
        };
        // One scalar set per distinct (group, per-variable t), the group parameters resolved once.
        let group_params: Vec<ParamsRAdam> =
            (0..=self.groups.len()).map(|g| self.group_params(g)).collect();
        let mut sets = ScalarSets::default();
        let set_of: Vec<u32> = work
            .iter()
            .map(|(i, _)| {
                let s = &self.slots[*i];
                sets.index(s.group, &group_params[s.group], s.step + 1)
            })
            .collect();
        for k in &mut sets.sets {
            k.grad_mult = grad_mult;
        }
        // How each param is stored: its mode and stochastic-rounding stream of (seed, key, t).
        let stores: Vec<Store> = work
            .iter()
            .map(|(i, _)| {
                let s = &self.slots[*i];
                let r = group_params[s.group].rounding;
                let mode = r.mode_for(s.var.dtype());
                let stream = if mode == Mode::Stochastic {
                    crate::precision::stream(r.seed(), s.key, s.step + 1)
                } else {
                    0
                };
                Store { mode, stream }
            })
            .collect();
        self.apply(&work, &sets.sets, &set_of, &stores)?;
        for (i, _) in &work {
            self.slots[*i].step += 1;
        }
        self.t += 1;
        if let Some(sc) = &mut self.scaler {
            sc.update(false);
        }
        Ok(())
    }

    /// `loss.backward()` then [`RAdam::step`](candle_nn::Optimizer::step), with the loss multiplied by the loss scale first
    /// when a [`LossScaler`] is set ([`RAdam::scale_loss`]).
    fn backward_step(&mut self, loss: &Tensor) -> Result<()> {
        let grads = self.scale_loss(loss)?.backward()?;
        self.step(&grads)
    }

    /// The learning rate last given (by [`RAdam::set_params`], `set_learning_rate` or
    /// [`RAdam::try_set_learning_rate`]); groups use it times their `lr_scale`.
    fn learning_rate(&self) -> f64 {
        self.bad_lr.unwrap_or(self.params.lr)
    }

    /// Sets the learning rate (of the default group, and the base of every group's
    /// `lr_scale`). The trait cannot return an error, so an invalid value (negative, NaN or
    /// infinite) is held back: the learning rate in use does not change, and every following
    /// `step` returns an error naming the value and changes nothing, until a valid learning rate
    /// is set (by this method, [`RAdam::try_set_learning_rate`] or [`RAdam::set_params`]).
    /// [`RAdam::try_set_learning_rate`] returns the error at once instead.
    fn set_learning_rate(&mut self, lr: f64) {
        if self.try_set_learning_rate(lr).is_err() {
            self.bad_lr = Some(lr);
        }
    }
}

impl RAdam {
    /// Sets the learning rate, rejecting a negative or non-finite one (nothing changes then).
    /// A valid value also clears an invalid one left by `set_learning_rate`.
    pub fn try_set_learning_rate(&mut self, lr: f64) -> Result<()> {
        check_lr(lr)?;
        let base = ParamsRAdam { lr, ..self.params.clone() };
        for g in &self.groups {
            g.validate(&base)?;
        }
        self.params.lr = lr;
        self.bad_lr = None;
        Ok(())
    }
}

/// Global-norm clipping and dynamic loss scaling ([`crate::clip`], [`LossScaler`]).
impl RAdam {
    /// This optimizer with global-norm gradient clipping (see [`RAdam::set_max_grad_norm`]).
    pub fn with_max_grad_norm(mut self, max_grad_norm: f64) -> Result<Self> {
        self.set_max_grad_norm(Some(max_grad_norm))?;
        Ok(self)
    }

    /// Clips the gradients to a global L2 norm of `max_grad_norm` on every step, as
    /// `torch.nn.utils.clip_grad_norm_(params, max_grad_norm)` before `optimizer.step()`: with
    /// `norm = sqrt(sum over every element of every gradient of the step of g^2)` (unscaled),
    /// the update uses `g * min(1, max_grad_norm / (norm + 1e-6))`. One norm for the whole
    /// optimizer (all parameter groups). The norm is summed in the non-finite guard's read of
    /// the gradients and the coefficient applied inside the fused update: no gradient is
    /// rewritten, no extra pass. `None` turns clipping off; `+inf` clips nothing (the trajectory
    /// is then bit-identical to an unclipped one) but still computes [`RAdam::last_grad_norm`].
    ///
    /// A non-finite norm is a non-finite gradient: [`NonFinite`] applies (a NaN norm under
    /// [`NonFinite::Propagate`] makes the update NaN, as in torch).
    ///
    /// Errors (nothing changes) if `max_grad_norm` is NaN or negative.
    pub fn set_max_grad_norm(&mut self, max_grad_norm: Option<f64>) -> Result<()> {
        if let Some(m) = max_grad_norm {
            check_max_norm(m)?;
        }
        self.max_grad_norm = max_grad_norm;
        Ok(())
    }

    /// The clipping threshold, `None` when not clipping.
    pub fn max_grad_norm(&self) -> Option<f64> {
        self.max_grad_norm
    }

    /// The global L2 norm of the gradients of the last step, unclipped and unscaled (divided by
    /// the loss scale): what fairseq logs as `gnorm`. NaN / inf for a step skipped or refused
    /// for a non-finite gradient. `None` until a step computes it (only with clipping or loss scaling
    /// on: the plain guard does not sum squares).
    pub fn last_grad_norm(&self) -> Option<f64> {
        self.last_grad_norm
    }

    /// This optimizer with dynamic loss scaling (see [`RAdam::set_loss_scaler`]).
    pub fn with_loss_scaler(mut self, scaler: LossScaler) -> Result<Self> {
        self.set_loss_scaler(Some(scaler))?;
        Ok(self)
    }

    /// Turns dynamic loss scaling on (`torch.amp.GradScaler` semantics, [`LossScaler`]) or off.
    /// The loss must then be multiplied by [`RAdam::loss_scale`] before `backward`
    /// ([`RAdam::scale_loss`]; `Optimizer::backward_step` does it). Each step divides the
    /// gradients by the scale inside the fused update, skips a step with a NaN / inf gradient
    /// (counted in [`RAdam::skipped_steps`]) and updates the scale. The scale is saved with the
    /// state. Setting a scaler starts it at its `init_scale` (load the state afterwards to
    /// resume a saved scale). Errors (nothing changes) if the scaler's configuration is invalid.
    pub fn set_loss_scaler(&mut self, scaler: Option<LossScaler>) -> Result<()> {
        self.scaler = scaler.map(DynamicScale::new).transpose()?;
        Ok(())
    }

    /// The loss scaler's configuration, if loss scaling is on.
    pub fn loss_scaler(&self) -> Option<&LossScaler> {
        self.scaler.as_ref().map(|s| &s.config)
    }

    /// Consecutive clean steps since the loss scale last changed (torch's `_growth_tracker`;
    /// the scale grows when it reaches `growth_interval`), if loss scaling is on.
    pub fn loss_scale_growth_tracker(&self) -> Option<u64> {
        self.scaler.as_ref().map(DynamicScale::growth_tracker)
    }

    /// The current loss scale (1 without a [`LossScaler`]).
    pub fn loss_scale(&self) -> f64 {
        self.scaler.as_ref().map_or(1.0, DynamicScale::scale)
    }

    /// `loss * loss_scale()` (torch `scaler.scale(loss)`), for `backward`. An f16 / bf16 loss is
    /// converted to f32 first (`2^16` is not an f16); other dtypes are kept. Without a scaler,
    /// the loss itself.
    pub fn scale_loss(&self, loss: &Tensor) -> Result<Tensor> {
        let Some(s) = &self.scaler else {
            return Ok(loss.clone());
        };
        let loss = match loss.dtype() {
            candle_core::DType::F16 | candle_core::DType::BF16 => {
                loss.to_dtype(candle_core::DType::F32)?
            }
            _ => loss.clone(),
        };
        loss.affine(s.scale(), 0.0)
    }
}

/// 8-bit optimizer state ([`StateFormat`], module [`crate::quant`]) and the memory of the state.
impl RAdam {
    /// This optimizer with its moments stored as `format` (see [`RAdam::set_state_format`]).
    pub fn with_state_format(mut self, format: StateFormat) -> Result<Self> {
        self.set_state_format(format)?;
        Ok(self)
    }

    /// Stores the moments of every variable as `format` ([`StateFormat::Full`], the default,
    /// or [`StateFormat::blockwise8()`]: block-wise dynamic 8-bit moments, about 2.03 bytes per
    /// parameter instead of 8), except in the groups that set their own
    /// ([`crate::ParamGroup::state_format`]); variables smaller than the format's
    /// `min_elements` keep full moments. Existing moments are converted (quantized or
    /// dequantized, [`crate::quant`]); step counts are kept.
    ///
    /// Errors, changing nothing, if an f64 variable would get 8-bit moments (give it a group
    /// with `StateFormat::Full`).
    pub fn set_state_format(&mut self, format: StateFormat) -> Result<()> {
        let assigned: Vec<usize> = self.slots.iter().map(|s| s.group).collect();
        let eight = self
            .plan_formats(&assigned, format, |g| self.groups.get(g).and_then(|x| x.state_format))?;
        self.convert_moments(&eight)?;
        self.state_format = format;
        Ok(())
    }

    /// The optimizer's state format (groups may override it: [`RAdam::groups`]).
    pub fn state_format(&self) -> StateFormat {
        self.state_format
    }

    /// The state format of group `g` (`groups.len()`: the default group).
    pub(crate) fn group_format(&self, g: usize) -> StateFormat {
        self.groups.get(g).and_then(|x| x.state_format).unwrap_or(self.state_format)
    }

    /// Whether each slot gets 8-bit moments under `base` and the groups' overrides, with the
    /// slots in groups `assigned`; errors for an f64 variable that would.
    fn plan_formats(
        &self,
        assigned: &[usize],
        base: StateFormat,
        group_format: impl Fn(usize) -> Option<StateFormat>,
    ) -> Result<Vec<bool>> {
        self.slots
            .iter()
            .zip(assigned)
            .map(|(s, &g)| {
                let eight = group_format(g).unwrap_or(base).quantizes(s.var.elem_count());
                if eight {
                    crate::moments::check_8bit_dtype(s.var.dtype())
                        .map_err(|e| e.context(format!("variable '{}'", s.name)))?;
                }
                Ok(eight)
            })
            .collect()
    }

    /// Converts the moments of every slot whose format changes (all converted first, then
    /// swapped in).
    fn convert_moments(&mut self, eight: &[bool]) -> Result<()> {
        let fresh = self
            .slots
            .iter()
            .zip(eight)
            .map(|(s, &e)| s.moments.converted(s.var.as_tensor(), e))
            .collect::<Result<Vec<_>>>()?;
        for (s, m) in self.slots.iter_mut().zip(fresh) {
            if let Some(m) = m {
                s.moments = m;
            }
        }
        Ok(())
    }

    /// Bytes of optimizer state allocated for every variable: its moments, 8 per element for
    /// f32 / f16 / bf16 variables with full moments (16 for f64), and for 8-bit ones 2 per
    /// element (the codes of `m` and `v`) plus 8 per block of [`crate::quant::BLOCK`] elements
    /// (their f32 absmax); plus 2 per element for an f16 / bf16 variable whose
    /// [`crate::Rounding`] keeps a buffer (`Remainder`, `Kahan`). A bf16 parameter under
    /// `Remainder` with 8-bit state thus costs 2 (the parameter) + 2.03 + 2 = 6.03 bytes, against
    /// 2 + 8 + 2 = 12 with full state. Step counts and other scalars are not counted.
    pub fn state_bytes(&self) -> usize {
        self.slots.iter().map(|s| s.moments.bytes() + s.aux.bytes()).sum()
    }

    /// [`RAdam::state_bytes`] per optimized parameter (element): 8 for f32 state, about 2.03
    /// under [`StateFormat::blockwise8()`] when most parameters are in tensors of 4096 elements
    /// or more (`2 + 8 / 256 = 2.03125` for a whole number of blocks), 2 more for f16 / bf16
    /// parameters under a rounding mode with a buffer. 0 without parameters.
    pub fn state_bytes_per_param(&self) -> f64 {
        let n: usize = self.slots.iter().map(|s| s.var.elem_count()).sum();
        if n == 0 {
            0.0
        } else {
            self.state_bytes() as f64 / n as f64
        }
    }

    /// Bytes of state of variable `name` ([`RAdam::state_bytes`]: moments and rounding buffer)
    /// and whether its moments are 8-bit, or `None` if no variable has that name.
    pub fn var_state(&self, name: &str) -> Option<(usize, bool)> {
        let s = self.slots.iter().find(|s| s.name == name)?;
        Some((s.moments.bytes() + s.aux.bytes(), s.moments.is_8bit()))
    }
}
