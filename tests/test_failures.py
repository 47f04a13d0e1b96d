"""trainer.failures.classify: only transient failures exit 42; out of memory, compile and shape errors exit 1."""

from __future__ import annotations

import socket

import pytest

from distillspec.contract import RETRYABLE_EXIT_CODES, TrainerExit
from trainer.exit_codes import RetryableError, UserError
from trainer.failures import classify

jax = pytest.importorskip("jax")
import jax.numpy as jnp  # noqa: E402

# Messages as XLA writes them (TPU compile-time and run-time out-of-memory, CPU allocation failure).
XLA = {
    "tpu_compile_oom": "RESOURCE_EXHAUSTED: XLA:TPU compile permanent error. Ran out of memory in memory space hbm. "
    "Used 20.50G of 15.48G hbm. Exceeded hbm capacity by 5.02G.",
    "tpu_runtime_oom": "RESOURCE_EXHAUSTED: Error allocating device buffer: Attempting to allocate 1.00G. That was "
    "not possible. There are 512.00M free.",
    "cpu_oom": "RESOURCE_EXHAUSTED: Out of memory while trying to allocate 8589934592 bytes.",
    "compile": "INVALID_ARGUMENT: during context [hlo verifier]: Expected instruction to have shape equal to f32[8]",
    "mosaic": "INTERNAL: Mosaic failed to compile TPU kernel: unsupported shape",
    "unavailable": "UNAVAILABLE: The TPU runtime is unavailable: device lost",
    "deadline": "DEADLINE_EXCEEDED: Barrier timed out. Id: step_barrier",
    "coordinator": "INTERNAL: Coordination service heartbeat timed out; the leader task was lost",
    "other": "INTERNAL: something nobody has seen before",
}


def xla(key: str) -> Exception:
    return jax.errors.JaxRuntimeError(XLA[key])


@pytest.mark.parametrize("key", ["tpu_compile_oom", "tpu_runtime_oom", "cpu_oom"])
def test_device_out_of_memory_is_a_user_error_not_retried(key):
    failure = classify(xla(key))
    assert failure.code == TrainerExit.USER_ERROR and failure.reason == "out_of_memory"
    assert int(failure.code) not in RETRYABLE_EXIT_CODES
    assert "per_device_batch_size" in failure.message


def test_host_out_of_memory_is_a_user_error():
    failure = classify(MemoryError("Unable to allocate 8.00 GiB for an array"))
    assert (failure.code, failure.reason) == (TrainerExit.USER_ERROR, "out_of_memory")


@pytest.mark.parametrize("key", ["compile", "mosaic"])
def test_compile_errors_exit_1(key):
    assert (classify(xla(key)).code, classify(xla(key)).reason) == (TrainerExit.USER_ERROR, "compile_error")


@pytest.mark.parametrize(
    "make",
    [
        lambda: jnp.dot(jnp.ones((2, 3)), jnp.ones((4, 5))),
        lambda: jnp.ones((2, 3)) + jnp.ones((4, 5)),
        lambda: jnp.ones((2, 3)).reshape(7),
    ],
)
def test_shape_errors_exit_1(make):
    with pytest.raises((TypeError, ValueError)) as raised:
        make()
    failure = classify(raised.value)
    assert (failure.code, failure.reason) == (TrainerExit.USER_ERROR, "shape_error")


@pytest.mark.parametrize("key, reason", [("unavailable", "transient_device"), ("deadline", "transient_device")])
def test_transient_device_errors_are_retried(key, reason):
    failure = classify(xla(key))
    assert (failure.code, failure.reason) == (TrainerExit.RETRYABLE, reason)
    assert int(failure.code) in RETRYABLE_EXIT_CODES


def test_a_lost_coordinator_is_retried():
    assert (classify(xla("coordinator")).code, classify(xla("coordinator")).reason) == (
        TrainerExit.RETRYABLE,
        "coordinator",
    )


def test_an_unknown_xla_error_is_not_retried():
    assert classify(xla("other")).code == TrainerExit.INTERNAL


def test_refused_connection_is_transient_io():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, not listening: connecting is refused
        with pytest.raises(ConnectionRefusedError) as raised:
            socket.create_connection(("127.0.0.1", port), timeout=5)
    assert (classify(raised.value).code, classify(raised.value).reason) == (TrainerExit.RETRYABLE, "transient_io")


def test_a_damaged_parquet_file_is_not_retried_but_transient_io_is(tmp_path):
    """pyarrow's verdict on a damaged page is an OSError without an errno ("Couldn't deserialize thrift"); it was
    retried (exit 42) like a dropped connection. A dropped connection, a timeout and EIO still are."""
    import errno

    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "damaged.parquet"
    pq.write_table(pa.table({"text": [f"row {i}" for i in range(40)]}), path, row_group_size=8)
    column = pq.ParquetFile(path).metadata.row_group(2).column(0)
    start = column.dictionary_page_offset or column.data_page_offset
    raw = bytearray(path.read_bytes())
    raw[start : start + 16] = b"\xff" * 16  # a page header; the footer stays readable
    path.write_bytes(bytes(raw))
    with pytest.raises(OSError) as raised:
        pq.ParquetFile(path).read_row_group(2)
    assert raised.value.errno is None
    failure = classify(raised.value)
    assert (failure.code, failure.reason) == (TrainerExit.USER_ERROR, "user_error")
    assert "deserialize thrift" in failure.message and "retrying would fail again" in failure.message
    transient = [
        ConnectionResetError(errno.ECONNRESET, "Connection reset by peer"),
        TimeoutError("The read operation timed out"),
        OSError(errno.EIO, "Input/output error"),
        OSError("Server disconnected"),  # an HTTP client's errno-less OSError
    ]
    for error in transient:
        assert (classify(error).code, classify(error).reason) == (TrainerExit.RETRYABLE, "transient_io"), error


def test_a_missing_file_is_not_retried(tmp_path):
    with pytest.raises(FileNotFoundError) as raised:
        open(tmp_path / "absent")
    assert classify(raised.value).code == TrainerExit.USER_ERROR


def test_a_storage_librarys_refusal_is_a_user_error_naming_the_path(tmp_path):
    """TensorStore (Orbax's writer) raises ValueError with the OS error in its text: a full disk
    (`RESOURCE_EXHAUSTED: ... No space left on device [os_error_code='28']`) ended as an internal error, exit 70.
    A real one here: a write below a file (ENOTDIR), as a full or read-only disk would refuse it."""
    import tensorstore as ts

    from trainer.exit_codes import OutputNotWritable, storage_failure

    (tmp_path / "afile").write_text("x")
    store = ts.KvStore.open({"driver": "file", "path": str(tmp_path / "afile" / "sub") + "/"}).result()
    with pytest.raises(ValueError) as raised:
        store.write("k", b"v").result()
    assert classify(raised.value).code == TrainerExit.USER_ERROR  # not TrainerExit.INTERNAL
    refused = storage_failure(str(tmp_path), raised.value)
    assert isinstance(refused, OutputNotWritable) and "Not a directory" in refused.message
    full = ValueError("RESOURCE_EXHAUSTED: Error writing ... No space left on device [os_error_code='28']")
    assert isinstance(storage_failure("ckpt", full), OutputNotWritable)
    assert classify(ValueError("RESOURCE_EXHAUSTED: something else")).code == TrainerExit.INTERNAL


def test_trainer_errors_keep_their_code_and_hint():
    assert classify(RetryableError("bucket unreachable")).code == TrainerExit.RETRYABLE
    failure = classify(UserError("no teacher", "set teacher.load_parameters_path"))
    assert failure.code == TrainerExit.USER_ERROR and failure.reason == "user_error"
    assert failure.message == "no teacher (hint: set teacher.load_parameters_path)"


def test_anything_else_is_internal():
    failure = classify(KeyError("params"))
    assert failure.code == TrainerExit.INTERNAL and "DISTILLCTL_DEBUG" in failure.message


def test_an_output_on_a_scheme_with_no_filesystem_here_is_not_retried():
    # `output_dir: hdfs://x/y` exited 42 ("Unable to load libjvm"): the JobSet restarted it to the same end.
    from trainer.exit_codes import OutputNotWritable, storage_failure
    from trainer.metrics_io import check_writable

    for url in ("hdfs://x/y", "nosuchscheme://x/y", "s3://b/y"):
        with pytest.raises(OutputNotWritable) as refused:
            check_writable(url)
        # in one line, validate's words: it was fsspec's (89 lines of libjvm for hdfs://, "Install s3fs" for s3://)
        said = refused.value.message
        assert url in said and "writes gs:// and local paths, not" in said and "\n" not in said, said
        assert "output_dir at a bucket" in refused.value.hint, refused.value
    # any write failure on such a scheme, as on the storage the trainer knows only a refusal, is not retried
    assert isinstance(storage_failure("hdfs://x/y", OSError("flaky")), OutputNotWritable)
    assert not isinstance(storage_failure("gs://b/y", OSError("flaky")), OutputNotWritable)
