#!/usr/bin/env bash
# Runs every test of the workspace: unit, property, index (SQLite and
# MariaDB) and end-to-end tests that start real pocket processes.
# MariaDB: POCKET_TEST_MYSQL_URL (default mysql://root@127.0.0.1:3306/test).
# With CI=true the MariaDB-backed tests fail, not skip, if it is unreachable.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
exec cargo test --workspace --locked "$@"
