#!/usr/bin/env bash
# The S3 storage tests (tests/s3.rs) against moto's S3 server on loopback, started and stopped
# here. MOTO_DIR (optional) keeps moto's venv between runs; a temp directory otherwise.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/loopback.sh
source scripts/lib/moto.sh

work="$(mktemp -d)"
trap 'moto_stop; rm -rf "$work"' EXIT
moto_dir="${MOTO_DIR:-$work}"
mkdir -p "$moto_dir"
moto_start "$moto_dir"
echo "moto $MOTO_VERSION at $FUPLOAD_TEST_S3_ENDPOINT"
cargo test --locked --test s3 "$@"
