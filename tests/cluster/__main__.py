"""`python -m tests.cluster up|down|status`: a long-running local cluster for people.

`up` starts the control plane in the background (state and logs in
.cluster/up/) and writes its admin kubeconfig to .cluster/kubeconfig; `down`
stops it (and anything a crashed test session left behind).
"""

from __future__ import annotations

import argparse
import shutil
import sys

from .paths import CLUSTER_DIR
from .processes import proc_start_time, reap_stale_sessions, stop_recorded

UP_DIR = CLUSTER_DIR / "up"
STATE = UP_DIR / "state.json"
KUBECONFIG = CLUSTER_DIR / "kubeconfig"


def _running() -> list[str]:
    import json

    try:
        state = json.loads(STATE.read_text())
    except (OSError, ValueError):
        return []
    return [
        c["name"]
        for c in state.get("components", [])
        if c.get("pid") and proc_start_time(c["pid"]) is not None and proc_start_time(c["pid"]) == c.get("start_time")
    ]


def up(args: argparse.Namespace) -> int:
    running = _running()
    if running:
        print(f"local cluster already running ({', '.join(running)}); KUBECONFIG={KUBECONFIG}")
        return 0
    from .controlplane import ControlPlane
    from .processes import ComponentError
    from .upstream import NotBuilt

    down_quiet()
    if UP_DIR.exists():
        shutil.rmtree(UP_DIR)
    cp = ControlPlane(UP_DIR, detach=True, keep_workdir=True, pod_run_ms=args.pod_run_ms)
    try:
        cp.start()
    except (ComponentError, NotBuilt, TimeoutError) as e:
        print(f"cluster-up failed: {e}", file=sys.stderr)
        return 1
    shutil.copyfile(cp.kubeconfig, KUBECONFIG)
    KUBECONFIG.chmod(0o600)
    print(f"local cluster up in {cp.startup_seconds:.1f}s: {cp.server}")
    print(f"  export KUBECONFIG={KUBECONFIG}")
    print(f"  logs: {cp.log_dir}/   stop: make cluster-down")
    return 0


def down_quiet() -> list[str]:
    stopped = stop_recorded(STATE)
    stopped += reap_stale_sessions()
    KUBECONFIG.unlink(missing_ok=True)
    return stopped


def down(args: argparse.Namespace) -> int:
    stopped = down_quiet()
    print(f"stopped: {', '.join(stopped)}" if stopped else "no local cluster was running")
    return 0


def status(args: argparse.Namespace) -> int:
    running = _running()
    if running:
        print(f"running: {', '.join(running)}; KUBECONFIG={KUBECONFIG}")
        return 0
    print("not running")
    return 1


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.cluster", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    u = sub.add_parser("up", help="start the local cluster in the background")
    u.add_argument(
        "--pod-run-ms", type=int, default=5000, help="how long fake pods run before they succeed (default 5000)"
    )
    u.set_defaults(func=up)
    sub.add_parser("down", help="stop it").set_defaults(func=down)
    sub.add_parser("status", help="is it running?").set_defaults(func=status)
    args = p.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
