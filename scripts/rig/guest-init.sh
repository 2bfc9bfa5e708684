#!/bin/sh
# /init of the Soft-RoCE guest's initramfs (busybox sh). Built into the initramfs by
# prepare-guest.sh.
#
# Mounts the host's / (9p, read-only) under a tmpfs overlay so the guest can write, the run
# folder (9p, read-write) at its host path, the extracted kernel's modules at /lib/modules, and
# switch_roots into it — switch_root, not chroot: rdma_rxe makes the kernel run /sbin/modprobe
# from the real root, which must be the overlay — to run guest-stage2.sh from the host's tree.
# Kernel command line: rig.run=<run folder> rig.modules=<extracted kernel root> rig.kv=<version>
# rig.stage2=<path of guest-stage2.sh>.
mount -t devtmpfs devtmpfs /dev
exec </dev/console >/dev/console 2>&1
mount -t proc proc /proc
mount -t sys sysfs /sys 2>/dev/null || mount -t sysfs sysfs /sys

fail() {
  echo "rig init: $*"
  echo o >/proc/sysrq-trigger
  sleep 5
}

for word in $(cat /proc/cmdline); do
  case $word in
    rig.run=*) run=${word#rig.run=} ;;
    rig.modules=*) modules=${word#rig.modules=} ;;
    rig.kv=*) kv=${word#rig.kv=} ;;
    rig.stage2=*) stage2=${word#rig.stage2=} ;;
  esac
done
[ -n "$run" ] && [ -n "$modules" ] && [ -n "$kv" ] && [ -n "$stage2" ] || fail "missing rig.* parameters"

for module in $(cat /modules/order); do
  insmod "/modules/$module" || fail "insmod $module failed"
done

# cache=loose: the host tree does not change while the guest runs, and it makes loading
# binaries over 9p several times faster.
mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=512000,cache=loose hostroot /lower ||
  fail "mount of the host root over 9p failed"
mount -t tmpfs -o size=1G tmpfs /upper
mkdir -p /upper/data /upper/work
mount -t overlay overlay -o lowerdir=/lower,upperdir=/upper/data,workdir=/upper/work /newroot ||
  fail "overlay mount failed"
mkdir -p "/newroot$run"
mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000 rigrun "/newroot$run" ||
  fail "mount of the run folder over 9p failed"
mkdir -p "/newroot/lib/modules/$kv"
mount -o bind "/newroot$modules/lib/modules/$kv" "/newroot/lib/modules/$kv"
# No tmpfs over /tmp: the overlay already makes it writable, and a checkout under the host's
# /tmp (CI clones there) must stay visible to the guest.
mount -t tmpfs tmpfs /newroot/run
mount --move /dev /newroot/dev
mkdir -p /newroot/dev/shm /newroot/dev/pts
mount -t tmpfs tmpfs /newroot/dev/shm
mount --move /proc /newroot/proc
mount --move /sys /newroot/sys
exec switch_root /newroot /bin/sh "$stage2" "$run"
