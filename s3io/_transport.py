"""Transport: the requests of one :class:`~s3io.S3Client`, per process.

It owns what must not cross a fork: the boto3 client (its connections), and
the thread pool that runs parallel part requests.  After a fork the child
builds its own on first use and leaves the parent's untouched (their sockets
are shared with the parent).  Every error comes out as an
:class:`~s3io.S3Exception` subclass (see ``_errors``).

The hot operations (GET into caller memory, HEAD, PUT, UploadPart) have
methods of their own that return plain values, so the layers above never see
a botocore response; everything else goes through :meth:`Transport.call`.
"""
from __future__ import annotations

import datetime
import email.utils
import logging
import os
import threading
import weakref
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Dict, Optional
from urllib.parse import urlparse

import boto3
import botocore
import botocore.config
import botocore.exceptions
import botocore.parsers

from . import _redact
from ._config import S3ClientConfig
from ._errors import REQUEST_ERRORS, translate
from ._metadata import HeadObjectResult
from ._pin import normalize_etag

__all__ = ["Transport", "GetResponse", "ResponseBody", "epoch_seconds", "is_aws_endpoint", "operation_name", "resolve_endpoint"]

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
    """Seconds since the epoch of a botocore timestamp (0 when missing)."""
    if isinstance(value, datetime.datetime):
        return int(value.timestamp())
    return int(value or 0)


def _parse_timestamp(value):
    """botocore's timestamp parser, minus dateutil for the two formats S3 sends.

    botocore parses every ``Last-Modified`` with dateutil, about 6% of the CPU
    of a small ranged GET; the stdlib parses RFC 1123 and ISO 8601 faster.
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


def operation_name(operation: str) -> str:
    """``get_object`` -> ``GetObject``: the S3 name errors show."""
    return "".join(part.capitalize() for part in operation.split("_"))


class ResponseBody:
    """One HTTP response body: ``readinto`` from the socket, and connection hand-back.

    botocore's ``StreamingBody`` wraps a urllib3 ``HTTPResponse`` whose ``_fp``
    is an ``http.client.HTTPResponse``; its ``readinto`` goes from the socket
    straight into the destination (large reads bypass the socket file's
    buffer), so a ranged GET costs no intermediate copy.  When those
    attributes are missing (another HTTP layer), ``read`` plus one copy.
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

    def close(self, complete: bool) -> None:
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


class GetResponse:
    """The headers of one GET response and its body.

    Attributes
    ----------
    status : int
    content_length : int or None
    content_range : str or None
    etag, last_modified : str or None
        As sent (``last_modified`` is the raw header text).
    checksum_crc32, checksum_type : str or None
        Full-object checksum headers, if the store sent them.
    body : ResponseBody
    """

    __slots__ = (
        "status", "content_length", "content_range", "etag", "last_modified", "checksum_crc32", "checksum_type", "body",
    )

    def __init__(self, status, content_length, content_range, etag, last_modified, checksum_crc32, checksum_type, body):
        self.status = status
        self.content_length = content_length
        self.content_range = content_range
        self.etag = etag
        self.last_modified = last_modified
        self.checksum_crc32 = checksum_crc32
        self.checksum_type = checksum_type
        self.body = body


# Per-process state: rebuilt lazily in a child; the parent's objects are kept, never closed or used.
_all_transports: "weakref.WeakSet[Transport]" = weakref.WeakSet()
_orphans: list = []


def _after_fork_in_child() -> None:
    for transport in list(_all_transports):
        transport._reset_after_fork()


os.register_at_fork(after_in_child=_after_fork_in_child)


class Transport:
    """Sends the requests of one client, from any thread.

    Parameters
    ----------
    region : str or None
        None: boto3's chain (``AWS_REGION``, ...), then ``us-east-1``.
    endpoint_url : str or None
        None: AWS's endpoint for the region.
    config : S3ClientConfig
    user_agent : str
        Appended to botocore's User-Agent.
    """

    def __init__(self, region: Optional[str], endpoint_url: Optional[str], config: S3ClientConfig, user_agent: str) -> None:
        self.region = region
        self.endpoint_url = endpoint_url
        self.config = config
        self.user_agent = user_agent
        self._payer: Dict[str, str] = {"RequestPayer": "requester"} if config.requester_pays else {}
        self._init_process_state()
        _all_transports.add(self)

    def _init_process_state(self) -> None:
        self._lock = threading.Lock()
        self._pid = os.getpid()
        self._boto_client = None
        self._pool: Optional[ThreadPoolExecutor] = None

    def _reset_after_fork(self) -> None:
        # Keep the parent's objects referenced so that nothing of theirs is
        # closed from the child (their sockets are shared with the parent).
        _orphans.append((self._boto_client, self._pool))
        self._init_process_state()

    def _check_pid(self) -> None:
        if self._pid != os.getpid():  # forked without the at-fork hook (e.g. os.fork in C)
            self._reset_after_fork()

    # -- per-process resources ------------------------------------------------------

    @property
    def boto3_client(self):
        """This process's boto3 S3 client (built on first use)."""
        self._check_pid()
        client = self._boto_client
        if client is None:
            with self._lock:
                client = self._boto_client
                if client is None:
                    client = self._boto_client = self._build_boto3_client()
        return client

    def _build_boto3_client(self):
        config = self.config
        session = boto3.session.Session(profile_name=config.profile, region_name=self.region or None)
        if not config.unsigned:
            _remember_credentials(session)
            _redact.install()
        parsers = session._session.get_component("response_parser_factory")
        parsers.set_parser_defaults(timestamp_parser=_parse_timestamp)
        region = session.region_name or "us-east-1"
        endpoint = self.endpoint_url
        path_style = config.force_path_style or (endpoint is not None and not is_aws_endpoint(endpoint))
        boto_config = botocore.config.Config(
            region_name=region,
            signature_version=botocore.UNSIGNED if config.unsigned else None,
            s3={
                "addressing_style": "path" if path_style else "auto",
                # Bodies are not hashed for signing: a SHA-256 of every byte
                # uploaded costs more CPU than the upload itself.
                "payload_signing_enabled": False,
            },
            retries={"mode": "standard", "total_max_attempts": config.max_attempts},  # first try included
            connect_timeout=config.connect_timeout,
            read_timeout=config.read_timeout,
            # Parallel part requests plus a few foreground ones, never waiting on the pool.
            max_pool_connections=max(10, 2 * config.max_concurrency + 4),
            user_agent_extra=self.user_agent,
            # Third-party stores reject the new default checksums (botocore >= 1.36), and
            # rclone returns whole-object checksums on ranged GETs that would fail validation.
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
            tcp_keepalive=True,
        )
        return session.client("s3", endpoint_url=endpoint, config=boto_config)

    def executor(self) -> ThreadPoolExecutor:
        """The pool running parallel part requests (per process, ``max_concurrency`` threads)."""
        self._check_pid()
        pool = self._pool
        if pool is None:
            with self._lock:
                pool = self._pool
                if pool is None:
                    pool = self._pool = ThreadPoolExecutor(
                        max_workers=self.config.max_concurrency, thread_name_prefix="s3io"
                    )
        return pool

    # -- requests ---------------------------------------------------------------------

    def call(self, operation: str, bucket: Optional[str], key: Optional[str], **kwargs) -> Dict[str, Any]:
        """Call the boto3 method ``operation`` (snake_case); its errors as S3Exception.

        ``RequestPayer`` is added for requester-pays clients where the
        operation takes it.
        """
        if self._payer and operation != "head_bucket":
            kwargs.update(self._payer)
        try:
            return getattr(self.boto3_client, operation)(**kwargs)
        except REQUEST_ERRORS as exc:
            raise translate(exc, operation_name(operation), bucket, key) from exc

    def get_object(
        self, bucket: str, key: str, range_header: Optional[str] = None, if_match: Optional[str] = None
    ) -> Optional[GetResponse]:
        """One GetObject; None when a range was asked for and the object holds none of it (416)."""
        kwargs: Dict[str, Any] = dict(Bucket=bucket, Key=key, **self._payer)
        if range_header is not None:
            kwargs["Range"] = range_header
        if if_match:
            kwargs["IfMatch"] = if_match
        try:
            response = self.boto3_client.get_object(**kwargs)
        except botocore.exceptions.ClientError as exc:
            status = (exc.response.get("ResponseMetadata") or {}).get("HTTPStatusCode")
            code = (exc.response.get("Error") or {}).get("Code")
            if range_header is not None and (status == 416 or code == "InvalidRange"):
                return None
            raise translate(exc, "GetObject", bucket, key) from exc
        except REQUEST_ERRORS as exc:
            raise translate(exc, "GetObject", bucket, key) from exc
        meta = response.get("ResponseMetadata") or {}
        headers = meta.get("HTTPHeaders") or {}
        return GetResponse(
            status=meta.get("HTTPStatusCode"),
            content_length=response.get("ContentLength"),
            content_range=response.get("ContentRange"),
            etag=response.get("ETag"),
            last_modified=headers.get("last-modified"),
            checksum_crc32=response.get("ChecksumCRC32"),
            checksum_type=response.get("ChecksumType"),
            body=ResponseBody(response["Body"]),
        )

    def head_object(self, bucket: str, key: str) -> HeadObjectResult:
        """HeadObject (a 404 is :class:`~s3io.S3ObjectNotFound`: HEAD carries no error code)."""
        response = self.call("head_object", bucket, key, Bucket=bucket, Key=key)
        return HeadObjectResult(
            etag=normalize_etag(response.get("ETag")) or "",
            size=int(response.get("ContentLength") or 0),
            last_modified=epoch_seconds(response.get("LastModified")),
            storage_class=response.get("StorageClass"),
        )

    def put_object(self, bucket: str, key: str, body: bytes, *, storage_class: Optional[str] = None) -> None:
        """PutObject of ``body`` (``bytes``: some stacks, moto's among them, reject other types)."""
        extra = {"StorageClass": storage_class} if storage_class else {}
        self.call("put_object", bucket, key, Bucket=bucket, Key=key, Body=body, **extra)

    def upload_part(self, bucket: str, key: str, upload_id: str, number: int, body: bytes) -> str:
        """UploadPart; returns the part's ETag."""
        response = self.call(
            "upload_part", bucket, key, Bucket=bucket, Key=key, UploadId=upload_id, PartNumber=number, Body=body
        )
        return response["ETag"]

    def __repr__(self) -> str:
        return f"Transport(region={self.region!r}, endpoint={self.endpoint_url!r})"


def _remember_credentials(session) -> None:
    try:
        credentials = session.get_credentials()
        frozen = credentials.get_frozen_credentials() if credentials is not None else None
    except Exception:  # no credentials yet (unsigned clients, lazy providers)
        frozen = None
    if frozen is not None:
        _redact.remember_secrets((frozen.secret_key, frozen.token))
