#!/usr/bin/env bash
# A bridged guest (512 MiB, dirtying 64 MiB at 10 MiB/s) with a virtio disk on shared
# storage, migrated back and forth between lab hosts src and dst (200 mbit) under each
# policy, 3 repeats, while the lab's client namespace probes it. Writes one report per
# run into $OUT (default docs/real-vms) and prints medians. Needs root and `scripts/setup.sh`.
set -euo pipefail
cd "$(dirname "$0")/.."
export LIVEMIG_RUNTIME_DIR=${LIVEMIG_RUNTIME_DIR:-/tmp/lm-real-vms} LIVEMIG_LAB_PREFIX=${LIVEMIG_LAB_PREFIX:-lmr-}
OUT=${OUT:-docs/real-vms}
SHARED=${SHARED:-/var/tmp/lm-real-vms}
L=.venv/bin/livemig
mkdir -p "$OUT" "$SHARED" "$LIVEMIG_RUNTIME_DIR"
truncate -s 64M "$SHARED/web.raw"
cat > "$OUT/web.toml" <<T
name = "web"
memory = "512M"
accel = "tcg"
workload = "dirty:mib=64,rate=10"

[boot]
cmdline = "livemig.diskbeat=vda"

[[disk]]
path = "$SHARED/web.raw"
format = "raw"
cache = "none"

[[nic]]
model = "virtio-net-pci"
network = "bridge:lmbr0"
ip = "198.51.100.10/24"
T
cleanup() { $L vm stop web >/dev/null 2>&1 || true; $L lab down >/dev/null 2>&1 || true; }
trap cleanup EXIT
$L lab up --bandwidth 200mbit > /dev/null
$L vm start --spec "$OUT/web.toml" --host src
where() { $L vm list --json | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["host"])'; }
for rep in 1 2 3; do
  for pol in precopy postcopy-now postcopy-after:1 postcopy-after:2 manual auto; do
    here=$(where); [ "$here" = src ] && there=dst || there=src
    out="$OUT/${pol//:/_}-$rep.json"
    if [ "$pol" = manual ]; then
      $L migrate web --to "$there" --policy manual --json --quiet > "$out" &
      mp=$!
      timeout 120 $L events web | grep -m1 -q '"n": 2' || true   # pass 1 done: switch now
      $L postcopy web > /dev/null
      wait $mp || true
    else
      $L migrate web --to "$there" --policy "$pol" --json --quiet > "$out" || true
    fi
    echo "$pol $here->$there done"
  done
done
.venv/bin/python - "$OUT" <<'P'
import json, statistics, sys
from pathlib import Path
rows = {}
for f in sorted(Path(sys.argv[1]).glob("*-[0-9].json")):
    r = json.loads(f.read_text())
    pol = r["policy"]
    n = r.get("network") or {}
    rows.setdefault(pol, []).append((r["status"], r["blackout_ms"], n.get("max_gap_ms"), n.get("lost"),
                                     (n.get("announce") or {}).get("first_ms_after_resume"), r["guest"].get("max_stall_ms"),
                                     r["total_time_ms"]))
def fmt(vals):
    vals = [v for v in vals if v is not None]
    return f"{statistics.median(vals):.0f} ({min(vals):.0f}-{max(vals):.0f})" if vals else "-"
print("| policy | completed | blackout_ms | network.max_gap_ms | network.lost | announce ms after resume | guest.max_stall_ms | total_time_ms |")
print("|---|---|---|---|---|---|---|---|")
for pol, rs in rows.items():
    ok = sum(r[0] == "completed" for r in rs)
    cols = [fmt([r[i] for r in rs]) for i in range(1, 7)]
    print(f"| {pol} | {ok}/{len(rs)} | " + " | ".join(cols) + " |")
P
