"""Argument checks shared by the client, the readers and the writer: one message for each mistake."""
from __future__ import annotations

from ._core_errors import readinto_destination

__all__ = ["check_bucket_key", "writable_view"]


def check_bucket_key(bucket, key=None, *, need_key: bool = True) -> None:
    """TypeError / ValueError naming the bad bucket or key, before any request is sent."""
    if not isinstance(bucket, str):
        raise TypeError(f"bucket must be a str, not {type(bucket).__name__}")
    if not bucket:
        raise ValueError("Bucket should be specified")
    if need_key:
        if not isinstance(key, str):
            raise TypeError(f"key must be a str, not {type(key).__name__}")
        if not key:
            raise ValueError("Key should be specified")


def writable_view(buf, what: str = "readinto()") -> memoryview:
    """A writable, C-contiguous, unsigned-byte view of ``buf``; TypeError naming its type otherwise.

    The same check, with the same messages, as the core's ``readinto``
    (``what`` names the call in the message).
    """
    try:
        view = memoryview(buf)
    except TypeError:
        raise readinto_destination(buf, what) from None
    if view.readonly or not view.c_contiguous:
        raise readinto_destination(buf, what)
    if view.ndim != 1 or view.format != "B":
        view = view.cast("B")
    return view
