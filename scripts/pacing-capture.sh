#!/bin/bash
# Where a post-copy page's answer waits (docs/pacing): one migration of the demo's stream
# guest (postcopy-after:1) across a lab that this script brings up and takes down, with a
# header capture on the source's switch port, then the time from each page request leaving
# the destination to the next page answer leaving the source.
#
#   bash scripts/pacing-capture.sh [fifo|prio] [GSO_BYTES] [PACE_BYTES_PER_S]
#
# fifo: the lab's tbf as it is. prio: a strict-priority htb under the source's tbf, with
# the main migration connection in the lower class, so the page-request channel
# (postcopy-preempt) goes first. GSO_BYTES: the source link's GSO size cap (default the
# kernel's 65536). PACE: SO_MAX_PACING_RATE on the source QEMU's main migration socket,
# set once post-copy starts (scripts/pace-socket.py). Needs root, tcpdump
# (apt-get install tcpdump) and no lab up under LIVEMIG_RUNTIME_DIR or with its prefix
# (LIVEMIG_LAB_PREFIX, default lm-).
set -eu
MODE=${1:-fifo} GSO=${2:-65536} PACE=${3:-}
HERE=$(cd "$(dirname "$0")" && pwd)
export LIVEMIG_RUNTIME_DIR=${LIVEMIG_RUNTIME_DIR:-/tmp/livemig-capture}
L="$HERE/../.venv/bin/livemig"
OUT=${OUT:-$LIVEMIG_RUNTIME_DIR/capture}
mkdir -p "$OUT"
P=${LIVEMIG_LAB_PREFIX:-lm-}
SRC=${P}src
trap '"$L" vm stop cap >/dev/null 2>&1 || true; "$L" lab down >/dev/null' EXIT
"$L" lab up >/dev/null
ip -n $SRC link set dev eth0 gso_max_size "$GSO"
"$L" vm start cap --memory 512 --workload stream:fps=30,kib=1024,ring=256 --host src --accel tcg >/dev/null
sleep 5
if [ "$MODE" = prio ]; then
  ip netns exec $SRC tc qdisc add dev eth0 parent 1:1 handle 20: htb default 1 2>/dev/null
  for c in 1 2; do
    ip netns exec $SRC tc class add dev eth0 parent 20: classid 20:$c htb rate 10gbit prio $((c - 1)) 2>/dev/null
    ip netns exec $SRC tc qdisc add dev eth0 parent 20:$c handle 2$c: bfifo limit 2762144
  done
fi
ip netns exec ${P}switch tcpdump -i p-src -s 120 -w "$OUT/src-port.pcap" -n tcp 2>/dev/null &
TP=$!
sleep 1
"$L" migrate cap --to dst --policy postcopy-after:1 --json > "$OUT/report.json" 2>/dev/null &
MP=$!
if [ "$MODE" = prio ]; then  # the main connection (the only one until post-copy) to the lower class
  for _ in $(seq 100); do
    sp=$(ip netns exec $SRC ss -tnH state established "( dst 192.0.2.11 )" | awk '{split($3,a,":"); print a[2]}' | head -1)
    [ -n "$sp" ] && break
    sleep 0.1
  done
  ip netns exec $SRC tc filter add dev eth0 parent 20: protocol ip prio 1 u32 match ip sport "$sp" 0xffff flowid 20:2
fi
if [ -n "$PACE" ]; then  # once the page-request channel is up: post-copy has started
  for _ in $(seq 400); do
    [ "$(ip netns exec $SRC ss -tnH state established '( dst 192.0.2.11 )' | wc -l)" -ge 2 ] && break
    sleep 0.05
  done
  qpid=$("$L" vm list --json | python3 -c "import json,sys; print(json.load(sys.stdin)[0]['instance']['pid'])")
  python3 "$HERE/pace-socket.py" "$qpid" 192.0.2.11 "$PACE"
fi
wait $MP
kill $TP
wait $TP 2>/dev/null || true
python3 "$HERE/pcap-answers.py" "$OUT/src-port.pcap" "$OUT/report.json"
