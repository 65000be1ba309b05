#!/usr/bin/env bash
# Compiles every CUDA kernel (kernels/cuda/*.cu) with NVRTC for sm_90 (compute_90) and checks
# that each exports its f32 and bf16 entry points, then type-checks the GPU-only Rust code (the
# engine's GPU executor and gpu_check example, the workers' loop_check) so it cannot rot where
# CI has no GPU. Needs no GPU and no driver: NVRTC is a compiler library, installed here from
# NVIDIA's pip wheel (once, under the cargo target dir). Extra arguments go to cargo test.
#
#   NVRTC_WHEEL   pip requirement (default: NVRTC of CUDA 13.0, what the GPU machines run)
#   PDQ_NVRTC_CHECK_ROOT=1   also `cargo check -p pdq --features cuda` (off by default: the root
#                            package has no cuda-only code, and checking it cold costs ~5 min on
#                            2 cores, measured 2026-11-26)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

wheel=${NVRTC_WHEEL:-nvidia-cuda-nvrtc==13.0.88}
dir=${CARGO_TARGET_DIR:-$PWD/target}/nvrtc-wheel
lib=$dir/nvidia/cu13/lib
if [[ ! -e $lib/libnvrtc.so.13 || "$(cat "$dir/.requirement" 2>/dev/null)" != "$wheel" ]]; then
    rm -rf "$dir"
    python3 -m pip install --quiet --disable-pip-version-check --no-deps --no-compile --target "$dir" "$wheel"
    [[ -e $lib/libnvrtc.so.13 ]] || { echo "nvrtc-check: $wheel installed no $lib/libnvrtc.so.13" >&2; exit 1; }
    echo "$wheel" >"$dir/.requirement"
fi
export LD_LIBRARY_PATH=$lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
cargo test -p pdq-kernels --features cuda nvrtc "$@"
cargo check -p pdq-engine -p pdq-workers --features cuda --all-targets
# The GPU executor's host-side parts (batch packing, page staging, sampling rows) and device
# selection on a CUDA build without a driver, which need no GPU.
cargo test -p pdq-engine --features cuda --lib -- cuda:: executor::
if [[ ${PDQ_NVRTC_CHECK_ROOT:-0} != 0 ]]; then
    cargo check -p pdq --features cuda
fi
