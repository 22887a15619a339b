"""soak: repeated DCP saves and loads through random faults; nothing wrong, nothing leaked.

A small model (12 MB in 12 fp32 tensors, ``thread_count=2``: two ~6 MB
files, each a multipart upload of a 5 MiB and a ~1 MiB part) is saved and loaded back over and over, for
``--minutes`` (default 2; ``--quick`` 0.25), through a
:class:`~s3io.testing.faultproxy.FaultProxy` in front of the S3 server (the
embedded rclone unless ``--endpoint``) that injects a random fault into each
request with probability ``S3IO_SOAK_FAULT_RATE`` (default 0.05): 500, 503,
429, a connection dropped or a body truncated mid-response, a stall past the
read timeout, a reset during an upload.  Saves go to one of three paths in
turn, so most saves overwrite an older checkpoint.

Counted: operations, injected faults, retries (s3io's retry policy: requests
retried, and cut bodies resumed), clean failures (an
``S3Exception``, possibly inside torch's ``CheckpointException``), unclean
failures (anything else) and wrong results (a load that returned data no
save wrote).  The resident set size, threads and file descriptors are sampled
every half second; their peaks in the first and in the last minute are
compared (first and last quarter for runs under 4 minutes).

Targets: wrong results = 0, unclean failures = 0, multipart uploads left
in progress = 0, RSS growth (last minute's peak minus the first's)
<= 64 MiB, threads and file descriptors flat.
"""
from __future__ import annotations

import collections
import gc
import logging
import math
import os
import random
import re
import statistics
import threading
import time
import warnings
from typing import Dict, List, Optional, Set, Tuple

from s3io.bench._harness import Check, Row, SuiteResult

MiB = 1024 * 1024
PATHS = 3
TENSORS, NUMEL = 12, 250_000  # 12 MB: two files of ~6 MB, i.e. two-part multipart uploads
DEFAULT_MINUTES = 2.0
QUICK_MINUTES = 0.25
DEFAULT_FAULT_RATE = 0.05
READ_TIMEOUT = 2.0  # a stalled response costs at most this per attempt
SAMPLE_EVERY = 0.5
RSS_GROWTH_LIMIT = 64  # MiB


def _minutes(ctx) -> float:
    """``--minutes`` (when the harness has it), else ``S3IO_SOAK_MINUTES``, else the default."""
    value = getattr(ctx, "minutes", None)
    if value is None:
        value = os.environ.get("S3IO_SOAK_MINUTES")
    if value is None:
        return QUICK_MINUTES if ctx.quick else DEFAULT_MINUTES
    value = float(value)
    if not value > 0:
        raise ValueError("soak minutes must be positive, not %r" % (value,))
    return value


def _state_dict(version: int):
    import torch

    gen = torch.Generator().manual_seed(version)
    sd = {f"layers.{i}.weight": torch.randn(NUMEL, generator=gen) for i in range(TENSORS)}  # 12 MB
    sd["step"] = version
    return sd


def _blank():
    import torch

    sd = {f"layers.{i}.weight": torch.zeros(NUMEL) for i in range(TENSORS)}
    sd["step"] = -1
    return sd


def _matches(out) -> bool:
    import torch

    expected = _state_dict(out["step"])
    return all(torch.equal(out[k], v) for k, v in expected.items() if k != "step")


def _root(error: BaseException) -> BaseException:
    from torch.distributed.checkpoint.api import CheckpointException

    if isinstance(error, CheckpointException):
        failures = list(error.failures.values())
        if failures:
            failure = failures[0]
            error = failure[0] if isinstance(failure, tuple) else failure
    seen = set()
    current: Optional[BaseException] = error
    from s3io import S3Exception

    while current is not None and id(current) not in seen:
        if isinstance(current, S3Exception):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return error


def _is_clean(error: BaseException) -> bool:
    """An S3Exception, or torch's folding of s3io errors into the text of an AssertionError.

    torch reads ``.metadata`` itself and joins the storage reader's errors into one
    message ("global metadata read failed: ...; rank local metadata read failed: ...");
    each part must be s3io's own message, never a raw urllib3/botocore one.
    """
    from s3io import S3Exception

    root = _root(error)
    if isinstance(root, S3Exception):
        return True
    parts = re.findall(r"metadata read failed: (.*?)(?:; rank local|$)", str(root), re.S)
    return bool(parts) and all(p.startswith(("GetObject s3://", "HeadObject s3://", "s3://")) for p in parts)


class _Sampler:
    """Samples RSS, threads and open file descriptors every ``SAMPLE_EVERY`` seconds."""

    def __init__(self) -> None:
        self.samples: List[Tuple[float, int, int, int]] = []  # (t, rss bytes, threads, fds)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="soak-sampler", daemon=True)
        self._t0 = time.monotonic()

    def _sample(self) -> None:
        rss = 0
        try:
            with open("/proc/self/status") as f:
                match = re.search(r"^VmRSS:\s+(\d+) kB", f.read(), re.M)
            rss = int(match.group(1)) * 1024 if match else 0
        except OSError:
            pass
        try:
            fds = len(os.listdir("/proc/self/fd"))
        except OSError:
            fds = 0
        self.samples.append((time.monotonic() - self._t0, rss, threading.active_count(), fds))

    def _run(self) -> None:
        while not self._stop.wait(SAMPLE_EVERY):
            self._sample()

    def __enter__(self) -> "_Sampler":
        self._sample()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()

    def window(self, start: float, end: float) -> List[Tuple[float, int, int, int]]:
        return [s for s in self.samples if start <= s[0] <= end] or self.samples[:1]


class _ResumeCounter(logging.Handler):
    """Counts s3io's resumed bodies (``s3io._stream`` logs each at INFO)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.count = 0

    def emit(self, record) -> None:
        if "resumed" in record.getMessage():
            self.count += 1


def _drain(proxy, tally) -> None:
    """Add the proxy's requests and injected faults to ``tally``; reset the proxy's log."""
    log = proxy.log
    injected = proxy.faults_injected
    proxy.reset_stats()  # a request in flight right now is logged after: counted next time
    tally["requests"] += len(log)
    tally["faults"].update(injected)


def run(ctx) -> SuiteResult:
    import torch.distributed.checkpoint as dcp

    from s3io import S3ClientConfig
    from s3io.dcp import S3StorageReader, S3StorageWriter
    from s3io.testing.faultproxy import FaultProxy

    minutes = _minutes(ctx)
    rate = float(os.environ.get("S3IO_SOAK_FAULT_RATE", DEFAULT_FAULT_RATE))
    server = ctx.server()
    if not server.endpoint_url.startswith("http://"):
        raise RuntimeError("soak injects faults through an HTTP proxy: it needs an http:// endpoint, not %s" % server.endpoint_url)
    bucket = server.make_bucket()
    prefix = "soak-%s" % ctx.run_id
    boto = server.boto3_client()

    resumes = _ResumeCounter()
    stream_log = logging.getLogger("s3io._stream")
    saved_level = stream_log.level
    stream_log.setLevel(logging.INFO)
    stream_log.addHandler(resumes)

    tally = dict(requests=0, faults=collections.Counter())
    policies = {}  # the retry policies of the clients the DCP classes used (they share clients)
    counts: Dict[str, int] = dict(saves=0, loads=0, save_failed=0, load_failed=0, unclean=0, wrong=0)
    unclean_examples: List[str] = []
    wrong_examples: List[str] = []
    # Versions a load of each path may return: every save that may have written it.
    possible: Dict[str, Set[int]] = {}
    duration = minutes * 60.0
    version = 0
    rng = random.Random(1234)
    with FaultProxy(server.endpoint_url) as proxy:
        config = S3ClientConfig(endpoint_url=proxy.endpoint_url, part_size=5 * MiB, max_attempts=5,
                                connect_timeout=2.0, read_timeout=READ_TIMEOUT)
        proxy.set_random_faults(rate, seed=int(os.environ.get("S3IO_SOAK_SEED", "0")), stall_seconds=READ_TIMEOUT + 1)
        ctx.progress("soak for %.1f min, fault rate %.3f per request, server %s" % (minutes, rate, server.endpoint_url))
        started = time.monotonic()
        last_report = started
        with _Sampler() as sampler, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            while time.monotonic() - started < duration:
                version += 1
                path = "s3://%s/%s/ckpt-%d" % (bucket, prefix, version % PATHS)
                options = possible.setdefault(path, set())
                options.add(version)  # a failed save may still have completed
                try:
                    writer = S3StorageWriter("us-east-1", path, s3client_config=config, thread_count=2)
                    policies[id(writer.fs.client.transport.retry)] = writer.fs.client.transport.retry
                    dcp.save(_state_dict(version), storage_writer=writer)
                    counts["saves"] += 1
                    options.intersection_update({version})  # the save completed: only this version
                except BaseException as error:  # CheckpointException is a BaseException
                    if isinstance(error, KeyboardInterrupt):
                        raise
                    counts["save_failed"] += 1
                    if not _is_clean(error):
                        counts["unclean"] += 1
                        unclean_examples.append("save: %s: %s" % (type(error).__name__, str(error)[:300]))
                # Load this path and, now and then, another one (it may hold an older version).
                for load_path in (path, "s3://%s/%s/ckpt-%d" % (bucket, prefix, rng.randrange(PATHS))):
                    if load_path not in possible:
                        continue
                    out = _blank()
                    try:
                        reader = S3StorageReader("us-east-1", load_path, s3client_config=config)
                        policies[id(reader.fs.client.transport.retry)] = reader.fs.client.transport.retry
                        dcp.load(out, storage_reader=reader)
                        counts["loads"] += 1
                        if out["step"] not in possible[load_path] or not _matches(out):
                            counts["wrong"] += 1
                            wrong_examples.append("%s: step %r, expected one of %s" % (load_path, out["step"], sorted(possible[load_path])))
                    except BaseException as error:
                        if isinstance(error, KeyboardInterrupt):
                            raise
                        counts["load_failed"] += 1
                        if not _is_clean(error):
                            counts["unclean"] += 1
                            unclean_examples.append("load: %s: %s" % (type(error).__name__, str(error)[:300]))
                    del out
                # Fold the proxy's log into counters and drop it: the proxy runs in this
                # process, and a log of every request would grow the RSS being measured.
                _drain(proxy, tally)
                gc.collect()
                now = time.monotonic()
                if now - last_report >= 15:
                    last_report = now
                    rss = sampler.samples[-1][1] / MiB if sampler.samples else 0
                    ctx.progress("%3.0f s: %d saves, %d loads, %d failed cleanly, %d faults, %d wrong, RSS %.0f MiB" % (
                        now - started, counts["saves"], counts["loads"], counts["save_failed"] + counts["load_failed"],
                        sum(tally["faults"].values()), counts["wrong"], rss))
        elapsed = time.monotonic() - started
        _drain(proxy, tally)
        injected = tally["faults"]
        proxy.clear_faults()
    stream_log.removeHandler(resumes)
    stream_log.setLevel(saved_level)

    retries = sum(policy.retries for policy in policies.values()) - resumes.count
    try:
        uploads = boto.list_multipart_uploads(Bucket=bucket).get("Uploads", [])
    except Exception:  # rclone answers NoSuchUpload when there are none
        uploads = []
    leftover_uploads = len([u for u in uploads if u["Key"].startswith(prefix)])

    # First and last minute (quarters for short runs).
    window = elapsed / 4 if elapsed < 240 else 60.0
    first = sampler.window(0, window)
    last = sampler.window(elapsed - window, elapsed + 1)
    rss_first = max(s[1] for s in first) / MiB
    rss_last = max(s[1] for s in last) / MiB
    threads_first, threads_last = max(s[2] for s in first), max(s[2] for s in last)
    fds_first, fds_last = max(s[3] for s in first), max(s[3] for s in last)
    label = "first/last minute" if elapsed >= 240 else "first/last quarter"
    first_label, last_label = ("first minute", "last minute") if elapsed >= 240 else ("first quarter", "last quarter")

    # The RSS curve: peak per window, 20 windows at most (whole minutes for long runs).
    curve_step = max(30, int(math.ceil(elapsed / 20 / 30.0)) * 30)
    curve = [max(s[1] for s in sampler.window(t, t + curve_step)) / MiB for t in range(0, int(elapsed) + 1, curve_step)]

    case = "soak %.1f min" % (elapsed / 60)
    operations = counts["saves"] + counts["loads"] + counts["save_failed"] + counts["load_failed"]
    rows = [
        Row(case, "operations (saves + loads)", operations, "count"),
        Row(case, "saves ok", counts["saves"], "count"),
        Row(case, "save failed cleanly", counts["save_failed"], "count"),
        Row(case, "loads ok", counts["loads"], "count"),
        Row(case, "load failed cleanly", counts["load_failed"], "count"),
        Row(case, "requests", tally["requests"], "count"),
        Row(case, "faults injected", sum(injected.values()), "count"),
        Row(case, "requests retried (s3io)", retries, "count"),
        Row(case, "bodies resumed (s3io)", resumes.count, "count"),
        Row(case, "wrong results", counts["wrong"], "count"),
        Row(case, "unclean failures", counts["unclean"], "count"),
        Row(case, "peak RSS, %s" % first_label, rss_first, "MiB"),
        Row(case, "peak RSS, %s" % last_label, rss_last, "MiB"),
        Row(case, "threads, %s" % first_label, threads_first, "count"),
        Row(case, "threads, %s" % last_label, threads_last, "count"),
        Row(case, "open fds, %s" % first_label, fds_first, "count"),
        Row(case, "open fds, %s" % last_label, fds_last, "count"),
    ]
    checks = [
        Check.at_most("wrong results", counts["wrong"], 0, ""),
        Check.at_most("unclean failures", counts["unclean"], 0, ""),
        Check.at_most("multipart uploads left in progress", leftover_uploads, 0, ""),
        Check.at_most("RSS growth, %s (MiB)" % label, round(rss_last - rss_first, 1), RSS_GROWTH_LIMIT, ""),
        Check.at_most("thread growth, %s" % label, threads_last - threads_first, 2, ""),
        Check.at_most("fd growth, %s" % label, fds_last - fds_first, 8, ""),
        Check.at_least("operations", operations, 1, ""),
    ]
    notes = [
        "faults by kind: %s" % ", ".join("%s %d" % kv for kv in sorted(injected.items())),
        "fault rate %.3f per request; client: max_attempts 5, read_timeout %.0f s, part_size 5 MiB" % (rate, READ_TIMEOUT),
        "RSS samples: %d, median %.0f MiB" % (len(sampler.samples), statistics.median(s[1] for s in sampler.samples) / MiB),
        "peak RSS per %d s (MiB): %s" % (curve_step, " ".join("%.0f" % v for v in curve)),
    ]
    notes += ["UNCLEAN: " + text for text in unclean_examples[:5]]
    notes += ["WRONG: " + text for text in wrong_examples[:5]]
    return SuiteResult(rows=rows, checks=checks, notes=notes)
