"""Every public item has a docstring with an example, and the examples run.

The native classes' docstrings (from the Rust doc comments) are not seen by
`pytest --doctest-modules`, which skips extension modules: they run here.
"""

from __future__ import annotations

import doctest
import inspect

import pytest

import spillstore
import spillstore.endpoint
from spillstore import _spillstore
from conftest import needs_proxystore_1


def public_items():
    modules = [spillstore, spillstore.endpoint]
    for module in modules:
        for name in module.__all__:
            if name.startswith('__'):
                continue
            obj = getattr(module, name)
            if not (inspect.isclass(obj) or callable(obj)):
                continue
            yield f'{module.__name__}.{name}', obj
            if inspect.isclass(obj):
                for attr, member in inspect.getmembers(obj):
                    if attr.startswith('_') or attr in {'pop', 'popitem', 'setdefault', 'update', 'keys'}:
                        continue  # private, or MutableMapping's own mixins
                    if isinstance(member, type) and issubclass(member, BaseException):
                        continue
                    if isinstance(obj, type) and issubclass(obj, BaseException):
                        break  # exceptions: the class docstring covers them
                    yield f'{module.__name__}.{name}.{attr}', member
    yield 'spillstore._spillstore.BytesView', _spillstore.BytesView


ITEMS = dict(public_items())


@pytest.mark.parametrize('name', sorted(ITEMS))
def test_docstring_has_an_example_that_runs(name: str) -> None:
    obj = ITEMS[name]
    doc = inspect.getdoc(obj)
    assert doc, f'{name} has no docstring'
    assert '>>>' in doc, f'{name} has no example'
    parser = doctest.DocTestParser()
    module = inspect.getmodule(obj.fget if isinstance(obj, property) else obj)
    globs = dict(vars(module)) if module is not None else {}
    test = parser.get_doctest(doc, globs, name, None, 0)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    runner.run(test)
    assert runner.failures == 0, f'{name}: an example failed'


@needs_proxystore_1
def test_storage_docstrings() -> None:
    from spillstore.proxystore import SpillStorage

    for attr in ('get', 'set', 'exists', 'evict', 'close', 'stats', 'store'):
        member = inspect.getattr_static(SpillStorage, attr)
        doc = inspect.getdoc(member.fget if isinstance(member, property) else member)
        assert doc and '>>>' in doc, attr
    assert '>>>' in inspect.getdoc(SpillStorage)
