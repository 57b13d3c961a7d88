#!/usr/bin/env bash
# Training throughput of the NMT example with glibc's malloc vs the example's mimalloc, side by side.
#
#   examples/nmt/alloc_bench.sh SYSTEM_BIN MIMALLOC_BIN [MULTI30K_DIR] [ROUNDS]
#
# SYSTEM_BIN: the nmt example built without its `#[global_allocator]` (delete that item and the
# `keep_freed_memory()` call in examples/nmt/main.rs, build, copy target/release/examples/nmt);
# MIMALLOC_BIN: as committed. A third kind runs SYSTEM_BIN with glibc tuned not to return memory
# to the OS (MALLOC_MMAP_THRESHOLD_ / MALLOC_TRIM_THRESHOLD_ / MALLOC_TOP_PAD_), the cure by hand.
#
# Each kind trains the same batches twice, SHORT and LONG steps, under /usr/bin/time; the
# difference of the two runs is the cost of steps SHORT+1..LONG alone (no start-up, no
# evaluation, no one-time costs such as an allocator's first touch of its memory):
#   CPU s/step = (user + sys)(LONG) - (user + sys)(SHORT), over LONG - SHORT steps,
#   tokens per CPU second = their target tokens / that CPU time,
# which a busy shared machine disturbs far less than wall time. The kinds alternate
# (A B C A B C ...) so that load from other processes hits all of them alike.
set -euo pipefail
sys=${1:?system-malloc binary}
mi=${2:?mimalloc binary}
m30k=${3:-../shared/data/multi30k}
rounds=${4:-1}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# Runs one kind for $steps steps; prints "cpu_user cpu_sys tokens".
one() { # kind steps out flags...
  local kind=$1 steps=$2 out=$3; shift 3
  local bin=$mi; local -a env=()
  case $kind in
    glibc) bin=$sys ;;
    tuned) bin=$sys; env=(MALLOC_MMAP_THRESHOLD_=4294967296 MALLOC_TRIM_THRESHOLD_=4294967296 MALLOC_TOP_PAD_=268435456) ;;
  esac
  env "${env[@]}" /usr/bin/time -f "%U %S" -o "$out.time" "$bin" "$@" --steps "$steps" --out "$out" --quiet >/dev/null 2>&1
  python3 -c "
import json, sys
v = json.load(open(sys.argv[1] + '/summary.json'))['variants'][0]
u, s = open(sys.argv[1] + '.time').read().split()
print(u, s, v['tokens_per_s'] * v['train_seconds'])" "$out"
}

bench() { # name short long flags...
  local name=$1 short=$2 long=$3; shift 3
  for r in $(seq "$rounds"); do
    for kind in glibc tuned mimalloc; do
      a=$(one $kind "$short" "$tmp/$name-$kind-$r-a" "$@")
      b=$(one $kind "$long" "$tmp/$name-$kind-$r-b" "$@")
      python3 -c "
(ua, sa, ta), (ub, sb, tb) = [map(float, x.split()) for x in ('$a', '$b')]
n = $long - $short
user, sys_, tok = (ub - ua) / n, (sb - sa) / n, (tb - ta)
print(f'$name round $r {\"$kind\":9s} {1000*(user+sys_):7.0f} CPU ms/step ({1000*user:.0f} user + {1000*sys_:.0f} sys)  {tok/(n*(user+sys_)):6.0f} tokens per CPU second')"
    done
  done
}

# The synthetic default (preset cpu: batches of 1200 tokens): steps 11..50.
bench synthetic 10 50 --optimizer radam --eval-every 100000 --bleu-sentences 1 --beam 1
# Multi30K De->En, raw text, BPE 8000 (learned once, then reused), batches of 2000 tokens: steps 6..25.
"$mi" --multi30k "$m30k" --optimizer radam --steps 1 --bleu-sentences 1 --share all --out "$tmp/tok" --quiet >/dev/null 2>&1
bench multi30k 5 25 --multi30k "$m30k" --tokenizer "$tmp/tok/tokenizer.json" --share all --max-tokens 2000 \
  --optimizer radam --eval-every 100000 --bleu-sentences 1 --beam 1
