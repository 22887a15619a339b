"""``S3ClientConfig``: the knobs of :class:`s3io.S3Client`."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional

__all__ = ["S3ClientConfig", "MIN_PART_SIZE", "MAX_PART_SIZE"]

MIB = 1024 * 1024
MIN_PART_SIZE = 5 * MIB  # S3's smallest multipart part (all but the last)
MAX_PART_SIZE = 5 * 1024 * MIB  # S3's largest part
# One S3 connection sustains roughly 80-100 MB/s (~0.7 Gbit/s) from AWS; the
# throughput target is reached with about this many requests in flight per Gbit/s.
_CONNECTIONS_PER_GBPS = 1.25
_MAX_DERIVED_CONCURRENCY = 64


def _derived_concurrency(throughput_target_gbps: float) -> int:
    return max(2, min(_MAX_DERIVED_CONCURRENCY, math.ceil(throughput_target_gbps * _CONNECTIONS_PER_GBPS)))


@dataclass(frozen=True)
class S3ClientConfig:
    """Configuration of an :class:`s3io.S3Client`.

    The first seven fields and their defaults are those of s3torchconnector's
    ``S3ClientConfig``; the rest are s3io additions.

    Parameters
    ----------
    throughput_target_gbps : float, default 10.0
        Throughput to aim for, in Gbit/s.  Sets the number of parallel requests
        unless ``max_concurrency`` is given.
    part_size : int, default 8 MiB
        Size of the ranged GETs of a whole-object read and of multipart upload
        parts, between 5 MiB and 5 GiB.
    unsigned : bool, default False
        Send unsigned requests (public buckets).
    force_path_style : bool, default False
        Use path-style addressing (``endpoint/bucket/key``).  A custom
        (non-AWS) endpoint always uses path style.
    max_attempts : int, default 10
        Attempts per request, the first included, for retryable errors.
    profile : str, optional
        Named profile of the AWS config files to take credentials from.
    requester_pays : bool, default False
        Send ``x-amz-request-payer: requester`` (requester-pays buckets).
    endpoint_url : str, optional
        S3 endpoint, e.g. ``http://127.0.0.1:9000``.  Overridden by the
        client's ``endpoint`` argument; when neither is set, the
        ``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL`` variables apply.
    connect_timeout : float, default 10.0
        Seconds to wait for a TCP connection.
    read_timeout : float, default 60.0
        Seconds to wait on a socket read before the request is retried.
    max_concurrency : int, optional
        Requests in flight at once for one client (whole-object reads, uploads).
        Derived from ``throughput_target_gbps`` when not given (10 Gbit/s -> 13).

    Raises
    ------
    ValueError
        At construction, naming the field, for a value out of range.
    TypeError
        At construction, naming the field, for a value of the wrong type.
    """

    throughput_target_gbps: float = 10.0
    part_size: int = 8 * MIB
    unsigned: bool = False
    force_path_style: bool = False
    max_attempts: int = 10
    profile: Optional[str] = None
    requester_pays: bool = False
    endpoint_url: Optional[str] = None
    connect_timeout: float = 10.0
    read_timeout: float = 60.0
    max_concurrency: Optional[int] = field(default=None)

    def __post_init__(self) -> None:
        gbps = _number("throughput_target_gbps", self.throughput_target_gbps)
        if not (gbps > 0 and math.isfinite(gbps)):
            raise ValueError(f"throughput_target_gbps must be a positive finite number, not {gbps!r}")
        part_size = _integer("part_size", self.part_size)
        if not MIN_PART_SIZE <= part_size <= MAX_PART_SIZE:
            raise ValueError(f"part_size must be between 5 MiB (5242880) and 5 GiB (5368709120), not {part_size}")
        for name in ("unsigned", "force_path_style", "requester_pays"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"{name} must be a bool, not {type(getattr(self, name)).__name__}")
        attempts = _integer("max_attempts", self.max_attempts)
        if attempts < 1:
            raise ValueError(f"max_attempts must be at least 1, not {attempts}")
        for name in ("profile", "endpoint_url"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, str):
                raise TypeError(f"{name} must be a str or None, not {type(value).__name__}")
        if self.endpoint_url is not None and "://" not in self.endpoint_url:
            raise ValueError(f"endpoint_url must be a URL like http://host:port, not {self.endpoint_url!r}")
        for name in ("connect_timeout", "read_timeout"):
            value = _number(name, getattr(self, name))
            if not (value > 0 and math.isfinite(value)):
                raise ValueError(f"{name} must be a positive number of seconds, not {value!r}")
        if self.max_concurrency is None:
            # Frozen: fill the derived value in once, so repr and pickles show it.
            object.__setattr__(self, "max_concurrency", _derived_concurrency(gbps))
        else:
            concurrency = _integer("max_concurrency", self.max_concurrency)
            if concurrency < 1:
                raise ValueError(f"max_concurrency must be at least 1, not {concurrency}")


def _integer(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, not {type(value).__name__}")
    return value


def _number(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, not {type(value).__name__}")
    return value
