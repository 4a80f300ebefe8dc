//! Faults between cutover and the embedded proxy: the real `local` router
//! and the real engine, with a real proxy on loopback and a real SQLite
//! store, every admin API call of the router going through a
//! [`FaultProxy`] that fails, hangs, drops and loses replies on the
//! operations each test names (`PUT /split`, `GET /split`).
//!
//! The check is an `http` check against a loopback server the test
//! controls (it answers 200, or 500 once green is told to fail), so that
//! it never goes through the fault proxy.
//!
//! Each test asserts the time from the fault to the next action or to a
//! safe state against the limit the plan states, and that what cutover
//! reports is what the proxy has, read by the test itself straight from
//! the proxy's admin API. The measured times are printed (`FIGURE ...`
//! lines, `--nocapture`).

mod common;

use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{demo, proxy, serve_fn, EchoBody};
use cutover_core::plan::RouterConfig;
use cutover_core::{Command, Rollout, Split};
use cutover_engine::ports::Router;
use cutover_engine::store::SqliteStore;
use cutover_engine::Adapters;
use cutover_local::{build_check, AdminClient, DemoAppHandle, LocalRouter, ProxyHandle};
use cutover_testkit::{figure, Driven, Fault, FaultProxy, On};
use http_body_util::Full;

const TICK: Duration = Duration::from_millis(200);

/// The router's write and read, as the fault proxy names them.
const WRITE: &str = "PUT /split";
const READ: &str = "GET /split";

/// Green's health, as the http check will read it.
#[derive(Clone, Copy, PartialEq)]
enum Green {
    Healthy,
    Failing,
}

/// One rollout wired through a fault proxy.
struct Rig {
    proxy: FaultProxy,
    /// The real proxy's admin API, called directly (never through `proxy`).
    truth: AdminClient,
    run: Driven,
    _real: ProxyHandle,
    _apps: (DemoAppHandle, DemoAppHandle),
    _dir: tempfile::TempDir,
}

/// A loopback server for the http check: 200, or 500 while `failing`.
async fn check_server(failing: Arc<AtomicBool>) -> String {
    let addr = serve_fn(move |_req| {
        let failing = failing.clone();
        async move {
            let (status, body) = if failing.load(Relaxed) {
                (500, "green is failing")
            } else {
                (200, "green is fine")
            };
            hyper::Response::builder()
                .status(status)
                .body(EchoBody::Right(Full::new(Bytes::from_static(
                    body.as_bytes(),
                ))))
                .unwrap()
        }
    })
    .await;
    format!("http://{addr}/health")
}

impl Rig {
    /// A local rollout of 10 / 50 / 100 % with `hold` each, all traffic on
    /// blue to start, `extra` TOML appended to the plan.
    async fn new(green: Green, hold: &str, extra: &str) -> Rig {
        let apps = (demo("blue").await, demo("green").await);
        let real = proxy(&[&apps.0.url()], &[&apps.1.url()], "").await;
        let truth = AdminClient::new(&real.admin_url(), None).unwrap();
        let proxy = FaultProxy::start(&real.admin_url()).await;
        let failing = Arc::new(AtomicBool::new(green == Green::Failing));
        let check_url = check_server(failing).await;
        let text = format!(
            r#"
[service]
name = "web"

[router]
kind = "local"
admin_url = "{admin}"

[strategy]
steps = [
  {{ split = 10, hold = "{hold}" }},
  {{ split = 50, hold = "{hold}" }},
  {{ split = 100, hold = "{hold}" }},
]

[analysis]
interval = "500ms"

[[analysis.checks]]
kind = "http"
url = "{check_url}"

{extra}
"#,
            admin = proxy.url(),
        );
        let plan = cutover_core::plan::parse(&text, "faults.toml")
            .unwrap_or_else(|e| panic!("{e}\n{text}"));
        let RouterConfig::Local(settings) = &plan.router else {
            panic!("not the local router: {:?}", plan.router);
        };
        let router: Arc<dyn Router> = Arc::new(LocalRouter::new(settings));
        let checks = plan
            .analysis
            .checks
            .iter()
            .map(|spec| build_check(spec, Some(settings)).expect("a local check"))
            .collect();
        let adapters = Adapters {
            router,
            checks,
            platform: None,
        };
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("cutover.db")).unwrap();
        let run = Driven::create(Arc::new(store), plan, adapters, "web-1", TICK).await;
        Rig {
            proxy,
            truth,
            run,
            _real: real,
            _apps: apps,
            _dir: dir,
        }
    }

    /// Green's share as the real proxy has it, in basis points.
    async fn green_bp(&self) -> u16 {
        self.truth
            .split()
            .await
            .expect("the real proxy's admin API answers")
            .basis_points()
    }

    /// Asserts the rollout as stored says what the real proxy has.
    async fn assert_reported_is_true(&self, rollout: &Rollout) {
        let truth = self.green_bp().await;
        assert_eq!(
            rollout.split.basis_points(),
            truth,
            "cutover reports {} ({}) but the proxy has {} bp green",
            rollout.split,
            rollout.phase.name(),
            truth
        );
        let stored = self.run.stored().await;
        assert_eq!(stored.split, rollout.split, "the store says the same");
    }
}

// ---------------------------------------------------------------- hangs

/// A split write that never answers is cut at `router_write`, read back,
/// and retried: the rollout goes on instead of stalling.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_split_write_is_cut_at_its_limit_and_the_rollout_goes_on() {
    let rig = Rig::new(Green::Healthy, "1s", "[timeouts]\nrouter_write = \"2s\"").await;
    // Write 1 is 10 %, write 2 (50 %) hangs.
    rig.proxy
        .inject(On::op(WRITE).after(1).times(1), Fault::Hang);
    let driving = rig.run.drive();
    let hung = rig
        .proxy
        .wait_for(WRITE, 2, Duration::from_secs(30))
        .await
        .at;
    let retried = rig
        .proxy
        .wait_for(WRITE, 3, Duration::from_secs(30))
        .await
        .at;
    let end = driving.await.unwrap();
    figure("local write hang -> retried", retried - hung);
    assert!(
        retried - hung >= Duration::from_secs(2),
        "the hung write was given its 2 s: retried after {:?}",
        retried - hung
    );
    assert!(
        retried - hung <= Duration::from_secs(2) + Duration::from_millis(1500),
        "the hung write was retried {:?} after it was sent",
        retried - hung
    );
    assert_eq!(end.phase.name(), "succeeded", "{:?}", end.phase);
    rig.assert_reported_is_true(&end).await;
    assert_eq!(end.split, Split::FULL);
    assert!(
        rig.run.history_says("no answer within 2s").await,
        "the cut is in the history"
    );
    // The hung write was read back before it was retried.
    let read_back = rig
        .proxy
        .seen_op(READ)
        .iter()
        .any(|s| s.at > hung && s.at < retried);
    assert!(read_back, "a read between the hung write and its retry");
}

/// The plan's write limit is the one that holds, also past the admin
/// client's own default of 5 s (which used to cut every call at 5 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_limit_longer_than_the_clients_default_is_honoured() {
    let rig = Rig::new(Green::Healthy, "1s", "[timeouts]\nrouter_write = \"7s\"").await;
    rig.proxy
        .inject(On::op(WRITE).after(1).times(1), Fault::Hang);
    let driving = rig.run.drive();
    let hung = rig
        .proxy
        .wait_for(WRITE, 2, Duration::from_secs(30))
        .await
        .at;
    let retried = rig
        .proxy
        .wait_for(WRITE, 3, Duration::from_secs(30))
        .await
        .at;
    let end = driving.await.unwrap();
    figure("local write hang (limit 7s) -> retried", retried - hung);
    assert!(
        retried - hung >= Duration::from_secs(7),
        "cut before the plan's 7 s: retried after {:?}",
        retried - hung
    );
    assert!(
        retried - hung <= Duration::from_millis(8500),
        "{:?}",
        retried - hung
    );
    assert_eq!(end.phase.name(), "succeeded", "{:?}", end.phase);
    assert!(rig.run.history_says("no answer within 7s").await);
    rig.assert_reported_is_true(&end).await;
}

/// A failing green whose rollback write hangs: the write is cut at its
/// limit and retried, and blue is restored within the limit, not after an
/// operator steps in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_rollback_write_is_retried_and_blue_is_restored_within_its_limit() {
    let rig = Rig::new(Green::Failing, "2s", "[timeouts]\nrouter_write = \"2s\"").await;
    // Write 1 is 10 %, write 2 the rollback.
    rig.proxy
        .inject(On::op(WRITE).after(1).times(1), Fault::Hang);
    let end = rig.run.drive().await.unwrap();
    let hung = rig.proxy.at(WRITE, 2);
    let restored = rig.proxy.at(WRITE, 3);
    figure("local rollback hang -> blue restored", restored - hung);
    assert!(
        restored - hung <= Duration::from_secs(2) + Duration::from_millis(1500),
        "blue restored {:?} after the hung rollback write",
        restored - hung
    );
    assert_eq!(end.phase.name(), "rolled-back", "{:?}", end.phase);
    rig.assert_reported_is_true(&end).await;
    assert_eq!(end.split, Split::ZERO);
    let reason = end.phase.reason().unwrap();
    assert!(
        reason.contains("http"),
        "the failed check is the reason: {reason}"
    );
    assert_eq!(rig.proxy.seen_op(WRITE).len(), 3, "10 %, 0 % hung, 0 %");
}

/// An abort posted while a split write hangs takes effect within a tick:
/// the write is cut, and blue restored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abort_during_a_hung_write_takes_effect_within_a_tick() {
    let rig = Rig::new(Green::Healthy, "1s", "[timeouts]\nrouter_write = \"5m\"").await;
    rig.proxy
        .inject(On::op(WRITE).after(1).times(1), Fault::Hang);
    let driving = rig.run.drive();
    rig.proxy.wait_for(WRITE, 2, Duration::from_secs(30)).await;
    let posted = Instant::now();
    rig.run.post(Command::Abort).await;
    let restored = rig
        .proxy
        .wait_for(WRITE, 3, Duration::from_secs(30))
        .await
        .at;
    let end = driving.await.unwrap();
    figure(
        "abort during local write hang -> blue write sent",
        restored - posted,
    );
    // A tick to see the command, then the write.
    assert!(
        restored - posted <= TICK + Duration::from_millis(800),
        "the abort took {:?}",
        restored - posted
    );
    assert_eq!(end.phase.name(), "aborted", "{:?}", end.phase);
    rig.assert_reported_is_true(&end).await;
    assert_eq!(end.split, Split::ZERO);
}

/// A read of the split that never answers at the start is cut at
/// `router_read`; the engine retries it, and whatever it decides, what it
/// reports is what the proxy has.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_split_read_at_the_start_is_cut_at_its_limit() {
    let rig = Rig::new(Green::Healthy, "1s", "[timeouts]\nrouter_read = \"2s\"").await;
    // The first read is the one before any traffic moves.
    rig.proxy.inject(On::op(READ).times(1), Fault::Hang);
    let driving = rig.run.drive();
    let hung = rig
        .proxy
        .wait_for(READ, 1, Duration::from_secs(30))
        .await
        .at;
    let next = rig
        .proxy
        .wait_for(READ, 2, Duration::from_secs(30))
        .await
        .at;
    let end = driving.await.unwrap();
    figure("local read hang at start -> read again", next - hung);
    assert!(
        next - hung >= Duration::from_secs(2),
        "the hung read was given its 2 s: read again after {:?}",
        next - hung
    );
    // Cut at 2 s, then the first back-off (200 ms).
    assert!(
        next - hung <= Duration::from_secs(2) + Duration::from_millis(1000),
        "read again {:?} after the hung read",
        next - hung
    );
    // Nothing was written before the split was known.
    if let Some(first_write) = rig.proxy.seen_op(WRITE).first() {
        assert!(first_write.at > next, "a write before the split was read");
    }
    assert!(
        rig.run.history_says("no answer within 2s").await,
        "the cut is in the history"
    );
    rig.assert_reported_is_true(&end).await;
    assert_eq!(end.phase.name(), "succeeded", "{:?}", end.phase);
}

// ---------------------------------------------------------------- replies lost

/// A split write that lands but whose reply is lost: cutover reads the
/// proxy back and reports the split it really has, not the one it last
/// confirmed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_whose_reply_is_lost_is_reported_as_the_proxy_has_it() {
    let mut rig = Rig::new(Green::Healthy, "3s", "").await;
    // Write 2 (50 %) lands at the proxy; its reply never comes.
    rig.proxy
        .inject(On::op(WRITE).after(1).times(1), Fault::ReplyLost);
    let driving = rig.run.drive();
    let lost = rig
        .proxy
        .wait_for(WRITE, 2, Duration::from_secs(30))
        .await
        .at;
    // The first commit after the lost reply: what cutover says then is
    // what the proxy has (the 3 s hold leaves time to read it).
    let (at, said) = rig.run.next_after(lost).await;
    figure("local write reply lost -> split reported", at - lost);
    rig.assert_reported_is_true(&said).await;
    assert_eq!(said.split.basis_points(), 5_000, "{:?}", said.phase);
    let end = driving.await.unwrap();
    assert_eq!(end.phase.name(), "succeeded", "{:?}", end.phase);
    rig.assert_reported_is_true(&end).await;
    // The lost reply was not taken for a failure that needed a retry.
    assert_eq!(
        rig.proxy.seen_op(WRITE).len(),
        3,
        "10 %, 50 % (lost reply), 100 %"
    );
    assert!(
        rig.run.history_says("after all").await,
        "the read-back that found the write landed is in the history"
    );
}

/// A split write whose connection drops before it reaches the proxy: read
/// back, found not landed, retried.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_connection_on_a_write_is_read_back_and_retried() {
    let rig = Rig::new(Green::Healthy, "1s", "").await;
    rig.proxy
        .inject(On::op(WRITE).after(1).times(1), Fault::Drop);
    let end = rig.run.drive().await.unwrap();
    let dropped = rig.proxy.at(WRITE, 2);
    let retried = rig.proxy.at(WRITE, 3);
    figure("local write dropped -> retried", retried - dropped);
    assert!(
        retried - dropped <= Duration::from_secs(1),
        "{:?}",
        retried - dropped
    );
    let read_back = rig
        .proxy
        .seen_op(READ)
        .iter()
        .any(|s| s.at > dropped && s.at < retried);
    assert!(read_back, "a read between the dropped write and its retry");
    assert_eq!(end.phase.name(), "succeeded", "{:?}", end.phase);
    rig.assert_reported_is_true(&end).await;
    // 10 %, 50 % dropped, 50 %, 100 %.
    assert_eq!(rig.proxy.seen_op(WRITE).len(), 4);
}

// ---------------------------------------------------------------- cannot restore

/// Writes failing with 503: the rollback is decided at `adapter_deadline`
/// from the first failure, the rollback's own retries end at
/// `rollback_deadline`, and then the rollout stays active in
/// `cannot-restore`, saying where traffic is, taking `abort` and
/// `rollback --force`, and restoring blue as soon as it can.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_that_keep_failing_end_in_a_loud_cannot_restore_that_restores_blue_when_it_can() {
    let mut rig = Rig::new(
        Green::Healthy,
        "1s",
        "[rollback]\nadapter_deadline = \"3s\"\nrollback_deadline = \"3s\"",
    )
    .await;
    rig.proxy.inject(On::op(WRITE).after(1), Fault::Status(503));
    let driving = rig.run.drive();
    let first = rig
        .proxy
        .wait_for(WRITE, 2, Duration::from_secs(30))
        .await
        .at;
    let (_, said) = rig
        .run
        .until("cannot-restore", |r, _| r.phase.name() == "cannot-restore")
        .await;
    let decided = rig.run.entered("rolling-back").await;
    let cannot = rig.run.entered("cannot-restore").await;
    figure(
        "local 503 -> rollback decided",
        decided.saturating_duration_since(first),
    );
    figure(
        "local 503 -> cannot-restore",
        cannot.saturating_duration_since(first),
    );
    assert!(
        decided.saturating_duration_since(first) <= Duration::from_millis(3500),
        "{:?}",
        decided.saturating_duration_since(first)
    );
    assert!(
        cannot.saturating_duration_since(first) <= Duration::from_millis(6500),
        "{:?}",
        cannot.saturating_duration_since(first)
    );
    // Still active, and saying the truth: 10 % is still on green.
    let (record, _) = rig.run.engine.load(&rig.run.id).await.unwrap();
    assert!(record.active);
    rig.assert_reported_is_true(&said).await;
    assert_eq!(said.split.basis_points(), 1_000);
    assert!(
        rig.run.history_says("CANNOT RESTORE").await,
        "cannot-restore is loud"
    );
    // `abort` is taken (keep trying), not refused.
    rig.run.post(Command::Abort).await;
    let writes = rig.proxy.seen_op(WRITE).len();
    rig.proxy
        .wait_for(WRITE, writes + 1, Duration::from_secs(40))
        .await;
    // The proxy's admin API works again; `rollback --force` tries at once.
    rig.proxy.clear();
    let forced = Instant::now();
    rig.run.post(Command::Rollback).await;
    let end = driving.await.unwrap();
    let restored = rig.proxy.seen_op(WRITE).last().unwrap().at;
    figure(
        "rollback --force in cannot-restore -> blue write",
        restored.saturating_duration_since(forced),
    );
    assert!(
        restored.saturating_duration_since(forced) <= TICK + Duration::from_millis(800),
        "{:?}",
        restored.saturating_duration_since(forced)
    );
    assert!(
        matches!(end.phase.name(), "aborted" | "rolled-back"),
        "{:?}",
        end.phase
    );
    rig.assert_reported_is_true(&end).await;
    assert_eq!(end.split, Split::ZERO);
    let (record, _) = rig.run.engine.load(&rig.run.id).await.unwrap();
    assert!(!record.active);
}
