"""`distillctl early-stop replay`: the sweep's early-stopping rules over its runs' outputs, offline."""

from __future__ import annotations

import typer

from orchestrator.cli.options import (
    ImageOption,
    OutputBaseOption,
    OutputFormat,
    OutputOption,
    SlicesOption,
    SweepArgument,
    TpuOption,
)

early_stop_app = typer.Typer(help="Early stopping: try a sweep's rules on what its runs wrote.", no_args_is_help=True)


@early_stop_app.command("replay")
def replay(
    sweep: SweepArgument,
    output_base: OutputBaseOption = None,
    output: OutputOption = OutputFormat.text,
    tpu_type: TpuOption = None,
    slices: SlicesOption = None,
    image: ImageOption = None,
) -> None:
    """Which points each rule would have stopped, at which step, and the chip-hours that would have saved."""
    from rich.table import Table
    from rich.text import Text

    from orchestrator.cli import console
    from orchestrator.cli.options import SweepContext
    from orchestrator.core import early_stop, gate
    from orchestrator.core.status import damage_warnings
    from orchestrator.errors import UsageError

    # The options that are part of run ids: a sweep launched with --image is replayed with the same --image.
    ctx = SweepContext.build(sweep, yes=True, tpu_type=tpu_type, slices=slices, image=image)
    expansion = ctx.expanded(about=("early_stopping",))  # a rule that never fires, a metric not logged
    if not expansion.sweep.early_stopping.any:
        raise UsageError(
            f"{sweep} has no early_stopping rules", "add e.g. `early_stopping: {no_improvement: {patience: 5}}`"
        )
    if output_base is None:
        ctx.warn_if_nothing_written(expansion)
    outputs = gate.read_outputs(expansion, output_base)
    for problem in damage_warnings(outputs):  # a cut or unreadable log replays what is left of it
        console.print_problem(problem)
    rows = early_stop.replay(expansion, outputs)
    if not any(r.last_step is not None for r in rows):  # "0 would have stopped" would read as rules that never fire
        where = output_base or expansion.sweep.target.output_base
        raise UsageError(
            f"no point of sweep {expansion.sweep.name} has logged metrics under {where}: nothing to replay",
            "run the sweep first, point --output-base at where its run folders are, or give the --image, "
            "--tpu-type or --slices it was launched with (they are part of run ids)",
        )
    if output is OutputFormat.json:
        console.print_json(
            [
                {
                    "key": r.run.key,
                    "run_id": r.run.run_id,
                    "rule": r.stop.rule if r.stop else None,
                    "step": r.stop.step if r.stop else None,
                    "message": r.stop.message if r.stop else None,
                    "last_step": r.last_step,
                    "steps_saved": r.steps_saved,
                    "chip_hours_saved": r.chip_hours_saved,
                }
                for r in rows
            ]
        )
        return
    table = Table(title=f"{expansion.sweep.name}: early stopping replayed")
    for column in ("#", "run id", "axis values", "stopped by", "at step", "ran to", "chip-h saved", "why"):
        table.add_column(column)
    for r in rows:
        hours = "—" if r.chip_hours_saved is None else f"{r.chip_hours_saved:.3g}"
        table.add_row(
            r.run.key,
            r.run.run_id,
            console.axis_text(r.run.axis_values),
            r.stop.rule if r.stop else "—",
            str(r.stop.step) if r.stop else "—",
            "—" if r.last_step is None else str(r.last_step),
            hours if r.stop else "—",
            Text(r.stop.message if r.stop else ""),  # a metric's message, never markup
        )
    console.print_wide(table)
    stopped = [r for r in rows if r.stop]
    total = sum(r.chip_hours_saved or 0.0 for r in stopped)
    console.out.print(
        f"{len(stopped)} of {len(rows)} point(s) would have stopped; {sum(r.steps_saved for r in stopped)} steps"
        + (f", {total:.3g} chip-hours saved" if any(r.chip_hours_saved is not None for r in stopped) else ""),
        markup=False,
    )
