#!/usr/bin/env bash
# Builds pocket and runs a whole local pocket with data under ./pocket-data
# (or --dir DIR). Extra arguments go to `pocket up`; see `pocket up --help`.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
cargo build --locked --bin pocket
exec "$CARGO_TARGET_DIR/debug/pocket" up "$@"
