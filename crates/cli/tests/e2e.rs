//! The real `cutover` binary against a real proxy, real sample apps and a
//! real SQLite store, all on loopback.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use cutover_core::Split;
use cutover_local::{DemoAppConfig, DemoAppHandle, ProxyConfig, ProxyHandle};
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_cutover");

fn cutover(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .output()
        .expect("the binary runs")
}

fn code(o: &Output) -> i32 {
    o.status.code().expect("exited, not killed")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// A blue and a green app behind a proxy, and a plan file for them.
struct Stage {
    dir: tempfile::TempDir,
    proxy: ProxyHandle,
    _blue: DemoAppHandle,
    green: DemoAppHandle,
}

impl Stage {
    async fn new() -> Stage {
        let any = "127.0.0.1:0".parse().unwrap();
        let app = |c: &str| DemoAppConfig {
            colour: c.into(),
            fail_ratio: 0.0,
            latency: Duration::ZERO,
        };
        let blue = cutover_local::start_demo_app(any, app("blue"))
            .await
            .unwrap();
        let green = cutover_local::start_demo_app(any, app("green"))
            .await
            .unwrap();
        let config = ProxyConfig::for_upstreams(&[&blue.url()], &[&green.url()]).unwrap();
        let proxy = cutover_local::start(config).await.unwrap();
        Stage {
            dir: tempfile::tempdir().unwrap(),
            proxy,
            _blue: blue,
            green,
        }
    }

    fn store(&self) -> PathBuf {
        self.dir.path().join("store.db")
    }

    /// Writes a plan with the given strategy and one `http` check on green.
    fn plan(&self, strategy: &str) -> PathBuf {
        self.plan_with(&format!("http://{}", self.proxy.admin_addr()), strategy, "")
    }

    /// The same with the router at `admin_url` and `extra` TOML appended.
    fn plan_with(&self, admin_url: &str, strategy: &str, extra: &str) -> PathBuf {
        let path = self.dir.path().join("plan.toml");
        let text = format!(
            "[service]\nname = \"web\"\n[router]\nkind = \"local\"\nadmin_url = \"{admin_url}\"\n[strategy]\n{strategy}\n\
             [analysis]\ninterval = \"200ms\"\n[[analysis.checks]]\nkind = \"http\"\nurl = \"{}/\"\n\
             [store]\nkind = \"sqlite\"\npath = \"{}\"\n{extra}",
            self.green.url(),
            self.store().display()
        );
        std::fs::write(&path, text).unwrap();
        path
    }
}

fn status(plan: &Path) -> Option<Value> {
    let o = cutover(&["status", plan.to_str().unwrap(), "--output", "json"]);
    (code(&o) == 0).then(|| serde_json::from_slice(&o.stdout).expect("status JSON"))
}

/// Polls the store (through the binary) until `cond` holds; at most 30 s.
fn wait_for(plan: &Path, what: &str, cond: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(s) = status(plan) {
            if cond(&s) {
                return s;
            }
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}; last status: {:?}",
            status(plan)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `cutover run PLAN EXTRA...` to its end, off the async runtime (the
/// proxy and apps of the test run on it meanwhile).
async fn run_to_end(plan: &Path, extra: &[&str]) -> Output {
    let mut args = vec!["run".to_string(), plan.to_str().unwrap().to_string()];
    args.extend(extra.iter().map(|a| a.to_string()));
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        cutover(&args)
    })
    .await
    .unwrap()
}

fn spawn_run(plan: &Path, extra: &[&str]) -> Child {
    Command::new(BIN)
        .arg("run")
        .arg(plan)
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

#[test]
fn every_example_plan_is_accepted_and_its_timeline_printed() {
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples");
    let mut seen = 0;
    for entry in std::fs::read_dir(&examples).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml")
            && !path
                .file_name()
                .unwrap()
                .to_str()
                .unwrap()
                .starts_with("proxy")
        {
            let o = cutover(&["plan", path.to_str().unwrap()]);
            assert_eq!(code(&o), 0, "{}: {}", path.display(), text(&o));
            assert!(text(&o).contains("total "), "{}", text(&o));
            let o = cutover(&["plan", path.to_str().unwrap(), "--output", "json"]);
            let json: Value = serde_json::from_slice(&o.stdout).unwrap();
            assert!(json["steps"].as_array().is_some_and(|s| !s.is_empty()));
            seen += 1;
        }
    }
    assert!(seen >= 2, "found {seen} example plans");
}

#[test]
fn the_seed_timeline_is_the_references() {
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/seed.toml");
    let o = cutover(&["plan", examples.to_str().unwrap(), "--output", "json"]);
    let json: Value = serde_json::from_slice(&o.stdout).unwrap();
    let steps: Vec<(f64, &str, &str)> = json["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["split"].as_f64().unwrap() / 100.0,
                s["starts_at"].as_str().unwrap(),
                s["hold"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        steps,
        [(10.0, "0s", "1m"), (50.0, "1m", "1m"), (100.0, "2m", "1m")]
    );
    assert_eq!(json["total"], "3m");
}

#[test]
fn bad_input_exits_2_naming_file_line_and_column() {
    let dir = tempfile::tempdir().unwrap();
    let plan = dir.path().join("bad.toml");
    std::fs::write(&plan, "[service]\nname = \"x\"\n[router]\nkind = \"local\"\nadmin_url = \"http://127.0.0.1:1\"\n[strategy]\nsteps = [{ split = 50, hold = \"1m\" }, { split = 20, hold = \"1m\" }]\n").unwrap();
    for command in ["plan", "run"] {
        let o = cutover(&[command, plan.to_str().unwrap()]);
        assert_eq!(code(&o), 2, "{}", text(&o));
        assert!(
            text(&o).contains(&format!("{}:7:", plan.display())),
            "{}",
            text(&o)
        );
        assert!(text(&o).contains("strictly increase"), "{}", text(&o));
    }
    // Not UTF-8 (a Latin-1 `é` on line 2, after 8 characters): located.
    std::fs::write(&plan, b"[service]\nname = \"caf\xe9\"\n").unwrap();
    let o = cutover(&["plan", plan.to_str().unwrap()]);
    assert_eq!(code(&o), 2, "{}", text(&o));
    assert!(
        text(&o).contains(&format!(
            "{}:2:12: not valid UTF-8 (byte 0xe9)",
            plan.display()
        )),
        "{}",
        text(&o)
    );
    let proxy = dir.path().join("proxy.toml");
    std::fs::write(
        &proxy,
        b"[blue]\nupstreams = [\"http://127.0.0.1:1\"] # \xff\n",
    )
    .unwrap();
    let o = cutover(&["proxy", proxy.to_str().unwrap()]);
    assert_eq!(code(&o), 2, "{}", text(&o));
    assert!(
        text(&o).contains(&format!(
            "{}:2:38: not valid UTF-8 (byte 0xff)",
            proxy.display()
        )),
        "{}",
        text(&o)
    );

    let o = cutover(&["plan", "/nonexistent/plan.toml"]);
    assert_eq!(code(&o), 2);
    assert!(
        text(&o).contains("cannot read plan file /nonexistent/plan.toml"),
        "{}",
        text(&o)
    );

    let o = cutover(&[
        "status",
        "web",
        "--store",
        dir.path().join("none.db").to_str().unwrap(),
    ]);
    assert_eq!(code(&o), 2, "{}", text(&o));
    let o = cutover(&["frobnicate"]);
    assert_eq!(code(&o), 2);

    // A store path that is a directory: refused by `plan` and `run` alike.
    std::fs::write(
        &plan,
        format!(
            "[service]\nname = \"x\"\n[router]\nkind = \"local\"\nadmin_url = \"http://127.0.0.1:1\"\n[strategy]\npreset = \"canary\"\n[store]\nkind = \"sqlite\"\npath = \"{}\"\n",
            dir.path().display()
        ),
    )
    .unwrap();
    for command in ["plan", "run"] {
        let o = cutover(&[command, plan.to_str().unwrap()]);
        assert_eq!(code(&o), 2, "{}", text(&o));
        assert!(
            text(&o).contains("is a directory; give a file in it"),
            "{}",
            text(&o)
        );
    }

    // A store timeout the lease could not survive, or out of range: refused
    // before anything is created.
    let store = dir.path().join("timeouts.db");
    let local = example("local.toml");
    for (flags, says) in [
        (
            &["--store-timeout", "20s"][..],
            "store timeout 20s must be less than the lease TTL 15s",
        ),
        (
            &["--store-timeout", "50ms"][..],
            "store timeout 50ms must be from 100ms to 10m",
        ),
        // A zero lease once let a second process take over a live driver.
        (
            &["--lease-ttl", "0s"][..],
            "lease TTL 0s must be from 1s to 1h",
        ),
        (
            &["--lease-ttl", "1s", "--tick", "500ms"][..],
            "lease TTL 1s must be at least three ticks (1s500ms)",
        ),
    ] {
        let mut args = vec!["run", local.as_str(), "--store", store.to_str().unwrap()];
        args.extend_from_slice(flags);
        let o = cutover(&args);
        assert_eq!(code(&o), 2, "{}", text(&o));
        assert!(text(&o).contains(says), "{}", text(&o));
        assert!(!store.exists(), "nothing created");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_run_succeeds_and_a_failing_green_is_rolled_back_with_exit_3() {
    let stage = Stage::new().await;
    let plan =
        stage.plan("steps = [{ split = 20, hold = \"400ms\" }, { split = 100, hold = \"400ms\" }]");
    let o = run_to_end(&plan, &[]).await;
    assert_eq!(code(&o), 0, "{}", text(&o));
    assert!(text(&o).contains("succeeded"), "{}", text(&o));
    assert_eq!(stage.proxy.split().percent(), 100.0);
    let s = status(&plan).unwrap();
    assert_eq!(
        (s["phase"].as_str(), s["active"].as_bool()),
        (Some("succeeded"), Some(false))
    );

    // The same plan again: green already holds everything, so nothing may
    // move, least of all backwards to 0 % (it once restarted from 0 %).
    let o = run_to_end(&plan, &[]).await;
    assert_eq!(code(&o), 2, "{}", text(&o));
    assert!(
        text(&o).contains(
            "refused before any traffic moved: the router has all traffic on candidate `green`"
        ),
        "{}",
        text(&o)
    );
    assert_eq!(stage.proxy.split().percent(), 100.0, "untouched");

    // The next rollout of the same service, once an operator put blue back
    // in front: green answers 500 to real requests.
    stage.proxy.set_split(cutover_core::Split::ZERO);
    stage.green.set_fail_ratio(1.0);
    let o = run_to_end(&plan, &[]).await;
    assert_eq!(code(&o), 3, "{}", text(&o));
    assert_eq!(stage.proxy.split().percent(), 0.0);
    let h = cutover(&["history", plan.to_str().unwrap()]);
    assert!(
        text(&h)
            .contains("rolling back: all traffic to live `blue`: green failed analysis: http fail"),
        "{}",
        text(&h)
    );
    let all = cutover(&[
        "history",
        plan.to_str().unwrap(),
        "--all",
        "--output",
        "json",
    ]);
    let list: Value = serde_json::from_slice(&all.stdout).unwrap();
    let phases: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["phase"].as_str().unwrap())
        .collect();
    assert_eq!(phases, ["rolled-back", "succeeded"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn abort_from_another_process_takes_effect_within_a_tick() {
    let stage = Stage::new().await;
    let plan =
        stage.plan("steps = [{ split = 30, hold = \"1m\" }, { split = 100, hold = \"1m\" }]");
    let child = spawn_run(&plan, &["--tick", "100ms"]);
    let plan2 = plan.clone();
    tokio::task::spawn_blocking(move || {
        wait_for(&plan2, "holding at 30 %", |s| s["phase"] == "holding")
    })
    .await
    .unwrap();
    assert_eq!(stage.proxy.split().percent(), 30.0);

    let o = cutover(&["abort", plan.to_str().unwrap()]);
    assert_eq!(code(&o), 0, "{}", text(&o));
    let out = tokio::task::spawn_blocking(move || child.wait_with_output().unwrap())
        .await
        .unwrap();
    assert_eq!(code(&out), 3, "{}", text(&out));
    assert_eq!(stage.proxy.split().percent(), 0.0);
    let s = status(&plan).unwrap();
    assert_eq!(s["phase"], "aborted");

    // Nothing is active any more: further commands are refused clearly.
    let o = cutover(&["promote", plan.to_str().unwrap()]);
    assert_eq!(code(&o), 2);
    assert!(
        text(&o).contains("no active rollout to promote"),
        "{}",
        text(&o)
    );
}

/// The proxy's admin API fails every write (a fault proxy in front of it
/// answers 503) while an abort is due: the rollout stays active in
/// `cannot-restore`, says where traffic really is, takes `cutover abort`
/// from another process (keep trying), and once the proxy answers again
/// `cutover rollback --force` from yet another restores blue at once.
#[tokio::test(flavor = "multi_thread")]
async fn cannot_restore_takes_abort_and_rollback_force_from_other_processes() {
    use cutover_testkit::{Fault, FaultProxy, On};
    let stage = Stage::new().await;
    let faults = FaultProxy::start(&format!("http://{}", stage.proxy.admin_addr())).await;
    let plan = stage.plan_with(
        &faults.url(),
        "steps = [{ split = 30, hold = \"1m\" }, { split = 100, hold = \"1m\" }]",
        "[rollback]\nrollback_deadline = \"2s\"\n",
    );
    let child = spawn_run(&plan, &["--tick", "100ms"]);
    let p = plan.clone();
    tokio::task::spawn_blocking(move || {
        wait_for(&p, "holding at 30 %", |s| s["phase"] == "holding")
    })
    .await
    .unwrap();
    faults.inject(On::op("PUT /split"), Fault::Status(503));
    let o = cutover(&["abort", plan.to_str().unwrap()]);
    assert_eq!(code(&o), 0, "{}", text(&o));
    let p = plan.clone();
    let s = tokio::task::spawn_blocking(move || {
        wait_for(&p, "cannot-restore", |s| s["phase"] == "cannot-restore")
    })
    .await
    .unwrap();
    // Still 30 % on green, as the proxy really has it.
    assert_eq!(stage.proxy.split().percent(), 30.0);
    assert_eq!(s["split_percent"], 30.0, "{s}");
    // An abort now is taken: it keeps trying.
    let o = cutover(&["abort", plan.to_str().unwrap()]);
    assert_eq!(code(&o), 0, "{}", text(&o));
    // The proxy works again; `rollback --force` tries at once.
    faults.clear();
    let o = cutover(&["rollback", plan.to_str().unwrap(), "--force"]);
    assert_eq!(code(&o), 0, "{}", text(&o));
    let out = tokio::task::spawn_blocking(move || child.wait_with_output().unwrap())
        .await
        .unwrap();
    assert_eq!(code(&out), 3, "{}", text(&out));
    assert_eq!(stage.proxy.split().percent(), 0.0);
    let s = status(&plan).unwrap();
    assert_eq!(s["split_percent"], 0.0, "{s}");
    let h = cutover(&["history", plan.to_str().unwrap()]);
    assert!(text(&h).contains("CANNOT RESTORE"), "{}", text(&h));
    assert!(
        text(&h).contains("rollback forced by operator"),
        "{}",
        text(&h)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn promote_pause_and_resume_from_another_process() {
    let stage = Stage::new().await;
    let plan = stage.plan("preset = \"exponential\"\nhold = \"1m\"");
    let child = spawn_run(&plan, &["--tick", "100ms"]);
    let p = plan.clone();
    tokio::task::spawn_blocking(move || wait_for(&p, "holding", |s| s["phase"] == "holding"))
        .await
        .unwrap();
    assert_eq!(code(&cutover(&["pause", plan.to_str().unwrap()])), 0);
    let p = plan.clone();
    tokio::task::spawn_blocking(move || wait_for(&p, "paused", |s| s["phase"] == "paused"))
        .await
        .unwrap();
    let o = cutover(&["pause", plan.to_str().unwrap()]);
    assert_eq!(code(&o), 2, "pausing twice is refused: {}", text(&o));
    assert_eq!(code(&cutover(&["resume", plan.to_str().unwrap()])), 0);
    assert_eq!(code(&cutover(&["promote", plan.to_str().unwrap()])), 0);
    let out = tokio::task::spawn_blocking(move || child.wait_with_output().unwrap())
        .await
        .unwrap();
    assert_eq!(code(&out), 0, "{}", text(&out));
    assert_eq!(stage.proxy.split().percent(), 100.0);
    let h = text(&cutover(&["history", plan.to_str().unwrap()]));
    for want in [
        "paused by operator",
        "resumed by operator",
        "promoted by operator",
    ] {
        assert!(h.contains(want), "history lacks `{want}`:\n{h}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_at_any_moment_then_run_again_resumes_and_finishes() {
    let stage = Stage::new().await;
    let plan = stage.plan(
        "steps = [{ split = 10, hold = \"1s\" }, { split = 40, hold = \"1s\" }, { split = 100, hold = \"1s\" }]\nbake = \"400ms\"",
    );
    let args = ["--tick", "100ms", "--lease-ttl", "1s"];
    let mut child = spawn_run(&plan, &args);
    let p = plan.clone();
    let at = tokio::task::spawn_blocking(move || {
        wait_for(&p, "step 2 holding", |s| {
            s["step"] == 2 && s["phase"] == "holding"
        })
    })
    .await
    .unwrap();
    child.kill().unwrap(); // SIGKILL: no chance to clean up or release the lease.
    let status_killed = child.wait().unwrap();
    assert!(status_killed.code().is_none(), "killed by a signal");
    assert_eq!(at["active"], true);

    let again = tokio::task::spawn_blocking({
        let plan = plan.clone();
        move || {
            cutover(&[
                "run",
                plan.to_str().unwrap(),
                "--tick",
                "100ms",
                "--lease-ttl",
                "1s",
            ])
        }
    })
    .await
    .unwrap();
    assert_eq!(code(&again), 0, "{}", text(&again));
    // It says what it does while it waits for the dead driver's lease.
    for want in [
        "found unfinished rollout",
        "not by this process",
        "stopped renewing its lease; taking the rollout over",
    ] {
        assert!(
            text(&again).contains(want),
            "lacks `{want}`: {}",
            text(&again)
        );
    }
    assert_eq!(stage.proxy.split().percent(), 100.0);

    // One rollout, never two; its history walks 10 -> 40 -> 100 without going back.
    let all = cutover(&[
        "history",
        plan.to_str().unwrap(),
        "--all",
        "--output",
        "json",
    ]);
    let list: Value = serde_json::from_slice(&all.stdout).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 1);
    // `--output json`: one event per line.
    let h = cutover(&["history", plan.to_str().unwrap(), "--output", "json"]);
    let events: Vec<Value> = String::from_utf8_lossy(&h.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let seqs: Vec<u64> = events.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert_eq!(
        seqs,
        (1..=seqs.len() as u64).collect::<Vec<_>>(),
        "every event, once, in order"
    );
    let mut splits: Vec<u64> = events
        .iter()
        .map(|e| e["split"].as_u64().unwrap())
        .collect();
    splits.dedup();
    assert_eq!(splits, [0, 1000, 4000, 10000]);
}

#[test]
fn the_demo_runs_both_scenarios_and_writes_its_report() {
    let dir = tempfile::tempdir().unwrap();
    let report = dir.path().join("report.html");
    let o = cutover(&["demo", "--report", report.to_str().unwrap()]);
    assert_eq!(code(&o), 0, "{}", text(&o));
    let html = std::fs::read_to_string(&report).unwrap();
    assert!(html.contains("<svg") && html.contains("succeeded") && html.contains("rolled-back"));
    let json: Value =
        serde_json::from_str(&std::fs::read_to_string(report.with_extension("json")).unwrap())
            .unwrap();
    assert_eq!(json[0]["outcome"], "succeeded");
    assert_eq!(json[0]["green_errors"], 0);
    assert_eq!(json[1]["outcome"], "rolled-back");
    let reaction = json[1]["reaction_ms"].as_u64().expect("reaction measured");
    let interval = json[1]["analysis_interval_ms"].as_u64().unwrap();
    // One interval, plus the admin call and scheduling slack of a loaded test machine.
    assert!(
        reaction <= interval + 1_000,
        "reaction {reaction} ms with a {interval} ms interval"
    );
    assert!(
        text(&o).contains("green failed analysis: error-rate fail"),
        "{}",
        text(&o)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn detach_keeps_the_rollout_running_in_the_background() {
    let stage = Stage::new().await;
    let plan =
        stage.plan("steps = [{ split = 50, hold = \"400ms\" }, { split = 100, hold = \"400ms\" }]");
    let state = stage.dir.path().join("state");
    let o = Command::new(BIN)
        .args(["run", plan.to_str().unwrap(), "--detach", "--tick", "100ms"])
        .env("XDG_STATE_HOME", &state)
        .output()
        .unwrap();
    assert_eq!(code(&o), 0, "{}", text(&o));
    assert!(
        text(&o).contains("running in the background as pid"),
        "{}",
        text(&o)
    );
    let p = plan.clone();
    tokio::task::spawn_blocking(move || wait_for(&p, "success", |s| s["phase"] == "succeeded"))
        .await
        .unwrap();
    assert_eq!(stage.proxy.split().percent(), 100.0);
    let logs: Vec<_> = std::fs::read_dir(state.join("cutover"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(logs.len(), 1, "{logs:?}");
    // The background process writes its last lines just after the store says it is done.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let log = std::fs::read_to_string(&logs[0]).unwrap();
        if log.contains("succeeded: all traffic on `green` (the candidate, now live)") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "log never showed the end:\n{log}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn example(name: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../examples")
        .join(name)
        .to_str()
        .unwrap()
        .to_string()
}

#[test]
fn aws_helpers_print_the_policy_rule_and_table_a_plan_needs() {
    let o = cutover(&["iam-policy", &example("alb.toml")]);
    assert_eq!(code(&o), 0, "{}", text(&o));
    let policy: Value = serde_json::from_slice(&o.stdout).unwrap();
    let statements = policy["Statement"].as_array().unwrap();
    let actions: Vec<&str> = statements
        .iter()
        .flat_map(|s| {
            s["Action"]
                .as_array()
                .unwrap()
                .iter()
                .map(|a| a.as_str().unwrap())
        })
        .collect();
    for want in [
        "elasticloadbalancing:ModifyListener",
        "cloudwatch:GetMetricData",
        "dynamodb:PutItem",
    ] {
        assert!(actions.contains(&want), "{want} missing from {actions:?}");
    }
    let modify = statements
        .iter()
        .find(|s| {
            s["Action"]
                .as_array()
                .unwrap()
                .iter()
                .any(|a| a == "elasticloadbalancing:ModifyListener")
        })
        .unwrap();
    assert!(
        modify["Resource"]
            .to_string()
            .contains("listener/app/web/50dc6c495c0c9188/f2f7dc8efc522ab2"),
        "{modify}"
    );

    let o = cutover(&["print", "eventbridge", &example("ecs-events.toml")]);
    assert_eq!(code(&o), 0, "{}", text(&o));
    assert!(
        text(&o).contains("\"ECS Task State Change\"") && text(&o).contains("service:web-green"),
        "{}",
        text(&o)
    );

    let o = cutover(&["init-store", &example("alb.toml"), "--print"]);
    assert_eq!(code(&o), 0, "{}", text(&o));
    assert!(text(&o).contains("PAY_PER_REQUEST"), "{}", text(&o));

    // Plans without the parts a command needs are refused clearly.
    for (args, want) in [
        (
            vec!["print", "eventbridge", &example("alb.toml")],
            "no `[trigger]`",
        ),
        (vec!["init-store", &example("local.toml")], "not DynamoDB"),
        (vec!["watch", &example("local.toml")], "needs a `[trigger]`"),
    ] {
        let o = cutover(&args);
        assert_eq!(code(&o), 2, "{args:?}: {}", text(&o));
        assert!(text(&o).contains(want), "{args:?}: {}", text(&o));
    }
    // --image needs a platform.
    let o = cutover(&["run", &example("alb.toml"), "--image", "repo:tag"]);
    assert_eq!(code(&o), 2, "{}", text(&o));
    assert!(text(&o).contains("need a `[platform]`"), "{}", text(&o));
}

#[tokio::test(flavor = "multi_thread")]
async fn the_proxy_drains_requests_in_flight_on_sigterm() {
    let any = "127.0.0.1:0".parse().unwrap();
    let slow = |c: &str| DemoAppConfig {
        colour: c.into(),
        fail_ratio: 0.0,
        latency: Duration::from_millis(1500),
    };
    let blue = cutover_local::start_demo_app(any, slow("blue"))
        .await
        .unwrap();
    let green = cutover_local::start_demo_app(any, slow("green"))
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let port = |l: std::net::TcpListener| l.local_addr().unwrap().port();
    let (data, admin) = (
        port(std::net::TcpListener::bind("127.0.0.1:0").unwrap()),
        port(std::net::TcpListener::bind("127.0.0.1:0").unwrap()),
    );
    let config = dir.path().join("proxy.toml");
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:{data}\"\nadmin_listen = \"127.0.0.1:{admin}\"\n[blue]\nupstreams = [\"{}\"]\n[green]\nupstreams = [\"{}\"]\n",
            blue.url(),
            green.url()
        ),
    )
    .unwrap();
    let mut child = Command::new(BIN)
        .args(["proxy", config.to_str().unwrap()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut first = String::new();
    std::io::BufRead::read_line(&mut lines, &mut first).unwrap();
    assert!(first.contains("proxy listening"), "{first}");

    // A request that takes 1.5 s is in flight when SIGTERM arrives.
    let request = std::thread::spawn(move || {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(("127.0.0.1", data)).unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    });
    // The request reached the app (it counts requests as they arrive).
    let deadline = Instant::now() + Duration::from_secs(10);
    while blue.received() == 0 {
        assert!(Instant::now() < deadline, "the request never reached blue");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let ok = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok);
    let answer = request.join().unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(0));
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut lines, &mut rest).unwrap();
    assert!(rest.contains("shutting down"), "{rest}");
    // And it no longer accepts.
    assert!(std::net::TcpStream::connect(("127.0.0.1", data)).is_err());
}

#[tokio::test(flavor = "multi_thread")]
async fn adapter_failures_are_logged_as_json_lines_with_the_rollout_id() {
    let stage = Stage::new().await;
    let path = stage.dir.path().join("plan.toml");
    std::fs::write(
        &path,
        format!(
            "[service]\nname = \"web\"\n[router]\nkind = \"local\"\nadmin_url = \"http://{}\"\n\
             [strategy]\nsteps = [{{ split = 50, hold = \"400ms\" }}, {{ split = 100, hold = \"400ms\" }}]\n\
             [analysis]\ninterval = \"200ms\"\ninconclusive_limit = 1\n[[analysis.checks]]\nkind = \"http\"\nurl = \"http://127.0.0.1:9/\"\n\
             [store]\nkind = \"sqlite\"\npath = \"{}\"\n",
            stage.proxy.admin_addr(),
            stage.store().display()
        ),
    )
    .unwrap();
    let o = tokio::task::spawn_blocking(move || {
        Command::new(BIN)
            .args(["run", path.to_str().unwrap(), "--log-format", "json"])
            .env("RUST_LOG", "warn")
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert_eq!(code(&o), 3, "{}", text(&o));
    let stdout = String::from_utf8_lossy(&o.stdout);
    let id = stdout
        .lines()
        .find_map(|l| {
            l.strip_prefix("rollout ")
                .and_then(|r| r.split_whitespace().next())
        })
        .unwrap()
        .to_string();
    let logged: Vec<Value> = String::from_utf8_lossy(&o.stderr)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    assert!(
        logged.iter().any(|l| l["rollout"] == id.as_str()
            && l["check"] == "http"
            && l["message"] == "a check could not measure"
            && l["level"] == "WARN"),
        "{logged:?}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// Sends `rps` requests per second to `addr` from a thread, one connection
/// each, until `stop` is set.
fn steady_load(
    addr: std::net::SocketAddr,
    rps: u32,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<u64> {
    use std::io::{Read, Write};
    std::thread::spawn(move || {
        let start = Instant::now();
        let mut sent = 0u64;
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            // Paced to the schedule, not to the previous answer.
            let next = start + Duration::from_secs(1) * sent as u32 / rps;
            if let Some(wait) = next.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
            if let Ok(mut s) = std::net::TcpStream::connect(addr) {
                let _ = s.write_all(b"GET / HTTP/1.1\r\nHost: load\r\nConnection: close\r\n\r\n");
                let _ = s.read_to_end(&mut Vec::new());
            }
            sent += 1;
        }
        sent
    })
}

/// The docs' fast set-up: `interval = "1s"` and an `error-rate` check with
/// its default window (the interval), a healthy green at 10 % of 100 req/s.
/// Windows once read the partly filled one-second bucket ("green served 0
/// of 5 requests needed in the last 1s") and rolled the healthy green back
/// for inconclusive verdicts; now every verdict has its 10 requests.
#[tokio::test(flavor = "multi_thread")]
async fn a_one_second_interval_plan_is_never_inconclusive_for_want_of_requests() {
    let stage = Stage::new().await;
    let path = stage.dir.path().join("fast.toml");
    std::fs::write(
        &path,
        format!(
            "[service]\nname = \"web\"\n[router]\nkind = \"local\"\nadmin_url = \"http://{}\"\n\
             [strategy]\nsteps = [{{ split = 10, hold = \"6s\" }}, {{ split = 100, hold = \"2s\" }}]\n\
             [analysis]\ninterval = \"1s\"\ninconclusive_limit = 1\n\
             [[analysis.checks]]\nkind = \"error-rate\"\nmax_percent = 1\nmin_requests = 5\n\
             [store]\nkind = \"sqlite\"\npath = \"{}\"\n",
            stage.proxy.admin_addr(),
            stage.store().display()
        ),
    )
    .unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = steady_load(stage.proxy.data_addr(), 100, stop.clone());
    let o = tokio::task::spawn_blocking({
        let path = path.clone();
        move || cutover(&["run", path.to_str().unwrap()])
    })
    .await
    .unwrap();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let sent = load.join().unwrap();
    assert_eq!(code(&o), 0, "{}", text(&o));
    let h = text(&cutover(&["history", path.to_str().unwrap()]));
    assert!(!h.contains("inconclusive"), "{h}");
    // Every verdict at 10 % saw a second of green's 10 req/s.
    let passes: Vec<&str> = h
        .lines()
        .filter(|l| l.contains("error-rate pass"))
        .collect();
    assert!(passes.len() >= 6, "{h}");
    assert!(sent >= 700, "the load ran: {sent} requests");
}

/// A plan judged by `sequential-error-rate` alone, under 200 req/s.
fn sequential_plan(stage: &Stage, name: &str, steps: &str) -> PathBuf {
    let path = stage.dir.path().join(name);
    std::fs::write(
        &path,
        format!(
            "[service]\nname = \"web\"\n[router]\nkind = \"local\"\nadmin_url = \"http://{}\"\n\
             [strategy]\nsteps = {steps}\n[analysis]\ninterval = \"500ms\"\nwait_for_data = \"1m\"\n\
             [[analysis.checks]]\nkind = \"sequential-error-rate\"\ndetect_points = 5\n\
             [store]\nkind = \"sqlite\"\npath = \"{}\"\n",
            stage.proxy.admin_addr(),
            stage.store().display()
        ),
    )
    .unwrap();
    path
}

/// The sequential judge as a user runs it: a green failing 30 % of its
/// requests is rolled back after a handful of failed requests, and a
/// healthy one is promoted once enough requests were seen, its short holds
/// going on meanwhile rather than counting as inconclusive.
#[tokio::test(flavor = "multi_thread")]
async fn the_sequential_judge_rolls_a_bad_green_back_in_a_few_failures_and_promotes_a_good_one() {
    let stage = Stage::new().await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = steady_load(stage.proxy.data_addr(), 200, stop.clone());

    let healthy = sequential_plan(
        &stage,
        "healthy.toml",
        "[{ split = 50, hold = \"1s\" }, { split = 100, hold = \"1s\" }]",
    );
    let o = tokio::task::spawn_blocking({
        let path = healthy.clone();
        move || cutover(&["run", path.to_str().unwrap()])
    })
    .await
    .unwrap();
    assert_eq!(code(&o), 0, "{}", text(&o));
    let h = text(&cutover(&["history", healthy.to_str().unwrap()]));
    assert!(h.contains("holding on for more data"), "{h}");
    assert!(
        h.contains("no evidence green fails more often than blue"),
        "{h}"
    );
    assert!(
        !h.contains("inconclusive"),
        "never counted as inconclusive: {h}"
    );
    assert_eq!(stage.proxy.split().percent(), 100.0);

    // The next release: blue back in front, green fails 30 % of requests.
    stage.proxy.set_split(cutover_core::Split::ZERO);
    let before = stage.green.served().1;
    stage.green.set_fail_ratio(0.3);
    let bad = sequential_plan(
        &stage,
        "bad.toml",
        "[{ split = 10, hold = \"1m\" }, { split = 100, hold = \"1s\" }]",
    );
    let o = tokio::task::spawn_blocking({
        let path = bad.clone();
        move || cutover(&["run", path.to_str().unwrap()])
    })
    .await
    .unwrap();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    load.join().unwrap();
    assert_eq!(code(&o), 3, "{}", text(&o));
    assert_eq!(stage.proxy.split().percent(), 0.0);
    let h = text(&cutover(&["history", bad.to_str().unwrap()]));
    assert!(h.contains("green fails more often than blue"), "{h}");
    // The numbers behind the decision, for scripts.
    let s = status(&bad).unwrap();
    let numbers = &s["last_analysis"]["observations"][0]["numbers"];
    assert!(
        numbers["green.failures"].as_f64().unwrap() >= 1.0
            && numbers["evidence"].as_f64() >= numbers["threshold"].as_f64(),
        "{s}"
    );
    let failed = stage.green.served().1 - before;
    eprintln!("FIGURE sequential judge: green failed {failed} requests before 0 %");
    assert!(failed <= 30, "{failed} failed requests: {h}");
}

/// A tmux server of its own (so tests running at once do not meet),
/// killed when dropped.
struct Tmux(String);

impl Tmux {
    fn new() -> Tmux {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Tmux(format!("cutover-test-{}-{n}", std::process::id()))
    }

    fn run(&self, args: &[&str]) -> String {
        let o = Command::new("tmux")
            .args(["-L", &self.0, "-f", "/dev/null"])
            .args(args)
            .output()
            .expect("tmux is installed (.ci/run installs it)");
        assert!(o.status.success(), "tmux {args:?}: {}", text(&o));
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    fn screen(&self) -> Vec<String> {
        self.run(&["capture-pane", "-p", "-t", "main"])
            .lines()
            .map(str::to_owned)
            .collect()
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .args(["-L", &self.0, "kill-server"])
            .output();
    }
}

/// On a real terminal (tmux) of 80 columns, then resized to 120, the live
/// status line stays one row, redrawn in place, cut with `…` to the width.
/// It was once cut at 150 characters whatever the width, so at 120
/// columns it wrapped and every redraw left a new row behind.
#[tokio::test(flavor = "multi_thread")]
async fn the_status_line_fits_the_terminal_at_80_and_120_columns_and_follows_a_resize() {
    let stage = Stage::new().await;
    let plan =
        stage.plan("steps = [{ split = 20, hold = \"4s\" }, { split = 100, hold = \"4s\" }]");
    let tmux = Tmux::new();
    let command = format!("{BIN} run {}; echo EXIT-$?; sleep 600", plan.display());
    tmux.run(&[
        "new-session",
        "-d",
        "-x",
        "80",
        "-y",
        "50",
        "-s",
        "main",
        &command,
    ]);

    let deadline = Instant::now() + Duration::from_secs(60);
    let (mut width, mut seen_at_80, mut longest_at_120) = (80usize, 0, 0usize);
    loop {
        let screen = tmux.screen();
        let bars: Vec<&String> = screen.iter().filter(|l| l.contains("] step ")).collect();
        assert!(
            bars.len() <= 1,
            "the status line was not redrawn in place:\n{}",
            screen.join("\n")
        );
        if let Some(bar) = bars.first() {
            let n = bar.chars().count();
            assert!(n < width, "{n} characters on {width} columns: {bar}");
            assert!(
                bar.contains(" left") || bar.ends_with('…'),
                "the status line wrapped:\n{}",
                screen.join("\n")
            );
            if width == 80 {
                seen_at_80 += 1;
                if seen_at_80 == 10 {
                    tmux.run(&["resize-window", "-t", "main", "-x", "120"]);
                    width = 120;
                }
            } else {
                longest_at_120 = longest_at_120.max(n);
            }
        }
        if screen.iter().any(|l| l.starts_with("EXIT-")) {
            assert!(
                screen.iter().any(|l| l == "EXIT-0"),
                "{}",
                screen.join("\n")
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "timed out:\n{}",
            screen.join("\n")
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(seen_at_80 >= 10, "the status line showed at 80 columns");
    assert!(
        longest_at_120 > 80,
        "the redraw after the resize used the new width"
    );
}

/// The shipped many-service proxy file, run by the binary (ports and
/// upstreams swapped for free ones): a plan naming one service's admin
/// path moves that service's traffic and no other's.
#[tokio::test(flavor = "multi_thread")]
async fn a_plan_moves_one_service_of_the_shipped_many_service_proxy_and_no_other() {
    let any = "127.0.0.1:0".parse().unwrap();
    let app = |c: &str| DemoAppConfig {
        colour: c.into(),
        fail_ratio: 0.0,
        latency: Duration::ZERO,
    };
    let mut apps = Vec::new();
    for c in [
        "checkout-blue",
        "checkout-green",
        "search-blue",
        "search-green",
    ] {
        apps.push(cutover_local::start_demo_app(any, app(c)).await.unwrap());
    }
    let dir = tempfile::tempdir().unwrap();
    let port = || {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    };
    let (data, admin) = (port(), port());
    let mut config_text = std::fs::read_to_string(example("proxy-services.toml")).unwrap();
    config_text = config_text
        .replace("127.0.0.1:8080", &format!("127.0.0.1:{data}"))
        .replace("127.0.0.1:9901", &format!("127.0.0.1:{admin}"));
    for (i, a) in apps.iter().enumerate() {
        config_text = config_text.replace(&format!("http://127.0.0.1:900{}", i + 1), &a.url());
    }
    let config = dir.path().join("proxy.toml");
    std::fs::write(&config, config_text).unwrap();
    let mut proxy = Command::new(BIN)
        .args(["proxy", config.to_str().unwrap()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(proxy.stdout.take().unwrap()),
        &mut first,
    )
    .unwrap();
    assert!(
        first.contains("proxy listening") && first.contains("2 services (checkout, search)"),
        "{first}"
    );

    let plan = dir.path().join("checkout.toml");
    std::fs::write(
        &plan,
        format!(
            "[service]\nname = \"checkout\"\n[router]\nkind = \"local\"\n\
             admin_url = \"http://127.0.0.1:{admin}/services/checkout\"\n\
             [strategy]\nsteps = [{{ split = 50, hold = \"300ms\" }}, {{ split = 100, hold = \"300ms\" }}]\n\
             [analysis]\ninterval = \"100ms\"\n[[analysis.checks]]\nkind = \"health\"\n\
             [store]\nkind = \"sqlite\"\npath = \"{}\"\n",
            dir.path().join("store.db").display()
        ),
    )
    .unwrap();
    let o = run_to_end(&plan, &[]).await;
    assert_eq!(code(&o), 0, "{}", text(&o));
    assert!(text(&o).contains("succeeded"), "{}", text(&o));

    let get = |path: &str, host: &str| {
        use std::io::{Read, Write};
        let mut s =
            std::net::TcpStream::connect(("127.0.0.1", if host.is_empty() { admin } else { data }))
                .unwrap();
        let host = if host.is_empty() { "127.0.0.1" } else { host };
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    };
    let services: Value =
        serde_json::from_str(get("/services", "").split("\r\n\r\n").nth(1).unwrap()).unwrap();
    let split = |name: &str| {
        services
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == name)
            .map(|s| s["split_bp"].as_u64().unwrap())
    };
    assert_eq!(
        (split("checkout"), split("search")),
        (Some(10_000), Some(0))
    );
    assert!(get("/", "checkout.example.com").ends_with("hello from checkout-green\n"));
    assert!(get("/", "anything.example.com").ends_with("hello from search-blue\n"));
    let _ = proxy.kill();
    let _ = proxy.wait();
}

/// `run --output json` prints one line per event, as it happens, the same
/// events `history` has: never the whole snapshot per transition.
#[tokio::test(flavor = "multi_thread")]
async fn run_with_json_output_prints_one_line_per_event() {
    let stage = Stage::new().await;
    let plan =
        stage.plan("steps = [{ split = 20, hold = \"300ms\" }, { split = 100, hold = \"300ms\" }]");
    let o = run_to_end(&plan, &["--output", "json"]).await;
    assert_eq!(code(&o), 0, "{}", text(&o));
    let lines: Vec<Value> = String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("`{l}`: {e}")))
        .collect();
    let seqs: Vec<u64> = lines.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert_eq!(
        seqs,
        (1..=seqs.len() as u64).collect::<Vec<_>>(),
        "{lines:?}"
    );
    let s = status(&plan).unwrap();
    assert_eq!(
        Some(seqs.len() as u64),
        s["events"].as_u64(),
        "every event, once"
    );
    assert!(lines
        .iter()
        .all(|e| e["rollout"] == s["id"] && e.get("plan").is_none()));
    assert_eq!(lines.last().unwrap()["phase"], "succeeded");
    let h = cutover(&["history", plan.to_str().unwrap(), "--output", "json"]);
    assert_eq!(
        String::from_utf8_lossy(&h.stdout),
        String::from_utf8_lossy(&o.stdout)
    );
}

/// A second `run` of a plan another live process drives says so at once,
/// naming that process, and only watches; the first keeps its rollout.
#[tokio::test(flavor = "multi_thread")]
async fn a_second_run_says_which_live_process_drives_the_rollout() {
    let stage = Stage::new().await;
    let plan =
        stage.plan("steps = [{ split = 10, hold = \"2m\" }, { split = 100, hold = \"1s\" }]");
    let mut first = spawn_run(&plan, &[]);
    let p = plan.clone();
    let held =
        tokio::task::spawn_blocking(move || wait_for(&p, "holding", |s| s["phase"] == "holding"))
            .await
            .unwrap();
    let mut second = spawn_run(&plan, &[]);
    let out = second.stdout.take().unwrap();
    let said = tokio::task::spawn_blocking(move || {
        use std::io::BufRead;
        let mut seen = Vec::new();
        for line in std::io::BufReader::new(out).lines() {
            let line = line.unwrap();
            let done = line.contains("not by this process");
            seen.push(line);
            if done {
                break;
            }
        }
        seen.join("\n")
    })
    .await
    .unwrap();
    let holder = held["written_by"].as_str().unwrap();
    assert!(
        said.contains(&format!("is driven by `{holder}`, not by this process")),
        "{said}"
    );
    second.kill().unwrap();
    let _ = second.wait();
    // The first still drives it: an abort from outside ends it, rolled back.
    let o = cutover(&["abort", plan.to_str().unwrap()]);
    assert_eq!(code(&o), 0, "{}", text(&o));
    let status = tokio::task::spawn_blocking(move || first.wait().unwrap())
        .await
        .unwrap();
    assert_eq!(status.code(), Some(3));
    assert_eq!(stage.proxy.split(), Split::ZERO);
}

/// The SQLite file deleted under a running `run`: it notices, sends all
/// traffic to the live target, and exits 4 saying where traffic is.
#[tokio::test(flavor = "multi_thread")]
async fn a_store_deleted_under_a_run_ends_it_with_all_traffic_on_live_and_exit_4() {
    let stage = Stage::new().await;
    let plan =
        stage.plan("steps = [{ split = 30, hold = \"2m\" }, { split = 100, hold = \"1s\" }]");
    let child = spawn_run(&plan, &["--tick", "100ms", "--lease-ttl", "3s"]);
    let p = plan.clone();
    tokio::task::spawn_blocking(move || wait_for(&p, "holding", |s| s["phase"] == "holding"))
        .await
        .unwrap();
    assert_eq!(stage.proxy.split().percent(), 30.0);
    std::fs::remove_file(stage.store()).unwrap();
    let o = tokio::task::spawn_blocking(move || child.wait_with_output().unwrap())
        .await
        .unwrap();
    assert_eq!(code(&o), 4, "{}", text(&o));
    assert!(
        text(&o).contains("sent all traffic to the live target"),
        "{}",
        text(&o)
    );
    assert_eq!(stage.proxy.split(), Split::ZERO);
}

/// A plan judged by one `prometheus` check whose TOML body is `check`,
/// reading `prom`, under `steps`.
fn prometheus_plan(stage: &Stage, name: &str, steps: &str, prom: &str, check: &str) -> PathBuf {
    let path = stage.dir.path().join(name);
    std::fs::write(
        &path,
        format!(
            "[service]\nname = \"web\"\n[router]\nkind = \"local\"\nadmin_url = \"http://{}\"\n\
             [strategy]\nsteps = {steps}\n[analysis]\ninterval = \"500ms\"\nwait_for_data = \"1m\"\n\
             [[analysis.checks]]\nkind = \"prometheus\"\nurl = \"{prom}\"\n{check}\n\
             [store]\nkind = \"sqlite\"\npath = \"{}\"\n",
            stage.proxy.admin_addr(),
            stage.store().display()
        ),
    )
    .unwrap();
    path
}

/// The `prometheus` check as a user runs it, against a real Prometheus
/// scraping the proxy's `/metrics/prometheus` every second, under 200
/// req/s: the sequential judge on the counters promotes a healthy green
/// and rolls one failing 30 % back within a few scrapes; a threshold on a
/// query with a colour label rolls it back too; and a query Prometheus
/// refuses is refused before any traffic moves.
#[tokio::test(flavor = "multi_thread")]
async fn a_prometheus_check_judges_green_from_a_real_prometheus_scraping_the_proxy() {
    use cutover_testkit::prometheus::{Prometheus, Target};
    let stage = Stage::new().await;
    let prom = Prometheus::start(
        stage.dir.path(),
        "1s",
        &[Target {
            job: "proxy",
            addr: stage.proxy.admin_addr(),
            path: "/metrics/prometheus",
        }],
    );
    prom.wait_for_series("cutover_requests_total");
    let url = prom.url();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = steady_load(stage.proxy.data_addr(), 200, stop.clone());
    let counters = "requests = 'sum(cutover_requests_total{colour=\"${colour}\"})'\n\
                    failures = 'sum(cutover_responses_5xx_total{colour=\"${colour}\"})'\n\
                    scrape_interval = \"1s\"\ndetect_points = 5\n";

    let healthy = prometheus_plan(
        &stage,
        "healthy.toml",
        "[{ split = 50, hold = \"2s\" }, { split = 100, hold = \"2s\" }]",
        &url,
        counters,
    );
    let o = tokio::task::spawn_blocking({
        let path = healthy.clone();
        move || cutover(&["run", path.to_str().unwrap()])
    })
    .await
    .unwrap();
    assert_eq!(code(&o), 0, "{}", text(&o));
    let h = text(&cutover(&["history", healthy.to_str().unwrap()]));
    assert!(
        h.contains("no evidence green fails more often than blue"),
        "{h}"
    );
    assert!(
        h.contains("counting from the first scrape after the split took effect"),
        "{h}"
    );
    assert!(!h.contains("inconclusive"), "{h}");
    assert_eq!(stage.proxy.split().percent(), 100.0);

    // The next release fails 30 % of its requests.
    stage.proxy.set_split(Split::ZERO);
    let before = stage.green.served().1;
    stage.green.set_fail_ratio(0.3);
    let bad = prometheus_plan(
        &stage,
        "bad.toml",
        "[{ split = 10, hold = \"1m\" }, { split = 100, hold = \"1s\" }]",
        &url,
        counters,
    );
    let o = tokio::task::spawn_blocking({
        let path = bad.clone();
        move || cutover(&["run", path.to_str().unwrap()])
    })
    .await
    .unwrap();
    assert_eq!(code(&o), 3, "{}", text(&o));
    assert_eq!(stage.proxy.split().percent(), 0.0);
    let h = text(&cutover(&["history", bad.to_str().unwrap()]));
    assert!(h.contains("green fails more often than blue"), "{h}");
    let failed = stage.green.served().1 - before;
    eprintln!("FIGURE prometheus sequential judge: green failed {failed} requests before 0 %");
    assert!(failed <= 150, "{failed} failed requests: {h}");

    // One query for both colours, told apart by its `colour` label.
    let threshold = prometheus_plan(
        &stage,
        "threshold.toml",
        "[{ split = 10, hold = \"1m\" }, { split = 100, hold = \"1s\" }]",
        &url,
        "query = 'sum by (colour) (rate(cutover_responses_5xx_total[3s])) / \
         sum by (colour) (rate(cutover_requests_total[3s]))'\n\
         colour_label = \"colour\"\nmax = 0.05\n",
    );
    let o = tokio::task::spawn_blocking({
        let path = threshold.clone();
        move || cutover(&["run", path.to_str().unwrap()])
    })
    .await
    .unwrap();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    load.join().unwrap();
    assert_eq!(code(&o), 3, "{}", text(&o));
    assert_eq!(stage.proxy.split().percent(), 0.0);
    let s = status(&threshold).unwrap();
    let obs = &s["last_analysis"]["observations"][0];
    assert!(
        obs["detail"].as_str().unwrap().contains("> max 0.05"),
        "{s}"
    );
    assert!(
        obs["numbers"]["green.value"].as_f64().unwrap() > 0.05,
        "{s}"
    );

    // A query Prometheus cannot parse: refused before traffic moves.
    let broken = prometheus_plan(
        &stage,
        "broken.toml",
        "[{ split = 10, hold = \"1m\" }, { split = 100, hold = \"1s\" }]",
        &url,
        "query = 'sum(rate(cutover_requests_total{colour=\"${colour}\"}[1m]'\nmax = 1\n",
    );
    let o = cutover(&["run", broken.to_str().unwrap()]);
    assert_ne!(code(&o), 0, "{}", text(&o));
    assert!(
        text(&o).contains("refuses `query`: bad_data (400)"),
        "{}",
        text(&o)
    );
    assert_eq!(stage.proxy.split().percent(), 0.0);
}
