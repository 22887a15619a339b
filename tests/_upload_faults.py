"""Failing uploads for the DCP save tests: what a dropped connection does to one PUT."""
import io


class InjectedUploadFailure(ConnectionResetError):
    """The error a :class:`FailingUpload` raises."""


class FailingUpload(io.RawIOBase):
    """Wraps an S3Writer; fails after ``limit`` bytes, like a dropped upload (the object never appears)."""

    def __init__(self, inner, limit=0):
        self.inner, self.limit, self.written = inner, limit, 0

    def writable(self):
        return True

    def write(self, data):
        self.written += len(memoryview(data))
        if self.written > self.limit:
            raise InjectedUploadFailure("injected upload failure")
        return self.inner.write(data)

    def tell(self):
        return self.inner.tell()

    def __enter__(self):
        self.inner.__enter__()
        return self

    def __exit__(self, *exc):
        return self.inner.__exit__(*exc)


def on_put(monkeypatch, client, suffix, action):
    """Call ``action(stream)`` for ``client``'s PUT of every key ending in ``suffix``; use what it returns.

    Clients are shared by the process's DCP classes: ``monkeypatch`` undoes it after the test.
    """
    real = client.put_object

    def put_object(bucket, key, *args, **kwargs):
        stream = real(bucket, key, *args, **kwargs)
        return action(stream) if key.endswith(suffix) else stream

    monkeypatch.setattr(client, "put_object", put_object)
