//! Durable rollout state: the `Store` trait, its conformance suite, and the
//! SQLite implementation.
//!
//! A store keeps rollout records as opaque JSON (the core's `Rollout`
//! snapshot) next to the few fields it must index or compare: service,
//! version, active. Every write that could race is a conditional write in
//! the backend itself (a unique index, `WHERE version = ?`), never a read
//! followed by a write.

pub mod conformance;
pub mod faults;
mod metered;
mod sqlite;

use std::time::Duration;

use async_trait::async_trait;
use cutover_core::{Command, Timestamp};
use serde::{Deserialize, Serialize};

pub use metered::MeteredStore;
pub use sqlite::{Journal, SqliteStore};

/// One rollout as stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RolloutRecord {
    /// Unique id, chosen by the creator.
    pub id: String,
    pub service: String,
    /// 1 on creation, +1 on every update.
    pub version: u64,
    /// True until the rollout reaches a terminal phase.
    pub active: bool,
    /// The core's `Rollout` snapshot, as JSON.
    pub state: String,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
    /// Who wrote this version (a driver's lease holder name; empty when
    /// not said). A writer whose reply was lost recognises its own write
    /// by it.
    #[serde(default)]
    pub written_by: String,
}

impl RolloutRecord {
    /// The record `Store::create_rollout` writes: version 1, created and updated `now`.
    pub fn created(id: &str, service: &str, change: &Change<'_>) -> RolloutRecord {
        RolloutRecord {
            id: id.to_owned(),
            service: service.to_owned(),
            version: 1,
            active: change.active,
            state: change.state.to_owned(),
            created_at: change.now,
            updated_at: change.now,
            written_by: change.writer.to_owned(),
        }
    }
}

/// One write of a rollout: its new snapshot, and the events that led to
/// it, appended to its event log in the same atomic write.
#[derive(Clone, Copy, Debug)]
pub struct Change<'a> {
    pub state: &'a str,
    pub active: bool,
    /// Events numbered after the last one stored (`seq` from 1, no gaps).
    pub events: &'a [EventRecord],
    /// Who writes (kept in [`RolloutRecord::written_by`]).
    pub writer: &'a str,
    pub now: Timestamp,
}

/// One entry of a rollout's append-only event log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventRecord {
    /// 1 for the rollout's first event, +1 for each one after.
    pub seq: u64,
    pub at: Timestamp,
    /// The core's `Event`, as JSON.
    pub body: String,
}

/// Who holds a lease, until when.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    pub holder: String,
    pub expires_at: Timestamp,
}

/// An operator command waiting for the engine that drives the rollout.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PostedCommand {
    /// Increasing per store; the engine records the last one it applied in
    /// the rollout's state, so each command takes effect exactly once.
    pub seq: u64,
    pub rollout_id: String,
    pub command: Command,
    pub posted_at: Timestamp,
}

#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum StoreError {
    #[error(
        "service `{service}` already has an active rollout `{id}`; wait for it to end or abort it"
    )]
    ActiveExists { service: String, id: String },
    #[error("a rollout with id `{0}` already exists")]
    DuplicateId(String),
    #[error(
        "rollout `{id}` was changed by someone else (expected version {expected}, found {found:?})"
    )]
    Conflict {
        id: String,
        expected: u64,
        found: Option<u64>,
    },
    #[error("no rollout `{0}`")]
    NotFound(String),
    #[error("store: {0}")]
    Backend(String),
}

/// How many lease renewals [`Store::renew_leases`] keeps in flight at once
/// when a store has no bulk renewal of its own.
pub const RENEWALS_IN_FLIGHT: usize = 32;

#[async_trait]
pub trait Store: Send + Sync {
    /// Creates a rollout at version 1 with its first events. An active one
    /// is refused with `ActiveExists` while the service has another active
    /// rollout (an inactive record is always accepted); `DuplicateId` if
    /// the id is taken. Nothing is written when it is refused.
    async fn create_rollout(
        &self,
        id: &str,
        service: &str,
        change: Change<'_>,
    ) -> Result<RolloutRecord, StoreError>;

    async fn load(&self, id: &str) -> Result<Option<RolloutRecord>, StoreError>;

    /// Replaces the state and appends the events if the stored version is
    /// `expected_version`, in one atomic write; returns the new record
    /// (version + 1). `Conflict` otherwise (and nothing is written), with
    /// `found: None` when there is no such rollout. Making a rollout active
    /// again while its service has another active one is `ActiveExists`.
    async fn commit(
        &self,
        id: &str,
        expected_version: u64,
        change: Change<'_>,
    ) -> Result<RolloutRecord, StoreError>;

    /// Events of a rollout with `seq > after`, oldest first, at most `limit`.
    async fn events(
        &self,
        id: &str,
        after: u64,
        limit: usize,
    ) -> Result<Vec<EventRecord>, StoreError>;

    /// [`Store::create_rollout`] without events or a writer.
    async fn create(
        &self,
        id: &str,
        service: &str,
        state: &str,
        active: bool,
        now: Timestamp,
    ) -> Result<RolloutRecord, StoreError> {
        let change = Change {
            state,
            active,
            events: &[],
            writer: "",
            now,
        };
        self.create_rollout(id, service, change).await
    }

    /// [`Store::commit`] without events or a writer.
    async fn update(
        &self,
        id: &str,
        expected_version: u64,
        state: &str,
        active: bool,
        now: Timestamp,
    ) -> Result<RolloutRecord, StoreError> {
        let change = Change {
            state,
            active,
            events: &[],
            writer: "",
            now,
        };
        self.commit(id, expected_version, change).await
    }

    /// All active rollouts, oldest first.
    async fn list_active(&self) -> Result<Vec<RolloutRecord>, StoreError>;

    /// A service's rollouts, newest first, at most `limit`.
    async fn list_for_service(
        &self,
        service: &str,
        limit: usize,
    ) -> Result<Vec<RolloutRecord>, StoreError>;

    /// Records `key` as claimed by `owner` if nobody claimed it before.
    /// True if this call won. A key, once claimed, stays claimed.
    async fn claim_trigger(
        &self,
        key: &str,
        owner: &str,
        now: Timestamp,
    ) -> Result<bool, StoreError>;

    /// Takes the lease `name` for `holder` until `now + ttl` if it is free,
    /// expired, or already held by `holder` (a renewal, which never shortens
    /// it). True if `holder` holds it after the call.
    async fn acquire_lease(
        &self,
        name: &str,
        holder: &str,
        now: Timestamp,
        ttl: Duration,
    ) -> Result<bool, StoreError>;

    /// Gives the lease up if `holder` holds it; otherwise does nothing.
    async fn release_lease(&self, name: &str, holder: &str) -> Result<(), StoreError>;

    /// Who holds the lease `name`, if anyone ever took it (an expired
    /// lease is returned too: compare `expires_at` with the time).
    async fn lease(&self, name: &str) -> Result<Option<Lease>, StoreError>;

    /// Renews a lease `holder` holds: it then lasts until `now + ttl`, or
    /// longer if it already did (a renewal never shortens a lease: one
    /// stamped earlier may land after a later one). Never creates a lease,
    /// nor takes one held by another: false for a lease released, never
    /// taken, or another's.
    async fn renew_lease(
        &self,
        name: &str,
        holder: &str,
        now: Timestamp,
        ttl: Duration,
    ) -> Result<bool, StoreError>;

    /// Renews many leases `holder` holds (as [`Store::renew_lease`]
    /// would); returns, in order, whether each is held after the call.
    ///
    /// By default, [`RENEWALS_IN_FLIGHT`] calls of `renew_lease` at a
    /// time: one after another, a thousand leases on a store with 10 ms
    /// writes would take 10 s, longer than a lease lasts.
    async fn renew_leases(
        &self,
        names: &[String],
        holder: &str,
        now: Timestamp,
        ttl: Duration,
    ) -> Result<Vec<bool>, StoreError> {
        use futures_util::stream::{self, StreamExt, TryStreamExt};

        let calls: Vec<_> = names
            .iter()
            .map(|name| self.renew_lease(name, holder, now, ttl))
            .collect();
        stream::iter(calls)
            .buffered(RENEWALS_IN_FLIGHT)
            .try_collect()
            .await
    }

    /// Queues an operator command for a rollout; returns its sequence number
    /// (1 or more, so `commands_after(id, 0)` returns them all).
    /// `NotFound` if there is no such rollout.
    async fn post_command(
        &self,
        rollout_id: &str,
        command: Command,
        now: Timestamp,
    ) -> Result<u64, StoreError>;

    /// Commands for the rollout with `seq > after`, in order.
    async fn commands_after(
        &self,
        rollout_id: &str,
        after: u64,
    ) -> Result<Vec<PostedCommand>, StoreError>;

    /// Commands for any rollout with `seq > after`, in order, at most
    /// `limit`: what a controller driving many rollouts polls.
    async fn commands_since(
        &self,
        after: u64,
        limit: usize,
    ) -> Result<Vec<PostedCommand>, StoreError>;

    /// The highest command sequence number posted so far (0 if none): where
    /// a controller starts following [`Store::commands_since`].
    async fn latest_command_seq(&self) -> Result<u64, StoreError> {
        let mut after = 0;
        loop {
            let page = self.commands_since(after, 1000).await?;
            match page.last() {
                Some(c) => after = c.seq,
                None => return Ok(after),
            }
        }
    }

    /// Ids and services of the active rollouts, oldest first (a cheaper
    /// [`Store::list_active`]).
    async fn list_active_ids(&self) -> Result<Vec<(String, String)>, StoreError> {
        Ok(self
            .list_active()
            .await?
            .into_iter()
            .map(|r| (r.id, r.service))
            .collect())
    }
}
