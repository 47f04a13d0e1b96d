"""`distillctl plan`, `render` and `tpus` as a user runs them: output, files, exit codes, never a traceback."""

from __future__ import annotations

import json
import shutil

import pytest
import yaml
from sweep_support import EXAMPLE_SWEEPS, SWEEPS, TARGET, sweep_data, write
from typer.testing import CliRunner

from orchestrator.cli import app
from orchestrator.exit_codes import ExitCode

runner = CliRunner()


def invoke(*args: str):
    result = runner.invoke(app, list(args))
    assert "Traceback" not in result.output
    return result


def test_plan_lists_every_point_with_its_id_shape_and_memory():
    result = invoke("plan", str(SWEEPS / "alpha-end.yaml"))
    assert result.exit_code == ExitCode.OK, result.output
    assert "chip-hours in all" in result.stdout and "GB/chip" in result.stdout
    # TPU7x: the estimate is per TensorCore (a JAX device, half the chip's HBM), and says so
    assert "GB/device" in invoke("plan", str(SWEEPS / "alpha-end.yaml"), "--tpu-type", "tpu7x-128").stdout
    assert "alpha-end: 6 point(s)" in result.stdout and "2 × 16 × 4" in result.stdout
    assert "distill_alpha_end=0.3, data.seed=0" in result.stdout


def test_plan_json_is_for_machines():
    result = invoke("plan", str(SWEEPS / "alpha-end.yaml"), "--output", "json")
    assert result.exit_code == ExitCode.OK
    data = json.loads(result.stdout)
    assert data["total_chip_hours"] == pytest.approx(sum(r["chip_hours"] for r in data["runs"]))  # the grid's cost
    assert data["sweep"] == "alpha-end" and len(data["runs"]) == 6 and data["grid_size"] == 6
    run = data["runs"][0]
    assert run["jobset_name"] == f"alpha-end-{run['run_id']}" and run["chips"] == 128
    assert run["memory"]["fit"] == "fits" and run["chip_hours"] > 0
    assert run["axis_values"] == {"distill_alpha_end": 0.3, "data.seed": 0}
    # A prerequisite has no grid index: it read 0 and 1, as points 0 and 1 (results JSON says none either).
    quickstart = json.loads(invoke("plan", str(SWEEPS / "quickstart.yaml"), "--output", "json").stdout)["runs"]
    assert [r["index"] for r in quickstart if r["prerequisite"]] == [None]
    assert [r["index"] for r in quickstart if not r["prerequisite"]] == list(range(len(quickstart) - 1))


def test_an_invalid_sweep_answers_in_json_when_json_is_asked_for(tmp_path):
    # `plan --output json` printed nothing on stdout for an invalid file (validate prints the problems).
    path = tmp_path / "bad.yaml"
    path.write_text(
        (SWEEPS / "alpha-end.yaml").read_text().replace("distill_alpha_end: [", "distill_alpha_end: [1.5, ")
    )
    shutil.copy(SWEEPS / "llama3.1-8b-pruning-recovery.yaml", tmp_path)
    for command in ("plan", "render", "sweep"):
        extra = ("--dry-run=client",) if command == "sweep" else ()
        result = invoke(command, str(path), "--output", "json", *extra)
        assert result.exit_code == ExitCode.INVALID_SPEC, (command, result.output)
        problems = json.loads(result.stdout)
        assert "alpha_out_of_range" in {p["code"] for p in problems}, (command, problems)
    text = invoke("plan", str(path))  # and text stays text, in the same process
    assert text.exit_code == ExitCode.INVALID_SPEC and text.stdout == ""


@pytest.mark.parametrize("where", ["after", "before"])
def test_a_bare_dry_run_is_the_client_dry_run(where):
    # Typer has no option with an optional value: a bare --dry-run at the end "requires an argument", and before the
    # file it took the file as its value.
    import subprocess
    import sys

    path = str(SWEEPS / "alpha-end.yaml")
    arguments = [path, "--dry-run"] if where == "after" else ["--dry-run", path]
    done = subprocess.run(
        [sys.executable, "-m", "orchestrator.cli", "sweep", *arguments], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == ExitCode.OK, done.stderr
    assert "would create (client)" in done.stdout and "6 rendered (dry run" in done.stdout


def test_the_run_ids_plan_shows_for_another_tpu_type_are_the_ones_sweep_launches():
    # plan and render took --tpu-type/--slices; sweep, status, logs and cancel did not: those ids could not be run.
    path = str(SWEEPS / "alpha-end.yaml")
    overrides = ("--tpu-type", "v6e-256", "--slices", "1")
    planned = json.loads(invoke("plan", path, *overrides, "--output", "json").stdout)
    swept = json.loads(invoke("sweep", path, "--dry-run=client", *overrides, "--output", "json").stdout)
    assert [r["jobset_name"] for r in planned["runs"]] == [r["jobset"] for r in swept]
    assert planned["runs"][0]["jobset_name"] not in invoke("plan", path).stdout  # the file's own ids differ
    for command in ("status", "logs", "cancel"):
        assert "--tpu-type" in invoke(command, "--help").stdout


def test_service_fields_apply_only_to_the_service():
    result = invoke("sweep", str(SWEEPS / "alpha-end.yaml"), "--retries", "2")
    assert result.exit_code == ExitCode.USAGE and "--retries and --deletion-policy apply to --service" in result.stderr


def test_plan_warns_when_the_teacher_will_not_fit(tmp_path):
    # Llama 3.1 70B teacher, 8B student, an all data-parallel mesh on a v5e slice: the guide's
    # "Teacher OOMs at startup", caught before launch
    spec = {
        "student": {"model": "llama3.1-8b"},
        "teacher": {"model": "llama3.1-70b", "load_parameters_path": "gs://bkt/t"},
        "loss": {"alpha": 1.0},
        "mesh": {"data": -1, "fsdp": 1},
    }
    path = write(tmp_path, sweep_data(spec=spec, target={**TARGET, "tpu_type": "v5e-256", "slices": 1}))
    result = invoke("plan", str(path), "--output", "json")
    assert result.exit_code == ExitCode.OK
    data = json.loads(result.stdout)
    assert data["runs"][0]["memory"]["fit"] == "does_not_fit"
    assert [p["code"] for p in data["problems"]] == ["memory_over_hbm"]
    (problem,) = data["problems"]
    assert problem["file"] == str(path) and problem["line"] is not None  # at target.tpu_type, like every problem
    # replicated weights: sharding them is the fix, and the 70B teacher's share says offline distillation too
    assert problem["hint"].startswith("weights, gradients and optimizer state are") and "offline" in problem["hint"]
    text = invoke("plan", str(path))
    assert "warning[memory_over_hbm]" in text.stderr and "OOM" in text.stdout
    assert f"{path}:{problem['line']}:" in text.stderr
    # sweep and render say it too: they launched it without a word (only plan said so)
    for command in (("sweep", "--dry-run=client"), ("render",)):
        said = invoke(
            command[0], str(path), *command[1:], *(("-o", str(tmp_path / "out")) if command == ("render",) else ())
        )
        assert said.exit_code == ExitCode.OK and "warning[memory_over_hbm]" in said.stderr, (command, said.output)


def test_plan_advice_names_an_fsdp_that_divides_the_models(tmp_path):
    # v5p-3456's 1728 chips do not divide emb_dim 4096: every weight stayed whole, and the advice was "more chips"
    # or "mesh.fsdp: -1", neither of which shards anything.
    spec = {
        "student": {"model": "llama3.1-8b"},
        "teacher": {"model": "llama3.1-8b", "load_parameters_path": "gs://bkt/t"},
    }
    path = write(tmp_path, sweep_data(spec=spec, target={**TARGET, "tpu_type": "v5p-3456", "slices": 1}))
    data = json.loads(invoke("plan", str(path), "--output", "json").stdout)
    (problem,) = [p for p in data["problems"] if p["code"] == "memory_over_hbm"]
    assert "mesh.fsdp: 64 (it divides emb_dim 4096 and the slice's 1728 devices" in problem["hint"], problem
    assert "mesh.fsdp: -1" not in problem["hint"]


def test_plan_advice_for_activations_names_what_shrinks_them(tmp_path):
    # Every case got "shard the parameters over more chips ... use more slices": no help to a run whose
    # per-chip activations (rows × length, attention's length²) were most of it.
    spec = {
        "student": {"model": "qwen3-4b", "remat": "dots"},
        "teacher": {"model": "qwen3-32b", "load_parameters_path": "gs://bkt/t"},
        "batch": {"per_device_batch_size": 2, "max_target_length": 16384},
    }
    path = write(tmp_path, sweep_data(spec=spec, target={**TARGET, "tpu_type": "v5p-128", "slices": 2}))
    data = json.loads(invoke("plan", str(path), "--output", "json").stdout)
    (problem,) = [p for p in data["problems"] if p["code"] == "memory_over_hbm"]
    hint = problem["hint"]
    assert (
        hint.startswith("activations and a layer's working set are")
        and "more chips or sharding do not shrink them" in hint
    )
    assert "smaller batch.per_device_batch_size" in hint and "16384² scores per head" in hint
    assert "student.remat: full" in hint and "mesh.fsdp" not in hint


def test_plan_the_quickstart_locally():
    result = invoke("plan", str(SWEEPS / "quickstart.yaml"), "--output", "json")
    assert result.exit_code == ExitCode.OK, result.output
    runs = json.loads(result.stdout)["runs"]
    assert [r["role"] for r in runs] == ["prerequisite"] + ["point"] * 4 + ["baseline"]
    teacher = runs[0]
    assert all(r["depends_on"] == {"teacher": teacher["run_id"]} for r in runs[1:])
    assert teacher["output_path"] == f"runs/quickstart/{teacher['run_id']}"


@pytest.mark.parametrize("name", EXAMPLE_SWEEPS)
@pytest.mark.parametrize("shape", [("v5p-128", "2"), ("v6e-256", "1")])
def test_render_writes_one_file_per_point_and_rerendering_changes_nothing(tmp_path, name, shape):
    args = ["render", str(SWEEPS / f"{name}.yaml"), "-o", str(tmp_path), "--tpu-type", shape[0], "--slices", shape[1]]
    first = invoke(*args, "--output", "json")
    assert first.exit_code == ExitCode.OK, first.output
    files = json.loads(first.stdout)
    assert all(f["changed"] for f in files)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    assert sorted(before) == sorted(f"{f['name']}.yaml" for f in files)
    second = invoke(*args)
    assert second.exit_code == ExitCode.OK and "wrote" not in second.stdout
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
    doc = yaml.safe_load(next(iter(before.values())))
    assert doc["spec"]["replicatedJobs"][0]["template"]["spec"]["template"]["spec"]["nodeSelector"][
        "cloud.google.com/gke-tpu-accelerator"
    ] == ("tpu-v5p-slice" if shape[0] == "v5p-128" else "tpu-v6e-slice")


def test_render_as_xpk_prints_one_command_per_point(tmp_path):
    path = write(
        tmp_path, sweep_data(axes={"loss.alpha.end": [0.3, 0.5]}, target={**TARGET, "kind": "xpk", "cluster": "demo"})
    )
    result = invoke("render", str(path), "--as", "xpk", "--output", "json")
    assert result.exit_code == ExitCode.OK, result.output
    commands = json.loads(result.stdout)
    assert len(commands) == 2
    argv = commands[0]["argv"]
    assert argv[:5] == ["xpk", "workload", "create", "--cluster", "demo"]
    assert argv[argv.index("--workload") + 1] == commands[0]["name"] and argv[argv.index("--num-slices") + 1] == "2"


def test_render_as_xpk_refuses_secret_references(tmp_path):
    target = {**TARGET, "kind": "xpk", "cluster": "demo", "secret_env": {"HF_TOKEN": {"secret": "hf", "key": "t"}}}
    result = invoke("render", str(write(tmp_path, sweep_data(target=target))), "--as", "xpk")
    assert result.exit_code == ExitCode.INVALID_SPEC and "xpk_no_secrets" in result.stderr


def test_plan_and_the_dry_run_refuse_what_xpk_cannot_launch_at_its_line(tmp_path):
    """An xpk target with a priority XPK lacks and an env value it writes unescaped: plan and `sweep --dry-run`
    passed it (exit 0) and only the real launch refused it, without the file's line. `render -o` writes
    distillctl's own JobSets, which can carry them (the hint's way out)."""
    target = {**TARGET, "kind": "xpk", "cluster": "demo", "priority": "urgent", "env": {"A": 'x"y'}}
    path = str(write(tmp_path, sweep_data(target=target)))
    for command in (["plan", path], ["sweep", path, "--dry-run=client"], ["render", path, "--as", "xpk"]):
        result = invoke(*command)
        assert result.exit_code == ExitCode.INVALID_SPEC, (command, result.output)
        assert "sweep.yaml:" in result.stderr and "error[xpk_bad_priority] target.priority" in result.stderr
        assert "error[xpk_unsafe_env] target.env.A" in result.stderr
    assert invoke("render", path, "-o", str(tmp_path / "out")).exit_code == ExitCode.OK


def test_render_a_local_sweep_is_a_usage_error(tmp_path):
    result = invoke("render", str(SWEEPS / "quickstart.yaml"), "-o", str(tmp_path))
    assert result.exit_code == ExitCode.USAGE and "nothing to render" in result.stderr


def test_render_names_the_file_that_stands_where_a_folder_is_needed(tmp_path):
    blocker = tmp_path / "afile"
    blocker.write_text("mine")
    for out in (blocker, blocker / "sub"):
        result = invoke("render", str(SWEEPS / "alpha-end.yaml"), "-o", str(out))
        assert result.exit_code == ExitCode.USAGE and f"{blocker} is a file, not a folder" in result.stderr
    assert blocker.read_text() == "mine"


def test_render_a_local_sweep_for_a_cluster_takes_its_image_on_the_command_line(tmp_path):
    args = ["render", str(SWEEPS / "quickstart.yaml"), "-o", str(tmp_path / "out"), "--tpu-type", "v5p-8"]
    refused = invoke(*args)  # the file says kind: local and has no image to blame: the message names the option
    assert refused.exit_code == ExitCode.USAGE and "a cluster run needs an image" in refused.stderr
    assert "pass --image too" in refused.stderr
    result = invoke(*args, "--image", "localhost/distillctl-trainer:dev")
    assert result.exit_code == ExitCode.OK, result.output
    assert "localhost/distillctl-trainer:dev" in next((tmp_path / "out").iterdir()).read_text()


def test_render_needs_an_output_folder():
    result = invoke("render", str(SWEEPS / "alpha-end.yaml"))
    assert result.exit_code == ExitCode.USAGE and "-o DIR" in result.stderr


def test_an_invalid_sweep_exits_4_with_located_problems(tmp_path):
    path = write(tmp_path, sweep_data(axes={"loss.alpha.ends": [0.3]}))
    result = invoke("plan", str(path))
    assert result.exit_code == ExitCode.INVALID_SPEC
    assert f"{path}:" in result.stderr and "error[unknown_axis_path] axes.loss.alpha.ends" in result.stderr
    assert "did you mean 'loss.alpha.end'" in result.stderr


def test_a_missing_sweep_file_is_a_usage_error(tmp_path):
    result = invoke("plan", str(tmp_path / "nope.yaml"))
    assert result.exit_code == ExitCode.USAGE and "no such file" in result.stderr


def test_an_unknown_tpu_type_option_suggests_names():
    result = invoke("plan", str(SWEEPS / "alpha-end.yaml"), "--tpu-type", "v6e-250")
    assert result.exit_code == ExitCode.USAGE and "v6e-256" in result.stderr


def test_a_large_grid_needs_yes(tmp_path):
    path = write(tmp_path, sweep_data(axes={"loss.alpha.end": [i / 100 for i in range(70)]}))
    result = invoke("plan", str(path))
    assert result.exit_code == ExitCode.USAGE and "--yes" in result.stderr
    assert invoke("plan", str(path), "--yes", "--output", "json").exit_code == ExitCode.OK
    # Past the hard limit --yes does not help, so the hint does not offer it.
    huge = write(
        tmp_path, sweep_data(axes={"loss.alpha.end": [i / 1000 for i in range(400)], "seed": list(range(300))})
    )
    result = invoke("plan", str(huge), "--yes")  # exit 4: an invalid sweep file, as the README's table says
    assert result.exit_code == ExitCode.INVALID_SPEC and "split it into several sweeps" in result.stderr
    assert "--yes" not in result.stderr


def test_tpus_lists_the_table():
    result = invoke("tpus", "--output", "json")
    rows = {r["name"]: r for r in json.loads(result.stdout)}
    assert rows["v5p-128"]["vms_per_slice"] == 16 and rows["v6e-256"]["topology"] == "16x16"
    assert "v5p-128" in invoke("tpus").stdout


@pytest.mark.parametrize(
    ("content", "said"),
    [
        (None, "is a folder, not a file"),
        ("foo: [bar\n  x: }", "cannot be read: ParserError"),
        ("- a\n- b\n", "cannot be read: TypeError"),
        (b"\xff\xfe\x00x", "cannot be read: UnicodeDecodeError"),
    ],
)
def test_a_kubeconfig_that_is_not_one_is_cluster_unreachable_not_an_internal_error(tmp_path, content, said):
    path = write(tmp_path, sweep_data())
    kubeconfig = tmp_path / "kubeconfig"
    if content is None:
        kubeconfig.mkdir()
    elif isinstance(content, bytes):
        kubeconfig.write_bytes(content)
    else:
        kubeconfig.write_text(content)
    result = invoke("status", str(path), "--kubeconfig", str(kubeconfig))
    assert result.exit_code == ExitCode.CLUSTER_UNREACHABLE and said in result.stderr, result.output


def test_service_refuses_the_options_it_would_drop(tmp_path):
    # --dry-run=server would have applied the DistillationSweep for real.
    path = write(tmp_path, sweep_data())
    result = invoke("sweep", str(path), "--service", "--dry-run=server", "--wait")
    assert result.exit_code == ExitCode.USAGE and "--service cannot be combined with --dry-run=server, --wait" in (
        result.stderr
    )


@pytest.mark.parametrize(
    "args",
    [
        ("status", "{path}", "-n", "Team_A"),
        ("sweep", "{path}", "--namespace", "team.a" * 20),
        ("serve", "--namespace", "Team_A"),
        ("serve", "--lease", "My Lease"),
        # A namespace is a label: a dotted one is refused as target.namespace is (a lease may have dots).
        ("cancel", "{path}", "--namespace", "team.a"),
        ("serve", "-n", "team.a"),
    ],
)
def test_a_namespace_or_lease_that_is_not_a_kubernetes_name_is_a_usage_error_before_connecting(tmp_path, args):
    # Before, `status -n Team_A` listed every point as never created, and `serve` watched 404s for ever.
    path = write(tmp_path, sweep_data())
    result = invoke(*(a.format(path=path) for a in args), "--kubeconfig", str(tmp_path / "absent"))
    words = "is not a Kubernetes name" if "--lease" in args else "is not a Kubernetes namespace"
    assert result.exit_code == ExitCode.USAGE and words in " ".join(result.output.replace("│", "").split()), (
        result.output
    )


def test_serve_port_is_checked_before_connecting(tmp_path):
    result = invoke("serve", "--port", "70000", "--kubeconfig", str(tmp_path / "absent"))
    assert result.exit_code == ExitCode.USAGE and "--port" in result.output, result.output


def test_logs_refuses_a_slice_or_worker_the_run_does_not_have_before_connecting(tmp_path):
    path = write(tmp_path, sweep_data(target={**TARGET, "tpu_type": "v5p-128", "slices": 2}))  # 16 VMs per slice
    absent = ["--kubeconfig", str(tmp_path / "absent")]
    for flags, said in [
        (("--slice", "2"), "--slice 2: the run has 2 slice(s)"),
        (("--worker", "16"), "--worker 16: the run has 16 worker(s) per slice (v5p-128)"),
    ]:
        result = invoke("logs", str(path), "0", *flags, *absent)
        assert result.exit_code == ExitCode.USAGE and said in result.stderr, result.output
    # In range, the command goes on to the cluster (absent here).
    reached = invoke("logs", str(path), "0", "--slice", "1", "--worker", "15", *absent)
    assert reached.exit_code == ExitCode.CLUSTER_UNREACHABLE, reached.output


def test_results_of_a_local_sweep_with_a_tpu_type_names_the_missing_image_option(tmp_path):
    result = invoke("results", str(SWEEPS / "quickstart.yaml"), "--tpu-type", "v5p-8")
    assert result.exit_code == ExitCode.USAGE and "--tpu-type makes the local sweep quickstart" in result.stderr


@pytest.mark.parametrize(
    ("option", "value", "said"),
    [
        ("--default-image", "BAD:IMG", "is not a container image"),
        ("--default-queue", "Bad_Q", "is not a Kubernetes name"),
        ("--default-priority", "High", "is not a Kubernetes name"),
        ("--resync", "1e308", "--resync"),  # the API server answered every watch 400 Bad Request
    ],
)
def test_serve_checks_its_defaults_before_connecting(tmp_path, option, value, said):
    # Before, a bad default was only found sweep by sweep, as each resource's Accepted=False condition.
    result = invoke("serve", option, value, "--kubeconfig", str(tmp_path / "absent"))
    assert result.exit_code == ExitCode.USAGE and said in result.output, result.output


def test_service_refuses_a_local_sweep_before_connecting(tmp_path):
    # It was applied, and the controller failed on it with a traceback at every pass.
    result = invoke("sweep", str(SWEEPS / "quickstart.yaml"), "--service", "--kubeconfig", str(tmp_path / "absent"))
    assert result.exit_code == ExitCode.INVALID_SPEC and "error[local_target] target.kind" in result.stderr


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (("--wait", "--timeout", "nan"), "is not a number of seconds to wait"),  # waited for ever
        (("--wait", "--timeout", "-5"), "is not a number of seconds to wait"),
        (("--timeout", "5"), "--timeout applies to --wait"),  # silently ignored
    ],
)
def test_sweep_timeout_must_be_seconds_and_go_with_wait(tmp_path, args, said):
    result = invoke("sweep", str(write(tmp_path, sweep_data())), *args, "--kubeconfig", str(tmp_path / "absent"))
    assert result.exit_code == ExitCode.USAGE and said in result.output, result.output


def test_slices_whose_pods_pass_a_jobsets_limit_are_refused_before_the_webhook(tmp_path):
    # 2147483647 slices passed every check and reached the JobSet webhook, reported as an RBAC problem (exit 7).
    result = invoke("plan", str(write(tmp_path, sweep_data(target={**TARGET, "slices": 2**31 - 1}))))
    assert result.exit_code == ExitCode.INVALID_SPEC and "error[too_many_pods] target.slices" in result.stderr


def test_a_webhooks_denial_is_a_rejection_not_an_rbac_problem():
    import json

    from kubernetes.client.exceptions import ApiException

    from orchestrator.backends.kubernetes.client import api_error

    denied = ApiException(status=403, reason="Forbidden")
    denied.body = json.dumps({"message": 'admission webhook "vjobset.kb.io" denied the request: replicas too large'})
    error = api_error("create JobSet x", denied, cluster=None)
    assert error.exit_code == ExitCode.REJECTED and "a webhook rejected it" in error.message
    assert "RBAC" not in error.hint


def test_a_404_from_something_that_is_not_an_api_server_says_so():
    # A kubeconfig whose server is a web page or a proxy: "list the JobSets: 404 Not Found", nothing more.
    import json

    from kubernetes.client.exceptions import ApiException

    from orchestrator.backends.kubernetes.client import Cluster, api_error

    cluster = Cluster(api=None, namespace="default", server="https://10.0.0.1:443")
    page = ApiException(status=404, reason="Not Found")
    page.body = "<html>404 page not found</html>"
    error = api_error("list the JobSets", page, cluster)
    assert (
        "the server at https://10.0.0.1:443 answered 404 (Not Found), not as a Kubernetes API server" in error.message
    )
    assert "kubectl cluster-info" in error.hint and error.exit_code == ExitCode.CLUSTER_UNREACHABLE
    # The API server's own answer for a resource it does not serve: the JobSet controller is missing.
    missing = ApiException(status=404, reason="Not Found")
    missing.body = json.dumps({"kind": "Status", "message": "the server could not find the requested resource"})
    assert "install the JobSet controller" in api_error("list the JobSets", missing, cluster).hint


def test_tls_rbac_and_namespace_failures_say_what_to_change():
    import json

    from kubernetes.client.exceptions import ApiException

    from orchestrator.backends.kubernetes.client import Cluster, api_error

    cluster = Cluster(api=None, namespace="team", server="https://10.0.0.1:443")
    # A kubeconfig whose CA is not the server's: "list the API groups: 0 SSLError", exit 1.
    tls = ApiException(status=0, reason="SSLError\n[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed")
    error = api_error("list the API groups", tls, cluster)
    assert "the API server at https://10.0.0.1:443 failed TLS verification" in error.message
    assert "0 SSLError" not in error.message and "certificate authority" in error.hint
    assert error.exit_code == ExitCode.CLUSTER_UNREACHABLE
    # A 403 on Leases asked for "RBAC rights on JobSets".
    denied = ApiException(status=403, reason="Forbidden")
    denied.body = json.dumps(
        {
            "kind": "Status",
            "message": "leases is forbidden",
            "details": {"kind": "leases", "group": "coordination.k8s.io"},
        }
    )
    error = api_error("claim run x", denied, cluster)
    assert "RBAC rights on leases.coordination.k8s.io in namespace 'team'" in error.hint
    assert error.exit_code == ExitCode.FORBIDDEN
    # A 403 on deleting a DistillationSweep (cancel --service) named "get and patch" and the chart's installation.
    refused = ApiException(status=403, reason="Forbidden")
    refused.body = json.dumps(
        {
            "kind": "Status",
            "message": 'distillationsweeps.distillctl.dev "s" is forbidden: User "u" cannot delete resource '
            '"distillationsweeps" in API group "distillctl.dev" in the namespace "team"',
            "details": {"kind": "distillationsweeps", "group": "distillctl.dev"},
        }
    )
    error = api_error("delete DistillationSweep s", refused, cluster)
    assert error.hint.startswith("ask for delete rights on distillationsweeps.distillctl.dev in namespace 'team'")
    assert error.exit_code == ExitCode.FORBIDDEN
    # Creating in a namespace that does not exist: a raw "404 namespaces ... not found", exit 1.
    gone = ApiException(status=404, reason="Not Found")
    gone.body = json.dumps(
        {"kind": "Status", "message": 'namespaces "team" not found', "details": {"name": "team", "kind": "namespaces"}}
    )
    error = api_error("create JobSet x", gone, cluster)
    assert "namespace 'team' does not exist on the cluster" in error.message and error.exit_code == ExitCode.USAGE


@pytest.mark.parametrize(
    ("option", "said"),
    [
        (("--label", "a=b=c"), "--label a=b=c: label value 'b=c' is not a Kubernetes label value"),
        (("--label", "distillctl.dev/run-id=x"), "is set by distillctl"),
        (("--image", ""), "--image : '' is not a container image reference"),
        (("--queue", "Bad_Q"), "--queue Bad_Q: target.queue 'Bad_Q' is not a Kubernetes name"),
        # distillctl sets it from target.queue: the label's value was replaced without a word
        (("--label", "kueue.x-k8s.io/queue-name=other"), "is set by distillctl from target.queue (--queue)"),
    ],
)
@pytest.mark.parametrize("mode", ["--dry-run=client", "--service"])  # --service: checked before connecting
def test_a_bad_value_on_the_command_line_names_the_option_not_the_file(tmp_path, option, said, mode):
    # It was an error at the file's `target:` line, "not a valid sweep", exit 4.
    path = write(tmp_path, sweep_data())
    result = invoke("sweep", str(path), mode, *option)
    assert result.exit_code == ExitCode.USAGE and said in result.stderr, result.output
    assert "not a valid sweep" not in result.stderr


def test_cluster_options_on_a_local_sweep_are_said_to_be_ignored(tmp_path):
    # They were taken in silence: a --queue on a local sweep queued nothing anywhere.
    path = write(tmp_path, sweep_data(target={"kind": "local", "output_base": str(tmp_path / "runs")}))
    plain = invoke("sweep", str(path), "--dry-run=client", "--output", "json")
    options = ("--image", "example.com/d:1", "--queue", "q", "--priority", "high", "--label", "a=b")
    result = invoke("sweep", str(path), "--dry-run=client", "--output", "json", *options)
    assert result.exit_code == 0 and json.loads(result.stdout) == json.loads(plain.stdout)  # the same run ids
    assert "warning[option_ignored]: --image, --queue, --priority, --label ignored" in result.stderr
    assert "option_ignored" not in plain.stderr
    planned = invoke("plan", str(path), "--slices", "2")
    assert planned.exit_code == 0 and "--slices ignored" in planned.stderr
    read = invoke("results", str(path), "--image", "example.com/d:1", "--namespace", "team", "--context", "c")
    assert read.exit_code == 0 and "--image ignored" in read.stderr, read.output
    assert "--context, --namespace ignored: sweep t runs locally" in read.stderr


def test_plan_strict_fails_a_sweep_whose_runs_will_not_fit(tmp_path):
    # `plan` printed OOM and exited 0: no CI gate could use it.
    path = write(tmp_path, sweep_data())
    assert invoke("plan", str(path), "--strict", "--tpu-type", "v5p-8").exit_code == 0, "the tiny models fit"
    big = sweep_data()
    big["spec"]["student"] = {"model": "llama3.1-70b"}
    big["spec"]["teacher"] = {"model": "llama3.1-70b", "load_parameters_path": "gs://bkt/t"}
    big["spec"]["loss"] = {"alpha": 0.5}
    path = write(tmp_path, big, "big.yaml")
    result = invoke("plan", str(path), "--strict", "--tpu-type", "v5p-8", "--output", "json")
    codes = [p["code"] for p in json.loads(result.stdout)["problems"]]
    assert result.exit_code == ExitCode.INVALID_SPEC and "memory_over_hbm" in codes, result.output
    assert invoke("plan", str(path), "--tpu-type", "v5p-8").exit_code == 0  # without --strict, warnings only


def test_service_refuses_a_sweep_larger_than_its_status_can_hold(tmp_path):
    # 9000 points passed with --yes; every status write of the controller then failed (object too large).
    grid = {"loss.alpha.end": [i / 100 for i in range(50)], "seed": list(range(41))}  # 2050 points
    path = write(tmp_path, sweep_data(axes=grid))
    for yes in ((), ("--yes",)):  # without --yes it said "pass --yes", and --yes was then refused
        result = invoke("sweep", str(path), "--service", *yes, "--kubeconfig", str(tmp_path / "absent"))
        assert result.exit_code == ExitCode.INVALID_SPEC, result.output
        assert "2050 runs; the service runs at most 2000" in result.stderr and "without --service" in result.stderr
    small = write(tmp_path, sweep_data(axes={"loss.alpha.end": [i / 100 for i in range(70)]}))
    over = invoke("sweep", str(small), "--service", "--kubeconfig", str(tmp_path / "absent"))
    assert over.exit_code == ExitCode.USAGE and "70 points, over the limit of 64" in over.stderr


def test_status_watch_shows_the_last_statuses_while_the_api_server_does_not_answer(capsys):
    from orchestrator.cli.launch import _riding_out_outages
    from orchestrator.errors import DistillctlError

    calls = []

    def statuses():
        calls.append(None)
        if len(calls) in (2, 3):
            raise DistillctlError("cannot reach the API server", exit_code=ExitCode.CLUSTER_UNREACHABLE)
        return {"looks": len(calls)}

    watched = _riding_out_outages(statuses)
    assert [watched() for _ in range(4)] == [{"looks": 1}, {"looks": 1}, {"looks": 1}, {"looks": 4}]
    err = capsys.readouterr().err
    assert "cannot reach the API server; retrying for up to 15 minutes" in err and "answers again" in err

    def refused():  # other errors (RBAC, a bad manifest) are not waited out
        raise DistillctlError("forbidden", exit_code=ExitCode.FORBIDDEN)

    with pytest.raises(DistillctlError):
        _riding_out_outages(refused)()


def test_a_file_on_standard_input_is_read_from_dash_and_its_spec_from_the_current_directory(monkeypatch):
    # `validate -` said "no such file: -"; a sweep read from /dev/stdin looked for its spec under /dev/.
    monkeypatch.chdir(SWEEPS)
    spec = runner.invoke(app, ["validate", "-"], input=(SWEEPS / "tiny.yaml").read_text())
    assert spec.exit_code == ExitCode.OK and "-: valid spec" in spec.stdout, spec.output
    sweep = runner.invoke(app, ["plan", "-", "--output", "json"], input=(SWEEPS / "quickstart.yaml").read_text())
    assert sweep.exit_code == ExitCode.OK, sweep.output
    assert json.loads(sweep.stdout)["sweep"] == "quickstart"


def test_a_grid_over_the_hard_limit_is_said_as_such_without_yes(tmp_path):
    # It said "pass --yes", and --yes then met the 100,000-point limit with another exit code.
    grid = {"loss.alpha.end": [i / 1000 for i in range(1000)], "seed": list(range(101))}  # 101,000 points
    path = write(tmp_path, sweep_data(axes=grid))
    for yes in ((), ("--yes",)):
        result = invoke("plan", str(path), *yes)
        assert result.exit_code == ExitCode.INVALID_SPEC, result.output
        assert "over the limit of 100000" in result.stderr and "--yes" not in result.stderr


def test_a_service_dry_run_checks_the_file_as_the_service_takes_it(tmp_path):
    # A file leaving target.image to the chart's defaults.image: `sweep --service` applies it, and its dry run
    # called it "not a valid sweep" (exit 4), while the --dry-run=server refusal's hint pointed there.
    import shutil

    import yaml

    for name in ("alpha-end.yaml", "llama3.1-8b-pruning-recovery.yaml"):
        shutil.copy(SWEEPS / name, tmp_path / name)
    path = tmp_path / "alpha-end.yaml"
    path.write_text("\n".join(line for line in path.read_text().splitlines() if "image:" not in line) + "\n")
    result = invoke("sweep", str(path), "--service", "-n", "team", "--dry-run=client")
    assert result.exit_code == ExitCode.OK, result.output
    body = yaml.safe_load(result.stdout)
    assert (body["kind"], body["metadata"]) == ("DistillationSweep", {"name": "alpha-end", "namespace": "team"})
    assert "image" not in body["spec"]["target"]  # the service's default fills it
    assert "would apply DistillationSweep team/alpha-end: 6 run(s)" in result.stderr
    as_json = invoke("sweep", str(path), "--service", "--dry-run=client", "--output", "json")
    assert as_json.exit_code == ExitCode.OK and json.loads(as_json.stdout)["kind"] == "DistillationSweep"


@pytest.mark.parametrize("command", [["sweep", "--dry-run"], ["plan"], ["tpus"], ["--help"], ["plan", "--help"]])
def test_a_reader_that_stops_early_is_not_a_failure(command):
    """`distillctl sweep FILE --dry-run | head -1` exited 1 without a word (rich ends the process with 1 when stdout's
    reader goes away); every command now exits 0 then, as the error boundary says."""
    import os
    import subprocess
    import sys

    args = [*command[:1], *([str(SWEEPS / "quickstart.yaml")] if command[0] in ("sweep", "plan") else []), *command[1:]]
    reader = subprocess.Popen(["head", "-1"], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL)
    done = subprocess.run(
        [sys.executable, "-m", "orchestrator.cli", *args],
        stdout=reader.stdin,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "COLUMNS": "200"},
        timeout=120,
    )
    reader.stdin.close()
    reader.wait(10)
    assert done.returncode == 0 and "Traceback" not in done.stderr, (done.returncode, done.stderr[-2000:])


def test_render_names_an_earlier_renders_manifests_left_in_the_folder(tmp_path):
    """Two renders of a 6-point sweep (another TPU type: other run ids) left 12 of its JobSets in the folder without
    a word: `kubectl apply -f DIR` would create them all. Files of other sweeps, and the user's, are not named."""
    out = tmp_path / "out"
    args = ["render", str(SWEEPS / "alpha-end.yaml"), "-o", str(out)]
    assert invoke(*args).exit_code == ExitCode.OK
    (out / "other-sweep-aaaaaaaaaa.yaml").write_text("kind: JobSet\n")
    (out / "README.md").write_text("mine\n")
    again = invoke(*args, "--tpu-type", "v5p-256", "--slices", "1")
    said = " ".join(again.stderr.split())
    assert again.exit_code == ExitCode.OK and "warning[stale_manifests]" in said, again.output
    assert "6 manifest(s) of sweep alpha-end" in said and "kubectl apply -f" in said
    assert "other-sweep" not in said and "README" not in said
    assert (
        "stale_manifests"
        not in invoke(*args, "--tpu-type", "v5p-256", "--slices", "1", "-o", str(tmp_path / "new")).stderr
    )


def test_logs_into_a_reader_that_stops_early_is_not_a_failure(tmp_path):
    """`distillctl logs FILE 0 | head -1` exited 1 without a word: logs writes plain text, and the error boundary
    asked the pipe with a write of nothing, which Linux does not refuse."""
    import os
    import subprocess
    import sys

    from sweep_support import expanded

    data = sweep_data(target={"kind": "local", "output_base": str(tmp_path / "runs")})
    path = write(tmp_path, data)
    [run] = expanded(tmp_path, data).runs
    os.makedirs(run.output_path)
    with open(os.path.join(run.output_path, "trainer.log"), "w") as log:
        log.writelines(f"step {i}: a line of the trainer's output\n" for i in range(20_000))
    for _ in range(3):
        reader = subprocess.Popen(["head", "-1"], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL)
        done = subprocess.run(
            [sys.executable, "-m", "orchestrator.cli", "logs", str(path), "0"],
            stdout=reader.stdin,
            stderr=subprocess.PIPE,
            text=True,
            timeout=120,
        )
        reader.stdin.close()
        reader.wait(10)
        assert done.returncode == 0 and not done.stderr, (done.returncode, done.stderr[-2000:])


def test_plan_advice_does_not_offer_more_chips_for_what_is_per_chip(tmp_path):
    """On v5e the guide's pruning recovery needs ~18 GB per chip for the gathered vocabulary tables, activations
    and a layer's working set alone: the advice was "a TPU type with more chips per slice", also on v5litepod-256,
    the largest there is."""
    for tpu_type in ("v5litepod-16", "v5litepod-256"):
        result = invoke(
            "plan", str(SWEEPS / "alpha-end.yaml"), "--tpu-type", tpu_type, "--slices", "1", "--output", "json"
        )
        (problem,) = [p for p in json.loads(result.stdout)["problems"] if p["code"] == "memory_over_hbm"]
        hint = problem["hint"]
        assert "per chip whatever the chip count" in hint and "mesh.tensor" in hint, hint
        per_chip, _, sharded = hint.partition("; and ")
        assert "more chips" not in per_chip and "more HBM per chip" in per_chip, hint
        # On 16 chips the sharded state (9 GB) does not fit beside the per-chip part either: both are said (with
        # the per-chip fix alone, a 405B student on v5p-8 was told only to shorten its batch); on 256 it is small.
        if tpu_type == "v5litepod-16":
            assert sharded.startswith("weights, gradients and optimizer state are") and "more chips" in sharded, hint
        else:
            assert not sharded, hint


def test_plan_prints_axis_values_as_written_not_as_markup(tmp_path):
    # plan read them as rich markup: `[/data]` in a path ended it with exit 70 and `[bold]` was eaten.
    paths = ["gs://bucket/x/[/data]", "gs://bucket/y/[bold]z"]
    path = write(tmp_path, sweep_data(axes={"teacher.load_parameters_path": paths}))
    result = invoke("plan", str(path))
    shown = " ".join(result.stdout.replace("│", "").split())
    assert result.exit_code == 0 and all(p in shown for p in paths), result.output


@pytest.mark.parametrize(
    ("command", "code"),
    [
        (["validate", "{bad}"], ExitCode.INVALID_SPEC),
        (["validate", "{bad}", "--output", "json"], ExitCode.INVALID_SPEC),
        (["status", "--bogus"], 1),
        (["sweep"], 1),
        (["--help"], 0),
    ],
)
def test_a_reader_gone_before_a_failure_is_said_leaves_the_failure(tmp_path, command, code):
    """`distillctl validate bad.yaml 2>&1 | head -1` exited 0 under pipefail, and so did a usage error: a CI gate
    passed an invalid spec. (Click ends a usage error whose reader went away with 1, not 2: still a failure.)"""
    import os
    import subprocess
    import sys

    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nsteps: -1\n")
    read, written = os.pipe()
    os.close(read)  # the reader has gone before the first line: every write breaks the pipe
    try:
        done = subprocess.run(
            [sys.executable, "-m", "orchestrator.cli", *(a.format(bad=bad) for a in command)],
            stdout=written,
            stderr=written,
            timeout=120,
        )
    finally:
        os.close(written)
    assert done.returncode == code, done.returncode
