#!/usr/bin/env python3
"""Helpers of bench/failover.sh (standard library and moto only).

  failover-helper.py moto PORT LOG patched|plain
      moto's server (the same application and werkzeug server that
      `moto_server -H 127.0.0.1 -p PORT` runs) answering one request at a
      time, as DynamoDB applies each write atomically and moto does not (see
      moto_main), and logging every DynamoDB call (JSON lines): when, the
      operation, the items it names, the writer it names (every write of
      cutover's store names one: a lease its holder, a rollout version its
      `written_by`, `host:pid`), the outcome.
      `patched`: two of moto's costs that grow with the table made constant
      (Query, TransactWriteItems); `plain`: moto as installed.

  failover-helper.py relay MAPFILE LOG PIDFILE
      One logging relay per proxy admin API (MAPFILE lines: `name
      listen_port upstream_port`). The plans point their router and check
      at the relay, so every router call (GET/PUT /split) and check
      (GET /health) is logged with the process that made it: the proxy's
      admin API records no caller.

  failover-helper.py analyse OUT
      Reads what bench/failover.sh collected in OUT and prints the summary.

Which process called the relay: the peer's socket is looked up in
/proc/net/tcp and its inode among the open files of the pids in PIDFILE
(the cutover replicas; one pid per line, re-read on every lookup), then of
every process.
"""

import asyncio
import io
import json
import os
import re
import statistics
import sys
import time


# --------------------------------------------------------------------------
# Who is at the other end of a loopback connection.

def _socket_inode(peer_port, local_port):
    """Inode of the socket whose local port is peer_port and remote port local_port."""
    want_local = ":%04X" % peer_port
    want_remote = ":%04X" % local_port
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                next(f)
                for line in f:
                    parts = line.split()
                    if parts[1].endswith(want_local) and parts[2].endswith(want_remote):
                        return parts[9]
        except OSError:
            pass
    return None


def _pids_with(inode, pids):
    target = "socket:[%s]" % inode
    for pid in pids:
        d = "/proc/%s/fd" % pid
        try:
            for fd in os.listdir(d):
                try:
                    if os.readlink(os.path.join(d, fd)) == target:
                        return pid
                except OSError:
                    pass
        except OSError:
            pass
    return None


def peer_pid(peer_port, local_port, pidfile):
    inode = _socket_inode(peer_port, local_port)
    if inode is None:
        return None
    try:
        with open(pidfile) as f:
            known = [l.strip() for l in f if l.strip()]
    except OSError:
        known = []
    pid = _pids_with(inode, known)
    if pid is None:
        others = [p for p in os.listdir("/proc") if p.isdigit() and p not in known]
        pid = _pids_with(inode, others)
    return int(pid) if pid else None


# --------------------------------------------------------------------------
# Minimal HTTP/1.1 message framing (Content-Length, chunked, or to EOF).

async def read_message(reader, response, head_request=False):
    """Returns (head bytes, body bytes, headers dict) or None at EOF."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as e:
        if not e.partial:
            return None
        raise
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for l in lines[1:]:
        if ":" in l:
            k, v = l.split(":", 1)
            headers[k.strip().lower()] = v.strip()
    status = None
    if response:
        status = int(lines[0].split()[1])
    body = b""
    if response and (head_request or status in (204, 304) or 100 <= status < 200):
        pass
    elif "content-length" in headers:
        body = await reader.readexactly(int(headers["content-length"]))
    elif headers.get("transfer-encoding", "").lower() == "chunked":
        chunks = []
        while True:
            size_line = await reader.readuntil(b"\r\n")
            size = int(size_line.split(b";")[0], 16)
            data = await reader.readexactly(size + 2)
            chunks.append(data[:-2])
            if size == 0:
                # trailers
                while (await reader.readuntil(b"\r\n")) != b"\r\n":
                    pass
                break
        body = b"".join(chunks)
        headers.pop("transfer-encoding")
    elif response:
        body = await reader.read()
    return lines, body, headers


def build_message(lines, body, extra=()):
    keep = [lines[0]]
    for l in lines[1:]:
        if not l:
            continue
        name = l.split(":", 1)[0].strip().lower()
        if name in ("connection", "keep-alive", "transfer-encoding", "content-length", "proxy-connection"):
            continue
        keep.append(l)
    keep.append("Content-Length: %d" % len(body))
    keep.extend(extra)
    return ("\r\n".join(keep) + "\r\n\r\n").encode("latin-1") + body


async def exchange(host, port, lines, body):
    """One request on a fresh upstream connection; returns (lines, body, headers)."""
    r, w = await asyncio.open_connection(host, port)
    try:
        w.write(build_message(lines, body, ["Connection: close"]))
        await w.drain()
        method = lines[0].split()[0]
        msg = await read_message(r, True, head_request=(method == "HEAD"))
        if msg is None:
            raise ConnectionError("upstream closed without answering")
        return msg
    finally:
        w.close()


def now_ms():
    return int(time.time() * 1000)


# --------------------------------------------------------------------------
# What a DynamoDB request names.

def _pk(item):
    if not isinstance(item, dict):
        return None
    pk = item.get("pk", {}).get("S")
    sk = item.get("sk", {}).get("S")
    if pk is None:
        return None
    return pk if sk is None else pk + "|" + sk


def summarise_ddb(op, req):
    """The items a DynamoDB request names, and details worth keeping."""
    items = []
    extra = {}
    if op in ("PutItem",):
        items.append(_pk(req.get("Item")))
        it = req.get("Item", {})
        if "holder" in it:
            extra["holder"] = it["holder"].get("S")
            extra["expires_at"] = int(it.get("expires_at", {}).get("N", 0))
    elif op in ("UpdateItem", "DeleteItem", "GetItem"):
        items.append(_pk(req.get("Key")))
        vals = req.get("ExpressionAttributeValues", {})
        if ":writer" in vals:
            extra["writer"] = vals[":writer"].get("S")
        if op == "DeleteItem" and ":holder" in vals:
            extra["writer"] = vals[":holder"].get("S")
        # A lease renewal: an update conditioned on its holder.
        if op == "UpdateItem" and ":holder" in vals and ":expires" in vals:
            extra["holder"] = vals[":holder"].get("S")
            extra["expires_at"] = int(vals[":expires"].get("N", 0))
    elif op == "TransactWriteItems":
        for t in req.get("TransactItems", []):
            for kind, body in t.items():
                key = _pk(body.get("Key") or body.get("Item"))
                items.append(kind[0] + ":" + (key or "?"))
                vals = body.get("ExpressionAttributeValues", {})
                if ":writer" in vals:
                    extra["writer"] = vals[":writer"].get("S")
                elif "written_by" in body.get("Item", {}):
                    extra["writer"] = body["Item"]["written_by"].get("S")
    elif op == "BatchGetItem":
        for table in req.get("RequestItems", {}).values():
            for k in table.get("Keys", []):
                items.append(_pk(k))
    elif op == "Query":
        vals = req.get("ExpressionAttributeValues", {})
        items.append(",".join(v.get("S", "") for v in vals.values() if isinstance(v, dict)))
    return [i for i in items if i], extra


# --------------------------------------------------------------------------
# relay: a logging relay per proxy admin API.

async def relay_main(mapfile, log_path, pidfile):
    log = open(log_path, "a", buffering=1)
    servers = []

    def handler(name, listen_port, upstream_port):
        async def handle(reader, writer):
            peer = writer.get_extra_info("peername")
            pid = await asyncio.get_running_loop().run_in_executor(None, peer_pid, peer[1], listen_port, pidfile)
            try:
                while True:
                    msg = await read_message(reader, False)
                    if msg is None:
                        break
                    lines, body, headers = msg
                    method, path = lines[0].split()[:2]
                    t0 = now_ms()
                    try:
                        rlines, rbody, _ = await exchange("127.0.0.1", upstream_port, lines, body)
                    except OSError as e:
                        log.write(json.dumps({"t": t0, "svc": name, "pid": pid, "method": method,
                                              "path": path, "error": str(e)}) + "\n")
                        break
                    t1 = now_ms()
                    status = int(rlines[0].split()[1])
                    entry = {"t": t0, "t_end": t1, "svc": name, "pid": pid, "method": method,
                             "path": path, "status": status}
                    if path.startswith("/split"):
                        try:
                            entry["split_bp"] = json.loads(rbody)["split_bp"]
                        except (ValueError, KeyError):
                            pass
                        if method == "PUT":
                            entry["body"] = body.decode("latin-1")
                    log.write(json.dumps(entry, separators=(",", ":")) + "\n")
                    writer.write(build_message(rlines, rbody))
                    await writer.drain()
            except (ConnectionError, asyncio.IncompleteReadError):
                pass
            finally:
                writer.close()
        return handle

    with open(mapfile) as f:
        for line in f:
            if not line.strip():
                continue
            name, lp, up = line.split()
            servers.append(await asyncio.start_server(handler(name, int(lp), int(up)), "127.0.0.1", int(lp), backlog=256))
    await asyncio.gather(*(s.serve_forever() for s in servers))


# --------------------------------------------------------------------------
# moto: moto's own server, with two of its DynamoDB costs made constant.

def moto_main(port, log_path, patched):
    """moto's server (the app and server `moto_server -H 127.0.0.1 -p PORT`
    runs), answering one request at a time, with every DynamoDB call
    logged; with `patched`, two of moto's costs made constant (they change
    how long moto takes, not what it answers):

    - Query without an index: moto compares the hash key of every item in
      the table (O(table)); here it looks at the queried partition only. A
      controller queries the command feed every tick, and the table grows
      with every rollout's events.
    - TransactWriteItems: moto deep-copies the whole table once per item of
      the transaction, to restore it if the transaction is cancelled (over
      100 ms per transaction once the table holds a thousand events); here
      the items the transaction names are copied and restored instead. With
      one request at a time nothing else can change the table meanwhile, so
      a cancelled transaction leaves the same table.

    One at a time: moto serves each request on a thread of its own and its
    DynamoDB backend takes no lock, so two concurrent conditional writes to
    one item can both pass, and a cancelled TransactWriteItems restores a
    copy of the table taken before it ran, undoing concurrent writes (see
    crates/aws/tests/store_dynamodb.rs, which puts a proxy passing one
    request at a time in front of moto for the same reason). DynamoDB makes
    every write atomic; a lock around moto's application does the same here.
    """
    import copy as _copy
    import logging
    import threading

    if patched:
        _patch_moto(_copy)

    from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app
    from werkzeug.serving import run_simple

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no line per request
    app = DomainDispatcherApplication(create_backend_app)
    lock = threading.Lock()
    log = open(log_path, "a", buffering=1)

    def serial(environ, start_response):
        length = int(environ.get("CONTENT_LENGTH") or 0)
        body = environ["wsgi.input"].read(length) if length else b""
        environ["wsgi.input"] = io.BytesIO(body)
        got = {}

        def capture(status, headers, exc_info=None):
            got["status"] = status
            got["headers"] = headers
            return start_response(status, headers, exc_info)

        with lock:
            t0 = now_ms()
            result = app(environ, capture)
            try:
                out = b"".join(result)
            finally:
                if hasattr(result, "close"):
                    result.close()
            t1 = now_ms()
        op = (environ.get("HTTP_X_AMZ_TARGET") or "").split(".")[-1] or environ.get("REQUEST_METHOD")
        status = int(got.get("status", "0").split()[0])
        entry = {"t": t0, "t_end": t1, "pid": None, "op": op, "status": status}
        try:
            items, extra = summarise_ddb(op, json.loads(body or b"{}"))
            entry["items"] = items
            entry.update(extra)
        except ValueError:
            pass
        # Who wrote: every write names its writer (a lease its holder, a
        # rollout version `written_by`), `host:pid`; reads name nobody.
        who = entry.get("holder") or entry.get("writer")
        if who:
            m = re.match(r"^.*:(\d+)(?: create#\d+)?$", who)
            entry["pid"] = int(m.group(1)) if m else None
        if status >= 400:
            try:
                err = json.loads(out)
                entry["error"] = err.get("__type", "").split("#")[-1]
                if "CancellationReasons" in err:
                    entry["reasons"] = [r.get("Code") for r in err["CancellationReasons"]]
            except ValueError:
                entry["error"] = out[:200].decode("latin-1")
        log.write(json.dumps(entry, separators=(",", ":")) + "\n")
        return [out]

    run_simple("127.0.0.1", port, serial, threaded=True, use_reloader=False)


def _patch_moto(_copy):
    import moto.dynamodb.models as models
    from moto.dynamodb.models.dynamo_type import DynamoType
    from moto.dynamodb.models.table import Table

    original_query = Table.query

    def query(self, hash_key, *args, **kwargs):
        index_name = kwargs.get("index_name", args[6] if len(args) > 6 else None)
        if index_name is not None or hash_key is None:
            return original_query(self, hash_key, *args, **kwargs)
        everything = self.items
        part = everything.get(hash_key)
        self.items = {hash_key: part} if part is not None else {}
        try:
            return original_query(self, hash_key, *args, **kwargs)
        finally:
            self.items = everything

    Table.query = query

    state = {"in_transact": False}

    class CopyShim:
        def __getattr__(self, name):
            return getattr(_copy, name)

        def deepcopy(self, x, memo=None):
            if state["in_transact"] and isinstance(x, Table):
                return x  # restored item by item below instead
            return _copy.deepcopy(x, memo)

    models.copy = CopyShim()
    backend_cls = models.DynamoDBBackend
    original_transact = backend_cls.transact_write_items

    def transact_write_items(self, transact_items):
        saved = []
        for it in transact_items:
            try:
                _, op = next(iter(it.items()))
                table = self.tables.get(op.get("TableName"))
                if table is None:
                    continue
                key = op.get("Key") or op.get("Item")
                hk = DynamoType(key[table.hash_key_attr])
                rk = DynamoType(key[table.range_key_attr]) if table.range_key_attr else None
            except (KeyError, TypeError, AttributeError, StopIteration):
                continue  # moto itself refuses such a request
            part = table.items.get(hk)
            current = (part.get(rk) if rk is not None else part) if part is not None else None
            saved.append((table, hk, rk, _copy.deepcopy(current)))
        state["in_transact"] = True
        try:
            return original_transact(self, transact_items)
        except BaseException:
            for table, hk, rk, item in reversed(saved):
                if rk is None:
                    if item is None:
                        table.items.pop(hk, None)
                    else:
                        table.items[hk] = item
                else:
                    part = table.items.get(hk)
                    if item is None:
                        if part is not None:
                            part.pop(rk, None)
                    else:
                        table.items[hk][rk] = item
            raise
        finally:
            state["in_transact"] = False

    backend_cls.transact_write_items = transact_write_items


# --------------------------------------------------------------------------
# analyse

LINE = re.compile(r"^(\S+)  (\d\d:\d\d:\d\d)\s+(\S+ %)  (.*)$")
LOG = re.compile(r"^(\S+Z)\s+(\w+)\s+(\S+): (.*)$")


def clock(ms):
    s = ms // 1000
    return "%02d:%02d:%02d" % (s // 3600 % 24, s // 60 % 60, s % 60)


def parse_rfc3339_ms(s):
    # 2026-12-02T06:13:36.289710Z
    import datetime
    d = datetime.datetime.strptime(s[:26], "%Y-%m-%dT%H:%M:%S.%f").replace(tzinfo=datetime.timezone.utc)
    return int(d.timestamp() * 1000)


def stats(values):
    if not values:
        return "-"
    v = sorted(values)
    return "min %s, median %s, max %s (n=%d)" % (fmt_s(v[0]), fmt_s(statistics.median(v)), fmt_s(v[-1]), len(v))


def fmt_s(ms):
    return "%.2f s" % (ms / 1000.0)


def runs(seq):
    out = []
    for x in seq:
        if not out or out[-1] != x:
            out.append(x)
    return out


def lease_spans(ddb, kill_ms, victim):
    """Per rollout id, who held its lease when: [pid, start, end, how it ended].

    From the successful lease writes in the store log: a PutItem by the
    holder, or an UpdateItem renewal (which only its holder can make),
    renews (end = its expires_at, never earlier), by another pid takes over
    (only possible once the lease expired or was released: checked), a
    DeleteItem releases."""
    spans = {}
    taken_early = []
    for e in ddb:
        if e["status"] != 200:
            continue
        for it in e.get("items", []):
            m = re.match(r"^LEASE#rollout:([^|]+)\|LEASE$", it)
            if not m:
                continue
            rid, pid, t = m.group(1), str(e["pid"]), e["t"]
            ss = spans.setdefault(rid, [])
            cur = ss[-1] if ss and ss[-1][3] is None else None
            if e["op"] == "UpdateItem" and "expires_at" in e:
                if cur and cur[0] == pid:
                    cur[2] = max(cur[2], e["expires_at"])
                continue
            if e["op"] == "PutItem":
                if cur and cur[0] == pid:
                    cur[2] = max(cur[2], e["expires_at"])
                    continue
                if cur:
                    if t < cur[2]:
                        taken_early.append((rid, cur[0], cur[2], pid, t))
                    cur[3] = "expired"
                ss.append([pid, t, e["expires_at"], None])
            elif e["op"] == "DeleteItem" and cur and cur[0] == pid:
                cur[2] = min(cur[2], e["t_end"])
                cur[3] = "released"
    for ss in spans.values():
        for s in ss:
            if s[3] is None:
                s[3] = "killed" if s[0] == victim and s[2] > kill_ms else "expired"
    return spans, taken_early


def holder_at(spans, t):
    """(pid of the unexpired lease at t, or None)."""
    for pid, start, end, _ in spans:
        if start <= t < end:
            return pid
    return None


def analyse(out):
    meta = json.load(open(os.path.join(out, "meta.json")))
    kill_ms = meta["kill_ms"]
    victim = str(meta["victim_pid"])
    replicas = {str(r["pid"]): r["name"] for r in meta["replicas"]}
    api_pid = str(meta["replicas"][0]["pid"])
    name_of = lambda pid: replicas.get(str(pid), "pid %s" % pid if pid else "?")
    rollouts = json.load(open(os.path.join(out, "rollouts.json")))
    by_id = {r["id"]: r for r in rollouts}
    svc_of = {r["id"]: r["service"] for r in rollouts}
    id_of = {r["service"]: r["id"] for r in rollouts}
    events = {rid: json.load(open(os.path.join(out, "events", rid + ".json"))) for rid in by_id}
    created = {rid: evs[0]["at"] for rid, evs in events.items() if evs}
    orphans = set(meta["orphans"])
    lines = []
    say = lines.append
    problems = []
    notes = []

    # ---- outcomes
    phases = {}
    for r in rollouts:
        phases[r["phase"]] = phases.get(r["phase"], 0) + 1
    ok = phases.get("succeeded", 0)
    say("outcome: %d of %d rollouts succeeded (%s)" % (ok, len(rollouts), ", ".join("%s %d" % kv for kv in sorted(phases.items()))))
    for r in rollouts:
        if r["phase"] != "succeeded":
            problems.append("%s ended %s: %s" % (r["id"], r["phase"], r.get("reason")))
    final = meta.get("final_splits", {})
    wrong = [s for s, bp in final.items() if bp != 10000]
    say("proxies at the end: %d of %d with all traffic on green%s" % (len(final) - len(wrong), len(final),
        "" if not wrong else " (not: %s)" % ", ".join("%s=%s%%" % (s, final[s] / 100) for s in wrong)))

    # ---- logs
    ddb = [json.loads(l) for l in open(os.path.join(out, "dynamodb.log"))]
    ddb.sort(key=lambda e: e["t"])
    relay = [json.loads(l) for l in open(os.path.join(out, "admin.log"))]
    relay.sort(key=lambda e: e["t"])
    spans, taken_early = lease_spans(ddb, kill_ms, victim)
    for rid, a, until, b, t in taken_early:
        problems.append("%s: lease taken by %s at %d while %s held it until %d" % (rid, name_of(b), t, name_of(a), until))

    # Each stored event, matched to the replica that printed it (serve
    # prints every event it has persisted, with the rollout's id).
    printed = {}
    for r in meta["replicas"]:
        per = {}
        with open(os.path.join(out, r["name"] + ".out"), errors="replace") as f:
            for l in f:
                m = LINE.match(l.rstrip("\n"))
                if m:
                    per.setdefault(m.group(1), []).append((m.group(2), m.group(4)))
        printed[str(r["pid"])] = per
    attributed = {}
    gaps = []
    unattributed = []
    for rid, evs in events.items():
        if [e["seq"] for e in evs] != list(range(1, len(evs) + 1)):
            gaps.append(rid)
        ptr = {pid: 0 for pid in printed}
        who = []
        for e in evs:
            key = (clock(e["at"]), e["message"])
            hit = [pid for pid in printed
                   if ptr[pid] < len(printed[pid].get(rid, [])) and printed[pid][rid][ptr[pid]] == key]
            if e["seq"] == 1:
                # Written by whoever created it (the API's replica prints
                # it too); not a driver's.
                for p in hit:
                    ptr[p] += 1
                who.append("create")
                continue
            if len(hit) > 1:
                problems.append("%s seq %d printed by %s" % (rid, e["seq"], ", ".join(name_of(p) for p in hit)))
            for p in hit:
                ptr[p] += 1
            who.append(hit[0] if len(hit) == 1 else None)
            if not hit:
                unattributed.append((rid, e["seq"], e["message"], e["at"]))
        attributed[rid] = who
        for pid in printed:
            left = printed[pid].get(rid, [])[ptr[pid]:]
            if left:
                problems.append("%s: %d line(s) printed by %s match no stored event, e.g. %r" % (rid, len(left), name_of(pid), left[0]))
    if gaps:
        problems.append("event seq not contiguous: %s" % ", ".join(gaps))
    n_events = sum(len(v) for v in events.values())
    n_attr = sum(1 for w in attributed.values() for x in w if x and x != "create")
    last_words = [u for u in unattributed if kill_ms - 2000 <= u[3] <= kill_ms]
    say("events: %d stored, seq 1..n without gap in %d of %d rollouts; %d matched to the one replica that printed them, %d to none%s" % (
        n_events, len(events) - len(gaps), len(events), n_attr, len(unattributed),
        (" (%d of them stored in the 2 s before the kill: the killed replica's last writes, not yet printed)" % len(last_words)) if unattributed else ""))
    for u in unattributed:
        if u not in last_words:
            problems.append("%s seq %d printed by no replica: %r" % (u[0], u[1], u[2]))
    handovers = {}
    for rid, who in attributed.items():
        seq = runs([w for w in who if w and w != "create"])
        handovers[len(seq) - 1] = handovers.get(len(seq) - 1, 0) + 1
    say("  drivers per rollout in event order: %s" % ", ".join(
        "%d rollout(s) with %d handover(s)" % (n, h) for h, n in sorted(handovers.items())))

    # ---- one driver at a time: every action against the lease
    say("")
    say("one driver at a time: every action of a replica on a rollout, checked against who held that rollout's lease then")
    say("  (lease: from moto's log of every DynamoDB write; a lease is taken only once it has expired or been released)")
    n_spans = sum(len(v) for v in spans.values())
    say("  lease spans: %d over %d rollouts; taken while another's was unexpired: %d" % (n_spans, len(spans), len(taken_early)))
    kinds = {}
    def check(source, rid, pid, t, what):
        ss = spans.get(rid, [])
        h = holder_at(ss, t)
        if h == pid:
            k = "own lease"
        elif h is None:
            k = "no lease held by anyone"
        else:
            k = "ANOTHER REPLICA HELD THE LEASE"
            problems.append("%s: %s by %s at %d (%s) while %s held the lease" % (source, what, name_of(pid), t, rid, name_of(h)))
        kinds.setdefault(source, {}).setdefault(k, []).append((rid, pid, t, what))
    # router calls: the relay's log
    for c in relay:
        rid = id_of.get(c["svc"])
        if rid is None or c["t"] < created.get(rid, 0):
            continue  # the API's read of the router before it creates the rollout
        what = "%s %s%s" % (c["method"], c["path"], " " + c.get("body", "") if c["method"] == "PUT" else "")
        check("router call", rid, str(c["pid"]), c["t"], what)
    # writes of the rollout item: the store log
    for e in ddb:
        if e["status"] != 200 or e["op"] not in ("TransactWriteItems", "UpdateItem"):
            continue
        for it in e.get("items", []):
            m = re.match(r"^(?:U:)?ROLLOUT#([^|]+)\|ROLLOUT$", it)
            if m:
                check("rollout write", m.group(1), str(e["pid"]), e["t"], e["op"])
    for source in ("router call", "rollout write"):
        k = kinds.get(source, {})
        say("  %-13s %5d: %s" % (source + "s", sum(len(v) for v in k.values()),
            ", ".join("%d %s" % (len(v), kk) for kk, v in sorted(k.items())) or "-"))
    bad = kinds.get("router call", {})
    for kk in ("ANOTHER REPLICA HELD THE LEASE", "no lease held by anyone"):
        if bad.get(kk):
            puts = [x for x in bad[kk] if x[3].startswith("PUT")]
            say("    router calls with %s: %d PUT /split (%s), %d reads" % (
                kk.lower(), len(puts), ", ".join("%s %s" % (svc_of[x[0]], x[3].split(" ", 2)[-1]) for x in puts) or "-",
                len(bad[kk]) - len(puts)))
    # Leases that ran out while their holder still drove: the holder acted
    # on the rollout after its lease's end without having released it.
    lapsed = []
    acted = {}
    for source in kinds.values():
        for lst in source.values():
            for rid, pid, t, what in lst:
                acted.setdefault((rid, pid), []).append(t)
    for rid, ss in spans.items():
        for pid, start, end, how in ss:
            if how == "expired" and any(t > end for t in acted.get((rid, pid), [])):
                later = [x for x in ss if x[1] >= end and x[0] != pid]
                lapsed.append((rid, pid, end, later[0][0] if later else None, later[0][1] if later else None))
    say("  leases that ran out under a driver still acting: %d%s" % (len(lapsed), (" (%s)" % ", ".join(sorted({name_of(l[1]) for l in lapsed}))) if lapsed else ""))
    for rid, pid, end, nxt, at in lapsed:
        notes.append("%s: %s's lease ran out at %+.3f s from the kill while it still drove; %s" % (
            svc_of.get(rid, rid), name_of(pid), (end - kill_ms) / 1000,
            "taken by %s at %+.3f s" % (name_of(nxt), (at - kill_ms) / 1000) if nxt else "nobody took it"))
    # Lease renewal: the longest a replica left one of its leases unrenewed.
    worst = {}
    renew_gaps = {}
    for e in ddb:
        if e["op"] in ("PutItem", "UpdateItem") and e.get("holder") and e["status"] == 200:
            for it in e.get("items", []):
                renew_gaps.setdefault((it, e["pid"]), []).append(e["t"])
    for (it, pid), ts in renew_gaps.items():
        for a, b in zip(ts, ts[1:]):
            worst[str(pid)] = max(worst.get(str(pid), 0), b - a)
    say("  longest time between two renewals of one lease, per replica (TTL %s): %s" % (
        fmt_s(meta["lease_ttl_ms"]), ", ".join("%s %s" % (name_of(p), fmt_s(v)) for p, v in sorted(worst.items(), key=lambda kv: name_of(kv[0])))))
    for source in ("router call", "rollout write"):
        for rid, pid, t, what in kinds.get(source, {}).get("no lease held by anyone", []):
            ss = spans.get(rid, [])
            last = [s for s in ss if s[0] == pid and s[2] <= t]
            after = ("%d ms after its lease %s" % (t - last[-1][2], last[-1][3])) if last else "before it held any lease"
            notes.append("%s %s by %s on %s at %+.3f s from the kill, %s" % (source, what, name_of(pid), svc_of.get(rid, rid), (t - kill_ms) / 1000, after))
    say("  (the proxy's admin API records no caller; the relay in front of it names the process of each call)")

    # ---- takeover times
    first_call, first_event, first_log, idle = [], [], [], []
    rows = []
    took_log = {}
    for r in meta["replicas"]:
        pid = str(r["pid"])
        with open(os.path.join(out, r["name"] + ".err"), errors="replace") as f:
            for l in f:
                m = LOG.match(l.rstrip("\n"))
                if m and m.group(4).startswith("driving rollout"):
                    rid = re.search(r"rollout=(\S+)", m.group(4)).group(1)
                    took_log.setdefault(rid, []).append((parse_rfc3339_ms(m.group(1)), pid))
    per_svc = {}
    for c in relay:
        per_svc.setdefault(c["svc"], []).append(c)
    took_by = {}
    for rid in sorted(orphans):
        calls = per_svc.get(svc_of[rid], [])
        after = [c for c in calls if c["t"] > kill_ms and str(c["pid"]) != victim]
        before = [c for c in calls if c["t"] <= kill_ms and str(c["pid"]) == victim]
        ev = next((e for e in events[rid] if e["at"] > kill_ms), None)
        lg = [t for t, pid in took_log.get(rid, []) if pid != victim and t > kill_ms]
        row = [svc_of[rid]]
        if after:
            first_call.append(after[0]["t"] - kill_ms)
            took_by[name_of(after[0]["pid"])] = took_by.get(name_of(after[0]["pid"]), 0) + 1
            row.append("%s %s %s at +%s" % (name_of(after[0]["pid"]), after[0]["method"], after[0]["path"], fmt_s(after[0]["t"] - kill_ms)))
            if before:
                idle.append(after[0]["t"] - before[-1]["t_end"])
        else:
            row.append("no router call after the kill")
        if ev:
            first_event.append(ev["at"] - kill_ms)
            row.append("seq %d at +%s: %s" % (ev["seq"], fmt_s(ev["at"] - kill_ms), ev["message"][:90]))
        else:
            row.append("no event after the kill")
        if lg:
            first_log.append(min(lg) - kill_ms)
        rows.append(row)
    say("")
    say("orphans (what the killed replica drove when it was killed): %d" % len(orphans))
    say("takeover, from the kill to each orphan's next action by a survivor:")
    say("  first router call (relay log; a resumed driver reads the split first): %s" % stats(first_call))
    say("  first stored event after the kill ('resumed: ...'):                   %s" % stats(first_event))
    say("  survivor's log 'driving rollout ... orphan=true':                      %s" % stats(first_log))
    say("  bound: lease TTL %s (renewed every third) + scan %s = %s" % (fmt_s(meta["lease_ttl_ms"]), fmt_s(meta["scan_ms"]), fmt_s(meta["lease_ttl_ms"] + meta["scan_ms"])))
    waits = []
    for rid in orphans:
        ss = spans.get(rid, [])
        vic = [x for x in ss if x[0] == victim]
        nxt = [x for x in ss if x[0] != victim and x[1] > kill_ms]
        if vic and nxt:
            waits.append(nxt[0][1] - vic[-1][2])
    say("  of which: the killed replica's lease running out, then its expiry to a survivor's lease: %s" % stats(waits))
    say("  router calls paused (killed replica's last call to a survivor's first; includes the wait for the next analysis): %s" % stats(idle))
    say("  orphans taken over by: %s" % (", ".join("%s %d" % kv for kv in sorted(took_by.items())) or "-"))
    dur = lambda r: (r["ended_at"] - r["started_at"]) if r.get("ended_at") and r.get("started_at") else None
    d_orph = [dur(by_id[r]) for r in orphans if dur(by_id[r])]
    d_rest = [dur(r) for r in rollouts if r["id"] not in orphans and dur(r)]
    say("rollout duration, started to ended: orphans %s; others %s" % (stats(d_orph), stats(d_rest)))
    ops = {}
    for e in ddb:
        o = ops.setdefault(e["op"], [0, 0])
        o[0] += 1
        o[1] += e["t_end"] - e["t"]
    span_s = (ddb[-1]["t_end"] - ddb[0]["t"]) / 1000 if ddb else 1
    say("store: %d DynamoDB calls in %.0f s (%.0f/s), moto busy %.0f %% of the time; %s" % (
        len(ddb), span_s, len(ddb) / span_s, 100 * sum(o[1] for o in ops.values()) / 1000 / span_s,
        ", ".join("%s %d (%.1f ms)" % (k, v[0], v[1] / v[0]) for k, v in sorted(ops.items(), key=lambda kv: -kv[1][0]))))
    errs = {}
    for r in meta["replicas"]:
        with open(os.path.join(out, r["name"] + ".err"), errors="replace") as f:
            for l in f:
                m = LOG.match(l.rstrip("\n"))
                if m and m.group(2) in ("WARN", "ERROR"):
                    msg = re.sub(r"rollout=\S+ ?", "", m.group(4))
                    msg = re.sub(r"\d+(\.\d+)?(ms|s)\b", "N", msg)[:140]
                    errs[(r["name"], m.group(2), msg)] = errs.get((r["name"], m.group(2), msg), 0) + 1
    say("replica warnings and errors: %s" % ("none" if not errs else ""))
    for (n, lvl, msg), c in sorted(errs.items()):
        say("  %s %s x%d: %s" % (n, lvl, c, msg))
    say("")
    say("per orphan: service | first router call after the kill | first event after the kill")
    for row in rows:
        say("  " + " | ".join(row))
    if notes:
        say("")
        say("actions while nobody held the lease (%d):" % len(notes))
        for n in notes[:40]:
            say("  " + n)
    say("")
    if problems:
        say("PROBLEMS (%d):" % len(problems))
        for p in problems[:200]:
            say("  " + p)
    else:
        say("no problems: every rollout succeeded, and no replica acted on a rollout while another held its lease")
    print("\n".join(lines))


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    cmd = sys.argv[1]
    if cmd == "relay":
        asyncio.run(relay_main(sys.argv[2], sys.argv[3], sys.argv[4]))
    elif cmd == "moto":
        moto_main(int(sys.argv[2]), sys.argv[3], sys.argv[4] == "patched")
    elif cmd == "analyse":
        analyse(sys.argv[2])
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
