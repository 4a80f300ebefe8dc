//! The local checks: the engine's `Check`s over the proxy's admin API
//! (`error-rate`, `sequential-error-rate`, `latency`, `health`), a plain
//! HTTP probe (`http`), and PromQL ([`crate::prometheus`]).
//!
//! Every check answers with an [`Observation`] whose detail carries the
//! numbers behind the verdict. When the proxy cannot be asked (down, wrong
//! token, timeout) the verdict is `error` with the reason, never `pass`.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use cutover_core::judge::{Batch, SequentialErrorRate, Settings};
use cutover_core::plan::{CheckConfig, CheckSpec, LocalRouter};
use cutover_core::time::Human;
use cutover_core::{Observation, Split, Timestamp, Verdict};
use cutover_engine::ports::{AdapterError, Check, CheckContext};
use http_body_util::{BodyExt, Empty};
use hyper::header::{HeaderValue, USER_AGENT};
use hyper::{Request, Uri};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tokio::time::Instant;

use crate::api::{Colour, ProbeState};
use crate::client::AdminClient;
use crate::util::{error_chain, excerpt};

/// Builds the check described by `spec`, if it is one this crate provides:
/// `http` and `prometheus` always; `error-rate`, `sequential-error-rate`,
/// `latency` and `health`, which read the
/// proxy's admin API, only with a local `router` (its URL and token). A
/// check whose settings are unusable (bad URL) answers `error` saying why,
/// and refuses in `preflight`.
pub fn build_check(spec: &CheckSpec, router: Option<&LocalRouter>) -> Option<Arc<dyn Check>> {
    let name = spec.name.clone();
    if let CheckConfig::Prometheus(p) = &spec.config {
        return Some(crate::prometheus::build(name, p));
    }
    if let CheckConfig::Http {
        url,
        body_contains,
        timeout,
    } = &spec.config
    {
        return Some(Arc::new(HttpCheck::new(
            name,
            url,
            body_contains.clone(),
            *timeout,
        )));
    }
    let router = router?;
    let admin = || AdminClient::from_config(router);
    // The pool the candidate runs in (the proxy's blue one once the
    // plan's colours are swapped).
    let candidate = Colour::candidate(router);
    Some(match &spec.config {
        CheckConfig::ErrorRate {
            max_percent,
            min_requests,
            window,
        } => Arc::new(ErrorRateCheck {
            name,
            admin: admin(),
            candidate,
            max_percent: *max_percent,
            min_requests: *min_requests,
            window: *window,
        }),
        CheckConfig::Latency {
            percentile,
            max,
            max_ratio_to_blue,
            ratio_floor,
            min_requests,
            window,
        } => Arc::new(LatencyCheck {
            name,
            admin: admin(),
            candidate,
            percentile: *percentile,
            max: *max,
            max_ratio_to_blue: *max_ratio_to_blue,
            ratio_floor: *ratio_floor,
            min_requests: *min_requests,
            window: *window,
        }),
        CheckConfig::SequentialErrorRate { .. } => Arc::new(SequentialErrorRateCheck {
            name,
            admin: admin(),
            candidate,
            settings: spec.config.judge_settings().expect("a sequential check"),
            state: Mutex::new(None),
        }),
        CheckConfig::Health => Arc::new(HealthCheck {
            name,
            admin: admin(),
            candidate,
        }),
        _ => return None,
    })
}

/// Numbers as people write them: `1`, `7.14`, `0.5`.
pub(crate) fn num(x: f64) -> String {
    if !x.is_finite() {
        return x.to_string();
    }
    let s = format!("{x:.2}");
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

fn ms(x: f64) -> String {
    if x >= 100.0 {
        format!("{x:.0} ms")
    } else {
        format!("{} ms", num(x))
    }
}

fn admin_or_error<'a>(
    name: &str,
    admin: &'a Result<AdminClient, AdapterError>,
) -> Result<&'a AdminClient, Observation> {
    admin
        .as_ref()
        .map_err(|e| Observation::new(name, Verdict::Error, e.message.clone()))
}

fn preflight_admin(admin: &Result<AdminClient, AdapterError>) -> Result<(), AdapterError> {
    admin.as_ref().map(|_| ()).map_err(Clone::clone)
}

/// "in the last 1m", plus a note when the proxy keeps a shorter window.
fn window_text(asked: Duration, used_ms: u64) -> String {
    let used = Duration::from_millis(used_ms);
    if used < asked {
        format!(
            "in the last {} (the proxy keeps at most that; asked {})",
            Human(used),
            Human(asked)
        )
    } else {
        format!("in the last {}", Human(used))
    }
}

struct ErrorRateCheck {
    name: String,
    admin: Result<AdminClient, AdapterError>,
    candidate: Colour,
    max_percent: f64,
    min_requests: u64,
    window: Duration,
}

#[async_trait]
impl Check for ErrorRateCheck {
    fn name(&self) -> &str {
        &self.name
    }

    async fn evaluate(&self, _ctx: &CheckContext) -> Observation {
        let obs = |v, d: String| Observation::new(&self.name, v, d);
        let admin = match admin_or_error(&self.name, &self.admin) {
            Ok(a) => a,
            Err(o) => return o,
        };
        let report = match admin.metrics(self.window, &[]).await {
            Ok(r) => r,
            Err(e) => {
                return obs(
                    Verdict::Error,
                    format!("cannot read the proxy's metrics: {e}"),
                )
            }
        };
        let g = report.of(self.candidate);
        let window = window_text(self.window, report.window_ms);
        if g.requests < self.min_requests.max(1) {
            return obs(
                Verdict::Inconclusive,
                format!(
                    "green served {} of {} requests needed {window}",
                    g.requests,
                    self.min_requests.max(1)
                ),
            );
        }
        let rate = g.errors_5xx as f64 * 100.0 / g.requests as f64;
        let numbers = [
            ("green.requests", g.requests as f64),
            ("green.failures", g.errors_5xx as f64),
            ("green.error_percent", rate),
            ("max_percent", self.max_percent),
            ("window_ms", report.window_ms as f64),
        ];
        let o = if rate > self.max_percent {
            obs(
                Verdict::Fail,
                format!(
                    "green error rate {} % > {} % over {} requests ({} 5xx) {window}",
                    num(rate),
                    num(self.max_percent),
                    g.requests,
                    g.errors_5xx
                ),
            )
        } else {
            obs(
                Verdict::Pass,
                format!(
                    "green error rate {} % <= {} % over {} requests ({} 5xx) {window}",
                    num(rate),
                    num(self.max_percent),
                    g.requests,
                    g.errors_5xx
                ),
            )
        };
        o.with_numbers(numbers)
    }

    async fn preflight(&self) -> Result<(), AdapterError> {
        preflight_admin(&self.admin)
    }
}

/// `sequential-error-rate`: green's 5xx against blue's, look by look, from
/// the proxy's counts since it started (`totals`). Each look's batch is
/// what each colour served since the previous look; the test
/// ([`SequentialErrorRate`]) keeps its evidence across looks and steps.
///
/// When the split changed since the previous look, its requests straddle
/// the shift: the batch is then what the proxy's window since the split
/// took effect holds (or, past the proxy's longest window, nothing, and
/// counting starts again from this look). After a proxy restart (its counts
/// went back) counting starts again from the look. Where blue served nothing
/// (100 % green), green is judged against a bound on blue's rate from
/// before. The test and the counts of the last look are stored with the
/// rollout after every look ([`Check::state`]), so a driver that takes the
/// rollout over goes on with the same test, and its first batch runs from
/// the previous driver's last look.
struct SequentialErrorRateCheck {
    name: String,
    admin: Result<AdminClient, AdapterError>,
    candidate: Colour,
    settings: Settings,
    state: Mutex<Option<JudgeState>>,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct JudgeState {
    test: SequentialErrorRate,
    /// The proxy's counts at the previous look: green's and blue's
    /// requests and 5xx, and when the proxy started (by cutover's clock:
    /// the look's time less the proxy's uptime).
    counts: [u64; 4],
    proxy_started: Timestamp,
    /// When the split the previous look saw took effect.
    split_since: Timestamp,
}

impl SequentialErrorRateCheck {
    /// Takes this look's counts in; what was dropped, if anything, and why.
    /// Takes this look's counts in; says where counting started when it
    /// did not start at the previous look. `since_split`: what each colour
    /// served since the split in `ctx` took effect, when the proxy's window
    /// covered all of that time.
    fn take(
        &self,
        state: &mut Option<JudgeState>,
        counts: [u64; 4],
        uptime_ms: u64,
        ctx: &CheckContext,
        since_split: Option<Batch>,
    ) -> Result<Option<&'static str>, String> {
        let proxy_started = Timestamp(ctx.now.as_millis().saturating_sub(uptime_ms));
        // Against blue's bound only at 100 % green: below it, a batch
        // without blue requests is too small to say anything.
        let full = ctx.split == Split::FULL;
        let Some(st) = state.as_mut() else {
            let mut test = SequentialErrorRate::new(self.settings).map_err(|e| e.to_string())?;
            let note = match since_split {
                Some(batch) => {
                    test.observe_at(batch, full);
                    "first look: counting from when the split took effect"
                }
                None => "first look: counting from now",
            };
            *state = Some(JudgeState {
                test,
                counts,
                proxy_started,
                split_since: ctx.split_since,
            });
            return Ok(Some(note));
        };
        // A proxy that started again since the previous look, even one whose
        // new counts have passed the old ones (a look long after): its start
        // moved by more than the two clocks' noise.
        let moved = proxy_started
            .as_millis()
            .abs_diff(st.proxy_started.as_millis());
        let restarted = moved > PROXY_START_NOISE_MS
            || counts.iter().zip(st.counts).any(|(now, then)| *now < then);
        let shifted = ctx.split_since != st.split_since;
        let [g, ge, b, be] = std::array::from_fn(|i| counts[i].saturating_sub(st.counts[i]));
        st.counts = counts;
        st.proxy_started = proxy_started;
        st.split_since = ctx.split_since;
        if restarted {
            return Ok(Some(
                "the proxy restarted since the last look: counting from now",
            ));
        }
        if shifted {
            // The requests since the previous look straddle the shift: only
            // those since it took effect count.
            return Ok(Some(match since_split {
                Some(batch) => {
                    st.test.observe_at(batch, full);
                    "the split changed since the last look: counting from when it took effect"
                }
                None => "the split changed since the last look: counting from now",
            }));
        }
        st.test.observe_at(
            Batch {
                green_requests: g,
                green_failures: ge,
                blue_requests: b,
                blue_failures: be,
            },
            full,
        );
        Ok(None)
    }
}

/// How far apart two readings of the proxy's start (a look's time less the
/// proxy's uptime) may be without meaning it restarted: the time an admin
/// call takes, and the two clocks' drift and rounding. A restart within it
/// is still seen when its counts have not caught up with the old ones.
const PROXY_START_NOISE_MS: u64 = 5_000;

#[async_trait]
impl Check for SequentialErrorRateCheck {
    fn name(&self) -> &str {
        &self.name
    }

    async fn evaluate(&self, ctx: &CheckContext) -> Observation {
        let obs = |v, d: String| Observation::new(&self.name, v, d);
        let admin = match admin_or_error(&self.name, &self.admin) {
            Ok(a) => a,
            Err(o) => return o,
        };
        // The totals give what was served between two looks. After a shift
        // (or at the first look) the window since the split took effect
        // gives what counts of the requests before this look.
        let since = ctx.now.since(ctx.split_since);
        let new_split = self
            .state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .is_none_or(|st| st.split_since != ctx.split_since);
        // A window covers what was asked to within the proxy's resolution
        // (10 ms slots with its default `metrics_window`), rounded up to
        // whole slots: asking for two slots less than the time since the
        // shift keeps traffic from before it out, at the cost of up to 20 ms
        // after it; under three slots since, the two cannot be told apart.
        let mut resolution = Duration::from_millis(10);
        let report = loop {
            let window = if new_split {
                since
                    .saturating_sub(resolution * 2)
                    .max(Duration::from_millis(10))
            } else {
                Duration::from_secs(1)
            };
            let report = match admin.metrics(window, &[]).await {
                Ok(r) => r,
                Err(e) => {
                    return obs(
                        Verdict::Error,
                        format!("cannot read the proxy's metrics: {e}"),
                    )
                }
            };
            let actual = Duration::from_millis(report.resolution_ms);
            if new_split && actual > resolution {
                resolution = actual;
                continue;
            }
            break report;
        };
        let (g, b) = (
            report.totals.colour(self.candidate),
            report.totals.colour(self.candidate.other()),
        );
        let counts = [g.requests, g.errors_5xx, b.requests, b.errors_5xx];
        let covered = since >= resolution * 3
            && report.window_ms as u128 + 2 * resolution.as_millis() >= since.as_millis();
        let since_split = (new_split && covered).then(|| {
            let (g, b) = (
                report.colour(self.candidate),
                report.colour(self.candidate.other()),
            );
            Batch {
                green_requests: g.requests,
                green_failures: g.errors_5xx,
                blue_requests: b.requests,
                blue_failures: b.errors_5xx,
            }
        });
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let dropped = match self.take(&mut state, counts, report.uptime_ms, ctx, since_split) {
            Ok(d) => d,
            Err(e) => return obs(Verdict::Error, format!("unusable judge settings: {e}")),
        };
        let test = &state.as_ref().expect("set by take").test;
        let note = dropped.map_or_else(String::new, |d| format!(" ({d})"));
        test.judge(ctx.hold_is_over())
            .observation(&self.name, ctx.hold_is_over(), &note)
    }

    async fn preflight(&self) -> Result<(), AdapterError> {
        preflight_admin(&self.admin)
    }

    fn state(&self) -> Option<serde_json::Value> {
        let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        serde_json::to_value(state.as_ref()?).ok()
    }

    fn restore(&self, saved: &serde_json::Value) -> Result<(), String> {
        let mut st: JudgeState =
            serde_json::from_value(saved.clone()).map_err(|e| format!("unreadable: {e}"))?;
        if st.test.settings() != &self.settings {
            return Err("it was gathered under other settings".into());
        }
        st.test = SequentialErrorRate::restored(st.test)?;
        *self.state.lock().unwrap_or_else(|e| e.into_inner()) = Some(st);
        Ok(())
    }
}

struct LatencyCheck {
    name: String,
    admin: Result<AdminClient, AdapterError>,
    candidate: Colour,
    percentile: f64,
    max: Option<Duration>,
    max_ratio_to_blue: Option<f64>,
    ratio_floor: Option<Duration>,
    min_requests: u64,
    window: Duration,
}

#[async_trait]
impl Check for LatencyCheck {
    fn name(&self) -> &str {
        &self.name
    }

    async fn evaluate(&self, _ctx: &CheckContext) -> Observation {
        let obs = |v, d: String| Observation::new(&self.name, v, d);
        if self.max.is_none() && self.max_ratio_to_blue.is_none() {
            return obs(
                Verdict::Error,
                "a latency check needs `max`, `max_ratio_to_blue` or both".into(),
            );
        }
        if !(self.percentile > 0.0 && self.percentile <= 100.0) {
            return obs(
                Verdict::Error,
                format!(
                    "percentile {} is not within 0 < p <= 100 (e.g. 99)",
                    self.percentile
                ),
            );
        }
        let admin = match admin_or_error(&self.name, &self.admin) {
            Ok(a) => a,
            Err(o) => return o,
        };
        let report = match admin.metrics(self.window, &[self.percentile]).await {
            Ok(r) => r,
            Err(e) => {
                return obs(
                    Verdict::Error,
                    format!("cannot read the proxy's metrics: {e}"),
                )
            }
        };
        let window = window_text(self.window, report.window_ms);
        let min = self.min_requests.max(1);
        let p = format!("p{}", num(self.percentile));
        let (g, b) = (report.of(self.candidate), report.of(self.candidate.other()));
        let Some(green_ms) = g
            .percentile_ms(self.percentile)
            .filter(|_| g.requests >= min)
        else {
            return obs(
                Verdict::Inconclusive,
                format!(
                    "green served {} of {min} requests needed {window}",
                    g.requests
                ),
            );
        };
        let mut failed = Vec::new();
        let mut passed = Vec::new();
        let mut skipped = None;
        if let Some(max) = self.max {
            let max_ms = max.as_secs_f64() * 1000.0;
            let line = format!(
                "green {p} {} {} max {}",
                ms(green_ms),
                if green_ms > max_ms { ">" } else { "<=" },
                ms(max_ms)
            );
            if green_ms > max_ms {
                failed.push(line)
            } else {
                passed.push(line)
            }
        }
        if let Some(ratio) = self.max_ratio_to_blue {
            match b
                .percentile_ms(self.percentile)
                .filter(|_| b.requests >= min)
            {
                Some(blue_ms) => {
                    let floor_ms = self.ratio_floor.map_or(0.0, |f| f.as_secs_f64() * 1000.0);
                    let limit = (blue_ms * ratio).max(floor_ms);
                    let floor = if floor_ms > blue_ms * ratio {
                        format!(" (limit raised to the floor {})", ms(floor_ms))
                    } else {
                        String::new()
                    };
                    let line = format!(
                        "green {p} {} {} {} x blue's {}{floor}",
                        ms(green_ms),
                        if green_ms > limit { ">" } else { "<=" },
                        num(ratio),
                        ms(blue_ms)
                    );
                    if green_ms > limit {
                        failed.push(line)
                    } else {
                        passed.push(line)
                    }
                }
                // At 100 % green blue gets no traffic by design: there is
                // no baseline to compare with, and waiting for one would
                // only stall the bake. Judge green by `max` alone, if set.
                None if report.split_bp == 10_000 => {
                    passed.push("no ratio to blue at 100 % green (blue serves no traffic)".into())
                }
                None => {
                    skipped = Some(format!(
                        "blue served {} of {min} requests needed to compare",
                        b.requests
                    ))
                }
            }
        }
        let over = format!("over {} green requests {window}", g.requests);
        if !failed.is_empty() {
            return obs(Verdict::Fail, format!("{} {over}", failed.join("; ")));
        }
        match (passed.is_empty(), skipped) {
            (true, Some(skip)) => obs(
                Verdict::Inconclusive,
                format!("{skip}; green {p} {} {over}", ms(green_ms)),
            ),
            (_, skip) => {
                let mut d = format!("{} {over}", passed.join("; "));
                if let Some(skip) = skip {
                    d.push_str(&format!(" (ratio to blue not judged: {skip})"));
                }
                obs(Verdict::Pass, d)
            }
        }
    }

    async fn preflight(&self) -> Result<(), AdapterError> {
        preflight_admin(&self.admin)
    }
}

struct HealthCheck {
    name: String,
    admin: Result<AdminClient, AdapterError>,
    candidate: Colour,
}

#[async_trait]
impl Check for HealthCheck {
    fn name(&self) -> &str {
        &self.name
    }

    async fn evaluate(&self, _ctx: &CheckContext) -> Observation {
        let obs = |v, d: String| Observation::new(&self.name, v, d);
        let admin = match admin_or_error(&self.name, &self.admin) {
            Ok(a) => a,
            Err(o) => return o,
        };
        let report = match admin.health().await {
            Ok(r) => r,
            Err(e) => {
                return obs(
                    Verdict::Error,
                    format!("cannot read the proxy's health: {e}"),
                )
            }
        };
        if !report.probes_enabled {
            return obs(
                Verdict::Inconclusive,
                "the proxy has no [health_probe] configured, so it knows nothing of green's health"
                    .into(),
            );
        }
        let green: Vec<_> = report
            .upstreams
            .iter()
            .filter(|u| u.colour == self.candidate)
            .collect();
        let unhealthy: Vec<String> = green
            .iter()
            .filter(|u| u.state == ProbeState::Unhealthy)
            .map(|u| {
                let last = u
                    .last_probe
                    .as_ref()
                    .and_then(|p| p.error.clone())
                    .map(|e| format!(", last: {e}"))
                    .unwrap_or_default();
                format!(
                    "green upstream {} unhealthy ({} failed probes in a row{last})",
                    u.url, u.consecutive_failures
                )
            })
            .collect();
        if !unhealthy.is_empty() {
            return obs(Verdict::Fail, unhealthy.join("; "));
        }
        let unknown: Vec<&str> = green
            .iter()
            .filter(|u| u.state == ProbeState::Unknown)
            .map(|u| u.url.as_str())
            .collect();
        if !unknown.is_empty() {
            return obs(
                Verdict::Inconclusive,
                format!("green upstream(s) not probed yet: {}", unknown.join(", ")),
            );
        }
        obs(
            Verdict::Pass,
            format!(
                "all {} green upstream(s) pass their health probes",
                green.len()
            ),
        )
    }

    async fn preflight(&self) -> Result<(), AdapterError> {
        preflight_admin(&self.admin)
    }
}

/// How much of a body the http check reads.
const HTTP_BODY_LIMIT: usize = 1 << 20;

/// The connection pool the `http` checks of the process share (one per
/// connect timeout): thousands of rollouts then hold the connections their
/// calls in flight need, not one or more each.
pub(crate) fn http_check_client(connect_timeout: Duration) -> Client<HttpConnector, Empty<Bytes>> {
    type Pools = std::collections::HashMap<Duration, Client<HttpConnector, Empty<Bytes>>>;
    static CLIENTS: std::sync::Mutex<Option<Pools>> = std::sync::Mutex::new(None);
    let mut clients = CLIENTS.lock().unwrap_or_else(|e| e.into_inner());
    clients
        .get_or_insert_with(Pools::new)
        .entry(connect_timeout)
        .or_insert_with(|| {
            let mut connector = HttpConnector::new();
            connector.set_connect_timeout(Some(connect_timeout));
            connector.set_nodelay(true);
            Client::builder(TokioExecutor::new())
                .pool_timer(TokioTimer::new())
                .timer(TokioTimer::new())
                .pool_idle_timeout(Duration::from_secs(30))
                .build(connector)
        })
        .clone()
}

struct HttpCheck {
    name: String,
    url: Result<Uri, String>,
    text: String,
    body_contains: Option<String>,
    timeout: Duration,
    client: Client<HttpConnector, Empty<Bytes>>,
}

impl HttpCheck {
    fn new(name: String, url: &str, body_contains: Option<String>, timeout: Duration) -> HttpCheck {
        let parsed = url
            .trim()
            .parse::<Uri>()
            .map_err(|e| format!("`{url}` is not a URL: {e}"))
            .and_then(|u| match u.scheme_str() {
                Some("http") if u.authority().is_some() => Ok(u),
                Some("https") => Err(format!(
                    "`{url}`: https is not supported by the local http check; use http://"
                )),
                _ => Err(format!("`{url}`: expected an http:// URL with a host")),
            });
        let client = http_check_client(timeout);
        HttpCheck {
            name,
            url: parsed,
            text: url.to_string(),
            body_contains,
            timeout,
            client,
        }
    }

    /// Status and up to [`HTTP_BODY_LIMIT`] bytes of the body.
    async fn fetch(&self, uri: Uri) -> Result<(u16, Vec<u8>), String> {
        let mut req = Request::new(Empty::new());
        *req.uri_mut() = uri;
        req.headers_mut()
            .insert(USER_AGENT, HeaderValue::from_static("cutover-check"));
        let response = self
            .client
            .request(req)
            .await
            .map_err(|e| error_chain(&e))?;
        let status = response.status().as_u16();
        let mut body = response.into_body();
        let mut bytes = Vec::new();
        while bytes.len() < HTTP_BODY_LIMIT {
            match body.frame().await {
                None => break,
                Some(Ok(frame)) => {
                    if let Some(data) = frame.data_ref() {
                        bytes.extend_from_slice(data);
                    }
                }
                Some(Err(e)) => return Err(format!("reading the body: {}", error_chain(&e))),
            }
        }
        Ok((status, bytes))
    }
}

#[async_trait]
impl Check for HttpCheck {
    fn name(&self) -> &str {
        &self.name
    }

    async fn evaluate(&self, _ctx: &CheckContext) -> Observation {
        let obs = |v, d: String| Observation::new(&self.name, v, d);
        let uri = match &self.url {
            Ok(u) => u.clone(),
            Err(e) => return obs(Verdict::Error, e.clone()),
        };
        let started = Instant::now();
        let (status, body) = match tokio::time::timeout(self.timeout, self.fetch(uri)).await {
            Err(_) => {
                return obs(
                    Verdict::Error,
                    format!(
                        "GET {}: no answer within {}",
                        self.text,
                        Human(self.timeout)
                    ),
                )
            }
            Ok(Err(e)) => return obs(Verdict::Error, format!("GET {}: {e}", self.text)),
            Ok(Ok(x)) => x,
        };
        let took = ms(started.elapsed().as_secs_f64() * 1000.0);
        let text = String::from_utf8_lossy(&body);
        if !(200..300).contains(&status) {
            let shown = excerpt(&text, 200);
            let shown = if shown.is_empty() {
                String::new()
            } else {
                format!(": {shown}")
            };
            return obs(
                Verdict::Fail,
                format!("GET {} answered {status} in {took}{shown}", self.text),
            );
        }
        match &self.body_contains {
            Some(needle) if !text.contains(needle.as_str()) => obs(
                Verdict::Fail,
                format!(
                    "GET {} answered {status} but the body lacks {needle:?}: {}",
                    self.text,
                    excerpt(&text, 200)
                ),
            ),
            Some(needle) => obs(
                Verdict::Pass,
                format!(
                    "GET {} answered {status} in {took}, body contains {needle:?}",
                    self.text
                ),
            ),
            None => obs(
                Verdict::Pass,
                format!("GET {} answered {status} in {took}", self.text),
            ),
        }
    }

    async fn preflight(&self) -> Result<(), AdapterError> {
        self.url
            .as_ref()
            .map(|_| ())
            .map_err(|e| AdapterError::permanent(e.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_read_naturally() {
        assert_eq!(num(1.0), "1");
        assert_eq!(num(7.142857), "7.14");
        assert_eq!(num(0.5), "0.5");
        assert_eq!(num(0.0), "0");
        assert_eq!(ms(12.3456), "12.35 ms");
        assert_eq!(ms(1234.5), "1234 ms");
    }
}
