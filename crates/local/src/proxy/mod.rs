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
//! in-process. The data plane runs on the caller's tokio runtime, or, with
//! `workers = N` in the configuration, on N threads of its own, each with a
//! single-threaded event loop and its own upstream connections (like
//! nginx's worker processes; faster, see `docs/benchmarks.md`). The admin
//! API and the probes always run on the caller's runtime.

mod admin;
mod balancer;
pub mod config;
mod forward;
mod http1;
mod metrics;
mod probe;
mod upstream;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use cutover_core::Split;
use hyper::header::{HeaderName, HeaderValue};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::api::{Colour, HealthReport, MetricsReport};
use crate::server::{accept_each, dispatch, receive_each, serve, Shutdown, Signal};
use balancer::{Pool, SplitState};
pub use config::{ConfigError, HealthProbeConfig, ProxyConfig, ServiceConfig, UpstreamUrl};
use metrics::Metrics;

/// Response header naming the colour that served the request.
pub static X_CUTOVER_COLOUR: HeaderName = HeaderName::from_static("x-cutover-colour");

/// State shared by the data plane, the admin API and the probes.
pub(crate) struct Shared {
    pub config: ProxyConfig,
    /// In the configuration's order.
    pub services: Vec<Service>,
    /// Lowercase host (no port) to its index in `services`.
    by_host: HashMap<Box<[u8]>, usize>,
    /// The service without `hosts`, if any: every other host goes there.
    catch_all: Option<usize>,
}

/// One service: its split, pools and metrics.
pub(crate) struct Service {
    pub config: ServiceConfig,
    pub split: SplitState,
    /// Indexed by [`Colour`]: blue, green.
    pub pools: [Pool; 2],
    pub metrics: Metrics,
    colour_header: [HeaderValue; 2],
    /// `Set-Cookie` values per colour, when sticky sessions are on.
    set_cookie: Option<[HeaderValue; 2]>,
}

impl Service {
    /// `first_slot`: the slot of its first upstream among every service's.
    fn new(config: ServiceConfig, metrics_window: Duration, first_slot: usize) -> Service {
        let set_cookie = config.sticky_cookie.as_ref().map(|name| {
            Colour::BOTH.map(|c| {
                HeaderValue::from_str(&format!("{name}={c}; Path=/; HttpOnly; SameSite=Lax"))
                    .expect("validated cookie name")
            })
        });
        Service {
            split: SplitState::new(config.initial_split),
            pools: [
                Pool::new(Colour::Blue, &config.blue, first_slot),
                Pool::new(Colour::Green, &config.green, first_slot + config.blue.len()),
            ],
            metrics: Metrics::new(metrics_window),
            colour_header: [
                HeaderValue::from_static("blue"),
                HeaderValue::from_static("green"),
            ],
            set_cookie,
            config,
        }
    }

    pub fn name(&self) -> &str {
        &self.config.name
    }

    /// Its upstreams, blue first.
    pub fn upstreams(&self) -> impl Iterator<Item = &balancer::Upstream> {
        self.pools.iter().flat_map(|p| p.upstreams.iter())
    }
}

impl Shared {
    fn new(config: ProxyConfig) -> Shared {
        let mut services = Vec::with_capacity(config.services.len());
        let (mut by_host, mut catch_all, mut slot) = (HashMap::new(), None, 0);
        for (i, s) in config.services.iter().enumerate() {
            for h in &s.hosts {
                by_host.insert(h.as_bytes().into(), i);
            }
            if s.hosts.is_empty() {
                catch_all = Some(i);
            }
            services.push(Service::new(s.clone(), config.metrics_window, slot));
            slot += s.blue.len() + s.green.len();
        }
        Shared {
            config,
            services,
            by_host,
            catch_all,
        }
    }

    /// The service for a request's `Host` (`host[:port]`, any case), or
    /// the one without `hosts` when no other names it.
    pub fn route(&self, host: Option<&[u8]>) -> Option<&Service> {
        let found = host.and_then(|h| {
            let h = http1::host_without_port(h);
            if h.iter().any(u8::is_ascii_uppercase) {
                self.by_host.get(h.to_ascii_lowercase().as_slice())
            } else {
                self.by_host.get(h)
            }
        });
        found
            .or(self.catch_all.as_ref())
            .map(|&i| &self.services[i])
    }

    pub fn service(&self, name: &str) -> Option<&Service> {
        self.services.iter().find(|s| s.name() == name)
    }

    /// The service the unprefixed admin paths (`/split`) mean: the only
    /// one there is.
    pub fn only_service(&self) -> Option<&Service> {
        match self.services.as_slice() {
            [one] => Some(one),
            _ => None,
        }
    }

    /// Every upstream of every service, in slot order.
    pub fn upstreams(&self) -> impl Iterator<Item = &balancer::Upstream> {
        self.services.iter().flat_map(Service::upstreams)
    }

    /// A fresh set of connection pools, one per upstream, indexed by
    /// [`balancer::Upstream::slot`].
    fn upstream_pools(&self) -> forward::Upstreams {
        self.upstreams()
            .map(|u| upstream::UpstreamPool::new(&u.url, self.config.connect_timeout))
            .collect()
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
    #[error("cannot start a data-plane thread: {source}")]
    Worker {
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
    workers: Vec<WorkerThread>,
}

/// A data-plane thread: told to stop once its connections are gone (or
/// when the handle is dropped), says when it has.
struct WorkerThread {
    _stop: oneshot::Sender<()>,
    done: oneshot::Receiver<()>,
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

    let mut workers = Vec::new();
    match shared.config.workers {
        None => {
            let (s, pools) = (shared.clone(), shared.upstream_pools());
            tasks.push(accept_each(
                data,
                shutdown.signal(),
                move |stream, peer, signal| {
                    forward::spawn(stream, peer, s.clone(), pools.clone(), signal)
                },
            ));
        }
        Some(n) => {
            // Accepting stays here; the connections go round-robin to the threads.
            let mut to = Vec::with_capacity(n);
            for i in 0..n {
                let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
                let spawned = spawn_worker(i, rx, shutdown.signal(), shared.clone())
                    .map_err(|source| StartError::Worker { source })?;
                workers.push(spawned);
                to.push(tx);
            }
            tasks.push(dispatch(data, shutdown.signal(), to));
        }
    }
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
        workers,
    })
}

/// Starts data-plane thread `i`: a single-threaded runtime serving the
/// connections [`dispatch`] hands it, with its own upstream connections.
fn spawn_worker(
    i: usize,
    accepted: tokio::sync::mpsc::UnboundedReceiver<(std::net::TcpStream, SocketAddr)>,
    signal: Signal,
    shared: Arc<Shared>,
) -> std::io::Result<WorkerThread> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let (done_tx, done_rx) = oneshot::channel::<()>();
    std::thread::Builder::new()
        .name(format!("cutover-data-{i}"))
        .spawn(move || {
            runtime.block_on(async move {
                let pools = shared.upstream_pools();
                let _ = receive_each(accepted, signal, move |stream, peer, signal| {
                    forward::spawn(stream, peer, shared.clone(), pools.clone(), signal)
                })
                .await;
                // Connections keep being served until the handle says stop.
                let _ = stop_rx.await;
            });
            drop(runtime);
            let _ = done_tx.send(());
        })?;
    Ok(WorkerThread {
        _stop: stop_tx,
        done: done_rx,
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

    /// The split in force (of the first service).
    pub fn split(&self) -> Split {
        self.first().split.get()
    }

    /// Sets the split directly (the admin API's `PUT /split` in-process).
    pub fn set_split(&self, split: Split) {
        self.first().split.set(split);
    }

    /// What `GET /metrics?window=…` reports (of the first service).
    pub fn metrics(&self, window: Duration) -> MetricsReport {
        admin::metrics_report(self.first(), window, &[])
    }

    /// What `GET /health` reports (of the first service).
    pub fn health(&self) -> HealthReport {
        admin::health_report(self.shared.config.health_probe.as_ref(), self.first())
    }

    /// The split of the service named `name`, if there is one.
    pub fn service_split(&self, name: &str) -> Option<Split> {
        self.shared.service(name).map(|s| s.split.get())
    }

    fn first(&self) -> &Service {
        &self.shared.services[0]
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
        for w in self.workers {
            let WorkerThread { _stop, done } = w;
            drop(_stop);
            let _ = done.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

    use bytes::Bytes;
    use http_body_util::{BodyExt, Empty};
    use hyper_util::client::legacy::Client;
    use hyper_util::rt::TokioExecutor;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;
    use crate::demo_app::{start_demo_app, DemoAppConfig};

    type TestClient = Client<hyper_util::client::legacy::connect::HttpConnector, Empty<Bytes>>;

    async fn get(client: &TestClient, url: &str) -> (u16, String, String) {
        let response = client.get(url.parse().unwrap()).await.unwrap();
        let status = response.status().as_u16();
        let colour = response
            .headers()
            .get(&X_CUTOVER_COLOUR)
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        (status, colour, String::from_utf8_lossy(&body).into_owned())
    }

    #[tokio::test]
    async fn worker_threads_serve_split_and_shut_down() {
        let loopback: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let blue = start_demo_app(loopback, DemoAppConfig::new("blue"))
            .await
            .unwrap();
        let green = start_demo_app(loopback, DemoAppConfig::new("green"))
            .await
            .unwrap();
        let mut config = ProxyConfig::for_upstreams(&[&blue.url()], &[&green.url()]).unwrap();
        config.workers = Some(2);
        config.services[0].initial_split = Split::from_percent(25.0).unwrap();
        let proxy = start(config).await.unwrap();
        // Several clients, so that both threads get connections.
        let clients: Vec<TestClient> = (0..4)
            .map(|_| Client::builder(TokioExecutor::new()).build_http())
            .collect();
        let mut green_served = 0;
        for i in 0..40 {
            let (status, colour, _) = get(&clients[i % 4], &proxy.data_url()).await;
            assert_eq!(status, 200);
            green_served += usize::from(colour == "green");
        }
        assert_eq!(green_served, 10, "25 % of 40, exactly");
        let m = proxy.metrics(Duration::from_secs(60));
        assert_eq!((m.blue.requests, m.green.requests), (30, 10));
        tokio::time::timeout(
            Duration::from_secs(5),
            proxy.shutdown_within(Duration::from_secs(1)),
        )
        .await
        .expect("the worker threads stop");
        blue.shutdown().await;
        green.shutdown().await;
    }

    /// An upstream that answers each request on a connection and closes
    /// the connection `close_after` after its first response; counts
    /// connections.
    async fn closing_upstream(close_after: Duration) -> (SocketAddr, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = listener.accept().await else {
                    return;
                };
                count.fetch_add(1, Relaxed);
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 4096];
                    let mut seen = Vec::new();
                    let deadline = tokio::time::sleep(Duration::from_secs(3600));
                    tokio::pin!(deadline);
                    loop {
                        tokio::select! {
                            n = s.read(&mut buf) => {
                                let Ok(n) = n else { return };
                                if n == 0 { return; }
                                seen.extend_from_slice(&buf[..n]);
                                while let Some(end) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
                                    seen.drain(..end + 4);
                                    let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok").await;
                                    deadline.as_mut().reset(tokio::time::Instant::now() + close_after);
                                }
                            }
                            _ = &mut deadline => return,
                        }
                    }
                });
            }
        });
        (addr, accepted)
    }

    #[tokio::test]
    async fn upstream_connections_are_reused_and_replaced_when_closed() {
        let (addr, accepted) = closing_upstream(Duration::from_millis(100)).await;
        let url = format!("http://{addr}");
        let proxy = start(ProxyConfig::for_upstreams(&[&url], &[&url]).unwrap())
            .await
            .unwrap();
        let client: TestClient = Client::builder(TokioExecutor::new()).build_http();
        for _ in 0..5 {
            assert_eq!(get(&client, &proxy.data_url()).await.2, "ok");
        }
        assert_eq!(
            accepted.load(Relaxed),
            1,
            "one keep-alive connection upstream"
        );
        // The upstream closes its idle connection; the next request takes a new one.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let (status, _, body) = get(&client, &proxy.data_url()).await;
        assert_eq!((status, body.as_str()), (200, "ok"));
        assert_eq!(accepted.load(Relaxed), 2);
        proxy.shutdown().await;
    }
}
