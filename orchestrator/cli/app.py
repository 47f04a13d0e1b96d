"""The `distillctl` Typer application (`new_app`), whose commands end through the one error boundary
(`orchestrator.cli.boundary`): DistillctlError (and stray exceptions) to a message and an exit code."""

from __future__ import annotations

import inspect

import typer
from typer.core import TyperGroup

from orchestrator.cli import boundary
from orchestrator.exit_codes import epilog


def _joined(help_text: str) -> str:
    """A docstring's paragraphs with their source line breaks joined (Typer keeps them, and the terminal's own wrap
    then broke lines mid-sentence: "or two at / once"); paragraphs of list items or indented lines stay as written."""
    paragraphs = inspect.cleandoc(help_text).split("\n\n")
    return "\n\n".join(
        p if any(line.startswith((" ", "-", "*", "\b")) for line in p.splitlines()) else " ".join(p.split("\n"))
        for p in paragraphs
    )


class _Commands(TyperGroup):
    """Maps DistillctlError (and stray exceptions) to a message and an exit code, in one place (`boundary`)."""

    def get_command(self, ctx, name):
        command = super().get_command(ctx, name)
        if command is not None and command.help and not getattr(command, "_help_joined", False):
            command.help, command._help_joined = _joined(command.help), True
        return command

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except (typer.Exit, typer.Abort):
            raise
        except BaseException as e:
            if hasattr(e, "exit_code") and hasattr(e, "show"):
                raise  # the command line itself is wrong: Typer prints usage and exits 2
            code = boundary.exit_code(e)
            if code is None:
                raise
            raise typer.Exit(code) from None


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
    from orchestrator.cli import console

    console.new_command()
