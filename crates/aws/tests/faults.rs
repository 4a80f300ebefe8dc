//! Faults between cutover and AWS: the real adapters and the real engine on
//! moto, every AWS call (router, checks, DynamoDB store) going through a
//! [`FaultProxy`] that throttles, fails, hangs, drops and loses replies on
//! the operations each test names.
//!
//! Each test asserts the time from the fault to the next action or to a
//! safe state against the limit the plan states, and that what cutover
//! reports is what moto has, read by the test itself. The measured times
//! are printed (`FIGURE ...` lines, `--nocapture`).

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use common::fixtures::{alb_dims, alb_traffic, Alb, Zone};
use cutover_aws::dynamodb::DynamoStore;
use cutover_core::plan::RouterConfig;
use cutover_core::{Command, Rollout, Split};
use cutover_engine::ports::Router;
use cutover_engine::Adapters;
use cutover_testkit::{figure, Driven, Fault, FaultProxy, On};

const TICK: Duration = Duration::from_millis(200);

/// What moto has, read straight from it (never through the proxy).
enum Truth {
    Zone(Arc<Zone>),
    Alb(Arc<Alb>),
}

impl Truth {
    /// Green's share of the two weights, in basis points.
    async fn green_bp(&self) -> u16 {
        let (g, b) = match self {
            Truth::Zone(z) => z.weights().await,
            Truth::Alb(a) => {
                let (g, b) = a.listener_weights().await;
                (i64::from(g), i64::from(b))
            }
        };
        if g + b == 0 {
            return 0;
        }
        (g * 10_000 / (g + b)) as u16
    }
}

/// One rollout wired through a fault proxy.
struct Rig {
    proxy: FaultProxy,
    truth: Truth,
    run: Driven,
}

/// Green's health, as the alb-error-rate check will read it.
#[derive(Clone, Copy, PartialEq)]
enum Green {
    Healthy,
    Failing,
}

/// `[[analysis.checks]]` reading metrics published for green now.
async fn check(green: Green) -> String {
    let lb = format!("app/{}/50dc6c495c0c9188", common::unique("alb"));
    let tg = format!("targetgroup/{}/943f017f100becff", common::unique("green"));
    let cw = aws_sdk_cloudwatch::Client::new(&common::sdk().await);
    let errors = if green == Green::Failing { 30.0 } else { 0.0 };
    let at = SystemTime::now() - Duration::from_secs(5);
    alb_traffic(&cw, &alb_dims(&lb, &tg), at, 200.0, Some(errors)).await;
    format!(
        r#"[[analysis.checks]]
kind = "alb-error-rate"
load_balancer = "{lb}"
target_group = "{tg}"
max_percent = 5
min_requests = 50"#
    )
}

impl Rig {
    /// A route53 rollout of 10 / 50 / 100 % with `hold` each, blue 100 /
    /// green 0 to start, `extra` TOML appended to the plan.
    async fn route53(green: Green, hold: &str, extra: &str) -> Rig {
        Rig::route53_with(green, hold, extra, &[]).await
    }

    /// The same with faults injected before the rollout is created.
    async fn route53_with(green: Green, hold: &str, extra: &str, pre: &[(On, Fault)]) -> Rig {
        let zone = Zone::new().await;
        zone.create(vec![
            zone.plain("blue", 100, 1, "192.0.2.10"),
            zone.plain("green", 0, 1, "192.0.2.20"),
        ])
        .await;
        let router = format!(
            "kind = \"route53\"\nhosted_zone_id = \"{}\"\nrecord_name = \"{}\"\ninsync_timeout = \"10s\"",
            zone.id, zone.record
        );
        let checks = check(green).await;
        Rig::new(
            Truth::Zone(Arc::new(zone)),
            &router,
            &checks,
            hold,
            extra,
            pre,
        )
        .await
    }

    /// The same on an ALB listener (blue 100 / green 0).
    async fn alb(green: Green, hold: &str, extra: &str) -> Rig {
        let checks = check(green).await;
        Rig::alb_checking(|_| checks.clone(), hold, extra).await
    }

    /// An ALB rollout whose checks `checks` writes, given the ALB.
    async fn alb_checking(checks: impl FnOnce(&Alb) -> String, hold: &str, extra: &str) -> Rig {
        let alb = Alb::new().await;
        let router = format!(
            "kind = \"alb\"\nlistener_arn = \"{}\"\nblue_target_group_arn = \"{}\"\ngreen_target_group_arn = \"{}\"",
            alb.listener, alb.blue, alb.green
        );
        let checks = checks(&alb);
        Rig::new(
            Truth::Alb(Arc::new(alb)),
            &router,
            &checks,
            hold,
            extra,
            &[],
        )
        .await
    }

    async fn new(
        truth: Truth,
        router: &str,
        checks: &str,
        hold: &str,
        extra: &str,
        pre: &[(On, Fault)],
    ) -> Rig {
        let proxy = FaultProxy::start(&common::cbor_shim::url()).await;
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
  {{ split = 10, hold = "{hold}" }},
  {{ split = 50, hold = "{hold}" }},
  {{ split = 100, hold = "{hold}" }},
]

[analysis]
interval = "500ms"

{checks}

{extra}
"#,
            endpoint = proxy.url(),
        );
        let plan = cutover_core::plan::parse(&text, "faults.toml")
            .unwrap_or_else(|e| panic!("{e}\n{text}"));
        let sdk = cutover_aws::config::load(&plan.aws).await;
        let router: Arc<dyn Router> = match &plan.router {
            RouterConfig::Route53(r) => Arc::new(cutover_aws::route53::Route53Router::new(r, &sdk)),
            RouterConfig::Alb(a) => Arc::new(cutover_aws::alb::AlbRouter::new(a, &sdk)),
            other => panic!("not an AWS router: {other:?}"),
        };
        let checks = plan
            .analysis
            .checks
            .iter()
            .map(|spec| cutover_aws::checks::build_check(spec, &sdk).expect("an AWS check"))
            .collect();
        let adapters = Adapters {
            router,
            checks,
            platform: None,
        };
        // The store reaches moto through the same proxy.
        let mut store_aws = common::aws();
        store_aws.endpoint_url = Some(proxy.url());
        let store = DynamoStore::new(
            &cutover_aws::config::load(&store_aws).await,
            &common::unique("faults"),
        );
        store.create_table().await.unwrap();
        for (on, fault) in pre {
            proxy.inject(on.clone(), *fault);
        }
        let id = common::unique("web");
        let run = Driven::create(Arc::new(store), plan, adapters, &id, TICK).await;
        Rig { proxy, truth, run }
    }

    /// Asserts the rollout as stored says what moto has.
    async fn assert_reported_is_true(&self, rollout: &Rollout) {
        let truth = self.truth.green_bp().await;
        assert_eq!(
            rollout.split.basis_points(),
            truth,
            "cutover reports {} ({}) but the router has {} bp green",
            rollout.split,
            rollout.phase.name(),
            truth
        );
        let stored = self.run.stored().await;
        assert_eq!(stored.split, rollout.split, "the store says the same");
    }

    /// The sum of the "N requests" of every line about a failed or
    /// throttled call (the terminal line, which repeats the reason, aside).
    async fn requests_reported(&self) -> usize {
        self.run
            .history()
            .await
            .iter()
            .filter(|e| !e.message.starts_with(&format!("{}:", e.phase)))
            .filter_map(|e| {
                assert!(
                    e.message.len() < 400
                        && !e.message.contains("ServiceError")
                        && !e.message.contains('\n'),
                    "concise: {}",
                    e.message
                );
                requests_in(&e.message)
            })
            .sum()
    }
}

const R53_WRITE: &str = "ChangeResourceRecordSets";
const ALB_WRITE: &str = "ModifyListener";

// ---------------------------------------------------------------- hangs

/// A router write that never answers is cut at `router_write` (2 s), read
/// back, and retried: the rollout goes on instead of stalling.
async fn a_hung_write_is_cut_and_retried(rig: Rig, write: &str, router: &str) {
    rig.proxy
        .inject(On::op(write).after(1).times(1), Fault::Hang);
    let driving = rig.run.drive();
    let hung = rig
        .proxy
        .wait_for(write, 2, Duration::from_secs(30))
        .await
        .at;
    let retried = rig
        .proxy
        .wait_for(write, 3, Duration::from_secs(30))
        .await
        .at;
    let end = driving.await.unwrap();
    figure(&format!("{router} write hang -> retried"), retried - hung);
    assert!(
        retried - hung <= Duration::from_secs(2) + Duration::from_millis(1500),
        "the hung write was retried {:?} after it was sent",
        retried - hung
    );
    assert_eq!(end.phase.name(), "succeeded");
    rig.assert_reported_is_true(&end).await;
    assert!(
        rig.run.history_says("no answer within 2s").await,
        "the cut is in the history"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_route53_write_is_cut_at_its_limit_and_the_rollout_goes_on() {
    let rig = Rig::route53(Green::Healthy, "1s", "[timeouts]\nrouter_write = \"2s\"").await;
    a_hung_write_is_cut_and_retried(rig, R53_WRITE, "route53").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_alb_write_is_cut_at_its_limit_and_the_rollout_goes_on() {
    let rig = Rig::alb(Green::Healthy, "1s", "[timeouts]\nrouter_write = \"2s\"").await;
    a_hung_write_is_cut_and_retried(rig, ALB_WRITE, "alb").await;
}

/// A failing green whose rollback write hangs: the write is cut at its
/// limit and retried, and blue is restored within the limit, not after an
/// operator steps in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_rollback_write_is_retried_and_blue_is_restored_within_its_limit() {
    let rig = Rig::route53(Green::Failing, "2s", "[timeouts]\nrouter_write = \"2s\"").await;
    // Write 1 is 10 %, write 2 the rollback.
    rig.proxy
        .inject(On::op(R53_WRITE).after(1).times(1), Fault::Hang);
    let driving = rig.run.drive();
    let end = driving.await.unwrap();
    let hung = rig.proxy.at(R53_WRITE, 2);
    let restored = rig.proxy.at(R53_WRITE, 3);
    figure("route53 rollback hang -> blue restored", restored - hung);
    assert!(
        restored - hung <= Duration::from_millis(3500),
        "{:?}",
        restored - hung
    );
    assert_eq!(end.phase.name(), "rolled-back");
    rig.assert_reported_is_true(&end).await;
    assert_eq!(end.split, Split::ZERO);
}

/// A check read that never answers is an error at `[timeouts] check`; the
/// inconclusive limit then rolls back within the hold, instead of the hold
/// overrunning for want of a verdict.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_check_read_is_an_error_at_its_limit_and_the_inconclusive_limit_rolls_back() {
    let rig = Rig::route53(Green::Healthy, "30s", "[timeouts]\ncheck = \"1s\"").await;
    rig.proxy.inject(On::op("GetMetricData"), Fault::Hang);
    let end = rig.run.drive().await.unwrap();
    let hung = rig.proxy.at("GetMetricData", 1);
    let restored = rig.proxy.at(R53_WRITE, 2);
    figure("check read hang -> blue restored", restored - hung);
    // Four analyses in a row inconclusive (the default limit is 3), each
    // three tries cut at 1 s with 200 and 400 ms between them, 500 ms
    // apart: 4 x 4.1 s.
    let per_analysis = 3 * Duration::from_secs(1) + Duration::from_millis(600 + 500);
    let bound = 4 * per_analysis + Duration::from_secs(1);
    assert!(restored - hung <= bound, "{:?}", restored - hung);
    assert_eq!(end.phase.name(), "rolled-back");
    let reason = end.phase.reason().unwrap();
    assert!(
        reason.contains("inconclusive") && reason.contains("no answer within 1s"),
        "{reason}"
    );
    rig.assert_reported_is_true(&end).await;
}

/// The same with DescribeTargetHealth (the `target-health` check on the
/// ALB router) hanging after the preflight's read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_target_health_read_is_an_error_at_its_limit_and_the_inconclusive_limit_rolls_back()
{
    let rig = Rig::alb_checking(
        |alb| {
            format!(
                "[[analysis.checks]]\nkind = \"target-health\"\ntarget_group_arn = \"{}\"",
                alb.green
            )
        },
        "30s",
        "[timeouts]\ncheck = \"1s\"",
    )
    .await;
    rig.proxy
        .inject(On::op("DescribeTargetHealth").after(1), Fault::Hang);
    let end = rig.run.drive().await.unwrap();
    let hung = rig.proxy.at("DescribeTargetHealth", 2);
    let restored = rig.proxy.at(ALB_WRITE, 2);
    figure("target health read hang -> blue restored", restored - hung);
    let per_analysis = 3 * Duration::from_secs(1) + Duration::from_millis(600 + 500);
    let bound = 4 * per_analysis + Duration::from_secs(1);
    assert!(restored - hung <= bound, "{:?}", restored - hung);
    assert_eq!(end.phase.name(), "rolled-back");
    rig.assert_reported_is_true(&end).await;
}

/// An abort posted while a router write hangs takes effect within a tick:
/// the write is cut, read back, and blue restored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abort_during_a_hung_write_takes_effect_within_a_tick() {
    let rig = Rig::route53(Green::Healthy, "1s", "[timeouts]\nrouter_write = \"5m\"").await;
    rig.proxy
        .inject(On::op(R53_WRITE).after(1).times(1), Fault::Hang);
    let driving = rig.run.drive();
    rig.proxy
        .wait_for(R53_WRITE, 2, Duration::from_secs(30))
        .await;
    let posted = Instant::now();
    rig.run.post(Command::Abort).await;
    let restored = rig
        .proxy
        .wait_for(R53_WRITE, 3, Duration::from_secs(30))
        .await
        .at;
    let end = driving.await.unwrap();
    figure(
        "abort during route53 write hang -> blue write sent",
        restored - posted,
    );
    // A tick to see the command, a read-back, then the write.
    assert!(
        restored - posted <= TICK + Duration::from_millis(800),
        "the abort took {:?}",
        restored - posted
    );
    assert_eq!(end.phase.name(), "aborted");
    rig.assert_reported_is_true(&end).await;
    assert_eq!(end.split, Split::ZERO);
}

// ---------------------------------------------------------------- replies lost

/// A router write that lands but whose reply is lost: cutover reads the
/// router back and reports the split it really has, not the one it last
/// confirmed.
async fn a_lost_reply_is_read_back(mut rig: Rig, write: &str) {
    // Write 2 (50 %) lands at moto; its reply never comes.
    rig.proxy
        .inject(On::op(write).after(1).times(1), Fault::ReplyLost);
    let driving = rig.run.drive();
    let lost = rig
        .proxy
        .wait_for(write, 2, Duration::from_secs(30))
        .await
        .at;
    // The first commit after the lost reply: what cutover says then is
    // what the router has (the 3 s hold leaves time to read moto).
    let (at, said) = rig.run.next_after(lost).await;
    figure(&format!("{write} reply lost -> split reported"), at - lost);
    rig.assert_reported_is_true(&said).await;
    assert_eq!(said.split.basis_points(), 5_000, "{:?}", said.phase);
    let end = driving.await.unwrap();
    assert_eq!(end.phase.name(), "succeeded");
    rig.assert_reported_is_true(&end).await;
    // The lost write was not taken for a failure that needed a rollback.
    assert_eq!(
        rig.proxy.seen_op(write).len(),
        3,
        "10 %, 50 % (lost reply), 100 %"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route53_write_whose_reply_is_lost_is_reported_as_route53_has_it() {
    a_lost_reply_is_read_back(Rig::route53(Green::Healthy, "3s", "").await, R53_WRITE).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_alb_write_whose_reply_is_lost_is_reported_as_the_listener_has_it() {
    a_lost_reply_is_read_back(Rig::alb(Green::Healthy, "3s", "").await, ALB_WRITE).await;
}

/// A change Route53 accepted (PENDING, as Route53 answers; moto says
/// INSYNC at once, so the proxy rewrites it) while every GetChange is
/// throttled: the split reported is the one the records have.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_accepted_while_getchange_is_throttled_is_reported_as_route53_has_it() {
    let mut rig = Rig::route53(Green::Healthy, "1s", "").await;
    rig.proxy.inject(
        On::op(R53_WRITE).after(1),
        Fault::Rewrite {
            from: "INSYNC",
            to: "PENDING",
        },
    );
    rig.proxy.inject(On::op("GetChange"), Fault::Throttle);
    let driving = rig.run.drive();
    let throttled = rig
        .proxy
        .wait_for_fault("GetChange", 1, Duration::from_secs(30))
        .await
        .at;
    let (at, said) = rig.run.next_after(throttled).await;
    figure("GetChange throttled -> split reported", at - throttled);
    rig.assert_reported_is_true(&said).await;
    assert_eq!(said.split.basis_points(), 5_000, "{:?}", said.phase);
    rig.proxy.clear();
    let end = driving.await.unwrap();
    rig.assert_reported_is_true(&end).await;
    assert_eq!(end.phase.name(), "succeeded", "{:?}", end.phase);
    let history = rig.run.history().await;
    assert!(
        history
            .iter()
            .any(|e| e.message.contains("GetChange") && e.message.contains("Throttling")),
        "the throttled GetChange is in the history"
    );
}

/// A router write whose connection drops before it reaches Route53: read
/// back, found not landed, retried.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_connection_on_a_write_is_read_back_and_retried() {
    let rig = Rig::route53(Green::Healthy, "1s", "").await;
    rig.proxy
        .inject(On::op(R53_WRITE).after(1).times(1), Fault::Drop);
    let end = rig.run.drive().await.unwrap();
    let dropped = rig.proxy.at(R53_WRITE, 2);
    let retried = rig.proxy.at(R53_WRITE, 3);
    figure("route53 write dropped -> retried", retried - dropped);
    assert!(
        retried - dropped <= Duration::from_secs(1),
        "{:?}",
        retried - dropped
    );
    assert_eq!(end.phase.name(), "succeeded");
    rig.assert_reported_is_true(&end).await;
    // 10 %, 50 % dropped, 50 %, 100 %.
    assert_eq!(rig.proxy.seen_op(R53_WRITE).len(), 4);
}

/// A check read slower than usual but within `[timeouts] check` still
/// gives a verdict; one slower than the limit is an error, never a pass.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delayed_check_read_gives_a_verdict_within_its_limit_and_an_error_past_it() {
    let rig = Rig::route53(Green::Healthy, "1s", "[timeouts]\ncheck = \"1s\"").await;
    // The first read is 300 ms late, the second 2 s (past the limit).
    rig.proxy.inject(
        On::op("GetMetricData").times(1),
        Fault::Delay(Duration::from_millis(300)),
    );
    rig.proxy.inject(
        On::op("GetMetricData").times(1),
        Fault::Delay(Duration::from_secs(2)),
    );
    let end = rig.run.drive().await.unwrap();
    assert_eq!(end.phase.name(), "succeeded");
    let history = rig.run.history().await;
    let verdicts: Vec<String> = history
        .iter()
        .flat_map(|e| &e.observations)
        .map(|o| o.to_string())
        .collect();
    assert!(verdicts[0].contains("pass"), "{verdicts:?}");
    assert!(
        verdicts[1].contains("error") && verdicts[1].contains("no answer within 1s")
            || verdicts[1].contains("pass"),
        "{verdicts:?}"
    );
    rig.assert_reported_is_true(&end).await;
}

/// Store writes failing with 500 for a while: retried with back-off, and
/// the rollout goes on where it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_writes_failing_with_5xx_are_retried_and_the_rollout_goes_on() {
    let rig = Rig::route53(Green::Healthy, "1s", "").await;
    rig.proxy.inject(
        On::op("TransactWriteItems").after(3).times(4),
        Fault::Status(500),
    );
    let end = rig.run.drive().await.unwrap();
    assert_eq!(end.phase.name(), "succeeded");
    rig.assert_reported_is_true(&end).await;
    let faulted = rig
        .proxy
        .seen_op("TransactWriteItems")
        .iter()
        .filter(|s| s.fault.is_some())
        .count();
    assert_eq!(faulted, 4);
    let history = rig.run.history().await;
    for (i, e) in history.iter().enumerate() {
        assert_eq!(e.seq, i as u64 + 1, "nothing lost, nothing twice");
    }
}

// ---------------------------------------------------------------- throttling

/// The number in "N requests" of a history line.
fn requests_in(message: &str) -> Option<usize> {
    let (before, _) = message.split_once(" requests")?;
    before
        .rsplit(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

/// Throttling absorbed inside one call leaves one concise line in the
/// history, counting the requests really sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttling_absorbed_inside_a_call_is_one_concise_line_counting_requests() {
    let rig = Rig::route53(Green::Healthy, "1s", "").await;
    // The 50 % write is throttled twice, then lands.
    rig.proxy
        .inject(On::op(R53_WRITE).after(1).times(2), Fault::Throttle);
    let end = rig.run.drive().await.unwrap();
    assert_eq!(end.phase.name(), "succeeded");
    rig.assert_reported_is_true(&end).await;
    // 10 %, 50 % three times (two throttled), 100 %.
    assert_eq!(rig.proxy.seen_op(R53_WRITE).len(), 5);
    let history = rig.run.history().await;
    let lines: Vec<&str> = history
        .iter()
        .map(|e| e.message.as_str())
        .filter(|m| m.contains("Throttling"))
        .collect();
    assert_eq!(lines.len(), 1, "{lines:?}");
    let line = lines[0];
    assert!(line.contains(R53_WRITE), "{line}");
    assert_eq!(requests_in(line), Some(3), "{line}");
    assert!(
        line.len() < 200 && !line.contains("ServiceError"),
        "concise: {line}"
    );
}

/// Throttling that outlasts `adapter_deadline`: every failed call is one
/// concise line whose request count is what the proxy saw, and the
/// rollback is decided at the deadline from the first failure.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttling_past_the_deadline_rolls_back_on_time_and_counts_every_request() {
    let mut rig = Rig::route53(
        Green::Healthy,
        "1s",
        "[rollback]\nadapter_deadline = \"3s\"",
    )
    .await;
    rig.proxy
        .inject(On::op(R53_WRITE).after(1), Fault::Throttle);
    let driving = rig.run.drive();
    let first = rig
        .proxy
        .wait_for(R53_WRITE, 2, Duration::from_secs(30))
        .await
        .at;
    rig.run
        .until("the rollback", |r, _| r.phase.name() == "rolling-back")
        .await;
    let decided = rig.run.entered("rolling-back").await;
    figure(
        "route53 throttled past adapter_deadline -> rollback decided",
        decided - first,
    );
    assert!(
        decided - first <= Duration::from_secs(3) + Duration::from_millis(500),
        "rollback decided {:?} after the first failure",
        decided - first
    );
    rig.proxy.clear();
    let end = driving.await.unwrap();
    assert_eq!(end.phase.name(), "rolled-back");
    rig.assert_reported_is_true(&end).await;
    let throttled = rig
        .proxy
        .seen_op(R53_WRITE)
        .iter()
        .filter(|s| s.fault.is_some())
        .count();
    assert_eq!(
        rig.requests_reported().await,
        throttled,
        "the history counts every throttled request once"
    );
}

// ---------------------------------------------------------------- cannot restore

/// Writes failing with 503: the rollback is decided at `adapter_deadline`
/// from the first failure, the rollback's own retries end at
/// `rollback_deadline`, and then the rollout stays active in
/// `cannot-restore`, saying where traffic is, taking `abort` and
/// `rollback --force`, and restoring blue as soon as it can.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_that_keep_failing_end_in_a_loud_cannot_restore_that_restores_blue_when_it_can() {
    let mut rig = Rig::route53(
        Green::Healthy,
        "1s",
        "[rollback]\nadapter_deadline = \"3s\"\nrollback_deadline = \"3s\"",
    )
    .await;
    rig.proxy
        .inject(On::op(R53_WRITE).after(1), Fault::Status(503));
    let driving = rig.run.drive();
    let first = rig
        .proxy
        .wait_for(R53_WRITE, 2, Duration::from_secs(30))
        .await
        .at;
    let (_, said) = rig
        .run
        .until("cannot-restore", |r, _| r.phase.name() == "cannot-restore")
        .await;
    let decided = rig.run.entered("rolling-back").await;
    let cannot = rig.run.entered("cannot-restore").await;
    figure("route53 503 -> rollback decided", decided - first);
    figure("route53 503 -> cannot-restore", cannot - first);
    assert!(
        decided - first <= Duration::from_millis(3500),
        "{:?}",
        decided - first
    );
    assert!(
        cannot - first <= Duration::from_millis(6500),
        "{:?}",
        cannot - first
    );
    // Still active, and saying the truth: 10 % is still on green.
    let (record, _) = rig.run.engine.load(&rig.run.id).await.unwrap();
    assert!(record.active);
    rig.assert_reported_is_true(&said).await;
    assert_eq!(said.split.basis_points(), 1_000);
    // `abort` is taken (keep trying), not refused.
    rig.run.post(Command::Abort).await;
    let writes = rig.proxy.seen_op(R53_WRITE).len();
    rig.proxy
        .wait_for(R53_WRITE, writes + 1, Duration::from_secs(40))
        .await;
    // Route53 works again; `rollback --force` tries at once.
    rig.proxy.clear();
    let forced = Instant::now();
    rig.run.post(Command::Rollback).await;
    let end = driving.await.unwrap();
    let restored = rig.proxy.seen_op(R53_WRITE).last().unwrap().at;
    figure(
        "rollback --force in cannot-restore -> blue write",
        restored.saturating_duration_since(forced),
    );
    assert!(restored.saturating_duration_since(forced) <= TICK + Duration::from_millis(800));
    assert!(
        matches!(end.phase.name(), "aborted" | "rolled-back"),
        "{:?}",
        end.phase
    );
    rig.assert_reported_is_true(&end).await;
    assert_eq!(end.split, Split::ZERO);
}

// ---------------------------------------------------------------- store faults

/// A failing green while the DynamoDB store is throttled: the rollback is
/// applied first, the store write retried within the lease, and the run
/// ends rolled back, with the check that failed on record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_throttled_while_a_rollback_is_due_does_not_hold_the_rollback_back() {
    let mut rig = Rig::route53(Green::Failing, "5s", "").await;
    let driving = rig.run.drive();
    // The first analysis reads the metrics: from now, every store write
    // is throttled.
    let analysed = rig
        .proxy
        .wait_for("GetMetricData", 1, Duration::from_secs(30))
        .await
        .at;
    for op in ["TransactWriteItems", "UpdateItem", "PutItem"] {
        rig.proxy.inject(On::op(op), Fault::Throttle);
    }
    let restored = rig
        .proxy
        .wait_for(R53_WRITE, 2, Duration::from_secs(30))
        .await
        .at;
    figure(
        "store throttled, failing analysis -> blue write",
        restored - analysed,
    );
    assert!(
        restored - analysed <= Duration::from_secs(2),
        "{:?}",
        restored - analysed
    );
    // Read moto once it has applied the write (it applies the two
    // records one after the other).
    rig.proxy
        .wait_applied(R53_WRITE, 2, Duration::from_secs(30))
        .await;
    assert_eq!(
        rig.truth.green_bp().await,
        0,
        "blue restored while the store was throttled"
    );
    // A few seconds of throttling, well within the 15 s lease.
    rig.proxy
        .wait_for_fault("TransactWriteItems", 3, Duration::from_secs(30))
        .await;
    rig.proxy.clear();
    let end = driving.await.unwrap();
    assert_eq!(end.phase.name(), "rolled-back");
    rig.assert_reported_is_true(&end).await;
    let reason = end.phase.reason().unwrap();
    assert!(
        reason.contains("alb-error-rate") && reason.contains("15 %"),
        "{reason}"
    );
    let (record, _) = rig.run.engine.load(&rig.run.id).await.unwrap();
    assert!(!record.active);
    let _ = &mut rig;
}

/// A store write that lands with its reply lost is recognised as the
/// driver's own, not reported as a conflict.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_write_whose_reply_is_lost_is_recognised_as_its_own() {
    let rig = Rig::route53(Green::Healthy, "1s", "").await;
    rig.proxy.inject(
        On::op("TransactWriteItems").after(2).times(1),
        Fault::ReplyLost,
    );
    let end = rig.run.drive().await.unwrap();
    assert_eq!(end.phase.name(), "succeeded");
    rig.assert_reported_is_true(&end).await;
    assert!(rig
        .proxy
        .seen_op("TransactWriteItems")
        .iter()
        .any(|s| s.fault == Some(Fault::ReplyLost)));
    // One event per sequence number: nothing written twice.
    let history = rig.run.history().await;
    for (i, e) in history.iter().enumerate() {
        assert_eq!(e.seq, i as u64 + 1);
    }
}

/// A create that lands with its reply lost is the creator's own rollout,
/// not "a rollout with this id already exists".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_create_whose_reply_is_lost_is_recognised_as_its_own() {
    let rig = Rig::route53_with(
        Green::Healthy,
        "1s",
        "",
        &[(On::op("TransactWriteItems").times(1), Fault::ReplyLost)],
    )
    .await;
    assert_eq!(
        rig.proxy.seen_op("TransactWriteItems")[0].fault,
        Some(Fault::ReplyLost)
    );
    let end = rig.run.drive().await.unwrap();
    assert_eq!(end.phase.name(), "succeeded");
    rig.assert_reported_is_true(&end).await;
}
