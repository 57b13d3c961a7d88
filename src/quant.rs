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
//!   to the lower code**. [`nearest_code`].
//! - dequantized value = `map[code] * absmax` (one f32 product).
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
#[inline(always)]
pub fn absmax(x: &[f32]) -> f32 {
    let mut a = 0f32;
    for &e in x {
        let e = e.abs();
        // `e > a` misses a NaN `e`, and once `a` is NaN nothing replaces it.
        if e > a || (e.is_nan() && !a.is_nan()) {
            a = e;
        }
    }
    a
}

/// Quantizes one block in place of `codes` and returns its absmax (module docs).
#[inline(always)]
pub fn quantize_block(map: &[f32; 256], x: &[f32], codes: &mut [u8]) -> f32 {
    let a = absmax(x);
    for (c, &e) in codes.iter_mut().zip(x) {
        let y = if a == 0.0 { 0.0 } else { e / a };
        *c = nearest_code(map, y);
    }
    a
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
pub fn quantize(map: &[f32; 256], x: &[f32]) -> (Vec<u8>, Vec<f32>) {
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
