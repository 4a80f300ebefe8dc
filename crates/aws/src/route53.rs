//! The `route53` router: two weighted records of one name and type (blue's
//! and green's SetIdentifier), alias records to load balancers or plain
//! A/AAAA/CNAME records with values.
//!
//! A split becomes two integer weights (0..=255 each) whose ratio is as
//! close to the split as Route53 can express; both records are UPSERTed in
//! ONE change batch that keeps every other field as found (alias target,
//! TTL, values, health check...), then the change is polled until INSYNC so
//! that the hold starts once the name servers answer with the new weights.
//!
//! Throttling and `PriorRequestNotComplete` are retried here with
//! exponential backoff and full jitter; what still fails is reported as
//! transient or permanent (see [`classify`]).

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_route53::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_route53::types::{
    Change, ChangeAction, ChangeBatch, ChangeStatus, ResourceRecordSet, RrType,
};
use cutover_core::time::Human;
use cutover_core::Split;
use cutover_engine::ports::{AdapterError, Router};

/// Route53's largest record weight.
pub const MAX_WEIGHT: u16 = 255;

/// The TTL counted for an alias record (to a load balancer: 60 s).
pub const ALIAS_TTL: Duration = Duration::from_secs(60);

/// Pages of ListResourceRecordSets read at most while looking for the
/// records (a name/type has at most a few hundred weighted members).
const MAX_PAGES: usize = 50;

/// Applies splits to two weighted Route53 records.
pub struct Route53Router {
    client: aws_sdk_route53::Client,
    zone_id: String,
    /// As configured (for messages and describe).
    record_name: String,
    /// Lower case, trailing dot, escapes decoded: what found names are compared to.
    normalized_name: String,
    record_type: String,
    blue: String,
    green: String,
    allow_short_holds: bool,
    insync_timeout: Duration,
    poll_interval: Duration,
    backoff: Backoff,
    notes: Notes,
    /// The sum of the two weights when this router first read them: the
    /// scale every later write keeps (see [`route53_weights`]).
    scale: std::sync::OnceLock<u64>,
}

impl Route53Router {
    pub fn new(config: &cutover_core::plan::Route53Router, sdk: &aws_config::SdkConfig) -> Self {
        Route53Router {
            client: aws_sdk_route53::Client::new(&crate::config::single_attempt(sdk)),
            notes: Notes::default(),
            zone_id: config
                .hosted_zone_id
                .trim_start_matches("/hostedzone/")
                .to_string(),
            record_name: config.record_name.clone(),
            normalized_name: normalize_name(&config.record_name),
            record_type: config.record_type.to_ascii_uppercase(),
            blue: config.blue_set_identifier.clone(),
            green: config.green_set_identifier.clone(),
            allow_short_holds: config.allow_short_holds,
            insync_timeout: config.insync_timeout,
            poll_interval: Duration::from_secs(2),
            backoff: Backoff::default(),
            scale: std::sync::OnceLock::new(),
        }
    }

    fn what(&self) -> String {
        format!(
            "`{}` {} in zone {}",
            self.record_name, self.record_type, self.zone_id
        )
    }

    /// Every record set of our name and type, across pages.
    async fn members(&self) -> Result<Vec<ResourceRecordSet>, AdapterError> {
        let rr_type = RrType::from(self.record_type.as_str());
        let mut found = Vec::new();
        // Route53 stores names in lower case (and moto compares the start
        // name case-sensitively).
        let mut start_name = self.record_name.to_ascii_lowercase();
        if !start_name.ends_with('.') {
            start_name.push('.');
        }
        let mut start = (start_name, rr_type.clone(), None::<String>);
        let mut seen_cursors = Vec::new();
        for _ in 0..MAX_PAGES {
            let (name, ty, ident) = start.clone();
            let what = self.call("ListResourceRecordSets");
            let page = retrying(&self.backoff, &self.notes, &what, || {
                self.client
                    .list_resource_record_sets()
                    .hosted_zone_id(&self.zone_id)
                    .start_record_name(&name)
                    .start_record_type(ty.clone())
                    .set_start_record_identifier(ident.clone())
                    .send()
            })
            .await
            .map_err(|e| e.into_adapter_error(&what))?;
            let mut past = false;
            for rrs in page.resource_record_sets() {
                if normalize_name(rrs.name()) == self.normalized_name
                    && rrs.r#type().as_str() == self.record_type
                {
                    if !found
                        .iter()
                        .any(|f: &ResourceRecordSet| f.set_identifier() == rrs.set_identifier())
                    {
                        found.push(rrs.clone());
                    }
                } else {
                    // Sorted from our name/type on: the first other one
                    // ends the members.
                    past = true;
                    break;
                }
            }
            if past || !page.is_truncated() {
                return Ok(found);
            }
            let next = (
                page.next_record_name().unwrap_or_default().to_string(),
                page.next_record_type().cloned().unwrap_or(rr_type.clone()),
                page.next_record_identifier().map(str::to_string),
            );
            if normalize_name(&next.0) != self.normalized_name
                || next.1.as_str() != self.record_type
            {
                return Ok(found);
            }
            // A server that ignores StartRecordIdentifier would answer the
            // same page forever.
            let cursor = (next.0.clone(), next.2.clone());
            if seen_cursors.contains(&cursor) {
                return Err(AdapterError::permanent(format!(
                    "route53: listing {} does not advance past SetIdentifier {:?}; \
                     cannot read all weighted members",
                    self.what(),
                    cursor.1
                )));
            }
            seen_cursors.push(cursor);
            start = next;
        }
        Err(AdapterError::permanent(format!(
            "route53: {} has more members than {MAX_PAGES} pages can list",
            self.what()
        )))
    }

    /// Blue's and green's records, checked: present, weighted, and no
    /// other member of the name/type.
    async fn pair(&self) -> Result<(ResourceRecordSet, ResourceRecordSet), AdapterError> {
        let members = self.members().await?;
        check_members(&members, &self.blue, &self.green, &self.what())
    }

    /// How a call is named in messages.
    fn call(&self, op: &str) -> String {
        format!("route53 {op} for {}", self.what())
    }
}

/// Finds blue's and green's records among the members of one name/type.
fn check_members(
    members: &[ResourceRecordSet],
    blue: &str,
    green: &str,
    what: &str,
) -> Result<(ResourceRecordSet, ResourceRecordSet), AdapterError> {
    let unknown: Vec<String> = members
        .iter()
        .filter(|m| !matches!(m.set_identifier(), Some(id) if id == blue || id == green))
        .map(|m| match m.set_identifier() {
            Some(id) => format!("`{id}`"),
            None => "a record without SetIdentifier".to_string(),
        })
        .collect();
    if !unknown.is_empty() {
        return Err(AdapterError::permanent(format!(
            "route53: {what} has members other than `{blue}` and `{green}`: {}; \
             they would keep a share of the traffic, so the split could not be \
             controlled. Remove them or name them in the plan",
            unknown.join(", ")
        )));
    }
    let get = |id: &str| -> Result<ResourceRecordSet, AdapterError> {
        let rrs = members
            .iter()
            .find(|m| m.set_identifier() == Some(id))
            .ok_or_else(|| {
                AdapterError::permanent(format!(
                    "route53: no record {what} with SetIdentifier `{id}`; create both \
                     weighted records (`{blue}` and `{green}`) before the rollout"
                ))
            })?;
        match rrs.weight() {
            Some(_) => Ok(rrs.clone()),
            None => Err(AdapterError::permanent(format!(
                "route53: the record {what} with SetIdentifier `{id}` is not weighted \
                 (it has another routing policy); cutover needs two weighted records"
            ))),
        }
    };
    Ok((get(blue)?, get(green)?))
}

/// The TTL clients cache an answer for: the record's, or 60 s for an alias.
pub fn effective_ttl(rrs: &ResourceRecordSet) -> Duration {
    match (rrs.alias_target(), rrs.ttl()) {
        (Some(_), _) => ALIAS_TTL,
        (None, Some(ttl)) => Duration::from_secs(ttl.max(0) as u64),
        (None, None) => Duration::ZERO,
    }
}

/// Refuses holds shorter than the TTL unless allowed. `alias`: the TTL is
/// the alias's fixed 60 s, which no setting lowers, so only the remedies
/// that exist are offered.
fn check_ttl(
    ttl: Duration,
    shortest_hold: Duration,
    allow_short_holds: bool,
    alias: bool,
    what: &str,
) -> Result<(), AdapterError> {
    if shortest_hold < ttl && !allow_short_holds {
        let (ttl_is, lower) = if alias {
            (format!("{} s, fixed for alias records", ttl.as_secs()), "")
        } else {
            (format!("{} s", ttl.as_secs()), ", lower the records' TTL")
        };
        return Err(AdapterError::permanent(format!(
            "route53: the plan's shortest hold ({} s) is shorter than the TTL of {what} \
             ({ttl_is}): resolvers and clients keep the previous answer for a TTL, so the \
             verdict would be taken while traffic is still on the previous split. \
             Lengthen the holds to at least {} s{lower}, or set `allow_short_holds = true` \
             under `[router]` to judge anyway",
            shortest_hold.as_secs_f64(),
            ttl.as_secs()
        )));
    }
    Ok(())
}

/// The weights (green, blue), each in 0..=`max`, whose ratio
/// `green / (green + blue)` is closest to `split`; never both 0. Among
/// equally close pairs, the one whose sum is closest to `preferred_total`
/// (then the smaller sum) wins, so that e.g. 10 % is 10/90 rather than 1/9.
pub fn weights_for(split: Split, max: u16, preferred_total: u32) -> (u16, u16) {
    let s = u64::from(split.basis_points());
    let max64 = u64::from(max.max(1));
    let pref = u64::from(preferred_total).clamp(1, max64);
    if s == 0 {
        return (0, pref as u16);
    }
    if s == 10_000 {
        return (pref as u16, 0);
    }
    // Error of g/(g+b) against s/10000, as the fraction num/den with
    // den = g + b (the common factor 10000 dropped).
    let err = |g: u64, b: u64| -> (u64, u64) { ((g * 10_000).abs_diff(s * (g + b)), g + b) };
    let better = |a: (u64, u64), b: (u64, u64)| -> std::cmp::Ordering {
        let (ea, eb) = (err(a.0, a.1), err(b.0, b.1));
        (ea.0 * eb.1).cmp(&(eb.0 * ea.1)).then_with(|| {
            let (sa, sb) = (a.0 + a.1, b.0 + b.1);
            sa.abs_diff(u64::from(preferred_total))
                .cmp(&sb.abs_diff(u64::from(preferred_total)))
                .then(sa.cmp(&sb))
        })
    };
    let mut best = (0u64, pref);
    for g in 1..=max64 {
        // g / (g + b) = s / 10000  <=>  b = g * (10000 - s) / s
        let num = g * (10_000 - s);
        let lo = (num / s).min(max64);
        let hi = num.div_ceil(s).min(max64);
        for b in [lo, hi] {
            if better((g, b), best).is_lt() {
                best = (g, b);
            }
        }
    }
    (best.0 as u16, best.1 as u16)
}

/// Route53's weights (green, blue) for a split, in the scale of the
/// weights `found` on the records (their sum; 100 when both are 0): the
/// user's 255 / 0 comes back as 255 / 0, not 100 / 0. See [`weights_for`].
pub fn route53_weights(split: Split, found: u64) -> (u8, u8) {
    let preferred = if found == 0 {
        100
    } else {
        found.min(u64::from(MAX_WEIGHT)) as u32
    };
    let (g, b) = weights_for(split, MAX_WEIGHT, preferred);
    (g as u8, b as u8)
}

/// The split two weights give: green's share in basis points, rounded.
/// Both 0 means an equal share (Route53's and the ALB's rule).
pub fn split_of(green: u64, blue: u64) -> Split {
    let total = green + blue;
    if total == 0 {
        return Split::from_basis_points(5_000).expect("in range");
    }
    let bp = (green * 10_000 + total / 2) / total;
    Split::from_basis_points(bp.min(10_000) as u16).expect("in range")
}

/// Lower case, trailing dot, `\ddd` escapes decoded.
pub fn normalize_name(name: &str) -> String {
    let bytes = name.as_bytes();
    let mut out = String::with_capacity(name.len() + 1);
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 3 < bytes.len()
            && bytes[i + 1..i + 4].iter().all(u8::is_ascii_digit)
        {
            let code = (bytes[i + 1] - b'0') as u32 * 64
                + (bytes[i + 2] - b'0') as u32 * 8
                + (bytes[i + 3] - b'0') as u32;
            if let Some(c) = char::from_u32(code) {
                out.push(c);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i] as char);
        i += 1;
    }
    let mut out = out.to_ascii_lowercase();
    if !out.ends_with('.') {
        out.push('.');
    }
    out
}

#[async_trait]
impl Router for Route53Router {
    fn describe(&self) -> String {
        format!(
            "route53 {} {} (zone {})",
            self.record_name, self.record_type, self.zone_id
        )
    }

    async fn apply(&self, split: Split) -> Result<Split, AdapterError> {
        let (blue, green) = self.pair().await?;
        let scale = *self.scale.get_or_init(|| weight(&blue) + weight(&green));
        let (w_g, w_b) = route53_weights(split, scale);
        let mut new_blue = blue;
        new_blue.weight = Some(i64::from(w_b));
        let mut new_green = green;
        new_green.weight = Some(i64::from(w_g));
        let batch = ChangeBatch::builder()
            .comment(format!("cutover: green {split}"))
            .changes(upsert(new_blue)?)
            .changes(upsert(new_green)?)
            .build()
            .map_err(|e| AdapterError::permanent(format!("route53: change batch: {e}")))?;
        let what = self.call("ChangeResourceRecordSets");
        let out = retrying(&self.backoff, &self.notes, &what, || {
            self.client
                .change_resource_record_sets()
                .hosted_zone_id(&self.zone_id)
                .change_batch(batch.clone())
                .send()
        })
        .await
        .map_err(|e| e.into_adapter_error(&what))?;
        tracing::info!(
            router = %self.describe(),
            green = w_g,
            blue = w_b,
            "route53 weights submitted"
        );
        let info = out.change_info();
        let insync = info
            .map(|i| *i.status() == ChangeStatus::Insync)
            .unwrap_or(false);
        if !insync {
            let id = info.map(|i| i.id().to_string()).unwrap_or_default();
            let client = &self.client;
            let (backoff, notes) = (&self.backoff, &self.notes);
            let what = format!("route53 GetChange {id}");
            wait_insync(self.insync_timeout, self.poll_interval, &id, || async {
                let change = retrying(backoff, notes, &what, || client.get_change().id(&id).send())
                    .await
                    .map_err(|e| e.into_adapter_error(&what))?;
                Ok(change
                    .change_info()
                    .map(|i| *i.status() == ChangeStatus::Insync)
                    .unwrap_or(false))
            })
            .await?;
        }
        Ok(split_of(u64::from(w_g), u64::from(w_b)))
    }

    async fn current(&self) -> Result<Split, AdapterError> {
        let (blue, green) = self.pair().await?;
        self.scale.get_or_init(|| weight(&blue) + weight(&green));
        Ok(split_of(weight(&green), weight(&blue)))
    }

    fn take_notes(&self) -> Vec<String> {
        self.notes.take()
    }

    async fn preflight(&self, shortest_hold: Duration) -> Result<(), AdapterError> {
        let (blue, green) = self.pair().await?;
        let ttl = effective_ttl(&blue).max(effective_ttl(&green));
        let alias = [&blue, &green]
            .iter()
            .any(|r| r.alias_target().is_some() && effective_ttl(r) == ttl);
        check_ttl(
            ttl,
            shortest_hold,
            self.allow_short_holds,
            alias,
            &self.what(),
        )
    }
}

/// A weighted record's weight (0 when unset), within Route53's range.
fn weight(r: &ResourceRecordSet) -> u64 {
    r.weight().unwrap_or(0).clamp(0, i64::from(MAX_WEIGHT)) as u64
}

fn upsert(rrs: ResourceRecordSet) -> Result<Change, AdapterError> {
    Change::builder()
        .action(ChangeAction::Upsert)
        .resource_record_set(rrs)
        .build()
        .map_err(|e| AdapterError::permanent(format!("route53: change: {e}")))
}

/// Polls `insync` every `interval` until it answers true, at most `timeout`.
pub(crate) async fn wait_insync<F, Fut>(
    timeout: Duration,
    interval: Duration,
    change_id: &str,
    mut insync: F,
) -> Result<(), AdapterError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<bool, AdapterError>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if insync().await? {
            return Ok(());
        }
        let now = tokio::time::Instant::now();
        if now >= deadline {
            return Err(AdapterError::transient(format!(
                "route53: change {change_id} was not INSYNC after {} s; the new weights \
                 are submitted but not yet served by every name server",
                timeout.as_secs()
            )));
        }
        tokio::time::sleep(interval.min(deadline - now)).await;
    }
}

// ---------------------------------------------------------------------------
// Errors and retries, shared with the ALB router.

/// Exponential backoff with full jitter for throttled calls.
#[derive(Clone, Debug)]
pub(crate) struct Backoff {
    /// Calls made at most (the first included).
    pub attempts: u32,
    pub base: Duration,
    pub cap: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            attempts: 5,
            base: Duration::from_millis(200),
            cap: Duration::from_secs(5),
        }
    }
}

impl Backoff {
    /// The wait before retry number `retry` (0-based), for a uniform
    /// `unit` in [0, 1): full jitter over `min(cap, base * 2^retry)`.
    pub(crate) fn delay(&self, retry: u32, unit: f64) -> Duration {
        let ceiling = self
            .base
            .saturating_mul(2u32.saturating_pow(retry.min(20)))
            .min(self.cap);
        ceiling.mul_f64(unit.clamp(0.0, 1.0))
    }
}

/// A uniform number in [0, 1) from the process's random hasher keys.
fn unit_random() -> f64 {
    let mut h = RandomState::new().build_hasher();
    h.write_u64(0x5eed);
    (h.finish() >> 11) as f64 / (1u64 << 53) as f64
}

/// Lines for the rollout's history that a call had to say though it
/// succeeded (throttling it absorbed), until the engine takes them.
#[derive(Debug, Default)]
pub(crate) struct Notes(std::sync::Mutex<Vec<String>>);

impl Notes {
    fn push(&self, note: String) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).push(note);
    }

    pub(crate) fn take(&self) -> Vec<String> {
        std::mem::take(&mut *self.0.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

/// A failed SDK call, after retries.
pub(crate) struct CallError<E> {
    pub error: SdkError<E>,
    /// Requests sent (the SDK's own retries are off for these clients, so
    /// each attempt is one request).
    pub attempts: u32,
    pub elapsed: Duration,
}

impl<E> CallError<E>
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    pub(crate) fn into_adapter_error(self, context: &str) -> AdapterError {
        let mut e = classify(context, &self.error);
        if self.attempts > 1 {
            e.message = format!(
                "{} ({} requests in {})",
                e.message,
                self.attempts,
                Human(self.elapsed)
            );
        }
        e
    }
}

/// Error codes worth retrying at once with backoff.
const RETRY_CODES: &[&str] = &[
    "Throttling",
    "ThrottlingException",
    "ThrottledException",
    "RequestLimitExceeded",
    "TooManyRequestsException",
    "PriorRequestNotComplete",
];

/// Further codes that are transient but not retried inside one call.
const TRANSIENT_CODES: &[&str] = &[
    "ServiceUnavailable",
    "InternalError",
    "InternalFailure",
    "RequestTimeout",
    "RequestTimeoutException",
];

fn retryable<E: ProvideErrorMetadata>(e: &SdkError<E>) -> bool {
    e.code().is_some_and(|c| RETRY_CODES.contains(&c))
        || e.raw_response().is_some_and(|r| r.status().as_u16() == 429)
}

/// An SDK error in one line: the service's code and message, or what went
/// wrong on the way (the innermost cause). The whole chain goes to the
/// debug log.
pub(crate) fn brief<E>(e: &SdkError<E>) -> String
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    let innermost = |e: &dyn std::error::Error| {
        let mut cause = e;
        while let Some(next) = cause.source() {
            cause = next;
        }
        cause.to_string()
    };
    match e {
        SdkError::TimeoutError(_) => "no answer within the SDK's timeout".to_string(),
        SdkError::DispatchFailure(_) => {
            format!("request not sent or answer lost: {}", innermost(e))
        }
        SdkError::ResponseError(_) => format!("unreadable answer: {}", innermost(e)),
        SdkError::ConstructionFailure(_) => format!("request could not be built: {}", innermost(e)),
        _ => {
            let status = e.raw_response().map(|r| r.status().as_u16());
            match (e.code(), e.message()) {
                (Some(code), Some(message)) => format!("{code}: {message}"),
                (Some(code), None) => code.to_string(),
                _ => match status {
                    Some(s) => format!("HTTP {s}"),
                    None => innermost(e),
                },
            }
        }
    }
}

/// Transient: throttling, 5xx, timeouts, connection failures, unreadable
/// responses. Permanent: everything the service refused on its merits
/// (InvalidChangeBatch, NoSuchHostedZone, AccessDenied, not found...).
pub(crate) fn classify<E>(context: &str, e: &SdkError<E>) -> AdapterError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    tracing::debug!(error = %DisplayErrorContext(e), "{context}");
    let message = format!("{context}: {}", brief(e));
    let transient = match e {
        SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) | SdkError::ResponseError(_) => {
            true
        }
        SdkError::ConstructionFailure(_) => false,
        _ => {
            let status = e.raw_response().map(|r| r.status().as_u16());
            let code = e.code().unwrap_or_default();
            retryable(e) || TRANSIENT_CODES.contains(&code) || status.is_some_and(|s| s >= 500)
        }
    };
    if transient {
        AdapterError::transient(message)
    } else {
        AdapterError::permanent(message)
    }
}

/// Calls `op` until it succeeds, fails with a non-throttling error, or
/// `backoff.attempts` calls were made; sleeps with jitter in between.
/// Throttling absorbed on the way is noted (as `what`) for the history.
pub(crate) async fn retrying<T, E, F, Fut>(
    backoff: &Backoff,
    notes: &Notes,
    what: &str,
    mut op: F,
) -> Result<T, CallError<E>>
where
    E: ProvideErrorMetadata,
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, SdkError<E>>>,
{
    let mut pending = Pending {
        notes,
        what,
        started: tokio::time::Instant::now(),
        requests: 0,
        throttled: None,
    };
    loop {
        pending.requests += 1;
        match op().await {
            Ok(v) => {
                if let Some(code) = pending.throttled.take() {
                    notes.push(format!(
                        "{what}: {code} absorbed: {} requests in {}",
                        pending.requests,
                        Human(pending.started.elapsed())
                    ));
                }
                return Ok(v);
            }
            Err(error) if pending.requests < backoff.attempts.max(1) && retryable(&error) => {
                let code = error.code().unwrap_or("HTTP 429").to_string();
                tracing::debug!(%code, attempt = pending.requests, "{what}: throttled; retrying");
                pending.throttled = Some(code);
                tokio::time::sleep(backoff.delay(pending.requests - 1, unit_random())).await;
            }
            Err(error) => {
                pending.throttled = None;
                return Err(CallError {
                    error,
                    attempts: pending.requests,
                    elapsed: pending.started.elapsed(),
                });
            }
        }
    }
}

/// A [`retrying`] call under way. Dropped while throttled (the engine
/// cut the call at its limit), it notes the requests the throttling cost,
/// which no error will report.
struct Pending<'a> {
    notes: &'a Notes,
    what: &'a str,
    started: tokio::time::Instant,
    requests: u32,
    /// The code of the last throttling answer, while retrying.
    throttled: Option<String>,
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        if let Some(code) = self.throttled.take() {
            self.notes.push(format!(
                "{}: {code}: {} requests in {} before the call was cut short",
                self.what,
                self.requests,
                Human(self.started.elapsed())
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(bp: u16) -> Split {
        Split::from_basis_points(bp).unwrap()
    }

    /// |g/(g+b) - s| as an exact fraction (num, den).
    fn error(g: u64, b: u64, s: u64) -> (u64, u64) {
        ((g * 10_000).abs_diff(s * (g + b)), (g + b) * 10_000)
    }

    fn le(a: (u64, u64), b: (u64, u64)) -> bool {
        a.0 * b.1 <= b.0 * a.1
    }

    #[test]
    fn the_scale_found_is_kept_where_the_split_allows() {
        assert_eq!(route53_weights(Split::ZERO, 255), (0, 255));
        assert_eq!(route53_weights(Split::FULL, 1), (1, 0));
        assert_eq!(route53_weights(split(5_000), 10), (5, 5));
        // 10 % cannot be written in 255: exact first, then nearest sum.
        assert_eq!(route53_weights(split(1_000), 255), (25, 225));
    }

    #[test]
    fn ends_and_round_values_are_exact_and_readable() {
        assert_eq!(route53_weights(Split::ZERO, 100), (0, 100));
        assert_eq!(route53_weights(Split::FULL, 100), (100, 0));
        assert_eq!(route53_weights(split(1_000), 100), (10, 90));
        assert_eq!(route53_weights(split(5_000), 100), (50, 50));
        assert_eq!(route53_weights(split(2_500), 100), (25, 75));
        // Both at 0: out of 100.
        assert_eq!(route53_weights(Split::FULL, 0), (100, 0));
        // 0.1 % is not representable: 0 is closer than 1/256.
        assert_eq!(route53_weights(split(10), 100), (0, 100));
        // 0.3 % is closer to 1/256 (0.39 %) than to 0.
        assert_eq!(route53_weights(split(30), 100), (1, 255));
        assert_eq!(split_of(1, 255), split(39));
    }

    #[test]
    fn every_split_maps_to_valid_weights_within_the_naive_error() {
        for bp in 0..=10_000u16 {
            let (g, b) = route53_weights(split(bp), 100);
            let (g, b) = (u64::from(g), u64::from(b));
            assert!(g + b > 0, "{bp}: both zero");
            if bp == 0 {
                assert_eq!(g, 0);
            }
            if bp == 10_000 {
                assert_eq!(b, 0);
            }
            if bp > 0 && bp < 10_000 {
                // At least as good as the naive mapping onto 255 + 255.
                let ng = (u64::from(bp) * 255 + 5_000) / 10_000;
                let naive = error(ng, 255 - ng, u64::from(bp));
                assert!(
                    le(error(g, b, u64::from(bp)), naive),
                    "{bp}: worse than naive"
                );
            }
            // The realized split is never more than 20 bp away (1/512 < 20 bp
            // except near the ends, where 0/100 and 100/0 are exact).
            let realized = split_of(g, b).basis_points();
            assert!(realized.abs_diff(bp) <= 20, "{bp}: realized {realized}");
        }
    }

    #[test]
    fn the_mapping_is_the_best_representable_by_brute_force() {
        let sample = (0..=10_000u64)
            .filter(|bp| bp % 37 == 0 || *bp < 150 || *bp > 9_850)
            .collect::<Vec<_>>();
        for s in sample {
            let (g, b) = route53_weights(split(s as u16), 100);
            let got = error(u64::from(g), u64::from(b), s);
            let mut best = (1, 1);
            for gg in 0..=255u64 {
                for bb in 0..=255u64 {
                    if gg + bb > 0 {
                        let e = error(gg, bb, s);
                        if !le(best, e) {
                            best = e;
                        }
                    }
                }
            }
            assert!(le(got, best), "{s}: {g}/{b} is not the closest");
        }
    }

    #[test]
    fn alb_range_mapping() {
        assert_eq!(weights_for(split(1_000), 999, 1000), (100, 900));
        assert_eq!(weights_for(split(10), 999, 1000), (1, 999));
        assert_eq!(weights_for(Split::FULL, 999, 1000), (999, 0));
        assert_eq!(weights_for(Split::ZERO, 999, 1000), (0, 999));
        for bp in 0..=10_000u16 {
            let (g, b) = weights_for(split(bp), 999, 1000);
            assert!(g <= 999 && b <= 999 && g + b > 0);
            let realized = split_of(u64::from(g), u64::from(b)).basis_points();
            assert!(realized.abs_diff(bp) <= 5, "{bp}: realized {realized}");
        }
    }

    #[test]
    fn names_are_compared_normalized() {
        assert_eq!(normalize_name("Web.Example.COM"), "web.example.com.");
        assert_eq!(normalize_name("web.example.com."), "web.example.com.");
        assert_eq!(normalize_name("\\052.example.com."), "*.example.com.");
    }

    #[test]
    fn ttl_rule() {
        let what = "`x` A in zone Z";
        let s = Duration::from_secs;
        assert!(check_ttl(s(60), s(60), false, false, what).is_ok());
        let e = check_ttl(s(300), s(60), false, false, what).unwrap_err();
        assert!(!e.transient);
        assert!(
            e.message.contains("at least 300 s, lower the records' TTL")
                && e.message
                    .contains("`allow_short_holds = true` under `[router]`"),
            "{e}"
        );
        // An alias's TTL cannot be lowered: not offered.
        let e = check_ttl(s(60), s(10), false, true, what).unwrap_err();
        assert!(
            e.message.contains("60 s, fixed for alias records") && !e.message.contains("lower"),
            "{e}"
        );
        assert!(check_ttl(s(300), s(60), true, false, what).is_ok());
    }

    #[test]
    fn backoff_grows_exponentially_with_a_cap() {
        let b = Backoff::default();
        assert_eq!(b.delay(0, 1.0), Duration::from_millis(200));
        assert_eq!(b.delay(1, 1.0), Duration::from_millis(400));
        assert_eq!(b.delay(3, 1.0), Duration::from_millis(1600));
        assert_eq!(b.delay(10, 1.0), Duration::from_secs(5));
        assert_eq!(b.delay(3, 0.0), Duration::ZERO);
        assert_eq!(b.delay(1, 0.5), Duration::from_millis(200));
        for _ in 0..100 {
            let u = unit_random();
            assert!((0.0..1.0).contains(&u));
        }
    }

    type ChangeError =
        aws_sdk_route53::operation::change_resource_record_sets::ChangeResourceRecordSetsError;

    fn service_error(code: &str, status: u16) -> SdkError<ChangeError> {
        let meta = aws_sdk_route53::error::ErrorMetadata::builder()
            .code(code)
            .message("from the test")
            .build();
        let raw = aws_sdk_route53::config::http::HttpResponse::new(
            status.try_into().unwrap(),
            aws_smithy_types::body::SdkBody::empty(),
        );
        SdkError::service_error(ChangeError::generic(meta), raw)
    }

    #[test]
    fn errors_are_classified() {
        for (code, status, transient) in [
            ("Throttling", 400, true),
            ("PriorRequestNotComplete", 400, true),
            ("ServiceUnavailable", 503, true),
            ("Whatever", 500, true),
            ("SlowDown", 429, true),
            ("InvalidChangeBatch", 400, false),
            ("NoSuchHostedZone", 404, false),
            ("AccessDenied", 403, false),
        ] {
            let e = classify("ctx", &service_error(code, status));
            assert_eq!(e.transient, transient, "{code}: {e}");
            assert!(e.message.starts_with("ctx: "), "{e}");
        }
        let timeout: SdkError<ChangeError> = SdkError::timeout_error("slow");
        assert!(classify("ctx", &timeout).transient);
        let dispatch: SdkError<ChangeError> = SdkError::dispatch_failure(
            aws_sdk_route53::error::ConnectorError::io("refused".into()),
        );
        assert!(classify("ctx", &dispatch).transient);
    }

    #[tokio::test(start_paused = true)]
    async fn throttling_is_retried_with_backoff_then_surfaces_as_transient() {
        let backoff = Backoff::default();
        let notes = Notes::default();
        let mut calls = 0;
        let started = tokio::time::Instant::now();
        let out = retrying(&backoff, &notes, "route53 ChangeResourceRecordSets", || {
            calls += 1;
            let n = calls;
            async move {
                match n {
                    1 => Err(service_error("Throttling", 400)),
                    2 => Err(service_error("PriorRequestNotComplete", 400)),
                    _ => Ok(n),
                }
            }
        })
        .await;
        assert_eq!(out.ok(), Some(3));
        // At most 200 ms + 400 ms of jittered waits.
        assert!(started.elapsed() <= Duration::from_millis(600));
        // Absorbed, but said: the last code, and the requests sent.
        let said = notes.take();
        assert_eq!(said.len(), 1, "{said:?}");
        assert!(
            said[0].starts_with("route53 ChangeResourceRecordSets: PriorRequestNotComplete absorbed: 3 requests in "),
            "{said:?}"
        );

        let mut calls = 0;
        let e = retrying(&backoff, &notes, "route53 ChangeResourceRecordSets", || {
            calls += 1;
            async { Err::<(), _>(service_error("Throttling", 400)) }
        })
        .await
        .err()
        .unwrap()
        .into_adapter_error("route53 ChangeResourceRecordSets");
        assert_eq!(calls, backoff.attempts);
        assert!(e.transient && e.message.contains("(5 requests in "), "{e}");
        // One line: the code and message, not the SDK's debug dump.
        assert!(
            !e.message.contains("ServiceError") && !e.message.contains('\n'),
            "{e}"
        );
        assert!(
            notes.take().is_empty(),
            "a failed call is reported by its error"
        );

        let mut calls = 0;
        let e = retrying(&backoff, &notes, "route53 ChangeResourceRecordSets", || {
            calls += 1;
            async { Err::<(), _>(service_error("InvalidChangeBatch", 400)) }
        })
        .await
        .err()
        .unwrap()
        .into_adapter_error("route53 ChangeResourceRecordSets");
        assert_eq!(calls, 1);
        assert!(
            !e.transient && e.message.contains("InvalidChangeBatch"),
            "{e}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn insync_is_polled_until_reached_or_timed_out() {
        let mut calls = 0;
        let started = tokio::time::Instant::now();
        wait_insync(
            Duration::from_secs(60),
            Duration::from_secs(2),
            "C1",
            || {
                calls += 1;
                let done = calls >= 3;
                async move { Ok(done) }
            },
        )
        .await
        .unwrap();
        assert_eq!(calls, 3);
        assert_eq!(started.elapsed(), Duration::from_secs(4));

        let started = tokio::time::Instant::now();
        let e = wait_insync(
            Duration::from_secs(5),
            Duration::from_secs(2),
            "C2",
            || async { Ok(false) },
        )
        .await
        .unwrap_err();
        assert!(e.transient && e.message.contains("C2"), "{e}");
        assert_eq!(started.elapsed(), Duration::from_secs(5));

        let e = wait_insync(
            Duration::from_secs(5),
            Duration::from_secs(2),
            "C3",
            || async { Err(AdapterError::permanent("NoSuchChange")) },
        )
        .await
        .unwrap_err();
        assert!(!e.transient);
    }
}
