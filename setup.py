"""Build s3io: one compiled module (``s3io._core_c``) from ``csrc/``.

``S3IO_NO_EXTENSIONS=1`` builds the pure-Python package; otherwise a failed
compile fails the build (no silent fallback).  ``S3IO_CYTHON_DEBUG=1`` turns
bounds and wraparound checks on and compiles without optimisation.
"""
import os

from setuptools import Extension, setup

NO_EXTENSIONS = os.environ.get("S3IO_NO_EXTENSIONS") == "1"
DEBUG = os.environ.get("S3IO_CYTHON_DEBUG") == "1"


def extensions():
    if NO_EXTENSIONS:
        return []
    from Cython.Build import cythonize

    directives = {
        "language_level": 3,
        "embedsignature": True,
        "boundscheck": DEBUG,
        "wraparound": DEBUG,
        "initializedcheck": DEBUG,
        "cdivision": not DEBUG,
    }
    ext = Extension(
        "s3io._core_c",
        ["csrc/_core_c.pyx"],
        extra_compile_args=["-O0", "-g"] if DEBUG else ["-O3"],
    )
    # Separate build dirs so switching between debug and release never reuses
    # a C file generated with the other directives.
    mode = "debug" if DEBUG else "release"
    return cythonize([ext], compiler_directives=directives, build_dir=f"build/cython-{mode}", force=DEBUG)


setup(ext_modules=extensions())
