"""The s3io core, from the compiled twin ``s3io._core_c`` unless ``S3IO_NO_EXTENSIONS=1``.

``IMPLEMENTATION`` says which twin is in use: ``"c"`` or ``"py"``.  A compiled twin
that fails to import is an error, never a silent fallback to the slow one.
"""

import os

__all__ = [
    "DEFAULT_BUFFER_SIZE",
    "IMPLEMENTATION",
    "ItemRange",
    "ItemViewBuffer",
    "RangeBuffer",
    "RangeGroup",
    "coalesce_ranges",
    "copy_into",
]

if os.environ.get("S3IO_NO_EXTENSIONS") == "1":
    from s3io import _core_py as _impl

    IMPLEMENTATION = "py"
else:
    try:
        from s3io import _core_c as _impl
    except ImportError as exc:
        raise ImportError(
            f"s3io's compiled core (s3io._core_c) failed to import: {exc}. "
            "Rebuild it (`python setup.py build_ext --inplace`, or reinstall s3io), "
            "or set S3IO_NO_EXTENSIONS=1 to use the pure-Python core explicitly."
        ) from exc

    IMPLEMENTATION = "c"

DEFAULT_BUFFER_SIZE = _impl.DEFAULT_BUFFER_SIZE
ItemRange = _impl.ItemRange
ItemViewBuffer = _impl.ItemViewBuffer
RangeBuffer = _impl.RangeBuffer
RangeGroup = _impl.RangeGroup
coalesce_ranges = _impl.coalesce_ranges
copy_into = _impl.copy_into
