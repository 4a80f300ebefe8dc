//! The proxy's configuration file (TOML), parsed and validated.
//!
//! ```toml
//! listen = "127.0.0.1:8080"          # data plane
//! admin_listen = "127.0.0.1:9901"    # admin API; loopback unless admin_token is set
//! admin_token = "secret"              # optional: admin requires `Authorization: Bearer secret`
//! initial_split = 0                   # percent on green
//! sticky_cookie = "cutover-colour"    # optional: sticky sessions by cookie
//! connect_timeout = "2s"
//! request_timeout = "30s"             # until the upstream's response head
//! metrics_window = "60s"              # longest sliding window for per-colour stats
//! workers = 2                         # optional: data-plane threads of its own (see below)
//! [blue]
//! upstreams = ["http://127.0.0.1:9001", "http://127.0.0.1:9002"]
//! [green]
//! upstreams = ["http://127.0.0.1:9003"]
//! [health_probe]                      # optional active probes per upstream
//! path = "/healthz"
//! interval = "2s"
//! timeout = "1s"
//! unhealthy_after = 2                 # consecutive failures (default 2)
//! healthy_after = 1                   # consecutive successes (default 1)
//! ```
//!
//! One proxy can front many services instead: one `[[service]]` table
//! each, chosen by the request's `Host`, each with its own pools, split,
//! sticky cookie and metrics (the top-level `initial_split`,
//! `sticky_cookie`, `[blue]` and `[green]` then move into the services):
//!
//! ```toml
//! [[service]]
//! name = "checkout"                   # admin API under /services/checkout/
//! hosts = ["checkout.example.com"]    # no hosts: every host no other service names
//! [service.blue]
//! upstreams = ["http://127.0.0.1:9001"]
//! [service.green]
//! upstreams = ["http://127.0.0.1:9002"]
//! ```
//!
//! `workers = N` runs the data plane on N threads of its own, each a
//! single-threaded event loop with its share of the client connections
//! (handed out round-robin) and its own keep-alive connections to the
//! upstreams, the way nginx runs `worker_processes`: less CPU per request
//! and no cross-thread wake-ups, compared with sharing the process's
//! multi-threaded runtime (figures in `docs/benchmarks.md`). Without it the
//! data plane shares the runtime of whoever started the proxy (`cutover
//! proxy`: one tokio worker per core, or `TOKIO_WORKER_THREADS`).
//!
//! Errors name the file, line and column and say what was expected.

use std::fmt;
use std::net::SocketAddr;
use std::ops::Range;
use std::time::Duration;

use cutover_core::time::parse_duration;
use cutover_core::Split;
use hyper::http::uri::Authority;
use hyper::Uri;
use serde::Deserialize;
use toml::Spanned;

use crate::api::Colour;

/// A validated proxy configuration.
#[derive(Clone, Debug, PartialEq)]
pub struct ProxyConfig {
    /// Data plane address (port 0: any free port).
    pub listen: SocketAddr,
    /// Admin API address (port 0: any free port).
    pub admin_listen: SocketAddr,
    /// If set, every admin request needs `Authorization: Bearer <token>`.
    pub admin_token: Option<String>,
    pub connect_timeout: Duration,
    /// How long an upstream may take to send its response head (then 504).
    pub request_timeout: Duration,
    /// The longest window the metrics keep (and the default for queries).
    pub metrics_window: Duration,
    /// Data-plane threads of its own; `None`: the caller's runtime.
    pub workers: Option<usize>,
    /// Probes for every upstream of every service.
    pub health_probe: Option<HealthProbeConfig>,
    /// At least one; a file without `[[service]]` has one, named
    /// [`DEFAULT_SERVICE`], serving every host.
    pub services: Vec<ServiceConfig>,
}

/// One service the proxy fronts: its two pools and how requests reach it.
#[derive(Clone, Debug, PartialEq)]
pub struct ServiceConfig {
    /// Names it in the admin API (`/services/NAME/split`).
    pub name: String,
    /// Host names (lowercase, without a port) routed to it; empty: every
    /// host no other service names.
    pub hosts: Vec<String>,
    /// Green's share when the proxy starts.
    pub initial_split: Split,
    /// Cookie name for sticky sessions; `None` disables them.
    pub sticky_cookie: Option<String>,
    pub blue: Vec<UpstreamUrl>,
    pub green: Vec<UpstreamUrl>,
}

impl ServiceConfig {
    /// The upstreams of one colour.
    pub fn upstreams(&self, colour: Colour) -> &[UpstreamUrl] {
        match colour {
            Colour::Blue => &self.blue,
            Colour::Green => &self.green,
        }
    }
}

/// The name of the one service of a file without `[[service]]`.
pub const DEFAULT_SERVICE: &str = "default";

/// An upstream's base URL: `http://host:port`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UpstreamUrl {
    authority: Authority,
    text: String,
}

/// Refuses a port outside 1..=65535 in `authority`: the URL parser keeps
/// it as written, and a connection would then go elsewhere (`:99999`
/// silently reached port 80).
pub fn check_port(text: &str, authority: &Authority) -> Result<(), String> {
    let Some((_, port)) = authority.as_str().rsplit_once(':') else {
        return Ok(());
    };
    if port.contains(']') {
        return Ok(()); // the colon was inside an IPv6 literal: no port
    }
    match port.parse::<u16>() {
        Ok(p) if p > 0 => Ok(()),
        _ => Err(format!(
            "`{text}`: port `{port}` is not a port (1 to 65535)"
        )),
    }
}

impl UpstreamUrl {
    /// Parses `http://host[:port][/]`; no path, query or TLS.
    pub fn parse(text: &str) -> Result<UpstreamUrl, String> {
        let uri: Uri = text.parse().map_err(|e| {
            format!("`{text}` is not a valid URL ({e}); expected e.g. \"http://127.0.0.1:9001\"")
        })?;
        match uri.scheme_str() {
            Some("http") => {}
            Some("https") => {
                return Err(format!("`{text}`: https upstreams are not supported (the local proxy speaks plain HTTP); use http://"))
            }
            Some(other) => return Err(format!("`{text}`: unsupported scheme `{other}`; use http://")),
            None => return Err(format!("`{text}`: missing scheme; expected e.g. \"http://{text}\"")),
        }
        let authority = uri.authority().cloned().ok_or_else(|| {
            format!("`{text}`: missing host; expected e.g. \"http://127.0.0.1:9001\"")
        })?;
        if authority.as_str().contains('@') {
            return Err(format!(
                "`{text}`: credentials in upstream URLs are not supported"
            ));
        }
        check_port(text, &authority)?;
        if let Some(pq) = uri.path_and_query() {
            if pq.as_str() != "/" && !pq.as_str().is_empty() {
                return Err(format!(
                    "`{text}`: upstream URLs take no path or query (got `{}`); requests keep their own path",
                    pq.as_str()
                ));
            }
        }
        Ok(UpstreamUrl {
            text: format!("http://{authority}"),
            authority,
        })
    }

    pub fn authority(&self) -> &Authority {
        &self.authority
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }
}

impl fmt::Display for UpstreamUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// Active health probes: every `interval`, `GET path` on each upstream.
#[derive(Clone, Debug, PartialEq)]
pub struct HealthProbeConfig {
    pub path: String,
    pub interval: Duration,
    pub timeout: Duration,
    /// Consecutive failed probes before an upstream is marked unhealthy.
    pub unhealthy_after: u32,
    /// Consecutive passing probes before an unhealthy upstream is healthy again.
    pub healthy_after: u32,
}

impl Default for HealthProbeConfig {
    fn default() -> Self {
        HealthProbeConfig {
            path: "/healthz".into(),
            interval: Duration::from_secs(2),
            timeout: Duration::from_secs(1),
            unhealthy_after: 2,
            healthy_after: 1,
        }
    }
}

/// A configuration error, with where it is when known.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    pub file: String,
    /// 1-based line and column, when the error has a place in the file.
    pub line: Option<usize>,
    pub column: Option<usize>,
    pub message: String,
    /// The offending line of the file, for display.
    pub source_line: Option<String>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.line, self.column) {
            (Some(l), Some(c)) => write!(f, "{}:{l}:{c}: {}", self.file, self.message)?,
            _ => write!(f, "{}: {}", self.file, self.message)?,
        }
        if let (Some(l), Some(c), Some(text)) = (self.line, self.column, &self.source_line) {
            let width = l.to_string().len();
            let (excerpt, caret) = excerpt_at(text, c);
            write!(
                f,
                "\n{:width$} |\n{l} | {excerpt}\n{:width$} | {}^",
                "",
                "",
                " ".repeat(caret)
            )?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

/// At most 40 characters either side of 1-based `column` of `line`, with
/// `…` where cut, and how many characters precede the column's in it.
fn excerpt_at(line: &str, column: usize) -> (String, usize) {
    const SIDE: usize = 40;
    let chars: Vec<char> = line.chars().collect();
    let at = column.saturating_sub(1).min(chars.len());
    let start = at.saturating_sub(SIDE);
    let end = (at + SIDE).min(chars.len());
    let mut excerpt = String::new();
    let mut caret = at - start;
    if start > 0 {
        excerpt.push('…');
        caret += 1;
    }
    excerpt.extend(&chars[start..end]);
    if end < chars.len() {
        excerpt.push('…');
    }
    (excerpt, caret)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    listen: Option<Spanned<String>>,
    admin_listen: Option<Spanned<String>>,
    admin_token: Option<Spanned<String>>,
    initial_split: Option<Spanned<f64>>,
    sticky_cookie: Option<Spanned<String>>,
    connect_timeout: Option<Spanned<String>>,
    request_timeout: Option<Spanned<String>>,
    metrics_window: Option<Spanned<String>>,
    workers: Option<Spanned<i64>>,
    blue: Option<RawPool>,
    green: Option<RawPool>,
    health_probe: Option<RawProbe>,
    service: Option<Spanned<Vec<RawService>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawService {
    name: Spanned<String>,
    hosts: Option<Spanned<Vec<Spanned<String>>>>,
    initial_split: Option<Spanned<f64>>,
    sticky_cookie: Option<Spanned<String>>,
    blue: Option<RawPool>,
    green: Option<RawPool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPool {
    upstreams: Spanned<Vec<Spanned<String>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProbe {
    path: Option<Spanned<String>>,
    interval: Option<Spanned<String>>,
    timeout: Option<Spanned<String>>,
    unhealthy_after: Option<Spanned<u32>>,
    healthy_after: Option<Spanned<u32>>,
}

/// Default data plane address.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
/// Default admin API address.
pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:9901";
/// The longest duration any key accepts (timeouts are added to clock
/// readings; this keeps them far from overflowing).
const MAX_DURATION: Duration = Duration::from_secs(7 * 24 * 3600);

/// The most data-plane threads `workers` may ask for.
pub const MAX_WORKERS: usize = 256;

struct Ctx<'a> {
    text: &'a str,
    file: &'a str,
}

impl Ctx<'_> {
    fn error(&self, span: Option<Range<usize>>, message: impl Into<String>) -> ConfigError {
        let mut err = ConfigError {
            file: self.file.to_string(),
            line: None,
            column: None,
            message: message.into(),
            source_line: None,
        };
        if let Some(span) = span {
            let (line, column, text) = line_col(self.text, span.start);
            err.line = Some(line);
            err.column = Some(column);
            err.source_line = Some(text.to_string());
        }
        err
    }

    fn duration(
        &self,
        field: &str,
        value: Option<Spanned<String>>,
        default: Duration,
    ) -> Result<Duration, ConfigError> {
        let Some(v) = value else { return Ok(default) };
        let d = parse_duration(v.get_ref())
            .map_err(|e| self.error(Some(v.span()), format!("`{field}`: {e}")))?;
        if d.is_zero() {
            return Err(self.error(Some(v.span()), format!("`{field}` must be longer than 0s")));
        }
        if d > MAX_DURATION {
            return Err(self.error(
                Some(v.span()),
                format!("`{field}` is {}; at most 7d", v.get_ref()),
            ));
        }
        Ok(d)
    }

    fn addr(
        &self,
        field: &str,
        value: Option<Spanned<String>>,
        default: &str,
    ) -> Result<SocketAddr, ConfigError> {
        let Some(v) = value else {
            return Ok(default.parse().expect("valid default address"));
        };
        v.get_ref().trim().parse().map_err(|_| {
            self.error(
                Some(v.span()),
                format!(
                    "`{field}`: `{}` is not an IP address with a port; expected e.g. \"127.0.0.1:8080\" or \"[::1]:8080\"",
                    v.get_ref()
                ),
            )
        })
    }

    /// `table` is where the pool is, as written: `blue` or `service.blue`.
    fn pool(&self, table: &str, raw: RawPool) -> Result<Vec<UpstreamUrl>, ConfigError> {
        if raw.upstreams.get_ref().is_empty() {
            return Err(self.error(
                Some(raw.upstreams.span()),
                format!("`{table}.upstreams` is empty; list at least one, e.g. [\"http://127.0.0.1:9001\"]"),
            ));
        }
        let mut out = Vec::new();
        for u in raw.upstreams.into_inner() {
            let url = UpstreamUrl::parse(u.get_ref().trim())
                .map_err(|e| self.error(Some(u.span()), format!("`{table}.upstreams`: {e}")))?;
            if out.contains(&url) {
                return Err(self.error(
                    Some(u.span()),
                    format!("`{table}.upstreams`: `{url}` is listed twice"),
                ));
            }
            out.push(url);
        }
        Ok(out)
    }

    fn initial_split(&self, field: &str, raw: Option<Spanned<f64>>) -> Result<Split, ConfigError> {
        let Some(s) = raw else { return Ok(Split::ZERO) };
        Split::from_percent(*s.get_ref()).ok_or_else(|| {
            self.error(
                Some(s.span()),
                format!(
                    "`{field}` is {}; expected a percentage from 0 to 100",
                    s.get_ref()
                ),
            )
        })
    }

    fn sticky_cookie(
        &self,
        field: &str,
        raw: Option<Spanned<String>>,
    ) -> Result<Option<String>, ConfigError> {
        match raw {
            None => Ok(None),
            Some(c) if is_cookie_name(c.get_ref()) => Ok(Some(c.into_inner())),
            Some(c) => Err(self.error(
                Some(c.span()),
                format!(
                    "`{field}`: `{}` is not a valid cookie name (letters, digits, - and _)",
                    c.get_ref()
                ),
            )),
        }
    }

    /// The `[[service]]` tables: names unique and URL-safe, each host
    /// claimed once, at most one service without hosts.
    fn services(
        &self,
        span: Range<usize>,
        raw: Vec<RawService>,
    ) -> Result<Vec<ServiceConfig>, ConfigError> {
        if raw.is_empty() {
            return Err(self.error(Some(span), "`service` lists no services"));
        }
        let mut out: Vec<ServiceConfig> = Vec::with_capacity(raw.len());
        let mut claimed = std::collections::HashMap::<String, usize>::new();
        let mut catch_all: Option<usize> = None;
        for r in raw {
            let name_span = r.name.span();
            let name = r.name.into_inner();
            if !is_service_name(&name) {
                return Err(self.error(
                    Some(name_span),
                    format!("`service.name`: `{name}` must be 1 to 128 letters, digits, `-`, `_` or `.`"),
                ));
            }
            if out.iter().any(|s| s.name == name) {
                return Err(self.error(
                    Some(name_span),
                    format!("`service.name`: a service named `{name}` is already listed"),
                ));
            }
            let mut hosts = Vec::new();
            match r.hosts {
                None => {}
                Some(list) if list.get_ref().is_empty() => {
                    return Err(self.error(
                        Some(list.span()),
                        format!("`service.hosts` of `{name}` is empty; name at least one host, or leave `hosts` out to serve every host no other service names"),
                    ))
                }
                Some(list) => {
                    for h in list.into_inner() {
                        let host = h.get_ref().trim().to_ascii_lowercase();
                        let bare = |h: &str| {
                            super::http1::valid_host(h.as_bytes())
                                && super::http1::host_without_port(h.as_bytes()) == h.as_bytes()
                        };
                        if !bare(&host) {
                            return Err(self.error(
                                Some(h.span()),
                                format!("`service.hosts`: `{}` is not a host name; expected e.g. \"checkout.example.com\" (no port, no scheme)", h.get_ref()),
                            ));
                        }
                        if let Some(&other) = claimed.get(&host) {
                            return Err(self.error(
                                Some(h.span()),
                                format!("`service.hosts`: `{host}` is already a host of `{}`", out.get(other).map_or(name.as_str(), |s| s.name.as_str())),
                            ));
                        }
                        claimed.insert(host.clone(), out.len());
                        hosts.push(host);
                    }
                }
            }
            if hosts.is_empty() {
                if let Some(other) = catch_all {
                    return Err(self.error(
                        Some(name_span),
                        format!("services `{}` and `{name}` both have no `hosts`; only one service may take every host no other names", out[other].name),
                    ));
                }
                catch_all = Some(out.len());
            }
            let (Some(blue), Some(green)) = (r.blue, r.green) else {
                return Err(self.error(
                    Some(name_span),
                    format!("service `{name}` needs `[service.blue]` and `[service.green]`, each with `upstreams = [...]`"),
                ));
            };
            out.push(ServiceConfig {
                initial_split: self.initial_split("service.initial_split", r.initial_split)?,
                sticky_cookie: self.sticky_cookie("service.sticky_cookie", r.sticky_cookie)?,
                blue: self.pool("service.blue", blue)?,
                green: self.pool("service.green", green)?,
                name,
                hosts,
            });
        }
        Ok(out)
    }
}

/// A service name fits a URL path segment as it is.
fn is_service_name(name: &str) -> bool {
    (1..=128).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        && name != "."
        && name != ".."
}

/// 1-based line and column (in characters) of a byte offset, and the line's text.
fn line_col(text: &str, offset: usize) -> (usize, usize, &str) {
    let offset = offset.min(text.len());
    let before = &text[..offset];
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let line = before.matches('\n').count() + 1;
    let column = text[line_start..offset].chars().count() + 1;
    let line_end = text[line_start..]
        .find('\n')
        .map_or(text.len(), |i| line_start + i);
    (
        line,
        column,
        text[line_start..line_end].trim_end_matches('\r'),
    )
}

fn is_cookie_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

impl ProxyConfig {
    /// Parses and validates a configuration file's text. `file_name` is
    /// only used in error messages.
    pub fn from_toml_str(text: &str, file_name: &str) -> Result<ProxyConfig, ConfigError> {
        let cx = Ctx {
            text,
            file: file_name,
        };
        let raw: RawConfig = toml::from_str(text).map_err(|e| {
            let message = e.message().trim().to_string();
            let message = match message.strip_prefix("unknown field") {
                Some(_) => message.replace("unknown field", "unknown key"),
                None => message,
            };
            cx.error(e.span(), message)
        })?;
        let listen = cx.addr("listen", raw.listen, DEFAULT_LISTEN)?;
        let admin_span = raw.admin_listen.as_ref().map(|s| s.span());
        let admin_listen = cx.addr("admin_listen", raw.admin_listen, DEFAULT_ADMIN_LISTEN)?;
        let admin_token = match raw.admin_token {
            None => None,
            Some(t) => {
                let token = t.get_ref().clone();
                if token.trim().is_empty() || token.trim() != token {
                    return Err(cx.error(
                        Some(t.span()),
                        "`admin_token` must be non-empty and have no surrounding spaces",
                    ));
                }
                if !token.bytes().all(|b| b.is_ascii_graphic()) {
                    return Err(cx.error(
                        Some(t.span()),
                        "`admin_token` must be printable ASCII without spaces",
                    ));
                }
                Some(token)
            }
        };
        if !admin_listen.ip().is_loopback() && admin_token.is_none() {
            return Err(cx.error(
                admin_span,
                format!(
                    "`admin_listen` {admin_listen} is not a loopback address and no `admin_token` is set; \
                     anyone on the network could move traffic. Set `admin_token`, or listen on 127.0.0.1"
                ),
            ));
        }
        if listen == admin_listen && listen.port() != 0 {
            return Err(cx.error(
                admin_span,
                format!("`admin_listen` and `listen` are both {listen}; use two ports"),
            ));
        }
        let connect_timeout = cx.duration(
            "connect_timeout",
            raw.connect_timeout,
            Duration::from_secs(2),
        )?;
        let request_timeout = cx.duration(
            "request_timeout",
            raw.request_timeout,
            Duration::from_secs(30),
        )?;
        let window_span = raw.metrics_window.as_ref().map(|s| s.span());
        let metrics_window = cx.duration(
            "metrics_window",
            raw.metrics_window,
            Duration::from_secs(60),
        )?;
        if metrics_window > Duration::from_secs(24 * 3600) {
            return Err(cx.error(window_span, "`metrics_window` is at most 24h"));
        }
        let workers = match raw.workers {
            None => None,
            Some(w) if (1..=MAX_WORKERS as i64).contains(w.get_ref()) => Some(*w.get_ref() as usize),
            Some(w) => {
                return Err(cx.error(
                    Some(w.span()),
                    format!(
                        "`workers` is {}; expected 1 to {MAX_WORKERS} data-plane threads (e.g. the number of cores), or no `workers` to share the process's runtime",
                        w.get_ref()
                    ),
                ))
            }
        };
        let services = match raw.service {
            None => {
                let (Some(blue), Some(green)) = (raw.blue, raw.green) else {
                    return Err(cx.error(
                        None,
                        "no upstreams: give `[blue]` and `[green]` with `upstreams = [...]` each, \
                         or one `[[service]]` table per service",
                    ));
                };
                vec![ServiceConfig {
                    name: DEFAULT_SERVICE.to_string(),
                    hosts: Vec::new(),
                    initial_split: cx.initial_split("initial_split", raw.initial_split)?,
                    sticky_cookie: cx.sticky_cookie("sticky_cookie", raw.sticky_cookie)?,
                    blue: cx.pool("blue", blue)?,
                    green: cx.pool("green", green)?,
                }]
            }
            Some(list) => {
                let span = list.span();
                let stray = [
                    ("initial_split", raw.initial_split.map(|s| s.span())),
                    ("sticky_cookie", raw.sticky_cookie.map(|s| s.span())),
                    ("blue", raw.blue.map(|p| p.upstreams.span())),
                    ("green", raw.green.map(|p| p.upstreams.span())),
                ];
                if let Some((key, at)) = stray.into_iter().find(|(_, at)| at.is_some()) {
                    return Err(cx.error(
                        at,
                        format!(
                            "`{key}` at the top level and `[[service]]` tables: with services, \
                             each `[[service]]` has its own `{key}`"
                        ),
                    ));
                }
                cx.services(span, list.into_inner())?
            }
        };
        let health_probe = match raw.health_probe {
            None => None,
            Some(p) => {
                let d = HealthProbeConfig::default();
                let path = match p.path {
                    None => d.path,
                    Some(path)
                        if path.get_ref().starts_with('/')
                            && path.get_ref().parse::<Uri>().is_ok() =>
                    {
                        path.into_inner()
                    }
                    Some(path) => {
                        return Err(cx.error(
                            Some(path.span()),
                            format!(
                            "`health_probe.path`: `{}` is not a path; expected e.g. \"/healthz\"",
                            path.get_ref()
                        ),
                        ))
                    }
                };
                let interval = cx.duration("health_probe.interval", p.interval, d.interval)?;
                let timeout = cx.duration("health_probe.timeout", p.timeout, d.timeout)?;
                let mut counts = [d.unhealthy_after, d.healthy_after];
                for (slot, (name, v)) in counts.iter_mut().zip([
                    ("unhealthy_after", p.unhealthy_after),
                    ("healthy_after", p.healthy_after),
                ]) {
                    if let Some(v) = v {
                        if *v.get_ref() == 0 {
                            return Err(cx.error(
                                Some(v.span()),
                                format!("`health_probe.{name}` must be at least 1"),
                            ));
                        }
                        *slot = *v.get_ref();
                    }
                }
                Some(HealthProbeConfig {
                    path,
                    interval,
                    timeout,
                    unhealthy_after: counts[0],
                    healthy_after: counts[1],
                })
            }
        };
        Ok(ProxyConfig {
            listen,
            admin_listen,
            admin_token,
            connect_timeout,
            request_timeout,
            metrics_window,
            workers,
            health_probe,
            services,
        })
    }

    /// Reads and parses a configuration file.
    pub fn from_file(path: &std::path::Path) -> Result<ProxyConfig, ConfigError> {
        let name = path.display().to_string();
        let bytes = std::fs::read(path).map_err(|e| ConfigError {
            file: name.clone(),
            line: None,
            column: None,
            message: format!("cannot read the proxy config: {e}"),
            source_line: None,
        })?;
        if let Some((line, column, byte)) = cutover_core::plan::invalid_utf8_at(&bytes) {
            return Err(ConfigError {
                file: name,
                line: Some(line),
                column: Some(column),
                message: format!(
                    "not valid UTF-8 (byte 0x{byte:02x}); proxy configs are UTF-8 text"
                ),
                source_line: None,
            });
        }
        ProxyConfig::from_toml_str(&String::from_utf8_lossy(&bytes), &name)
    }

    /// A configuration with defaults for the given upstream URLs, listening
    /// on loopback with ports chosen by the OS (for tests and demos).
    pub fn for_upstreams(blue: &[&str], green: &[&str]) -> Result<ProxyConfig, ConfigError> {
        let list = |urls: &[&str]| {
            urls.iter()
                .map(|u| format!("{u:?}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let text = format!(
            "listen = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n[blue]\nupstreams = [{}]\n[green]\nupstreams = [{}]\n",
            list(blue),
            list(green)
        );
        ProxyConfig::from_toml_str(&text, "<generated>")
    }

    /// The service named `name`.
    pub fn service(&self, name: &str) -> Option<&ServiceConfig> {
        self.services.iter().find(|s| s.name == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = "[blue]\nupstreams = [\"http://127.0.0.1:9001\"]\n[green]\nupstreams = [\"http://127.0.0.1:9003\"]\n";

    fn check(text: &str, expected: Result<(), (usize, usize, &str)>) {
        match (ProxyConfig::from_toml_str(text, "proxy.toml"), expected) {
            (Ok(_), Ok(())) => {}
            (Err(e), Err((line, col, part))) => {
                assert_eq!((e.line, e.column), (Some(line), Some(col)), "{e}");
                assert!(e.message.contains(part), "`{}` lacks `{part}`", e.message);
                assert!(
                    e.to_string()
                        .starts_with(&format!("proxy.toml:{line}:{col}: ")),
                    "{e}"
                );
            }
            (got, want) => panic!("got {got:?}, want {want:?}"),
        }
    }

    #[test]
    fn full_example_parses() {
        let text = r#"
listen = "127.0.0.1:8080"
admin_listen = "127.0.0.1:9901"
admin_token = "secret"
initial_split = 12.5
sticky_cookie = "cutover-colour"
connect_timeout = "2s"
request_timeout = "30s"
metrics_window = "60s"
workers = 2
[blue]
upstreams = ["http://127.0.0.1:9001", "http://127.0.0.1:9002/"]
[green]
upstreams = ["http://localhost:9003"]
[health_probe]
path = "/healthz"
interval = "2s"
timeout = "1s"
"#;
        let c = ProxyConfig::from_toml_str(text, "proxy.toml").unwrap();
        let [s] = c.services.as_slice() else {
            panic!("one service")
        };
        assert_eq!((s.name.as_str(), s.hosts.len()), (DEFAULT_SERVICE, 0));
        assert_eq!(s.initial_split.basis_points(), 1250);
        assert_eq!(s.blue.len(), 2);
        assert_eq!(s.blue[1].as_str(), "http://127.0.0.1:9002");
        assert_eq!(s.green[0].authority().as_str(), "localhost:9003");
        assert_eq!(c.admin_token.as_deref(), Some("secret"));
        assert_eq!(s.sticky_cookie.as_deref(), Some("cutover-colour"));
        assert_eq!(c.workers, Some(2));
        let p = c.health_probe.unwrap();
        assert_eq!(
            (p.interval, p.timeout, p.unhealthy_after, p.healthy_after),
            (Duration::from_secs(2), Duration::from_secs(1), 2, 1)
        );
    }

    #[test]
    fn defaults() {
        let c = ProxyConfig::from_toml_str(MINIMAL, "p.toml").unwrap();
        assert_eq!(c.listen.to_string(), DEFAULT_LISTEN);
        assert_eq!(c.admin_listen.to_string(), DEFAULT_ADMIN_LISTEN);
        assert_eq!(c.services[0].initial_split, Split::ZERO);
        assert_eq!(c.request_timeout, Duration::from_secs(30));
        assert_eq!(c.metrics_window, Duration::from_secs(60));
        assert!(
            c.health_probe.is_none()
                && c.services[0].sticky_cookie.is_none()
                && c.admin_token.is_none()
        );
        assert_eq!(c.workers, None);
        let c =
            ProxyConfig::for_upstreams(&["http://127.0.0.1:1"], &["http://127.0.0.1:2"]).unwrap();
        assert_eq!(c.listen.port(), 0);
    }

    #[test]
    fn errors_name_line_and_column() {
        check(
            &format!("bogus = 1\n{MINIMAL}"),
            Err((1, 1, "unknown key `bogus`")),
        );
        check(
            &format!("{MINIMAL}[health_probe]\nevery = \"1s\"\n"),
            Err((6, 1, "unknown key `every`")),
        );
        check(
            &format!("listen = 8080\n{MINIMAL}"),
            Err((1, 10, "expected a string")),
        );
        check(
            &format!("listen = \"localhost\"\n{MINIMAL}"),
            Err((1, 10, "not an IP address with a port")),
        );
        check(
            &format!("request_timeout = \"30\"\n{MINIMAL}"),
            Err((1, 19, "missing unit")),
        );
        check(
            &format!("connect_timeout = \"0s\"\n{MINIMAL}"),
            Err((1, 19, "longer than 0s")),
        );
        check(
            &format!("request_timeout = \"1000000000d\"\n{MINIMAL}"),
            Err((1, 19, "longer than 30d")),
        );
        check(
            &format!("request_timeout = \"8d\"\n{MINIMAL}"),
            Err((1, 19, "at most 7d")),
        );
        check(
            &format!("initial_split = 101\n{MINIMAL}"),
            Err((1, 17, "from 0 to 100")),
        );
        check(
            &format!("sticky_cookie = \"a b\"\n{MINIMAL}"),
            Err((1, 17, "not a valid cookie name")),
        );
        check(
            &format!("workers = 0\n{MINIMAL}"),
            Err((1, 11, "expected 1 to 256 data-plane threads")),
        );
        check(
            "[blue]\nupstreams = []\n[green]\nupstreams = [\"http://h:1\"]\n",
            Err((2, 13, "is empty")),
        );
        check(
            "[blue]\nupstreams = [\"http://h:1\", \"127.0.0.1:2\"]\n[green]\nupstreams = [\"http://h:1\"]\n",
            Err((2, 28, "missing scheme")),
        );
        check(
            "[blue]\nupstreams = [\"https://h:1\"]\n[green]\nupstreams = [\"http://h:1\"]\n",
            Err((2, 14, "https upstreams are not supported")),
        );
        check(
            "[blue]\nupstreams = [\"http://h:1/api\"]\n[green]\nupstreams = [\"http://h:1\"]\n",
            Err((2, 14, "no path")),
        );
        check(
            &format!("admin_listen = \"0.0.0.0:9901\"\n{MINIMAL}"),
            Err((1, 16, "not a loopback address")),
        );
        check(
            &format!("admin_listen = \"0.0.0.0:9901\"\nadmin_token = \"t\"\n{MINIMAL}"),
            Ok(()),
        );
        check(
            &format!("{MINIMAL}[health_probe]\npath = \"healthz\"\n"),
            Err((6, 8, "not a path")),
        );
        check(
            &format!("{MINIMAL}[health_probe]\nunhealthy_after = 0\n"),
            Err((6, 19, "at least 1")),
        );
        check(&format!("{MINIMAL}[health_probe]\n"), Ok(()));
        let e = ProxyConfig::from_toml_str("[blue]\nupstreams = [\"http://h:1\"]\n", "p.toml")
            .unwrap_err();
        assert!(e.message.contains("give `[blue]` and `[green]`"), "{e}");
        check("listen = \n", Err((1, 10, "")));
    }

    const TWO: &str = r#"
[[service]]
name = "checkout"
hosts = ["Checkout.example.com", "shop.example.com"]
initial_split = 5
[service.blue]
upstreams = ["http://127.0.0.1:9001"]
[service.green]
upstreams = ["http://127.0.0.1:9002"]

[[service]]
name = "search"
sticky_cookie = "c"
[service.blue]
upstreams = ["http://127.0.0.1:9003"]
[service.green]
upstreams = ["http://127.0.0.1:9004"]
"#;

    #[test]
    fn services_parse_with_their_own_pools_and_hosts() {
        let c = ProxyConfig::from_toml_str(TWO, "p.toml").unwrap();
        assert_eq!(c.services.len(), 2);
        let checkout = c.service("checkout").unwrap();
        assert_eq!(checkout.hosts, ["checkout.example.com", "shop.example.com"]);
        assert_eq!(checkout.initial_split.basis_points(), 500);
        let search = c.service("search").unwrap();
        assert!(search.hosts.is_empty());
        assert_eq!(search.sticky_cookie.as_deref(), Some("c"));
        assert_eq!(search.green[0].as_str(), "http://127.0.0.1:9004");
    }

    #[test]
    fn service_errors_name_line_and_column() {
        let edit = |from: &str, to: &str| TWO.replacen(from, to, 1);
        check(
            &edit("name = \"search\"", "name = \"checkout\""),
            Err((12, 8, "already listed")),
        );
        check(
            &edit("name = \"search\"", "name = \"a/b\""),
            Err((12, 8, "letters, digits")),
        );
        check(
            &edit(
                "name = \"search\"",
                "name = \"search\"\nhosts = [\"shop.example.com\"]",
            ),
            Err((13, 10, "already a host of `checkout`")),
        );
        check(
            &edit("\"shop.example.com\"", "\"shop.example.com:80\""),
            Err((4, 34, "not a host name")),
        );
        check(
            &edit(
                "hosts = [\"Checkout.example.com\", \"shop.example.com\"]",
                "",
            ),
            Err((12, 8, "both have no `hosts`")),
        );
        check(
            &edit(
                "hosts = [\"Checkout.example.com\", \"shop.example.com\"]",
                "hosts = []",
            ),
            Err((4, 9, "is empty")),
        );
        check(
            &format!("initial_split = 3\n{TWO}"),
            Err((1, 17, "each `[[service]]` has its own")),
        );
        check(
            &format!("{TWO}[blue]\nupstreams = [\"http://h:1\"]\n"),
            Err((19, 13, "each `[[service]]` has its own")),
        );
        check(
            &edit(
                "[service.green]\nupstreams = [\"http://127.0.0.1:9002\"]",
                "",
            ),
            Err((3, 8, "needs `[service.blue]` and `[service.green]`")),
        );
        check(
            &edit("initial_split = 5", "initial_split = 500"),
            Err((5, 17, "from 0 to 100")),
        );
        check(
            &edit(
                "upstreams = [\"http://127.0.0.1:9001\"]",
                "upstreams = [\"127.0.0.1:9001\"]",
            ),
            Err((
                7,
                14,
                "`service.blue.upstreams`: `127.0.0.1:9001`: missing scheme",
            )),
        );
    }

    #[test]
    fn display_shows_the_line() {
        let e = ProxyConfig::from_toml_str(&format!("initial_split = 101\n{MINIMAL}"), "p.toml")
            .unwrap_err();
        let shown = e.to_string();
        assert!(shown.contains("1 | initial_split = 101"), "{shown}");
        assert!(shown.ends_with("|                 ^"), "{shown:?}");
    }
}
