//! `target-health`: every target registered in green's target group is
//! healthy, and at least `min_healthy` are. (The reference read only the
//! first target; we read all.)
//!
//! Judging ([`judge_targets`]), in this order:
//! - any target `unhealthy`, `unused` or `unavailable` (or in a state
//!   we do not know): fail, naming each with its reason and description;
//! - else any target `initial` (registration or first health checks in
//!   progress): inconclusive, it may yet become healthy;
//! - else fewer than `min_healthy` healthy targets: fail;
//! - else pass.
//!
//! `draining` targets are leaving the group (deregistration): they are
//! neither counted as healthy nor held against green, only mentioned.

use async_trait::async_trait;
use aws_sdk_elasticloadbalancingv2::types::{TargetHealthDescription, TargetHealthStateEnum};
use cutover_core::{Observation, Verdict};
use cutover_engine::ports::{AdapterError, Check, CheckContext};

use super::{list_some, sdk_adapter_error, sdk_error_text};

pub struct TargetHealthCheck {
    name: String,
    client: aws_sdk_elasticloadbalancingv2::Client,
    target_group_arn: String,
    min_healthy: u32,
}

impl TargetHealthCheck {
    pub fn new(
        name: String,
        client: aws_sdk_elasticloadbalancingv2::Client,
        target_group_arn: String,
        min_healthy: u32,
    ) -> Self {
        TargetHealthCheck {
            name,
            client,
            target_group_arn,
            min_healthy,
        }
    }
}

/// `ID:PORT` (or `ID` without a port) of a target.
fn target_text(d: &TargetHealthDescription) -> String {
    let t = d.target();
    let id = t.and_then(|t| t.id()).unwrap_or("?");
    match t.and_then(|t| t.port()) {
        Some(port) => format!("{id}:{port}"),
        None => id.to_string(),
    }
}

/// A target's health state, if it has one.
pub(crate) fn state_of(d: &TargetHealthDescription) -> Option<&TargetHealthStateEnum> {
    d.target_health().and_then(|h| h.state())
}

/// ` (REASON: DESCRIPTION)` of a target's health, or nothing without either.
fn why(d: &TargetHealthDescription) -> String {
    let h = d.target_health();
    let reason = h.and_then(|h| h.reason()).map(|r| r.as_str());
    let description = h.and_then(|h| h.description());
    match (reason, description) {
        (Some(r), Some(d)) => format!(" ({r}: {d})"),
        (Some(r), None) => format!(" ({r})"),
        (None, Some(d)) => format!(" ({d})"),
        (None, None) => String::new(),
    }
}

/// `target 10.0.0.5:8080 unhealthy (REASON: DESCRIPTION)`: a target, its
/// state (`without a state` when it has none) and why.
pub(crate) fn target_state_text(d: &TargetHealthDescription) -> String {
    let state = state_of(d).map_or("without a state", |s| s.as_str());
    format!("target {} {state}{}", target_text(d), why(d))
}

/// Judges a target group from its DescribeTargetHealth answer.
pub fn judge_targets(targets: &[TargetHealthDescription], min_healthy: u32) -> (Verdict, String) {
    use TargetHealthStateEnum as S;
    let count = |s: &S| targets.iter().filter(|d| state_of(d) == Some(s)).count();
    let healthy = count(&S::Healthy);
    let draining = count(&S::Draining);
    let initial: Vec<String> = targets
        .iter()
        .filter(|d| state_of(d) == Some(&S::Initial))
        .map(|d| format!("{}{}", target_text(d), why(d)))
        .collect();
    let bad: Vec<String> = targets
        .iter()
        .filter(|d| !matches!(state_of(d), Some(S::Healthy | S::Initial | S::Draining)))
        .map(target_state_text)
        .collect();
    let registered = targets.len() - draining;
    let draining_note = if draining > 0 {
        format!("; {draining} draining (not counted)")
    } else {
        String::new()
    };
    if !bad.is_empty() {
        return (
            Verdict::Fail,
            format!(
                "{} of {registered} target(s) not healthy: {}{draining_note}",
                bad.len(),
                list_some(&bad, 5)
            ),
        );
    }
    if !initial.is_empty() {
        return (
            Verdict::Inconclusive,
            format!(
                "{} of {registered} target(s) still initial (health checks pending): {}; {healthy} healthy{draining_note}",
                initial.len(),
                list_some(&initial, 5)
            ),
        );
    }
    if (healthy as u64) < u64::from(min_healthy) {
        return (
            Verdict::Fail,
            format!(
                "{healthy} healthy target(s), fewer than the {min_healthy} required{draining_note}"
            ),
        );
    }
    (
        Verdict::Pass,
        format!("all {healthy} target(s) healthy (at least {min_healthy} required){draining_note}"),
    )
}

#[async_trait]
impl Check for TargetHealthCheck {
    fn name(&self) -> &str {
        &self.name
    }

    async fn evaluate(&self, _ctx: &CheckContext) -> Observation {
        match self
            .client
            .describe_target_health()
            .target_group_arn(&self.target_group_arn)
            .send()
            .await
        {
            Ok(out) => {
                let (verdict, detail) =
                    judge_targets(out.target_health_descriptions(), self.min_healthy);
                Observation::new(&self.name, verdict, detail)
            }
            Err(e) => Observation::new(
                &self.name,
                Verdict::Error,
                format!(
                    "cannot describe the health of target group {}: {}",
                    self.target_group_arn,
                    sdk_error_text(&e)
                ),
            ),
        }
    }

    /// Refuses a target group that does not exist (or cannot be read).
    async fn preflight(&self) -> Result<(), AdapterError> {
        self.client
            .describe_target_health()
            .target_group_arn(&self.target_group_arn)
            .send()
            .await
            .map(|_| ())
            .map_err(|e| {
                sdk_adapter_error(
                    format_args!(
                        "cannot describe the health of target group {}",
                        self.target_group_arn
                    ),
                    &e,
                )
            })
    }
}
