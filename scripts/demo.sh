#!/usr/bin/env bash
# The main job: starts RabbitMQ and PostgreSQL if they are not listening, then runs `pdq demo`
# (a demo batch through a local disaggregated cluster on the tiny model, results printed from SQL).
# Default shape: 2 prefill x 2 decode ranks; any flag given here goes to `pdq demo` and wins,
#   e.g.  scripts/demo.sh --prefill-dp 1 --decode-dp 3 --requests 200
# `--smollm2` runs the batch on SmolLM2-135M-Instruct instead (a real model answering in real
# text; fetched once into the cache by scripts/fetch-smollm2.sh). The tiny model stays the default.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

bash scripts/services.sh

has_flag() {
    local flag=$1 arg
    shift
    for arg in "$@"; do
        [[ $arg == "$flag" || $arg == "$flag="* ]] && return 0
    done
    return 1
}

args=()
rest=()
for arg in "$@"; do
    if [[ $arg == --smollm2 ]]; then
        args+=(--model "$(bash scripts/fetch-smollm2.sh)")
    else
        rest+=("$arg")
    fi
done
set -- "${rest[@]+"${rest[@]}"}"
# An explicit flag or its environment variable (PDQ_PREFILL_DP, PDQ_DECODE_DP) beats the default.
if ! has_flag --prefill-dp "$@" && [[ -z ${PDQ_PREFILL_DP:-} ]]; then
    args+=(--prefill-dp 2)
fi
if ! has_flag --decode-dp "$@" && [[ -z ${PDQ_DECODE_DP:-} ]]; then
    args+=(--decode-dp 2)
fi

exec cargo run --release --bin pdq -- demo "${args[@]}" "$@"
