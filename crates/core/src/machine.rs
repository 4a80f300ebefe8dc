//! The rollout state machine.
//!
//! A [`Rollout`] is driven by [`Rollout::handle`]: each call takes the time
//! and one [`Input`] (a tick, a verdict, the result of an action, an operator
//! command) and returns the [`Action`]s the engine must perform next. The
//! machine never performs anything itself and never reads a clock, so the
//! same inputs always give the same outputs, and a snapshot (the struct,
//! serialised) is all there is to resume from.
//!
//! Rules it keeps:
//! - green's share rises only after a passing verdict taken once the current
//!   step's hold is over; a fail beyond `failure_limit` sends all traffic to
//!   blue at once;
//! - every phase that waits has a deadline derived from the plan, except a
//!   pause, which waits for an operator by design;
//! - each decision is written to `history` with its time, the observations
//!   behind it and the reason.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::plan::{Judge, OnAdapterFailure, OnInconclusive, Plan};
use crate::time::Human;
use crate::verdict::{combine, Observation, Verdict};
use crate::{Split, Timestamp};

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
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Command::Abort => "abort",
            Command::Promote => "promote",
            Command::Pause => "pause",
            Command::Resume => "resume",
            Command::Retry => "retry",
        })
    }
}

/// Where a rollout is.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "phase", rename_all = "kebab-case")]
pub enum Phase {
    /// Created, not started.
    Pending,
    /// Checks' preflight (e.g. no alarm firing) before anything changes.
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
    /// Not advancing until an operator resumes (analysis keeps running).
    Paused {
        reason: String,
        resume_to: ResumeTo,
    },
    /// Sending all traffic back to blue; ends in `then`.
    RollingBack {
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
    /// Try the interrupted shift again.
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
    /// One analysis run's observations.
    Analysis(Vec<Observation>),
    /// The platform's outcome for `Finalize`.
    Finalized(Result<(), String>),
    Command(Command),
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
    /// Run the checks once; answer with `Input::Analysis`.
    RunAnalysis,
    /// Retire blue; answer with `Input::Finalized`.
    Finalize,
}

/// One decision, as kept in the rollout's history.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub at: Timestamp,
    /// Phase after the decision.
    pub phase: String,
    /// Split in force after the decision.
    pub split: Split,
    pub message: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub observations: Vec<Observation>,
}

/// Back-off between attempts of a failing router call.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Retry {
    pub first_failure: Timestamp,
    pub attempts: u32,
    /// When the next attempt is due; `None` while it is in flight.
    pub next_at: Option<Timestamp>,
}

/// A rollout: its plan and where it is. Serialise it to persist it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Rollout {
    pub plan: Plan,
    /// Whether a platform readies green and retires blue.
    pub has_platform: bool,
    pub phase: Phase,
    /// Index of the current step in `plan.strategy.steps`.
    pub step: usize,
    /// The split last confirmed by the router.
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
    pub started_at: Option<Timestamp>,
    pub ended_at: Option<Timestamp>,
    /// Sequence number of the last operator command applied (store-assigned).
    pub last_command_seq: u64,
    pub history: Vec<Event>,
}

impl Rollout {
    pub fn new(plan: Plan, has_platform: bool, now: Timestamp) -> Rollout {
        let mut r = Rollout {
            plan,
            has_platform,
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
            started_at: None,
            ended_at: None,
            last_command_seq: 0,
            history: Vec::new(),
        };
        r.record(
            now,
            format!("created for service `{}`", r.plan.service),
            vec![],
        );
        r
    }

    /// The next time at which a `Tick` has something to do.
    pub fn next_wakeup(&self) -> Option<Timestamp> {
        if self.phase.is_terminal() {
            return None;
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

    /// The actions to re-issue after loading a snapshot: whatever was asked
    /// and not yet answered. Safe because every action is idempotent.
    pub fn resume(&mut self, now: Timestamp) -> Vec<Action> {
        let mut out = match &self.phase {
            Phase::Preflight => vec![Action::Preflight],
            Phase::Preparing => vec![Action::Prepare],
            Phase::Shifting | Phase::RollingBack { .. }
                if self.retry.is_none_or(|r| r.next_at.is_none()) =>
            {
                vec![Action::ApplySplit(self.target)]
            }
            Phase::Finalizing => vec![Action::Finalize],
            _ => vec![],
        };
        if self.analysis_in_flight {
            // The verdict was lost with the process; take it again now.
            self.analysis_in_flight = false;
            self.next_analysis = Some(now);
        }
        out.extend(self.handle(now, Input::Tick));
        out
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
            Input::Analysis(observations) => self.on_analysis(now, observations, &mut out),
            Input::Finalized(result) => self.on_finalized(now, result),
            Input::Command(command) => self.on_command(now, command, &mut out),
        }
        out
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
        if self.phase != Phase::Preflight {
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
            Ok(()) if self.has_platform => {
                self.set_phase(now, Phase::Preparing);
                self.record(now, "preflight passed; preparing green".into(), vec![]);
                out.push(Action::Prepare);
            }
            Ok(()) => {
                self.record(now, "preflight passed".into(), vec![]);
                self.shift_to_step(now, 0, out);
            }
        }
    }

    fn on_prepared(&mut self, now: Timestamp, result: Result<(), String>, out: &mut Vec<Action>) {
        if self.phase != Phase::Preparing {
            return;
        }
        match result {
            Ok(()) => {
                self.record(now, "green is ready".into(), vec![]);
                self.shift_to_step(now, 0, out);
            }
            Err(reason) => self.finish(
                now,
                Phase::Failed {
                    reason: format!("green could not be prepared (no traffic moved): {reason}"),
                },
            ),
        }
    }

    fn shift_to_step(&mut self, now: Timestamp, step: usize, out: &mut Vec<Action>) {
        self.step = step;
        let split = self.plan.strategy.steps[step].split;
        self.shift(
            now,
            split,
            format!(
                "step {} of {}: shifting to {split} green",
                step + 1,
                self.steps()
            ),
            out,
        );
    }

    fn shift(&mut self, now: Timestamp, split: Split, why: String, out: &mut Vec<Action>) {
        self.target = split;
        self.retry = None;
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
        observations: Vec<Observation>,
        out: &mut Vec<Action>,
    ) {
        self.target = Split::ZERO;
        self.retry = None;
        self.next_analysis = None;
        self.pause_requested = false;
        self.promoted = false;
        let message = format!("rolling back to 0 % green: {reason}");
        self.set_phase(now, Phase::RollingBack { reason, then });
        self.record(now, message, observations);
        out.push(Action::ApplySplit(Split::ZERO));
    }

    fn on_applied(
        &mut self,
        now: Timestamp,
        requested: Split,
        realized: Split,
        out: &mut Vec<Action>,
    ) {
        if requested != self.target
            || !matches!(self.phase, Phase::Shifting | Phase::RollingBack { .. })
        {
            // The answer to an earlier request that has since been superseded.
            if !matches!(self.phase, Phase::Shifting | Phase::RollingBack { .. }) {
                self.split = realized;
            }
            return;
        }
        self.split = realized;
        self.retry = None;
        let shown = if realized == requested {
            format!("{realized} green in force")
        } else {
            format!("{realized} green in force (asked for {requested}; the router rounds)")
        };
        if let Phase::RollingBack { reason, then } = self.phase.clone() {
            let terminal = match then {
                Ending::RolledBack => Phase::RolledBack { reason },
                Ending::Aborted => Phase::Aborted { reason },
                Ending::Failed => Phase::Failed { reason },
            };
            self.record(now, shown, vec![]);
            self.finish(now, terminal);
            return;
        }
        self.set_phase(now, Phase::Holding);
        self.last_verdict = None;
        if std::mem::take(&mut self.promoted) {
            self.record(now, shown, vec![]);
            return self.advance(now, ResumeTo::Holding, out);
        }
        self.schedule_analysis(now);
        let hold = self.plan.strategy.steps[self.step].hold;
        self.record(now, format!("{shown}; holding for {}", Human(hold)), vec![]);
        if std::mem::take(&mut self.pause_requested) {
            self.pause(now, "paused by operator".into());
        }
    }

    fn on_apply_failed(
        &mut self,
        now: Timestamp,
        requested: Split,
        message: String,
        transient: bool,
        out: &mut Vec<Action>,
    ) {
        if requested != self.target
            || !matches!(self.phase, Phase::Shifting | Phase::RollingBack { .. })
        {
            return;
        }
        let first_failure = self.retry.map_or(now, |r| r.first_failure);
        let attempts = self.retry.map_or(1, |r| r.attempts + 1);
        let deadline = first_failure.after(self.plan.rollback.adapter_deadline);
        let backoff = backoff(attempts);
        if transient && now.after(backoff) <= deadline {
            self.retry = Some(Retry {
                first_failure,
                attempts,
                next_at: Some(now.after(backoff)),
            });
            self.record(
                now,
                format!("router failed to apply {requested} (attempt {attempts}): {message}; retrying in {}", Human(backoff)),
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
        if let Phase::RollingBack { reason, .. } = &self.phase {
            let reason = format!("{reason}; and blue could not be restored: {why} (traffic may still be at {} green)", self.split);
            self.finish(now, Phase::Failed { reason });
            return;
        }
        match self.plan.rollback.on_adapter_failure {
            OnAdapterFailure::Rollback => self.rollback(now, why, Ending::RolledBack, vec![], out),
            OnAdapterFailure::Hold => {
                self.set_phase(
                    now,
                    Phase::Paused {
                        reason: why.clone(),
                        resume_to: ResumeTo::Shifting,
                    },
                );
                self.next_analysis = None;
                self.record(
                    now,
                    format!(
                        "holding at {} green and waiting for an operator: {why}",
                        self.split
                    ),
                    vec![],
                );
            }
        }
    }

    fn on_tick(&mut self, now: Timestamp, out: &mut Vec<Action>) {
        if let Some(retry) = self.retry {
            if retry.next_at.is_some_and(|at| now >= at) {
                self.retry = Some(Retry {
                    next_at: None,
                    ..retry
                });
                out.push(Action::ApplySplit(self.target));
            }
        }
        if let Some(due) = self.next_analysis {
            if now >= due && !self.analysis_in_flight {
                self.analysis_in_flight = true;
                out.push(Action::RunAnalysis);
            }
        }
    }

    fn on_analysis(
        &mut self,
        now: Timestamp,
        observations: Vec<Observation>,
        out: &mut Vec<Action>,
    ) {
        if !self.analysis_in_flight {
            return;
        }
        self.analysis_in_flight = false;
        let Some(resume_to) = self.phase_for_timing() else {
            return;
        };
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
                    return self.rollback(now, reason, Ending::RolledBack, observations, out);
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
                if hold_over && !paused {
                    self.record(now, format!("passed: {summary}"), observations);
                    return self.advance(now, resume_to, out);
                }
                self.record(now, format!("passed: {summary}"), observations);
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
            self.record(
                now,
                format!(
                    "baking at {} green for {}",
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
            self.record(
                now,
                "green held 100 % through the bake; retiring blue".into(),
                vec![],
            );
            out.push(Action::Finalize);
        } else {
            self.finish(now, Phase::Succeeded);
        }
    }

    fn on_finalized(&mut self, now: Timestamp, result: Result<(), String>) {
        if self.phase != Phase::Finalizing {
            return;
        }
        if let Err(e) = result {
            // Traffic is on green and green is healthy: the rollout succeeded,
            // but blue is still running; say so.
            self.record(
                now,
                format!("blue could not be retired, leave it to an operator: {e}"),
                vec![],
            );
        }
        self.finish(now, Phase::Succeeded);
    }

    fn on_command(&mut self, now: Timestamp, command: Command, out: &mut Vec<Action>) {
        let phase = self.phase.clone();
        match (command, &phase) {
            (Command::Abort, p) if !p.is_terminal() && !matches!(p, Phase::RollingBack { .. }) => {
                if matches!(p, Phase::Pending | Phase::Preflight | Phase::Preparing)
                    && self.split == Split::ZERO
                {
                    return self.finish(
                        now,
                        Phase::Aborted {
                            reason: "aborted by operator before traffic moved".into(),
                        },
                    );
                }
                self.rollback(
                    now,
                    "aborted by operator".into(),
                    Ending::Aborted,
                    vec![],
                    out,
                )
            }
            (Command::Promote, Phase::Shifting | Phase::Holding | Phase::Paused { .. }) => {
                self.pause_requested = false;
                let last = self.steps() - 1;
                self.step = last;
                self.failures = 0;
                self.inconclusive_streak = 0;
                self.promoted = true;
                self.shift(
                    now,
                    Split::FULL,
                    "promoted by operator: shifting straight to 100 % green".into(),
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
                        self.shift(
                            now,
                            target,
                            format!("retrying the shift to {target} green"),
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
                self.ended_at = None;
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

    fn pause(&mut self, now: Timestamp, reason: String) {
        let resume_to = match self.phase {
            Phase::Baking => ResumeTo::Baking,
            _ => ResumeTo::Holding,
        };
        self.phase = Phase::Paused {
            reason: reason.clone(),
            resume_to,
        };
        self.record(
            now,
            format!("paused at {} green: {reason}", self.split),
            vec![],
        );
    }

    fn finish(&mut self, now: Timestamp, phase: Phase) {
        let message = match &phase {
            Phase::Succeeded => format!("succeeded: {} green", self.split),
            p => format!("{}: {}", p.name(), p.reason().unwrap_or_default()),
        };
        self.set_phase(now, phase);
        self.next_analysis = None;
        self.analysis_in_flight = false;
        self.retry = None;
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
        self.history.push(Event {
            at: now,
            phase: self.phase.name().to_string(),
            split: self.split,
            message,
            observations,
        });
    }
}

/// The longest wait between two attempts of a failing router call.
pub const MAX_BACKOFF: Duration = Duration::from_secs(10);

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
        .map(|o| format!("{} {}: {}", o.check, o.verdict, o.detail))
        .collect::<Vec<_>>()
        .join("; ")
}
