"""The command line's one error boundary: what an exception that ends a command prints, and its exit code.

Typer-free, so that `validate`'s fast path (`orchestrator.cli.main`) and the Typer application (`app`) end
commands alike.
"""

from __future__ import annotations

import contextlib
import os
import sys
import traceback
from collections.abc import Iterator

from orchestrator.errors import DistillctlError, InvalidSpecError
from orchestrator.exit_codes import ExitCode


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread: every command ends on it as on Ctrl-C (`sweep --wait` says the runs go
    on; `status --watch` ends), with exit 143. It died silently before, mid-line."""


def raise_terminated(_signum: int, _frame) -> None:
    raise Terminated()


def interrupted_code(e: KeyboardInterrupt) -> ExitCode:
    return ExitCode.TERMINATED if isinstance(e, Terminated) else ExitCode.INTERRUPTED


def exit_code(e: BaseException) -> int | None:
    """Print what `e` means and return the exit code; None when `e` is not the boundary's to end (re-raise it)."""
    from orchestrator.cli import console

    notes = getattr(e, "__notes__", ())  # what the command had done when it ended (runs created before a stop)
    if isinstance(e, DistillctlError):
        if isinstance(e, InvalidSpecError):
            for problem in e.problems:
                console.print_problem(problem)
            if console.json_problems:  # `--output json`: stdout holds what `validate --output json` would print
                console.print_json([p.to_json() for p in e.problems])
        console.print_error(e.message, e.hint)
        for note in notes:
            console.print_stopped(note)
        return int(e.exit_code)
    if isinstance(e, KeyboardInterrupt):
        console.print_stopped("terminated (SIGTERM)" if isinstance(e, Terminated) else "interrupted")
        for note in notes:
            console.print_stopped(note)
        return int(interrupted_code(e))
    if isinstance(e, BrokenPipeError):
        # `distillctl status --output json | head`: the reader has what it wanted. (A command whose exit code is a
        # verdict, validate's and regress's, catches it itself and exits with the verdict.)
        return 0 if reader_gone() else None  # else a pipe to something else broke: not the reader going away
    if not isinstance(e, Exception):
        return None
    # Anything else is a bug: say so briefly unless debugging.
    if os.environ.get("DISTILLCTL_DEBUG"):
        traceback.print_exception(e)
    console.print_error(
        f"internal error: {type(e).__name__}: {e}",
        "this is a bug in distillctl; rerun with DISTILLCTL_DEBUG=1 for the traceback and report it",
    )
    return int(ExitCode.INTERNAL)


@contextlib.contextmanager
def printing_a_verdict() -> Iterator[None]:
    """Around the output of a command whose exit code is a verdict (validate's, regress's): a reader that goes away
    (`| head -1`) ends the printing, not the command, whose verdict stands (it was exit 0 under pipefail)."""
    try:
        yield
    except BrokenPipeError:
        if not reader_gone():
            raise


def reader_gone() -> bool:
    """After a BrokenPipeError: whether it was stdout's reader that went away; if so, stdout now writes to
    /dev/null, so the flush at exit raises nothing."""
    if not _stdout_closed():
        return False
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return True


def _stdout_closed() -> bool:
    """Whether stdout's reader has gone away (`distillctl logs RUN | head -1`). A write of nothing does not raise
    EPIPE on Linux, so the pipe is asked: its write end reports an error once no reader is left."""
    import select

    try:
        sys.stdout.flush()
    except BrokenPipeError:
        return True
    except (OSError, ValueError, AttributeError):
        return False
    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return any(events & select.POLLERR for _, events in poller.poll(0))
    except (OSError, ValueError, AttributeError):
        return False
