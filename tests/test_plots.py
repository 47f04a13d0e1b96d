"""`distillctl results --plot`: the PNGs are written, non-empty and of the intended size; curves are built from the
logs (schedules from the spec when not logged); coinciding curves are striped, not hidden."""

from __future__ import annotations

import json
import math

import pytest
from results_support import STEPS, expanded, finish_all, png_size, write_outputs, write_sweep
from typer.testing import CliRunner

from orchestrator.cli import app, plots
from orchestrator.core import results
from orchestrator.exit_codes import ExitCode
from orchestrator.outputs import read_run_outputs

runner = CliRunner()


def build(result):
    outputs = {run.run_id: read_run_outputs(run.output_path) for run in result.runs}
    statuses = results.statuses_from_outputs(result.runs, outputs, now=2e9)
    table = results.build(result, outputs, statuses)
    return table, {k: v.log for k, v in outputs.items()}, {r.run_id: r.spec for r in result.runs}


def test_plots_are_written_non_empty_with_their_sizes(tmp_path):
    result = expanded(write_sweep(tmp_path))
    finish_all(result)
    out = runner.invoke(app, ["results", str(tmp_path / "sweep.yaml"), "--plot", str(tmp_path / "plots")])
    assert out.exit_code == ExitCode.OK, out.output
    written = sorted(p.name for p in (tmp_path / "plots").iterdir())
    assert written == ["hard_loss.png", "kl_div_T1.png", "schedules.png"]
    for name in written:
        path = tmp_path / "plots" / name
        assert path.stat().st_size > 20_000, f"{name} looks empty"  # a blank 1500×1000 PNG is ~5 kB
        assert f"wrote {path}" in out.stderr
    assert png_size(tmp_path / "plots" / "kl_div_T1.png") == (1950, 1020)  # 13 × 6.8 in at 150 dpi
    assert png_size(tmp_path / "plots" / "hard_loss.png") == (1950, 1020)
    assert png_size(tmp_path / "plots" / "schedules.png") == (2100, 930)  # 14 × 6.2 in
    # written again over its own plots: fine
    again = runner.invoke(app, ["results", str(tmp_path / "sweep.yaml"), "--plot", str(tmp_path / "plots")])
    assert again.exit_code == ExitCode.OK, again.output


def test_plots_never_replace_a_users_file_or_an_input_through_a_link(tmp_path):
    # A user's kl_div_T1.png (notes) was replaced, and a hard_loss.png linking to the sweep file made it a PNG;
    # `--plot ""` (an unset shell variable) wrote into the current directory.
    result = expanded(write_sweep(tmp_path))
    finish_all(result)
    sweep = tmp_path / "sweep.yaml"
    kept = sweep.read_text()
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "kl_div_T1.png").write_text("my notes")
    theirs = tmp_path / "theirs"  # a figure of the user's own, made with Matplotlib too
    theirs.mkdir()
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    Figure(figsize=(4, 3)).savefig(theirs / "hard_loss.png", format="png")
    kept_png = (theirs / "hard_loss.png").read_bytes()
    linked = tmp_path / "linked"
    linked.mkdir()
    (linked / "hard_loss.png").symlink_to(sweep)
    # a folder of a plot's name, and a dangling link as the folder: the table was printed, then exit 2
    held = tmp_path / "held"
    (held / "schedules.png").mkdir(parents=True)
    dangling = tmp_path / "dangling"
    dangling.symlink_to(tmp_path / "nowhere")
    for folder, said in (
        (held, "schedules.png is a folder: a plot cannot be written there"),
        (dangling, "a link to " + str(tmp_path / "nowhere") + ", which does not exist"),
        (mine, "kl_div_T1.png exists and is not a plot distillctl wrote"),
        (theirs, "hard_loss.png exists and is not a plot distillctl wrote"),
        (linked, "is the sweep file: writing it would replace it"),
        ("", "--plot is blank"),
    ):
        out = runner.invoke(app, ["results", str(sweep), "--plot", str(folder)])
        assert out.exit_code == ExitCode.USAGE and said in " ".join(out.stderr.split()), out.output
        assert out.stdout == ""
    assert (mine / "kl_div_T1.png").read_text() == "my notes" and sweep.read_text() == kept
    assert sorted(p.name for p in held.iterdir()) == ["schedules.png"] and not dangling.exists()
    assert (theirs / "hard_loss.png").read_bytes() == kept_png


def test_metric_curves_have_one_labelled_line_per_point(tmp_path):
    result = expanded(write_sweep(tmp_path))
    finish_all(result)
    table, logs, _ = build(result)
    curves = plots.metric_curves(table, logs, results.KL_T1)
    assert len(curves) == 5  # the points and the baseline; the prerequisite teacher has no KL
    assert curves[0].label == "0: alpha.end=0.3, beta.start=1.0, beta.end=0.1"
    assert curves[3].label.startswith("★ 3: ") and curves[4].label == "4b: baseline (alpha=0.0, beta=0.0)"
    assert curves[4].role == "baseline" and plots._styles(curves)[curves[4].key]["color"] == "black"
    assert curves[0].steps == (10, 20, 30, 40) and curves[0].values[0] > curves[0].values[-1]
    reference = plots.reference_curve(table, logs)
    assert reference is not None and reference.values == pytest.approx([2.3] * 4)
    # a diverged point's curve says so in the legend (its last values are no result)
    write_outputs(result.points[1], status="diverged", steps=30)
    table, logs, _ = build(result)
    labels = [c.label for c in plots.metric_curves(table, logs, results.KL_T1)]
    assert labels[1].endswith("[diverged]") and not labels[0].endswith("]"), labels


def test_schedules_come_from_the_logs_or_else_the_spec(tmp_path):
    result = expanded(write_sweep(tmp_path))
    finish_all(result)
    unlogged = result.points[0]
    path = tmp_path / "runs" / unlogged.run_id / "metrics.jsonl"
    path.write_text("")  # nothing logged yet: α, β, T are computed from the spec
    table, logs, specs = build(result)
    curves = plots.schedule_curves(table, logs, specs)
    alpha = {c.key: c for c in curves["alpha"]}
    computed = alpha[unlogged.run_id]
    assert computed.steps[0] == 0 and computed.steps[-1] == STEPS
    # cosine 0.9 → 0.3; the last step is the update with 0-based index STEPS - 1, as the trainer computes it
    last = 0.3 + 0.6 * 0.5 * (1 + math.cos(math.pi * (STEPS - 1) / STEPS))
    assert computed.values[0] == pytest.approx(0.9) and computed.values[-1] == pytest.approx(last)
    logged = alpha[result.points[1].run_id]
    assert logged.steps == (10, 20, 30, 40) and logged.values[-1] == pytest.approx(last)
    baseline = alpha[result.points[-1].run_id]
    assert set(baseline.values) == {0.0}


def test_coinciding_curves_are_grouped_to_be_striped(tmp_path):
    result = expanded(write_sweep(tmp_path))
    finish_all(result)
    table, logs, specs = build(result)
    curves = plots.schedule_curves(table, logs, specs)
    groups = [[c.label.split(":")[0] for c in g] for g in plots.coinciding(curves["alpha"])]
    assert groups == [["0", "1"], ["2", "★ 3"], ["4b"]]  # points sharing an α end share one striped line
    assert len(plots.coinciding(curves["temperature"])) == 1  # every point has the same T schedule


def test_plots_of_a_sweep_that_has_not_started(tmp_path):
    result = expanded(write_sweep(tmp_path))
    table, logs, specs = build(result)
    written = plots.write_plots(table, logs, specs, tmp_path / "empty")
    assert [p.name for p in written] == ["kl_div_T1.png", "hard_loss.png", "schedules.png"]
    assert all(p.stat().st_size > 5_000 for p in written)  # the axes, and "no point has logged this metric yet"


def test_unwritable_plot_folder_is_a_usage_error(tmp_path):
    result = expanded(write_sweep(tmp_path))
    write_outputs(result.points[0])
    blocker = tmp_path / "file"
    blocker.write_text(json.dumps({}))
    for folder in (blocker / "plots", blocker):  # the OS said "Not a directory" and "File exists"
        out = runner.invoke(app, ["results", str(tmp_path / "sweep.yaml"), "--plot", str(folder)])
        assert out.exit_code == ExitCode.USAGE and f"{blocker} is a file, not a folder" in out.stderr, out.stderr
        assert out.stdout == ""  # refused before the table: a script gets no table with exit 2
    assert blocker.read_text() == "{}"
    # Into a run folder (as regress --junit and golden -o refuse): figures among the outputs the command reads.
    inside = tmp_path / "runs" / result.points[0].run_id / "plots"
    out = runner.invoke(app, ["results", str(tmp_path / "sweep.yaml"), "--plot", str(inside)])
    assert out.exit_code == ExitCode.USAGE and "a run folder whose outputs this command reads" in out.stderr
    assert not inside.exists() and out.stdout == ""


def test_points_with_an_eval_set_are_drawn_from_their_evaluations(tmp_path):
    result = expanded(write_sweep(tmp_path))
    for run in result.runs:
        write_outputs(run, evaluate=True)
    table, logs, _ = build(result)
    curves = plots.metric_curves(table, logs, results.KL_T1)
    assert curves[0].steps == (20, 40)  # one value per evaluation, not per logging interval
    assert plots.source_note(table).startswith("each value: one evaluation of the held-out set")
    reference = plots.reference_curve(table, logs)
    assert reference.label == "teacher's cross-entropy on the held-out set"
    assert reference.values == pytest.approx([2.35, 2.35])

    write_outputs(result.runs[-1])  # the baseline without one: the legend says which is which
    table, logs, _ = build(result)
    curves = plots.metric_curves(table, logs, results.KL_T1)
    assert curves[0].label.endswith("[eval]") and curves[-1].label.endswith("[train]")
    assert curves[-1].steps == (10, 20, 30, 40)
    assert plots.source_note(table).startswith("[eval]: each value: one evaluation")


def test_a_run_that_logged_once_is_drawn_as_a_marker(tmp_path):
    # A run that diverged after its first log line was in the legend but drew nothing (a line needs two points).
    import dataclasses

    result = expanded(write_sweep(tmp_path))
    finish_all(result)
    table, logs, _ = build(result)
    curves = plots.metric_curves(table, logs, results.KL_T1)
    short = dataclasses.replace(curves[0], steps=curves[0].steps[:1], values=curves[0].values[:1])
    figure = plots.metric_figure("s", results.KL_T1, [short, *curves[1:]], None, "")
    lines = [line for axes in figure.axes for line in axes.get_lines()]
    single = [line for line in lines if len(line.get_xdata()) == 1]
    assert single and all(line.get_marker() == "o" for line in single)
    assert all(line.get_marker() in ("None", None, "") for line in lines if len(line.get_xdata()) > 1)


def test_baselines_are_told_apart_and_runs_without_values_are_named(tmp_path):
    # Two seeds' baselines were drawn in the same black dashes; a failed point vanished from the figure unsaid;
    # a note about training values stood over a figure of evaluations only (and ran into the next panel).
    result = expanded(write_sweep(tmp_path, seeds=[0, 1]))
    for run in result.runs:
        write_outputs(run, evaluate=True)
    failed = result.points[1]
    write_outputs(failed, status="failed", steps=0)
    (tmp_path / "runs" / failed.run_id / "metrics.jsonl").write_text("")
    table, logs, _ = build(result)
    curves = plots.metric_curves(table, logs, results.KL_T1)
    styles = plots._styles([c for c in curves if c.steps])
    baselines = [styles[c.key]["linestyle"] for c in curves if c.role == "baseline"]
    assert len(baselines) == 2 and baselines[0] != baselines[1]
    assert plots.source_note(table, logs).startswith("each value: one evaluation")  # no "[train]" for the empty one
    figure = plots.metric_figure("s", results.KL_T1, curves, None, "")
    legend_title = figure.legends[0].get_title().get_text()
    name = next(r.name for r in table.rows if r.run_id == failed.run_id)
    assert f"no values: {name} (Failed" in legend_title, legend_title


def test_an_empty_figure_names_the_runs_and_one_logged_step_zooms_without_a_warning(tmp_path):
    """A figure with no values said only "no point has logged this metric yet", not which runs stand where (the
    README says they are named); runs that all logged one step printed matplotlib's singular-limits warning."""
    import warnings

    result = expanded(write_sweep(tmp_path))
    table, logs, _ = build(result)
    curves = plots.metric_curves(table, logs, results.KL_T1)
    figure = plots.metric_figure("s", results.KL_T1, curves, None, "")
    said = " ".join(t.get_text() for axes in figure.axes for t in axes.texts)
    assert "no point has logged this metric yet" in said and "no values: 0 (Pending" in said, said

    for run in result.runs:
        write_outputs(run, steps=10)  # one record each
    table, logs, _ = build(result)
    curves = plots.metric_curves(table, logs, results.KL_T1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        plots.metric_figure("s", results.KL_T1, curves, None, "")


def test_an_offline_points_curves_follow_its_table_cells_and_say_what_its_kl_is_over(tmp_path):
    # An offline student's evaluation holds its hard loss, not its KL (no teacher at eval): its hard-loss curve was
    # drawn from training (0.18 nats above the table's eval value), and its top-k + tail KL shared the axis with
    # whole-vocabulary ones, unmarked.
    from results_support import sweep_data

    overrides = {**sweep_data("unused")["overrides"], "loss.beta": 0.0}
    offline = {"offline_data_dir": [None, str(tmp_path / "cache")], "top_k": [None, 16]}
    result = expanded(write_sweep(tmp_path, overrides=overrides, axes={"loss.alpha.end": [0.7]}, zip=[offline]))
    online_point, offline_point = [p for p in result.points if p.role == "point"]
    for run in result.runs:
        run_dir = write_outputs(run, evaluate=True)
        if run is offline_point:
            lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
            for record in lines:
                for name in ("eval/kl_div_T1", "eval/top1_agreement", "eval/teacher_loss"):
                    record["metrics"].pop(name, None)
            (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    table, logs, _ = build(result)
    hard = {c.key: c for c in plots.metric_curves(table, logs, results.HARD_LOSS)}
    assert hard[offline_point.run_id].steps == (20, 40)  # its evaluations, as the table's cell
    assert not hard[offline_point.run_id].label.endswith("]")  # every point's hard loss is its evaluation's
    assert plots.source_note(table, logs, results.HARD_LOSS).startswith("each value: one evaluation")
    kl = {c.key: c for c in plots.metric_curves(table, logs, results.KL_T1)}
    assert kl[offline_point.run_id].steps == (10, 20, 30, 40)  # training's: its evaluation has no KL
    assert kl[offline_point.run_id].label.endswith("[train] [KL over top-16+tail]"), kl[offline_point.run_id].label
    assert kl[online_point.run_id].label.endswith("[eval] [KL over vocabulary]")
    assert plots.source_note(table, logs, results.KL_T1).startswith("[eval]: each value: one evaluation")
