"""spillstore: a bounded-memory blob store that spills to disk, from Rust.

`SpillStore` is a `MutableMapping[str, bytes]` that holds at most `max_size`
bytes of values in memory and spills the least recently used ones to files in
`dump_dir` (read back, verified, through memory maps). It never loses a value.
`EndpointStorage` is the drop-in for ProxyStore 0.4.x's class of that name;
`spillstore.proxystore.SpillStorage` is a storage for ProxyStore 1.x endpoints
and `spillstore-endpoint` serves one.

Example:
    >>> import spillstore, tempfile
    >>> s = spillstore.SpillStore(max_size=1 << 20, dump_dir=tempfile.mkdtemp())
    >>> s['report'] = b'x' * 4096
    >>> len(s['report']), s.location('report')
    (4096, 'memory')
    >>> s.cleanup()
"""

from __future__ import annotations

from spillstore._errors import CorruptedError
from spillstore._errors import DirLockedError
from spillstore._errors import ObjectSizeExceededError
from spillstore._spillstore import BytesView
from spillstore._spillstore import __version__
from spillstore._store import EndpointStorage
from spillstore._store import SpillStore

__all__ = [
    'BytesView',
    'CorruptedError',
    'DirLockedError',
    'EndpointStorage',
    'ObjectSizeExceededError',
    'SpillStore',
    '__version__',
]
