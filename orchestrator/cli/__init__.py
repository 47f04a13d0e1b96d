"""The `distillctl` command line: front end over the core. Each command parses its options, builds its context
once, calls one core function, prints what it returns and exits; errors become messages and exit codes in one
place (`boundary`).

Start-up stays fast: `main` imports and builds only the command being run (`distillctl plan` never inspects the
other seventeen commands' signatures nor imports their modules), and a plain `distillctl validate` command line
runs without Typer at all (`spec_validate`); command modules import only typer and `options` at import time, and
everything else (the core, rich, the backends) inside the command that runs. `app`, the whole command tree (help,
tests), is built on first use.
"""

from __future__ import annotations

import importlib
import os
import sys

# pydantic looks for third-party plugins (through every installed distribution's entry points) before it builds
# the first model: a third of `validate`'s start-up, for plugins that would only watch distillctl's own specs.
os.environ.setdefault("PYDANTIC_DISABLE_PLUGINS", "__all__")

# Command name → (module under orchestrator/cli, attribute): a function is a command, a Typer a command group.
# The order is the order of `distillctl --help`.
COMMANDS: dict[str, tuple[str, str]] = {
    "validate": ("spec", "validate"),
    "explain": ("spec", "explain"),
    "convert": ("spec", "convert"),
    "models": ("spec", "models"),
    "plan": ("sweep", "plan"),
    "render": ("sweep", "render"),
    "tpus": ("sweep", "tpus"),
    "sweep": ("launch", "sweep"),
    "status": ("launch", "status"),
    "logs": ("launch", "logs"),
    "cancel": ("launch", "cancel"),
    "results": ("results", "results_command"),
    "regress": ("results", "regress"),
    "golden": ("results", "golden_app"),
    "train": ("train", "train"),
    "export": ("export", "export"),
    "serve": ("serve", "serve"),
    "early-stop": ("early_stop", "early_stop_app"),
}


def build_app(names=COMMANDS):
    """The Typer application with the named commands registered (all of them by default)."""
    import typer

    from orchestrator.cli.app import new_app

    app = new_app()
    for name in names:
        module, attribute = COMMANDS[name]
        command = getattr(importlib.import_module(f"orchestrator.cli.{module}"), attribute)
        if isinstance(command, typer.Typer):
            app.add_typer(command, name=name)
        else:
            app.command(name)(command)
    return app


def __getattr__(name: str):
    if name == "app":
        app = build_app()
        globals()["app"] = app
        return app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _interrupt_again(unraisable, default=sys.unraisablehook) -> None:
    """Ctrl-C that lands in a garbage-collection callback (JAX has one; `export` meets it) cannot propagate:
    Python prints it as unraisable and the command carries on to the end. Interrupt the main thread again, from
    another thread a moment later, so that it lands once the callback is over."""
    if isinstance(unraisable.exc_value, KeyboardInterrupt):
        import _thread
        import threading

        again = threading.Timer(0.05, _thread.interrupt_main)  # later: the callback has returned by then
        again.daemon = True
        again.start()
        return
    default(unraisable)


def main() -> None:
    import signal

    from orchestrator.cli import boundary

    sys.unraisablehook = _interrupt_again
    signal.signal(signal.SIGTERM, boundary.raise_terminated)  # `serve` and the trainer install their own
    first = sys.argv[1] if len(sys.argv) > 1 else None
    if first == "validate":
        from orchestrator.cli import spec_validate

        arguments = spec_validate.fast_arguments(sys.argv[2:])
        if arguments is not None:  # a plain `validate` command line: no Typer (see `spec_validate`)
            raise SystemExit(_ended(spec_validate.run, arguments))
    if first == "sweep":
        from orchestrator.cli.launch import bare_dry_run

        sys.argv[2:] = bare_dry_run(sys.argv[2:])
    # Only a known command name in first place narrows the tree: `--help`, no arguments or a typo get the whole
    # tree, so usage and "No such command" read as they always did.
    stdout_before = _file_id(1)
    try:
        build_app([first] if first in COMMANDS else COMMANDS)()
    except SystemExit as e:
        if e.code == 1 and _asked_for_help(sys.argv[1:]) and _ended_for_a_broken_pipe(stdout_before):
            raise SystemExit(0) from None  # `distillctl --help | head -1`: the reader has what it wanted
        raise


def _file_id(file: int | str) -> tuple[int, int] | None:
    """(device, inode) of an open descriptor or a path; None when there is none."""
    import os

    try:
        found = os.stat(file)
    except OSError:
        return None
    return found.st_dev, found.st_ino


def _asked_for_help(arguments: list[str]) -> bool:
    """Whether the command line asks for help (`--help`, no arguments, a group alone): a usage error (an unknown
    option, a missing argument) whose reader went away ends the same way, and stays a failure."""
    if "--help" in arguments:
        return all(word in COMMANDS for word in arguments[:1] if not word.startswith("-"))
    return not arguments or (len(arguments) == 1 and COMMANDS.get(arguments[0], ("", ""))[1].endswith("_app"))


def _ended_for_a_broken_pipe(stdout_before: tuple[int, int] | None) -> bool:
    """Whether Typer's help (printed by rich) or click ended the process with 1 because stdout's reader went away:
    rich points stdout at /dev/null before it exits 1, click wraps it in its PacifyFlushWrapper; neither does so
    otherwise. A command's own exit 1 (`regress` found a regression) is not this."""
    import os

    from click.utils import PacifyFlushWrapper

    devnull = _file_id(os.devnull)
    pointed_away = stdout_before != devnull and _file_id(1) == devnull
    return pointed_away or isinstance(sys.stdout, PacifyFlushWrapper)


def _ended(command, *args) -> int:
    """`command(*args)`'s exit code, its exceptions ended by the one error boundary."""
    from orchestrator.cli import boundary

    try:
        return command(*args)
    except BaseException as e:
        code = boundary.exit_code(e)
        if code is None:
            raise
        return code
