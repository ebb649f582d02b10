"""`view()`: the value without a copy where the build supports it."""

from __future__ import annotations

import os
import pathlib

import pytest

import spillstore
from spillstore import _spillstore


@pytest.mark.parametrize('size', [0, 10, 64 << 10, 2 << 20])
def test_a_view_reads_as_the_value(size: int, dump_dir: pathlib.Path) -> None:
    s = spillstore.SpillStore(4 << 20, dump_dir=dump_dir, shards=1)
    value = os.urandom(size)
    s['k'] = value
    view = s.view('k')
    assert len(view) == size
    assert bytes(view) == value
    m = memoryview(view)
    assert m.readonly and m.nbytes == size and m.tobytes() == value
    with pytest.raises(TypeError):
        m[:1] = b'x'  # read-only
    with pytest.raises(KeyError) as e:
        s.view('absent')
    assert e.value.args == ('absent',)
    with pytest.raises(KeyError):
        s.view(3)  # type: ignore[arg-type]
    s.cleanup()


def test_a_view_of_a_spilled_value(dump_dir: pathlib.Path) -> None:
    s = spillstore.SpillStore(100, dump_dir=dump_dir, shards=1)
    for i in range(20):
        s[str(i)] = bytes([i]) * 10
    spilled = next(str(i) for i in range(20) if s.location(str(i)) == 'file')
    assert bytes(s.view(spilled)) == bytes([int(spilled)]) * 10
    assert s.location(spilled) == 'memory'  # a view is a get: it reloads
    s.cleanup()


@pytest.mark.skipif(not _spillstore.ZERO_COPY_VIEWS, reason='a build without zero-copy views')
def test_a_zero_copy_view_outlives_its_key(dump_dir: pathlib.Path) -> None:
    s = spillstore.SpillStore(1 << 20, dump_dir=dump_dir)
    value = os.urandom(100_000)
    s['k'] = value
    view = s.view('k')
    assert isinstance(view, _spillstore.BytesView)
    m = memoryview(view)
    assert m.obj is view
    s['k'] = b'replaced'
    del s['k']
    s.clear()
    s.cleanup()
    assert m.tobytes() == value and bytes(view) == value
    assert 'BytesView of 100000 bytes' in repr(view)


@pytest.mark.skipif(_spillstore.ZERO_COPY_VIEWS, reason='a build with zero-copy views')
def test_without_zero_copy_a_view_is_a_copy() -> None:
    s = spillstore.SpillStore()
    s['k'] = b'abc'
    assert type(s.view('k')) is bytes
