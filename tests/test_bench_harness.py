"""``python -m s3io.bench`` end to end, with small fake suites registered through the test hook."""
import importlib.metadata
import io
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from s3io.bench import _harness
from s3io.bench._harness import BenchContext, Check, PeakRSS, Row, SuiteResult, interleave, main, register_suite
from s3io.bench._memory import peak_rss_growth_in_child
from s3io.testing.servers import port_is_open

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

seen = {}


def fake_suite(ctx):
    """Fake suite: times two no-ops and round-trips an object through ctx.server()."""
    times = interleave(ctx, {"fast": lambda: None, "slow": lambda: sum(range(20000))}, label="noop")
    server = ctx.server()
    client = server.boto3_client()
    bucket = ctx.bucket()
    client.put_object(Bucket=bucket, Key="%s/obj" % ctx.run_id, Body=b"x" * 1000)
    body = client.get_object(Bucket=bucket, Key="%s/obj" % ctx.run_id)["Body"].read()
    seen.update(
        endpoint=server.endpoint_url,
        kind=server.kind,
        tmpdir=ctx.tmpdir,
        repeat=ctx.repeat,
        quick=ctx.quick,
        env_key=os.environ.get("AWS_ACCESS_KEY_ID"),
        body_len=len(body),
        bucket=bucket,
    )
    return SuiteResult(
        rows=[
            Row.from_times("noop call", "fast", times["fast"], unit="us"),
            Row.from_times("noop call", "slow", times["slow"], unit="us"),
            Row.throughput("copy", "memcpy", 10**9, [0.5, 1.0, 2.0]),
        ],
        checks=[
            Check.at_least("fast vs slow", 5.0, 2.0),
            Check.at_most("impossible target", 3.0, 1.0),
        ],
        notes=["a fake note"],
    )


def crashing_suite(ctx):
    """Fake suite that crashes."""
    ctx.progress("about to fail")
    raise RuntimeError("boom from the fake suite")


@pytest.fixture
def fake_suites():
    register_suite("fake", fake_suite)
    register_suite("crashy", crashing_suite)
    seen.clear()
    yield
    _harness.unregister_suite("fake")
    _harness.unregister_suite("crashy")


def run_main(*argv):
    out, err = io.StringIO(), io.StringIO()
    code = main(list(argv), stdout=out, stderr=err)
    return code, out.getvalue(), err.getvalue()


def _needs_matplotlib():
    try:
        importlib.metadata.version("matplotlib")
    except importlib.metadata.PackageNotFoundError:
        if os.environ.get("CI"):
            pytest.fail("matplotlib is missing from the test extra")
        pytest.skip("needs matplotlib")


def test_end_to_end_table_json(fake_suites, tmp_path):
    json_path = tmp_path / "out" / "r.json"
    saved_key = os.environ.get("AWS_ACCESS_KEY_ID")
    code, out, err = run_main("fake", "--repeat", "3", "--json", str(json_path))
    assert code == 0, err

    # The table: a block per suite, each impl on its own row, medians and ranges, checks, notes.
    assert "== fake ==" in out
    lines = out.splitlines()
    header = next(line for line in lines if line.startswith("case"))
    assert header.split() == ["case", "impl", "median", "unit", "min-max"]
    assert any(line.startswith("noop call") and "fast" in line and " us " in line for line in lines)
    assert any(line.split()[:1] == ["slow"] for line in lines), "second row of a case shows only the impl"
    copy_line = next(line for line in lines if line.startswith("copy"))
    assert copy_line.split()[2:] == ["1.00", "GB/s", "0.500-2.00"]
    assert "ok     fast vs slow: 5.00 (target >= 2x)" in out
    assert "MISSED impossible target: 3.00 (target <= 1x)" in out
    assert "note: a fake note" in out
    assert "MISSED 1 target(s): fake: impossible target" in out

    # Progress on stderr: a line per step, per interleaved run.
    assert "[fake +" in err and "starting" in err and "done in" in err
    assert sum("noop: " in line and " run " in line for line in err.splitlines()) == 6
    assert "starting embedded rclone serve s3" in err

    # The suite ran against the embedded rclone, which is stopped and cleaned afterwards.
    assert seen["kind"] == "rclone" and seen["repeat"] == 3 and seen["quick"] is False
    assert seen["body_len"] == 1000
    port = int(seen["endpoint"].rsplit(":", 1)[1])
    assert not port_is_open("127.0.0.1", port)
    assert not os.path.exists(seen["tmpdir"])
    assert os.environ.get("AWS_ACCESS_KEY_ID") == saved_key

    report = json.loads(json_path.read_text())
    suite = report["suites"]["fake"]
    assert suite["error"] is None
    assert [(r["case"], r["impl"], r["unit"]) for r in suite["rows"]] == [
        ("noop call", "fast", "us"),
        ("noop call", "slow", "us"),
        ("copy", "memcpy", "GB/s"),
    ]
    assert suite["rows"][2] == {"case": "copy", "impl": "memcpy", "value": 1.0, "unit": "GB/s", "lo": 0.5, "hi": 2.0}
    assert [(c["name"], c["ok"]) for c in suite["checks"]] == [("fast vs slow", True), ("impossible target", False)]
    assert suite["notes"] == ["a fake note"]
    assert report["options"]["repeat"] == 3
    assert report["machine"]["cpus"] == os.cpu_count()



def test_plot_png(fake_suites, tmp_path):
    _needs_matplotlib()
    png_path = tmp_path / "r.png"
    code, _, err = run_main("fake", "crashy", "--repeat", "2", "--plot", str(png_path))
    assert code == 1, err  # the crash is reported; the chart still shows the suite that ran
    assert "wrote %s" % png_path in err
    data = png_path.read_bytes()
    assert data.startswith(PNG_MAGIC) and len(data) > 5000
    import matplotlib.image

    image = matplotlib.image.imread(str(png_path))
    height, width = image.shape[:2]
    assert width > 500 and height > 200
    assert image.std() > 0.01, "not a blank image"


def test_strict_fails_on_missed_target(fake_suites):
    code, out, _ = run_main("fake", "--quick", "--strict")
    assert code == 1
    assert "MISSED impossible target" in out
    assert seen["quick"] is True and seen["repeat"] == 2


def test_crashing_suite_exits_nonzero_and_keeps_other_results(fake_suites, tmp_path):
    json_path = tmp_path / "r.json"
    code, out, err = run_main("crashy", "fake", "--repeat", "1", "--json", str(json_path))
    assert code == 1
    assert "boom from the fake suite" in err and "Traceback" in err
    assert "CRASHED suite(s): crashy" in out
    assert "== fake ==" in out and "noop call" in out
    report = json.loads(json_path.read_text())
    assert report["suites"]["crashy"]["error"] == "RuntimeError: boom from the fake suite"
    assert report["suites"]["fake"]["error"] is None


def test_list_and_unknown_suite(fake_suites):
    code, out, _ = run_main("--list")
    assert code == 0
    listed = dict(line.split(None, 1) for line in out.splitlines())
    assert listed["fake"].startswith("Fake suite: times two no-ops")
    assert "crashy" in listed
    code, _, err = run_main("nonesuch")
    assert code == 2 and "unknown suite(s): nonesuch" in err


def test_suites_are_discovered_from_modules(monkeypatch, tmp_path):
    # A suite_<name>.py module in the package is picked up without registration.
    import s3io.bench

    (tmp_path / "suite_tmpfake.py").write_text(
        '"""Temporary suite."""\n'
        "from s3io.bench import SuiteResult, Row\n"
        "def run(ctx):\n"
        "    return SuiteResult(rows=[Row('c', 'i', 1.5, 'ms')])\n"
    )
    monkeypatch.setattr(s3io.bench, "__path__", list(s3io.bench.__path__) + [str(tmp_path)])
    assert "tmpfake" in _harness.available_suites()
    code, out, _ = run_main("--list")
    assert "tmpfake    Temporary suite." in out
    code, out, _ = run_main("tmpfake", "--repeat", "1")
    assert code == 0 and "1.50" in out
    sys.modules.pop("s3io.bench.suite_tmpfake", None)


def test_endpoint_uses_given_server_and_removes_its_bucket(fake_suites, moto_server):
    # Credentials come from the standard environment (conftest sets the test pair).
    code, out, err = run_main("fake", "--repeat", "1", "--endpoint", moto_server.endpoint_url)
    assert code == 0, err
    assert seen["kind"] == "external" and seen["endpoint"] == moto_server.endpoint_url
    names = [b["Name"] for b in moto_server.boto3_client().list_buckets()["Buckets"]]
    assert seen["bucket"] not in names, "a bucket the bench created is deleted at exit"


def test_endpoint_with_given_bucket_keeps_it(fake_suites, moto_server):
    bucket = moto_server.make_bucket()
    code, _, err = run_main("fake", "--repeat", "1", "--endpoint", moto_server.endpoint_url, "--bucket", bucket)
    assert code == 0, err
    assert seen["bucket"] == bucket
    moto_server.boto3_client().head_bucket(Bucket=bucket)


def test_bucket_without_endpoint_is_a_usage_error(fake_suites):
    code, _, err = run_main("fake", "--bucket", "b")
    assert code == 2 and "--bucket needs --endpoint" in err


def test_plot_without_matplotlib_is_a_clear_error(fake_suites, monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    code, _, err = run_main("fake", "--plot", str(tmp_path / "x.png"))
    assert code == 2
    assert "--plot needs matplotlib" in err and "s3io[bench]" in err
    assert seen == {}, "fails before running any suite"


def test_interleave_rotates_order_and_counts_runs():
    order = []
    ctx = BenchContext(repeat=3, stderr=io.StringIO())
    try:
        times = interleave(ctx, {"a": lambda: order.append("a"), "b": lambda: order.append("b")}, warmup=1)
    finally:
        ctx.close()
    assert order == ["a", "b", "a", "b", "b", "a", "a", "b"]
    assert [len(v) for v in times.values()] == [3, 3]
    assert all(t >= 0 for v in times.values() for t in v)
    with pytest.raises(ValueError, match="repeat must be >= 1"):
        interleave(ctx, {"a": lambda: None}, repeat=0)


def test_peak_rss_sees_a_transient_allocation():
    with PeakRSS() as rss:
        block = bytearray(64 * 2**20)
        block[:: 4096] = b"x" * len(block[:: 4096])  # touch every page
        del block
    assert rss.growth_bytes >= 60 * 2**20


def test_peak_rss_growth_in_child_counts_one_run_in_a_fresh_process():
    # os.urandom writes every page of its result; 64 MiB of it in the child, nothing here.
    growth = peak_rss_growth_in_child(os.urandom, 64 * 2**20, preload=("json",))
    assert 60 * 2**20 <= growth < 200 * 2**20
    with pytest.raises(RuntimeError, match="the RSS child failed: ValueError"):
        peak_rss_growth_in_child(os.urandom, -1)


def test_module_entry_point_lists_suites():
    proc = subprocess.run(
        [sys.executable, "-m", "s3io.bench", "--list"], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    proc = subprocess.run(
        [sys.executable, "-m", "s3io.bench", "no-such-suite"], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 2 and "unknown suite" in proc.stderr


def test_sigterm_stops_the_embedded_server_and_removes_its_files(tmp_path):
    env = dict(os.environ, TMPDIR=str(tmp_path))
    proc = subprocess.Popen(
        [sys.executable, "-m", "s3io.bench", "read", "--quick"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
    )
    try:
        deadline = time.monotonic() + 60
        while not any(p.name.startswith("s3io-rclone") for p in tmp_path.iterdir()):
            assert proc.poll() is None and time.monotonic() < deadline, "the embedded server never started"
            time.sleep(0.05)
        time.sleep(0.5)  # let it get going
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 128 + signal.SIGTERM
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert list(tmp_path.iterdir()) == []
