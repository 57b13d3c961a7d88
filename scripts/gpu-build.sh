#!/usr/bin/env bash
# Builds the CUDA binaries here (no GPU needed) and packs them, gzipped, with scripts/gpu-run.sh
# into gpu-bundle/ (git-ignored), to be run on a GPU machine that has no cargo and no network:
#
#   scripts/gpu-build.sh                 # -> gpu-bundle/ (~45 MB)
#   # on the GPU machine, from the repository root (the device tool: carry ["gpu-bundle"]), one
#   # stage per call (1: tests, memcheck, compare; 2: benchmarks; 3: NMT), logs under $OUT:
#   OUT=$OUT bash gpu-bundle/gpu-run.sh 1
#
# The binaries link dynamically to CUDA 13 libraries (libcudart.so.13, libcublas(Lt).so.13,
# libcurand.so.10, libnvrtc.so.13) and to the driver's libcuda.so.1; gpu-run.sh finds them there.
#
#   CARGO_TARGET_DIR  default $HOME/.cache/candle-radam/target-cuda (shared with ci-cuda.sh)
#   BUNDLE            output folder (default gpu-bundle)
set -euo pipefail
cd "$(dirname "$0")/.."

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/candle-radam/target-cuda}"
BUNDLE="${BUNDLE:-gpu-bundle}"
eval "$(scripts/cuda-toolchain.sh)"

examples=(--example compare)
[[ -f examples/bench.rs || -f examples/bench/main.rs ]] && examples+=(--example bench)
[[ -f examples/nmt/main.rs ]] && examples+=(--example nmt)

echo "gpu-build: cargo build --release --features cuda --test cuda ${examples[*]}" >&2
json=$(nice -n 10 cargo build --release --features cuda --test cuda "${examples[@]}" --message-format=json)

rm -rf "$BUNDLE"
mkdir -p "$BUNDLE"
# Every executable artifact: the cuda test binary is named after its target ("cuda").
echo "$json" | grep '"executable":"/' | while read -r line; do
  exe=$(sed -n 's/.*"executable":"\([^"]*\)".*/\1/p' <<<"$line")
  name=$(sed -n 's/.*"target":{[^}]*"name":"\([^"]*\)".*/\1/p' <<<"$line")
  case "$name" in
    cuda) out=cuda-tests ;;
    compare | bench | nmt) out="$name" ;;
    *) continue ;;
  esac
  cp "$exe" "$BUNDLE/$out"
  strip "$BUNDLE/$out" 2>/dev/null || true
  gzip -9 "$BUNDLE/$out"
  echo "gpu-build: $out <- $exe" >&2
done
[[ -f "$BUNDLE/cuda-tests.gz" && -f "$BUNDLE/compare.gz" ]] || { echo "gpu-build: missing binaries" >&2; exit 1; }

cp scripts/gpu-run.sh "$BUNDLE/"
[[ -f scripts/bench_torch.py ]] && cp scripts/bench_torch.py "$BUNDLE/"
{
  echo "built $(date -u +%FT%TZ) from $(git rev-parse --short HEAD 2>/dev/null || echo '?')$(git diff --quiet 2>/dev/null || echo '+dirty')"
  nvcc --version | tail -1
  echo "CUDA_COMPUTE_CAP=$CUDA_COMPUTE_CAP"
  (cd "$BUNDLE" && sha256sum ./*.gz)
} > "$BUNDLE/MANIFEST"
du -sh "$BUNDLE" >&2
size=$(du -sm "$BUNDLE" | cut -f1)
if (( size >= 64 )); then
  echo "gpu-build: bundle is ${size} MiB, over the 64 MiB a device run can carry" >&2
  exit 1
fi
ls -l "$BUNDLE" >&2
