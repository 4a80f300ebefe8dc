//! Random numbers for simulations: splitmix64 and a binomial sampler.
//! Shared by the judge's tests and the judges' benchmark
//! (`examples/judges.rs`), so both draw the same numbers from a seed.

pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Binomial(n, p) by inversion, in chunks of at most 500 trials so that
    /// (1 − p)^chunk never underflows.
    pub fn binomial(&mut self, n: u64, p: f64) -> u64 {
        if p <= 0.0 || n == 0 {
            return 0;
        }
        if p >= 1.0 {
            return n;
        }
        if p > 0.5 {
            return n - self.binomial(n, 1.0 - p);
        }
        let mut left = n;
        let mut total = 0;
        while left > 0 {
            let m = left.min(500);
            left -= m;
            total += self.binomial_inversion(m, p);
        }
        total
    }

    fn binomial_inversion(&mut self, m: u64, p: f64) -> u64 {
        let q = 1.0 - p;
        let odds = p / q;
        let mut prob = q.powi(m as i32); // P(X = 0)
        let mut u = self.uniform();
        let mut x = 0;
        while u >= prob {
            u -= prob;
            x += 1;
            if x > m {
                return m;
            }
            prob *= odds * (m - x + 1) as f64 / x as f64;
        }
        x
    }

    /// Sends `requests` to green with probability `share` each, rounding
    /// like a weighted balancer: the expected green count is exact.
    pub fn split(&mut self, requests: u64, share: f64) -> (u64, u64) {
        let exact = requests as f64 * share;
        let green = ((exact + self.uniform()).floor() as u64).min(requests);
        (green, requests - green)
    }
}
