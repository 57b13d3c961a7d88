//! Block-wise dynamic 8-bit quantization of the moments (Dettmers et al. 2022, *8-bit Optimizers
//! via Block-wise Quantization*, [arXiv:2110.02861](https://arxiv.org/abs/2110.02861)), as
//! bitsandbytes does it for its 8-bit Adam: the math shared by the CPU pass (`src/cpu8.rs`), the
//! CUDA kernels (`radam8_mt_*` in `kernels/radam.cu`, which get these maps from the host) and the
//! state conversion.
//!
//! ## The maps
//!
//! A moment is stored as one `u8` code per element and one `f32` scale (`absmax`) per block of
//! [`BLOCK`] consecutive elements; the value is `map[code] * absmax`. The maps are the formula
//! of bitsandbytes' `create_dynamic_map` (`bitsandbytes/functional.py`, defaults
//! `max_exponent_bits = 7`, `total_bits = 8`) evaluated in f64 and rounded once to f32 (so not
//! bit-identical to bitsandbytes' own torch-f32 tables: see below): a "dynamic" type of a
//! decimal exponent and a linear fraction,
//!
//! ```text
//! for i in 0..7:                                    (decimal exponent 10^(i-6), 1e-6 ... 1)
//!     k     = 2^i + 1        (signed)   or   2^(i+1) + 1   (unsigned)   boundaries
//!     b_j   = linspace(0.1, 1, k)_j                 j = 0 .. k-1
//!     value = 10^(i-6) * (b_j + b_{j+1}) / 2        j = 0 .. k-2   (the k-1 midpoints)
//!     signed: also -value
//! plus 0 and 1; sorted ascending
//! ```
//!
//! - [`signed_map`] (`create_dynamic_map(signed=True)`, for `m`): 127 positive values
//!   (1, 2, 4, ..., 64 per decade), their 127 negatives, 0 and 1: from -0.99297 to 1, 0 at
//!   code 127, smallest nonzero magnitude 5.5e-7.
//! - [`unsigned_map`] (`create_dynamic_map(signed=False)`, for `v`, which is never negative):
//!   254 positive values (2, 4, ..., 128 per decade), 0 and 1: 0 at code 0, smallest nonzero
//!   3.25e-7, so twice the resolution of the signed map.
//!
//! bitsandbytes evaluates the formula with torch's f32 `linspace`, whose last-bit rounding depends
//! on the CPU's vector width; here every value is evaluated in f64 in the fixed order
//! `10^(i-6) * (0.1 + (0.9 * (2j+1)) / (2(k-1)))` (decimal powers as literals) and rounded once to
//! f32. `tests/golden/gen_quant8.py` builds the same maps in numpy, bit for bit, and reports their
//! distance to torch's evaluation of bitsandbytes' code: 72 of the 256 signed values differ by
//! 1 f32 ulp, 100 of the 256 unsigned ones by 1-2 ulps (the rest are identical).
//!
//! ## Quantize, dequantize
//!
//! - `absmax` of a block = the largest `|x|` of its elements (NaN if one of them is NaN),
//!   **saturated to `f32::MAX`** when that is infinite (see *Non-finite moments* below);
//! - code of `x` = the map entry nearest to `x / absmax` (IEEE division; `0` when `absmax = 0`):
//!   a binary search for the largest `lo` with `map[lo] <= x / absmax` (`lo = 0` below `map[0]`),
//!   then `lo + 1` if `map[lo + 1] - y < y - map[lo]` (f32 differences), else `lo`: **a tie goes
//!   to the lower code**. [`nearest_code`] is that definition (and the CUDA kernel's search);
//!   the CPU finds the same code branch-free through [`CodeIndex`] (the code is monotone in `y`:
//!   one packed table entry per 16-bit prefix of `y` and one integer compare; AVX2 gathers,
//!   the division fused), equal to [`nearest_code`] on all 2^32 f32 (an exhaustive test).
//! - dequantized value = `map[code] * absmax` (one f32 product; on the CPU scalar table reads,
//!   or 64 at a time with AVX-512 VBMI byte permutes where the CPU has them).
//!
//! ## Non-finite moments
//!
//! - **Overflow (±inf) saturates.** A finite but huge gradient (say `1e22` for an f32
//!   parameter) makes `v = beta2 v + (1 - beta2) g^2` overflow to `+inf` (and a huge `m` can
//!   overflow too). With f32 state that element's update is then `m / inf = 0`; its neighbours
//!   are untouched. An infinite absmax would instead poison the block (`y = inf / inf = NaN`,
//!   then `map[code] * inf`): so the absmax is clamped to `f32::MAX`. `±inf / f32::MAX = ±inf`
//!   takes the extreme code and keeps its sign (`+inf`: the top code, `+f32::MAX`; `-inf`: code
//!   0, `-0.99297 * f32::MAX`), so the element's `v` stays ~`f32::MAX` and its update ~0 as with
//!   f32 state; the block's other elements stay finite (relative to `f32::MAX` they quantize
//!   to 0, so until the saturated `v` decays they get the fresh-moment update described under
//!   *When not to use it*). CPU ([`absmax`], [`CodeIndex`]), CUDA (`radam8_mt_*`), the
//!   emulation and the numpy reference all saturate, bit for bit.
//! - **NaN poisons its block.** A NaN moment makes the block's absmax NaN and every code of the
//!   block 0 (`x / NaN`), which dequantizes to NaN for good. A NaN gradient only reaches the
//!   moments under [`crate::NonFinite::Propagate`]: there **one NaN gradient poisons its whole
//!   256-element block** (with f32 state: one element). The default `NonFinite::Error` (and
//!   `Skip`) never let it through.
//!
//! ## The fused step
//!
//! Per block, in one pass over p, g and the codes (CPU: `src/cpu8.rs`; CUDA: `radam8_mt_*`, one
//! quantization block per loop iteration of a CUDA block, thread `i` on element `i`):
//! dequantize `m` and `v`, run the unchanged f32 rule ([`crate::rule`]: every step-dependent
//! scalar still comes from the host), take the new absmax of the block's **new** `m` and `v`,
//! requantize, store the param (f32, or f16 / bf16 under its [`crate::Rounding`] mode, with the
//! same param-side functions as the f32-state pass: [`crate::precision`]). The CPU and CUDA
//! passes agree bit for bit (same f32 operations in the same order, every rounding mode), and
//! `tests/golden/gen_quant8.py` (numpy) reproduces one step bit for bit.
//!
//! ## Memory
//!
//! Per element: one code for `m` and one for `v` (2 bytes), plus two f32 absmax per block of 256
//! (8 / 256 bytes): **2.03125 bytes per parameter** for tensors of whole blocks, against 8 for f32
//! moments (16 for f64) — 75% less. Tensors below `min_elements` (default
//! [`MIN_8BIT_ELEMENTS`] = 4096, bitsandbytes' `min_8bit_size`) keep 32-bit moments: biases and
//! norms cost little and are sensitive. [`crate::RAdam::state_bytes`] and
//! [`crate::RAdam::state_bytes_per_param`] count what is allocated (with the 2-byte buffer of a
//! bf16 / f16 parameter under [`crate::Rounding::Remainder`] or `Kahan`: 4.03 bytes of state
//! per parameter, 6.03 with the bf16 parameter itself). A step moves about 16 bytes
//! per f32 parameter (p read and written, g read: 12; codes read and written: 4; the absmax)
//! against 28 with f32 state.
//!
//! ## When not to use it
//!
//! - When the optimizer state is not what limits memory (small models): 8-bit state trades step
//!   time for memory. On the CPU the per-element code search (one table gather per element and
//!   moment) and the division by the absmax cost compute the f32 step does not have: the step
//!   takes about 2x the f32-state step's time (README, measured on a 2-core VM); the CUDA
//!   kernel is written to stay memory bound (no GPU measurement yet).
//! - For embeddings of rare tokens (bitsandbytes' "stable embedding" advice): rows updated
//!   rarely with large gradients share a block scale with the rest; keep them in 32 bits with a
//!   group, `ParamGroup::glob("embeddings", &["*embed*"])?.state_format(StateFormat::Full)`.
//! - When gradient magnitudes inside a block of 256 consecutive elements span more than about
//!   3.5 decades: `v` is quantized relative to the block's largest `v`, and values below
//!   `3.25e-7` of it become 0 (the unsigned map's smallest step). The fresh `(1 - beta2) g^2` is
//!   added after dequantization, so such an element's `v` is about `(1 - beta2) g^2` alone and
//!   its update about `m / sqrt((1 - beta2) g^2)`, roughly `1 / sqrt(1 - beta2)` times the
//!   f32-state step (~31.6x at `beta2 = 0.999`, when `v` has had time to build up there), until
//!   its `v` survives quantization (the same limit as bitsandbytes' 8-bit Adam). Keep such
//!   tensors full.
//! - For f64 parameters (refused) and when results must reproduce an f32-state run bit for bit
//!   (8-bit state tracks it closely, not exactly: `tests/quant8.rs` bounds the drift).
//!
//! So a block's largest magnitude is stored exactly (code of `±1`, up to `-0.99297` for a
//! negative `m`: the signed map has no `-1`, as in bitsandbytes), zero stays exactly zero, and
//! every other element's error is at most half the gap between the two map values around it,
//! times `absmax` ([`max_half_gap`]).

/// How an optimizer (or a parameter group) stores the moments `m` and `v` of its variables.
///
/// ```
/// use candle_radam::{ParamGroup, ParamsRAdam, RAdam, StateFormat};
/// # use candle_core::{DType, Device};
/// # use candle_nn::{VarBuilder, VarMap};
/// # fn main() -> candle_core::Result<()> {
/// # let varmap = VarMap::new();
/// # let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
/// # let _emb = candle_nn::embedding(100, 64, vb.pp("embed"))?;
/// # let _fc = candle_nn::linear(256, 256, vb.pp("fc"))?;
/// // 8-bit state everywhere except the embeddings (bitsandbytes' "stable embedding" advice).
/// let opt = RAdam::from_varmap(&varmap, ParamsRAdam::default())?
///     .with_state_format(StateFormat::blockwise8())?
///     .with_groups(vec![ParamGroup::glob("embeddings", &["embed*"])?.state_format(StateFormat::Full)])?;
/// assert_eq!(opt.var_state("embed.weight"), Some((8 * 6400, false))); // 32-bit moments
/// assert_eq!(opt.var_state("fc.weight"), Some((2 * 65536 + 8 * 256, true))); // codes + absmax
/// assert!(opt.state_bytes_per_param() < 2.6); // the 256-element bias stays 32-bit too
/// # Ok(()) }
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum StateFormat {
    /// Moments in the moment dtype ([`crate::moment_dtype`]: f32, f64 for f64 variables):
    /// 8 bytes per f32 parameter. The default.
    #[default]
    Full,
    /// Block-wise dynamic 8-bit moments (module [`crate::quant`]): one `u8` code per element
    /// and moment plus one f32 absmax per [`BLOCK`] elements, about 2.03 bytes per parameter.
    /// Variables with fewer than `min_elements` elements keep [`StateFormat::Full`] moments.
    /// f32, f16 and bf16 variables only (an f64 variable selected for it is an error).
    Blockwise8 {
        /// Smaller tensors keep full moments ([`MIN_8BIT_ELEMENTS`] = 4096 by default,
        /// bitsandbytes' `min_8bit_size`). Any value is accepted, as in bitsandbytes: `0` (or
        /// `1`) quantizes every tensor, even a 1-element one (its block is 1 element, stored
        /// exactly up to `m`'s `-0.99297` for a negative value), `usize::MAX` none.
        min_elements: usize,
    },
}

impl StateFormat {
    /// [`StateFormat::Blockwise8`] with bitsandbytes' threshold of [`MIN_8BIT_ELEMENTS`].
    pub fn blockwise8() -> Self {
        Self::Blockwise8 { min_elements: MIN_8BIT_ELEMENTS }
    }

    /// Whether a variable of `n` elements gets 8-bit moments under this format.
    pub fn quantizes(self, n: usize) -> bool {
        matches!(self, Self::Blockwise8 { min_elements } if n >= min_elements)
    }
}

/// Elements per quantization block (one `f32` absmax each). bitsandbytes' block-wise 8-bit
/// optimizers use 256 too; it is also `RADAM_THREADS` of the CUDA kernel (one thread per element of
/// a block), so it is fixed.
pub const BLOCK: usize = 256;

/// Tensors with fewer elements keep 32-bit moments under 8-bit state (bitsandbytes'
/// `min_8bit_size` default): their state is small and biases / norms are sensitive.
pub const MIN_8BIT_ELEMENTS: usize = 4096;

/// Decimal scales of the map's seven exponents, `10^(i-6)`, as literals (correctly rounded in
/// Rust and numpy alike).
const DECADES: [f64; 7] = [1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0];

/// bitsandbytes' `create_dynamic_map(signed, max_exponent_bits=7, total_bits=8)`, sorted, in f32
/// (see the module docs for the exact evaluation).
fn dynamic_map(signed: bool) -> [f32; 256] {
    let mut data: Vec<f32> = Vec::with_capacity(256);
    for (i, scale) in DECADES.iter().enumerate() {
        // Boundaries linspace(0.1, 1, k): k - 1 midpoints.
        let k: usize = if signed { (1 << i) + 1 } else { (1 << (i + 1)) + 1 };
        for j in 0..k - 1 {
            let mean = 0.1 + (0.9 * (2 * j + 1) as f64) / (2 * (k - 1)) as f64;
            let x = (scale * mean) as f32;
            data.push(x);
            if signed {
                data.push(-x);
            }
        }
    }
    data.push(0.0);
    data.push(1.0);
    assert_eq!(data.len(), 256, "the dynamic map has 256 values");
    data.sort_by(f32::total_cmp);
    data.try_into().unwrap_or([0.0; 256])
}

/// The map of `m`: the formula of bitsandbytes' `create_dynamic_map(signed=True)`, evaluated in
/// f64 and rounded once to f32; 72 of its 256 values are 1 ulp from torch's f32 evaluation in
/// bitsandbytes (module docs).
pub fn signed_map() -> &'static [f32; 256] {
    static MAP: std::sync::OnceLock<[f32; 256]> = std::sync::OnceLock::new();
    MAP.get_or_init(|| dynamic_map(true))
}

/// The map of `v`: the formula of bitsandbytes' `create_dynamic_map(signed=False)`, evaluated in
/// f64 and rounded once to f32; 100 of its 256 values are 1-2 ulps from torch's f32 evaluation in
/// bitsandbytes (module docs).
pub fn unsigned_map() -> &'static [f32; 256] {
    static MAP: std::sync::OnceLock<[f32; 256]> = std::sync::OnceLock::new();
    MAP.get_or_init(|| dynamic_map(false))
}

/// Which moment a map is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Moment {
    /// The first moment `m`, any sign: [`signed_map`].
    First,
    /// The second moment `v >= 0`: [`unsigned_map`].
    Second,
}

impl Moment {
    /// This moment's map.
    pub fn map(self) -> &'static [f32; 256] {
        match self {
            Self::First => signed_map(),
            Self::Second => unsigned_map(),
        }
    }
}

/// The code of the map entry nearest to `y` (normally in `[-1, 1]`): binary search for the largest
/// `lo` with `map[lo] <= y` (0 when `y < map[0]` or `y` is NaN), then `lo + 1` when it is strictly
/// nearer (`map[lo+1] - y < y - map[lo]`, in f32); ties go to `lo`. `map` must be sorted.
#[inline(always)]
pub fn nearest_code(map: &[f32; 256], y: f32) -> u8 {
    let mut lo = 0usize;
    let mut step = 128;
    while step > 0 {
        lo += step * (map[lo + step] <= y) as usize;
        step >>= 1;
    }
    let hi = (lo + 1).min(255);
    let up = hi != lo && map[hi] - y < y - map[lo];
    (lo + up as usize) as u8
}

/// The absmax of one block: the largest `|x|`, **saturated** to `f32::MAX` when it is infinite
/// (module docs: an overflowed moment must not poison its block), NaN if any element is NaN,
/// 0 for an empty block. (The largest of the bit patterns of `|x|`: for non-negative floats the
/// unsigned order of the bits is the numeric order, and every NaN's bits exceed infinity's, so
/// this is one vectorized integer max.)
#[inline(always)]
pub fn absmax(x: &[f32]) -> f32 {
    let a = x.iter().fold(0u32, |a, e| a.max(e.to_bits() & 0x7fff_ffff));
    if a > f32::INFINITY.to_bits() {
        f32::NAN
    } else {
        f32::from_bits(a.min(f32::MAX.to_bits()))
    }
}

/// Quantizes one block of `moment` in place of `codes` (`codes.len() == x.len()`, else an
/// error) and returns its absmax (module docs). The codes are [`nearest_code`]'s of
/// `x / absmax` in `moment`'s map (0's code when `absmax = 0`), found through [`CodeIndex`]
/// (AVX2 gathers where the CPU has them).
pub fn quantize_block(moment: Moment, x: &[f32], codes: &mut [u8]) -> candle_core::Result<f32> {
    if x.len() != codes.len() {
        candle_core::bail!(
            "quantize_block: {} values but {} codes (they must have the same length)",
            x.len(),
            codes.len()
        );
    }
    Ok(quantize_block_of(moment, x, codes))
}

/// [`quantize_block`] without the length check (the fused pass: same lengths by construction;
/// [`CodeIndex::codes_scaled`] asserts it).
#[inline(always)]
pub(crate) fn quantize_block_of(moment: Moment, x: &[f32], codes: &mut [u8]) -> f32 {
    let a = absmax(x);
    CodeIndex::of(moment).codes_scaled(x, a, codes);
    a
}

/// Finds [`nearest_code`]'s answer without the binary search: branch-free, one table read.
///
/// The code is monotone in `y` (between `map[lo]` and `map[lo+1]` the f32 differences
/// `map[lo+1] - y` and `y - map[lo]` are monotone in `y`), so it is the number of
/// *thresholds* `t[c]` (`c = 0..255`: the smallest f32 whose code exceeds `c`, found by
/// bisection on the f32 order) that are `<= y`. All f32 with the same top 16 bits (sign,
/// exponent, 7 mantissa bits: a *prefix*) are consecutive in that order, and for these maps at
/// most one threshold lies inside one prefix (checked when the index is built). So one `u32`
/// per prefix holds `s`, the code of the prefix's lowest value, and the low 16 bits of the
/// order key of the threshold inside it (or `2^16`: none), and
/// `code = s + (low16(order_key(y)) >= low16(t))`; NaN gives 0. Tested against
/// [`nearest_code`] on every threshold and prefix boundary and on random values, and
/// exhaustively over all 2^32 bit patterns (an ignored test).
pub struct CodeIndex {
    /// Per prefix: `s << 17 | low16(order_key(t))`, or `s << 17 | 1 << 16` without threshold
    /// (`s`: the code of the lowest non-NaN value with that prefix, 0 when all are NaN).
    entry: Vec<u32>,
    /// `thr[c]`: the smallest f32 `y` with `nearest_code(y) > c`.
    thr: [f32; 255],
}

/// The f32 bit patterns as integers in the numeric order of the values (`-0 < +0`).
fn order_key(x: f32) -> u32 {
    let b = x.to_bits();
    if b >> 31 == 1 {
        !b
    } else {
        b | 1 << 31
    }
}

/// The inverse of [`order_key`].
fn from_order_key(k: u32) -> f32 {
    f32::from_bits(if k >> 31 == 1 { k & !(1 << 31) } else { !k })
}

/// "No threshold in this prefix": above every low 16 bits of a key.
const NO_THRESHOLD: u32 = 1 << 16;

impl CodeIndex {
    fn new(map: &[f32; 256]) -> Self {
        let mut thr = [0f32; 255];
        for (c, t) in thr.iter_mut().enumerate() {
            // code(map[c]) = c, code(map[c + 1]) = c + 1: bisect between them.
            let (mut lo, mut hi) = (order_key(map[c]), order_key(map[c + 1]));
            assert!(nearest_code(map, map[c]) as usize == c && lo < hi, "CodeIndex: map");
            while hi - lo > 1 {
                let mid = lo + (hi - lo) / 2;
                if nearest_code(map, from_order_key(mid)) as usize > c {
                    hi = mid;
                } else {
                    lo = mid;
                }
            }
            *t = from_order_key(hi);
        }
        let keys = thr.map(order_key);
        let entry = (0..1u32 << 16)
            .map(|prefix| {
                // The prefix's values in numeric order: ascending bits for +, descending for -.
                let (a, b) = (f32::from_bits(prefix << 16), f32::from_bits(prefix << 16 | 0xffff));
                let (low, high) = if prefix >> 15 == 1 { (b, a) } else { (a, b) };
                // Lowest and highest non-NaN (only the infinity prefixes mix NaN and numbers).
                let (low, high) = match (low.is_nan(), high.is_nan()) {
                    (false, false) => (low, high),
                    (true, false) => (high, high),
                    (false, true) => (low, low),
                    (true, true) => return NO_THRESHOLD,
                };
                let (kl, kh) = (order_key(low), order_key(high));
                // Thresholds with keys in (kl, kh]: keys[first..last] (sorted ascending).
                let first = keys.partition_point(|&k| k <= kl);
                let last = keys.partition_point(|&k| k <= kh);
                assert!(last - first <= 1, "CodeIndex: 2 thresholds in prefix {prefix:#x}");
                let t = keys[first..last].first().map_or(NO_THRESHOLD, |k| k & 0xffff);
                (nearest_code(map, low) as u32) << 17 | t
            })
            .collect();
        Self { entry, thr }
    }

    /// The index of `moment`'s map (built once).
    pub fn of(moment: Moment) -> &'static Self {
        static S: std::sync::OnceLock<CodeIndex> = std::sync::OnceLock::new();
        static U: std::sync::OnceLock<CodeIndex> = std::sync::OnceLock::new();
        match moment {
            Moment::First => S.get_or_init(|| Self::new(signed_map())),
            Moment::Second => U.get_or_init(|| Self::new(unsigned_map())),
        }
    }

    /// The thresholds: `thresholds()[c]` is the smallest f32 `y` with `nearest_code(y) > c`.
    pub fn thresholds(&self) -> &[f32; 255] {
        &self.thr
    }

    /// [`nearest_code`]`(map, y)` for the map this index was built for.
    #[inline(always)]
    pub fn code(&self, y: f32) -> u8 {
        let bits = y.to_bits();
        let e = self.entry[(bits >> 16) as usize];
        // low16(order_key(y)): the low bits, inverted for a negative y.
        let key = (bits ^ ((bits as i32 >> 31) as u32)) & 0xffff;
        let code = (e >> 17) + (key >= e & 0x1ffff) as u32;
        if y.is_nan() {
            0
        } else {
            code as u8
        }
    }

    /// `out[i] = self.code(ys[i])`.
    pub fn codes(&self, ys: &[f32], out: &mut [u8]) {
        for (c, &y) in out.iter_mut().zip(ys) {
            *c = self.code(y);
        }
    }

    /// `out[i] = self.code(x[i] / a)` (IEEE division), or the code of 0 when `a == 0`.
    #[inline(always)]
    pub fn codes_scaled(&self, x: &[f32], a: f32, out: &mut [u8]) {
        assert_eq!(x.len(), out.len(), "CodeIndex: codes and values differ in length");
        if a == 0.0 {
            out.fill(self.code(0.0));
            return;
        }
        #[cfg(target_arch = "x86_64")]
        if std::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU supports AVX2, checked just above.
            return unsafe { self.codes_scaled_avx2(x, a, out) };
        }
        for (c, &e) in out.iter_mut().zip(x) {
            *c = self.code(e / a);
        }
    }

    /// [`Self::codes_scaled`] eight at a time: the same f32 division and integer arithmetic,
    /// the table read as a gather.
    ///
    /// # Safety
    /// The CPU must support AVX2. Memory safety: every gather index is a prefix `< 2^16`, the
    /// length of `entry`.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    unsafe fn codes_scaled_avx2(&self, x: &[f32], a: f32, out: &mut [u8]) {
        use std::arch::x86_64::*;
        let n8 = x.len() / 8 * 8;
        let av = _mm256_set1_ps(a);
        let low16 = _mm256_set1_epi32(0xffff);
        let low17 = _mm256_set1_epi32(0x1ffff);
        for i in (0..n8).step_by(8) {
            let y = _mm256_div_ps(_mm256_loadu_ps(x.as_ptr().add(i)), av);
            let bits = _mm256_castps_si256(y);
            let e = _mm256_i32gather_epi32::<4>(
                self.entry.as_ptr().cast(),
                _mm256_srli_epi32::<16>(bits),
            );
            let key =
                _mm256_and_si256(_mm256_xor_si256(bits, _mm256_srai_epi32::<31>(bits)), low16);
            let t = _mm256_and_si256(e, low17);
            // key >= t <=> !(t > key): all ones (-1) where the threshold is passed.
            let below = _mm256_cmpgt_epi32(t, key);
            let passed = _mm256_andnot_si256(below, _mm256_set1_epi32(-1));
            let code = _mm256_sub_epi32(_mm256_srli_epi32::<17>(e), passed);
            let nan = _mm256_castps_si256(_mm256_cmp_ps::<_CMP_UNORD_Q>(y, y));
            let code = _mm256_andnot_si256(nan, code);
            let w =
                _mm_packus_epi32(_mm256_castsi256_si128(code), _mm256_extracti128_si256::<1>(code));
            _mm_storel_epi64(out.as_mut_ptr().add(i).cast(), _mm_packus_epi16(w, w));
        }
        for (c, &e) in out[n8..].iter_mut().zip(&x[n8..]) {
            *c = self.code(e / a);
        }
    }
}

/// Dequantizes one block: `out[i] = map[codes[i]] * absmax`. Scalar table reads (on the
/// machine measured they beat AVX2 gathers), or, for the two maps on a CPU with AVX-512 VBMI,
/// 64 codes at a time through byte permutes; the same product either way.
#[inline(always)]
pub fn dequantize_block(map: &[f32; 256], codes: &[u8], absmax: f32, out: &mut [f32]) {
    let n = codes.len().min(out.len());
    #[cfg(target_arch = "x86_64")]
    if n >= 64
        && std::is_x86_feature_detected!("avx512vbmi")
        && std::is_x86_feature_detected!("avx512bw")
    {
        if let Some(planes) = BytePlanes::of(map) {
            let m = n / 64 * 64;
            // SAFETY: the CPU supports AVX-512 F, BW and VBMI (BW implies F), checked just above.
            unsafe { dequantize_vbmi(planes, &codes[..m], absmax, &mut out[..m]) };
            for (o, &c) in out[m..n].iter_mut().zip(&codes[m..n]) {
                *o = map[c as usize] * absmax;
            }
            return;
        }
    }
    for (o, &c) in out.iter_mut().zip(codes) {
        *o = map[c as usize] * absmax;
    }
}

/// A map's values split into their four bytes: `planes[k][c]` is byte `k` (little-endian) of
/// `map[c]`'s bits, so that a 256-entry lookup of 64 codes is two 128-byte permutes per byte.
#[cfg(target_arch = "x86_64")]
struct BytePlanes([[u8; 256]; 4]);

#[cfg(target_arch = "x86_64")]
impl BytePlanes {
    /// The planes of [`signed_map`] or [`unsigned_map`] (built once), `None` for another map.
    fn of(map: &[f32; 256]) -> Option<&'static Self> {
        static S: std::sync::OnceLock<BytePlanes> = std::sync::OnceLock::new();
        static U: std::sync::OnceLock<BytePlanes> = std::sync::OnceLock::new();
        let build = || Self(std::array::from_fn(|k| map.map(|x| (x.to_bits() >> (8 * k)) as u8)));
        if std::ptr::eq(map, signed_map()) {
            Some(S.get_or_init(build))
        } else if std::ptr::eq(map, unsigned_map()) {
            Some(U.get_or_init(build))
        } else {
            None
        }
    }
}

/// [`dequantize_block`] 64 codes at a time (`codes.len() == out.len()`, a multiple of 64): each
/// byte of the values looked up with two `vpermi2b` (128 entries each, code bit 7 picks one),
/// the four bytes interleaved into f32 (the codes are first permuted so that the in-lane
/// unpacks leave the values in order), one f32 product.
///
/// # Safety
/// The CPU must support AVX-512 F, BW and VBMI. Memory: loads and stores stay inside `codes`
/// and `out` (64 at a time, lengths multiples of 64).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vbmi")]
unsafe fn dequantize_vbmi(planes: &BytePlanes, codes: &[u8], absmax: f32, out: &mut [f32]) {
    use std::arch::x86_64::*;
    // After the unpacks, output register k, lane l, word r holds position 16 l + 4 k + r of the
    // byte vectors: put code 16 k + 4 l + r there.
    let order: [u8; 64] = std::array::from_fn(|p| {
        let (l, k, r) = (p / 16, p % 16 / 4, p % 4);
        (16 * k + 4 * l + r) as u8
    });
    let order = _mm512_loadu_si512(order.as_ptr().cast());
    let t = |k: usize, h: usize| _mm512_loadu_si512(planes.0[k][64 * h..].as_ptr().cast());
    let tables: [[__m512i; 4]; 4] = std::array::from_fn(|k| std::array::from_fn(|h| t(k, h)));
    let av = _mm512_set1_ps(absmax);
    for (c, o) in codes.chunks_exact(64).zip(out.chunks_exact_mut(64)) {
        let idx = _mm512_permutexvar_epi8(order, _mm512_loadu_si512(c.as_ptr().cast()));
        let high = _mm512_movepi8_mask(idx); // code bit 7
        let byte = |t: &[__m512i; 4]| {
            let lo = _mm512_permutex2var_epi8(t[0], idx, t[1]);
            let hi = _mm512_permutex2var_epi8(t[2], idx, t[3]);
            _mm512_mask_blend_epi8(high, lo, hi)
        };
        let b = tables.each_ref().map(byte);
        let (w01l, w01h) = (_mm512_unpacklo_epi8(b[0], b[1]), _mm512_unpackhi_epi8(b[0], b[1]));
        let (w23l, w23h) = (_mm512_unpacklo_epi8(b[2], b[3]), _mm512_unpackhi_epi8(b[2], b[3]));
        let v = [
            _mm512_unpacklo_epi16(w01l, w23l),
            _mm512_unpackhi_epi16(w01l, w23l),
            _mm512_unpacklo_epi16(w01h, w23h),
            _mm512_unpackhi_epi16(w01h, w23h),
        ];
        for (k, v) in v.into_iter().enumerate() {
            _mm512_storeu_ps(o[16 * k..].as_mut_ptr(), _mm512_mul_ps(_mm512_castsi512_ps(v), av));
        }
    }
}

/// Number of quantization blocks of an `n`-element tensor.
pub fn blocks(n: usize) -> usize {
    n.div_ceil(BLOCK)
}

/// Quantizes a whole tensor of `moment` (in its map): codes (`x.len()`) and one absmax per [`BLOCK`] (the last block may be
/// partial).
pub fn quantize(moment: Moment, x: &[f32]) -> (Vec<u8>, Vec<f32>) {
    let mut codes = vec![0u8; x.len()];
    let absmax = x
        .chunks(BLOCK)
        .zip(codes.chunks_mut(BLOCK))
        .map(|(x, c)| quantize_block_of(moment, x, c))
        .collect();
    (codes, absmax)
}

/// Dequantizes a whole tensor (`absmax.len() == blocks(codes.len())`).
pub fn dequantize(map: &[f32; 256], codes: &[u8], absmax: &[f32]) -> Vec<f32> {
    let mut out = vec![0f32; codes.len()];
    for ((o, c), a) in out.chunks_mut(BLOCK).zip(codes.chunks(BLOCK)).zip(absmax) {
        dequantize_block(map, c, *a, o);
    }
    out
}

/// The largest half gap between neighbouring map values: the worst-case error of one quantized
/// element, relative to its block's absmax.
pub fn max_half_gap(map: &[f32; 256]) -> f32 {
    map.windows(2).map(|w| (w[1] - w[0]) / 2.0).fold(0.0, f32::max)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_have_bitsandbytes_shape() {
        let s = signed_map();
        let u = unsigned_map();
        assert!(s.windows(2).all(|w| w[0] < w[1]) && u.windows(2).all(|w| w[0] < w[1]));
        assert_eq!((s[127], s[255], u[0], u[255]), (0.0, 1.0, 0.0, 1.0));
        assert_eq!(s.iter().filter(|x| **x < 0.0).count(), 127);
        // Largest negative: 1 * (0.1 + 0.9 * 127 / 128) = 0.99296875 (f32).
        assert_eq!(s[0], -0.99296875f32);
        assert_eq!(s[128], (1e-6 * 0.55) as f32);
        assert_eq!(u[1], (1e-6 * 0.325) as f32);
    }

    #[test]
    fn exact_values_keep_their_code() {
        for m in [Moment::First, Moment::Second] {
            let map = m.map();
            for (i, &x) in map.iter().enumerate() {
                assert_eq!(nearest_code(map, x) as usize, i);
            }
            assert_eq!(nearest_code(map, 2.0), 255);
        }
        assert_eq!(nearest_code(signed_map(), -1.0), 0);
        assert_eq!(nearest_code(unsigned_map(), -1.0), 0);
    }

    /// The index gives the binary search's code everywhere: on both sides of every threshold,
    /// at both ends of every 16-bit prefix, on every map value and midpoint, and on random bit
    /// patterns; through [`CodeIndex::code`], [`CodeIndex::codes`] and the scaled (AVX2) path.
    #[test]
    fn code_index_agrees_with_binary_search() {
        for moment in [Moment::First, Moment::Second] {
            let (map, index) = (moment.map(), CodeIndex::of(moment));
            let mut ys: Vec<f32> = vec![0.0, -0.0, 1.0, -1.0, 2.0, f32::INFINITY, -f32::INFINITY];
            ys.extend([
                f32::NAN,
                -f32::NAN,
                f32::from_bits(0x7f80_0001),
                f32::from_bits(0xff80_0001),
            ]);
            for &t in index.thresholds() {
                let k = order_key(t);
                ys.extend((k - 3..=k + 3).map(from_order_key));
            }
            for prefix in 0..1u32 << 16 {
                ys.push(f32::from_bits(prefix << 16));
                ys.push(f32::from_bits(prefix << 16 | 0xffff));
            }
            for w in map.windows(2) {
                let mid = (w[0] + w[1]) / 2.0;
                for y in [
                    w[0],
                    mid,
                    f32::from_bits(mid.to_bits() + 1),
                    f32::from_bits(mid.to_bits() - 1),
                ] {
                    ys.push(y);
                }
            }
            let mut h = 0x9E37_79B9u32;
            for _ in 0..2_000_000 {
                h ^= h << 13;
                h ^= h >> 17;
                h ^= h << 5;
                let y = f32::from_bits(h & 0xBFFF_FFFF); // |y| < 2: exponent <= 127
                ys.push(y);
            }
            let mut fast = vec![0u8; ys.len()];
            index.codes(&ys, &mut fast);
            let mut scaled = vec![0u8; ys.len()];
            index.codes_scaled(&ys, 1.0, &mut scaled); // y / 1 = y: the vector path
            for ((y, f), s) in ys.iter().zip(&fast).zip(&scaled) {
                let want = nearest_code(map, *y);
                assert_eq!(index.code(*y), want, "y = {y:e} ({:#x})", y.to_bits());
                assert_eq!(*f, want, "codes(): y = {y:e} ({:#x})", y.to_bits());
                assert_eq!(*s, want, "codes_scaled(): y = {y:e} ({:#x})", y.to_bits());
            }
        }
    }

    /// Every f32 bit pattern (2^32 per map): the index equals the binary search. Minutes of
    /// CPU: `cargo test --release --lib exhaustive -- --ignored`.
    #[test]
    #[ignore]
    fn code_index_agrees_with_binary_search_exhaustively() {
        use rayon::prelude::*;
        for moment in [Moment::First, Moment::Second] {
            let (map, index) = (moment.map(), CodeIndex::of(moment));
            let bad = (0..1u32 << 16).into_par_iter().find_any(|&hi| {
                let ys: Vec<f32> =
                    (0..1u32 << 16).map(|lo| f32::from_bits(hi << 16 | lo)).collect();
                let mut c = vec![0u8; ys.len()];
                index.codes_scaled(&ys, 1.0, &mut c);
                ys.iter().zip(&c).any(|(y, c)| *c != nearest_code(map, *y) || index.code(*y) != *c)
            });
            assert_eq!(bad, None, "a prefix where the index and the binary search differ");
        }
    }

    /// Quantization of a scaled block: `x / a` through the vector path, `a = 0` gives 0's code,
    /// a NaN absmax gives code 0; dequantization's vector path equals the scalar product.
    #[test]
    fn scaled_codes_and_dequantization() {
        for moment in [Moment::First, Moment::Second] {
            let (map, index) = (moment.map(), CodeIndex::of(moment));
            let x: Vec<f32> =
                (0..259).map(|i| ((i * 7919 % 1000) as f32 - 500.0) * 1.3e-3).collect();
            let a = absmax(&x);
            let mut c = vec![0u8; x.len()];
            index.codes_scaled(&x, a, &mut c);
            let want: Vec<u8> = x.iter().map(|e| nearest_code(map, e / a)).collect();
            assert_eq!(c, want);
            index.codes_scaled(&[0.0; 9], 0.0, &mut c[..9]);
            assert!(c[..9].iter().all(|&c| c == nearest_code(map, 0.0)));
            index.codes_scaled(&x[..9], f32::NAN, &mut c[..9]);
            assert!(c[..9].iter().all(|&c| c == 0));
            let codes: Vec<u8> = (0..=255).chain((0..=255).rev()).chain(0..3).collect();
            let mut out = vec![0f32; codes.len()];
            dequantize_block(map, &codes, 0.37, &mut out);
            for (o, c) in out.iter().zip(&codes) {
                assert_eq!(o.to_bits(), (map[*c as usize] * 0.37).to_bits());
            }
        }
        assert!(absmax(&[1.0, -3.0, 2.0]) == 3.0 && absmax(&[-0.0]) == 0.0 && absmax(&[]) == 0.0);
        assert!(absmax(&[1.0, f32::NAN, f32::INFINITY]).is_nan());
        assert_eq!(absmax(&[1.0, -f32::INFINITY]), f32::MAX); // saturated
    }

    #[test]
    fn ties_go_to_the_lower_code() {
        let map = unsigned_map();
        // 0.75 and 0.25 are exact in f32; pick a gap whose midpoint is exactly representable.
        for i in 0..255 {
            let (a, b) = (map[i], map[i + 1]);
            let mid = (a + b) / 2.0;
            if mid - a == b - mid {
                assert_eq!(nearest_code(map, mid) as usize, i, "tie between {a} and {b}");
            }
        }
    }
}
