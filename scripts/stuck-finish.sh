#!/usr/bin/env bash
# A finish stuck behind an operator's write lock, measured (docs/RELIABILITY.md, section 11):
# uploads SIZE_MB with tmpDir on /dev/shm and storeDir on disk (the finish copies across file
# systems), holds `BEGIN IMMEDIATE` in sqlite3 for HOLD seconds from the moment the task reaches
# verify, and prints how long after the lock went the task finished, its failed finish attempts,
# and what storeDir holds (one file). Needs sqlite3 and a release build:
#   cargo build --release --bins && scripts/stuck-finish.sh
set -euo pipefail
bin=${BIN:-target/release}; hold=${HOLD:-15}; size_mb=${SIZE_MB:-300}; port=${PORT:-18480}
work=$(mktemp -d); shm=$(mktemp -d -p /dev/shm)
server=
trap '[ -n "$server" ] && kill "$server" 2>/dev/null; rm -rf "$work" "$shm"' EXIT
db="$work/fupload.db"
cat > "$work/fupload.yml" <<YML
server: {host: "127.0.0.1", port: $port, addr: "http://127.0.0.1"}
database: {url: "sqlite://$db"}
tmpDir: "$shm/tmp"
storeDir: "$work/store"
bServer:
  cp1-secret: {name: "cp1", notifyUrl: "http://127.0.0.1:9/callback"}
YML
head -c $((size_mb << 20)) /dev/urandom > "$work/big.bin"
"$bin/fupload-server" -c "$work/fupload.yml" > "$work/server.log" 2>&1 & server=$!
until curl -sf "http://127.0.0.1:$port/healthz" > /dev/null; do sleep 0.1; done
"$bin/fupload-client" upload --server "http://127.0.0.1:$port" --token cp1-secret -q "$work/big.bin" \
  > "$work/client.log" 2>&1 &
client=$!
status() { sqlite3 -readonly "$db" "SELECT status FROM upload_tasks" 2>/dev/null || true; }
until [ "$(status)" = verify ]; do sleep 0.005; done
(echo "BEGIN IMMEDIATE;"; sleep "$hold"; echo "COMMIT;") | sqlite3 "$db"
released=$(date +%s.%N)
until [ "$(status)" = finish ]; do sleep 0.01; done
finished=$(date +%s.%N)
wait "$client"
echo "lock held ${hold} s from verify; the task finished $(python3 -c "print(round($finished - $released, 2))") s after it went"
echo "failed finish attempts: $(sqlite3 -readonly "$db" "SELECT finish_attempts FROM upload_tasks")"
echo "storeDir: $(ls -A "$work/store" | tr '\n' ' ')"
