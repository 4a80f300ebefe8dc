//! The controller in simulated time against the real SQLite store: many
//! rollouts at once, orphans taken over, replicas sharing the work, commands
//! routed, a stop that hands over at once.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use cutover_core::{plan, Command, Phase, Rollout, Split, Timestamp};
use cutover_engine::ports::{AdapterError, Router};
use cutover_engine::store::faults::FaultyStore;
use cutover_engine::store::{SqliteStore, Store};
use cutover_engine::{
    AdapterFactory, Adapters, Clock, Controller, ControllerOptions, Engine, Options,
};

const T0: Timestamp = Timestamp(1_700_000_000_000);

/// Every service's split, and every write with who made it and when.
#[derive(Default)]
struct World {
    splits: Mutex<HashMap<String, Split>>,
    writes: Mutex<Vec<(String, String, u64, Split)>>,
    /// Writes made by a driver that did not hold a live lease on its
    /// rollout at that moment, as the store had it.
    unleased: Mutex<Vec<String>>,
}

struct WorldRouter {
    world: Arc<World>,
    service: String,
    writer: String,
    clock: Clock,
    /// The store, read at every write for who holds the rollout's lease.
    leases: Option<(Arc<SqliteStore>, String)>,
}

#[async_trait]
impl Router for WorldRouter {
    fn describe(&self) -> String {
        format!("world router for {}", self.service)
    }
    async fn apply(&self, split: Split) -> Result<Split, AdapterError> {
        if let Some((store, lease)) = &self.leases {
            let now = self.clock.now();
            let held = store.lease(lease).await.unwrap();
            if !held.is_some_and(|l| l.holder == self.writer && l.expires_at > now) {
                self.world.unleased.lock().unwrap().push(format!(
                    "{} wrote {split} on {} at {:?} without a lease",
                    self.writer,
                    self.service,
                    now.since(T0)
                ));
            }
        }
        self.world
            .splits
            .lock()
            .unwrap()
            .insert(self.service.clone(), split);
        self.world.writes.lock().unwrap().push((
            self.service.clone(),
            self.writer.clone(),
            self.clock.now().since(T0).as_millis() as u64,
            split,
        ));
        Ok(split)
    }
    async fn current(&self) -> Result<Split, AdapterError> {
        Ok(self
            .world
            .splits
            .lock()
            .unwrap()
            .get(&self.service)
            .copied()
            .unwrap_or_default())
    }
}

struct Factory {
    world: Arc<World>,
    writer: String,
    clock: Clock,
    /// Where the leases are, to check each write against them.
    db: Option<std::path::PathBuf>,
}

#[async_trait]
impl AdapterFactory for Factory {
    async fn adapters(&self, rollout: &Rollout) -> Result<Adapters, String> {
        let service = &rollout.plan.service;
        if service.starts_with("broken") {
            return Err("no such router (test)".into());
        }
        if service.starts_with("slow") {
            // Building these adapters takes long (an SDK loading its
            // configuration, say): a scan that takes several on is slow.
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
        let leases = self.db.as_ref().map(|db| {
            let store = Arc::new(SqliteStore::open(db).unwrap());
            (store, format!("rollout:{service}-1"))
        });
        Ok(Adapters {
            router: Arc::new(WorldRouter {
                world: self.world.clone(),
                service: service.clone(),
                writer: self.writer.clone(),
                clock: self.clock,
                leases,
            }),
            checks: vec![],
            platform: None,
        })
    }
}

struct Fixture {
    _dir: tempfile::TempDir,
    path: std::path::PathBuf,
    clock: Clock,
    world: Arc<World>,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cutover.db");
        Fixture {
            _dir: dir,
            path,
            clock: Clock::anchored(T0),
            world: Arc::default(),
        }
    }

    fn engine(&self, holder: &str) -> Arc<Engine> {
        self.engine_with(holder, Duration::from_secs(3))
    }

    fn engine_with(&self, holder: &str, lease_ttl: Duration) -> Arc<Engine> {
        let store = Arc::new(SqliteStore::open(&self.path).unwrap());
        let options = Options {
            tick: Duration::from_millis(200),
            lease_ttl,
            ..Options::default()
        };
        Arc::new(Engine::new(store, self.clock, holder, options))
    }

    fn controller(&self, holder: &str) -> Arc<Controller> {
        self.controller_with(holder, Duration::from_secs(3))
    }

    fn controller_with(&self, holder: &str, lease_ttl: Duration) -> Arc<Controller> {
        self.controller_on(holder, self.engine_with(holder, lease_ttl))
    }

    /// A controller on a store that injects faults, whose router checks
    /// every write against the leases.
    fn faulty_controller(&self, holder: &str) -> (Arc<Controller>, Arc<FaultyStore<SqliteStore>>) {
        self.faulty_controller_with(holder, Duration::from_secs(3))
    }

    fn faulty_controller_with(
        &self,
        holder: &str,
        lease_ttl: Duration,
    ) -> (Arc<Controller>, Arc<FaultyStore<SqliteStore>>) {
        let store = Arc::new(FaultyStore::new(SqliteStore::open(&self.path).unwrap()));
        let options = Options {
            tick: Duration::from_millis(200),
            lease_ttl,
            ..Options::default()
        };
        let engine = Arc::new(Engine::new(store.clone(), self.clock, holder, options));
        (self.controller_on(holder, engine), store)
    }

    fn controller_on(&self, holder: &str, engine: Arc<Engine>) -> Arc<Controller> {
        let factory = Arc::new(Factory {
            world: self.world.clone(),
            writer: holder.into(),
            clock: self.clock,
            db: Some(self.path.clone()),
        });
        let options = ControllerOptions {
            scan_interval: Duration::from_millis(500),
            scan_batch: 4,
            ..ControllerOptions::default()
        };
        Arc::new(Controller::new(engine, factory, options))
    }

    async fn create(&self, service: &str, strategy: &str) -> String {
        let text = format!(
            "[service]\nname = \"{service}\"\n[router]\nkind = \"local\"\nadmin_url = \"http://127.0.0.1:1\"\n[strategy]\n{strategy}\n[analysis]\ninterval = \"1s\"\n"
        );
        let plan = plan::parse(&text, "t.toml").unwrap();
        let id = format!("{service}-1");
        self.engine("creator")
            .create(&id, plan, false)
            .await
            .unwrap();
        id
    }

    fn writes(&self, service: &str) -> Vec<(String, u64, Split)> {
        self.world
            .writes
            .lock()
            .unwrap()
            .iter()
            .filter(|w| w.0 == service)
            .map(|w| (w.1.clone(), w.2, w.3))
            .collect()
    }
}

async fn until(what: &str, f: &Fixture, mut cond: impl FnMut() -> bool) {
    for _ in 0..100_000 {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("never: {what} (at {:?})", f.clock.now().since(T0));
}

async fn phase(f: &Fixture, id: &str) -> Phase {
    f.engine("reader").load(id).await.unwrap().1.phase
}

fn spawn(
    c: &Arc<Controller>,
) -> (
    tokio::sync::watch::Sender<bool>,
    tokio::task::JoinHandle<()>,
) {
    let (stop, rx) = tokio::sync::watch::channel(false);
    let c = c.clone();
    let task = tokio::spawn(async move { c.run(rx).await.unwrap() });
    (stop, task)
}

#[tokio::test(start_paused = true)]
async fn drives_many_rollouts_at_once_each_on_its_own_schedule() {
    let f = Fixture::new();
    let mut ids = Vec::new();
    for i in 0..50 {
        ids.push(
            f.create(
                &format!("svc{i}"),
                &format!("preset = \"canary\"\nhold = \"{}s\"", 5 + i % 7),
            )
            .await,
        );
    }
    let c = f.controller("c1");
    let (stop, task) = spawn(&c);
    until("all end", &f, || {
        c.driven().is_empty() && f.world.writes.lock().unwrap().len() == 100
    })
    .await;
    for (i, id) in ids.iter().enumerate() {
        let r = f.engine("reader").load(id).await.unwrap().1;
        assert_eq!(r.phase, Phase::Succeeded, "{id}");
        // Each on its plan: two holds of 5..11 s, started within a scan.
        let took = r.ended_at.unwrap().since(r.started_at.unwrap());
        let planned = Duration::from_secs(2 * (5 + i as u64 % 7));
        assert!(
            took >= planned && took <= planned + Duration::from_millis(300),
            "{id}: {took:?} for {planned:?}"
        );
    }
    stop.send(true).unwrap();
    task.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn an_orphan_is_taken_over_once_its_dead_drivers_lease_runs_out() {
    let f = Fixture::new();
    let id = f.create("web", "preset = \"canary\"\nhold = \"20s\"").await;
    // A `cutover run` drives it for 5 s and dies.
    let dead = f.engine("dead");
    let adapters = Factory {
        world: f.world.clone(),
        writer: "dead".into(),
        clock: f.clock,
        db: None,
    }
    .adapters(&dead.load(&id).await.unwrap().1)
    .await
    .unwrap();
    let _ = tokio::time::timeout(Duration::from_secs(5), dead.drive(&id, &adapters)).await;
    let c = f.controller("c1");
    let (stop, task) = spawn(&c);
    until("taken over and done", &f, || f.writes("web").len() == 2).await;
    until("ended", &f, || c.driven().is_empty()).await;
    let w = f.writes("web");
    assert_eq!(w[0].0, "dead");
    assert_eq!(w[1].0, "c1", "the controller finished it");
    // The dead driver's lease (3 s) ran out 3 s after its last renewal.
    assert_eq!(w[1].1, 20_000, "the hold kept its recorded start");
    assert_eq!(phase(&f, &id).await, Phase::Succeeded);
    stop.send(true).unwrap();
    task.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn replicas_share_the_work_one_driver_per_rollout_and_a_stop_hands_over_at_once() {
    let f = Fixture::new();
    let mut ids = Vec::new();
    for i in 0..20 {
        ids.push(
            f.create(
                &format!("svc{i}"),
                "preset = \"linear\"\nincrement = 25\nhold = \"4s\"",
            )
            .await,
        );
    }
    // Long leases: a takeover that waited for one would be many seconds late.
    let ttl = Duration::from_secs(20);
    let (a, b) = (f.controller_with("a", ttl), f.controller_with("b", ttl));
    let (stop_a, task_a) = spawn(&a);
    let (stop_b, task_b) = spawn(&b);
    until("both drive some", &f, || {
        !a.driven().is_empty()
            && !b.driven().is_empty()
            && a.driven().len() + b.driven().len() == 20
    })
    .await;
    let from_a = a.driven();
    // `a` is asked to stop 6 s in: its rollouts go to `b` at once.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let stopped_at = f.clock.now().since(T0);
    stop_a.send(true).unwrap();
    task_a.await.unwrap();
    until("all end", &f, || {
        b.driven().is_empty() && ids.len() * 4 == f.world.writes.lock().unwrap().len()
    })
    .await;
    for id in &ids {
        assert_eq!(phase(&f, id).await, Phase::Succeeded, "{id}");
    }
    for i in 0..20 {
        let w = f.writes(&format!("svc{i}"));
        assert_eq!(w.len(), 4, "{w:?}");
        // Never two drivers at once: once `b` wrote, `a` never wrote again.
        let first_b = w.iter().position(|x| x.0 == "b").unwrap_or(w.len());
        assert!(w[first_b..].iter().all(|x| x.0 == "b"), "{w:?}");
    }
    // Handed over at once (a released its leases): b's first write for a's
    // rollouts comes within a scan of the stop, not a lease TTL later.
    assert!(!from_a.is_empty());
    for id in &from_a {
        let service = id.trim_end_matches("-1");
        let w = f.writes(service);
        let i = w
            .iter()
            .position(|x| x.0 == "b")
            .unwrap_or_else(|| panic!("b took {service} over: {w:?}"));
        assert!(w[i].1 > stopped_at.as_millis() as u64, "{w:?}");
        // The next step was due a 4 s hold after a's last write; b made it
        // on time (a lease TTL of waiting would have made it late).
        assert!(
            i > 0 && w[i].1 - w[i - 1].1 <= 4_000 + 1_000,
            "{service}: {w:?}"
        );
    }
    stop_b.send(true).unwrap();
    task_b.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn commands_reach_their_rollouts_within_a_tick_and_a_broken_one_leaves_the_rest_alone() {
    let f = Fixture::new();
    let a = f.create("web", "preset = \"canary\"\nhold = \"1m\"").await;
    let broken = f
        .create("broken", "preset = \"canary\"\nhold = \"1m\"")
        .await;
    let c = f.controller("c1");
    let (stop, task) = spawn(&c);
    until("holding", &f, || f.writes("web").len() == 1).await;
    let store = SqliteStore::open(&f.path).unwrap();
    let at = f.clock.now().since(T0).as_millis() as u64;
    store
        .post_command(&a, Command::Abort, f.clock.now())
        .await
        .unwrap();
    until("aborted", &f, || f.writes("web").len() == 2).await;
    let w = f.writes("web");
    assert_eq!(w[1].2, Split::ZERO);
    assert!(w[1].1 - at <= 400, "abort took {} ms", w[1].1 - at);
    assert_eq!(phase(&f, &a).await.name(), "aborted");
    // The broken plan never got a driver; it is still there, active, untouched.
    assert!(!c.driven().contains(&broken));
    assert_eq!(phase(&f, &broken).await, Phase::Pending);
    stop.send(true).unwrap();
    task.await.unwrap();
}

/// Every write to the router was made under a live lease of its writer.
fn assert_every_write_leased(f: &Fixture) {
    let unleased = f.world.unleased.lock().unwrap();
    assert!(unleased.is_empty(), "{unleased:#?}");
}

#[tokio::test(start_paused = true)]
async fn a_slow_scan_never_lets_the_leases_of_driven_rollouts_lapse() {
    let f = Fixture::new();
    let web = f
        .create("web", "preset = \"linear\"\nincrement = 10\nhold = \"1s\"")
        .await;
    let c = f.controller("c1");
    let (stop, task) = spawn(&c);
    until("web moving", &f, || f.writes("web").len() == 1).await;
    // Four rollouts whose adapters take 2 s each: the scan that takes them
    // on lasts 8 s, well past the 3 s lease of `web`, which moves a step a
    // second meanwhile.
    for i in 0..4 {
        f.create(&format!("slow{i}"), "preset = \"canary\"\nhold = \"1s\"")
            .await;
    }
    c.wake();
    until("web done", &f, || f.writes("web").len() == 10).await;
    until("all done", &f, || c.driven().is_empty()).await;
    assert_every_write_leased(&f);
    assert_eq!(phase(&f, &web).await, Phase::Succeeded);
    stop.send(true).unwrap();
    task.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_driver_whose_controller_cannot_renew_renews_before_it_acts_and_keeps_its_rollout() {
    let f = Fixture::new();
    let web = f
        .create("web", "preset = \"linear\"\nincrement = 10\nhold = \"1s\"")
        .await;
    let (a, store) = f.faulty_controller("a");
    // Every bulk renewal of `a` fails; a lease at a time still works.
    store
        .fail_renewals
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let (stop_a, task_a) = spawn(&a);
    until("web moving", &f, || f.writes("web").len() == 1).await;
    // A second replica, ready to take over any lease that lapses.
    let b = f.controller("b");
    let (stop_b, task_b) = spawn(&b);
    until("web done", &f, || f.writes("web").len() == 10).await;
    until("ended", &f, || a.driven().is_empty()).await;
    assert_every_write_leased(&f);
    let w = f.writes("web");
    assert!(w.iter().all(|x| x.0 == "a"), "one driver throughout: {w:?}");
    assert_eq!(phase(&f, &web).await, Phase::Succeeded);
    for (stop, task) in [(stop_a, task_a), (stop_b, task_b)] {
        stop.send(true).unwrap();
        task.await.unwrap();
    }
}

#[tokio::test(start_paused = true)]
async fn a_brief_store_failure_after_the_first_lease_ttl_is_retried_not_failed_safe() {
    let f = Fixture::new();
    let web = f
        .create("web", "preset = \"linear\"\nincrement = 10\nhold = \"1s\"")
        .await;
    let (c, store) = f.faulty_controller("c1");
    let (stop, task) = spawn(&c);
    until("web moving", &f, || f.writes("web").len() == 1).await;
    // 5 s in, past the first 3 s lease (renewed by the controller since),
    // every store write fails for 1.2 s: at least one step's commit fails.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let writes = std::sync::atomic::Ordering::SeqCst;
    store.fail_writes.store(true, writes);
    tokio::time::sleep(Duration::from_millis(1200)).await;
    store.fail_writes.store(false, writes);
    until("ended", &f, || c.driven().is_empty()).await;
    let w = f.writes("web");
    assert_eq!(phase(&f, &web).await, Phase::Succeeded, "{w:?}");
    assert!(
        w.iter().all(|x| x.2 != Split::ZERO),
        "never sent back to blue: {w:?}"
    );
    assert_every_write_leased(&f);
    stop.send(true).unwrap();
    task.await.unwrap();
}

/// A bulk renewal in flight when a stopping replica releases its leases
/// lands after the release. It must not take them again: the other
/// replica would then wait a whole TTL to take the rollouts over.
#[tokio::test(start_paused = true)]
async fn a_renewal_in_flight_when_a_replica_stops_does_not_keep_its_rollouts_from_the_others() {
    let f = Fixture::new();
    for i in 0..4 {
        f.create(
            &format!("svc{i}"),
            "preset = \"linear\"\nincrement = 25\nhold = \"30s\"",
        )
        .await;
    }
    let ttl = Duration::from_secs(20);
    let (a, store_a) = f.faulty_controller_with("a", ttl);
    let (stop_a, task_a) = spawn(&a);
    until("a drives them all", &f, || a.driven().len() == 4).await;
    // a's renewals now take 3 s to reach the store; stop a during one.
    store_a
        .renewal_delay_ms
        .store(3_000, std::sync::atomic::Ordering::SeqCst);
    until("a renewal in flight", &f, || {
        store_a
            .renewals_in_flight
            .load(std::sync::atomic::Ordering::SeqCst)
            > 0
    })
    .await;
    stop_a.send(true).unwrap();
    task_a.await.unwrap();
    assert_eq!(
        store_a
            .renewals_in_flight
            .load(std::sync::atomic::Ordering::SeqCst),
        0,
        "the renewal landed after a's drivers released their leases"
    );
    // b starts once a has stopped and its renewal has landed.
    let started = f.clock.now();
    let b = f.controller_with("b", ttl);
    let (stop_b, task_b) = spawn(&b);
    until("b drives them all", &f, || b.driven().len() == 4).await;
    let waited = f.clock.now().since(started);
    // Its first scan; not the rest of a 20 s lease the renewal re-took.
    assert!(
        waited < Duration::from_secs(2),
        "b took a's rollouts over {waited:?} after it started"
    );
    assert_every_write_leased(&f);
    stop_b.send(true).unwrap();
    task_b.await.unwrap();
}

/// `max_rollouts` bounds how many rollouts one controller drives at once:
/// the rest wait for a free place, and every one still ends as planned.
#[tokio::test(start_paused = true)]
async fn no_more_rollouts_are_driven_at_once_than_max_rollouts() {
    let f = Fixture::new();
    let mut ids = Vec::new();
    for i in 0..6 {
        ids.push(
            f.create(&format!("svc{i}"), "preset = \"canary\"\nhold = \"3s\"")
                .await,
        );
    }
    let engine = f.engine_with("c1", Duration::from_secs(3));
    let factory = Arc::new(Factory {
        world: f.world.clone(),
        writer: "c1".into(),
        clock: f.clock,
        db: Some(f.path.clone()),
    });
    let options = ControllerOptions {
        scan_interval: Duration::from_millis(500),
        max_rollouts: 2,
        ..ControllerOptions::default()
    };
    let c = Arc::new(Controller::new(engine, factory, options));
    let (stop, task) = spawn(&c);
    let mut most = 0;
    until("all end", &f, || {
        most = most.max(c.driven().len());
        assert!(c.driven().len() <= 2, "driving {:?}", c.driven());
        f.world.writes.lock().unwrap().len() == 12 && c.driven().is_empty()
    })
    .await;
    assert_eq!(most, 2, "two at a time");
    for id in &ids {
        assert_eq!(phase(&f, id).await, Phase::Succeeded, "{id}");
    }
    stop.send(true).unwrap();
    task.await.unwrap();
}
