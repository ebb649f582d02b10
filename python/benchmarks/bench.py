"""The issue's goals for the Python package, measured side by side in one run.

    python python/benchmarks/bench.py --proxystore-041-python PATH [--reps 5] [--json FILE]

Run it with the interpreter of an environment that has spillstore and
ProxyStore 1.x installed; PATH is the interpreter of one with spillstore and
ProxyStore 0.4.1 (the two ProxyStore versions cannot share an environment),
in which this script runs its 0.4.1 part. Every figure is the median of
`--reps` repetitions; the machine, Python and package versions are printed
with the table.

Workloads (seeded, so every store sees the same operations):
- hits: 1 KiB values, all in memory, read through `s[k]` (and `dict`, and a
  plain 1 KiB `bytes` copy, for reference).
- async hits: the same through ProxyStore 1.x's async `Storage` protocol:
  `await storage.get(k)` on SpillStorage and on ProxyStore's DictStorage.
- zipf: 64 KiB values, working set 4x the memory budget, keys drawn from a
  Zipf(0.99) distribution, 90% gets / 10% sets (overwrites); through `s[k]`
  on SpillStore and EndpointStorage (ours), ProxyStore 0.4.1's
  EndpointStorage, and through `await` on SpillStorage and ProxyStore 1.1.0's
  SQLiteStorage (a database file: the only 1.x storage that bounds memory).
- threads: the zipf workload on one SpillStore from 1 and from 2 Python threads.
- copy: what returning a `bytes` copy costs for a 64 KiB value.
- loop: the longest an event loop stalls while SpillStorage reloads and
  spills 4 MiB values, against the same calls made inline.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import json
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any, Callable, Dict, List, Tuple

KIB = 1 << 10
MIB = 1 << 20


def compare(reps: int, runs: Dict[str, Callable[[], Tuple[int, float]]]) -> Dict[str, float]:
    """Median ops/second of each run over `reps` rounds; each `run` returns
    (ops, seconds). The runs take turns within a round, so that a change in
    the machine's load (it is shared) hits all of them alike."""
    rates: Dict[str, List[float]] = {name: [] for name in runs}
    for _ in range(reps):
        for name, run in runs.items():
            ops, seconds = run()
            rates[name].append(ops / seconds)
    return {name: statistics.median(r) for name, r in rates.items()}


# --------------------------------------------------------------------- hits


def hit_keys(n_keys: int, n_ops: int) -> List[str]:
    rng = random.Random(1)
    return [str(rng.randrange(n_keys)) for _ in range(n_ops)]


def bench_hits(reps: int) -> Dict[str, float]:
    import spillstore

    n_keys, n_ops = 1000, 500_000
    value = os.urandom(KIB)
    keys = hit_keys(n_keys, n_ops)
    s = spillstore.SpillStore()
    d = {}
    for i in range(n_keys):
        s[str(i)] = value
        d[str(i)] = value

    def loop(get: Callable[[str], Any]) -> Tuple[int, float]:
        t = time.perf_counter()
        for k in keys:
            get(k)
        return len(keys), time.perf_counter() - t

    def copy_loop() -> Tuple[int, float]:
        source = bytearray(value)
        t = time.perf_counter()
        for _ in keys:
            bytes(source)
        return len(keys), time.perf_counter() - t

    out = compare(reps, {
        'spillstore s[k]': lambda: loop(s.__getitem__),
        'spillstore s.get(k)': lambda: loop(s.get),
        'dict d[k]': lambda: loop(d.__getitem__),
        'bytes copy of 1 KiB': copy_loop,
    })
    s.cleanup()
    return out


def bench_async_hits(reps: int) -> Dict[str, float]:
    from proxystore.endpoint.storage import DictStorage

    from spillstore.proxystore import SpillStorage

    n_keys, n_ops = 1000, 300_000
    value = os.urandom(KIB)
    keys = hit_keys(n_keys, n_ops)

    async def run(storage: Any) -> Tuple[int, float]:
        for i in range(n_keys):
            await storage.set(str(i), value)
        t = time.perf_counter()
        for k in keys:
            await storage.get(k)
        seconds = time.perf_counter() - t
        await storage.close()
        return len(keys), seconds

    return compare(reps, {
        'SpillStorage await get': lambda: asyncio.run(run(SpillStorage())),
        'DictStorage await get': lambda: asyncio.run(run(DictStorage())),
    })


# --------------------------------------------------------------------- zipf

BUDGET = 16 * MIB
VALUE = 64 * KIB
WORKING_SET = 4 * BUDGET
N_KEYS = WORKING_SET // VALUE


def zipf_ops(n_ops: int, seed: int) -> List[Tuple[bool, str]]:
    """(is_get, key) pairs: Zipf(0.99) over N_KEYS keys, 90% gets."""
    weights = [1 / (rank + 1) ** 0.99 for rank in range(N_KEYS)]
    total = sum(weights)
    cumulative, acc = [], 0.0
    for w in weights:
        acc += w / total
        cumulative.append(acc)
    rng = random.Random(seed)
    order = list(range(N_KEYS))
    rng.shuffle(order)  # popularity is not key order
    ops = []
    for _ in range(n_ops):
        rank = min(bisect.bisect(cumulative, rng.random()), N_KEYS - 1)
        ops.append((rng.random() < 0.9, f'key-{order[rank]}'))
    return ops


def zipf_values() -> List[bytes]:
    return [os.urandom(VALUE) for _ in range(8)]


def run_zipf_sync(
    store: Any, ops: List[Tuple[bool, str]], values: List[bytes], views: bool = False
) -> Tuple[int, float]:
    for i in range(N_KEYS):
        store[f'key-{i}'] = values[i % len(values)]
    get = store.view if views else store.__getitem__
    t = time.perf_counter()
    for n, (is_get, key) in enumerate(ops):
        if is_get:
            get(key)
        else:
            store[key] = values[n % len(values)]
    return len(ops), time.perf_counter() - t


async def run_zipf_async(storage: Any, ops: List[Tuple[bool, str]], values: List[bytes]) -> Tuple[int, float]:
    for i in range(N_KEYS):
        await storage.set(f'key-{i}', values[i % len(values)])
    t = time.perf_counter()
    for n, (is_get, key) in enumerate(ops):
        if is_get:
            await storage.get(key)
        else:
            await storage.set(key, values[n % len(values)])
    seconds = time.perf_counter() - t
    return len(ops), seconds


def fresh_dir() -> str:
    return tempfile.mkdtemp(prefix='spillstore-bench-')


def bench_zipf_ours(reps: int, n_ops: int) -> Dict[str, float]:
    import spillstore

    ops, values = zipf_ops(n_ops, seed=7), zipf_values()

    def store_run(make: Callable[[str], Any], views: bool = False) -> Tuple[int, float]:
        d = fresh_dir()
        s = make(os.path.join(d, 'dump'))
        try:
            return run_zipf_sync(s, ops, values, views)
        finally:
            s.cleanup()
            shutil.rmtree(d, ignore_errors=True)

    runs: Dict[str, Callable[[], Tuple[int, float]]] = {}
    if spillstore._spillstore.ZERO_COPY_VIEWS:
        runs['SpillStore s.view(k) (zero-copy)'] = lambda: store_run(
            lambda d: spillstore.SpillStore(BUDGET, dump_dir=d), views=True
        )
    return compare(reps, {
        **runs,
        'SpillStore s[k] (default shards)': lambda: store_run(
            lambda d: spillstore.SpillStore(BUDGET, dump_dir=d)
        ),
        'EndpointStorage s[k] (ours: 1 shard, exact LRU)': lambda: store_run(
            lambda d: spillstore.EndpointStorage(BUDGET, dump_dir=d)
        ),
    })


def inline_storage() -> type:
    """SpillStorage doing its reloads and spills on the event loop: what
    keeping them off it costs, and what it protects against."""
    from spillstore.proxystore import SpillStorage

    class Inline(SpillStorage):
        async def get(self, key: str, default: Any = None) -> Any:
            return self.store.get(key, default)

        async def set(self, key: str, blob: bytes) -> None:
            self.store[key] = blob

    return Inline


def bench_zipf_async(reps: int, n_ops: int, sqlite_ops: int) -> Dict[str, float]:
    from proxystore.endpoint.storage import SQLiteStorage

    from spillstore.proxystore import SpillStorage

    values = zipf_values()

    def spill(clients: int, cls: Any = SpillStorage) -> Tuple[int, float]:
        d = fresh_dir()
        try:
            return asyncio.run(close_after(
                cls(BUDGET, os.path.join(d, 'dump')), zipf_ops(n_ops, 7), values, clients
            ))
        finally:
            shutil.rmtree(d, ignore_errors=True)

    def sqlite(clients: int) -> Tuple[int, float]:
        d = fresh_dir()
        try:
            return asyncio.run(close_after(
                SQLiteStorage(os.path.join(d, 'blobs.db')), zipf_ops(sqlite_ops, 7), values, clients
            ))
        finally:
            shutil.rmtree(d, ignore_errors=True)

    return compare(reps, {
        'SpillStorage await': lambda: spill(1),
        'ProxyStore 1.1.0 SQLiteStorage await': lambda: sqlite(1),
        'SpillStorage await, 16 concurrent clients': lambda: spill(16),
        'ProxyStore 1.1.0 SQLiteStorage await, 16 concurrent clients': lambda: sqlite(16),
        'reference: SpillStorage with disk work inline (blocks the loop)': lambda: spill(1, inline_storage()),
    })


async def close_after(
    storage: Any, ops: List[Tuple[bool, str]], values: List[bytes], clients: int = 1
) -> Tuple[int, float]:
    try:
        if clients == 1:
            return await run_zipf_async(storage, ops, values)
        return await run_zipf_concurrent(storage, ops, values, clients)
    finally:
        await storage.close()


async def run_zipf_concurrent(
    storage: Any, ops: List[Tuple[bool, str]], values: List[bytes], clients: int
) -> Tuple[int, float]:
    """The same operations, issued by `clients` coroutines at once (an
    endpoint serving several requests), each taking every clients-th one."""
    for i in range(N_KEYS):
        await storage.set(f'key-{i}', values[i % len(values)])

    async def client(c: int) -> None:
        for n in range(c, len(ops), clients):
            is_get, key = ops[n]
            if is_get:
                await storage.get(key)
            else:
                await storage.set(key, values[n % len(values)])

    t = time.perf_counter()
    await asyncio.gather(*(client(c) for c in range(clients)))
    return len(ops), time.perf_counter() - t


def bench_zipf_041(reps: int, n_ops: int) -> Dict[str, float]:
    """Runs in the ProxyStore 0.4.1 environment."""
    import warnings

    warnings.simplefilter('ignore')
    from proxystore.endpoint.storage import EndpointStorage

    class Overwritable(EndpointStorage):  # type: ignore[misc]
        """0.4.1 crashes on a later spill after a key is overwritten in place
        (the key is queued twice in its LRU), so a set removes the old value first."""

        def __setitem__(self, key: str, value: bytes) -> None:
            if key in self:
                del self[key]
            super().__setitem__(key, value)

    ops, values = zipf_ops(n_ops, seed=7), zipf_values()

    def run() -> Tuple[int, float]:
        d = fresh_dir()
        s = Overwritable(max_size=BUDGET, dump_dir=os.path.join(d, 'dump'))
        try:
            return run_zipf_sync(s, ops, values)
        finally:
            s.cleanup()
            shutil.rmtree(d, ignore_errors=True)

    return compare(reps, {'ProxyStore 0.4.1 EndpointStorage s[k]': run})


def bench_threads(reps: int, n_ops: int) -> Dict[str, float]:
    import spillstore

    values = zipf_values()
    per_thread = [zipf_ops(n_ops, seed=100 + t) for t in range(2)]

    def run(threads: int) -> Tuple[int, float]:
        d = fresh_dir()
        s = spillstore.SpillStore(BUDGET, dump_dir=os.path.join(d, 'dump'))
        for i in range(N_KEYS):
            s[f'key-{i}'] = values[i % len(values)]
        barrier = threading.Barrier(threads + 1)

        def work(ops: List[Tuple[bool, str]]) -> None:
            barrier.wait()
            for n, (is_get, key) in enumerate(ops):
                if is_get:
                    s[key]
                else:
                    s[key] = values[n % len(values)]

        pool = [threading.Thread(target=work, args=(per_thread[t],)) for t in range(threads)]
        for th in pool:
            th.start()
        barrier.wait()
        t = time.perf_counter()
        for th in pool:
            th.join()
        seconds = time.perf_counter() - t
        s.cleanup()
        shutil.rmtree(d, ignore_errors=True)
        return threads * n_ops, seconds

    def control(threads: int) -> Tuple[int, float]:
        """hashlib hashing 64 KiB releases the GIL too: what 2 threads can
        gain on this machine at this moment, with no store involved."""
        import hashlib

        data = bytes(VALUE)

        def work() -> None:
            for _ in range(n_ops // 4):
                hashlib.sha256(data).digest()

        pool = [threading.Thread(target=work) for _ in range(threads)]
        t = time.perf_counter()
        for th in pool:
            th.start()
        for th in pool:
            th.join()
        return threads * (n_ops // 4), time.perf_counter() - t

    return compare(reps, {
        'SpillStore, 1 thread': lambda: run(1),
        'SpillStore, 2 threads (total)': lambda: run(2),
        'control: sha256 of 64 KiB, 1 thread': lambda: control(1),
        'control: sha256 of 64 KiB, 2 threads (total)': lambda: control(2),
    })


def bench_copy(reps: int) -> Dict[str, float]:
    """Per-call time (ns) of a 64 KiB resident get and of a bare 64 KiB copy."""
    import spillstore

    s = spillstore.SpillStore()
    value = os.urandom(VALUE)
    for i in range(64):
        s[str(i)] = value
    keys = [str(i % 64) for i in range(20_000)]

    def get_loop() -> Tuple[int, float]:
        t = time.perf_counter()
        for k in keys:
            s[k]
        return len(keys), time.perf_counter() - t

    def view_loop() -> Tuple[int, float]:
        t = time.perf_counter()
        for k in keys:
            s.view(k)
        return len(keys), time.perf_counter() - t

    def copy_loop() -> Tuple[int, float]:
        sources = [bytearray(value) for _ in range(64)]
        t = time.perf_counter()
        for i in range(len(keys)):
            bytes(sources[i % 64])
        return len(keys), time.perf_counter() - t

    rates = compare(reps, {'get': get_loop, 'view': view_loop, 'copy': copy_loop})
    out = {
        '64 KiB resident get s[k] (ns)': 1e9 / rates['get'],
        '64 KiB resident s.view(k) (ns)': 1e9 / rates['view'],
        '64 KiB bytes copy (ns)': 1e9 / rates['copy'],
    }
    s.cleanup()
    return out


def bench_loop(reps: int) -> Dict[str, float]:
    """Longest event-loop stall (ms) during 4 MiB reloads and spills."""
    from spillstore.proxystore import SpillStorage

    Inline = inline_storage()

    async def run(cls: type) -> float:
        d = fresh_dir()
        storage = cls(8 * MIB, os.path.join(d, 'dump'), shards=1)
        values = {f'k{i}': bytes([i]) * (4 * MIB) for i in range(16)}
        for k, v in values.items():
            await storage.set(k, v)
        stop, max_gap = False, 0.0

        async def ticker() -> None:
            nonlocal max_gap
            last = time.perf_counter()
            while not stop:
                await asyncio.sleep(0)
                now = time.perf_counter()
                max_gap, last = max(max_gap, now - last), now

        task = asyncio.create_task(ticker())
        await asyncio.sleep(0)
        for _ in range(2):
            for k in values:
                await storage.get(k)
        stop = True
        await task
        await storage.close()
        shutil.rmtree(d, ignore_errors=True)
        return max_gap * 1e3

    async def hop() -> float:
        """Round trip of one call through a thread pool (what a reload or a
        spill pays to stay off the event loop), in microseconds."""
        import concurrent.futures

        loop = asyncio.get_running_loop()
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            n = 2000
            t = time.perf_counter()
            for _ in range(n):
                await loop.run_in_executor(pool, int)
            return (time.perf_counter() - t) / n * 1e6

    return {
        'thread-pool round trip (us)': statistics.median(asyncio.run(hop()) for _ in range(reps)),
        'SpillStorage: longest stall (ms)': statistics.median(
            asyncio.run(run(SpillStorage)) for _ in range(reps)
        ),
        'same calls inline: longest stall (ms)': statistics.median(
            asyncio.run(run(Inline)) for _ in range(reps)
        ),
    }


# --------------------------------------------------------------------- main


def versions() -> Dict[str, str]:
    import importlib.metadata as md

    from spillstore import _spillstore

    out = {
        'python': platform.python_version(),
        'machine': f'{platform.machine()}, {os.cpu_count()} cores',
        'load average (1, 5, 15 min)': ', '.join(f'{x:.1f}' for x in os.getloadavg()),
        'zero-copy views': str(_spillstore.ZERO_COPY_VIEWS),
    }
    for name in ('spillstore', 'proxystore'):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            out[name] = 'not installed'
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--reps', type=int, default=5, help='repetitions per figure (median)')
    parser.add_argument('--zipf-ops', type=int, default=20_000, help='operations per zipf run')
    parser.add_argument('--sqlite-ops', type=int, default=5_000, help='operations per SQLite zipf run')
    parser.add_argument('--proxystore-041-python', help='interpreter with ProxyStore 0.4.1 and spillstore')
    parser.add_argument('--json', help='also write the figures to this file')
    parser.add_argument('--only-041', action='store_true', help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.only_041:
        print(json.dumps(bench_zipf_041(args.reps, args.zipf_ops)))
        return 0

    results: Dict[str, Dict[str, float]] = {}
    print(f'versions: {versions()}', flush=True)
    results['hits (1 KiB, ops/s)'] = bench_hits(args.reps)
    results['async hits (1 KiB, ops/s)'] = bench_async_hits(args.reps)
    zipf = bench_zipf_ours(args.reps, args.zipf_ops)
    if args.proxystore_041_python:
        done = subprocess.run(
            [os.path.abspath(args.proxystore_041_python), os.path.abspath(__file__), '--only-041', '--reps', str(args.reps),
             '--zipf-ops', str(args.zipf_ops)],
            check=False, capture_output=True, text=True,
        )
        if done.returncode != 0:
            sys.exit(f'the ProxyStore 0.4.1 part failed:\n{done.stderr}')
        zipf.update(json.loads(done.stdout.strip().splitlines()[-1]))
    results['zipf 64 KiB, 4x budget, 90/10 (ops/s)'] = zipf
    results['zipf async (ops/s)'] = bench_zipf_async(args.reps, args.zipf_ops, args.sqlite_ops)
    results['threads, zipf (ops/s)'] = bench_threads(args.reps, args.zipf_ops)
    results['copy (ns per call)'] = bench_copy(args.reps)
    results['event loop'] = bench_loop(args.reps)

    for section, figures in results.items():
        print(f'\n{section}')
        for name, value in figures.items():
            print(f'  {name:52} {value:>14,.0f}' if value >= 100 else f'  {name:52} {value:>14.2f}')

    hits, ah, z, za, th, cp = (
        results['hits (1 KiB, ops/s)'], results['async hits (1 KiB, ops/s)'],
        results['zipf 64 KiB, 4x budget, 90/10 (ops/s)'], results['zipf async (ops/s)'],
        results['threads, zipf (ops/s)'], results['copy (ns per call)'],
    )
    print('\ngoals')
    print(f"  1 KiB hits via s[k] >= 2 M/s: {hits['spillstore s[k]'] / 1e6:.2f} M/s")
    print(f"  await SpillStorage within 2x of DictStorage: "
          f"{ah['DictStorage await get'] / ah['SpillStorage await get']:.2f}x slower")
    if 'ProxyStore 0.4.1 EndpointStorage s[k]' in z:
        print(f"  zipf >= 3x ProxyStore 0.4.1 EndpointStorage: "
              f"{z['SpillStore s[k] (default shards)'] / z['ProxyStore 0.4.1 EndpointStorage s[k]']:.1f}x "
              f"(our EndpointStorage: "
              f"{z['EndpointStorage s[k] (ours: 1 shard, exact LRU)'] / z['ProxyStore 0.4.1 EndpointStorage s[k]']:.1f}x)")
    print(f"  zipf async >= 30x SQLiteStorage: "
          f"{za['SpillStorage await'] / za['ProxyStore 1.1.0 SQLiteStorage await']:.1f}x "
          f"(16 concurrent clients: "
          f"{za['SpillStorage await, 16 concurrent clients'] / za['ProxyStore 1.1.0 SQLiteStorage await, 16 concurrent clients']:.1f}x)")
    print(f"  2 threads >= 1.5x 1 thread: "
          f"{th['SpillStore, 2 threads (total)'] / th['SpillStore, 1 thread']:.2f}x "
          f"(control, GIL-free hashing: "
          f"{th['control: sha256 of 64 KiB, 2 threads (total)'] / th['control: sha256 of 64 KiB, 1 thread']:.2f}x)")
    per_op = 1e9 / z['SpillStore s[k] (default shards)']
    print(f"  bytes copy of 64 KiB: {cp['64 KiB bytes copy (ns)']:.0f} ns = "
          f"{cp['64 KiB bytes copy (ns)'] / per_op * 100:.0f}% of a zipf op ({per_op:.0f} ns), "
          f"{cp['64 KiB bytes copy (ns)'] / cp['64 KiB resident get s[k] (ns)'] * 100:.0f}% of a resident 64 KiB get")
    print(f'\nversions at the end: {versions()}')
    if args.json:
        with open(args.json, 'w') as f:
            json.dump({'versions': versions(), 'results': results}, f, indent=2)
    return 0


if __name__ == '__main__':
    sys.exit(main())
