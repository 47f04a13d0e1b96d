"""The XPK backend: creates each missing run with `xpk workload create`, then follows it like the Kubernetes backend.

XPK names the JobSet after `--workload` (our `<sweep>-<run id>`), but labels it its own way, so runs are found by
name rather than by our labels. Deleting and logs go through the Kubernetes API directly.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Sequence

from distillspec.problems import has_errors
from orchestrator.backends import DryRun, Submitted, note_partial_submit
from orchestrator.backends.kubernetes.backend import JOBSET, KubernetesBackend, observe_jobset
from orchestrator.backends.xpk import command as xpk_command
from orchestrator.core.expansion import Expansion, Point
from orchestrator.core.run_status import Observation
from orchestrator.errors import DistillctlError, InvalidSpecError
from orchestrator.exit_codes import ExitCode

XPK_TIMEOUT_SECONDS = 900


class XpkBackend(KubernetesBackend):
    def __init__(self, *args, xpk: str = "xpk", **kwargs):
        super().__init__(*args, **kwargs)
        self.xpk = xpk

    def preflight(self, expansion: Expansion) -> None:
        found = xpk_command.problems(self.target)
        if has_errors(found):
            raise InvalidSpecError("this target cannot be launched with xpk", found, "fix target: in the sweep file")
        if shutil.which(self.xpk) is None:
            raise DistillctlError(
                f"the sweep's target is xpk, but `{self.xpk}` is not on PATH",
                "install XPK (pip install xpk, with gcloud and kubectl) or set target.kind: kubernetes to create the "
                "JobSets directly",
                exit_code=ExitCode.CLUSTER_NOT_READY,
            )
        super().preflight(expansion)

    def observe(self, expansion: Expansion) -> dict[str, Observation]:
        listing = self.cluster.call(
            "list JobSets",
            self.cluster.custom.list_namespaced_custom_object,
            *JOBSET[:2],
            self.cluster.namespace,
            JOBSET[2],
        )
        by_name = {item["metadata"]["name"]: item for item in listing.get("items", [])}
        workloads = self._workloads() if by_name else {}
        return {
            run.run_id: observe_jobset(
                by_name[run.jobset_name], workloads.get(by_name[run.jobset_name]["metadata"].get("uid"))
            )
            for run in expansion.runs
            if run.jobset_name in by_name
        }

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
