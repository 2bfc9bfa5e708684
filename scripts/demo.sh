#!/usr/bin/env bash
# README command 1: on a fresh machine, installs what dsm needs, builds it, and runs the jacobi
# demo on 4 local nodes: a progress bar while it runs, each node's stats at the end.
#   MODE=sequential|release (default release)   N=grid size (default 512)   ITERS (default 200)
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
command -v cargo >/dev/null 2>&1 || export PATH="$HOME/.cargo/bin:$PATH"
if ! command -v cargo >/dev/null 2>&1; then
  echo "demo: no cargo on PATH: install a Rust toolchain (>= 1.86) first" >&2
  exit 1
fi
cargo build --release -p dsm-run -p dsm --examples
mode=${MODE:-release}
bin="${CARGO_TARGET_DIR:-target}/release"
echo "== jacobi ${N:-512}x${N:-512}, ${ITERS:-200} iterations, 4 nodes, $mode consistency"
"$bin/dsm-run" -n 4 --attach 0 --timeout-secs 600 -- \
  "$bin/examples/jacobi" --n "${N:-512}" --iters "${ITERS:-200}" --mode "$mode" --progress
