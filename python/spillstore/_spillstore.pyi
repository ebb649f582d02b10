# Stubs of the native module (python/src). Its classes are the bases of
# spillstore.SpillStore and spillstore.EndpointStorage; use those.
import os
import sys
from collections.abc import Iterator
from typing import Literal, TypeVar, overload

if sys.version_info >= (3, 12):
    from collections.abc import Buffer
else:
    from typing_extensions import Buffer

if sys.version_info >= (3, 11):
    from typing import Self
else:
    from typing_extensions import Self

from typing_extensions import disjoint_base

_T = TypeVar('_T')

__all__ = ['EndpointStorageCore', 'StoreCore', '__version__']
__version__: str

@disjoint_base
class StoreCore:
    def __new__(
        cls,
        max_size: int | None = None,
        max_object_size: int | None = None,
        dump_dir: str | os.PathLike[str] | None = None,
        *,
        shards: int | None = None,
        max_disk_size: int | None = None,
    ) -> Self: ...
    def __getitem__(self, key: str, /) -> bytes: ...
    def __setitem__(self, key: str, value: Buffer, /) -> None: ...
    def __delitem__(self, key: str, /) -> None: ...
    def __contains__(self, key: object, /) -> bool: ...
    def __len__(self) -> int: ...
    def __iter__(self) -> Iterator[str]: ...
    @overload
    def get(self, key: str, default: None = None) -> bytes | None: ...
    @overload
    def get(self, key: str, default: bytes) -> bytes: ...
    @overload
    def get(self, key: str, default: _T) -> bytes | _T: ...
    def location(self, key: str) -> Literal['memory', 'file'] | None: ...
    def _get_if_resident(self, key: str, on_disk: _T) -> bytes | None | _T: ...
    def stats(self) -> dict[str, int | None]: ...
    def clear(self) -> None: ...
    def cleanup(self) -> None: ...
    @property
    def closed(self) -> bool: ...
    @property
    def max_size(self) -> int | None: ...
    @property
    def max_object_size(self) -> int | None: ...
    @property
    def dump_dir(self) -> str | None: ...
    @property
    def shards(self) -> int: ...

class EndpointStorageCore(StoreCore):
    def __new__(
        cls,
        max_size: int | None = None,
        max_object_size: int | None = None,
        dump_dir: str | os.PathLike[str] | None = None,
    ) -> Self: ...
