"""Offline validation of deploy/ (run by scripts/validate-deploy.sh, which fetches the validator).

Renders each kustomization (deploy/k8s, deploy/monitoring), then:
  - validates every core Kubernetes object, strictly (unknown fields rejected), against the JSON
    schemas that ship inside the kubernetes-validate package, for each Kubernetes version in
    K8S_VERSIONS; no network;
  - checks the custom resources (RabbitmqCluster, CloudNativePG Cluster, PodMonitor) only
    structurally: no schema for them ships in a PyPI package, so this is a hand-written check
    of apiVersion, kind, the spec fields pdq relies on, and spec keys against a list copied
    from the upstream CRDs. It is said so in the output;
  - cross-checks what no schema sees: replicas against the DP sizes, Secret and ConfigMap
    references, selectors, named ports, $(VAR) references, PDQ_* variables against src/cli.rs,
    grace periods against the drain in workers/src/config.rs, and runs the pods' shell snippets
    (the entrypoint) against a stand-in for pdq.

Exit status: 0 when everything passed, 1 when anything failed.
"""

import copy
import os
import re
import shutil
import subprocess
import sys
import tempfile

import yaml
import kubernetes_validate
from kubernetes_validate import utils as kv_utils

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OVERLAYS = ["deploy/k8s", "deploy/monitoring"]
# The oldest Kubernetes release still maintained upstream when this was written, through the
# newest the package ships schemas for.
K8S_MIN = (1, 32)
CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition", "StorageClass"}

# Custom resources: no schema on PyPI. The spec keys are copied from the upstream CRDs, so a
# misspelt top-level key is caught (deeper fields are not): rabbitmq/cluster-operator v2.22.3-29
# (06cda8e8) config/crd/bases/rabbitmq.com_rabbitmqclusters.yaml; cloudnative-pg v1.30.0-86
# (a95a534d) config/crd/bases/postgresql.cnpg.io_clusters.yaml; prometheus-operator v0.93.0-24
# (6adcebc5) example/prometheus-operator-crd-full/monitoring.coreos.com_podmonitors.yaml.
CUSTOM = {
    ("rabbitmq.com/v1beta1", "RabbitmqCluster"): {
        "spec_keys": {
            "affinity", "autoEnableAllFeatureFlags", "delayStartSeconds", "image",
            "imagePullSecrets", "override", "persistence", "rabbitmq", "replicas", "resources",
            "secretBackend", "service", "skipPostDeploySteps", "terminationGracePeriodSeconds",
            "tls", "tolerations",
        },
    },
    ("postgresql.cnpg.io/v1", "Cluster"): {
        "spec_keys": {
            "affinity", "backup", "bootstrap", "certificates", "description", "enablePDB",
            "enableSuperuserAccess", "env", "envFrom", "ephemeralVolumeSource",
            "ephemeralVolumesSizeLimit", "externalClusters", "failoverDelay", "imageCatalogRef",
            "imageName", "imagePullPolicy", "imagePullSecrets", "inheritedMetadata",
            "instances", "livenessProbeTimeout", "logLevel", "managed", "maxSyncReplicas",
            "minSyncReplicas", "monitoring", "nodeMaintenanceWindow", "plugins",
            "podSecurityContext", "podSelectorRefs", "postgresGID", "postgresUID", "postgresql",
            "primaryLease", "primaryUpdateMethod", "primaryUpdateStrategy", "priorityClassName",
            "probes", "projectedVolumeTemplate", "replica", "replicationSlots", "resources",
            "schedulerName", "seccompProfile", "securityContext", "serviceAccountName",
            "serviceAccountTemplate", "smartShutdownTimeout", "startDelay", "stopDelay",
            "storage", "superuserSecret", "switchoverDelay", "tablespaces",
            "topologySpreadConstraints", "walStorage",
        },
    },
    ("monitoring.coreos.com/v1", "PodMonitor"): {
        "spec_keys": {
            "attachMetadata", "bodySizeLimit", "convertClassicHistogramsToNHCB",
            "fallbackScrapeProtocol", "jobLabel", "keepDroppedTargets", "labelLimit",
            "labelNameLengthLimit", "labelValueLengthLimit", "namespaceSelector",
            "nativeHistogramBucketLimit", "nativeHistogramMinBucketFactor",
            "podMetricsEndpoints", "podTargetLabels", "sampleLimit", "scrapeClass",
            "scrapeClassicHistograms", "scrapeNativeHistograms", "scrapeProtocols", "selector",
            "selectorMechanism", "targetLimit",
        },
    },
}
# Secrets that no manifest here creates: made by hand before applying (deploy/README.md).
USER_SECRETS = {"pdq-kv": {"secret"}, "pdq-api-key": {"key"}}


class Report:
    """Counts per category: `schema` (a core object against the Kubernetes schemas), `structure`
    (a custom resource, checked by hand), `check` (a cross-check)."""

    def __init__(self):
        self.counts = {(cat, ok): 0 for cat in ("schema", "structure", "check") for ok in (True, False)}
        self.skipped = 0

    def ok(self, what, cat="check"):
        self.counts[(cat, True)] += 1
        print(f"  ok        {what}")

    def fail(self, what, cat="check"):
        self.counts[(cat, False)] += 1
        print(f"  FAILED    {what}")

    def check(self, cond, what, cat="check"):
        (self.ok if cond else self.fail)(what, cat)
        return cond

    def skip(self, what):
        self.skipped += 1
        print(f"  SKIPPED   {what}")

    def n(self, cat, ok):
        return self.counts[(cat, ok)]

    @property
    def failed(self):
        return sum(v for (_, ok), v in self.counts.items() if not ok)


R = Report()


# ---------------------------------------------------------------------------------------------
# Rendering


def render_python(path):
    """The subset of kustomize that deploy/ uses: `resources` (files and directories) and
    `namespace`. Anything else is refused, so this never silently renders something else."""
    kpath = os.path.join(path, "kustomization.yaml")
    with open(kpath) as f:
        k = yaml.safe_load(f)
    unknown = set(k) - {"apiVersion", "kind", "namespace", "resources"}
    if unknown:
        raise SystemExit(f"{kpath}: uses {sorted(unknown)}, which this renderer does not implement")
    objs = []
    for res in k.get("resources", []):
        full = os.path.normpath(os.path.join(path, res))
        if os.path.isdir(full):
            objs.extend(render_python(full))
        else:
            with open(full) as f:
                objs.extend(d for d in yaml.safe_load_all(f) if d)
    ns = k.get("namespace")
    if ns:
        for o in objs:
            if o["kind"] == "Namespace":
                o["metadata"]["name"] = ns
            elif o["kind"] not in CLUSTER_SCOPED:
                o.setdefault("metadata", {})["namespace"] = ns
    return objs


def render_kubectl(path):
    kubectl = shutil.which("kubectl")
    if not kubectl:
        return None
    try:
        out = subprocess.run([kubectl, "kustomize", path], check=True, capture_output=True, text=True).stdout
    except subprocess.CalledProcessError as e:
        R.fail(f"kubectl kustomize {path}: {e.stderr.strip()}")
        return None
    return [d for d in yaml.safe_load_all(out) if d]


def key(o):
    return (o["apiVersion"], o["kind"], o["metadata"].get("namespace", ""), o["metadata"]["name"])


def render(path):
    objs = render_python(path)
    ref = render_kubectl(path)
    if ref is None:
        print(f"  note      {os.path.relpath(path, ROOT)}: no kubectl here; rendered by the built-in subset of kustomize only")
    else:
        same = sorted(objs, key=key) == sorted(ref, key=key)
        R.check(same, f"{os.path.relpath(path, ROOT)}: the built-in renderer and `kubectl kustomize` give the same {len(ref)} objects")
    return objs


# ---------------------------------------------------------------------------------------------
# Schemas


def k8s_versions():
    versions = []
    # The package ships each version twice (plain and strict schemas): keep each once.
    for v in dict.fromkeys(kv_utils.all_versions()):
        mm = tuple(int(x) for x in kv_utils.major_minor(v).split("."))
        if mm >= K8S_MIN:
            versions.append(v)
    return versions


def validate_core(o, versions):
    name = f"{o['kind']}/{o['metadata']['name']}"
    errors = []
    for v in versions:
        try:
            kv_utils.validate(copy.deepcopy(o), v, strict=True)
        except kv_utils.ValidationError as e:
            path = ".".join(str(p) for p in e.path)
            errors.append(f"k8s {kv_utils.major_minor(v)}: {path}: {e.message}")
        except kv_utils.SchemaNotFoundError as e:
            errors.append(e.message)
    first, last = kv_utils.major_minor(versions[0]), kv_utils.major_minor(versions[-1])
    if errors:
        R.fail(f"schema    {name}: " + "; ".join(errors[:3]), "schema")
    else:
        R.ok(f"schema    {name} (strict, Kubernetes {first} to {last})", "schema")


def check_custom(o):
    api, kind = o["apiVersion"], o["kind"]
    name = f"{kind}/{o['metadata']['name']}"
    spec = o.get("spec")
    problems = []
    if not isinstance(o.get("metadata", {}).get("name"), str):
        problems.append("no metadata.name")
    if not isinstance(spec, dict):
        problems.append("no spec")
        spec = {}
    unknown = set(spec) - CUSTOM[(api, kind)]["spec_keys"]
    if unknown:
        problems.append(f"spec keys not in the CRD: {sorted(unknown)}")

    def need(cond, text):
        if not cond:
            problems.append(text)

    if kind == "RabbitmqCluster":
        r = spec.get("replicas")
        need(isinstance(r, int) and r >= 3 and r % 2 == 1, "spec.replicas must be an odd integer >= 3 for quorum queues")
        need(isinstance(spec.get("persistence", {}).get("storage"), str), "spec.persistence.storage must be a quantity string")
        need(isinstance(spec.get("rabbitmq", {}).get("additionalConfig", ""), str), "spec.rabbitmq.additionalConfig must be a string")
    elif kind == "Cluster":
        n = spec.get("instances")
        need(isinstance(n, int) and n >= 1, "spec.instances must be an integer >= 1")
        need(isinstance(spec.get("storage", {}).get("size"), str), "spec.storage.size must be a quantity string")
        init = spec.get("bootstrap", {}).get("initdb", {})
        need(isinstance(init.get("database"), str) and isinstance(init.get("owner"), str),
             "spec.bootstrap.initdb needs database and owner")
        for k, v in spec.get("postgresql", {}).get("parameters", {}).items():
            need(isinstance(v, str), f"spec.postgresql.parameters.{k} must be a string")
    elif kind == "PodMonitor":
        need(isinstance(spec.get("selector", {}).get("matchLabels"), dict), "spec.selector.matchLabels must be a map")
        eps = spec.get("podMetricsEndpoints")
        need(isinstance(eps, list) and eps and all(isinstance(e.get("port"), str) for e in eps),
             "spec.podMetricsEndpoints must list endpoints with a named port")
    if problems:
        R.fail(f"structure {name}: " + "; ".join(problems), "structure")
    else:
        R.ok(f"structure {name} (custom resource: checked structurally only, NOT against a schema)", "structure")


# ---------------------------------------------------------------------------------------------
# Cross-checks


def pod_templates(objs):
    for o in objs:
        if o["kind"] in ("StatefulSet", "Deployment"):
            yield o, o["spec"]["template"]


def containers(tpl):
    return tpl["spec"].get("containers", []) + tpl["spec"].get("initContainers", [])


def pdq_env_vars():
    """Every PDQ_* name quoted in pdq's Rust sources: the flags' `env = "PDQ_..."` in src/cli.rs
    and the few variables read directly (PDQ_CACHE_DIR in engine/src/tiny)."""
    found = set()
    for top in ("src", "api", "broker", "engine", "kernels", "producer", "protocol", "store", "workers"):
        for dirpath, _, files in os.walk(os.path.join(ROOT, top)):
            for name in files:
                if name.endswith(".rs"):
                    with open(os.path.join(dirpath, name)) as f:
                        found |= set(re.findall(r'"(PDQ_[A-Z0-9_]+)"', f.read()))
    return found


def rust_duration(name):
    with open(os.path.join(ROOT, "workers/src/config.rs")) as f:
        m = re.search(rf"pub const {name}: Duration = Duration::from_secs\((\d+)\)", f.read())
    return int(m.group(1)) if m else None


def cross_checks(objs, label):
    by_kind = {}
    for o in objs:
        by_kind.setdefault(o["kind"], []).append(o)
    names = {(o["kind"], o["metadata"]["name"]) for o in objs}
    config = {o["metadata"]["name"]: o.get("data", {}) for o in by_kind.get("ConfigMap", [])}
    pdq = config.get("pdq-config", {})

    # Secrets: rendered, made by an operator from a resource rendered here, or made by hand.
    secrets = {o["metadata"]["name"]: None for o in by_kind.get("Secret", [])}
    for o in by_kind.get("RabbitmqCluster", []):
        secrets[o["metadata"]["name"] + "-default-user"] = {"username", "password", "host", "port", "connection_string"}
    for o in by_kind.get("Cluster", []):
        secrets[o["metadata"]["name"] + "-app"] = {"username", "password", "host", "port", "dbname", "uri"}
    secrets.update(USER_SECRETS)

    cli_vars = pdq_env_vars()
    for owner, tpl in pod_templates(objs):
        who = f"{label}: {owner['kind']}/{owner['metadata']['name']}"
        labels = tpl["metadata"].get("labels", {})
        sel = owner["spec"]["selector"]["matchLabels"]
        R.check(all(labels.get(k) == v for k, v in sel.items()), f"{who}: selector matches the pod labels")
        if owner["kind"] == "StatefulSet":
            R.check(("Service", owner["spec"].get("serviceName")) in names, f"{who}: serviceName names a Service here")
        for c in containers(tpl):
            defined = set()
            for ef in c.get("envFrom", []):
                ref = ef.get("configMapRef", {}).get("name")
                if ref:
                    R.check(ref in config, f"{who}: envFrom ConfigMap {ref} is rendered here")
                    defined |= set(config.get(ref, {}))
            bad_refs, bad_secret = [], []
            for e in c.get("env", []):
                for var in re.findall(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", e.get("value", "")):
                    if var not in defined:
                        bad_refs.append(f"{e['name']} uses $({var}) before it is defined")
                sk = e.get("valueFrom", {}).get("secretKeyRef")
                if sk:
                    known = secrets.get(sk["name"], "missing")
                    if known == "missing" or (known is not None and sk["key"] not in known):
                        bad_secret.append(f"{sk['name']}/{sk['key']}")
                defined.add(e["name"])
            R.check(not bad_refs, f"{who}: every $(VAR) in env refers to a variable defined before it" + (f" ({bad_refs})" if bad_refs else ""))
            R.check(not bad_secret, f"{who}: every Secret key is rendered, made by an operator from a resource here, or one of {sorted(USER_SECRETS)}" + (f" (unknown: {bad_secret})" if bad_secret else ""))
            unknown = sorted(v for v in defined if v.startswith("PDQ_") and v not in cli_vars)
            R.check(not unknown, f"{who}: every PDQ_* variable is one pdq reads (src/cli.rs and the sources)" + (f" (unknown: {unknown})" if unknown else ""))
            ports = {p.get("name") for p in c.get("ports", [])}
            probe_ports = []
            for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
                p = c.get(probe, {})
                for kind in ("httpGet", "tcpSocket"):
                    if kind in p and isinstance(p[kind]["port"], str):
                        probe_ports.append(p[kind]["port"])
            R.check(all(p in ports for p in probe_ports), f"{who}: probes use the container's named ports {sorted(set(probe_ports))}")
            ann = tpl["metadata"].get("annotations", {})
            if ann.get("prometheus.io/scrape") == "true":
                port = int(ann.get("prometheus.io/port", 0))
                R.check(any(p.get("containerPort") == port and p.get("name") == "metrics" for p in c.get("ports", [])),
                        f"{who}: the prometheus.io/port annotation is the container's metrics port")

    for svc in by_kind.get("Service", []):
        sel = svc["spec"].get("selector", {})
        matched = [o for o, tpl in pod_templates(objs) if all(tpl["metadata"].get("labels", {}).get(k) == v for k, v in sel.items())]
        ok = len(matched) == 1
        if ok:
            ports = {p.get("name") for c in containers(matched[0]["spec"]["template"]) for p in c.get("ports", [])}
            ok = all(p["targetPort"] in ports for p in svc["spec"]["ports"] if isinstance(p.get("targetPort"), str))
        R.check(ok, f"{label}: Service/{svc['metadata']['name']} selects one workload and targets its named ports")

    for pdb in by_kind.get("PodDisruptionBudget", []):
        sel = pdb["spec"]["selector"]["matchLabels"]
        R.check(any(all(tpl["metadata"].get("labels", {}).get(k) == v for k, v in sel.items()) for _, tpl in pod_templates(objs)),
                f"{label}: PodDisruptionBudget/{pdb['metadata']['name']} selects a workload")

    sts = {o["metadata"]["name"]: o for o in by_kind.get("StatefulSet", [])}
    for role, var in (("prefill", "PDQ_PREFILL_DP"), ("decode", "PDQ_DECODE_DP")):
        s = sts.get(f"pdq-{role}")
        if R.check(s is not None and var in pdq, f"{label}: StatefulSet pdq-{role} and {var} exist"):
            R.check(s["spec"]["replicas"] == int(pdq[var]),
                    f"{label}: pdq-{role} replicas ({s['spec']['replicas']}) = {var} ({pdq[var]}), since the DP rank is the pod ordinal")

    rmq = by_kind.get("RabbitmqCluster", [])
    R.check(pdq.get("PDQ_QUEUE_TYPE") == "quorum" and rmq and rmq[0]["spec"].get("replicas", 1) >= 3,
            f"{label}: PDQ_QUEUE_TYPE is quorum on a RabbitmqCluster of 3 or more nodes")

    drain = rust_duration("DRAIN_TIMEOUT")
    if R.check(drain is not None, "workers/src/config.rs still defines DRAIN_TIMEOUT in seconds"):
        for role in ("prefill", "decode"):
            s = sts.get(f"pdq-{role}")
            if s:
                grace = s["spec"]["template"]["spec"].get("terminationGracePeriodSeconds", 30)
                R.check(grace >= drain + 60, f"{label}: pdq-{role} terminationGracePeriodSeconds ({grace}) >= the KV drain ({drain} s) + 60 s for held messages")
    metrics_rs = open(os.path.join(ROOT, "api", "src", "metrics.rs")).read()
    for role in ("prefill", "decode"):
        s = sts.get(f"pdq-{role}")
        if s:
            probe = s["spec"]["template"]["spec"]["containers"][0].get("readinessProbe", {}).get("httpGet", {})
            R.check(probe.get("path") == "/ready" and probe.get("port") == "metrics" and '.route("/ready"' in metrics_rs,
                    f"{label}: pdq-{role} readiness is GET /ready on the metrics port, a route api/src/metrics.rs serves")

    for role in ("prefill", "decode"):
        s = sts.get(f"pdq-{role}")
        if s:
            run_shell_snippets(s, role, label)


def run_shell_snippets(sts, role, label):
    """Runs the container's entrypoint with a stand-in for pdq."""
    c = sts["spec"]["template"]["spec"]["containers"][0]
    entry = c["args"][0]
    R.check(c["command"] == ["/bin/sh", "-c"], f"{label}: pdq-{role} entrypoint is a /bin/sh -c snippet")
    with tempfile.TemporaryDirectory() as d:
        with open(os.path.join(d, "pdq"), "w") as f:
            f.write('#!/bin/sh\nprintf "%s\\n" "$@" > "$STUB_OUT"\n')
        os.chmod(os.path.join(d, "pdq"), 0o755)
        out = os.path.join(d, "out")
        for pod_ip, host in (("10.1.2.3", "10.1.2.3"), ("fd00::17", "[fd00::17]")):
            env = dict(os.environ, PATH=d + os.pathsep + os.environ["PATH"], STUB_OUT=out,
                       POD_NAME=f"pdq-{role}-12", POD_IP=pod_ip, PDQ_NAMESPACE="pdq", DATABASE_URL="postgresql://x@y/z")
            r = subprocess.run(["/bin/sh", "-c", entry], env=env, capture_output=True, text=True)
            args = open(out).read().split("\n") if os.path.exists(out) else []
            want = ["worker", "--role", role, "--dp-rank", "12", "--advertise-host", host, ""]
            R.check(r.returncode == 0 and args == want, f"{label}: pdq-{role} entrypoint runs `pdq {' '.join(want).strip()}` for pod {env['POD_NAME']} at {pod_ip}" + ("" if args == want else f" (got {args}, stderr {r.stderr.strip()!r})"))
        env = dict(os.environ, PATH=d + os.pathsep + os.environ["PATH"], STUB_OUT=out, POD_NAME="pdq", POD_IP="10.1.2.3")
        r = subprocess.run(["/bin/sh", "-c", entry], env=env, capture_output=True, text=True)
        R.check(r.returncode != 0, f"{label}: pdq-{role} entrypoint refuses a pod name without an ordinal")


def monitor_checks(objs, label):
    """The overlay adds a PodMonitor to deploy/k8s (checked above): it must select pdq's pods by
    a port they name."""
    for pm in (o for o in objs if o["kind"] == "PodMonitor"):
        sel = pm["spec"]["selector"]["matchLabels"]
        want = {e["port"] for e in pm["spec"]["podMetricsEndpoints"]}
        selected = [tpl for _, tpl in pod_templates(objs) if all(tpl["metadata"].get("labels", {}).get(k) == v for k, v in sel.items())]
        named = [all(any(p.get("name") == w for c in containers(t) for p in c.get("ports", [])) for w in want) for t in selected]
        R.check(len(selected) == 3 and all(named),
                f"{label}: PodMonitor/{pm['metadata']['name']} selects the prefill, decode and API pods ({len(selected)}) by their port {sorted(want)}")


# ---------------------------------------------------------------------------------------------


def main():
    versions = k8s_versions()
    print(f"validator: kubernetes-validate {kubernetes_validate.__version__} (JSON schemas for Kubernetes "
          f"{kv_utils.major_minor(versions[0])} to {kv_utils.major_minor(versions[-1])}, shipped in the package; no network)")
    seen = set()
    for overlay in OVERLAYS:
        print(f"{overlay}:")
        objs = render(os.path.join(ROOT, overlay))
        for o in objs:
            k = key(o)
            if k in seen:
                continue  # an overlay repeats its base's objects: validate each once
            seen.add(k)
            if (o["apiVersion"], o["kind"]) in CUSTOM:
                check_custom(o)
            else:
                validate_core(o, versions)
        if overlay == "deploy/k8s":
            cross_checks(objs, overlay)
        else:
            monitor_checks(objs, overlay)
    print()
    print(f"validate-deploy: {'FAILED' if R.failed else 'PASSED'} ({len(seen)} objects): "
          f"schema-validated {R.n('schema', True)} ok / {R.n('schema', False)} failing; "
          f"structural only {R.n('structure', True)} ok / {R.n('structure', False)} failing; "
          f"cross-checks {R.n('check', True)} ok / {R.n('check', False)} failing / {R.skipped} skipped")
    if R.n("structure", True) + R.n("structure", False):
        print("validate-deploy: note: RabbitmqCluster, CloudNativePG Cluster and PodMonitor were NOT validated against a "
              "schema (none ships in a PyPI package); they were only checked structurally")
    print("validate-deploy: nothing was applied to a cluster (none is reachable from here)")
    return 1 if R.failed else 0


if __name__ == "__main__":
    sys.exit(main())
