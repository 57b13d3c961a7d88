//! Where the optimizer keeps `m` and `v` for one variable: plain buffers on the variable's device,
//! in the moment dtype (the param's dtype for f32/f64, f32 for f16/bf16).

use candle_core::{bail, DType, Device, Tensor};

use crate::cpu::CpuMoments;
use crate::cpu8::Moments8;
#[cfg(feature = "cuda")]
use crate::cuda::CudaMoments;

/// The dtype the moments of a `param_dtype` variable are kept in.
pub fn moment_dtype(param_dtype: DType) -> candle_core::Result<DType> {
    match param_dtype {
        DType::F32 | DType::F16 | DType::BF16 => Ok(DType::F32),
        DType::F64 => Ok(DType::F64),
        other => bail!("RAdam: only floating point variables can be optimized, got {other:?}"),
    }
}

pub(crate) enum Moments {
    Cpu(CpuMoments),
    /// 8-bit state on the CPU ([`crate::StateFormat::Blockwise8`]).
    Cpu8(Moments8),
    #[cfg(feature = "cuda")]
    Cuda(CudaMoments),
}

impl Moments {
    /// Zero moments for `param`, on its device: 8-bit when `eight` (f32 / f16 / bf16 only).
    pub(crate) fn zeros(param: &Tensor, eight: bool) -> candle_core::Result<Self> {
        let dtype = moment_dtype(param.dtype())?;
        if eight {
            check_8bit_dtype(param.dtype())?;
        }
        match param.device() {
            Device::Cpu if eight => Ok(Self::Cpu8(Moments8::zeros(param.elem_count()))),
            Device::Cpu => Ok(Self::Cpu(CpuMoments::zeros(param.elem_count(), dtype))),
            #[cfg(feature = "cuda")]
            Device::Cuda(_) => Ok(Self::Cuda(CudaMoments::zeros(param, eight)?)),
            other => bail!("RAdam: device {other:?} is not supported (CPU and CUDA are)"),
        }
    }

    /// Whether these are 8-bit moments.
    pub(crate) fn is_8bit(&self) -> bool {
        match self {
            Self::Cpu(_) => false,
            Self::Cpu8(_) => true,
            #[cfg(feature = "cuda")]
            Self::Cuda(c) => c.is_8bit(),
        }
    }

    /// Bytes of memory these moments take (codes and absmax for 8-bit ones).
    pub(crate) fn bytes(&self) -> usize {
        match self {
            Self::Cpu(CpuMoments::F32 { m, v }) => 4 * (m.len() + v.len()),
            Self::Cpu(CpuMoments::F64 { m, v }) => 8 * (m.len() + v.len()),
            Self::Cpu8(q) => q.bytes(),
            #[cfg(feature = "cuda")]
            Self::Cuda(c) => c.bytes(),
        }
    }

    /// The codes and absmax of 8-bit moments (on the host), `None` for full ones.
    pub(crate) fn to_8bit(&self) -> candle_core::Result<Option<Moments8>> {
        match self {
            Self::Cpu(_) => Ok(None),
            Self::Cpu8(q) => Ok(Some(q.clone())),
            #[cfg(feature = "cuda")]
            Self::Cuda(c) => c.to_8bit(),
        }
    }

    /// Moments for `param` from host 8-bit moments of its size: kept 8-bit when `eight`, else
    /// dequantized to f32.
    pub(crate) fn from_8bit(param: &Tensor, q: Moments8, eight: bool) -> candle_core::Result<Self> {
        if q.len() != param.elem_count() {
            bail!(
                "RAdam: 8-bit moments of {} elements for a variable of {}",
                q.len(),
                param.elem_count()
            );
        }
        if !eight {
            let (m, v) = q.to_f32();
            let dev = Device::Cpu;
            let (m, v) = (Tensor::new(m, &dev)?, Tensor::new(v, &dev)?);
            return Self::from_tensors(param, &m, &v, false);
        }
        check_8bit_dtype(param.dtype())?;
        match param.device() {
            Device::Cpu => Ok(Self::Cpu8(q)),
            #[cfg(feature = "cuda")]
            Device::Cuda(_) => Ok(Self::Cuda(CudaMoments::from_8bit(param, &q)?)),
            other => bail!("RAdam: device {other:?} is not supported (CPU and CUDA are)"),
        }
    }

    /// These moments in the other format (8-bit when `eight`), or `None` when they already are.
    pub(crate) fn converted(
        &self,
        param: &Tensor,
        eight: bool,
    ) -> candle_core::Result<Option<Self>> {
        if self.is_8bit() == eight {
            return Ok(None);
        }
        if let Some(q) = self.to_8bit()? {
            return Self::from_8bit(param, q, false).map(Some);
        }
        let (m, v) = self.to_tensors(param)?;
        Self::from_tensors(param, &m, &v, true).map(Some)
    }

    /// The moments as CPU tensors shaped like `param`, for saving (8-bit ones dequantized to
    /// f32).
    pub(crate) fn to_tensors(&self, param: &Tensor) -> candle_core::Result<(Tensor, Tensor)> {
        let (m, v) = match self {
            Self::Cpu(c) => c.to_tensors()?,
            Self::Cpu8(q) => {
                let (m, v) = q.to_f32();
                (Tensor::new(m, &Device::Cpu)?, Tensor::new(v, &Device::Cpu)?)
            }
            #[cfg(feature = "cuda")]
            Self::Cuda(c) => c.to_tensors()?,
        };
        Ok((m.reshape(param.shape())?, v.reshape(param.shape())?))
    }

    /// Moments for `param` from CPU tensors already checked to have the right shape and dtype
    /// (the moment dtype), quantized to 8-bit when `eight`.
    pub(crate) fn from_tensors(
        param: &Tensor,
        m: &Tensor,
        v: &Tensor,
        eight: bool,
    ) -> candle_core::Result<Self> {
        let (m, v) = (m.flatten_all()?, v.flatten_all()?);
        if eight {
            let q = Moments8::from_f32(&m.to_vec1::<f32>()?, &v.to_vec1::<f32>()?);
            return Self::from_8bit(param, q, true);
        }
        match param.device() {
            Device::Cpu => Ok(Self::Cpu(CpuMoments::from_tensors(&m, &v)?)),
            #[cfg(feature = "cuda")]
            Device::Cuda(_) => Ok(Self::Cuda(CudaMoments::from_tensors(param, &m, &v)?)),
            other => bail!("RAdam: device {other:?} is not supported (CPU and CUDA are)"),
        }
    }
}

/// Errors unless a `dtype` variable can have 8-bit moments (f32, f16, bf16).
pub(crate) fn check_8bit_dtype(dtype: DType) -> candle_core::Result<()> {
    match dtype {
        DType::F32 | DType::F16 | DType::BF16 => Ok(()),
        other => bail!(
            "RAdam: 8-bit state (StateFormat::Blockwise8) supports f32, f16 and bf16 variables, not \
             {other:?}; give this variable full state (a ParamGroup with \
             .state_format(StateFormat::Full))"
        ),
    }
}

/// One step for one CPU variable, full or 8-bit moments, its param stored under `st` with its
/// buffer `aux` (empty when the mode has none).
pub(crate) fn cpu_step(
    param: &Tensor,
    grad: &Tensor,
    moments: &mut Moments,
    k: &crate::rule::StepScalars,
    aux: &mut [u16],
    st: crate::precision::Store,
) -> candle_core::Result<()> {
    match moments {
        Moments::Cpu(m) => crate::cpu::step(param, grad, m, k, aux, st),
        Moments::Cpu8(q) => crate::cpu8::step(param, grad, q, k, aux, st),
        #[cfg(feature = "cuda")]
        Moments::Cuda(_) => bail!("RAdam: CUDA moments in the CPU step"),
    }
}
