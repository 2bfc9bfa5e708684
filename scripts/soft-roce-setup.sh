#!/usr/bin/env bash
# Soft-RoCE (rdma_rxe) for dsm's RDMA tests and benches.
#
#   soft-roce-setup.sh host [NETDEV]   kernel with rdma_rxe (root): load it, add rxe0 over NETDEV
#                                      (default: the default-route device), check PORT_ACTIVE
#   soft-roce-setup.sh run CMD...      run CMD where rxe0 is up and return its exit code: here
#                                      when this kernel has rdma_rxe, else in a QEMU guest
#   soft-roce-setup.sh guest CMD...    run CMD in the QEMU guest, whatever this kernel has
#   soft-roce-setup.sh prepare         fetch the guest kernel and build its initramfs (cached)
#
# The guest (for machines whose kernel has no RDMA, like our CI): Debian's stock kernel
# extracted from its package, a busybox initramfs, the host's / shared read-only over 9p under
# a tmpfs overlay, eth0 at MTU 9000, rxe0 over it. KVM when /dev/kvm can boot a stock kernel,
# else TCG (a PVM /dev/kvm cannot). CMD runs as root in the guest, in the current folder, with
# the DSM_* and RUST_* variables of the caller plus DSM_REQUIRE_RDMA=1; its output goes to
# this terminal. Build on the host first: compiling under TCG is very slow.
#
# DSM_RIG_SMP sets the guest's vCPUs (default 2).
# Exit codes: CMD's own; 125 when the rig could not come up (no kernel package, QEMU failed,
# rxe0 never active); 124 when CMD overran DSM_RIG_TIMEOUT seconds (default 900).
# The cache lives in .rig-cache/ (gitignored).
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
rig=$repo/scripts/rig
cache=$repo/.rig-cache/guest
RIG_FAILED=125

say() { echo "soft-roce: $*" >&2; }

host_has_rxe() {
  [ -d /sys/module/rdma_rxe ] || modprobe -n rdma_rxe 2>/dev/null
}

setup_host() {
  local netdev=${1:-$(ip -o route show default | awk '{ print $5; exit }')}
  [ -n "$netdev" ] || { say "no NETDEV given and no default route"; return 1; }
  modprobe rdma_rxe
  rdma link show rxe0 >/dev/null 2>&1 || rdma link add rxe0 type rxe netdev "$netdev"
  ulimit -l unlimited || say "could not raise memlock; unprivileged users need ulimit -l"
  local tries=0
  until ibv_devinfo -d rxe0 2>/dev/null | grep -q PORT_ACTIVE; do
    tries=$((tries + 1))
    [ "$tries" -le 60 ] || { say "rxe0 not PORT_ACTIVE after 30 s"; return 1; }
    sleep 0.5
  done
  say "rxe0 is PORT_ACTIVE over $netdev"
}

# QEMU acceleration: KVM boots a stock kernel only when /dev/kvm is not PVM.
accel_args() {
  if [ -w /dev/kvm ] && [ ! -d /sys/module/kvm_pvm ]; then
    echo "-accel kvm -cpu host"
  else
    echo "-accel tcg,thread=multi -cpu max"
  fi
}

# Writes the command file the guest runs: the caller's folder and DSM_*/RUST_* variables.
write_command() {
  local run=$1
  shift
  {
    echo "cd $(printf %q "$PWD") || exit 1"
    env | grep -E '^(DSM_|RUST_)[A-Za-z0-9_]*=' | while IFS='=' read -r name value; do
      echo "export $name=$(printf %q "$value")"
    done
    echo "export DSM_REQUIRE_RDMA=1"
    printf '%q ' "$@"
    echo
  } >"$run/command"
}

run_guest() {
  (($#)) || { say "no command given"; return 2; }
  local version
  version=$(bash "$rig/prepare-guest.sh" "$cache") || {
    say "could not prepare the guest kernel"
    return $RIG_FAILED
  }
  local run
  run=$(mktemp -d "$repo/.rig-cache/run.XXXXXX")
  write_command "$run" "$@"
  local append="console=ttyS0 quiet loglevel=3 panic=-1 rig.run=$run rig.modules=$cache/root"
  append+=" rig.kv=$version rig.stage2=$rig/guest-stage2.sh"
  say "booting the guest ($(accel_args | cut -d' ' -f2)) for: $*"
  local status=0
  # shellcheck disable=SC2046 # accel_args is several words on purpose
  timeout --foreground -k 10 "${DSM_RIG_TIMEOUT:-900}" \
    qemu-system-x86_64 $(accel_args) -smp "${DSM_RIG_SMP:-2}" -m 2G -no-reboot \
    -display none -serial stdio -monitor none \
    -kernel "$cache/vmlinuz" -initrd "$cache/initramfs.cpio.gz" -append "$append" \
    -fsdev local,id=hostroot,path=/,security_model=none,readonly=on,multidevs=remap \
    -device virtio-9p-pci,fsdev=hostroot,mount_tag=hostroot \
    -fsdev local,id=rigrun,path="$run",security_model=none \
    -device virtio-9p-pci,fsdev=rigrun,mount_tag=rigrun \
    -netdev user,id=net0 -device virtio-net-pci,netdev=net0 </dev/null || status=$?
  local code
  if [ ! -f "$run/started" ]; then
    say "the guest did not bring rxe0 up (qemu exit status $status)"
    code=$RIG_FAILED
  elif [ ! -f "$run/exit-code" ]; then
    say "the command did not finish in the guest (qemu exit status $status)"
    code=124
  else
    code=$(cat "$run/exit-code")
  fi
  rm -rf "$run"
  return "$code"
}

run_here_or_guest() {
  if host_has_rxe && [ "$(id -u)" -eq 0 ]; then
    setup_host || return $RIG_FAILED
    DSM_REQUIRE_RDMA=1 "$@"
  else
    run_guest "$@"
  fi
}

mode=${1:-}
shift || true
[ "${1:-}" = "--" ] && shift
case $mode in
  host) setup_host "$@" ;;
  run) run_here_or_guest "$@" ;;
  guest) run_guest "$@" ;;
  prepare) bash "$rig/prepare-guest.sh" "$cache" ;;
  *)
    sed -n '2,9p' "$0" >&2
    exit 2
    ;;
esac
