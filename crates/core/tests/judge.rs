//! The sequential error-rate test (`cutover_core::judge`): known values,
//! simulated canaries for its error rates and power, changing splits,
//! margins, the power rule, settings and arbitrary counts.
//!
//! The simulations are deterministic (a fixed seed per cell). Lines starting
//! with "FIGURE" report the observed rates; run with `--nocapture` to see
//! them.

use cutover_core::judge::{Batch, Judgement, SequentialErrorRate, Settings};
use cutover_core::Verdict;
use proptest::prelude::*;

const ALPHA: f64 = 0.01;

// ---------------------------------------------------------------------------
// Random numbers: splitmix64 and a binomial sampler.

mod rng;
use rng::Rng;

/// The ratio-only power rule (`detect_points` off), as the tables below
/// were measured with.
fn settings() -> Settings {
    Settings {
        alpha: ALPHA,
        detect_points: 0.0,
        ..Settings::default()
    }
}

fn new_test(settings: Settings) -> SequentialErrorRate {
    match SequentialErrorRate::new(settings) {
        Ok(t) => t,
        Err(e) => panic!("valid settings refused: {e}"),
    }
}

/// The bound a false-rollback fraction over `n` runs may reach: α plus
/// three standard errors.
fn bound(alpha: f64, n: usize) -> f64 {
    alpha + 3.0 * (alpha * (1.0 - alpha) / n as f64).sqrt()
}

fn median(values: &mut [u64]) -> Option<u64> {
    values.sort_unstable();
    values.get(values.len() / 2).copied()
}

// ---------------------------------------------------------------------------
// A simulated canary rollout.

const LOOK_SECS: u64 = 2;
const HOLD_SECS: u64 = 60;
/// Green's shares; at 100 % blue serves nothing, so the rollout stops at 50 %.
const STEPS: [f64; 5] = [0.01, 0.05, 0.10, 0.25, 0.50];
/// A step whose hold ended inconclusive is held longer (looking every 2 s),
/// up to this much time for the whole rollout.
const MAX_SECS: u64 = 900;

#[derive(Clone, Copy, Debug)]
enum Green {
    Same,
    Times(f64),
    Plus(f64),
}

impl Green {
    fn rate(self, blue: f64) -> f64 {
        match self {
            Green::Same => blue,
            Green::Times(x) => (blue * x).min(1.0),
            Green::Plus(x) => (blue + x).min(1.0),
        }
    }

    fn label(self) -> String {
        match self {
            Green::Same => "same".to_owned(),
            Green::Times(x) => format!("{x}x"),
            Green::Plus(x) => format!("+{}pt", x * 100.0),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Outcome {
    RolledBack { secs: u64, green_failures: u64 },
    Promoted { secs: u64 },
    Stalled,
}

/// One rollout through `STEPS`: a step advances on a Pass at or after the
/// end of its hold, green is rolled back on the first Fail.
fn canary(rng: &mut Rng, settings: Settings, blue_rate: f64, rps: u64, green: Green) -> Outcome {
    let mut test = new_test(settings);
    let per_look = rps * LOOK_SECS;
    let green_rate = green.rate(blue_rate);
    let (mut step, mut in_step, mut secs) = (0, 0, 0);
    while secs < MAX_SECS {
        secs += LOOK_SECS;
        in_step += LOOK_SECS;
        let (green_requests, blue_requests) = rng.split(per_look, STEPS[step]);
        test.observe(Batch {
            green_requests,
            green_failures: rng.binomial(green_requests, green_rate),
            blue_requests,
            blue_failures: rng.binomial(blue_requests, blue_rate),
        });
        match test.judge(in_step >= HOLD_SECS) {
            Judgement::Fail(f) => {
                return Outcome::RolledBack {
                    secs,
                    green_failures: f.green.failures,
                }
            }
            Judgement::Pass(_) => {
                step += 1;
                in_step = 0;
                if step == STEPS.len() {
                    return Outcome::Promoted { secs };
                }
            }
            Judgement::Inconclusive(_) => {}
        }
    }
    Outcome::Stalled
}

struct Tally {
    runs: usize,
    rolled_back: usize,
    promoted: usize,
    stalled: usize,
    fail_secs: Vec<u64>,
    fail_green_failures: Vec<u64>,
    promote_secs: Vec<u64>,
}

fn tally(
    seed: u64,
    runs: usize,
    settings: Settings,
    blue_rate: f64,
    rps: u64,
    green: Green,
) -> Tally {
    let mut rng = Rng::new(seed);
    let mut t = Tally {
        runs,
        rolled_back: 0,
        promoted: 0,
        stalled: 0,
        fail_secs: Vec::new(),
        fail_green_failures: Vec::new(),
        promote_secs: Vec::new(),
    };
    for _ in 0..runs {
        match canary(&mut rng, settings, blue_rate, rps, green) {
            Outcome::RolledBack {
                secs,
                green_failures,
            } => {
                t.rolled_back += 1;
                t.fail_secs.push(secs);
                t.fail_green_failures.push(green_failures);
            }
            Outcome::Promoted { secs } => {
                t.promoted += 1;
                t.promote_secs.push(secs);
            }
            Outcome::Stalled => t.stalled += 1,
        }
    }
    t
}

impl Tally {
    fn fraction(&self, count: usize) -> f64 {
        count as f64 / self.runs as f64
    }
}

const BASE_RATES: [f64; 3] = [0.001, 0.01, 0.05];
const TRAFFIC: [u64; 3] = [10, 200, 5000];

// ---------------------------------------------------------------------------
// 1. Known values.

#[test]
fn e_value_of_a_tiny_example_matches_the_hand_computation() {
    // Grid of two points, ρ = 5/4 and 25/16, weights 1/2 each, margin 1.
    let mut test = new_test(Settings {
        grid_points: 2,
        detect_ratio: 1.5,
        ..settings()
    });
    // Batch 1: green 2 of 20, blue 1 of 80, so p0 = 1/5.
    //   ρ = 5/4:   q = 25/105 = 5/21,  q/p0 = 25/21, (1−q)/(1−p0) = 20/21
    //              LR = (25/21)²·(20/21) = 12500/9261
    //   ρ = 25/16: q = 25/89,          q/p0 = 125/89, (1−q)/(1−p0) = 80/89
    //              LR = (125/89)²·(80/89) = 1250000/704969
    // Batch 2: green 3 of 50, blue 1 of 50, so p0 = 1/2.
    //   ρ = 5/4:   q = 5/9,   LR = (10/9)³·(8/9) = 8000/6561
    //   ρ = 25/16: q = 25/41, LR = (50/41)³·(32/41) = 4000000/2825761
    test.observe(Batch {
        green_requests: 20,
        green_failures: 2,
        blue_requests: 80,
        blue_failures: 1,
    });
    test.observe(Batch {
        green_requests: 50,
        green_failures: 3,
        blue_requests: 50,
        blue_failures: 1,
    });
    let by_hand = 0.5 * (12500.0 / 9261.0 * (8000.0 / 6561.0))
        + 0.5 * (1_250_000.0 / 704_969.0 * (4_000_000.0 / 2_825_761.0));
    assert!(
        (test.evidence() - by_hand).abs() < 1e-9,
        "{} vs {by_hand}",
        test.evidence()
    );
    assert!((test.log_evidence() - by_hand.ln()).abs() < 1e-9);
    assert_eq!(test.threshold(), 100.0);

    let figures = *test.judge(false).figures();
    assert_eq!((figures.green.requests, figures.green.failures), (70, 5));
    assert_eq!((figures.blue.requests, figures.blue.failures), (130, 2));
    assert_eq!(figures.batches, 2);
    // Mantel-Haenszel: (2·80/100 + 3·50/100) / (1·20/100 + 1·50/100) = 3.1/0.7.
    let ratio = figures.rate_ratio.unwrap_or(f64::NAN);
    assert!((ratio - 3.1 / 0.7).abs() < 1e-12, "{ratio}");

    // Power rule: blue's pooled rate r = 2/130; detect 1.5 is nearest
    // ρ = 25/16 (ln 1.5 = 0.405 is nearer ln 1.5625 = 0.446 than
    // ln 1.25 = 0.223). Had green failed at 1.5·r, a batch would have
    // brought, in expectation, 1.5·r·n_g failures on green and r·n_b on
    // blue, each weighing the ln(q/p0) or ln((1−q)/(1−p0)) above.
    let r = 2.0 / 130.0;
    let d = 1.5;
    let batch1 = d * r * 20.0 * (125.0f64 / 89.0).ln() + r * 80.0 * (80.0f64 / 89.0).ln();
    let batch2 = d * r * 50.0 * (50.0f64 / 41.0).ln() + r * 50.0 * (32.0f64 / 41.0).ln();
    let by_hand = 0.5f64.ln() + batch1 + batch2;
    assert!(
        (test.power_log_evidence() - by_hand).abs() < 1e-9,
        "{} vs {by_hand}",
        test.power_log_evidence()
    );
    assert!((figures.power_evidence - by_hand.exp()).abs() < 1e-9);
}

#[test]
fn the_documented_example_reads_as_documented() {
    let mut test = new_test(Settings::default());
    test.observe(Batch {
        green_requests: 1000,
        green_failures: 27,
        blue_requests: 9000,
        blue_failures: 90,
    });
    // (1/31)·Σ_{k=1..31} 1.25^(27k) / (1 + (1.25^k − 1)·0.1)^117, summed
    // with a spreadsheet: 372.3094573779781.
    assert!(
        (test.evidence() - 372.309_457_377_978).abs() < 1e-6,
        "{}",
        test.evidence()
    );
    let judgement = test.judge(false);
    assert_eq!(judgement.verdict(), Verdict::Fail);
    assert_eq!(
        judgement.to_string(),
        "green 2.7 % (27/1000) vs blue 1.0 % (90/9000): evidence 372 ≥ 100 (α = 0.01), rate ratio 2.7"
    );

    // One failure fewer on green: well below the threshold.
    let mut test = new_test(Settings::default());
    test.observe(Batch {
        green_requests: 1000,
        green_failures: 24,
        blue_requests: 9000,
        blue_failures: 90,
    });
    let judgement = test.judge(false);
    assert_eq!(judgement.verdict(), Verdict::Inconclusive);
    let text = judgement.to_string();
    assert!(
        text.starts_with(
            "green 2.4 % (24/1000) vs blue 1.0 % (90/9000): evidence 36 < 100 (α = 0.01)"
        ),
        "{text}"
    );
}

// ---------------------------------------------------------------------------
// 2. Type-I error: a green as good as blue is rarely rolled back.

#[test]
fn a_healthy_green_is_rolled_back_at_most_alpha_of_the_time() {
    let runs = 2000;
    let mut seed = 1;
    for blue_rate in BASE_RATES {
        for rps in TRAFFIC {
            seed += 1;
            let t = tally(seed, runs, settings(), blue_rate, rps, Green::Same);
            let false_rollbacks = t.fraction(t.rolled_back);
            println!(
                "FIGURE type-I blue={:.1}% rps={rps} canaries={runs} false-rollbacks={false_rollbacks:.4} \
                 (bound {:.4}) promoted={:.3} stalled={:.3} median-promote-secs={:?}",
                blue_rate * 100.0,
                bound(ALPHA, runs),
                t.fraction(t.promoted),
                t.fraction(t.stalled),
                median(&mut t.promote_secs.clone()),
            );
            assert!(
                false_rollbacks <= bound(ALPHA, runs),
                "blue {blue_rate} at {rps} req/s: {false_rollbacks} false rollbacks"
            );
        }
    }
}

// ---------------------------------------------------------------------------
// 3. Power: a worse green is rolled back, and how fast.

#[test]
fn a_worse_green_is_rolled_back() {
    let runs = 200;
    let mut seed = 100;
    for blue_rate in BASE_RATES {
        for rps in TRAFFIC {
            // Where a healthy green gets through the rollout in time, the
            // data are enough to judge, and a worse green must be caught.
            seed += 1;
            let healthy = tally(seed, 100, settings(), blue_rate, rps, Green::Same);
            let decidable = healthy.promoted >= 95;
            for green in [Green::Times(2.0), Green::Times(5.0), Green::Plus(0.30)] {
                seed += 1;
                let mut t = tally(seed, runs, settings(), blue_rate, rps, green);
                println!(
                    "FIGURE power green={} blue={:.1}% rps={rps} canaries={runs} rolled-back={:.3} \
                     promoted={:.3} stalled={:.3} median-green-failures-before-fail={:?} \
                     median-secs-before-fail={:?} (healthy green promoted {:.2})",
                    green.label(),
                    blue_rate * 100.0,
                    t.fraction(t.rolled_back),
                    t.fraction(t.promoted),
                    t.fraction(t.stalled),
                    median(&mut t.fail_green_failures),
                    median(&mut t.fail_secs),
                    healthy.fraction(healthy.promoted),
                );
                let cell = format!("{green:?}, blue {blue_rate}, {rps} req/s");
                // Never promoted (allowing 1 %): too little data stalls the
                // rollout rather than letting a worse green through.
                assert!(t.promoted * 100 <= runs, "{cell}: promoted {}", t.promoted);
                if decidable || matches!(green, Green::Plus(_)) {
                    assert!(
                        t.rolled_back * 100 >= runs * 95,
                        "{cell}: rolled back {}",
                        t.rolled_back
                    );
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------
// 4. Changing splits.

#[test]
fn splits_that_change_every_batch_keep_the_error_rate() {
    let shares = [0.01, 0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.99];
    let runs = 2000;
    let mut rng = Rng::new(7);
    let mut rolled_back = 0;
    for _ in 0..runs {
        let mut test = new_test(settings());
        for _ in 0..150 {
            let share = shares[(rng.next_u64() % shares.len() as u64) as usize];
            let (g, b) = rng.split(400, share);
            test.observe(Batch {
                green_requests: g,
                green_failures: rng.binomial(g, 0.02),
                blue_requests: b,
                blue_failures: rng.binomial(b, 0.02),
            });
            if test.judge(false).verdict() == Verdict::Fail {
                rolled_back += 1;
                break;
            }
        }
    }
    let fraction = rolled_back as f64 / runs as f64;
    println!(
        "FIGURE random-splits canaries={runs} false-rollbacks={fraction:.4} (bound {:.4})",
        bound(ALPHA, runs)
    );
    assert!(fraction <= bound(ALPHA, runs), "{fraction}");
}

/// Green's share grows while the failure rate of both colours rises (a
/// dependency degrading): pooled over time, green's requests fall in the
/// bad period more than blue's, so green's pooled rate is higher although
/// it is as good as blue at every moment.
#[test]
fn drift_with_a_growing_share_does_not_fool_the_test() {
    let runs = 1000;
    let looks = 150;
    let mut rng = Rng::new(11);
    let (mut ours, mut naive) = (0, 0);
    for _ in 0..runs {
        let mut test = new_test(settings());
        let mut totals = Batch::default();
        let (mut ours_failed, mut naive_failed) = (false, false);
        for i in 0..looks {
            let progress = i as f64 / (looks - 1) as f64;
            let share = 0.01 + 0.49 * progress;
            let rate = 0.002 + 0.048 * progress;
            let (g, b) = rng.split(400, share);
            let batch = Batch {
                green_requests: g,
                green_failures: rng.binomial(g, rate),
                blue_requests: b,
                blue_failures: rng.binomial(b, rate),
            };
            test.observe(batch);
            ours_failed |= test.judge(false).verdict() == Verdict::Fail;
            // The naive test: the same e-value on the pooled totals, as if
            // everything had come in one batch.
            totals.green_requests += batch.green_requests;
            totals.green_failures += batch.green_failures;
            totals.blue_requests += batch.blue_requests;
            totals.blue_failures += batch.blue_failures;
            let mut pooled = new_test(settings());
            pooled.observe(totals);
            naive_failed |= pooled.judge(false).verdict() == Verdict::Fail;
        }
        ours += usize::from(ours_failed);
        naive += usize::from(naive_failed);
    }
    let (ours, naive) = (ours as f64 / runs as f64, naive as f64 / runs as f64);
    println!(
        "FIGURE drift canaries={runs} false-rollbacks={ours:.4} (bound {:.4}) pooled-test-false-rollbacks={naive:.4}",
        bound(ALPHA, runs)
    );
    assert!(
        naive >= 0.5,
        "the scenario should fool a pooled test: {naive}"
    );
    assert!(ours <= bound(ALPHA, runs), "{ours}");
}

// ---------------------------------------------------------------------------
// 5. Margin.

#[test]
fn a_margin_tolerates_a_small_regression_but_not_a_large_one() {
    let with_margin = Settings {
        margin: 1.5,
        ..settings()
    };
    let (blue, rps) = (0.01, 5000);
    let runs = 2000;
    let t = tally(31, runs, with_margin, blue, rps, Green::Times(1.3));
    let tolerated = t.fraction(t.rolled_back);
    println!(
        "FIGURE margin=1.5 green=1.3x blue=1.0% rps={rps} canaries={runs} rolled-back={tolerated:.4} \
         (bound {:.4}) promoted={:.3}",
        bound(ALPHA, runs),
        t.fraction(t.promoted)
    );
    assert!(tolerated <= bound(ALPHA, runs), "{tolerated}");

    let runs = 200;
    let t = tally(32, runs, with_margin, blue, rps, Green::Times(3.0));
    let caught = t.fraction(t.rolled_back);
    println!(
        "FIGURE margin=1.5 green=3x blue=1.0% rps={rps} canaries={runs} rolled-back={caught:.3}"
    );
    assert!(caught >= 0.95, "{caught}");

    // Without the margin the same 1.3× green is a regression.
    let t = tally(33, runs, settings(), blue, rps, Green::Times(1.3));
    let without = t.fraction(t.rolled_back);
    println!(
        "FIGURE margin=1 green=1.3x blue=1.0% rps={rps} canaries={runs} rolled-back={without:.3}"
    );
    assert!(without >= 0.5, "{without}");
}

// ---------------------------------------------------------------------------
// 6. The power rule.

/// Expected log-LR of one batch for the grid point ρ, had green's rate been
/// d·r and blue's r, written with q and p0.
fn expected_log_lr(n_g: f64, n_b: f64, rho: f64, d: f64, r: f64) -> f64 {
    let p0 = n_g / (n_g + n_b);
    let q = rho * n_g / (rho * n_g + n_b);
    d * r * n_g * (q / p0).ln() + r * n_b * ((1.0 - q) / (1.0 - p0)).ln()
}

#[test]
fn a_pass_needs_enough_data_and_the_end_of_the_hold() {
    // Green exactly as good as blue, 1 % each, 1000 requests each per batch.
    // Detect 2× is nearest the grid point 1.25³ = 1.953125.
    let per_batch = expected_log_lr(1000.0, 1000.0, 1.953_125, 2.0, 0.01);
    let needed = ((1.0 / ALPHA).ln() + 31f64.ln()) / per_batch;
    let batches = needed.ceil() as usize;
    assert!(
        batches >= 2,
        "the example should need several batches: {needed}"
    );
    let mut test = new_test(settings());
    for i in 1..=batches + 3 {
        test.observe(Batch {
            green_requests: 1000,
            green_failures: 10,
            blue_requests: 1000,
            blue_failures: 10,
        });
        assert!(test.evidence() < 1.0);
        assert_eq!(
            test.judge(false).verdict(),
            Verdict::Inconclusive,
            "batch {i}"
        );
        let expected = if i < batches {
            Verdict::Inconclusive
        } else {
            Verdict::Pass
        };
        let judgement = test.judge(true);
        assert_eq!(
            judgement.verdict(),
            expected,
            "batch {i} of {needed}: {judgement}"
        );
    }

    // A perfect blue: the floor rate of 0.1 % stands in for its rate, so the
    // pass comes, ten times later than at 1 %.
    let per_batch = expected_log_lr(1000.0, 1000.0, 1.953_125, 2.0, 0.001);
    let batches = (((1.0 / ALPHA).ln() + 31f64.ln()) / per_batch).ceil() as usize;
    let mut test = new_test(settings());
    let mut first_pass = None;
    for i in 1..=batches + 1 {
        test.observe(Batch {
            green_requests: 1000,
            green_failures: 0,
            blue_requests: 1000,
            blue_failures: 0,
        });
        assert_eq!(test.log_evidence(), 0.0);
        assert_ne!(test.judge(false).verdict(), Verdict::Pass);
        if first_pass.is_none() && test.judge(true).verdict() == Verdict::Pass {
            first_pass = Some(i);
        }
    }
    assert_eq!(first_pass, Some(batches));

    // Too little traffic for the whole hold: 10 requests a batch.
    let mut test = new_test(settings());
    for _ in 0..30 {
        test.observe(Batch {
            green_requests: 1,
            green_failures: 0,
            blue_requests: 9,
            blue_failures: 0,
        });
    }
    let judgement = test.judge(true);
    assert_eq!(judgement.verdict(), Verdict::Inconclusive);
    assert!(
        judgement.to_string().contains("too little data yet"),
        "{judgement}"
    );
}

proptest! {
    #[test]
    fn no_pass_before_the_end_of_a_hold(
        batches in prop::collection::vec((0u64..5000, 0u64..100, 0u64..5000, 0u64..100), 1..40),
    ) {
        let mut test = new_test(settings());
        for (g, fg, b, fb) in batches {
            test.observe(Batch { green_requests: g, green_failures: fg, blue_requests: b, blue_failures: fb });
            prop_assert_ne!(test.judge(false).verdict(), Verdict::Pass);
        }
    }
}

// ---------------------------------------------------------------------------
// 7. Settings, edge cases, arbitrary counts.

#[test]
fn bad_settings_are_refused_naming_the_field() {
    let cases: Vec<(Settings, &str)> = vec![
        (
            Settings {
                alpha: 0.0,
                ..settings()
            },
            "alpha",
        ),
        (
            Settings {
                alpha: 0.6,
                ..settings()
            },
            "alpha",
        ),
        (
            Settings {
                alpha: -0.1,
                ..settings()
            },
            "alpha",
        ),
        (
            Settings {
                alpha: f64::NAN,
                ..settings()
            },
            "alpha",
        ),
        (
            Settings {
                margin: 0.9,
                ..settings()
            },
            "margin",
        ),
        (
            Settings {
                margin: f64::INFINITY,
                ..settings()
            },
            "margin",
        ),
        (
            Settings {
                margin: f64::NAN,
                ..settings()
            },
            "margin",
        ),
        (
            Settings {
                detect_ratio: 1.0,
                ..settings()
            },
            "detect_ratio",
        ),
        (
            Settings {
                detect_ratio: 1.2,
                ..settings()
            },
            "detect_ratio",
        ),
        (
            Settings {
                margin: 2.0,
                detect_ratio: 2.0,
                ..settings()
            },
            "detect_ratio",
        ),
        (
            Settings {
                detect_ratio: 1e6,
                ..settings()
            },
            "detect_ratio",
        ),
        (
            Settings {
                detect_ratio: f64::NAN,
                ..settings()
            },
            "detect_ratio",
        ),
        (
            Settings {
                min_rate: 0.0,
                ..settings()
            },
            "min_rate",
        ),
        (
            Settings {
                min_rate: 1.5,
                ..settings()
            },
            "min_rate",
        ),
        (
            Settings {
                grid_points: 0,
                ..settings()
            },
            "grid_points",
        ),
        (
            Settings {
                grid_points: 65,
                ..settings()
            },
            "grid_points",
        ),
    ];
    for (bad, field) in cases {
        match SequentialErrorRate::new(bad) {
            Ok(_) => panic!("{bad:?} accepted"),
            Err(e) => {
                assert_eq!(e.field, field, "{bad:?}: {e}");
                assert!(e.to_string().starts_with(field), "{e}");
            }
        }
    }
    // The edges that are allowed.
    for good in [
        Settings {
            alpha: 0.5,
            ..settings()
        },
        Settings {
            margin: 1.0,
            detect_ratio: 1.25,
            ..settings()
        },
        Settings {
            margin: 1.6,
            detect_ratio: 2.0,
            ..settings()
        },
        Settings {
            min_rate: 1.0,
            ..settings()
        },
        Settings {
            grid_points: 64,
            ..settings()
        },
    ] {
        assert!(SequentialErrorRate::new(good).is_ok(), "{good:?}");
    }
}

#[test]
fn settings_have_defaults_and_round_trip() {
    let parsed: Settings = match toml::from_str("alpha = 0.05\nmargin = 1.2") {
        Ok(s) => s,
        Err(e) => panic!("{e}"),
    };
    assert_eq!(
        parsed,
        Settings {
            alpha: 0.05,
            margin: 1.2,
            ..Settings::default()
        }
    );
    assert_eq!(Settings::default().detect_ratio, 2.0);
    assert_eq!(Settings::default().min_rate, 0.001);
    assert_eq!(Settings::default().detect_points, 1.0);
    assert!(toml::from_str::<Settings>("alpah = 0.05").is_err());
    let json = serde_json::to_string(&parsed).unwrap_or_default();
    assert_eq!(serde_json::from_str::<Settings>(&json).ok(), Some(parsed));
}

#[test]
fn a_batch_without_one_colour_counts_but_is_no_evidence() {
    let mut test = new_test(settings());
    test.observe(Batch {
        green_requests: 0,
        green_failures: 0,
        blue_requests: 500,
        blue_failures: 40,
    });
    test.observe(Batch {
        green_requests: 500,
        green_failures: 400,
        blue_requests: 0,
        blue_failures: 0,
    });
    assert_eq!(test.log_evidence(), 0.0);
    assert_eq!(test.evidence(), 1.0);
    let judgement = test.judge(true);
    let f = judgement.figures();
    assert_eq!(
        (f.green.requests, f.green.failures, f.green.rate),
        (500, 400, Some(0.8))
    );
    assert_eq!(
        (f.blue.requests, f.blue.failures, f.blue.rate),
        (500, 40, Some(0.08))
    );
    assert_eq!(f.batches, 0);
    assert_eq!(f.rate_ratio, None);
    assert_eq!(judgement.verdict(), Verdict::Inconclusive);
}

#[test]
fn no_failures_leave_the_evidence_at_one() {
    let mut test = new_test(settings());
    for _ in 0..100 {
        test.observe(Batch {
            green_requests: 123,
            green_failures: 0,
            blue_requests: 4567,
            blue_failures: 0,
        });
    }
    assert_eq!(test.evidence(), 1.0);
    let f = *test.judge(false).figures();
    assert_eq!(f.batches, 100);
    assert_eq!(f.green.rate, Some(0.0));
    assert_eq!(f.rate_ratio, None);
    // Nothing yet, nothing to say: no requests at all.
    let empty = new_test(settings()).judge(true);
    assert_eq!(empty.verdict(), Verdict::Inconclusive);
    assert!(
        empty
            .to_string()
            .starts_with("green no requests vs blue no requests: evidence 1.0 < 100"),
        "{empty}"
    );
}

#[test]
fn lopsided_and_huge_counts_stay_finite() {
    // p0 close to 0: one green request against 10¹² blue ones.
    let mut test = new_test(settings());
    test.observe(Batch {
        green_requests: 1,
        green_failures: 1,
        blue_requests: 1_000_000_000_000,
        blue_failures: 0,
    });
    // One green failure, none on blue: LR_k = r_k / (1 + (r_k − 1)·p0) ≈ r_k,
    // so E ≈ mean of 1.25^k, k = 1..31.
    let mean: f64 = (1..=31).map(|k| 1.25f64.powi(k)).sum::<f64>() / 31.0;
    assert!(
        (test.evidence() - mean).abs() / mean < 1e-6,
        "{} vs {mean}",
        test.evidence()
    );

    // p0 close to 1: 10¹² green requests against one blue one.
    let mut test = new_test(settings());
    test.observe(Batch {
        green_requests: 1_000_000_000_000,
        green_failures: 5,
        blue_requests: 1,
        blue_failures: 1,
    });
    assert!(
        test.evidence().is_finite() && test.evidence() < 1.0,
        "{}",
        test.evidence()
    );

    // Huge counts, all failing on green: the evidence passes f64's range;
    // the logarithm carries on and `evidence` saturates.
    let mut test = new_test(settings());
    for _ in 0..3 {
        test.observe(Batch {
            green_requests: u64::MAX,
            green_failures: u64::MAX,
            blue_requests: u64::MAX,
            blue_failures: 0,
        });
    }
    assert!(test.log_evidence().is_finite() && test.log_evidence() > 1e19);
    assert_eq!(test.evidence(), f64::MAX);
    let judgement = test.judge(false);
    assert_eq!(judgement.verdict(), Verdict::Fail);
    let f = judgement.figures();
    assert_eq!(f.green.requests, u64::MAX, "totals saturate");
    assert!(serde_json::to_string(&judgement).is_ok());

    // More failures than requests are taken as the requests.
    let mut test = new_test(settings());
    test.observe(Batch {
        green_requests: 10,
        green_failures: 50,
        blue_requests: 10,
        blue_failures: 0,
    });
    let f = *test.judge(false).figures();
    assert_eq!((f.green.failures, f.green.rate), (10, Some(1.0)));
}

#[test]
fn a_fail_stays_a_fail() {
    let mut test = new_test(settings());
    test.observe(Batch {
        green_requests: 1000,
        green_failures: 40,
        blue_requests: 9000,
        blue_failures: 90,
    });
    assert_eq!(test.judge(false).verdict(), Verdict::Fail);
    // A long healthy stretch brings E_t down again; the verdict stands.
    for _ in 0..200 {
        test.observe(Batch {
            green_requests: 5000,
            green_failures: 0,
            blue_requests: 5000,
            blue_failures: 100,
        });
    }
    assert!(test.evidence() < test.threshold());
    let judgement = test.judge(true);
    assert_eq!(judgement.verdict(), Verdict::Fail);
    assert!(judgement.figures().peak_evidence >= 100.0);
}

proptest! {
    #[test]
    fn any_counts_give_a_finite_nonnegative_evidence(
        batches in prop::collection::vec(
            (0u64..=1_000_000_000_000, 0u64..=1_000_000_000_000, 0u64..=1_000_000_000_000, 0u64..=1_000_000_000_000),
            1..20,
        ),
        margin in 1.0f64..10.0,
        alpha in 0.001f64..0.5,
        end in any::<bool>(),
    ) {
        let mut test = new_test(Settings { margin, alpha, detect_ratio: 2.0 * margin, ..Settings::default() });
        for (g, fg, b, fb) in batches {
            test.observe(Batch { green_requests: g, green_failures: fg, blue_requests: b, blue_failures: fb });
            let e = test.evidence();
            prop_assert!(e.is_finite() && e >= 0.0, "{}", e);
            prop_assert!(test.log_evidence().is_finite());
            let judgement = test.judge(end);
            let f = judgement.figures();
            prop_assert!(f.power_evidence.is_finite() && f.power_evidence >= 0.0);
            prop_assert!(f.rate_ratio.is_none_or(|r| r.is_finite() && r >= 0.0));
            prop_assert!(!judgement.to_string().is_empty());
            let json = serde_json::to_string(&judgement);
            prop_assert!(json.is_ok());
            let back: Option<Judgement> = json.ok().and_then(|j| serde_json::from_str(&j).ok());
            prop_assert_eq!(back.map(|j| j.verdict()), Some(judgement.verdict()));
        }
    }
}

// ---------------------------------------------------------------------------
// The bake: green alone against blue's rate.

#[test]
fn green_alone_before_blue_served_anything_is_no_evidence() {
    let mut test = new_test(settings());
    test.observe_green_only(1000, 900);
    assert_eq!(test.evidence(), 1.0);
    let f = *test.judge(false).figures();
    assert_eq!((f.green.requests, f.green.failures), (1000, 900));
    assert_eq!((f.batches, f.baseline_bound), (0, None));
}

#[test]
fn green_alone_is_compared_with_the_bound_of_blue_s_rate() {
    // Blue never failed in 10 000 requests: b⁺ = ln(1/α)/N.
    let mut test = new_test(Settings {
        grid_points: 2,
        detect_ratio: 1.5,
        ..settings()
    });
    test.observe(Batch {
        green_requests: 100,
        green_failures: 0,
        blue_requests: 10_000,
        blue_failures: 0,
    });
    test.observe_green_only(2000, 3);
    let b = 100f64.ln() / 10_000.0;
    let reported = test
        .judge(false)
        .figures()
        .baseline_bound
        .unwrap_or(f64::NAN);
    assert!((reported - b).abs() < 1e-15, "{reported} vs {b}");
    // LR_k = r^f_g · exp(−(r − 1)·m·b⁺·n_g), for r = 5/4 and 25/16.
    let lr = |r: f64| r.powi(3) * (-(r - 1.0) * b * 2000.0).exp();
    let by_hand = 0.5 * lr(1.25) + 0.5 * lr(1.5625);
    assert!(
        (test.evidence() - by_hand).abs() < 1e-12,
        "{} vs {by_hand}",
        test.evidence()
    );
    // Power rule: blue never failed, so r = min_rate; detect 1.5 is nearest
    // ρ = 25/16. The green-only batch brings nothing to it.
    let (r, d, rho) = (0.001, 1.5, 1.5625f64);
    let by_hand = 0.5f64.ln() + expected_log_lr(100.0, 10_000.0, rho, d, r);
    assert!(
        (test.power_log_evidence() - by_hand).abs() < 1e-12,
        "{} vs {by_hand}",
        test.power_log_evidence()
    );

    // Blue failed 100 times in 10 000 requests: b⁺·N solves
    // μ − F − F·ln(μ/F) = ln(1/α) above F.
    let mut test = new_test(settings());
    test.observe(Batch {
        green_requests: 100,
        green_failures: 1,
        blue_requests: 10_000,
        blue_failures: 100,
    });
    let text = test.judge(false).to_string();
    assert!(!text.contains("blue serving nothing"), "{text}");
    test.observe_green_only(400, 4);
    let bound = test
        .judge(false)
        .figures()
        .baseline_bound
        .unwrap_or(f64::NAN);
    // Where blue serves nothing, the verdict says what green is held to.
    let text = test.judge(false).to_string();
    let said: f64 = text
        .split("with blue serving nothing, green is compared with blue's rate before the last shift, at most ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{text}"));
    // Two significant figures, as every number in a detail.
    assert!(
        (said / (bound * 100.0) - 1.0).abs() < 0.05,
        "{said} vs {bound}: {text}"
    );
    let mu = bound * 10_000.0;
    assert!(mu > 100.0 && mu < 150.0, "{mu}");
    let residual = mu - 100.0 - 100.0 * (mu / 100.0).ln() - 100f64.ln();
    assert!(residual.abs() < 1e-9, "{residual}");

    // The bound is fixed at the first green-only batch.
    test.observe(Batch {
        green_requests: 100,
        green_failures: 0,
        blue_requests: 1_000_000,
        blue_failures: 0,
    });
    test.observe_green_only(400, 4);
    assert_eq!(test.judge(false).figures().baseline_bound, Some(bound));

    // Huge counts: the bound stays finite and just above the rate.
    let mut test = new_test(settings());
    test.observe(Batch {
        green_requests: 1,
        green_failures: 0,
        blue_requests: u64::MAX,
        blue_failures: u64::MAX / 100,
    });
    test.observe_green_only(u64::MAX, u64::MAX / 50);
    let bound = test
        .judge(false)
        .figures()
        .baseline_bound
        .unwrap_or(f64::NAN);
    assert!(bound > 0.01 && bound < 0.010_001, "{bound}");
    assert!(test.log_evidence().is_finite());
    assert_eq!(test.judge(false).verdict(), Verdict::Fail);
}

/// A rollout whose blue served `blue_requests` (1 % failing; green 100
/// requests alongside at its own rate), then a bake of `bake_secs` at 100 %
/// green, 200 req/s, looked at every 2 s. Returns the seconds into the bake
/// of each rollback (0 if the rollout's batch already failed).
fn bake(seed: u64, runs: usize, green_rate: f64, blue_requests: u64, bake_secs: u64) -> Vec<u64> {
    let blue_rate = 0.01;
    let mut rng = Rng::new(seed);
    let mut failed_after = Vec::new();
    for _ in 0..runs {
        let mut test = new_test(settings());
        test.observe(Batch {
            green_requests: 100,
            green_failures: rng.binomial(100, green_rate),
            blue_requests,
            blue_failures: rng.binomial(blue_requests, blue_rate),
        });
        if test.judge(false).verdict() == Verdict::Fail {
            failed_after.push(0);
            continue;
        }
        for look in 1..=bake_secs / LOOK_SECS {
            test.observe_green_only(400, rng.binomial(400, green_rate));
            if test.judge(false).verdict() == Verdict::Fail {
                failed_after.push(look * LOOK_SECS);
                break;
            }
        }
    }
    failed_after
}

#[test]
fn a_bake_against_blue_s_earlier_rate() {
    // A healthy green: at most α for the test plus α for blue's bound,
    // however long the bake (30 minutes here: 360 000 green requests).
    let runs = 1000;
    let limit = bound(2.0 * ALPHA, runs);
    for (seed, blue_requests) in [(21, 20_000), (22, 100_000)] {
        let healthy = bake(seed, runs, 0.01, blue_requests, 1800).len() as f64 / runs as f64;
        println!(
            "FIGURE bake blue-requests={blue_requests} bake=1800s green=same canaries={runs} \
             rolled-back={healthy:.4} (bound {limit:.4})"
        );
        assert!(healthy <= limit, "{blue_requests}: {healthy}");
        for (seed, green_rate) in [(seed + 10, 0.02), (seed + 20, 0.05)] {
            let mut worse = bake(seed, 200, green_rate, blue_requests, 600);
            let caught = worse.len() as f64 / 200.0;
            println!(
                "FIGURE bake blue-requests={blue_requests} bake=600s green={}x canaries=200 rolled-back={caught:.3} \
                 median-secs-into-bake-before-fail={:?}",
                green_rate / 0.01,
                median(&mut worse)
            );
            assert!(caught >= 0.99, "{blue_requests}, {green_rate}: {caught}");
        }
    }
}

/// Against a blue that rarely fails, `detect_points` lets a healthy green
/// pass after the requests it takes to rule out a regression of that many
/// points, not a 2-fold one of almost nothing; a regression that large is
/// still rolled back.
#[test]
fn detect_points_lets_a_rarely_failing_service_pass_without_giving_up_large_regressions() {
    // Blue fails 0.1 %; green takes 10 % of 200 req/s, one batch a second.
    let passes_after = |detect_points: f64, green_rate: f64, seed: u64| {
        let mut rng = Rng::new(seed);
        let mut test = new_test(Settings {
            detect_points,
            ..settings()
        });
        for second in 1..=3600u64 {
            let (g, b) = (20, 180);
            test.observe(Batch {
                green_requests: g,
                green_failures: rng.binomial(g, green_rate),
                blue_requests: b,
                blue_failures: rng.binomial(b, 0.001),
            });
            match test.judge(true) {
                Judgement::Pass(_) => return Some(second),
                Judgement::Fail(_) => return None,
                Judgement::Inconclusive(_) => {}
            }
        }
        panic!("neither passed nor failed in an hour");
    };
    let mut with = Vec::new();
    let mut without = Vec::new();
    for seed in 0..20 {
        with.push(passes_after(1.0, 0.001, seed).expect("healthy: passed"));
        without.push(passes_after(0.0, 0.001, seed).expect("healthy: passed"));
    }
    let (with, without) = (median(&mut with).unwrap(), median(&mut without).unwrap());
    eprintln!("FIGURE detect-points healthy green passes after: 1 point {with} s, off {without} s");
    assert!(with * 5 <= without, "{with} s vs {without} s");
    // Green 2 points above blue's 0.1 %: rolled back in every run.
    for seed in 0..20 {
        assert_eq!(passes_after(1.0, 0.021, 100 + seed), None, "seed {seed}");
    }
}

#[test]
fn detect_points_out_of_range_is_refused() {
    for bad in [-0.5, 100.5, f64::NAN] {
        let e = SequentialErrorRate::new(Settings {
            detect_points: bad,
            ..settings()
        })
        .expect_err("refused");
        assert_eq!(e.field, "detect_points", "{e}");
    }
}

#[test]
fn a_stored_test_goes_on_where_it_was_and_a_damaged_one_is_refused() {
    let mut test = new_test(settings());
    for _ in 0..5 {
        test.observe(Batch {
            green_requests: 100,
            green_failures: 3,
            blue_requests: 900,
            blue_failures: 9,
        });
    }
    let json = serde_json::to_value(&test).unwrap();
    let text = json.to_string();
    eprintln!("FIGURE stored judge state: {} bytes", text.len());
    let back: SequentialErrorRate = serde_json::from_value(json.clone()).unwrap();
    let mut back = SequentialErrorRate::restored(back).unwrap();
    assert_eq!(back, test);
    let next = Batch {
        green_requests: 100,
        green_failures: 20,
        blue_requests: 900,
        blue_failures: 9,
    };
    back.observe(next);
    test.observe(next);
    assert_eq!(back, test);

    let mut damaged = json.clone();
    damaged["log_lr"] = serde_json::json!([0.0]);
    let e = SequentialErrorRate::restored(serde_json::from_value(damaged).unwrap()).unwrap_err();
    assert!(e.contains("values per grid point"), "{e}");
    let mut damaged = json;
    damaged["settings"]["alpha"] = serde_json::json!(2.0);
    let e = SequentialErrorRate::restored(serde_json::from_value(damaged).unwrap()).unwrap_err();
    assert!(e.contains("alpha"), "{e}");
}
