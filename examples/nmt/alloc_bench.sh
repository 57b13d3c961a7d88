#!/usr/bin/env bash
# Tokens/s of the NMT example with glibc's malloc vs the example's mimalloc, side by side:
# the runs alternate (A B C A B C ...) so that load from other processes hits all alike.
#
#   examples/nmt/alloc_bench.sh SYSTEM_BIN MIMALLOC_BIN [MULTI30K_DIR] [ROUNDS]
#
# SYSTEM_BIN: the nmt example built without its `#[global_allocator]` (delete those two lines in
# examples/nmt/main.rs, build, copy target/release/examples/nmt); MIMALLOC_BIN: as committed.
# A third column runs SYSTEM_BIN with glibc tuned not to return memory to the OS
# (MALLOC_MMAP_THRESHOLD_ / MALLOC_TRIM_THRESHOLD_ / MALLOC_TOP_PAD_), the issue's cure by hand.
# Prints ms/step and tokens/s per run, then the mean tokens/s ratios.
set -euo pipefail
sys=${1:?system-malloc binary}
mi=${2:?mimalloc binary}
m30k=${3:-../shared/data/multi30k}
rounds=${4:-2}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

tok_per_s() { python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['variants'][0]['tokens_per_s'])" "$1/summary.json"; }
ms_step() { python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['variants'][0]['ms_per_step'])" "$1/summary.json"; }

bench() { # name, data flags...
  local name=$1; shift
  declare -A sum=([sys]=0 [tuned]=0 [mi]=0)
  for r in $(seq "$rounds"); do
    for kind in sys tuned mi; do
      out="$tmp/$name-$kind-$r"
      case $kind in
        sys) "$sys" "$@" --out "$out" --quiet >/dev/null 2>&1 ;;
        tuned) MALLOC_MMAP_THRESHOLD_=4294967296 MALLOC_TRIM_THRESHOLD_=4294967296 MALLOC_TOP_PAD_=268435456 \
                 "$sys" "$@" --out "$out" --quiet >/dev/null 2>&1 ;;
        mi) "$mi" "$@" --out "$out" --quiet >/dev/null 2>&1 ;;
      esac
      t=$(tok_per_s "$out"); m=$(ms_step "$out")
      printf '%-9s round %d  %-6s %8.1f ms/step %8.0f tokens/s\n' "$name" "$r" "$kind" "$m" "$t"
      sum[$kind]=$(python3 -c "print(${sum[$kind]} + $t)")
    done
  done
  python3 -c "
s, t, m = ${sum[sys]}/$rounds, ${sum[tuned]}/$rounds, ${sum[mi]}/$rounds
print(f'$name: mean tokens/s  glibc {s:.0f}  glibc-tuned {t:.0f}  mimalloc {m:.0f}  ->  mimalloc/glibc {m/s:.2f}x, tuned/glibc {t/s:.2f}x')"
}

# The synthetic default (preset cpu: batches of 1200 tokens), 40 steps.
bench synthetic --optimizer radam --steps 40 --eval-every 1000 --bleu-sentences 1
# Multi30K De->En, raw text, BPE 8000 (learned once, then reused), batches of 2000 tokens, 15 steps.
"$mi" --multi30k "$m30k" --optimizer radam --steps 1 --bleu-sentences 1 --share all --out "$tmp/tok" --quiet >/dev/null 2>&1
bench multi30k --multi30k "$m30k" --tokenizer "$tmp/tok/tokenizer.json" --share all --max-tokens 2000 \
  --optimizer radam --steps 15 --eval-every 1000 --bleu-sentences 1 --beam 1
