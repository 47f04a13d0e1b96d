"""Loading one spec file for a command that needs it valid (`explain`, `convert`, `train`)."""

from __future__ import annotations

from pathlib import Path

from distillspec.specfile import SpecReport, read_spec_file
from orchestrator.errors import USAGE_CODES, InvalidSpecError, UsageError


def load_valid_spec(path: Path) -> SpecReport:
    """The spec in `path`, or an error carrying every problem: UsageError when it cannot be read, InvalidSpecError
    otherwise."""
    report = read_spec_file(path)
    if not report.ok:
        usage = all(p.code in USAGE_CODES for p in report.problems if p.is_error)
        if usage:
            problem = report.problems[0]
            raise UsageError(problem.message, problem.hint)
        errors = [p for p in report.problems if p.is_error]
        sweep_file = any(p.code == "sweep_not_spec" for p in errors)  # validate would only say the same
        raise InvalidSpecError(
            f"{path} is not a valid spec" + (" (it is a sweep file)" if sweep_file else ""),
            errors,
            "give the spec it names under `spec:`, or a sweep command (plan, sweep)"
            if sweep_file
            else f"fix the errors above (`distillctl validate {path}` lists its warnings too)",
        )
    return report
