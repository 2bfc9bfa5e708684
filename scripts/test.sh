#!/usr/bin/env bash
# The test command (README): installs what it needs, then formatting, lints and every test.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
export CARGO_TERM_COLOR=never
echo "== cargo fmt --check"
cargo fmt --all --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets --release -- -D warnings
echo "== cargo check -p dsm --no-default-features (builds without the RDMA headers' crate)"
cargo check -p dsm --no-default-features --release
echo "== cargo doc (every public item documented, no broken links)"
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps
echo "== cargo test (release: the simulator and the multi-process tests want optimised code;"
echo "   doctests included, the README's program among them)"
cargo test --workspace --release
echo "== RDMA tests on Soft-RoCE (in a QEMU guest when this kernel has no rdma_rxe; DSM_SKIP_RDMA=1 skips them loudly if the rig cannot start)"
bash scripts/rig/rdma-tests.sh
