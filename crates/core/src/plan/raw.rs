//! Reading a plan file: TOML in, a validated [`Plan`] or a located error out.
//!
//! Unknown keys are refused everywhere. Every error names the file, the line
//! and column, and says what was expected; semantic errors (splits out of
//! order, a hold shorter than the analysis interval, ...) are found here,
//! before anything could move traffic.

use std::collections::BTreeMap;
use std::fmt;
use std::ops::Range;
use std::path::PathBuf;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Deserialize;
use toml::Spanned;

use super::{
    AlbRouter, AwsConfig, CompareToBlue, EcsEventsTrigger, EcsPlatform, PlatformConfig,
    Route53Router, SdkTimeouts, TriggerConfig,
};
use super::{
    Analysis, CheckConfig, CheckSpec, Judge, LocalRouter, OnAdapterFailure, OnDrift,
    OnInconclusive, Plan, PrometheusCheck, PrometheusJudge, RollbackPolicy, RouterConfig, Step,
    StoreConfig, Strategy, Timeouts,
};
use crate::time::{parse_duration, Human};
use crate::Split;

/// A plan file that could not be used, with where and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlanError {
    pub file: String,
    /// 1-based; 0 when the error has no place in the file.
    pub line: usize,
    pub column: usize,
    pub message: String,
}

impl fmt::Display for PlanError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            write!(f, "{}: {}", self.file, self.message)
        } else {
            write!(
                f,
                "{}:{}:{}: {}",
                self.file, self.line, self.column, self.message
            )
        }
    }
}

impl std::error::Error for PlanError {}

pub const PRESETS: &[&str] = &["seed", "canary", "linear", "exponential", "all-at-once"];
pub const ROUTERS: &[&str] = &["local", "route53", "alb"];
pub const CHECKS: &[&str] = &[
    "error-rate",
    "sequential-error-rate",
    "latency",
    "health",
    "http",
    "target-health",
    "cloudwatch",
    "alb-error-rate",
    "alb-sequential-error-rate",
    "alb-latency",
    "alarm",
    "ecs-service",
    "prometheus",
];
pub const STORES: &[&str] = &["sqlite", "dynamodb"];
pub const PLATFORMS: &[&str] = &["ecs"];
pub const TRIGGERS: &[&str] = &["ecs-events"];

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPlan {
    service: Spanned<RawService>,
    router: Spanned<toml::Table>,
    strategy: Spanned<RawStrategy>,
    // Not `Spanned`: toml cannot span a table that is only implied by a
    // dotted header such as `[[analysis.checks]]`.
    analysis: Option<RawAnalysis>,
    rollback: Option<RawRollback>,
    timeouts: Option<RawTimeouts>,
    store: Option<Spanned<toml::Table>>,
    aws: Option<RawAws>,
    platform: Option<Spanned<toml::Table>>,
    trigger: Option<Spanned<toml::Table>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAws {
    region: Option<String>,
    profile: Option<String>,
    endpoint_url: Option<String>,
    connect_timeout: Option<Spanned<String>>,
    read_timeout: Option<Spanned<String>>,
    attempt_timeout: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRoute53 {
    hosted_zone_id: String,
    record_name: String,
    record_type: Option<String>,
    blue_set_identifier: Option<String>,
    green_set_identifier: Option<String>,
    allow_short_holds: Option<bool>,
    insync_timeout: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAlb {
    listener_arn: Option<String>,
    rule_arn: Option<String>,
    blue_target_group_arn: String,
    green_target_group_arn: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTargetHealth {
    name: Option<String>,
    target_group_arn: Option<String>,
    min_healthy: Option<u32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCloudwatch {
    name: Option<String>,
    namespace: String,
    metric_name: String,
    #[serde(default)]
    dimensions: BTreeMap<String, String>,
    statistic: Option<String>,
    period: Option<String>,
    window: Option<String>,
    max: Option<f64>,
    min: Option<f64>,
    compare: Option<String>,
    #[serde(default)]
    blue_dimensions: BTreeMap<String, String>,
    max_ratio: Option<f64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAlbMetric {
    name: Option<String>,
    load_balancer: Option<String>,
    target_group: Option<String>,
    blue_target_group: Option<String>,
    // alb-error-rate
    max_percent: Option<f64>,
    min_requests: Option<u64>,
    // alb-latency
    percentile: Option<f64>,
    max: Option<String>,
    window: Option<String>,
    compare: Option<String>,
    max_ratio: Option<f64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAlbSequential {
    name: Option<String>,
    load_balancer: Option<String>,
    target_group: Option<String>,
    blue_load_balancer: Option<String>,
    blue_target_group: Option<String>,
    settle: Option<String>,
    alpha: Option<f64>,
    margin: Option<f64>,
    detect_ratio: Option<f64>,
    detect_points: Option<f64>,
    min_rate: Option<f64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAlarm {
    name: Option<String>,
    alarm_names: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEcsService {
    name: Option<String>,
    cluster: Option<String>,
    service: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDynamo {
    table: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEcsPlatform {
    cluster: String,
    blue_service: String,
    green_service: String,
    /// `"app"`, or one name per colour: `{ blue = "blue-app", green =
    /// "green-app" }` (read in [`container_names`]).
    container: toml::Value,
    ready_deadline: Option<String>,
    scale_down_after: Option<String>,
}

/// `[platform] container`: blue's name and, when it differs, green's.
fn container_names(value: &toml::Value) -> Result<(String, Option<String>), String> {
    const EXPECTED: &str = "expected a container name, e.g. \"app\", or one per colour, e.g. { blue = \"blue-app\", green = \"green-app\" }";
    let name = |v: Option<&toml::Value>| match v.and_then(toml::Value::as_str) {
        Some(n) if !n.trim().is_empty() => Ok(n.to_string()),
        _ => Err(format!("`container`: {EXPECTED}")),
    };
    match value {
        toml::Value::String(_) => Ok((name(Some(value))?, None)),
        toml::Value::Table(t) => {
            if let Some(k) = t.keys().find(|k| *k != "blue" && *k != "green") {
                return Err(format!("`container`: unknown key `{k}`; {EXPECTED}"));
            }
            let (blue, green) = (name(t.get("blue"))?, name(t.get("green"))?);
            Ok(if blue == green {
                (blue, None)
            } else {
                (blue, Some(green))
            })
        }
        _ => Err(format!("`container`: {EXPECTED}")),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEcsEvents {
    queue_url: String,
    cluster: Option<String>,
    services: Vec<String>,
    #[serde(default)]
    containers: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawService {
    name: Spanned<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStrategy {
    preset: Option<Spanned<String>>,
    steps: Option<Spanned<Vec<Spanned<RawStep>>>>,
    /// canary: the canary's split.
    split: Option<Spanned<f64>>,
    /// linear: how much each step adds.
    increment: Option<Spanned<f64>>,
    /// exponential: the splits to walk.
    splits: Option<Spanned<Vec<f64>>>,
    /// Every preset: how long each step holds.
    hold: Option<Spanned<String>>,
    bake: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStep {
    split: f64,
    hold: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAnalysis {
    interval: Option<Spanned<String>>,
    judge: Option<Spanned<String>>,
    failure_limit: Option<u32>,
    inconclusive_limit: Option<u32>,
    on_inconclusive: Option<Spanned<String>>,
    wait_for_data: Option<Spanned<String>>,
    on_wait_expired: Option<Spanned<String>>,
    /// Not `Spanned`: toml cannot span the tables of an array of tables;
    /// see [`Cx::check_span`].
    #[serde(default)]
    checks: Vec<toml::Table>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRollback {
    adapter_deadline: Option<Spanned<String>>,
    on_adapter_failure: Option<Spanned<String>>,
    on_drift: Option<Spanned<String>>,
    rollback_deadline: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTimeouts {
    router_read: Option<Spanned<String>>,
    router_write: Option<Spanned<String>>,
    check: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLocalRouter {
    admin_url: String,
    token: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawErrorRate {
    name: Option<String>,
    max_percent: f64,
    min_requests: Option<u64>,
    window: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSequentialErrorRate {
    name: Option<String>,
    alpha: Option<f64>,
    margin: Option<f64>,
    detect_ratio: Option<f64>,
    detect_points: Option<f64>,
    min_rate: Option<f64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPrometheus {
    name: Option<String>,
    url: String,
    token: Option<String>,
    timeout: Option<String>,
    colours: Option<RawColourValues>,
    colour_label: Option<String>,
    requests: Option<String>,
    failures: Option<String>,
    scrape_interval: Option<String>,
    alpha: Option<f64>,
    margin: Option<f64>,
    detect_ratio: Option<f64>,
    detect_points: Option<f64>,
    min_rate: Option<f64>,
    query: Option<String>,
    max: Option<f64>,
    min: Option<f64>,
    max_ratio_to_blue: Option<f64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawColourValues {
    blue: String,
    green: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLatency {
    name: Option<String>,
    percentile: Option<f64>,
    max: Option<String>,
    max_ratio_to_blue: Option<f64>,
    ratio_floor: Option<String>,
    min_requests: Option<u64>,
    window: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNamed {
    name: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHttp {
    name: Option<String>,
    url: String,
    body_contains: Option<String>,
    timeout: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSqlite {
    path: Option<PathBuf>,
}

/// Parses and validates a plan. `file` is only used in error messages.
/// Where `bytes` stop being UTF-8, if they do: the 1-based line and
/// column (counted in characters) of the first bad byte, and that byte.
/// For files read as bytes, so the error can say where.
pub fn invalid_utf8_at(bytes: &[u8]) -> Option<(usize, usize, u8)> {
    let err = std::str::from_utf8(bytes).err()?;
    let good = &bytes[..err.valid_up_to()];
    // `good` is valid UTF-8 by construction.
    let good = std::str::from_utf8(good).unwrap_or_default();
    let line = good.matches('\n').count() + 1;
    let column = good.rsplit('\n').next().unwrap_or_default().chars().count() + 1;
    Some((line, column, bytes[err.valid_up_to()]))
}

/// Parses a plan file's bytes: [`parse`], after refusing text that is not
/// UTF-8 with the line and column where it stops being so.
pub fn parse_bytes(bytes: &[u8], file: &str) -> Result<Plan, PlanError> {
    match std::str::from_utf8(bytes) {
        Ok(text) => parse(text, file),
        Err(_) => {
            let (line, column, byte) = invalid_utf8_at(bytes).unwrap_or((0, 0, 0));
            Err(PlanError {
                file: file.to_string(),
                line,
                column,
                message: format!("not valid UTF-8 (byte 0x{byte:02x}); plan files are UTF-8 text"),
            })
        }
    }
}

pub fn parse(text: &str, file: &str) -> Result<Plan, PlanError> {
    let cx = Cx { text, file };
    let raw: RawPlan =
        toml::from_str(text).map_err(|e| cx.error(e.span(), e.message().to_string()))?;

    let name = &raw.service.get_ref().name;
    if name.get_ref().is_empty()
        || name.get_ref().len() > MAX_SERVICE_NAME
        || !name
            .get_ref()
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    {
        return Err(cx.at(
            name,
            format!(
                "service name must be 1 to {MAX_SERVICE_NAME} letters, digits, `-`, `_` and `.`"
            ),
        ));
    }

    let analysis = cx.analysis(
        raw.analysis.as_ref(),
        raw.strategy.get_ref().preset.as_ref(),
    )?;
    let strategy = cx.strategy(&raw.strategy, &analysis)?;
    let router = cx.router(&raw.router)?;
    let platform = cx.platform(raw.platform.as_ref())?;
    let checks = cx.checks(
        raw.analysis.as_ref(),
        &analysis,
        &strategy,
        &router,
        platform.as_ref(),
    )?;
    let analysis = Analysis { checks, ..analysis };
    let rollback = cx.rollback(raw.rollback.as_ref())?;
    let timeouts = cx.timeouts(raw.timeouts.as_ref(), &router, analysis.interval)?;
    let store = cx.store(raw.store.as_ref())?;
    let trigger = cx.trigger(raw.trigger.as_ref())?;
    let aws = match raw.aws {
        Some(a) => cx.aws(a)?,
        None => AwsConfig::default(),
    };

    Ok(Plan {
        service: name.get_ref().clone(),
        router,
        strategy,
        analysis,
        rollback,
        timeouts,
        store,
        aws,
        platform,
        trigger,
        release: None,
        label: None,
    })
}

struct Cx<'a> {
    text: &'a str,
    file: &'a str,
}

impl Cx<'_> {
    fn error(&self, span: Option<Range<usize>>, message: String) -> PlanError {
        let (line, column) = match span {
            Some(span) => line_col(self.text, span.start),
            None => (0, 0),
        };
        PlanError {
            file: self.file.to_string(),
            line,
            column,
            message: message.trim_end().to_string(),
        }
    }

    fn at<T>(&self, spanned: &Spanned<T>, message: impl Into<String>) -> PlanError {
        self.error(Some(spanned.span()), message.into())
    }

    fn duration(&self, value: &Spanned<String>, key: &str) -> Result<Duration, PlanError> {
        parse_duration(value.get_ref()).map_err(|e| self.at(value, format!("`{key}`: {e}")))
    }

    /// A time limit: `into` is set to `value` when given, which must be
    /// above 0 and at most `max`.
    fn limit(
        &self,
        value: &Option<Spanned<String>>,
        key: &str,
        max: Duration,
        into: &mut Duration,
    ) -> Result<(), PlanError> {
        if let Some(v) = value {
            let d = self.duration(v, key)?;
            if d.is_zero() || d > max {
                return Err(self.at(
                    v,
                    format!("`{key}` must be above 0 and at most {}", Human(max)),
                ));
            }
            *into = d;
        }
        Ok(())
    }

    /// Deserialises a sub-table (router, check, store) into its kind's shape.
    fn table<T: DeserializeOwned>(
        &self,
        table: &Spanned<toml::Table>,
        what: &str,
    ) -> Result<T, PlanError> {
        let mut t = table.get_ref().clone();
        t.remove("kind");
        T::deserialize(toml::Value::Table(t))
            .map_err(|e| self.at(table, format!("{what}: {}", e.message())))
    }

    fn kind<'t>(
        &self,
        table: &'t Spanned<toml::Table>,
        what: &str,
        known: &[&str],
    ) -> Result<&'t str, PlanError> {
        match table.get_ref().get("kind") {
            Some(toml::Value::String(k)) if known.contains(&k.as_str()) => Ok(k),
            Some(toml::Value::String(k)) => Err(self.at(
                table,
                format!(
                    "unknown {what} kind `{k}`; expected one of: {}",
                    known.join(", ")
                ),
            )),
            Some(_) => Err(self.at(
                table,
                format!(
                    "{what} `kind` must be a string, one of: {}",
                    known.join(", ")
                ),
            )),
            None => Err(self.at(
                table,
                format!("{what} needs a `kind`, one of: {}", known.join(", ")),
            )),
        }
    }

    fn analysis(
        &self,
        raw: Option<&RawAnalysis>,
        preset: Option<&Spanned<String>>,
    ) -> Result<Analysis, PlanError> {
        let seed = preset.is_some_and(|p| p.get_ref() == "seed");
        let mut a = Analysis {
            interval: Duration::from_secs(if seed { 60 } else { 10 }),
            judge: if seed {
                Judge::EndOfHold
            } else {
                Judge::Continuous
            },
            failure_limit: 0,
            inconclusive_limit: 3,
            wait_for_data: super::DEFAULT_WAIT_FOR_DATA,
            on_wait_expired: super::OnWaitExpired::Pass,
            on_inconclusive: OnInconclusive::Rollback,
            checks: vec![],
        };
        let Some(raw) = raw else { return Ok(a) };
        if let Some(i) = &raw.interval {
            a.interval = self.duration(i, "analysis.interval")?;
            if a.interval.is_zero() {
                return Err(self.at(i, "`analysis.interval` must be longer than zero"));
            }
        }
        if let Some(j) = &raw.judge {
            a.judge = match j.get_ref().as_str() {
                "continuous" => Judge::Continuous,
                "end-of-hold" => Judge::EndOfHold,
                other => {
                    return Err(self.at(j, format!("unknown `analysis.judge` `{other}`; expected `continuous` or `end-of-hold`")))
                }
            };
        }
        a.failure_limit = raw.failure_limit.unwrap_or(a.failure_limit);
        a.inconclusive_limit = raw.inconclusive_limit.unwrap_or(a.inconclusive_limit);
        if let Some(w) = &raw.wait_for_data {
            a.wait_for_data = self.duration(w, "analysis.wait_for_data")?;
        }
        if let Some(o) = &raw.on_wait_expired {
            a.on_wait_expired = match o.get_ref().as_str() {
                "pass" => super::OnWaitExpired::Pass,
                "pause" => super::OnWaitExpired::Pause,
                "inconclusive" => super::OnWaitExpired::Inconclusive,
                other => {
                    return Err(self.at(o, format!("unknown `analysis.on_wait_expired` `{other}`; expected `pass`, `pause` or `inconclusive`")))
                }
            };
        }
        if let Some(o) = &raw.on_inconclusive {
            a.on_inconclusive = match o.get_ref().as_str() {
                "pause" => OnInconclusive::Pause,
                "rollback" => OnInconclusive::Rollback,
                other => {
                    return Err(self.at(o, format!("unknown `analysis.on_inconclusive` `{other}`; expected `pause` or `rollback`")))
                }
            };
        }
        Ok(a)
    }

    fn strategy(
        &self,
        raw: &Spanned<RawStrategy>,
        analysis: &Analysis,
    ) -> Result<Strategy, PlanError> {
        let s = raw.get_ref();
        let hold = |default: &str| -> Result<Duration, PlanError> {
            match &s.hold {
                Some(h) => self.duration(h, "strategy.hold"),
                None => Ok(parse_duration(default).expect("valid default")),
            }
        };
        let percent = |v: &Spanned<f64>, key: &str| -> Result<Split, PlanError> {
            self.split(*v.get_ref(), v, key)
        };
        let only = |allowed: &[&str], preset: &str| -> Result<(), PlanError> {
            let present: [(&str, Option<Range<usize>>); 4] = [
                ("split", s.split.as_ref().map(|v| v.span())),
                ("increment", s.increment.as_ref().map(|v| v.span())),
                ("splits", s.splits.as_ref().map(|v| v.span())),
                ("hold", s.hold.as_ref().map(|v| v.span())),
            ];
            for (key, span) in present {
                if let Some(span) = span {
                    if !allowed.contains(&key) {
                        let allowed = if allowed.is_empty() {
                            "none".to_string()
                        } else {
                            allowed.join(", ")
                        };
                        return Err(self.error(
                            Some(span),
                            format!(
                                "`strategy.{key}` does not apply to {preset}; it takes: {allowed}"
                            ),
                        ));
                    }
                }
            }
            Ok(())
        };

        let (preset, steps) = match (&s.preset, &s.steps) {
            (Some(_), Some(steps)) => {
                return Err(self.at(
                    steps,
                    "give either `strategy.preset` or `strategy.steps`, not both",
                ))
            }
            (None, None) => {
                return Err(self.at(
                    raw,
                    format!(
                        "`[strategy]` needs a `preset` (one of: {}) or explicit `steps`",
                        PRESETS.join(", ")
                    ),
                ))
            }
            (None, Some(steps)) => {
                only(&[], "explicit steps")?;
                let mut out = Vec::new();
                for (i, step) in steps.get_ref().iter().enumerate() {
                    let key = format!("strategy.steps[{i}]");
                    let split = self.split(step.get_ref().split, step, &format!("{key}.split"))?;
                    let hold = parse_duration(&step.get_ref().hold)
                        .map_err(|e| self.at(step, format!("`{key}.hold`: {e}")))?;
                    out.push((Step { split, hold }, step.span()));
                }
                ("steps".to_string(), out)
            }
            (Some(p), None) => {
                let span = p.span();
                let with = |splits: Vec<Split>, hold: Duration| -> Vec<(Step, Range<usize>)> {
                    splits
                        .into_iter()
                        .map(|split| (Step { split, hold }, span.clone()))
                        .collect()
                };
                let steps = match p.get_ref().as_str() {
                    "seed" => {
                        only(
                            &[],
                            "preset `seed` (10/50/100 % with 60 s holds, as the reference)",
                        )?;
                        let pct = |p| Split::from_percent(p).expect("valid");
                        with(
                            vec![pct(10.0), pct(50.0), Split::FULL],
                            Duration::from_secs(60),
                        )
                    }
                    "canary" => {
                        only(&["split", "hold"], "preset `canary`")?;
                        let split = match &s.split {
                            Some(v) => percent(v, "strategy.split")?,
                            None => Split::from_percent(10.0).expect("valid"),
                        };
                        let mut splits = vec![split];
                        if split != Split::FULL {
                            splits.push(Split::FULL);
                        }
                        with(splits, hold("5m")?)
                    }
                    "linear" => {
                        only(&["increment", "hold"], "preset `linear`")?;
                        let inc = match &s.increment {
                            Some(v) => percent(v, "strategy.increment")?,
                            None => Split::from_percent(10.0).expect("valid"),
                        };
                        if inc == Split::ZERO {
                            return Err(self.at(
                                s.increment.as_ref().expect("zero only if given"),
                                "`strategy.increment` must be above 0",
                            ));
                        }
                        let mut splits = Vec::new();
                        let mut bp = 0u16;
                        while bp < 10_000 {
                            bp = (bp + inc.basis_points()).min(10_000);
                            splits.push(Split::from_basis_points(bp).expect("capped"));
                        }
                        with(splits, hold("1m")?)
                    }
                    "exponential" => {
                        only(&["splits", "hold"], "preset `exponential`")?;
                        let splits = match &s.splits {
                            Some(v) => v
                                .get_ref()
                                .iter()
                                .enumerate()
                                .map(|(i, p)| self.split(*p, v, &format!("strategy.splits[{i}]")))
                                .collect::<Result<Vec<_>, _>>()?,
                            None => [1.0, 2.0, 5.0, 10.0, 25.0, 50.0, 100.0]
                                .iter()
                                .map(|p| Split::from_percent(*p).expect("valid"))
                                .collect(),
                        };
                        with(splits, hold("1m")?)
                    }
                    "all-at-once" => {
                        only(&["hold"], "preset `all-at-once`")?;
                        with(vec![Split::FULL], hold("1m")?)
                    }
                    other => {
                        return Err(self.at(
                            p,
                            format!(
                                "unknown preset `{other}`; expected one of: {}",
                                PRESETS.join(", ")
                            ),
                        ))
                    }
                };
                (p.get_ref().clone(), steps)
            }
        };

        if steps.is_empty() {
            return Err(self.at(
                raw,
                "the strategy has no steps; give at least one, ending at 100",
            ));
        }
        let mut previous = Split::ZERO;
        for (i, (step, span)) in steps.iter().enumerate() {
            if step.split <= previous {
                return Err(self.error(
                    Some(span.clone()),
                    format!(
                        "step {} sends {} to green, not more than the step before ({previous}); splits must strictly increase",
                        i + 1,
                        step.split
                    ),
                ));
            }
            if step.hold < analysis.interval {
                return Err(self.error(
                    Some(span.clone()),
                    format!(
                        "step {} holds {}, shorter than the analysis interval ({}); no verdict could be taken during it",
                        i + 1,
                        Human(step.hold),
                        Human(analysis.interval)
                    ),
                ));
            }
            previous = step.split;
        }
        let (last, span) = steps.last().expect("non-empty");
        if last.split != Split::FULL {
            return Err(self.error(
                Some(span.clone()),
                format!("the last step must send 100 % to green, not {}", last.split),
            ));
        }
        let bake = match &s.bake {
            Some(b) => {
                let bake = self.duration(b, "strategy.bake")?;
                if !bake.is_zero() && bake < analysis.interval {
                    return Err(self.at(
                        b,
                        format!(
                            "`strategy.bake` ({}) is shorter than the analysis interval ({}); use 0s or at least one interval",
                            Human(bake),
                            Human(analysis.interval)
                        ),
                    ));
                }
                bake
            }
            None => Duration::ZERO,
        };
        Ok(Strategy {
            preset,
            steps: steps.into_iter().map(|(s, _)| s).collect(),
            bake,
        })
    }

    fn split<T>(&self, percent: f64, at: &Spanned<T>, key: &str) -> Result<Split, PlanError> {
        let split = Split::from_percent(percent).ok_or_else(|| {
            self.at(
                at,
                format!("`{key}` = {percent}: a split is a percentage from 0 to 100"),
            )
        })?;
        if (split.percent() - percent).abs() > 1e-9 {
            return Err(self.at(
                at,
                format!("`{key}` = {percent}: splits have a precision of 0.01 %"),
            ));
        }
        Ok(split)
    }

    fn router(&self, table: &Spanned<toml::Table>) -> Result<RouterConfig, PlanError> {
        match self.kind(table, "router", ROUTERS)? {
            "local" => {
                let r: RawLocalRouter = self.table(table, "router `local`")?;
                if let Err(why) = check_admin_url(&r.admin_url) {
                    return Err(self.at(
                        table,
                        format!("router `local`: `admin_url` = {:?}: {why}", r.admin_url),
                    ));
                }
                Ok(RouterConfig::Local(LocalRouter {
                    admin_url: r.admin_url.trim_end_matches('/').to_string(),
                    token: r.token,
                    swapped: false,
                }))
            }
            "route53" => {
                let r: RawRoute53 = self.table(table, "router `route53`")?;
                let bad = |m: String| self.at(table, format!("router `route53`: {m}"));
                let record_type = r.record_type.unwrap_or_else(|| "A".into());
                if !["A", "AAAA", "CNAME"].contains(&record_type.as_str()) {
                    return Err(bad(format!(
                        "`record_type` `{record_type}` must be A, AAAA or CNAME"
                    )));
                }
                let blue = r.blue_set_identifier.unwrap_or_else(|| "blue".into());
                let green = r.green_set_identifier.unwrap_or_else(|| "green".into());
                if blue == green || blue.is_empty() || green.is_empty() {
                    return Err(bad(
                        "the blue and green set identifiers must be distinct and non-empty".into(),
                    ));
                }
                let insync_timeout = match &r.insync_timeout {
                    Some(t) => {
                        parse_duration(t).map_err(|e| bad(format!("`insync_timeout`: {e}")))?
                    }
                    None => Duration::from_secs(300),
                };
                let mut record_name = r.record_name;
                if !record_name.ends_with('.') {
                    record_name.push('.');
                }
                let zone = r.hosted_zone_id.trim_start_matches("/hostedzone/");
                // Route53 zone ids are upper-case letters and digits (e.g.
                // Z35SXDOTRQ7X7K); anything else is a name or a slip.
                if zone.is_empty()
                    || zone.len() > 32
                    || !zone
                        .chars()
                        .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit())
                {
                    return Err(bad(format!(
                        "`hosted_zone_id` `{}` is not a hosted zone id (upper-case letters and digits, e.g. Z35SXDOTRQ7X7K; `aws route53 list-hosted-zones` shows them)",
                        r.hosted_zone_id.escape_debug()
                    )));
                }
                Ok(RouterConfig::Route53(Route53Router {
                    hosted_zone_id: zone.to_string(),
                    record_name,
                    record_type,
                    blue_set_identifier: blue,
                    green_set_identifier: green,
                    allow_short_holds: r.allow_short_holds.unwrap_or(false),
                    insync_timeout,
                }))
            }
            "alb" => {
                let r: RawAlb = self.table(table, "router `alb`")?;
                let bad = |m: &str| self.at(table, format!("router `alb`: {m}"));
                match (&r.listener_arn, &r.rule_arn) {
                    (Some(_), Some(_)) | (None, None) => return Err(bad(
                        "give exactly one of `listener_arn` (its default action) and `rule_arn`",
                    )),
                    _ => {}
                }
                if r.blue_target_group_arn == r.green_target_group_arn {
                    return Err(bad("blue and green target groups must differ"));
                }
                let arns = [
                    ("listener_arn", r.listener_arn.as_deref(), ":listener/"),
                    ("rule_arn", r.rule_arn.as_deref(), ":listener-rule/"),
                    (
                        "blue_target_group_arn",
                        Some(r.blue_target_group_arn.as_str()),
                        ":targetgroup/",
                    ),
                    (
                        "green_target_group_arn",
                        Some(r.green_target_group_arn.as_str()),
                        ":targetgroup/",
                    ),
                ];
                for (key, arn, kind) in arns {
                    if let Some(arn) = arn {
                        check_arn(arn, kind).map_err(|e| bad(&format!("`{key}`: {e}")))?;
                    }
                }
                Ok(RouterConfig::Alb(AlbRouter {
                    listener_arn: r.listener_arn,
                    rule_arn: r.rule_arn,
                    blue_target_group_arn: r.blue_target_group_arn,
                    green_target_group_arn: r.green_target_group_arn,
                }))
            }
            _ => unreachable!("kind() only returns known kinds"),
        }
    }

    fn checks(
        &self,
        raw: Option<&RawAnalysis>,
        analysis: &Analysis,
        strategy: &Strategy,
        router: &RouterConfig,
        platform: Option<&PlatformConfig>,
    ) -> Result<Vec<CheckSpec>, PlanError> {
        let interval = analysis.interval;
        let alb = match router {
            RouterConfig::Alb(a) => Some(a),
            _ => None,
        };
        let Some(raw) = raw else { return Ok(vec![]) };
        let mut out: Vec<CheckSpec> = Vec::new();
        for (i, table) in raw.checks.iter().enumerate() {
            let table = &Spanned::new(self.check_span(i).unwrap_or(0..0), table.clone());
            let kind = self.kind(table, &format!("check #{}", i + 1), CHECKS)?;
            let what = format!("check #{} (`{kind}`)", i + 1);
            let dur =
                |v: &Option<String>, key: &str, default: Duration| -> Result<Duration, PlanError> {
                    match v {
                        Some(t) => parse_duration(t)
                            .map_err(|e| self.at(table, format!("{what}: `{key}`: {e}"))),
                        None => Ok(default),
                    }
                };
            let bad = |msg: String| self.at(table, format!("{what}: {msg}"));
            let (name, config) = match kind {
                "error-rate" => {
                    let r: RawErrorRate = self.table(table, &what)?;
                    if !(0.0..=100.0).contains(&r.max_percent) {
                        return Err(bad(format!(
                            "`max_percent` = {} must be from 0 to 100",
                            r.max_percent
                        )));
                    }
                    let window = dur(&r.window, "window", interval)?;
                    if window.is_zero() {
                        return Err(bad("`window` must be longer than zero".into()));
                    }
                    (
                        r.name,
                        CheckConfig::ErrorRate {
                            max_percent: r.max_percent,
                            min_requests: min_requests(r.min_requests, 10, &bad)?,
                            window,
                        },
                    )
                }
                "latency" => {
                    let r: RawLatency = self.table(table, &what)?;
                    let percentile = r.percentile.unwrap_or(99.0);
                    if !(percentile > 0.0 && percentile < 100.0) {
                        return Err(bad(format!(
                            "`percentile` = {percentile} must be above 0 and below 100"
                        )));
                    }
                    let max = optional_duration(&r.max, "max", &bad)?;
                    if let Some(ratio) = r.max_ratio_to_blue {
                        if !(ratio.is_finite() && ratio > 0.0) {
                            return Err(bad(format!(
                                "`max_ratio_to_blue` = {ratio} must be above 0"
                            )));
                        }
                    }
                    if max.is_none() && r.max_ratio_to_blue.is_none() {
                        return Err(bad(
                            "give `max` (e.g. \"250ms\"), `max_ratio_to_blue` (e.g. 1.5), or both"
                                .into(),
                        ));
                    }
                    let ratio_floor = optional_duration(&r.ratio_floor, "ratio_floor", &bad)?;
                    if ratio_floor.is_some() && r.max_ratio_to_blue.is_none() {
                        return Err(bad(
                            "`ratio_floor` bounds `max_ratio_to_blue`'s limit; give `max_ratio_to_blue` too"
                                .into(),
                        ));
                    }
                    let window = dur(&r.window, "window", interval)?;
                    (
                        r.name,
                        CheckConfig::Latency {
                            percentile,
                            max,
                            max_ratio_to_blue: r.max_ratio_to_blue,
                            ratio_floor,
                            min_requests: min_requests(r.min_requests, 10, &bad)?,
                            window,
                        },
                    )
                }
                "sequential-error-rate" => {
                    let r: RawSequentialErrorRate = self.table(table, &what)?;
                    let settings = sequential_settings(
                        strategy,
                        analysis,
                        [
                            r.alpha,
                            r.margin,
                            r.detect_ratio,
                            r.detect_points,
                            r.min_rate,
                        ],
                        &bad,
                    )?;
                    (
                        r.name,
                        CheckConfig::SequentialErrorRate {
                            alpha: settings.alpha,
                            margin: settings.margin,
                            detect_ratio: settings.detect_ratio,
                            detect_points: settings.detect_points,
                            min_rate: settings.min_rate,
                        },
                    )
                }
                "prometheus" => {
                    let r: RawPrometheus = self.table(table, &what)?;
                    let name = r.name.clone();
                    (name, prometheus_check(r, strategy, analysis, &dur, &bad)?)
                }
                "health" => {
                    let r: RawNamed = self.table(table, &what)?;
                    (r.name, CheckConfig::Health)
                }
                "http" => {
                    let r: RawHttp = self.table(table, &what)?;
                    if !r.url.starts_with("http://") {
                        return Err(bad(format!(
                            "`url` must be an http:// URL, not `{}`",
                            r.url
                        )));
                    }
                    let timeout = dur(&r.timeout, "timeout", Duration::from_secs(2))?;
                    if timeout.is_zero() {
                        return Err(bad("`timeout` must be longer than zero".into()));
                    }
                    (
                        r.name,
                        CheckConfig::Http {
                            url: r.url,
                            body_contains: r.body_contains,
                            timeout,
                        },
                    )
                }
                "target-health" => {
                    let r: RawTargetHealth = self.table(table, &what)?;
                    let target_group_arn = r
                        .target_group_arn
                        .or_else(|| alb.map(|a| a.green_target_group_arn.clone()))
                        .ok_or_else(|| bad("give `target_group_arn` (it defaults to green's only with router `alb`)".into()))?;
                    check_arn(&target_group_arn, ":targetgroup/")
                        .map_err(|e| bad(format!("`target_group_arn`: {e}")))?;
                    (
                        r.name,
                        CheckConfig::TargetHealth {
                            target_group_arn,
                            min_healthy: r.min_healthy.unwrap_or(1),
                        },
                    )
                }
                "cloudwatch" => {
                    let r: RawCloudwatch = self.table(table, &what)?;
                    let statistic = r.statistic.unwrap_or_else(|| "Average".into());
                    if !(super::aws::STATISTICS.contains(&statistic.as_str())
                        || percentile_statistic(&statistic).is_some())
                    {
                        return Err(bad(format!(
                            "`statistic` `{statistic}`: expected one of {} or a percentile such as p99",
                            super::aws::STATISTICS.join(", ")
                        )));
                    }
                    let period = dur(&r.period, "period", Duration::from_secs(60))?;
                    if period.as_secs() == 0 || period.subsec_millis() != 0 {
                        return Err(bad("`period` must be a whole number of seconds (CloudWatch: 1, 5, 10, 30 or a multiple of 60)".into()));
                    }
                    let window = dur(&r.window, "window", period.max(interval))?;
                    if window < period {
                        return Err(bad("`window` must be at least one `period`".into()));
                    }
                    let compare = match r.compare.as_deref() {
                        None => None,
                        Some("blue") => {
                            if r.blue_dimensions.is_empty() {
                                return Err(bad(
                                    "`compare = \"blue\"` needs `blue_dimensions`".into()
                                ));
                            }
                            Some(CompareToBlue {
                                blue_dimensions: r.blue_dimensions,
                                max_ratio: ratio(r.max_ratio, &bad)?,
                            })
                        }
                        Some(other) => {
                            return Err(bad(format!(
                                "`compare` `{other}`: the only comparison is \"blue\""
                            )))
                        }
                    };
                    if r.max.is_none() && r.min.is_none() && compare.is_none() {
                        return Err(bad(
                            "give a threshold: `max`, `min`, or `compare = \"blue\"`".into(),
                        ));
                    }
                    (
                        r.name,
                        CheckConfig::Cloudwatch {
                            namespace: r.namespace,
                            metric_name: r.metric_name,
                            dimensions: r.dimensions,
                            statistic,
                            period,
                            window,
                            max: r.max,
                            min: r.min,
                            compare,
                        },
                    )
                }
                "alb-error-rate" | "alb-latency" => {
                    let r: RawAlbMetric = self.table(table, &what)?;
                    let load_balancer = r
                        .load_balancer
                        .or_else(|| alb.and_then(|a| load_balancer_dimension(a.listener_arn.as_deref().or(a.rule_arn.as_deref())?)))
                        .ok_or_else(|| bad("give `load_balancer` (e.g. \"app/my-alb/50dc6c495c0c9188\"); it defaults to the router's only with router `alb`".into()))?;
                    let target_group = r
                        .target_group
                        .or_else(|| alb.and_then(|a| target_group_dimension(&a.green_target_group_arn)))
                        .ok_or_else(|| bad("give `target_group` (e.g. \"targetgroup/green/943f017f100becff\"); it defaults to green's only with router `alb`".into()))?;
                    for (key, value, kind) in [
                        ("load_balancer", &load_balancer, "app/"),
                        ("target_group", &target_group, "targetgroup/"),
                    ] {
                        if !value.starts_with(kind)
                            || value.chars().any(|c| c.is_whitespace() || c.is_control())
                        {
                            return Err(bad(format!("`{key}` `{}` is not a CloudWatch dimension value: it is written `{kind}NAME/ID`, without spaces", value.escape_debug())));
                        }
                    }
                    let window = dur(&r.window, "window", interval.max(Duration::from_secs(60)))?;
                    if window < Duration::from_secs(60) {
                        return Err(bad(
                            "`window` must be at least 60s: ALB metrics have one-minute periods"
                                .into(),
                        ));
                    }
                    let compare = match r.compare.as_deref() {
                        None => None,
                        Some("blue") => {
                            let blue = r
                                .blue_target_group
                                .or_else(|| alb.and_then(|a| target_group_dimension(&a.blue_target_group_arn)))
                                .ok_or_else(|| bad("`compare = \"blue\"` needs `blue_target_group` (defaults to blue's only with router `alb`)".into()))?;
                            let dims = BTreeMap::from([
                                ("LoadBalancer".to_string(), load_balancer.clone()),
                                ("TargetGroup".to_string(), blue),
                            ]);
                            Some(CompareToBlue {
                                blue_dimensions: dims,
                                max_ratio: ratio(r.max_ratio, &bad)?,
                            })
                        }
                        Some(other) => {
                            return Err(bad(format!(
                                "`compare` `{other}`: the only comparison is \"blue\""
                            )))
                        }
                    };
                    if kind == "alb-error-rate" {
                        if r.percentile.is_some() || r.max.is_some() {
                            return Err(bad(
                                "`percentile` and `max` belong to `alb-latency`; use `max_percent`"
                                    .into(),
                            ));
                        }
                        let max_percent = r
                            .max_percent
                            .ok_or_else(|| bad("give `max_percent`".into()))?;
                        if !(0.0..=100.0).contains(&max_percent) {
                            return Err(bad(format!(
                                "`max_percent` = {max_percent} must be from 0 to 100"
                            )));
                        }
                        (
                            r.name,
                            CheckConfig::AlbErrorRate {
                                load_balancer,
                                target_group,
                                max_percent,
                                min_requests: min_requests(r.min_requests, 50, &bad)?,
                                window,
                                compare,
                            },
                        )
                    } else {
                        if r.max_percent.is_some() || r.min_requests.is_some() {
                            return Err(bad(
                                "`max_percent` and `min_requests` belong to `alb-error-rate`"
                                    .into(),
                            ));
                        }
                        let percentile = r.percentile.unwrap_or(99.0);
                        if !(percentile > 0.0 && percentile < 100.0) {
                            return Err(bad(format!(
                                "`percentile` = {percentile} must be above 0 and below 100"
                            )));
                        }
                        let max = optional_duration(&r.max, "max", &bad)?;
                        if max.is_none() && compare.is_none() {
                            return Err(bad(
                                "give `max` (e.g. \"300ms\"), `compare = \"blue\"`, or both".into(),
                            ));
                        }
                        (
                            r.name,
                            CheckConfig::AlbLatency {
                                load_balancer,
                                target_group,
                                percentile,
                                max,
                                window,
                                compare,
                            },
                        )
                    }
                }
                "alb-sequential-error-rate" => {
                    let r: RawAlbSequential = self.table(table, &what)?;
                    let load_balancer = r
                        .load_balancer
                        .or_else(|| alb.and_then(|a| load_balancer_dimension(a.listener_arn.as_deref().or(a.rule_arn.as_deref())?)))
                        .ok_or_else(|| bad("give `load_balancer` (e.g. \"app/my-alb/50dc6c495c0c9188\"); it defaults to the router's only with router `alb`".into()))?;
                    let target_group = r
                        .target_group
                        .or_else(|| alb.and_then(|a| target_group_dimension(&a.green_target_group_arn)))
                        .ok_or_else(|| bad("give `target_group` (e.g. \"targetgroup/green/943f017f100becff\"); it defaults to green's only with router `alb`".into()))?;
                    let blue_target_group = r
                        .blue_target_group
                        .or_else(|| alb.and_then(|a| target_group_dimension(&a.blue_target_group_arn)))
                        .ok_or_else(|| bad("give `blue_target_group`, the target group green is compared with; it defaults to blue's only with router `alb`".into()))?;
                    let blue_load_balancer = r
                        .blue_load_balancer
                        .unwrap_or_else(|| load_balancer.clone());
                    for (key, value, kind) in [
                        ("load_balancer", &load_balancer, "app/"),
                        ("target_group", &target_group, "targetgroup/"),
                        ("blue_load_balancer", &blue_load_balancer, "app/"),
                        ("blue_target_group", &blue_target_group, "targetgroup/"),
                    ] {
                        if !value.starts_with(kind)
                            || value.chars().any(|c| c.is_whitespace() || c.is_control())
                        {
                            return Err(bad(format!("`{key}` `{}` is not a CloudWatch dimension value: it is written `{kind}NAME/ID`, without spaces", value.escape_debug())));
                        }
                    }
                    if target_group == blue_target_group && load_balancer == blue_load_balancer {
                        return Err(bad(format!("`target_group` and `blue_target_group` are both `{target_group}` on one load balancer: green is compared with another target group")));
                    }
                    let settle = dur(&r.settle, "settle", Duration::from_secs(60))?;
                    if settle > Duration::from_secs(900) {
                        return Err(bad("`settle` must be at most 15m".into()));
                    }
                    let settings = sequential_settings(
                        strategy,
                        analysis,
                        [
                            r.alpha,
                            r.margin,
                            r.detect_ratio,
                            r.detect_points,
                            r.min_rate,
                        ],
                        &bad,
                    )?;
                    (
                        r.name,
                        CheckConfig::AlbSequentialErrorRate {
                            load_balancer,
                            target_group,
                            blue_load_balancer,
                            blue_target_group,
                            settle,
                            settings,
                        },
                    )
                }
                "alarm" => {
                    let r: RawAlarm = self.table(table, &what)?;
                    if r.alarm_names.is_empty() {
                        return Err(bad("`alarm_names` is empty".into()));
                    }
                    (
                        r.name,
                        CheckConfig::Alarm {
                            alarm_names: r.alarm_names,
                        },
                    )
                }
                "ecs-service" => {
                    let r: RawEcsService = self.table(table, &what)?;
                    let from_platform = platform.map(|p| match p {
                        PlatformConfig::Ecs(e) => (e.cluster.clone(), e.green_service.clone()),
                    });
                    let cluster = r
                        .cluster
                        .or_else(|| from_platform.as_ref().map(|p| p.0.clone()));
                    let service = r
                        .service
                        .or_else(|| from_platform.as_ref().map(|p| p.1.clone()));
                    match (cluster, service) {
                        (Some(cluster), Some(service)) => (r.name, CheckConfig::EcsService { cluster, service }),
                        _ => return Err(bad("give `cluster` and `service` (they default to the ECS platform's green service)".into())),
                    }
                }
                _ => unreachable!("kind() only returns known kinds"),
            };
            let name = name.unwrap_or_else(|| kind.to_string());
            if out.iter().any(|c| c.name == name) {
                return Err(bad(format!(
                    "two checks are named `{name}`; give each a distinct `name`"
                )));
            }
            out.push(CheckSpec { name, config });
        }
        Ok(out)
    }

    /// Where the `i`-th `[[analysis.checks]]` header is, if checks are
    /// written as an array of tables.
    fn check_span(&self, i: usize) -> Option<Range<usize>> {
        let mut offset = 0;
        let mut found = 0;
        for line in self.text.split_inclusive('\n') {
            let compact: String = line.chars().filter(|c| !c.is_whitespace()).collect();
            if compact.starts_with("[[analysis.checks]]") {
                if found == i {
                    let start = offset + (line.len() - line.trim_start().len());
                    return Some(start..offset + line.len());
                }
                found += 1;
            }
            offset += line.len();
        }
        None
    }

    fn rollback(&self, raw: Option<&RawRollback>) -> Result<RollbackPolicy, PlanError> {
        let mut policy = RollbackPolicy {
            adapter_deadline: Duration::from_secs(30),
            on_adapter_failure: OnAdapterFailure::Rollback,
            on_drift: OnDrift::Pause,
            rollback_deadline: Duration::from_secs(30),
        };
        let Some(raw) = raw else { return Ok(policy) };
        if let Some(d) = &raw.adapter_deadline {
            policy.adapter_deadline = self.duration(d, "rollback.adapter_deadline")?;
            if policy.adapter_deadline.is_zero() {
                return Err(self.at(d, "`rollback.adapter_deadline` must be longer than zero: it is how long a failing router call is retried"));
            }
        }
        if let Some(d) = &raw.rollback_deadline {
            policy.rollback_deadline = self.duration(d, "rollback.rollback_deadline")?;
            if policy.rollback_deadline.is_zero() {
                return Err(self.at(d, "`rollback.rollback_deadline` must be longer than zero: it is how long the rollback is retried before the rollout reports it cannot restore blue"));
            }
        }
        if let Some(o) = &raw.on_adapter_failure {
            policy.on_adapter_failure = match o.get_ref().as_str() {
                "rollback" => OnAdapterFailure::Rollback,
                "hold" => OnAdapterFailure::Hold,
                other => {
                    return Err(self.at(o, format!("unknown `rollback.on_adapter_failure` `{other}`; expected `rollback` or `hold`")))
                }
            };
        }
        if let Some(o) = &raw.on_drift {
            policy.on_drift = match o.get_ref().as_str() {
                "pause" => OnDrift::Pause,
                "rollback" => OnDrift::Rollback,
                other => {
                    return Err(self.at(
                        o,
                        format!(
                            "unknown `rollback.on_drift` `{other}`; expected `pause` or `rollback`"
                        ),
                    ))
                }
            };
        }
        Ok(policy)
    }

    fn timeouts(
        &self,
        raw: Option<&RawTimeouts>,
        router: &RouterConfig,
        interval: Duration,
    ) -> Result<Timeouts, PlanError> {
        let mut t = Timeouts::default();
        // A Route53 write waits for INSYNC; a check should not outlast the
        // interval it is run at (within 2 s and 30 s).
        if let RouterConfig::Route53(r) = router {
            t.router_write = r.insync_timeout + Duration::from_secs(30);
        }
        t.check = interval.clamp(Duration::from_secs(2), Duration::from_secs(30));
        let Some(raw) = raw else { return Ok(t) };
        let hour = Timeouts::MAX;
        self.limit(
            &raw.router_read,
            "timeouts.router_read",
            hour,
            &mut t.router_read,
        )?;
        self.limit(
            &raw.router_write,
            "timeouts.router_write",
            hour,
            &mut t.router_write,
        )?;
        self.limit(&raw.check, "timeouts.check", hour, &mut t.check)?;
        Ok(t)
    }

    fn aws(&self, a: RawAws) -> Result<AwsConfig, PlanError> {
        let mut t = SdkTimeouts::default();
        let ten_minutes = Duration::from_secs(600);
        self.limit(
            &a.connect_timeout,
            "aws.connect_timeout",
            ten_minutes,
            &mut t.connect,
        )?;
        self.limit(
            &a.read_timeout,
            "aws.read_timeout",
            ten_minutes,
            &mut t.read,
        )?;
        self.limit(
            &a.attempt_timeout,
            "aws.attempt_timeout",
            ten_minutes,
            &mut t.attempt,
        )?;
        if t.attempt < t.read {
            let at = a.attempt_timeout.as_ref().or(a.read_timeout.as_ref());
            let msg = format!(
                "`aws.attempt_timeout` ({}) must be at least `aws.read_timeout` ({}): an attempt includes its read",
                Human(t.attempt),
                Human(t.read)
            );
            return Err(match at {
                Some(v) => self.at(v, msg),
                None => self.error(None, msg),
            });
        }
        Ok(AwsConfig {
            region: a.region,
            profile: a.profile,
            endpoint_url: a.endpoint_url,
            sdk_timeouts: t,
        })
    }

    fn store(&self, raw: Option<&Spanned<toml::Table>>) -> Result<StoreConfig, PlanError> {
        let Some(table) = raw else {
            return Ok(StoreConfig::Sqlite { path: None });
        };
        match self.kind(table, "store", STORES)? {
            "sqlite" => {
                let r: RawSqlite = self.table(table, "store `sqlite`")?;
                if let Some(path) = &r.path {
                    if path.as_os_str().is_empty() {
                        return Err(self.at(table, "store `sqlite`: `path` is empty; give a file, or leave it out for the default"));
                    }
                }
                Ok(StoreConfig::Sqlite { path: r.path })
            }
            "dynamodb" => {
                let r: RawDynamo = self.table(table, "store `dynamodb`")?;
                if r.table.len() < 3
                    || r.table.len() > 255
                    || !r
                        .table
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c))
                {
                    return Err(self.at(table, format!("store `dynamodb`: `table` `{}` is not a valid DynamoDB table name (3-255 of a-z, A-Z, 0-9, _ - .)", r.table)));
                }
                Ok(StoreConfig::Dynamodb { table: r.table })
            }
            _ => unreachable!("kind() only returns known kinds"),
        }
    }

    fn platform(
        &self,
        raw: Option<&Spanned<toml::Table>>,
    ) -> Result<Option<PlatformConfig>, PlanError> {
        let Some(table) = raw else { return Ok(None) };
        match self.kind(table, "platform", PLATFORMS)? {
            "ecs" => {
                let r: RawEcsPlatform = self.table(table, "platform `ecs`")?;
                let bad = |m: String| self.at(table, format!("platform `ecs`: {m}"));
                if r.blue_service == r.green_service {
                    return Err(bad("`blue_service` and `green_service` must differ".into()));
                }
                let ready_deadline = match &r.ready_deadline {
                    Some(t) => {
                        parse_duration(t).map_err(|e| bad(format!("`ready_deadline`: {e}")))?
                    }
                    None => Duration::from_secs(600),
                };
                let scale_down_after =
                    optional_duration(&r.scale_down_after, "scale_down_after", &bad)?;
                let (container, green_container) = container_names(&r.container).map_err(bad)?;
                Ok(Some(PlatformConfig::Ecs(EcsPlatform {
                    cluster: r.cluster,
                    blue_service: r.blue_service,
                    green_service: r.green_service,
                    container,
                    green_container,
                    ready_deadline,
                    scale_down_after,
                })))
            }
            _ => unreachable!("kind() only returns known kinds"),
        }
    }

    fn trigger(
        &self,
        raw: Option<&Spanned<toml::Table>>,
    ) -> Result<Option<TriggerConfig>, PlanError> {
        let Some(table) = raw else { return Ok(None) };
        match self.kind(table, "trigger", TRIGGERS)? {
            "ecs-events" => {
                let r: RawEcsEvents = self.table(table, "trigger `ecs-events`")?;
                if r.services.is_empty() {
                    return Err(self.at(table, "trigger `ecs-events`: `services` is empty; name the ECS services whose tasks start rollouts"));
                }
                Ok(Some(TriggerConfig::EcsEvents(EcsEventsTrigger {
                    queue_url: r.queue_url,
                    cluster: r.cluster,
                    services: r.services,
                    containers: r.containers,
                })))
            }
            _ => unreachable!("kind() only returns known kinds"),
        }
    }
}

/// `p99` -> 99.0, `p99.9` -> 99.9.
pub fn percentile_statistic(s: &str) -> Option<f64> {
    let p: f64 = s.strip_prefix('p')?.parse().ok()?;
    (p > 0.0 && p < 100.0).then_some(p)
}

/// An optional duration key, parsed; a bad value is reported by `bad`.
/// What the local router's client can use: `http://host[:port][/path]`,
/// plain HTTP (the proxy's admin API has no TLS), a port within 1..=65535,
/// no credentials, query or fragment.
fn check_admin_url(url: &str) -> Result<(), String> {
    let Some(rest) = url.strip_prefix("http://") else {
        return Err(if url.starts_with("https://") {
            "the proxy's admin API speaks plain HTTP; use http://".into()
        } else {
            "expected an http:// URL, e.g. \"http://127.0.0.1:9090\"".into()
        });
    };
    if rest.contains(['?', '#']) {
        return Err("takes no query or fragment".into());
    }
    let authority = rest.split('/').next().unwrap_or_default();
    if authority.contains('@') {
        return Err("takes no credentials; use `token`".into());
    }
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (host, after) = v6
            .split_once(']')
            .ok_or("the IPv6 address is missing its closing `]`")?;
        let port = match after {
            "" => None,
            p => Some(p.strip_prefix(':').ok_or("expected `:port` after `]`")?),
        };
        (host, port)
    } else {
        match authority.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        }
    };
    if host.is_empty() || host.contains(|c: char| c.is_whitespace() || c.is_control()) {
        return Err("has no usable host".into());
    }
    if let Some(p) = port {
        if !matches!(p.parse::<u16>(), Ok(n) if n > 0) {
            return Err(format!("port `{p}` is not a port (1 to 65535)"));
        }
    }
    Ok(())
}

/// A check's `min_requests` as written, or `default`. 0 is refused rather
/// than read as 1: a rate over no requests is no judgement.
/// The sequential judge's settings from a check's keys (alpha, margin,
/// detect_ratio, detect_points, min_rate; defaults for those not given),
/// refused where the judge cannot work: a first step at 100 % or judging
/// only at the end of holds.
fn sequential_settings(
    strategy: &Strategy,
    analysis: &Analysis,
    [alpha, margin, detect_ratio, detect_points, min_rate]: [Option<f64>; 5],
    bad: &dyn Fn(String) -> PlanError,
) -> Result<crate::judge::Settings, PlanError> {
    if strategy
        .steps
        .first()
        .is_some_and(|s| s.split == Split::FULL)
    {
        return Err(bad(
            "needs a first step below 100 %: it compares green with blue \
             while both serve, and at 100 % blue serves nothing"
                .into(),
        ));
    }
    if analysis.judge == Judge::EndOfHold {
        return Err(bad(
            "needs `analysis.judge = \"continuous\"`: it judges what each colour \
             served between two looks at one split, and with `end-of-hold` every \
             look comes after a shift"
                .into(),
        ));
    }
    let d = crate::judge::Settings::default();
    let settings = crate::judge::Settings {
        alpha: alpha.unwrap_or(d.alpha),
        margin: margin.unwrap_or(d.margin),
        detect_ratio: detect_ratio.unwrap_or(d.detect_ratio),
        detect_points: detect_points.unwrap_or(d.detect_points),
        min_rate: min_rate.unwrap_or(d.min_rate),
        ..d
    };
    crate::judge::SequentialErrorRate::new(settings)
        .map_err(|e| bad(format!("`{}` {}", e.field, e.reason)))?;
    Ok(settings)
}

/// Reads a check's duration key (its text, its name, its default).
type DurationKey<'a> = dyn Fn(&Option<String>, &str, Duration) -> Result<Duration, PlanError> + 'a;

/// The text a query has where a colour's value goes.
pub const COLOUR_PLACEHOLDER: &str = "${colour}";

/// A `prometheus` check: counters for the sequential judge (`requests` and
/// `failures`) or one `query` against thresholds, never both.
fn prometheus_check(
    r: RawPrometheus,
    strategy: &Strategy,
    analysis: &Analysis,
    dur: &DurationKey,
    bad: &dyn Fn(String) -> PlanError,
) -> Result<CheckConfig, PlanError> {
    let url = r.url.trim_end_matches('/').to_string();
    let rest = url.strip_prefix("http://").ok_or_else(|| {
        bad(format!(
            "`url` must be an http:// URL (the Prometheus API's base, e.g. \
             \"http://prometheus:9090\"), not `{}`",
            r.url
        ))
    })?;
    if rest.is_empty() || rest.contains(['?', '#']) || rest.chars().any(char::is_whitespace) {
        return Err(bad(format!(
            "`url` `{}` is not the API's base: give scheme, host and optional path only",
            r.url
        )));
    }
    let timeout = dur(&r.timeout, "timeout", Duration::from_secs(5))?;
    if timeout.is_zero() {
        return Err(bad("`timeout` must be longer than zero".into()));
    }
    let (blue_value, green_value) = match r.colours {
        Some(c) => (c.blue, c.green),
        None => ("blue".to_string(), "green".to_string()),
    };
    for (key, v) in [
        ("colours.blue", &blue_value),
        ("colours.green", &green_value),
    ] {
        if v.is_empty() || v.contains(['"', '\\', '\'', '\n', '\r']) {
            return Err(bad(format!(
                "`{key}` `{}` must be a non-empty label value without quotes, backslashes or line breaks",
                v.escape_debug()
            )));
        }
    }
    if blue_value == green_value {
        return Err(bad(format!(
            "`colours`: blue and green are both `{blue_value}`; each colour needs its own value"
        )));
    }
    if let Some(label) = &r.colour_label {
        let ok = label
            .chars()
            .enumerate()
            .all(|(i, c)| c == '_' || c.is_ascii_alphabetic() || (i > 0 && c.is_ascii_digit()));
        if label.is_empty() || !ok {
            return Err(bad(format!(
                "`colour_label` `{}` is not a Prometheus label name",
                label.escape_debug()
            )));
        }
    }
    let query = |key: &str, q: String| -> Result<String, PlanError> {
        if q.trim().is_empty() {
            return Err(bad(format!("`{key}` is empty")));
        }
        if r.colour_label.is_none() && !q.contains(COLOUR_PLACEHOLDER) {
            return Err(bad(format!(
                "`{key}` does not say which colour it is about: put `{COLOUR_PLACEHOLDER}` \
                 where the colour's value goes (e.g. `version=\"{COLOUR_PLACEHOLDER}\"`), \
                 or give `colour_label` for a query whose series carry the colour"
            )));
        }
        Ok(q)
    };
    let sequential_keys = [
        ("scrape_interval", r.scrape_interval.is_some()),
        ("alpha", r.alpha.is_some()),
        ("margin", r.margin.is_some()),
        ("detect_ratio", r.detect_ratio.is_some()),
        ("detect_points", r.detect_points.is_some()),
        ("min_rate", r.min_rate.is_some()),
    ];
    let threshold_keys = [
        ("max", r.max.is_some()),
        ("min", r.min.is_some()),
        ("max_ratio_to_blue", r.max_ratio_to_blue.is_some()),
    ];
    let given = |keys: &[(&'static str, bool)]| -> Vec<&'static str> {
        keys.iter().filter(|k| k.1).map(|k| k.0).collect()
    };
    let judge = match (r.requests, r.failures, r.query) {
        (Some(requests), Some(failures), None) => {
            if let Some(k) = given(&threshold_keys).first() {
                return Err(bad(format!(
                    "`{k}` belongs to a threshold on `query`; `requests` and `failures` \
                     are judged by the sequential test (`alpha`, `margin`, ...)"
                )));
            }
            let scrape_interval = dur(
                &r.scrape_interval,
                "scrape_interval",
                Duration::from_secs(15),
            )?;
            if scrape_interval.is_zero() || scrape_interval > Duration::from_secs(600) {
                return Err(bad(
                    "`scrape_interval` must be above zero and at most 10m".into()
                ));
            }
            let settings = sequential_settings(
                strategy,
                analysis,
                [
                    r.alpha,
                    r.margin,
                    r.detect_ratio,
                    r.detect_points,
                    r.min_rate,
                ],
                bad,
            )?;
            PrometheusJudge::SequentialErrorRate {
                requests: query("requests", requests)?,
                failures: query("failures", failures)?,
                scrape_interval,
                settings,
            }
        }
        (None, None, Some(q)) => {
            if let Some(k) = given(&sequential_keys).first() {
                return Err(bad(format!(
                    "`{k}` belongs to the sequential test on `requests` and `failures`, \
                     not to a threshold on `query`"
                )));
            }
            for (key, v) in [
                ("max", r.max),
                ("min", r.min),
                ("max_ratio_to_blue", r.max_ratio_to_blue),
            ] {
                if v.is_some_and(|v| !v.is_finite()) {
                    return Err(bad(format!("`{key}` must be a finite number")));
                }
            }
            if r.max_ratio_to_blue.is_some_and(|v| v <= 0.0) {
                return Err(bad("`max_ratio_to_blue` must be above 0".into()));
            }
            if given(&threshold_keys).is_empty() {
                return Err(bad(
                    "give a threshold for `query`: `max`, `min`, `max_ratio_to_blue`, or several"
                        .into(),
                ));
            }
            if let (Some(min), Some(max)) = (r.min, r.max) {
                if min > max {
                    return Err(bad(format!("`min` = {min} is above `max` = {max}")));
                }
            }
            PrometheusJudge::Threshold {
                query: query("query", q)?,
                max: r.max,
                min: r.min,
                max_ratio_to_blue: r.max_ratio_to_blue,
            }
        }
        (None, None, None) => {
            return Err(bad(
                "give `requests` and `failures` (counters, judged by the sequential test) \
                 or `query` (a value, judged against `max` / `min` / `max_ratio_to_blue`)"
                    .into(),
            ))
        }
        (Some(_), None, None) => return Err(bad("`requests` needs `failures` too".into())),
        (None, Some(_), None) => return Err(bad("`failures` needs `requests` too".into())),
        (_, _, Some(_)) => {
            return Err(bad(
                "give either `query` (a threshold) or `requests` and `failures` \
                 (the sequential test), not both"
                    .into(),
            ))
        }
    };
    Ok(CheckConfig::Prometheus(PrometheusCheck {
        url,
        token: r.token,
        timeout,
        blue_value,
        green_value,
        colour_label: r.colour_label,
        judge,
    }))
}

fn min_requests(
    given: Option<u64>,
    default: u64,
    bad: &dyn Fn(String) -> PlanError,
) -> Result<u64, PlanError> {
    match given {
        Some(0) => Err(bad(format!(
            "`min_requests` = 0 would judge a rate over no requests; give 1 or more (default {default})"
        ))),
        Some(n) => Ok(n),
        None => Ok(default),
    }
}

/// The longest service name: it is part of rollout ids, lease names and
/// metric labels.
const MAX_SERVICE_NAME: usize = 128;

/// An Elastic Load Balancing ARN of the kind `kind` names (`:targetgroup/`,
/// `:listener/`, `:listener-rule/`): starts with `arn:`, has the kind's
/// resource part, and holds no whitespace or control characters.
fn check_arn(arn: &str, kind: &str) -> Result<(), String> {
    if arn.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!(
            "`{}` holds whitespace or a control character",
            arn.escape_debug()
        ));
    }
    if !arn.starts_with("arn:") || !arn.contains(kind) {
        return Err(format!(
            "`{arn}` is not an ARN of a {} (arn:aws:elasticloadbalancing:REGION:ACCOUNT{kind}...)",
            kind.trim_matches(|c| c == ':' || c == '/')
        ));
    }
    Ok(())
}

fn optional_duration(
    value: &Option<String>,
    key: &str,
    bad: &dyn Fn(String) -> PlanError,
) -> Result<Option<Duration>, PlanError> {
    value
        .as_deref()
        .map(|t| parse_duration(t).map_err(|e| bad(format!("`{key}`: {e}"))))
        .transpose()
}

fn ratio(value: Option<f64>, bad: &dyn Fn(String) -> PlanError) -> Result<f64, PlanError> {
    let r = value.unwrap_or(1.5);
    if !(r.is_finite() && r > 0.0) {
        return Err(bad(format!("`max_ratio` = {r} must be above 0")));
    }
    Ok(r)
}

/// The `LoadBalancer` dimension (`app/NAME/ID`) in a listener or rule ARN.
pub fn load_balancer_dimension(arn: &str) -> Option<String> {
    let rest = arn
        .split_once(":listener/")
        .or_else(|| arn.split_once(":listener-rule/"))?
        .1;
    let parts: Vec<&str> = rest.split('/').collect();
    (parts.len() >= 3).then(|| parts[..3].join("/"))
}

/// The `TargetGroup` dimension (`targetgroup/NAME/ID`) of a target group ARN.
pub fn target_group_dimension(arn: &str) -> Option<String> {
    let i = arn.find(":targetgroup/")?;
    Some(arn[i + 1..].to_string())
}

/// 1-based line and column (in characters) of a byte offset.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}
