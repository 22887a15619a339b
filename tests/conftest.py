"""Shared fixtures: loopback S3 servers, a fresh bucket per test, test credentials.

- ``moto_server`` / ``rclone_server``: one server each for the whole session
  (rclone with ETag hashing on, since ``If-Match`` needs ETags).
- ``s3_server``: parametrized over both (``S3IO_TEST_SERVERS=rclone`` or
  ``=moto`` narrows it while iterating locally).
- ``bucket``: a fresh bucket on ``s3_server``, emptied and removed afterwards.
- ``require_peer(module)``: import an optional peer (s3torchconnector, lightning,
  runai) for a test; missing, the test skips locally and fails under ``CI=true``.

``.ci/test`` runs the suite three ways; two of them need this file's help:
with ``S3IO_NO_EXTENSIONS=1`` the compiled twin's parametrizations are
deselected (the main run covered them), and with ``S3IO_SOURCE_ROOT`` set (the
wheel run) the session stops unless ``s3io`` comes from site-packages.

For the whole session the environment holds the test key pair (both servers
accept it) and none of the user's AWS profile, config files or endpoint
overrides, so nothing on the machine leaks into a test, and child processes
(``mp.spawn``, ``subprocess``) inherit the same setup.
"""
import importlib
import os
import sysconfig

import pytest

from s3io.testing.servers import TEST_ACCESS_KEY, TEST_REGION, TEST_SECRET_KEY, MotoServer, RcloneServer

_TEST_ENV = {
    "AWS_ACCESS_KEY_ID": TEST_ACCESS_KEY,
    "AWS_SECRET_ACCESS_KEY": TEST_SECRET_KEY,
    "AWS_DEFAULT_REGION": TEST_REGION,
    "AWS_REGION": TEST_REGION,
    # Paths that do not exist: never read ~/.aws/config or ~/.aws/credentials.
    "AWS_CONFIG_FILE": os.path.join(os.sep, "nonexistent", "s3io-tests", "aws-config"),
    "AWS_SHARED_CREDENTIALS_FILE": os.path.join(os.sep, "nonexistent", "s3io-tests", "aws-credentials"),
    # No instance-metadata look-ups (they time out slowly off EC2).
    "AWS_EC2_METADATA_DISABLED": "true",
}
ON_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
_CLEARED = ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "AWS_ENDPOINT_URL")
_saved_env = {}


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: builds wheels/extensions; deselect with -m 'not slow'")
    cleared = set(_CLEARED) | {k for k in os.environ if k.startswith("AWS_ENDPOINT_URL")}
    for name in set(_TEST_ENV) | cleared:
        _saved_env[name] = os.environ.get(name)
    for name in cleared:
        os.environ.pop(name, None)
    os.environ.update(_TEST_ENV)


def pytest_sessionstart(session):
    source = os.environ.get("S3IO_SOURCE_ROOT")
    if not source:
        return
    # The wheel run: the tests are a copy outside the source tree, and s3io must be the installed wheel.
    import s3io

    package = os.path.dirname(os.path.realpath(s3io.__file__))
    site = {os.path.realpath(sysconfig.get_path(name)) for name in ("purelib", "platlib")}
    if os.path.dirname(package) not in site or package.startswith(os.path.realpath(source) + os.sep):
        raise pytest.UsageError(f"S3IO_SOURCE_ROOT is set: s3io must come from site-packages {sorted(site)}, not {package}")


def pytest_collection_modifyitems(config, items):
    if os.environ.get("S3IO_NO_EXTENSIONS") != "1":
        return
    # The pure-twin run: a test parametrized over both twins would only skip its compiled case.
    compiled = [item for item in items if getattr(item, "callspec", None) and item.callspec.params.get("core") == "c"]
    if compiled:
        config.hook.pytest_deselected(items=compiled)
        kept = set(map(id, items)) - set(map(id, compiled))
        items[:] = [item for item in items if id(item) in kept]


NO_EXTENSIONS = os.environ.get("S3IO_NO_EXTENSIONS") == "1"


@pytest.fixture(params=["c", "py"])
def core(request):
    """The core module of one twin: the compiled ``s3io._core_c`` or the pure ``s3io._core_py``.

    One suite serves both; under ``S3IO_NO_EXTENSIONS=1`` the compiled cases
    are deselected (see ``pytest_collection_modifyitems``).
    """
    if request.param == "py":
        return importlib.import_module("s3io._core_py")
    if NO_EXTENSIONS:
        pytest.skip("S3IO_NO_EXTENSIONS=1: pure-Python build")
    return importlib.import_module("s3io._core_c")


def require_peer(module):
    """Import ``module`` of an optional peer (s3torchconnector, lightning, runai) for the calling test.

    Parameters
    ----------
    module : str
        Dotted module name, e.g. ``"s3torchconnector.dcp"``.

    Returns
    -------
    module
        The imported module.

    Without the peer the test is skipped on a developer's machine, and fails under
    ``CI=true`` naming the missing package: CI installs every peer (``.ci/venv``:
    the ``compare`` extra), so a comparison never passes there by not running.
    """
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        missing = exc.name or module
        if ON_CI:
            pytest.fail(f"optional peer {missing!r} is missing under CI=true (importing {module}: {exc})", pytrace=False)
        pytest.skip(f"optional peer {missing!r} is not installed (importing {module}: {exc})")


def pytest_unconfigure(config):
    for name, value in _saved_env.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    _saved_env.clear()


@pytest.fixture(scope="session")
def moto_server():
    """moto's ThreadedMotoServer on a free loopback port (session-wide)."""
    with MotoServer() as server:
        yield server


@pytest.fixture(scope="session")
def rclone_server():
    """``rclone serve s3`` with MD5 ETags on a free loopback port (session-wide)."""
    with RcloneServer(etag=True) as server:
        yield server


def _server_kinds():
    wanted = os.environ.get("S3IO_TEST_SERVERS", "moto,rclone")
    kinds = [k.strip() for k in wanted.split(",") if k.strip()]
    unknown = set(kinds) - {"moto", "rclone"}
    if unknown or not kinds:
        raise pytest.UsageError("S3IO_TEST_SERVERS=%r: use moto, rclone or both" % wanted)
    return kinds


@pytest.fixture(scope="session", params=_server_kinds())
def s3_server(request):
    """Each loopback server in turn (``moto``, ``rclone``)."""
    return request.getfixturevalue("%s_server" % request.param)


@pytest.fixture
def bucket(s3_server):
    """A fresh, empty bucket on ``s3_server``; emptied and removed after the test."""
    name = s3_server.make_bucket()
    yield name
    _remove_bucket(s3_server, name)


def _remove_bucket(server, name):
    # Best effort: keeps moto's in-memory store small over a long session.
    client = server.boto3_client()
    try:
        for page in client.get_paginator("list_multipart_uploads").paginate(Bucket=name):
            for upload in page.get("Uploads", []):
                client.abort_multipart_upload(Bucket=name, Key=upload["Key"], UploadId=upload["UploadId"])
    except Exception:
        pass
    try:
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=name):
            keys = [{"Key": obj["Key"]} for obj in page.get("Contents", [])]
            if keys:
                client.delete_objects(Bucket=name, Delete={"Objects": keys, "Quiet": True})
        client.delete_bucket(Bucket=name)
    except Exception:
        pass
