"""Every error the package raises, as the issue pins them."""

from __future__ import annotations

import contextlib
import errno
import os
import pathlib
import subprocess

import pytest

import spillstore
from conftest import PROXYSTORE, spill_files


def test_missing_key_is_key_error_of_that_key() -> None:
    s = spillstore.SpillStore()
    for key in ('absent', 7, ('a', 'tuple')):
        with pytest.raises(KeyError) as e:
            s[key]  # type: ignore[index]
        assert e.value.args == (key,)
        with pytest.raises(KeyError) as e:
            del s[key]  # type: ignore[arg-type]
        assert e.value.args == (key,)


@pytest.mark.parametrize(
    'kwargs, message',
    [
        ({'max_size': 100}, 'both'),
        ({'dump_dir': 'x'}, 'both'),
        ({'dump_dir': ''}, 'both'),
        ({'max_size': 100, 'dump_dir': ''}, 'empty'),
        ({'max_size': 0, 'dump_dir': 'x'}, 'positive'),
        ({'shards': 0}, 'shards'),
        ({'shards': -1}, 'shards'),
        ({'shards': 1 << 20}, 'shards'),
        ({'max_size': -1, 'dump_dir': 'x'}, 'non-negative'),
        ({'max_object_size': -5}, 'non-negative'),
        ({'max_disk_size': 1 << 30}, 'dump_dir'),
        ({'max_size': 100, 'dump_dir': 'x', 'max_disk_size': 0}, 'positive'),
        ({'max_disk_size': -1}, 'non-negative'),
    ],
)
def test_invalid_config_is_value_error(
    kwargs: dict, message: str, tmp_path: pathlib.Path, monkeypatch
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match=message):
        spillstore.SpillStore(**kwargs)
    assert not (tmp_path / 'x').exists()


def test_endpoint_storage_both_or_neither() -> None:
    with pytest.raises(ValueError):
        spillstore.EndpointStorage(max_size=100, dump_dir=None)
    with pytest.raises(ValueError):
        spillstore.EndpointStorage(max_size=None, dump_dir='')


def test_object_limit_and_memory_limit(dump_dir: pathlib.Path) -> None:
    s = spillstore.SpillStore(100, max_object_size=50, dump_dir=dump_dir)
    with pytest.raises(spillstore.ObjectSizeExceededError, match='object limit') as e:
        s['k'] = b'x' * 51
    assert (e.value.size, e.value.limit, e.value.kind) == (51, 50, 'object')
    s2 = spillstore.SpillStore(100, dump_dir=dump_dir.parent / 'other')
    with pytest.raises(spillstore.ObjectSizeExceededError, match='memory limit') as e:
        s2['k'] = b'x' * 101
    assert (e.value.size, e.value.limit, e.value.kind) == (101, 100, 'memory')
    assert isinstance(e.value, ValueError)
    assert 'k' not in s and 'k' not in s2
    s['k'] = b'x' * 50  # at the limit is fine
    s2['k'] = b'x' * 100


def test_disk_limit(dump_dir: pathlib.Path) -> None:
    # 64 KiB in memory, 128 KiB on disk: 16 KiB values stop fitting after
    # about 12, and the insert that would go past the disk budget is refused.
    s = spillstore.SpillStore(64 << 10, dump_dir=dump_dir, shards=1, max_disk_size=128 << 10)
    stored = []
    with pytest.raises(spillstore.ObjectSizeExceededError, match='disk limit') as e:
        for i in range(100):
            s[str(i)] = bytes([i]) * (16 << 10)
            stored.append(i)
    assert (e.value.kind, e.value.limit) == ('disk', 128 << 10)
    assert e.value.size > 0
    assert str(len(stored)) not in s
    assert 8 <= len(stored) < 100
    for i in stored:
        assert s[str(i)] == bytes([i]) * (16 << 10)
    st = s.stats()
    assert st['max_disk_size'] == 128 << 10
    assert st['spill_file_allocated_bytes'] <= 128 << 10


def test_refused_replacement_keeps_the_old_value() -> None:
    s = spillstore.SpillStore(max_object_size=4)
    s['k'] = b'1234'
    with pytest.raises(spillstore.ObjectSizeExceededError):
        s['k'] = b'12345'
    assert s['k'] == b'1234'


@pytest.mark.skipif(PROXYSTORE is None, reason='ProxyStore is not installed')
def test_object_size_error_is_proxystores_too() -> None:
    from proxystore.endpoint.exceptions import ObjectSizeExceededError

    assert issubclass(spillstore.ObjectSizeExceededError, ObjectSizeExceededError)
    s = spillstore.SpillStore(max_object_size=1)
    with pytest.raises(ObjectSizeExceededError, match='object limit'):
        s['k'] = b'12'


def test_dir_locked(dump_dir: pathlib.Path) -> None:
    first = spillstore.SpillStore(1000, dump_dir=dump_dir)
    with pytest.raises(spillstore.DirLockedError) as e:
        spillstore.SpillStore(1000, dump_dir=dump_dir)
    assert isinstance(e.value, OSError)
    assert e.value.errno == errno.EBUSY
    assert e.value.filename == str(dump_dir)
    with pytest.raises(spillstore.DirLockedError):
        spillstore.EndpointStorage(max_size=1000, dump_dir=str(dump_dir))
    first.cleanup()
    # Free again once the first store is gone.
    spillstore.SpillStore(1000, dump_dir=dump_dir).cleanup()


def test_dump_dir_below_a_file_is_not_a_directory(tmp_path: pathlib.Path) -> None:
    file = tmp_path / 'file'
    file.write_bytes(b'')
    with pytest.raises(NotADirectoryError) as e:
        spillstore.SpillStore(1000, dump_dir=file / 'dump')
    assert e.value.errno == errno.ENOTDIR
    assert str(file / 'dump') in str(e.value)


def test_unwritable_dump_dir_is_permission_error(tmp_path: pathlib.Path) -> None:
    if os.geteuid() == 0:
        pytest.skip('root ignores directory permissions')
    parent = tmp_path / 'ro'
    parent.mkdir(mode=0o500)
    with pytest.raises(PermissionError) as e:
        spillstore.SpillStore(1000, dump_dir=parent / 'dump')
    assert e.value.errno == errno.EACCES


def test_corrupted_spill_is_reported_until_replaced(dump_dir: pathlib.Path) -> None:
    # No copies written ahead: the first record of the first file must be
    # the first value spilled, whatever the spiller thread's timing.
    s = spillstore.SpillStore(200, dump_dir=dump_dir, shards=1, clean_ahead=0)
    values = {str(i): bytes([i]) * 100 for i in range(20)}
    s.update(values)
    files = spill_files(dump_dir)
    # A spill file starts with a 64-byte file header; each record with a
    # 32-byte record header. Flip a byte inside the first record's value.
    first_record = 64
    with open(files[0], 'r+b') as f:
        f.seek(first_record + 32 + 50)
        byte = f.read(1)
        f.seek(first_record + 32 + 50)
        f.write(bytes([byte[0] ^ 0xFF]))
    bad = []
    for key, value in values.items():
        try:
            assert s[key] == value
        except spillstore.CorruptedError as e:
            assert isinstance(e, OSError)
            assert e.errno == errno.EIO
            assert e.filename == str(files[0])
            assert e.offset == first_record and 'checksum' in e.reason
            bad.append(key)
    assert len(bad) == 1
    with pytest.raises(spillstore.CorruptedError):
        s[bad[0]]
    assert s.stats()['corruptions'] >= 2
    s[bad[0]] = b'fresh'  # replacing the key clears it
    assert s[bad[0]] == b'fresh'
    s.cleanup()


@contextlib.contextmanager
def tmpfs(path: pathlib.Path, size: str):
    path.mkdir()
    done = subprocess.run(
        ['mount', '-t', 'tmpfs', '-o', f'size={size}', 'tmpfs', str(path)],
        capture_output=True,
    )
    if done.returncode != 0:
        pytest.skip(f'cannot mount a tmpfs: {done.stderr.decode().strip()}')
    try:
        yield path
    finally:
        subprocess.run(['umount', '-l', str(path)], check=False)


def test_full_disk_is_enospc_and_loses_nothing(tmp_path: pathlib.Path) -> None:
    if os.geteuid() != 0:
        pytest.skip('mounting a tmpfs needs root')
    with tmpfs(tmp_path / 'small', '1m') as mount:
        s = spillstore.SpillStore(64 << 10, dump_dir=mount / 'dump', shards=1)
        stored = {}
        with pytest.raises(OSError) as e:
            for i in range(1000):  # 32 MiB of values into 64 KiB + 1 MiB
                value = bytes([i % 251]) * (32 << 10)
                s[str(i)] = value
                stored[str(i)] = value
        assert e.value.errno == errno.ENOSPC, e.value
        assert not isinstance(e.value, spillstore.CorruptedError)
        assert 'No space left' in str(e.value) or 'space' in str(e.value)
        assert len(stored) > 10
        assert len(s) == len(stored)
        for key, value in stored.items():
            assert s[key] == value
        s.cleanup()
