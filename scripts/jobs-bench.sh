#!/usr/bin/env bash
# Jobs as a user sees them (README "Jobs", docs/jobs.md), with the release binary and a
# `pdq serve --prefill-dp 1 --decode-dp 1` cluster on the tiny model, in one run:
#   1. fairness: job A (A_LINES requests of 16 tokens) is submitted, then job B (50 requests);
#      prints B's time, A's time and their ratio;
#   2. a submitter's death: `pdq submit --wait` of KILL_LINES requests, SIGKILLed once it printed
#      the job id; prints the time from the kill to the job's completion;
#   3. acceptance alone: `pdq submit` of ACCEPT_LINES lines (no cluster consumes them: --feeder
#      off), its wall time and peak RSS.
# Uses a database and a namespace of its own and drops both at the end.
#   A_LINES=20000 KILL_LINES=30000 ACCEPT_LINES=1000000 scripts/jobs-bench.sh
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

A_LINES=${A_LINES:-20000}
KILL_LINES=${KILL_LINES:-30000}
ACCEPT_LINES=${ACCEPT_LINES:-1000000}
bash scripts/services.sh
cargo build --release -q
target=${CARGO_TARGET_DIR:-target}
PDQ=$target/release/pdq
server=${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}
server=${server%/*}
export DATABASE_URL=$server/pdq_jobs_bench_$$ PDQ_NAMESPACE=jobs-bench-$$ RUST_LOG=${RUST_LOG:-warn}
work=$(mktemp -d)
serve_pid=
cleanup() {
    [[ -n $serve_pid ]] && kill "$serve_pid" 2>/dev/null && wait "$serve_pid" 2>/dev/null || true
    psql -q "$server/postgres" -c "DROP DATABASE IF EXISTS pdq_jobs_bench_$$ WITH (FORCE)" >/dev/null 2>&1 || true
    rm -rf "$work"
}
trap cleanup EXIT

sql() { psql -qtA "$DATABASE_URL" -c "$1"; }
lines() { # N PREFIX MAX_TOKENS
    python3 - "$@" <<'EOF'
import json, sys
n, prefix, max_tokens = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
for i in range(n):
    body = {"text": f"job {prefix} request {i}", "sampling_params": {"max_new_tokens": max_tokens, "temperature": 0, "ignore_eos": True}}
    print(json.dumps({"custom_id": f"{prefix}{i}", "method": "POST", "url": "/generate", "body": body}))
EOF
}
job_seconds() { sql "SELECT round(extract(epoch FROM finished_at - created_at)::numeric, 2) FROM jobs WHERE id = '$1'"; }

$PDQ migrate >/dev/null
lines "$A_LINES" a 16 >"$work/a.jsonl"
lines 50 b 16 >"$work/b.jsonl"
lines "$KILL_LINES" k 1 >"$work/k.jsonl"
$PDQ serve --prefill-dp 1 --decode-dp 1 &
serve_pid=$!
until [[ $(sql "SELECT count(*) FROM workers" 2>/dev/null || echo 0) -ge 2 ]]; do sleep 0.2; done

echo "== fairness: job B (50) submitted after job A ($A_LINES), 16 tokens each"
a=$($PDQ submit "$work/a.jsonl" 2>/dev/null | head -1)
sleep 1
b=$($PDQ submit "$work/b.jsonl" 2>/dev/null | head -1)
$PDQ wait "$b" >/dev/null
$PDQ wait "$a" >/dev/null
ta=$(job_seconds "$a")
tb=$(job_seconds "$b")
echo "job A: ${ta}s, job B: ${tb}s, B / A = $(python3 -c "print(f'{$tb / $ta:.3f}')")"

echo "== a submitter's death: pdq submit --wait of $KILL_LINES lines, SIGKILLed after it printed the job id"
coproc SUBMIT { exec $PDQ submit --wait "$work/k.jsonl" 2>/dev/null; }
read -r k <&"${SUBMIT[0]}"
kill -9 "$SUBMIT_PID"
killed=$(date +%s.%N)
done_at_kill=$(sql "SELECT count(*) FROM results WHERE job_id = '$k'")
$PDQ wait "$k" >/dev/null
ended=$(date +%s.%N)
echo "killed with $done_at_kill/$KILL_LINES done; job $(sql "SELECT status FROM jobs WHERE id = '$k'") $(python3 -c "print(f'{$ended - $killed:.1f}')")s after the kill"
kill "$serve_pid"
wait "$serve_pid" || true
serve_pid=

echo "== acceptance: pdq submit of $ACCEPT_LINES lines"
lines "$ACCEPT_LINES" m 16 >"$work/m.jsonl"
# The shape comes from a live worker; register one by hand so nothing consumes the job.
sql "INSERT INTO workers (namespace, role, dp_rank, prefill_dp, decode_dp, mode, host, pid, model)
     VALUES ('$PDQ_NAMESPACE', 'prefill', 0, 1, 1, 'disagg', 'bench', 0, 'none')"
/usr/bin/time -f "%e s wall, peak RSS %M KiB" $PDQ submit "$work/m.jsonl" 2>&1 >/dev/null | grep -v "^note:" | tail -2
echo "file: $(du -h "$work/m.jsonl" | cut -f1)"

echo "== acceptance: the same file through pdq api (upload, then POST /v1/batches)"
port=$((20000 + $$ % 20000))
$PDQ api --addr "127.0.0.1:$port" --feeder off --max-file-lines 2000000 &
api_pid=$!
until curl -s "http://127.0.0.1:$port/v1/files" >/dev/null; do sleep 0.2; done
started=$(date +%s.%N)
file_id=$(curl -s -F purpose=batch -F "file=@$work/m.jsonl" "http://127.0.0.1:$port/v1/files" | python3 -c "import json,sys; print(json.load(sys.stdin)['id'])")
uploaded=$(date +%s.%N)
sql "UPDATE workers SET heartbeat_at = now() WHERE namespace = '$PDQ_NAMESPACE'"
curl -s -H 'Content-Type: application/json' "http://127.0.0.1:$port/v1/batches" \
    -d "{\"input_file_id\": \"$file_id\", \"endpoint\": \"/generate\", \"completion_window\": \"24h\"}" |
    python3 -c "import json,sys; b=json.load(sys.stdin); print('batch', b['status'], b['request_counts'])"
created=$(date +%s.%N)
echo "upload $(python3 -c "print(f'{$uploaded - $started:.1f}')")s, batch accepted $(python3 -c "print(f'{$created - $uploaded:.1f}')")s, pdq api peak RSS $(grep VmHWM /proc/$api_pid/status | awk '{print $2, $3}')"
kill "$api_pid"
wait "$api_pid" || true
