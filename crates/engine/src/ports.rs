//! The traits adapters implement: where traffic is split, how green is
//! judged, and (optionally) how green is put in place.

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use cutover_core::{Observation, Split};

/// Why an adapter call failed, and whether trying again may help.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AdapterError {
    pub transient: bool,
    pub message: String,
}

impl AdapterError {
    /// A failure worth retrying (timeouts, throttling, connection refused).
    pub fn transient(message: impl Into<String>) -> Self {
        AdapterError {
            transient: true,
            message: message.into(),
        }
    }

    /// A failure that retrying will not fix (bad credentials, missing resource).
    pub fn permanent(message: impl Into<String>) -> Self {
        AdapterError {
            transient: false,
            message: message.into(),
        }
    }
}

impl fmt::Display for AdapterError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for AdapterError {}

/// Applies splits. Splits are absolute, so applying the same one twice is
/// harmless: the engine re-applies its last intent after a crash.
#[async_trait]
pub trait Router: Send + Sync {
    /// A short description for logs, e.g. `local proxy at http://127.0.0.1:9901`.
    fn describe(&self) -> String;

    /// Sets green's share; returns the split actually in force (a router
    /// with coarse weights may round).
    async fn apply(&self, split: Split) -> Result<Split, AdapterError>;

    /// Reads the split currently in force.
    async fn current(&self) -> Result<Split, AdapterError>;

    /// Lines for the rollout's history that calls since the last take had
    /// to say though they succeeded (throttling absorbed: operation, error
    /// code, requests sent, time spent). The engine takes them after every
    /// call. Default: none.
    fn take_notes(&self) -> Vec<String> {
        Vec::new()
    }

    /// Called once before traffic moves, with the plan's shortest hold: a
    /// router refuses here what it can only know at run time (records
    /// missing or unknown, a TTL longer than the holds). Default: fine.
    async fn preflight(&self, shortest_hold: Duration) -> Result<(), AdapterError> {
        let _ = shortest_hold;
        Ok(())
    }
}

/// What a check is told at every look: when it is, and which split has
/// been in force since when, so that a check judging "since the split took
/// effect" never counts traffic from before a shift.
#[derive(Clone, Debug, PartialEq)]
pub struct CheckContext {
    pub now: cutover_core::Timestamp,
    /// When the rollout started (None before it has).
    pub started_at: Option<cutover_core::Timestamp>,
    /// The split in force, as last applied or read from the router.
    pub split: cutover_core::Split,
    /// When the current hold or bake began: the split has been in force
    /// since (at most the time its write took after that).
    pub split_since: cutover_core::Timestamp,
    /// When the current hold or bake ends; None outside them (a pause).
    pub hold_ends_at: Option<cutover_core::Timestamp>,
    /// The latest the answer may reach the machine (`now` plus the check's
    /// time limit): the machine judges the end of the hold from when the
    /// answer arrives, so a check must too.
    pub answer_by: cutover_core::Timestamp,
}

impl CheckContext {
    /// A look at `now` with nothing known about the rollout: for checks
    /// that judge over a window of their own, and for tests.
    pub fn at(now: cutover_core::Timestamp) -> CheckContext {
        CheckContext {
            now,
            started_at: None,
            split: cutover_core::Split::ZERO,
            split_since: now,
            hold_ends_at: None,
            answer_by: now,
        }
    }

    /// The look for `rollout` at `now`, answered within `limit`.
    pub fn of(
        rollout: &cutover_core::Rollout,
        now: cutover_core::Timestamp,
        limit: std::time::Duration,
    ) -> CheckContext {
        CheckContext {
            now,
            started_at: rollout.started_at,
            split: rollout.split,
            split_since: rollout.phase_started,
            hold_ends_at: rollout.hold_ends_at(),
            answer_by: now.after(limit),
        }
    }

    /// The hold (or bake) may be over by the time the answer arrives: a
    /// check that needs enough data before it lets a step pass decides as
    /// at the end of the hold. (Deciding early costs nothing: the machine
    /// lets a waiting verdict hold on.)
    pub fn hold_is_over(&self) -> bool {
        self.hold_ends_at.is_some_and(|end| self.answer_by >= end)
    }
}

/// One health signal. Never fails: a check that cannot measure answers
/// with [`cutover_core::Verdict::Error`] and says why.
#[async_trait]
pub trait Check: Send + Sync {
    fn name(&self) -> &str;

    /// Judges green now: over the check's own window, or since the split
    /// in `ctx` took effect.
    async fn evaluate(&self, ctx: &CheckContext) -> Observation;

    /// Called once before traffic moves: a check may refuse to start (e.g.
    /// an alarm already firing). Default: fine.
    async fn preflight(&self) -> Result<(), AdapterError> {
        Ok(())
    }

    /// What the check has gathered across looks, to store with the rollout
    /// after each analysis (a check that judges each look on its own keeps
    /// nothing: the default).
    fn state(&self) -> Option<serde_json::Value> {
        None
    }

    /// Takes up what [`Check::state`] returned, when a driver resumes the
    /// rollout. A state it cannot read is refused, and the check starts
    /// afresh.
    fn restore(&self, state: &serde_json::Value) -> Result<(), String> {
        let _ = state;
        Ok(())
    }
}

/// Optionally readies green before traffic moves and retires blue after.
#[async_trait]
pub trait Platform: Send + Sync {
    fn describe(&self) -> String;

    /// Puts the new version on the idle colour and waits until it is ready,
    /// at most `deadline`.
    async fn prepare(&self, deadline: Duration) -> Result<(), AdapterError>;

    /// Retires the old colour once green has baked at 100 %.
    async fn finalize(&self) -> Result<(), AdapterError>;
}
