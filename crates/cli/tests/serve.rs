//! `cutover serve` as users run it: the real binary with a plan directory,
//! real proxies and sample apps on loopback, real SQLite, its HTTP API
//! spoken over TCP, a real Prometheus scraping it.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use cutover_local::{DemoAppConfig, DemoAppHandle, ProxyConfig, ProxyHandle};
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_cutover");

/// A blue and a green app behind a proxy.
struct Stage {
    proxy: ProxyHandle,
    _blue: DemoAppHandle,
    _green: DemoAppHandle,
}

impl Stage {
    async fn new() -> Stage {
        let any = "127.0.0.1:0".parse().unwrap();
        let blue = cutover_local::start_demo_app(any, DemoAppConfig::new("blue"))
            .await
            .unwrap();
        let green = cutover_local::start_demo_app(any, DemoAppConfig::new("green"))
            .await
            .unwrap();
        let config = ProxyConfig::for_upstreams(&[&blue.url()], &[&green.url()]).unwrap();
        let proxy = cutover_local::start(config).await.unwrap();
        Stage {
            proxy,
            _blue: blue,
            _green: green,
        }
    }
}

fn write_plan(dir: &Path, file: &str, service: &str, stage: &Stage, store: &Path, holds: &str) {
    let text = format!(
        "[service]\nname = \"{service}\"\n[router]\nkind = \"local\"\nadmin_url = \"http://{}\"\n\
         [strategy]\nsteps = [{{ split = 20, hold = \"{holds}\" }}, {{ split = 100, hold = \"{holds}\" }}]\n\
         [analysis]\ninterval = \"200ms\"\n[store]\nkind = \"sqlite\"\npath = \"{}\"\n",
        stage.proxy.admin_addr(),
        store.display()
    );
    std::fs::write(dir.join(file), text).unwrap();
}

/// A running `cutover serve`, its address, and its output line by line.
struct Serve {
    child: Child,
    addr: SocketAddr,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Serve {
    fn start(plans: &Path, extra: &[&str]) -> Serve {
        let mut child = Command::new(BIN)
            .args([
                "serve",
                "--plans",
                plans.to_str().unwrap(),
                "--listen",
                "127.0.0.1:0",
            ])
            .args(["--tick", "100ms", "--scan", "200ms"])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let (tx, lines) = mpsc::channel();
        for out in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(out).lines().map_while(Result::ok) {
                    let _ = tx.send(line);
                }
            });
        }
        let mut serve = Serve {
            child,
            addr: "127.0.0.1:1".parse().unwrap(),
            lines,
            seen: Vec::new(),
        };
        let line = serve.wait_line("serving on http://");
        let addr = line
            .split("serving on http://")
            .nth(1)
            .and_then(|r| r.split_whitespace().next())
            .unwrap();
        serve.addr = addr.parse().unwrap();
        serve
    }

    /// Waits for an output line containing `want` (at most 30 s).
    fn wait_line(&mut self, want: &str) -> String {
        if let Some(l) = self.seen.iter().find(|l| l.contains(want)) {
            return l.clone();
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if line.contains(want) {
                        return line;
                    }
                }
                Err(_) => panic!(
                    "no line with `{want}`; output so far:\n{}",
                    self.seen.join("\n")
                ),
            }
        }
    }

    fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([&format!("-{sig}"), &self.child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok);
    }

    /// SIGTERM, then the exit code and the rest of the output.
    /// Waits for the process to exit on its own, at most `limit`; kills it
    /// and panics with its output if it does not.
    fn exits_within(mut self, limit: Duration) -> (i32, String) {
        let mut child = self.child;
        let (tx, rx) = mpsc::channel();
        let pid = child.id();
        std::thread::spawn(move || {
            let _ = tx.send(child.wait());
        });
        let status = match rx.recv_timeout(limit) {
            Ok(status) => status.unwrap(),
            Err(_) => {
                let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
                while let Ok(l) = self.lines.recv_timeout(Duration::from_secs(2)) {
                    self.seen.push(l);
                }
                panic!(
                    "serve did not exit within {limit:?}; output:\n{}",
                    self.seen.join("\n")
                );
            }
        };
        while let Ok(l) = self.lines.recv_timeout(Duration::from_secs(2)) {
            self.seen.push(l);
        }
        (status.code().expect("exited"), self.seen.join("\n"))
    }

    fn stop(mut self) -> (i32, String) {
        self.signal("TERM");
        let status = self.child.wait().unwrap();
        while let Ok(l) = self.lines.recv_timeout(Duration::from_secs(2)) {
            self.seen.push(l);
        }
        (status.code().expect("exited"), self.seen.join("\n"))
    }
}

/// One HTTP/1.1 exchange; returns the status and body.
fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let body = body.unwrap_or("");
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let status = out[9..12].parse().unwrap();
    let body = out
        .split_once("\r\n\r\n")
        .map(|x| x.1)
        .unwrap_or("")
        .to_string();
    (status, body)
}

fn get(addr: SocketAddr, path: &str) -> Value {
    let (status, body) = http(addr, "GET", path, None, None);
    assert_eq!(status, 200, "GET {path}: {body}");
    serde_json::from_str(&body).unwrap()
}

/// Polls `path` until `cond` holds (at most 30 s).
fn wait_json(addr: SocketAddr, path: &str, cond: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, body) = http(addr, "GET", path, None, None);
        if status == 200 {
            let v: Value = serde_json::from_str(&body).unwrap();
            if cond(&v) {
                return v;
            }
        }
        assert!(Instant::now() < deadline, "timed out on {path}: {body}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Opens an event stream and collects `event:` / `data:` pairs on a thread.
fn stream(addr: SocketAddr, path: &str) -> mpsc::Receiver<(String, Value)> {
    let mut s = TcpStream::connect(addr).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    // Past the response head, the server is subscribed: nothing is missed.
    let mut reader = BufReader::new(s);
    let mut head = String::new();
    while reader.read_line(&mut head).unwrap() > 0 && !head.ends_with("\r\n\r\n") {}
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut kind = String::new();
        for line in reader.lines().map_while(Result::ok) {
            if let Some(k) = line.strip_prefix("event: ") {
                kind = k.to_string();
            } else if let Some(d) = line.strip_prefix("data: ") {
                if let Ok(v) = serde_json::from_str(d) {
                    if tx.send((kind.clone(), v)).is_err() {
                        return;
                    }
                }
            }
        }
    });
    rx
}

fn plans_dir() -> (tempfile::TempDir, PathBuf, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let plans = dir.path().join("plans");
    std::fs::create_dir(&plans).unwrap();
    let store = dir.path().join("store.db");
    (dir, plans, store)
}

#[tokio::test(flavor = "multi_thread")]
async fn the_api_starts_one_rollout_per_key_and_streams_it_to_its_end() {
    let stage = Stage::new().await;
    let (_dir, plans, store) = plans_dir();
    write_plan(&plans, "web.toml", "web", &stage, &store, "600ms");
    std::fs::write(
        plans.join("broken.toml"),
        "[service]\nname = \"x\"\n[router]\nkind = \"nope\"\n",
    )
    .unwrap();
    let mut serve = tokio::task::spawn_blocking(move || Serve::start(&plans, &[]))
        .await
        .unwrap();
    // The bad file is reported with its location and the rest is served.
    serve.wait_line("broken.toml:");
    let addr = serve.addr;
    let services = get(addr, "/v1/services");
    assert_eq!(
        services["services"].as_array().unwrap().len(),
        1,
        "{services}"
    );
    assert_eq!(services["services"][0]["service"], "web");

    let events = stream(addr, "/v1/stream");
    // The same key twice, at once: one rollout.
    let create = || {
        std::thread::spawn(move || {
            http(
                addr,
                "POST",
                "/v1/rollouts",
                None,
                Some(r#"{"service":"web","idempotency_key":"build-7","label":"v7"}"#),
            )
        })
    };
    let (a, b) = (create(), create());
    let (a, b) = (a.join().unwrap(), b.join().unwrap());
    let mut statuses = [a.0, b.0];
    statuses.sort();
    assert_eq!(statuses, [200, 201], "{a:?} {b:?}");
    let ra: Value = serde_json::from_str(&a.1).unwrap();
    let rb: Value = serde_json::from_str(&b.1).unwrap();
    assert_eq!(ra["id"], rb["id"]);
    let id = ra["id"].as_str().unwrap().to_string();
    assert_eq!(ra["label"], "v7");

    // The stream carries its events as they happen, to the end.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut seen = Vec::new();
    loop {
        let (kind, v) = events
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .expect("stream events");
        if kind == "event" {
            assert_eq!(v["rollout"], id.as_str());
            seen.push(v["message"].as_str().unwrap().to_string());
            if v["phase"] == "succeeded" {
                break;
            }
        }
    }
    assert!(
        seen.iter()
            .any(|m| m.contains("shifting to 20 % on candidate `green`")),
        "{seen:?}"
    );
    assert_eq!(stage.proxy.split().percent(), 100.0);
    let listed = get(addr, "/v1/rollouts?service=web");
    assert_eq!(
        listed["rollouts"].as_array().unwrap().len(),
        1,
        "never two: {listed}"
    );

    // The event log, a page at a time, every event once in order.
    let mut after = 0;
    let mut seqs = Vec::new();
    loop {
        let page = get(
            addr,
            &format!("/v1/rollouts/{id}/events?after={after}&limit=3"),
        );
        let batch = page["events"].as_array().unwrap();
        seqs.extend(batch.iter().map(|e| e["seq"].as_u64().unwrap()));
        after = page["next_after"].as_u64().unwrap();
        if !page["more"].as_bool().unwrap() {
            break;
        }
    }
    let total = get(addr, &format!("/v1/rollouts/{id}"))["events"]
        .as_u64()
        .unwrap();
    assert_eq!(seqs, (1..=total).collect::<Vec<_>>());
    // A rollout's own stream replays from the start and ends with it.
    let own = stream(addr, &format!("/v1/rollouts/{id}/stream"));
    let mut n = 0;
    while let Ok((kind, _)) = own.recv_timeout(Duration::from_secs(5)) {
        n += (kind == "event") as u64;
    }
    assert_eq!(n, total);

    // Bad requests: clear JSON errors with the right status.
    let (s, body) = http(
        addr,
        "POST",
        &format!("/v1/rollouts/{id}/commands"),
        None,
        Some(r#"{"command":"abort"}"#),
    );
    assert_eq!(s, 409, "{body}");
    assert!(body.contains("has ended (succeeded)"), "{body}");
    let (s, body) = http(
        addr,
        "POST",
        "/v1/rollouts",
        None,
        Some(r#"{"service":"web","imag":"x"}"#),
    );
    assert_eq!(s, 400, "{body}");
    assert!(body.contains("unknown field `imag`"), "{body}");
    let (s, body) = http(
        addr,
        "POST",
        "/v1/rollouts",
        None,
        Some(r#"{"service":"nope"}"#),
    );
    assert_eq!(s, 404, "{body}");
    assert!(body.contains("no plan for service `nope`"), "{body}");
    let big = format!(r#"{{"service":"web","label":"{}"}}"#, "x".repeat(70_000));
    let (s, _) = http(addr, "POST", "/v1/rollouts", None, Some(&big));
    assert_eq!(s, 413);
    let (s, body) = http(addr, "GET", "/v1/rollouts/none?", None, None);
    assert_eq!(s, 404, "{body}");
    let (s, body) = http(addr, "GET", "/v1/rollouts/x/events?after=-1", None, None);
    assert!(
        s == 404 || (s == 400 && body.contains("`after`")),
        "{s} {body}"
    );
    // Done again: the candidate holds everything, nothing moves backwards.
    let (s, body) = http(
        addr,
        "POST",
        "/v1/rollouts",
        None,
        Some(r#"{"service":"web"}"#),
    );
    assert_eq!(s, 409, "{body}");
    assert!(body.contains("refused before any traffic moved"), "{body}");

    let (code, log) = tokio::task::spawn_blocking(move || serve.stop())
        .await
        .unwrap();
    assert_eq!(code, 0, "{log}");
}

#[tokio::test(flavor = "multi_thread")]
async fn commands_through_the_api_steer_the_rollout() {
    let stage = Stage::new().await;
    let (_dir, plans, store) = plans_dir();
    write_plan(&plans, "web.toml", "web", &stage, &store, "1m");
    let serve = tokio::task::spawn_blocking(move || Serve::start(&plans, &[]))
        .await
        .unwrap();
    let addr = serve.addr;
    let (s, body) = http(
        addr,
        "POST",
        "/v1/rollouts",
        None,
        Some(r#"{"service":"web"}"#),
    );
    assert_eq!(s, 201, "{body}");
    let id = serde_json::from_str::<Value>(&body).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    wait_json(addr, &format!("/v1/rollouts/{id}"), |v| {
        v["phase"] == "holding"
    });
    let (s, body) = http(
        addr,
        "POST",
        &format!("/v1/rollouts/{id}/commands"),
        None,
        Some(r#"{"command":"resume"}"#),
    );
    assert_eq!(s, 409, "{body}");
    assert!(
        body.contains("cannot resume a rollout that is holding"),
        "{body}"
    );
    let (s, body) = http(
        addr,
        "POST",
        &format!("/v1/rollouts/{id}/commands"),
        None,
        Some(r#"{"command":"abort"}"#),
    );
    assert_eq!(s, 202, "{body}");
    let v = wait_json(addr, &format!("/v1/rollouts/{id}"), |v| {
        v["phase"] == "aborted"
    });
    assert_eq!(v["traffic"], "all traffic on live `blue`");
    assert_eq!(stage.proxy.split().percent(), 0.0);
    let (code, log) = tokio::task::spawn_blocking(move || serve.stop())
        .await
        .unwrap();
    assert_eq!(code, 0, "{log}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_token_is_required_beyond_loopback_and_checked() {
    let (_dir, plans, _store) = plans_dir();
    let o = Command::new(BIN)
        .args([
            "serve",
            "--plans",
            plans.to_str().unwrap(),
            "--listen",
            "0.0.0.0:0",
        ])
        .env_remove("CUTOVER_API_TOKEN")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("give the API a token"),
        "{o:?}"
    );

    let p = plans.clone();
    let serve = tokio::task::spawn_blocking(move || Serve::start(&p, &["--token", "s3cret"]))
        .await
        .unwrap();
    let addr = serve.addr;
    let (s, body) = http(addr, "GET", "/v1/services", None, None);
    assert_eq!(s, 401, "{body}");
    assert!(body.contains("bearer token"), "{body}");
    assert_eq!(
        http(addr, "GET", "/v1/services", Some("wrong"), None).0,
        401
    );
    assert_eq!(http(addr, "GET", "/metrics", None, None).0, 401);
    assert_eq!(
        http(addr, "GET", "/v1/services", Some("s3cret"), None).0,
        200
    );
    assert_eq!(http(addr, "GET", "/healthz", None, None).0, 200);
    let (code, log) = tokio::task::spawn_blocking(move || serve.stop())
        .await
        .unwrap();
    assert_eq!(code, 0, "{log}");
}

#[tokio::test(flavor = "multi_thread")]
async fn plans_are_read_again_on_change_and_a_broken_edit_keeps_the_last_good_one() {
    let stage = Stage::new().await;
    let (_dir, plans, store) = plans_dir();
    let p = plans.clone();
    let mut serve = tokio::task::spawn_blocking(move || {
        Serve::start(&p, &["--store", store.to_str().unwrap()])
    })
    .await
    .unwrap();
    let addr = serve.addr;
    assert_eq!(
        get(addr, "/v1/services")["services"]
            .as_array()
            .unwrap()
            .len(),
        0
    );
    let store = _dir.path().join("store.db");
    write_plan(&plans, "web.toml", "web", &stage, &store, "1m");
    wait_json(addr, "/v1/services", |v| {
        v["services"].as_array().unwrap().len() == 1
    });
    // A broken edit: reported with its place, the version read before stays.
    std::fs::write(
        plans.join("web.toml"),
        "[service]\nname = \"web\"\n[strategy]\npreset = 3\n",
    )
    .unwrap();
    let line = tokio::task::spawn_blocking(move || {
        let l = serve.wait_line("keeping the version read before");
        (serve, l)
    })
    .await
    .unwrap();
    let (serve, line) = line;
    assert!(line.contains("web.toml:"), "{line}");
    assert_eq!(get(addr, "/v1/services")["services"][0]["service"], "web");
    // SIGHUP reads the directory again at once.
    write_plan(&plans, "api.toml", "api", &stage, &store, "1m");
    serve.signal("HUP");
    wait_json(addr, "/v1/services", |v| {
        v["services"].as_array().unwrap().len() == 2
    });
    let (code, log) = tokio::task::spawn_blocking(move || serve.stop())
        .await
        .unwrap();
    assert_eq!(code, 0, "{log}");
}

/// A SIGTERM that arrives while serve reads its plans again (2,000 of
/// them, after a SIGHUP) still stops it: it used to listen for SIGTERM
/// afresh after each reading, and one sent meanwhile was lost.
#[tokio::test(flavor = "multi_thread")]
async fn a_sigterm_during_a_plan_reload_still_stops_serve() {
    let stage = Stage::new().await;
    let (_dir, plans, store) = plans_dir();
    for i in 0..2000 {
        write_plan(
            &plans,
            &format!("s{i}.toml"),
            &format!("s{i}"),
            &stage,
            &store,
            "1m",
        );
    }
    let p = plans.clone();
    let serve = tokio::task::spawn_blocking(move || Serve::start(&p, &[]))
        .await
        .unwrap();
    serve.signal("HUP");
    serve.signal("TERM");
    let (code, log) =
        tokio::task::spawn_blocking(move || serve.exits_within(Duration::from_secs(30)))
            .await
            .unwrap();
    assert_eq!(code, 0, "{log}");
}

#[tokio::test(flavor = "multi_thread")]
async fn serve_finishes_what_a_killed_run_left_and_a_stopped_replica_hands_over_at_once() {
    let stage = Stage::new().await;
    let (_dir, plans, store) = plans_dir();
    write_plan(&plans, "web.toml", "web", &stage, &store, "3s");
    // A `cutover run` is killed with -9 during the first hold.
    let mut run = Command::new(BIN)
        .args([
            "run",
            plans.join("web.toml").to_str().unwrap(),
            "--tick",
            "100ms",
            "--lease-ttl",
            "1s",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while stage.proxy.split().percent() != 20.0 {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    run.kill().unwrap();
    run.wait().unwrap();

    // Replica A (long leases, so a handover that waited for one would be late).
    let p = plans.clone();
    let mut a = tokio::task::spawn_blocking(move || Serve::start(&p, &["--lease-ttl", "30s"]))
        .await
        .unwrap();
    let line = tokio::task::spawn_blocking(move || {
        let l = a.wait_line("taken over");
        (a, l)
    })
    .await
    .unwrap();
    let (a, line) = line;
    assert!(line.contains("web-"), "{line}");
    let p = plans.clone();
    let b = tokio::task::spawn_blocking(move || Serve::start(&p, &["--lease-ttl", "30s"]))
        .await
        .unwrap();
    // A stops (SIGTERM) while holding 100 %: B finishes on schedule.
    while stage.proxy.split().percent() != 100.0 {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let stopped = Instant::now();
    let (code, log) = tokio::task::spawn_blocking(move || a.stop()).await.unwrap();
    assert_eq!(code, 0, "{log}");
    let addr = b.addr;
    let v = wait_json(addr, "/v1/rollouts?service=web", |v| {
        v["rollouts"][0]["phase"] == "succeeded"
    });
    assert!(
        stopped.elapsed() < Duration::from_secs(10),
        "handed over at once, not after the 30 s lease"
    );
    assert!(
        v["rollouts"][0]["written_by"]
            .as_str()
            .unwrap()
            .ends_with(&format!(":{}", b.child.id())),
        "{v}"
    );
    let (code, log) = tokio::task::spawn_blocking(move || b.stop()).await.unwrap();
    assert_eq!(code, 0, "{log}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_real_prometheus_scrapes_the_metrics() {
    let stage = Stage::new().await;
    let (dir, plans, store) = plans_dir();
    write_plan(&plans, "web.toml", "web", &stage, &store, "1m");
    let serve = tokio::task::spawn_blocking(move || Serve::start(&plans, &[]))
        .await
        .unwrap();
    let addr = serve.addr;
    let (s, body) = http(
        addr,
        "POST",
        "/v1/rollouts",
        None,
        Some(r#"{"service":"web"}"#),
    );
    assert_eq!(s, 201, "{body}");
    let prom = cutover_testkit::prometheus::Prometheus::start(
        dir.path(),
        "1s",
        &[cutover_testkit::prometheus::Target {
            job: "cutover",
            addr,
            path: "/metrics",
        }],
    );
    // Ask Prometheus itself for the series it scraped.
    let body = prom.wait_for_series("cutover_split_ratio%7Bservice%3D%22web%22%7D");
    let v: Value = serde_json::from_str(&body).unwrap();
    let value = v["data"]["result"][0]["value"][1].as_str().unwrap();
    assert_eq!(value, "0.2", "the candidate's share as the router has it");
    // Every family docs/serve.md lists is exposed, with what this rollout
    // has made of them so far.
    let (status, text) = http(addr, "GET", "/metrics", None, None);
    assert_eq!(status, 200);
    for family in [
        "cutover_rollouts",
        "cutover_split_ratio",
        "cutover_verdicts",
        "cutover_rollbacks",
        "cutover_step_duration_seconds",
        "cutover_adapter_call_seconds",
        "cutover_adapter_errors",
        "cutover_lease_takeovers",
        "cutover_trigger_events",
    ] {
        assert!(
            text.contains(&format!("# HELP {family} ")),
            "{family} missing:\n{text}"
        );
    }
    for sample in [
        "cutover_rollouts{phase=\"holding\"} 1",
        "cutover_split_ratio{service=\"web\"} 0.2",
        "cutover_lease_takeovers_total 0",
        "cutover_adapter_call_seconds_count{adapter=\"router:local\",operation=\"apply\"} 1",
        "cutover_adapter_call_seconds_count{adapter=\"store:sqlite\",operation=\"create\"} 1",
    ] {
        assert!(text.contains(sample), "no `{sample}` in:\n{text}");
    }
    drop(prom);
    let (code, log) = tokio::task::spawn_blocking(move || serve.stop())
        .await
        .unwrap();
    assert_eq!(code, 0, "{log}");
}
