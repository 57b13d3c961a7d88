//! CUDA path: fused multi-tensor kernels from `kernels/radam.cu`, compiled to PTX by `build.rs`.
//!
//! One step costs, per device: one small host-to-device copy (the tensor table and block map of
//! every dtype at once, then the step's scalar sets) and one kernel launch per param dtype
//! present (at most four), whatever the number of tensors, groups and per-tensor step counts:
//! each table entry holds the index of its tensor's scalar set (one per distinct (group, t),
//! computed on the host by `rule::ScalarSets`), so the branch and the scalars are per tensor. The non-finite check ([`first_nonfinite`]) costs one more table copy, one
//! launch per dtype and one 4-byte-per-tensor device-to-host readback, which waits for the stream.
//!
//! Params are written through raw device pointers taken under candle's storage *read* guard: no
//! Rust reference to device memory is ever mutated (the memory is only touched by the kernel), the
//! guard keeps the allocation alive and un-moved until the launch is queued, and every launch goes
//! on candle's own stream for the device (`CudaDevice::cuda_stream`), so it is ordered after the
//! backward pass that produced the grads and before any later candle op that reads the params.
//! The caller guarantees that a grad never shares storage with its param.
//!
//! Streams: candle gives each `CudaDevice` handle one stream (for `Device::new_cuda`, the
//! driver's per-thread default stream; for `Device::new_cuda_with_stream`, a new stream of its
//! own), and all of candle's ops on that handle's tensors go on it. Two `new_cuda(0)` handles are
//! distinct devices to candle (different ids: variables on them are grouped and launched
//! separately) but both get the calling thread's default stream. Because the params are written
//! under a *read* access record, cudarc's cross-stream event tracking does not see the write: the
//! ordering above relies on the params being used on their handle's one stream only — which is
//! what candle does. Hence, as for any candle CUDA code, call `step` on the thread that ran the
//! backward pass (with the per-thread stream, another thread is another stream), and do not hand
//! the params to a second stream of your own without synchronizing it first.

use std::sync::Arc;

use candle_core::{bail, CudaDevice, DType, Device, Result, Storage, Tensor};
use cudarc::driver::{
    CudaSlice, CudaStream, DevicePtr, DevicePtrMut, LaunchConfig, PushKernelArg, SyncOnDrop,
};

use crate::precision::Store;
use crate::rule::StepScalars;

/// The base PTX (no bf16 kernels), JIT-compiled by the driver for any supported GPU.
const PTX_BASE: &str = include_str!(concat!(env!("OUT_DIR"), "/radam.ptx"));
/// The PTX for compute capability `HI_ARCH` and newer, with the bf16 kernels.
const PTX_HI: &str = include_str!(concat!(env!("OUT_DIR"), "/radam_sm80.ptx"));
// BASE_ARCH / HI_ARCH (the two PTX targets) and CHUNK / THREADS (the kernel's launch geometry),
// written by build.rs.
include!(concat!(env!("OUT_DIR"), "/kernel_info.rs"));
/// u64 words per table entry (`struct Entry` in the kernel).
const ENTRY_WORDS: usize = 12;

fn w<T, E: std::fmt::Display + Send + Sync + 'static>(r: std::result::Result<T, E>) -> Result<T> {
    r.map_err(candle_core::Error::wrap)
}

/// The moment buffers of one variable.
enum Buffers {
    F32(CudaSlice<f32>, CudaSlice<f32>),
    F64(CudaSlice<f64>, CudaSlice<f64>),
    /// A variable with no element: nothing is allocated (and nothing launched for it).
    Empty(DType),
    /// 8-bit state (`src/quant.rs`): `m` codes, `m` absmax, `v` codes, `v` absmax.
    /// (Boxed: four slices would make every variable's moments as large.)
    Q8(Box<Q8Buffers>),
}

/// `m` codes, `m` absmax, `v` codes, `v` absmax of an 8-bit variable.
type Q8Buffers = (CudaSlice<u8>, CudaSlice<f32>, CudaSlice<u8>, CudaSlice<f32>);

/// `m` and `v` of one variable in device memory (moment dtype: f32, or f64 for f64 params).
pub(crate) struct CudaMoments {
    dev: CudaDevice,
    n: usize,
    bufs: Buffers,
}

fn cuda_device(t: &Tensor) -> Result<&CudaDevice> {
    match t.device() {
        Device::Cuda(d) => Ok(d),
        other => bail!("RAdam: expected a CUDA tensor, got one on {other:?}"),
    }
}

impl CudaMoments {
    /// Zero moments for `param` (a CUDA tensor), on its device; 8-bit ones when `eight`.
    pub(crate) fn zeros(param: &Tensor, eight: bool) -> Result<Self> {
        let dev = cuda_device(param)?.clone();
        // Fail at construction (not at the first step) when this GPU cannot run the kernels
        // (e.g. bf16 below sm_80) or its driver cannot load the PTX.
        load_module(&dev, param.dtype() == DType::BF16)?;
        let n = param.elem_count();
        if eight && n > 0 {
            return Self::from_8bit(param, &crate::cpu8::Moments8::zeros(n));
        }
        let dtype = crate::moments::moment_dtype(param.dtype())?;
        let bufs = match (n, dtype) {
            (0, d) => Buffers::Empty(d),
            (_, DType::F64) => Buffers::F64(dev.alloc_zeros(n)?, dev.alloc_zeros(n)?),
            _ => Buffers::F32(dev.alloc_zeros(n)?, dev.alloc_zeros(n)?),
        };
        Ok(Self { dev, n, bufs })
    }

    /// Moments for `param` from flat CPU tensors `m`, `v` (moment dtype, `param.elem_count()` long).
    pub(crate) fn from_tensors(param: &Tensor, m: &Tensor, v: &Tensor) -> Result<Self> {
        let dev = cuda_device(param)?.clone();
        let n = param.elem_count();
        let dtype = crate::moments::moment_dtype(param.dtype())?;
        for (name, t) in [("m", m), ("v", v)] {
            if t.elem_count() != n || t.dtype() != dtype {
                bail!(
                    "RAdam: moment {name} has {} {:?} elements, expected {n} {dtype:?}",
                    t.elem_count(),
                    t.dtype()
                );
            }
        }
        let (m, v) = (m.flatten_all()?, v.flatten_all()?);
        let bufs = match (n, dtype) {
            (0, d) => Buffers::Empty(d),
            (_, DType::F64) => Buffers::F64(
                dev.clone_htod(&m.to_vec1::<f64>()?)?,
                dev.clone_htod(&v.to_vec1::<f64>()?)?,
            ),
            _ => Buffers::F32(
                dev.clone_htod(&m.to_vec1::<f32>()?)?,
                dev.clone_htod(&v.to_vec1::<f32>()?)?,
            ),
        };
        Ok(Self { dev, n, bufs })
    }

    /// 8-bit moments for `param` from host codes and absmax (`param.elem_count()` elements).
    pub(crate) fn from_8bit(param: &Tensor, q: &crate::cpu8::Moments8) -> Result<Self> {
        let dev = cuda_device(param)?.clone();
        load_module(&dev, param.dtype() == DType::BF16)?;
        let n = param.elem_count();
        if q.len() != n {
            bail!("RAdam: 8-bit moments of {} elements for a variable of {n}", q.len());
        }
        if n == 0 {
            return Ok(Self { dev, n, bufs: Buffers::Empty(DType::F32) });
        }
        let bufs = Buffers::Q8(Box::new((
            dev.clone_htod(&q.m)?,
            dev.clone_htod(&q.m_absmax)?,
            dev.clone_htod(&q.v)?,
            dev.clone_htod(&q.v_absmax)?,
        )));
        Ok(Self { dev, n, bufs })
    }

    /// Whether these are 8-bit moments.
    pub(crate) fn is_8bit(&self) -> bool {
        matches!(self.bufs, Buffers::Q8(..))
    }

    /// Device bytes of the moments.
    pub(crate) fn bytes(&self) -> usize {
        match &self.bufs {
            Buffers::F32(..) => 8 * self.n,
            Buffers::F64(..) => 16 * self.n,
            Buffers::Empty(_) => 0,
            Buffers::Q8(q) => 2 * self.n + 4 * (q.1.len() + q.3.len()),
        }
    }

    /// The codes and absmax of 8-bit moments, copied to the host; `None` for full ones.
    pub(crate) fn to_8bit(&self) -> Result<Option<crate::cpu8::Moments8>> {
        let Buffers::Q8(q) = &self.bufs else { return Ok(None) };
        let (m, ma, v, va) = &**q;
        Ok(Some(crate::cpu8::Moments8 {
            m: self.dev.clone_dtoh(m)?,
            m_absmax: self.dev.clone_dtoh(ma)?,
            v: self.dev.clone_dtoh(v)?,
            v_absmax: self.dev.clone_dtoh(va)?,
        }))
    }

    /// The moments as flat CPU tensors (8-bit ones dequantized to f32).
    pub(crate) fn to_tensors(&self) -> Result<(Tensor, Tensor)> {
        let cpu = Device::Cpu;
        if let Some(q) = self.to_8bit()? {
            let (m, v) = q.to_f32();
            return Ok((Tensor::from_vec(m, self.n, &cpu)?, Tensor::from_vec(v, self.n, &cpu)?));
        }
        Ok(match &self.bufs {
            Buffers::F32(m, v) => (
                Tensor::from_vec(self.dev.clone_dtoh(m)?, self.n, &cpu)?,
                Tensor::from_vec(self.dev.clone_dtoh(v)?, self.n, &cpu)?,
            ),
            Buffers::F64(m, v) => (
                Tensor::from_vec(self.dev.clone_dtoh(m)?, self.n, &cpu)?,
                Tensor::from_vec(self.dev.clone_dtoh(v)?, self.n, &cpu)?,
            ),
            Buffers::Empty(d) => (Tensor::zeros(0, *d, &cpu)?, Tensor::zeros(0, *d, &cpu)?),
            Buffers::Q8(..) => unreachable!("8-bit moments are returned above"),
        })
    }
}

/// One variable of a step. Guaranteed by the caller: `param` and `grad` are on the same CUDA
/// device, same shape and dtype, both contiguous (possibly with a start offset), and they do not
/// share storage.
pub(crate) struct Item<'a> {
    pub param: &'a Tensor,
    pub grad: &'a Tensor,
    pub moments: &'a mut CudaMoments,
    /// Index of this variable's scalar set in the step's `sets` (0 for the non-finite check).
    pub set: u32,
    /// The param's rounding buffer (`Entry::aux`), when its mode has one.
    pub aux: Option<&'a mut CudaSlice<u16>>,
    /// How the param is stored: mode (`Entry::flags` bits 4-5) and stream (`Entry::key`).
    pub store: Store,
}

/// The four param dtypes, in launch order, with their kernel names: update, non-finite check,
/// sum of squares.
const KINDS: [(DType, &str, &str, &str); 4] = [
    (DType::F32, "radam_mt_f32", "radam_check_b32", "radam_sumsq_f32"),
    (DType::F16, "radam_mt_f16", "radam_check_b16h", "radam_sumsq_f16"),
    (DType::BF16, "radam_mt_bf16", "radam_check_b16b", "radam_sumsq_bf16"),
    (DType::F64, "radam_mt_f64", "radam_check_b64", "radam_sumsq_f64"),
];

/// The 8-bit state's update kernels (`radam8_mt_*`), per param dtype: kind `KINDS.len() + i`
/// of a [`Group`].
const KINDS8: [(DType, &str); 3] =
    [(DType::F32, "radam8_mt_f32"), (DType::F16, "radam8_mt_f16"), (DType::BF16, "radam8_mt_bf16")];

/// The dtype and update kernel of group kind `kind` (`KINDS`, then `KINDS8`).
fn kind_kernel(kind: usize) -> (DType, &'static str) {
    match kind.checked_sub(KINDS.len()) {
        Some(i) => KINDS8[i],
        None => (KINDS[kind].0, KINDS[kind].1),
    }
}

/// Device pointers of one tensor, the raw material of a table entry.
#[derive(Clone, Copy)]
struct Ptrs {
    p: u64,
    g: u64,
    m: u64,
    v: u64,
    n: u64,
    /// Index of the scalar set (`Entry::set`).
    set: u32,
    /// 8-bit state: the absmax arrays of `m` and `v` (`m`, `v` then point to codes); 0 for full
    /// moments.
    m_absmax: u64,
    v_absmax: u64,
    /// The rounding buffer (`Entry::aux`, 0 when none), the mode (`Entry::flags` bits 4-5) and
    /// the stochastic-rounding stream word (`Entry::key`).
    aux: u64,
    mode: u8,
    key: u64,
}

impl Ptrs {
    const NONE: Ptrs = Ptrs {
        p: 0,
        g: 0,
        m: 0,
        v: 0,
        n: 0,
        set: 0,
        m_absmax: 0,
        v_absmax: 0,
        aux: 0,
        mode: 0,
        key: 0,
    };
}

/// The raw device pointer of a contiguous CUDA tensor's first element. The returned guard must
/// live until the kernel that uses the pointer has been launched (it records the access for
/// cudarc's multi-stream tracking).
fn raw_ptr<'s>(
    s: &'s Storage,
    t: &Tensor,
    offset: usize,
    stream: &'s CudaStream,
) -> Result<(u64, SyncOnDrop<'s>)> {
    let Storage::Cuda(c) = s else { bail!("RAdam: expected a CUDA tensor") };
    let n = t.elem_count();
    macro_rules! ptr {
        ($ty:ty) => {{
            let sl = c.as_cuda_slice::<$ty>()?;
            if offset + n > sl.len() {
                bail!(
                    "RAdam: tensor of {n} elements at offset {offset} overflows its storage of {}",
                    sl.len()
                );
            }
            let (p, guard) = sl.device_ptr(stream);
            (p + (offset * std::mem::size_of::<$ty>()) as u64, guard)
        }};
    }
    Ok(match t.dtype() {
        DType::F32 => ptr!(f32),
        DType::F64 => ptr!(f64),
        DType::F16 => ptr!(half::f16),
        DType::BF16 => ptr!(half::bf16),
        d => bail!("RAdam: unsupported dtype {d:?}"),
    })
}

/// Whether this build's kernels run `dtype` params on the GPU `dev`: `Ok(())`, or the error that
/// [`RAdam::new`](crate::RAdam::new) would give (GPU older than the PTX targets, bf16 on a GPU
/// below sm_80 or below this build's `CUDA_COMPUTE_CAP`, or a driver that cannot load the PTX,
/// e.g. one older than the nvcc that built it). Loads the kernel module into `dev` (once per
/// device handle; candle caches it). Non-float dtypes are refused by `new` itself.
pub fn cuda_supports(dev: &CudaDevice, dtype: DType) -> Result<()> {
    load_module(dev, dtype == DType::BF16)
}

/// Picks the PTX module for `dev` ([`module_for`]) and loads it through candle's custom-module
/// cache, so that a driver that cannot JIT the PTX fails here (at construction), not at a step.
fn load_module(dev: &CudaDevice, need_bf16: bool) -> Result<()> {
    let (module, ptx) = module_for(&dev.cuda_stream(), need_bf16)?;
    // candle loads a module when a function of it is first asked for: ask for its first entry.
    let entry = ptx
        .split(".entry ")
        .nth(1)
        .and_then(|rest| rest.split('(').next())
        .map(str::trim)
        .ok_or_else(|| candle_core::Error::Msg(format!("RAdam: {module} has no kernel entry")))?;
    dev.get_or_load_custom_func(entry, module, ptx).map(|_| ())
}

/// Which PTX module a device runs, by compute capability; loaded once per device by candle's
/// custom-module cache.
fn module_for(stream: &Arc<CudaStream>, need_bf16: bool) -> Result<(&'static str, &'static str)> {
    let (major, minor) = w(stream.context().compute_capability())?;
    let cc = (major * 10 + minor) as u32;
    if cc >= HI_ARCH {
        return Ok(("candle_radam_hi", PTX_HI));
    }
    if cc < BASE_ARCH {
        bail!(
            "RAdam: this build's CUDA kernels need a GPU of compute capability {}.{} or newer, this one \
             is {major}.{minor}",
            BASE_ARCH / 10,
            BASE_ARCH % 10
        );
    }
    if need_bf16 {
        if cc < 80 {
            bail!(
                "RAdam: bf16 parameters need a GPU of compute capability 8.0 or newer (sm_80+), \
                 this one is {major}.{minor}; use f16 or f32 on this GPU"
            );
        }
        bail!(
            "RAdam: this build's bf16 kernels target compute_{HI_ARCH} (CUDA_COMPUTE_CAP), newer than \
             this GPU ({major}.{minor}); rebuild with CUDA_COMPUTE_CAP={cc} or lower"
        );
    }
    Ok(("candle_radam_base", PTX_BASE))
}

/// A dtype group of one launch: its kernel names, the number of blocks, and where its entries
/// and block map start in the uploaded table (in u64 words).
struct Group {
    kind: usize,
    blocks: u32,
    table_word: usize,
    map_word: usize,
    /// `(index in the caller's items, blocks)` of each entry, in table order.
    members: Vec<(usize, usize)>,
}

/// The table of every non-empty item (entries then block map, per dtype group) as u64 words.
fn build_table(items: &[(DType, Ptrs)]) -> Result<(Vec<u64>, Vec<Group>)> {
    let mut words = Vec::new();
    let mut groups = Vec::new();
    let kinds = KINDS.iter().map(|k| (k.0, false)).chain(KINDS8.iter().map(|k| (k.0, true)));
    for (kind, (dtype, q8)) in kinds.enumerate() {
        let dtype = &dtype;
        let members: Vec<(usize, &Ptrs)> = items
            .iter()
            .enumerate()
            .filter(|(_, (d, p))| d == dtype && p.n > 0 && (p.m_absmax != 0) == q8)
            .map(|(i, (_, p))| (i, p))
            .collect();
        if members.is_empty() {
            continue;
        }
        let table_word = words.len();
        let mut map: Vec<u32> = Vec::new();
        for (e, (item, p)) in members.iter().enumerate() {
            let aligned = (p.p | p.g | p.m | p.v | p.aux) % 16 == 0;
            let flags =
                aligned as u64 | (((p.g % 16 == 0) as u64) << 1) | ((p.mode as u64 & 3) << 4);
            let first_block = map.len() as u64;
            // Word 6: `uint32_t flags` (low half) then `uint32_t set` (high half).
            let flags_set = flags | (p.set as u64) << 32;
            let entry: [u64; ENTRY_WORDS] = [
                p.p,
                p.g,
                p.m,
                p.v,
                p.n,
                first_block,
                flags_set,
                *item as u64,
                p.aux,
                p.key,
                p.m_absmax,
                p.v_absmax,
            ];
            words.extend_from_slice(&entry);
            let blocks = p.n.div_ceil(CHUNK);
            if map.len() as u64 + blocks > i32::MAX as u64 {
                bail!("RAdam: too many elements of {dtype:?} for one launch");
            }
            map.extend(std::iter::repeat_n(e as u32, blocks as usize));
        }
        let map_word = words.len();
        words.extend(
            map.chunks(2).map(|c| c[0] as u64 | (c.get(1).copied().unwrap_or(0) as u64) << 32),
        );
        let members = members.iter().map(|(i, p)| (*i, p.n.div_ceil(CHUNK) as usize)).collect();
        groups.push(Group { kind, blocks: map.len() as u32, table_word, map_word, members });
    }
    Ok((words, groups))
}

/// The scalar sets as the kernels' `Scalars<S>` array, in u64 words: per set, the eight scalars
/// rounded to `f32` (two per word, low half first, then the `update` discriminant as an `int32`
/// in the low half of word 4 and a zero pad: 40 bytes) or kept in `f64` (one per word, `update`
/// in word 8: 72 bytes).
fn scalar_words(sets: &[StepScalars], f64_math: bool) -> Vec<u64> {
    let mut words = Vec::with_capacity(sets.len() * if f64_math { 9 } else { 5 });
    for k in sets {
        let s = [
            k.one_minus_beta1,
            k.beta2,
            k.one_minus_beta2,
            k.step_size,
            k.eps,
            k.l2,
            k.decay,
            k.grad_mult,
        ];
        let update = k.update as u8 as u64;
        if f64_math {
            words.extend(s.map(f64::to_bits));
            words.push(update);
        } else {
            let b = s.map(|x| (x as f32).to_bits() as u64);
            words.extend([
                b[0] | b[1] << 32,
                b[2] | b[3] << 32,
                b[4] | b[5] << 32,
                b[6] | b[7] << 32,
            ]);
            words.push(update);
        }
    }
    words
}

fn launch_config(blocks: u32) -> LaunchConfig {
    LaunchConfig { grid_dim: (blocks, 1, 1), block_dim: (THREADS, 1, 1), shared_mem_bytes: 0 }
}

/// Index into `items` of the first one whose gradient holds a NaN or an infinity.
///
/// Runs one check kernel per grad dtype over all grads, then reads back one flag per item: this
/// waits for the device (everything queued before on candle's stream, the backward pass
/// included), so a bad gradient is reported by the `step` call that sees it, before any param or
/// moment is touched.
pub(crate) fn first_nonfinite(items: &[Item<'_>]) -> Result<Option<usize>> {
    let (_, flags) = grad_pass::<u32>(items, GradPass::Check)?;
    Ok(flags.iter().position(|&f| f != 0))
}

/// The sum of the squares of each item's gradient, in f64 (global-norm clipping): one read of
/// every gradient (the `radam_sumsq_*` kernels: per-block f64 partial sums, see
/// `kernels/radam.cu`), then the partials read back and added per item, in block order, on the
/// host. NaN / inf for a gradient holding a NaN / inf. Waits for the device, as
/// [`first_nonfinite`] (which it replaces when clipping or loss scaling is on).
pub(crate) fn sumsq(items: &[Item<'_>]) -> Result<Vec<f64>> {
    let (groups, partials) = grad_pass::<f64>(items, GradPass::SumSq)?;
    let mut out = vec![0.0; items.len()];
    let mut block = 0;
    for g in &groups {
        for &(item, blocks) in &g.members {
            out[item] = partials[block..block + blocks].iter().sum();
            block += blocks;
        }
    }
    Ok(out)
}

/// The two read-only passes over a step's gradients.
#[derive(Clone, Copy, PartialEq)]
enum GradPass {
    /// Non-finite check: one u32 flag per item.
    Check,
    /// Sum of squares: one f64 partial per block.
    SumSq,
}

/// Runs `pass` over the gradients of `items` (one launch per grad dtype) and reads its output
/// back: the dtype groups and, per item (`Check`) or per block in group order (`SumSq`), the
/// kernel's output.
fn grad_pass<T>(items: &[Item<'_>], pass: GradPass) -> Result<(Vec<Group>, Vec<T>)>
where
    T: cudarc::driver::DeviceRepr + cudarc::driver::ValidAsZeroBits + Clone + Default + Unpin,
{
    let Some(first) = items.first() else {
        return Ok((Vec::new(), Vec::new()));
    };
    let dev = cuda_device(first.param)?;
    let stream = dev.cuda_stream();
    let grads: Vec<&Tensor> = items.iter().map(|it| it.grad).collect();
    let storages: Vec<_> = grads.iter().map(|g| g.storage_and_layout()).collect();
    let mut guards = Vec::with_capacity(items.len());
    let mut table = Vec::with_capacity(items.len());
    for (g, (s, layout)) in grads.iter().zip(&storages) {
        if !g.device().same_device(first.param.device()) {
            bail!("RAdam: one CUDA step got tensors on several devices");
        }
        let n = g.elem_count() as u64;
        let mut gp = 0;
        if n > 0 {
            let (ptr, guard) = raw_ptr(s, g, layout.start_offset(), &stream)?;
            gp = ptr;
            guards.push(guard);
        }
        table.push((g.dtype(), Ptrs { g: gp, n, ..Ptrs::NONE }));
    }
    let (words, groups) = build_table(&table)?;
    if groups.is_empty() {
        return Ok((
            groups,
            vec![T::default(); if pass == GradPass::Check { items.len() } else { 0 }],
        ));
    }
    // Every kernel looked up before anything is launched: a failure changes nothing. The check
    // works on raw bits (no bf16 arithmetic); the sums convert bf16, whose kernels need sm_80.
    let need_bf16 =
        pass == GradPass::SumSq && groups.iter().any(|g| KINDS[g.kind].0 == DType::BF16);
    let (module, ptx) = module_for(&stream, need_bf16)?;
    let name = |kind: usize| match pass {
        GradPass::Check => KINDS[kind].2,
        GradPass::SumSq => KINDS[kind].3,
    };
    let funcs = groups
        .iter()
        .map(|g| dev.get_or_load_custom_func(name(g.kind), module, ptx))
        .collect::<Result<Vec<_>>>()?;
    let dev_table = w(stream.clone_htod(&words))?;
    let total_blocks: usize = groups.iter().map(|g| g.blocks as usize).sum();
    let out_len = if pass == GradPass::Check { items.len() } else { total_blocks };
    let mut out = w(stream.alloc_zeros::<T>(out_len))?;
    {
        let (base, _t) = dev_table.device_ptr(&stream);
        let (out_ptr, _o) = out.device_ptr_mut(&stream);
        let mut block = 0u64;
        for (grp, func) in groups.iter().zip(&funcs) {
            let table_ptr = base + 8 * grp.table_word as u64;
            let map_ptr = base + 8 * grp.map_word as u64;
            // Flags are indexed by item; partials by block, each group after the previous ones.
            let dst = match pass {
                GradPass::Check => out_ptr,
                GradPass::SumSq => out_ptr + block * std::mem::size_of::<T>() as u64,
            };
            block += grp.blocks as u64;
            let mut b = func.builder();
            b.arg(&table_ptr).arg(&map_ptr).arg(&dst);
            // SAFETY: the table holds valid pointers to `n` elements of the kernel's dtype, kept
            // alive by `storages`; the output has one element per item (check) or per block of
            // this and the previous groups (sums).
            w(unsafe { b.launch(launch_config(grp.blocks)) })?;
        }
    }
    drop(guards);
    Ok((groups, w(stream.clone_dtoh(&out))?))
}

/// Applies one step to every item (all on one device), item `i` with the host-computed scalar set
/// `sets[items[i].set]`.
pub(crate) fn step(items: &mut [Item<'_>], sets: &[StepScalars]) -> Result<()> {
    let Some(first) = items.first() else {
        return Ok(());
    };
    let dev = cuda_device(first.param)?.clone();
    let stream = dev.cuda_stream();
    let tensors: Vec<(&Tensor, &Tensor)> = items.iter().map(|it| (it.param, it.grad)).collect();
    let storages: Vec<_> =
        tensors.iter().map(|(p, g)| (p.storage_and_layout(), g.storage_and_layout())).collect();
    let first_dev = first.param.device().clone();
    let mut guards = Vec::with_capacity(4 * items.len());
    let mut table = Vec::with_capacity(items.len());
    for (it, ((p, g), ((ps, pl), (gs, gl)))) in items.iter_mut().zip(tensors.iter().zip(&storages))
    {
        let n = p.elem_count();
        if !p.device().same_device(&first_dev) || !g.device().same_device(p.device()) {
            bail!("RAdam: one CUDA step got tensors on several devices");
        }
        if g.dtype() != p.dtype() || g.elem_count() != n || it.moments.n != n {
            bail!("RAdam: param, grad and moments of one variable disagree in dtype or size");
        }
        if n == 0 {
            table.push((p.dtype(), Ptrs::NONE));
            continue;
        }
        let (pp, pguard) = raw_ptr(ps, p, pl.start_offset(), &stream)?;
        let (gp, gguard) = raw_ptr(gs, g, gl.start_offset(), &stream)?;
        guards.push(pguard);
        guards.push(gguard);
        let (mut ma, mut va) = (0, 0);
        let (mp, vp) = match (&mut it.moments.bufs, p.dtype()) {
            (Buffers::Q8(q), DType::F32 | DType::F16 | DType::BF16) => {
                let (m, am, v, av) = &mut **q;
                let (mp, mg) = m.device_ptr_mut(&stream);
                let (vp, vg) = v.device_ptr_mut(&stream);
                let (ap, ag) = am.device_ptr_mut(&stream);
                let (bp, bg) = av.device_ptr_mut(&stream);
                guards.extend([mg, vg, ag, bg]);
                (ma, va) = (ap, bp);
                (mp, vp)
            }
            (Buffers::F32(m, v), DType::F32 | DType::F16 | DType::BF16) => {
                let (mp, mg) = m.device_ptr_mut(&stream);
                let (vp, vg) = v.device_ptr_mut(&stream);
                guards.push(mg);
                guards.push(vg);
                (mp, vp)
            }
            (Buffers::F64(m, v), DType::F64) => {
                let (mp, mg) = m.device_ptr_mut(&stream);
                let (vp, vg) = v.device_ptr_mut(&stream);
                guards.push(mg);
                guards.push(vg);
                (mp, vp)
            }
            _ => bail!("RAdam: moments of a {:?} variable have the wrong dtype", p.dtype()),
        };
        if it.set as usize >= sets.len() {
            bail!("RAdam: scalar set {} of {} does not exist", it.set, sets.len());
        }
        let mode = it.store.mode;
        let ap = match (&mut it.aux, mode.has_aux()) {
            (Some(a), true) if a.len() == n => {
                let (ap, ag) = a.device_ptr_mut(&stream);
                guards.push(ag);
                ap
            }
            (_, false) => 0,
            _ => bail!("RAdam: the rounding buffer of a {:?} variable is missing", p.dtype()),
        };
        let key = it.store.stream;
        let (mp, vp, set, n) = (mp, vp, it.set, n as u64);
        let (m_absmax, v_absmax) = (ma, va);
        table.push((
            p.dtype(),
            Ptrs {
                p: pp,
                g: gp,
                m: mp,
                v: vp,
                n,
                set,
                m_absmax,
                v_absmax,
                aux: ap,
                mode: mode as u8,
                key,
            },
        ));
    }
    let (words, groups) = build_table(&table)?;
    if groups.is_empty() {
        return Ok(());
    }
    let need_bf16 = groups.iter().any(|g| kind_kernel(g.kind).0 == DType::BF16);
    let (module, ptx) = module_for(&stream, need_bf16)?;
    let funcs = groups
        .iter()
        .map(|g| dev.get_or_load_custom_func(kind_kernel(g.kind).1, module, ptx))
        .collect::<Result<Vec<_>>>()?;
    // The scalar sets follow the tables: f32 sets for the f32 / f16 / bf16 kernels, f64 sets for
    // the f64 kernel (each rounded once from the host's f64).
    let mut words = words;
    let sets32_word = words.len();
    words.extend(scalar_words(sets, false));
    let sets64_word = words.len();
    words.extend(scalar_words(sets, true));
    // The 8-bit kernels' maps (signed then unsigned, f32, two per word), with the same upload
    // (2 KiB, only when an 8-bit tensor is stepped).
    let maps_word = words.len();
    if groups.iter().any(|g| g.kind >= KINDS.len()) {
        let maps = crate::quant::signed_map().iter().chain(crate::quant::unsigned_map());
        let bits: Vec<u64> = maps.map(|x| x.to_bits() as u64).collect();
        words.extend(bits.chunks(2).map(|c| c[0] | c[1] << 32));
    }
    let dev_table = w(stream.clone_htod(&words))?;
    {
        let (base, _t) = dev_table.device_ptr(&stream);
        for (grp, func) in groups.iter().zip(&funcs) {
            let table_ptr = base + 8 * grp.table_word as u64;
            let map_ptr = base + 8 * grp.map_word as u64;
            let f64_math = kind_kernel(grp.kind).0 == DType::F64;
            let sets_ptr = base + 8 * if f64_math { sets64_word } else { sets32_word } as u64;
            let maps_ptr = base + 8 * maps_word as u64;
            let mut b = func.builder();
            b.arg(&table_ptr).arg(&map_ptr).arg(&sets_ptr);
            if grp.kind >= KINDS.len() {
                b.arg(&maps_ptr);
            }
            // SAFETY: every table entry points at `n` live elements of the kernel's dtype (param
            // and grad kept alive by `storages`, moments by the `&mut` borrows behind `guards`),
            // params and grads never alias, and the launch is ordered on candle's stream.
            w(unsafe { b.launch(launch_config(grp.blocks)) })?;
        }
    }
    drop(guards);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ptrs(base: u64, n: u64) -> Ptrs {
        Ptrs { p: base, g: base + 0x1000, m: base + 0x2000, v: base + 0x3000, n, ..Ptrs::NONE }
    }

    /// The layout `kernels/radam.cu` reads (and `kernels/emu` checks): per dtype group (the
    /// full-state kinds, then the 8-bit ones), 12-word entries then the block map packed two u32
    /// per word, low half first.
    #[test]
    fn table_layout_matches_the_kernel() {
        let q8 = Ptrs { m_absmax: 0x60_4000, v_absmax: 0x60_5000, ..ptrs(0x60_0000, 4096) };
        let items = [
            (DType::F16, ptrs(0x10_0000, 4097)), // 2 blocks
            (DType::F32, ptrs(0x20_0000, 0)),    // empty: no entry, no block
            (DType::F32, ptrs(0x30_0004, 1)),    // unaligned param
            // exactly 1 block; bf16-style rounding fields: buffer, mode 3 (bits 4-5), stream word
            (
                DType::F16,
                Ptrs { aux: 0x60_0000, mode: 3, key: 0xdead_beef, ..ptrs(0x40_0000, 4096) },
            ),
            (DType::F32, Ptrs { set: 5, ..ptrs(0x50_0000, 3 * CHUNK + 1) }), // scalar set 5
            (DType::F32, q8), // 8-bit state: its own group, absmax in 10-11
        ];
        let (w, groups) = build_table(&items).unwrap();
        // F32 group first (KINDS order), then F16, then the 8-bit F32 group.
        assert_eq!(groups.len(), 3);
        let (g32, g16, g8) = (&groups[0], &groups[1], &groups[2]);
        assert_eq!(
            (kind_kernel(g32.kind), g32.blocks, g32.table_word, g32.map_word),
            ((DType::F32, "radam_mt_f32"), 5, 0, 24)
        );
        assert_eq!(
            &w[0..12],
            &[0x30_0004, 0x30_1004, 0x30_2004, 0x30_3004, 1, 0, 0b00, 2, 0, 0, 0, 0],
            "unaligned entry"
        );
        assert_eq!(
            &w[12..24],
            &[
                0x50_0000,
                0x50_1000,
                0x50_2000,
                0x50_3000,
                3 * CHUNK + 1,
                1,
                5 << 32 | 0b11,
                4,
                0,
                0,
                0,
                0
            ]
        );
        // Block map 0,1,1,1,1 packed as (1<<32|0), (1<<32|1), (0<<32|1).
        assert_eq!(&w[24..27], &[1 << 32, 1 << 32 | 1, 1]);
        assert_eq!(
            (kind_kernel(g16.kind), g16.blocks, g16.table_word, g16.map_word),
            ((DType::F16, "radam_mt_f16"), 3, 27, 51)
        );
        assert_eq!(
            &w[27..39],
            &[0x10_0000, 0x10_1000, 0x10_2000, 0x10_3000, 4097, 0, 0b11, 0, 0, 0, 0, 0]
        );
        assert_eq!(
            &w[39..51],
            &[
                0x40_0000,
                0x40_1000,
                0x40_2000,
                0x40_3000,
                4096,
                2,
                3 << 4 | 0b11,
                3,
                0x60_0000,
                0xdead_beef,
                0,
                0
            ]
        );
        assert_eq!(&w[51..53], &[0, 1]); // map 0,0,1
        assert_eq!(
            (kind_kernel(g8.kind), g8.blocks, g8.table_word, g8.map_word),
            ((DType::F32, "radam8_mt_f32"), 1, 53, 65)
        );
        assert_eq!(
            &w[53..65],
            &[
                0x60_0000, 0x60_1000, 0x60_2000, 0x60_3000, 4096, 0, 0b11, 5, 0, 0, 0x60_4000,
                0x60_5000
            ]
        );
        assert_eq!(&w[65..66], &[0]);
        assert_eq!(w.len(), 66);
        // (item, blocks) per entry: how the per-block partial sums map back to items.
        assert_eq!(
            (&g32.members[..], &g16.members[..], &g8.members[..]),
            (&[(2, 1), (4, 4)][..], &[(0, 2), (3, 1)][..], &[(5, 1)][..])
        );
    }

    /// `Scalars<float>` / `Scalars<double>` of the kernel: eight scalars then `int32 update`.
    #[test]
    fn scalar_sets_match_the_kernel() {
        let p = crate::ParamsRAdam::default();
        let mut sets = [StepScalars::new(&p, 1), StepScalars::new(&p, 6)]; // Sgd, then Adaptive
        sets[1].grad_mult = 0.25;
        let w32 = scalar_words(&sets, false);
        assert_eq!(w32.len(), 10); // 40 bytes per set
        let f = |w: u64, hi: bool| f32::from_bits(if hi { (w >> 32) as u32 } else { w as u32 });
        assert_eq!((f(w32[0], false), f(w32[0], true)), (0.1f32, 0.999f32));
        assert_eq!(f(w32[1], true), sets[0].step_size as f32);
        assert_eq!((f(w32[3], false), f(w32[3], true)), (1.0f32, 1.0f32)); // decay, grad_mult
        assert_eq!(f(w32[5 + 3], true), 0.25f32);
        assert_eq!((w32[4], w32[9]), (1, 0)); // update: Sgd, Adaptive (pad 0)
        let w64 = scalar_words(&sets, true);
        assert_eq!(w64.len(), 18); // 72 bytes per set
        assert_eq!(f64::from_bits(w64[9 + 3]), sets[1].step_size);
        assert_eq!(f64::from_bits(w64[9 + 7]), 0.25);
        assert_eq!((w64[8], w64[17]), (1, 0));
    }

    #[test]
    fn nothing_to_launch_for_empty_tensors() {
        let (w, groups) =
            build_table(&[(DType::F32, ptrs(0, 0)), (DType::BF16, ptrs(0, 0))]).unwrap();
        assert!(w.is_empty() && groups.is_empty());
    }
}
