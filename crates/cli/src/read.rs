//! Commands that read or post to the store: plan, status, history, and the
//! operator commands.

use std::path::Path;

use cutover_core::plan::Timeline;
use cutover_core::time::Human;
use cutover_core::{Command, Rollout};
use cutover_engine::store::RolloutRecord;
use serde_json::json;

use crate::cli::{Output, ReadArgs, TargetArgs};
use crate::progress::{clock_time, date_time};
use crate::settings::{latest, load_plan, resolve_target, Access};
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
    cutover_engine::driver::decode(record).map_err(|e| Exit::Internal(e.to_string()))
}

pub fn status_json(record: &RolloutRecord, r: &Rollout) -> serde_json::Value {
    cutover_server::json::rollout(record, r)
}

pub async fn status(args: ReadArgs) -> Exit {
    let (service, store) = match resolve_target(&args.target, Access::Read).await {
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
    let now = cutover_engine::Clock::system().now();
    let driver = if record.active {
        match store
            .lease(&cutover_engine::driver::lease_name(&record.id))
            .await
        {
            Ok(Some(l)) if l.expires_at > now => Some(l.holder),
            _ => None,
        }
    } else {
        None
    };
    match args.output {
        Output::Json => {
            let mut value = status_json(&record, &rollout);
            value["driver"] = json!(driver);
            outln!("{}", serde_json::to_string_pretty(&value).expect("json"))
        }
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
            let t = rollout.targets();
            outln!("traffic  {}", t.describe(rollout.split));
            outln!(
                "targets  live `{}`, candidate `{}` (router {})",
                t.live,
                t.candidate,
                rollout.plan.router.kind()
            );
            if record.active {
                match &driver {
                    Some(holder) => outln!("driver   {holder}"),
                    None => outln!("driver   none: `cutover run` (or `cutover serve`) resumes it"),
                }
            }
            if let Some(e) = &rollout.last_analysis {
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
    let (service, store) = match resolve_target(&args.target, Access::Read).await {
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
                        "{:<40} {:<12} {:>8} on {:<12} {started}  {}",
                        rec.id,
                        r.phase.name(),
                        r.split.to_string(),
                        format!("`{}`", r.targets().candidate),
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
    if args.output == Output::Text {
        let t = rollout.targets();
        outln!(
            "rollout {} (live `{}`, candidate `{}`; splits are the candidate's share)",
            record.id,
            t.live,
            t.candidate
        );
    }
    // The event log, a page at a time: it can be long.
    let mut after = 0;
    loop {
        let page = match store.events(&record.id, after, 500).await {
            Ok(p) => p,
            Err(e) => return Exit::Internal(e.to_string()),
        };
        let Some(last) = page.last() else { break };
        after = last.seq;
        for stored in &page {
            let e = match cutover_engine::driver::decode_event(stored) {
                Ok(e) => e,
                Err(e) => return Exit::Internal(format!("rollout `{}`: {e}", record.id)),
            };
            match args.output {
                Output::Json => outln!("{}", crate::progress::event_json(&record.id, &e)),
                Output::Text => {
                    outln!(
                        "{}  {:<12} {:>8}  {}",
                        date_time(e.at),
                        e.phase,
                        e.split.to_string(),
                        e.message
                    );
                    for o in &e.observations {
                        outln!("{:>43}{o}", "");
                    }
                }
            }
        }
    }
    // Events a schema-1 snapshot still holds (not moved to the log until
    // a driver writes the rollout again).
    for e in rollout.pending_events() {
        if e.seq > after {
            match args.output {
                Output::Json => outln!("{}", crate::progress::event_json(&record.id, e)),
                Output::Text => outln!(
                    "{}  {:<12} {:>8}  {}",
                    date_time(e.at),
                    e.phase,
                    e.split.to_string(),
                    e.message
                ),
            }
        }
    }
    Exit::Ok
}

pub async fn command(args: TargetArgs, command: Command) -> Exit {
    let (service, store) = match resolve_target(&args, Access::Write).await {
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
    if let Err(why) = command.applies_to(&rollout.phase) {
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
        Err(e) if e.to_string().contains("readonly") => Exit::Internal(format!(
            "cannot post {command}: the store is read-only here ({e}); post it where the store is writable, e.g. on the host that runs the rollout"
        )),
        Err(e) => Exit::Internal(e.to_string()),
    }
}
