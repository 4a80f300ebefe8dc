//! Per-colour request metrics over a sliding window.
//!
//! Design: each colour has a ring of time buckets (1 s wide for the default
//! 60 s window; `max(100 ms, metrics_window / 60)` in general, so the ring
//! never holds more than ~62 buckets). A bucket holds a request counter, a
//! 5xx counter, a latency sum and a latency histogram whose counts are
//! `AtomicU32`s laid out like an HdrHistogram with 3 significant figures
//! over 1 µs..60 s (2048 sub-buckets per power of two, 17 192 counts).
//!
//! Recording is lock-free: four relaxed `fetch_add`s into the current
//! bucket. The only lock is taken once per bucket per lap of the ring, by
//! the first request that lands in a bucket still holding an old epoch; it
//! clears the bucket and publishes the new epoch (release), so writers that
//! see the new epoch (acquire) count into a clean bucket. A writer stalled
//! for a whole lap of the ring may count one request into a newer bucket:
//! harmless for monitoring.
//!
//! Measured (`cargo test --release -p cutover-local record_cost -- --ignored
//! --nocapture`, 2-core VM): ~50 ns per record on one thread including the
//! clock read; ~200 ns when two threads record back-to-back into the same
//! colour (cache-line traffic, no blocking). Under `wrk` through the proxy
//! the metrics do not show up in a `perf` profile (< 0.1 %); the time goes
//! to the kernel's TCP stack and hyper.
//!
//! Queries (admin API, rare) merge the buckets of the last `window` into an
//! [`hdrhistogram::Histogram`] and read quantiles from it.
//!
//! Time comes from `tokio::time::Instant`, so tests run it in paused time.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::*};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use hdrhistogram::Histogram;
use tokio::time::Instant;

use crate::api::{Colour, ColourTotals, Latencies, PercentileValue, WindowStats};

/// Largest latency tracked (larger ones count as this).
pub const MAX_LATENCY_US: u64 = 60_000_000;
const SUB_BITS: u32 = 11; // 2048 sub-buckets: 3 significant figures
const HALF: u64 = 1 << (SUB_BITS - 1);
const COUNTS_LEN: usize = index_of(MAX_LATENCY_US) + 1;

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
            rollover: Mutex::new(()),
        }
    }

    fn counts(&self) -> &[AtomicU32] {
        self.counts
            .get_or_init(|| (0..COUNTS_LEN).map(|_| AtomicU32::new(0)).collect())
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
    pub latency_sum_us: u64,
    pub histogram: Histogram<u64>,
}

impl Snapshot {
    /// Latency at `percentile` (0..=100) in ms; `None` without requests.
    pub fn percentile_ms(&self, percentile: f64) -> Option<f64> {
        (!self.histogram.is_empty()).then(|| {
            self.histogram
                .value_at_quantile((percentile / 100.0).clamp(0.0, 1.0)) as f64
                / 1000.0
        })
    }

    pub fn stats(&self, extra_percentiles: &[f64]) -> WindowStats {
        let rate = if self.requests == 0 {
            0.0
        } else {
            self.errors_5xx as f64 / self.requests as f64
        };
        let count = self.histogram.len();
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
                max: (count > 0).then(|| self.histogram.max() as f64 / 1000.0),
                mean: (count > 0).then(|| self.latency_sum_us as f64 / count as f64 / 1000.0),
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

    /// The time resolution of windows.
    pub fn bucket_width(&self) -> Duration {
        Duration::from_millis(self.bucket_ms)
    }

    pub fn uptime(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.start)
    }

    fn epoch(&self, now: Instant) -> u64 {
        (now.saturating_duration_since(self.start).as_millis() as u64) / self.bucket_ms + 1
    }

    /// Counts one finished request (response head sent) at `now`.
    #[inline]
    pub fn record(&self, colour: Colour, is_5xx: bool, latency: Duration, now: Instant) {
        let m = &self.colours[colour.index()];
        m.total_requests.fetch_add(1, Relaxed);
        if is_5xx {
            m.total_errors.fetch_add(1, Relaxed);
        }
        let epoch = self.epoch(now);
        let b = &m.buckets[(epoch % m.buckets.len() as u64) as usize];
        if b.epoch.load(Acquire) != epoch {
            b.roll_to(epoch);
        }
        let us = (latency.as_micros().min(u128::from(MAX_LATENCY_US)) as u64).max(1);
        b.requests.fetch_add(1, Relaxed);
        if is_5xx {
            b.errors.fetch_add(1, Relaxed);
        }
        b.latency_sum_us.fetch_add(us, Relaxed);
        b.counts()[index_of(us)].fetch_add(1, Relaxed);
    }

    /// Caps a requested window at the maximum kept.
    pub fn clamp_window(&self, window: Duration) -> Duration {
        window.min(self.max_window)
    }

    /// One colour's numbers over the last `window` (capped at the maximum),
    /// to the bucket resolution.
    pub fn window(&self, colour: Colour, window: Duration, now: Instant) -> Snapshot {
        let window = self.clamp_window(window);
        let k = ((window.as_millis() as u64).div_ceil(self.bucket_ms)).max(1);
        let newest = self.epoch(now);
        let oldest = newest.saturating_sub(k - 1).max(1);
        let m = &self.colours[colour.index()];
        let mut sums = vec![0u64; COUNTS_LEN];
        let (mut requests, mut errors, mut latency_sum_us) = (0, 0, 0);
        for b in m.buckets.iter() {
            let e = b.epoch.load(Acquire);
            if e < oldest || e > newest {
                continue;
            }
            requests += b.requests.load(Relaxed);
            errors += b.errors.load(Relaxed);
            latency_sum_us += b.latency_sum_us.load(Relaxed);
            if let Some(counts) = b.counts.get() {
                for (s, c) in sums.iter_mut().zip(counts.iter()) {
                    *s += u64::from(c.load(Relaxed));
                }
            }
        }
        let mut histogram = Histogram::<u64>::new_with_bounds(1, MAX_LATENCY_US, 3)
            .expect("valid histogram bounds");
        for (idx, &count) in sums.iter().enumerate() {
            if count > 0 {
                histogram.saturating_record_n(lowest_value(idx).max(1), count);
            }
        }
        Snapshot {
            requests,
            errors_5xx: errors,
            latency_sum_us,
            histogram,
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
