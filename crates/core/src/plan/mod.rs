//! Plans: what a rollout walks, and the settings around it.
//!
//! `raw` holds the file's shape (what serde reads, with spans for errors);
//! this module holds the resolved, validated plan that the rest of cutover
//! uses. A `Plan` that exists has passed every check in [`Plan::validate`].

pub mod aws;
mod raw;
mod timeline;

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::Split;

pub use aws::{
    AlbRouter, AwsConfig, CompareToBlue, EcsEventsTrigger, EcsPlatform, Route53Router, SdkTimeouts,
};

pub use raw::{
    invalid_utf8_at, load_balancer_dimension, parse, parse_bytes, percentile_statistic,
    target_group_dimension, PlanError, CHECKS, COLOUR_PLACEHOLDER, PLATFORMS, PRESETS, ROUTERS,
    STORES, TRIGGERS,
};
pub use timeline::{Timeline, TimelineStep};

/// A validated plan file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    pub service: String,
    pub router: RouterConfig,
    pub strategy: Strategy,
    pub analysis: Analysis,
    pub rollback: RollbackPolicy,
    /// `[timeouts]`: how long one adapter or store call may take.
    #[serde(default)]
    pub timeouts: Timeouts,
    pub store: StoreConfig,
    /// `[aws]`; defaults when absent.
    pub aws: AwsConfig,
    /// Readies green before traffic moves and retires blue after.
    pub platform: Option<PlatformConfig>,
    /// What starts rollouts for `cutover watch`.
    pub trigger: Option<TriggerConfig>,
    /// The version a platform deploys; set from the command line (or a
    /// trigger), never from the file, and kept with the rollout so a resumed
    /// rollout deploys the same thing.
    #[serde(default)]
    pub release: Option<Release>,
    /// A label for people (a version, a commit), given with the command
    /// or API call that starts the rollout; shown, never acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
}

/// What a platform puts on the idle colour.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Release {
    /// Replace the platform's container image in the idle colour's current
    /// task definition.
    Image(String),
    /// Use this task definition as it is.
    TaskDefinition(String),
}

/// The steps a rollout walks and how it ends. This part (with `analysis`
/// and `rollback`) is all the state machine needs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Strategy {
    /// The preset's name, or `"steps"` for an explicit list.
    pub preset: String,
    pub steps: Vec<Step>,
    /// How long green holds 100 % before blue may be changed.
    #[serde(with = "crate::time::serde_duration")]
    pub bake: Duration,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Step {
    pub split: Split,
    #[serde(with = "crate::time::serde_duration")]
    pub hold: Duration,
}

/// `analysis.wait_for_data` when the plan does not say: 10 minutes.
pub const DEFAULT_WAIT_FOR_DATA: Duration = Duration::from_secs(600);

fn default_wait_for_data() -> Duration {
    DEFAULT_WAIT_FOR_DATA
}

/// How often and how strictly green is judged.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Analysis {
    #[serde(with = "crate::time::serde_duration")]
    pub interval: Duration,
    /// When verdicts are taken during a hold.
    pub judge: Judge,
    /// Fail verdicts tolerated before rolling back (0: the first one rolls back).
    pub failure_limit: u32,
    /// Inconclusive verdicts in a row tolerated before `on_inconclusive`.
    pub inconclusive_limit: u32,
    /// How long past its end a hold goes on while a check only waits for
    /// enough data to let the step pass ([`crate::Observation::waiting`]);
    /// after that, `on_wait_expired` says what they do.
    #[serde(
        default = "default_wait_for_data",
        with = "crate::time::serde_duration"
    )]
    pub wait_for_data: Duration,
    /// What a verdict still waiting for data does once `wait_for_data` has
    /// passed.
    #[serde(default)]
    pub on_wait_expired: OnWaitExpired,
    pub on_inconclusive: OnInconclusive,
    pub checks: Vec<CheckSpec>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Judge {
    /// Every `interval` throughout each hold; the step advances once the hold
    /// is over and the last verdict passed.
    Continuous,
    /// Once, at the end of each hold (the reference's behaviour, preset `seed`).
    EndOfHold,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OnInconclusive {
    Pause,
    Rollback,
}

/// When a check has waited `wait_for_data` for enough requests to let a
/// step pass and still has nothing against green.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OnWaitExpired {
    /// The step passes, recorded as passed without the data asked for: a
    /// healthy green is not rolled back for low traffic.
    #[default]
    Pass,
    /// The rollout pauses for an operator.
    Pause,
    /// The verdict counts as inconclusive (`inconclusive_limit`,
    /// `on_inconclusive`).
    Inconclusive,
}

/// How long one call may take before it is cut short and counted as the
/// failure it is: a write whose outcome is then unknown (and read back), a
/// read that failed, a check that could not measure. A retried call is
/// also cut at the deadline of its retries (`rollback.adapter_deadline`,
/// `rollback.rollback_deadline`), so no decision waits past them.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Timeouts {
    /// Reading the router's split.
    #[serde(with = "crate::time::serde_duration")]
    pub router_read: Duration,
    /// Applying a split, including waiting for it to take effect (Route53's
    /// INSYNC: the router's `insync_timeout` plus a margin by default).
    #[serde(with = "crate::time::serde_duration")]
    pub router_write: Duration,
    /// One check's evaluation.
    #[serde(with = "crate::time::serde_duration")]
    pub check: Duration,
}

impl Timeouts {
    /// The longest any of them may be.
    pub const MAX: Duration = Duration::from_secs(3600);
}

impl Default for Timeouts {
    fn default() -> Timeouts {
        Timeouts {
            router_read: Duration::from_secs(10),
            router_write: Duration::from_secs(30),
            check: Duration::from_secs(30),
        }
    }
}

/// What to do when an adapter (router, check backend, platform) keeps failing.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RollbackPolicy {
    /// How long transient adapter errors are retried before giving up.
    #[serde(with = "crate::time::serde_duration")]
    pub adapter_deadline: Duration,
    pub on_adapter_failure: OnAdapterFailure,
    /// How long the rollback itself may keep failing before the rollout
    /// reports it cannot restore blue (and keeps trying).
    #[serde(
        default = "default_rollback_deadline",
        with = "crate::time::serde_duration"
    )]
    pub rollback_deadline: Duration,
    /// What to do when the router's split differs from what cutover put
    /// there and nothing cutover did explains it.
    #[serde(default)]
    pub on_drift: OnDrift,
}

fn default_rollback_deadline() -> Duration {
    Duration::from_secs(30)
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OnDrift {
    /// Record it, keep the split found and wait for an operator: resume
    /// applies cutover's split again, abort sends all traffic to blue.
    #[default]
    Pause,
    /// Record it and send all traffic to blue.
    Rollback,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OnAdapterFailure {
    /// Send all traffic to blue and end as rolled back.
    Rollback,
    /// Keep the split where it is, pause and report; an operator decides.
    Hold,
}

/// The router that applies splits.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum RouterConfig {
    /// cutover's embedded proxy, driven through its admin API.
    Local(LocalRouter),
    /// Two weighted Route53 records of one name.
    Route53(Route53Router),
    /// An ALB listener (or rule) forwarding to two weighted target groups.
    Alb(AlbRouter),
}

impl RouterConfig {
    /// The real targets behind the roles: the names a user knows them by.
    pub fn targets(&self) -> Targets {
        let (live, candidate) = match self {
            RouterConfig::Local(l) if l.swapped => ("green".to_string(), "blue".to_string()),
            RouterConfig::Local(_) => ("blue".to_string(), "green".to_string()),
            RouterConfig::Route53(r) => (
                r.blue_set_identifier.clone(),
                r.green_set_identifier.clone(),
            ),
            RouterConfig::Alb(a) => (
                target_group_name(&a.blue_target_group_arn),
                target_group_name(&a.green_target_group_arn),
            ),
        };
        Targets { live, candidate }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            RouterConfig::Local(_) => "local",
            RouterConfig::Route53(_) => "route53",
            RouterConfig::Alb(_) => "alb",
        }
    }
}

/// Which real targets a rollout moves traffic between: `live` is blue's
/// role (where traffic is when the rollout starts), `candidate` green's.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Targets {
    pub live: String,
    pub candidate: String,
}

impl Targets {
    /// Where traffic is at `split`, by name: "10 % on candidate `green`,
    /// 90 % on live `blue`".
    pub fn describe(&self, split: Split) -> String {
        if split == Split::ZERO {
            return format!("all traffic on live `{}`", self.live);
        }
        if split == Split::FULL {
            return format!("all traffic on candidate `{}`", self.candidate);
        }
        let live = Split::from_basis_points(split.blue_basis_points()).unwrap_or(Split::ZERO);
        format!(
            "{split} on candidate `{}`, {live} on live `{}`",
            self.candidate, self.live
        )
    }
}

/// A target group's name from its ARN (`...:targetgroup/NAME/ID`); the ARN
/// itself if it has no such part.
pub fn target_group_name(arn: &str) -> String {
    target_group_dimension(arn)
        .and_then(|d| d.split('/').nth(1).map(str::to_string))
        .unwrap_or_else(|| arn.to_string())
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum PlatformConfig {
    Ecs(EcsPlatform),
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum TriggerConfig {
    EcsEvents(EcsEventsTrigger),
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LocalRouter {
    /// Base URL of the proxy's admin API, e.g. `http://127.0.0.1:9901`.
    pub admin_url: String,
    /// Bearer token for the admin API, if it requires one.
    pub token: Option<String>,
    /// The proxy's `blue` pool is the candidate this time (the colours'
    /// roles swapped, see [`Plan::with_colours_swapped`]).
    #[serde(default)]
    pub swapped: bool,
}

/// One named check.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CheckSpec {
    pub name: String,
    pub config: CheckConfig,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum CheckConfig {
    /// Green's 5xx share over `window` is at most `max_percent`, judged only
    /// once green served at least `min_requests` in the window.
    ErrorRate {
        max_percent: f64,
        min_requests: u64,
        #[serde(with = "crate::time::serde_duration")]
        window: Duration,
    },
    /// Green's failure rate against blue's over the same requests, judged
    /// by an anytime-valid sequential test ([`crate::judge`]) on the
    /// proxy's per-colour counts, counted from the first look after each
    /// split took effect.
    SequentialErrorRate {
        alpha: f64,
        margin: f64,
        detect_ratio: f64,
        detect_points: f64,
        min_rate: f64,
    },
    /// Green's `percentile` latency over `window` is at most `max`, and/or
    /// at most blue's same percentile times `max_ratio_to_blue` (a limit
    /// never below `ratio_floor`).
    Latency {
        percentile: f64,
        #[serde(default, with = "opt_duration")]
        max: Option<Duration>,
        max_ratio_to_blue: Option<f64>,
        /// The ratio's limit is at least this: against a blue answering in
        /// a fraction of a millisecond, a ratio alone fails on noise.
        #[serde(default, with = "opt_duration")]
        ratio_floor: Option<Duration>,
        min_requests: u64,
        #[serde(with = "crate::time::serde_duration")]
        window: Duration,
    },
    /// Every green upstream passes the proxy's active health probes.
    Health,
    /// `url` answers 2xx within `timeout`, and its body contains `body_contains` if set.
    Http {
        url: String,
        body_contains: Option<String>,
        #[serde(with = "crate::time::serde_duration")]
        timeout: Duration,
    },
    /// Every target registered in the target group is healthy, and at least
    /// `min_healthy` of them.
    TargetHealth {
        target_group_arn: String,
        min_healthy: u32,
    },
    /// Any CloudWatch metric against a threshold (`max` and/or `min`), or
    /// against blue's same metric (`compare`).
    Cloudwatch {
        namespace: String,
        metric_name: String,
        dimensions: std::collections::BTreeMap<String, String>,
        /// `Sum`, `Average`, `Minimum`, `Maximum`, `SampleCount`, or `pNN`.
        statistic: String,
        #[serde(with = "crate::time::serde_duration")]
        period: Duration,
        #[serde(with = "crate::time::serde_duration")]
        window: Duration,
        max: Option<f64>,
        min: Option<f64>,
        compare: Option<CompareToBlue>,
    },
    /// HTTPCode_Target_5XX_Count / RequestCount of green's target group
    /// (missing data counts as 0), judged from `min_requests` on.
    AlbErrorRate {
        /// The `LoadBalancer` dimension, e.g. `app/my-alb/50dc6c495c0c9188`.
        load_balancer: String,
        /// The `TargetGroup` dimension, e.g. `targetgroup/green/943f017f100becff`.
        target_group: String,
        max_percent: f64,
        min_requests: u64,
        #[serde(with = "crate::time::serde_duration")]
        window: Duration,
        /// Blue's `TargetGroup` dimension and ratio, to judge against blue.
        compare: Option<CompareToBlue>,
    },
    /// HTTPCode_Target_5XX_Count and RequestCount of green's target group
    /// against blue's, minute by minute, judged by the sequential test
    /// ([`crate::judge`]) from the first whole minute after each shift.
    AlbSequentialErrorRate {
        load_balancer: String,
        target_group: String,
        /// Blue's load balancer: the same one with router `alb`, its own
        /// with Route53 between two load balancers.
        blue_load_balancer: String,
        blue_target_group: String,
        /// How long after a minute ends its datapoints are read: ALB
        /// publishes a minute's counts with a delay.
        #[serde(with = "crate::time::serde_duration")]
        settle: Duration,
        settings: crate::judge::Settings,
    },
    /// TargetResponseTime pN of green's target group.
    AlbLatency {
        load_balancer: String,
        target_group: String,
        percentile: f64,
        #[serde(default, with = "opt_duration")]
        max: Option<Duration>,
        #[serde(with = "crate::time::serde_duration")]
        window: Duration,
        compare: Option<CompareToBlue>,
    },
    /// None of these CloudWatch alarms is in ALARM (checked before traffic
    /// moves too).
    Alarm { alarm_names: Vec<String> },
    /// Green's ECS service runs its desired count, and no green task stopped
    /// for a failure since the rollout started.
    EcsService { cluster: String, service: String },
    /// Any Prometheus HTTP API, queried with PromQL per colour.
    Prometheus(PrometheusCheck),
}

/// A `prometheus` check: where the API is, how a query names a colour, and
/// what is judged.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PrometheusCheck {
    /// The API's base, e.g. `http://prometheus:9090` (`/api/v1/query` is
    /// appended).
    pub url: String,
    /// Sent as `Authorization: Bearer ...` when set.
    pub token: Option<String>,
    #[serde(with = "crate::time::serde_duration")]
    pub timeout: Duration,
    /// What stands for blue's and green's role in the queries: the text
    /// `${colour}` is replaced by it, or, with `colour_label`, it is the
    /// value of that label on the series of one colour.
    pub blue_value: String,
    pub green_value: String,
    /// One query answers for both colours: its series are told apart by
    /// this label.
    pub colour_label: Option<String>,
    pub judge: PrometheusJudge,
}

/// What a `prometheus` check makes of its queries.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "judge", rename_all = "kebab-case")]
pub enum PrometheusJudge {
    /// Two counters per colour (requests served, requests failed), judged
    /// like `sequential-error-rate` from what they grew by between looks,
    /// counted from the first scrape after each split took effect.
    SequentialErrorRate {
        requests: String,
        failures: String,
        /// How often Prometheus scrapes the counters: a sample taken this
        /// long after a shift was scraped after it.
        #[serde(with = "crate::time::serde_duration")]
        scrape_interval: Duration,
        settings: crate::judge::Settings,
    },
    /// One value per colour against `max` and/or `min`, and/or at most
    /// blue's value times `max_ratio_to_blue`.
    Threshold {
        query: String,
        max: Option<f64>,
        min: Option<f64>,
        max_ratio_to_blue: Option<f64>,
    },
}

impl CheckConfig {
    /// The check reads AWS (and needs credentials and IAM permissions), as
    /// opposed to the embedded proxy or plain HTTP.
    pub fn reads_aws(&self) -> bool {
        match self {
            CheckConfig::ErrorRate { .. }
            | CheckConfig::SequentialErrorRate { .. }
            | CheckConfig::Latency { .. }
            | CheckConfig::Health
            | CheckConfig::Http { .. }
            | CheckConfig::Prometheus(_) => false,
            CheckConfig::TargetHealth { .. }
            | CheckConfig::Cloudwatch { .. }
            | CheckConfig::AlbErrorRate { .. }
            | CheckConfig::AlbSequentialErrorRate { .. }
            | CheckConfig::AlbLatency { .. }
            | CheckConfig::Alarm { .. }
            | CheckConfig::EcsService { .. } => true,
        }
    }

    /// The sequential judge's settings, for a `sequential-error-rate` check.
    pub fn judge_settings(&self) -> Option<crate::judge::Settings> {
        match *self {
            CheckConfig::SequentialErrorRate {
                alpha,
                margin,
                detect_ratio,
                detect_points,
                min_rate,
            } => Some(crate::judge::Settings {
                alpha,
                margin,
                detect_ratio,
                detect_points,
                min_rate,
                ..crate::judge::Settings::default()
            }),
            CheckConfig::Prometheus(PrometheusCheck {
                judge: PrometheusJudge::SequentialErrorRate { settings, .. },
                ..
            })
            | CheckConfig::AlbSequentialErrorRate { settings, .. } => Some(settings),
            _ => None,
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            CheckConfig::ErrorRate { .. } => "error-rate",
            CheckConfig::SequentialErrorRate { .. } => "sequential-error-rate",
            CheckConfig::Latency { .. } => "latency",
            CheckConfig::Health => "health",
            CheckConfig::Http { .. } => "http",
            CheckConfig::TargetHealth { .. } => "target-health",
            CheckConfig::Cloudwatch { .. } => "cloudwatch",
            CheckConfig::AlbErrorRate { .. } => "alb-error-rate",
            CheckConfig::AlbSequentialErrorRate { .. } => "alb-sequential-error-rate",
            CheckConfig::AlbLatency { .. } => "alb-latency",
            CheckConfig::Alarm { .. } => "alarm",
            CheckConfig::EcsService { .. } => "ecs-service",
            CheckConfig::Prometheus(_) => "prometheus",
        }
    }
}

/// Where rollouts are kept.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum StoreConfig {
    /// SQLite file; `None` means the default path (XDG state directory),
    /// chosen by the caller since the core reads no environment.
    Sqlite { path: Option<PathBuf> },
    /// A DynamoDB table (see `cutover init-store`).
    Dynamodb { table: String },
}

pub(crate) mod opt_duration {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.collect_str(&crate::time::Human(*d)),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        Option::<String>::deserialize(d)?
            .map(|t| crate::time::parse_duration(&t).map_err(serde::de::Error::custom))
            .transpose()
    }
}

impl Plan {
    /// The same plan with the colours' roles exchanged: after a successful
    /// rollout green is live, so the next one moves traffic onto blue's
    /// side. Swaps the router's two sides, the platform's two services, and
    /// in checks every target group (ARN or metric dimension) of one colour
    /// for the other's.
    pub fn with_colours_swapped(&self) -> Plan {
        self.swap_colours()
    }

    /// The real targets the plan's router moves traffic between.
    pub fn targets(&self) -> Targets {
        self.router.targets()
    }

    fn swap_colours(&self) -> Plan {
        let mut plan = self.clone();
        let mut pairs: Vec<(String, String)> = Vec::new();
        match &mut plan.router {
            RouterConfig::Local(l) => l.swapped = !l.swapped,
            RouterConfig::Route53(r) => {
                std::mem::swap(&mut r.blue_set_identifier, &mut r.green_set_identifier)
            }
            RouterConfig::Alb(a) => {
                pairs.push((
                    a.blue_target_group_arn.clone(),
                    a.green_target_group_arn.clone(),
                ));
                if let (Some(b), Some(g)) = (
                    target_group_dimension(&a.blue_target_group_arn),
                    target_group_dimension(&a.green_target_group_arn),
                ) {
                    pairs.push((b, g));
                }
                std::mem::swap(&mut a.blue_target_group_arn, &mut a.green_target_group_arn);
            }
        }
        if let Some(PlatformConfig::Ecs(e)) = &mut plan.platform {
            std::mem::swap(&mut e.blue_service, &mut e.green_service);
            if let Some(green) = e.green_container.take() {
                e.green_container = Some(std::mem::replace(&mut e.container, green));
            }
        }
        let swap = |s: &mut String| {
            for (b, g) in &pairs {
                if s == b {
                    *s = g.clone();
                    return;
                }
                if s == g {
                    *s = b.clone();
                    return;
                }
            }
        };
        for check in &mut plan.analysis.checks {
            match &mut check.config {
                CheckConfig::TargetHealth {
                    target_group_arn, ..
                } => swap(target_group_arn),
                CheckConfig::AlbErrorRate {
                    target_group,
                    compare,
                    ..
                }
                | CheckConfig::AlbLatency {
                    target_group,
                    compare,
                    ..
                } => {
                    swap(target_group);
                    if let Some(c) = compare {
                        c.blue_dimensions.values_mut().for_each(swap);
                    }
                }
                CheckConfig::AlbSequentialErrorRate {
                    load_balancer,
                    target_group,
                    blue_load_balancer,
                    blue_target_group,
                    ..
                } => {
                    std::mem::swap(load_balancer, blue_load_balancer);
                    std::mem::swap(target_group, blue_target_group);
                }
                CheckConfig::Prometheus(p) => std::mem::swap(&mut p.blue_value, &mut p.green_value),
                CheckConfig::EcsService { service, .. } => {
                    if let Some(PlatformConfig::Ecs(e)) = &self.platform {
                        if *service == e.green_service {
                            *service = e.blue_service.clone();
                        } else if *service == e.blue_service {
                            *service = e.green_service.clone();
                        }
                    }
                }
                _ => {}
            }
        }
        plan
    }
}
