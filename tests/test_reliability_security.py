"""Credentials never leak; TLS is verified by default; keys reach S3 exactly as given.

Secrets: recognisable values for the secret key and a session token are put
in the environment, every logger is set to DEBUG, and succeeding and failing
operations run through every layer (client, the three readers, the writer
single-PUT and multipart, copy, list, DCP save and load).  Every captured log
record, stdout/stderr, exception string, repr, traceback and pickle is
scanned for the secret, the token and request signatures.
"""
import datetime
import ipaddress
import logging
import os
import pickle
import socket
import ssl
import threading
import traceback

import pytest
import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.api import CheckpointException

from s3io import S3Client, S3ClientConfig, S3Exception, S3ReaderConstructor
from s3io.dcp import S3FileSystem, S3StorageReader, S3StorageWriter
from s3io.testing.faultproxy import FaultProxy
from s3io.testing.servers import RcloneServer

pytestmark = [
    pytest.mark.filterwarnings("ignore:torch.distributed is disabled"),
    pytest.mark.filterwarnings("ignore:Detected an existing checkpoint"),
]

ACCESS_KEY = "AKIAS3IOSECURITYTEST"
SECRET = "s3ioTOPSECRETvalue0123456789abcdefXYZ"
TOKEN = "s3ioSESSIONTOKENvalueFQoGZXIvYXdzEKn0987654321"
WRONG_SECRET = "s3ioWRONGSECRETvalue0123456789abcdefXY"
# What must never appear: the secrets, and what a request signature or a signed URL looks like.
NEEDLES = (SECRET, TOKEN, WRONG_SECRET, "Signature=", "X-Amz-Signature", "X-Amz-Security-Token=")
MiB = 1024 * 1024

# Loggers of the test servers themselves (moto runs in this process): their logs are the
# server's, not the client's.
_SERVER_LOGGERS = ("moto", "werkzeug", "s3io.testing")


def _leaks(text):
    return [needle for needle in NEEDLES if needle in text] + (["session token"] if TOKEN[:20] in text else [])


class _Capture(logging.Handler):
    """Every record of every logger, formatted with its traceback."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records = []
        self.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))

    def emit(self, record) -> None:
        if record.name.startswith(_SERVER_LOGGERS):
            return
        try:
            self.records.append((record.name, self.format(record)))
        except Exception as exc:  # a record that cannot be formatted is still scanned
            self.records.append((record.name, f"{record.msg!r} {record.args!r} ({exc})"))


@pytest.fixture
def debug_logs():
    """All loggers at DEBUG into one capturing handler; restored afterwards."""
    handler = _Capture()
    root = logging.getLogger()
    saved = {name: logger.level for name, logger in logging.root.manager.loggerDict.items()
             if isinstance(logger, logging.Logger)}
    saved_root = root.level
    for name in saved:
        logging.getLogger(name).setLevel(logging.DEBUG)
    root.setLevel(logging.DEBUG)
    root.addHandler(handler)
    try:
        yield handler
    finally:
        root.removeHandler(handler)
        root.setLevel(saved_root)
        for name, level in saved.items():
            logging.getLogger(name).setLevel(level)
        for name, logger in logging.root.manager.loggerDict.items():  # loggers made during the test
            if isinstance(logger, logging.Logger) and name not in saved:
                logger.setLevel(logging.NOTSET)


@pytest.fixture(scope="module")
def secret_server():
    """rclone that accepts only ACCESS_KEY/SECRET (so succeeding calls really signed with the secret)."""
    server = RcloneServer(etag=True)
    server.access_key, server.secret_key = ACCESS_KEY, SECRET
    with server:
        yield server


@pytest.fixture
def secret_env(monkeypatch, secret_server):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    monkeypatch.setenv("AWS_SESSION_TOKEN", TOKEN)
    return secret_server


def _run_everything(proxy_url, bucket):
    """Succeeding and failing operations on every layer; returns (texts to scan, objects to repr/pickle)."""
    texts, objects, errors = [], [], []
    config = S3ClientConfig(endpoint_url=proxy_url, part_size=5 * MiB, max_attempts=2, connect_timeout=2, read_timeout=5)
    client = S3Client("us-east-1", s3client_config=config)
    objects += [client, config]
    data = os.urandom(6 * MiB)
    with client.put_object(bucket, "multi") as writer:  # multipart
        writer.write(data)
    objects.append(writer)
    with client.put_object(bucket, "single") as writer:
        writer.write(b"hello")
    objects.append(writer)
    objects.append(client.head_object(bucket, "multi"))
    objects += [info for page in client.list_objects(bucket) for info in page.object_info]
    for constructor in (None, S3ReaderConstructor.range_based(), S3ReaderConstructor.sequential()):
        reader = client.get_object(bucket, "multi", reader_constructor=constructor)
        assert reader.read(1000) == data[:1000]
        objects.append(reader)
        reader.close()
    stream = client.get_stream(bucket, "multi", 0, 10)
    assert stream.read() == data[:10]
    objects.append(stream)
    client.copy_object(bucket, "single", bucket, "copy")
    client.delete_object(bucket, "copy")

    # DCP save and load (the dcp_optimized reader and the load pipeline).
    sd = {"w": torch.arange(1000, dtype=torch.float32), "step": 3}
    path = f"s3://{bucket}/ckpt"
    writer = S3StorageWriter("us-east-1", path, s3client_config=config)
    dcp.save(sd, storage_writer=writer)
    reader = S3StorageReader("us-east-1", path, s3client_config=config)
    out = {"w": torch.zeros(1000), "step": 0}
    dcp.load(out, storage_reader=reader)
    assert torch.equal(out["w"], sd["w"])
    objects += [writer, reader, writer.fs, S3FileSystem("us-east-1", s3client_config=config)]
    objects.append(S3ReaderConstructor.dcp_optimized())

    # Failing operations: missing key, missing bucket, missing checkpoint, 503s until give-up.
    failing = [
        lambda: client.head_object(bucket, "missing"),
        lambda: client.get_object(bucket, "missing").read(),
        lambda: client.get_object(bucket, "missing", reader_constructor=S3ReaderConstructor.range_based()).read(),
        lambda: client.head_object("no-such-bucket-s3io", "k"),
        lambda: list(client.list_objects("no-such-bucket-s3io")),
        lambda: client.copy_object(bucket, "missing", bucket, "dst"),
        lambda: dcp.load({"w": torch.zeros(1)}, storage_reader=S3StorageReader("us-east-1", f"s3://{bucket}/none", s3client_config=config)),
    ]
    for call in failing:
        try:
            call()
        except (Exception, CheckpointException) as exc:
            errors.append(exc)
        else:
            raise AssertionError("expected a failure")
    return texts, objects, errors


def _exception_texts(exc):
    texts = [str(exc), repr(exc), "".join(traceback.format_exception(exc))]
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        texts += [str(exc), repr(exc)]
        texts += [repr(v) for v in vars(exc).values()] if hasattr(exc, "__dict__") else []
        exc = exc.__cause__ or exc.__context__
    return texts


@pytest.fixture
def bucket_on(secret_env):
    return secret_env.make_bucket()


def test_no_secret_in_s3io_logs_exceptions_reprs_or_pickles(secret_env, bucket_on, debug_logs, capfd):
    server = secret_env
    with FaultProxy(server.endpoint_url) as proxy:
        proxy.slow_down(kind="GetObject", times=1)  # one retried request: retry logging runs too
        texts, objects, errors = _run_everything(proxy.endpoint_url, bucket_on)
        # Wrong secret: access denied, through every entry point that signs.
        os.environ["AWS_SECRET_ACCESS_KEY"] = WRONG_SECRET
        denied = S3Client("us-east-1", s3client_config=S3ClientConfig(endpoint_url=proxy.endpoint_url, max_attempts=1))
        for call in (lambda: denied.head_object(bucket_on, "single"), lambda: denied.get_object(bucket_on, "single").read(),
                     lambda: denied.put_object(bucket_on, "x").close()):
            with pytest.raises(S3Exception) as excinfo:
                call()
            errors.append(excinfo.value)
        objects.append(denied)
    for exc in errors:
        texts += _exception_texts(exc)
        texts.append(str(pickle.loads(pickle.dumps(exc)).__dict__))
    for obj in objects:
        texts.append(repr(obj))
        texts.append(str(obj))
        try:
            blob = pickle.dumps(obj)
        except Exception:
            continue  # not picklable: nothing to leak that way
        assert SECRET.encode() not in blob and TOKEN.encode() not in blob, f"pickle of {type(obj).__name__} holds a credential"
    for text in texts:
        assert not _leaks(text), f"credential material {_leaks(text)} in: {text[:500]}"
    own = [text for name, text in debug_logs.records if name.startswith("s3io")]
    for text in own:
        assert not _leaks(text), f"s3io logged credential material {_leaks(text)}: {text[:500]}"
    out, err = capfd.readouterr()
    assert not _leaks(out + err), f"credential material on stdout/stderr: {_leaks(out + err)}"
    assert debug_logs.records, "DEBUG capture saw nothing: the test would prove nothing"


def test_no_credential_material_in_any_debug_log(secret_env, bucket_on, debug_logs):
    """The issue's bar: no credentials or signatures in logs *at any level*, botocore's included.

    botocore logs the signature (``botocore.auth``) and the whole signed request,
    ``Authorization`` and ``X-Amz-Security-Token`` headers included
    (``botocore.endpoint``), at DEBUG.  s3io must filter those records or
    the README must say so: see reliability-findings.md.
    """
    server = secret_env
    client = S3Client("us-east-1", s3client_config=S3ClientConfig(endpoint_url=server.endpoint_url, max_attempts=1))
    with client.put_object(bucket_on, "k") as writer:
        writer.write(b"payload")
    assert client.get_object(bucket_on, "k").read() == b"payload"
    leaking = sorted({(name, tuple(_leaks(text))) for name, text in debug_logs.records if _leaks(text)})
    assert not leaking, f"DEBUG records with credential material (logger, what): {leaking}"


# -- TLS ----------------------------------------------------------------------------------------


def _self_signed_cert(tmp_path):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


@pytest.fixture
def tls_server(tmp_path):
    """A loopback TLS listener with a self-signed certificate; counts completed handshakes."""
    cert, key = _self_signed_cert(tmp_path)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.2)
    stop = threading.Event()
    handshakes = []

    def serve():
        while not stop.is_set():
            try:
                sock, _ = listener.accept()
            except OSError:
                continue
            try:
                sock.settimeout(2)
                with context.wrap_socket(sock, server_side=True) as tls:
                    handshakes.append(True)
                    tls.recv(65536)
                    tls.sendall(b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            except (OSError, ssl.SSLError):
                pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"https://127.0.0.1:{listener.getsockname()[1]}", handshakes
    finally:
        stop.set()
        thread.join(5)
        listener.close()


def test_tls_verification_is_on_by_default(tls_server):
    endpoint, handshakes = tls_server
    client = S3Client("us-east-1", endpoint=endpoint, s3client_config=S3ClientConfig(max_attempts=1, connect_timeout=2, read_timeout=2))
    verify = client.transport.boto3_client._endpoint.http_session._verify
    assert verify is True or (isinstance(verify, str) and os.path.exists(verify)), f"botocore verify={verify!r}"
    with pytest.raises(S3Exception) as excinfo:
        client.head_object("bucket", "key")
    assert "CERTIFICATE_VERIFY_FAILED" in str(excinfo.value) or "certificate verify failed" in str(excinfo.value)
    assert not handshakes, "a handshake with an untrusted certificate completed"


def test_no_config_default_turns_tls_verification_off():
    # Turning verification off must be explicit: no S3ClientConfig field defaults to it.
    for field in S3ClientConfig.__dataclass_fields__.values():
        if any(word in field.name.lower() for word in ("verify", "insecure", "ssl", "tls", "cert")):
            assert field.default in (True, None), f"S3ClientConfig.{field.name} defaults to {field.default!r}"


# -- keys passed exactly -------------------------------------------------------------------------

DOT_KEYS = ("a/../b", "a//b", "./x", "a/./b", "../up")
ODD_KEYS = [
    "a/../b",
    "a//b",
    "./x",
    "a/./b",
    "../up",
    "ünï/cødé ✓/空",
    "with space",
    " leading-space",
    "plus+sign",
    "100%",
    "per%25cent",
    "%2F",
    "q?x=1#frag",
    "semi;colon&amp=",
    "tilde~star*paren()",
]


@pytest.mark.parametrize("key", ODD_KEYS)
def test_keys_are_passed_exactly(s3_server, bucket, key):
    client = S3Client("us-east-1", s3client_config=S3ClientConfig(endpoint_url=s3_server.endpoint_url, max_attempts=2))
    if s3_server.kind == "rclone" and key in DOT_KEYS:
        # rclone maps keys to file paths and refuses dot and empty segments; the refusal
        # names the key exactly as given, so it arrived un-normalised.
        with pytest.raises(S3Exception) as excinfo:
            with client.put_object(bucket, key) as writer:
                writer.write(b"x")
        assert excinfo.value.status == 400 and f'"{key}"' in str(excinfo.value)
        return
    boto = s3_server.boto3_client()
    payload = key.encode() * 3
    with client.put_object(bucket, key) as writer:
        writer.write(payload)
    # The store holds exactly this key, and nothing else.
    listed = [o["Key"] for o in boto.list_objects_v2(Bucket=bucket).get("Contents", [])]
    assert listed == [key]
    assert [info.key for page in client.list_objects(bucket) for info in page.object_info] == [key]
    assert [info.key for page in client.list_objects(bucket, prefix=key) for info in page.object_info] == [key]
    for constructor in (None, S3ReaderConstructor.range_based()):
        assert client.get_object(bucket, key, reader_constructor=constructor).read() == payload
    assert client.head_object(bucket, key).size == len(payload)
    client.copy_object(bucket, key, bucket, key + ".copy")
    assert boto.get_object(Bucket=bucket, Key=key + ".copy")["Body"].read() == payload
    client.delete_object(bucket, key + ".copy")
    fs = S3FileSystem("us-east-1", s3client_config=S3ClientConfig(endpoint_url=s3_server.endpoint_url))
    assert fs.exists(f"s3://{bucket}/{key}")
    client.delete_object(bucket, key)
    assert boto.list_objects_v2(Bucket=bucket).get("KeyCount", 0) == 0


def test_dotdot_key_is_not_another_object(moto_server):
    # a/../b and b are two different S3 objects: writing one must not touch the other.
    bucket = moto_server.make_bucket()
    client = S3Client("us-east-1", s3client_config=S3ClientConfig(endpoint_url=moto_server.endpoint_url))
    with client.put_object(bucket, "b") as writer:
        writer.write(b"plain b")
    with client.put_object(bucket, "a/../b") as writer:
        writer.write(b"dotted")
    assert client.get_object(bucket, "b").read() == b"plain b"
    assert client.get_object(bucket, "a/../b").read() == b"dotted"
    assert sorted(info.key for page in client.list_objects(bucket) for info in page.object_info) == ["a/../b", "b"]


def test_checkpoint_under_an_odd_prefix(moto_server):
    bucket = moto_server.make_bucket()
    config = S3ClientConfig(endpoint_url=moto_server.endpoint_url)
    path = f"s3://{bucket}/runs/a b+c%/../ckpt ✓"
    sd = {"w": torch.arange(10.0)}
    dcp.save(sd, storage_writer=S3StorageWriter("us-east-1", path, s3client_config=config))
    out = {"w": torch.zeros(10)}
    dcp.load(out, storage_reader=S3StorageReader("us-east-1", path, s3client_config=config))
    assert torch.equal(out["w"], sd["w"])
    keys = [info.key for page in S3Client("us-east-1", s3client_config=config).list_objects(bucket) for info in page.object_info]
    assert keys and all(k.startswith("runs/a b+c%/../ckpt ✓/") for k in keys), keys
