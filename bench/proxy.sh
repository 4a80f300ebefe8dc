#!/usr/bin/env bash
# Throughput and latency of cutover's embedded proxy, side by side with
# nginx doing the same job and with no proxy at all.
#
#   bench/proxy.sh            # builds cutover (release), runs, prints a table
#
# Three paths to one backend, measured by one load tool in one run:
#   direct   wrk -> backend
#   nginx    wrk -> nginx  (upstream blue weight=9, green weight=1, keepalive) -> backend
#   cutover  wrk -> `cutover proxy` (initial_split = 10)                       -> backend
#
# The backend is one nginx with two server blocks (blue and green, two
# loopback ports) answering a fixed 200 body; both fronts add the same
# forwarding headers (X-Forwarded-For/-Proto/-Host) and a response header.
#
# Each layout (see LAYOUTS) fixes the CPU budget: nginx `worker_processes`
# equals cutover's data-plane threads (`workers` in its config; its main
# runtime, idle here, gets TOKIO_WORKER_THREADS=1), and the fronts, the
# backend and wrk get the same `taskset` CPUs for every path:
#   pinned  wrk (1 thread) and the backend (1 worker) on CPU 0, the front
#           (1 worker) alone on CPU 1;
#   shared  nothing pinned, wrk 2 threads, backend and front 2 workers each.
# The table also gives CPU time per request of the front's processes (the
# backend's for direct), which other load on the machine disturbs less than
# req/s.
# Targets are interleaved and repeated ROUNDS times (the order rotates each
# round) and the table shows the median of each figure over the rounds, so
# drift hits all three alike.
#
# Knobs (environment): ROUNDS=3 DURATION=8s CONNS=64 SPLIT=10 WARMUP=2s
#   LAYOUTS="pinned shared" PORT_BASE=18180 OUT=/tmp/cutover-bench.XXXX
#   NO_BUILD=1 (reuse target/release/cutover), CUTOVER=path/to/binary,
#   CUTOVER_MODE=workers|runtime (see below).
# Raw wrk output goes to $OUT; the summary table to $OUT/summary.txt.
# Everything started here is stopped on exit. Only 127.0.0.1 is loaded.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-8s}
WARMUP=${WARMUP:-2s}
CONNS=${CONNS:-64}
SPLIT=${SPLIT:-10}
LAYOUTS=${LAYOUTS:-"pinned shared"}
PORT_BASE=${PORT_BASE:-18180}
OUT=${OUT:-$(mktemp -d /tmp/cutover-bench.XXXXXX)}
CUTOVER=${CUTOVER:-$ROOT/target/release/cutover}
# workers: the data plane on `workers` threads of its own (the default);
# runtime: no `workers` key, the data plane shares the process's tokio
# runtime of TOKIO_WORKER_THREADS threads (how the proxy ran before `workers`).
CUTOVER_MODE=${CUTOVER_MODE:-workers}

BLUE_PORT=$PORT_BASE
GREEN_PORT=$((PORT_BASE + 1))
NGINX_PORT=$((PORT_BASE + 2))
CUTOVER_PORT=$((PORT_BASE + 3))
ADMIN_PORT=$((PORT_BASE + 4))

die() { echo "bench/proxy.sh: $*" >&2; exit 1; }
for tool in nginx wrk taskset curl awk; do
    command -v "$tool" >/dev/null || die "needs $tool (apt-get install nginx-light wrk util-linux curl)"
done
NCPU=$(nproc)
[ "$NCPU" -ge 2 ] || die "needs at least 2 CPUs (the pinned layout uses CPUs 0 and 1)"
for p in $BLUE_PORT $GREEN_PORT $NGINX_PORT $CUTOVER_PORT $ADMIN_PORT; do
    if ss -ltnH "sport = :$p" | grep -q .; then die "port $p is in use; set PORT_BASE"; fi
done

mkdir -p "$OUT"
PIDS=()
cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do kill -INT "$pid" 2>/dev/null || true; done
    sleep 0.3
    for pid in "${PIDS[@]}"; do kill -KILL "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; done
    PIDS=()
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Stops one process we started (nginx: QUIT is a graceful stop; cutover: INT).
stop() {
    local pid=$1 sig=$2 i
    kill "-$sig" "$pid" 2>/dev/null || true
    for i in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    local keep=() p
    for p in "${PIDS[@]}"; do [ "$p" = "$pid" ] || keep+=("$p"); done
    PIDS=("${keep[@]}")
}

wait_http() {
    local url=$1 i
    for i in $(seq 100); do
        curl -fsS -o /dev/null "$url" 2>/dev/null && return 0
        sleep 0.1
    done
    die "$url did not answer"
}

# nginx with its own prefix, in the foreground (so $! is the master).
start_nginx() {
    local name=$1 cpus=$2 dir=$OUT/$1
    mkdir -p "$dir/tmp"
    taskset -c "$cpus" nginx -p "$dir" -c "$dir/nginx.conf" -e "$dir/error.log" \
        -g 'daemon off;' >"$dir/stdout" 2>&1 &
    PIDS+=($!)
    eval "${name}_PID=$!"
}

nginx_common() { # $1 = workers
    cat <<EOF
worker_processes $1;
pid nginx.pid;
error_log error.log warn;
events { worker_connections 4096; multi_accept on; }
http {
    access_log off;
    keepalive_requests 1000000;
    keepalive_timeout 60s;
    client_body_temp_path tmp/body;
    proxy_temp_path tmp/proxy;
EOF
}

write_backend() { # $1 = workers
    mkdir -p "$OUT/backend"
    {
        nginx_common "$1"
        for colour in blue green; do
            port=$BLUE_PORT; [ $colour = green ] && port=$GREEN_PORT
            cat <<EOF
    server {
        listen 127.0.0.1:$port backlog=4096;
        location / { default_type text/plain; return 200 "hello from $colour\n"; }
    }
EOF
        done
        echo "}"
    } >"$OUT/backend/nginx.conf"
}

write_front() { # $1 = workers
    mkdir -p "$OUT/front"
    local blue_w=$((100 - SPLIT)) green_w=$SPLIT
    {
        nginx_common "$1"
        cat <<EOF
    upstream split {
        server 127.0.0.1:$BLUE_PORT weight=$blue_w;
        server 127.0.0.1:$GREEN_PORT weight=$green_w;
        keepalive 256;
        keepalive_requests 1000000;
    }
    server {
        listen 127.0.0.1:$NGINX_PORT backlog=4096;
        location / {
            proxy_pass http://split;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host \$host;
            proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto \$scheme;
            proxy_set_header X-Forwarded-Host \$host;
            proxy_buffering on;
            add_header X-Upstream \$upstream_addr;
        }
    }
}
EOF
    } >"$OUT/front/nginx.conf"
}

write_cutover() { # $1 = data-plane threads
    local workers="workers = $1"
    [ "$CUTOVER_MODE" = runtime ] && workers="# data plane on the process's runtime"
    cat >"$OUT/cutover.toml" <<EOF
listen = "127.0.0.1:$CUTOVER_PORT"
admin_listen = "127.0.0.1:$ADMIN_PORT"
initial_split = $SPLIT
$workers
[blue]
upstreams = ["http://127.0.0.1:$BLUE_PORT"]
[green]
upstreams = ["http://127.0.0.1:$GREEN_PORT"]
EOF
}

# The data plane runs on `workers` threads; the process's own runtime (admin
# API, probes: idle here) gets one thread. In runtime mode it gets them all.
start_cutover() { # $1 = cpus, $2 = threads
    local rt=1
    [ "$CUTOVER_MODE" = runtime ] && rt=$2
    taskset -c "$1" env TOKIO_WORKER_THREADS=$rt "$CUTOVER" proxy "$OUT/cutover.toml" \
        >"$OUT/cutover.log" 2>&1 &
    PIDS+=($!)
    CUTOVER_PID=$!
}

# "<req/s> <p50 ms> <p99 ms> <errors>" from wrk --latency output.
parse_wrk() {
    awk '
        function ms(v) {
            if (v ~ /us$/) return substr(v, 1, length(v) - 2) / 1000
            if (v ~ /ms$/) return substr(v, 1, length(v) - 2) + 0
            if (v ~ /s$/)  return substr(v, 1, length(v) - 1) * 1000
            return v + 0
        }
        $1 == "50%" { p50 = ms($2) }
        $1 == "99%" { p99 = ms($2) }
        /^Requests\/sec:/ { rps = $2 }
        /Non-2xx or 3xx responses:/ { err += $NF }
        /Socket errors:/ { for (i = 3; i <= NF; i++) if ($i ~ /^[0-9]+,?$/) err += $i + 0 }
        END { printf "%.0f %.3f %.3f %d\n", rps, p50, p99, err }
    ' "$1"
}

# CPU time (utime + stime, clock ticks) of processes and all their threads.
cpu_ticks() {
    local total=0 f rest
    for f in $(for p in "$@"; do echo /proc/$p/task/*/stat; done); do
        [ -r "$f" ] || continue
        rest=$(sed 's/^.*) //' "$f" 2>/dev/null) || continue
        set -- $rest
        total=$((total + ${12} + ${13}))
    done
    echo $total
}

# The processes that do a path's proxying (the backend's for direct).
pids_of() {
    case $1 in
        direct) pgrep -P "$backend_PID" | tr '\n' ' ' ;;
        nginx) pgrep -P "$front_PID" | tr '\n' ' ' ;;
        cutover) echo "$CUTOVER_PID" ;;
    esac
}

url_of() {
    case $1 in
        direct) echo "http://127.0.0.1:$BLUE_PORT/" ;;
        nginx) echo "http://127.0.0.1:$NGINX_PORT/" ;;
        cutover) echo "http://127.0.0.1:$CUTOVER_PORT/" ;;
    esac
}

# Layout: name, CPUs for wrk, for the backend, for the front; thread/worker counts.
layout() {
    case $1 in
        # One core for the front alone; wrk and the backend share the other.
        pinned) echo "0 0 1 1 1 1" ;;
        # Nothing pinned: everything shares both cores, two workers each.
        shared) echo "0-$((NCPU - 1)) 0-$((NCPU - 1)) 0-$((NCPU - 1)) 2 2 2" ;;
        *) die "unknown layout $1 (pinned, shared)" ;;
    esac
}

if [ -z "${NO_BUILD:-}" ]; then
    echo "building cutover (release)..."
    (cd "$ROOT" && cargo build --release -q -p cutover)
fi
[ -x "$CUTOVER" ] || die "$CUTOVER is missing"

{
    echo "# cutover proxy benchmark, $(date -u +%Y-%m-%dT%H:%MZ)"
    echo "# $(nproc) CPUs ($(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo)); $(nginx -v 2>&1 | sed 's/.*: //'); $(wrk --version 2>&1 | head -1 | awk '{print $1, $2}')"
    echo "# wrk -c$CONNS -d$DURATION --latency, $ROUNDS rounds (median), split $SPLIT % green; cutover ($CUTOVER_MODE mode) $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?')$(git -C "$ROOT" diff --quiet 2>/dev/null || echo '+changes')"
    echo "# CPU/req: CPU time of the front's processes (the backend's for direct) per request; load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
} >"$OUT/header.txt"
: >"$OUT/results.tsv"

for name in $LAYOUTS; do
    read -r wrk_cpus backend_cpus front_cpus wrk_threads backend_workers front_workers <<<"$(layout "$name")"
    echo "== layout $name: wrk -t$wrk_threads on CPU $wrk_cpus; backend nginx $backend_workers worker(s) on CPU $backend_cpus;" \
        "fronts $front_workers worker(s) on CPU $front_cpus"
    write_backend "$backend_workers"
    write_front "$front_workers"
    write_cutover "$front_workers"
    start_nginx backend "$backend_cpus"
    start_nginx front "$front_cpus"
    start_cutover "$front_cpus" "$front_workers"
    wait_http "$(url_of direct)"
    wait_http "$(url_of nginx)"
    wait_http "$(url_of cutover)"
    # The fronts really split: ~SPLIT % of 200 requests reach green.
    for t in nginx cutover; do
        n=$(for _ in $(seq 200); do curl -s "$(url_of $t)"; done | grep -c green || true)
        echo "   $t: $n of 200 requests answered by green"
    done

    targets=(direct nginx cutover)
    for t in "${targets[@]}"; do
        taskset -c "$wrk_cpus" wrk -t"$wrk_threads" -c"$CONNS" -d"$WARMUP" "$(url_of "$t")" >/dev/null
    done
    for round in $(seq "$ROUNDS"); do
        for i in 0 1 2; do
            t=${targets[$(((i + round - 1) % 3))]}
            raw=$OUT/$name-$t-$round.txt
            pids=$(pids_of "$t")
            before=$(cpu_ticks $pids)
            taskset -c "$wrk_cpus" wrk -t"$wrk_threads" -c"$CONNS" -d"$DURATION" --latency "$(url_of "$t")" >"$raw"
            after=$(cpu_ticks $pids)
            read -r rps p50 p99 err <<<"$(parse_wrk "$raw")"
            n=$(awk '/requests in/ {print $1}' "$raw")
            # CPU µs per request of the front (of the backend for direct).
            cpu=$(awk -v t=$((after - before)) -v n="$n" -v hz="$(getconf CLK_TCK)" 'BEGIN { printf "%.1f", n ? t * 1e6 / hz / n : 0 }')
            printf '   round %s %-8s %9s req/s  p50 %7s ms  p99 %7s ms  %5s CPU us/req  errors %s\n' "$round" "$t" "$rps" "$p50" "$p99" "$cpu" "$err"
            printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$name" "$t" "$round" "$rps" "$p50" "$p99" "$err" "$cpu" >>"$OUT/results.tsv"
        done
    done
    stop "$CUTOVER_PID" INT
    stop "$front_PID" QUIT
    stop "$backend_PID" QUIT
done

# Medians per layout and target, then ratios.
awk -F'\t' '
    function median(list,   a, n, i, j, t) {
        n = split(list, a, " ")
        for (i = 2; i <= n; i++) for (j = i; j > 1 && a[j-1] + 0 > a[j] + 0; j--) { t = a[j]; a[j] = a[j-1]; a[j-1] = t }
        return n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
    }
    {
        k = $1 SUBSEP $2
        rps[k] = rps[k] " " $4; p50[k] = p50[k] " " $5; p99[k] = p99[k] " " $6; err[k] += $7; cpu[k] = cpu[k] " " $8
        if (!($1 in seen)) { seen[$1] = 1; order[++n] = $1 }
    }
    END {
        printf "%-8s %-8s %10s %9s %9s %7s %7s   %s\n", "layout", "path", "req/s", "p50 ms", "p99 ms", "CPU/req", "errors", "ratios (req/s, p50, p99)"
        for (i = 1; i <= n; i++) {
            L = order[i]
            for (t = 1; t <= 3; t++) {
                T = t == 1 ? "direct" : t == 2 ? "nginx" : "cutover"
                k = L SUBSEP T
                R[T] = median(rps[k]); P5[T] = median(p50[k]); P9[T] = median(p99[k]); C[T] = median(cpu[k])
                note = ""
                if (T != "direct") note = sprintf("vs direct %.2f, %.2f, %.2f", R[T] / R["direct"], P5[T] / P5["direct"], P9[T] / P9["direct"])
                if (T == "cutover") note = note sprintf("; vs nginx %.2f, %.2f, %.2f", R[T] / R["nginx"], P5[T] / P5["nginx"], P9[T] / P9["nginx"])
                printf "%-8s %-8s %10.0f %9.3f %9.3f %5.1fus %7d   %s\n", L, T, R[T], P5[T], P9[T], C[T], err[k], note
            }
        }
    }
' "$OUT/results.tsv" >"$OUT/table.txt"

echo "# load average after: $(cut -d' ' -f1-3 /proc/loadavg)" >>"$OUT/table.txt"
cat "$OUT/header.txt" "$OUT/table.txt" >"$OUT/summary.txt"
echo
cat "$OUT/summary.txt"
echo
echo "raw wrk output and configs: $OUT"
