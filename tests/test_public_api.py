"""The public namespace: one sorted ``__all__`` that matches what the package exports."""

from __future__ import annotations

import ast
import inspect
import itertools
import json
import pathlib
import subprocess
import sys
import types

import pytest

import kling_async as ka

PACKAGE_DIR = pathlib.Path(ka.__file__).parent
#: Dunder names follow their own conventions (``__version__`` is a plain string).
DUNDERS = {name for name in ka.__all__ if name.startswith("__")}


def fresh_interpreter(code: str) -> object:
    """Run ``code`` in a new interpreter (no test has imported anything yet) and load its JSON."""
    completed = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )
    return json.loads(completed.stdout)


def attribute_docstrings() -> set[str]:
    """Module-level names in the package that have an attribute docstring under them."""
    documented: set[str] = set()
    for path in PACKAGE_DIR.glob("*.py"):
        body = ast.parse(path.read_text(encoding="utf-8")).body
        for statement, following in itertools.pairwise(body):
            is_doc = (
                isinstance(following, ast.Expr)
                and isinstance(following.value, ast.Constant)
                and isinstance(following.value.value, str)
                and following.value.value.strip()
            )
            if not is_doc:
                continue
            targets = (
                statement.targets
                if isinstance(statement, ast.Assign)
                else [statement.target]
                if isinstance(statement, ast.AnnAssign)
                else []
            )
            documented.update(t.id for t in targets if isinstance(t, ast.Name))
    return documented


def own_doc(obj: object) -> str | None:
    if isinstance(obj, type):
        return obj.__dict__.get("__doc__")
    if isinstance(obj, (types.ModuleType, types.FunctionType)):
        return obj.__doc__
    return None


def test_all_is_sorted() -> None:
    assert list(ka.__all__) == sorted(ka.__all__)


def test_all_has_no_duplicates() -> None:
    assert len(set(ka.__all__)) == len(ka.__all__)


@pytest.mark.parametrize("name", ka.__all__)
def test_every_exported_name_exists(name: str) -> None:
    assert hasattr(ka, name)


@pytest.mark.parametrize("name", sorted(set(ka.__all__) - DUNDERS))
def test_every_exported_name_has_a_docstring(name: str) -> None:
    obj = getattr(ka, name)
    doc = own_doc(obj)
    if doc is None and not isinstance(obj, (type, types.ModuleType, types.FunctionType)):
        # A type alias or constant: documented by a string literal under its assignment.
        assert name in attribute_docstrings(), f"{name} has no attribute docstring"
        return
    assert doc
    assert doc.strip()


def test_every_public_name_is_in_all() -> None:
    public = fresh_interpreter(
        "import json, kling_async as ka; "
        "print(json.dumps([n for n in dir(ka) if not n.startswith('_')]))"
    )
    assert isinstance(public, list)
    assert sorted(set(public) - set(ka.__all__)) == []


def test_webhooks_available_without_separate_import() -> None:
    result = fresh_interpreter(
        "import json, kling_async as ka; "
        "print(json.dumps([ka.webhooks.__name__, hasattr(ka.webhooks, 'CallbackReceiver'), "
        "callable(ka.webhooks.parse_callback)]))"
    )
    assert result == ["kling_async.webhooks", True, True]


def test_version_is_a_string() -> None:
    assert isinstance(ka.__version__, str)
    assert ka.__version__.count(".") >= 1


def test_private_modules_stay_private() -> None:
    for name in ka.__all__:
        assert not name.startswith("_") or name in DUNDERS


@pytest.mark.parametrize(
    "name",
    sorted(name for name in ka.__all__ if isinstance(getattr(ka, name), type)),
)
def test_public_methods_have_docstrings(name: str) -> None:
    cls = getattr(ka, name)
    if issubclass(cls, BaseException):
        return  # exceptions expose no methods of their own beyond Exception's
    missing = []
    for attr, value in vars(cls).items():
        if attr.startswith("_"):
            continue
        func = value.fget if isinstance(value, property) else value
        func = getattr(func, "__func__", func)  # classmethod / staticmethod
        if inspect.isfunction(func) and not (func.__doc__ or "").strip():
            missing.append(attr)
    assert missing == []
