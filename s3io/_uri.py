"""``s3://bucket/key`` URIs."""
from __future__ import annotations

from typing import Tuple

__all__ = ["parse_s3_uri"]

_PREFIX = "s3://"


def parse_s3_uri(uri: str) -> Tuple[str, str]:
    """Split an ``s3://bucket/key`` URI into bucket and key.

    Parameters
    ----------
    uri : str
        ``s3://bucket`` or ``s3://bucket/some/key``.

    Returns
    -------
    (str, str)
        The bucket and the key (``""`` for ``s3://bucket`` and ``s3://bucket/``).

    Raises
    ------
    ValueError
        If ``uri`` does not start with ``s3://`` or names no bucket.
    TypeError
        If ``uri`` is not a string.
    """
    if not isinstance(uri, str):
        raise TypeError(f"S3 URI must be a str, not {type(uri).__name__}")
    if not uri.startswith(_PREFIX):
        raise ValueError(f"Only s3:// URIs are supported, not {uri!r}")
    bucket, _, key = uri[len(_PREFIX):].partition("/")
    if not bucket:
        raise ValueError(f"Bucket name must be non-empty in {uri!r}")
    return bucket, key
