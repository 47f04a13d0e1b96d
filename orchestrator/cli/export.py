"""`distillctl export RUN_DIR --to hf|maxtext -o DIR`: a run's trained student as a Hugging Face folder or a MaxText
checkpoint.

The trainer (JAX) is imported only when the command runs, so the rest of the CLI starts without it.
"""

from __future__ import annotations

from enum import Enum
from typing import Annotated

import typer


class ExportFormat(str, Enum):
    hf = "hf"
    maxtext = "maxtext"


class ExportDtype(str, Enum):
    float32 = "float32"
    bfloat16 = "bfloat16"


def export(
    run_dir: Annotated[str, typer.Argument(help="a run folder (<output_dir>/<name>: spec.json and checkpoints/)")],
    out: Annotated[str, typer.Option("--output-dir", "-o", help="the folder to write (new or empty; local or gs://)")],
    to: Annotated[
        ExportFormat,
        typer.Option(
            "--to",
            help="hf: a Hugging Face folder transformers loads; maxtext: a MaxText Orbax checkpoint (DIR/0/items)",
        ),
    ] = (ExportFormat.hf),
    dtype: Annotated[
        ExportDtype | None, typer.Option("--dtype", help="tensor dtype (default: the student's weight_dtype)")
    ] = None,
) -> None:
    """Write the student of a run (its latest checkpoint) as a Hugging Face folder (config.json, model.safetensors
    and the run's tokenizer files) or a MaxText checkpoint (DIR/0/items, load_parameters_path: DIR/0/items). Bad input (not a run folder, no checkpoint, an output folder that exists and is
    not empty or cannot be written) exits 2 with nothing written."""
    from orchestrator.cli import console
    from orchestrator.errors import UsageError
    from orchestrator.outputs import BucketMissing, OutputStoreError, check_store

    # file:// names a local folder (the run's checkpoints are read through a library that takes no file:// URL).
    run_dir, out = (path[len("file://") :] if path.startswith("file://") else path for path in (run_dir, out))
    for path in (run_dir, out):
        try:  # a store that does not answer, said within seconds (it was ~50 s, a traceback, then "not writable")
            check_store(path)
        except BucketMissing:
            pass  # the export's own checks say what is missing
        except OutputStoreError as e:  # its words are the results' ("the runs' outputs are not read as absent")
            e.message = e.message.replace("cannot read", "cannot write", 1) if path == out else e.message
            e.hint = e.hint.split(";")[0]
            raise
    from trainer.exit_codes import TrainerError
    from trainer.export import export_run

    try:
        exported = export_run(run_dir, out, to=to.value, dtype=dtype.value if dtype else None)
    except TrainerError as e:
        # The trainer's words for its own output folder (`output_dir`, a spec key) name -o here.
        raise UsageError(e.message, e.hint.replace("another output_dir", "another output folder (-o)")) from None
    for note in exported.notes:
        console.err.print(f"note: {note}", markup=False)
    console.out.print(f"exported {exported.params_dir} to {out} ({to.value})", markup=False)
