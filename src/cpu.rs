//! CPU path: one fused, in-place pass over (param, grad, m, v) per variable.
//!
//! The pass runs inside candle's in-place custom-op machinery (`Tensor::inplace_op2`), which takes
//! the param's storage write lock and the grad's read lock, so no temporary tensor is made and no
//! `Var::set` happens. Large tensors are split into chunks that rayon spreads over the cores; the
//! inner loop is branch-free per element so the compiler turns it into SIMD. f16/bf16 params are
//! loaded to f32 in blocks, updated, and stored back under their [`crate::Rounding`] mode
//! ([`crate::precision`]'s `load_block` / `store_block`).

use candle_core::{
    backend::BackendStorage, bail, CpuStorage, DType, InplaceOp2, Layout, Result, Tensor,
};
use half::{bf16, f16, slice::HalfFloatSliceExt};
use rayon::prelude::*;
use std::sync::Mutex;

use crate::precision::{self, Half, Mode, Store};
use crate::rule::{StepScalars, Update};

/// Elements per rayon task: large enough to amortize scheduling, small enough to balance.
const CHUNK: usize = 1 << 15;
/// Elements converted at a time for half types (stack buffers stay in L1).
const HALF_BLOCK: usize = precision::BLOCK;

/// The moment buffers of one CPU variable.
pub(crate) enum CpuMoments {
    F32 { m: Vec<f32>, v: Vec<f32> },
    F64 { m: Vec<f64>, v: Vec<f64> },
}

impl CpuMoments {
    pub(crate) fn zeros(n: usize, dtype: DType) -> Self {
        match dtype {
            DType::F64 => Self::F64 { m: vec![0.0; n], v: vec![0.0; n] },
            _ => Self::F32 { m: vec![0.0; n], v: vec![0.0; n] },
        }
    }

    pub(crate) fn to_tensors(&self) -> Result<(Tensor, Tensor)> {
        let dev = candle_core::Device::Cpu;
        Ok(match self {
            Self::F32 { m, v } => {
                (Tensor::from_slice(m, m.len(), &dev)?, Tensor::from_slice(v, v.len(), &dev)?)
            }
            Self::F64 { m, v } => {
                (Tensor::from_slice(m, m.len(), &dev)?, Tensor::from_slice(v, v.len(), &dev)?)
            }
        })
    }

    /// From flat CPU tensors of the moment dtype.
    pub(crate) fn from_tensors(m: &Tensor, v: &Tensor) -> Result<Self> {
        Ok(match m.dtype() {
            DType::F64 => Self::F64 { m: m.to_vec1()?, v: v.to_vec1()? },
            _ => Self::F32 { m: m.to_vec1()?, v: v.to_vec1()? },
        })
    }
}

/// Arithmetic the update needs, for the two compute types.
pub(crate) trait Real:
    Copy
    + Send
    + Sync
    + std::ops::Add<Output = Self>
    + std::ops::Sub<Output = Self>
    + std::ops::Mul<Output = Self>
    + std::ops::Div<Output = Self>
    + PartialEq
{
    fn of(x: f64) -> Self;
    fn sqrt(self) -> Self;
}

impl Real for f32 {
    #[inline(always)]
    fn of(x: f64) -> Self {
        x as f32
    }
    #[inline(always)]
    fn sqrt(self) -> Self {
        f32::sqrt(self)
    }
}

impl Real for f64 {
    #[inline(always)]
    fn of(x: f64) -> Self {
        x
    }
    #[inline(always)]
    fn sqrt(self) -> Self {
        f64::sqrt(self)
    }
}

/// The step scalars converted once to the compute type.
#[derive(Clone, Copy)]
pub(crate) struct Coeffs<C> {
    update: Update,
    beta2: C,
    one_minus_beta1: C,
    one_minus_beta2: C,
    step_size: C,
    eps: C,
    l2: C,
    decay: C,
    grad_mult: C,
}

impl<C: Real> Coeffs<C> {
    pub(crate) fn new(k: &StepScalars) -> Self {
        Self {
            update: k.update,
            beta2: C::of(k.beta2),
            one_minus_beta1: C::of(k.one_minus_beta1),
            one_minus_beta2: C::of(k.one_minus_beta2),
            step_size: C::of(k.step_size),
            eps: C::of(k.eps),
            l2: C::of(k.l2),
            decay: C::of(k.decay),
            grad_mult: C::of(k.grad_mult),
        }
    }
}

/// The rule on contiguous compute-type slices of equal length. `UPDATE` is the [`Update`]
/// discriminant, a constant so that each branch compiles to its own straight vector loop.
#[inline(always)]
fn fused<C: Real, const UPDATE: u8>(p: &mut [C], g: &[C], m: &mut [C], v: &mut [C], k: &Coeffs<C>) {
    let n = p.len();
    let (g, m, v) = (&g[..n], &mut m[..n], &mut v[..n]);
    let zero = C::of(0.0);
    for i in 0..n {
        // Clip coefficient / loss scale (exactly 1 when off), then L2 (l2 = 0 when decoupled).
        let g = g[i] * k.grad_mult + k.l2 * p[i];
        let mi = m[i] + k.one_minus_beta1 * (g - m[i]); // first moment, lerp form as torch
        let vi = k.beta2 * v[i] + k.one_minus_beta2 * g * g; // second moment
        m[i] = mi;
        v[i] = vi;
        if UPDATE == Update::Adaptive as u8 {
            let d = vi.sqrt() + k.eps;
            let u = k.step_size * mi / d; // rectified step
            let u = if d == zero { zero } else { u }; // m = v = 0: zero step, never 0/0 (a blend)
            p[i] = k.decay * p[i] - u;
        } else if UPDATE == Update::Sgd as u8 {
            p[i] = k.decay * p[i] - k.step_size * mi; // SGD with momentum on m_hat
        }
    }
}

#[inline(always)]
pub(crate) fn dispatch<C: Real>(p: &mut [C], g: &[C], m: &mut [C], v: &mut [C], k: &Coeffs<C>) {
    match k.update {
        Update::Adaptive => fused::<C, { Update::Adaptive as u8 }>(p, g, m, v, k),
        Update::Sgd => fused::<C, { Update::Sgd as u8 }>(p, g, m, v, k),
        Update::Frozen => fused::<C, { Update::Frozen as u8 }>(p, g, m, v, k),
    }
}

/// Mutable views of a variable's `m` and `v`.
type MomentSlices<'a, A> = (&'a mut [A], &'a mut [A]);

/// A param element type: how its slices are found in candle's storage, how a chunk is updated,
/// and how non-finite values are spotted.
trait Element: Copy + Send + Sync + 'static {
    type Acc: Real;
    fn slice(s: &CpuStorage) -> Option<&[Self]>;
    fn slice_mut(s: &mut CpuStorage) -> Option<&mut [Self]>;
    fn moments(mo: &mut CpuMoments) -> Option<MomentSlices<'_, Self::Acc>>;
    /// One chunk: `aux` is the param's buffer for this chunk (empty when its mode has none),
    /// `first` the index of `p[0]` in its variable.
    #[allow(clippy::too_many_arguments)]
    fn update(
        p: &mut [Self],
        g: &[Self],
        m: &mut [Self::Acc],
        v: &mut [Self::Acc],
        k: &Coeffs<Self::Acc>,
        aux: &mut [u16],
        st: &Store,
        first: u64,
    );
    /// True if any element is a NaN or an infinity (exponent bits all ones), branch-free.
    fn any_nonfinite(x: &[Self]) -> bool;
    /// The sum of the squares of the elements, accumulated in f64 (NaN / inf if any element is).
    fn sumsq(x: &[Self]) -> f64;
}

/// Lanes of [`sumsq_lanes`]: independent f64 accumulators, so the loop vectorizes (two AVX2
/// registers) and the summation order is fixed, whatever the machine.
const SUMSQ_LANES: usize = 8;

/// `sum(x_i^2)` in f64 over elements converted exactly to f64 (an f32 / f16 / bf16 square is
/// exact in f64, so only the additions round: relative error below `n * 2^-53`).
#[inline(always)]
fn sumsq_lanes<T: Copy>(x: &[T], to_f64: impl Fn(T) -> f64) -> f64 {
    let mut acc = [0f64; SUMSQ_LANES];
    let mut it = x.chunks_exact(SUMSQ_LANES);
    for c in &mut it {
        for j in 0..SUMSQ_LANES {
            let y = to_f64(c[j]);
            acc[j] += y * y;
        }
    }
    for (j, e) in it.remainder().iter().enumerate() {
        let y = to_f64(*e);
        acc[j] += y * y;
    }
    acc.iter().sum()
}

macro_rules! storage_access {
    ($variant:ident) => {
        fn slice(s: &CpuStorage) -> Option<&[Self]> {
            match s {
                CpuStorage::$variant(v) => Some(v),
                _ => None,
            }
        }
        fn slice_mut(s: &mut CpuStorage) -> Option<&mut [Self]> {
            match s {
                CpuStorage::$variant(v) => Some(v),
                _ => None,
            }
        }
    };
}

macro_rules! nonfinite_by_bits {
    ($bits:ty, $mask:expr) => {
        #[inline(always)]
        fn any_nonfinite(x: &[Self]) -> bool {
            // OR-reduce "exponent bits all ones" with integer ops: vectorizes, no early exit.
            let mut acc: $bits = 0;
            for e in x {
                acc |= ((e.to_bits() & $mask) == $mask) as $bits;
            }
            acc != 0
        }
    };
}

/// f32 / f64: moments in the param's own dtype, the rule run directly on the slices.
macro_rules! full_element {
    ($t:ty, $variant:ident, $bits:ty, $mask:expr) => {
        impl Element for $t {
            type Acc = $t;
            storage_access!($variant);
            nonfinite_by_bits!($bits, $mask);
            #[inline(always)]
            fn sumsq(x: &[$t]) -> f64 {
                sumsq_lanes(x, |e| e as f64)
            }
            fn moments(mo: &mut CpuMoments) -> Option<MomentSlices<'_, $t>> {
                match mo {
                    CpuMoments::$variant { m, v } => Some((m, v)),
                    _ => None,
                }
            }
            #[inline(always)]
            fn update(
                p: &mut [$t],
                g: &[$t],
                m: &mut [$t],
                v: &mut [$t],
                k: &Coeffs<$t>,
                _aux: &mut [u16],
                _st: &Store,
                _first: u64,
            ) {
                dispatch(p, g, m, v, k) // f32 / f64: nothing to round
            }
        }
    };
}
full_element!(f32, F32, u32, 0x7f80_0000u32);
full_element!(f64, F64, u64, 0x7ff0_0000_0000_0000u64);

/// f16 / bf16: load a block (and its buffer) to f32, run the f32 rule, store it back under the
/// variable's mode. A frozen step writes nothing back (as the kernel), whatever the mode.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn update_half<H: Half>(
    p: &mut [H],
    g: &[H],
    m: &mut [f32],
    v: &mut [f32],
    k: &Coeffs<f32>,
    aux: &mut [u16],
    st: &Store,
    first: u64,
) where
    [H]: HalfFloatSliceExt,
{
    let mut pf = [0f32; HALF_BLOCK];
    let mut old = [0f32; HALF_BLOCK];
    let mut gf = [0f32; HALF_BLOCK];
    let store = k.update != Update::Frozen;
    let kahan = st.mode == Mode::Kahan;
    for (b, (((p, g), m), v)) in p
        .chunks_mut(HALF_BLOCK)
        .zip(g.chunks(HALF_BLOCK))
        .zip(m.chunks_mut(HALF_BLOCK))
        .zip(v.chunks_mut(HALF_BLOCK))
        .enumerate()
    {
        let n = p.len();
        let aux = precision::aux_range(aux, b * HALF_BLOCK, n);
        precision::load_block(p, aux, st.mode, &mut pf);
        if kahan {
            old[..n].copy_from_slice(&pf[..n]);
        }
        H::to_f32_block(g, &mut gf);
        dispatch(&mut pf[..n], &gf[..n], m, v, k);
        if store {
            precision::store_block(p, aux, &pf, &old, st, first + (b * HALF_BLOCK) as u64);
        }
    }
}

/// f16 / bf16 [`Element::sumsq`]: blocks converted to f32 (exact), then [`sumsq_lanes`].
#[inline(always)]
fn sumsq_half<H>(x: &[H]) -> f64
where
    [H]: HalfFloatSliceExt,
{
    let mut buf = [0f32; HALF_BLOCK];
    let mut total = 0.0;
    for c in x.chunks(HALF_BLOCK) {
        c.convert_to_f32_slice(&mut buf[..c.len()]);
        total += sumsq_lanes(&buf[..c.len()], |e| e as f64);
    }
    total
}

macro_rules! half_element {
    ($t:ty, $variant:ident, $mask:expr) => {
        impl Element for $t {
            type Acc = f32;
            storage_access!($variant);
            nonfinite_by_bits!(u16, $mask);
            #[inline(always)]
            fn sumsq(x: &[$t]) -> f64 {
                sumsq_half(x)
            }
            fn moments(mo: &mut CpuMoments) -> Option<MomentSlices<'_, f32>> {
                <f32 as Element>::moments(mo)
            }
            #[inline(always)]
            fn update(
                p: &mut [$t],
                g: &[$t],
                m: &mut [f32],
                v: &mut [f32],
                k: &Coeffs<f32>,
                aux: &mut [u16],
                st: &Store,
                first: u64,
            ) {
                update_half(p, g, m, v, k, aux, st, first)
            }
        }
    };
}
half_element!(f16, F16, 0x7c00u16);
half_element!(bf16, BF16, 0x7f80u16);

/// The contiguous `[start, end)` element range of a layout, or an error (never a silent misread).
pub(crate) fn span(l: &Layout, what: &str) -> Result<(usize, usize)> {
    match l.contiguous_offsets() {
        Some(r) => Ok(r),
        None => bail!("RAdam: {what} is not contiguous"),
    }
}

/// Splits a large slice into rayon tasks; small ones run inline. `aux` is the param's buffer
/// (empty when its mode has none).
fn par_update<T: Element>(
    p: &mut [T],
    g: &[T],
    m: &mut [T::Acc],
    v: &mut [T::Acc],
    k: &Coeffs<T::Acc>,
    aux: &mut [u16],
    st: &Store,
) {
    if p.len() <= CHUNK {
        update_chunk(p, g, m, v, k, aux, st, 0);
    } else {
        let aux = precision::aux_chunks(aux, p.len().div_ceil(CHUNK), CHUNK);
        p.par_chunks_mut(CHUNK)
            .zip(g.par_chunks(CHUNK))
            .zip(m.par_chunks_mut(CHUNK))
            .zip(v.par_chunks_mut(CHUNK))
            .zip(aux.into_par_iter())
            .enumerate()
            .for_each(|(c, ((((p, g), m), v), aux))| {
                update_chunk(p, g, m, v, k, aux, st, (c * CHUNK) as u64)
            });
    }
}

/// `T::update`, compiled for AVX2 where the CPU has it. Only the vector width changes: Rust never
/// contracts to FMA and IEEE `sqrt` / division are exact at any width, so results are identical.
#[allow(clippy::too_many_arguments)]
#[inline]
fn update_chunk<T: Element>(
    p: &mut [T],
    g: &[T],
    m: &mut [T::Acc],
    v: &mut [T::Acc],
    k: &Coeffs<T::Acc>,
    aux: &mut [u16],
    st: &Store,
    first: u64,
) {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU supports AVX2, checked just above.
        return unsafe { update_avx2(p, g, m, v, k, aux, st, first) };
    }
    T::update(p, g, m, v, k, aux, st, first)
}

#[allow(clippy::too_many_arguments)]
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn update_avx2<T: Element>(
    p: &mut [T],
    g: &[T],
    m: &mut [T::Acc],
    v: &mut [T::Acc],
    k: &Coeffs<T::Acc>,
    aux: &mut [u16],
    st: &Store,
    first: u64,
) {
    T::update(p, g, m, v, k, aux, st, first)
}

/// `T::any_nonfinite`, compiled for AVX2 where the CPU has it (as [`update_chunk`]).
#[inline]
fn scan_chunk<T: Element>(x: &[T]) -> bool {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU supports AVX2, checked just above.
        return unsafe { scan_avx2(x) };
    }
    T::any_nonfinite(x)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn scan_avx2<T: Element>(x: &[T]) -> bool {
    T::any_nonfinite(x)
}

/// `T::sumsq`, compiled for AVX2 where the CPU has it (as [`update_chunk`]; the lanes fix the
/// summation order, so the result does not depend on the vector width).
#[inline]
fn sumsq_chunk<T: Element>(x: &[T]) -> f64 {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU supports AVX2, checked just above.
        return unsafe { sumsq_avx2(x) };
    }
    T::sumsq(x)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn sumsq_avx2<T: Element>(x: &[T]) -> f64 {
    T::sumsq(x)
}

/// The in-place op: param is the destination, grad the source, the moments ride along.
struct StepOp<'a> {
    moments: Mutex<&'a mut CpuMoments>,
    k: &'a StepScalars,
    /// The param's buffer (empty when its mode has none) and how it is stored.
    aux: Mutex<&'a mut [u16]>,
    st: Store,
}

impl StepOp<'_> {
    fn run<T: Element>(
        &self,
        dst: &mut CpuStorage,
        dl: &Layout,
        src: &CpuStorage,
        sl: &Layout,
    ) -> Result<()> {
        let (ps, pe) = span(dl, "parameter")?;
        let (gs, ge) = span(sl, "gradient")?;
        let (Some(p), Some(g)) = (T::slice_mut(dst), T::slice(src)) else {
            bail!("RAdam: parameter / gradient dtype mismatch")
        };
        let mut mo = self.moments.lock().unwrap_or_else(|e| e.into_inner());
        let Some((m, v)) = T::moments(&mut mo) else { bail!("RAdam: moment dtype mismatch") };
        let (p, g) = (&mut p[ps..pe], &g[gs..ge]);
        if g.len() != p.len() || m.len() != p.len() || v.len() != p.len() {
            bail!("RAdam: parameter, gradient and moments differ in length");
        }
        let mut aux = self.aux.lock().unwrap_or_else(|e| e.into_inner());
        if !aux.is_empty() && aux.len() != p.len() {
            bail!("RAdam: parameter and its rounding buffer differ in length");
        }
        par_update::<T>(p, g, m, v, &Coeffs::new(self.k), &mut aux, &self.st);
        Ok(())
    }
}

impl InplaceOp2 for StepOp<'_> {
    fn name(&self) -> &'static str {
        "radam-step"
    }

    fn cpu_fwd(
        &self,
        dst: &mut CpuStorage,
        dl: &Layout,
        src: &CpuStorage,
        sl: &Layout,
    ) -> Result<()> {
        match dst {
            CpuStorage::F32(_) => self.run::<f32>(dst, dl, src, sl),
            CpuStorage::F64(_) => self.run::<f64>(dst, dl, src, sl),
            CpuStorage::F16(_) => self.run::<f16>(dst, dl, src, sl),
            CpuStorage::BF16(_) => self.run::<bf16>(dst, dl, src, sl),
            other => bail!("RAdam: unsupported parameter dtype {:?}", other.dtype()),
        }
    }
}

/// One step for one CPU variable, its param stored under `st` with its buffer `aux` (empty when
/// the mode has none). The caller has checked shapes, dtypes, devices, contiguity and that
/// `grad` does not share `param`'s storage.
pub(crate) fn step(
    param: &Tensor,
    grad: &Tensor,
    moments: &mut CpuMoments,
    k: &StepScalars,
    aux: &mut [u16],
    st: Store,
) -> Result<()> {
    param.inplace_op2(grad, &StepOp { moments: Mutex::new(moments), k, aux: Mutex::new(aux), st })
}

/// The sum of the squares of a contiguous CPU gradient's elements, in f64: per chunk in
/// parallel, the chunk sums then added in order (deterministic). NaN / inf if an element is
/// (or, for f64 gradients, if a square overflows). This is the guard's read when clipping or
/// loss scaling is on: finiteness is read off the sum.
pub(crate) fn sumsq(grad: &Tensor) -> Result<f64> {
    fn sum<T: Element>(s: &CpuStorage, (a, b): (usize, usize)) -> Result<f64> {
        let Some(x) = T::slice(s) else { bail!("RAdam: gradient dtype mismatch") };
        let x = &x[a..b];
        if x.len() <= CHUNK {
            return Ok(sumsq_chunk(x));
        }
        let parts: Vec<f64> = x.par_chunks(CHUNK).map(sumsq_chunk::<T>).collect();
        Ok(parts.iter().sum())
    }
    let (storage, layout) = grad.storage_and_layout();
    let candle_core::Storage::Cpu(s) = &*storage else { bail!("RAdam: expected a CPU gradient") };
    let r = span(layout, "gradient")?;
    match grad.dtype() {
        DType::F32 => sum::<f32>(s, r),
        DType::F64 => sum::<f64>(s, r),
        DType::F16 => sum::<f16>(s, r),
        DType::BF16 => sum::<bf16>(s, r),
        other => bail!("RAdam: unsupported gradient dtype {other:?}"),
    }
}

/// True if a contiguous CPU gradient holds a NaN or an infinity (parallel over chunks).
pub(crate) fn any_nonfinite(grad: &Tensor) -> Result<bool> {
    fn scan<T: Element>(s: &CpuStorage, (a, b): (usize, usize)) -> Result<bool> {
        let Some(x) = T::slice(s) else { bail!("RAdam: gradient dtype mismatch") };
        Ok(x[a..b].par_chunks(CHUNK).any(scan_chunk::<T>))
    }
    let (storage, layout) = grad.storage_and_layout();
    let candle_core::Storage::Cpu(s) = &*storage else { bail!("RAdam: expected a CPU gradient") };
    let r = span(layout, "gradient")?;
    match grad.dtype() {
        DType::F32 => scan::<f32>(s, r),
        DType::F64 => scan::<f64>(s, r),
        DType::F16 => scan::<f16>(s, r),
        DType::BF16 => scan::<bf16>(s, r),
        other => bail!("RAdam: unsupported gradient dtype {other:?}"),
    }
}
