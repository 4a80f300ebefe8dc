//! The JSON shapes of rollouts and events, shared by the API and the CLI's
//! `--output json`, so both say the same thing the same way.

use cutover_core::{Event, Rollout};
use cutover_engine::store::RolloutRecord;
use serde_json::{json, Value};

/// A rollout as `cutover status --output json` and `GET /v1/rollouts/{id}`
/// show it: where it is, where traffic is, by the targets' names.
pub fn rollout(record: &RolloutRecord, r: &Rollout) -> Value {
    let t = r.targets();
    json!({
        "id": record.id,
        "service": record.service,
        "active": record.active,
        "version": record.version,
        "phase": r.phase.name(),
        "reason": r.phase.reason(),
        "step": r.step + 1,
        "steps": r.plan.strategy.steps.len(),
        "router": r.plan.router.kind(),
        "targets": {"live": t.live, "candidate": t.candidate},
        "split_percent": r.split.percent(),
        "target_percent": r.target.percent(),
        "traffic": t.describe(r.split),
        "label": r.plan.label,
        "release": r.plan.release,
        "last_verdict": r.last_verdict.map(|(at, v)| json!({"at": at.as_millis(), "verdict": v})),
        "last_analysis": r.last_analysis,
        "events": r.events,
        "hold_ends_at": r.hold_ends_at().map(|t| t.as_millis()),
        "started_at": r.started_at.map(|t| t.as_millis()),
        "ended_at": r.ended_at.map(|t| t.as_millis()),
        "created_at": record.created_at.as_millis(),
        "updated_at": record.updated_at.as_millis(),
        "written_by": record.written_by,
    })
}

/// One event with its rollout's id.
pub fn event(id: &str, e: &Event) -> Value {
    let mut value = serde_json::to_value(e).unwrap_or_default();
    if let Some(object) = value.as_object_mut() {
        object.insert("rollout".into(), id.into());
        object.insert("split_percent".into(), e.split.percent().into());
    }
    value
}
