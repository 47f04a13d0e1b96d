"""The sweep service without a cluster: the CRD generated from the sweep models, a sweep file and its
DistillationSweep naming the same runs, the pure per-sweep reconcile (`orchestrator.service.plan`), and the
controller's HTTP endpoints."""

from __future__ import annotations

import json
import time
import urllib.request
from pathlib import Path

import pytest

from distillspec.problems import Problem
from orchestrator.core import expansion as expansion_module
from orchestrator.core.aggregate import KL_T1
from orchestrator.core.run_status import Condition, Observation
from orchestrator.outputs import LogLine, RunOutputs
from orchestrator.service import crd, endpoints, plan
from orchestrator.service.client import Served, summary
from orchestrator.service.resource import (
    OrphanRun,
    ServiceSpec,
    SweepStatus,
    TargetDefaults,
    resource_from_source,
    source_from_resource,
)

REPO = Path(__file__).resolve().parents[1]

SWEEP = """\
name: svc
spec:
  student: {model: tiny-2l}
  teacher: {model: tiny-4l, load_parameters_path: "${prerequisites.teacher.output}/checkpoints"}
  batch: {per_device_batch_size: 1, max_target_length: 16}
  loss: {alpha: 0.5, temperature: {start: 2.0, end: 1.0, schedule: cosine}}
  steps: 10
prerequisites:
  teacher:
    spec:
      mode: pretrain
      student: {model: tiny-4l}
      batch: {per_device_batch_size: 1, max_target_length: 16}
      steps: 10
axes:
  loss.alpha.end: [0.5, 1.0]
target:
  kind: kubernetes
  tpu_type: v5p-128
  slices: 2
  image: example.invalid/trainer:test
  output_base: gs://bucket/runs
"""


def _as_served(value):
    """What the API server stores: JSON numbers, so 1.0 comes back as 1."""
    if isinstance(value, dict):
        return {k: _as_served(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_as_served(v) for v in value]
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


@pytest.fixture(scope="module")
def resource(tmp_path_factory) -> dict:
    from distillspec.sweep import load_sweep

    path = tmp_path_factory.mktemp("svc") / "svc.yaml"
    path.write_text(SWEEP)
    body = resource_from_source(load_sweep(path), "team")
    body["metadata"].update(uid="u1", generation=1)
    return _as_served(body)


@pytest.fixture(scope="module")
def expanded(resource) -> expansion_module.Expansion:
    source, _ = source_from_resource(resource)
    assert source.ok, source.problems
    return expansion_module.expand(source)


# --- the CRD ----------------------------------------------------------------------------------------------


def test_committed_crd_is_what_the_models_generate():
    assert crd.CRD_PATH.read_text() == crd.render(), "run `python -m orchestrator.service.crd`"


def test_crd_schema_is_structural():
    """Every node typed (or explicitly open), no $ref and no type inside a logical junctor."""

    def walk(node, path):
        assert "$ref" not in node and "anyOf" not in node and "oneOf" not in node, path
        open_or_quantity = node.get("x-kubernetes-preserve-unknown-fields") or node.get("x-kubernetes-int-or-string")
        assert "type" in node or open_or_quantity, path
        for name, child in (node.get("properties") or {}).items():
            walk(child, f"{path}.{name}")
        if isinstance(node.get("additionalProperties"), dict):
            walk(node["additionalProperties"], f"{path}.*")
        if "items" in node:
            walk(node["items"], f"{path}[]")

    version = crd.crd()["spec"]["versions"][0]
    walk(version["schema"]["openAPIV3Schema"], "")
    spec = version["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
    assert spec["spec"]["properties"]["steps"] == {
        "type": "integer",
        "minimum": 0,
        "exclusiveMinimum": True,
        "maximum": 2**31,
        "exclusiveMaximum": True,
    }
    assert spec["deletionPolicy"]["enum"] == ["Delete", "Keep"]
    assert "name" not in spec  # metadata.name is the sweep's name
    columns = [c["jsonPath"] for c in version["additionalPrinterColumns"]]
    assert columns[:8] == [
        ".status.phase",  # a failed sweep read "Valid" and zeros
        '.status.conditions[?(@.type=="Accepted")].reason',  # why a refused sweep runs nothing: it showed zeros
        ".status.points",
        ".status.succeeded",
        ".status.running",
        ".status.failed",
        ".status.stopped",
        ".status.best.klDivT1",
    ]


def test_resource_names_the_same_runs_as_the_sweep_file(tmp_path, expanded):
    from orchestrator.core.sweeps import expand_sweep

    path = tmp_path / "svc.yaml"
    path.write_text(SWEEP)
    from_file = expand_sweep(path)
    assert [r.run_id for r in expanded.runs] == [r.run_id for r in from_file.runs]
    assert [r.jobset_name for r in expanded.runs] == [r.jobset_name for r in from_file.runs]


def test_controller_defaults_fill_what_the_target_leaves_unset(tmp_path, resource):
    """A resource without image, queue, priority and output base, completed by the controller's defaults: the same
    run ids and the same rendered JobSets as the sweep file with those values written in; a value of its own wins."""
    from orchestrator.core import rendering
    from orchestrator.core.sweeps import TargetOverrides, expand_sweep

    image = "example.invalid/trainer@sha256:" + "1" * 64
    defaults = TargetDefaults(queue="team-queue", priority="high", image=image, output_base="gs://team/runs")
    bare = json.loads(json.dumps(resource))
    for key in ("image", "output_base"):
        del bare["spec"]["target"][key]
    source, _ = source_from_resource(bare, defaults)
    served = expansion_module.expand(source)
    written = SWEEP.replace(
        "image: example.invalid/trainer:test", f"image: {image}\n  queue: team-queue\n  namespace: team"
    )
    written = written.replace("output_base: gs://bucket/runs", "output_base: gs://team/runs\n  priority: high")
    path = tmp_path / "svc.yaml"
    path.write_text(written.replace("[0.5, 1.0]", "[0.5, 1]"))  # the axis annotation as the API server stores it
    from_file = expand_sweep(path)
    assert [r.run_id for r in served.runs] == [r.run_id for r in from_file.runs]
    rendered = [rendering.render_jobset(r, served.sweep.target) for r in served.runs]
    assert rendered == [rendering.render_jobset(r, from_file.sweep.target) for r in from_file.runs]
    assert "team-queue" in rendered[0] and "gs://team/runs" in rendered[0]

    # `--image` completes a file that leaves it unset, as the controller's default does.
    path.write_text(SWEEP.replace("  image: example.invalid/trainer:test\n", "").replace("bucket", "team"))
    assert [r.run_id for r in expand_sweep(path, TargetOverrides(image=image)).runs] == [r.run_id for r in served.runs]

    own, _ = source_from_resource(resource, defaults)  # the resource's own image and output base stay
    assert (own.sweep.target.image, own.sweep.target.output_base) == (
        "example.invalid/trainer:test",
        "gs://bucket/runs",
    )
    assert own.sweep.target.queue == "team-queue"


def test_invalid_resource_is_rejected_with_the_clis_codes(resource):
    bad = json.loads(json.dumps(resource))
    bad["spec"]["retryFailed"] = -1
    source, _ = source_from_resource(bad)
    assert [(p.loc, p.code) for p in source.problems if p.is_error] == [(("retryFailed",), "bad_value")]
    bad = json.loads(json.dumps(resource))
    bad["spec"]["spec"]["loss"]["alpha"] = 1.5
    source, _ = source_from_resource(bad)
    problems = expansion_module.expand(source).problems  # as the controller does: the spec is checked per point
    assert {(p.loc[:3], p.code) for p in problems if p.is_error} == {(("spec", "loss", "alpha"), "alpha_out_of_range")}
    decided = plan.rejected(problems, reason="InvalidSpec", generation=1, previous=None, now=0.0)
    accepted = decided.status.conditions[0]
    assert (accepted.type, accepted.status, accepted.reason) == ("Accepted", "False", "InvalidSpec")
    assert "alpha_out_of_range" in accepted.message and decided.events[0].type == "Warning"
    assert " → " in accepted.message  # the fix `validate` gives, not only the code
    # A local target applied as a resource: the controller crashed rendering its JobSets, pass after pass.
    bad = json.loads(json.dumps(resource))
    bad["spec"]["target"] = {"kind": "local", "output_base": "runs"}
    source, _ = source_from_resource(bad)
    assert not source.ok and [p.code for p in source.problems if p.is_error] == ["local_target"]
    # A relative output base (the chart's defaults.outputBase is empty): each run wrote inside its own pod.
    for base in ("runs", "out/runs"):
        bad = json.loads(json.dumps(resource))
        bad["spec"]["target"]["output_base"] = base
        source, _ = source_from_resource(bad)
        assert [p.code for p in source.problems if p.is_error] == ["output_base_in_pod"], base
    bad["spec"]["target"]["output_base"] = "runs"  # the sweep file's default: the controller's default fills it
    filled, _ = source_from_resource(bad, TargetDefaults(output_base="gs://team/runs"))
    bad["spec"]["target"]["output_base"] = "/mnt/runs"  # a volume the pods mount
    assert filled.ok and source_from_resource(bad)[0].ok
    # A target namespace other than the resource's: its runs went to the resource's namespace, unsaid.
    bad = json.loads(json.dumps(resource))
    bad["spec"]["target"]["namespace"] = "team-b"
    source, _ = source_from_resource(bad)
    (problem,) = [p for p in source.problems if p.is_error]
    assert problem.code == "namespace_mismatch" and "'team-b'" in problem.message and "'team'" in problem.message
    assert problem.line is not None  # located in the resource


# --- the per-sweep reconcile ------------------------------------------------------------------------------


def _done(kind: str = "Completed") -> Observation:
    return Observation(
        exists=True, conditions=(Condition(kind, "True", "ReachedMaxRestarts" if kind == "Failed" else ""),)
    )


def _outputs(expanded, kl: dict[str, float] | None = None, failed: set[str] = frozenset()) -> dict[str, RunOutputs]:
    out = {}
    for run in expanded.runs:
        log = ()
        if kl and run.run_id in kl:
            log = (LogLine(10, 100.0, 160, 1.0, {KL_T1: (kl[run.run_id] * 4, 4.0)}),)
        summary = {"status": "failed", "exit_code": 1} if run.run_id in failed else None
        out[run.run_id] = RunOutputs(run.output_path, log=log, summary=summary)
    return out


def _plan(expanded, observed, outputs, previous=None, retry=0, orphans=()):
    return plan.plan(
        expanded,
        observed,
        outputs,
        service=ServiceSpec(retryFailed=retry),
        previous=previous,
        generation=1,
        now=1e9,
        orphans=orphans,
    )


def _conditions(status: SweepStatus) -> dict[str, tuple[str, str]]:
    return {c.type: (c.status, c.reason) for c in status.conditions}


def test_prerequisite_first_then_points_then_succeeded_with_the_best_point(expanded):
    teacher, *points = expanded.runs
    first = _plan(expanded, {}, _outputs(expanded))
    assert [r.run_id for r in first.create] == [teacher.run_id]  # the points wait for it
    assert _conditions(first.status)["Running"] == ("True", "RunsActive")
    assert first.status.points == 3 and [e.reason for e in first.events] == ["Created", "RunPending", "RunPending"]

    second = _plan(expanded, {teacher.run_id: _done()}, _outputs(expanded), first.status)
    assert [r.run_id for r in second.create] == [p.run_id for p in points]
    again = _plan(expanded, {teacher.run_id: _done()}, _outputs(expanded), second.status)
    assert {r.run_id for r in again.create} == {p.run_id for p in points}  # the cache lagged: 409s, never twice

    kl = {points[0].run_id: 0.8, points[1].run_id: 0.3}
    observed = {run.run_id: _done() for run in expanded.runs}
    done = _plan(expanded, observed, _outputs(expanded, kl), second.status)
    assert not done.create and not done.delete
    assert _conditions(done.status) == {
        "Accepted": ("True", "Valid"),
        "Running": ("False", "Finished"),
        "Succeeded": ("True", "AllSucceeded"),
        "Failed": ("False", "AllSucceeded"),
    }
    assert (done.status.best.key, done.status.best.klDivT1) == (points[1].key, pytest.approx(0.3))
    assert done.status.runs[2].metrics[KL_T1] == pytest.approx(0.3)
    assert "SweepSucceeded" in [e.reason for e in done.events]

    steady = _plan(expanded, observed, _outputs(expanded, kl), done.status)
    assert steady.events == () and steady.status == done.status  # nothing changed: no write, no Event

    # Their JobSets gone (ttl_seconds_after_finished) and their outputs unreadable to the controller (a bucket without
    # Workload Identity): they were created again, every TTL, for ever. As recorded, they stay Succeeded.
    going = {run.run_id: Observation(exists=True, deleting=True) for run in expanded.runs}  # seen being deleted first
    deleting = _plan(expanded, going, _outputs(expanded), done.status)
    assert not deleting.create and deleting.status == done.status and deleting.events == ()
    gone = _plan(expanded, {}, _outputs(expanded), deleting.status)
    assert not gone.create and gone.status == done.status and gone.events == ()
    # Outputs that say otherwise win: a point whose outputs now say it failed is that.
    failed = _plan(expanded, {}, _outputs(expanded, failed={points[0].run_id}), done.status)
    assert next(r for r in failed.status.runs if r.runId == points[0].run_id).phase == "Failed"

    # Edited while running: a JobSet of a run the spec no longer has is reported (once as an Event), never deleted.
    orphan = OrphanRun(jobset="svc-gone", runId="gone", state="active")
    edited = _plan(expanded, observed, _outputs(expanded, kl), done.status, orphans=[orphan])
    assert edited.status.orphans == [orphan] and not edited.delete and not edited.stop and not edited.create
    assert [(e.type, e.reason) for e in edited.events] == [("Warning", "Orphaned")] and "svc-gone" in edited.events[
        0
    ].message
    assert _plan(expanded, observed, _outputs(expanded, kl), edited.status, orphans=[orphan]).events == ()
    line = summary(Served("svc", edited.status, None))  # what `status` prints of the resource
    assert line.startswith("DistillationSweep svc: Succeeded (AllSucceeded: 3 run(s)); 3 run(s): 3 succeeded")
    assert "1 orphaned JobSet(s)" in line and "Accepted" not in line
    # `running` counts queued runs too: "2 running" was printed beside a table showing one of them Queued.
    assert "0 active (queued or running)" in line


def test_failed_point_is_retried_by_its_budget_and_then_the_sweep_fails(expanded):
    teacher, point, other = expanded.runs
    observed = {teacher.run_id: _done(), point.run_id: _done("Failed"), other.run_id: _done()}
    outputs = _outputs(expanded, failed={point.run_id})
    first = _plan(expanded, observed, outputs, retry=1)
    assert [r.run_id for r in first.delete] == [point.run_id] and not first.create
    state = first.status.runs[1]
    assert (state.retries, state.retrying) == (1, True)

    deleting = {**observed, point.run_id: Observation(exists=True, deleting=True)}
    waiting = _plan(expanded, deleting, outputs, first.status, retry=1)
    assert not waiting.create and not waiting.delete and waiting.status.runs[1].retrying

    gone = {k: v for k, v in observed.items() if k != point.run_id}
    recreated = _plan(expanded, gone, outputs, waiting.status, retry=1)  # the old verdict is not the new run's
    assert [r.run_id for r in recreated.create] == [point.run_id] and recreated.status.runs[1].retries == 1

    failed_again = _plan(expanded, observed, outputs, recreated.status, retry=1)
    assert not failed_again.delete and not failed_again.create  # the budget is spent
    assert _conditions(failed_again.status)["Failed"] == ("True", "RunsFailed")
    assert failed_again.status.failed == 1


def test_failed_prerequisite_blocks_points_unless_it_is_retried(expanded):
    teacher = expanded.runs[0]
    observed = {teacher.run_id: _done("Failed")}
    blocked = _plan(expanded, observed, _outputs(expanded))
    assert not blocked.create and _conditions(blocked.status)["Failed"] == ("True", "RunsFailed")
    # The way out is the service's, not `sweep --retry-failed` (which --service refuses, and which raced it)
    why = {r.message for r in blocked.status.runs if r.reason == "PrerequisiteFailed"}
    assert why and all("--service --retries N" in m and "--retry-failed" not in m for m in why), why
    retried = _plan(expanded, observed, _outputs(expanded), retry=2)
    assert [r.run_id for r in retried.delete] == [teacher.run_id]
    assert _conditions(retried.status)["Running"][0] == "True"


# --- endpoints --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("use_client", [True, False])
def test_endpoints_serve_health_readiness_and_metrics(use_client):
    metrics = endpoints.Metrics(use_prometheus_client=use_client)
    metrics.set_runs("svc", {"Running": 2, "Succeeded": 1})
    metrics.set_runs("svc", {"Succeeded": 3})  # Running is gone, not left at 2
    metrics.observe_reconcile(0.02)
    metrics.api_error("create jobset")
    ready = [False]
    server = endpoints.serve(0, metrics, lambda: True, lambda: ready[0], host="127.0.0.1")
    base = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        assert urllib.request.urlopen(base + "/healthz").status == 200
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(base + "/readyz")
        assert e.value.code == 503
        ready[0] = True
        assert urllib.request.urlopen(base + "/readyz").status == 200
        text = urllib.request.urlopen(base + "/metrics").read().decode()
    finally:
        server.shutdown()
    assert 'distillctl_runs{phase="Succeeded",sweep="svc"} 3' in text
    assert 'phase="Running"' not in text
    assert "distillctl_reconcile_seconds_count 1" in text
    assert 'distillctl_api_errors_total{operation="create jobset"} 1' in text
    # A replica that stops leading exports no runs: its last values stood beside the new leader's, counted twice.
    metrics.forget_runs()
    text = metrics.exposition()[0].decode()
    assert "distillctl_runs{" not in text and 'distillctl_api_errors_total{operation="create jobset"} 1' in text


def test_a_rejection_keeps_what_the_status_recorded_and_the_retry_budget():
    """A LocalQueue deleted mid-sweep (or an edit undone later) rejected the resource with a status of no runs:
    POINTS 0 while its JobSets ran on, and a failed run already retried once was created a third time when the
    queue came back."""
    from orchestrator.service.resource import RunState

    failed = RunState(key="0", runId="abc", jobset="s-abc", role="point", phase="Failed", retries=1)
    previous = SweepStatus(observedGeneration=1, points=1, failed=1, runs=[failed], pinned={"image": "img@sha256:0"})
    problem = Problem((), "cannot_run", "Kueue LocalQueue 'q' does not exist", "create it")
    decided = plan.rejected([problem], reason="LocalQueueMissing", generation=2, previous=previous, now=0.0)
    status = decided.status
    assert (status.observedGeneration, status.points, status.failed) == (2, 1, 1)
    assert status.runs == [failed] and status.pinned == previous.pinned
    (accepted,) = [c for c in status.conditions if c.type == "Accepted"]
    assert (accepted.status, accepted.reason) == ("False", "LocalQueueMissing")


def test_an_informer_that_can_no_longer_read_is_not_ready():
    # Credentials revoked after the first list: /readyz said ok for ever while every watch and list got 403.
    import threading
    import time

    from kubernetes.client.exceptions import ApiException

    from orchestrator.service.controller import Informer

    calls = []

    def list_fn(*args, **kwargs):
        calls.append(kwargs.get("watch", False))
        if len(calls) == 1:
            return {"metadata": {"resourceVersion": "1"}, "items": []}
        raise ApiException(status=403, reason="Forbidden")

    stop = threading.Event()
    metrics = endpoints.Metrics(use_prometheus_client=False)
    informer = Informer(
        "jobsets", list_fn, (), resync=5, on_change=lambda o: None, on_resync=lambda: None, metrics=metrics, stop=stop
    )
    informer.start()
    try:
        deadline = time.monotonic() + 10
        while len(calls) < 3 and time.monotonic() < deadline:  # the list, the watch, a list again
            time.sleep(0.05)
        assert len(calls) >= 3, calls
        assert not informer.synced.is_set()
        assert 'distillctl_api_errors_total{operation="watch jobsets"}' in metrics.plain_exposition()
    finally:
        stop.set()
        informer.stop()


def test_an_edit_no_controller_has_seen_is_said(monkeypatch):
    # Applied while the controller was down: `status` showed the old generation's verdict and blamed the file, and
    # `sweep --service` said "it has no status yet" of a resource that had one.
    from orchestrator.cli import console, views

    said = []
    monkeypatch.setattr(console, "warn_once", said.append)
    monkeypatch.setattr(console.err, "print", lambda *a, **k: None)
    status = SweepStatus(observedGeneration=1, points=3)
    views.show_service(Served("s1", status, None, namespace="default", generation=2, changed_at=time.time() - 60))
    (problem,) = said
    assert (
        problem.code == "sweep_not_served" and "its status is of generation 1, the resource is at 2" in problem.message
    )
    said.clear()
    views.show_service(Served("s1", status, None, namespace="default", generation=1))  # seen: nothing to say
    assert said == []
    # Edited a moment ago: a controller takes a moment to act, and this was said on every served cluster.
    views.show_service(Served("s1", status, None, namespace="default", generation=2, changed_at=time.time() - 2))
    views.show_service(Served("s1", SweepStatus(), None, namespace="default", generation=1, changed_at=time.time()))
    assert said == []


def test_an_unset_queue_of_a_served_sweep_is_left_to_the_charts_default_queue():
    # `sweep --service` warned "the JobSets bypass Kueue" for a sweep whose queue the chart's defaults.queue fills.
    from distillspec.problems import Problem
    from orchestrator.service.client import as_served

    warned = Problem(
        ("target", "queue"), "no_queue", "target.queue is unset: bypass Kueue", "set it", severity="warning"
    )
    served = as_served(warned)
    assert served.code == "no_queue" and served.severity == "warning"
    assert "the sweep service's default queue (the chart's defaults.queue) applies" in served.message
    other = Problem(("target", "image"), "x", "m", "h")
    assert as_served(other) is other


def test_a_run_the_cluster_saw_end_is_not_shown_going_from_a_stale_resource():
    # The controller stopped; the run's JobSet failed; `status` showed it Running from the resource, for ever.
    from orchestrator.core.run_status import RunStatus
    from orchestrator.service.client import behind_problem, with_the_cluster

    service = {
        "a": RunStatus("Running"),
        "b": RunStatus("Stopped", "EarlyStopped"),  # only the controller knows: kept
        "c": RunStatus("Queued", "Pending"),
    }
    live = {"a": RunStatus("Failed", "UserError", "exit 1"), "b": RunStatus("Running"), "c": RunStatus("Queued")}
    merged, behind = with_the_cluster(service, live)
    assert behind == 1 and merged["a"].shown == "Failed (UserError)"
    assert merged["b"] is service["b"] and merged["c"] is service["c"]
    assert "1 run(s) it shows going have ended" in behind_problem("s", "team", 1).message


def test_a_deleted_sweeps_runs_go_to_the_first_live_sweep_that_has_them():
    from orchestrator.service.controller import inheritance

    def jobset(name, run_id, deleting=False):
        metadata = {"name": name, "labels": {"distillctl.dev/run-id": run_id}}
        return {"metadata": {**metadata, **({"deletionTimestamp": "2026-12-06T00:00:00Z"} if deleting else {})}}

    mine = [jobset("teacher", "r1"), jobset("point", "r2"), jobset("going", "r3", deleting=True)]
    live = {"zeta": frozenset({"r1"}), "beta": frozenset({"r1", "r3"}), "other": frozenset({"r9"})}
    # shared: to the first sweep by name that has it; unshared and already going: nobody's
    assert inheritance(mine, live) == {"teacher": "beta"}
    assert inheritance(mine, {}) == {}
