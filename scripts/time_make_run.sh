#!/usr/bin/env bash
# How long a new user waits: a clean clone of this repository, `make run`, and the README's curl
# sent every 0.2 s until it answers 202. Prints the seconds from `make run` to that first 202, and
# any warning make run printed (pip's own notes about its package index left out).
#
#   bash scripts/time_make_run.sh [PORT]     (default 8765; needs python3.11, make, curl, bc)
set -euo pipefail
port="${1:-8765}"
repo="$(cd "$(dirname "$0")/.." && pwd)"
work="$(mktemp -d)"
git clone -q "$repo" "$work/clone"
cd "$work/clone"
log="$work/make-run.log"
body='{"signal": "visited-documentation-page", "identity": {"type": "account", "id": "001ABC000000123"}, "data": {"page": "/docs/start"}}'
start=$(date +%s.%N)
setsid make run PORT="$port" >"$log" 2>&1 &
group=$!
trap 'kill -TERM -- -"$group" 2>/dev/null || true; sleep 2; kill -KILL -- -"$group" 2>/dev/null || true; rm -rf "$work"' EXIT
for _ in $(seq 1 3000); do  # at most 10 minutes
  code=$(curl -s -o /dev/null -w '%{http_code}' -X POST "http://127.0.0.1:$port/v1/events" \
    -H "Authorization: Bearer sk_demo_local_only_not_for_production_000000" \
    -H "Content-Type: application/json" -d "$body" || true)
  if [ "$code" = "202" ]; then
    echo "first 202 after $(echo "$(date +%s.%N) - $start" | bc) s"
    grep -iv "Location 'file://" "$log" | grep -i "warn" || echo "no warning printed"
    exit 0
  fi
  sleep 0.2
done
echo "no 202 within 10 minutes; make run printed:" >&2
tail -30 "$log" >&2
exit 1
