#!/usr/bin/env bash
# High availability on DynamoDB: replicas of `cutover serve` share one table;
# one is killed (SIGKILL) while it drives rollouts; the others take them
# over. Reports how many rollouts ended as their plans say, how long each
# orphan waited for its next action, and whether any rollout was ever driven
# by two replicas at once.
#
#   bench/failover.sh          # debug binary (target/debug/cutover), ~3 min
#
# Layout (all on 127.0.0.1):
#   moto (DynamoDB): moto's own server application, run by
#     `failover-helper.py moto` so that it answers one request at a time
#     (moto's DynamoDB backend takes no lock: two concurrent conditional
#     writes to one item can both pass; DynamoDB makes each write atomic;
#     crates/aws/tests/store_dynamodb.rs serialises moto for the same
#     reason) and logs every DynamoDB call with the writer it names;
#     MOTO=patched also makes two of moto's costs that grow with the table
#     constant (Query, TransactWriteItems), see the helper;
#   SERVICES `cutover proxy` processes, one per service (no upstream apps:
#     nothing sends traffic, nothing probes);
#   a logging relay in front of each proxy's admin API (failover-helper.py
#     relay): every router call and check, with the pid that made it (the
#     proxy's admin API records no caller);
#   SERVICES plans in one directory: router `local` (the relay), steps STEPS
#     % with HOLD each, BAKE, an `http` check of the proxy's /health every
#     INTERVAL, store dynamodb on moto;
#   REPLICAS `cutover serve --plans DIR --lease-ttl LEASE_TTL --tick TICK
#     --scan SCAN`, RUST_LOG=info.
# Then: SERVICES rollouts created through replica 1's API (POST /v1/rollouts
# with an idempotency key); once all are past preflight, KILL_AFTER seconds
# more, then `kill -9` of one replica (KILL=busiest: the one driving the
# most; or its number); then wait until every rollout has ended, collect
# records and histories from a survivor's API and analyse
# (failover-helper.py analyse).
#
# One driver at a time is checked action by action: each router call (the
# relay's log) and each write of a rollout's record (moto's log) is set
# against who held that rollout's lease at that moment (moto's log of lease
# writes and releases). Each stored event is also matched to the replica
# that printed it (serve prints every event it persists).
#
# Knobs (environment): SERVICES=50 REPLICAS=3 LEASE_TTL=5s TICK=200ms SCAN=2s
#   STEPS="10 50 100" HOLD=10s BAKE=10s INTERVAL=5s KILL_AFTER=5 KILL=busiest
#   TIMEOUT=600 (seconds to wait for the end) PORT_BASE=19500
#   OUT=/tmp/cutover-failover.XXXX CUTOVER=path/to/binary
#   BUILD=1 (run `cargo build -p cutover` first)
#   MOTO=patched|plain (plain: moto's DynamoDB as installed, whose Query and
#   TransactWriteItems cost grows with the table; at 50 services it cannot
#   keep up on 2 cores: see docs/benchmarks.md, "Failover").
# Raw output (logs, records, histories) goes to $OUT; the summary to
# $OUT/summary.txt. Everything started here is stopped on exit (also Ctrl-C).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
SERVICES=${SERVICES:-50}
REPLICAS=${REPLICAS:-3}
LEASE_TTL=${LEASE_TTL:-5s}
TICK=${TICK:-200ms}
SCAN=${SCAN:-2s}
STEPS=${STEPS:-"10 50 100"}
HOLD=${HOLD:-10s}
BAKE=${BAKE:-10s}
INTERVAL=${INTERVAL:-5s}
KILL_AFTER=${KILL_AFTER:-5}
KILL=${KILL:-busiest}
TIMEOUT=${TIMEOUT:-600}
PORT_BASE=${PORT_BASE:-19500}
OUT=${OUT:-$(mktemp -d /tmp/cutover-failover.XXXXXX)}
CUTOVER=${CUTOVER:-$ROOT/target/debug/cutover}
# patched: moto's server with two of its costs made constant (Query by
# partition, TransactWriteItems restoring only the items it names: see
# `failover-helper.py moto`); plain: moto's DynamoDB as installed.
MOTO=${MOTO:-patched}
HELPER=$ROOT/bench/failover-helper.py

MOTO_PORT=$PORT_BASE
api_port() { echo $((PORT_BASE + 10 + $1)); }    # replica 1..REPLICAS
proxy_port() { echo $((PORT_BASE + 100 + $1)); }  # service 1..SERVICES
admin_port() { echo $((PORT_BASE + 200 + $1)); }
relay_port() { echo $((PORT_BASE + 300 + $1)); }
BLUE_PORT=$((PORT_BASE + 98))   # nothing listens: no traffic is sent
GREEN_PORT=$((PORT_BASE + 99))
TABLE=cutover-failover

die() { echo "bench/failover.sh: $*" >&2; exit 1; }
for tool in python3 jq curl ss awk; do
    command -v "$tool" >/dev/null || die "needs $tool (apt-get install python3 jq curl iproute2)"
done
python3 -c 'import moto.server' 2>/dev/null || die "needs moto's server (pip install 'moto[server]')"
[ "$SERVICES" -ge 1 ] && [ "$SERVICES" -le 97 ] || die "SERVICES must be 1 to 97 (ports)"
[ "$REPLICAS" -ge 2 ] && [ "$REPLICAS" -le 9 ] || die "REPLICAS must be 2 to 9"
ports="$MOTO_PORT"
for r in $(seq "$REPLICAS"); do ports="$ports $(api_port "$r")"; done
for i in $(seq "$SERVICES"); do ports="$ports $(proxy_port "$i") $(admin_port "$i") $(relay_port "$i")"; done
in_use=$(ss -ltnH | awk '{ n = split($4, a, ":"); print a[n] }' | sort -u)
for p in $ports; do
    if grep -qx "$p" <<<"$in_use"; then die "port $p is in use; set PORT_BASE"; fi
done

# "5s", "200ms", "1m" -> milliseconds
ms() {
    awk -v d="$1" 'BEGIN {
        if (d ~ /ms$/) { print substr(d, 1, length(d) - 2) + 0; exit }
        if (d ~ /s$/) { print substr(d, 1, length(d) - 1) * 1000; exit }
        if (d ~ /m$/) { print substr(d, 1, length(d) - 1) * 60000; exit }
        print "bad"; exit 1 }'
}
LEASE_TTL_MS=$(ms "$LEASE_TTL") || die "LEASE_TTL=$LEASE_TTL: expected e.g. 5s"
SCAN_MS=$(ms "$SCAN") || die "SCAN=$SCAN: expected e.g. 2s"

if [ -n "${BUILD:-}" ]; then
    echo "building cutover (debug)..."
    (cd "$ROOT" && cargo build -q -p cutover)
fi
[ -x "$CUTOVER" ] || die "$CUTOVER is missing (cargo build -p cutover, or set CUTOVER)"

mkdir -p "$OUT/plans" "$OUT/proxies" "$OUT/create" "$OUT/events"
export AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing AWS_REGION=eu-west-1

# shellcheck source=bench/lib.sh
. "$ROOT/bench/lib.sh"
stop_all_on_exit bench/failover.sh "$OUT"

now_ms() { date +%s%3N; }
# CPU seconds (user + system) used so far by processes (all their threads,
# those that have ended included).
cpu_s() {
    local total=0 f rest
    for f in $(for p in "$@"; do echo /proc/$p/stat; done); do
        [ -r "$f" ] || continue
        rest=$(sed 's/^.*) //' "$f" 2>/dev/null) || continue
        set -- $rest
        total=$((total + ${12} + ${13}))
    done
    awk -v t=$total -v hz="$(getconf CLK_TCK)" 'BEGIN { printf "%.1f", t / hz }'
}

# 1. moto and the table.
case $MOTO in patched | plain) ;; *) die "MOTO=$MOTO: patched or plain" ;; esac
: >"$OUT/replica-pids"
python3 "$HELPER" moto "$MOTO_PORT" "$OUT/dynamodb.log" "$MOTO" >"$OUT/moto.log" 2>&1 &
PIDS+=($!)
MOTO_PID=$!
wait_tcp "$MOTO_PORT" moto

# 2. One proxy per service, and the relays in front of their admin APIs.
steps=""
for s in $STEPS; do steps="$steps{ split = $s, hold = \"$HOLD\" }, "; done
: >"$OUT/relays.map"
PROXY_PIDS=()
for i in $(seq "$SERVICES"); do
    svc=$(printf 'svc-%02d' "$i")
    cat >"$OUT/proxies/$svc.toml" <<EOF
listen = "127.0.0.1:$(proxy_port "$i")"
admin_listen = "127.0.0.1:$(admin_port "$i")"
initial_split = 0
workers = 1
[blue]
upstreams = ["http://127.0.0.1:$BLUE_PORT"]
[green]
upstreams = ["http://127.0.0.1:$GREEN_PORT"]
EOF
    cat >"$OUT/plans/$svc.toml" <<EOF
[service]
name = "$svc"

[router]
kind = "local"
admin_url = "http://127.0.0.1:$(relay_port "$i")"

[strategy]
steps = [${steps%, }]
bake = "$BAKE"

[analysis]
interval = "$INTERVAL"

[[analysis.checks]]
kind = "http"
url = "http://127.0.0.1:$(relay_port "$i")/health"

[store]
kind = "dynamodb"
table = "$TABLE"

[aws]
region = "eu-west-1"
endpoint_url = "http://127.0.0.1:$MOTO_PORT"
EOF
    echo "$svc $(relay_port "$i") $(admin_port "$i")" >>"$OUT/relays.map"
    TOKIO_WORKER_THREADS=1 "$CUTOVER" proxy "$OUT/proxies/$svc.toml" >"$OUT/proxies/$svc.log" 2>&1 &
    PIDS+=($!)
    PROXY_PIDS+=($!)
done
python3 "$HELPER" relay "$OUT/relays.map" "$OUT/admin.log" "$OUT/replica-pids" >"$OUT/relay.log" 2>&1 &
PIDS+=($!)
RELAY_PID=$!
for i in $(seq "$SERVICES"); do wait_tcp "$(admin_port "$i")" "proxy $i"; done
wait_tcp "$(relay_port "$SERVICES")" "the relay"
"$CUTOVER" plan "$OUT/plans/svc-01.toml" >"$OUT/timeline.txt"
"$CUTOVER" init-store "$OUT/plans/svc-01.toml" >"$OUT/init-store.log" 2>&1 || die "init-store failed: $(cat "$OUT/init-store.log")"
log "moto ($MOTO) on $MOTO_PORT, $SERVICES proxies, table $TABLE created; raw output in $OUT"

# 3. The replicas.
REPLICA_PIDS=()
for r in $(seq "$REPLICAS"); do
    RUST_LOG=info "$CUTOVER" serve --plans "$OUT/plans" --listen "127.0.0.1:$(api_port "$r")" \
        --lease-ttl "$LEASE_TTL" --tick "$TICK" --scan "$SCAN" \
        >"$OUT/replica-$r.out" 2>"$OUT/replica-$r.err" &
    PIDS+=($!)
    REPLICA_PIDS+=($!)
    echo $! >>"$OUT/replica-pids"
done
for r in $(seq "$REPLICAS"); do
    api=http://127.0.0.1:$(api_port "$r")
    for _ in $(seq 300); do
        n=$(curl -fsS "$api/v1/services" 2>/dev/null | jq '.services | length' 2>/dev/null || echo 0)
        [ "$n" = "$SERVICES" ] && break
        kill -0 "${REPLICA_PIDS[$((r - 1))]}" 2>/dev/null || die "replica $r exited: $(tail -3 "$OUT/replica-$r.err")"
        sleep 0.2
    done
    [ "$n" = "$SERVICES" ] || die "replica $r has $n plans, not $SERVICES"
done
log "$REPLICAS replicas up (pids ${REPLICA_PIDS[*]}; lease $LEASE_TTL, tick $TICK, scan $SCAN)"

# 4. The rollouts, through replica 1.
API1=http://127.0.0.1:$(api_port 1)
RUN_KEY=failover-$(date +%s)
t0=$(now_ms)
: >"$OUT/ids"
for i in $(seq "$SERVICES"); do
    svc=$(printf 'svc-%02d' "$i")
    code=$(curl -sS -o "$OUT/create/$svc.json" -w '%{http_code}' -X POST "$API1/v1/rollouts" \
        -d "{\"service\": \"$svc\", \"label\": \"v2\", \"idempotency_key\": \"$RUN_KEY-$svc\"}")
    [ "$code" = 201 ] || die "POST for $svc answered $code: $(cat "$OUT/create/$svc.json")"
    jq -r .id "$OUT/create/$svc.json" >>"$OUT/ids"
done
log "$SERVICES rollouts created in $(($(now_ms) - t0)) ms"

# The active rollouts as one replica sees them: "id phase written_by".
active() { curl -fsS "$1/v1/rollouts?limit=500" | jq -r '.rollouts[] | "\(.id) \(.phase) \(.written_by)"'; }
# Rollouts per replica, from each one's /metrics (cutover_rollouts, all phases).
driven_counts() {
    local r
    for r in "$@"; do
        curl -fsS "http://127.0.0.1:$(api_port "$r")/metrics" 2>/dev/null |
            awk -v r="$r" '/^cutover_rollouts\{/ { n += $2 } END { printf "replica-%s=%d ", r, n }'
    done
}

waiting=?
for _ in $(seq 300); do
    if now_active=$(active "$API1"); then
        waiting=$(awk '$2 == "pending" || $2 == "preflight"' <<<"$now_active" | wc -l)
        [ "$waiting" = 0 ] && break
    fi
    sleep 0.2
done
[ "$waiting" = 0 ] || die "$waiting rollouts still pending or in preflight after 60 s"
all=$(seq "$REPLICAS" | tr '\n' ' ')
log "all running; rollouts per replica: $(driven_counts $all)"
active "$API1" >"$OUT/spread-start.txt" || true

sleep "$KILL_AFTER"
active "$API1" >"$OUT/spread-kill.txt" || true
counts=$(driven_counts $all)
if [ "$KILL" = busiest ]; then
    victim=$(tr ' ' '\n' <<<"$counts" | awk -F= 'NF == 2 && $2 > max { max = $2; v = $1 } END { sub("replica-", "", v); print v }')
else
    victim=$KILL
fi
[ "$victim" -ge 1 ] && [ "$victim" -le "$REPLICAS" ] || die "KILL=$KILL: no such replica"
VICTIM_PID=${REPLICA_PIDS[$((victim - 1))]}
victim_cpu=$(cpu_s "$VICTIM_PID")
kill_ms=$(now_ms)
kill -KILL "$VICTIM_PID"
wait "$VICTIM_PID" 2>/dev/null || true
log "killed replica $victim (pid $VICTIM_PID) with SIGKILL; before: $counts"
awk -v p=":$VICTIM_PID" '$3 ~ p"$"' "$OUT/spread-kill.txt" | cut -d' ' -f1 >"$OUT/orphans-written-by"
survivor=1
[ "$victim" = 1 ] && survivor=2
API=http://127.0.0.1:$(api_port "$survivor")
survivors=$(seq "$REPLICAS" | grep -vx "$victim" | tr '\n' ' ')

# 5. Until every rollout has ended.
deadline=$(($(date +%s) + TIMEOUT))
last=""
while :; do
    if ! now_active=$(active "$API"); then
        [ "$(date +%s)" -lt "$deadline" ] || die "replica $survivor's API did not answer for ${TIMEOUT}s"
        sleep 1
        continue
    fi
    left=$(grep -c . <<<"$now_active" || true)
    if [ "$left" = 0 ]; then break; fi
    now_line="$left active; per survivor: $(driven_counts $survivors)"
    [ "$now_line" != "$last" ] && log "$now_line"
    last=$now_line
    [ "$(date +%s)" -lt "$deadline" ] || { log "still $left active after ${TIMEOUT}s; analysing anyway"; break; }
    sleep 1
done
end_ms=$(now_ms)
log "all ended $(((end_ms - kill_ms) / 1000)) s after the kill"
cpu_line="moto $(cpu_s "$MOTO_PID"), relay $(cpu_s "$RELAY_PID")"
for r in $(seq "$REPLICAS"); do
    if [ "$r" = "$victim" ]; then
        cpu_line="$cpu_line, replica-$r $victim_cpu (until killed)"
    else
        cpu_line="$cpu_line, replica-$r $(cpu_s "${REPLICA_PIDS[$((r - 1))]}")"
    fi
done
cpu_line="$cpu_line, $SERVICES proxies $(cpu_s "${PROXY_PIDS[@]}")"
start_s=$(stat -c %Y "$OUT/replica-pids")

# 6. Collect: records, histories, the proxies' splits.
while read -r id; do
    curl -fsS "$API/v1/rollouts/$id"
done <"$OUT/ids" | jq -s . >"$OUT/rollouts.json"
while read -r id; do
    after=0
    : >"$OUT/events/$id.part"
    while :; do
        page=$(curl -fsS "$API/v1/rollouts/$id/events?after=$after&limit=1000")
        jq -c '.events[]' <<<"$page" >>"$OUT/events/$id.part"
        [ "$(jq -r .more <<<"$page")" = true ] || break
        after=$(jq -r .next_after <<<"$page")
    done
    jq -s . "$OUT/events/$id.part" >"$OUT/events/$id.json"
    rm "$OUT/events/$id.part"
done <"$OUT/ids"
final_splits=$(for i in $(seq "$SERVICES"); do
    printf 'svc-%02d %s\n' "$i" "$(curl -fsS "http://127.0.0.1:$(admin_port "$i")/split" | jq .split_bp)"
done | jq -Rn '[inputs | split(" ") | {(.[0]): (.[1] | tonumber)}] | add')
for r in $survivors; do
    curl -fsS "http://127.0.0.1:$(api_port "$r")/metrics" >"$OUT/replica-$r.metrics" || true
done

# The orphans: what the killed replica was driving (its log: spans still
# open at the kill), checked against the rollouts' `written_by` just before.
awk '/driving rollout/ { match($0, /rollout=[^ ]+/); id = substr($0, RSTART + 8, RLENGTH - 8) }
     /INFO.*driving rollout rollout=/ && !/stopped/ { open[id] = 1 }
     /stopped driving rollout/ { delete open[id] }
     END { for (id in open) print id }' "$OUT/replica-$victim.err" | sort >"$OUT/orphans"
sort -o "$OUT/orphans-written-by" "$OUT/orphans-written-by"
orphans_note="orphans from the killed replica's log and from written_by agree"
cmp -s "$OUT/orphans" "$OUT/orphans-written-by" ||
    orphans_note="orphans: the killed replica's log gives $(wc -l <"$OUT/orphans"), written_by just before the kill $(wc -l <"$OUT/orphans-written-by") (see $OUT/orphans*)"

replicas_json=$(for r in $(seq "$REPLICAS"); do echo "replica-$r ${REPLICA_PIDS[$((r - 1))]}"; done |
    jq -Rn '[inputs | split(" ") | {name: .[0], pid: (.[1] | tonumber)}]')
jq -n --argjson kill_ms "$kill_ms" --argjson end_ms "$end_ms" --argjson victim_pid "$VICTIM_PID" \
    --argjson replicas "$replicas_json" --argjson final "$final_splits" \
    --argjson ttl "$LEASE_TTL_MS" --argjson scan "$SCAN_MS" \
    --rawfile orphans "$OUT/orphans" \
    '{kill_ms: $kill_ms, end_ms: $end_ms, victim_pid: $victim_pid, replicas: $replicas,
      final_splits: $final, lease_ttl_ms: $ttl, scan_ms: $scan,
      orphans: ($orphans | split("\n") | map(select(length > 0)))}' >"$OUT/meta.json"

python3 "$HELPER" analyse "$OUT" >"$OUT/analysis.txt"

rev=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?')$(git -C "$ROOT" diff --quiet 2>/dev/null || echo '+changes')
{
    echo "# cutover failover on DynamoDB (moto $(python3 -c 'import moto; print(moto.__version__)' 2>/dev/null || echo '?') $MOTO, one request at a time), $(date -u +%Y-%m-%dT%H:%MZ)"
    echo "# $(nproc) CPUs; cutover $rev, $(basename "$(dirname "$CUTOVER")") build ($CUTOVER, built $(date -u -r "$CUTOVER" +%Y-%m-%dT%H:%MZ))"
    echo "# $SERVICES services (one cutover proxy each), $REPLICAS replicas: serve --lease-ttl $LEASE_TTL --tick $TICK --scan $SCAN"
    echo "# plan: steps $STEPS % holding $HOLD each, bake $BAKE, http check every $INTERVAL ($(tail -1 "$OUT/timeline.txt"))"
    echo "# rollouts per replica when all were running (written_by): $(awk -v pids="${REPLICA_PIDS[*]}" '
        BEGIN { k = split(pids, p, " "); for (i = 1; i <= k; i++) name[p[i]] = "replica-" i }
        { sub(/.*:/, "", $3); n[$3 in name ? name[$3] : "pid " $3]++ }
        END { for (r in n) printf "%s=%d ", r, n[r] }' "$OUT/spread-start.txt")"
    echo "# killed replica $victim (pid $VICTIM_PID) with SIGKILL $KILL_AFTER s after all were running; rollouts per replica then: $counts"
    echo "# $orphans_note; all ended $(((end_ms - kill_ms) / 1000)) s after the kill"
    echo "# CPU seconds used over the $(( $(date +%s) - start_s )) s since the replicas started: $cpu_line"
    echo "# load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
    cat "$OUT/analysis.txt"
} >"$OUT/summary.txt"
echo
cat "$OUT/summary.txt"
echo
echo "raw output: $OUT"
