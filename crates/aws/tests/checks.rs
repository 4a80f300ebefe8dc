//! The AWS checks against a real moto server, through the real SDK.
//!
//! What moto cannot emulate is tested on the pure judging functions:
//! percentile statistics (moto answers GetMetricData with `pNN` with an
//! HTTP 500: the checks report `error`, tested here too), target states
//! other than healthy/unused (moto reports every registered target
//! healthy unless its EC2 instance is stopped), ECS stop codes, stop
//! times and exit codes (moto has none of them).

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_sdk_cloudwatch::types::{ComparisonOperator, StateValue, Statistic};
use aws_sdk_ecs::types::{
    Container, ContainerDefinition, Deployment, DeploymentRolloutState, LaunchType, Service, Task,
    TaskStopCode,
};
use aws_sdk_elasticloadbalancingv2::types::{
    TargetDescription, TargetHealth, TargetHealthDescription, TargetHealthReasonEnum,
    TargetHealthStateEnum,
};
use common::fixtures::{alb_dims, alb_traffic, ec2, put_metric as put, run_instance, xml_values};
use common::sdk;
use cutover_aws::checks::{self, Clock};
use cutover_core::plan::{CheckConfig, CheckSpec, CompareToBlue};
use cutover_core::{Observation, Verdict};
use cutover_engine::ports::{Check, CheckContext};

/// The SDK config without retries: for calls expected to fail.
async fn sdk_no_retry() -> aws_config::SdkConfig {
    sdk()
        .await
        .to_builder()
        .retry_config(aws_config::retry::RetryConfig::disabled())
        .build()
}

fn fixed(at: SystemTime) -> Clock {
    Arc::new(move || at)
}

fn build(config: CheckConfig, sdk: &aws_config::SdkConfig, clock: Clock) -> Arc<dyn Check> {
    let spec = CheckSpec {
        name: config.kind().to_string(),
        config,
    };
    checks::build_check_with_clock(&spec, sdk, clock).expect("an AWS check")
}

fn assert_verdict(o: &Observation, verdict: Verdict, contains: &[&str]) {
    eprintln!("{o}");
    assert_eq!(o.verdict, verdict, "{o}");
    for c in contains {
        assert!(o.detail.contains(c), "{c:?} not in {o}");
    }
}

// ---------------------------------------------------------------- metrics

struct Alb {
    cw: aws_sdk_cloudwatch::Client,
    lb: String,
    green: String,
    blue: String,
    now: SystemTime,
}

impl Alb {
    async fn new() -> Alb {
        Alb {
            cw: aws_sdk_cloudwatch::Client::new(&sdk().await),
            lb: format!("app/{}/50dc6c495c0c9188", common::unique("alb")),
            green: format!("targetgroup/{}/943f017f100becff", common::unique("green")),
            blue: format!("targetgroup/{}/843f017f100becff", common::unique("blue")),
            now: SystemTime::now(),
        }
    }

    fn dims(&self, tg: &str) -> BTreeMap<String, String> {
        alb_dims(&self.lb, tg)
    }

    fn ago(&self, secs: u64) -> SystemTime {
        self.now - Duration::from_secs(secs)
    }

    /// Requests and 5xx of one target group, `secs` ago (5xx `None`: not published).
    async fn traffic(&self, tg: &str, secs: u64, requests: f64, errors: Option<f64>) {
        alb_traffic(&self.cw, &self.dims(tg), self.ago(secs), requests, errors).await;
    }

    async fn error_rate(&self, max_percent: f64, min_requests: u64, compare: bool) -> Observation {
        let config = CheckConfig::AlbErrorRate {
            load_balancer: self.lb.clone(),
            target_group: self.green.clone(),
            max_percent,
            min_requests,
            window: Duration::from_secs(300),
            compare: compare.then(|| CompareToBlue {
                blue_dimensions: self.dims(&self.blue),
                max_ratio: 1.5,
            }),
        };
        build(config, &sdk().await, fixed(self.now))
            .evaluate(&look())
            .await
    }
}

impl Alb {
    /// The start of the minute `n` minutes before the one `now` is in.
    fn minute(&self, n: u64) -> u64 {
        let now = self.now.duration_since(UNIX_EPOCH).unwrap().as_secs();
        (now / 60 - n) * 60
    }

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    async fn sequential(&self) -> Arc<dyn Check> {
        let config = CheckConfig::AlbSequentialErrorRate {
            load_balancer: self.lb.clone(),
            target_group: self.green.clone(),
            blue_load_balancer: self.lb.clone(),
            blue_target_group: self.blue.clone(),
            settle: Duration::from_secs(60),
            settings: cutover_core::judge::Settings::default(),
        };
        let spec = CheckSpec {
            name: "errors".into(),
            config,
        };
        checks::build_check(&spec, &sdk().await).expect("an AWS check")
    }
}

/// A look at `now` (seconds) at a 10 % split that took effect at `since`,
/// in a hold that ends at `ends`.
fn look_at(now: u64, since: u64, ends: u64) -> CheckContext {
    let t = |s: u64| cutover_core::Timestamp(s * 1000);
    CheckContext {
        now: t(now),
        started_at: Some(t(since)),
        split: cutover_core::Split::from_percent(10.0).unwrap(),
        split_since: t(since),
        hold_ends_at: Some(t(ends)),
        answer_by: t(now),
    }
}

/// `alb-sequential-error-rate` on moto's CloudWatch: the minute the shift
/// falls in is never counted (here green failed every request in it), the
/// whole minutes after it are read once each, a minute after `settle`, and
/// the evidence grows across looks until the step may pass; a green
/// failing ten times as often as blue fails at its first minute.
#[tokio::test]
async fn alb_sequential_error_rate_counts_whole_settled_minutes_after_the_shift() {
    let alb = Alb::new().await;
    let m0 = alb.minute(20);
    let shift = m0 + 10;
    // The shift's own minute: mixed, and green failed all it served.
    alb_traffic(
        &alb.cw,
        &alb.dims(&alb.green),
        Alb::at(m0 + 30),
        100.0,
        Some(100.0),
    )
    .await;
    alb_traffic(&alb.cw, &alb.dims(&alb.blue), Alb::at(m0 + 30), 900.0, None).await;
    // Five healthy minutes after it: both fail 0.5 %.
    for k in 1..=5 {
        let m = m0 + 60 * k;
        alb_traffic(
            &alb.cw,
            &alb.dims(&alb.green),
            Alb::at(m + 5),
            1000.0,
            Some(5.0),
        )
        .await;
        alb_traffic(
            &alb.cw,
            &alb.dims(&alb.blue),
            Alb::at(m + 5),
            9000.0,
            Some(45.0),
        )
        .await;
    }
    let check = alb.sequential().await;
    let ends = m0 + 600;
    // Before the first whole minute has settled: nothing read yet, and
    // nothing against green so far (mid-hold, that is a pass).
    let o = check.evaluate(&look_at(m0 + 119, shift, ends)).await;
    assert_verdict(
        &o,
        Verdict::Pass,
        &["no evidence against green so far", "read 1m after it ends"],
    );
    assert_eq!(o.numbers["green.requests"], 0.0, "{o:?}");
    // Minute 1 only: [m0+60, m0+120) settled at m0+180.
    let o = check.evaluate(&look_at(m0 + 185, shift, ends)).await;
    assert_verdict(&o, Verdict::Pass, &["so far"]);
    assert_eq!(o.numbers["green.requests"], 1000.0, "{o:?}");
    assert_eq!(o.numbers["green.failures"], 5.0, "{o:?}");
    assert_eq!(o.numbers["blue.requests"], 9000.0, "{o:?}");
    // The same look again reads nothing new.
    let o = check.evaluate(&look_at(m0 + 190, shift, ends)).await;
    assert_eq!(o.numbers["green.requests"], 1000.0, "{o:?}");
    // Minutes 2 to 5, at the end of the hold: enough to pass.
    let o = check.evaluate(&look_at(ends, shift, ends)).await;
    assert_verdict(
        &o,
        Verdict::Pass,
        &["no evidence green fails more often than blue"],
    );
    assert_eq!(o.numbers["green.requests"], 5000.0, "{o:?}");
    assert_eq!(o.numbers["batches"], 5.0, "{o:?}");
    // The state goes with the rollout: a new driver goes on from it.
    let other = alb.sequential().await;
    other.restore(&check.state().unwrap()).unwrap();
    let o = other.evaluate(&look_at(ends + 5, shift, ends)).await;
    assert_eq!(o.numbers["green.requests"], 5000.0, "{o:?}");

    // A bad green: 5 % against blue's 0.5 %, from its first whole minute.
    let bad = Alb::new().await;
    let m0 = bad.minute(20);
    alb_traffic(
        &bad.cw,
        &bad.dims(&bad.green),
        Alb::at(m0 + 65),
        1000.0,
        Some(50.0),
    )
    .await;
    alb_traffic(
        &bad.cw,
        &bad.dims(&bad.blue),
        Alb::at(m0 + 65),
        9000.0,
        Some(45.0),
    )
    .await;
    let o = bad
        .sequential()
        .await
        .evaluate(&look_at(m0 + 185, m0 + 10, m0 + 600))
        .await;
    assert_verdict(
        &o,
        Verdict::Fail,
        &["green fails more often than blue", "green 5.0 % (50/1000)"],
    );
}

#[tokio::test]
async fn alb_error_rate_passes_under_the_limit_summing_the_window() {
    let alb = Alb::new().await;
    alb.traffic(&alb.green, 30, 200.0, Some(1.0)).await;
    alb.traffic(&alb.green, 150, 100.0, Some(1.0)).await;
    let o = alb.error_rate(1.0, 50, false).await;
    assert_verdict(
        &o,
        Verdict::Pass,
        &[
            "green error rate 0.67 % <= 1 %",
            "over 300 green requests (2 5xx) in the last 5m",
        ],
    );
}

#[tokio::test]
async fn alb_error_rate_fails_over_the_limit() {
    let alb = Alb::new().await;
    alb.traffic(&alb.green, 30, 312.0, Some(22.0)).await;
    let o = alb.error_rate(1.0, 50, false).await;
    assert_verdict(
        &o,
        Verdict::Fail,
        &["green error rate 7.05 % > 1 % over 312 green requests (22 5xx) in the last 5m"],
    );
}

#[tokio::test]
async fn alb_error_rate_is_inconclusive_with_too_few_requests_or_none() {
    let alb = Alb::new().await;
    let o = alb.error_rate(1.0, 50, false).await;
    assert_verdict(
        &o,
        Verdict::Inconclusive,
        &["green served 0 of 50 requests needed in the last 5m"],
    );
    alb.traffic(&alb.green, 30, 12.0, Some(12.0)).await;
    let o = alb.error_rate(1.0, 50, false).await;
    assert_verdict(
        &o,
        Verdict::Inconclusive,
        &["green served 12 of 50 requests needed"],
    );
}

#[tokio::test]
async fn alb_error_rate_counts_missing_5xx_as_zero_and_ignores_data_outside_the_window() {
    let alb = Alb::new().await;
    alb.traffic(&alb.green, 30, 400.0, None).await;
    // Ten minutes ago, outside the 5m window: a disaster that is over.
    alb.traffic(&alb.green, 600, 100.0, Some(100.0)).await;
    let o = alb.error_rate(1.0, 50, false).await;
    assert_verdict(
        &o,
        Verdict::Pass,
        &[
            "green error rate 0 % <= 1 %",
            "over 400 green requests (0 5xx)",
        ],
    );
}

#[tokio::test]
async fn alb_error_rate_compares_green_with_blue() {
    let alb = Alb::new().await;
    // Green 3 %: under the 5 % limit, but more than 1.5 x blue's 1 %.
    alb.traffic(&alb.green, 30, 300.0, Some(9.0)).await;
    alb.traffic(&alb.blue, 30, 1000.0, Some(10.0)).await;
    let o = alb.error_rate(5.0, 50, true).await;
    assert_verdict(
        &o,
        Verdict::Fail,
        &["green error rate 3 % > 1.5 x blue's 1 % (10 5xx of 1000 blue requests)"],
    );
    assert!(!o.detail.contains("3 % > 5 %"), "{o}");
}

#[tokio::test]
async fn alb_error_rate_judges_green_alone_when_blue_has_too_few_requests() {
    let alb = Alb::new().await;
    alb.traffic(&alb.green, 30, 300.0, Some(3.0)).await;
    alb.traffic(&alb.blue, 30, 10.0, Some(0.0)).await;
    let o = alb.error_rate(5.0, 50, true).await;
    assert_verdict(
        &o,
        Verdict::Pass,
        &[
            "green error rate 1 % <= 5 %",
            "not judged: blue served 10 of 50 requests needed to compare",
        ],
    );
    // Blue with enough requests and a similar rate: both bounds pass.
    alb.traffic(&alb.blue, 90, 290.0, Some(3.0)).await;
    let o = alb.error_rate(5.0, 50, true).await;
    assert_verdict(
        &o,
        Verdict::Pass,
        &["green error rate 1 % <= 1.5 x blue's 1 % (3 5xx of 300 blue requests)"],
    );
}

fn cloudwatch(
    namespace: &str,
    dims: &BTreeMap<String, String>,
    statistic: &str,
    max: Option<f64>,
    min: Option<f64>,
    compare: Option<CompareToBlue>,
) -> CheckConfig {
    CheckConfig::Cloudwatch {
        namespace: namespace.into(),
        metric_name: "Latency".into(),
        dimensions: dims.clone(),
        statistic: statistic.into(),
        period: Duration::from_secs(60),
        window: Duration::from_secs(300),
        max,
        min,
        compare,
    }
}

#[tokio::test]
async fn cloudwatch_judges_any_metric_against_max_min_and_blue() {
    let sdk = sdk().await;
    let cw = aws_sdk_cloudwatch::Client::new(&sdk);
    let now = SystemTime::now();
    let ago = |s: u64| now - Duration::from_secs(s);
    let ns = common::unique("Custom/App");
    let green = BTreeMap::from([("Service".to_string(), common::unique("green"))]);
    let blue = BTreeMap::from([("Service".to_string(), common::unique("blue"))]);
    let check = |statistic: &str, max, min, compare| {
        build(
            cloudwatch(&ns, &green, statistic, max, min, compare),
            &sdk,
            fixed(now),
        )
    };

    // No data: inconclusive, saying what was asked.
    let o = check("Sum", Some(10.0), None, None).evaluate(&look()).await;
    assert_verdict(
        &o,
        Verdict::Inconclusive,
        &["no data for", "Latency", "in the last 5m"],
    );

    // Two minutes: one busy (3 samples, sum 30), one quiet (1 sample of 90).
    put(
        &cw,
        &ns,
        "Latency",
        &green,
        &[
            (ago(30), 10.0),
            (ago(31), 10.0),
            (ago(32), 10.0),
            (ago(150), 90.0),
        ],
    )
    .await;
    put(&cw, &ns, "Latency", &green, &[(ago(900), 1000.0)]).await; // outside the window
    let o = check("Sum", Some(100.0), None, None)
        .evaluate(&look())
        .await;
    assert_verdict(
        &o,
        Verdict::Fail,
        &["Latency Sum 120 > max 100 in the last 5m"],
    );
    let o = check("Maximum", Some(100.0), None, None)
        .evaluate(&look())
        .await;
    assert_verdict(&o, Verdict::Pass, &["Latency Maximum 90 <= max 100"]);
    let o = check("Minimum", None, Some(20.0), None)
        .evaluate(&look())
        .await;
    assert_verdict(&o, Verdict::Fail, &["Latency Minimum 10 < min 20"]);
    let o = check("SampleCount", Some(4.0), Some(1.0), None)
        .evaluate(&look())
        .await;
    assert_verdict(
        &o,
        Verdict::Pass,
        &["Latency SampleCount 4 <= max 4; Latency SampleCount 4 >= min 1"],
    );
    // Average over the window is weighted by samples: 120 / 4 = 30
    // (the mean of the two minute averages would be 50).
    let o = check("Average", Some(40.0), None, None)
        .evaluate(&look())
        .await;
    assert_verdict(&o, Verdict::Pass, &["Latency Average 30 <= max 40"]);

    // Against blue: no blue data is not judged; with blue, green 30 > 1.5 x 15.
    let compare = || {
        Some(CompareToBlue {
            blue_dimensions: blue.clone(),
            max_ratio: 1.5,
        })
    };
    let o = check("Average", None, None, compare())
        .evaluate(&look())
        .await;
    assert_verdict(
        &o,
        Verdict::Inconclusive,
        &["blue has no data to compare with (green Latency Average 30)"],
    );
    let o = check("Average", Some(40.0), None, compare())
        .evaluate(&look())
        .await;
    assert_verdict(
        &o,
        Verdict::Pass,
        &[
            "Latency Average 30 <= max 40",
            "not judged: blue has no data",
        ],
    );
    put(&cw, &ns, "Latency", &blue, &[(ago(40), 15.0)]).await;
    let o = check("Average", Some(40.0), None, compare())
        .evaluate(&look())
        .await;
    assert_verdict(&o, Verdict::Fail, &["Latency Average 30 > 1.5 x blue's 15"]);
}

#[tokio::test]
async fn percentiles_moto_cannot_compute_are_an_error_never_a_pass() {
    // moto 5.2 answers GetMetricData for `p99` with HTTP 500.
    let sdk = sdk_no_retry().await;
    let now = SystemTime::now();
    let dims = BTreeMap::from([("Service".to_string(), common::unique("p"))]);
    let cw = aws_sdk_cloudwatch::Client::new(&sdk);
    put(
        &cw,
        "Custom/P",
        "Latency",
        &dims,
        &[(now - Duration::from_secs(30), 0.5)],
    )
    .await;
    let o = build(
        cloudwatch("Custom/P", &dims, "p99", Some(1.0), None, None),
        &sdk,
        fixed(now),
    )
    .evaluate(&look())
    .await;
    assert_verdict(
        &o,
        Verdict::Error,
        &["cannot read CloudWatch Custom/P Latency", "500"],
    );
    let (lb, tg) = (common::unique("app/a"), common::unique("targetgroup/g"));
    let alb = BTreeMap::from([
        ("LoadBalancer".to_string(), lb.clone()),
        ("TargetGroup".to_string(), tg.clone()),
    ]);
    put(
        &cw,
        "AWS/ApplicationELB",
        "TargetResponseTime",
        &alb,
        &[(now - Duration::from_secs(30), 0.5)],
    )
    .await;
    let latency = CheckConfig::AlbLatency {
        load_balancer: lb,
        target_group: tg.clone(),
        percentile: 99.9,
        max: Some(Duration::from_millis(300)),
        window: Duration::from_secs(300),
        compare: None,
    };
    let o = build(latency, &sdk, fixed(now)).evaluate(&look()).await;
    assert_verdict(
        &o,
        Verdict::Error,
        &[
            &format!("cannot read TargetResponseTime p99.9 of {tg} from CloudWatch"),
            "500",
        ],
    );
}

#[test]
fn window_values_are_aggregated_per_statistic() {
    use checks::{aggregate, weighted_average};
    let v = [1.0, 5.0, 3.0];
    assert_eq!(aggregate("Sum", &v), Some(9.0));
    assert_eq!(aggregate("SampleCount", &v), Some(9.0));
    assert_eq!(aggregate("Minimum", &v), Some(1.0));
    assert_eq!(aggregate("Maximum", &v), Some(5.0));
    assert_eq!(aggregate("Average", &v), Some(3.0));
    // A percentile: the worst period, conservatively.
    assert_eq!(aggregate("p99", &v), Some(5.0));
    assert_eq!(aggregate("p99.9", &[0.2]), Some(0.2));
    assert_eq!(aggregate("p50", &[]), None);
    // The window's average weighs each period by its samples.
    assert_eq!(weighted_average(&[30.0, 90.0], &[3.0, 1.0]), Some(30.0));
    assert_eq!(weighted_average(&[], &[]), None);
    assert_eq!(weighted_average(&[0.0], &[0.0]), None);
}

#[test]
fn window_starts_on_the_minute_or_on_the_high_resolution_period() {
    use checks::metrics::window_bounds;
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000_000 + 37);
    let (start, end) = window_bounds(now, Duration::from_secs(300), Duration::from_secs(60));
    assert_eq!(end, now);
    assert_eq!(
        start,
        SystemTime::UNIX_EPOCH + Duration::from_secs(999_999_720)
    );
    let (start, _) = window_bounds(now, Duration::from_secs(60), Duration::from_secs(10));
    assert_eq!(
        start,
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000_000 - 60 + 30)
    );
}

#[test]
fn latency_is_judged_in_milliseconds_against_max_and_blue() {
    use checks::metrics::judge_latency;
    let ctx = "(worst minute) in the last 5m";
    let max = Some(Duration::from_millis(300));
    let (v, d) = judge_latency("TargetResponseTime p99", Some(0.412), max, None, ctx);
    assert_eq!(v, Verdict::Fail);
    assert_eq!(
        d,
        "green TargetResponseTime p99 412 ms > max 300 ms (worst minute) in the last 5m"
    );
    let (v, d) = judge_latency(
        "TargetResponseTime p99",
        Some(0.25),
        max,
        Some((Some(0.1), 2.0)),
        ctx,
    );
    assert_eq!(v, Verdict::Fail, "{d}");
    assert_eq!(
        d,
        "green TargetResponseTime p99 250 ms > 2 x blue's 100 ms (worst minute) in the last 5m"
    );
    let (v, d) = judge_latency(
        "TargetResponseTime p99",
        Some(0.25),
        max,
        Some((Some(0.2), 2.0)),
        ctx,
    );
    assert_eq!(v, Verdict::Pass, "{d}");
    assert!(
        d.contains(
            "250 ms <= max 300 ms; green TargetResponseTime p99 250 ms <= 2 x blue's 200 ms"
        ),
        "{d}"
    );
    let (v, d) = judge_latency(
        "TargetResponseTime p99",
        Some(0.25),
        None,
        Some((None, 2.0)),
        ctx,
    );
    assert_eq!(v, Verdict::Inconclusive, "{d}");
    let (v, _) = judge_latency("TargetResponseTime p99", None, max, None, ctx);
    assert_eq!(v, Verdict::Inconclusive);
}

// ---------------------------------------------------------------- alarms

async fn alarm(cw: &aws_sdk_cloudwatch::Client, state: Option<(StateValue, &str)>) -> String {
    let name = common::unique("alarm");
    cw.put_metric_alarm()
        .alarm_name(&name)
        .namespace("AWS/ApplicationELB")
        .metric_name("HTTPCode_Target_5XX_Count")
        .statistic(Statistic::Sum)
        .period(60)
        .evaluation_periods(1)
        .threshold(10.0)
        .comparison_operator(ComparisonOperator::GreaterThanThreshold)
        .send()
        .await
        .unwrap();
    if let Some((state, reason)) = state {
        cw.set_alarm_state()
            .alarm_name(&name)
            .state_value(state)
            .state_reason(reason)
            .send()
            .await
            .unwrap();
    }
    name
}

#[tokio::test]
async fn alarms_in_alarm_fail_and_refuse_the_rollout() {
    let sdk = sdk().await;
    let cw = aws_sdk_cloudwatch::Client::new(&sdk);
    let ok = alarm(&cw, Some((StateValue::Ok, "fine"))).await;
    let firing = alarm(
        &cw,
        Some((
            StateValue::Alarm,
            "Threshold Crossed: 1 datapoint [42.0] > 10.0",
        )),
    )
    .await;
    let check = build(
        CheckConfig::Alarm {
            alarm_names: vec![ok.clone(), firing.clone()],
        },
        &sdk,
        checks::system_clock(),
    );
    let o = check.evaluate(&look()).await;
    assert_verdict(
        &o,
        Verdict::Fail,
        &[&format!(
            "alarm {firing} is in ALARM: Threshold Crossed: 1 datapoint [42.0] > 10.0"
        )],
    );
    let refused = check.preflight().await.unwrap_err();
    assert!(!refused.transient);
    assert_eq!(
        refused.message,
        format!("alarm {firing} is already in ALARM before any traffic moved: Threshold Crossed: 1 datapoint [42.0] > 10.0")
    );

    // Back to OK: passes, and the rollout may start.
    cw.set_alarm_state()
        .alarm_name(&firing)
        .state_value(StateValue::Ok)
        .state_reason("recovered")
        .send()
        .await
        .unwrap();
    let o = check.evaluate(&look()).await;
    assert_verdict(&o, Verdict::Pass, &["2 alarm(s) OK"]);
    check.preflight().await.unwrap();
}

#[tokio::test]
async fn alarms_without_data_are_inconclusive_and_missing_alarms_an_error() {
    let sdk = sdk().await;
    let cw = aws_sdk_cloudwatch::Client::new(&sdk);
    let waiting = alarm(
        &cw,
        Some((StateValue::InsufficientData, "no datapoints yet")),
    )
    .await;
    let check = build(
        CheckConfig::Alarm {
            alarm_names: vec![waiting.clone()],
        },
        &sdk,
        checks::system_clock(),
    );
    let o = check.evaluate(&look()).await;
    assert_verdict(
        &o,
        Verdict::Inconclusive,
        &[&format!(
            "alarm {waiting} has INSUFFICIENT_DATA: no datapoints yet"
        )],
    );
    check.preflight().await.unwrap();

    let missing = common::unique("no-such-alarm");
    let check = build(
        CheckConfig::Alarm {
            alarm_names: vec![waiting, missing.clone()],
        },
        &sdk,
        checks::system_clock(),
    );
    let o = check.evaluate(&look()).await;
    assert_verdict(
        &o,
        Verdict::Error,
        &[&format!("alarm(s) not found: {missing}")],
    );
    let refused = check.preflight().await.unwrap_err();
    assert!(
        refused.message.contains(&format!("not found: {missing}")),
        "{refused}"
    );
}

// ---------------------------------------------------------------- target health

#[tokio::test]
async fn target_health_reads_every_target_of_the_group() {
    let sdk = sdk().await;
    let elb = aws_sdk_elasticloadbalancingv2::Client::new(&sdk);
    let vpc = xml_values(&ec2(&[("Action", "DescribeVpcs")]), "vpcId").remove(0);
    let tg = elb
        .create_target_group()
        .name(common::unique("tg").replace('-', "x"))
        .protocol(aws_sdk_elasticloadbalancingv2::types::ProtocolEnum::Http)
        .port(80)
        .vpc_id(vpc)
        .send()
        .await
        .unwrap();
    let arn = tg.target_groups()[0]
        .target_group_arn()
        .unwrap()
        .to_string();
    let check = |min_healthy| {
        build(
            CheckConfig::TargetHealth {
                target_group_arn: arn.clone(),
                min_healthy,
            },
            &sdk,
            checks::system_clock(),
        )
    };
    let register = |id: String| {
        let elb = elb.clone();
        let arn = arn.clone();
        async move {
            elb.register_targets()
                .target_group_arn(arn)
                .targets(TargetDescription::builder().id(id).port(8080).build())
                .send()
                .await
                .unwrap();
        }
    };

    // Nothing registered yet: fewer than required.
    let o = check(1).evaluate(&look()).await;
    assert_verdict(
        &o,
        Verdict::Fail,
        &["0 healthy target(s), fewer than the 1 required"],
    );
    check(1).preflight().await.unwrap();

    let (a, b) = (run_instance(), run_instance());
    register(a.clone()).await;
    register(b.clone()).await;
    let o = check(2).evaluate(&look()).await;
    assert_verdict(
        &o,
        Verdict::Pass,
        &["all 2 target(s) healthy (at least 2 required)"],
    );
    let o = check(3).evaluate(&look()).await;
    assert_verdict(
        &o,
        Verdict::Fail,
        &["2 healthy target(s), fewer than the 3 required"],
    );

    // The second target goes bad: the reference, reading only the first
    // target, would have passed.
    ec2(&[("Action", "StopInstances"), ("InstanceId.1", &b)]);
    let o = check(1).evaluate(&look()).await;
    assert_verdict(&o, Verdict::Fail, &[&format!("1 of 2 target(s) not healthy: target {b}:8080 unused (Target.InvalidState: Target is in the stopped state)")]);
    assert!(!o.detail.contains(&a), "{o}");
}

#[tokio::test]
async fn target_health_of_a_missing_group_is_an_error_and_refused() {
    let sdk = sdk_no_retry().await;
    let arn =
        "arn:aws:elasticloadbalancing:us-east-1:123456789012:targetgroup/nope/943f017f100becff";
    let check = build(
        CheckConfig::TargetHealth {
            target_group_arn: arn.into(),
            min_healthy: 1,
        },
        &sdk,
        checks::system_clock(),
    );
    let o = check.evaluate(&look()).await;
    assert_verdict(
        &o,
        Verdict::Error,
        &[
            "cannot describe the health of target group",
            "TargetGroupNotFound",
        ],
    );
    let refused = check.preflight().await.unwrap_err();
    assert!(refused.message.contains("TargetGroupNotFound"), "{refused}");
}

fn target(
    id: &str,
    state: TargetHealthStateEnum,
    reason: Option<TargetHealthReasonEnum>,
    description: Option<&str>,
) -> TargetHealthDescription {
    TargetHealthDescription::builder()
        .target(TargetDescription::builder().id(id).port(80).build())
        .target_health(
            TargetHealth::builder()
                .state(state)
                .set_reason(reason)
                .set_description(description.map(str::to_string))
                .build(),
        )
        .build()
}

#[test]
fn target_states_moto_cannot_produce_are_judged_too() {
    use checks::judge_targets;
    use TargetHealthReasonEnum as R;
    use TargetHealthStateEnum as S;
    let healthy = target("10.0.0.1", S::Healthy, None, None);
    let initial = target(
        "10.0.0.2",
        S::Initial,
        Some(R::RegistrationInProgress),
        Some("Target registration is in progress"),
    );
    let unhealthy = target(
        "10.0.0.3",
        S::Unhealthy,
        Some(R::ResponseCodeMismatch),
        Some("Health checks failed with these codes: [502]"),
    );
    let draining = target(
        "10.0.0.4",
        S::Draining,
        Some(R::DeregistrationInProgress),
        None,
    );

    let (v, d) = judge_targets(&[healthy.clone(), initial.clone(), unhealthy.clone()], 1);
    assert_eq!(v, Verdict::Fail, "{d}");
    assert_eq!(d, "1 of 3 target(s) not healthy: target 10.0.0.3:80 unhealthy (Target.ResponseCodeMismatch: Health checks failed with these codes: [502])");

    let (v, d) = judge_targets(&[healthy.clone(), initial.clone()], 2);
    assert_eq!(v, Verdict::Inconclusive, "{d}");
    assert!(
        d.contains("1 of 2 target(s) still initial")
            && d.contains("10.0.0.2:80 (Elb.RegistrationInProgress"),
        "{d}"
    );

    let (v, d) = judge_targets(&[healthy.clone(), draining.clone()], 1);
    assert_eq!(v, Verdict::Pass, "{d}");
    assert_eq!(
        d,
        "all 1 target(s) healthy (at least 1 required); 1 draining (not counted)"
    );
    let (v, _) = judge_targets(&[healthy, draining], 2);
    assert_eq!(v, Verdict::Fail);
}

// ---------------------------------------------------------------- ECS

struct Ecs {
    client: aws_sdk_ecs::Client,
    cluster: String,
    service: String,
    family: String,
}

impl Ecs {
    async fn new(desired: i32) -> Ecs {
        let client = aws_sdk_ecs::Client::new(&sdk().await);
        let cluster = common::unique("cluster");
        let service = common::unique("green");
        let family = common::unique("app");
        client
            .create_cluster()
            .cluster_name(&cluster)
            .send()
            .await
            .unwrap();
        client
            .register_task_definition()
            .family(&family)
            // No container-level cpu/memory: moto echoes them in tasks as numbers
            // where the ECS API (and the SDK) has strings.
            .container_definitions(
                ContainerDefinition::builder()
                    .name("app")
                    .image("app:2")
                    .memory_reservation(256)
                    .build(),
            )
            .send()
            .await
            .unwrap();
        client
            .create_service()
            .cluster(&cluster)
            .service_name(&service)
            .task_definition(&family)
            .desired_count(desired)
            .send()
            .await
            .unwrap();
        Ecs {
            client,
            cluster,
            service,
            family,
        }
    }

    fn check(&self, sdk: &aws_config::SdkConfig) -> Arc<dyn Check> {
        build(
            CheckConfig::EcsService {
                cluster: self.cluster.clone(),
                service: self.service.clone(),
            },
            sdk,
            checks::system_clock(),
        )
    }

    /// A task of `group` that stopped with `reason`; returns its id.
    async fn stopped_task(&self, group: &str, reason: &str) -> String {
        let run = self
            .client
            .run_task()
            .cluster(&self.cluster)
            .task_definition(&self.family)
            .launch_type(LaunchType::Fargate)
            .group(group)
            .send()
            .await
            .unwrap();
        let arn = run.tasks()[0].task_arn().unwrap().to_string();
        self.client
            .stop_task()
            .cluster(&self.cluster)
            .task(&arn)
            .reason(reason)
            .send()
            .await
            .unwrap();
        arn.rsplit('/').next().unwrap().to_string()
    }
}

#[tokio::test]
async fn ecs_service_waits_for_its_deployment_then_passes() {
    let sdk = sdk().await;
    // moto starts a service with 0 running, the rest pending, rollout IN_PROGRESS.
    let ecs = Ecs::new(2).await;
    let check = ecs.check(&sdk);
    check.preflight().await.unwrap();
    let o = check.evaluate(&look()).await;
    assert_verdict(
        &o,
        Verdict::Inconclusive,
        &["runs 0 of 2 desired task(s) (2 pending); deployment in progress"],
    );
    // Updating the desired count makes moto report them all running.
    ecs.client
        .update_service()
        .cluster(&ecs.cluster)
        .service(&ecs.service)
        .desired_count(2)
        .send()
        .await
        .unwrap();
    let o = check.evaluate(&look()).await;
    assert_verdict(
        &o,
        Verdict::Pass,
        &["runs 2 of 2 desired task(s); no task failed since the rollout started"],
    );

    // Stops that are no failure, and another service's failures, do not count.
    ecs.stopped_task(
        &format!("service:{}", ecs.service),
        "Scaling activity initiated by (deployment ecs-svc/123)",
    )
    .await;
    ecs.stopped_task(
        "service:someone-else",
        "Task failed ELB health checks in (target-group x)",
    )
    .await;
    let o = check.evaluate(&look()).await;
    assert_eq!(o.verdict, Verdict::Pass, "{o}");

    // Scaled to zero: green runs nothing.
    ecs.client
        .update_service()
        .cluster(&ecs.cluster)
        .service(&ecs.service)
        .desired_count(0)
        .send()
        .await
        .unwrap();
    let o = check.evaluate(&look()).await;
    assert_verdict(&o, Verdict::Fail, &["has a desired count of 0"]);
}

#[tokio::test]
async fn ecs_service_fails_on_a_green_task_that_failed_its_health_checks() {
    let sdk = sdk().await;
    let ecs = Ecs::new(1).await;
    ecs.client
        .update_service()
        .cluster(&ecs.cluster)
        .service(&ecs.service)
        .desired_count(1)
        .send()
        .await
        .unwrap();
    let id = ecs
        .stopped_task(
            &format!("service:{}", ecs.service),
            "Task failed ELB health checks in (target-group arn:aws:elasticloadbalancing:us-east-1:123456789012:targetgroup/green/1)",
        )
        .await;
    let o = ecs.check(&sdk).evaluate(&look()).await;
    assert_verdict(
        &o,
        Verdict::Fail,
        &[
            "1 green task(s)",
            &format!("task {id} stopped: Task failed ELB health checks in (target-group"),
        ],
    );
}

#[tokio::test]
async fn ecs_service_missing_is_an_error_and_refused() {
    let sdk = sdk().await;
    let ecs = Ecs::new(1).await;
    let check = build(
        CheckConfig::EcsService {
            cluster: ecs.cluster.clone(),
            service: common::unique("nope"),
        },
        &sdk,
        checks::system_clock(),
    );
    let o = check.evaluate(&look()).await;
    assert_verdict(&o, Verdict::Error, &["not found in cluster"]);
    assert!(check.preflight().await.is_err());
}

fn task(
    stop_code: Option<TaskStopCode>,
    reason: &str,
    exit: Option<i32>,
    stopped_at: Option<SystemTime>,
) -> Task {
    Task::builder()
        .task_arn("arn:aws:ecs:us-east-1:123456789012:task/c/0123abcd")
        .group("service:green")
        .set_stop_code(stop_code)
        .stopped_reason(reason)
        .set_stopped_at(stopped_at.map(Into::into))
        .containers(Container::builder().name("app").set_exit_code(exit).build())
        .build()
}

#[test]
fn ecs_failures_are_told_from_ordinary_stops_and_dated() {
    use checks::{is_failed_stop, judge_ecs_service};
    use TaskStopCode as C;
    assert!(is_failed_stop(&task(
        Some(C::TaskFailedToStart),
        "CannotPullContainerError: pull image manifest has been retried",
        None,
        None
    )));
    assert!(is_failed_stop(&task(
        Some(C::EssentialContainerExited),
        "Essential container in task exited",
        Some(137),
        None
    )));
    assert!(!is_failed_stop(&task(
        Some(C::EssentialContainerExited),
        "Essential container in task exited",
        Some(0),
        None
    )));
    assert!(is_failed_stop(&task(
        Some(C::ServiceSchedulerInitiated),
        "Task failed container health checks",
        None,
        None
    )));
    assert!(!is_failed_stop(&task(
        Some(C::ServiceSchedulerInitiated),
        "Scaling activity initiated by (deployment ecs-svc/1)",
        None,
        None
    )));
    assert!(!is_failed_stop(&task(
        Some(C::SpotInterruption),
        "Your Spot Task was interrupted.",
        None,
        None
    )));

    let since = SystemTime::now();
    let service = |running, desired, pending, state| {
        Service::builder()
            .service_name("green")
            .status("ACTIVE")
            .running_count(running)
            .desired_count(desired)
            .pending_count(pending)
            .deployments(
                Deployment::builder()
                    .status("PRIMARY")
                    .rollout_state(state)
                    .build(),
            )
            .build()
    };
    let steady = service(2, 2, 0, DeploymentRolloutState::Completed);
    let crashed = task(
        Some(C::EssentialContainerExited),
        "Essential container in task exited",
        Some(1),
        Some(since + Duration::from_secs(5)),
    );
    let (v, d) = judge_ecs_service(&steady, &[crashed], since);
    assert_eq!(v, Verdict::Fail);
    assert_eq!(d, "1 green task(s) of green failed since the rollout started: task 0123abcd stopped: Essential container in task exited (stop code EssentialContainerExited), container app exited 1");
    // The same failure before the rollout started is not green's doing.
    let old = task(
        Some(C::EssentialContainerExited),
        "Essential container in task exited",
        Some(1),
        Some(since - Duration::from_secs(60)),
    );
    assert_eq!(judge_ecs_service(&steady, &[old], since).0, Verdict::Pass);

    let (v, d) = judge_ecs_service(
        &service(1, 2, 0, DeploymentRolloutState::Completed),
        &[],
        since,
    );
    assert_eq!(v, Verdict::Fail, "{d}");
    assert!(
        d.contains("runs 1 of 2 desired task(s) and no deployment is in progress"),
        "{d}"
    );
    let (v, _) = judge_ecs_service(
        &service(1, 2, 1, DeploymentRolloutState::Completed),
        &[],
        since,
    );
    assert_eq!(v, Verdict::Inconclusive);
    let (v, _) = judge_ecs_service(
        &service(2, 2, 0, DeploymentRolloutState::Failed),
        &[],
        since,
    );
    assert_eq!(v, Verdict::Fail);
}

// ---------------------------------------------------------------- errors

#[tokio::test]
async fn an_unreachable_endpoint_is_an_error_with_the_reason() {
    let mut aws = common::aws();
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    aws.endpoint_url = Some(format!("http://127.0.0.1:{closed}"));
    let sdk = cutover_aws::config::load(&aws)
        .await
        .to_builder()
        .retry_config(aws_config::retry::RetryConfig::disabled())
        .build();
    let configs = [
        CheckConfig::Alarm {
            alarm_names: vec!["a".into()],
        },
        CheckConfig::AlbErrorRate {
            load_balancer: "app/a/1".into(),
            target_group: "targetgroup/g/1".into(),
            max_percent: 1.0,
            min_requests: 1,
            window: Duration::from_secs(60),
            compare: None,
        },
        CheckConfig::TargetHealth {
            target_group_arn: "arn:tg".into(),
            min_healthy: 1,
        },
        CheckConfig::EcsService {
            cluster: "c".into(),
            service: "s".into(),
        },
    ];
    for config in configs {
        let check = build(config, &sdk, checks::system_clock());
        let o = check.evaluate(&look()).await;
        assert_verdict(&o, Verdict::Error, &["cannot", "dispatch failure"]);
        if let Err(e) = check.preflight().await {
            assert!(e.transient, "{e}");
        }
    }
}

#[test]
fn only_the_aws_kinds_are_built_here() {
    let sdk = aws_config::SdkConfig::builder()
        .behavior_version(aws_config::BehaviorVersion::latest())
        .build();
    let spec = CheckSpec {
        name: "h".into(),
        config: CheckConfig::Health,
    };
    assert!(checks::build_check(&spec, &sdk).is_none());
    let spec = CheckSpec {
        name: "a".into(),
        config: CheckConfig::Alarm {
            alarm_names: vec!["x".into()],
        },
    };
    assert_eq!(checks::build_check(&spec, &sdk).unwrap().name(), "a");
}

/// A look with nothing known about a rollout: these checks judge over
/// their own window.
fn look() -> CheckContext {
    CheckContext::at(cutover_core::Timestamp(0))
}
