//! Corpus BLEU-4 as sacreBLEU computes it with `tokenize="none"` (the text is already tokenized)
//! and its default `exp` smoothing: clipped n-gram matches and totals are summed over the corpus,
//! BLEU = BP * exp(mean_n log p_n), BP = exp(1 - r / c) when the hypothesis is shorter
//! (Papineni et al. 2002); 0 when no n-gram matches at all (sacreBLEU 2.x `BLEU.compute_bleu`).

use std::collections::HashMap;

#[derive(Debug, Clone, PartialEq)]
pub struct Bleu {
    /// 0..100.
    pub score: f64,
    /// Modified n-gram precisions (percent, after smoothing), n = 1..4.
    pub precisions: [f64; 4],
    pub brevity_penalty: f64,
    pub sys_len: usize,
    pub ref_len: usize,
}

fn ngrams(tokens: &[String], n: usize) -> HashMap<&[String], usize> {
    let mut m = HashMap::new();
    if tokens.len() >= n {
        for w in tokens.windows(n) {
            *m.entry(w).or_insert(0) += 1;
        }
    }
    m
}

/// Corpus BLEU of `hyps` against one reference each.
pub fn corpus_bleu(hyps: &[Vec<String>], refs: &[Vec<String>]) -> Bleu {
    assert_eq!(hyps.len(), refs.len());
    let mut correct = [0usize; 4];
    let mut total = [0usize; 4];
    let (mut sys_len, mut ref_len) = (0, 0);
    for (h, r) in hyps.iter().zip(refs) {
        sys_len += h.len();
        ref_len += r.len();
        for n in 1..=4 {
            let hc = ngrams(h, n);
            let rc = ngrams(r, n);
            total[n - 1] += h.len().saturating_sub(n - 1);
            correct[n - 1] +=
                hc.iter().map(|(g, &c)| c.min(rc.get(g).copied().unwrap_or(0))).sum::<usize>();
        }
    }
    // sacreBLEU 2.x `BLEU.compute_bleu`: BP = 0 for an empty system output shorter than the
    // references, 1 when both are empty.
    let brevity_penalty = if sys_len >= ref_len {
        1.0
    } else if sys_len == 0 {
        0.0
    } else {
        (1.0 - ref_len as f64 / sys_len as f64).exp()
    };
    let mut precisions = [0f64; 4];
    // No matching n-gram of any order (no unigram match implies none of higher order): BLEU 0,
    // without smoothing (sacreBLEU's early stop, its issue #141).
    if correct.iter().all(|&c| c == 0) {
        return Bleu { score: 0.0, precisions, brevity_penalty, sys_len, ref_len };
    }
    let mut smooth = 1.0;
    for n in 0..4 {
        if total[n] == 0 {
            break;
        }
        if correct[n] == 0 {
            smooth *= 2.0;
            precisions[n] = 100.0 / (smooth * total[n] as f64);
        } else {
            precisions[n] = 100.0 * correct[n] as f64 / total[n] as f64;
        }
    }
    let log_mean =
        precisions.iter().map(|&p| if p == 0.0 { -9_999_999_999.0 } else { p.ln() }).sum::<f64>()
            / 4.0;
    let score = brevity_penalty * log_mean.exp();
    Bleu { score, precisions, brevity_penalty, sys_len, ref_len }
}

/// Undoes subword-nmt BPE (`"@@ "` continuation markers), as fairseq's `--remove-bpe`.
pub fn remove_bpe(tokens: &[String]) -> Vec<String> {
    let joined = tokens.join(" ").replace("@@ ", "");
    let joined = joined.strip_suffix("@@").unwrap_or(&joined);
    joined.split_whitespace().map(str::to_string).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> Vec<String> {
        s.split_whitespace().map(str::to_string).collect()
    }

    #[test]
    fn perfect_match_is_100() {
        let b = corpus_bleu(&[t("a b c d e")], &[t("a b c d e")]);
        assert!((b.score - 100.0).abs() < 1e-9);
        assert_eq!(b.brevity_penalty, 1.0);
    }

    #[test]
    fn hand_computed_example() {
        // hyp: "the cat sat on the mat" (6), ref: "the cat is on the mat" (6)
        // 1-grams: the x2 (ref has 2), cat, sat(0), on, mat -> 5/6
        // 2-grams: the-cat, cat-sat(0), sat-on(0), on-the, the-mat -> 3/5
        // 3-grams: the-cat-sat(0), cat-sat-on(0), sat-on-the(0), on-the-mat -> 1/4
        // 4-grams: none of 3 match -> exp smoothing: 100 / (2 * 3)
        // BP = 1. BLEU = exp((ln(500/6) + ln(60) + ln(25) + ln(100/6)) / 4)
        let b = corpus_bleu(&[t("the cat sat on the mat")], &[t("the cat is on the mat")]);
        let expect =
            ((500.0f64 / 6.0).ln() + 60f64.ln() + 25f64.ln() + (100.0f64 / 6.0).ln()) / 4.0;
        assert!((b.score - expect.exp()).abs() < 1e-9, "{b:?}");
        assert!((b.score - 37.99178428257963).abs() < 1e-6, "{}", b.score);
    }

    #[test]
    fn brevity_penalty_and_corpus_level_sums() {
        // Two sentences; statistics are summed before the precisions are taken.
        // hyp1 "a b c d" vs ref1 "a b c d e f" ; hyp2 "x y z w" vs ref2 "x y z w"
        // 1..4-gram precisions are all 1 (4+4/8, 3+3/6, 2+2/4, 1+1/2); c = 8, r = 10.
        let b = corpus_bleu(&[t("a b c d"), t("x y z w")], &[t("a b c d e f"), t("x y z w")]);
        let bp = (1.0f64 - 10.0 / 8.0).exp();
        assert!((b.brevity_penalty - bp).abs() < 1e-12);
        assert!((b.score - 100.0 * bp).abs() < 1e-9);
        // Empty hypothesis: 0.
        assert_eq!(corpus_bleu(&[vec![]], &[t("a b")]).score, 0.0);
        // Clipping: "the the the" vs "the cat": 1-gram precision 1/3.
        let c = corpus_bleu(&[t("the the the")], &[t("the cat")]);
        assert!((c.precisions[0] - 100.0 / 3.0).abs() < 1e-9);
    }

    /// sacreBLEU returns 0 (no smoothing) when nothing matches, including empty references.
    #[test]
    fn no_match_is_zero() {
        let b = corpus_bleu(&[t("a b c d")], &[t("w x y z")]);
        assert_eq!((b.score, b.brevity_penalty, b.precisions), (0.0, 1.0, [0.0; 4]));
        let b = corpus_bleu(&[t("a b c d"), t("e f")], &[t("w x y z"), t("g h i")]);
        assert_eq!(b.score, 0.0);
        assert!((b.brevity_penalty - (1.0f64 - 7.0 / 6.0).exp()).abs() < 1e-15);
        assert_eq!(corpus_bleu(&[t("a b c")], &[vec![]]).score, 0.0);
        let b = corpus_bleu(&[vec![]], &[vec![]]);
        assert_eq!((b.score, b.brevity_penalty), (0.0, 1.0));
        assert_eq!(corpus_bleu(&[vec![]], &[t("a b")]).brevity_penalty, 0.0);
    }

    #[test]
    fn bpe_removal() {
        assert_eq!(remove_bpe(&t("hal@@ lo wel@@ t")), t("hallo welt"));
    }
}
