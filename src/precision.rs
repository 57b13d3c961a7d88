//! How an f16 / bf16 parameter takes its f32 update: [`Rounding`], and the param side of the
//! fused pass (load a block of half params, plus their auxiliary buffer, to f32; store an f32
//! block back) shared by every CPU update loop. `kernels/radam.cu` mirrors the same functions
//! (`param_load` / `param_store`) element for element, so CPU and CUDA give the same bits.
//!
//! # The problem
//!
//! The update is computed in f32 from the parameter's value. Rounded back to bf16 (8 significant
//! bits) with round to nearest, every update smaller than half an ulp of the parameter is lost:
//! a bf16 parameter 1.0 with a constant gradient 1.0 and `lr = 1e-3` (default betas) stays
//! **exactly 1.0 for 1000 steps**, where f32 reaches 0.98126870 after 100 steps and 0.55085677
//! after 1000; in f16 (11 bits) it reaches 0.99511719 at step 5, stays there through step 100
//! and ends at 0.56884766 after 1000 (`tests/precision.rs` pins these numbers).
//!
//! # The modes
//!
//! | mode | extra bytes / param | what is stored | use it when |
//! |---|---|---|---|
//! | [`Rounding::Nearest`] | 0 | nothing | f32 / f64 params, or updates well above half an ulp |
//! | [`Rounding::Remainder`] | 2 | low 16 bits of the f32 master value | bf16 training that must match f32 |
//! | [`Rounding::Kahan`] | 2 | compensation, in the param dtype | f16 params; bf16 when 2 bytes are affordable but f32 equality is not needed |
//! | [`Rounding::Stochastic`] | 0 | nothing | memory-bound training, no room for a buffer |
//!
//! With f32 moments (8 bytes per param) a bf16 step reads param, grad, m, v and writes param, m,
//! v: 22 bytes per param with `Nearest` and `Stochastic`, 26 with `Remainder` and `Kahan` (the
//! buffer is read and written). Every mode also works with 8-bit moments
//! ([`crate::StateFormat::blockwise8()`], 2.03 bytes per param): the 8-bit passes (CPU
//! `src/cpu8.rs`, CUDA `radam8_mt_*`) load and store the param with the same functions
//! (`load_block` / `store_block`, `ParamIO`), so the param side gives the same bits in both
//! formats, and the remainder still rebuilds exactly the f32 run of an f32-parameter optimizer
//! with 8-bit state. Bytes per bf16 parameter, param + state ([`crate::RAdam::state_bytes`]
//! counts the buffer): 2 + 8 (nearest, f32 moments), 2 + 8 + 2 (remainder), 2 + 2.03
//! (nearest, 8-bit), **2 + 2.03 + 2 = 6.03** (remainder or Kahan with 8-bit moments), against
//! 4 + 8 = 12 for f32 training.
//!
//! f32 and f64 parameters ignore the mode (their update is not rounded to a half type): one
//! mode can be set for a whole model whose norms stay f32. [`Rounding::Remainder`] on an f16
//! parameter is refused (f16 is not the upper half of an f32).
//!
//! Remainder versus Kahan, measured (`tests/precision.rs`, `kahan_loses_to_the_remainder`;
//! deterministic figures, 2026-11-29): Kahan keeps the lost part of each update in a 16-bit
//! float, itself rounded to 8 (bf16) or 11 (f16) significant bits, so its master value `p + c`
//! drifts from the f32 trajectory, where the remainder's rebuilt f32 follows it bit for bit.
//! After 1000 steps on 4096 bf16 elements with hashed gradients, the relative RMS drift of the
//! master value from the f32 run is **7.2e-5 for Kahan and 0 for the remainder** (constant
//! gradient 1.0 from 1.0: 1.3e-5 and 0). The bf16 value the model sees is truncated under
//! `Remainder` (drift 3.1e-3) and rounded to nearest under Kahan (1.5e-3); round to nearest
//! alone drifts 6.8e-2 (constant gradient: 0.82, the parameter never moves). For f16, Kahan's
//! master drifts 1.4e-6 (hashed) and 6.5e-7 (constant).

use std::fmt;
use std::str::FromStr;

use candle_core::{bail, DType, Result};
use half::{bf16, f16, slice::HalfFloatSliceExt};

/// How the f32 update of an f16 / bf16 parameter is written back (see the [module
/// docs](self) for the memory each takes and when to use which). f32 and f64 parameters
/// ignore it.
///
/// Parses from and prints as `nearest`, `remainder`, `kahan`, `stochastic` (seed 0) or
/// `stochastic:SEED` (for command lines: `--rounding remainder`).
///
/// ```
/// use candle_radam::Rounding;
/// let r: Rounding = "stochastic:7".parse()?;
/// assert_eq!(r, Rounding::Stochastic { seed: 7 });
/// assert_eq!(r.to_string(), "stochastic:7");
/// assert_eq!(Rounding::Remainder.extra_bytes_per_param(), 2);
/// # Ok::<(), candle_core::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Rounding {
    /// Round to nearest even (IEEE 754 `roundTiesToEven`, torch's `.to(bfloat16)`): no extra
    /// memory, but every update below half an ulp of the parameter is lost (the default, as
    /// before this option existed).
    #[default]
    Nearest,
    /// bf16 only: the exact "16 + 16" split of an f32 master value. The bf16 parameter holds the
    /// upper 16 bits of an f32 `x`, a u16 buffer (+2 bytes / param) its lower 16 bits. The step
    /// rebuilds `x = f32::from_bits(bf16_bits << 16 | low)`, runs the f32 rule unchanged and
    /// splits the result back (the parameter is the f32 value *truncated* to bf16). The
    /// reconstructed f32 trajectory is bit-identical to an f32-parameter run fed the same
    /// gradients; the model sees the truncated bf16 value (at most 1 bf16 ulp below the
    /// nearest one in magnitude). A fresh buffer is zero (the master value is the bf16 value as
    /// it is); [`crate::RAdam::set_master_weights`] starts it from an f32 tensor exactly and
    /// [`crate::RAdam::master_weights`] reads the f32 value back.
    Remainder,
    /// Kahan-compensated update, as optimi's `kahan_sum` (Warner, optimi; Zamirai et al. 2020,
    /// *Revisiting BFloat16 Training*, arXiv 2010.06192): a compensation buffer `c` in the param
    /// dtype (+2 bytes / param) carries the part of each update the rounding lost. With `p` the
    /// parameter, `x` the f32 result of the rule on `p`, all arithmetic in f32:
    /// `y = c + (x - p); p' = round(p + y); c' = round(y - (p' - p))` (`round`: nearest even
    /// to the param dtype). optimi rounds `y` to the param dtype too; the fused pass keeps it in
    /// f32, which loses less. The compensation is itself a 16-bit float, so this only
    /// approximates the f32 trajectory (it loses to [`Rounding::Remainder`] on bf16, see the
    /// module docs); it is the buffered mode for f16.
    Kahan,
    /// Stochastic rounding (0 extra bytes): the f32 value is rounded to one of its two
    /// neighbouring half values, up with probability proportional to its distance from the lower
    /// one, so the rounding is unbiased (`E[round(x)] = x`). The random bits come from a
    /// counter-based hash of (`seed`, the variable's key, its step `t`, the element index)
    /// (`s = mix64(mix64(mix64(seed) ^ key) ^ t)` with SplitMix64's mix, then for element `i`
    /// `lowbias32(lo32(i) + lo32(w)) ^ hi32(w)` with `w = mix64(s ^ (i >> 32))` and Wellons'
    /// `lowbias32`), not a stateful generator: CPU and CUDA give the same bits
    /// and a resumed run continues the same stream. `t` is the variable's own step count; its
    /// key is the FNV-1a 64 hash of its name when the optimizer is built (`param.0`, ... for
    /// [`crate::RAdam::new`]), saved with the state and restored from it, so a resumed run
    /// continues each variable's stream even when a positional optimizer gets its variables in
    /// another order. bf16: 16 random bits added to the low half
    /// of the f32 bits, then truncated (as torchao's / Gupta et al. 2015's stochastic rounding);
    /// f16: the upper neighbour is taken when 24 random bits, as a fraction of 1, fall below the
    /// distance fraction. Non-finite values round to nearest; values beyond the largest finite
    /// f16 saturate to it (never to infinity by chance).
    Stochastic {
        /// Seed of the stream (a run and its resumption use the same).
        seed: u64,
    },
}

impl Rounding {
    /// Extra bytes per parameter element this mode keeps for an f16 / bf16 parameter (0 for
    /// f32 / f64 parameters, which ignore the mode).
    pub fn extra_bytes_per_param(&self) -> usize {
        match self {
            Self::Remainder | Self::Kahan => 2,
            Self::Nearest | Self::Stochastic { .. } => 0,
        }
    }

    /// Bytes one step moves per element of a bf16 / f16 parameter: param, grad, f32 m and v
    /// read, param, m, v written (22), plus the buffer read and written (26).
    pub fn bytes_per_step(&self) -> usize {
        22 + 2 * self.extra_bytes_per_param()
    }

    /// Errors (with advice) when this mode cannot be used for a `dtype` parameter named `name`:
    /// [`Rounding::Remainder`] needs bf16. Other modes accept every float dtype (f32 / f64
    /// ignore the mode).
    pub fn check(&self, dtype: DType, name: &str) -> Result<()> {
        self.check_from(dtype, name, "")
    }

    /// [`Rounding::check`], the error saying where the mode comes from (`source`, e.g. "set by
    /// group 'halfs'"; empty: nothing said).
    pub(crate) fn check_from(&self, dtype: DType, name: &str, source: &str) -> Result<()> {
        if *self == Self::Remainder && dtype == DType::F16 {
            let source = if source.is_empty() { String::new() } else { format!(" ({source})") };
            bail!(
                "RAdam: variable '{name}' is f16, but Rounding::Remainder{source} needs bf16 \
                 parameters (bf16 is the upper half of an f32, f16 is not): use Rounding::Kahan \
                 or Rounding::Stochastic for f16, or train in bf16"
            );
        }
        Ok(())
    }

    /// The mode a `dtype` parameter actually uses: this one for f16 / bf16, [`Mode::Nearest`]
    /// (nothing to round) for f32 / f64.
    pub(crate) fn mode_for(&self, dtype: DType) -> Mode {
        if !matches!(dtype, DType::F16 | DType::BF16) {
            return Mode::Nearest;
        }
        match self {
            Self::Nearest => Mode::Nearest,
            Self::Remainder => Mode::Remainder,
            Self::Kahan => Mode::Kahan,
            Self::Stochastic { .. } => Mode::Stochastic,
        }
    }

    /// The stochastic-rounding seed (0 for the other modes).
    pub(crate) fn seed(&self) -> u64 {
        match self {
            Self::Stochastic { seed } => *seed,
            _ => 0,
        }
    }
}

impl fmt::Display for Rounding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Nearest => f.write_str("nearest"),
            Self::Remainder => f.write_str("remainder"),
            Self::Kahan => f.write_str("kahan"),
            Self::Stochastic { seed } => write!(f, "stochastic:{seed}"),
        }
    }
}

impl FromStr for Rounding {
    type Err = candle_core::Error;

    /// `nearest`, `remainder`, `kahan`, `stochastic` (seed 0) or `stochastic:SEED`
    /// (ASCII case-insensitive).
    fn from_str(s: &str) -> Result<Self> {
        let lower = s.trim().to_ascii_lowercase();
        Ok(match lower.as_str() {
            "nearest" => Self::Nearest,
            "remainder" => Self::Remainder,
            "kahan" => Self::Kahan,
            "stochastic" => Self::Stochastic { seed: 0 },
            other => match other.strip_prefix("stochastic:").map(str::parse::<u64>) {
                Some(Ok(seed)) => Self::Stochastic { seed },
                _ => bail!(
                    "RAdam: unknown rounding '{s}': expected nearest, remainder, kahan, \
                     stochastic or stochastic:SEED"
                ),
            },
        })
    }
}

/// The mode one variable is updated with (its dtype taken into account), as the kernels number
/// it (`Entry::flags` bits 4-5 in `kernels/radam.cu`, the state file's `radam.prec.*` record).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Mode {
    Nearest = 0,
    Remainder = 1,
    Kahan = 2,
    Stochastic = 3,
}

impl Mode {
    /// Whether this mode keeps a u16 buffer per element.
    pub(crate) fn has_aux(self) -> bool {
        matches!(self, Self::Remainder | Self::Kahan)
    }

    pub(crate) fn from_code(c: i64) -> Option<Self> {
        Some(match c {
            0 => Self::Nearest,
            1 => Self::Remainder,
            2 => Self::Kahan,
            3 => Self::Stochastic,
            _ => return None,
        })
    }

    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::Nearest => "nearest",
            Self::Remainder => "remainder",
            Self::Kahan => "kahan",
            Self::Stochastic => "stochastic",
        }
    }
}

/// What the store of one variable's step needs: its mode and, for stochastic rounding, the
/// stream word of (seed, key, t) ([`stream`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Store {
    pub mode: Mode,
    pub stream: u64,
}

impl Store {
    pub(crate) const NEAREST: Store = Store { mode: Mode::Nearest, stream: 0 };
}

// ---------------------------------------------------------------------------------------------
// Counter-based hash (stochastic rounding)

/// SplitMix64's output mix (Steele, Lea and Flood 2014, *Fast splittable pseudorandom number
/// generators*; Stafford's "Mix13" constants), a bijection of u64 with full avalanche.
#[inline(always)]
pub(crate) fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Chris Wellons' `lowbias32` (hash-prospector, 2018): a 32-bit bijection with low bias; two
/// 32-bit multiplies, so it vectorizes (AVX2 `vpmulld`) in the CPU loop.
#[inline(always)]
pub(crate) fn lowbias32(mut x: u32) -> u32 {
    x ^= x >> 16;
    x = x.wrapping_mul(0x7feb_352d);
    x ^= x >> 15;
    x = x.wrapping_mul(0x846c_a68b);
    x ^ (x >> 16)
}

/// The stream word of one variable's step: `mix64(mix64(mix64(seed) ^ key) ^ t)`, computed on
/// the host once per variable and step (the kernels get it in `Entry::key`).
pub(crate) fn stream(seed: u64, key: u64, t: u64) -> u64 {
    mix64(mix64(mix64(seed) ^ key) ^ t)
}

/// The word of the 2^32-element segment `i >> 32` of a stream: hoisted out of the element loop
/// (a CPU block or a CUDA block never spans two segments).
#[inline(always)]
pub(crate) fn segment_word(stream: u64, i: u64) -> u64 {
    mix64(stream ^ (i >> 32))
}

/// 32 uniform random bits for element `i` of the segment whose word is `w`:
/// `lowbias32(lo32(i) + lo32(w)) ^ hi32(w)`.
#[cfg_attr(not(test), allow(dead_code))] // the loops inline it with the index split (base + i)
#[inline(always)]
pub(crate) fn element_bits(w: u64, i: u64) -> u32 {
    lowbias32((i as u32).wrapping_add(w as u32)) ^ (w >> 32) as u32
}

/// The key of a variable's stream, from its name (FNV-1a 64): stable across processes. Saved
/// with the state and restored from it (so a positional optimizer whose variables come back in
/// another order keeps each variable's stream).
pub(crate) fn key_of(name: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in name.bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

// ---------------------------------------------------------------------------------------------
// Per-element rounding (the kernels' `param_load` / `param_store` do the same)

/// The f32 value of a bf16 parameter and its remainder.
#[inline(always)]
pub(crate) fn join(hi: u16, lo: u16) -> f32 {
    f32::from_bits((hi as u32) << 16 | lo as u32)
}

/// Stochastic rounding of `x` to bf16 bits with random bits `r` (only the low 16 are used).
#[inline(always)]
pub(crate) fn sr_bf16(x: f32, r: u32) -> u16 {
    let b = x.to_bits();
    // Sign-magnitude bits: adding r < 2^16 rounds the magnitude up with probability low / 2^16.
    let rounded = ((b + (r & 0xffff)) >> 16) as u16;
    // inf stays inf; a NaN stays a NaN (quiet bit set: its payload may be in the low half).
    let kept = (b >> 16) as u16 | if b & 0x007f_ffff != 0 { 0x0040 } else { 0 };
    if b & 0x7f80_0000 == 0x7f80_0000 {
        kept
    } else {
        rounded
    } // branch-free selects: the loop vectorizes
}

/// `x` rounded to nearest even bf16 bits, branch-free (the same bits as `bf16::from_f32`: a NaN
/// keeps its upper half with the quiet bit set).
#[inline(always)]
pub(crate) fn rne_bf16(x: f32) -> u16 {
    let b = x.to_bits();
    let rounded = (b.wrapping_add(0x7fff + ((b >> 16) & 1)) >> 16) as u16;
    let nan = (b >> 16) as u16 | 0x0040;
    if b & 0x7fff_ffff > 0x7f80_0000 {
        nan
    } else {
        rounded
    }
}

/// Stochastic rounding of `x` to f16 bits with random bits `r` (the upper 24 are used).
#[cfg_attr(not(test), allow(dead_code))]
#[inline(always)]
pub(crate) fn sr_f16(x: f32, r: u32) -> u16 {
    let a = x.abs();
    let h = f16::from_f32(a); // nearest
    let hv = h.to_f32();
    let mag = if hv == a || a.is_nan() {
        h.to_bits()
    } else {
        let (lo, hi) = if hv < a {
            (h.to_bits(), h.to_bits() + 1)
        } else {
            (h.to_bits() - 1, h.to_bits()) // hv > a >= 0: h is not +0
        };
        let (lv, uv) = (f16::from_bits(lo).to_f32(), f16::from_bits(hi).to_f32());
        // Probability of rounding up: (a - lv) / (uv - lv); 0 when uv is infinite (saturate).
        let frac = (a - lv) / (uv - lv);
        let u = (r >> 8) as f32 * (1.0 / 16_777_216.0);
        if u < frac {
            hi
        } else {
            lo
        }
    };
    mag | ((x.to_bits() >> 16) as u16 & 0x8000)
}

/// A half type the param side handles.
pub(crate) trait Half: Copy + Send + Sync + 'static {
    fn to_bits(self) -> u16;
    fn from_bits(b: u16) -> Self;
    /// Exact widening of a block to f32 (`out.len() >= x.len()`).
    fn to_f32_block(x: &[Self], out: &mut [f32]);
    /// Round to nearest even of a block (`x.len() >= p.len()`).
    fn nearest_block(p: &mut [Self], x: &[f32]);
    /// The Kahan store of a block (`n = p.len() <= BLOCK`): `c` (the buffer, param-dtype bits),
    /// `x` the rule's results, `old` its inputs; `y = c + (x - old)`, `p' = rn(old + y)`,
    /// `c' = rn(y - (p' - old))`, all in f32.
    fn kahan_block(p: &mut [Self], c: &mut [u16], x: &[f32], old: &[f32]);
    /// Stochastic rounding ([`sr_bf16`] / [`sr_f16`], the element-wise definitions) of a block
    /// with the random bits `lowbias32(base + i) ^ hi` of element `i` ([`element_bits`]) (`x.len() == r.len() == p.len() <= BLOCK`), written so
    /// that it vectorizes; the same bits as the element-wise function.
    fn stochastic_block(p: &mut [Self], x: &[f32], base: u32, hi: u32);
}

impl Half for bf16 {
    #[inline(always)]
    fn to_bits(self) -> u16 {
        bf16::to_bits(self)
    }
    #[inline(always)]
    fn from_bits(b: u16) -> Self {
        bf16::from_bits(b)
    }
    #[inline(always)]
    fn stochastic_block(p: &mut [Self], x: &[f32], base: u32, hi: u32) {
        let n = p.len();
        let x = &x[..n];
        for i in 0..n {
            let r = lowbias32(base.wrapping_add(i as u32)) ^ hi;
            p[i] = bf16::from_bits(sr_bf16(x[i], r));
        }
    }
    /// A shift (as CUDA's `__bfloat162float`), so it vectorizes.
    #[inline(always)]
    fn to_f32_block(x: &[Self], out: &mut [f32]) {
        let out = &mut out[..x.len()];
        for i in 0..x.len() {
            out[i] = f32::from_bits((x[i].to_bits() as u32) << 16);
        }
    }
    /// [`rne_bf16`]: branch-free, so it vectorizes (the same bits as half's conversion).
    #[inline(always)]
    fn nearest_block(p: &mut [Self], x: &[f32]) {
        let n = p.len();
        let x = &x[..n];
        for i in 0..n {
            p[i] = bf16::from_bits(rne_bf16(x[i]));
        }
    }
    /// One fused, branch-free loop (bf16 <-> f32 conversions are shifts and a rounding add).
    #[inline(always)]
    fn kahan_block(p: &mut [Self], c: &mut [u16], x: &[f32], old: &[f32]) {
        let n = p.len();
        let (c, x, old) = (&mut c[..n], &x[..n], &old[..n]);
        for i in 0..n {
            let y = f32::from_bits((c[i] as u32) << 16) + (x[i] - old[i]);
            let pn = rne_bf16(old[i] + y);
            let cn = rne_bf16(y - (f32::from_bits((pn as u32) << 16) - old[i]));
            p[i] = bf16::from_bits(pn);
            c[i] = cn;
        }
    }
}

impl Half for f16 {
    #[inline(always)]
    fn to_bits(self) -> u16 {
        f16::to_bits(self)
    }
    #[inline(always)]
    fn from_bits(b: u16) -> Self {
        f16::from_bits(b)
    }
    /// [`sr_f16`] with its conversions done in bulk (F16C where the CPU has it).
    #[inline(always)]
    fn stochastic_block(p: &mut [Self], x: &[f32], base: u32, top: u32) {
        let n = p.len();
        let x = &x[..n];
        let mut a = [0f32; BLOCK];
        let mut h = [f16::ZERO; BLOCK];
        let mut hv = [0f32; BLOCK];
        let mut lo = [0u16; BLOCK];
        let mut hi = [0u16; BLOCK];
        let mut lv = [0f32; BLOCK];
        let mut uv = [0f32; BLOCK];
        for i in 0..n {
            a[i] = x[i].abs();
        }
        h[..n].convert_from_f32_slice(&a[..n]); // nearest
        h[..n].convert_to_f32_slice(&mut hv[..n]);
        for i in 0..n {
            let hb = h[i].to_bits();
            let below = hv[i] < a[i];
            lo[i] = if below { hb } else { hb.wrapping_sub(1) };
            hi[i] = if below { hb.wrapping_add(1) } else { hb };
        }
        as_halves_mut::<f16>(&mut lo[..n]).convert_to_f32_slice(&mut lv[..n]);
        as_halves_mut::<f16>(&mut hi[..n]).convert_to_f32_slice(&mut uv[..n]);
        for i in 0..n {
            let frac = (a[i] - lv[i]) / (uv[i] - lv[i]);
            let r = lowbias32(base.wrapping_add(i as u32)) ^ top;
            let u = (r >> 8) as f32 * (1.0 / 16_777_216.0);
            let pick = if u < frac { hi[i] } else { lo[i] };
            let exact = hv[i] == a[i] || a[i].is_nan();
            let mag = if exact { h[i].to_bits() } else { pick };
            p[i] = f16::from_bits(mag | ((x[i].to_bits() >> 16) as u16 & 0x8000));
        }
    }
    /// half's bulk conversion (F16C where the CPU has it).
    #[inline(always)]
    fn to_f32_block(x: &[Self], out: &mut [f32]) {
        x.convert_to_f32_slice(&mut out[..x.len()]);
    }
    /// half's bulk conversion (F16C where the CPU has it).
    #[inline(always)]
    fn nearest_block(p: &mut [Self], x: &[f32]) {
        let n = p.len();
        p.convert_from_f32_slice(&x[..n]);
    }
    /// Bulk conversions (F16C where the CPU has it) around the f32 arithmetic.
    #[inline(always)]
    fn kahan_block(p: &mut [Self], c: &mut [u16], x: &[f32], old: &[f32]) {
        let n = p.len();
        let (x, old) = (&x[..n], &old[..n]);
        let mut y = [0f32; BLOCK];
        let mut s = [0f32; BLOCK];
        let mut cf = [0f32; BLOCK];
        let c = as_halves_mut::<f16>(&mut c[..n]);
        c.convert_to_f32_slice(&mut cf[..n]);
        for i in 0..n {
            y[i] = cf[i] + (x[i] - old[i]);
            s[i] = old[i] + y[i];
        }
        p.convert_from_f32_slice(&s[..n]); // p' = round(p + y)
        p.convert_to_f32_slice(&mut s[..n]); // p' in f32 (exact)
        for i in 0..n {
            cf[i] = y[i] - (s[i] - old[i]); // c' before rounding
        }
        c.convert_from_f32_slice(&cf[..n]);
    }
}

/// Elements of one block (the caller's stack buffers hold this many f32).
pub(crate) const BLOCK: usize = 256;

/// The buffer of the `n` elements from `lo` of a param whose buffer is `aux` (empty when its
/// mode has none: then empty too).
#[inline(always)]
pub(crate) fn aux_range(aux: &mut [u16], lo: usize, n: usize) -> &mut [u16] {
    let len = aux.len();
    let lo = lo.min(len);
    &mut aux[lo..(lo + n).min(len)]
}

/// `aux` cut in `chunks` pieces of `chunk` elements, one per rayon task of a param of that many
/// chunks (empty pieces when `aux` is empty: its mode has no buffer).
pub(crate) fn aux_chunks(aux: &mut [u16], chunks: usize, chunk: usize) -> Vec<&mut [u16]> {
    if aux.is_empty() {
        (0..chunks).map(|_| <&mut [u16]>::default()).collect()
    } else {
        aux.chunks_mut(chunk).collect()
    }
}

/// Loads a block of half params to f32 in `out[..p.len()]`: with [`Mode::Remainder`] the f32
/// master value rebuilt from `aux` (the low halves), else the param's value (exact).
#[inline(always)]
pub(crate) fn load_block<H: Half>(p: &[H], aux: &[u16], mode: Mode, out: &mut [f32])
where
    [H]: HalfFloatSliceExt,
{
    let n = p.len();
    if mode == Mode::Remainder {
        let (aux, out) = (&aux[..n], &mut out[..n]);
        for i in 0..n {
            out[i] = join(p[i].to_bits(), aux[i]);
        }
    } else {
        H::to_f32_block(p, out);
    }
}

/// Stores the f32 block `x` (the rule's result for the loaded `old`) back into the half params
/// `p` and their buffer `aux` (empty for modes without one) under `st`; `first` is the index of
/// `p[0]` in its variable (the stochastic-rounding counter). `n <= BLOCK`.
#[inline(always)]
pub(crate) fn store_block<H: Half>(
    p: &mut [H],
    aux: &mut [u16],
    x: &[f32],
    old: &[f32],
    st: &Store,
    first: u64,
) where
    [H]: HalfFloatSliceExt,
{
    let n = p.len();
    let x = &x[..n];
    match st.mode {
        Mode::Nearest => H::nearest_block(p, x),
        Mode::Remainder => {
            let aux = &mut aux[..n];
            for i in 0..n {
                let b = x[i].to_bits();
                p[i] = H::from_bits((b >> 16) as u16);
                aux[i] = b as u16;
            }
        }
        Mode::Kahan => H::kahan_block(p, &mut aux[..n], x, &old[..n]),
        Mode::Stochastic => {
            let w = segment_word(st.stream, first);
            // element_bits(w, first + i) = lowbias32(lo32(first + i) + lo32(w)) ^ hi32(w)
            let base = (first as u32).wrapping_add(w as u32);
            H::stochastic_block(p, x, base, (w >> 32) as u32);
        }
    }
}

/// A u16 buffer of param-dtype bits as a slice of that half type.
#[inline(always)]
fn as_halves_mut<H: Half>(x: &mut [u16]) -> &mut [H] {
    // SAFETY: `bf16` and `f16` are `repr(transparent)` over `u16` (same size, alignment and
    // validity: every bit pattern is a value), and `Half` is implemented for those two only.
    unsafe { std::slice::from_raw_parts_mut(x.as_mut_ptr().cast::<H>(), x.len()) }
}

// ---------------------------------------------------------------------------------------------
// The per-variable buffer

/// One variable's u16 buffer (the remainder, or the Kahan compensation as param-dtype bits), on
/// the variable's device; `None` for modes without one.
pub(crate) enum Aux {
    None,
    Cpu(Vec<u16>),
    #[cfg(feature = "cuda")]
    Cuda(cudarc::driver::CudaSlice<u16>, candle_core::CudaDevice),
}

impl Aux {
    /// The buffer `mode` needs for `param` (zeros), or `None`.
    pub(crate) fn zeros(param: &candle_core::Tensor, mode: Mode) -> Result<Self> {
        if !mode.has_aux() {
            return Ok(Self::None);
        }
        Self::from_vec(param, vec![0; param.elem_count()])
    }

    /// A buffer for `param` holding `x` (`param.elem_count()` long), on `param`'s device.
    pub(crate) fn from_vec(param: &candle_core::Tensor, x: Vec<u16>) -> Result<Self> {
        if x.len() != param.elem_count() {
            bail!("RAdam: a rounding buffer of {} for {} elements", x.len(), param.elem_count());
        }
        match param.device() {
            candle_core::Device::Cpu => Ok(Self::Cpu(x)),
            #[cfg(feature = "cuda")]
            candle_core::Device::Cuda(d) => {
                if x.is_empty() {
                    return Ok(Self::Cpu(x)); // nothing to allocate (nor to launch) for it
                }
                Ok(Self::Cuda(d.clone_htod(&x)?, d.clone()))
            }
            #[allow(unreachable_patterns)]
            other => bail!("RAdam: device {other:?} is not supported (CPU and CUDA are)"),
        }
    }

    /// The buffer's contents (empty for `None`).
    pub(crate) fn to_vec(&self) -> Result<Vec<u16>> {
        Ok(match self {
            Self::None => Vec::new(),
            Self::Cpu(x) => x.clone(),
            #[cfg(feature = "cuda")]
            Self::Cuda(s, d) => d.clone_dtoh(s)?,
        })
    }

    /// Bytes of the buffer (2 per element; 0 for `None`).
    pub(crate) fn bytes(&self) -> usize {
        2 * match self {
            Self::None => 0,
            Self::Cpu(x) => x.len(),
            #[cfg(feature = "cuda")]
            Self::Cuda(s, _) => s.len(),
        }
    }

    /// The CPU buffer (empty when there is none).
    pub(crate) fn cpu_slice(&mut self) -> &mut [u16] {
        match self {
            Self::Cpu(x) => x,
            _ => &mut [],
        }
    }
}

/// The f32 value of f16 / bf16 bits (`dtype` F16 or BF16).
fn half_value(dtype: DType, b: u16) -> f32 {
    match dtype {
        DType::BF16 => f32::from_bits((b as u32) << 16),
        _ => f16::from_bits(b).to_f32(),
    }
}

/// `x` rounded to nearest even f16 / bf16 bits.
fn half_nearest(dtype: DType, x: f32) -> u16 {
    match dtype {
        DType::BF16 => rne_bf16(x),
        _ => f16::from_f32(x).to_bits(),
    }
}

/// The f32 values of a half parameter's bits under its buffer: the joined master value
/// ([`Mode::Remainder`]), `p + c` ([`Mode::Kahan`]), else `p`.
pub(crate) fn master_values(dtype: DType, p: &[u16], aux: &[u16], mode: Mode) -> Vec<f32> {
    match mode {
        Mode::Remainder => p.iter().zip(aux).map(|(&h, &l)| join(h, l)).collect(),
        Mode::Kahan => {
            p.iter().zip(aux).map(|(&h, &c)| half_value(dtype, h) + half_value(dtype, c)).collect()
        }
        _ => p.iter().map(|&h| half_value(dtype, h)).collect(),
    }
}

/// Splits f32 master values into half param bits and buffer under `mode`: the upper / lower
/// halves ([`Mode::Remainder`]); the nearest half and the rounded rest ([`Mode::Kahan`]); the
/// nearest half and no buffer (the others).
pub(crate) fn split_values(dtype: DType, x: &[f32], mode: Mode) -> (Vec<u16>, Vec<u16>) {
    match mode {
        Mode::Remainder => {
            x.iter().map(|v| ((v.to_bits() >> 16) as u16, v.to_bits() as u16)).unzip()
        }
        Mode::Kahan => x
            .iter()
            .map(|&v| {
                let p = half_nearest(dtype, v);
                (p, half_nearest(dtype, v - half_value(dtype, p)))
            })
            .unzip(),
        _ => (x.iter().map(|&v| half_nearest(dtype, v)).collect(), Vec::new()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mix64_is_splitmix64() {
        // SplitMix64 seeded with 0: first output mix64(0x9e3779b97f4a7c15).
        assert_eq!(mix64(0x9e37_79b9_7f4a_7c15), 0xe220_a839_7b1d_cdaf);
    }

    /// The hash pinned to constants computed independently (scripts/hash_constants.py, plain
    /// Python integers), for indices below and above 2^32 (a `segment_word` that ignored
    /// `i >> 32` would give the segment-0 word for all of them). kernels/emu/radam_emu.cpp pins
    /// the kernel's functions to the same constants.
    #[test]
    fn hash_constants_for_a_large_index() {
        let s = stream(3, 0x1234_5678_9abc_def0, 17);
        assert_eq!(s, 0x398c_59b3_9bee_2329);
        let cases: [(u64, u64, u32); 4] = [
            (0, 0x380f_6071_06be_9261, 0x78e3_bd82),
            (5, 0x380f_6071_06be_9261, 0x34d0_3b8d),
            ((1 << 32) + 5, 0x6755_8e0f_0890_6138, 0x67fe_c56b),
            ((3 << 32) + 0xffff_fff0, 0xf4d5_26f9_d750_b1e5, 0x6ef2_5772),
        ];
        for (i, w, r) in cases {
            assert_eq!(segment_word(s, i), w, "segment_word {i:#x}");
            assert_eq!(element_bits(w, i), r, "element_bits {i:#x}");
        }
    }

    /// The vectorizable block functions give the element-wise definition's bits, on edge values
    /// (zeros, subnormals, the largest finite, beyond it, inf, NaN, exact halves) and random ones.
    #[test]
    fn stochastic_blocks_equal_the_element_definition() {
        let mut xs = vec![
            0.0f32,
            -0.0,
            1e-8,
            -3e-7,
            6.0e-5,
            65504.0,
            65510.0,
            65520.0,
            1e6,
            3.4e38,
            f32::MAX,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::NAN,
            f32::from_bits(0x7f80_0001),
            1.0,
            0.999,
            -0.999,
        ];
        let mut h = 12345u32;
        while xs.len() < BLOCK {
            h = lowbias32(h);
            xs.push(f32::from_bits(h) % 70000.0);
        }
        for seed in 0..20u64 {
            let w = segment_word(stream(seed, 3, 4), 0);
            let r: Vec<u32> = (0..BLOCK as u64).map(|i| element_bits(w, i)).collect();
            let mut pb = [bf16::ZERO; BLOCK];
            bf16::stochastic_block(&mut pb, &xs, w as u32, (w >> 32) as u32);
            let mut ph = [f16::ZERO; BLOCK];
            f16::stochastic_block(&mut ph, &xs, w as u32, (w >> 32) as u32);
            for i in 0..BLOCK {
                assert_eq!(pb[i].to_bits(), sr_bf16(xs[i], r[i]), "bf16 {}", xs[i]);
                assert_eq!(ph[i].to_bits(), sr_f16(xs[i], r[i]), "f16 {}", xs[i]);
                assert_eq!(rne_bf16(xs[i]), bf16::from_f32(xs[i]).to_bits(), "rne {}", xs[i]);
                let (b, hf) = (pb[i].to_f32(), ph[i].to_f32());
                if xs[i].is_nan() {
                    assert!(b.is_nan() && hf.is_nan());
                } else if xs[i].abs() <= 65504.0 {
                    // One of the two neighbours (or the value itself when exact).
                    assert!((hf as f64 - xs[i] as f64).abs() <= xs[i].abs() as f64 / 1024.0 + 6e-8);
                }
            }
        }
    }
}
