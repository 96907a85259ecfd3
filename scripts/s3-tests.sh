#!/usr/bin/env bash
# The S3 storage tests (tests/s3.rs) against moto's S3 server on loopback, started and stopped
# here.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/loopback.sh
source scripts/lib/moto.sh

work="$(mktemp -d)"
trap 'moto_stop; rm -rf "$work"' EXIT
moto_start "$work"
echo "moto at $FUPLOAD_TEST_S3_ENDPOINT"
cargo test --locked --test s3 "$@"
