#!/usr/bin/env bash
# Makes .sqlx/ anew: the data sqlx's query! macros check the store's queries against when no
# DATABASE_URL is set (every build but this one). Run it after changing a query or a migration,
# and commit .sqlx/. CI runs it too and fails if .sqlx/ differs from what is committed.
set -euo pipefail
cd "$(dirname "$0")/.."

db_dir=$(mktemp -d)
trap 'rm -rf "$db_dir"' EXIT
# The schema the migrations make, by Python's sqlite3 (no build of ours is needed for it).
python3 - "$db_dir/schema.db" migrations/*.sql <<'PY'
import sqlite3, sys
conn = sqlite3.connect(sys.argv[1])
for migration in sys.argv[2:]:
    conn.executescript(open(migration, encoding="utf-8").read())
conn.close()
PY

rm -rf .sqlx
mkdir .sqlx
# The macros expand again only when the crate is compiled again.
touch src/lib.rs
DATABASE_URL="sqlite:$db_dir/schema.db" SQLX_OFFLINE_DIR="$PWD/.sqlx" cargo check --quiet --lib
echo "$(ls .sqlx | wc -l) queries in .sqlx/"
