//! Where the optimizer keeps `m` and `v` for one variable: plain buffers on the variable's device,
//! in the moment dtype (the param's dtype for f32/f64, f32 for f16/bf16).

use candle_core::{bail, DType, Device, Tensor};

use crate::cpu::CpuMoments;
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
    #[cfg(feature = "cuda")]
    Cuda(CudaMoments),
}

impl Moments {
    /// Zero moments for `param`, on its device.
    pub(crate) fn zeros(param: &Tensor) -> candle_core::Result<Self> {
        let dtype = moment_dtype(param.dtype())?;
        match param.device() {
            Device::Cpu => Ok(Self::Cpu(CpuMoments::zeros(param.elem_count(), dtype))),
            #[cfg(feature = "cuda")]
            Device::Cuda(_) => Ok(Self::Cuda(CudaMoments::zeros(param)?)),
            other => bail!("RAdam: device {other:?} is not supported (CPU and CUDA are)"),
        }
    }

    /// The moments as CPU tensors shaped like `param`, for saving.
    pub(crate) fn to_tensors(&self, param: &Tensor) -> candle_core::Result<(Tensor, Tensor)> {
        let (m, v) = match self {
            Self::Cpu(c) => c.to_tensors()?,
            #[cfg(feature = "cuda")]
            Self::Cuda(c) => c.to_tensors()?,
        };
        Ok((m.reshape(param.shape())?, v.reshape(param.shape())?))
    }

    /// Moments for `param` from CPU tensors already checked to have the right shape and dtype.
    pub(crate) fn from_tensors(
        param: &Tensor,
        m: &Tensor,
        v: &Tensor,
    ) -> candle_core::Result<Self> {
        let (m, v) = (m.flatten_all()?, v.flatten_all()?);
        match param.device() {
            Device::Cpu => Ok(Self::Cpu(CpuMoments::from_tensors(&m, &v)?)),
            #[cfg(feature = "cuda")]
            Device::Cuda(_) => Ok(Self::Cuda(CudaMoments::from_tensors(param, &m, &v)?)),
            other => bail!("RAdam: device {other:?} is not supported (CPU and CUDA are)"),
        }
    }
}
