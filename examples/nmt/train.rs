//! Training loop, the paper's optimizer variants, evaluation (valid loss, greedy and beam
//! decoding) and checkpoints. Scoring the translations is the caller's (`sacrebleu.rs`).

use crate::data::{BatchStream, Dataset, BOS, EOS, PAD};
use crate::model::{build, init_values, Dropout, ModelConfig, Transformer};
use crate::precision::PrecisionSpec;
use crate::schedule::Schedule;
use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor, D};
use candle_nn::{Optimizer, VarMap};
use candle_radam::{ParamsRAdam, RAdam};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// One optimizer + schedule + parameter precision setting to train with.
#[derive(Debug, Clone)]
pub struct Variant {
    /// The run's label in outputs: the optimizer variant's name, or in a precision comparison
    /// the spec's canonical name (`main::precision_runs`).
    pub name: String,
    /// The optimizer variant (adam, adam-warmup, adam-eps, adam-2k, radam): `name`, except in a
    /// precision comparison.
    pub optimizer: String,
    pub params: ParamsRAdam,
    pub schedule: Schedule,
    pub precision: PrecisionSpec,
}

/// Everything about a training run that is not the optimizer.
#[derive(Debug, Clone)]
pub struct TrainConfig {
    pub model: ModelConfig,
    pub steps: u64,
    pub max_tokens: usize,
    pub label_smoothing: f64,
    pub clip_norm: f64,
    pub eval_every: u64,
    pub log_every: u64,
    /// Sentences of the evaluation set translated at the end (0: all).
    pub bleu_sentences: usize,
    pub max_decode_extra: usize,
    /// Beam size for the final translations (1: greedy).
    pub beam: usize,
    pub seed: u64,
    pub save: Option<PathBuf>,
    pub resume: Option<PathBuf>,
    pub progress: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CurvePoint {
    pub step: u64,
    pub lr: f64,
    /// Mean label-smoothed training loss (nats per token) over the steps since the last point.
    pub train_loss: f64,
    /// Mean global L2 norm of the gradients (unclipped, fairseq's `gnorm`) over the same steps
    /// (`None` in runs written before it was logged).
    #[serde(default)]
    pub gnorm: Option<f64>,
    pub valid_loss: Option<f64>,
    pub valid_ppl: Option<f64>,
}

/// JSON writes infinite numbers (a diverged run's perplexity) as `null`: read them back as inf.
fn null_as_inf<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<f64, D::Error> {
    Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::INFINITY))
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VariantResult {
    /// The run's label ([`Variant::name`]): unique in a run, the key of its curve and
    /// translations.
    pub variant: String,
    /// The optimizer variant ([`Variant::optimizer`]); empty in runs written before it was
    /// recorded (`--merge` fills it in).
    #[serde(default)]
    pub optimizer: String,
    /// The parameter precision (canonical spec, see `precision.rs`); f32 in runs written before
    /// it was recorded.
    #[serde(default = "f32_name")]
    pub precision: String,
    pub steps: u64,
    /// Steps the optimizer skipped (non-finite gradients under f16 loss scaling).
    #[serde(default)]
    pub skipped_steps: u64,
    /// Bytes of optimizer state per parameter at the end of training
    /// (`RAdam::state_bytes_per_param`: moments, 8-bit codes and block scales, rounding
    /// buffers); `None` in runs written before it was recorded.
    #[serde(default)]
    pub state_bytes_per_param: Option<f64>,
    #[serde(deserialize_with = "null_as_inf")]
    pub final_valid_loss: f64,
    #[serde(deserialize_with = "null_as_inf")]
    pub final_valid_ppl: f64,
    #[serde(deserialize_with = "null_as_inf")]
    pub best_valid_ppl: f64,
    /// Scores of the final translations of the evaluation set, set by the caller.
    pub scores: Option<crate::sacrebleu::TextScores>,
    pub ms_per_step: f64,
    pub tokens_per_s: f64,
    pub train_seconds: f64,
    /// Wall time of the final translations (beam search).
    pub translate_seconds: f64,
    pub diverged: bool,
    #[serde(skip)]
    pub curve: Vec<CurvePoint>,
    /// Final translations of the evaluation set (target ids without `</s>`, in dataset order);
    /// empty when the run diverged.
    #[serde(skip)]
    pub hyps: Vec<Vec<u32>>,
}

fn f32_name() -> String {
    PrecisionSpec::plain(crate::precision::ParamDType::F32).to_string()
}

/// Label-smoothed cross entropy as fairseq's `label_smoothed_cross_entropy`:
/// `(1 - eps - eps/(V-1)) * nll + eps/(V-1) * sum_v(-log p_v)`, summed over non-pad targets.
/// Returns `(smoothed loss sum, nll sum)` as scalar tensors.
pub fn label_smoothed_loss(
    logits: &Tensor,
    targets: &Tensor,
    eps: f64,
) -> candle_core::Result<(Tensor, Tensor)> {
    let v = logits.dim(D::Minus1)?;
    let logits = logits.reshape(((), v))?;
    let targets = targets.flatten_all()?;
    let logp = candle_nn::ops::log_softmax(&logits, D::Minus1)?;
    let mask = targets.ne(PAD)?.to_dtype(logp.dtype())?;
    let nll = logp.gather(&targets.unsqueeze(1)?, 1)?.squeeze(1)?.neg()?;
    let nll = (nll * &mask)?.sum_all()?;
    if eps == 0.0 {
        return Ok((nll.clone(), nll));
    }
    let smooth = (logp.sum(1)?.neg()? * &mask)?.sum_all()?;
    let eps_i = eps / (v as f64 - 1.0);
    let loss = ((&nll * (1.0 - eps - eps_i))? + (smooth * eps_i)?)?;
    Ok((loss, nll))
}

/// Mean per-token NLL of the valid set (no dropout).
pub fn valid_loss(model: &Transformer, data: &Dataset, max_tokens: usize) -> Result<f64> {
    let mut nll_sum = 0f64;
    let mut n = 0usize;
    let mut off = Dropout::off();
    for idx in data.batches(max_tokens, 0) {
        let b = data.make_batch(&idx);
        let mem = model.encode(&b.src, b.size, b.src_len, &mut off)?;
        let logits = model.decode(&mem, &b.tgt_in, b.size, b.tgt_len, &mut off)?.detach();
        let tgt = Tensor::from_slice(&b.tgt_out, (b.size, b.tgt_len), logits.device())?;
        let (_, nll) = label_smoothed_loss(&logits, &tgt, 0.0)?;
        nll_sum += nll.to_dtype(DType::F64)?.to_scalar::<f64>()?;
        n += b.n_tokens;
    }
    Ok(nll_sum / n as f64)
}

/// Greedy decoding of the first `limit` valid sentences (0: all); returns the hypotheses as
/// target-vocabulary ids (without `</s>`), in dataset order.
pub fn greedy_decode(
    model: &Transformer,
    data: &Dataset,
    limit: usize,
    max_extra: usize,
    max_tokens: usize,
) -> Result<Vec<Vec<u32>>> {
    let n = if limit == 0 { data.len() } else { limit.min(data.len()) };
    let sub = Dataset { src: data.src[..n].to_vec(), tgt: data.tgt[..n].to_vec() };
    let mut out = vec![Vec::new(); n];
    let mut off = Dropout::off();
    for idx in sub.batches(max_tokens, 0) {
        let b = sub.make_batch(&idx);
        let mem = model.encode(&b.src, b.size, b.src_len, &mut off)?;
        let max_len = b.src_len + max_extra;
        let mut seqs: Vec<Vec<u32>> = vec![vec![BOS]; b.size];
        let mut done = vec![false; b.size];
        for t in 1..=max_len {
            let flat: Vec<u32> = seqs.iter().flatten().copied().collect();
            let logits = model.decode(&mem, &flat, b.size, t, &mut off)?.detach();
            let next =
                logits.narrow(1, t - 1, 1)?.squeeze(1)?.argmax(D::Minus1)?.to_vec1::<u32>()?;
            for (i, s) in seqs.iter_mut().enumerate() {
                let tok = if done[i] { PAD } else { next[i] };
                if tok == EOS {
                    done[i] = true;
                }
                s.push(tok);
            }
            if done.iter().all(|&d| d) {
                break;
            }
        }
        for (k, &i) in idx.iter().enumerate() {
            out[i] = seqs[k][1..].iter().take_while(|&&x| x != EOS && x != PAD).copied().collect();
        }
    }
    Ok(out)
}

/// Beam search over the first `limit` valid sentences (0: all), as fairseq's: at every step the
/// `2 * beam` best continuations of the live hypotheses are ranked; a `</s>` among the first
/// `beam` of them finishes a hypothesis (scored by its summed log-probability divided by its
/// length, `</s>` included), the best `beam` others stay live; a sentence is done once it has
/// `beam` finished hypotheses or reaches `src_len + max_extra` tokens. `beam <= 1` is greedy.
pub fn beam_decode(
    model: &Transformer,
    data: &Dataset,
    limit: usize,
    max_extra: usize,
    max_tokens: usize,
    beam: usize,
) -> Result<Vec<Vec<u32>>> {
    if beam <= 1 {
        return greedy_decode(model, data, limit, max_extra, max_tokens);
    }
    let n = if limit == 0 { data.len() } else { limit.min(data.len()) };
    let sub = Dataset { src: data.src[..n].to_vec(), tgt: data.tgt[..n].to_vec() };
    let mut out = vec![Vec::new(); n];
    let mut off = Dropout::off();
    type Hyp = (Vec<u32>, f64);
    for idx in sub.batches((max_tokens / beam).max(1), 0) {
        let b = sub.make_batch(&idx);
        let mem = model.encode(&b.src, b.size, b.src_len, &mut off)?;
        let dev = mem.states.device().clone();
        let rep: Vec<u32> = (0..b.size as u32).flat_map(|i| std::iter::repeat_n(i, beam)).collect();
        let rep = Tensor::from_vec(rep, b.size * beam, &dev)?;
        let mem = crate::model::Memory {
            states: mem.states.index_select(&rep, 0)?,
            mask: mem.mask.index_select(&rep, 0)?,
        };
        let max_len = b.src_len + max_extra;
        let mut live: Vec<Vec<Hyp>> = vec![vec![(vec![BOS], 0.0)]; b.size];
        let mut finished: Vec<Vec<Hyp>> = vec![Vec::new(); b.size];
        let mut done = vec![false; b.size];
        for t in 1..=max_len {
            let mut flat = Vec::with_capacity(b.size * beam * t);
            for (hyps, &d) in live.iter().zip(&done) {
                for k in 0..beam {
                    // Finished sentences keep their (shorter) hypotheses: feed a dummy row.
                    match hyps.get(k).or(hyps.first()).filter(|_| !d) {
                        Some((seq, _)) => flat.extend_from_slice(seq),
                        None => {
                            flat.push(BOS);
                            flat.extend(std::iter::repeat_n(PAD, t - 1));
                        }
                    }
                }
            }
            let logits = model.decode(&mem, &flat, b.size * beam, t, &mut off)?.detach();
            let lp =
                candle_nn::ops::log_softmax(&logits.narrow(1, t - 1, 1)?.squeeze(1)?, D::Minus1)?
                    .to_vec2::<f32>()?;
            for i in 0..b.size {
                if done[i] {
                    continue;
                }
                let mut cands: Vec<(f64, usize, u32)> = Vec::new();
                for (k, (_, score)) in live[i].iter().enumerate() {
                    let row = &lp[i * beam + k];
                    let mut ids: Vec<u32> =
                        (0..row.len() as u32).filter(|&v| v != PAD && v != BOS).collect();
                    let top = (2 * beam).min(ids.len());
                    ids.select_nth_unstable_by(top - 1, |a, b| {
                        row[*b as usize].total_cmp(&row[*a as usize])
                    });
                    cands
                        .extend(ids[..top].iter().map(|&v| (score + row[v as usize] as f64, k, v)));
                }
                cands.sort_by(|a, b| b.0.total_cmp(&a.0));
                let mut next = Vec::with_capacity(beam);
                for (pos, &(score, k, tok)) in cands.iter().take(2 * beam).enumerate() {
                    let seq = &live[i][k].0;
                    if tok == EOS {
                        if pos < beam {
                            finished[i].push((seq[1..].to_vec(), score / seq.len() as f64));
                        }
                    } else if next.len() < beam {
                        let mut s = seq.clone();
                        s.push(tok);
                        next.push((s, score));
                    }
                }
                live[i] = next;
                if finished[i].len() >= beam || t == max_len || live[i].is_empty() {
                    done[i] = true;
                }
            }
            if done.iter().all(|&d| d) {
                break;
            }
        }
        for (k, &i) in idx.iter().enumerate() {
            let best = finished[k].iter().max_by(|a, b| a.1.total_cmp(&b.1)).map(|h| h.0.clone());
            out[i] = best
                .unwrap_or_else(|| live[k].first().map(|h| h.0[1..].to_vec()).unwrap_or_default());
        }
    }
    Ok(out)
}

#[derive(Serialize, Deserialize)]
struct CheckpointMeta {
    /// Training steps (batches) done.
    step: u64,
    /// The optimizer's step count: `step` less the steps skipped under loss scaling (absent in
    /// checkpoints written before it was recorded, which had none).
    #[serde(default)]
    optimizer_steps: Option<u64>,
    variant: String,
    /// The parameter precision (canonical spec); f32 in checkpoints written before it was.
    #[serde(default = "f32_name")]
    precision: String,
    src_vocab: usize,
    tgt_vocab: usize,
}

fn save_checkpoint(
    dir: &Path,
    varmap: &VarMap,
    opt: &RAdam,
    step: u64,
    variant: &Variant,
    cfg: &ModelConfig,
) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    varmap.save(dir.join("model.safetensors"))?;
    opt.save_state(dir.join("optimizer.safetensors"))?;
    let meta = CheckpointMeta {
        step,
        optimizer_steps: Some(opt.step_count()),
        variant: variant.name.clone(),
        precision: variant.precision.to_string(),
        src_vocab: cfg.src_vocab,
        tgt_vocab: cfg.tgt_vocab,
    };
    std::fs::write(dir.join("meta.json"), serde_json::to_string_pretty(&meta)?)?;
    Ok(())
}

fn load_checkpoint(
    dir: &Path,
    varmap: &mut VarMap,
    opt: &mut RAdam,
    precision: &PrecisionSpec,
    cfg: &ModelConfig,
) -> Result<u64> {
    let meta: CheckpointMeta = serde_json::from_str(
        &std::fs::read_to_string(dir.join("meta.json"))
            .with_context(|| format!("no checkpoint in {}", dir.display()))?,
    )?;
    if meta.precision != precision.to_string() {
        bail!(
            "checkpoint {} was trained with {} parameters, this run has {} (--dtype / --precisions)",
            dir.display(),
            meta.precision,
            precision
        );
    }
    if (meta.src_vocab, meta.tgt_vocab) != (cfg.src_vocab, cfg.tgt_vocab) {
        bail!(
            "checkpoint {} was trained with vocabularies {}/{}, the data gives {}/{}",
            dir.display(),
            meta.src_vocab,
            meta.tgt_vocab,
            cfg.src_vocab,
            cfg.tgt_vocab
        );
    }
    varmap.load(dir.join("model.safetensors"))?;
    opt.load_state(dir.join("optimizer.safetensors"))?;
    let optimizer_steps = meta.optimizer_steps.unwrap_or(meta.step);
    if opt.step_count() != optimizer_steps {
        bail!(
            "checkpoint {}: optimizer at step {}, meta says {}",
            dir.display(),
            opt.step_count(),
            optimizer_steps
        );
    }
    Ok(meta.step)
}

/// Trains one variant from the seeded initialization and data order, validates on `valid` and
/// translates `eval` at the end (beam search with `cfg.beam`).
pub fn train_variant(
    variant: &Variant,
    cfg: &TrainConfig,
    train: &Dataset,
    valid: &Dataset,
    eval: &Dataset,
    device: &Device,
) -> Result<VariantResult> {
    let mut model = build(&cfg.model, cfg.seed, variant.precision.dtype.dtype(), device)?;
    let mut opt = variant.precision.optimizer(&model.varmap, variant.params.clone(), || {
        Ok(init_values(&model.varmap, cfg.seed)?)
    })?;
    let schedule = variant.schedule.build()?;
    // Global-norm clipping fused into the step (torch `clip_grad_norm_` semantics). Without
    // `--clip-norm` the bound is infinite: the trajectory is exactly the unclipped one, and the
    // norm still comes for free from the guard's read of every gradient, for the `gnorm` column.
    let max_norm = if cfg.clip_norm > 0.0 { cfg.clip_norm } else { f64::INFINITY };
    opt.set_max_grad_norm(Some(max_norm))?;
    let mut start = 0;
    if let Some(dir) = &cfg.resume {
        start = load_checkpoint(dir, &mut model.varmap, &mut opt, &variant.precision, &cfg.model)?;
    }
    let mut stream = BatchStream::new(train, cfg.max_tokens, cfg.seed);
    stream.skip(start);
    let mut drop = Dropout::new(cfg.model.dropout, cfg.seed.wrapping_add(17 + start), device)?;

    let pb = ProgressBar::new(cfg.steps);
    if !cfg.progress {
        pb.set_draw_target(ProgressDrawTarget::hidden());
    }
    pb.set_style(
        ProgressStyle::with_template(
            "{prefix:>12} [{elapsed_precise}] {wide_bar} {pos}/{len} {msg}",
        )
        .unwrap(),
    );
    pb.set_prefix(variant.name.clone());
    pb.set_position(start);

    let mut curve = Vec::new();
    let (mut window_loss, mut window_gnorm, mut window_n) = (0f64, 0f64, 0u64);
    // Steps whose gradient norm is finite (a step skipped under f16 loss scaling has none).
    let mut window_gnorm_n = 0u64;
    let mut train_time = 0f64;
    let mut tokens = 0usize;
    let mut diverged = false;
    let mut last_valid = (f64::NAN, f64::NAN);
    let mut best_ppl = f64::INFINITY;
    let mut steps_done = 0u64;
    for step in start + 1..=cfg.steps {
        let t0 = Instant::now();
        // Update `step` (1-based) follows `step - 1` completed ones (the crate's convention).
        let lr = candle_radam::schedule::apply(schedule.as_ref(), &mut opt, step - 1)?;
        let b = train.make_batch(stream.next_indices());
        let net = model.compute()?;
        let mem = net.encode(&b.src, b.size, b.src_len, &mut drop)?;
        let logits = net.decode(&mem, &b.tgt_in, b.size, b.tgt_len, &mut drop)?;
        let tgt = Tensor::from_slice(&b.tgt_out, (b.size, b.tgt_len), device)?;
        let (loss_sum, _) = label_smoothed_loss(&logits, &tgt, cfg.label_smoothing)?;
        let loss = (loss_sum / b.n_tokens as f64)?;
        let loss_v = loss.to_scalar::<f32>()? as f64;
        if !loss_v.is_finite() {
            diverged = true;
            pb.println(format!(
                "{}: loss is {loss_v} at step {step}, stopping this variant",
                variant.name
            ));
            break;
        }
        let t_fwd = t0.elapsed().as_secs_f64();
        // (The loss as it is, unless f16 parameters keep a loss scale: see `precision.rs`.)
        let grads = opt.scale_loss(&loss)?.backward()?;
        let t_bwd = t0.elapsed().as_secs_f64();
        opt.step(&grads)?;
        let gnorm = opt.last_grad_norm().unwrap_or(f64::NAN);
        train_time += t0.elapsed().as_secs_f64();
        if std::env::var_os("NMT_PROFILE").is_some() {
            let t = t0.elapsed().as_secs_f64();
            eprintln!(
                "step {step}: {} x {}/{} fwd {:.0} ms, bwd {:.0} ms, opt {:.0} ms",
                b.size,
                b.src_len,
                b.tgt_len,
                t_fwd * 1e3,
                (t_bwd - t_fwd) * 1e3,
                (t - t_bwd) * 1e3
            );
        }
        tokens += b.n_tokens;
        steps_done += 1;
        window_loss += loss_v;
        if gnorm.is_finite() {
            window_gnorm += gnorm;
            window_gnorm_n += 1;
        }
        window_n += 1;
        pb.set_position(step);
        pb.set_message(format!(
            "loss {loss_v:.3} | gnorm {gnorm:.3} | {:.0} tok/s | lr {lr:.2e}",
            tokens as f64 / train_time
        ));

        let eval_now = step % cfg.eval_every == 0 || step == cfg.steps;
        if step % cfg.log_every == 0 || eval_now {
            let mut point = CurvePoint {
                step,
                lr,
                train_loss: window_loss / window_n as f64,
                gnorm: (window_gnorm_n > 0).then(|| window_gnorm / window_gnorm_n as f64),
                valid_loss: None,
                valid_ppl: None,
            };
            if eval_now {
                let vl = valid_loss(&model.compute()?, valid, cfg.max_tokens)?;
                let ppl = vl.exp();
                best_ppl = best_ppl.min(ppl);
                last_valid = (vl, ppl);
                point.valid_loss = Some(vl);
                point.valid_ppl = Some(ppl);
            }
            curve.push(point);
            window_loss = 0.0;
            window_gnorm = 0.0;
            window_gnorm_n = 0;
            window_n = 0;
        }
    }
    pb.finish_and_clear();
    if let Some(dir) = &cfg.save {
        save_checkpoint(dir, &model.varmap, &opt, start + steps_done, variant, &cfg.model)?;
    }
    let t_translate = Instant::now();
    let hyps = if diverged {
        Vec::new()
    } else {
        beam_decode(
            &model.compute()?,
            eval,
            cfg.bleu_sentences,
            cfg.max_decode_extra,
            cfg.max_tokens,
            cfg.beam,
        )?
    };
    if diverged {
        last_valid = (f64::INFINITY, f64::INFINITY);
    }
    Ok(VariantResult {
        variant: variant.name.clone(),
        optimizer: variant.optimizer.clone(),
        precision: variant.precision.to_string(),
        steps: start + steps_done,
        skipped_steps: opt.skipped_steps(),
        state_bytes_per_param: Some(opt.state_bytes_per_param()),
        final_valid_loss: last_valid.0,
        final_valid_ppl: last_valid.1,
        best_valid_ppl: best_ppl,
        scores: None,
        ms_per_step: 1000.0 * train_time / steps_done.max(1) as f64,
        tokens_per_s: tokens as f64 / train_time.max(1e-9),
        train_seconds: train_time,
        translate_seconds: t_translate.elapsed().as_secs_f64(),
        diverged,
        curve,
        hyps,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ShareEmbed;

    #[test]
    fn label_smoothing_matches_the_formula() -> Result<()> {
        let dev = Device::Cpu;
        let logits = Tensor::new(&[[[1.0f32, 2.0, 0.5, -1.0], [0.0, 0.0, 3.0, 1.0]]], &dev)?; // (1, 2, 4)
        let tgt = Tensor::new(&[[1u32, PAD]], &dev)?;
        let (loss, nll) = label_smoothed_loss(&logits, &tgt, 0.1)?;
        let row = [1.0f64, 2.0, 0.5, -1.0];
        let lse = row.iter().map(|x| x.exp()).sum::<f64>().ln();
        let lp: Vec<f64> = row.iter().map(|x| x - lse).collect();
        let eps_i = 0.1 / 3.0;
        let expect = (1.0 - 0.1 - eps_i) * -lp[1] + eps_i * -lp.iter().sum::<f64>();
        assert!((nll.to_scalar::<f32>()? as f64 + lp[1]).abs() < 1e-5);
        assert!((loss.to_scalar::<f32>()? as f64 - expect).abs() < 1e-5);
        Ok(())
    }

    #[test]
    fn beam_one_is_greedy_and_beam_search_is_well_formed() -> Result<()> {
        let dev = Device::Cpu;
        let cfg = ModelConfig {
            src_vocab: 12,
            tgt_vocab: 12,
            d_model: 16,
            heads: 2,
            ffn: 32,
            enc_layers: 1,
            dec_layers: 1,
            dropout: 0.0,
            share: ShareEmbed::Decoder,
        };
        let model = build(&cfg, 3, DType::F32, &dev)?.compute()?;
        let data = Dataset {
            src: vec![vec![4, 5, 6], vec![7, 8], vec![9, 10, 11, 4]],
            tgt: vec![vec![4], vec![5], vec![6]],
        };
        let g = greedy_decode(&model, &data, 0, 5, 100)?;
        assert_eq!(beam_decode(&model, &data, 0, 5, 100, 1)?, g);
        let b = beam_decode(&model, &data, 0, 5, 100, 4)?;
        assert_eq!(b.len(), 3);
        // Many sentences in one batch, finishing at different steps.
        let many = Dataset {
            src: (0..40).map(|i| vec![4 + (i % 8) as u32; 1 + i % 6]).collect(),
            tgt: vec![vec![4]; 40],
        };
        assert_eq!(beam_decode(&model, &many, 0, 8, 1000, 3)?.len(), 40);
        for (h, s) in b.iter().zip(&data.src) {
            assert!(h.len() <= s.len() + 1 + 5);
            assert!(h.iter().all(|&t| t != PAD && t != BOS && t != EOS));
        }
        assert_eq!(b, beam_decode(&model, &data, 0, 5, 100, 4)?);
        Ok(())
    }
}
