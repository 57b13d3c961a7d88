//! Saving and restoring the optimizer state (moments, step counts, groups) as safetensors.
//!
//! File layout (every tensor on CPU):
//! - for every variable `NAME`: `exp_avg.NAME` and `exp_avg_sq.NAME`, shaped like the variable,
//!   in the moment dtype (f32, or f64 for f64 variables);
//! - or, for a variable with 8-bit moments ([`crate::StateFormat::Blockwise8`]):
//!   `exp_avg_q8.NAME` and `exp_avg_sq_q8.NAME`, u8 codes shaped like the variable, and
//!   `exp_avg_absmax.NAME`, `exp_avg_sq_absmax.NAME`, f32 `[ceil(n / 256)]`, the block scales
//!   (maps and blocks in [`crate::quant`]): saved and restored bit for bit;
//! - `radam.var.NAME`: i64 `[4]`, the variable's record: its step count `t`, its dtype
//!   (0 f32, 1 f64, 2 f16, 3 bf16), the FNV-1a 64 hash of its shape, dtype and value bits at save
//!   time (as i64 bits), and the index of its group;
//! - `radam.group.I.GROUP`: f64 `[9]`, group `I` (named `GROUP`) as trained: `lr_scale`, `lr`,
//!   `beta1`, `beta2`, `eps`, `weight_decay`, `decoupled_weight_decay`, `degenerate_to_sgd`,
//!   `rectify` (booleans as 0 / 1);
//! - `radam.prec.NAME`: i64 `[3]`, the variable's rounding record: the mode its buffer holds
//!   data for (0 nearest, 1 remainder, 2 kahan, 3 stochastic; see [`crate::Rounding`]), its
//!   stochastic-rounding stream key and its stochastic-rounding seed (both as i64 bits; the seed
//!   is 0 for the other modes). Files written before the seed was saved hold `[2]` (no seed) and
//!   load as well;
//! - `radam.aux.NAME` (only for a variable whose mode keeps a buffer: bf16 remainder, f16 / bf16
//!   Kahan): i16 `[n]`, the u16 buffer's bits (the remainder's low halves, or the Kahan
//!   compensation as param-dtype bits);
//! - `radam.step` and `radam.skipped`: i64 `[1]`, the optimizer's step and skipped-step counts;
//! - `radam.loss_scale` (only with a [`crate::LossScaler`]): f64 `[2]`, the loss scale and the
//!   scaler's growth tracker (clean steps since the scale last changed), as torch's
//!   `GradScaler.state_dict()` keeps `scale` and `_growth_tracker`.
//!
//! Files written before per-variable steps (no `radam.var.*`, `radam.group.*`) load by name, and
//! by shape and dtype into a [`RAdam::new`] optimizer when those are unique: every variable then
//! gets `radam.step` as its step count.
//!
//! A variable's moments load in the format the optimizer gives it now: a 32-bit pair loaded into
//! an 8-bit variable is quantized, an 8-bit pair loaded into a variable with full moments is
//! dequantized to f32 (`map[code] * absmax`), and [`LoadReport::converted`] says so. So a run can
//! switch to or from 8-bit state at a resume.
//!
//! Rounding buffers: a variable whose current mode keeps a buffer gets the saved one when the
//! file holds one saved under the same mode; otherwise (file without it, saved under another
//! mode, or from before rounding modes) its buffer **starts at zero** (the remainder or
//! compensation of the parameter's value as it is), and [`LoadReport::rounding_changes`] says
//! so. A saved buffer the current mode does not use is dropped (also reported). (A mode change
//! on a running optimizer, [`RAdam::set_params`] / [`RAdam::set_groups`], converts instead:
//! there the master value is known; a load does not rebuild it from another mode's buffer.)
//! The stream key
//! comes from the file when it has one (so a resumed stochastic run continues its stream, even
//! for a positional optimizer whose variables came back in another order), else it stays the
//! one derived from the variable's name. The seed is not restored: a variable saved under
//! stochastic rounding with another seed than the one its group has now continues with the
//! optimizer's seed (another stream from there on), and [`LoadReport::rounding_changes`] says
//! so (a file without saved seeds reports nothing).
//!
//! The hyper-parameters are restored from the training script, not from the file: the saved
//! groups only serve to report a different grouping ([`LoadReport`]). Likewise the scaler's
//! configuration (growth factor, interval, ...) and the clipping threshold come from the script;
//! the saved scale is restored only into an optimizer that has a scaler.

use std::collections::{BTreeMap, HashMap};
use std::hash::Hasher;
use std::path::Path;

use candle_core::{bail, DType, Device, Result, Tensor};
use rayon::prelude::*;

use crate::cpu8::Moments8;
use crate::moments::{moment_dtype, Moments};
use crate::optimizer::RAdam;
use crate::params::ParamsRAdam;
use crate::precision::{Aux, Mode};

const STEP: &str = "radam.step";
const SKIPPED: &str = "radam.skipped";
const LOSS_SCALE: &str = "radam.loss_scale";
const VAR: &str = "radam.var.";
const GROUP: &str = "radam.group.";
const PREC: &str = "radam.prec.";
const AUX: &str = "radam.aux.";
const VAR_WORDS: usize = 4;
const GROUP_WORDS: usize = 9;

fn m_key(name: &str) -> String {
    format!("exp_avg.{name}")
}
fn v_key(name: &str) -> String {
    format!("exp_avg_sq.{name}")
}

/// Keys of an 8-bit moment pair: `m` codes, `m` absmax, `v` codes, `v` absmax.
fn q8_keys(name: &str) -> [String; 4] {
    [
        format!("{Q8_M}{name}"),
        format!("exp_avg_absmax.{name}"),
        format!("exp_avg_sq_q8.{name}"),
        format!("exp_avg_sq_absmax.{name}"),
    ]
}
const Q8_M: &str = "exp_avg_q8.";

fn counter(x: u64) -> Result<Tensor> {
    Tensor::new(&[x as i64], &Device::Cpu)
}

/// An i64 tensor of shape `[n]` as its values.
fn read_i64s(t: &Tensor, key: &str, n: usize) -> Result<Vec<i64>> {
    if t.dtype() != DType::I64 || t.dims() != [n] {
        bail!(
            "RAdam state: '{key}' must be an i64 tensor of shape [{n}], got {:?} {:?}",
            t.dtype(),
            t.dims()
        );
    }
    t.to_vec1::<i64>()
}

fn read_counter(t: &Tensor, key: &str) -> Result<u64> {
    let x = read_i64s(t, key, 1)?[0];
    if x < 0 {
        bail!("RAdam state: '{key}' is negative ({x})");
    }
    Ok(x as u64)
}

fn dtype_code(d: DType) -> i64 {
    match d {
        DType::F32 => 0,
        DType::F64 => 1,
        DType::F16 => 2,
        DType::BF16 => 3,
        _ => -1,
    }
}

/// The dtype a saved record's code stands for (codes as in [`dtype_code`]).
fn dtype_name(code: i64) -> &'static str {
    match code {
        0 => "F32",
        1 => "F64",
        2 => "F16",
        3 => "BF16",
        _ => "unknown",
    }
}

/// FNV-1a 64 of a tensor's shape, dtype and value bits (row-major, little endian): with the
/// dtype and shape, the fingerprint that identifies a variable of a positional optimizer.
fn fingerprint(t: &Tensor) -> Result<u64> {
    let t = t.to_device(&Device::Cpu)?.flatten_all()?;
    let mut h = fnv::FnvHasher::default();
    h.write_i64(dtype_code(t.dtype()));
    for d in t.dims() {
        h.write_u64(*d as u64);
    }
    macro_rules! bytes {
        ($ty:ty) => {
            for x in t.to_vec1::<$ty>()? {
                h.write(&x.to_le_bytes());
            }
        };
    }
    match t.dtype() {
        DType::F32 => bytes!(f32),
        DType::F64 => bytes!(f64),
        DType::F16 => bytes!(half::f16),
        DType::BF16 => bytes!(half::bf16),
        d => bail!("RAdam: cannot fingerprint a {d:?} tensor"),
    }
    Ok(h.finish())
}

/// The hyper-parameters a group is saved with (`lr_scale` first).
fn group_words(lr_scale: f64, p: &ParamsRAdam) -> [f64; GROUP_WORDS] {
    let b = |x: bool| x as u8 as f64;
    [
        lr_scale,
        p.lr,
        p.beta1,
        p.beta2,
        p.eps,
        p.weight_decay,
        b(p.decoupled_weight_decay),
        b(p.degenerate_to_sgd),
        b(p.rectify),
    ]
}

/// The differences between two saved group descriptions, `lr` excluded (schedules change it).
fn group_diff(old: &[f64; GROUP_WORDS], new: &[f64; GROUP_WORDS]) -> Vec<String> {
    const NAMES: [&str; GROUP_WORDS] = [
        "lr_scale",
        "lr",
        "beta1",
        "beta2",
        "eps",
        "weight_decay",
        "decoupled_weight_decay",
        "degenerate_to_sgd",
        "rectify",
    ];
    (0..GROUP_WORDS)
        .filter(|&i| i != 1 && old[i].to_bits() != new[i].to_bits())
        .map(|i| format!("{} {} -> {}", NAMES[i], old[i], new[i]))
        .collect()
}

/// What [`RAdam::load_state`] found besides the moments: how the saved variables were matched and
/// how the saved grouping differs from the current one. Print it (`Display`) after a resume; a
/// report for which [`LoadReport::is_clean`] holds has nothing to say.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LoadReport {
    /// The file predates per-variable step counts (one count for every variable) and groups.
    pub legacy: bool,
    /// `(variable, saved name)` for every variable of a positional optimizer ([`RAdam::new`])
    /// whose moments were saved under another position (the variables came in another order).
    pub remapped: Vec<(String, String)>,
    /// One line per change of grouping: variables that were trained in another group, or whose
    /// group has other hyper-parameters now (the learning rate excluded), with their number.
    pub group_changes: Vec<String>,
    /// One line per conversion of the moments' format at load: variables saved with 32-bit
    /// moments that were quantized to 8-bit (this optimizer's [`crate::StateFormat`] for them),
    /// or saved 8-bit and dequantized to f32, with their number.
    pub converted: Vec<String>,
    /// One line per kind of rounding-buffer change ([`crate::Rounding`]): buffers that start at
    /// zero (none saved, or saved under another mode) or saved ones that are dropped, and
    /// stochastic rounding saved with another seed than this optimizer's (the run continues
    /// with this optimizer's seed), with the number of variables.
    pub rounding_changes: Vec<String>,
}

impl LoadReport {
    /// True when there is nothing to report: the file is current, every variable was found under
    /// its own name and the grouping is the same.
    pub fn is_clean(&self) -> bool {
        !self.legacy
            && self.remapped.is_empty()
            && self.group_changes.is_empty()
            && self.converted.is_empty()
            && self.rounding_changes.is_empty()
    }
}

impl std::fmt::Display for LoadReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.is_clean() {
            return write!(f, "RAdam state: loaded as saved");
        }
        writeln!(f, "RAdam state:")?;
        if self.legacy {
            writeln!(
                f,
                "  file from before per-variable step counts: every variable gets the saved step count"
            )?;
        }
        if !self.remapped.is_empty() {
            writeln!(
                f,
                "  {} variables matched by fingerprint under another position, e.g. '{}' was saved as '{}'",
                self.remapped.len(),
                self.remapped[0].0,
                self.remapped[0].1
            )?;
        }
        for line in self.group_changes.iter().chain(&self.converted).chain(&self.rounding_changes) {
            writeln!(f, "  {line}")?;
        }
        Ok(())
    }
}

/// One saved variable's record.
#[derive(Clone, Copy)]
struct VarRecord {
    step: u64,
    dtype: i64,
    hash: u64,
    group: usize,
}

/// The groups saved in a file, by index: (name, hyper-parameters).
type SavedGroups = BTreeMap<usize, (String, [f64; GROUP_WORDS])>;

impl RAdam {
    /// Writes the moments, step counts, variable fingerprints and groups to `path` (safetensors;
    /// layout in the `state` module docs). The file is written next to its destination and
    /// renamed into place, so a crash never leaves a truncated state file.
    ///
    /// Errors (writing nothing) if `path` is a directory or names no file.
    pub fn save_state<P: AsRef<Path>>(&self, path: P) -> Result<()> {
        let path = path.as_ref();
        if path.is_dir() {
            bail!("RAdam: cannot save the state to {path:?}: it is a directory (give a file name)");
        }
        let hashes = self
            .slots
            .par_iter()
            .map(|s| fingerprint(s.var.as_tensor()))
            .collect::<Result<Vec<u64>>>()?;
        let mut tensors: HashMap<String, Tensor> = HashMap::with_capacity(5 * self.slots.len() + 2);
        for (s, h) in self.slots.iter().zip(hashes) {
            if let Some(q) = s.moments.to_8bit()? {
                let [mc, ma, vc, va] = q8_keys(&s.name);
                let (dev, shape) = (&Device::Cpu, s.var.shape());
                tensors.insert(mc, Tensor::from_vec(q.m, shape, dev)?);
                tensors.insert(ma, Tensor::new(q.m_absmax, dev)?);
                tensors.insert(vc, Tensor::from_vec(q.v, shape, dev)?);
                tensors.insert(va, Tensor::new(q.v_absmax, dev)?);
            } else {
                let (m, v) = s.moments.to_tensors(s.var.as_tensor())?;
                tensors.insert(m_key(&s.name), m);
                tensors.insert(v_key(&s.name), v);
            }
            let rec = [s.step as i64, dtype_code(s.var.dtype()), h as i64, s.group as i64];
            tensors.insert(format!("{VAR}{}", s.name), Tensor::new(&rec, &Device::Cpu)?);
            let seed = match self.group_params(s.group).rounding {
                crate::Rounding::Stochastic { seed } if s.aux_mode == Mode::Stochastic => seed,
                _ => 0,
            };
            let prec = [s.aux_mode as i64, s.key as i64, seed as i64];
            tensors.insert(format!("{PREC}{}", s.name), Tensor::new(&prec, &Device::Cpu)?);
            if s.aux_mode.has_aux() {
                let bits: Vec<i16> = s.aux.to_vec()?.into_iter().map(|x| x as i16).collect();
                let n = bits.len();
                tensors
                    .insert(format!("{AUX}{}", s.name), Tensor::from_vec(bits, n, &Device::Cpu)?);
            }
        }
        for g in 0..=self.groups.len() {
            let scale = self.groups.get(g).and_then(|x| x.lr_scale).unwrap_or(1.0);
            let words = group_words(scale, &self.group_params(g));
            tensors.insert(
                format!("{GROUP}{g}.{}", self.group_name(g)),
                Tensor::new(&words, &Device::Cpu)?,
            );
        }
        tensors.insert(STEP.to_string(), counter(self.t)?);
        tensors.insert(SKIPPED.to_string(), counter(self.skipped)?);
        if let Some(sc) = &self.scaler {
            let (scale, clean) = sc.state();
            tensors
                .insert(LOSS_SCALE.to_string(), Tensor::new(&[scale, clean as f64], &Device::Cpu)?);
        }

        let tmp = temp_path(path)?;
        let written = candle_core::safetensors::save(&tensors, &tmp).and_then(|()| {
            std::fs::rename(&tmp, path).map_err(|e| {
                candle_core::Error::Msg(format!("RAdam: renaming {tmp:?} to {path:?}: {e}"))
            })
        });
        if written.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        written
    }

    /// Restores the state saved by [`RAdam::save_state`] for the same variables (shapes and
    /// dtypes must match, the saved parameter dtype included, and the file must hold nothing
    /// else) and reports what differs ([`LoadReport`]). Moments no run can produce are refused:
    /// `exp_avg` must be finite, `exp_avg_sq` finite and `>= 0`, each with its pair. On any error
    /// the optimizer is left exactly as it was; a damaged file is an error, never a panic. The state may come
    /// from another device (saved on CUDA, loaded on CPU and back).
    ///
    /// How saved variables are found:
    /// - [`RAdam::from_varmap`] / [`RAdam::new_named`]: by name.
    /// - [`RAdam::new`] (names are positions, and the order of `VarMap::all_vars()` changes from
    ///   one process to the next): by fingerprint, the shape, dtype and a hash of the values
    ///   saved with the state. Every variable must match exactly one saved variable, so **load
    ///   the model weights first**; if the values differ (weights not loaded yet) or several
    ///   variables hold identical values with different moments, loading fails with an error
    ///   saying so, never a silent wrong mapping. Variables with identical values *and* identical
    ///   saved state (moments and
    ///   step count bit for bit, e.g. frozen norms still at their initial ones) are
    ///   interchangeable and load in any order (each keeps its own position when that is one of
    ///   them). Files from before fingerprints are matched by shape and dtype only, which must
    ///   then be unique (else load them with [`RAdam::new_named`], naming the variables
    ///   `param.0`, `param.1`, ... in the saved order).
    ///
    /// Per-variable step counts come from the file (files from before them: every variable gets
    /// the saved optimizer step count). Loading into a different grouping is allowed and
    /// reported. The loss scale and its growth tracker are restored when this optimizer has a
    /// [`crate::LossScaler`] (a file without them leaves the scaler as it is; an optimizer
    /// without a scaler ignores them).
    pub fn load_state<P: AsRef<Path>>(&mut self, path: P) -> Result<LoadReport> {
        let path = path.as_ref();
        let mut file = candle_core::safetensors::load(path, &Device::Cpu)
            .map_err(|e| e.context(format!("RAdam: reading state from {path:?}")))?;
        let t = read_counter(file.get(STEP).ok_or_else(|| missing(path, STEP))?, STEP)?;
        let skipped =
            read_counter(file.get(SKIPPED).ok_or_else(|| missing(path, SKIPPED))?, SKIPPED)?;
        file.remove(STEP);
        file.remove(SKIPPED);
        // The loss scaler's state, checked now, restored with everything else.
        let mut scaler = self.scaler.clone();
        if let Some(x) = file.remove(LOSS_SCALE) {
            if x.dtype() != DType::F64 || x.dims() != [2] {
                bail!("RAdam state: '{LOSS_SCALE}' must be an f64 tensor of shape [2]");
            }
            let w = x.to_vec1::<f64>()?;
            if !(w[1] >= 0.0 && w[1].fract() == 0.0 && w[1] < 2f64.powi(53)) {
                bail!("RAdam state: '{LOSS_SCALE}' holds an invalid growth tracker {}", w[1]);
            }
            if let Some(sc) = &mut scaler {
                sc.set_state(w[0], w[1] as u64)?;
            }
        }

        // Records and groups (absent in legacy files).
        let mut records: HashMap<String, VarRecord> = HashMap::new();
        let mut groups: SavedGroups = BTreeMap::new();
        let keys: Vec<String> = file.keys().cloned().collect();
        // Mode, stream key and seed (None: a file from before the seed was saved).
        let mut precs: HashMap<String, (Mode, u64, Option<u64>)> = HashMap::new();
        let mut auxes: HashMap<String, Vec<u16>> = HashMap::new();
        for key in keys {
            if let Some(name) = key.strip_prefix(PREC) {
                let words = if file[&key].dims() == [2] { 2 } else { 3 };
                let r = read_i64s(&file[&key], &key, words)?;
                let Some(mode) = Mode::from_code(r[0]) else {
                    bail!("RAdam state: '{key}' holds an invalid rounding record {r:?}");
                };
                precs.insert(name.to_string(), (mode, r[1] as u64, r.get(2).map(|&x| x as u64)));
                file.remove(&key);
            } else if let Some(name) = key.strip_prefix(AUX) {
                let x = &file[&key];
                if x.dtype() != DType::I16 || x.rank() != 1 {
                    bail!(
                        "RAdam state: '{key}' must be an i16 tensor of rank 1, got {:?} {:?}",
                        x.dtype(),
                        x.dims()
                    );
                }
                auxes.insert(
                    name.to_string(),
                    x.to_vec1::<i16>()?.into_iter().map(|b| b as u16).collect(),
                );
                file.remove(&key);
            } else if let Some(name) = key.strip_prefix(VAR) {
                let r = read_i64s(&file[&key], &key, VAR_WORDS)?;
                if r[0] < 0 || r[0] as u64 > t || !(0..=3).contains(&r[1]) || r[3] < 0 {
                    bail!("RAdam state: '{key}' holds an invalid record {r:?}");
                }
                let rec = VarRecord {
                    step: r[0] as u64,
                    dtype: r[1],
                    hash: r[2] as u64,
                    group: r[3] as usize,
                };
                records.insert(name.to_string(), rec);
                file.remove(&key);
            } else if let Some(rest) = key.strip_prefix(GROUP) {
                let Some((idx, name)) = rest.split_once('.') else {
                    bail!("RAdam state: '{key}' is not a group record");
                };
                let Ok(idx) = idx.parse::<usize>() else {
                    bail!("RAdam state: '{key}' is not a group record");
                };
                let x = &file[&key];
                if x.dtype() != DType::F64 || x.dims() != [GROUP_WORDS] {
                    bail!("RAdam state: '{key}' must be an f64 tensor of shape [{GROUP_WORDS}]");
                }
                let w: [f64; GROUP_WORDS] = x.to_vec1::<f64>()?.try_into().unwrap_or_default();
                if groups.insert(idx, (name.to_string(), w)).is_some() {
                    bail!("RAdam state: group {idx} is saved twice");
                }
                file.remove(&key);
            }
        }
        let legacy = records.is_empty() && groups.is_empty();
        // The saved variables, by name: every `exp_avg.X` (its pair is checked below).
        let mut saved: Vec<String> = file
            .keys()
            .filter_map(|k| k.strip_prefix("exp_avg.").or_else(|| k.strip_prefix(Q8_M)))
            .map(str::to_string)
            .collect();
        saved.sort();
        // Every moment has its pair, and the pair is possible (before anything indexes them).
        let mut q8: HashMap<String, Moments8> = HashMap::new();
        for name in &saved {
            if file.contains_key(&q8_keys(name)[0]) {
                if file.contains_key(&m_key(name)) {
                    bail!("RAdam state: '{name}' is saved both with 32-bit and 8-bit moments");
                }
                q8.insert(name.clone(), read_q8(&file, name, path)?);
                continue;
            }
            let m = file.get(&m_key(name)).ok_or_else(|| missing(path, &m_key(name)))?;
            let v = file.get(&v_key(name)).ok_or_else(|| missing(path, &v_key(name)))?;
            check_moment_pair(name, m, v)?;
        }
        let q8_key_count = 4 * q8.len();
        let q8_in_file = file
            .keys()
            .filter(|k| {
                ["exp_avg_q8.", "exp_avg_absmax.", "exp_avg_sq_q8.", "exp_avg_sq_absmax."]
                    .iter()
                    .any(|p| k.starts_with(p))
            })
            .count();
        if q8_in_file != q8_key_count {
            bail!(
                "RAdam state: {path:?} holds 8-bit moment tensors without their 'exp_avg_q8.*' \
                 (damaged file?)"
            );
        }
        if let Some(name) = file.keys().filter_map(|k| k.strip_prefix("exp_avg_sq.")).min() {
            if !file.contains_key(&m_key(name)) {
                return Err(missing(path, &m_key(name)));
            }
        }
        if !legacy {
            for name in &saved {
                let Some(r) = records.get(name) else {
                    bail!("RAdam state: {path:?} has moments for '{name}' but no '{VAR}{name}'");
                };
                if !groups.contains_key(&r.group) {
                    bail!("RAdam state: '{VAR}{name}' names group {}, which is not saved", r.group);
                }
            }
            if let Some(name) = records
                .keys()
                .find(|n| !file.contains_key(&m_key(n)) && !q8.contains_key(n.as_str()))
            {
                bail!("RAdam state: {path:?} has '{VAR}{name}' but no '{}'", m_key(name));
            }
        }
        // Rounding records and buffers belong to saved variables; a buffer needs its record
        // and the length of its variable.
        // (Elements of a saved variable: its 32-bit `m`, or its 8-bit codes.)
        let saved_len = |name: &str| {
            file.get(&m_key(name)).map(|m| m.elem_count()).or_else(|| q8.get(name).map(|q| q.len()))
        };
        for name in precs.keys().chain(auxes.keys()) {
            if saved_len(name).is_none() {
                bail!(
                    "RAdam state: {path:?} has a rounding record or buffer for '{name}' but no \
                     '{}'",
                    m_key(name)
                );
            }
        }
        for (name, a) in &auxes {
            let n = saved_len(name).unwrap_or_default();
            match precs.get(name) {
                None => bail!(
                    "RAdam state: {path:?} has the rounding buffer '{AUX}{name}' but no rounding \
                     record '{PREC}{name}' (damaged file?)"
                ),
                Some((mode, ..)) if !mode.has_aux() => bail!(
                    "RAdam state: '{PREC}{name}' says {}, a mode without a buffer, but the file \
                     has the buffer '{AUX}{name}' (damaged file?)",
                    mode.name()
                ),
                Some(_) if a.len() != n => bail!(
                    "RAdam state: '{AUX}{name}' has {} elements, its variable {n} (damaged \
                     file?)",
                    a.len()
                ),
                Some(_) => {}
            }
        }

        // Which saved variable each slot takes.
        let source: Vec<String> = if self.positional {
            self.match_by_fingerprint(&file, &q8, &saved, &records, legacy, path)?
        } else {
            for s in &self.slots {
                if let Some(r) = records.get(&s.name) {
                    if r.dtype != dtype_code(s.var.dtype()) {
                        bail!(
                            "RAdam state: '{}' was saved for a {} variable, but it is {:?} now \
                             (shapes and dtypes must match)",
                            s.name,
                            dtype_name(r.dtype),
                            s.var.dtype()
                        );
                    }
                }
            }
            self.slots.iter().map(|s| s.name.clone()).collect()
        };

        // Build every new moment buffer first; swap them in only when all are good.
        let mut fresh = Vec::with_capacity(self.slots.len());
        let mut steps = Vec::with_capacity(self.slots.len());
        let mut conversions: BTreeMap<&str, usize> = BTreeMap::new();
        let mut fresh_aux = Vec::with_capacity(self.slots.len());
        let mut rounding: BTreeMap<String, usize> = BTreeMap::new();
        for (s, src) in self.slots.iter().zip(&source) {
            let want = moment_dtype(s.var.dtype())?;
            let mut take = |key: String| -> Result<Tensor> {
                let x = file.remove(&key).ok_or_else(|| missing(path, &key))?;
                if x.dims() != s.var.dims() || x.dtype() != want {
                    bail!(
                        "RAdam state: '{key}' is {:?} {:?}, expected {:?} {:?} for variable '{}'",
                        x.dtype(),
                        x.dims(),
                        want,
                        s.var.dims(),
                        s.name
                    );
                }
                Ok(x)
            };
            let eight = s.moments.is_8bit();
            let name = &s.name;
            let moments = if let Some(q) = q8.remove(src) {
                if q.len() != s.var.elem_count() || file[&q8_keys(src)[0]].dims() != s.var.dims() {
                    bail!(
                        "RAdam state: '{}' is {:?}, expected {:?} for variable '{name}'",
                        q8_keys(src)[0],
                        file[&q8_keys(src)[0]].dims(),
                        s.var.dims()
                    );
                }
                for k in q8_keys(src) {
                    file.remove(&k);
                }
                if !eight {
                    *conversions.entry("8-bit moments dequantized to f32").or_default() += 1;
                }
                Moments::from_8bit(s.var.as_tensor(), q, eight)
                    .map_err(|e| e.context(format!("variable '{name}'")))?
            } else {
                let (m, v) = (take(m_key(src))?, take(v_key(src))?);
                if eight {
                    *conversions.entry("32-bit moments quantized to 8-bit").or_default() += 1;
                }
                Moments::from_tensors(s.var.as_tensor(), &m, &v, eight)?
            };
            fresh.push(moments);
            steps.push(records.get(src).map_or(t, |r| r.step));
            // The rounding buffer and stream key (rule in the module docs).
            let saved = precs.get(src).copied();
            if let (Some((Mode::Stochastic, _, Some(old))), crate::Rounding::Stochastic { seed }) =
                (saved, self.group_params(s.group).rounding)
            {
                if s.aux_mode == Mode::Stochastic && old != seed {
                    let line = format!(
                        "stochastic rounding saved with seed {old}, continues with this \
                         optimizer's seed {seed} (another random stream)"
                    );
                    *rounding.entry(line).or_default() += 1;
                }
            }
            let saved_aux = auxes.get(src).filter(|a| a.len() == s.var.elem_count());
            let aux = match (s.aux_mode.has_aux(), saved, saved_aux) {
                (true, Some((mode, ..)), Some(a)) if mode == s.aux_mode => {
                    Aux::from_vec(s.var.as_tensor(), a.clone())?
                }
                (true, ..) => {
                    let why = match saved {
                        Some((mode, ..)) if mode != s.aux_mode => {
                            format!("saved under {}", mode.name())
                        }
                        _ => "none saved".to_string(),
                    };
                    let line = format!("{} buffer starts at zero ({why})", s.aux_mode.name());
                    *rounding.entry(line).or_default() += 1;
                    Aux::zeros(s.var.as_tensor(), s.aux_mode)?
                }
                (false, Some((mode, ..)), _) if mode.has_aux() => {
                    let line = format!(
                        "saved {} buffer dropped (the variable is updated with {} now)",
                        mode.name(),
                        s.aux_mode.name()
                    );
                    *rounding.entry(line).or_default() += 1;
                    Aux::None
                }
                _ => Aux::None,
            };
            fresh_aux.push((aux, saved.map_or(s.key, |(_, key, _)| key)));
        }
        if let Some(extra) = file.keys().min() {
            bail!("RAdam state: {path:?} holds '{extra}', which is no variable of this optimizer (another model?)");
        }

        let report = LoadReport {
            legacy,
            remapped: self
                .slots
                .iter()
                .zip(&source)
                .filter(|(s, src)| s.name != **src)
                .map(|(s, src)| (s.name.clone(), src.clone()))
                .collect(),
            group_changes: if legacy {
                Vec::new()
            } else {
                self.group_changes(&source, &records, &groups)
            },
            converted: conversions
                .into_iter()
                .map(|(what, n)| {
                    format!("{n} variable(s) saved with {what} (this optimizer's state format)")
                })
                .collect(),
            rounding_changes: rounding
                .into_iter()
                .map(|(line, n)| format!("{n} variable(s): {line}"))
                .collect(),
        };
        for (((s, m), step), (aux, key)) in
            self.slots.iter_mut().zip(fresh).zip(steps).zip(fresh_aux)
        {
            s.moments = m;
            s.step = step;
            s.aux = aux;
            s.key = key;
        }
        self.t = t;
        self.skipped = skipped;
        self.scaler = scaler;
        Ok(report)
    }

    /// For a positional optimizer: the saved name each slot's moments are under, found by
    /// fingerprint (shape, dtype, value hash; legacy files: shape and moment dtype). Errors unless
    /// every slot has exactly one candidate.
    fn match_by_fingerprint(
        &self,
        file: &HashMap<String, Tensor>,
        q8: &HashMap<String, Moments8>,
        saved: &[String],
        records: &HashMap<String, VarRecord>,
        legacy: bool,
        path: &Path,
    ) -> Result<Vec<String>> {
        let hashes = if legacy {
            vec![0; self.slots.len()]
        } else {
            self.slots
                .par_iter()
                .map(|s| fingerprint(s.var.as_tensor()))
                .collect::<Result<Vec<u64>>>()?
        };
        let advice = "the optimizer was built with RAdam::new, whose variable names are positions \
                      (and VarMap::all_vars() returns the variables in a different order in every \
                      process): load the model weights before the optimizer state, or build the \
                      optimizer with RAdam::from_varmap / RAdam::new_named so that state is \
                      matched by name";
        let legacy_advice = "this file predates fingerprints, so variables of the same shape and \
                             dtype cannot be told apart in an RAdam::new optimizer: load it into \
                             an optimizer built with RAdam::new_named, naming the variables \
                             'param.0', 'param.1', ... in the order they had when the state was \
                             saved (RAdam::from_varmap cannot load it: its names differ), then \
                             save it again in the current format";
        let mut used = std::collections::HashSet::new();
        let mut out = Vec::with_capacity(self.slots.len());
        for (s, h) in self.slots.iter().zip(hashes) {
            let want = moment_dtype(s.var.dtype())?;
            let candidates: Vec<&String> = saved
                .iter()
                .filter(|n| {
                    (file
                        .get(&m_key(n))
                        .is_some_and(|m| m.dims() == s.var.dims() && m.dtype() == want)
                        || (q8.contains_key(n.as_str())
                            && file[&q8_keys(n)[0]].dims() == s.var.dims()))
                        && (legacy
                            || records.get(n.as_str()).is_some_and(|r| {
                                r.dtype == dtype_code(s.var.dtype()) && r.hash == h
                            }))
                })
                .collect();
            let what = if legacy {
                "shape and dtype (this state file predates fingerprints)"
            } else {
                "shape, dtype and values"
            };
            // Several candidates whose saved state is identical (moments bit for bit, step count):
            // e.g. frozen LayerNorms still at their initial ones. Any of them is the right state.
            let same = |key: fn(&str) -> String, a: &str, b: &str| match (
                file.get(&key(a)),
                file.get(&key(b)),
            ) {
                (Some(x), Some(y)) => same_bits(x, y),
                _ => false,
            };
            let interchangeable = candidates.len() > 1
                && candidates.iter().all(|c| {
                    records.get(c.as_str()).map(|r| r.step)
                        == records.get(candidates[0].as_str()).map(|r| r.step)
                        && ((same(m_key, c, candidates[0]) && same(v_key, c, candidates[0]))
                            || q8
                                .get(c.as_str())
                                .is_some_and(|q| q8.get(candidates[0].as_str()) == Some(q)))
                });
            let free: Vec<&&String> =
                candidates.iter().filter(|c| !used.contains(c.as_str())).collect();
            // Among equal candidates, the variable's own position first: an unchanged order is
            // then reported as such.
            let pick = free.iter().find(|c| c.as_str() == s.name).or(free.first());
            let advice = if legacy { legacy_advice } else { advice };
            match (candidates.as_slice(), pick) {
                ([_], Some(one)) => {
                    used.insert(one.as_str());
                    out.push(one.to_string())
                }
                (_, Some(one)) if interchangeable => {
                    used.insert(one.as_str());
                    out.push(one.to_string())
                }
                ([], _) => bail!(
                    "RAdam state: no variable saved in {path:?} has the {what} of '{}' ({:?} {:?}); {advice}",
                    s.name,
                    s.var.dtype(),
                    s.var.dims()
                ),
                (many, _) => bail!(
                    "RAdam state: {} variables saved in {path:?} have the {what} of '{}' ({:?} {:?}), \
                     so which moments are its own cannot be told; {advice}",
                    many.len(),
                    s.name,
                    s.var.dtype(),
                    s.var.dims()
                ),
            }
        }
        Ok(out)
    }

    /// The report lines for variables trained in another group or under other hyper-parameters.
    fn group_changes(
        &self,
        source: &[String],
        records: &HashMap<String, VarRecord>,
        groups: &SavedGroups,
    ) -> Vec<String> {
        // (saved group, current group, differences) -> number of variables.
        let mut changes: BTreeMap<(String, String, Vec<String>), usize> = BTreeMap::new();
        for (s, src) in self.slots.iter().zip(source) {
            let Some(r) = records.get(src) else { continue };
            let (old_name, old) = &groups[&r.group];
            let scale = self.groups.get(s.group).and_then(|x| x.lr_scale).unwrap_or(1.0);
            let new = group_words(scale, &self.group_params(s.group));
            let new_name = self.group_name(s.group);
            let diff = group_diff(old, &new);
            if old_name != new_name || !diff.is_empty() {
                *changes.entry((old_name.clone(), new_name.to_string(), diff)).or_default() += 1;
            }
        }
        changes
            .into_iter()
            .map(|((old, new, diff), n)| {
                let moved = if old == new {
                    format!("group '{new}'")
                } else {
                    format!("saved in group '{old}', now in '{new}'")
                };
                let diff =
                    if diff.is_empty() { String::new() } else { format!(": {}", diff.join(", ")) };
                format!("{n} variable(s) {moved}{diff}")
            })
            .collect()
    }
}

/// Whether two moment tensors (same shape, f32 or f64) hold the same bits.
fn same_bits(a: &Tensor, b: &Tensor) -> bool {
    fn bits(t: &Tensor) -> Option<Vec<u64>> {
        let t = t.flatten_all().ok()?;
        match t.dtype() {
            DType::F32 => {
                Some(t.to_vec1::<f32>().ok()?.iter().map(|x| x.to_bits() as u64).collect())
            }
            DType::F64 => Some(t.to_vec1::<f64>().ok()?.iter().map(|x| x.to_bits()).collect()),
            _ => None,
        }
    }
    a.dims() == b.dims() && a.dtype() == b.dtype() && bits(a).is_some_and(|x| bits(b) == Some(x))
}

/// A temporary file next to `path`, unique to this call (process id, thread, call counter), so
/// that concurrent saves to the same path never write the same temporary file.
fn temp_path(path: &Path) -> Result<std::path::PathBuf> {
    static CALLS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let Some(file_name) = path.file_name() else {
        bail!("RAdam: cannot save the state to {path:?}: it names no file");
    };
    let call = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let thread = {
        let mut h = fnv::FnvHasher::default();
        std::hash::Hash::hash(&std::thread::current().id(), &mut h);
        h.finish()
    };
    Ok(path.with_file_name(format!(
        ".{}.tmp-{}-{thread:x}-{call}",
        file_name.to_string_lossy(),
        std::process::id()
    )))
}

/// Checks a saved moment pair: same shape and dtype (f32 or f64), `exp_avg` finite and
/// `exp_avg_sq` finite and `>= 0` (a running mean of squares; a negative or NaN one would turn
/// the parameter into NaN at the first rectified step).
fn check_moment_pair(name: &str, m: &Tensor, v: &Tensor) -> Result<()> {
    if m.dims() != v.dims() || m.dtype() != v.dtype() {
        bail!(
            "RAdam state: '{}' is {:?} {:?} but '{}' is {:?} {:?}",
            m_key(name),
            m.dtype(),
            m.dims(),
            v_key(name),
            v.dtype(),
            v.dims()
        );
    }
    fn first_bad(t: &Tensor, ok: fn(f64) -> bool) -> Result<Option<(usize, f64)>> {
        let t = t.flatten_all()?;
        Ok(match t.dtype() {
            DType::F32 => {
                let x = t.to_vec1::<f32>()?;
                x.iter().position(|x| !ok(*x as f64)).map(|i| (i, x[i] as f64))
            }
            DType::F64 => {
                let x = t.to_vec1::<f64>()?;
                x.iter().position(|x| !ok(*x)).map(|i| (i, x[i]))
            }
            d => bail!("RAdam state: moments must be f32 or f64, got {d:?}"),
        })
    }
    if let Some((i, x)) = first_bad(m, f64::is_finite)? {
        bail!(
            "RAdam state: '{}' holds {x} at index {i}: a first moment must be finite (damaged \
             file?)",
            m_key(name)
        );
    }
    if let Some((i, x)) = first_bad(v, |x| x.is_finite() && x >= 0.0)? {
        bail!(
            "RAdam state: '{}' holds {x} at index {i}: a second moment must be finite and >= 0 \
             (damaged file?)",
            v_key(name)
        );
    }
    Ok(())
}

fn missing(path: &Path, key: &str) -> candle_core::Error {
    candle_core::Error::Msg(format!(
        "RAdam state: {path:?} has no '{key}' (not a state file of this model?)"
    ))
}

/// The 8-bit moment pair of `name` (the four `q8_keys`), checked: u8 codes of one shape, f32
/// absmax `[ceil(n / 256)]`, finite and `>= 0`.
fn read_q8(file: &HashMap<String, Tensor>, name: &str, path: &Path) -> Result<Moments8> {
    let keys = q8_keys(name);
    let get = |i: usize| file.get(&keys[i]).ok_or_else(|| missing(path, &keys[i]));
    let (mc, ma, vc, va) = (get(0)?, get(1)?, get(2)?, get(3)?);
    if mc.dtype() != DType::U8 || vc.dtype() != DType::U8 || mc.dims() != vc.dims() {
        bail!(
            "RAdam state: '{}' and '{}' must be u8 codes of one shape, got {:?} {:?} and {:?} {:?}",
            keys[0],
            keys[2],
            mc.dtype(),
            mc.dims(),
            vc.dtype(),
            vc.dims()
        );
    }
    let blocks = crate::quant::blocks(mc.elem_count());
    for (k, a) in [(&keys[1], ma), (&keys[3], va)] {
        if a.dtype() != DType::F32 || a.dims() != [blocks] {
            bail!(
                "RAdam state: '{k}' must be an f32 tensor of shape [{blocks}], got {:?} {:?}",
                a.dtype(),
                a.dims()
            );
        }
    }
    let q = Moments8 {
        m: mc.flatten_all()?.to_vec1::<u8>()?,
        m_absmax: ma.to_vec1::<f32>()?,
        v: vc.flatten_all()?.to_vec1::<u8>()?,
        v_absmax: va.to_vec1::<f32>()?,
    };
    q.check(&format!("'{name}'"))?;
    Ok(q)
}
