//! Commands for the AWS side: init-store, watch, print eventbridge, iam-policy.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use cutover_aws::trigger::{StartOutcome, StartRequest};
use cutover_core::plan::{StoreConfig, TriggerConfig};
use cutover_core::Rollout;
use cutover_engine::{Clock, Engine};

use crate::cli::Output;
use crate::progress::Progress;
use crate::settings::{holder, load_plan, open_store, store_choice};
use crate::Exit;

pub async fn init_store(file: &Path, print: bool) -> Exit {
    let plan = match load_plan(file) {
        Ok(p) => p,
        Err(e) => return e,
    };
    let StoreConfig::Dynamodb { table } = &plan.store else {
        return Exit::Usage(format!(
            "{}: `[store]` is not DynamoDB; the SQLite store needs no set-up",
            file.display()
        ));
    };
    if print {
        outln!(
            "{}",
            cutover_aws::dynamodb::DynamoStore::table_definition(table)
        );
        return Exit::Ok;
    }
    let sdk = cutover_aws::config::load(&plan.aws).await;
    if let Err(e) = cutover_aws::config::require_region(&sdk) {
        return Exit::Usage(e);
    }
    let store = cutover_aws::dynamodb::DynamoStore::new(&sdk, table);
    match store.table_exists().await {
        Ok(true) => {
            outln!("table {table} already exists; nothing to do");
            Exit::Ok
        }
        Ok(false) => match store.create_table().await {
            Ok(()) => {
                outln!("created table {table} (on-demand billing)");
                Exit::Ok
            }
            Err(e) => Exit::Internal(e.to_string()),
        },
        Err(e) => Exit::Internal(e.to_string()),
    }
}

pub fn print_eventbridge(file: &Path) -> Exit {
    let plan = match load_plan(file) {
        Ok(p) => p,
        Err(e) => return e,
    };
    let Some(TriggerConfig::EcsEvents(trigger)) = &plan.trigger else {
        return Exit::Usage(format!(
            "{}: no `[trigger]` to print a rule for",
            file.display()
        ));
    };
    outln!(
        "# EventBridge rule event pattern (target: the SQS queue {}):",
        trigger.queue_url
    );
    outln!("{}", cutover_aws::trigger::eventbridge_rule(trigger));
    outln!("\n# SQS queue policy letting the rule send to the queue:");
    let queue_arn = cutover_aws::trigger::queue_arn_from_url(&trigger.queue_url)
        .unwrap_or_else(|| "arn:aws:sqs:REGION:ACCOUNT:QUEUE".into());
    outln!(
        "{}",
        cutover_aws::trigger::queue_policy(
            &queue_arn,
            "arn:aws:events:REGION:ACCOUNT:rule/RULE_NAME"
        )
    );
    Exit::Ok
}

pub fn iam_policy(file: &Path) -> Exit {
    match load_plan(file) {
        Ok(plan) => {
            let policy = cutover_aws::iam::policy(&plan);
            outln!("{}", serde_json::to_string_pretty(&policy).expect("json"));
            Exit::Ok
        }
        Err(e) => e,
    }
}

/// Long-polls the plan's queue; each (service, revision) that wins its
/// claim in the store starts one rollout. A controller drives the plan's
/// service's active rollouts: the ones started here, and any left by a
/// process that died (once its lease runs out).
pub async fn watch(file: &Path, wait: Duration, driving: &crate::cli::DrivingArgs) -> Exit {
    let plan = match load_plan(file) {
        Ok(p) => p,
        Err(e) => return e,
    };
    if plan.trigger.is_none() {
        return Exit::Usage(format!(
            "{}: `cutover watch` needs a `[trigger]`",
            file.display()
        ));
    }
    let options = match driving.options() {
        Ok(o) => o,
        Err(e) => return e,
    };
    let choice = match store_choice(None, Some(&plan)) {
        Ok(c) => c,
        Err(e) => return e,
    };
    let store = match open_store(&choice).await {
        Ok(s) => s,
        Err(e) => return e,
    };
    let progress = Progress::new(Output::Text, "").labelled();
    let observer = Arc::new(
        move |id: &str, r: &Rollout, events: &[cutover_core::Event]| progress.update(id, r, events),
    );
    let engine = Arc::new(
        Engine::new(store.clone(), Clock::system(), holder(), options).with_observer(observer),
    );
    let controller = Arc::new(
        cutover_engine::Controller::new(
            engine.clone(),
            Arc::new(crate::adapters::PlanAdapters),
            cutover_engine::ControllerOptions::default(),
        )
        .only_services([plan.service.clone()])
        .with_reporter(Arc::new(crate::serve::report_happening)),
    );
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let driving = {
        let (controller, stopped) = (controller.clone(), stopped.clone());
        tokio::spawn(async move { controller.run(stopped).await })
    };
    outln!(
        "watching for ECS task events of `{}` ({choice})",
        plan.service
    );
    let exit = tokio::select! {
        e = follow_trigger(plan, controller.clone(), wait, None) => e,
        _ = crate::signals::terminated() => Exit::Ok,
    };
    // Drivers finish the call in flight, persist and hand their leases over.
    let _ = stop.send(true);
    match driving.await {
        Ok(Ok(())) => exit,
        Ok(Err(e)) => Exit::Internal(e.to_string()),
        Err(e) => Exit::Internal(format!("the controller failed: {e}")),
    }
}

/// Turns the plan's `[trigger]` events into rollouts, for `controller` to
/// drive, until the queue cannot be used at all.
pub async fn follow_trigger(
    plan: cutover_core::Plan,
    controller: Arc<cutover_engine::Controller>,
    wait: Duration,
    metrics: Option<Arc<cutover_server::Metrics>>,
) -> Exit {
    let Some(TriggerConfig::EcsEvents(trigger)) = plan.trigger.clone() else {
        return Exit::Ok;
    };
    let sdk = cutover_aws::config::load(&plan.aws).await;
    if let Err(e) = cutover_aws::config::require_region(&sdk) {
        return Exit::Usage(e);
    }
    let engine = controller.engine().clone();
    let mut watcher = cutover_aws::trigger::Watcher::new(
        &sdk,
        trigger,
        engine.store().clone(),
        engine.holder().to_string(),
    )
    .with_wait(wait);
    tracing::info!(queue = %watcher.trigger().queue_url, service = %plan.service, "following ECS task events");
    // Each matching event's rollout is created here unless it exists; the
    // watcher keeps the message until it does (see cutover_aws::trigger).
    let start = |s: StartRequest| {
        let (engine, plan, controller) = (engine.clone(), plan.clone(), controller.clone());
        async move {
            let outcome = cutover_aws::trigger::start_rollout(&engine, plan.clone(), &s).await;
            if outcome == StartOutcome::Created {
                outln!(
                    "rollout {}: started by task {} running {}",
                    s.rollout_id(&plan.service),
                    s.task_arn,
                    s.task_definition_arn
                );
                controller.wake();
            }
            outcome
        }
    };
    let mut failures = 0u32;
    loop {
        match watcher.poll_once(start).await {
            Ok(report) => {
                failures = 0;
                if let Some(m) = &metrics {
                    m.trigger("received", report.received as u64);
                    m.trigger("claimed", report.started as u64);
                    m.trigger("duplicate", report.duplicates as u64);
                    m.trigger("stale", report.stale as u64);
                    m.trigger("ignored", report.ignored as u64);
                    m.trigger("refused", report.refused.len() as u64);
                    m.trigger("deferred", report.deferred.len() as u64);
                    m.trigger("malformed", report.malformed.len() as u64);
                }
                for m in &report.malformed {
                    eprintln!(
                        "set aside a malformed message {}: {}",
                        m.message_id.as_deref().unwrap_or("(no id)"),
                        m.error
                    );
                }
                for d in &report.deferred {
                    eprintln!("left a message in the queue for later: {d}");
                }
                for r in &report.refused {
                    eprintln!("not starting a rollout: {r}");
                }
                if report.received > 0 {
                    outln!(
                        "received {}: {} started, {} duplicate, {} stale, {} ignored",
                        report.received,
                        report.started,
                        report.duplicates,
                        report.stale,
                        report.ignored
                    );
                }
            }
            Err(e) => {
                // Pace the retries of a queue that keeps failing.
                failures += 1;
                let pause = Duration::from_millis(500u64 << failures.min(6));
                eprintln!(
                    "receiving from the queue failed (retrying in {}): {e}",
                    cutover_core::time::Human(pause)
                );
                tokio::time::sleep(pause).await;
            }
        }
    }
}
