# A throw-away PostgreSQL for the checks: Debian's server, initdb in a temp dir, listening on a
# free loopback port only, trust auth, a role `fupload`. Sourced, not run; needs loopback.sh.
#
#   start_postgres   (server options beside these in POSTGRES_OPTIONS) sets POSTGRES_PORT, POSTGRES_BIN (the server's bin dir, psql among them) and
#                    exports FUPLOAD_TEST_POSTGRES_URL=postgres://fupload@127.0.0.1:PORT/fupload
#   postgres_sql SQL [DB]  runs SQL as the superuser in DB (default `postgres`); prints rows unaligned
#   stop_postgres    stops it and removes its temp dir (safe to call when it was never started)
#
# Installs the `postgresql` package (scripts/install-tools.sh) when no server is there; Debian
# keeps the binaries off PATH, in /usr/lib/postgresql/<version>/bin.

# shellcheck source=tools.sh
source "$(dirname "${BASH_SOURCE[0]}")/tools.sh"

POSTGRES_DIR=""
POSTGRES_PORT=""
POSTGRES_BIN=""
# What runs the server's programs: initdb refuses to run as root, so as root they run as the
# package's `postgres` system user.
postgres_as=()

postgres_bin_dir() {
  local dirs=(/usr/lib/postgresql/*/bin/initdb)
  [[ -x "${dirs[-1]}" ]] || return 0
  # The newest version when there are several.
  dirname "$(printf '%s\n' "${dirs[@]}" | sort -V | tail -n 1)"
}

start_postgres() {
  POSTGRES_BIN="$(postgres_bin_dir)"
  if [[ -z "$POSTGRES_BIN" ]]; then
    install_tools postgresql
    POSTGRES_BIN="$(postgres_bin_dir)"
  fi
  [[ -n "$POSTGRES_BIN" ]] || { echo "postgres: no initdb after installing postgresql" >&2; return 1; }

  POSTGRES_DIR="$(mktemp -d)"
  if [[ "$(id -u)" -eq 0 ]]; then
    getent passwd postgres >/dev/null || useradd --system --home-dir /nonexistent --shell /usr/sbin/nologin postgres
    chown postgres: "$POSTGRES_DIR"
    postgres_as=(runuser -u postgres --)
  fi
  POSTGRES_PORT="$(free_port)"
  # From inside the temp dir: the server's user may not be allowed to read the caller's directory.
  (
    cd "$POSTGRES_DIR" || exit
    "${postgres_as[@]}" "$POSTGRES_BIN/initdb" --pgdata="$POSTGRES_DIR/data" --username=postgres \
      --auth=trust --encoding=UTF8 --no-locale --no-instructions >"$POSTGRES_DIR/initdb.log" 2>&1 ||
      { cat "$POSTGRES_DIR/initdb.log" >&2; exit 1; }
    "${postgres_as[@]}" "$POSTGRES_BIN/pg_ctl" start --pgdata="$POSTGRES_DIR/data" --wait --silent \
      --log="$POSTGRES_DIR/server.log" \
      -o "-c listen_addresses=127.0.0.1 -p $POSTGRES_PORT -c unix_socket_directories=$POSTGRES_DIR -c max_connections=200 ${POSTGRES_OPTIONS:-}" ||
      { cat "$POSTGRES_DIR/server.log" >&2; exit 1; }
  )
  # The role owns a database of its own, where each test makes a schema.
  postgres_sql "CREATE ROLE fupload LOGIN CREATEDB" >/dev/null
  postgres_sql "CREATE DATABASE fupload OWNER fupload" >/dev/null
  export FUPLOAD_TEST_POSTGRES_URL="postgres://fupload@127.0.0.1:$POSTGRES_PORT/fupload"
}

postgres_sql() {
  "$POSTGRES_BIN/psql" --no-psqlrc --quiet --tuples-only --no-align --set=ON_ERROR_STOP=1 \
    --host=127.0.0.1 --port="$POSTGRES_PORT" --username=postgres --dbname="${2:-postgres}" --command="$1"
}

stop_postgres() {
  [[ -n "$POSTGRES_DIR" ]] || return 0
  if [[ -f "$POSTGRES_DIR/data/postmaster.pid" ]]; then
    (cd "$POSTGRES_DIR" && "${postgres_as[@]}" "$POSTGRES_BIN/pg_ctl" stop --pgdata="$POSTGRES_DIR/data" \
      --mode=fast --wait --silent) || true
  fi
  rm -rf "$POSTGRES_DIR"
  POSTGRES_DIR=""
}
