"""The console side of a run: a progress bar (step, loss, kl_div_T1, tokens/s) on a terminal, one plain line per
log step otherwise (CI logs, containers), and the final status. Everything goes to stderr; only process 0 prints.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterator
from typing import Any, TextIO

from trainer.exit_codes import DESCRIPTIONS, TrainerExit


def _unless_gone(method):
    """Run a console method; a stream that went away (`| head`, a closed terminal or ssh session) silences the
    reporter instead of ending the run: training went to its last step, then died of BrokenPipe before its final
    checkpoint (exit 42)."""

    def guarded(self, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except (BrokenPipeError, ValueError) as e:  # ValueError: "I/O operation on closed file"
            if isinstance(e, ValueError) and "closed file" not in str(e):
                raise
            self.enabled, self._progress = False, None

    return guarded


def _fmt(value: float | None, spec: str = ".4f") -> str:
    return "-" if value is None else format(value, spec)


@contextlib.contextmanager
def console_logging(stream: TextIO | None = None) -> Iterator[None]:
    """While a run prints to the console: the trainer's own warnings (a long document split, another pass over the
    corpus...) as `warning: ...` lines on `stream`, once each (a library's `logging.basicConfig()` printed them as
    `WARNING:trainer.packing:...`). Undone on exit, so that a process running several things logs as before."""
    logger = logging.getLogger("trainer")
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(_LowerLevelFormatter("%(levelname)s: %(message)s"))
    propagate = logger.propagate
    logger.addHandler(handler)
    logger.propagate = False  # not again through the root logger's handler
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.propagate = propagate


class _LowerLevelFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        record = logging.makeLogRecord(record.__dict__)
        record.levelname = record.levelname.lower()
        return super().format(record)


class ConsoleReporter:
    def __init__(self, stream: TextIO | None = None, *, enabled: bool | None = None):
        """`enabled=None`: print on process 0 only (decided when the run starts, after joining the others)."""
        self.stream = stream or sys.stderr
        self.enabled = True if enabled is None else enabled
        self._decide = enabled is None
        self.tty = self.stream.isatty()
        self._progress = None
        self._task = None

    @_unless_gone
    def start(self, run_dir: str, start_step: int, total_steps: int) -> None:
        if self._decide:
            import jax

            self.enabled = jax.process_index() == 0
        if not self.enabled:
            return
        self.stream.write(f"training → {run_dir} (steps {start_step}..{total_steps})\n")
        if self.tty:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self._progress = Progress(
                TextColumn("step"),
                MofNCompleteColumn(),
                BarColumn(),
                TextColumn("{task.fields[info]}"),
                TimeRemainingColumn(),
                console=Console(file=self.stream),
                transient=False,
            )
            self._task = self._progress.add_task("train", total=total_steps, completed=start_step, info="compiling…")
            self._progress.start()

    @_unless_gone
    def log(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        m = record["metrics"]
        loss = m.get("distill/total_loss", {}).get("value")
        kl = m.get("distill/kl_div_T1", {}).get("value")
        info = f"loss {_fmt(loss)}" + (f"  kl_div_T1 {_fmt(kl)}" if kl is not None or "distill/kl_div_T1" in m else "")
        info += f"  {record['tokens_per_sec']:,.0f} tok/s"
        if self._progress is not None:
            self._progress.update(self._task, completed=record["step"], info=info)
        else:
            self.stream.write(f"step {record['step']}  {info}\n")
            self.stream.flush()

    @_unless_gone
    def note(self, message: str) -> None:
        if self.enabled:
            (self._progress.console.print if self._progress else lambda m: self.stream.write(m + "\n"))(message)

    @_unless_gone
    def end(self, status: str, exit_code: int, message: str) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
        if not self.enabled:
            return
        meaning = DESCRIPTIONS.get(TrainerExit(exit_code), "") if exit_code in iter(TrainerExit) else ""
        line = f"{status} (exit {exit_code}: {meaning})" + (f": {message}" if message else "")
        self.stream.write(line + "\n")
        self.stream.flush()
