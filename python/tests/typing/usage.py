"""Checked with `mypy --strict` (by .ci/python): the stubs give these types."""

from __future__ import annotations

import asyncio
import collections.abc
import tempfile
from typing import Optional

import spillstore
from spillstore.endpoint import parse_size
from spillstore.proxystore import SpillStorage


def use_store() -> int:
    with spillstore.SpillStore(1 << 20, dump_dir=tempfile.mkdtemp(), shards=2) as s:
        s['a'] = b'1'
        s['b'] = bytearray(b'2')
        s['c'] = memoryview(b'3')
        value: bytes = s['a']
        maybe: Optional[bytes] = s.get('x')
        either: bytes | int = s.get('x', 0)
        where: Optional[str] = s.location('a')
        stats = s.stats()
        entries: Optional[int] = stats['entries']
        pairs: dict[str, bytes] = dict(s.items())
        keys: list[str] = list(s)
        popped: bytes = s.pop('c')
        view = memoryview(s.view('a'))
        print(view.readonly)
        m: collections.abc.MutableMapping[str, bytes] = s
        del s['b']
        print(value, maybe, either, where, entries, pairs, keys, popped, m)
        size: Optional[int] = s.max_size
        return len(s) + (size or 0) + s.shards


def use_endpoint_storage() -> bool:
    e = spillstore.EndpointStorage(max_size=100, dump_dir=tempfile.mkdtemp())
    try:
        e['k'] = b'x' * 101
    except spillstore.ObjectSizeExceededError as err:
        kind: Optional[str] = err.kind
        print(kind)
    except (spillstore.CorruptedError, spillstore.DirLockedError) as err:
        errno: Optional[int] = err.errno
        print(errno)
    closed: bool = e.closed
    e.cleanup()
    return closed


async def use_storage() -> Optional[bytes]:
    s = SpillStorage(max_size=1 << 20, dump_dir=tempfile.mkdtemp())
    await s.set('k', b'v')
    present: bool = await s.exists('k')
    value = await s.get('k', b'default')
    await s.evict('k')
    await s.close()
    print(present, parse_size('1GiB'))
    return value


if __name__ == '__main__':
    print(use_store(), use_endpoint_storage(), asyncio.run(use_storage()))
