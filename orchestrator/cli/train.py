"""`distillctl train SPEC`: validate a spec and run the bundled JAX trainer on this machine, in-process.

JAX is imported only when the command runs, so the rest of the CLI starts without it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def train(
    file: Annotated[Path, typer.Argument(help="a spec file (distillctl layout or a MaxText distillation.yml)")],
    output_dir: Annotated[str | None, typer.Option("--output-dir", help="override the spec's output_dir")] = None,
    steps: Annotated[int | None, typer.Option("--steps", help="override the spec's steps")] = None,
) -> None:
    """Train one spec locally (CPU or the local accelerators); resumes from <output_dir>/<name>/checkpoints.

    Trainer exit codes: 0 done; 1 invalid spec or user error; 42 retryable failure; 65 diverged (NaN/inf loss);
    70 internal error; 143 stopped by SIGTERM/SIGINT after saving a checkpoint.
    """
    from orchestrator.cli import console
    from orchestrator.core.specs import load_valid_spec
    from orchestrator.errors import InvalidSpecError

    report = load_valid_spec(file)
    for problem in report.problems:
        console.print_problem(problem)
    from trainer.train import with_overrides

    spec, problems = with_overrides(report.spec, output_dir=output_dir, steps=steps)
    if spec is None:
        raise InvalidSpecError(f"{file} with the overrides is not a valid spec", [p for p in problems if p.is_error])
    from trainer.progress import ConsoleReporter, console_logging
    from trainer.train import run

    with console_logging():
        code = run(spec, reporter=ConsoleReporter())
    raise typer.Exit(int(code))
