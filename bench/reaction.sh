#!/usr/bin/env bash
# Reaction: in `cutover demo`'s failing scenario (green fails 30 % of real
# requests while its health endpoint says OK), the time from green's first
# failing request to 0 % green, and how many failed requests green served
# meanwhile. Goal: under one analysis interval plus one admin call.
#
#   bench/reaction.sh          # builds cutover (release), runs the demo RUNS times
#
# Each run's figures come from the JSON the demo writes next to its report
# (reports[1]: reaction_ms, failed_during_reaction, analysis_interval_ms).
# The admin call is measured apart: `cutover proxy` on loopback, then
# ADMIN_CALLS timed `PUT /split` with curl (median and max), the same
# request the local router makes to move traffic.
#
# Knobs (environment): RUNS=3 ADMIN_CALLS=50 PORT_BASE=18280 NO_BUILD=1
#   OUT=/tmp/cutover-reaction.XXXX (raw output). Everything started here is
#   stopped on exit.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
RUNS=${RUNS:-3}
ADMIN_CALLS=${ADMIN_CALLS:-50}
PORT_BASE=${PORT_BASE:-18280}
OUT=${OUT:-$(mktemp -d /tmp/cutover-reaction.XXXXXX)}
CUTOVER=$ROOT/target/release/cutover

die() { echo "bench/reaction.sh: $*" >&2; exit 1; }
for tool in jq curl awk; do
    command -v "$tool" >/dev/null || die "needs $tool (apt-get install jq curl)"
done
mkdir -p "$OUT"

PIDS=()
cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do kill -INT "$pid" 2>/dev/null || true; done
    sleep 0.3
    for pid in "${PIDS[@]}"; do kill -KILL "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; done
}
trap cleanup EXIT
trap 'exit 130' INT TERM

if [ -z "${NO_BUILD:-}" ]; then
    echo "building cutover (release)..."
    (cd "$ROOT" && cargo build --release -q -p cutover)
fi
[ -x "$CUTOVER" ] || die "$CUTOVER is missing"

# 1. The admin call: PUT /split on a running proxy (upstreams need not exist).
admin=127.0.0.1:$((PORT_BASE + 1))
cat >"$OUT/proxy.toml" <<EOF
listen = "127.0.0.1:$PORT_BASE"
admin_listen = "$admin"
[blue]
upstreams = ["http://127.0.0.1:$((PORT_BASE + 2))"]
[green]
upstreams = ["http://127.0.0.1:$((PORT_BASE + 3))"]
EOF
"$CUTOVER" proxy "$OUT/proxy.toml" >"$OUT/proxy.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 100); do curl -fsS -o /dev/null "http://$admin/split" 2>/dev/null && break; sleep 0.1; done
: >"$OUT/admin_ms.txt"
for i in $(seq "$ADMIN_CALLS"); do
    # A fresh connection each time, as a worst case for the router's call.
    curl -fsS -o /dev/null -w '%{time_total}\n' -X PUT -H 'content-type: application/json' \
        -d "{\"split_percent\": $((i % 2 * 10))}" "http://$admin/split" |
        awk '{ printf "%.3f\n", $1 * 1000 }' >>"$OUT/admin_ms.txt"
done
read -r admin_median admin_max <<<"$(sort -n "$OUT/admin_ms.txt" | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)], a[NR] }')"
kill -INT "${PIDS[0]}" 2>/dev/null || true
wait "${PIDS[0]}" 2>/dev/null || true
PIDS=()
echo "admin PUT /split: median ${admin_median} ms, max ${admin_max} ms over $ADMIN_CALLS calls"

# 2. The demo, RUNS times.
printf '%-4s %12s %12s %14s %16s %10s\n' run reaction_ms interval_ms reaction/int failed_meanwhile outcome >"$OUT/table.txt"
for run in $(seq "$RUNS"); do
    report=$OUT/demo-$run.html
    echo "demo run $run of $RUNS..."
    set +e
    "$CUTOVER" demo --report "$report" >"$OUT/demo-$run.log" 2>&1
    code=$?
    set -e
    json=${report%.html}.json
    [ -r "$json" ] || die "run $run wrote no $json (exit $code); see $OUT/demo-$run.log"
    jq -r '.[1] | [(.reaction_ms // "-"), .analysis_interval_ms, (.failed_during_reaction // "-"), .outcome] | @tsv' "$json" |
        while IFS=$'\t' read -r reaction interval failed outcome; do
            ratio=-
            [ "$reaction" != - ] && ratio=$(awk -v r="$reaction" -v i="$interval" 'BEGIN { printf "%.2f", r / i }')
            printf '%-4s %12s %12s %14s %16s %10s\n' "$run" "$reaction" "$interval" "$ratio" "$failed" "$outcome"
        done >>"$OUT/table.txt"
done

{
    echo "# cutover demo reaction, $(date -u +%Y-%m-%dT%H:%MZ), $(nproc) CPUs; cutover $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?')$(git -C "$ROOT" diff --quiet 2>/dev/null || echo '+changes')"
    cat "$OUT/table.txt"
    awk -v adm="$admin_median" -v admax="$admin_max" 'NR > 1 && $2 != "-" {
            n++; if ($2 > max) max = $2; i = $3
        }
        END {
            if (!n) { print "no run rolled back"; exit }
            printf "goal: reaction < interval + admin call = %d + %.1f ms; worst run %d ms: %s\n", i, adm, max, (max < i + adm ? "met" : "NOT met")
            printf "admin PUT /split (fresh connection each): median %.1f ms, max %.1f ms\n", adm, admax
        }' "$OUT/table.txt"
} >"$OUT/summary.txt"
echo
cat "$OUT/summary.txt"
echo "raw output: $OUT"
