//! A tiny HTTP service for `cutover demo` and tests.
//!
//! - `GET /healthz` always answers 200 `ok`: the demo's point is that a
//!   health endpoint can say OK while real requests fail.
//! - Every other request is an app request: after `latency`, it answers 200
//!   with a body naming the colour, or 500 for a `fail_ratio` share of
//!   requests. Failures are deterministic: request `n` fails iff
//!   `floor((n+1)·r) > floor(n·r)`, so any run of `k` requests has
//!   `k·r` failures, give or take one.
//!
//! The failure ratio and latency can be changed while it runs.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Request, Response, StatusCode};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::server::{serve, Shutdown};

/// How a demo app behaves.
#[derive(Clone, Debug, PartialEq)]
pub struct DemoAppConfig {
    /// Named in response bodies, e.g. `blue` or `green`.
    pub colour: String,
    /// Share of app requests answered 500, 0.0..=1.0.
    pub fail_ratio: f64,
    /// Delay before each app response.
    pub latency: Duration,
}

impl DemoAppConfig {
    /// A healthy, fast app of this colour.
    pub fn new(colour: impl Into<String>) -> DemoAppConfig {
        DemoAppConfig {
            colour: colour.into(),
            fail_ratio: 0.0,
            latency: Duration::ZERO,
        }
    }
}

const PPM: u64 = 1_000_000;

struct State {
    colour: String,
    ok_body: Bytes,
    /// Failure ratio in parts per million.
    fail_ppm: AtomicU64,
    latency_us: AtomicU64,
    /// App requests seen (decides which ones fail).
    counter: AtomicU64,
    /// App requests arrived, answered or not.
    received: AtomicU64,
    served_ok: AtomicU64,
    served_err: AtomicU64,
}

fn ppm(ratio: f64) -> u64 {
    if ratio.is_nan() {
        return 0;
    }
    (ratio.clamp(0.0, 1.0) * PPM as f64).round() as u64
}

/// A running demo app.
pub struct DemoAppHandle {
    addr: SocketAddr,
    state: Arc<State>,
    shutdown: Shutdown,
    task: JoinHandle<()>,
}

/// Starts a demo app on `addr` (port 0: any free port).
pub async fn start_demo_app(
    addr: SocketAddr,
    config: DemoAppConfig,
) -> std::io::Result<DemoAppHandle> {
    let listener = TcpListener::bind(addr).await?;
    let addr = listener.local_addr()?;
    let state = Arc::new(State {
        ok_body: Bytes::from(format!("hello from {}\n", config.colour)),
        colour: config.colour,
        fail_ppm: AtomicU64::new(ppm(config.fail_ratio)),
        latency_us: AtomicU64::new(config.latency.as_micros().min(u128::from(u64::MAX)) as u64),
        counter: AtomicU64::new(0),
        received: AtomicU64::new(0),
        served_ok: AtomicU64::new(0),
        served_err: AtomicU64::new(0),
    });
    let shutdown = Shutdown::new();
    let s = state.clone();
    let task = serve(listener, shutdown.signal(), move |_peer| {
        let s = s.clone();
        move |req| answer(s.clone(), req)
    });
    Ok(DemoAppHandle {
        addr,
        state,
        shutdown,
        task,
    })
}

async fn answer(state: Arc<State>, req: Request<Incoming>) -> Response<Full<Bytes>> {
    if req.uri().path() == "/healthz" {
        return text(StatusCode::OK, Bytes::from_static(b"ok\n"), &state.colour);
    }
    state.received.fetch_add(1, Relaxed);
    let latency = state.latency_us.load(Relaxed);
    if latency > 0 {
        tokio::time::sleep(Duration::from_micros(latency)).await;
    }
    let r = state.fail_ppm.load(Relaxed);
    let n = state.counter.fetch_add(1, Relaxed);
    let fails = r > 0 && (n + 1).wrapping_mul(r) / PPM > n.wrapping_mul(r) / PPM;
    if fails {
        state.served_err.fetch_add(1, Relaxed);
        let body = format!(
            "{} failed this request (demo fail_ratio {})\n",
            state.colour,
            r as f64 / PPM as f64
        );
        text(
            StatusCode::INTERNAL_SERVER_ERROR,
            Bytes::from(body),
            &state.colour,
        )
    } else {
        state.served_ok.fetch_add(1, Relaxed);
        text(StatusCode::OK, state.ok_body.clone(), &state.colour)
    }
}

fn text(status: StatusCode, body: Bytes, colour: &str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    if let Ok(v) = HeaderValue::from_str(colour) {
        r.headers_mut().insert("x-demo-colour", v);
    }
    r
}

impl DemoAppHandle {
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://<addr>`, ready for a proxy config's `upstreams`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn colour(&self) -> &str {
        &self.state.colour
    }

    /// Sets the share of app requests answered 500 (clamped to 0..=1).
    pub fn set_fail_ratio(&self, ratio: f64) {
        self.state.fail_ppm.store(ppm(ratio), Relaxed);
    }

    pub fn fail_ratio(&self) -> f64 {
        self.state.fail_ppm.load(Relaxed) as f64 / PPM as f64
    }

    /// Sets the delay before each app response.
    pub fn set_latency(&self, latency: Duration) {
        self.state.latency_us.store(
            latency.as_micros().min(u128::from(u64::MAX)) as u64,
            Relaxed,
        );
    }

    /// App requests answered so far: (200s, 500s). `/healthz` not counted.
    pub fn served(&self) -> (u64, u64) {
        (
            self.state.served_ok.load(Relaxed),
            self.state.served_err.load(Relaxed),
        )
    }

    /// App requests that arrived so far, including ones still waiting out
    /// the latency.
    pub fn received(&self) -> u64 {
        self.state.received.load(Relaxed)
    }

    /// Stops accepting and finishes in-flight requests (at most 5 s).
    pub async fn shutdown(self) {
        self.shutdown.run(Duration::from_secs(5)).await;
        let _ = self.task.await;
    }
}
