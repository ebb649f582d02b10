# Stubs of spillstore._store: what mypy and IDEs see of SpillStore and
# EndpointStorage (the runtime classes subclass the native ones).
from collections.abc import ItemsView, Iterator, MutableMapping, ValuesView
import sys
from types import TracebackType

from spillstore._spillstore import EndpointStorageCore, StoreCore

if sys.version_info >= (3, 11):
    from typing import Self
else:
    from typing_extensions import Self



__all__ = ['EndpointStorage', 'SpillStore']

class _ValuesView(ValuesView[bytes]):
    def __iter__(self) -> Iterator[bytes]: ...

class _ItemsView(ItemsView[str, bytes]):
    def __iter__(self) -> Iterator[tuple[str, bytes]]: ...

class SpillStore(StoreCore, MutableMapping[str, bytes]):
    def values(self) -> _ValuesView: ...
    def items(self) -> _ItemsView: ...
    def __enter__(self) -> Self: ...
    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None: ...

class EndpointStorage(EndpointStorageCore, SpillStore): ...
