"""The XPK backend: creates each missing run with `xpk workload create`, then follows it like the Kubernetes backend.

XPK names the JobSet after `--workload` (our `<sweep>-<run id>`), but labels it (and its pods) its own way,
`xpk.google.com/workload: <name>`: the JobSets it created read our sweep and run-id labels from that name, so
everything the Kubernetes backend finds by label (status, orphans, logs, another sweep's run) finds them too.
Deleting and logs go through the Kubernetes API directly.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Mapping, Sequence

from distillspec.contract import ENV_RUN_ID, LABEL_RUN_ID, LABEL_SWEEP
from distillspec.problems import has_errors
from orchestrator.backends import DryRun, Submitted, note_partial_submit
from orchestrator.backends.kubernetes.backend import KubernetesBackend
from orchestrator.backends.kubernetes.client import ClusterError
from orchestrator.backends.xpk import command as xpk_command
from orchestrator.core.expansion import Expansion, Point
from orchestrator.core.identity import RUN_ID_LENGTH
from orchestrator.errors import DistillctlError, InvalidSpecError
from orchestrator.exit_codes import ExitCode

XPK_TIMEOUT_SECONDS = 900
XPK_WORKLOAD_LABEL = "xpk.google.com/workload"  # on XPK's JobSets and their pods: the --workload name
# `<sweep>-<run id>`: the run id has a fixed length, so the split is never ambiguous.
OUR_WORKLOAD = re.compile(rf"^(?P<sweep>[a-z][a-z0-9-]*)-(?P<run_id>[a-z2-7]{{{RUN_ID_LENGTH}}})$")


INSTALL_XPK = "install XPK (pip install xpk, with gcloud and kubectl)"


class XpkBackend(KubernetesBackend):
    def __init__(self, *args, xpk: str = "xpk", launching: bool = False, **kwargs):
        self.xpk = xpk
        try:
            super().__init__(*args, **kwargs)
        except ClusterError as e:
            if not launching or shutil.which(xpk) is not None:
                raise  # `status`, `logs` and `cancel` read and delete through the API: they never run xpk
            # Both at once: a machine without a kubeconfig is often one without XPK too, and each was said only
            # after the other was fixed.
            raise ClusterError(
                f"{e.message}; and `{xpk}` is not on PATH (`distillctl sweep` creates an xpk target's runs with it)",
                f"{e.hint}; {INSTALL_XPK}",
            ) from None

    def preflight(self, expansion: Expansion) -> None:
        found = xpk_command.sweep_problems(expansion)
        if has_errors(found):
            raise InvalidSpecError("this target cannot be launched with xpk", found, "fix target: in the sweep file")
        if shutil.which(self.xpk) is None:
            raise DistillctlError(
                f"the sweep's target is xpk, but `{self.xpk}` is not on PATH",
                f"{INSTALL_XPK} or set target.kind: kubernetes to create the JobSets directly",
                exit_code=ExitCode.CLUSTER_NOT_READY,
            )
        super().preflight(expansion)

    # XPK's pods carry its workload label, not our run id.
    pending_pods: Mapping[str, str] = {"label_selector": XPK_WORKLOAD_LABEL, "field_selector": "status.phase=Pending"}

    def _jobsets(self, selector: str = LABEL_RUN_ID, what: str = "list the JobSets") -> list[dict]:
        """As the Kubernetes backend's, XPK's JobSets included under the labels their names give (`as_ours`): the
        API server cannot select by labels they lack, so the selector is applied here."""
        found = [as_ours(jobset) for jobset in super()._jobsets("", what)]
        return [jobset for jobset in found if selects(selector, (jobset.get("metadata") or {}).get("labels") or {})]

    def submit(
        self, runs: Sequence[Point], expansion: Expansion, *, dry_run: DryRun | None = None
    ) -> dict[str, Submitted]:
        if dry_run is not None:
            return super().submit(runs, expansion, dry_run=dry_run)  # the same manifest, through the API server
        if not runs:
            return {}
        existing = self.observe(expansion)
        results: dict[str, Submitted] = {}
        try:
            self._create_each(runs, expansion, existing, results)
        except BaseException as e:  # a failed `xpk workload create`, Ctrl-C: the runs created before it stay
            note_partial_submit(e, list(results.values()).count("created"), len(runs))
            raise
        return results

    def _create_each(self, runs, expansion, existing, results: dict[str, Submitted]) -> None:
        for run in runs:
            if run.run_id in existing:
                results[run.run_id] = "exists"
                continue
            # The namespace the runs are looked for in (-n wins over target.namespace), and this backend's xpk.
            target = self.target.model_copy(update={"namespace": self.cluster.namespace})
            command = xpk_command.xpk_command(run, target)
            argv = (self.xpk, *command.argv[1:])
            try:
                done = subprocess.run(argv, capture_output=True, text=True, timeout=XPK_TIMEOUT_SECONDS)
            except subprocess.TimeoutExpired:
                raise DistillctlError(
                    f"`xpk workload create` for {run.jobset_name} did not finish in {XPK_TIMEOUT_SECONDS // 60} minutes",
                    f"run it by hand to see where it hangs: {command.line}",
                ) from None
            if done.returncode != 0:
                if run.run_id in self.observe(expansion):
                    results[run.run_id] = "exists"  # created concurrently
                    continue
                tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-15:])
                raise DistillctlError(
                    f"`xpk workload create` failed for {run.jobset_name} (exit {done.returncode}):\n{tail}",
                    f"the command was: {command.line}",
                )
            results[run.run_id] = "created"


def as_ours(jobset: dict) -> dict:
    """`jobset` with our sweep and run-id labels when XPK created it for us (its workload label is its name, and
    that name is `<sweep>-<run id>`); any other JobSet as it is."""
    metadata = jobset.get("metadata") or {}
    labels = metadata.get("labels") or {}
    name = metadata.get("name", "")
    found = OUR_WORKLOAD.match(name)
    if LABEL_RUN_ID in labels or labels.get(XPK_WORKLOAD_LABEL) != name or found is None:
        return jobset
    # Ours runs our trainer for that run id (`DISTILLCTL_RUN_ID=<id>` in its command): a hand-made XPK workload
    # whose name only looks like `<sweep>-<run id>` is left alone (cancel --orphans would have deleted it).
    if f"{ENV_RUN_ID}={found['run_id']}" not in _commands(jobset):
        return jobset
    ours = {**labels, LABEL_SWEEP: found["sweep"], LABEL_RUN_ID: found["run_id"]}
    return {**jobset, "metadata": {**metadata, "labels": ours}}


def selects(selector: str, labels: Mapping[str, str]) -> bool:
    """Whether `labels` match a label selector of `key` and `key=value` terms, comma-separated (the ones the
    Kubernetes backend lists JobSets with; "" selects everything)."""
    for term in filter(None, (t.strip() for t in selector.split(","))):
        key, equals, value = term.partition("=")
        if key not in labels or (equals and labels[key] != value):
            return False
    return True


def _commands(jobset: dict) -> str:
    """The command lines of a JobSet's containers, as one text."""
    texts = []
    for replicated in (jobset.get("spec") or {}).get("replicatedJobs") or []:
        pod = ((((replicated.get("template") or {}).get("spec") or {}).get("template") or {}).get("spec")) or {}
        for container in pod.get("containers") or []:
            texts += [str(part) for part in (container.get("command") or []) + (container.get("args") or [])]
    return "\n".join(texts)
