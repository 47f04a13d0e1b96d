"""The `distillctl` command line: front end over the core. Each command parses its options, builds its context
once, calls one core function, prints what it returns and exits; errors become messages and exit codes in one
place (`app`).

Start-up stays fast: command modules import only typer and `options` at import time; everything else (the core,
rich, the backends) is imported by the command that runs.
"""

from __future__ import annotations

import os

# pydantic looks for third-party plugins (through every installed distribution's entry points) before it builds
# the first model: a third of `validate`'s start-up, for plugins that would only watch distillctl's own specs.
os.environ.setdefault("PYDANTIC_DISABLE_PLUGINS", "__all__")

from orchestrator.cli import early_stop, export, launch, results, serve, spec, sweep, train
from orchestrator.cli.app import app

app.command()(spec.validate)
app.command()(spec.explain)
app.command()(spec.convert)
app.command()(spec.models)
app.command()(sweep.plan)
app.command()(sweep.render)
app.command()(sweep.tpus)
app.command()(launch.sweep)
app.command()(launch.status)
app.command()(launch.logs)
app.command()(launch.cancel)
app.command("results")(results.results_command)
app.command()(results.regress)
app.add_typer(results.golden_app, name="golden")
app.command()(train.train)
app.command()(export.export)
app.command()(serve.serve)
app.add_typer(early_stop.early_stop_app, name="early-stop")


def main() -> None:
    app()
