//! Drives one rollout to its end.
//!
//! The loop: load the snapshot, take the lease, apply the operator commands
//! posted meanwhile, then repeatedly feed the state machine an input,
//! persist the result with the events it recorded (compare-and-set on the
//! version, one atomic write), and only then perform the actions it asked
//! for. Between actions the driver sleeps until the machine's next wake-up
//! or the next tick, whichever is first; at every tick it renews its lease
//! and picks up operator commands posted to the store by other processes.
//!
//! Every action is idempotent (splits are absolute), so a driver that dies
//! at any instant can be replaced by another that loads the snapshot and
//! calls `Rollout::resume`, which reads the router's split before anything
//! else.
//!
//! The store may fail under a running rollout (disk full, file deleted,
//! DynamoDB throttling). The driver then keeps going on what needs no
//! record: reads (analysis, the router's split) and the one write that is
//! always safe, all traffic to the live target. Anything else waits for the
//! store, retried with back-off and jitter; past `store_deadline`, or once
//! its lease has run out (it could not be renewed, so another driver may
//! be acting), the driver sends all traffic to the live target and stops
//! with [`EngineError::StoreUnavailable`], which says where traffic is.

use std::collections::VecDeque;
use std::hash::{BuildHasher, Hasher};
use std::sync::Arc;
use std::time::Duration;

use cutover_core::verdict::combine;
use cutover_core::{
    Action, Command, Event, Input, Observation, Plan, Rollout, Split, Timestamp, Verdict,
};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;

use crate::clock::Clock;
use crate::ports::{AdapterError, Check, CheckContext, Platform, Router};
use crate::store::{Change, EventRecord, PostedCommand, RolloutRecord, Store, StoreError};

/// The adapters a rollout acts through.
#[derive(Clone)]
pub struct Adapters {
    pub router: Arc<dyn Router>,
    pub checks: Vec<Arc<dyn Check>>,
    pub platform: Option<Arc<dyn Platform>>,
}

#[derive(Clone, Debug)]
pub struct Options {
    /// How often commands are polled and the lease renewed.
    pub tick: Duration,
    /// How long a lease lasts without renewal; another driver may take over
    /// a rollout whose driver has been silent this long.
    pub lease_ttl: Duration,
    /// How long a platform may take to ready green.
    pub prepare_deadline: Duration,
    /// Retries of a check that answers `Error`, within one analysis.
    pub check_retries: u32,
    /// How long the store may keep failing before the driver sends all
    /// traffic to the live target and stops.
    pub store_deadline: Duration,
    /// How long one store call may take before it counts as a failure.
    pub store_call_limit: Duration,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            tick: Duration::from_millis(500),
            lease_ttl: Duration::from_secs(15),
            prepare_deadline: Duration::from_secs(600),
            check_retries: 2,
            store_deadline: Duration::from_secs(30),
            store_call_limit: Duration::from_secs(10),
        }
    }
}

/// The bounds [`Options::check`] enforces.
pub const MIN_TICK: Duration = Duration::from_millis(10);
pub const MAX_TICK: Duration = Duration::from_secs(60);
pub const MIN_LEASE_TTL: Duration = Duration::from_secs(1);
pub const MAX_LEASE_TTL: Duration = Duration::from_secs(3600);
pub const MIN_STORE_CALL_LIMIT: Duration = Duration::from_millis(100);
pub const MAX_STORE_CALL_LIMIT: Duration = Duration::from_secs(600);

impl Options {
    /// Refuses settings under which the engine cannot keep its promises:
    /// a lease must outlive several ticks (it is renewed every third of
    /// its life, and a renewal needs a tick to notice it is due).
    pub fn check(&self) -> Result<(), String> {
        use cutover_core::time::Human;
        if !(MIN_TICK..=MAX_TICK).contains(&self.tick) {
            return Err(format!(
                "tick {} must be from {} to {}",
                Human(self.tick),
                Human(MIN_TICK),
                Human(MAX_TICK)
            ));
        }
        if !(MIN_LEASE_TTL..=MAX_LEASE_TTL).contains(&self.lease_ttl) {
            return Err(format!(
                "lease TTL {} must be from {} to {}",
                Human(self.lease_ttl),
                Human(MIN_LEASE_TTL),
                Human(MAX_LEASE_TTL)
            ));
        }
        if self.lease_ttl < self.tick * 3 {
            return Err(format!(
                "lease TTL {} must be at least three ticks ({})",
                Human(self.lease_ttl),
                Human(self.tick * 3)
            ));
        }
        if !(MIN_STORE_CALL_LIMIT..=MAX_STORE_CALL_LIMIT).contains(&self.store_call_limit) {
            return Err(format!(
                "store timeout {} must be from {} to {}",
                Human(self.store_call_limit),
                Human(MIN_STORE_CALL_LIMIT),
                Human(MAX_STORE_CALL_LIMIT)
            ));
        }
        // A store call that outlives the lease could renew it too late.
        if self.store_call_limit >= self.lease_ttl {
            return Err(format!(
                "store timeout {} must be less than the lease TTL {}",
                Human(self.store_call_limit),
                Human(self.lease_ttl)
            ));
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("rollout `{id}` has a snapshot this version cannot read: {message}")]
    Snapshot { id: String, message: String },
    #[error("rollout `{id}` is being driven by `{holder}`; its lease must expire first")]
    LeaseHeld {
        id: String,
        holder: String,
        /// When the lease runs out unless renewed.
        expires_at: Timestamp,
    },
    #[error("lost the lease on rollout `{0}` to another driver; stopping without acting further")]
    LostLease(String),
    #[error("rollout `{id}`: the store failed for {failing_for}: {message}; sent all traffic to the live target: {traffic}. The rollout's record is as last written; `cutover run` resumes it once the store works")]
    StoreUnavailable {
        id: String,
        message: String,
        failing_for: String,
        /// Where traffic is, in words, as the router confirmed it (or why not).
        traffic: String,
    },
}

/// Called after every persisted transition with the rollout's id, the
/// rollout and the events that write appended (progress display, metrics,
/// event streams).
pub type Observer = Arc<dyn Fn(&str, &Rollout, &[Event]) + Send + Sync>;

/// Receives the duration and outcome of every adapter call the engine
/// makes (metrics). `adapter` is e.g. `router:route53` or `check:errors`;
/// `operation` e.g. `apply`, `read`, `evaluate`.
pub trait Instruments: Send + Sync {
    fn adapter_call(&self, adapter: &str, operation: &str, took: Duration, failed: bool);
}

/// How a driver is steered from outside.
pub struct Control {
    /// Set to true to stop: the action in flight finishes, its result is
    /// persisted, the lease is released and `drive` returns the rollout as
    /// it is (not terminal). `None`: never asked to stop.
    pub stop: Option<watch::Receiver<bool>>,
    /// `None`: the driver renews its own lease and polls the store for
    /// commands every tick. `Some`: a controller does both for many
    /// rollouts at once and feeds this driver.
    pub feed: Option<Feed>,
}

impl Control {
    /// Never asked to stop; renews its own lease, polls its own commands.
    pub fn standalone() -> Control {
        Control {
            stop: None,
            feed: None,
        }
    }

    /// Stops when `stop` becomes true; renews its own lease, polls its own commands.
    pub fn stoppable(stop: watch::Receiver<bool>) -> Control {
        Control {
            stop: Some(stop),
            feed: None,
        }
    }
}

/// Resolves once `stop` is true (never, for `None` or a dropped sender).
pub(crate) async fn stop_requested(stop: Option<watch::Receiver<bool>>) {
    let Some(mut stop) = stop else {
        return std::future::pending().await;
    };
    loop {
        if *stop.borrow_and_update() {
            return;
        }
        if stop.changed().await.is_err() {
            return std::future::pending().await;
        }
    }
}

/// What a controller gives each driver it supervises.
pub struct Feed {
    /// Commands for this rollout, in order (duplicates are harmless).
    pub commands: mpsc::UnboundedReceiver<PostedCommand>,
    /// Becomes true when the controller could not renew the lease.
    pub lease_lost: watch::Receiver<bool>,
    /// When the controller last renewed the lease (the time its renewal
    /// was asked for). The lease runs out a TTL after the later of this and
    /// the driver's own last renewal.
    pub lease_renewed: watch::Receiver<Timestamp>,
}

pub struct Engine {
    store: Arc<dyn Store>,
    clock: Clock,
    holder: String,
    options: Options,
    observer: Option<Observer>,
    instruments: Option<Arc<dyn Instruments>>,
}

impl Engine {
    /// `holder` names this driver in leases (e.g. `host:pid`).
    pub fn new(
        store: Arc<dyn Store>,
        clock: Clock,
        holder: impl Into<String>,
        options: Options,
    ) -> Engine {
        Engine {
            store,
            clock,
            holder: holder.into(),
            options,
            observer: None,
            instruments: None,
        }
    }

    pub fn with_observer(mut self, observer: Observer) -> Engine {
        self.observer = Some(observer);
        self
    }

    pub fn with_instruments(mut self, instruments: Arc<dyn Instruments>) -> Engine {
        self.instruments = Some(instruments);
        self
    }

    /// A router call, timed for the instruments.
    async fn timed<T>(
        &self,
        rollout: &Rollout,
        operation: &str,
        call: impl std::future::Future<Output = Result<T, crate::ports::AdapterError>>,
    ) -> Result<T, crate::ports::AdapterError> {
        let started = tokio::time::Instant::now();
        let result = call.await;
        self.instrument(&router_label(rollout), operation, started, result.is_err());
        result
    }

    fn instrument(
        &self,
        adapter: &str,
        operation: &str,
        started: tokio::time::Instant,
        failed: bool,
    ) {
        if let Some(i) = &self.instruments {
            i.adapter_call(adapter, operation, started.elapsed(), failed);
        }
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    pub fn holder(&self) -> &str {
        &self.holder
    }

    pub fn options(&self) -> &Options {
        &self.options
    }

    pub fn now(&self) -> Timestamp {
        self.clock.now()
    }

    /// Records a new rollout for `plan.service`; refused while the service
    /// has an active one.
    pub async fn create(
        &self,
        id: &str,
        plan: Plan,
        has_platform: bool,
    ) -> Result<RolloutRecord, EngineError> {
        self.create_rollout(id, Rollout::new(plan, has_platform, self.clock.now()))
            .await
    }

    /// Records `rollout` (as made by `Rollout::new`, perhaps adopting) under `id`.
    pub async fn create_rollout(
        &self,
        id: &str,
        mut rollout: Rollout,
    ) -> Result<RolloutRecord, EngineError> {
        let now = self.clock.now();
        let taken = rollout.take_events();
        let events = encode_events(&taken);
        let state = rollout.to_snapshot();
        // This call's own mark, so that a create landed with its answer
        // lost is told apart from another call's (even in this process).
        let writer = format!(
            "{} create#{}",
            self.holder,
            CREATES.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        );
        let change = Change {
            state: &state,
            active: !rollout.phase.is_terminal(),
            events: &events,
            writer: &writer,
            now,
        };
        let created = match self
            .store_call(self.store.create_rollout(id, &rollout.plan.service, change))
            .await
        {
            Ok(record) => Ok(record),
            // A create that landed with its answer lost (or cut short) is
            // this writer's own: the same state, written by us, at version 1.
            Err(e @ (StoreError::DuplicateId(_) | StoreError::Backend(_))) => {
                match self.store.load(id).await {
                    Ok(Some(r)) if r.version == 1 && r.written_by == writer && r.state == state => {
                        tracing::info!(rollout = %id, "a create whose answer was lost had landed");
                        Ok(r)
                    }
                    _ => Err(e.into()),
                }
            }
            Err(e) => Err(e.into()),
        };
        // The first events are persisted like any later ones: observers
        // (progress, `--output json`, event streams) see them too.
        if let (Ok(_), Some(observer)) = (&created, &self.observer) {
            observer(id, &rollout, &taken);
        }
        created
    }

    /// Loads a rollout snapshot.
    pub async fn load(&self, id: &str) -> Result<(RolloutRecord, Rollout), EngineError> {
        let record = self
            .store
            .load(id)
            .await?
            .ok_or_else(|| StoreError::NotFound(id.to_string()))?;
        let rollout = decode(&record)?;
        Ok((record, rollout))
    }

    /// Drives a rollout until it reaches a terminal phase (or pauses on an
    /// adapter failure with nobody to resume it: it keeps waiting, as the
    /// plan asked). Resumes from wherever the snapshot is.
    pub async fn drive(&self, id: &str, adapters: &Adapters) -> Result<Rollout, EngineError> {
        self.drive_with(id, adapters, Control::standalone()).await
    }

    /// [`Engine::drive`], steered by `control`.
    pub async fn drive_with(
        &self,
        id: &str,
        adapters: &Adapters,
        control: Control,
    ) -> Result<Rollout, EngineError> {
        let lease = lease_name(id);
        let now = self.clock.now();
        if !self
            .store
            .acquire_lease(&lease, &self.holder, now, self.options.lease_ttl)
            .await?
        {
            let held = self.store.lease(&lease).await.ok().flatten();
            return Err(EngineError::LeaseHeld {
                id: id.to_string(),
                holder: held
                    .as_ref()
                    .map_or_else(|| "another driver".into(), |l| l.holder.clone()),
                expires_at: held.map_or(now, |l| l.expires_at),
            });
        }
        let result = self.drive_leased(id, &lease, adapters, control).await;
        if !matches!(result, Err(EngineError::LostLease(_))) {
            let _ = self.store.release_lease(&lease, &self.holder).await;
        }
        result
    }

    /// Like [`Engine::drive_with`], but first waits (polling every tick)
    /// for a lease held by another driver to be released or to expire,
    /// calling `waiting` with its holder and expiry at each poll.
    pub async fn drive_when_free(
        &self,
        id: &str,
        adapters: &Adapters,
        stop: Option<watch::Receiver<bool>>,
        mut waiting: impl FnMut(&str, Timestamp),
    ) -> Result<Rollout, EngineError> {
        loop {
            let control = Control {
                stop: stop.clone(),
                feed: None,
            };
            match self.drive_with(id, adapters, control).await {
                Err(EngineError::LeaseHeld {
                    holder, expires_at, ..
                }) => {
                    waiting(&holder, expires_at);
                    tokio::select! {
                        _ = tokio::time::sleep(self.options.tick) => {}
                        _ = stop_requested(stop.clone()) => {
                            let (_, rollout) = self.load(id).await?;
                            return Ok(rollout);
                        }
                    }
                }
                other => return other,
            }
        }
    }

    /// Applies `Retry` to a rolled-back, aborted or failed rollout and marks
    /// it active again; drive it afterwards.
    pub async fn retry(&self, id: &str) -> Result<(), EngineError> {
        let (record, mut rollout) = self.load(id).await?;
        let now = self.clock.now();
        let _ = rollout.handle(now, Input::Command(Command::Retry));
        let events = encode_events(&rollout.take_events());
        let state = rollout.to_snapshot();
        let change = Change {
            state: &state,
            active: !rollout.phase.is_terminal(),
            events: &events,
            writer: &self.holder,
            now,
        };
        self.store.commit(id, record.version, change).await?;
        Ok(())
    }

    async fn drive_leased(
        &self,
        id: &str,
        lease: &str,
        adapters: &Adapters,
        control: Control,
    ) -> Result<Rollout, EngineError> {
        let (record, rollout) = self.load(id).await?;
        // Checks that judge across looks go on with what was gathered.
        for check in &adapters.checks {
            if let Some(state) = rollout.check_states.get(check.name()) {
                if let Err(e) = check.restore(state) {
                    tracing::warn!(rollout = %id, check = check.name(), error = %e, "a check's stored state is unusable; it starts afresh");
                }
            }
        }
        let now = self.clock.now();
        let mut d = Driving {
            engine: self,
            id: id.to_string(),
            lease: lease.to_string(),
            version: record.version,
            rollout,
            unsaved: Vec::new(),
            in_doubt: None,
            dirty: false,
            store_failure: None,
            lease_renewed: now,
            queue: VecDeque::new(),
            held: Vec::new(),
            stop: control.stop,
            feed: control.feed,
        };
        // Commands posted while nobody drove come before any timer.
        let posted = self
            .store
            .commands_after(id, d.rollout.last_command_seq)
            .await?;
        let commands: Vec<(u64, Command)> = posted.iter().map(|c| (c.seq, c.command)).collect();
        let mut first = d.rollout.resume(now, &commands);
        if d.rollout.phase == cutover_core::Phase::Pending {
            first.extend(d.rollout.handle(now, Input::Start));
        }
        d.queue.extend(first);
        d.dirty = true;
        d.run(adapters).await
    }

    /// Runs every check at once; a check that errors is retried a few
    /// times with a short back-off and, if it still cannot measure, counts
    /// as an error (inconclusive to the machine, never a pass).
    async fn analyse(
        &self,
        id: &str,
        checks: &[Arc<dyn Check>],
        ctx: &CheckContext,
        limit: Duration,
    ) -> Vec<Observation> {
        let mut set = JoinSet::new();
        for (i, check) in checks.iter().enumerate() {
            let check = Arc::clone(check);
            let retries = self.options.check_retries;
            let instruments = self.instruments.clone();
            let (base, clock) = (ctx.clone(), self.clock);
            set.spawn(async move {
                let label = format!("check:{}", check.name());
                let evaluate = || async {
                    let started = tokio::time::Instant::now();
                    // Each try is told when it runs and by when its answer
                    // is in: the machine judges the end of the hold by that.
                    let now = clock.now();
                    let ctx = CheckContext {
                        now,
                        answer_by: now.after(limit),
                        ..base.clone()
                    };
                    let o = match tokio::time::timeout(limit, check.evaluate(&ctx)).await {
                        Ok(o) => o,
                        Err(_) => Observation::new(
                            check.name(),
                            Verdict::Error,
                            format!("no answer within {}", cutover_core::time::Human(limit)),
                        ),
                    };
                    if let Some(i) = &instruments {
                        i.adapter_call(
                            &label,
                            "evaluate",
                            started.elapsed(),
                            o.verdict == Verdict::Error,
                        );
                    }
                    o
                };
                let mut observation = evaluate().await;
                let mut attempt = 0;
                while observation.verdict == Verdict::Error && attempt < retries {
                    attempt += 1;
                    tokio::time::sleep(Duration::from_millis(100 << attempt)).await;
                    observation = evaluate().await;
                }
                (i, observation)
            });
        }
        let mut out: Vec<Option<Observation>> = vec![None; checks.len()];
        while let Some(joined) = set.join_next().await {
            match joined {
                Ok((i, o)) => out[i] = Some(o),
                Err(e) => tracing::error!("a check task failed: {e}"),
            }
        }
        let observations: Vec<Observation> = out
            .into_iter()
            .enumerate()
            .map(|(i, o)| {
                o.unwrap_or_else(|| {
                    Observation::new(checks[i].name(), Verdict::Error, "the check crashed")
                })
            })
            .collect();
        for o in observations.iter().filter(|o| o.verdict == Verdict::Error) {
            tracing::warn!(rollout = %id, check = %o.check, error = %o.detail, "a check could not measure");
        }
        tracing::debug!(rollout = %id, verdict = %combine(&observations), "analysis");
        observations
    }

    /// How long `action` may take: its kind's limit from the plan's
    /// `[timeouts]`, and never past the deadline of the calls the machine
    /// retries, so a decision does not wait beyond it.
    fn call_limit(&self, action: &Action, rollout: &Rollout, now: Timestamp) -> Duration {
        let t = &rollout.plan.timeouts;
        let platform = self.options.prepare_deadline + Duration::from_secs(30);
        let limit = match action {
            Action::ApplySplit(_) => t.router_write,
            Action::ReadSplit => t.router_read,
            Action::Preflight => t.router_write.max(t.check),
            // Each check has its own limit; this bounds the analysis.
            Action::RunAnalysis => {
                t.check * (self.options.check_retries + 1) + Duration::from_secs(1)
            }
            Action::Prepare | Action::Finalize => platform,
        };
        match rollout.call_deadline() {
            Some(d) if matches!(action, Action::ApplySplit(_) | Action::ReadSplit) => {
                limit.min(d.since(now).max(Duration::from_millis(100)))
            }
            _ => limit,
        }
    }

    /// A store call, cut short at `[timeouts] store`-like bound: the
    /// engine's own limit, since the store is not the plan's.
    pub(crate) async fn store_call<T>(
        &self,
        call: impl std::future::Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        match tokio::time::timeout(self.options.store_call_limit, call).await {
            Ok(r) => r,
            Err(_) => Err(StoreError::Backend(format!(
                "the store gave no answer within {}",
                cutover_core::time::Human(self.options.store_call_limit)
            ))),
        }
    }

    async fn perform(
        &self,
        id: &str,
        action: &Action,
        adapters: &Adapters,
        rollout: &Rollout,
        limit: Duration,
    ) -> Input {
        match tokio::time::timeout(limit, self.perform_unbounded(id, action, adapters, rollout))
            .await
        {
            Ok(input) => input,
            Err(_) => {
                let took = cutover_core::time::Human(limit);
                tracing::warn!(rollout = %id, ?action, "no answer within {took}; cut short");
                match action {
                    Action::ApplySplit(split) => Input::ApplyFailed {
                        requested: *split,
                        message: format!(
                            "{}: no answer within {took}; whether it landed is unknown",
                            adapters.router.describe()
                        ),
                        transient: true,
                    },
                    Action::ReadSplit => Input::ReadFailed {
                        message: format!("{}: no answer within {took}", adapters.router.describe()),
                        transient: true,
                    },
                    Action::Preflight => Input::Preflight(Err(format!("no answer within {took}"))),
                    Action::Prepare => Input::Prepared(Err(format!("no answer within {took}"))),
                    Action::Finalize => Input::Finalized(Err(format!("no answer within {took}"))),
                    Action::RunAnalysis => Input::Analysis(
                        adapters
                            .checks
                            .iter()
                            .map(|c| {
                                Observation::new(
                                    c.name(),
                                    Verdict::Error,
                                    format!("no answer within {took}"),
                                )
                            })
                            .collect(),
                    ),
                }
            }
        }
    }

    async fn perform_unbounded(
        &self,
        id: &str,
        action: &Action,
        adapters: &Adapters,
        rollout: &Rollout,
    ) -> Input {
        match action {
            Action::Preflight => {
                let refusals: Vec<String> = preflight(&rollout.plan, adapters)
                    .await
                    .into_iter()
                    .map(|(what, e)| format!("{what}: {e}"))
                    .collect();
                if !refusals.is_empty() {
                    tracing::warn!(rollout = %id, refusals = %refusals.join("; "), "preflight refused the rollout");
                }
                Input::Preflight(if refusals.is_empty() {
                    Ok(())
                } else {
                    Err(refusals.join("; "))
                })
            }
            Action::Prepare => match &adapters.platform {
                Some(p) => {
                    let started = tokio::time::Instant::now();
                    let r = p.prepare(self.options.prepare_deadline).await;
                    self.instrument("platform", "prepare", started, r.is_err());
                    if let Err(e) = &r {
                        tracing::warn!(rollout = %id, platform = %p.describe(), error = %e, "preparing the candidate failed");
                    }
                    Input::Prepared(r.map_err(|e| e.to_string()))
                }
                None => Input::Prepared(Ok(())),
            },
            Action::Finalize => match &adapters.platform {
                Some(p) => {
                    let started = tokio::time::Instant::now();
                    let r = p.finalize().await;
                    self.instrument("platform", "finalize", started, r.is_err());
                    if let Err(e) = &r {
                        tracing::warn!(rollout = %id, platform = %p.describe(), error = %e, "retiring the old side failed");
                    }
                    Input::Finalized(r.map_err(|e| e.to_string()))
                }
                None => Input::Finalized(Ok(())),
            },
            Action::ApplySplit(split) => match self
                .timed(rollout, "apply", adapters.router.apply(*split))
                .await
            {
                Ok(realized) => Input::SplitApplied {
                    requested: *split,
                    realized,
                },
                Err(e) => {
                    tracing::warn!(rollout = %id, router = %adapters.router.describe(), error = %e, "router failed to apply {split}");
                    Input::ApplyFailed {
                        requested: *split,
                        message: e.message,
                        transient: e.transient,
                    }
                }
            },
            Action::ReadSplit => match self.timed(rollout, "read", adapters.router.current()).await
            {
                Ok(split) => Input::SplitRead(split),
                Err(e) => {
                    tracing::warn!(rollout = %id, router = %adapters.router.describe(), error = %e, "reading the router's split failed");
                    Input::ReadFailed {
                        message: e.message,
                        transient: e.transient,
                    }
                }
            },
            Action::RunAnalysis => {
                let per_try = rollout.plan.timeouts.check;
                let ctx = CheckContext::of(rollout, self.clock.now(), per_try);
                Input::Analysis(self.analyse(id, &adapters.checks, &ctx, per_try).await)
            }
        }
    }
}

/// `router:<kind>`, the adapter label of a rollout's router.
fn router_label(rollout: &Rollout) -> String {
    format!("router:{}", rollout.plan.router.kind())
}

/// Numbers each create of this process (see [`Engine::create_rollout`]).
static CREATES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// The lease a rollout's driver holds.
/// Everything a rollout's preflight verifies (the router's, e.g. holds
/// against a DNS TTL, and every check's, e.g. no alarm firing), changing
/// nothing: each refusal with what refused it (`router` or the check's
/// name). The machine runs it as its first action; `cutover run` and the
/// API run it before creating a rollout, so a plan the adapters refuse
/// leaves no record behind.
pub async fn preflight(
    plan: &cutover_core::Plan,
    adapters: &Adapters,
) -> Vec<(String, AdapterError)> {
    let mut refusals = Vec::new();
    let shortest_hold = plan
        .strategy
        .steps
        .iter()
        .map(|s| s.hold)
        .min()
        .unwrap_or_default();
    // Each preflight reads: bounded like a read of its kind, and a call
    // cut short is a transient failure (not a refusal on the merits).
    let bounded = |limit: Duration, call| async move {
        match tokio::time::timeout(limit, call).await {
            Ok(r) => r,
            Err(_) => Err(AdapterError::transient(format!(
                "no answer within {}",
                cutover_core::time::Human(limit)
            ))),
        }
    };
    let t = &plan.timeouts;
    if let Err(e) = bounded(t.router_read, adapters.router.preflight(shortest_hold)).await {
        refusals.push(("router".to_string(), e));
    }
    for check in &adapters.checks {
        if let Err(e) = bounded(t.check, check.preflight()).await {
            refusals.push((check.name().to_string(), e));
        }
    }
    refusals
}

pub fn lease_name(id: &str) -> String {
    format!("rollout:{id}")
}

/// One rollout being driven.
struct Driving<'a> {
    engine: &'a Engine,
    id: String,
    lease: String,
    /// The stored version `rollout` was last written at.
    version: u64,
    rollout: Rollout,
    /// Events taken from the machine and not yet stored.
    unsaved: Vec<Event>,
    /// The last write whose outcome is unknown (the store failed to
    /// answer): its snapshot and how many of `unsaved` it carried.
    in_doubt: Option<(String, usize)>,
    /// The machine changed since the last successful write.
    dirty: bool,
    /// Since when, and until when to wait before the next try, while the
    /// store fails.
    store_failure: Option<StoreFailure>,
    lease_renewed: Timestamp,
    queue: VecDeque<Action>,
    /// Commands that arrived during an action, for after it.
    held: Vec<PostedCommand>,
    stop: Option<watch::Receiver<bool>>,
    feed: Option<Feed>,
}

/// How an action ended.
enum Performed {
    /// With this answer for the machine.
    Done(Input),
    /// Cut short for these commands (in order).
    Preempted(Vec<PostedCommand>),
}

struct StoreFailure {
    since: Timestamp,
    attempts: u32,
    retry_at: Timestamp,
    message: String,
}

impl Driving<'_> {
    async fn run(&mut self, adapters: &Adapters) -> Result<Rollout, EngineError> {
        loop {
            let now = self.now();
            // All traffic to the live target is always safe and needs no
            // record: it goes before the write that records it, so a slow
            // or throttled store never holds a rollback back. A read of the
            // router goes first too: after a failed write, what is stored
            // is then what the router has, never the split last confirmed.
            let safe_first = matches!(
                self.queue.front(),
                Some(Action::ApplySplit(Split::ZERO) | Action::ReadSplit)
            );
            if self.dirty
                && !safe_first
                && self
                    .store_failure
                    .as_ref()
                    .is_none_or(|f| now >= f.retry_at)
            {
                self.persist().await?;
            }
            if let Some(f) = &self.store_failure {
                // Past the deadline, or with the lease run out (another
                // driver may be acting), the one safe thing is left to do.
                if now.since(f.since) >= self.engine.options.store_deadline
                    || now >= self.lease_expires()
                {
                    return Err(self.fail_safe(adapters).await);
                }
            }

            // Perform what the machine asked; without a record, only what
            // needs none.
            if let Some(action) = self.queue.front() {
                let exempt = needs_no_record(action);
                if exempt || (!self.dirty && self.lease_for_a_change().await?) {
                    let action = self.queue.pop_front().expect("front exists");
                    let performed = self.perform_leased(&action, adapters).await?;
                    for note in adapters.router.take_notes() {
                        self.feed_input(Input::Note(note));
                    }
                    if action == Action::RunAnalysis {
                        // Stored with the verdict the state led to.
                        for check in &adapters.checks {
                            if let Some(state) = check.state() {
                                self.rollout
                                    .check_states
                                    .insert(check.name().to_string(), state);
                            }
                        }
                    }
                    match performed {
                        Performed::Done(input) => {
                            self.feed_input(input);
                            // Commands that came during it, in order.
                            for c in std::mem::take(&mut self.held) {
                                self.apply_command(c);
                            }
                        }
                        Performed::Preempted(commands) => {
                            for c in commands {
                                self.apply_command(c);
                            }
                            self.feed_input(Input::Interrupted(action));
                        }
                    }
                    continue;
                }
            }
            if self.rollout.phase.is_terminal() && !self.dirty && self.queue.is_empty() {
                return Ok(self.rollout.clone());
            }
            if !self.dirty {
                self.keep_lease().await?;
                if self.take_commands().await? {
                    continue;
                }
                if self.stop_is_requested() && self.queue.is_empty() {
                    return Ok(self.rollout.clone());
                }
            }

            // Sleep until the next timer, tick, store retry, command or stop.
            // Under a controller nothing needs a tick: commands and a lost
            // lease come through the feed, which wakes the driver, and the
            // lease needs the driver only when the controller's renewals
            // fall behind (then at two thirds of its life, see
            // `keep_lease`). Ten thousand rollouts ticking twice a second
            // cost a core.
            let now = self.now();
            let mut wake = match &self.feed {
                Some(_) => self
                    .lease_renewed()
                    .after(self.engine.options.lease_ttl * 2 / 3)
                    .max(now.after(self.engine.options.tick)),
                None => now.after(self.engine.options.tick),
            };
            if let Some(w) = self.rollout.next_wakeup() {
                wake = wake.min(w);
            }
            if let Some(f) = &self.store_failure {
                // A retry already due is made by whatever needs the store
                // next; waking for it again would spin.
                if f.retry_at > now {
                    wake = wake.min(f.retry_at);
                }
                wake = wake.min(self.lease_expires());
            }
            if wake > now {
                let sleep = tokio::time::sleep_until(self.engine.clock.instant_of(wake));
                let stop = stop_requested(self.stop.clone());
                match &mut self.feed {
                    Some(feed) => {
                        tokio::select! {
                            _ = sleep => {}
                            c = feed.commands.recv() => match c {
                                Some(c) => {
                                    self.apply_command(c);
                                    continue;
                                }
                                // The controller is gone: nobody keeps the lease.
                                None => return Err(EngineError::LostLease(self.id.clone())),
                            },
                            // Read by `keep_lease`, next.
                            changed = feed.lease_lost.changed() => {
                                if changed.is_err() {
                                    // The controller is gone, as above.
                                    return Err(EngineError::LostLease(self.id.clone()));
                                }
                            }
                            _ = stop => {}
                        }
                    }
                    None => {
                        tokio::select! {
                            _ = sleep => {}
                            _ = stop => {}
                        }
                    }
                }
            }
            let now = self.now();
            let actions = self.rollout.handle(now, Input::Tick);
            if !actions.is_empty() || !self.rollout.pending_events().is_empty() {
                self.dirty = true;
            }
            self.queue.extend(actions);
        }
    }

    fn now(&self) -> Timestamp {
        self.engine.clock.now()
    }

    fn stop_is_requested(&self) -> bool {
        self.stop.as_ref().is_some_and(|s| *s.borrow())
    }

    fn feed_input(&mut self, input: Input) {
        let now = self.now();
        let actions = self.rollout.handle(now, input);
        self.queue.extend(actions);
        self.dirty = true;
    }

    fn apply_command(&mut self, posted: PostedCommand) {
        if posted.seq <= self.rollout.last_command_seq {
            return;
        }
        self.rollout.last_command_seq = posted.seq;
        self.feed_input(Input::Command(posted.command));
    }

    /// Feeds commands posted since the last one applied; true if any.
    async fn take_commands(&mut self) -> Result<bool, EngineError> {
        let posted = match &mut self.feed {
            Some(feed) => {
                let mut posted = Vec::new();
                while let Ok(c) = feed.commands.try_recv() {
                    posted.push(c);
                }
                posted
            }
            None => match self
                .engine
                .store_call(
                    self.engine
                        .store
                        .commands_after(&self.id, self.rollout.last_command_seq),
                )
                .await
            {
                Ok(posted) => posted,
                Err(e) => {
                    tracing::warn!(rollout = %self.id, error = %e, "reading operator commands failed; trying again at the next tick");
                    return Ok(false);
                }
            },
        };
        let before = self.rollout.last_command_seq;
        for c in posted {
            self.apply_command(c);
        }
        Ok(self.rollout.last_command_seq != before)
    }

    /// Renews the lease when a third of it has passed. Under a controller,
    /// which renews every lease it holds each third of the TTL, only a
    /// renewal overdue by another third is made here (the controller may be
    /// slow or its bulk renewal failing). A renewal that fails is tried
    /// again at the next tick until the lease has really run out.
    async fn keep_lease(&mut self) -> Result<(), EngineError> {
        let now = self.now();
        let ttl = self.engine.options.lease_ttl;
        if let Some(feed) = &self.feed {
            if *feed.lease_lost.borrow() {
                return Err(EngineError::LostLease(self.id.clone()));
            }
            if now.since(self.lease_renewed()) < ttl * 2 / 3 {
                return Ok(());
            }
        } else if now.since(self.lease_renewed) < ttl / 3 {
            return Ok(());
        }
        // While the store fails, try again with the other store calls.
        if self
            .store_failure
            .as_ref()
            .is_some_and(|f| now < f.retry_at)
        {
            return Ok(());
        }
        self.renew().await
    }

    async fn renew(&mut self) -> Result<(), EngineError> {
        let now = self.now();
        let ttl = self.engine.options.lease_ttl;
        let store = self.engine.store.clone();
        match self
            .engine
            .store_call(store.acquire_lease(&self.lease, &self.engine.holder, now, ttl))
            .await
        {
            Ok(true) => {
                self.lease_renewed = now;
                // With nothing left to write, a store that renews the lease
                // works again: a failure noted before no longer counts
                // towards the fail-safe.
                if !self.dirty && self.in_doubt.is_none() {
                    if let Some(f) = self.store_failure.take() {
                        tracing::warn!(rollout = %self.id, attempts = f.attempts, "the store works again");
                    }
                }
                Ok(())
            }
            Ok(false) => Err(EngineError::LostLease(self.id.clone())),
            Err(e) => {
                // Still ours until it runs out; `run` acts once it has.
                tracing::warn!(rollout = %self.id, error = %e, "renewing the lease failed; trying again");
                self.store_failed(e.to_string());
                Ok(())
            }
        }
    }

    /// When the lease was last renewed: by this driver or its controller.
    fn lease_renewed(&self) -> Timestamp {
        match &self.feed {
            Some(feed) => self.lease_renewed.max(*feed.lease_renewed.borrow()),
            None => self.lease_renewed,
        }
    }

    /// When the lease runs out unless renewed.
    fn lease_expires(&self) -> Timestamp {
        self.lease_renewed().after(self.engine.options.lease_ttl)
    }

    /// Before an action that changes the router or the platform (all but
    /// reads and sending all traffic to the live target): true if the lease
    /// has at least a third of its TTL left, renewing it first if not. A
    /// driver whose lease has run out may already have a successor; one
    /// that acts then fights it over the router. False: the renewal could
    /// not be made now (the store fails); the action waits.
    async fn lease_for_a_change(&mut self) -> Result<bool, EngineError> {
        let ttl = self.engine.options.lease_ttl;
        let fresh = |d: &Self| d.now().since(d.lease_renewed()) < ttl * 2 / 3;
        if fresh(self) {
            return Ok(true);
        }
        if self
            .store_failure
            .as_ref()
            .is_some_and(|f| self.now() < f.retry_at)
        {
            return Ok(false);
        }
        self.renew().await?;
        Ok(fresh(self))
    }

    /// Notes a failed store call and when to try again.
    fn store_failed(&mut self, message: String) {
        let now = self.now();
        let (since, attempts) = self
            .store_failure
            .as_ref()
            .map_or((now, 1), |f| (f.since, f.attempts + 1));
        self.store_failure = Some(StoreFailure {
            since,
            attempts,
            retry_at: now.after(jittered_backoff(attempts)),
            message,
        });
    }

    /// Performs an action, keeping the lease while it runs: a router may
    /// take minutes (Route53 waits for INSYNC), longer than the lease lasts.
    /// If the lease is lost meanwhile, the action is dropped: its intent is
    /// persisted, and the new holder performs it again.
    ///
    /// Operator commands keep arriving meanwhile. An abort, pause or
    /// rollback pre-empts the action (any but retiring the old side): it is
    /// cut short and the machine told so, after the command; a write cut
    /// short is then read back. Other commands wait for the action's end.
    async fn perform_leased(
        &mut self,
        action: &Action,
        adapters: &Adapters,
    ) -> Result<Performed, EngineError> {
        let (rollout, id) = (self.rollout.clone(), self.id.clone());
        let limit = self.engine.call_limit(action, &rollout, self.now());
        let work = self.engine.perform(&id, action, adapters, &rollout, limit);
        tokio::pin!(work);
        let preemptible = !matches!(action, Action::Finalize);
        let tick = self.engine.options.tick;
        let ttl = self.engine.options.lease_ttl;
        loop {
            // The lease must outlast the action: renewed here when due (under
            // a controller, only when its renewal is overdue), never sooner
            // than a failed store allows.
            let due = match &self.feed {
                Some(_) => self.lease_renewed().after(ttl * 2 / 3),
                None => self.lease_renewed.after(ttl / 3),
            };
            let renew_at = self
                .store_failure
                .as_ref()
                .map_or(due, |f| due.max(f.retry_at));
            let renew = tokio::time::sleep_until(self.engine.clock.instant_of(renew_at));
            let arrived: Vec<PostedCommand> = match &mut self.feed {
                Some(feed) => {
                    let lost = stop_requested(Some(feed.lease_lost.clone()));
                    let renewed = feed.lease_renewed.changed();
                    let c = tokio::select! {
                        input = &mut work => return Ok(Performed::Done(input)),
                        _ = lost => return Err(EngineError::LostLease(self.id.clone())),
                        // The controller renewed it: the renewal is due later.
                        r = renewed => match r {
                            Ok(()) => continue,
                            // The controller is gone: nobody keeps the lease.
                            Err(_) => return Err(EngineError::LostLease(self.id.clone())),
                        },
                        _ = renew => None,
                        c = feed.commands.recv() => match c {
                            Some(c) => Some(c),
                            None => return Err(EngineError::LostLease(self.id.clone())),
                        },
                    };
                    match c {
                        Some(c) => vec![c],
                        None => {
                            self.renew().await?;
                            continue;
                        }
                    }
                }
                None => {
                    tokio::select! {
                        input = &mut work => return Ok(Performed::Done(input)),
                        _ = renew => {
                            self.renew().await?;
                            continue;
                        }
                        _ = tokio::time::sleep(tick) => {
                            let after = self.held.last().map_or(self.rollout.last_command_seq, |c| c.seq);
                            let store = self.engine.store.clone();
                            match self.engine.store_call(store.commands_after(&self.id, after)).await {
                                Ok(posted) => posted,
                                Err(_) => continue,
                            }
                        }
                    }
                }
            };
            let applied = self
                .held
                .last()
                .map_or(self.rollout.last_command_seq, |c| c.seq);
            self.held
                .extend(arrived.into_iter().filter(|c| c.seq > applied));
            let preempts = self.held.iter().any(|c| {
                matches!(
                    c.command,
                    Command::Abort | Command::Pause | Command::Rollback
                )
            });
            if preemptible && preempts {
                tracing::info!(rollout = %self.id, ?action, "cutting the action short for an operator command");
                return Ok(Performed::Preempted(std::mem::take(&mut self.held)));
            }
        }
    }

    /// Writes the machine's state and new events. On a store failure,
    /// schedules the next try; on a conflict, stops (someone else drives).
    async fn persist(&mut self) -> Result<(), EngineError> {
        self.unsaved.extend(self.rollout.take_events());
        let now = self.now();
        let events = encode_events(&self.unsaved);
        let state = self.rollout.to_snapshot();
        let change = Change {
            state: &state,
            active: !self.rollout.phase.is_terminal(),
            events: &events,
            writer: &self.engine.holder,
            now,
        };
        let store = self.engine.store.clone();
        match self
            .engine
            .store_call(store.commit(&self.id, self.version, change))
            .await
        {
            Ok(record) => {
                self.in_doubt = None;
                self.saved(record.version, self.unsaved.len());
                Ok(())
            }
            Err(
                conflict @ StoreError::Conflict {
                    found: Some(found), ..
                },
            ) if found == self.version + 1 => {
                // Maybe our own write, landed with its reply lost: this one
                // (the store's client retried it and met itself) or an
                // earlier one whose outcome was left in doubt.
                let doubted = self.in_doubt.take();
                let store = self.engine.store.clone();
                match self.engine.store_call(store.load(&self.id)).await {
                    Ok(Some(r)) if r.written_by == self.engine.holder && r.state == state => {
                        tracing::info!(rollout = %self.id, version = r.version, "a write whose reply was lost had landed");
                        self.saved(r.version, self.unsaved.len());
                        Ok(())
                    }
                    Ok(Some(r))
                        if r.written_by == self.engine.holder
                            && doubted.as_ref().is_some_and(|(d, _)| *d == r.state) =>
                    {
                        tracing::info!(rollout = %self.id, version = r.version, "an earlier write whose reply was lost had landed");
                        let (_, carried) = doubted.expect("matched");
                        self.saved(r.version, carried);
                        // What changed since is written next.
                        self.dirty = true;
                        Ok(())
                    }
                    _ if doubted.is_some() => Err(EngineError::LostLease(self.id.clone())),
                    _ => Err(conflict.into()),
                }
            }
            Err(e @ StoreError::Conflict { .. }) => Err(e.into()),
            Err(e) => {
                let message = e.to_string();
                tracing::error!(rollout = %self.id, error = %message, "the store failed; retrying");
                if self.in_doubt.is_none() {
                    self.in_doubt = Some((state, self.unsaved.len()));
                }
                self.store_failed(message);
                Ok(())
            }
        }
    }

    /// The store holds `version`, with the first `events` of `unsaved`.
    fn saved(&mut self, version: u64, events: usize) {
        self.version = version;
        self.dirty = false;
        if let Some(f) = self.store_failure.take() {
            tracing::warn!(rollout = %self.id, attempts = f.attempts, "the store works again");
        }
        let events: Vec<Event> = self.unsaved.drain(..events).collect();
        if let Some(observer) = &self.engine.observer {
            observer(&self.id, &self.rollout, &events);
        }
    }

    /// The store stayed unavailable past the deadline: send all traffic to
    /// the live target (always safe, needs no record) and say where it is.
    async fn fail_safe(&mut self, adapters: &Adapters) -> EngineError {
        let f = self
            .store_failure
            .take()
            .expect("only called while failing");
        let targets = self.rollout.targets();
        let mut traffic = String::new();
        let limit = self.rollout.plan.timeouts.router_write;
        for attempt in 1..=5u32 {
            let write = tokio::time::timeout(limit, adapters.router.apply(Split::ZERO)).await;
            let write = write.unwrap_or_else(|_| {
                Err(AdapterError::transient(format!(
                    "no answer within {}",
                    cutover_core::time::Human(limit)
                )))
            });
            match write {
                Ok(realized) => {
                    traffic = format!("the router confirms {}", targets.describe(realized));
                    break;
                }
                Err(e) => {
                    traffic = format!(
                        "the router could not confirm it ({e}); last known: {}",
                        targets.describe(self.rollout.split)
                    );
                    tokio::time::sleep(jittered_backoff(attempt)).await;
                }
            }
        }
        tracing::error!(rollout = %self.id, error = %f.message, traffic = %traffic, "the store stayed unavailable; sent all traffic to the live target");
        EngineError::StoreUnavailable {
            id: self.id.clone(),
            message: f.message,
            failing_for: cutover_core::time::Human(self.now().since(f.since)).to_string(),
            traffic,
        }
    }
}

/// What the driver may do before the state that asked for it is stored:
/// reads, and sending all traffic to the live target.
fn needs_no_record(action: &Action) -> bool {
    matches!(
        action,
        Action::ReadSplit | Action::RunAnalysis | Action::Preflight
    ) || *action == Action::ApplySplit(Split::ZERO)
}

/// 200 ms doubling to 5 s, each with up to half of it again at random, so
/// that drivers sharing a failing store do not retry in lock-step.
fn jittered_backoff(attempt: u32) -> Duration {
    let base = Duration::from_millis(200u64 << attempt.saturating_sub(1).min(5))
        .min(Duration::from_secs(5));
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(attempt);
    let jitter = h.finish() % (base.as_millis() as u64 / 2 + 1);
    base + Duration::from_millis(jitter)
}

/// Events as the store keeps them.
pub fn encode_events(events: &[Event]) -> Vec<EventRecord> {
    events
        .iter()
        .map(|e| EventRecord {
            seq: e.seq,
            at: e.at,
            body: serde_json::to_string(e).expect("an event always serialises"),
        })
        .collect()
}

/// An event from the store's log.
pub fn decode_event(record: &EventRecord) -> Result<Event, String> {
    serde_json::from_str(&record.body).map_err(|e| format!("event #{}: {e}", record.seq))
}

/// A rollout from its stored record, whatever schema it was written in.
pub fn decode(record: &RolloutRecord) -> Result<Rollout, EngineError> {
    Rollout::from_snapshot(&record.state).map_err(|e| EngineError::Snapshot {
        id: record.id.clone(),
        message: e.to_string(),
    })
}
