//! Commands that read or post to the store: plan, status, history, and the
//! operator commands.

use std::path::Path;

use cutover_core::plan::Timeline;
use cutover_core::time::Human;
use cutover_core::{Command, Phase, Rollout};
use cutover_engine::store::RolloutRecord;
use serde_json::json;

use crate::cli::{Output, ReadArgs, TargetArgs};
use crate::progress::{clock_time, date_time};
use crate::settings::{latest, load_plan, resolve_target};
use crate::Exit;

pub fn plan(file: &Path, output: Output) -> Exit {
    let plan = match load_plan(file) {
        Ok(p) => p,
        Err(e) => return e,
    };
    let timeline = plan.timeline();
    match output {
        Output::Json => outln!(
            "{}",
            serde_json::to_string_pretty(&timeline).expect("serialisable")
        ),
        Output::Text => out!("{}", render_timeline(&timeline)),
    }
    Exit::Ok
}

pub fn render_timeline(t: &Timeline) -> String {
    let mut out = format!(
        "service {} · router {} · strategy {}\n",
        t.service, t.router, t.preset
    );
    out += &format!(
        "  {:<5} {:>8} {:>9} {:>9}  {:<34} {}\n",
        "step", "split", "starts", "hold", "analysis", "gated by"
    );
    for s in &t.steps {
        let number = if s.bake {
            "bake".to_string()
        } else {
            s.number.to_string()
        };
        let checks = if s.checks.is_empty() {
            "(no checks: holds only)".to_string()
        } else {
            s.checks.join(", ")
        };
        out += &format!(
            "  {:<5} {:>8} {:>9} {:>9}  {:<34} {}\n",
            number,
            s.split.to_string(),
            Human(s.starts_at).to_string(),
            Human(s.hold).to_string(),
            s.analysis,
            checks
        );
    }
    out += &format!("total {} when every verdict passes", Human(t.total));
    match t.worst_case {
        Some(w) => {
            out += &format!(
                "; at most {} with inconclusive verdicts and router retries\n",
                Human(w)
            )
        }
        None => {
            out += "; an inconclusive streak pauses for an operator, so there is no upper bound\n"
        }
    }
    out
}

fn decode(record: &RolloutRecord) -> Result<Rollout, Exit> {
    serde_json::from_str(&record.state).map_err(|e| {
        Exit::Internal(format!(
            "rollout `{}` has a snapshot this version cannot read: {e}",
            record.id
        ))
    })
}

pub fn status_json(record: &RolloutRecord, r: &Rollout) -> serde_json::Value {
    json!({
        "id": record.id,
        "service": record.service,
        "active": record.active,
        "version": record.version,
        "phase": r.phase.name(),
        "reason": r.phase.reason(),
        "step": r.step + 1,
        "steps": r.plan.strategy.steps.len(),
        "split_percent": r.split.percent(),
        "target_percent": r.target.percent(),
        "last_verdict": r.last_verdict.map(|(at, v)| json!({"at": at.as_millis(), "verdict": v})),
        "started_at": r.started_at.map(|t| t.as_millis()),
        "ended_at": r.ended_at.map(|t| t.as_millis()),
        "updated_at": record.updated_at.as_millis(),
    })
}

pub async fn status(args: ReadArgs) -> Exit {
    let (service, store) = match resolve_target(&args.target).await {
        Ok(x) => x,
        Err(e) => return e,
    };
    let record = match latest(store.as_ref(), &service).await {
        Ok(Some(r)) => r,
        Ok(None) => {
            return Exit::Usage(format!("service `{service}` has no rollouts in this store"))
        }
        Err(e) => return e,
    };
    let rollout = match decode(&record) {
        Ok(r) => r,
        Err(e) => return e,
    };
    match args.output {
        Output::Json => outln!(
            "{}",
            serde_json::to_string_pretty(&status_json(&record, &rollout)).expect("json")
        ),
        Output::Text => {
            let state = if record.active { "active" } else { "ended" };
            outln!("rollout  {} ({state})", record.id);
            let steps = rollout.plan.strategy.steps.len();
            match rollout.phase.reason() {
                Some(reason) => outln!("phase    {}: {reason}", rollout.phase.name()),
                None => outln!(
                    "phase    {} (step {} of {steps})",
                    rollout.phase.name(),
                    rollout.step + 1
                ),
            }
            outln!("split    {} green", rollout.split);
            if let Some(e) = rollout
                .history
                .iter()
                .rev()
                .find(|e| !e.observations.is_empty())
            {
                outln!("verdict  {}  {}", clock_time(e.at), e.message);
            }
            if let Some(at) = rollout.started_at {
                outln!("started  {}", date_time(at));
            }
            if let Some(at) = rollout.ended_at {
                outln!("ended    {}", date_time(at));
            }
        }
    }
    Exit::Ok
}

pub async fn history(args: ReadArgs, all: bool, limit: usize) -> Exit {
    let (service, store) = match resolve_target(&args.target).await {
        Ok(x) => x,
        Err(e) => return e,
    };
    if all {
        let records = match store.list_for_service(&service, limit).await {
            Ok(r) => r,
            Err(e) => return Exit::Internal(e.to_string()),
        };
        let mut rows = Vec::new();
        for record in &records {
            match decode(record) {
                Ok(r) => rows.push((record, r)),
                Err(e) => return e,
            }
        }
        match args.output {
            Output::Json => {
                let list: Vec<_> = rows.iter().map(|(rec, r)| status_json(rec, r)).collect();
                outln!("{}", serde_json::to_string_pretty(&list).expect("json"));
            }
            Output::Text => {
                for (rec, r) in rows {
                    let started = r.started_at.map(date_time).unwrap_or_else(|| "-".into());
                    outln!(
                        "{:<40} {:<12} {:>8}  {started}  {}",
                        rec.id,
                        r.phase.name(),
                        r.split.to_string(),
                        r.phase.reason().unwrap_or("")
                    );
                }
            }
        }
        return Exit::Ok;
    }
    let record = match latest(store.as_ref(), &service).await {
        Ok(Some(r)) => r,
        Ok(None) => {
            return Exit::Usage(format!("service `{service}` has no rollouts in this store"))
        }
        Err(e) => return e,
    };
    let rollout = match decode(&record) {
        Ok(r) => r,
        Err(e) => return e,
    };
    match args.output {
        Output::Json => outln!(
            "{}",
            serde_json::to_string_pretty(&json!({"id": record.id, "history": rollout.history}))
                .expect("json")
        ),
        Output::Text => {
            outln!("rollout {}", record.id);
            for e in &rollout.history {
                outln!(
                    "{}  {:<12} {:>8}  {}",
                    date_time(e.at),
                    e.phase,
                    e.split.to_string(),
                    e.message
                );
                for o in &e.observations {
                    outln!("{:>43}{}: {} ({})", "", o.check, o.verdict, o.detail);
                }
            }
        }
    }
    Exit::Ok
}

/// Whether `command` can do anything in `phase`; the reason if not.
fn applicable(command: Command, phase: &Phase) -> Result<(), String> {
    let ok = match command {
        Command::Abort => !phase.is_terminal() && !matches!(phase, Phase::RollingBack { .. }),
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
        Err(format!(
            "cannot {command} a rollout that is {}",
            phase.name()
        ))
    }
}

pub async fn command(args: TargetArgs, command: Command) -> Exit {
    let (service, store) = match resolve_target(&args).await {
        Ok(x) => x,
        Err(e) => return e,
    };
    let record = match latest(store.as_ref(), &service).await {
        Ok(Some(r)) if r.active => r,
        Ok(_) => {
            return Exit::Usage(format!(
                "service `{service}` has no active rollout to {command}"
            ))
        }
        Err(e) => return e,
    };
    let rollout = match decode(&record) {
        Ok(r) => r,
        Err(e) => return e,
    };
    if let Err(why) = applicable(command, &rollout.phase) {
        return Exit::Usage(why);
    }
    let now = cutover_engine::Clock::system().now();
    match store.post_command(&record.id, command, now).await {
        Ok(seq) => {
            outln!(
                "{command} posted to rollout {} (#{seq}); the driver applies it at its next tick",
                record.id
            );
            Exit::Ok
        }
        Err(e) => Exit::Internal(e.to_string()),
    }
}
