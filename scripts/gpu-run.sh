#!/usr/bin/env bash
# Runs the bundle made by scripts/gpu-build.sh on a GPU machine (no cargo, no network needed), in
# stages that each fit one short device call (10 minutes a command, 15 minutes a session):
#
#   1  library check, nvidia-smi, the CUDA tests (then again under compute-sanitizer memcheck
#      when it is installed), the CPU-vs-GPU training comparison (f32 and bf16)
#   2  the benchmarks: ours (bench --device cuda) and the torch one when python3 has CUDA torch
#   3  the NMT example's default comparison on the GPU, capped in time (NMT_TIMEOUT, 300 s)
#
# Each stage takes at most STAGE_BUDGET seconds (default 500) plus the library lookup and
# nvidia-smi (seconds), so one stage fits a device call of 540 s (docs/CUDA.md).
#
#   bash gpu-bundle/gpu-run.sh 1          # one stage; `1 2`, or `all` (the default) for several
#   OUT=/some/dir bash gpu-bundle/gpu-run.sh 1
#
# Every phase runs under `timeout`: its own limit (PHASE_TIMEOUT, default 240 s; the memcheck pass
# MEMCHECK_TIMEOUT, 300 s; nmt NMT_TIMEOUT + 30 s) or what is left of its stage's budget, whichever
# is smaller; a phase with under 20 s left is not started (and the stage counts as failed). It writes its log to $OUT/gpu-run/<phase>.log while it runs (to a
# temporary folder without OUT), so a run stopped half-way still returns what it did. Prints one
# summary per call; exits non-zero if a check failed, or if there is no usable GPU (after saying
# why).
#
# CUDA libraries: the binaries need libcudart.so.13, libcublas.so.13, libcublasLt.so.13,
# libcurand.so.10, libnvrtc.so.13 and the driver's libcuda.so.1. They are looked up in
# $CUDA_LIBS (if set), PyTorch's nvidia wheels, /usr/local/cuda*, and the driver folders.
set -uo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
stages=("$@")
(( ${#stages[@]} )) || stages=(all)
want() { local s; for s in "${stages[@]}"; do [[ "$s" == all || "$s" == "$1" ]] && return 0; done; return 1; }
work="${TMPDIR:-/tmp}/candle-radam-gpu-run"
if [[ -n "${OUT:-}" ]]; then logs="$OUT/gpu-run"; else logs="$work/logs"; fi
rm -rf "$work" && mkdir -p "$work/bin" "$logs"
say() { echo "== gpu-run: $*" | tee -a "$logs/summary.log"; }
declare -a summary=()
status=0
note() { summary+=("$1"); echo "  $1" >> "$logs/summary.log"; }
PHASE_TIMEOUT="${PHASE_TIMEOUT:-240}"
STAGE_BUDGET="${STAGE_BUDGET:-500}"
stage_t0=$SECONDS
stage() { stage_t0=$SECONDS; say "stage $1 (budget ${STAGE_BUDGET}s)"; }
# capped LIMIT: LIMIT, or the seconds left of the stage's budget when fewer.
capped() { local left=$(( STAGE_BUDGET - (SECONDS - stage_t0) )); echo $(( $1 < left ? $1 : left )); }

# --- binaries -------------------------------------------------------------------------------
for b in cuda-tests compare bench nmt; do
  if [[ -f "$here/$b.gz" ]]; then
    gzip -dc "$here/$b.gz" > "$work/bin/$b" && chmod +x "$work/bin/$b"
  elif [[ -x "$here/$b" ]]; then
    cp "$here/$b" "$work/bin/$b"
  fi
done
[[ -x "$work/bin/cuda-tests" ]] || { echo "gpu-run: no cuda-tests binary beside $0 (run scripts/gpu-build.sh)" >&2; exit 2; }
[[ -f "$here/MANIFEST" ]] && cat "$here/MANIFEST"

# --- libraries ------------------------------------------------------------------------------
need=(libcudart.so.13 libcublas.so.13 libcublasLt.so.13 libcurand.so.10 libnvrtc.so.13 libcuda.so.1)
dirs=()
[[ -n "${CUDA_LIBS:-}" ]] && IFS=: read -r -a dirs <<<"$CUDA_LIBS"
for py in python3 /opt/torch/.venv/bin/python3 python; do
  command -v "$py" >/dev/null 2>&1 || continue
  while read -r d; do [[ -n "$d" ]] && dirs+=("$d"); done < <("$py" - 2>/dev/null <<'EOF'
import glob, os
try:
    import nvidia
    for root in nvidia.__path__:
        for d in sorted(glob.glob(os.path.join(root, "*", "lib"))):
            print(d)
except Exception:
    pass
EOF
)
done
for d in /usr/local/lib/python3*/dist-packages/nvidia/*/lib /usr/lib/python3*/dist-packages/nvidia/*/lib \
         /opt/*/.venv/lib/python3*/site-packages/nvidia/*/lib /usr/local/cuda/lib64 \
         /usr/local/cuda/targets/x86_64-linux/lib /usr/local/cuda-13*/lib64 /usr/local/nvidia/lib64 \
         /usr/local/nvidia/lib /usr/lib/x86_64-linux-gnu /usr/lib64; do
  [[ -d "$d" ]] && dirs+=("$d")
done
ld_path=""
for lib in "${need[@]}"; do
  found=""
  for d in "${dirs[@]}"; do
    [[ -e "$d/$lib" ]] && { found="$d"; break; }
  done
  # Else maybe the dynamic loader knows it already (ldconfig, or LD_LIBRARY_PATH).
  if [[ -z "$found" ]] && ldconfig -p 2>/dev/null | grep -q "$lib "; then found="(system)"; fi
  if [[ -z "$found" ]]; then
    echo "gpu-run: $lib not found (searched LD_LIBRARY_PATH, ldconfig and: ${dirs[*]})" >&2
  elif [[ "$found" != "(system)" && ":$ld_path:" != *":$found:"* ]]; then
    ld_path="${ld_path:+$ld_path:}$found"
  fi
done
export LD_LIBRARY_PATH="${ld_path}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
say "LD_LIBRARY_PATH=$LD_LIBRARY_PATH"
if missing=$(ldd "$work/bin/cuda-tests" 2>&1 | grep "not found"); then
  echo "gpu-run: the binaries cannot start, missing libraries:" >&2
  echo "$missing" >&2
  exit 2
fi

# --- the GPU ---------------------------------------------------------------------------------
say "nvidia-smi"
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi > "$logs/nvidia-smi.txt" 2>&1; then
  cat "$logs/nvidia-smi.txt"
  gpu=$(nvidia-smi --query-gpu=name,driver_version,compute_cap,memory.total --format=csv,noheader 2>/dev/null | head -1)
  note "GPU: ${gpu:-unknown}"
else
  echo "gpu-run: nvidia-smi failed or is missing: no usable GPU here" >&2
  cat "$logs/nvidia-smi.txt" 2>/dev/null >&2
  note "GPU: none (nvidia-smi failed)"
  status=2
fi

run() {  # run NAME CMD...: under `timeout`, logs to $logs/NAME.log as it goes, records pass/fail
  local name=$1; shift
  local limit
  limit=$(capped "${RUN_TIMEOUT:-$PHASE_TIMEOUT}")
  if (( limit < 20 )); then
    note "$(printf '%-14s NOT RUN, the stage budget (%ss) is spent' "$name" "$STAGE_BUDGET")"
    status=1
    return 0
  fi
  say "$name (timeout ${limit}s): $*"
  local t0=$SECONDS
  # A pipeline, not `> >(tee ...)`: the shell waits for tee, so the log is complete on return.
  timeout --kill-after=10 "$limit" "$@" 2>&1 | tee "$logs/$name.log"
  local rc=${PIPESTATUS[0]}
  local what=PASS
  [[ $rc == 0 ]] || what=FAIL
  [[ $rc == 124 || $rc == 137 ]] && what="TIMEOUT after ${limit}s"
  note "$(printf '%-14s %s (rc %d, %ds)' "$name" "$what" "$rc" $((SECONDS - t0)))"
  [[ $rc == 0 ]] || status=1
  return 0
}

if [[ $status == 0 ]] && want 1; then
  stage 1
  run tests "$work/bin/cuda-tests" --test-threads=1 --nocapture
  if grep -q "skipped, no CUDA device" "$logs/tests.log"; then
    note "tests: SKIPPED for lack of a device, so nothing was checked on a GPU"
    status=1
  fi
  grep -E "max rel diff|max ulp" "$logs/tests.log" | sed 's/^/  /' > "$logs/diffs.txt" || true
  run compare-f32 "$work/bin/compare" --steps 100 --dtype f32
  run compare-bf16 "$work/bin/compare" --steps 100 --dtype bf16 --tol 1e-1 --loss-tol 1e-1
  # Out-of-bounds, misaligned or freed-memory accesses of the kernels on the real hardware.
  san=$(command -v compute-sanitizer || ls /usr/local/cuda*/bin/compute-sanitizer 2>/dev/null | head -1 || true)
  if [[ -n "$san" ]]; then
    RUN_TIMEOUT="${MEMCHECK_TIMEOUT:-300}" run tests-memcheck "$san" --tool memcheck --error-exitcode 1 \
      "$work/bin/cuda-tests" --test-threads=1
  else
    note "tests-memcheck skipped (no compute-sanitizer on this machine)"
  fi
fi

if [[ $status != 2 ]] && want 2; then
  stage 2
  if [[ -x "$work/bin/bench" ]]; then
    run bench "$work/bin/bench" --device cuda
  else
    note "bench          not in the bundle"
  fi
  if [[ -f "$here/bench_torch.py" ]] && python3 -c 'import torch; assert torch.cuda.is_available()' 2>/dev/null; then
    run bench-torch python3 "$here/bench_torch.py" --device cuda
  else
    note "bench-torch    skipped (no bench_torch.py, or python3 has no CUDA torch)"
  fi
fi

if [[ $status != 2 ]] && want 3; then
  stage 3
  if [[ -x "$work/bin/nmt" ]]; then
    # The README's main job on the GPU: default task and flags, the three variants; nmt's own
    # limit leaves 30 s of the phase's for it to write its summary after a cut.
    nmt_limit=$(capped $(( ${NMT_TIMEOUT:-300} + 30 )))
    RUN_TIMEOUT=$nmt_limit run nmt timeout "$(( nmt_limit > 50 ? nmt_limit - 30 : 20 ))" "$work/bin/nmt" \
      --device cuda --compare adam,adam-warmup,radam --out "$logs/nmt" --quiet
    [[ -f "$logs/nmt/summary.json" ]] && { echo "  nmt summary:"; cat "$logs/nmt/summary.json"; }
  else
    note "nmt            not in the bundle"
  fi
fi

echo
echo "== gpu-run: summary (stages: ${stages[*]})"
for line in "${summary[@]}"; do echo "  $line"; done
[[ -s "$logs/diffs.txt" ]] && { echo "  GPU vs CPU in tests/cuda.rs:"; cat "$logs/diffs.txt"; }
[[ -n "${OUT:-}" ]] && echo "  logs: $logs"
echo "  result: $([[ $status == 0 ]] && echo OK || echo FAILED) (exit $status)"
exit $status
