#!/usr/bin/env bash
# podman with this project's settings, for `make image` and tests/test_image.py (never /etc/containers):
# - storage: overlay under ~/.cache/distillctl/containers (per user, kept between runs: layers and the base
#   image are reused; overlay is several times faster than vfs);
# - containers.conf: runc as the runtime, and default_ulimits at this machine's hard limits: podman's defaults
#   (nofile 1048576, nproc 4194304) are above them, and runc then fails every container with "error setting
#   rlimit type 6/7: operation not permitted". nproc is also capped at kernel.pid_max: in this sandbox runc
#   cannot set it higher even below the hard limit (measured: 32768 works, 32769 does not, with pid_max 32768).
# Usage: hack/image/podman.sh ARGS...   (exactly as podman ARGS...)
set -euo pipefail
CACHE="${DISTILLCTL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/distillctl}"
STORE="$CACHE/containers"
RUNROOT="${XDG_RUNTIME_DIR:-/tmp}/distillctl-containers-$(id -u)"
mkdir -p "$STORE/storage" "$RUNROOT"
nofile="$(ulimit -Hn)"
nproc="$(ulimit -Hu)"
pid_max="$(cat /proc/sys/kernel/pid_max 2>/dev/null || echo 32768)"
[ "$nproc" = unlimited ] || [ "$nproc" -gt "$pid_max" ] && nproc="$pid_max"
[ "$nofile" = unlimited ] && nofile=1048576
conf="$STORE/containers.conf"
want="$(
  cat <<CONF
# written by hack/image/podman.sh from this machine's limits; edits are overwritten
[containers]
default_ulimits = ["nofile=$nofile:$nofile", "nproc=$nproc:$nproc"]
log_driver = "k8s-file"

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
tmp_dir = "$RUNROOT/libpod"
CONF
)"
[ -f "$conf" ] && [ "$(cat "$conf")" = "$want" ] || printf '%s\n' "$want" >"$conf"
export CONTAINERS_CONF="$conf"
exec podman --root "$STORE/storage" --runroot "$RUNROOT" --storage-driver overlay "$@"
