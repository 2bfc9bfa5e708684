#!/usr/bin/env bash
# Runs prebuilt test binaries one after another (usage: run-binaries.sh BINARY...), each
# with one test thread (the tests share one device and two vCPUs); fails if any failed.
set -uo pipefail
failed=()
for binary in "$@"; do
  echo "== $(basename "$binary")"
  "$binary" --test-threads=1 || failed+=("$(basename "$binary")")
done
if ((${#failed[@]})); then
  echo "FAILED: ${failed[*]}"
  exit 1
fi
