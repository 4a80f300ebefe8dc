//! Helpers for the crate's integration tests: real servers on loopback.
#![allow(dead_code)]

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU16, Ordering::Relaxed};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use cutover_local::{start_demo_app, DemoAppConfig, DemoAppHandle, ProxyConfig, ProxyHandle};
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Frame, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

pub fn loopback() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

pub async fn demo(colour: &str) -> DemoAppHandle {
    start_demo_app(loopback(), DemoAppConfig::new(colour))
        .await
        .unwrap()
}

/// A proxy over the given upstreams; `top` is TOML for top-level keys.
pub async fn proxy(blue: &[&str], green: &[&str], top: &str) -> ProxyHandle {
    proxy_with(blue, green, top, "").await
}

/// Like [`proxy`], with `tail` TOML after the colour tables (e.g. `[health_probe]`).
pub async fn proxy_with(blue: &[&str], green: &[&str], top: &str, tail: &str) -> ProxyHandle {
    let list = |urls: &[&str]| {
        urls.iter()
            .map(|u| format!("{u:?}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let text = format!(
        "listen = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n{top}\n[blue]\nupstreams = [{}]\n[green]\nupstreams = [{}]\n{tail}\n",
        list(blue),
        list(green)
    );
    cutover_local::start(ProxyConfig::from_toml_str(&text, "test.toml").unwrap())
        .await
        .unwrap()
}

/// An address nothing listens on.
pub async fn dead_addr() -> SocketAddr {
    let l = TcpListener::bind(loopback()).await.unwrap();
    l.local_addr().unwrap()
}

pub type TestClient = Client<HttpConnector, Full<Bytes>>;

pub fn client() -> TestClient {
    Client::builder(TokioExecutor::new()).build_http()
}

pub struct Answer {
    pub status: StatusCode,
    pub headers: hyper::HeaderMap,
    pub body: String,
}

impl Answer {
    pub fn colour(&self) -> &str {
        self.headers
            .get("x-cutover-colour")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

pub async fn get(client: &TestClient, url: &str, headers: &[(&str, &str)]) -> Answer {
    let mut req = Request::get(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = client
        .request(req.body(Full::default()).unwrap())
        .await
        .unwrap();
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    Answer {
        status: parts.status,
        headers: parts.headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    }
}

/// Waits (at most 10 s) until `cond` holds, checking every 10 ms.
pub async fn eventually<F, Fut>(what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !cond().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Serves `handler` on loopback; returns the address.
pub async fn serve_fn<F, Fut>(handler: F) -> SocketAddr
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<EchoBody>> + Send + 'static,
{
    let listener = TcpListener::bind(loopback()).await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let handler = handler.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req| {
                    let fut = handler(req);
                    async move { Ok::<_, Infallible>(fut.await) }
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    addr
}

pub type EchoBody = http_body_util::Either<Incoming, Full<Bytes>>;

/// An upstream that answers `POST /body` by streaming the request body
/// back, and anything else with the request's headers as JSON (and a few
/// hop-by-hop response headers that the proxy must remove).
pub async fn echo_upstream() -> SocketAddr {
    serve_fn(|req: Request<Incoming>| async move {
        if req.uri().path() == "/body" {
            return Response::new(http_body_util::Either::Left(req.into_body()));
        }
        let mut headers: HashMap<String, Vec<String>> = HashMap::new();
        for (k, v) in req.headers() {
            headers
                .entry(k.as_str().to_string())
                .or_default()
                .push(v.to_str().unwrap_or("?").to_string());
        }
        headers.insert(":path".into(), vec![req.uri().to_string()]);
        let body = serde_json::to_vec(&headers).unwrap();
        Response::builder()
            .header("connection", "x-resp-secret")
            .header("x-resp-secret", "1")
            .header("keep-alive", "timeout=5")
            .header("proxy-foo", "1")
            .header("x-resp-keep", "yes")
            .body(http_body_util::Either::Right(Full::new(Bytes::from(body))))
            .unwrap()
    })
    .await
}

/// An upstream whose `/healthz` answers with a settable status.
pub async fn switchable_upstream(name: &'static str) -> (SocketAddr, Arc<AtomicU16>) {
    let status = Arc::new(AtomicU16::new(200));
    let s = status.clone();
    let addr = serve_fn(move |req: Request<Incoming>| {
        let s = s.clone();
        async move {
            let code = if req.uri().path() == "/healthz" {
                s.load(Relaxed)
            } else {
                200
            };
            Response::builder()
                .status(code)
                .header("x-name", name)
                .body(http_body_util::Either::Right(Full::new(Bytes::from(name))))
                .unwrap()
        }
    })
    .await;
    (addr, status)
}

/// Sends raw bytes and reads one response (with a Content-Length body).
pub async fn raw_request(addr: SocketAddr, request: &str) -> (u16, Vec<(String, String)>, String) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(request.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = s.read(&mut chunk).await.unwrap();
        assert!(
            n > 0,
            "connection closed early: {}",
            String::from_utf8_lossy(&buf)
        );
        buf.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&buf).into_owned();
        let Some(end) = text.find("\r\n\r\n") else {
            continue;
        };
        let mut lines = text[..end].split("\r\n");
        let status: u16 = lines
            .next()
            .unwrap()
            .split(' ')
            .nth(1)
            .unwrap()
            .parse()
            .unwrap();
        let headers: Vec<(String, String)> = lines
            .map(|l| {
                let (k, v) = l.split_once(':').unwrap();
                (k.trim().to_ascii_lowercase(), v.trim().to_string())
            })
            .collect();
        let len: usize = headers
            .iter()
            .find(|(k, _)| k == "content-length")
            .map_or(0, |(_, v)| v.parse().unwrap());
        if buf.len() >= end + 4 + len {
            return (
                status,
                headers,
                String::from_utf8_lossy(&buf[end + 4..end + 4 + len]).into_owned(),
            );
        }
    }
}

/// A request body fed through a channel, to prove streaming.
pub struct ChannelBody(pub tokio::sync::mpsc::Receiver<Bytes>);

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0.poll_recv(cx).map(|o| o.map(|b| Ok(Frame::data(b))))
    }
}
