"""What crosses the process boundary between the orchestrator and the trainer, defined once.

The orchestrator renders these into JobSets and local supervisor orders; the trainer reads and returns them.
Neither side spells one of these values as a literal.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import IntEnum

# --- Exit codes ---------------------------------------------------------------------------------------------------


class TrainerExit(IntEnum):
    OK = 0  # trained to the last step; final checkpoint and summary written
    USER_ERROR = 1  # invalid spec, missing teacher checkpoint, unreadable data: fix the input, never retry
    RETRYABLE = 42  # transient failure (I/O, device, coordinator): the JobSet restarts and the run resumes
    DIVERGED = 65  # the loss became NaN or infinite; the last good checkpoint is kept; retrying repeats it
    INTERNAL = 70  # a bug in the trainer (an unexpected exception): not retried; report the traceback
    PREEMPTED = 143  # SIGTERM: a checkpoint was saved; starting again on the same output resumes


DESCRIPTIONS: dict[TrainerExit, str] = {
    TrainerExit.OK: "done",
    TrainerExit.USER_ERROR: "invalid spec or user error (never worth a retry)",
    TrainerExit.RETRYABLE: "retryable failure (I/O, device, coordinator); rerun to resume",
    TrainerExit.DIVERGED: "the loss became NaN or infinite (diverged); not retried",
    TrainerExit.INTERNAL: "internal error (a bug); not retried",
    TrainerExit.PREEMPTED: "stopped by SIGTERM or SIGINT (preempted); its message says what a rerun resumes from",
}

# The trainer's "retry me" and every death by signal (128 + n; 127 is "command not found" as a shell reports it,
# kept as XPK keeps it): a pod or local process that ends with one of these is restarted and resumes.
RETRYABLE_EXIT_CODES: tuple[int, ...] = (int(TrainerExit.RETRYABLE), *range(127, 256))
RETRYABLE_DESCRIPTION = "42 and 127-255"


def is_retryable(code: int, extra: tuple[int, ...] | frozenset[int] = ()) -> bool:
    """Whether a trainer that exited with `code` is restarted (the target may add `extra` codes)."""
    return code in RETRYABLE_EXIT_CODES or code in extra


# A short CamelCase reason for a trainer's exit, as run status conditions show it.
EXIT_REASONS: dict[int, str] = {
    TrainerExit.USER_ERROR: "UserError",
    TrainerExit.RETRYABLE: "Retryable",
    TrainerExit.DIVERGED: "Diverged",
    TrainerExit.INTERNAL: "TrainerBug",
    TrainerExit.PREEMPTED: "Terminated",
    137: "Killed",
}


def exit_reason(code: int) -> str:
    return EXIT_REASONS.get(code, f"ExitCode{code}")


# --- Environment variables ----------------------------------------------------------------------------------------

ENV_SPEC = "DISTILLCTL_SPEC"  # the resolved spec as canonical JSON; `python -m trainer` reads it
ENV_RUN_ID = "DISTILLCTL_RUN_ID"  # the run's identity; the trainer records it in summary.json
RESERVED_ENV: tuple[str, ...] = (ENV_SPEC, ENV_RUN_ID)

# The trainer's process asks glibc's malloc for transparent huge pages (2 MiB) where it maps memory. XLA:CPU
# allocates each step's temporaries as one block and frees it after the step (398 MB at bench/'s mid size), and
# glibc maps every block that large afresh: with 4 KiB pages each CPU step faulted ~100,000 pages in, 15-16 % of
# the step (bench/README.md). The trainer image sets it (trainer/Dockerfile), the local backend starts the
# trainer with it, and a GLIBC_TUNABLES in target.env keeps it in pods (`rendering.target_env`); a user's own
# entry for it stands. glibc before 2.35 and kernels with transparent huge pages off ignore it.
ENV_GLIBC_TUNABLES = "GLIBC_TUNABLES"
HUGE_PAGES_TUNABLE = "glibc.malloc.hugetlb=1"


def trainer_process_env(env: Mapping[str, str]) -> dict[str, str]:
    """`env` with `HUGE_PAGES_TUNABLE` appended to GLIBC_TUNABLES (a colon-separated list of name=value), unless
    that list already names glibc.malloc.hugetlb."""
    tunables = [item for item in env.get(ENV_GLIBC_TUNABLES, "").split(":") if item]
    name = HUGE_PAGES_TUNABLE.split("=", 1)[0]
    if any(item.split("=", 1)[0] == name for item in tunables):
        return dict(env)
    return {**env, ENV_GLIBC_TUNABLES: ":".join([*tunables, HUGE_PAGES_TUNABLE])}


# --- Files in a run's output storage besides the trainer's documented outputs -----------------------------------------

# The verdicts summary.json's `status` holds (trainer/metrics_io.py documents them); any other value is damage.
SUMMARY_STATUSES = ("running", "succeeded", "failed", "diverged", "preempted")

# A process other than 0 that fails leaves `<run dir>/failures/process-<i>.json` (summary.json's keys plus
# `process_index`): the orchestrator's verdict when summary.json is missing or still says running.
FAILURES_DIR = "failures"
# On object stores the trainer writes its metrics log as numbered parts (`metrics/part-00000.jsonl`, ...), read
# back in name order, since an object cannot be appended to; metrics.jsonl is written whole at exit.
METRICS_PARTS_DIR = "metrics"
METRICS_PART_PATTERN = "part-*.jsonl"
# Written by the sweep service into a run's folder when an early-stopping rule stops it (`{"rule", "step",
# "message"}`), before its JobSet is deleted: the run reads `Stopped (<rule>)` to every front end, for good.
STOPPED_FILE = "stopped.json"

# --- Labels and annotations on JobSets and pods -------------------------------------------------------------------

LABEL_SWEEP = "distillctl.dev/sweep"
LABEL_RUN_ID = "distillctl.dev/run-id"
LABEL_SPEC_HASH = "distillctl.dev/spec-hash"
LABEL_ROLE = "distillctl.dev/role"  # point, baseline or prerequisite
RESERVED_LABELS: tuple[str, ...] = (LABEL_SWEEP, LABEL_RUN_ID, LABEL_SPEC_HASH, LABEL_ROLE)
# Labels distillctl sets from target fields (Kueue's queue and priority, XPK's workload name): a label of the same
# key in target.labels would be overwritten without a word, so the sweep check names the field instead.
LABEL_QUEUE = "kueue.x-k8s.io/queue-name"
LABEL_WORKLOAD_PRIORITY = "kueue.x-k8s.io/priority-class"
LABEL_XPK_WORKLOAD = "xpk.google.com/workload"
LABELS_FROM_TARGET: dict[str, str] = {
    LABEL_QUEUE: "target.queue (--queue)",
    LABEL_WORKLOAD_PRIORITY: "target.workload_priority_class",
    LABEL_XPK_WORKLOAD: "the JobSet's name (xpk sets it)",
}

ANNOTATION_AXIS_VALUES = "distillctl.dev/axis-values"
ANNOTATION_OUTPUT_PATH = "distillctl.dev/output-path"
ANNOTATION_DEPENDS_ON = "distillctl.dev/depends-on"

CONTAINER_NAME = "trainer"
TRAINER_COMMAND: tuple[str, ...] = ("python", "-m", "trainer")

# --- Status reasons -----------------------------------------------------------------------------------------------
# A run's status is a phase and a CamelCase reason (Kubernetes style; upstream reasons such as ReachedMaxRestarts
# or Inadmissible are kept verbatim as the backend reports them). distillctl's own reasons, by the phase they
# explain. Some are written by the trainer into summary.json (`reason`) and read back by the orchestrator.


class PendingReason:
    NOT_CREATED = "NotCreated"  # never submitted
    NOT_OBSERVED = "NotObserved"  # no status could be read
    PREEMPTED = "Preempted"  # stopped with a checkpoint (SIGTERM); resumes when submitted again
    ORPHANED = "Orphaned"  # outputs say running, yet nothing runs it
    DELETING = "Deleting"  # the previous run of this id is still being deleted
    SUPERVISOR_GONE = "SupervisorGone"  # local backend: submitted, but its supervisor is gone (killed, a reboot)
    PREREQUISITE_FAILED = "PrerequisiteFailed"  # not created: a prerequisite failed (`sweep --retry-failed`)
    CLAIMED = "Claimed"  # not created: another sweep claimed the point and is about to create it (Kubernetes)
    NOT_ACCEPTED = "NotAccepted"  # not created: the sweep service refused the sweep (its Accepted condition says why)


class QueuedReason:
    SUSPENDED = "Suspended"
    QUEUED = "Queued"  # waiting for a free slot (local parallelism)


class RestartingReason:
    RESTARTING = "Restarting"


class StalledReason:
    NO_NEW_METRICS = "NoNewMetrics"


class DivergedReason:
    LOSS_NOT_FINITE = "LossNotFinite"


class StoppedReason:
    """Which early-stopping rule stopped a run (the sweep file's `early_stopping` block, by rule name)."""

    NO_IMPROVEMENT = "NoImprovement"
    WORSE_THAN_BASELINE = "WorseThanBaseline"
    DIVERGENCE = "Divergence"
    MEDIAN = "MedianStopping"


# `orchestrator.core.early_stop.Stop.rule` -> the reason a stopped run shows.
STOPPED_REASONS: dict[str, str] = {
    "no_improvement": StoppedReason.NO_IMPROVEMENT,
    "worse_than_baseline": StoppedReason.WORSE_THAN_BASELINE,
    "divergence": StoppedReason.DIVERGENCE,
    "median": StoppedReason.MEDIAN,
}


class FailedReason:
    TRAINER_EXIT = "TrainerExit"  # the trainer's summary says failed; its exit code in the message
    OUTPUT_NOT_WRITABLE = "OutputNotWritable"  # the run's folder or checkpoints cannot be written
    SUPERVISOR_CRASHED = "SupervisorCrashed"  # local backend: the supervisor that held the run died of an error


class StuckReason:
    """Why a run whose JobSet exists has pods that are not running: the kubelet's container waiting reasons and
    the scheduler's PodScheduled reason, verbatim (typed here so nothing spells them as literals)."""

    IMAGE_PULL_BACK_OFF = "ImagePullBackOff"
    ERR_IMAGE_PULL = "ErrImagePull"
    INVALID_IMAGE_NAME = "InvalidImageName"
    ERR_IMAGE_NEVER_PULL = "ErrImageNeverPull"
    CREATE_CONTAINER_CONFIG_ERROR = "CreateContainerConfigError"  # a missing Secret/ConfigMap key or object
    CREATE_CONTAINER_ERROR = "CreateContainerError"
    UNSCHEDULABLE = "Unschedulable"  # PodScheduled=False: the scheduler's message says which nodes and why
    FAILED_MOUNT = "FailedMount"  # an Event: a volume (Secret, PVC, gcsfuse CSI) cannot be mounted


# Container waiting reasons that mean the container will not start as things are (not a normal start-up step
# such as ContainerCreating or PodInitializing).
STUCK_WAITING_REASONS: frozenset[str] = frozenset(
    {
        StuckReason.IMAGE_PULL_BACK_OFF,
        StuckReason.ERR_IMAGE_PULL,
        StuckReason.INVALID_IMAGE_NAME,
        StuckReason.ERR_IMAGE_NEVER_PULL,
        StuckReason.CREATE_CONTAINER_CONFIG_ERROR,
        StuckReason.CREATE_CONTAINER_ERROR,
    }
)
# Warning Events (kubelet) that explain a pod still in ContainerCreating.
STUCK_EVENT_REASONS: frozenset[str] = frozenset({StuckReason.FAILED_MOUNT, "FailedAttachVolume"})
