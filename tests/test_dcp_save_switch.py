"""A save over a checkpoint: the previous one loads until the new ``.metadata`` is written, then the new one.

Also: the requests a save sends (no HEAD, HeadBucket, copy or tmp object),
the previous ``.metadata`` is never trusted to run code, and
:func:`s3io.dcp.delete_orphaned_files` removes what killed saves leave and
nothing else.
"""
import datetime
import logging
import pickle
import threading

import pytest
import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.api import CheckpointException

from s3io import S3ClientConfig
from s3io.dcp import S3StorageReader, S3StorageWriter, delete_orphaned_files
from s3io.testing import FaultProxy

from _upload_faults import FailingUpload, InjectedUploadFailure, on_put

pytestmark = [pytest.mark.filterwarnings("ignore:torch.distributed is disabled")]


def _config(url):
    return S3ClientConfig(endpoint_url=url)


def _writer(url, path, **kwargs):
    return S3StorageWriter("us-east-1", path, s3client_config=_config(url), **kwargs)


def _state_dict(version):
    return {"w": torch.arange(1000, dtype=torch.float32) * version, "b": torch.full((7,), version), "step": version}


def _load(url, path):
    out = {"w": torch.zeros(1000), "b": torch.zeros(7, dtype=torch.int64), "step": -1}
    dcp.load(out, storage_reader=S3StorageReader("us-east-1", path, s3client_config=_config(url)))
    return out


def _assert_loads(url, path, version):
    out = _load(url, path)
    expected = _state_dict(version)
    assert out["step"] == version
    assert torch.equal(out["w"], expected["w"]) and torch.equal(out["b"], expected["b"])


def _keys(server, bucket, prefix):
    pages = server.boto3_client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return sorted(o["Key"] for page in pages for o in page.get("Contents", []))


def _data_files(server, bucket, prefix):
    return [k for k in _keys(server, bucket, prefix) if k.endswith(".distcp")]


# -- the switch --------------------------------------------------------------------------------


def test_previous_checkpoint_loads_until_the_switch(s3_server, bucket, monkeypatch):
    url, path = s3_server.endpoint_url, f"s3://{bucket}/ckpt"
    dcp.save(_state_dict(1), storage_writer=_writer(url, path, thread_count=2))
    previous_files = _data_files(s3_server, bucket, "ckpt/")
    seen = []

    def before_switch(stream):
        # Every new data file is written; the path is still the previous checkpoint.
        seen.append(("before the switch", _data_files(s3_server, bucket, "ckpt/")))
        _assert_loads(url, path, 1)
        return stream

    writer = _writer(url, path, thread_count=2)
    on_put(monkeypatch, writer.fs.client, "/.metadata", before_switch)
    real_delete = writer.fs.client.delete_object
    lock = threading.Lock()  # the previous files are deleted in parallel

    def delete_object(bkt, key):
        with lock:
            if len(seen) == 1:  # the first delete of a previous file: the switch is done
                seen.append(("after the switch", key))
                _assert_loads(url, path, 2)
        return real_delete(bkt, key)

    monkeypatch.setattr(writer.fs.client, "delete_object", delete_object)
    dcp.save(_state_dict(2), storage_writer=writer)
    assert [what for what, _ in seen] == ["before the switch", "after the switch"]
    assert len(seen[0][1]) == 4 and set(previous_files) < set(seen[0][1])
    assert seen[1][1] in previous_files
    new_files = _data_files(s3_server, bucket, "ckpt/")
    assert len(new_files) == 2 and not set(new_files) & set(previous_files)
    _assert_loads(url, path, 2)


def test_the_same_writer_saves_twice_under_new_names(s3_server, bucket):
    url, path = s3_server.endpoint_url, f"s3://{bucket}/again"
    writer = _writer(url, path)
    dcp.save(_state_dict(1), storage_writer=writer)
    first = _data_files(s3_server, bucket, "again/")
    dcp.save(_state_dict(2), storage_writer=writer)  # no checkpoint_id: torch keeps the writer's save_id
    second = _data_files(s3_server, bucket, "again/")
    assert len(first) == len(second) == 1 and first != second
    _assert_loads(url, path, 2)


def test_overwrite_without_collectives_switches_the_rank_metadata(s3_server, bucket):
    # use_collectives=False: each rank writes and replaces its own __{rank}.metadata.
    url, path = s3_server.endpoint_url, f"s3://{bucket}/local"
    for version in (1, 2):
        dcp.save(_state_dict(version), storage_writer=_writer(url, path, thread_count=2), use_collectives=False)
        keys = _keys(s3_server, bucket, "local/")
        assert keys[0] == "local/__0.metadata" and len(keys) == 3, keys
        _assert_loads(url, path, version)


# -- requests ------------------------------------------------------------------------------------


@pytest.mark.parametrize("s3_server", ["moto"], indirect=True)
def test_a_save_sends_only_the_requests_it_needs(s3_server, bucket):
    with FaultProxy(s3_server.endpoint_url) as proxy:
        path = f"s3://{bucket}/req"
        requests = []
        for version in (1, 2):
            proxy.reset_stats()
            dcp.save(_state_dict(version), storage_writer=_writer(proxy.endpoint_url, path, thread_count=2))
            requests.append([(e.kind, e.path.split("/req/", 1)[1], e.status) for e in proxy.log])
    first, second = requests
    data = sorted(k for _, k, _ in first if k.endswith(".distcp"))
    assert len(data) == 2
    # A first save: one GET finds no checkpoint, the data files, then .metadata.
    assert first[0] == ("GetObject", ".metadata", 404)
    assert sorted(first[1:3]) == [("PutObject", k, 200) for k in data]
    assert first[3:] == [("PutObject", ".metadata", 200)]
    # Over it: the GET reads the previous .metadata, and its files go after the switch.
    assert second[0][:2] == ("GetObject", ".metadata") and second[0][2] in (200, 206)
    assert [kind for kind, _, _ in second[1:3]] == ["PutObject"] * 2
    assert second[3] == ("PutObject", ".metadata", 200)
    assert sorted(second[4:]) == [("DeleteObject", k, 204) for k in data]


# -- the previous .metadata -------------------------------------------------------------------


class _RunsCode:
    def __reduce__(self):
        return (exec, ("import pathlib; pathlib.Path(MARKER).write_text('ran')".replace("MARKER", repr(self.marker)),))


@pytest.mark.parametrize("content", ["garbage", "code"])
def test_unreadable_previous_metadata_is_replaced_never_run(s3_server, bucket, tmp_path, caplog, content):
    url, path = s3_server.endpoint_url, f"s3://{bucket}/odd"
    marker = tmp_path / "marker"
    payload = _RunsCode()
    payload.marker = str(marker)
    body = b"\x00not a pickle" if content == "garbage" else pickle.dumps(payload)
    boto = s3_server.boto3_client()
    boto.put_object(Bucket=bucket, Key="odd/.metadata", Body=body)
    boto.put_object(Bucket=bucket, Key="odd/__0_0.distcp", Body=b"whatever it referenced")
    with caplog.at_level(logging.WARNING, logger="s3io.dcp"):
        dcp.save(_state_dict(3), storage_writer=_writer(url, path))
    assert not marker.exists()
    assert "odd/.metadata is not a torch.distributed.checkpoint .metadata" in caplog.text
    _assert_loads(url, path, 3)
    assert "odd/__0_0.distcp" in _keys(s3_server, bucket, "odd/")  # unknown files are kept


# -- a clean failure ---------------------------------------------------------------------------


def test_failed_save_prints_no_traceback(s3_server, bucket, monkeypatch, capfd):
    url, path = s3_server.endpoint_url, f"s3://{bucket}/quiet"
    dcp.save(_state_dict(1), storage_writer=_writer(url, path))
    # What a plain Python process does with an exception that escapes a thread: print it.
    monkeypatch.setattr(threading, "excepthook", threading.__excepthook__)
    writer = _writer(url, path, thread_count=4)
    on_put(monkeypatch, writer.fs.client, ".distcp", FailingUpload)
    big = {f"t{n}": torch.full((1000,), n) for n in range(8)}
    with pytest.raises(CheckpointException) as excinfo:
        dcp.save(big, storage_writer=writer)
    assert isinstance(excinfo.value.failures[0][0], InjectedUploadFailure)
    err = capfd.readouterr().err
    assert "Traceback" not in err and "injected" not in err, err
    _assert_loads(url, path, 1)


# -- delete_orphaned_files -------------------------------------------------------------------------


def _killed_save(url, path, version, monkeypatch):
    """A save that wrote its data files but not its .metadata (as if killed just before the switch)."""
    writer = _writer(url, path, thread_count=2)
    with monkeypatch.context() as patch:
        on_put(patch, writer.fs.client, "/.metadata", FailingUpload)
        with pytest.raises(CheckpointException):
            dcp.save(_state_dict(version), storage_writer=writer)


@pytest.fixture
def littered(s3_server, bucket, monkeypatch):
    """A checkpoint (version 1) with what killed saves leave, beside things that are not theirs."""
    url, path = s3_server.endpoint_url, f"s3://{bucket}/ckpt"
    dcp.save(_state_dict(1), storage_writer=_writer(url, path, thread_count=2))
    current = _data_files(s3_server, bucket, "ckpt/")
    _killed_save(url, path, 2, monkeypatch)
    orphans = sorted(set(_data_files(s3_server, bucket, "ckpt/")) - set(current))
    boto = s3_server.boto3_client()
    boto.put_object(Bucket=bucket, Key="ckpt/.metadata.tmp", Body=b"torch's writer, killed mid-rename")
    orphans.append("ckpt/.metadata.tmp")
    boto.put_object(Bucket=bucket, Key="ckpt/notes.txt", Body=b"not a data file")
    boto.put_object(Bucket=bucket, Key="ckpt-other/__0_0.distcp", Body=b"another path")
    dcp.save(_state_dict(5), storage_writer=_writer(url, f"s3://{bucket}/ckpt/nested"))  # a checkpoint below
    keep = sorted(set(_keys(s3_server, bucket, "ckpt")) - set(orphans))
    return url, path, sorted(orphans), keep


def test_delete_orphaned_files(s3_server, bucket, littered):
    url, path, orphans, keep = littered
    config = _config(url)
    assert len(orphans) == 3  # two data files of the killed save, one .metadata.tmp
    every = sorted(orphans + keep)
    # A dry run lists them and deletes nothing.
    expected = [f"s3://{bucket}/{key}" for key in orphans]
    assert delete_orphaned_files("us-east-1", path, older_than=0, dry_run=True, s3client_config=config) == expected
    assert _keys(s3_server, bucket, "ckpt") == every
    # The age rule: these files are seconds old, so a save could still be writing them.
    assert delete_orphaned_files("us-east-1", path, s3client_config=config) == []
    assert delete_orphaned_files("us-east-1", path, older_than=datetime.timedelta(minutes=5), s3client_config=config) == []
    assert _keys(s3_server, bucket, "ckpt") == every
    assert delete_orphaned_files("us-east-1", path + "/", older_than=0, s3client_config=config) == expected
    assert _keys(s3_server, bucket, "ckpt") == keep
    _assert_loads(url, path, 1)
    _assert_loads(url, path + "/nested", 5)
    assert delete_orphaned_files("us-east-1", path, older_than=0, s3client_config=config) == []


def test_delete_orphaned_files_spares_a_save_in_progress(s3_server, bucket, monkeypatch):
    url, path = s3_server.endpoint_url, f"s3://{bucket}/busy"
    config = _config(url)
    dcp.save(_state_dict(1), storage_writer=_writer(url, path))
    at_switch, go_on = threading.Event(), threading.Event()

    def hold(stream):
        at_switch.set()
        assert go_on.wait(60)
        return stream

    writer = _writer(url, path, thread_count=2)
    on_put(monkeypatch, writer.fs.client, "/.metadata", hold)
    errors = []
    saving = threading.Thread(target=lambda: _run(errors, dcp.save, _state_dict(2), storage_writer=writer))
    saving.start()
    try:
        assert at_switch.wait(60)
        assert len(_data_files(s3_server, bucket, "busy/")) == 3  # the new files wait for their .metadata
        assert delete_orphaned_files("us-east-1", path, older_than=60, s3client_config=config) == []
    finally:
        go_on.set()
        saving.join(60)
    assert not errors, errors
    _assert_loads(url, path, 2)
    assert len(_data_files(s3_server, bucket, "busy/")) == 2


def _run(errors, function, *args, **kwargs):
    try:
        function(*args, **kwargs)
    except BaseException as exc:  # CheckpointException is a BaseException
        errors.append(exc)


def test_delete_orphaned_files_without_a_checkpoint(s3_server, bucket, monkeypatch):
    # A first save killed before its switch: nothing references its files.
    url, path = s3_server.endpoint_url, f"s3://{bucket}/never"
    _killed_save(url, path, 1, monkeypatch)
    files = _data_files(s3_server, bucket, "never/")
    assert len(files) == 2
    deleted = delete_orphaned_files("us-east-1", path, older_than=0, s3client_config=_config(url))
    assert deleted == [f"s3://{bucket}/{key}" for key in files]
    assert _keys(s3_server, bucket, "never/") == []


def test_delete_orphaned_files_refuses_an_unreadable_metadata(s3_server, bucket):
    boto = s3_server.boto3_client()
    boto.put_object(Bucket=bucket, Key="bad/.metadata", Body=b"\x00not a pickle")
    boto.put_object(Bucket=bucket, Key="bad/__0_0.distcp", Body=b"maybe referenced")
    with pytest.raises(ValueError, match=r"bad/\.metadata is not a torch.distributed.checkpoint \.metadata"):
        delete_orphaned_files("us-east-1", f"s3://{bucket}/bad", older_than=0, s3client_config=_config(s3_server.endpoint_url))
    assert _keys(s3_server, bucket, "bad/") == ["bad/.metadata", "bad/__0_0.distcp"]


def test_delete_orphaned_files_checks_its_arguments():
    for older_than, error in ((-1, ValueError), (float("nan"), ValueError), ("1h", TypeError), (True, TypeError)):
        with pytest.raises(error, match="older_than"):
            delete_orphaned_files("us-east-1", "s3://bucket/ckpt", older_than=older_than)
    with pytest.raises(ValueError, match="s3://"):
        delete_orphaned_files("us-east-1", "/local/ckpt")
