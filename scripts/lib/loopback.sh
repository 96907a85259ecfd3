# What the scripts that run fupload on loopback for a check share. Sourced, not run.

# A free loopback port, picked by the kernel.
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# Writes DIR/fupload.yml: fupload on 127.0.0.1:PORT, SQLite, tmpDir and storeDir all in DIR, the
# token cp1-secret calling back NOTIFY_URL; EXTRA (optional) is one more line of YAML.
#   fupload_config DIR PORT NOTIFY_URL [EXTRA]
fupload_config() {
  cat > "$1/fupload.yml" <<YAML
server: {host: "127.0.0.1", port: $2, addr: "http://127.0.0.1"}
database: {url: "sqlite://$1/fupload.db"}
tmpDir: "$1/tmp"
storeDir: "$1/store"
bServer:
  cp1-secret: {name: "cp1", notifyUrl: "$3"}
${4:-}
YAML
}

# Waits up to 30 s for URL to answer 2xx; gives up early if PID (optional) has exited.
#   wait_for_url URL [PID]
wait_for_url() {
  for _ in $(seq 300); do
    curl -fsS -o /dev/null "$1" 2>/dev/null && return 0
    if [[ -n "${2:-}" ]] && ! kill -0 "$2" 2>/dev/null; then
      echo "$1: the process that should answer it exited" >&2
      return 1
    fi
    sleep 0.1
  done
  echo "$1 did not answer within 30 s" >&2
  return 1
}

# Seconds, to a tenth, since START, a value of $EPOCHREALTIME.
#   seconds_since START
seconds_since() { awk -v start="$1" -v now="$EPOCHREALTIME" 'BEGIN { printf "%.1f", now - start }'; }
