//! HTTP/1.x for the data plane: what a message head says about its body
//! and connection, which headers are hop-by-hop, chunked framing, and the
//! bytes of the heads the proxy writes. Pure functions over byte slices;
//! the I/O is in [`super::forward`].
//!
//! Heads are parsed by `httparse` (which checks token and value syntax);
//! the rules on top follow RFC 9112:
//! - a request with both `Transfer-Encoding` and `Content-Length`, with
//!   conflicting `Content-Length`s, or with a transfer coding other than
//!   `chunked` is refused (400 / 501): the ways a request is smuggled;
//! - a response says how its body ends: not at all (HEAD, 1xx, 204, 304),
//!   by `chunked`, by `Content-Length`, or when the connection closes.

use std::fmt;

/// The longest message head accepted, request or response.
pub const MAX_HEAD: usize = 64 * 1024;
/// The most header fields in one head.
pub const MAX_HEADERS: usize = 128;

/// How a message's body is delimited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Framing {
    /// No body.
    None,
    /// Exactly this many bytes.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
    /// Until the sender closes the connection (responses only).
    UntilClose,
}

/// Why a request head is refused; each maps to a status the client gets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RequestError {
    /// 400: the head does not parse, or its framing is ambiguous.
    Malformed(String),
    /// 431: head larger than [`MAX_HEAD`] or more than [`MAX_HEADERS`] fields.
    TooLarge,
    /// 501: a transfer coding other than `chunked`.
    UnsupportedCoding,
}

impl RequestError {
    pub fn status(&self) -> (u16, &'static str) {
        match self {
            RequestError::Malformed(_) => (400, "Bad Request"),
            RequestError::TooLarge => (431, "Request Header Fields Too Large"),
            RequestError::UnsupportedCoding => (501, "Not Implemented"),
        }
    }
}

impl fmt::Display for RequestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RequestError::Malformed(why) => write!(f, "malformed request: {why}"),
            RequestError::TooLarge => write!(
                f,
                "request head over {} KiB or {MAX_HEADERS} header fields",
                MAX_HEAD / 1024
            ),
            RequestError::UnsupportedCoding => {
                write!(f, "only the `chunked` transfer coding is supported")
            }
        }
    }
}

/// What the data plane reads off a head's header fields.
#[derive(Debug, Default)]
pub struct Fields<'b> {
    pub content_length: Option<u64>,
    /// `Transfer-Encoding` present; `chunked` whether its last coding is;
    /// `only_chunked` whether `chunked` is its one and only coding.
    pub transfer_encoding: bool,
    pub chunked: bool,
    pub only_chunked: bool,
    /// How many `Host` fields.
    pub hosts: usize,
    /// `Connection: close` / `keep-alive`.
    pub close: bool,
    pub keep_alive: bool,
    /// Other headers named in `Connection` (to be removed, hop-by-hop).
    pub named: Vec<&'b [u8]>,
    pub host: Option<&'b [u8]>,
    /// `Expect: 100-continue`.
    pub expect_continue: bool,
}

/// Reads the fields that matter for framing and forwarding.
pub fn fields<'b>(headers: &[httparse::Header<'b>]) -> Result<Fields<'b>, String> {
    let mut f = Fields::default();
    for h in headers {
        let name = h.name.as_bytes();
        if name.eq_ignore_ascii_case(b"content-length") {
            let n = parse_length(h.value)
                .ok_or_else(|| format!("Content-Length `{}` is not a length", lossy(h.value)))?;
            if f.content_length.is_some_and(|m| m != n) {
                return Err("conflicting Content-Length fields".into());
            }
            f.content_length = Some(n);
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            let first = !f.transfer_encoding;
            f.transfer_encoding = true;
            let mut codings = 0;
            // The last coding of the last field decides.
            for coding in tokens(h.value) {
                codings += 1;
                f.chunked = coding.eq_ignore_ascii_case(b"chunked");
            }
            f.only_chunked = first && codings == 1 && f.chunked;
        } else if name.eq_ignore_ascii_case(b"connection") {
            for token in tokens(h.value) {
                if token.eq_ignore_ascii_case(b"close") {
                    f.close = true;
                } else if token.eq_ignore_ascii_case(b"keep-alive") {
                    f.keep_alive = true;
                } else if !frames_the_message(token) {
                    // A field that frames the message or names its host is
                    // never dropped on `Connection`'s word: that would let
                    // the two hops read the body differently.
                    f.named.push(token);
                }
            }
        } else if name.eq_ignore_ascii_case(b"host") {
            f.hosts += 1;
            f.host = Some(h.value);
        } else if name.eq_ignore_ascii_case(b"expect") {
            f.expect_continue = h.value.trim_ascii().eq_ignore_ascii_case(b"100-continue");
        }
    }
    Ok(f)
}

/// Whether `name` is a framing or routing field (`Content-Length`,
/// `Transfer-Encoding`, `Host`) spelt with `_` for `-`: servers that map
/// header names to variables (CGI and its heirs) read it as the real one,
/// so a hop that forwards it lets two recipients frame one message
/// differently.
pub fn is_disguised_framing_field(name: &[u8]) -> bool {
    name.contains(&b'_') && {
        let dashed: Vec<u8> = name
            .iter()
            .map(|&b| if b == b'_' { b'-' } else { b })
            .collect();
        frames_the_message(&dashed)
    }
}

/// Whether `value` is a valid `Host` (RFC 9110 §7.2: `uri-host [ ":"
/// port ]`): a registered name, an IPv4 address or a bracketed IPv6
/// address, and a port within 1..=65535 if there is one. Empty, spaces,
/// `/`, `@` and other characters a URI's authority cannot hold are not.
pub fn valid_host(value: &[u8]) -> bool {
    let port = if value.first() == Some(&b'[') {
        let Some(end) = value.iter().position(|&b| b == b']') else {
            return false;
        };
        let inside = &value[1..end];
        if inside.is_empty()
            || !inside
                .iter()
                .all(|&b| b.is_ascii_hexdigit() || b == b':' || b == b'.')
        {
            return false;
        }
        match &value[end + 1..] {
            [] => None,
            [b':', port @ ..] => Some(port),
            _ => return false,
        }
    } else {
        let (host, port) = match value.iter().rposition(|&b| b == b':') {
            Some(i) => (&value[..i], Some(&value[i + 1..])),
            None => (value, None),
        };
        let reg_name = |b: u8| b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=%".contains(&b);
        if host.is_empty() || !host.iter().all(|&b| reg_name(b)) {
            return false;
        }
        port
    };
    // At most five digits, so the parse cannot overflow.
    port.is_none_or(|p| {
        (1..=5).contains(&p.len())
            && p.iter().all(u8::is_ascii_digit)
            && matches!(
                std::str::from_utf8(p).map(str::parse::<u32>),
                Ok(Ok(1..=65535))
            )
    })
}

/// The host part of a valid `host[:port]`, without the port (an IPv6
/// literal keeps its brackets).
pub fn host_without_port(value: &[u8]) -> &[u8] {
    if value.first() == Some(&b'[') {
        let end = value
            .iter()
            .position(|&b| b == b']')
            .map_or(value.len(), |e| e + 1);
        return &value[..end];
    }
    match value.iter().rposition(|&b| b == b':') {
        Some(i) => &value[..i],
        None => value,
    }
}

/// `Content-Length`, `Transfer-Encoding` and `Host`: fields the proxy
/// itself reads to frame and route a message.
fn frames_the_message(name: &[u8]) -> bool {
    name.eq_ignore_ascii_case(b"content-length")
        || name.eq_ignore_ascii_case(b"transfer-encoding")
        || name.eq_ignore_ascii_case(b"host")
}

/// A request body's framing (RFC 9112 §6.3, as a server).
pub fn request_framing(f: &Fields<'_>) -> Result<Framing, RequestError> {
    if f.transfer_encoding {
        if f.content_length.is_some() {
            return Err(RequestError::Malformed(
                "both Transfer-Encoding and Content-Length".into(),
            ));
        }
        // Only `chunked` alone: the proxy passes chunks on as they are and
        // has no way to tell an upstream about other codings.
        return if f.only_chunked {
            Ok(Framing::Chunked)
        } else {
            Err(RequestError::UnsupportedCoding)
        };
    }
    Ok(match f.content_length {
        None | Some(0) => Framing::None,
        Some(n) => Framing::Length(n),
    })
}

/// A response body's framing (RFC 9112 §6.3, as a client).
pub fn response_framing(status: u16, head_request: bool, f: &Fields<'_>) -> Framing {
    if head_request || (100..200).contains(&status) || status == 204 || status == 304 {
        Framing::None
    } else if f.transfer_encoding {
        if f.chunked {
            Framing::Chunked
        } else {
            Framing::UntilClose
        }
    } else {
        match f.content_length {
            Some(0) => Framing::None,
            Some(n) => Framing::Length(n),
            None => Framing::UntilClose,
        }
    }
}

/// Whether a connection stays open after this message, by its version and
/// `Connection` field.
pub fn persistent(minor_version: u8, f: &Fields<'_>) -> bool {
    if minor_version == 0 {
        f.keep_alive && !f.close
    } else {
        !f.close
    }
}

/// Whether a header field is hop-by-hop: `Connection`, `Keep-Alive`,
/// `Proxy-*`, `TE`, `Trailer`, `Transfer-Encoding`, `Upgrade`, or one that
/// `Connection` names. These are not forwarded.
#[inline]
pub fn is_hop_by_hop(name: &str, named: &[&[u8]]) -> bool {
    let n = name.as_bytes();
    let fixed = match n.len() {
        2 => n.eq_ignore_ascii_case(b"te"),
        7 => n.eq_ignore_ascii_case(b"trailer") || n.eq_ignore_ascii_case(b"upgrade"),
        10 => n.eq_ignore_ascii_case(b"connection") || n.eq_ignore_ascii_case(b"keep-alive"),
        17 => n.eq_ignore_ascii_case(b"transfer-encoding"),
        _ => false,
    };
    fixed
        || (n.len() >= 6 && n[..6].eq_ignore_ascii_case(b"proxy-"))
        || named.iter().any(|t| t.eq_ignore_ascii_case(n))
}

/// Comma-separated tokens of a field value, trimmed, empty ones skipped.
pub fn tokens(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value
        .split(|&b| b == b',')
        .map(|t| t.trim_ascii())
        .filter(|t| !t.is_empty())
}

fn parse_length(value: &[u8]) -> Option<u64> {
    let v = value.trim_ascii();
    if v.is_empty() || v.len() > 19 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    v.iter().try_fold(0u64, |n, &d| {
        n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
    })
}

/// The origin-form of a request target: `/path?query` of an absolute-form
/// `http://host/path?query` (`/` when it has no path); others as they are.
pub fn origin_form(target: &str) -> &str {
    if target.starts_with('/') || target == "*" {
        return target;
    }
    let Some(after_scheme) = target.find("://").map(|i| &target[i + 3..]) else {
        return target;
    };
    match after_scheme.find(['/', '?']) {
        Some(i) if after_scheme.as_bytes()[i] == b'/' => &after_scheme[i..],
        // `http://host?q` has an empty path: the caller writes `/` first.
        Some(i) => &after_scheme[i..],
        None => "",
    }
}

/// The authority (`host[:port]`) of an absolute-form target
/// (`http://host:port/path`); `None` for any other form.
pub fn target_authority(target: &str) -> Option<&str> {
    if target.starts_with('/') || target == "*" {
        return None;
    }
    let after_scheme = &target[target.find("://")? + 3..];
    let end = after_scheme.find(['/', '?']).unwrap_or(after_scheme.len());
    Some(&after_scheme[..end]).filter(|a| !a.is_empty())
}

pub fn lossy(b: &[u8]) -> std::borrow::Cow<'_, str> {
    String::from_utf8_lossy(b)
}

/// Appends `n` in decimal.
pub fn push_decimal(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

/// Appends `name: value\r\n`.
#[inline]
pub fn push_field(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// A chunked body's framing error.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChunkError(pub &'static str);

impl fmt::Display for ChunkError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "bad chunked body: {}", self.0)
    }
}

/// Fields that may not be trailers: they frame or route the message, and
/// a recipient merging trailers into the head would read it anew. Also
/// refused spelt with `_` for `-`.
const NOT_TRAILERS: [&[u8]; 3] = [b"content-length", b"transfer-encoding", b"host"];
const ALL_NOT_TRAILERS: u8 = (1 << NOT_TRAILERS.len()) - 1;

/// Which of `possible` still match after byte `b` at position `at`.
fn still_possible(possible: u8, at: u8, b: u8) -> u8 {
    let at = usize::from(at);
    let mut left = 0;
    for (i, name) in NOT_TRAILERS.iter().enumerate() {
        let matches = name
            .get(at)
            .is_some_and(|&c| c.eq_ignore_ascii_case(&b) || (c == b'-' && b == b'_'));
        if possible & 1 << i != 0 && matches {
            left |= 1 << i;
        }
    }
    left
}

/// Follows a chunked body byte by byte, to find where it ends (the
/// proxy passes chunked bodies on as they are) or to take the data out of
/// it (for an HTTP/1.0 client, which cannot read chunked).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Chunks {
    /// In a chunk-size line; `digits` read so far.
    Size {
        size: u64,
        digits: u8,
    },
    /// Whitespace after the size, before `;` or CR.
    SizeSpace {
        size: u64,
    },
    /// In chunk extensions (after `;`), until CR.
    Extension {
        size: u64,
    },
    /// After the size line's CR.
    SizeLf {
        size: u64,
    },
    /// In a chunk's data.
    Data(u64),
    DataCr,
    DataLf,
    /// At the start of a trailer line (or of the final empty line).
    TrailerStart,
    /// In a trailer field's name: `len` bytes read, `possible` the
    /// [`NOT_TRAILERS`] it may still be (one bit each).
    TrailerName {
        possible: u8,
        len: u8,
    },
    /// Inside a trailer field line's value.
    Trailer,
    /// After a trailer line's CR.
    TrailerLf,
    /// After the final CR.
    EndLf,
    Done,
}

impl Default for Chunks {
    fn default() -> Self {
        Chunks::Size { size: 0, digits: 0 }
    }
}

impl Chunks {
    /// Reads `bytes`, handing chunk data to `data`; returns how many bytes
    /// belong to the body (all of them, or up to the end of the body).
    pub fn scan(&mut self, bytes: &[u8], mut data: impl FnMut(&[u8])) -> Result<usize, ChunkError> {
        let mut i = 0;
        while i < bytes.len() {
            let b = bytes[i];
            *self = match *self {
                Chunks::Size { size, digits } => match hex(b) {
                    Some(d) => {
                        if digits >= 16 {
                            return Err(ChunkError("chunk size too large"));
                        }
                        Chunks::Size {
                            size: size << 4 | u64::from(d),
                            digits: digits + 1,
                        }
                    }
                    None if digits == 0 => return Err(ChunkError("no chunk size")),
                    None => match b {
                        b'\r' => Chunks::SizeLf { size },
                        b';' => Chunks::Extension { size },
                        b' ' | b'\t' => Chunks::SizeSpace { size },
                        _ => return Err(ChunkError("invalid chunk size")),
                    },
                },
                Chunks::SizeSpace { size } => match b {
                    b' ' | b'\t' => Chunks::SizeSpace { size },
                    b';' => Chunks::Extension { size },
                    b'\r' => Chunks::SizeLf { size },
                    _ => return Err(ChunkError("invalid chunk size")),
                },
                Chunks::Extension { size } => match b {
                    b'\r' => Chunks::SizeLf { size },
                    b'\n' => return Err(ChunkError("bare LF after a chunk size")),
                    _ => Chunks::Extension { size },
                },
                Chunks::SizeLf { size } => match (b, size) {
                    (b'\n', 0) => Chunks::TrailerStart,
                    (b'\n', n) => Chunks::Data(n),
                    _ => return Err(ChunkError("CR without LF after a chunk size")),
                },
                Chunks::Data(left) => {
                    let take = (bytes.len() - i).min(usize::try_from(left).unwrap_or(usize::MAX));
                    data(&bytes[i..i + take]);
                    i += take;
                    let left = left - take as u64;
                    *self = if left == 0 {
                        Chunks::DataCr
                    } else {
                        Chunks::Data(left)
                    };
                    continue;
                }
                Chunks::DataCr if b == b'\r' => Chunks::DataLf,
                Chunks::DataLf if b == b'\n' => Chunks::default(),
                Chunks::DataCr | Chunks::DataLf => {
                    return Err(ChunkError("chunk data not followed by CRLF"))
                }
                // Lines end in CRLF, never a bare LF or CR: a recipient
                // that allowed those would see the body end elsewhere.
                Chunks::TrailerStart => match b {
                    b'\r' => Chunks::EndLf,
                    b'\n' => return Err(ChunkError("bare LF in the trailer section")),
                    b':' => return Err(ChunkError("a trailer field without a name")),
                    _ => Chunks::TrailerName {
                        possible: still_possible(ALL_NOT_TRAILERS, 0, b),
                        len: 1,
                    },
                },
                Chunks::TrailerName { possible, len } => match b {
                    b':' => {
                        if (0..NOT_TRAILERS.len()).any(|i| {
                            possible & 1 << i != 0 && NOT_TRAILERS[i].len() == usize::from(len)
                        }) {
                            return Err(ChunkError(
                                "a framing or routing field (Content-Length, Transfer-Encoding, Host) in the trailers",
                            ));
                        }
                        Chunks::Trailer
                    }
                    b'\r' | b'\n' => return Err(ChunkError("a trailer line without `:`")),
                    b' ' | b'\t' => return Err(ChunkError("whitespace in a trailer field name")),
                    _ => Chunks::TrailerName {
                        possible: still_possible(possible, len, b),
                        len: len.saturating_add(1),
                    },
                },
                Chunks::Trailer => match b {
                    b'\r' => Chunks::TrailerLf,
                    b'\n' => return Err(ChunkError("bare LF in a trailer line")),
                    _ => Chunks::Trailer,
                },
                Chunks::TrailerLf if b == b'\n' => Chunks::TrailerStart,
                Chunks::TrailerLf => return Err(ChunkError("CR without LF in a trailer line")),
                Chunks::EndLf if b == b'\n' => {
                    *self = Chunks::Done;
                    return Ok(i + 1);
                }
                Chunks::EndLf => return Err(ChunkError("CR without LF at the end")),
                Chunks::Done => return Ok(i),
            };
            i += 1;
        }
        Ok(i)
    }

    pub fn is_done(&self) -> bool {
        *self == Chunks::Done
    }
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(head: &str) -> (u16, Vec<(String, String)>) {
        let mut headers = [httparse::EMPTY_HEADER; 16];
        let mut r = httparse::Response::new(&mut headers);
        r.parse(head.as_bytes()).unwrap();
        let fields = r
            .headers
            .iter()
            .map(|h| (h.name.to_string(), lossy(h.value).into_owned()))
            .collect();
        (r.code.unwrap(), fields)
    }

    fn with_fields<T>(fields: &[(&str, &str)], f: impl FnOnce(Fields<'_>) -> T) -> T {
        let headers: Vec<httparse::Header<'_>> = fields
            .iter()
            .map(|(n, v)| httparse::Header {
                name: n,
                value: v.as_bytes(),
            })
            .collect();
        f(super::fields(&headers).unwrap())
    }

    #[test]
    fn request_framing_refuses_what_could_smuggle() {
        let framing = |h: &[(&str, &str)]| {
            let headers: Vec<_> = h
                .iter()
                .map(|(n, v)| httparse::Header {
                    name: n,
                    value: v.as_bytes(),
                })
                .collect();
            fields(&headers)
                .map_err(RequestError::Malformed)
                .and_then(|f| request_framing(&f))
        };
        assert_eq!(framing(&[]), Ok(Framing::None));
        assert_eq!(framing(&[("Content-Length", "0")]), Ok(Framing::None));
        assert_eq!(
            framing(&[("content-length", " 12 ")]),
            Ok(Framing::Length(12))
        );
        assert_eq!(
            framing(&[("Content-Length", "5"), ("Content-Length", "5")]),
            Ok(Framing::Length(5))
        );
        assert!(matches!(
            framing(&[("Content-Length", "5"), ("Content-Length", "6")]),
            Err(RequestError::Malformed(_))
        ));
        assert!(matches!(
            framing(&[("Content-Length", "-1")]),
            Err(RequestError::Malformed(_))
        ));
        assert!(matches!(
            framing(&[("Content-Length", "99999999999999999999")]),
            Err(RequestError::Malformed(_))
        ));
        assert_eq!(
            framing(&[("Transfer-Encoding", "Chunked")]),
            Ok(Framing::Chunked)
        );
        assert!(matches!(
            framing(&[("Transfer-Encoding", "chunked"), ("Content-Length", "3")]),
            Err(RequestError::Malformed(_))
        ));
        assert_eq!(
            framing(&[("Transfer-Encoding", "chunked, gzip")]),
            Err(RequestError::UnsupportedCoding)
        );
    }

    #[test]
    fn response_framing_follows_the_status_and_fields() {
        let f = |status, head, h: &[(&str, &str)]| {
            with_fields(h, |f| response_framing(status, head, &f))
        };
        assert_eq!(
            f(200, false, &[("Content-Length", "3")]),
            Framing::Length(3)
        );
        assert_eq!(f(200, true, &[("Content-Length", "3")]), Framing::None);
        assert_eq!(f(204, false, &[]), Framing::None);
        assert_eq!(f(304, false, &[("Content-Length", "3")]), Framing::None);
        assert_eq!(
            f(200, false, &[("Transfer-Encoding", "chunked")]),
            Framing::Chunked
        );
        assert_eq!(
            f(200, false, &[("Transfer-Encoding", "gzip")]),
            Framing::UntilClose
        );
        assert_eq!(f(200, false, &[]), Framing::UntilClose);
        assert_eq!(f(200, false, &[("Content-Length", "0")]), Framing::None);
    }

    #[test]
    fn persistence_by_version_and_connection() {
        assert!(with_fields(&[], |f| persistent(1, &f)));
        assert!(!with_fields(&[("Connection", "close")], |f| persistent(
            1, &f
        )));
        assert!(!with_fields(&[], |f| persistent(0, &f)));
        assert!(with_fields(
            &[("Connection", "Keep-Alive")],
            |f| persistent(0, &f)
        ));
    }

    #[test]
    fn hop_by_hop_names() {
        let (_, h) = parsed("HTTP/1.1 200 OK\r\nConnection: keep-alive, X-Secret\r\n\r\n");
        assert_eq!(h[0].0, "Connection");
        let named: Vec<&[u8]> = vec![b"x-secret"];
        for name in [
            "Connection",
            "keep-alive",
            "TE",
            "Trailer",
            "Transfer-Encoding",
            "Upgrade",
            "Proxy-Authorization",
            "proxy-foo",
            "X-Secret",
        ] {
            assert!(is_hop_by_hop(name, &named), "{name}");
        }
        for name in ["Content-Length", "Host", "Te-Not", "X-Keep", "Proxy", "Tee"] {
            assert!(!is_hop_by_hop(name, &named), "{name}");
        }
    }

    #[test]
    fn absolute_targets_become_origin_form() {
        assert_eq!(origin_form("/a?b"), "/a?b");
        assert_eq!(origin_form("*"), "*");
        assert_eq!(origin_form("http://example.com/a/b?c"), "/a/b?c");
        assert_eq!(origin_form("http://example.com"), "");
        assert_eq!(origin_form("http://example.com?q=1"), "?q=1");
        assert_eq!(
            target_authority("http://example.com:8080/a"),
            Some("example.com:8080")
        );
        assert_eq!(
            target_authority("http://example.com?q"),
            Some("example.com")
        );
        assert_eq!(target_authority("http://example.com"), Some("example.com"));
        assert_eq!(target_authority("http:///a"), None);
        assert_eq!(target_authority("/a"), None);
        assert_eq!(target_authority("*"), None);
    }

    #[test]
    fn decimal() {
        for n in [0u64, 7, 10, 1234567890, u64::MAX] {
            let mut out = Vec::new();
            push_decimal(&mut out, n);
            assert_eq!(out, n.to_string().as_bytes());
        }
    }

    fn dechunk(body: &[u8], split_every: usize) -> Result<(Vec<u8>, usize), ChunkError> {
        let mut c = Chunks::default();
        let mut data = Vec::new();
        let mut used = 0;
        for piece in body.chunks(split_every) {
            used += c.scan(piece, |d| data.extend_from_slice(d))?;
            if c.is_done() {
                break;
            }
        }
        assert!(c.is_done(), "{c:?}");
        Ok((data, used))
    }

    #[test]
    fn chunked_bodies_end_where_they_end_however_they_arrive() {
        let body = b"5\r\nhello\r\n1 ;ext=1\r\n \r\nA\r\n0123456789\r\n0\r\nX-T: 1\r\n\r\nNEXT";
        for split in [1, 2, 3, 7, body.len()] {
            let (data, used) = dechunk(body, split).unwrap();
            assert_eq!(data, b"hello 0123456789");
            assert_eq!(used, body.len() - 4, "split every {split}");
        }
        let (data, used) = dechunk(b"0\r\n\r\n", 1).unwrap();
        assert_eq!((data.len(), used), (0, 5));
    }

    /// Lines of the trailer section end in CRLF: a bare LF is an error, or
    /// an upstream that accepts LF would see the body end elsewhere.
    #[test]
    fn bare_lf_in_the_trailer_section_is_an_error() {
        for bad in [
            &b"0\r\n\nGET /smuggled HTTP/1.1\r\n\r\n"[..],
            b"0\r\nX-T: 1\n\nGET /smuggled HTTP/1.1\r\n\r\n",
        ] {
            let mut c = Chunks::default();
            let scanned = c.scan(bad, |_| {});
            assert!(scanned.is_err(), "{}: {scanned:?} {c:?}", lossy(bad));
        }
    }

    #[test]
    fn framing_and_routing_fields_are_refused_as_trailers() {
        let scan_bytewise = |body: &[u8]| -> Result<(), ChunkError> {
            let mut c = Chunks::default();
            for b in body {
                c.scan(std::slice::from_ref(b), |_| {})?;
            }
            assert!(c.is_done(), "{}", lossy(body));
            Ok(())
        };
        for bad in [
            &b"0\r\nContent-Length: 5\r\n\r\n"[..],
            b"0\r\nX-A: 1\r\ntransfer-encoding: chunked\r\n\r\n",
            b"0\r\nTRANSFER_ENCODING: chunked\r\n\r\n",
            b"0\r\nHost: evil.example\r\n\r\n",
        ] {
            let whole = Chunks::default().scan(bad, |_| {});
            assert!(whole.is_err(), "{}", lossy(bad));
            let e = scan_bytewise(bad).unwrap_err();
            assert!(e.0.contains("in the trailers"), "{}: {e}", lossy(bad));
        }
        for bad in [
            &b"0\r\nX-A 1\r\n\r\n"[..],
            b"0\r\nX A: 1\r\n\r\n",
            b"0\r\n: 1\r\n\r\n",
        ] {
            assert!(
                Chunks::default().scan(bad, |_| {}).is_err(),
                "{}",
                lossy(bad)
            );
        }
        for good in [
            &b"0\r\nX-Checksum: 1\r\n\r\n"[..],
            b"0\r\nHostname: a\r\nContent-Lengths: 1\r\nHos: x\r\n\r\n",
            b"3\r\nabc\r\n0\r\n\r\n",
        ] {
            scan_bytewise(good).unwrap_or_else(|e| panic!("{}: {e}", lossy(good)));
        }
    }

    #[test]
    fn bad_chunked_bodies_are_errors() {
        for bad in [
            &b"x\r\n"[..],
            b"\r\n",
            b"5\nhello",
            b"5\r\nhelloXX",
            b"11111111111111111\r\n",
            b"0\r\n\rX",
            b"5 x\r\nhello\r\n",
        ] {
            let mut c = Chunks::default();
            assert!(c.scan(bad, |_| {}).is_err(), "{}", lossy(bad));
        }
    }
}
