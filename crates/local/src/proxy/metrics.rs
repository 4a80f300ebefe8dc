//! Per-colour request metrics over a sliding window.
//!
//! Design: each colour has a ring of time buckets (1 s wide for the default
//! 60 s window; `max(100 ms, metrics_window / 60)` in general, so the ring
//! never holds more than ~62 buckets). A bucket holds a request counter, a
//! 5xx counter, a latency sum, a latency histogram whose counts are
//! `AtomicU32`s laid out like an HdrHistogram with 3 significant figures
//! over 1 µs..60 s (2048 sub-buckets per power of two, 17 192 counts), and
//! request and 5xx counters for each hundredth of the bucket ("slots", 10 ms
//! for 1 s buckets).
//!
//! A window covers exactly what it says to one slot: the current, partly
//! elapsed slot and, before it, `window` rounded up to whole slots, so it
//! sees at least `window` and less than `window + slot` of traffic whatever
//! the phase of the read (a 1 s window covers 1 s to 1.01 s): a check's
//! `min_requests` is never missed for want of a sliver of its window. Requests and 5xx are
//! counted per slot, so they are exact to that. Latencies are kept per
//! bucket: the oldest bucket, which the window covers only in part, adds
//! its latencies weighted by the share of its requests that fall inside the
//! window (what its slots say), which is exact when latencies do not drift
//! within one bucket.
//!
//! A bucket's histogram and slot counters are allocated by its first
//! request: a service without traffic keeps a few KB.
//!
//! Recording is lock-free: six relaxed `fetch_add`s into the current
//! bucket. The only lock is taken once per bucket per lap of the ring, by
//! the first request that lands in a bucket still holding an old epoch; it
//! clears the bucket and publishes the new epoch (release), so writers that
//! see the new epoch (acquire) count into a clean bucket. A writer stalled
//! for a whole lap of the ring may count one request into a newer bucket:
//! harmless for monitoring.
//!
//! Measured (`cargo test --release -p cutover-local record_cost -- --ignored
//! --nocapture`, 2-core VM): see docs/proxy.md.
//!
//! Queries (admin API, rare) merge the buckets of the window into weighted
//! histogram counts and read quantiles from them.
//!
//! Time comes from `tokio::time::Instant`, so tests run it in paused time.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::*};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use tokio::time::Instant;

use crate::api::{Colour, ColourTotals, Latencies, PercentileValue, WindowStats};

/// Largest latency tracked (larger ones count as this).
pub const MAX_LATENCY_US: u64 = 60_000_000;
const SUB_BITS: u32 = 11; // 2048 sub-buckets: 3 significant figures
const HALF: u64 = 1 << (SUB_BITS - 1);
const COUNTS_LEN: usize = index_of(MAX_LATENCY_US) + 1;
/// Slots per bucket: requests and 5xx are counted to a hundredth of one.
const SLOTS: u64 = 100;

/// The histogram slot of a latency in µs (log-linear, like HdrHistogram).
const fn index_of(us: u64) -> usize {
    let us = if us > MAX_LATENCY_US {
        MAX_LATENCY_US
    } else {
        us
    };
    if us < 2 * HALF {
        return us as usize;
    }
    let shift = 63 - us.leading_zeros() - (SUB_BITS - 1);
    ((shift as u64) * HALF + (us >> shift)) as usize
}

/// The largest latency in µs that falls into slot `idx`.
const fn highest_value(idx: usize) -> u64 {
    if idx + 1 >= COUNTS_LEN {
        MAX_LATENCY_US
    } else {
        lowest_value(idx + 1) - 1
    }
}

/// The smallest latency in µs that falls into slot `idx`.
const fn lowest_value(idx: usize) -> u64 {
    let idx = idx as u64;
    if idx < 2 * HALF {
        return idx;
    }
    let shift = idx / HALF - 1;
    (idx % HALF + HALF) << shift
}

struct Bucket {
    /// Which time slot this bucket holds; 0 = never used.
    epoch: AtomicU64,
    requests: AtomicU64,
    errors: AtomicU64,
    latency_sum_us: AtomicU64,
    counts: OnceLock<Box<[AtomicU32]>>,
    /// Requests per slot of the bucket, then 5xx per slot; allocated by
    /// the first request, like `counts`, so that a service without traffic
    /// costs a few KB (a proxy may front thousands).
    slots: OnceLock<Box<[AtomicU32]>>,
    rollover: Mutex<()>,
}

impl Bucket {
    fn new() -> Bucket {
        Bucket {
            epoch: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            latency_sum_us: AtomicU64::new(0),
            counts: OnceLock::new(),
            slots: OnceLock::new(),
            rollover: Mutex::new(()),
        }
    }

    fn counts(&self) -> &[AtomicU32] {
        self.counts
            .get_or_init(|| (0..COUNTS_LEN).map(|_| AtomicU32::new(0)).collect())
    }

    fn slots(&self) -> &[AtomicU32] {
        self.slots
            .get_or_init(|| (0..2 * SLOTS).map(|_| AtomicU32::new(0)).collect())
    }

    /// Makes this bucket hold `epoch`, clearing what it held before.
    #[cold]
    fn roll_to(&self, epoch: u64) {
        let _guard = self.rollover.lock().unwrap_or_else(|e| e.into_inner());
        if self.epoch.load(Acquire) >= epoch {
            return; // someone else rolled it (or a stalled writer: count it in the newer slot)
        }
        self.requests.store(0, Relaxed);
        self.errors.store(0, Relaxed);
        self.latency_sum_us.store(0, Relaxed);
        if let Some(slots) = self.slots.get() {
            for c in slots.iter() {
                c.store(0, Relaxed);
            }
        }
        if let Some(counts) = self.counts.get() {
            for c in counts.iter() {
                c.store(0, Relaxed);
            }
        }
        self.epoch.store(epoch, Release);
    }
}

struct ColourMetrics {
    total_requests: AtomicU64,
    total_errors: AtomicU64,
    buckets: Box<[Bucket]>,
}

/// Both colours' metrics.
pub struct Metrics {
    start: Instant,
    bucket_ms: u64,
    max_window: Duration,
    colours: [ColourMetrics; 2],
}

/// One colour's merged numbers over a window.
pub struct Snapshot {
    pub requests: u64,
    pub errors_5xx: u64,
    /// Latencies summed, in µs, the partly covered bucket's weighted.
    latency_sum_us: f64,
    /// Histogram counts per slot of [`index_of`], weighted likewise.
    counts: Vec<f64>,
}

impl Snapshot {
    fn weight(&self) -> f64 {
        self.counts.iter().sum()
    }

    /// Latency at `percentile` (0..=100) in ms; `None` without requests:
    /// the smallest recorded latency that at least that share of requests
    /// did not exceed (to 3 significant figures, the top of its slot).
    pub fn percentile_ms(&self, percentile: f64) -> Option<f64> {
        let total = self.weight();
        if total <= 0.0 {
            return None;
        }
        let wanted = (percentile / 100.0).clamp(0.0, 1.0) * total;
        let mut seen = 0.0;
        let mut last = None;
        for (idx, &w) in self.counts.iter().enumerate() {
            if w <= 0.0 {
                continue;
            }
            seen += w;
            last = Some(idx);
            // A relative tolerance absorbs the rounding of weighted sums.
            if seen >= wanted * (1.0 - 1e-12) {
                break;
            }
        }
        last.map(|idx| highest_value(idx) as f64 / 1000.0)
    }

    fn max_ms(&self) -> Option<f64> {
        self.counts
            .iter()
            .rposition(|&w| w > 0.0)
            .map(|idx| highest_value(idx) as f64 / 1000.0)
    }

    pub fn stats(&self, extra_percentiles: &[f64]) -> WindowStats {
        let rate = if self.requests == 0 {
            0.0
        } else {
            self.errors_5xx as f64 / self.requests as f64
        };
        let weight = self.weight();
        WindowStats {
            requests: self.requests,
            errors_5xx: self.errors_5xx,
            error_rate: rate,
            error_percent: rate * 100.0,
            latency_ms: Latencies {
                p50: self.percentile_ms(50.0),
                p90: self.percentile_ms(90.0),
                p99: self.percentile_ms(99.0),
                p999: self.percentile_ms(99.9),
                max: self.max_ms(),
                mean: (weight > 0.0).then(|| self.latency_sum_us / weight / 1000.0),
            },
            percentiles: extra_percentiles
                .iter()
                .map(|&p| PercentileValue {
                    percentile: p,
                    latency_ms: self.percentile_ms(p),
                })
                .collect(),
        }
    }
}

impl Metrics {
    /// Metrics keeping at most `max_window` of history, starting now.
    pub fn new(max_window: Duration) -> Metrics {
        let max_ms = max_window.as_millis().clamp(1, u128::from(u64::MAX / 4)) as u64;
        let bucket_ms = max_ms.div_ceil(60).div_ceil(100).max(1) * 100;
        let ring = (max_ms.div_ceil(bucket_ms) + 2) as usize;
        let colour = || ColourMetrics {
            total_requests: AtomicU64::new(0),
            total_errors: AtomicU64::new(0),
            buckets: (0..ring).map(|_| Bucket::new()).collect(),
        };
        Metrics {
            start: Instant::now(),
            bucket_ms,
            max_window,
            colours: [colour(), colour()],
        }
    }

    pub fn max_window(&self) -> Duration {
        self.max_window
    }

    /// The width of one bucket of the ring.
    #[cfg(test)]
    fn bucket_width(&self) -> Duration {
        Duration::from_millis(self.bucket_ms)
    }

    /// The time resolution of windows: one slot, a hundredth of a bucket.
    pub fn resolution(&self) -> Duration {
        Duration::from_micros(self.slot_us())
    }

    fn slot_us(&self) -> u64 {
        self.bucket_ms * 1000 / SLOTS
    }

    pub fn uptime(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.start)
    }

    /// Slots since the start, the current one being `slot(now)`.
    fn slot(&self, now: Instant) -> u64 {
        (now.saturating_duration_since(self.start).as_micros() as u64) / self.slot_us()
    }

    /// Counts one finished request (response head sent) at `now`.
    #[inline]
    pub fn record(&self, colour: Colour, is_5xx: bool, latency: Duration, now: Instant) {
        let m = &self.colours[colour.index()];
        m.total_requests.fetch_add(1, Relaxed);
        if is_5xx {
            m.total_errors.fetch_add(1, Relaxed);
        }
        let slot = self.slot(now);
        let epoch = slot / SLOTS + 1;
        let b = &m.buckets[(epoch % m.buckets.len() as u64) as usize];
        if b.epoch.load(Acquire) != epoch {
            b.roll_to(epoch);
        }
        let us = (latency.as_micros().min(u128::from(MAX_LATENCY_US)) as u64).max(1);
        let within = (slot % SLOTS) as usize;
        let slots = b.slots();
        b.requests.fetch_add(1, Relaxed);
        slots[within].fetch_add(1, Relaxed);
        if is_5xx {
            b.errors.fetch_add(1, Relaxed);
            slots[SLOTS as usize + within].fetch_add(1, Relaxed);
        }
        b.latency_sum_us.fetch_add(us, Relaxed);
        b.counts()[index_of(us)].fetch_add(1, Relaxed);
    }

    /// Caps a requested window at the maximum kept.
    pub fn clamp_window(&self, window: Duration) -> Duration {
        window.min(self.max_window)
    }

    /// One colour's numbers over the last `window` (capped at the maximum),
    /// to one slot: the current, partly elapsed slot and `window` rounded up
    /// to whole slots before it.
    pub fn window(&self, colour: Colour, window: Duration, now: Instant) -> Snapshot {
        let window = self.clamp_window(window);
        let whole = (window.as_micros() as u64).div_ceil(self.slot_us());
        let newest = self.slot(now);
        // Slots [oldest, newest] are in the window.
        let oldest = newest.saturating_sub(whole);
        let newest_epoch = newest / SLOTS + 1;
        let m = &self.colours[colour.index()];
        let mut counts = vec![0f64; COUNTS_LEN];
        let (mut requests, mut errors, mut latency_sum_us) = (0u64, 0u64, 0f64);
        for b in m.buckets.iter() {
            let e = b.epoch.load(Acquire);
            if e == 0 || e > newest_epoch {
                continue;
            }
            let first = (e - 1) * SLOTS;
            if first + SLOTS <= oldest {
                continue; // wholly before the window
            }
            let all = b.requests.load(Relaxed);
            let weight = if first >= oldest {
                requests += all;
                errors += b.errors.load(Relaxed);
                1.0
            } else {
                // The oldest bucket: only its slots from `oldest` on.
                let from = (oldest - first) as usize;
                let sum = |c: &[AtomicU32]| -> u64 {
                    c[from..].iter().map(|c| u64::from(c.load(Relaxed))).sum()
                };
                let (inside, failed) = match b.slots.get() {
                    Some(s) => {
                        let (req, err) = s.split_at(SLOTS as usize);
                        (sum(req), sum(err))
                    }
                    None => (0, 0),
                };
                requests += inside;
                errors += failed;
                if all == 0 {
                    0.0
                } else {
                    (inside as f64 / all as f64).min(1.0)
                }
            };
            if weight <= 0.0 {
                continue;
            }
            latency_sum_us += weight * b.latency_sum_us.load(Relaxed) as f64;
            if let Some(c) = b.counts.get() {
                for (s, c) in counts.iter_mut().zip(c.iter()) {
                    let c = c.load(Relaxed);
                    if c > 0 {
                        *s += weight * f64::from(c);
                    }
                }
            }
        }
        Snapshot {
            requests,
            errors_5xx: errors,
            latency_sum_us,
            counts,
        }
    }

    pub fn totals(&self, colour: Colour) -> ColourTotals {
        let m = &self.colours[colour.index()];
        ColourTotals {
            requests: m.total_requests.load(Relaxed),
            errors_5xx: m.total_errors.load(Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_slots_are_three_significant_figures() {
        let mut last = 0;
        for us in (0..5000)
            .chain((5000..MAX_LATENCY_US).step_by(997))
            .chain([MAX_LATENCY_US, MAX_LATENCY_US + 5])
        {
            let idx = index_of(us);
            assert!(idx < COUNTS_LEN);
            assert!(idx >= last, "slots grow with the value");
            last = idx;
            let low = lowest_value(idx);
            let us = us.min(MAX_LATENCY_US);
            assert!(low <= us, "{us}: {low}");
            assert!((us - low) as f64 <= us as f64 / 1000.0 + 1.0, "{us}: {low}");
            assert_eq!(index_of(low), idx);
        }
        assert_eq!(COUNTS_LEN, 17192);
    }

    #[tokio::test(start_paused = true)]
    async fn sliding_window_forgets_old_buckets() {
        let m = Metrics::new(Duration::from_secs(60));
        assert_eq!(m.bucket_width(), Duration::from_secs(1));
        let ms = Duration::from_millis;
        for i in 0..100u64 {
            m.record(Colour::Green, i % 10 == 0, ms(i + 1), Instant::now());
        }
        m.record(Colour::Blue, false, ms(5), Instant::now());
        let s = m.window(Colour::Green, Duration::from_secs(60), Instant::now());
        assert_eq!((s.requests, s.errors_5xx), (100, 10));
        let p50 = s.percentile_ms(50.0).unwrap();
        assert!((p50 - 50.0).abs() < 0.1, "{p50}");
        assert!((s.percentile_ms(99.0).unwrap() - 99.0).abs() < 0.1);
        assert_eq!(
            m.window(Colour::Blue, Duration::from_secs(60), Instant::now())
                .requests,
            1
        );

        tokio::time::advance(Duration::from_secs(30)).await;
        m.record(Colour::Green, true, ms(200), Instant::now());
        let s = m.window(Colour::Green, Duration::from_secs(10), Instant::now());
        assert_eq!((s.requests, s.errors_5xx), (1, 1));
        let s = m.window(Colour::Green, Duration::from_secs(60), Instant::now());
        assert_eq!((s.requests, s.errors_5xx), (101, 11));

        tokio::time::advance(Duration::from_secs(45)).await;
        let s = m.window(Colour::Green, Duration::from_secs(3600), Instant::now());
        assert_eq!(s.requests, 1, "the first burst is over 60 s old");
        assert_eq!(m.totals(Colour::Green).requests, 101);

        // A full lap of the ring later the old bucket is reused and cleared.
        tokio::time::advance(Duration::from_secs(62)).await;
        m.record(Colour::Green, false, ms(1), Instant::now());
        let s = m.window(Colour::Green, Duration::from_secs(60), Instant::now());
        assert_eq!((s.requests, s.errors_5xx), (1, 0));
        assert!(s.percentile_ms(99.9).unwrap() < 1.01);
    }

    #[tokio::test(start_paused = true)]
    async fn every_window_covers_its_length_to_one_slot_at_every_phase() {
        // One request per millisecond, each a 5xx every tenth, latency
        // growing with time, so every count and the latencies tell which
        // stretch of time a window saw.
        let m = Metrics::new(Duration::from_secs(60));
        assert_eq!(m.resolution(), Duration::from_millis(10));
        let start = Instant::now();
        let mut at = 0u64;
        let mut record_until = |until_ms: u64| {
            while at < until_ms {
                let t = start + Duration::from_millis(at);
                m.record(
                    Colour::Green,
                    at.is_multiple_of(10),
                    Duration::from_micros(1000 + at),
                    t,
                );
                at += 1;
            }
        };
        record_until(12_000);
        for phase in 0..20u64 {
            // Reads at 20 phases of the bucket: 12.000 s, 12.037 s, ...
            let now_ms = 12_000 + phase * 537;
            record_until(now_ms + 1);
            let now = start + Duration::from_millis(now_ms);
            for window_ms in [10u64, 100, 370, 1_000, 1_500, 2_000, 3_000, 10_000] {
                let s = m.window(Colour::Green, Duration::from_millis(window_ms), now);
                // The current 10 ms slot and `window_ms` of whole slots
                // before it: at least the window, less than 10 ms more.
                let slot_start = now_ms / 10 * 10;
                let from = slot_start - window_ms.div_ceil(10) * 10;
                let expected = now_ms + 1 - from;
                assert_eq!(s.requests, expected, "window {window_ms} ms at {now_ms} ms");
                assert!(
                    (window_ms + 1..=window_ms + 10).contains(&s.requests),
                    "{window_ms}: {}",
                    s.requests
                );
                assert_eq!(
                    s.errors_5xx,
                    expected.div_ceil(10),
                    "{window_ms} at {now_ms}"
                );
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_partly_covered_bucket_adds_its_latencies_by_its_share() {
        let m = Metrics::new(Duration::from_secs(60));
        let start = Instant::now();
        let ms = Duration::from_millis;
        // Bucket 0 (0 to 1 s): 100 requests taking 10 ms; bucket 1: 50
        // taking 1 ms, over its first half.
        for i in 0..100 {
            m.record(Colour::Green, false, ms(10), start + ms(i * 10));
        }
        for i in 0..50 {
            m.record(Colour::Green, false, ms(1), start + ms(1_000 + i * 10));
        }
        // At 2.009 s a 1 s window starts at 1 s: none of bucket 0.
        let s = m.window(Colour::Green, Duration::from_secs(1), start + ms(2_009));
        assert_eq!(s.requests, 50);
        assert!(s.percentile_ms(99.9).unwrap() < 1.01);
        // At 1.509 s it starts at 0.5 s: half of bucket 0, weighted a half.
        let s = m.window(Colour::Green, Duration::from_secs(1), start + ms(1_509));
        assert_eq!(s.requests, 100);
        let stats = s.stats(&[]);
        let mean = stats.latency_ms.mean.unwrap();
        assert!((mean - (50.0 * 10.0 + 50.0) / 100.0).abs() < 0.01, "{mean}");
        assert!((stats.latency_ms.max.unwrap() - 10.0).abs() < 0.02);
        assert!(s.percentile_ms(50.0).unwrap() < 1.01);
        assert!(s.percentile_ms(90.0).unwrap() > 9.9);
    }

    #[test]
    fn bucket_width_scales_with_the_window() {
        for (window, width) in [(60, 1000), (10, 200), (300, 5000), (1, 100)] {
            let m = Metrics::new(Duration::from_secs(window));
            assert_eq!(m.bucket_width(), Duration::from_millis(width), "{window}");
            assert!(m.colours[0].buckets.len() <= 62);
        }
    }

    /// Cost of `record`: `cargo test --release -p cutover-local record_cost -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn record_cost() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        let _guard = rt.enter();
        let m = std::sync::Arc::new(Metrics::new(Duration::from_secs(60)));
        for threads in [1, 2, 4] {
            let n = 2_000_000u64;
            let t0 = std::time::Instant::now();
            std::thread::scope(|s| {
                for _ in 0..threads {
                    let m = m.clone();
                    s.spawn(move || {
                        for i in 0..n {
                            m.record(
                                Colour::Green,
                                i % 100 == 0,
                                Duration::from_micros(i % 5000),
                                Instant::now(),
                            );
                        }
                    });
                }
            });
            let per = t0.elapsed().as_nanos() as f64 / n as f64;
            println!("{threads} thread(s): {per:.1} ns per record per thread (incl. Instant::now)");
        }
    }
}
