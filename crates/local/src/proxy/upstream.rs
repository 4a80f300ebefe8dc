//! Keep-alive connections to one upstream: a stack of idle TCP streams.
//!
//! A request pops the most recently used idle connection (the warmest
//! socket) or dials a new one; after a complete response whose connection
//! may be reused, the stream goes back on the stack. No task watches idle
//! connections: when one is taken, its readiness (already tracked by the
//! event loop, no system call) tells whether the upstream closed it or
//! sent something unasked; such a connection is dropped and the next one
//! tried. Idle connections older than [`IDLE_TIMEOUT`] are dropped too:
//! when met, and from the bottom of the stack (the least recently used)
//! at every check-in, so a burst's extra connections do not linger for
//! good once traffic calms down.
//!
//! The upstream may still close a connection just as it is reused; the
//! data plane then retries requests that are safe to send again (see
//! `forward.rs`).
//!
//! A pool belongs to one event loop (a data-plane thread, or the shared
//! runtime): its streams are registered with that loop's reactor. The
//! mutex is only ever contended on the shared runtime.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::time::Instant;

use super::config::UpstreamUrl;

/// Idle connections unused for longer than this are closed when next met.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// At most this many idle connections are kept per upstream.
const MAX_IDLE: usize = 1024;

struct Idle {
    stream: TcpStream,
    since: Instant,
}

/// One upstream's idle connections, and how to make new ones.
pub struct UpstreamPool {
    host: String,
    port: u16,
    connect_timeout: Duration,
    /// Most recently used at the back.
    idle: Mutex<VecDeque<Idle>>,
}

impl UpstreamPool {
    pub fn new(url: &UpstreamUrl, connect_timeout: Duration) -> UpstreamPool {
        let authority = url.authority();
        let host = authority.host();
        let host = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        UpstreamPool {
            host: host.to_string(),
            port: authority.port_u16().unwrap_or(80),
            connect_timeout,
            idle: Mutex::new(VecDeque::new()),
        }
    }

    /// The most recently used idle connection that still looks open.
    pub fn checkout(&self, now: Instant) -> Option<TcpStream> {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        while let Some(c) = idle.pop_back() {
            if now.saturating_duration_since(c.since) < IDLE_TIMEOUT && looks_open(&c.stream) {
                return Some(c.stream);
            }
        }
        None
    }

    /// Puts a connection that finished an exchange cleanly back, and
    /// closes the least recently used ones that idled too long (or one, to
    /// make room, when [`MAX_IDLE`] are kept).
    pub fn checkin(&self, stream: TcpStream, now: Instant) {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        while idle
            .front()
            .is_some_and(|c| now.saturating_duration_since(c.since) >= IDLE_TIMEOUT)
        {
            idle.pop_front();
        }
        if idle.len() >= MAX_IDLE {
            idle.pop_front();
        }
        idle.push_back(Idle { stream, since: now });
    }

    /// A new connection, within the connect timeout.
    pub async fn connect(&self) -> std::io::Result<TcpStream> {
        let stream = tokio::time::timeout(self.connect_timeout, self.dial())
            .await
            .map_err(|_| {
                std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!(
                        "no connection within {}",
                        cutover_core::time::Human(self.connect_timeout)
                    ),
                )
            })??;
        let _ = stream.set_nodelay(true);
        Ok(stream)
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

/// Whether an idle connection is still usable: the reactor has seen
/// nothing on it (no data, no EOF), or a read finds nothing to read.
fn looks_open(stream: &TcpStream) -> bool {
    let mut cx = Context::from_waker(Waker::noop());
    match stream.poll_read_ready(&mut cx) {
        Poll::Pending => true,
        Poll::Ready(Err(_)) => false,
        // Readable: EOF, unasked bytes, or a stale readiness flag.
        Poll::Ready(Ok(())) => {
            let mut byte = [0u8; 1];
            matches!(stream.try_read(&mut byte), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
        }
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;

    #[tokio::test]
    async fn closed_and_chatty_idle_connections_are_not_handed_out() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url =
            UpstreamUrl::parse(&format!("http://{}", listener.local_addr().unwrap())).unwrap();
        let pool = UpstreamPool::new(&url, Duration::from_secs(1));
        let now = Instant::now();
        assert!(pool.checkout(now).is_none());

        // Three connections: one the server closes, one it writes to, one it keeps.
        let mut server_side = Vec::new();
        for _ in 0..3 {
            let client = pool.connect().await.unwrap();
            let (server, _) = listener.accept().await.unwrap();
            server_side.push(server);
            pool.checkin(client, now);
        }
        let keep = server_side.remove(0);
        let mut chatty = server_side.remove(0);
        chatty.write_all(b"unasked").await.unwrap();
        drop(server_side); // closes the third (top of the stack)
                           // Let the reactor see both events: a readable check on each is
                           // repeated until it reports them (no sleep).
        let mut seen = false;
        for _ in 0..1000 {
            let states: Vec<bool> = {
                let idle = pool.idle.lock().unwrap();
                idle.iter().map(|c| looks_open(&c.stream)).collect()
            };
            if states == [true, false, false] {
                seen = true;
                break;
            }
            tokio::task::yield_now().await;
        }
        assert!(seen, "the reactor saw the close and the data");
        // The closed and the chatty ones are skipped, the kept one is served.
        let served = pool.checkout(now).expect("the open connection");
        assert_eq!(
            served.peer_addr().unwrap(),
            keep.local_addr().unwrap(),
            "the connection the server kept"
        );
        assert!(pool.checkout(now).is_none());
        // Idle too long: dropped.
        pool.checkin(served, now);
        assert!(pool.checkout(now + IDLE_TIMEOUT).is_none());
    }

    #[tokio::test]
    async fn check_ins_close_connections_left_idle_too_long() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url =
            UpstreamUrl::parse(&format!("http://{}", listener.local_addr().unwrap())).unwrap();
        let pool = UpstreamPool::new(&url, Duration::from_secs(1));
        let start = Instant::now();
        let mut server_side = Vec::new();
        for _ in 0..3 {
            let client = pool.connect().await.unwrap();
            server_side.push(listener.accept().await.unwrap().0);
            pool.checkin(client, start);
        }
        // Much later, one connection comes back from a request: the three
        // left at the bottom since `start` are closed, it stays.
        let fresh = pool.connect().await.unwrap();
        let (mut fresh_server, _) = listener.accept().await.unwrap();
        pool.checkin(fresh, start + IDLE_TIMEOUT);
        assert_eq!(pool.idle.lock().unwrap().len(), 1);
        for mut s in server_side {
            let mut buf = [0u8; 1];
            assert_eq!(s.read(&mut buf).await.unwrap(), 0, "closed by the pool");
        }
        let kept = pool.checkout(start + IDLE_TIMEOUT).expect("the fresh one");
        drop(kept);
        let mut buf = [0u8; 1];
        assert_eq!(fresh_server.read(&mut buf).await.unwrap(), 0);
    }
}
