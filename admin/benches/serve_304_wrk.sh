#!/usr/bin/env bash
# 304 throughput of GET /v1/export.csv measured with wrk (Debian package wrk) against the
# release binary, next to a baseline from the same run: the same request without
# If-None-Match (a full 200 with the example export).
#
#   admin/benches/serve_304_wrk.sh [SECONDS] [CONNECTIONS]
set -euo pipefail
cd "$(dirname "$0")/../.."
secs=${1:-5}
conns=${2:-32}
command -v wrk >/dev/null || { echo "needs wrk (apt-get install wrk)" >&2; exit 1; }
command -v curl >/dev/null || { echo "needs curl" >&2; exit 1; }
cargo build --release -q -p portcullis-admin
bin=${CARGO_TARGET_DIR:-target}/release/portcullis-admin
port=$((20000 + RANDOM % 20000))
RUST_LOG=warn "$bin" serve --catalog admin/example-catalog --listen "127.0.0.1:$port" &
pid=$!
trap 'kill $pid 2>/dev/null; wait $pid 2>/dev/null || true' EXIT
url="http://127.0.0.1:$port/v1/export.csv"
for _ in $(seq 100); do curl -fs -o /dev/null "$url" && break; sleep 0.05; done
etag=$(curl -fsI "$url" | tr -d '\r' | awk -F': ' 'tolower($1)=="etag"{print $2}')
rate() { wrk -t1 -c"$conns" -d"${secs}s" "$@" "$url" | awk '/Requests\/sec/{print $2}'; }
base=$(rate)
cond=$(rate -H "If-None-Match: $etag")
echo "| request (wrk -t1 -c$conns -d${secs}s, server on the same 2 cores) | req/s | ratio to baseline |"
echo "|---|---|---|"
echo "| baseline: GET /v1/export.csv → 200 (full body) | $base | 1.00 |"
echo "| GET /v1/export.csv + If-None-Match → 304 | $cond | $(awk -v a="$cond" -v b="$base" 'BEGIN{printf "%.2f", a/b}') |"
