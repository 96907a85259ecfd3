# moto's S3 server (PyPI `moto[server]`, pinned in scripts/install-tools.sh) on a free loopback
# port, for the S3 checks. Sourced, not run; needs scripts/lib/loopback.sh sourced first
# (free_port, wait_for_url).
#   moto_start DIR   installs moto (once), starts it with its log in DIR/moto.log, and exports
#                    FUPLOAD_TEST_S3_ENDPOINT and test AWS credentials
#   moto_stop        stops it; the caller puts this in its EXIT trap
# shellcheck source=tools.sh
source "$(dirname "${BASH_SOURCE[0]}")/tools.sh"
MOTO_PID=""

moto_start() {
  local dir="$1"
  install_tools moto
  local port
  port="$(free_port)"
  "$TOOLS_DIR/moto/bin/moto_server" -H 127.0.0.1 -p "$port" >"$dir/moto.log" 2>&1 &
  MOTO_PID=$!
  # moto answers GET / with the list of buckets.
  wait_for_url "http://127.0.0.1:$port/" "$MOTO_PID"
  export FUPLOAD_TEST_S3_ENDPOINT="http://127.0.0.1:$port"
  # moto takes any credentials; set, so that fupload signs its requests as it would for AWS.
  export AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing AWS_REGION=us-east-1
}

moto_stop() {
  if [[ -n "$MOTO_PID" ]]; then
    kill "$MOTO_PID" 2>/dev/null || true
    wait "$MOTO_PID" 2>/dev/null || true
    MOTO_PID=""
  fi
}
