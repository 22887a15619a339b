"""S3Client: boto3 underneath, s3torchconnector's API on top.

One boto3 client per process serves all threads (boto3 clients are
thread-safe); after a fork the child builds its own on first use and leaves
the parent's alone.  Object reads pin one version per reader: every ranged GET
of a reader sends ``If-Match`` with the ETag first seen (listing, HEAD or the
first response).
"""
from __future__ import annotations

import datetime
import email.utils
import http.client
import logging
import os
import random
import re
import threading
import time
import weakref
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterator, Optional, Union
from urllib.parse import urlparse

import boto3
import botocore
import botocore.config
import botocore.exceptions
import botocore.parsers
import urllib3.exceptions

from ._config import S3ClientConfig
from ._exceptions import (
    S3AccessDenied,
    S3BucketNotFound,
    S3Exception,
    S3InvalidRange,
    S3ObjectChanged,
    S3ObjectNotFound,
)
from ._stream import DEFAULT_CHUNK_SIZE, GetObjectStream, is_etag, normalize_etag

__all__ = ["S3Client", "HeadObjectResult", "ObjectInfo"]

log = logging.getLogger(__name__)

_VERSION = "0.1.0"
_MAX_SINGLE_COPY = 5 * 1024**3  # CopyObject's limit
_COPY_PART_SIZE = 512 * 1024**2  # UploadPartCopy parts: server-side, so big ones are fine
# Uploads started this long before our CreateMultipartUpload (server clock vs ours) still count
# as possibly ours when a retried create is cleaned up.
_CLOCK_SKEW = 15.0
_ABORT_BACKOFF_BASE = 0.1  # seconds; full jitter over base * 2**attempt
_ABORT_BACKOFF_CAP = 2.0


@dataclass(frozen=True)
class HeadObjectResult:
    """An object's metadata from HEAD.

    Attributes
    ----------
    etag : str
        The ETag as S3 sends it (with its quotes).
    size : int
        Size in bytes.
    last_modified : int
        Seconds since the epoch.
    storage_class : str or None
    """

    etag: str
    size: int
    last_modified: int
    storage_class: Optional[str] = None


@dataclass(frozen=True)
class ObjectInfo:
    """One object of a listing.

    Attributes
    ----------
    key : str
    etag : str
    size : int
    last_modified : int
        Seconds since the epoch.
    storage_class : str or None
    """

    key: str
    etag: str
    size: int
    last_modified: int
    storage_class: Optional[str] = None


def _epoch(value) -> int:
    if isinstance(value, datetime.datetime):
        return int(value.timestamp())
    return int(value or 0)


# --------------------------------------------------------------------------------------------
# Error translation: by status and code, never by message text.

_OBJECT_ERRORS = {"NoSuchKey": S3ObjectNotFound, "NoSuchBucket": S3BucketNotFound}


def _client_error(exc: botocore.exceptions.ClientError, operation: str, bucket: Optional[str], key: Optional[str]) -> S3Exception:
    response = getattr(exc, "response", None) or {}
    error = response.get("Error") or {}
    meta = response.get("ResponseMetadata") or {}
    status = meta.get("HTTPStatusCode")
    code = error.get("Code") or None
    request_id = meta.get("RequestId") or (meta.get("HTTPHeaders") or {}).get("x-amz-request-id")
    cls = _OBJECT_ERRORS.get(code)
    if cls is None:
        if status == 403 or code in ("AccessDenied", "AllAccessDisabled", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
            cls = S3AccessDenied
        elif status == 412 or code == "PreconditionFailed":
            cls = S3ObjectChanged
        elif status == 416 or code == "InvalidRange":
            cls = S3InvalidRange
        elif status == 404 and code in ("404", "NotFound") and key:
            cls = S3ObjectNotFound  # HEAD has no body: the caller may refine to S3BucketNotFound
        else:
            cls = S3Exception
    where = f"s3://{bucket}/{key}" if key else f"s3://{bucket}" if bucket else "S3"
    detail = error.get("Message") or ""
    message = f"{operation} {where} failed: {code or 'error'} (HTTP {status})"
    if cls is S3ObjectChanged:
        message += ": the object was overwritten since the read started"
    elif detail:
        message += f": {detail}"
    if request_id:
        message += f" [request id {request_id}]"
    return cls(message, status=status, code=code, bucket=bucket, key=key, request_id=request_id)


# What a request can raise: botocore's errors, and raw urllib3 / socket errors that escape
# botocore while it reads an error response's body.
_REQUEST_ERRORS = (
    botocore.exceptions.ClientError,
    botocore.exceptions.BotoCoreError,
    urllib3.exceptions.HTTPError,
    http.client.HTTPException,
    OSError,
)


def _translate(exc: BaseException, operation: str, bucket: Optional[str], key: Optional[str]) -> BaseException:
    if isinstance(exc, S3Exception):
        return exc
    if isinstance(exc, botocore.exceptions.ClientError):
        return _client_error(exc, operation, bucket, key)
    if isinstance(exc, _REQUEST_ERRORS):
        where = f"s3://{bucket}/{key}" if key else f"s3://{bucket}" if bucket else "S3"
        # botocore and urllib3 messages name endpoints and files, never secrets.
        detail = str(exc) if isinstance(exc, botocore.exceptions.BotoCoreError) else f"{type(exc).__name__}: {exc}"
        return S3Exception(f"{operation} {where} failed: {detail}", bucket=bucket, key=key)
    return exc


def _check_names(bucket, key=None, *, need_key: bool = True) -> None:
    """Argument errors before any request: TypeError / ValueError naming the bad value."""
    if not isinstance(bucket, str):
        raise TypeError(f"bucket must be a str, not {type(bucket).__name__}")
    if not bucket:
        raise ValueError("Bucket should be specified")
    if need_key:
        if not isinstance(key, str):
            raise TypeError(f"key must be a str, not {type(key).__name__}")
        if not key:
            raise ValueError("Key should be specified")


# --------------------------------------------------------------------------------------------
# Fork safety: per-process state is rebuilt lazily in a child; the parent's is left untouched.

_all_clients: "weakref.WeakSet[S3Client]" = weakref.WeakSet()
_orphans: list = []  # a child's copies of its parent's clients: kept, never closed or used


def _after_fork_in_child() -> None:
    for client in list(_all_clients):
        client._reset_after_fork()


os.register_at_fork(after_in_child=_after_fork_in_child)


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


# --------------------------------------------------------------------------------------------
# botocore logs signatures, signed headers and security tokens at DEBUG: redact them.

_REDACTIONS = [
    (re.compile(r"AWS4-HMAC-SHA256 Credential=[^'\"\r\n]*"), "AWS4-HMAC-SHA256 <authorization redacted>"),
    (re.compile(r"(?:X-Amz-)?Signature=[0-9a-fA-F]+", re.IGNORECASE), "<signature redacted>"),
    (
        re.compile(r"(x-amz-security-token['\"]?\s*[:=,]\s*b?['\"]?)[^'\"\s,}&]+", re.IGNORECASE),
        r"\1<redacted>",
    ),
    (re.compile(r"X-Amz-Security-Token=[^&'\"\s]+", re.IGNORECASE), "<security token redacted>"),
]
_secrets: "set[str]" = set()  # secret keys and session tokens of the clients built in this process
_REDACTED_LOGGERS = (
    "botocore.auth", "botocore.endpoint", "botocore.parsers", "botocore.hooks", "botocore.httpsession",
    "botocore.retryhandler", "botocore.credentials", "botocore.utils", "botocore.client", "botocore.awsrequest",
    "botocore.regions", "botocore.retries.standard", "urllib3.connectionpool", "urllib3.connection",
)


class _RedactCredentials(logging.Filter):
    """Rewrites a log record without credential material (runs only for records that are emitted)."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            text = record.getMessage()
        except Exception:
            return True
        clean = text
        for secret in tuple(_secrets):
            if secret in clean:
                clean = clean.replace(secret, "<redacted>")
        for pattern, replacement in _REDACTIONS:
            clean = pattern.sub(replacement, clean)
        if clean != text:
            record.msg, record.args = clean, None
        return True


_redactor = _RedactCredentials()


def _install_log_redaction(session) -> None:
    try:
        credentials = session.get_credentials()
        frozen = credentials.get_frozen_credentials() if credentials is not None else None
    except Exception:  # no credentials yet (unsigned clients, lazy providers)
        frozen = None
    if frozen is not None:
        _secrets.update(v for v in (frozen.secret_key, frozen.token) if v and len(v) >= 8)
    names = set(_REDACTED_LOGGERS) | {
        name for name in list(logging.root.manager.loggerDict) if name.startswith(("botocore", "boto3", "urllib3"))
    }
    for name in names:
        logger = logging.getLogger(name)
        if _redactor not in logger.filters:
            logger.addFilter(_redactor)


def _is_aws_endpoint(url: str) -> bool:
    host = (urlparse(url).hostname or "").lower()
    return host.endswith(".amazonaws.com") or host.endswith(".amazonaws.com.cn")


def _resolve_endpoint(endpoint: Optional[str], config: S3ClientConfig) -> Optional[str]:
    for value in (endpoint, config.endpoint_url, os.environ.get("AWS_ENDPOINT_URL_S3"), os.environ.get("AWS_ENDPOINT_URL")):
        if value:
            return value
    return None


class S3Client:
    """A thread-safe, fork-safe, picklable S3 client.

    Parameters
    ----------
    region : str, optional
        AWS region.  None uses boto3's chain (``AWS_REGION``, ...), then ``us-east-1``.
    endpoint : str, optional
        S3 endpoint URL.  Falls back to ``s3client_config.endpoint_url``, then
        the ``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL`` variables.  A
        custom, non-AWS endpoint uses path-style addressing.
    user_agent : str or object with ``prefix``, optional
        Appended to the User-Agent header.
    s3client_config : S3ClientConfig, optional
        Part size, retries, timeouts, concurrency, credentials profile.

    Notes
    -----
    Credentials come from boto3's standard chain, or from the configured
    ``profile``.  Requests go out with checksum calculation and validation
    ``when_required``, which AWS S3, moto and ``rclone serve s3`` all accept.
    """

    def __init__(
        self,
        region: Optional[str] = None,
        endpoint: Optional[str] = None,
        user_agent: Any = None,
        s3client_config: Optional[S3ClientConfig] = None,
    ) -> None:
        if s3client_config is not None and not isinstance(s3client_config, S3ClientConfig):
            raise TypeError(f"s3client_config must be an S3ClientConfig, not {type(s3client_config).__name__}")
        self._region = region
        self._endpoint = endpoint
        self._user_agent = user_agent
        self._config = s3client_config or S3ClientConfig()
        self._endpoint_url = _resolve_endpoint(endpoint, self._config)
        self._extra: Dict[str, str] = {"RequestPayer": "requester"} if self._config.requester_pays else {}
        self._init_process_state()
        _all_clients.add(self)

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

    # -- pickling ------------------------------------------------------------------

    def __getstate__(self) -> Dict[str, Any]:
        return {
            "region": self._region,
            "endpoint": self._endpoint,
            "user_agent": self._user_agent,
            "s3client_config": self._config,
        }

    def __setstate__(self, state: Dict[str, Any]) -> None:
        self.__init__(**state)

    def __repr__(self) -> str:
        return f"S3Client(region={self.region!r}, endpoint={self._endpoint_url!r}, s3client_config={self._config!r})"

    # -- properties ----------------------------------------------------------------

    @property
    def region(self) -> Optional[str]:
        """The region given at construction (None: boto3's chain decides)."""
        return self._region

    @property
    def endpoint(self) -> Optional[str]:
        """The endpoint URL in use (None: AWS's default for the region)."""
        return self._endpoint_url

    @property
    def s3client_config(self) -> S3ClientConfig:
        """The configuration."""
        return self._config

    @property
    def user_agent_prefix(self) -> str:
        """What goes into the User-Agent header besides botocore's own part."""
        extra = self._user_agent
        if extra is not None and not isinstance(extra, str):
            extra = getattr(extra, "prefix", None) or str(extra)
        return f"s3io/{_VERSION}" + (f" {extra}" if extra else "")

    # -- per-process boto3 client and thread pool --------------------------------------

    def _check_pid(self) -> None:
        if self._pid != os.getpid():  # forked without the at-fork hook (e.g. os.fork in C)
            self._reset_after_fork()

    @property
    def _boto(self):
        self._check_pid()
        client = self._boto_client
        if client is None:
            with self._lock:
                client = self._boto_client
                if client is None:
                    client = self._boto_client = self._build_boto_client()
        return client

    def _build_boto_client(self):
        config = self._config
        session = boto3.session.Session(profile_name=config.profile, region_name=self._region or None)
        if not config.unsigned:
            _install_log_redaction(session)
        parsers = session._session.get_component("response_parser_factory")
        parsers.set_parser_defaults(timestamp_parser=_parse_timestamp)
        region = session.region_name or "us-east-1"
        endpoint = self._endpoint_url
        path_style = config.force_path_style or (endpoint is not None and not _is_aws_endpoint(endpoint))
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
            user_agent_extra=self.user_agent_prefix,
            # Third-party stores reject the new default checksums (botocore >= 1.36), and
            # rclone returns whole-object checksums on ranged GETs that would fail validation.
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
            tcp_keepalive=True,
        )
        return session.client("s3", endpoint_url=endpoint, config=boto_config)

    def _executor(self) -> ThreadPoolExecutor:
        """The pool running parallel part requests (per process, max_concurrency threads)."""
        self._check_pid()
        pool = self._pool
        if pool is None:
            with self._lock:
                pool = self._pool
                if pool is None:
                    pool = self._pool = ThreadPoolExecutor(
                        max_workers=self._config.max_concurrency, thread_name_prefix="s3io"
                    )
        return pool

    def _call(self, operation: str, bucket: Optional[str], key: Optional[str], **kwargs):
        """Call the boto3 method ``operation`` (snake_case); translate its errors."""
        try:
            return getattr(self._boto, operation)(**kwargs)
        except _REQUEST_ERRORS as exc:
            raise _translate(exc, _op_name(operation), bucket, key) from exc

    # -- multipart uploads: never leave one behind ---------------------------------------

    def _create_multipart_upload(self, bucket: str, key: str, **kwargs) -> str:
        """CreateMultipartUpload; returns the UploadId.

        When botocore had to retry the call, an earlier attempt may have
        created an upload whose answer was lost: nobody would ever complete or
        abort it, and its parts are stored (and billed) until a lifecycle rule
        removes them.  Those uploads of ``key``, started since this call, are
        aborted here.
        """
        started = time.time()
        response = self._call("create_multipart_upload", bucket, key, Bucket=bucket, Key=key, **kwargs)
        upload_id = response["UploadId"]
        if (response.get("ResponseMetadata") or {}).get("RetryAttempts"):
            self._abort_lost_uploads(bucket, key, keep=upload_id, since=started - _CLOCK_SKEW)
        return upload_id

    def _abort_lost_uploads(self, bucket: str, key: str, *, keep: str, since: float) -> None:
        payer = self._request_payer()
        try:
            listing = self._call("list_multipart_uploads", bucket, key, Bucket=bucket, Prefix=key, **payer)
        except S3Exception:  # some stores answer NoSuchUpload for "none"; this is best effort
            log.warning("s3://%s/%s: listing in-progress uploads failed", bucket, key, exc_info=True)
            return
        for upload in listing.get("Uploads") or ():
            initiated = upload.get("Initiated")
            if (
                upload.get("Key") == key
                and upload.get("UploadId") != keep
                and initiated is not None
                and initiated.timestamp() >= since
            ):
                self._abort_multipart_upload(bucket, key, upload["UploadId"])

    def _abort_multipart_upload(self, bucket: str, key: str, upload_id: str) -> bool:
        """Abort ``upload_id``, retried with backoff (its own budget: an abort must not
        fail because earlier faults drained botocore's retry quota).  False if it
        could not be aborted (logged)."""
        attempts = max(3, self.s3client_config.max_attempts)
        for attempt in range(attempts):
            try:
                self._call(
                    "abort_multipart_upload", bucket, key, Bucket=bucket, Key=key, UploadId=upload_id,
                    **self._request_payer(),
                )
                return True
            except S3Exception as exc:
                if exc.code == "NoSuchUpload":  # already gone (an earlier attempt went through)
                    return True
                if attempt + 1 == attempts or (exc.status is not None and 400 <= exc.status < 500 and exc.status != 429):
                    log.warning("s3://%s/%s: aborting multipart upload %s failed", bucket, key, upload_id, exc_info=True)
                    return False
            time.sleep(random.uniform(0, min(_ABORT_BACKOFF_CAP, _ABORT_BACKOFF_BASE * 2**attempt)))
        return False

    def _request_payer(self) -> Dict[str, str]:
        return {k: v for k, v in self._extra.items() if k == "RequestPayer"}

    # -- object API ------------------------------------------------------------------

    def get_object(
        self,
        bucket: str,
        key: str,
        *,
        object_info: Optional[Union[ObjectInfo, HeadObjectResult]] = None,
        reader_constructor: Optional[Callable] = None,
    ):
        """A reader over ``s3://bucket/key``. No request is sent until it is read.

        Parameters
        ----------
        bucket, key : str
        object_info : ObjectInfo or HeadObjectResult, optional
            Known metadata (e.g. from a listing): saves a HEAD and pins the ETag.
        reader_constructor : callable, optional
            From :class:`s3io.s3reader.S3ReaderConstructor`; default sequential.

        Returns
        -------
        S3Reader
        """
        from .s3reader.constructor import S3ReaderConstructor

        _check_names(bucket, key)
        handle = ObjectHandle(self, bucket, key, object_info)
        constructor = reader_constructor or S3ReaderConstructor.default()
        return constructor(bucket=bucket, key=key, get_object_info=handle.object_info, get_stream=handle)

    def head_object(self, bucket: str, key: str) -> HeadObjectResult:
        """Metadata of ``s3://bucket/key``.

        Raises
        ------
        S3ObjectNotFound, S3BucketNotFound, S3AccessDenied, S3Exception
        """
        _check_names(bucket, key)
        try:
            response = self._boto.head_object(Bucket=bucket, Key=key, **self._extra)
        except _REQUEST_ERRORS as exc:
            error = _translate(exc, "HeadObject", bucket, key)
            if type(error) is S3ObjectNotFound and error.code in ("404", "NotFound"):
                error = self._refine_not_found(error, bucket, key)
            raise error from exc
        return HeadObjectResult(
            etag=normalize_etag(response.get("ETag")) or "",
            size=int(response.get("ContentLength") or 0),
            last_modified=_epoch(response.get("LastModified")),
            storage_class=response.get("StorageClass"),
        )

    def _refine_not_found(self, error: S3Exception, bucket: str, key: str) -> S3Exception:
        """A HEAD 404 has no error code in a body: ask whether the bucket exists."""
        try:
            self._boto.head_bucket(Bucket=bucket)
        except botocore.exceptions.ClientError as exc:
            status = (exc.response.get("ResponseMetadata") or {}).get("HTTPStatusCode")
            if status == 404:
                return S3BucketNotFound(
                    f"HeadObject s3://{bucket}/{key} failed: bucket {bucket!r} does not exist (HTTP 404)",
                    status=404,
                    code="NoSuchBucket",
                    bucket=bucket,
                    key=key,
                    request_id=error.request_id,
                )
        except botocore.exceptions.BotoCoreError:
            pass
        return error

    def put_object(self, bucket: str, key: str, storage_class: Optional[str] = None):
        """A writer for ``s3://bucket/key``; the object appears when it is closed.

        Returns
        -------
        S3Writer
        """
        from .s3writer import S3Writer

        _check_names(bucket, key)
        return S3Writer(self, bucket, key, storage_class=storage_class)

    def list_objects(self, bucket: str, prefix: str = "", *, max_keys: int = 1000) -> Iterator[ObjectInfo]:
        """Every object under ``prefix``, page by page (lazily).

        Yields
        ------
        ObjectInfo
        """
        _check_names(bucket, need_key=False)
        if not isinstance(prefix, str):
            raise TypeError(f"prefix must be a str, not {type(prefix).__name__}")
        kwargs = dict(Bucket=bucket, Prefix=prefix, PaginationConfig={"PageSize": max_keys}, **self._extra)
        try:
            for page in self._boto.get_paginator("list_objects_v2").paginate(**kwargs):
                for item in page.get("Contents") or ():
                    yield ObjectInfo(
                        key=item["Key"],
                        etag=normalize_etag(item.get("ETag")) or "",
                        size=int(item.get("Size") or 0),
                        last_modified=_epoch(item.get("LastModified")),
                        storage_class=item.get("StorageClass"),
                    )
        except _REQUEST_ERRORS as exc:
            raise _translate(exc, "ListObjectsV2", bucket, prefix or None) from exc

    def delete_object(self, bucket: str, key: str) -> None:
        """Delete ``s3://bucket/key`` (no error if it does not exist)."""
        _check_names(bucket, key)
        self._call("delete_object", bucket, key, Bucket=bucket, Key=key, **self._extra)

    def copy_object(self, src_bucket: str, src_key: str, dst_bucket: str, dst_key: str) -> None:
        """Server-side copy of ``s3://src_bucket/src_key`` to ``s3://dst_bucket/dst_key``.

        One CopyObject request; objects above its 5 GiB limit are copied as a
        multipart upload of UploadPartCopy parts (in parallel, pinned to the
        source's ETag, aborted on failure).
        """
        _check_names(src_bucket, src_key)
        _check_names(dst_bucket, dst_key)
        try:
            self._call(
                "copy_object",
                src_bucket,
                src_key,
                CopySource={"Bucket": src_bucket, "Key": src_key},
                Bucket=dst_bucket,
                Key=dst_key,
                **self._extra,
            )
            return
        except S3Exception as exc:
            if exc.code not in ("InvalidRequest", "EntityTooLarge"):
                raise
            head = self.head_object(src_bucket, src_key)
            if head.size <= _MAX_SINGLE_COPY:
                raise
        self._multipart_copy(src_bucket, src_key, dst_bucket, dst_key, head.size, head.etag)

    def _multipart_copy(
        self, src_bucket: str, src_key: str, dst_bucket: str, dst_key: str, size: int, etag: str, part_size: int = 0
    ) -> None:
        """Copy with UploadPartCopy parts; no upload is left behind if a part fails."""
        # Server-side parts cost no local memory: use big ones, within S3's 10,000-part limit.
        part_size = part_size or max(_COPY_PART_SIZE, -(-size // 10_000))
        upload_id = self._create_multipart_upload(dst_bucket, dst_key, **self._extra)
        payer = self._request_payer()

        def copy_part(number: int, start: int) -> dict:
            end = min(start + part_size, size) - 1
            response = self._call(
                "upload_part_copy",
                dst_bucket,
                dst_key,
                Bucket=dst_bucket,
                Key=dst_key,
                UploadId=upload_id,
                PartNumber=number,
                CopySource={"Bucket": src_bucket, "Key": src_key},
                CopySourceRange=f"bytes={start}-{end}",
                **({"CopySourceIfMatch": etag} if etag else {}),
                **payer,
            )
            return {"ETag": response["CopyPartResult"]["ETag"], "PartNumber": number}

        futures = [
            self._executor().submit(copy_part, number, start)
            for number, start in enumerate(range(0, size, part_size), start=1)
        ]
        try:
            parts = [future.result() for future in futures]
            self._call(
                "complete_multipart_upload",
                dst_bucket,
                dst_key,
                Bucket=dst_bucket,
                Key=dst_key,
                UploadId=upload_id,
                MultipartUpload={"Parts": parts},
                **payer,
            )
        except BaseException:
            for future in futures:
                future.cancel()
            for future in futures:  # no part may land after the abort
                if not future.cancelled():
                    try:
                        future.result()
                    except BaseException:
                        pass
            self._abort_multipart_upload(dst_bucket, dst_key, upload_id)
            raise

    # -- low level: streams and direct fills -----------------------------------------

    def get_stream(
        self,
        bucket: str,
        key: str,
        start: Optional[int] = None,
        end: Optional[int] = None,
        *,
        etag: Optional[str] = None,
    ) -> GetObjectStream:
        """A lazy stream of bytes ``[start, end)`` of ``s3://bucket/key`` (``If-Match`` ``etag`` if given)."""
        _check_names(bucket, key)
        return GetObjectStream(self, bucket, key, start, end, etag=etag)

    def fetch_into(self, bucket: str, key: str, start: int, dest, *, etag: Optional[str] = None) -> str:
        """Fill all of the writable ``dest`` with bytes ``[start, start + len(dest))``.

        One ranged GET read from the socket straight into ``dest``, resumed
        from the last byte received if the body ends early.

        Returns
        -------
        str
            The object's ETag ("" if the server sends none or ``dest`` is empty).

        Raises
        ------
        S3InvalidRange
            The object ends before ``start + len(dest)``.
        S3ObjectChanged
            ``etag`` was given and the object no longer has it.
        """
        return self._fetch_into(bucket, key, start, dest, etag=etag)

    def _fetch_into(self, bucket, key, start, dest, *, etag=None, pin=None) -> str:
        _check_names(bucket, key)
        if isinstance(start, bool) or not isinstance(start, int):
            raise TypeError(f"start must be an int, not {type(start).__name__}")
        if start < 0:
            raise ValueError(f"start must be non-negative, not {start}")
        view = memoryview(dest)
        if view.readonly:
            raise TypeError(f"fetch_into() needs a writable bytes-like object, not {type(dest).__name__}")
        if view.ndim != 1 or view.format != "B":
            view = view.cast("B")
        size = len(view)
        if size == 0:
            return etag or ""
        stream = GetObjectStream(self, bucket, key, start, start + size, etag=etag, pin=pin)
        try:
            got = stream._readinto(view)
        finally:
            stream.close()
        if got != size:
            raise S3InvalidRange(
                f"s3://{bucket}/{key} is {stream.object_size} bytes: cannot read bytes {start}-{start + size}",
                status=416,
                code="InvalidRange",
                bucket=bucket,
                key=key,
            )
        return stream.etag or ""

    def _get_object_response(self, bucket: str, key: str, range_header: Optional[str], etag: Optional[str]):
        """One GetObject; None when the range is not satisfiable (416)."""
        kwargs: Dict[str, Any] = dict(Bucket=bucket, Key=key, **self._extra)
        if range_header is not None:
            kwargs["Range"] = range_header
        if is_etag(etag):
            kwargs["IfMatch"] = etag
        try:
            return self._boto.get_object(**kwargs)
        except botocore.exceptions.ClientError as exc:
            status = (exc.response.get("ResponseMetadata") or {}).get("HTTPStatusCode")
            code = (exc.response.get("Error") or {}).get("Code")
            if range_header is not None and (status == 416 or code == "InvalidRange"):
                return None
            raise _translate(exc, "GetObject", bucket, key) from exc
        except _REQUEST_ERRORS as exc:
            raise _translate(exc, "GetObject", bucket, key) from exc


def _op_name(operation: str) -> str:
    return "".join(part.capitalize() for part in operation.split("_"))


class ObjectHandle:
    """``get_stream`` for one object version, as handed to a reader constructor.

    Calling it returns a :class:`GetObjectStream` of ``[start, end)``; all
    streams of one handle share one pinned ETag (from ``object_info``, HEAD or
    the first response).  s3io's own readers also use :meth:`fetch_into` (a
    ranged GET straight into their memory), :attr:`part_size` and
    :meth:`executor` (parallel parts).
    """

    def __init__(self, client: S3Client, bucket: str, key: str, object_info=None) -> None:
        self._client = client
        self.bucket = bucket
        self.key = key
        self._info = object_info
        self._etag = normalize_etag(getattr(object_info, "etag", None)) if object_info is not None else None
        self._lock = threading.Lock()

    @property
    def part_size(self) -> int:
        """Size of the ranged GETs of a whole-object read."""
        return self._client.s3client_config.part_size

    @property
    def max_concurrency(self) -> int:
        """Requests in flight for one reader."""
        return self._client.s3client_config.max_concurrency

    @property
    def etag(self) -> Optional[str]:
        """The pinned ETag, if any yet."""
        return self._etag

    @property
    def known_size(self) -> Optional[int]:
        """The size from ``object_info`` (no request), else None."""
        return None if self._info is None else self._info.size

    def executor(self) -> ThreadPoolExecutor:
        """The client's thread pool."""
        return self._client._executor()

    def _pin(self, etag: str) -> str:
        etag = normalize_etag(etag)
        with self._lock:
            if self._etag is None:
                self._etag = etag
            return self._etag

    def object_info(self):
        """``object_info`` if given, else a HEAD (which pins the ETag)."""
        if self._info is None:
            info = self._client.head_object(self.bucket, self.key)
            if info.etag:
                pinned = self._pin(info.etag)
                if pinned != info.etag:
                    raise S3ObjectChanged(
                        f"s3://{self.bucket}/{self.key} changed while being read: ETag {pinned} then {info.etag}",
                        code="ETagChanged",
                        bucket=self.bucket,
                        key=self.key,
                    )
            self._info = info
        return self._info

    def __call__(self, start: Optional[int] = None, end: Optional[int] = None, *, chunk_size: int = DEFAULT_CHUNK_SIZE) -> GetObjectStream:
        return GetObjectStream(
            self._client, self.bucket, self.key, start, end, etag=self._etag, chunk_size=chunk_size, pin=self._pin
        )

    def fetch_into(self, start: int, dest) -> str:
        """Fill ``dest`` with bytes ``[start, start + len(dest))`` of this version."""
        return self._client._fetch_into(self.bucket, self.key, start, dest, etag=self._etag, pin=self._pin)

    def __repr__(self) -> str:
        return f"ObjectHandle(s3://{self.bucket}/{self.key}, etag={self._etag!r})"
