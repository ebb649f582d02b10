"""Python threads sharing one store: every byte checked, and the GIL released."""

from __future__ import annotations

import hashlib
import pathlib
import random
import sys
import threading
import time

import pytest

import spillstore


def value_of(key: str, version: int, size: int) -> bytes:
    """A value that names its key and version, so a wrong read cannot pass."""
    head = hashlib.sha256(f'{key}/{version}'.encode()).digest()
    return (head * (size // len(head) + 1))[:size]


def test_eight_threads_hammer_one_store(dump_dir: pathlib.Path) -> None:
    # A budget far below the data: gets reload, sets spill, all at once.
    s = spillstore.SpillStore(256 << 10, dump_dir=dump_dir, shards=4)
    threads_n, keys_per_thread, ops = 8, 40, 1500
    barrier = threading.Barrier(threads_n)
    errors: list[BaseException] = []
    checked = [0] * threads_n

    def work(t: int) -> None:
        rng = random.Random(t)
        # Each thread owns its keys (so it knows their exact value) and
        # also reads the shared ones, which never change.
        own = {f't{t}-{i}': 0 for i in range(keys_per_thread)}
        sizes = {k: rng.choice((0, 100, 4096, 20_000)) for k in own}
        try:
            for k in own:
                s[k] = value_of(k, 0, sizes[k])
            barrier.wait()
            for _ in range(ops):
                k = rng.choice(list(own))
                roll = rng.random()
                if roll < 0.6:
                    assert s[k] == value_of(k, own[k], sizes[k]), k
                elif roll < 0.75:
                    shared = f'shared-{rng.randrange(16)}'
                    assert s[shared] == value_of(shared, 0, 8192), shared
                elif roll < 0.95:
                    own[k] += 1
                    s[k] = value_of(k, own[k], sizes[k])
                else:
                    del s[k]
                    assert k not in s
                    s[k] = value_of(k, own[k], sizes[k])
                checked[t] += 1
            for k, version in own.items():
                assert s[k] == value_of(k, version, sizes[k]), k
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)
            barrier.abort()

    for i in range(16):
        s[f'shared-{i}'] = value_of(f'shared-{i}', 0, 8192)
    threads = [threading.Thread(target=work, args=(t,)) for t in range(threads_n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors[0]
    assert sum(checked) == threads_n * ops
    st = s.stats()
    assert st['entries'] == threads_n * keys_per_thread + 16
    assert st['memory_bytes'] <= 256 << 10
    assert st['reloads'] > 0 and st['spills'] > 0, st
    s.cleanup()
    assert not dump_dir.exists()


def test_gil_is_released_while_the_store_works() -> None:
    """Another Python thread runs while one native call is in progress.

    With a 1 s switch interval, a thread waiting for the GIL only gets it
    when the running thread lets go by itself: a counter in the other thread
    moves during the call only if the call released the GIL.
    """
    s = spillstore.SpillStore()
    big = bytes(64 << 20)
    running = threading.Event()
    stop = threading.Event()
    counter = [0]

    def spin() -> None:
        running.set()
        while not stop.is_set():
            counter[0] += 1

    old = sys.getswitchinterval()
    spinner = threading.Thread(target=spin)
    spinner.start()
    running.wait()
    sys.setswitchinterval(1.0)
    try:
        time.sleep(0.01)  # let the spinner take and hand back the GIL once
        before = counter[0]
        s['big'] = big  # a 64 MiB copy, made with the GIL released
        during_set = counter[0] - before
        before = counter[0]
        value = s['big']  # and copied back out the same way
        during_get = counter[0] - before
    finally:
        sys.setswitchinterval(old)
        stop.set()
        spinner.join()
    assert len(value) == len(big)
    assert during_set > 0 and during_get > 0, (during_set, during_get)
