# Shared by the bench scripts (sourced): process bookkeeping and waiting.
# The sourcing script defines `die MESSAGE` before calling these.

# Every process a script starts, to stop on exit.
PIDS=()

# SIGTERM to every process started, SIGKILL to what is left after 3 s.
stop_all() {
    local pid alive
    for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for _ in $(seq 30); do
        alive=0
        for pid in "${PIDS[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
        [ $alive = 0 ] && break
        sleep 0.1
    done
    for pid in "${PIDS[@]}"; do kill -KILL "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; done
    PIDS=()
}

# stop_all on exit; on Ctrl-C, also say where the raw output is.
stop_all_on_exit() { # script-name out-dir
    trap stop_all EXIT
    # shellcheck disable=SC2064 # the names are fixed now
    trap "echo \"$1: interrupted; raw output so far: $2\" >&2; exit 130" INT TERM
}

# Until something listens on 127.0.0.1:PORT, at most 60 s.
wait_tcp() { # port name
    local i
    for i in $(seq 600); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        sleep 0.1
    done
    die "$2 did not listen on port $1"
}

log() { echo "[$(date -u +%H:%M:%S)] $*"; }
