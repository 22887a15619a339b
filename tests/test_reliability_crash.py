"""A ``dcp.save`` killed with SIGKILL at random points: the path loads as the old checkpoint or the new one.

The parent owns a loopback rclone server (ETag hashing on) and a
:class:`~s3io.testing.faultproxy.FaultProxy` in front of it.  Each trial
starts a child process (forked from a forkserver: never a fork of pytest)
that saves a new state dict version to a path, and SIGKILLs
it either

- at a request boundary: the proxy holds the child's k-th request (k drawn
  over every request of a save) until the child is dead, then forwards it
  (a request in flight when a process dies may still reach the store), or
- after a random delay over the save's duration.

Then the parent loads the path straight from the server.

- Over an existing checkpoint: the load must return the previous version or
  the new one, bit for bit, every time.  Each save names its data files
  uniquely and its single PUT of ``.metadata`` is the switch, so there is no
  moment without a loadable checkpoint.  Afterwards
  :func:`s3io.dcp.delete_orphaned_files` removes what the killed saves left
  and the path still loads.
- A first save: the load returns the new version or fails with an error that
  names the missing ``.metadata``; it never returns anything else.
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
from s3io.dcp import S3StorageReader, S3StorageWriter, delete_orphaned_files
from s3io.testing.faultproxy import FaultProxy

pytestmark = [
    pytest.mark.filterwarnings("ignore:torch.distributed is disabled"),
]

SEED = 20240611
NUMEL = 1_500_000  # two tensors of 6 MB: two files, each a 2-part multipart upload (5 MiB parts)
PART_SIZE = 5 * 1024 * 1024
THREADS = 2
OVERWRITE_TRIALS = 20
FRESH_TRIALS = 6
# The children are forked from a forkserver: a fresh interpreter that imported torch and s3io
# once, never pytest with its threads and sockets.  26 spawned interpreters would cost ~2-3 s
# of CPU each (the file took 2.5 min instead of 1 on a busy 2-core machine); S3IO_CRASH_SPAWN=1
# spawns each child anyway.
START_METHOD = "spawn" if os.environ.get("S3IO_CRASH_SPAWN") == "1" else "forkserver"
PRELOAD = ["torch", "torch.distributed.checkpoint", "boto3", "s3io.dcp", "test_reliability_crash"]

OLD, NEW, NOTHING = "previous checkpoint loads", "new checkpoint loads", "load fails (no .metadata)"


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
    except (Exception, CheckpointException) as exc:  # checked by the caller
        return "failed", exc
    version = out["step"]
    assert version in versions, f"{path} loaded step {version!r}, which was never saved there (wrong data)"
    expected = state_dict(version)
    for name, tensor in expected.items():
        if isinstance(tensor, torch.Tensor):
            assert torch.equal(out[name], tensor), f"{path}: {name} is not version {version}'s (wrong data)"
    return "version", version


def _assert_missing_metadata(exc, path):
    text = str(exc)
    assert ".metadata" in text and ("NoSuchKey" in text or "not found" in text.lower()), (
        f"load of a half-saved {path} failed, but not with a clear missing-metadata error: {type(exc).__name__}: {text[:2000]}"
    )


def _leftover_uploads(server, bucket):
    """Multipart uploads a killed save left behind (aborted here; counted for the report)."""
    client = server.boto3_client()
    try:
        uploads = client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])
    except client.exceptions.ClientError:  # rclone answers NoSuchUpload when there are none
        return 0
    left = 0
    for upload in uploads:
        try:
            client.abort_multipart_upload(Bucket=bucket, Key=upload["Key"], UploadId=upload["UploadId"])
            left += 1
        except client.exceptions.NoSuchUpload:
            pass  # completed by a request the proxy was still forwarding when the list was taken: not left over
    return left


def _data_files(server, bucket, prefix):
    client = server.boto3_client()
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return sorted(o["Key"] for page in pages for o in page.get("Contents", []) if o["Key"].endswith(".distcp"))


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
        # Calibrate: an overwrite through the proxy (the case the trials exercise) tells
        # how many requests a save makes, which one is the switch, and how long it takes.
        path = f"s3://{bucket}/calibrate"
        _save(proxy.endpoint_url, path, 1)
        first_save = len(proxy.log)
        proxy.reset_stats()
        started = time.monotonic()
        _save(proxy.endpoint_url, path, 2)
        seconds = time.monotonic() - started
        log = proxy.log
        switch = [n for n, e in enumerate(log, 1) if e.method == "PUT" and e.path.endswith("/calibrate/.metadata")]
        assert len(switch) == 1, [f"{e.method} {e.kind} {e.path}" for e in log]
        assert log[-1].kind == "DeleteObject", "the previous checkpoint's files are deleted last"
        proxy.fail(500, times=None, when=gate)  # the gate only counts and holds
        try:
            calibration = dict(requests=len(log), first_save=first_save, switch=switch[0], seconds=seconds)
            yield rclone_server, bucket, proxy, gate, context, calibration
        finally:
            gate.release.set()
            stop = getattr(getattr(multiprocessing.forkserver, "_forkserver", None), "_stop", None)
            if START_METHOD == "forkserver" and stop is not None:
                stop()  # no process left behind (it would otherwise live until pytest exits)


def _wait(event, proc, seconds=60):
    """Wait for ``event`` while the child lives (a child that exited early fails the trial at once)."""
    deadline = time.monotonic() + seconds
    while not event.wait(0.05):
        if not proc.is_alive() or time.monotonic() > deadline:
            return event.is_set()
    return True


def _trial(rig, rng, path, new_version, previous_version, k=None):
    """Run one killed save; return (outcome, kind of kill, how it was killed, multipart uploads left behind).

    ``k``: kill before the k-th request; None: drawn (a request index or a delay).
    """
    server, bucket, proxy, gate, context, calibration = rig
    by_request = k is not None or rng.random() < 0.5
    if by_request:
        k = k or rng.randint(1, calibration["requests" if previous_version is not None else "first_save"])
        gate.arm(k)
        kind, how = "request boundary", f"kill before request {k}"
    else:
        gate.arm(None)
        # Timed from the child's first request: process start-up is not part of the save.
        delay = rng.uniform(0.0, 1.3 * calibration["seconds"])
        kind, how = "random delay", f"kill {delay * 1000:.0f} ms into the save"
    proc = context.Process(target=_child_save, args=(proxy.endpoint_url, path, new_version), daemon=True)
    proc.start()
    try:
        if by_request:
            assert _wait(gate.held, proc), f"the child never sent request {k} (exit code {proc.exitcode})"
            how += f" ({gate.held_request})"
        else:
            assert _wait(gate.first, proc), f"the child never sent a request (exit code {proc.exitcode})"
            time.sleep(delay)
    finally:
        proc.kill()  # SIGKILL
        proc.join(30)
        gate.release.set()
    if proc.exitcode == 0:
        how += " (the save had finished)"
    # Let the proxy finish forwarding whatever the child had sent, the held request included:
    # a late PUT of .metadata would switch the path after this trial's load.
    deadline = time.monotonic() + 30
    while (proxy.in_flight or any(e.duration is None for e in proxy.log)) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not proxy.in_flight, f"{how}: the proxy still forwards the dead child's requests after 30 s"
    proxy.reset_stats()
    leftover = _leftover_uploads(server, bucket)
    versions = {new_version} if previous_version is None else {new_version, previous_version}
    result, value = _load_outcome(server, path, versions)
    if result == "failed":
        if previous_version is not None:
            pytest.fail(f"{how}: {path} has no loadable checkpoint (it must stay the previous one): {value!r:.2000}")
        _assert_missing_metadata(value, path)
        outcome = NOTHING
    else:
        outcome = NEW if value == new_version else OLD
    return outcome, kind, how, leftover


def test_killed_overwrite_loads_old_or_new(crash_rig):
    server, bucket, proxy, gate, context, calibration = crash_rig
    rng = random.Random(SEED)
    path = f"s3://{bucket}/ckpt"
    good = 100
    _save(server.endpoint_url, path, good)
    outcomes = Counter()
    leftovers = 0
    report = []
    # The first trials pin the boundaries down: before the first request (the old checkpoint
    # must survive), with the PUT of .metadata held (either), with the last request, a DELETE
    # of a previous data file, held (the new checkpoint is complete); the rest are drawn.
    forced = [1, calibration["switch"], calibration["requests"]]
    for trial in range(OVERWRITE_TRIALS):
        new = 1000 + trial
        outcome, kind, how, leftover = _trial(crash_rig, rng, path, new, good, forced[trial] if trial < len(forced) else None)
        outcomes[kind, outcome] += 1
        leftovers += leftover
        report.append(f"trial {trial}: {how}: {outcome}")
        if outcome == NEW:
            good = new
    counts = "; ".join(f"{kind}: {outcome} x{n}" for (kind, outcome), n in sorted(outcomes.items()))
    print("\n".join(report), f"\noutcomes: {counts}; multipart uploads left behind: {leftovers}", sep="")
    assert report[0].endswith(OLD), report[0]
    assert report[len(forced) - 1].endswith(NEW), report[len(forced) - 1]

    # What the killed saves left: every data file the current .metadata does not
    # reference goes, and the path still loads the last complete save.
    before = _data_files(server, bucket, "ckpt/")
    config = S3ClientConfig(endpoint_url=server.endpoint_url)
    deleted = delete_orphaned_files("us-east-1", path, older_than=0, s3client_config=config)
    after = _data_files(server, bucket, "ckpt/")
    print(f"delete_orphaned_files: {len(deleted)} of {len(before)} data files deleted, {len(after)} kept")
    assert sorted(before) == sorted(after + [uri.split("/", 3)[3] for uri in deleted])
    assert deleted, "no trial killed a save between its first data file and its switch"
    assert _load_outcome(server, path, {good}) == ("version", good)
    assert len(after) == THREADS, after  # exactly the current checkpoint's files


def test_killed_first_save_never_loads_wrong_data(crash_rig):
    server, bucket, proxy, gate, context, calibration = crash_rig
    rng = random.Random(SEED + 1)
    outcomes = Counter()
    report = []
    for trial in range(FRESH_TRIALS):
        path = f"s3://{bucket}/fresh-{uuid.uuid4().hex[:8]}"
        outcome, kind, how, _ = _trial(crash_rig, rng, path, 3000 + trial, None)
        outcomes[kind, outcome] += 1
        report.append(f"trial {trial}: {how}: {outcome}")
    counts = "; ".join(f"{kind}: {outcome} x{n}" for (kind, outcome), n in sorted(outcomes.items()))
    print("\n".join(report), f"\noutcomes: {counts}", sep="")
    assert sum(n for (kind, outcome), n in outcomes.items() if outcome == NOTHING) > 0


def test_missing_checkpoint_error_names_the_metadata(crash_rig):
    # The clear error a killed first save leaves, pinned down once: a path with no checkpoint.
    server, bucket = crash_rig[0], crash_rig[1]
    kind, exc = _load_outcome(server, f"s3://{bucket}/never-saved", {0})
    assert kind == "failed"
    _assert_missing_metadata(exc, "never-saved")
    assert isinstance(exc, S3Exception) or "NoSuchKey" in str(exc)
