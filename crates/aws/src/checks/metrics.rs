//! CloudWatch metric checks: `cloudwatch` (any metric), `alb-error-rate`
//! and `alb-latency` (the `AWS/ApplicationELB` metrics of green's target
//! group), all read with one GetMetricData call per evaluation.
//!
//! The window is `[now - window, now)`, its start rounded down to the
//! minute (to the period for high-resolution periods under 60 s), as
//! CloudWatch itself rounds it. The per-period datapoints in the window
//! are combined into one value by [`aggregate`]:
//!
//! - `Sum`, `SampleCount`: the sum of the periods.
//! - `Minimum` / `Maximum`: the smallest / largest period value.
//! - `Average`: the exact average over the window, Σ Sum / Σ SampleCount
//!   (both are fetched instead of `Average`), so a quiet minute weighs
//!   less than a busy one ([`weighted_average`]).
//! - `pNN`: the largest period value. Percentiles cannot be merged
//!   exactly; the worst minute is the conservative choice.
//!
//! No datapoint at all in the window means no data: inconclusive, never
//! a pass. ALB metrics are read with 60 s periods; a missing
//! `HTTPCode_Target_5XX_Count` counts as 0 (ALB publishes nothing when
//! there were none).

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use aws_sdk_cloudwatch::types::{Dimension, Metric, MetricDataQuery, MetricStat, StatusCode};
use aws_smithy_types::DateTime;
use cutover_core::plan::CompareToBlue;
use cutover_core::time::Human;
use cutover_core::{Observation, Verdict};
use cutover_engine::ports::{Check, CheckContext};

use super::{ms, num, sdk_error_text, Clock, Lines};

const ALB_NAMESPACE: &str = "AWS/ApplicationELB";

/// Combines one statistic's per-period datapoints into the window's
/// value; `None` without datapoints. `Average` here is the plain mean of
/// the period averages (the checks use [`weighted_average`] instead).
pub fn aggregate(statistic: &str, values: &[f64]) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    Some(match statistic {
        "Sum" | "SampleCount" => values.iter().sum(),
        "Minimum" => values.iter().copied().fold(f64::INFINITY, f64::min),
        "Average" => values.iter().sum::<f64>() / values.len() as f64,
        // "Maximum" and percentiles: the worst period.
        _ => values.iter().copied().fold(f64::NEG_INFINITY, f64::max),
    })
}

/// The exact average over the window from per-period sums and sample
/// counts; `None` when nothing was sampled.
pub fn weighted_average(sums: &[f64], counts: &[f64]) -> Option<f64> {
    let count: f64 = counts.iter().sum();
    (count > 0.0).then(|| sums.iter().sum::<f64>() / count)
}

/// `[now - window, now)`, the start rounded down to the minute, or to the
/// period when it is shorter (high-resolution metrics).
pub fn window_bounds(
    now: SystemTime,
    window: Duration,
    period: Duration,
) -> (SystemTime, SystemTime) {
    let align = period.as_secs().clamp(1, 60);
    let start = now.checked_sub(window).unwrap_or(UNIX_EPOCH);
    let secs = start.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let start = UNIX_EPOCH + Duration::from_secs(secs - secs % align);
    (start, now)
}

/// One metric whose window value is wanted.
#[derive(Clone, Debug)]
pub(crate) struct Series {
    namespace: String,
    metric: String,
    dimensions: BTreeMap<String, String>,
    statistic: String,
}

impl Series {
    /// The GetMetricData statistics needed: `Average` as Sum + SampleCount.
    fn stats(&self) -> Vec<&str> {
        if self.statistic == "Average" {
            vec!["Sum", "SampleCount"]
        } else {
            vec![self.statistic.as_str()]
        }
    }

    fn value(&self, fetched: &[Vec<f64>]) -> Option<f64> {
        if self.statistic == "Average" {
            weighted_average(&fetched[0], &fetched[1])
        } else {
            aggregate(&self.statistic, &fetched[0])
        }
    }
}

fn dims_text(dims: &BTreeMap<String, String>) -> String {
    dims.iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Reads each series' value over `[start, end)` in one GetMetricData call
/// (following `NextToken`).
async fn read(
    client: &aws_sdk_cloudwatch::Client,
    series: &[Series],
    period: Duration,
    start: SystemTime,
    end: SystemTime,
) -> Result<Vec<Option<f64>>, String> {
    let per_series = read_periods(client, series, period, start, end).await?;
    Ok(series
        .iter()
        .zip(per_series)
        .map(|(s, f)| {
            let values: Vec<Vec<f64>> = f
                .into_iter()
                .map(|stat| stat.into_values().collect())
                .collect();
            s.value(&values)
        })
        .collect())
}

/// Each series' datapoints over `[start, end)`, per statistic it needs, by
/// the period's start (seconds since the epoch), in one GetMetricData call
/// (following `NextToken`).
pub(crate) async fn read_periods(
    client: &aws_sdk_cloudwatch::Client,
    series: &[Series],
    period: Duration,
    start: SystemTime,
    end: SystemTime,
) -> Result<Vec<Vec<BTreeMap<i64, f64>>>, String> {
    let period = i32::try_from(period.as_secs().max(1)).unwrap_or(i32::MAX);
    let mut queries = Vec::new();
    let mut slots = Vec::new(); // (series index, stat index) per query id
    for (i, s) in series.iter().enumerate() {
        let metric = Metric::builder()
            .namespace(&s.namespace)
            .metric_name(&s.metric)
            .set_dimensions(Some(
                s.dimensions
                    .iter()
                    .map(|(k, v)| Dimension::builder().name(k).value(v).build())
                    .collect(),
            ))
            .build();
        for (j, stat) in s.stats().into_iter().enumerate() {
            queries.push(
                MetricDataQuery::builder()
                    .id(format!("m{}", queries.len()))
                    .metric_stat(
                        MetricStat::builder()
                            .metric(metric.clone())
                            .period(period)
                            .stat(stat)
                            .build(),
                    )
                    .return_data(true)
                    .build(),
            );
            slots.push((i, j));
        }
    }
    let mut fetched: Vec<BTreeMap<i64, f64>> = vec![BTreeMap::new(); queries.len()];
    let mut token = None;
    loop {
        let out = client
            .get_metric_data()
            .set_metric_data_queries(Some(queries.clone()))
            .start_time(DateTime::from(start))
            .end_time(DateTime::from(end))
            .set_next_token(token.take())
            .send()
            .await
            .map_err(|e| sdk_error_text(&e))?;
        for r in out.metric_data_results() {
            let Some(k) = r
                .id()
                .and_then(|id| id.strip_prefix('m'))
                .and_then(|n| n.parse::<usize>().ok())
                .filter(|k| *k < fetched.len())
            else {
                continue;
            };
            if matches!(
                r.status_code(),
                Some(StatusCode::InternalError | StatusCode::Forbidden)
            ) {
                let messages: Vec<String> = r
                    .messages()
                    .iter()
                    .map(|m| format!("{}: {}", m.code().unwrap_or("?"), m.value().unwrap_or("")))
                    .collect();
                return Err(format!(
                    "CloudWatch answered {} for {}: {}",
                    r.status_code().map_or("?", |s| s.as_str()),
                    series[slots[k].0].metric,
                    messages.join("; ")
                ));
            }
            for (t, v) in r.timestamps().iter().zip(r.values()) {
                fetched[k].insert(t.secs(), *v);
            }
        }
        token = out.next_token().map(str::to_string);
        if token.is_none() {
            break;
        }
    }
    let mut per_series: Vec<Vec<BTreeMap<i64, f64>>> = series
        .iter()
        .map(|s| vec![BTreeMap::new(); s.stats().len()])
        .collect();
    for (k, values) in fetched.into_iter().enumerate() {
        let (i, j) = slots[k];
        per_series[i][j] = values;
    }
    Ok(per_series)
}

fn obs(name: &str, (verdict, detail): (Verdict, String)) -> Observation {
    Observation::new(name, verdict, detail)
}

/// `cloudwatch`: any metric against `max`/`min`, and/or blue's same metric.
pub struct CloudwatchCheck {
    pub(crate) name: String,
    pub(crate) client: aws_sdk_cloudwatch::Client,
    pub(crate) clock: Clock,
    pub(crate) namespace: String,
    pub(crate) metric_name: String,
    pub(crate) dimensions: BTreeMap<String, String>,
    pub(crate) statistic: String,
    pub(crate) period: Duration,
    pub(crate) window: Duration,
    pub(crate) max: Option<f64>,
    pub(crate) min: Option<f64>,
    pub(crate) compare: Option<CompareToBlue>,
}

impl CloudwatchCheck {
    fn series(&self, dimensions: &BTreeMap<String, String>) -> Series {
        Series {
            namespace: self.namespace.clone(),
            metric: self.metric_name.clone(),
            dimensions: dimensions.clone(),
            statistic: self.statistic.clone(),
        }
    }
}

/// Judges a metric's window value against `max`, `min` and blue's value
/// times `max_ratio` (blue `None`: no data, not judged).
pub fn judge_metric(
    label: &str,
    green: Option<f64>,
    max: Option<f64>,
    min: Option<f64>,
    blue: Option<(Option<f64>, f64)>,
    context: &str,
) -> (Verdict, String) {
    let Some(v) = green else {
        return (
            Verdict::Inconclusive,
            format!("no data for {label} {context}"),
        );
    };
    let mut lines = Lines::default();
    if let Some(max) = max {
        let over = v > max;
        lines.judge(
            over,
            format!(
                "{label} {} {} max {}",
                num(v),
                if over { ">" } else { "<=" },
                num(max)
            ),
        );
    }
    if let Some(min) = min {
        let under = v < min;
        lines.judge(
            under,
            format!(
                "{label} {} {} min {}",
                num(v),
                if under { "<" } else { ">=" },
                num(min)
            ),
        );
    }
    match blue {
        Some((Some(b), ratio)) => {
            let over = v > b * ratio;
            lines.judge(
                over,
                format!(
                    "{label} {} {} {} x blue's {}",
                    num(v),
                    if over { ">" } else { "<=" },
                    num(ratio),
                    num(b)
                ),
            );
        }
        Some((None, _)) => lines.skipped.push(format!(
            "blue has no data to compare with (green {label} {})",
            num(v)
        )),
        None => {}
    }
    lines.verdict(context)
}

#[async_trait]
impl Check for CloudwatchCheck {
    fn name(&self) -> &str {
        &self.name
    }

    async fn evaluate(&self, _ctx: &CheckContext) -> Observation {
        let (start, end) = window_bounds((self.clock)(), self.window, self.period);
        let mut series = vec![self.series(&self.dimensions)];
        if let Some(c) = &self.compare {
            series.push(self.series(&c.blue_dimensions));
        }
        let what = format!(
            "{} {} ({})",
            self.namespace,
            self.metric_name,
            dims_text(&self.dimensions)
        );
        let values = match read(&self.client, &series, self.period, start, end).await {
            Ok(v) => v,
            Err(e) => {
                return Observation::new(
                    &self.name,
                    Verdict::Error,
                    format!("cannot read CloudWatch {what}: {e}"),
                )
            }
        };
        let context = format!("in the last {}", Human(self.window));
        let label = if values[0].is_none() {
            what
        } else {
            format!("{} {}", self.metric_name, self.statistic)
        };
        let blue = self
            .compare
            .as_ref()
            .map(|c| (values.get(1).copied().flatten(), c.max_ratio));
        obs(
            &self.name,
            judge_metric(&label, values[0], self.max, self.min, blue, &context),
        )
    }
}

/// `alb-error-rate`: HTTPCode_Target_5XX_Count / RequestCount of green's
/// target group, and optionally against blue's.
pub struct AlbErrorRateCheck {
    pub(crate) name: String,
    pub(crate) client: aws_sdk_cloudwatch::Client,
    pub(crate) clock: Clock,
    pub(crate) load_balancer: String,
    pub(crate) target_group: String,
    pub(crate) max_percent: f64,
    pub(crate) min_requests: u64,
    pub(crate) window: Duration,
    pub(crate) compare: Option<CompareToBlue>,
}

pub(crate) fn alb_series(
    dimensions: BTreeMap<String, String>,
    metric: &str,
    statistic: &str,
) -> Series {
    Series {
        namespace: ALB_NAMESPACE.into(),
        metric: metric.into(),
        dimensions,
        statistic: statistic.into(),
    }
}

pub(crate) fn alb_dims(load_balancer: &str, target_group: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("LoadBalancer".to_string(), load_balancer.to_string()),
        ("TargetGroup".to_string(), target_group.to_string()),
    ])
}

/// Error counts of one colour: (5xx, requests).
pub type Counts = (u64, u64);

/// Judges green's 5xx rate against `max_percent` and, with `blue =
/// Some((counts, max_ratio))`, against blue's rate times `max_ratio`
/// (judged only when blue served at least `min_requests`).
pub fn judge_error_rate(
    green: Counts,
    blue: Option<(Counts, f64)>,
    max_percent: f64,
    min_requests: u64,
    context: &str,
) -> (Verdict, String) {
    let min = min_requests.max(1);
    let (errors, requests) = green;
    if requests < min {
        return (
            Verdict::Inconclusive,
            format!("green served {requests} of {min} requests needed {context}"),
        );
    }
    let rate = errors as f64 * 100.0 / requests as f64;
    let mut lines = Lines::default();
    let over = rate > max_percent;
    lines.judge(
        over,
        format!(
            "green error rate {} % {} {} %",
            num(rate),
            if over { ">" } else { "<=" },
            num(max_percent)
        ),
    );
    if let Some(((b_errors, b_requests), ratio)) = blue {
        if b_requests >= min {
            let b_rate = b_errors as f64 * 100.0 / b_requests as f64;
            let over = rate > b_rate * ratio;
            lines.judge(
                over,
                format!(
                    "green error rate {} % {} {} x blue's {} % ({b_errors} 5xx of {b_requests} blue requests)",
                    num(rate),
                    if over { ">" } else { "<=" },
                    num(ratio),
                    num(b_rate)
                ),
            );
        } else {
            lines.skipped.push(format!(
                "blue served {b_requests} of {min} requests needed to compare"
            ));
        }
    }
    lines.verdict(&format!(
        "over {requests} green requests ({errors} 5xx) {context}"
    ))
}

#[async_trait]
impl Check for AlbErrorRateCheck {
    fn name(&self) -> &str {
        &self.name
    }

    async fn evaluate(&self, _ctx: &CheckContext) -> Observation {
        let period = Duration::from_secs(60);
        let (start, end) = window_bounds((self.clock)(), self.window, period);
        let green = alb_dims(&self.load_balancer, &self.target_group);
        let mut series = vec![
            alb_series(green.clone(), "HTTPCode_Target_5XX_Count", "Sum"),
            alb_series(green, "RequestCount", "Sum"),
        ];
        if let Some(c) = &self.compare {
            series.push(alb_series(
                c.blue_dimensions.clone(),
                "HTTPCode_Target_5XX_Count",
                "Sum",
            ));
            series.push(alb_series(c.blue_dimensions.clone(), "RequestCount", "Sum"));
        }
        let values = match read(&self.client, &series, period, start, end).await {
            Ok(v) => v,
            Err(e) => {
                return Observation::new(
                    &self.name,
                    Verdict::Error,
                    format!(
                        "cannot read the ALB metrics of {} from CloudWatch: {e}",
                        self.target_group
                    ),
                )
            }
        };
        // Missing data is no requests, or no 5xx.
        let count = |i: usize| {
            values
                .get(i)
                .copied()
                .flatten()
                .unwrap_or(0.0)
                .max(0.0)
                .round() as u64
        };
        let blue = self
            .compare
            .as_ref()
            .map(|c| ((count(2), count(3)), c.max_ratio));
        obs(
            &self.name,
            judge_error_rate(
                (count(0), count(1)),
                blue,
                self.max_percent,
                self.min_requests,
                &format!("in the last {}", Human(self.window)),
            ),
        )
    }
}

/// `alb-latency`: TargetResponseTime pN of green's target group against
/// `max` and/or blue's pN times `max_ratio`.
pub struct AlbLatencyCheck {
    pub(crate) name: String,
    pub(crate) client: aws_sdk_cloudwatch::Client,
    pub(crate) clock: Clock,
    pub(crate) load_balancer: String,
    pub(crate) target_group: String,
    pub(crate) percentile: f64,
    pub(crate) max: Option<Duration>,
    pub(crate) window: Duration,
    pub(crate) compare: Option<CompareToBlue>,
}

/// Judges green's latency (seconds) against `max` and blue's times a ratio.
pub fn judge_latency(
    label: &str,
    green: Option<f64>,
    max: Option<Duration>,
    blue: Option<(Option<f64>, f64)>,
    context: &str,
) -> (Verdict, String) {
    let Some(v) = green else {
        return (
            Verdict::Inconclusive,
            format!("no {label} data for green {context}"),
        );
    };
    let mut lines = Lines::default();
    if let Some(max) = max {
        let max = max.as_secs_f64();
        let over = v > max;
        lines.judge(
            over,
            format!(
                "green {label} {} {} max {}",
                ms(v),
                if over { ">" } else { "<=" },
                ms(max)
            ),
        );
    }
    match blue {
        Some((Some(b), ratio)) => {
            let over = v > b * ratio;
            lines.judge(
                over,
                format!(
                    "green {label} {} {} {} x blue's {}",
                    ms(v),
                    if over { ">" } else { "<=" },
                    num(ratio),
                    ms(b)
                ),
            );
        }
        Some((None, _)) => lines.skipped.push(format!(
            "blue has no {label} data to compare with (green {})",
            ms(v)
        )),
        None => {}
    }
    lines.verdict(context)
}

#[async_trait]
impl Check for AlbLatencyCheck {
    fn name(&self) -> &str {
        &self.name
    }

    async fn evaluate(&self, _ctx: &CheckContext) -> Observation {
        let period = Duration::from_secs(60);
        let (start, end) = window_bounds((self.clock)(), self.window, period);
        let stat = format!("p{}", self.percentile);
        let mut series = vec![alb_series(
            alb_dims(&self.load_balancer, &self.target_group),
            "TargetResponseTime",
            &stat,
        )];
        if let Some(c) = &self.compare {
            series.push(alb_series(
                c.blue_dimensions.clone(),
                "TargetResponseTime",
                &stat,
            ));
        }
        let values = match read(&self.client, &series, period, start, end).await {
            Ok(v) => v,
            Err(e) => {
                return Observation::new(
                    &self.name,
                    Verdict::Error,
                    format!(
                        "cannot read TargetResponseTime {stat} of {} from CloudWatch: {e}",
                        self.target_group
                    ),
                )
            }
        };
        let blue = self
            .compare
            .as_ref()
            .map(|c| (values.get(1).copied().flatten(), c.max_ratio));
        obs(
            &self.name,
            judge_latency(
                &format!("TargetResponseTime {stat}"),
                values[0],
                self.max,
                blue,
                &format!("(worst minute) in the last {}", Human(self.window)),
            ),
        )
    }
}
