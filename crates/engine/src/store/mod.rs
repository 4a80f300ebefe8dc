//! Durable rollout state: the `Store` trait, its conformance suite, and the
//! SQLite implementation.
//!
//! A store keeps rollout records as opaque JSON (the core's `Rollout`
//! snapshot) next to the few fields it must index or compare: service,
//! version, active. Every write that could race is a conditional write in
//! the backend itself (a unique index, `WHERE version = ?`), never a read
//! followed by a write.

pub mod conformance;
mod sqlite;

use std::time::Duration;

use async_trait::async_trait;
use cutover_core::{Command, Timestamp};
use serde::{Deserialize, Serialize};

pub use sqlite::SqliteStore;

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
}

impl RolloutRecord {
    /// The record `Store::create` writes: version 1, created and updated `now`.
    pub fn created(
        id: &str,
        service: &str,
        state: &str,
        active: bool,
        now: Timestamp,
    ) -> RolloutRecord {
        RolloutRecord {
            id: id.to_owned(),
            service: service.to_owned(),
            version: 1,
            active,
            state: state.to_owned(),
            created_at: now,
            updated_at: now,
        }
    }
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

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
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

#[async_trait]
pub trait Store: Send + Sync {
    /// Creates a rollout at version 1. An active one is refused with
    /// `ActiveExists` while the service has another active rollout (an
    /// inactive record is always accepted); `DuplicateId` if the id is taken.
    async fn create(
        &self,
        id: &str,
        service: &str,
        state: &str,
        active: bool,
        now: Timestamp,
    ) -> Result<RolloutRecord, StoreError>;

    async fn load(&self, id: &str) -> Result<Option<RolloutRecord>, StoreError>;

    /// Replaces the state if the stored version is `expected_version`;
    /// returns the new record (version + 1). `Conflict` otherwise, with
    /// `found: None` when there is no such rollout. Making a rollout active
    /// again while its service has another active one is `ActiveExists`.
    async fn update(
        &self,
        id: &str,
        expected_version: u64,
        state: &str,
        active: bool,
        now: Timestamp,
    ) -> Result<RolloutRecord, StoreError>;

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
    /// expired, or already held by `holder` (a renewal). True if `holder`
    /// holds it after the call.
    async fn acquire_lease(
        &self,
        name: &str,
        holder: &str,
        now: Timestamp,
        ttl: Duration,
    ) -> Result<bool, StoreError>;

    /// Gives the lease up if `holder` holds it; otherwise does nothing.
    async fn release_lease(&self, name: &str, holder: &str) -> Result<(), StoreError>;

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
}
