//! The schedule a plan walks when every verdict passes, and the longest it
//! can take when they don't.

use std::time::Duration;

use serde::Serialize;

use super::{Judge, Plan};
use crate::Split;

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TimelineStep {
    /// 1-based; the bake is shown as a step of its own after the last one.
    pub number: usize,
    pub split: Split,
    /// Offset from the start of the rollout, assuming every verdict passes
    /// and every shift lands at once.
    #[serde(with = "crate::time::serde_duration")]
    pub starts_at: Duration,
    #[serde(with = "crate::time::serde_duration")]
    pub hold: Duration,
    pub bake: bool,
    /// When analysis runs during the hold.
    pub analysis: String,
    /// Names of the checks that gate leaving this step.
    pub checks: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Timeline {
    pub service: String,
    pub router: String,
    pub preset: String,
    pub steps: Vec<TimelineStep>,
    /// All holds and the bake, when every verdict passes.
    #[serde(with = "crate::time::serde_duration")]
    pub total: Duration,
    /// The longest the rollout can run before it ends one way or the other,
    /// when verdicts are inconclusive or tolerated failures up to the limits
    /// and every router call needs its whole retry deadline. `None` when an
    /// inconclusive streak pauses for an operator.
    #[serde(with = "opt")]
    pub worst_case: Option<Duration>,
}

impl Plan {
    pub fn timeline(&self) -> Timeline {
        let a = &self.analysis;
        let checks: Vec<String> = self
            .analysis
            .checks
            .iter()
            .map(|c| c.name.clone())
            .collect();
        let analysis = |hold: Duration| match a.judge {
            Judge::Continuous => {
                format!("every {} during the hold", crate::time::Human(a.interval))
            }
            Judge::EndOfHold => format!("once, at the end of the {}", crate::time::Human(hold)),
        };
        let mut at = Duration::ZERO;
        let mut steps = Vec::new();
        for (i, step) in self.strategy.steps.iter().enumerate() {
            steps.push(TimelineStep {
                number: i + 1,
                split: step.split,
                starts_at: at,
                hold: step.hold,
                bake: false,
                analysis: analysis(step.hold),
                checks: checks.clone(),
            });
            at += step.hold;
        }
        if !self.strategy.bake.is_zero() {
            steps.push(TimelineStep {
                number: steps.len() + 1,
                split: Split::FULL,
                starts_at: at,
                hold: self.strategy.bake,
                bake: true,
                analysis: analysis(self.strategy.bake),
                checks: checks.clone(),
            });
            at += self.strategy.bake;
        }
        Timeline {
            service: self.service.clone(),
            router: self.router.kind().to_string(),
            preset: self.strategy.preset.clone(),
            steps,
            total: at,
            worst_case: self.worst_case(),
        }
    }

    /// See [`Timeline::worst_case`]. Each hold (and the bake) can run over by
    /// as many analysis intervals as there can be non-passing verdicts before
    /// the rollout must either advance or roll back, plus one for a hold that
    /// is not a multiple of the interval, plus `wait_for_data` with a check
    /// that waits for data; each shift (and the rollback) can take the
    /// router's retry deadline.
    pub fn worst_case(&self) -> Option<Duration> {
        let a = &self.analysis;
        let waits = a.checks.iter().any(|c| c.config.judge_settings().is_some());
        if a.on_inconclusive == super::OnInconclusive::Pause
            || (waits && a.on_wait_expired == super::OnWaitExpired::Pause)
        {
            return None;
        }
        let mut extra = a.interval * (a.failure_limit + a.inconclusive_limit + 2);
        // A check that waits for data holds each step up to `wait_for_data`
        // longer before its verdicts count.
        if waits {
            extra += a.wait_for_data;
        }
        // Every shift and the read of the router's split before the first
        // shift get the adapter deadline; the rollback its own.
        let calls = self.strategy.steps.len() as u32 + 1;
        let mut total = self.rollback.adapter_deadline * calls
            + self.rollback.rollback_deadline
            + crate::machine::MAX_BACKOFF * (calls + 1);
        for step in &self.strategy.steps {
            total += step.hold + extra;
        }
        if !self.strategy.bake.is_zero() {
            total += self.strategy.bake + extra;
        }
        Some(total)
    }
}

mod opt {
    use std::time::Duration;

    use serde::Serializer;

    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.collect_str(&crate::time::Human(*d)),
            None => s.serialize_none(),
        }
    }
}
