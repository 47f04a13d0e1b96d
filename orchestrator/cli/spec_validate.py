"""`distillctl validate`'s work, without Typer: check spec files, print each one's problems and verdict, and
choose the exit code. The Typer command (`orchestrator.cli.spec.validate`) and the fast path that `main` takes for
a plain `validate` command line (`fast_arguments`) both call `run`.

Why a fast path: `validate` is the command people and editors run on every save, and Typer (its import, the
command's construction and a pydantic adapter per option) is a sixth of its start-up. The fast path reads only
the forms `validate --help` documents — spec files, `--output text|json` (or `--output=…`), `--strict`,
`--no-strict` and `--check-paths` — and leaves anything else (help, a typo, a missing file
argument) to Typer, whose messages and exit codes stay the only ones.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

OUTPUTS = ("text", "json")


@dataclasses.dataclass(frozen=True)
class Arguments:
    files: tuple[Path, ...]
    output: str = "text"
    strict: bool = False
    check_paths: bool = False


def fast_arguments(argv: list[str]) -> Arguments | None:
    """The arguments after `validate`, or None when Typer should read them (anything the fast path does not
    know, or a command line Typer would refuse)."""
    files, output, flags = [], "text", {"strict": False, "check_paths": False}
    rest = iter(argv)
    for arg in rest:
        if arg in ("--strict", "--no-strict"):
            flags["strict"] = arg == "--strict"
        elif arg == "--check-paths":
            flags["check_paths"] = True
        elif arg == "--output" or arg.startswith("--output="):
            output = arg.partition("=")[2] if "=" in arg else next(rest, None)
            if output not in OUTPUTS:
                return None
        elif arg.startswith("-"):
            return None  # --help, -h, --, a typo: Typer's to answer
        else:
            files.append(Path(arg))
    return Arguments(tuple(files), output, **flags) if files else None


def run(arguments: Arguments) -> int:
    """Check the files, print the problems (text or JSON) and return the exit code."""
    from distillspec.problems import has_errors
    from distillspec.specfile import read_spec_file
    from orchestrator.cli import console
    from orchestrator.errors import USAGE_CODES
    from orchestrator.exit_codes import ExitCode

    if sum(str(path) == "-" for path in arguments.files) > 1:  # the second read an empty stream: "empty file"
        console.print_error("standard input (-) is named twice", "give `-` once; name the other files by path")
        return int(ExitCode.USAGE)
    reports = [read_spec_file(path) for path in arguments.files]
    if arguments.check_paths:
        reports = _with_checked_paths(reports)
    problems = [p for report in reports for p in report.problems]
    strict = arguments.strict
    invalid = [r for r in reports if has_errors(list(r.problems)) or (strict and r.problems)]
    if any(p.code not in USAGE_CODES for r in invalid for p in r.problems if p.is_error or strict):
        verdict = int(ExitCode.INVALID_SPEC)
    else:
        verdict = int(ExitCode.USAGE) if invalid else 0
    from orchestrator.cli import boundary

    with boundary.printing_a_verdict():
        if arguments.output == "json":
            console.print_json([p.to_json() for p in problems])
        else:
            for report in reports:
                _print_report(report, strict=strict)
    return verdict


# A checkpoint folder's text files (config.json, tokenizer.json: Gemma's is 34 MB) are read up to this size.
CHECKED_FILE_LIMIT = 64 * 1024 * 1024


def _with_checked_paths(reports):
    check = path_checker()
    return [
        dataclasses.replace(
            r,
            problems=r.problems
            + tuple(r.locate(p) if r.locate else dataclasses.replace(p, file=r.file) for p in check(r.spec)),
        )
        if r.spec is not None
        else r
        for r in reports
    ]


def path_checker():
    """`--check-paths`' checks of one spec (`check(spec) -> problems`), reading local paths and object stores; each
    file, listing and header is read once across the specs checked (a sweep's points share their checkpoints).
    Raises DistillctlError (exit 1) when reading a path needs a package this machine lacks."""
    import functools

    from distillspec.maxtext_checkpoint import MissingDependency, read_checkpoint
    from orchestrator.core.checkpoint_paths import check_paths
    from orchestrator.errors import DistillctlError
    from orchestrator.outputs import count_files, file_sha256, read_columns, read_text, safetensors_header

    readers = [
        functools.cache(f)
        for f in (
            functools.partial(read_text, limit=CHECKED_FILE_LIMIT),
            read_checkpoint,
            count_files,
            read_columns,
            file_sha256,
            safetensors_header,
        )
    ]

    answers: dict = {}

    def check(spec) -> list:
        try:
            return _unreachable(spec, answers) or check_paths(spec, *readers)
        except MissingDependency as e:  # exit 1: the machine, not the spec, lacks something
            raise DistillctlError(e.message, e.hint) from None

    return check


def _unreachable(spec, answers: dict | None = None) -> list:
    """A problem for each checkpoint or data path whose object store cannot be read at all (no answer, credentials
    refused), asked once within seconds: the checks themselves would retry each file for minutes, then read the
    store's silence as "not found". `answers`: the stores asked already (shared across a sweep's specs)."""
    from distillspec.problems import Problem
    from orchestrator.core.checkpoint_paths import data_paths
    from orchestrator.outputs import BucketMissing, OutputStoreError, check_store

    paths = [
        ((side, "load_parameters_path"), getattr(getattr(spec, side), "load_parameters_path", None))
        for side in ("teacher", "student")
    ]

    def probe(store: str) -> OutputStoreError | None:
        try:
            check_store(store)
        except OutputStoreError as e:
            return None if isinstance(e, BucketMissing) else e  # missing: the checks say "not found" themselves
        except Exception:  # noqa: BLE001 - a store distillctl does not probe: the checks read it as before
            return None
        return None

    out = []
    # One probe per store: each waits up to 10 s. store -> (the path probed, the error)
    answers = {} if answers is None else answers
    for loc, path in paths + data_paths(spec):
        if not path or "://" not in path:
            continue
        store = "/".join(path.split("/", 3)[:3])  # scheme://bucket
        if store not in answers:
            answers[store] = (path, probe(path))
        probed, error = answers[store]
        if error is not None:
            hint = "check the network and the store's credentials; the path is checked once its store answers"
            code = "checkpoint_unreachable" if loc[1] == "load_parameters_path" else "data_unreachable"
            # The store's answer, said of this path (the student's and the data's named the teacher's).
            message = error.message.replace(f"cannot read {probed}", f"cannot read {path}", 1)
            out.append(Problem(loc, code, message, hint))
    return out


def _print_report(report, *, strict: bool = False) -> None:
    from orchestrator.cli import console

    for problem in report.problems:
        console.print_problem(problem, err=False)
    errors = sum(p.is_error for p in report.problems)
    warnings = len(report.problems) - errors
    file = console.printable(str(report.file), one_line=True)  # a name with a line break split the verdict
    if errors or (strict and warnings):  # a green tick above a failed CI step read as a pass
        why = "" if errors else " (--strict: warnings fail)"
        console.echo(((f"✗ {file}: {errors} error(s), {warnings} warning(s){why}", "red"),))
    else:
        kind = "MaxText distillation config" if report.format == "maxtext" else "spec"
        console.echo(((f"✓ {file}: valid {kind}" + (f", {warnings} warning(s)" if warnings else ""), "green"),))
