#!/usr/bin/env bash
# Prepares the Soft-RoCE guest once and caches it (usage: prepare-guest.sh CACHE_DIR).
#
# Debian's stock kernel package (the one `linux-image-amd64` depends on) is extracted with
# `dpkg -x` — never installed — and its modules indexed with `depmod -b`; they are uncompressed
# and include rdma_rxe. The initramfs is busybox-static, the modules needed to mount the host
# over 9p with an overlay, and scripts/rig/guest-init.sh as /init. Prints the kernel version.
# Idempotent: a complete cache (the `ready` stamp) is reused as is.
set -euo pipefail
cache=$1
rig_dir=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$cache"
# The stamp names the rig scripts that went into the cache: editing them rebuilds it.
stamp=$(cat "$rig_dir/guest-init.sh" "$rig_dir/prepare-guest.sh" | sha256sum | cut -c1-16)
if [ -f "$cache/ready" ] && [ "$(cat "$cache/ready")" = "$stamp" ]; then
  cat "$cache/kernel-version"
  exit 0
fi
rm -rf "$cache/root" "$cache/initramfs" "$cache/ready" "$cache"/*.deb

# The versioned image package behind the `linux-image-amd64` metapackage.
image_package() {
  apt-cache depends linux-image-amd64 2>/dev/null |
    awk '/Depends: linux-image-[0-9]/ { print $2; exit }'
}
package=$(image_package)
if [ -z "$package" ]; then
  # Package lists may have been cleaned (container images do): fetch them once.
  sudo_cmd=(); [ "$(id -u)" -eq 0 ] || sudo_cmd=(sudo)
  "${sudo_cmd[@]}" apt-get update -qq >/dev/null 2>&1 || true
  package=$(image_package)
fi
if [ -z "$package" ]; then
  echo "prepare-guest: apt-cache knows no linux-image-amd64 (run apt-get update?)" >&2
  exit 1
fi
(cd "$cache" && apt-get download -q "$package" >/dev/null 2>&1) || {
  echo "prepare-guest: apt-get download $package failed" >&2
  exit 1
}
dpkg -x "$cache"/"$package"_*.deb "$cache/root"
rm -f "$cache"/*.deb
version=$(ls "$cache/root/lib/modules")
depmod -b "$cache/root" "$version"

# The initramfs: busybox, the modules to reach the 9p root (with their dependencies, in load
# order), and /init.
initramfs=$cache/initramfs
mkdir -p "$initramfs"/{bin,dev,proc,sys,modules,lower,upper,newroot}
cp /bin/busybox "$initramfs/bin/busybox"
for applet in sh mount umount mkdir insmod switch_root cat sleep echo ls; do
  ln -s busybox "$initramfs/bin/$applet"
done
: >"$initramfs/modules/order"
for module in virtio_pci virtio_net 9pnet_virtio 9p overlay; do
  modprobe -d "$cache/root" -S "$version" --show-depends "$module" | awk '$1 == "insmod" { print $2 }'
done | awk '!seen[$0]++' | while read -r path; do
  cp "$path" "$initramfs/modules/"
  basename "$path" >>"$initramfs/modules/order"
done
cp "$rig_dir/guest-init.sh" "$initramfs/init"
chmod +x "$initramfs/init"
(cd "$initramfs" && find . | cpio -o -H newc --quiet | gzip -1) >"$cache/initramfs.cpio.gz"
cp "$cache/root/boot/vmlinuz-$version" "$cache/vmlinuz"
echo "$version" >"$cache/kernel-version"
echo "$stamp" >"$cache/ready"
echo "$version"
