//! Active health probes.
//!
//! With `[health_probe]` configured, every upstream gets a task that sends
//! `GET path` every `interval`, giving up after `timeout`. A 2xx answer
//! passes; anything else (other status, refused connection, timeout)
//! fails. State per upstream:
//!
//! - `unknown` until the first result; routed to as if healthy;
//! - `unhealthy` after `unhealthy_after` (default 2) failures in a row;
//!   the data plane then skips it, unless every upstream of its colour is
//!   unhealthy;
//! - `healthy` after the first pass from `unknown`, or after
//!   `healthy_after` (default 1) passes in a row from `unhealthy`.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper::header::{HeaderValue, USER_AGENT};
use hyper::{Request, Uri};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tokio::task::JoinHandle;
use tokio::time::{Instant, MissedTickBehavior};

use super::balancer::Upstream;
use super::config::HealthProbeConfig;
use super::Shared;
use crate::api::{ProbeResult, ProbeState};
use crate::server::{Phase, Shutdown, Signal};
use crate::util::error_chain;

type ProbeClient = Client<HttpConnector, Empty<Bytes>>;

/// Starts one probe task per upstream (none without `[health_probe]`).
pub fn spawn_all(shared: &Arc<Shared>, shutdown: &Shutdown) -> Vec<JoinHandle<()>> {
    let Some(cfg) = shared.config.health_probe.clone() else {
        return Vec::new();
    };
    let mut connector = HttpConnector::new();
    connector.set_connect_timeout(Some(cfg.timeout.min(shared.config.connect_timeout)));
    connector.set_nodelay(true);
    let client: ProbeClient = Client::builder(TokioExecutor::new())
        .pool_timer(TokioTimer::new())
        .timer(TokioTimer::new())
        .pool_idle_timeout(cfg.interval * 2 + Duration::from_secs(1))
        .pool_max_idle_per_host(1)
        .build(connector);
    let mut tasks = Vec::new();
    for (service, s) in shared.services.iter().enumerate() {
        for (pool, p) in s.pools.iter().enumerate() {
            for index in 0..p.upstreams.len() {
                let (shared, cfg, client, signal) = (
                    shared.clone(),
                    cfg.clone(),
                    client.clone(),
                    shutdown.signal(),
                );
                tasks.push(tokio::spawn(probe_loop(
                    shared,
                    [service, pool, index],
                    cfg,
                    client,
                    signal,
                )));
            }
        }
    }
    tasks
}

async fn probe_loop(
    shared: Arc<Shared>,
    [service, pool, index]: [usize; 3],
    cfg: HealthProbeConfig,
    client: ProbeClient,
    mut signal: Signal,
) {
    let upstream = &shared.services[service].pools[pool].upstreams[index];
    let uri: Uri = match format!("{}{}", upstream.url, cfg.path).parse() {
        Ok(uri) => uri,
        Err(e) => {
            tracing::error!("cannot probe {}{}: {e}", upstream.url, cfg.path);
            return;
        }
    };
    let mut ticker = tokio::time::interval(cfg.interval);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = signal.reached(Phase::Draining) => return,
            _ = ticker.tick() => {}
        }
        let started = Instant::now();
        let outcome = tokio::select! {
            _ = signal.reached(Phase::Draining) => return,
            r = tokio::time::timeout(cfg.timeout, probe_once(&client, uri.clone())) => match r {
                Ok(r) => r,
                Err(_) => Err(format!("no answer within {}", cutover_core::time::Human(cfg.timeout))),
            },
        };
        record(upstream, &cfg, outcome, started);
    }
}

/// `Ok(status)` when the upstream answered, else why not.
async fn probe_once(client: &ProbeClient, uri: Uri) -> Result<Result<u16, u16>, String> {
    let mut req = Request::new(Empty::new());
    *req.uri_mut() = uri;
    req.headers_mut()
        .insert(USER_AGENT, HeaderValue::from_static("cutover-probe"));
    let response = client.request(req).await.map_err(|e| error_chain(&e))?;
    let status = response.status();
    // Read the (small) body so the connection can be reused.
    let _ = Limited::new(response.into_body(), 64 * 1024)
        .collect()
        .await;
    Ok(if status.is_success() {
        Ok(status.as_u16())
    } else {
        Err(status.as_u16())
    })
}

fn record(
    upstream: &Upstream,
    cfg: &HealthProbeConfig,
    outcome: Result<Result<u16, u16>, String>,
    started: Instant,
) {
    let (ok, status, error) = match outcome {
        Ok(Ok(status)) => (true, Some(status), None),
        Ok(Err(status)) => (false, Some(status), Some(format!("answered {status}"))),
        Err(e) => (false, None, Some(e)),
    };
    let now = Instant::now();
    let mut st = upstream.status.lock().unwrap_or_else(|e| e.into_inner());
    let before = st.state;
    if ok {
        st.consecutive_successes = st.consecutive_successes.saturating_add(1);
        st.consecutive_failures = 0;
        if st.state == ProbeState::Unknown || st.consecutive_successes >= cfg.healthy_after {
            st.state = ProbeState::Healthy;
        }
    } else {
        st.consecutive_failures = st.consecutive_failures.saturating_add(1);
        st.consecutive_successes = 0;
        if st.consecutive_failures >= cfg.unhealthy_after {
            st.state = ProbeState::Unhealthy;
        }
    }
    if before != st.state {
        let reason = error.as_deref().unwrap_or("probe passed");
        match st.state {
            ProbeState::Unhealthy => {
                tracing::warn!(colour = %upstream.colour, url = %upstream.url, "upstream unhealthy: {reason}")
            }
            _ => {
                tracing::info!(colour = %upstream.colour, url = %upstream.url, "upstream {}", st.state)
            }
        }
    }
    let at_unix_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    st.last = Some((
        now,
        ProbeResult {
            ok,
            status,
            error,
            at_unix_ms,
            age_ms: 0,
            latency_ms: (now - started).as_secs_f64() * 1000.0,
        },
    ));
    upstream
        .healthy
        .store(st.state != ProbeState::Unhealthy, Relaxed);
}
