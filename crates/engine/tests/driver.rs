//! The driver in simulated time (tokio's paused clock) against the real
//! SQLite store, with scripted router and checks.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use cutover_core::plan;
use cutover_core::{Command, Observation, Phase, Rollout, Split, Timestamp, Verdict};
use cutover_engine::ports::{AdapterError, Check, CheckContext, Router};
use cutover_engine::store::{SqliteStore, Store};
use cutover_engine::{Adapters, Clock, Engine, EngineError, Options};

const T0: Timestamp = Timestamp(1_700_000_000_000);

/// Records every split applied, and what the store said the rollout
/// intended at that moment (to show intent is persisted before acting).
struct ScriptedRouter {
    store: Arc<SqliteStore>,
    id: String,
    applied: Mutex<Vec<(Split, Split)>>,
    clock: Clock,
    log: Mutex<Vec<(u64, Split)>>,
    /// Set by a test: the router lost its state (a restart) or someone
    /// changed it by hand.
    changed: Mutex<Option<Split>>,
}

#[async_trait]
impl Router for ScriptedRouter {
    fn describe(&self) -> String {
        "scripted".into()
    }
    async fn apply(&self, split: Split) -> Result<Split, AdapterError> {
        // What the store says is intended (unless a test broke the store).
        let intended = match self.store.load(&self.id).await {
            Ok(Some(record)) => Rollout::from_snapshot(&record.state).unwrap().target,
            _ => split,
        };
        self.applied.lock().unwrap().push((split, intended));
        *self.changed.lock().unwrap() = None;
        self.log
            .lock()
            .unwrap()
            .push((self.clock.now().since(T0).as_millis() as u64, split));
        Ok(split)
    }
    async fn current(&self) -> Result<Split, AdapterError> {
        if let Some(split) = *self.changed.lock().unwrap() {
            return Ok(split);
        }
        Ok(self
            .applied
            .lock()
            .unwrap()
            .last()
            .map_or(Split::ZERO, |a| a.0))
    }
}

/// Fails once green is at or above `fail_from` percent.
struct GreenFailsAbove {
    router: Arc<ScriptedRouter>,
    fail_from: f64,
}

#[async_trait]
impl Check for GreenFailsAbove {
    fn name(&self) -> &str {
        "scripted"
    }
    async fn evaluate(&self, _ctx: &CheckContext) -> Observation {
        let split = self.router.current().await.unwrap();
        if split.percent() >= self.fail_from {
            Observation::new(
                "scripted",
                Verdict::Fail,
                format!("green at {split} misbehaves"),
            )
        } else {
            Observation::new("scripted", Verdict::Pass, "fine")
        }
    }
}

struct Fixture {
    _dir: tempfile::TempDir,
    path: std::path::PathBuf,
    store: Arc<SqliteStore>,
    clock: Clock,
}

impl Fixture {
    fn new() -> Fixture {
        Fixture::in_dir(tempfile::tempdir().unwrap())
    }

    /// In memory-backed storage where there is some: for tests that write
    /// thousands of fsynced commits, the disk's speed is not what they test.
    fn in_memory() -> Fixture {
        match tempfile::tempdir_in("/dev/shm") {
            Ok(dir) => Fixture::in_dir(dir),
            Err(_) => Fixture::new(),
        }
    }

    fn in_dir(dir: tempfile::TempDir) -> Fixture {
        let path = dir.path().join("cutover.db");
        let store = Arc::new(SqliteStore::open(&path).unwrap());
        Fixture {
            _dir: dir,
            path,
            store,
            clock: Clock::anchored(T0),
        }
    }

    fn engine(&self, holder: &str) -> Engine {
        let options = Options {
            tick: Duration::from_millis(200),
            lease_ttl: Duration::from_secs(3),
            ..Options::default()
        };
        Engine::new(self.store.clone(), self.clock, holder, options)
    }

    fn adapters(&self, id: &str, fail_from: f64) -> (Adapters, Arc<ScriptedRouter>) {
        let router = Arc::new(ScriptedRouter {
            store: self.store.clone(),
            id: id.into(),
            applied: Mutex::default(),
            clock: self.clock,
            log: Mutex::default(),
            changed: Mutex::default(),
        });
        let check = Arc::new(GreenFailsAbove {
            router: router.clone(),
            fail_from,
        });
        (
            Adapters {
                router: router.clone(),
                checks: vec![check],
                platform: None,
            },
            router,
        )
    }
}

fn plan(strategy: &str) -> cutover_core::Plan {
    let text = format!(
        "[service]\nname = \"web\"\n[router]\nkind = \"local\"\nadmin_url = \"http://127.0.0.1:1\"\n[strategy]\n{strategy}\n[analysis]\ninterval = \"5s\"\n"
    );
    plan::parse(&text, "t.toml").unwrap()
}

fn log(router: &ScriptedRouter) -> Vec<(u64, f64)> {
    router
        .log
        .lock()
        .unwrap()
        .iter()
        .map(|(t, s)| (t / 1000, s.percent()))
        .collect()
}

#[tokio::test(start_paused = true)]
async fn a_healthy_rollout_succeeds_persisting_intent_before_each_shift() {
    let f = Fixture::new();
    let engine = f.engine("a");
    engine
        .create(
            "r1",
            plan("preset = \"linear\"\nincrement = 50\nhold = \"20s\""),
            false,
        )
        .await
        .unwrap();
    let (adapters, router) = f.adapters("r1", 101.0);
    let end = engine.drive("r1", &adapters).await.unwrap();

    assert_eq!(end.phase, Phase::Succeeded);
    assert_eq!(log(&router), [(0, 50.0), (20, 100.0)]);
    for (applied, intended) in router.applied.lock().unwrap().iter() {
        assert_eq!(
            applied, intended,
            "the store held the intent before the router was called"
        );
    }
    let record = f.store.load("r1").await.unwrap().unwrap();
    assert!(!record.active);
    let stored = Rollout::from_snapshot(&record.state).unwrap();
    assert_eq!(stored, end);
}

#[tokio::test(start_paused = true)]
async fn a_failing_check_sends_everything_back_to_blue_within_one_interval() {
    let f = Fixture::new();
    let engine = f.engine("a");
    engine
        .create(
            "r1",
            plan("preset = \"exponential\"\nhold = \"30s\""),
            false,
        )
        .await
        .unwrap();
    let (adapters, router) = f.adapters("r1", 10.0);
    let end = engine.drive("r1", &adapters).await.unwrap();
    assert!(
        matches!(&end.phase, Phase::RolledBack { reason } if reason.contains("green at 10 % misbehaves")),
        "{:?}",
        end.phase
    );
    // 10 % lands at 90 s (three 30 s holds); the first analysis 5 s later fails.
    assert_eq!(
        log(&router),
        [(0, 1.0), (30, 2.0), (60, 5.0), (90, 10.0), (95, 0.0)]
    );
}

#[tokio::test(start_paused = true)]
async fn commands_posted_by_another_process_take_effect_within_a_tick() {
    let f = Fixture::new();
    let engine = f.engine("a");
    engine
        .create("r1", plan("preset = \"canary\"\nhold = \"1m\""), false)
        .await
        .unwrap();
    let (adapters, router) = f.adapters("r1", 101.0);

    let other = SqliteStore::open(&f.path).unwrap();
    let clock = f.clock;
    let poster = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(12)).await;
        other
            .post_command("r1", Command::Abort, clock.now())
            .await
            .unwrap();
    });
    let end = engine.drive("r1", &adapters).await.unwrap();
    poster.await.unwrap();
    assert!(
        matches!(end.phase, Phase::Aborted { .. }),
        "{:?}",
        end.phase
    );
    let log = router.log.lock().unwrap().clone();
    assert_eq!(log.len(), 2);
    assert_eq!(log[1].1, Split::ZERO);
    assert!(
        log[1].0 >= 12_000 && log[1].0 <= 12_200,
        "abort applied at {} ms",
        log[1].0
    );
}

#[tokio::test(start_paused = true)]
async fn a_driver_killed_at_any_point_is_replaced_and_the_rollout_ends_as_it_would_have() {
    // From 1 ms: in paused time the first driver has its lease by then.
    for kill_at_ms in [1u64, 2, 4_999, 5_000, 20_000, 20_001, 39_999, 45_000] {
        let f = Fixture::new();
        let first = f.engine("first");
        first
            .create(
                "r1",
                plan("preset = \"linear\"\nincrement = 50\nhold = \"20s\"\nbake = \"10s\""),
                false,
            )
            .await
            .unwrap();
        let (adapters, router) = f.adapters("r1", 101.0);
        let killed = tokio::time::timeout(
            Duration::from_millis(kill_at_ms),
            first.drive("r1", &adapters),
        )
        .await;
        assert!(
            killed.is_err(),
            "the first driver was still running at {kill_at_ms} ms"
        );

        // The dead driver's lease blocks a second one until it expires.
        let second = f.engine("second");
        let tried = second.drive("r1", &adapters).await;
        assert!(
            matches!(tried, Err(EngineError::LeaseHeld { .. })),
            "killed at {kill_at_ms} ms: {tried:?}"
        );
        let end = second
            .drive_when_free("r1", &adapters, None, |_, _| {})
            .await
            .unwrap();
        assert_eq!(end.phase, Phase::Succeeded, "killed at {kill_at_ms} ms");
        let splits: Vec<f64> = log(&router).iter().map(|l| l.1).collect();
        let mut distinct = splits.clone();
        distinct.dedup();
        assert_eq!(
            distinct,
            [50.0, 100.0],
            "killed at {kill_at_ms} ms: {splits:?}"
        );
    }
}

/// A router whose every write takes much longer than a lease lasts (as a
/// Route53 change waiting for INSYNC can).
#[derive(Default)]
struct SlowRouter(Mutex<Split>);

#[async_trait]
impl Router for SlowRouter {
    fn describe(&self) -> String {
        "slow".into()
    }
    async fn apply(&self, split: Split) -> Result<Split, AdapterError> {
        tokio::time::sleep(Duration::from_secs(20)).await;
        *self.0.lock().unwrap() = split;
        Ok(split)
    }
    async fn current(&self) -> Result<Split, AdapterError> {
        Ok(*self.0.lock().unwrap())
    }
}

#[tokio::test(start_paused = true)]
async fn the_lease_is_renewed_while_a_slow_action_runs() {
    let f = Fixture::new();
    let first = Arc::new(f.engine("first"));
    first
        .create("r1", plan("preset = \"all-at-once\"\nhold = \"5s\""), false)
        .await
        .unwrap();
    let adapters = Adapters {
        router: Arc::new(SlowRouter::default()),
        checks: vec![],
        platform: None,
    };
    let driving = {
        let (first, adapters) = (first.clone(), adapters.clone());
        tokio::spawn(async move { first.drive("r1", &adapters).await })
    };
    // 10 s into a 20 s apply, with a 3 s lease: still held by the first driver.
    tokio::time::sleep(Duration::from_secs(10)).await;
    let second = f.engine("second");
    assert!(matches!(
        second.drive("r1", &adapters).await,
        Err(EngineError::LeaseHeld { .. })
    ));
    let end = driving.await.unwrap().unwrap();
    assert_eq!(end.phase, Phase::Succeeded);
}

type FaultyStore = cutover_engine::store::faults::FaultyStore<SqliteStore>;

fn faulty(f: &Fixture) -> (Arc<FaultyStore>, Engine) {
    // A lease longer than the store deadline, which is then what decides.
    faulty_with(f, Duration::from_secs(60), Duration::from_secs(30))
}

/// An engine (`faulty`) on a store that injects faults into the fixture's.
fn faulty_with(
    f: &Fixture,
    lease_ttl: Duration,
    store_deadline: Duration,
) -> (Arc<FaultyStore>, Engine) {
    let store = Arc::new(FaultyStore::new(SqliteStore::open(&f.path).unwrap()));
    let options = Options {
        tick: Duration::from_millis(200),
        lease_ttl,
        store_deadline,
        ..Options::default()
    };
    let engine = Engine::new(store.clone(), f.clock, "faulty", options);
    (store, engine)
}

/// Sets `flag` to `value` `after` from now, in the test's clock.
fn at(after: Duration, flag: Arc<FaultyStore>, f: impl FnOnce(&FaultyStore) + Send + 'static) {
    tokio::spawn(async move {
        tokio::time::sleep(after).await;
        f(&flag);
    });
}

#[tokio::test(start_paused = true)]
async fn an_abort_posted_while_no_driver_ran_never_lets_the_split_rise() {
    let f = Fixture::new();
    let first = f.engine("first");
    first
        .create(
            "r1",
            plan("preset = \"linear\"\nincrement = 50\nhold = \"20s\""),
            false,
        )
        .await
        .unwrap();
    let (adapters, router) = f.adapters("r1", 101.0);
    // Killed 10 s into step 1's hold (50 %).
    let _ = tokio::time::timeout(Duration::from_secs(10), first.drive("r1", &adapters)).await;
    // Nobody drives for a minute: the hold ends meanwhile. Then abort.
    tokio::time::sleep(Duration::from_secs(60)).await;
    f.store
        .post_command("r1", Command::Abort, f.clock.now())
        .await
        .unwrap();
    let end = f.engine("second").drive("r1", &adapters).await.unwrap();
    assert_eq!(end.phase.name(), "aborted");
    assert_eq!(log(&router), [(0, 50.0), (70, 0.0)], "never above 50 %");
}

#[tokio::test(start_paused = true)]
async fn a_resumed_driver_reads_the_router_and_pauses_on_drift_instead_of_succeeding() {
    let f = Fixture::new();
    let first = f.engine("first");
    first
        .create(
            "r1",
            plan("preset = \"all-at-once\"\nhold = \"20s\"\nbake = \"20s\""),
            false,
        )
        .await
        .unwrap();
    let (adapters, router) = f.adapters("r1", 101.0);
    // Killed at 100 %; the proxy restarts and comes back at 0 %.
    let _ = tokio::time::timeout(Duration::from_secs(10), first.drive("r1", &adapters)).await;
    *router.changed.lock().unwrap() = Some(Split::ZERO);
    let second = Arc::new(f.engine("second"));
    let driving = {
        let (second, adapters) = (second.clone(), adapters.clone());
        tokio::spawn(async move {
            second
                .drive_when_free("r1", &adapters, None, |_, _| {})
                .await
        })
    };
    // The second driver takes over once the lease expires and pauses on drift.
    let paused = loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let (_, r) = second.load("r1").await.unwrap();
        if r.phase.name() == "paused" {
            break r;
        }
        assert!(
            f.clock.now().since(T0) < Duration::from_secs(120),
            "{:?}",
            r.phase
        );
    };
    driving.abort();
    assert_eq!(paused.split, Split::ZERO, "what the router really does");
    assert!(paused.phase.reason().unwrap().contains("drift"));
    assert_eq!(
        log(&router),
        [(0, 100.0)],
        "and nothing re-applied on its own"
    );
}

#[tokio::test(start_paused = true)]
async fn a_store_down_past_its_deadline_sends_all_traffic_to_the_live_target() {
    let f = Fixture::new();
    let (store, engine) = faulty(&f);
    engine
        .create("r1", plan("preset = \"canary\"\nhold = \"5m\""), false)
        .await
        .unwrap();
    let (adapters, router) = f.adapters("r1", 101.0);
    at(Duration::from_secs(7), store.clone(), |s| {
        s.fail_writes
            .store(true, std::sync::atomic::Ordering::SeqCst)
    });
    let err = engine.drive("r1", &adapters).await.unwrap_err();
    let msg = err.to_string();
    assert!(
        matches!(err, EngineError::StoreUnavailable { .. }),
        "{err:?}"
    );
    assert!(
        msg.contains("the router confirms all traffic on live `blue`")
            && msg.contains("disk I/O error"),
        "{msg}"
    );
    let log = log(&router);
    assert_eq!(log.first(), Some(&(0, 10.0)));
    // The first failed write is the analysis at 10 s; 30 s later, all to blue.
    let (t, split) = *log.last().unwrap();
    assert_eq!(split, 0.0);
    assert!((40..=46).contains(&t), "sent to blue at {t} s");
}

#[tokio::test(start_paused = true)]
async fn a_failing_green_is_rolled_back_at_once_while_the_store_is_down() {
    let f = Fixture::new();
    let (store, engine) = faulty(&f);
    engine
        .create("r1", plan("preset = \"canary\"\nhold = \"5m\""), false)
        .await
        .unwrap();
    // Green fails from the first analysis (5 s); the store is down from 3 s.
    let (adapters, router) = f.adapters("r1", 10.0);
    at(Duration::from_secs(3), store.clone(), |s| {
        s.fail_writes
            .store(true, std::sync::atomic::Ordering::SeqCst)
    });
    let err = engine.drive("r1", &adapters).await.unwrap_err();
    assert!(
        matches!(err, EngineError::StoreUnavailable { .. }),
        "{err:?}"
    );
    let log = log(&router);
    assert_eq!(
        &log[..2],
        [(0, 10.0), (5, 0.0)],
        "the rollback did not wait for the store"
    );
}

#[tokio::test(start_paused = true)]
async fn a_store_back_within_its_deadline_loses_nothing() {
    let f = Fixture::new();
    let (store, engine) = faulty(&f);
    engine
        .create("r1", plan("preset = \"canary\"\nhold = \"30s\""), false)
        .await
        .unwrap();
    let (adapters, router) = f.adapters("r1", 101.0);
    at(Duration::from_secs(7), store.clone(), |s| {
        s.fail_writes
            .store(true, std::sync::atomic::Ordering::SeqCst)
    });
    at(Duration::from_secs(19), store.clone(), |s| {
        s.fail_writes
            .store(false, std::sync::atomic::Ordering::SeqCst)
    });
    let end = engine.drive("r1", &adapters).await.unwrap();
    assert_eq!(end.phase, Phase::Succeeded);
    assert_eq!(log(&router), [(0, 10.0), (30, 100.0)]);
    let events = f.store.events("r1", 0, 1000).await.unwrap();
    assert_eq!(events.len() as u64, end.events);
    assert!(events
        .iter()
        .enumerate()
        .all(|(i, e)| e.seq == i as u64 + 1));
}

#[tokio::test(start_paused = true)]
async fn a_write_that_landed_with_its_reply_lost_is_its_own_not_a_conflict() {
    let f = Fixture::new();
    let (store, engine) = faulty(&f);
    engine
        .create("r1", plan("preset = \"canary\"\nhold = \"20s\""), false)
        .await
        .unwrap();
    let (adapters, router) = f.adapters("r1", 101.0);
    at(Duration::from_secs(7), store.clone(), |s| {
        s.lose_next_reply
            .store(true, std::sync::atomic::Ordering::SeqCst)
    });
    let end = engine.drive("r1", &adapters).await.unwrap();
    assert_eq!(end.phase, Phase::Succeeded);
    assert_eq!(log(&router), [(0, 10.0), (20, 100.0)]);
}

#[tokio::test(start_paused = true)]
async fn the_sqlite_file_deleted_under_a_driver_is_noticed_and_traffic_sent_to_the_live_target() {
    let f = Fixture::new();
    let engine = f.engine("a");
    engine
        .create("r1", plan("preset = \"canary\"\nhold = \"5m\""), false)
        .await
        .unwrap();
    let (adapters, router) = f.adapters("r1", 101.0);
    let path = f.path.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(7)).await;
        std::fs::remove_file(&path).unwrap();
    });
    let err = engine.drive("r1", &adapters).await.unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("gone since it was opened"), "{msg}");
    assert!(msg.contains("all traffic on live `blue`"), "{msg}");
    assert_eq!(log(&router).last().unwrap().1, 0.0);
}

#[tokio::test(start_paused = true)]
async fn a_stopped_driver_persists_and_releases_its_lease_for_the_next_at_once() {
    let f = Fixture::new();
    let engine = f.engine("a");
    engine
        .create("r1", plan("preset = \"canary\"\nhold = \"1m\""), false)
        .await
        .unwrap();
    let (adapters, _router) = f.adapters("r1", 101.0);
    let (stop, rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(7)).await;
        stop.send(true).unwrap();
        // Keep the sender until the driver has seen it.
        tokio::time::sleep(Duration::from_secs(3600)).await;
    });
    let stopped = engine
        .drive_with(
            "r1",
            &adapters,
            cutover_engine::driver::Control::stoppable(rx),
        )
        .await
        .unwrap();
    assert_eq!(stopped.phase, Phase::Holding);
    assert_eq!(f.store.lease("rollout:r1").await.unwrap(), None, "released");
    // Another driver takes over at once (`drive` would refuse a held lease)
    // and the holds keep their recorded times: 60 s + 60 s from the start.
    let end = f.engine("b").drive("r1", &adapters).await.unwrap();
    assert_eq!(end.phase, Phase::Succeeded);
    assert_eq!(end.ended_at.unwrap().since(T0), Duration::from_secs(120));
}

#[tokio::test(start_paused = true)]
async fn a_store_down_longer_than_the_lease_ends_in_the_safe_state_and_the_next_driver_says_why() {
    let f = Fixture::new();
    let (store, engine) = faulty_with(&f, Duration::from_secs(6), Duration::from_secs(30));
    engine
        .create("r1", plan("preset = \"canary\"\nhold = \"5m\""), false)
        .await
        .unwrap();
    let (adapters, router) = f.adapters("r1", 101.0);
    at(Duration::from_secs(7), store.clone(), |s| {
        s.fail_writes
            .store(true, std::sync::atomic::Ordering::SeqCst)
    });
    let err = engine.drive("r1", &adapters).await.unwrap_err();
    assert!(
        matches!(err, EngineError::StoreUnavailable { .. }),
        "{err:?}"
    );
    // Renewed last at 6 s (every 2 s): the lease ran out at 12 s.
    let (t, split) = *log(&router).last().unwrap();
    assert_eq!((t, split), (12, 0.0));

    // The store is back; the next driver finds all traffic on blue where
    // the record says 10 %.
    store
        .fail_writes
        .store(false, std::sync::atomic::Ordering::SeqCst);
    let next = f.engine("second");
    let driving = {
        let adapters = adapters.clone();
        tokio::spawn(async move { next.drive("r1", &adapters).await })
    };
    let paused = loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let (_, r) = f.engine("reader").load("r1").await.unwrap();
        if r.phase.name() == "paused" {
            break r;
        }
        assert!(
            f.clock.now().since(T0) < Duration::from_secs(120),
            "{:?}",
            r.phase
        );
    };
    driving.abort();
    let reason = paused.phase.reason().unwrap();
    assert!(!reason.contains("did not cause"), "{reason}");
    assert!(reason.contains("fail-safe"), "{reason}");
    assert_eq!(paused.split, Split::ZERO, "what the router really does");
}

/// A router that keeps its split, and a check that always passes.
#[derive(Default)]
struct Steady(Mutex<Split>);

#[async_trait]
impl Router for Steady {
    fn describe(&self) -> String {
        "steady".into()
    }
    async fn apply(&self, split: Split) -> Result<Split, AdapterError> {
        *self.0.lock().unwrap() = split;
        Ok(split)
    }
    async fn current(&self) -> Result<Split, AdapterError> {
        Ok(*self.0.lock().unwrap())
    }
}

struct Passes;

#[async_trait]
impl Check for Passes {
    fn name(&self) -> &str {
        "errors"
    }
    async fn evaluate(&self, _ctx: &CheckContext) -> Observation {
        Observation::new(
            "errors",
            Verdict::Pass,
            "green error rate 0 % <= 1 % over 1200 requests (0 5xx) in the last 10s",
        )
    }
}

#[tokio::test(start_paused = true)]
async fn a_day_long_bake_keeps_the_snapshot_small_and_every_decision_in_the_log() {
    let f = Fixture::in_memory();
    let options = Options {
        tick: Duration::from_secs(1),
        lease_ttl: Duration::from_secs(30),
        ..Options::default()
    };
    let largest = Arc::new(Mutex::new(0usize));
    let observer = {
        let largest = largest.clone();
        Arc::new(move |_: &str, r: &Rollout, _: &[cutover_core::Event]| {
            let mut l = largest.lock().unwrap();
            *l = (*l).max(r.to_snapshot().len());
        })
    };
    let engine = Engine::new(f.store.clone(), f.clock, "a", options).with_observer(observer);
    let text = "[service]\nname = \"web\"\n[router]\nkind = \"local\"\nadmin_url = \"http://127.0.0.1:1\"\n\
                [strategy]\npreset = \"canary\"\nsplit = 10\nhold = \"1h\"\nbake = \"24h\"\n[analysis]\ninterval = \"10s\"\n";
    engine
        .create("r1", plan::parse(text, "t.toml").unwrap(), false)
        .await
        .unwrap();
    let adapters = Adapters {
        router: Arc::new(Steady::default()),
        checks: vec![Arc::new(Passes)],
        platform: None,
    };
    let end = engine.drive("r1", &adapters).await.unwrap();
    assert_eq!(end.phase, Phase::Succeeded);
    assert_eq!(
        end.ended_at.unwrap().since(T0),
        Duration::from_secs(26 * 3600)
    );
    // Two holds of 1 h and a 24 h bake, judged every 10 s.
    let events = f.store.events("r1", 0, usize::MAX).await.unwrap();
    let analyses = events
        .iter()
        .filter(|e| e.body.contains("\"observations\""))
        .count();
    assert!(analyses >= 26 * 360, "{analyses} analyses");
    assert_eq!(events.len() as u64, end.events);
    let record = f.store.load("r1").await.unwrap().unwrap();
    let largest = *largest.lock().unwrap();
    assert!(
        record.state.len() < 8 * 1024 && largest < 8 * 1024,
        "snapshot {} bytes, at most {largest}",
        record.state.len()
    );
}

#[tokio::test(start_paused = true)]
async fn the_sqlite_file_cut_under_the_driver_is_a_store_failure_not_a_crash() {
    // Cut while a call may be in flight on the blocking pool: with a
    // memory-mapped file (WAL's `-shm`) that killed the process with
    // SIGBUS; with plain reads it is a store failure, and the driver ends
    // in the safe state, saying why.
    let f = Fixture::new();
    let engine = f.engine("a");
    engine
        .create("r1", plan("preset = \"canary\"\nhold = \"5m\""), false)
        .await
        .unwrap();
    let (adapters, router) = f.adapters("r1", 101.0);
    let path = f.path.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(7)).await;
        std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(0)
            .unwrap();
    });
    let err = engine.drive("r1", &adapters).await.unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains(&f.path.display().to_string()), "{msg}");
    assert!(msg.contains("all traffic on live `blue`"), "{msg}");
    assert_eq!(log(&router).last().unwrap().1, 0.0);
}

/// A router a test makes hang or lose its answers.
#[derive(Default)]
struct Unreliable {
    split: Mutex<Split>,
    /// Writes of these splits never answer.
    hang_writes: Mutex<Vec<Split>>,
    /// Writes land, then answer with an error.
    lose_answers: std::sync::atomic::AtomicBool,
    clock: Mutex<Option<Clock>>,
    log: Mutex<Vec<(u64, Split, &'static str)>>,
}

impl Unreliable {
    fn t(&self) -> u64 {
        self.clock
            .lock()
            .unwrap()
            .map_or(0, |c| c.now().since(T0).as_millis() as u64)
    }
    fn writes(&self) -> Vec<(u64, f64, &'static str)> {
        self.log
            .lock()
            .unwrap()
            .iter()
            .map(|(t, s, what)| (*t, s.percent(), *what))
            .collect()
    }
}

#[async_trait]
impl Router for Unreliable {
    fn describe(&self) -> String {
        "unreliable".into()
    }
    async fn apply(&self, split: Split) -> Result<Split, AdapterError> {
        if self.hang_writes.lock().unwrap().contains(&split) {
            self.log.lock().unwrap().push((self.t(), split, "hung"));
            std::future::pending::<()>().await;
        }
        *self.split.lock().unwrap() = split;
        if self.lose_answers.load(std::sync::atomic::Ordering::SeqCst) {
            self.log
                .lock()
                .unwrap()
                .push((self.t(), split, "landed, answer lost"));
            return Err(AdapterError::transient("connection reset"));
        }
        self.log.lock().unwrap().push((self.t(), split, "applied"));
        Ok(split)
    }
    async fn current(&self) -> Result<Split, AdapterError> {
        Ok(*self.split.lock().unwrap())
    }
}

fn unreliable(f: &Fixture) -> (Arc<Unreliable>, Adapters) {
    let router = Arc::new(Unreliable::default());
    *router.clock.lock().unwrap() = Some(f.clock);
    let adapters = Adapters {
        router: router.clone(),
        checks: vec![],
        platform: None,
    };
    (router, adapters)
}

fn plan_with(strategy: &str, extra: &str) -> cutover_core::Plan {
    let text = format!(
        "[service]\nname = \"web\"\n[router]\nkind = \"local\"\nadmin_url = \"http://127.0.0.1:1\"\n[strategy]\n{strategy}\n[analysis]\ninterval = \"5s\"\n{extra}"
    );
    plan::parse(&text, "t.toml").unwrap()
}

#[tokio::test(start_paused = true)]
async fn a_hung_write_is_cut_at_its_limit_read_back_and_the_deadline_holds() {
    let f = Fixture::new();
    let engine = f.engine("a");
    engine
        .create(
            "r1",
            plan_with(
                "preset = \"canary\"\nhold = \"10s\"",
                "[rollback]\nadapter_deadline = \"45s\"\n[timeouts]\nrouter_write = \"20s\"\n",
            ),
            false,
        )
        .await
        .unwrap();
    let (router, adapters) = unreliable(&f);
    router.hang_writes.lock().unwrap().push(Split::FULL);
    let end = engine.drive("r1", &adapters).await.unwrap();
    assert_eq!(end.phase.name(), "rolled-back", "{:?}", end.phase);
    assert_eq!(end.split, Split::ZERO);
    // 100 % is asked for at 10 s and never answers: each try is cut at 20 s
    // (or at the deadline), and 45 s after the first failure (at 30 s) the
    // rollback is decided and applied: by 75 s, not a fresh deadline later.
    let w = router.writes();
    let back = w.iter().find(|x| x.1 == 0.0).expect("rolled back");
    assert!(
        back.0 <= 75_000 + 500,
        "back on blue at {} ms: {w:?}",
        back.0
    );
    let reason = end.phase.reason().unwrap();
    assert!(reason.contains("no answer within"), "{reason}");
}

#[tokio::test(start_paused = true)]
async fn a_rollback_that_hangs_becomes_cannot_restore_and_keeps_trying() {
    let f = Fixture::new();
    let engine = Arc::new(f.engine("a"));
    engine
        .create(
            "r1",
            plan_with(
                "preset = \"canary\"\nhold = \"1m\"",
                "[rollback]\nrollback_deadline = \"20s\"\n[timeouts]\nrouter_write = \"5s\"\n",
            ),
            false,
        )
        .await
        .unwrap();
    let (router, adapters) = unreliable(&f);
    router.hang_writes.lock().unwrap().push(Split::ZERO);
    let driving = {
        let (engine, adapters) = (engine.clone(), adapters.clone());
        tokio::spawn(async move { engine.drive("r1", &adapters).await })
    };
    // Abort at 7 s: the rollback hangs.
    tokio::time::sleep(Duration::from_secs(7)).await;
    f.store
        .post_command("r1", Command::Abort, f.clock.now())
        .await
        .unwrap();
    let cannot = loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let (_, r) = engine.load("r1").await.unwrap();
        if r.phase.name() == "cannot-restore" {
            break f.clock.now().since(T0);
        }
        assert!(
            f.clock.now().since(T0) < Duration::from_secs(120),
            "{:?}",
            r.phase
        );
    };
    // Decided within the rollback's 20 s deadline of its start (~7 s).
    assert!(
        cannot <= Duration::from_secs(28),
        "cannot-restore at {cannot:?}"
    );
    let (record, r) = engine.load("r1").await.unwrap();
    assert!(record.active, "still active: it keeps trying");
    assert_eq!(r.split.percent(), 10.0, "and says where traffic is");
    // The router works again: the next try restores blue.
    router.hang_writes.lock().unwrap().clear();
    let end = driving.await.unwrap().unwrap();
    assert_eq!(end.phase.name(), "aborted");
    assert_eq!(*router.split.lock().unwrap(), Split::ZERO);
}

#[tokio::test(start_paused = true)]
async fn an_abort_during_a_hung_write_takes_effect_within_a_tick() {
    let f = Fixture::new();
    let engine = Arc::new(f.engine("a"));
    engine
        .create(
            "r1",
            plan_with(
                "preset = \"canary\"\nhold = \"10s\"",
                "[timeouts]\nrouter_write = \"5m\"\n",
            ),
            false,
        )
        .await
        .unwrap();
    let (router, adapters) = unreliable(&f);
    router.hang_writes.lock().unwrap().push(Split::FULL);
    let driving = {
        let (engine, adapters) = (engine.clone(), adapters.clone());
        tokio::spawn(async move { engine.drive("r1", &adapters).await })
    };
    tokio::time::sleep(Duration::from_secs(15)).await; // 100 % hangs since 10 s
    let posted = f.clock.now().since(T0).as_millis() as u64;
    f.store
        .post_command("r1", Command::Abort, f.clock.now())
        .await
        .unwrap();
    let end = driving.await.unwrap().unwrap();
    assert_eq!(end.phase.name(), "aborted");
    let w = router.writes();
    let back = w.iter().find(|x| x.1 == 0.0).unwrap();
    // The tick is 200 ms.
    assert!(
        back.0 - posted <= 400,
        "abort applied {} ms after it was posted: {w:?}",
        back.0 - posted
    );
}

#[tokio::test(start_paused = true)]
async fn a_write_that_landed_with_its_answer_lost_is_reported_as_the_router_has_it() {
    let f = Fixture::new();
    let engine = f.engine("a");
    engine
        .create(
            "r1",
            plan_with("preset = \"canary\"\nhold = \"10s\"", ""),
            false,
        )
        .await
        .unwrap();
    let (router, adapters) = unreliable(&f);
    router
        .lose_answers
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let end = engine.drive("r1", &adapters).await.unwrap();
    assert_eq!(end.phase, Phase::Succeeded);
    // Each write landed once; none was repeated, none was taken for failed.
    let splits: Vec<f64> = router.writes().iter().map(|w| w.1).collect();
    assert_eq!(splits, [10.0, 100.0]);
    let events = f.store.events("r1", 0, 100).await.unwrap();
    assert!(events
        .iter()
        .any(|e| e.body.contains("the write landed though it answered")));
}

/// A check that never answers.
struct Hangs;

#[async_trait]
impl Check for Hangs {
    fn name(&self) -> &str {
        "hangs"
    }
    async fn evaluate(&self, _ctx: &CheckContext) -> Observation {
        std::future::pending().await
    }
}

#[tokio::test(start_paused = true)]
async fn a_hung_check_is_an_error_at_its_limit_and_the_inconclusive_limit_fires() {
    let f = Fixture::new();
    let engine = f.engine("a");
    engine
        .create(
            "r1",
            plan_with(
                "preset = \"canary\"\nhold = \"1m\"",
                "[timeouts]\ncheck = \"2s\"\n",
            ),
            false,
        )
        .await
        .unwrap();
    let (router, mut adapters) = unreliable(&f);
    adapters.checks = vec![Arc::new(Hangs)];
    let end = engine.drive("r1", &adapters).await.unwrap();
    assert_eq!(end.phase.name(), "rolled-back");
    let reason = end.phase.reason().unwrap();
    assert!(
        reason.contains("4 inconclusive verdicts in a row")
            && reason.contains("no answer within 2s"),
        "{reason}"
    );
    // Four analyses every 5 s, each cut at 2 s (plus two retries each):
    // rolled back by about 4 x (5 + 3 x 2) s, not never.
    let back = router.writes().iter().find(|w| w.1 == 0.0).unwrap().0;
    assert!(back <= 50_000, "back on blue at {back} ms");
}

/// A check that remembers how many looks it took, across drivers.
#[derive(Default)]
struct Counting {
    looks: Mutex<u64>,
    restored: Mutex<Option<u64>>,
}

#[async_trait]
impl Check for Counting {
    fn name(&self) -> &str {
        "counting"
    }
    async fn evaluate(&self, _ctx: &CheckContext) -> Observation {
        *self.looks.lock().unwrap() += 1;
        Observation::new("counting", Verdict::Pass, "fine")
    }
    fn state(&self) -> Option<serde_json::Value> {
        Some(serde_json::json!({ "looks": *self.looks.lock().unwrap() }))
    }
    fn restore(&self, state: &serde_json::Value) -> Result<(), String> {
        let looks = state["looks"].as_u64().ok_or("no `looks`")?;
        *self.looks.lock().unwrap() = looks;
        *self.restored.lock().unwrap() = Some(looks);
        Ok(())
    }
}

#[tokio::test(start_paused = true)]
async fn a_checks_state_is_stored_with_each_verdict_and_given_to_the_next_driver() {
    let f = Fixture::new();
    let engine = f.engine("a");
    engine
        .create("r1", plan("preset = \"canary\"\nhold = \"1m\""), false)
        .await
        .unwrap();
    let (router_adapters, _router) = f.adapters("r1", 101.0);
    let first = Arc::new(Counting::default());
    let adapters = Adapters {
        checks: vec![first.clone()],
        ..router_adapters.clone()
    };
    let (stop, rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(17)).await;
        stop.send(true).unwrap();
        tokio::time::sleep(Duration::from_secs(3600)).await;
    });
    engine
        .drive_with(
            "r1",
            &adapters,
            cutover_engine::driver::Control::stoppable(rx),
        )
        .await
        .unwrap();
    // Looks at 5, 10 and 15 s, each stored with its verdict.
    let looks = *first.looks.lock().unwrap();
    assert_eq!(looks, 3);
    let (_, stored) = engine.load("r1").await.unwrap();
    assert_eq!(stored.check_states["counting"]["looks"], looks);

    let second = Arc::new(Counting::default());
    let adapters = Adapters {
        checks: vec![second.clone()],
        ..router_adapters
    };
    let end = f.engine("b").drive("r1", &adapters).await.unwrap();
    assert_eq!(end.phase, Phase::Succeeded);
    assert_eq!(
        *second.restored.lock().unwrap(),
        Some(3),
        "went on from the first"
    );
    assert!(*second.looks.lock().unwrap() > 3);
}

/// One lease renewal failed in a hold that writes nothing for a while; the
/// next renewals work. That failure must not ripen into the fail-safe once
/// `store_deadline` has passed: the store is fine.
#[tokio::test(start_paused = true)]
async fn a_failed_renewal_followed_by_good_ones_never_sets_off_the_fail_safe() {
    let f = Fixture::new();
    let (store, engine) = faulty_with(&f, Duration::from_secs(3), Duration::from_secs(5));
    // No checks: nothing is written during the 1 m hold.
    let text = "[service]\nname = \"web\"\n[router]\nkind = \"local\"\nadmin_url = \"http://127.0.0.1:1\"\n\
                [strategy]\npreset = \"canary\"\nhold = \"1m\"\n[analysis]\njudge = \"end-of-hold\"\ninterval = \"1m\"\n";
    engine
        .create("r1", plan::parse(text, "t.toml").unwrap(), false)
        .await
        .unwrap();
    let (with_checks, router) = f.adapters("r1", 101.0);
    let adapters = Adapters {
        checks: vec![],
        ..with_checks
    };
    // Writes fail for 400 ms around the renewal due at 5 s.
    at(Duration::from_millis(4_900), store.clone(), |s| {
        s.fail_writes
            .store(true, std::sync::atomic::Ordering::SeqCst)
    });
    at(Duration::from_millis(5_300), store.clone(), |s| {
        s.fail_writes
            .store(false, std::sync::atomic::Ordering::SeqCst)
    });
    let end = engine.drive("r1", &adapters).await.unwrap();
    assert_eq!(end.phase, Phase::Succeeded);
    assert_eq!(
        log(&router),
        [(0, 10.0), (60, 100.0)],
        "never sent back to blue"
    );
}

/// Passes while its hold is not over, waits for data once it is, and takes
/// 2 s to answer.
struct SlowPatient(Mutex<Vec<(u64, bool)>>);

#[async_trait]
impl Check for SlowPatient {
    fn name(&self) -> &str {
        "patient"
    }
    async fn evaluate(&self, ctx: &CheckContext) -> Observation {
        let over = ctx.hold_is_over();
        self.0
            .lock()
            .unwrap()
            .push((ctx.now.since(T0).as_secs(), over));
        tokio::time::sleep(Duration::from_secs(2)).await;
        if over {
            Observation::waiting("patient", "more data")
        } else {
            Observation::new("patient", Verdict::Pass, "nothing against green so far")
        }
    }
}

/// A look taken 1 s before its hold ends whose answer comes 1 s after it:
/// the machine judges it as the end of the hold, so the check must too. It
/// once answered "pass so far", and the step advanced on a look that never
/// applied the rule for ending a hold.
#[tokio::test(start_paused = true)]
async fn a_look_answered_after_the_hold_ends_is_judged_as_its_end() {
    let f = Fixture::new();
    let engine = f.engine("a");
    let text = "[service]\nname = \"web\"\n[router]\nkind = \"local\"\nadmin_url = \"http://127.0.0.1:1\"\n\
                [strategy]\npreset = \"canary\"\nhold = \"10s\"\n[analysis]\ninterval = \"3s\"\nwait_for_data = \"1m\"\n\
                [timeouts]\ncheck = \"5s\"\n";
    engine
        .create("r1", plan::parse(text, "t.toml").unwrap(), false)
        .await
        .unwrap();
    let (with_checks, router) = f.adapters("r1", 101.0);
    let check = Arc::new(SlowPatient(Mutex::default()));
    let adapters = Adapters {
        checks: vec![check.clone()],
        ..with_checks
    };
    engine.drive("r1", &adapters).await.unwrap();
    let looks = check.0.lock().unwrap().clone();
    // Asked at 3 s and 8 s (the interval runs from each answer), each try
    // cut at 5 s: the second can answer after the hold's end at 10 s.
    assert_eq!(looks[..2], [(3, false), (8, true)], "{looks:?}");
    // It advanced only once the wait for data ran out: 10 s + 1 m.
    let to_full = log(&router)[1];
    assert_eq!(to_full.1, 100.0);
    assert!(to_full.0 >= 70, "advanced at {} s: {looks:?}", to_full.0);
}
