#!/bin/busybox sh
# livemig guest init: mount the basics, load the virtio drivers, configure the
# network from the kernel command line (livemig.net=ethN:ADDR/LEN), start the
# workload named there (livemig.workload=MODE[:k=v,...]) and stay alive as PID 1.
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
w=idle
nets=""
diskbeat=""
for arg in $(cat /proc/cmdline); do
  case "$arg" in
    livemig.workload=*) w="${arg#livemig.workload=}" ;;
    livemig.net=*) nets="$nets ${arg#livemig.net=}" ;;
    livemig.diskbeat=*) diskbeat="${arg#livemig.diskbeat=}" ;;
  esac
done
if grep -q "0x1af4" /sys/bus/pci/devices/*/vendor 2>/dev/null; then
  for m in virtio_ring virtio virtio_pci_legacy_dev virtio_pci_modern_dev virtio_pci \
           failover net_failover virtio_net virtio_blk; do
    [ -f /lib/modules/$m.ko ] && insmod /lib/modules/$m.ko
  done
fi
ip link set lo up
for n in $nets; do
  dev="${n%%:*}"; addr="${n#*:}"
  ip addr add "$addr" dev "$dev" && ip link set "$dev" up && echo "livemig-guest: net $dev $addr"
done
[ -n "$nets" ] && /bin/lmecho 7 &
if [ -n "$diskbeat" ] && [ -b "/dev/$diskbeat" ]; then
  # writes "diskbeat N" to the disk's first sector every 200 ms (a disk the test owns)
  ( n=0; while true; do n=$((n+1)); printf 'diskbeat %-12d\n' "$n" | dd of="/dev/$diskbeat" bs=512 count=1 conv=sync,fsync 2>/dev/null; usleep 200000; done ) &
  echo "livemig-guest: diskbeat on /dev/$diskbeat"
fi
echo "livemig-guest: starting workload $w"
/bin/lmwork "$w" &   # it says "livemig-guest: ready" once its memory is set up
while true; do sleep 3600; done
