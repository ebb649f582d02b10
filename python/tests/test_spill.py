"""Spilling, reloading and cleaning up, seen from Python."""

from __future__ import annotations

import os
import pathlib

import pytest

import spillstore
from conftest import spill_files


def test_spill_and_reload_in_lru_order(dump_dir: pathlib.Path) -> None:
    # EndpointStorage promises the exact, global LRU order (SpillStore's
    # default order may be approximate): the seed's sequence.
    s = spillstore.EndpointStorage(100, dump_dir=str(dump_dir))
    for i in range(20):
        s[str(i)] = bytes([i]) * 10
    assert [s.location(str(i)) for i in range(20)] == ['file'] * 10 + ['memory'] * 10
    assert s.location('absent') is None
    st = s.stats()
    assert (st['memory_bytes'], st['disk_bytes']) == (100, 100)
    # Ten evictions: each wrote its value, or dropped it from memory because
    # the background spiller had written a copy ahead (a respill).
    assert st['spills'] + st['respills'] == 10
    assert st['spills'] + st['cleaned'] >= 10
    assert s['0'] == bytes(10)  # read back, verified, resident again
    assert s.location('0') == 'memory'
    assert s.location('10') == 'file'  # the least recently used made room
    assert s.stats()['reloads'] == 1
    assert s.stats()['memory_bytes'] <= 100


def test_spill_and_reload_whatever_the_order(dump_dir: pathlib.Path) -> None:
    s = spillstore.SpillStore(100, dump_dir=dump_dir, shards=1)
    for i in range(20):
        s[str(i)] = bytes([i]) * 10
    where = [s.location(str(i)) for i in range(20)]
    assert where.count('file') == 10 and where.count('memory') == 10
    spilled = where.index('file')
    assert s[str(spilled)] == bytes([spilled]) * 10
    assert s.location(str(spilled)) == 'memory'
    st = s.stats()
    assert (st['reloads'], st['memory_bytes'], st['disk_bytes']) == (1, 100, 100)
    s.cleanup()


def test_every_value_survives_a_budget_far_below_the_data(dump_dir: pathlib.Path) -> None:
    s = spillstore.SpillStore(64 << 10, dump_dir=dump_dir)
    values = {f'k{i}': os.urandom(i * 37 % 9000) for i in range(400)}
    s.update(values)
    st = s.stats()
    assert st['memory_bytes'] <= 64 << 10
    assert st['memory_bytes'] + st['disk_bytes'] == sum(map(len, values.values()))
    for key, value in values.items():
        assert s[key] == value
    assert dict(s.items()) == values
    s.cleanup()


def test_values_larger_than_a_shard_share(dump_dir: pathlib.Path) -> None:
    # 8 shards of 128 KiB: a 1 MiB value goes straight to disk and reads back.
    s = spillstore.SpillStore(1 << 20, dump_dir=dump_dir, shards=8)
    big = os.urandom(1 << 20)
    s['big'] = big
    assert s['big'] == big
    s.cleanup()


def test_remove_frees_memory_and_disk(dump_dir: pathlib.Path) -> None:
    s = spillstore.SpillStore(100, dump_dir=dump_dir, shards=1)
    for i in range(20):
        s[str(i)] = bytes(10)
    for i in range(20):
        del s[str(i)]
    st = s.stats()
    assert (st['entries'], st['memory_bytes'], st['disk_bytes']) == (0, 0, 0)
    assert spill_files(dump_dir) == []  # the space-leak check
    s.cleanup()


def test_clear_deletes_the_files_and_keeps_the_dir(dump_dir: pathlib.Path) -> None:
    s = spillstore.SpillStore(100, dump_dir=dump_dir, shards=1)
    for i in range(20):
        s[str(i)] = bytes(10)
    assert spill_files(dump_dir)
    s.clear()
    assert len(s) == 0 and spill_files(dump_dir) == []
    assert dump_dir.is_dir()
    s['again'] = b'x' * 50
    assert s['again'] == b'x' * 50
    s.cleanup()


def test_cleanup_removes_the_dir_but_not_someone_elses_files(tmp_path: pathlib.Path) -> None:
    mine = tmp_path / 'mine'
    s = spillstore.SpillStore(10, dump_dir=mine)
    s['a'], s['b'] = bytes(8), bytes(8)
    s.cleanup()
    assert not mine.exists()

    shared = tmp_path / 'shared'
    shared.mkdir()
    (shared / 'notes.txt').write_text('keep me')
    s = spillstore.SpillStore(10, dump_dir=shared)
    s['a'], s['b'] = bytes(8), bytes(8)
    s.cleanup()
    assert sorted(p.name for p in shared.iterdir()) == ['notes.txt']


def test_dropping_a_store_deletes_its_spilled_data(dump_dir: pathlib.Path) -> None:
    s = spillstore.SpillStore(10, dump_dir=dump_dir)
    for i in range(10):
        s[str(i)] = bytes(8)
    del s
    assert spill_files(dump_dir) == []
    # The lock went with it: the dir can be used again.
    spillstore.SpillStore(10, dump_dir=dump_dir).cleanup()


def test_clean_ahead_is_checked(dump_dir: pathlib.Path) -> None:
    with pytest.raises(ValueError, match='clean_ahead'):
        spillstore.SpillStore(clean_ahead=1)  # no dump_dir to write to
    with pytest.raises(ValueError, match='clean_ahead'):
        spillstore.SpillStore(100, dump_dir=dump_dir, clean_ahead=-1)
    with spillstore.SpillStore(100, dump_dir=dump_dir, shards=1, clean_ahead=0) as s:
        for i in range(20):
            s[str(i)] = bytes([i]) * 10
        st = s.stats()
        # Nothing written ahead: every eviction wrote its value.
        assert (st['cleaned'], st['spills'], st['respills']) == (0, 10, 0)
