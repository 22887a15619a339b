"""Fetching objects ahead of their use: several in flight, capped in bytes, handed out in order.

:class:`ObjectFetch` is one object fetched into memory owned here, by ranged
GETs of at most ``part_size`` bytes run as tasks on the client's pool; each
GET holds a slot of the client's adaptive concurrency limit (``with
transport.limit``), so fetching ahead slows down when the store answers
503 SlowDown.  A reader waits only for the bytes it needs.

:class:`FetchAhead` keeps a window of them for an iterator of objects: up to
``max_objects`` objects, and never more than ``max_bytes`` asked for by the
GETs of objects not yet handed out.  Requests start in the order of the
objects, so the next object to hand out is always first in line.  An object
whose size is unknown (named by URI, not listed) is asked for in a first GET
of up to ``part_size`` bytes (twice the largest object seen so far, if that
is less), counted in full until its answer tells the size.  Once an object is handed out it no longer counts: whatever of it did
not fit yet is fetched at once.  Objects are handed out without waiting for
their bytes; a failed GET raises from the read that needs its bytes, at that
object's place, and the others are unaffected.
"""
from __future__ import annotations

import collections
import threading
from typing import Deque, Dict, Iterator, List, Optional

from ._exceptions import S3IncompleteRead, S3ObjectChanged
from ._memory import allocate
from ._s3bucket_key_data import S3BucketKeyData
from .s3reader.prefetched import PrefetchedS3Reader

__all__ = [
    "ObjectFetch",
    "FetchAhead",
    "check_prefetch_knobs",
    "DEFAULT_PREFETCH_OBJECTS",
    "DEFAULT_PREFETCH_BYTES",
    "MAX_PREFETCH_OBJECTS",
    "MIN_PREFETCH_BYTES",
    "MAX_PREFETCH_BYTES",
]

KIB, MIB = 1024, 1024 * 1024
# 16 objects in flight keep a worker busy at S3's first-byte latency (tens of ms) for objects
# of up to a few MiB; the byte cap bounds memory when the objects are large.
DEFAULT_PREFETCH_OBJECTS = 16
DEFAULT_PREFETCH_BYTES = 128 * MIB
MAX_PREFETCH_OBJECTS = 1024
MIN_PREFETCH_BYTES = MIB
MAX_PREFETCH_BYTES = 1 << 40
# A GET is not cut below this to fit what is left of the byte cap: it waits for room instead.
_MIN_GET = 256 * KIB


def check_prefetch_knobs(prefetch_objects, prefetch_bytes) -> None:
    """TypeError / ValueError naming the bad value of a dataset's ``prefetch_objects`` or ``prefetch_bytes``."""
    for name, value in (("prefetch_objects", prefetch_objects), ("prefetch_bytes", prefetch_bytes)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{name} must be an int, not {type(value).__name__}")
    if not 0 <= prefetch_objects <= MAX_PREFETCH_OBJECTS:
        raise ValueError(f"prefetch_objects must be between 0 and {MAX_PREFETCH_OBJECTS}, not {prefetch_objects}")
    if not MIN_PREFETCH_BYTES <= prefetch_bytes <= MAX_PREFETCH_BYTES:
        raise ValueError(
            f"prefetch_bytes must be between 1 MiB ({MIN_PREFETCH_BYTES}) and 1 TiB ({MAX_PREFETCH_BYTES}), "
            f"not {prefetch_bytes}"
        )


class ObjectFetch:
    """One object, fetched by ranged GETs on the client's pool into memory this object owns.

    GETs start in order from byte 0 (:meth:`start` within a byte budget, or
    all at once after :meth:`release`); their bytes may arrive in any
    order.  Thread-safe.

    Parameters
    ----------
    handle : ObjectHandle
        The object, pinned to one version (``S3Client.object_handle``).
    size : int or None
        Known size (from a listing); None: the first GET tells it.
    part_size : int
        Largest GET.
    limit : ConcurrencyLimit
        Held around each GET.
    pool : Executor
        Runs the GETs.
    first_get : int, optional
        Length of the first GET when the size is unknown (default, and at most, ``part_size``).
    """

    def __init__(self, handle, size: Optional[int], part_size: int, limit, pool, first_get: Optional[int] = None) -> None:
        self.bucket = handle.bucket
        self.key = handle.key
        self._handle = handle
        self._part_size = part_size
        self._first_get_size = min(part_size, first_get or part_size)
        self._limit = limit
        self._pool = pool
        self._cond = threading.Condition(threading.Lock())
        self._size: Optional[int] = None
        self._owner = None
        self._view: Optional[memoryview] = None
        self._asked = 0  # bytes [0, asked) are covered by GETs started (once the size is known)
        self._first_get = 0  # length of the first GET while the size is unknown (0: not sent)
        self._prefix = 0  # bytes [0, prefix) have arrived
        self._arrived: Dict[int, int] = {}  # start -> end of ranges arrived beyond the prefix
        self._error: Optional[BaseException] = None
        self._gated = True  # GETs wait for a budget until release()
        self._cancelled = False
        self._futures: List = []
        if size is not None:
            self._set_size(size)

    # -- scheduling (the consumer's thread, or a GET's when released) ----------------

    @property
    def size(self) -> Optional[int]:
        """The object's size (None until the first answer told it)."""
        return self._size

    @property
    def reserved(self) -> int:
        """Bytes asked for by the GETs started so far (the first GET in full while the size is unknown)."""
        return self._first_get if self._size is None else self._asked

    @property
    def needs_budget(self) -> bool:
        """True while a GET is ready to start but waits for room in the byte budget.

        Read without the lock: a GET thread may change the answer a moment
        later, which the next :meth:`FetchAhead._fill` sees.
        """
        return self._gated and self._next_get_length() > 0

    def _next_get_length(self) -> int:
        """Length of the next GET to start (0: none now); exact under the lock, a hint without it."""
        if self._error is not None or self._cancelled:
            return 0
        if self._size is None:
            return 0 if self._first_get else self._first_get_size
        return min(self._part_size, self._size - self._asked)

    def start(self, budget: float) -> int:
        """Start the next GETs in order while they fit in ``budget`` bytes; return the bytes they ask for.

        A GET larger than the room left is cut to fit it, down to 256 KiB;
        below that it waits.
        """
        spent = 0
        if not self._next_get_length():  # nothing to start (the common case): no lock
            return spent
        with self._cond:
            while True:
                length = self._next_get_length()
                if length == 0:
                    break
                room = budget - spent
                if self._gated and length > room:
                    if room < min(length, _MIN_GET):
                        break
                    length = int(room)
                first = self._size is None
                if first:
                    self._first_get = length
                    start = 0
                else:
                    start = self._asked
                    self._asked += length
                spent += length
                self._futures.append(self._pool.submit(self._get, start, length, first))
                if first:
                    break  # the rest waits for the size
        return spent

    def release(self) -> None:
        """Lift the budget: every GET not started yet starts now (and, if the size is unknown, once it is known)."""
        with self._cond:
            self._gated = False
        self.start(float("inf"))

    def cancel(self) -> None:
        """Start no more GETs and drop the queued ones; those running finish into memory nobody reads."""
        with self._cond:
            self._cancelled = True
            futures, self._futures = self._futures, []
        for future in futures:
            future.cancel()

    # -- the GETs (pool threads) --------------------------------------------------------

    def _set_size(self, size: int) -> None:
        """Allocate the buffer for ``size`` bytes; under the lock or before any GET."""
        self._size = size
        self._owner, self._view = allocate(size)
        self._asked = min(self._first_get, size)

    def _get(self, start: int, length: int, first: bool) -> None:
        if self._cancelled:
            return
        try:
            with self._limit:
                stream = self._handle(start, start + length)
                try:
                    stream.open()  # the answer's head: the object's size and version
                    size = stream.object_size
                    if size is None:  # no Content-Range nor length (chunked): ask HEAD
                        size = self._handle.object_info().size
                    if first:
                        with self._cond:
                            self._set_size(size)
                            self._cond.notify_all()
                    elif size != self._size:
                        raise S3ObjectChanged(
                            f"s3://{self.bucket}/{self.key} changed: {self._size} bytes expected, "
                            f"the store now has {size}",
                            code="SizeChanged",
                            bucket=self.bucket,
                            key=self.key,
                        )
                    end = min(start + length, size)
                    got = stream.readinto(self._view[start:end]) if end > start else 0
                finally:
                    stream.close()
            if got != end - start:
                raise S3IncompleteRead(
                    f"s3://{self.bucket}/{self.key}: bytes {start}-{end} ended after {got}",
                    bucket=self.bucket,
                    key=self.key,
                )
        except BaseException as exc:
            with self._cond:
                if self._error is None:
                    self._error = exc
                self._cond.notify_all()
            return
        with self._cond:
            self._arrived[start] = end
            while self._prefix in self._arrived:
                self._prefix = self._arrived.pop(self._prefix)
            self._cond.notify_all()
            more = first and not self._gated
        if more:  # handed out while the size was unknown: the rest needs no budget
            self.start(float("inf"))

    # -- what a reader waits for (the consumer's thread) -------------------------------------

    def wait_size(self) -> int:
        """The object's size, once the first answer told it; raises that GET's error."""
        self._release_if_gated()
        with self._cond:
            while self._size is None and self._error is None:
                self._cond.wait()
            if self._size is None:
                raise self._error
            return self._size

    def wait_for(self, end: int) -> None:
        """Block until bytes ``[0, end)`` have arrived; raise the error of a GET they need."""
        self._release_if_gated()
        with self._cond:
            while self._prefix < end and self._error is None:
                self._cond.wait()
            if self._prefix < end:
                raise self._error

    def buffer(self):
        """``(owner, view)`` of the object's memory (after :meth:`wait_size`)."""
        return self._owner, self._view

    def _release_if_gated(self) -> None:
        # Whoever waits for bytes must not wait for a budget too: that would wait forever.
        if self._gated:
            self.release()

    def __repr__(self) -> str:
        return f"ObjectFetch(s3://{self.bucket}/{self.key}, size={self._size}, arrived={self._prefix})"


class FetchAhead:
    """Readers of the objects of ``objects``, in order, each fetched ahead of its turn.

    Parameters
    ----------
    client : S3Client
    objects : iterator of S3BucketKeyData
        Read as the window needs more (a listing is paged lazily).
    max_objects : int
        Objects in the window (fetched or being fetched, not yet handed out).
    max_bytes : int
        Most bytes the GETs of those objects may ask for at once.

    Iterating yields :class:`~s3io.s3reader.prefetched.PrefetchedS3Reader`
    objects, handed out without waiting for their bytes.  An error of
    ``objects`` (a listing that failed) is raised at its place, after the
    objects before it.
    """

    def __init__(self, client, objects: Iterator[S3BucketKeyData], *, max_objects: int, max_bytes: int) -> None:
        self._client = client
        self._objects: Optional[Iterator[S3BucketKeyData]] = iter(objects)
        self._source_error: Optional[BaseException] = None  # raised once the objects before it are out
        self._max_objects = max_objects
        self._max_bytes = max_bytes
        transport = client.transport
        self._part_size = client.s3client_config.part_size
        self._limit = transport.limit
        self._pool = transport.executor()
        self._window: Deque[ObjectFetch] = collections.deque()
        self._largest = 0  # the largest size seen: the first GET of an object of unknown size asks twice that

    def __iter__(self) -> "FetchAhead":
        return self

    def __next__(self) -> PrefetchedS3Reader:
        if not self._window:
            self._fill()
            if not self._window:
                error, self._source_error = self._source_error, None
                if error is not None:
                    raise error
                raise StopIteration
        entry = self._window.popleft()
        entry.release()
        self._largest = max(self._largest, entry.size or 0)
        self._fill()  # its bytes no longer count: room for more
        return PrefetchedS3Reader(entry.bucket, entry.key, entry)

    def _fill(self) -> None:
        """Start what fits, in order: GETs of the objects in the window, then new objects."""
        window = self._window
        budget = self._max_bytes
        largest = self._largest
        for entry in window:
            budget -= entry.reserved
            largest = max(largest, entry.size or 0)
        self._largest = largest
        for entry in window:
            budget -= entry.start(budget)
            if entry.needs_budget:
                return
        while len(window) < self._max_objects and self._objects is not None:
            try:
                obj = next(self._objects)
            except StopIteration:
                self._objects = None
                return
            except Exception as exc:  # e.g. a listing that failed: raised when its turn comes
                self._objects = None
                self._source_error = exc
                return
            info = obj.object_info
            handle = self._client.object_handle(obj.bucket, obj.key, object_info=info)
            first_get = max(2 * self._largest, _MIN_GET) if self._largest else None
            size = None if info is None else info.size
            entry = ObjectFetch(handle, size, self._part_size, self._limit, self._pool, first_get)
            window.append(entry)
            budget -= entry.start(budget)
            if entry.needs_budget:
                return

    def close(self) -> None:
        """Cancel the GETs of every object not handed out. Safe to call twice."""
        window, self._window = self._window, collections.deque()
        self._objects = None
        for entry in window:
            entry.cancel()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass
