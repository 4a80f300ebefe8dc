#!/usr/bin/env python3
"""Helpers for bench/scale.sh (standard library only).

  scale-helper.py create API N KEY OUT     POST N rollouts (svc-00001..), 16 at a time
  scale-helper.py sample PID OUT           CPU and RSS of PID every second until it exits
  scale-helper.py wait API TIMEOUT         until serve drives no rollout (or TIMEOUT s)
  scale-helper.py records API OUT          every rollout's record, for analyse
  scale-helper.py analyse OUT PLANNED_MS   the summary, from what the others wrote
"""
import http.client
import json
import os
import sys
import threading
import time
import urllib.parse


def connection(api):
    u = urllib.parse.urlparse(api)
    return http.client.HTTPConnection(u.hostname, u.port, timeout=120)


def create(api, n, key, out):
    n = int(n)
    lock = threading.Lock()
    todo = list(range(1, n + 1))
    results = {}
    failures = []

    def worker():
        conn = connection(api)
        while True:
            with lock:
                if not todo:
                    break
                i = todo.pop()
            svc = f"svc-{i:05d}"
            body = json.dumps({"service": svc, "label": "v2", "idempotency_key": f"{key}-{svc}"})
            for attempt in range(5):
                try:
                    conn.request("POST", "/v1/rollouts", body, {"Content-Type": "application/json"})
                    r = conn.getresponse()
                    data = r.read()
                    break
                except (OSError, http.client.HTTPException):
                    conn.close()
                    conn = connection(api)
                    time.sleep(0.2 * (attempt + 1))
            else:
                with lock:
                    failures.append(f"{svc}: no answer")
                continue
            with lock:
                if r.status in (200, 201):
                    results[svc] = json.loads(data)["id"]
                else:
                    failures.append(f"{svc}: {r.status} {data[:200]!r}")

    t0 = time.time()
    threads = [threading.Thread(target=worker) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    took = time.time() - t0
    with open(os.path.join(out, "ids.json"), "w") as f:
        json.dump(results, f)
    print(f"created {len(results)} of {n} rollouts in {took:.1f} s ({len(results) / took:.0f}/s)")
    if failures:
        print(f"{len(failures)} failed, e.g. {failures[:3]}", file=sys.stderr)
        sys.exit(1)


def sample(pid, out):
    hz = os.sysconf("SC_CLK_TCK")
    rows = []
    while True:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            with open(f"/proc/{pid}/status") as f:
                status = dict(line.split(":", 1) for line in f if ":" in line)
        except (FileNotFoundError, ProcessLookupError):
            break
        cpu = (int(fields[11]) + int(fields[12])) / hz
        rss = int(status["VmRSS"].split()[0])
        hwm = int(status["VmHWM"].split()[0])
        rows.append({"t": time.time(), "cpu_s": cpu, "rss_kib": rss, "hwm_kib": hwm})
        with open(out, "w") as f:
            json.dump(rows, f)
        time.sleep(1)


def get(conn, path):
    conn.request("GET", path)
    r = conn.getresponse()
    data = r.read()
    if r.status != 200:
        raise RuntimeError(f"GET {path}: {r.status} {data[:200]!r}")
    return json.loads(data)


def wait(api, timeout):
    """Until serve drives no rollout (its cutover_rollouts gauges sum to 0):
    cheaper for it to answer than listing 10,000 active rollouts."""
    conn = connection(api)
    deadline = time.time() + float(timeout)
    while time.time() < deadline:
        conn.request("GET", "/metrics")
        r = conn.getresponse()
        text = r.read().decode()
        driven = sum(v for (name, _), v in metric_sums(text).items() if name == "cutover_rollouts")
        if driven == 0:
            return
        time.sleep(5)
    print(f"rollouts still driven after {timeout} s", file=sys.stderr)
    sys.exit(1)


def metric_sums(text):
    """{(name, frozenset(labels)): value} of a Prometheus text exposition."""
    out = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name_labels, _, value = line.rpartition(" ")
        if "{" in name_labels:
            name, labels = name_labels.split("{", 1)
            labels = labels.rstrip("}")
            pairs = frozenset(
                tuple(p.split("=", 1)) for p in labels.split(",") if "=" in p
            )
        else:
            name, pairs = name_labels, frozenset()
        try:
            out[(name, pairs)] = float(value)
        except ValueError:
            pass
    return out


def analyse(out, planned_ms):
    planned_ms = float(planned_ms)
    ids = json.load(open(os.path.join(out, "ids.json")))
    records = json.load(open(os.path.join(out, "records.json")))
    samples = json.load(open(os.path.join(out, "serve-samples.json")))
    proxy = json.load(open(os.path.join(out, "proxy-samples.json")))
    with open(os.path.join(out, "metrics-start.txt")) as f:
        m0 = metric_sums(f.read())
    with open(os.path.join(out, "metrics-end.txt")) as f:
        m1 = metric_sums(f.read())
    phases = {}
    strays = []
    for svc, rid in ids.items():
        r = records[rid]
        phases[r["phase"]] = phases.get(r["phase"], 0) + 1
        if r["phase"] == "succeeded" and r.get("started_at") and r.get("ended_at"):
            took = r["ended_at"] - r["started_at"]
            strays.append((took - planned_ms) / planned_ms * 100)
    strays.sort()
    t_start = float(open(os.path.join(out, "t-start")).read())
    t_end = float(open(os.path.join(out, "t-end")).read())
    window = [s for s in samples if t_start <= s["t"] <= t_end]
    cpu = (window[-1]["cpu_s"] - window[0]["cpu_s"]) / (window[-1]["t"] - window[0]["t"])
    pwin = [s for s in proxy if t_start <= s["t"] <= t_end]
    pcpu = (pwin[-1]["cpu_s"] - pwin[0]["cpu_s"]) / (pwin[-1]["t"] - pwin[0]["t"])
    writes = {"create", "commit", "acquire_lease", "release_lease", "renew_lease", "renew_leases", "claim_trigger", "post_command"}
    counts = {}
    for (name, labels), v in m1.items():
        if name != "cutover_adapter_call_seconds_count":
            continue
        d = dict(labels)
        if not d.get("adapter", "").startswith('"store:'):
            continue
        op = d["operation"].strip('"')
        counts[op] = counts.get(op, 0) + v - m0.get((name, labels), 0)
    seconds = t_end - t_start
    write_total = sum(v for k, v in counts.items() if k in writes)
    commit_lat = {}
    for (name, labels), v in m1.items():
        d = dict(labels)
        if d.get("operation") == '"commit"' and d.get("adapter", "").startswith('"store:'):
            if name in ("cutover_adapter_call_seconds_sum", "cutover_adapter_call_seconds_count"):
                commit_lat[name] = v - m0.get((name, labels), 0)
    mean_commit_ms = (
        commit_lat["cutover_adapter_call_seconds_sum"] / commit_lat["cutover_adapter_call_seconds_count"] * 1000
        if commit_lat.get("cutover_adapter_call_seconds_count") else float("nan")
    )

    def pct(p):
        if not strays:
            return float("nan")
        return strays[min(len(strays) - 1, int(p / 100 * len(strays)))]

    lines = [
        f"rollouts: {len(ids)}; ended: {phases}",
        f"measured window: {seconds:.0f} s (first rollout created .. last one ended)",
        f"serve CPU: {cpu:.2f} cores on average; peak RSS {max(s['hwm_kib'] for s in samples) / 1024:.0f} MiB",
        f"proxy CPU: {pcpu:.2f} cores on average; peak RSS {max(s['hwm_kib'] for s in proxy) / 1024:.0f} MiB",
        f"store writes: {write_total:.0f} ({write_total / seconds:.0f}/s); by operation: "
        + ", ".join(f"{k} {v:.0f}" for k, v in sorted(counts.items())),
        f"store commit: mean {mean_commit_ms:.1f} ms",
        f"wall time against the plan ({planned_ms / 1000:.0f} s), succeeded rollouts: "
        f"min {pct(0):+.2f} %, median {pct(50):+.2f} %, p99 {pct(99):+.2f} %, max {strays[-1] if strays else float('nan'):+.2f} %; "
        f"within 1 %: {sum(1 for s in strays if abs(s) <= 1)} of {len(strays)}",
    ]
    text = "\n".join(lines)
    print(text)
    with open(os.path.join(out, "summary.txt"), "w") as f:
        f.write(text + "\n")


def records(api, out):
    ids = json.load(open(os.path.join(out, "ids.json")))
    conn = connection(api)
    got = {}
    for rid in ids.values():
        got[rid] = get(conn, f"/v1/rollouts/{rid}")
    with open(os.path.join(out, "records.json"), "w") as f:
        json.dump(got, f)


if __name__ == "__main__":
    cmd, args = sys.argv[1], sys.argv[2:]
    {"create": create, "sample": sample, "wait": wait, "analyse": analyse, "records": records}[cmd](*args)
