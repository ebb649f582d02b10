#!/usr/bin/env python3
"""Alternates two spillbench binaries, N runs each, and prints the medians of
the key figures side by side (BENCHMARKS.md quotes it).

    python3 benches/spillbench-ab.py BEFORE AFTER N [spillbench flags...]

BEFORE and AFTER are spillbench binaries (`cargo build --release --example
spillbench`, copied aside per commit); the flags go to both, and AFLAGS /
BFLAGS (environment) add flags to one of them, e.g.
BFLAGS=--no-clean-ahead with the same binary twice.
"""
import json, os, shlex, statistics, subprocess, sys

if len(sys.argv) < 4:
    sys.exit(__doc__)
a, b, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
extra = sys.argv[4:]
flags = {a: shlex.split(os.environ.get("AFLAGS", "")), b: shlex.split(os.environ.get("BFLAGS", ""))}
keys = [("mixed ops/s", lambda d: d["mixed"]["ops_per_s"]),
        ("insert p50", lambda d: d["latency_ns"]["mixed_insert"]["p50"]),
        ("insert p99", lambda d: d["latency_ns"]["mixed_insert"]["p99"]),
        ("insert p99.9", lambda d: d["latency_ns"]["mixed_insert"]["p999"]),
        ("insert max", lambda d: d["latency_ns"]["mixed_insert"]["max"]),
        ("get mem p99.9", lambda d: d["latency_ns"]["get_memory"]["p999"]),
        ("reload p50", lambda d: d["latency_ns"]["get_reload"]["p50"]),
        ("reload p99", lambda d: d["latency_ns"]["get_reload"]["p99"]),
        ("mem hit ratio", lambda d: d["mixed"]["memory_hit_ratio"]),
        ("spilled MB", lambda d: d["mixed"]["store"]["spilled_bytes"] / 1e6),
        ("cleaned MB", lambda d: d["mixed"]["store"].get("cleaned_bytes", 0) / 1e6),
        ("written MB", lambda d: (d["mixed"]["store"]["spilled_bytes"] + d["mixed"]["store"].get("cleaned_bytes", 0) + d["mixed"]["store"]["compacted_bytes"]) / 1e6),
        ("written/insert", lambda d: (d["mixed"]["store"]["spilled_bytes"] + d["mixed"]["store"].get("cleaned_bytes", 0) + d["mixed"]["store"]["compacted_bytes"]) / max(1, d["mixed"]["inserts"])),
        ("peak alloc MB", lambda d: d["peak"]["spill_file_allocated_bytes"] / 1e6 if "peak" in d and "spill_file_allocated_bytes" in d["peak"] else float('nan'))]
res = {a: [], b: []}
for i in range(n):
    for binary in (a, b):
        out = subprocess.run([binary, "--json", *extra, *flags[binary]], capture_output=True, text=True)
        if out.returncode != 0:
            print(binary, "FAILED", out.stderr[-2000:]); sys.exit(1)
        res[binary].append(json.loads(out.stdout))
print(f"{'figure':<16}{'before':>14}{'after':>14}{'after/before':>14}")
for name, f in keys:
    ma = statistics.median(f(d) for d in res[a]); mb = statistics.median(f(d) for d in res[b])
    print(f"{name:<16}{ma:>14.4g}{mb:>14.4g}{(mb / ma if ma else float('nan')):>14.3f}")
