//! The HTTP API of `cutover serve` (docs/api.md, docs/openapi.yaml).
//!
//! JSON in and out; every error is `{"error": "..."}` with a status that
//! says whose fault it is. With a token configured every route but
//! `/healthz` needs `Authorization: Bearer <token>`; `cutover serve`
//! refuses to listen beyond loopback without one. Request bodies are
//! limited to [`MAX_BODY`].

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use cutover_core::{Command, Event, Rollout};
use cutover_engine::driver::{decode, decode_event};
use cutover_engine::store::{Store, StoreError};
use cutover_engine::Clock;
use http_body::Frame;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, AUTHORIZATION, CACHE_CONTROL, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::{broadcast, mpsc, watch};

use crate::json;
use crate::metrics::Metrics;

/// The largest request body accepted.
pub const MAX_BODY: usize = 64 * 1024;

/// A plan `serve` knows, as `GET /v1/services` lists it.
#[derive(Clone, Debug, Serialize)]
pub struct PlanInfo {
    pub service: String,
    pub file: String,
    pub router: String,
    pub live: String,
    pub candidate: String,
    pub trigger: bool,
}

/// `POST /v1/rollouts`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateRequest {
    /// The service whose plan to run.
    pub service: String,
    /// Deploy this image first (the plan's `[platform]`).
    pub image: Option<String>,
    /// Or this task definition.
    pub task_definition: Option<String>,
    /// A label for people (a version, a commit).
    pub label: Option<String>,
    /// Start from the split the router has (as `run --adopt`).
    #[serde(default)]
    pub adopt: bool,
    /// Run with the colours' roles exchanged (as `run --swap-colours`).
    #[serde(default)]
    pub swap_colours: bool,
    /// The same key twice gives the same rollout, never two.
    pub idempotency_key: Option<String>,
}

/// What `Backend::create` made.
#[derive(Clone, Debug)]
pub struct Created {
    pub id: String,
    /// The key had been used: this is the rollout it made then.
    pub existed: bool,
    /// What was decided on the way (e.g. the colours were swapped).
    pub notes: Vec<String>,
}

/// An API failure, by whose fault it is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ApiError {
    BadRequest(String),
    Unauthorized,
    NotFound(String),
    Conflict(String),
    TooLarge,
    Unavailable(String),
    Internal(String),
}

impl ApiError {
    fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn message(&self) -> String {
        match self {
            ApiError::BadRequest(m)
            | ApiError::NotFound(m)
            | ApiError::Conflict(m)
            | ApiError::Unavailable(m)
            | ApiError::Internal(m) => m.clone(),
            ApiError::Unauthorized => {
                "missing or wrong bearer token (Authorization: Bearer <token>)".into()
            }
            ApiError::TooLarge => format!("request body larger than {MAX_BODY} bytes"),
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> ApiError {
        match e {
            StoreError::NotFound(id) => ApiError::NotFound(format!("no rollout `{id}`")),
            StoreError::ActiveExists { .. } | StoreError::Conflict { .. } => {
                ApiError::Conflict(e.to_string())
            }
            other => ApiError::Unavailable(other.to_string()),
        }
    }
}

/// What the API needs from the program that serves it.
#[async_trait]
pub trait Backend: Send + Sync {
    /// The plans loaded now.
    fn plans(&self) -> Vec<PlanInfo>;
    /// Creates a rollout of `request.service`'s plan, as `cutover run`
    /// would (reading the router first), for the controller to drive.
    async fn create(&self, request: CreateRequest) -> Result<Created, ApiError>;
}

pub struct Api {
    store: Arc<dyn Store>,
    backend: Arc<dyn Backend>,
    metrics: Arc<Metrics>,
    token: Option<String>,
    clock: Clock,
    /// How often a rollout's stream polls the store.
    poll: Duration,
    feed: broadcast::Sender<String>,
}

type Body = BoxBody<Bytes, Infallible>;

impl Api {
    pub fn new(
        store: Arc<dyn Store>,
        backend: Arc<dyn Backend>,
        metrics: Arc<Metrics>,
        token: Option<String>,
        clock: Clock,
        poll: Duration,
    ) -> Api {
        let (feed, _) = broadcast::channel(4096);
        Api {
            store,
            backend,
            metrics,
            token,
            clock,
            poll,
            feed,
        }
    }

    /// The engine observer's half: events of rollouts this process drives,
    /// for `GET /v1/stream`.
    pub fn publish(&self, id: &str, r: &Rollout, events: &[Event]) {
        if self.feed.receiver_count() == 0 {
            return;
        }
        for e in events {
            let _ = self.feed.send(sse("event", &json::event(id, e)));
        }
        let _ = self.feed.send(sse(
            "rollout",
            &json!({"id": id, "phase": r.phase.name(), "split_percent": r.split.percent(), "step": r.step + 1}),
        ));
    }

    /// Serves connections from `listener` until `stop` becomes true.
    pub async fn serve(self: Arc<Self>, listener: TcpListener, mut stop: watch::Receiver<bool>) {
        let mut connections = tokio::task::JoinSet::new();
        loop {
            tokio::select! {
                accepted = listener.accept() => {
                    let (stream, _) = match accepted {
                        Ok(x) => x,
                        Err(e) => {
                            tracing::warn!(error = %e, "accepting an API connection failed");
                            continue;
                        }
                    };
                    let api = self.clone();
                    let mut stop = stop.clone();
                    connections.spawn(async move {
                        let service = hyper::service::service_fn(move |req| {
                            let api = api.clone();
                            async move { Ok::<_, Infallible>(api.handle(req).await) }
                        });
                        let io = hyper_util::rt::TokioIo::new(stream);
                        let conn = hyper::server::conn::http1::Builder::new()
                            .timer(hyper_util::rt::TokioTimer::new())
                            .header_read_timeout(Duration::from_secs(30))
                            .serve_connection(io, service);
                        tokio::pin!(conn);
                        tokio::select! {
                            _ = conn.as_mut() => {}
                            _ = stop.changed() => {
                                conn.as_mut().graceful_shutdown();
                                let _ = tokio::time::timeout(Duration::from_secs(5), conn).await;
                            }
                        }
                    });
                }
                _ = stop.changed() => break,
                Some(_) = connections.join_next(), if !connections.is_empty() => {}
            }
        }
        while connections.join_next().await.is_some() {}
    }

    async fn handle(&self, req: Request<Incoming>) -> Response<Body> {
        let path = req.uri().path().to_string();
        let query = req.uri().query().unwrap_or("").to_string();
        let method = req.method().clone();
        let result = if path == "/healthz" {
            Ok(ok_json(StatusCode::OK, &json!({"ok": true})))
        } else if !self.authorised(&req) {
            Err(ApiError::Unauthorized)
        } else {
            self.route(&method, &path, &query, req).await
        };
        match result {
            Ok(r) => r,
            Err(e) => {
                if matches!(e, ApiError::Internal(_) | ApiError::Unavailable(_)) {
                    tracing::warn!(%method, %path, error = %e.message(), "API request failed");
                }
                ok_json(e.status(), &json!({"error": e.message()}))
            }
        }
    }

    fn authorised<B>(&self, req: &Request<B>) -> bool {
        let Some(token) = &self.token else {
            return true;
        };
        let given = req
            .headers()
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        constant_time_eq(given.as_bytes(), token.as_bytes())
    }

    async fn route(
        &self,
        method: &Method,
        path: &str,
        query: &str,
        req: Request<Incoming>,
    ) -> Result<Response<Body>, ApiError> {
        let parts: Vec<&str> = path.trim_end_matches('/').split('/').skip(1).collect();
        match (method, parts.as_slice()) {
            (&Method::GET, ["metrics"]) => {
                let mut r = Response::new(full(self.metrics.render()));
                r.headers_mut().insert(
                    CONTENT_TYPE,
                    HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
                );
                Ok(r)
            }
            (&Method::GET, ["v1", "services"]) => {
                Ok(ok_json(StatusCode::OK, &json!({"services": self.backend.plans()})))
            }
            (&Method::GET, ["v1", "rollouts"]) => self.list(query).await,
            (&Method::POST, ["v1", "rollouts"]) => {
                let body = read_json::<CreateRequest>(req).await?;
                if body.image.is_some() && body.task_definition.is_some() {
                    return Err(ApiError::BadRequest(
                        "give `image` or `task_definition`, not both".into(),
                    ));
                }
                let created = self.backend.create(body).await?;
                let (record, rollout) = self.load(&created.id).await?;
                let mut value = json::rollout(&record, &rollout);
                value["notes"] = json!(created.notes);
                let status = if created.existed {
                    StatusCode::OK
                } else {
                    StatusCode::CREATED
                };
                Ok(ok_json(status, &value))
            }
            (&Method::GET, ["v1", "rollouts", id]) => {
                let (record, rollout) = self.load(id).await?;
                Ok(ok_json(StatusCode::OK, &json::rollout(&record, &rollout)))
            }
            (&Method::GET, ["v1", "rollouts", id, "events"]) => self.events(id, query).await,
            (&Method::GET, ["v1", "rollouts", id, "stream"]) => {
                self.load(id).await?;
                Ok(self.rollout_stream(id.to_string(), param(query, "after")?.unwrap_or(0)))
            }
            (&Method::POST, ["v1", "rollouts", id, "commands"]) => {
                #[derive(Deserialize)]
                #[serde(deny_unknown_fields)]
                struct Body {
                    command: Command,
                }
                let body = read_json::<Body>(req).await?;
                let (record, rollout) = self.load(id).await?;
                if !record.active && body.command != Command::Retry {
                    return Err(ApiError::Conflict(format!(
                        "rollout `{id}` has ended ({}); only retry applies",
                        rollout.phase.name()
                    )));
                }
                body.command
                    .applies_to(&rollout.phase)
                    .map_err(ApiError::Conflict)?;
                let seq = self
                    .store
                    .post_command(id, body.command, self.clock.now())
                    .await?;
                Ok(ok_json(
                    StatusCode::ACCEPTED,
                    &json!({"rollout": id, "command": body.command, "seq": seq,
                            "note": "the rollout's driver applies it at its next tick"}),
                ))
            }
            (&Method::GET, ["v1", "stream"]) => Ok(self.feed_stream()),
            (_, ["metrics"] | ["v1", "services"] | ["v1", "stream"]) => Err(method_not_allowed("GET")),
            (_, ["v1", "rollouts"]) => Err(method_not_allowed("GET or POST")),
            (_, ["v1", "rollouts", _] | ["v1", "rollouts", _, "events" | "stream"]) => {
                Err(method_not_allowed("GET"))
            }
            (_, ["v1", "rollouts", _, "commands"]) => Err(method_not_allowed("POST")),
            _ => Err(ApiError::NotFound(format!(
                "no endpoint `{path}`; see docs/api.md (GET /v1/services, GET|POST /v1/rollouts, GET /v1/rollouts/ID[/events|/stream], POST /v1/rollouts/ID/commands, GET /v1/stream, GET /metrics)"
            ))),
        }
    }

    async fn load(
        &self,
        id: &str,
    ) -> Result<(cutover_engine::store::RolloutRecord, Rollout), ApiError> {
        let record = self
            .store
            .load(id)
            .await?
            .ok_or_else(|| ApiError::NotFound(format!("no rollout `{id}`")))?;
        let rollout = decode(&record).map_err(|e| ApiError::Internal(e.to_string()))?;
        Ok((record, rollout))
    }

    async fn list(&self, query: &str) -> Result<Response<Body>, ApiError> {
        let limit = param(query, "limit")?.unwrap_or(20).min(500) as usize;
        let records = match query_value(query, "service") {
            Some(service) => self.store.list_for_service(&service, limit).await?,
            None => {
                let mut active = self.store.list_active().await?;
                active.truncate(limit);
                active
            }
        };
        let mut out = Vec::with_capacity(records.len());
        for record in &records {
            let rollout = decode(record).map_err(|e| ApiError::Internal(e.to_string()))?;
            out.push(json::rollout(record, &rollout));
        }
        Ok(ok_json(StatusCode::OK, &json!({"rollouts": out})))
    }

    async fn events(&self, id: &str, query: &str) -> Result<Response<Body>, ApiError> {
        self.load(id).await?;
        let after = param(query, "after")?.unwrap_or(0);
        let limit = param(query, "limit")?.unwrap_or(100).clamp(1, 1000) as usize;
        let page = self.store.events(id, after, limit).await?;
        let mut events = Vec::with_capacity(page.len());
        for stored in &page {
            let e = decode_event(stored).map_err(ApiError::Internal)?;
            events.push(json::event(id, &e));
        }
        let next = page.last().map(|e| e.seq);
        Ok(ok_json(
            StatusCode::OK,
            &json!({"rollout": id, "events": events, "next_after": next.unwrap_or(after), "more": page.len() == limit}),
        ))
    }

    /// A rollout's events as server-sent events, from the store (so it works
    /// whichever replica drives it), until the rollout ends.
    fn rollout_stream(&self, id: String, mut after: u64) -> Response<Body> {
        let (tx, rx) = mpsc::channel::<Bytes>(64);
        let store = self.store.clone();
        let poll = self.poll;
        tokio::spawn(async move {
            let mut version = 0;
            let mut quiet = Duration::ZERO;
            loop {
                let page = match store.events(&id, after, 500).await {
                    Ok(p) => p,
                    Err(e) => {
                        let _ = tx
                            .send(sse_bytes("error", &json!({"error": e.to_string()})))
                            .await;
                        return;
                    }
                };
                for stored in &page {
                    after = stored.seq;
                    if let Ok(e) = decode_event(stored) {
                        if tx
                            .send(sse_bytes("event", &json::event(&id, &e)))
                            .await
                            .is_err()
                        {
                            return;
                        }
                    }
                }
                let Ok(Some(record)) = store.load(&id).await else {
                    return;
                };
                if record.version != version {
                    version = record.version;
                    if let Ok(r) = decode(&record) {
                        if tx
                            .send(sse_bytes("rollout", &json::rollout(&record, &r)))
                            .await
                            .is_err()
                        {
                            return;
                        }
                    }
                    if !record.active && page.is_empty() {
                        return;
                    }
                    quiet = Duration::ZERO;
                }
                quiet += poll;
                if quiet >= Duration::from_secs(15) {
                    quiet = Duration::ZERO;
                    if tx
                        .send(Bytes::from_static(b": keep-alive\n\n"))
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
                tokio::time::sleep(poll).await;
            }
        });
        stream_response(rx)
    }

    /// Every event of the rollouts this process drives, as they happen.
    fn feed_stream(&self) -> Response<Body> {
        let mut feed = self.feed.subscribe();
        let (tx, rx) = mpsc::channel::<Bytes>(256);
        tokio::spawn(async move {
            loop {
                let next = tokio::time::timeout(Duration::from_secs(15), feed.recv()).await;
                let chunk = match next {
                    Err(_) => Bytes::from_static(b": keep-alive\n\n"),
                    Ok(Ok(line)) => Bytes::from(line),
                    Ok(Err(broadcast::error::RecvError::Lagged(n))) => {
                        sse_bytes("lagged", &json!({"missed": n}))
                    }
                    Ok(Err(broadcast::error::RecvError::Closed)) => return,
                };
                if tx.send(chunk).await.is_err() {
                    return;
                }
            }
        });
        stream_response(rx)
    }
}

fn sse(kind: &str, data: &Value) -> String {
    format!("event: {kind}\ndata: {data}\n\n")
}

fn sse_bytes(kind: &str, data: &Value) -> Bytes {
    Bytes::from(sse(kind, data))
}

/// A body fed from a channel, for event streams.
struct ChannelBody(mpsc::Receiver<Bytes>);

impl http_body::Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0.poll_recv(cx).map(|b| b.map(|b| Ok(Frame::data(b))))
    }
}

fn stream_response(rx: mpsc::Receiver<Bytes>) -> Response<Body> {
    let mut r = Response::new(ChannelBody(rx).boxed());
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    r.headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    r
}

fn full(text: impl Into<Bytes>) -> Body {
    Full::new(text.into()).boxed()
}

fn ok_json(status: StatusCode, value: &Value) -> Response<Body> {
    let mut r = Response::new(full(format!("{value}\n")));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

fn method_not_allowed(allowed: &str) -> ApiError {
    ApiError::BadRequest(format!("method not allowed here; use {allowed}"))
}

async fn read_json<T: serde::de::DeserializeOwned>(req: Request<Incoming>) -> Result<T, ApiError> {
    let bytes = Limited::new(req.into_body(), MAX_BODY)
        .collect()
        .await
        .map_err(|e| {
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some()
            {
                ApiError::TooLarge
            } else {
                ApiError::BadRequest(format!("reading the request body: {e}"))
            }
        })?
        .to_bytes();
    serde_json::from_slice(&bytes).map_err(|e| {
        ApiError::BadRequest(format!(
            "request body: {e} (line {}, column {})",
            e.line(),
            e.column()
        ))
    })
}

/// A query parameter's raw value (no percent-decoding beyond `%20`-free
/// names and values, which is what the API's parameters are).
fn query_value(query: &str, name: &str) -> Option<String> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == name).then(|| v.to_string())
    })
}

/// A numeric query parameter; a bad one is a 400 naming it.
fn param(query: &str, name: &str) -> Result<Option<u64>, ApiError> {
    query_value(query, name)
        .map(|v| {
            v.parse::<u64>().map_err(|_| {
                ApiError::BadRequest(format!(
                    "query parameter `{name}` = `{v}`: expected a whole number"
                ))
            })
        })
        .transpose()
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
