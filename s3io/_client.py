"""S3Client: s3torchconnector's client API, over s3io's transport.

The client checks arguments before any request, and builds readers, writers,
streams and listings; requests, retries, connections and the per-process
state are the transport's (``_transport``).  Object reads pin one version per
reader (``_handle``, ``_pin``).
"""
from __future__ import annotations

from typing import Any, Callable, Dict, Optional, Union

from ._boto import resolve_endpoint
from ._checks import check_bucket_key
from ._config import S3ClientConfig
from ._exceptions import S3Exception
from ._handle import ObjectHandle
from ._listing import ListObjectStream
from ._metadata import HeadObjectResult, ObjectInfo
from ._multipart import MAX_SINGLE_COPY, copy_in_parts
from ._pin import VersionPin
from ._stream import GetObjectStream, fetch_into
from ._transport import Transport
from .s3reader.constructor import S3ReaderConstructor
from .s3writer import S3Writer

__all__ = ["S3Client"]

_VERSION = "0.1.0"


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
        self._transport = Transport(region, resolve_endpoint(endpoint, self._config), self._config, self.user_agent_prefix)

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
        return f"S3Client(region={self.region!r}, endpoint={self.endpoint!r}, s3client_config={self._config!r})"

    # -- properties ----------------------------------------------------------------

    @property
    def region(self) -> Optional[str]:
        """The region given at construction (None: boto3's chain decides)."""
        return self._region

    @property
    def endpoint(self) -> Optional[str]:
        """The endpoint URL in use (None: AWS's default for the region)."""
        return self._transport.endpoint_url

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

    @property
    def transport(self) -> Transport:
        """The transport that sends this client's requests (per process; see ``s3io._transport``)."""
        return self._transport

    # -- objects ---------------------------------------------------------------------

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
        handle = self.object_handle(bucket, key, object_info=object_info)
        constructor = reader_constructor or S3ReaderConstructor.default()
        return constructor(bucket=bucket, key=key, get_object_info=handle.object_info, get_stream=handle)

    def object_handle(
        self, bucket: str, key: str, *, object_info: Optional[Union[ObjectInfo, HeadObjectResult]] = None
    ) -> ObjectHandle:
        """Pinned access to one version of ``s3://bucket/key``: streams and ranged fills.

        Every request made through the handle carries ``If-Match`` with the
        version seen first (``object_info``'s ETag, else the first response),
        and every response is checked against it.  No request is sent here.
        """
        check_bucket_key(bucket, key)
        return ObjectHandle(self._transport, bucket, key, object_info)

    def head_object(self, bucket: str, key: str) -> HeadObjectResult:
        """Metadata of ``s3://bucket/key``.

        Raises
        ------
        S3ObjectNotFound, S3BucketNotFound, S3AccessDenied, S3Exception
        """
        check_bucket_key(bucket, key)
        return self._transport.head_object(bucket, key)

    def put_object(self, bucket: str, key: str, storage_class: Optional[str] = None):
        """A writer for ``s3://bucket/key``; the object appears when it is closed.

        Returns
        -------
        S3Writer
        """
        check_bucket_key(bucket, key)
        return S3Writer(self._transport, bucket, key, storage_class=storage_class)

    def list_objects(self, bucket: str, prefix: str = "", delimiter: str = "", max_keys: int = 1000) -> ListObjectStream:
        """The listing of ``prefix``, one page per iteration (fetched lazily).

        Parameters
        ----------
        bucket : str
        prefix : str, default ""
        delimiter : str, default ""
            e.g. ``"/"``: keys below the next ``/`` are rolled up into the
            pages' ``common_prefixes``.
        max_keys : int, default 1000
            Keys per page (1-1000).

        Returns
        -------
        ListObjectStream
            An iterator of :class:`~s3io.ListObjectResult` pages.
        """
        return ListObjectStream(self._transport, bucket, prefix, delimiter, max_keys)

    def delete_object(self, bucket: str, key: str) -> None:
        """Delete ``s3://bucket/key`` (no error if it does not exist)."""
        check_bucket_key(bucket, key)
        self._transport.call("delete_object", bucket, key, Bucket=bucket, Key=key)

    def copy_object(self, src_bucket: str, src_key: str, dst_bucket: str, dst_key: str) -> None:
        """Server-side copy of ``s3://src_bucket/src_key`` to ``s3://dst_bucket/dst_key``.

        One CopyObject request; objects above its 5 GiB limit are copied as a
        multipart upload of UploadPartCopy parts (in parallel, pinned to the
        source's ETag, aborted on failure).
        """
        check_bucket_key(src_bucket, src_key)
        check_bucket_key(dst_bucket, dst_key)
        try:
            self._transport.call(
                "copy_object",
                src_bucket,
                src_key,
                CopySource={"Bucket": src_bucket, "Key": src_key},
                Bucket=dst_bucket,
                Key=dst_key,
            )
            return
        except S3Exception as exc:
            if exc.code not in ("InvalidRequest", "EntityTooLarge"):
                raise
            head = self.head_object(src_bucket, src_key)
            if head.size <= MAX_SINGLE_COPY:
                raise
        copy_in_parts(self._transport, src_bucket, src_key, dst_bucket, dst_key, head.size, head.etag)

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
        check_bucket_key(bucket, key)
        return GetObjectStream(
            self._transport.get_object, bucket, key, start, end,
            pin=VersionPin(bucket, key, etag), retry=self._transport.retry,
        )

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
        check_bucket_key(bucket, key)
        with self._transport.limit:  # callers run this from parallel workers
            return fetch_into(
                self._transport.get_object, bucket, key, start, dest,
                pin=VersionPin(bucket, key, etag), retry=self._transport.retry,
            )
