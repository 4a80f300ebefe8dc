//! The rollout state machine.
//!
//! A [`Rollout`] is driven by [`Rollout::handle`]: each call takes the time
//! and one [`Input`] (a tick, a verdict, the result of an action, an operator
//! command) and returns the [`Action`]s the engine must perform next. The
//! machine never performs anything itself and never reads a clock, so the
//! same inputs always give the same outputs, and a snapshot (the struct,
//! serialised by [`Rollout::to_snapshot`]) is all there is to resume from.
//!
//! Rules it keeps:
//! - it observes before it acts: the router's real split is read before the
//!   first shift (a rollout starts only from "all traffic on the live
//!   target"), on every resume, and at every analysis during holds; a split
//!   that neither cutover nor its in-flight action explains is drift,
//!   recorded with the values and acted on (`rollback.on_drift`);
//! - green's share rises only after a passing verdict taken once the current
//!   step's hold is over; a fail beyond `failure_limit` sends all traffic to
//!   blue at once;
//! - every phase that waits has a deadline derived from the plan, except a
//!   pause, which waits for an operator by design;
//! - each decision is an [`Event`] with its time, the observations behind it
//!   and the reason. Events are not kept in the snapshot: they wait in an
//!   outbox ([`Rollout::take_events`]) for the engine to append them to the
//!   store's event log together with the new snapshot, so the snapshot stays
//!   a few KB however long the rollout runs.
//!
//! "Blue" and "green" are roles: the live target and the candidate. The real
//! names (set identifiers, target groups, pools) come from the plan's router
//! ([`crate::plan::RouterConfig::targets`]) and are what messages show.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::plan::{Judge, OnAdapterFailure, OnDrift, OnInconclusive, OnWaitExpired, Plan, Targets};
use crate::time::Human;
use crate::verdict::{combine, Observation, Verdict};
use crate::{Split, Timestamp};

/// The snapshot schema this build writes. Version 1 (no `schema` field)
/// kept the whole history inside the snapshot.
pub const SNAPSHOT_SCHEMA: u32 = 2;

/// What an operator can ask of a rollout.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Command {
    /// Roll back now.
    Abort,
    /// Skip the remaining steps: straight to 100 %, then bake.
    Promote,
    /// Stop advancing; keep the current split (analysis keeps running).
    Pause,
    /// Continue after a pause.
    Resume,
    /// Start a rolled-back, aborted or failed rollout again from its first step.
    Retry,
    /// Send all traffic to blue now, whatever the rollout is doing; while
    /// it is already restoring, try again at once (`cutover rollback --force`).
    Rollback,
}

impl Command {
    /// Whether this command can do anything in `phase`; why not if not.
    /// The machine records and ignores a command that cannot; callers use
    /// this to refuse it up front with the reason.
    pub fn applies_to(self, phase: &Phase) -> Result<(), String> {
        let ok = match self {
            // While restoring, an abort asks for what is already under
            // way: it is taken, and recorded as such.
            Command::Abort => !phase.is_terminal(),
            Command::Rollback => !phase.is_terminal(),
            Command::Promote => matches!(
                phase,
                Phase::Shifting | Phase::Holding | Phase::Paused { .. }
            ),
            Command::Pause => matches!(phase, Phase::Shifting | Phase::Holding | Phase::Baking),
            Command::Resume => matches!(phase, Phase::Paused { .. }),
            Command::Retry => matches!(
                phase,
                Phase::RolledBack { .. } | Phase::Aborted { .. } | Phase::Failed { .. }
            ),
        };
        if ok {
            Ok(())
        } else {
            Err(format!("cannot {self} a rollout that is {}", phase.name()))
        }
    }
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Command::Abort => "abort",
            Command::Promote => "promote",
            Command::Pause => "pause",
            Command::Resume => "resume",
            Command::Retry => "retry",
            Command::Rollback => "rollback",
        })
    }
}

/// Where a rollout is.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "phase", rename_all = "kebab-case")]
pub enum Phase {
    /// Created, not started.
    Pending,
    /// Checks' preflight (e.g. no alarm firing) and the read of the
    /// router's split, before anything changes.
    Preflight,
    /// A platform puts the new version on green.
    Preparing,
    /// Waiting for the router to apply `target` for step `step`.
    Shifting,
    /// Holding step `step`'s split while analysis runs.
    Holding,
    /// Holding 100 % for the bake time.
    Baking,
    /// The platform retires blue.
    Finalizing,
    /// Not advancing until an operator resumes (analysis keeps running,
    /// unless the pause waits to re-apply a split).
    Paused {
        reason: String,
        resume_to: ResumeTo,
    },
    /// Sending all traffic back to blue; ends in `then`.
    RollingBack {
        reason: String,
        then: Ending,
    },
    /// The rollback could not reach all traffic on blue within its
    /// deadline: still active, retrying with back-off and reporting the
    /// router's real state at every try, until it does (or an operator's
    /// `rollback` makes it try again at once).
    CannotRestore {
        reason: String,
        then: Ending,
    },
    Succeeded,
    RolledBack {
        reason: String,
    },
    Aborted {
        reason: String,
    },
    Failed {
        reason: String,
    },
}

/// Where a paused rollout goes on resume.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ResumeTo {
    Holding,
    Baking,
    /// Apply `target` again (an interrupted shift, or the split cutover
    /// had in force before drift moved it).
    Shifting,
}

/// How a rollback ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Ending {
    RolledBack,
    Aborted,
    Failed,
}

impl Phase {
    pub fn is_terminal(&self) -> bool {
        matches!(
            self,
            Phase::Succeeded
                | Phase::RolledBack { .. }
                | Phase::Aborted { .. }
                | Phase::Failed { .. }
        )
    }

    /// Sending (or trying to send) all traffic back to blue.
    pub fn is_restoring(&self) -> bool {
        matches!(
            self,
            Phase::RollingBack { .. } | Phase::CannotRestore { .. }
        )
    }

    /// The phase's name, as shown to people.
    pub fn name(&self) -> &'static str {
        match self {
            Phase::Pending => "pending",
            Phase::Preflight => "preflight",
            Phase::Preparing => "preparing",
            Phase::Shifting => "shifting",
            Phase::Holding => "holding",
            Phase::Baking => "baking",
            Phase::Finalizing => "finalizing",
            Phase::Paused { .. } => "paused",
            Phase::RollingBack { .. } => "rolling-back",
            Phase::CannotRestore { .. } => "cannot-restore",
            Phase::Succeeded => "succeeded",
            Phase::RolledBack { .. } => "rolled-back",
            Phase::Aborted { .. } => "aborted",
            Phase::Failed { .. } => "failed",
        }
    }

    /// The reason a terminal or paused phase carries.
    pub fn reason(&self) -> Option<&str> {
        match self {
            Phase::Paused { reason, .. }
            | Phase::RollingBack { reason, .. }
            | Phase::CannotRestore { reason, .. }
            | Phase::RolledBack { reason }
            | Phase::Aborted { reason }
            | Phase::Failed { reason } => Some(reason),
            _ => None,
        }
    }
}

/// What the engine tells the machine.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Input {
    /// Begin (from `Pending`).
    Start,
    /// Time passed; due timers fire.
    Tick,
    /// The preflight's outcome.
    Preflight(Result<(), String>),
    /// The platform's outcome for `Prepare`.
    Prepared(Result<(), String>),
    /// The router applied `requested`; `realized` is what is in force.
    SplitApplied {
        requested: Split,
        realized: Split,
    },
    /// The router failed to apply `requested`.
    ApplyFailed {
        requested: Split,
        message: String,
        transient: bool,
    },
    /// The router's split, as read for `ReadSplit`.
    SplitRead(Split),
    /// The router's split could not be read.
    ReadFailed {
        message: String,
        transient: bool,
    },
    /// One analysis run's observations.
    Analysis(Vec<Observation>),
    /// The engine cut an action short for an operator command (fed right
    /// after the command): whatever it would have answered never comes.
    Interrupted(Action),
    /// The platform's outcome for `Finalize`.
    Finalized(Result<(), String>),
    Command(Command),
    /// Something an adapter had to say that changes nothing (throttling a
    /// call absorbed): recorded as it is.
    Note(String),
}

/// What the machine asks the engine to do.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Action {
    /// Run every check's preflight; answer with `Input::Preflight`.
    Preflight,
    /// Ready green; answer with `Input::Prepared`.
    Prepare,
    /// Set the split; answer with `SplitApplied` or `ApplyFailed`.
    ApplySplit(Split),
    /// Read the split the router has in force; answer with `SplitRead` or
    /// `ReadFailed`.
    ReadSplit,
    /// Run the checks once; answer with `Input::Analysis`.
    RunAnalysis,
    /// Retire blue; answer with `Input::Finalized`.
    Finalize,
}

/// One decision, as appended to the rollout's event log.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// 1 for the rollout's first event, +1 for each one after.
    #[serde(default)]
    pub seq: u64,
    pub at: Timestamp,
    /// Phase after the decision.
    pub phase: String,
    /// Split in force after the decision.
    pub split: Split,
    pub message: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub observations: Vec<Observation>,
    /// On the event that starts a rollback: what caused it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cause: Option<Cause>,
}

/// What made a rollout roll back.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Cause {
    /// Analysis failed beyond `failure_limit`.
    Verdict,
    /// Too many inconclusive verdicts in a row.
    Inconclusive,
    /// An operator aborted.
    Operator,
    /// A router call kept failing or was refused.
    Adapter,
    /// The router's split changed under cutover.
    Drift,
}

impl Cause {
    pub fn as_str(self) -> &'static str {
        match self {
            Cause::Verdict => "verdict",
            Cause::Inconclusive => "inconclusive",
            Cause::Operator => "operator",
            Cause::Adapter => "adapter",
            Cause::Drift => "drift",
        }
    }
}

/// Back-off between attempts of a failing router call.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Retry {
    pub first_failure: Timestamp,
    pub attempts: u32,
    /// When the next attempt is due; `None` while it is in flight.
    pub next_at: Option<Timestamp>,
    /// Which call is retried.
    #[serde(default)]
    pub of: Call,
}

/// A router call the machine retries.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Call {
    /// `ApplySplit(target)`.
    #[default]
    Apply,
    /// `ReadSplit`.
    Read,
}

/// Why the machine waits for a read of the router's split before doing
/// anything else.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Observing {
    /// Before the first shift: a rollout starts only from 0 % on the candidate.
    Start,
    /// After loading a snapshot: does the router do what the record says?
    Resume,
    /// A write failed or timed out, so whether it landed is unknown:
    /// what does the router have now?
    AfterFailedWrite,
}

/// A router write that failed, waiting for the read that tells whether it
/// landed after all.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailedWrite {
    pub requested: Split,
    pub message: String,
    pub transient: bool,
    /// When the failed write was asked for: its failure is dated from
    /// then, since it may have failed (been throttled, hung) from its
    /// first request on.
    #[serde(default)]
    pub since: Option<Timestamp>,
}

/// A rollout: its plan and where it is. [`Rollout::to_snapshot`] persists it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Rollout {
    /// Snapshot schema version ([`SNAPSHOT_SCHEMA`]).
    #[serde(default = "schema_v1")]
    pub schema: u32,
    pub plan: Plan,
    /// Whether a platform readies green and retires blue.
    pub has_platform: bool,
    /// Start from the split the router has instead of refusing anything
    /// but 0 % on the candidate.
    #[serde(default)]
    pub adopt: bool,
    pub phase: Phase,
    /// Index of the current step in `plan.strategy.steps`.
    pub step: usize,
    /// The split in force, as last confirmed or read from the router.
    pub split: Split,
    /// The split the rollout intends (persisted before it is applied).
    pub target: Split,
    /// When the current hold (or bake, or pause) began.
    pub phase_started: Timestamp,
    /// When analysis is next due, if it runs in this phase.
    pub next_analysis: Option<Timestamp>,
    /// A `RunAnalysis` was issued and its result not yet received.
    pub analysis_in_flight: bool,
    /// The last combined verdict and when it was taken.
    pub last_verdict: Option<(Timestamp, Verdict)>,
    /// Fail verdicts so far (compared with `failure_limit`).
    pub failures: u32,
    /// Inconclusive verdicts in a row (compared with `inconclusive_limit`).
    pub inconclusive_streak: u32,
    /// A pause requested while shifting, applied once the shift lands.
    pub pause_requested: bool,
    /// An operator promoted: once 100 % lands, skip to the bake.
    pub promoted: bool,
    pub retry: Option<Retry>,
    /// Waiting for a `ReadSplit` answer before anything else happens.
    #[serde(default)]
    pub observing: Option<Observing>,
    /// The failed write being checked by a read (with `AfterFailedWrite`).
    #[serde(default)]
    pub failed_write: Option<FailedWrite>,
    /// When the router call in flight (the last `ApplySplit` or
    /// `ReadSplit` asked for) was asked for.
    #[serde(default)]
    pub call_started: Option<Timestamp>,
    /// Why the last read of the split during a hold failed, if it did: the
    /// next verdict cannot pass on a split nobody could confirm.
    #[serde(default)]
    pub split_unverified: Option<String>,
    pub started_at: Option<Timestamp>,
    pub ended_at: Option<Timestamp>,
    /// Sequence number of the last operator command applied (store-assigned).
    pub last_command_seq: u64,
    /// How many events the rollout has recorded (the last one's `seq`).
    #[serde(default)]
    pub events: u64,
    /// The latest event that carried observations (the last verdict with
    /// its numbers), kept for status displays.
    #[serde(default)]
    pub last_analysis: Option<Event>,
    /// What checks that judge across looks have gathered (the sequential
    /// judge's evidence), by check name, opaque to the machine: stored with
    /// the rollout so that a driver taking it over goes on with the same
    /// test rather than starting a new one.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub check_states: BTreeMap<String, serde_json::Value>,
    /// Events recorded and not yet taken by the engine.
    #[serde(skip)]
    outbox: Vec<Event>,
}

fn schema_v1() -> u32 {
    1
}

/// A snapshot this build cannot use.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SnapshotError {
    #[error("snapshot schema {found} was written by a newer cutover (this one reads up to {SNAPSHOT_SCHEMA}); upgrade cutover to drive or read this rollout")]
    TooNew { found: u64 },
    #[error("unreadable snapshot: {0}")]
    Invalid(String),
}

impl Rollout {
    pub fn new(plan: Plan, has_platform: bool, now: Timestamp) -> Rollout {
        let mut r = Rollout {
            schema: SNAPSHOT_SCHEMA,
            plan,
            has_platform,
            adopt: false,
            phase: Phase::Pending,
            step: 0,
            split: Split::ZERO,
            target: Split::ZERO,
            phase_started: now,
            next_analysis: None,
            analysis_in_flight: false,
            last_verdict: None,
            failures: 0,
            inconclusive_streak: 0,
            pause_requested: false,
            promoted: false,
            retry: None,
            observing: None,
            failed_write: None,
            call_started: None,
            split_unverified: None,
            started_at: None,
            ended_at: None,
            last_command_seq: 0,
            events: 0,
            last_analysis: None,
            check_states: BTreeMap::new(),
            outbox: Vec::new(),
        };
        let t = r.targets();
        r.record(
            now,
            format!(
                "created for service `{}`: moves traffic from live `{}` to candidate `{}`",
                r.plan.service, t.live, t.candidate
            ),
            vec![],
        );
        r
    }

    /// The same rollout, starting from whatever split the router has
    /// (`--adopt`) instead of refusing anything but 0 % on the candidate.
    pub fn adopting(mut self) -> Rollout {
        self.adopt = true;
        self
    }

    /// The snapshot to persist (JSON).
    pub fn to_snapshot(&self) -> String {
        serde_json::to_string(self).expect("a rollout always serialises")
    }

    /// Reads a snapshot of this or any older schema. A version-1 snapshot's
    /// history becomes events in the outbox, so the next persist moves them
    /// into the event log. A newer schema is refused, never guessed at.
    pub fn from_snapshot(text: &str) -> Result<Rollout, SnapshotError> {
        let mut value: serde_json::Value =
            serde_json::from_str(text).map_err(|e| SnapshotError::Invalid(e.to_string()))?;
        let object = value
            .as_object_mut()
            .ok_or_else(|| SnapshotError::Invalid("not a JSON object".into()))?;
        let schema = match object.get("schema") {
            None => 1,
            Some(v) => v
                .as_u64()
                .ok_or_else(|| SnapshotError::Invalid(format!("`schema` is {v}, not a number")))?,
        };
        if schema > u64::from(SNAPSHOT_SCHEMA) {
            return Err(SnapshotError::TooNew { found: schema });
        }
        let legacy = if schema == 1 {
            object.remove("history")
        } else {
            None
        };
        let mut rollout: Rollout =
            serde_json::from_value(value).map_err(|e| SnapshotError::Invalid(e.to_string()))?;
        if let Some(history) = legacy {
            let history: Vec<Event> = serde_json::from_value(history)
                .map_err(|e| SnapshotError::Invalid(format!("`history`: {e}")))?;
            for (i, mut event) in history.into_iter().enumerate() {
                event.seq = i as u64 + 1;
                if !event.observations.is_empty() {
                    rollout.last_analysis = Some(event.clone());
                }
                rollout.events = event.seq;
                rollout.outbox.push(event);
            }
        }
        rollout.schema = SNAPSHOT_SCHEMA;
        Ok(rollout)
    }

    /// Events recorded since the last call, oldest first. The engine
    /// appends them to the store with the snapshot that follows them.
    pub fn take_events(&mut self) -> Vec<Event> {
        std::mem::take(&mut self.outbox)
    }

    /// Events recorded and not yet taken.
    pub fn pending_events(&self) -> &[Event] {
        &self.outbox
    }

    /// The real targets traffic moves between.
    pub fn targets(&self) -> Targets {
        self.plan.targets()
    }

    /// The next time at which a `Tick` has something to do.
    pub fn next_wakeup(&self) -> Option<Timestamp> {
        if self.phase.is_terminal() {
            return None;
        }
        if self.observing.is_some() {
            // Only a retried read of the split can be due.
            return self
                .retry
                .filter(|r| r.of == Call::Read)
                .and_then(|r| r.next_at);
        }
        let analysis = self.next_analysis.filter(|_| !self.analysis_in_flight);
        let retry = self.retry.and_then(|r| r.next_at);
        match (analysis, retry) {
            (Some(a), Some(r)) => Some(a.min(r)),
            (a, r) => a.or(r),
        }
    }

    /// When the current hold (or bake) ends, if holding or baking.
    pub fn hold_ends_at(&self) -> Option<Timestamp> {
        let length = match self.phase_for_timing() {
            Some(ResumeTo::Holding) => self.plan.strategy.steps.get(self.step)?.hold,
            Some(ResumeTo::Baking) => self.plan.strategy.bake,
            _ => return None,
        };
        Some(self.phase_started.after(length))
    }

    /// What to do after loading a snapshot. Operator `commands` posted
    /// while no driver ran are applied first, so an abort posted meanwhile
    /// means traffic never goes above the split it had. Then, unless the
    /// rollout has not touched traffic yet, the router's split is read and
    /// compared with the record before anything else happens; whatever was
    /// in flight is re-issued once that read agrees (every action is
    /// idempotent).
    pub fn resume(&mut self, now: Timestamp, commands: &[(u64, Command)]) -> Vec<Action> {
        for &(seq, command) in commands {
            self.last_command_seq = self.last_command_seq.max(seq);
            // The actions are re-derived below from the resulting phase.
            let _ = self.handle(now, Input::Command(command));
        }
        if self.analysis_in_flight {
            // The verdict was lost with the process; take it again once
            // the router's split is confirmed.
            self.analysis_in_flight = false;
            self.next_analysis = Some(now);
        }
        let actions = match &self.phase {
            Phase::Pending => vec![],
            p if p.is_terminal() => vec![],
            Phase::Preflight if self.observing == Some(Observing::Start) => {
                vec![Action::ReadSplit]
            }
            Phase::Preflight => vec![Action::Preflight],
            _ => {
                if self.retry.is_some_and(|r| r.of == Call::Read) {
                    self.retry = None;
                }
                self.observing = Some(Observing::Resume);
                vec![Action::ReadSplit]
            }
        };
        self.note_calls(now, &actions);
        actions
    }

    /// Feeds one input; returns the actions to perform, in order.
    pub fn handle(&mut self, now: Timestamp, input: Input) -> Vec<Action> {
        let mut out = Vec::new();
        match input {
            Input::Start => self.on_start(now, &mut out),
            Input::Tick => self.on_tick(now, &mut out),
            Input::Preflight(result) => self.on_preflight(now, result, &mut out),
            Input::Prepared(result) => self.on_prepared(now, result, &mut out),
            Input::SplitApplied {
                requested,
                realized,
            } => self.on_applied(now, requested, realized, &mut out),
            Input::ApplyFailed {
                requested,
                message,
                transient,
            } => self.on_apply_failed(now, requested, message, transient, &mut out),
            Input::SplitRead(split) => self.on_read(now, split, &mut out),
            Input::ReadFailed { message, transient } => {
                self.on_read_failed(now, message, transient, &mut out)
            }
            Input::Analysis(observations) => self.on_analysis(now, observations, &mut out),
            Input::Interrupted(action) => self.on_interrupted(now, action, &mut out),
            Input::Finalized(result) => self.on_finalized(now, result),
            Input::Command(command) => self.on_command(now, command, &mut out),
            Input::Note(message) => self.record(now, message, vec![]),
        }
        self.note_calls(now, &out);
        out
    }

    /// Remembers when a router call was asked for (see `call_started`).
    fn note_calls(&mut self, now: Timestamp, actions: &[Action]) {
        if actions
            .iter()
            .any(|a| matches!(a, Action::ApplySplit(_) | Action::ReadSplit))
        {
            self.call_started = Some(now);
        }
    }

    fn on_start(&mut self, now: Timestamp, out: &mut Vec<Action>) {
        if self.phase != Phase::Pending {
            return;
        }
        self.started_at = Some(now);
        self.set_phase(now, Phase::Preflight);
        self.record(now, "started: running preflight checks".into(), vec![]);
        out.push(Action::Preflight);
    }

    fn on_preflight(&mut self, now: Timestamp, result: Result<(), String>, out: &mut Vec<Action>) {
        if self.phase != Phase::Preflight || self.observing.is_some() {
            return;
        }
        match result {
            Err(reason) => self.finish(
                now,
                Phase::Failed {
                    reason: format!(
                        "preflight refused the rollout before any traffic moved: {reason}"
                    ),
                },
            ),
            Ok(()) => {
                self.observing = Some(Observing::Start);
                self.record(
                    now,
                    "preflight passed; reading the router's split before moving traffic".into(),
                    vec![],
                );
                out.push(Action::ReadSplit);
            }
        }
    }

    fn on_prepared(&mut self, now: Timestamp, result: Result<(), String>, out: &mut Vec<Action>) {
        if self.phase != Phase::Preparing || self.observing.is_some() {
            return;
        }
        match result {
            Ok(()) => {
                let candidate = self.targets().candidate;
                self.record(now, format!("candidate `{candidate}` is ready"), vec![]);
                self.shift_to_step(now, 0, out);
            }
            Err(reason) => self.finish(
                now,
                Phase::Failed {
                    reason: format!(
                        "the candidate could not be prepared (no traffic moved): {reason}"
                    ),
                },
            ),
        }
    }

    /// The router's split, read at the start, on resume or during a hold.
    fn on_read(&mut self, now: Timestamp, found: Split, out: &mut Vec<Action>) {
        if self.retry.is_some_and(|r| r.of == Call::Read) {
            self.retry = None;
        }
        match self.observing.take() {
            Some(Observing::Start) => self.on_start_read(now, found, out),
            Some(Observing::Resume) => self.on_resume_read(now, found, out),
            Some(Observing::AfterFailedWrite) => self.after_failed_write(now, Ok(found), out),
            None => {
                // A read taken with an analysis: only holds check it.
                if self.phase_for_timing().is_none() {
                    return;
                }
                self.split_unverified = None;
                if found != self.split {
                    self.drift(now, found, out);
                }
            }
        }
    }

    fn on_start_read(&mut self, now: Timestamp, found: Split, out: &mut Vec<Action>) {
        if self.phase != Phase::Preflight {
            return;
        }
        let t = self.targets();
        if found == Split::ZERO {
            self.record(
                now,
                format!(
                    "router has all traffic on live `{}` (0 % on candidate `{}`)",
                    t.live, t.candidate
                ),
                vec![],
            );
            return self.begin(now, out);
        }
        if let Some(reason) = start_refusal(&t, found, self.adopt, self.has_platform) {
            return self.finish(now, Phase::Failed { reason });
        }
        let shown = t.describe(found);
        // Adopt: the first step at or above the split found.
        self.split = found;
        let steps = &self.plan.strategy.steps;
        let step = steps
            .iter()
            .position(|s| s.split >= found)
            .unwrap_or(steps.len() - 1);
        let at_step = steps[step].split == found;
        self.record(
            now,
            format!(
                "adopting the split found: {shown}; continuing at step {} of {}",
                step + 1,
                self.steps()
            ),
            vec![],
        );
        if at_step {
            self.step = step;
            self.target = found;
            self.enter_hold(now);
        } else {
            self.shift_to_step(now, step, out);
        }
    }

    /// After the start read found all traffic on the live target.
    fn begin(&mut self, now: Timestamp, out: &mut Vec<Action>) {
        if self.has_platform {
            self.set_phase(now, Phase::Preparing);
            let candidate = self.targets().candidate;
            self.record(now, format!("preparing candidate `{candidate}`"), vec![]);
            out.push(Action::Prepare);
        } else {
            self.shift_to_step(now, 0, out);
        }
    }

    fn on_resume_read(&mut self, now: Timestamp, found: Split, out: &mut Vec<Action>) {
        let t = self.targets();
        match self.phase.clone() {
            Phase::Shifting | Phase::RollingBack { .. } | Phase::CannotRestore { .. } => {
                if found == self.target {
                    self.record(
                        now,
                        format!(
                            "resumed: the router already has {} (the shift in flight landed)",
                            t.describe(found)
                        ),
                        vec![],
                    );
                    let target = self.target;
                    return self.on_applied(now, target, found, out);
                }
                if found != self.split && !self.phase.is_restoring() {
                    return self.drift_on_resume(now, found, out);
                }
                self.split = found;
                self.record(
                    now,
                    format!(
                        "resumed: the router has {}; applying {} again",
                        t.describe(found),
                        self.target
                    ),
                    vec![],
                );
                if self.retry.is_none_or(|r| r.next_at.is_none()) {
                    out.push(Action::ApplySplit(self.target));
                }
            }
            phase => {
                if found != self.split {
                    return self.drift_on_resume(now, found, out);
                }
                self.record(
                    now,
                    format!("resumed: the router has {}, as recorded", t.describe(found)),
                    vec![],
                );
                match phase {
                    Phase::Preparing => out.push(Action::Prepare),
                    Phase::Finalizing => out.push(Action::Finalize),
                    _ => {}
                }
                // Timers resume from their stored times; overdue ones fire now.
                self.on_tick(now, out);
            }
        }
    }

    /// The router has `found` where cutover has `self.split` in force and
    /// nothing in flight explains it.
    fn drift(&mut self, now: Timestamp, found: Split, out: &mut Vec<Action>) {
        let t = self.targets();
        let what = format!(
            "drift: the router has {} where cutover last applied {} on `{}`; cutover did not cause this",
            t.describe(found),
            self.split,
            t.candidate
        );
        self.drifted(now, found, what, out)
    }

    /// Drift found by the read a resumed driver makes first.
    /// All traffic on the live target is then not necessarily someone
    /// else's doing: a driver that loses its store or its lease for good
    /// sends all traffic to the live target before it stops (its
    /// fail-safe), with no record of it, and the driver before this one did
    /// stop. The record says so rather than blame someone else.
    fn drift_on_resume(&mut self, now: Timestamp, found: Split, out: &mut Vec<Action>) {
        if found != Split::ZERO {
            return self.drift(now, found, out);
        }
        let t = self.targets();
        let what = format!(
            "drift: the router has all traffic on live `{}` where cutover last applied {} on `{}`. \
             The driver before this one stopped without recording it: one that loses its store or \
             its lease for good sends all traffic to the live target first (its fail-safe), and a \
             router that restarts may come back so",
            t.live, self.split, t.candidate
        );
        self.drifted(now, found, what, out)
    }

    fn drifted(&mut self, now: Timestamp, found: Split, what: String, out: &mut Vec<Action>) {
        match self.plan.rollback.on_drift {
            OnDrift::Rollback if !self.phase.is_restoring() => {
                self.split = found;
                self.split_unverified = None;
                self.rollback(now, what, Ending::RolledBack, Cause::Drift, vec![], out)
            }
            _ => self.traffic_moved(now, found, what, out),
        }
    }

    /// The router has `found`, not the split cutover last applied (`what`
    /// says so for the record): a rollback goes on; anything else pauses,
    /// to apply on resume the split cutover had (or was moving to).
    fn traffic_moved(&mut self, now: Timestamp, found: Split, what: String, out: &mut Vec<Action>) {
        let t = self.targets();
        let recorded = self.split;
        self.split = found;
        self.split_unverified = None;
        if self.phase.is_restoring() {
            self.record(now, format!("{what}; still rolling back"), vec![]);
            out.push(Action::ApplySplit(Split::ZERO));
            return;
        }
        // On resume, cutover applies again the split it had (or, in the
        // middle of a shift, the one it was moving to).
        if !matches!(self.phase, Phase::Shifting) {
            self.target = recorded;
        }
        if self.phase == Phase::Finalizing {
            // Blue must not be retired unless green holds 100 %:
            // re-apply it and bake again first.
            self.target = Split::FULL;
            self.promoted = true;
        }
        if self.phase == Phase::Preparing {
            // Traffic must be on the live target before the candidate is
            // changed.
            return self.rollback(now, what, Ending::RolledBack, Cause::Drift, vec![], out);
        }
        self.retry = None;
        self.next_analysis = None;
        self.analysis_in_flight = false;
        self.set_phase(
            now,
            Phase::Paused {
                reason: what.clone(),
                resume_to: ResumeTo::Shifting,
            },
        );
        self.record(
            now,
            format!(
                "paused: {what}. Resume to apply {} on `{}` again, or abort to send all traffic to `{}`",
                self.target, t.candidate, t.live
            ),
            vec![],
        );
    }

    fn on_read_failed(
        &mut self,
        now: Timestamp,
        message: String,
        transient: bool,
        out: &mut Vec<Action>,
    ) {
        let Some(observing) = self.observing else {
            // A read during a hold: the next verdict cannot pass on it.
            if self.phase_for_timing().is_some() {
                self.split_unverified = Some(message);
            }
            return;
        };
        if observing == Observing::AfterFailedWrite {
            self.observing = None;
            return self.after_failed_write(now, Err(message), out);
        }
        // A first failure is dated from when the read was asked for.
        let first_failure = self
            .retry
            .filter(|r| r.of == Call::Read)
            .map_or(self.call_started.unwrap_or(now).min(now), |r| {
                r.first_failure
            });
        let attempts = self
            .retry
            .filter(|r| r.of == Call::Read)
            .map_or(1, |r| r.attempts + 1);
        let deadline = first_failure.after(self.plan.rollback.adapter_deadline);
        let backoff = last_try_at(now, backoff(attempts), deadline);
        if let (true, Some(backoff)) = (transient, backoff) {
            self.retry = Some(Retry {
                first_failure,
                attempts,
                next_at: Some(now.after(backoff)),
                of: Call::Read,
            });
            self.record(
                now,
                format!("reading the router's split failed (attempt {attempts}): {message}; retrying in {}", Human(backoff)),
                vec![],
            );
            return;
        }
        self.retry = None;
        self.observing = None;
        let why = if transient {
            format!(
                "the router's split could not be read for {} ({attempts} attempts): {message}",
                Human(now.since(first_failure))
            )
        } else {
            format!("the router's split could not be read: {message}")
        };
        match observing {
            Observing::Start => self.finish(
                now,
                Phase::Failed {
                    reason: format!("refused before any traffic moved: {why}"),
                },
            ),
            Observing::Resume => {
                if self.phase.is_restoring() {
                    // Rolling back is always safe to repeat.
                    out.push(Action::ApplySplit(self.target));
                    return;
                }
                self.adapter_gave_up(now, why, out);
            }
            Observing::AfterFailedWrite => unreachable!("handled above"),
        }
    }

    fn shift_to_step(&mut self, now: Timestamp, step: usize, out: &mut Vec<Action>) {
        self.step = step;
        let split = self.plan.strategy.steps[step].split;
        let t = self.targets();
        self.shift(
            now,
            split,
            format!(
                "step {} of {}: shifting to {split} on candidate `{}` ({} on live `{}`)",
                step + 1,
                self.steps(),
                t.candidate,
                Split::from_basis_points(split.blue_basis_points()).unwrap_or(Split::ZERO),
                t.live
            ),
            out,
        );
    }

    fn shift(&mut self, now: Timestamp, split: Split, why: String, out: &mut Vec<Action>) {
        self.target = split;
        self.retry = None;
        self.observing = None;
        self.next_analysis = None;
        self.set_phase(now, Phase::Shifting);
        self.record(now, why, vec![]);
        out.push(Action::ApplySplit(split));
    }

    fn rollback(
        &mut self,
        now: Timestamp,
        reason: String,
        then: Ending,
        cause: Cause,
        observations: Vec<Observation>,
        out: &mut Vec<Action>,
    ) {
        self.target = Split::ZERO;
        self.retry = None;
        self.observing = None;
        self.next_analysis = None;
        self.pause_requested = false;
        self.promoted = false;
        let live = self.targets().live;
        let message = format!("rolling back: all traffic to live `{live}`: {reason}");
        self.set_phase(now, Phase::RollingBack { reason, then });
        self.record(now, message, observations);
        if let Some(e) = self.outbox.last_mut() {
            e.cause = Some(cause);
        }
        out.push(Action::ApplySplit(Split::ZERO));
    }

    fn on_applied(
        &mut self,
        now: Timestamp,
        requested: Split,
        realized: Split,
        out: &mut Vec<Action>,
    ) {
        if requested != self.target || !self.writing() {
            // The answer to an earlier request that has since been superseded.
            if !self.writing() {
                self.split = realized;
            }
            return;
        }
        self.split = realized;
        self.retry = None;
        self.observing = None;
        self.failed_write = None;
        let t = self.targets();
        let shown = if realized == requested {
            format!("{} in force", t.describe(realized))
        } else {
            format!(
                "{} in force (asked for {requested} on `{}`; the router rounds)",
                t.describe(realized),
                t.candidate
            )
        };
        if let Phase::RollingBack { reason, then } | Phase::CannotRestore { reason, then } =
            self.phase.clone()
        {
            let terminal = match then {
                Ending::RolledBack => Phase::RolledBack { reason },
                Ending::Aborted => Phase::Aborted { reason },
                Ending::Failed => Phase::Failed { reason },
            };
            self.record(now, shown, vec![]);
            self.finish(now, terminal);
            return;
        }
        self.last_verdict = None;
        if std::mem::take(&mut self.promoted) {
            self.set_phase(now, Phase::Holding);
            self.record(now, shown, vec![]);
            return self.advance(now, ResumeTo::Holding, out);
        }
        let hold = self.plan.strategy.steps[self.step].hold;
        self.enter_hold(now);
        self.record(now, format!("{shown}; holding for {}", Human(hold)), vec![]);
        if std::mem::take(&mut self.pause_requested) {
            self.pause(now, "paused by operator".into());
        }
    }

    /// Holds the current step's split from now on.
    fn enter_hold(&mut self, now: Timestamp) {
        self.set_phase(now, Phase::Holding);
        self.split_unverified = None;
        self.schedule_analysis(now);
    }

    fn on_apply_failed(
        &mut self,
        _now: Timestamp,
        requested: Split,
        message: String,
        transient: bool,
        out: &mut Vec<Action>,
    ) {
        if requested != self.target || !self.writing() {
            return;
        }
        // Whether it landed is unknown until the router says: read it
        // before deciding anything or reporting any split.
        self.failed_write = Some(FailedWrite {
            requested,
            message,
            transient,
            since: self.call_started,
        });
        self.observing = Some(Observing::AfterFailedWrite);
        out.push(Action::ReadSplit);
    }

    /// Whether a write of the split is what the phase is about.
    fn writing(&self) -> bool {
        self.phase == Phase::Shifting || self.phase.is_restoring()
    }

    /// The read after a failed write answered (`found`), or could not.
    fn after_failed_write(
        &mut self,
        now: Timestamp,
        found: Result<Split, String>,
        out: &mut Vec<Action>,
    ) {
        let Some(fw) = self.failed_write.take() else {
            return;
        };
        if fw.requested != self.target || !self.writing() {
            return;
        }
        let t = self.targets();
        match found {
            Ok(s) if s == fw.requested => {
                self.record(
                    now,
                    format!(
                        "the router has {} after all: the write landed though it answered `{}`",
                        t.describe(s),
                        fw.message
                    ),
                    vec![],
                );
                return self.on_applied(now, fw.requested, s, out);
            }
            Ok(s) => {
                if s != self.split {
                    self.record(
                        now,
                        format!(
                            "read after the failed write: the router has {}",
                            t.describe(s)
                        ),
                        vec![],
                    );
                }
                self.split = s;
            }
            Err(e) => self.record(
                now,
                format!(
                    "the router's split is unknown after the failed write ({e}); last known: {}",
                    t.describe(self.split)
                ),
                vec![],
            ),
        }
        self.write_failed(now, fw, out);
    }

    /// The deadline of the router calls the current phase retries: the
    /// shift's `adapter_deadline` from its first failure, the rollback's
    /// `rollback_deadline` from its start. The engine cuts a call short at
    /// it, so a decision never waits past it. None: no deadline.
    pub fn call_deadline(&self) -> Option<Timestamp> {
        match &self.phase {
            Phase::RollingBack { .. } => Some(
                self.phase_started
                    .after(self.plan.rollback.rollback_deadline),
            ),
            Phase::CannotRestore { .. } => None,
            _ => self
                .retry
                .map(|r| r.first_failure.after(self.plan.rollback.adapter_deadline)),
        }
    }

    /// A write failed and did not land: retry, give up, or keep restoring.
    fn write_failed(&mut self, now: Timestamp, fw: FailedWrite, out: &mut Vec<Action>) {
        let FailedWrite {
            requested,
            message,
            transient,
            since,
        } = fw;
        let retry = self.retry.filter(|r| r.of == Call::Apply);
        // A first failure is dated from when the write was asked for.
        let first_failure = retry.map_or(since.unwrap_or(now).min(now), |r| r.first_failure);
        let attempts = retry.map_or(1, |r| r.attempts + 1);
        let t = self.targets();
        if matches!(self.phase, Phase::CannotRestore { .. }) {
            let wait = restore_backoff(attempts);
            self.retry = Some(Retry {
                first_failure,
                attempts,
                next_at: Some(now.after(wait)),
                of: Call::Apply,
            });
            self.record(
                now,
                format!(
                    "still cannot restore live `{}` (attempt {attempts}, failing for {}): {message}; the router has {}; trying again in {}",
                    t.live,
                    Human(now.since(first_failure)),
                    t.describe(self.split),
                    Human(wait)
                ),
                vec![],
            );
            return;
        }
        let deadline = self
            .call_deadline()
            .unwrap_or(first_failure.after(self.plan.rollback.adapter_deadline));
        let wait = last_try_at(now, backoff(attempts), deadline);
        let frozen = self.phase == Phase::Shifting && self.pause_requested;
        if let (true, Some(wait), false) = (transient, wait, frozen) {
            self.retry = Some(Retry {
                first_failure,
                attempts,
                next_at: Some(now.after(wait)),
                of: Call::Apply,
            });
            self.record(
                now,
                format!("router failed to apply {requested} (attempt {attempts}): {message}; retrying in {}", Human(wait)),
                vec![],
            );
            return;
        }
        self.retry = None;
        let why = if transient {
            format!(
                "router kept failing for {} ({attempts} attempts): {message}",
                Human(now.since(first_failure))
            )
        } else {
            format!("router refused {requested}: {message}")
        };
        if frozen {
            self.pause_requested = false;
            self.set_phase(
                now,
                Phase::Paused {
                    reason: "paused by operator".into(),
                    resume_to: ResumeTo::Shifting,
                },
            );
            self.next_analysis = None;
            self.record(
                now,
                format!(
                    "paused by operator at {} while the router failed: {why}",
                    t.describe(self.split)
                ),
                vec![],
            );
            return;
        }
        if let Phase::RollingBack { reason, then } = self.phase.clone() {
            let reason = format!(
                "{reason}; live `{}` could not be restored within {}: {why}",
                t.live,
                Human(self.plan.rollback.rollback_deadline)
            );
            self.set_phase(now, Phase::CannotRestore { reason, then });
            let wait = restore_backoff(1);
            self.retry = Some(Retry {
                first_failure: now,
                attempts: 0,
                next_at: Some(now.after(wait)),
                of: Call::Apply,
            });
            self.record(
                now,
                format!(
                    "CANNOT RESTORE live `{}`: the router has {}; retrying until it works (`cutover rollback --force` tries again at once): {why}",
                    t.live,
                    t.describe(self.split)
                ),
                vec![],
            );
            return;
        }
        self.adapter_gave_up(now, why, out);
    }

    /// A router call failed for good outside a rollback: the plan's
    /// `on_adapter_failure` decides.
    fn adapter_gave_up(&mut self, now: Timestamp, why: String, out: &mut Vec<Action>) {
        match self.plan.rollback.on_adapter_failure {
            OnAdapterFailure::Rollback => {
                self.rollback(now, why, Ending::RolledBack, Cause::Adapter, vec![], out)
            }
            OnAdapterFailure::Hold => {
                self.set_phase(
                    now,
                    Phase::Paused {
                        reason: why.clone(),
                        resume_to: ResumeTo::Shifting,
                    },
                );
                self.next_analysis = None;
                let shown = self.targets().describe(self.split);
                self.record(
                    now,
                    format!("holding at {shown} and waiting for an operator: {why}"),
                    vec![],
                );
            }
        }
    }

    fn on_tick(&mut self, now: Timestamp, out: &mut Vec<Action>) {
        if self.phase.is_terminal() {
            return;
        }
        if let Some(retry) = self.retry {
            if retry.next_at.is_some_and(|at| now >= at) {
                self.retry = Some(Retry {
                    next_at: None,
                    ..retry
                });
                out.push(match retry.of {
                    Call::Apply => Action::ApplySplit(self.target),
                    Call::Read => Action::ReadSplit,
                });
            }
        }
        if self.observing.is_some() {
            // Nothing else happens until the router's split is known.
            return;
        }
        if let Some(due) = self.next_analysis {
            if now >= due && !self.analysis_in_flight {
                self.analysis_in_flight = true;
                // Judge only a split the router confirms: read it first.
                out.push(Action::ReadSplit);
                out.push(Action::RunAnalysis);
            }
        }
    }

    fn on_analysis(
        &mut self,
        now: Timestamp,
        mut observations: Vec<Observation>,
        out: &mut Vec<Action>,
    ) {
        if !self.analysis_in_flight {
            return;
        }
        self.analysis_in_flight = false;
        let Some(resume_to) = self.phase_for_timing() else {
            return;
        };
        if let Some(why) = self.split_unverified.take() {
            observations.push(Observation::new(
                "router",
                Verdict::Error,
                format!("could not confirm the split in force: {why}"),
            ));
        }
        let verdict = combine(&observations);
        self.last_verdict = Some((now, verdict));
        let hold_over = self.hold_ends_at().is_some_and(|end| now >= end);
        let a = &self.plan.analysis;
        let summary = summarize(&observations);
        match verdict {
            Verdict::Fail => {
                self.failures += 1;
                if self.failures > a.failure_limit {
                    let reason = format!("green failed analysis: {summary}");
                    return self.rollback(
                        now,
                        reason,
                        Ending::RolledBack,
                        Cause::Verdict,
                        observations,
                        out,
                    );
                }
                let limit = a.failure_limit;
                self.record(
                    now,
                    format!(
                        "fail verdict {} of {limit} tolerated: {summary}",
                        self.failures
                    ),
                    observations,
                );
            }
            Verdict::Inconclusive
                if observations.iter().all(|o| {
                    o.verdict == Verdict::Pass || (o.verdict == Verdict::Inconclusive && o.waiting)
                }) && (self
                    .hold_ends_at()
                    .is_some_and(|end| now < end.after(a.wait_for_data))
                    || a.on_wait_expired != OnWaitExpired::Inconclusive) =>
            {
                let waited_out = self
                    .hold_ends_at()
                    .is_none_or(|end| now >= end.after(a.wait_for_data));
                let paused = matches!(self.phase, Phase::Paused { .. });
                let waited = crate::time::Human(a.wait_for_data);
                match a.on_wait_expired {
                    // Nothing against green, only too little data to let
                    // the step pass: the hold goes on.
                    _ if !waited_out => self.record(
                        now,
                        format!("holding on for more data: {summary}"),
                        observations,
                    ),
                    OnWaitExpired::Pass => {
                        self.inconclusive_streak = 0;
                        self.record(
                            now,
                            format!("passed without the data asked for (waited {waited} past the hold): {summary}"),
                            observations,
                        );
                        if hold_over && !paused {
                            return self.advance(now, resume_to, out);
                        }
                    }
                    _ if paused => self.record(
                        now,
                        format!("still waiting for data: {summary}"),
                        observations,
                    ),
                    _ => {
                        let reason =
                            format!("waited {waited} past the hold for enough data: {summary}");
                        self.record(now, format!("pausing: {reason}"), observations);
                        if !paused {
                            self.pause(now, reason);
                        }
                    }
                }
            }
            Verdict::Inconclusive | Verdict::Error => {
                self.inconclusive_streak += 1;
                if self.inconclusive_streak > a.inconclusive_limit {
                    let reason = format!(
                        "{} inconclusive verdicts in a row (limit {}): {summary}",
                        self.inconclusive_streak, a.inconclusive_limit
                    );
                    match a.on_inconclusive {
                        OnInconclusive::Rollback => {
                            return self.rollback(
                                now,
                                reason,
                                Ending::RolledBack,
                                Cause::Inconclusive,
                                observations,
                                out,
                            )
                        }
                        OnInconclusive::Pause => {
                            self.inconclusive_streak = 0;
                            self.record(now, format!("pausing: {reason}"), observations);
                            if !matches!(self.phase, Phase::Paused { .. }) {
                                self.pause(now, reason);
                            }
                            self.schedule_next_analysis(now);
                            return;
                        }
                    }
                }
                let limit = a.inconclusive_limit;
                self.record(
                    now,
                    format!(
                        "inconclusive ({} of {limit} tolerated): {summary}",
                        self.inconclusive_streak
                    ),
                    observations,
                );
            }
            Verdict::Pass => {
                self.inconclusive_streak = 0;
                let paused = matches!(self.phase, Phase::Paused { .. });
                self.record(now, format!("passed: {summary}"), observations);
                if hold_over && !paused {
                    return self.advance(now, resume_to, out);
                }
            }
        }
        self.schedule_next_analysis(now);
    }

    /// After a passing verdict at the end of a hold or the bake.
    fn advance(&mut self, now: Timestamp, from: ResumeTo, out: &mut Vec<Action>) {
        let next = self.step + 1;
        if from == ResumeTo::Holding && next < self.steps() {
            return self.shift_to_step(now, next, out);
        }
        if from == ResumeTo::Holding && self.plan.strategy.bake > Duration::ZERO {
            // The last step's hold is over; the bake follows at the same split.
            self.set_phase(now, Phase::Baking);
            self.schedule_analysis(now);
            let candidate = self.targets().candidate;
            self.record(
                now,
                format!(
                    "baking at {} on `{candidate}` for {}",
                    self.split,
                    Human(self.plan.strategy.bake)
                ),
                vec![],
            );
            return;
        }
        self.next_analysis = None;
        if self.has_platform {
            self.set_phase(now, Phase::Finalizing);
            let t = self.targets();
            self.record(
                now,
                format!(
                    "`{}` held 100 % through the bake; retiring `{}`",
                    t.candidate, t.live
                ),
                vec![],
            );
            out.push(Action::Finalize);
        } else {
            self.finish(now, Phase::Succeeded);
        }
    }

    fn on_finalized(&mut self, now: Timestamp, result: Result<(), String>) {
        if self.phase != Phase::Finalizing || self.observing.is_some() {
            return;
        }
        if let Err(e) = result {
            // Traffic is on green and green is healthy: the rollout succeeded,
            // but blue is still running; say so.
            let live = self.targets().live;
            self.record(
                now,
                format!("`{live}` could not be retired, leave it to an operator: {e}"),
                vec![],
            );
        }
        self.finish(now, Phase::Succeeded);
    }

    /// An operator's abort or rollback (`done`: what the history says was
    /// done): before any traffic moved it simply ends the rollout; after,
    /// it sends all traffic back to the live target.
    fn operator_rollback(
        &mut self,
        now: Timestamp,
        phase: &Phase,
        done: &str,
        out: &mut Vec<Action>,
    ) {
        if matches!(phase, Phase::Pending | Phase::Preflight | Phase::Preparing)
            && self.split == Split::ZERO
        {
            return self.finish(
                now,
                Phase::Aborted {
                    reason: format!("{done} by operator before traffic moved"),
                },
            );
        }
        self.rollback(
            now,
            format!("{done} by operator"),
            Ending::Aborted,
            Cause::Operator,
            vec![],
            out,
        )
    }

    fn on_command(&mut self, now: Timestamp, command: Command, out: &mut Vec<Action>) {
        let phase = self.phase.clone();
        match (command, &phase) {
            (Command::Abort | Command::Rollback, Phase::CannotRestore { .. }) => {
                let live = self.targets().live;
                if command == Command::Rollback {
                    if let Some(r) = self.retry.as_mut().filter(|r| r.next_at.is_some()) {
                        r.next_at = Some(now);
                    }
                    self.record(
                        now,
                        format!("rollback forced by operator: trying to restore live `{live}` now"),
                        vec![],
                    );
                } else {
                    self.record(
                        now,
                        format!("abort: cutover is already trying to send all traffic to live `{live}` and keeps trying (`cutover rollback --force` tries again at once)"),
                        vec![],
                    );
                }
            }
            (Command::Abort, Phase::RollingBack { .. }) => {
                let live = self.targets().live;
                self.record(
                    now,
                    format!("abort: cutover is already sending all traffic to live `{live}`"),
                    vec![],
                );
            }
            (Command::Rollback, Phase::RollingBack { .. }) => {
                if let Some(r) = self.retry.as_mut().filter(|r| r.next_at.is_some()) {
                    r.next_at = Some(now);
                }
                self.record(
                    now,
                    "rollback forced by operator: already rolling back; trying now".into(),
                    vec![],
                );
            }
            (Command::Rollback, p) if !p.is_terminal() => {
                self.operator_rollback(now, p, "rolled back", out)
            }
            (Command::Abort, p) if !p.is_terminal() && !p.is_restoring() => {
                self.operator_rollback(now, p, "aborted", out)
            }
            (Command::Promote, Phase::Shifting | Phase::Holding | Phase::Paused { .. }) => {
                self.pause_requested = false;
                let last = self.steps() - 1;
                self.step = last;
                self.failures = 0;
                self.inconclusive_streak = 0;
                self.promoted = true;
                let candidate = self.targets().candidate;
                self.shift(
                    now,
                    Split::FULL,
                    format!("promoted by operator: shifting straight to 100 % on `{candidate}`"),
                    out,
                );
            }
            (Command::Pause, Phase::Holding | Phase::Baking) => {
                self.pause(now, "paused by operator".into())
            }
            (Command::Pause, Phase::Shifting) => {
                self.pause_requested = true;
                self.record(
                    now,
                    "pause requested; takes effect once the current shift lands".into(),
                    vec![],
                );
            }
            (Command::Resume, Phase::Paused { resume_to, .. }) => {
                let resume_to = *resume_to;
                self.record(now, "resumed by operator".into(), vec![]);
                match resume_to {
                    ResumeTo::Shifting => {
                        let target = self.target;
                        let candidate = self.targets().candidate;
                        self.shift(
                            now,
                            target,
                            format!("applying {target} on `{candidate}` again"),
                            out,
                        );
                    }
                    ResumeTo::Holding | ResumeTo::Baking => {
                        let phase = if resume_to == ResumeTo::Holding {
                            Phase::Holding
                        } else {
                            Phase::Baking
                        };
                        // Keep the hold's original start: time paused counts.
                        self.phase = phase;
                        self.inconclusive_streak = 0;
                        self.next_analysis = Some(now);
                    }
                }
            }
            (
                Command::Retry,
                Phase::RolledBack { .. } | Phase::Aborted { .. } | Phase::Failed { .. },
            ) => {
                self.failures = 0;
                self.inconclusive_streak = 0;
                self.last_verdict = None;
                // A new attempt is judged afresh.
                self.check_states.clear();
                self.ended_at = None;
                self.observing = None;
                self.split_unverified = None;
                self.started_at = Some(now);
                self.set_phase(now, Phase::Preflight);
                self.record(
                    now,
                    "retry requested by operator: starting again from step 1".into(),
                    vec![],
                );
                out.push(Action::Preflight);
            }
            (command, phase) => self.record(
                now,
                format!("ignored `{command}`: not possible while {}", phase.name()),
                vec![],
            ),
        }
    }

    /// The engine cut `action` short for an operator command (fed just
    /// before this): ask again for what is still needed.
    fn on_interrupted(&mut self, now: Timestamp, action: Action, out: &mut Vec<Action>) {
        match action {
            Action::RunAnalysis => {
                if self.analysis_in_flight {
                    self.analysis_in_flight = false;
                    if self.phase_for_timing().is_some() {
                        self.next_analysis = Some(now);
                    }
                }
            }
            Action::ReadSplit => {
                if self.observing.is_some() {
                    out.push(Action::ReadSplit);
                }
            }
            Action::Preflight => {
                if self.phase == Phase::Preflight && self.observing.is_none() {
                    out.push(Action::Preflight);
                }
            }
            Action::Prepare => {
                if self.phase == Phase::Preparing {
                    out.push(Action::Prepare);
                }
            }
            Action::Finalize => {
                if self.phase == Phase::Finalizing {
                    out.push(Action::Finalize);
                }
            }
            Action::ApplySplit(split) => self.on_apply_failed(
                now,
                split,
                "cut short for an operator command; whether it landed is unknown".into(),
                true,
                out,
            ),
        }
    }

    fn pause(&mut self, now: Timestamp, reason: String) {
        let resume_to = match self.phase {
            Phase::Baking => ResumeTo::Baking,
            _ => ResumeTo::Holding,
        };
        self.phase = Phase::Paused {
            reason: reason.clone(),
            resume_to,
        };
        let shown = self.targets().describe(self.split);
        self.record(now, format!("paused at {shown}: {reason}"), vec![]);
    }

    fn finish(&mut self, now: Timestamp, phase: Phase) {
        let t = self.targets();
        let message = match &phase {
            Phase::Succeeded => format!(
                "succeeded: all traffic on `{}` (the candidate, now live)",
                t.candidate
            ),
            p => format!(
                "{}: {} ({})",
                p.name(),
                p.reason().unwrap_or_default(),
                t.describe(self.split)
            ),
        };
        self.set_phase(now, phase);
        self.next_analysis = None;
        self.analysis_in_flight = false;
        self.retry = None;
        self.observing = None;
        self.ended_at = Some(now);
        self.record(now, message, vec![]);
    }

    fn set_phase(&mut self, now: Timestamp, phase: Phase) {
        self.phase = phase;
        self.phase_started = now;
    }

    /// Whether analysis runs now, and as part of which phase.
    fn phase_for_timing(&self) -> Option<ResumeTo> {
        match &self.phase {
            Phase::Holding => Some(ResumeTo::Holding),
            Phase::Baking => Some(ResumeTo::Baking),
            Phase::Paused {
                resume_to: ResumeTo::Holding,
                ..
            } => Some(ResumeTo::Holding),
            Phase::Paused {
                resume_to: ResumeTo::Baking,
                ..
            } => Some(ResumeTo::Baking),
            _ => None,
        }
    }

    /// First analysis of a hold or bake that starts now.
    fn schedule_analysis(&mut self, now: Timestamp) {
        self.analysis_in_flight = false;
        self.next_analysis = Some(match self.plan.analysis.judge {
            Judge::Continuous => now
                .after(self.plan.analysis.interval)
                .min(self.hold_ends_at().unwrap_or(now)),
            Judge::EndOfHold => self.hold_ends_at().unwrap_or(now),
        });
    }

    /// The analysis after one taken at `now`: every interval, and once more
    /// exactly at the end of the hold if that falls between two.
    fn schedule_next_analysis(&mut self, now: Timestamp) {
        let interval = now.after(self.plan.analysis.interval);
        let end = self.hold_ends_at().unwrap_or(now);
        self.next_analysis = Some(if now < end && end < interval {
            end
        } else {
            interval
        });
    }

    fn steps(&self) -> usize {
        self.plan.strategy.steps.len()
    }

    fn record(&mut self, now: Timestamp, message: String, observations: Vec<Observation>) {
        self.events += 1;
        let event = Event {
            seq: self.events,
            at: now,
            phase: self.phase.name().to_string(),
            split: self.split,
            message,
            observations,
            cause: None,
        };
        if !event.observations.is_empty() {
            self.last_analysis = Some(event.clone());
        }
        self.outbox.push(event);
    }
}

/// Why a rollout may not start with the router at `found` (the
/// candidate's share), naming the weights found and the ways on; `None`
/// when it may. A rollout starts only from all traffic on the live
/// target, unless it adopts the split found (and then deploys nothing).
pub fn start_refusal(
    targets: &Targets,
    found: Split,
    adopt: bool,
    has_platform: bool,
) -> Option<String> {
    if found == Split::ZERO {
        return None;
    }
    let shown = targets.describe(found);
    if adopt && has_platform {
        return Some(format!(
            "refused before any traffic moved: --adopt cannot deploy a release onto candidate `{}` while it serves traffic ({shown})",
            targets.candidate
        ));
    }
    if adopt {
        return None;
    }
    let ways = if found == Split::FULL {
        vec![
            format!(
                "`{}` is already live: to move traffic back to `{}`, run the plan with --swap-colours",
                targets.candidate, targets.live
            ),
            "with --image or --task-definition cutover deploys to the idle side and swaps by itself"
                .to_string(),
        ]
    } else {
        vec![
            format!("put all traffic back on `{}` first", targets.live),
            "run with --adopt to continue from the split found".to_string(),
        ]
    };
    Some(format!(
        "refused before any traffic moved: the router has {shown}; a rollout starts only from all traffic on the live target `{}`. Ways on: {}",
        targets.live,
        ways.join("; ")
    ))
}

/// The longest wait between two attempts of a failing router call.
pub const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// The longest wait between two tries to restore blue once the rollback
/// missed its deadline.
pub const MAX_RESTORE_BACKOFF: Duration = Duration::from_secs(30);

/// 1 s, 2 s, 4 s ... capped at [`MAX_RESTORE_BACKOFF`].
fn restore_backoff(attempt: u32) -> Duration {
    Duration::from_millis(1000u64 << attempt.saturating_sub(1).min(5)).min(MAX_RESTORE_BACKOFF)
}

/// The wait before the next try of a failing call: `backoff`, or less so
/// that the last try starts at the deadline rather than giving up a
/// back-off early; `None` when the deadline leaves no room for a try.
fn last_try_at(now: Timestamp, backoff: Duration, deadline: Timestamp) -> Option<Duration> {
    let left = deadline.since(now);
    (left > MIN_LAST_TRY).then(|| backoff.min(left - MIN_LAST_TRY))
}

/// The least time a last try before a deadline is given.
const MIN_LAST_TRY: Duration = Duration::from_millis(100);

/// 200 ms, 400 ms, 800 ms ... capped at [`MAX_BACKOFF`].
fn backoff(attempt: u32) -> Duration {
    Duration::from_millis(200u64 << attempt.saturating_sub(1).min(6)).min(MAX_BACKOFF)
}

fn summarize(observations: &[Observation]) -> String {
    if observations.is_empty() {
        return "no checks configured".into();
    }
    // Lead with what decided it: failures first, then the rest.
    let mut sorted: Vec<&Observation> = observations.iter().collect();
    sorted.sort_by_key(|o| match o.verdict {
        Verdict::Fail => 0,
        Verdict::Error => 1,
        Verdict::Inconclusive => 2,
        Verdict::Pass => 3,
    });
    sorted
        .iter()
        .map(|o| format!("{} {}: {}", o.check, o.shown_verdict(), o.detail))
        .collect::<Vec<_>>()
        .join("; ")
}
