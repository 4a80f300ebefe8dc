//! The data plane: one request in, one upstream chosen, the response
//! streamed back.
//!
//! The request path takes no lock and logs nothing: the colour comes from
//! [`SplitState::next`](super::balancer::SplitState::next) (one atomic add),
//! the upstream from its pool's atomic counter, and the metrics are atomic
//! adds. Bodies are streamed both ways (hyper `Incoming` in, `Incoming`
//! out); `request_timeout` bounds the wait for the upstream's response
//! head, not the body that follows.
//!
//! Not supported: protocol upgrades (WebSocket; `Upgrade` is hop-by-hop and
//! removed), `CONNECT` (405), TLS, HTTP/2 to clients or upstreams.

use std::sync::Arc;

use bytes::Bytes;
use cutover_core::time::Human;
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::http::uri::PathAndQuery;
use hyper::{Method, Request, Response, StatusCode, Uri, Version};
use tokio::time::Instant;

use super::upstream::PooledBody;
use super::{Connections, Shared};
use crate::api::Colour;
use crate::util::error_chain;

/// Response bodies of the data plane: the upstream's, streamed, or one we made.
pub type ProxyBody = Either<PooledBody, Full<Bytes>>;

pub(crate) static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub(crate) static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub(crate) static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
/// Response header naming the colour that served the request.
pub static X_CUTOVER_COLOUR: HeaderName = HeaderName::from_static("x-cutover-colour");
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");

/// What a connection's requests share: the proxy and the peer's address.
pub struct Conn {
    pub shared: Arc<Shared>,
    /// This event loop's connections to the upstreams.
    pub connections: Connections,
    /// The peer's IP as a header value, for X-Forwarded-For.
    pub peer_ip: HeaderValue,
}

/// Proxies one request.
pub async fn handle(conn: Arc<Conn>, req: Request<Incoming>) -> Response<ProxyBody> {
    let shared = &*conn.shared;
    if req.method() == Method::CONNECT {
        let mut r = error_response(
            StatusCode::METHOD_NOT_ALLOWED,
            "cutover: CONNECT is not supported\n".into(),
        );
        r.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
        return r;
    }
    let start = Instant::now();
    let (mut parts, body) = req.into_parts();
    let (colour, set_cookie) = choose_colour(shared, &parts.headers);
    let upstream = shared.pools[colour.index()].pick();

    let client_version = parts.version;
    let host = parts.headers.get(header::HOST).cloned();
    strip_hop_by_hop(&mut parts.headers);
    parts.headers.remove(header::EXPECT); // hyper answered any 100-continue already
    append_forwarded_for(&mut parts.headers, &conn.peer_ip);
    parts
        .headers
        .insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static("http"));
    if let Some(host) = host {
        parts.headers.insert(X_FORWARDED_HOST.clone(), host);
    }
    if parts.uri.scheme().is_some() || parts.uri.authority().is_some() {
        // Absolute-form (a client talking to us as to a forward proxy):
        // upstreams get origin-form.
        parts.uri = Uri::from(
            parts
                .uri
                .path_and_query()
                .cloned()
                .unwrap_or_else(|| PathAndQuery::from_static("/")),
        );
    }
    if !parts.headers.contains_key(header::HOST) {
        parts.headers.insert(header::HOST, upstream.host.clone());
    }
    parts.version = Version::HTTP_11;

    let sent = conn.connections[upstream.slot].request(Request::from_parts(parts, body));
    let mut response =
        match tokio::time::timeout_at(start + shared.config.request_timeout, sent).await {
            Ok(Ok(response)) => {
                let (mut head, body) = response.into_parts();
                strip_hop_by_hop(&mut head.headers);
                head.version = client_version;
                Response::from_parts(head, Either::Left(body))
            }
            Ok(Err(e)) => {
                let reason = if e.is_connect() {
                    "unreachable"
                } else {
                    "failed"
                };
                error_response(
                    StatusCode::BAD_GATEWAY,
                    format!(
                        "cutover: {colour} upstream {} {reason}: {}\n",
                        upstream.url,
                        error_chain(&e)
                    ),
                )
            }
            Err(_) => error_response(
                StatusCode::GATEWAY_TIMEOUT,
                format!(
                    "cutover: {colour} upstream {} sent no response within {}\n",
                    upstream.url,
                    Human(shared.config.request_timeout)
                ),
            ),
        };
    let headers = response.headers_mut();
    headers.insert(
        X_CUTOVER_COLOUR.clone(),
        shared.colour_header[colour.index()].clone(),
    );
    if set_cookie {
        if let Some(cookies) = &shared.set_cookie {
            headers.append(header::SET_COOKIE, cookies[colour.index()].clone());
        }
    }
    let now = Instant::now();
    shared.metrics.record(
        colour,
        response.status().is_server_error(),
        now - start,
        now,
    );
    response
}

fn error_response(status: StatusCode, body: String) -> Response<ProxyBody> {
    let mut r = Response::new(Either::Right(Full::new(Bytes::from(body))));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// The colour for a request, and whether to (re)set the sticky cookie.
#[inline]
fn choose_colour(shared: &Shared, headers: &HeaderMap) -> (Colour, bool) {
    let Some(cookie) = &shared.config.sticky_cookie else {
        return (shared.split.next(), false);
    };
    match cookie_colour(headers, cookie) {
        Some(colour) => {
            let split = shared.split.get();
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
        None => (shared.split.next(), true),
    }
}

/// The colour named by the sticky cookie, if the request has a valid one.
fn cookie_colour(headers: &HeaderMap, name: &str) -> Option<Colour> {
    for value in headers.get_all(header::COOKIE) {
        let Ok(value) = value.to_str() else { continue };
        for pair in value.split(';') {
            let Some((k, v)) = pair.split_once('=') else {
                continue;
            };
            if k.trim() == name {
                match v.trim().trim_matches('"') {
                    "blue" => return Some(Colour::Blue),
                    "green" => return Some(Colour::Green),
                    _ => {}
                }
            }
        }
    }
    None
}

const CONNECTION_BIT: u8 = 1;
const PROXY_BIT: u8 = 2;

/// Which hop-by-hop header `name` is, as a bit; 0 for an end-to-end one.
/// Standard names compare by tag; only custom ones look at the string.
#[inline]
fn hop_by_hop_bit(name: &HeaderName) -> u8 {
    if name == header::CONNECTION {
        CONNECTION_BIT
    } else if name == header::TE {
        4
    } else if name == header::TRAILER {
        8
    } else if name == header::TRANSFER_ENCODING {
        16
    } else if name == header::UPGRADE {
        32
    } else if name == KEEP_ALIVE {
        64
    } else if name.as_str().starts_with("proxy-") {
        PROXY_BIT
    } else {
        0
    }
}

/// Removes hop-by-hop headers: Connection and every header it names,
/// Keep-Alive, Proxy-*, TE, Trailer, Transfer-Encoding and Upgrade.
///
/// One pass over the names finds which are there; the common cases (none,
/// or `Connection: keep-alive` from an upstream) allocate nothing.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let found = headers.keys().fold(0, |acc, k| acc | hop_by_hop_bit(k));
    if found == 0 {
        return;
    }
    if found & CONNECTION_BIT != 0 {
        let mut named = Vec::new();
        for value in headers.get_all(header::CONNECTION) {
            for token in value.as_bytes().split(|&b| b == b',') {
                let token = token.trim_ascii();
                // `keep-alive` names a header removed anyway; `close` is an option.
                if token.is_empty()
                    || token.eq_ignore_ascii_case(b"keep-alive")
                    || token.eq_ignore_ascii_case(b"close")
                {
                    continue;
                }
                if let Ok(name) = HeaderName::from_bytes(token) {
                    named.push(name);
                }
            }
        }
        for name in named {
            headers.remove(name);
        }
        headers.remove(header::CONNECTION);
    }
    for (bit, name) in [
        (4, &header::TE),
        (8, &header::TRAILER),
        (16, &header::TRANSFER_ENCODING),
        (32, &header::UPGRADE),
        (64, &KEEP_ALIVE),
    ] {
        if found & bit != 0 {
            headers.remove(name);
        }
    }
    if found & PROXY_BIT != 0 {
        let proxy: Vec<HeaderName> = headers
            .keys()
            .filter(|k| k.as_str().starts_with("proxy-"))
            .cloned()
            .collect();
        for name in proxy {
            headers.remove(name);
        }
    }
}

fn append_forwarded_for(headers: &mut HeaderMap, peer_ip: &HeaderValue) {
    match headers.entry(X_FORWARDED_FOR.clone()) {
        header::Entry::Vacant(v) => {
            v.insert(peer_ip.clone());
        }
        header::Entry::Occupied(mut o) => {
            let mut joined = Vec::with_capacity(64);
            for v in o.iter() {
                joined.extend_from_slice(v.as_bytes());
                joined.extend_from_slice(b", ");
            }
            joined.extend_from_slice(peer_ip.as_bytes());
            if let Ok(v) = HeaderValue::from_bytes(&joined) {
                o.insert(v);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_hop_by_hop_and_connection_named_headers() {
        let mut h = HeaderMap::new();
        for (k, v) in [
            ("connection", "keep-alive, X-Secret"),
            ("keep-alive", "timeout=5"),
            ("x-secret", "1"),
            ("proxy-authorization", "Basic x"),
            ("proxy-foo", "1"),
            ("te", "trailers"),
            ("trailer", "x-t"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "websocket"),
            ("x-keep", "yes"),
            ("content-length", "3"),
        ] {
            h.append(HeaderName::from_static(k), HeaderValue::from_static(v));
        }
        strip_hop_by_hop(&mut h);
        let mut left: Vec<_> = h.keys().map(|k| k.as_str()).collect();
        left.sort();
        assert_eq!(left, ["content-length", "x-keep"]);
    }

    #[test]
    fn forwarded_for_appends() {
        let ip = HeaderValue::from_static("10.0.0.9");
        let mut h = HeaderMap::new();
        append_forwarded_for(&mut h, &ip);
        assert_eq!(h[&X_FORWARDED_FOR], "10.0.0.9");
        let mut h = HeaderMap::new();
        h.append(&X_FORWARDED_FOR, HeaderValue::from_static("1.1.1.1"));
        h.append(&X_FORWARDED_FOR, HeaderValue::from_static("2.2.2.2"));
        append_forwarded_for(&mut h, &ip);
        assert_eq!(h.get_all(&X_FORWARDED_FOR).iter().count(), 1);
        assert_eq!(h[&X_FORWARDED_FOR], "1.1.1.1, 2.2.2.2, 10.0.0.9");
    }

    #[test]
    fn reads_the_sticky_cookie() {
        let mut h = HeaderMap::new();
        h.append(
            header::COOKIE,
            HeaderValue::from_static("a=1; cutover-colour=green; b=2"),
        );
        assert_eq!(cookie_colour(&h, "cutover-colour"), Some(Colour::Green));
        assert_eq!(cookie_colour(&h, "other"), None);
        let mut h = HeaderMap::new();
        h.append(
            header::COOKIE,
            HeaderValue::from_static("cutover-colour=purple"),
        );
        assert_eq!(cookie_colour(&h, "cutover-colour"), None);
    }
}
