# Stubs of spillstore._errors. At runtime ObjectSizeExceededError also
# subclasses ProxyStore's ObjectSizeExceededError when ProxyStore is installed.
__all__ = ['CorruptedError', 'DirLockedError', 'ObjectSizeExceededError']

class ObjectSizeExceededError(ValueError):
    size: int | None
    limit: int | None
    kind: str | None

class CorruptedError(OSError):
    offset: int | None
    reason: str | None

class DirLockedError(OSError): ...
