//! Where the sentences come from (the synthetic pair, already-tokenized text, or raw text with a
//! subword model), the evaluation set's references, and how the model's ids become text again.
//!
//! Everything here only reads: the caller writes outputs (and a newly learned tokenizer) once
//! loading has succeeded, so a bad input leaves nothing behind.

use crate::bleu::remove_bpe;
use crate::data::{self, synthetic, Corpus, Pair, SyntheticSpec, Vocab};
use crate::outdir::same_path;
use crate::subword::{self, fingerprint, Subword, SubwordKind, SubwordMeta};
use crate::text::{read_parallel_lines, ParallelFiles};
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};

/// Where the training data comes from.
pub enum DataSpec {
    Synthetic { n_train: usize, n_valid: usize, seed: u64 },
    Files(ParallelFiles),
}

/// How text becomes tokens.
#[derive(Debug, Clone)]
pub struct TokenizeSpec {
    pub kind: SubwordKind,
    /// Entries of a learned subword vocabulary (specials included).
    pub vocab_size: usize,
    /// Use this `tokenizer.json` instead of learning one.
    pub tokenizer: Option<PathBuf>,
    /// `--resume` directory: its `tokenizer.json` is used when present.
    pub resume: Option<PathBuf>,
    /// The output directory: its `tokenizer.json` is reused if it was learned from the same data
    /// with the same settings.
    pub out: PathBuf,
    /// One word vocabulary for both languages (`SubwordKind::None`; subword vocabularies are
    /// always joint).
    pub joined_vocab: bool,
    /// Undo `@@ ` BPE in translations and references (`SubwordKind::None`).
    pub remove_bpe: bool,
    /// Drop training pairs longer than this many tokens.
    pub max_len: usize,
}

/// Where a subword tokenizer came from.
pub enum TokenizerOrigin {
    /// Learned in this run: to be saved.
    Learned(SubwordMeta),
    /// Loaded from this file.
    Loaded(PathBuf, Option<SubwordMeta>),
}

/// Turns the model's target ids into a line of text.
pub enum Detokenizer {
    /// Space-joined tokens (optionally with `@@ ` BPE undone).
    Words { vocab: Vocab, remove_bpe: bool },
    /// The subword model's decoder: plain, detokenized text.
    Subword(Box<Subword>),
}

impl Detokenizer {
    pub fn text(&self, ids: &[u32]) -> Result<String> {
        match self {
            Detokenizer::Words { vocab, remove_bpe: rb } => {
                let toks = vocab.decode(ids);
                Ok(if *rb { remove_bpe(&toks) } else { toks }.join(" "))
            }
            Detokenizer::Subword(s) => s.decode(ids),
        }
    }
}

/// The loaded data.
pub struct Loaded {
    pub corpus: Corpus,
    /// The set translated at the end: the test set if there is one, else the valid set.
    pub eval: Vec<Pair>,
    pub eval_name: &'static str,
    /// One reference line per `eval` pair: the raw target line (what sacreBLEU scores against).
    pub eval_refs: Vec<String>,
    pub detok: Detokenizer,
    pub tokenizer: Option<(Subword, TokenizerOrigin)>,
    pub description: String,
}

fn eval_pairs(
    lines: &[(String, String)],
    split: &mut impl FnMut(&str) -> Result<Vec<String>>,
) -> Result<Vec<Pair>> {
    lines.iter().map(|(s, t)| Ok(Pair { src: split(s)?, tgt: split(t)? })).collect()
}

/// Finds or learns the subword model (see [`TokenizeSpec`] for the order).
fn subword_for(
    spec: &TokenizeSpec,
    train: &[(String, String)],
) -> Result<(Subword, TokenizerOrigin)> {
    let existing = spec.out.join("tokenizer.json");
    // A given tokenizer is copied to --out: never over another one (the translations and
    // checkpoints there were made with it).
    let load = |p: &Path| -> Result<(Subword, TokenizerOrigin)> {
        let sw = Subword::load(p)?;
        if existing.exists() && !same_path(p, &existing) {
            let there = Subword::load(&existing)?;
            if there.fingerprint() != sw.fingerprint() {
                bail!(
                    "{} is another tokenizer than {} (made from other data or settings); use another --out or remove it",
                    existing.display(),
                    p.display()
                );
            }
        }
        Ok((sw, TokenizerOrigin::Loaded(p.to_path_buf(), subword::read_meta(p)?)))
    };
    if let Some(p) = &spec.tokenizer {
        return load(p);
    }
    if let Some(dir) = &spec.resume {
        let p = dir.join("tokenizer.json");
        if !p.exists() {
            bail!(
                "--resume {}: no tokenizer.json there (the checkpoint's vocabulary); give it with --tokenizer",
                dir.display()
            );
        }
        return load(&p);
    }
    let meta = SubwordMeta {
        kind: spec.kind,
        vocab_size: spec.vocab_size,
        data_fingerprint: fingerprint(train.iter().flat_map(|(s, t)| [s.as_str(), t.as_str()])),
        train_pairs: train.len(),
    };
    if existing.exists() {
        match subword::read_meta(&existing)? {
            Some(m) if m == meta => return load(&existing),
            m => bail!(
                "{} exists but was learned {}; use another --out, remove it, or pass it with --tokenizer",
                existing.display(),
                match m {
                    Some(m) => format!(
                        "with other data or settings ({:?}, vocabulary {}, data {} of {} pairs; this run: {:?}, {}, {} of {})",
                        m.kind, m.vocab_size, m.data_fingerprint, m.train_pairs,
                        meta.kind, meta.vocab_size, meta.data_fingerprint, meta.train_pairs
                    ),
                    None => "by something else (no tokenizer.meta.json beside it)".to_string(),
                }
            ),
        }
    }
    let texts: Vec<&str> = train.iter().flat_map(|(s, t)| [s.as_str(), t.as_str()]).collect();
    let sw = Subword::train(spec.kind, spec.vocab_size, &texts)?;
    Ok((sw, TokenizerOrigin::Learned(meta)))
}

/// Loads the data, tokenizes it, and builds the vocabularies.
///
/// Errors: unreadable or malformed files (see `text.rs`), no usable training pair, an unusable
/// tokenizer, a `tokenizer.json` in `spec.out` learned from other data.
pub fn load(data: &DataSpec, spec: &TokenizeSpec) -> Result<Loaded> {
    let files = match data {
        DataSpec::Synthetic { n_train, n_valid, seed } => {
            let (train, valid) = synthetic(&SyntheticSpec::default(), *n_train, *n_valid, *seed);
            let corpus = Corpus::new(train, valid, spec.joined_vocab)?;
            let eval = corpus.valid.clone();
            let eval_refs = eval.iter().map(|p| p.tgt.join(" ")).collect();
            let detok = Detokenizer::Words { vocab: corpus.tgt_vocab.clone(), remove_bpe: false };
            return Ok(Loaded {
                corpus,
                eval,
                eval_name: "valid",
                eval_refs,
                detok,
                tokenizer: None,
                description: "synthetic".to_string(),
            });
        }
        DataSpec::Files(f) => f,
    };
    let read = |(s, t): &(PathBuf, PathBuf)| read_parallel_lines(s, t);
    let train_lines = read(&files.train)?;
    let valid_lines = read(&files.valid)?;
    let test_lines = files.test.as_ref().map(read).transpose()?;
    let what = format!("{} / {}", files.train.0.display(), files.train.1.display());
    // For titles: the file names only.
    let name =
        |p: &Path| p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let short = format!("{} / {}", name(&files.train.0), name(&files.train.1));
    let eval_lines = test_lines.as_ref().unwrap_or(&valid_lines);

    if spec.kind == SubwordKind::None {
        let mut split = data::split_whitespace;
        let train = data::tokenize_pairs(&train_lines, spec.max_len, &what, split)?;
        let valid = eval_pairs(&valid_lines, &mut split)?;
        let eval = eval_pairs(eval_lines, &mut split)?;
        let corpus = Corpus::new(train, valid, spec.joined_vocab)?;
        let eval_refs = eval
            .iter()
            .map(|p| if spec.remove_bpe { remove_bpe(&p.tgt) } else { p.tgt.clone() }.join(" "))
            .collect();
        let detok =
            Detokenizer::Words { vocab: corpus.tgt_vocab.clone(), remove_bpe: spec.remove_bpe };
        return Ok(Loaded {
            corpus,
            eval,
            eval_name: if test_lines.is_some() { "test" } else { "valid" },
            eval_refs,
            detok,
            tokenizer: None,
            description: format!("{short} (tokenized)"),
        });
    }
    if spec.remove_bpe {
        bail!("--remove-bpe is for already BPE-split text: add --subword none");
    }
    let (sw, origin) = subword_for(spec, &train_lines).context("the subword vocabulary")?;
    let mut split = |l: &str| sw.tokens(l);
    let train = data::tokenize_pairs(&train_lines, spec.max_len, &what, &mut split)?;
    let valid = eval_pairs(&valid_lines, &mut split)?;
    let eval = eval_pairs(eval_lines, &mut split)?;
    let vocab = Vocab::from_tokens(sw.vocab())?;
    let corpus_vocab_len = vocab.len();
    let corpus = Corpus::with_vocab(train, valid, vocab.clone(), vocab)?;
    let eval_refs = eval_lines.iter().map(|(_, t)| t.clone()).collect();
    Ok(Loaded {
        corpus,
        eval,
        eval_name: if test_lines.is_some() { "test" } else { "valid" },
        eval_refs,
        detok: Detokenizer::Subword(Box::new(sw.clone())),
        tokenizer: Some((sw, origin)),
        description: format!("{short} (raw text, subword vocabulary {corpus_vocab_len})"),
    })
}
