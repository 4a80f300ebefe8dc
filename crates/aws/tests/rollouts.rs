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
use common::fixtures::{alb_dims, alb_traffic, Alb, Zone};
use cutover_aws::dynamodb::DynamoStore;
use cutover_core::plan::RouterConfig;
use cutover_core::{Phase, Rollout, Split, Verdict};
use cutover_engine::ports::{AdapterError, Router};
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
    recording: Arc<Recording>,
    elapsed: Duration,
}

/// Builds the plan's adapters from the plan itself (as `cutover run` does),
/// wraps the router in a [`Recording`], and drives a new rollout to its
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
    let adapters = Adapters {
        router: recording.clone(),
        checks,
        platform: None,
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
    engine.create(&id, plan, false).await.unwrap();
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
    for e in &rollout.history {
        eprintln!("{:?} {} {}: {}", e.at, e.phase, e.split, e.message);
        for o in &e.observations {
            eprintln!("    {o}");
        }
    }
    eprintln!("rollout took {elapsed:?}");
    Run {
        rollout,
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
fn observed(rollout: &Rollout, check: &str, verdict: Verdict) -> Vec<String> {
    rollout
        .history
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
        .rollout
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
    let zone = Zone::new().await;
    zone.create(vec![
        zone.plain("blue", 100, 1, "192.0.2.10"),
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
    // Route53 weights out of 100 (see `cutover_aws::route53::route53_weights`).
    assert_eq!(
        run.recording.trail(),
        [(1_000, (10, 90)), (5_000, (50, 50)), (10_000, (100, 0))]
    );
    for a in run.recording.log() {
        let (g, b) = cutover_aws::route53::route53_weights(a.asked);
        assert_eq!(a.weights, (i64::from(g), i64::from(b)));
    }
    assert_applies_held(&run.recording.log());
    let (green, blue) = zone.weights().await;
    assert!(green > 0 && blue == 0, "green {green} blue {blue}");
    // Every step was judged healthy on the real metrics.
    let passes = observed(&run.rollout, "alb-error-rate", Verdict::Pass);
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
    let zone = zone().await;
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
    // The first analysis failed: 10 % never became 50 %.
    assert_eq!(run.recording.trail(), [(1_000, (10, 90)), (0, (0, 100))]);
    assert_eq!(zone.weights().await, (0, 100));
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
    // ALB weights out of 1000 (at most 999 each).
    assert_eq!(
        run.recording.trail(),
        [(1_000, (100, 900)), (5_000, (500, 500)), (10_000, (999, 0))]
    );
    assert_applies_held(&run.recording.log());
    let (green, blue) = alb.listener_weights().await;
    assert!(green > 0 && blue == 0, "green {green} blue {blue}");
    let passes = observed(&run.rollout, "alb-error-rate", Verdict::Pass);
    assert!(passes.len() >= 3, "{passes:?}");
    assert!(
        passes[0].contains("green error rate 0 % <= 5 %"),
        "{}",
        passes[0]
    );
    assert!(observed(&run.rollout, "green-requests", Verdict::Pass).len() >= 3);
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
    assert_eq!(run.recording.trail(), [(1_000, (100, 900)), (0, (0, 999))]);
    assert_eq!(alb.listener_weights().await, (0, 999));
    assert_first_analysis_failed(&run);
}
