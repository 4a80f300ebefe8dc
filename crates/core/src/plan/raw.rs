//! Reading a plan file: TOML in, a validated [`Plan`] or a located error out.
//!
//! Unknown keys are refused everywhere. Every error names the file, the line
//! and column, and says what was expected; semantic errors (splits out of
//! order, a hold shorter than the analysis interval, ...) are found here,
//! before anything could move traffic.

use std::fmt;
use std::ops::Range;
use std::path::PathBuf;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Deserialize;
use toml::Spanned;

use super::{
    Analysis, CheckConfig, CheckSpec, Judge, LocalRouter, OnAdapterFailure, OnInconclusive, Plan,
    RollbackPolicy, RouterConfig, Step, StoreConfig, Strategy,
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
pub const ROUTERS: &[&str] = &["local"];
pub const CHECKS: &[&str] = &["error-rate", "latency", "health", "http"];
pub const STORES: &[&str] = &["sqlite"];

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
    store: Option<Spanned<toml::Table>>,
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
struct RawLatency {
    name: Option<String>,
    percentile: Option<f64>,
    max: Option<String>,
    max_ratio_to_blue: Option<f64>,
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
pub fn parse(text: &str, file: &str) -> Result<Plan, PlanError> {
    let cx = Cx { text, file };
    let raw: RawPlan =
        toml::from_str(text).map_err(|e| cx.error(e.span(), e.message().to_string()))?;

    let name = &raw.service.get_ref().name;
    if name.get_ref().is_empty()
        || !name
            .get_ref()
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    {
        return Err(cx.at(
            name,
            "service name must be non-empty and use only letters, digits, `-`, `_` and `.`",
        ));
    }

    let analysis = cx.analysis(
        raw.analysis.as_ref(),
        raw.strategy.get_ref().preset.as_ref(),
    )?;
    let strategy = cx.strategy(&raw.strategy, &analysis)?;
    let router = cx.router(&raw.router)?;
    let analysis = Analysis {
        checks: cx.checks(raw.analysis.as_ref(), analysis.interval)?,
        ..analysis
    };
    let rollback = cx.rollback(raw.rollback.as_ref())?;
    let store = cx.store(raw.store.as_ref())?;

    Ok(Plan {
        service: name.get_ref().clone(),
        router,
        strategy,
        analysis,
        rollback,
        store,
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
                if !(r.admin_url.starts_with("http://") || r.admin_url.starts_with("https://")) {
                    return Err(self.at(
                        table,
                        format!(
                            "router `local`: `admin_url` must be an http:// URL, not `{}`",
                            r.admin_url
                        ),
                    ));
                }
                Ok(RouterConfig::Local(LocalRouter {
                    admin_url: r.admin_url.trim_end_matches('/').to_string(),
                    token: r.token,
                }))
            }
            _ => unreachable!("kind() only returns known kinds"),
        }
    }

    fn checks(
        &self,
        raw: Option<&RawAnalysis>,
        interval: Duration,
    ) -> Result<Vec<CheckSpec>, PlanError> {
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
                            min_requests: r.min_requests.unwrap_or(10),
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
                    let max = r
                        .max
                        .as_ref()
                        .map(|t| parse_duration(t).map_err(|e| bad(format!("`max`: {e}"))))
                        .transpose()?;
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
                    let window = dur(&r.window, "window", interval)?;
                    (
                        r.name,
                        CheckConfig::Latency {
                            percentile,
                            max,
                            max_ratio_to_blue: r.max_ratio_to_blue,
                            min_requests: r.min_requests.unwrap_or(10),
                            window,
                        },
                    )
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
        };
        let Some(raw) = raw else { return Ok(policy) };
        if let Some(d) = &raw.adapter_deadline {
            policy.adapter_deadline = self.duration(d, "rollback.adapter_deadline")?;
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
        Ok(policy)
    }

    fn store(&self, raw: Option<&Spanned<toml::Table>>) -> Result<StoreConfig, PlanError> {
        let Some(table) = raw else {
            return Ok(StoreConfig::Sqlite { path: None });
        };
        match self.kind(table, "store", STORES)? {
            "sqlite" => {
                let r: RawSqlite = self.table(table, "store `sqlite`")?;
                Ok(StoreConfig::Sqlite { path: r.path })
            }
            _ => unreachable!("kind() only returns known kinds"),
        }
    }
}

/// 1-based line and column (in characters) of a byte offset.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}
