#!/usr/bin/env bash
# Runs the dsm examples over RDMA (usage: run-examples.sh BIN_DIR, where BIN_DIR holds the
# release dsm-run and examples/): jacobi and counter, 2 nodes sharing rxe0, both consistency
# modes, and matmul on 3 nodes, with DSM_TRANSPORT=rdma! (join fails unless every node moves
# pages by RDMA READ). Each run must exit 0, print its check line, and every rank must say it
# uses RDMA. Then a cluster where one node has no device: `rdma` falls back to TCP on both,
# `rdma!` fails the join with the reason.
set -uo pipefail
bin=${1:?usage: run-examples.sh BIN_DIR}
# Soft-RoCE under TCG is slow: a fault is a millisecond, so keep the problems small.
export DSM_RDMA_GID_INDEX=${DSM_RDMA_GID_INDEX:-1}
export DSM_OP_TIMEOUT_MS=${DSM_OP_TIMEOUT_MS:-120000}
export DSM_FAILURE_TIMEOUT_MS=${DSM_FAILURE_TIMEOUT_MS:-10000}
export DSM_JOIN_TIMEOUT_MS=${DSM_JOIN_TIMEOUT_MS:-30000}
failed=()
run() {
  local nodes=$1 name=$2 check=$3
  shift 3
  local out started=$SECONDS
  echo "== $name"
  out=$("$bin/dsm-run" -n "$nodes" --transport 'rdma!' -- "$@" 2>&1)
  local status=$?
  echo "$out"
  local rdma_lines
  rdma_lines=$(grep -c 'pages move by RDMA READ' <<<"$out")
  if ((status != 0)) || ! grep -q "$check" <<<"$out" || ((rdma_lines != nodes)); then
    echo "FAILED: $name (exit $status, $rdma_lines of $nodes ranks on RDMA)"
    failed+=("$name")
  else
    echo "ok: $name in $((SECONDS - started)) s"
  fi
}
for mode in sequential release; do
  run 2 "jacobi $mode" 'jacobi check passed' "$bin/examples/jacobi" --n 128 --iters 20 --mode "$mode"
  run 2 "counter $mode" 'counter check passed' "$bin/examples/counter" --increments 100 --mode "$mode"
done
run 3 "matmul 3 nodes" 'matmul check passed' "$bin/examples/matmul"

# Rank 0 cannot open its device (a name that does not exist): under `rdma` both ranks say so
# in one line and the run passes over TCP; under `rdma!` rank 1's join fails naming rank 0.
mixed() {
  local want=$1 check=$2 started=$SECONDS out0 out1
  out0=$(mktemp) out1=$(mktemp)
  local coordinator=127.0.0.1:$((7600 + RANDOM % 300))
  echo "== rank 0 without a device, rank 1 with DSM_TRANSPORT=$want"
  DSM_RANK=0 DSM_SIZE=2 DSM_COORDINATOR=$coordinator DSM_TRANSPORT=rdma \
    DSM_RDMA_DEVICE=no-such-device timeout 120 "$bin/examples/counter" --increments 20 >"$out0" 2>&1 &
  local zero=$!
  DSM_RANK=1 DSM_SIZE=2 DSM_COORDINATOR=$coordinator DSM_TRANSPORT=$want \
    timeout 120 "$bin/examples/counter" --increments 20 >"$out1" 2>&1
  local status1=$?
  wait "$zero"
  local status0=$?
  sed 's/^/[0] /' "$out0"
  sed 's/^/[1] /' "$out1"
  local passed
  if [ "$want" = rdma ]; then
    ((status0 == 0 && status1 == 0)) && grep -q 'counter check passed' "$out0" &&
      grep -q 'RDMA unavailable' "$out0" && grep -q "$check" "$out1"
  else
    ((status1 != 0)) && grep -q "$check" "$out1"
  fi
  passed=$?
  if ((passed == 0)); then
    echo "ok: mixed $want in $((SECONDS - started)) s"
  else
    echo "FAILED: mixed $want (exit $status0/$status1)"
    failed+=("mixed $want")
  fi
  rm -f "$out0" "$out1"
}
mixed rdma 'ranks \[0\] have no RDMA device'
mixed 'rdma!' 'RDMA required but unavailable: ranks \[0\]'

if ((${#failed[@]})); then
  echo "FAILED: ${failed[*]}"
  exit 1
fi
