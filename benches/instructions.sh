#!/bin/bash
# Instructions per get and per insert of one store in one compare cell, on
# 1 thread, counted by callgrind: a figure that does not move with the load
# of a shared machine (wall-clock ratios on the 2-core VMs here moved by up
# to 2x between runs).
#
#   benches/instructions.sh [COMPARE_BINARY] WORKLOAD PEER
#   benches/instructions.sh target/release/spillstore-compare hot-get spillstore
#
# Prints the inclusive instruction count of the compare adapter's get (and
# insert) per call, as called from the workload loop: the store's work plus
# the adapter's (the key's String for an insert), not the harness's checks.
# Three seconds, not one: a short run divides one-off costs (the first clone
# of each value allocates its shared header) over few calls, and counted
# about 10 more instructions per hit than a long one here.
set -euo pipefail
if [ $# -eq 2 ]; then set -- target/release/spillstore-compare "$@"; fi
bin=$1 workload=$2 peer=$3
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
valgrind --tool=callgrind --callgrind-out-file="$out/cg.out" "$bin" \
  --workload "$workload" --threads 1 --peers "$peer" --secs 3 --warmup 0 \
  --reps 1 --limit-secs 0 --dump-root "$out" >/dev/null 2>&1
callgrind_annotate --tree=caller --inclusive=yes "$out/cg.out" 2>/dev/null | python3 -c '
import re, sys
block = []
for line in sys.stdin:
    if not line.strip():
        block = []
        continue
    block.append(line)
    if " *  " in line and ("Store>::get " in line or "Store>::insert " in line):
        for caller in block:
            m = re.match(r"\s*([\d,]+) \([^)]*\)\s+<\s+\S*workload::worker \(([\d,]+)x\)", caller)
            if m:
                total, calls = (int(g.replace(",", "")) for g in m.groups())
                op = "get" if "::get " in line else "insert"
                print(f"'"$workload $peer"' {op}: {total / calls:.0f} instructions per call ({calls} calls)")
'
