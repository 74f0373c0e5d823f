"""Checks everything under deploy/ offline; scripts/validate-deploy.sh runs it in a venv.

1. YAML lint (yamllint) of every YAML file under deploy/.
2. Each overlay of deploy/k8s rendered (kustomize_lite.py; where kubectl exists, `kubectl
   kustomize` too, and the two renders must be identical).
3. Every rendered object validated against the Kubernetes OpenAPI schemas (kubernetes-validate,
   strict: unknown fields are errors) for the oldest and newest Kubernetes versions supported;
   custom resources (KEDA, External Secrets) against deploy/schemas/.
4. The manifests checked against the code they deploy: subcommands, ports, activities and queue
   names, drain time, probes, resources, and that every Secret and ConfigMap referenced exists
   (from an ExternalSecret in production; from the documented hand-made list in dev). The
   NetworkPolicies: everything denied by default; only the order service, the admin ingress and
   Prometheus reach the engine; only the queue's clients (engine, services, workers) reach
   RabbitMQ.
5. Kong's declarative config against deploy/schemas/kong-deck-3.0.json and the k8s Services.
6. Prometheus: scrape config; alert rules parsed by a real PromQL parser (promql-parser), and
   every metric and label they use is one the code exports; each runbook link resolves.
7. The Grafana dashboard: JSON, the panels it must have, and the same PromQL checks.
8. The Dockerfile: the rules hadolint would apply to it that matter here.

Exits 1 listing every problem found, 0 when there is none.
"""

from __future__ import annotations

import glob
import json
import os
import re
import shutil
import subprocess
import sys
from typing import Any, Iterable

import jsonschema
import kubernetes_validate
import promql_parser
import yaml
from yamllint import linter
from yamllint.config import YamlLintConfig

sys.path.insert(0, os.path.dirname(__file__))
import kustomize_lite  # noqa: E402

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
DEPLOY = os.path.join(ROOT, "deploy")
OVERLAYS = ["dev", "prod", "prod-us", "prod-eu"]
PROD_REGIONS = {"prod-us": "us", "prod-eu": "eu"}
# Overlays that other overlays build on and that are never applied alone: their Secrets come
# from the overlay above them, so references are not checked there.
LAYERS = {"prod"}
# The oldest Kubernetes the manifests support (native preStop sleep is on by default from 1.30)
# and the newest kubernetes-validate knows.
K8S_VERSIONS = ["1.30.0", kubernetes_validate.latest_version()]
# Secrets a dev namespace gets by hand (docs/operations.md, "Dev"): no Stripe, no SMTP.
DEV_SECRETS = {"orderflow-database", "orderflow-amqp", "orderflow-redis", "orderflow-jwt", "orderflow-admin"}
# Labels Prometheus adds to every series of the orderflow job (prometheus.yml relabelling).
TARGET_LABELS = {"job", "instance", "namespace", "pod", "app", "component", "activity", "region"}
# Series Prometheus makes itself.
BUILTIN_SERIES = {"up": set(), "scrape_duration_seconds": set(), "scrape_samples_scraped": set()}
REQUIRED_PANELS = ["Throughput", "Latency", "Compensations", "Queue depths"]
WORKER_SERVICES = {"order", "inventory", "payment", "notification"}

problems: list[str] = []


def problem(msg: str) -> None:
    problems.append(msg)


def rel(path: str) -> str:
    return os.path.relpath(path, ROOT)


def read(path: str) -> str:
    with open(os.path.join(ROOT, path)) as f:
        return f.read()


# --- What the code says ------------------------------------------------------------------------


def rust_sources() -> Iterable[str]:
    for pattern in ["engine/src/**/*.rs", "services/*/src/**/*.rs", "activities/src/**/*.rs", "queue/src/**/*.rs", "telemetry/src/**/*.rs", "src/**/*.rs"]:
        yield from glob.glob(os.path.join(ROOT, pattern), recursive=True)


METRIC_DEF = re.compile(
    r'"([a-z][a-z0-9]*(?:_[a-z0-9]+)+)"\s*,\s*"(?:[^"\\]|\\.)*"\s*\)?\s*(?:,\s*&\[([^\]]*)\])?'
)


def exported_metrics() -> dict[str, set[str]]:
    """Metric name -> label names, from every registration in the Rust sources: a metric name
    literal followed by its help literal (and the label list, for vectors)."""
    out: dict[str, set[str]] = {}
    for path in rust_sources():
        with open(path) as f:
            text = f.read()
        for m in METRIC_DEF.finditer(text):
            labels = set(re.findall(r'"([^"]+)"', m.group(2) or ""))
            out.setdefault(m.group(1), set()).update(labels)
    return out


def activities_from_code() -> list[str]:
    text = read("workflows/src/order/contracts.rs")
    consts = dict(re.findall(r'pub const ([A-Z_]+): &str = "([^"]+)";', text))
    body = re.search(r"ORDER_SAGA_ACTIVITIES: \[&str; \d+\] = \[(.*?)\];", text, re.S)
    if not body:
        problem("workflows/src/order/contracts.rs: ORDER_SAGA_ACTIVITIES not found")
        return []
    return [consts[n] for n in re.findall(r"[A-Z_]+", body.group(1))]


def task_queue_prefix() -> str:
    m = re.search(r'fn task_queue\(activity: &str\) -> String \{\s*format!\("([^{]*)\{activity\}"\)', read("engine/core/src/protocol.rs"))
    if not m:
        problem("engine/core/src/protocol.rs: task_queue's format not found")
        return "orderflow.task."
    return m.group(1)


def service_ports() -> dict[str, int]:
    return {k.lower(): int(v) for k, v in re.findall(r"pub const ([A-Z]+): u16 = (\d+);", read("services/kit/src/config.rs"))}


def subcommands() -> set[str]:
    body = re.search(r"pub enum Command \{(.*?)\n\}", read("src/cli.rs"), re.S)
    names = re.findall(r"^    ([A-Z][A-Za-z]+)(?: \{|\(|,)", body.group(1), re.M) if body else []
    return {re.sub(r"(?<!^)([A-Z])", r"-\1", n).lower() for n in names}


def worker_drain_seconds() -> int:
    m = re.search(r"drain_timeout: Duration::from_secs\((\d+)\)", read("activities/src/worker.rs"))
    return int(m.group(1)) if m else 30


# --- 1. YAML lint ------------------------------------------------------------------------------


def lint_yaml() -> None:
    conf = YamlLintConfig(file=os.path.join(DEPLOY, ".yamllint.yaml"))
    files = sorted(glob.glob(os.path.join(DEPLOY, "**", "*.y*ml"), recursive=True))
    files = [f for f in files if f.endswith((".yaml", ".yml"))]
    for path in files:
        with open(path) as f:
            for p in linter.run(f, conf, path):
                problem(f"{rel(path)}:{p.line}:{p.column}: yamllint {p.level}: {p.desc} ({p.rule})")
    print(f"yamllint: {len(files)} files")


# --- 2. Rendering ------------------------------------------------------------------------------


def obj_key(o: dict[str, Any]) -> tuple[str, str, str, str]:
    m = o.get("metadata", {})
    return (o.get("apiVersion", ""), o.get("kind", ""), m.get("namespace", ""), m.get("name", ""))


def render(overlay: str) -> list[dict[str, Any]] | None:
    path = os.path.join(DEPLOY, "k8s", "overlays", overlay)
    try:
        objects = kustomize_lite.build(path)
    except (kustomize_lite.KustomizeError, yaml.YAMLError) as e:
        problem(f"overlay {overlay}: {e}")
        return None
    kubectl = shutil.which("kubectl")
    if kubectl:
        run = subprocess.run([kubectl, "kustomize", path], capture_output=True, text=True)
        if run.returncode != 0:
            problem(f"overlay {overlay}: kubectl kustomize failed: {run.stderr.strip()}")
        else:
            real = {obj_key(o): o for o in yaml.safe_load_all(run.stdout) if o}
            mine = {obj_key(o): o for o in objects}
            for k in sorted(set(real) ^ set(mine)):
                problem(f"overlay {overlay}: {k} rendered by only one of kustomize and kustomize_lite")
            for k in sorted(set(real) & set(mine)):
                if real[k] != mine[k]:
                    problem(f"overlay {overlay}: {k} renders differently with kustomize and kustomize_lite")
    return objects


# --- 3. Schemas --------------------------------------------------------------------------------


def crd_schema(o: dict[str, Any]) -> dict[str, Any] | None:
    api = o.get("apiVersion", "")
    if "/" not in api or "." not in api.split("/")[0]:
        return None
    path = os.path.join(DEPLOY, "schemas", f"{api.replace('/', '_')}_{o.get('kind')}.json")
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return json.load(f)


def validate_schemas(overlay: str, objects: list[dict[str, Any]]) -> None:
    for o in objects:
        where = f"overlay {overlay}: {o.get('kind')}/{o.get('metadata', {}).get('name')}"
        schema = crd_schema(o)
        if schema is not None:
            for e in jsonschema.Draft202012Validator(schema).iter_errors(o):
                problem(f"{where}: {'/'.join(map(str, e.absolute_path))}: {e.message}")
            continue
        api = o.get("apiVersion", "")
        if "/" in api and "." in api.split("/")[0] and not api.split("/")[0].endswith(".k8s.io"):
            problem(f"{where}: custom resource {api} has no schema in deploy/schemas/")
            continue
        for version in K8S_VERSIONS:
            try:
                kubernetes_validate.validate(o, version, strict=True)
            except kubernetes_validate.ValidationError as e:
                path = "/".join(map(str, e.path))
                problem(f"{where}: Kubernetes {version}: {path}: {e.message}")
            except kubernetes_validate.SchemaNotFoundError as e:
                problem(f"{where}: Kubernetes {version} has no such kind: {e}")


# --- 4. The manifests against the code --------------------------------------------------------


def containers(o: dict[str, Any]) -> list[dict[str, Any]]:
    spec = o.get("spec", {}).get("template", {}).get("spec", {})
    return spec.get("containers", []) + spec.get("initContainers", [])


def selects(selector: dict[str, str], o: dict[str, Any]) -> bool:
    labels = o.get("spec", {}).get("template", {}).get("metadata", {}).get("labels", {})
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def check_semantics(overlay: str, objects: list[dict[str, Any]]) -> None:
    def err(msg: str) -> None:
        problem(f"overlay {overlay}: {msg}")

    by_kind: dict[str, list[dict[str, Any]]] = {}
    for o in objects:
        by_kind.setdefault(o["kind"], []).append(o)
    deployments = {d["metadata"]["name"]: d for d in by_kind.get("Deployment", [])}
    config_maps = {c["metadata"]["name"]: c for c in by_kind.get("ConfigMap", [])}
    prod = overlay.startswith("prod")

    # Never a credential in the manifests.
    for s in by_kind.get("Secret", []):
        err(f"Secret/{s['metadata']['name']} carries values: reference Secrets made outside")
    provided = {e["spec"]["target"]["name"] for e in by_kind.get("ExternalSecret", [])}
    available = provided if prod else DEV_SECRETS
    if overlay in PROD_REGIONS:
        region = PROD_REGIONS[overlay]
        for e in by_kind.get("ExternalSecret", []):
            keys = [d.get("extract", {}).get("key", "") for d in e["spec"].get("dataFrom", [])]
            keys += [d["remoteRef"]["key"] for d in e["spec"].get("data", [])]
            if not e["spec"]["secretStoreRef"]["name"].endswith(f"-{region}") or not all(f"/{region}/" in k for k in keys):
                err(f"ExternalSecret/{e['metadata']['name']} reads outside region {region}")
    namespaces = {n["metadata"]["name"] for n in by_kind.get("Namespace", [])}
    if len(namespaces) != 1:
        err(f"expected one Namespace, found {sorted(namespaces)}")
    for o in objects:
        ns = o["metadata"].get("namespace")
        if o["kind"] != "Namespace" and ns not in namespaces:
            err(f"{o['kind']}/{o['metadata']['name']} is in namespace {ns}, not the overlay's")

    def check_refs(where: str, c: dict[str, Any]) -> None:
        for src in c.get("envFrom", []):
            if "configMapRef" in src and src["configMapRef"]["name"] not in config_maps:
                err(f"{where}: ConfigMap {src['configMapRef']['name']} does not exist")
            if "secretRef" in src and overlay not in LAYERS and src["secretRef"]["name"] not in available:
                err(f"{where}: Secret {src['secretRef']['name']} is not provided")
        for env in c.get("env", []):
            ref = env.get("valueFrom", {}).get("secretKeyRef")
            if ref and overlay not in LAYERS and ref["name"] not in available:
                err(f"{where}: env {env['name']}: Secret {ref['name']} is not provided")
            if re.search(r"://[^/\s]*:[^/\s]*@", str(env.get("value", ""))):
                err(f"{where}: env {env['name']} has a credential in its value")
        if c.get("image", "").split(":")[0] == "orderflow" or c.get("image", "").endswith(":latest"):
            err(f"{where}: image {c.get('image')} is not pinned by the overlay")
        args = c.get("args", [])
        if not args or args[0] not in commands:
            err(f"{where}: `orderflow {' '.join(args)}` is not a subcommand of this build")

    commands = subcommands()
    for name, d in deployments.items():
        for c in containers(d):
            check_refs(f"Deployment/{name}", c)
    for j in by_kind.get("Job", []):
        for c in containers(j):
            check_refs(f"Job/{j['metadata']['name']}", c)
    if not any(c.get("args") == ["migrate"] for j in by_kind.get("Job", []) for c in containers(j)):
        err("no Job runs `orderflow migrate`")
    for t in by_kind.get("TriggerAuthentication", []):
        for ref in t["spec"].get("secretTargetRef", []):
            if overlay not in LAYERS and ref["name"] not in available:
                err(f"TriggerAuthentication/{t['metadata']['name']}: Secret {ref['name']} is not provided")

    def probed(name: str, c: dict[str, Any]) -> None:
        ports = {p["name"]: p["containerPort"] for p in c.get("ports", [])}
        for probe, path in [("livenessProbe", "/health"), ("readinessProbe", "/ready")]:
            get = c.get(probe, {}).get("httpGet", {})
            if get.get("path") != path or get.get("port") not in ports:
                err(f"Deployment/{name}: {probe} must GET {path} on a declared port")

    def budgeted(name: str) -> None:
        d = deployments[name]
        sel = d["spec"]["selector"]["matchLabels"]
        if not any(p["spec"]["selector"].get("matchLabels") == sel for p in by_kind.get("PodDisruptionBudget", [])):
            err(f"Deployment/{name} has no PodDisruptionBudget")

    # The engine.
    engine = deployments.get("orderflow-engine")
    if not engine:
        err("no orderflow-engine Deployment")
    else:
        c = containers(engine)[0]
        if c["args"] != ["engine"]:
            err("orderflow-engine does not run `orderflow engine`")
        if prod and engine["spec"].get("replicas") != 3:
            err("the engine runs 3 replicas in production")
        probed("orderflow-engine", c)
        budgeted("orderflow-engine")

    # One Deployment, Service, HPA and PDB per service API, on the port the code uses.
    ports = service_ports()
    for svc in ["order", "inventory", "payment", "notification", "user"]:
        name = f"orderflow-{svc}"
        d = deployments.get(name)
        if not d:
            err(f"no {name} Deployment")
            continue
        c = containers(d)[0]
        if c["args"][:2] != ["service", svc]:
            err(f"{name} does not run `orderflow service {svc}`")
        elif svc in WORKER_SERVICES and "--no-workers" not in c["args"]:
            err(f"{name} takes tasks itself: the per-queue worker Deployments are the only consumers (--no-workers)")
        if [p["containerPort"] for p in c.get("ports", [])] != [ports.get(svc)]:
            err(f"{name} listens on {ports.get(svc)} in the code")
        if prod and c.get("resources") != {"requests": {"cpu": "500m", "memory": "512Mi"}, "limits": {"cpu": "1", "memory": "1Gi"}}:
            err(f"{name}: services request 512Mi/500m and are limited to 1Gi/1 CPU")
        if "replicas" in d["spec"]:
            err(f"{name}: `replicas` would fight the HPA")
        probed(name, c)
        budgeted(name)
        if not any(h["spec"]["scaleTargetRef"]["name"] == name for h in by_kind.get("HorizontalPodAutoscaler", [])):
            err(f"{name} has no HorizontalPodAutoscaler")
        if not any(s["metadata"]["name"] == name and selects(s["spec"]["selector"], d) and s["spec"]["ports"][0]["port"] == ports.get(svc) for s in by_kind.get("Service", [])):
            err(f"{name} has no Service on port {ports.get(svc)} selecting it")

    # One worker Deployment and ScaledObject per activity queue.
    prefix = config_maps.get("orderflow-config", {}).get("data", {}).get("ORDERFLOW_QUEUE_PREFIX", "")
    queue_of = task_queue_prefix()
    drain = worker_drain_seconds()
    seen = set()
    for name, d in deployments.items():
        c = containers(d)[0]
        if c.get("args", [None])[0] != "worker":
            continue
        if len(c["args"]) != 3 or c["args"][1] != "--queues" or "," in c["args"][2]:
            err(f"{name}: a worker Deployment serves exactly one queue")
            continue
        activity = c["args"][2]
        seen.add(activity)
        probed(name, c)
        budgeted(name)
        if d["spec"]["template"]["spec"].get("terminationGracePeriodSeconds", 30) < drain + 10:
            err(f"{name}: terminationGracePeriodSeconds leaves no time for the {drain} s drain")
        if "replicas" in d["spec"]:
            err(f"{name}: `replicas` would fight KEDA")
        scaled = [s for s in by_kind.get("ScaledObject", []) if s["spec"]["scaleTargetRef"]["name"] == name]
        if len(scaled) != 1:
            err(f"{name}: expected one ScaledObject, found {len(scaled)}")
            continue
        for t in scaled[0]["spec"]["triggers"]:
            want = f"{prefix}{queue_of}{activity}"
            if t["type"] != "rabbitmq" or t["metadata"].get("queueName") != want:
                err(f"ScaledObject/{name}: must scale on RabbitMQ queue {want}")
    expected = set(activities_from_code())
    if seen != expected:
        err(f"worker Deployments serve {sorted(seen)}, the order saga's activities are {sorted(expected)}")

    for s in by_kind.get("Service", []):
        if not any(selects(s["spec"]["selector"], d) for d in deployments.values()):
            err(f"Service/{s['metadata']['name']} selects no Deployment")
    for p in by_kind.get("PodDisruptionBudget", []):
        if not any(selects(p["spec"]["selector"].get("matchLabels", {}), d) for d in deployments.values()):
            err(f"PodDisruptionBudget/{p['metadata']['name']} selects no Deployment")
    for h in by_kind.get("HorizontalPodAutoscaler", []):
        if h["spec"]["scaleTargetRef"]["name"] not in deployments:
            err(f"HorizontalPodAutoscaler/{h['metadata']['name']} targets no Deployment")
    check_network_policies(err, objects, deployments)


# --- 4b. NetworkPolicies -----------------------------------------------------------------------

# Who may reach the engine's port (DESIGN.md §7): the order service's pods, and these namespaces
# (the admin ingress, Prometheus's scrapes).
ENGINE_CALLERS = {"orderflow-order"}
ENGINE_NAMESPACES = {"ingress-nginx", "monitoring"}
# Pods that may open AMQP: the queue's clients. The migration Job and anything else may not.
AMQP_PORTS = {5672, 5671}
AMQP_COMPONENTS = {"engine", "service", "worker"}


def matches(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """A Kubernetes label selector (matchLabels and matchExpressions) against `labels`."""
    if any(labels.get(k) != v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for e in selector.get("matchExpressions", []):
        has, value = e["key"] in labels, labels.get(e["key"])
        op = e["operator"]
        if (op == "In" and value not in e["values"]) or (op == "NotIn" and value in e.get("values", [])) \
                or (op == "Exists" and not has) or (op == "DoesNotExist" and has):
            return False
    return True


def pod_labels(o: dict[str, Any]) -> dict[str, str]:
    if o["kind"] == "CronJob":
        return o["spec"]["jobTemplate"]["spec"]["template"]["metadata"].get("labels", {})
    return o.get("spec", {}).get("template", {}).get("metadata", {}).get("labels", {})


def check_network_policies(err: Any, objects: list[dict[str, Any]], deployments: dict[str, Any]) -> None:
    policies = [o for o in objects if o["kind"] == "NetworkPolicy"]
    workloads = [o for o in objects if o["kind"] in ("Deployment", "StatefulSet", "Job", "CronJob")]
    if not any(p["spec"].get("podSelector") == {} and set(p["spec"].get("policyTypes", [])) == {"Ingress", "Egress"}
               and not p["spec"].get("ingress") and not p["spec"].get("egress") for p in policies):
        err("no default-deny NetworkPolicy (every pod, Ingress and Egress, no rule)")
        return
    for p in policies:
        if not any(matches(p["spec"]["podSelector"], pod_labels(w)) for w in workloads):
            err(f"NetworkPolicy/{p['metadata']['name']} selects no workload")

    def selecting(w: dict[str, Any], kind: str) -> list[dict[str, Any]]:
        return [p for p in policies if kind in p["spec"].get("policyTypes", []) and matches(p["spec"]["podSelector"], pod_labels(w))]

    # The engine: every ingress rule names its peers, and each is the order service or an
    # allowed namespace.
    engine = deployments.get("orderflow-engine")
    if engine:
        for p in selecting(engine, "Ingress"):
            for rule in p["spec"].get("ingress", []):
                if not rule.get("from"):
                    err(f"NetworkPolicy/{p['metadata']['name']} lets anyone reach the engine")
                for peer in rule.get("from", []):
                    if "ipBlock" in peer:
                        err(f"NetworkPolicy/{p['metadata']['name']}: an ipBlock reaches the engine")
                    elif "namespaceSelector" in peer:
                        ns = peer["namespaceSelector"].get("matchLabels", {}).get("kubernetes.io/metadata.name")
                        if ns not in ENGINE_NAMESPACES or "podSelector" in peer:
                            err(f"NetworkPolicy/{p['metadata']['name']}: namespace {ns or peer} may not reach the engine")
                    else:
                        callers = {name for name, d in deployments.items() if matches(peer["podSelector"], pod_labels(d))}
                        if not callers or not callers <= ENGINE_CALLERS:
                            err(f"NetworkPolicy/{p['metadata']['name']}: {sorted(callers) or 'no pod'} may not reach the engine")

    # AMQP: a workload may open 5672/5671 exactly when it is one of the queue's clients. A rule
    # with no port list opens every port, so it may only lead into the namespace.
    for w in workloads:
        name = f"{w['kind']}/{w['metadata']['name']}"
        component = pod_labels(w).get("app.kubernetes.io/component")
        open_ports: set[Any] = set()
        for p in selecting(w, "Egress"):
            for rule in p["spec"].get("egress", []):
                if "ports" not in rule:
                    if any(set(peer) != {"podSelector"} for peer in rule.get("to", [{}])):
                        err(f"NetworkPolicy/{p['metadata']['name']}: an egress rule with every port leaves the namespace")
                    continue
                open_ports |= {port.get("port") for port in rule["ports"]}
        amqp = bool(open_ports & AMQP_PORTS)
        uses_amqp = any(e.get("name") == "AMQP_URL" for c in containers(w) for e in c.get("env", []))
        if amqp and component not in AMQP_COMPONENTS:
            err(f"{name} may reach RabbitMQ, but it is no client of the queue")
        if uses_amqp and not amqp:
            err(f"{name} is given AMQP_URL but no NetworkPolicy lets it reach RabbitMQ")


# --- 5. Kong -----------------------------------------------------------------------------------


def check_kong(services: list[dict[str, Any]]) -> None:
    path = os.path.join(DEPLOY, "kong", "kong.yaml")
    with open(path) as f:
        conf = yaml.safe_load(f)
    with open(os.path.join(DEPLOY, "schemas", "kong-deck-3.0.json")) as f:
        schema = json.load(f)
    for e in jsonschema.Draft202012Validator(schema).iter_errors(conf):
        problem(f"{rel(path)}: {'/'.join(map(str, e.absolute_path))}: {e.message}")
    known = {(s["metadata"]["name"], p["port"]) for s in services for p in s["spec"]["ports"]}
    for s in conf.get("services", []):
        m = re.fullmatch(r'http://([a-z0-9-]+)\.\$\{\{ env "DECK_ORDERFLOW_NAMESPACE" \}\}\.svc:(\d+)', s.get("url", ""))
        if not m or (m.group(1), int(m.group(2))) not in known:
            problem(f"{rel(path)}: service {s.get('name')}: {s.get('url')} is not a Kubernetes Service of the manifests")
        for r in s.get("routes", []):
            for p in r.get("paths", []):
                if not p.lstrip("~").startswith("/api/v1/"):
                    problem(f"{rel(path)}: route {r['name']}: {p} is outside /api/v1")
    plugins = {p["name"] for p in conf.get("plugins", [])}
    plugins |= {p["name"] for s in conf.get("services", []) for r in s.get("routes", []) for p in r.get("plugins", [])}
    for needed in ["jwt", "rate-limiting", "cors"]:
        if needed not in plugins:
            problem(f"{rel(path)}: no {needed} plugin")
    # Kong's jwt plugin finds the verifying key by the token's `iss`, which the user service sets
    # and every service requires (auth/src/lib.rs ISSUER).
    m = re.search(r'pub const ISSUER: &str = "([^"]+)";', read("auth/src/lib.rs"))
    issuer = m.group(1) if m else None
    if not issuer:
        problem("auth/src/lib.rs: ISSUER not found")
    keys = {k.get("key") for c in conf.get("consumers", []) for k in c.get("jwt_secrets", [])}
    if issuer and keys != {issuer}:
        problem(f"{rel(path)}: jwt_secrets keys {sorted(map(str, keys))} are not the tokens' iss `{issuer}`")
    for s in conf.get("services", []):
        for r in s.get("routes", []):
            for p in r.get("plugins", []):
                if p["name"] == "jwt" and p.get("config", {}).get("key_claim_name", "iss") != "iss":
                    problem(f"{rel(path)}: route {r['name']}: the jwt plugin must find keys by `iss`")


# --- 6 and 7. PromQL ---------------------------------------------------------------------------


def check_promql(where: str, expr: str, metrics: dict[str, set[str]]) -> None:
    # Grafana's variables, for the parser.
    expr = expr.replace("$__rate_interval", "5m").replace("$__interval", "1m")
    try:
        ast = promql_parser.parse(expr)
    except Exception as e:  # the parser raises ValueError-like errors from Rust
        problem(f"{where}: PromQL does not parse: {e}")
        return

    def allowed(name: str) -> set[str] | None:
        if name in BUILTIN_SERIES:
            return TARGET_LABELS
        for suffix in ["", "_bucket", "_sum", "_count"]:
            base = name[: len(name) - len(suffix)] if suffix and name.endswith(suffix) else name
            if (not suffix or name.endswith(suffix)) and base in metrics:
                extra = {"le"} if suffix == "_bucket" else set()
                return metrics[base] | TARGET_LABELS | extra
        return None

    def selectors(node: Any) -> list[Any]:
        found: list[Any] = []

        def visit(n: Any) -> None:
            if isinstance(n, promql_parser.VectorSelector):
                found.append(n)

        promql_parser.walk(node, pre_visit=visit)
        return found

    for vs in selectors(ast):
        labels = allowed(vs.name or "")
        if labels is None:
            problem(f"{where}: metric {vs.name} is not exported by the code")
            continue
        for m in vs.matchers.matchers:
            if m.name != "__name__" and m.name not in labels:
                problem(f"{where}: {vs.name} has no label {m.name}")

    def visit_agg(n: Any) -> None:
        if isinstance(n, promql_parser.AggregateExpr) and n.modifier is not None:
            under = [allowed(v.name or "") or set() for v in selectors(n.expr)]
            have = set().union(*under) if under else set()
            for label in n.modifier.labels:
                if under and label not in have:
                    problem(f"{where}: aggregates by {label}, which none of its series has")

    promql_parser.walk(ast, pre_visit=visit_agg)


def anchors(markdown: str) -> set[str]:
    """GitHub's heading anchors."""
    out = set()
    for line in markdown.splitlines():
        m = re.match(r"^#{1,6}\s+(.*)", line)
        if m:
            slug = re.sub(r"[^\w\- ]", "", m.group(1).strip().lower()).replace(" ", "-")
            out.add(slug)
    return out


def check_prometheus(metrics: dict[str, set[str]]) -> None:
    path = os.path.join(DEPLOY, "prometheus", "prometheus.yml")
    with open(path) as f:
        conf = yaml.safe_load(f)
    for rf in conf.get("rule_files", []):
        if not os.path.isfile(os.path.join(os.path.dirname(path), rf)):
            problem(f"{rel(path)}: rule file {rf} does not exist")
    jobs = [s.get("job_name") for s in conf.get("scrape_configs", [])]
    if "orderflow" not in jobs or len(jobs) != len(set(jobs)):
        problem(f"{rel(path)}: expected one `orderflow` scrape job, found {jobs}")
    actions = {"replace", "keep", "drop", "keepequal", "dropequal", "hashmod", "labelmap", "labeldrop", "labelkeep", "lowercase", "uppercase"}
    made = {"job", "instance"}
    for s in conf.get("scrape_configs", []):
        for r in s.get("relabel_configs", []):
            if r.get("action", "replace") not in actions:
                problem(f"{rel(path)}: unknown relabel action {r.get('action')}")
            try:
                re.compile(r.get("regex", "(.*)"))
            except re.error as e:
                problem(f"{rel(path)}: relabel regex {r.get('regex')}: {e}")
            if r.get("target_label") and not r["target_label"].startswith("__"):
                made.add(r["target_label"])
    made |= set(conf.get("global", {}).get("external_labels", {}))
    if made != TARGET_LABELS:
        problem(f"{rel(path)}: target labels {sorted(made)} differ from those the checks assume {sorted(TARGET_LABELS)}")

    rules_path = os.path.join(DEPLOY, "prometheus", "alerts.yml")
    with open(rules_path) as f:
        rules = yaml.safe_load(f)
    docs = anchors(read("docs/operations.md"))
    names = set()
    count = 0
    for group in rules.get("groups", []):
        for r in group.get("rules", []):
            count += 1
            name = r.get("alert") or r.get("record")
            where = f"{rel(rules_path)}: {name}"
            if not name or name in names:
                problem(f"{where}: missing or repeated name")
            names.add(name)
            check_promql(where, r.get("expr", ""), metrics)
            if "alert" in r:
                if not re.fullmatch(r"[0-9]+[smhd]", str(r.get("for", "0s"))):
                    problem(f"{where}: `for` {r.get('for')} is not a duration")
                if r.get("labels", {}).get("severity") not in {"page", "warning", "info"}:
                    problem(f"{where}: severity must be page, warning or info")
                ann = r.get("annotations", {})
                if not ann.get("summary"):
                    problem(f"{where}: no summary")
                url = ann.get("runbook_url", "")
                if not url.startswith("docs/operations.md#") or url.split("#", 1)[1] not in docs:
                    problem(f"{where}: runbook_url {url!r} is not a section of docs/operations.md")
                for label in re.findall(r"\$labels\.(\w+)", json.dumps(ann)):
                    if label not in r["expr"]:
                        problem(f"{where}: annotations use $labels.{label}, which the expression does not keep")
    wanted = {"OrderFlowSagasNeedAttention", "OrderFlowCompensationRateHigh", "OrderFlowQueueBacklog", "OrderFlowStripeCircuitOpen", "OrderFlowOutboxLag"}
    for w in sorted(wanted - names):
        problem(f"{rel(rules_path)}: alert {w} is missing")
    print(f"prometheus: {count} rules")


def check_grafana(metrics: dict[str, set[str]]) -> None:
    path = os.path.join(DEPLOY, "grafana", "orderflow.json")
    try:
        with open(path) as f:
            dash = json.load(f)
    except json.JSONDecodeError as e:
        problem(f"{rel(path)}: not JSON: {e}")
        return
    panels = [p for p in dash.get("panels", []) if p.get("type") != "row"]
    titles = [p.get("title", "") for p in panels]
    for want in REQUIRED_PANELS:
        if not any(want.lower() in t.lower() for t in titles):
            problem(f"{rel(path)}: no panel about {want}")
    ids = [p.get("id") for p in dash.get("panels", [])]
    if len(ids) != len(set(ids)):
        problem(f"{rel(path)}: panel ids repeat")
    for p in panels:
        where = f"{rel(path)}: panel {p.get('title')!r}"
        if not p.get("targets"):
            problem(f"{where}: no query")
        for k in ["x", "y", "w", "h"]:
            if not isinstance(p.get("gridPos", {}).get(k), int):
                problem(f"{where}: gridPos.{k} missing")
        for t in p.get("targets", []):
            check_promql(where, t.get("expr", ""), metrics)
    print(f"grafana: {len(panels)} panels")


# --- 8. Dockerfile -----------------------------------------------------------------------------


def check_dockerfile() -> None:
    path = os.path.join(DEPLOY, "docker", "Dockerfile")
    text = read(rel(path))
    # Join continuation lines into instructions.
    instructions = []
    for line in re.sub(r"\\\n", " ", text).splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            instructions.append(line.split(None, 1))
    args = {}
    for ins in instructions:
        if ins[0].upper() == "ARG" and "=" in ins[1]:
            k, v = ins[1].split("=", 1)
            args[k] = v
    stages = [i for i in instructions if i[0].upper() == "FROM"]
    if len(stages) < 2:
        problem(f"{rel(path)}: not multi-stage")
    for _, rest in stages:
        image = rest.split()[0]
        image = re.sub(r"\$\{(\w+)\}", lambda m: args.get(m.group(1), ""), image)
        if ":" not in image or image.endswith(":latest"):
            problem(f"{rel(path)}: base image {image} is not pinned to a tag")
    if not args.get("RUST_IMAGE", "").startswith("rust:1.95"):
        problem(f"{rel(path)}: the builder must be rust:1.95 (rust-toolchain.toml)")
    final = instructions[instructions.index(list(stages[-1])) :]
    users = [i[1] for i in final if i[0].upper() == "USER"]
    if not users or users[-1].split(":")[0] in {"0", "root"} or not users[-1].split(":")[0].isdigit():
        problem(f"{rel(path)}: the final stage must run as a numeric non-root USER")
    entry = [i[1] for i in instructions if i[0].upper() == "ENTRYPOINT"]
    if not entry or not entry[-1].startswith("["):
        problem(f"{rel(path)}: ENTRYPOINT must be exec form, so the binary gets SIGTERM")
    for verb, rest in instructions:
        if verb.upper() == "ADD":
            problem(f"{rel(path)}: use COPY, not ADD")
        if verb.upper() == "RUN" and "apt-get install" in rest:
            if "--no-install-recommends" not in rest or "rm -rf /var/lib/apt/lists" not in rest:
                problem(f"{rel(path)}: apt-get install without --no-install-recommends and list cleanup")
        if verb.upper() == "RUN" and "cargo build" in rest and "--locked" not in rest:
            problem(f"{rel(path)}: cargo build without --locked")


def main() -> int:
    lint_yaml()
    metrics = exported_metrics()
    services: list[dict[str, Any]] = []
    for overlay in OVERLAYS:
        objects = render(overlay)
        if objects is None:
            continue
        validate_schemas(overlay, objects)
        check_semantics(overlay, objects)
        if overlay == "prod":
            services = [o for o in objects if o["kind"] == "Service"]
        print(f"overlay {overlay}: {len(objects)} objects")
    if not shutil.which("kubectl"):
        print("kubectl not found: overlays rendered by kustomize_lite only (not compared with kustomize)")
    check_kong(services)
    check_prometheus(metrics)
    check_grafana(metrics)
    check_dockerfile()
    if problems:
        for p in problems:
            print(f"FAIL {p}")
        print(f"{len(problems)} problem(s) in deploy/")
        return 1
    print("deploy/: no problems")
    return 0


if __name__ == "__main__":
    sys.exit(main())
