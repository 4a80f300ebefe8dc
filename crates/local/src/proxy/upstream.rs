//! Keep-alive connections to the upstreams: a small HTTP/1.1 client on
//! hyper's connection API, made for the data plane.
//!
//! Each upstream has a stack of idle connections (most recently used on
//! top, so the warmest socket is reused). A request pops one, or dials a
//! new one when none is idle; the connection goes back on the stack when
//! the response body has been read to its end ([`PooledBody`]). A
//! connection still busy then (its request body still uploading) goes back
//! once it is ready, from a small task. Closed connections are dropped when
//! met; idle ones older than [`IDLE_TIMEOUT`] too.
//!
//! A request that a reused connection refused before sending a byte (the
//! upstream closed it while idle) is retried on another connection, as
//! hyper-util's client does. Anything else is the caller's error (502).
//!
//! Compared with hyper-util's pooling client this does not hash a pool key,
//! spawn a task per request to wait for the connection to become idle, or
//! race a connect against the checkout; under load through the proxy that
//! saves ~1.5 µs of CPU per request (see `docs/benchmarks.md`).

use std::fmt;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::client::conn::http1::{self, SendRequest};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::config::UpstreamUrl;

/// Idle connections unused for longer than this are closed when next met.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// At most this many idle connections are kept per upstream.
const MAX_IDLE: usize = 1024;

struct Idle {
    sender: SendRequest<Incoming>,
    since: Instant,
}

/// One upstream's idle connections.
pub struct Connections {
    host: String,
    port: u16,
    connect_timeout: Duration,
    idle: Mutex<Vec<Idle>>,
}

/// Why a request got no response head from the upstream.
#[derive(Debug)]
pub enum UpstreamError {
    /// No connection could be made.
    Connect(std::io::Error),
    /// The connection failed while sending or receiving.
    Request(hyper::Error),
}

impl fmt::Display for UpstreamError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UpstreamError::Connect(e) => write!(f, "tcp connect error: {e}"),
            UpstreamError::Request(e) => fmt::Display::fmt(e, f),
        }
    }
}

impl std::error::Error for UpstreamError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            UpstreamError::Connect(_) => None,
            UpstreamError::Request(e) => e.source(),
        }
    }
}

impl UpstreamError {
    pub fn is_connect(&self) -> bool {
        matches!(self, UpstreamError::Connect(_))
    }
}

impl Connections {
    pub fn new(url: &UpstreamUrl, connect_timeout: Duration) -> Connections {
        let authority = url.authority();
        let host = authority.host();
        let host = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        Connections {
            host: host.to_string(),
            port: authority.port_u16().unwrap_or(80),
            connect_timeout,
            idle: Mutex::new(Vec::new()),
        }
    }

    /// Sends `req` (origin-form URI, with a Host header) and returns the
    /// response head; its body hands the connection back when read.
    pub async fn request(
        self: &Arc<Self>,
        mut req: Request<Incoming>,
    ) -> Result<Response<PooledBody>, UpstreamError> {
        loop {
            let (mut sender, reused) = match self.checkout() {
                Some(sender) => (sender, true),
                None => (self.connect().await?, false),
            };
            match sender.try_send_request(req).await {
                Ok(response) => {
                    let (head, body) = response.into_parts();
                    let mut body = PooledBody {
                        body,
                        back: Some((sender, self.clone())),
                    };
                    if body.body.is_end_stream() {
                        body.release();
                    }
                    return Ok(Response::from_parts(head, body));
                }
                Err(mut e) => match e.take_message() {
                    // Refused before sending: the upstream closed the idle
                    // connection. Try another one (a fresh one at worst).
                    Some(back) if reused => req = back,
                    _ => return Err(UpstreamError::Request(e.into_error())),
                },
            }
        }
    }

    /// The most recently used idle connection that is still open.
    fn checkout(&self) -> Option<SendRequest<Incoming>> {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        while let Some(c) = idle.pop() {
            if c.sender.is_ready() && c.since.elapsed() < IDLE_TIMEOUT {
                return Some(c.sender);
            }
        }
        None
    }

    fn checkin(&self, sender: SendRequest<Incoming>) {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        if idle.len() < MAX_IDLE {
            idle.push(Idle {
                sender,
                since: Instant::now(),
            });
        }
    }

    async fn connect(&self) -> Result<SendRequest<Incoming>, UpstreamError> {
        let stream = tokio::time::timeout(self.connect_timeout, self.dial())
            .await
            .map_err(|_| {
                UpstreamError::Connect(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!(
                        "no connection within {}",
                        cutover_core::time::Human(self.connect_timeout)
                    ),
                ))
            })?
            .map_err(UpstreamError::Connect)?;
        let _ = stream.set_nodelay(true);
        let (sender, conn) = http1::Builder::new()
            .handshake(TokioIo::new(stream))
            .await
            .map_err(UpstreamError::Request)?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(sender)
    }

    /// Connects to the first address of the host that accepts.
    async fn dial(&self) -> std::io::Result<TcpStream> {
        if let Ok(ip) = self.host.parse() {
            return TcpStream::connect(SocketAddr::new(ip, self.port)).await;
        }
        let mut last = None;
        for addr in tokio::net::lookup_host((self.host.as_str(), self.port)).await? {
            match TcpStream::connect(addr).await {
                Ok(s) => return Ok(s),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("`{}` resolves to no address", self.host),
            )
        }))
    }
}

/// An upstream's response body, streamed; once read to its end, its
/// connection goes back to the idle stack. Dropped early, the connection
/// is closed (hyper cannot reuse a connection with a body half read).
pub struct PooledBody {
    body: Incoming,
    back: Option<(SendRequest<Incoming>, Arc<Connections>)>,
}

impl PooledBody {
    fn release(&mut self) {
        let Some((mut sender, upstream)) = self.back.take() else {
            return;
        };
        if sender.is_ready() {
            upstream.checkin(sender);
        } else if !sender.is_closed() {
            // Still writing the request body, or not yet past the response:
            // back once the connection says it is ready.
            tokio::spawn(async move {
                if sender.ready().await.is_ok() {
                    upstream.checkin(sender);
                }
            });
        }
    }
}

impl Body for PooledBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.body).poll_frame(cx);
        match &polled {
            Poll::Ready(None) => this.release(),
            Poll::Ready(Some(Ok(_))) if this.body.is_end_stream() => this.release(),
            Poll::Ready(Some(Err(_))) => this.back = None,
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
