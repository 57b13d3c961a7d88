//! Data pipeline: vocabularies, the built-in synthetic language pair, already-tokenized parallel
//! text, token-count batching and attention masks. (Raw text: `text.rs` reads it, `subword.rs`
//! tokenizes it.)

use anyhow::{bail, Result};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use std::collections::HashMap;

pub const PAD: u32 = 0;
pub const BOS: u32 = 1;
pub const EOS: u32 = 2;
pub const UNK: u32 = 3;
pub const SPECIALS: [&str; 4] = ["<pad>", "<s>", "</s>", "<unk>"];

/// A token <-> id mapping. Ids 0..4 are `<pad> <s> </s> <unk>`.
#[derive(Debug, Clone, PartialEq)]
pub struct Vocab {
    tokens: Vec<String>,
    index: HashMap<String, u32>,
}

impl Vocab {
    /// Builds a vocabulary from tokenized sentences: every token seen, most frequent first (ties
    /// broken alphabetically, so the result does not depend on hash order).
    pub fn build<'a, I: IntoIterator<Item = &'a Vec<String>>>(sentences: I) -> Self {
        let mut counts: HashMap<&str, usize> = HashMap::new();
        for s in sentences {
            for t in s {
                *counts.entry(t.as_str()).or_default() += 1;
            }
        }
        let mut by_freq: Vec<(&str, usize)> =
            counts.into_iter().filter(|(t, _)| !SPECIALS.contains(t)).collect();
        by_freq.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
        let tokens: Vec<String> = SPECIALS
            .iter()
            .map(|s| s.to_string())
            .chain(by_freq.into_iter().map(|(t, _)| t.to_string()))
            .collect();
        let index = tokens.iter().enumerate().map(|(i, t)| (t.clone(), i as u32)).collect();
        Self { tokens, index }
    }

    /// A vocabulary in the given id order (a subword model's). Errors unless it starts with
    /// `<pad> <s> </s> <unk>` and has no duplicates.
    pub fn from_tokens(tokens: Vec<String>) -> Result<Self> {
        if tokens.len() < SPECIALS.len() || tokens[..SPECIALS.len()] != SPECIALS {
            bail!("a vocabulary must start with {SPECIALS:?}");
        }
        let index: HashMap<String, u32> =
            tokens.iter().enumerate().map(|(i, t)| (t.clone(), i as u32)).collect();
        if index.len() != tokens.len() {
            bail!("the vocabulary has duplicate entries");
        }
        Ok(Self { tokens, index })
    }

    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    pub fn id(&self, token: &str) -> u32 {
        self.index.get(token).copied().unwrap_or(UNK)
    }

    pub fn encode(&self, sentence: &[String]) -> Vec<u32> {
        sentence.iter().map(|t| self.id(t)).collect()
    }

    pub fn token(&self, id: u32) -> &str {
        self.tokens.get(id as usize).map(|s| s.as_str()).unwrap_or("<unk>")
    }

    /// Decodes ids up to (not including) the first `</s>`, dropping `<pad>` and `<s>`.
    pub fn decode(&self, ids: &[u32]) -> Vec<String> {
        ids.iter()
            .take_while(|&&i| i != EOS)
            .filter(|&&i| i != PAD && i != BOS)
            .map(|&i| self.token(i).to_string())
            .collect()
    }
}

/// A tokenized sentence pair.
#[derive(Debug, Clone, PartialEq)]
pub struct Pair {
    pub src: Vec<String>,
    pub tgt: Vec<String>,
}

/// Train / valid split with vocabularies built on the training side.
pub struct Corpus {
    pub train: Vec<Pair>,
    pub valid: Vec<Pair>,
    pub src_vocab: Vocab,
    pub tgt_vocab: Vocab,
}

impl Corpus {
    /// Vocabularies built from the training side's tokens: one for both languages
    /// (`joined_vocab`) or one per language.
    pub fn new(train: Vec<Pair>, valid: Vec<Pair>, joined_vocab: bool) -> Result<Self> {
        let (src_vocab, tgt_vocab) = if joined_vocab {
            let v = Vocab::build(train.iter().flat_map(|p| [&p.src, &p.tgt]));
            (v.clone(), v)
        } else {
            (Vocab::build(train.iter().map(|p| &p.src)), Vocab::build(train.iter().map(|p| &p.tgt)))
        };
        Self::with_vocab(train, valid, src_vocab, tgt_vocab)
    }

    /// With given vocabularies (a subword model's).
    pub fn with_vocab(
        train: Vec<Pair>,
        valid: Vec<Pair>,
        src_vocab: Vocab,
        tgt_vocab: Vocab,
    ) -> Result<Self> {
        if train.is_empty() {
            bail!("the training set is empty");
        }
        if valid.is_empty() {
            bail!("the validation set is empty");
        }
        Ok(Self { train, valid, src_vocab, tgt_vocab })
    }
}

// ---------------------------------------------------------------------------------------------
// The synthetic language pair.
//
// Source ("English-like", SVO):   det adj* noun verb det adj* noun [prep det adj* noun]
//   nouns have a singular and a plural form (`n7` / `n7s`), determiners are `the` / `a` / `some`.
// Target ("German/Japanese-like", SOV, adjectives after the noun, agreement):
//   DET.g.n NOUN ADJ.g.n* (reversed order)  OBJ-NP  [PP]  VERB.n
//   every target noun has a fixed grammatical gender (one of 3) that the source does not show;
//   determiners and adjectives agree with the noun in gender and number, the verb agrees with the
//   number of the subject; word identities are a fixed random permutation of the source words.
// So a model has to learn a lexicon, the reordering and long-distance agreement: learnable, not
// trivial.
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
pub struct SyntheticSpec {
    pub n_nouns: usize,
    pub n_adjs: usize,
    pub n_verbs: usize,
    pub n_preps: usize,
    pub max_adjs: usize,
}

impl Default for SyntheticSpec {
    fn default() -> Self {
        Self { n_nouns: 60, n_adjs: 24, n_verbs: 30, n_preps: 6, max_adjs: 2 }
    }
}

struct Lexicon {
    noun_gender: Vec<usize>,
    noun_map: Vec<usize>,
    adj_map: Vec<usize>,
    verb_map: Vec<usize>,
    prep_map: Vec<usize>,
}

fn permutation(n: usize, rng: &mut StdRng) -> Vec<usize> {
    let mut p: Vec<usize> = (0..n).collect();
    p.shuffle(rng);
    p
}

/// Generates `n_train + n_valid` sentence pairs deterministically from `seed`; the valid pairs
/// do not occur in the training set.
pub fn synthetic(
    spec: &SyntheticSpec,
    n_train: usize,
    n_valid: usize,
    seed: u64,
) -> (Vec<Pair>, Vec<Pair>) {
    // The lexicon (the "language") is fixed; only the sentences depend on the seed.
    let mut lex_rng = StdRng::seed_from_u64(0x05ee_d1e8);
    let lex = Lexicon {
        noun_gender: (0..spec.n_nouns).map(|_| lex_rng.random_range(0..3)).collect(),
        noun_map: permutation(spec.n_nouns, &mut lex_rng),
        adj_map: permutation(spec.n_adjs, &mut lex_rng),
        verb_map: permutation(spec.n_verbs, &mut lex_rng),
        prep_map: permutation(spec.n_preps, &mut lex_rng),
    };
    let mut rng = StdRng::seed_from_u64(seed);
    let mut seen = std::collections::HashSet::new();
    let mut train = Vec::with_capacity(n_train);
    let mut valid = Vec::with_capacity(n_valid);
    while train.len() < n_train || valid.len() < n_valid {
        let pair = synthetic_pair(spec, &lex, &mut rng);
        if !seen.insert(pair.src.clone()) {
            continue;
        }
        // Interleave so that both sets come from the same distribution.
        if valid.len() < n_valid && (train.len() >= n_train || rng.random_range(0..20) == 0) {
            valid.push(pair);
        } else if train.len() < n_train {
            train.push(pair);
        }
    }
    (train, valid)
}

fn noun_phrase(
    spec: &SyntheticSpec,
    lex: &Lexicon,
    rng: &mut StdRng,
) -> (Vec<String>, Vec<String>, bool) {
    let noun = rng.random_range(0..spec.n_nouns);
    let plural = rng.random_bool(0.4);
    let n_adj = rng.random_range(0..=spec.max_adjs);
    let adjs: Vec<usize> = (0..n_adj).map(|_| rng.random_range(0..spec.n_adjs)).collect();
    let det = if plural { rng.random_range(0..2) * 2 } else { rng.random_range(0..2) }; // the/a/some
    let src_det = ["the", "a", "some"][det];
    let mut src = vec![src_det.to_string()];
    src.extend(adjs.iter().map(|a| format!("j{a}")));
    src.push(if plural { format!("n{noun}s") } else { format!("n{noun}") });

    let g = lex.noun_gender[noun];
    let num = if plural { "p" } else { "s" };
    let definite = det == 0;
    let mut tgt = vec![format!("{}{g}{num}", if definite { "DE" } else { "IN" })];
    tgt.push(format!("N{}", lex.noun_map[noun]));
    if plural {
        tgt.push("+PL".to_string());
    }
    tgt.extend(adjs.iter().rev().map(|&a| format!("A{}.{g}{num}", lex.adj_map[a])));
    (src, tgt, plural)
}

fn synthetic_pair(spec: &SyntheticSpec, lex: &Lexicon, rng: &mut StdRng) -> Pair {
    let (s_src, s_tgt, s_plural) = noun_phrase(spec, lex, rng);
    let verb = rng.random_range(0..spec.n_verbs);
    let (o_src, o_tgt, _) = noun_phrase(spec, lex, rng);
    let pp = if rng.random_bool(0.5) {
        let prep = rng.random_range(0..spec.n_preps);
        let (p_src, p_tgt, _) = noun_phrase(spec, lex, rng);
        Some((prep, p_src, p_tgt))
    } else {
        None
    };
    let mut src = s_src;
    src.push(format!("v{verb}"));
    src.extend(o_src);
    let mut tgt = s_tgt;
    tgt.extend(o_tgt);
    if let Some((prep, p_src, p_tgt)) = pp {
        src.push(format!("p{prep}"));
        src.extend(p_src);
        tgt.extend(p_tgt);
        tgt.push(format!("P{}", lex.prep_map[prep])); // postposition
    }
    tgt.push(format!("V{}.{}", lex.verb_map[verb], if s_plural { "p" } else { "s" }));
    Pair { src, tgt }
}

// ---------------------------------------------------------------------------------------------
// Real parallel text.
// ---------------------------------------------------------------------------------------------

/// Tokenized pairs from text lines: `split` tokenizes one line. Pairs where either side is
/// empty or whitespace only are skipped (whatever `split` makes of them), as are pairs longer than `max_len` tokens on either side (as fairseq's
/// `--skip-invalid-size-inputs-valid-test` does).
///
/// Errors: `split`'s, or no usable pair (`what` names the data in the message).
pub fn tokenize_pairs(
    lines: &[(String, String)],
    max_len: usize,
    what: &str,
    mut split: impl FnMut(&str) -> Result<Vec<String>>,
) -> Result<Vec<Pair>> {
    let mut pairs = Vec::with_capacity(lines.len());
    for (s, t) in lines {
        if s.trim().is_empty() || t.trim().is_empty() {
            continue;
        }
        let (src, tgt) = (split(s)?, split(t)?);
        if !src.is_empty() && !tgt.is_empty() && src.len() <= max_len && tgt.len() <= max_len {
            pairs.push(Pair { src, tgt });
        }
    }
    if pairs.is_empty() {
        bail!("{what}: no usable sentence pair (all empty or too long)");
    }
    Ok(pairs)
}

/// Whitespace tokens.
pub fn split_whitespace(line: &str) -> Result<Vec<String>> {
    Ok(line.split_whitespace().map(str::to_string).collect())
}

// ---------------------------------------------------------------------------------------------
// Batching.
// ---------------------------------------------------------------------------------------------

/// A padded batch, kept on the host as flat row-major id arrays.
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    pub size: usize,
    /// `(size, src_len)`: source ids followed by `</s>`, right-padded.
    pub src: Vec<u32>,
    pub src_len: usize,
    /// `(size, tgt_len)`: `<s>` followed by the target ids (decoder input), right-padded.
    pub tgt_in: Vec<u32>,
    /// `(size, tgt_len)`: target ids followed by `</s>` (decoder output), right-padded.
    pub tgt_out: Vec<u32>,
    pub tgt_len: usize,
    /// Number of non-pad target tokens (the loss normalizer).
    pub n_tokens: usize,
    /// Indices of the pairs in the dataset this batch was built from.
    pub indices: Vec<usize>,
}

/// An encoded dataset.
pub struct Dataset {
    pub src: Vec<Vec<u32>>,
    pub tgt: Vec<Vec<u32>>,
}

impl Dataset {
    pub fn encode(pairs: &[Pair], src_vocab: &Vocab, tgt_vocab: &Vocab) -> Self {
        Self {
            src: pairs.iter().map(|p| src_vocab.encode(&p.src)).collect(),
            tgt: pairs.iter().map(|p| tgt_vocab.encode(&p.tgt)).collect(),
        }
    }

    pub fn len(&self) -> usize {
        self.src.len()
    }

    pub fn make_batch(&self, indices: &[usize]) -> Batch {
        let size = indices.len();
        let src_len = indices.iter().map(|&i| self.src[i].len() + 1).max().unwrap_or(1);
        let tgt_len = indices.iter().map(|&i| self.tgt[i].len() + 1).max().unwrap_or(1);
        let mut src = vec![PAD; size * src_len];
        let mut tgt_in = vec![PAD; size * tgt_len];
        let mut tgt_out = vec![PAD; size * tgt_len];
        let mut n_tokens = 0;
        for (b, &i) in indices.iter().enumerate() {
            let s = &self.src[i];
            src[b * src_len..b * src_len + s.len()].copy_from_slice(s);
            src[b * src_len + s.len()] = EOS;
            let t = &self.tgt[i];
            tgt_in[b * tgt_len] = BOS;
            tgt_in[b * tgt_len + 1..b * tgt_len + 1 + t.len()].copy_from_slice(t);
            tgt_out[b * tgt_len..b * tgt_len + t.len()].copy_from_slice(t);
            tgt_out[b * tgt_len + t.len()] = EOS;
            n_tokens += t.len() + 1;
        }
        Batch { size, src, src_len, tgt_in, tgt_out, tgt_len, n_tokens, indices: indices.to_vec() }
    }

    /// Groups the pairs into batches of at most `max_tokens` padded tokens
    /// (`batch size * longest side <= max_tokens`, as fairseq's `--max-tokens`): pairs are sorted
    /// by length (ties broken by a seeded shuffle) so a batch holds similar lengths. A pair longer
    /// than `max_tokens` gets a batch of its own.
    pub fn batches(&self, max_tokens: usize, seed: u64) -> Vec<Vec<usize>> {
        let mut order: Vec<usize> = (0..self.len()).collect();
        order.shuffle(&mut StdRng::seed_from_u64(seed));
        // Stable sort keeps the shuffled order within equal lengths.
        order.sort_by_key(|&i| (self.src[i].len(), self.tgt[i].len()));
        let mut out = Vec::new();
        let mut cur: Vec<usize> = Vec::new();
        let mut cur_max = 0;
        for i in order {
            let len = self.src[i].len().max(self.tgt[i].len()) + 1;
            let new_max = cur_max.max(len);
            if !cur.is_empty() && new_max * (cur.len() + 1) > max_tokens {
                out.push(std::mem::take(&mut cur));
                cur_max = len;
            } else {
                cur_max = new_max;
            }
            cur.push(i);
        }
        if !cur.is_empty() {
            out.push(cur);
        }
        out
    }
}

/// An endless stream of training batches: the length buckets of [`Dataset::batches`] in an order
/// reshuffled every epoch from `seed` and the epoch number.
pub struct BatchStream {
    buckets: Vec<Vec<usize>>,
    order: Vec<usize>,
    pos: usize,
    pub epoch: u64,
    seed: u64,
}

impl BatchStream {
    pub fn new(data: &Dataset, max_tokens: usize, seed: u64) -> Self {
        let buckets = data.batches(max_tokens, seed);
        let mut s = Self { order: Vec::new(), buckets, pos: 0, epoch: 0, seed };
        s.reshuffle();
        s
    }

    fn reshuffle(&mut self) {
        self.order = (0..self.buckets.len()).collect();
        self.order.shuffle(&mut StdRng::seed_from_u64(self.seed.wrapping_add(1000 + self.epoch)));
        self.pos = 0;
    }

    #[allow(dead_code)]
    pub fn n_batches(&self) -> usize {
        self.buckets.len()
    }

    /// The next batch's indices.
    pub fn next_indices(&mut self) -> &[usize] {
        if self.pos == self.order.len() {
            self.epoch += 1;
            self.reshuffle();
        }
        let b = &self.buckets[self.order[self.pos]];
        self.pos += 1;
        b
    }

    /// Skips `n` batches (used when resuming so that the data order continues).
    pub fn skip(&mut self, n: u64) {
        for _ in 0..n {
            self.next_indices();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Masks (additive, 0 where attention is allowed and a large negative number where it is not).
// ---------------------------------------------------------------------------------------------

pub const MASK_NEG: f32 = -1e9;

/// `(batch, len)` additive key-padding mask from right-padded ids.
pub fn padding_mask(ids: &[u32], batch: usize, len: usize) -> Vec<f32> {
    assert_eq!(ids.len(), batch * len);
    ids.iter().map(|&i| if i == PAD { MASK_NEG } else { 0.0 }).collect()
}

/// `(len, len)` additive causal mask: query `i` may attend to keys `0..=i`.
pub fn causal_mask(len: usize) -> Vec<f32> {
    (0..len).flat_map(|i| (0..len).map(move |j| if j <= i { 0.0 } else { MASK_NEG })).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toks(s: &str) -> Vec<String> {
        s.split_whitespace().map(str::to_string).collect()
    }

    #[test]
    fn vocab_is_frequency_ordered_and_maps_unknowns() {
        let sents = vec![toks("b a a c"), toks("a b")];
        let v = Vocab::build(&sents);
        assert_eq!(v.len(), 4 + 3);
        assert_eq!(v.token(4), "a");
        assert_eq!(v.token(5), "b");
        assert_eq!(v.token(6), "c");
        assert_eq!(v.encode(&toks("c zzz a")), vec![6, UNK, 4]);
        assert_eq!(v.decode(&[BOS, 4, 5, EOS, 6]), toks("a b"));
        // Deterministic.
        assert_eq!(v, Vocab::build(&sents));
    }

    #[test]
    fn synthetic_is_deterministic_and_disjoint() {
        let spec = SyntheticSpec::default();
        let (tr, va) = synthetic(&spec, 300, 40, 7);
        let (tr2, va2) = synthetic(&spec, 300, 40, 7);
        assert_eq!(tr, tr2);
        assert_eq!(va, va2);
        assert_eq!((tr.len(), va.len()), (300, 40));
        let train_src: std::collections::HashSet<_> = tr.iter().map(|p| p.src.clone()).collect();
        assert!(va.iter().all(|p| !train_src.contains(&p.src)));
        // Reordering: the target ends with the verb, which agrees with the subject's number.
        for p in &tr {
            let last = p.tgt.last().unwrap();
            assert!(last.starts_with('V'));
            let subj_noun = p.src.iter().find(|t| t.starts_with('n')).unwrap();
            let plural = subj_noun.ends_with('s');
            assert_eq!(last.ends_with(".p"), plural, "{:?}", p);
        }
    }

    #[test]
    fn batches_respect_max_tokens_and_cover_everything() {
        let spec = SyntheticSpec::default();
        let (tr, _) = synthetic(&spec, 500, 1, 1);
        let corpus = Corpus::new(tr, vec![Pair { src: toks("a"), tgt: toks("b") }], false).unwrap();
        let data = Dataset::encode(&corpus.train, &corpus.src_vocab, &corpus.tgt_vocab);
        let batches = data.batches(200, 3);
        let mut all: Vec<usize> = batches.iter().flatten().copied().collect();
        all.sort();
        assert_eq!(all, (0..500).collect::<Vec<_>>());
        for b in &batches {
            let batch = data.make_batch(b);
            assert!(batch.size * batch.src_len.max(batch.tgt_len) <= 200);
            assert_eq!(batch.src.len(), batch.size * batch.src_len);
        }
        // Same seed, same batches; other seed, other order within equal lengths.
        assert_eq!(batches, data.batches(200, 3));
        assert_ne!(batches, data.batches(200, 4));
    }

    #[test]
    fn make_batch_pads_and_shifts() {
        let data = Dataset { src: vec![vec![5, 6, 7], vec![8]], tgt: vec![vec![9], vec![10, 11]] };
        let b = data.make_batch(&[0, 1]);
        assert_eq!((b.size, b.src_len, b.tgt_len, b.n_tokens), (2, 4, 3, 5));
        assert_eq!(b.src, vec![5, 6, 7, EOS, 8, EOS, PAD, PAD]);
        assert_eq!(b.tgt_in, vec![BOS, 9, PAD, BOS, 10, 11]);
        assert_eq!(b.tgt_out, vec![9, EOS, PAD, 10, 11, EOS]);
    }

    #[test]
    fn masks() {
        let m = padding_mask(&[5, 6, PAD, 7, PAD, PAD], 2, 3);
        assert_eq!(m, vec![0.0, 0.0, MASK_NEG, 0.0, MASK_NEG, MASK_NEG]);
        let c = causal_mask(3);
        assert_eq!(c, vec![0.0, MASK_NEG, MASK_NEG, 0.0, 0.0, MASK_NEG, 0.0, 0.0, 0.0]);
    }

    #[test]
    fn stream_reshuffles_per_epoch() {
        let data = Dataset {
            src: (0..40).map(|i| vec![4; 1 + i % 5]).collect(),
            tgt: (0..40).map(|_| vec![4]).collect(),
        };
        let mut s = BatchStream::new(&data, 12, 0);
        let n = s.n_batches();
        let e0: Vec<Vec<usize>> = (0..n).map(|_| s.next_indices().to_vec()).collect();
        let e1: Vec<Vec<usize>> = (0..n).map(|_| s.next_indices().to_vec()).collect();
        assert_eq!(s.epoch, 1);
        assert_ne!(e0, e1);
        let mut a = e0.clone();
        let mut b = e1.clone();
        a.sort();
        b.sort();
        assert_eq!(a, b);
    }

    #[test]
    fn tokenize_pairs_filters_empty_and_long_pairs() {
        let lines: Vec<(String, String)> =
            [("a b", "x"), ("", "y"), ("c", ""), ("d e f", "z"), ("g", "w")]
                .iter()
                .map(|(s, t)| (s.to_string(), t.to_string()))
                .collect();
        let p = tokenize_pairs(&lines, 2, "t", split_whitespace).unwrap();
        assert_eq!(
            p,
            vec![
                Pair { src: toks("a b"), tgt: toks("x") },
                Pair { src: toks("g"), tgt: toks("w") }
            ]
        );
        let e =
            tokenize_pairs(&lines[1..3], 2, "the data", split_whitespace).unwrap_err().to_string();
        assert!(e.contains("the data: no usable sentence pair"), "{e}");
        assert!(Corpus::new(vec![], p, false).is_err());
        // Whitespace-only lines are dropped like empty ones, even where the tokenizer makes a
        // token of them (a SentencePiece-style "▁").
        let ws: Vec<(String, String)> = [("a", "  "), (" \t", "x"), ("b", "y")]
            .iter()
            .map(|(s, t)| (s.to_string(), t.to_string()))
            .collect();
        let marker = |l: &str| Ok(vec![format!("▁{}", l.trim())]);
        let p = tokenize_pairs(&ws, 2, "t", marker).unwrap();
        assert_eq!(p, vec![Pair { src: toks("▁b"), tgt: toks("▁y") }]);
    }
}
