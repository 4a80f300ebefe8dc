//! The data plane's HTTP/1 handling, byte for byte: raw clients and raw
//! upstreams on loopback, so that framing, pipelining, HTTP/1.0 and the
//! refusals are seen exactly as they go over the wire.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

const WAIT: Duration = Duration::from_secs(10);

/// An upstream that reads each request whole (head, then a Content-Length
/// or chunked body), reports its bytes, answers `response` verbatim, and
/// closes the connection afterwards when `close` is set.
async fn scripted_upstream(
    response: &'static [u8],
    close: bool,
) -> (SocketAddr, mpsc::UnboundedReceiver<Vec<u8>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                loop {
                    let Some(len) = whole_request(&buf) else {
                        let mut chunk = [0u8; 4096];
                        match s.read(&mut chunk).await {
                            Ok(n) if n > 0 => buf.extend_from_slice(&chunk[..n]),
                            _ => return,
                        }
                        continue;
                    };
                    let request: Vec<u8> = buf.drain(..len).collect();
                    let _ = tx.send(request);
                    if s.write_all(response).await.is_err() || close {
                        return;
                    }
                }
            });
        }
    });
    (addr, rx)
}

/// The length of the first whole request in `buf`, if it is all there.
fn whole_request(buf: &[u8]) -> Option<usize> {
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
    if head.contains("transfer-encoding: chunked") {
        // The last chunk (`0`), then trailer lines up to an empty one.
        let body = &buf[end..];
        let last = body.windows(4).position(|w| w == b"\n0\r\n")? + 2;
        let tail = body[last..].windows(4).position(|w| w == b"\r\n\r\n")?;
        return Some(end + last + tail + 4);
    }
    let len = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .map_or(0, |v| v.trim().parse::<usize>().unwrap());
    (buf.len() >= end + len).then_some(end + len)
}

/// Reads until the peer closes; everything it sent.
async fn read_to_close(s: &mut TcpStream) -> String {
    let mut all = Vec::new();
    tokio::time::timeout(WAIT, s.read_to_end(&mut all))
        .await
        .expect("the proxy closes the connection")
        .unwrap();
    String::from_utf8_lossy(&all).into_owned()
}

/// Reads until `text` contains `needle` (or fails after [`WAIT`]).
async fn read_until(s: &mut TcpStream, text: &mut String, needle: &str) {
    tokio::time::timeout(WAIT, async {
        let mut chunk = [0u8; 4096];
        while !text.contains(needle) {
            let n = s.read(&mut chunk).await.unwrap();
            assert!(n > 0, "closed before `{needle}`: {text}");
            text.push_str(&String::from_utf8_lossy(&chunk[..n]));
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no `{needle}` in {text}"));
}

async fn connect(p: &cutover_local::ProxyHandle) -> TcpStream {
    TcpStream::connect(p.data_addr()).await.unwrap()
}

/// A plain HTTP/1.1 GET.
const GET: &[u8] = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";

/// A proxy with `up` as both colours' upstream, and a connection to it.
async fn through(up: SocketAddr) -> (cutover_local::ProxyHandle, TcpStream) {
    let url = format!("http://{up}");
    let p = proxy(&[&url], &[&url], "").await;
    let c = connect(&p).await;
    (p, c)
}

/// An upstream for one connection: reads up to the end of a request head
/// (returning what it read), then hands the socket to `then`.
async fn after_a_head<F, Fut>(then: F) -> SocketAddr
where
    F: FnOnce(TcpStream, Vec<u8>) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let up = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let mut buf = [0u8; 1024];
        let mut seen = Vec::new();
        while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = s.read(&mut buf).await.unwrap();
            assert!(n > 0, "closed before a whole head");
            seen.extend_from_slice(&buf[..n]);
        }
        then(s, seen).await;
    });
    up
}

#[tokio::test]
async fn chunked_request_bodies_pass_through_chunked() {
    let (up, mut seen) = scripted_upstream(
        b"HTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok",
        false,
    )
    .await;
    let (p, mut c) = through(up).await;
    c.write_all(
        b"POST /upload HTTP/1.1\r\nHost: a.example\r\nTransfer-Encoding: chunked\r\n\r\n\
          5\r\nhello\r\n6;ext=x\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n",
    )
    .await
    .unwrap();
    let mut text = String::new();
    read_until(&mut c, &mut text, "\r\n\r\nok").await;
    assert!(text.starts_with("HTTP/1.1 201 Created\r\n"), "{text}");
    let request = String::from_utf8(seen.recv().await.unwrap()).unwrap();
    let (head, body) = request.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("POST /upload HTTP/1.1\r\n"), "{head}");
    assert_eq!(
        head.to_ascii_lowercase()
            .matches("transfer-encoding: chunked")
            .count(),
        1,
        "{head}"
    );
    assert_eq!(
        body,
        "5\r\nhello\r\n6;ext=x\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n"
    );
    p.shutdown().await;
}

#[tokio::test]
async fn chunked_responses_pass_to_http11_and_are_decoded_for_http10() {
    let (up, _seen) = scripted_upstream(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-App: 1\r\nX-Cutover-Colour: purple\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
        false,
    )
    .await;
    let url = format!("http://{up}");
    let p = proxy(&[&url], &[&url], "").await;

    // HTTP/1.1: passed on as it is, and the connection stays open.
    let mut c = connect(&p).await;
    let mut text = String::new();
    for round in 1..=2 {
        c.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        read_until(&mut c, &mut text, "0\r\n\r\n").await;
        let lower = text.to_ascii_lowercase();
        assert!(
            lower.contains("transfer-encoding: chunked\r\n"),
            "round {round}: {text}"
        );
        assert!(
            text.ends_with("\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"),
            "{text}"
        );
        assert!(!lower.contains("connection: close"), "{text}");
        assert_eq!(lower.matches("x-cutover-colour:").count(), 1, "{text}");
        assert!(!lower.contains("purple"), "the proxy's colour only: {text}");
        text.clear();
    }

    // HTTP/1.0: decoded, delimited by closing the connection.
    let mut c = connect(&p).await;
    c.write_all(b"GET / HTTP/1.0\r\n\r\n").await.unwrap();
    let text = read_to_close(&mut c).await;
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let head = head.to_ascii_lowercase();
    assert!(!head.contains("transfer-encoding"), "{head}");
    assert!(
        head.contains("connection: close") && head.contains("x-app: 1"),
        "{head}"
    );
    assert_eq!(body, "abcde");
    p.shutdown().await;
}

#[tokio::test]
async fn http10_keep_alive_is_honoured() {
    let blue = demo("blue").await;
    let p = proxy(&[&blue.url()], &[&blue.url()], "").await;
    let mut c = connect(&p).await;
    for _ in 0..2 {
        c.write_all(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
            .await
            .unwrap();
        let mut text = String::new();
        read_until(&mut c, &mut text, "\r\n\r\n").await;
        assert!(
            text.to_ascii_lowercase()
                .contains("connection: keep-alive\r\n"),
            "{text}"
        );
        let len: usize = text
            .to_ascii_lowercase()
            .lines()
            .find_map(|l| {
                l.strip_prefix("content-length: ")
                    .map(|v| v.trim().parse().unwrap())
            })
            .unwrap();
        let (_, body) = text.split_once("\r\n\r\n").unwrap();
        let mut body = body.as_bytes().to_vec();
        while body.len() < len {
            let mut chunk = [0u8; 1024];
            let n = c.read(&mut chunk).await.unwrap();
            assert!(n > 0);
            body.extend_from_slice(&chunk[..n]);
        }
    }
    assert_eq!(blue.received(), 2);
    p.shutdown().await;
}

#[tokio::test]
async fn pipelined_requests_are_answered_in_order() {
    let echo = echo_upstream().await;
    let url = format!("http://{echo}");
    let p = proxy(&[&url], &[&url], "").await;
    let mut c = connect(&p).await;
    c.write_all(
        b"GET /first HTTP/1.1\r\nHost: x\r\n\r\nHEAD /second HTTP/1.1\r\nHost: x\r\n\r\n\
          GET /third HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    let text = read_to_close(&mut c).await;
    let first = text.find("\"/first\"").expect("first answered");
    let third = text.find("\"/third\"").expect("third answered");
    assert!(first < third, "{text}");
    assert!(!text.contains("\"/second\""), "HEAD has no body: {text}");
    assert_eq!(text.matches("HTTP/1.1 200 OK\r\n").count(), 3, "{text}");
    p.shutdown().await;
}

#[tokio::test]
async fn expect_continue_is_answered_here_and_not_forwarded() {
    let echo = echo_upstream().await;
    let url = format!("http://{echo}");
    let p = proxy(&[&url], &[&url], "").await;
    let mut c = connect(&p).await;
    c.write_all(
        b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n",
    )
    .await
    .unwrap();
    let mut text = String::new();
    read_until(&mut c, &mut text, "HTTP/1.1 100 Continue\r\n\r\n").await;
    c.write_all(b"hello").await.unwrap();
    read_until(&mut c, &mut text, "\"x-forwarded-proto\"").await;
    read_until(&mut c, &mut text, "}").await;
    assert!(!text.contains("\"expect\""), "{text}");
    assert!(text.contains("\"content-length\":[\"5\"]"), "{text}");
    p.shutdown().await;
}

#[tokio::test]
async fn bad_requests_are_refused_before_reaching_an_upstream() {
    let blue = demo("blue").await;
    let p = proxy(&[&blue.url()], &[&blue.url()], "").await;
    let big = format!("GET / HTTP/1.1\r\nX-Big: {}\r\n\r\n", "a".repeat(70 * 1024));
    let cases: [(&str, &str, &str); 13] = [
        (
            "GET / HTTP/1.1\r\nHost: a b/c@d\r\n\r\n",
            "400 Bad Request",
            "Host `a b/c@d` is not a valid host[:port]",
        ),
        (
            "GET / HTTP/1.1\r\nHost: \r\n\r\n",
            "400 Bad Request",
            "Host `` is not a valid host[:port]",
        ),
        (
            "GET / HTTP/1.1\r\nHost: example.com:99999\r\n\r\n",
            "400 Bad Request",
            "is not a valid host[:port]",
        ),
        (
            "GET / HTTP/1.1\r\nHost: [::1\r\n\r\n",
            "400 Bad Request",
            "is not a valid host[:port]",
        ),
        (
            "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer_Encoding: chunked\r\n\r\nabcd",
            "400 Bad Request",
            "a `Transfer_Encoding` field: framing fields are spelt with `-`",
        ),
        (
            "POST / HTTP/1.1\r\nHost: x\r\ncontent_length: 4\r\n\r\nabcd",
            "400 Bad Request",
            "a `content_length` field",
        ),
        (
            "GET / HTTP/1.1\r\n\r\n",
            "400 Bad Request",
            "an HTTP/1.1 request without Host",
        ),
        (
            "GET / HTTP/1.1\r\nHost: a.example\r\nHost: b.example\r\n\r\n",
            "400 Bad Request",
            "more than one Host field",
        ),
        (
            "GET / HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
            "400 Bad Request",
            "both Transfer-Encoding and Content-Length",
        ),
        (
            "POST / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
            "400 Bad Request",
            "conflicting Content-Length",
        ),
        (
            "POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n",
            "501 Not Implemented",
            "only the `chunked` transfer coding",
        ),
        (
            "GE(T / HTTP/1.1\r\n\r\n",
            "400 Bad Request",
            "malformed request",
        ),
        (
            &big,
            "431 Request Header Fields Too Large",
            "request head over 64 KiB",
        ),
    ];
    for (request, status, says) in cases {
        let mut c = connect(&p).await;
        // The proxy may answer and close before it has read everything.
        let _ = c.write_all(request.as_bytes()).await;
        let text = read_to_close(&mut c).await;
        assert!(
            text.starts_with(&format!("HTTP/1.1 {status}\r\n")),
            "{text}"
        );
        assert!(text.contains(says), "{text}");
        assert!(
            text.to_ascii_lowercase().contains("connection: close"),
            "{text}"
        );
    }
    assert_eq!(blue.received(), 0, "nothing reached the upstream");
    // Valid hosts still pass.
    for host in [
        "example.com",
        "example.com:8080",
        "[::1]:80",
        "10.0.0.1",
        "a-b.c_d~",
    ] {
        let mut c = connect(&p).await;
        c.write_all(
            format!("GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
        let text = read_to_close(&mut c).await;
        assert!(text.starts_with("HTTP/1.1 200"), "{host}: {text}");
    }
    p.shutdown().await;
}

#[tokio::test]
async fn a_response_delimited_by_close_is_relayed_then_the_connection_closed() {
    let (up, _seen) = scripted_upstream(b"HTTP/1.1 200 OK\r\n\r\nuntil the end", true).await;
    let (p, mut c) = through(up).await;
    c.write_all(GET).await.unwrap();
    let text = read_to_close(&mut c).await;
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    assert!(
        head.to_ascii_lowercase().contains("connection: close"),
        "{head}"
    );
    assert_eq!(body, "until the end");
    p.shutdown().await;
}

#[tokio::test]
async fn an_upstream_dying_mid_body_closes_the_client_connection() {
    let (up, _seen) = scripted_upstream(
        b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npartial",
        true,
    )
    .await;
    let (p, mut c) = through(up).await;
    c.write_all(GET).await.unwrap();
    // The client sees the head and what came of the body, then the close
    // (it can tell the body is short of its Content-Length).
    let text = read_to_close(&mut c).await;
    assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
    assert!(text.ends_with("\r\n\r\npartial"), "{text}");
    p.shutdown().await;
}

#[tokio::test]
async fn a_body_delimited_by_close_cut_short_resets_the_client_connection() {
    // The upstream sends a head without a length, some body, then resets.
    let up = after_a_head(|mut s, _| async move {
        s.write_all(b"HTTP/1.1 200 OK\r\n\r\npartial")
            .await
            .unwrap();
        s.set_zero_linger().unwrap();
    })
    .await;
    let (p, mut c) = through(up).await;
    c.write_all(GET).await.unwrap();
    // A clean close would pass the cut body off as whole; a reset does not.
    let mut all = Vec::new();
    let ended = tokio::time::timeout(WAIT, c.read_to_end(&mut all))
        .await
        .expect("the proxy ends the connection");
    let err = ended.expect_err("a reset, not a clean end of stream");
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset, "{err}");
    p.shutdown().await;
}

#[tokio::test]
async fn an_answer_before_the_whole_upload_closes_the_client_connection() {
    // The upstream answers as soon as it has the head (a 413, say) and
    // does not read on; the client is still sending.
    let up = after_a_head(|mut s, _| async move {
        s.write_all(
            b"HTTP/1.1 413 Content Too Large\r\nContent-Length: 3\r\nConnection: close\r\n\r\nbig",
        )
        .await
        .unwrap();
        // Keep the socket open, unread, until the test ends.
        let _ = s.read(&mut [0u8; 1024]).await;
    })
    .await;
    let (p, mut c) = through(up).await;
    c.write_all(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n\r\nsome")
        .await
        .unwrap();
    let text = read_to_close(&mut c).await;
    assert!(
        text.starts_with("HTTP/1.1 413 Content Too Large\r\n"),
        "{text}"
    );
    assert!(text.ends_with("\r\n\r\nbig"), "{text}");
    // The head says so: the rest of the upload will not be read.
    assert!(
        text.to_ascii_lowercase()
            .contains("\r\nconnection: close\r\n"),
        "{text}"
    );
    p.shutdown_within(Duration::from_millis(100)).await;
}

/// A request whose `Connection` names `Content-Length` (or `Host`) keeps
/// them: dropping the length while still forwarding the body by it would
/// let the upstream read the body as a second request (smuggling).
#[tokio::test]
async fn connection_naming_content_length_does_not_smuggle_the_body() {
    let (up, mut seen) =
        scripted_upstream(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", false).await;
    let (p, mut c) = through(up).await;
    let smuggled = "GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n";
    c.write_all(
        format!(
            "POST / HTTP/1.1\r\nHost: x\r\nConnection: Content-Length\r\nContent-Length: {}\r\n\r\n{smuggled}",
            smuggled.len()
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let mut text = String::new();
    read_until(&mut c, &mut text, "\r\n\r\nok").await;
    let first = String::from_utf8(seen.recv().await.unwrap()).unwrap();
    assert!(
        first
            .to_ascii_lowercase()
            .contains(&format!("content-length: {}\r\n", smuggled.len())),
        "the body's length is not forwarded: {first:?}"
    );
    assert!(
        first.ends_with(smuggled),
        "the body is one request's: {first:?}"
    );
    p.shutdown().await;
}

/// The same on the way back: the response keeps its `Content-Length`, so
/// the client can tell where it ends.
#[tokio::test]
async fn connection_naming_content_length_in_a_response_keeps_its_framing() {
    let (up, _seen) = scripted_upstream(
        b"HTTP/1.1 200 OK\r\nConnection: Content-Length\r\nContent-Length: 2\r\n\r\nok",
        false,
    )
    .await;
    let (p, mut c) = through(up).await;
    c.write_all(GET).await.unwrap();
    let mut text = String::new();
    read_until(&mut c, &mut text, "\r\n\r\nok").await;
    let head = text.split_once("\r\n\r\n").unwrap().0.to_ascii_lowercase();
    assert!(
        head.contains("content-length: 2\r\n") || head.contains("connection: close"),
        "the client cannot delimit the body: {head}"
    );
    p.shutdown().await;
}

/// A chunked body whose trailer section ends in a bare LF is refused: an
/// upstream that accepts LF line ends would see the body end there and
/// what follows as another request, which the proxy would have forwarded
/// as part of this body.
#[tokio::test]
async fn a_bare_lf_ending_the_trailers_is_not_forwarded() {
    let (up, mut seen) = scripted_upstream(
        b"HTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok",
        false,
    )
    .await;
    let (p, mut c) = through(up).await;
    c.write_all(
        b"POST / HTTP/1.1\r\nHost: x\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n\
          1\r\na\r\n0\r\n\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n",
    )
    .await
    .unwrap();
    let text = read_to_close(&mut c).await;
    assert!(
        !text.starts_with("HTTP/1.1 201"),
        "the body with a bare-LF end was forwarded and answered: {text}"
    );
    if let Ok(request) = seen.try_recv() {
        let request = String::from_utf8_lossy(&request);
        assert!(!request.contains("/smuggled"), "{request}");
    }
    p.shutdown().await;
}

/// An HTTP/1.0 client's `Expect: 100-continue` is ignored (RFC 9110
/// §10.1.1): it knows no interim responses and would take a 100 as final.
#[tokio::test]
async fn http10_expect_continue_gets_no_interim_response() {
    let (head_seen, head_came) = tokio::sync::oneshot::channel();
    let up = after_a_head(|mut s, mut seen| async move {
        let _ = head_seen.send(());
        let end = seen.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
        let mut buf = [0u8; 1024];
        while seen.len() < end + 5 {
            let n = s.read(&mut buf).await.unwrap();
            assert!(n > 0);
            seen.extend_from_slice(&buf[..n]);
        }
        s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
            .await
            .unwrap();
    })
    .await;
    let (p, mut c) = through(up).await;
    c.write_all(b"POST / HTTP/1.0\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
        .await
        .unwrap();
    // The head reached the upstream: anything the proxy wrote to the
    // client before that is in the client's socket already.
    head_came.await.unwrap();
    c.write_all(b"hello").await.unwrap();
    let text = read_to_close(&mut c).await;
    assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
    p.shutdown().await;
}

/// A response's transfer codings reach an HTTP/1.1 client as sent, so
/// `gzip, chunked` is not passed off as plain `chunked`.
#[tokio::test]
async fn a_response_transfer_coding_besides_chunked_is_not_lost() {
    let (up, _seen) = scripted_upstream(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n3\r\n\x1f\x8b\x08\r\n0\r\n\r\n",
        false,
    )
    .await;
    let (p, mut c) = through(up).await;
    c.write_all(GET).await.unwrap();
    let mut text = String::new();
    read_until(&mut c, &mut text, "0\r\n\r\n").await;
    let head = text.split_once("\r\n\r\n").unwrap().0.to_ascii_lowercase();
    assert!(head.contains("gzip"), "the gzip coding is lost: {head}");
    p.shutdown().await;
}

#[tokio::test]
async fn an_absolute_form_target_names_the_host() {
    let echo = echo_upstream().await;
    let url = format!("http://{echo}");
    let p = proxy(&[&url], &[&url], "").await;
    let (status, _, body) = raw_request(
        p.data_addr(),
        "GET http://shop.example:8080/p?q=1 HTTP/1.1\r\nHost: other.example\r\n\r\n",
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let seen: std::collections::HashMap<String, Vec<String>> = serde_json::from_str(&body).unwrap();
    assert_eq!(seen["host"], ["shop.example:8080"]);
    assert_eq!(seen["x-forwarded-host"], ["shop.example:8080"]);
    assert_eq!(seen[":path"], ["/p?q=1"]);
    // HTTP/1.0 without Host is fine; the upstream gets its own authority.
    let (status, _, body) = raw_request(p.data_addr(), "GET /p HTTP/1.0\r\n\r\n").await;
    assert_eq!(status, 200, "{body}");
    let seen: std::collections::HashMap<String, Vec<String>> = serde_json::from_str(&body).unwrap();
    assert_eq!(seen["host"], [echo.to_string()]);
    p.shutdown().await;
}

#[tokio::test]
async fn an_http10_request_with_transfer_encoding_closes_after_its_response() {
    let echo = echo_upstream().await;
    let url = format!("http://{echo}");
    let p = proxy(&[&url], &[&url], "").await;
    let mut c = connect(&p).await;
    c.write_all(
        b"POST /echo HTTP/1.0\r\nConnection: keep-alive\r\nTransfer-Encoding: chunked\r\n\r\n\
          3\r\nabc\r\n0\r\n\r\n",
    )
    .await
    .unwrap();
    let text = read_to_close(&mut c).await;
    assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
    assert!(
        text.to_ascii_lowercase()
            .contains("\r\nconnection: close\r\n"),
        "{text}"
    );
    p.shutdown().await;
}

/// A trailer carrying `Content-Length` (or `Transfer-Encoding`, `Host`,
/// also spelt with `_`) is refused with a 400 before the upstream gets a
/// whole request: a recipient that merged trailers into the head would
/// frame the message anew. It was forwarded as it was.
#[tokio::test]
async fn framing_fields_in_request_trailers_are_answered_400_and_not_forwarded() {
    for trailer in [
        "Content-Length: 50",
        "Transfer_Encoding: gzip",
        "host: evil.example",
    ] {
        let (up, mut seen) = scripted_upstream(
            b"HTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok",
            false,
        )
        .await;
        let (p, mut c) = through(up).await;
        c.write_all(
            format!(
                "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n1\r\na\r\n0\r\n{trailer}\r\n\r\n"
            )
            .as_bytes(),
        )
        .await
        .unwrap();
        let text = read_to_close(&mut c).await;
        assert!(
            text.starts_with("HTTP/1.1 400 Bad Request\r\n"),
            "{trailer}: {text}"
        );
        assert!(text.contains("in the trailers"), "{text}");
        assert!(
            text.to_ascii_lowercase().contains("connection: close"),
            "{text}"
        );
        assert!(
            seen.try_recv().is_err(),
            "{trailer}: the upstream got a whole request"
        );
        p.shutdown().await;
    }
}
