//! Test support shared by the adapter crates' tests: [`Driven`], a
//! rollout driven by the real engine that a test can follow commit by
//! commit, [`FaultProxy`], and a real Prometheus ([`prometheus::Prometheus`]).
//!
//! [`FaultProxy`] is an HTTP/1.1 proxy on loopback that sits between an
//! adapter and the real server behind it (moto_server, the embedded proxy's
//! admin API) and, driven per test, injects the faults a real network and a
//! real service produce: throttling in the service's own error shape, 5xx,
//! hangs, dropped connections, delays, and writes that land but whose reply
//! is lost. It keeps a log of every request it saw, so a test can count
//! requests sent and time what happened after a fault.
//!
//! A request's *operation* is what the proxy matches rules on:
//! - JSON protocols (DynamoDB, ECS, SQS): the `X-Amz-Target` operation,
//!   e.g. `UpdateItem`;
//! - Query protocols (ELBv2, CloudWatch): the form body's `Action`, e.g.
//!   `ModifyListener`;
//! - Smithy RPC v2 CBOR: the operation in the path;
//! - Route53's REST API: `ChangeResourceRecordSets`, `ListResourceRecordSets`,
//!   `GetChange`, `GetHostedZone`;
//! - anything else: `METHOD /path` without the query, e.g. `PUT /split`.

pub mod prometheus;
mod rollout;

pub use rollout::{figure, Driven};

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// What the proxy does to a matching request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Answers at once with the service's own throttling error (400 with
    /// `Throttling` / `ProvisionedThroughputExceededException` for AWS, 429
    /// for plain HTTP); the request never reaches the server.
    Throttle,
    /// Answers at once with this 5xx status and an error document in the
    /// service's shape; the request never reaches the server.
    Status(u16),
    /// Never answers and never forwards; the connection stays open until
    /// the client gives up or [`FaultProxy::clear`] is called.
    Hang,
    /// Forwards (the server applies the request), then never answers.
    HangAfterApply,
    /// Closes the connection without forwarding.
    Drop,
    /// Forwards after this delay and answers normally.
    Delay(Duration),
    /// Forwards (the server applies the request), then closes the
    /// connection without a byte of the answer.
    ReplyLost,
    /// Forwards and answers with every `from` in the answer's body
    /// replaced by `to` (e.g. a change moto reports `INSYNC` at once
    /// answered as `PENDING`, as Route53 does).
    Rewrite {
        from: &'static str,
        to: &'static str,
    },
}

/// One request the proxy saw.
#[derive(Clone, Debug)]
pub struct Seen {
    pub op: String,
    pub at: Instant,
    /// The fault applied to it, if any.
    pub fault: Option<Fault>,
    /// When the server behind the proxy answered it (it is applied there
    /// by then), if it was forwarded and answered.
    pub applied: Option<Instant>,
}

struct Rule {
    op: String,
    fault: Fault,
    /// Matching requests to let through before the fault applies.
    skip: usize,
    /// How many matching requests get the fault; `None`: all of them.
    times: Option<usize>,
    matched: usize,
}

impl Rule {
    /// Whether this request (already known to match `op`) gets the fault.
    fn take(&mut self) -> bool {
        self.matched += 1;
        let n = self.matched;
        n > self.skip && self.times.is_none_or(|t| n <= self.skip + t)
    }
}

#[derive(Default)]
struct State {
    rules: Vec<Rule>,
    seen: Vec<Seen>,
}

/// A fault-injecting HTTP proxy in front of one upstream server.
pub struct FaultProxy {
    url: String,
    state: Arc<Mutex<State>>,
    /// Bumped on every request seen, and by [`FaultProxy::clear`] (which
    /// also releases hung connections).
    seen_tx: watch::Sender<usize>,
    release_tx: watch::Sender<u64>,
}

/// Builds a rule: `proxy.inject(On::op("UpdateItem").after(1).times(2), Fault::Throttle)`.
#[derive(Clone, Debug)]
pub struct On {
    op: String,
    skip: usize,
    times: Option<usize>,
}

impl On {
    /// Every request of this operation.
    pub fn op(op: &str) -> On {
        On {
            op: op.to_string(),
            skip: 0,
            times: None,
        }
    }

    /// Lets the first `n` matching requests through untouched.
    pub fn after(mut self, n: usize) -> On {
        self.skip = n;
        self
    }

    /// Faults only this many matching requests (after those skipped).
    pub fn times(mut self, n: usize) -> On {
        self.times = Some(n);
        self
    }
}

impl FaultProxy {
    /// Starts a proxy in front of `upstream` (`http://host:port`) on a free
    /// loopback port, on the current tokio runtime.
    pub async fn start(upstream: &str) -> FaultProxy {
        FaultProxy::start_with(upstream, None).await
    }

    /// The same, passing one request at a time to the server (for moto,
    /// which does not apply concurrent conditional writes atomically:
    /// with this, the races a test makes are decided as DynamoDB decides
    /// them).
    pub async fn start_one_at_a_time(upstream: &str) -> FaultProxy {
        FaultProxy::start_with(upstream, Some(Arc::default())).await
    }

    async fn start_with(upstream: &str, serial: Option<Arc<tokio::sync::Mutex<()>>>) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind loopback");
        let url = format!("http://{}", listener.local_addr().unwrap());
        let upstream = upstream
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .to_string();
        let state: Arc<Mutex<State>> = Arc::default();
        let (seen_tx, _) = watch::channel(0usize);
        let (release_tx, _) = watch::channel(0u64);
        let proxy = FaultProxy {
            url,
            state: state.clone(),
            seen_tx: seen_tx.clone(),
            release_tx: release_tx.clone(),
        };
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let conn = Connection {
                    serial: serial.clone(),
                    upstream: upstream.clone(),
                    state: state.clone(),
                    seen_tx: seen_tx.clone(),
                    release: release_tx.subscribe(),
                };
                tokio::spawn(conn.serve(stream));
            }
        });
        proxy
    }

    /// The proxy's URL, to use as the adapter's endpoint.
    pub fn url(&self) -> String {
        self.url.clone()
    }

    /// Adds a rule; earlier rules win when several match one request.
    pub fn inject(&self, on: On, fault: Fault) {
        self.state.lock().unwrap().rules.push(Rule {
            op: on.op,
            fault,
            skip: on.skip,
            times: on.times,
            matched: 0,
        });
    }

    /// Removes every rule and releases every hung connection (closing it
    /// without an answer).
    pub fn clear(&self) {
        self.state.lock().unwrap().rules.clear();
        self.release_tx.send_modify(|n| *n += 1);
    }

    /// Every request seen so far, in order of arrival.
    pub fn seen(&self) -> Vec<Seen> {
        self.state.lock().unwrap().seen.clone()
    }

    /// The requests of `op` seen so far.
    pub fn seen_op(&self, op: &str) -> Vec<Seen> {
        self.seen().into_iter().filter(|s| s.op == op).collect()
    }

    /// When the `n`-th request of `op` arrived (panics if it has not).
    pub fn at(&self, op: &str, n: usize) -> Instant {
        self.seen_op(op)
            .get(n - 1)
            .unwrap_or_else(|| panic!("no request {n} of {op}: {:?}", self.seen_op(op)))
            .at
    }

    /// Waits until `n` requests of `op` have got a fault (or `limit`
    /// passed; then panics) and returns the `n`-th.
    pub async fn wait_for_fault(&self, op: &str, n: usize, limit: Duration) -> Seen {
        self.wait_until(limit, &format!("fault {n} on {op}"), || {
            self.seen_op(op)
                .into_iter()
                .filter(|s| s.fault.is_some())
                .nth(n - 1)
        })
        .await
    }

    /// Waits until the `n`-th request of `op` has been answered by the
    /// server behind the proxy (so it is applied there), or `limit` passed
    /// (then panics); returns it.
    pub async fn wait_applied(&self, op: &str, n: usize, limit: Duration) -> Seen {
        self.wait_until(limit, &format!("request {n} of {op} applied"), || {
            self.seen_op(op)
                .into_iter()
                .nth(n - 1)
                .filter(|s| s.applied.is_some())
        })
        .await
    }

    /// Waits until `n` requests of `op` have arrived (or `limit` passed;
    /// then panics with what was seen) and returns the `n`-th.
    pub async fn wait_for(&self, op: &str, n: usize, limit: Duration) -> Seen {
        self.wait_until(limit, &format!("request {n} of {op}"), || {
            self.seen_op(op).into_iter().nth(n - 1)
        })
        .await
    }

    /// Waits, on every change of the log, until `found` finds a request,
    /// at most `limit`; panics naming `what` and the log if it does not.
    async fn wait_until(
        &self,
        limit: Duration,
        what: &str,
        found: impl Fn() -> Option<Seen>,
    ) -> Seen {
        let mut rx = self.seen_tx.subscribe();
        let wait = async {
            loop {
                if let Some(s) = found() {
                    return s;
                }
                rx.changed().await.expect("the proxy runs");
            }
        };
        match tokio::time::timeout(limit, wait).await {
            Ok(s) => s,
            Err(_) => panic!(
                "no {what} within {limit:?}; seen: {:?}",
                self.seen().iter().map(|s| &s.op).collect::<Vec<_>>()
            ),
        }
    }
}

struct Connection {
    /// Held while a request is with the server, when one at a time.
    serial: Option<Arc<tokio::sync::Mutex<()>>>,
    upstream: String,
    state: Arc<Mutex<State>>,
    seen_tx: watch::Sender<usize>,
    release: watch::Receiver<u64>,
}

/// One HTTP message as read off the wire (body de-chunked).
struct Message {
    head: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Message {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// The service protocol a request speaks, for error shapes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Protocol {
    /// JSON 1.0/1.1 with `X-Amz-Target`; the flag: DynamoDB.
    AwsJson {
        dynamodb: bool,
    },
    Cbor,
    Query,
    Route53,
    Plain,
}

impl Connection {
    /// Serves one client connection, request by request (keep-alive).
    async fn serve(mut self, stream: TcpStream) {
        let _ = self.serve_inner(stream).await;
    }

    async fn serve_inner(&mut self, stream: TcpStream) -> std::io::Result<()> {
        let (read, mut write) = stream.into_split();
        let mut read = BufReader::new(read);
        while let Some(req) = read_message(&mut read, false).await? {
            let (op, protocol) = classify(&req);
            let (index, fault) = self.note(&op);
            match fault {
                None => self.answer(&mut write, &req, index, None).await?,
                Some(Fault::Rewrite { from, to }) => {
                    self.answer(&mut write, &req, index, Some((from, to)))
                        .await?
                }
                Some(Fault::Throttle) => {
                    let (status, ct, body) = error_answer(protocol, 400, true);
                    respond(&mut write, status, ct, body.as_bytes()).await?;
                }
                Some(Fault::Status(status)) => {
                    let (status, ct, body) = error_answer(protocol, status, false);
                    respond(&mut write, status, ct, body.as_bytes()).await?;
                }
                Some(Fault::Hang) => return self.hang(&mut read).await,
                Some(Fault::HangAfterApply) => {
                    self.forward(&req, index).await?;
                    return self.hang(&mut read).await;
                }
                Some(Fault::Drop) => return Ok(()),
                Some(Fault::Delay(d)) => {
                    tokio::time::sleep(d).await;
                    self.answer(&mut write, &req, index, None).await?;
                }
                Some(Fault::ReplyLost) => {
                    self.forward(&req, index).await?;
                    return Ok(());
                }
            }
        }
        Ok(())
    }

    /// Logs the request and picks the fault of the first rule that takes
    /// it; returns its place in the log too.
    fn note(&self, op: &str) -> (usize, Option<Fault>) {
        let mut state = self.state.lock().unwrap();
        let fault = state
            .rules
            .iter_mut()
            .filter(|r| r.op == op)
            .find_map(|r| r.take().then_some(r.fault));
        state.seen.push(Seen {
            op: op.to_string(),
            at: Instant::now(),
            fault,
            applied: None,
        });
        let n = state.seen.len();
        drop(state);
        self.seen_tx.send_replace(n);
        (n - 1, fault)
    }

    /// Holds the connection open without answering until the client closes
    /// it or the test clears the faults.
    async fn hang<R: AsyncReadExt + Unpin>(&mut self, read: &mut R) -> std::io::Result<()> {
        let mut sink = [0u8; 1024];
        let mut release = self.release.clone();
        release.mark_unchanged();
        loop {
            tokio::select! {
                n = read.read(&mut sink) => if n? == 0 { return Ok(()) },
                _ = release.changed() => return Ok(()),
            }
        }
    }

    /// Forwards the request and relays the answer (with `rewrite`'s
    /// replacement made in its body).
    async fn answer<W: AsyncWriteExt + Unpin>(
        &self,
        write: &mut W,
        req: &Message,
        index: usize,
        rewrite: Option<(&str, &str)>,
    ) -> std::io::Result<()> {
        let mut resp = self.forward(req, index).await?;
        if let Some((from, to)) = rewrite {
            resp.body = String::from_utf8_lossy(&resp.body)
                .replace(from, to)
                .into_bytes();
        }
        let status = resp
            .head
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse::<u16>().ok())
            .unwrap_or(502);
        let ct = resp
            .header("content-type")
            .unwrap_or("text/plain")
            .to_string();
        let extra: String = resp
            .headers
            .iter()
            .filter(|(k, _)| {
                let k = k.to_ascii_lowercase();
                k.starts_with("x-amz") || k == "smithy-protocol" || k == "x-amzn-requestid"
            })
            .map(|(k, v)| format!("{k}: {v}\r\n"))
            .collect();
        write
            .write_all(
                format!(
                    "HTTP/1.1 {status} {}\r\nContent-Type: {ct}\r\n{extra}Content-Length: {}\r\n\r\n",
                    reason(status),
                    resp.body.len()
                )
                .as_bytes(),
            )
            .await?;
        write.write_all(&resp.body).await?;
        write.flush().await
    }

    /// Sends the request upstream on a fresh connection, reads the whole
    /// answer, and notes when it came on entry `index` of the log.
    async fn forward(&self, req: &Message, index: usize) -> std::io::Result<Message> {
        let _turn = match &self.serial {
            Some(serial) => Some(serial.lock().await),
            None => None,
        };
        let mut up = TcpStream::connect(&self.upstream).await?;
        let headers: String = req
            .headers
            .iter()
            .filter(|(k, _)| {
                ![
                    "host",
                    "connection",
                    "content-length",
                    "transfer-encoding",
                    "keep-alive",
                ]
                .contains(&k.to_ascii_lowercase().as_str())
            })
            .map(|(k, v)| format!("{k}: {v}\r\n"))
            .collect();
        up.write_all(
            format!(
                "{}\r\nHost: {}\r\nConnection: close\r\n{headers}Content-Length: {}\r\n\r\n",
                req.head,
                self.upstream,
                req.body.len()
            )
            .as_bytes(),
        )
        .await?;
        up.write_all(&req.body).await?;
        let answer = read_message(&mut BufReader::new(up), true)
            .await?
            .ok_or_else(|| std::io::Error::other("upstream closed without an answer"))?;
        if let Some(seen) = self.state.lock().unwrap().seen.get_mut(index) {
            seen.applied = Some(Instant::now());
        }
        self.seen_tx.send_modify(|_| {});
        Ok(answer)
    }
}

async fn respond<W: AsyncWriteExt + Unpin>(
    write: &mut W,
    status: u16,
    content_type: &str,
    body: &[u8],
) -> std::io::Result<()> {
    write
        .write_all(
            format!(
                "HTTP/1.1 {status} {}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\r\n",
                reason(status),
                body.len()
            )
            .as_bytes(),
        )
        .await?;
    write.write_all(body).await?;
    write.flush().await
}

async fn read_message<R: AsyncBufReadExt + Unpin>(
    r: &mut R,
    until_eof: bool,
) -> std::io::Result<Option<Message>> {
    let mut head = String::new();
    if r.read_line(&mut head).await? == 0 {
        return Ok(None);
    }
    let mut headers = Vec::new();
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).await? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            headers.push((k.trim().to_string(), v.trim().to_string()));
        }
    }
    let mut msg = Message {
        head: head.trim_end().to_string(),
        headers,
        body: Vec::new(),
    };
    if msg
        .header("transfer-encoding")
        .is_some_and(|v| v.eq_ignore_ascii_case("chunked"))
    {
        loop {
            let mut size = String::new();
            r.read_line(&mut size).await?;
            let size = usize::from_str_radix(size.trim().split(';').next().unwrap_or("0"), 16)
                .map_err(|_| std::io::Error::other("bad chunk size"))?;
            if size == 0 {
                // Trailers, up to the empty line.
                loop {
                    let mut line = String::new();
                    if r.read_line(&mut line).await? == 0 || line.trim_end().is_empty() {
                        break;
                    }
                }
                break;
            }
            let start = msg.body.len();
            msg.body.resize(start + size, 0);
            r.read_exact(&mut msg.body[start..]).await?;
            let mut crlf = [0u8; 2];
            r.read_exact(&mut crlf).await?;
        }
    } else if let Some(n) = msg
        .header("content-length")
        .and_then(|v| v.parse::<usize>().ok())
    {
        msg.body.resize(n, 0);
        r.read_exact(&mut msg.body).await?;
    } else if until_eof {
        r.read_to_end(&mut msg.body).await?;
    }
    Ok(Some(msg))
}

/// The operation and protocol of a request (see the crate docs).
fn classify(req: &Message) -> (String, Protocol) {
    let mut parts = req.head.split(' ');
    let method = parts.next().unwrap_or("").to_string();
    let target = parts.next().unwrap_or("/");
    let path = target.split('?').next().unwrap_or("/");
    if let Some(t) = req.header("x-amz-target") {
        let op = t.rsplit('.').next().unwrap_or(t).to_string();
        let dynamodb = t.starts_with("DynamoDB_");
        return (op, Protocol::AwsJson { dynamodb });
    }
    if let Some((_, op)) = path.split_once("/operation/") {
        return (op.to_string(), Protocol::Cbor);
    }
    if let Some(op) = form_action(&req.body) {
        return (op, Protocol::Query);
    }
    if let Some(rest) = path.strip_prefix("/2013-04-01/") {
        let op = match (
            method.as_str(),
            rest.split('/').collect::<Vec<_>>().as_slice(),
        ) {
            ("POST", ["hostedzone", _, "rrset", ..]) => "ChangeResourceRecordSets",
            ("GET", ["hostedzone", _, "rrset", ..]) => "ListResourceRecordSets",
            ("GET", ["change", ..]) => "GetChange",
            ("GET", ["hostedzone", _]) => "GetHostedZone",
            _ => return (format!("{method} {path}"), Protocol::Route53),
        };
        return (op.to_string(), Protocol::Route53);
    }
    (format!("{method} {path}"), Protocol::Plain)
}

fn form_action(body: &[u8]) -> Option<String> {
    let body = std::str::from_utf8(body).ok()?;
    body.split('&')
        .find_map(|kv| kv.strip_prefix("Action="))
        .map(str::to_string)
}

/// An error answer in `protocol`'s shape: (status, content type, body).
fn error_answer(protocol: Protocol, status: u16, throttle: bool) -> (u16, &'static str, String) {
    let (code, message) = match (throttle, protocol) {
        (true, Protocol::AwsJson { dynamodb: true }) => (
            "ProvisionedThroughputExceededException",
            "The level of configured provisioned throughput for the table was exceeded.",
        ),
        (true, Protocol::AwsJson { .. } | Protocol::Cbor) => {
            ("ThrottlingException", "Rate exceeded")
        }
        (true, _) => ("Throttling", "Rate exceeded"),
        (false, _) if status == 503 => ("ServiceUnavailable", "Service unavailable"),
        (false, _) => ("InternalFailure", "Internal failure"),
    };
    let status = if throttle {
        if protocol == Protocol::Plain {
            429
        } else {
            400
        }
    } else {
        status
    };
    match protocol {
        Protocol::AwsJson { dynamodb } => {
            let prefix = if dynamodb {
                "com.amazonaws.dynamodb.v20120810#"
            } else {
                "com.amazonaws.service#"
            };
            (
                status,
                "application/x-amz-json-1.0",
                format!(r#"{{"__type":"{prefix}{code}","message":"{message}"}}"#),
            )
        }
        Protocol::Query | Protocol::Route53 | Protocol::Cbor => (
            status,
            "text/xml",
            format!(
                "<?xml version=\"1.0\"?>\n<ErrorResponse><Error><Type>{}</Type><Code>{code}</Code><Message>{message}</Message></Error><RequestId>00000000-0000-0000-0000-000000000000</RequestId></ErrorResponse>",
                if status < 500 { "Sender" } else { "Receiver" }
            ),
        ),
        Protocol::Plain => (
            status,
            "application/json",
            format!(r#"{{"error":"{message}"}}"#),
        ),
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Error",
    }
}
