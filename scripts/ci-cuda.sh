#!/usr/bin/env bash
# CI for the CUDA path on a machine without a GPU (called by .ci/run):
#   1. installs the pinned CUDA 13.0 toolchain (scripts/cuda-toolchain.sh, cached in $HOME),
#   2. compiles kernels/radam.cu for the host (kernels/emu/radam_emu.cpp) and checks every kernel
#      against a per-element reference, bit for bit, blocks and threads emulated one by one,
#   3. builds the CPU stand-in of the CUDA driver (cuda-standin/build.sh: libcuda.so.1, cuBLAS,
#      cuRAND; kernels/*.cu compiled for the host; AddressSanitizer + UBSan),
#   4. builds the crate, its tests and examples with `--features cuda` (release),
#   5. assembles the generated PTX with ptxas for sm_80 and sm_90 (a kernel that does not compile
#      for real hardware fails here, not on the GPU machine), printing register use,
#   6. runs the lib unit tests and the CUDA test binary against the toolchain's stub driver
#      (no device: every GPU test must say it skipped, and pass),
#   7. runs the CUDA test binary on the stand-in: at compute capability 9.0 (every test must
#      run, none skip), at 7.5 (no bf16: the sm_80 refusal), and with a 12.8 driver that must
#      refuse the PTX at construction. Prints how many GPU tests ran.
# Exits non-zero on any failure. Cold (fresh target dir and toolchain), the whole .ci/run measured
# 2026-11-29 on the 2-core AMD EPYC VM: 3228 s wall, niced, with the machine loaded ~9 deep by
# other builds (19 min of CPU; the CUDA build 28 min of it, mostly candle-kernels); warm ~5 min,
# of which the stand-in runs ~2 min.
#
#   CARGO_TARGET_DIR  default $HOME/.cache/candle-radam/target-cuda (outside the clone, so a
#                     fresh clone in CI reuses the previous build)
#   STANDIN_SANITIZE  1 (default): stand-in and host kernels under ASan + UBSan; 0: plain
set -euo pipefail
cd "$(dirname "$0")/.."

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/candle-radam/target-cuda}"
say() { echo "== ci-cuda: $*"; }

# Sources first: the toolchain script reads cudarc's driver bindings to build its libcuda stub.
cargo fetch --locked >/dev/null 2>&1 || cargo fetch
say "toolchain"
eval "$(scripts/cuda-toolchain.sh)"
nvcc --version | tail -2

say "kernel emulation on the CPU (kernels/emu): multi-tensor indexing, vector/scalar paths, guard"
emu="${CARGO_TARGET_DIR}/radam_emu"
mkdir -p "$CARGO_TARGET_DIR"
g++ -O2 -std=c++17 -ffp-contract=off -I"$CUDA_HOME/include" kernels/emu/radam_emu.cpp -o "$emu"
"$emu"
say "8-bit kernel emulation (kernels/emu/radam8_emu.cpp, threads as the stand-in's fibers)"
g++ -O2 -std=c++17 -ffp-contract=off -I"$CUDA_HOME/include" -Icuda-standin kernels/emu/radam8_emu.cpp \
  cuda-standin/fibers.cpp -o "${emu}8"
"${emu}8"

say "CPU stand-in of the CUDA driver (cuda-standin/build.sh)"
standin="$CARGO_TARGET_DIR/cuda-standin"
bash cuda-standin/build.sh "$standin"

say "cargo build --release --features cuda --tests --examples (target $CARGO_TARGET_DIR)"
nice -n 10 cargo build --release --features cuda --tests --examples

say "ptxas"
# The newest generated radam.ptx (a build without `cuda` has an out dir without PTX).
ptx_dir=$(find "$CARGO_TARGET_DIR"/release/build -path '*/candle-radam-*/out/radam.ptx' -printf '%T@ %h\n' \
  2>/dev/null | sort -n | tail -1 | cut -d' ' -f2 || true)
[[ -n "$ptx_dir" ]] || { echo "ci-cuda: no generated radam.ptx under $CARGO_TARGET_DIR" >&2; exit 1; }
for ptx in "$ptx_dir"/*.ptx; do
  for arch in sm_80 sm_90; do
    echo "-- ptxas -arch=$arch $(basename "$ptx")"
    ptxas -arch="$arch" -O3 -v "$ptx" -o /dev/null 2>&1 | grep -E "entry function|registers|spill|error" \
      | sed -E "s/^ptxas info +: //" || true
    ptxas -arch="$arch" -O3 "$ptx" -o /dev/null  # the real check: fails the script on an error
  done
done

say "lib unit tests and CUDA tests with --features cuda, against the stub driver (no device: the GPU tests must skip)"
prefix="${CANDLE_RADAM_CUDA_PREFIX:-$HOME/.cache/candle-radam/cuda}"
mapfile -t bins < <(cargo test --release --features cuda --lib --test cuda --no-run --message-format=json 2>/dev/null \
  | sed -n 's/.*"executable":"\([^"]*\)".*/\1/p')
(( ${#bins[@]} == 2 )) || { echo "ci-cuda: expected 2 test binaries, got: ${bins[*]}" >&2; exit 1; }
# The CUDA test binary (every test in it is a GPU test): run on the stub here, on the stand-in below.
cuda_bin="${bins[1]}"
[[ "$(basename "$cuda_bin")" == cuda-* ]] || cuda_bin="${bins[0]}"
gpu_tests=$(LD_LIBRARY_PATH="$prefix/nodriver:$LD_LIBRARY_PATH" "$cuda_bin" --list 2>/dev/null | grep -c ': test$' || true)
log="$CARGO_TARGET_DIR/ci-cuda-tests.log"
: > "$log"
for bin in "${bins[@]}"; do
  [[ "$bin" == "$cuda_bin" ]] && continue
  LD_LIBRARY_PATH="$prefix/nodriver:$LD_LIBRARY_PATH" "$bin" --test-threads=1 --nocapture 2>&1 | tee -a "$log"
done
stub_log="$CARGO_TARGET_DIR/ci-cuda-tests-stub.log"
LD_LIBRARY_PATH="$prefix/nodriver:$LD_LIBRARY_PATH" "$cuda_bin" --test-threads=1 --nocapture 2>&1 | tee "$stub_log"
skips=$(grep -c "skipped, no CUDA device" "$stub_log" || true)
echo "ci-cuda: $skips of $gpu_tests GPU tests skipped for lack of a device (stub driver)"
(( gpu_tests > 0 && skips == gpu_tests )) \
  || { echo "ci-cuda: on the stub driver every GPU test must skip ($skips of $gpu_tests did): is the stub on the loader path?" >&2; exit 1; }

# The CUDA test binary on the stand-in: same binary, the stand-in's libraries first on the path.
on_standin() {  # on_standin LOG [VAR=value ...] -- ARGS: runs the test binary, tees to LOG
  local log=$1; shift
  local envs=()
  while [[ $1 != -- ]]; do envs+=("$1"); shift; done
  shift
  env "${envs[@]}" LD_LIBRARY_PATH="$standin:$LD_LIBRARY_PATH" LD_PRELOAD="$(cat "$standin/preload")" \
    ASAN_OPTIONS="detect_leaks=0:abort_on_error=1:halt_on_error=1" UBSAN_OPTIONS="print_stacktrace=1" \
    "$cuda_bin" --test-threads=1 "$@" 2>&1 | tee "$log"
  return "${PIPESTATUS[0]}"
}
ran_total=0
ran_by_cc=()
for cc in 9.0 7.5; do
  say "CUDA tests on the CPU stand-in, compute capability $cc (ASan+UBSan: ${STANDIN_SANITIZE:-1})"
  log="$CARGO_TARGET_DIR/ci-cuda-standin-$cc.log"
  t0=$SECONDS
  on_standin "$log" CUDA_STANDIN_CC=$cc -- --nocapture
  passed=$(sed -n 's/^test result: ok\. \([0-9]*\) passed.*/\1/p' "$log" | tail -1)
  skipped=$(grep -c "skipped, no CUDA device" "$log" || true)
  # Tests that passed by returning early print "<test>: skipped, <why>": not counted as ran.
  early=$(grep ": skipped, " "$log" | grep -vc "no CUDA device" || true)
  ran=$(( ${passed:-0} - skipped - early ))
  echo "ci-cuda: stand-in sm_${cc/./}: $ran of $gpu_tests GPU tests ran to the end, $skipped skipped for" \
    "lack of a device, $early returned early with a note ($((SECONDS - t0)) s)"
  (( skipped == 0 && ran > 0 )) || { echo "ci-cuda: GPU tests skipped on the stand-in" >&2; exit 1; }
  ran_total=$(( ran_total + ran ))
  ran_by_cc+=("$ran at sm_${cc/./}")
done
grep -q "bf16 parameters need a GPU of compute capability 8.0" "$CARGO_TARGET_DIR/ci-cuda-standin-7.5.log" \
  || { echo "ci-cuda: the 7.5 run did not exercise the bf16 refusal" >&2; exit 1; }

say "stand-in as a CUDA 12.8 driver: the PTX (ISA 9.0) must be refused at RAdam::new"
on_standin "$CARGO_TARGET_DIR/ci-cuda-standin-old-driver.log" CUDA_STANDIN_DRIVER_VERSION=12080 -- \
  --exact gpu::a_driver_that_cannot_load_the_ptx_fails_at_construction --nocapture
grep -q "^test result: ok. 1 passed" "$CARGO_TARGET_DIR/ci-cuda-standin-old-driver.log" \
  || { echo "ci-cuda: the old-driver test did not run" >&2; exit 1; }
summary="$ran_total GPU test runs, none skipped ($(IFS=,; echo "${ran_by_cc[*]}" | sed 's/,/, /g'), plus the old-driver one)"
echo "$summary" > "$CARGO_TARGET_DIR/ci-cuda-gpu-tests-run"
echo "ci-cuda: $summary on the CPU stand-in"
say "OK"
