"""`distillctl plan`, `render` and `tpus`: each parses, calls the core, prints, and exits.

Errors are raised as `DistillctlError`s; `orchestrator.cli.app` maps them to messages and exit codes.
"""

from __future__ import annotations

import dataclasses
import hashlib
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from orchestrator.cli.options import (
    CheckPathsOption,
    GridYesOption,
    ImageOption,
    OutputFormat,
    OutputOption,
    SlicesOption,
    SweepArgument,
    SweepContext,
    TpuOption,
)

GB = 1e9


class RenderAs(str, Enum):
    jobset = "jobset"
    xpk = "xpk"


def _warn(problems) -> None:
    from orchestrator.cli import console

    for problem in problems:
        if not problem.is_error:
            console.print_problem(problem)


def plan(
    sweep: SweepArgument,
    output: OutputOption = OutputFormat.text,
    tpu_type: TpuOption = None,
    slices: SlicesOption = None,
    image: ImageOption = None,
    yes: GridYesOption = False,
    strict: Annotated[
        bool, typer.Option(help="exit 4 when there is a warning (a run that will not fit, a mesh that replicates)")
    ] = False,
    check_paths: CheckPathsOption = False,
) -> None:
    """List a sweep's runs: ids, JobSet names, axis values, chips, chip-hours and per-chip memory."""
    from rich.table import Table

    from distillspec import tpu
    from distillspec.problems import has_errors
    from orchestrator.backends.xpk import command as xpk_command
    from orchestrator.cli import console
    from orchestrator.core import plan as planning
    from orchestrator.core.sweeps import with_memory_warnings
    from orchestrator.errors import InvalidSpecError

    ctx = SweepContext.build(sweep, tpu_type=tpu_type, slices=slices, image=image, yes=yes)
    result = ctx.expand()
    target = result.sweep.target
    rows = planning.plan(result)
    result = with_memory_warnings(result, rows)
    xpk = xpk_command.sweep_problems(result)  # what `xpk workload create` cannot express: the launch refuses it
    if has_errors(xpk):
        raise InvalidSpecError(f"{sweep} cannot be launched with xpk", (*result.problems, *xpk), "fix target: above")
    result = dataclasses.replace(result, problems=result.problems + tuple(xpk))
    if check_paths:
        try:
            found = ctx.path_problems(result)
        except InvalidSpecError as e:  # the sweep's own warnings with them: plan had not printed them yet
            raise InvalidSpecError(e.message, (*result.problems, *e.problems), e.hint) from None
        result = dataclasses.replace(result, problems=result.problems + found)
    warnings = [p for p in result.problems if not p.is_error]
    if output is OutputFormat.json:
        console.print_json(
            {
                "sweep": result.sweep.name,
                "target": target.model_dump(mode="json"),
                "grid_size": result.grid_size,
                "excluded": result.excluded,
                "runs": [row.to_json() for row in rows],
                "total_chip_hours": _total_chip_hours(rows),
                "problems": [p.to_json() for p in warnings],
            }
        )
        _exit_if_strict(strict, warnings)
        return
    _warn(warnings)
    where = f"{target.tpu_type} × {target.slices}" if target.on_cluster else "local"
    table = Table(
        title=f"{result.sweep.name}: {len(result.points)} point(s), {len(result.prerequisites)} "
        f"prerequisite(s) on {where}",
        title_justify="left",
    )
    # TPU7x: the estimate is per JAX device (a TensorCore, half a chip's HBM); it read "GB/chip"
    per = "device" if target.on_cluster and tpu.lookup(str(target.tpu_type)).devices_per_chip > 1 else "chip"
    total = _total_chip_hours(rows)
    if total is not None:  # a 108-point grid's cost was 108 numbers to add up by hand
        table.caption = f"{total:,.0f} chip-hours in all" if total >= 10 else f"{total:.2g} chip-hours in all"
        table.caption_justify = "left"
    for column in ("#", "run id", "jobset", "axis values", "slices×hosts×chips", "chip-h", f"GB/{per}", "fit"):
        table.add_column(column, justify="right" if column in ("#", "chip-h", f"GB/{per}") else "left")
    for row in rows:
        p, m = row.point, row.memory
        table.add_row(
            p.key,
            p.run_id,
            p.jobset_name,
            console.axis_text(p.axis_values),
            row.shape,
            "—"
            if row.chip_hours is None
            else (f"{row.chip_hours:,.0f}" if row.chip_hours >= 10 else f"{row.chip_hours:.2g}"),
            _gb(m.total) + ("" if m.hbm_per_chip is None else f"/{m.hbm_per_chip / GB:.0f}"),
            {"fits": "ok", "tight": "tight", "does_not_fit": "OOM", "unknown": "—"}[m.fit],
        )
    console.print_wide(table)
    _exit_if_strict(strict, warnings)


def _total_chip_hours(rows) -> float | None:
    hours = [row.chip_hours for row in rows if row.chip_hours is not None]
    return sum(hours) if hours else None


def _gb(size: float) -> str:
    """GB with one decimal, or two significant digits below 0.1 (a tiny local run read "0.0", as if it needed none)."""
    value = size / GB
    return f"{value:.1f}" if value >= 0.1 else f"{value:.2g}"


def _exit_if_strict(strict: bool, warnings: list) -> None:
    """`plan --strict` as a CI gate: a warning (a run that will not fit its chips...) fails it, as validate's does."""
    if strict and warnings:
        from orchestrator.cli import console
        from orchestrator.exit_codes import ExitCode

        console.err.print(f"error: {len(warnings)} warning(s), and --strict makes them errors", markup=False)
        raise typer.Exit(int(ExitCode.INVALID_SPEC))


def render(
    sweep: SweepArgument,
    out_dir: Annotated[Optional[Path], typer.Option("--out-dir", "-o", help="folder for the manifests")] = None,
    output: OutputOption = OutputFormat.text,
    as_: Annotated[
        RenderAs, typer.Option("--as", help="jobset: write manifests; xpk: print xpk commands")
    ] = RenderAs.jobset,
    tpu_type: TpuOption = None,
    slices: SlicesOption = None,
    image: ImageOption = None,
    yes: GridYesOption = False,
) -> None:
    """Write one JobSet manifest per run to DIR as `<jobset name>.yaml` (or print `xpk workload create` lines)."""
    from distillspec.problems import has_errors
    from orchestrator.backends.xpk import command as xpk_command
    from orchestrator.cli import console
    from orchestrator.core import rendering
    from orchestrator.core.sweeps import with_memory_warnings
    from orchestrator.errors import InvalidSpecError, UsageError, cannot_write

    result = SweepContext.build(sweep, tpu_type=tpu_type, slices=slices, image=image, yes=yes).expand()
    result = with_memory_warnings(result)
    target = result.sweep.target
    if not target.on_cluster:
        raise UsageError(
            f"{sweep} targets {target.kind!r}: there is nothing to render",
            "set target.kind to kubernetes or xpk, or pass --tpu-type to render for a cluster",
        )
    if as_ is RenderAs.xpk:
        found = xpk_command.located_problems(result)
        if has_errors(found):
            raise InvalidSpecError(f"{sweep} cannot be expressed as xpk commands", found)
        _warn(list(result.problems) + found)
        commands = [(run, xpk_command.xpk_command(run, target)) for run in result.runs]
        if output is OutputFormat.json:
            console.print_json(
                [
                    {"name": run.jobset_name, "run_id": run.run_id, "argv": list(c.argv), "line": c.line}
                    for run, c in commands
                ]
            )
        else:
            console.print_lines(f"# {run.label}: {run.jobset_name}\n{c.line}" for run, c in commands)
        return
    if out_dir is None:
        raise UsageError("render needs an output folder", "pass -o DIR (or --as xpk to print xpk commands)")
    manifests = rendering.render(result)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        written = [_write(out_dir / m.filename, m.text) for m in manifests]
    except OSError as e:
        raise cannot_write(out_dir, e, folder=True) from None
    _warn(result.problems)
    _warn(_stale_manifests(out_dir, result.sweep.name, {m.filename for m in manifests}))
    if output is OutputFormat.json:
        console.print_json(
            [
                {
                    "name": m.name,
                    "file": str(out_dir / m.filename),
                    "sha256": hashlib.sha256(m.text.encode()).hexdigest(),
                    "changed": changed,
                }
                for m, changed in zip(manifests, written, strict=True)
            ]
        )
        return
    console.print_lines(
        f"{'wrote' if changed else 'unchanged'} {out_dir / m.filename}"
        for m, changed in zip(manifests, written, strict=True)
    )


def _stale_manifests(out_dir: Path, sweep: str, written: set[str]) -> list:
    """A warning naming the manifests of this sweep's runs in `out_dir` that this render did not write (an earlier
    render, before an edit or for another TPU type): `kubectl apply -f DIR` would create those JobSets too."""
    import re

    from distillspec.problems import Problem
    from orchestrator.core.identity import RUN_ID_LENGTH

    ours = re.compile(rf"{re.escape(sweep)}-[a-z2-7]{{{RUN_ID_LENGTH}}}\.yaml")
    stale = sorted(p.name for p in out_dir.iterdir() if ours.fullmatch(p.name) and p.name not in written)
    if not stale:
        return []
    listed = ", ".join(stale[:5]) + (f" and {len(stale) - 5} more" if len(stale) > 5 else "")
    return [
        Problem(
            (),
            "stale_manifests",
            f"{len(stale)} manifest(s) of sweep {sweep} in {out_dir} are not this render's (an earlier render's "
            f"runs): {listed}",
            f"`kubectl apply -f {out_dir}` would create those JobSets too: delete them, or render into an empty folder",
            severity="warning",
        )
    ]


def _write(path: Path, text: str) -> bool:
    """Write `text` unless the file already holds it; True when the file changed."""
    data = text.encode()
    if path.is_file() and path.read_bytes() == data:
        return False
    path.write_bytes(data)
    return True


def tpus(output: OutputOption = OutputFormat.text) -> None:
    """List the TPU types distillctl knows (the names `xpk workload create --tpu-type` takes)."""
    from rich.table import Table
    from rich.text import Text

    from distillspec import tpu
    from orchestrator.cli import console

    rows = [
        {
            "name": t.name,
            "family": t.family,
            "topology": t.topology,
            "accelerator": t.accelerator,
            "machine_type": t.machine_type,
            "chips_per_vm": t.chips_per_vm,
            "vms_per_slice": t.vms_per_slice,
            "chips": t.chips,
            "hbm_gb_per_chip": t.hbm_gb_per_chip,
        }
        for t in tpu.TPU_TYPES.values()
    ]
    if output is OutputFormat.json:
        console.print_json(rows)
        return
    table = Table()
    for column in ("name", "topology", "accelerator", "machine type", "VMs", "chips/VM", "chips", "HBM/chip"):
        table.add_column(column, justify="right" if column in ("VMs", "chips/VM", "chips", "HBM/chip") else "left")
    for r in rows:
        table.add_row(
            r["name"],
            r["topology"],
            r["accelerator"],
            r["machine_type"],
            str(r["vms_per_slice"]),
            str(r["chips_per_vm"]),
            str(r["chips"]),
            f"{r['hbm_gb_per_chip']:.0f} GB",
        )
    console.print_wide(table)
    console.out.print(Text("also accepted: <family>-<topology> (v5p-4x4x4) and v5e-N for v5litepod-N", style="dim"))
