#!/usr/bin/env bash
# The checks CI runs before the tests: formatting, clippy with warnings as errors, and the API
# docs (broken intra-doc links are errors). Each runs even when an earlier one failed, so one
# CI run reports them all; the exit status is non-zero if any failed.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

status=0
step() {
    local name=$1
    shift
    local started=$SECONDS
    if "$@"; then
        echo "lint: $name passed ($((SECONDS - started)) s)"
    else
        echo "lint: $name FAILED ($((SECONDS - started)) s)"
        status=1
    fi
}
step "cargo fmt --check" cargo fmt --all --check
step "cargo clippy -D warnings" cargo clippy --workspace --all-targets --quiet -- -D warnings
step "cargo doc -D warnings" env RUSTDOCFLAGS=-Dwarnings cargo doc --workspace --no-deps --quiet
exit $status
