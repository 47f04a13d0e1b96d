"""The `distillctl` command line. Each command parses, calls one core function, prints, and exits."""

from __future__ import annotations

import os
import sys
import traceback
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table
from rich.text import Text
from typer.core import TyperGroup

from distillspec import maxtext_format
from distillspec.problems import has_errors
from distillspec.registry import MODELS
from distillspec.specfile import SpecReport, read_spec_file
from orchestrator import console, launch_commands, results_commands, sweep_commands, train_command
from orchestrator.console import OutputFormat
from orchestrator.core.explain import explain as explain_spec
from orchestrator.errors import USAGE_CODES, DistillctlError, InvalidSpecError, UsageError
from orchestrator.exit_codes import ExitCode, epilog


class _Commands(TyperGroup):
    """Maps DistillctlError (and stray exceptions) to a message and an exit code, in one place."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except DistillctlError as e:
            if isinstance(e, InvalidSpecError):
                for problem in e.problems:
                    console.err.print(console.problem_line(problem))
            console.print_error(e.message, e.hint)
            raise typer.Exit(int(e.exit_code)) from None
        except KeyboardInterrupt:
            console.print_error("interrupted")
            raise typer.Exit(int(ExitCode.INTERRUPTED)) from None
        except BrokenPipeError:
            if not _stdout_closed():
                raise  # a pipe to something else broke: not the reader going away
            # `distillctl status --output json | head`: the reader has what it wanted.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            raise typer.Exit(0) from None
        except (typer.Exit, typer.Abort):
            raise
        except Exception as e:
            if hasattr(e, "exit_code") and hasattr(e, "show"):
                raise  # the command line itself is wrong: Typer prints usage and exits 2
            # Anything else is a bug: say so briefly unless debugging.
            if os.environ.get("DISTILLCTL_DEBUG"):
                traceback.print_exc()
            console.print_error(
                f"internal error: {type(e).__name__}: {e}",
                "this is a bug in distillctl; rerun with DISTILLCTL_DEBUG=1 for the traceback and report it",
            )
            raise typer.Exit(int(ExitCode.INTERNAL)) from None


def _stdout_closed() -> bool:
    try:
        sys.stdout.flush()
        os.write(sys.stdout.fileno(), b"")
        return False
    except BrokenPipeError:
        return True
    except (OSError, ValueError, AttributeError):
        return False


app = typer.Typer(
    cls=_Commands,
    help="Validate, sweep, launch and compare knowledge-distillation runs on TPU pods.",
    epilog=epilog(),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

OutputOption = Annotated[OutputFormat, typer.Option("--output", help="text for people, json for machines")]


@app.command()
def validate(
    files: Annotated[list[Path], typer.Argument(help="spec files: distillctl's layout or a MaxText distillation.yml")],
    output: OutputOption = OutputFormat.text,
    strict: Annotated[bool, typer.Option(help="treat warnings as errors")] = False,
) -> None:
    """Check specs for every known mistake before anything is launched."""
    reports = [read_spec_file(path) for path in files]
    problems = [p for report in reports for p in report.problems]
    if output is OutputFormat.json:
        console.print_json([p.to_json() for p in problems])
    else:
        for report in reports:
            _print_report(report)
    invalid = [r for r in reports if has_errors(list(r.problems)) or (strict and r.problems)]
    if any(p.code not in USAGE_CODES for r in invalid for p in r.problems if p.is_error or strict):
        raise typer.Exit(int(ExitCode.INVALID_SPEC))
    if invalid:
        raise typer.Exit(int(ExitCode.USAGE))


def _print_report(report: SpecReport) -> None:
    for problem in report.problems:
        console.out.print(console.problem_line(problem))
    errors = sum(p.is_error for p in report.problems)
    warnings = len(report.problems) - errors
    if errors:
        console.out.print(Text(f"✗ {report.file}: {errors} error(s), {warnings} warning(s)", style="red"))
    else:
        kind = "MaxText distillation config" if report.format == "maxtext" else "spec"
        console.out.print(
            Text(f"✓ {report.file}: valid {kind}" + (f", {warnings} warning(s)" if warnings else ""), style="green")
        )


def load_valid_spec(path: Path) -> SpecReport:
    """The spec in `path`, or an error carrying every problem."""
    report = read_spec_file(path)
    if not report.ok:
        usage = all(p.code in USAGE_CODES for p in report.problems if p.is_error)
        if usage:
            problem = report.problems[0]
            raise UsageError(problem.message, problem.hint)
        raise InvalidSpecError(
            f"{path} is not a valid spec",
            [p for p in report.problems if p.is_error],
            f"run `distillctl validate {path}` for details",
        )
    return report


@app.command()
def explain(
    file: Annotated[Path, typer.Argument(help="a spec file")],
    output: OutputOption = OutputFormat.text,
) -> None:
    """Show the fully resolved spec: defaults, model shapes, layer indices and the α/β/T schedules."""
    report = load_valid_spec(file)
    view = explain_spec(report.spec)
    if output is OutputFormat.json:
        console.print_json(view)
        return
    for problem in report.problems:
        console.err.print(console.problem_line(problem))
    console.out.print(Text(f"# {file}: resolved spec", style="bold"))
    console.out.print(console.to_yaml(view["spec"]).rstrip(), markup=False)
    models = Table(title="models", title_justify="left")
    for column in ("side", "model", "layers", "parameters"):
        models.add_column(column)
    for side, info in view["models"].items():
        models.add_row(side, info["model"], str(info["num_layers"]), f"{info['parameters'] / 1e9:.3f} B")
    console.out.print(models)
    if view["feature_loss"]:
        console.out.print(f"feature-loss layer indices: {view['layer_indices']}", markup=False)
    else:
        console.out.print("feature loss: off (β = 0: no activations are extracted)")
    if view["schedules"]:
        points = next(iter(view["schedules"].values()))["values"]
        table = Table(title="schedules: value at % of steps", title_justify="left")
        table.add_column("", no_wrap=True)
        table.add_column("schedule")
        for point in points:
            table.add_column(f"{point['progress']:.0%}", justify="right")
        table.add_row("step", "", *(str(p["step"]) for p in points), style="dim")
        for name, info in view["schedules"].items():
            table.add_row(name, info["schedule"], *(f"{v['value']:.4g}" for v in info["values"]))
        console.out.print(table)


class SpecLayout(str, Enum):
    native = "native"
    maxtext = "maxtext"


@app.command()
def convert(
    file: Annotated[Path, typer.Argument(help="a spec file in either layout")],
    to: Annotated[SpecLayout, typer.Option("--to", help="the layout to write")] = SpecLayout.native,
) -> None:
    """Print a spec in distillctl's layout or as a MaxText distillation.yml (to stdout)."""
    spec = load_valid_spec(file).spec
    native = spec.model_dump(mode="json", exclude_defaults=to is SpecLayout.native)
    if to is SpecLayout.maxtext:
        native["loss"]["layer_indices"] = spec.layer_indices() if spec.loss.feature_loss_on else spec.loss.layer_indices
        try:
            native = maxtext_format.to_maxtext(native)
        except maxtext_format.NotRepresentable as e:
            raise UsageError(str(e), "keep this spec in distillctl's layout") from None
    console.out.print(console.to_yaml(native).rstrip(), markup=False)


@app.command()
def models(output: OutputOption = OutputFormat.text) -> None:
    """List the models distillctl knows, with their shapes."""
    rows = [
        {
            "name": name,
            "parameters": s.param_count(),
            **{
                k: getattr(s, k)
                for k in (
                    "num_layers",
                    "emb_dim",
                    "num_query_heads",
                    "num_kv_heads",
                    "head_dim",
                    "mlp_dim",
                    "vocab_size",
                )
            },
        }
        for name, s in MODELS.items()
    ]
    if output is OutputFormat.json:
        console.print_json(rows)
        return
    table = Table()
    for column in ("name", "params", "layers", "emb", "heads", "kv", "head_dim", "mlp", "vocab"):
        table.add_column(column, justify="left" if column == "name" else "right")
    for r in rows:
        table.add_row(
            r["name"],
            f"{r['parameters'] / 1e9:.2f}B",
            *(
                str(r[k])
                for k in (
                    "num_layers",
                    "emb_dim",
                    "num_query_heads",
                    "num_kv_heads",
                    "head_dim",
                    "mlp_dim",
                    "vocab_size",
                )
            ),
        )
    console.out.print(table)


app.command()(sweep_commands.plan)
app.command()(sweep_commands.render)
app.command()(sweep_commands.tpus)
app.command()(launch_commands.sweep)
app.command()(launch_commands.status)
app.command()(launch_commands.logs)
app.command()(launch_commands.cancel)
app.command("results")(results_commands.results_command)
app.command()(results_commands.regress)
app.add_typer(results_commands.golden_app, name="golden")
app.command()(train_command.train)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
