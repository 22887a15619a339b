"""Multipart uploads that are completed or aborted, never left behind.

Used by :class:`~s3io.S3Writer` (parts from memory) and by
:meth:`~s3io.S3Client.copy_object` (server-side parts, for objects above
CopyObject's 5 GiB limit).  An upload nobody completes or aborts keeps its
parts stored, and billed, until a lifecycle rule removes them.
"""
from __future__ import annotations

import binascii
import hashlib
import logging
import random
import re
import time
from typing import Dict, Optional

from ._exceptions import S3Exception
from ._transport import Transport

__all__ = ["MultipartUpload", "copy_in_parts", "MAX_SINGLE_COPY"]

log = logging.getLogger(__name__)

MAX_SINGLE_COPY = 5 * 1024**3  # CopyObject's limit
_COPY_PART_SIZE = 512 * 1024**2  # UploadPartCopy parts: server-side, so big ones are fine
_MAX_PARTS = 10_000
# Uploads started this long before our CreateMultipartUpload (server clock vs ours) still count
# as possibly ours when a retried create is cleaned up.
_CLOCK_SKEW = 15.0
_ABORT_BACKOFF_BASE = 0.1  # seconds; full jitter over base * 2**attempt
_ABORT_BACKOFF_CAP = 2.0


class MultipartUpload:
    """One multipart upload of ``s3://bucket/key``; made by :meth:`start`.

    Parts may be added from several threads at once.
    """

    def __init__(self, transport: Transport, bucket: str, key: str, upload_id: str, started: float = 0.0) -> None:
        self._transport = transport
        self.bucket = bucket
        self.key = key
        self.upload_id = upload_id
        self._started = started  # time.time() before CreateMultipartUpload
        self._etags: Dict[int, str] = {}
        self._sizes: Dict[int, int] = {}

    @classmethod
    def start(cls, transport: Transport, bucket: str, key: str, *, storage_class: Optional[str] = None) -> "MultipartUpload":
        """CreateMultipartUpload.

        When an attempt of the call failed without a clear refusal (no answer,
        a 5xx, a 200 whose body was cut off), it may have created an upload
        all the same: nobody would ever complete or abort it.  Those uploads
        of ``key``, started since this call, are aborted here.
        """
        started = time.time()
        extra = {"StorageClass": storage_class} if storage_class else {}
        response = transport.call("create_multipart_upload", bucket, key, Bucket=bucket, Key=key, **extra)
        upload = cls(transport, bucket, key, response["UploadId"], started)
        if (response.get("ResponseMetadata") or {}).get("UncertainAttempts"):
            upload._abort_lost_uploads(since=started - _CLOCK_SKEW)
        return upload

    def upload_part(self, number: int, body: bytes) -> None:
        """Upload part ``number`` (1-based) from memory."""
        self._etags[number] = self._transport.upload_part(self.bucket, self.key, self.upload_id, number, body)
        self._sizes[number] = len(body)

    def copy_part(self, number: int, src_bucket: str, src_key: str, start: int, end: int, etag: str = "") -> None:
        """Part ``number`` is bytes ``[start, end)`` of ``s3://src_bucket/src_key`` (If-Match ``etag``)."""
        response = self._transport.call(
            "upload_part_copy",
            self.bucket,
            self.key,
            Bucket=self.bucket,
            Key=self.key,
            UploadId=self.upload_id,
            PartNumber=number,
            CopySource={"Bucket": src_bucket, "Key": src_key},
            CopySourceRange=f"bytes={start}-{end - 1}",
            **({"CopySourceIfMatch": etag} if etag else {}),
        )
        self._etags[number] = response["CopyPartResult"]["ETag"]
        self._sizes[number] = end - start

    def complete(self) -> None:
        """CompleteMultipartUpload with every part added so far: the object appears.

        A retried Complete whose earlier attempt went through unanswered is
        told ``NoSuchUpload``: the object is then checked (size, and the
        multipart ETag where the store sends one) and, if it is this upload's,
        the upload counts as completed.
        """
        parts = [{"ETag": self._etags[n], "PartNumber": n} for n in sorted(self._etags)]
        try:
            self._transport.call(
                "complete_multipart_upload",
                self.bucket,
                self.key,
                Bucket=self.bucket,
                Key=self.key,
                UploadId=self.upload_id,
                MultipartUpload={"Parts": parts},
            )
        except S3Exception as exc:
            if exc.code != "NoSuchUpload" or not self._is_completed_object():
                raise
            log.info("s3://%s/%s: upload %s was completed by an attempt whose answer was lost",
                     self.bucket, self.key, self.upload_id)

    def _is_completed_object(self) -> bool:
        """Whether the object at the key now is this upload, completed."""
        try:
            head = self._transport.head_object(self.bucket, self.key)
        except S3Exception:
            return False
        if head.size != sum(self._sizes.values()):
            return False
        if _MULTIPART_ETAG.match(head.etag):  # S3's form: md5 of the parts' md5s, "-", part count
            return head.etag.strip('"').lower() == _multipart_etag([self._etags[n] for n in sorted(self._etags)])
        # A store without multipart ETags: the size, and written since this upload began (no allowance for
        # clock skew here: a server clock behind ours fails the save, it never takes another object for ours).
        return head.last_modified >= int(self._started)

    def abort(self, upload_id: Optional[str] = None) -> bool:
        """Abort this upload (or ``upload_id`` of the same key), retried with backoff.

        The retries are its own: an abort must not fail because earlier faults
        used up the requests' retries.  Returns False (logged) if it could not
        be aborted.
        """
        upload_id = upload_id or self.upload_id
        attempts = max(3, self._transport.config.max_attempts)
        for attempt in range(attempts):
            try:
                self._transport.call(
                    "abort_multipart_upload", self.bucket, self.key, Bucket=self.bucket, Key=self.key, UploadId=upload_id
                )
                return True
            except S3Exception as exc:
                if exc.code == "NoSuchUpload":  # already gone (an earlier attempt went through)
                    return True
                if attempt + 1 == attempts or (exc.status is not None and 400 <= exc.status < 500 and exc.status != 429):
                    log.warning(
                        "s3://%s/%s: aborting multipart upload %s failed", self.bucket, self.key, upload_id, exc_info=True
                    )
                    return False
            time.sleep(random.uniform(0, min(_ABORT_BACKOFF_CAP, _ABORT_BACKOFF_BASE * 2**attempt)))
        return False

    def _abort_lost_uploads(self, *, since: float) -> None:
        try:
            listing = self._transport.call(
                "list_multipart_uploads", self.bucket, self.key, Bucket=self.bucket, Prefix=self.key
            )
        except S3Exception:  # some stores answer NoSuchUpload for "none"; this is best effort
            log.warning("s3://%s/%s: listing in-progress uploads failed", self.bucket, self.key, exc_info=True)
            return
        for upload in listing.get("Uploads") or ():
            initiated = upload.get("Initiated")
            if (
                upload.get("Key") == self.key
                and upload.get("UploadId") != self.upload_id
                and initiated is not None
                and initiated.timestamp() >= since
            ):
                self.abort(upload["UploadId"])


_MULTIPART_ETAG = re.compile(r'^"?[0-9a-fA-F]{32}-\d+"?$')
_MD5_ETAG = re.compile(r'^"?([0-9a-fA-F]{32})"?$')


def _multipart_etag(part_etags) -> Optional[str]:
    """The ETag (unquoted) S3 gives an object completed from parts with these ETags (None unless they are MD5s)."""
    digests = []
    for etag in part_etags:
        match = _MD5_ETAG.match(etag)
        if match is None:
            return None
        digests.append(binascii.unhexlify(match.group(1)))
    return "%s-%d" % (hashlib.md5(b"".join(digests)).hexdigest(), len(digests))


def copy_in_parts(
    transport: Transport, src_bucket: str, src_key: str, dst_bucket: str, dst_key: str, size: int, etag: str,
    part_size: int = 0,
) -> None:
    """Copy with UploadPartCopy parts in parallel, pinned to ``etag``; no upload is left behind if a part fails."""
    # Server-side parts cost no local memory: use big ones, within S3's part-count limit.
    part_size = part_size or max(_COPY_PART_SIZE, -(-size // _MAX_PARTS))
    upload = MultipartUpload.start(transport, dst_bucket, dst_key)
    pool = transport.executor()
    futures = [
        pool.submit(upload.copy_part, number, src_bucket, src_key, start, min(start + part_size, size), etag)
        for number, start in enumerate(range(0, size, part_size), start=1)
    ]
    try:
        for future in futures:
            future.result()
        upload.complete()
    except BaseException:
        for future in futures:
            future.cancel()
        for future in futures:  # no part may land after the abort
            if not future.cancelled():
                try:
                    future.result()
                except BaseException:
                    pass
        upload.abort()
        raise
