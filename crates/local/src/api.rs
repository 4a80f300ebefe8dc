//! The admin API's JSON documents, shared by the proxy (which writes them)
//! and [`AdminClient`](crate::AdminClient) (which reads them).

use std::fmt;

use serde::{Deserialize, Serialize};

/// Blue (the live version) or green (the candidate).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Colour {
    Blue,
    Green,
}

impl Colour {
    pub const BOTH: [Colour; 2] = [Colour::Blue, Colour::Green];

    /// The candidate's pool under a plan's router settings: green, unless
    /// the colours' roles are swapped.
    pub fn candidate(router: &cutover_core::plan::LocalRouter) -> Colour {
        if router.swapped {
            Colour::Blue
        } else {
            Colour::Green
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Colour::Blue => "blue",
            Colour::Green => "green",
        }
    }

    pub fn other(self) -> Colour {
        match self {
            Colour::Blue => Colour::Green,
            Colour::Green => Colour::Blue,
        }
    }

    pub(crate) fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for Colour {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `GET /split`, and the answer to `PUT /split`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SplitReport {
    pub split_bp: u16,
    pub split_percent: f64,
}

/// One entry of `GET /services`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ServiceReport {
    pub name: String,
    /// Empty: every host no other service names.
    pub hosts: Vec<String>,
    #[serde(flatten)]
    pub split: SplitReport,
}

/// The body of `PUT /split`: exactly one of the two fields.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SplitRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub split_percent: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub split_bp: Option<u64>,
}

/// An admin API error body: `{"error": "..."}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ErrorReport {
    pub error: String,
}

/// `GET /metrics?window=30s[&percentile=99.5]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MetricsReport {
    /// The window actually used (capped at the proxy's `metrics_window`).
    pub window: String,
    pub window_ms: u64,
    /// The longest window the proxy keeps.
    pub max_window_ms: u64,
    /// The window's time resolution: it covers the last `window_ms` rounded
    /// up to whole slots of this width, the current one included.
    pub resolution_ms: u64,
    pub split_bp: u16,
    pub blue: WindowStats,
    pub green: WindowStats,
    /// Counts since the proxy started.
    pub totals: Totals,
    pub uptime_ms: u64,
    /// Set when the window asked for was longer than the proxy keeps: what
    /// was asked and what the figures cover instead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

impl MetricsReport {
    /// One pool's figures.
    pub fn of(&self, colour: Colour) -> &WindowStats {
        match colour {
            Colour::Blue => &self.blue,
            Colour::Green => &self.green,
        }
    }
}

impl MetricsReport {
    pub fn colour(&self, colour: Colour) -> &WindowStats {
        match colour {
            Colour::Blue => &self.blue,
            Colour::Green => &self.green,
        }
    }
}

/// One colour's numbers over the window.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WindowStats {
    pub requests: u64,
    pub errors_5xx: u64,
    /// 5xx share, 0.0 to 1.0 (0 when there were no requests).
    pub error_rate: f64,
    /// The same in percent.
    pub error_percent: f64,
    /// Latency until the upstream's response head, in milliseconds;
    /// `null` without requests.
    pub latency_ms: Latencies,
    /// Extra percentiles asked for with `percentile=`.
    #[serde(default)]
    pub percentiles: Vec<PercentileValue>,
}

impl WindowStats {
    /// The latency at `percentile` (0..=100), if it was reported.
    pub fn percentile_ms(&self, percentile: f64) -> Option<f64> {
        let fixed = [
            (50.0, self.latency_ms.p50),
            (90.0, self.latency_ms.p90),
            (99.0, self.latency_ms.p99),
            (99.9, self.latency_ms.p999),
        ];
        self.percentiles
            .iter()
            .find(|p| (p.percentile - percentile).abs() < 1e-9)
            .map(|p| p.latency_ms)
            .or_else(|| {
                fixed
                    .iter()
                    .find(|(p, _)| (p - percentile).abs() < 1e-9)
                    .map(|(_, v)| *v)
            })
            .flatten()
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Latencies {
    pub p50: Option<f64>,
    pub p90: Option<f64>,
    pub p99: Option<f64>,
    pub p999: Option<f64>,
    pub max: Option<f64>,
    pub mean: Option<f64>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PercentileValue {
    pub percentile: f64,
    pub latency_ms: Option<f64>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Totals {
    pub blue: ColourTotals,
    pub green: ColourTotals,
}

impl Totals {
    pub fn colour(&self, colour: Colour) -> &ColourTotals {
        match colour {
            Colour::Blue => &self.blue,
            Colour::Green => &self.green,
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ColourTotals {
    pub requests: u64,
    pub errors_5xx: u64,
}

/// `GET /health`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HealthReport {
    /// Whether `[health_probe]` is configured; without it every upstream
    /// stays `unknown` (and is routed to).
    pub probes_enabled: bool,
    pub probe: Option<ProbeSettings>,
    pub upstreams: Vec<UpstreamHealth>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ProbeSettings {
    pub path: String,
    pub interval_ms: u64,
    pub timeout_ms: u64,
    pub unhealthy_after: u32,
    pub healthy_after: u32,
}

/// What the probes know about an upstream.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProbeState {
    /// Not probed yet (or probes are off): routed to as if healthy.
    Unknown,
    Healthy,
    Unhealthy,
}

impl fmt::Display for ProbeState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ProbeState::Unknown => "unknown",
            ProbeState::Healthy => "healthy",
            ProbeState::Unhealthy => "unhealthy",
        })
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct UpstreamHealth {
    pub colour: Colour,
    pub url: String,
    /// Whether the data plane routes to it (`state` is not unhealthy).
    pub healthy: bool,
    pub state: ProbeState,
    pub consecutive_failures: u32,
    pub consecutive_successes: u32,
    pub last_probe: Option<ProbeResult>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ProbeResult {
    pub ok: bool,
    /// The HTTP status, if the probe got an answer.
    pub status: Option<u16>,
    /// Why it failed, if it did.
    pub error: Option<String>,
    /// Wall-clock time of the probe, milliseconds since the Unix epoch.
    pub at_unix_ms: u64,
    /// How long ago the probe ran, at the time of the report.
    pub age_ms: u64,
    pub latency_ms: f64,
}
