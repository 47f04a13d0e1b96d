"""The `distillctl` Typer application (`new_app`) and its one error boundary: DistillctlError (and stray exceptions) to a
message and an exit code."""

from __future__ import annotations

import os
import sys
import traceback

import typer
from typer.core import TyperGroup

from orchestrator.errors import DistillctlError, InvalidSpecError
from orchestrator.exit_codes import ExitCode, epilog


class _Commands(TyperGroup):
    """Maps DistillctlError (and stray exceptions) to a message and an exit code, in one place."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except DistillctlError as e:
            from orchestrator.cli import console

            if isinstance(e, InvalidSpecError):
                for problem in e.problems:
                    console.print_problem(problem)
            console.print_error(e.message, e.hint)
            raise typer.Exit(int(e.exit_code)) from None
        except KeyboardInterrupt:
            from orchestrator.cli import console

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
            from orchestrator.cli import console

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


def new_app() -> typer.Typer:
    """An application with no commands yet (`orchestrator.cli.build_app` registers them)."""
    app = typer.Typer(
        cls=_Commands,
        help="Validate, sweep, launch and compare knowledge-distillation runs on TPU pods.",
        epilog=epilog(),
        no_args_is_help=True,
        add_completion=False,
        pretty_exceptions_enable=False,
    )
    # With a callback the application stays a group even when `main` registers a single command: Typer would
    # otherwise run a lone command directly and read its name as an argument.
    app.callback()(_no_options)
    return app


def _no_options() -> None:
    pass
