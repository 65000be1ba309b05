#!/usr/bin/env bash
# Issue 18's batch, pdq against llama.cpp's llama-server in one run on the same input: N chat
# requests to SmolLM2-135M-Instruct (Q4_1 GGUF) sharing one ~260-token system prompt (a shop's
# support rules, as in workers/examples/prefix_bench.rs), each with its own short question,
# max_tokens 256, temperature 0; then the same questions without the system prompt.
#   pdq:          `pdq serve --mode colocated --decode-dp 1` (release), the batch through `pdq submit`
#   llama-server: `-np 8 -c 8192 -t 2`, driven 8 requests at a time on /v1/chat/completions
# Prints wall times, pdq's cached share of prompt tokens, and the ratios. Needs llama-server
# (../shared/peers/build-llama-server.sh; LLAMA_SERVER=path) and fetches SmolLM2 once.
#   N=120 LLAMA_SERVER=target/peers/llama-server/bin/llama-server scripts/shared-prefix-bench.sh
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

N=${N:-120}
MAX_TOKENS=${MAX_TOKENS:-256}
LLAMA_SERVER=${LLAMA_SERVER:-target/peers/llama-server/bin/llama-server}
bash scripts/services.sh
model=$(bash scripts/fetch-smollm2.sh)
cargo build --release -q
target=${CARGO_TARGET_DIR:-target}
PDQ=$target/release/pdq
server=${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}
server=${server%/*}
export DATABASE_URL=$server/pdq_prefix_bench_$$ PDQ_NAMESPACE=prefix-bench-$$ RUST_LOG=${RUST_LOG:-warn}
work=$(mktemp -d)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    psql -q "$server/postgres" -c "DROP DATABASE IF EXISTS pdq_prefix_bench_$$ WITH (FORCE)" >/dev/null 2>&1 || true
    rm -rf "$work"
}
trap cleanup EXIT
sql() { psql -qtA "$DATABASE_URL" -c "$1"; }

# The batch, as JSONL, with and without the system prompt (the prompt text is prefix_bench's).
python3 - "$N" "$MAX_TOKENS" "$work" <<'EOF'
import json, re, sys
n, max_tokens, work = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
src = open("workers/examples/prefix_bench.rs").read()
system = re.search(r'const SYSTEM: &str = "(.*?)";', src, re.S).group(1).replace("\\\n", "").replace('\\"', '"')
questions = re.findall(r'^    "(.*)",$', src.split("const QUESTIONS")[1].split("];")[0], re.M)
for name, with_system in (("shared", True), ("plain", False)):
    with open(f"{work}/{name}.jsonl", "w") as f:
        for i in range(n):
            q = f"{questions[i % len(questions)]} (ticket {1000 + i})"
            messages = ([{"role": "system", "content": system}] if with_system else []) + [{"role": "user", "content": q}]
            body = {"messages": messages, "max_tokens": max_tokens, "temperature": 0}
            f.write(json.dumps({"custom_id": f"{name}-{i}", "method": "POST", "url": "/v1/chat/completions", "body": body}) + "\n")
EOF

declare -A pdq_s
if [[ -n ${PDQ_TIMES:-} ]]; then
    # PDQ_TIMES="SHARED PLAIN": pdq's figures from an earlier run of this script, to time llama-server alone.
    read -r pdq_s[shared] pdq_s[plain] <<<"$PDQ_TIMES"
else
$PDQ migrate >/dev/null
$PDQ serve --mode colocated --decode-dp 1 --model "$model" &
pids+=($!)
until [[ $(sql "SELECT count(*) FROM workers" 2>/dev/null || echo 0) -ge 1 ]]; do sleep 0.2; done
for name in shared plain; do
    job=$($PDQ submit "$work/$name.jsonl" 2>/dev/null | head -1)
    $PDQ wait "$job" >/dev/null
    pdq_s[$name]=$(sql "SELECT round(extract(epoch FROM finished_at - created_at)::numeric, 1) FROM jobs WHERE id = '$job'")
    stats=$(sql "SELECT sum(cached_tokens), sum(prompt_tokens), sum(completion_tokens), count(*) FILTER (WHERE status = 'completed') FROM results WHERE job_id = '$job'")
    echo "pdq $name: ${pdq_s[$name]} s; cached|prompt|completion tokens|completed: $stats"
done
kill "${pids[0]}"
wait "${pids[0]}" || true
pids=()
fi

# llama.cpp's AMX / repacked-weight path (its "extra buffer types") segfaults on some CPUs: when
# the server dies, the same run goes again with --no-repack, and says so.
llama_run() { # EXTRA_ARGS...
    local port=$((18000 + RANDOM % 1000))
    LD_LIBRARY_PATH=$(dirname "$LLAMA_SERVER") "$LLAMA_SERVER" -m "$model" -np 8 -c 8192 -t 2 --port "$port" "$@" \
        >"$work/llama.log" 2>&1 &
    local pid=$!
    pids+=("$pid")
    until curl -sf "http://127.0.0.1:$port/health" >/dev/null; do
        kill -0 "$pid" 2>/dev/null || return 1
        sleep 0.5
    done
    for name in shared plain; do
        llama_s[$name]=$(python3 - "$work/$name.jsonl" "$port" <<'EOF2'
import json, sys, time, urllib.request
from concurrent.futures import ThreadPoolExecutor
lines = [json.loads(l) for l in open(sys.argv[1])]
url = f"http://127.0.0.1:{sys.argv[2]}/v1/chat/completions"
def ask(line):
    req = urllib.request.Request(url, json.dumps(line["body"]).encode(), {"Content-Type": "application/json"})
    return json.load(urllib.request.urlopen(req, timeout=3600))["usage"]["completion_tokens"]
start = time.time()
with ThreadPoolExecutor(8) as pool:
    tokens = sum(pool.map(ask, lines))
print(f"{time.time() - start:.1f}")
print(f"llama-server completion tokens: {tokens}", file=sys.stderr)
EOF2
) || { kill "$pid" 2>/dev/null; return 1; }
        echo "llama-server $name: ${llama_s[$name]} s"
    done
    kill "$pid"
    wait "$pid" 2>/dev/null || true
}
declare -A llama_s
if ! llama_run; then
    echo "llama-server died ($(grep -m1 -i -E 'segmentation|abort|error' "$work/llama.log" || echo 'no message')); again with --no-repack"
    llama_run --no-repack
fi
python3 - "${pdq_s[shared]}" "${pdq_s[plain]}" "${llama_s[shared]}" "${llama_s[plain]}" <<'EOF'
import sys
ps, pp, ls, lp = map(float, sys.argv[1:])
print(f"\n| | shared system prompt | no system prompt |\n|---|---:|---:|")
print(f"| llama-server -np 8 (2 threads), 8 at a time | {ls:.1f} s | {lp:.1f} s |")
print(f"| pdq serve --mode colocated --decode-dp 1 | {ps:.1f} s | {pp:.1f} s |")
print(f"\nllama-server / pdq, shared prompt: {ls / ps:.2f} (aim >= 1.5); pdq shared / pdq plain: {ps / pp:.2f} (aim <= 1.2)")
EOF
