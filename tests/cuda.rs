//! The CUDA test binary. With `--features cuda` it runs the GPU-vs-CPU tests of `cuda/gpu.rs`,
//! `cuda/groups.rs`, `cuda/clip.rs`, `cuda/quant8.rs` and `cuda/precision.rs` (each skips with a message when there is no device or driver,
//! and fails on any other error opening one: `cuda/device.rs`);
//! without the feature it holds one test that says how to run them, so `cargo test` never reports
//! them as silently absent.

#[cfg(feature = "cuda")]
#[path = "cuda/device.rs"]
mod device;

#[cfg(feature = "cuda")]
#[path = "cuda/gpu.rs"]
mod gpu;

#[cfg(feature = "cuda")]
#[path = "cuda/groups.rs"]
mod groups;

#[cfg(feature = "cuda")]
#[path = "cuda/clip.rs"]
mod clip;

#[cfg(feature = "cuda")]
#[path = "cuda/quant8.rs"]
mod quant8;

#[cfg(feature = "cuda")]
#[path = "cuda/precision.rs"]
mod precision;

#[cfg(not(feature = "cuda"))]
#[test]
fn gpu_tests_need_the_cuda_feature() {
    eprintln!(
        "tests/cuda.rs: GPU tests skipped, built without the `cuda` feature \
         (run `cargo test --release --features cuda --test cuda` on a machine with an NVIDIA GPU)"
    );
}
