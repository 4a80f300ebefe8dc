//! Which colour, and which upstream of it, serves a request.
//!
//! The split and a request counter share one `AtomicU64` (split in the top
//! 16 bits, counter in the low 48), so choosing a colour is one
//! `fetch_add`: no lock, and never a counter paired with the wrong split.
//! Request `n` (counted from the last split change) goes to green iff
//! `floor((n+1)·w/10000) > floor(n·w/10000)` with `w` = green's basis
//! points: a smooth weighted round-robin that is exact at every prefix
//! (after `k` requests green has had exactly `floor(k·w/10000)`). Setting a
//! split restarts the counter, so every prefix after a change is exact too.
//!
//! Within a colour, upstreams take turns (an atomic counter), skipping ones
//! the health probes marked unhealthy, unless all of them are.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::*};
use std::sync::Mutex;

use cutover_core::Split;
use hyper::header::HeaderValue;

use crate::api::{Colour, ProbeResult, ProbeState};
use crate::proxy::config::UpstreamUrl;

const COUNTER_BITS: u32 = 48;
const COUNTER_MASK: u64 = (1 << COUNTER_BITS) - 1;

/// Green's share and the weighted round-robin over the two colours.
pub struct SplitState {
    packed: AtomicU64,
}

impl SplitState {
    pub fn new(split: Split) -> SplitState {
        SplitState {
            packed: AtomicU64::new(u64::from(split.basis_points()) << COUNTER_BITS),
        }
    }

    pub fn get(&self) -> Split {
        Split::from_basis_points((self.packed.load(Relaxed) >> COUNTER_BITS) as u16)
            .unwrap_or(Split::FULL)
    }

    /// Sets the split and restarts the round-robin.
    pub fn set(&self, split: Split) {
        self.packed
            .store(u64::from(split.basis_points()) << COUNTER_BITS, Relaxed);
    }

    /// The colour for the next request.
    #[inline]
    pub fn next(&self) -> Colour {
        let packed = self.packed.fetch_add(1, Relaxed);
        let w = packed >> COUNTER_BITS;
        let n = packed & COUNTER_MASK;
        if n >= COUNTER_MASK >> 1 {
            // 2^47 requests since the last change: restart before the counter
            // could carry into the split bits. Losing the race is harmless.
            let _ = self
                .packed
                .compare_exchange(packed + 1, w << COUNTER_BITS, Relaxed, Relaxed);
        }
        match w {
            0 => Colour::Blue,
            10_000 => Colour::Green,
            _ if (n + 1) * w / 10_000 > n * w / 10_000 => Colour::Green,
            _ => Colour::Blue,
        }
    }
}

/// One upstream and what the probes know about it.
pub struct Upstream {
    pub colour: Colour,
    pub url: UpstreamUrl,
    /// This upstream's index among all upstreams (blue first).
    pub slot: usize,
    /// `Host` for requests that come without one: the URL's authority.
    pub host: HeaderValue,
    /// What the data plane reads: false only when probes say unhealthy.
    pub healthy: AtomicBool,
    pub status: Mutex<ProbeStatus>,
}

/// Probe bookkeeping (read by the admin API; never on the request path).
#[derive(Clone, Debug)]
pub struct ProbeStatus {
    pub state: ProbeState,
    pub consecutive_failures: u32,
    pub consecutive_successes: u32,
    pub last: Option<(tokio::time::Instant, ProbeResult)>,
}

impl Upstream {
    pub fn new(colour: Colour, url: UpstreamUrl, slot: usize) -> Upstream {
        Upstream {
            colour,
            host: HeaderValue::from_str(url.authority().as_str())
                .expect("an authority is a header value"),
            url,
            slot,
            healthy: AtomicBool::new(true),
            status: Mutex::new(ProbeStatus {
                state: ProbeState::Unknown,
                consecutive_failures: 0,
                consecutive_successes: 0,
                last: None,
            }),
        }
    }
}

/// One colour's upstreams.
pub struct Pool {
    pub upstreams: Box<[Upstream]>,
    next: AtomicUsize,
}

impl Pool {
    /// A pool whose upstreams take slots `first_slot..`.
    pub fn new(colour: Colour, urls: &[UpstreamUrl], first_slot: usize) -> Pool {
        Pool {
            upstreams: urls
                .iter()
                .enumerate()
                .map(|(i, u)| Upstream::new(colour, u.clone(), first_slot + i))
                .collect(),
            next: AtomicUsize::new(0),
        }
    }

    /// The next upstream in turn, skipping unhealthy ones unless all are.
    #[inline]
    pub fn pick(&self) -> &Upstream {
        let ups = &self.upstreams;
        if ups.len() == 1 {
            return &ups[0];
        }
        let start = self.next.fetch_add(1, Relaxed);
        for i in 0..ups.len() {
            let u = &ups[(start + i) % ups.len()];
            if u.healthy.load(Relaxed) {
                return u;
            }
        }
        &ups[start % ups.len()]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_prefix_is_exact() {
        for bp in [0u16, 1, 33, 1000, 1250, 3333, 5000, 9999, 10_000] {
            let s = SplitState::new(Split::from_basis_points(bp).unwrap());
            let mut green = 0u64;
            for k in 1..=20_000u64 {
                green += u64::from(s.next() == Colour::Green);
                assert_eq!(green, k * u64::from(bp) / 10_000, "bp {bp} after {k}");
            }
        }
    }

    #[test]
    fn a_change_restarts_the_sequence() {
        let s = SplitState::new(Split::from_percent(50.0).unwrap());
        for _ in 0..7 {
            s.next();
        }
        s.set(Split::from_percent(10.0).unwrap());
        assert_eq!(s.get().basis_points(), 1000);
        let greens = (0..100).filter(|_| s.next() == Colour::Green).count();
        assert_eq!(greens, 10);
    }

    #[test]
    fn pools_skip_unhealthy_upstreams_unless_all_are() {
        let urls: Vec<_> = ["http://a:1", "http://b:1", "http://c:1"]
            .iter()
            .map(|u| UpstreamUrl::parse(u).unwrap())
            .collect();
        let p = Pool::new(Colour::Blue, &urls, 0);
        let picks: Vec<_> = (0..6).map(|_| p.pick().url.as_str().to_string()).collect();
        assert_eq!(picks[..3], picks[3..]);
        p.upstreams[1].healthy.store(false, Relaxed);
        assert!((0..30).all(|_| p.pick().url.as_str() != "http://b:1"));
        for u in p.upstreams.iter() {
            u.healthy.store(false, Relaxed);
        }
        let n = (0..30)
            .filter(|_| p.pick().url.as_str() == "http://b:1")
            .count();
        assert_eq!(n, 10);
    }
}
