#!/usr/bin/env bash
# Runs fupload behind nginx with conf/nginx-fupload.conf, the settings docs/OPERATIONS.md's "Behind nginx"
# recommends, and uploads a file through it: the task URLs must point at nginx (proxyAddr), a
# block larger than nginx's default body limit must pass, the file must finish. All on loopback.
#
#   scripts/nginx-smoke.sh [path/to/fupload-server]
#
# Uses the nginx on PATH, or else Debian's nginx package unpacked into a temp dir (downloaded with
# apt-get, not installed, so no system service is started).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=lib/loopback.sh
source scripts/lib/loopback.sh
# shellcheck source=lib/nginx.sh
source scripts/lib/nginx.sh
binary="$(realpath "${1:-${CARGO_TARGET_DIR:-target}/debug/fupload-server}")"
site="$(realpath conf/nginx-fupload.conf)"

work="$(mktemp -d)"
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

nginx="$(nginx_binary)"

fupload_port="$(free_port)"
nginx_port="$(free_port)"

cat > "$work/fupload.yml" <<YAML
server: {host: "127.0.0.1", port: $fupload_port, addr: "http://127.0.0.1", proxyAddr: "http://127.0.0.1:$nginx_port"}
database: {url: "sqlite://$work/fupload.db"}
tmpDir: "$work/tmp"
storeDir: "$work/store"
bServer:
  cp1-secret: {name: "cp1", notifyUrl: "http://127.0.0.1:9/callback"}
YAML
"$binary" -c "$work/fupload.yml" 2> "$work/fupload.log" &
pids+=($!)

nginx_config "$work" "$nginx_port" "$site" "upstream fupload { server 127.0.0.1:$fupload_port; keepalive 16; }"
nginx_start "$nginx" "$work"
pids+=("$NGINX_PID")

status=0
python3 - "$nginx_port" <<'PY' || status=$?
import hashlib, json, sys, time, urllib.error, urllib.request

base = f"http://127.0.0.1:{sys.argv[1]}"
for _ in range(300):
    try:
        urllib.request.urlopen(base + "/healthz", timeout=1)
        break
    except (OSError, urllib.error.HTTPError):
        time.sleep(0.1)

def call(url, body=None, content_type=None):
    request = urllib.request.Request(url, body, {"content-type": content_type} if content_type else {})
    try:
        reply = urllib.request.urlopen(request, timeout=30)
    except urllib.error.HTTPError as e:
        reply = e
    return reply.status, json.load(reply)

data = bytes((i * 2654435761 >> 7) & 0xFF for i in range(3 * 1024 * 1024 + 123))
status, created = call(base + "/api/upload/new/task", json.dumps({
    "token": "cp1-secret", "userId": "1", "fileName": "through-nginx.bin",
    "fileSize": len(data), "fileMd5": hashlib.md5(data).hexdigest()}).encode(), "application/json")
assert status == 200, created
urls = created["data"]
assert urls["uploadUrl"].startswith(base + "/api/upload/files/block?"), urls

def block(start, end):
    part = data[start:end + 1]
    boundary = "nginx-smoke-boundary"
    fields = [("startByte", str(start).encode()), ("endByte", str(end).encode()),
              ("partMd5", hashlib.md5(part).hexdigest().encode())]
    body = b"".join(f"--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n".encode() + value + b"\r\n"
                    for name, value in fields)
    body += (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"blob\"\r\n"
             "Content-Type: application/octet-stream\r\n\r\n").encode() + part + f"\r\n--{boundary}--\r\n".encode()
    return call(urls["uploadUrl"], body, f"multipart/form-data; boundary={boundary}")

# 3 MiB in one block: over nginx's default 1 MiB body limit, so client_max_body_size is in force.
status, reply = block(0, 3 * 1024 * 1024 - 1)
assert status == 200 and reply["retCode"] == "0", reply
status, reply = block(3 * 1024 * 1024, len(data) - 1)
assert status == 200 and reply["data"]["taskStatus"] in ("verify", "finish"), reply
for _ in range(100):
    status, info = call(urls["blocksUrl"])
    if info["data"]["status"] == "finish":
        break
    time.sleep(0.1)
assert info["data"]["status"] == "finish", info
# The operations endpoints answer the allowed (loopback) address through nginx.
assert urllib.request.urlopen(base + "/readyz", timeout=10).status == 200
print("== nginx-smoke: a", len(data), "byte file uploaded through nginx and finished")
PY
if [[ $status -ne 0 ]]; then
  echo "== nginx-smoke failed; logs:"
  tail -n 30 "$work/fupload.log" "$work/nginx-error.log" "$work/nginx-access.log" 2>/dev/null
fi
exit "$status"
