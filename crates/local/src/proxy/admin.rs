//! The admin API (JSON over HTTP/1.1 on `admin_listen`).
//!
//! | request | answer |
//! | --- | --- |
//! | `GET /split` | `{"split_bp": 1000, "split_percent": 10.0}` |
//! | `PUT /split` with `{"split_percent": 12.5}` or `{"split_bp": 1250}` | the new split, as above |
//! | `GET /metrics?window=30s&percentile=99.5` | per-colour requests, 5xx, error rate, latency percentiles over the window (capped at `metrics_window`, with a `note` saying so), totals since start |
//! | `GET /metrics/prometheus` | the same in Prometheus text format |
//! | `GET /health` | per upstream: colour, url, probe state, last probe, consecutive failures |
//! | `GET /services` | every service: name, hosts, split |
//!
//! A proxy with several `[[service]]`s answers each service's endpoints
//! under `/services/NAME/` (`PUT /services/checkout/split`); the plain
//! paths then answer 404 naming the services, except `GET
//! /metrics/prometheus`, which reports them all with a `service` label. A
//! proxy of one service answers both ways.
//!
//! With `admin_token` set, every request needs `Authorization: Bearer
//! <token>` (else 401). Errors are `{"error": "..."}` with a 4xx status.

use std::fmt::Write as _;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use cutover_core::time::{parse_duration, Human};
use cutover_core::Split;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use serde::Serialize;
use tokio::time::Instant;

use super::config::HealthProbeConfig;
use super::{Service, Shared};
use crate::api::{
    Colour, ErrorReport, HealthReport, MetricsReport, ProbeSettings, ServiceReport, SplitReport,
    SplitRequest, Totals, UpstreamHealth,
};
use crate::server::FullBody;
use crate::util::same_secret;

const MAX_BODY: usize = 16 * 1024;

/// Answers one admin request.
pub async fn handle(shared: Arc<Shared>, req: Request<Incoming>) -> Response<FullBody> {
    if let Some(token) = &shared.config.admin_token {
        let given = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .map(str::trim);
        if !given.is_some_and(|g| same_secret(g.as_bytes(), token.as_bytes())) {
            let mut r = error(
                StatusCode::UNAUTHORIZED,
                if given.is_some() {
                    "wrong admin token".to_string()
                } else {
                    "this admin API needs `Authorization: Bearer <admin_token>`".to_string()
                },
            );
            r.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            return r;
        }
    }
    let path = req.uri().path().trim_end_matches('/').to_string();
    let query = req.uri().query().unwrap_or("").to_string();
    if path == "/services" {
        return match *req.method() {
            Method::GET | Method::HEAD => json(StatusCode::OK, &services_report(&shared)),
            _ => method_not_allowed("GET"),
        };
    }
    // `/services/NAME/split` and the like, or `/split` when there is one service.
    let (service, endpoint) = match path.strip_prefix("/services/") {
        Some(rest) => {
            let (name, endpoint) = rest.split_once('/').map_or((rest, ""), |(n, e)| (n, e));
            match shared.service(name) {
                Some(s) => (Some(s), format!("/{endpoint}")),
                None => {
                    return error(
                        StatusCode::NOT_FOUND,
                        format!(
                        "no service `{name}` in this proxy; it has {} (GET /services lists them)",
                        names(&shared)
                    ),
                    )
                }
            }
        }
        None => (shared.only_service(), path.clone()),
    };
    let endpoints = ["/split", "/metrics", "/metrics/prometheus", "/health"];
    if endpoints.contains(&endpoint.as_str()) {
        let Some(service) = service else {
            if endpoint == "/metrics/prometheus"
                && matches!(*req.method(), Method::GET | Method::HEAD)
            {
                // One scrape for every service, each series labelled with it.
                return match parse_metrics_query(&shared.services[0], &query) {
                    Ok((window, _)) => prometheus_response(&shared, &shared.services, window),
                    Err(e) => error(StatusCode::BAD_REQUEST, e),
                };
            }
            return error(
                StatusCode::NOT_FOUND,
                format!(
                    "this proxy fronts {} services; use /services/NAME{endpoint} with NAME one of {}",
                    shared.services.len(),
                    names(&shared)
                ),
            );
        };
        return service_endpoint(&shared, service, req, &endpoint, &query).await;
    }
    error(
        StatusCode::NOT_FOUND,
        format!(
            "no admin endpoint `{}`; try GET /split, PUT /split, GET /metrics, GET /metrics/prometheus, GET /health, \
             GET /services, or those under /services/NAME/",
            req.uri().path()
        ),
    )
}

/// The names of the services, for error messages (the first few).
fn names(shared: &Shared) -> String {
    let mut out: Vec<String> = shared
        .services
        .iter()
        .take(5)
        .map(|s| format!("`{}`", s.name()))
        .collect();
    if shared.services.len() > 5 {
        out.push(format!("{} more", shared.services.len() - 5));
    }
    out.join(", ")
}

async fn service_endpoint(
    shared: &Shared,
    service: &Service,
    req: Request<Incoming>,
    endpoint: &str,
    query: &str,
) -> Response<FullBody> {
    match (req.method(), endpoint) {
        (&Method::GET | &Method::HEAD, "/split") => {
            json(StatusCode::OK, &split_report(service.split.get()))
        }
        (&Method::PUT, "/split") => put_split(service, req).await,
        (&Method::GET | &Method::HEAD, "/metrics") => match parse_metrics_query(service, query) {
            Ok((window, percentiles)) => {
                let mut report = metrics_report(service, window, &percentiles);
                if window > service.metrics.max_window() {
                    report.note = Some(format!(
                        "window {} is longer than this proxy keeps (metrics_window = {}): the figures cover {}",
                        Human(window),
                        Human(service.metrics.max_window()),
                        report.window
                    ));
                }
                json(StatusCode::OK, &report)
            }
            Err(e) => error(StatusCode::BAD_REQUEST, e),
        },
        (&Method::GET | &Method::HEAD, "/metrics/prometheus") => {
            match parse_metrics_query(service, query) {
                Ok((window, _)) => {
                    prometheus_response(shared, std::slice::from_ref(service), window)
                }
                Err(e) => error(StatusCode::BAD_REQUEST, e),
            }
        }
        (&Method::GET | &Method::HEAD, "/health") => json(
            StatusCode::OK,
            &health_report(shared.config.health_probe.as_ref(), service),
        ),
        (_, "/split") => method_not_allowed("GET, PUT"),
        _ => method_not_allowed("GET"),
    }
}

fn prometheus_response(
    shared: &Shared,
    services: &[Service],
    window: Duration,
) -> Response<FullBody> {
    let mut r = Response::new(Full::new(Bytes::from(prometheus(shared, services, window))));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    r
}

/// What `GET /services` reports.
fn services_report(shared: &Shared) -> Vec<ServiceReport> {
    shared
        .services
        .iter()
        .map(|s| ServiceReport {
            name: s.name().to_string(),
            hosts: s.config.hosts.clone(),
            split: split_report(s.split.get()),
        })
        .collect()
}

fn split_report(split: Split) -> SplitReport {
    SplitReport {
        split_bp: split.basis_points(),
        split_percent: split.percent(),
    }
}

async fn put_split(shared: &Service, req: Request<Incoming>) -> Response<FullBody> {
    let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("cannot read the body: {e}"),
            )
        }
    };
    const EXAMPLE: &str = r#"expected JSON like {"split_percent": 12.5} or {"split_bp": 1250}"#;
    let parsed: SplitRequest = match serde_json::from_slice(&body) {
        Ok(p) => p,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("{EXAMPLE}: {e}")),
    };
    let split = match (parsed.split_percent, parsed.split_bp) {
        (Some(p), None) => {
            Split::from_percent(p).ok_or(format!("split_percent {p} is outside 0..=100"))
        }
        (None, Some(bp)) => u16::try_from(bp)
            .ok()
            .and_then(Split::from_basis_points)
            .ok_or(format!("split_bp {bp} is outside 0..=10000")),
        (Some(_), Some(_)) => Err(format!(
            "give split_percent or split_bp, not both; {EXAMPLE}"
        )),
        (None, None) => Err(EXAMPLE.to_string()),
    };
    match split {
        Ok(split) => {
            let before = shared.split.get();
            shared.split.set(split);
            if before != split {
                tracing::info!("split set to {split} (was {before})");
            }
            json(StatusCode::OK, &split_report(split))
        }
        Err(e) => error(StatusCode::BAD_REQUEST, e),
    }
}

/// `window=30s` (default and cap: `metrics_window`) and `percentile=99.5`
/// (repeatable, or comma-separated).
fn parse_metrics_query(shared: &Service, query: &str) -> Result<(Duration, Vec<f64>), String> {
    let mut window = shared.metrics.max_window();
    let mut percentiles = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        match k {
            "window" => {
                window = parse_duration(v).map_err(|e| format!("window: {e}"))?;
                if window.is_zero() {
                    return Err("window must be longer than 0s".into());
                }
            }
            "percentile" => {
                for p in v.split([',', ' ']).filter(|p| !p.is_empty()) {
                    let p: f64 = p
                        .parse()
                        .ok()
                        .filter(|p: &f64| (0.0..=100.0).contains(p))
                        .ok_or_else(|| {
                            format!("percentile `{p}`: expected a number from 0 to 100, e.g. 99.5")
                        })?;
                    percentiles.push(p);
                }
            }
            other => {
                return Err(format!(
                    "unknown query parameter `{other}`; use window=30s and percentile=99.5"
                ))
            }
        }
    }
    // As asked: the report says what it covers, and when that is less.
    Ok((window, percentiles))
}

/// What `GET /metrics` reports.
pub fn metrics_report(shared: &Service, window: Duration, percentiles: &[f64]) -> MetricsReport {
    let now = Instant::now();
    let m = &shared.metrics;
    let window = m.clamp_window(window);
    let stats = |c| m.window(c, window, now).stats(percentiles);
    MetricsReport {
        window: Human(window).to_string(),
        window_ms: window.as_millis() as u64,
        max_window_ms: m.max_window().as_millis() as u64,
        resolution_ms: m.resolution().as_millis() as u64,
        split_bp: shared.split.get().basis_points(),
        blue: stats(Colour::Blue),
        green: stats(Colour::Green),
        totals: Totals {
            blue: m.totals(Colour::Blue),
            green: m.totals(Colour::Green),
        },
        uptime_ms: m.uptime(now).as_millis() as u64,
        note: None,
    }
}

/// What `GET /health` reports.
pub fn health_report(probe: Option<&HealthProbeConfig>, shared: &Service) -> HealthReport {
    let now = Instant::now();
    let probe = probe.map(|p| ProbeSettings {
        path: p.path.clone(),
        interval_ms: p.interval.as_millis() as u64,
        timeout_ms: p.timeout.as_millis() as u64,
        unhealthy_after: p.unhealthy_after,
        healthy_after: p.healthy_after,
    });
    let upstreams = shared
        .upstreams()
        .map(|u| {
            let st = u.status.lock().unwrap_or_else(|e| e.into_inner()).clone();
            UpstreamHealth {
                colour: u.colour,
                url: u.url.to_string(),
                healthy: u.healthy.load(Relaxed),
                state: st.state,
                consecutive_failures: st.consecutive_failures,
                consecutive_successes: st.consecutive_successes,
                last_probe: st.last.map(|(at, mut r)| {
                    r.age_ms = now.saturating_duration_since(at).as_millis() as u64;
                    r
                }),
            }
        })
        .collect();
    HealthReport {
        probes_enabled: probe.is_some(),
        probe,
        upstreams,
    }
}

/// The Prometheus text for `services`; with several, each series has a
/// `service` label.
fn prometheus(shared: &Shared, services: &[Service], window: Duration) -> String {
    let labelled = services.len() > 1;
    let reports: Vec<(String, MetricsReport, HealthReport)> = services
        .iter()
        .map(|s| {
            let label = if labelled {
                format!("service=\"{}\",", s.name())
            } else {
                String::new()
            };
            (
                label,
                metrics_report(s, window, &[]),
                health_report(shared.config.health_probe.as_ref(), s),
            )
        })
        .collect();
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# HELP cutover_split_basis_points Green's share of traffic, in basis points."
    );
    let _ = writeln!(out, "# TYPE cutover_split_basis_points gauge");
    for (label, report, _) in &reports {
        match label.strip_suffix(',') {
            Some(l) => {
                let _ = writeln!(out, "cutover_split_basis_points{{{l}}} {}", report.split_bp);
            }
            None => {
                let _ = writeln!(out, "cutover_split_basis_points {}", report.split_bp);
            }
        }
    }
    let _ = writeln!(
        out,
        "# HELP cutover_requests_total Requests served per colour since start."
    );
    let _ = writeln!(out, "# TYPE cutover_requests_total counter");
    for (label, report, _) in &reports {
        for c in Colour::BOTH {
            let _ = writeln!(
                out,
                "cutover_requests_total{{{label}colour=\"{c}\"}} {}",
                report.totals.colour(c).requests
            );
        }
    }
    let _ = writeln!(out, "# HELP cutover_responses_5xx_total 5xx responses per colour since start (502/504 from the proxy included).");
    let _ = writeln!(out, "# TYPE cutover_responses_5xx_total counter");
    for (label, report, _) in &reports {
        for c in Colour::BOTH {
            let _ = writeln!(
                out,
                "cutover_responses_5xx_total{{{label}colour=\"{c}\"}} {}",
                report.totals.colour(c).errors_5xx
            );
        }
    }
    let _ = writeln!(
        out,
        "# HELP cutover_window_latency_seconds Latency to the upstream's response head over the last {}.",
        reports.first().map_or_else(|| Human(window).to_string(), |r| r.1.window.clone())
    );
    let _ = writeln!(out, "# TYPE cutover_window_latency_seconds gauge");
    for (label, report, _) in &reports {
        for c in Colour::BOTH {
            let l = &report.colour(c).latency_ms;
            for (q, v) in [
                ("0.5", l.p50),
                ("0.9", l.p90),
                ("0.99", l.p99),
                ("0.999", l.p999),
            ] {
                if let Some(ms) = v {
                    let _ = writeln!(
                        out,
                        "cutover_window_latency_seconds{{{label}colour=\"{c}\",quantile=\"{q}\"}} {}",
                        ms / 1000.0
                    );
                }
            }
        }
    }
    let _ = writeln!(
        out,
        "# HELP cutover_window_error_ratio 5xx share per colour over the window."
    );
    let _ = writeln!(out, "# TYPE cutover_window_error_ratio gauge");
    for (label, report, _) in &reports {
        for c in Colour::BOTH {
            let _ = writeln!(
                out,
                "cutover_window_error_ratio{{{label}colour=\"{c}\"}} {}",
                report.colour(c).error_rate
            );
        }
    }
    let _ = writeln!(out, "# HELP cutover_upstream_healthy Whether the data plane routes to the upstream (1) or skips it (0).");
    let _ = writeln!(out, "# TYPE cutover_upstream_healthy gauge");
    for (label, _, health) in &reports {
        for u in &health.upstreams {
            let _ = writeln!(
                out,
                "cutover_upstream_healthy{{{label}colour=\"{}\",url=\"{}\"}} {}",
                u.colour,
                u.url,
                u8::from(u.healthy)
            );
        }
    }
    out
}

fn json<T: Serialize>(status: StatusCode, value: &T) -> Response<FullBody> {
    let body = serde_json::to_vec_pretty(value)
        .unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}").into_bytes());
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

fn error(status: StatusCode, message: impl Into<String>) -> Response<FullBody> {
    json(
        status,
        &ErrorReport {
            error: message.into(),
        },
    )
}

fn method_not_allowed(allow: &'static str) -> Response<FullBody> {
    let mut r = error(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("method not allowed; use {allow}"),
    );
    r.headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static(allow));
    r
}
