#!/usr/bin/env bash
# CI for the CUDA path on a machine without a GPU (called by .ci/run):
#   1. installs the pinned CUDA 13.0 toolchain (scripts/cuda-toolchain.sh, cached in $HOME),
#   2. compiles kernels/radam.cu for the host (kernels/emu/radam_emu.cpp) and checks every kernel
#      against a per-element reference, bit for bit, blocks and threads emulated one by one,
#   3. builds the crate, its tests and examples with `--features cuda` (release),
#   4. assembles the generated PTX with ptxas for sm_80 and sm_90 (a kernel that does not compile
#      for real hardware fails here, not on the GPU machine), printing register use,
#   5. runs the lib unit tests (the multi-tensor table layout among them) and the CUDA test binary
#      with `--features cuda` against the toolchain's stub driver: every GPU test must report that
#      it skipped (no device) and pass, which also proves the binaries link and start.
# Exits non-zero on any failure. Cold: ~15 min on 2 cores (candle-kernels); warm: ~1 min.
#
#   CARGO_TARGET_DIR  default $HOME/.cache/candle-radam/target-cuda (outside the clone, so a
#                     fresh clone in CI reuses the previous build)
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
log="$CARGO_TARGET_DIR/ci-cuda-tests.log"
: > "$log"
for bin in "${bins[@]}"; do
  LD_LIBRARY_PATH="$prefix/nodriver:$LD_LIBRARY_PATH" "$bin" --test-threads=1 --nocapture 2>&1 | tee -a "$log"
done
skips=$(grep -c "skipped, no CUDA device" "$log" || true)
echo "ci-cuda: $skips GPU tests skipped for lack of a device"
say "OK"
