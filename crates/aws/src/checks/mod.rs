//! The AWS checks: the engine's [`Check`]s over CloudWatch, ELB and ECS.
//!
//! | kind             | reads                                   | module            |
//! |------------------|-----------------------------------------|-------------------|
//! | `target-health`  | ELBv2 DescribeTargetHealth              | [`target_health`] |
//! | `cloudwatch`     | CloudWatch GetMetricData                | [`metrics`]       |
//! | `alb-error-rate` | GetMetricData, `AWS/ApplicationELB`     | [`metrics`]       |
//! | `alb-latency`    | GetMetricData, `AWS/ApplicationELB`     | [`metrics`]       |
//! | `alb-sequential-error-rate` | GetMetricData, `AWS/ApplicationELB` | [`alb_sequential`] |
//! | `alarm`          | CloudWatch DescribeAlarms               | [`alarm`]         |
//! | `ecs-service`    | ECS DescribeServices, ListTasks, DescribeTasks | [`ecs_service`] |
//!
//! Every check answers with an [`Observation`](cutover_core::Observation)
//! whose detail carries the numbers behind the verdict. An SDK call that
//! fails makes the verdict `error` with the service's error code and
//! message, never `pass`.
//!
//! The judging itself is done by pure functions (`judge_*`, [`aggregate`])
//! over plain values or SDK types, so it is tested without any AWS.
//!
//! Time: checks read the wall clock through a [`Clock`] (adapters may read
//! the clock; the core may not). [`build_check`] uses
//! [`SystemTime::now`]; [`build_check_with_clock`] takes another, e.g. a
//! fixed instant in tests.

pub mod alarm;
pub mod alb_sequential;
pub mod ecs_service;
pub mod metrics;
pub mod target_health;

use std::fmt;
use std::sync::Arc;
use std::time::SystemTime;

use aws_sdk_cloudwatch::config::http::HttpResponse;
use aws_sdk_cloudwatch::error::{ProvideErrorMetadata, SdkError};
use cutover_core::plan::{CheckConfig, CheckSpec};
use cutover_engine::ports::{AdapterError, Check};

pub use alarm::{judge_alarms, AlarmCheck, AlarmState};
pub use ecs_service::{is_failed_stop, judge_ecs_service, EcsServiceCheck};
pub use metrics::{
    aggregate, weighted_average, AlbErrorRateCheck, AlbLatencyCheck, CloudwatchCheck,
};
pub use target_health::{judge_targets, TargetHealthCheck};

/// Where a check reads the time.
pub type Clock = Arc<dyn Fn() -> SystemTime + Send + Sync>;

/// The wall clock.
pub fn system_clock() -> Clock {
    Arc::new(SystemTime::now)
}

/// Builds the check described by `spec` if it is one of the AWS kinds
/// (`target-health`, `cloudwatch`, `alb-error-rate`,
/// `alb-sequential-error-rate`, `alb-latency`, `alarm`, `ecs-service`);
/// `None` for the others.
pub fn build_check(spec: &CheckSpec, sdk: &aws_config::SdkConfig) -> Option<Arc<dyn Check>> {
    build_check_with_clock(spec, sdk, system_clock())
}

/// [`build_check`] with the clock the check reads (windows end at its
/// `now`; `ecs-service` counts task failures from its value at build time).
pub fn build_check_with_clock(
    spec: &CheckSpec,
    sdk: &aws_config::SdkConfig,
    clock: Clock,
) -> Option<Arc<dyn Check>> {
    let name = spec.name.clone();
    // One request per try: the engine's tries per analysis are the one
    // retry policy of a check.
    let sdk = &crate::config::single_attempt(sdk);
    Some(match &spec.config {
        CheckConfig::TargetHealth {
            target_group_arn,
            min_healthy,
        } => Arc::new(TargetHealthCheck::new(
            name,
            aws_sdk_elasticloadbalancingv2::Client::new(sdk),
            target_group_arn.clone(),
            *min_healthy,
        )),
        CheckConfig::Cloudwatch {
            namespace,
            metric_name,
            dimensions,
            statistic,
            period,
            window,
            max,
            min,
            compare,
        } => Arc::new(CloudwatchCheck {
            name,
            client: aws_sdk_cloudwatch::Client::new(sdk),
            clock,
            namespace: namespace.clone(),
            metric_name: metric_name.clone(),
            dimensions: dimensions.clone(),
            statistic: statistic.clone(),
            period: *period,
            window: *window,
            max: *max,
            min: *min,
            compare: compare.clone(),
        }),
        CheckConfig::AlbErrorRate {
            load_balancer,
            target_group,
            max_percent,
            min_requests,
            window,
            compare,
        } => Arc::new(AlbErrorRateCheck {
            name,
            client: aws_sdk_cloudwatch::Client::new(sdk),
            clock,
            load_balancer: load_balancer.clone(),
            target_group: target_group.clone(),
            max_percent: *max_percent,
            min_requests: *min_requests,
            window: *window,
            compare: compare.clone(),
        }),
        CheckConfig::AlbSequentialErrorRate {
            load_balancer,
            target_group,
            blue_load_balancer,
            blue_target_group,
            settle,
            settings,
        } => Arc::new(alb_sequential::AlbSequentialCheck {
            name,
            client: aws_sdk_cloudwatch::Client::new(sdk),
            load_balancer: load_balancer.clone(),
            target_group: target_group.clone(),
            blue_load_balancer: blue_load_balancer.clone(),
            blue_target_group: blue_target_group.clone(),
            settle: *settle,
            settings: *settings,
            state: std::sync::Mutex::new(None),
        }),
        CheckConfig::AlbLatency {
            load_balancer,
            target_group,
            percentile,
            max,
            window,
            compare,
        } => Arc::new(AlbLatencyCheck {
            name,
            client: aws_sdk_cloudwatch::Client::new(sdk),
            clock,
            load_balancer: load_balancer.clone(),
            target_group: target_group.clone(),
            percentile: *percentile,
            max: *max,
            window: *window,
            compare: compare.clone(),
        }),
        CheckConfig::Alarm { alarm_names } => Arc::new(AlarmCheck::new(
            name,
            aws_sdk_cloudwatch::Client::new(sdk),
            alarm_names.clone(),
        )),
        CheckConfig::EcsService { cluster, service } => Arc::new(EcsServiceCheck::new(
            name,
            aws_sdk_ecs::Client::new(sdk),
            cluster.clone(),
            service.clone(),
            clock(),
        )),
        _ => return None,
    })
}

/// Numbers as people write them: `1`, `7.14`, `0.5`.
pub(crate) fn num(x: f64) -> String {
    if !x.is_finite() {
        return x.to_string();
    }
    let s = format!("{x:.2}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if s == "-0" {
        "0".into()
    } else {
        s.to_string()
    }
}

/// Seconds as milliseconds: `412 ms`, `3.5 ms`.
pub(crate) fn ms(seconds: f64) -> String {
    let x = seconds * 1000.0;
    if x >= 100.0 {
        format!("{x:.0} ms")
    } else {
        format!("{} ms", num(x))
    }
}

/// An SDK error in words: the service's error code and message when it
/// answered, else the chain of causes (connection refused, timeout...).
pub(crate) fn sdk_error_text<E>(err: &SdkError<E, HttpResponse>) -> String
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    if let SdkError::ServiceError(e) = err {
        let status = e.raw().status().as_u16();
        return match (e.err().code(), e.err().message()) {
            (Some(code), Some(message)) => format!("{code}: {message} (HTTP {status})"),
            (Some(code), None) => format!("{code} (HTTP {status})"),
            (None, Some(message)) => format!("{message} (HTTP {status})"),
            (None, None) => {
                let body = e
                    .raw()
                    .body()
                    .bytes()
                    .map(|b| String::from_utf8_lossy(b).into_owned())
                    .unwrap_or_default();
                let body: String = body.split_whitespace().collect::<Vec<_>>().join(" ");
                let body: String = body.chars().take(200).collect();
                format!(
                    "HTTP {status} without an AWS error code ({}): {body}",
                    error_chain(err)
                )
            }
        };
    }
    error_chain(err)
}

/// An error and its causes: `dispatch failure: io error: connection refused`.
pub(crate) fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut parts = vec![err.to_string()];
    let mut source = err.source();
    while let Some(e) = source {
        let text = e.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        source = e.source();
    }
    parts.join(": ")
}

/// Whether trying again may help: network trouble, timeouts, throttling, 5xx.
pub(crate) fn sdk_error_is_transient<E>(err: &SdkError<E, HttpResponse>) -> bool
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    match err {
        SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) | SdkError::ResponseError(_) => {
            true
        }
        SdkError::ServiceError(e) => {
            e.raw().status().as_u16() >= 500
                || matches!(
                    e.err().code(),
                    Some(
                        "Throttling"
                            | "ThrottlingException"
                            | "RequestThrottled"
                            | "RequestThrottledException"
                            | "TooManyRequestsException"
                            | "RequestLimitExceeded"
                            | "ServiceUnavailable"
                            | "InternalFailure"
                            | "InternalError"
                            | "ServerException"
                    )
                )
        }
        _ => false,
    }
}

/// An SDK error as an [`AdapterError`] for `preflight`.
pub(crate) fn sdk_adapter_error<E>(
    what: impl fmt::Display,
    err: &SdkError<E, HttpResponse>,
) -> AdapterError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    let message = format!("{what}: {}", sdk_error_text(err));
    if sdk_error_is_transient(err) {
        AdapterError::transient(message)
    } else {
        AdapterError::permanent(message)
    }
}

/// `a, b and 3 more`: at most `keep` items of a list, then a count.
pub(crate) fn list_some(items: &[String], keep: usize) -> String {
    if items.len() <= keep {
        items.join("; ")
    } else {
        format!(
            "{}; and {} more",
            items[..keep].join("; "),
            items.len() - keep
        )
    }
}

/// What a check found, line by line: each bound judged is a line that
/// failed or passed; a bound that could not be judged (no baseline) is
/// skipped with the reason.
#[derive(Default)]
pub(crate) struct Lines {
    pub failed: Vec<String>,
    pub passed: Vec<String>,
    pub skipped: Vec<String>,
}

impl Lines {
    pub fn judge(&mut self, failed: bool, line: String) {
        if failed {
            self.failed.push(line)
        } else {
            self.passed.push(line)
        }
    }

    /// Fail if any line failed; else pass if any passed (noting what was
    /// not judged); else inconclusive. `context` ends every detail, e.g.
    /// "over 312 green requests in the last 5m".
    pub fn verdict(self, context: &str) -> (cutover_core::Verdict, String) {
        use cutover_core::Verdict;
        let skipped = self.skipped.join("; ");
        if !self.failed.is_empty() {
            (
                Verdict::Fail,
                format!("{} {context}", self.failed.join("; ")),
            )
        } else if !self.passed.is_empty() {
            let mut d = format!("{} {context}", self.passed.join("; "));
            if !skipped.is_empty() {
                d.push_str(&format!(" (not judged: {skipped})"));
            }
            (Verdict::Pass, d)
        } else {
            (Verdict::Inconclusive, format!("{skipped} {context}"))
        }
    }
}
