//! Helpers shared by the integration tests.
#![allow(dead_code)]

pub mod cases;

use candle_core::{DType, Device, Result, Tensor};

/// f32 values in `[-scale, scale] + offset` from a 32-bit integer hash, computed with f32
/// operations only so that `tests/golden/gen_golden.py` (numpy) produces the same bits.
pub fn hash_values(n: usize, seed: u64, t: u64, scale: f32, offset: f32) -> Vec<f32> {
    let base = ((t * 40503 + seed * 97) & 0xFFFF_FFFF) as u32;
    (0..n as u64)
        .map(|i| {
            let mut h = (i.wrapping_mul(2654435761) as u32).wrapping_add(base);
            h ^= h >> 15;
            h = h.wrapping_mul(0x2C1B_3C6D);
            h ^= h >> 12;
            h = h.wrapping_mul(0x297A_2D39);
            h ^= h >> 15;
            let k = (h % 20001) as f32;
            (k - 10000.0) / 10000.0 * scale + offset
        })
        .collect()
}

/// `hash_values` as a tensor of `dtype` (rounded to nearest even from f32).
pub fn hash_tensor(
    n: usize,
    seed: u64,
    t: u64,
    dtype: DType,
    scale: f32,
    offset: f32,
    dev: &Device,
) -> Result<Tensor> {
    Tensor::from_vec(hash_values(n, seed, t, scale, offset), n, dev)?.to_dtype(dtype)
}

/// Elementwise `|a - b| <= rtol * |b| + atol`, in f64; returns the worst relative excess
/// (`<= 1` passes) and its index.
pub fn worst(a: &Tensor, b: &Tensor, rtol: f64, atol: f64) -> Result<(f64, usize)> {
    let a = a.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?;
    let b = b.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?;
    assert_eq!(a.len(), b.len());
    let mut w = (0.0, 0);
    for (i, (x, y)) in a.iter().zip(&b).enumerate() {
        let r = (x - y).abs() / (rtol * y.abs() + atol);
        let r = if r.is_nan() { f64::INFINITY } else { r };
        if r > w.0 {
            w = (r, i);
        }
    }
    Ok(w)
}

/// Largest distance in units in the last place between two f16 or bf16 tensors.
pub fn max_ulps(a: &Tensor, b: &Tensor) -> Result<u32> {
    fn ordered(bits: u16) -> i32 {
        // Map sign-magnitude to a monotonic integer line.
        if bits & 0x8000 != 0 {
            -((bits & 0x7fff) as i32)
        } else {
            bits as i32
        }
    }
    let bits = |t: &Tensor| -> Result<Vec<u16>> {
        Ok(match t.dtype() {
            DType::F16 => {
                t.flatten_all()?.to_vec1::<half::f16>()?.iter().map(|x| x.to_bits()).collect()
            }
            DType::BF16 => {
                t.flatten_all()?.to_vec1::<half::bf16>()?.iter().map(|x| x.to_bits()).collect()
            }
            d => panic!("max_ulps on {d:?}"),
        })
    };
    let (a, b) = (bits(a)?, bits(b)?);
    assert_eq!(a.len(), b.len());
    Ok(a.iter().zip(&b).map(|(&x, &y)| (ordered(x) - ordered(y)).unsigned_abs()).max().unwrap_or(0))
}

/// Bit patterns of a tensor (f32, f64, f16, bf16 or i64), to assert "nothing changed" or
/// "bit-identical" exactly.
pub fn bits(t: &Tensor) -> Vec<u64> {
    let t = t.flatten_all().unwrap();
    match t.dtype() {
        DType::F32 => t.to_vec1::<f32>().unwrap().iter().map(|x| x.to_bits() as u64).collect(),
        DType::F64 => t.to_vec1::<f64>().unwrap().iter().map(|x| x.to_bits()).collect(),
        DType::F16 => {
            t.to_vec1::<half::f16>().unwrap().iter().map(|x| x.to_bits() as u64).collect()
        }
        DType::BF16 => {
            t.to_vec1::<half::bf16>().unwrap().iter().map(|x| x.to_bits() as u64).collect()
        }
        DType::I64 => t.to_vec1::<i64>().unwrap().iter().map(|x| *x as u64).collect(),
        d => panic!("{d:?}"),
    }
}

/// The dtype named as in the golden JSON files (`f32`, `f64`, `f16`, `bf16`).
pub fn dtype(s: &str) -> DType {
    match s {
        "f32" => DType::F32,
        "f64" => DType::F64,
        "f16" => DType::F16,
        "bf16" => DType::BF16,
        other => panic!("unknown dtype {other}"),
    }
}
