//! CUDA path: fused multi-tensor kernels from `kernels/radam.cu` (STUB — being written).

use candle_core::{bail, Result, Tensor};

use crate::rule::StepScalars;

/// `m` and `v` of one variable in device memory (moment dtype: f32, or f64 for f64 params).
pub(crate) struct CudaMoments {}

impl CudaMoments {
    /// Zero moments for `param` (a CUDA tensor), on its device.
    pub(crate) fn zeros(_param: &Tensor) -> Result<Self> {
        bail!("RAdam: the CUDA path is not implemented yet")
    }
    /// Moments for `param` from flat CPU tensors `m`, `v` (moment dtype, `param.elem_count()` long).
    pub(crate) fn from_tensors(_param: &Tensor, _m: &Tensor, _v: &Tensor) -> Result<Self> {
        bail!("RAdam: the CUDA path is not implemented yet")
    }
    /// The moments as flat CPU tensors.
    pub(crate) fn to_tensors(&self) -> Result<(Tensor, Tensor)> {
        bail!("RAdam: the CUDA path is not implemented yet")
    }
}

/// One variable of a step. Guaranteed by the caller: `param` and `grad` are on the same CUDA
/// device, same shape and dtype, both contiguous (possibly with a start offset), and they do not
/// share storage.
pub(crate) struct Item<'a> {
    pub param: &'a Tensor,
    pub grad: &'a Tensor,
    pub moments: &'a mut CudaMoments,
}

/// Index into `items` of the first one whose gradient holds a NaN or an infinity.
pub(crate) fn first_nonfinite(_items: &[Item<'_>]) -> Result<Option<usize>> {
    bail!("RAdam: the CUDA path is not implemented yet")
}

/// Applies one step to every item (all on one device) with the host-computed scalars.
pub(crate) fn step(_items: &mut [Item<'_>], _k: &StepScalars) -> Result<()> {
    bail!("RAdam: the CUDA path is not implemented yet")
}
