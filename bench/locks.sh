#!/usr/bin/env bash
# Lock manager overhead vs a bare tokio Mutex, measured back to back. Prints a Markdown table.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/vaultfs-target}"
for run in 1 2 3; do
  echo "run $run"
  cargo run --release --locked -q --example lock_bench
done
