//! The engine driving the real AWS adapters on moto, in real time: a plan
//! parsed from TOML, its router and checks built from the plan (through
//! the CloudWatch shim, so every adapter reaches moto), its state in a
//! DynamoDB table of its own.
//!
//! The router is wrapped in [`Recording`], which after every `apply` reads
//! the weights back from moto (ListResourceRecordSets / DescribeListeners):
//! the tests assert what AWS ended up with, not what the router said.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;
use common::fixtures::{
    alb_dims, alb_traffic, ecs_trigger, event, event_queue, queue_len, send, task_def, Alb, Ecs,
    Zone,
};
use cutover_aws::dynamodb::DynamoStore;
use cutover_aws::ecs::{EcsPlatform, NewVersion};
use cutover_aws::trigger::{start_rollout, StartOutcome, StartRequest, Watcher};
use cutover_core::plan::{PlatformConfig, Release, RouterConfig};
use cutover_core::{Command, Input, Phase, Rollout, Split, Verdict};
use cutover_engine::ports::{AdapterError, Platform, Router};
use cutover_engine::store::Store;
use cutover_engine::{Adapters, Clock, Engine, Options};

/// Where the recorder reads weights back from.
enum Readback {
    Zone(Arc<Zone>),
    Alb(Arc<Alb>),
}

impl Readback {
    /// (green, blue), as moto has them now.
    async fn weights(&self) -> (i64, i64) {
        match self {
            Readback::Zone(zone) => zone.weights().await,
            Readback::Alb(alb) => {
                let (g, b) = alb.listener_weights().await;
                (i64::from(g), i64::from(b))
            }
        }
    }
}

/// One successful `apply`.
#[derive(Clone, Debug)]
struct Applied {
    asked: Split,
    realized: Split,
    /// (green, blue) read back from moto after the apply.
    weights: (i64, i64),
    /// When the router's apply returned.
    at: Instant,
}

/// A router that records every apply and the weights moto has after it.
struct Recording {
    inner: Arc<dyn Router>,
    readback: Readback,
    log: Mutex<Vec<Applied>>,
}

impl Recording {
    fn log(&self) -> Vec<Applied> {
        self.log.lock().unwrap().clone()
    }

    /// (asked split in basis points, weights read back) of every apply.
    fn trail(&self) -> Vec<(u16, (i64, i64))> {
        self.log()
            .iter()
            .map(|a| (a.asked.basis_points(), a.weights))
            .collect()
    }
}

#[async_trait]
impl Router for Recording {
    fn describe(&self) -> String {
        self.inner.describe()
    }

    async fn apply(&self, split: Split) -> Result<Split, AdapterError> {
        let realized = self.inner.apply(split).await?;
        let at = Instant::now();
        let weights = self.readback.weights().await;
        self.log.lock().unwrap().push(Applied {
            asked: split,
            realized,
            weights,
            at,
        });
        Ok(realized)
    }

    async fn current(&self) -> Result<Split, AdapterError> {
        self.inner.current().await
    }

    async fn preflight(&self, shortest_hold: Duration) -> Result<(), AdapterError> {
        self.inner.preflight(shortest_hold).await
    }
}

const HOLD: Duration = Duration::from_secs(1);

/// A plan walking 10 / 50 / 100 % with 1 s holds, analysed every 500 ms,
/// through the CloudWatch shim; `router` and `checks` are TOML.
fn plan(router: &str, checks: &str) -> cutover_core::Plan {
    let text = format!(
        r#"
[service]
name = "web"

[aws]
region = "us-east-1"
endpoint_url = "{endpoint}"

[router]
{router}

[strategy]
steps = [
  {{ split = 10, hold = "1s" }},
  {{ split = 50, hold = "1s" }},
  {{ split = 100, hold = "1s" }},
]

[analysis]
interval = "500ms"

{checks}
"#,
        endpoint = common::cbor_shim::url(),
    );
    cutover_core::plan::parse(&text, "rollouts.toml").unwrap_or_else(|e| panic!("{e}\n{text}"))
}

/// The result of one rollout driven to its end.
struct Run {
    rollout: Rollout,
    /// The rollout's event log, as stored.
    history: Vec<cutover_core::Event>,
    recording: Arc<Recording>,
    elapsed: Duration,
}

/// Builds the plan's adapters (and platform, if any) from the plan itself
/// (as `cutover run` does), wraps the router in a [`Recording`], and drives a new rollout to its
/// end with its state in a fresh DynamoDB table.
async fn drive(plan: cutover_core::Plan, readback: Readback) -> Run {
    let sdk = cutover_aws::config::load(&plan.aws).await;
    let inner: Arc<dyn Router> = match &plan.router {
        RouterConfig::Route53(r) => Arc::new(cutover_aws::route53::Route53Router::new(r, &sdk)),
        RouterConfig::Alb(a) => Arc::new(cutover_aws::alb::AlbRouter::new(a, &sdk)),
        other => panic!("not an AWS router: {other:?}"),
    };
    let recording = Arc::new(Recording {
        inner,
        readback,
        log: Mutex::new(Vec::new()),
    });
    let checks = plan
        .analysis
        .checks
        .iter()
        .map(|spec| cutover_aws::checks::build_check(spec, &sdk).expect("an AWS check"))
        .collect();
    // The platform acts when the plan has one and a release (as `cutover
    // run` builds it), looking at the idle service every 50 ms.
    let platform: Option<Arc<dyn Platform>> = match (&plan.platform, &plan.release) {
        (Some(PlatformConfig::Ecs(ecs)), Some(release)) => {
            let version = match release {
                Release::Image(i) => NewVersion::Image(i.clone()),
                Release::TaskDefinition(t) => NewVersion::TaskDefinition(t.clone()),
            };
            Some(Arc::new(
                EcsPlatform::new(ecs, &sdk, version).with_poll_interval(Duration::from_millis(50)),
            ))
        }
        _ => None,
    };
    let has_platform = platform.is_some();
    let adapters = Adapters {
        router: recording.clone(),
        checks,
        platform,
    };

    let store_sdk = cutover_aws::config::load(&common::aws()).await;
    let store = DynamoStore::new(&store_sdk, &common::unique("rollouts"));
    store.create_table().await.unwrap();
    let engine = Engine::new(
        Arc::new(store),
        Clock::system(),
        "rollouts-test",
        Options {
            tick: Duration::from_millis(200),
            ..Options::default()
        },
    );
    let id = common::unique("web");
    engine.create(&id, plan, has_platform).await.unwrap();
    let started = Instant::now();
    let rollout = tokio::time::timeout(Duration::from_secs(30), engine.drive(&id, &adapters))
        .await
        .expect("the rollout ends within 30 s")
        .unwrap();
    let elapsed = started.elapsed();
    // The store has the same end.
    let (record, stored) = engine.load(&id).await.unwrap();
    assert!(!record.active);
    assert_eq!(stored.phase, rollout.phase);
    let history: Vec<cutover_core::Event> = engine
        .store()
        .events(&id, 0, usize::MAX)
        .await
        .unwrap()
        .iter()
        .map(|e| cutover_engine::driver::decode_event(e).unwrap())
        .collect();
    for e in &history {
        eprintln!("{:?} {} {}: {}", e.at, e.phase, e.split, e.message);
        for o in &e.observations {
            eprintln!("    {o}");
        }
    }
    eprintln!("rollout took {elapsed:?}");
    Run {
        rollout,
        history,
        recording,
        elapsed,
    }
}

/// Every recorded apply realized what was asked, and consecutive applies
/// were at least a hold apart.
fn assert_applies_held(log: &[Applied]) {
    for a in log {
        assert_eq!(a.realized, a.asked, "{a:?}");
    }
    for w in log.windows(2) {
        let gap = w[1].at - w[0].at;
        assert!(
            gap >= HOLD - Duration::from_millis(10),
            "applied {:?} only {gap:?} after {:?}",
            w[1].asked,
            w[0].asked
        );
    }
}

/// Observations of `check` with `verdict` anywhere in the history.
fn observed(run: &Run, check: &str, verdict: Verdict) -> Vec<String> {
    run.history
        .iter()
        .flat_map(|e| &e.observations)
        .filter(|o| o.check == check && o.verdict == verdict)
        .map(|o| o.detail.clone())
        .collect()
}

/// When the test's datapoints are timestamped. Not `now`: the window a
/// check reads ends at its `now`, which moto compares at whole seconds, so a
/// datapoint stamped in the current second can be missed by an analysis in
/// the same second (seen: one inconclusive analysis before the failing one).
/// Real ALB datapoints describe the past anyway.
fn a_little_while_ago() -> SystemTime {
    SystemTime::now() - Duration::from_secs(5)
}

/// The very first analysis failed, and the rollback followed it: green
/// never saw a passing or inconclusive analysis.
fn assert_first_analysis_failed(run: &Run) {
    let first = run
        .history
        .iter()
        .flat_map(|e| &e.observations)
        .next()
        .expect("an analysis");
    assert_eq!(first.verdict, Verdict::Fail, "{first}");
    let log = run.recording.log();
    eprintln!("back on blue {:?} after 10 %", log[1].at - log[0].at);
}

/// Made-up but well-formed CloudWatch dimensions for a route53 rollout
/// (no ALB needed: the check only reads metrics).
fn route53_dims() -> (String, String) {
    (
        format!("app/{}/50dc6c495c0c9188", common::unique("alb")),
        format!("targetgroup/{}/943f017f100becff", common::unique("green")),
    )
}

/// A zone with plain weighted A records, blue 100 / green 0, TTL 1 s (so
/// 1 s holds pass preflight without `allow_short_holds`).
async fn zone() -> Arc<Zone> {
    zone_at(100).await
}

/// The same with blue's weight `blue` (green 0).
async fn zone_at(blue: i64) -> Arc<Zone> {
    let zone = Zone::new().await;
    zone.create(vec![
        zone.plain("blue", blue, 1, "192.0.2.10"),
        zone.plain("green", 0, 1, "192.0.2.20"),
    ])
    .await;
    Arc::new(zone)
}

fn route53_router(zone: &Zone) -> String {
    format!(
        r#"kind = "route53"
hosted_zone_id = "{}"
record_name = "{}"
insync_timeout = "10s""#,
        zone.id, zone.record
    )
}

async fn cloudwatch() -> aws_sdk_cloudwatch::Client {
    aws_sdk_cloudwatch::Client::new(&common::sdk().await)
}

#[tokio::test]
async fn route53_rollout_walks_every_step_and_ends_on_green() {
    let zone = zone().await;
    let (lb, tg) = route53_dims();
    alb_traffic(
        &cloudwatch().await,
        &alb_dims(&lb, &tg),
        a_little_while_ago(),
        200.0,
        Some(0.0),
    )
    .await;
    let plan = plan(
        &route53_router(&zone),
        &format!(
            r#"[[analysis.checks]]
kind = "alb-error-rate"
load_balancer = "{lb}"
target_group = "{tg}"
max_percent = 5
min_requests = 50"#
        ),
    );

    let run = drive(plan, Readback::Zone(zone.clone())).await;

    assert_eq!(
        run.rollout.phase,
        Phase::Succeeded,
        "{:?}",
        run.rollout.phase
    );
    assert_eq!(run.rollout.split, Split::FULL);
    // Route53 weights in the records' scale, 100 (see
    // `cutover_aws::route53::route53_weights`).
    assert_eq!(
        run.recording.trail(),
        [(1_000, (10, 90)), (5_000, (50, 50)), (10_000, (100, 0))]
    );
    for a in run.recording.log() {
        let (g, b) = cutover_aws::route53::route53_weights(a.asked, 100);
        assert_eq!(a.weights, (i64::from(g), i64::from(b)));
    }
    assert_applies_held(&run.recording.log());
    let (green, blue) = zone.weights().await;
    assert!(green > 0 && blue == 0, "green {green} blue {blue}");
    // Every step was judged healthy on the real metrics.
    let passes = observed(&run, "alb-error-rate", Verdict::Pass);
    assert!(passes.len() >= 3, "{passes:?}");
    assert!(
        passes[0].contains("green error rate 0 % <= 5 %") && passes[0].contains("200"),
        "{}",
        passes[0]
    );
    assert!(run.elapsed >= 3 * HOLD, "{:?}", run.elapsed);
}

#[tokio::test]
async fn route53_rollout_rolls_back_on_a_failing_error_rate() {
    // Blue at Route53's largest weight: the rollback restores exactly that.
    let zone = zone_at(255).await;
    let (lb, tg) = route53_dims();
    alb_traffic(
        &cloudwatch().await,
        &alb_dims(&lb, &tg),
        a_little_while_ago(),
        200.0,
        Some(30.0),
    )
    .await;
    let plan = plan(
        &route53_router(&zone),
        &format!(
            r#"[[analysis.checks]]
kind = "alb-error-rate"
load_balancer = "{lb}"
target_group = "{tg}"
max_percent = 5
min_requests = 50"#
        ),
    );

    let run = drive(plan, Readback::Zone(zone.clone())).await;

    let Phase::RolledBack { reason } = &run.rollout.phase else {
        panic!("not rolled back: {:?}", run.rollout.phase);
    };
    assert!(
        reason.contains("15 % > 5 %") && reason.contains("200") && reason.contains("30 5xx"),
        "{reason}"
    );
    assert_eq!(run.rollout.split, Split::ZERO);
    // The first analysis failed: 10 % never became 50 %. 10 % cannot be
    // written exactly out of 255; blue's 255 comes back as it was.
    assert_eq!(run.recording.trail(), [(1_000, (25, 225)), (0, (0, 255))]);
    assert_eq!(zone.weights().await, (0, 255));
    assert_first_analysis_failed(&run);
}

/// An ALB whose listener forwards to blue 100 / green 0, and its
/// CloudWatch dimensions (load balancer, green's group).
async fn alb() -> (Arc<Alb>, String, String) {
    let alb = Alb::new().await;
    let lb = alb.load_balancer_dimension();
    let tg = Alb::target_group_dimension(&alb.green);
    (Arc::new(alb), lb, tg)
}

fn alb_router(alb: &Alb) -> String {
    format!(
        r#"kind = "alb"
listener_arn = "{}"
blue_target_group_arn = "{}"
green_target_group_arn = "{}""#,
        alb.listener, alb.blue, alb.green
    )
}

#[tokio::test]
async fn alb_rollout_walks_every_step_and_ends_on_green() {
    let (alb, lb, tg) = alb().await;
    assert_eq!(alb.listener_weights().await, (0, 100));
    alb_traffic(
        &cloudwatch().await,
        &alb_dims(&lb, &tg),
        a_little_while_ago(),
        200.0,
        Some(0.0),
    )
    .await;
    // The ALB checks take their dimensions from the router's listener and
    // green's group; a `cloudwatch` check reads RequestCount explicitly.
    let plan = plan(
        &alb_router(&alb),
        &format!(
            r#"[[analysis.checks]]
kind = "alb-error-rate"
max_percent = 5
min_requests = 50

[[analysis.checks]]
kind = "cloudwatch"
name = "green-requests"
namespace = "AWS/ApplicationELB"
metric_name = "RequestCount"
dimensions = {{ LoadBalancer = "{lb}", TargetGroup = "{tg}" }}
statistic = "Sum"
min = 100"#
        ),
    );

    let run = drive(plan, Readback::Alb(alb.clone())).await;

    assert_eq!(
        run.rollout.phase,
        Phase::Succeeded,
        "{:?}",
        run.rollout.phase
    );
    assert_eq!(run.rollout.split, Split::FULL);
    // ALB weights in the listener's scale, 100.
    assert_eq!(
        run.recording.trail(),
        [(1_000, (10, 90)), (5_000, (50, 50)), (10_000, (100, 0))]
    );
    assert_applies_held(&run.recording.log());
    let (green, blue) = alb.listener_weights().await;
    assert!(green > 0 && blue == 0, "green {green} blue {blue}");
    let passes = observed(&run, "alb-error-rate", Verdict::Pass);
    assert!(passes.len() >= 3, "{passes:?}");
    assert!(
        passes[0].contains("green error rate 0 % <= 5 %"),
        "{}",
        passes[0]
    );
    assert!(observed(&run, "green-requests", Verdict::Pass).len() >= 3);
    assert!(run.elapsed >= 3 * HOLD, "{:?}", run.elapsed);
    // The rule was not the router's: untouched.
    assert_eq!(
        common::fixtures::weight(alb.rule().await.actions(), &alb.green),
        0
    );
}

#[tokio::test]
async fn alb_rollout_rolls_back_on_a_failing_error_rate() {
    let (alb, lb, tg) = alb().await;
    alb_traffic(
        &cloudwatch().await,
        &alb_dims(&lb, &tg),
        a_little_while_ago(),
        200.0,
        Some(30.0),
    )
    .await;
    let plan = plan(
        &alb_router(&alb),
        r#"[[analysis.checks]]
kind = "alb-error-rate"
max_percent = 5
min_requests = 50"#,
    );

    let run = drive(plan, Readback::Alb(alb.clone())).await;

    let Phase::RolledBack { reason } = &run.rollout.phase else {
        panic!("not rolled back: {:?}", run.rollout.phase);
    };
    assert!(
        reason.contains("15 % > 5 %") && reason.contains("200") && reason.contains("30 5xx"),
        "{reason}"
    );
    assert_eq!(run.rollout.split, Split::ZERO);
    // Blue's 100 comes back as 100, not 999.
    assert_eq!(run.recording.trail(), [(1_000, (10, 90)), (0, (0, 100))]);
    assert_eq!(alb.listener_weights().await, (0, 100));
    assert_first_analysis_failed(&run);
}

// ---------------------------------------------------------------- ECS platform

/// `[[analysis.checks]]` of a healthy green (0 errors in 200 requests,
/// published now), through the CloudWatch shim.
async fn healthy_check() -> String {
    let (lb, tg) = route53_dims();
    alb_traffic(
        &cloudwatch().await,
        &alb_dims(&lb, &tg),
        a_little_while_ago(),
        200.0,
        Some(0.0),
    )
    .await;
    format!(
        r#"[[analysis.checks]]
kind = "alb-error-rate"
load_balancer = "{lb}"
target_group = "{tg}"
max_percent = 5
min_requests = 50"#
    )
}

/// `[platform] kind = "ecs"` on the fixture's services, replacing the
/// image of `container`; blue is scaled down 1 ms after the bake.
fn ecs_platform(ecs: &Ecs, container: &str) -> String {
    format!(
        r#"[platform]
kind = "ecs"
cluster = "{}"
blue_service = "{}"
green_service = "{}"
container = "{container}"
ready_deadline = "10s"
scale_down_after = "1ms""#,
        ecs.config.cluster, ecs.config.blue_service, ecs.config.green_service
    )
}

/// A route53 rollout (blue 100 %) of `repo/app:v2` on the ECS fixture
/// (blue: 2 tasks of v1, green idle), its platform replacing `container`.
async fn ecs_rollout(container: &str) -> (Ecs, Arc<Zone>, Run) {
    let ecs = Ecs::new(2, None).await;
    let zone = zone().await;
    let checks = healthy_check().await;
    let mut plan = plan(
        &route53_router(&zone),
        &format!("{checks}\n\n{}", ecs_platform(&ecs, container)),
    );
    assert!(
        matches!(&plan.platform, Some(PlatformConfig::Ecs(p)) if p.scale_down_after == Some(Duration::from_millis(1))),
        "{:?}",
        plan.platform
    );
    // As `cutover run --image` does: the release is not in the file.
    plan.release = Some(Release::Image("repo/app:v2".into()));
    let run = drive(plan, Readback::Zone(zone.clone())).await;
    (ecs, zone, run)
}

/// Index of the first history entry in `phase`.
fn first_in(run: &Run, phase: &str) -> Option<usize> {
    run.history.iter().position(|e| e.phase == phase)
}

#[tokio::test]
async fn ecs_rollout_readies_green_before_traffic_and_retires_blue_after() {
    let (ecs, zone, run) = ecs_rollout("app").await;

    assert_eq!(
        run.rollout.phase,
        Phase::Succeeded,
        "{:?}",
        run.rollout.phase
    );
    assert!(run.rollout.has_platform);
    // Green was prepared before any traffic moved, and retired blue last.
    let preparing = first_in(&run, "preparing").expect("a preparing entry");
    let shifting = first_in(&run, "shifting").expect("a shifting entry");
    assert!(preparing < shifting, "{:?}", run.history);
    assert!(run.history[..shifting]
        .iter()
        .all(|e| e.split == Split::ZERO));
    let finalizing = first_in(&run, "finalizing").expect("a finalizing entry");
    assert!(finalizing > shifting);

    // Green runs a new revision of its own family: the old one with only
    // the app container's image replaced.
    let green = ecs.service(&ecs.config.green_service).await;
    let new_arn = green.task_definition.clone().unwrap();
    assert_ne!(new_arn, ecs.green_def);
    assert!(
        new_arn.ends_with(&format!("{}:2", ecs.config.green_service)),
        "{new_arn}"
    );
    let old = ecs.task_definition(&ecs.green_def).await;
    let new = ecs.task_definition(&new_arn).await;
    let old_containers = old.container_definitions.clone().unwrap();
    let new_containers = new.container_definitions.clone().unwrap();
    assert_eq!(new_containers.len(), 2);
    let mut expected = old_containers[0].clone();
    assert_eq!(expected.name.as_deref(), Some("app"));
    expected.image = Some("repo/app:v2".into());
    assert_eq!(new_containers[0], expected);
    assert_eq!(new_containers[1], old_containers[1]);
    assert_eq!(
        (&new.family, &new.cpu, &new.memory, &new.network_mode),
        (&old.family, &old.cpu, &old.memory, &old.network_mode)
    );
    // Scaled like blue was; blue (still on v1) scaled to 0 by finalize.
    assert_eq!(green.desired_count, 2);
    let blue = ecs.service(&ecs.config.blue_service).await;
    assert_eq!(
        (blue.desired_count, blue.task_definition.as_deref()),
        (0, Some(ecs.blue_def.as_str()))
    );

    // And the traffic ended on green.
    assert_eq!(run.rollout.split, Split::FULL);
    assert_eq!(
        run.recording.trail(),
        [(1_000, (10, 90)), (5_000, (50, 50)), (10_000, (100, 0))]
    );
    assert_eq!(zone.weights().await, (100, 0));
}

#[tokio::test]
async fn ecs_rollout_fails_without_moving_traffic_when_green_cannot_be_prepared() {
    // The task definitions have containers `app` and `envoy`, not `web`.
    let (ecs, zone, run) = ecs_rollout("web").await;

    let Phase::Failed { reason } = &run.rollout.phase else {
        panic!("not failed: {:?}", run.rollout.phase);
    };
    assert!(
        reason.contains("no traffic moved") && reason.contains("no container `web`"),
        "{reason}"
    );
    assert_eq!(run.rollout.split, Split::ZERO);
    assert!(first_in(&run, "shifting").is_none());
    // The router never applied a non-zero split (here: nothing at all).
    assert!(
        run.recording.trail().iter().all(|(bp, _)| *bp == 0),
        "{:?}",
        run.recording.trail()
    );
    assert_eq!(zone.weights().await, (0, 100));
    // Neither service changed.
    let green = ecs.service(&ecs.config.green_service).await;
    assert_eq!(
        (green.desired_count, green.task_definition.as_deref()),
        (0, Some(ecs.green_def.as_str()))
    );
    let blue = ecs.service(&ecs.config.blue_service).await;
    assert_eq!(
        (blue.desired_count, blue.task_definition.as_deref()),
        (2, Some(ecs.blue_def.as_str()))
    );
}

// ---------------------------------------------------------------- trigger to rollout

/// The plan a triggered rollout runs: the watched service, deploying the
/// event's task definition.
fn triggered_plan(s: &StartRequest) -> cutover_core::Plan {
    let mut plan = plan(
        r#"kind = "route53"
hosted_zone_id = "Z0000000000000"
record_name = "green-app.example.com."
insync_timeout = "10s""#,
        "",
    );
    plan.service = s.service.clone();
    plan.release = Some(Release::TaskDefinition(s.task_definition_arn.clone()));
    plan
}

/// What the watchers did: rollouts created, and starts told to wait
/// (with why).
#[derive(Default)]
struct Outcomes {
    created: Vec<(StartRequest, String)>,
    waited: Vec<(String, String)>,
    refused: Vec<(String, String)>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn triggered_revisions_become_exactly_one_rollout_each() {
    let (sdk, sqs, url) = event_queue().await;
    let rev1 = task_def("green", 1);
    let rev2 = task_def("green", 2);
    // Two revisions of the watched service, duplicated and out of order
    // (the newer revision first), then every event twice more.
    let once = vec![
        event("green-app", &rev2, "t3", 2, "RUNNING"),
        event("green-app", &rev1, "t1", 3, "RUNNING"),
        event("green-app", &rev1, "t1", 1, "PENDING"),
        event("green-app", &rev1, "t1", 2, "RUNNING"),
        event("green-app", &rev2, "t3", 2, "RUNNING"),
        event("green-app", &rev1, "t2", 2, "RUNNING"),
        event("green-app", &rev2, "t4", 3, "RUNNING"),
    ];
    let mut bodies = once.clone();
    bodies.extend(once.iter().cloned());
    bodies.extend(once);
    for body in &bodies {
        send(&sqs, &url, body).await;
    }

    // One DynamoDB table for the watchers' claims and the rollouts, reached
    // one request at a time: moto does not apply concurrent conditional
    // writes atomically (two watchers' creates could both pass the
    // one-active-rollout condition), and DynamoDB does.
    let serial = cutover_testkit::FaultProxy::start_one_at_a_time(&common::moto_url()).await;
    let mut store_aws = common::aws();
    store_aws.endpoint_url = Some(serial.url());
    let store_sdk = cutover_aws::config::load(&store_aws).await;
    let table = common::unique("triggered");
    DynamoStore::new(&store_sdk, &table)
        .create_table()
        .await
        .unwrap();
    let outcomes: Arc<Mutex<Outcomes>> = Arc::default();
    let progress = Arc::new(tokio::sync::Notify::new());
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut tasks = tokio::task::JoinSet::new();
    for n in 0..4 {
        // Each watcher has its own store client and engine on the table,
        // and creates rollouts as `cutover watch` does (without driving).
        let store: Arc<dyn Store> = Arc::new(DynamoStore::new(&store_sdk, &table));
        let owner = format!("watcher-{n}");
        let engine = Arc::new(Engine::new(
            store.clone(),
            Clock::system(),
            &owner,
            Options::default(),
        ));
        let mut watcher = Watcher::new(&sdk, ecs_trigger(&url), store, owner)
            .with_wait(Duration::from_secs(1))
            .with_retry_after(Duration::from_secs(1));
        let (outcomes, progress, stop) = (outcomes.clone(), progress.clone(), stop.clone());
        tasks.spawn(async move {
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let report = watcher
                    .poll_once(|request| {
                        let (engine, outcomes) = (engine.clone(), outcomes.clone());
                        async move {
                            let plan = triggered_plan(&request);
                            let outcome = start_rollout(&engine, plan, &request).await;
                            let mut o = outcomes.lock().unwrap();
                            match &outcome {
                                StartOutcome::Created => o
                                    .created
                                    .push((request.clone(), request.rollout_id("green-app"))),
                                StartOutcome::Later(why) => o
                                    .waited
                                    .push((request.rollout_id("green-app"), why.clone())),
                                StartOutcome::Exists => {}
                                StartOutcome::Refused(why) => o
                                    .refused
                                    .push((request.rollout_id("green-app"), why.clone())),
                            }
                            outcome
                        }
                    })
                    .await
                    .unwrap();
                assert!(report.malformed.is_empty(), "{report:?}");
                progress.notify_one();
            }
        });
    }
    let wait_until = |what: &'static str, done: Box<dyn Fn(&Outcomes) -> bool + Send>| {
        let (outcomes, progress) = (outcomes.clone(), progress.clone());
        async move {
            tokio::time::timeout(Duration::from_secs(60), async {
                while !done(&outcomes.lock().unwrap()) {
                    progress.notified().await;
                }
            })
            .await
            .unwrap_or_else(|_| panic!("timed out waiting for {what}"));
        }
    };

    // One active rollout per service is the store's rule, and an older
    // revision never follows a newer one. Whichever revision came first
    // got its rollout. If that was the newer one, every event of the older
    // is refused as superseded; if the older, the newer waits for it.
    wait_until(
        "one rollout, and the other revision waiting or refused",
        Box::new(|o| o.created.len() == 1 && (!o.waited.is_empty() || !o.refused.is_empty())),
    )
    .await;
    let (first, first_id) = outcomes.lock().unwrap().created[0].clone();
    let newer_first = first_id == "green-app-green-2";
    let store = DynamoStore::new(&store_sdk, &table);
    let records = store.list_for_service("green-app", 10).await.unwrap();
    assert_eq!(
        records
            .iter()
            .map(|r| (r.id.as_str(), r.active))
            .collect::<Vec<_>>(),
        [(first_id.as_str(), true)]
    );
    let engine = Engine::new(
        Arc::new(DynamoStore::new(&store_sdk, &table)),
        Clock::system(),
        "operator",
        Options::default(),
    );
    if !newer_first {
        for (id, why) in &outcomes.lock().unwrap().waited {
            assert_eq!(id, "green-app-green-2");
            assert_eq!(
                why,
                &format!("the service has an active rollout `{first_id}`")
            );
        }
        // The first rollout ends (an operator aborts it before traffic
        // moved); the waiting revision's next delivery creates its rollout.
        let (record, mut rollout) = engine.load(&first_id).await.unwrap();
        let now = engine.now();
        assert!(rollout
            .handle(now, Input::Command(Command::Abort))
            .is_empty());
        assert!(matches!(rollout.phase, Phase::Aborted { .. }));
        store
            .update(
                &first_id,
                record.version,
                &serde_json::to_string(&rollout).unwrap(),
                false,
                now,
            )
            .await
            .unwrap();
        wait_until(
            "the waiting revision's rollout",
            Box::new(|o| o.created.len() == 2),
        )
        .await;
    }
    // Every copy of every event is handled, then none is left.
    tokio::time::timeout(Duration::from_secs(60), async {
        while queue_len(&sqs, &url).await > 0 {
            progress.notified().await;
        }
    })
    .await
    .expect("the queue drains");
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    while let Some(result) = tasks.join_next().await {
        result.unwrap();
    }

    // One rollout per revision that may run, never two, each of its own
    // revision; the older revision's only if it came first.
    let outcomes = std::mem::take(&mut *outcomes.lock().unwrap());
    let mut created: Vec<&str> = outcomes.created.iter().map(|(_, id)| id.as_str()).collect();
    created.sort_unstable();
    let expected: &[&str] = if newer_first {
        &["green-app-green-2"]
    } else {
        &["green-app-green-1", "green-app-green-2"]
    };
    assert_eq!(created, expected);
    for (id, why) in &outcomes.refused {
        assert_eq!(id, "green-app-green-1");
        assert!(
            why.ends_with("is superseded: the service has a rollout of revision 2"),
            "{why}"
        );
    }
    assert_eq!(newer_first, !outcomes.refused.is_empty());
    let mut records = store.list_for_service("green-app", 10).await.unwrap();
    records.sort_by(|a, b| a.id.cmp(&b.id));
    let ids: Vec<&str> = records.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(ids, expected);
    for record in &records {
        let (_, rollout) = engine.load(&record.id).await.unwrap();
        let arn = if record.id.ends_with('1') {
            &rev1
        } else {
            &rev2
        };
        assert_eq!(
            rollout.plan.release,
            Some(Release::TaskDefinition(arn.clone()))
        );
        assert_eq!(record.active, record.id == "green-app-green-2");
    }

    // A late redelivery of either revision starts nothing.
    send(&sqs, &url, &event("green-app", &rev1, "t9", 7, "RUNNING")).await;
    send(&sqs, &url, &event("green-app", &rev2, "t9", 8, "RUNNING")).await;
    let mut late = Watcher::new(
        &sdk,
        ecs_trigger(&url),
        Arc::new(DynamoStore::new(&store_sdk, &table)),
        "late",
    )
    .with_wait(Duration::from_secs(1));
    let mut handled = 0;
    for _ in 0..5 {
        let report = late
            .poll_once(|request| {
                let engine = &engine;
                async move {
                    let plan = triggered_plan(&request);
                    start_rollout(engine, plan, &request).await
                }
            })
            .await
            .unwrap();
        assert_eq!(report.started, 0, "{report:?}");
        handled += report.duplicates + report.refused.len();
        if handled == 2 {
            break;
        }
    }
    assert_eq!(handled, 2);
    assert_eq!(first.service, "green-app");
    assert_eq!(
        store.list_for_service("green-app", 10).await.unwrap().len(),
        expected.len()
    );
}

/// A start request for revision `n` of the `green` family, as a watcher
/// hands it out.
fn revision_request(n: u32) -> StartRequest {
    StartRequest {
        service: "green-app".into(),
        task_definition_arn: task_def("green", n),
        event_time: cutover_core::Timestamp::from_millis(0),
        cluster_arn: "prod".into(),
        task_arn: format!("t{n}"),
        claim_key: cutover_aws::trigger::claim_key("green-app", &task_def("green", n)),
        claim_won: true,
    }
}

#[tokio::test]
async fn an_older_revision_never_starts_after_a_newer_one() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> =
        Arc::new(cutover_engine::store::SqliteStore::open(&dir.path().join("db")).unwrap());
    let engine = Engine::new(
        store.clone(),
        Clock::system(),
        "watcher",
        Options::default(),
    );
    let start = |n| {
        let request = revision_request(n);
        let engine = &engine;
        async move { start_rollout(engine, triggered_plan(&request), &request).await }
    };
    assert_eq!(start(3).await, StartOutcome::Created);
    assert_eq!(start(3).await, StartOutcome::Exists);
    // Revision 4 came while 3 runs: it waits.
    assert_eq!(
        start(4).await,
        StartOutcome::Later("the service has an active rollout `green-app-green-3`".into())
    );
    // Revision 2 (a late or retried event) would deploy an older version
    // after a newer one: refused for good, busy service or not.
    let refused = |n: u32, newer: u32| {
        StartOutcome::Refused(format!(
            "`{}` is superseded: the service has a rollout of revision {newer}",
            task_def("green", n)
        ))
    };
    assert_eq!(start(2).await, refused(2, 3));

    // Revision 3 ends; 4 starts; then neither 2 nor 3 may come back.
    let (record, mut rollout) = engine.load("green-app-green-3").await.unwrap();
    let now = engine.now();
    rollout.handle(now, Input::Command(Command::Abort));
    store
        .update(
            &record.id,
            record.version,
            &serde_json::to_string(&rollout).unwrap(),
            false,
            now,
        )
        .await
        .unwrap();
    assert_eq!(start(4).await, StartOutcome::Created);
    assert_eq!(
        start(3).await,
        StartOutcome::Exists,
        "its own rollout first"
    );
    assert_eq!(start(2).await, refused(2, 4));
    let ids: Vec<String> = store
        .list_for_service("green-app", 10)
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.id)
        .collect();
    assert_eq!(ids.len(), 2, "{ids:?}");
}
