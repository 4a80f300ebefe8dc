//! Drives every active rollout in a store, many at once: what `cutover
//! serve` and `cutover watch` run.
//!
//! A controller looks for active rollouts nobody drives (new ones, and the
//! orphans of processes that died once their lease ran out), takes each
//! one's lease and drives it with an [`Engine`] task of its own. So that a
//! controller with thousands of rollouts does not make thousands of store
//! calls per tick, it does on their behalf what a lone driver does for
//! itself: one query per tick follows the store-wide command feed and
//! hands each command to its rollout's driver, and one bulk renewal per
//! third of the lease keeps every lease it holds. The renewals run on their
//! own, apart from the scan and the command feed, so a scan that takes
//! long (many orphans to take over at once) never lets a lease lapse. Each
//! driver learns of every renewal of its lease; one whose renewal is
//! overdue renews for itself, and none changes the router on a lease with
//! less than a third of its TTL left without renewing it first. A lease
//! another holder has taken is reported to its driver, which stops without
//! acting further.
//!
//! Several controllers (replicas) may share a store: the leases decide who
//! drives what, so each rollout has one driver at a time, and a replica
//! that dies leaves its rollouts to the others once their leases run out.
//! A replica asked to stop lets each driver finish the action in flight,
//! persist, and release its lease, so another takes over at once.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use cutover_core::{Rollout, Timestamp};
use tokio::sync::{mpsc, watch, Notify};
use tokio::task::JoinSet;

use crate::driver::{lease_name, stop_requested, Adapters, Control, Engine, EngineError, Feed};
use crate::store::PostedCommand;

/// Builds the adapters a rollout's (stored) plan names.
#[async_trait]
pub trait AdapterFactory: Send + Sync {
    async fn adapters(&self, rollout: &Rollout) -> Result<Adapters, String>;
}

#[derive(Clone, Debug)]
pub struct ControllerOptions {
    /// How often the store is searched for rollouts without a driver.
    pub scan_interval: Duration,
    /// At most this many rollouts driven at once by this controller.
    pub max_rollouts: usize,
    /// At most this many rollouts taken on per scan: replicas that share a
    /// store interleave their scans, each in an order of its own, and so
    /// share the rollouts between them instead of the first taking all.
    pub scan_batch: usize,
    /// After adapters could not be built for a rollout, wait this long
    /// before trying again.
    pub retry_failed_after: Duration,
}

impl Default for ControllerOptions {
    fn default() -> ControllerOptions {
        ControllerOptions {
            scan_interval: Duration::from_secs(2),
            max_rollouts: 10_000,
            scan_batch: 500,
            retry_failed_after: Duration::from_secs(30),
        }
    }
}

/// What a controller reports as it works (logs, metrics, event streams).
#[derive(Clone, Debug, PartialEq)]
pub enum Happening {
    /// This controller took a rollout over (`orphan`: its lease had been
    /// held by another process before).
    Took { id: String, orphan: bool },
    /// A driver of this controller ended, with how.
    Ended { id: String, outcome: String },
    /// Adapters for a rollout could not be built; it is tried again later.
    Unbuildable { id: String, error: String },
}

/// Called with each [`Happening`].
pub type Reporter = Arc<dyn Fn(&Happening) + Send + Sync>;

struct Driven {
    commands: mpsc::UnboundedSender<PostedCommand>,
    lease_lost: watch::Sender<bool>,
    lease_renewed: watch::Sender<Timestamp>,
}

pub struct Controller {
    engine: Arc<Engine>,
    factory: Arc<dyn AdapterFactory>,
    options: ControllerOptions,
    services: Mutex<Option<HashSet<String>>>,
    driven: Mutex<HashMap<String, Driven>>,
    /// Rollouts whose adapters could not be built, and when that was.
    failed: Mutex<HashMap<String, Timestamp>>,
    wake: Notify,
    reporter: Option<Reporter>,
}

impl Controller {
    pub fn new(
        engine: Arc<Engine>,
        factory: Arc<dyn AdapterFactory>,
        options: ControllerOptions,
    ) -> Controller {
        Controller {
            engine,
            factory,
            options,
            services: Mutex::new(None),
            driven: Mutex::default(),
            failed: Mutex::default(),
            wake: Notify::new(),
            reporter: None,
        }
    }

    /// Drive only rollouts of these services (default: every one).
    pub fn only_services(self, services: impl IntoIterator<Item = String>) -> Controller {
        self.set_services(services);
        self
    }

    /// Changes which services' rollouts are taken on from the next scan
    /// (those being driven are driven to their end).
    pub fn set_services(&self, services: impl IntoIterator<Item = String>) {
        *self.services.lock().unwrap_or_else(|e| e.into_inner()) =
            Some(services.into_iter().collect());
    }

    pub fn with_reporter(mut self, reporter: Reporter) -> Controller {
        self.reporter = Some(reporter);
        self
    }

    pub fn engine(&self) -> &Arc<Engine> {
        &self.engine
    }

    /// Look for rollouts to drive now rather than at the next scan (e.g.
    /// one was just created).
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// The rollouts this controller drives now.
    pub fn driven(&self) -> Vec<String> {
        let mut ids: Vec<String> = self.lock_driven().keys().cloned().collect();
        ids.sort();
        ids
    }

    fn lock_driven(&self) -> std::sync::MutexGuard<'_, HashMap<String, Driven>> {
        self.driven.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn report(&self, h: Happening) {
        match &h {
            Happening::Took { id, orphan } => {
                tracing::info!(rollout = %id, orphan, "driving rollout")
            }
            Happening::Ended { id, outcome } => {
                tracing::info!(rollout = %id, %outcome, "stopped driving rollout")
            }
            Happening::Unbuildable { id, error } => {
                tracing::error!(rollout = %id, %error, "cannot build the rollout's adapters; trying again later")
            }
        }
        if let Some(r) = &self.reporter {
            r(&h);
        }
    }

    /// Runs until `stop` becomes true, then stops every driver (each
    /// finishes its action in flight, persists and releases its lease) and
    /// returns once they all have.
    pub async fn run(self: &Arc<Self>, stop: watch::Receiver<bool>) -> Result<(), EngineError> {
        let cursor = self.engine.store().latest_command_seq().await?;
        // The leases are kept until the last driver has stopped: one that
        // finishes its action in flight after a stop still holds its lease.
        let (renewals_end, end) = watch::channel(false);
        let work = async {
            self.work(stop, cursor).await;
            let _ = renewals_end.send(true);
        };
        tokio::join!(work, self.keep_leases(end));
        Ok(())
    }

    /// Renews every lease this controller holds each third of the TTL,
    /// until `end` becomes true.
    async fn keep_leases(&self, end: watch::Receiver<bool>) {
        let ttl = self.engine.options().lease_ttl;
        let mut next = self.engine.now().after(ttl / 3);
        loop {
            let sleep = tokio::time::sleep(next.since(self.engine.now()));
            tokio::select! {
                _ = sleep => {}
                _ = stop_requested(Some(end.clone())) => return,
            }
            let now = self.engine.now();
            next = now.after(ttl / 3);
            self.renew_leases(now, ttl).await;
        }
    }

    /// The scan and the command feed until `stop`; then stops every driver
    /// and waits for them.
    async fn work(&self, mut stop: watch::Receiver<bool>, mut cursor: u64) {
        let store = self.engine.store().clone();
        let tick = self.engine.options().tick;
        let (stop_drivers, drivers_stop) = watch::channel(false);
        let mut tasks: JoinSet<(String, Result<Rollout, EngineError>)> = JoinSet::new();
        let now = self.engine.now();
        let mut next_scan = now;
        let mut next_poll = now.after(tick);
        loop {
            let now = self.engine.now();
            let wake = next_scan.min(next_poll);
            let sleep = tokio::time::sleep(wake.since(now));
            tokio::select! {
                _ = sleep => {}
                _ = self.wake.notified() => next_scan = self.engine.now(),
                changed = stop.changed() => {
                    if changed.is_err() || *stop.borrow() {
                        break;
                    }
                }
                Some(joined) = tasks.join_next(), if !tasks.is_empty() => {
                    self.ended(joined);
                    continue;
                }
            }
            let now = self.engine.now();
            if now >= next_poll {
                next_poll = now.after(tick);
                match store.commands_since(cursor, 1000).await {
                    Ok(commands) => {
                        let driven = self.lock_driven();
                        for c in commands {
                            cursor = cursor.max(c.seq);
                            if let Some(d) = driven.get(&c.rollout_id) {
                                let _ = d.commands.send(c);
                            }
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "reading operator commands failed"),
                }
            }
            if now >= next_scan {
                next_scan = now.after(self.options.scan_interval);
                if let Err(e) = self.scan(&mut tasks, &drivers_stop).await {
                    tracing::warn!(error = %e, "looking for rollouts to drive failed");
                }
            }
        }
        let _ = stop_drivers.send(true);
        while let Some(joined) = tasks.join_next().await {
            self.ended(joined);
        }
    }

    fn ended(
        &self,
        joined: Result<(String, Result<Rollout, EngineError>), tokio::task::JoinError>,
    ) {
        let (id, result) = match joined {
            Ok(x) => x,
            Err(e) => {
                tracing::error!(error = %e, "a driver task failed");
                return;
            }
        };
        self.lock_driven().remove(&id);
        let outcome = match result {
            Ok(r) if r.phase.is_terminal() => r.phase.name().to_string(),
            Ok(r) => format!("stopped while {}", r.phase.name()),
            Err(EngineError::LeaseHeld { holder, .. }) => format!("driven by `{holder}`"),
            Err(e) => format!("error: {e}"),
        };
        self.report(Happening::Ended { id, outcome });
    }

    async fn renew_leases(&self, now: Timestamp, ttl: Duration) {
        let ids = self.driven();
        if ids.is_empty() {
            return;
        }
        let names: Vec<String> = ids.iter().map(|id| lease_name(id)).collect();
        let store = self.engine.store();
        let renewal = store.renew_leases(&names, self.engine.holder(), now, ttl);
        match self.engine.store_call(renewal).await {
            Ok(held) => {
                let driven = self.lock_driven();
                for (id, held) in ids.iter().zip(held) {
                    let Some(d) = driven.get(id) else { continue };
                    if held {
                        // Dated from when it was asked for: the store may
                        // have applied it at any moment since.
                        let _ = d.lease_renewed.send(now);
                    } else {
                        tracing::warn!(rollout = %id, "lost the lease to another driver");
                        let _ = d.lease_lost.send(true);
                    }
                }
            }
            // The drivers' own store writes notice a lasting failure; the
            // leases stay valid until they run out.
            Err(e) => tracing::warn!(error = %e, "renewing leases failed; trying again"),
        }
    }

    async fn scan(
        &self,
        tasks: &mut JoinSet<(String, Result<Rollout, EngineError>)>,
        stop: &watch::Receiver<bool>,
    ) -> Result<(), EngineError> {
        let store = self.engine.store().clone();
        let mut active = store.list_active_ids().await?;
        // An order of this replica's own, so replicas do not all reach
        // for the same rollouts first.
        let holder = self.engine.holder().to_string();
        active.sort_by_cached_key(|(id, _)| {
            use std::hash::{Hash, Hasher};
            let mut h = std::collections::hash_map::DefaultHasher::new();
            (&holder, id).hash(&mut h);
            h.finish()
        });
        let now = self.engine.now();
        let mut taken = 0;
        let only = self
            .services
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        for (id, service) in active {
            if self.lock_driven().len() >= self.options.max_rollouts
                || taken >= self.options.scan_batch
            {
                break;
            }
            if self.lock_driven().contains_key(&id)
                || only.as_ref().is_some_and(|only| !only.contains(&service))
            {
                continue;
            }
            let failed_at = self
                .failed
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(&id)
                .copied();
            if failed_at.is_some_and(|at| now.since(at) < self.options.retry_failed_after) {
                continue;
            }
            // A live driver elsewhere: leave it alone (a read, not a write).
            let lease = store.lease(&lease_name(&id)).await?;
            if lease
                .as_ref()
                .is_some_and(|l| l.expires_at > now && l.holder != self.engine.holder())
            {
                continue;
            }
            let orphan = lease.is_some_and(|l| l.holder != self.engine.holder());
            let (_, rollout) = match self.engine.load(&id).await {
                Ok(x) => x,
                Err(e) => {
                    self.unbuildable(&id, e.to_string(), now);
                    continue;
                }
            };
            let adapters = match self.factory.adapters(&rollout).await {
                Ok(a) => a,
                Err(e) => {
                    self.unbuildable(&id, e, now);
                    continue;
                }
            };
            self.failed
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&id);
            let (commands, commands_rx) = mpsc::unbounded_channel();
            let (lease_lost, lease_lost_rx) = watch::channel(false);
            let (lease_renewed, lease_renewed_rx) = watch::channel(now);
            self.lock_driven().insert(
                id.clone(),
                Driven {
                    commands,
                    lease_lost,
                    lease_renewed,
                },
            );
            let engine = self.engine.clone();
            let control = Control {
                stop: Some(stop.clone()),
                feed: Some(Feed {
                    commands: commands_rx,
                    lease_lost: lease_lost_rx,
                    lease_renewed: lease_renewed_rx,
                }),
            };
            taken += 1;
            self.report(Happening::Took {
                id: id.clone(),
                orphan,
            });
            tasks.spawn(async move {
                let result = engine.drive_with(&id, &adapters, control).await;
                (id, result)
            });
        }
        Ok(())
    }

    fn unbuildable(&self, id: &str, error: String, now: Timestamp) {
        self.failed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id.to_string(), now);
        self.report(Happening::Unbuildable {
            id: id.to_string(),
            error,
        });
    }
}
