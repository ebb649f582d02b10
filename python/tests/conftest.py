"""Shared fixtures and markers of the Python tests.

The tests run in two environments (see .ci/python): one with ProxyStore 1.x
and one with ProxyStore 0.4.1 (the two cannot share a virtualenv). A test
that needs one of them is marked and skipped in the other. Set
SPILLSTORE_TEST_PROXYSTORE to the version the environment is meant to have,
and a missing or different ProxyStore fails the run instead of skipping.
"""

from __future__ import annotations

import importlib.metadata
import os
import pathlib
from typing import Any, Iterable, Optional

import pytest


def proxystore_version() -> Optional[str]:
    try:
        return importlib.metadata.version('proxystore')
    except importlib.metadata.PackageNotFoundError:
        return None


PROXYSTORE = proxystore_version()
PROXYSTORE_MAJOR = int(PROXYSTORE.split('.')[0]) if PROXYSTORE else None

needs_proxystore_041 = pytest.mark.skipif(
    PROXYSTORE != '0.4.1',
    reason=f'needs proxystore==0.4.1 (installed: {PROXYSTORE})',
)
needs_proxystore_1 = pytest.mark.skipif(
    PROXYSTORE_MAJOR is None or PROXYSTORE_MAJOR < 1,
    reason=f'needs proxystore>=1 (installed: {PROXYSTORE})',
)


def pytest_configure(config: pytest.Config) -> None:
    expected = os.environ.get('SPILLSTORE_TEST_PROXYSTORE')
    if expected and expected != PROXYSTORE:
        raise pytest.UsageError(
            f'SPILLSTORE_TEST_PROXYSTORE={expected} but proxystore '
            f'{PROXYSTORE} is installed',
        )


@pytest.fixture()
def dump_dir(tmp_path: pathlib.Path) -> pathlib.Path:
    """A dump dir that does not exist yet (the store creates it)."""
    return tmp_path / 'dump'


def spill_files(dump_dir: pathlib.Path) -> list[pathlib.Path]:
    """The store's data files (not its lock file)."""
    return sorted(
        p for p in dump_dir.iterdir() if p.is_file() and not p.name.startswith('.')
    )


async def post_chunked(client: Any, key: str, chunks: Iterable[bytes]) -> None:
    """POSTs a blob to an endpoint test app's `/set` in chunks, as ProxyStore's
    client does, and checks the answer. The caller chunks the blob with its
    ProxyStore version's `chunk_bytes`."""
    async with client.request(
        '/set',
        method='POST',
        headers={'Content-Type': 'application/octet-stream'},
        query_string={'key': key},
    ) as connection:
        for chunk in chunks:
            await connection.send(chunk)
        await connection.send_complete()
    response = await connection.as_response()
    assert response.status_code == 200
