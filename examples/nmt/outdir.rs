//! The output and checkpoint directories: checked before any work, and never an input
//! destroyed by writing onto it.

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};

/// Whether `a` and `b` name the same existing file (canonical paths; false if either is missing).
pub fn same_path(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

/// Checks that `dir` (given as `flag`, e.g. `--out`) can be created and written: creates it
/// and a probe file in it, then removes the probe and every directory this call created, so that
/// a run that fails later (or here) leaves nothing behind.
///
/// Errors: `dir` is a file, a parent cannot be created, or the directory is not writable.
pub fn check_writable(dir: &Path, flag: &str) -> Result<()> {
    if dir.exists() && !dir.is_dir() {
        bail!("{flag} {}: expected a directory, found a file", dir.display());
    }
    // The directories that do not exist yet, deepest first.
    let mut created: Vec<PathBuf> = Vec::new();
    let mut d = Some(dir);
    while let Some(p) = d {
        if p.as_os_str().is_empty() || p.exists() {
            break;
        }
        created.push(p.to_path_buf());
        d = p.parent();
    }
    let probe = dir.join(".nmt-write-test");
    let result = std::fs::create_dir_all(dir)
        .with_context(|| format!("{flag} {}: cannot create the directory", dir.display()))
        .and_then(|()| {
            std::fs::write(&probe, b"")
                .with_context(|| format!("{flag} {}: cannot write in it", dir.display()))
        });
    let _ = std::fs::remove_file(&probe);
    for p in &created {
        let _ = std::fs::remove_dir(p);
    }
    result
}

/// The file name of `variant`'s translations: `hyp.<variant>.txt`, with every `:` of the name
/// written `-` (`hyp.bf16-stochastic-3.txt` for `bf16:stochastic:3`), since `:` is not allowed
/// in Windows file names. Only the file name changes: the variant keeps its name everywhere
/// else (summary.json, curves.csv, the table). No two variants share a file: the optimizer
/// variants' names have no `:` and start with no dtype, and in a canonical precision spec every
/// `-` of the file name stands for a `:`.
pub fn hyp_file(variant: &str) -> String {
    format!("hyp.{}.txt", variant.replace(':', "-"))
}

/// `hyp.*.txt` files in `out` other than the [`hyp_file`]s of the variants in `keep`: left by
/// an earlier run into the same directory (including those named with a `:` before
/// [`hyp_file`] replaced it). Removed, so that the directory describes one run; returns their
/// names.
pub fn remove_stale_hyps(out: &Path, keep: &[&str]) -> Result<Vec<String>> {
    let keep: Vec<String> = keep.iter().map(|v| hyp_file(v)).collect();
    let mut removed = Vec::new();
    let Ok(entries) = std::fs::read_dir(out) else { return Ok(removed) };
    for e in entries {
        let name = e?.file_name().to_string_lossy().into_owned();
        if !(name.starts_with("hyp.") && name.ends_with(".txt")) {
            continue;
        }
        if !keep.contains(&name) {
            let p = out.join(&name);
            std::fs::remove_file(&p).with_context(|| format!("cannot remove {}", p.display()))?;
            removed.push(name);
        }
    }
    removed.sort();
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unusable_paths_fail_and_leave_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("f");
        std::fs::write(&file, "x").unwrap();
        // A file, and a directory under a file.
        assert!(check_writable(&file, "--out").unwrap_err().to_string().contains("found a file"));
        assert!(check_writable(&file.join("a/b"), "--save").is_err());
        // Usable: nothing is left behind either.
        let fresh = tmp.path().join("x/y/z");
        check_writable(&fresh, "--out").unwrap();
        assert!(!tmp.path().join("x").exists());
        check_writable(tmp.path(), "--out").unwrap();
        let left: Vec<_> = std::fs::read_dir(tmp.path()).unwrap().collect();
        assert_eq!(left.len(), 1); // only f
    }

    #[test]
    fn read_only_directory_fails() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().unwrap();
        let ro = tmp.path().join("ro");
        std::fs::create_dir(&ro).unwrap();
        std::fs::set_permissions(&ro, std::fs::Permissions::from_mode(0o555)).unwrap();
        // root can write anywhere: only check where permissions apply.
        if std::fs::write(ro.join("t"), "").is_err() {
            assert!(check_writable(&ro, "--out").is_err());
            assert!(check_writable(&ro.join("sub"), "--save").is_err());
            assert!(!ro.join("sub").exists());
        }
        std::fs::set_permissions(&ro, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    #[test]
    fn stale_hyps_are_removed() {
        let tmp = tempfile::tempdir().unwrap();
        for f in ["hyp.adam.txt", "hyp.radam.txt", "hyp.adam-2k.txt", "ref.txt"] {
            std::fs::write(tmp.path().join(f), "x").unwrap();
        }
        let removed = remove_stale_hyps(tmp.path(), &["radam"]).unwrap();
        assert_eq!(removed, ["hyp.adam-2k.txt", "hyp.adam.txt"]);
        assert!(tmp.path().join("hyp.radam.txt").exists());
        assert!(tmp.path().join("ref.txt").exists());
    }

    #[test]
    fn hyp_file_names_are_portable() {
        assert_eq!(hyp_file("radam"), "hyp.radam.txt");
        assert_eq!(hyp_file("adam-warmup"), "hyp.adam-warmup.txt");
        assert_eq!(hyp_file("bf16:stochastic:3"), "hyp.bf16-stochastic-3.txt");
        assert_eq!(hyp_file("bf16:remainder+8bit"), "hyp.bf16-remainder+8bit.txt");
        assert_eq!(hyp_file("f32"), "hyp.f32.txt");
        // Characters Windows refuses in a file name: none left.
        for v in ["bf16:nearest", "f16:kahan+8bit", "f16:stochastic:7"] {
            assert!(!hyp_file(v).contains(['<', '>', ':', '"', '/', '\\', '|', '?', '*']), "{v}");
        }
        // Stale-file cleanup keeps the portable names and removes the old `:` ones.
        let tmp = tempfile::tempdir().unwrap();
        for f in ["hyp.bf16-kahan.txt", "hyp.bf16:kahan.txt", "hyp.f32.txt", "hyp.f16-nearest.txt"]
        {
            std::fs::write(tmp.path().join(f), "x").unwrap();
        }
        let removed = remove_stale_hyps(tmp.path(), &["bf16:kahan", "f32"]).unwrap();
        assert_eq!(removed, ["hyp.bf16:kahan.txt", "hyp.f16-nearest.txt"]);
        assert!(tmp.path().join("hyp.bf16-kahan.txt").exists());
    }
}
