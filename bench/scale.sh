#!/usr/bin/env bash
# Scale: one `cutover serve` drives ROLLOUTS concurrent rollouts on SQLite
# against a real router: one `cutover proxy` fronting ROLLOUTS services
# (one `[[service]]` each), every plan's router `local` pointing at its
# service's admin path (/services/svc-NNNNN). Reports the CPU serve used
# (cores, averaged over the run), its peak RSS, store writes per second
# (serve's own cutover_adapter_call_seconds_count{adapter="store:sqlite"}),
# and how far each rollout's wall time (started_at .. ended_at) strays from
# its plan (the holds and the bake added up).
#
#   bench/scale.sh                       # release binary, 10,000 rollouts, ~8 min
#   ROLLOUTS=500 bench/scale.sh          # a quick look
#
# Layout (all on 127.0.0.1): the proxy (TOKIO_WORKER_THREADS=1, data plane
# `workers = 1`) with no upstream apps (nothing sends traffic); ROLLOUTS
# plans in one directory: steps STEPS % with HOLD each, BAKE, an `http`
# check of the service's /health on the proxy every INTERVAL, store sqlite
# (STORE_FILE); `cutover serve --plans DIR --max-rollouts ROLLOUTS`. The
# rollouts are created through its API (POST /v1/rollouts with an
# idempotency key, 16 at a time); the run ends when serve drives none.
#
# Knobs (environment): ROLLOUTS=10000 STEPS="10 50 100" HOLD=60s BAKE=60s
#   INTERVAL=30s TIMEOUT=1800 PORT_BASE=19700 OUT=/tmp/cutover-scale.XXXX
#   CUTOVER=path/to/binary (default target/release/cutover)
#   SERVE_FLAGS="--tick 500ms" (more flags for `cutover serve`)
# Raw output goes to $OUT; the summary to $OUT/summary.txt.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
ROLLOUTS=${ROLLOUTS:-10000}
STEPS=${STEPS:-"10 50 100"}
HOLD=${HOLD:-60s}
BAKE=${BAKE:-60s}
INTERVAL=${INTERVAL:-30s}
TIMEOUT=${TIMEOUT:-1800}
PORT_BASE=${PORT_BASE:-19700}
OUT=${OUT:-$(mktemp -d /tmp/cutover-scale.XXXXXX)}
CUTOVER=${CUTOVER:-$ROOT/target/release/cutover}
HELPER=$ROOT/bench/scale-helper.py
DATA_PORT=$PORT_BASE
ADMIN_PORT=$((PORT_BASE + 1))
API_PORT=$((PORT_BASE + 2))
BLUE_PORT=$((PORT_BASE + 3))   # nothing listens: no traffic is sent
GREEN_PORT=$((PORT_BASE + 4))

die() { echo "bench/scale.sh: $*" >&2; exit 1; }
for tool in python3 curl; do command -v "$tool" >/dev/null || die "needs $tool"; done
[ -x "$CUTOVER" ] || die "$CUTOVER is missing (cargo build --release -p cutover, or set CUTOVER)"
[ "$ROLLOUTS" -ge 1 ] && [ "$ROLLOUTS" -le 99999 ] || die "ROLLOUTS must be 1 to 99999"
secs() {
    awk -v d="$1" 'BEGIN {
        if (d ~ /ms$/) { print substr(d, 1, length(d) - 2) / 1000; exit }
        if (d ~ /s$/) { print substr(d, 1, length(d) - 1) + 0; exit }
        if (d ~ /m$/) { print substr(d, 1, length(d) - 1) * 60; exit }
        print "bad"; exit 1 }'
}
hold_s=$(secs "$HOLD") || die "HOLD=$HOLD: expected e.g. 60s"
bake_s=$(secs "$BAKE") || die "BAKE=$BAKE: expected e.g. 60s"
n_steps=$(wc -w <<<"$STEPS")
PLANNED_MS=$(awk -v h="$hold_s" -v b="$bake_s" -v n="$n_steps" 'BEGIN { print (h * n + b) * 1000 }')

ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
mkdir -p "$OUT/plans"
STORE_FILE=$OUT/cutover.db
# shellcheck source=bench/lib.sh
. "$ROOT/bench/lib.sh"
stop_all_on_exit bench/scale.sh "$OUT"

# 1. The proxy and the plans.
steps=""
for s in $STEPS; do steps="$steps{ split = $s, hold = \"$HOLD\" }, "; done
{
    echo "listen = \"127.0.0.1:$DATA_PORT\""
    echo "admin_listen = \"127.0.0.1:$ADMIN_PORT\""
    echo "workers = 1"
    for i in $(seq "$ROLLOUTS"); do
        printf '[[service]]\nname = "svc-%05d"\nhosts = ["svc-%05d.test"]\n' "$i" "$i"
        printf '[service.blue]\nupstreams = ["http://127.0.0.1:%s"]\n' "$BLUE_PORT"
        printf '[service.green]\nupstreams = ["http://127.0.0.1:%s"]\n' "$GREEN_PORT"
    done
} >"$OUT/proxy.toml"
for i in $(seq "$ROLLOUTS"); do
    svc=$(printf 'svc-%05d' "$i")
    cat >"$OUT/plans/$svc.toml" <<PLAN
[service]
name = "$svc"

[router]
kind = "local"
admin_url = "http://127.0.0.1:$ADMIN_PORT/services/$svc"

[strategy]
steps = [${steps%, }]
bake = "$BAKE"

[analysis]
interval = "$INTERVAL"

[[analysis.checks]]
kind = "http"
url = "http://127.0.0.1:$ADMIN_PORT/services/$svc/health"

[store]
kind = "sqlite"
path = "$STORE_FILE"
PLAN
done
TOKIO_WORKER_THREADS=1 "$CUTOVER" proxy "$OUT/proxy.toml" >"$OUT/proxy.log" 2>&1 &
PIDS+=($!)
PROXY_PID=$!
wait_tcp "$ADMIN_PORT" "the proxy"
"$CUTOVER" plan "$OUT/plans/svc-00001.toml" >"$OUT/timeline.txt"
log "proxy with $ROLLOUTS services (pid $PROXY_PID); plans in $OUT/plans; store $STORE_FILE"

# 2. serve.
# shellcheck disable=SC2086 # SERVE_FLAGS is a list of flags
"$CUTOVER" serve --plans "$OUT/plans" --listen "127.0.0.1:$API_PORT" --max-rollouts "$ROLLOUTS" ${SERVE_FLAGS:-} \
    >"$OUT/serve.out" 2>"$OUT/serve.err" &
PIDS+=($!)
SERVE_PID=$!
API=http://127.0.0.1:$API_PORT
for _ in $(seq 600); do
    n=$(curl -fsS "$API/v1/services" 2>/dev/null | python3 -c 'import json,sys; print(len(json.load(sys.stdin)["services"]))' 2>/dev/null || echo 0)
    [ "$n" = "$ROLLOUTS" ] && break
    kill -0 "$SERVE_PID" 2>/dev/null || die "serve exited: $(tail -3 "$OUT/serve.err")"
    sleep 0.5
done
[ "$n" = "$ROLLOUTS" ] || die "serve has $n plans, not $ROLLOUTS"
python3 "$HELPER" sample "$SERVE_PID" "$OUT/serve-samples.json" &
python3 "$HELPER" sample "$PROXY_PID" "$OUT/proxy-samples.json" &
log "serve up (pid $SERVE_PID) with $ROLLOUTS plans"

# 3. The rollouts.
curl -fsS "$API/metrics" >"$OUT/metrics-start.txt"
date +%s.%N >"$OUT/t-start"
python3 "$HELPER" create "$API" "$ROLLOUTS" "scale-$(date +%s)" "$OUT" | tee "$OUT/create.txt"
log "created; waiting for every rollout to end (timeout ${TIMEOUT}s)"
python3 "$HELPER" wait "$API" "$TIMEOUT"
date +%s.%N >"$OUT/t-end"
curl -fsS "$API/metrics" >"$OUT/metrics-end.txt"
log "all ended; reading the records"
python3 "$HELPER" records "$API" "$OUT"
python3 "$HELPER" analyse "$OUT" "$PLANNED_MS"
log "summary in $OUT/summary.txt"
