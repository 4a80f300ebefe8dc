//! The embedded weighted proxy: a data plane that splits traffic between
//! blue and green upstreams, and an admin API that moves the split and
//! reports per-colour metrics and upstream health.
//!
//! ```text
//!  client ──> data plane (listen) ──> blue upstreams  (round-robin, healthy first)
//!                 │ split: weighted ──> green upstreams
//!                 └─ metrics (per colour, sliding window)
//!  cutover ──> admin API (admin_listen): /split /metrics /health /metrics/prometheus
//!  probes ──> GET health_probe.path on every upstream, every interval
//! ```
//!
//! [`start`] binds both listeners and returns a [`ProxyHandle`]; the
//! `cutover proxy` command, `cutover demo` and the tests all run it
//! in-process.

mod admin;
mod balancer;
pub mod config;
mod data;
mod metrics;
mod probe;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use cutover_core::Split;
use hyper::body::Incoming;
use hyper::header::HeaderValue;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::api::{Colour, HealthReport, MetricsReport};
use crate::server::{serve, Shutdown};
use balancer::{Pool, SplitState};
pub use config::{ConfigError, HealthProbeConfig, ProxyConfig, UpstreamUrl};
pub use data::X_CUTOVER_COLOUR;
use metrics::Metrics;

/// State shared by the data plane, the admin API and the probes.
pub(crate) struct Shared {
    pub config: ProxyConfig,
    pub split: SplitState,
    /// Indexed by [`Colour`]: blue, green.
    pub pools: [Pool; 2],
    pub metrics: Metrics,
    pub(crate) client: Client<HttpConnector, Incoming>,
    colour_header: [HeaderValue; 2],
    /// `Set-Cookie` values per colour, when sticky sessions are on.
    set_cookie: Option<[HeaderValue; 2]>,
}

impl Shared {
    fn new(config: ProxyConfig) -> Shared {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(config.connect_timeout));
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .pool_max_idle_per_host(1024)
            .build(connector);
        let set_cookie = config.sticky_cookie.as_ref().map(|name| {
            Colour::BOTH.map(|c| {
                HeaderValue::from_str(&format!("{name}={c}; Path=/; HttpOnly; SameSite=Lax"))
                    .expect("validated cookie name")
            })
        });
        Shared {
            split: SplitState::new(config.initial_split),
            pools: [
                Pool::new(Colour::Blue, &config.blue),
                Pool::new(Colour::Green, &config.green),
            ],
            metrics: Metrics::new(config.metrics_window),
            client,
            colour_header: [
                HeaderValue::from_static("blue"),
                HeaderValue::from_static("green"),
            ],
            set_cookie,
            config,
        }
    }

    /// Every upstream, blue first.
    pub fn upstreams(&self) -> impl Iterator<Item = &balancer::Upstream> {
        self.pools.iter().flat_map(|p| p.upstreams.iter())
    }
}

/// Why the proxy could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on {addr} ({what}): {source}")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// A running proxy. Dropping it stops the proxy abruptly; prefer
/// [`ProxyHandle::shutdown`].
pub struct ProxyHandle {
    shared: Arc<Shared>,
    data_addr: SocketAddr,
    admin_addr: SocketAddr,
    shutdown: Shutdown,
    tasks: Vec<JoinHandle<()>>,
}

async fn bind(what: &'static str, addr: SocketAddr) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Bind { what, addr, source })
}

/// Binds the data plane and the admin API, starts the health probes, and
/// returns once both listeners accept connections.
pub async fn start(config: ProxyConfig) -> Result<ProxyHandle, StartError> {
    let data = bind("data plane", config.listen).await?;
    let admin = bind("admin API", config.admin_listen).await?;
    let data_addr = data.local_addr().map_err(|source| StartError::Bind {
        what: "data plane",
        addr: config.listen,
        source,
    })?;
    let admin_addr = admin.local_addr().map_err(|source| StartError::Bind {
        what: "admin API",
        addr: config.admin_listen,
        source,
    })?;
    let shared = Arc::new(Shared::new(config));
    let shutdown = Shutdown::new();
    let mut tasks = Vec::new();

    let s = shared.clone();
    tasks.push(serve(data, shutdown.signal(), move |peer: SocketAddr| {
        let peer_ip = HeaderValue::from_str(&peer.ip().to_canonical().to_string())
            .expect("an IP is a header value");
        let conn = Arc::new(data::Conn {
            shared: s.clone(),
            peer_ip,
        });
        move |req| data::handle(conn.clone(), req)
    }));
    let s = shared.clone();
    tasks.push(serve(admin, shutdown.signal(), move |_peer| {
        let s = s.clone();
        move |req| admin::handle(s.clone(), req)
    }));
    tasks.extend(probe::spawn_all(&shared, &shutdown));
    tracing::info!(%data_addr, %admin_addr, "cutover proxy listening");
    Ok(ProxyHandle {
        shared,
        data_addr,
        admin_addr,
        shutdown,
        tasks,
    })
}

impl ProxyHandle {
    /// The data plane's bound address (the real port when configured with 0).
    pub fn data_addr(&self) -> SocketAddr {
        self.data_addr
    }

    /// The admin API's bound address.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    /// `http://<admin_addr>`, the base URL for [`crate::AdminClient`] and
    /// `cutover_core::plan::LocalRouter::admin_url`.
    pub fn admin_url(&self) -> String {
        format!("http://{}", self.admin_addr)
    }

    /// `http://<data_addr>`.
    pub fn data_url(&self) -> String {
        format!("http://{}", self.data_addr)
    }

    pub fn config(&self) -> &ProxyConfig {
        &self.shared.config
    }

    /// The split in force.
    pub fn split(&self) -> Split {
        self.shared.split.get()
    }

    /// Sets the split directly (the admin API's `PUT /split` in-process).
    pub fn set_split(&self, split: Split) {
        self.shared.split.set(split);
    }

    /// What `GET /metrics?window=…` reports.
    pub fn metrics(&self, window: Duration) -> MetricsReport {
        admin::metrics_report(&self.shared, window, &[])
    }

    /// What `GET /health` reports.
    pub fn health(&self) -> HealthReport {
        admin::health_report(&self.shared)
    }

    /// Stops accepting, lets in-flight requests finish (at most
    /// `request_timeout`), closes idle connections, stops the probes.
    pub async fn shutdown(self) {
        let grace = self.shared.config.request_timeout;
        self.shutdown_within(grace).await;
    }

    /// Like [`ProxyHandle::shutdown`] with an explicit grace period, after
    /// which remaining connections are dropped.
    pub async fn shutdown_within(self, grace: Duration) {
        self.shutdown.run(grace).await;
        for t in self.tasks {
            let _ = t.await;
        }
    }
}
