#!/usr/bin/env bash
# Replays the Dockerfile without Docker (no Docker engine runs on our build machines), reading
# its instructions from the Dockerfile itself so the two cannot drift apart:
# - build stage: its COPYs lay out the build context under a temp root, and its `cargo build`
#   command runs there (so a file the build needs but the Dockerfile forgets to copy fails here);
#   cargo-chef's prepare/cook steps only pre-build the dependencies for layer caching, and are
#   left out;
# - runtime stage: its RUN (the same useradd, mkdir and chown), COPY, ENV, WORKDIR, USER, VOLUME,
#   HEALTHCHECK and ENTRYPOINT, with the image's paths under the temp root; a RUN that installs
#   Debian packages is not run on this host: the packages it names must be installed here.
# Then the server runs as the image's user with the image's environment only, and the script
# checks that the HEALTHCHECK passes, /readyz answers 200, the data lands in the volume owned by
# that user, the logs are JSON, and SIGTERM stops the server cleanly. It removes all it made.
#
#   scripts/docker-smoke.sh                 # the build command as the Dockerfile has it (--release)
#   PROFILE=debug scripts/docker-smoke.sh   # the same without --release (CI: a debug build is quicker)
#
# Needs root (it creates the image's user, as the image's RUN does) and python3.
set -euo pipefail
cd "$(dirname "$0")/.."
[[ $EUID -eq 0 ]] || { echo "docker-smoke: run as root: it creates the image's user" >&2; exit 1; }

profile="${PROFILE:-release}"
root="$(mktemp -d)"
chmod 755 "$root"
created_user=""
server_pid=""
cleanup() {
  if [[ -n "$server_pid" ]]; then kill -KILL "$server_pid" 2>/dev/null || true; wait "$server_pid" 2>/dev/null || true; fi
  if [[ -n "$created_user" ]]; then userdel "$created_user" 2>/dev/null || true; groupdel "$created_user" 2>/dev/null || true; fi
  rm -rf "$root"
}
trap cleanup EXIT

# The Dockerfile as shell variables: the build command and the runtime stage's instructions.
eval "$(python3 - Dockerfile <<'PY'
import json, re, shlex, sys

lines, joined = open(sys.argv[1]).read().splitlines(), []
for line in lines:
    if joined and joined[-1].endswith("\\"):
        joined[-1] = joined[-1][:-1] + " " + line.strip()
    elif line.strip() and not line.lstrip().startswith("#"):
        joined.append(line.strip())
stages, current = {}, None
for line in joined:
    word, _, rest = line.partition(" ")
    if word == "FROM":
        current = rest.split(" AS ")[-1].strip()
        stages[current] = []
    else:
        stages[current].append((word, rest.strip()))
runtime = stages[list(stages)[-1]]
build_stage = stages["build"]
build = [rest for word, rest in build_stage if word == "RUN" and rest.startswith("cargo build")][-1]
build_workdir = [rest for word, rest in stages["chef"] if word == "WORKDIR"][-1]
build_copies = [rest.split() for word, rest in build_stage if word == "COPY" and not rest.startswith("--from")]

def emit(name, value):
    if isinstance(value, list):
        print(f"{name}=(" + " ".join(shlex.quote(v) for v in value) + ")")
    else:
        print(f"{name}={shlex.quote(value)}")

runs, copies, envs = [], [], []
for word, rest in runtime:
    if word == "RUN":
        runs.append(rest)
    elif word == "COPY":
        args = rest.split()
        copies.append("|".join([a for a in args if not a.startswith("--")] + [str(any(a.startswith("--from") for a in args))]))
    elif word == "ENV":
        envs += shlex.split(rest)
    elif word == "WORKDIR":
        emit("workdir", rest)
    elif word == "USER":
        emit("user_spec", rest)
    elif word == "VOLUME":
        emit("volume", json.loads(rest)[0])
    elif word == "EXPOSE":
        emit("exposed", rest.split("/")[0])
    elif word == "HEALTHCHECK":
        emit("healthcheck", json.loads(rest.split(" CMD ", 1)[1]))
    elif word == "ENTRYPOINT":
        emit("entrypoint", json.loads(rest))
emit("build_command", build)
emit("build_workdir", build_workdir)
emit("build_copies", ["|".join(args) for args in build_copies])
emit("runs", runs)
emit("copies", copies)
emit("envs", envs)
PY
)"

# Build stage: the context its COPYs take, then its cargo build. The dependencies compiled for
# this checkout are reused through the same target directory.
target_dir="$(realpath -m "${CARGO_TARGET_DIR:-target}")"
build_root="$root$build_workdir"
mkdir -p "$build_root"
for copy in "${build_copies[@]}"; do
  IFS='|' read -r -a args <<< "$copy"
  destination="${args[-1]}"
  [[ "$destination" == /* ]] || destination="$build_workdir/${destination#./}"
  for source in "${args[@]:0:${#args[@]}-1}"; do
    echo "== build: COPY $source -> $destination"
    if [[ "$destination" == */ ]]; then
      mkdir -p "$root$destination" && cp -r "$source" "$root$destination"
    else
      mkdir -p "$(dirname "$root$destination")" && cp -r "$source" "$root$destination"
    fi
  done
done
command="$build_command"
[[ "$profile" == release ]] || command="${build_command/ --release/}"
echo "== build: RUN $command (in $build_workdir)"
(cd "$build_root" && CARGO_TARGET_DIR="$target_dir" eval "$command")
binary="$target_dir/$profile/fupload-server"

# The image's paths, under the temp root: absolute paths of the WORKDIR tree are rewritten.
in_root() { echo "$root$1"; }
uid="${user_spec%%:*}"
if getent passwd "$uid" >/dev/null; then
  echo "docker-smoke: uid $uid already exists here; not touching it" >&2
  exit 1
fi
for run in "${runs[@]}"; do
  if [[ "$run" == apt-get* ]]; then
    # Not on this host: check that what the image installs is here too.
    packages="$(sed -n 's/.*apt-get install[^&]*-y \(--no-install-recommends \)\{0,1\}\([^&]*\).*/\2/p' <<< "$run")"
    for package in $packages; do
      echo "== RUN apt-get install $package: installed here? (not run)"
      dpkg -s "${package%%=*}" >/dev/null
    done
    continue
  fi
  echo "== RUN $run"
  sh -c "${run//$workdir/$root$workdir}"
done
created_user="$(getent passwd "$uid" | cut -d: -f1)"
[[ -n "$created_user" ]] || { echo "docker-smoke: the RUN steps created no user with uid $uid" >&2; exit 1; }
mkdir -p "$(in_root "$workdir")"
for copy in "${copies[@]}"; do
  IFS='|' read -r source target from_stage <<< "$copy"
  [[ "$target" == /* ]] || target="$workdir/${target#./}"
  echo "== COPY $source -> $target"
  mkdir -p "$(dirname "$(in_root "$target")")"
  if [[ "$from_stage" == True ]]; then
    install -m 0755 "$binary" "$(in_root "$target")"   # the build stage's binary
  else
    cp -r "$source" "$(in_root "$target")"
  fi
done
# Docker gives a new volume the image's content and ownership at that path.
mkdir -p "$(in_root "$volume")"

# The port: the one the image exposes, unless it is taken here (then a free one, set the way a
# `docker run -e FUPLOAD__SERVER__PORT=…` would).
port="$exposed"
if python3 -c "import socket,sys; socket.create_connection(('127.0.0.1', int(sys.argv[1])), 1)" "$port" 2>/dev/null; then
  port="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
  envs+=("FUPLOAD__SERVER__PORT=$port")
fi
# The image's environment only (plus PATH to the image's bin directory), as that user.
as_image_user=(env -i "PATH=$(in_root /usr/local/bin):/usr/bin:/bin" "HOME=$(in_root "$workdir")" "${envs[@]}"
  setpriv --reuid="$uid" --regid="${user_spec##*:}" --clear-groups --)

echo "== ENTRYPOINT ${entrypoint[*]} (as uid $uid, in $workdir, port $port)"
cd "$(in_root "$workdir")"
"${as_image_user[@]}" "${entrypoint[@]}" 2> "$root/server.log" &
server_pid=$!

echo "== HEALTHCHECK ${healthcheck[*]}"
healthy=""
for _ in $(seq 1 100); do
  if "${as_image_user[@]}" "${healthcheck[@]}" 2>/dev/null; then healthy=yes; break; fi
  kill -0 "$server_pid" 2>/dev/null || break
  sleep 0.2
done
[[ -n "$healthy" ]] || { echo "docker-smoke: the HEALTHCHECK never passed; server log:"; cat "$root/server.log"; exit 1; }

python3 - "$port" <<'PY'
import json, sys, urllib.request
reply = urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/readyz", timeout=10)
body = json.load(reply)
assert reply.status == 200 and body["status"] == "ready", body
print("== /readyz:", json.dumps(body))
PY
[[ "$(awk '/^Uid:/ {print $2}' "/proc/$server_pid/status")" == "$uid" ]] || { echo "docker-smoke: not running as uid $uid" >&2; exit 1; }
database="$(in_root "$volume")/fupload.db"
[[ "$(stat -c %u "$database")" == "$uid" ]] || { echo "docker-smoke: $database is not the image user's" >&2; exit 1; }
# The image asks for JSON logs: every line must be one.
python3 -c 'import json, sys; [json.loads(line) for line in open(sys.argv[1]) if line.strip()]' "$root/server.log"

echo "== docker stop (SIGTERM)"
kill -TERM "$server_pid"
status=0
wait "$server_pid" || status=$?
server_pid=""
[[ $status -eq 0 ]] || { echo "docker-smoke: the server exited with $status; log:"; cat "$root/server.log"; exit 1; }
[[ ! -e "$database-wal" ]] || { echo "docker-smoke: the WAL was left behind" >&2; exit 1; }
echo "== docker-smoke: ok"
