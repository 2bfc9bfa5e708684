#!/usr/bin/env bash
# Installs the Debian packages dsm needs to build and test, when any is missing.
# Build: libclang-dev (bindgen for userfaultfd-sys and rdma-sys), pkg-config, libibverbs-dev,
# librdmacm-dev (rdma-sys). Tests: openmpi-bin (the mpirun test). Benches: libopenmpi-dev (mpicc and
# mpi.h for the MPI baseline of `dsm-bench jacobi`). Soft-RoCE rig: qemu-system-x86,
# busybox-static, kmod, cpio, iproute2, rdma-core, ibverbs-utils, ibverbs-providers, perftest.
set -euo pipefail
packages=(libclang-dev pkg-config libibverbs-dev librdmacm-dev openmpi-bin libopenmpi-dev
          qemu-system-x86 busybox-static kmod cpio iproute2 rdma-core ibverbs-utils
          ibverbs-providers rdmacm-utils perftest)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "install-deps: installing ${missing[*]}"
  sudo_cmd=(); [ "$(id -u)" -eq 0 ] || sudo_cmd=(sudo)
  "${sudo_cmd[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
for c in rustfmt clippy; do
  rustup component list --installed 2>/dev/null | grep -q "^$c" || rustup component add "$c"
done
