//! A small client of the proxy's admin API, shared by [`LocalRouter`]
//! (crate::LocalRouter) and the local checks.

use std::time::Duration;

use bytes::Bytes;
use cutover_core::time::Human;
use cutover_core::Split;
use cutover_engine::ports::AdapterError;
use http_body_util::{BodyExt, Full, Limited};
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, StatusCode, Uri};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use serde::de::DeserializeOwned;

use crate::api::{ErrorReport, HealthReport, MetricsReport, SplitReport, SplitRequest};
use crate::util::{error_chain, excerpt};

/// Talks to a proxy's admin API (`GET/PUT /split`, `GET /metrics`,
/// `GET /health`). Cheap to clone; clones share a connection pool.
///
/// Errors are [`AdapterError`]s: unreachable, timed out or 5xx is
/// transient; 4xx (wrong token, bad request) and unreadable answers are
/// permanent.
#[derive(Clone)]
pub struct AdminClient {
    base: String,
    token: Option<HeaderValue>,
    client: Client<HttpConnector, Full<Bytes>>,
    timeout: Duration,
}

impl std::fmt::Debug for AdminClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminClient")
            .field("base", &self.base)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// The connection pool every admin client of the process shares: ten
/// thousand rollouts against one proxy (`cutover serve`) then hold as many
/// connections as they have calls in flight, not one each (which took
/// hundreds of MB). A connection whose runtime is gone is closed, and the
/// pool skips closed connections.
fn shared_client() -> Client<HttpConnector, Full<Bytes>> {
    static CLIENT: std::sync::OnceLock<Client<HttpConnector, Full<Bytes>>> =
        std::sync::OnceLock::new();
    CLIENT
        .get_or_init(|| {
            let mut connector = HttpConnector::new();
            connector.set_connect_timeout(Some(Duration::from_secs(3)));
            connector.set_nodelay(true);
            Client::builder(TokioExecutor::new())
                .pool_timer(TokioTimer::new())
                .timer(TokioTimer::new())
                // Below the admin server's 30 s, after which it closes an
                // idle connection: at an equal timeout, a call every 30 s
                // (a plan's analysis interval) raced the server's close and
                // failed with "connection closed before message completed".
                .pool_idle_timeout(Duration::from_secs(15))
                .build(connector)
        })
        .clone()
}

/// Default time limit for one admin call.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

impl AdminClient {
    /// A client for the admin API at `admin_url` (e.g. `http://127.0.0.1:9901`),
    /// sending `Authorization: Bearer <token>` when a token is given.
    pub fn new(admin_url: &str, token: Option<&str>) -> Result<AdminClient, AdapterError> {
        let bad = |why: String| AdapterError::permanent(format!("admin URL `{admin_url}`: {why}"));
        let uri: Uri = admin_url.trim().parse().map_err(|e| {
            bad(format!(
                "not a URL ({e}); expected e.g. http://127.0.0.1:9901"
            ))
        })?;
        match uri.scheme_str() {
            Some("http") => {}
            Some("https") => {
                return Err(bad(
                    "https is not supported; the proxy's admin API speaks plain HTTP".into(),
                ))
            }
            _ => {
                return Err(bad(
                    "expected an http:// URL, e.g. http://127.0.0.1:9901".into()
                ))
            }
        }
        let authority = uri.authority().ok_or_else(|| bad("missing host".into()))?;
        if uri.query().is_some() {
            return Err(bad("takes no query".into()));
        }
        let base = format!("http://{authority}{}", uri.path().trim_end_matches('/'));
        let token = token
            .map(|t| {
                HeaderValue::from_str(&format!("Bearer {t}"))
                    .map(|mut v| {
                        v.set_sensitive(true);
                        v
                    })
                    .map_err(|_| {
                        AdapterError::permanent(
                            "the admin token contains characters not allowed in a header",
                        )
                    })
            })
            .transpose()?;
        let client = shared_client();
        Ok(AdminClient {
            base,
            token,
            client,
            timeout: DEFAULT_TIMEOUT,
        })
    }

    /// A client for the router settings of a plan.
    pub fn from_config(
        config: &cutover_core::plan::LocalRouter,
    ) -> Result<AdminClient, AdapterError> {
        AdminClient::new(&config.admin_url, config.token.as_deref())
    }

    /// Sets the time limit for each call (default 5 s).
    pub fn with_timeout(mut self, timeout: Duration) -> AdminClient {
        self.timeout = timeout;
        self
    }

    /// The admin API's base URL, without a trailing slash.
    pub fn base_url(&self) -> &str {
        &self.base
    }

    /// `GET /split`.
    pub async fn split(&self) -> Result<Split, AdapterError> {
        let r: SplitReport = self.call(Method::GET, "/split", None).await?;
        self.to_split(r)
    }

    /// `PUT /split`; returns the split the proxy reports back.
    pub async fn set_split(&self, split: Split) -> Result<Split, AdapterError> {
        let body = SplitRequest {
            split_bp: Some(u64::from(split.basis_points())),
            split_percent: None,
        };
        let body = serde_json::to_vec(&body).expect("serializable");
        let r: SplitReport = self.call(Method::PUT, "/split", Some(body)).await?;
        self.to_split(r)
    }

    /// `GET /metrics?window=…`, with extra percentiles (0..=100) if asked.
    pub async fn metrics(
        &self,
        window: Duration,
        percentiles: &[f64],
    ) -> Result<MetricsReport, AdapterError> {
        let mut path = format!("/metrics?window={}", Human(window));
        if !percentiles.is_empty() {
            let list: Vec<String> = percentiles.iter().map(|p| p.to_string()).collect();
            path.push_str("&percentile=");
            path.push_str(&list.join(","));
        }
        self.call(Method::GET, &path, None).await
    }

    /// `GET /health`.
    pub async fn health(&self) -> Result<HealthReport, AdapterError> {
        self.call(Method::GET, "/health", None).await
    }

    fn to_split(&self, r: SplitReport) -> Result<Split, AdapterError> {
        Split::from_basis_points(r.split_bp).ok_or_else(|| {
            AdapterError::permanent(format!(
                "the admin API at {} reported an impossible split_bp {}",
                self.base, r.split_bp
            ))
        })
    }

    async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<T, AdapterError> {
        let what = format!("{method} {}{path}", self.base);
        let uri: Uri = format!("{}{path}", self.base)
            .parse()
            .map_err(|e| AdapterError::permanent(format!("{what}: bad URL: {e}")))?;
        let mut req = Request::new(Full::new(Bytes::from(body.clone().unwrap_or_default())));
        *req.method_mut() = method;
        *req.uri_mut() = uri;
        req.headers_mut()
            .insert(header::ACCEPT, HeaderValue::from_static("application/json"));
        if body.is_some() {
            req.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
        }
        if let Some(token) = &self.token {
            req.headers_mut()
                .insert(header::AUTHORIZATION, token.clone());
        }
        let exchange = async {
            let response = self
                .client
                .request(req)
                .await
                .map_err(|e| error_chain(&e))?;
            let status = response.status();
            let body = Limited::new(response.into_body(), 4 << 20)
                .collect()
                .await
                .map_err(|e| format!("reading the answer: {e}"))?
                .to_bytes();
            Ok::<_, String>((status, body))
        };
        let (status, body) = match tokio::time::timeout(self.timeout, exchange).await {
            Err(_) => {
                return Err(AdapterError::transient(format!(
                    "{what}: no answer within {}",
                    Human(self.timeout)
                )));
            }
            Ok(Err(e)) => {
                return Err(AdapterError::transient(format!(
                    "{what}: cannot reach the proxy's admin API: {e}"
                )))
            }
            Ok(Ok(x)) => x,
        };
        if status.is_success() {
            return serde_json::from_slice(&body).map_err(|e| {
                AdapterError::permanent(format!(
                    "{what}: unexpected answer ({e}): {}",
                    excerpt(&String::from_utf8_lossy(&body), 200)
                ))
            });
        }
        let message = serde_json::from_slice::<ErrorReport>(&body)
            .map(|r| r.error)
            .unwrap_or_else(|_| excerpt(&String::from_utf8_lossy(&body), 200));
        let text = match status {
            StatusCode::UNAUTHORIZED => format!("{what}: the admin API rejected the token (401: {message}); check the router's token"),
            _ => format!("{what}: {status}: {message}"),
        };
        Err(if status.is_server_error() {
            AdapterError::transient(text)
        } else {
            AdapterError::permanent(text)
        })
    }
}
