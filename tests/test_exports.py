"""The public surface: everything exported exists, is documented, and the package is typed."""

from __future__ import annotations

import importlib.resources
import inspect

import rxnsq


def test_all_names_exist_and_are_documented() -> None:
    for name in rxnsq.__all__:
        obj = getattr(rxnsq, name)
        if inspect.isclass(obj) or inspect.isfunction(obj) or inspect.ismodule(obj):
            assert obj.__doc__, f"{name} has no docstring"


def test_public_names_are_listed() -> None:
    public = {n for n in vars(rxnsq) if not n.startswith("_")}
    submodules = {n for n in public if inspect.ismodule(getattr(rxnsq, n))}
    assert public - submodules - {"ops"} <= set(rxnsq.__all__)


def test_py_typed_ships() -> None:
    assert importlib.resources.files("rxnsq").joinpath("py.typed").is_file()


def test_version_has_one_source() -> None:
    from rxnsq._version import __version__

    assert rxnsq.__version__ == __version__
    assert rxnsq.ConnectionOptions().user_agent == f"rxnsq/{__version__}"


def test_run_returns_what_main_returns() -> None:
    import subprocess
    import sys

    code = "import rxnsq\nasync def main():\n    return 42\nprint(rxnsq.run(main()))\n"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=30, check=False
    )
    assert result.returncode == 0 and result.stdout.strip() == "42", result.stderr


def test_all_is_sorted_unique_and_resolvable() -> None:
    assert list(rxnsq.__all__) == sorted(set(rxnsq.__all__))
    for name in rxnsq.__all__:
        assert hasattr(rxnsq, name), name


def test_every_error_lives_in_one_tree_and_is_exported() -> None:
    """The export rule: every error class of the library is defined in ``rxnsq.errors``,
    named in its tree, and exported from ``rxnsq``. (``rxnsq.compat`` keeps pynsq's own
    names; the command line (``rxnsq.cli`` and the text settings it shares with the worker
    command, ``rxnsq.arguments``: a usage error, printed with exit status 2) and the test
    harness have private ones.)"""
    import importlib
    import pkgutil

    from rxnsq import errors

    tree = errors.__doc__ or ""
    for name in errors.__all__:
        obj = getattr(errors, name)
        if inspect.isclass(obj) and issubclass(obj, Exception):
            assert name in rxnsq.__all__, f"{name} is not exported from rxnsq"
            assert name in tree, f"{name} is missing from the tree in rxnsq.errors"
    skip = ("rxnsq.compat", "rxnsq.cli", "rxnsq.arguments", "rxnsq.testing", "rxnsq.errors")
    for info in pkgutil.walk_packages(rxnsq.__path__, "rxnsq."):
        if info.name.startswith(skip):
            continue
        module = importlib.import_module(info.name)
        for name, obj in vars(module).items():
            if inspect.isclass(obj) and issubclass(obj, BaseException):
                assert obj.__module__ in (
                    "rxnsq.errors",
                    "builtins",
                ) or not obj.__module__.startswith("rxnsq"), (
                    f"{info.name}.{name} is an error class outside rxnsq.errors"
                )
