#!/bin/sh
# Runs in the Soft-RoCE guest after switch_root (usage: guest-stage2.sh RUN_FOLDER).
#
# Brings eth0 up with MTU 9000 (so the RoCE path MTU is 4096; at 1500 it is 1024), adds rxe0
# over it, waits for PORT_ACTIVE, then runs RUN_FOLDER/command (written by
# soft-roce-setup.sh), stores its exit code in RUN_FOLDER/exit-code and powers off.
# RUN_FOLDER/started tells the host the rig came up, so it can tell a rig failure from a
# failing command.
run=$1
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root

# busybox's poweroff -f is the reboot(2) call itself: nothing after it runs, so init never
# exits (which would panic the kernel). sysrq is the fallback.
power_off() {
  sync
  busybox poweroff -f
  echo o >/proc/sysrq-trigger
  while :; do :; done
}

fail() {
  echo "rig guest: $*"
  power_off
}

ip link set lo up
ip link set eth0 mtu 9000 up || fail "eth0 did not come up"
ip addr add 10.0.2.15/24 dev eth0
modprobe rdma_rxe || fail "modprobe rdma_rxe failed"
rdma link add rxe0 type rxe netdev eth0 || fail "rdma link add rxe0 failed"
tries=0
until ibv_devinfo -d rxe0 2>/dev/null | grep -q PORT_ACTIVE; do
  tries=$((tries + 1))
  [ "$tries" -le 60 ] || fail "rxe0 not PORT_ACTIVE after 30 s"
  sleep 0.5
done
ulimit -l unlimited
echo "rig guest: rxe0 is PORT_ACTIVE over eth0 (MTU 9000); running the command"
: >"$run/started"
/bin/bash "$run/command"
echo $? >"$run/exit-code"
power_off
