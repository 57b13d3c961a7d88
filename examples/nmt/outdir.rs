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

/// `hyp.<variant>.txt` files in `out` of variants not in `keep`: left by an earlier run into
/// the same directory. Removed, so that the directory describes one run; returns their names.
pub fn remove_stale_hyps(out: &Path, keep: &[&str]) -> Result<Vec<String>> {
    let mut removed = Vec::new();
    let Ok(entries) = std::fs::read_dir(out) else { return Ok(removed) };
    for e in entries {
        let name = e?.file_name().to_string_lossy().into_owned();
        let Some(variant) = name.strip_prefix("hyp.").and_then(|n| n.strip_suffix(".txt")) else {
            continue;
        };
        if !keep.contains(&variant) {
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
}
