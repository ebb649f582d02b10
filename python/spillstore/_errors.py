"""The exceptions spillstore raises (besides KeyError, ValueError and OSError).

`ObjectSizeExceededError` also subclasses ProxyStore's own
`proxystore.endpoint.exceptions.ObjectSizeExceededError` (where both 0.4.x and
1.x define it) when ProxyStore is importable, so ProxyStore code that catches
its exception catches ours.
"""

from __future__ import annotations

import warnings
from typing import Optional, Tuple, Type

__all__ = ['CorruptedError', 'DirLockedError', 'ObjectSizeExceededError']


def _proxystore_bases() -> Tuple[Type[Exception], ...]:
    try:
        with warnings.catch_warnings():
            # ProxyStore 0.4.x warns that its endpoints are experimental on
            # import: not news to someone who merely imports spillstore.
            warnings.simplefilter('ignore')
            from proxystore.endpoint.exceptions import (
                ObjectSizeExceededError as ProxyStoreObjectSizeExceededError,
            )
    except ImportError:  # ProxyStore is optional.
        return ()
    return (ProxyStoreObjectSizeExceededError,)


class ObjectSizeExceededError(*_proxystore_bases(), ValueError):  # type: ignore[misc]
    """A value was not stored: it is larger than a limit, or did not fit on disk.

    The message says which limit: "object limit" (`max_object_size`),
    "memory limit" (`max_size`) or "disk limit" (`max_disk_size`: the spill
    it needed would have gone past the disk budget); `size`, `limit` (bytes)
    and `kind` (`"object"`, `"memory"` or `"disk"`; for the disk, `size` is
    the bytes the spill needed) say it as attributes. A subclass of
    `ValueError` and, when ProxyStore is installed, of
    `proxystore.endpoint.exceptions.ObjectSizeExceededError`.

    Example:
        >>> import spillstore
        >>> s = spillstore.SpillStore(max_object_size=4)
        >>> try:
        ...     s['k'] = b'12345'
        ... except spillstore.ObjectSizeExceededError as e:
        ...     print(e.kind, e.size, e.limit)
        object 5 4
    """

    size: Optional[int] = None
    limit: Optional[int] = None
    kind: Optional[str] = None


class CorruptedError(OSError):
    """A spilled value failed its integrity check (its file was altered).

    The entry stays in the store, and every read of it raises this error,
    until it is removed or replaced. `errno` is `EIO`, `filename` the spill
    file; `offset` and `reason` say where and what.

    Example:
        >>> import spillstore
        >>> issubclass(spillstore.CorruptedError, OSError)
        True
    """

    offset: Optional[int] = None
    reason: Optional[str] = None


class DirLockedError(OSError):
    """The dump directory is used by another live store.

    `errno` is `EBUSY` and `filename` the directory.

    Example:
        >>> import spillstore, tempfile
        >>> d = tempfile.mkdtemp()
        >>> a = spillstore.SpillStore(1 << 20, dump_dir=d)
        >>> try:
        ...     spillstore.SpillStore(1 << 20, dump_dir=d)
        ... except spillstore.DirLockedError as e:
        ...     print('locked')
        locked
        >>> a.cleanup()
    """
