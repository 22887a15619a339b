"""Finding the suites: the ``suite_<name>.py`` modules of this package, plus any registered by a test."""
from __future__ import annotations

import importlib
import pkgutil
from typing import TYPE_CHECKING, Callable, Dict, List

if TYPE_CHECKING:  # pragma: no cover
    from s3io.bench._context import BenchContext
    from s3io.bench._results import SuiteResult

__all__ = ["register_suite", "unregister_suite", "available_suites"]

SuiteRunner = Callable[["BenchContext"], "SuiteResult"]

_REGISTERED: Dict[str, SuiteRunner] = {}


def register_suite(name: str, run: SuiteRunner) -> None:
    """Add a suite that is not a ``suite_<name>.py`` module (tests use this).

    Parameters
    ----------
    name : str
        The name to run it by.
    run : callable
        ``run(ctx: BenchContext) -> SuiteResult``; its docstring's first line is shown by ``--list``.
    """
    _REGISTERED[name] = run


def unregister_suite(name: str) -> None:
    """Remove a suite added with :func:`register_suite`."""
    _REGISTERED.pop(name, None)


def _module_suites() -> List[str]:
    import s3io.bench as package

    return sorted(m.name[len("suite_") :] for m in pkgutil.iter_modules(package.__path__) if m.name.startswith("suite_"))


def available_suites() -> List[str]:
    """Names of all suites: the ``suite_*.py`` modules, then registered ones."""
    names = _module_suites()
    return names + [n for n in _REGISTERED if n not in names]


def suite_runner(name: str) -> SuiteRunner:
    """The ``run`` function of a suite (imports its module)."""
    if name in _REGISTERED:
        return _REGISTERED[name]
    module = importlib.import_module("s3io.bench.suite_%s" % name)
    return module.run


def suite_doc(name: str) -> str:
    """The first line of a suite's docstring, without importing its module."""
    if name in _REGISTERED:
        doc = _REGISTERED[name].__doc__ or ""
    else:
        try:
            import importlib.util

            spec = importlib.util.find_spec("s3io.bench.suite_%s" % name)
            doc = _module_docstring(spec.origin) if spec and spec.origin else ""
        except Exception:
            doc = ""
    return doc.strip().splitlines()[0] if doc.strip() else ""


def _module_docstring(path: str) -> str:
    # Read the docstring without importing the suite (imports can be slow: torch).
    import ast

    try:
        with open(path, encoding="utf-8") as f:
            return ast.get_docstring(ast.parse(f.read())) or ""
    except (OSError, SyntaxError):
        return ""
