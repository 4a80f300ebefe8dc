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
use hyper::http::uri::{PathAndQuery, Scheme};
use hyper::{Method, Request, Response, StatusCode, Uri, Version};
use tokio::time::Instant;

use super::Shared;
use crate::api::Colour;
use crate::util::error_chain;

/// Response bodies of the data plane: the upstream's, streamed, or one we made.
pub type ProxyBody = Either<Incoming, Full<Bytes>>;

pub(crate) static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub(crate) static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub(crate) static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
/// Response header naming the colour that served the request.
pub static X_CUTOVER_COLOUR: HeaderName = HeaderName::from_static("x-cutover-colour");
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");

/// What a connection's requests share: the proxy and the peer's address.
pub struct Conn {
    pub shared: Arc<Shared>,
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
    let mut uri = hyper::http::uri::Parts::default();
    uri.scheme = Some(Scheme::HTTP);
    uri.authority = Some(upstream.url.authority().clone());
    uri.path_and_query = Some(
        parts
            .uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/")),
    );
    parts.uri = Uri::from_parts(uri).expect("scheme, authority and path make a URI");
    parts.version = Version::HTTP_11;

    let sent = shared.client.request(Request::from_parts(parts, body));
    let mut response = match tokio::time::timeout(shared.config.request_timeout, sent).await {
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

fn is_hop_by_hop(name: &HeaderName) -> bool {
    name == header::CONNECTION
        || name == KEEP_ALIVE
        || name == header::TE
        || name == header::TRAILER
        || name == header::TRANSFER_ENCODING
        || name == header::UPGRADE
        || name.as_str().starts_with("proxy-")
}

/// Removes hop-by-hop headers: Connection and every header it names,
/// Keep-Alive, Proxy-*, TE, Trailer, Transfer-Encoding and Upgrade.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    if !headers.keys().any(is_hop_by_hop) {
        return; // the common case: one pass, no allocation
    }
    let mut doomed: Vec<HeaderName> = headers
        .keys()
        .filter(|k| is_hop_by_hop(k))
        .cloned()
        .collect();
    for value in headers.get_all(header::CONNECTION) {
        for token in value.to_str().unwrap_or("").split(',') {
            if let Ok(name) = HeaderName::from_bytes(token.trim().as_bytes()) {
                doomed.push(name);
            }
        }
    }
    for name in doomed {
        headers.remove(name);
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
