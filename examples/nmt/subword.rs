//! The subword vocabulary for raw text: a joint (source + target) BPE or unigram model learned
//! with Hugging Face `tokenizers`, stored as `tokenizer.json` (the format `tokenizers` and
//! `transformers` read), with a `tokenizer.meta.json` beside it that records the data and the
//! settings it was learned from, so that a later run on the same data reuses it.
//!
//! Pipeline: NFC normalization (case and everything else kept), SentencePiece-style `▁` word
//! boundaries (`Metaspace`), punctuation split off words, then the subword model. Decoding
//! reverses it: for text whose characters all occur in the training data, with single spaces
//! and no spaces at the ends, `decode(encode(s)) == nfc(s)`.

use crate::data::SPECIALS;
use anyhow::{anyhow, bail, Context, Result};
use clap::ValueEnum;
use serde::{Deserialize, Serialize};
use std::path::Path;
use tokenizers::decoders::DecoderWrapper;
use tokenizers::models::bpe::{BpeTrainerBuilder, BPE};
use tokenizers::models::unigram::{Unigram, UnigramTrainerBuilder};
use tokenizers::models::TrainerWrapper;
use tokenizers::normalizers::NFC;
use tokenizers::pre_tokenizers::metaspace::{Metaspace, PrependScheme};
use tokenizers::pre_tokenizers::punctuation::Punctuation;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::{AddedToken, SplitDelimiterBehavior, Tokenizer};

/// How the text is split into the model's tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
pub enum SubwordKind {
    /// Byte-pair encoding (Sennrich et al. 2016), learned on the training text.
    Bpe,
    /// Unigram language model (Kudo 2018, SentencePiece's default), learned on the training text.
    Unigram,
    /// The text is already tokenized (e.g. fairseq's BPE files): split on whitespace, a word
    /// vocabulary of every training token.
    None,
}

/// What a `tokenizer.json` was learned from; stored next to it as `tokenizer.meta.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SubwordMeta {
    pub kind: SubwordKind,
    pub vocab_size: usize,
    /// FNV-1a 64 of the training text (source and target lines), hex.
    pub data_fingerprint: String,
    pub train_pairs: usize,
}

/// A trained or loaded subword tokenizer whose ids `0..4` are `<pad> <s> </s> <unk>`.
#[derive(Clone)]
pub struct Subword {
    tok: Tokenizer,
}

/// FNV-1a, 64 bit, over the lines with a separator (so that line boundaries count).
pub fn fingerprint<'a, I: IntoIterator<Item = &'a str>>(lines: I) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for line in lines {
        for &b in line.as_bytes().iter().chain(b"\n") {
            h ^= b as u64;
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    format!("{h:016x}")
}

impl Subword {
    /// Learns a joint vocabulary of `vocab_size` entries (specials included) from `texts`.
    ///
    /// Errors: `kind` is [`SubwordKind::None`], `vocab_size` too small, or a `tokenizers`
    /// training error.
    pub fn train(kind: SubwordKind, vocab_size: usize, texts: &[&str]) -> Result<Self> {
        if vocab_size < 100 {
            bail!("--vocab-size {vocab_size}: use at least 100");
        }
        let specials: Vec<AddedToken> =
            SPECIALS.iter().map(|s| AddedToken::from(s.to_string(), true)).collect();
        let (mut tok, mut trainer): (Tokenizer, TrainerWrapper) = match kind {
            SubwordKind::Bpe => (
                Tokenizer::new(
                    BPE::builder()
                        .unk_token(SPECIALS[3].to_string())
                        .build()
                        .map_err(|e| anyhow!("{e}"))?,
                ),
                BpeTrainerBuilder::new()
                    .show_progress(false)
                    .vocab_size(vocab_size)
                    .min_frequency(2)
                    .special_tokens(specials)
                    .build()
                    .into(),
            ),
            SubwordKind::Unigram => (
                Tokenizer::new(Unigram::default()),
                UnigramTrainerBuilder::default()
                    .show_progress(false)
                    .vocab_size(vocab_size as u32)
                    .special_tokens(specials)
                    .unk_token(Some(SPECIALS[3].to_string()))
                    .build()
                    .map_err(|e| anyhow!("{e}"))?
                    .into(),
            ),
            SubwordKind::None => bail!("no subword model to train for --subword none"),
        };
        let metaspace = Metaspace::new('▁', PrependScheme::Always, true);
        tok.with_normalizer(Some(NFC)).map_err(|e| anyhow!("{e}"))?;
        tok.with_pre_tokenizer(Some(PreTokenizerWrapper::Sequence(Sequence::new(vec![
            PreTokenizerWrapper::Metaspace(metaspace.clone()),
            PreTokenizerWrapper::Punctuation(Punctuation::new(SplitDelimiterBehavior::Isolated)),
        ]))));
        tok.with_decoder(Some(DecoderWrapper::Metaspace(metaspace)));
        tok.train(&mut trainer, texts.iter())
            .map_err(|e| anyhow!("learning the {kind:?} vocabulary: {e}"))?;
        let s = Self { tok };
        s.check_specials().context("the learned vocabulary")?;
        Ok(s)
    }

    /// Loads a `tokenizer.json`. Errors: unreadable or not a tokenizer, or its ids 0..4 are not
    /// `<pad> <s> </s> <unk>`.
    pub fn load(path: &Path) -> Result<Self> {
        let tok = Tokenizer::from_file(path)
            .map_err(|e| anyhow!("cannot load the tokenizer {}: {e}", path.display()))?;
        let s = Self { tok };
        s.check_specials().with_context(|| format!("tokenizer {}", path.display()))?;
        Ok(s)
    }

    /// Writes `tokenizer.json` to `path` and, if given, the meta data to `tokenizer.meta.json`
    /// beside it.
    pub fn save(&self, path: &Path, meta: Option<&SubwordMeta>) -> Result<()> {
        self.tok
            .save(path, true)
            .map_err(|e| anyhow!("cannot write the tokenizer to {}: {e}", path.display()))?;
        if let Some(m) = meta {
            std::fs::write(meta_path(path), serde_json::to_string_pretty(m)?)
                .with_context(|| format!("cannot write {}", meta_path(path).display()))?;
        }
        Ok(())
    }

    fn check_specials(&self) -> Result<()> {
        for (i, s) in SPECIALS.iter().enumerate() {
            if self.tok.token_to_id(s) != Some(i as u32) {
                bail!("id {i} must be the special token {s}");
            }
        }
        Ok(())
    }

    /// FNV-1a 64 of the tokenizer's serialized model (normalizer, pre-tokenizer, vocabulary,
    /// merges, decoder), hex: equal for the same tokenizer.
    pub fn fingerprint(&self) -> String {
        fingerprint([self.tok.to_string(false).unwrap_or_default().as_str()])
    }

    /// All entries, in id order.
    pub fn vocab(&self) -> Vec<String> {
        let n = self.tok.get_vocab_size(true);
        (0..n as u32).map(|i| self.tok.id_to_token(i).unwrap_or_default()).collect()
    }

    /// The subword tokens of one sentence (no `<s>` / `</s>`).
    pub fn tokens(&self, text: &str) -> Result<Vec<String>> {
        let enc = self.tok.encode(text, false).map_err(|e| anyhow!("tokenizing {text:?}: {e}"))?;
        Ok(enc.get_tokens().to_vec())
    }

    /// Plain text from ids (special tokens dropped).
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.tok.decode(ids, true).map_err(|e| anyhow!("decoding {ids:?}: {e}"))
    }
}

/// `dir/tokenizer.json` -> `dir/tokenizer.meta.json`.
pub fn meta_path(tokenizer_json: &Path) -> std::path::PathBuf {
    tokenizer_json.with_file_name("tokenizer.meta.json")
}

/// Reads `tokenizer.meta.json` beside a `tokenizer.json`, if there is one.
pub fn read_meta(tokenizer_json: &Path) -> Result<Option<SubwordMeta>> {
    let p = meta_path(tokenizer_json);
    if !p.exists() {
        return Ok(None);
    }
    let text =
        std::fs::read_to_string(&p).with_context(|| format!("cannot read {}", p.display()))?;
    Ok(Some(serde_json::from_str(&text).with_context(|| format!("{} is malformed", p.display()))?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::text::{read_lines, tests::multi30k_dir};

    #[test]
    fn learns_a_vocabulary_and_round_trips_multi30k() -> Result<()> {
        let Some(dir) = multi30k_dir() else { return Ok(()) };
        let de = read_lines(&dir.join("train.de.gz"))?;
        let en = read_lines(&dir.join("train.en.gz"))?;
        let (de, en) = (&de[..300], &en[..300]);
        let texts: Vec<&str> = de.iter().chain(en).map(String::as_str).collect();
        for kind in [SubwordKind::Bpe, SubwordKind::Unigram] {
            let sw = Subword::train(kind, 600, &texts)?;
            let vocab = sw.vocab();
            assert_eq!(&vocab[..4], &SPECIALS, "{kind:?}");
            assert!(vocab.len() <= 600 && vocab.len() > 300, "{kind:?}: {}", vocab.len());
            let index: std::collections::HashMap<&str, u32> =
                vocab.iter().enumerate().map(|(i, t)| (t.as_str(), i as u32)).collect();
            let mut n_tokens = 0;
            for line in &texts {
                let toks = sw.tokens(line)?;
                n_tokens += toks.len();
                let ids: Vec<u32> = toks.iter().map(|t| index[t.as_str()]).collect();
                assert!(!ids.contains(&3), "{kind:?}: <unk> in a training line {line:?}");
                // Round trip: original case, punctuation and spacing (the lines are NFC).
                assert_eq!(sw.decode(&ids)?, line.trim(), "{kind:?}");
            }
            // Subwords, not characters and not words: 600 entries give a few tokens per word.
            let words: usize = texts.iter().map(|l| l.split_whitespace().count()).sum();
            let ratio = n_tokens as f64 / words as f64;
            assert!((1.1..2.5).contains(&ratio), "{kind:?}: {ratio} tokens per word");

            // Saved and loaded: the same tokens; the meta data beside it.
            let tmp = tempfile::tempdir()?;
            let p = tmp.path().join("tokenizer.json");
            let meta = SubwordMeta {
                kind,
                vocab_size: 600,
                data_fingerprint: fingerprint(texts.iter().copied()),
                train_pairs: 300,
            };
            sw.save(&p, Some(&meta))?;
            let back = Subword::load(&p)?;
            assert_eq!(back.vocab(), vocab);
            assert_eq!(back.tokens(texts[7])?, sw.tokens(texts[7])?);
            assert_eq!(read_meta(&p)?, Some(meta));
            // Unseen characters become <unk> and vanish in decoding.
            let ids: Vec<u32> = back
                .tokens("Ein Hund ☃")?
                .iter()
                .map(|t| index.get(t.as_str()).copied().unwrap_or(3))
                .collect();
            assert_eq!(back.decode(&ids)?.trim_end(), "Ein Hund");
        }
        Ok(())
    }

    #[test]
    fn bad_tokenizer_files_are_reported() {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("tokenizer.json");
        std::fs::write(&p, "{}").unwrap();
        let e = format!("{:#}", Subword::load(&p).err().unwrap());
        assert!(e.contains("cannot load the tokenizer"), "{e}");
        assert!(Subword::train(SubwordKind::Bpe, 10, &["a b"]).is_err());
        assert_ne!(fingerprint(["ab", "c"]), fingerprint(["a", "bc"]));
    }
}
