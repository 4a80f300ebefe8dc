//! The data plane's connections: one task per client connection reads a
//! request head, picks the colour and an upstream, sends the request over
//! a pooled keep-alive connection, and streams the response back; then the
//! next request.
//!
//! Everything for one request happens in that one task, with buffers that
//! live as long as the connection: no channel between tasks, no
//! allocation on the common path, one read and one write on each socket
//! for a small exchange (the upstream's response head and body go out in
//! one write). Timers are armed lazily: one per connection, moved only
//! when a deadline comes closer than the armed one.
//!
//! What it does per request (see `http1.rs` for the message rules):
//! - hop-by-hop fields are dropped both ways; `X-Forwarded-For` (appended),
//!   `-Proto` and `-Host` are set; `Host` is added when the client sent
//!   none; absolute-form targets become origin-form;
//! - request bodies (by length or chunked) are streamed to the upstream
//!   while its response streams back, so neither side is buffered whole;
//! - `Expect: 100-continue` is answered here and not forwarded;
//! - chunked responses pass through as they are to HTTP/1.1 clients and
//!   are decoded for HTTP/1.0 ones (then the connection closes);
//! - the upstream's response head must come within `request_timeout`
//!   (else 504), and each read of a body within it again (else the
//!   connections close); a connection refused or failing before a response
//!   is a 502;
//! - a request without a body and with an idempotent method is sent again
//!   on a new connection when a reused one turns out closed before
//!   answering (the upstream closed it while idle);
//! - bad requests get 400 (malformed or ambiguous framing), 431 (head too
//!   large), 501 (a transfer coding other than chunked), 405 (`CONNECT`),
//!   and the connection closes.
//!
//! Not supported: protocol upgrades (WebSocket; `Upgrade` is hop-by-hop
//! and removed), TLS, HTTP/2.

use std::fmt;
use std::future::Future;
use std::mem::MaybeUninit;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use cutover_core::time::Human;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};

use super::balancer::Upstream;
use super::http1::{self, Chunks, Framing, RequestError, MAX_HEAD, MAX_HEADERS};
use super::upstream::UpstreamPool;
use super::{Service, Shared};
use crate::api::Colour;
use crate::server::{Phase, Signal};

/// One event loop's upstream connection pools, by upstream slot.
pub(crate) type Upstreams = Arc<[UpstreamPool]>;

/// How long a client may take to send a request head, and how long an idle
/// keep-alive connection stays open.
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(30);
/// Reads ask for at least this much room.
const READ_ROOM: usize = 8 * 1024;
/// Closing a connection, how long and how much of what the client still
/// sends is read and dropped (see [`linger`]).
const LINGER_TIME: Duration = Duration::from_secs(2);
const LINGER_BYTES: usize = 1024 * 1024;

/// Serves a client connection in a task of its own until it closes or the
/// shutdown says stop: at `Draining` an idle connection closes at once and
/// a busy one after its response; at `Abort` whatever is left is dropped.
pub(crate) fn spawn(
    stream: TcpStream,
    peer: SocketAddr,
    shared: Arc<Shared>,
    upstreams: Upstreams,
    signal: &Signal,
) {
    let _ = stream.set_nodelay(true);
    let mut signal = signal.clone();
    tokio::spawn(async move {
        let flags = Flags::default();
        let serving = serve(stream, peer, &shared, &upstreams, &flags);
        tokio::pin!(serving);
        tokio::select! {
            biased;
            () = serving.as_mut() => return,
            () = signal.reached(Phase::Draining) => {}
        }
        flags.draining.store(true, Relaxed);
        if flags.idle.load(Relaxed) {
            return;
        }
        tokio::select! {
            () = serving.as_mut() => {}
            () = signal.reached(Phase::Abort) => {}
        }
    });
}

/// What the connection task and its shutdown watcher share.
#[derive(Default)]
struct Flags {
    /// Waiting for a request head (nothing in flight).
    idle: AtomicBool,
    /// Shutting down: answer what is in flight with `Connection: close`.
    draining: AtomicBool,
}

/// Bytes read and not yet used: `data[pos..]`.
struct Buf {
    data: Vec<u8>,
    pos: usize,
}

impl Buf {
    fn new() -> Buf {
        Buf {
            data: Vec::with_capacity(READ_ROOM),
            pos: 0,
        }
    }

    fn pending(&self) -> &[u8] {
        &self.data[self.pos..]
    }

    fn consume(&mut self, n: usize) {
        self.pos += n;
        if self.pos >= self.data.len() {
            self.data.clear();
            self.pos = 0;
        }
    }

    /// Reads more; `Ok(0)` at end of stream.
    async fn fill<R: AsyncRead + Unpin>(&mut self, from: &mut R) -> std::io::Result<usize> {
        if self.data.capacity() - self.data.len() < READ_ROOM / 2 {
            if self.pos > 0 {
                self.data.drain(..self.pos);
                self.pos = 0;
            }
            self.data.reserve(READ_ROOM);
        }
        from.read_buf(&mut self.data).await
    }
}

/// A connection's one timer. Deadlines that move later (every request
/// moves them) cost nothing until the armed timer fires early, when it is
/// re-armed once; only a nearer deadline re-arms it at once.
struct Deadline {
    sleep: Pin<Box<Sleep>>,
    due: Instant,
}

impl Deadline {
    fn new(due: Instant) -> Deadline {
        Deadline {
            sleep: Box::pin(tokio::time::sleep_until(due)),
            due,
        }
    }

    fn set(&mut self, due: Instant) {
        self.due = due;
        if due < self.sleep.deadline() {
            self.sleep.as_mut().reset(due);
        }
    }

    /// `fut`'s output, or `None` when the deadline passes first.
    async fn run<F: Future>(&mut self, fut: F) -> Option<F::Output> {
        tokio::pin!(fut);
        loop {
            tokio::select! {
                biased;
                out = &mut fut => return Some(out),
                () = &mut self.sleep => {
                    if Instant::now() >= self.due {
                        return None;
                    }
                    let due = self.due;
                    self.sleep.as_mut().reset(due);
                }
            }
        }
    }
}

/// One request, decided from its head.
struct Exchange<'s> {
    service: &'s Service,
    colour: Colour,
    upstream: &'s Upstream,
    set_cookie: bool,
    framing: Framing,
    head_request: bool,
    /// Safe to send again (idempotent, and no body).
    retryable: bool,
    client_minor: u8,
    client_persistent: bool,
    expect_continue: bool,
}

/// A request that is answered here, not forwarded.
enum Refused {
    Request(RequestError),
    Connect,
    /// No service has this host (and none takes every host).
    NoService(String),
}

/// Serves one client connection's requests in turn.
async fn serve(
    mut client: TcpStream,
    peer: SocketAddr,
    shared: &Shared,
    upstreams: &[UpstreamPool],
    flags: &Flags,
) {
    let peer_ip = peer.ip().to_canonical().to_string();
    let mut inbuf = Buf::new();
    let mut ubuf = Buf::new();
    let mut out: Vec<u8> = Vec::with_capacity(READ_ROOM);
    let mut up_head: Vec<u8> = Vec::with_capacity(2048);
    let mut now = Instant::now();
    let mut deadline = Deadline::new(now + HEAD_TIMEOUT);
    loop {
        flags.idle.store(true, Relaxed);
        if flags.draining.load(Relaxed) {
            return;
        }
        deadline.set(now + HEAD_TIMEOUT);
        // The next request head: parsed from what is buffered, else read more.
        let decided = loop {
            if !inbuf.pending().is_empty() {
                let mut headers = [const { MaybeUninit::uninit() }; MAX_HEADERS];
                let mut req = httparse::Request::new(&mut []);
                match req.parse_with_uninit_headers(inbuf.pending(), &mut headers) {
                    Ok(httparse::Status::Complete(n)) if n > MAX_HEAD => {
                        break Err(Refused::Request(RequestError::TooLarge));
                    }
                    Ok(httparse::Status::Complete(n)) => {
                        let decided = decide(shared, peer_ip.as_bytes(), &req, &mut up_head);
                        inbuf.consume(n);
                        break decided;
                    }
                    Ok(httparse::Status::Partial) if inbuf.pending().len() >= MAX_HEAD => {
                        break Err(Refused::Request(RequestError::TooLarge));
                    }
                    Ok(httparse::Status::Partial) => {}
                    Err(httparse::Error::TooManyHeaders) => {
                        break Err(Refused::Request(RequestError::TooLarge));
                    }
                    Err(e) => break Err(Refused::Request(RequestError::Malformed(e.to_string()))),
                }
            }
            match deadline.run(inbuf.fill(&mut client)).await {
                Some(Ok(n)) if n > 0 => {}
                // Closed, failed, or too slow: nothing to answer.
                _ => return,
            }
        };
        flags.idle.store(false, Relaxed);
        let x = match decided {
            Ok(x) => x,
            Err(refused) => {
                out.clear();
                let (status, reason, body) = match refused {
                    Refused::Connect => (
                        405,
                        "Method Not Allowed",
                        "cutover: CONNECT is not supported\n".to_string(),
                    ),
                    Refused::NoService(host) => (
                        404,
                        "Not Found",
                        format!("cutover: no service here for host `{host}`\n"),
                    ),
                    Refused::Request(e) => {
                        let (status, reason) = e.status();
                        (status, reason, format!("cutover: {e}\n"))
                    }
                };
                write_error(&mut out, status, reason, &body, None, false);
                if let Some(Ok(())) = deadline.run(client.write_all(&out)).await {
                    flags.idle.store(true, Relaxed);
                    linger(&mut client).await;
                }
                return;
            }
        };
        let start = Instant::now();
        let after = exchange(
            &mut client,
            &x,
            Bufs {
                inbuf: &mut inbuf,
                ubuf: &mut ubuf,
                out: &mut out,
                up_head: &up_head,
            },
            shared,
            &upstreams[x.upstream.slot],
            &mut deadline,
            start,
            flags,
        )
        .await;
        now = Instant::now();
        match after {
            After::KeepOpen => {}
            After::Close => {
                // Nothing in flight: a shutdown need not wait for this.
                flags.idle.store(true, Relaxed);
                linger(&mut client).await;
                return;
            }
            After::Abort => {
                // A reset, not a close: a body delimited by the close (or
                // a decoded chunked one) must not look complete when cut.
                let _ = client.set_zero_linger();
                return;
            }
        }
    }
}

/// What becomes of the client connection after an exchange.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum After {
    KeepOpen,
    /// Close cleanly (after the response, or a refusal).
    Close,
    /// The response was cut short: reset the connection.
    Abort,
}

impl After {
    fn keep_if(keep: bool) -> After {
        if keep {
            After::KeepOpen
        } else {
            After::Close
        }
    }
}

/// Closes a connection the client may still be sending on: our side
/// first, then what still comes is read and dropped for a while. Closing
/// with unread bytes would reset the connection, and the client could lose
/// the response it was sent.
async fn linger(client: &mut TcpStream) {
    if client.shutdown().await.is_err() {
        return;
    }
    let mut sink = [0u8; 4096];
    let mut left = LINGER_BYTES;
    let _ = tokio::time::timeout(LINGER_TIME, async {
        while let Ok(n @ 1..) = client.read(&mut sink).await {
            left = left.saturating_sub(n);
            if left == 0 {
                break;
            }
        }
    })
    .await;
}

/// Reads a request head: the colour, the upstream, and the head to send it
/// (into `up_head`).
fn decide<'s>(
    shared: &'s Shared,
    peer_ip: &[u8],
    req: &httparse::Request<'_, '_>,
    up_head: &mut Vec<u8>,
) -> Result<Exchange<'s>, Refused> {
    let method = req.method.unwrap_or("GET");
    if method == "CONNECT" {
        return Err(Refused::Connect);
    }
    let target = req.path.unwrap_or("/");
    let minor = req.version.unwrap_or(1);
    let fields =
        http1::fields(req.headers).map_err(|e| Refused::Request(RequestError::Malformed(e)))?;
    let framing = http1::request_framing(&fields).map_err(Refused::Request)?;
    let malformed = |why: &str| Refused::Request(RequestError::Malformed(why.into()));
    if fields.hosts > 1 {
        return Err(malformed("more than one Host field"));
    }
    // An absolute-form target names the host; a Host field is then ignored.
    let absolute_host = http1::target_authority(target);
    if minor >= 1 && fields.host.is_none() && absolute_host.is_none() {
        return Err(malformed("an HTTP/1.1 request without Host"));
    }
    let host = absolute_host.map(str::as_bytes).or(fields.host);
    if let Some(h) = host {
        if !http1::valid_host(h) {
            return Err(Refused::Request(RequestError::Malformed(format!(
                "Host `{}` is not a valid host[:port]",
                http1::lossy(h)
            ))));
        }
    }
    if let Some(h) = req
        .headers
        .iter()
        .find(|h| http1::is_disguised_framing_field(h.name.as_bytes()))
    {
        return Err(Refused::Request(RequestError::Malformed(format!(
            "a `{}` field: framing fields are spelt with `-`",
            h.name
        ))));
    }
    let service = shared.route(host).ok_or_else(|| {
        Refused::NoService(
            host.map(|h| http1::lossy(h).into_owned())
                .unwrap_or_default(),
        )
    })?;
    let (colour, set_cookie) = choose_colour(service, req.headers);
    let upstream = service.pools[colour.index()].pick();

    up_head.clear();
    up_head.extend_from_slice(method.as_bytes());
    up_head.push(b' ');
    let target = http1::origin_form(target);
    if !target.starts_with('/') && target != "*" {
        up_head.push(b'/');
    }
    up_head.extend_from_slice(target.as_bytes());
    up_head.extend_from_slice(b" HTTP/1.1\r\n");
    let mut forwarded_for = false;
    for h in req.headers.iter() {
        match request_field(h.name) {
            RequestField::Forward if !http1::is_hop_by_hop(h.name, &fields.named) => {
                http1::push_field(up_head, h.name.as_bytes(), h.value);
            }
            RequestField::Host if absolute_host.is_none() => {
                http1::push_field(up_head, h.name.as_bytes(), h.value);
            }
            RequestField::ForwardedFor => forwarded_for = true,
            _ => {}
        }
    }
    match host {
        Some(host) if absolute_host.is_some() => http1::push_field(up_head, b"Host", host),
        Some(_) => {}
        None => http1::push_field(up_head, b"Host", upstream.host.as_bytes()),
    }
    up_head.extend_from_slice(b"X-Forwarded-For: ");
    if forwarded_for {
        for h in req.headers.iter() {
            if matches!(request_field(h.name), RequestField::ForwardedFor) {
                up_head.extend_from_slice(h.value.trim_ascii());
                up_head.extend_from_slice(b", ");
            }
        }
    }
    up_head.extend_from_slice(peer_ip);
    up_head.extend_from_slice(b"\r\nX-Forwarded-Proto: http\r\n");
    if let Some(host) = host {
        http1::push_field(up_head, b"X-Forwarded-Host", host);
    }
    if framing == Framing::Chunked {
        up_head.extend_from_slice(b"Transfer-Encoding: chunked\r\n");
    }
    up_head.extend_from_slice(b"\r\n");

    let idempotent = matches!(
        method,
        "GET" | "HEAD" | "OPTIONS" | "TRACE" | "PUT" | "DELETE"
    );
    Ok(Exchange {
        service,
        colour,
        upstream,
        set_cookie,
        framing,
        head_request: method == "HEAD",
        retryable: idempotent && framing == Framing::None,
        client_minor: minor,
        // HTTP/1.0 with Transfer-Encoding: framing may be off; close after
        // (RFC 9112 §6.1).
        client_persistent: http1::persistent(minor, &fields)
            && !(minor == 0 && fields.transfer_encoding),
        expect_continue: fields.expect_continue,
    })
}

enum RequestField {
    Forward,
    /// Forwarded, unless the target is in absolute form.
    Host,
    /// Merged into one `X-Forwarded-For` with the peer's address.
    ForwardedFor,
    /// Set by the proxy (`X-Forwarded-Proto`, `-Host`) or answered by it
    /// (`Expect`).
    Replaced,
}

#[inline]
fn request_field(name: &str) -> RequestField {
    let n = name.as_bytes();
    match n.len() {
        4 if n.eq_ignore_ascii_case(b"host") => RequestField::Host,
        6 if n.eq_ignore_ascii_case(b"expect") => RequestField::Replaced,
        15 if n.eq_ignore_ascii_case(b"x-forwarded-for") => RequestField::ForwardedFor,
        16 if n.eq_ignore_ascii_case(b"x-forwarded-host") => RequestField::Replaced,
        17 if n.eq_ignore_ascii_case(b"x-forwarded-proto") => RequestField::Replaced,
        _ => RequestField::Forward,
    }
}

/// The colour for a request, and whether to (re)set the sticky cookie.
fn choose_colour(service: &Service, headers: &[httparse::Header<'_>]) -> (Colour, bool) {
    let Some(cookie) = &service.config.sticky_cookie else {
        return (service.split.next(), false);
    };
    let named = headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("cookie"))
        .find_map(|h| cookie_colour(h.value, cookie.as_bytes()));
    match named {
        Some(colour) => {
            let split = service.split.get();
            let share = match colour {
                Colour::Green => split.basis_points(),
                Colour::Blue => split.blue_basis_points(),
            };
            if share == 0 {
                (colour.other(), true)
            } else {
                (colour, false)
            }
        }
        None => (service.split.next(), true),
    }
}

/// The colour a `Cookie` field value names under `name`, if valid.
fn cookie_colour(value: &[u8], name: &[u8]) -> Option<Colour> {
    value.split(|&b| b == b';').find_map(|pair| {
        let eq = pair.iter().position(|&b| b == b'=')?;
        if pair[..eq].trim_ascii() != name {
            return None;
        }
        let v = pair[eq + 1..].trim_ascii();
        let v = v
            .strip_prefix(b"\"")
            .and_then(|v| v.strip_suffix(b"\""))
            .unwrap_or(v);
        match v {
            b"blue" => Some(Colour::Blue),
            b"green" => Some(Colour::Green),
            _ => None,
        }
    })
}

/// A connection's buffers, lent to one exchange.
struct Bufs<'a> {
    /// From the client; holds the request body's start and any pipelined requests.
    inbuf: &'a mut Buf,
    /// From the upstream.
    ubuf: &'a mut Buf,
    /// To the client.
    out: &'a mut Vec<u8>,
    /// The request head for the upstream.
    up_head: &'a [u8],
}

/// Why the upstream gave no (complete) response head.
#[derive(Debug)]
enum NoResponse {
    /// `after_bytes` if some of a response (an interim one, say) came.
    Io {
        error: std::io::Error,
        after_bytes: bool,
    },
    /// The connection closed; `after_bytes` if some of a response came.
    Closed {
        after_bytes: bool,
    },
    Malformed(String),
}

impl NoResponse {
    /// Nothing came back: a reused connection the upstream had closed.
    fn before_any_byte(&self) -> bool {
        match self {
            NoResponse::Closed { after_bytes } => !after_bytes,
            NoResponse::Io { error, after_bytes } => {
                !after_bytes
                    && matches!(
                        error.kind(),
                        std::io::ErrorKind::ConnectionReset
                            | std::io::ErrorKind::BrokenPipe
                            | std::io::ErrorKind::ConnectionAborted
                    )
            }
            NoResponse::Malformed(_) => false,
        }
    }
}

impl fmt::Display for NoResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NoResponse::Io { error, .. } => write!(f, "{error}"),
            NoResponse::Closed { after_bytes: false } => {
                write!(f, "connection closed before a response")
            }
            NoResponse::Closed { after_bytes: true } => {
                write!(f, "connection closed within the response head")
            }
            NoResponse::Malformed(why) => write!(f, "invalid response: {why}"),
        }
    }
}

/// What a response head said, once its head for the client is in `out`.
struct ResponseHead {
    status: u16,
    framing: Framing,
    /// Decode chunked for an HTTP/1.0 client.
    decode: bool,
    upstream_persistent: bool,
    client_keep: bool,
}

/// How relaying a response ended.
enum Relayed {
    /// To its end; whether the upstream connection ended cleanly.
    Complete { clean: bool },
    /// Cut short; both connections are closed.
    Broken,
}

/// The outcome of sending a request and relaying its response.
enum Outcome {
    Relayed(ResponseHead, Relayed),
    NoResponse(NoResponse),
    TimedOut,
    /// The client stopped sending its request body, or sent a broken one
    /// after the response head went out.
    ClientGone,
    /// The request body's framing is broken (e.g. a trailer carrying
    /// `Content-Length`) and no response has gone out: answered with 400.
    BadBody(&'static str),
}

/// Sends one request upstream and relays the answer; whether the client
/// connection may carry another request.
#[allow(clippy::too_many_arguments)]
async fn exchange(
    client: &mut TcpStream,
    x: &Exchange<'_>,
    bufs: Bufs<'_>,
    shared: &Shared,
    pool: &UpstreamPool,
    deadline: &mut Deadline,
    start: Instant,
    flags: &Flags,
) -> After {
    let Bufs {
        inbuf,
        ubuf,
        out,
        up_head,
    } = bufs;
    let request_timeout = shared.config.request_timeout;
    let has_body = x.framing != Framing::None;
    deadline.set(start + request_timeout);
    // An HTTP/1.0 client knows no interim responses (RFC 9110 §10.1.1).
    if x.expect_continue && x.client_minor >= 1 && has_body && inbuf.pending().is_empty() {
        let sent = deadline
            .run(client.write_all(b"HTTP/1.1 100 Continue\r\n\r\n"))
            .await;
        if !matches!(sent, Some(Ok(()))) {
            return After::Close;
        }
    }
    loop {
        deadline.set(start + request_timeout);
        let (mut upstream, reused) = match pool.checkout(start) {
            Some(s) => (s, true),
            None => match pool.connect().await {
                Ok(s) => (s, false),
                Err(e) => {
                    // The request body, if any, was not read: close.
                    let answer = Answer {
                        status: 502,
                        why: format!("unreachable: tcp connect error: {e}"),
                        body_consumed: !has_body,
                    };
                    return answer_error(client, out, x, shared, deadline, start, answer).await;
                }
            },
        };
        ubuf.consume(ubuf.pending().len());
        let client_keep_wanted = x.client_persistent && !flags.draining.load(Relaxed);
        let (outcome, upload_complete) = if has_body {
            duplex(
                client,
                &mut upstream,
                x,
                inbuf,
                ubuf,
                out,
                up_head,
                deadline,
                client_keep_wanted,
                shared,
                start,
            )
            .await
        } else {
            let (mut ur, mut uw) = upstream.split();
            let keep = AtomicBool::new(client_keep_wanted);
            let outcome = match deadline.run(uw.write_all(up_head)).await {
                None => Outcome::TimedOut,
                Some(Err(error)) => Outcome::NoResponse(NoResponse::Io {
                    error,
                    after_bytes: false,
                }),
                Some(Ok(())) => {
                    let to = (&mut ur, &mut *ubuf, &mut *client, &mut *out);
                    let head_out = AtomicBool::new(false);
                    respond(to, x, shared, &keep, &head_out, deadline, start).await
                }
            };
            (outcome, true)
        };
        return match outcome {
            Outcome::Relayed(head, Relayed::Complete { clean }) => {
                if clean && upload_complete && head.upstream_persistent {
                    pool.checkin(upstream, Instant::now());
                }
                After::keep_if(head.client_keep && upload_complete)
            }
            // Cut short: a client reading by length or chunks sees it from
            // the framing; one reading to the close must see a reset.
            Outcome::Relayed(head, Relayed::Broken)
                if head.framing == Framing::UntilClose || head.decode =>
            {
                After::Abort
            }
            Outcome::Relayed(_, Relayed::Broken) => After::Close,
            Outcome::ClientGone => After::Close,
            Outcome::BadBody(why) => {
                out.clear();
                let body = format!("cutover: bad request body: {why}\n");
                write_error(out, 400, "Bad Request", &body, None, false);
                deadline.set(Instant::now() + shared.config.request_timeout);
                let _ = deadline.run(client.write_all(out)).await;
                After::Close
            }
            Outcome::NoResponse(e) if reused && x.retryable && e.before_any_byte() => {
                // The upstream had closed this idle connection: another one.
                continue;
            }
            Outcome::NoResponse(e) => {
                let answer = Answer {
                    status: 502,
                    why: format!("failed: {e}"),
                    body_consumed: upload_complete,
                };
                answer_error(client, out, x, shared, deadline, start, answer).await
            }
            Outcome::TimedOut => {
                let answer = Answer {
                    status: 504,
                    why: format!("sent no response within {}", Human(request_timeout)),
                    body_consumed: upload_complete,
                };
                answer_error(client, out, x, shared, deadline, start, answer).await
            }
        };
    }
}

/// A request with a body: the upload and the response run side by side,
/// so an upstream that answers while the body still comes (an echo, a
/// 413) is relayed as it answers. Returns the outcome and whether the
/// request body was sent whole.
#[allow(clippy::too_many_arguments)]
async fn duplex(
    client: &mut TcpStream,
    upstream: &mut TcpStream,
    x: &Exchange<'_>,
    inbuf: &mut Buf,
    ubuf: &mut Buf,
    out: &mut Vec<u8>,
    up_head: &[u8],
    deadline: &mut Deadline,
    client_keep_wanted: bool,
    shared: &Shared,
    start: Instant,
) -> (Outcome, bool) {
    let (mut cr, mut cw) = client.split();
    let (mut ur, mut uw) = upstream.split();
    // The client connection carries on only if the whole request body has
    // been read by the time the response head goes out (else that head
    // says `Connection: close`).
    let keep = AtomicBool::new(false);
    let upload = async {
        uw.write_all(up_head).await.map_err(|_| Upload::Upstream)?;
        upload_body(&mut cr, inbuf, &mut uw, x.framing).await?;
        keep.store(client_keep_wanted, Relaxed);
        Ok(())
    };
    let head_out = AtomicBool::new(false);
    let response = respond(
        (&mut ur, ubuf, &mut cw, out),
        x,
        shared,
        &keep,
        &head_out,
        deadline,
        start,
    );
    tokio::pin!(upload, response);
    let mut uploaded = None;
    loop {
        tokio::select! {
            biased;
            outcome = &mut response => return (outcome, uploaded == Some(true)),
            result = &mut upload, if uploaded.is_none() => match result {
                Ok(()) => uploaded = Some(true),
                // The client stopped sending or sent a broken body: give up.
                Err(Upload::Client) => return (Outcome::ClientGone, false),
                // Refused, with a 400 unless the response has begun.
                Err(Upload::Malformed(why)) if !head_out.load(Relaxed) => {
                    return (Outcome::BadBody(why), false)
                }
                Err(Upload::Malformed(_)) => return (Outcome::ClientGone, false),
                // The upstream stopped reading: its answer may still come.
                Err(Upload::Upstream) => uploaded = Some(false),
            },
        }
    }
}

/// Reads the upstream's response head (within the deadline already set),
/// counts it, and relays the response to the client. `keep`, read when the
/// head goes out, says whether the client connection may carry on.
async fn respond(
    (ur, ubuf, cw, out): (
        &mut ReadHalf<'_>,
        &mut Buf,
        &mut (impl tokio::io::AsyncWrite + Unpin),
        &mut Vec<u8>,
    ),
    x: &Exchange<'_>,
    shared: &Shared,
    keep: &AtomicBool,
    head_out: &AtomicBool,
    deadline: &mut Deadline,
    start: Instant,
) -> Outcome {
    match deadline.run(read_response(ur, ubuf, out, x, keep)).await {
        None => Outcome::TimedOut,
        Some(Err(e)) => Outcome::NoResponse(e),
        Some(Ok(head)) => {
            head_out.store(true, Relaxed);
            let now = record(x, head.status, start);
            let idle = shared.config.request_timeout;
            let relayed = relay(ur, ubuf, cw, out, &head, deadline, now, idle).await;
            Outcome::Relayed(head, relayed)
        }
    }
}

/// Why a request body could not be sent whole.
enum Upload {
    Client,
    /// The body's framing is broken: the upstream gets no complete request.
    Malformed(&'static str),
    Upstream,
}

/// Copies the request body, as framed, from the client to the upstream.
async fn upload_body(
    cr: &mut ReadHalf<'_>,
    inbuf: &mut Buf,
    uw: &mut WriteHalf<'_>,
    framing: Framing,
) -> Result<(), Upload> {
    match framing {
        Framing::None | Framing::UntilClose => Ok(()),
        Framing::Length(mut left) => loop {
            let pending = inbuf.pending();
            let take = pending
                .len()
                .min(usize::try_from(left).unwrap_or(usize::MAX));
            if take > 0 {
                uw.write_all(&pending[..take])
                    .await
                    .map_err(|_| Upload::Upstream)?;
                inbuf.consume(take);
                left -= take as u64;
            }
            if left == 0 {
                return Ok(());
            }
            match inbuf.fill(cr).await {
                Ok(n) if n > 0 => {}
                _ => return Err(Upload::Client),
            }
        },
        Framing::Chunked => {
            let mut chunks = Chunks::default();
            loop {
                let pending = inbuf.pending();
                let used = chunks
                    .scan(pending, |_| {})
                    .map_err(|e| Upload::Malformed(e.0))?;
                if used > 0 {
                    uw.write_all(&pending[..used])
                        .await
                        .map_err(|_| Upload::Upstream)?;
                    inbuf.consume(used);
                }
                if chunks.is_done() {
                    return Ok(());
                }
                match inbuf.fill(cr).await {
                    Ok(n) if n > 0 => {}
                    _ => return Err(Upload::Client),
                }
            }
        }
    }
}

/// Reads the upstream's response head (skipping 1xx interim responses)
/// and puts the head for the client into `out`.
async fn read_response(
    ur: &mut ReadHalf<'_>,
    ubuf: &mut Buf,
    out: &mut Vec<u8>,
    x: &Exchange<'_>,
    keep: &AtomicBool,
) -> Result<ResponseHead, NoResponse> {
    let mut after_bytes = false;
    loop {
        if !ubuf.pending().is_empty() {
            let mut headers = [const { MaybeUninit::uninit() }; MAX_HEADERS];
            let mut resp = httparse::Response::new(&mut []);
            match httparse::ParserConfig::default().parse_response_with_uninit_headers(
                &mut resp,
                ubuf.pending(),
                &mut headers,
            ) {
                Ok(httparse::Status::Complete(n)) => {
                    let status = resp.code.unwrap_or(0);
                    if status == 101 {
                        return Err(NoResponse::Malformed(
                            "101 Switching Protocols to a request without Upgrade".into(),
                        ));
                    }
                    if (100..200).contains(&status) {
                        ubuf.consume(n);
                        continue;
                    }
                    let head = client_head(&resp, x, keep.load(Relaxed), out)?;
                    ubuf.consume(n);
                    return Ok(head);
                }
                Ok(httparse::Status::Partial) if ubuf.pending().len() >= MAX_HEAD => {
                    return Err(NoResponse::Malformed(format!(
                        "response head over {} KiB",
                        MAX_HEAD / 1024
                    )));
                }
                Ok(httparse::Status::Partial) => {}
                Err(e) => return Err(NoResponse::Malformed(e.to_string())),
            }
        }
        match ubuf.fill(ur).await {
            Ok(0) => return Err(NoResponse::Closed { after_bytes }),
            Ok(_) => after_bytes = true,
            Err(error) => return Err(NoResponse::Io { error, after_bytes }),
        }
    }
}

/// Writes the client's response head into `out`.
fn client_head(
    resp: &httparse::Response<'_, '_>,
    x: &Exchange<'_>,
    client_keep_wanted: bool,
    out: &mut Vec<u8>,
) -> Result<ResponseHead, NoResponse> {
    let status = resp.code.unwrap_or(0);
    let fields = http1::fields(resp.headers).map_err(NoResponse::Malformed)?;
    let framing = http1::response_framing(status, x.head_request, &fields);
    // Both Transfer-Encoding and Content-Length: read by the former, but
    // the connection is not trusted again (RFC 9112 §6.3).
    let upstream_persistent = http1::persistent(resp.version.unwrap_or(1), &fields)
        && framing != Framing::UntilClose
        && !(fields.transfer_encoding && fields.content_length.is_some());
    // Transfer codings are hop-by-hop, but an HTTP/1.1 client gets them as
    // sent (the proxy does not decode gzip and the like); an HTTP/1.0
    // client knows none: `chunked` alone is decoded for it, others refused.
    let pass_codings = fields.transfer_encoding && x.client_minor >= 1 && framing != Framing::None;
    if fields.transfer_encoding
        && x.client_minor == 0
        && framing != Framing::None
        && !fields.only_chunked
    {
        return Err(NoResponse::Malformed(
            "a transfer coding other than chunked, which an HTTP/1.0 client cannot read".into(),
        ));
    }
    let decode = framing == Framing::Chunked && x.client_minor == 0;
    let client_keep = client_keep_wanted && framing != Framing::UntilClose && !decode;

    out.clear();
    out.extend_from_slice(b"HTTP/1.1 ");
    http1::push_decimal(out, u64::from(status));
    out.push(b' ');
    out.extend_from_slice(resp.reason.unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    for h in resp.headers.iter() {
        // With Transfer-Encoding, a Content-Length is wrong (RFC 9112 §6.3).
        let stale_length =
            fields.transfer_encoding && h.name.eq_ignore_ascii_case("content-length");
        let ours = h.name.eq_ignore_ascii_case("x-cutover-colour");
        let codings = pass_codings && h.name.eq_ignore_ascii_case("transfer-encoding");
        if codings || (!stale_length && !ours && !http1::is_hop_by_hop(h.name, &fields.named)) {
            http1::push_field(out, h.name.as_bytes(), h.value);
        }
    }
    colour_fields(out, x);
    if !client_keep {
        out.extend_from_slice(b"Connection: close\r\n");
    } else if x.client_minor == 0 {
        out.extend_from_slice(b"Connection: keep-alive\r\n");
    }
    out.extend_from_slice(b"\r\n");
    Ok(ResponseHead {
        status,
        framing,
        decode,
        upstream_persistent,
        client_keep,
    })
}

/// `X-Cutover-Colour`, and the sticky cookie when it is to be set.
fn colour_fields(out: &mut Vec<u8>, x: &Exchange<'_>) {
    http1::push_field(
        out,
        b"X-Cutover-Colour",
        x.service.colour_header[x.colour.index()].as_bytes(),
    );
    if x.set_cookie {
        if let Some(cookies) = &x.service.set_cookie {
            http1::push_field(out, b"Set-Cookie", cookies[x.colour.index()].as_bytes());
        }
    }
}

/// Sends the head in `out` and the body after it, as framed. The head and
/// the body bytes already read go out in one write. Each read from the
/// upstream and each write to the client must make progress within `idle`
/// (from `now`, then from each step), else both connections close.
#[allow(clippy::too_many_arguments)]
async fn relay(
    ur: &mut ReadHalf<'_>,
    ubuf: &mut Buf,
    cw: &mut (impl tokio::io::AsyncWrite + Unpin),
    out: &mut Vec<u8>,
    head: &ResponseHead,
    deadline: &mut Deadline,
    mut now: Instant,
    idle: Duration,
) -> Relayed {
    let mut chunks = Chunks::default();
    let mut left = match head.framing {
        Framing::Length(n) => n,
        _ => 0,
    };
    loop {
        // Move what is buffered (as far as the body goes) behind `out`.
        let pending = ubuf.pending();
        let (used, done) = match head.framing {
            Framing::None => (0, true),
            Framing::Length(_) => {
                let take = pending
                    .len()
                    .min(usize::try_from(left).unwrap_or(usize::MAX));
                out.extend_from_slice(&pending[..take]);
                left -= take as u64;
                (take, left == 0)
            }
            Framing::Chunked => {
                let scanned = if head.decode {
                    chunks.scan(pending, |d| out.extend_from_slice(d))
                } else {
                    chunks.scan(pending, |_| {})
                };
                let Ok(used) = scanned else {
                    return Relayed::Broken;
                };
                if !head.decode {
                    out.extend_from_slice(&pending[..used]);
                }
                (used, chunks.is_done())
            }
            Framing::UntilClose => {
                out.extend_from_slice(pending);
                (pending.len(), false)
            }
        };
        ubuf.consume(used);
        if !out.is_empty() {
            deadline.set(now + idle);
            if !matches!(deadline.run(cw.write_all(out)).await, Some(Ok(()))) {
                return Relayed::Broken;
            }
            out.clear();
        }
        if done {
            // Bytes past the end: the upstream is out of step; do not reuse.
            return Relayed::Complete {
                clean: ubuf.pending().is_empty(),
            };
        }
        now = Instant::now();
        deadline.set(now + idle);
        let filled = deadline.run(ubuf.fill(ur)).await;
        now = Instant::now();
        match filled {
            Some(Ok(n)) if n > 0 => {}
            Some(Ok(_)) if head.framing == Framing::UntilClose => {
                return Relayed::Complete { clean: false }
            }
            _ => return Relayed::Broken,
        }
    }
}

/// Counts a response in the metrics; returns the time it came.
fn record(x: &Exchange<'_>, status: u16, start: Instant) -> Instant {
    let now = Instant::now();
    x.service
        .metrics
        .record(x.colour, (500..600).contains(&status), now - start, now);
    now
}

/// A response made here for a request that got none from its upstream.
struct Answer {
    /// 502 or 504.
    status: u16,
    /// What happened with the upstream, e.g. "failed: connection reset".
    why: String,
    /// The whole request body was read (the connection can carry on).
    body_consumed: bool,
}

/// Answers a request that got no response from its upstream (502, 504);
/// counts it.
async fn answer_error(
    client: &mut TcpStream,
    out: &mut Vec<u8>,
    x: &Exchange<'_>,
    shared: &Shared,
    deadline: &mut Deadline,
    start: Instant,
    answer: Answer,
) -> After {
    let now = record(x, answer.status, start);
    let body = format!(
        "cutover: {} upstream {} {}\n",
        x.colour, x.upstream.url, answer.why
    );
    let reason = if answer.status == 504 {
        "Gateway Timeout"
    } else {
        "Bad Gateway"
    };
    let keep = x.client_persistent && answer.body_consumed;
    out.clear();
    write_error(out, answer.status, reason, &body, Some(x), keep);
    deadline.set(now + shared.config.request_timeout);
    match deadline.run(client.write_all(out)).await {
        Some(Ok(())) => After::keep_if(keep),
        _ => After::Abort,
    }
}

/// A plain-text response made here.
fn write_error(
    out: &mut Vec<u8>,
    status: u16,
    reason: &str,
    body: &str,
    colour: Option<&Exchange<'_>>,
    keep: bool,
) {
    out.extend_from_slice(b"HTTP/1.1 ");
    http1::push_decimal(out, u64::from(status));
    out.push(b' ');
    out.extend_from_slice(reason.as_bytes());
    out.extend_from_slice(b"\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: ");
    http1::push_decimal(out, body.len() as u64);
    out.extend_from_slice(b"\r\n");
    if let Some(x) = colour {
        colour_fields(out, x);
        if keep && x.client_minor == 0 {
            out.extend_from_slice(b"Connection: keep-alive\r\n");
        }
    }
    if !keep {
        out.extend_from_slice(b"Connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body.as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_sticky_cookie() {
        let name = b"cutover-colour";
        assert_eq!(
            cookie_colour(b"a=1; cutover-colour=green; b=2", name),
            Some(Colour::Green)
        );
        assert_eq!(
            cookie_colour(b"cutover-colour=\"blue\"", name),
            Some(Colour::Blue)
        );
        assert_eq!(cookie_colour(b"a=1; cutover-colour=green", b"other"), None);
        assert_eq!(cookie_colour(b"cutover-colour=purple", name), None);
        assert_eq!(cookie_colour(b"cutover-colour", name), None);
    }

    #[test]
    fn proxy_set_fields_are_replaced() {
        assert!(matches!(
            request_field("X-Forwarded-For"),
            RequestField::ForwardedFor
        ));
        assert!(matches!(
            request_field("x-forwarded-proto"),
            RequestField::Replaced
        ));
        assert!(matches!(
            request_field("X-Forwarded-Host"),
            RequestField::Replaced
        ));
        assert!(matches!(request_field("Expect"), RequestField::Replaced));
        assert!(matches!(
            request_field("X-Forwarded-Port"),
            RequestField::Forward
        ));
        assert!(matches!(request_field("Host"), RequestField::Host));
    }
}
