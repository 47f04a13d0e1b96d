"""Could a Kueue ClusterQueue ever admit one run? A run that asks for more than the queue can ever give waits for
ever, and its suspended JobSet still gets one Job per slice at once: a slip in `target.slices` (100000 for 2) made
tens of thousands of Jobs before Kueue said a word. So the launcher compares one run's request with the queue's
quota before creating anything.

Kueue's rule, as far as it bounds a request: the pods of a run form one pod set; for each resource group of the
ClusterQueue, the pod set takes every resource the group covers from one flavor whose node labels do not contradict
the pods' nodeSelector; a flavor gives at most its nominal quota, plus its borrowing limit when the queue is in a
cohort (without a limit, borrowing is unbounded and the check cannot say "never"). Resources a queue does not cover
are left to Kueue (its configuration may exclude them)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from decimal import Decimal
from typing import Any

from kubernetes.utils import parse_quantity

from distillspec import tpu
from distillspec.sweep import Target
from orchestrator.core import rendering


def run_request(target: Target) -> dict[str, Decimal]:
    """What one run's pods ask of the queue, in all: each pod's requests (its limits where it sets no request),
    times slices × hosts per slice."""
    shape = tpu.lookup(str(target.tpu_type))
    pods = target.slices * shape.vms_per_slice
    declared = rendering.resources(target)
    per_pod = {**declared["limits"], **declared.get("requests", {})}
    return {name: parse_quantity(value) * pods for name, value in per_pod.items()}


def never_admitted(
    request: Mapping[str, Decimal],
    node_selector: Mapping[str, str],
    cluster_queue: Mapping[str, Any],
    flavor_labels: Mapping[str, Mapping[str, str]] | None,
) -> str | None:
    """Why the ClusterQueue can never admit a pod set asking for `request`, or None when it might (or cannot be
    told). `flavor_labels` is each ResourceFlavor's nodeLabels (None: unreadable, every flavor taken to fit)."""
    spec = cluster_queue.get("spec") or {}
    in_cohort = bool(spec.get("cohort") or spec.get("cohortName"))
    for group in spec.get("resourceGroups") or []:
        asked = {name: amount for name, amount in request.items() if name in (group.get("coveredResources") or [])}
        if not any(asked.values()):
            continue
        flavors = [f for f in group.get("flavors") or [] if _fits_labels(f.get("name"), node_selector, flavor_labels)]
        limits = [_capacity(flavor, asked, in_cohort) for flavor in flavors]
        if any(all(asked[name] <= limit[name] for name in asked) for limit in limits):
            continue
        if not flavors:
            names = ", ".join(str(f.get("name")) for f in group.get("flavors") or []) or "none"
            return f"none of its flavors for {', '.join(sorted(asked))} ({names}) matches the pods' nodeSelector"
        return "; ".join(_shortfall(asked, flavor.get("name"), limit) for flavor, limit in zip(flavors, limits))
    return None


def _fits_labels(
    flavor: str | None, node_selector: Mapping[str, str], flavor_labels: Mapping[str, Mapping[str, str]] | None
) -> bool:
    """A flavor's node labels fit the pods unless one names a key of their nodeSelector with another value (a
    flavor that does not exist fits nothing; one whose labels could not be read fits)."""
    if flavor_labels is None:
        return True
    if flavor not in flavor_labels:
        return False
    labels = flavor_labels[flavor]
    return all(labels.get(key, value) == value for key, value in node_selector.items())


def _capacity(flavor: Mapping[str, Any], asked: Iterable[str], in_cohort: bool) -> dict[str, Decimal]:
    """The most the flavor can give of each asked resource (infinite where borrowing is unbounded)."""
    given = {r.get("name"): r for r in flavor.get("resources") or []}
    out = {}
    for name in asked:
        resource = given.get(name)
        if resource is None:
            out[name] = Decimal(0)
            continue
        most = parse_quantity(resource.get("nominalQuota", 0))
        if in_cohort:
            borrowing = resource.get("borrowingLimit")
            most = most + parse_quantity(borrowing) if borrowing is not None else Decimal("Infinity")
        out[name] = most
    return out


def _shortfall(asked: Mapping[str, Decimal], flavor: str | None, limit: Mapping[str, Decimal]) -> str:
    over = [
        f"{name} {_amount(asked[name], name)} > {_amount(limit[name], name)}"
        for name in asked
        if asked[name] > limit[name]
    ]
    return f"flavor {flavor}: {', '.join(over)}"


def _amount(value: Decimal, resource: str = "") -> str:
    """A quantity as people read it: memory in binary units (3,518,437,208,883,200 read as 3200 Ti), others as
    numbers."""
    if resource in ("memory", "ephemeral-storage") and value != Decimal("Infinity") and value >= 1024:
        for unit, size in (("Pi", 2**50), ("Ti", 2**40), ("Gi", 2**30), ("Mi", 2**20), ("Ki", 2**10)):
            if value >= size:
                return f"{float(value / size):,.4g} {unit}"
    return f"{int(value):,}" if value == value.to_integral_value() else f"{value:,}"
