//! ECS task events through SQS: what `cutover watch` listens to.
//!
//! An EventBridge rule ([`eventbridge_rule`]) sends "ECS Task State Change"
//! events to an SQS queue (allowed by [`queue_policy`]); a [`Watcher`]
//! long-polls the queue, parses each event ([`parse_event`]), keeps the
//! ones the plan's trigger asks for ([`matches`]) and turns each new
//! (service, task definition revision) into exactly one rollout.
//!
//! What the reference got wrong, and what this does instead:
//! - It read a `Triggered` flag and then wrote it, unconditionally: two
//!   deliveries of one event could both start a rollout. Here two
//!   conditional writes decide. [`Store::claim_trigger`] on the key
//!   `ecs:{service}:{taskDefinitionArn}` records who saw the revision
//!   first. The rollout itself has an id made of the same two parts
//!   ([`StartRequest::rollout_id`]), and the store creates an id only once:
//!   across watchers, processes and hosts sharing the store, one revision
//!   becomes one rollout, whoever creates it.
//! - It tested container names with a substring test on a string; here
//!   a container matches only if its name is in the list.
//!
//! Logging: what happened to each message is in the [`PollReport`] that
//! [`Watcher::poll_once`] returns, for the caller to show; the watcher logs
//! it at debug level only, so it is not said twice.
//!
//! Ordering: SQS standard queues deliver at least once and in no particular
//! order. Each watcher keeps, per task ARN, the highest `detail.version` it
//! has handled, and ignores an event whose version is not higher (an older
//! or repeated state of a task it already knows). That mark is local to one
//! watcher: across watchers, duplicates are stopped by the store claim, not
//! by the mark.
//!
//! Messages are deleted only once handled: the revision's rollout exists
//! (created now, or before), the start was refused for good, or the event
//! is deliberately ignored (not matching, stale). So nothing is lost to a
//! watcher that dies: until the rollout exists, the message stays in the
//! queue and comes back to some watcher, which finds the claim taken, the
//! rollout missing, and creates it. A revision that cannot start yet (its
//! service has another active rollout, or the store is unreachable) is
//! also left in the queue, made visible again after
//! [`Watcher::with_retry_after`]; it starts on the first try after the
//! active rollout ended. Waiting revisions come back in no particular
//! order, so one older than a revision the service already has a rollout
//! of is refused as superseded ([`start_rollout`]). (With a redrive policy on the queue, allow as
//! many receives as the longest wait for a rollout to end takes retries.)
//!
//! A malformed message (not JSON, not an ECS task event, a field missing)
//! can never become valid: it is logged with its error, listed in the
//! [`PollReport`], and deleted, so it neither crashes the watcher nor comes
//! back forever (a queue without a redrive policy would otherwise loop on
//! it).

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_sdk_sqs::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use cutover_core::plan::EcsEventsTrigger;
use cutover_core::{Plan, Timestamp};
use cutover_engine::ports::AdapterError;
use cutover_engine::store::{Store, StoreError};
use cutover_engine::{Engine, EngineError};
use serde_json::{json, Value};

/// The `source` of ECS events.
pub const SOURCE: &str = "aws.ecs";
/// The `detail-type` of a task state change.
pub const DETAIL_TYPE: &str = "ECS Task State Change";

/// The parts of an "ECS Task State Change" event that cutover reads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TaskEvent {
    /// The envelope's `id`, if any (for logs).
    pub id: Option<String>,
    pub source: String,
    pub detail_type: String,
    /// The envelope's `time`.
    pub time: Timestamp,
    pub cluster_arn: String,
    /// `detail.group` as sent: `service:NAME` for a service's tasks,
    /// `family:NAME` for standalone ones.
    pub group: String,
    pub task_arn: String,
    pub task_definition_arn: String,
    pub last_status: String,
    pub desired_status: String,
    pub containers: Vec<String>,
    /// `detail.version`: increases with every change of this task.
    pub version: u64,
}

impl TaskEvent {
    /// The service name from `group = "service:NAME"`; `None` for a
    /// standalone task.
    pub fn service(&self) -> Option<&str> {
        self.group.strip_prefix("service:")
    }

    /// The key claimed in the store: one per (service, revision).
    pub fn claim_key(&self) -> Option<String> {
        self.service()
            .map(|service| claim_key(service, &self.task_definition_arn))
    }
}

/// The trigger key of a (service, task definition revision).
pub fn claim_key(service: &str, task_definition_arn: &str) -> String {
    format!("ecs:{service}:{task_definition_arn}")
}

/// Why a message is not a usable task event.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EventError {
    #[error("not JSON: {0}")]
    NotJson(String),
    #[error("{0} missing")]
    Missing(&'static str),
    #[error("{field}: {message}")]
    Invalid {
        field: &'static str,
        message: String,
    },
}

/// Parses an EventBridge "ECS Task State Change" envelope, as EventBridge
/// puts it in an SQS message body.
pub fn parse_event(body: &str) -> Result<TaskEvent, EventError> {
    let v: Value = serde_json::from_str(body).map_err(|e| EventError::NotJson(e.to_string()))?;
    if !v.is_object() {
        return Err(EventError::Invalid {
            field: "event",
            message: "expected a JSON object".into(),
        });
    }
    let detail = match v.get("detail") {
        None | Some(Value::Null) => return Err(EventError::Missing("detail")),
        Some(d) if d.is_object() => d,
        Some(_) => {
            return Err(EventError::Invalid {
                field: "detail",
                message: "expected an object".into(),
            })
        }
    };
    let time_text = string(&v, "time", "time")?;
    let time = parse_time(&time_text)?;
    let containers = match detail.get("containers") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(items)) => items
            .iter()
            .map(|c| match c.get("name") {
                Some(Value::String(name)) => Ok(name.clone()),
                Some(_) => Err(EventError::Invalid {
                    field: "detail.containers[].name",
                    message: "expected a string".into(),
                }),
                None => Err(EventError::Missing("detail.containers[].name")),
            })
            .collect::<Result<_, _>>()?,
        Some(_) => {
            return Err(EventError::Invalid {
                field: "detail.containers",
                message: "expected an array".into(),
            })
        }
    };
    let version = match detail.get("version") {
        None | Some(Value::Null) => return Err(EventError::Missing("detail.version")),
        Some(n) => n.as_u64().ok_or_else(|| EventError::Invalid {
            field: "detail.version",
            message: format!("expected a non-negative integer, got {n}"),
        })?,
    };
    Ok(TaskEvent {
        id: v.get("id").and_then(Value::as_str).map(str::to_owned),
        source: string(&v, "source", "source")?,
        detail_type: string(&v, "detail-type", "detail-type")?,
        time,
        cluster_arn: string(detail, "clusterArn", "detail.clusterArn")?,
        group: string(detail, "group", "detail.group")?,
        task_arn: string(detail, "taskArn", "detail.taskArn")?,
        task_definition_arn: string(detail, "taskDefinitionArn", "detail.taskDefinitionArn")?,
        last_status: string(detail, "lastStatus", "detail.lastStatus")?,
        desired_status: string(detail, "desiredStatus", "detail.desiredStatus")?,
        containers,
        version,
    })
}

fn string(v: &Value, key: &str, field: &'static str) -> Result<String, EventError> {
    match v.get(key) {
        None | Some(Value::Null) => Err(EventError::Missing(field)),
        Some(Value::String(s)) if s.is_empty() => Err(EventError::Invalid {
            field,
            message: "empty".into(),
        }),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(other) => Err(EventError::Invalid {
            field,
            message: format!("expected a string, got {other}"),
        }),
    }
}

fn parse_time(text: &str) -> Result<Timestamp, EventError> {
    use aws_smithy_types::date_time::{DateTime, Format};
    let invalid = |message: String| EventError::Invalid {
        field: "time",
        message,
    };
    let t = DateTime::from_str(text, Format::DateTime)
        .map_err(|e| invalid(format!("`{text}` is not an RFC 3339 time: {e}")))?;
    let ms = t
        .to_millis()
        .map_err(|e| invalid(format!("`{text}`: {e}")))?;
    u64::try_from(ms)
        .map(Timestamp::from_millis)
        .map_err(|_| invalid(format!("`{text}` is before 1970")))
}

/// Why an event does not start a rollout.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Mismatch {
    Source(String),
    DetailType(String),
    NotRunning {
        last_status: String,
        desired_status: String,
    },
    Cluster(String),
    /// A standalone task (`group` is not `service:NAME`).
    NotAService(String),
    Service(String),
    Containers(Vec<String>),
}

impl fmt::Display for Mismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Mismatch::Source(s) => write!(f, "source `{s}` is not `{SOURCE}`"),
            Mismatch::DetailType(t) => write!(f, "detail-type `{t}` is not `{DETAIL_TYPE}`"),
            Mismatch::NotRunning {
                last_status,
                desired_status,
            } => write!(
                f,
                "task is {last_status} (desired {desired_status}), not RUNNING (desired RUNNING)"
            ),
            Mismatch::Cluster(c) => write!(f, "cluster `{c}` is not the trigger's"),
            Mismatch::NotAService(g) => write!(f, "group `{g}` is not a service's task"),
            Mismatch::Service(s) => write!(f, "service `{s}` is not one of the trigger's"),
            Mismatch::Containers(names) => {
                write!(f, "no container of the trigger's among {names:?}")
            }
        }
    }
}

/// `None` if the event starts a rollout under `trigger`; else why not.
pub fn matches(event: &TaskEvent, trigger: &EcsEventsTrigger) -> Option<Mismatch> {
    if event.source != SOURCE {
        return Some(Mismatch::Source(event.source.clone()));
    }
    if event.detail_type != DETAIL_TYPE {
        return Some(Mismatch::DetailType(event.detail_type.clone()));
    }
    if event.last_status != "RUNNING" || event.desired_status != "RUNNING" {
        return Some(Mismatch::NotRunning {
            last_status: event.last_status.clone(),
            desired_status: event.desired_status.clone(),
        });
    }
    if let Some(cluster) = &trigger.cluster {
        if !cluster_matches(&event.cluster_arn, cluster) {
            return Some(Mismatch::Cluster(event.cluster_arn.clone()));
        }
    }
    let Some(service) = event.service() else {
        return Some(Mismatch::NotAService(event.group.clone()));
    };
    if !trigger.services.iter().any(|s| s == service) {
        return Some(Mismatch::Service(service.to_owned()));
    }
    if !trigger.containers.is_empty()
        && !event
            .containers
            .iter()
            .any(|name| trigger.containers.contains(name))
    {
        return Some(Mismatch::Containers(event.containers.clone()));
    }
    None
}

/// `wanted` is a cluster ARN or name; an ARN ends in `:cluster/NAME`.
fn cluster_matches(cluster_arn: &str, wanted: &str) -> bool {
    if wanted.starts_with("arn:") {
        return cluster_arn == wanted;
    }
    cluster_arn == wanted
        || cluster_arn
            .rsplit_once(":cluster/")
            .is_some_and(|(_, name)| name == wanted)
}

/// What a watcher asks its caller to do: start a rollout of `service` to
/// this task definition, unless it exists.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StartRequest {
    pub service: String,
    pub task_definition_arn: String,
    /// The event's time.
    pub event_time: Timestamp,
    pub cluster_arn: String,
    pub task_arn: String,
    /// The revision's key in the store's trigger claims.
    pub claim_key: String,
    /// Whether this watcher's claim of the key won (it saw the revision
    /// first). A request with a lost claim is a redelivery or a duplicate:
    /// the rollout most likely exists already.
    pub claim_won: bool,
}

impl StartRequest {
    /// The id of the rollout of this revision under the plan's service
    /// (`[service] name`, not the ECS service's): the service and the task
    /// definition's `family-revision`, so one revision always maps to one id.
    pub fn rollout_id(&self, service: &str) -> String {
        let arn = &self.task_definition_arn;
        let revision = arn
            .rsplit_once(":task-definition/")
            .map_or(arn.as_str(), |(_, r)| r);
        format!("{service}-{}", revision.replace(':', "-"))
    }

    /// The task definition's family and revision number (`family:N`).
    pub fn revision(&self) -> Option<(&str, u32)> {
        let arn = &self.task_definition_arn;
        let tail = arn
            .rsplit_once(":task-definition/")
            .map_or(arn.as_str(), |(_, r)| r);
        let (family, n) = tail.rsplit_once(':')?;
        Some((family, n.parse().ok()?))
    }
}

/// The newest revision of the request's task definition family among the
/// plan service `service`'s rollouts (ids as [`StartRequest::rollout_id`]
/// makes them), when it is newer than the request's: the request is then
/// superseded.
pub fn superseded_by<'a>(
    request: &StartRequest,
    service: &str,
    rollout_ids: impl IntoIterator<Item = &'a str>,
) -> Option<u32> {
    let (family, revision) = request.revision()?;
    let prefix = format!("{service}-{family}-");
    rollout_ids
        .into_iter()
        .filter_map(|id| id.strip_prefix(&prefix)?.parse::<u32>().ok())
        .filter(|&n| n > revision)
        .max()
}

/// How many of a service's latest rollouts [`start_rollout`] looks at.
const RECENT_ROLLOUTS: usize = 100;

/// What `cutover watch` does with a [`StartRequest`]: creates the
/// revision's rollout with `plan` (not driving it), unless
/// - it exists: [`StartOutcome::Exists`];
/// - the service has a rollout of a newer revision of the same task
///   definition family: [`StartOutcome::Refused`]. Two revisions waiting
///   for a busy service may be retried in any order, and an older one must
///   not follow a newer one (it would deploy the older version last);
/// - the service has another active rollout, or the store failed:
///   [`StartOutcome::Later`].
///
/// Anything else the engine refuses (the plan) is [`StartOutcome::Refused`].
pub async fn start_rollout(engine: &Engine, plan: Plan, request: &StartRequest) -> StartOutcome {
    let plan = oriented(plan, &request.service);
    let id = request.rollout_id(&plan.service);
    let recent = match engine
        .store()
        .list_for_service(&plan.service, RECENT_ROLLOUTS)
        .await
    {
        Ok(records) => records,
        Err(e) => return StartOutcome::Later(format!("listing the service's rollouts: {e}")),
    };
    if recent.iter().any(|r| r.id == id) {
        return StartOutcome::Exists;
    }
    if let Some(newer) = superseded_by(request, &plan.service, recent.iter().map(|r| r.id.as_str()))
    {
        return StartOutcome::Refused(format!(
            "`{}` is superseded: the service has a rollout of revision {newer}",
            request.task_definition_arn
        ));
    }
    match engine.create(&id, plan, false).await {
        Ok(_) => StartOutcome::Created,
        Err(EngineError::Store(StoreError::DuplicateId(_))) => StartOutcome::Exists,
        Err(EngineError::Store(StoreError::ActiveExists { id: active, .. })) => {
            StartOutcome::Later(format!("the service has an active rollout `{active}`"))
        }
        Err(e @ EngineError::Store(_)) => StartOutcome::Later(e.to_string()),
        Err(e) => StartOutcome::Refused(e.to_string()),
    }
}

/// The plan as a rollout to the ECS service whose task started: with an
/// ECS `[platform]`, a new revision on its blue service makes blue the
/// candidate this time (the colours swapped), so listing both services in
/// the trigger deploys to whichever is idle.
pub fn oriented(plan: Plan, ecs_service: &str) -> Plan {
    match &plan.platform {
        Some(cutover_core::plan::PlatformConfig::Ecs(p)) if p.blue_service == ecs_service => {
            plan.with_colours_swapped()
        }
        _ => plan,
    }
}

/// What the caller did with a [`StartRequest`]; decides the message's fate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StartOutcome {
    /// The rollout was created now. The message is deleted.
    Created,
    /// The rollout exists already (created by another delivery, or
    /// earlier). The message is deleted.
    Exists,
    /// Not now (the service has another active rollout; the store failed):
    /// the message stays and comes back after the retry delay.
    Later(String),
    /// Never (e.g. the plan cannot run): the message is deleted and the
    /// reason reported.
    Refused(String),
}

/// A message set aside because it is not a usable event (and deleted).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Malformed {
    pub message_id: Option<String>,
    pub error: String,
}

/// What one [`Watcher::poll_once`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PollReport {
    /// Messages received.
    pub received: usize,
    /// Rollouts created.
    pub started: usize,
    /// Matching events whose rollout existed already.
    pub duplicates: usize,
    /// Starts refused for good (message deleted), with why.
    pub refused: Vec<String>,
    /// Events older than (or as old as) the last seen for their task.
    pub stale: usize,
    /// Well-formed events the trigger does not ask for.
    pub ignored: usize,
    /// Bodies that are not usable events; deleted after being recorded.
    pub malformed: Vec<Malformed>,
    /// Messages left in the queue to come back later (claim failed, or the
    /// start must wait), with why.
    pub deferred: Vec<String>,
    /// Handled messages whose deletion failed; they will come back and be
    /// found stale or already claimed.
    pub delete_failures: Vec<String>,
}

/// Default long-poll wait (SQS allows 0 to 20 s).
pub const DEFAULT_WAIT: Duration = Duration::from_secs(20);
/// Default delay before a start that must wait is tried again.
pub const DEFAULT_RETRY_AFTER: Duration = Duration::from_secs(30);

/// Tasks remembered before old marks are forgotten.
const MAX_TRACKED_TASKS: usize = 10_000;
/// A mark older than this may be forgotten once too many tasks are tracked.
const MARK_TTL: Duration = Duration::from_secs(3600);

/// Long-polls one queue and turns matching events into start requests.
pub struct Watcher {
    sqs: aws_sdk_sqs::Client,
    trigger: EcsEventsTrigger,
    store: Arc<dyn Store>,
    owner: String,
    wait: Duration,
    retry_after: Duration,
    /// Per task ARN: the highest `detail.version` handled, and when.
    seen: HashMap<String, (u64, Timestamp)>,
}

impl Watcher {
    /// `owner` names this watcher in trigger claims (e.g. `host:pid`).
    pub fn new(
        sdk: &aws_config::SdkConfig,
        trigger: EcsEventsTrigger,
        store: Arc<dyn Store>,
        owner: impl Into<String>,
    ) -> Watcher {
        Watcher {
            sqs: aws_sdk_sqs::Client::new(sdk),
            trigger,
            store,
            owner: owner.into(),
            wait: DEFAULT_WAIT,
            retry_after: DEFAULT_RETRY_AFTER,
            seen: HashMap::new(),
        }
    }

    /// The long-poll wait (`WaitTimeSeconds`, whole seconds, at most 20).
    pub fn with_wait(mut self, wait: Duration) -> Watcher {
        self.wait = wait.min(DEFAULT_WAIT);
        self
    }

    /// How long a message whose start must wait stays invisible before it
    /// is tried again (whole seconds, at most 12 h, SQS's limit).
    pub fn with_retry_after(mut self, retry_after: Duration) -> Watcher {
        self.retry_after = retry_after.min(Duration::from_secs(12 * 3600));
        self
    }

    pub fn trigger(&self) -> &EcsEventsTrigger {
        &self.trigger
    }

    /// Receives one batch (waiting up to the long-poll wait) and handles
    /// each message: `on_start` is called for every matching event whose
    /// claim did not fail, and says whether the rollout now exists (see
    /// [`StartOutcome`]). Errs only when the queue cannot be read;
    /// per-message problems are in the report.
    pub async fn poll_once<F, Fut>(&mut self, mut on_start: F) -> Result<PollReport, AdapterError>
    where
        F: FnMut(StartRequest) -> Fut,
        Fut: Future<Output = StartOutcome>,
    {
        let messages = self.receive().await?;
        Ok(self.handle(messages, &mut on_start).await)
    }

    /// Polls until `shutdown` completes, handling messages as
    /// [`Watcher::poll_once`] does. Shutdown interrupts only the wait for
    /// messages, never the handling of a received batch. Receive errors are
    /// logged and retried with a backoff.
    pub async fn run<F, Fut>(&mut self, mut on_start: F, shutdown: impl Future<Output = ()>)
    where
        F: FnMut(StartRequest) -> Fut,
        Fut: Future<Output = StartOutcome>,
    {
        tokio::pin!(shutdown);
        let mut backoff = Duration::from_secs(1);
        loop {
            let received = tokio::select! {
                biased;
                () = &mut shutdown => return,
                r = self.receive() => r,
            };
            match received {
                Ok(messages) => {
                    backoff = Duration::from_secs(1);
                    let report = self.handle(messages, &mut on_start).await;
                    if !report.deferred.is_empty() {
                        tracing::warn!(deferred = ?report.deferred, "some events will be retried");
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, queue = %self.trigger.queue_url, "cannot read the queue; retrying in {backoff:?}");
                    tokio::select! {
                        biased;
                        () = &mut shutdown => return,
                        () = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(60));
                }
            }
        }
    }

    async fn receive(&self) -> Result<Vec<aws_sdk_sqs::types::Message>, AdapterError> {
        let out = self
            .sqs
            .receive_message()
            .queue_url(&self.trigger.queue_url)
            .max_number_of_messages(10)
            .wait_time_seconds(self.wait.as_secs() as i32)
            .send()
            .await
            .map_err(|e| {
                sdk_error(
                    &format!("receiving from queue {}", self.trigger.queue_url),
                    e,
                )
            })?;
        Ok(out.messages.unwrap_or_default())
    }

    async fn handle<F, Fut>(
        &mut self,
        messages: Vec<aws_sdk_sqs::types::Message>,
        on_start: &mut F,
    ) -> PollReport
    where
        F: FnMut(StartRequest) -> Fut,
        Fut: Future<Output = StartOutcome>,
    {
        let mut report = PollReport {
            received: messages.len(),
            ..PollReport::default()
        };
        for message in messages {
            let id = message.message_id().map(str::to_owned);
            let fate = self.handle_one(&message, &mut report, on_start).await;
            let Some(receipt) = message.receipt_handle() else {
                continue;
            };
            match fate {
                Fate::Delete => {}
                Fate::Keep => continue,
                Fate::RetryLater => {
                    let secs = i32::try_from(self.retry_after.as_secs()).unwrap_or(i32::MAX);
                    if let Err(e) = self
                        .sqs
                        .change_message_visibility()
                        .queue_url(&self.trigger.queue_url)
                        .receipt_handle(receipt)
                        .visibility_timeout(secs)
                        .send()
                        .await
                    {
                        // It still comes back, after the queue's own timeout.
                        let e = sdk_error("delaying a message", e);
                        tracing::warn!(message_id = ?id, error = %e, "could not set when a waiting message comes back");
                    }
                    continue;
                }
            }
            if let Err(e) = self
                .sqs
                .delete_message()
                .queue_url(&self.trigger.queue_url)
                .receipt_handle(receipt)
                .send()
                .await
            {
                let e = sdk_error("deleting a handled message", e);
                tracing::warn!(message_id = ?id, error = %e, "could not delete a handled message; it will come back and be found handled");
                report
                    .delete_failures
                    .push(format!("{}: {e}", id.as_deref().unwrap_or("?")));
            }
        }
        self.forget_old_marks();
        report
    }

    /// What becomes of one message.
    async fn handle_one<F, Fut>(
        &mut self,
        message: &aws_sdk_sqs::types::Message,
        report: &mut PollReport,
        on_start: &mut F,
    ) -> Fate
    where
        F: FnMut(StartRequest) -> Fut,
        Fut: Future<Output = StartOutcome>,
    {
        let id = message.message_id().map(str::to_owned);
        let event = match parse_event(message.body().unwrap_or_default()) {
            Ok(event) => event,
            Err(e) => {
                let body = message.body().unwrap_or_default();
                let shown: String = body.chars().take(200).collect();
                tracing::debug!(message_id = ?id, error = %e, body = %shown, "malformed event set aside (deleted)");
                report.malformed.push(Malformed {
                    message_id: id,
                    error: e.to_string(),
                });
                return Fate::Delete;
            }
        };
        if let Some((last, _)) = self.seen.get(&event.task_arn) {
            if event.version <= *last {
                tracing::debug!(task = %event.task_arn, version = event.version, last, "stale event ignored");
                report.stale += 1;
                return Fate::Delete;
            }
        }
        if let Some(why) = matches(&event, &self.trigger) {
            tracing::debug!(task = %event.task_arn, reason = %why, "event ignored");
            self.mark(&event);
            report.ignored += 1;
            return Fate::Delete;
        }
        let Some(key) = event.claim_key() else {
            // `matches` refused non-service tasks already.
            report.ignored += 1;
            return Fate::Delete;
        };
        let claim_won = match self.store.claim_trigger(&key, &self.owner, now()).await {
            Ok(won) => won,
            Err(e) => {
                tracing::debug!(key = %key, error = %e, "cannot claim the trigger; the event will come back");
                report.deferred.push(format!("{key}: {e}"));
                return Fate::Keep;
            }
        };
        let request = StartRequest {
            service: event.service().unwrap_or_default().to_owned(),
            task_definition_arn: event.task_definition_arn.clone(),
            event_time: event.time,
            cluster_arn: event.cluster_arn.clone(),
            task_arn: event.task_arn.clone(),
            claim_key: key.clone(),
            claim_won,
        };
        // Won or lost, the rollout is created if it does not exist: a lost
        // claim whose rollout is missing is a start its claimer did not
        // finish (it died, or had to wait), and this delivery finishes it.
        match on_start(request).await {
            StartOutcome::Created => {
                self.mark(&event);
                report.started += 1;
                if claim_won {
                    tracing::info!(key = %key, task = %event.task_arn, "trigger claimed; rollout created");
                } else {
                    tracing::info!(key = %key, task = %event.task_arn, "rollout created for a revision claimed earlier but not started");
                }
                Fate::Delete
            }
            StartOutcome::Exists => {
                self.mark(&event);
                tracing::debug!(key = %key, "the revision's rollout exists");
                report.duplicates += 1;
                Fate::Delete
            }
            StartOutcome::Refused(why) => {
                self.mark(&event);
                tracing::debug!(key = %key, reason = %why, "start refused; the event is dropped");
                report.refused.push(format!("{key}: {why}"));
                Fate::Delete
            }
            StartOutcome::Later(why) => {
                // Not marked as seen: the message comes back to be tried again.
                tracing::info!(key = %key, reason = %why, retry_after = ?self.retry_after, "start must wait");
                report.deferred.push(format!("{key}: {why}"));
                Fate::RetryLater
            }
        }
    }

    fn mark(&mut self, event: &TaskEvent) {
        let entry = self
            .seen
            .entry(event.task_arn.clone())
            .or_insert((event.version, now()));
        if event.version >= entry.0 {
            *entry = (event.version, now());
        }
    }

    fn forget_old_marks(&mut self) {
        if self.seen.len() > MAX_TRACKED_TASKS {
            let now = now();
            self.seen.retain(|_, (_, at)| now.since(*at) < MARK_TTL);
        }
    }
}

/// What becomes of a received message.
enum Fate {
    /// Handled: delete it.
    Delete,
    /// Leave it; it comes back after the queue's visibility timeout.
    Keep,
    /// Leave it and have it come back after the watcher's retry delay.
    RetryLater,
}

fn now() -> Timestamp {
    let ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    Timestamp::from_millis(ms)
}

/// An SDK error as an [`AdapterError`]: transient for network trouble,
/// timeouts, throttling and 5xx; permanent otherwise.
pub(crate) fn sdk_error<E, R>(what: &str, err: SdkError<E, R>) -> AdapterError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: fmt::Debug,
{
    let transient = match &err {
        SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) | SdkError::ResponseError(_) => {
            true
        }
        SdkError::ServiceError(e) => matches!(
            e.err().code(),
            Some(
                "Throttling"
                    | "ThrottlingException"
                    | "RequestThrottled"
                    | "TooManyRequestsException"
                    | "RequestLimitExceeded"
                    | "ServiceUnavailable"
                    | "ServerException"
                    | "InternalFailure"
                    | "InternalError"
                    | "RequestThrottledException"
            )
        ),
        _ => false,
    };
    let message = format!("{what}: {}", DisplayErrorContext(&err));
    if transient {
        AdapterError::transient(message)
    } else {
        AdapterError::permanent(message)
    }
}

/// The EventBridge event pattern that sends the trigger's events (and
/// little else) to the queue. The watcher filters again, so the pattern
/// only needs to be a superset: container names are left to the watcher
/// (they sit in an array of objects, `detail.containers[].name`).
pub fn eventbridge_rule(trigger: &EcsEventsTrigger) -> String {
    let mut detail = json!({
        "lastStatus": ["RUNNING"],
        "desiredStatus": ["RUNNING"],
        "group": trigger.services.iter().map(|s| format!("service:{s}")).collect::<Vec<_>>(),
    });
    if let Some(cluster) = &trigger.cluster {
        detail["clusterArn"] = if cluster.starts_with("arn:") {
            json!([cluster])
        } else {
            json!([{ "suffix": format!(":cluster/{cluster}") }])
        };
    }
    let pattern = json!({
        "source": [SOURCE],
        "detail-type": [DETAIL_TYPE],
        "detail": detail,
    });
    serde_json::to_string_pretty(&pattern).unwrap_or_default()
}

/// The queue policy that lets the EventBridge rule (and only it) send to
/// the queue.
pub fn queue_policy(queue_arn: &str, rule_arn: &str) -> String {
    let policy = json!({
        "Version": "2012-10-17",
        "Statement": [{
            "Sid": "CutoverEcsEvents",
            "Effect": "Allow",
            "Principal": { "Service": "events.amazonaws.com" },
            "Action": "sqs:SendMessage",
            "Resource": queue_arn,
            "Condition": { "ArnEquals": { "aws:SourceArn": rule_arn } },
        }],
    });
    serde_json::to_string_pretty(&policy).unwrap_or_default()
}

/// The queue's ARN from its URL
/// (`https://sqs.REGION.amazonaws.com/ACCOUNT/NAME`, also the legacy
/// `https://REGION.queue.amazonaws.com/...` and China's `.amazonaws.com.cn`).
/// The region is `*` when the URL does not name one (e.g. a local
/// endpoint); `None` if there is no `/ACCOUNT/NAME` path.
pub fn queue_arn_from_url(url: &str) -> Option<String> {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let mut parts = rest.splitn(2, '/');
    let host = parts.next()?;
    let path = parts.next()?.trim_end_matches('/');
    let (account, name) = path.split_once('/')?;
    if account.is_empty() || name.is_empty() || name.contains('/') {
        return None;
    }
    let host = host.split(':').next().unwrap_or(host);
    let partition = if host.ends_with(".amazonaws.com.cn") {
        "aws-cn"
    } else {
        "aws"
    };
    let region = if let Some(r) = host.strip_prefix("sqs.").and_then(|h| h.split('.').next()) {
        r.to_owned()
    } else if let Some((r, _)) = host.split_once(".queue.amazonaws.com") {
        r.to_owned()
    } else {
        "*".to_owned()
    };
    Some(format!("arn:{partition}:sqs:{region}:{account}:{name}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(version: u64) -> String {
        json!({
            "version": "0",
            "id": "e-1",
            "detail-type": "ECS Task State Change",
            "source": "aws.ecs",
            "account": "123456789012",
            "time": "2020-01-23T17:57:58Z",
            "region": "us-east-1",
            "resources": ["arn:aws:ecs:us-east-1:123456789012:task/prod/abc"],
            "detail": {
                "clusterArn": "arn:aws:ecs:us-east-1:123456789012:cluster/prod",
                "group": "service:green-app",
                "taskArn": "arn:aws:ecs:us-east-1:123456789012:task/prod/abc",
                "taskDefinitionArn": "arn:aws:ecs:us-east-1:123456789012:task-definition/app:7",
                "lastStatus": "RUNNING",
                "desiredStatus": "RUNNING",
                "containers": [{"name": "app"}, {"name": "sidecar"}],
                "version": version,
            }
        })
        .to_string()
    }

    fn trigger() -> EcsEventsTrigger {
        EcsEventsTrigger {
            queue_url: "https://sqs.eu-west-1.amazonaws.com/123456789012/events".into(),
            cluster: Some("prod".into()),
            services: vec!["green-app".into()],
            containers: vec!["app".into()],
        }
    }

    #[test]
    fn parses_a_task_state_change() {
        let e = parse_event(&event(3)).unwrap();
        assert_eq!(e.service(), Some("green-app"));
        assert_eq!(e.version, 3);
        assert_eq!(e.containers, ["app", "sidecar"]);
        assert_eq!(e.time, Timestamp::from_millis(1_579_802_278_000));
        assert_eq!(
            e.claim_key().unwrap(),
            "ecs:green-app:arn:aws:ecs:us-east-1:123456789012:task-definition/app:7"
        );
        assert_eq!(matches(&e, &trigger()), None);
    }

    #[test]
    fn errors_name_the_missing_or_bad_field() {
        assert!(matches!(parse_event("{nope"), Err(EventError::NotJson(_))));
        for (field, expected) in [
            ("group", "detail.group missing"),
            ("taskDefinitionArn", "detail.taskDefinitionArn missing"),
            ("version", "detail.version missing"),
            ("clusterArn", "detail.clusterArn missing"),
        ] {
            let mut v: Value = serde_json::from_str(&event(1)).unwrap();
            v["detail"].as_object_mut().unwrap().remove(field);
            assert_eq!(
                parse_event(&v.to_string()).unwrap_err().to_string(),
                expected
            );
        }
        let mut v: Value = serde_json::from_str(&event(1)).unwrap();
        v["detail"]["version"] = json!("two");
        assert!(parse_event(&v.to_string())
            .unwrap_err()
            .to_string()
            .starts_with("detail.version:"));
        let mut v: Value = serde_json::from_str(&event(1)).unwrap();
        v["time"] = json!("yesterday");
        assert!(parse_event(&v.to_string())
            .unwrap_err()
            .to_string()
            .starts_with("time:"));
        assert_eq!(
            parse_event("[1]").unwrap_err().to_string(),
            "event: expected a JSON object"
        );
        assert_eq!(parse_event("{}").unwrap_err().to_string(), "detail missing");
    }

    #[test]
    fn matching_is_exact() {
        let base = parse_event(&event(1)).unwrap();
        let t = trigger();
        let mut e = base.clone();
        e.containers = vec!["app-old".into(), "my-app".into()];
        assert!(matches!(matches(&e, &t), Some(Mismatch::Containers(_))));
        let mut e = base.clone();
        e.group = "service:green-app-2".into();
        assert_eq!(
            matches(&e, &t),
            Some(Mismatch::Service("green-app-2".into()))
        );
        let mut e = base.clone();
        e.group = "family:app".into();
        assert!(matches!(matches(&e, &t), Some(Mismatch::NotAService(_))));
        let mut e = base.clone();
        e.desired_status = "STOPPED".into();
        assert!(matches!(matches(&e, &t), Some(Mismatch::NotRunning { .. })));
        let mut e = base.clone();
        e.source = "aws.ec2".into();
        assert!(matches!(matches(&e, &t), Some(Mismatch::Source(_))));
        let mut e = base.clone();
        e.detail_type = "ECS Container Instance State Change".into();
        assert!(matches!(matches(&e, &t), Some(Mismatch::DetailType(_))));
        let mut e = base.clone();
        e.cluster_arn = "arn:aws:ecs:us-east-1:123456789012:cluster/preprod".into();
        assert!(matches!(matches(&e, &t), Some(Mismatch::Cluster(_))));
        // A cluster given by ARN, and no cluster / container filter at all.
        let mut t2 = t.clone();
        t2.cluster = Some("arn:aws:ecs:us-east-1:123456789012:cluster/prod".into());
        assert_eq!(matches(&base, &t2), None);
        t2.cluster = None;
        t2.containers.clear();
        assert_eq!(matches(&e, &t2), None);
    }

    #[test]
    fn rule_and_policy_are_json() {
        let rule: Value = serde_json::from_str(&eventbridge_rule(&trigger())).unwrap();
        assert_eq!(rule["source"], json!(["aws.ecs"]));
        assert_eq!(rule["detail-type"], json!(["ECS Task State Change"]));
        assert_eq!(rule["detail"]["group"], json!(["service:green-app"]));
        assert_eq!(
            rule["detail"]["clusterArn"],
            json!([{"suffix": ":cluster/prod"}])
        );
        assert_eq!(rule["detail"]["lastStatus"], json!(["RUNNING"]));
        assert_eq!(rule["detail"]["desiredStatus"], json!(["RUNNING"]));
        let policy: Value = serde_json::from_str(&queue_policy("arn:q", "arn:r")).unwrap();
        assert_eq!(policy["Statement"][0]["Action"], "sqs:SendMessage");
        assert_eq!(
            policy["Statement"][0]["Condition"]["ArnEquals"]["aws:SourceArn"],
            "arn:r"
        );
    }

    fn request(arn: &str) -> StartRequest {
        StartRequest {
            service: "web-green".into(),
            task_definition_arn: arn.into(),
            event_time: Timestamp::from_millis(0),
            cluster_arn: String::new(),
            task_arn: String::new(),
            claim_key: String::new(),
            claim_won: true,
        }
    }

    #[test]
    fn revisions_and_what_supersedes_them() {
        let r = request("arn:aws:ecs:eu-west-1:1:task-definition/web-app:7");
        // Under the plan's service name, whatever the ECS service is called.
        assert_eq!(r.rollout_id("web"), "web-web-app-7");
        assert_eq!(r.revision(), Some(("web-app", 7)));
        assert_eq!(request("web-app:12").revision(), Some(("web-app", 12)));
        assert_eq!(request("web-app").revision(), None);
        let ids = [
            "web-web-app-6",
            "web-web-app-9",
            "web-web-app-8",
            "web-other-12",
            "web-web-app-x",
            "by-hand",
        ];
        assert_eq!(
            superseded_by(&r, "web", ids),
            Some(9),
            "the newest of its family"
        );
        assert_eq!(
            superseded_by(&request("web-app:9"), "web", ids),
            None,
            "its own revision does not supersede it"
        );
        assert_eq!(superseded_by(&request("other:11"), "web", ids), Some(12));
        assert_eq!(superseded_by(&request("web-app"), "web", ids), None);
        // Looked up under the plan's service, not the ECS service's name.
        assert_eq!(superseded_by(&r, "web-green", ids), None);
    }

    #[test]
    fn queue_arns_from_urls() {
        assert_eq!(
            queue_arn_from_url("https://sqs.eu-west-1.amazonaws.com/123456789012/events").unwrap(),
            "arn:aws:sqs:eu-west-1:123456789012:events"
        );
        assert_eq!(
            queue_arn_from_url("https://us-east-2.queue.amazonaws.com/1/q").unwrap(),
            "arn:aws:sqs:us-east-2:1:q"
        );
        assert_eq!(
            queue_arn_from_url("https://sqs.cn-north-1.amazonaws.com.cn/1/q").unwrap(),
            "arn:aws-cn:sqs:cn-north-1:1:q"
        );
        assert_eq!(
            queue_arn_from_url("http://127.0.0.1:5000/123456789012/q").unwrap(),
            "arn:aws:sqs:*:123456789012:q"
        );
        assert_eq!(queue_arn_from_url("https://sqs.x.amazonaws.com/"), None);
    }
}
