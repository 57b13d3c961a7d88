//! `--merge DIR,DIR,...`: one comparison from runs of single variants that were trained
//! separately (e.g. in parallel, one process each, with the same flags and `--compare <variant>`).
//! Every variant starts from the same seeded initialization and sees the same batches whether it
//! is trained alone or in a comparison, so the merged outputs are those the comparison would have
//! written (timings aside).
//!
//! Reads `summary.json`, `curves.csv` and `hyp.<variant>.txt` of each directory (the portable
//! name of [`hyp_file`], `:` written `-`, or the name with `:` that runs before it wrote);
//! writes the combined `curves.csv`, `curves.png`, `summary.json` (with `merged_from`) and copies
//! the hypotheses, under their portable names, and `tokenizer.json` to `--out` (removing
//! `hyp.<variant>.txt` of other variants left there).
//!
//! Summaries written before a field existed still merge: `precision` is then f32,
//! `optimizer` the variant (or, in a precision comparison, its `settings.precisions_of`) and
//! `state_bytes_per_param` unknown.

use crate::outdir::{hyp_file, same_path};
use crate::train::{CurvePoint, VariantResult};
use anyhow::{bail, Context, Result};
use serde_json::Value;
use std::path::{Path, PathBuf};

/// The curve of `variant` from a `curves.csv` written by this example.
fn read_curve(path: &Path, variant: &str) -> Result<Vec<CurvePoint>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let opt =
        |s: &str| -> Result<Option<f64>> { Ok(if s.is_empty() { None } else { Some(s.parse()?) }) };
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate().skip(1) {
        let f: Vec<&str> = line.split(',').collect();
        // 8 fields (precision last; the summary has it too); 7 in runs written before the
        // precision was recorded, 6 before gnorm was logged.
        if !(6..=8).contains(&f.len()) {
            bail!("{}:{}: expected 8 fields, found {}", path.display(), i + 1, f.len());
        }
        if f[1] != variant {
            continue;
        }
        let parse = || -> Result<CurvePoint> {
            Ok(CurvePoint {
                step: f[0].parse()?,
                lr: f[2].parse()?,
                train_loss: f[3].parse()?,
                valid_loss: opt(f[4])?,
                valid_ppl: opt(f[5])?,
                gnorm: match f.get(6) {
                    Some(g) => opt(g)?,
                    None => None,
                },
            })
        };
        out.push(parse().with_context(|| format!("{}:{}", path.display(), i + 1))?);
    }
    Ok(out)
}

/// The top-level summary entries two runs must share to be compared; `settings` holds the rest
/// (optimizer, schedule, loss, tokenizer and data fingerprints: see `main::settings`).
const SAME: [&str; 10] = [
    "preset",
    "model",
    "steps",
    "max_tokens",
    "data",
    "seed",
    "eval_set",
    "eval_sentences",
    "beam",
    "settings",
];

/// The first setting in which summaries `a` and `b` differ: its name (`settings.` entries by
/// their own name) and both values.
fn first_difference(a: &Value, b: &Value) -> Option<(String, Value, Value)> {
    for k in SAME {
        if k == "settings" {
            let (sa, sb) = (&a[k], &b[k]);
            let mut keys: Vec<&String> =
                sa.as_object().into_iter().flat_map(|o| o.keys()).collect();
            keys.extend(sb.as_object().into_iter().flat_map(|o| o.keys()));
            for key in keys {
                if sa[key] != sb[key] {
                    return Some((key.clone(), sa[key].clone(), sb[key].clone()));
                }
            }
        } else if a[k] != b[k] {
            return Some((k.to_string(), a[k].clone(), b[k].clone()));
        }
    }
    None
}

/// Merges the runs in `dirs` into `out`; returns the merged variants in the order given.
/// `out` may be one of `dirs`: its files are read before and never copied onto themselves.
///
/// Errors: a directory without this example's outputs, a summary without `settings` (written
/// by an older version: re-run it), runs whose settings differ (any of [`SAME`] or of
/// `settings`: the message names it), a variant that occurs twice.
pub fn merge(dirs: &[PathBuf], out: &Path) -> Result<Vec<VariantResult>> {
    let mut first: Option<Value> = None;
    let mut results: Vec<VariantResult> = Vec::new();
    let mut hyps = Vec::new();
    for dir in dirs {
        let p = dir.join("summary.json");
        let s: Value = serde_json::from_str(
            &std::fs::read_to_string(&p).with_context(|| format!("cannot read {}", p.display()))?,
        )
        .with_context(|| format!("{} is not a summary.json of this example", p.display()))?;
        if !s["settings"].is_object() {
            bail!(
                "{}: no `settings` (written by an older version of this example): re-run it to merge",
                p.display()
            );
        }
        if let Some(f) = &first {
            if let Some((k, theirs, ours)) = first_difference(f, &s) {
                bail!(
                    "{}: {k} is {ours} but {theirs} in {}; only runs with the same settings can be merged",
                    dir.display(),
                    dirs[0].display()
                );
            }
        }
        let vars: Vec<VariantResult> = serde_json::from_value(s["variants"].clone())
            .with_context(|| format!("{}: variants", p.display()))?;
        for mut v in vars {
            if results.iter().any(|r| r.variant == v.variant) {
                bail!("variant {} occurs twice", v.variant);
            }
            v.curve = read_curve(&dir.join("curves.csv"), &v.variant)?;
            if v.optimizer.is_empty() {
                // Written before the optimizer variant was recorded.
                v.optimizer = s["settings"]["precisions_of"].as_str().unwrap_or(&v.variant).into();
            }
            let portable = dir.join(hyp_file(&v.variant));
            let old = dir.join(format!("hyp.{}.txt", v.variant));
            if let Some(h) = [portable, old].into_iter().find(|h| h.exists()) {
                hyps.push((h, hyp_file(&v.variant)));
            }
            results.push(v);
        }
        first.get_or_insert(s);
    }
    let Some(mut summary) = first else { bail!("--merge: no directory given") };
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    for (h, name) in &hyps {
        let to = out.join(name);
        // Copying a file onto itself (`--out` is one of the inputs) would empty it.
        if !same_path(h, &to) {
            std::fs::copy(h, &to).with_context(|| format!("cannot copy {}", h.display()))?;
        }
    }
    for name in ["tokenizer.json", "tokenizer.meta.json"] {
        let t = dirs[0].join(name);
        if t.exists() && !same_path(&t, &out.join(name)) {
            std::fs::copy(&t, out.join(name))?;
        }
    }
    let keep: Vec<&str> = results.iter().map(|r| r.variant.as_str()).collect();
    let stale = crate::outdir::remove_stale_hyps(out, &keep)?;
    if !stale.is_empty() {
        eprintln!("removed {} of an earlier run in {}", stale.join(", "), out.display());
    }
    summary["variants"] = serde_json::to_value(&results)?;
    summary["merged_from"] = dirs.iter().map(|d| d.display().to_string()).collect();
    summary["wall_seconds"] = Value::Null;
    crate::write_outputs(out, &results, &crate::plot_title(&summary), &summary)?;
    Ok(results)
}
