//! The `prometheus` check: PromQL per colour against any Prometheus HTTP
//! API (Prometheus, Thanos, Mimir, VictoriaMetrics, ...).
//!
//! Two judges:
//!
//! - **Sequential**, on two counters per colour (`requests`, `failures`):
//!   the same anytime-valid test as `sequential-error-rate`
//!   ([`cutover_core::judge`]) on what each counter grew by between two
//!   looks. After a shift, counting starts at the first sample scraped
//!   after it: the counters are read at `split_since + scrape_interval`,
//!   the latest sample then being one taken after the shift, so no request
//!   served at the old split is counted at the new one.
//! - **Threshold**, on one `query` per colour: green's value against `max`
//!   and `min`, and against blue's value times `max_ratio_to_blue`.
//!
//! Every query is an instant query (`GET /api/v1/query`) at an explicit
//! time, so a look reads the same samples however late its answer comes.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use cutover_core::judge::{Batch, SequentialErrorRate, Settings};
use cutover_core::plan::{PrometheusCheck, PrometheusJudge, COLOUR_PLACEHOLDER};
use cutover_core::time::Human;
use cutover_core::{Observation, Split, Timestamp, Verdict};
use cutover_engine::ports::{AdapterError, Check, CheckContext};
use http_body_util::{BodyExt, Empty};
use hyper::header::{HeaderValue, ACCEPT, AUTHORIZATION, USER_AGENT};
use hyper::{Request, Uri};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;

use crate::checks::{http_check_client, num};
use crate::util::{error_chain, excerpt};

/// The largest answer read from Prometheus.
const BODY_LIMIT: usize = 4 << 20;

/// The check for `spec`: sequential or threshold as its judge says.
pub fn build(name: String, spec: &PrometheusCheck) -> std::sync::Arc<dyn Check> {
    let api = Api {
        base: spec.url.clone(),
        token: spec.token.clone(),
        timeout: spec.timeout,
        client: http_check_client(spec.timeout),
    };
    let colours = Colours {
        blue: spec.blue_value.clone(),
        green: spec.green_value.clone(),
        label: spec.colour_label.clone(),
    };
    match &spec.judge {
        PrometheusJudge::SequentialErrorRate {
            requests,
            failures,
            scrape_interval,
            settings,
        } => std::sync::Arc::new(Sequential {
            name,
            api,
            colours,
            requests: requests.clone(),
            failures: failures.clone(),
            scrape_interval: *scrape_interval,
            settings: *settings,
            state: Mutex::new(None),
        }),
        PrometheusJudge::Threshold {
            query,
            max,
            min,
            max_ratio_to_blue,
        } => std::sync::Arc::new(Threshold {
            name,
            api,
            colours,
            query: query.clone(),
            max: *max,
            min: *min,
            max_ratio_to_blue: *max_ratio_to_blue,
        }),
    }
}

/// One series of an instant query's answer.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// A Prometheus HTTP API.
struct Api {
    base: String,
    token: Option<String>,
    timeout: Duration,
    client: Client<HttpConnector, Empty<Bytes>>,
}

impl Api {
    /// `query` evaluated at `at`: its series (a scalar is one series
    /// without labels).
    async fn query(&self, query: &str, at: Timestamp) -> Result<Vec<Sample>, QueryError> {
        let time = format!("{}.{:03}", at.as_millis() / 1000, at.as_millis() % 1000);
        let target = format!(
            "{}/api/v1/query?query={}&time={time}",
            self.base,
            percent_encode(query)
        );
        let uri: Uri = target
            .parse()
            .map_err(|e| QueryError::Unusable(format!("`{}` is not a URL: {e}", self.base)))?;
        let mut req = Request::new(Empty::new());
        *req.uri_mut() = uri;
        let h = req.headers_mut();
        h.insert(USER_AGENT, HeaderValue::from_static("cutover-check"));
        h.insert(ACCEPT, HeaderValue::from_static("application/json"));
        if let Some(token) = &self.token {
            let v = HeaderValue::from_str(&format!("Bearer {token}")).map_err(|_| {
                QueryError::Unusable("`token` cannot be sent in an HTTP header".into())
            })?;
            h.insert(AUTHORIZATION, v);
        }
        let call = async {
            let response = self
                .client
                .request(req)
                .await
                .map_err(|e| QueryError::Down(error_chain(&e)))?;
            let status = response.status().as_u16();
            let mut body = response.into_body();
            let mut bytes = Vec::new();
            while let Some(frame) = body.frame().await {
                let frame = frame.map_err(|e| {
                    QueryError::Down(format!("reading the answer: {}", error_chain(&e)))
                })?;
                if let Some(data) = frame.data_ref() {
                    bytes.extend_from_slice(data);
                }
                if bytes.len() > BODY_LIMIT {
                    return Err(QueryError::Unusable(format!(
                        "the answer is over {} MiB; narrow the query",
                        BODY_LIMIT >> 20
                    )));
                }
            }
            parse_answer(status, &bytes)
        };
        match tokio::time::timeout(self.timeout, call).await {
            Ok(r) => r,
            Err(_) => Err(QueryError::Down(format!(
                "no answer within {}",
                Human(self.timeout)
            ))),
        }
    }
}

/// Why a query gave no value.
#[derive(Clone, Debug, PartialEq)]
pub enum QueryError {
    /// Prometheus could not be reached or answered 5xx: may pass.
    Down(String),
    /// The query or the settings are wrong: will not pass by waiting.
    Unusable(String),
}

impl std::fmt::Display for QueryError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            QueryError::Down(m) | QueryError::Unusable(m) => f.write_str(m),
        }
    }
}

/// Reads an answer of `/api/v1/query` (see the Prometheus HTTP API's
/// "Expression queries": `{"status":"success","data":{"resultType":
/// "vector"|"scalar", "result": ...}}`, or `"status":"error"` with
/// `errorType` and `error`).
pub fn parse_answer(status: u16, body: &[u8]) -> Result<Vec<Sample>, QueryError> {
    let text = String::from_utf8_lossy(body);
    let v: serde_json::Value = match serde_json::from_slice(body) {
        Ok(v) => v,
        Err(_) => {
            let what = format!(
                "answered {status} with no Prometheus JSON: {}",
                excerpt(&text, 200)
            );
            return Err(if status >= 500 || status == 429 {
                QueryError::Down(what)
            } else {
                QueryError::Unusable(what)
            });
        }
    };
    if v["status"] != "success" {
        let what = format!(
            "{} ({status}): {}",
            v["errorType"].as_str().unwrap_or("error"),
            v["error"].as_str().unwrap_or("no reason given")
        );
        // bad_data (400) and execution errors of the query itself (422)
        // will not go away; timeouts and unavailability may.
        return Err(match status {
            400 | 401 | 403 | 404 | 422 => QueryError::Unusable(what),
            _ => QueryError::Down(what),
        });
    }
    let data = &v["data"];
    let value = |pair: &serde_json::Value| -> Result<f64, QueryError> {
        pair.get(1)
            .and_then(|x| x.as_str())
            .and_then(|x| match x {
                "NaN" => Some(f64::NAN),
                "+Inf" => Some(f64::INFINITY),
                "-Inf" => Some(f64::NEG_INFINITY),
                _ => x.parse().ok(),
            })
            .ok_or_else(|| QueryError::Unusable(format!("a value is not a number: {pair}")))
    };
    match data["resultType"].as_str() {
        Some("vector") => data["result"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|s| {
                let labels = s["metric"]
                    .as_object()
                    .into_iter()
                    .flatten()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                    .collect();
                Ok(Sample {
                    labels,
                    value: value(&s["value"])?,
                })
            })
            .collect(),
        Some("scalar") => Ok(vec![Sample {
            labels: BTreeMap::new(),
            value: value(&data["result"])?,
        }]),
        Some(other) => Err(QueryError::Unusable(format!(
            "the query gives a {other}; it must give one value per colour (an instant vector or a scalar), e.g. wrap it in sum(...)"
        ))),
        None => Err(QueryError::Unusable(format!(
            "answer without a resultType: {}",
            excerpt(&text, 200)
        ))),
    }
}

/// Everything but RFC 3986's unreserved characters percent-encoded, for a
/// query parameter.
pub fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len() * 3);
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// How the queries name the colours.
struct Colours {
    blue: String,
    green: String,
    label: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    Blue,
    Green,
}

impl Role {
    fn name(self) -> &'static str {
        match self {
            Role::Blue => "blue",
            Role::Green => "green",
        }
    }
}

impl Colours {
    fn value(&self, role: Role) -> &str {
        match role {
            Role::Blue => &self.blue,
            Role::Green => &self.green,
        }
    }

    /// `query` for `role`: with the placeholder replaced.
    fn query(&self, query: &str, role: Role) -> String {
        query.replace(COLOUR_PLACEHOLDER, self.value(role))
    }

    /// `role`'s value among `samples`: the one series (with a colour
    /// label, the one carrying `role`'s value). `None`: no such series.
    fn pick(&self, samples: &[Sample], role: Role, key: &str) -> Result<Option<f64>, QueryError> {
        let mine: Vec<&Sample> = match &self.label {
            Some(label) => samples
                .iter()
                .filter(|s| s.labels.get(label).map(String::as_str) == Some(self.value(role)))
                .collect(),
            None => samples.iter().collect(),
        };
        match mine.as_slice() {
            [] => Ok(None),
            [one] => Ok(Some(one.value)),
            many => Err(QueryError::Unusable(format!(
                "`{key}` gives {} series for {} (`{}`), where one value is needed: aggregate it, e.g. sum(...){}",
                many.len(),
                role.name(),
                self.value(role),
                self.label
                    .as_ref()
                    .map_or_else(String::new, |l| format!(" by ({l})"))
            ))),
        }
    }
}

/// Both colours' values of one query at `at`: one call with a colour
/// label, one per colour otherwise.
async fn both(
    api: &Api,
    colours: &Colours,
    query: &str,
    key: &str,
    at: Timestamp,
) -> Result<[Option<f64>; 2], QueryError> {
    if colours.label.is_some() {
        let samples = api.query(query, at).await?;
        Ok([
            colours.pick(&samples, Role::Green, key)?,
            colours.pick(&samples, Role::Blue, key)?,
        ])
    } else {
        let (green, blue) = (
            colours.query(query, Role::Green),
            colours.query(query, Role::Blue),
        );
        let (g, b) = tokio::join!(api.query(&green, at), api.query(&blue, at));
        Ok([
            colours.pick(&g?, Role::Green, key)?,
            colours.pick(&b?, Role::Blue, key)?,
        ])
    }
}

/// A preflight that runs every query once: a query Prometheus refuses is
/// refused before traffic moves.
async fn preflight_queries(
    api: &Api,
    colours: &Colours,
    queries: &[(&str, &str)],
) -> Result<(), AdapterError> {
    let now = Timestamp(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64),
    );
    for (key, q) in queries {
        match both(api, colours, q, key, now).await {
            Ok(_) => {}
            Err(QueryError::Unusable(e)) => {
                return Err(AdapterError::permanent(format!(
                    "Prometheus at {} refuses `{key}`: {e}",
                    api.base
                )))
            }
            Err(QueryError::Down(e)) => {
                return Err(AdapterError::transient(format!(
                    "Prometheus at {}: {e}",
                    api.base
                )))
            }
        }
    }
    Ok(())
}

/// The sequential judge on counters (see the module docs).
struct Sequential {
    name: String,
    api: Api,
    colours: Colours,
    requests: String,
    failures: String,
    scrape_interval: Duration,
    settings: Settings,
    state: Mutex<Option<SequentialState>>,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct SequentialState {
    test: SequentialErrorRate,
    /// Green's and blue's requests and failures at the previous look; None
    /// while no sample since the split took effect was read.
    counts: Option<[u64; 4]>,
    /// When the split the previous look saw took effect.
    split_since: Timestamp,
}

impl Sequential {
    /// Green's requests and failures, blue's requests and failures, at `at`.
    async fn counts(&self, at: Timestamp) -> Result<[u64; 4], QueryError> {
        let (requests, failures) = tokio::join!(
            both(&self.api, &self.colours, &self.requests, "requests", at),
            both(&self.api, &self.colours, &self.failures, "failures", at),
        );
        let [gr, br] = requests?;
        let [gf, bf] = failures?;
        let count = |v: Option<f64>, key: &str, role: Role| -> Result<u64, QueryError> {
            match v {
                // A failure counter that was never incremented often has no
                // series at all; a missing request counter is a wrong query.
                None if key == "failures" => Ok(0),
                None => Err(QueryError::Unusable(format!(
                    "`{key}` gives no series for {} (`{}`): check the query, and that Prometheus scrapes it",
                    role.name(),
                    self.colours.value(role)
                ))),
                Some(x) if x.is_finite() && x >= 0.0 => Ok(x.round() as u64),
                Some(x) => Err(QueryError::Unusable(format!(
                    "`{key}` for {} is {x}: it must be a count (a counter, e.g. sum(http_requests_total{{...}}))",
                    role.name()
                ))),
            }
        };
        Ok([
            count(gr, "requests", Role::Green)?,
            count(gf, "failures", Role::Green)?,
            count(br, "requests", Role::Blue)?,
            count(bf, "failures", Role::Blue)?,
        ])
    }
}

fn difference(now: [u64; 4], then: [u64; 4]) -> Option<Batch> {
    if now.iter().zip(then).any(|(n, t)| *n < t) {
        return None;
    }
    let [g, ge, b, be] = std::array::from_fn(|i| now[i] - then[i]);
    Some(Batch {
        green_requests: g,
        green_failures: ge,
        blue_requests: b,
        blue_failures: be,
    })
}

#[async_trait]
impl Check for Sequential {
    fn name(&self) -> &str {
        &self.name
    }

    async fn evaluate(&self, ctx: &CheckContext) -> Observation {
        let obs = |v, d: String| Observation::new(&self.name, v, d);
        let (fresh, settings_ok) = {
            let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
            match state.as_ref() {
                Some(st) => (
                    st.split_since != ctx.split_since || st.counts.is_none(),
                    true,
                ),
                None => (true, SequentialErrorRate::new(self.settings).is_ok()),
            }
        };
        if !settings_ok {
            return obs(Verdict::Error, "unusable judge settings".into());
        }
        // The first sample after the shift is the latest one at this time.
        let first_scrape = ctx.split_since.after(self.scrape_interval);
        let read = |at| async move {
            self.counts(at).await.map_err(|e| {
                obs(
                    Verdict::Error,
                    format!(
                        "cannot read the counters from Prometheus at {}: {e}",
                        self.api.base
                    ),
                )
            })
        };
        let now = match read(ctx.now).await {
            Ok(c) => c,
            Err(o) => return o,
        };
        // Read once a scrape interval more has passed, so that the sample
        // taken after the shift has been scraped and stored by then.
        let base = if fresh && ctx.now >= first_scrape.after(self.scrape_interval) {
            match read(first_scrape).await {
                Ok(c) => Some(c),
                Err(o) => return o,
            }
        } else {
            None
        };
        let full = ctx.split == Split::FULL;
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let st = state.get_or_insert_with(|| SequentialState {
            test: SequentialErrorRate::new(self.settings).expect("checked above"),
            counts: None,
            split_since: ctx.split_since,
        });
        let note = if fresh {
            st.split_since = ctx.split_since;
            match base {
                None => {
                    st.counts = None;
                    format!(
                        " (counting starts with Prometheus' first scrape after the split took \
                         effect, read once {} have passed)",
                        Human(self.scrape_interval * 2)
                    )
                }
                Some(base) => {
                    st.counts = Some(now);
                    match difference(now, base) {
                        Some(batch) => {
                            st.test.observe_at(batch, full);
                            " (counting from the first scrape after the split took effect)".into()
                        }
                        None => {
                            " (a counter went down since the split took effect: counting from now)"
                                .into()
                        }
                    }
                }
            }
        } else {
            let then = st.counts.expect("fresh when unset");
            st.counts = Some(now);
            match difference(now, then) {
                Some(batch) => {
                    st.test.observe_at(batch, full);
                    String::new()
                }
                None => " (a counter went down since the last look, a restart: counting from now)"
                    .into(),
            }
        };
        st.test
            .judge(ctx.hold_is_over())
            .observation(&self.name, ctx.hold_is_over(), &note)
    }

    async fn preflight(&self) -> Result<(), AdapterError> {
        preflight_queries(
            &self.api,
            &self.colours,
            &[("requests", &self.requests), ("failures", &self.failures)],
        )
        .await
    }

    fn state(&self) -> Option<serde_json::Value> {
        let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        serde_json::to_value(state.as_ref()?).ok()
    }

    fn restore(&self, saved: &serde_json::Value) -> Result<(), String> {
        let mut st: SequentialState =
            serde_json::from_value(saved.clone()).map_err(|e| format!("unreadable: {e}"))?;
        if st.test.settings() != &self.settings {
            return Err("it was gathered under other settings".into());
        }
        st.test = SequentialErrorRate::restored(st.test)?;
        *self.state.lock().unwrap_or_else(|e| e.into_inner()) = Some(st);
        Ok(())
    }
}

/// One value per colour against thresholds.
struct Threshold {
    name: String,
    api: Api,
    colours: Colours,
    query: String,
    max: Option<f64>,
    min: Option<f64>,
    max_ratio_to_blue: Option<f64>,
}

#[async_trait]
impl Check for Threshold {
    fn name(&self) -> &str {
        &self.name
    }

    async fn evaluate(&self, ctx: &CheckContext) -> Observation {
        let obs = |v, d: String| Observation::new(&self.name, v, d);
        let [green, blue] =
            match both(&self.api, &self.colours, &self.query, "query", ctx.now).await {
                Ok(v) => v,
                Err(e) => {
                    return obs(
                        Verdict::Error,
                        format!(
                            "cannot read `query` from Prometheus at {}: {e}",
                            self.api.base
                        ),
                    )
                }
            };
        let Some(g) = green.filter(|g| !g.is_nan()) else {
            return obs(
                Verdict::Inconclusive,
                format!(
                    "no value for green (`{}`): {}",
                    self.colours.green,
                    if green.is_some() {
                        "NaN (no traffic?)"
                    } else {
                        "no series"
                    }
                ),
            );
        };
        let mut numbers = vec![("green.value", g)];
        let mut broken: Vec<String> = Vec::new();
        let mut held: Vec<String> = Vec::new();
        if let Some(max) = self.max {
            numbers.push(("max", max));
            if g > max {
                broken.push(format!("green {} > max {}", num(g), num(max)));
            } else {
                held.push(format!("green {} ≤ max {}", num(g), num(max)));
            }
        }
        if let Some(min) = self.min {
            numbers.push(("min", min));
            if g < min {
                broken.push(format!("green {} < min {}", num(g), num(min)));
            } else {
                held.push(format!("green {} ≥ min {}", num(g), num(min)));
            }
        }
        if let Some(ratio) = self.max_ratio_to_blue {
            match blue.filter(|b| !b.is_nan()) {
                None if broken.is_empty() => {
                    return obs(
                        Verdict::Inconclusive,
                        format!(
                            "green {}, but no value for blue (`{}`) to compare with",
                            num(g),
                            self.colours.blue
                        ),
                    )
                    .with_numbers(numbers)
                }
                None => {}
                Some(b) => {
                    let limit = b * ratio;
                    numbers.extend([("blue.value", b), ("limit", limit)]);
                    if g > limit {
                        broken.push(format!(
                            "green {} > blue {} × {}",
                            num(g),
                            num(b),
                            num(ratio)
                        ));
                    } else {
                        held.push(format!(
                            "green {} ≤ blue {} × {}",
                            num(g),
                            num(b),
                            num(ratio)
                        ));
                    }
                }
            }
        }
        let _ = ctx;
        if broken.is_empty() {
            obs(Verdict::Pass, held.join(", ")).with_numbers(numbers)
        } else {
            obs(Verdict::Fail, broken.join(", ")).with_numbers(numbers)
        }
    }

    async fn preflight(&self) -> Result<(), AdapterError> {
        preflight_queries(&self.api, &self.colours, &[("query", &self.query)]).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_read_as_prometheus_writes_them() {
        let vector = br#"{"status":"success","data":{"resultType":"vector","result":[
            {"metric":{"colour":"green"},"value":[1700000000.5,"12"]},
            {"metric":{"colour":"blue"},"value":[1700000000.5,"NaN"]}]}}"#;
        let s = parse_answer(200, vector).unwrap();
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].labels["colour"], "green");
        assert_eq!(s[0].value, 12.0);
        assert!(s[1].value.is_nan());
        let scalar =
            br#"{"status":"success","data":{"resultType":"scalar","result":[1.5,"0.25"]}}"#;
        assert_eq!(parse_answer(200, scalar).unwrap()[0].value, 0.25);
        let bad = br#"{"status":"error","errorType":"bad_data","error":"parse error at char 5"}"#;
        assert_eq!(
            parse_answer(400, bad),
            Err(QueryError::Unusable(
                "bad_data (400): parse error at char 5".into()
            ))
        );
        let busy = br#"{"status":"error","errorType":"timeout","error":"query timed out"}"#;
        assert!(matches!(parse_answer(503, busy), Err(QueryError::Down(_))));
        let matrix = br#"{"status":"success","data":{"resultType":"matrix","result":[]}}"#;
        assert!(
            matches!(parse_answer(200, matrix), Err(QueryError::Unusable(m)) if m.contains("matrix"))
        );
        assert!(matches!(
            parse_answer(502, b"<html>bad gateway</html>"),
            Err(QueryError::Down(_))
        ));
    }

    #[test]
    fn queries_are_encoded_whole() {
        assert_eq!(
            percent_encode(r#"sum(x{colour="green"}) / 2"#),
            "sum%28x%7Bcolour%3D%22green%22%7D%29%20%2F%202"
        );
    }

    #[test]
    fn a_colour_label_picks_each_colour_s_series() {
        let c = Colours {
            blue: "v1".into(),
            green: "v2".into(),
            label: Some("version".into()),
        };
        let s = |v: &str, x: f64| Sample {
            labels: BTreeMap::from([("version".to_string(), v.to_string())]),
            value: x,
        };
        let samples = [s("v1", 1.0), s("v2", 2.0)];
        assert_eq!(c.pick(&samples, Role::Green, "q"), Ok(Some(2.0)));
        assert_eq!(c.pick(&samples, Role::Blue, "q"), Ok(Some(1.0)));
        assert_eq!(c.pick(&samples[..1], Role::Green, "q"), Ok(None));
        let plain = Colours { label: None, ..c };
        assert!(
            matches!(plain.pick(&samples, Role::Green, "q"), Err(QueryError::Unusable(m)) if m.contains("2 series"))
        );
        assert_eq!(
            plain.query("x{v=\"${colour}\"}", Role::Green),
            "x{v=\"v2\"}"
        );
    }
}
