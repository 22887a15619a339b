"""The boto3 side of the transport: the client for the operations s3io does not send itself.

It is built once per process and client, with s3io's settings: path-style
addressing for custom endpoints, no payload hashing, checksums only when
required (third-party stores reject the new defaults), no retries of its own
(s3io's ``_retry`` policy retries every call), and the stdlib timestamp parser.

Every session of the process shares one botocore data loader (the cache of
parsed service models): a new client then costs about 40 ms instead of
150-400 ms of JSON parsing, which every dataset, and every DataLoader worker
process (forked workers inherit the parent's cache), would pay again.
"""
from __future__ import annotations

import datetime
import email.utils
import logging
import os
import threading
from typing import Optional
from urllib.parse import urlparse

import boto3
import botocore
import botocore.config
import botocore.parsers

from . import _redact
from ._config import S3ClientConfig

__all__ = [
    "ResponseBody", "build_session", "build_client", "epoch_seconds", "is_aws_endpoint", "preload_models", "resolve_endpoint",
]

log = logging.getLogger(__name__)


def resolve_endpoint(endpoint: Optional[str], config: S3ClientConfig) -> Optional[str]:
    """The endpoint URL: the argument, the config, then ``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL``."""
    for value in (endpoint, config.endpoint_url, os.environ.get("AWS_ENDPOINT_URL_S3"), os.environ.get("AWS_ENDPOINT_URL")):
        if value:
            return value
    return None


def is_aws_endpoint(url: str) -> bool:
    """True for ``*.amazonaws.com`` endpoints (which take virtual-hosted addressing)."""
    host = (urlparse(url).hostname or "").lower()
    return host.endswith(".amazonaws.com") or host.endswith(".amazonaws.com.cn")


def epoch_seconds(value) -> int:
    """Seconds since the epoch of a botocore timestamp or an HTTP date (0 when missing)."""
    if isinstance(value, datetime.datetime):
        return int(value.timestamp())
    if isinstance(value, str):
        return int(email.utils.parsedate_to_datetime(value).timestamp())
    return int(value or 0)


def _parse_timestamp(value):
    """botocore's timestamp parser, minus dateutil for the two formats S3 sends.

    botocore parses every ``Last-Modified`` with dateutil, about 6% of the CPU
    of a small request; the stdlib parses RFC 1123 and ISO 8601 faster.
    """
    if isinstance(value, str):
        try:
            if value[:1].isdigit():
                parsed = datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
            else:
                parsed = email.utils.parsedate_to_datetime(value)
            if parsed.tzinfo is not None:
                return parsed
        except (ValueError, TypeError, IndexError):
            pass
    return botocore.parsers.DEFAULT_TIMESTAMP_PARSER(value)


_loader = None  # botocore's data loader, shared by the sessions of this process
_loader_lock = threading.Lock()


def _renew_loader_lock() -> None:
    global _loader_lock
    _loader_lock = threading.Lock()  # another thread may have held it at the fork


os.register_at_fork(after_in_child=_renew_loader_lock)


def _share_loader(session) -> None:
    """Give ``session`` the process's data loader (the first session's own becomes it).

    A loader holds parsed models only, nothing tied to a socket or a thread,
    so it is kept across fork.  s3io's sessions build clients only, never
    boto3 resources, which would look in the session's former loader.
    """
    global _loader
    core = session._session
    with _loader_lock:
        if _loader is None:
            _loader = core.get_component("data_loader")
        else:
            core.register_component("data_loader", _loader)


_preloaded = False


def preload_models() -> None:
    """Parse botocore's S3 models into the process's shared loader now: no request, no credentials looked up.

    For code that forks workers later (the datasets call it when they are
    built, before a DataLoader forks): each worker then builds its first
    client in ~40 ms instead of parsing the models again (150-400 ms, every
    epoch when workers are not persistent).  Costs that once per process;
    later calls return at once.
    """
    global _preloaded
    if _preloaded:
        return
    # Static placeholder keys: building a client must not walk the credential chain (IMDS).
    session = boto3.session.Session(aws_access_key_id="preload", aws_secret_access_key="preload", region_name="us-east-1")
    _share_loader(session)
    build_client(session, S3ClientConfig(), None, "s3io-preload")
    _preloaded = True


def build_session(config: S3ClientConfig, region: Optional[str]):
    """A boto3 session with the configured profile; its credentials are redacted from logs.

    Its data loader is the process's shared one (see the module docstring).
    """
    session = boto3.session.Session(profile_name=config.profile, region_name=region or None)
    _share_loader(session)
    if not config.unsigned:
        try:
            credentials = session.get_credentials()
            frozen = credentials.get_frozen_credentials() if credentials is not None else None
        except Exception:  # no credentials yet (lazy providers): botocore says so at the first request
            frozen = None
        if frozen is not None:
            _redact.remember_secrets((frozen.secret_key, frozen.token))
        _redact.install()
    parsers = session._session.get_component("response_parser_factory")
    parsers.set_parser_defaults(timestamp_parser=_parse_timestamp)
    return session


def build_client(session, config: S3ClientConfig, endpoint: Optional[str], user_agent: str, region: Optional[str] = None):
    """The boto3 S3 client for ``session`` (``region`` overrides the session's, for redirected buckets)."""
    path_style = config.force_path_style or (endpoint is not None and not is_aws_endpoint(endpoint))
    boto_config = botocore.config.Config(
        region_name=region or session.region_name or "us-east-1",
        signature_version=botocore.UNSIGNED if config.unsigned else None,
        s3={
            "addressing_style": "path" if path_style else "auto",
            # Bodies are not hashed for signing: a SHA-256 of every byte
            # uploaded costs more CPU than the upload itself.
            "payload_signing_enabled": False,
        },
        retries={"mode": "standard", "total_max_attempts": 1},  # s3io's RetryPolicy retries every call
        connect_timeout=config.connect_timeout,
        read_timeout=config.read_timeout,
        # Parallel part requests plus a few foreground ones, never waiting on the pool.
        max_pool_connections=max(10, 2 * config.max_concurrency + 4),
        user_agent_extra=user_agent,
        # Third-party stores reject the new default checksums (botocore >= 1.36), and
        # rclone returns whole-object checksums on ranged GETs that would fail validation.
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
        tcp_keepalive=True,
    )
    return session.client("s3", endpoint_url=endpoint, config=boto_config)


class ResponseBody:
    """A botocore response body: ``readinto`` from the socket, and connection hand-back.

    botocore's ``StreamingBody`` wraps a urllib3 ``HTTPResponse`` whose ``_fp``
    is an ``http.client.HTTPResponse``; its ``readinto`` goes from the socket
    straight into the destination, so a ranged GET costs no intermediate copy.
    When those attributes are missing (another HTTP layer), ``read`` plus one copy.
    """

    __slots__ = ("_body", "_raw", "_fp")

    def __init__(self, streaming_body) -> None:
        self._body = streaming_body
        raw = getattr(streaming_body, "_raw_stream", None)
        fp = getattr(raw, "_fp", None)
        # Only when urllib3 has buffered nothing and decodes nothing may we read
        # around it (botocore asks for decode_content=False).
        decoded = getattr(raw, "_decoded_buffer", None)
        if (
            fp is not None
            and callable(getattr(fp, "readinto", None))
            and getattr(raw, "_decoder", None) is None
            and (decoded is None or len(decoded) == 0)
        ):
            self._raw, self._fp = raw, fp
        else:
            self._raw, self._fp = None, None

    def readinto(self, view: memoryview) -> int:
        """Read up to ``len(view)`` bytes into ``view``; 0 at the end of the body."""
        if self._fp is not None:
            return self._fp.readinto(view)
        data = self._body.read(len(view))
        n = len(data)
        view[:n] = data
        return n

    def close(self, complete: bool = False) -> None:
        """Give the connection back to the pool if the body was read to its end, else drop it."""
        raw = self._raw
        try:
            if raw is not None:
                if complete and self._fp.isclosed():
                    raw.release_conn()  # what urllib3 does itself once a body is consumed
                else:
                    raw.close()  # unread bytes on the wire: the connection is unusable
                    raw.release_conn()
            else:
                self._body.close()
        except Exception:  # closing must never mask the real outcome
            log.debug("closing a response body failed", exc_info=True)
