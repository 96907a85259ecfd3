#!/usr/bin/env bash
# Real tus and IETF-draft clients against fupload, all on loopback in a temp dir:
# tus-js-client (clients/tus-js: tus 1.0 interrupted and resumed, parallelUploads, ietf-draft-03
# and -05, a business-server task through its tusUrl) and tuspy (clients/tuspy: checksums, and a
# resume after the server was killed with SIGKILL and restarted). Each test receives the signed
# callbacks itself on the port of the config's notifyUrl and checks the stored file's md5.
#
#   scripts/clients.sh [path/to/fupload-server]
#
# Needs node, npm and python3; scripts/install-tools.sh installs the clients, pinned (npm ci with
# the committed package-lock.json, a venv with clients/tuspy/requirements.txt).
set -euo pipefail
cd "$(dirname "$0")/.."
binary="$(realpath "${1:-${CARGO_TARGET_DIR:-target}/debug/fupload-server}")"
repo="$(pwd)"
# shellcheck source=lib/loopback.sh
source scripts/lib/loopback.sh
# shellcheck source=lib/tools.sh
source scripts/lib/tools.sh

work="$(mktemp -d)"
server_pid=""
cleanup() {
  status=$?
  if [[ -n "$server_pid" ]]; then
    kill -TERM "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
  fi
  # A server test_tuspy.py left running (it removes the file once its server is gone): not a
  # child of this shell, so wait for it by polling.
  tuspy_pid="$(cat "$work/tuspy-server.pid" 2>/dev/null || true)"
  if [[ -n "$tuspy_pid" ]] && kill -TERM "$tuspy_pid" 2>/dev/null; then
    for _ in $(seq 100); do kill -0 "$tuspy_pid" 2>/dev/null || break; sleep 0.1; done
  fi
  if [[ $status -ne 0 ]]; then
    for log in "$work"/*.log; do
      [[ -f "$log" ]] && { echo "--- last lines of $log"; tail -n 40 "$log"; }
    done
  fi
  rm -rf "$work"
}
trap cleanup EXIT

fupload_port="$(free_port)"
callback_port="$(free_port)"
base="http://127.0.0.1:$fupload_port"

fupload_config "$work" "$fupload_port" "http://127.0.0.1:$callback_port/callback"

install_tools tus-js tuspy

start_server() {
  "$binary" -c "$work/fupload.yml" 2>> "$work/fupload.log" &
  server_pid=$!
  wait_for_url "$base/healthz" "$server_pid"
}

stop_server() {
  kill -TERM "$server_pid"
  wait "$server_pid" || true
  server_pid=""
}

start_server
echo "-- tus-js-client (clients/tus-js)"
(cd clients/tus-js && TMPDIR="$work" FUPLOAD_URL="$base" CALLBACK_PORT="$callback_port" node --test test.mjs)

stop_server

# test_tuspy.py starts the server itself on the same config and database, to kill and restart it.
echo "-- tuspy (clients/tuspy)"
TMPDIR="$work" FUPLOAD_BIN="$binary" FUPLOAD_CONFIG="$work/fupload.yml" FUPLOAD_URL="$base" \
  CALLBACK_PORT="$callback_port" FUPLOAD_PIDFILE="$work/tuspy-server.pid" FUPLOAD_LOG="$work/fupload.log" \
  "$TOOLS_DIR/tuspy/bin/python" "$repo/clients/tuspy/test_tuspy.py"
