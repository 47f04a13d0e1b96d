"""Binaries and upstream manifests (CRDs, webhook configurations) of the components.

hack/cluster/build.sh writes .cluster/bin/manifest.json, naming each built
binary and the Go module-cache directory of its upstream module; CRDs and
webhook configurations are read from there at start-up (never copied into
this repository) and pointed at the local processes.
"""

from __future__ import annotations

import base64
import copy
import json
import shutil
from pathlib import Path

import yaml

from .paths import BIN_MANIFEST, CLUSTER_DIR, MANIFESTS, REPO  # noqa: F401

COMPONENTS = ("etcd", "kube", "jobset", "kueue", "kwok", "helm", "fake-gcs-server")


class NotBuilt(RuntimeError):
    pass


def load_build(required: tuple[str, ...] = ("etcd", "kube", "jobset", "kueue", "kwok")) -> dict:
    """The build manifest; raises NotBuilt (saying how to build) when something is missing."""
    try:
        build = json.loads(BIN_MANIFEST.read_text())
    except FileNotFoundError:
        raise NotBuilt(f"{BIN_MANIFEST} is missing: run `make cluster-build` (hack/cluster/build.sh)") from None
    missing = []
    for name in required:
        entry = build.get(name) or {}
        binary = entry.get("binary") or ""
        if name == "etcd" and not binary:
            binary = shutil.which("etcd") or ""
            entry["binary"] = binary
        if not binary or not Path(binary).exists():
            missing.append(name)
        elif not Path(entry.get("source", "")).is_dir():
            missing.append(f"{name} (module source {entry.get('source')})")
    if missing:
        raise NotBuilt(f"control plane components not built: {', '.join(missing)}; run `make cluster-build`")
    return build


# libyaml's loader is ~10x faster than pure Python: the Kueue CRDs are 2 MB of YAML.
_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def load_yaml_docs(path: Path) -> list[dict]:
    with open(path) as f:
        return [d for d in yaml.load_all(f, Loader=_Loader) if d]


def _kustomize_resources_and_patches(directory: Path) -> tuple[list[Path], list[Path]]:
    k = yaml.load((directory / "kustomization.yaml").read_text(), Loader=_Loader) or {}
    resources = [directory / r for r in k.get("resources", [])]
    patches = [directory / p["path"] for p in k.get("patches", []) if isinstance(p, dict) and "path" in p]
    return resources, patches


def crds(source: str | Path, conversion_client_config: dict | None = None) -> list[dict]:
    """CRDs of an upstream kubebuilder project (config/components/crd).

    With `conversion_client_config`, the CRD patches that enable a conversion
    webhook are applied with that clientConfig (plus conversionReviewVersions);
    without, CRDs keep conversion strategy None.
    """
    crd_dir = Path(source) / "config" / "components" / "crd"
    resources, patches = _kustomize_resources_and_patches(crd_dir)
    objs = {}
    for r in resources:
        for d in load_yaml_docs(r):
            objs[d["metadata"]["name"]] = d
    if conversion_client_config is not None:
        for p in patches:
            for d in load_yaml_docs(p):
                conv = (d.get("spec") or {}).get("conversion")
                name = d["metadata"]["name"]
                if not conv or name not in objs:
                    continue
                conv = copy.deepcopy(conv)
                conv["webhook"]["clientConfig"] = copy.deepcopy(conversion_client_config)
                objs[name].setdefault("spec", {})["conversion"] = conv
    return list(objs.values())


def kwok_crds(source: str | Path, kinds: tuple[str, ...] = ("stages",)) -> list[dict]:
    base = Path(source) / "kustomize" / "crd" / "bases"
    return [d for k in kinds for d in load_yaml_docs(base / f"kwok.x-k8s.io_{k}.yaml")]


def _merge_webhook_patch(config: dict, patch: dict) -> None:
    """Strategic-merge a webhook configuration patch (webhooks merged by name)."""
    by_name = {w["name"]: w for w in config.get("webhooks", [])}
    for pw in patch.get("webhooks", []):
        target = by_name.get(pw["name"])
        if target is not None:
            target.update({k: v for k, v in pw.items() if k != "name"})


def _json6902(config: dict, ops: list[dict]) -> None:
    for op in ops:
        parts = [p for p in op["path"].split("/") if p]
        parent = config
        for p in parts[:-1]:
            parent = parent[int(p)] if isinstance(parent, list) else parent[p]
        last = parts[-1]
        if op["op"] in ("replace", "add"):
            if isinstance(parent, list):
                idx = len(parent) if last == "-" else int(last)
                if op["op"] == "add":
                    parent.insert(idx, op["value"])
                else:
                    parent[idx] = op["value"]
            else:
                parent[last] = op["value"]
        elif op["op"] == "remove":
            del parent[int(last) if isinstance(parent, list) else last]
        else:
            raise ValueError(f"unsupported JSON patch op {op['op']!r}")


def webhook_configurations(source: str | Path, name_prefix: str, client_config) -> list[dict]:
    """Mutating/validating webhook configurations of an upstream kubebuilder project.

    Applies the patches of config/components/webhook/kustomization.yaml, prefixes
    the names like its config/default does, and replaces each webhook's
    clientConfig by `client_config(path)`.
    """
    wh_dir = Path(source) / "config" / "components" / "webhook"
    k = yaml.safe_load((wh_dir / "kustomization.yaml").read_text()) or {}
    configs = [
        d
        for d in load_yaml_docs(wh_dir / "manifests.yaml")
        if d.get("kind") in ("MutatingWebhookConfiguration", "ValidatingWebhookConfiguration")
    ]
    for p in k.get("patches", []):
        if "patch" in p:
            patch_docs = [d for d in yaml.safe_load_all(p["patch"]) if d]
        else:
            patch_docs = [d for d in yaml.safe_load_all((wh_dir / p["path"]).read_text()) if d]
        target = p.get("target") or {}
        for doc in patch_docs:
            if isinstance(doc, list):  # JSON 6902 patch with a target
                for c in configs:
                    if c["kind"] == target.get("kind") and c["metadata"]["name"] == target.get("name"):
                        _json6902(c, doc)
            else:
                for c in configs:
                    if c["kind"] == doc.get("kind") and c["metadata"]["name"] == doc["metadata"]["name"]:
                        _merge_webhook_patch(c, doc)
    for c in configs:
        c["metadata"] = {"name": name_prefix + c["metadata"]["name"]}
        for w in c.get("webhooks", []):
            path = ((w.get("clientConfig") or {}).get("service") or {}).get("path", "/")
            w["clientConfig"] = client_config(path)
    return configs


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()
