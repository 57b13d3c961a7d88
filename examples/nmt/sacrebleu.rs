//! Scores on plain (detokenized) text as the `sacrebleu` Python package 2.x computes them, so
//! that they can be compared with published numbers:
//!
//! * BLEU with the default `13a` tokenizer (mteval-v13a, `sacrebleu.tokenizers.tokenizer_13a`),
//!   optionally lowercased (`-lc`), or with `tokenize="none"` (split on whitespace only);
//!   `exp` smoothing; n-gram math in [`crate::bleu::corpus_bleu`].
//! * chrF (Popović 2015) with sacreBLEU's defaults: character n-grams of order 1..6 with
//!   whitespace removed, beta = 2, statistics summed over the corpus, no word n-grams.
//!
//! Checked against the package by `scripts/sacrebleu_reference.py` (numbers in
//! `examples/nmt/sacrebleu_reference.json`, test below).

use crate::bleu::{corpus_bleu, Bleu};
use regex::Regex;
use std::collections::HashMap;
use std::sync::OnceLock;

/// How sentences are split into words before BLEU's n-gram counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BleuTokenize {
    /// mteval-v13a, sacreBLEU's default.
    Thirteen,
    /// Whitespace only (`tokenize="none"`), for text that is already tokenized.
    None,
}

/// Python's `str.split()` with no argument: `str.isspace` differs from Rust's
/// `char::is_whitespace` in the four separators U+001C..U+001F.
fn py_split(s: &str) -> impl Iterator<Item = &str> {
    s.split(|c: char| c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c))
        .filter(|w| !w.is_empty())
}

/// sacreBLEU's `Tokenizer13a`: the mteval-v13a rules (punctuation and symbols split off, `.` and
/// `,` except between digits, `-` after a digit), returned as space-joined tokens.
pub fn tokenize_13a(line: &str) -> String {
    static RULES: OnceLock<[(Regex, &str); 4]> = OnceLock::new();
    let rules = RULES.get_or_init(|| {
        [
            // [\{-\~\[-\` -\&\(-\+\:-\@\/] of tokenizer_re.py, as hex ranges.
            (
                Regex::new(r"([\x7B-\x7E\x5B-\x60\x20-\x26\x28-\x2B\x3A-\x40\x2F])").unwrap(),
                " ${1} ",
            ),
            (Regex::new(r"([^0-9])([\.,])").unwrap(), "${1} ${2} "),
            (Regex::new(r"([\.,])([^0-9])").unwrap(), " ${1} ${2}"),
            (Regex::new(r"([0-9])(-)").unwrap(), "${1} ${2} "),
        ]
    });
    let mut line = line.replace("<skipped>", "").replace("-\n", "").replace('\n', " ");
    if line.contains('&') {
        line = line
            .replace("&quot;", "\"")
            .replace("&amp;", "&")
            .replace("&lt;", "<")
            .replace("&gt;", ">");
    }
    let mut line = format!(" {line} ");
    for (re, rep) in rules {
        line = re.replace_all(&line, *rep).into_owned();
    }
    py_split(&line).collect::<Vec<_>>().join(" ")
}

/// Corpus BLEU of hypothesis lines against one reference line each, as
/// `sacrebleu.corpus_bleu(hyps, [refs], tokenize=..., lowercase=...)`.
pub fn text_bleu(
    hyps: &[String],
    refs: &[String],
    tokenize: BleuTokenize,
    lowercase: bool,
) -> Bleu {
    assert_eq!(hyps.len(), refs.len(), "one reference per hypothesis");
    let prep = |s: &String| -> Vec<String> {
        let s = if lowercase { s.to_lowercase() } else { s.clone() };
        let s =
            s.trim_end_matches(|c: char| c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c));
        let t = match tokenize {
            BleuTokenize::Thirteen => tokenize_13a(s),
            BleuTokenize::None => s.to_string(),
        };
        py_split(&t).map(str::to_string).collect()
    };
    let h: Vec<Vec<String>> = hyps.iter().map(prep).collect();
    let r: Vec<Vec<String>> = refs.iter().map(prep).collect();
    corpus_bleu(&h, &r)
}

const CHRF_ORDER: usize = 6;
const CHRF_BETA: f64 = 2.0;

/// Counts of the `n`-grams of `c`.
fn char_ngrams(c: &[char], n: usize) -> HashMap<&[char], usize> {
    let mut m = HashMap::new();
    if c.len() >= n {
        for w in c.windows(n) {
            *m.entry(w).or_insert(0) += 1;
        }
    }
    m
}

/// Corpus chrF (0..100) as `sacrebleu.corpus_chrf(hyps, [refs])`: per order n = 1..6, the
/// character n-gram counts of hypothesis and reference (whitespace removed) and their clipped
/// matches are summed over the corpus (a sentence's hypothesis n-grams only where its
/// reference has n-grams of that order); precision and recall are averaged over the orders where
/// both counts are non-zero, and chrF = (1 + b²) P R / (b² P + R) with b = 2.
pub fn chrf(hyps: &[String], refs: &[String]) -> f64 {
    assert_eq!(hyps.len(), refs.len(), "one reference per hypothesis");
    // [hyp, ref, match] counts per order.
    let mut stats = [[0usize; 3]; CHRF_ORDER];
    for (h, r) in hyps.iter().zip(refs) {
        let hc: Vec<char> = py_split(h).flat_map(str::chars).collect();
        let rc: Vec<char> = py_split(r).flat_map(str::chars).collect();
        for (n, st) in (1..=CHRF_ORDER).zip(stats.iter_mut()) {
            let (hm, rm) = (char_ngrams(&hc, n), char_ngrams(&rc, n));
            // As sacreBLEU: hypothesis n-grams count only where the reference has some.
            if !rm.is_empty() {
                st[0] += hc.len().saturating_sub(n - 1);
            }
            st[1] += rc.len().saturating_sub(n - 1);
            st[2] += hm.iter().map(|(g, &k)| k.min(rm.get(g).copied().unwrap_or(0))).sum::<usize>();
        }
    }
    let factor = CHRF_BETA * CHRF_BETA;
    let (mut avg_p, mut avg_r, mut eff) = (0.0, 0.0, 0usize);
    for &[n_hyp, n_ref, n_match] in &stats {
        if n_hyp > 0 && n_ref > 0 {
            avg_p += n_match as f64 / n_hyp as f64;
            avg_r += n_match as f64 / n_ref as f64;
            eff += 1;
        }
    }
    if eff == 0 {
        return 0.0;
    }
    let (p, r) = (avg_p / eff as f64, avg_r / eff as f64);
    if p + r == 0.0 {
        return 0.0;
    }
    100.0 * (1.0 + factor) * p * r / (factor * p + r)
}

/// The scores the example reports for a set of translations.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TextScores {
    /// sacreBLEU's default: 13a tokenization, cased.
    pub bleu: f64,
    /// 13a tokenization, lowercased (`sacrebleu -lc`): the "tokenized, lowercased" BLEU of the
    /// Multi30K literature.
    pub bleu_lc: f64,
    /// Whitespace tokens as given (`tokenize="none"`): for already-tokenized data this is the
    /// tokenized BLEU of fairseq and multi-bleu.perl; for raw text, the detokenized output
    /// split at spaces (punctuation attached to words), not the literature's tokenized BLEU.
    pub bleu_tok: f64,
    pub chrf: f64,
}

/// All of [`TextScores`] for `hyps` against `refs`.
pub fn score_all(hyps: &[String], refs: &[String]) -> TextScores {
    TextScores {
        bleu: text_bleu(hyps, refs, BleuTokenize::Thirteen, false).score,
        bleu_lc: text_bleu(hyps, refs, BleuTokenize::Thirteen, true).score,
        bleu_tok: text_bleu(hyps, refs, BleuTokenize::None, false).score,
        chrf: chrf(hyps, refs),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every number of `sacrebleu_reference.json` (written by `scripts/sacrebleu_reference.py`
    /// with the `sacrebleu` package) to 1e-9 (absolute; scores are 0..100), and the 13a
    /// tokenization exactly.
    #[test]
    fn matches_the_sacrebleu_package() {
        let v: serde_json::Value =
            serde_json::from_str(include_str!("sacrebleu_reference.json")).unwrap();
        let strings = |x: &serde_json::Value| -> Vec<String> {
            x.as_array().unwrap().iter().map(|s| s.as_str().unwrap().to_string()).collect()
        };
        for pair in v["tokenize_13a"].as_array().unwrap() {
            let (line, expect) = (pair[0].as_str().unwrap(), pair[1].as_str().unwrap());
            assert_eq!(tokenize_13a(line), expect, "13a of {line:?}");
        }
        let cases = v["cases"].as_object().unwrap();
        assert_eq!(cases.len(), 13);
        for (name, c) in cases {
            let (h, r) = (strings(&c["hyps"]), strings(&c["refs"]));
            let got = score_all(&h, &r);
            for (metric, ours) in [
                ("bleu", got.bleu),
                ("bleu_lc", got.bleu_lc),
                ("bleu_tok", got.bleu_tok),
                ("chrf", got.chrf),
            ] {
                let theirs = c[metric].as_f64().unwrap();
                assert!(
                    (ours - theirs).abs() < 1e-9,
                    "{name} {metric}: {ours} vs sacrebleu {theirs}"
                );
            }
        }
    }

    #[test]
    fn chrf_by_hand() {
        // "ab" vs "ab": every order with n-grams (1, 2) matches fully: 100.
        assert!((chrf(&["a b".into()], &["ab".into()]) - 100.0).abs() < 1e-12);
        // "ab" vs "ac": order 1: P = R = 1/2; order 2: P = R = 0 -> averages 1/4, chrF 25.
        assert!((chrf(&["ab".into()], &["ac".into()]) - 25.0).abs() < 1e-12);
        assert_eq!(chrf(&["".into()], &["x".into()]), 0.0);
    }
}
