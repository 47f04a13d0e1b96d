"""`distillctl serve`: run the in-cluster controller of DistillationSweeps (see orchestrator/service)."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from orchestrator.cli.options import (
    DEFAULT_STALL_SECONDS,
    ContextOption,
    KubeconfigOption,
    StallOption,
    image_reference,
    kubernetes_name,
)


def serve(
    namespace: Annotated[
        Optional[str],
        typer.Option(
            "--namespace",
            "-n",
            callback=kubernetes_name,
            help="the namespace to serve (default: the pod's, else the context's)",
        ),
    ] = None,
    port: Annotated[
        int, typer.Option("--port", min=0, max=65535, help="/healthz, /readyz and /metrics on this port (0: any)")
    ] = 8080,
    resync: Annotated[
        float,
        typer.Option("--resync", min=1.0, max=86400.0, help="seconds between full re-lists (outputs are re-read then)"),
    ] = 60.0,
    lease: Annotated[
        str, typer.Option("--lease", callback=kubernetes_name, help="the Lease that elects the one acting replica")
    ] = "distillctl-controller",
    identity: Annotated[
        Optional[str], typer.Option("--identity", help="this replica's name in the Lease (default: host name)")
    ] = None,
    stall_after: StallOption = DEFAULT_STALL_SECONDS,
    default_queue: Annotated[
        Optional[str],
        typer.Option("--default-queue", callback=kubernetes_name, help="target.queue for sweeps that leave it unset"),
    ] = None,
    default_priority: Annotated[
        Optional[str],
        typer.Option(
            "--default-priority", callback=kubernetes_name, help="target.priority for sweeps that leave it unset"
        ),
    ] = None,
    default_image: Annotated[
        Optional[str],
        typer.Option("--default-image", callback=image_reference, help="target.image for sweeps that leave it unset"),
    ] = None,
    default_output_base: Annotated[
        Optional[str],
        typer.Option("--default-output-base", help="target.output_base for sweeps that leave it unset (or `runs`)"),
    ] = None,
    kubeconfig: KubeconfigOption = None,
    context: ContextOption = None,
) -> None:
    """Run the controller: reconcile every DistillationSweep in the namespace until interrupted.

    The --default-* values complete a sweep's target where it leaves them unset (run ids and JobSets are then what
    `distillctl sweep` gives with those values written in the file)."""
    from orchestrator.service.resource import TargetDefaults
    from orchestrator.service.run import run

    run(
        namespace=namespace,
        port=port,
        resync=resync,
        lease=lease,
        identity=identity,
        stall_after=stall_after,
        kubeconfig=kubeconfig,
        context=context,
        defaults=TargetDefaults(
            queue=default_queue or None,
            priority=default_priority or None,
            image=default_image or None,
            output_base=default_output_base or None,
        ),
    )
