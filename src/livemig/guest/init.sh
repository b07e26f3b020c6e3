#!/bin/busybox sh
# livemig guest init: mount the basics, start the workload named on the kernel
# command line (livemig.workload=MODE[:k=v,...]) and stay alive as PID 1.
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
w=idle
for arg in $(cat /proc/cmdline); do
  case "$arg" in
    livemig.workload=*) w="${arg#livemig.workload=}" ;;
  esac
done
echo "livemig-guest: starting workload $w"
/bin/lmwork "$w" &
echo "livemig-guest: ready"
while true; do sleep 3600; done
