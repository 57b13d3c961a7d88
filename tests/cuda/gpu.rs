//! GPU vs CPU (a module of `tests/cuda.rs`): the CUDA kernels must give what the CPU loop gives
//! (which is pinned to torch by the other tests). Compiled only with `--features cuda`.
//!
//! Where they run: on an NVIDIA GPU; or on the CPU stand-in of the CUDA driver
//! (`cuda-standin/`, what CI uses: the same launcher, cudarc and candle code, with the kernels of
//! `kernels/radam.cu` compiled for the host and run over the real grid, under AddressSanitizer);
//! and where no device can be opened (no GPU, no driver, or the stub driver of
//! `scripts/cuda-toolchain.sh`) every test prints that it was skipped and passes; any other error
//! opening the device fails the test (`cuda/device.rs`).
//!
//! Inputs are made on the CPU and copied to the device, and nothing here runs candle's own CUDA
//! kernels (no device-side `to_dtype`, `randn` or arithmetic), so every test runs on the stand-in,
//! which has only this crate's kernels.
//!
//! Tolerances: f32 within 1e-6 relative, f64 within 1e-12 relative, f16/bf16 within 1 ulp. (Both
//! paths evaluate the same expressions in the same order without FMA contraction, so on a
//! correct build they agree bit for bit; the tolerances leave room for a driver's JIT.)

use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Result, Tensor, Var};
use candle_nn::Optimizer;
use candle_radam::{NonFinite, ParamsRAdam, RAdam};
use half::{bf16, f16};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::device::{dtypes, gpu, has_bf16};

fn compute_capability(dev: &Device) -> (i32, i32) {
    let Device::Cuda(d) = dev else { unreachable!() };
    d.cuda_stream().context().compute_capability().expect("compute capability")
}

fn random(rng: &mut StdRng, n: usize, scale: f32, dtype: DType) -> Result<Tensor> {
    let v: Vec<f32> = (0..n).map(|_| rng.random_range(-1.0f32..1.0) * scale).collect();
    Tensor::from_vec(v, n, &Device::Cpu)?.to_dtype(dtype)
}

/// The same variables on CPU and on the GPU, each with its optimizer.
struct Pair {
    cpu_vars: Vec<Var>,
    gpu_vars: Vec<Var>,
    cpu: RAdam,
    gpu: RAdam,
}

impl Pair {
    fn new(
        specs: &[(usize, DType)],
        params: &ParamsRAdam,
        dev: &Device,
        rng: &mut StdRng,
    ) -> Result<Self> {
        Self::new_on(specs, params, &vec![dev; specs.len()], rng)
    }

    /// Like `new`, with the GPU copy of variable `i` on `devs[i]`.
    fn new_on(
        specs: &[(usize, DType)],
        params: &ParamsRAdam,
        devs: &[&Device],
        rng: &mut StdRng,
    ) -> Result<Self> {
        let mut cpu_vars = Vec::new();
        let mut gpu_vars = Vec::new();
        for (&(n, dt), dev) in specs.iter().zip(devs) {
            let t = random(rng, n, 1.0, dt)?;
            cpu_vars.push(Var::from_tensor(&t)?);
            gpu_vars.push(Var::from_tensor(&t.to_device(dev)?)?);
        }
        let cpu = RAdam::new(cpu_vars.clone(), params.clone())?;
        let gpu = RAdam::new(gpu_vars.clone(), params.clone())?;
        Ok(Self { cpu_vars, gpu_vars, cpu, gpu })
    }

    /// One step on both sides with the same random gradients.
    fn step(&mut self, rng: &mut StdRng) -> Result<()> {
        let (mut gc, mut gg) = (GradStore::default(), GradStore::default());
        for (c, g) in self.cpu_vars.iter().zip(&self.gpu_vars) {
            let grad = random(rng, c.elem_count(), 0.5, c.dtype())?.reshape(c.shape())?;
            gg.insert(g.as_tensor(), grad.to_device(g.device())?);
            gc.insert(c.as_tensor(), grad);
        }
        self.cpu.step(&gc)?;
        self.gpu.step(&gg)?;
        Ok(())
    }

    /// Asserts params (and, through saved state, moments) agree; returns the largest relative
    /// f32/f64 difference seen and the largest ulp distance of half params.
    fn compare(&self, what: &str) -> Result<(f64, i32)> {
        let mut worst = (0f64, 0i32);
        for (i, (c, g)) in self.cpu_vars.iter().zip(&self.gpu_vars).enumerate() {
            let w = assert_close(
                &format!("{what}: param {i}"),
                c.as_tensor(),
                &g.as_tensor().to_device(&Device::Cpu)?,
            )?;
            worst = (worst.0.max(w.0), worst.1.max(w.1));
        }
        let dir = tempfile::tempdir().map_err(candle_core::Error::wrap)?;
        let (pc, pg) = (dir.path().join("cpu.safetensors"), dir.path().join("gpu.safetensors"));
        self.cpu.save_state(&pc)?;
        self.gpu.save_state(&pg)?;
        let sc = candle_core::safetensors::load(&pc, &Device::Cpu)?;
        let sg = candle_core::safetensors::load(&pg, &Device::Cpu)?;
        assert_eq!(sc.len(), sg.len(), "{what}: state keys");
        for (k, a) in &sc {
            let b = sg.get(k).unwrap_or_else(|| panic!("{what}: {k} missing from GPU state"));
            let w = assert_close(&format!("{what}: state {k}"), a, b)?;
            worst = (worst.0.max(w.0), worst.1.max(w.1));
        }
        Ok(worst)
    }
}

/// Half-precision bits as an ordered integer (so that adjacent values differ by 1).
fn ordered(bits: u16) -> i32 {
    if bits & 0x8000 != 0 {
        -((bits & 0x7fff) as i32)
    } else {
        bits as i32
    }
}

fn assert_close(what: &str, a: &Tensor, b: &Tensor) -> Result<(f64, i32)> {
    assert_eq!((a.dtype(), a.dims()), (b.dtype(), b.dims()), "{what}");
    let (a, b) = (a.flatten_all()?, b.flatten_all()?);
    let rel = |x: f64, y: f64, tol: f64| -> f64 {
        let d = (x - y).abs() / x.abs().max(y.abs()).max(1e-30);
        assert!(d <= tol || x.to_bits() == y.to_bits(), "{what}: {x} vs {y} (rel {d:e} > {tol:e})");
        if x == y {
            0.0
        } else {
            d
        }
    };
    let mut worst = (0f64, 0i32);
    match a.dtype() {
        DType::F32 => {
            for (x, y) in a.to_vec1::<f32>()?.into_iter().zip(b.to_vec1::<f32>()?) {
                worst.0 = worst.0.max(rel(x as f64, y as f64, 1e-6));
            }
        }
        DType::F64 => {
            for (x, y) in a.to_vec1::<f64>()?.into_iter().zip(b.to_vec1::<f64>()?) {
                worst.0 = worst.0.max(rel(x, y, 1e-12));
            }
        }
        DType::F16 | DType::BF16 => {
            let bits = |t: &Tensor| -> Result<Vec<u16>> {
                Ok(match t.dtype() {
                    DType::F16 => t.to_vec1::<f16>()?.into_iter().map(|x| x.to_bits()).collect(),
                    _ => t.to_vec1::<bf16>()?.into_iter().map(|x| x.to_bits()).collect(),
                })
            };
            for (i, (x, y)) in bits(&a)?.into_iter().zip(bits(&b)?).enumerate() {
                let d = (ordered(x) - ordered(y)).abs();
                assert!(d <= 1, "{what}[{i}]: bits {x:#06x} vs {y:#06x} ({d} ulp)");
                worst.1 = worst.1.max(d);
            }
        }
        DType::I64 => assert_eq!(a.to_vec1::<i64>()?, b.to_vec1::<i64>()?, "{what}"),
        d => panic!("{what}: unexpected dtype {d:?}"),
    }
    Ok(worst)
}

const SIZES: [usize; 7] = [0, 1, 3, 1023, 1024, 1025, (1 << 20) + 7];

fn configs() -> Vec<(&'static str, ParamsRAdam)> {
    vec![
        ("default", ParamsRAdam { lr: 1e-2, ..Default::default() }),
        ("coupled-wd", ParamsRAdam { lr: 1e-2, weight_decay: 0.1, ..Default::default() }),
        (
            "decoupled-wd-no-sgd",
            ParamsRAdam {
                lr: 1e-2,
                weight_decay: 0.1,
                decoupled_weight_decay: true,
                degenerate_to_sgd: false,
                ..Default::default()
            },
        ),
        ("adam", ParamsRAdam { lr: 1e-2, rectify: false, ..Default::default() }),
    ]
}

#[test]
fn every_dtype_and_size_matches_cpu() -> Result<()> {
    let Some(dev) = gpu("every_dtype_and_size_matches_cpu") else {
        return Ok(());
    };
    for dt in dtypes(&dev) {
        for (name, params) in configs() {
            let mut rng = StdRng::seed_from_u64(7);
            let specs: Vec<(usize, DType)> = SIZES.iter().map(|&n| (n, dt)).collect();
            let mut pair = Pair::new(&specs, &params, &dev, &mut rng)?;
            // 12 steps: 1-5 take the SGD (or frozen) branch, 6-12 the rectified one.
            for _ in 0..12 {
                pair.step(&mut rng)?;
            }
            let (rel, ulp) = pair.compare(&format!("{dt:?} {name}"))?;
            println!("{dt:?} {name}: max rel diff {rel:e}, max ulp {ulp}");
        }
    }
    Ok(())
}

#[test]
fn five_hundred_tensors_of_mixed_dtypes() -> Result<()> {
    let Some(dev) = gpu("five_hundred_tensors_of_mixed_dtypes") else {
        return Ok(());
    };
    let dts = dtypes(&dev);
    let mut rng = StdRng::seed_from_u64(11);
    let specs: Vec<(usize, DType)> =
        (0..500).map(|i| (rng.random_range(0..3000usize), dts[i % dts.len()])).collect();
    for (name, params) in configs() {
        let mut pair = Pair::new(&specs, &params, &dev, &mut rng)?;
        for _ in 0..11 {
            pair.step(&mut rng)?;
        }
        let (rel, ulp) = pair.compare(&format!("500 tensors {name}"))?;
        println!("500 tensors {name}: max rel diff {rel:e}, max ulp {ulp}");
    }
    Ok(())
}

#[test]
fn unaligned_gradients_take_the_scalar_path() -> Result<()> {
    let Some(dev) = gpu("unaligned_gradients_take_the_scalar_path") else {
        return Ok(());
    };
    for dt in dtypes(&dev) {
        let mut rng = StdRng::seed_from_u64(3);
        let specs = [(1025usize, dt), (4099, dt), (5, dt)];
        let mut pair =
            Pair::new(&specs, &ParamsRAdam { lr: 1e-2, ..Default::default() }, &dev, &mut rng)?;
        for _ in 0..10 {
            let (mut gc, mut gg) = (GradStore::default(), GradStore::default());
            for (c, g) in pair.cpu_vars.iter().zip(&pair.gpu_vars) {
                let n = c.elem_count();
                // A contiguous grad that starts one element into its storage.
                let big = random(&mut rng, n + 1, 0.5, dt)?;
                let gpu_big = big.to_device(&dev)?;
                gg.insert(g.as_tensor(), gpu_big.narrow(0, 1, n)?);
                gc.insert(c.as_tensor(), big.narrow(0, 1, n)?);
            }
            pair.cpu.step(&gc)?;
            pair.gpu.step(&gg)?;
        }
        pair.compare(&format!("{dt:?} unaligned"))?;
    }
    Ok(())
}

#[test]
fn two_handles_of_one_gpu() -> Result<()> {
    let Some(dev) = gpu("two_handles_of_one_gpu") else {
        return Ok(());
    };
    // A second handle of the same GPU with a stream of its own: candle gives it another device
    // id, so the optimizer must build one table and launch once per handle, each on the
    // handle's stream. (Two `new_cuda(0)` handles would also get distinct ids, but share the
    // thread's default stream: `new_cuda_with_stream` is the case that needs the per-handle
    // streams to be right.)
    let dev2 = Device::new_cuda_with_stream(0)?;
    assert!(!dev.same_device(&dev2), "candle gave two handles of one GPU the same id");
    let (Device::Cuda(c1), Device::Cuda(c2)) = (&dev, &dev2) else { unreachable!() };
    assert_ne!(
        c1.cuda_stream().cu_stream(),
        c2.cuda_stream().cu_stream(),
        "new_cuda_with_stream gave no stream of its own"
    );
    let mut rng = StdRng::seed_from_u64(11);
    let specs = [(1025usize, DType::F32), (7, DType::F32), (4096, DType::F16), (3, DType::F64)];
    let devs = [&dev, &dev2, &dev2, &dev];
    let mut pair =
        Pair::new_on(&specs, &ParamsRAdam { lr: 1e-2, ..Default::default() }, &devs, &mut rng)?;
    for _ in 0..8 {
        pair.step(&mut rng)?;
    }
    let worst = pair.compare("two handles")?;
    eprintln!("two_handles_of_one_gpu: worst rel {:.2e}, {} ulp", worst.0, worst.1);
    Ok(())
}

#[test]
fn state_moves_between_gpu_and_cpu() -> Result<()> {
    let Some(dev) = gpu("state_moves_between_gpu_and_cpu") else {
        return Ok(());
    };
    let dir = tempfile::tempdir().map_err(candle_core::Error::wrap)?;
    for dt in dtypes(&dev) {
        let mut rng = StdRng::seed_from_u64(5);
        let specs = [(3usize, dt), (1025, dt), (0, dt)];
        let params = ParamsRAdam { lr: 1e-2, weight_decay: 0.01, ..Default::default() };
        let mut pair = Pair::new(&specs, &params, &dev, &mut rng)?;
        for _ in 0..7 {
            pair.step(&mut rng)?;
        }
        // GPU state -> CPU optimizer, CPU state -> GPU optimizer: both must carry on identically.
        let (from_gpu, from_cpu) =
            (dir.path().join("g.safetensors"), dir.path().join("c.safetensors"));
        pair.gpu.save_state(&from_gpu)?;
        pair.cpu.save_state(&from_cpu)?;
        let mut cpu2 = RAdam::new(pair.cpu_vars.clone(), params.clone())?;
        cpu2.load_state(&from_gpu)?;
        let mut gpu2 = RAdam::new(pair.gpu_vars.clone(), params.clone())?;
        gpu2.load_state(&from_cpu)?;
        assert_eq!((cpu2.step_count(), gpu2.step_count()), (7, 7));
        pair.cpu = cpu2;
        pair.gpu = gpu2;
        for _ in 0..5 {
            pair.step(&mut rng)?;
        }
        pair.compare(&format!("{dt:?} after state round trip"))?;
    }
    Ok(())
}

#[test]
fn non_finite_gradients_on_gpu() -> Result<()> {
    let Some(dev) = gpu("non_finite_gradients_on_gpu") else {
        return Ok(());
    };
    // Mixed dtypes, an empty variable and clean variables (of the bad one's dtype and of another)
    // before the bad one: the kernel table's `item` word must map the flag back to the caller's
    // index, not to the entry's index inside its dtype group (which here is 1, not 3).
    let all = dtypes(&dev);
    const BAD: usize = 3;
    for (k, &dt) in all.iter().enumerate() {
        let other = all[(k + 1) % all.len()];
        let specs = [(0usize, dt), (33, other), (10, dt), (5000, dt), (7, dt), (3000, other)];
        for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            for policy in [NonFinite::Error, NonFinite::Skip, NonFinite::Propagate] {
                let mut rng = StdRng::seed_from_u64(9);
                let params = ParamsRAdam { non_finite: policy, ..Default::default() };
                let vars: Vec<Var> = specs
                    .iter()
                    .map(|&(n, d)| Var::from_tensor(&random(&mut rng, n, 1.0, d)?.to_device(&dev)?))
                    .collect::<Result<_>>()?;
                let before: Vec<Tensor> =
                    vars.iter().map(|v| v.to_device(&Device::Cpu)).collect::<Result<_>>()?;
                let mut opt = RAdam::new(vars.clone(), params)?;
                let mut grads = GradStore::default();
                for (i, v) in vars.iter().enumerate() {
                    let mut g: Vec<f32> =
                        (0..v.elem_count()).map(|_| rng.random_range(-1.0f32..1.0)).collect();
                    if i == BAD {
                        g[4097] = bad; // in the second chunk of the fourth tensor
                    }
                    let g = Tensor::from_vec(g, v.elem_count(), &Device::Cpu)?
                        .to_dtype(v.dtype())?
                        .to_device(&dev)?;
                    grads.insert(v.as_tensor(), g);
                }
                let res = opt.step(&grads);
                let unchanged = || -> Result<bool> {
                    for (v, b) in vars.iter().zip(&before).filter(|(v, _)| v.elem_count() > 0) {
                        let a = v.to_device(&Device::Cpu)?.to_dtype(DType::F64)?;
                        let d =
                            (a - b.to_dtype(DType::F64)?)?.abs()?.max_all()?.to_scalar::<f64>()?;
                        if d != 0.0 {
                            return Ok(false);
                        }
                    }
                    Ok(true)
                };
                match policy {
                    NonFinite::Error => {
                        let e = res.expect_err("a non-finite grad must be an error").to_string();
                        for i in 0..specs.len() {
                            let named = e.contains(&format!("'param.{i}'"));
                            assert_eq!(
                                named,
                                i == BAD,
                                "{dt:?}+{other:?}: must name param.{BAD}: {e}"
                            );
                        }
                        assert!(unchanged()?, "{dt:?}: params changed on error");
                        assert_eq!(opt.step_count(), 0);
                    }
                    NonFinite::Skip => {
                        res?;
                        assert!(unchanged()?, "{dt:?}: params changed on skip");
                        assert_eq!((opt.step_count(), opt.skipped_steps()), (0, 1));
                    }
                    NonFinite::Propagate => {
                        res?;
                        assert_eq!(opt.step_count(), 1);
                        let p = vars[BAD]
                            .to_device(&Device::Cpu)?
                            .to_dtype(DType::F32)?
                            .to_vec1::<f32>()?;
                        assert!(
                            !p[4097].is_finite(),
                            "{dt:?}: NaN/inf should propagate, got {}",
                            p[4097]
                        );
                    }
                }
            }
        }
    }
    Ok(())
}

#[test]
fn bf16_needs_sm80_and_says_so() -> Result<()> {
    let Some(dev) = gpu("bf16_needs_sm80_and_says_so") else {
        return Ok(());
    };
    // candle itself may not build bf16 tensors on an old GPU: then there is nothing to check.
    let t =
        match Tensor::ones(100, DType::F32, &Device::Cpu)?.to_dtype(DType::BF16)?.to_device(&dev) {
            Ok(t) => t,
            Err(e) => {
                eprintln!(
                "bf16_needs_sm80_and_says_so: skipped, candle cannot make bf16 tensors here ({e})"
            );
                return Ok(());
            }
        };
    let v = Var::from_tensor(&t)?;
    let mut grads = GradStore::default();
    grads.insert(v.as_tensor(), t.copy()?);
    // Refused at construction (before any step) where the kernels cannot run.
    let res =
        RAdam::new(vec![v.clone()], ParamsRAdam::default()).and_then(|mut opt| opt.step(&grads));
    if has_bf16(&dev) {
        res?;
    } else {
        let e = res.expect_err("bf16 below sm_80 must be refused");
        // The very error that `cuda_supports` announces (`new` adds the variable's name).
        let Device::Cuda(d) = &dev else { unreachable!() };
        let said = candle_radam::cuda_supports(d, DType::BF16).unwrap_err().to_string();
        // Its message line (with RUST_BACKTRACE set, candle appends a backtrace, which differs).
        let said = said.lines().next().unwrap_or_default();
        assert!(e.to_string().contains(said), "got {e}, cuda_supports said {said}");
        if compute_capability(&dev).0 < 8 {
            assert!(e.to_string().contains("8.0"), "unclear error: {e}");
        }
        eprintln!("bf16_needs_sm80_and_says_so: refused as it must be: {e}");
    }
    Ok(())
}

/// The name of the device behind `dev` (the stand-in calls itself "... CPU stand-in ...").
fn device_name(dev: &Device) -> String {
    let Device::Cuda(d) = dev else { unreachable!() };
    d.cuda_stream().context().name().unwrap_or_default()
}

#[test]
fn a_driver_that_cannot_load_the_ptx_fails_at_construction() -> Result<()> {
    let Some(dev) = gpu("a_driver_that_cannot_load_the_ptx_fails_at_construction") else {
        return Ok(());
    };
    // The stand-in plays an older driver when told so (it then refuses PTX of a newer ISA with
    // CUDA_ERROR_UNSUPPORTED_PTX_VERSION, as a real one does); scripts/ci-cuda.sh runs this test
    // once that way. Otherwise the module must load, which `cuda_supports` now does.
    let old_driver = std::env::var("CUDA_STANDIN_DRIVER_VERSION")
        .ok()
        .and_then(|v| v.parse::<u32>().ok())
        .is_some_and(|v| v < 13000);
    let Device::Cuda(d) = &dev else { unreachable!() };
    if !old_driver {
        candle_radam::cuda_supports(d, DType::F32)?;
        eprintln!(
            "a_driver_that_cannot_load_the_ptx_fails_at_construction: module loads on {} \
             (the refusal is checked with CUDA_STANDIN_DRIVER_VERSION=12080 on the stand-in)",
            device_name(&dev)
        );
        return Ok(());
    }
    let e = candle_radam::cuda_supports(d, DType::F32).expect_err("the PTX must be refused");
    assert!(e.to_string().contains("PTX"), "unclear error: {e}");
    let v = Var::from_tensor(&Tensor::zeros(8, DType::F32, &Device::Cpu)?.to_device(&dev)?)?;
    let Err(e) = RAdam::new(vec![v], ParamsRAdam::default()) else {
        panic!("RAdam::new must fail when the driver cannot load the PTX")
    };
    assert!(e.to_string().contains("PTX"), "unclear error: {e}");
    Ok(())
}

#[test]
fn standin_refuses_kernels_it_does_not_have() -> Result<()> {
    let Some(dev) = gpu("standin_refuses_kernels_it_does_not_have") else {
        return Ok(());
    };
    if !device_name(&dev).contains("CPU stand-in") {
        eprintln!("standin_refuses_kernels_it_does_not_have: not the stand-in, nothing to check");
        return Ok(());
    }
    // candle's own kernels (here its affine kernel) have no host build: the launch must fail
    // and say which kernel, never return garbage.
    let t = Tensor::ones(16, DType::F32, &Device::Cpu)?.to_device(&dev)?;
    let e = t.affine(2.0, 1.0).expect_err("candle's affine kernel cannot run on the stand-in");
    // (Below candle's own build arch, loading candle's PTX fails first, and says so.)
    let old_gpu = compute_capability(&dev).0 < 8 && e.to_string().contains("PTX");
    assert!(e.to_string().contains("affine_f32") || old_gpu, "error does not name the kernel: {e}");
    Ok(())
}
