//! Drives one rollout to its end.
//!
//! The loop: load the snapshot, take the lease, then repeatedly feed the
//! state machine an input, persist the result (compare-and-set on the
//! version), and only then perform the actions it asked for. Between
//! actions the driver sleeps until the machine's next wake-up or the next
//! tick, whichever is first; at every tick it renews its lease and picks up
//! operator commands posted to the store by other processes.
//!
//! Every action is idempotent (splits are absolute), so a driver that dies
//! at any instant can be replaced by another that loads the snapshot and
//! calls `Rollout::resume`.

use std::sync::Arc;
use std::time::Duration;

use cutover_core::verdict::combine;
use cutover_core::{Action, Input, Observation, Plan, Rollout, Timestamp, Verdict};
use tokio::task::JoinSet;

use crate::clock::Clock;
use crate::ports::{Check, Platform, Router};
use crate::store::{RolloutRecord, Store, StoreError};

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
}

impl Default for Options {
    fn default() -> Options {
        Options {
            tick: Duration::from_millis(500),
            lease_ttl: Duration::from_secs(15),
            prepare_deadline: Duration::from_secs(600),
            check_retries: 2,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("rollout `{id}` has a snapshot this version cannot read: {message}")]
    Snapshot { id: String, message: String },
    #[error("rollout `{id}` is being driven by `{holder}`; its lease must expire first")]
    LeaseHeld { id: String, holder: String },
    #[error("lost the lease on rollout `{0}` to another driver; stopping without acting further")]
    LostLease(String),
}

/// Called after every persisted transition (progress display, metrics).
pub type Observer = Arc<dyn Fn(&Rollout) + Send + Sync>;

pub struct Engine {
    store: Arc<dyn Store>,
    clock: Clock,
    holder: String,
    options: Options,
    observer: Option<Observer>,
}

/// A loaded rollout and the version it was loaded at.
struct Loaded {
    id: String,
    version: u64,
    rollout: Rollout,
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
        }
    }

    pub fn with_observer(mut self, observer: Observer) -> Engine {
        self.observer = Some(observer);
        self
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
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
        let now = self.clock.now();
        let rollout = Rollout::new(plan, has_platform, now);
        let state = encode(&rollout);
        Ok(self
            .store
            .create(id, &rollout.plan.service, &state, true, now)
            .await?)
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
        let lease = format!("rollout:{id}");
        let now = self.clock.now();
        if !self
            .store
            .acquire_lease(&lease, &self.holder, now, self.options.lease_ttl)
            .await?
        {
            return Err(EngineError::LeaseHeld {
                id: id.to_string(),
                holder: "another driver".into(),
            });
        }
        let result = self.drive_leased(id, &lease, adapters).await;
        let _ = self.store.release_lease(&lease, &self.holder).await;
        result
    }

    /// Like [`Engine::drive`], but first waits (polling every tick) for a
    /// lease left by a driver that died to expire.
    pub async fn drive_when_free(
        &self,
        id: &str,
        adapters: &Adapters,
    ) -> Result<Rollout, EngineError> {
        loop {
            match self.drive(id, adapters).await {
                Err(EngineError::LeaseHeld { .. }) => tokio::time::sleep(self.options.tick).await,
                other => return other,
            }
        }
    }

    /// Applies `Retry` to a rolled-back, aborted or failed rollout and marks
    /// it active again; drive it afterwards.
    pub async fn retry(&self, id: &str) -> Result<(), EngineError> {
        let (record, mut rollout) = self.load(id).await?;
        let now = self.clock.now();
        let _ = rollout.handle(now, Input::Command(cutover_core::Command::Retry));
        let active = !rollout.phase.is_terminal();
        self.store
            .update(id, record.version, &encode(&rollout), active, now)
            .await?;
        Ok(())
    }

    async fn drive_leased(
        &self,
        id: &str,
        lease: &str,
        adapters: &Adapters,
    ) -> Result<Rollout, EngineError> {
        let (record, rollout) = self.load(id).await?;
        let mut cur = Loaded {
            id: id.to_string(),
            version: record.version,
            rollout,
        };
        let now = self.clock.now();
        let mut queue = if cur.rollout.phase == cutover_core::Phase::Pending {
            cur.rollout.handle(now, Input::Start)
        } else {
            cur.rollout.resume(now)
        };
        self.persist(&mut cur).await?;
        let mut lease_renewed = now;

        loop {
            // Perform what the machine asked, persisting after each answer.
            while !queue.is_empty() {
                let action = queue.remove(0);
                let input = self
                    .perform_leased(&action, adapters, &cur.rollout, lease, &mut lease_renewed)
                    .await?;
                let now = self.clock.now();
                queue.extend(cur.rollout.handle(now, input));
                self.persist(&mut cur).await?;
                // Commands that arrived during a long action take effect now.
                queue.extend(self.take_commands(&mut cur).await?);
            }
            if cur.rollout.phase.is_terminal() {
                return Ok(cur.rollout);
            }

            let now = self.clock.now();
            if now.since(lease_renewed) >= self.options.lease_ttl / 3 {
                self.renew(lease, &mut lease_renewed).await?;
            }

            queue.extend(self.take_commands(&mut cur).await?);
            if !queue.is_empty() {
                continue;
            }

            // Sleep until the next timer or the next tick.
            let tick_at = now.after(self.options.tick);
            let wake = cur
                .rollout
                .next_wakeup()
                .map_or(tick_at, |w| w.min(tick_at));
            if wake > now {
                tokio::time::sleep_until(self.clock.instant_of(wake)).await;
            }
            let now = self.clock.now();
            queue.extend(cur.rollout.handle(now, Input::Tick));
            if !queue.is_empty() {
                self.persist(&mut cur).await?;
            }
        }
    }

    /// Performs an action, renewing the lease while it runs: a router may
    /// take minutes (Route53 waits for INSYNC), longer than the lease lasts.
    /// If the lease is lost meanwhile, the action is dropped: its intent is
    /// persisted, and the new holder performs it again.
    async fn perform_leased(
        &self,
        action: &Action,
        adapters: &Adapters,
        rollout: &Rollout,
        lease: &str,
        renewed: &mut Timestamp,
    ) -> Result<Input, EngineError> {
        let work = self.perform(action, adapters, rollout);
        tokio::pin!(work);
        loop {
            let renew_at = renewed.after(self.options.lease_ttl / 3);
            tokio::select! {
                input = &mut work => return Ok(input),
                _ = tokio::time::sleep_until(self.clock.instant_of(renew_at)) => {
                    self.renew(lease, renewed).await?;
                }
            }
        }
    }

    async fn renew(&self, lease: &str, renewed: &mut Timestamp) -> Result<(), EngineError> {
        let now = self.clock.now();
        if !self
            .store
            .acquire_lease(lease, &self.holder, now, self.options.lease_ttl)
            .await?
        {
            let id = lease.trim_start_matches("rollout:").to_string();
            return Err(EngineError::LostLease(id));
        }
        *renewed = now;
        Ok(())
    }

    /// Feeds pending operator commands to the machine; persists if any.
    async fn take_commands(&self, cur: &mut Loaded) -> Result<Vec<Action>, EngineError> {
        let commands = self
            .store
            .commands_after(&cur.id, cur.rollout.last_command_seq)
            .await?;
        if commands.is_empty() {
            return Ok(vec![]);
        }
        let mut actions = Vec::new();
        for posted in commands {
            let now = self.clock.now();
            cur.rollout.last_command_seq = posted.seq;
            actions.extend(cur.rollout.handle(now, Input::Command(posted.command)));
        }
        self.persist(cur).await?;
        Ok(actions)
    }

    async fn persist(&self, cur: &mut Loaded) -> Result<(), EngineError> {
        let now = self.clock.now();
        let active = !cur.rollout.phase.is_terminal();
        let record = self
            .store
            .update(&cur.id, cur.version, &encode(&cur.rollout), active, now)
            .await?;
        cur.version = record.version;
        if let Some(observer) = &self.observer {
            observer(&cur.rollout);
        }
        Ok(())
    }

    async fn perform(&self, action: &Action, adapters: &Adapters, rollout: &Rollout) -> Input {
        match action {
            Action::Preflight => {
                let mut refusals = Vec::new();
                let shortest_hold = rollout
                    .plan
                    .strategy
                    .steps
                    .iter()
                    .map(|s| s.hold)
                    .min()
                    .unwrap_or_default();
                if let Err(e) = adapters.router.preflight(shortest_hold).await {
                    refusals.push(format!("router: {e}"));
                }
                for check in &adapters.checks {
                    if let Err(e) = check.preflight().await {
                        refusals.push(format!("{}: {e}", check.name()));
                    }
                }
                Input::Preflight(if refusals.is_empty() {
                    Ok(())
                } else {
                    Err(refusals.join("; "))
                })
            }
            Action::Prepare => match &adapters.platform {
                Some(p) => Input::Prepared(
                    p.prepare(self.options.prepare_deadline)
                        .await
                        .map_err(|e| e.to_string()),
                ),
                None => Input::Prepared(Ok(())),
            },
            Action::Finalize => match &adapters.platform {
                Some(p) => Input::Finalized(p.finalize().await.map_err(|e| e.to_string())),
                None => Input::Finalized(Ok(())),
            },
            Action::ApplySplit(split) => match adapters.router.apply(*split).await {
                Ok(realized) => Input::SplitApplied {
                    requested: *split,
                    realized,
                },
                Err(e) => Input::ApplyFailed {
                    requested: *split,
                    message: e.message,
                    transient: e.transient,
                },
            },
            Action::RunAnalysis => Input::Analysis(self.analyse(&adapters.checks).await),
        }
    }

    /// Runs every check at once; a check that errors is retried a few
    /// times with a short back-off and, if it still cannot measure, counts
    /// as an error (inconclusive to the machine, never a pass).
    async fn analyse(&self, checks: &[Arc<dyn Check>]) -> Vec<Observation> {
        let mut set = JoinSet::new();
        for (i, check) in checks.iter().enumerate() {
            let check = Arc::clone(check);
            let retries = self.options.check_retries;
            set.spawn(async move {
                let mut observation = check.evaluate().await;
                let mut attempt = 0;
                while observation.verdict == Verdict::Error && attempt < retries {
                    attempt += 1;
                    tokio::time::sleep(Duration::from_millis(100 << attempt)).await;
                    observation = check.evaluate().await;
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
        tracing::debug!(verdict = %combine(&observations), "analysis");
        observations
    }
}

fn encode(rollout: &Rollout) -> String {
    serde_json::to_string(rollout).expect("a rollout always serialises")
}

fn decode(record: &RolloutRecord) -> Result<Rollout, EngineError> {
    serde_json::from_str(&record.state).map_err(|e| EngineError::Snapshot {
        id: record.id.clone(),
        message: e.to_string(),
    })
}
