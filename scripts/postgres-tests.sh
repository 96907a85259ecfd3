#!/usr/bin/env bash
# The Rust tests against PostgreSQL: starts a throw-away PostgreSQL on loopback (scripts/lib/postgres.sh)
# and runs `cargo test` with FUPLOAD_TEST_POSTGRES_URL pointing at it; the tests that honour it
# make a database each there. Arguments go to `cargo test`. Stops the server on exit.
#
#   scripts/postgres-tests.sh [cargo test arguments]
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=lib/loopback.sh
source scripts/lib/loopback.sh
# shellcheck source=lib/postgres.sh
source scripts/lib/postgres.sh
trap stop_postgres EXIT

started="$EPOCHREALTIME"
start_postgres
echo "== PostgreSQL on 127.0.0.1:$POSTGRES_PORT, up in $(seconds_since "$started") s (install included if it ran)"
cargo test "$@"
