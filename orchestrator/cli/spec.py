"""`distillctl validate`, `explain`, `convert` and `models`: commands on one spec file (no sweep, no cluster)."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from orchestrator.cli.options import OutputFormat, OutputOption


def validate(
    files: Annotated[list[Path], typer.Argument(help="spec files: distillctl's layout or a MaxText distillation.yml")],
    output: OutputOption = OutputFormat.text,
    strict: Annotated[bool, typer.Option(help="treat warnings as errors")] = False,
    check_paths: Annotated[
        bool,
        typer.Option(
            "--check-paths",
            help="also read each load_parameters_path's config (local or gs://, never its tensors) and compare "
            "it with the spec's model",
        ),
    ] = False,
) -> None:
    """Check specs for every known mistake before anything is launched."""
    from orchestrator.cli.spec_validate import Arguments, run

    code = run(Arguments(tuple(files), output.value, strict, check_paths))
    if code:
        raise typer.Exit(code)


def explain(
    file: Annotated[Path, typer.Argument(help="a spec file")],
    output: OutputOption = OutputFormat.text,
) -> None:
    """Show the fully resolved spec: defaults, model shapes, layer indices and the α/β/T schedules."""
    from rich.table import Table
    from rich.text import Text

    from orchestrator.cli import console
    from orchestrator.core.explain import explain as explain_spec
    from orchestrator.core.specs import load_valid_spec

    report = load_valid_spec(file)
    view = explain_spec(report.spec)
    if output is OutputFormat.json:
        console.print_json(view)
        return
    for problem in report.problems:
        console.print_problem(problem)
    console.out.print(Text(f"# {file}: resolved spec", style="bold"))
    console.out.print(console.to_yaml(view["spec"]).rstrip(), markup=False)
    models = Table(title="models", title_justify="left")
    for column in ("side", "model", "layers", "parameters", "rope θ", "scaling", "tied"):
        models.add_column(column)
    for side, info in view["models"].items():
        models.add_row(
            side,
            info["model"],
            str(info["num_layers"]),
            console.parameter_count(info["parameters"]),
            *_constant_cells(info["constants"]),
        )
    console.out.print(models)
    if view["feature_loss"]:
        console.out.print(f"feature-loss layer indices: {view['layer_indices']}", markup=False)
        if view["teacher_layer_indices"] != view["layer_indices"]:
            console.out.print(
                f"  the teacher's layers they began as (drop_layers): {view['teacher_layer_indices']}", markup=False
            )
    else:
        console.out.print("feature loss: off (β = 0: no activations are extracted)")
    if view["schedules"]:
        points = next(iter(view["schedules"].values()))["values"]
        table = Table(title="schedules: value at % of steps", title_justify="left")
        table.add_column("", no_wrap=True)
        table.add_column("schedule")
        for point in points:
            table.add_column(f"{point['progress']:.0%}", justify="right")
        table.add_row("step", "", *(str(p["step"]) for p in points), style="dim")
        for name, info in view["schedules"].items():
            table.add_row(name, info["schedule"], *(f"{v['value']:.4g}" for v in info["values"]))
        console.out.print(table)


class SpecLayout(str, Enum):
    native = "native"
    maxtext = "maxtext"


def convert(
    file: Annotated[Path, typer.Argument(help="a spec file in either layout")],
    to: Annotated[SpecLayout, typer.Option("--to", help="the layout to write")] = SpecLayout.native,
) -> None:
    """Print a spec in distillctl's layout or as a MaxText distillation.yml (to stdout)."""
    from distillspec import maxtext_format
    from orchestrator.cli import console
    from orchestrator.core.specs import load_valid_spec
    from orchestrator.errors import UsageError

    report = load_valid_spec(file)
    spec = report.spec
    native = spec.model_dump(mode="json", exclude_defaults=to is SpecLayout.native)
    if to is SpecLayout.maxtext:
        native["loss"]["layer_indices"] = spec.layer_indices() if spec.loss.feature_loss_on else spec.loss.layer_indices
        try:
            native = maxtext_format.to_maxtext(native)
        except maxtext_format.NotRepresentable as e:
            raise UsageError(str(e), "keep this spec in distillctl's layout") from None
        _warn_dropped(spec, native, report.locate or (lambda problem: problem))
    else:
        from distillspec.config import integral

        batch = native.get("batch") or {}
        if "per_device_batch_size" in batch:  # 8, as written (it read 8.0)
            batch["per_device_batch_size"] = integral(batch["per_device_batch_size"])
    console.out.print(console.to_yaml(native).rstrip(), markup=False)


# Settings MaxText has a key for that the file still leaves out, and why (it said MaxText had no key for data.seed)
_DROPPED_WHY = {
    "data.seed": "data.seed changes nothing in a MaxText file: the trainer shuffles these files only in a "
    "data.shuffle_window, which MaxText's layout has no key for",
}


def _warn_dropped(spec, flat: dict, locate) -> None:
    """On stderr: each setting of `spec` that its MaxText form `flat` loses (read back, it trains otherwise), at its
    line in the spec's file (`locate`), in its words (a MaxText file's)."""
    from distillspec import maxtext_format
    from distillspec.problems import Problem
    from distillspec.specfile import validate_data
    from orchestrator.cli import console

    def say(problem: Problem) -> None:
        console.print_problem(locate(problem))

    back, _ = validate_data(maxtext_format.from_maxtext(flat).data)
    if back is None:
        return
    mine, theirs = (s.model_dump(mode="json", exclude={"name"}) for s in (spec, back))
    if spec.loss.feature_loss_on and spec.layer_indices() == back.layer_indices():
        mine["loss"]["layer_indices"] = theirs["loss"]["layer_indices"]  # a preset, written as the layers it names
    for setting in maxtext_format.dropped_settings(mine, theirs):
        say(
            Problem(
                tuple(setting.split(".")),
                "not_in_maxtext",
                _DROPPED_WHY.get(setting, f"MaxText's distillation config has no key for {setting}")
                + ": the file leaves it out",
                "keep this spec in distillctl's layout to keep it",
                severity="warning",
            )
        )
    for side in ("student", "teacher"):
        block = getattr(spec, side)
        if block is not None and block.model in maxtext_format.NO_MAXTEXT_CONFIG:
            say(
                Problem(
                    (side, "model"),
                    "not_in_maxtext",
                    f"MaxText has no model config named {block.model!r}: given this file, it would not build that "
                    "model",
                    "use the file with distillctl (its registry has the model), or give MaxText a model config of "
                    "that name",
                    severity="warning",
                )
            )
    if spec.data.source in ("text", "tokens", "hf_disk", "arrayrecord"):  # MaxText's: synthetic, hf, grain, tfds
        # (MaxText's grain reads ArrayRecord files of tf.Example protos; the trainer's hold JSON records)
        kind = "JSON ArrayRecord" if spec.data.source == "arrayrecord" else spec.data.source
        say(
            Problem(
                ("data", "source"),
                "not_in_maxtext",
                f"MaxText has no dataset_type for {kind} data: the file's dataset_type "
                f"{spec.data.source!r} is distillctl's alone",
                "use jsonl or parquet files to give the file to MaxText (dataset_type hf, hf_path json or parquet)",
                severity="warning",
            )
        )
    tokenizer = spec.data.tokenizer
    if spec.data.source != "synthetic" and tokenizer in (None, "byte"):
        # MaxText loads a tokenizer_path of its own kinds; distillctl's byte one and its default have no key there
        say(
            Problem(
                ("data", "tokenizer"),
                "not_in_maxtext",
                "MaxText has no byte tokenizer: the file's tokenizer_path 'byte' is distillctl's alone"
                if tokenizer == "byte"
                else "data.tokenizer is unset (the teacher folder's tokenizer.json): MaxText needs a tokenizer_path, "
                "and the file has none",
                "set data.tokenizer to the tokenizer.json the models were trained with",
                severity="warning",
            )
        )
    if spec.loss.feature_loss_on and spec.teacher_layer_indices() != back.teacher_layer_indices():
        # a preset that spreads the student's layers over a deeper teacher: the file pairs layer i with layer i
        say(
            Problem(
                ("loss", "layer_indices"),
                "not_in_maxtext",
                f"the teacher's layers {spec.teacher_layer_indices()} cannot be written: MaxText takes "
                f"distill_layer_indices of both models, so the file matches teacher layers "
                f"{back.teacher_layer_indices()}",
                "keep this spec in distillctl's layout to keep them, or choose layers that are the same in both",
                severity="warning",
            )
        )


def models(output: OutputOption = OutputFormat.text) -> None:
    """List the models distillctl knows, with their shapes."""
    from rich.table import Table

    from distillspec.registry import BLOCK_FIELDS, CONSTANT_FIELDS, MODELS, constant_in_spec_terms
    from orchestrator.cli import console

    fields = [f for f in BLOCK_FIELDS if f != "global_layers"]  # the shape fields a model block can set
    rows = [
        {
            "name": name,
            "family": s.family,
            "parameters": s.param_count(),
            **{k: getattr(s, k) for k in fields},
            # the constants a block may restate for a checkpoint whose own differ (`none`: no scaling, no cap)
            **{k: constant_in_spec_terms(k, getattr(s, k)) for k in CONSTANT_FIELDS},
        }
        for name, s in MODELS.items()
    ]
    if output is OutputFormat.json:
        console.print_json(rows)
        return
    # Gemma 2 is counted in MaxText's blocks of two layers (one sliding-window, one global): what num_layers,
    # layer_indices and drop_layers count; its config.json's num_hidden_layers is twice that.
    table = Table(
        caption="layers: what num_layers, layer_indices and drop_layers count (Gemma 2: blocks of two layers)",
        caption_justify="left",
    )
    columns = (
        "name",
        "params",
        "layers",
        "emb",
        "heads",
        "kv",
        "head_dim",
        "mlp",
        "vocab",
        "rope θ",
        "scaling",
        "tied",
    )
    for column in columns:
        table.add_column(column, justify="left" if column in ("name", "scaling") else "right")
    for r in rows:
        table.add_row(
            r["name"],
            console.parameter_count(r["parameters"]),
            *(str(r[k]) for k in fields),
            *_constant_cells(r),
        )
    console.print_wide(table)  # names are what a spec copies: never cut to `llama3.1…`


def _constant_cells(constants: dict) -> tuple[str, str, str]:
    """The RoPE base, scaling and tying of a model's constants (in a block's terms) as table cells."""
    scaling = constants["rope_scaling"]
    return (
        f"{constants['rope_theta']:g}",
        scaling if isinstance(scaling, str) else f"{scaling['type']} ×{scaling['factor']:g}",
        "yes" if constants["tie_embeddings"] else "no",
    )
