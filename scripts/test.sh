#!/usr/bin/env bash
# Runs every test of the workspace: unit, property, index (SQLite and
# MariaDB) and end-to-end tests that start real pocket processes.
# MariaDB: POCKET_TEST_MYSQL_URL (default mysql://root@127.0.0.1:3306/test).
# With CI=true the MariaDB-backed tests fail, not skip, if it is unreachable.
# Extra arguments go to `cargo test`.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
set +e
cargo test --workspace --locked --no-fail-fast "$@" 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
# One closing line over every test binary (cargo prints one per binary,
# the last often being a crate's empty doc-test run).
passed=$(grep -E '^test result:' "$log" | sed -E 's/.* ([0-9]+) passed;.*/\1/' | awk '{s+=$1} END {print s+0}')
failed=$(grep -E '^test result:' "$log" | sed -E 's/.* ([0-9]+) failed;.*/\1/' | awk '{s+=$1} END {print s+0}')
echo "tests: $passed passed, $failed failed"
exit "$status"
