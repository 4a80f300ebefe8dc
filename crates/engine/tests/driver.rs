//! The driver in simulated time (tokio's paused clock) against the real
//! SQLite store, with scripted router and checks.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use cutover_core::plan;
use cutover_core::{Command, Observation, Phase, Rollout, Split, Timestamp, Verdict};
use cutover_engine::ports::{AdapterError, Check, Router};
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
}

#[async_trait]
impl Router for ScriptedRouter {
    fn describe(&self) -> String {
        "scripted".into()
    }
    async fn apply(&self, split: Split) -> Result<Split, AdapterError> {
        let record = self.store.load(&self.id).await.unwrap().unwrap();
        let stored: Rollout = serde_json::from_str(&record.state).unwrap();
        self.applied.lock().unwrap().push((split, stored.target));
        self.log
            .lock()
            .unwrap()
            .push((self.clock.now().since(T0).as_millis() as u64, split));
        Ok(split)
    }
    async fn current(&self) -> Result<Split, AdapterError> {
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
    async fn evaluate(&self) -> Observation {
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
        let dir = tempfile::tempdir().unwrap();
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
    let stored: Rollout = serde_json::from_str(&record.state).unwrap();
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
    for kill_at_ms in [0u64, 1, 4_999, 5_000, 20_000, 20_001, 39_999, 45_000] {
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
        assert!(matches!(
            second.drive("r1", &adapters).await,
            Err(EngineError::LeaseHeld { .. })
        ));
        let end = second.drive_when_free("r1", &adapters).await.unwrap();
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

/// A router whose every call takes much longer than a lease lasts (as a
/// Route53 change waiting for INSYNC can).
struct SlowRouter;

#[async_trait]
impl Router for SlowRouter {
    fn describe(&self) -> String {
        "slow".into()
    }
    async fn apply(&self, split: Split) -> Result<Split, AdapterError> {
        tokio::time::sleep(Duration::from_secs(20)).await;
        Ok(split)
    }
    async fn current(&self) -> Result<Split, AdapterError> {
        Ok(Split::ZERO)
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
        router: Arc::new(SlowRouter),
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
