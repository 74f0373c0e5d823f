"""Renders the kustomizations under deploy/k8s, without the kustomize binary.

Kustomize is a Go program that no package registry we can use ships (kubectl embeds it, but
kubectl is not on every machine), so CI renders the overlays with this: the subset of kustomize
that deploy/k8s uses, implemented to kustomize's documented semantics, and checked against the
real kustomize (`kubectl kustomize`) by validate.py wherever kubectl exists. A kustomization
using anything outside the subset is refused, never half-rendered.

The subset, applied in kustomize's order (patches, namespace, labels, replicas, images):
- `resources`: YAML files and directories holding a kustomization.yaml;
- `patches` with an inline RFC 6902 JSON patch and a `target` (kind, name as an anchored
  regular expression, group, version, namespace, labelSelector with `key=value` terms);
- `namespace`: set on every namespaced object; a Namespace object is renamed to it;
- `labels` with `pairs`, `includeSelectors: false` and `includeTemplates`;
- `replicas`: `name` and `count`;
- `images`: `name` with `newName`, `newTag` or `digest`.
"""

from __future__ import annotations

import copy
import os
import re
import sys
from typing import Any

import yaml

SUPPORTED_FIELDS = {
    "apiVersion",
    "kind",
    "resources",
    "patches",
    "namespace",
    "labels",
    "replicas",
    "images",
}

# Kinds that have no namespace (the ones these manifests could contain).
CLUSTER_SCOPED = {
    "Namespace",
    "ClusterRole",
    "ClusterRoleBinding",
    "CustomResourceDefinition",
    "PersistentVolume",
    "StorageClass",
    "PriorityClass",
    "ClusterSecretStore",
    "ClusterTriggerAuthentication",
}

# Where pod templates are, by kind, for `labels.includeTemplates` and `images`.
TEMPLATE_PATHS = {
    "Deployment": [["spec", "template"]],
    "ReplicaSet": [["spec", "template"]],
    "StatefulSet": [["spec", "template"]],
    "DaemonSet": [["spec", "template"]],
    "Job": [["spec", "template"]],
    "CronJob": [["spec", "jobTemplate"], ["spec", "jobTemplate", "spec", "template"]],
}

# Kinds whose `spec.replicas` the replicas field sets.
SCALABLE = {"Deployment", "ReplicaSet", "StatefulSet", "ReplicationController"}


class KustomizeError(Exception):
    pass


def build(path: str) -> list[dict[str, Any]]:
    """The objects a kustomization directory renders to, in resource order."""
    kfile = os.path.join(path, "kustomization.yaml")
    if not os.path.isfile(kfile):
        raise KustomizeError(f"{path}: no kustomization.yaml")
    with open(kfile) as f:
        k = yaml.safe_load(f) or {}
    unknown = set(k) - SUPPORTED_FIELDS
    if unknown:
        raise KustomizeError(f"{kfile}: fields this renderer does not implement: {sorted(unknown)}")

    objects: list[dict[str, Any]] = []
    for res in k.get("resources", []):
        full = os.path.normpath(os.path.join(path, res))
        if os.path.isdir(full):
            objects.extend(build(full))
        elif os.path.isfile(full):
            with open(full) as f:
                objects.extend(d for d in yaml.safe_load_all(f) if d is not None)
        else:
            raise KustomizeError(f"{kfile}: resource {res} does not exist")
    _check_unique(objects, kfile)

    for p in k.get("patches", []):
        _apply_patch(objects, p, kfile)
    if "namespace" in k:
        _set_namespace(objects, k["namespace"])
    for spec in k.get("labels", []):
        _add_labels(objects, spec, kfile)
    for r in k.get("replicas", []):
        _set_replicas(objects, r, kfile)
    for img in k.get("images", []):
        _set_image(objects, img)
    return objects


def _key(o: dict[str, Any]) -> tuple[str, str, str]:
    meta = o.get("metadata", {})
    return (o.get("kind", ""), meta.get("namespace", ""), meta.get("name", ""))


def _check_unique(objects: list[dict[str, Any]], where: str) -> None:
    seen = set()
    for o in objects:
        key = (_group(o.get("apiVersion", "")),) + _key(o)
        if key in seen:
            raise KustomizeError(f"{where}: {key} is defined twice")
        seen.add(key)


def _group(api_version: str) -> str:
    return api_version.rsplit("/", 1)[0] if "/" in api_version else ""


def _version(api_version: str) -> str:
    return api_version.rsplit("/", 1)[-1]


def _matches(o: dict[str, Any], target: dict[str, Any], where: str) -> bool:
    allowed = {"kind", "name", "group", "version", "namespace", "labelSelector"}
    if set(target) - allowed:
        raise KustomizeError(f"{where}: unsupported target fields {sorted(set(target) - allowed)}")
    meta = o.get("metadata", {})
    if "kind" in target and o.get("kind") != target["kind"]:
        return False
    if "group" in target and _group(o.get("apiVersion", "")) != target["group"]:
        return False
    if "version" in target and _version(o.get("apiVersion", "")) != target["version"]:
        return False
    # Kustomize matches names and namespaces as anchored regular expressions.
    if "name" in target and not re.fullmatch(target["name"], meta.get("name", "")):
        return False
    if "namespace" in target and not re.fullmatch(target["namespace"], meta.get("namespace", "")):
        return False
    if "labelSelector" in target:
        labels = meta.get("labels") or {}
        for term in target["labelSelector"].split(","):
            if "=" not in term or "!=" in term:
                raise KustomizeError(f"{where}: only key=value label selectors are implemented")
            key, value = (s.strip() for s in term.split("=", 1))
            if labels.get(key) != value:
                return False
    return True


def _apply_patch(objects: list[dict[str, Any]], p: dict[str, Any], where: str) -> None:
    if set(p) != {"target", "patch"}:
        raise KustomizeError(f"{where}: only inline JSON patches with a target are implemented")
    ops = yaml.safe_load(p["patch"])
    if not isinstance(ops, list):
        raise KustomizeError(f"{where}: a patch must be a JSON patch (a list of operations)")
    hits = [o for o in objects if _matches(o, p["target"], where)]
    if not hits:
        raise KustomizeError(f"{where}: patch target {p['target']} matches nothing")
    for o in hits:
        for op in ops:
            _json_patch_op(o, op, f"{where}: {_key(o)}")


def _pointer(path: str) -> list[str]:
    if not path.startswith("/"):
        raise KustomizeError(f"JSON pointer {path!r} must start with /")
    return [t.replace("~1", "/").replace("~0", "~") for t in path[1:].split("/")]


def _walk(doc: Any, tokens: list[str], where: str) -> Any:
    for t in tokens:
        if isinstance(doc, list):
            doc = doc[int(t)]
        elif isinstance(doc, dict) and t in doc:
            doc = doc[t]
        else:
            raise KustomizeError(f"{where}: path element {t!r} does not exist")
    return doc


def _json_patch_op(doc: dict[str, Any], op: dict[str, Any], where: str) -> None:
    kind = op.get("op")
    tokens = _pointer(op["path"])
    parent = _walk(doc, tokens[:-1], where)
    last = tokens[-1]
    try:
        if kind == "test":
            if _walk(parent, [last], where) != op["value"]:
                raise KustomizeError(f"{where}: test of {op['path']} failed")
        elif kind == "add":
            if isinstance(parent, list):
                idx = len(parent) if last == "-" else int(last)
                parent.insert(idx, copy.deepcopy(op["value"]))
            else:
                parent[last] = copy.deepcopy(op["value"])
        elif kind == "replace":
            _walk(parent, [last], where)
            if isinstance(parent, list):
                parent[int(last)] = copy.deepcopy(op["value"])
            else:
                parent[last] = copy.deepcopy(op["value"])
        elif kind == "remove":
            _walk(parent, [last], where)
            if isinstance(parent, list):
                del parent[int(last)]
            else:
                del parent[last]
        else:
            raise KustomizeError(f"{where}: JSON patch op {kind!r} is not implemented")
    except (IndexError, ValueError) as e:
        raise KustomizeError(f"{where}: {op['path']}: {e}") from e


def _set_namespace(objects: list[dict[str, Any]], ns: str) -> None:
    for o in objects:
        meta = o.setdefault("metadata", {})
        if o.get("kind") == "Namespace":
            meta["name"] = ns
        elif o.get("kind") not in CLUSTER_SCOPED:
            meta["namespace"] = ns


def _templates(o: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for path in TEMPLATE_PATHS.get(o.get("kind", ""), []):
        node: Any = o
        for t in path:
            node = node.get(t) if isinstance(node, dict) else None
        if isinstance(node, dict):
            out.append(node)
    return out


def _add_labels(objects: list[dict[str, Any]], spec: dict[str, Any], where: str) -> None:
    if set(spec) - {"pairs", "includeSelectors", "includeTemplates"}:
        raise KustomizeError(f"{where}: unsupported labels fields")
    if spec.get("includeSelectors"):
        raise KustomizeError(f"{where}: labels.includeSelectors is not implemented")
    pairs = spec["pairs"]
    for o in objects:
        o.setdefault("metadata", {}).setdefault("labels", {}).update(pairs)
        if spec.get("includeTemplates"):
            for t in _templates(o):
                t.setdefault("metadata", {}).setdefault("labels", {}).update(pairs)


def _set_replicas(objects: list[dict[str, Any]], r: dict[str, Any], where: str) -> None:
    hits = [
        o
        for o in objects
        if o.get("kind") in SCALABLE and o.get("metadata", {}).get("name") == r["name"]
    ]
    if not hits:
        raise KustomizeError(f"{where}: replicas: no workload named {r['name']}")
    for o in hits:
        o.setdefault("spec", {})["replicas"] = r["count"]


def _image_name(image: str) -> str:
    """The image without tag or digest; a registry port's colon is part of the name."""
    name = image.split("@", 1)[0]
    slash = name.rfind("/")
    colon = name.rfind(":")
    return name[:colon] if colon > slash else name


def _set_image(objects: list[dict[str, Any]], img: dict[str, Any]) -> None:
    for o in objects:
        pods = [t.get("spec", {}) for t in _templates(o)]
        if o.get("kind") == "Pod":
            pods.append(o.get("spec", {}))
        for pod in pods:
            for c in pod.get("containers", []) + pod.get("initContainers", []):
                if _image_name(c.get("image", "")) != img["name"]:
                    continue
                name = img.get("newName", img["name"])
                old = c["image"]
                if "digest" in img:
                    c["image"] = f"{name}@{img['digest']}"
                elif "newTag" in img:
                    c["image"] = f"{name}:{img['newTag']}"
                elif "@" in old:
                    c["image"] = f"{name}@{old.split('@', 1)[1]}"
                elif old != _image_name(old):
                    c["image"] = f"{name}:{old[len(_image_name(old)) + 1:]}"
                else:
                    c["image"] = name


def main() -> int:
    if len(sys.argv) != 2:
        print("usage: kustomize_lite.py DIR", file=sys.stderr)
        return 2
    try:
        objects = build(sys.argv[1])
    except KustomizeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    yaml.safe_dump_all(objects, sys.stdout, sort_keys=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
