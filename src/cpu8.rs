//! CPU path of the 8-bit state ([`crate::StateFormat::Blockwise8`]): one fused, in-place pass
//! over (param, grad, m codes, v codes, absmax) per variable.
//!
//! Per quantization block of [`BLOCK`] elements: the param (with its rounding buffer) and grad
//! are loaded to f32 ([`Param8::load_param`], [`Param8::load`]), `m` and `v` dequantized
//! (`map[code] * absmax`), the unchanged f32 rule of `src/cpu.rs` run on the block
//! ([`crate::cpu::dispatch`], so the arithmetic is the f32-state path's), the new moments
//! requantized with the block's new absmax ([`crate::quant`]) and the param stored back
//! ([`Param8::store`]: f16 / bf16 under their [`crate::Rounding`] mode, with
//! [`crate::precision`]'s `load_block` / `store_block` as the f32-state pass, so the param side
//! gives the same bits in both formats; not written on a frozen step). Blocks are independent,
//! so chunks of whole blocks run on rayon's threads and the result does not depend on the
//! thread count. The memory traffic per f32 parameter: p read and
//! written, g read (12 B), codes read and written (4 B), absmax (8 B per 256 elements); the
//! param, grad and codes of the block [`PREFETCH_BLOCKS`] ahead are prefetched (measured: about
//! 15% less CPU time per step on a 2-core AMD EPYC VM).

use candle_core::{backend::BackendStorage, bail, CpuStorage, InplaceOp2, Layout, Result, Tensor};
use half::{bf16, f16, slice::HalfFloatSliceExt};
use rayon::prelude::*;
use std::sync::Mutex;

use crate::cpu::{dispatch, span, Coeffs};
use crate::precision::{self, Mode, Store};
use crate::quant::{
    blocks, dequantize, dequantize_block, quantize, quantize_block_of, signed_map, unsigned_map,
    Moment, BLOCK,
};
use crate::rule::{StepScalars, Update};

/// Quantization blocks per rayon task (32768 elements, as the f32-state path's chunks).
const BLOCKS_PER_TASK: usize = 128;

/// The 8-bit moments of one variable of `n` elements: codes (`n` each) and one f32 absmax per
/// block of [`BLOCK`] (`blocks(n)` each). `m` uses [`signed_map`], `v` [`unsigned_map`].
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Moments8 {
    pub(crate) m: Vec<u8>,
    pub(crate) m_absmax: Vec<f32>,
    pub(crate) v: Vec<u8>,
    pub(crate) v_absmax: Vec<f32>,
}

impl Moments8 {
    /// Zero moments: absmax 0 and the code of 0 in each map.
    pub(crate) fn zeros(n: usize) -> Self {
        let zero_code = |map: &[f32; 256]| map.iter().position(|x| *x == 0.0).unwrap_or(0) as u8;
        Self {
            m: vec![zero_code(signed_map()); n],
            m_absmax: vec![0.0; blocks(n)],
            v: vec![zero_code(unsigned_map()); n],
            v_absmax: vec![0.0; blocks(n)],
        }
    }

    /// Quantizes f32 moments.
    pub(crate) fn from_f32(m: &[f32], v: &[f32]) -> Self {
        let (mc, ma) = quantize(Moment::First, m);
        let (vc, va) = quantize(Moment::Second, v);
        Self { m: mc, m_absmax: ma, v: vc, v_absmax: va }
    }

    /// The dequantized moments, in f32.
    pub(crate) fn to_f32(&self) -> (Vec<f32>, Vec<f32>) {
        (
            dequantize(signed_map(), &self.m, &self.m_absmax),
            dequantize(unsigned_map(), &self.v, &self.v_absmax),
        )
    }

    /// Number of elements.
    pub(crate) fn len(&self) -> usize {
        self.m.len()
    }

    /// Bytes allocated: the codes and the absmax of both moments.
    pub(crate) fn bytes(&self) -> usize {
        self.m.len() + self.v.len() + 4 * (self.m_absmax.len() + self.v_absmax.len())
    }

    /// Errors unless the sizes agree (`blocks(n)` absmax per moment) and every absmax is finite
    /// and `>= 0` (what a damaged file would break).
    pub(crate) fn check(&self, what: &str) -> Result<()> {
        let n = self.m.len();
        if self.v.len() != n || self.m_absmax.len() != blocks(n) || self.v_absmax.len() != blocks(n)
        {
            bail!(
                "RAdam state: 8-bit moments of {what} disagree in size: {} and {} codes, {} and {} \
                 absmax (expected {} per moment)",
                n,
                self.v.len(),
                self.m_absmax.len(),
                self.v_absmax.len(),
                blocks(n)
            );
        }
        for (name, a) in [("m", &self.m_absmax), ("v", &self.v_absmax)] {
            if let Some(i) = a.iter().position(|x| !(x.is_finite() && *x >= 0.0)) {
                bail!(
                    "RAdam state: absmax of {name} of {what} holds {} at block {i}: it must be \
                     finite and >= 0 (damaged file?)",
                    a[i]
                );
            }
        }
        Ok(())
    }
}

/// A param dtype of the 8-bit pass: how its slices are found in candle's storage and how a block
/// is loaded to f32 and stored back. `load_param` / `store` are the whole param side of the pass:
/// f16 / bf16 go through [`precision::load_block`] / [`precision::store_block`] (the rounding
/// modes), f32 is copied.
pub(crate) trait Param8: Copy + Send + Sync + 'static {
    fn slice(s: &CpuStorage) -> Option<&[Self]>;
    fn slice_mut(s: &mut CpuStorage) -> Option<&mut [Self]>;
    /// `dst[i] = src[i]` as f32 (exact): the gradient.
    fn load(src: &[Self], dst: &mut [f32]);
    /// The param block `p` as f32 in `dst[..p.len()]`, with its buffer `aux` under `mode`.
    fn load_param(p: &[Self], aux: &[u16], mode: Mode, dst: &mut [f32]);
    /// Stores `x` (the rule's result for the loaded `old`) into `p` and `aux` under `st`;
    /// `first` is the index of `p[0]` in its variable.
    fn store(x: &[f32], old: &[f32], p: &mut [Self], aux: &mut [u16], st: &Store, first: u64);
}

/// The param side of one task: the param's rounding buffer for the task's elements (empty when
/// its mode has none), how it is stored, and the index of the task's first element.
struct ParamSide<'a> {
    aux: &'a mut [u16],
    st: &'a Store,
    first: u64,
}

macro_rules! param8_storage {
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

impl Param8 for f32 {
    param8_storage!(F32);
    #[inline(always)]
    fn load(src: &[f32], dst: &mut [f32]) {
        dst.copy_from_slice(src);
    }
    #[inline(always)]
    fn load_param(p: &[f32], _aux: &[u16], _mode: Mode, dst: &mut [f32]) {
        dst[..p.len()].copy_from_slice(p);
    }
    #[inline(always)]
    fn store(x: &[f32], _old: &[f32], p: &mut [f32], _aux: &mut [u16], _st: &Store, _first: u64) {
        p.copy_from_slice(&x[..p.len()]); // f32: nothing to round (its mode is always nearest)
    }
}

macro_rules! param8_half {
    ($t:ty, $variant:ident) => {
        impl Param8 for $t {
            param8_storage!($variant);
            #[inline(always)]
            fn load(src: &[$t], dst: &mut [f32]) {
                src.convert_to_f32_slice(dst);
            }
            #[inline(always)]
            fn load_param(p: &[$t], aux: &[u16], mode: Mode, dst: &mut [f32]) {
                precision::load_block(p, aux, mode, dst);
            }
            #[inline(always)]
            fn store(
                x: &[f32],
                old: &[f32],
                p: &mut [$t],
                aux: &mut [u16],
                st: &Store,
                first: u64,
            ) {
                precision::store_block(p, aux, x, old, st, first);
            }
        }
    };
}
param8_half!(f16, F16);
param8_half!(bf16, BF16);

/// Mutable views of one task's share of the 8-bit moments: m codes, m absmax, v codes, v absmax.
type Share<'a> = (&'a mut [u8], &'a mut [f32], &'a mut [u8], &'a mut [f32]);

/// The fused step on whole quantization blocks (`p.len()` elements, `ceil(p.len() / BLOCK)`
/// absmax per moment).
#[inline(always)]
fn update_blocks<P: Param8>(
    p: &mut [P],
    g: &[P],
    s: Share<'_>,
    k: &Coeffs<f32>,
    frozen: bool,
    ps: ParamSide<'_>,
) {
    let (mc, ma, vc, va) = s;
    let ParamSide { aux, st, first } = ps;
    let kahan = st.mode == Mode::Kahan;
    let mut old = [0f32; BLOCK];
    let (smap, umap) = (signed_map(), unsigned_map());
    let mut pf = [0f32; BLOCK];
    let mut gf = [0f32; BLOCK];
    let mut mf = [0f32; BLOCK];
    let mut vf = [0f32; BLOCK];
    // Streams read ahead (raw addresses: a prefetch is only a hint, past the end it is ignored).
    let ahead = [
        (p.as_ptr().cast::<u8>(), BLOCK * size_of::<P>()),
        (g.as_ptr().cast(), BLOCK * size_of::<P>()),
        (mc.as_ptr(), BLOCK),
        (vc.as_ptr(), BLOCK),
    ];
    for (b, (((((p, g), mc), ma), vc), va)) in p
        .chunks_mut(BLOCK)
        .zip(g.chunks(BLOCK))
        .zip(mc.chunks_mut(BLOCK))
        .zip(ma.iter_mut())
        .zip(vc.chunks_mut(BLOCK))
        .zip(va.iter_mut())
        .enumerate()
    {
        for (base, bytes) in ahead {
            prefetch(base.wrapping_add((b + PREFETCH_BLOCKS) * bytes), bytes);
        }
        let n = p.len();
        let aux = precision::aux_range(aux, b * BLOCK, n);
        P::load_param(p, aux, st.mode, &mut pf[..n]);
        if kahan {
            old[..n].copy_from_slice(&pf[..n]);
        }
        P::load(g, &mut gf[..n]);
        dequantize_block(smap, mc, *ma, &mut mf[..n]);
        dequantize_block(umap, vc, *va, &mut vf[..n]);
        dispatch(&mut pf[..n], &gf[..n], &mut mf[..n], &mut vf[..n], k);
        *ma = quantize_block_of(Moment::First, &mf[..n], mc);
        *va = quantize_block_of(Moment::Second, &vf[..n], vc);
        if !frozen {
            P::store(&pf[..n], &old[..n], p, aux, st, first + (b * BLOCK) as u64);
        }
    }
}

/// How many blocks ahead [`update_blocks`] asks the cache for the param, grad and codes.
const PREFETCH_BLOCKS: usize = 2;

/// Hints the cache to fetch `bytes` bytes from `ptr` onwards: no access is made (a prefetch
/// never faults), so any address is fine.
#[inline(always)]
fn prefetch(ptr: *const u8, bytes: usize) {
    #[cfg(target_arch = "x86_64")]
    for off in (0..bytes).step_by(64) {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        // SAFETY: SSE is part of the x86_64 baseline; a prefetch reads nothing.
        unsafe { _mm_prefetch::<_MM_HINT_T0>(ptr.wrapping_add(off).cast()) };
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (ptr, bytes);
}

/// [`update_blocks`], compiled for AVX2 where the CPU has it (only the vector width changes: no
/// FMA contraction, exact IEEE division and square root, so the results are identical).
#[inline]
fn update_task<P: Param8>(
    p: &mut [P],
    g: &[P],
    s: Share<'_>,
    k: &Coeffs<f32>,
    frozen: bool,
    ps: ParamSide<'_>,
) {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU supports AVX2, checked just above.
        return unsafe { update_avx2(p, g, s, k, frozen, ps) };
    }
    update_blocks(p, g, s, k, frozen, ps)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn update_avx2<P: Param8>(
    p: &mut [P],
    g: &[P],
    s: Share<'_>,
    k: &Coeffs<f32>,
    f: bool,
    ps: ParamSide<'_>,
) {
    update_blocks(p, g, s, k, f, ps)
}

/// The in-place op: param is the destination, grad the source, the 8-bit moments and the
/// param's rounding buffer (empty when its mode has none) ride along.
struct Step8Op<'a> {
    moments: Mutex<&'a mut Moments8>,
    k: &'a StepScalars,
    aux: Mutex<&'a mut [u16]>,
    st: Store,
}

impl Step8Op<'_> {
    fn run<P: Param8>(
        &self,
        dst: &mut CpuStorage,
        dl: &Layout,
        src: &CpuStorage,
        sl: &Layout,
    ) -> Result<()> {
        let (ps, pe) = span(dl, "parameter")?;
        let (gs, ge) = span(sl, "gradient")?;
        let (Some(p), Some(g)) = (P::slice_mut(dst), P::slice(src)) else {
            bail!("RAdam: parameter / gradient dtype mismatch")
        };
        let (p, g) = (&mut p[ps..pe], &g[gs..ge]);
        let mut mo = self.moments.lock().unwrap_or_else(|e| e.into_inner());
        let mo = &mut **mo;
        if g.len() != p.len() || mo.len() != p.len() || mo.v.len() != p.len() {
            bail!("RAdam: parameter, gradient and 8-bit moments differ in length");
        }
        let mut aux = self.aux.lock().unwrap_or_else(|e| e.into_inner());
        if !aux.is_empty() && aux.len() != p.len() {
            bail!("RAdam: parameter and its rounding buffer differ in length");
        }
        let k = Coeffs::<f32>::new(self.k);
        let frozen = self.k.update == Update::Frozen;
        let st = &self.st;
        let task = BLOCKS_PER_TASK * BLOCK;
        if p.len() <= task {
            let s = (&mut mo.m[..], &mut mo.m_absmax[..], &mut mo.v[..], &mut mo.v_absmax[..]);
            update_task(p, g, s, &k, frozen, ParamSide { aux: &mut aux, st, first: 0 });
        } else {
            let aux = precision::aux_chunks(&mut aux, p.len().div_ceil(task), task);
            p.par_chunks_mut(task)
                .zip(g.par_chunks(task))
                .zip(mo.m.par_chunks_mut(task))
                .zip(mo.m_absmax.par_chunks_mut(BLOCKS_PER_TASK))
                .zip(mo.v.par_chunks_mut(task))
                .zip(mo.v_absmax.par_chunks_mut(BLOCKS_PER_TASK))
                .zip(aux.into_par_iter())
                .enumerate()
                .for_each(|(c, ((((((p, g), mc), ma), vc), va), aux))| {
                    let ps = ParamSide { aux, st, first: (c * task) as u64 };
                    update_task(p, g, (mc, ma, vc, va), &k, frozen, ps)
                });
        }
        Ok(())
    }
}

impl InplaceOp2 for Step8Op<'_> {
    fn name(&self) -> &'static str {
        "radam8-step"
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
            CpuStorage::F16(_) => self.run::<f16>(dst, dl, src, sl),
            CpuStorage::BF16(_) => self.run::<bf16>(dst, dl, src, sl),
            other => bail!(
                "RAdam: 8-bit state supports f32, f16 and bf16 parameters, not {:?}",
                other.dtype()
            ),
        }
    }
}

/// One step for one CPU variable with 8-bit state, its param stored under `st` with its buffer
/// `aux` (empty when the mode has none). The caller has checked shapes, dtypes, devices,
/// contiguity and that `grad` does not share `param`'s storage.
pub(crate) fn step(
    param: &Tensor,
    grad: &Tensor,
    moments: &mut Moments8,
    k: &StepScalars,
    aux: &mut [u16],
    st: Store,
) -> Result<()> {
    let op = Step8Op { moments: Mutex::new(moments), k, aux: Mutex::new(aux), st };
    param.inplace_op2(grad, &op)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};
    use std::collections::HashMap;

    fn golden() -> HashMap<String, Tensor> {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/golden/quant8.safetensors");
        candle_core::safetensors::load(path, &Device::Cpu).unwrap()
    }

    fn f32s(f: &HashMap<String, Tensor>, k: &str) -> Vec<f32> {
        f[k].to_vec1::<f32>().unwrap()
    }

    fn u8s(f: &HashMap<String, Tensor>, k: &str) -> Vec<u8> {
        f[k].to_vec1::<u8>().unwrap()
    }

    fn bits(x: &[f32]) -> Vec<u32> {
        x.iter().map(|x| x.to_bits()).collect()
    }

    /// The maps, quantization and dequantization match the numpy reference bit for bit.
    #[test]
    fn quantization_matches_numpy_reference() {
        let f = golden();
        assert_eq!(bits(signed_map()), bits(&f32s(&f, "map.signed")));
        assert_eq!(bits(unsigned_map()), bits(&f32s(&f, "map.unsigned")));
        // "qi": blocks with +-inf (saturated absmax) and with a NaN.
        for pre in ["q", "qi"] {
            let x = f32s(&f, &format!("{pre}.x"));
            for (name, moment) in [("signed", Moment::First), ("unsigned", Moment::Second)] {
                let x: Vec<f32> = if name == "unsigned" {
                    x.iter().map(|e| e.abs()).collect()
                } else {
                    x.clone()
                };
                let (codes, absmax) = quantize(moment, &x);
                assert_eq!(codes, u8s(&f, &format!("{pre}.{name}.codes")), "{pre} {name} codes");
                assert_eq!(bits(&absmax), bits(&f32s(&f, &format!("{pre}.{name}.absmax"))));
                let deq = dequantize(moment.map(), &codes, &absmax);
                let want = f32s(&f, &format!("{pre}.{name}.deq"));
                assert_eq!(bits(&deq), bits(&want), "{pre} {name} deq");
            }
        }
        // +inf in m keeps its sign: the top code, f32::MAX (not code 0 = -0.99297 * absmax).
        let (c, a) = quantize(Moment::First, &[1.0, f32::INFINITY, -f32::INFINITY]);
        assert_eq!((c, a), (vec![127, 255, 0], vec![f32::MAX]));
    }

    /// One fused 8-bit step from known moments (both RAdam branches) matches the numpy
    /// reference bit for bit: codes, absmax and parameters (tolerance 0: the same f32 operations
    /// in the same order).
    #[test]
    fn one_step_matches_numpy_reference() {
        let f = golden();
        for case in ["adaptive", "sgd", "overflow"] {
            let key = |s: &str| format!("step.{case}.{s}");
            let t = f[&key("t")].to_vec1::<i64>().unwrap()[0] as u64;
            let wd = f[&key("weight_decay")].to_vec1::<f64>().unwrap();
            let params = crate::ParamsRAdam {
                weight_decay: wd[0],
                decoupled_weight_decay: wd[1] != 0.0,
                ..Default::default()
            };
            let k = StepScalars::new(&params, t);
            let want = f32s(&f, &key("scalars"));
            let have = [
                k.one_minus_beta1,
                k.beta2,
                k.one_minus_beta2,
                k.step_size,
                k.eps,
                k.l2,
                k.decay,
                k.grad_mult,
            ]
            .map(|x| x as f32);
            assert_eq!(bits(&have), bits(&want), "{case}: step scalars");
            assert_eq!(k.update, if case == "sgd" { Update::Sgd } else { Update::Adaptive });
            let p0 = f32s(&f, &key("p"));
            let p = Tensor::new(p0.as_slice(), &Device::Cpu).unwrap();
            let g = Tensor::new(f32s(&f, &key("g")).as_slice(), &Device::Cpu).unwrap();
            let mut mo = Moments8 {
                m: u8s(&f, &key("m_codes")),
                m_absmax: f32s(&f, &key("m_absmax")),
                v: u8s(&f, &key("v_codes")),
                v_absmax: f32s(&f, &key("v_absmax")),
            };
            step(&p, &g, &mut mo, &k, &mut [], Store::NEAREST).unwrap();
            assert_eq!(mo.m, u8s(&f, &key("m_codes_out")), "{case}: m codes");
            assert_eq!(mo.v, u8s(&f, &key("v_codes_out")), "{case}: v codes");
            assert_eq!(bits(&mo.m_absmax), bits(&f32s(&f, &key("m_absmax_out"))));
            assert_eq!(bits(&mo.v_absmax), bits(&f32s(&f, &key("v_absmax_out"))));
            let p1 = p.to_vec1::<f32>().unwrap();
            assert_eq!(bits(&p1), bits(&f32s(&f, &key("p_out"))), "{case}: params");
            assert_ne!(bits(&p1), bits(&p0));
            if case == "overflow" {
                // v overflowed at two elements: saturated, their blocks finite.
                assert!(p1.iter().all(|x| x.is_finite()), "overflow: params finite");
                assert_eq!(mo.v_absmax[0], f32::MAX);
                assert_eq!(mo.v[3], 255);
            }
        }
    }

    /// f16 / bf16 params: the same pass on the param converted to f32, rounded back.
    #[test]
    fn half_params_round_the_f32_update() {
        let n = 3 * BLOCK + 5;
        let x: Vec<f32> = (0..n).map(|i| ((i * 37 % 101) as f32 - 50.0) * 0.013).collect();
        let g: Vec<f32> = (0..n).map(|i| ((i * 53 % 89) as f32 - 44.0) * 0.001).collect();
        let k = StepScalars::new(&crate::ParamsRAdam::default(), 7);
        for dt in [DType::F16, DType::BF16] {
            let p = Tensor::new(x.as_slice(), &Device::Cpu).unwrap().to_dtype(dt).unwrap();
            let gh = Tensor::new(g.as_slice(), &Device::Cpu).unwrap().to_dtype(dt).unwrap();
            // Reference: f32 params holding the half values, the f32 pass, then rounding.
            let p32 = p.to_dtype(DType::F32).unwrap();
            let g32 = gh.to_dtype(DType::F32).unwrap();
            let m0 = Moments8::from_f32(&g, &g.iter().map(|x| x * x).collect::<Vec<_>>());
            let (mut a, mut b) = (m0.clone(), m0);
            step(&p, &gh, &mut a, &k, &mut [], Store::NEAREST).unwrap();
            step(&p32, &g32, &mut b, &k, &mut [], Store::NEAREST).unwrap();
            assert_eq!(a, b, "{dt:?}: moments");
            let want = p32.to_dtype(dt).unwrap().to_dtype(DType::F32).unwrap();
            let have = p.to_dtype(DType::F32).unwrap();
            assert_eq!(
                bits(&have.to_vec1::<f32>().unwrap()),
                bits(&want.to_vec1::<f32>().unwrap())
            );
        }
    }

    /// Chunking across rayon tasks changes nothing: a tensor larger than a task equals the
    /// same data stepped in task-sized pieces.
    #[test]
    fn tasks_do_not_change_the_result() {
        let n = 2 * BLOCKS_PER_TASK * BLOCK + 300;
        let x: Vec<f32> = (0..n).map(|i| ((i * 7919 % 1000) as f32 - 500.0) * 1e-3).collect();
        let k = StepScalars::new(&crate::ParamsRAdam::default(), 9);
        let whole = Tensor::new(x.as_slice(), &Device::Cpu).unwrap();
        let g = whole.affine(0.1, 0.01).unwrap();
        let m0 = Moments8::from_f32(&x, &x.iter().map(|e| e * e).collect::<Vec<_>>());
        let mut mw = m0.clone();
        step(&whole, &g, &mut mw, &k, &mut [], Store::NEAREST).unwrap();
        let task = BLOCKS_PER_TASK * BLOCK;
        let gv = g.to_vec1::<f32>().unwrap();
        let mut out = Vec::new();
        for (i, (xs, gs)) in x.chunks(task).zip(gv.chunks(task)).enumerate() {
            let b = i * BLOCKS_PER_TASK;
            let nb = blocks(xs.len());
            let mut mo = Moments8 {
                m: m0.m[i * task..i * task + xs.len()].to_vec(),
                m_absmax: m0.m_absmax[b..b + nb].to_vec(),
                v: m0.v[i * task..i * task + xs.len()].to_vec(),
                v_absmax: m0.v_absmax[b..b + nb].to_vec(),
            };
            let p = Tensor::new(xs, &Device::Cpu).unwrap();
            let gs = Tensor::new(gs, &Device::Cpu).unwrap();
            step(&p, &gs, &mut mo, &k, &mut [], Store::NEAREST).unwrap();
            out.extend(p.to_vec1::<f32>().unwrap());
            assert_eq!(mo.m, mw.m[i * task..i * task + xs.len()]);
            assert_eq!(mo.v_absmax, mw.v_absmax[b..b + nb]);
        }
        assert_eq!(bits(&out), bits(&whole.to_vec1::<f32>().unwrap()));
    }
}
