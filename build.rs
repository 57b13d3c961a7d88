//! Build script. Without the `cuda` feature it does nothing (no CUDA needed). With it, every
//! `kernels/*.cu` is compiled by nvcc to PTX in `OUT_DIR` (never into the source tree), twice:
//!
//! * `<name>.ptx`: the base PTX, for compute_75 (compute_70 with nvcc < 13), which the driver
//!   JIT-compiles for any newer GPU. bf16 entry points are left out (`__CUDA_ARCH__ < 800`).
//! * `<name>_sm80.ptx`: for compute_80, or `compute_$CUDA_COMPUTE_CAP` when that is higher; it has
//!   every entry point including bf16. src/cuda.rs loads it on GPUs that can run it.
//!
//! nvcc is looked up in `$NVCC`, `$CUDA_HOME/bin`, `$CUDA_PATH/bin`, then `PATH`
//! (`scripts/cuda-toolchain.sh` installs a pinned one without a GPU).

use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=CARGO_FEATURE_CUDA");
    if std::env::var_os("CARGO_FEATURE_CUDA").is_none() {
        return;
    }
    if let Err(e) = build_kernels() {
        eprintln!("error: candle-radam: building the CUDA kernels failed:\n{e}");
        std::process::exit(1);
    }
}

fn build_kernels() -> Result<(), String> {
    for var in ["NVCC", "CUDA_HOME", "CUDA_PATH", "CUDA_COMPUTE_CAP", "PATH"] {
        println!("cargo:rerun-if-env-changed={var}");
    }
    let out_dir = PathBuf::from(std::env::var("OUT_DIR").map_err(|e| e.to_string())?);
    let nvcc = find_nvcc().ok_or_else(|| {
        "nvcc not found: set NVCC, CUDA_HOME or CUDA_PATH, or put nvcc on PATH \
         (without a system CUDA: `eval \"$(scripts/cuda-toolchain.sh)\"`)"
            .to_string()
    })?;
    let major = nvcc_major(&nvcc)?;
    let base_arch = if major >= 13 { 75 } else { 70 };
    let cap = match std::env::var("CUDA_COMPUTE_CAP") {
        Ok(s) if !s.trim().is_empty() => Some(
            s.trim()
                .trim_start_matches("sm_")
                .trim_start_matches("compute_")
                // Arch-specific variants (90a, 100f) take the plain compute_XY PTX.
                .trim_end_matches(['a', 'f'])
                .parse::<u32>()
                .map_err(|_| format!("CUDA_COMPUTE_CAP={s:?} is not a number like 80 or 90"))?,
        ),
        _ => None,
    };
    let hi_arch = cap.unwrap_or(80).max(80);

    let mut sources: Vec<PathBuf> = std::fs::read_dir("kernels")
        .map_err(|e| format!("reading kernels/: {e}"))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| matches!(p.extension().and_then(|e| e.to_str()), Some("cu" | "cuh")))
        .collect();
    sources.sort();
    println!("cargo:rerun-if-changed=kernels");
    for src in &sources {
        println!("cargo:rerun-if-changed={}", src.display());
    }
    for src in sources.iter().filter(|p| p.extension().is_some_and(|e| e == "cu")) {
        let stem = src.file_stem().unwrap().to_string_lossy().to_string();
        compile(&nvcc, src, &out_dir.join(format!("{stem}.ptx")), base_arch)?;
        compile(&nvcc, src, &out_dir.join(format!("{stem}_sm80.ptx")), hi_arch)?;
    }
    // The archs of both PTX files, so the loader knows which GPUs can take them, and the launch
    // geometry the kernel was written for (read from its #defines: one source of truth).
    let kernel = std::fs::read_to_string("kernels/radam.cu").map_err(|e| e.to_string())?;
    let chunk = kernel_define(&kernel, "RADAM_CHUNK")?;
    let threads = kernel_define(&kernel, "RADAM_THREADS")?;
    std::fs::write(
        out_dir.join("kernel_info.rs"),
        format!(
            "pub(crate) const BASE_ARCH: u32 = {base_arch};\n\
             pub(crate) const HI_ARCH: u32 = {hi_arch};\n\
             /// Elements per block (`RADAM_CHUNK` in kernels/radam.cu).\n\
             pub(crate) const CHUNK: u64 = {chunk};\n\
             /// Threads per block (`RADAM_THREADS` in kernels/radam.cu).\n\
             pub(crate) const THREADS: u32 = {threads};\n"
        ),
    )
    .map_err(|e| e.to_string())?;
    Ok(())
}

/// The value of `#define NAME <integer>` in the kernel source.
fn kernel_define(src: &str, name: &str) -> Result<u64, String> {
    src.lines()
        .filter_map(|l| l.trim().strip_prefix("#define "))
        .filter_map(|l| l.trim().strip_prefix(name))
        .find_map(|rest| rest.split_whitespace().next()?.parse().ok())
        .ok_or_else(|| format!("kernels/radam.cu has no `#define {name} <integer>`"))
}

fn compile(nvcc: &Path, src: &Path, out: &Path, arch: u32) -> Result<(), String> {
    let output = Command::new(nvcc)
        .args(["--ptx", "-std=c++17", "-O3", "-fmad=false", "-Ikernels"])
        .arg(format!("-arch=compute_{arch}"))
        .arg(src)
        .arg("-o")
        .arg(out)
        .output()
        .map_err(|e| format!("running {}: {e}", nvcc.display()))?;
    if !output.status.success() {
        return Err(format!(
            "{} --ptx -arch=compute_{arch} {} failed ({}):\n{}{}",
            nvcc.display(),
            src.display(),
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    Ok(())
}

fn find_nvcc() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("NVCC") {
        return Some(PathBuf::from(p));
    }
    for var in ["CUDA_HOME", "CUDA_PATH"] {
        if let Some(root) = std::env::var_os(var) {
            let p = Path::new(&root).join("bin").join("nvcc");
            if p.is_file() {
                return Some(p);
            }
        }
    }
    std::env::split_paths(&std::env::var_os("PATH")?).map(|d| d.join("nvcc")).find(|p| p.is_file())
}

fn nvcc_major(nvcc: &Path) -> Result<u32, String> {
    let out = Command::new(nvcc)
        .arg("--version")
        .output()
        .map_err(|e| format!("running {} --version: {e}", nvcc.display()))?;
    let text = String::from_utf8_lossy(&out.stdout);
    // "Cuda compilation tools, release 13.0, V13.0.88"
    text.split("release ")
        .nth(1)
        .and_then(|r| r.split('.').next())
        .and_then(|m| m.trim().parse().ok())
        .ok_or_else(|| {
            format!("cannot read the CUDA version from `{} --version`:\n{text}", nvcc.display())
        })
}
