#!/usr/bin/env bash
# The checks CI runs before the tests: formatting, clippy with warnings as errors, the API
# docs (broken intra-doc links are errors), and unused dependencies (cargo-machete, installed
# from crates.io into target/tools once; where it cannot be installed, that step says SKIPPED). Each runs even when an earlier one failed, so one
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
machete=${CARGO_TARGET_DIR:-target}/tools/bin/cargo-machete
if [[ ! -x $machete ]]; then
    cargo install cargo-machete --locked --quiet --root "${CARGO_TARGET_DIR:-target}/tools" >/dev/null 2>&1 || true
fi
if [[ -x $machete ]]; then
    step "cargo machete (unused dependencies)" "$machete"
else
    echo "lint: cargo machete SKIPPED (it could not be installed from crates.io; unused dependencies were NOT checked)"
fi
exit $status
