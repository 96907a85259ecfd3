#!/usr/bin/env bash
# Uppy (Dashboard + tus) in headless Chromium against fupload: starts fupload on temp dirs and the
# example business server (which serves the Uppy page and its grants), then runs
# clients/uppy/test.mjs: a 50 MiB upload, the page reloaded half-way, resumed, md5 and callback
# checked. All on loopback; everything started is stopped on exit.
#
#   scripts/uppy.sh [path/to/fupload-server]
#
# UPPY_SCREENSHOT=docs/img/uppy.png scripts/uppy.sh refreshes the committed screenshot of the page
# mid-upload; otherwise it goes to the temp dir.
# Installs Debian's chromium and clients/uppy's npm packages when missing (scripts/install-tools.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=lib/loopback.sh
source scripts/lib/loopback.sh
# shellcheck source=lib/tools.sh
source scripts/lib/tools.sh
target="${CARGO_TARGET_DIR:-target}"
binary="$(realpath -m "${1:-$target/debug/fupload-server}")"
[[ -x "$binary" ]] || { echo "uppy: no fupload server at $binary (cargo build first, or pass its path)" >&2; exit 1; }

cargo build --quiet --example business_server
business_binary="$(realpath "$target/debug/examples/business_server")"

install_tools chromium uppy
(cd clients/uppy && npm run --silent build)

work="$(mktemp -d)"
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

fupload_port="$(free_port)"
business_port="$(free_port)"
fupload_url="http://127.0.0.1:$fupload_port"
business_url="http://127.0.0.1:$business_port"

# The page comes from the business server's origin and uploads to fupload's: cors lets it.
fupload_config "$work" "$fupload_port" "$business_url/api/business/fupload/callback" \
  "cors: {allowedOrigins: [\"$business_url\"]}"
"$binary" -c "$work/fupload.yml" 2> "$work/fupload.log" &
pids+=($!)
"$business_binary" --listen "127.0.0.1:$business_port" --fupload "$fupload_url" --token cp1-secret \
  --page-dir "$(realpath clients/uppy/dist)" > "$work/business.log" 2>&1 &
pids+=($!)

wait_for_url "$fupload_url/healthz" "${pids[0]}"
wait_for_url "$business_url/" "${pids[1]}"

screenshot="$(realpath -m "${UPPY_SCREENSHOT:-$work/uppy.png}")"
status=0
(cd clients/uppy && FUPLOAD_URL="$fupload_url" BUSINESS_URL="$business_url" SCREENSHOT="$screenshot" node test.mjs) \
  || status=$?
if [[ $status -ne 0 ]]; then
  echo "--- fupload log (tail) ---" >&2; tail -n 40 "$work/fupload.log" >&2
  echo "--- business server log (tail) ---" >&2; tail -n 20 "$work/business.log" >&2
fi
exit "$status"
