#!/usr/bin/env bash
# The whole guest side of the RDMA step, in one boot (usage: run-suite.sh BIN_DIR
# TEST_BINARY...): dsm-rdma's test binaries, then the dsm examples over RDMA.
set -uo pipefail
here=$(dirname "$0")
bin=${1:?usage: run-suite.sh BIN_DIR TEST_BINARY...}
shift
status=0
started=$SECONDS
bash "$here/run-binaries.sh" "$@" || status=1
echo "rdma-tests: transport tests took $((SECONDS - started)) s"
started=$SECONDS
bash "$here/run-examples.sh" "$bin" || status=1
echo "rdma-tests: examples over RDMA took $((SECONDS - started)) s"
exit "$status"
