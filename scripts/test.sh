#!/usr/bin/env bash
# The whole test suite (what CI runs): starts RabbitMQ and PostgreSQL if they are not listening,
# runs the lints (scripts/lint.sh: fmt, clippy -D warnings, rustdoc -D warnings) and the offline
# validation of the Kubernetes manifests (scripts/validate-deploy.sh), then
# `cargo test --workspace`, the broker-restart and broker-cluster tests alone, and the
# NVRTC compile check of the CUDA kernels (scripts/nvrtc-check.sh). Extra arguments go to
# cargo test (and skip the lints and the last two steps), e.g.
#   scripts/test.sh -p pdq-protocol        scripts/test.sh --test e2e routing:: -- --nocapture
#
#   DATABASE_URL   server that #[sqlx::test] creates a fresh database per test on
#   PDQ_AMQP_URL   broker; each test uses its own namespace
#   PDQ_CACHE_DIR  where the tiny model is generated once and reused (default target/pdq-cache)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

bash scripts/services.sh

export DATABASE_URL=${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}
export PDQ_AMQP_URL=${PDQ_AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/%2f}
# Absolute: cargo runs each crate's tests from that crate's directory.
export PDQ_CACHE_DIR=${PDQ_CACHE_DIR:-$PWD/target/pdq-cache}

status=0
if [[ $# -eq 0 ]]; then
    bash scripts/lint.sh || status=$?
    # The Kubernetes manifests in deploy/, validated offline (no cluster is reachable here).
    bash scripts/validate-deploy.sh || status=$?
fi
# `-p CRATE` picks crates itself; otherwise the whole workspace.
scope=(--workspace)
for a in "$@"; do
    if [[ $a == -p || $a == --package || $a == -p* || $a == --package=* ]]; then scope=(); fi
done
cargo test "${scope[@]}" --no-fail-fast "$@" || status=$?
# Tests that stop the whole broker run alone, after every other test is done with it.
if [[ $# -eq 0 ]]; then
    cargo test --workspace --test broker_restart -- --ignored || status=$?
    # A three-node RabbitMQ cluster of its own (ports 5681-5683) losing a node mid-batch; it says
    # SKIPPED where no node can start here (PDQ_REQUIRE_RABBIT_CLUSTER=1 makes that a failure).
    # Its output is shown (the SKIPPED line, the figures), with the logs cut to where it connected.
    RUST_LOG=error,pdq_broker::link=info cargo test --workspace --test broker_cluster -- --ignored --nocapture || status=$?
fi
# The whole suite also compiles every CUDA kernel with NVRTC (no GPU needed), so a kernel that
# does not compile fails CI on this CPU-only machine.
if [[ $# -eq 0 ]]; then
    bash scripts/nvrtc-check.sh || status=$?
fi
exit $status
