"""A spillstore storage for ProxyStore 1.x endpoints.

`SpillStorage` implements ProxyStore 1.x's endpoint `Storage` protocol
(`proxystore.endpoint.storage.Storage`), so an endpoint keeps a bounded
amount of data in memory and spills the rest to local files, where ProxyStore
itself offers only a dict (unbounded memory) or SQLite (every read from disk).

Example:
    >>> import asyncio, tempfile, uuid
    >>> from proxystore.endpoint.endpoint import Endpoint
    >>> from spillstore.proxystore import SpillStorage
    >>> async def main() -> bytes:
    ...     storage = SpillStorage(max_size=1 << 20, dump_dir=tempfile.mkdtemp())
    ...     async with Endpoint('ep', uuid.uuid4(), storage=storage) as ep:
    ...         await ep.set('key', b'data')
    ...         return await ep.get('key')
    >>> asyncio.run(main())
    b'data'

ProxyStore is not imported by this module: the protocol is structural.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
from typing import Any, Dict, Optional, Union

from spillstore._store import SpillStore

__all__ = ['MAX_OBJECT_SIZE_DEFAULT', 'SpillStorage']

MAX_OBJECT_SIZE_DEFAULT = 100_000_000
"""The default `max_object_size`: ProxyStore's own endpoint default (100 MB)."""

# Returned by the native fast path when the value is on disk.
_ON_DISK: Any = object()
_MISSING: Any = object()


class SpillStorage:
    """ProxyStore 1.x endpoint storage on a spillstore `SpillStore`.

    Args:
        max_size: In-memory budget in bytes; least recently used blobs beyond
            it spill to `dump_dir`. `None` (with no `dump_dir`) keeps
            everything in memory, like ProxyStore's `DictStorage`.
        dump_dir: Directory blobs spill to (created if missing; one store at a
            time). Give it with `max_size`, or neither.
        max_object_size: Largest blob accepted, in bytes (ProxyStore's
            default, 100 MB); `None` for no limit besides `max_size`.
        shards: Shard count of the store (default: the library's).
        max_disk_size: The most bytes the spill files may occupy on disk
            (allocated blocks); a `set` that would go past it raises
            `ObjectSizeExceededError` ("disk limit").
        workers: Threads that run disk work (reloads, spills) off the event loop.

    Event loop: a `get` of a blob held in memory and `exists` run inline (no
    disk, microseconds). A `get` of a spilled blob, and `set` and `evict` on a
    store that can spill, run in a thread pool (`workers` threads; the store
    releases the GIL), so a reload or a spill never stalls other requests.

    Raises:
        ValueError: For invalid settings (see `spillstore.SpillStore`).

    Example:
        >>> import asyncio, tempfile
        >>> from spillstore.proxystore import SpillStorage
        >>> async def main() -> None:
        ...     s = SpillStorage(max_size=100, dump_dir=tempfile.mkdtemp())
        ...     for i in range(20):
        ...         await s.set(str(i), bytes(10))
        ...     print(await s.get('0'), await s.exists('19'), await s.get('x', b'-'))
        ...     await s.close()
        >>> asyncio.run(main())
        b'\\x00\\x00\\x00\\x00\\x00\\x00\\x00\\x00\\x00\\x00' True b'-'
    """

    def __init__(
        self,
        max_size: Optional[int] = None,
        dump_dir: Optional[Union[str, 'os.PathLike[str]']] = None,
        *,
        max_object_size: Optional[int] = MAX_OBJECT_SIZE_DEFAULT,
        shards: Optional[int] = None,
        max_disk_size: Optional[int] = None,
        workers: int = 4,
    ) -> None:
        if workers < 1:
            raise ValueError(f'workers must be at least 1, got {workers}')
        self._store = SpillStore(
            max_size,
            max_object_size,
            dump_dir,
            shards=shards,
            max_disk_size=max_disk_size,
        )
        # Writes on a store that never spills are memory work only.
        self._writes_inline = max_size is None
        self._workers = workers
        self._executor: Optional[concurrent.futures.ThreadPoolExecutor] = None

    @property
    def store(self) -> SpillStore:
        """The underlying `SpillStore` (for `stats()`, `location()`...).

        Example:
            >>> SpillStorage().store.max_size is None
            True
        """
        return self._store

    def _pool(self) -> concurrent.futures.ThreadPoolExecutor:
        if self._executor is None:
            self._executor = concurrent.futures.ThreadPoolExecutor(
                max_workers=self._workers,
                thread_name_prefix='spillstore',
            )
        return self._executor

    async def get(
        self,
        key: str,
        default: Optional[bytes] = None,
    ) -> Optional[bytes]:
        """Get a blob, or `default` if there is none.

        Example:
            >>> import asyncio
            >>> s = SpillStorage()
            >>> asyncio.run(s.get('absent', b'default'))
            b'default'
        """
        value = self._store._get_if_resident(key, _ON_DISK)
        if value is _ON_DISK:
            loop = asyncio.get_running_loop()
            value = await loop.run_in_executor(
                self._pool(),
                self._store.get,
                key,
                _MISSING,
            )
            if value is _MISSING:
                return default
            return value  # type: ignore[no-any-return]
        if value is None:
            return default
        return value  # type: ignore[no-any-return]

    async def set(self, key: str, blob: bytes) -> None:
        """Store a blob under `key` (a copy), replacing any previous one.

        Raises:
            spillstore.ObjectSizeExceededError: If the blob exceeds
                `max_object_size` or `max_size` (also a ProxyStore
                `ObjectSizeExceededError`).

        Example:
            >>> import asyncio
            >>> s = SpillStorage()
            >>> asyncio.run(s.set('k', b'v'))
            >>> asyncio.run(s.get('k'))
            b'v'
        """
        if self._writes_inline:
            self._store[key] = blob
            return
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(
            self._pool(),
            self._store.__setitem__,
            key,
            blob,
        )

    async def exists(self, key: str) -> bool:
        """Whether a blob is stored under `key` (never reads it).

        Example:
            >>> import asyncio
            >>> asyncio.run(SpillStorage().exists('k'))
            False
        """
        return key in self._store

    async def evict(self, key: str) -> None:
        """Remove the blob under `key`, if any, with its disk space.

        Example:
            >>> import asyncio
            >>> s = SpillStorage()
            >>> asyncio.run(s.set('k', b'v'))
            >>> asyncio.run(s.evict('k'))
            >>> asyncio.run(s.exists('k'))
            False
        """
        if self._writes_inline:
            self._store.pop(key, None)
            return
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._pool(), self._store.pop, key, None)

    async def close(self) -> None:
        """Delete every blob and the dump dir (if only spillstore's files are
        in it), and stop the worker threads. Closing twice is harmless.

        Example:
            >>> import asyncio
            >>> s = SpillStorage()
            >>> asyncio.run(s.close())
        """
        if self._store.closed:
            return
        if self._executor is not None:
            executor, self._executor = self._executor, None
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(executor, self._store.cleanup)
            executor.shutdown(wait=False)
        else:
            self._store.cleanup()

    def stats(self) -> Dict[str, Any]:
        """The store's sizes and counters (see `SpillStore.stats`).

        Example:
            >>> SpillStorage().stats()['entries']
            0
        """
        return self._store.stats()
