"""A ``dcp.save`` killed with SIGKILL at random points never leaves a checkpoint that loads wrong data.

The parent owns a loopback rclone server (ETag hashing on) and a
:class:`~s3io.testing.faultproxy.FaultProxy` in front of it.  Each trial
starts a child process (spawned: a fresh interpreter, never a fork of
pytest) that saves a new state dict version to a path, and SIGKILLs
it either

- at a request boundary: the proxy holds the child's k-th request (k drawn
  over every request of a save) until the child is dead, then forwards it
  (a request in flight when a process dies may still reach the store), or
- after a random delay over the save's duration.

Then the parent loads the path straight from the server.  The load must
either return one complete version bit for bit (the previous one, or the new
one if the save got far enough) or fail with an error that names the missing
``.metadata``; a load that returns anything else is a wrong-data failure.

What the design gives (see /work/plan/reliability-findings.md): overwriting
a checkpoint in place deletes the old ``.metadata`` before the first data file
is replaced, so a save killed after that point leaves a path that fails to
load (clearly) until the next successful save; the previous checkpoint is
lost, never mixed with the new one.
"""
import os
import random
import threading
import time
import uuid
import warnings
from collections import Counter

import pytest
import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.api import CheckpointException

from s3io import S3ClientConfig, S3Exception
from s3io.dcp import S3StorageReader, S3StorageWriter
from s3io.testing.faultproxy import FaultProxy

pytestmark = [
    pytest.mark.filterwarnings("ignore:torch.distributed is disabled"),
    pytest.mark.filterwarnings("ignore:Detected an existing checkpoint"),
]

SEED = 20240611
NUMEL = 1_500_000  # two tensors of 6 MB: two files, each a 2-part multipart upload (5 MiB parts)
PART_SIZE = 5 * 1024 * 1024
THREADS = 2
OVERWRITE_TRIALS = 14
FRESH_TRIALS = 6
# Each child is a fresh interpreter (multiprocessing "spawn": never a fork of pytest with its
# threads and sockets) that imports torch and s3io, ~2-3 s of CPU each.  S3IO_CRASH_FORKSERVER=1
# forks the children from a forkserver that imported them once (also a clean process): faster
# on a busy machine.
START_METHOD = "forkserver" if os.environ.get("S3IO_CRASH_FORKSERVER") == "1" else "spawn"
PRELOAD = ["torch", "torch.distributed.checkpoint", "boto3", "s3io.dcp", "test_reliability_crash"]


def _child_save(endpoint, path, version):
    """The child: save ``version`` to ``path`` (killed before, during or after)."""
    warnings.filterwarnings("ignore")
    config = S3ClientConfig(endpoint_url=endpoint, part_size=PART_SIZE, max_attempts=2)
    dcp.save(state_dict(version), storage_writer=S3StorageWriter("us-east-1", path, s3client_config=config, thread_count=THREADS))


def state_dict(version):
    """Version ``version`` of a small model: every value differs between versions."""
    gen = torch.Generator().manual_seed(version)
    return {
        "layer.0.weight": torch.randn(NUMEL, generator=gen),
        "layer.1.weight": torch.randn(NUMEL, generator=gen),
        "layer.1.bias": torch.arange(64, dtype=torch.int64) + version,
        "step": version,
    }


def _blank():
    return {
        "layer.0.weight": torch.zeros(NUMEL),
        "layer.1.weight": torch.zeros(NUMEL),
        "layer.1.bias": torch.zeros(64, dtype=torch.int64),
        "step": -1,
    }


def _save(server_or_proxy_url, path, version):
    config = S3ClientConfig(endpoint_url=server_or_proxy_url, part_size=PART_SIZE)
    dcp.save(state_dict(version), storage_writer=S3StorageWriter("us-east-1", path, s3client_config=config, thread_count=THREADS))


def _load_outcome(server, path, versions):
    """``("version", v)`` if the load returned version v exactly, ``("failed", exc)`` if it raised.

    Anything else (a load that returns a mix, or a version that was never
    saved there) fails the test: that is wrong data.
    """
    config = S3ClientConfig(endpoint_url=server.endpoint_url, max_attempts=2)
    out = _blank()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            dcp.load(out, storage_reader=S3StorageReader("us-east-1", path, s3client_config=config))
    except (Exception, CheckpointException) as exc:  # a clear error is allowed; checked by the caller
        return "failed", exc
    version = out["step"]
    assert version in versions, f"{path} loaded step {version!r}, which was never saved there (wrong data)"
    expected = state_dict(version)
    for name, tensor in expected.items():
        if isinstance(tensor, torch.Tensor):
            assert torch.equal(out[name], tensor), f"{path}: {name} is not version {version}'s (wrong data)"
    return "version", version


def _assert_clear_failure(exc, path):
    text = str(exc)
    assert ".metadata" in text and ("NoSuchKey" in text or "not found" in text.lower()), (
        f"load of a half-saved {path} failed, but not with a clear missing-metadata error: {type(exc).__name__}: {text[:2000]}"
    )


def _leftover_uploads(server, bucket):
    """Multipart uploads a killed save left behind (aborted here; counted for the findings)."""
    client = server.boto3_client()
    try:
        uploads = client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])
    except client.exceptions.ClientError:  # rclone answers NoSuchUpload when there are none
        return 0
    for upload in uploads:
        client.abort_multipart_upload(Bucket=bucket, Key=upload["Key"], UploadId=upload["UploadId"])
    return len(uploads)


class _Gate:
    """A proxy predicate: notes the first request of a save, holds the k-th until released."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.count = 0
        self.hold_at = None
        self.first = threading.Event()
        self.held = threading.Event()
        self.release = threading.Event()
        self.held_request = None

    def arm(self, k) -> None:
        with self.lock:
            self.count = 0
            self.hold_at = k
        for event in (self.first, self.held, self.release):
            event.clear()
        self.held_request = None

    def __call__(self, req) -> bool:
        with self.lock:
            self.count += 1
            hold = self.count == self.hold_at
        self.first.set()
        if hold:
            self.held_request = f"{req.method} {req.kind} {req.key}"
            self.held.set()
            self.release.wait(30)
        return False  # never injects a fault itself


@pytest.fixture(scope="module")
def crash_rig(rclone_server):
    """(server, bucket, proxy, gate, mp context, calibration) for the whole module."""
    import multiprocessing
    import multiprocessing.forkserver

    context = multiprocessing.get_context(START_METHOD)
    if START_METHOD == "forkserver":
        context.set_forkserver_preload(PRELOAD)
    gate = _Gate()
    with FaultProxy(rclone_server.endpoint_url) as proxy:
        bucket = rclone_server.make_bucket()
        # Calibrate: a save through the proxy tells how many requests a save makes and how long it takes.
        path = f"s3://{bucket}/calibrate"
        _save(proxy.endpoint_url, path, 1)
        proxy.reset_stats()
        started = time.monotonic()
        _save(proxy.endpoint_url, path, 2)  # an overwrite: the case the trials exercise
        seconds = time.monotonic() - started
        requests = len(proxy.log)
        proxy.fail(500, times=None, when=gate)  # the gate only counts and holds
        try:
            yield rclone_server, bucket, proxy, gate, context, dict(requests=requests, seconds=seconds)
        finally:
            gate.release.set()
            stop = getattr(getattr(multiprocessing.forkserver, "_forkserver", None), "_stop", None)
            if START_METHOD == "forkserver" and stop is not None:
                stop()  # no process left behind (it would otherwise live until pytest exits)


def _trial(rig, rng, path, new_version, previous_version, k=None):
    """Run one killed save; return (outcome, how it was killed, multipart uploads left behind).

    ``k``: kill before the k-th request; None: drawn (a request index or a delay).
    """
    server, bucket, proxy, gate, context, calibration = rig
    by_request = k is not None or rng.random() < 0.5
    if by_request:
        k = k or rng.randint(1, calibration["requests"])
        gate.arm(k)
        how = f"kill before request {k}"
    else:
        gate.arm(None)
        # Timed from the child's first request: process start-up is not part of the save.
        delay = rng.uniform(0.0, 1.3 * calibration["seconds"])
        how = f"kill {delay * 1000:.0f} ms into the save"
    proc = context.Process(target=_child_save, args=(proxy.endpoint_url, path, new_version), daemon=True)
    proc.start()
    try:
        if by_request:
            assert gate.held.wait(60), f"the child never sent request {k} (exit code {proc.exitcode})"
            how += f" ({gate.held_request})"
        else:
            assert gate.first.wait(60), f"the child never sent a request (exit code {proc.exitcode})"
            time.sleep(delay)
    finally:
        proc.kill()  # SIGKILL
        proc.join(30)
        gate.release.set()
    if proc.exitcode == 0:
        how += " (the save had finished)"
    # Let the proxy finish forwarding whatever the child had in flight.
    deadline = time.monotonic() + 10
    while any(entry.duration is None for entry in proxy.log) and time.monotonic() < deadline:
        time.sleep(0.01)
    proxy.reset_stats()
    leftover = _leftover_uploads(server, bucket)
    versions = {new_version} if previous_version is None else {new_version, previous_version}
    kind, value = _load_outcome(server, path, versions)
    if kind == "failed":
        _assert_clear_failure(value, path)
        outcome = "load fails (clear error)"
    elif value == new_version:
        outcome = "new checkpoint loads"
    else:
        outcome = "previous checkpoint loads"
    return outcome, how, leftover


def test_killed_overwrite_never_loads_wrong_data(crash_rig):
    server, bucket, proxy, gate, context, calibration = crash_rig
    rng = random.Random(SEED)
    path = f"s3://{bucket}/ckpt"
    good = 100
    _save(server.endpoint_url, path, good)
    outcomes = Counter()
    leftovers = 0
    report = []
    # The first trials pin the boundaries down: before the first request (the old checkpoint
    # must survive), with the DELETE of the old .metadata in flight (request 3) and with the
    # last request in flight (the new checkpoint is complete); the rest are drawn.
    forced = [1, 3, calibration["requests"]]
    for trial in range(OVERWRITE_TRIALS):
        new = 1000 + trial
        outcome, how, leftover = _trial(crash_rig, rng, path, new, good, forced[trial] if trial < len(forced) else None)
        outcomes[outcome] += 1
        leftovers += leftover
        report.append(f"trial {trial}: {how}: {outcome}")
        if outcome == "new checkpoint loads":
            good = new
        elif outcome == "load fails (clear error)":
            # The path is recoverable: the next save over it works.
            good = 2000 + trial
            _save(server.endpoint_url, path, good)
            assert _load_outcome(server, path, {good}) == ("version", good)
    print("\n".join(report), f"\noutcomes: {dict(outcomes)}; multipart uploads left behind: {leftovers}", sep="")
    assert report[0].endswith("previous checkpoint loads"), report[0]
    assert report[len(forced) - 1].endswith("new checkpoint loads"), report[len(forced) - 1]
    assert outcomes["load fails (clear error)"] > 0


def test_killed_first_save_never_loads_wrong_data(crash_rig):
    server, bucket, proxy, gate, context, calibration = crash_rig
    rng = random.Random(SEED + 1)
    outcomes = Counter()
    report = []
    for trial in range(FRESH_TRIALS):
        path = f"s3://{bucket}/fresh-{uuid.uuid4().hex[:8]}"
        outcome, how, _ = _trial(crash_rig, rng, path, 3000 + trial, None)
        assert outcome != "previous checkpoint loads"
        outcomes[outcome] += 1
        report.append(f"trial {trial}: {how}: {outcome}")
    print("\n".join(report), f"\noutcomes: {dict(outcomes)}", sep="")
    assert outcomes["load fails (clear error)"] > 0


def test_missing_checkpoint_error_names_the_metadata(crash_rig):
    # The "clear error" the trials accept, pinned down once: a path with no checkpoint.
    server, bucket = crash_rig[0], crash_rig[1]
    kind, exc = _load_outcome(server, f"s3://{bucket}/never-saved", {0})
    assert kind == "failed"
    _assert_clear_failure(exc, "never-saved")
    assert isinstance(exc, S3Exception) or "NoSuchKey" in str(exc)
