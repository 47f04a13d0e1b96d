"""Synthetic sweeps and run outputs for the results, plots and regress tests.

The outputs follow the trainer's real format (`trainer/metrics_io.py`): one `metrics.jsonl` line per log step with
`{"sum", "count", "value"}` per metric accumulated since the previous line, and a `summary.json` with the
trainer's verdict. Values are made up but shaped like a tiny quickstart run: every curve decreases, distilled
points reach a lower `kl_div_T1` than the baseline, and a larger α end gives a lower KL.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import yaml

from distillspec.sweep import load_sweep
from orchestrator.core.expansion import Expansion, Point, expand

ROOT = Path(__file__).resolve().parent.parent
SWEEPS = ROOT / "sweeps"
STEPS = 40
LOG_EVERY = 10
TOKENS_PER_STEP = 512
START_TIME = 1_800_000_000.0


def sweep_data(output_base: str, **fields: Any) -> dict[str, Any]:
    """The quickstart sweep (same specs, prerequisite, axes and baseline) writing under `output_base`, at
    `STEPS` steps so schedules computed from the spec are short."""
    data: dict[str, Any] = {
        "name": "quickstart",
        "spec": str(SWEEPS / "tiny.yaml"),
        "overrides": {"teacher.load_parameters_path": "${prerequisites.teacher.output}/checkpoints", "steps": STEPS},
        "prerequisites": {"teacher": {"spec": str(SWEEPS / "tiny-teacher.yaml"), "overrides": {"steps": STEPS}}},
        "axes": {"loss.alpha.end": [0.3, 0.7]},
        "zip": [{"loss.beta.start": [1.0, 0.0], "loss.beta.end": [0.1, 0.0]}],
        "baseline": [{"loss.alpha": 0.0, "loss.beta": 0.0}],
        "target": {"kind": "local", "output_base": output_base},
    }
    data.update(fields)
    return data


def write_sweep(tmp_path: Path, name: str = "sweep.yaml", output_base: str | None = None, **fields: Any) -> Path:
    path = tmp_path / name
    base = output_base if output_base is not None else str(tmp_path / "runs")
    path.write_text(yaml.safe_dump(sweep_data(base, **fields), sort_keys=False))
    return path


def expanded(path: Path) -> Expansion:
    result = expand(load_sweep(path))
    assert result.ok, [p.message for p in result.problems]
    return result


def final_kl(point: Point) -> float:
    """The synthetic KL a point converges to: no distillation stays high; a larger α end goes lower; the feature
    loss costs a little."""
    if point.prerequisite is not None:
        return math.nan
    if point.is_baseline:
        return 0.13
    alpha_end = point.spec.loss.alpha.effective_end
    return 0.06 - 0.04 * alpha_end + (0.003 if point.spec.loss.feature_loss_on else 0.0) + 0.001 * point.seed


EVAL_EVERY = 20
EVAL_TOKENS = 3000.0
EVALUATED = ("distill/kl_div_T1", "distill/hard_loss", "distill/top1_agreement", "distill/teacher_loss")


def records(
    point: Point, *, steps: int = STEPS, kl_end: float | None = None, evaluate: bool = False
) -> list[dict[str, Any]]:
    """metrics.jsonl records of a point up to `steps`; with `evaluate`, every `EVAL_EVERY` steps also the eval/*
    metrics of a held-out set (a little worse than the training metrics, as held-out numbers are)."""
    kl_end = final_kl(point) if kl_end is None else kl_end
    out = []
    for step in range(LOG_EVERY, steps + 1, LOG_EVERY):
        progress = step / STEPS
        count = float(LOG_EVERY * TOKENS_PER_STEP)
        hard = 2.4 + 3.0 * math.exp(-5 * progress) + (0.15 if point.is_baseline else 0.0)
        values: dict[str, float] = {"distill/hard_loss": hard, "distill/total_loss": hard}
        if point.prerequisite is None:
            loss = point.spec.loss
            values.update(
                {
                    "distill/kl_div_T1": kl_end + 2.5 * math.exp(-6 * progress),
                    "distill/teacher_loss": 2.3,
                    "distill/top1_agreement": 0.9 - kl_end,
                    # as the trainer logs them: step k is the update with 0-based index k - 1
                    "distill/alpha": float(loss.alpha.at(step - 1, STEPS)),
                    "distill/beta_feature": float(loss.beta.at(step - 1, STEPS)),
                    "distill/temperature": float(loss.temperature.at(step - 1, STEPS)),
                }
            )
        metrics = {name: {"sum": v * count, "count": count, "value": v} for name, v in values.items()}
        if evaluate and step % EVAL_EVERY == 0:
            held_out = {"eval/" + n.split("/")[1]: values[n] + 0.05 for n in EVALUATED if n in values}
            metrics.update({k: {"sum": v * EVAL_TOKENS, "count": EVAL_TOKENS, "value": v} for k, v in held_out.items()})
        for perplexity, loss_name in (
            ("distill/student_perplexity", "distill/hard_loss"),
            ("distill/teacher_perplexity", "distill/teacher_loss"),
            ("eval/student_perplexity", "eval/hard_loss"),
        ):
            if loss_name in metrics:
                pair = metrics[loss_name]
                metrics[perplexity] = {**pair, "value": math.exp(pair["value"])}
        out.append(
            {
                "step": step,
                "time": START_TIME + step,
                "tokens": step * TOKENS_PER_STEP,
                "tokens_per_sec": 512.0,
                "step_time_sec": 1.0,
                "learning_rate": 1e-3,
                "metrics": metrics,
            }
        )
    return out


def summary(point: Point, status: str = "succeeded", step: int = STEPS) -> dict[str, Any]:
    return {
        "status": status,
        "exit_code": {"succeeded": 0, "failed": 1, "diverged": 65}.get(status),
        "step": step,
        "total_steps": point.spec.steps,
        "tokens": step * TOKENS_PER_STEP,
        "tokens_per_sec": 512.0,
        "wall_time_sec": 90.0,
        "compile_time_sec": 5.0,
        "final_metrics": {},
        "mode": point.spec.mode,
        "run_name": point.run_id,
        "message": "",
        "resumed_from_step": None,
    }


def write_outputs(
    point: Point,
    *,
    status: str | None = "succeeded",
    steps: int = STEPS,
    base: Path | None = None,
    kl_end: float | None = None,
    tail: str = "",
    evaluate: bool = False,
) -> Path:
    """A run directory as the trainer leaves it; `status=None` writes no summary.json; `tail` is appended to
    metrics.jsonl (a line cut off mid-write)."""
    run_dir = Path(point.output_path) if base is None else base / point.run_id
    run_dir.mkdir(parents=True, exist_ok=True)
    lines = "".join(json.dumps(r) + "\n" for r in records(point, steps=steps, kl_end=kl_end, evaluate=evaluate))
    (run_dir / "metrics.jsonl").write_text(lines + tail)
    if status is not None:
        (run_dir / "summary.json").write_text(json.dumps(summary(point, status, steps), indent=2))
    else:
        (run_dir / "summary.json").unlink(missing_ok=True)
    (run_dir / "spec.json").write_text(json.dumps(point.spec.model_dump(mode="json")))
    return run_dir


def finish_all(result: Expansion, **kw: Any) -> None:
    for run in result.runs:
        write_outputs(run, **kw)


def png_size(path: Path) -> tuple[int, int]:
    """(width, height) from a PNG's IHDR chunk."""
    data = path.read_bytes()[:24]
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
