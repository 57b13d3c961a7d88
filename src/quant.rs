//! Block-wise dynamic 8-bit quantization of the moments (Dettmers et al. 2022, *8-bit Optimizers
//! via Block-wise Quantization*, [arXiv:2110.02861](https://arxiv.org/abs/2110.02861)), as
//! bitsandbytes does it for its 8-bit Adam: the math shared by the CPU pass (`src/cpu8.rs`), the
//! CUDA kernels (`radam8_mt_*` in `kernels/radam.cu`, which get these maps from the host) and the
//! state conversion.
//!
//! ## The maps
//!
//! A moment is stored as one `u8` code per element and one `f32` scale (`absmax`) per block of
//! [`BLOCK`] consecutive elements; the value is `map[code] * absmax`. The maps are bitsandbytes'
//! `create_dynamic_map` (`bitsandbytes/functional.py`, defaults `max_exponent_bits = 7`,
//! `total_bits = 8`): a "dynamic" type of a decimal exponent and a linear fraction,
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
//! distance to torch's evaluation of bitsandbytes' code (at most a few f32 ulps).
//!
//! ## Quantize, dequantize
//!
//! - `absmax` of a block = the largest `|x|` of its elements (NaN if one of them is NaN);
//! - code of `x` = the map entry nearest to `x / absmax` (IEEE division; `0` when `absmax = 0`):
//!   a binary search for the largest `lo` with `map[lo] <= x / absmax` (`lo = 0` below `map[0]`),
//!   then `lo + 1` if `map[lo + 1] - y < y - map[lo]` (f32 differences), else `lo`: **a tie goes
//!   to the lower code**. [`nearest_code`] is that definition (and the CUDA kernel's search);
//!   the CPU finds the same code faster through [`CodeIndex`] (tables, tested against it).
//! - dequantized value = `map[code] * absmax` (one f32 product).
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
//!   time for memory. On the CPU the per-element code search and dequantization are scalar and
//!   the step takes about 3-3.6x the f32-state step's time (README, measured on a 2-core VM); the
//!   CUDA kernel is written to stay memory bound (no GPU measurement yet).
//! - For embeddings of rare tokens (bitsandbytes' "stable embedding" advice): rows updated
//!   rarely with large gradients share a block scale with the rest; keep them in 32 bits with a
//!   group, `ParamGroup::glob("embeddings", &["*embed*"])?.state_format(StateFormat::Full)`.
//! - When gradient magnitudes inside a block of 256 consecutive elements span more than about
//!   3.5 decades: `v` is quantized relative to the block's largest `v`, and values below
//!   `3.25e-7` of it become 0 (the unsigned map's smallest step), so such an element's update is
//!   `m / eps`-sized until its `v` grows (the same limit as bitsandbytes' 8-bit Adam). Keep such
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
        /// bitsandbytes' `min_8bit_size`).
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

/// The map of `m`: bitsandbytes' `create_dynamic_map(signed=True)` (module docs).
pub fn signed_map() -> &'static [f32; 256] {
    static MAP: std::sync::OnceLock<[f32; 256]> = std::sync::OnceLock::new();
    MAP.get_or_init(|| dynamic_map(true))
}

/// The map of `v`: bitsandbytes' `create_dynamic_map(signed=False)` (module docs).
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

/// The absmax of one block: the largest `|x|`, NaN if any element is NaN, 0 for an empty block.
/// (Written as a max plus a NaN flag so that it vectorizes.)
#[inline(always)]
pub fn absmax(x: &[f32]) -> f32 {
    let mut a = 0f32;
    let mut nan = false;
    for &e in x {
        let e = e.abs();
        a = if e > a { e } else { a };
        nan |= e.is_nan();
    }
    if nan {
        f32::NAN
    } else {
        a
    }
}

/// Quantizes one block in place of `codes` and returns its absmax (module docs). The codes are
/// [`nearest_code`]'s, found through `index` ([`CodeIndex`] of the same map).
#[inline(always)]
pub fn quantize_block(map: &'static [f32; 256], x: &[f32], codes: &mut [u8]) -> f32 {
    quantize_block_with(map, CodeIndex::of(map), x, codes)
}

#[inline(always)]
fn quantize_block_with(map: &[f32; 256], index: &CodeIndex, x: &[f32], codes: &mut [u8]) -> f32 {
    let a = absmax(x);
    let mut y = [0f32; BLOCK];
    let n = x.len().min(BLOCK);
    if a != 0.0 {
        for (y, &e) in y.iter_mut().zip(&x[..n]) {
            *y = e / a; // vectorized: the division is exact IEEE at any width
        }
    }
    let m = n.min(codes.len());
    index.codes(map, &y[..m], &mut codes[..m]);
    for (c, &e) in codes.iter_mut().zip(x).skip(BLOCK) {
        *c = index.code(map, if a == 0.0 { 0.0 } else { e / a });
    }
    a
}

/// A lookup table that finds [`nearest_code`]'s answer without the binary search: indexed by the
/// sign, the binade and the top 5 mantissa bits of `y`, it gives the largest code whose map value
/// is `<=` every value of that bucket; a short upward scan (at most 3 steps for these maps) then
/// reaches the binary search's `lo`, and the same nearer-neighbour rule picks the code. So the
/// result is exactly [`nearest_code`]'s (tested on every bucket boundary and on random values).
pub struct CodeIndex {
    start: [[u8; 32]; 2 * BUCKETS],
    /// The code of every `y` with these top 16 bits, or 256 when they do not all get one code.
    direct: Vec<u16>,
}

/// Steps of the upward scan after the table lookup (the most map values inside one bucket above
/// its start value, for these maps: 3).
const SCAN: usize = 3;
/// Binades of the index: one for `|y| < 2^-24`, 24 for `2^-24 <= |y| < 1`, one for `|y| >= 1`.
const BUCKETS: usize = 26;
/// Biased exponent of the first indexed binade (`2^-24`).
const E_MIN: u32 = 127 - 24;

impl CodeIndex {
    fn new(map: &[f32; 256]) -> Self {
        // Largest code with map value <= v (0 when none).
        let floor = |v: f64| map.iter().rposition(|&m| m as f64 <= v).unwrap_or(0) as u8;
        let mut start = [[0u8; 32]; 2 * BUCKETS];
        for b in 0..BUCKETS {
            let bucket = |m5: usize| match b {
                0 => (0.0, 2f64.powi(-24)),
                25 => (1.0, f64::INFINITY),
                _ => {
                    let base = 2f64.powi(b as i32 - 25);
                    (base * (1.0 + m5 as f64 / 32.0), base * (1.0 + (m5 + 1) as f64 / 32.0))
                }
            };
            // y in [lo, hi): start at floor(lo); y in (-hi, -lo]: at floor(-hi).
            let pos: [u8; 32] = std::array::from_fn(|m5| floor(bucket(m5).0));
            let neg: [u8; 32] = std::array::from_fn(|m5| floor(-bucket(m5).1));
            // The scan passes every map value in (start value, end of bucket): SCAN bounds it.
            for (m5, (p, n)) in pos.iter().zip(&neg).enumerate() {
                let (lo, hi) = bucket(m5);
                let above = |from: u8, below: &dyn Fn(f64) -> bool| {
                    map[from as usize + 1..].iter().take_while(|&&m| below(m as f64)).count()
                };
                let inside = above(*p, &|m| m < hi).max(above(*n, &|m| m <= -lo));
                assert!(inside <= SCAN, "CodeIndex: {inside} map values in one bucket");
            }
            start[b] = pos;
            start[BUCKETS + b] = neg;
        }
        let direct = (0..1u32 << 16)
            .map(|prefix| {
                let (a, b) = (f32::from_bits(prefix << 16), f32::from_bits(prefix << 16 | 0xffff));
                let (ca, cb) = (nearest_code(map, a), nearest_code(map, b));
                if ca == cb && !a.is_nan() && !b.is_nan() {
                    ca as u16
                } else {
                    256
                }
            })
            .collect();
        Self { start, direct }
    }

    /// The index of [`signed_map`] or [`unsigned_map`] (built once).
    pub fn of(map: &'static [f32; 256]) -> &'static Self {
        static S: std::sync::OnceLock<CodeIndex> = std::sync::OnceLock::new();
        static U: std::sync::OnceLock<CodeIndex> = std::sync::OnceLock::new();
        if std::ptr::eq(map, signed_map()) {
            S.get_or_init(|| Self::new(map))
        } else {
            assert!(std::ptr::eq(map, unsigned_map()), "CodeIndex: not one of the two maps");
            U.get_or_init(|| Self::new(map))
        }
    }

    /// `out[i] = self.code(map, ys[i])`: first through [`CodeIndex`]'s direct table on the top
    /// 16 bits of `y` (sign, exponent, 7 mantissa bits), which holds the code of every such
    /// prefix whose whole range of `y` gets one code (the code is monotone in `y`, so the two
    /// ends decide); the few prefixes that hold a decision point (and NaN) take [`Self::code`].
    #[inline(always)]
    pub fn codes(&self, map: &[f32; 256], ys: &[f32], out: &mut [u8]) {
        for (c, &y) in out.iter_mut().zip(ys) {
            let d = self.direct[(y.to_bits() >> 16) as usize];
            *c = if d < 256 { d as u8 } else { self.code(map, y) };
        }
    }

    /// [`nearest_code`]`(map, y)` for the map this index was built for.
    #[inline(always)]
    pub fn code(&self, map: &[f32; 256], y: f32) -> u8 {
        // Branch-free (a NaN runs the same arithmetic and is mapped to 0 at the end), so that
        // loops over it vectorize with gathers.
        let bits = y.to_bits();
        let e = (bits >> 23) & 0xff;
        let b = (e.max(E_MIN - 1) - (E_MIN - 1)).min(BUCKETS as u32 - 1) as usize;
        let sign = (bits >> 31) as usize;
        let m5 = ((bits >> 18) & 31) as usize;
        let mut lo = self.start[sign * BUCKETS + b][m5] as usize;
        // At most SCAN map values lie above a bucket's start and below its end (checked when
        // the index is built): a fixed scan.
        for _ in 0..SCAN {
            let next = (lo + 1).min(255);
            lo += (map[next] <= y && next > lo) as usize;
        }
        let hi = (lo + 1).min(255);
        let up = hi != lo && map[hi] - y < y - map[lo];
        let code = (lo + up as usize) as u8;
        if y.is_nan() {
            0
        } else {
            code
        }
    }
}

/// Dequantizes one block: `out[i] = map[codes[i]] * absmax`.
#[inline(always)]
pub fn dequantize_block(map: &[f32; 256], codes: &[u8], absmax: f32, out: &mut [f32]) {
    for (o, &c) in out.iter_mut().zip(codes) {
        *o = map[c as usize] * absmax;
    }
}

/// Number of quantization blocks of an `n`-element tensor.
pub fn blocks(n: usize) -> usize {
    n.div_ceil(BLOCK)
}

/// Quantizes a whole tensor: codes (`x.len()`) and one absmax per [`BLOCK`] (the last block may be
/// partial).
pub fn quantize(map: &'static [f32; 256], x: &[f32]) -> (Vec<u8>, Vec<f32>) {
    let mut codes = vec![0u8; x.len()];
    let absmax = x
        .chunks(BLOCK)
        .zip(codes.chunks_mut(BLOCK))
        .map(|(x, c)| quantize_block(map, x, c))
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

    /// The lookup table gives the binary search's code everywhere: on every bucket boundary
    /// (and its neighbours), on every map value and midpoint, and on random bit patterns.
    #[test]
    fn code_index_agrees_with_binary_search() {
        for map in [signed_map(), unsigned_map()] {
            let index = CodeIndex::of(map);
            let mut ys: Vec<f32> = vec![0.0, -0.0, 1.0, -1.0, 2.0, f32::INFINITY, -f32::INFINITY];
            for e in 90..=128u32 {
                for m5 in 0..32u32 {
                    let b = e << 23 | m5 << 18;
                    for d in [0u32, 1, (1 << 18) - 1] {
                        ys.push(f32::from_bits(b + d));
                        ys.push(-f32::from_bits(b + d));
                    }
                    ys.push(f32::from_bits(b.wrapping_sub(1)));
                    ys.push(-f32::from_bits(b.wrapping_sub(1)));
                }
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
            index.codes(map, &ys, &mut fast); // the direct table first
            for (y, f) in ys.iter().zip(&fast) {
                let want = nearest_code(map, *y);
                assert_eq!(index.code(map, *y), want, "y = {y:e} ({:#x})", y.to_bits());
                assert_eq!(*f, want, "codes(): y = {y:e} ({:#x})", y.to_bits());
            }
        }
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
