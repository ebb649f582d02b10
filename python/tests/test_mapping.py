"""SpillStore is a MutableMapping[str, bytes]: the whole contract."""

from __future__ import annotations

import array
import collections.abc
import pathlib

import pytest

import spillstore


@pytest.fixture(params=['memory', 'spilling'])
def store(request: pytest.FixtureRequest, dump_dir: pathlib.Path):
    if request.param == 'memory':
        s = spillstore.SpillStore()
    else:
        # A budget of 30 bytes: most values below live on disk.
        s = spillstore.SpillStore(30, dump_dir=dump_dir, shards=1)
    yield s
    s.cleanup()


def test_is_a_mutable_mapping(store) -> None:
    assert isinstance(store, collections.abc.MutableMapping)
    assert isinstance(store, collections.abc.Mapping)
    assert issubclass(spillstore.SpillStore, collections.abc.MutableMapping)
    assert isinstance(spillstore.EndpointStorage(), collections.abc.MutableMapping)


def test_set_get_del_contains_len(store) -> None:
    data = {f'key{i}': f'value{i}'.encode() for i in range(10)}
    for k, v in data.items():
        store[k] = v
        assert store[k] == v
    assert len(store) == 10
    assert all(k in store for k in data)
    assert 'missing' not in store
    assert 1 not in store  # not a str: never stored
    del store['key3']
    assert 'key3' not in store
    assert len(store) == 9
    with pytest.raises(KeyError) as e:
        store['key3']
    assert e.value.args == ('key3',)
    with pytest.raises(KeyError) as e:
        del store['key3']
    assert e.value.args == ('key3',)


def test_values_are_bytes_copies_of_any_buffer(store) -> None:
    source = bytearray(b'abcdef')
    store['bytearray'] = source
    source[0] = ord('X')  # the store keeps its own copy
    store['memoryview'] = memoryview(b'0123456789')[2:5]
    store['array'] = array.array('i', [1, 2])
    store['bytes'] = b'plain'
    store['empty'] = b''
    assert store['bytearray'] == b'abcdef'
    assert store['memoryview'] == b'234'
    assert store['array'] == array.array('i', [1, 2]).tobytes()
    assert store['bytes'] == b'plain'
    assert store['empty'] == b''
    assert all(type(store[k]) is bytes for k in store)
    with pytest.raises(TypeError):
        store['str'] = 'not bytes'  # type: ignore[assignment]
    with pytest.raises(TypeError):
        store['int'] = 5  # type: ignore[assignment]
    with pytest.raises(TypeError):
        store[5] = b'x'  # type: ignore[index]
    assert 'str' not in store and 'int' not in store


def test_get_with_default(store) -> None:
    store['k'] = b'v'
    assert store.get('k') == b'v'
    assert store.get('missing') is None
    assert store.get('missing', b'd') == b'd'
    sentinel = object()
    assert store.get('missing', sentinel) is sentinel
    assert store.get(42, 'x') == 'x'  # type: ignore[call-overload]


def test_iteration_is_a_snapshot(store) -> None:
    for i in range(5):
        store[str(i)] = b'x'
    seen = []
    for key in store:  # mutating while iterating is fine: a snapshot
        seen.append(key)
        del store[key]
        store[key + 'new'] = b'y'
    assert sorted(seen) == ['0', '1', '2', '3', '4']
    assert sorted(store) == sorted(f'{i}new' for i in range(5))


def test_views(store) -> None:
    data = {str(i): bytes([i]) * 12 for i in range(6)}
    store.update(data)
    assert set(store.keys()) == set(data)
    assert 'missing' not in store.keys()
    assert sorted(store.values()) == sorted(data.values())
    assert dict(store.items()) == data
    assert ('0', data['0']) in store.items()
    assert len(store.keys()) == len(store.values()) == len(store.items()) == 6
    # A key removed while the values are read is skipped, not an error.
    values = iter(store.values())
    next(values)
    store.clear()
    assert list(values) == []


def test_mixins(store) -> None:
    store.update({'a': b'1'}, b=b'2')
    store.update([('c', b'3')])
    assert store.setdefault('a', b'other') == b'1'
    assert store.setdefault('d', b'4') == b'4'
    assert store.pop('d') == b'4'
    assert store.pop('d', None) is None
    with pytest.raises(KeyError):
        store.pop('d')
    key, value = store.popitem()
    assert key in 'abc' and value in (b'1', b'2', b'3') and key not in store
    assert store == {k: v for k, v in [('a', b'1'), ('b', b'2'), ('c', b'3')] if k != key}
    assert store != {'zzz': b''}
    store.clear()
    assert len(store) == 0 and list(store) == []
    with pytest.raises(KeyError):
        store.popitem()


def test_replacing_counts_once(store) -> None:
    for _ in range(5):
        store['k'] = b'x' * 10
    st = store.stats()
    assert st['entries'] == 1
    assert st['memory_bytes'] + st['disk_bytes'] == 10


def test_unhashable_like_dict(store) -> None:
    with pytest.raises(TypeError):
        hash(store)


def test_context_manager_cleans_up(dump_dir: pathlib.Path) -> None:
    with spillstore.SpillStore(10, dump_dir=dump_dir) as s:
        s['a'] = b'x' * 8
        s['b'] = b'y' * 8
        assert dump_dir.is_dir()
    assert not dump_dir.exists()
    assert s.closed
    with pytest.raises(ValueError, match='cleaned up'):
        s['a']
    with pytest.raises(ValueError, match='cleaned up'):
        len(s)
    s.cleanup()  # again: nothing to do
    assert 'cleaned up' in repr(s)


def test_attributes(dump_dir: pathlib.Path) -> None:
    s = spillstore.SpillStore(1000, 10, str(dump_dir), shards=3)
    assert (s.max_size, s.max_object_size, s.dump_dir) == (1000, 10, str(dump_dir))
    assert s.shards == 4  # rounded up to a power of two
    assert 'max_size=1000' in repr(s)
    e = spillstore.EndpointStorage(max_size=1000, dump_dir=dump_dir / 'e')
    assert e.shards == 1
    assert spillstore.SpillStore().max_size is None
    s.cleanup()
    e.cleanup()


def test_stats_has_the_rust_fields() -> None:
    s = spillstore.SpillStore()
    s['a'] = b'12345'
    s['a']
    s.get('b')
    st = s.stats()
    assert {
        'entries', 'memory_entries', 'disk_entries', 'memory_bytes',
        'disk_bytes', 'max_size', 'spill_files', 'spill_file_bytes', 'hits',
        'misses', 'reloads', 'reloaded_bytes', 'unpromoted_reloads', 'spills',
        'spilled_bytes', 'respills', 'cleaned', 'cleaned_bytes', 'corruptions',
        'compactions', 'compacted_bytes',
    } <= set(st)
    assert (st['entries'], st['memory_bytes'], st['hits'], st['misses']) == (1, 5, 1, 1)
    assert st['max_size'] is None
