#!/usr/bin/env bash
# Three fupload nodes on one PostgreSQL database and one storage, behind nginx with round robin
# (no sticky sessions), the example business server in front of them: fupload-client uploads
# three files in parallel through nginx, one node is killed with SIGKILL when about half the
# bytes are in and started again a few seconds later. Then every file must be at its place with
# the right md5, each task's callback delivered exactly once, no block claim left and no task
# unfinished. All on loopback in a temp dir; everything started is stopped on exit.
#
#   STORAGE=local scripts/multinode.sh [path/to/fupload-server]
#
# STORAGE: `local` (default), tmpDir and storeDir shared by the nodes as an NFS mount would be;
# `s3`, a bucket on moto's S3 server, each node with a tmpDir of its own.
# A storage kind is three functions below: storage_setup, storage_config, stored_md5.
# FILE_MIB (default 48): the size of each file.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=lib/loopback.sh
source scripts/lib/loopback.sh
# shellcheck source=lib/postgres.sh
source scripts/lib/postgres.sh
# shellcheck source=lib/nginx.sh
source scripts/lib/nginx.sh
# shellcheck source=lib/moto.sh
source scripts/lib/moto.sh
storage="${STORAGE:-local}"
file_mib="${FILE_MIB:-48}"
target="${CARGO_TARGET_DIR:-target}"
binary="$(realpath -m "${1:-$target/debug/fupload-server}")"
[[ -x "$binary" ]] || { echo "multinode: no fupload server at $binary (cargo build first, or pass its path)" >&2; exit 1; }

cargo build --quiet --locked --bin fupload-client --example business_server
client_binary="$(realpath "$target/debug/fupload-client")"
business_binary="$(realpath "$target/debug/examples/business_server")"

work="$(mktemp -d)"
nodes=(1 2 3)
declare -A node_pid node_port
pids=()
cleanup() {
  for pid in "${node_pid[@]}" "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; done
  stop_postgres
  moto_stop
  rm -rf "$work"
}
trap cleanup EXIT
began="$EPOCHREALTIME"

# --- storage kinds -------------------------------------------------------------------------
# storage_setup: prepares what the nodes share. storage_config: the storage part of a node's
# config (YAML lines). stored_md5 PATH: the md5 of the finished file at PATH under the store.
storage_setup() {
  case "$storage" in
    local) mkdir -p "$work/shared/tmp" "$work/shared/store" ;;
    s3)
      mkdir -p "$work/moto"
      moto_start "$work/moto"
      curl -fsS -X PUT "$FUPLOAD_TEST_S3_ENDPOINT/fupload" > /dev/null
      ;;
    *) echo "multinode: unknown STORAGE=$storage (known: local, s3)" >&2; return 1 ;;
  esac
}
storage_config() {
  case "$storage" in
    local) printf 'tmpDir: "%s"\nstoreDir: "%s"\n' "$work/shared/tmp" "$work/shared/store" ;;
    # Node $n's own scratch; the files go to the bucket.
    s3)
      printf 'tmpDir: "%s"\nstoreDir: "%s"\n' "$work/node-$n/tmp" "$work/node-$n/store"
      printf 'storage: {kind: s3, s3: {bucket: fupload, endpoint: "%s", region: us-east-1, prefix: files, pathStyle: true}}\n' \
        "$FUPLOAD_TEST_S3_ENDPOINT"
      ;;
  esac
}
stored_md5() {
  case "$storage" in
    local) md5sum "$work/shared/store/$1" | cut -d' ' -f1 ;;
    # moto serves objects to unsigned requests.
    s3) curl -fsS "$FUPLOAD_TEST_S3_ENDPOINT/fupload/files/$1" | md5sum | cut -d' ' -f1 ;;
  esac
}
# --------------------------------------------------------------------------------------------

database_sql() { postgres_sql "$1" fupload; }

start_node() {
  local n="$1"
  "$binary" -c "$work/node-$n.yml" >> "$work/node-$n.log" 2>&1 &
  node_pid[$n]=$!
}

show_logs() {
  for n in "${nodes[@]}"; do echo "--- node $n log (tail) ---" >&2; tail -n 25 "$work/node-$n.log" >&2; done
  for name in business client-1 client-2 client-3 nginx-error; do
    [[ -f "$work/$name.log" ]] || continue
    echo "--- $name log (tail) ---" >&2
    tail -n 15 "$work/$name.log" >&2
  done
}
fail() {
  echo "multinode ($storage): $*" >&2
  show_logs
  exit 1
}

start_postgres
database_url="postgres://fupload@127.0.0.1:$POSTGRES_PORT/fupload"
echo "== multinode ($storage): PostgreSQL up in $(seconds_since "$began") s"
storage_setup

nginx_port="$(free_port)"
nginx_url="http://127.0.0.1:$nginx_port"
business_port="$(free_port)"
business_url="http://127.0.0.1:$business_port"
# conf/nginx-fupload-nodes.conf's upstream, node N's address in place of its 10.0.0.1N:8080.
upstream="$(grep -v '^ *#' conf/nginx-fupload-nodes.conf)"
for n in "${nodes[@]}"; do
  node_port[$n]="$(free_port)"
  # Every node: the same database, the same storage, the same public URL (nginx's).
  cat > "$work/node-$n.yml" <<YAML
server: {host: "127.0.0.1", port: ${node_port[$n]}, addr: "http://127.0.0.1", proxyAddr: "$nginx_url"}
database: {url: "$database_url"}
$(storage_config)
bServer:
  cp1-secret: {name: "cp1", notifyUrl: "$business_url/api/business/fupload/callback"}
YAML
  upstream="${upstream/10.0.0.1$n:8080/127.0.0.1:${node_port[$n]}}"
done
for n in "${nodes[@]}"; do start_node "$n"; done
for n in "${nodes[@]}"; do wait_for_url "http://127.0.0.1:${node_port[$n]}/readyz" "${node_pid[$n]}" || fail "node $n not ready"; done
echo "== multinode ($storage): three nodes ready at $(seconds_since "$began") s"

[[ "$upstream" != *10.0.0.* ]] || fail "conf/nginx-fupload-nodes.conf has addresses this script does not replace"
nginx_config "$work" "$nginx_port" "$(realpath conf/nginx-fupload.conf)" "$upstream"
nginx_start "$(nginx_binary)" "$work"
pids+=("$NGINX_PID")
"$business_binary" --listen "127.0.0.1:$business_port" --fupload "$nginx_url" --token cp1-secret \
  > "$work/business.log" 2>&1 &
pids+=($!)
wait_for_url "$nginx_url/healthz" "$NGINX_PID" || fail "nginx does not answer"
wait_for_url "$business_url/api/business/callbacks" "${pids[-1]}" || fail "the business server does not answer"

declare -A source_md5 client_pid
for i in 1 2 3; do
  head -c "$((file_mib * 1024 * 1024))" /dev/urandom > "$work/file-$i.bin"
  source_md5[$i]="$(md5sum "$work/file-$i.bin" | cut -d' ' -f1)"
done
total_bytes=$((3 * file_mib * 1024 * 1024))

upload_began="$EPOCHREALTIME"
for i in 1 2 3; do
  "$client_binary" upload "$work/file-$i.bin" --create-url "$business_url/api/business/new/task" \
    --user-id "user$i" --block-size 4MiB --parallel 3 --quiet > "$work/client-$i.log" 2>&1 &
  client_pid[$i]=$!
done

# Half-way: the bytes committed across the three tasks, as the database counts them.
victim=2
received=0
for _ in $(seq 1200); do
  received="$(database_sql "SELECT coalesce(sum(received_bytes), 0) FROM upload_tasks")"
  ((received * 2 >= total_bytes)) && break
  sleep 0.05
done
((received * 2 >= total_bytes)) || fail "half of the bytes did not come in within 60 s ($received of $total_bytes)"
kill -KILL "${node_pid[$victim]}"
wait "${node_pid[$victim]}" 2>/dev/null || true
killed_at="$EPOCHREALTIME"
echo "== multinode ($storage): node $victim killed (SIGKILL) $(seconds_since "$upload_began") s into the upload," \
  "at $((received * 100 / total_bytes)) % of the bytes"
sleep 3
start_node "$victim"
wait_for_url "http://127.0.0.1:${node_port[$victim]}/readyz" "${node_pid[$victim]}" || fail "node $victim not ready after its restart"
echo "== multinode ($storage): node $victim started again, ready $(seconds_since "$killed_at") s after the kill"
restarted_at_line="$(wc -l < "$work/nginx-access.log")"

for i in 1 2 3; do
  wait "${client_pid[$i]}" || fail "fupload-client for file $i failed"
done
echo "== multinode ($storage): three ${file_mib} MiB files uploaded in $(seconds_since "$upload_began") s" \
  "($(seconds_since "$killed_at") s after the kill)"

# What nginx saw: the blocks each node took, those cut by the kill, those the restarted node took.
blocks() { awk -v status="$1" -v node="$2" '$1 == status && $2 ~ node && /POST \/api\/upload\/files\/block/' | wc -l; }
for n in "${nodes[@]}"; do
  echo "== multinode ($storage): node $n took $(blocks 200 ":${node_port[$n]}$" < "$work/nginx-access.log") blocks," \
    "$(tail -n +"$((restarted_at_line + 1))" "$work/nginx-access.log" | blocks 200 ":${node_port[$n]}$") of them after the restart"
done
refused="$(awk '$1 != 200 && /POST \/api\/upload\/files\/block/ { n[$1]++ } END { for (s in n) printf " %s: %d", s, n[s] }' \
  "$work/nginx-access.log")"
echo "== multinode ($storage): block requests not answered 200, by status (502: cut by the kill):${refused:- none}"

for i in 1 2 3; do
  stored="$(stored_md5 "users/user$i/file-$i.bin")" || fail "file $i is not in the store"
  [[ "$stored" == "${source_md5[$i]}" ]] || fail "file $i: stored md5 $stored, sent ${source_md5[$i]}"
done

# Each callback is delivered once the outbox says so; then the business server holds exactly one per task.
for _ in $(seq 300); do
  [[ "$(database_sql "SELECT count(*) FROM callback_outbox WHERE status <> 'delivered'")" == 0 ]] && break
  sleep 0.1
done
pending="$(database_sql "SELECT count(*) FROM callback_outbox WHERE status <> 'delivered'")"
[[ "$pending" == 0 ]] || fail "$pending callbacks not delivered within 30 s"
task_ids="$(database_sql "SELECT task_id FROM upload_tasks ORDER BY task_id" | paste -sd,)"
curl -fsS "$business_url/api/business/callbacks" > "$work/callbacks.json"
python3 - "$work/callbacks.json" "$task_ids" <<'PY' || fail "the callbacks are not one per task"
import collections, json, sys
callbacks = json.load(open(sys.argv[1]))
tasks = sorted(int(t) for t in sys.argv[2].split(","))
per_task = collections.Counter(c["taskId"] for c in callbacks)
assert len(tasks) == 3, f"expected 3 tasks, the database has {tasks}"
assert sorted(per_task) == tasks and set(per_task.values()) == {1}, f"callbacks per task: {dict(per_task)}, tasks {tasks}"
assert all(c["retCode"] == "0" for c in callbacks), callbacks
PY

claims="$(database_sql "SELECT count(*) FROM block_claims")"
[[ "$claims" == 0 ]] || fail "$claims block claims left behind"
unfinished="$(database_sql "SELECT count(*) FROM upload_tasks WHERE status <> 'finish'")"
[[ "$unfinished" == 0 ]] || fail "$unfinished tasks not finished"

echo "== multinode ($storage): passed in $(seconds_since "$began") s: 3 files with the right md5, one callback" \
  "per task, no block claim left, every task finished"
