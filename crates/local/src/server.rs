//! Accept loops with graceful shutdown, shared by the proxy's two
//! listeners and the demo app.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::{Body, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

/// Shutdown phases broadcast to accept loops and connections.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Phase {
    Running,
    /// Stop accepting; finish in-flight requests, close idle connections.
    Draining,
    /// Drop whatever is left.
    Abort,
}

/// Owns the shutdown signal and knows when every task it handed out ended.
pub struct Shutdown {
    phase: watch::Sender<Phase>,
    alive_tx: Option<mpsc::Sender<()>>,
    alive_rx: mpsc::Receiver<()>,
}

/// What a task holds: the phase to watch and a token that keeps
/// [`Shutdown::run`] waiting while it lives.
#[derive(Clone)]
pub struct Signal {
    pub phase: watch::Receiver<Phase>,
    _alive: mpsc::Sender<()>,
}

impl Signal {
    /// Resolves once the phase reaches `at_least` (or the owner is gone).
    pub async fn reached(&mut self, at_least: Phase) {
        let _ = self.phase.wait_for(|p| *p >= at_least).await;
    }
}

impl Default for Shutdown {
    fn default() -> Self {
        Self::new()
    }
}

impl Shutdown {
    pub fn new() -> Shutdown {
        let (alive_tx, alive_rx) = mpsc::channel(1);
        Shutdown {
            phase: watch::Sender::new(Phase::Running),
            alive_tx: Some(alive_tx),
            alive_rx,
        }
    }

    pub fn signal(&self) -> Signal {
        Signal {
            phase: self.phase.subscribe(),
            _alive: self.alive_tx.clone().expect("signal() before run()"),
        }
    }

    /// Drains for at most `grace`, then aborts what is left; returns once
    /// every task ended.
    pub async fn run(mut self, grace: Duration) {
        self.alive_tx = None;
        let _ = self.phase.send(Phase::Draining);
        if tokio::time::timeout(grace, self.alive_rx.recv())
            .await
            .is_err()
        {
            let _ = self.phase.send(Phase::Abort);
            let _ = self.alive_rx.recv().await;
        }
    }
}

/// The body type of responses built in this crate.
pub type FullBody = Full<Bytes>;

/// Serves HTTP/1.1 with keep-alive on `listener` until shut down.
/// `make_handler` is called once per connection with the peer's address;
/// the handler it returns answers that connection's requests.
pub fn serve<M, H, Fut, B>(listener: TcpListener, signal: Signal, make_handler: M) -> JoinHandle<()>
where
    M: Fn(SocketAddr) -> H + Send + 'static,
    H: Fn(Request<Incoming>) -> Fut + Send + 'static,
    Fut: Future<Output = Response<B>> + Send + 'static,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let builder = builder();
    accept_each(listener, signal, move |stream, peer, signal| {
        spawn_connection(&builder, stream, peer, &make_handler, signal)
    })
}

/// Accepts on `listener` until shut down and hands each connection, with
/// the signal its task is to watch, to `on_connection`.
pub fn accept_each<F>(
    listener: TcpListener,
    mut signal: Signal,
    mut on_connection: F,
) -> JoinHandle<()>
where
    F: FnMut(TcpStream, SocketAddr, &Signal) + Send + 'static,
{
    tokio::spawn(async move {
        while let Some((stream, peer)) = accept(&listener, &mut signal).await {
            on_connection(stream, peer, &signal);
        }
    })
}

/// Accepts on `listener` until shut down and hands each connection to the
/// next of `to` in turn (round-robin: each data-plane thread gets the same
/// number of connections, whatever their timing).
pub fn dispatch(
    listener: TcpListener,
    mut signal: Signal,
    to: Vec<mpsc::UnboundedSender<(std::net::TcpStream, SocketAddr)>>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut next = 0;
        while let Some((stream, peer)) = accept(&listener, &mut signal).await {
            let Ok(mut stream) = stream.into_std() else {
                continue;
            };
            // A thread that is gone (it panicked) gets no more connections.
            for _ in 0..to.len() {
                let i = next % to.len();
                next += 1;
                match to[i].send((stream, peer)) {
                    Ok(()) => break,
                    Err(back) => stream = back.0 .0,
                }
            }
        }
    })
}

/// Like [`accept_each`], for connections accepted elsewhere ([`dispatch`]);
/// ends when they stop coming (the dispatcher ended) or at shutdown.
pub fn receive_each<F>(
    mut from: mpsc::UnboundedReceiver<(std::net::TcpStream, SocketAddr)>,
    mut signal: Signal,
    mut on_connection: F,
) -> JoinHandle<()>
where
    F: FnMut(TcpStream, SocketAddr, &Signal) + Send + 'static,
{
    tokio::spawn(async move {
        loop {
            let (stream, peer) = tokio::select! {
                biased;
                _ = signal.reached(Phase::Draining) => break,
                got = from.recv() => match got {
                    Some(x) => x,
                    None => break,
                },
            };
            match TcpStream::from_std(stream) {
                Ok(stream) => on_connection(stream, peer, &signal),
                Err(e) => tracing::warn!("cannot serve a connection from {peer}: {e}"),
            }
        }
    })
}

fn builder() -> http1::Builder {
    let mut builder = http1::Builder::new();
    builder
        .keep_alive(true)
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(30));
    builder
}

/// The next connection, or `None` once shutting down.
async fn accept(listener: &TcpListener, signal: &mut Signal) -> Option<(TcpStream, SocketAddr)> {
    loop {
        tokio::select! {
            biased;
            _ = signal.reached(Phase::Draining) => return None,
            accepted = listener.accept() => match accepted {
                Ok(x) => return Some(x),
                Err(e) => {
                    // Out of file descriptors and the like: back off briefly.
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            },
        }
    }
}

/// Serves one connection in a task of its own until it closes or the
/// shutdown says stop (gracefully at `Draining`, at once at `Abort`).
fn spawn_connection<M, H, Fut, B>(
    builder: &http1::Builder,
    stream: TcpStream,
    peer: SocketAddr,
    make_handler: &M,
    signal: &Signal,
) where
    M: Fn(SocketAddr) -> H + Send + 'static,
    H: Fn(Request<Incoming>) -> Fut + Send + 'static,
    Fut: Future<Output = Response<B>> + Send + 'static,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let _ = stream.set_nodelay(true);
    let handler = make_handler(peer);
    let mut conn_signal = signal.clone();
    let conn = builder.serve_connection(
        TokioIo::new(stream),
        service_fn(move |req| {
            let fut = handler(req);
            async move { Ok::<_, Infallible>(fut.await) }
        }),
    );
    tokio::spawn(async move {
        tokio::pin!(conn);
        tokio::select! {
            _ = conn.as_mut() => return,
            _ = conn_signal.reached(Phase::Draining) => conn.as_mut().graceful_shutdown(),
        }
        tokio::select! {
            _ = conn.as_mut() => {}
            _ = conn_signal.reached(Phase::Abort) => {}
        }
    });
}
