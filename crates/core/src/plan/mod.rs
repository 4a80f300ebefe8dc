//! Plans: what a rollout walks, and the settings around it.
//!
//! `raw` holds the file's shape (what serde reads, with spans for errors);
//! this module holds the resolved, validated plan that the rest of cutover
//! uses. A `Plan` that exists has passed every check in [`Plan::validate`].

mod raw;
mod timeline;

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::Split;

pub use raw::{parse, PlanError, CHECKS, PRESETS, ROUTERS, STORES};
pub use timeline::{Timeline, TimelineStep};

/// A validated plan file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    pub service: String,
    pub router: RouterConfig,
    pub strategy: Strategy,
    pub analysis: Analysis,
    pub rollback: RollbackPolicy,
    pub store: StoreConfig,
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

/// What to do when an adapter (router, check backend, platform) keeps failing.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RollbackPolicy {
    /// How long transient adapter errors are retried before giving up.
    #[serde(with = "crate::time::serde_duration")]
    pub adapter_deadline: Duration,
    pub on_adapter_failure: OnAdapterFailure,
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
}

impl RouterConfig {
    pub fn kind(&self) -> &'static str {
        match self {
            RouterConfig::Local(_) => "local",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LocalRouter {
    /// Base URL of the proxy's admin API, e.g. `http://127.0.0.1:9901`.
    pub admin_url: String,
    /// Bearer token for the admin API, if it requires one.
    pub token: Option<String>,
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
    /// Green's `percentile` latency over `window` is at most `max`, and/or
    /// at most blue's same percentile times `max_ratio_to_blue`.
    Latency {
        percentile: f64,
        #[serde(default, with = "opt_duration")]
        max: Option<Duration>,
        max_ratio_to_blue: Option<f64>,
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
}

impl CheckConfig {
    pub fn kind(&self) -> &'static str {
        match self {
            CheckConfig::ErrorRate { .. } => "error-rate",
            CheckConfig::Latency { .. } => "latency",
            CheckConfig::Health => "health",
            CheckConfig::Http { .. } => "http",
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
}

mod opt_duration {
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
