#!/usr/bin/env python3
"""Reference scores for the NMT example's sacreBLEU-compatible metrics (examples/nmt/sacrebleu.rs).

Scores fixed hypothesis/reference sets with the `sacrebleu` package and writes
examples/nmt/sacrebleu_reference.json; the Rust test `sacrebleu::tests::matches_the_sacrebleu_package`
must match every number to 1e-9 (scores are 0..100).

    pip install sacrebleu          # 2.x
    python3 scripts/sacrebleu_reference.py
"""
import json
import os
import sys

import sacrebleu
from sacrebleu.tokenizers.tokenizer_13a import Tokenizer13a

# Each case: hypotheses and one reference per hypothesis. They cover punctuation, numbers
# (decimal points, thousands separators, ranges), case, quotes and HTML entities, hyphens,
# non-ASCII text, empty lines, repeated words (clipping), short lines (no 4-grams) and
# surrounding whitespace, no unigram match, empty references and hypotheses, brevity penalty
# edge cases.
CASES = {
    "multi30k_like": (
        [
            "A man in an orange hat starring at something.",
            "A Boston Terrier is running on lush green grass in front of a white fence.",
            "A girl in karate uniform breaking a stick with a front kick.",
            "Five people wearing winter jackets and helmets stand in the snow, with snowmobiles in the background.",
            "People are fixing the roof of a house.",
        ],
        [
            "A man with an orange hat staring at something.",
            "A Boston terrier runs through lush green grass in front of a white fence.",
            "A girl in a karate uniform breaks a stick with a front kick.",
            "Five people in winter jackets and helmets stand in the snow with snowmobiles in the background.",
            "Several men fix the roof of a house.",
        ],
    ),
    "punctuation_numbers_case": (
        [
            "It costs $3.50 (or 3,000 yen), see pages 10-12!",
            "\"Hello,\" she said -- it's 5 p.m. & dark.",
            "The U.S.A. won 2-1; final score: 2:1.",
            "e-mail me at a@b.com / call 555-1234.",
            "WHAT A DAY...",
            "Zwei Männer spielen Fußball am Straßenrand.",
            "&quot;quoted&quot; &amp; &lt;tagged&gt; <skipped> text",
        ],
        [
            "It costs $3.50 (or 3,000 yen); see pages 10 - 12.",
            "\"Hello\", she said - it is 5 p.m. and dark.",
            "The USA won 2-1; the final score was 2:1.",
            "Email me at a@b.com or call 555-1234.",
            "What a day...",
            "Zwei Männer spielen Fußball an der Straße.",
            "\"quoted\" & <tagged> text",
        ],
    ),
    "empty_and_short_lines": (
        ["", "a dog", "  The cat sat on the mat.  ", "yes", "the the the the the", ""],
        ["Nothing here.", "A dog.", "The cat sat on the mat.", "no", "the cat is on the mat", ""],
    ),
    "no_4gram_match": (
        ["one two three four five", "six"],
        ["one two x three four y five", "seven"],
    ),
    # No unigram matches: sacreBLEU returns 0 without smoothing (the `not any(correct)` rule).
    "no_unigram_match": (["a b c d"], ["w x y z"]),
    "no_unigram_match_corpus": (["a b c d", "e f"], ["w x y z", "g h i"]),
    "empty_reference": (["a b c"], [""]),
    "all_empty": ([""], [""]),
    "empty_hypotheses": (["", ""], ["a b", "c d e"]),
    # Unigram matches only, hypothesis shorter than the reference (brevity penalty < 1).
    "unigram_only_short": (["b a"], ["a x b y z"]),
    "short_hypothesis": (["a b c d x", "p q"], ["a b c d e f g", "p q r"]),
    # Hypothesis longer than the reference: no brevity penalty.
    "long_hypothesis": (["a b c d e f g h"], ["a b c"]),
    "perfect": (
        ["A man is cooking.", "Two dogs play in the snow."],
        ["A man is cooking.", "Two dogs play in the snow."],
    ),
}

TOKENIZE_LINES = [
    "It costs $3.50 (or 3,000 yen), see pages 10-12!",
    "\"Hello,\" she said -- it's 5 p.m. & dark.",
    "The U.S.A. won 2-1; final score: 2:1.",
    "a.b,c 1.5 1,5 x. .y 3-4 a-b {x} [y] `z` ~w~ |p| #q",
    "&quot;q&quot; &amp; <skipped> -\nnext\nline",
    "Zwei Männer, 1.000 Äpfel.",
]


def main():
    out = {
        "sacrebleu_version": sacrebleu.__version__,
        "cases": {},
        "tokenize_13a": [[line, Tokenizer13a()(line)] for line in TOKENIZE_LINES],
    }
    for name, (hyps, refs) in CASES.items():
        assert len(hyps) == len(refs)
        out["cases"][name] = {
            "hyps": hyps,
            "refs": refs,
            "bleu": sacrebleu.corpus_bleu(hyps, [refs]).score,
            "bleu_lc": sacrebleu.corpus_bleu(hyps, [refs], lowercase=True).score,
            "bleu_tok": sacrebleu.corpus_bleu(hyps, [refs], tokenize="none").score,
            "chrf": sacrebleu.corpus_chrf(hyps, [refs]).score,
        }
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "examples", "nmt",
                        "sacrebleu_reference.json")
    with open(path, "w", encoding="utf-8") as f:
        json.dump(out, f, indent=1, ensure_ascii=False)
        f.write("\n")
    for name, c in out["cases"].items():
        print(f"{name}: BLEU {c['bleu']:.4f}  lc {c['bleu_lc']:.4f}  none {c['bleu_tok']:.4f}  "
              f"chrF {c['chrf']:.4f}", file=sys.stderr)


if __name__ == "__main__":
    main()
