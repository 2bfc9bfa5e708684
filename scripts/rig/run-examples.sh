#!/usr/bin/env bash
# Runs the dsm examples over RDMA (usage: run-examples.sh BIN_DIR, where BIN_DIR holds the
# release dsm-run and examples/): jacobi and counter, 2 nodes sharing rxe0, both consistency
# modes, DSM_TRANSPORT=rdma! (join fails unless every node moves pages by RDMA READ). Each
# run must exit 0, print its check line, and every rank must say it uses RDMA.
set -uo pipefail
bin=${1:?usage: run-examples.sh BIN_DIR}
# Soft-RoCE under TCG is slow: a fault is a millisecond, so keep the problems small.
export DSM_RDMA_GID_INDEX=${DSM_RDMA_GID_INDEX:-1}
export DSM_OP_TIMEOUT_MS=${DSM_OP_TIMEOUT_MS:-120000}
export DSM_FAILURE_TIMEOUT_MS=${DSM_FAILURE_TIMEOUT_MS:-10000}
nodes=2
failed=()
run() {
  local name=$1 check=$2
  shift 2
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
  run "jacobi $mode" 'jacobi check passed' "$bin/examples/jacobi" --n 128 --iters 20 --mode "$mode"
  run "counter $mode" 'counter check passed' "$bin/examples/counter" --increments 100 --mode "$mode"
done
if ((${#failed[@]})); then
  echo "FAILED: ${failed[*]}"
  exit 1
fi
