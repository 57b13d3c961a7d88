//! Saving and restoring the optimizer state (moments and step counters) as safetensors.
//!
//! File layout: for every variable `NAME`, tensors `exp_avg.NAME` and `exp_avg_sq.NAME` shaped like
//! the variable, in the moment dtype (f32, or f64 for f64 variables); plus `radam.step` and
//! `radam.skipped`, `[1]`-shaped i64 tensors. The hyper-parameters are not saved: they belong to
//! the training script.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{bail, DType, Device, Result, Tensor};

use crate::moments::{moment_dtype, Moments};
use crate::optimizer::RAdam;

const STEP: &str = "radam.step";
const SKIPPED: &str = "radam.skipped";

fn m_key(name: &str) -> String {
    format!("exp_avg.{name}")
}
fn v_key(name: &str) -> String {
    format!("exp_avg_sq.{name}")
}

fn counter(x: u64) -> Result<Tensor> {
    Tensor::new(&[x as i64], &Device::Cpu)
}

fn read_counter(t: &Tensor, key: &str) -> Result<u64> {
    if t.dtype() != DType::I64 || t.dims() != [1] {
        bail!(
            "RAdam state: '{key}' must be an i64 tensor of shape [1], got {:?} {:?}",
            t.dtype(),
            t.dims()
        );
    }
    let x = t.to_vec1::<i64>()?[0];
    if x < 0 {
        bail!("RAdam state: '{key}' is negative ({x})");
    }
    Ok(x as u64)
}

impl RAdam {
    /// Writes the moments and step counters to `path` (safetensors). The file is written next to
    /// its destination and renamed into place, so a crash never leaves a truncated state file.
    pub fn save_state<P: AsRef<Path>>(&self, path: P) -> Result<()> {
        let path = path.as_ref();
        let mut tensors: HashMap<String, Tensor> = HashMap::with_capacity(2 * self.slots.len() + 2);
        for s in &self.slots {
            let (m, v) = s.moments.to_tensors(s.var.as_tensor())?;
            tensors.insert(m_key(&s.name), m);
            tensors.insert(v_key(&s.name), v);
        }
        tensors.insert(STEP.to_string(), counter(self.t)?);
        tensors.insert(SKIPPED.to_string(), counter(self.skipped)?);

        let file_name =
            path.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default();
        let tmp = path.with_file_name(format!(".{file_name}.tmp-{}", std::process::id()));
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

    /// Restores the moments and step counters saved by [`RAdam::save_state`], for the same
    /// variables (names, shapes and dtypes must all match, and the file must hold nothing else).
    /// On any error the optimizer is left exactly as it was. The state may come from another
    /// device (saved on CUDA, loaded on CPU and back).
    pub fn load_state<P: AsRef<Path>>(&mut self, path: P) -> Result<()> {
        let path = path.as_ref();
        let mut file = candle_core::safetensors::load(path, &Device::Cpu)
            .map_err(|e| e.context(format!("RAdam: reading state from {path:?}")))?;
        let t = read_counter(file.get(STEP).ok_or_else(|| missing(path, STEP))?, STEP)?;
        let skipped =
            read_counter(file.get(SKIPPED).ok_or_else(|| missing(path, SKIPPED))?, SKIPPED)?;
        file.remove(STEP);
        file.remove(SKIPPED);

        // Build every new moment buffer first; swap them in only when all are good.
        let mut fresh = Vec::with_capacity(self.slots.len());
        for s in &self.slots {
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
            let (m, v) = (take(m_key(&s.name))?, take(v_key(&s.name))?);
            fresh.push(Moments::from_tensors(s.var.as_tensor(), &m, &v)?);
        }
        if let Some(extra) = file.keys().min() {
            bail!("RAdam state: {path:?} holds '{extra}', which is no variable of this optimizer (another model?)");
        }
        for (s, m) in self.slots.iter_mut().zip(fresh) {
            s.moments = m;
        }
        self.t = t;
        self.skipped = skipped;
        Ok(())
    }
}

fn missing(path: &Path, key: &str) -> candle_core::Error {
    candle_core::Error::Msg(format!(
        "RAdam state: {path:?} has no '{key}' (not a state file of this model?)"
    ))
}
