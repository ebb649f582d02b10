"""`SpillStore` and `EndpointStorage`: the native stores as mutable mappings.

The native classes do the work (with the GIL released); subclassing
`collections.abc.MutableMapping` adds its mixin methods (`pop`, `popitem`,
`setdefault`, `update`, `==`) and makes `isinstance(s, MutableMapping)` hold.
`s[k]`, `s[k] = v`, `del s[k]`, `k in s`, `len(s)` and `s.get()` call the
native methods directly, with no Python frame in between.
"""

from __future__ import annotations

import collections.abc
from types import TracebackType
from typing import Any, Iterator, Optional, Tuple, Type

from spillstore import _spillstore

__all__ = ['EndpointStorage', 'SpillStore']

_MISSING: Any = object()


class _ValuesView(collections.abc.ValuesView):  # type: ignore[type-arg]
    """Values of a snapshot of the keys; keys removed meanwhile are skipped."""

    __slots__ = ()

    def __iter__(self) -> Iterator[bytes]:
        mapping = self._mapping
        for key in mapping:
            value = mapping.get(key, _MISSING)
            if value is not _MISSING:
                yield value


class _ItemsView(collections.abc.ItemsView):  # type: ignore[type-arg]
    """Items of a snapshot of the keys; keys removed meanwhile are skipped."""

    __slots__ = ()

    def __iter__(self) -> Iterator[Tuple[str, bytes]]:
        mapping = self._mapping
        for key in mapping:
            value = mapping.get(key, _MISSING)
            if value is not _MISSING:
                yield (key, value)


class SpillStore(_spillstore.StoreCore, collections.abc.MutableMapping):  # type: ignore[type-arg]
    """A `MutableMapping[str, bytes]` that keeps at most `max_size` bytes of
    values in memory and spills the least recently used ones to files in
    `dump_dir`, reading them back (verified) on access. It never drops a value.

    Args:
        max_size: In-memory budget in bytes (needs `dump_dir`; `None` for an
            unbounded in-memory store).
        max_object_size: Largest value accepted, in bytes.
        dump_dir: Directory the spilled values go to; created if missing, and
            used by one store at a time (`DirLockedError` otherwise).
        shards: Number of independently locked shards (rounded up to a power
            of two); the default is four per core. Each shard owns an equal
            share of `max_size` and keeps its own LRU order.
        max_disk_size: The most bytes the spill files may occupy on disk
            (allocated blocks, as `du` counts them); needs `dump_dir`. A
            spill that would go past it fails the `s[k] = v` that needed it
            with `ObjectSizeExceededError` ("disk limit"), storing nothing.
        clean_ahead: Bytes of resident values, nearest the LRU tails, that a
            background thread keeps written to disk ahead of need, so that
            the assignment that evicts them writes nothing (needs
            `dump_dir`; 0 turns it off; default a quarter of `max_size`, at
            most 256 MiB). What is in memory, and the eviction order, are the
            same either way; it costs disk space and the writes of copies
            whose values are replaced before they are evicted.

    Values are stored as copies of any bytes-like object (`bytes`,
    `bytearray`, `memoryview`, ...) and read back as new `bytes`. Every
    operation releases the GIL while the store works, so threads sharing
    one store run in parallel. `iter(s)` and `keys()` iterate over a snapshot
    of the keys. `with` ends in `cleanup()`.

    Raises:
        ValueError: For an invalid configuration (`max_size` without
            `dump_dir` or the reverse, a zero size or shard count).
        spillstore.DirLockedError: If another store uses `dump_dir`.
        OSError: If `dump_dir` cannot be created (with `errno` set).

    Example:
        >>> import spillstore, tempfile
        >>> with spillstore.SpillStore(max_size=100, dump_dir=tempfile.mkdtemp(),
        ...                            shards=1) as s:
        ...     for i in range(20):
        ...         s[str(i)] = bytes([i]) * 10
        ...     st = s.stats()
        ...     print(st['memory_entries'], st['disk_entries'], len(s))
        ...     print(s['0'] == bytes(10))
        10 10 20
        True
    """

    __slots__ = ()

    def values(self) -> _ValuesView:
        """A view of the values (each read, possibly from disk, on iteration).

        Example:
            >>> s = SpillStore()
            >>> s['a'] = b'1'
            >>> list(s.values())
            [b'1']
        """
        return _ValuesView(self)

    def items(self) -> _ItemsView:
        """A view of the `(key, value)` pairs (values read on iteration).

        Example:
            >>> s = SpillStore()
            >>> s['a'] = b'1'
            >>> dict(s.items())
            {'a': b'1'}
        """
        return _ItemsView(self)

    def __enter__(self) -> SpillStore:
        return self

    def __exit__(
        self,
        exc_type: Optional[Type[BaseException]],
        exc_value: Optional[BaseException],
        traceback: Optional[TracebackType],
    ) -> None:
        self.cleanup()


class EndpointStorage(_spillstore.EndpointStorageCore, SpillStore):  # type: ignore[misc]
    """Drop-in replacement for ProxyStore 0.4.x's
    `proxystore.endpoint.storage.EndpointStorage`: same arguments, same
    behaviour, none of its bugs.

    It keeps the exact, global LRU order of the original (one shard), so the
    same sequence of operations spills the same keys. Unlike the original,
    replacing a key does not double-count it, `clear()` deletes the spilled
    files, keys are never file names, and `cleanup()` removes the dump dir
    only when nothing but the store's own files is in it.

    Args:
        max_size: In-memory budget in bytes; least recently used values beyond
            it are dumped to `dump_dir`. Give both or neither.
        max_object_size: Largest value accepted, in bytes.
        dump_dir: Directory the values are dumped to.

    Example:
        >>> import spillstore, tempfile
        >>> s = spillstore.EndpointStorage(max_size=100, dump_dir=tempfile.mkdtemp())
        >>> for i in range(20):
        ...     s[str(i)] = bytes(10)
        >>> sorted((k for k in s if s.location(k) == 'file'), key=int)
        ['0', '1', '2', '3', '4', '5', '6', '7', '8', '9']
        >>> s.cleanup()
    """

    __slots__ = ()
