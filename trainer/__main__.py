"""`python -m trainer`: the container entry point.

    python -m trainer --spec FILE                  # a spec file (YAML/JSON, distillctl or MaxText layout)
    DISTILLCTL_SPEC='{"student": ...}' python -m trainer   # the resolved spec as JSON (what the JobSet sets)

Multi-host off TPU: `--coordinator-address HOST:PORT --num-processes N --process-id I` on every process (on TPU,
`jax.distributed.initialize()` finds its peers itself). The spec is validated with the same model and checks as
`distillctl validate`; an invalid one exits 1 with one problem per line on stderr. Exit codes: see
`trainer.exit_codes` (0 done, 1 user error, 42 retryable, 65 diverged, 70 bug, 143 SIGTERM).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys

from distillspec.contract import ENV_SPEC
from distillspec.problems import Problem
from trainer.exit_codes import DESCRIPTIONS, TrainerExit

SPEC_ENV = ENV_SPEC


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m trainer",
        description="Run one distillation (or pretrain) spec.",
        epilog="exit codes: " + "; ".join(f"{int(c)} {d}" for c, d in DESCRIPTIONS.items()),
    )
    parser.add_argument("--spec", help=f"spec file; default: the JSON in ${SPEC_ENV}")
    parser.add_argument("--output-dir", help="override the spec's output_dir")
    parser.add_argument("--steps", type=int, help="override the spec's steps")
    parser.add_argument("--coordinator-address", help="host:port of process 0's coordinator (multi-process off TPU)")
    parser.add_argument("--num-processes", type=int)
    parser.add_argument("--process-id", type=int)
    return parser.parse_args(argv)


def load_spec(args: argparse.Namespace):
    """`(spec, problems)` from --spec or $DISTILLCTL_SPEC, overrides applied."""
    from distillspec.specfile import read_spec_file, validate_data
    from trainer.train import with_overrides

    if args.spec:
        report = read_spec_file(args.spec)
        spec, problems = report.spec, list(report.problems)
    elif os.environ.get(SPEC_ENV):
        try:
            data = json.loads(os.environ[SPEC_ENV])
        except json.JSONDecodeError as e:
            return None, [Problem((), "bad_json", f"${SPEC_ENV} is not valid JSON: {e}")]
        if not isinstance(data, dict):
            return None, [Problem((), "not_a_mapping", f"${SPEC_ENV} must hold a JSON object")]
        spec, problems = validate_data(data)
    else:
        return None, [Problem((), "no_spec", f"no spec: pass --spec FILE or set ${SPEC_ENV} to the spec's JSON")]
    if spec is None:
        return None, problems
    spec, more = with_overrides(spec, output_dir=args.output_dir, steps=args.steps)
    return spec, problems + list(more)


def _without_traceback(record: logging.LogRecord) -> bool:
    record.exc_info, record.exc_text = None, None
    return True


def main(argv: list[str] | None = None) -> int:
    # gcsfs logs every request it gives up on with the whole traceback (50 lines of aiohttp); the trainer's verdict
    # names the error, and gcsfs's one-line message stays.
    logging.getLogger("gcsfs").addFilter(_without_traceback)
    args = parse_args(argv)
    spec, problems = load_spec(args)
    for p in problems:
        print(str(p), file=sys.stderr)
    if spec is None:
        print("error: invalid spec; nothing was trained", file=sys.stderr)
        return int(TrainerExit.USER_ERROR)
    from trainer.progress import ConsoleReporter, console_logging
    from trainer.train import ProcessOptions, run

    process = ProcessOptions(args.coordinator_address, args.num_processes, args.process_id)
    with console_logging():
        return int(run(spec, process=process, reporter=ConsoleReporter()))


def exit_now(code: int) -> None:
    """End the process with `code` once its verdict is written, without waiting for threads that may never end.

    After a failure, orbax's save threads (or JAX's, waiting for peers that are gone) can block interpreter exit
    for minutes; the verdict (summary.json, the failure file, the console line) is already out, so flush and go.
    A run that succeeded or was stopped by SIGTERM exits normally, which lets `jax.distributed` shut down
    together with its peers."""
    if code in (TrainerExit.OK, TrainerExit.PREEMPTED):
        sys.exit(code)
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    exit_now(main())
