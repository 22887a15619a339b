"""The build: a debug build with bounds checks passes the core tests; sdist and wheel are complete.

Both tests build in temporary copies of the source tree, never in the work
tree, and are marked ``slow`` (``-m 'not slow'`` skips them; CI runs them).
"""
import glob
import importlib.metadata
import os
import shutil
import subprocess
import sys
import tarfile
import textwrap
import zipfile

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
pytestmark = pytest.mark.slow

# Nothing built, cached or installed is copied into a build tree.
_IGNORE = shutil.ignore_patterns(
    ".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", "*.so", "*.pyc", ".hypothesis", ".pytest_cache"
)


def _copy_source(dest):
    os.makedirs(dest)
    for name in ("setup.py", "pyproject.toml", "MANIFEST.in", "README.md", "LICENSE"):
        if os.path.exists(os.path.join(ROOT, name)):
            shutil.copy2(os.path.join(ROOT, name), dest)
    for name in ("csrc", "s3io", "tests", "bench"):
        if os.path.isdir(os.path.join(ROOT, name)):
            shutil.copytree(os.path.join(ROOT, name), os.path.join(dest, name), ignore=_IGNORE)
    return dest


def _run(cmd, timeout, **kwargs):
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kwargs)
    if proc.returncode != 0:
        pytest.fail("%s failed (exit %d):\n%s\n%s" % (" ".join(cmd), proc.returncode, proc.stdout[-6000:], proc.stderr[-6000:]))
    return proc


def _clean_env(**extra):
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "S3IO_NO_EXTENSIONS", "S3IO_CYTHON_DEBUG")}
    env.update(extra)
    return env


def test_debug_build_with_bounds_checks_passes_core_tests(tmp_path):
    core_tests = sorted(glob.glob(os.path.join(ROOT, "tests", "test_core*.py")))
    if not core_tests:
        pytest.skip("no tests/test_core*.py yet")
    src = _copy_source(str(tmp_path / "src"))
    lib, temp = str(tmp_path / "lib"), str(tmp_path / "temp")
    _run(
        [sys.executable, "setup.py", "-q", "build_ext", "--build-lib", lib, "--build-temp", temp],
        timeout=600,
        cwd=src,
        env=_clean_env(S3IO_CYTHON_DEBUG="1"),
    )
    built = glob.glob(os.path.join(lib, "s3io", "_core_c*.so"))
    assert len(built) == 1, os.listdir(lib)
    with open(built[0], "rb") as f:
        assert b".debug_info" in f.read(), "S3IO_CYTHON_DEBUG=1 should compile with -g (and the debug directives)"

    # A private copy of the package holding the debug module, first on sys.path,
    # so neither the editable install nor the work tree's release .so is used.
    pkg_root = str(tmp_path / "pkg")
    shutil.copytree(os.path.join(ROOT, "s3io"), os.path.join(pkg_root, "s3io"), ignore=_IGNORE)
    debug_so = shutil.copy2(built[0], os.path.join(pkg_root, "s3io"))
    env = _clean_env(PYTHONPATH=pkg_root)
    probe = _run(
        [sys.executable, "-c", "import s3io._core_c as m, s3io; print(m.__file__); print(s3io.__file__)"],
        timeout=300,
        cwd=str(tmp_path),
        env=env,
    )
    imported_so, imported_pkg = probe.stdout.split()[-2:]
    assert os.path.samefile(imported_so, debug_so), imported_so
    assert imported_pkg.startswith(pkg_root), imported_pkg

    # Guard the guard: every test process must import the debug module too.
    plugin_dir = tmp_path / "plugin"
    plugin_dir.mkdir()
    (plugin_dir / "s3io_debug_guard.py").write_text(
        textwrap.dedent(
            """
            import os

            def pytest_sessionstart(session):
                import s3io._core_c as m
                assert os.path.samefile(m.__file__, %r), m.__file__
            """
            % debug_so
        )
    )
    env["PYTHONPATH"] = os.pathsep.join([pkg_root, str(plugin_dir)])
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-x", "-p", "s3io_debug_guard", "--rootdir", ROOT, *core_tests],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=str(tmp_path),
        env=env,
    )
    assert proc.returncode == 0, "core tests failed against the debug build:\n%s\n%s" % (
        proc.stdout[-8000:],
        proc.stderr[-4000:],
    )
    assert " passed" in proc.stdout


def test_sdist_has_sources_and_wheel_imports_without_cython(tmp_path):
    # By distribution, not `import build`: a ./build directory imports as a namespace package.
    try:
        importlib.metadata.version("build")
    except importlib.metadata.PackageNotFoundError:
        if os.environ.get("CI"):
            pytest.fail("the 'build' package is missing from the test extra")
        pytest.skip("needs the 'build' package (test extra)")
    src = _copy_source(str(tmp_path / "src"))
    dist = str(tmp_path / "dist")
    # Default mode builds the sdist, then the wheel *from the sdist*: proves the
    # sdist alone is enough to compile the extension.
    _run([sys.executable, "-m", "build", "--outdir", dist, src], timeout=900, cwd=str(tmp_path), env=_clean_env())

    (sdist,) = glob.glob(os.path.join(dist, "s3io-*.tar.gz"))
    with tarfile.open(sdist) as tar:
        names = [n.split("/", 1)[1] for n in tar.getnames() if "/" in n]
    expected = [
        os.path.relpath(p, ROOT)
        for p in glob.glob(os.path.join(ROOT, "csrc", "*"))
        if p.endswith((".pyx", ".pxi", ".pxd", ".h"))
    ]
    assert "csrc/_core_c.pyx" in expected
    missing = sorted(set(expected) - set(names))
    assert not missing, "sdist lacks %s" % missing
    assert not [n for n in names if n.endswith((".so", ".pyc"))], "no build products in the sdist"
    assert "setup.py" in names and "pyproject.toml" in names

    (wheel,) = glob.glob(os.path.join(dist, "s3io-*.whl"))
    with zipfile.ZipFile(wheel) as zf:
        wheel_names = zf.namelist()
    assert [n for n in wheel_names if n.startswith("s3io/_core_c") and n.endswith(".so")], wheel_names
    assert "s3io/testing/servers.py" in wheel_names and "s3io/bench/_harness.py" in wheel_names

    # A plain venv: no Cython, no torch, no boto3; only the wheel's files.
    venv = str(tmp_path / "venv")
    _run([sys.executable, "-m", "venv", venv], timeout=300)
    vpy = os.path.join(venv, "bin", "python")
    _run([vpy, "-m", "pip", "install", "-q", "--no-deps", "--no-index", wheel], timeout=300, env=_clean_env())
    check = textwrap.dedent(
        """
        import importlib.util, os, sys, types
        assert importlib.util.find_spec("Cython") is None, "Cython must not be in this venv"
        # s3io/__init__ imports torch and boto3, which this venv lacks: stand in
        # a bare package so only the compiled module (and what it imports) loads.
        spec = importlib.util.find_spec("s3io")
        pkg = types.ModuleType("s3io")
        pkg.__path__ = list(spec.submodule_search_locations)
        sys.modules["s3io"] = pkg
        import s3io._core_c as core
        assert core.__file__.endswith(".so"), core.__file__
        assert core.__file__.startswith(sys.prefix), core.__file__
        if hasattr(core, "coalesce_ranges"):
            groups = core.coalesce_ranges([(0, 10), (12, 20), (100, 110)], 5)
            assert [(g.start, g.end) for g in groups] == [(0, 20), (100, 110)], groups
        print("OK", core.__file__)
        """
    )
    proc = _run([vpy, "-c", check], timeout=300, cwd=str(tmp_path), env=_clean_env())
    assert proc.stdout.startswith("OK ")
