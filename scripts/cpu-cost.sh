#!/bin/bash
# livemig's own CPU per migration: one migration alone, then four at once, twice, interleaved.
# Needs root and scripts/setup.sh. Writes one report per migration into $OUT (default /tmp/cpu).
set -u
cd "$(dirname "$0")/.."
export LIVEMIG_RUNTIME_DIR=${LIVEMIG_RUNTIME_DIR:-/tmp/lcpu} LIVEMIG_LAB_PREFIX=${LIVEMIG_LAB_PREFIX:-lc-}
L=".venv/bin/python -m livemig"
O=${OUT:-/tmp/cpu}; mkdir -p $O
$L lab up --bandwidth 200mbit > $O/lab.txt 2>&1
for n in c1 c2 c3 c4; do $L vm start $n --host src --workload dirty:mib=16,rate=2 --memory 128 > /dev/null 2>&1; done
here=src; there=dst
for round in 1 2; do
  $L migrate c1 --to $there --policy postcopy-after:1 --json -q > $O/one-$round.json 2>$O/one-$round.err
  $L migrate c1 --to $here --policy postcopy-after:1 --json -q > /dev/null 2>&1   # back, so all four start on $here
  pids=""
  for n in c1 c2 c3 c4; do $L migrate $n --to $there --policy postcopy-after:1 --json -q > $O/four-$round-$n.json 2>$O/four-$round-$n.err & pids="$pids $!"; done
  wait $pids
  t=$here; here=$there; there=$t
done
for n in c1 c2 c3 c4; do $L vm stop $n > /dev/null 2>&1; done
$L lab down > /dev/null 2>&1
echo done
