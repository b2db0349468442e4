"""Every docstring example of the package runs, and every public function of the method has one."""

from __future__ import annotations

import doctest
import importlib
import inspect
import pkgutil

import pytest

import bara

MODULES = sorted(m.name for m in pkgutil.walk_packages(bara.__path__, "bara.") if not m.name.endswith("__main__"))
METHOD = [name for name in MODULES if name.count(".") == 1 and not name.startswith(("bara.harness", "bara.experimental"))]


@pytest.mark.parametrize("name", ["bara", *MODULES])
def test_docstring_examples_run(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE, verbose=False)
    assert result.failed == 0, f"{result.failed} docstring example(s) of {name} failed (run python -m doctest -v on it)"


def test_every_public_function_of_the_method_is_typed_documented_and_has_an_example():
    missing = []
    for name in bara.__all__:
        obj = getattr(bara, name)
        if not (inspect.isfunction(obj) or inspect.isclass(obj)):
            continue
        doc = inspect.getdoc(obj) or ""
        if ">>>" not in doc:
            missing.append(f"{name}: no example")
        if inspect.isfunction(obj):
            signature = inspect.signature(obj)
            untyped = [p for p in signature.parameters.values() if p.annotation is inspect.Parameter.empty]
            if untyped or signature.return_annotation is inspect.Signature.empty:
                missing.append(f"{name}: untyped")
    assert missing == []
