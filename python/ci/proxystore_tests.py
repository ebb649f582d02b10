"""Prepare ProxyStore's own tests of its endpoint storage to run against spillstore.

Usage: python proxystore_tests.py VERSION SDIST_DIR WORK_DIR
Prints the pytest arguments to run in WORK_DIR.

From ProxyStore's source distribution (`pip download --no-deps --no-binary
:all: proxystore==VERSION`, unpacked in SDIST_DIR), it copies the endpoint
tests that exercise a storage, plus the `testing/` helpers they import, and
adapts them in two ways, each listed below and nothing else:

- import swap: in the storage tests, the storage class is imported from
  spillstore instead of ProxyStore (0.4.1: `EndpointStorage`; 1.1.0:
  `DictStorage`, the storage its tests parametrize over with SQLite).
- class swap: for the Endpoint and server tests, a conftest.py replaces the
  storage class ProxyStore's `Endpoint` builds by default with spillstore's
  (0.4.1: `EndpointStorage`, which Endpoint constructs itself; 1.1.0:
  `DictStorage`, replaced by a `SpillStorage` with a 4 MiB budget and a dump
  dir, so that the disk path runs too).

Tests that do not touch a storage (serving on a socket, relay auth) or do
not apply (0.4.1's Blob class, which spillstore does not have, and its file
counting, which spillstore's test suite reads as locations) are deselected,
each with its reason.
"""

from __future__ import annotations

import pathlib
import shutil
import sys

SWAPS = {
    '0.4.1': {
        'tests/endpoint/storage_test.py': [
            (
                'from proxystore.endpoint.storage import EndpointStorage\n',
                'from spillstore import EndpointStorage\n',
            ),
        ],
        'tests/endpoint/endpoint_solo_test.py': [],
        'tests/endpoint/serve_test.py': [],
    },
    '1.1.0': {
        'tests/endpoint/storage_test.py': [
            (
                'from proxystore.endpoint.storage import DictStorage\n',
                'from spillstore.proxystore import SpillStorage as DictStorage\n',
            ),
        ],
        'tests/endpoint/endpoint_solo_test.py': [],
        'tests/endpoint/serve_test.py': [],
    },
}

# Appended to each conftest: the swap must have been used.
CHECK = '''

BUILT = []


def pytest_terminal_summary(terminalreporter):
    terminalreporter.write_line(f'spillstore storages built by the Endpoint: {len(BUILT)}')


def pytest_sessionfinish(session, exitstatus):
    if session.testscollected and not BUILT:
        session.exitstatus = 1
'''

CONFTEST = {
    '0.4.1': '''
import pytest
import spillstore


@pytest.fixture(autouse=True)
def _spillstore_endpoint_storage(monkeypatch):
    """Class swap: ProxyStore's Endpoint builds spillstore's EndpointStorage."""
    import proxystore.endpoint.endpoint as endpoint_module

    def storage(*args, **kwargs):
        BUILT.append(1)
        return spillstore.EndpointStorage(*args, **kwargs)

    monkeypatch.setattr(endpoint_module, 'EndpointStorage', storage)
''',
    '1.1.0': '''
import pytest
from spillstore.proxystore import SpillStorage


@pytest.fixture(autouse=True)
def _spillstore_default_storage(monkeypatch, tmp_path_factory):
    """Class swap: ProxyStore's Endpoint defaults to a bounded SpillStorage."""
    import proxystore.endpoint.endpoint as endpoint_module

    def storage(*, max_object_size=None):
        dump_dir = tmp_path_factory.mktemp('spill') / 'dump'
        kwargs = {} if max_object_size is None else {'max_object_size': max_object_size}
        BUILT.append(1)
        return SpillStorage(4 << 20, dump_dir, **kwargs)

    monkeypatch.setattr(endpoint_module, 'DictStorage', storage)
''',
}

DESELECT = {
    '0.4.1': {
        'tests/endpoint/storage_test.py::test_blob_in_memory_only': 'tests ProxyStore\'s Blob class',
        'tests/endpoint/storage_test.py::test_blob_filedump': 'tests ProxyStore\'s Blob class',
        'tests/endpoint/storage_test.py::test_endpoint_storage_dumping': (
            'counts files named after keys; spillstore packs values into segment '
            'files (the same sequence, read as locations, is in python/tests/test_parity_041.py)'
        ),
        'tests/endpoint/serve_test.py::test_serve': 'serves on a socket; no storage involved',
        'tests/endpoint/serve_test.py::test_serve_config_validation': 'no storage involved',
        'tests/endpoint/serve_test.py::test_serve_logging': 'binds 0.0.0.0; no storage involved',
    },
    '1.1.0': {
        'tests/endpoint/serve_test.py::test_serve': 'serves on a socket; no storage involved',
        'tests/endpoint/serve_test.py::test_serve_config_validation': 'no storage involved',
        'tests/endpoint/serve_test.py::test_serve_logging': 'binds 0.0.0.0; no storage involved',
        'tests/endpoint/serve_test.py::test_get_auth_headers_none': 'relay auth; no storage involved',
        'tests/endpoint/serve_test.py::test_get_auth_headers_globus': 'relay auth; no storage involved',
        'tests/endpoint/serve_test.py::test_get_auth_headers_globus_missing': 'relay auth; no storage involved',
        'tests/endpoint/serve_test.py::test_serve_cancels_nat_check': 'needs a relay server; no storage involved',
    },
}


def main() -> int:
    version, sdist, work = sys.argv[1], pathlib.Path(sys.argv[2]), pathlib.Path(sys.argv[3])
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    shutil.copytree(sdist / 'testing', work / 'testing')
    (work / 'tests').mkdir()
    (work / 'tests' / '__init__.py').write_text('')
    (work / 'tests' / 'endpoint').mkdir()
    (work / 'tests' / 'endpoint' / '__init__.py').write_text('')
    for path, swaps in SWAPS[version].items():
        text = (sdist / path).read_text()
        for old, new in swaps:
            if old not in text:
                raise SystemExit(f'{path}: the line to swap is not there: {old!r}')
            text = text.replace(old, new)
        (work / path).write_text(text)
    (work / 'conftest.py').write_text(
        '"""Written by python/ci/proxystore_tests.py."""\n' + CONFTEST[version] + CHECK,
    )
    (work / 'pytest.ini').write_text(
        '[pytest]\nasyncio_mode = strict\nasyncio_default_fixture_loop_scope = function\n'
        'timeout = 120\nfilterwarnings =\n    ignore::DeprecationWarning\n',
    )
    for test, reason in DESELECT[version].items():
        print(f'deselected {test}: {reason}', file=sys.stderr)
    args = [*SWAPS[version]]
    for test in DESELECT[version]:
        args += ['--deselect', test]
    print(' '.join(args))
    return 0


if __name__ == '__main__':
    sys.exit(main())
