#!/usr/bin/env bash
# fupload-bench --postgres on a throw-away PostgreSQL with pg_stat_statements loaded (so that the
# statements per block are counted): W2 on 1 node on SQLite, 1 on PostgreSQL, 3 on PostgreSQL.
# Builds the release binaries first. Arguments go to fupload-bench (say, --runs 5).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/loopback.sh
source scripts/lib/postgres.sh
cargo build --release --locked --bins
trap stop_postgres EXIT
POSTGRES_OPTIONS="-c shared_preload_libraries=pg_stat_statements" start_postgres
postgres_sql "CREATE EXTENSION pg_stat_statements" fupload >/dev/null
target/release/fupload-bench --postgres "$FUPLOAD_TEST_POSTGRES_URL" "$@"
