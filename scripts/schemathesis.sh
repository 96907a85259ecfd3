#!/usr/bin/env bash
# Checks the running server against its own OpenAPI document with schemathesis: a bounded number
# of generated requests per operation; no reply may be a 5xx, and every reply must match the
# documented schema for its status code.
#
#   scripts/schemathesis.sh [path/to/fupload-server]
#
# SCHEMATHESIS (default: schemathesis on PATH) and MAX_EXAMPLES (default 200) may be set.
set -euo pipefail
cd "$(dirname "$0")/.."

binary="${1:-${CARGO_TARGET_DIR:-target}/debug/fupload-server}"
schemathesis="${SCHEMATHESIS:-schemathesis}"
max_examples="${MAX_EXAMPLES:-200}"

work="$(mktemp -d)"
server_pid=""
cleanup() {
  if [[ -n "$server_pid" ]]; then kill -TERM "$server_pid" 2>/dev/null || true; wait "$server_pid" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

# A free loopback port, picked by the kernel.
port="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
cat > "$work/fupload.yml" <<YAML
server: {host: "127.0.0.1", port: $port, addr: "http://127.0.0.1"}
database: {url: "sqlite://$work/fupload.db"}
tmpDir: "$work/tmp"
storeDir: "$work/store"
maxFileSize: 1073741824
readiness: {minFreeDisk: 0}
shutdownGrace: 2
bServer:
  cp1-secret: {name: "cp1", notifyUrl: "http://127.0.0.1:9/callback"}
YAML

RUST_LOG="${RUST_LOG:-warn}" "$binary" -c "$work/fupload.yml" 2> "$work/server.log" &
server_pid=$!

# One real task, so that the task endpoints are exercised past "no such task": every generated
# request to them names this task and its key (the other fields stay generated).
task="$(python3 - "$port" <<'PY'
import json, sys, time, urllib.request
base = f"http://127.0.0.1:{sys.argv[1]}"
for _ in range(300):
    try:
        urllib.request.urlopen(base + "/healthz", timeout=1)
        break
    except OSError:
        time.sleep(0.1)
body = {"token": "cp1-secret", "userId": "fuzz", "fileName": "fuzz.bin", "fileSize": 1 << 20,
        "fileMd5": "0" * 32}
request = urllib.request.Request(base + "/api/upload/new/task", json.dumps(body).encode(),
                                 {"content-type": "application/json"})
data = json.load(urllib.request.urlopen(request, timeout=10))["data"]
print(data["taskId"], data["uploadUrl"].split("key=")[1])
PY
)"
read -r task_id task_key <<< "$task"
cat > "$work/schemathesis.toml" <<TOML
[parameters]
"query.taskId" = $task_id
"query.key" = "$task_key"

# The schema declares no links between operations: nothing for the stateful phase to follow.
[phases.stateful]
enabled = false

# The coverage phase crashes inside Hypothesis on this operation's schema on Python 3.11
# ("SystemError: AST constructor recursion depth mismatch", a CPython 3.11 ast bug), before any
# request is sent; the examples and fuzzing phases still cover it. The same bug struck other
# operations when two workers parsed at once: one worker (below).
[[operations]]
include-path = "/api/upload/files/block"
phases.coverage.enabled = false
TOML

status=0
timeout 600 "$schemathesis" --config-file "$work/schemathesis.toml" run "http://127.0.0.1:$port/api/openapi.json" \
  --wait-for-schema 30 \
  --checks not_a_server_error,response_schema_conformance \
  --max-examples "$max_examples" \
  --seed 20261125 \
  --request-timeout 10 \
  --workers 1 \
  --generation-database none \
  --no-color || status=$?

if [[ $status -ne 0 ]]; then
  echo "== schemathesis failed ($status); server log:"
  tail -n 100 "$work/server.log"
fi
exit "$status"
