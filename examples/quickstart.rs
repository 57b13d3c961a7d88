//! The README's `## Use` snippet as a program (tests/api.rs checks that the README shows this
//! file's code verbatim): `cargo run --release --example quickstart`.

use candle_core::{DType, Device, Module, Tensor};
use candle_nn::{Optimizer, VarBuilder, VarMap};
use candle_radam::{ParamsRAdam, RAdam};

fn main() -> candle_core::Result<()> {
    let dev = Device::Cpu;
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &dev);
    let model = candle_nn::linear(3, 1, vb.pp("fc"))?;
    let x = Tensor::randn(0f32, 1.0, (64, 3), &dev)?; // inputs, (batch, 3)
    let y = x.sum_keepdim(1)?; // targets, (batch, 1)

    let params = ParamsRAdam {
        lr: 1e-2,
        weight_decay: 0.01,
        decoupled_weight_decay: true,
        ..Default::default()
    };
    let mut opt = RAdam::from_varmap(&varmap, params)?; // vars sorted by name
    for _ in 0..100 {
        let loss = model.forward(&x)?.sub(&y)?.sqr()?.mean_all()?;
        opt.backward_step(&loss)?; // or opt.step(&grads)
    }
    // Resume later: RAdam::from_varmap(..)?.load_state(..)
    opt.save_state(std::env::temp_dir().join("radam.safetensors"))?;
    Ok(())
}
