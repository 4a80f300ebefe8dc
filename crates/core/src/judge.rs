//! An anytime-valid sequential test of green's failure rate against blue's.
//!
//! During a canary, every analysis look brings one [`Batch`]: the requests
//! and failures each colour served since the previous look. The test asks
//! whether green fails more often than blue, may be consulted after every
//! batch, however often and for as long as the rollout lasts, and stays
//! valid while green's share of the traffic changes from step to step. It
//! keeps K numbers of state (one per grid point, below), not the batches.
//!
//! # Model and hypotheses
//!
//! Within a batch, each colour's failures are counts of independent events:
//! green's at rate λ_g per request, blue's at rate λ_b per request. The rate
//! ratio is ρ = λ_g / λ_b. The rates may drift from batch to batch (a
//! dependency slows down, night falls); the test only compares the colours
//! *within* each batch, where both met the same conditions.
//!
//! * Null hypothesis H0: in every batch, ρ ≤ m, where m is
//!   [`Settings::margin`] (m = 1: "green is no worse than blue"; m = 1.5:
//!   "green fails at most 1.5 times as often").
//!
//! Given a batch's request counts n_g, n_b and its total failures
//! f = f_g + f_b, each failure falls on green with probability
//!
//! ```text
//! p(ρ) = ρ·n_g / (ρ·n_g + n_b)
//! ```
//!
//! (for Poisson counts, f_g given f is binomial). Under H0, p ≤ p0 with
//! p0 = m·n_g / (m·n_g + n_b).
//!
//! * Alternative: a mixture over rate ratios on a fixed geometric grid,
//!   ρ_k = m·1.25^k for k = 1..K (K = [`Settings::grid_points`], 31 by
//!   default, so the grid reaches 1.25^31 ≈ 1009 times the margin), with
//!   prior weights w_k = 1/K.
//!
//! # The e-value
//!
//! For grid point k, with r_k = ρ_k / m = 1.25^k and q_k = p(ρ_k), the
//! likelihood ratio of one batch is
//!
//! ```text
//! LR_k = (q_k/p0)^f_g · ((1 − q_k)/(1 − p0))^f_b
//!      = r_k^f_g / (1 + (r_k − 1)·p0)^(f_g + f_b)
//! ```
//!
//! (the second form follows from q_k/p0 = r_k/(1 + (r_k − 1)p0) and
//! (1 − q_k)/(1 − p0) = 1/(1 + (r_k − 1)p0); it is what the code computes,
//! in logarithms). After t batches the evidence is
//!
//! ```text
//! E_t = Σ_k w_k · Π_{batches s ≤ t} LR_k,s        (E_0 = 1)
//! ```
//!
//! and green fails once E_t ≥ 1/α ([`Settings::alpha`]). The code keeps
//! S_k = Σ_s ln LR_k,s per grid point and computes
//! ln E_t = ln Σ_k exp(S_k − ln K) with the log-sum-exp trick, so counts up
//! to u64::MAX neither overflow nor produce NaN.
//!
//! # Why the test may look after every batch
//!
//! Fix k and a batch. Given the past, the batch's request counts and its
//! total f, each failure lands on green with the true probability p ≤ p0,
//! independently, so
//!
//! ```text
//! E[LR_k | past, n_g, n_b, f] = (p·q_k/p0 + (1 − p)·(1 − q_k)/(1 − p0))^f.
//! ```
//!
//! The bracket is linear in p and increasing (q_k > p0 makes q_k/p0 > 1 >
//! (1 − q_k)/(1 − p0)), and equals q_k + (1 − q_k) = 1 at p = p0, so it is
//! at most 1 for every p ≤ p0, that is for every ρ ≤ m. Each
//! Π_s LR_k,s is therefore a nonnegative supermartingale, and so is their
//! weighted sum E_t. Ville's inequality (Ville 1939) bounds the chance that
//! a nonnegative supermartingale starting at 1 ever reaches 1/α:
//!
//! ```text
//! P(sup_t E_t ≥ 1/α) ≤ α      under every ρ ≤ m.
//! ```
//!
//! A healthy green is thus rolled back with probability at most α over the
//! whole rollout, however many looks it takes. Nothing requires the share
//! to stay put: p0 is recomputed from each batch's own counts, so a split
//! that changes between batches, even one chosen from the data seen so far
//! (a step that advanced after a pass), is handled exactly. What the
//! argument needs is that a batch's request counts do not depend on that
//! batch's own failures.
//!
//! The same bound holds when failures are Bernoulli per request (so never
//! more than the requests) rather than Poisson: for a sum of independent
//! Bernoulli trials `E[c^f] ≤ exp((c − 1)·E[f])`, and with c_g = q_k/p0,
//! c_b = (1 − q_k)/(1 − p0) the exponent
//! n_g·λ_g·(c_g − 1) + n_b·λ_b·(c_b − 1) is ≤ 0 whenever λ_g ≤ m·λ_b
//! (it is exactly 0 at λ_g = m·λ_b), so `E[LR_k | past, n_g, n_b] ≤ 1`.
//!
//! This is a mixture martingale in the sense of Robbins (1970). The test is
//! the two-category case of Lindon & Malek (2022), who compare Poisson
//! rates through the multinomial of where the events fall: with a constant
//! share, their Beta (Dirichlet) mixture over p and this grid over ρ give
//! tests of the same kind; the grid lets p0 change from batch to batch
//! while the alternative keeps meaning the same rate ratios.
//!
//! # The grid and its weights
//!
//! Neighbouring grid points are a factor 1.25 apart, so any true ratio
//! between 1.25·m and 1009·m is within a factor 1.12 of a grid point, and
//! testing against that point instead costs little. The weights are uniform.
//! Because E_t ≥ w_k·Π_s LR_k,s for every k, not knowing the size of the
//! regression costs at most ln K = ln 31 ≈ 3.4 nats of evidence on top of
//! ln(1/α) (4.6 nats at α = 1 %), the same for every size. Weights decaying
//! with k would lower that cost for small regressions and raise it for
//! large ones; but a large regression is the one that must be caught in the
//! fewest failed requests, and a small one takes many batches whatever the
//! weights. Uniform weights keep the worst case over sizes small, and keep
//! the e-value easy to recompute.
//!
//! # Batches that say nothing
//!
//! A batch in which one colour served no request (n_g = 0 or n_b = 0) says
//! nothing about the comparison (p0 would be 0 or 1 and every LR_k would be
//! 1): its counts go into the totals, not into the evidence. A batch without
//! failures leaves the evidence as it is (every LR_k is 1) but counts for
//! the power rule below. Failures above the requests of the same colour are
//! taken as equal to the requests.
//!
//! # When a step may pass: the power rule
//!
//! Evidence below 1/α is not yet a reason to advance: with little traffic,
//! a bad green would not have reached 1/α either. [`SequentialErrorRate::judge`]
//! passes green at the end of a hold only when the data seen could have
//! caught a regression of d = [`Settings::detect_ratio`] (green failing d
//! times as often as blue). Let k* be the grid point nearest d (in ratio)
//! and r the blue rate: blue's pooled failure rate, failures over requests
//! of every batch seen, but at least [`Settings::min_rate`] (so a blue that
//! never fails does not block a rollout forever: below that rate a d-fold
//! regression is not worth waiting for). Had green's rate been d·r, a batch
//! would have contributed, in expectation (Poisson counts),
//!
//! ```text
//! E[ln LR_k*] = r · (d·n_g·ln r_k* − (d·n_g + n_b)·ln(1 + (r_k* − 1)·p0))
//! ```
//!
//! to S_k*. The test passes when
//!
//! ```text
//! ln w_k* + Σ_batches E[ln LR_k*] ≥ ln(1/α),
//! ```
//!
//! which is a lower bound on the expected ln E_t of such a green, since
//! ln E_t ≥ ln w_k* + S_k*. In words: had green been d times worse, the
//! evidence would typically have crossed the threshold by now. It is a rule
//! in expectation, not a guarantee: a green exactly d times worse is still
//! below the threshold at that moment in about half the cases; worse greens
//! are caught sooner, and the test keeps looking at the next step. The blue
//! rate r is the pooled one (the power rule is a plan for how much data to
//! wait for, not part of the test), while the batches' own splits enter
//! as they were. [`Judgement`]'s `power_evidence` is exp of the left side.
//!
//! d must be at least 1.25·m, the smallest ratio on the grid: the test does
//! not look for smaller regressions, so it could never gather enough data
//! to rule them out.
//!
//! With [`Settings::detect_points`] = q, the regression to catch is also at
//! least q percentage points: d = max(detect_ratio, 1 + q / (100·r)), so
//! against a blue failing 0.1 % of the time with q = 1 the rule asks to
//! catch an 11-fold regression (+1 point), not a 2-fold one (+0.1 point),
//! which would take about 30 times the requests to rule out. The grid
//! point k* then depends on r, so the sums behind the rule are kept for
//! every grid point. Any rule for when to pass leaves the bound on false
//! rollbacks as it is: passing rejects nothing.
//!
//! # A bake with all traffic on green
//!
//! At 100 % green blue serves nothing, so there is nothing to compare
//! within a batch. [`SequentialErrorRate::observe_green_only`] then
//! compares green with blue's pooled rate from the batches before: a
//! one-sample test of green's count against a rate, no longer a comparison
//! within a batch. Using blue's estimated rate b̂ = F/N (F failures in N
//! requests) as if it were exact would not be valid: the same estimate
//! backs every bake batch, so one that came out low by chance lifts all of
//! them: the longer the bake, the closer a green exactly as good as blue
//! comes to being rolled back whenever b̂ fell below the truth, about half
//! the time. The test
//! uses instead an upper confidence bound b⁺ of blue's rate, the μ/N with
//!
//! ```text
//! μ − F − F·ln(μ/F) = ln(1/α),   μ > F      (μ = ln(1/α) when F = 0)
//! ```
//!
//! (the Chernoff bound of the Poisson lower tail, which also bounds the
//! binomial one: P(b⁺ < blue's rate) ≤ α). b⁺ is fixed at the first
//! green-only batch and reported in [`Figures::baseline_bound`]. Against it,
//! grid point k's likelihood ratio for a batch of n_g green requests with
//! f_g failures is
//!
//! ```text
//! LR_k = r_k^f_g · exp(−(r_k − 1)·m·b⁺·n_g)
//! ```
//!
//! (the Poisson likelihood of rate ρ_k·b⁺ over rate m·b⁺), and
//! `E[LR_k] = exp((r_k − 1)·n_g·(λ_g − m·b⁺)) ≤ 1` whenever green's rate
//! λ_g ≤ m·b⁺ (for Bernoulli counts too, as above). If b⁺ is at least blue's
//! rate, which fails with probability at most α, a green within the margin
//! keeps E_t a supermartingale through the bake. The bake's factors join
//! the same E_t, and a rollout judged this way to its end rolls back a
//! healthy green with probability at most 2α: α for the test, α for the
//! bound. What remains assumed is that blue's rate did not rise between the
//! batches it was measured on and the bake: that is a comparison across
//! time, which no split can make within a batch. Before blue has served
//! anything there is no bound, and a green-only batch is counted but is no
//! evidence.
//!
//! The power rule leaves green-only batches out. Against b⁺ a d-fold green
//! would bring n_g·(d·r·ln r_k* − (r_k* − 1)·m·b⁺) in expectation, which is
//! negative whenever b⁺ is well above r (always, for a blue that rarely
//! fails: b⁺ is then about ln(1/α) over blue's requests): counted, it would
//! keep a healthy green from ever passing a step at 100 %. At 100 % there is
//! no comparison to gain power from; the steps before, where blue served,
//! must have shown it, and the bake only watches for a regression against
//! b⁺ (a plan whose first step is 100 % cannot use the test).
//!
//! # The rate ratio reported
//!
//! [`Figures::rate_ratio`] is the Mantel-Haenszel estimate of the rate
//! ratio stratified by batch (Greenland & Robins 1985):
//! Σ f_g·n_b/(n_g + n_b) / Σ f_b·n_g/(n_g + n_b). With one batch, or a
//! constant split, it is green's rate over blue's; unlike that plain ratio
//! of pooled rates, it is not misled when the split changes while the
//! rates drift (Simpson's paradox).
//!
//! # Checking a verdict by hand
//!
//! One batch, margin 1, α = 1 %: green 27 failures in 1000 requests, blue 90
//! in 9000. p0 = 1000/10000 = 0.1, f = 117, and
//! E = (1/31)·Σ_{k=1..31} 1.25^(27k) / (1 + (1.25^k − 1)·0.1)^117 ≈ 372
//! (a spreadsheet of 31 rows; the largest term is k = 4, ratio 2.44):
//!
//! ```
//! use cutover_core::judge::{Batch, Judgement, SequentialErrorRate, Settings};
//!
//! let mut test = SequentialErrorRate::new(Settings::default()).unwrap();
//! test.observe(Batch { green_requests: 1000, green_failures: 27, blue_requests: 9000, blue_failures: 90 });
//! assert!((test.evidence() - 372.31).abs() < 0.01);
//! let judgement = test.judge(false);
//! assert!(matches!(judgement, Judgement::Fail(_)));
//! assert_eq!(
//!     judgement.to_string(),
//!     "green 2.7 % (27/1000) vs blue 1.0 % (90/9000): evidence 372 ≥ 100 (α = 0.01), rate ratio 2.7"
//! );
//! ```
//!
//! # References
//!
//! * J. Ville, *Étude critique de la notion de collectif*, Gauthier-Villars,
//!   Paris, 1939 (the maximal inequality for nonnegative supermartingales).
//! * H. Robbins, "Statistical methods related to the law of the iterated
//!   logarithm", *Annals of Mathematical Statistics* 41(5), 1397–1409, 1970
//!   (mixture martingales and tests with a uniformly bounded error).
//! * M. Lindon and A. Malek, "Anytime-valid inference for multinomial count
//!   data", *Advances in Neural Information Processing Systems* 35
//!   (NeurIPS 2022).
//! * S. Greenland and J. M. Robins, "Estimation of a common effect parameter
//!   from sparse follow-up data", *Biometrics* 41(1), 55–68, 1985.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::verdict::{Observation, Verdict};

/// Ratio between neighbouring rate ratios of the grid.
pub const GRID_STEP: f64 = 1.25;
/// The largest number of grid points [`Settings::grid_points`] may ask for.
pub const MAX_GRID_POINTS: u32 = 64;
/// The largest margin accepted: beyond it "no worse than" means nothing.
pub const MAX_MARGIN: f64 = 1000.0;

/// What the test is asked to decide, and how surely.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// The chance, at most, that a green no worse than the margin is ever
    /// failed over the whole rollout (2α once a bake is judged with
    /// [`SequentialErrorRate::observe_green_only`]). In (0, 0.5]; default 0.01.
    pub alpha: f64,
    /// H0 is "green's failure rate ≤ margin × blue's". At least 1 (the
    /// default: green no worse than blue), at most [`MAX_MARGIN`].
    pub margin: f64,
    /// The regression (green's rate over blue's) the data must be able to
    /// catch before a step passes. At least 1.25 × margin; default 2.
    pub detect_ratio: f64,
    /// With it, the regression to catch is at least this many percentage
    /// points above blue's rate too: green at max(d·r, r + points/100).
    /// Against a blue that rarely fails, a 2-fold regression is a tiny
    /// one, and waiting to rule it out costs many requests. From 0 (off)
    /// to 100; default 1.
    pub detect_points: f64,
    /// The lowest blue failure rate the power rule assumes. In (0, 1];
    /// default 0.001 (0.1 %).
    pub min_rate: f64,
    /// Number of grid points K: rate ratios margin × 1.25^k, k = 1..K.
    /// In 1..=64; default 31 (up to about 1009 × margin).
    pub grid_points: u32,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            alpha: 0.01,
            margin: 1.0,
            detect_ratio: 2.0,
            detect_points: 1.0,
            min_rate: 0.001,
            grid_points: 31,
        }
    }
}

/// A setting out of its range; `field` names it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{field} {reason}")]
pub struct JudgeError {
    pub field: &'static str,
    pub reason: String,
}

impl JudgeError {
    fn new(field: &'static str, reason: String) -> Self {
        JudgeError { field, reason }
    }
}

/// What each colour served since the previous look.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Batch {
    pub green_requests: u64,
    pub green_failures: u64,
    pub blue_requests: u64,
    pub blue_failures: u64,
}

/// One colour's totals over every batch observed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ColourFigures {
    pub requests: u64,
    pub failures: u64,
    /// failures / requests; `None` before the first request.
    pub rate: Option<f64>,
}

/// The numbers behind a [`Judgement`], to record and to check by hand.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Figures {
    /// Green's totals, bake batches included.
    pub green: ColourFigures,
    /// Blue's totals.
    pub blue: ColourFigures,
    /// E_t now (capped at f64::MAX).
    pub evidence: f64,
    /// The largest E_t of any look so far; green fails once it reaches the
    /// threshold, even if later batches bring E_t down again.
    pub peak_evidence: f64,
    /// 1/α.
    pub threshold: f64,
    pub alpha: f64,
    pub margin: f64,
    /// The Mantel-Haenszel estimate of green's rate over blue's, stratified
    /// by batch; `None` while it is 0/0 or x/0.
    pub rate_ratio: Option<f64>,
    /// The regression the power rule asks to be able to catch, green's rate
    /// over blue's: [`Settings::detect_ratio`], or more where
    /// [`Settings::detect_points`] above blue's rate is more.
    pub detect_ratio: f64,
    /// exp of the power rule's left side: the evidence a green
    /// `detect_ratio` times worse than blue would typically have reached.
    pub power_evidence: f64,
    /// Batches that entered the evidence (both colours served, or green
    /// alone against the baseline bound).
    pub batches: u64,
    /// b⁺, the upper confidence bound of blue's rate that green-only
    /// batches are compared with; `None` before the first of them.
    pub baseline_bound: Option<f64>,
}

impl Figures {
    /// By name, as observations carry them (absent ones as NaN, which
    /// [`Observation::with_numbers`] leaves out).
    pub fn numbers(&self) -> [(&'static str, f64); 14] {
        [
            ("green.requests", self.green.requests as f64),
            ("green.failures", self.green.failures as f64),
            ("blue.requests", self.blue.requests as f64),
            ("blue.failures", self.blue.failures as f64),
            ("evidence", self.evidence),
            ("peak_evidence", self.peak_evidence),
            ("threshold", self.threshold),
            ("alpha", self.alpha),
            ("margin", self.margin),
            ("rate_ratio", self.rate_ratio.unwrap_or(f64::NAN)),
            ("detect_ratio", self.detect_ratio),
            ("power_evidence", self.power_evidence),
            ("batches", self.batches as f64),
            ("baseline_bound", self.baseline_bound.unwrap_or(f64::NAN)),
        ]
    }
}

/// The test's answer at one look.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "verdict", rename_all = "kebab-case")]
pub enum Judgement {
    /// The evidence reached 1/α: green fails more often than the margin
    /// allows (wrongly so with probability at most α).
    Fail(Figures),
    /// At the end of a hold, the evidence stayed below 1/α and the data
    /// could have caught a `detect_ratio` regression.
    Pass(Figures),
    /// Neither yet.
    Inconclusive(Figures),
}

impl Judgement {
    pub fn figures(&self) -> &Figures {
        match self {
            Judgement::Fail(f) | Judgement::Pass(f) | Judgement::Inconclusive(f) => f,
        }
    }

    /// The check's observation at a look, `note` added to its detail.
    /// Before the end of a hold, no evidence is all a look can say: a pass
    /// so far (the step passes only on a verdict taken after the hold); at
    /// its end, too little data is a verdict `waiting` for more.
    pub fn observation(&self, check: &str, hold_over: bool, note: &str) -> Observation {
        let o = match self {
            Judgement::Fail(_) => Observation::new(
                check,
                Verdict::Fail,
                format!("green fails more often than blue: {self}{note}"),
            ),
            Judgement::Pass(_) => Observation::new(
                check,
                Verdict::Pass,
                format!("no evidence green fails more often than blue: {self}{note}"),
            ),
            Judgement::Inconclusive(_) if !hold_over => Observation::new(
                check,
                Verdict::Pass,
                format!("no evidence against green so far: {self}{note}"),
            ),
            Judgement::Inconclusive(_) => Observation::waiting(
                check,
                format!("not enough requests to pass green yet: {self}{note}"),
            ),
        };
        o.with_numbers(self.figures().numbers())
    }

    /// The matching check verdict.
    pub fn verdict(&self) -> Verdict {
        match self {
            Judgement::Fail(_) => Verdict::Fail,
            Judgement::Pass(_) => Verdict::Pass,
            Judgement::Inconclusive(_) => Verdict::Inconclusive,
        }
    }
}

/// The sequential test. One per rollout: it accumulates every batch from
/// the first step to the end of the bake.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SequentialErrorRate {
    settings: Settings,
    /// ln r_k = k·ln 1.25, k = 1..K (given by the settings: not stored).
    #[serde(skip)]
    ln_ratio: Vec<f64>,
    /// r_k − 1 (not stored either).
    #[serde(skip)]
    ratio_minus_one: Vec<f64>,
    /// S_k: the sum of ln LR_k over the batches.
    log_lr: Vec<f64>,
    log_evidence: f64,
    peak_log_evidence: f64,
    /// What the power rule needs, over the comparison batches, for every
    /// grid point (the one it uses depends on blue's rate when
    /// `detect_points` is set): Σ n_g, Σ n_g·L_k and Σ n_b·L_k with
    /// L_k = ln(1 + (r_k − 1)·p0).
    power_green: f64,
    power_green_loss: Vec<f64>,
    power_blue_loss: Vec<f64>,

    green: (u64, u64),
    blue: (u64, u64),
    baseline_bound: Option<f64>,
    mh_green: f64,
    mh_blue: f64,
    batches: u64,
}

impl SequentialErrorRate {
    pub fn new(settings: Settings) -> Result<Self, JudgeError> {
        let Settings {
            alpha,
            margin,
            detect_ratio,
            min_rate,
            grid_points,
            detect_points,
        } = settings;
        if !(alpha > 0.0 && alpha <= 0.5) {
            return Err(JudgeError::new(
                "alpha",
                format!("must be in (0, 0.5], got {alpha}"),
            ));
        }
        if !(1.0..=MAX_MARGIN).contains(&margin) {
            return Err(JudgeError::new(
                "margin",
                format!("must be at least 1 (green no worse than blue) and at most {MAX_MARGIN}, got {margin}"),
            ));
        }
        if !(1..=MAX_GRID_POINTS).contains(&grid_points) {
            return Err(JudgeError::new(
                "grid_points",
                format!("must be in 1..={MAX_GRID_POINTS}, got {grid_points}"),
            ));
        }
        let k = grid_points as usize;
        let low = margin * GRID_STEP;
        let high = margin * GRID_STEP.powi(grid_points as i32);
        // A little slack so that 1.25 × margin itself is accepted despite rounding.
        if !(low * (1.0 - 1e-9)..=high * (1.0 + 1e-9)).contains(&detect_ratio) {
            return Err(JudgeError::new(
                "detect_ratio",
                format!(
                    "must be between {low} (1.25 × margin, the smallest regression the test looks for) \
                     and {high} (the largest rate ratio of its grid), got {detect_ratio}"
                ),
            ));
        }
        if !(min_rate > 0.0 && min_rate <= 1.0) {
            return Err(JudgeError::new(
                "min_rate",
                format!("must be in (0, 1], got {min_rate}"),
            ));
        }
        let step = GRID_STEP.ln();
        let ln_ratio: Vec<f64> = (1..=k).map(|i| i as f64 * step).collect();
        let ratio_minus_one = (1..=k).map(|i| GRID_STEP.powi(i as i32) - 1.0).collect();
        if !(0.0..=100.0).contains(&detect_points) {
            return Err(JudgeError::new(
                "detect_points",
                format!("must be from 0 (off) to 100 percentage points, got {detect_points}"),
            ));
        }
        Ok(SequentialErrorRate {
            settings,
            ln_ratio,
            ratio_minus_one,
            log_lr: vec![0.0; k],
            log_evidence: 0.0,
            peak_log_evidence: 0.0,
            power_green: 0.0,
            power_green_loss: vec![0.0; k],
            power_blue_loss: vec![0.0; k],

            green: (0, 0),
            blue: (0, 0),
            baseline_bound: None,
            mh_green: 0.0,
            mh_blue: 0.0,
            batches: 0,
        })
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// A test read back from storage, if it is one this code could have
    /// written: valid settings, one value per grid point, finite numbers.
    pub fn restored(mut saved: SequentialErrorRate) -> Result<SequentialErrorRate, String> {
        let fresh = SequentialErrorRate::new(saved.settings).map_err(|e| e.to_string())?;
        let k = fresh.log_lr.len();
        let lengths = [
            saved.log_lr.len(),
            saved.power_green_loss.len(),
            saved.power_blue_loss.len(),
        ];
        if lengths.iter().any(|&n| n != k) {
            return Err(format!(
                "expected {k} values per grid point, found {lengths:?}"
            ));
        }
        saved.ln_ratio = fresh.ln_ratio;
        saved.ratio_minus_one = fresh.ratio_minus_one;
        let finite = saved
            .log_lr
            .iter()
            .chain(&saved.power_green_loss)
            .chain(&saved.power_blue_loss)
            .chain([
                &saved.log_evidence,
                &saved.peak_log_evidence,
                &saved.power_green,
                &saved.mh_green,
                &saved.mh_blue,
            ])
            .all(|x| x.is_finite());
        if !finite
            || saved
                .baseline_bound
                .is_some_and(|b| !b.is_finite() || b < 0.0)
        {
            return Err("it holds numbers that are not finite".into());
        }
        Ok(saved)
    }

    /// Adds one look's counts (what happened since the previous look).
    pub fn observe(&mut self, batch: Batch) {
        let green_failures = batch.green_failures.min(batch.green_requests);
        let blue_failures = batch.blue_failures.min(batch.blue_requests);
        add(&mut self.green, batch.green_requests, green_failures);
        add(&mut self.blue, batch.blue_requests, blue_failures);
        if batch.green_requests == 0 || batch.blue_requests == 0 {
            return;
        }
        self.add_evidence(
            batch.green_requests as f64,
            green_failures as f64,
            batch.blue_requests as f64,
            blue_failures as f64,
        );
    }

    /// Adds one batch at a split: against blue within it, or, at 100 %
    /// green (`full`), where blue serves nothing, against the bound on
    /// blue's rate from before ([`Self::observe_green_only`]).
    pub fn observe_at(&mut self, batch: Batch, full: bool) {
        if full && batch.blue_requests == 0 && batch.green_requests > 0 {
            self.observe_green_only(batch.green_requests, batch.green_failures);
        } else {
            self.observe(batch);
        }
    }

    /// Adds a batch in which only green served (a bake at 100 %), compared
    /// with an upper confidence bound of blue's pooled rate; see the
    /// module's docs. The bound is fixed at the first such batch. Before blue
    /// has served anything, green's counts are recorded and nothing else.
    pub fn observe_green_only(&mut self, green_requests: u64, green_failures: u64) {
        let green_failures = green_failures.min(green_requests);
        add(&mut self.green, green_requests, green_failures);
        let bound = match self.baseline_bound {
            Some(b) => b,
            None if self.blue.0 > 0 => {
                let b = rate_upper_bound(self.blue.1, self.blue.0, -self.settings.alpha.ln());
                self.baseline_bound = Some(b);
                b
            }
            None => return,
        };
        if green_requests == 0 {
            return;
        }
        let (n, f) = (green_requests as f64, green_failures as f64);
        // m·b⁺·n_g, the failures H0 allows green at most, in expectation.
        let allowed = self.settings.margin * bound * n;
        if f > 0.0 || allowed > 0.0 {
            self.add_log_lr(|ln_r, r1| f * ln_r - r1 * allowed);
        }
        self.batches = self.batches.saturating_add(1);
    }

    /// Adds `ln LR_k` = `term(ln r_k, r_k − 1)` to every grid point's sum,
    /// and updates the evidence.
    fn add_log_lr(&mut self, term: impl Fn(f64, f64) -> f64) {
        for ((s, ln_r), r1) in self
            .log_lr
            .iter_mut()
            .zip(&self.ln_ratio)
            .zip(&self.ratio_minus_one)
        {
            *s += term(*ln_r, *r1);
        }
        self.log_evidence = log_mean_exp(&self.log_lr);
        self.peak_log_evidence = self.peak_log_evidence.max(self.log_evidence);
    }

    fn add_evidence(
        &mut self,
        green_requests: f64,
        green_failures: f64,
        blue_requests: f64,
        blue_failures: f64,
    ) {
        let margin = self.settings.margin;
        // p0 = m·n_g / (m·n_g + n_b), written so that it stays in (0, 1].
        let p0 = 1.0 / (1.0 + blue_requests / (margin * green_requests));
        let failures = green_failures + blue_failures;
        if failures > 0.0 {
            self.add_log_lr(|ln_r, r1| green_failures * ln_r - failures * (r1 * p0).ln_1p());
        }
        self.power_green += green_requests;
        for ((g, b), r1) in self
            .power_green_loss
            .iter_mut()
            .zip(self.power_blue_loss.iter_mut())
            .zip(&self.ratio_minus_one)
        {
            let loss = (r1 * p0).ln_1p();
            *g += green_requests * loss;
            *b += blue_requests * loss;
        }
        let total = green_requests + blue_requests;
        self.mh_green += green_failures * (blue_requests / total);
        self.mh_blue += blue_failures * (green_requests / total);
        self.batches = self.batches.saturating_add(1);
    }

    /// ln E_t.
    pub fn log_evidence(&self) -> f64 {
        self.log_evidence
    }

    /// E_t, capped at f64::MAX (compare logarithms beyond that).
    pub fn evidence(&self) -> f64 {
        capped_exp(self.log_evidence)
    }

    /// 1/α: green fails once the evidence reaches it.
    pub fn threshold(&self) -> f64 {
        1.0 / self.settings.alpha
    }

    /// The blue rate the power rule assumes: blue's pooled rate, at least
    /// `min_rate`.
    pub fn power_rate(&self) -> f64 {
        let pooled = if self.blue.0 > 0 {
            self.blue.1 as f64 / self.blue.0 as f64
        } else {
            0.0
        };
        pooled.max(self.settings.min_rate)
    }

    /// The regression the power rule asks to be able to catch, as green's
    /// rate over blue's: `detect_ratio`, or more where `detect_points`
    /// above blue's rate is more.
    pub fn power_ratio(&self) -> f64 {
        let r = self.power_rate();
        self.settings
            .detect_ratio
            .max(1.0 + self.settings.detect_points / 100.0 / r)
    }

    /// The power rule's left side: ln w_k* plus the expected log-LR a green
    /// [`SequentialErrorRate::power_ratio`] times worse would have gathered
    /// over these batches (k* the grid point nearest that ratio).
    pub fn power_log_evidence(&self) -> f64 {
        let (r, d) = (self.power_rate(), self.power_ratio());
        let target = (d / self.settings.margin).ln();
        let Some(k) = self
            .ln_ratio
            .iter()
            .enumerate()
            .min_by(|a, b| (a.1 - target).abs().total_cmp(&(b.1 - target).abs()))
            .map(|(i, _)| i)
        else {
            return f64::NEG_INFINITY;
        };
        let ln_r = self.ln_ratio[k];
        -(self.log_lr.len() as f64).ln()
            + r * (d * self.power_green * ln_r
                - d * self.power_green_loss[k]
                - self.power_blue_loss[k])
    }

    /// Fail once the evidence has reached 1/α at any look; Pass only when
    /// `at_end_of_hold` and the power rule holds; Inconclusive otherwise.
    pub fn judge(&self, at_end_of_hold: bool) -> Judgement {
        let needed = -self.settings.alpha.ln();
        let figures = self.figures();
        if self.peak_log_evidence >= needed {
            Judgement::Fail(figures)
        } else if at_end_of_hold && self.power_log_evidence() >= needed {
            Judgement::Pass(figures)
        } else {
            Judgement::Inconclusive(figures)
        }
    }

    /// The numbers as they stand.
    pub fn figures(&self) -> Figures {
        Figures {
            green: colour(self.green),
            blue: colour(self.blue),
            evidence: self.evidence(),
            peak_evidence: capped_exp(self.peak_log_evidence),
            threshold: self.threshold(),
            alpha: self.settings.alpha,
            margin: self.settings.margin,
            rate_ratio: (self.mh_blue > 0.0).then(|| self.mh_green / self.mh_blue),
            detect_ratio: self.power_ratio(),
            power_evidence: capped_exp(self.power_log_evidence()),
            batches: self.batches,
            baseline_bound: self.baseline_bound,
        }
    }
}

fn add(totals: &mut (u64, u64), requests: u64, failures: u64) {
    totals.0 = totals.0.saturating_add(requests);
    totals.1 = totals.1.saturating_add(failures);
}

fn colour((requests, failures): (u64, u64)) -> ColourFigures {
    ColourFigures {
        requests,
        failures,
        rate: (requests > 0).then(|| failures as f64 / requests as f64),
    }
}

/// The upper confidence bound μ/N of a Poisson rate from `failures` F in
/// `requests` N: the μ > F with μ − F − F·ln(μ/F) = `log_level`, found by
/// bisection on ε = μ/F − 1 (or μ = `log_level` when F = 0).
fn rate_upper_bound(failures: u64, requests: u64, log_level: f64) -> f64 {
    let n = requests.max(1) as f64;
    if failures == 0 {
        return log_level / n;
    }
    let f = failures as f64;
    // F·(ε − ln(1 + ε)), with the series where the difference cancels.
    let h = |e: f64| {
        let g = if e < 1e-4 {
            e * e * (0.5 - e / 3.0 + e * e / 4.0)
        } else {
            e - e.ln_1p()
        };
        f * g
    };
    let mut high = 1.0;
    while h(high) < log_level && high < 1e300 {
        high *= 2.0;
    }
    let mut low = 0.0;
    for _ in 0..200 {
        let mid = 0.5 * (low + high);
        if mid <= low || mid >= high {
            break;
        }
        if h(mid) < log_level {
            low = mid;
        } else {
            high = mid;
        }
    }
    f * (1.0 + high) / n
}

/// ln((1/K)·Σ exp(x_k)), without overflow.
fn log_mean_exp(xs: &[f64]) -> f64 {
    let max = xs.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    if !max.is_finite() {
        return max;
    }
    let sum: f64 = xs.iter().map(|x| (x - max).exp()).sum();
    max + sum.ln() - (xs.len() as f64).ln()
}

fn capped_exp(x: f64) -> f64 {
    x.exp().min(f64::MAX)
}

/// About two significant digits: 312, 4.1, 0.52, 0.050, 3.1e9.
fn number(x: f64) -> String {
    if x == 0.0 {
        "0".to_owned()
    } else if !(1e-3..1e6).contains(&x.abs()) {
        format!("{x:.1e}")
    } else if x.abs() >= 10.0 {
        format!("{x:.0}")
    } else {
        let digits = 1 - x.abs().log10().floor() as i32;
        format!("{x:.*}", digits.max(0) as usize)
    }
}

fn colour_text(c: &ColourFigures) -> String {
    match c.rate {
        Some(rate) => format!("{} % ({}/{})", number(rate * 100.0), c.failures, c.requests),
        None => "no requests".to_owned(),
    }
}

impl fmt::Display for Judgement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.figures();
        write!(
            f,
            "green {} vs blue {}: ",
            colour_text(&n.green),
            colour_text(&n.blue)
        )?;
        let tail = format!("{} (α = {})", number(n.threshold), n.alpha);
        match self {
            Judgement::Fail(_) => write!(f, "evidence {} ≥ {tail}", number(n.peak_evidence))?,
            _ => write!(f, "evidence {} < {tail}", number(n.evidence))?,
        }
        if let Some(ratio) = n.rate_ratio {
            write!(f, ", rate ratio {}", number(ratio))?;
        }
        if n.margin != 1.0 {
            write!(f, " (margin {})", n.margin)?;
        }
        if let Some(bound) = n.baseline_bound {
            // Blue serves nothing (100 % green): say what green is held to.
            write!(
                f,
                "; with blue serving nothing, green is compared with blue's rate before the last shift, at most {} %",
                number(bound * 100.0)
            )?;
        }
        let detect = number(n.detect_ratio);
        match self {
            Judgement::Fail(_) => Ok(()),
            Judgement::Pass(_) => write!(
                f,
                "; a {detect}× green would typically have reached {} by now",
                number(n.power_evidence)
            ),
            Judgement::Inconclusive(_) if n.power_evidence >= n.threshold => {
                write!(f, "; enough data, a pass waits for the end of the hold")
            }
            Judgement::Inconclusive(_) => write!(
                f,
                "; too little data yet: a {detect}× green would typically have reached {} of {}",
                number(n.power_evidence),
                number(n.threshold)
            ),
        }
    }
}
