"""Build s3io: one compiled module (``s3io._core_c``) from ``csrc/``.

``S3IO_NO_EXTENSIONS=1`` builds the pure-Python package; otherwise a failed
compile fails the build (no silent fallback).  ``S3IO_CYTHON_DEBUG=1`` turns
bounds and wraparound checks on and compiles without optimisation, with debug
symbols; a release build links the extension stripped (``-s``: no symbol table,
no debug sections) and without the interpreter's rpath.
"""
import os

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

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
        # Python's own CFLAGS carry -g: without -s a release .so ships ~800 KB of DWARF.
        extra_link_args=[] if DEBUG else ["-s"],
    )
    # Separate build dirs so switching between debug and release never reuses
    # a C file generated with the other directives.
    mode = "debug" if DEBUG else "release"
    return cythonize([ext], compiler_directives=directives, build_dir=f"build/cython-{mode}", force=DEBUG)


class BuildExt(build_ext):
    """build_ext that links without the interpreter's own ``-Wl,-rpath``.

    A Python built with a shared libpython (pyenv's) links every extension with
    an rpath to its lib directory; the extension needs only libc, and a wheel
    must not carry a path of the machine that built it.
    """

    def build_extensions(self):
        self.compiler.linker_so = [arg for arg in self.compiler.linker_so if not arg.startswith("-Wl,-rpath")]
        super().build_extensions()


setup(ext_modules=extensions(), cmdclass={"build_ext": BuildExt})
