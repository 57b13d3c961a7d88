//! Neural machine translation with a post-LayerNorm Transformer: Adam with and without warmup
//! versus RAdam, as in Liu et al. 2019 ("On the Variance of the Adaptive Learning Rate and
//! Beyond", arXiv 1908.03265). Results and a GPU recipe for IWSLT'14 De-En: docs/NMT.md.
//!
//! ```text
//! cargo run --release --example nmt                     # adam,adam-warmup,radam on the synthetic task -> out/nmt
//! cargo run --release --example nmt -- --compare adam,adam-warmup,adam-eps,adam-2k,radam
//! cargo run --release --example nmt -- --optimizer radam --lr 1e-3 --steps 2000 --save ckpt
//! cargo run --release --example nmt -- --precisions f32,bf16,f16   # radam with f32 / bf16 / f16 parameters
//! cargo run --release --features cuda --example nmt -- --device cuda --preset iwslt \
//!     --train-src train.de --train-tgt train.en --valid-src valid.de --valid-tgt valid.en
//! ```
//!
//! `NMT_PROFILE=1` prints the forward / backward / optimizer time of every step.

/// The example's allocator. candle's CPU tensors are large and short-lived: glibc's malloc
/// serves each one above its mmap threshold with a fresh `mmap` and returns it with `munmap`, so
/// every training step page-faults its whole working set again (half of the run time was
/// system time). mimalloc reuses freed memory, and with [`keep_freed_memory`] keeps it instead
/// of handing it back to the OS between steps. Only the example sets it: the library leaves the
/// choice of global allocator to the application (docs/NMT.md, "Speed on the CPU").
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc's `mi_option_purge_delay`: index 15 of `mi_option_e` in mimalloc.h of both mimalloc
/// 2.x and 3.x (libmimalloc-sys 0.1 has no constant for it).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Tells mimalloc never to purge (decommit) freed memory. By default it does so 10-1000 ms after
/// a free, and a training step that lasts longer than that page-faults its 64 MB logits and
/// friends afresh every time: 1244 vs 838 ms/step on Multi30K (docs/NMT.md).
fn keep_freed_memory() {
    // SAFETY: sets a process-global option; mimalloc reads it on its next purge decision.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) };
}

mod bleu;
mod data;
mod merge;
mod model;
mod outdir;
mod plot;
mod precision;
mod sacrebleu;
mod schedule;
mod source;
mod subword;
mod text;
mod train;

use anyhow::{bail, Context, Result};
use candle_core::Device;
use candle_radam::ParamsRAdam;
use clap::{Parser, ValueEnum};
use data::Dataset;
use model::{ModelConfig, ShareEmbed};
use precision::{ParamDType, PrecisionSpec};
use schedule::{Decay, Schedule};
use serde::Serialize;
use source::{DataSpec, TokenizeSpec, TokenizerOrigin};
use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;
use subword::SubwordKind;
use text::ParallelFiles;
use train::{train_variant, TrainConfig, Variant, VariantResult};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
enum Preset {
    /// A few seconds: for tests and smoke runs.
    Tiny,
    /// The default: the synthetic task on a 2-core CPU in a few minutes per variant.
    Cpu,
    /// fairseq's `transformer_iwslt_de_en` (6+6 layers, d 512, ffn 1024, 4 heads), for a GPU.
    Iwslt,
}

#[derive(Debug, Clone, Serialize)]
struct PresetValues {
    d_model: usize,
    heads: usize,
    ffn: usize,
    layers: usize,
    dropout: f32,
    max_tokens: usize,
    steps: u64,
    lr: f64,
    warmup: u64,
    eval_every: u64,
    n_train: usize,
    n_valid: usize,
    adam_freeze: u64,
    weight_decay: f64,
}

impl Preset {
    fn values(self) -> PresetValues {
        match self {
            Preset::Tiny => PresetValues {
                d_model: 32,
                heads: 2,
                ffn: 64,
                layers: 1,
                dropout: 0.0,
                max_tokens: 400,
                steps: 40,
                lr: 3e-3,
                warmup: 10,
                eval_every: 20,
                n_train: 400,
                n_valid: 30,
                adam_freeze: 10,
                weight_decay: 0.0,
            },
            Preset::Cpu => PresetValues {
                d_model: 128,
                heads: 4,
                ffn: 256,
                layers: 3,
                dropout: 0.1,
                max_tokens: 1200,
                steps: 800,
                lr: 2e-3,
                warmup: 120,
                eval_every: 50,
                n_train: 20_000,
                n_valid: 400,
                adam_freeze: 120,
                weight_decay: 0.0,
            },
            Preset::Iwslt => PresetValues {
                d_model: 512,
                heads: 4,
                ffn: 1024,
                layers: 6,
                dropout: 0.3,
                max_tokens: 4096,
                steps: 60_000,
                lr: 5e-4,
                warmup: 4000,
                eval_every: 1000,
                n_train: 200_000,
                n_valid: 2000,
                adam_freeze: 2000,
                weight_decay: 1e-4,
            },
        }
    }
}

#[derive(Parser, Debug, Clone)]
#[command(
    about = "Transformer NMT: Adam (with / without warmup) vs RAdam, from the same initialization and data order",
    // A flag given twice: the last one counts (so a script can append overrides).
    args_override_self = true
)]
struct Args {
    /// Model / schedule size. `cpu` is the default synthetic-task setting; `iwslt` is fairseq's
    /// transformer_iwslt_de_en for real data on a GPU.
    #[arg(long, value_enum, default_value = "cpu")]
    preset: Preset,

    /// Variants to train, comma separated: adam, adam-warmup, adam-eps, adam-2k, radam.
    /// The default when neither --compare nor --optimizer is given: adam,adam-warmup,radam.
    #[arg(long, value_delimiter = ',', conflicts_with = "optimizer")]
    compare: Option<Vec<String>>,

    /// Train a single run with this optimizer and the schedule flags (instead of --compare).
    #[arg(long, value_enum)]
    optimizer: Option<Opt>,

    /// The dtype of the model's parameters (the variables the optimizer updates) in every
    /// variant; the network computes in f32 either way. Half-precision parameters are updated
    /// with round to nearest; f16 ones with dynamic loss scaling.
    #[arg(long, value_enum, default_value = "f32", conflicts_with = "precisions")]
    dtype: ParamDType,

    /// Precision comparison: train one optimizer variant (radam, or the one --optimizer or
    /// --compare names) once per spec, from the same initialization and data order. A spec is
    /// DTYPE[:MODE][+STATE]. DTYPE: f32, bf16, f16. MODE, how a bf16 / f16 parameter takes the
    /// update: nearest (the default), remainder (bf16 only: exact f32 master), kahan,
    /// stochastic[:SEED]. +8bit: 8-bit block-wise optimizer state (m and v). Examples: f32,
    /// bf16, bf16:remainder, f16:kahan, bf16:stochastic:3, f32+8bit, bf16:remainder+8bit.
    #[arg(long, value_delimiter = ',', num_args = 1..)]
    precisions: Option<Vec<String>>,

    /// Peak learning rate (default: the preset's).
    #[arg(long)]
    lr: Option<f64>,
    /// Adam betas: "beta1,beta2" (or two values: --betas 0.9 0.98).
    #[arg(long, value_delimiter = ',', num_args = 1..=2, default_values_t = vec![0.9, 0.98])]
    betas: Vec<f64>,
    /// Adam epsilon (adam-eps uses 1e-4).
    #[arg(long, default_value_t = 1e-8)]
    eps: f64,
    /// Weight decay (L2, as fairseq's adam; default: the preset's).
    #[arg(long)]
    weight_decay: Option<f64>,
    /// Decoupled (AdamW-style) weight decay.
    #[arg(long)]
    decoupled_wd: bool,
    /// Linear warmup steps of the adam-warmup variant, and of a single --optimizer run (default:
    /// the preset's for adam-warmup, 0 for --optimizer).
    #[arg(long)]
    warmup: Option<u64>,
    /// Learning rate the warmup starts from.
    #[arg(long, default_value_t = 0.0)]
    warmup_init_lr: f64,
    /// Decay after the warmup.
    #[arg(long, value_enum, default_value = "linear")]
    decay: Decay,
    /// Steps during which adam-2k updates only the second moment (the paper uses 2000).
    #[arg(long)]
    adam_freeze: Option<u64>,

    /// Update steps (default: the preset's).
    #[arg(long)]
    steps: Option<u64>,
    /// Batch size in padded tokens (fairseq --max-tokens).
    #[arg(long)]
    max_tokens: Option<usize>,
    #[arg(long, default_value_t = 0.1)]
    label_smoothing: f64,
    /// Clip the global gradient norm to this (0: off, as fairseq's IWSLT recipe), fused into the
    /// optimizer step (`RAdam::set_max_grad_norm`, torch `clip_grad_norm_` semantics). The
    /// unclipped norm is logged either way (`gnorm` in curves.csv and the progress bar).
    #[arg(long, default_value_t = 0.0)]
    clip_norm: f64,
    /// Validate every this many steps.
    #[arg(long)]
    eval_every: Option<u64>,
    /// Log the training loss every this many steps.
    #[arg(long, default_value_t = 10)]
    log_every: u64,
    /// Beam size for the final translations (1: greedy). Default: 5 (as fairseq-generate) with a
    /// test set (--test-src, --multi30k), 1 for the valid set.
    #[arg(long)]
    beam: Option<usize>,
    /// Sentences translated and scored at the end (0: all).
    #[arg(long, default_value_t = 0)]
    bleu_sentences: usize,

    #[arg(long)]
    d_model: Option<usize>,
    #[arg(long)]
    heads: Option<usize>,
    #[arg(long)]
    ffn: Option<usize>,
    /// Encoder layers (and decoder layers unless --dec-layers).
    #[arg(long)]
    layers: Option<usize>,
    #[arg(long)]
    dec_layers: Option<usize>,
    #[arg(long)]
    dropout: Option<f32>,
    /// Embedding sharing: none, decoder (input = output projection), all (encoder too: needs one
    /// vocabulary for both languages, i.e. a subword vocabulary, always joint, or --joined-vocab
    /// with --subword none).
    #[arg(long, value_enum, default_value = "decoder")]
    share: ShareEmbed,
    /// One vocabulary for both languages.
    #[arg(long)]
    joined_vocab: bool,

    /// Real data: parallel text, one sentence per line, UTF-8, plain or .gz. Raw text by default
    /// (a subword vocabulary is learned, see --subword); already-tokenized text with
    /// --subword none.
    #[arg(long, requires_all = ["train_tgt", "valid_src", "valid_tgt"], conflicts_with = "multi30k")]
    train_src: Option<PathBuf>,
    #[arg(long, requires = "train_src")]
    train_tgt: Option<PathBuf>,
    #[arg(long, requires = "train_src")]
    valid_src: Option<PathBuf>,
    #[arg(long, requires = "train_src")]
    valid_tgt: Option<PathBuf>,
    /// A test set: the final translations (beam search, --beam) and scores are on it instead of
    /// the valid set.
    #[arg(long, requires_all = ["train_src", "test_tgt"])]
    test_src: Option<PathBuf>,
    #[arg(long, requires = "test_src")]
    test_tgt: Option<PathBuf>,
    /// Multi30K task 1 (github.com/multi30k/dataset, data/task1/raw): a directory with
    /// train.L, val.L and test_2016_flickr.L (plain or .gz) for L = --src-lang, --tgt-lang.
    #[arg(long)]
    multi30k: Option<PathBuf>,
    /// Source language suffix of the --multi30k files.
    #[arg(long, default_value = "de")]
    src_lang: String,
    /// Target language suffix of the --multi30k files.
    #[arg(long, default_value = "en")]
    tgt_lang: String,
    /// Subword model learned on the raw training text (joint for both languages), or none: the
    /// files are already tokenized (e.g. fairseq's BPE), whitespace tokens are the vocabulary.
    #[arg(long, value_enum, default_value = "bpe")]
    subword: SubwordKind,
    /// Size of the learned subword vocabulary (both languages, specials included).
    #[arg(long, default_value_t = 8000)]
    vocab_size: usize,
    /// Use this tokenizer.json instead of learning one (its ids 0..4 must be <pad> <s> </s> <unk>).
    #[arg(long)]
    tokenizer: Option<PathBuf>,
    /// Drop training pairs longer than this (tokens).
    #[arg(long, default_value_t = 256)]
    max_len: usize,
    /// Undo "@@ " BPE before scoring (already BPE-split data, --subword none).
    #[arg(long)]
    remove_bpe: bool,
    /// Synthetic corpus size (default: the preset's).
    #[arg(long)]
    n_train: Option<usize>,
    #[arg(long)]
    n_valid: Option<usize>,

    /// Instead of training: merge the outputs of runs of single variants made with the same flags
    /// (e.g. `--compare adam`, `--compare radam` in parallel) into one comparison in --out.
    #[arg(long, value_delimiter = ',', num_args = 1..)]
    merge: Option<Vec<PathBuf>>,

    /// Output directory: curves.csv, curves.png, summary.json, hyp.<variant>.txt (a `:` in the
    /// variant written `-`) and, for raw
    /// text, tokenizer.json (reused by later runs on the same data).
    #[arg(long, default_value = "out/nmt")]
    out: PathBuf,
    /// Save model + optimizer state at the end (a subdirectory per variant when comparing).
    #[arg(long)]
    save: Option<PathBuf>,
    /// Resume from a --save directory (a subdirectory per variant when comparing).
    #[arg(long)]
    resume: Option<PathBuf>,
    #[arg(long, value_enum, default_value = "cpu")]
    device: DeviceArg,
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// No progress bars.
    #[arg(long)]
    quiet: bool,
    /// CPU threads for candle's kernels (sets RAYON_NUM_THREADS unless already set; 0: all
    /// cores). The default 1 is the fastest on a small, shared machine: with the small default
    /// model, multi-threaded kernels spend more time synchronizing than computing, and thrash
    /// badly when other processes hold the cores.
    #[arg(long, default_value_t = 1)]
    threads: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Opt {
    Radam,
    Adam,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum DeviceArg {
    Cpu,
    Cuda,
}

fn device(d: DeviceArg) -> Result<Device> {
    match d {
        DeviceArg::Cpu => Ok(Device::Cpu),
        DeviceArg::Cuda => {
            #[cfg(feature = "cuda")]
            {
                Device::new_cuda(0).map_err(|e| {
                    let first = e.to_string().lines().next().unwrap_or_default().to_string();
                    anyhow::anyhow!("--device cuda: cannot open CUDA device 0 ({first})")
                })
            }
            #[cfg(not(feature = "cuda"))]
            {
                bail!("--device cuda needs a build with the `cuda` feature: cargo run --release --features cuda --example nmt -- --device cuda ...")
            }
        }
    }
}

/// The paper's variants (all share lr, betas, decay and total steps; only what the name says
/// differs).
fn make_variant(name: &str, args: &Args, pv: &PresetValues, steps: u64) -> Result<Variant> {
    let lr = args.lr.unwrap_or(pv.lr);
    let base = ParamsRAdam {
        lr,
        beta1: args.betas[0],
        beta2: args.betas[1],
        eps: args.eps,
        weight_decay: args.weight_decay.unwrap_or(pv.weight_decay),
        decoupled_weight_decay: args.decoupled_wd,
        ..Default::default()
    };
    let sched = |warmup: u64| Schedule {
        lr,
        warmup,
        warmup_init: args.warmup_init_lr,
        decay: args.decay,
        total: steps,
    };
    let (params, schedule) = match name {
        "adam" => (ParamsRAdam { rectify: false, ..base }, sched(0)),
        "adam-warmup" => {
            (ParamsRAdam { rectify: false, ..base }, sched(args.warmup.unwrap_or(pv.warmup)))
        }
        "adam-eps" => (ParamsRAdam { rectify: false, eps: 1e-4, ..base }, sched(0)),
        "adam-2k" => (
            ParamsRAdam {
                rectify: false,
                v_only_steps: args.adam_freeze.unwrap_or(pv.adam_freeze),
                ..base
            },
            sched(0),
        ),
        "radam" => (base, sched(0)),
        other => {
            bail!("unknown variant {other:?}: use adam, adam-warmup, adam-eps, adam-2k, radam")
        }
    };
    params.validate()?;
    schedule.build()?; // refuse bad schedule settings before any training
    Ok(Variant {
        name: name.to_string(),
        optimizer: name.to_string(),
        params,
        schedule,
        precision: PrecisionSpec::plain(args.dtype),
    })
}

#[derive(Serialize)]
struct Summary<'a> {
    preset: Preset,
    model: &'a ModelConfig,
    n_params: usize,
    steps: u64,
    max_tokens: usize,
    lr: f64,
    betas: &'a [f64],
    data: String,
    tokenizer: Option<String>,
    train_pairs: usize,
    valid_pairs: usize,
    /// The set translated at the end ("test" or "valid") and how many of its sentences.
    eval_set: &'static str,
    eval_sentences: usize,
    beam: usize,
    device: String,
    seed: u64,
    /// Every setting that affects the results (what `--merge` compares), with fingerprints of
    /// the data and of the tokenizer.
    settings: serde_json::Value,
    wall_seconds: f64,
    variants: &'a [VariantResult],
}

/// The title of `curves.png`, from a `summary.json` (of a run or of a merge).
fn plot_title(summary: &serde_json::Value) -> String {
    let settings = &summary["settings"];
    let params = match (settings["dtype"].as_str(), settings["precisions_of"].as_str()) {
        (_, Some(variant)) => format!("{variant} per precision"),
        (Some(dtype), None) => dtype.to_string(),
        (None, None) => "f32".to_string(), // written before the dtype was recorded
    };
    format!(
        "{} | {} params ({}), {}+{} layers post-LN | lr {} betas ({}, {}) | {} steps",
        summary["data"].as_str().unwrap_or(""),
        summary["n_params"],
        params,
        summary["model"]["enc_layers"],
        summary["model"]["dec_layers"],
        summary["lr"],
        summary["betas"][0],
        summary["betas"][1],
        summary["steps"]
    )
}

/// `curves.csv`, `curves.png` and `summary.json` for the variants trained so far.
fn write_outputs(
    out: &std::path::Path,
    results: &[VariantResult],
    title: &str,
    summary: &impl Serialize,
) -> Result<()> {
    let mut csv = std::fs::File::create(out.join("curves.csv"))?;
    writeln!(csv, "step,variant,lr,train_loss,valid_loss,valid_ppl,gnorm,precision")?;
    for r in results {
        for p in &r.curve {
            let opt = |x: Option<f64>| x.map(|v| format!("{v:.6}")).unwrap_or_default();
            writeln!(
                csv,
                "{},{},{:.6e},{:.6},{},{},{},{}",
                p.step,
                r.variant,
                p.lr,
                p.train_loss,
                opt(p.valid_loss),
                opt(p.valid_ppl),
                opt(p.gnorm),
                r.precision
            )?;
        }
    }
    plot::plot_curves(results, title, &out.join("curves.png"))?;
    std::fs::write(out.join("summary.json"), serde_json::to_string_pretty(summary)?)?;
    Ok(())
}

/// The results as a Markdown table on stdout: the optimizer variant, the precision (parameter
/// dtype, update mode, state format) and the optimizer's state in bytes per parameter (`?` for a
/// run written before it was recorded), then the scores.
fn print_table(results: &[VariantResult], eval_name: &str) {
    println!("{}", table(results, eval_name));
}

/// The table of [`print_table`].
fn table(results: &[VariantResult], eval_name: &str) -> String {
    use std::fmt::Write as _;
    let mut t = String::new();
    let _ = writeln!(
        t,
        "| optimizer | precision | opt. state B/param | final train loss | final valid ppl | best valid ppl | {e} BLEU | {e} BLEU lowercased | {e} BLEU tokenize=none | chrF | ms/step | tokens/s | skipped steps |",
        e = eval_name
    );
    let _ = writeln!(t, "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for r in results {
        let sc = r.scores.unwrap_or_default();
        let train_loss = r.curve.last().map_or(f64::NAN, |p| p.train_loss);
        let optimizer = if r.optimizer.is_empty() { &r.variant } else { &r.optimizer };
        let state = r.state_bytes_per_param.map_or("?".to_string(), |b| format!("{b:.2}"));
        let _ = writeln!(
            t,
            "| {} | {} | {} | {:.4} | {:.3} | {:.3} | {:.2} | {:.2} | {:.2} | {:.2} | {:.1} | {:.0} | {} |",
            optimizer,
            r.precision,
            state,
            train_loss,
            r.final_valid_ppl,
            r.best_valid_ppl,
            sc.bleu,
            sc.bleu_lc,
            sc.bleu_tok,
            sc.chrf,
            r.ms_per_step,
            r.tokens_per_s,
            r.skipped_steps
        );
    }
    t.pop(); // the last newline: println! adds one
    t
}

/// The settings that affect a run's results (all but paths, progress and threads), resolved
/// against the preset, with FNV-1a fingerprints of the tokenized data (train, valid and the
/// evaluation set with its references) and of the tokenizer. Runs merged by `--merge` must
/// agree on all of them.
fn settings(
    args: &Args,
    pv: &PresetValues,
    loaded: &source::Loaded,
    tokenizer_fp: Option<String>,
    precisions_of: Option<&str>,
) -> serde_json::Value {
    use subword::fingerprint;
    let pair_lines = |pairs: &[data::Pair]| -> Vec<String> {
        pairs.iter().map(|p| format!("{}\t{}", p.src.join(" "), p.tgt.join(" "))).collect()
    };
    let c = &loaded.corpus;
    let lines: Vec<String> = [pair_lines(&c.train), pair_lines(&c.valid), pair_lines(&loaded.eval)]
        .concat()
        .into_iter()
        .chain(loaded.eval_refs.iter().cloned())
        .collect();
    let data_fp = fingerprint(lines.iter().map(String::as_str));
    let single = args.optimizer.is_some();
    // The parameter dtype of every variant (--dtype), or, in a precision comparison, the one
    // optimizer variant compared: each result then carries its own precision.
    let dtype = precisions_of.is_none().then(|| args.dtype.name());
    serde_json::json!({
        "dtype": dtype,
        "precisions_of": precisions_of,
        "lr": args.lr.unwrap_or(pv.lr),
        "betas": args.betas,
        "eps": args.eps,
        "weight_decay": args.weight_decay.unwrap_or(pv.weight_decay),
        "decoupled_wd": args.decoupled_wd,
        "warmup": args.warmup.unwrap_or(if single { 0 } else { pv.warmup }),
        "warmup_init_lr": args.warmup_init_lr,
        "decay": format!("{:?}", args.decay),
        "adam_freeze": args.adam_freeze.unwrap_or(if single { 0 } else { pv.adam_freeze }),
        "label_smoothing": args.label_smoothing,
        "clip_norm": args.clip_norm,
        "eval_every": args.eval_every.unwrap_or(pv.eval_every).max(1),
        "bleu_sentences": args.bleu_sentences,
        "subword": format!("{:?}", args.subword),
        "vocab_size": if args.subword == SubwordKind::None { None } else { Some(args.vocab_size) },
        "joined_vocab": args.joined_vocab,
        "max_len": args.max_len,
        "remove_bpe": args.remove_bpe,
        "resumed": args.resume.is_some(),
        "device": format!("{:?}", args.device),
        "train_pairs": c.train.len(),
        "valid_pairs": c.valid.len(),
        "eval_pairs": loaded.eval.len(),
        "data_fingerprint": data_fp,
        "tokenizer_fingerprint": tokenizer_fp,
    })
}

/// The runs of a precision comparison: the one variant in `variants` once per spec of
/// `specs`, each labelled with its spec's canonical name.
fn precision_runs(variants: &[Variant], specs: &[String]) -> Result<Vec<Variant>> {
    let [base] = variants else {
        bail!("--precisions compares one optimizer variant: give --compare one variant")
    };
    let mut runs: Vec<Variant> = Vec::with_capacity(specs.len());
    for s in specs {
        let precision = PrecisionSpec::parse(s)?;
        let name = precision.to_string();
        if runs.iter().any(|r| r.name == name) {
            bail!("--precisions: {name} occurs twice");
        }
        runs.push(Variant { name, precision, ..base.clone() });
    }
    Ok(runs)
}

fn run(args: Args) -> Result<Vec<VariantResult>> {
    // Unusable output paths fail here, before any work, and leave nothing behind.
    outdir::check_writable(&args.out, "--out")?;
    if let Some(dir) = &args.save {
        outdir::check_writable(dir, "--save")?;
    }
    if let Some(dirs) = &args.merge {
        let results = merge::merge(dirs, &args.out)?;
        let summary: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(args.out.join("summary.json"))?)?;
        print_table(&results, summary["eval_set"].as_str().unwrap_or("eval"));
        println!("merged into {}", args.out.display());
        return Ok(results);
    }
    let wall = Instant::now();
    let pv = args.preset.values();
    let dev = device(args.device)?;
    if args.betas.len() != 2 {
        bail!("--betas takes two values, e.g. --betas 0.9,0.98");
    }

    let data_spec = match (&args.multi30k, &args.train_src) {
        (Some(dir), _) => {
            DataSpec::Files(text::multi30k_files(dir, &args.src_lang, &args.tgt_lang)?)
        }
        (None, Some(train_src)) => DataSpec::Files(ParallelFiles {
            train: (train_src.clone(), args.train_tgt.clone().unwrap()),
            valid: (args.valid_src.clone().unwrap(), args.valid_tgt.clone().unwrap()),
            test: args.test_src.clone().zip(args.test_tgt.clone()),
        }),
        (None, None) => DataSpec::Synthetic {
            n_train: args.n_train.unwrap_or(pv.n_train),
            n_valid: args.n_valid.unwrap_or(pv.n_valid),
            seed: args.seed,
        },
    };
    let loaded = source::load(
        &data_spec,
        &TokenizeSpec {
            kind: args.subword,
            vocab_size: args.vocab_size,
            tokenizer: args.tokenizer.clone(),
            resume: args.resume.clone(),
            out: args.out.clone(),
            joined_vocab: args.joined_vocab,
            remove_bpe: args.remove_bpe,
            max_len: args.max_len,
        },
    )?;
    let corpus = &loaded.corpus;
    let data_desc = loaded.description.clone();
    let joint = args.joined_vocab || loaded.tokenizer.is_some();
    let train_data = Dataset::encode(&corpus.train, &corpus.src_vocab, &corpus.tgt_vocab);
    let valid_data = Dataset::encode(&corpus.valid, &corpus.src_vocab, &corpus.tgt_vocab);
    let eval_data = Dataset::encode(&loaded.eval, &corpus.src_vocab, &corpus.tgt_vocab);

    let layers = args.layers.unwrap_or(pv.layers);
    let model_cfg = ModelConfig {
        src_vocab: corpus.src_vocab.len(),
        tgt_vocab: corpus.tgt_vocab.len(),
        d_model: args.d_model.unwrap_or(pv.d_model),
        heads: args.heads.unwrap_or(pv.heads),
        ffn: args.ffn.unwrap_or(pv.ffn),
        enc_layers: layers,
        dec_layers: args.dec_layers.unwrap_or(layers),
        dropout: args.dropout.unwrap_or(pv.dropout),
        share: args.share,
    };
    if model_cfg.share == ShareEmbed::All && !joint {
        bail!("--share all needs one vocabulary for both languages: --joined-vocab (or a subword model, always joint)");
    }
    let steps = args.steps.unwrap_or(pv.steps);
    let cfg = TrainConfig {
        model: model_cfg.clone(),
        steps,
        max_tokens: args.max_tokens.unwrap_or(pv.max_tokens),
        label_smoothing: args.label_smoothing,
        clip_norm: args.clip_norm,
        eval_every: args.eval_every.unwrap_or(pv.eval_every).max(1),
        log_every: args.log_every.max(1),
        bleu_sentences: args.bleu_sentences,
        max_decode_extra: 10,
        beam: args.beam.unwrap_or(if loaded.eval_name == "test" { 5 } else { 1 }),
        seed: args.seed,
        save: None,
        resume: None,
        progress: !args.quiet,
    };

    let variants: Vec<Variant> = match (&args.optimizer, &args.compare) {
        (Some(opt), _) => {
            let lr = args.lr.unwrap_or(pv.lr);
            let name = match opt {
                Opt::Radam => "radam",
                Opt::Adam => "adam",
            };
            let mut v = make_variant(name, &args, &pv, steps)?;
            v.schedule = Schedule {
                lr,
                warmup: args.warmup.unwrap_or(0),
                warmup_init: args.warmup_init_lr,
                decay: args.decay,
                total: steps,
            };
            v.schedule.build()?;
            if let Some(n) = args.adam_freeze {
                v.params.v_only_steps = n;
            }
            vec![v]
        }
        (None, Some(list)) => {
            list.iter().map(|n| make_variant(n.trim(), &args, &pv, steps)).collect::<Result<_>>()?
        }
        // A precision comparison trains radam unless told otherwise.
        (None, None) if args.precisions.is_some() => {
            vec![make_variant("radam", &args, &pv, steps)?]
        }
        (None, None) => ["adam", "adam-warmup", "radam"]
            .iter()
            .map(|n| make_variant(n, &args, &pv, steps))
            .collect::<Result<_>>()?,
    };
    if variants.is_empty() {
        bail!("--compare: no variant given");
    }
    // A precision comparison: the one variant once per spec.
    let precisions_of = args.precisions.as_ref().map(|_| variants[0].name.clone());
    let variants = match &args.precisions {
        None => variants,
        Some(specs) => precision_runs(&variants, specs)?,
    };

    let n_params: usize = {
        let m = model::build(&model_cfg, args.seed, candle_core::DType::F32, &Device::Cpu)?;
        m.varmap.all_vars().iter().map(|v| v.elem_count()).sum()
    };
    eprintln!(
        "data: {data_desc}: {} train / {} valid pairs, vocab {} / {}; model: {} params ({}+{} layers, d {}, ffn {}, {} heads); {} steps of <= {} tokens; device {:?}",
        corpus.train.len(), corpus.valid.len(), model_cfg.src_vocab, model_cfg.tgt_vocab, n_params,
        model_cfg.enc_layers, model_cfg.dec_layers, model_cfg.d_model, model_cfg.ffn, model_cfg.heads, steps, cfg.max_tokens, dev
    );

    // Input is good: from here on outputs are written.
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("cannot create {}", args.out.display()))?;
    let mut tokenizer_desc = None;
    let run_settings = settings(
        &args,
        &pv,
        &loaded,
        loaded.tokenizer.as_ref().map(|(sw, _)| sw.fingerprint()),
        precisions_of.as_deref(),
    );
    if let Some((sw, origin)) = &loaded.tokenizer {
        let meta = match origin {
            TokenizerOrigin::Learned(m) => Some(m.clone()),
            TokenizerOrigin::Loaded(_, m) => m.clone(),
        };
        let here = args.out.join("tokenizer.json");
        let same_file =
            matches!(origin, TokenizerOrigin::Loaded(p, _) if outdir::same_path(p, &here));
        if !same_file {
            sw.save(&here, meta.as_ref())?;
        }
        // Every checkpoint directory gets the vocabulary it needs for --resume.
        if let Some(dir) = &args.save {
            let mut dirs = vec![dir.clone()];
            if variants.len() > 1 {
                dirs.extend(variants.iter().map(|v| dir.join(&v.name)));
            }
            for d in dirs {
                std::fs::create_dir_all(&d)
                    .with_context(|| format!("cannot create {}", d.display()))?;
                sw.save(&d.join("tokenizer.json"), meta.as_ref())?;
            }
        }
        tokenizer_desc = Some(match origin {
            TokenizerOrigin::Learned(m) => format!(
                "learned: joint {:?}, {} entries, saved as {}",
                m.kind,
                corpus.tgt_vocab.len(),
                here.display()
            ),
            TokenizerOrigin::Loaded(p, _) => {
                format!("{}, {} entries", p.display(), corpus.tgt_vocab.len())
            }
        });
        eprintln!("tokenizer: {}", tokenizer_desc.as_ref().unwrap());
    }

    let many = variants.len() > 1;
    let mut results = Vec::new();
    for v in &variants {
        let sub = |d: &Option<PathBuf>| {
            d.as_ref().map(|d| if many { d.join(&v.name) } else { d.clone() })
        };
        let vcfg = TrainConfig { save: sub(&args.save), resume: sub(&args.resume), ..cfg.clone() };
        let mut r = train_variant(v, &vcfg, &train_data, &valid_data, &eval_data, &dev)
            .with_context(|| format!("training {}", v.name))?;
        // Translations, one line per line of the evaluation set's source, and their scores.
        if !r.diverged {
            let hyps: Vec<String> =
                r.hyps.iter().map(|h| loaded.detok.text(h)).collect::<Result<_>>()?;
            let hyp_path = args.out.join(outdir::hyp_file(&r.variant));
            std::fs::write(&hyp_path, hyps.iter().map(|h| format!("{h}\n")).collect::<String>())
                .with_context(|| format!("cannot write {}", hyp_path.display()))?;
            r.scores = Some(sacrebleu::score_all(&hyps, &loaded.eval_refs[..hyps.len()]));
        }
        let sc = r.scores.unwrap_or_default();
        eprintln!(
            "{:>12}: valid ppl {:.3} (best {:.3}); {} BLEU {:.2} (lowercased {:.2}, tokenize=none {:.2}), chrF {:.2}; {:.1} ms/step, {:.0} tokens/s{}",
            r.variant,
            r.final_valid_ppl,
            r.best_valid_ppl,
            loaded.eval_name,
            sc.bleu,
            sc.bleu_lc,
            sc.bleu_tok,
            sc.chrf,
            r.ms_per_step,
            r.tokens_per_s,
            if r.diverged { " (diverged)" } else { "" }
        );
        results.push(r);
        // Written after every variant, so that a long comparison keeps what it has done.
        let summary = Summary {
            preset: args.preset,
            model: &model_cfg,
            n_params,
            steps,
            max_tokens: cfg.max_tokens,
            lr: args.lr.unwrap_or(pv.lr),
            betas: &args.betas,
            data: data_desc.clone(),
            tokenizer: tokenizer_desc.clone(),
            train_pairs: corpus.train.len(),
            valid_pairs: corpus.valid.len(),
            eval_set: loaded.eval_name,
            eval_sentences: results.last().map(|r| r.hyps.len()).unwrap_or(0),
            beam: cfg.beam,
            device: format!("{dev:?}"),
            seed: args.seed,
            settings: run_settings.clone(),
            wall_seconds: wall.elapsed().as_secs_f64(),
            variants: &results,
        };
        write_outputs(
            &args.out,
            &results,
            &plot_title(&serde_json::to_value(&summary)?),
            &summary,
        )?;
        if results.len() == 1 {
            // The directory now describes this run: translations of other variants, left by an
            // earlier run into it, would pass for this run's.
            let keep: Vec<&str> = variants.iter().map(|v| v.name.as_str()).collect();
            let stale = outdir::remove_stale_hyps(&args.out, &keep)?;
            if !stale.is_empty() {
                eprintln!(
                    "removed {} of an earlier run in {}",
                    stale.join(", "),
                    args.out.display()
                );
            }
        }
    }

    print_table(&results, loaded.eval_name);
    println!(
        "wall time {:.1} s; wrote {}/{{curves.csv,curves.png,summary.json,hyp.<variant>.txt{}}}",
        wall.elapsed().as_secs_f64(),
        args.out.display(),
        if loaded.tokenizer.is_some() { ",tokenizer.json" } else { "" }
    );
    Ok(results)
}

fn main() -> Result<()> {
    keep_freed_memory();
    let args = Args::parse();
    if args.threads > 0 && std::env::var_os("RAYON_NUM_THREADS").is_none() {
        // Read by candle on every kernel launch; set before any runs, while single-threaded.
        std::env::set_var("RAYON_NUM_THREADS", args.threads.to_string());
    }
    run(args)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Tensor, Var};
    use candle_nn::Optimizer;
    use candle_radam::RAdam;

    /// Tiny, quiet runs; `--out` defaults to a fresh path per call (tests run in parallel and
    /// must not share `out/nmt`); an `--out` in `extra` overrides it.
    fn args(extra: &[&str]) -> Args {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let out = std::env::temp_dir().join(format!("nmt-test-{}-{n}", std::process::id()));
        let out = out.to_str().unwrap().to_string();
        let mut v = vec!["nmt", "--preset", "tiny", "--quiet", "--out", &out];
        v.extend_from_slice(extra);
        Args::try_parse_from(v).unwrap()
    }

    /// The Adam-2k variant: during the first N steps neither the parameter nor the first moment
    /// moves; afterwards the update is Adam's with m started fresh and v accumulated over all steps.
    #[test]
    fn adam_2k_freezes_params_and_first_moment() -> candle_core::Result<()> {
        let dev = Device::Cpu;
        let x = Var::from_slice(&[1.0f32, -2.0], 2, &dev)?;
        let (lr, b2, n) = (0.1, 0.98, 3u64);
        let p = ParamsRAdam {
            lr,
            beta1: 0.9,
            beta2: b2,
            rectify: false,
            v_only_steps: n,
            ..Default::default()
        };
        let mut opt = RAdam::new(vec![x.clone()], p)?;
        let grads = [[-5.0f32, 3.0], [-4.0, 2.0], [-6.0, 1.0], [1.0, 0.5]];
        for (t, g) in grads.iter().enumerate() {
            let gt = Tensor::from_slice(g, 2, &dev)?;
            let loss = (x.as_tensor() * &gt)?.sum_all()?;
            opt.step(&loss.backward()?)?;
            let now = x.as_tensor().to_vec1::<f32>()?;
            if (t as u64) < n {
                assert_eq!(now, vec![1.0, -2.0], "moved during the freeze at step {}", t + 1);
            }
        }
        // Step 4: m_hat = g4 (a fresh first moment, as if the frozen steps never touched it),
        // v_hat = v_4 / (1 - b2^4) over all four gradients.
        let now = x.as_tensor().to_vec1::<f32>()?;
        for (i, start) in [1.0f64, -2.0].iter().enumerate() {
            let mut v = 0.0f64;
            for g in &grads {
                v = b2 * v + (1.0 - b2) * (g[i] as f64).powi(2);
            }
            let v_hat = v / (1.0 - b2.powi(4));
            let expect = start - lr * grads[3][i] as f64 / (v_hat.sqrt() + 1e-8);
            assert!((now[i] as f64 - expect).abs() < 1e-5, "param {i}: {} vs {expect}", now[i]);
        }
        assert_eq!(opt.step_count(), 4);
        Ok(())
    }

    #[test]
    fn variants_differ_only_where_named() -> Result<()> {
        let a = args(&[]);
        let pv = a.preset.values();
        let v = |n| make_variant(n, &a, &pv, 40).unwrap();
        assert!(!v("adam").params.rectify && v("adam").schedule.warmup == 0);
        assert_eq!(v("adam-warmup").schedule.warmup, pv.warmup);
        assert_eq!(v("adam-eps").params.eps, 1e-4);
        assert_eq!(v("adam-2k").params.v_only_steps, pv.adam_freeze);
        assert!(v("radam").params.rectify && v("radam").schedule.warmup == 0);
        assert_eq!(v("radam").params.beta2, 0.98);
        assert!(make_variant("sgd", &a, &pv, 40).is_err());
        Ok(())
    }

    /// `--clip-norm` reaches the optimizer's fused clipping: with a bound far below the logged
    /// gnorm the run differs from the unclipped one; with a bound far above it is bit-identical.
    #[test]
    fn clip_norm_uses_the_fused_clipping() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let go = |clip: &str, name: &str| -> Result<Vec<f64>> {
            let out = dir.path().join(name);
            let mut a = vec!["--optimizer", "radam", "--steps", "8", "--log-every", "1"];
            a.extend_from_slice(&["--clip-norm", clip, "--out", out.to_str().unwrap()]);
            let res = run(args(&a))?;
            Ok(res[0].curve.iter().map(|p| p.train_loss).collect())
        };
        let free = go("0", "free")?;
        assert_eq!(go("1e30", "loose")?, free);
        assert_ne!(go("1e-3", "tight")?, free);
        Ok(())
    }

    #[test]
    fn tiny_end_to_end_loss_falls_and_outputs_are_written() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let out = dir.path().join("out");
        let res = run(args(&[
            "--compare",
            "adam,radam",
            "--out",
            out.to_str().unwrap(),
            "--steps",
            "40",
        ]))?;
        assert_eq!(res.len(), 2);
        for r in &res {
            let first = r.curve.first().unwrap().train_loss;
            let last = r.curve.last().unwrap().train_loss;
            assert!(last < first - 0.5, "{}: loss {first} -> {last}", r.variant);
            assert!(r.final_valid_ppl.is_finite() && r.final_valid_ppl < (first).exp());
            let sc = r.scores.unwrap();
            assert!((0.0..=100.0).contains(&sc.bleu) && (0.0..=100.0).contains(&sc.chrf));
            // The unclipped global norm is logged (fused into the step) at every point.
            assert!(r.curve.iter().all(|p| p.gnorm.is_some_and(|g| g.is_finite() && g > 0.0)));
        }
        for f in ["curves.csv", "curves.png", "summary.json"] {
            assert!(out.join(f).metadata()?.len() > 100, "{f}");
        }
        let csv = std::fs::read_to_string(out.join("curves.csv"))?;
        assert!(csv.lines().any(|l| l.contains(",radam,")));
        Ok(())
    }

    #[test]
    fn checkpoint_resume_continues_where_it_stopped() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let ck = dir.path().join("ck");
        let o = |n: &str| dir.path().join(n).to_str().unwrap().to_string();
        // 20 steps straight vs 10 + resume 10: same final valid loss (no dropout in tiny; a
        // constant lr, since a linear decay depends on --steps).
        let full = run(args(&[
            "--optimizer",
            "radam",
            "--decay",
            "constant",
            "--steps",
            "20",
            "--out",
            &o("a"),
        ]))?;
        run(args(&[
            "--optimizer",
            "radam",
            "--decay",
            "constant",
            "--steps",
            "10",
            "--save",
            ck.to_str().unwrap(),
            "--out",
            &o("b"),
        ]))?;
        assert!(ck.join("model.safetensors").exists() && ck.join("optimizer.safetensors").exists());
        let resumed = run(args(&[
            "--optimizer",
            "radam",
            "--decay",
            "constant",
            "--steps",
            "20",
            "--resume",
            ck.to_str().unwrap(),
            "--out",
            &o("c"),
        ]))?;
        assert_eq!(resumed[0].steps, 20);
        let (a, b) = (full[0].final_valid_loss, resumed[0].final_valid_loss);
        assert!((a - b).abs() < 1e-4 * a.abs().max(1.0), "{a} vs {b}");
        Ok(())
    }

    /// `--precisions`: one run of radam per spec, from the same initialization and data order,
    /// labelled by the spec's canonical name, in every output; `--dtype` sets the parameters
    /// of every variant.
    #[test]
    fn precision_comparison_trains_one_run_per_spec() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let out = dir.path().join("out");
        let o = out.to_str().unwrap();
        let res = run(args(&["--precisions", "f32,BF16,f16:nearest", "--out", o]))?;
        let names: Vec<&str> = res.iter().map(|r| r.variant.as_str()).collect();
        assert_eq!(names, ["f32", "bf16:nearest", "f16:nearest"]);
        for r in &res {
            assert_eq!(r.precision, r.variant);
            let first = r.curve.first().unwrap().train_loss;
            let last = r.curve.last().unwrap().train_loss;
            assert!(last < first - 0.5, "{}: loss {first} -> {last}", r.variant);
            assert!(out.join(outdir::hyp_file(&r.variant)).exists());
            assert_eq!(r.optimizer, "radam");
        }
        // The portable file names: `:` written `-`.
        assert!(out.join("hyp.bf16-nearest.txt").exists());
        // The same start (f32 values rounded to nearest): the first losses agree to within the
        // rounding; the trajectories differ.
        let first: Vec<f64> = res.iter().map(|r| r.curve[0].train_loss).collect();
        assert!((first[0] - first[1]).abs() < 0.05 && (first[0] - first[2]).abs() < 0.05);
        assert_ne!(res[0].curve, res[1].curve);
        let csv = std::fs::read_to_string(out.join("curves.csv"))?;
        assert!(
            csv.starts_with("step,variant,lr,train_loss,valid_loss,valid_ppl,gnorm,precision\n")
        );
        assert!(csv
            .lines()
            .skip(1)
            .any(|l| l.contains(",bf16:nearest,") && l.ends_with(",bf16:nearest")));
        let summary: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("summary.json"))?)?;
        assert_eq!(summary["settings"]["precisions_of"], "radam");
        assert_eq!(summary["settings"]["dtype"], serde_json::Value::Null);
        assert_eq!(summary["variants"][1]["precision"], "bf16:nearest");
        assert_eq!(summary["variants"][1]["optimizer"], "radam");
        // f32 moments: 8 bytes per parameter; bf16 / f16 with round to nearest keep no buffer.
        for v in summary["variants"].as_array().unwrap() {
            assert_eq!(v["state_bytes_per_param"], 8.0, "{v}");
        }
        // The table: the optimizer in one column, the precision in the other, the state bytes.
        let t = table(&res, "valid");
        assert!(t.lines().nth(4).unwrap().starts_with("| radam | f16:nearest | 8.00 | "), "{t}");
        let columns = |l: &str| l.matches('|').count();
        assert!(t.lines().all(|l| columns(l) == 14), "{t}"); // The f32 run of a comparison is the plain run.
        let plain = run(args(&["--compare", "radam"]))?;
        assert_eq!((plain[0].variant.as_str(), plain[0].precision.as_str()), ("radam", "f32"));
        assert_eq!(plain[0].curve, res[0].curve);
        // --dtype: every variant with those parameters, labelled by the variant.
        let half = run(args(&["--compare", "adam,radam", "--dtype", "bf16"]))?;
        assert_eq!(half[1].variant, "radam");
        assert_eq!(half[1].precision, "bf16:nearest");
        assert_eq!(half[1].curve, res[1].curve);
        // --optimizer or a single --compare picks the variant compared.
        let adam = run(args(&["--precisions", "bf16", "--compare", "adam"]))?;
        assert_eq!(adam[0].curve, half[0].curve);
        Ok(())
    }

    #[test]
    fn bad_precision_flags_are_reported() {
        for (flags, says) in [
            (&["--precisions", "bf16:bogus"][..], "unknown update mode \"bogus\""),
            (&["--precisions", "f32,bf16,bf16:nearest"], "bf16:nearest occurs twice"),
            (&["--precisions", "f32", "--compare", "adam,radam"], "one optimizer variant"),
            (&["--precisions", "f64"], "unknown parameter dtype"),
        ] {
            let e = run(args(flags)).unwrap_err().to_string();
            assert!(e.contains(says), "{flags:?}: {e}");
        }
        assert!(Args::try_parse_from(["nmt", "--dtype", "bf16", "--precisions", "f32"]).is_err());
        assert!(Args::try_parse_from(["nmt", "--dtype", "f64"]).is_err());
    }

    /// Half-precision runs save and resume (f16 with its loss scale and skipped steps), and a
    /// checkpoint refuses a run with other parameters.
    #[test]
    fn precision_checkpoints_resume_and_refuse_another_dtype() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let ck = dir.path().join("ck");
        let o = |n: &str| dir.path().join(n).to_str().unwrap().to_string();
        let go = |steps: &str, extra: &[&str], out: &str| {
            let mut a = vec!["--precisions", "bf16,f16", "--decay", "constant", "--steps", steps];
            a.extend_from_slice(extra);
            a.extend_from_slice(&["--out", out]);
            run(args(&a))
        };
        let full = go("20", &[], &o("a"))?;
        go("10", &["--save", ck.to_str().unwrap()], &o("b"))?;
        let meta: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(ck.join("f16:nearest/meta.json"))?)?;
        assert_eq!(meta["precision"], "f16:nearest");
        assert_eq!(meta["step"], 10);
        let resumed = go("20", &["--resume", ck.to_str().unwrap()], &o("c"))?;
        for (a, b) in full.iter().zip(&resumed) {
            assert_eq!(b.steps, 20);
            assert_eq!(a.skipped_steps, b.skipped_steps, "{}", a.variant);
            let (x, y) = (a.final_valid_loss, b.final_valid_loss);
            assert!((x - y).abs() < 1e-4 * x.abs().max(1.0), "{}: {x} vs {y}", a.variant);
        }
        // The optimizer's step count leaves out the steps skipped under f16 loss scaling.
        let skipped = go("10", &[], &o("d"))?[1].skipped_steps;
        assert_eq!(meta["optimizer_steps"].as_u64(), Some(10 - skipped));
        let bf16 = ck.join("bf16:nearest");
        let e = format!(
            "{:#}",
            run(args(&["--optimizer", "radam", "--resume", bf16.to_str().unwrap()])).unwrap_err()
        );
        assert!(e.contains("trained with bf16:nearest parameters, this run has f32"), "{e}");
        let again = run(args(&[
            "--optimizer",
            "radam",
            "--dtype",
            "bf16",
            "--decay",
            "constant",
            "--steps",
            "20",
            "--resume",
            bf16.to_str().unwrap(),
        ]))?;
        assert_eq!(again[0].final_valid_loss, resumed[0].final_valid_loss);
        Ok(())
    }

    /// Writes the first `n` pairs of a Multi30K split as plain files `name.de` / `name.en` in
    /// `dir` (or `.gz` when `gz`).
    fn slice(
        m30k: &std::path::Path,
        split: &str,
        n: usize,
        dir: &std::path::Path,
        name: &str,
        gz: bool,
    ) -> Result<[PathBuf; 2]> {
        let mut out = Vec::new();
        for lang in ["de", "en"] {
            let lines = text::read_lines(&m30k.join(format!("{split}.{lang}.gz")))?;
            let body: String = lines[..n].iter().map(|l| format!("{l}\n")).collect();
            let p = dir.join(format!("{name}.{lang}{}", if gz { ".gz" } else { "" }));
            if gz {
                text::tests::gz(&p, body.as_bytes());
            } else {
                std::fs::write(&p, body)?;
            }
            out.push(p);
        }
        Ok([out[0].clone(), out[1].clone()])
    }

    /// The smoke run of the real-data path: 500 raw Multi30K pairs (gzipped train, plain valid
    /// and test), a learned BPE vocabulary, two variants; the loss falls, every output is
    /// written, `hyp.<variant>.txt` has one line per test line, and a second run reuses the
    /// tokenizer instead of learning another.
    #[test]
    fn raw_text_smoke_run_on_500_multi30k_pairs() -> Result<()> {
        let Some(m30k) = text::tests::multi30k_dir() else { return Ok(()) };
        let dir = tempfile::tempdir()?;
        let [trs, trt] = slice(&m30k, "train", 500, dir.path(), "train", true)?;
        let [vas, vat] = slice(&m30k, "val", 40, dir.path(), "val", false)?;
        let [tes, tet] = slice(&m30k, "test_2016_flickr", 25, dir.path(), "test", false)?;
        let out = dir.path().join("out");
        let p = |x: &PathBuf| x.to_str().unwrap().to_string();
        let flags = vec![
            "--train-src".to_string(),
            p(&trs),
            "--train-tgt".into(),
            p(&trt),
            "--valid-src".into(),
            p(&vas),
            "--valid-tgt".into(),
            p(&vat),
            "--test-src".into(),
            p(&tes),
            "--test-tgt".into(),
            p(&tet),
            "--vocab-size".into(),
            "400".into(),
            "--max-tokens".into(),
            "600".into(),
            "--beam".into(),
            "2".into(),
            "--share".into(),
            "all".into(),
            "--out".into(),
            p(&out),
        ];
        let with = |extra: &[&str]| {
            let mut v: Vec<&str> = flags.iter().map(String::as_str).collect();
            v.extend_from_slice(extra);
            args(&v)
        };
        let ck = dir.path().join("ck");
        let res = run(with(&["--compare", "adam,radam", "--steps", "60", "--save", &p(&ck)]))?;
        for r in &res {
            let first = r.curve.first().unwrap().train_loss;
            let last = r.curve.last().unwrap().train_loss;
            assert!(last < first - 0.5, "{}: loss {first} -> {last}", r.variant);
            let hyp = std::fs::read_to_string(out.join(outdir::hyp_file(&r.variant)))?;
            assert_eq!(hyp.lines().count(), 25, "{}", r.variant);
            let sc = r.scores.unwrap();
            assert!((0.0..=100.0).contains(&sc.bleu) && sc.chrf > 0.0, "{sc:?}");
        }
        for f in
            ["curves.csv", "curves.png", "summary.json", "tokenizer.json", "tokenizer.meta.json"]
        {
            assert!(out.join(f).metadata()?.len() > 50, "{f}");
        }
        let summary: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("summary.json"))?)?;
        assert_eq!(summary["eval_set"], "test");
        assert_eq!(summary["beam"], 2);
        // A later run on the same data reuses tokenizer.json (same file, same vocabulary)...
        let before = std::fs::read(out.join("tokenizer.json"))?;
        // The same variants trained one per run, then merged: the comparison's curves, scores
        // and translations (deterministic on the CPU).
        let one = |v: &str| dir.path().join(format!("one-{v}"));
        for v in ["adam", "radam"] {
            run(with(&["--compare", v, "--steps", "60", "--out", &p(&one(v))]))?;
        }
        let merged = dir.path().join("merged");
        let m = run(with(&[
            "--merge",
            &format!("{},{}", p(&one("adam")), p(&one("radam"))),
            "--out",
            &p(&merged),
        ]))?;
        assert_eq!(m.len(), 2);
        for (a, b) in res.iter().zip(&m) {
            // (summary.json round trip: serde_json parses floats to within an ulp or so)
            let close = |x: f64, y: f64| (x - y).abs() <= 1e-12 * x.abs().max(1.0);
            let (sa, sb) = (a.scores.unwrap(), b.scores.unwrap());
            assert_eq!(a.variant, b.variant);
            assert!(close(a.final_valid_ppl, b.final_valid_ppl), "{}", a.variant);
            assert!(close(sa.bleu, sb.bleu) && close(sa.chrf, sb.chrf), "{sa:?} {sb:?}");
            assert_eq!(a.curve.len(), b.curve.len(), "{}", a.variant);
            let hyp = |d: &PathBuf| std::fs::read_to_string(d.join(outdir::hyp_file(&a.variant)));
            assert_eq!(hyp(&out)?, hyp(&merged)?);
        }
        assert!(merged.join("curves.png").exists() && merged.join("tokenizer.json").exists());
        let csv = |d: &PathBuf| std::fs::read_to_string(d.join("curves.csv"));
        assert_eq!(csv(&out)?, csv(&merged)?);
        let e = format!(
            "{:#}",
            run(with(&[
                "--merge",
                &format!("{},{}", p(&out), p(&one("adam"))),
                "--out",
                &p(&merged)
            ]))
            .unwrap_err()
        );
        assert!(e.contains("occurs twice"), "{e}");
        // --resume takes the checkpoint's tokenizer (here into a fresh --out), for a comparison
        // and for one of its variants alone.
        for (what, resume) in [("adam,radam", ck.clone()), ("radam", ck.join("radam"))] {
            let out2 = dir.path().join(format!("out-{what}"));
            let r = run(with(&[
                "--compare",
                what,
                "--steps",
                "62",
                "--resume",
                &p(&resume),
                "--out",
                &p(&out2),
            ]))?;
            assert!(r.iter().all(|r| r.steps == 62), "{what}");
            assert_eq!(std::fs::read(out2.join("tokenizer.json"))?, before, "{what}");
        }
        let again = run(with(&["--optimizer", "radam", "--steps", "5"]))?;
        assert_eq!(std::fs::read(out.join("tokenizer.json"))?, before);
        assert_eq!(again.len(), 1);
        // ... and refuses one learned with other settings rather than overwrite it.
        let e = format!(
            "{:#}",
            run(with(&["--optimizer", "radam", "--vocab-size", "300"])).unwrap_err()
        );
        assert!(e.contains("tokenizer.json exists") && e.contains("300"), "{e}");
        Ok(())
    }

    /// Already-tokenized (BPE-split) text, as fairseq's IWSLT'14 files: whitespace tokens are the
    /// vocabulary, `@@ ` is undone in the hypotheses and references, no tokenizer.json.
    #[test]
    fn pretokenized_bpe_text_still_trains() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let d = |n: &str| dir.path().join(n);
        let src: String = (0..60).map(|i| format!("ein hun@@ d {i} läuft .\n")).collect();
        let tgt: String = (0..60).map(|i| format!("a do@@ g {i} runs .\n")).collect();
        for (n, t) in [("tr.de", &src), ("tr.en", &tgt)] {
            std::fs::write(d(n), t)?;
        }
        let first10 = |t: &str| t.lines().take(10).map(|l| format!("{l}\n")).collect::<String>();
        text::tests::gz(&d("va.de.gz"), first10(&src).as_bytes());
        text::tests::gz(&d("va.en.gz"), first10(&tgt).as_bytes());
        let s = |p: PathBuf| p.to_str().unwrap().to_string();
        let out = d("out");
        let res = run(args(&[
            "--train-src",
            &s(d("tr.de")),
            "--train-tgt",
            &s(d("tr.en")),
            "--valid-src",
            &s(d("va.de.gz")),
            "--valid-tgt",
            &s(d("va.en.gz")),
            "--optimizer",
            "radam",
            "--subword",
            "none",
            "--remove-bpe",
            "--joined-vocab",
            "--share",
            "all",
            "--steps",
            "30",
            "--out",
            &s(out.clone()),
        ]))?;
        let first = res[0].curve.first().unwrap().train_loss;
        let last = res[0].curve.last().unwrap().train_loss;
        assert!(last < first - 0.5, "loss {first} -> {last}");
        let hyp = std::fs::read_to_string(out.join("hyp.radam.txt"))?;
        assert_eq!(hyp.lines().count(), 10);
        assert!(!hyp.contains("@@"), "{hyp}");
        assert!(!out.join("tokenizer.json").exists());
        let summary: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("summary.json"))?)?;
        assert_eq!(summary["eval_set"], "valid");
        assert_eq!(summary["beam"], 1);
        Ok(())
    }

    /// Bad input is reported with the file (and line) and leaves no output behind.
    #[test]
    fn bad_input_writes_nothing() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let d = |n: &str| dir.path().join(n);
        std::fs::write(d("tr.de"), "Ein Hund.\nZwei Katzen.\n")?;
        std::fs::write(d("tr.en"), "A dog.\nTwo cats.\n")?;
        std::fs::write(d("va.de"), "Ein Hund.\n")?;
        std::fs::write(d("va.en"), b"A d\xf6g.\n")?;
        std::fs::write(d("short.en"), "A dog.\n")?;
        let out = d("out");
        let s = |p: PathBuf| p.to_str().unwrap().to_string();
        let try_run = |tt: &str, vt: &str| {
            run(args(&[
                "--train-src",
                &s(d("tr.de")),
                "--train-tgt",
                &s(d(tt)),
                "--valid-src",
                &s(d("va.de")),
                "--valid-tgt",
                &s(d(vt)),
                "--vocab-size",
                "100",
                "--out",
                &s(out.clone()),
            ]))
            .map(|_| ())
            .unwrap_err()
        };
        let e = format!("{:#}", try_run("tr.en", "va.en"));
        assert!(e.contains("va.en:1: invalid UTF-8 at byte 4"), "{e}");
        let e = format!("{:#}", try_run("short.en", "va.en"));
        assert!(e.contains("2 lines") && e.contains("short.en"), "{e}");
        assert!(!out.exists(), "an output directory was created for bad input");
        // --out naming a file is refused before any work.
        let e = run(args(&["--out", &s(d("tr.de"))])).unwrap_err().to_string();
        assert!(e.contains("expected a directory"), "{e}");
        // --remove-bpe only with already-tokenized text.
        let e = format!(
            "{:#}",
            run(args(&[
                "--train-src",
                &s(d("tr.de")),
                "--train-tgt",
                &s(d("tr.en")),
                "--valid-src",
                &s(d("tr.de")),
                "--valid-tgt",
                &s(d("tr.en")),
                "--remove-bpe",
                "--out",
                &s(out.clone()),
            ]))
            .unwrap_err()
        );
        assert!(e.contains("--subword none"), "{e}");
        assert!(!out.exists());
        Ok(())
    }

    /// `--merge X,Y --out X`: X's translations survive (no copy onto itself); runs that differ
    /// in any setting that affects results are refused, naming it.
    #[test]
    fn merge_keeps_inputs_and_refuses_other_settings() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let o = |n: &str| dir.path().join(n).to_str().unwrap().to_string();
        let tiny = |v: &str, out: &str, extra: &[&str]| -> Result<()> {
            let mut a = vec!["--compare", v, "--steps", "2", "--n-train", "60", "--out", out];
            a.extend_from_slice(extra);
            run(args(&a)).map(|_| ())
        };
        tiny("adam", &o("a"), &[])?;
        tiny("radam", &o("b"), &[])?;
        let hyp_a = std::fs::read_to_string(dir.path().join("a/hyp.adam.txt"))?;
        assert_eq!(hyp_a.lines().count(), 30);
        std::fs::write(dir.path().join("a/hyp.adam-2k.txt"), "stale\n")?;
        let m = run(args(&["--merge", &format!("{},{}", o("a"), o("b")), "--out", &o("a")]))?;
        assert_eq!(m.len(), 2);
        assert_eq!(std::fs::read_to_string(dir.path().join("a/hyp.adam.txt"))?, hyp_a);
        assert!(dir.path().join("a/hyp.radam.txt").metadata()?.len() > 0);
        assert!(!dir.path().join("a/hyp.adam-2k.txt").exists());
        for (flags, setting) in [
            (&["--lr", "1e-3"][..], "lr"),
            (&["--betas", "0.8,0.98"], "betas"),
            (&["--eps", "1e-6"], "eps"),
            (&["--weight-decay", "0.01"], "weight_decay"),
            (&["--decoupled-wd"], "decoupled_wd"),
            (&["--warmup", "1"], "warmup"),
            (&["--decay", "constant"], "decay"),
            (&["--label-smoothing", "0"], "label_smoothing"),
            (&["--clip-norm", "1"], "clip_norm"),
            (&["--max-len", "5"], "max_len"),
            (&["--n-train", "61"], "data_fingerprint"),
            (&["--dtype", "bf16"], "dtype"),
        ] {
            tiny("radam", &o("c"), flags)?;
            let e = run(args(&["--merge", &format!("{},{}", o("b"), o("c")), "--out", &o("m")]))
                .unwrap_err()
                .to_string();
            assert!(e.contains(&format!(": {setting} is ")), "{flags:?}: {e}");
        }
        Ok(())
    }

    /// The runs of a precision comparison trained one per process merge into the comparison;
    /// runs of another optimizer variant or of another --dtype do not.
    #[test]
    fn precision_runs_merge_like_one_comparison() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let o = |n: &str| dir.path().join(n).to_str().unwrap().to_string();
        let go = |extra: &[&str], out: &str| -> Result<Vec<VariantResult>> {
            let mut a = vec!["--steps", "6", "--n-train", "60", "--out", out];
            a.extend_from_slice(extra);
            run(args(&a))
        };
        let half = "bf16:stochastic:3+8bit";
        let both = go(&["--precisions", &format!("f32,{half}")], &o("both"))?;
        go(&["--precisions", "f32"], &o("f32"))?;
        go(&["--precisions", half], &o("bf16"))?;
        let m = run(args(&["--merge", &format!("{},{}", o("f32"), o("bf16")), "--out", &o("m")]))?;
        assert_eq!(m.len(), 2);
        for (a, b) in both.iter().zip(&m) {
            assert_eq!((&a.variant, &a.precision), (&b.variant, &b.precision));
            assert_eq!(
                (b.optimizer.as_str(), b.state_bytes_per_param),
                ("radam", a.state_bytes_per_param)
            );
        }
        // 8-bit moments (the embeddings; tensors below 4096 elements keep f32 moments).
        let (full, q) = (m[0].state_bytes_per_param.unwrap(), m[1].state_bytes_per_param.unwrap());
        assert!(full == 8.0 && q < 6.0, "{full} {q}");
        assert!(dir.path().join("m/hyp.bf16-stochastic-3+8bit.txt").exists());
        // A summary written before `optimizer` and `state_bytes_per_param` existed, with its
        // translations under the old name: it still merges, the file under its portable name.
        let old = dir.path().join("bf16");
        let mut s: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(old.join("summary.json"))?)?;
        for v in s["variants"].as_array_mut().unwrap() {
            let v = v.as_object_mut().unwrap();
            v.remove("optimizer");
            v.remove("state_bytes_per_param");
        }
        std::fs::write(old.join("summary.json"), s.to_string())?;
        let portable = old.join("hyp.bf16-stochastic-3+8bit.txt");
        std::fs::rename(&portable, old.join(format!("hyp.{half}.txt")))?;
        let m2 =
            run(args(&["--merge", &format!("{},{}", o("f32"), o("bf16")), "--out", &o("m2")]))?;
        assert_eq!((m2[1].optimizer.as_str(), m2[1].state_bytes_per_param), ("radam", None));
        assert!(table(&m2, "valid").contains("| radam | bf16:stochastic:3+8bit | ? | "));
        assert!(dir.path().join("m2/hyp.bf16-stochastic-3+8bit.txt").exists());
        assert!(!dir.path().join(format!("m2/hyp.{half}.txt")).exists());
        let csv = |d: &str| std::fs::read_to_string(dir.path().join(d).join("curves.csv"));
        assert_eq!(csv("both")?, csv("m")?);
        for (extra, setting) in [
            (&["--precisions", "f16", "--compare", "adam"][..], "precisions_of"),
            (&["--dtype", "f16", "--compare", "radam"], "dtype"),
        ] {
            go(extra, &o("other"))?;
            let e =
                run(args(&["--merge", &format!("{},{}", o("f32"), o("other")), "--out", &o("x")]))
                    .unwrap_err()
                    .to_string();
            assert!(e.contains(&format!(": {setting} is ")), "{extra:?}: {e}");
        }
        Ok(())
    }

    /// A re-run into an --out with fewer variants removes the translations of the others.
    #[test]
    fn stale_translations_are_removed() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let out = dir.path().join("o");
        let o = out.to_str().unwrap();
        let base = ["--steps", "2", "--n-train", "60", "--out", o];
        run(args(&[&["--compare", "adam,radam"][..], &base].concat()))?;
        assert!(out.join("hyp.adam.txt").exists());
        run(args(&[&["--compare", "radam"][..], &base].concat()))?;
        assert!(!out.join("hyp.adam.txt").exists() && out.join("hyp.radam.txt").exists());
        Ok(())
    }

    /// Unusable --out or --save paths fail before any work and create nothing.
    #[test]
    fn unusable_output_paths_fail_up_front() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let file = dir.path().join("file");
        std::fs::write(&file, "x")?;
        let fresh = dir.path().join("fresh/out");
        let under_file = file.join("ck");
        let e = format!(
            "{:#}",
            run(args(&[
                "--steps",
                "2",
                "--out",
                fresh.to_str().unwrap(),
                "--save",
                under_file.to_str().unwrap()
            ]))
            .unwrap_err()
        );
        assert!(e.contains("--save"), "{e}");
        assert!(!dir.path().join("fresh").exists());
        let e = format!("{:#}", run(args(&["--out", under_file.to_str().unwrap()])).unwrap_err());
        assert!(e.contains("--out"), "{e}");
        Ok(())
    }

    /// --tokenizer never overwrites another tokenizer.json in --out.
    #[test]
    fn given_tokenizer_does_not_overwrite_another() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let d = |n: &str| dir.path().join(n);
        let de: String = (0..40).map(|i| format!("Ein Hund {i} läuft schnell.\n")).collect();
        let en: String = (0..40).map(|i| format!("A dog {i} runs fast.\n")).collect();
        for (n, t) in [("t.de", &de), ("t.en", &en)] {
            std::fs::write(d(n), t)?;
        }
        let texts: Vec<&str> = de.lines().chain(en.lines()).collect();
        let out = d("out");
        std::fs::create_dir(&out)?;
        subword::Subword::train(SubwordKind::Bpe, 100, &texts)?
            .save(&out.join("tokenizer.json"), None)?;
        subword::Subword::train(SubwordKind::Bpe, 120, &texts)?.save(&d("other.json"), None)?;
        let before = std::fs::read(out.join("tokenizer.json"))?;
        let s = |p: PathBuf| p.to_str().unwrap().to_string();
        let e = format!(
            "{:#}",
            run(args(&[
                "--train-src",
                &s(d("t.de")),
                "--train-tgt",
                &s(d("t.en")),
                "--valid-src",
                &s(d("t.de")),
                "--valid-tgt",
                &s(d("t.en")),
                "--tokenizer",
                &s(d("other.json")),
                "--out",
                &s(out.clone()),
            ]))
            .unwrap_err()
        );
        assert!(e.contains("another tokenizer"), "{e}");
        assert_eq!(std::fs::read(out.join("tokenizer.json"))?, before);
        Ok(())
    }

    /// `--help` lists every update mode and the state suffix of a `--precisions` spec, with
    /// examples that parse.
    #[test]
    fn precisions_help_lists_modes_and_state() {
        use clap::CommandFactory;
        let help = Args::command().render_long_help().to_string();
        let at = help.find("--precisions").unwrap();
        let text = &help[at..help[at..].find("--lr").map_or(help.len(), |e| at + e)];
        for says in ["nearest", "remainder (bf16 only", "kahan", "stochastic[:SEED]", "+8bit"] {
            assert!(text.contains(says), "{says}: {text}");
        }
        let examples = text.split("Examples: ").nth(1).unwrap();
        for spec in examples.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            PrecisionSpec::parse(spec).unwrap();
        }
        assert!(examples.contains("bf16:stochastic:3") && examples.contains("+8bit"));
    }

    #[test]
    fn betas_as_documented() {
        for form in [&["--betas", "0.8,0.99"][..], &["--betas", "0.8", "0.99"]] {
            assert_eq!(args(form).betas, [0.8, 0.99], "{form:?}");
        }
        assert_eq!(args(&[]).betas, [0.9, 0.98]);
        for bad in ["0.9", "0.9,0.98,0.5"] {
            let e = run(args(&["--betas", bad])).unwrap_err().to_string();
            assert!(e.contains("two values"), "{bad}: {e}");
        }
    }

    #[test]
    fn bad_arguments_are_reported() {
        assert!(Args::try_parse_from(["nmt", "--train-src", "x"]).is_err());
        let e = run(args(&["--compare", "adam,nope"])).unwrap_err().to_string();
        assert!(e.contains("nope"), "{e}");
        #[cfg(not(feature = "cuda"))]
        {
            let e = run(args(&["--device", "cuda"])).unwrap_err().to_string();
            assert!(e.contains("cuda"), "{e}");
        }
    }
}
