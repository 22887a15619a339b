"""What a suite gets (:class:`BenchContext`): options, progress lines, a scratch directory, and the S3 server.

The context owns the server's lifetime: the embedded ``rclone serve s3`` is
started on first use and stopped, with its temporary directory, by
:meth:`BenchContext.close`, which also runs at interpreter exit. A SIGTERM
reaches it because ``python -m s3io.bench`` turns the signal into
``SystemExit`` (see ``s3io/bench/__main__.py``).
"""
from __future__ import annotations

import atexit
import os
import shutil
import sys
import tempfile
import time
import uuid
from typing import Any, Dict, Optional, TextIO

from s3io.bench._endpoint import ExternalServer

__all__ = ["BenchContext"]


class BenchContext:
    """What a suite gets: options, progress output, a scratch directory and an S3 server.

    Parameters
    ----------
    repeat : int
        Rounds per interleaved measurement.
    quick : bool
        Smaller sizes and fewer rounds.
    endpoint, bucket, region : str, optional
        ``--endpoint``, ``--bucket``, ``--region``: use this S3 endpoint
        instead of the embedded rclone.
    stderr : file, optional
        Where progress lines go (default ``sys.stderr``).
    minutes : float, optional
        ``--minutes``: run time of the soak suite (None: its default).

    Attributes
    ----------
    repeat : int
        Rounds per interleaved measurement (``--repeat``).
    quick : bool
        ``--quick``: smaller sizes, for smoke runs and tests.
    tmpdir : str
        Scratch directory for this run, removed at exit.
    suite : str
        Name of the suite running now.
    run_id : str
        Short unique id of this run, for key prefixes on shared buckets.
    """

    def __init__(
        self,
        repeat: int = 5,
        quick: bool = False,
        endpoint: Optional[str] = None,
        bucket: Optional[str] = None,
        region: Optional[str] = None,
        stderr: Optional[TextIO] = None,
        minutes: Optional[float] = None,
    ) -> None:
        self.repeat = repeat
        self.quick = quick
        self.minutes = minutes  # soak: run time (None: the suite's default)
        self.endpoint = endpoint
        self.region = region
        self.suite = ""
        self.run_id = uuid.uuid4().hex[:8]
        self._bucket_name = bucket
        self._bucket: Optional[str] = None
        self._stderr = stderr
        self._server: Any = None
        self._saved_env: Dict[str, Optional[str]] = {}
        self._t0 = time.monotonic()
        self._suite_t0 = self._t0
        self.tmpdir = tempfile.mkdtemp(prefix="s3io-bench-")
        atexit.register(self.close)

    def start_suite(self, name: str) -> None:
        """Name the suite running now and restart the clock of its progress lines."""
        self.suite = name
        self._suite_t0 = time.monotonic()

    @property
    def suite_seconds(self) -> float:
        """Seconds since the running suite started."""
        return time.monotonic() - self._suite_t0

    def progress(self, msg: str) -> None:
        """Print one progress line on stderr: ``[suite +12.3s] msg``."""
        stream = self._stderr if self._stderr is not None else sys.stderr
        print("[%s +%.1fs] %s" % (self.suite or "bench", self.suite_seconds, msg), file=stream, flush=True)

    def server(self):
        """The S3 server for network suites (started on first call, stopped at exit).

        Embedded rclone (ETag hashing off) unless ``--endpoint`` was given. The
        process environment gets the server's credentials and region (not its
        endpoint), so libraries using the standard chain authenticate; pass
        ``server.endpoint_url`` explicitly, or use ``server.env()``.
        """
        if self._server is None:
            if self.endpoint:
                self.progress("using S3 endpoint %s" % self.endpoint)
                self._server = ExternalServer(self.endpoint, region=self.region, bucket=self._bucket_name)
            else:
                from s3io.testing.servers import RcloneServer

                self.progress("starting embedded rclone serve s3")
                self._server = RcloneServer(root_dir=os.path.join(self.tmpdir, "s3"), etag=False).start()
                self.progress("embedded S3 server at %s" % self._server.endpoint_url)
            env = self._server.env()
            env.pop("AWS_ENDPOINT_URL_S3", None)
            for name, value in env.items():
                self._saved_env.setdefault(name, os.environ.get(name))
                os.environ[name] = value
        return self._server

    def bucket(self) -> str:
        """One bucket for the whole run (``--bucket``, or created once on the server)."""
        if self._bucket is None:
            self._bucket = self.server().make_bucket()
        return self._bucket

    def close(self) -> None:
        """Stop the server, restore the environment, remove ``tmpdir``. Idempotent."""
        server, self._server = self._server, None
        if server is not None:
            try:
                server.stop()
            finally:
                for name, value in self._saved_env.items():
                    if value is None:
                        os.environ.pop(name, None)
                    else:
                        os.environ[name] = value
                self._saved_env.clear()
        if self.tmpdir and os.path.isdir(self.tmpdir):
            shutil.rmtree(self.tmpdir, ignore_errors=True)
        try:
            atexit.unregister(self.close)
        except Exception:
            pass

    def __enter__(self) -> "BenchContext":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
