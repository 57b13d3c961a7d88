//! # candle-radam
//!
//! RAdam — Rectified Adam (Liu et al. 2019, *On the Variance of the Adaptive Learning Rate and
//! Beyond*, [arXiv:1908.03265](https://arxiv.org/abs/1908.03265)) — as a
//! [`candle_nn::Optimizer`], with one fused in-place pass per parameter: a vectorized,
//! multi-threaded loop on CPU and hand-written multi-tensor kernels on CUDA (feature `cuda`).
//! The numbers follow `torch.optim.RAdam` (tests pin them to it and to the original repository's
//! `radam.py`).
//!
//! ## The algorithm
//!
//! With learning rate `lr` (alpha), decay rates `beta1`, `beta2`, `eps`, weight decay `wd`, and
//! `rho_inf = 2 / (1 - beta2) - 1`, step `t = 1, 2, ...` of a variable (its own count, see
//! below) does, for every element `p` of it with gradient `g`:
//!
//! ```text
//! if wd != 0:  if decoupled: p = p * (1 - lr * wd)          (AdamW style; skipped on steps
//!                                                            that leave p unchanged, see below)
//!              else:         g = g + wd * p                 (L2)
//! m_t     = beta1 * m_{t-1} + (1 - beta1) * g               (first moment)
//! v_t     = beta2 * v_{t-1} + (1 - beta2) * g^2             (second moment)
//! m_hat   = m_t / (1 - beta1^t)                             (bias correction)
//! rho_t   = rho_inf - 2 t beta2^t / (1 - beta2^t)           (length of the approximated SMA)
//! if rho_t > 5:                                             (variance is tractable)
//!     r_t = sqrt( (rho_t - 4)(rho_t - 2) rho_inf / ((rho_inf - 4)(rho_inf - 2) rho_t) )
//!     p   = p - lr * m_hat * r_t * sqrt(1 - beta2^t) / (sqrt(v_t) + eps)
//!                                                           (0 when sqrt(v_t) + eps = 0)
//! else if degenerate_to_sgd:
//!     p   = p - lr * m_hat                                  (SGD with momentum)
//! else:
//!     p unchanged                                           (moments still updated)
//! ```
//!
//! As in torch and the original code, `eps` is added to the *uncorrected* `sqrt(v_t)`. With the
//! default `beta2 = 0.999`, `rho_t <= 5` for steps 1 to 5 and the rectified branch starts at step 6.
//!
//! Everything that depends only on `t` (bias corrections, `rho_t`, `r_t`, the branch) is computed
//! on the host in `f64` ([`StepScalars`]), once per distinct (parameter group, `t`) of a step; the
//! per-element work is the five lines documented in [`rule`], shared by the CPU loop and the CUDA
//! kernels. A zero first and second moment gives a zero step whatever `eps` and `lr` are (torch
//! computes `0 / 0` there when `eps = 0`).
//!
//! ## Per-variable steps and parameter groups
//!
//! As in torch (`state['step']`), every variable has its own step count `t`, advanced only on the
//! steps where it has a gradient and the step is not skipped ([`RAdam::var_step_count`]); a step
//! in which no variable has a gradient changes nothing, [`RAdam::step_count`] included. So a layer
//! unfrozen late, or a GAN half updated on alternate steps, starts at its own `t = 1`.
//!
//! [`ParamGroup`]s (torch's `param_groups`) give the variables they select (by name, glob or
//! predicate; the first matching group wins) their own `lr_scale` (a multiplier of the optimizer's
//! learning rate), betas, eps, weight decay and branch options; [`ParamGroup::no_decay`] is the
//! standard "no weight decay on biases and norms" recipe. See [`RAdam::with_groups`] and the
//! example below.
//!
//! Options beyond torch's ([`ParamsRAdam`]): `degenerate_to_sgd = false` (the original
//! repository's default); `rectify = false` (plain Adam / AdamW, torch semantics, the paper's
//! baseline); `v_only_steps` (the paper's Adam-2k ablation); and [`NonFinite`], what to do with
//! NaN / infinite gradients (by default an error that changes nothing).
//!
//! ## Clipping and loss scaling
//!
//! [`RAdam::set_max_grad_norm`] clips the gradients to a global L2 norm
//! (`torch.nn.utils.clip_grad_norm_` semantics, one norm for all parameter groups) and
//! [`RAdam::set_loss_scaler`] adds dynamic loss scaling for f16 training ([`LossScaler`],
//! `torch.amp.GradScaler` semantics). Both cost no extra pass: the norm is summed in the
//! non-finite guard's read of every gradient, and `clip coefficient / loss scale` is one scalar
//! the fused update multiplies every gradient by ([`clip`]). [`RAdam::last_grad_norm`] is the
//! unclipped, unscaled norm (fairseq's `gnorm`). A step with a NaN / inf gradient is skipped
//! and backs the scale off; `Optimizer::backward_step` multiplies the loss by the scale (or do it
//! yourself with [`RAdam::scale_loss`] before `backward`).
//!
//! ```
//! use candle_core::{DType, Device, Module, Tensor};
//! use candle_nn::{Optimizer, VarBuilder, VarMap};
//! use candle_radam::{LossScaler, ParamsRAdam, RAdam};
//!
//! # fn main() -> candle_core::Result<()> {
//! let dev = Device::Cpu;
//! let varmap = VarMap::new();
//! let vb = VarBuilder::from_varmap(&varmap, DType::F16, &dev); // f16 weights
//! let model = candle_nn::linear(8, 1, vb.pp("fc"))?;
//! let mut opt = RAdam::from_varmap(&varmap, ParamsRAdam { lr: 1e-2, ..Default::default() })?
//!     .with_max_grad_norm(1.0)?
//!     .with_loss_scaler(LossScaler::default())?; // 2^16, x2 every 2000 clean steps, x0.5 on inf
//! let x = Tensor::randn(0f32, 1., (64, 8), &dev)?.to_dtype(DType::F16)?;
//! let y = x.sum_keepdim(1)?;
//! for _ in 0..30 {
//!     let loss = model.forward(&x)?.sub(&y)?.sqr()?.mean_all()?.to_dtype(DType::F32)?;
//!     let grads = opt.scale_loss(&loss)?.backward()?; // loss * scale, in f32
//!     opt.step(&grads)?;  // unscale + clip + RAdam in one pass; skips (and backs off) on inf
//!     let _gnorm = opt.last_grad_norm(); // log it, as fairseq's gnorm
//! }
//! assert_eq!(opt.step_count() + opt.skipped_steps(), 30);
//! assert!(opt.loss_scale() <= 65536.0);
//! # Ok(()) }
//! ```
//!
//! ## 8-bit optimizer state
//!
//! [`RAdam::with_state_format`]`(`[`StateFormat::blockwise8()`]`)` keeps `m` and `v` as 8-bit
//! codes with one f32 scale per block of 256 elements (bitsandbytes' block-wise dynamic
//! quantization, Dettmers et al. 2022): about 2.03 bytes of state per parameter instead of 8
//! ([`RAdam::state_bytes_per_param`]). Tensors below 4096 elements keep 32-bit moments, groups can
//! opt out ([`ParamGroup::state_format`], e.g. embeddings) or in, and saved state converts
//! between the two formats at load. It combines with every [`Rounding`] mode of f16 / bf16
//! parameters (below): e.g. bf16 + [`Rounding::Remainder`] + 8-bit state is 2 + 2 + 2.03 bytes
//! per parameter (param, remainder, moments) and still follows an f32-parameter run with 8-bit
//! state bit for bit. The maps, the algorithm, the memory and when not to use it: module
//! [`quant`].
//!
//! ## Dtypes
//!
//! f32 and f64 variables keep their moments in their own dtype. f16 and bf16 variables keep f32
//! moments; the update is computed in f32 and written back to the parameter's dtype as
//! [`ParamsRAdam::rounding`] says ([`Rounding`], per group with [`ParamGroup::rounding`]): round
//! to nearest even (the default, as the original repository does; it loses every update below
//! half an ulp: a bf16 weight 1.0 with gradient 1.0 and `lr = 1e-3` never moves), the exact
//! "16+16" remainder for bf16 (+2 bytes per parameter; the f32 trajectory bit for bit, see
//! [`RAdam::set_master_weights`] / [`RAdam::master_weights`]), Kahan compensation (+2 bytes), or
//! stochastic rounding (0 bytes). See [`precision`] for the algorithms, the memory and when to
//! use which. Gradients arrive in the parameter's dtype.
//!
//! ## Example
//!
//! ```
//! use candle_core::{DType, Device, Tensor};
//! use candle_nn::{Optimizer, VarBuilder, VarMap, Module};
//! use candle_radam::{ParamGroup, ParamsRAdam, RAdam};
//!
//! # fn main() -> candle_core::Result<()> {
//! let dev = Device::Cpu;
//! let varmap = VarMap::new();
//! let vb = VarBuilder::from_varmap(&varmap, DType::F32, &dev);
//! let model = candle_nn::linear(3, 1, vb.pp("fc"))?;
//! let params = ParamsRAdam { lr: 1e-2, weight_decay: 0.01, decoupled_weight_decay: true, ..Default::default() };
//! // No weight decay for biases and normalization weights (here: fc.bias).
//! let mut opt = RAdam::from_varmap(&varmap, params)?.with_groups(vec![ParamGroup::no_decay()])?;
//! assert_eq!(opt.groups()[0].vars, ["fc.bias"]);
//!
//! let x = Tensor::randn(0f32, 1., (64, 3), &dev)?;
//! let y = x.sum_keepdim(1)?;
//! for _ in 0..20 {
//!     let loss = model.forward(&x)?.sub(&y)?.sqr()?.mean_all()?;
//!     opt.backward_step(&loss)?;
//! }
//! assert_eq!((opt.step_count(), opt.var_step_count("fc.weight")), (20, Some(20)));
//! # let dir = std::env::temp_dir().join(format!("radam-doc-{}", std::process::id()));
//! # std::fs::create_dir_all(&dir)?;
//! opt.save_state(dir.join("radam.safetensors"))?;   // resume later with load_state
//! let report = opt.load_state(dir.join("radam.safetensors"))?;
//! assert!(report.is_clean(), "{report}");
//! # Ok(()) }
//! ```

pub mod clip;
mod cpu;
mod cpu8;
#[cfg(feature = "cuda")]
mod cuda;
mod groups;
mod moments;
mod optimizer;
mod params;
pub mod precision;
pub mod quant;
pub mod rule;
mod scaler;
pub mod schedule;
mod state;

pub use groups::{GroupInfo, ParamGroup, DEFAULT_GROUP};
pub use moments::moment_dtype;
pub use optimizer::RAdam;
pub use params::{NonFinite, ParamsRAdam};
pub use precision::Rounding;
pub use quant::StateFormat;
pub use rule::{StepScalars, Update};
pub use scaler::LossScaler;
pub use state::LoadReport;

#[cfg(feature = "cuda")]
pub use cuda::cuda_supports;
