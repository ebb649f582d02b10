"""SpillStorage under ProxyStore 1.x: its Storage protocol, its Endpoint and
its server app, with a memory budget far below the data."""

from __future__ import annotations

import asyncio
import os
import pathlib
import time
import uuid

import pytest

import spillstore
from conftest import needs_proxystore_1, post_chunked
from spillstore.proxystore import MAX_OBJECT_SIZE_DEFAULT, SpillStorage

pytestmark = needs_proxystore_1


def test_is_a_storage() -> None:
    from proxystore.endpoint.constants import MAX_OBJECT_SIZE_DEFAULT as ps_default
    from proxystore.endpoint.storage import Storage

    assert isinstance(SpillStorage(), Storage)
    assert MAX_OBJECT_SIZE_DEFAULT == ps_default


@pytest.mark.asyncio
async def test_protocol_semantics(dump_dir: pathlib.Path) -> None:
    s = SpillStorage(100, dump_dir)
    await s.evict('key')  # absent: no error
    assert not await s.exists('key')
    assert await s.get('key') is None
    assert await s.get('key', b'default') == b'default'
    await s.set('key', b'data')
    assert await s.exists('key')
    assert await s.get('key') == b'data'
    await s.set('key', b'other')  # overwrite
    assert await s.get('key') == b'other'
    for i in range(20):
        await s.set(str(i), bytes([i]) * 10)
    on_disk = [str(i) for i in range(20) if s.store.location(str(i)) == 'file']
    assert len(on_disk) >= 10
    assert await s.get(on_disk[0], b'default') == bytes([int(on_disk[0])]) * 10  # a reload
    assert s.stats()['reloads'] == 1
    await s.evict(on_disk[1])  # a spilled one
    assert not await s.exists(on_disk[1]) and await s.get(on_disk[1]) is None
    with pytest.raises(spillstore.ObjectSizeExceededError, match='memory limit'):
        await s.set('big', bytes(101))
    await s.close()
    await s.close()
    assert not dump_dir.exists()


@pytest.mark.asyncio
async def test_max_object_size_is_proxystores_error() -> None:
    from proxystore.endpoint.exceptions import ObjectSizeExceededError

    s = SpillStorage(max_object_size=100)
    with pytest.raises(ObjectSizeExceededError, match='object limit'):
        await s.set('key', b'x' * 1000)
    s = SpillStorage(max_object_size=None)
    await s.set('key', b'x' * 1000)


@pytest.mark.asyncio
async def test_endpoint_with_a_budget_far_below_the_data(dump_dir: pathlib.Path) -> None:
    from proxystore.endpoint.endpoint import Endpoint

    budget = 256 << 10
    storage = SpillStorage(budget, dump_dir)
    values = {f'key{i}': os.urandom(64 << 10) for i in range(64)}  # 16x the budget
    async with Endpoint('ep', uuid.uuid4(), storage=storage) as endpoint:
        for key, value in values.items():
            await endpoint.set(key, value)
        st = storage.stats()
        assert st['memory_bytes'] <= budget
        assert st['disk_entries'] >= 48
        for key, value in values.items():
            assert await endpoint.exists(key)
            assert await endpoint.get(key) == value
        assert storage.stats()['reloads'] >= 48
        # Overwrite half, evict a quarter, read everything again.
        for i, key in enumerate(values):
            if i % 2 == 0:
                values[key] = os.urandom(32 << 10)
                await endpoint.set(key, values[key])
        for i, key in enumerate(list(values)):
            if i % 4 == 1:
                await endpoint.evict(key)
                del values[key]
                assert not await endpoint.exists(key)
                assert await endpoint.get(key) is None
        for key, value in values.items():
            assert await endpoint.get(key) == value
        st = storage.stats()
        assert st['entries'] == len(values)
        assert st['memory_bytes'] + st['disk_bytes'] == sum(map(len, values.values()))
        assert st['memory_bytes'] <= budget
    # Endpoint.close() closed the storage: data and dump dir are gone.
    assert not dump_dir.exists()


@pytest.mark.asyncio
async def test_chunked_http_through_the_server_app(dump_dir: pathlib.Path) -> None:
    from proxystore.endpoint.endpoint import Endpoint
    from proxystore.endpoint.serve import MAX_CHUNK_LENGTH, create_app
    from proxystore.utils.data import chunk_bytes

    storage = SpillStorage(3 * MAX_CHUNK_LENGTH, dump_dir)
    blobs = {f'k{i}': os.urandom(2 * MAX_CHUNK_LENGTH + 10) for i in range(6)}
    async with Endpoint('ep', uuid.uuid4(), storage=storage) as endpoint:
        app = create_app(endpoint)
        async with app.test_app() as test_app:
            client = test_app.test_client()
            for key, blob in blobs.items():
                await post_chunked(client, key, chunk_bytes(blob, MAX_CHUNK_LENGTH))
            assert storage.stats()['disk_entries'] >= 3  # 12 MB stored, 3 MB budget
            for key, blob in blobs.items():
                response = await client.get('/exists', query_string={'key': key})
                assert (await response.get_json()) == {'exists': True}
                response = await client.get('/get', query_string={'key': key})
                assert response.status_code == 200
                assert await response.get_data() == blob
            response = await client.post('/evict', query_string={'key': 'k0'})
            assert response.status_code == 200
            response = await client.get('/get', query_string={'key': 'k0'})
            assert response.status_code == 404
    assert not dump_dir.exists()


class _Ticker:
    """Counts how often a coroutine gets scheduled while others work."""

    def __init__(self) -> None:
        self.ticks = 0
        self.max_gap = 0.0
        self._stop = False

    async def run(self) -> None:
        last = time.perf_counter()
        while not self._stop:
            await asyncio.sleep(0)
            now = time.perf_counter()
            self.ticks += 1
            self.max_gap = max(self.max_gap, now - last)
            last = now

    def stop(self) -> None:
        self._stop = True


async def _reload_and_spill(storage: SpillStorage, rounds: int) -> None:
    values = {f'k{i}': bytes([i]) * (4 << 20) for i in range(16)}  # 64 MiB
    for key, value in values.items():
        await storage.set(key, value)
    for _ in range(rounds):
        for key, value in values.items():  # all but two gets reload
            assert await storage.get(key) == value


@pytest.mark.asyncio
async def test_reloads_and_spills_do_not_block_the_event_loop(tmp_path: pathlib.Path) -> None:
    """Measure: another coroutine keeps running during reloads and spills.

    Every get below but those of the two values resident from the start
    reloads a 4 MiB value from disk: a value that large comes back into
    memory only on its second read in a while (here each is read again 16
    values later, beyond the 8 MiB share), so it never pushes those two out.
    Were that done on the event loop, the workload would never yield and
    the ticker would not run until it ended.
    """
    storage = SpillStorage(8 << 20, tmp_path / 'dump', shards=1)
    ticker = _Ticker()
    task = asyncio.create_task(ticker.run())
    await asyncio.sleep(0)
    ticks_before = ticker.ticks
    await _reload_and_spill(storage, rounds=2)
    ticker.stop()
    await task
    st = storage.stats()
    await storage.close()
    disk_ops = st['reloads'] + st['spills']
    assert (st['reloads'], st['unpromoted_reloads']) == (28, 28), st
    # At least one tick per disk operation: the loop ran during each of them.
    assert ticker.ticks - ticks_before >= disk_ops, (ticker.ticks, disk_ops)
