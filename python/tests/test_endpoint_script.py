"""`spillstore-endpoint` on a loopback port, used by a ProxyStore 1.x client."""

from __future__ import annotations

import os
import pathlib
import signal
import socket
import subprocess
import sys
import time
from typing import Iterator

import pytest

from conftest import needs_proxystore_1
from spillstore.endpoint import main, parse_size

LOOPBACK = '127.0.0.1'
SCRIPT = os.path.join(os.path.dirname(sys.executable), 'spillstore-endpoint')


def test_parse_size() -> None:
    assert parse_size('100') == 100
    assert parse_size('1.5 KB') == 1500
    assert parse_size('64MiB') == 64 << 20
    assert parse_size('2g') == 2 << 30
    assert parse_size(' 3 TiB ') == 3 << 40
    assert parse_size('0.5KiB') == 512
    for bad in ('', 'MiB', '1 XB', '-1', '1e3', '1 2'):
        with pytest.raises(ValueError, match='not a size'):
            parse_size(bad)


def free_loopback_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


@pytest.fixture()
def endpoint_home(tmp_path: pathlib.Path, monkeypatch) -> Iterator[tuple[str, int]]:
    """A ProxyStore home with one endpoint configured on 127.0.0.1, no relay."""
    from proxystore.endpoint.commands import configure_endpoint

    home = tmp_path / 'proxystore'
    monkeypatch.setenv('PROXYSTORE_HOME', str(home))
    monkeypatch.setenv('NO_PROXY', '*')  # requests must not route loopback via a proxy
    port = free_loopback_port()
    assert configure_endpoint(
        'spill-ep',
        host=LOOPBACK,
        port=port,
        proxystore_dir=str(home),
        relay_server=None,
    ) == 0
    yield str(home), port


@needs_proxystore_1
def test_cli_errors(endpoint_home: tuple[str, int], caplog) -> None:
    assert main(['not-configured', '--max-memory', '1MiB']) == 1
    assert main(['spill-ep', '--max-memory', '0']) == 1
    assert 'max_size must be positive' in caplog.text
    with pytest.raises(SystemExit) as e:
        main(['spill-ep', '--max-memory', 'lots'])
    assert e.value.code == 2


@needs_proxystore_1
@pytest.mark.timeout(120)
def test_a_proxystore_client_stores_four_times_the_budget(
    endpoint_home: tuple[str, int],
) -> None:
    import requests
    from proxystore.connectors.endpoint import EndpointConnector
    from proxystore.endpoint.config import read_config
    from proxystore.store import Store

    home, port = endpoint_home
    log = open(pathlib.Path(home) / 'script.log', 'wb')
    process = subprocess.Popen(
        [SCRIPT, 'spill-ep', '--max-memory', '1MiB', '--max-object-size', '512KiB'],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, 'PROXYSTORE_HOME': home},
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, 'spillstore-endpoint exited early'
            try:
                if requests.get(f'http://{LOOPBACK}:{port}/', timeout=1).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            assert time.monotonic() < deadline, 'spillstore-endpoint did not start'
            time.sleep(0.2)

        config = read_config(os.path.join(home, 'spill-ep'))
        assert config.host == LOOPBACK
        values = [os.urandom(256 << 10) for _ in range(16)]  # 4 MiB: 4x the budget
        with Store(
            'spill-client',
            EndpointConnector([config.uuid], proxystore_dir=home),
            register=False,
            cache_size=0,
        ) as store:
            keys = [store.put(v) for v in values]
            spill = pathlib.Path(home) / 'spill-ep' / 'spill'
            assert any(p.name != '.spillstore.lock' for p in spill.iterdir())
            for key, value in zip(keys, values):
                assert store.get(key) == value
            for key, value in zip(reversed(keys), reversed(values)):
                assert store.get(key) == value
                assert store.exists(key)
            store.evict(keys[0])
            assert not store.exists(keys[0])
            # Over --max-object-size: refused by the endpoint.
            with pytest.raises(Exception):
                store.put(os.urandom(600 << 10))
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            code = process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            raise
        log.close()
    output = (pathlib.Path(home) / 'script.log').read_text()
    assert code == 0, output
    assert 'Using spillstore for storage' in output
    # Closing the endpoint closed the storage: the dump dir is gone.
    assert not (pathlib.Path(home) / 'spill-ep' / 'spill').exists()
