"""Could a Kueue ClusterQueue ever admit one run (`orchestrator.backends.kubernetes.quota`): the bound Kueue puts
on a pod set, read from the ClusterQueue as XPK writes it."""

from __future__ import annotations

from decimal import Decimal

from distillspec.sweep import Target
from orchestrator.backends.kubernetes import quota

V5P = {"cloud.google.com/gke-tpu-accelerator": "tpu-v5p-slice", "cloud.google.com/gke-tpu-topology": "4x4x4"}
V6E = {"cloud.google.com/gke-tpu-accelerator": "tpu-v6e-slice", "cloud.google.com/gke-tpu-topology": "4x4"}
FLAVORS = {"2xv5p-128": V5P, "1xv6e-16": V6E}


def cluster_queue(tpu_quota: int = 128, *, cohort: str | None = None, borrowing: int | None = None) -> dict:
    v5p = {"name": "google.com/tpu", "nominalQuota": tpu_quota}
    if borrowing is not None:
        v5p["borrowingLimit"] = borrowing
    spec = {
        "resourceGroups": [
            {
                "coveredResources": ["google.com/tpu", "cpu", "memory"],
                "flavors": [
                    {"name": "2xv5p-128", "resources": [v5p, {"name": "cpu", "nominalQuota": "6656"}]},
                    {"name": "1xv6e-16", "resources": [{"name": "google.com/tpu", "nominalQuota": 16}]},
                ],
            }
        ]
    }
    if cohort:
        spec["cohort"] = cohort
    return {"spec": spec}


def tpus(n: int) -> dict[str, Decimal]:
    return {"google.com/tpu": Decimal(n)}


def test_one_runs_request_is_every_pods_chips_and_declared_requests():
    target = Target(kind="kubernetes", tpu_type="v5p-128", slices=3, image="example.invalid/t:1")
    assert quota.run_request(target) == tpus(3 * 16 * 4)
    target = Target.model_validate(
        {**target.model_dump(), "resources": {"requests": {"cpu": "2", "memory": "1Gi"}, "limits": {"cpu": "4"}}}
    )
    request = quota.run_request(target)  # each pod's request, its limit where it has none
    assert request["cpu"] == 48 * 2 and request["memory"] == 48 * 2**30 and request["google.com/tpu"] == 192


def test_a_request_within_a_matching_flavors_quota_may_be_admitted():
    assert quota.never_admitted(tpus(128), V5P, cluster_queue(), FLAVORS) is None
    assert quota.never_admitted(tpus(16), V6E, cluster_queue(), FLAVORS) is None


def test_above_every_matching_flavors_quota_is_never_admitted():
    why = quota.never_admitted(tpus(192), V5P, cluster_queue(), FLAVORS)
    assert why == "flavor 2xv5p-128: google.com/tpu 192 > 128"  # the v6e flavor's labels contradict the pods'
    # A v5p run fits no v6e flavor, whatever its quota.
    queue = cluster_queue(tpu_quota=0)
    queue["spec"]["resourceGroups"][0]["flavors"][1]["resources"][0]["nominalQuota"] = 10**6
    assert quota.never_admitted(tpus(64), V5P, queue, FLAVORS) == "flavor 2xv5p-128: google.com/tpu 64 > 0"


def test_a_flavor_that_lacks_a_covered_resource_gives_none_of_it():
    assert quota.never_admitted({**tpus(64), "cpu": Decimal(1)}, V6E, cluster_queue(), FLAVORS) is not None
    assert quota.never_admitted({**tpus(16), "cpu": Decimal(1)}, V6E, cluster_queue(), FLAVORS) == (
        "flavor 1xv6e-16: cpu 1 > 0"
    )


def test_no_flavor_matching_the_pods_is_named():
    other = {"cloud.google.com/gke-tpu-accelerator": "tpu-v4-podslice"}
    why = quota.never_admitted(tpus(8), other, cluster_queue(), FLAVORS)
    assert why == "none of its flavors for google.com/tpu (2xv5p-128, 1xv6e-16) matches the pods' nodeSelector"
    # A flavor the queue names but that does not exist fits nothing; unreadable flavors fit everything.
    assert quota.never_admitted(tpus(8), V5P, cluster_queue(), {}) is not None
    assert quota.never_admitted(tpus(8), other, cluster_queue(), None) is None


def test_in_a_cohort_borrowing_raises_the_bound_and_without_a_limit_lifts_it():
    assert quota.never_admitted(tpus(192), V5P, cluster_queue(cohort="pool", borrowing=64), FLAVORS) is None
    assert quota.never_admitted(tpus(200), V5P, cluster_queue(cohort="pool", borrowing=64), FLAVORS) is not None
    assert quota.never_admitted(tpus(10**6), V5P, cluster_queue(cohort="pool"), FLAVORS) is None
    # Without a cohort there is nothing to borrow from, whatever the limit says.
    assert quota.never_admitted(tpus(192), V5P, cluster_queue(borrowing=64), FLAVORS) is not None


def test_resources_the_queue_does_not_cover_are_left_to_kueue():
    assert (
        quota.never_admitted({**tpus(128), "ephemeral-storage": Decimal(10**12)}, V5P, cluster_queue(), FLAVORS) is None
    )
    assert quota.never_admitted(tpus(10**6), V5P, {"spec": {}}, FLAVORS) is None


def test_memory_over_quota_reads_in_binary_units():
    # "memory 3,518,437,208,883,200 > 15,393,162,788,864": bytes, raw.
    queue = cluster_queue()
    queue["spec"]["resourceGroups"][0]["flavors"][0]["resources"].append({"name": "memory", "nominalQuota": "14Ti"})
    asked = {**tpus(128), "memory": Decimal(3200 * 2**40)}
    why = quota.never_admitted(asked, V5P, queue, FLAVORS)
    assert why == "flavor 2xv5p-128: memory 3.125 Pi > 14 Ti", why
