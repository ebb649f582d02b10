"""spillstore.EndpointStorage against ProxyStore 0.4.x's EndpointStorage (the seed).

The first tests check the seed's documented behaviour and need no ProxyStore;
the ones marked `needs_proxystore_041` run with proxystore==0.4.1 installed
(the second environment of .ci/python): a differential run against the
original class, and the store swapped into 0.4.1's own Endpoint and server app.
"""

from __future__ import annotations

import asyncio
import os
import pathlib
import random
import uuid

import pytest

import spillstore
from conftest import needs_proxystore_041, post_chunked


def files(storage: spillstore.EndpointStorage) -> set[str]:
    """The seed's test counted files in the dump dir; ours are read as locations."""
    return {k for k in storage if storage.location(k) == 'file'}


def test_acts_like_dict() -> None:
    storage = spillstore.EndpointStorage()
    data = [(f'key{i}', f'value{i}'.encode()) for i in range(10)]
    for key, value in data:
        storage[key] = value
        assert storage[key] == value
    assert len(storage) == len(data)
    for key, _ in data:
        assert key in storage
    assert 'missingkey' not in storage
    key, value = data.pop()
    del storage[key]
    with pytest.raises(KeyError, match=key):
        storage[key]
    with pytest.raises(KeyError, match='missingkey'):
        del storage['missingkey']
    for key in storage:
        assert isinstance(storage[key], bytes)
    storage.clear()
    assert len(storage) == 0
    storage.cleanup()  # nothing to remove


def test_both_or_neither(tmp_path: pathlib.Path) -> None:
    with pytest.raises(ValueError):
        spillstore.EndpointStorage(max_size=100, dump_dir=None)
    with pytest.raises(ValueError):
        spillstore.EndpointStorage(max_size=None, dump_dir='')
    with pytest.raises(ValueError):
        spillstore.EndpointStorage(dump_dir=str(tmp_path))
    spillstore.EndpointStorage(max_size=100, dump_dir=str(tmp_path)).cleanup()


def test_the_dumping_sequence(tmp_path: pathlib.Path) -> None:
    storage = spillstore.EndpointStorage(max_size=100, dump_dir=str(tmp_path))
    for i in range(20):
        storage[str(i)] = os.urandom(10)
    # Keys 0-9 are dumped.
    files1 = files(storage)
    assert files1 == {str(i) for i in range(10)}
    # Reading the first ten brings them back and dumps the last ten.
    for i in range(10):
        assert isinstance(storage[str(i)], bytes)
    files2 = files(storage)
    assert files2 == {str(i) for i in range(10, 20)}
    assert not files1 & files2
    # Deleting does not bring dumped objects back into memory.
    for i in range(5, 15):
        del storage[str(i)]
    assert files(storage) == {str(i) for i in range(15, 20)}
    storage.cleanup()
    assert not os.path.isdir(tmp_path)


def test_limits(tmp_path: pathlib.Path) -> None:
    storage = spillstore.EndpointStorage(max_size=100, dump_dir=str(tmp_path))
    with pytest.raises(spillstore.ObjectSizeExceededError, match='memory limit'):
        storage['key'] = os.urandom(200)
    storage = spillstore.EndpointStorage(max_object_size=100)
    with pytest.raises(spillstore.ObjectSizeExceededError, match='object limit'):
        storage['key'] = os.urandom(200)
    assert 'key' not in storage


def test_not_the_seeds_bugs(tmp_path: pathlib.Path) -> None:
    storage = spillstore.EndpointStorage(max_size=100, dump_dir=str(tmp_path / 'd'))
    # Replacing a key counts its bytes once (the seed counted both values).
    for _ in range(50):
        storage['k'] = bytes(60)
    assert storage.stats()['memory_bytes'] == 60
    # Keys are not file names: any string is a key.
    for key in ('../../escape', '/abs', 'a/b', '', '.', 'x' * 1000):
        storage[key] = b'v' * 30
        assert storage[key] == b'v' * 30
    assert not (tmp_path / 'escape').exists()
    # clear() deletes the dumped files (the seed left them behind).
    storage.clear()
    assert storage.stats()['spill_files'] == 0
    storage.cleanup()
    assert not (tmp_path / 'd').exists()


@needs_proxystore_041
def test_same_locations_as_the_original_after_every_step(tmp_path: pathlib.Path) -> None:
    from proxystore.endpoint.storage import BlobLocation
    from proxystore.endpoint.storage import EndpointStorage as Original

    rng = random.Random(41)
    original = Original(max_size=1000, dump_dir=str(tmp_path / 'orig'))
    ours = spillstore.EndpointStorage(max_size=1000, dump_dir=str(tmp_path / 'ours'))
    model: dict[str, bytes] = {}
    for step in range(3000):
        key = str(rng.randrange(60))
        roll = rng.random()
        if key not in model and roll < 0.4:
            # (New keys only: the original double-counts a replaced key.)
            value = os.urandom(rng.randrange(1, 300))
            original[key] = value
            ours[key] = value
            model[key] = value
        elif key in model and roll < 0.85:
            assert original[key] == model[key]
            assert ours[key] == model[key]
        elif key in model:
            del original[key]
            del ours[key]
            del model[key]
        expected = {
            k: 'memory' if original._blobs[k].location == BlobLocation.MEMORY else 'file'
            for k in model
        }
        actual = {k: ours.location(k) for k in model}
        assert actual == expected, f'step {step}'
    assert sorted(ours) == sorted(original)
    original.cleanup()
    ours.cleanup()


@needs_proxystore_041
def test_swapped_into_proxystore_041s_endpoint(tmp_path: pathlib.Path, monkeypatch) -> None:
    import proxystore.endpoint.endpoint as endpoint_module
    from proxystore.endpoint.endpoint import Endpoint
    from proxystore.endpoint.exceptions import ObjectSizeExceededError
    from proxystore.serialize import deserialize, serialize

    monkeypatch.setattr(endpoint_module, 'EndpointStorage', spillstore.EndpointStorage)
    dump_dir = tmp_path / 'dump'

    async def run() -> None:
        async with Endpoint(
            name='ep',
            uuid=uuid.uuid4(),
            max_memory=64 << 10,
            max_object_size=1 << 20,
            dump_dir=str(dump_dir),
        ) as endpoint:
            storage = endpoint._data
            assert isinstance(storage, spillstore.EndpointStorage)
            objects = {f'obj{i}': {'i': i, 'blob': os.urandom(4000 + i)} for i in range(64)}
            for key, obj in objects.items():
                await endpoint.set(key, serialize(obj))
            assert storage.stats()['memory_bytes'] <= 64 << 10
            assert storage.location('obj0') == 'file'
            for key, obj in objects.items():
                assert deserialize(await endpoint.get(key)) == obj
                assert await endpoint.exists(key)
            await endpoint.evict('obj1')
            assert not await endpoint.exists('obj1')
            assert await endpoint.get('obj1') is None
            with pytest.raises(ObjectSizeExceededError):
                await endpoint.set('huge', bytes((1 << 20) + 1))
        # Endpoint.close() ran cleanup(): the dump dir is gone.
        assert not dump_dir.exists()

    asyncio.run(run())


@needs_proxystore_041
def test_through_proxystore_041s_server_app(tmp_path: pathlib.Path, monkeypatch) -> None:
    import proxystore.endpoint.endpoint as endpoint_module
    from proxystore.endpoint.endpoint import Endpoint
    from proxystore.endpoint.serve import MAX_CHUNK_LENGTH, create_app
    from proxystore.utils import chunk_bytes

    monkeypatch.setattr(endpoint_module, 'EndpointStorage', spillstore.EndpointStorage)

    async def run() -> None:
        endpoint = Endpoint(
            name='ep',
            uuid=uuid.uuid4(),
            max_memory=3 * MAX_CHUNK_LENGTH,
            dump_dir=str(tmp_path / 'dump'),
        )
        app = create_app(endpoint)
        async with app.test_app() as test_app:
            client = test_app.test_client()
            blobs = {f'k{i}': os.urandom(2 * MAX_CHUNK_LENGTH + 10) for i in range(4)}
            for key, blob in blobs.items():
                await post_chunked(client, key, chunk_bytes(blob, MAX_CHUNK_LENGTH))
            assert endpoint._data.location('k0') == 'file'
            for key, blob in blobs.items():
                response = await client.get('/get', query_string={'key': key})
                assert response.status_code == 200
                assert await response.get_data() == blob
        await endpoint.close()

    asyncio.run(run())
