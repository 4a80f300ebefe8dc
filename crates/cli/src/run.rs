//! `cutover run`, `cutover retry` and `cutover proxy`: the long-running commands.

use std::path::Path;
use std::sync::Arc;

use cutover_core::plan::Release;
use cutover_core::{Phase, Rollout};
use cutover_engine::{Clock, Engine, EngineError, Options};

use crate::cli::{Output, RunArgs};
use crate::progress::Progress;
use crate::settings::{holder, latest, load_plan, open_store, store_choice};
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
    if args.detach {
        return Ok(detach());
    }
    let choice = store_choice(args.store.as_deref(), Some(&plan))?;
    let store = open_store(&choice).await?;
    let progress = Progress::new(args.output, "");
    let observer = {
        let progress = progress.clone();
        Arc::new(move |r: &Rollout| progress.update(r))
    };
    let options = Options {
        tick: args.tick,
        lease_ttl: args.lease_ttl,
        ..Options::default()
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
            say(format!(
                "resuming unfinished rollout {} of `{}` ({choice})",
                record.id, plan.service
            ));
            record.id
        }
        (false, _) => {
            if plan.release.is_some() && crate::adapters::green_is_live(&plan).await? {
                say(
                    "green is live: this rollout deploys to blue's side and moves traffic there"
                        .into(),
                );
                plan = plan.with_colours_swapped();
            }
            let id = new_id(&plan.service, engine.now());
            engine
                .create(&id, plan.clone(), plan.release.is_some())
                .await
                .map_err(|e| Exit::Internal(e.to_string()))?;
            say(format!(
                "rollout {id} of `{}` through router {} ({choice})",
                plan.service,
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

    let ticker = progress.spawn_ticker();
    let result = tokio::select! {
        r = engine.drive_when_free(&id, &adapters) => Some(r),
        _ = tokio::signal::ctrl_c() => None,
    };
    if let Some(t) = ticker {
        t.abort();
    }
    progress.finish();
    match result {
        Some(Ok(rollout)) => {
            if args.output == Output::Text {
                outln!(
                    "{}: {}",
                    rollout.phase.name(),
                    rollout.phase.reason().unwrap_or("all traffic on green")
                );
            }
            Ok(exit_for(&rollout))
        }
        Some(Err(e)) => Err(Exit::Internal(e.to_string())),
        None => {
            let _ = store
                .release_lease(&format!("rollout:{id}"), &holder())
                .await;
            eprintln!("interrupted: rollout {id} is left as it is; `cutover run` the same plan to resume it, or `cutover abort` it");
            Err(Exit::Internal("interrupted".into()))
        }
    }
}

/// `{service}-{YYYYMMDD}T{HHMMSS}-{pid}`: readable and unique enough, since
/// the store refuses a duplicate id anyway.
fn new_id(service: &str, now: cutover_core::Timestamp) -> String {
    let stamp = crate::progress::date_time(now)
        .replace(['-', ':'], "")
        .replace(' ', "T");
    format!("{service}-{stamp}-{:x}", std::process::id())
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
    outln!(
        "proxy listening on http://{}; admin API on http://{}",
        handle.data_addr(),
        handle.admin_addr()
    );
    let _ = tokio::signal::ctrl_c().await;
    outln!("shutting down");
    handle.shutdown().await;
    Exit::Ok
}
