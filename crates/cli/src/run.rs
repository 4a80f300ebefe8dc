//! `cutover run`, `cutover retry` and `cutover proxy`: the long-running commands.

use std::path::Path;
use std::sync::Arc;

use std::time::Duration;

use cutover_core::plan::Release;
use cutover_core::{Phase, Rollout, Timestamp};
use cutover_engine::{Clock, Engine, EngineError};

use crate::cli::{Output, RunArgs};
use crate::progress::Progress;
use crate::settings::{holder, latest, load_plan, open_store, store_choice};
use crate::start::new_id;
use crate::Exit;

/// The exit a finished rollout maps to.
pub fn exit_for(rollout: &Rollout) -> Exit {
    match &rollout.phase {
        Phase::Succeeded => Exit::Ok,
        Phase::RolledBack { .. } | Phase::Aborted { .. } => Exit::RolledBack,
        Phase::Failed { reason } => Exit::Internal(format!("rollout failed: {reason}")),
        other => Exit::Internal(format!("rollout stopped while {}", other.name())),
    }
}

pub async fn run(args: RunArgs, retry: bool) -> Exit {
    match run_inner(args, retry).await {
        Ok(exit) | Err(exit) => exit,
    }
}

/// The release `--image` / `--task-definition` ask for, if any.
fn release(args: &RunArgs) -> Option<Release> {
    match (&args.image, &args.task_definition) {
        (Some(image), _) => Some(Release::Image(image.clone())),
        (None, Some(arn)) => Some(Release::TaskDefinition(arn.clone())),
        (None, None) => None,
    }
}

async fn run_inner(args: RunArgs, retry: bool) -> Result<Exit, Exit> {
    let mut plan = load_plan(&args.file)?;
    plan.release = release(&args);
    if plan.release.is_some() && plan.platform.is_none() {
        return Err(Exit::Usage(format!(
            "--image and --task-definition need a `[platform]` in {}",
            args.file.display()
        )));
    }
    if args.swap_colours {
        plan = plan.with_colours_swapped();
    }
    let options = args.driving.options()?;
    if args.detach {
        return Ok(detach());
    }
    let choice = store_choice(args.store.as_deref(), Some(&plan))?;
    let store = open_store(&choice).await?;
    let progress = Progress::new(args.output, "");
    let observer = {
        let progress = progress.clone();
        Arc::new(
            move |id: &str, r: &Rollout, events: &[cutover_core::Event]| {
                progress.update(id, r, events)
            },
        )
    };
    let engine =
        Engine::new(store.clone(), Clock::system(), holder(), options).with_observer(observer);
    let say = |m: String| {
        if args.output == Output::Text {
            outln!("{m}");
        }
    };

    let previous = latest(store.as_ref(), &plan.service).await?;
    let id = match (retry, previous) {
        (false, Some(record)) if record.active => {
            if args.adopt || args.swap_colours {
                return Err(Exit::Usage(format!(
                    "service `{}` has an unfinished rollout {}; --adopt and --swap-colours apply only to a new one (abort it first, or run without them to resume it)",
                    plan.service, record.id
                )));
            }
            say(format!(
                "found unfinished rollout {} of `{}` ({choice})",
                record.id, plan.service
            ));
            record.id
        }
        (false, _) => {
            let id = new_id(&plan.service, engine.now());
            let options = crate::start::StartOptions {
                release: plan.release.clone(),
                label: args.label.clone(),
                adopt: args.adopt,
                // Already applied to `plan` above.
                swap_colours: false,
            };
            let started = crate::start::new_rollout(&engine, plan.clone(), &id, &options)
                .await
                .map_err(|e| match e {
                    crate::start::StartError::Refused(m) => Exit::Usage(m),
                    crate::start::StartError::Busy(m) | crate::start::StartError::Failed(m) => {
                        Exit::Internal(m)
                    }
                    crate::start::StartError::Exists => {
                        Exit::Internal(format!("a rollout with id `{id}` already exists"))
                    }
                })?;
            for note in &started.notes {
                say(note.clone());
            }
            plan = started.plan;
            let t = plan.targets();
            say(format!(
                "rollout {id} of `{}`: live `{}` -> candidate `{}` through router {} ({choice})",
                plan.service,
                t.live,
                t.candidate,
                plan.router.kind()
            ));
            id
        }
        (true, Some(record)) => {
            engine.retry(&record.id).await.map_err(|e| match e {
                EngineError::Store(s) => {
                    Exit::Usage(format!("cannot retry rollout {}: {s}", record.id))
                }
                other => Exit::Internal(other.to_string()),
            })?;
            say(format!("retrying rollout {}", record.id));
            record.id
        }
        (true, None) => {
            return Err(Exit::Usage(format!(
                "service `{}` has no rollout to retry",
                plan.service
            )))
        }
    };

    // The rollout's own plan drives it: a resumed rollout keeps the plan
    // (and colours, and release) it started with, whatever the file says now.
    let (_, stored) = engine
        .load(&id)
        .await
        .map_err(|e| Exit::Internal(e.to_string()))?;
    if stored.plan != plan && plan.release.is_none() {
        say("note: the plan file changed since this rollout started; it continues with the plan it started with".into());
    }
    let adapters = crate::adapters::build(&stored.plan).await?;

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let signals = tokio::spawn(async move {
        crate::signals::terminated().await;
        let _ = stop_tx.send(true);
        // Keep the sender until the process ends.
        std::future::pending::<()>().await;
    });
    let ticker = progress.spawn_ticker();
    let result = drive_or_follow(&engine, &id, &adapters, stop_rx, &progress, &say).await;
    signals.abort();
    if let Some(t) = ticker {
        t.abort();
    }
    progress.finish();
    match result {
        Ok(rollout) if rollout.phase.is_terminal() => {
            if args.output == Output::Text {
                outln!("{}", ending(&rollout));
            }
            Ok(exit_for(&rollout))
        }
        Ok(rollout) => {
            eprintln!(
                "interrupted: rollout {id} is left {} with {}; `cutover run` the same plan to resume it, or `cutover abort` it",
                rollout.phase.name(),
                rollout.targets().describe(rollout.split)
            );
            Err(Exit::Internal("interrupted".into()))
        }
        Err(e @ EngineError::StoreUnavailable { .. }) => Err(Exit::StoreFailSafe(e.to_string())),
        Err(e) => Err(Exit::Internal(e.to_string())),
    }
}

/// The last line of a run: how it ended and where traffic is.
pub fn ending(r: &Rollout) -> String {
    let t = r.targets();
    match r.phase.reason() {
        Some(reason) => format!("{}: {reason} ({})", r.phase.name(), t.describe(r.split)),
        None => format!(
            "{}: {}",
            r.phase.name(),
            if r.phase == Phase::Succeeded {
                format!("all traffic on `{}` (the candidate, now live)", t.candidate)
            } else {
                t.describe(r.split)
            }
        ),
    }
}

/// Drives the rollout; while another live process holds it, says so and
/// shows its progress from the store, taking over once that lease is
/// released or runs out.
async fn drive_or_follow(
    engine: &Engine,
    id: &str,
    adapters: &cutover_engine::Adapters,
    stop: tokio::sync::watch::Receiver<bool>,
    progress: &Progress,
    say: &dyn Fn(String),
) -> Result<Rollout, EngineError> {
    // The holder announced, and whether it was seen to stop renewing.
    let mut shown: Option<String> = None;
    let mut stale_said = false;
    let mut seen = 0u64;
    let ttl = engine.options().lease_ttl;
    loop {
        let control = cutover_engine::driver::Control::stoppable(stop.clone());
        match engine.drive_with(id, adapters, control).await {
            Err(EngineError::LeaseHeld {
                holder, expires_at, ..
            }) => {
                let now = engine.now();
                let left = Duration::from_secs(expires_at.since(now).as_secs() + 1);
                if shown.as_deref() != Some(holder.as_str()) {
                    say(format!(
                        "rollout {id} is driven by `{holder}`, not by this process; showing its progress here. This process takes over if that one stops (its lease runs out in {} unless renewed)",
                        cutover_core::time::Human(left)
                    ));
                    if shown.is_none() {
                        let (_, r) = engine.load(id).await?;
                        seen = r.events;
                    }
                    shown = Some(holder.clone());
                    stale_said = false;
                }
                // A live driver renews every third of the lease (assuming
                // it runs with the same TTL); one that missed that is gone.
                let renewed = Timestamp(
                    expires_at
                        .as_millis()
                        .saturating_sub(ttl.as_millis() as u64),
                );
                if !stale_said && now.since(renewed) > ttl / 3 + engine.options().tick * 4 {
                    say(format!(
                        "`{holder}` stopped renewing its lease; taking the rollout over in {}",
                        cutover_core::time::Human(left)
                    ));
                    stale_said = true;
                }
                // Follow the other driver's events.
                let events = engine.store().events(id, seen, 1000).await?;
                if !events.is_empty() {
                    seen = events.last().map_or(seen, |e| e.seq);
                    let (_, r) = engine.load(id).await?;
                    let decoded: Vec<cutover_core::Event> = events
                        .iter()
                        .filter_map(|e| cutover_engine::driver::decode_event(e).ok())
                        .collect();
                    progress.update(id, &r, &decoded);
                    if r.phase.is_terminal() {
                        return Ok(r);
                    }
                }
                if *stop.borrow() {
                    let (_, r) = engine.load(id).await?;
                    return Ok(r);
                }
                tokio::time::sleep(engine.options().tick).await;
            }
            other => return other,
        }
    }
}

/// Starts this same command again without `--detach`, in the background,
/// with its output going to a log file.
fn detach() -> Exit {
    let exe = match std::env::current_exe() {
        Ok(e) => e,
        Err(e) => return Exit::Internal(format!("cannot find the cutover binary to detach: {e}")),
    };
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--detach")
        .collect();
    let log_dir = cutover_engine::store::SqliteStore::default_path()
        .and_then(|p| p.parent().map(Path::to_path_buf))
        .unwrap_or_else(std::env::temp_dir);
    if let Err(e) = std::fs::create_dir_all(&log_dir) {
        return Exit::Internal(format!("cannot create {}: {e}", log_dir.display()));
    }
    let log = log_dir.join(format!("run-{}.log", std::process::id()));
    let file = match std::fs::File::create(&log) {
        Ok(f) => f,
        Err(e) => return Exit::Internal(format!("cannot create log file {}: {e}", log.display())),
    };
    let err = match file.try_clone() {
        Ok(f) => f,
        Err(e) => return Exit::Internal(format!("cannot open log file {}: {e}", log.display())),
    };
    let mut command = std::process::Command::new(exe);
    command
        .args(&args)
        .stdin(std::process::Stdio::null())
        .stdout(file)
        .stderr(err);
    #[cfg(unix)]
    {
        use std::os::unix::process::CommandExt;
        command.process_group(0);
    }
    match command.spawn() {
        Ok(child) => {
            outln!(
                "running in the background as pid {}; log: {}",
                child.id(),
                log.display()
            );
            outln!("follow it with `cutover status <plan>`; stop it with `cutover abort <plan>`");
            Exit::Ok
        }
        Err(e) => Exit::Internal(format!("cannot start the background process: {e}")),
    }
}

pub async fn proxy(config: &Path) -> Exit {
    let mut config = match cutover_local::ProxyConfig::from_file(config) {
        Ok(c) => c,
        Err(e) => return Exit::Usage(e.to_string()),
    };
    // A standalone proxy gets data-plane threads of its own, one per core,
    // unless the file says otherwise (see docs/benchmarks.md for why).
    if config.workers.is_none() {
        config.workers = Some(std::thread::available_parallelism().map_or(1, |n| n.get()));
    }
    let handle = match cutover_local::start(config).await {
        Ok(h) => h,
        Err(e) => return Exit::Internal(e.to_string()),
    };
    let services = &handle.config().services;
    let fronts = match services.as_slice() {
        [_] => String::new(),
        many => {
            let names: Vec<&str> = many.iter().take(5).map(|s| s.name.as_str()).collect();
            let more = many.len().saturating_sub(names.len());
            let more = if more > 0 {
                format!(" and {more} more")
            } else {
                String::new()
            };
            format!(
                "; {} services ({}{more}), each under /services/NAME/",
                many.len(),
                names.join(", ")
            )
        }
    };
    outln!(
        "proxy listening on http://{}; admin API on http://{}{fronts}",
        handle.data_addr(),
        handle.admin_addr()
    );
    crate::signals::terminated().await;
    outln!("shutting down: no new connections; requests in flight may finish");
    handle.shutdown().await;
    Exit::Ok
}
