"""`spillstore-endpoint`: serve a ProxyStore 1.x endpoint on spillstore.

The endpoint is the one `proxystore-endpoint configure NAME` configured
(name, UUID, host, port, relay, in ProxyStore's home directory). It is started
exactly as `proxystore-endpoint start NAME` starts it - ProxyStore's own host
resolution, PID file, optional daemon, relay/peering set-up and server app -
except that its storage is a `spillstore.proxystore.SpillStorage` instead of a
dict or SQLite. ProxyStore clients (`Store` with an `EndpointConnector`), and
`proxystore-endpoint list` / `stop`, work with it unchanged.

Example:
    $ proxystore-endpoint configure my-endpoint --no-relay-server
    $ spillstore-endpoint my-endpoint --max-memory 4GiB --dump-dir /scratch/spill
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import re
import sys
from typing import Any, Iterator, List, Optional

from spillstore.proxystore import SpillStorage

__all__ = ['main', 'parse_size']

logger = logging.getLogger(__name__)

_UNITS = {
    '': 1,
    'b': 1,
    'k': 1 << 10,
    'kb': 10**3,
    'kib': 1 << 10,
    'm': 1 << 20,
    'mb': 10**6,
    'mib': 1 << 20,
    'g': 1 << 30,
    'gb': 10**9,
    'gib': 1 << 30,
    't': 1 << 40,
    'tb': 10**12,
    'tib': 1 << 40,
}
_SIZE = re.compile(r'\s*(\d+(?:\.\d*)?|\.\d+)\s*([a-zA-Z]*)\s*')


def parse_size(text: str) -> int:
    """Parse a size in bytes with an optional unit.

    Decimal units (`KB`, `MB`, `GB`, `TB`: powers of 1000, as ProxyStore reads
    them), binary units (`KiB`, `MiB`, `GiB`, `TiB`, and the short `K`, `M`,
    `G`, `T`: powers of 1024) and `B`, in any case; fractions allowed.

    Raises:
        ValueError: For anything else.

    Example:
        >>> parse_size('64MiB'), parse_size('1.5 GB'), parse_size('512k'), parse_size('100')
        (67108864, 1500000000, 524288, 100)
    """
    match = _SIZE.fullmatch(text)
    unit = match.group(2).lower() if match else None
    if match is None or unit not in _UNITS:
        raise ValueError(
            f'not a size: {text!r} (expected e.g. 100, 64MiB, 1.5GB, 512K)',
        )
    return int(float(match.group(1)) * _UNITS[unit])


def _size(text: str) -> int:
    try:
        return parse_size(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog='spillstore-endpoint',
        description=(
            'Start a ProxyStore endpoint (configured with `proxystore-endpoint '
            'configure NAME`) that stores its data in spillstore: at most '
            '--max-memory bytes in memory, the least recently used rest '
            'spilled to files in --dump-dir.'
        ),
        epilog='Sizes take units: 100, 64MiB, 1.5GB, 512K (K/M/G/T = KiB/MiB/GiB/TiB).',
    )
    parser.add_argument('name', help='name of the configured endpoint')
    parser.add_argument(
        '--max-memory',
        type=_size,
        metavar='SIZE',
        help='in-memory budget (default: unbounded, nothing spills)',
    )
    parser.add_argument(
        '--dump-dir',
        metavar='DIR',
        help='where values spill (default with --max-memory: the endpoint '
        "directory's spill/)",
    )
    parser.add_argument(
        '--max-object-size',
        type=_size,
        metavar='SIZE',
        help="largest value accepted (default: the endpoint config's "
        'storage.max_object_size)',
    )
    parser.add_argument(
        '--max-disk-size',
        type=_size,
        metavar='SIZE',
        help='most bytes the spill files may occupy on disk (allocated blocks)',
    )
    parser.add_argument(
        '--shards',
        type=int,
        metavar='N',
        help="shard count of the store (default: the library's)",
    )
    parser.add_argument(
        '--detach',
        action='store_true',
        help='run as a daemon, like `proxystore-endpoint start --detach`',
    )
    parser.add_argument(
        '--log-level',
        default='INFO',
        choices=['ERROR', 'WARNING', 'INFO', 'DEBUG'],
        type=str.upper,
        help='minimum logging level (default: INFO)',
    )
    parser.add_argument(
        '--proxystore-dir',
        metavar='DIR',
        help="ProxyStore's home directory (default: $PROXYSTORE_HOME, else "
        '$XDG_DATA_HOME/proxystore or ~/.local/share/proxystore)',
    )
    return parser


@contextlib.contextmanager
def _storage_is_spillstore(make: Any) -> Iterator[None]:
    """Make ProxyStore's endpoint server build its storage with `make`.

    `proxystore.endpoint.serve` builds a `DictStorage` (or a `SQLiteStorage`
    when the config names a database) from the module's globals when it
    starts serving; both names point at `make` while this is active.
    """
    from proxystore.endpoint import serve as serve_module

    names = ('DictStorage', 'SQLiteStorage')
    missing = [n for n in names if not hasattr(serve_module, n)]
    if missing:  # pragma: no cover - a ProxyStore release we do not know
        raise RuntimeError(
            'this ProxyStore release builds its endpoint storage differently '
            f'(proxystore.endpoint.serve has no {", ".join(missing)}); '
            'spillstore-endpoint supports ProxyStore 1.x',
        )
    saved = {n: getattr(serve_module, n) for n in names}
    for name in names:
        setattr(serve_module, name, make)
    try:
        yield
    finally:
        for name, value in saved.items():
            setattr(serve_module, name, value)


def main(argv: Optional[List[str]] = None) -> int:
    """Entry point of `spillstore-endpoint`; returns the exit code.

    Example:
        >>> main(['--help'])  # doctest: +SKIP
    """
    args = _parser().parse_args(argv)
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter('%(levelname)s: %(message)s'))
    logging.basicConfig(level=args.log_level, handlers=[handler])

    try:
        from proxystore.endpoint.commands import start_endpoint
        from proxystore.endpoint.config import read_config
        from proxystore.utils.environment import home_dir
    except ImportError as e:
        logger.error(
            f'{e}. spillstore-endpoint needs ProxyStore 1.x with its endpoint '
            'extras: pip install "proxystore[endpoints]>=1"',
        )
        return 1

    proxystore_dir = args.proxystore_dir or home_dir()
    endpoint_dir = os.path.join(proxystore_dir, args.name)
    try:
        config = read_config(endpoint_dir)
    except (FileNotFoundError, ValueError) as e:
        logger.error(f'{e}')
        logger.error(
            f'Configure the endpoint first: proxystore-endpoint configure {args.name}',
        )
        return 1

    dump_dir = args.dump_dir
    if dump_dir is None and args.max_memory is not None:
        dump_dir = os.path.join(endpoint_dir, 'spill')
    max_object_size = (
        args.max_object_size
        if args.max_object_size is not None
        else config.storage.max_object_size
    )
    # Validate the settings (and claim the dump dir) now, before anything
    # forks or serves, so that mistakes are reported here.
    try:
        SpillStorage(
            args.max_memory,
            dump_dir,
            max_object_size=max_object_size,
            shards=args.shards,
            max_disk_size=args.max_disk_size,
        ).store.cleanup()
    except (ValueError, OSError) as e:
        logger.error(f'{e}')
        return 1
    if config.storage.database_path is not None:
        logger.warning(
            f'The endpoint config names a database ({config.storage.database_path}); '
            'spillstore-endpoint keeps the data in spillstore instead (not persisted).',
        )

    def make_storage(*_args: Any, **_kwargs: Any) -> SpillStorage:
        logger.info(
            f'Using spillstore for storage (max memory: {args.max_memory}, '
            f'dump dir: {dump_dir}, max object size: {max_object_size})',
        )
        return SpillStorage(
            args.max_memory,
            dump_dir,
            max_object_size=max_object_size,
            shards=args.shards,
            max_disk_size=args.max_disk_size,
        )

    with _storage_is_spillstore(make_storage):
        return start_endpoint(
            args.name,
            detach=args.detach,
            log_level=args.log_level,
            proxystore_dir=proxystore_dir,
        )


if __name__ == '__main__':  # pragma: no cover
    sys.exit(main())
