"""The DistillationSweep CRD, generated from the pydantic models the sweep file is validated with.

`python -m orchestrator.service.crd` rewrites `charts/distillctl/crds/distillationsweeps.yaml`; a test checks
that the committed file is what this module generates, so the CRD cannot drift from the sweep file.

Pydantic writes JSON Schema; a CRD needs a *structural* OpenAPI v3 schema: every node typed, no `$ref`, no types
inside `anyOf`, `nullable` instead of `null` members. The conversion below is mechanical, with three rules:
- `X | None` is X, nullable;
- `int | str` (a resource quantity) is `x-kubernetes-int-or-string`;
- a union of different types (`list[int] | str`), an `Any`, or a model that also accepts another shape (a
  `ScheduledValue` takes a bare number) is left open (`x-kubernetes-preserve-unknown-fields`) — the controller
  validates it with pydantic, with the CLI's codes and messages, and reports problems as a condition;
- defaults are left out: the API server would otherwise write every default into stored objects, and the sweep
  models apply them anyway.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

from distillspec.config import DistillSpec
from distillspec.sweep import Prerequisite, Sweep
from orchestrator.service import resource

CRD_PATH = Path(__file__).resolve().parents[2] / "charts" / "distillctl" / "crds" / "distillationsweeps.yaml"
OPEN = {"x-kubernetes-preserve-unknown-fields": True}
_KEEP = ("description", "enum", "minimum", "maximum", "minLength", "maxLength", "pattern", "minItems", "maxItems")


def _open_models(model: type[BaseModel], seen: set[str] | None = None) -> set[str]:
    """Names of models reachable from `model` that accept more than a mapping (a `mode="before"` validator)."""
    seen = set() if seen is None else seen
    found = set()
    for sub in _models_in(model):
        if sub.__name__ in seen:
            continue
        seen.add(sub.__name__)
        if any(d.info.mode == "before" for d in sub.__pydantic_decorators__.model_validators.values()):
            found.add(sub.__name__)
        found |= _open_models(sub, seen)
    return found


def _models_in(model: type[BaseModel]) -> list[type[BaseModel]]:
    import typing

    out = []
    for field in model.model_fields.values():
        stack = [field.annotation]
        while stack:
            annotation = stack.pop()
            if isinstance(annotation, type) and issubclass(annotation, BaseModel):
                out.append(annotation)
            stack.extend(typing.get_args(annotation))
    return out


def structural(schema: dict[str, Any], defs: dict[str, Any], open_models: set[str]) -> dict[str, Any]:
    """A JSON Schema node (pydantic's) as a structural OpenAPI v3 node."""
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        if name in open_models:
            return {**OPEN, **({"description": schema["description"]} if "description" in schema else {})}
        merged = {**defs[name], **{k: v for k, v in schema.items() if k != "$ref"}}
        return structural(merged, defs, open_models)
    if "anyOf" in schema:
        members = [m for m in schema["anyOf"] if m.get("type") != "null"]
        nullable = len(members) < len(schema["anyOf"])
        if len(members) == 1:
            node = structural({**members[0], **_kept(schema)}, defs, open_models)
        elif sorted(m.get("type", "") for m in members) == ["integer", "string"]:  # a quantity: `8` or `64Gi`
            node = {"x-kubernetes-int-or-string": True, **_kept(schema, ("description",))}
        else:
            node = {**OPEN, **_kept(schema, ("description",))}
        return {**node, "nullable": True} if nullable else node
    if "const" in schema:
        schema = {**schema, "enum": [schema["const"]]}
    kind = schema.get("type")
    if kind is None:  # Any
        return {**OPEN, **_kept(schema, ("description",))}
    node: dict[str, Any] = {"type": kind, **_kept(schema)}
    if "exclusiveMinimum" in schema:
        node.update(minimum=schema["exclusiveMinimum"], exclusiveMinimum=True)
    if "exclusiveMaximum" in schema:
        node.update(maximum=schema["exclusiveMaximum"], exclusiveMaximum=True)
    if kind == "array":
        items = schema.get("items") or {}
        node["items"] = structural(items, defs, open_models) if items else dict(OPEN)
    if kind == "object":
        if "properties" in schema:
            node["properties"] = {k: structural(v, defs, open_models) for k, v in schema["properties"].items()}
            if schema.get("required"):
                node["required"] = list(schema["required"])
        extra = schema.get("additionalProperties")
        if isinstance(extra, dict) and extra:
            node["additionalProperties"] = structural(extra, defs, open_models)
        elif extra is True or (extra is None and "properties" not in schema) or extra == {}:
            node.update(OPEN)
    return node


def _kept(schema: dict[str, Any], keys: tuple[str, ...] = _KEEP) -> dict[str, Any]:
    return {k: schema[k] for k in keys if k in schema}


def model_schema(model: type[BaseModel]) -> dict[str, Any]:
    """A pydantic model as a structural schema (descriptions from docstrings and `Field(description=...)`)."""
    schema = model.model_json_schema(mode="validation")
    return structural(schema, schema.get("$defs", {}), _open_models(model))


def spec_schema() -> dict[str, Any]:
    """The resource's spec: the sweep file's fields, with `spec` (and each prerequisite's) a native spec inline
    and `name` left to `metadata.name`, plus the service's fields."""
    sweep = model_schema(Sweep)
    inline = model_schema(DistillSpec)
    inline["description"] = "the base spec, inline (native layout)"
    properties = dict(sweep["properties"])
    del properties["name"]
    properties["spec"] = inline
    prerequisite = model_schema(Prerequisite)
    prerequisite["properties"]["spec"] = {**inline, "description": "the prerequisite's spec, inline"}
    properties["prerequisites"] = {**properties["prerequisites"], "additionalProperties": prerequisite}
    properties.update(model_schema(resource.ServiceSpec)["properties"])
    return {
        "type": "object",
        "description": "a sweep file's content, the base spec inlined; `metadata.name` is the sweep's name",
        "required": ["spec"],
        "properties": properties,
    }


def crd() -> dict[str, Any]:
    status = model_schema(resource.SweepStatus)
    runs = status["properties"]["runs"]
    runs.update({"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["runId"]})
    conditions = status["properties"]["conditions"]
    conditions.update({"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]})
    columns = [
        # Running, Succeeded, Failed or Refused, and why the controller refused it (LocalQueueMissing, InvalidSpec,
        # ...): a refused sweep showed zeros, a failed one "Valid" and zeros.
        {"name": "Status", "type": "string", "jsonPath": ".status.phase"},
        {"name": "Accepted", "type": "string", "jsonPath": '.status.conditions[?(@.type=="Accepted")].reason'},
        {"name": "Points", "type": "integer", "jsonPath": ".status.points"},
        {"name": "Succeeded", "type": "integer", "jsonPath": ".status.succeeded"},
        {"name": "Running", "type": "integer", "jsonPath": ".status.running"},
        {"name": "Failed", "type": "integer", "jsonPath": ".status.failed"},
        # by default: a sweep Failed by the divergence rule showed "Failed 0" beside its Status (the point is Stopped)
        {"name": "Stopped", "type": "integer", "jsonPath": ".status.stopped"},
        {"name": "Best kl_div_T1", "type": "number", "jsonPath": ".status.best.klDivT1"},
        {"name": "Best", "type": "string", "jsonPath": ".status.best.key", "priority": 1},
        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
    ]
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{resource.PLURAL}.{resource.GROUP}"},
        "spec": {
            "group": resource.GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": resource.KIND,
                "listKind": f"{resource.KIND}List",
                "plural": resource.PLURAL,
                "singular": resource.SINGULAR,
                "shortNames": resource.SHORT_NAMES,
                "categories": ["distillctl"],
            },
            "versions": [
                {
                    "name": resource.VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": columns,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "description": "A distillation sweep that the distillctl controller runs to its end.",
                            "required": ["spec"],
                            "properties": {
                                "apiVersion": {"type": "string"},
                                "kind": {"type": "string"},
                                "metadata": {"type": "object"},
                                "spec": spec_schema(),
                                "status": status,
                            },
                        }
                    },
                }
            ],
        },
    }


HEADER = "# Generated by `python -m orchestrator.service.crd` from distillspec's models: do not edit.\n"


def render() -> str:
    return HEADER + yaml.safe_dump(crd(), sort_keys=False, width=120, allow_unicode=True)


def main(argv: list[str]) -> int:
    """`python -m orchestrator.service.crd [PATH]`: write the CRD (to the chart's crds/ by default)."""
    if len(argv) > 1 or (argv and argv[0].startswith("-")):  # `--help` was written as a file named --help
        print(f"usage: python -m orchestrator.service.crd [PATH]  (default {CRD_PATH})", file=sys.stderr)
        return 0 if argv[0] in ("-h", "--help") else 2
    path = Path(argv[0]) if argv else CRD_PATH
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render())
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
