#!/usr/bin/env bash
# Checks conf/fupload.service with systemd's own tools: `systemd-analyze verify` (syntax, known
# options, an executable ExecStart) and `systemd-analyze security` (the hardening, offline, must
# score an exposure of at most 2.5 of 10). ExecStart is pointed at a built binary for the check.
#
#   scripts/verify-systemd-unit.sh [path/to/fupload-server]
set -euo pipefail
cd "$(dirname "$0")/.."
binary="$(realpath "${1:-${CARGO_TARGET_DIR:-target}/debug/fupload-server}")"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
sed "s|^ExecStart=/usr/local/bin/fupload-server|ExecStart=$binary|" conf/fupload.service > "$work/fupload.service"
grep -q "^ExecStart=$binary " "$work/fupload.service"
systemd-analyze verify "$work/fupload.service"
systemd-analyze security --offline=true --threshold=25 --no-pager "$work/fupload.service" | tail -n 1
