"""Transport: the requests of one :class:`~s3io.S3Client`, per process.

The hot operations (GET into caller memory, HEAD, PutObject, UploadPart) go
out on s3io's lean path: a request signed by ``_sigv4`` on a keep-alive
connection of ``_http``, to the URL ``_routes`` cached for the bucket.  Per
request that costs a fraction of botocore's machinery (endpoint rules, event
hooks, parsing).  Everything else (listing, delete, copy, multipart control)
goes through boto3 (``_boto``).  Both are retried by one policy
(``_retry.RetryPolicy``) and report throttling to the client's
``ConcurrencyLimit``.

The transport owns what must not cross a fork: connections, the boto3 client
and the thread pool.  After a fork the child builds its own on first use and
leaves the parent's untouched (their sockets are shared with the parent).
Every error comes out as an :class:`~s3io.S3Exception` subclass.
"""
from __future__ import annotations

import html
import itertools
import logging
import os
import re
import threading
import time
import weakref
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Dict, Optional

import botocore.exceptions

from . import _boto
from ._config import S3ClientConfig
from ._errors import s3_error, translate
from ._exceptions import S3BucketNotFound, S3Exception, S3ObjectNotFound
from ._http import Response
from ._metadata import HeadObjectResult
from ._pin import normalize_etag
from ._retry import ConcurrencyLimit, RetryPolicy, is_throttle
from ._routes import Route, Routes, query_string

__all__ = ["Transport", "GetResponse", "operation_name"]

log = logging.getLogger(__name__)

_REDIRECT_STATUS = (301, 307, 400)  # a wrong region: S3 names the right one in x-amz-bucket-region
_XML_FIELD = re.compile(r"<(Code|Message|RequestId)>([^<]*)</\1>")


def operation_name(operation: str) -> str:
    """``get_object`` -> ``GetObject``: the S3 name errors show."""
    return "".join(part.capitalize() for part in operation.split("_"))


class GetResponse:
    """One GET response: its status, headers and body.

    Attributes
    ----------
    status : int
    headers
        ``headers.get(name)`` by lower-case name (``content-range``, ``etag``, ...).
    body
        ``readinto(view) -> int`` and ``close(complete)``.
    """

    __slots__ = ("status", "headers", "body")

    def __init__(self, status: int, headers, body) -> None:
        self.status = status
        self.headers = headers
        self.body = body


# Per-process state: rebuilt lazily in a child; the parent's objects are kept, never closed or used.
_all_transports: "weakref.WeakSet[Transport]" = weakref.WeakSet()
_orphans: list = []

# One adaptive limit per store (endpoint and region) and concurrency: a store throttles its
# clients together, so every client of one process that talks to it shares what was learned.
_limits: Dict[tuple, ConcurrencyLimit] = {}
_limits_lock = threading.Lock()


def _shared_limit(endpoint_url: Optional[str], region: Optional[str], maximum: int) -> ConcurrencyLimit:
    key = (endpoint_url, region, maximum)
    with _limits_lock:
        limit = _limits.get(key)
        if limit is None:
            limit = _limits[key] = ConcurrencyLimit(maximum)
        return limit


def _after_fork_in_child() -> None:
    global _limits_lock
    _limits_lock = threading.Lock()
    _limits.clear()
    for transport in list(_all_transports):
        transport._reset_after_fork()


os.register_at_fork(after_in_child=_after_fork_in_child)


class _ProcessState:
    """What one process of a transport owns: the boto3 session and clients, routes, the pool."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.session = None
        self.clients: Dict[Optional[str], Any] = {}  # region (None: default) -> boto3 client
        self.routes: Optional[Routes] = None
        self.executor: Optional[ThreadPoolExecutor] = None



def _may_have_taken_effect(exc: BaseException) -> bool:
    """Whether a failed attempt may have been carried out by the store all the same.

    True without an answer (a reset, a timeout) and for a 5xx, which includes
    a ``200`` whose body was cut off: botocore reports that as a 500 with no
    S3 error code, although the store did act on the request.  False for a
    4xx: the store refused it.
    """
    if isinstance(exc, botocore.exceptions.ClientError):
        status = (exc.response.get("ResponseMetadata") or {}).get("HTTPStatusCode")
    elif isinstance(exc, S3Exception):
        status = exc.status
    else:
        return True
    return status is None or status >= 500

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
        Sent in the User-Agent header (botocore appends it to its own).

    Attributes
    ----------
    retry : RetryPolicy
        Attempts, backoff and the retry budget of every request.
    limit : ConcurrencyLimit
        The adaptive cap the parallel paths hold a slot of per request; shared
        by the clients of this process that talk to the same store.
    """

    def __init__(self, region: Optional[str], endpoint_url: Optional[str], config: S3ClientConfig, user_agent: str) -> None:
        self.region = region
        self.endpoint_url = endpoint_url
        self.config = config
        self.user_agent = user_agent
        self._payer: Dict[str, str] = {"RequestPayer": "requester"} if config.requester_pays else {}
        self._payer_header: Dict[str, str] = {"x-amz-request-payer": "requester"} if config.requester_pays else {}
        self._lock = threading.Lock()
        self._init_process_state()
        _all_transports.add(self)

    def _init_process_state(self) -> None:
        self._state = _ProcessState()
        self.retry = RetryPolicy(self.config.max_attempts)
        self.limit = _shared_limit(self.endpoint_url, self.region, self.config.max_concurrency)

    def _reset_after_fork(self) -> None:
        # Keep the parent's objects referenced so that nothing of theirs is
        # closed from the child (their sockets are shared with the parent).
        _orphans.append(self._state)
        self._lock = threading.Lock()
        self._init_process_state()

    def _process(self) -> _ProcessState:
        state = self._state
        if state.pid != os.getpid():  # forked without the at-fork hook (e.g. os.fork in C)
            self._reset_after_fork()
            state = self._state
        return state

    # -- per-process resources ------------------------------------------------------

    def _session(self, state: _ProcessState):
        if state.session is None:
            with self._lock:
                if state.session is None:
                    state.session = _boto.build_session(self.config, self.region)
        return state.session

    def boto3_client_for(self, region: Optional[str] = None):
        """This process's boto3 S3 client (for ``region``; None: the client's own)."""
        state = self._process()
        client = state.clients.get(region)
        if client is None:
            session = self._session(state)
            with self._lock:
                client = state.clients.get(region)
                if client is None:
                    client = state.clients[region] = _boto.build_client(
                        session, self.config, self.endpoint_url, self.user_agent, region
                    )
        return client

    @property
    def boto3_client(self):
        """This process's boto3 S3 client (built on first use)."""
        return self.boto3_client_for(None)

    def _routes(self) -> Routes:
        state = self._process()
        routes = state.routes
        if routes is None:
            session = self._session(state)
            with self._lock:
                routes = state.routes
                if routes is None:
                    routes = state.routes = Routes(self.config, session, self.boto3_client_for, self.endpoint_url)
        return routes

    def executor(self) -> ThreadPoolExecutor:
        """The pool running parallel part requests (per process, ``max_concurrency`` threads)."""
        state = self._process()
        pool = state.executor
        if pool is None:
            with self._lock:
                pool = state.executor
                if pool is None:
                    pool = state.executor = ThreadPoolExecutor(
                        max_workers=self.config.max_concurrency, thread_name_prefix="s3io"
                    )
        return pool

    def _route(self, operation: str, bucket: str, key: str) -> Optional[Route]:
        """The bucket's route (None: boto3); setup errors (unknown profile, ...) as S3Exception."""
        try:
            return self._routes().get(bucket)
        except botocore.exceptions.BotoCoreError as exc:
            raise translate(exc, operation_name(operation), bucket, key) from exc

    # -- retries ---------------------------------------------------------------------

    def _retrying(self, operation: str, bucket: Optional[str], key: Optional[str], attempt: Callable[[], Any]):
        """Run ``attempt()`` under the retry policy; report throttles and successes to the limit.

        Returns ``(result, uncertain)``: how many failed attempts the store
        may have carried out anyway (see :func:`_may_have_taken_effect`).
        """
        policy = self.retry
        limit = self.limit
        uncertain = 0
        for number in itertools.count(1):
            started = time.monotonic()
            level = limit.in_flight
            try:
                result = attempt()
            except Exception as exc:
                throttled = is_throttle(exc)
                if throttled:
                    limit.observe(True, started, level)
                if _may_have_taken_effect(exc):
                    uncertain += 1
                if policy.may_retry(number, exc, limit.back_off if throttled else time.sleep):
                    log.debug("%s s3://%s/%s: attempt %d failed (%s); retrying", operation, bucket, key, number, exc)
                    continue
                if isinstance(exc, S3Exception):
                    raise
                raise translate(exc, operation_name(operation), bucket, key) from exc
            limit.observe(False, started, level)
            return result, uncertain

    # -- boto3 operations ---------------------------------------------------------------

    def call(self, operation: str, bucket: Optional[str], key: Optional[str], **kwargs) -> Dict[str, Any]:
        """Call the boto3 method ``operation`` (snake_case), retried; its errors as S3Exception.

        ``RequestPayer`` is added for requester-pays clients where the
        operation takes it.  ``ResponseMetadata.UncertainAttempts`` counts the
        failed attempts the store may have carried out all the same.
        """
        if self._payer and operation != "head_bucket":
            kwargs.update(self._payer)

        def attempt():
            return getattr(self.boto3_client, operation)(**kwargs)

        response, uncertain = self._retrying(operation, bucket, key, attempt)
        response.setdefault("ResponseMetadata", {})["UncertainAttempts"] = uncertain
        return response

    # -- the lean path ----------------------------------------------------------------------

    def _send(
        self,
        operation: str,
        method: str,
        bucket: str,
        key: str,
        route: Route,
        headers: Dict[str, str],
        *,
        query: str = "",
        body=None,
        ok_status=(200, 206),
    ) -> Response:
        """One attempt on the lean path; an error answer raised as S3Exception (a wrong region: followed once)."""
        for hop in range(2):
            path = route.path(key)
            sent = dict(headers)
            sent.update(self._payer_header)
            if route.signer is not None:
                route.signer.sign(method, route.pool.origin.host_header, path, sent, query)
            sent["user-agent"] = self.user_agent
            response = route.pool.request(method, path + ("?" + query if query else ""), sent, body)
            if response.status in ok_status:
                return response
            region = response.headers.get("x-amz-bucket-region")
            if hop == 0 and response.status in _REDIRECT_STATUS and region and region != route.region:
                response.close()
                log.info("s3://%s is in %s, not %s: following", bucket, region, route.region)
                route = self._routes().redirect(bucket, region)
                if route is None:
                    raise s3_error(operation_name(operation), bucket, key, status=response.status, code="PermanentRedirect",
                                   detail=f"the bucket is in {region}")
                continue
            raise self._error(operation, bucket, key, response, method)
        raise AssertionError("unreachable")

    def _error(self, operation: str, bucket: str, key: str, response: Response, method: str) -> S3Exception:
        headers = response.headers
        fields = {}
        if method != "HEAD":
            try:
                text = response.read(limit=64 * 1024).decode("utf-8", "replace")
                fields = {name: html.unescape(value) for name, value in _XML_FIELD.findall(text)}
            except (OSError, ValueError):  # the body is a detail; the status says enough
                pass
        response.close()
        return s3_error(
            operation_name(operation),
            bucket,
            key,
            status=response.status,
            code=fields.get("Code") or None,
            detail=fields.get("Message") or "",
            request_id=headers.get("x-amz-request-id") or fields.get("RequestId"),
        )

    # -- hot operations --------------------------------------------------------------------

    def get_object(
        self, bucket: str, key: str, range_header: Optional[str] = None, if_match: Optional[str] = None
    ) -> Optional[GetResponse]:
        """One GetObject; None when a range was asked for and the object holds none of it (416)."""
        route = self._route("get_object", bucket, key)
        if route is None:
            return self._boto3_get(bucket, key, range_header, if_match)
        headers: Dict[str, str] = {}
        if range_header is not None:
            headers["range"] = range_header
        if if_match:
            headers["if-match"] = if_match
        ok = (200, 206, 416) if range_header is not None else (200, 206)

        def attempt():
            return self._send("get_object", "GET", bucket, key, route, headers, ok_status=ok)

        response, _ = self._retrying("get_object", bucket, key, attempt)
        if response.status == 416:
            response.close()
            return None
        return GetResponse(response.status, response.headers, response)

    def _boto3_get(self, bucket, key, range_header, if_match) -> Optional[GetResponse]:
        kwargs: Dict[str, Any] = dict(Bucket=bucket, Key=key, **self._payer)
        if range_header is not None:
            kwargs["Range"] = range_header
        if if_match:
            kwargs["IfMatch"] = if_match

        def attempt():
            try:
                return self.boto3_client.get_object(**kwargs)
            except botocore.exceptions.ClientError as exc:
                status = (exc.response.get("ResponseMetadata") or {}).get("HTTPStatusCode")
                code = (exc.response.get("Error") or {}).get("Code")
                if range_header is not None and (status == 416 or code == "InvalidRange"):
                    return None
                raise

        response, _ = self._retrying("get_object", bucket, key, attempt)
        if response is None:
            return None
        meta = response.get("ResponseMetadata") or {}
        # botocore's HTTPHeaders are the raw headers under lower-case names.
        return GetResponse(meta.get("HTTPStatusCode"), meta.get("HTTPHeaders") or {}, _boto.ResponseBody(response["Body"]))

    def head_object(self, bucket: str, key: str) -> HeadObjectResult:
        """HeadObject.

        A HEAD answer has no body, so a 404 carries no error code: whether the
        key or the bucket is missing is asked with HeadBucket.

        Raises
        ------
        S3ObjectNotFound, S3BucketNotFound, S3AccessDenied, S3Exception
        """
        try:
            return self._head_object(bucket, key)
        except S3ObjectNotFound as error:
            if error.code not in (None, "404", "NotFound"):
                raise
            try:
                self.call("head_bucket", bucket, None, Bucket=bucket)
            except S3Exception as exc:
                if exc.status == 404:
                    raise S3BucketNotFound(
                        f"HeadObject s3://{bucket}/{key} failed: bucket {bucket!r} does not exist (HTTP 404)",
                        status=404,
                        code="NoSuchBucket",
                        bucket=bucket,
                        key=key,
                        request_id=error.request_id,
                    ) from error
            raise

    def _head_object(self, bucket: str, key: str) -> HeadObjectResult:
        route = self._route("head_object", bucket, key)
        if route is None:
            response = self.call("head_object", bucket, key, Bucket=bucket, Key=key)
            return HeadObjectResult(
                etag=normalize_etag(response.get("ETag")) or "",
                size=int(response.get("ContentLength") or 0),
                last_modified=_boto.epoch_seconds(response.get("LastModified")),
                storage_class=response.get("StorageClass"),
            )

        def attempt():
            return self._send("head_object", "HEAD", bucket, key, route, {}, ok_status=(200,))

        response, _ = self._retrying("head_object", bucket, key, attempt)
        h = response.headers
        return HeadObjectResult(
            etag=normalize_etag(h.get("etag")) or "",
            size=int(h.get("content-length") or 0),
            last_modified=_boto.epoch_seconds(h.get("last-modified")),
            storage_class=h.get("x-amz-storage-class"),
        )

    def put_object(self, bucket: str, key: str, body: bytes, *, storage_class: Optional[str] = None) -> None:
        """PutObject of ``body``."""
        route = self._route("put_object", bucket, key)
        if route is None:
            extra = {"StorageClass": storage_class} if storage_class else {}
            self.call("put_object", bucket, key, Bucket=bucket, Key=key, Body=body, **extra)
            return
        headers = {"x-amz-storage-class": storage_class} if storage_class else {}

        def attempt():
            self._send("put_object", "PUT", bucket, key, route, headers, body=body, ok_status=(200,)).read()

        self._retrying("put_object", bucket, key, attempt)

    def upload_part(self, bucket: str, key: str, upload_id: str, number: int, body: bytes) -> str:
        """UploadPart; returns the part's ETag."""
        route = self._route("upload_part", bucket, key)
        if route is None:
            response = self.call(
                "upload_part", bucket, key, Bucket=bucket, Key=key, UploadId=upload_id, PartNumber=number, Body=body
            )
            return response["ETag"]
        query = query_string({"partNumber": str(number), "uploadId": upload_id})

        def attempt():
            response = self._send("upload_part", "PUT", bucket, key, route, {}, query=query, body=body, ok_status=(200,))
            response.read()
            etag = response.headers.get("etag")
            if not etag:
                raise s3_error("UploadPart", bucket, key, status=response.status, code="MissingETag",
                               detail=f"part {number} was answered without an ETag")
            return etag

        etag, _ = self._retrying("upload_part", bucket, key, attempt)
        return etag

    def __repr__(self) -> str:
        return f"Transport(region={self.region!r}, endpoint={self.endpoint_url!r})"
