//! Opening the device for the GPU tests (a module of `tests/cuda.rs`, shared by `cuda/gpu.rs`,
//! `cuda/groups.rs` and `cuda/clip.rs`).
//!
//! Only a missing device or driver skips a test: `CUDA_ERROR_NO_DEVICE` (no GPU; also what every
//! call of the stub driver of `scripts/cuda-toolchain.sh` returns), `CUDA_ERROR_NOT_INITIALIZED`
//! (no usable driver) and `CUDA_ERROR_STUB_LIBRARY` (NVIDIA's link-time stub `libcuda.so` found
//! at run time). Any other error opening the device (a bad `CUDA_STANDIN_CC`, a driver too old,
//! a cuBLAS or cuRAND initialisation failure...) is a broken setup, not an absent one: the test
//! fails with it.

use candle_core::{DType, Device, Result, Tensor, Var};
use rand::rngs::StdRng;
use rand::Rng;

/// The driver errors that mean "there is no CUDA device here" (see the module docs).
const NO_DEVICE: [&str; 3] =
    ["CUDA_ERROR_NO_DEVICE", "CUDA_ERROR_NOT_INITIALIZED", "CUDA_ERROR_STUB_LIBRARY"];

/// CUDA device 0, or `None` (and `<test>: skipped, no CUDA device (<error>)` on stderr) when
/// there is no device or driver. Panics with the error on any other failure to open it.
pub fn gpu(test: &str) -> Option<Device> {
    match Device::new_cuda(0) {
        Ok(d) => Some(d),
        Err(e) => {
            let msg = e.to_string();
            let first = msg.lines().next().unwrap_or("");
            if NO_DEVICE.iter().any(|n| first.contains(&format!("DriverError({n},"))) {
                eprintln!("{test}: skipped, no CUDA device ({first})");
                None
            } else {
                panic!("{test}: opening the CUDA device failed (not a missing device): {msg}");
            }
        }
    }
}

/// Whether this build's kernels run bf16 on the GPU (sm_80+ and at least the build's arch).
pub fn has_bf16(dev: &Device) -> bool {
    let Device::Cuda(d) = dev else { unreachable!() };
    candle_radam::cuda_supports(d, DType::BF16).is_ok()
}

/// The float dtypes to test on `dev`: f32, f16, f64, and bf16 where the kernels support it.
pub fn dtypes(dev: &Device) -> Vec<DType> {
    let mut d = vec![DType::F32, DType::F16, DType::F64];
    if has_bf16(dev) {
        d.push(DType::BF16);
    }
    d
}

/// The same named variables on the CPU and on the GPU: `(cpu, gpu)`.
pub type Twins = (Vec<(String, Var)>, Vec<(String, Var)>);

/// For every dtype of [`dtypes`] and every `(name, n)` of `shapes`, a variable of `n` uniform
/// values in [-1, 1) named `<dtype>.<name>`, built on the CPU and copied to `dev` (no candle
/// kernel runs on the device).
pub fn twin_vars(dev: &Device, rng: &mut StdRng, shapes: &[(&str, usize)]) -> Result<Twins> {
    let (mut cpu, mut gpu) = (Vec::new(), Vec::new());
    for dt in dtypes(dev) {
        for &(name, n) in shapes {
            let v: Vec<f32> = (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect();
            let t = Tensor::from_vec(v, n, &Device::Cpu)?.to_dtype(dt)?;
            let name = format!("{dt:?}.{name}");
            cpu.push((name.clone(), Var::from_tensor(&t)?));
            gpu.push((name, Var::from_tensor(&t.to_device(dev)?)?));
        }
    }
    Ok((cpu, gpu))
}
